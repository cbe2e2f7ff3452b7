"""Distributed runs (torchrun, gloo, 2 processes x 1 thread) against one process.

A 2-process run trains on the same global batches as one process (each rank its rows), so its record
equals the one-process record up to float reassociation: the gradient all-reduce sums two partial
gradients, the loss is each rank's sum over the global count, and CPU SyncBatchNorm all-reduces float64
sums instead of torch's one-pass statistics; relative differences stay under 1e-4 here (RTOL). On the
same weights the evaluation metrics are bitwise those of one process (whole batches per rank, float
sums added in batch order), except under ``stateful`` (PTB), whose evaluation splits every batch's rows
among the ranks: its float sums are added per rank (relative difference under 1e-6).
"""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from seqbench import config, records, registry
from seqbench.cli import main
from seqbench.runner import Runner

RTOL = 1e-4
SHORT = {"threads": 1, "epochs": 2, "limit_batches": 3, "latency_time": 0.01}
KINDS = {  # one tiny run of every kind; no dropout (each rank draws its own masks)
    "sequence": ("lstm", "pmnist", {}),
    "tokens": ("lstm", "ptb", {"strategy": "stateful"}),
    "image": ("resnet", "cifar10", {"sync_bn": "true"}),
    "dense": ("fcn", "camvid", {"sync_bn": "true"}),
    "qa": ("bidaf", "squad", {"model.dropout": "0"}),
}
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]


def torchrun(args, env, extra=()):
    e = {**os.environ, "OMP_NUM_THREADS": "1", **env}
    out = subprocess.run([*TORCHRUN, *extra, *args], capture_output=True, text=True, env=e, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out


def refused_run(args, results, env, timeout=300):
    """``seqbench run ARGS --preset tiny`` by a 2-process group that must fail: its output and the error lines."""
    e = {**os.environ, "OMP_NUM_THREADS": "1", **env}
    out = subprocess.run([*TORCHRUN, "-m", "seqbench", "run", *args, "--preset", "tiny", "--results", str(results)],
                         capture_output=True, text=True, env=e, timeout=timeout)
    assert out.returncode != 0, out.stderr[-3000:]
    return out, [ln for ln in out.stderr.splitlines() if ln.startswith("seqbench: error:")]


def close(a, b, path="") -> None:
    """Equal structure; numbers equal to RTOL."""
    if isinstance(a, dict):
        assert set(a) == set(b), path
        for k in a:
            close(a[k], b[k], f"{path}/{k}")
    elif isinstance(a, list):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            close(x, y, f"{path}[{i}]")
    elif isinstance(a, float) and isinstance(b, float):
        assert a == pytest.approx(b, rel=RTOL, abs=1e-9), path
    else:
        assert a == b, path


def essence(rec: dict) -> dict:
    m = rec["metrics"]
    return {"val": m["val"], "test": m["test"], "selection": m["selection"],
            "history": [{k: v for k, v in h.items() if not k.endswith("_s")} for h in rec["history"]]}


@pytest.fixture(scope="module")
def runs(tmp_path_factory, fake_data):
    """The one-process runs (in this process) and the same runs by a 2-process group, with the group's
    evaluation of the one-process runs' selected weights."""
    tmp = tmp_path_factory.mktemp("dist")
    data = tmp / "data"  # a copy: runs write caches (SQuAD's) beside the data; the session's folder stays as made
    shutil.copytree(fake_data, data)
    env = {"SEQBENCH_DATA": str(data), "SEQBENCH_VERIFY": "0", "SEQBENCH_DOWNLOAD": "0"}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        one = {}
        for name, (model, task, over) in KINDS.items():
            cfg = config.resolve(registry.get_model(model), registry.get_task(task), "tiny", {**SHORT, **over})
            one[name] = Runner(cfg, results=tmp / "one", quiet=True).fit()
    finally:
        for k, v in old.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
    spec = {"results": str(tmp / "two"), "out": str(tmp / "out.json"),
            "runs": {n: [m, t, {**SHORT, **o}] for n, (m, t, o) in KINDS.items()},
            "weights": {n: str(tmp / "one" / "checkpoints" / r["run_id"] / "best.pt") for n, r in one.items()}}
    (tmp / "spec.json").write_text(json.dumps(spec))
    torchrun([str(Path(__file__).with_name("distributed_driver.py")), str(tmp / "spec.json")], env)
    out = json.loads((tmp / "out.json").read_text())
    two = {n: json.loads((tmp / "two" / "runs" / f"{out[n]}.json").read_text()) for n in KINDS}
    return {"one": one, "two": two, "eval": {n: out[f"{n}:eval"] for n in KINDS}, "tmp": tmp, "env": env}


@pytest.mark.parametrize("kind", list(KINDS))
def test_two_processes_train_as_one(runs, kind):
    one, two = runs["one"][kind], runs["two"][kind]
    assert two["status"] == "completed" and two["distributed"]["world_size"] == 2
    assert two["distributed"]["global_batch"] == 2 * two["distributed"]["per_rank_batch"]
    assert one["distributed"]["world_size"] == 1
    assert two["config_hash"] == one["config_hash"]  # the same run, whatever the world size
    close(essence(one), essence(two))


@pytest.mark.parametrize("kind", list(KINDS))
def test_evaluation_on_the_same_weights_is_one_process_s(runs, kind):
    one = runs["one"][kind]["metrics"]["test"]
    got = runs["eval"][kind]
    if kind == "tokens":  # stateful: every batch's rows are split among the ranks
        assert got == pytest.approx(one, rel=1e-6)
    else:
        assert got == one


def test_a_killed_rank_restarts_the_group_which_resumes(runs, tmp_path):
    """``--max-restarts 1``: rank 1 dies after a step of epoch 2; torchrun restarts both ranks, which
    resume from epoch 1's checkpoint; the record equals the undisturbed 2-process run's."""
    model, task, over = KINDS["sequence"]
    args = ["-m", "seqbench", "run", "--model", model, "--task", task, "--preset", "tiny", "--quiet",
            "--results", str(tmp_path), *[a for k, v in SHORT.items() for a in ("--set", f"{k}={v}")]]
    fault = {"SEQBENCH_FAULT": "train:step@5", "SEQBENCH_FAULT_RANK": "1",
             "SEQBENCH_FAULT_ONCE": str(tmp_path / "once")}
    out = torchrun(args, {**runs["env"], **fault}, extra=["--max-restarts", "1"])
    assert (tmp_path / "once").exists() and "restarted: resuming" in out.stdout
    (rec,) = [json.loads(p.read_text()) for p in (tmp_path / "runs").glob("*.json")]
    assert rec["timing"]["pieces"] == 2 and not list((tmp_path / "checkpoints").glob(".torchrun-*"))
    assert essence(rec) == essence(runs["two"]["sequence"])


def test_a_run_resumes_at_another_world_size(runs, tmp_path, monkeypatch, capsys):
    """Stopped after one epoch by 2 processes, resumed by one; and the reverse."""
    for k, v in runs["env"].items():
        monkeypatch.setenv(k, v)
    model, task, over = KINDS["sequence"]
    base = ["run", "--model", model, "--task", task, "--preset", "tiny", "--quiet", "--results", str(tmp_path),
            *[a for k, v in SHORT.items() for a in ("--set", f"{k}={v}")], "--stop-after-epochs", "1"]
    torchrun(["-m", "seqbench", *base], runs["env"])
    (first,) = [p.name for p in (tmp_path / "checkpoints").iterdir() if not p.name.startswith(".")]
    assert main(["run", "--resume", first, "--results", str(tmp_path), "--quiet"]) == 0
    assert main(base) == 0
    second = next(p.name for p in (tmp_path / "checkpoints").iterdir()
                  if not p.name.startswith(".") and p.name != first)
    torchrun(["-m", "seqbench", "run", "--resume", second, "--results", str(tmp_path), "--quiet"], runs["env"])
    recs = {r["run_id"]: r for r in records.load_all(tmp_path)}
    assert recs[first]["status"] == recs[second]["status"] == "completed"
    assert recs[first]["distributed"]["world_size"] == 1 and recs[second]["distributed"]["world_size"] == 2
    close(essence(recs[first]), essence(runs["one"]["sequence"]))
    close(essence(recs[second]), essence(runs["one"]["sequence"]))


def test_bad_input_is_one_line_from_rank_0_and_nothing_written(runs, tmp_path):
    """A strategy that cannot be split, a global batch the world does not divide, CUDA (NCCL) on a machine
    without it: one line from rank 0, every rank exits 2, nothing written."""
    for args, says in ((["--model", "mptt", "--task", "climate-melbourne"], "cannot train distributed"),
                       (["--model", "lstm", "--task", "pmnist", "--batch-size", "33"], "does not divide among 2"),
                       (["--model", "lstm", "--task", "pmnist", "--device", "cuda"], "no CUDA device")):
        res = tmp_path / args[1]
        out, errors = refused_run(args, res, runs["env"])
        assert len(errors) == 1 and says in errors[0], out.stderr[-2000:]
        assert "exitcode  : 2" in out.stderr
        assert not res.exists() or not any(res.rglob("*.json"))


REFUSE_ON_RANK_1 = '''
import os

import seqbench.distributed
from seqbench.errors import SeqbenchError
from seqbench.registry import get_task, register_task

seqbench.distributed.AGREE_S = 2.0  # the wait for the other ranks' refusals, shortened for the test


@register_task("adding-rank1")
class AddingRank1(get_task("adding").cls):
    """The adding task, whose data rank 1 alone cannot read."""

    def loaders(self, *args, **kwargs):
        if os.environ["RANK"] == "1":
            raise SeqbenchError("rank 1 cannot read its data")
        return super().loaders(*args, **kwargs)
'''


def test_a_refusal_of_one_rank_alone_is_its_line_and_no_hang(tmp_path):
    """A rank that refuses while the others go on (into DDP's first broadcast) says so itself, prefixed by its
    rank, and leaves without the closing barrier: torchrun stops the group within seconds (before, rank 1 waited
    at the barrier and rank 0 in the broadcast until gloo's 30-minute timeout, and nothing was printed). Rank 0,
    whose collective the departure broke, stops without a traceback; nothing is written."""
    plugin = tmp_path / "refuse.py"
    plugin.write_text(REFUSE_ON_RANK_1)
    res = tmp_path / "res"
    out, errors = refused_run(["--import", str(plugin), "--model", "lstm", "--task", "adding-rank1"], res, {}, 120)
    assert errors == ["seqbench: error: rank 1: rank 1 cannot read its data"], out.stderr[-3000:]
    assert "[rank0]" not in out.stderr and "Connection closed" not in out.stderr, out.stderr[-3000:]
    assert not res.exists() or not any(res.rglob("*.json"))


OOM_ON_RANKS = '''
import os

import torch

import seqbench.distributed
from seqbench.registry import get_model, register_model

seqbench.distributed.AGREE_S = 2.0


@register_model("lstm-oom")
class LSTMOOM(get_model("lstm").cls):
    """lstm whose third training forward runs out of memory on the ranks in $OOM_RANKS."""

    calls = 0

    def forward(self, *args, **kwargs):
        if self.training:
            LSTMOOM.calls += 1
            if LSTMOOM.calls == 3 and os.environ["RANK"] in os.environ["OOM_RANKS"].split(","):
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return super().forward(*args, **kwargs)
'''


@pytest.mark.parametrize("ranks", ["1", "0,1"])
def test_out_of_memory_on_one_rank_or_all(tmp_path, ranks):
    """Out of memory during training on rank 1 alone: its line, prefixed by its rank, and the group stops (rank 0
    waits in the gradient all-reduce; before, rank 1 waited in the failed record's broadcast: a hang); no record,
    since rank 0, the writer, never learns why. On every rank alike: rank 0's line and the failed record."""
    plugin = tmp_path / "oom.py"
    plugin.write_text(OOM_ON_RANKS)
    res = tmp_path / "res"
    out, errors = refused_run(["--import", str(plugin), "--model", "lstm-oom", "--task", "adding"], res,
                              {"OOM_RANKS": ranks}, 120)
    assert len(errors) == 1 and "out of memory at batch 16" in errors[0], out.stderr[-3000:]
    assert "[rank0]" not in out.stderr and "[rank1]" not in out.stderr, out.stderr[-3000:]
    recs = list((res / "runs").glob("*.json"))
    if ranks == "1":
        assert errors[0].startswith("seqbench: error: rank 1: out of memory") and not recs
    else:
        assert "run recorded as failed" in errors[0] and len(recs) == 1
        assert json.loads(recs[0].read_text())["status"] == "failed"
