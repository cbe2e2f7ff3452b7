"""Run records: one immutable JSON file per run in ``<results>/runs/<run_id>.json``.

A record (``Record``) is written once, atomically (``files.atomic_write`` without replace: a
temporary file hard-linked to its final name, which fails rather than overwrite), so concurrent
runs never see a half-written record nor clobber one another; a temporary file left by a writer
killed mid-write is removed by the next writer or reader on that host. Every record carries its
``schema``; ``load_all`` / ``upgrade`` read the older schemas into the current one.

Schema 2: ``metrics.selection`` is data, ``{"epoch", "reason"}`` (``Selection``), and the record says
what the report shows of it: ``strategy_label`` (the strategy's ``label``) and, in a structure report,
what its backbone's ``describe_structure`` gives. Schema 1 had ``metrics.best_epoch`` and the
selection as prose.
"""
from __future__ import annotations

import copy
import json
import math
import os
import platform
import secrets
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from .errors import SeqbenchError
from .files import TMP_PREFIX, atomic_write, clean_stale_tmp

SCHEMA_VERSION = 2
REQUIRED = (
    "schema", "run_id", "status", "model", "task", "preset", "seed", "config", "env",
    "task_info", "metrics", "history", "measure", "timing",
)

# Why the tested weights are the ones they are (``metrics.selection.reason``).
BEST_VAL = "best_val"  # the epoch with the best validation value of the task's selection metric
LAST_REQUESTED = "last_requested"  # select=last: the last epoch's
LAST_NO_VAL_SPLIT = "last_no_val_split"  # the task has no validation split: the last epoch's (CIFAR papers)
LAST_NO_FINITE_VAL = "last_no_finite_val"  # no epoch had a finite validation value: the last epoch's
REASONS = (BEST_VAL, LAST_REQUESTED, LAST_NO_VAL_SPLIT, LAST_NO_FINITE_VAL)


@dataclass(frozen=True)
class Selection:
    """Which epoch's weights were tested, and why (one of ``REASONS``)."""

    epoch: int | None
    reason: str

    @property
    def validated(self) -> bool:
        """Whether validation chose them (then the record has validation metrics)."""
        return self.reason in (BEST_VAL, LAST_REQUESTED)

    @classmethod
    def of(cls, rec: dict) -> "Selection":
        d = rec["metrics"]["selection"]
        return cls(d["epoch"], d["reason"])


@dataclass
class Record:
    """One run's record, as written (``to_dict``); the fields of schema 2."""

    run_id: str
    status: str  # completed | failed
    failure: str | None
    model: str
    task: str
    preset: str
    strategy: str
    strategy_label: str
    seed: int
    config: dict
    config_hash: str  # the run's identity (config.identity)
    env: dict
    task_info: dict
    init_from: dict | None
    metrics: dict  # val, test, selection (Selection as a dict), test_best?, test_per_class?
    history: list
    measure: dict
    timing: dict
    distributed: dict  # world_size, backend, global_batch, per_rank_batch
    examples: dict | None = None
    plugins: list | None = None  # the plugins its model, task or strategy came from (registry.needed_plugins)
    schema: int = field(default=SCHEMA_VERSION)

    def to_dict(self) -> dict:
        d = asdict(self)
        for optional in ("examples", "plugins"):
            if d[optional] is None:
                del d[optional]
        return d


def task_info(spec, task, train_loader) -> dict:
    """What a record says about its task: the spec (``select``: the monitored metric), its metrics'
    directions, the training samples, and the task's own facts (``info()``)."""
    return {"kind": spec.kind, "d_input": spec.d_input, "d_output": spec.d_output, "seq_len": spec.seq_len,
            "loss": spec.loss, "select": spec.monitor, "input_shape": list(spec.input_shape) or None,
            "metrics": {m.name: ("higher" if m.higher_is_better else "lower") for m in spec.metrics},
            "train_samples": getattr(train_loader, "num_samples", None), **task.info()}


def timing(state, wall_s: float, finished: float, measure_s: float) -> dict:
    """A record's times from the loop's ``TrainState``: ``wall_s`` the running time of all its pieces."""
    def stamp(v):
        return time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(v))

    return {"started": stamp(state.started), "finished": stamp(finished), "wall_s": wall_s,
            "pieces": state.pieces, "train_s": state.train_time,
            "eval_s": sum(r.get("eval_s", 0.0) for r in state.history), "measure_s": measure_s, "epochs": state.epoch}


def metrics_block(val, test, selection: Selection, test_best=None, per_class=None) -> dict:
    out = {"val": val, "test": test, "selection": asdict(selection)}
    if test_best:
        out["test_best"] = test_best  # no validation split: the best test value over epochs, reported apart
    if per_class:
        out["test_per_class"] = per_class
    return out


def results_dir(path=None) -> Path:
    return Path(path or os.environ.get("SEQBENCH_RESULTS", "results"))


def check_writable(results) -> None:
    """Before a run trains: its results folder (records and checkpoints) can be written. A folder
    that is a file, read-only, or on a read-only file system is one line now, not a traceback
    after an epoch of training."""
    res, made = Path(results), []
    try:
        for sub in ("runs", "checkpoints"):
            folder = res / sub
            if folder.exists() and not folder.is_dir():
                raise SeqbenchError(f"results folder {res}: {folder} is a file, not a folder")
            made += [p for p in reversed([folder, *folder.parents]) if not p.exists()]
            folder.mkdir(parents=True, exist_ok=True)
            probe = folder / f".probe-{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
            probe.write_bytes(b"")
            probe.unlink()
    except OSError as e:
        raise SeqbenchError(f"results folder {res} cannot be written ({e.strerror or type(e).__name__}: "
                            f"{e.filename or res}); choose another with --results") from None
    finally:  # the folders made to probe go again: a refused run leaves nothing (the writes make them)
        for p in reversed(made):
            try:
                p.rmdir()
            except OSError:
                pass


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
    return _cpuinfo().get("model name") or platform.processor() or platform.machine()


def cpu_id() -> str | None:
    """The CPU's family / model / stepping (/proc/cpuinfo): VMs report one name ("AMD EPYC") for chips whose
    kernels may round differently, so a run's numbers are tied to the chip, not only to its name."""
    info = _cpuinfo()
    parts = [f"{k} {info[k]}" for k in ("vendor_id", "cpu family", "model", "stepping") if k in info]
    return ", ".join(parts) or None


def _cpuinfo() -> dict:
    """The first processor's fields of /proc/cpuinfo ({} where there is none)."""
    out = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if not line.strip():
                    break
                k, _, v = line.partition(":")
                out[k.strip()] = v.strip()
    except OSError:
        pass
    return out


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
        "cpu_id": cpu_id(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),  # the ISA torch's CPU kernels use (AVX2, ...)
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
    """Write ``record`` (a ``Record.to_dict()``, perhaps with ``sweep``) as ``<results>/runs/<run_id>.json``."""
    missing = [k for k in REQUIRED if k not in record]
    if missing:
        raise ValueError(f"record lacks {missing}")
    folder = results_dir(results) / "runs"
    folder.mkdir(parents=True, exist_ok=True)
    clean_stale_tmp(folder, ".json")
    final = folder / f"{record['run_id']}.json"
    text = json.dumps(_clean(record), indent=1, sort_keys=True, allow_nan=False)
    try:
        atomic_write(final, text, replace=False, fault="record:written", fault_after="record:linked")
    except FileExistsError:
        raise SeqbenchError(f"record {final} exists already; records are immutable") from None
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
            got = "null" if rec[k] is None else type(rec[k]).__name__
            return f"field '{k}' is {got}, expected {_TYPES[k].__name__}"
    if rec["status"] not in ("completed", "failed"):
        return f"status {rec['status']!r} is neither completed nor failed"
    if rec["schema"] > SCHEMA_VERSION:
        return f"schema {rec['schema']} is newer than this seqbench's ({SCHEMA_VERSION})"
    try:
        rec = upgrade(rec)
        sel = Selection.of(rec)
    except (KeyError, TypeError, AttributeError) as e:
        return f"its selection cannot be read ({type(e).__name__}: {e})"
    if sel.reason not in REASONS:
        return f"selection reason {sel.reason!r} is not one of {', '.join(REASONS)}"
    m = rec["metrics"]
    has_val = not sel.validated or isinstance(m.get("val"), dict)  # validation chose: its metrics are there
    if rec["status"] == "completed" and not (isinstance(m.get("test"), dict) and has_val):
        return "a completed run without test or validation metrics"
    if rec["status"] == "completed" and not isinstance(rec["measure"].get("params"), dict):
        return "a completed run without measurements"
    if not isinstance(rec["task_info"].get("select"), str):
        return "task_info has no selection metric"
    return None


def upgrade(rec: dict) -> dict:
    """``rec`` in the current schema (a copy where anything changes): schema 1's ``best_epoch`` and
    prose selection become a ``Selection``; the strategy's label and the structure report's
    description are added, asked of the registered strategy and model (a name this install no
    longer has: the strategy's name, no description)."""
    if rec.get("schema") == SCHEMA_VERSION:
        return rec
    rec = copy.deepcopy(rec)
    m = rec["metrics"]
    prose, best = str(m.pop("selection", "") or ""), m.pop("best_epoch", None)
    last = rec["timing"].get("epochs")
    had_val = any(k.startswith("val_") for row in rec["history"][:1] for k in row)
    if prose.startswith("last epoch") or (not prose and best is None and not had_val):
        sel = Selection(last, LAST_NO_VAL_SPLIT)
    elif prose.startswith("select last"):
        sel = Selection(best, LAST_REQUESTED)
    elif best is None:
        sel = Selection(last, LAST_NO_FINITE_VAL)
    else:
        sel = Selection(best, BEST_VAL)
    m["selection"] = asdict(sel)
    rec.setdefault("strategy_label", strategy_label(rec["config"].get("strategy", rec.get("strategy")), rec["config"]))
    batch = rec["config"].get("batch_size")
    rec.setdefault("distributed", {"world_size": 1, "backend": None, "global_batch": batch, "per_rank_batch": batch})
    st = (rec.get("measure") or {}).get("structure")
    if isinstance(st, dict):
        st.update({k: v for k, v in describe_structure(rec["model"], st).items() if k not in st})
    rec["schema"] = SCHEMA_VERSION
    return rec


def strategy_label(name: str, config: dict) -> str:
    """The strategy as the report names it (its registered class's ``label``)."""
    from . import registry

    try:
        return registry.get_strategy(name).cls.label(config)
    except SeqbenchError:
        return str(name)


def describe_structure(model: str, structure: dict) -> dict:
    """What the model's backbone says of its structure report (``describe_structure``), or nothing."""
    from . import registry

    try:
        fn = getattr(registry.get_model(model).cls, "describe_structure", None)
    except SeqbenchError:
        return {}
    return fn(structure) if callable(fn) else {}


def warn(msg: str) -> None:
    print(f"seqbench: warning: {msg}", file=sys.stderr, flush=True)


def _parse(path: Path) -> tuple[dict | None, str | None]:
    """A record file in the current schema, or why it is not usable (one warning's text)."""
    try:
        rec = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        return None, f"unreadable record {path}: {e}"
    why = problem(rec)
    if why:
        return None, f"{path}: not a complete seqbench record ({why})"
    return upgrade(rec), None


def read(path: Path) -> dict:
    """One record file in the current schema; one line when it is not a usable record."""
    rec, why = _parse(path)
    if why:
        raise SeqbenchError(why)
    return rec


def load_all(results=None, clean: bool = True) -> list[dict]:
    """Every usable record under ``<results>/runs``, in the current schema; an unreadable file, or a
    record whose required fields are missing or null, is skipped with one warning on stderr.
    ``clean=False``: stale temporary files are left where they are (a dry run writes nothing)."""
    folder = results_dir(results) / "runs"
    if folder.is_dir() and clean:
        clean_stale_tmp(folder, ".json")
    out = []
    for p in sorted(folder.glob("*.json")):
        if p.name.startswith(TMP_PREFIX):
            continue
        rec, why = _parse(p)
        if why:
            warn(f"skipping {why}")
        else:
            out.append(rec)
    return out


def write_examples(arrays: dict, run_id: str, results=None) -> Path:
    """A run's example predictions (named uint8 arrays) as ``<results>/examples/<run_id>.npz``."""
    import numpy as np

    folder = results_dir(results) / "examples"
    folder.mkdir(parents=True, exist_ok=True)
    return atomic_write(folder / f"{run_id}.npz", lambda tmp: np.savez_compressed(tmp, **arrays))


def write_benchmark(result: dict, name: str, out=None) -> Path:
    """Save a benchmark's result as ``<out or results/benchmarks>/<name>-<time>.json``."""
    folder = Path(out) if out else results_dir() / "benchmarks"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    return atomic_write(path, json.dumps(_clean(result), indent=1))
