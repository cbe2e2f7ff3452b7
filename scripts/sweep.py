"""Named sweeps: each is a Python list of runs (model, task, preset, overrides), run one after the
other through the one runner; every run writes its record to results/runs/ like `seqbench run`.

    SEQBENCH_DATA=../shared/data python scripts/sweep.py mptt-hydro            # all its runs
    SEQBENCH_DATA=../shared/data python scripts/sweep.py mptt-hydro --dry-run  # list them
    python scripts/sweep.py --list

A run whose record already exists (same model, task, preset and overrides, status completed) is
skipped, so an interrupted sweep continues where it stopped. Then `seqbench report`.
"""
from __future__ import annotations

import argparse
import sys
import time

from seqbench import config, records, registry
from seqbench.errors import SeqbenchError
from seqbench.runner import Runner

SEEDS = [0, 1, 2, 3, 4]
# The MPTT paper's comparison (Xu et al., SDM 2024, Table 2): training / inference strategies.
MPTT_STRATEGIES = [
    {"strategy": "rmb-iif"}, {"strategy": "rmb-ssif"}, {"strategy": "smb-ssif"}, {"strategy": "ssmb-ssif"},
    {"strategy": "tf-tfif"}, {"strategy": "sspl-tfif"}, {"strategy": "cmb-scif"},
    {"strategy": "mptt", "keeper": 0.0}, {"strategy": "mptt", "keeper": 1.0},
]


def _grid(models, tasks, presets, overrides, seeds=SEEDS):
    return [(m, t, p, {**o, "seed": s}) for t in tasks for p in presets for o in overrides for m in models for s in seeds]


SWEEPS = {
    "mptt-hydro": _grid(["gru"], ["climate-hydro"], ["fast"], MPTT_STRATEGIES),
    "mptt-seattle": _grid(["gru"], ["climate-seattle"], ["fast"], MPTT_STRATEGIES),
    "mptt-melbourne": _grid(["gru"], ["climate-melbourne"], ["fast"], MPTT_STRATEGIES),
    # ISS on PTB: perplexity against the units kept over lam (2 of the fast preset's 6 epochs;
    # lam 0.00245 / 20 = 1.2e-4 is the paper's value per token of the 20-step small model)
    "iss-ptb-lambda": _grid(["iss-lstm"], ["ptb"], ["fast"],
                            [{"epochs": 2, "model.lam": lam, "model.threshold": 1e-4 if lam else 0.0}
                             for lam in (0.0, 3e-5, 1.2e-4, 3e-4, 6e-4)], seeds=[0]),
}


def _done(recs, model, task, preset, over) -> bool:
    for r in recs:
        if r["status"] != "completed" or (r["model"], r["task"], r["preset"]) != (model, task, preset):
            continue
        if all(r["config"].get(k) == v for k, v in over.items()):
            return True
    return False


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("sweep", nargs="?")
    ap.add_argument("--list", action="store_true")
    ap.add_argument("--dry-run", action="store_true")
    ap.add_argument("--results", default=None)
    ap.add_argument("--shard", default="0/1", help="i/n: run only the runs with index %% n == i (parallel sweeps)")
    a = ap.parse_args(argv)
    if a.list or not a.sweep:
        for name, runs in SWEEPS.items():
            print(f"{name}: {len(runs)} runs")
        return 0
    if a.sweep not in SWEEPS:
        print(f"sweep: error: unknown sweep '{a.sweep}'; known: {', '.join(SWEEPS)}", file=sys.stderr)
        return 2
    runs = SWEEPS[a.sweep]
    try:
        shard, n_shards = (int(v) for v in a.shard.split("/"))
        assert 0 <= shard < n_shards
    except (ValueError, AssertionError):
        print(f"sweep: error: --shard expects i/n with 0 <= i < n, got '{a.shard}'", file=sys.stderr)
        return 2
    recs = records.load_all(records.results_dir(a.results))
    for i, (model, task, preset, over) in enumerate(runs, 1):
        if (i - 1) % n_shards != shard:
            continue
        tag = f"[{i}/{len(runs)}] {model} {task} {preset} {over}"
        if _done(recs, model, task, preset, over):
            print(f"{tag}: done already")
            continue
        if a.dry_run:
            print(tag)
            continue
        try:
            cfg = config.resolve(registry.get_model(model), registry.get_task(task), preset, dict(over))
            t0 = time.time()
            rec = Runner(cfg, results=a.results, quiet=True).fit()
        except SeqbenchError as e:
            print(f"sweep: error: {tag}: {e}", file=sys.stderr)
            return 2
        sel = rec["task_info"]["select"]
        test = (rec["metrics"].get("test") or {}).get(sel)
        print(f"{tag}: {rec['status']} test {sel} {test} ({time.time() - t0:.0f} s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
