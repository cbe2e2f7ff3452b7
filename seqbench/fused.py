"""Fused recurrent cells: the whole time loop of ``hippo`` / ``hippo-legt``, ``enrnn`` / ``scornn`` and ``rhn``
in C++ (``seqbench/csrc/cells.cpp``), forward and backward, float32 and float64, on the CPU.

The extension is built by ``torch.utils.cpp_extension.load`` on first use (~30 s) into
``$SEQBENCH_KERNELS`` (default ``~/.cache/seqbench/kernels``), one folder per source, torch version and
CPU, and loaded from there afterwards. Where it cannot be built (no compiler) or cannot run (CUDA
tensors, autocast on, a dtype other than float32/float64) the cells run their eager Python loop, the
reference the fused loops are tested against, and the first such fallback of a process says why in one
line. ``SEQBENCH_FUSED=0`` turns the fused loops off.

Each autograd Function here takes the inputs' projections for all steps (one product before the loop,
as the eager cells; HiPPO adds a narrow input's part inside the loop) and the recurrent weights, runs the
loop in C++, and computes the weights' gradients after the backward loop as one matrix product each.
"""
from __future__ import annotations

import hashlib
import os
import platform
import shutil
import sys
from pathlib import Path

import torch
from torch.autograd.function import once_differentiable

from .data import warn_once

SOURCE = Path(__file__).with_name("csrc") / "cells.cpp"
_STATE: dict = {}


def kernel_dir() -> Path:
    """The build folder of this source on this torch and CPU (a different CPU may lack an instruction
    ``-march=native`` used): the CPU as records name it, its name and its family / model / stepping (a VM's
    "AMD EPYC" covers several chip generations)."""
    from .records import cpu_id, cpu_name

    cpu = f"{platform.machine()} {cpu_name()} {cpu_id()}"
    key = hashlib.sha256(SOURCE.read_bytes() + torch.__version__.encode() + cpu.encode()).hexdigest()[:16]
    root = Path(os.environ.get("SEQBENCH_KERNELS", "~/.cache/seqbench/kernels")).expanduser()
    return root / key


def _build():
    import logging
    # torch logs "No CUDA runtime is found" at import on a machine without a GPU: not ours to say.
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    from torch.utils import cpp_extension
    if shutil.which("ninja") is None:  # the ninja package's binary sits beside this interpreter (a venv not activated)
        os.environ["PATH"] = str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", "")
    d = kernel_dir()
    d.mkdir(parents=True, exist_ok=True)
    flags = ["-O3", "-fopenmp-simd"] + (["-march=native"] if platform.machine() in ("x86_64", "AMD64") else [])
    return cpp_extension.load("seqbench_cells", [str(SOURCE)], extra_cflags=flags, build_directory=str(d),
                              verbose=False)


def kernels():
    """The extension module, built on first use; None where it cannot be built (said once)."""
    if "module" not in _STATE:
        if os.environ.get("SEQBENCH_FUSED", "1") == "0":
            _STATE["module"], _STATE["why"] = None, "SEQBENCH_FUSED=0"
        else:
            try:
                _STATE["module"], _STATE["why"] = _build(), None
            except Exception as e:  # no compiler, no ninja, a compile error: the eager cells still run
                text = " ".join(str(e).split())
                _STATE["module"], _STATE["why"] = None, f"the C++ extension did not build ({text[:200]})"
    return _STATE["module"]


def _autocast_on() -> bool:
    try:
        return torch.is_autocast_enabled("cpu")
    except TypeError:  # torch without the device_type argument
        return torch.is_autocast_cpu_enabled()


def usable(*tensors: torch.Tensor) -> bool:
    """Whether the fused loop can run on these tensors; where not, says why once per process and reason.
    (The device is looked at first: a GPU run never builds the extension.)"""
    t = tensors[0]
    why = None
    if t.device.type != "cpu":
        why = f"the fused cells run on the CPU only ({t.device.type} runs them eager)"
    elif any(x.dtype not in (torch.float32, torch.float64) or x.dtype != t.dtype for x in tensors):
        why = f"the fused cells take float32 or float64 ({t.dtype} runs them eager)"
    elif _autocast_on():
        why = "autocast is on: the fused cells run eager under it"
    elif kernels() is None:
        why = _STATE["why"]
    if why is not None:
        warn_once(f"fused cells unavailable: {why}; running the eager loops")
        return False
    return True


def _c(x):
    return x.contiguous()


def _rows(x):
    """x [B, T, F] as the kernels read it: any strides with a contiguous last dim."""
    return x if x.stride(-1) == 1 else x.contiguous()


# ------------------------------------------------------------------------------------ HiPPO
class HiPPOLoop(torch.autograd.Function):
    """The HiPPO cell's loop (``models/hippo.py`` ``HiPPOLegS.forward``), batch first. The input's part of
    [hh, g]: ``xin`` = x [B, T, D] with ``wx`` [D, 2H] and ``bias`` [2H] (added in the loop), or, with ``wx``
    None, xin = the precomputed xhg [B, T, 2H]. ``memory`` = (mode, C, first chunk, lower, alpha, As, Bs, t0)
    says which memory step (0 dense tables, 1 the O(N) LegS step, 2 one time-invariant pair)."""

    @staticmethod
    def forward(ctx, xu, xin, wx, bias, h0, c0, w_uh, w_hgm, memory):
        save = any(ctx.needs_input_grad[:8])
        empty = xu.new_zeros(0)
        ys, hT, cT, cs, gates = kernels().hippo_forward(
            _rows(xu), _rows(xin), empty if wx is None else _c(wx), empty if bias is None else _c(bias), _c(h0),
            _c(c0), _c(w_uh), _c(w_hgm), *memory, save)
        ctx.memory, ctx.folded = memory, wx is not None
        if save:
            ctx.save_for_backward(ys, h0, cs, gates, w_uh, w_hgm, xin if wx is not None else None, wx)
        return ys, hT, cT

    @staticmethod
    @once_differentiable
    def backward(ctx, dys, dhT, dcT):
        ys, h0, cs, gates, w_uh, w_hgm, xin, wx = ctx.saved_tensors
        B, T, H = ys.shape
        dys = torch.zeros_like(ys) if dys is None else _rows(dys)
        dhT = torch.zeros_like(h0) if dhT is None else _c(dhT)
        dcT = cs.new_zeros(cs.shape[0], *cs.shape[2:]) if dcT is None else _c(dcT)
        dxu, dxhg, dh0, dc0, dw_uh, dwx, dbias = kernels().hippo_backward(
            dys, dhT, dcT, ys, _c(h0), gates, _c(w_uh.t()), _c(w_hgm.t()),
            _rows(xin) if ctx.folded else ys.new_zeros(0, 0, 0), ctx.folded, *ctx.memory)
        flat = dxhg.view(B * T, -1)
        dw_hgm = cs.view(B * T, -1).t() @ flat
        if not ctx.folded:
            return dxu, dxhg, None, None, dh0, dc0, dw_uh, dw_hgm, None
        dx = (flat @ wx.t()).view(B, T, -1) if ctx.needs_input_grad[1] else None
        return dxu, dx, dwx, dbias, dh0, dc0, dw_uh, dw_hgm, None


# Inputs this narrow (pMNIST: 1) enter [hh, g] inside the loop: no [B, T, 2H] tensor is made for them.
FOLD_INPUT = 8


def hippo_loop(xu, x, w_x, b_hg, h0, c0, w_uh, w_hgm, memory):
    """(ys [B, T, H], hT, cT) for xu [B, T, M] and x [B, T, D], whose part of [hh, g] is x w_x + b_hg
    (w_x [D, 2H])."""
    if 0 < x.shape[-1] <= FOLD_INPUT:
        return HiPPOLoop.apply(xu, x, w_x, b_hg, h0, c0, w_uh, w_hgm, memory)
    B, T, D = x.shape
    xhg = torch.addmm(b_hg, x.reshape(B * T, D), w_x).view(B, T, -1)
    return HiPPOLoop.apply(xu, xhg, None, None, h0, c0, w_uh, w_hgm, memory)


# ------------------------------------------------------------------------------------ ENRNN
class ENRNNLoop(torch.autograd.Function):
    """``models/enrnn.py`` ``ENRNN.scan``: h = modReLU(xu_t + W h, b), xu [B, T, n]."""

    @staticmethod
    def forward(ctx, xu, h0, W, bias):
        ys, zs = kernels().enrnn_forward(_rows(xu), _c(h0), _c(W.t()), _c(bias))
        if any(ctx.needs_input_grad):
            ctx.save_for_backward(ys, h0, zs, W, bias)
        return ys, ys[:, -1].clone()

    @staticmethod
    @once_differentiable
    def backward(ctx, dys, dhT):
        ys, h0, zs, W, bias = ctx.saved_tensors
        B, T, n = ys.shape
        dys = torch.zeros_like(ys) if dys is None else _rows(dys)
        dhT = torch.zeros_like(h0) if dhT is None else _c(dhT)
        dz, dh0, db = kernels().enrnn_backward(dys, dhT, zs, _c(W), _c(bias))
        hprev = torch.cat([h0.unsqueeze(1), ys[:, :-1]], 1).view(B * T, n)
        dW = dz.view(B * T, n).t() @ hprev
        return dz, dh0, dW, db


def enrnn_loop(xu, h0, W, bias):
    """(ys [B, T, n], hT) for xu [B, T, n]."""
    return ENRNNLoop.apply(xu, h0, W, bias)


# ------------------------------------------------------------------------------------ RHN
class RHNLoop(torch.autograd.Function):
    """``models/rhn.py`` ``RHN.forward``: ``depth`` highway micro-layers per step; xw [B, T, 2w],
    R [L, 2w, w], bias [L, 2w], mask [B, w] (or an empty tensor: no dropout)."""

    @staticmethod
    def forward(ctx, xw, s0, R, bias, mask):
        save = any(ctx.needs_input_grad[:4])
        ys, ss, hg = kernels().rhn_forward(_rows(xw), _c(s0), _c(R.transpose(1, 2)), _c(bias), _c(mask), save)
        if save:
            ctx.save_for_backward(ys, ss, hg, R, mask)
        return ys, ys[:, -1].clone()

    @staticmethod
    @once_differentiable
    def backward(ctx, dys, dsT):
        ys, ss, hg, R, mask = ctx.saved_tensors
        B, T, w = ys.shape
        L = R.shape[0]
        dys = torch.zeros_like(ys) if dys is None else _rows(dys)
        dsT = ys.new_zeros(B, w) if dsT is None else _c(dsT)
        dpre, dxw, ds0 = kernels().rhn_backward(dys, dsT, ss, hg, _c(R), _c(mask))
        read = (ss * mask if mask.numel() else ss).view(L, T * B, w)  # what R_l read: [L, T B, w]
        dR = torch.bmm(dpre.view(L, T * B, 2 * w).transpose(1, 2), read)  # sum over steps and rows
        dbias = dpre.sum((1, 2))
        return dxw, ds0, dR, dbias, None


def rhn_loop(xw, s0, R, bias, mask):
    """(ys [B, T, w], sT) for xw [B, T, 2w]."""
    return RHNLoop.apply(xw, s0, R, bias, mask)
