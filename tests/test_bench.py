"""Micro-benchmarks (pytest-benchmark) of every registered model through its task's wrapper, at the shapes
of the ``fast`` preset.

Deselected by default (marker ``bench``). ``pytest -m bench --benchmark-disable`` calls each benchmarked
function once, untimed (CI does: they still run); ``pytest -m bench --benchmark-autosave`` times them and
saves the table to ``.benchmarks/``; the regression check between two commits: docs/testing.md.

Each model runs on the representative task of the first input kind it serves (``REPRESENTATIVE``), else on
its first compatible task, built as a run builds it: the config resolved from the ``fast`` preset
(``seqbench.bench.contender_config``, as ``seqbench bench`` resolves a contender), the task made by
``seqbench.build.make_task``, the backbone in ``task.wrap``; inputs from ``task.example_batch`` (no data
files are read). On the CPU, one torch thread (conftest's ``one_thread``). Per model and implementation:

- ``test_step``: a recurrent model's one time step (a T=1 input through the wrapper, the state returned);
  any other model's forward at batch 1. Eval mode, no autograd.
- ``test_sequence``: ``forward_b1``, the whole input at batch 1 (recurrent models; for the others that is
  ``test_step``), and ``train_b8``, a forward and backward of the task's loss plus the backbone's
  regulariser (``Setup.step``'s objective, without the optimiser) at batch 8.

Implementations: the choices of the model's ``impl`` setting (``model.impl``, e.g. eager / fused) where its
Params declare one, else its default ("default"), so a fused variant gets its own rows in the model's group.
The tests assert what the calls compute (shapes, finite outputs, losses and gradients, a step that carries
its state as the whole sequence does), never a speed.
"""
from __future__ import annotations

import dataclasses

import pytest
import torch

from seqbench import bench, config, measure, registry
from seqbench.build import make_task, seed_everything

pytestmark = pytest.mark.bench

PRESET = "fast"
TRAIN_BATCH = 8
# a model's task: the one of the first kind here that it serves; a model serving none: its first compatible task
REPRESENTATIVE = {registry.SEQUENCE: "pmnist", registry.IMAGE: "cifar10", registry.DENSE: "camvid",
                  registry.QA: "squad"}


def task_for(entry) -> str | None:
    for kind, task in REPRESENTATIVE.items():
        if kind in entry.kinds:
            return task
    return next((n for n, t in registry.tasks().items() if registry.compatible(entry, t)[0]), None)


def impls(entry) -> list[str | None]:
    """The implementations the model's Params declare (the choices of an ``impl`` field), else [None]: its default."""
    params = config.params_class(entry.cls)
    if "impl" not in {f.name for f in dataclasses.fields(params)}:
        return [None]
    return list(config.field_meta(params, "impl", "choices") or [None])


def recurrent(task: str) -> bool:
    return registry.get_task(task).cls.kind in registry.RECURRENT_KINDS


CASES = [(m, impl, t) for m, e in registry.models().items() if (t := task_for(e)) is not None for impl in impls(e)]


def case_id(m: str, impl: str | None) -> str:
    return f"{m}-{impl or 'default'}"


STEP = [pytest.param(m, impl, id=case_id(m, impl)) for m, impl, t in CASES]
SEQUENCE = [pytest.param(m, impl, what, id=f"{case_id(m, impl)}-{what}") for m, impl, t in CASES
            for what in (["forward_b1"] if recurrent(t) else []) + [f"train_b{TRAIN_BATCH}"]]


class Built:
    """One model on its task, as a run builds it (``seqbench.build.build``'s seed, task, backbone and wrapper,
    on the CPU; without the optimiser and strategy: MPTT's strategy reads the data when built)."""

    def __init__(self, model: str, impl: str | None):
        entry = registry.get_model(model)
        self.model, self.impl, self.task_name = model, impl or "default", task_for(entry)
        spec = model if impl is None else f"{model}+impl={impl}"
        self.cfg = bench.contender_config(spec, self.task_name, PRESET, {})
        seed_everything(self.cfg.train.seed, False)
        self.task = make_task(self.cfg)
        self.spec = self.task.spec()
        self.net = self.task.wrap(entry.cls(self.spec.d_input, self.cfg.model_params))
        self.recurrent = recurrent(self.task_name)
        self.runs = measure.implementation(self.net)  # what runs the recurrence: library kernel, eager, fused

    def forward(self, x):
        net = self.net

        def fn():
            net.eval()
            with torch.no_grad():
                return net(x)

        return fn

    def train_step(self, x, y):
        """Forward and backward of the task's loss plus the backbone's regulariser (``Setup.step``, no optimiser)."""
        net, task = self.net, self.task
        reg = getattr(net.backbone, "regularization", None)
        reg = reg if callable(reg) else None
        head = getattr(net, "head", None)

        def fn():
            net.train()
            net.zero_grad(set_to_none=True)
            out, _ = net(x)
            loss = task.loss(out, y)
            (loss + reg(head) if reg is not None else loss).backward()
            return out.detach(), loss.detach()

        return fn

    def describe(self, benchmark, what: str, x) -> None:
        benchmark.group = f"{self.model} ({self.task_name}, {PRESET})"
        benchmark.extra_info.update({
            "model": self.model, "task": self.task_name, "preset": PRESET, "what": what, "impl": self.impl,
            "implementation": self.runs, "shape": list(x.shape), "batch": int(x.shape[0]),
            "threads": torch.get_num_threads(), "torch": torch.__version__})


@pytest.fixture(scope="module")
def built(one_thread, tmp_path_factory):
    """``built(model, impl)``: each model built once for the module; no data root with files (every input is
    ``example_batch``'s), no downloads."""
    cache: dict = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SEQBENCH_DATA", str(tmp_path_factory.mktemp("no-data")))
        mp.setenv("SEQBENCH_DOWNLOAD", "0")

        def get(model: str, impl: str | None) -> Built:
            if (model, impl) not in cache:
                cache[model, impl] = Built(model, impl)
            return cache[model, impl]

        yield get


def check_output(b: Built, out, y) -> None:
    """A batch's output: one row per sample, finite, and the task's loss on it finite."""
    assert out.shape[0] == y.shape[0], (tuple(out.shape), tuple(y.shape))
    assert torch.isfinite(out).all()
    assert torch.isfinite(b.task.loss(out, y))


@pytest.mark.parametrize("model,impl", STEP)
def test_step(benchmark, built, model, impl):
    b = built(model, impl)
    x, y = b.task.example_batch(1)
    if b.recurrent:
        x1 = x[:, :1]
        b.describe(benchmark, "step (T=1)", x1)
        out, state = benchmark(b.forward(x1))
        assert state is not None and out.shape[0] == 1 and torch.isfinite(out).all()
        # the timed call is a step of the recurrence: the state it returns carries on as the sequence does
        with torch.no_grad():
            o2, _ = b.net(x[:, 1:2], state)
            o12, _ = b.net(x[:, :2])
        ref = o12[:, 1:] if getattr(b.net, "per_step", False) else o12
        torch.testing.assert_close(o2, ref, rtol=1e-4, atol=1e-5)
    else:
        b.describe(benchmark, "forward b1", x)
        out, _ = benchmark(b.forward(x))
        check_output(b, out, y)


@pytest.mark.parametrize("model,impl,what", SEQUENCE)
def test_sequence(benchmark, built, model, impl, what):
    b = built(model, impl)
    if what == "forward_b1":
        x, y = b.task.example_batch(1)
        b.describe(benchmark, "forward b1, whole input", x)
        out, _ = benchmark(b.forward(x))
        check_output(b, out, y)
        return
    x, y = b.task.example_batch(min(TRAIN_BATCH, b.cfg.train.batch_size))
    b.describe(benchmark, f"train b{x.shape[0]}: forward + backward", x)
    out, loss = benchmark(b.train_step(x, y))
    check_output(b, out, y)
    assert torch.isfinite(loss) and loss > 0
    params = [(n, p) for n, p in b.net.named_parameters() if p.requires_grad]
    assert params and all(p.grad is not None and torch.isfinite(p.grad).all() for _, p in params), \
        [n for n, p in params if p.grad is None]
