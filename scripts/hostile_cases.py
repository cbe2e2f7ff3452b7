"""Issue 26's cases, run as a new user types them: each command's exit code, time, last stderr line and
whether it left anything in a fresh results folder. Real data where the case needs it.

    SEQBENCH_DATA=../shared/data OMP_NUM_THREADS=1 python scripts/hostile_cases.py [--only NAME ...]

Prints a Markdown table. A case passes when its exit code is the expected one and, for a refusal, the
results folder is left empty (a refused run leaves nothing).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

T = ["--preset", "tiny", "--threads", "1", "--quiet"]
CASES = [  # name, arguments, expected exit code, extra environment ("EMPTY": an empty data root)
    ("memory: 5000x5000 crop", ["run", "--model", "fcn", "--task", "camvid", *T, "--set", "task.crop=5000x5000"],
     2, {}),
    ("memory: batch 50000", ["run", "--model", "lstm", "--task", "pmnist", *T, "--batch-size", "50000"], 2, {}),
    ("memory: hidden 100000", ["run", "--model", "lstm", "--task", "pmnist", *T, "--hidden", "100000"], 2, {}),
    ("init-from a missing run", ["run", "--model", "lstm", "--task", "pmnist", *T, "--init-from", "no-such-run"], 2,
     {}),
    ("task.size=1x1", ["run", "--model", "fcn", "--task", "camvid", *T, "--set", "task.size=1x1"], 2, {}),
    ("se-resnet reduction 1000", ["run", "--model", "se-resnet", "--task", "cifar10", *T, "--set",
                                  "task.source=subset", "--set", "model.reduction=1000"], 2, {}),
    ("val_fraction 0.9999", ["run", "--model", "lstm", "--task", "pmnist", *T, "--set", "task.val_fraction=0.9999"],
     2, {}),
    ("subset larger than split", ["run", "--model", "lstm", "--task", "pmnist", *T, "--set", "task.val_subset=99999"],
     0, {}),
    ("bench empty name", ["bench", "--task", "pmnist", "--models", "lstm,,", "--preset", "tiny"], 2, {}),
    ("list without data", ["list"], 0, {"SEQBENCH_DATA": "EMPTY"}),
    ("bench camvid infer, no data", ["bench", "--task", "camvid", "--models", "fcn", "--preset", "fast", "--mode",
                                     "infer", "--rounds", "1", "--min-run-time", "0.01", "--threads", "1"], 0,
     {"SEQBENCH_DATA": "EMPTY"}),
    ("squad tiny dev-holdout", ["run", "--model", "bidaf", "--task", "squad", *T], 0, {}),
    ("malformed sweep file", ["sweep", "MALFORMED"], 2, {}),
]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="*")
    a = ap.parse_args()
    rows, ok_all = [], True
    for name, args, want, env in CASES:
        if a.only and name not in a.only:
            continue
        with tempfile.TemporaryDirectory() as tmp:
            res, empty = Path(tmp) / "results", Path(tmp) / "empty-data"
            empty.mkdir()
            bad = Path(tmp) / "bad.toml"
            bad.write_text("name = [unclosed\n")
            args = [str(bad) if x == "MALFORMED" else x for x in args]
            e = {**os.environ, **{k: str(empty) if v == "EMPTY" else v for k, v in env.items()}}
            if args[0] != "list":
                args = [*args, "--results", str(res)]
            t0 = time.perf_counter()
            p = subprocess.run([sys.executable, "-m", "seqbench", *args], capture_output=True, text=True, env=e)
            dt = time.perf_counter() - t0
            err = [ln for ln in p.stderr.strip().splitlines() if ln.strip()]
            left = sorted(str(q.relative_to(res)) for q in res.rglob("*")) if res.exists() else []
            nothing_left = want == 0 or not left
            ok = p.returncode == want and nothing_left and "Traceback" not in p.stderr
            ok_all &= ok
            line = (err[-1] if err else (p.stdout.strip().splitlines() or [""])[-1])[:400]
            shown = args[:-2] if args[0] != "list" else args
            command = " ".join(str(bad.name) if x == str(bad) else x for x in shown)
            kept = "nothing" if not left else f"{len(left)} entries"
            rows.append((name, command, p.returncode, f"{dt:.1f}", line.replace("|", "\\|"), kept, ok))
    print("| case | command (seqbench ...) | exit | s | last line | left in results | ok |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print("| " + " | ".join(str(x) for x in r) + " |")
    return 0 if ok_all else 1


if __name__ == "__main__":
    sys.exit(main())
