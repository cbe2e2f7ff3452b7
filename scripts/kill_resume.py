"""Crash test: kill a training with SIGKILL at random moments, resume it, and compare the final
record with an uninterrupted run of the same command.

    python scripts/kill_resume.py                       # 20 kills of the default tiny GRU run
    python scripts/kill_resume.py --trials 5 -- --model lstm --task smnist --preset tiny --set epochs=3

Each trial starts the run in a fresh results folder and kills it once, either after a random delay
(uniform over the uninterrupted run's wall time) or inside a write a crash must not corrupt
(``SEQBENCH_FAULT``, see seqbench/faults.py: a checkpoint's or the record's temporary file written
but not yet renamed or linked, or linked but its temporary file not yet removed). Then it follows
what a user would do: ``seqbench run --resume RUN_ID --results DIR`` when a checkpoint exists, the
same command again when the kill came before the first one, nothing when the record was already
linked. The final record's status, best epoch, validation and test metrics and history (timings
left out) must equal the uninterrupted run's; no temporary record may be left once the next reader
ran, and no live lock (the lock a killed process leaves names a dead pid: the next ``--resume``
takes it over; it is counted, not an error).
Exit status 0 when every trial matches.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from seqbench.rundir import lock_owner

DEFAULT_RUN = ["--model", "gru", "--task", "pmnist", "--preset", "tiny", "--set", "epochs=3",
               "--set", "task.train_subset=1024", "--set", "latency_time=0.05", "--threads", "1"]
FAULTS = ["save:last.pt", "save:best.pt", "record:written", "record:linked"]


def seqbench(args, results: Path, env=None, kill_after: float | None = None):
    """Run ``seqbench run ARGS --results RESULTS --quiet``; SIGKILL it after ``kill_after`` seconds."""
    cmd = [sys.executable, "-m", "seqbench", "run", *args, "--results", str(results), "--quiet"]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        out, err = p.communicate(timeout=kill_after)
    except subprocess.TimeoutExpired:
        p.send_signal(signal.SIGKILL)
        out, err = p.communicate()
    return p.returncode, out, err


def run_id_of(out: str) -> str | None:
    for line in out.splitlines():
        if line.startswith("run ") and " on " in line:
            return line.split()[1]
    return None


def essence(rec: dict) -> dict:
    strip = lambda h: [{k: v for k, v in r.items() if not k.endswith("_s")} for r in h]  # noqa: E731
    m = rec["metrics"]
    return {"status": rec["status"], "selection": m["selection"], "val": m["val"], "test": m["test"],
            "history": strip(rec["history"])}


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    run_args = DEFAULT_RUN
    if "--" in argv:
        i = argv.index("--")
        argv, run_args = argv[:i], argv[i + 1:]
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0, help="chooses the kill moments")
    ap.add_argument("--keep", action="store_true", help="keep the results folders (printed)")
    a = ap.parse_args(argv)
    rng = random.Random(a.seed)
    root = Path(tempfile.mkdtemp(prefix="kill-resume-"))
    env0 = {k: v for k, v in os.environ.items() if k != "SEQBENCH_FAULT"}

    t0 = time.perf_counter()
    rc, out, err = seqbench(run_args, root / "reference", env0)
    wall = time.perf_counter() - t0
    if rc != 0:
        print(f"the uninterrupted run failed (exit {rc}):\n{err[-2000:]}", file=sys.stderr)
        return 2
    ref_path = next((root / "reference" / "runs").glob("*.json"))
    ref = essence(json.loads(ref_path.read_text()))
    epochs = len(ref["history"])
    print(f"uninterrupted: {ref_path.name}, {epochs} epochs, {wall:.1f} s; test {ref['test']}")
    print(f"{'trial':>5}  {'kill':<22} {'killed after':<22} {'then':<34} {'same':<5} leftovers")

    ok = 0
    for trial in range(1, a.trials + 1):
        res = root / f"trial{trial:02d}"
        if rng.random() < 0.4:  # inside a write
            point = rng.choice(FAULTS)
            n = rng.randint(1, epochs) if point == "save:last.pt" else 1
            kill, env, delay = f"{point}@{n}", {**env0, "SEQBENCH_FAULT": f"{point}@{n}"}, None
        else:
            delay = rng.uniform(0.0, wall)
            kill, env = f"after {delay:.2f} s", env0
        rc, out, _ = seqbench(run_args, res, env, kill_after=delay)
        killed = rc == -signal.SIGKILL
        rid = run_id_of(out)
        ck = res / "checkpoints" / (rid or "?") / "last.pt"
        reached = "not killed (finished)" if not killed else (
            "before start-up ended" if rid is None else
            "record linked" if rid and (res / "runs" / f"{rid}.json").exists() else
            f"epoch {_epoch(ck)}" if ck.exists() else "before epoch 1 saved")
        if rid and (res / "runs" / f"{rid}.json").exists():
            then = "nothing: record complete"
        elif rid and ck.exists():
            rc2, out2, err2 = seqbench(["--resume", rid], res, env0)
            then = f"--resume (exit {rc2})"
        else:  # killed before a checkpoint: nothing to resume, start again
            rc2, out2, err2 = seqbench(run_args, res, env0)
            rid = run_id_of(out2)
            then = f"started again (exit {rc2})"
        recs = [p for p in (res / "runs").glob("*.json") if not p.name.startswith(".")]
        same = len(recs) == 1 and essence(json.loads(recs[0].read_text())) == ref
        # what a crash may leave behind, once the next writer or reader has run
        subprocess.run([sys.executable, "-c", "import sys; from seqbench import records; records.load_all(sys.argv[1])",
                        str(res)], check=True)
        left = [p.name for p in (res / "runs").glob(".tmp-*")]
        left += [f"live lock {p.relative_to(res)}" for p in res.rglob("lock") if lock_owner(p) is not None]
        stale = sum(1 for p in res.rglob("lock") if lock_owner(p) is None)  # a killed owner's: taken over on resume
        ok += same and not left
        print(f"{trial:>5}  {kill:<22} {reached:<22} {then:<34} {'yes' if same else 'NO':<5} "
              f"{', '.join(left) or '-'}{f' ({stale} stale lock of the killed process)' if stale else ''}")
    print(f"{ok}/{a.trials} identical to the uninterrupted run, nothing left behind")
    if a.keep:
        print(f"results kept in {root}")
    else:
        shutil.rmtree(root, ignore_errors=True)
    return 0 if ok == a.trials else 1


def _epoch(path: Path) -> int | str:
    try:
        import torch

        return torch.load(path, map_location="cpu", weights_only=True)["epoch"]
    except Exception:
        return "?"


if __name__ == "__main__":
    sys.exit(main())
