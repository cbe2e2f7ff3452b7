"""The one registry: models (``@register_model``), tasks (``@register_task``) and training strategies
(``@register_strategy``), each an ``Entry`` keyed by name.

Discovery imports every module of ``seqbench.models`` and ``seqbench.tasks`` and the built-in
strategies (timm's ``register_model`` pattern). A module that fails to import (an optional
dependency missing) is remembered and reported only when a name it might define is asked for.

Plugins register with the same decorators from outside the repository, loaded after the built-ins:
the entry points of the groups ``seqbench.models``, ``seqbench.tasks`` and ``seqbench.strategies``
(a module, or a class registered under the entry point's name), and the files or modules named in
``$SEQBENCH_PLUGINS`` (``os.pathsep``-separated; ``--import`` adds to it, so Ray workers, torchrun
ranks and child processes load them too). A broken plugin (import error, a name already taken, a
class that lacks what its kind needs) is kept as one line (``broken()``); the rest keeps working.
This module imports nothing of the package but ``errors``: it sits at the ground of the import graph.
"""
from __future__ import annotations

import importlib
import importlib.util
import inspect
import os
import pkgutil
import sys
from dataclasses import dataclass, field, is_dataclass
from pathlib import Path

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
BUILTIN = "built-in"
PLUGINS_ENV = "SEQBENCH_PLUGINS"
ENTRY_POINT_GROUPS = {"model": "seqbench.models", "task": "seqbench.tasks", "strategy": "seqbench.strategies"}


@dataclass
class Entry:
    name: str
    cls: type
    module: str
    kinds: frozenset = field(default_factory=frozenset)
    source: str = BUILTIN  # "built-in", or the plugin that registered it (``Plugin.source``)
    plugin: dict | None = None  # how to load that plugin again (``Plugin.need``), for records and --resume


_MODELS: dict[str, Entry] = {}
_TASKS: dict[str, Entry] = {}
_STRATEGIES: dict[str, Entry] = {}
_TABLES = {"model": _MODELS, "task": _TASKS, "strategy": _STRATEGIES}
_PACKAGES = {"model": "seqbench.models", "task": "seqbench.tasks", "strategy": "seqbench.strategy"}
_BROKEN: dict[str, str] = {}  # module name -> import error
_discovered = False


@dataclass
class Plugin:
    """One plugin: ``source`` names it for people; ``need`` says how to load it again."""

    source: str  # e.g. "file /home/me/my_cells.py", "module my_cells", "entry point seqbench-mycells (...)"
    need: dict  # {"import": path or module} or {"package": distribution name}
    registered: list = field(default_factory=list)  # (what, name) it added
    broken: list = field(default_factory=list)  # one line per refusal (the whole plugin, or one entry)


_PLUGINS: dict[str, Plugin] = {}  # key: the import spec or "ep:<group>:<name>"
_loading: Plugin | None = None  # the plugin being imported: its registrations are checked, not raised
_entry_points_read = False


def _register(what: str, name: str, kinds=None):
    table = _TABLES[what]

    def deco(cls):
        ks = frozenset(kinds if kinds is not None else getattr(cls, "kinds", ()))
        plugin = _loading
        why = _refusal(what, name, cls, ks, table)
        if why and plugin is not None:  # a plugin's bad entry: one line, the rest of it still registers
            plugin.broken.append(f"{what} '{name}' ({cls.__module__}.{cls.__qualname__}): {why}")
            return cls
        if why:
            raise ValueError(f"{what} '{name}': {why}")
        cls.name = name
        table[name] = Entry(name, cls, cls.__module__, ks, plugin.source if plugin else BUILTIN,
                            plugin.need if plugin else None)
        if plugin is not None:
            plugin.registered.append((what, name))
        return cls

    return deco


def _refusal(what: str, name: str, cls, kinds: frozenset, table: dict) -> str:
    """Why ``cls`` cannot be registered as ``name`` (empty: it can). Built-ins and plugins alike."""
    if not isinstance(name, str) or not name or any(c.isspace() or c in ",+=" for c in name):
        return "a name must be non-empty, without spaces, ',', '+' or '='"
    taken = table.get(name)
    if taken is not None and (taken.cls.__qualname__ != cls.__qualname__  # a module imported twice is no clash
                              or (_loading is not None and taken.source != _loading.source)):
        return f"the name is already registered by {taken.source} ({taken.module})"
    if not inspect.isclass(cls):
        return f"expected a class, got {type(cls).__name__}"
    bad = kinds - set(INPUT_KINDS)
    if bad:
        return f"unknown input kinds {sorted(bad)} (known: {', '.join(INPUT_KINDS)})"
    params = getattr(cls, "Params", None)
    if params is not None and not is_dataclass(params):
        return "its Params must be a dataclass (fields declared with seqbench.config.setting / choice)"
    if _loading is None:  # the built-ins' contracts are tested; a plugin's are checked here
        return ""
    return _CONTRACTS[what](cls, kinds)


def _needs(cls, names) -> str:
    missing = [n for n in names if not callable(getattr(cls, n, None))]
    return f"it does not define {', '.join(missing)}" if missing else ""


def _model_contract(cls, kinds) -> str:
    import torch.nn as nn  # a plugin model imports torch already

    if not issubclass(cls, nn.Module):
        return "a model must be a torch.nn.Module (e.g. a seqbench.model.RecurrentBackbone)"
    if not kinds:
        return "it declares no input kinds (class attribute kinds, or register_model(name, kinds=...))"
    positional = [p for p in inspect.signature(cls.__init__).parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if len(positional) < 3:  # self, d_input (or the task's shape), params
        return "its __init__ must take (d_input, params)"
    return _needs(cls, ["forward", "flops_per_step"] if kinds & RECURRENT_KINDS else ["forward"])


def _task_contract(cls, kinds) -> str:
    if getattr(cls, "kind", None) not in INPUT_KINDS:
        return f"a task declares kind, one of {', '.join(INPUT_KINDS)}"
    return _needs(cls, ["spec", "loaders", "wrap", "loss", "eval_stats", "metrics", "write_fake_data"])


def _strategy_contract(cls, kinds) -> str:
    return _needs(cls, ["label", "start", "forward", "update"])


_CONTRACTS = {"model": _model_contract, "task": _task_contract, "strategy": _strategy_contract}


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
    """Import the built-in strategies; unless only strategies are asked for, every model and task module;
    then the plugins (entry points once, and whatever ``$SEQBENCH_PLUGINS`` names that is not loaded yet)."""
    global _discovered
    importlib.import_module(_PACKAGES["strategy"])
    if what != "strategy" and not _discovered:
        _discovered = True
        _import_builtins()
    load_plugins()


def _import_builtins() -> None:
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


def plugin_specs(value: str | None = None) -> list[str]:
    """The files and modules ``$SEQBENCH_PLUGINS`` names (``os.pathsep``-separated), in order."""
    value = os.environ.get(PLUGINS_ENV, "") if value is None else value
    return [s.strip() for s in value.split(os.pathsep) if s.strip()]


def import_spec(spec: str) -> str:
    """``--import`` as the environment carries it: a file as its absolute path, a module as its name."""
    path = Path(spec).expanduser()
    return str(path.resolve()) if spec.endswith(".py") or os.sep in spec or path.is_file() else spec


def add_plugins(specs: list[str]) -> None:
    """Append ``--import`` specs to ``$SEQBENCH_PLUGINS`` (so child processes and Ray workers load them too)."""
    have = plugin_specs()
    new = [s for s in map(import_spec, specs) if s not in have]
    if new:
        os.environ[PLUGINS_ENV] = os.pathsep.join(have + new)


def load_plugins() -> None:
    """Load the entry points (once) and every ``$SEQBENCH_PLUGINS`` spec not loaded yet."""
    global _entry_points_read
    if not _entry_points_read:
        _entry_points_read = True
        found = _entry_points()
        for what, group in ENTRY_POINT_GROUPS.items():
            for ep in found.select(group=group):
                dist = getattr(getattr(ep, "dist", None), "name", None) or "?"
                plugin = Plugin(f"entry point {ep.name} = {ep.value} ({dist})", {"package": dist})
                _load(f"ep:{group}:{ep.name}", plugin, lambda ep=ep, what=what: _load_entry_point(ep, what))
    for spec in plugin_specs():
        if spec not in _PLUGINS:
            is_file = spec.endswith(".py") or os.sep in spec
            plugin = Plugin(f"{'file' if is_file else 'module'} {spec}", {"import": spec})
            _load(spec, plugin, lambda spec=spec, is_file=is_file: _import_file(spec) if is_file
                  else importlib.import_module(spec))


def _entry_points():
    """Every installed distribution's entry points, read once (one scan of the installed metadata: about 40 ms here)."""
    from importlib.metadata import entry_points

    return entry_points()


def _load(key: str, plugin: Plugin, do) -> None:
    """Import one plugin with its registrations checked; any failure is kept as one line."""
    global _loading
    _PLUGINS[key] = plugin
    _loading = plugin
    try:
        do()
    except Exception as e:  # noqa: BLE001 - a plugin's own error, whatever it is, is one line, not a traceback
        plugin.broken.insert(0, str(e) if isinstance(e, SeqbenchError) else f"{type(e).__name__}: {clip(str(e), 300)}")
        for what, name in plugin.registered:  # half a plugin is not loaded: what it registered goes too
            _TABLES[what].pop(name, None)
        plugin.registered.clear()
    finally:
        _loading = None


def _import_file(path: str):
    if not Path(path).is_file():
        raise SeqbenchError(f"no such file {path}")
    name = "seqbench_plugin_" + "".join(c if c.isalnum() else "_" for c in Path(path).stem)
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and pickling look the module up by name
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return module


def _load_entry_point(ep, what: str) -> None:
    """An entry point names a module (its decorators register) or a class (registered under the entry point's
    name unless it registered itself)."""
    obj = ep.load()
    if inspect.isclass(obj) and not any(e.cls is obj for e in _TABLES[what].values()):
        if what == "task":
            register_task(ep.name)(obj)
        else:
            _register(what, ep.name)(obj)


def plugins() -> list[Plugin]:
    """Every plugin tried, loaded or broken."""
    discover()
    return list(_PLUGINS.values())


def broken() -> list[str]:
    """One line per plugin problem: the plugin and the reason."""
    return [f"plugin {p.source}: {why}" for p in plugins() for why in p.broken]


def needed_plugins(*entries: Entry) -> list[dict]:
    """What a run of these entries needs loaded besides the built-ins (for its record and checkpoint)."""
    out = []
    for e in entries:
        if e.plugin is not None and e.plugin not in out:
            out.append(e.plugin)
    return out


def require(needs: list[dict] | None, run_id: str) -> None:
    """Refuse, in one line naming them, to continue a run whose plugins are not loaded."""
    discover()
    have = {_need_key(p.need) for p in _PLUGINS.values() if p.registered}
    missing = [n for n in needs or [] if _need_key(n) not in have]
    if missing:
        how = "; ".join(f"--import {n['import']}" if "import" in n else f"pip install {n['package']}"
                        for n in missing)
        raise SeqbenchError(f"run {run_id} needs plugin(s) not loaded here: {how} "
                            f"(or name them in ${PLUGINS_ENV})")


def _need_key(need: dict) -> tuple:
    return tuple(sorted(need.items()))


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
    failed = [m for m in _BROKEN if m.startswith(_PACKAGES[what] + ".")]
    if failed:
        msg += "; modules that failed to import: " + "; ".join(f"{m} ({_BROKEN[m]})" for m in failed)
    bad = broken()
    if bad:
        msg += "; broken plugins: " + "; ".join(bad)
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
