"""Run configuration: training settings, the model's and the task's parameters, presets, overrides.

Every setting has one flat key. Training keys are plain (``epochs``, ``lr``); the model's and the
task's parameters are prefixed (``model.hidden``, ``task.permutation``). A preset is a dict of such
keys. Resolution order, later wins:

    dataclass defaults < task preset < model preset < model preset for this task < CLI overrides

Presets are named ``tiny`` (seconds on a CPU; tests and CI), ``fast`` (minutes on a laptop CPU,
meaningful accuracy) and ``paper`` (the paper's hyperparameters). A model may give a preset for one
task only with the key ``"<task>:<preset>"``. A task or model may define further names (PTB's
``small``/``medium``/``large`` after Zaremba et al.), valid for the pairs where one of them is defined.
"""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any

from .errors import SeqbenchError

PRESETS = ("tiny", "fast", "paper")
DEFAULT_PRESET = "fast"


def _choice(default, choices, help=""):
    return field(default=default, metadata={"choices": tuple(choices), "help": help})


@dataclass
class TrainConfig:
    epochs: int = 10
    batch_size: int = 64
    eval_batch_size: int = 256
    lr: float = 1e-3
    optimizer: str = _choice("adam", ("adam", "adamw", "sgd", "rmsprop"))
    momentum: float = 0.0
    weight_decay: float = 0.0
    schedule: str = _choice("none", ("none", "cosine", "step", "decay_after"), "per-epoch LR schedule")
    lr_step: int = 1  # step schedule: decay every lr_step epochs
    lr_gamma: float = 0.1  # step / decay_after: decay factor
    lr_hold: int = 0  # decay_after (Zaremba et al. 2014): lr stays for lr_hold epochs, then x lr_gamma every epoch
    grad_clip: float = 0.0  # max global grad norm; 0 = off
    amp: str = _choice("off", ("off", "bf16", "fp16"))
    strategy: str = "minibatch"  # training strategy (seqbench.strategy registry)
    keeper: float = 1.0  # MPTT's delta: weight of the carried message against this epoch's mean
    mptt_warmup: int = 0  # MPTT: epochs (from 0) up to this one start from zero states
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    deterministic: bool = False
    limit_batches: int = 0  # cap on batches per epoch and per evaluation; 0 = all (smoke tests)
    latency_time: float = 1.0  # seconds of timing per latency measurement
    log_every: int = 20  # steps between progress-bar updates (and non-finite loss checks)


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
    hints = typing.get_type_hints(type(obj))
    tp = hints[name]
    optional = False
    if typing.get_origin(tp) in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        optional = len(args) < len(typing.get_args(tp))
        tp = args[0]
    f = next(f for f in dataclasses.fields(obj) if f.name == name)
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
    except (ValueError, TypeError):
        raise SeqbenchError(
            f"bad value {value!r} for '{key}': expected {tp.__name__}{' or none' if optional else ''}"
        ) from None
    choices = f.metadata.get("choices")
    if choices and v not in choices:
        raise SeqbenchError(f"bad value {v!r} for '{key}': choose one of {', '.join(choices)}")
    return v


def apply(cfg: RunConfig, updates: dict[str, Any], source: str) -> None:
    targets = _targets(cfg.train, cfg.model_params, cfg.task_params)
    for key, value in updates.items():
        if key not in targets:
            raise SeqbenchError(
                f"unknown key '{key}' ({source}); valid keys: {', '.join(targets)}"
            )
        obj, name = targets[key]
        setattr(obj, name, _coerce(key, value, obj, name))


def preset_layers(model_cls, task_cls, task_name: str, preset: str) -> list[tuple[str, dict]]:
    mp = getattr(model_cls, "presets", {}) or {}
    tp = getattr(task_cls, "presets", {}) or {}
    return [
        (f"task preset '{preset}'", tp.get(preset, {})),
        (f"model preset '{preset}'", mp.get(preset, {})),
        (f"model preset '{task_name}:{preset}'", mp.get(f"{task_name}:{preset}", {})),
    ]


def preset_names(model_cls, task_cls, task_name: str) -> list[str]:
    """tiny/fast/paper, then any other name the task, the model, or the model for this task defines."""
    extra = set(getattr(task_cls, "presets", {}) or {})
    for k in getattr(model_cls, "presets", {}) or {}:
        task, _, name = k.rpartition(":")
        if task in ("", task_name):
            extra.add(name)
    return list(PRESETS) + sorted(extra - set(PRESETS))


def resolve(model_entry, task_entry, preset: str = DEFAULT_PRESET, overrides: dict | None = None) -> RunConfig:
    names = preset_names(model_entry.cls, task_entry.cls, task_entry.name)
    if preset not in names:
        raise SeqbenchError(f"unknown preset '{preset}' for {model_entry.name} on {task_entry.name}; "
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
    return cfg


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


def parse_set(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        if "=" not in item:
            raise SeqbenchError(f"--set expects key=value, got '{item}'")
        k, v = item.split("=", 1)
        out[k.strip()] = v
    return out
