"""The registry cross-product: every model x every compatible task, tiny preset, two steps.

A new model or task is covered here without writing a test."""
import json

import pytest
import torch

from seqbench import config, registry
from seqbench.build import make_task
from seqbench.testing import check_pair

PAIRS = [
    (m, t)
    for m, me in registry.models().items()
    for t, te in registry.tasks().items()
    if registry.compatible(me, te)[0]
]


def test_every_model_and_task_is_in_some_pair():
    assert {m for m, _ in PAIRS} == set(registry.models())
    assert {t for _, t in PAIRS} == set(registry.tasks())


@pytest.mark.parametrize("model,task", PAIRS, ids=[f"{m}-{t}" for m, t in PAIRS])
def test_pair_trains_evaluates_and_records(env, model, task):
    """seqbench.testing.check_pair (what plugin authors run through check_model / check_task): completes,
    changes the weights, finite metrics, FLOPs, params, latency, throughput, a record on disk."""
    rec, _ = check_pair(model, task, env["results"])
    on_disk = json.loads(open(rec["path"]).read())
    assert on_disk["run_id"] == rec["run_id"]
    assert "plugins" not in on_disk  # built-ins need none


FIRST_TASK = {m: next(t for mm, t in PAIRS if mm == m) for m, _ in PAIRS}


@pytest.mark.parametrize("model", list(registry.models()))
def test_flops_positive_and_scale_with_width(env, model):
    """Each model on its first compatible task, built as a run builds it (the task's wrapper):
    FLOPs per sample > 0, and more at twice the width (``hidden`` or ``width``)."""
    task = FIRST_TASK[model]

    def flops(scale):
        cfg = config.resolve(registry.get_model(model), registry.get_task(task), "tiny")
        for k in ("hidden", "width"):
            if hasattr(cfg.model_params, k):
                setattr(cfg.model_params, k, 8 * scale)
        t = make_task(cfg)
        return t.wrap(registry.get_model(model).cls(t.spec().d_input, cfg.model_params)).flops_per_sample()

    small, big = flops(1), flops(2)
    assert 0 < small < big


def test_lstm_flops_formula_by_hand():
    # 1 layer, input 1, hidden 2: 2*4*2*(1+2) matmul + 2*4*2 biases + 9*2 pointwise = 48 + 16 + 18
    m = registry.get_model("lstm").cls(1, config.params_class(registry.get_model("lstm").cls)(hidden=2))
    assert m.flops_per_step() == 82


@pytest.mark.parametrize("task", list(registry.tasks()))
def test_every_task_gives_an_example_batch_its_models_train_on(env, task):
    """``task.example_batch`` (seqbench bench, the AMP check) is shaped and typed as the loaders'
    batches: the task's first compatible model takes it through the wrapper and the loss."""
    model = next(m for m, t in PAIRS if t == task)
    cfg = config.resolve(registry.get_model(model), registry.get_task(task), "tiny")
    t = make_task(cfg)
    x, y = t.example_batch(3)
    real_x, real_y = next(iter(t.loaders(3, 3, 0)["train"]))[:2]
    assert x.shape[1:] == real_x.shape[1:] and x.dtype == real_x.dtype
    assert y.shape[1:] == real_y.shape[1:] and y.dtype == real_y.dtype
    net = t.wrap(registry.get_model(model).cls(t.spec().d_input, cfg.model_params))
    out, _ = net(x)
    assert torch.isfinite(t.loss(out, y))
