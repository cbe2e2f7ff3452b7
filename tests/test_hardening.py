"""Bad input of every kind: one line ``seqbench: error: ...``, exit 2, no traceback, and nothing
written under the results folder. Out-of-domain values are generated from the declarations of every
key of every registered model and task, so a new model or task is covered without a new test."""
import dataclasses
import json
import os
import socket
import subprocess
import sys

import pytest
import torch

from seqbench import config, records, registry
from seqbench.cli import main
from seqbench.config import TrainConfig, field_meta, field_type, params_class
from seqbench.model import RecurrentBackbone
from seqbench.runner import Runner
from conftest import QUICK, refusal_lines

TINY = ["--preset", "tiny", "--set", "limit_batches=1", "--set", "latency_time=0.01", "--quiet"]


def tree(path):
    """Every file and folder below ``path`` (to show that nothing was written)."""
    return sorted(str(p.relative_to(path)) for p in path.rglob("*")) if path.exists() else None


def one_line(capsys, argv, *needles, code=2):
    rc = main(argv)
    err = capsys.readouterr().err
    lines = refusal_lines(err)
    assert rc == code, (rc, err)
    assert "Traceback" not in err
    assert len(lines) == 1, err
    assert lines[0].startswith("seqbench: error: "), lines[0]
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


# ------------------------------------------------------------------- declared domains
def _parts():
    """(label, params class, key prefix, a model and task to run it with) for every part of a config."""
    ms, ts = registry.models(), registry.tasks()
    out = [("train", TrainConfig, "", "lstm", "pmnist")]
    for name, e in ms.items():
        task = next(t for t, te in ts.items() if registry.compatible(e, te)[0])
        out.append((f"model {name}", params_class(e.cls), "model.", name, task))
    for name, e in ts.items():
        model = next(m for m, me in ms.items() if registry.compatible(me, e)[0])
        out.append((f"task {name}", params_class(e.cls), "task.", model, name))
    return out


def _bad_value(cls, name):
    """An out-of-domain value for a key, as typed on the command line, and what the error must say."""
    tp, _ = field_type(cls, name)
    choices, dom = field_meta(cls, name, "choices"), field_meta(cls, name, "domain")
    if choices:
        return "no-such-choice", "choose one of"
    if tp is bool:
        return "maybe", "true or false"
    assert dom is not None, f"{cls.__name__}.{name} declares no domain"
    return str(dom.bad), dom.describe()


CASES = [(label, prefix + f.name, cls, f.name, m, t)
         for label, cls, prefix, m, t in _parts() for f in dataclasses.fields(cls)]


def test_every_setting_declares_its_domain():
    """Numbers and free-form strings need a domain (or choices); a bool is true or false."""
    missing = []
    for label, key, cls, name, _, _ in CASES:
        tp, _ = field_type(cls, name)
        if tp is bool or field_meta(cls, name, "choices"):
            continue
        dom = field_meta(cls, name, "domain")
        if dom is None:
            missing.append(f"{label}: {key}")
        else:
            assert not dom(dom.bad), f"{key}: its 'bad' example {dom.bad!r} is inside the domain"
    assert not missing, f"settings without a declared domain: {missing}"


@pytest.mark.parametrize("label,key,cls,name,model,task", CASES, ids=[f"{c[0]}:{c[1]}" for c in CASES])
def test_out_of_domain_value_is_one_line_before_any_work(env, capsys, label, key, cls, name, model, task):
    bad, what = _bad_value(cls, name)
    results = env["tmp"] / "res"
    line = one_line(capsys, ["run", "--model", model, "--task", task, "--preset", "tiny", "--results", str(results),
                             "--set", f"{key}={bad}"], f"'{key}'", what)
    assert tree(results) is None, line  # not even the folder


# --------------------------------------------------------------- the cases
CLI_CASES = {
    "batch size 0": (["--batch-size", "0"], "'batch_size': expected an integer >= 1"),
    "eval batch size 0": (["--set", "eval_batch_size=0"], "'eval_batch_size'"),
    "negative lr": (["--lr", "-1"], "'lr': expected a finite number > 0"),
    "nan lr": (["--lr", "nan"], "'lr'"),
    "inf lr": (["--lr", "inf"], "'lr'"),
    "hidden 0": (["--hidden", "0"], "'model.hidden'"),
    "layers 0": (["--set", "model.layers=0"], "'model.layers'"),
    "log_every 0": (["--set", "log_every=0"], "'log_every'"),
    "limit_batches -1": (["--set", "limit_batches=-1"], "'limit_batches': expected an integer >= 0"),
    "train_subset 0": (["--set", "task.train_subset=0"], "'task.train_subset'"),
    "val_fraction 0": (["--set", "task.val_fraction=0"], "'task.val_fraction': expected a fraction in (0, 1)"),
    "val_fraction 1.5": (["--set", "task.val_fraction=1.5"], "'task.val_fraction'"),
    "seed -1": (["--seed", "-1"], "'seed': expected an integer in [0, 4294967295]"),
    "seed 2^32": (["--seed", str(2**32)], "'seed'"),
    "epochs 0": (["--set", "epochs=0"], "'epochs': expected an integer >= 1"),
    "epochs -1": (["--set", "epochs=-1"], "'epochs'"),
    "device mps": (["--device", "mps"], "'device': expected auto, cpu, cuda or cuda:N"),
    "threads 0": (["--threads", "0"], "'threads'"),
    "stop after 0 epochs": (["--stop-after-epochs", "0"], "--stop-after-epochs: expected an integer >= 1"),
    "stop after nan minutes": (["--stop-after-minutes", "nan"], "--stop-after-minutes: expected a finite number > 0"),
    "set without =": (["--set", "epochs"], "--set expects key=value"),
    "unknown strategy": (["--strategy", "nope"], "'strategy': expected a registered strategy"),
}


@pytest.mark.parametrize("case", list(CLI_CASES))
def test_cli_case(env, capsys, case):
    args, needle = CLI_CASES[case]
    results = env["tmp"] / "res"
    one_line(capsys, ["run", "--model", "lstm", "--task", "pmnist", *TINY, "--results", str(results), *args], needle)
    assert tree(results) is None


@pytest.mark.parametrize("task,keys,needle", [
    ("climate-hydro", ("train_frac=0.7", "val_frac=0.4"), "the rest is the test part"),
    ("squad", ("val_fraction=0.5", "test_fraction=0.5"), "the rest of the articles trains")])
def test_two_fractions_must_leave_a_third_split(env, capsys, task, keys, needle):
    model = "bidaf" if task == "squad" else "lstm"
    results = env["tmp"] / "res"
    sets = [a for k in keys for a in ("--set", f"task.{k}")]
    one_line(capsys, ["run", "--model", model, "--task", task, *TINY, "--results", str(results), *sets],
             "expected a sum < 1", needle)
    assert tree(results) is None


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine without CUDA")
@pytest.mark.parametrize("args,needle", [(["--amp", "fp16"], "amp fp16 needs a CUDA device"),
                                         (["--device", "cuda"], "no CUDA device"),
                                         (["--device", "cuda:3"], "no CUDA device")])
def test_device_and_amp_are_checked_against_the_machine(env, capsys, args, needle):
    results = env["tmp"] / "res"
    one_line(capsys, ["run", "--model", "lstm", "--task", "pmnist", *TINY, "--results", str(results), *args], needle)
    assert tree(results) is None


class _NoLowPrecision(RecurrentBackbone):
    """Fails under autocast, as oneDNN's LSTM does in bf16 on many CPUs."""

    def __init__(self, d_input, p):
        super().__init__()
        self.d_output = 3
        self.lin = torch.nn.Linear(d_input, 3)

    def forward(self, x, state=None):
        if torch.is_autocast_enabled("cpu"):
            raise RuntimeError("could not create a primitive descriptor for the LSTM forward propagation primitive")
        return self.lin(x), state

    def flops_per_step(self):
        return 1


def test_amp_the_kernels_lack_is_found_before_training(env, capsys):
    registry.register_model("no-bf16-test")(_NoLowPrecision)
    try:
        results = env["tmp"] / "res"
        one_line(capsys, ["run", "--model", "no-bf16-test", "--task", "pmnist", *TINY, "--results", str(results),
                          "--amp", "bf16"], "amp bf16 does not run no-bf16-test on cpu", "primitive descriptor")
        assert not (results / "runs").exists() or not list((results / "runs").iterdir())
    finally:
        registry.unregister("no-bf16-test")


def test_long_input_is_cut_in_the_error(env, capsys):
    line = one_line(capsys, ["run", "--model", "x" * 10_000, "--task", "pmnist"], "unknown model 'xxx")
    assert len(line) < 600 and "10002 chars" in line


def test_results_folder_that_is_a_file(env, capsys):
    f = env["tmp"] / "res"
    f.write_text("not a folder")
    one_line(capsys, ["run", "--model", "lstm", "--task", "pmnist", *TINY, "--results", str(f)],
             f"results folder {f} cannot be written")
    assert f.read_text() == "not a folder"
    below = f / "deeper"
    one_line(capsys, ["run", "--model", "lstm", "--task", "pmnist", *TINY, "--results", str(below)],
             "cannot be written")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_results_folder(env, capsys):
    res = env["tmp"] / "res"
    res.mkdir()
    res.chmod(0o500)
    try:
        one_line(capsys, ["run", "--model", "lstm", "--task", "pmnist", *TINY, "--results", str(res)],
                 "cannot be written")
    finally:
        res.chmod(0o755)


def test_data_root_that_is_a_file(env, capsys, monkeypatch):
    f = env["tmp"] / "data-file"
    f.write_text("x")
    monkeypatch.setenv("SEQBENCH_DATA", str(f))
    one_line(capsys, ["run", "--model", "lstm", "--task", "pmnist", *TINY], f"data root {f} (SEQBENCH_DATA) is a file")


def test_failed_download_says_why(env, capsys, monkeypatch, tmp_path):
    import urllib.error

    import torchvision.datasets.utils as tvu

    def offline(*a, **k):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(tvu, "download_url", offline)
    monkeypatch.setenv("SEQBENCH_DOWNLOAD", "1")
    monkeypatch.setenv("SEQBENCH_DATA", str(tmp_path / "empty"))
    one_line(capsys, ["run", "--model", "lstm", "--task", "pmnist", *TINY], "MNIST data not found",
             "the download failed (URLError: [Errno -3] Temporary failure in name resolution")
    monkeypatch.setenv("SEQBENCH_DOWNLOAD", "0")
    one_line(capsys, ["run", "--model", "lstm", "--task", "pmnist", *TINY], "downloads are off (SEQBENCH_DOWNLOAD=0)")


# ------------------------------------------------------------------------- report
def test_report_on_a_missing_folder(env, capsys):
    missing = env["tmp"] / "reslts"
    one_line(capsys, ["report", "--results", str(missing)], f"results folder {missing} does not exist")
    assert not missing.exists()


def test_report_that_cannot_be_written(env, capsys):
    res = env["tmp"] / "res"
    (res / "runs").mkdir(parents=True)
    (res / "report.md").mkdir()  # in the way of the report file
    one_line(capsys, ["report", "--results", str(res)], "cannot write the report into")


def test_report_skips_incomplete_records_with_one_warning_each(env, capsys):
    res = env["tmp"] / "res"
    assert main(["run", "--model", "gru", "--task", "pmnist", *TINY, "--results", str(res)]) == 0
    good = next((res / "runs").glob("*.json"))
    rec = json.loads(good.read_text())
    for name, change in {"null-metrics": {"metrics": None}, "no-config": {"config": "__drop__"},
                         "null-measure": {"measure": None},
                         "no-test": {"metrics": {"best_epoch": 1, "val": {}, "test": None}}}.items():
        bad = {k: v for k, v in rec.items() if change.get(k) != "__drop__"}
        bad.update({k: v for k, v in change.items() if v != "__drop__"})
        bad["run_id"] = name
        (res / "runs" / f"{name}.json").write_text(json.dumps(bad))
    (res / "runs" / "torn.json").write_text('{"schema": 1, "run_')
    capsys.readouterr()
    assert main(["report", "--results", str(res)]) == 0
    out, err = capsys.readouterr()
    assert "1 records" in out
    warnings = [ln for ln in err.splitlines() if ln.startswith("seqbench: warning:")]
    assert len(warnings) == 5 and len(set(warnings)) == 5, err
    assert "seqbench: warning" not in out
    assert any("field 'metrics' is null" in w for w in warnings)
    assert any("field 'config' is missing" in w for w in warnings)
    assert any("unreadable record" in w and "torn.json" in w for w in warnings)


# --------------------------------------------------------------- resume and crashes
def test_resume_hint_names_the_results_folder_and_works(env, capsys):
    res = env["tmp"] / "elsewhere"
    assert main(["run", "--model", "gru", "--task", "pmnist", *TINY, "--set", "epochs=2", "--results", str(res),
                 "--stop-after-epochs", "1"]) == 0
    out = capsys.readouterr().out
    hint = next(ln for ln in out.splitlines() if "continue with:" in ln)
    cmd = hint.split("continue with: seqbench ")[1].split()
    assert cmd[cmd.index("--results") + 1] == str(res)
    assert main(cmd) == 0
    assert "completed" in capsys.readouterr().out


def test_corrupted_best_checkpoint_at_the_end_of_a_resumed_run(env, capsys):
    res = env["tmp"] / "res"
    assert main(["run", "--model", "gru", "--task", "pmnist", *TINY, "--set", "epochs=2", "--results", str(res),
                 "--stop-after-epochs", "1"]) == 0
    run_id = next((res / "checkpoints").iterdir()).name
    best = res / "checkpoints" / run_id / "best.pt"
    best.write_bytes(best.read_bytes()[:100])
    capsys.readouterr()
    one_line(capsys, ["run", "--resume", run_id, "--results", str(res)], f"best checkpoint {best} is unreadable",
             "recorded as failed", "last.pt")
    rec = json.loads((res / "runs" / f"{run_id}.json").read_text())
    assert rec["status"] == "failed" and "best.pt" in rec["failure"]
    last = torch.load(res / "checkpoints" / run_id / "last.pt", weights_only=False)
    assert last["epoch"] == 2 and set(last["model"]) >= {"head.weight"}


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_stale_temporary_records_are_removed(env):
    runs = env["tmp"] / "res" / "runs"
    runs.mkdir(parents=True)
    host = socket.gethostname()
    dead = runs / f".tmp-{host}-{_dead_pid()}-abcd1234.json"
    alive = runs / f".tmp-{host}-{os.getpid()}-abcd1234.json"
    other_host = runs / ".tmp-elsewhere-1-abcd1234.json"
    for p in (dead, alive, other_host):
        p.write_bytes(b"")
    records.load_all(env["tmp"] / "res")
    assert not dead.exists() and alive.exists() and other_host.exists()


def test_record_mode_follows_the_umask(env):
    old = os.umask(0o022)
    try:
        cfg = config.resolve(registry.get_model("gru"), registry.get_task("pmnist"), "tiny", QUICK)
        rec = Runner(cfg, quiet=True).fit()
    finally:
        os.umask(old)
    assert os.stat(rec["path"]).st_mode & 0o777 == 0o644
    assert not list(records.results_dir().joinpath("runs").glob(".tmp-*"))


def test_a_run_in_use_is_refused_and_a_dead_owner_is_taken_over(env, capsys):
    res = env["tmp"] / "res"
    assert main(["run", "--model", "gru", "--task", "pmnist", *TINY, "--set", "epochs=2", "--results", str(res),
                 "--stop-after-epochs", "1"]) == 0
    run_id = next((res / "checkpoints").iterdir()).name
    lock = res / "checkpoints" / run_id / "lock"
    assert not lock.exists()  # released when the first invocation stopped
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lock.write_text(f"{socket.gethostname()} {sleeper.pid} feedbeef\n")
        capsys.readouterr()
        one_line(capsys, ["run", "--resume", run_id, "--results", str(res)],
                 f"run '{run_id}' is in use by process {sleeper.pid}")
        assert not (res / "runs").exists() or not list((res / "runs").glob("*.json"))
    finally:
        sleeper.kill()
        sleeper.wait()
    lock.write_text(f"{socket.gethostname()} {_dead_pid()} feedbeef\n")  # its owner was killed
    assert main(["run", "--resume", run_id, "--results", str(res)]) == 0
    assert not lock.exists()


def test_a_second_runner_on_the_same_run_id_is_refused(env):
    cfg = config.resolve(registry.get_model("gru"), registry.get_task("pmnist"), "tiny", QUICK)
    a = Runner(cfg, quiet=True, run_id="same-id")
    b = Runner(cfg, quiet=True, run_id="same-id")
    with a.dir.lock():
        with pytest.raises(Exception, match="is in use by process"):
            b.fit()
    assert not (a.dir / "lock").exists()


# ------------------------------------------------------------------- threads, output
def test_threads_are_set_recorded_and_printed(env, capsys):
    n = torch.get_num_threads()
    try:
        assert main(["run", "--model", "gru", "--task", "pmnist", *TINY, "--threads", "1"]) == 0
        out = capsys.readouterr().out
        assert "1 thread(s)" in out.splitlines()[0]
        rec = records.load_all()[0]
        assert rec["config"]["threads"] == 1 and rec["measure"]["torch_threads"] == 1
    finally:
        torch.set_num_threads(n)


def test_default_threads_never_exceed_the_cores_given(monkeypatch):
    from seqbench import build as R

    n = torch.get_num_threads()
    monkeypatch.setattr(R, "cores_available", lambda: 1)
    try:
        assert R.set_threads(None) == 1
    finally:
        torch.set_num_threads(n)


def test_progress_in_a_log_is_plain_lines(env, capsys):
    """capsys's stderr is not a terminal: no bars, no carriage returns or escape sequences."""
    from seqbench.progress import Progress

    for _ in Progress(range(3), total=3, desc="epoch 1", every=0.0):
        pass
    err = capsys.readouterr().err
    assert err.splitlines() == [f"  epoch 1: {i}/3 steps (0 s)" for i in (1, 2, 3)]
    assert main(["run", "--model", "gru", "--task", "pmnist", "--preset", "tiny", "--set", "limit_batches=2",
                 "--set", "latency_time=0.01"]) == 0
    out, err = capsys.readouterr()
    assert "\r" not in out + err and "\x1b" not in out + err
    assert "epoch 1/1" in out


def test_no_warning_noise_on_an_error(env):
    """A real process: the error line and nothing else (torch's 'No CUDA runtime' warning came from
    importing torch.utils.benchmark at start-up)."""
    out = subprocess.run([sys.executable, "-m", "seqbench", "run", "--model", "nope", "--task", "pmnist"],
                         capture_output=True, text=True, env=os.environ.copy())
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.strip().splitlines() == [out.stderr.strip()] and out.stderr.startswith("seqbench: error:")
    mods = subprocess.run([sys.executable, "-c", "import sys, seqbench.cli, seqbench.runner, seqbench.measure; "
                           "print('torch.utils.benchmark' in sys.modules)"], capture_output=True, text=True)
    assert mods.stdout.strip() == "False"


def test_summary_says_what_happened_instead_of_none(capsys):
    from seqbench.cli import _summary

    rec = {"run_id": "r", "status": "completed", "path": "p", "env": {"device": "cpu"},
           "task_info": {"select": "acc"},
           "metrics": {"val": None, "test": {"acc": 0.1}, "selection": {"epoch": 1, "reason": "last_no_finite_val"}},
           "measure": {"params": {"total": 10, "nonzero": 10}, "sparsity": {"overall": 0.0}, "flops_per_sample": 5,
                       "latency": {"b1": {"median_ms": 1.0, "iqr_ms": 0.0, "runs": 1},
                                   "b64": {"median_ms": 2.0, "iqr_ms": 0.1, "runs": 5}},
                       "torch_threads": 1, "train_throughput": 3.0},
           "timing": {"wall_s": 1.0, "train_s": 0.5}}
    _summary(rec)
    out = capsys.readouterr().out
    assert "None" not in out
    assert "no epoch had a finite validation acc" in out
    assert "b1 1.000 ms (1 timing run: no IQR)" in out and "b64 2.000 ms (IQR 0.100)" in out
