"""Run records: one immutable JSON file per run in ``<results>/runs/<run_id>.json``.

A record is written once, atomically: the JSON goes to a temporary file in the same folder and
is then hard-linked to its final name, which fails rather than overwrite an existing record.
Concurrent runs never see a half-written record and never clobber one another. The temporary file
is named after its writer (``.tmp-<host>-<pid>-<random>.json``), so one left by a writer killed
mid-write (kill -9) is recognised and removed by the next writer or reader on that host.
"""
from __future__ import annotations

import json
import math
import os
import platform
import secrets
import socket
import subprocess
import sys
import time
from pathlib import Path

import torch

from . import faults
from .errors import SeqbenchError

SCHEMA_VERSION = 1
REQUIRED = (
    "schema", "run_id", "status", "model", "task", "preset", "seed", "config", "env",
    "task_info", "metrics", "history", "measure", "timing",
)


def results_dir(path=None) -> Path:
    return Path(path or os.environ.get("SEQBENCH_RESULTS", "results"))


def check_writable(results) -> None:
    """Before a run trains: its results folder (records and checkpoints) can be written. A folder
    that is a file, read-only, or on a read-only file system is one line now, not a traceback
    after an epoch of training."""
    res = Path(results)
    try:
        for sub in ("runs", "checkpoints"):
            folder = res / sub
            if folder.exists() and not folder.is_dir():
                raise SeqbenchError(f"results folder {res}: {folder} is a file, not a folder")
            folder.mkdir(parents=True, exist_ok=True)
            probe = folder / f".probe-{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
            probe.write_bytes(b"")
            probe.unlink()
    except OSError as e:
        raise SeqbenchError(f"results folder {res} cannot be written ({e.strerror or type(e).__name__}: "
                            f"{e.filename or res}); choose another with --results") from None


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _tmp_name() -> str:
    return f".tmp-{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(4)}.json"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale_tmp(folder: Path) -> list[Path]:
    """Remove temporary record files whose writer (a process on this host) is gone."""
    removed, host = [], socket.gethostname()
    for p in folder.glob(".tmp-*.json"):
        parts = p.name[len(".tmp-"):-len(".json")].rsplit("-", 2)
        if len(parts) == 3 and parts[0] == host and parts[1].isdigit():
            stale = not _pid_alive(int(parts[1]))
        else:  # an older naming without the writer: stale once it is an hour old
            try:
                stale = time.time() - p.stat().st_mtime > 3600
            except OSError:
                continue
        if stale:
            try:
                p.unlink()
                removed.append(p)
            except OSError:
                pass
    return removed


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
    clean_stale_tmp(folder)
    final = folder / f"{record['run_id']}.json"
    tmp = folder / _tmp_name()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the umask decides the mode, as for any file
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(_clean(record), f, indent=1, sort_keys=True, allow_nan=False)
            f.flush()
            os.fsync(f.fileno())
        faults.point("record:written")
        try:
            os.link(tmp, final)  # atomic, and refuses to replace an existing record
        except FileExistsError:
            raise SeqbenchError(f"record {final} exists already; records are immutable") from None
        faults.point("record:linked")
    finally:
        os.unlink(tmp)
    return final


# What every record's required fields hold: a failed run has an empty ``measure`` and null test metrics.
_TYPES = {
    "schema": int, "run_id": str, "status": str, "model": str, "task": str, "preset": str, "seed": int,
    "config": dict, "env": dict, "task_info": dict, "metrics": dict, "history": list, "measure": dict,
    "timing": dict,
}


def problem(rec) -> str | None:
    """Why ``rec`` is not a usable record (a required field missing, null or of the wrong type), or None."""
    if not isinstance(rec, dict):
        return "not a JSON object"
    for k in REQUIRED:
        if k not in rec:
            return f"field '{k}' is missing"
        if not isinstance(rec[k], _TYPES[k]) or isinstance(rec[k], bool):
            return f"field '{k}' is {'null' if rec[k] is None else type(rec[k]).__name__}, expected {_TYPES[k].__name__}"
    if rec["status"] not in ("completed", "failed"):
        return f"status {rec['status']!r} is neither completed nor failed"
    m = rec["metrics"]
    # no validation split, or no epoch with a finite validation value (the last weights were tested):
    # no validation metrics to show
    no_val = str(m.get("selection", "")).startswith("last epoch") or ("best_epoch" in m and m["best_epoch"] is None)
    if rec["status"] == "completed" and not (isinstance(m.get("test"), dict) and (no_val or isinstance(m.get("val"), dict))):
        return "a completed run without test or validation metrics"
    if rec["status"] == "completed" and not isinstance(rec["measure"].get("params"), dict):
        return "a completed run without measurements"
    if not isinstance(rec["task_info"].get("select"), str):
        return "task_info has no selection metric"
    return None


def warn(msg: str) -> None:
    print(f"seqbench: warning: {msg}", file=sys.stderr, flush=True)


def load_all(results=None, clean: bool = True) -> list[dict]:
    """Every usable record under ``<results>/runs``; an unreadable file, or a record whose required
    fields are missing or null, is skipped with one warning on stderr. ``clean=False``: stale
    temporary files are left where they are (a dry run writes nothing)."""
    folder = results_dir(results) / "runs"
    if folder.is_dir() and clean:
        clean_stale_tmp(folder)
    out = []
    for p in sorted(folder.glob("*.json")):
        if p.name.startswith(".tmp-"):
            continue
        try:
            rec = json.loads(p.read_text())
        except (OSError, ValueError) as e:
            warn(f"skipping unreadable record {p}: {e}")
            continue
        why = problem(rec)
        if why:
            warn(f"skipping {p}: not a complete seqbench record ({why})")
            continue
        out.append(rec)
    return out


def write_examples(arrays: dict, run_id: str, results=None) -> Path:
    """A run's example predictions (named uint8 arrays) as ``<results>/examples/<run_id>.npz``,
    written whole or not at all (temporary file, then renamed)."""
    import numpy as np

    folder = results_dir(results) / "examples"
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / f"{run_id}.npz"
    tmp = folder / f".{run_id}.{os.getpid()}.tmp.npz"
    try:
        np.savez_compressed(tmp, **arrays)
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)
    return final


def write_benchmark(result: dict, name: str, out=None) -> Path:
    """Save a benchmark script's result as ``<out or results/benchmarks>/<name>-<time>.json``."""
    folder = Path(out) if out else results_dir() / "benchmarks"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(_clean(result), indent=1))
    return path
