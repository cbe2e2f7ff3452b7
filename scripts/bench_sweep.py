"""``seqbench sweep`` on a local Ray against the same runs one after another in one process.

    SEQBENCH_DATA=../shared/data python scripts/bench_sweep.py        # 8 tiny GRU runs (seeds 0..7) on pmnist
    python scripts/bench_sweep.py --task adding --models lstm --set epochs=3 --rounds 1   # no data files needed

Each round (the order of the two modes alternates from round to round; the machine should be
otherwise idle):
  sequential  the runs one after another in this process: ``Runner(cfg).fit()``, one thread each
              (the same configs as the sweep's runs: the same arithmetic)
  sweep       the same runs as one sweep on a fresh local Ray with one CPU per run: its phases are
              timed apart: data check in the driver, Ray start, the runs (submission to the last
              record written), Ray shutdown. The report the command regenerates at its end is not
              timed (the sequential mode makes none either).
Printed and written to results/benchmarks/sweep-*.json: the medians over rounds, the ratio
sequential / sweep end to end (goal: >= 1.6 on a 2-core machine) and without Ray's start and
stop, and the sweep's overhead per run: (CPUs x the runs phase - the sequential time) / runs, the
core-seconds a run costs beyond its own work. The records of both modes must agree seed by seed.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from seqbench import config, records, sweep
from seqbench.build import cores_available
from seqbench.runner import Runner

DEFAULT_SET = ["epochs=2", "task.train_subset=2048", "latency_time=0.2"]


def sequential(runs, results: Path) -> tuple[float, dict]:
    t0 = time.perf_counter()
    out = {}
    for r in runs:
        rec = Runner(r.cfg, results=results, quiet=True).fit()
        out[r.hash] = rec
    return time.perf_counter() - t0, out


def on_ray(ray, spec, runs, results: Path, cpus: int) -> tuple[dict, dict]:
    devnull = open(os.devnull, "w")
    t = {}
    t0 = time.perf_counter()
    sweep._prepare_data(runs)
    t1 = time.perf_counter()
    sweep._connect(ray, None, cpus)
    t2 = time.perf_counter()
    rc = sweep._execute(ray, spec, runs, results, None, 1.0, 0.0, 0, None, devnull)
    t3 = time.perf_counter()
    ray.shutdown()
    t4 = time.perf_counter()
    if rc != 0:
        raise SystemExit(f"the sweep was interrupted (exit {rc})")
    t.update(prepare_s=t1 - t0, ray_start_s=t2 - t1, runs_s=t3 - t2, ray_stop_s=t4 - t3, total_s=t4 - t0)
    recs = {config.config_hash(r["config"]): r for r in records.load_all(results)}
    return t, recs


def compare(seq: dict, swp: dict, n: int) -> None:
    if len(seq) != n or len(swp) != n:
        raise SystemExit(f"expected {n} records in each mode, got {len(seq)} sequential, {len(swp)} sweep")
    for h, a in seq.items():
        b = swp.get(h)
        if b is None or b["status"] != "completed" or a["status"] != "completed":
            raise SystemExit(f"run {a['run_id']}: not completed in both modes")
        if a["metrics"]["test"] != b["metrics"]["test"]:
            raise SystemExit(f"run {a['run_id']}: test metrics differ: "
                             f"{a['metrics']['test']} vs {b['metrics']['test']}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="gru")
    ap.add_argument("--task", default="pmnist")
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--runs", type=int, default=8, help="runs per mode: seeds 0..runs-1 over the models")
    ap.add_argument("--set", dest="sets", action="append", default=None, metavar="KEY=VALUE",
                    help=f"settings of every run (default: {' '.join(DEFAULT_SET)})")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--cpus", type=int, default=cores_available(),
                    help="the local Ray's CPUs (default: this machine's)")
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    import ray

    models = a.models.split(",")
    n_seeds = -(-a.runs // len(models))
    spec = sweep.build_spec(None, "bench-sweep", a.sets if a.sets is not None else DEFAULT_SET, models=a.models,
                            tasks=a.task, presets=a.preset, seeds=",".join(map(str, range(n_seeds))))
    runs, _ = sweep.expand(spec, {"threads": 1, "device": "cpu"})
    runs = runs[: a.runs]
    for r in runs:
        r.run_id = sweep.base_run_id(r)
    print(f"{len(runs)} runs: {', '.join(r.label for r in runs[:2])}, ...; {a.cpus} CPUs; "
          f"load average {os.getloadavg()[0]:.2f}", flush=True)
    rounds = []
    for i in range(a.rounds):
        row = {}
        for which in (("sequential", "sweep") if i % 2 == 0 else ("sweep", "sequential")):
            with tempfile.TemporaryDirectory(prefix="bench-sweep-") as tmp:
                if which == "sequential":
                    row["sequential_s"], seq = sequential(runs, Path(tmp))
                else:
                    row["sweep"], swp = on_ray(ray, spec, runs, Path(tmp), a.cpus)
        compare(seq, swp, len(runs))
        s, w = row["sequential_s"], row["sweep"]
        print(f"round {i + 1}: sequential {s:.1f} s; sweep {w['total_s']:.1f} s (data {w['prepare_s']:.1f}, "
              f"Ray start {w['ray_start_s']:.1f}, runs {w['runs_s']:.1f}, stop {w['ray_stop_s']:.1f}); "
              f"ratio {s / w['total_s']:.2f}", flush=True)
        rounds.append(row)
    med = lambda xs: statistics.median(xs)  # noqa: E731
    seq_s = med([r["sequential_s"] for r in rounds])
    total_s = med([r["sweep"]["total_s"] for r in rounds])
    runs_s = med([r["sweep"]["runs_s"] for r in rounds])
    result = {
        "runs": [r.label for r in runs], "cpus": a.cpus, "rounds": rounds,
        "sequential_s": seq_s, "sweep_total_s": total_s, "sweep_runs_s": runs_s,
        "ray_start_s": med([r["sweep"]["ray_start_s"] for r in rounds]),
        "ratio_end_to_end": seq_s / total_s, "ratio_runs_only": seq_s / runs_s,
        "overhead_per_run_core_s": (a.cpus * runs_s - seq_s) / len(runs),
        "load_average_start": os.getloadavg()[0], "ray": ray.__version__,
        "command": " ".join([os.path.basename(sys.argv[0]), *(argv if argv is not None else sys.argv[1:])]),
    }
    print(f"median of {a.rounds}: sequential {seq_s:.1f} s, sweep {total_s:.1f} s end to end "
          f"(ratio {result['ratio_end_to_end']:.2f}; goal >= 1.6 on 2 cores), runs phase {runs_s:.1f} s "
          f"(ratio {result['ratio_runs_only']:.2f}); Ray start {result['ray_start_s']:.1f} s; "
          f"overhead {result['overhead_per_run_core_s']:.2f} core-s per run")
    print(f"written {records.write_benchmark(result, 'sweep', a.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
