"""Fault injection for the crash tests: ``SEQBENCH_FAULT=<point>[@<n>]`` kills this process with
SIGKILL the n-th time (default: the first) it reaches ``<point>``. Points sit inside the writes a
crash must not corrupt: ``save:last.pt`` / ``save:best.pt`` (the checkpoint's temporary file is
written, not yet renamed), ``record:written`` (the record's temporary file is written, not yet
linked) and ``record:linked`` (linked, its temporary file not yet removed). Unset, a point costs
one environment lookup. Used by scripts/kill_resume.py and the tests; never set it otherwise.

``SEQBENCH_FAULT_ONCE=<file>`` besides: the kill happens only in the process that creates
``<file>`` (exclusively), so of all the processes that reach the point, one dies, once: the first
attempt of a sweep run is killed and its retry, in a fresh process, is not. ``SEQBENCH_FAULT_RANK=<r>``:
only the process of that rank of a distributed run (``train:step``: after every training step)."""
from __future__ import annotations

import os
import signal

_reached: dict[str, int] = {}


def point(name: str) -> None:
    spec = os.environ.get("SEQBENCH_FAULT")
    if not spec:
        return
    want, _, n = spec.partition("@")
    if want != name:
        return
    rank = os.environ.get("SEQBENCH_FAULT_RANK")
    if rank is not None and rank != os.environ.get("RANK", "0"):
        return
    _reached[name] = _reached.get(name, 0) + 1
    if _reached[name] == int(n or 1):
        once = os.environ.get("SEQBENCH_FAULT_ONCE")
        if once:
            try:
                os.close(os.open(once, os.O_WRONLY | os.O_CREAT | os.O_EXCL))
            except FileExistsError:
                return  # another process was killed here already
        os.kill(os.getpid(), signal.SIGKILL)
