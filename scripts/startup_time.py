"""Start-up time of seqbench's commands: whole-command wall times over interleaved rounds, min and median.

    SEQBENCH_DATA=../shared/data python scripts/startup_time.py --rounds 7 [--tree before=/path/to/old/checkout]

Per round, in order (reversed every other round): ``python -c "import torch"`` (the floor), the same with one
Adam step (the floor of any training: torch's first optimiser imports torch._dynamo), ``seqbench list``,
and a tiny run killed after its first training step (``SEQBENCH_FAULT=train:step@1``): its wall time is the
time to the end of the first step (one step of a tiny LSTM: milliseconds). ``--tree NAME=PATH`` adds the
same commands run from another checkout (PYTHONPATH; its models/ and tasks/ linked under its seqbench/, as
the installed package maps them), for a before/after comparison in one process. Prints one table;
``--json FILE`` keeps every time.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ADAM = ("import torch; p = torch.nn.Parameter(torch.ones(3)); o = torch.optim.Adam([p]); "
        "(p * p).sum().backward(); o.step()")
RUN = ["run", "--model", "lstm", "--task", "pmnist", "--preset", "tiny", "--quiet", "--threads", "1"]


def commands(trees: dict[str, Path | None], results: Path) -> dict[str, tuple[list, dict]]:
    out = {"import torch": ([sys.executable, "-c", "import torch"], {}),
           # the floor of any training: torch's first optimiser imports torch._dynamo (about 2 s here)
           "import torch + one Adam step": ([sys.executable, "-c", ADAM], {})}
    for name, root in trees.items():
        env = {}
        if root is not None:
            for sub in ("models", "tasks"):  # the installed package's mapping of seqbench.models / .tasks
                link = root / "seqbench" / sub
                if not link.exists():
                    link.symlink_to(root / sub)
            env = {"PYTHONPATH": str(root)}
        seq = [sys.executable, "-m", "seqbench"]
        out[f"{name}: list"] = ([*seq, "list"], env)
        out[f"{name}: tiny run to its first step (incl.)"] = ([*seq, *RUN, "--results", str(results / name)],
                                                      {**env, "SEQBENCH_FAULT": "train:step@1"})
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--tree", action="append", default=[], help="NAME=PATH of another checkout")
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    trees: dict[str, Path | None] = {"this": None}
    for t in a.tree:
        name, _, path = t.partition("=")
        trees[name] = Path(path).resolve()
    with tempfile.TemporaryDirectory() as tmp:
        cmds = commands(trees, Path(tmp))
        times: dict[str, list[float]] = {k: [] for k in cmds}
        for r in range(a.rounds):
            order = list(cmds) if r % 2 == 0 else list(reversed(cmds))
            for k in order:
                argv, env = cmds[k]
                t0 = time.perf_counter()
                p = subprocess.run(argv, env={**os.environ, **env}, capture_output=True, text=True)
                dt = time.perf_counter() - t0
                killed = p.returncode == -9 and "SEQBENCH_FAULT" in env
                if p.returncode != 0 and not killed:
                    print(f"{k}: exit {p.returncode}: {p.stderr.strip()[-300:]}", file=sys.stderr)
                    return 1
                times[k].append(dt)
    floor = min(times["import torch"])
    print(f"{a.rounds} interleaved rounds; seconds (min / median); '+': the min over import torch's min\n")
    print("| command | min s | median s | min - import torch |")
    print("|---|---|---|---|")
    for k, v in times.items():
        print(f"| {k} | {min(v):.2f} | {statistics.median(v):.2f} | +{min(v) - floor:.2f} |")
    if a.json:
        a.json.write_text(json.dumps(times, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
