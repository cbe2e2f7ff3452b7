"""The one registry: models (``@register_model``), tasks (``@register_task``) and training strategies
(``@register_strategy``), each an ``Entry`` keyed by name.

Discovery imports every module of ``seqbench.models`` and ``seqbench.tasks`` and the built-in
strategies (timm's ``register_model`` pattern). A module that fails to import (an optional
dependency missing) is remembered and reported only when a name it might define is asked for.
This module imports nothing of the package but ``errors``: it sits at the ground of the import graph.
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
_STRATEGIES: dict[str, Entry] = {}
_TABLES = {"model": _MODELS, "task": _TASKS, "strategy": _STRATEGIES}
_PACKAGES = {"model": "seqbench.models", "task": "seqbench.tasks", "strategy": "seqbench.strategy"}
_BROKEN: dict[str, str] = {}  # module name -> import error
_discovered = False


def _register(what: str, name: str, kinds=None):
    table = _TABLES[what]

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
    return _register("model", name, kinds)


def register_task(name: str):
    """Register a task class (see ``seqbench.task.Task``)."""

    def deco(cls):
        return _register("task", name, [cls.kind])(cls)

    return deco


def register_strategy(name: str):
    """Register a training strategy (see ``seqbench.strategy.MiniBatch``)."""
    return _register("strategy", name, ())


def unregister(name: str) -> None:
    """Remove a model, task or strategy (used by tests that register throwaway entries)."""
    for table in _TABLES.values():
        table.pop(name, None)


def discover(what: str = "") -> None:
    """Import the built-in strategies; unless only strategies are asked for, every model and task module."""
    global _discovered
    importlib.import_module(_PACKAGES["strategy"])
    if _discovered or what == "strategy":
        return
    _discovered = True
    for pkg_name in (_PACKAGES["model"], _PACKAGES["task"]):
        pkg = importlib.import_module(pkg_name)
        for info in pkgutil.iter_modules(pkg.__path__):
            if info.name.startswith("_"):
                continue
            mod = f"{pkg_name}.{info.name}"
            try:
                importlib.import_module(mod)
            except ImportError as e:  # optional dependency missing: fail only when chosen
                _BROKEN[mod] = f"{type(e).__name__}: {e}"


def _all(what: str) -> dict[str, Entry]:
    discover(what)
    return dict(sorted(_TABLES[what].items()))


def models() -> dict[str, Entry]:
    return _all("model")


def tasks() -> dict[str, Entry]:
    return _all("task")


def strategies() -> dict[str, Entry]:
    return _all("strategy")


def _get(what: str, name: str) -> Entry:
    discover(what)
    table = _TABLES[what]
    if name in table:
        return table[name]
    plural = "strategies" if what == "strategy" else f"{what}s"
    msg = f"unknown {what} {clip(repr(name))}; known {plural}: {', '.join(sorted(table)) or '(none)'}"
    broken = [m for m in _BROKEN if m.startswith(_PACKAGES[what] + ".")]
    if broken:
        msg += "; modules that failed to import: " + "; ".join(f"{m} ({_BROKEN[m]})" for m in broken)
    raise SeqbenchError(msg)


def get_model(name: str) -> Entry:
    return _get("model", name)


def get_task(name: str) -> Entry:
    return _get("task", name)


def get_strategy(name: str) -> Entry:
    return _get("strategy", name)


def compatible(model: Entry, task: Entry) -> tuple[bool, str]:
    kind = task.cls.kind
    if kind in model.kinds:
        return True, ""
    return False, (
        f"model '{model.name}' cannot run task '{task.name}': the task's input kind is '{kind}', "
        f"the model serves {', '.join(sorted(model.kinds)) or 'no kind'}"
    )
