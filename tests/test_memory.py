"""A training step that would not fit is refused before training, in one line with the estimate; an
allocation that fails all the same is one line and a failed record, never a traceback."""
import json

import pytest
import torch

from seqbench import config, memory, registry
from seqbench.build import build
from seqbench.cli import main
from conftest import QUICK, refusal_lines

GIB = 2**30


def one_line(capsys, args, says):
    code = main(args)
    err = refusal_lines(capsys.readouterr().err)
    assert code == 2 and len(err) == 1 and says in err[0], err
    return err[0]


@pytest.mark.parametrize("args,free,says", [
    (["--model", "fcn", "--task", "camvid", "--set", "task.crop=5000x5000"], 4 * GIB, "4.0 GiB"),  # meta device
    (["--model", "lstm", "--task", "pmnist", "--batch-size", "256"], 64 * 2**20, "64 MiB"),  # a real sample, scaled
])
def test_a_step_that_does_not_fit_is_refused_before_training(env, capsys, monkeypatch, args, free, says):
    monkeypatch.setattr(memory, "available", lambda device: free)
    res = env["tmp"] / "res"
    line = one_line(capsys, ["run", *args, "--preset", "tiny", "--threads", "1", "--results", str(res)],
                    "needs about")
    assert f"more than the {says} this process may use" in line
    assert "lower batch_size to" in line or "does not fit even at batch 1" in line
    assert not res.exists()


def test_the_estimate_counts_what_a_step_keeps(env):
    """Activations grow with the batch and the input; parameters, gradients and Adam's two moments."""
    def estimate(model, task, **over):
        cfg = config.resolve(registry.get_model(model), registry.get_task(task), "tiny", {**QUICK, **over})
        return memory.step_estimate(build(cfg, data=False))

    a, b = estimate("lstm", "pmnist", batch_size=8), estimate("lstm", "pmnist", batch_size=16)
    assert b["activations"] == 2 * a["activations"] > 0 and a["how"] == "scaled"
    params = 4 * sum(p.numel() for p in build(config.resolve(registry.get_model("lstm"), registry.get_task("pmnist"),
                                                              "tiny", QUICK), data=False).model.parameters())
    assert a["state"] == params * 4  # weights, gradients, two Adam moments
    small, big = (estimate("fcn", "camvid", **{"task.crop": c}) for c in ("200x200", "400x400"))
    assert small["how"] == big["how"] == "meta" and 3.5 < big["activations"] / small["activations"] < 4.5


def test_the_estimate_changes_no_weight_buffer_or_random_draw(env):
    cfg = config.resolve(registry.get_model("resnet"), registry.get_task("cifar10"), "tiny", QUICK)
    setup = build(cfg, data=False)
    state = {k: v.clone() for k, v in setup.model.state_dict().items()}
    rng = torch.get_rng_state()
    memory.step_estimate(setup)
    assert all(torch.equal(v, setup.model.state_dict()[k]) for k, v in state.items())
    assert torch.equal(rng, torch.get_rng_state())


def test_an_allocation_that_fails_in_training_is_one_line_and_a_failed_record(env, capsys, monkeypatch):
    from seqbench.build import Setup

    def fail(self, batch, plain=False):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't allocate memory: "
                           "you tried to allocate 1099511627776 bytes. Error code 12 (Cannot allocate memory)")

    monkeypatch.setattr(Setup, "step", fail)
    line = one_line(capsys, ["run", "--model", "lstm", "--task", "pmnist", "--preset", "tiny"],
                    "out of memory at batch")
    (rec,) = [json.loads(p.read_text()) for p in (env["results"] / "runs").glob("*.json")]
    assert rec["status"] == "failed" and "out of memory at batch 64" in rec["failure"] and "estimated at" in line
