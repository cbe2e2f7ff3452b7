"""Several trainings at once on one machine: N runs side by side with ``--threads 1`` against the same
N runs one after another, and every record checked.

    python scripts/bench_concurrent.py                   # 8 tiny GRU runs (seeds 0..7) on pmnist
    python scripts/bench_concurrent.py --runs 4 -- --model lstm --task smnist --preset tiny

Modes, in this order (the machine should be otherwise idle):
  sequential-1   one after another, each --threads 1 (the same runs as the concurrent mode)
  sequential     one after another, torch's default threads (what a user would do without this)
  concurrent-1   all at once, each --threads 1
The records of sequential-1 and concurrent-1 must be identical run by run (same seed, one thread:
the same arithmetic), complete (``records.problem`` finds nothing) and all completed; the timing is
the wall time of each mode and the ratios. Written to results/benchmarks/concurrent-*.json.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from seqbench import records

DEFAULT_RUN = ["--model", "gru", "--task", "pmnist", "--preset", "tiny", "--set", "epochs=2",
               "--set", "task.train_subset=2048", "--set", "latency_time=0.2"]


def launch(run_args, seed, results: Path, threads: int | None):
    cmd = [sys.executable, "-m", "seqbench", "run", *run_args, "--seed", str(seed),
           "--results", str(results), "--quiet"]
    if threads:
        cmd += ["--threads", str(threads)]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def mode(run_args, seeds, results: Path, threads: int | None, together: bool) -> float:
    t0 = time.perf_counter()
    if together:
        procs = [launch(run_args, s, results, threads) for s in seeds]
    else:
        procs = []
        for s in seeds:
            p = launch(run_args, s, results, threads)
            p.wait()
            procs.append(p)
    for p in procs:
        _, err = p.communicate()
        if p.returncode != 0:
            raise SystemExit(f"a run failed (exit {p.returncode}): {err[-1500:]}")
    return time.perf_counter() - t0


def check(results: Path, n: int) -> dict:
    files = [p for p in (results / "runs").glob("*.json") if not p.name.startswith(".")]
    recs = {}
    for p in files:
        rec = json.loads(p.read_text())
        why = records.problem(rec)
        assert why is None, f"{p}: {why}"
        assert rec["status"] == "completed", p
        recs[rec["seed"]] = rec
    assert len(files) == n == len(recs), (len(files), n)
    assert not list((results / "runs").glob(".tmp-*")), "temporary records left"
    return recs


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    run_args = DEFAULT_RUN
    if "--" in argv:
        i = argv.index("--")
        argv, run_args = argv[:i], argv[i + 1:]
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=8)
    ap.add_argument("--skip-default-threads", action="store_true",
                    help="leave out the sequential run at torch's threads")
    a = ap.parse_args(argv)
    seeds = list(range(a.runs))
    root = Path(tempfile.mkdtemp(prefix="concurrent-"))
    walls = {}
    walls["sequential-1"] = mode(run_args, seeds, root / "seq1", 1, together=False)
    print(f"sequential, --threads 1:      {walls['sequential-1']:.1f} s", flush=True)
    if not a.skip_default_threads:
        walls["sequential"] = mode(run_args, seeds, root / "seq", None, together=False)
        print(f"sequential, default threads:  {walls['sequential']:.1f} s", flush=True)
    walls["concurrent-1"] = mode(run_args, seeds, root / "conc1", 1, together=True)
    print(f"{a.runs} at once, --threads 1:    {walls['concurrent-1']:.1f} s", flush=True)
    seq, conc = check(root / "seq1", a.runs), check(root / "conc1", a.runs)
    if not a.skip_default_threads:
        check(root / "seq", a.runs)
    same = all(seq[s]["metrics"] == conc[s]["metrics"] and
               [h["train_loss"] for h in seq[s]["history"]] == [h["train_loss"] for h in conc[s]["history"]]
               for s in seeds)
    ratios = {k: walls[k] / walls["concurrent-1"] for k in walls if k != "concurrent-1"}
    for k, r in ratios.items():
        print(f"{k} / concurrent-1 = {r:.2f}")
    print(f"records: {3 if not a.skip_default_threads else 2} x {a.runs} complete; concurrent-1 equal to "
          f"sequential-1 run by run (metrics, losses): {same}")
    out = records.write_benchmark({"run_args": run_args, "runs": a.runs, "wall_s": walls, "ratios": ratios,
                                   "records_equal": same, "cores": len(__import__("os").sched_getaffinity(0))},
                                  "concurrent")
    print(f"-> {out}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
