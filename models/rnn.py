"""Baselines: torch's nn.LSTM and nn.GRU (cuDNN on a GPU), stacked, batch-first."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from seqbench.config import POSITIVE, PROBABILITY, choice, ints, setting
from seqbench.model import LIBRARY, RecurrentBackbone
from seqbench.registry import SERIES, register_model

# Hidden sizes per preset, shared by the baselines. `paper`: the HiPPO paper's baselines use 512.
# On every series task the width is the MPTT paper's backbone (its scripts: one layer, hidden_size 32).
SERIES_PRESETS = {f"{SERIES}:{p}": {"model.hidden": 32} for p in ("fast", "paper")}
BASELINE_PRESETS = {"tiny": {"model.hidden": 16}, "fast": {"model.hidden": 64}, "paper": {"model.hidden": 512},
                    "ptb-char:fast": {"model.hidden": 256}, **SERIES_PRESETS}
# On smnist the LSTM's fast preset adds chrono initialisation: with torch's default init it sat
# near chance for the first thousand updates here (the last ~100 pixels are mostly blank, so the
# label must survive that long); on pmnist torch's init learned faster than chrono.
# On copy and adding the fast preset matches enrnn's fast parameter count (about 9.7k in the
# backbone: hidden 44 on copy's 10 inputs, 47 on adding's 2), for the ENRNN paper's comparison.
LSTM_PRESETS = {
    **BASELINE_PRESETS,
    "smnist:fast": {"model.hidden": 64, "model.init": "chrono"},
    "copy:fast": {"model.hidden": 44},
    "adding:fast": {"model.hidden": 47},
}


@dataclass
class RNNParams:
    hidden: int = setting(128, POSITIVE)
    layers: int = setting(1, POSITIVE)
    dropout: float = setting(0.0, PROBABILITY, "between stacked layers")


class TorchRNN(RecurrentBackbone):
    """A stacked torch RNN module; subclasses name the module and its gate count."""

    Params = RNNParams
    presets = BASELINE_PRESETS
    implementation = LIBRARY  # torch's fused kernel for the whole sequence (oneDNN on CPU, cuDNN on a GPU)
    state_batch_dim = 1  # [layers, B, H]
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


@dataclass
class LSTMParams(RNNParams):
    # "torch": torch's default U(-1/sqrt(H), 1/sqrt(H)) for every weight and bias.
    # "chrono": Tallec & Ollivier, "Can recurrent neural networks warp time?" (ICLR 2018), eq. 16:
    # forget-gate bias log(U(1, T_max - 1)), input-gate bias its negative, so memory time scales
    # spread up to T_max steps from the start; the other weights keep torch's init.
    init: str = choice("torch", ("torch", "chrono"))
    chrono_tmax: int = setting(784, ints(2))


@register_model("lstm")
class LSTM(TorchRNN):
    paper = "Hochreiter & Schmidhuber, Long Short-Term Memory, Neural Computation 1997"
    paper_url = "https://doi.org/10.1162/neco.1997.9.8.1735"
    reference = "https://pytorch.org/docs/stable/generated/torch.nn.LSTM.html"  # the module it runs
    Params = LSTMParams
    presets = LSTM_PRESETS
    rnn_cls = nn.LSTM
    gates = 4
    # 3 sigmoid + 2 tanh + 3 products + 1 sum (c = f*c + i*g; h = o*tanh(c))
    elementwise_per_unit = 9

    def __init__(self, d_input: int, p: LSTMParams):
        super().__init__(d_input, p)
        if p.init == "chrono":
            h = p.hidden
            with torch.no_grad():  # torch's gate order: input, forget, cell, output
                for layer in range(p.layers):
                    b_ih, b_hh = getattr(self.rnn, f"bias_ih_l{layer}"), getattr(self.rnn, f"bias_hh_l{layer}")
                    forget = torch.log(torch.empty(h).uniform_(1, p.chrono_tmax - 1))
                    b_ih[h : 2 * h] = forget
                    b_ih[:h] = -forget
                    b_hh[: 2 * h] = 0.0


@register_model("gru")
class GRU(TorchRNN):
    paper = "Cho et al., Learning Phrase Representations using RNN Encoder-Decoder for Statistical Machine " \
            "Translation, EMNLP 2014"
    paper_url = "https://arxiv.org/abs/1406.1078"
    reference = "https://pytorch.org/docs/stable/generated/torch.nn.GRU.html"  # the module it runs
    rnn_cls = nn.GRU
    gates = 3
    # 2 sigmoid + 1 tanh + r*(W_hn h + b_hn) + n = tanh(.. + ..) add + (1-z)*n + z*h (3 ops)
    elementwise_per_unit = 8


@register_model("mptt", kinds=[SERIES])
class MPTTGRU(GRU):
    """The MPTT paper's network (Xu et al., SDM 2024; reference scripts/models.py): a one-layer GRU,
    hidden 32, a linear head, trained with ``--strategy mptt`` by default. MPTT itself is a training
    strategy (``seqbench.strategy.MPTT``) that works with every recurrent model here; this entry is
    the "MPTT-trained RNN" of the model list. Another strategy can be chosen with ``--strategy``."""

    paper = "Xu, Khandelwal, Renganathan & Kumar, Message Propagation Through Time, SDM 2024"
    paper_url = "https://arxiv.org/abs/2309.16882"
    reference = "https://github.com/XuShaoming/Message-Propagation-Through-Time"  # scripts/models.py
    presets = {p: {"model.hidden": 32, "strategy": "mptt"} for p in ("tiny", "fast", "paper")}
