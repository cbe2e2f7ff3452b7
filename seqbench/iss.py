"""Intrinsic Sparse Structures (Wen et al., "Learning Intrinsic Sparse Structures within Long
Short-Term Memory", ICLR 2018; reference code wenwei202/iss-rnns): the one implementation of the group
Lasso, the thresholding, the zero check, the structure counts and the physical pruning, shared by
every model with ISS groups (``iss-lstm``, ``rhn``, ``bidaf``).

A model says which weights make each of its ISS components (``Group``s of ``Slice``s), and nothing
else. From the slices alone: ``sq_norms``, ``group_lasso`` (paper eq. 2), ``zero_components``,
``kept_components``, ``threshold_`` (after every optimiser step), ``pruned_tensors`` (the weights of the
physically smaller model, which the model then builds) and ``load_pruned``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import torch
import torch.nn as nn

EPS = 1e-8


class Slice(NamedTuple):
    """The positions of one tensor that the components of one group own: component k owns
    ``offset + b * stride + k`` for b < ``blocks`` along ``dim`` (``stride`` 0 means ``size``).

    E.g. the 4 gate rows of unit k of a torch LSTM are ``Slice(weight, dim=0, blocks=4, stride=H)``, its
    recurrent column ``Slice(weight_hh, dim=1)``, the columns of a consumer that reads the layer's output
    at some place of its input ``Slice(consumer, dim=1, offset=place)``. A slice is ``penalised`` (a
    weight: in the group Lasso and in the zero check) or only carried (a bias: removed with its
    component, outside both, as the reference's groups, which take the cells' ``weights`` and never their
    ``biases``). A slice ``reads`` the component's output (a recurrent column, a consumer's column) or
    writes it (its gate rows): ``coordinate_`` tells them apart."""

    name: str  # the tensor's name in the model ("lstms.0.weight_ih_l0", "head.weight")
    tensor: torch.Tensor
    dim: int
    blocks: int
    size: int  # the group's number of components
    penalised: bool  # a weight (Lasso and zero check); False: carried with its component (a bias)
    offset: int = 0
    stride: int = 0
    reads: bool = False  # the weights that read the component's output (its outgoing weights)

    def index(self, ks) -> torch.Tensor:
        """Positions along ``dim`` owned by components ``ks`` (block-major: all of block 0, then 1, ...)."""
        dev = self.tensor.device
        ks = torch.as_tensor(ks, dtype=torch.long, device=dev).reshape(1, -1)
        offs = torch.arange(self.blocks, device=dev).reshape(-1, 1) * (self.stride or self.size) + self.offset
        return (offs + ks).reshape(-1)

    def _per_component(self, t: torch.Tensor, reduce, square: bool = False) -> torch.Tensor:
        t = t.index_select(self.dim, self.index(torch.arange(self.size)))  # only this slice's entries
        t = t.pow(2) if square else t
        other = [d for d in range(t.dim()) if d != self.dim]
        t = reduce(t, dim=other) if other else t  # [blocks * size]
        return reduce(t.reshape(self.blocks, self.size), dim=0)

    def sum_sq(self) -> torch.Tensor:
        """Every component's sum of squares over its entries of this tensor: [size]."""
        return self._per_component(self.tensor, torch.sum, square=True)

    def max_abs(self) -> torch.Tensor:
        """Every component's largest |entry| in this tensor: [size]."""
        return self._per_component(self.tensor.abs(), torch.amax)


@dataclass
class Group:
    """``size`` components of the same kind (e.g. the hidden units of one LSTM layer, or of one direction
    of a biLSTM); component k is every entry its ``slices`` name. ``complete``: the slices include every
    weight that reads the components' output; only then can an all-zero component be removed without
    changing the output (an incomplete group, e.g. an LSTM stack asked without the head that reads its
    last layer, reports every component kept)."""

    name: str  # "lstms.0", "g1.fw": how the structure report names it
    size: int
    slices: list = field(default_factory=list)
    complete: bool = True  # every reader of the components' output is among the slices

    def add(self, name: str, tensor: torch.Tensor, dim: int, blocks: int = 1, penalised: bool = True,
            offset: int = 0, stride: int = 0, reads: bool = False) -> "Group":
        if tensor is not None:
            self.slices.append(Slice(name, tensor, dim, blocks, self.size, penalised, offset, stride, reads))
        return self


def lstm_unit_slices(group: Group, prefix: str, lstm: nn.LSTM) -> Group:
    """Unit k of a one-layer, one-direction torch LSTM (gates i, f, g, o by rows): rows k, H+k,
    2H+k, 3H+k of weight_ih and weight_hh, column k of weight_hh; the biases' rows are carried."""
    H = lstm.hidden_size
    assert group.size == H and lstm.num_layers == 1 and not lstm.bidirectional
    group.add(prefix + "weight_ih_l0", lstm.weight_ih_l0, 0, 4, stride=H)
    group.add(prefix + "weight_hh_l0", lstm.weight_hh_l0, 0, 4, stride=H)
    group.add(prefix + "weight_hh_l0", lstm.weight_hh_l0, 1, reads=True)
    if lstm.bias:
        group.add(prefix + "bias_ih_l0", lstm.bias_ih_l0, 0, 4, penalised=False, stride=H)
        group.add(prefix + "bias_hh_l0", lstm.bias_hh_l0, 0, 4, penalised=False, stride=H)
    return group


def sq_norms(groups: list[Group]) -> list[torch.Tensor]:
    """Per group, [size]: the squared L2 norm of every component's penalised entries. An entry owned by two
    slices of one component (an LSTM's self-connection weight_hh[g*H + k, k], in its gate rows and in its
    recurrent column) enters it twice, as in the reference (its sums over the gate columns and over the
    h-rows of TF's kernel both include it)."""
    out = []
    for g in groups:
        parts = [s.sum_sq() for s in g.slices if s.penalised]
        out.append(sum(parts) if parts else torch.zeros(g.size))
    return out


def group_lasso(groups: list[Group], lam: float) -> torch.Tensor:
    """lam * sum over groups and components of sqrt(||w||^2 + EPS) (paper eq. 2); EPS = 1e-8 inside the
    square root as in the reference's ``add_structure_grouplasso``: a finite, zero gradient at an
    all-zero group."""
    return lam * sum(torch.sqrt(sq + EPS).sum() for sq in sq_norms(groups))


@torch.no_grad()
def zero_components(groups: list[Group]) -> list[torch.Tensor]:
    """Per group, [size] bool: every penalised entry of the component is exactly zero (max |w| == 0,
    which never underflows; never true in an incomplete group: a reader outside its slices may still
    see the unit)."""
    out = []
    for g in groups:
        mx = [s.max_abs() for s in g.slices if s.penalised]
        z = torch.stack(mx).amax(0) == 0 if mx else torch.zeros(g.size, dtype=torch.bool)
        out.append(z if g.complete else torch.zeros_like(z))
    return out


@torch.no_grad()
def coordinate_(groups: list[Group]) -> list[int]:
    """The reference's structure coordinator (wenwei202/iss-rnns ``bidaf/basic/model.py``
    ``_build_structure_coordinator``, run before the test in ``main.py``): a component whose outgoing
    weights (the slices that ``read`` its output) are all zero is read by nobody, so its incoming weights
    are zeroed too (in place) and the zero check then removes it; the model's output does not change.
    Per group, the number of components this zeroed. A group without outgoing slices, or incomplete, is
    left alone."""
    out = []
    for g in groups:
        reads = [s.max_abs() for s in g.slices if s.reads and s.penalised]
        if not reads or not g.complete:
            out.append(0)
            continue
        silent = torch.stack(reads).amax(0) == 0
        ks = torch.nonzero(silent).reshape(-1)
        writes = [s for s in g.slices if not s.reads and s.penalised]
        before = zero_components([g])[0]
        for s in writes:
            if ks.numel():
                s.tensor.index_fill_(s.dim, s.index(ks), 0.0)
        out.append(int((zero_components([g])[0] & ~before).sum()))
    return out


def kept_components(groups: list[Group]) -> list[torch.Tensor]:
    """Per group, the component indices a pruned model keeps. A group with nothing left keeps its
    lowest component (a zero-width layer cannot be built; that unit's output meets only zeros)."""
    kept = []
    for z in zero_components(groups):
        k = torch.nonzero(~z).reshape(-1)
        kept.append(k if k.numel() else torch.zeros(1, dtype=torch.long, device=z.device))
    return kept


@torch.no_grad()
def threshold_(tensors, thr: float) -> None:
    """Zero every entry with |w| < thr (the reference's zeroing after every training step)."""
    if thr <= 0:
        return
    for t in tensors:
        t.masked_fill_(t.abs() < thr, 0.0)


@torch.no_grad()
def pruned_tensors(groups: list[Group], kept: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    """{name: tensor} for every tensor a slice names, without the positions of the components not in
    ``kept`` along every dimension that some slice owns (positions no slice owns stay)."""
    masks: dict[tuple[str, int], torch.Tensor] = {}
    tensors: dict[str, torch.Tensor] = {}
    for g, k in zip(groups, kept):
        removed = torch.ones(g.size, dtype=torch.bool)
        removed[k.cpu()] = False
        gone = torch.nonzero(removed).reshape(-1)
        for s in g.slices:
            tensors[s.name] = s.tensor
            m = masks.setdefault((s.name, s.dim), torch.ones(s.tensor.shape[s.dim], dtype=torch.bool,
                                                             device=s.tensor.device))
            if gone.numel():
                m[s.index(gone)] = False
    out = {}
    for name, t in tensors.items():
        for (n, dim), m in masks.items():
            if n == name:
                t = t.index_select(dim, torch.nonzero(m).reshape(-1))
        out[name] = t.detach().clone()
    return out


@torch.no_grad()
def load_pruned(new: nn.Module, named: dict[str, torch.Tensor], pruned: dict[str, torch.Tensor],
                prefix: str = "") -> None:
    """Copy into ``new``'s parameters (named ``prefix + name``) the pruned tensors, or the old ones
    (``named``) where no slice touched them; a shape that does not fit is a bug in the model's groups."""
    for n, t in new.named_parameters():
        src = pruned.get(prefix + n, named.get(prefix + n))
        if src is None or src.shape != t.shape:
            raise ValueError(f"pruned model: {prefix + n} is {tuple(t.shape)}, the pruned weights give "
                             f"{None if src is None else tuple(src.shape)}")
        t.copy_(src)


def numel_after(groups: list[Group], kept: list[torch.Tensor], named: dict[str, torch.Tensor]) -> int:
    """The number of entries of the tensors ``named`` once pruned to ``kept`` (a shared tensor counted once)."""
    cut = {n: t.numel() for n, t in pruned_tensors(groups, kept).items()}
    seen, total = set(), 0
    for n, t in named.items():
        if id(t) in seen:
            continue
        seen.add(id(t))
        total += cut.get(n, t.numel())
    return total


def report(groups: list[Group], lam: float, threshold: float, pruned_from=None) -> dict:
    """The structure report's common part: per group its name, size, kept and zero counts."""
    zero = zero_components(groups)
    kept = kept_components(groups)
    return {"method": "iss", "lam": lam, "threshold": threshold,
            "groups": [g.name for g in groups],
            "sizes": [g.size for g in groups],
            "sizes_pruned": [int(k.numel()) for k in kept],
            "zero_groups": [int(z.sum()) for z in zero],
            "pruned_from": pruned_from}


def describe(report: dict) -> dict:
    """What the suite's report shows of an ISS structure report (any ISS model's
    ``describe_structure``): the widths trained and kept, the units kept in all, the Lasso strength."""
    before = report.get("pruned_from") or report.get("sizes")
    kept = report.get("sizes_pruned") or report.get("sizes")
    return {"summary": f"ISS widths {','.join(map(str, before))} -> {','.join(map(str, kept))}",
            "method_label": "ISS", "units_kept": sum(kept), "units_label": "hidden units kept (all layers)",
            "strength": report.get("lam", 0.0), "strength_symbol": "λ"}

