"""Measurements recorded with every run: parameters, sparsity, FLOPs, latency, throughput, memory."""
from __future__ import annotations

import contextlib
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
    """The backbone's own structural-sparsity report, when it has one (it sees the head that reads
    its output: ISS's groups reach into it)."""
    fn = getattr(getattr(model, "backbone", model), "structure", None)
    return fn(getattr(model, "head", None)) if callable(fn) else None


def flops_per_sample(model: torch.nn.Module) -> int:
    return int(model.flops_per_sample())


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
    m = _benchmark().Timer(stmt="call()", globals={"call": call}, num_threads=torch.get_num_threads()).blocked_autorange(
        min_run_time=min_run_time
    )
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
