"""MPTT's cost per training epoch as a ratio to random mini-batches (RMB), same process, same
model, same data. Prints both times and the ratio (the MPTT issue's goal: <= 1.3).

    SEQBENCH_DATA=../shared/data python scripts/bench_mptt.py --task climate-hydro --model gru --rounds 5

Both runners first train one epoch untimed (MPTT's messages start in its second epoch, so every
timed MPTT epoch reads, writes and propagates them). Rounds alternate the two (ABAB...) so drift in
machine speed hits both; the ratio is of medians. Only ``train_epoch`` is timed (validation is the
same sequential pass for both). The result is also written to results/benchmarks/ as JSON.
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

from seqbench import config, measure, records, registry
from seqbench.errors import SeqbenchError
from seqbench.runner import Runner


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="gru")
    ap.add_argument("--task", default="climate-hydro")
    ap.add_argument("--preset", default="fast")
    ap.add_argument("--baseline", default="rmb-ssif", help="the strategy MPTT is compared with")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--set", dest="sets", action="append", default=[])
    ap.add_argument("--out", default=None, help="folder for the JSON result (default results/benchmarks)")
    a = ap.parse_args(argv)
    try:
        runners = {}
        for s in (a.baseline, "mptt"):
            over = {**config.parse_set(a.sets), "strategy": s, "seed": 0}
            cfg = config.resolve(registry.get_model(a.model), registry.get_task(a.task), a.preset, over)
            runners[s] = Runner(cfg, results=Path("/tmp/seqbench-bench"), quiet=True)
    except SeqbenchError as e:
        print(f"bench_mptt: error: {e}", file=sys.stderr)
        return 2
    dev = runners["mptt"].setup.device

    done = {s: 0 for s in runners}

    def epoch_of(s):
        def fn():
            done[s] += 1
            runners[s].train_epoch(done[s])
        return fn

    fns = {s: epoch_of(s) for s in runners}
    for fn in fns.values():  # untimed first epoch: MPTT has messages from its second epoch on
        fn()
    times = measure.interleaved(fns, rounds=a.rounds)  # one epoch per round, the order reversed every other round
    mb, mm = statistics.median(times[a.baseline]), statistics.median(times["mptt"])
    cfg = runners["mptt"].cfg
    result = {
        "benchmark": "mptt_epoch_cost", "model": a.model, "task": a.task, "preset": a.preset,
        "baseline": a.baseline, "rounds": a.rounds, "batches": len(runners["mptt"].setup.loaders["train"]),
        "batch_size": cfg.train.batch_size, "times_s": times, "baseline_median_s": mb, "mptt_median_s": mm,
        "ratio": mm / mb, "env": records.environment(dev), "config": cfg.flat(),
    }
    print(f"{a.model} on {a.task} ({a.preset}), {result['batches']} batches of {cfg.train.batch_size}, "
          f"{a.rounds} rounds, {dev}, {torch.get_num_threads()} threads:")
    for s in runners:
        print(f"  {s:9s} median {statistics.median(times[s]) * 1e3:9.1f} ms/epoch   "
              f"(all: {', '.join(f'{t * 1e3:.0f}' for t in times[s])})")
    print(f"  ratio mptt/{a.baseline} = {mm / mb:.3f}  (goal <= 1.3)")
    print(f"  written {records.write_benchmark(result, f'mptt_epoch_cost-{a.model}-{a.task}-{a.preset}', a.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
