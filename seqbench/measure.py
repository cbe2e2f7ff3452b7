"""Measurements recorded with every run: parameters, sparsity, structure, FLOPs, latency, memory.

FLOPs: one multiply-add = 2 FLOPs (pytorch/benchmark's convention). A recurrent wrapper gives its
analytic count (``flops_per_sample``: torch's counter sees 0 in fused LSTM kernels); a convolutional
one counts one forward pass with ``count_flops``.
"""
from __future__ import annotations

import contextlib
import inspect
import logging
import resource
import statistics
import sys
import time

import torch


def _benchmark():
    """torch.utils.benchmark, imported when first timed: importing it loads torch's C++-extension
    helper, which logs "No CUDA runtime is found" on a CUDA build without a GPU at every command."""
    log = logging.getLogger("torch.utils.cpp_extension")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        from torch.utils import benchmark
    finally:
        log.setLevel(level)
    return benchmark


def params(model: torch.nn.Module) -> dict:
    total = sum(p.numel() for p in model.parameters())
    nonzero = sum(int(torch.count_nonzero(p)) for p in model.parameters())
    return {"total": total, "nonzero": nonzero}


def sparsity(model: torch.nn.Module) -> dict:
    """Fraction of exact zeros per parameter tensor and overall."""
    per, zeros, total = {}, 0, 0
    for name, p in model.named_parameters():
        z = p.numel() - int(torch.count_nonzero(p))
        per[name] = z / max(p.numel(), 1)
        zeros, total = zeros + z, total + p.numel()
    return {"overall": zeros / max(total, 1), "per_tensor": per}


def structure(model: torch.nn.Module):
    """The backbone's own structural report, when it has one (it sees the head that reads its output:
    ISS's groups reach into it), with what the backbone says of it (``describe_structure``: the
    summary, units kept, ... that the report shows without knowing the model)."""
    backbone = getattr(model, "backbone", model)
    fn = getattr(backbone, "structure", None)
    if not callable(fn):
        return None
    rep = fn(getattr(model, "head", None))
    describe = getattr(backbone, "describe_structure", None)
    if isinstance(rep, dict) and callable(describe):
        rep.update(describe(rep))
    return rep


def flops_per_sample(model: torch.nn.Module) -> int:
    return int(model.flops_per_sample())


def _flop_formulas() -> dict:
    """torch's FLOP formulas plus what our convention counts besides: a bias add (1 per output), a
    batch norm (scale and shift: 2 per element)."""
    from torch.utils import flop_counter as fc

    aten = torch.ops.aten

    def conv(x, w, bias, stride, padding, dilation, transposed, *args, out_shape=None, **kw):
        flops = fc.conv_flop_count(x, w, out_shape, transposed=transposed)
        return flops + (_numel(out_shape) if bias is not None else 0)

    def addmm(bias, a, b, *args, out_shape=None, **kw):
        return 2 * a[0] * a[1] * b[1] + _numel(out_shape)

    def batch_norm(x, *args, out_shape=None, **kw):
        return 2 * _numel(x)

    return {aten.convolution: conv, aten._convolution: conv, aten.addmm: addmm,
            aten.native_batch_norm: batch_norm, aten._native_batch_norm_legit_no_training: batch_norm}


def _numel(shape) -> int:
    if isinstance(shape, (tuple, list)) and shape and not isinstance(shape[0], int):
        shape = shape[0]  # an op with several outputs (batch norm): the first
    n = 1
    for d in shape:
        n *= int(d)
    return n


def count_flops(model: torch.nn.Module, x: torch.Tensor) -> int:
    """FLOPs of ``model(x)`` per sample, in eval mode: ``torch.utils.flop_counter.FlopCounterMode``
    with the formulas above for convolutions, matrix products, bias adds and batch norms; a module
    with its own ``flops()`` (a recurrent cell: the DIA unit, the scene RNNs) counts analytically,
    per call, and what the counter saw inside it is left out. Elementwise activations and residual
    adds are not counted (under 2% of a CIFAR ResNet)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False, custom_mapping=_flop_formulas())
    own, inside, seen = [0], [0], [0]  # analytic FLOPs; depth inside own-count modules; counter total on entry

    def pre(m, args):
        if inside[0] == 0:
            takes_input = bool(inspect.signature(m.flops).parameters)  # a 2-D RNN: its map's size
            own[0] += int(m.flops(*args) if takes_input else m.flops()) * args[0].shape[0]
            seen[0] = counter.get_total_flops()
        inside[0] += 1

    def post(m, args, out):
        inside[0] -= 1
        if inside[0] == 0:
            own[0] -= counter.get_total_flops() - seen[0]

    hooks = []
    for m in model.modules():
        if callable(getattr(m, "flops", None)):
            hooks += [m.register_forward_pre_hook(pre), m.register_forward_hook(post)]
    was = model.training
    model.eval()
    try:
        with torch.no_grad(), counter:
            model(x)
    finally:
        model.train(was)
        for h in hooks:
            h.remove()
    return (counter.get_total_flops() + own[0]) // x.shape[0]


def of_run(model, task, x, device, precision, latency_time: float, throughput: float | None,
           pruning: dict | None) -> dict:
    """A finished run's measurements: size, sparsity, structure, FLOPs, latency at the task's
    ``latency_batches`` on inputs like ``x`` (a test batch), training throughput, peak memory."""
    lat = {}
    for bs in task.latency_batches:
        lat[f"b{bs}"] = latency(model, task.example_input(x, bs).to(device), latency_time, precision)
    return {
        "params": params(model),
        "sparsity": sparsity(model),
        "structure": structure(model),
        "flops_per_sample": flops_per_sample(model),
        "latency": lat,
        "implementation": implementation(model),
        "torch_threads": torch.get_num_threads(),
        "train_throughput": throughput,
        "memory": peak_memory(device),
        "pruning": pruning,  # a pruned model's size before pruning
    }


def implementation(model: torch.nn.Module) -> str:
    """What runs the model's recurrence (``seqbench.model``: library kernel, eager, fused): the first module
    of the wrapped model that declares it (the backbone); undeclared: eager."""
    from .model import EAGER

    for m in model.modules():
        if hasattr(type(m), "implementation"):
            return m.implementation
    return EAGER


def latency(model: torch.nn.Module, x, min_run_time: float, precision=contextlib.nullcontext) -> dict:
    """Forward-pass latency of ``model(x)`` in eval mode without autograd (torch.utils.benchmark:
    blocked autorange, CUDA synchronised by the Timer), under the run's ``precision`` context
    (its autocast, if any). Milliseconds per call."""
    was_training = model.training
    model.eval()

    def call():
        with torch.no_grad(), precision():
            model(x)

    call()  # warm-up (lazy init, cuDNN plans)
    timer = _benchmark().Timer(stmt="call()", globals={"call": call}, num_threads=torch.get_num_threads())
    m = timer.blocked_autorange(min_run_time=min_run_time)
    model.train(was_training)
    return {
        "batch": int(x.shape[0]),
        "median_ms": m.median * 1e3,
        "iqr_ms": m.iqr * 1e3,
        "mean_ms": m.mean * 1e3,
        "runs": len(m.times),
        "calls_per_run": m.number_per_run,
    }


def interleaved(fns: dict, rounds: int, min_run_time: float | None = None) -> dict[str, list[float]]:
    """Time several callables side by side: ``rounds`` rounds, each timing every callable once, the
    order reversed every other round (drift in machine speed hits all alike). ``min_run_time``:
    seconds of torch.utils.benchmark ``blocked_autorange`` per measurement (the Timer synchronises
    CUDA), whose median is the round's value; None: one call per round, timed whole (an epoch).
    Returns seconds per call, one value per round, per callable. No warm-up here: the caller's."""
    benchmark = _benchmark() if min_run_time is not None else None
    names = list(fns)
    out: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        for n in (names if r % 2 == 0 else names[::-1]):
            if benchmark is None:
                t0 = time.perf_counter()
                fns[n]()
                if torch.cuda.is_available() and torch.cuda.is_initialized():
                    torch.cuda.synchronize()
                out[n].append(time.perf_counter() - t0)
            else:
                m = benchmark.Timer(stmt="fn()", globals={"fn": fns[n]},
                                    num_threads=torch.get_num_threads()).blocked_autorange(min_run_time=min_run_time)
                out[n].append(m.median)
    return out


def summarize(values: list[float]) -> dict:
    """min, median and interquartile range of a list of timings."""
    v = sorted(values)
    if not v:
        return {"min": float("nan"), "median": float("nan"), "iqr": float("nan")}
    q = statistics.quantiles(v, n=4, method="inclusive") if len(v) > 1 else [v[0], v[0], v[0]]
    return {"min": v[0], "median": statistics.median(v), "iqr": q[2] - q[0], "n": len(v)}


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory(device: torch.device) -> dict:
    rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out = {"peak_rss_mb": rss_kb / (1024 * 1024) if sys.platform == "darwin" else rss_kb / 1024}
    if device.type == "cuda":
        out["peak_cuda_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    return out
