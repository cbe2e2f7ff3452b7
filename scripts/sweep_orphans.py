"""Does a local Ray that ``seqbench sweep`` starts die with it? A 2-run tiny sweep is started, its
driver killed with SIGKILL once a run is training, and every process that descended from the driver
is listed before the kill and ``--wait`` seconds after it. Exit 0 when none is left.

    SEQBENCH_DATA=../shared/data OMP_NUM_THREADS=1 python scripts/sweep_orphans.py [--wait 10]

Linux only (reads /proc). A script, not a test: it starts a real sweep (Ray's start and torch's
import in the driver, ~15 s on 2 cores); ``tests/test_sweep.py`` tests the helper that does the work.
"""
from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def table() -> dict[int, dict]:
    """Every process: its state, parent, group, session, start time and command line."""
    out = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
            cmd = " ".join((d / "cmdline").read_bytes().decode(errors="replace").replace("\0", " ").split())
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()  # after the command name, which may hold spaces
        out[int(d.name)] = {"state": fields[0], "ppid": int(fields[1]), "pgid": int(fields[2]), "sid": int(fields[3]),
                            "start": int(fields[19]), "cmd": cmd or stat[stat.index("(") : stat.rindex(")") + 1]}
    return out


def descendants(root: int, procs: dict[int, dict]) -> dict[int, dict]:
    kids: dict[int, list[int]] = {}
    for pid, p in procs.items():
        kids.setdefault(p["ppid"], []).append(pid)
    out, todo = {}, [root]
    while todo:
        pid = todo.pop()
        for k in kids.get(pid, []):
            out[k] = procs[k]
            todo.append(k)
    return out


def show(title: str, procs: dict[int, dict]) -> None:
    print(f"{title} ({len(procs)})")
    print(f"  {'PID':>7} {'PPID':>7} {'PGID':>7} {'SID':>7}  COMMAND")
    for pid, p in sorted(procs.items()):
        print(f"  {pid:>7} {p['ppid']:>7} {p['pgid']:>7} {p['sid']:>7}  {p['cmd'][:110]}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--wait", type=float, default=10.0, help="seconds between the kill and the second list")
    a = ap.parse_args()
    results = Path(tempfile.mkdtemp(prefix="sweep-orphans-"))
    cmd = [sys.executable, "-m", "seqbench", "sweep", "--models", "lstm", "--tasks", "adding", "--seeds", "0,1",
           "--presets", "tiny", "--set", "epochs=100000", "--set", "limit_batches=2", "--set", "latency_time=0.01",
           "--results", str(results)]
    log = open(results / "driver.log", "w")
    driver = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        time.sleep(0.5)
        tree = descendants(driver.pid, table())
        if any("ray::seqbench:" in p["cmd"] for p in tree.values()):
            break
        if driver.poll() is not None:
            print(f"the driver ended first (exit {driver.returncode}); see {results / 'driver.log'}")
            return 2
    else:
        print("no run started in 180 s")
        driver.kill()
        return 2
    time.sleep(2)  # both runs training
    before = {driver.pid: table()[driver.pid], **descendants(driver.pid, table())}
    show(f"driver {driver.pid} and its descendants, before kill -9", before)
    t0 = time.monotonic()
    os.kill(driver.pid, signal.SIGKILL)
    driver.wait()

    def alive() -> dict[int, dict]:  # a zombie has ended (its parent has yet to collect its exit status)
        now = table()
        return {pid: now[pid] for pid, p in before.items()
                if pid in now and now[pid]["start"] == p["start"] and now[pid]["state"] != "Z"}

    while alive() and time.monotonic() - t0 < a.wait:
        time.sleep(0.05)
    gone = time.monotonic() - t0
    time.sleep(max(0.0, a.wait - gone))
    left = alive()
    print(f"every one ended {gone:.2f} s after the kill" if not left else "")
    show(f"{a.wait:g} s after kill -9 {driver.pid}: still running", left)
    return 0 if not left else 1


if __name__ == "__main__":
    sys.exit(main())
