"""Every declared setting of every model, task and the training, drawn in and around its domain
(hypothesis): a tiny run completes (or ends as a failed record: a diverging run), or it is refused in
one line with exit 2 — never a traceback, never a hang, never the machine's memory."""
import contextlib
import dataclasses
import io
import math
import os
import shutil

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from seqbench import config, registry
from seqbench.cli import main

FIXED = {"limit_batches": "2", "latency_time": "0.01", "eval_batch_size": "32", "threads": "1"}


def _cases() -> list[tuple[str, str, str, object]]:
    """(model, task, key, dataclass field): the training keys on lstm/pmnist, each model's keys on its
    first compatible task, each task's keys with its first compatible model."""
    models, tasks = registry.models(), registry.tasks()
    pair = {m: next(t for t in tasks if registry.compatible(models[m], tasks[t])[0]) for m in models}
    with_task = {t: next(m for m in models if registry.compatible(models[m], tasks[t])[0]) for t in tasks}
    out = [("lstm", "pmnist", f.name, f) for f in dataclasses.fields(config.TrainConfig)]
    for m, e in models.items():
        out += [(m, pair[m], f"model.{f.name}", f) for f in dataclasses.fields(config.params_class(e.cls))]
    for t, e in tasks.items():
        out += [(with_task[t], t, f"task.{f.name}", f) for f in dataclasses.fields(config.params_class(e.cls))]
    return out


CASES = _cases()


def _values(owner_cls, f) -> list[str]:
    """Values in and around a field's domain, as a user types them."""
    tp, optional = config.field_type(owner_cls, f.name)
    choices, dom = config.field_meta(owner_cls, f.name, "choices"), config.field_meta(owner_cls, f.name, "domain")
    default = f.default if f.default is not dataclasses.MISSING else None
    vals = ["none"] if optional else []
    if choices:
        vals += [*choices, "not-a-choice"]
    elif tp is bool:
        vals += ["true", "false", "maybe"]
    elif tp is int:
        d = default if isinstance(default, int) and default > 0 else 1
        vals += [str(v) for v in {-1, 0, 1, 2, 3, d - 1, d, d + 1, 2 * d, 4 * d}]
    elif tp is float:
        d = default if isinstance(default, float) and math.isfinite(default) and default else 1.0
        vals += [repr(v) for v in (-1.0, 0.0, 1e-8, 0.5, 0.999, 1.0, d / 2, d, 2 * d, float("nan"), float("inf"))]
    else:
        vals += [str(default or ""), "", "x", "1x1", "0x0", "-1", "1,2,3"]
    if dom is not None and not callable(dom.bad):
        vals.append(str(dom.bad))
    return list(dict.fromkeys(vals))


def _owner(model: str, task: str, key: str):
    if key.startswith("model."):
        return config.params_class(registry.get_model(model).cls)
    if key.startswith("task."):
        return config.params_class(registry.get_task(task).cls)
    return config.TrainConfig


@st.composite
def draws(draw):
    model, task, key, f = draw(st.sampled_from(CASES))
    return model, task, key, draw(st.sampled_from(_values(_owner(model, task, key), f)))


EXAMPLES = int(os.environ.get("SEQBENCH_FUZZ_EXAMPLES", "40"))  # more for a deeper search (400: 2 minutes here)


@pytest.fixture(scope="module")
def data(fake_data, tmp_path_factory):
    """A copy of the session's generated data that the draws may write caches into (the SQuAD HF cache):
    the session's folder is never touched (conftest)."""
    out = tmp_path_factory.mktemp("fuzz-data") / "data"
    shutil.copytree(fake_data, out)
    return out


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
@given(draws())
def test_every_setting_in_and_around_its_domain_runs_or_is_one_line(data, tmp_path_factory, draw):
    model, task, key, value = draw
    res = tmp_path_factory.mktemp("fuzz")
    env = {"SEQBENCH_DATA": str(data), "SEQBENCH_VERIFY": "0", "SEQBENCH_DOWNLOAD": "0"}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    err = io.StringIO()
    try:
        sets = [a for k, v in {**FIXED, key: value}.items() for a in ("--set", f"{k}={v}")]
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            code = main(["run", "--model", model, "--task", task, "--preset", "tiny", *sets,
                         "--results", str(res), "--quiet"])
    finally:
        for k, v in old.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
    lines = err.getvalue().strip().splitlines()
    assert all(line.startswith("seqbench: ") for line in lines), (draw, lines)  # no traceback
    if code == 2:
        assert lines and lines[-1].startswith("seqbench: error: "), (draw, lines)
    else:
        assert code in (0, 1), (draw, code, lines)  # 1: a run that diverged, recorded as failed
        assert list((res / "runs").glob("*.json")), (draw, "no record")
