"""Baselines: torch's nn.LSTM and nn.GRU (cuDNN on a GPU), stacked, batch-first."""
from __future__ import annotations

from dataclasses import dataclass

import torch.nn as nn

from seqbench.model import RecurrentBackbone
from seqbench.registry import register_model

# Hidden sizes per preset, shared by the baselines. `paper`: the HiPPO paper's baselines use 512.
BASELINE_PRESETS = {"tiny": {"model.hidden": 16}, "fast": {"model.hidden": 64}, "paper": {"model.hidden": 512}}


@dataclass
class RNNParams:
    hidden: int = 128
    layers: int = 1
    dropout: float = 0.0  # between stacked layers


class TorchRNN(RecurrentBackbone):
    """A stacked torch RNN module; subclasses name the module and its gate count."""

    Params = RNNParams
    presets = BASELINE_PRESETS
    rnn_cls: type
    gates: int
    elementwise_per_unit: int  # nonlinearities and elementwise ops per hidden unit per step

    def __init__(self, d_input: int, p: RNNParams):
        super().__init__()
        self.d_input, self.d_output, self.layers = d_input, p.hidden, p.layers
        self.rnn = self.rnn_cls(
            d_input, p.hidden, num_layers=p.layers, batch_first=True, dropout=p.dropout if p.layers > 1 else 0.0
        )

    def forward(self, x, state=None):
        return self.rnn(x, state)

    def flops_per_step(self) -> int:
        h, g = self.d_output, self.gates
        total = 0
        for layer in range(self.layers):
            d = self.d_input if layer == 0 else h
            # gate pre-activations: g*h rows over [x, h]; two bias vectors; then the cell's pointwise work
            total += 2 * g * h * (d + h) + 2 * g * h + self.elementwise_per_unit * h
        return total


@register_model("lstm")
class LSTM(TorchRNN):
    rnn_cls = nn.LSTM
    gates = 4
    # 3 sigmoid + 2 tanh + 3 products + 1 sum (c = f*c + i*g; h = o*tanh(c))
    elementwise_per_unit = 9


@register_model("gru")
class GRU(TorchRNN):
    rnn_cls = nn.GRU
    gates = 3
    # 2 sigmoid + 1 tanh + r*(W_hn h + b_hn) + n = tanh(.. + ..) add + (1-z)*n + z*h (3 ops)
    elementwise_per_unit = 8
