"""What a backbone declares.

A recurrent backbone serves the sequence-like input kinds with one interface::

    forward(x[B, T, D], state=None) -> (y[B, T, H], state)

and declares its analytic FLOPs per sample per time step (torch's FlopCounterMode counts 0 for
nn.LSTM's fused kernels). Convention throughout: one multiply-add = 2 FLOPs, one elementwise
operation or nonlinearity = 1 FLOP.

Optional hooks the runner calls when present:
    structure() -> dict            structural sparsity report for the record
    regularization() -> Tensor     extra loss term added to the task loss (e.g. group Lasso)
    after_step() -> None           called after every optimiser step (e.g. thresholding)
    optimizer_groups(lr) -> list   optimiser param groups for some of its parameters, each a dict
                                   with "params" and its own "lr" (the rest get the base lr)
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn as nn

from .registry import RECURRENT_KINDS


class RecurrentBackbone(nn.Module):
    kinds = RECURRENT_KINDS
    presets: dict = {}
    d_output: int

    def flops_per_step(self) -> int:  # per sample, per time step
        raise NotImplementedError


def no_autocast(device_type: str):
    """A context that turns autocast off where it is on: recurrences that low precision would
    destroy (HiPPO's memory, ENRNN's Cayley and eigen maths) run in the parameters' dtype."""
    try:
        on = torch.is_autocast_enabled(device_type)
    except TypeError:  # torch without the device_type argument
        on = torch.is_autocast_enabled()
    return torch.autocast(device_type, enabled=False) if on else contextlib.nullcontext()
