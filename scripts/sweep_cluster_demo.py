"""A two-node Ray cluster on this machine runs a 6-run sweep; one node is lost mid-sweep; all 6 end completed.

    python scripts/sweep_cluster_demo.py            # about 2-5 minutes on 2 cores

1. ``ray start --head`` on 127.0.0.2 and ``ray start --address=...`` on 127.0.0.3, one CPU each
   (loopback addresses other than 127.0.0.1, which Ray rewrites to the machine's own address),
   each ``--block`` in its own session, so this script stops exactly its own nodes (``ray stop``
   would stop every Ray process on the machine);
2. ``seqbench sweep --address 127.0.0.2:PORT`` (the CLI, as a user runs it): 6 tiny runs (gru and
   lstm on the generated adding task, seeds 0-2, a few epochs each), results in a temporary folder;
3. as soon as a run on the second node has written a checkpoint, that node and every process under
   it (its raylet and its worker, training) are killed with SIGKILL: a lost node;
4. checks: the sweep exits 0, 6 records, all completed, and the killed run was retried on the head
   and resumed from its checkpoint ("resumed after epoch N" in the sweep's output).
Every Ray process gets RAY_AUTH_MODE=disabled (one mode for all: see docs/commands.md).
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HEAD, OTHER = "127.0.0.2", "127.0.0.3"
RUNS = ["--models", "gru,lstm", "--tasks", "adding", "--presets", "tiny", "--seeds", "0,1,2",
        "--set", "epochs=5", "--set", "task.n_train=8192", "--set", "latency_time=0.05", "--name", "cluster-demo"]


def free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (read from /proc: Ray's workers are in their own process groups)."""
    children: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(d.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.extend(children.get(p, []))
        todo.extend(children.get(p, []))
    return out


def kill_tree(proc: subprocess.Popen) -> None:
    for pid in [proc.pid, *descendants(proc.pid)]:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def say(msg: str) -> None:
    print(f"[demo {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def main() -> int:
    ray_bin = str(Path(sys.executable).with_name("ray"))
    seqbench_bin = str(Path(sys.executable).with_name("seqbench"))
    env = dict(os.environ, RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0", OMP_NUM_THREADS="1")
    tmp = Path(tempfile.mkdtemp(prefix="sweep-cluster-"))
    results = tmp / "results"
    port = free_port(HEAD)
    head_cmd = [ray_bin, "start", "--head", f"--port={port}", "--num-cpus=1", f"--node-ip-address={HEAD}",
                "--include-dashboard=false", "--disable-usage-stats", "--block"]
    node_cmd = [ray_bin, "start", f"--address={HEAD}:{port}", "--num-cpus=1", f"--node-ip-address={OTHER}",
                "--disable-usage-stats", "--block"]
    sweep_cmd = [seqbench_bin, "sweep", *RUNS, "--address", f"{HEAD}:{port}", "--results", str(results)]
    nodes: list[subprocess.Popen] = []
    try:
        say("RAY_AUTH_MODE=disabled " + " ".join(["ray", *head_cmd[1:]]))
        nodes.append(subprocess.Popen(head_cmd, env=env, start_new_session=True,
                                      stdout=open(tmp / "head.log", "w"), stderr=subprocess.STDOUT))
        time.sleep(3)
        say("RAY_AUTH_MODE=disabled " + " ".join(["ray", *node_cmd[1:]]))
        nodes.append(subprocess.Popen(node_cmd, env=env, start_new_session=True,
                                      stdout=open(tmp / "node.log", "w"), stderr=subprocess.STDOUT))
        probe = ("import ray; ray.init(address='%s:%d', logging_level='ERROR', log_to_driver=False); "
                 "print(sorted(n['NodeManagerAddress'] for n in ray.nodes() if n['Alive']))" % (HEAD, port))
        deadline = time.monotonic() + 180
        while True:
            out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=120)
            alive = out.stdout.strip().splitlines()[-1] if out.stdout.strip() else ""
            if OTHER in alive and HEAD in alive:
                say(f"cluster up: nodes {alive}, 1 CPU each")
                break
            if time.monotonic() > deadline or any(p.poll() is not None for p in nodes):
                say(f"the cluster did not come up: {out.stderr.strip()[-500:]}; logs in {tmp}")
                return 1
            time.sleep(2)

        say("RAY_AUTH_MODE=disabled " + " ".join(["seqbench", *sweep_cmd[1:]]))
        log = open(tmp / "sweep.log", "w")
        sweep = subprocess.Popen(sweep_cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
        killed = None
        while sweep.poll() is None:
            if killed is None:
                mine = set(descendants(nodes[1].pid))
                for lock in results.glob("checkpoints/*/lock"):
                    try:
                        pid = int(lock.read_text().split()[1])
                    except (OSError, IndexError, ValueError):
                        continue
                    if pid in mine and (lock.parent / "last.pt").is_file():
                        kill_tree(nodes[1])
                        killed = lock.parent.name
                        say(f"killed node {OTHER} (SIGKILL to its ray start, raylet and worker pid {pid}) "
                            f"while it trained {killed}, which has a checkpoint")
                        break
            time.sleep(0.2)
        log.close()
        text = (tmp / "sweep.log").read_text()
        print("---- seqbench sweep output ----\n" + text.rstrip() + "\n-------------------------------", flush=True)
        recs = [json.loads(p.read_text()) for p in sorted((results / "runs").glob("*.json"))]
        ok = (sweep.returncode == 0 and killed is not None and len(recs) == 6
              and all(r["status"] == "completed" for r in recs)
              and any(killed in line and "resumed after epoch" in line for line in text.splitlines()))
        say(f"sweep exit {sweep.returncode}; {len(recs)} records, "
            f"{sum(r['status'] == 'completed' for r in recs)} completed; node lost during: {killed}; "
            f"{'OK' if ok else 'FAILED'} (files in {tmp})")
        return 0 if ok else 1
    finally:  # this script's nodes only: every process under them, found before any of them exits
        pids = [pid for p in nodes for pid in (p.pid, *descendants(p.pid))]
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid in pids:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            time.sleep(3 if sig == signal.SIGTERM else 0)
        for p in nodes:
            p.wait()


if __name__ == "__main__":
    sys.exit(main())
