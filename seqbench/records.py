"""Run records: one immutable JSON file per run in ``<results>/runs/<run_id>.json``.

A record is written once, atomically: the JSON goes to a temporary file in the same folder and
is then hard-linked to its final name, which fails rather than overwrite an existing record.
Concurrent runs never see a half-written record and never clobber one another.
"""
from __future__ import annotations

import json
import math
import os
import platform
import secrets
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import torch

from .errors import SeqbenchError

SCHEMA_VERSION = 1
REQUIRED = (
    "schema", "run_id", "status", "model", "task", "preset", "seed", "config", "env",
    "task_info", "metrics", "history", "measure", "timing",
)


def results_dir(path=None) -> Path:
    return Path(path or os.environ.get("SEQBENCH_RESULTS", "results"))


def new_run_id(model: str, task: str, preset: str, seed: int) -> str:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return f"{model}-{task}-{preset}-s{seed}-{stamp}-{secrets.token_hex(3)}"


def _git(*args) -> str | None:
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", *args], cwd=here, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(device: torch.device) -> dict:
    status = _git("status", "--porcelain", "--untracked-files=no")
    return {
        "git_commit": _git("rev-parse", "HEAD"),
        "git_dirty": None if status is None else bool(status),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "hostname": socket.gethostname(),
    }


def _clean(obj):
    """JSON has no NaN/inf: write them as null (a failed run's loss, say)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return obj


def write(record: dict, results=None) -> Path:
    missing = [k for k in REQUIRED if k not in record]
    if missing:
        raise ValueError(f"record lacks {missing}")
    folder = results_dir(results) / "runs"
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / f"{record['run_id']}.json"
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".json", dir=folder)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(_clean(record), f, indent=1, sort_keys=True, allow_nan=False)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, final)  # atomic, and refuses to replace an existing record
        except FileExistsError:
            raise SeqbenchError(f"record {final} exists already; records are immutable") from None
    finally:
        os.unlink(tmp)
    return final


def load_all(results=None) -> list[dict]:
    """Every readable record under ``<results>/runs``; unreadable files are skipped with a warning."""
    folder = results_dir(results) / "runs"
    out = []
    for p in sorted(folder.glob("*.json")):
        if p.name.startswith(".tmp-"):
            continue
        try:
            rec = json.loads(p.read_text())
        except (OSError, ValueError) as e:
            print(f"seqbench: warning: skipping unreadable record {p}: {e}", flush=True)
            continue
        if not isinstance(rec, dict) or any(k not in rec for k in REQUIRED):
            print(f"seqbench: warning: skipping {p}: not a seqbench record", flush=True)
            continue
        out.append(rec)
    return out


def write_benchmark(result: dict, name: str, out=None) -> Path:
    """Save a benchmark script's result as ``<out or results/benchmarks>/<name>-<time>.json``."""
    folder = Path(out) if out else results_dir() / "benchmarks"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(_clean(result), indent=1))
    return path
