"""Training strategies: how mini-batches and recurrent state meet. A pluggable piece of the runner.

The runner asks the strategy for each batch's initial state and hands it each batch's final
state; everything else (loss, optimiser, evaluation loop) is the runner's one loop. Register a
new strategy with ``@register_strategy("name")``; select it with ``--set strategy=name``.

    start(train)              at the start of every training epoch / evaluation pass
    initial_state(batch)      the state the model starts this batch from (None = zeros)
    update(batch, state)      after the batch, with the model's final state
    end(train)                at the end of the epoch / pass
    state_dict(), load_state_dict(d)   whatever must survive a checkpoint (e.g. MPTT's memory)
"""
from __future__ import annotations

import torch

from .errors import SeqbenchError

_STRATEGIES: dict[str, type] = {}


def register_strategy(name: str):
    def deco(cls):
        cls.name = name
        _STRATEGIES[name] = cls
        return cls

    return deco


def get_strategy(name: str) -> type:
    if name not in _STRATEGIES:
        raise SeqbenchError(f"unknown strategy '{name}'; known: {', '.join(sorted(_STRATEGIES))}")
    return _STRATEGIES[name]


def detach_state(state):
    if state is None:
        return None
    if isinstance(state, torch.Tensor):
        return state.detach()
    return type(state)(detach_state(s) for s in state)


@register_strategy("minibatch")
class MiniBatch:
    """Independent mini-batches: every batch starts from a zero state."""

    def __init__(self, task=None, model=None):
        self.task, self.model = task, model

    def start(self, train: bool) -> None:
        pass

    def initial_state(self, batch):
        return None

    def update(self, batch, state) -> None:
        pass

    def end(self, train: bool) -> None:
        pass

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, d: dict) -> None:
        pass


@register_strategy("stateful")
class Stateful(MiniBatch):
    """Truncated BPTT over a contiguous stream: each batch starts from the previous batch's final
    state, detached; the state is reset at the start of every epoch and evaluation pass. Needs a
    task whose consecutive batches continue each other (e.g. batchified language modelling)."""

    def start(self, train: bool) -> None:
        self.state = None

    def initial_state(self, batch):
        return self.state

    def update(self, batch, state) -> None:
        self.state = detach_state(state)
