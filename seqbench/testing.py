"""Checks for plugin authors: the cross-product test the suite runs on itself, offered as one call.

``check_model("my-gru")`` trains the model for two steps on the ``tiny`` preset of every compatible
task (generated data: no files, no network), tests, measures and records it, and checks what
``tests/test_models_tasks.py`` checks for every built-in pair: the run completes, training changed the
weights, every metric of the task is finite, FLOPs, params, latency and throughput are measured, the
record is written. ``check_task("my-task")`` does the same against every compatible built-in model.
Each returns one line per pair; any failure raises ``AssertionError`` naming every failing pair::

    from seqbench.testing import check_model
    import my_cells                      # registers "my-gru" with @register_model
    check_model("my-gru")
"""
from __future__ import annotations

import contextlib
import math
import os
import tempfile
from pathlib import Path

from . import registry

# A couple of steps per run (the suite's own cross-product test uses the same settings).
QUICK = {"epochs": 1, "limit_batches": 2, "latency_time": 0.01, "log_every": 1}


def _entry(what: str, name_or_cls) -> registry.Entry:
    table = registry.models() if what == "model" else registry.tasks()
    if isinstance(name_or_cls, str):
        return registry.get_model(name_or_cls) if what == "model" else registry.get_task(name_or_cls)
    for e in table.values():
        if e.cls is name_or_cls:
            return e
    raise AssertionError(f"{name_or_cls!r} is not a registered {what}: decorate it with "
                         f"@register_{what}(name) (seqbench.registry) first")


@contextlib.contextmanager
def generated_data(tasks):
    """A data root with generated files for ``tasks`` (their ``write_fake_data``), set as ``$SEQBENCH_DATA``
    with checksums and downloads off, for the ``with`` block; the environment is restored after."""
    keys = ("SEQBENCH_DATA", "SEQBENCH_VERIFY", "SEQBENCH_DOWNLOAD")
    saved = {k: os.environ.get(k) for k in keys}
    with tempfile.TemporaryDirectory(prefix="seqbench-check-") as tmp:
        data = Path(tmp) / "data"
        for t in tasks:
            t.cls.write_fake_data(data)
        os.environ.update({"SEQBENCH_DATA": str(data), "SEQBENCH_VERIFY": "0", "SEQBENCH_DOWNLOAD": "0"})
        try:
            yield Path(tmp)
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v


def check_pair(model: str, task: str, results, preset: str = "tiny", overrides: dict | None = None):
    """One run of ``model`` on ``task`` (two steps), checked; returns (record, runner). Data: whatever
    ``$SEQBENCH_DATA`` holds (``generated_data`` in the checks below)."""
    import torch

    from . import config
    from .runner import Runner

    cfg = config.resolve(registry.get_model(model), registry.get_task(task), preset, {**QUICK, **(overrides or {})})
    runner = Runner(cfg, results=results, quiet=True)
    before = {k: v.detach().clone() for k, v in runner.setup.model.state_dict().items()}
    rec = runner.fit()
    assert rec["status"] == "completed", f"the run failed: {rec['failure']}"
    after = runner.setup.model.state_dict()
    assert any(not torch.equal(before[k], after[k].cpu()) for k in before), "training changed no weight"
    spec = runner.setup.spec
    for split in ("val", "test"):
        got = rec["metrics"][split]
        assert set(got) == {m.name for m in spec.metrics}, f"{split} metrics {sorted(got)}"
        assert all(math.isfinite(v) for v in got.values()), f"{split} metrics not finite: {got}"
    meas = rec["measure"]
    assert meas["flops_per_sample"] > 0, "FLOPs per sample not > 0 (flops_per_step?)"
    assert meas["params"]["total"] == sum(p.numel() for p in runner.setup.model.parameters())
    assert 0 < meas["params"]["nonzero"] <= meas["params"]["total"]
    batches = runner.setup.task.latency_batches
    assert sorted(meas["latency"]) == sorted(f"b{b}" for b in batches), f"latency {sorted(meas['latency'])}"
    assert all(meas["latency"][f"b{b}"]["median_ms"] > 0 for b in batches)
    assert meas["train_throughput"] > 0
    assert meas["implementation"] in ("library kernel", "eager", "fused"), f"implementation {meas['implementation']}"
    assert Path(rec["path"]).is_file(), "no record written"
    return rec, runner


def _check(pairs: list[tuple[str, str]], tasks: list[registry.Entry], what: str) -> list[str]:
    if not pairs:
        raise AssertionError(f"no compatible partner for {what}")
    lines, failed = [], []
    with generated_data(tasks) as tmp:
        for model, task in pairs:
            try:
                rec, _ = check_pair(model, task, tmp / "results")
                sel = rec["task_info"]["select"]
                lines.append(f"ok     {model} x {task}: test {sel} {rec['metrics']['test'][sel]:.4g}")
            except Exception as e:  # noqa: BLE001 - every pair is tried; the failures are listed together
                failed.append(f"FAILED {model} x {task}: {type(e).__name__}: {e}")
    if failed:
        raise AssertionError("\n".join(failed + lines))
    return lines


def check_model(model) -> list[str]:
    """``model`` (a registered name or class) on the ``tiny`` preset of every compatible task."""
    me = _entry("model", model)
    tasks = [te for te in registry.tasks().values() if registry.compatible(me, te)[0]]
    return _check([(me.name, te.name) for te in tasks], tasks, f"model {me.name}")


def check_task(task) -> list[str]:
    """``task`` (a registered name or class) against every compatible built-in model, ``tiny`` preset."""
    te = _entry("task", task)
    models = [me for me in registry.models().values()
              if me.source == registry.BUILTIN and registry.compatible(me, te)[0]]
    return _check([(me.name, te.name) for me in models], [te], f"task {te.name}")
