"""``seqbench sweep``: run lists, identity, the one-line errors, and sweeps on a local Ray (2 CPUs,
started once for the session; those tests skip only when Ray is not installed)."""
import io
import json
import os
import socket
import subprocess
import sys
import time
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
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # see docs/commands.md: one mode for every Ray process
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


@pytest.mark.parametrize("text,says", [("models = [\n", "not valid TOML"),
                                        ("models = ['lstm']\ntasks = ['adding']\nseed = [1]\n", "unknown key(s)"),
                                        ("models = ['lstm']\ntasks = ['adding']\n[set]\nlr = -1\n", "for 'lr'")])
def test_bad_sweep_file_without_ray_is_reported_as_bad(env, capsys, monkeypatch, tmp_path, text, says):
    """The file is read and every run checked before Ray is asked for (as --dry-run does)."""
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    f = tmp_path / "s.toml"
    f.write_text(text)
    rc, _, err = _sweep(capsys, str(f))
    assert rc == 2 and says in err and "needs Ray" not in err and err.count("\n") == 1, err


# ------------------------------------------------------------------------ the ETA
LSTM, HIPPO = ("lstm adding tiny", ("lstm", "adding", "tiny")), ("hippo adding tiny", ("hippo", "adding", "tiny"))


def test_eta_from_finished_runs_of_the_same_setting():
    est = sweep.estimate_eta
    assert est([LSTM] * 4, [(*LSTM, 10.0)], slots=2) == (20.0, False)
    assert est([LSTM] * 3, [(*LSTM, 10.0)], slots=2, running_for=[4.0, 4.0]) == (16.0, False)
    assert est([HIPPO] * 3, [(*LSTM, 10.0)], slots=2, running_for=[4.0, 4.0]) == (16.0, True)  # unseen: a bound
    assert est([HIPPO] * 3, [(*LSTM, 10.0), (*HIPPO, 100.0)], slots=2, running_for=[50.0, 50.0]) == (150.0, False)
    assert est([LSTM], [(*LSTM, 10.0)], slots=2, running_for=[12.0]) == (0.0, True)  # longer than estimated
    long = ("lstm adding tiny epochs=20", LSTM[1])  # a setting of its own, in the family of LSTM
    assert est([long], [(*LSTM, 10.0), (*long, 30.0)], slots=1) == (30.0, False)
    assert est([long], [(*LSTM, 10.0), (*LSTM, 20.0)], slots=1) == (15.0, False)  # its family's mean
    assert est([LSTM], [], slots=2) is None


def test_sweep_eta_on_a_simulated_sweep_of_unequal_runs(monkeypatch):
    """3 runs of 10 s then 3 of 100 s on 2 slots (Ray starts them in order): the sweep ends at 210 s. Each
    printed ETA is the true time left, or marked as a lower bound (and below it) while the 100 s runs
    have no finished run. The former ETA (elapsed / finished x left) said 0:20 at 20 s, for 3:10 left."""
    runs = [types.SimpleNamespace(label=f"{m} adding tiny seed={s}", model=m, task="adding", preset="tiny")
            for m in ("lstm", "hippo") for s in range(3)]
    cost = {"lstm": 10.0, "hippo": 100.0}
    start, free = {}, [0.0, 0.0]
    for r in runs:  # first in, first started, on the first free slot
        t = min(free)
        free[free.index(t)] = t + cost[r.model]
        start[id(r)] = t
    ends = sorted(runs, key=lambda r: start[id(r)] + cost[r.model])
    now = [0.0]
    monkeypatch.setattr(sweep, "time", types.SimpleNamespace(monotonic=lambda: now[0]))
    out = io.StringIO()
    status = sweep._Status(runs, lambda: 2, out)
    for r in ends:
        now[0] = start[id(r)] + cost[r.model]
        status.line(r.label, ok=True, run=r, seconds=cost[r.model])
    etas = [line.split(" | ")[3].split("]")[0] for line in out.getvalue().splitlines()]
    assert etas == ["ETA ≥ 0:20", "ETA ≥ 0:20", "ETA ≥ 0:10", "ETA 1:40", "ETA 1:30", "3:30"], etas
    left = [210 - start[id(r)] - cost[r.model] for r in ends]
    assert left == [200, 200, 190, 100, 90, 0]


# ------------------------------------------------------------------------ the local Ray dies with its driver
DRIVER = """
import os, sys, time
from seqbench import sweep
ray = sweep._ray()
head = sweep._start_head(ray, None, 1)
sweep._connect(ray, None, 1, head)
assert ray.get(ray.remote(lambda: os.getpid()).remote()) > 0  # a task runs on the helper's Ray
print(head.proc.pid, flush=True)
if sys.argv[1] == "exit":
    ray.shutdown()
    head.stop()
    print("stopped", flush=True)
else:
    time.sleep(300)
"""


def _session(sid: int) -> dict[int, str]:
    """The processes of session ``sid`` that still run (not zombies), with their command lines."""
    out = {}
    for d in Path("/proc").iterdir():
        try:
            st = (d / "stat").read_text().rsplit(")", 1)[1].split()
            if int(st[3]) == sid and st[0] != "Z":
                cmd = (d / "cmdline").read_bytes().decode(errors="replace").replace("\0", " ")
                out[int(d.name)] = " ".join(cmd.split())
        except (OSError, ValueError, IndexError):
            pass
    return out


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="the helper finds its processes in /proc (Linux)")
@pytest.mark.parametrize("end", ["kill -9", "exit"])
def test_local_ray_ends_with_its_driver(tmp_path, end):
    """A sweep's local Ray lives in a session of its own; its driver killed (or ending), none of it is left."""
    pytest.importorskip("ray")
    drv = subprocess.Popen([sys.executable, "-c", DRIVER, end.split()[0]], stdout=subprocess.PIPE, text=True,
                           cwd=tmp_path, env={**os.environ, "OMP_NUM_THREADS": "1"})
    sid = None
    try:
        sid = int(drv.stdout.readline())
        deadline = time.monotonic() + 60
        agents = {"ray::DashboardAgent", "ray::RuntimeEnvAgent"}
        while not agents <= {c.split()[0] for c in _session(sid).values() if c}:
            assert time.monotonic() < deadline, _session(sid)
            time.sleep(0.1)
        assert any("raylet" in c for c in _session(sid).values())
        if end == "exit":
            assert drv.stdout.readline() == "stopped\n" and drv.wait(timeout=60) == 0
            assert _session(sid) == {}  # stop() returns once every process has ended
        else:
            drv.kill()
            drv.wait()
            deadline = time.monotonic() + 10  # measured: 0.1-0.2 s
            while _session(sid) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert _session(sid) == {}
    finally:
        if drv.poll() is None:
            drv.kill()
        for pid in _session(sid) if sid else ():
            os.kill(pid, 9)


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
