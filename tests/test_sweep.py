"""``seqbench sweep``: run lists, identity, the one-line errors, and sweeps on a local Ray (2 CPUs,
started once for the session; those tests skip only when Ray is not installed)."""
import json
import os
import socket
import sys
import types
from pathlib import Path

import pytest

from seqbench import cli, config, records, registry, sweep
from seqbench.runner import Runner

# the tiny runs every sweep here is made of: a few steps, one thread
TINY = ["--presets", "tiny", "--set", "limit_batches=2", "--set", "latency_time=0.01", "--set", "log_every=1"]
SWEEP_FILES = sorted((Path(__file__).parent.parent / "scripts" / "sweeps").glob("*.toml"))


@pytest.fixture(scope="session")
def ray_local():
    ray = pytest.importorskip("ray")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # see README: one mode for every Ray process
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    yield ray
    ray.shutdown()


def _sweep(capsys, *args):
    rc = cli.main(["sweep", *args])
    out, err = capsys.readouterr()
    return rc, out, err


def _records(results) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((results / "runs").glob("*.json"))]


def _tree(root: Path) -> dict:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")}


# ------------------------------------------------------------------------ no Ray needed
def test_identity_ignores_bookkeeping_and_keys_added_later():
    cfg = config.resolve(registry.get_model("lstm"), registry.get_task("adding"), "tiny", {"seed": 3})
    flat = cfg.flat()
    h = config.config_hash(flat)
    assert config.config_hash({**flat, "threads": 1, "device": "cpu", "log_every": 7, "latency_time": 0.2}) == h
    older = {k: v for k, v in flat.items() if k != "channels_last"}  # a record written before the key existed
    assert config.config_hash(older) == h
    assert config.config_hash({**flat, "seed": 4}) != h
    assert config.config_hash({**flat, "channels_last": True}) != h  # not the default: another run
    assert config.config_hash({**flat, "preset": "fast"}) != h


def test_every_sweep_file_expands():
    counts = {}
    for path in SWEEP_FILES:
        spec = sweep.build_spec(str(path))
        runs, skipped = sweep.expand(spec)
        assert not skipped and len({r.hash for r in runs}) == len(runs)
        counts[path.stem] = len(runs)
    assert counts == {"cifar10-fast": 9, "iss-ptb-lambda": 5, "mptt-hydro": 45, "mptt-melbourne": 45,
                      "mptt-seattle": 45}
    mptt = sweep.expand(sweep.build_spec(str(SWEEP_FILES[0].with_name("mptt-hydro.toml"))))[0]
    pairs = {(r.cfg.train.strategy, r.cfg.train.keeper) for r in mptt}
    assert len(pairs) == 9 and {("mptt", 0.0), ("mptt", 1.0)} <= pairs
    assert {r.cfg.train.seed for r in mptt} == set(range(5))


@pytest.mark.parametrize("args,says", [
    (["no/such/file.toml"], "does not exist"),
    (["--models", "lstm,no-such-model", "--tasks", "adding"], "unknown model 'no-such-model'"),
    (["--models", "lstm", "--tasks", "adding", "--set", "model.no_key=1"], "unknown key 'model.no_key'"),
    (["--models", "lstm", "--tasks", "adding", "--set", "lr=-1"], "bad value '-1' for 'lr'"),
    (["--models", "lstm", "--tasks", "adding", "--seeds", "0,x"], "bad seeds"),
    (["--models", "resnet", "--tasks", "adding"], "the sweep has no run: model 'resnet' cannot run task 'adding'"),
    (["--tasks", "adding"], "a sweep needs models and tasks"),
    (["--models", "lstm", "--tasks", "adding", "--cpus-per-run", "0"], "--cpus-per-run"),
])
def test_bad_input_is_one_line_before_ray_starts(env, capsys, monkeypatch, args, says):
    monkeypatch.setitem(sys.modules, "ray", types.SimpleNamespace())  # any use of Ray would fail loudly
    rc, out, err = _sweep(capsys, *args)
    assert rc == 2 and err.startswith("seqbench: error: ") and says in err and err.count("\n") == 1
    assert not env["results"].exists()


def test_bad_sweep_files(env, capsys, tmp_path):
    for text, says in [("models = [\n", "not valid TOML"),
                       ("models = ['lstm']\ntasks = ['adding']\nseed = [1]\n", "unknown key(s) 'seed'"),
                       ("models = ['lstm']\ntasks = ['adding']\nseeds = [0]\n[set]\nseed = 1\n",
                        "key 'seed' is given twice")]:
        f = tmp_path / "s.toml"
        f.write_text(text)
        rc, _, err = _sweep(capsys, str(f), "--dry-run")
        assert rc == 2 and says in err and err.count("\n") == 1, err


def test_without_ray_one_line_how_to_install(env, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    rc, out, err = _sweep(capsys, "--models", "lstm", "--tasks", "adding")
    assert rc == 2 and err == f"seqbench: error: {sweep.INSTALL_HINT}\n"
    assert not env["results"].exists()


def test_dry_run_changes_nothing_and_sees_seqbench_run_records(env, capsys, one_thread):
    # a run made by `seqbench run` (another thread count, a timestamped id) is the sweep's seed 0
    assert cli.main(["run", "--model", "lstm", "--task", "adding", "--preset", "tiny", "--threads", "2", "--quiet",
                     "--set", "limit_batches=2", "--set", "latency_time=0.01", "--set", "log_every=1"]) == 0
    capsys.readouterr()
    res = env["results"]
    (rec,) = _records(res)
    assert rec["config_hash"] == config.config_hash(rec["config"])
    stale = res / "runs" / f".tmp-{socket.gethostname()}-999999999-abcd.json"  # a dead writer's temp file
    stale.write_text("{")
    before = _tree(res)
    rc, out, _ = _sweep(capsys, "--models", "lstm", "--tasks", "adding", "--seeds", "0,1", *TINY, "--dry-run")
    assert rc == 0 and _tree(res) == before
    assert "2 runs; 1 done" in out
    assert "done    lstm adding tiny" in out and rec["run_id"] in out
    assert "todo    lstm adding tiny" in out and "seed=1" in out


def test_lock_of_a_lost_node_is_removed(tmp_path, monkeypatch):
    lock = tmp_path / "lock"
    lock.write_text("ghost-host 12345 deadbeef\n")
    alive = [{"NodeManagerHostname": "ghost-host", "Alive": True}]
    monkeypatch.setitem(sys.modules, "ray", types.SimpleNamespace(nodes=lambda: alive))
    sweep._wait_for_lock(lock, timeout=0.2)
    assert lock.exists()  # its host still has a live Ray node: the runner will refuse, in one line
    alive[0]["Alive"] = False
    sweep._wait_for_lock(lock, timeout=5)
    assert not lock.exists()


# ------------------------------------------------------------------------ on a local Ray
def test_sweep_writes_records_report_and_rerun_runs_nothing(env, capsys, ray_local):
    args = ["--models", "lstm,gru,resnet", "--tasks", "adding", "--seeds", "0,1", *TINY, "--name", "t4"]
    rc, out, _ = _sweep(capsys, *args)
    assert rc == 0, out
    assert out.count("skipped: model 'resnet' cannot run task 'adding'") == 1
    recs = _records(env["results"])
    assert len(recs) == 4 and all(r["status"] == "completed" and r["sweep"] == "t4" for r in recs)
    assert {(r["model"], r["seed"]) for r in recs} == {(m, s) for m in ("lstm", "gru") for s in (0, 1)}
    assert all(r["config"]["threads"] == 1 and r["measure"]["torch_threads"] == 1 for r in recs)
    assert all(r["config_hash"] == config.config_hash(r["config"]) for r in recs)
    assert all(r["run_id"] in out for r in recs)
    summary = (env["results"] / "summary.csv").read_text()
    assert all(r["run_id"] in summary for r in recs)
    report_md = (env["results"] / "report.md").read_text()
    assert "| adding | gru | tiny | minibatch | limit_batches=2 | 2 |" in report_md
    assert "| adding | lstm | tiny | minibatch | limit_batches=2 | 2 |" in report_md
    assert "sweep t4, adding (mean ± std over seeds)" in out and "| adding | lstm | tiny |" in out

    runs_before = _tree(env["results"] / "runs")
    rc, out, _ = _sweep(capsys, *args)
    assert rc == 0 and "4 runs; 4 done, 0 failed" in out and "0 to run" in out
    assert _tree(env["results"] / "runs") == runs_before


def test_killed_worker_is_retried_and_resumes_to_the_same_metrics(env, capsys, ray_local, monkeypatch, one_thread):
    marker = env["tmp"] / "killed-once"
    monkeypatch.setenv("SEQBENCH_FAULT", "save:last.pt@2")  # killed writing epoch 2's checkpoint
    monkeypatch.setenv("SEQBENCH_FAULT_ONCE", str(marker))  # ... the first attempt only
    rc, out, _ = _sweep(capsys, "--models", "lstm", "--tasks", "adding", "--seeds", "3", *TINY, "--set", "epochs=3")
    monkeypatch.delenv("SEQBENCH_FAULT")
    assert marker.exists(), "no attempt was killed"
    assert rc == 0, out
    assert "resumed after epoch 1" in out
    (rec,) = _records(env["results"])
    assert rec["status"] == "completed" and [h["epoch"] for h in rec["history"]] == [1, 2, 3]
    undisturbed = Runner(config.from_flat(rec["config"], registry.get_model("lstm"), registry.get_task("adding")),
                         results=env["tmp"] / "plain", quiet=True).fit()
    assert rec["metrics"]["test"] == undisturbed["metrics"]["test"]
    assert rec["metrics"]["val"] == undisturbed["metrics"]["val"]
    strip = lambda h: [{k: v for k, v in r.items() if not k.endswith("_s")} for r in h]  # noqa: E731
    assert strip(rec["history"]) == strip(undisturbed["history"])


def test_nan_run_is_recorded_failed_and_not_retried(env, capsys, ray_local):
    # a step size that makes the loss overflow within a few steps (a Ray worker cannot see a model
    # registered only in this process, so no NaN model here)
    args = ["--models", "lstm", "--tasks", "adding", "--presets", "tiny", "--set", "limit_batches=6",
            "--set", "log_every=1",
            "--set", "optimizer=sgd", "--set", "lr=1e10"]
    rc, out, _ = _sweep(capsys, *args)
    assert rc == 1
    (rec,) = _records(env["results"])
    assert rec["status"] == "failed" and "non-finite" in rec["failure"] and rec["failure"] in out
    rc, out, _ = _sweep(capsys, *args)  # a rerun leaves it failed
    assert rc == 1 and "1 failed" in out and "0 to run" in out and len(_records(env["results"])) == 1
    rc, out, _ = _sweep(capsys, *args, "--retry-failed")  # unless asked: a new attempt, a new record
    recs = _records(env["results"])
    assert rc == 1 and len(recs) == 2 and {r["run_id"] for r in recs} == {rec["run_id"], rec["run_id"] + "-r1"}


def test_completed_run_without_a_finite_validation_value_is_a_usable_record():
    # the runner records it completed (the last weights tested); a sweep must see it done, not rerun it
    rec = {"schema": 1, "run_id": "r", "status": "completed", "model": "lstm", "task": "adding", "preset": "tiny",
           "seed": 0, "config": {}, "env": {}, "task_info": {"select": "mse"}, "history": [], "timing": {},
           "metrics": {"best_epoch": None, "val": None, "test": {"mse": 1.0}}, "measure": {"params": {"total": 1}}}
    assert records.problem(rec) is None
    assert records.problem({**rec, "metrics": {"best_epoch": 1, "val": None, "test": {"mse": 1.0}}}) is not None
