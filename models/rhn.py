"""RHN: Recurrent Highway Network (Zilly, Srivastava, Koutník & Schmidhuber, "Recurrent Highway
Networks", ICML 2017), with the coupled carry gate, and ISS on it (Wen et al., ICLR 2018, section
4.2: RHN width 830 -> ~517 at the same perplexity; reference code wenwei202/iss-rnns ``rhns/``).
Registered: ``rhn``. Group Lasso, thresholding, the zero check and the pruning are the shared ISS
machinery (``seqbench/iss.py``) run on ``iss_groups``; the lam scaling is ``iss-lstm``'s
(``models/iss.py``).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn as nn

from seqbench import iss
from seqbench import fused
from seqbench.model import FusedLoop, RecurrentBackbone, impl_setting, variational_mask
from seqbench.config import FINITE, NONNEGATIVE_REAL, POSITIVE, PROBABILITY, setting
from seqbench.errors import SeqbenchError
from seqbench.registry import register_model

EPS = iss.EPS


@dataclass
class RHNParams:
    hidden: int = setting(128, POSITIVE, "width w")
    depth: int = setting(3, POSITIVE, "micro-layers per time step (the paper's PTB model: 10)")
    init_range: float = setting(0.0, NONNEGATIVE_REAL, "0: U(-1/sqrt(w), 1/sqrt(w)); r > 0: U(-r, r)")
    gate_bias: float = setting(-2.0, FINITE, "initial transform-gate bias (negative: carry)")
    lam: float = setting(0.0, NONNEGATIVE_REAL, "group Lasso strength per token of a mean loss (0: plain RHN)")
    threshold: float = setting(0.0, NONNEGATIVE_REAL, "after every step, zero weights with |w| < threshold")
    prune: bool = True
    # variational dropout on the state every R_l reads (one mask per row and chunk)
    drop_h: float = setting(0.0, PROBABILITY)
    tied_groups: bool = False  # ISS group k also holds W's column k (a tied embedding; needs d_input == hidden)
    impl: str = impl_setting()


@register_model("rhn")
class RHN(FusedLoop, RecurrentBackbone):
    """A Recurrent Highway Network with coupled carry (c = 1 - t): ``depth`` highway micro-layers per
    time step on a state of width w; optional ISS group Lasso over its units and pruning to the rest.

    One time step, eq. 6-8 of the paper:
        s_0 = s_{t-1}
        h_l = tanh(W_H x_t [l = 1] + R_H,l s_{l-1} + b_H,l)
        g_l = sigmoid(W_T x_t [l = 1] + R_T,l s_{l-1} + b_T,l)
        s_l = h_l * g_l + s_{l-1} * (1 - g_l),          s_t = y_t = s_depth
    The input enters the first micro-layer only. W = [W_H; W_T] is one [2w, d] matrix and each
    R_l = [R_H,l; R_T,l] one [2w, w] matrix (rows k and w + k are unit k's h and gate). The transform
    gates' biases start at ``gate_bias`` (negative: start by carrying, the paper's -2 .. -4)."""

    paper = "Zilly, Srivastava, Koutník & Schmidhuber, Recurrent Highway Networks, ICML 2017"
    paper_url = "https://arxiv.org/abs/1607.03474"
    reference = "https://github.com/wenwei202/iss-rnns"  # rhns/: the ISS paper's RHN (section 4.2)
    Params = RHNParams
    describe_structure = staticmethod(iss.describe)
    # The paper's PTB RHN (depth 10, width 830, tied embeddings; Zilly et al. Table 3, 65.4 test ppl).
    # PTB step sizes follow the ISS code's RHN (wenwei202/iss-rnns rhns/rhn_train.py, ptb_sota):
    # SGD lr 0.2, global-norm clip 10 on a loss summed over 35 steps = lr 7, clip 10/35 on our
    # per-token mean (see tasks/ptb.py ZAREMBA); init U(-0.04, 0.04), transform-gate bias -2, tied.
    presets = {
        "tiny": {"model.hidden": 16, "model.depth": 2},
        "fast": {"model.hidden": 64, "model.depth": 3},
        "paper": {"model.hidden": 830, "model.depth": 10},
        # ptb_sota: 1 layer, depth 10, width 830, tied, variational dropout x 0.25 (words),
        # i 0.75, h 0.25, o 0.75, weight decay 1e-7 (on the summed loss: / 35 here), lr constant
        # for 20 epochs then / 1.02 every epoch ('quick_start'), 500 epochs, test at batch 1.
        "ptb:paper": {"strategy": "stateful", "optimizer": "sgd", "model.hidden": 830, "model.depth": 10,
                      "model.init_range": 0.04, "model.gate_bias": -2.0, "model.drop_h": 0.25,
                      "model.tied_groups": True,
                      "task.emb": 830, "task.tie": True, "task.init_range": 0.04, "task.bptt": 35,
                      "task.dropout": 0.75, "task.variational": True, "task.word_dropout": 0.25,
                      "batch_size": 20, "eval_batch_size": 1, "lr": 0.2 * 35, "grad_clip": 10.0 / 35,
                      "weight_decay": 1e-7 / 35, "schedule": "decay_after", "lr_hold": 20, "lr_gamma": 1 / 1.02,
                      "epochs": 500},
        # Minutes per epoch on one CPU core: width 256, depth 5, tied, no dropout, the reference's
        # step sizes at bptt 35, the task's fast schedule (6 epochs, lr halves after epoch 4).
        # ISS on it: --set model.lam=0.000143 --set model.threshold=0.0004 (the reference's
        # structure_wd 0.005 / 35 and zero_threshold).
        "ptb:fast": {"model.hidden": 256, "model.depth": 5, "model.init_range": 0.04, "model.gate_bias": -2.0,
                     "model.tied_groups": True,
                     "task.emb": 256, "task.tie": True, "task.init_range": 0.04, "task.bptt": 35,
                     "lr": 0.2 * 35, "grad_clip": 10.0 / 35},
    }
    # ptb_iss_sota with structure_wd 0.005 (the reference's README command): ISS from scratch, every
    # dropout x 0.6, 150 epochs, zero threshold 4e-4; lam = 0.005 / 35 on our per-token mean loss.
    # (A name the task does not define: this layer alone gives every training setting.)
    presets["ptb:paper-iss"] = {**presets["ptb:paper"], "model.drop_h": 0.25 * 0.6, "task.dropout": 0.75 * 0.6,
                                "task.word_dropout": 0.25 * 0.6, "epochs": 150,
                                "model.lam": 0.005 / 35, "model.threshold": 4e-4}

    def __init__(self, d_input: int, p: RHNParams):
        super().__init__()
        if p.tied_groups and d_input != p.hidden:
            raise SeqbenchError(f"rhn model.tied_groups needs the input width ({d_input}) to equal model.hidden "
                                f"({p.hidden}): a tied embedding of the state's width")
        self.p, self.d_input, self.w, self.d_output = p, d_input, p.hidden, p.hidden
        self.impl = p.impl
        self.init_args = (d_input, p)
        w = p.hidden
        self.W = nn.Linear(d_input, 2 * w, bias=False)
        self.R = nn.ModuleList(nn.Linear(w, 2 * w) for _ in range(p.depth))
        with torch.no_grad():
            r = p.init_range if p.init_range > 0 else w ** -0.5
            for prm in self.parameters():
                prm.uniform_(-r, r)
            for lin in self.R:
                lin.bias[:w].zero_()
                lin.bias[w:].fill_(p.gate_bias)

    def forward(self, x, state=None):
        B, T, _ = x.shape
        w = self.w
        s = state if state is not None else x.new_zeros(B, w)
        xw = self.W(x)  # the input's part of the first micro-layer, all steps at once
        # Variational dropout on what R reads (the reference's noise_h: one mask for every
        # micro-layer and step of the chunk); the highway update itself uses the undropped s.
        m = variational_mask((B, w), self.p.drop_h, x) if self.training and self.p.drop_h > 0 else None
        if T > 0 and self.use_fused(x, s):  # the same loop in C++ (seqbench/fused.py)
            R = torch.stack([lin.weight for lin in self.R])
            bias = torch.stack([lin.bias for lin in self.R])
            return fused.rhn_loop(xw, s, R, bias, m if m is not None else x.new_zeros(0))
        xw = xw.unbind(1)
        ys = []
        for t in range(T):
            for layer, lin in enumerate(self.R):
                pre = lin(s if m is None else s * m)
                pre = pre + xw[t] if layer == 0 else pre
                h, g = torch.tanh(pre[:, :w]), torch.sigmoid(pre[:, w:])
                s = s + g * (h - s)  # = h g + s (1 - g)
            ys.append(s)
        return (torch.stack(ys, 1) if ys else x.new_zeros(B, 0, w)), s

    def flops_per_step(self) -> int:
        w, d, L = self.w, self.d_input, self.p.depth
        return 2 * 2 * w * d + L * (2 * 2 * w * w + 2 * w + 2 * w + 3 * w)  # W x; R s + b; tanh, sigmoid; s + g (h - s)

    # ------------------------------------------------------------------ ISS
    def iss_groups(self, head=None) -> list[iss.Group]:
        """The one group of the w units; incomplete without the head. Component k (the reference's groups,
        iss-rnns rhns/groups_hidden830.json, in PyTorch's [out, in] layout):
            rows k and w + k of W and of every R_l (what writes unit k in every micro-layer),
            column k of every R_l (what reads s[k]: the next micro-layer, or the next step's first),
            column k of the head (what reads y[k]),
            with ``tied_groups`` (a tied embedding, ``task.tie``, of width w): also column k of W, the
            weights that read input feature k. The head's column k is then the embedding's column k, so
            component k is embedding dimension k as much as state unit k; without W's column k in the
            group the input path keeps feeding gradient into that embedding column and the group never
            reaches zero.
        Biases travel with their unit but are not penalised (as ``iss-lstm``)."""
        w = self.w
        g = iss.Group("rhn", w, complete=head is not None)
        g.add("W.weight", self.W.weight, 0, 2, stride=w)
        if self.p.tied_groups:
            g.add("W.weight", self.W.weight, 1)  # the reference's first-layer input row k
        for i, lin in enumerate(self.R):
            g.add(f"R.{i}.weight", lin.weight, 0, 2, stride=w)
            g.add(f"R.{i}.weight", lin.weight, 1, reads=True)
            g.add(f"R.{i}.bias", lin.bias, 0, 2, penalised=False, stride=w)
        if head is not None:
            g.add("head.weight", head.weight, 1, reads=True)
        return [g]

    def group_sq_norms(self, head=None) -> torch.Tensor:
        """[w]: every unit's squared group norm (``iss_groups``)."""
        return iss.sq_norms(self.iss_groups(head))[0]

    def coordinate(self, head=None) -> list[int]:
        """The reference's structure coordinator before the test (``iss.coordinate_``): per group, the units
        read by nobody whose incoming weights it zeroed."""
        return iss.coordinate_(self.iss_groups(head))

    def regularization(self, head=None) -> torch.Tensor:
        if self.p.lam == 0:
            return self.W.weight.new_zeros(())
        return iss.group_lasso(self.iss_groups(head), self.p.lam)

    def after_step(self, head=None) -> None:
        iss.threshold_(list(self.parameters()) + (list(head.parameters()) if head is not None else []),
                       self.p.threshold)

    def kept(self, head=None) -> torch.Tensor:
        """Units whose group is not all zero (without a head: all of them)."""
        return iss.kept_components(self.iss_groups(head))[0]

    def structure(self, head=None) -> dict:
        return {**iss.report(self.iss_groups(head), self.p.lam, self.p.threshold, getattr(self, "pruned_from", None)),
                "depth": self.p.depth}

    @property
    def prunes_inputs(self) -> bool:
        """Whether ``pruned`` may drop input features (the wrapper must then have ``keep_inputs``)."""
        return self.p.tied_groups and self.p.prune

    @torch.no_grad()
    def pruned(self, head):
        """A narrower RHN and head without the all-zero units, or None. A unit whose weights are all
        zero still has biases: h = tanh(b_H), g = sigmoid(b_T) make its state drift to tanh(b_H) and
        nobody reads it, so dropping it changes no output. Without ``tied_groups`` W keeps its input
        width. With it, W's columns of the removed units go too (zero: they are in the group) and the
        small RHN's ``kept_inputs`` names the input features it still reads: the wrapper drops the
        others (``LanguageModel.keep_inputs``: the embedding keeps those columns and the head is tied
        to it again), so component k leaves the embedding too, as the paper counts it (830 -> 517:
        23M -> 11.1M params)."""
        if not self.p.prune or head is None:
            return None
        k = self.kept(head)
        if k.numel() == self.w:
            return None
        n = int(k.numel())
        groups = self.iss_groups(head)
        cut = iss.pruned_tensors(groups, [k])
        named = {**dict(self.named_parameters()), **{f"head.{q}": t for q, t in head.named_parameters()}}
        d_in = n if self.p.tied_groups else self.d_input
        new = type(self)(d_in, dataclasses.replace(self.p, hidden=n)).to(self.W.weight)
        new_head = nn.Linear(n, head.out_features, bias=head.bias is not None).to(head.weight)
        iss.load_pruned(new, named, cut)
        iss.load_pruned(new_head, named, cut, prefix="head.")
        if self.p.tied_groups:
            new.kept_inputs = k
        new.pruned_from = list(getattr(self, "pruned_from", None) or [self.w])
        new.train(self.training)
        return new, new_head
