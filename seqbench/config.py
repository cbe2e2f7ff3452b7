"""Run configuration: training settings, the model's and the task's parameters, presets, overrides.

Every setting has one flat key: training keys are plain (``epochs``, ``lr``), the model's and the
task's parameters prefixed (``model.hidden``, ``task.permutation``). A preset is a dict of such keys.
Resolution order, later wins (typed defaults and only existing keys, as nanoGPT's configurator):

    defaults < task preset < model preset < model preset for the task's kind < for this task < overrides

Presets: ``tiny`` (seconds on a CPU; tests and CI), ``fast`` (minutes on a laptop CPU, meaningful
accuracy), ``paper`` (the paper's hyperparameters). A model keys a preset for one input kind as
``"<kind>:<preset>"`` and for one task as ``"<task>:<preset>"``. A task or model may define further
names (PTB's ``small``/``medium``/``large``), valid for the pairs where one of them is defined.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
import typing
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from . import registry
from .errors import SeqbenchError, clip

PRESETS = ("tiny", "fast", "paper")
DEFAULT_PRESET = "fast"


# ---------------------------------------------------------------------------- domains
# Every setting declares its domain where it is declared (a field of TrainConfig, of a model's or a
# task's Params); values are checked when the config resolves, before anything is built, so a bad
# value is one line naming the key and its domain. A test generated from these declarations tries an
# out-of-domain value for every key of every registered model and task.
@dataclass(frozen=True)
class Domain:
    text: Any  # what a valid value is, for the error line ("an integer >= 1"), or a function giving it
    check: Callable[[Any], bool]
    bad: Any  # an out-of-domain value of the field's type (for the generated test)

    def __call__(self, v) -> bool:
        return self.check(v)

    def describe(self) -> str:
        return self.text() if callable(self.text) else self.text


def _num(x) -> str:
    return f"{x:g}" if isinstance(x, float) else str(x)


def ints(lo: int | None = None, hi: int | None = None) -> Domain:
    """Integers in [lo, hi] (either end open-ended when None)."""
    if lo is not None and hi is not None:
        text = f"an integer in [{lo}, {hi}]"
    else:
        text = f"an integer >= {lo}" if lo is not None else f"an integer <= {hi}"
    bad = lo - 1 if lo is not None else hi + 1
    return Domain(text, lambda v: (lo is None or v >= lo) and (hi is None or v <= hi), bad)


def reals(lo: float | None = None, hi: float | None = None, lo_open: bool = False, hi_open: bool = False,
          what: str = "a finite number") -> Domain:
    """Finite numbers between lo and hi; ``*_open`` excludes that end. NaN and inf are never in."""
    if lo is not None and hi is not None:
        text = f"{what} in {'(' if lo_open else '['}{_num(lo)}, {_num(hi)}{')' if hi_open else ']'}"
    elif lo is not None:
        text = f"{what} {'>' if lo_open else '>='} {_num(lo)}"
    else:
        text = f"{what} {'<' if hi_open else '<='} {_num(hi)}"

    def check(v):
        return (math.isfinite(v) and (lo is None or (v > lo if lo_open else v >= lo))
                and (hi is None or (v < hi if hi_open else v <= hi)))

    bad = float(lo) - 1.0 if lo is not None else float(hi) + 1.0
    return Domain(text, check, bad)


def pattern(regex: str, text: str, bad: str) -> Domain:
    """Strings matching ``regex`` whole."""
    rx = re.compile(regex)
    return Domain(text, lambda v: rx.fullmatch(v) is not None, bad)


def int_list(what: str, example: str) -> Domain:
    """A comma-separated list of integers >= 1 (``what``: "widths", "epochs"), or the empty string."""
    return pattern(r"|\s*[1-9][0-9]*(\s*,\s*[1-9][0-9]*)*\s*",
                   f"comma-separated {what} >= 1, e.g. {example} (or empty)", "0,5")


FINITE = Domain("a finite number", math.isfinite, float("nan"))
POSITIVE = ints(1)  # sizes, counts, epochs, batch sizes
NONNEGATIVE = ints(0)
SEED = ints(0, 2**32 - 1)  # numpy's seed range
POSITIVE_REAL = reals(0.0, lo_open=True)  # learning rates, times, scales
NONNEGATIVE_REAL = reals(0.0)  # weight decay, clipping (0 = off), penalties
PROBABILITY = reals(0.0, 1.0, hi_open=True, what="a probability")  # dropout rates
# a split that must be non-empty on both sides
FRACTION = reals(0.0, 1.0, lo_open=True, hi_open=True, what="a fraction")
MOMENTUM = reals(0.0, 1.0, hi_open=True)


def check_split(params, first: str, second: str, rest: str) -> None:
    """Two ``FRACTION`` settings cut from one whole must leave a part of it (``rest``) for a third
    split: one line naming both keys otherwise (a task's ``validate``)."""
    a, b = getattr(params, first), getattr(params, second)
    if a + b >= 1:
        raise SeqbenchError(f"bad values for 'task.{first}' ({a:g}) and 'task.{second}' ({b:g}): "
                            f"expected a sum < 1 ({rest})")


STRATEGY = Domain(lambda: "a registered strategy: " + ", ".join(registry.strategies()),
                  lambda v: v in registry.strategies(), "no-such-strategy")


def setting(default, domain: Domain, help: str = ""):
    """A dataclass field with its domain (``domain``) and a help text."""
    return field(default=default, metadata={"domain": domain, "help": help})


def choice(default, choices, help=""):
    """A dataclass field whose value is one of ``choices``."""
    return field(default=default, metadata={"choices": tuple(choices), "help": help})


@dataclass
class TrainConfig:
    epochs: int = setting(10, POSITIVE)
    batch_size: int = setting(64, POSITIVE)
    eval_batch_size: int = setting(256, POSITIVE)
    lr: float = setting(1e-3, POSITIVE_REAL)
    optimizer: str = choice("adam", ("adam", "adamw", "sgd", "rmsprop"))
    momentum: float = setting(0.0, MOMENTUM)
    nesterov: bool = False  # SGD with Nesterov momentum (needs momentum > 0)
    weight_decay: float = setting(0.0, NONNEGATIVE_REAL)
    # False: no weight decay on biases and normalisation weights (every parameter of dim < 2; nanoGPT's rule)
    decay_norm_bias: bool = True
    schedule: str = choice("none", ("none", "cosine", "step", "multistep", "decay_after", "poly"),
                            "LR schedule: per epoch; poly per iteration")
    lr_step: int = setting(1, POSITIVE, "step schedule: decay every lr_step epochs")
    milestones: str = setting("", int_list("epochs", "60,120"),
                              "multistep schedule: epochs after which lr *= lr_gamma, e.g. 60,120")
    lr_gamma: float = setting(0.1, POSITIVE_REAL, "step / multistep / decay_after: decay factor")
    # poly (the segmentation models' schedule): lr (1 - iteration / iterations)^poly_power, stepped every batch
    poly_power: float = setting(0.9, POSITIVE_REAL, "poly schedule: the power")
    # decay_after (Zaremba et al. 2014): lr stays for lr_hold epochs, then x lr_gamma every epoch
    lr_hold: int = setting(0, NONNEGATIVE)
    grad_clip: float = setting(0.0, NONNEGATIVE_REAL, "max global grad norm; 0 = off")
    amp: str = choice("off", ("off", "bf16", "fp16"))
    channels_last: bool = False  # 4-D inputs and the model in channels-last memory format (convnets on a GPU)
    # distributed runs (torchrun): batch-norm statistics over the global batch (SyncBatchNorm)
    sync_bn: bool = False
    strategy: str = setting("minibatch", STRATEGY, "training strategy (seqbench.strategy registry)")
    keeper: float = setting(1.0, NONNEGATIVE_REAL,
                            "MPTT's delta: weight of the carried message against this epoch's mean")
    mptt_warmup: int = setting(0, NONNEGATIVE, "MPTT: epochs (from 0) up to this one start from zero states")
    seed: int = setting(0, SEED)
    device: str = setting("auto", pattern(r"auto|cpu|cuda(:[0-9]+)?", "auto, cpu, cuda or cuda:N", "mps"))
    deterministic: bool = False
    threads: Optional[int] = setting(None, POSITIVE,
                                     "torch threads; none: torch's default, at most the cores this process may use")
    limit_batches: int = setting(0, NONNEGATIVE, "cap on batches per epoch and per evaluation; 0 = all (smoke tests)")
    # An exponential moving average of the weights (decay per step; 0 = off) is what validation,
    # best.pt, the test and the measurements use (BiDAF's reference: 0.999, its shadows loaded at test).
    ema: float = setting(0.0, reals(0.0, 1.0, hi_open=True),
                         "decay of the weights' moving average used for evaluation; 0: off")
    # Which epoch's weights are tested and recorded: the best on validation, or the last (the ISS
    # references keep the final model: a Lasso run's best validation epoch is its least sparse one).
    select: str = choice("best", ("best", "last"), "the weights tested: best validation epoch, or the last epoch")
    # Another run's best weights (its best.pt, else last.pt, under the same results folder) loaded
    # before the first epoch: fine-tuning, e.g. ISS from a dense BiDAF (the ISS reference's --load_path).
    init_from: str = setting("", pattern(r"|[A-Za-z0-9][A-Za-z0-9._-]*", "a run id (or empty)", "../run"),
                             "run id whose best weights start this run")
    latency_time: float = setting(1.0, POSITIVE_REAL, "seconds of timing per latency measurement")
    log_every: int = setting(20, POSITIVE, "steps between progress updates (and non-finite loss checks)")

    def validate(self):
        if self.nesterov and (self.optimizer != "sgd" or self.momentum <= 0):
            raise SeqbenchError("bad value true for 'nesterov': Nesterov momentum needs optimizer sgd and momentum > 0")
        if self.schedule == "multistep" and not self.milestones.strip():
            raise SeqbenchError("schedule multistep needs 'milestones' "
                                "(epochs after which lr *= lr_gamma, e.g. 60,120)")
        if self.milestones.strip():
            m = milestone_list(self.milestones)
            if m != sorted(set(m)):
                raise SeqbenchError(f"bad value {self.milestones!r} for 'milestones': expected increasing epochs")


def milestone_list(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


PER_STEP_SCHEDULES = ("poly",)  # stepped after every batch (the others after every epoch)

TRAIN_KEYS = tuple(f.name for f in dataclasses.fields(TrainConfig))


@dataclass
class RunConfig:
    model: str
    task: str
    preset: str
    train: TrainConfig
    model_params: Any
    task_params: Any

    def flat(self) -> dict:
        d = {"model": self.model, "task": self.task, "preset": self.preset}
        d.update(dataclasses.asdict(self.train))
        d.update({f"model.{k}": v for k, v in dataclasses.asdict(self.model_params).items()})
        d.update({f"task.{k}": v for k, v in dataclasses.asdict(self.task_params).items()})
        return d


@dataclass
class _Empty:
    pass


def params_class(cls) -> type:
    return getattr(cls, "Params", None) or _Empty


def _targets(train, mp, tp) -> dict[str, tuple[Any, str]]:
    t = {k: (train, k) for k in TRAIN_KEYS}
    t.update({f"model.{f.name}": (mp, f.name) for f in dataclasses.fields(mp)})
    t.update({f"task.{f.name}": (tp, f.name) for f in dataclasses.fields(tp)})
    return t


def _coerce(key: str, value: Any, obj: Any, name: str) -> Any:
    """Turn ``value`` (a string from the CLI or a typed preset value) into the field's type."""
    tp, optional = field_type(obj, name)
    try:
        if isinstance(value, str):
            s = value.strip()
            if optional and s.lower() in ("none", "null", ""):
                return None
            if tp is bool:
                if s.lower() in ("1", "true", "yes", "on"):
                    v = True
                elif s.lower() in ("0", "false", "no", "off"):
                    v = False
                else:
                    raise ValueError
            elif tp is int:
                v = int(s)
            elif tp is float:
                v = float(s)
            else:
                v = s
        else:
            if value is None and optional:
                return None
            if tp is float and isinstance(value, int) and not isinstance(value, bool):
                v = float(value)
            elif isinstance(value, tp) and not (tp is int and isinstance(value, bool)):
                v = value
            else:
                raise ValueError
    except (ValueError, TypeError, OverflowError):
        raise SeqbenchError(
            f"bad value {clip(repr(value))} for '{key}': expected {_TYPE_TEXT.get(tp, tp.__name__)}"
            f"{' or none' if optional else ''}"
        ) from None
    choices = field_meta(obj, name, "choices")
    if choices and v not in choices:
        raise SeqbenchError(f"bad value {clip(repr(v))} for '{key}': choose one of {', '.join(choices)}")
    dom = field_meta(obj, name, "domain")
    if tp is float and not math.isfinite(v) or dom is not None and not dom(v):
        what = dom.describe() if dom is not None else "a finite number"
        raise SeqbenchError(f"bad value {clip(repr(value))} for '{key}': "
                            f"expected {what}{' or none' if optional else ''}")
    return v


def field_meta(obj_or_cls, name: str, key: str):
    """A field's declared ``choices``, ``domain`` or ``help``: from the nearest class in the MRO that
    declares it, so a subclass that only changes a default (``window: int = 365``) keeps the domain."""
    cls = obj_or_cls if isinstance(obj_or_cls, type) else type(obj_or_cls)
    for c in cls.__mro__:
        f = getattr(c, "__dataclass_fields__", {}).get(name)
        if f is not None and key in f.metadata:
            return f.metadata[key]
    return None


_TYPE_TEXT = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}


def field_type(obj_or_cls, name: str) -> tuple[type, bool]:
    """A dataclass field's type and whether it is Optional."""
    tp = typing.get_type_hints(obj_or_cls if isinstance(obj_or_cls, type) else type(obj_or_cls))[name]
    if typing.get_origin(tp) in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args[0], len(args) < len(typing.get_args(tp))
    return tp, False


def apply(cfg: RunConfig, updates: dict[str, Any], source: str) -> None:
    targets = _targets(cfg.train, cfg.model_params, cfg.task_params)
    for key, value in updates.items():
        if key not in targets:
            raise SeqbenchError(
                f"unknown key {clip(repr(key))} ({source}); valid keys: {', '.join(targets)}"
            )
        obj, name = targets[key]
        setattr(obj, name, _coerce(key, value, obj, name))


def preset_layers(model_cls, task_cls, task_name: str, preset: str) -> list[tuple[str, dict]]:
    mp = getattr(model_cls, "presets", {}) or {}
    tp = getattr(task_cls, "presets", {}) or {}
    return [
        (f"task preset '{preset}'", tp.get(preset, {})),
        (f"model preset '{preset}'", mp.get(preset, {})),
        (f"model preset '{task_cls.kind}:{preset}'", mp.get(f"{task_cls.kind}:{preset}", {})),
        (f"model preset '{task_name}:{preset}'", mp.get(f"{task_name}:{preset}", {})),
    ]


def preset_names(model_cls, task_cls, task_name: str) -> list[str]:
    """tiny/fast/paper, then any other name the task, the model, or the model for this task or its kind defines."""
    extra = set(getattr(task_cls, "presets", {}) or {})
    for k in getattr(model_cls, "presets", {}) or {}:
        scope, _, name = k.rpartition(":")
        if scope in ("", task_name, task_cls.kind):
            extra.add(name)
    return list(PRESETS) + sorted(extra - set(PRESETS))


def resolve(model_entry, task_entry, preset: str = DEFAULT_PRESET, overrides: dict | None = None) -> RunConfig:
    names = preset_names(model_entry.cls, task_entry.cls, task_entry.name)
    if preset not in names:
        raise SeqbenchError(f"unknown preset {clip(repr(preset))} for {model_entry.name} on {task_entry.name}; "
                            f"choose one of {', '.join(names)}")
    cfg = RunConfig(
        model=model_entry.name,
        task=task_entry.name,
        preset=preset,
        train=TrainConfig(),
        model_params=params_class(model_entry.cls)(),
        task_params=params_class(task_entry.cls)(),
    )
    for source, layer in preset_layers(model_entry.cls, task_entry.cls, task_entry.name, preset):
        apply(cfg, layer, source)
    apply(cfg, overrides or {}, "override")
    validate(cfg)
    return cfg


def validate(cfg: RunConfig) -> None:
    """Checks between keys of one part (``Params.validate()``, e.g. series fractions that must leave a
    test part), after every layer is applied; single values were checked against their domains."""
    for part in (cfg.train, cfg.model_params, cfg.task_params):
        fn = getattr(part, "validate", None)
        if callable(fn):
            fn()


def machine_settings(overrides: dict) -> dict:
    """``overrides`` if they are all settings of the machine (``BOOKKEEPING``: a resumed run may change
    them), else one line naming the others."""
    other = [k for k in overrides if k not in BOOKKEEPING]
    if other:
        raise SeqbenchError(f"--resume takes the run's own config; only this machine's settings "
                            f"({', '.join(BOOKKEEPING)}) may change, not {', '.join(map(repr, other))}")
    return overrides


def entries(flat: dict) -> tuple:
    """The registry entries of a flat config's model and task."""
    return registry.get_model(flat["model"]), registry.get_task(flat["task"])


def from_flat(flat: dict, model_entry, task_entry) -> RunConfig:
    """Rebuild a RunConfig from a record's or checkpoint's flat config (used by --resume)."""
    cfg = RunConfig(
        model=flat["model"],
        task=flat["task"],
        preset=flat["preset"],
        train=TrainConfig(),
        model_params=params_class(model_entry.cls)(),
        task_params=params_class(task_entry.cls)(),
    )
    apply(cfg, {k: v for k, v in flat.items() if k not in ("model", "task", "preset")}, "checkpoint")
    return cfg


# ---------------------------------------------------------------------------- identity
# Settings of the machine, not of the experiment: left out of a run's identity and of the report's
# variant. (``seed`` and every other key are in the identity: two seeds are two runs.)
BOOKKEEPING = ("device", "threads", "log_every", "latency_time", "deterministic")


def declared_defaults(flat: dict) -> dict:
    """Every key's declared default for the run ``flat`` describes (training keys, and its model's
    and task's keys while this install has them): what a record written before a key existed ran with."""
    defaults = dataclasses.asdict(TrainConfig())
    for prefix, get in (("model", registry.get_model), ("task", registry.get_task)):
        try:
            params = params_class(get(flat[prefix]).cls)()
        except SeqbenchError:
            continue
        defaults.update({f"{prefix}.{k}": v for k, v in dataclasses.asdict(params).items()})
    return defaults


def identity(flat: dict) -> dict:
    """What makes a run the run it is: its flat config (``RunConfig.flat()`` or a record's
    ``config``) without the bookkeeping keys and without the keys at their declared default;
    ``model``, ``task`` and ``preset`` always. Leaving defaults out keeps older records' identity
    when a setting is added later with a default that keeps the old behaviour (a record written
    before the key existed simply lacks it). A model or task this install no longer has: its
    keys are all kept (such a run matches no new one)."""
    defaults = declared_defaults(flat)
    return {k: v for k, v in flat.items()
            if k in ("model", "task", "preset") or (k not in BOOKKEEPING and not (k in defaults and defaults[k] == v))}


def config_hash(flat: dict) -> str:
    """A run's identity as 16 hex digits (sha256 of ``identity(flat)`` as sorted JSON): written into
    every record as ``config_hash``; ``seqbench sweep`` finds finished runs by it."""
    text = json.dumps(identity(flat), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def parse_set(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        if "=" not in item:
            raise SeqbenchError(f"--set expects key=value, got {clip(repr(item))}")
        k, v = item.split("=", 1)
        out[k.strip()] = v
    return out
