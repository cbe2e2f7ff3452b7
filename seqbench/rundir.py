"""A run's checkpoint folder, ``<results>/checkpoints/<run_id>/``: its lock and its files.

``last.pt`` (everything a resume needs, written after every epoch), ``best.pt`` (the selected
weights), ``pruned.pt`` (an ISS run's physically pruned model), each written atomically. One process
at a time trains a run: ``lock()`` holds ``lock`` (host, pid, token) while it does; a lock whose
process on this host is gone (kill -9) is stale and taken over.
"""
from __future__ import annotations

import contextlib
import os
import pickle
import secrets
import socket
from pathlib import Path

import torch

from .errors import SeqbenchError, clip
from .files import atomic_write


def lock_owner(path: Path) -> str | None:
    """Who holds a run's lock, or None when nobody does (no lock, or its process on this host is gone)."""
    try:
        host, pid, _ = Path(path).read_text().split()
        pid = int(pid)
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return None  # an unreadable or half-written lock: its writer died mid-write
    if host == socket.gethostname():
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass  # alive, another user's
    return f"process {pid} on {host}"


# A numpy array (the numpy random state of checkpoints written before it was saved as a tensor) is data:
# allowed to the weights-only unpickler, as torch's documentation shows for numpy arrays.
_NUMPY_GLOBALS = ("numpy._core.multiarray._reconstruct", "numpy.core.multiarray._reconstruct", "numpy.ndarray",
                  "numpy.dtype", "numpy.dtypes.UInt32DType")


def _numpy_globals() -> list:
    import importlib

    out = []
    for name in _NUMPY_GLOBALS:
        mod, _, attr = name.rpartition(".")
        try:
            out.append(getattr(importlib.import_module(mod), attr))
        except (ImportError, AttributeError):
            pass
    return out


def safe_load(path, map_location="cpu", what: str = "checkpoint"):
    """``torch.load(weights_only=True)``: tensors and plain data, never code. A file that would need
    code to load (a pickled object: crafted, or a pre-2026-12 ``pruned.pt``) is refused in one line
    naming what it asks for, without running it; a truncated or foreign file likewise."""
    path = Path(path)
    try:
        with torch.serialization.safe_globals(_numpy_globals()):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:
        try:
            wants = ", ".join(torch.serialization.get_unsafe_globals_in_checkpoint(path))[:120]
        except Exception:
            wants = "objects"
        raise SeqbenchError(f"{what} {clip(str(path), 200)} is not plain data (loading it would build {wants}); "
                            f"seqbench reads checkpoints as tensors and plain data only") from None
    except Exception as e:
        raise SeqbenchError(f"{what} {clip(str(path), 200)} is unreadable ({type(e).__name__})") from None


class RunDir:
    def __init__(self, results, run_id: str):
        self.run_id = run_id
        self.path = Path(results) / "checkpoints" / run_id

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    # ------------------------------------------------------------------ lock
    def owner(self) -> str | None:
        return lock_owner(self.path / "lock")

    def check_free(self) -> None:
        """One line when another live process trains this run."""
        owner = self.owner()
        if owner is not None:
            raise SeqbenchError(f"run '{self.run_id}' is in use by {owner} (its checkpoint folder {self.path} is "
                                f"locked); wait for it, or delete {self.path / 'lock'} if it is gone")

    @contextlib.contextmanager
    def lock(self):
        """Hold the run's lock inside the block (a stale lock is taken over). The folders it made are
        removed after it when still empty (a run refused or failed before its first checkpoint)."""
        made = [p for p in reversed([self.path, *self.path.parents]) if not p.exists()]
        self.path.mkdir(parents=True, exist_ok=True)
        path, token = self.path / "lock", secrets.token_hex(8)
        for _ in range(2):
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                self.check_free()
                path.unlink(missing_ok=True)  # stale: its process is gone
                continue
            with os.fdopen(fd, "w") as f:
                f.write(f"{socket.gethostname()} {os.getpid()} {token}\n")
            break
        else:
            raise SeqbenchError(f"run '{self.run_id}': could not lock {path}")
        try:
            yield
        finally:
            try:
                if path.read_text().split()[2] == token:
                    path.unlink()
            except (OSError, IndexError):
                pass
            for p in [self.path, *(q for q in reversed(made) if q != self.path)]:
                try:
                    p.rmdir()  # only when empty
                except OSError:
                    pass

    # ----------------------------------------------------------------- files
    def save(self, name: str, payload) -> Path:
        """``torch.save(payload)`` as ``name``, atomically (crash-test point ``save:<name>``)."""
        self.path.mkdir(parents=True, exist_ok=True)
        return atomic_write(self.path / name, lambda tmp: torch.save(payload, tmp), fault=f"save:{name}")

    def load(self, name: str, map_location="cpu", what: str = "checkpoint") -> dict:
        """A checkpoint file, read as data (``safe_load``); one line naming it when it cannot be."""
        return safe_load(self.path / name, map_location, what)

    def resumable(self) -> dict:
        """``last.pt`` of a run that can resume: one that has a checkpoint and no record, that no live
        process trains; one line otherwise."""
        run_id = self.run_id
        if not self.has("last.pt"):
            raise SeqbenchError(f"cannot resume {clip(repr(run_id))}: "
                                f"no checkpoint at {clip(str(self / 'last.pt'), 200)}")
        if (self.path.parent.parent / "runs" / f"{run_id}.json").exists():
            raise SeqbenchError(f"run '{run_id}' has finished already (its record exists)")
        self.check_free()
        what = f"cannot resume '{run_id}': checkpoint"
        ck = self.load("last.pt", what=what)
        if not isinstance(ck, dict) or "config" not in ck:  # a foreign file
            raise SeqbenchError(f"{what} {self / 'last.pt'} is unreadable ({type(ck).__name__})")
        return ck

    def has(self, name: str) -> bool:
        return (self.path / name).is_file()

    def weights_file(self) -> str | None:
        """The run's selected weights: ``best.pt``, else ``last.pt``; None when it has neither."""
        return next((n for n in ("best.pt", "last.pt") if self.has(n)), None)

    def weights(self, map_location="cpu", what: str = "") -> tuple[dict, Path]:
        """The state dict of ``weights_file()`` and its path; one line when there is none or it is unreadable."""
        name = self.weights_file()
        if name is None:
            raise SeqbenchError(f"{what}run {clip(repr(self.run_id))}: no best.pt or last.pt in {self.path}")
        return self.load(name, map_location, f"{what}run '{self.run_id}': checkpoint")["model"], self.path / name
