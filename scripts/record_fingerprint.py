"""What a refactor must not change: the records of tiny runs of every kind, without their timings.

    SEQBENCH_DATA=../shared/data python scripts/record_fingerprint.py before.json
    ... change the code ...
    SEQBENCH_DATA=../shared/data python scripts/record_fingerprint.py after.json --compare before.json

Runs one tiny preset of every input kind and strategy family (sequence, tokens with ``stateful``,
series with ``mptt``, the synthetic copy task, the CIFAR-10 subset, sCIFAR, CamVid, SQuAD, ISS with
pruning, EMA with select=last) for two epochs in this process, one thread, in a temporary results folder, and keeps
from each record what the code computes: metrics, history, selection, task info, parameter counts,
sparsity, structure and FLOPs. Wall times, latencies, run ids, paths and the environment are dropped.
``--compare`` prints each difference and exits 1 when there is one (an older file is read through
``records.upgrade``: the record schema may change, what it says may not).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile

import torch

from seqbench import config, records, registry
from seqbench.runner import Runner

RUNS = [
    ("lstm", "pmnist", {}),
    ("hippo", "pmnist", {}),
    ("iss-lstm", "ptb", {}),
    ("rhn", "ptb", {}),
    ("gru", "climate-hydro", {"strategy": "mptt"}),
    ("mptt", "climate-melbourne", {}),
    ("lstm", "copy", {}),
    ("enrnn", "copy", {}),
    ("dia-resnet", "cifar10", {"task.source": "subset"}),
    ("lstm", "scifar", {"task.source": "subset"}),
    ("dense-rnn", "camvid", {}),
    ("bidaf", "squad", {"task.split": "dev-holdout", "task.train_subset": 64, "task.eval_subset": 32}),
    ("iss-lstm", "pmnist", {"ema": 0.5, "select": "last"}),
]
# fields of a record that measure the machine, not the computation
DROP_HISTORY = ("train_s", "eval_s")
DROP_MEASURE = ("latency", "train_throughput", "memory", "torch_threads")


def fingerprint(rec: dict) -> dict:
    meas = {k: v for k, v in (rec.get("measure") or {}).items() if k not in DROP_MEASURE}
    if meas.get("pruning"):
        meas["pruning"] = {k: v for k, v in meas["pruning"].items() if k != "file"}
    metrics = dict(rec["metrics"])
    return {
        "status": rec["status"], "config_hash": rec["config_hash"],  # the identity: new keys at their default drop out
        "metrics": metrics,
        "history": [{k: v for k, v in row.items() if k not in DROP_HISTORY} for row in rec["history"]],
        "task_info": rec["task_info"], "measure": meas, "strategy": rec["strategy"],
    }


def normalise(fp: dict) -> dict:
    """A fingerprint of an older schema read as the current one (``records.upgrade``); its config is
    compared through ``config_hash`` (a setting added since, at its default, changes nothing)."""
    config = fp.get("config") or {}
    fp = {k: v for k, v in fp.items() if k != "config"}
    if "best_epoch" not in fp["metrics"]:
        return fp
    rec = {"schema": 1, "metrics": fp["metrics"], "timing": {"epochs": len(fp["history"])}, "history": fp["history"],
           "config": config, "strategy": fp["strategy"], "model": config.get("model"), "measure": fp["measure"]}
    up = records.upgrade(rec)
    return {**fp, "metrics": up["metrics"], "measure": up["measure"]}


def run_all() -> dict:
    torch.set_num_threads(1)
    out = {}
    with tempfile.TemporaryDirectory() as res:
        for model, task, over in RUNS:
            sets = {"epochs": 2, **over, "threads": 1}
            cfg = config.resolve(registry.get_model(model), registry.get_task(task), "tiny", sets)
            rec = Runner(cfg, results=res, quiet=True).fit()
            key = f"{model}/{task}" + "".join(f" {k}={v}" for k, v in over.items())
            out[key] = json.loads(json.dumps(fingerprint(rec), default=str))
            print(f"{key}: {rec['status']}", flush=True)
    return out


def diff(a, b, path="") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            if k not in a or k not in b:
                out.append(f"{path}/{k}: only in {'after' if k not in a else 'before'}")
            else:
                out += diff(a[k], b[k], f"{path}/{k}")
        return out
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in diff(x, y, f"{path}[{i}]")]
    same = a == b or (isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b))
    return [] if same else [f"{path}: {a!r} -> {b!r}"]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out")
    p.add_argument("--compare", metavar="BEFORE")
    p.add_argument("--rerun-from", metavar="AFTER", help="compare this file instead of running again")
    a = p.parse_args()
    if a.rerun_from:
        with open(a.rerun_from) as f:
            got = json.load(f)
    else:
        got = run_all()
        with open(a.out, "w") as f:
            json.dump(got, f, indent=1, sort_keys=True)
    if not a.compare:
        return 0
    with open(a.compare) as f:
        before = json.load(f)
    d = diff({k: normalise(v) for k, v in before.items()}, {k: normalise(v) for k, v in got.items()})
    for line in d:
        print(line)
    print(f"{len(got)} runs, {len(d)} differences")
    return 1 if d else 0


if __name__ == "__main__":
    sys.exit(main())
