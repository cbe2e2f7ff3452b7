"""``seqbench show NAME`` and ``seqbench list --json``: the registry described from its own declarations.

Everything printed is read from the code: a class's docstring (its first paragraph), its ``Params``
fields (type, default, domain or choices, help: ``config.setting`` / ``config.choice``), its presets,
the kinds it takes and the partners it is compatible with, where it comes from (``Entry.source``:
built-in or the plugin that registered it) and its paper and reference code. Nothing here is written
twice by hand.

Citations are class attributes of the registered class (tests/test_show.py checks every built-in entry):

    paper = "Authors, Title, Venue Year"       # short; "none: why" where no one paper applies
    paper_url = "https://arxiv.org/abs/..."    # optional: the paper's canonical page
    reference = "https://github.com/..."       # the code the implementation was written from or checked
                                               # against (a task: its dataset's official page), or
                                               # "none: why" where there is none (no public code)

A class may inherit them from a base class of its own module (the tasks of one dataset family, a model
and its variant); a declaration in another module does not count, so a plugin's subclass of a built-in
shows "not declared" rather than its parent's paper.
"""
from __future__ import annotations

import dataclasses
import json
from typing import Any

from . import registry
from .config import params_class
from .errors import SeqbenchError, clip
from .model import declared_implementation


def _paragraph(cls) -> str:
    """The first paragraph of a class's docstring, on one line."""
    doc = (cls.__doc__ or "").strip()
    return " ".join(doc.split("\n\n")[0].split()) if doc else ""


def _jsonable(v: Any) -> Any:
    return v if isinstance(v, (str, int, float, bool, type(None))) else repr(v)


def settings(cls) -> list[dict]:
    """Every setting of ``cls``'s Params: key, type, default, domain (or choices) and help."""
    out = []
    for f in dataclasses.fields(params_class(cls)):
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
        if "choices" in f.metadata:
            domain = "one of " + ", ".join(map(str, f.metadata["choices"]))
        elif "domain" in f.metadata:
            domain = f.metadata["domain"].describe()
        else:
            domain = ""
        typ = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
        out.append({"key": f.name, "type": typ, "default": _jsonable(default), "domain": domain,
                    "help": f.metadata.get("help", "")})
    return out


def _presets(cls) -> dict:
    return {name: {k: _jsonable(v) for k, v in p.items()} for name, p in (getattr(cls, "presets", None) or {}).items()}


CITATION_KEYS = ("paper", "paper_url", "reference")
NONE = "none"  # a declared absence: "none: why" (no paper of its own, no public reference code)


def _declared(cls, key: str) -> str:
    """``cls.<key>`` where ``cls`` or a base class of its own module declares it, else ""."""
    for klass in cls.__mro__:
        if key in vars(klass):
            value = vars(klass)[key]
            return value if klass.__module__ == cls.__module__ and isinstance(value, str) else ""
    return ""


def citation(cls) -> dict:
    """``paper``, ``paper_url`` and ``reference`` as the class declares them ("" where it does not)."""
    return {k: _declared(cls, k) for k in CITATION_KEYS}


def describe(what: str, entry: registry.Entry) -> dict:
    """One registry entry as data: what it is, where it lives and comes from, its paper and reference
    code, its settings, presets and partners."""
    cls = entry.cls
    d = {"name": entry.name, "what": what, "module": entry.module, "class": cls.__name__,
         "source": getattr(entry, "source", "built-in"), **citation(cls), "summary": _paragraph(cls)}
    if what == "model":
        d["kinds"] = sorted(entry.kinds)
        d["implementation"] = declared_implementation(cls)
        d["compatible_tasks"] = [t for t, e in registry.tasks().items() if registry.compatible(entry, e)[0]]
    elif what == "task":
        d["kind"] = cls.kind
        d["compatible_models"] = [m for m, e in registry.models().items() if registry.compatible(e, entry)[0]]
    else:
        d["applies_to"] = "series tasks" if getattr(cls, "layout", None) else "any task"
    if what != "strategy":
        d["settings"] = settings(cls)
        d["presets"] = _presets(cls)
    return d


def registry_data() -> dict:
    """The whole registry (``seqbench list --json``)."""
    return {plural: [describe(what, e) for e in table().values()]
            for what, plural, table in (("model", "models", registry.models), ("task", "tasks", registry.tasks),
                                        ("strategy", "strategies", registry.strategies))}


def find(name: str) -> list[tuple[str, registry.Entry]]:
    """Every entry of that name (a model and a task may share one)."""
    found = [(what, table()[name]) for what, table in (("model", registry.models), ("task", registry.tasks),
                                                       ("strategy", registry.strategies)) if name in table()]
    if not found:
        known = sorted({*registry.models(), *registry.tasks(), *registry.strategies()})
        raise SeqbenchError(f"nothing is registered as {clip(repr(name))}; known: {', '.join(known)}")
    return found


def is_none(value: str) -> bool:
    """Whether a citation value declares an absence ("none", "none: why")."""
    return value.lower() == NONE or value.lower().startswith(NONE + ":")


def _none(value: str) -> str:
    """A declared "none: why" as "none (why)"."""
    why = value[len(NONE) + 1:].strip()
    return f"{NONE} ({why})" if why else NONE


def citation_lines(d: dict) -> list[str]:
    """The paper and reference lines of ``seqbench show``."""
    paper, url, ref = d.get("paper", ""), d.get("paper_url", ""), d.get("reference", "")
    if not paper:
        paper = "(not declared)"
    elif is_none(paper):
        paper = _none(paper)
    if url:
        paper += f" <{url}>"
    if not ref:
        ref = "(not declared)"
    elif is_none(ref):
        ref = _none(ref)
    return [f"paper: {paper}", f"reference: {ref}"]


def text(d: dict) -> str:
    """``describe``'s data as the terminal page ``seqbench show`` prints."""
    source = d.get("source", "built-in")
    where = source if source == "built-in" else f"plugin: {source}"
    lines = [f"{d['name']} ({d['what']}: {d['module']}.{d['class']}) [{where}]", *citation_lines(d), ""]
    if d["summary"]:
        lines += [d["summary"], ""]
    if "kinds" in d:
        lines.append(f"input kinds: {', '.join(d['kinds'])}")
        lines.append(f"implementation: {d['implementation']} (what runs the recurrence: seqbench.model)")
        lines.append(f"runs on: {', '.join(d['compatible_tasks']) or '(no registered task)'}")
    if "kind" in d:
        lines.append(f"kind: {d['kind']}")
        lines.append(f"models: {', '.join(d['compatible_models']) or '(no registered model)'}")
    if "applies_to" in d:
        lines.append(f"applies to: {d['applies_to']} (--strategy {d['name']})")
    if d.get("settings"):
        prefix = "model." if d["what"] == "model" else "task."
        lines += ["", "settings (--set KEY=VALUE):"]
        for s in d["settings"]:
            dom = f"; {s['domain']}" if s["domain"] else ""
            lines.append(f"  {prefix}{s['key']} = {s['default']!r}  ({s['type']}{dom})")
            if s["help"]:
                lines.append(f"      {s['help']}")
    if d.get("presets"):
        lines += ["", "presets (--preset NAME; 'kind:NAME' or 'task:NAME' apply to that kind or task only):"]
        for name, values in d["presets"].items():
            lines.append(f"  {name}: " + (", ".join(f"{k}={v}" for k, v in values.items()) or "(no changes)"))
    return "\n".join(lines)


def show(name: str, as_json: bool = False) -> str:
    ds = [describe(what, e) for what, e in find(name)]
    if as_json:
        return json.dumps(ds if len(ds) > 1 else ds[0], indent=1)
    return "\n\n".join(text(d) for d in ds)
