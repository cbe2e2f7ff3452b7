"""Model and task registries.

A model is one file in ``models/`` with a class decorated by ``@register_model("name")``;
a task is one file in ``tasks/`` with ``@register_task("name")``. Discovery imports every
module of the two packages; a module that fails to import (an optional dependency missing)
is remembered, and only reported when a name it might define is asked for. Model files keep
heavy optional imports inside their constructors so that they fail only when chosen.
"""
from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass, field

from .errors import SeqbenchError, clip

# Input kinds a task can declare (its contract) and a backbone can support.
SEQUENCE = "sequence"  # real-valued sequence x[B, T, D]
TOKENS = "tokens"  # token ids x[B, T]
IMAGE = "image"  # x[B, C, H, W] -> one label
DENSE = "dense"  # x[B, C, H, W] -> per-pixel labels
QA = "qa"  # (context, question) token pairs -> span
SERIES = "series"  # multivariate time series x[B, T, D] -> y[B, T, K]
INPUT_KINDS = (SEQUENCE, TOKENS, IMAGE, DENSE, QA, SERIES)
# The kinds a recurrent backbone with forward(x[B,T,D], state) -> (y[B,T,H], state) serves:
# the task puts an encoder (embedding for tokens) in front and a head behind.
RECURRENT_KINDS = frozenset({SEQUENCE, TOKENS, SERIES})


@dataclass
class Entry:
    name: str
    cls: type
    module: str
    kinds: frozenset = field(default_factory=frozenset)


_MODELS: dict[str, Entry] = {}
_TASKS: dict[str, Entry] = {}
_BROKEN: dict[str, str] = {}  # module name -> import error
_discovered = False


def _register(table: dict, what: str, name: str, kinds=None):
    def deco(cls):
        if name in table and table[name].cls.__qualname__ != cls.__qualname__:
            raise ValueError(f"{what} '{name}' registered twice ({table[name].module}, {cls.__module__})")
        cls.name = name
        ks = frozenset(kinds if kinds is not None else getattr(cls, "kinds", ()))
        bad = ks - set(INPUT_KINDS)
        if bad:
            raise ValueError(f"{what} '{name}': unknown input kinds {sorted(bad)}")
        table[name] = Entry(name, cls, cls.__module__, ks)
        return cls

    return deco


def register_model(name: str, kinds=None):
    """Register a backbone. ``kinds``: the input kinds it serves (default ``cls.kinds``)."""
    return _register(_MODELS, "model", name, kinds)


def register_task(name: str):
    """Register a task class (see ``seqbench.task.Task``)."""

    def deco(cls):
        return _register(_TASKS, "task", name, [cls.kind])(cls)

    return deco


def unregister(name: str) -> None:
    """Remove a model or task (used by tests that register throwaway entries)."""
    _MODELS.pop(name, None)
    _TASKS.pop(name, None)


def discover() -> None:
    global _discovered
    if _discovered:
        return
    _discovered = True
    for pkg_name in ("seqbench.models", "seqbench.tasks"):
        pkg = importlib.import_module(pkg_name)
        for info in pkgutil.iter_modules(pkg.__path__):
            if info.name.startswith("_"):
                continue
            mod = f"{pkg_name}.{info.name}"
            try:
                importlib.import_module(mod)
            except ImportError as e:  # optional dependency missing: fail only when chosen
                _BROKEN[mod] = f"{type(e).__name__}: {e}"


def models() -> dict[str, Entry]:
    discover()
    return dict(sorted(_MODELS.items()))


def tasks() -> dict[str, Entry]:
    discover()
    return dict(sorted(_TASKS.items()))


def _get(table: dict, what: str, name: str) -> Entry:
    discover()
    if name in table:
        return table[name]
    msg = f"unknown {what} {clip(repr(name))}; known {what}s: {', '.join(sorted(table)) or '(none)'}"
    broken = [m for m in _BROKEN if m.startswith(f"seqbench.{what}s.")]
    if broken:
        msg += "; modules that failed to import: " + "; ".join(f"{m} ({_BROKEN[m]})" for m in broken)
    raise SeqbenchError(msg)


def get_model(name: str) -> Entry:
    return _get(_MODELS, "model", name)


def get_task(name: str) -> Entry:
    return _get(_TASKS, "task", name)


def compatible(model: Entry, task: Entry) -> tuple[bool, str]:
    kind = task.cls.kind
    if kind in model.kinds:
        return True, ""
    return False, (
        f"model '{model.name}' cannot run task '{task.name}': the task's input kind is '{kind}', "
        f"the model serves {', '.join(sorted(model.kinds)) or 'no kind'}"
    )
