# my_cells.py: the minimal gated unit (Zhou et al. 2016), a GRU with one gate, as a seqbench model
from dataclasses import dataclass

import torch
import torch.nn as nn

from seqbench.config import POSITIVE, setting
from seqbench.model import RecurrentBackbone
from seqbench.registry import register_model


@dataclass
class MGUParams:
    hidden: int = setting(64, POSITIVE, "state width")


@register_model("my-mgu")
class MGU(RecurrentBackbone):
    """Minimal gated unit: f = sigmoid(W_f x + U_f h), h' = (1 - f) h + f tanh(W_h x + U_h (f h))."""

    Params = MGUParams
    paper = "Zhou, Wu, Zhang & Zhou, Minimal Gated Unit for Recurrent Neural Networks, IJAC 2016"
    paper_url = "https://arxiv.org/abs/1603.09420"
    reference = "none: written from the paper's equations"

    def __init__(self, d_input, p):
        super().__init__()
        self.d_output = p.hidden
        self.w = nn.Linear(d_input, 2 * p.hidden)  # W_f and W_h, applied to every step at once
        self.u_f = nn.Linear(p.hidden, p.hidden, bias=False)
        self.u_h = nn.Linear(p.hidden, p.hidden, bias=False)

    def forward(self, x, h=None):  # x [B, T, D] -> (y [B, T, H], last state)
        h = x.new_zeros(x.shape[0], self.d_output) if h is None else h
        ys = []
        for wx in self.w(x).unbind(1):  # step by step (unbind: one gradient buffer, not one per step)
            wf, wh = wx.chunk(2, dim=-1)
            f = torch.sigmoid(wf + self.u_f(h))
            h = (1 - f) * h + f * torch.tanh(wh + self.u_h(f * h))
            ys.append(h)
        return torch.stack(ys, dim=1), h

    def flops_per_step(self):  # per sample: 4 products (2 FLOPs per multiply-add), 8 pointwise ops
        h, d = self.d_output, self.w.in_features
        return 2 * 2 * h * d + 2 * 2 * h * h + 8 * h
