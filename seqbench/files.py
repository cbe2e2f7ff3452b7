"""Atomic file writes: a file appears whole under its final name or not at all.

``atomic_write(path, write)`` has ``write(tmp)`` fill a temporary file in the same folder (named
after its writer: ``.tmp-<host>-<pid>-<random><suffix>``, the suffix kept so writers that infer a
format from it work), flushes it to disk, then renames it over ``path`` (``os.replace``), or with
``replace=False`` hard-links it to ``path``, which fails rather than overwrite (``FileExistsError``).
The temporary file is removed in every case. ``fault`` / ``fault_after``: crash-test points
(``seqbench.faults``) reached between writing and renaming, and after renaming.
"""
from __future__ import annotations

import os
import secrets
import socket
import time
from pathlib import Path
from typing import Callable

from . import faults

TMP_PREFIX = ".tmp-"


def tmp_path(path: Path) -> Path:
    """A temporary name beside ``path``, unique to this writer, with ``path``'s suffix."""
    return path.with_name(f"{TMP_PREFIX}{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(4)}{path.suffix}")


def atomic_write(path, write: Callable[[Path], None] | str | bytes, *, replace: bool = True,
                 fault: str | None = None, fault_after: str | None = None) -> Path:
    """Write ``path`` whole or not at all; ``write`` is a function of the temporary path, or the content."""
    path = Path(path)
    tmp = tmp_path(path)
    try:
        if callable(write):
            write(tmp)
        else:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the umask decides the mode
            with os.fdopen(fd, "wb") as f:
                f.write(write.encode() if isinstance(write, str) else write)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        if fault:
            faults.point(fault)
        if replace:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)  # atomic, and refuses to replace an existing file
        if fault_after:
            faults.point(fault_after)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale_tmp(folder: Path, suffix: str = "") -> list[Path]:
    """Remove temporary files in ``folder`` whose writer (a process on this host) is gone; one of
    another host, or named without its writer, once it is an hour old."""
    removed, host = [], socket.gethostname()
    for p in Path(folder).glob(f"{TMP_PREFIX}*{suffix}"):
        parts = p.name[len(TMP_PREFIX):len(p.name) - len(suffix)].rsplit("-", 2)
        if len(parts) == 3 and parts[0] == host and parts[1].isdigit():
            stale = not _pid_alive(int(parts[1]))
        else:
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
