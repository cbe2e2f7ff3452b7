"""What a backbone declares.

A recurrent backbone serves the sequence-like input kinds with one interface::

    forward(x[B, T, D], state=None) -> (y[B, T, H], state)

and declares its analytic FLOPs per sample per time step (torch's FlopCounterMode counts 0 for
nn.LSTM's fused kernels). Convention throughout: one multiply-add = 2 FLOPs, one elementwise
operation or nonlinearity = 1 FLOP.

Optional hooks the runner calls when present. ``head`` is the task wrapper's layer that reads the
backbone's output (an nn.Linear; every wrapper names it ``head``), or None:
    structure(head) -> dict        structural sparsity report for the record
    describe_structure(report) -> dict   (static) what the report shows of it: ``summary`` (one
                                   line), ``units_kept``, ``strength`` ... (``seqbench.iss.describe``)
    regularization(head) -> Tensor extra loss term added to the task loss (e.g. group Lasso)
    after_step(head) -> None       called after every optimiser step (e.g. thresholding)
    pruned(head) -> (backbone, head) | None
                                   after training, on the best checkpoint: a physically smaller
                                   model that computes the same (ISS); the runner tests, measures
                                   and saves it in place of the trained one
                                   (``install_pruned``); a backbone whose pruning may drop input
                                   features says so (``prunes_inputs``) and sets ``kept_inputs``
                                   on the small one: the wrapper then needs ``keep_inputs(idx)``.
                                   Such a backbone keeps ``init_args`` = (d_input, Params): a
                                   pruned model's file is plain data (``pruned_payload``)
    optimizer_groups(lr) -> list   optimiser param groups for some of its parameters, each a dict
                                   with "params" and its own "lr" (the rest get the base lr)

``implementation`` (a class attribute, or a property where a setting picks it) says what runs the
recurrence, and every record and ``seqbench bench`` row carries it (``measure.implementation``), so no table
compares a library kernel with a Python loop unawares: ``LIBRARY`` (one torch kernel for the whole sequence:
nn.LSTM's oneDNN / cuDNN path; convolutions), ``EAGER`` (the step in Python, a few torch ops per time step),
``FUSED`` (a seqbench kernel for the whole loop).
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn as nn

from .config import choice
from .errors import SeqbenchError
from .registry import RECURRENT_KINDS


LIBRARY, EAGER, FUSED = "library kernel", "eager", "fused"
BY_SETTING = "set by model.impl"  # a class's declared implementation where its instances pick it (FusedLoop)


def declared_implementation(cls) -> str:
    """A model class's ``implementation`` without an instance: the attribute (undeclared: eager), or, where a
    property picks it from a setting, ``BY_SETTING`` (``measure.implementation`` reads a built model)."""
    impl = getattr(cls, "implementation", EAGER)
    return impl if isinstance(impl, str) else BY_SETTING


def impl_setting():
    """The ``impl`` setting of a cell with a fused loop (``seqbench/fused.py``): ``fused`` (default; the eager
    loop where the fused one cannot run, said once) or ``eager`` (the Python loop, the reference)."""
    return choice("fused", ("fused", "eager"), "fused: the C++ loop (seqbench/fused.py), eager where it "
                  "cannot run; eager: the Python loop")


class FusedLoop:
    """Mixin of the cells with a fused loop: ``implementation`` from ``impl`` and where the model is, and
    ``use_fused(*tensors)``, whether this forward takes the fused loop."""

    @property
    def implementation(self) -> str:
        return FUSED if self.use_fused() else EAGER

    def use_fused(self, *tensors) -> bool:
        if self.impl != "fused":
            return False
        from . import fused
        return fused.usable(*tensors, *self.parameters())


class RecurrentBackbone(nn.Module):
    kinds = RECURRENT_KINDS
    implementation: str = EAGER
    presets: dict = {}
    d_output: int
    # The batch dimension of every non-scalar tensor in the state (torch's nn.RNN family: 1, as
    # in [layers, B, H]). Strategies that keep per-sample states (MPTT, SSMB) rely on it.
    state_batch_dim: int = 0

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


def variational_mask(shape, p: float, like: torch.Tensor) -> torch.Tensor:
    """An inverted-dropout mask (0 or 1 / (1 - p)) of ``shape``, to be held over time steps:
    variational dropout (Gal & Ghahramani, "A Theoretically Grounded Application of Dropout in
    Recurrent Neural Networks", NeurIPS 2016), as the RHN reference samples its noise_i/h/o."""
    keep = 1.0 - p
    return torch.empty(shape, dtype=like.dtype, device=like.device).bernoulli_(keep) / keep


def install_pruned(model: nn.Module, backbone: nn.Module, head: nn.Module) -> None:
    """Put an ISS-pruned backbone and head (what ``pruned(head)`` returns) into ``model`` in place.
    A backbone that also dropped input features says which it still reads (``kept_inputs``): the
    wrapper keeps only those (``keep_inputs``: a tied RHN's component k is embedding column k)."""
    model.backbone, model.head = backbone, head
    kept = getattr(backbone, "kept_inputs", None)
    if kept is not None:
        model.keep_inputs(kept)


def prune_in_place(model: nn.Module) -> bool:
    """Replace ``model``'s backbone and head by the physically smaller ones its backbone's ``pruned(head)``
    returns (ISS); False when it has no such hook or nothing can be removed."""
    fn = getattr(model.backbone, "pruned", None)
    small = fn(getattr(model, "head", None)) if callable(fn) else None
    if small is None:
        return False
    install_pruned(model, *small)
    return True


def pruned_payload(model: nn.Module, epoch) -> dict:
    """What ``pruned.pt`` holds of a pruned model: its weights and the widths to rebuild it (plain data,
    loadable with ``torch.load(weights_only=True)``), not the pickled module."""
    import dataclasses

    d_input, p = model.backbone.init_args
    head = getattr(model, "head", None)
    kept = getattr(model.backbone, "kept_inputs", None)
    return {"state": model.state_dict(), "epoch": epoch,
            "backbone": {"d_input": int(d_input), "params": dataclasses.asdict(p)},
            "head": None if head is None else {"in": head.in_features, "out": head.out_features,
                                               "bias": head.bias is not None},
            "kept_inputs": None if kept is None else [int(i) for i in kept]}


def load_pruned(model: nn.Module, payload: dict) -> None:
    """``model`` (built from the run's config) made the pruned model ``pruned_payload`` describes."""
    bb = model.backbone
    d_input, params = payload["backbone"]["d_input"], type(bb.p)(**payload["backbone"]["params"])
    ref = next(model.parameters())
    new = type(bb)(d_input, params).to(ref)
    h = payload["head"]
    new_head = None if h is None else nn.Linear(h["in"], h["out"], bias=h["bias"]).to(ref)
    if payload["kept_inputs"] is not None:
        new.kept_inputs = torch.tensor(payload["kept_inputs"])
        if getattr(model, "tie", False):  # a tied head is the kept embedding columns (``keep_inputs`` checks)
            with torch.no_grad():
                new_head.weight.copy_(model.embedding.weight[:, new.kept_inputs.to(ref.device)])
    install_pruned(model, new, new_head)
    model.load_state_dict(payload["state"])


def fit_problems(model: nn.Module, state: dict) -> list[str]:
    """Why the state dict ``state`` does not fit ``model`` (shapes, missing and unexpected keys); empty when it does."""
    own = model.state_dict()
    return ([f"{k} is {list(state[k].shape)} there, {list(own[k].shape)} here" for k in own
             if k in state and state[k].shape != own[k].shape]
            + [f"{k} is missing there" for k in own if k not in state]
            + [f"{k} is not in this model" for k in state if k not in own])


def load_fitting(model: nn.Module, state: dict, what: str) -> None:
    """``state`` into ``model``; weights that do not fit are one line naming the first that does not."""
    problems = fit_problems(model, state)
    if problems:
        more = f"; {len(problems) - 1} more" if len(problems) > 1 else ""
        raise SeqbenchError(f"{what}: its weights do not fit this model ({problems[0]}{more})")
    model.load_state_dict(state)


def check_prunable(model: nn.Module, backbone: nn.Module, what: str) -> None:
    """Before training: a backbone whose pruning drops input features needs a wrapper that can."""
    if getattr(backbone, "prunes_inputs", False) and not callable(getattr(model, "keep_inputs", None)):
        raise SeqbenchError(f"{what}: the model's ISS pruning drops input features (model.tied_groups) but "
                            f"this task's wrapper cannot drop them (only a language model's embedding can)")


# ---- per-sample states: a state is a tensor or a (nested) tuple/list of tensors
def state_leaves(state) -> list:
    if isinstance(state, torch.Tensor):
        return [state]
    return [leaf for s in state for leaf in state_leaves(s)]


def state_rebuild(template, leaves: list):
    """The state with ``template``'s nesting and ``leaves`` (in ``state_leaves`` order)."""
    it = iter(leaves)

    def build(t):
        if isinstance(t, torch.Tensor):
            return next(it)
        return type(t)(build(s) for s in t)

    return build(template)


def batch_dims(backbone, state) -> list:
    """Per leaf: its batch dimension, or None for a scalar shared by the batch (HiPPO's clock)."""
    d = getattr(backbone, "state_batch_dim", 0)
    return [d if leaf.dim() > 0 else None for leaf in state_leaves(state)]
