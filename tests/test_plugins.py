"""Plugins: models, tasks and strategies from outside the repository, through entry points, ``--import`` and
``$SEQBENCH_PLUGINS``; broken plugins are one line each and the rest keeps working; ``seqbench.testing``."""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from seqbench import cli, registry, testing

MGU = '''
from dataclasses import dataclass

import torch
import torch.nn as nn

from seqbench.config import POSITIVE, setting
from seqbench.model import RecurrentBackbone
from seqbench.registry import register_model


@dataclass
class MGUParams:
    hidden: int = setting(32, POSITIVE, "state width")


@register_model("{name}")
class MGU(RecurrentBackbone):
    """Minimal gated unit (Zhou et al. 2016): h' = (1 - f) h + f tanh(W x + U (f h))."""

    Params = MGUParams
    presets = {{"tiny": {{"model.hidden": 8}}}}

    def __init__(self, d_input, p):
        super().__init__()
        self.d_output = p.hidden
        self.x2 = nn.Linear(d_input, 2 * p.hidden)
        self.u = nn.Linear(p.hidden, 2 * p.hidden, bias=False)

    def forward(self, x, h=None):
        h = x.new_zeros(x.shape[0], self.d_output) if h is None else h
        xf, xh = self.x2(x).chunk(2, -1)
        uf, uh = self.u.weight.chunk(2, 0)
        ys = []
        for t in range(x.shape[1]):
            f = torch.sigmoid(xf[:, t] + h @ uf.T)
            h = (1 - f) * h + f * torch.tanh(xh[:, t] + (f * h) @ uh.T)
            ys.append(h)
        return torch.stack(ys, 1), h

    def flops_per_step(self):
        return 4 * self.d_output * (self.x2.in_features + self.d_output) + 8 * self.d_output
'''


@pytest.fixture
def fresh_registry(monkeypatch):
    """The registry as the built-ins left it, restored after: plugins loaded here do not leak."""
    tables = {w: dict(t) for w, t in registry._TABLES.items()}
    registry.discover()
    monkeypatch.setattr(registry, "_PLUGINS", {})
    monkeypatch.delenv(registry.PLUGINS_ENV, raising=False)
    yield
    for w, t in registry._TABLES.items():
        t.clear()
        t.update(tables[w])
    for mod in [m for m in sys.modules if m.startswith("seqbench_plugin_")]:
        del sys.modules[mod]


def _write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text))
    return path


def test_import_file_lists_shows_and_records_the_plugin(env, fresh_registry, capsys):
    f = _write(env["tmp"] / "my_cells.py", MGU.format(name="my-mgu"))
    assert cli.main(["list", "--import", str(f)]) == 0
    out = capsys.readouterr().out
    assert "my-mgu       kinds: sequence, series, tokens" in out and f"[plugin: file {f}]" in out
    assert f"file {f}: loaded (model my-mgu)" in out
    assert os.environ[registry.PLUGINS_ENV] == str(f)  # child processes and Ray workers get it
    assert cli.main(["show", "my-mgu"]) == 0
    shown = capsys.readouterr().out
    assert "hidden" in shown and "Minimal gated unit" in shown
    assert cli.main(["run", "--model", "my-mgu", "--task", "adding", "--preset", "tiny", "--quiet",
                     "--set", "limit_batches=2", "--set", "latency_time=0.01"]) == 0
    rec = json.loads(next((env["results"] / "runs").glob("*.json")).read_text())
    assert rec["status"] == "completed" and rec["plugins"] == [{"import": str(f)}]


def test_a_relative_import_becomes_an_absolute_path(env, fresh_registry, monkeypatch):
    _write(env["tmp"] / "rel_cells.py", MGU.format(name="rel-mgu"))
    monkeypatch.chdir(env["tmp"])
    registry.add_plugins(["rel_cells.py"])
    assert registry.plugin_specs() == [str(env["tmp"] / "rel_cells.py")]
    assert registry.get_model("rel-mgu").source == f"file {env['tmp'] / 'rel_cells.py'}"


BROKEN = {
    "import error": ("import not_a_module_anywhere\n", "ModuleNotFoundError: No module named 'not_a_module_anywhere'"),
    "clash with a built-in": (MGU.format(name="lstm"),
                              "model 'lstm' (seqbench_plugin_bad.MGU): the name is already registered by built-in"),
    "not a module": ("from seqbench.registry import register_model\n@register_model('plain', kinds=['sequence'])\n"
                     "class Plain:\n    pass\n", "model 'plain' (seqbench_plugin_bad.Plain): a model must be a "
                                                  "torch.nn.Module"),
    "no kinds": ("import torch.nn as nn\nfrom seqbench.registry import register_model\n@register_model('kindless')\n"
                 "class K(nn.Module):\n    def __init__(self, d, p):\n        super().__init__()\n",
                 "model 'kindless' (seqbench_plugin_bad.K): it declares no input kinds"),
    "a task without its methods": ("from seqbench.registry import register_task\n@register_task('half-task')\n"
                                   "class T:\n    kind = 'sequence'\n",
                                   "task 'half-task' (seqbench_plugin_bad.T): it does not define spec, loaders"),
    "a missing file": (None, "no such file"),
}


@pytest.mark.parametrize("case", list(BROKEN))
def test_a_broken_plugin_is_one_line_and_the_rest_runs(env, fresh_registry, capsys, case):
    text, why = BROKEN[case]
    bad = env["tmp"] / "bad.py"
    if text is not None:
        _write(bad, text)
    good = _write(env["tmp"] / "good.py", MGU.format(name="good-mgu"))
    rc = cli.main(["run", "--import", str(bad), "--import", str(good), "--model", "good-mgu", "--task", "adding",
                   "--preset", "tiny", "--quiet", "--set", "limit_batches=2", "--set", "latency_time=0.01"])
    err = capsys.readouterr().err
    assert rc == 0  # the good plugin's model ran
    lines = [x for x in err.splitlines() if x.startswith("seqbench: warning: plugin")]
    assert len(lines) == 1 and lines[0].startswith(f"seqbench: warning: plugin file {bad}: ") and why in lines[0]
    assert "Traceback" not in err
    assert cli.main(["list"]) == 0  # list shows it as broken, in place
    out = capsys.readouterr().out
    assert "broken: " in out and why in out and "file {}: loaded (model good-mgu)".format(good) in out
    assert registry.get_model("lstm").source == registry.BUILTIN  # a clash never replaces the built-in


def test_two_plugins_claiming_one_name_the_second_is_refused(env, fresh_registry, capsys):
    a = _write(env["tmp"] / "a.py", MGU.format(name="same-name"))
    b = _write(env["tmp"] / "b.py", MGU.format(name="same-name").replace("class MGU(", "class OtherMGU("))
    assert cli.main(["show", "same-name", "--import", str(a), "--import", str(b)]) == 0
    err = capsys.readouterr().err
    assert f"plugin file {b}: model 'same-name' (seqbench_plugin_b.OtherMGU): the name is already registered " \
           f"by file {a}" in err
    assert registry.get_model("same-name").source == f"file {a}"


def test_an_unknown_name_mentions_the_broken_plugins(env, fresh_registry, capsys):
    bad = _write(env["tmp"] / "bad.py", "raise RuntimeError('boom')\n")
    assert cli.main(["run", "--import", str(bad), "--model", "from-bad", "--task", "adding"]) == 2
    err = capsys.readouterr().err
    assert "unknown model 'from-bad'" in err and f"broken plugins: plugin file {bad}: RuntimeError: boom" in err


def test_resume_names_the_plugin_it_needs(env, fresh_registry, capsys, monkeypatch):
    f = _write(env["tmp"] / "my_cells.py", MGU.format(name="resumable-mgu"))
    args = ["--model", "resumable-mgu", "--task", "adding", "--preset", "tiny", "--quiet", "--epochs", "2",
            "--set", "limit_batches=2", "--set", "latency_time=0.01"]
    assert cli.main(["run", "--import", str(f), *args, "--stop-after-epochs", "1"]) == 0
    run_id = next(p.name for p in (env["results"] / "checkpoints").iterdir() if p.is_dir())
    capsys.readouterr()
    registry.unregister("resumable-mgu")  # a new process without the plugin
    monkeypatch.setattr(registry, "_PLUGINS", {})
    monkeypatch.delenv(registry.PLUGINS_ENV)
    assert cli.main(["run", "--resume", run_id, "--quiet"]) == 2
    assert capsys.readouterr().err.strip() == (f"seqbench: error: run {run_id} needs plugin(s) not loaded here: "
                                               f"--import {f} (or name them in $SEQBENCH_PLUGINS)")
    assert cli.main(["run", "--resume", run_id, "--quiet", "--import", str(f)]) == 0
    rec = json.loads((env["results"] / "runs" / f"{run_id}.json").read_text())
    assert rec["status"] == "completed" and rec["history"][-1]["epoch"] == 2


def test_check_model_runs_a_plugin_on_every_compatible_task(fresh_registry, tmp_path, monkeypatch, one_thread):
    monkeypatch.setenv("SEQBENCH_DATA", "/nonexistent")  # check_model brings its own generated data
    f = _write(tmp_path / "my_cells.py", MGU.format(name="checked-mgu"))
    registry.add_plugins([str(f)])
    lines = testing.check_model("checked-mgu")
    me = registry.get_model("checked-mgu")
    compatible = [t for t, e in registry.tasks().items() if registry.compatible(me, e)[0]]
    assert [x.split(": ")[0] for x in lines] == [f"ok     checked-mgu x {t}" for t in compatible]
    assert os.environ["SEQBENCH_DATA"] == "/nonexistent"  # restored


def test_check_model_names_every_failing_pair(fresh_registry, tmp_path, one_thread):
    wrong = MGU.format(name="wrong-mgu").replace("self.d_output = p.hidden", "self.d_output = p.hidden + 1")
    registry.add_plugins([str(_write(tmp_path / "wrong.py", wrong))])
    with pytest.raises(AssertionError) as e:
        testing.check_model(registry.get_model("wrong-mgu").cls)  # declares a width its output does not have
    failed = [x for x in str(e.value).splitlines() if x.startswith("FAILED")]
    assert failed and failed[0].startswith("FAILED wrong-mgu x adding: RuntimeError")


def test_check_task_runs_a_task_against_the_builtin_models(fresh_registry, one_thread):
    lines = testing.check_task("adding")
    assert {x.split(" x ")[0].split()[-1] for x in lines} == {
        m for m, e in registry.models().items() if registry.compatible(e, registry.get_task("adding"))[0]}


# --------------------------------------------------------------- a package with entry points, end to end
def _package(root: Path) -> Path:
    """A distribution on a path of its own: a module with a model (registered by its decorator) and a class
    named by an entry point (registered under the entry point's name), found through importlib.metadata."""
    site = root / "site"
    (site / "mycells").mkdir(parents=True)
    (site / "mycells" / "__init__.py").write_text(MGU.format(name="pkg-mgu"))
    (site / "mycells" / "strategies.py").write_text(
        "from seqbench.strategy import MiniBatch\n\nclass Fresh(MiniBatch):\n"
        "    \"\"\"Independent mini-batches, from a plugin.\"\"\"\n")
    info = site / "seqbench_mycells-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: seqbench-mycells\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[seqbench.models]\nmycells = mycells\n\n"
                                           "[seqbench.strategies]\nfresh-batches = mycells.strategies:Fresh\n")
    return site


def test_a_package_with_entry_points_is_listed_shown_run_benched_swept_reported_and_resumed(env, tmp_path):
    """Through the real entry-point machinery (importlib.metadata on PYTHONPATH), in fresh processes as a user
    runs them; the sweep's workers on a local Ray import the package too."""
    pytest.importorskip("ray")
    site = _package(tmp_path)
    res = env["results"]
    e = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]),
         "OMP_NUM_THREADS": "1", "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    e.pop(registry.PLUGINS_ENV, None)

    def sb(*args, code=0):
        p = subprocess.run([sys.executable, "-m", "seqbench", *args], env=e, capture_output=True, text=True,
                           timeout=600)
        assert p.returncode == code, p.stdout + p.stderr
        assert "Traceback" not in p.stderr and "warning" not in p.stderr, p.stderr
        return p.stdout if code == 0 else p.stderr

    out = sb("list")
    assert "[plugin: entry point mycells = mycells (seqbench-mycells)]" in out
    assert "entry point fresh-batches = mycells.strategies:Fresh (seqbench-mycells): loaded" in out
    assert "Minimal gated unit" in sb("show", "pkg-mgu")
    tiny = ["--preset", "tiny", "--quiet", "--set", "limit_batches=2", "--set", "latency_time=0.01", "--threads", "1"]
    sb("run", "--model", "pkg-mgu", "--task", "adding", "--strategy", "fresh-batches", "--epochs", "2",
       "--stop-after-epochs", "1", "--results", str(res), *tiny)
    run_id = next(p.name for p in (res / "checkpoints").iterdir() if p.is_dir())
    sb("run", "--resume", run_id, "--results", str(res), "--quiet")
    rec = json.loads((res / "runs" / f"{run_id}.json").read_text())
    assert rec["status"] == "completed" and rec["strategy"] == "fresh-batches" and rec["history"][-1]["epoch"] == 2
    assert rec["plugins"] == [{"package": "seqbench-mycells"}]
    sb("bench", "--task", "adding", "--models", "pkg-mgu,lstm", "--preset", "tiny", "--mode", "infer", "--rounds",
       "1", "--min-run-time", "0.01", "--threads", "1", "--out", str(tmp_path / "bench"))
    assert set(json.loads(next((tmp_path / "bench").glob("*.json")).read_text())["configs"]) == {"pkg-mgu", "lstm"}
    out = sb("sweep", "--models", "pkg-mgu,lstm,gru", "--tasks", "adding", "--presets", "tiny", "--seeds", "0",
             "--set", "limit_batches=2", "--set", "latency_time=0.01", "--results", str(res), "--name", "plug")
    assert "3 to run" in out
    swept = [json.loads(p.read_text()) for p in (res / "runs").glob("*.json")]
    assert sorted(r["model"] for r in swept if r["strategy"] != "fresh-batches") == ["gru", "lstm", "pkg-mgu"]
    assert all(r["status"] == "completed" for r in swept)
    sb("report", "--results", str(res))
    assert "pkg-mgu" in (res / "report.md").read_text()
    # a run stopped half-way, resumed where the package is not installed: one line naming it
    sb("run", "--model", "pkg-mgu", "--task", "adding", "--epochs", "2", "--stop-after-epochs", "1", "--results",
       str(tmp_path / "other"), *tiny)
    other = next(p.name for p in (tmp_path / "other" / "checkpoints").iterdir() if p.is_dir())
    e["PYTHONPATH"] = os.environ.get("PYTHONPATH", "")
    err = sb("run", "--resume", other, "--results", str(tmp_path / "other"), "--quiet", code=2)
    assert err.strip() == (f"seqbench: error: run {other} needs plugin(s) not loaded here: pip install "
                           f"seqbench-mycells (or name them in $SEQBENCH_PLUGINS)")
