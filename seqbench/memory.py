"""Will a training step fit? An estimate made before training, and the memory this process may use.

The estimate of one training step at the run's batch: the tensors its forward pass keeps for the
backward pass (counted through ``torch.autograd.graph.saved_tensors_hooks``), plus the parameters, their
gradients and the optimiser's state, plus the batch. A model with small samples (sequences, CIFAR
images) runs for real on one sample, scaled by the batch (its buffers and the random state restored
after); one with large samples (scene parsing) runs on the ``meta`` device, shapes only, at the real
batch and size (a model that reads a tensor's value cannot: it is probed for real). It is compared with
what this process may use: the machine's available memory and its cgroup's limit (CPU), the GPU's free
memory (CUDA).
"""
from __future__ import annotations

import copy
import os
from pathlib import Path

import torch
from torch.autograd.graph import saved_tensors_hooks

HEADROOM = 0.9  # of the available memory a run may plan to use


def gib(n: float) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


def available(device: torch.device) -> int:
    """Bytes this process may still allocate on ``device``."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    free = _meminfo("MemAvailable")
    v1 = "/sys/fs/cgroup/memory/memory."
    for limit, usage in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                         (v1 + "limit_in_bytes", v1 + "usage_in_bytes")):
        try:
            cap, used = Path(limit).read_text().strip(), int(Path(usage).read_text())
        except (OSError, ValueError):
            continue
        if cap.isdigit() and int(cap) < 2**60:
            free = min(free, int(cap) - used)
        break
    return free


def _meminfo(key: str) -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")


def _nbytes(t) -> int:
    if isinstance(t, torch.Tensor):
        return t.numel() * t.element_size()
    if isinstance(t, (tuple, list)):
        return sum(_nbytes(v) for v in t)
    return 0


def _saved_bytes(model, task, x, y) -> int:
    """Bytes of the tensors the forward pass and the loss keep for the backward pass (parameters not counted)."""
    params = {id(p) for p in model.parameters()}
    total = [0]

    def pack(t):
        if id(t) not in params:
            total[0] += _nbytes(t)
        return t

    with saved_tensors_hooks(pack, lambda t: t):
        out, _ = model(x)
        task.loss(out, y)
    return total[0]


def _meta(t, batch: int):
    """A tensor (or tuple) like ``t`` with ``batch`` rows, on the meta device."""
    if isinstance(t, torch.Tensor):
        return torch.empty((batch, *t.shape[1:]), dtype=t.dtype, device="meta")
    if isinstance(t, (tuple, list)):
        return type(t)(_meta(v, batch) for v in t)
    return t


def check_size(make, train, device: torch.device) -> None:
    """Before a model is built: ``make()`` run on the meta device (no memory) gives its parameters; when
    they, their gradients and the optimiser's state would not fit, one line (a model that cannot be made
    there is let through: the step estimate after it still applies)."""
    from .build import rng_state, set_rng_state
    from .errors import SeqbenchError

    rng = rng_state()
    try:
        with torch.device("meta"):
            params = list(make().parameters())
    except Exception:
        return
    finally:
        set_rng_state(rng)
    need, free = sum(_nbytes(p) for p in params) * (2 + _moments(train)), available(device)
    if need > HEADROOM * free:
        n = sum(p.numel() for p in params)
        raise SeqbenchError(f"the model's {n:,} parameters need about {gib(need)} with their gradients and the "
                            f"optimiser's state, more than the {gib(free)} this process may use on {device}; "
                            f"make the model smaller (model.hidden, model.width, ...)")


SMALL_SAMPLE = 100_000  # input elements per sample up to which one real sample is probed


def step_estimate(setup, batch: int | None = None) -> dict:
    """Bytes a training step at ``batch`` (default: the run's, per rank) needs: ``activations`` (kept for
    the backward pass), ``state`` (parameters, gradients, optimiser state), ``batch``; ``how`` found."""
    b = batch or setup.cfg.train.batch_size // setup.world.size
    x1, y1 = setup.task.example_batch(1)
    acts, how = None, "scaled"
    if _nbytes(x1) // 4 > SMALL_SAMPLE:
        try:
            meta = copy.deepcopy(setup.model).to("meta").train()
            acts, how = _saved_bytes(meta, setup.task, _meta(x1, b), _meta(y1, b)), "meta"
        except Exception:  # a model that reads values: probed for real
            acts = None
    if acts is None:
        acts = _probe(setup, x1, y1) * b
    p = sum(_nbytes(q) for q in setup.model.parameters())
    return {"activations": acts, "state": p * (2 + _moments(setup.cfg.train)), "batch": (_nbytes(x1) + _nbytes(y1)) * b,
            "how": how}


def _moments(t) -> int:
    """Tensors of the parameters' size the optimiser keeps (Adam's two moments, SGD's momentum, ...)."""
    return {"adam": 2, "adamw": 2, "sgd": 1 if t.momentum else 0, "rmsprop": 2 if t.momentum else 1}[t.optimizer]


def _probe(setup, x1, y1) -> int:
    """Saved-tensor bytes of one real training forward on one sample; the model's buffers (batch-norm
    statistics) and the random state are as before it."""
    from .build import rng_state, set_rng_state

    model, rng, was = setup.model, rng_state(), setup.model.training
    buffers = [(b, b.detach().clone()) for b in model.buffers()]
    try:
        model.train()
        return _saved_bytes(model, setup.task, _to(x1, setup.device), _to(y1, setup.device))
    finally:
        with torch.no_grad():
            for b, saved in buffers:
                b.copy_(saved)
        model.train(was)
        set_rng_state(rng)


def check(setup, batch: int | None = None, knob: str = "batch_size") -> dict:
    """The step estimate; a step that would not fit in what this process may use is one line: the
    estimate, the memory, the largest batch that fits (named as the user sets it: ``knob``)."""
    from .errors import SeqbenchError

    e = step_estimate(setup, batch)
    b = batch or setup.cfg.train.batch_size // setup.world.size
    need, free = e["activations"] + e["state"] + e["batch"], available(setup.device)
    e.update(need=need, available=free)
    if need > HEADROOM * free:
        per = (e["activations"] + e["batch"]) / max(b, 1)
        fits = int((HEADROOM * free - e["state"]) // per) if per else 0
        hint = f"lower {knob} to {fits * setup.world.size} or less" if fits >= 1 else \
            "it does not fit even at batch 1: make the model or its input smaller"
        raise SeqbenchError(f"a training step at batch {b} needs about {gib(need)} (estimated: activations "
                            f"{gib(e['activations'])}, parameters and optimiser {gib(e['state'])}), more than the "
                            f"{gib(free)} this process may use on {setup.device}; {hint}")
    return e


def oom_failure(e: BaseException, setup) -> str | None:
    """A run's failure line when ``e`` is an allocation that failed (CUDA's OutOfMemoryError, the CPU
    allocator's refusal, MemoryError), naming the batch and the estimate; None for any other error."""
    text = str(e)
    oom = isinstance(e, (torch.OutOfMemoryError, MemoryError)) or (
        isinstance(e, RuntimeError) and ("can't allocate memory" in text or "out of memory" in text.lower()))
    if not oom:
        return None
    est = setup.memory or {}
    return (f"out of memory at batch {setup.cfg.train.batch_size} (a step was estimated at {gib(est.get('need', 0))} "
            f"of {gib(est.get('available', 0))} available); lower batch_size or the input size")


def _to(t, device):
    if isinstance(t, torch.Tensor):
        return t.to(device)
    return type(t)(_to(v, device) for v in t) if isinstance(t, (tuple, list)) else t
