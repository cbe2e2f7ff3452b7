"""Distributed runs: one run trained by several processes with torch's DistributedDataParallel,
launched by ``torchrun`` (its environment: RANK, WORLD_SIZE, LOCAL_RANK, TORCHELASTIC_*).

    torchrun --standalone --nproc_per_node 8 -m seqbench run --model dense-rnn --task ade20k --preset paper

Without torchrun's environment a run is the single process it always was (under torchrun with one
process it goes through the same distributed code, a group of one: how the GPU check exercises NCCL).
Conventions: ``batch_size`` is the global batch, divided among the ranks (it must divide by the world
size); each rank trains on its rows of the same seeded global batches, so the batches of an N-process
run are those of one process; evaluation gives each rank whole batches (round robin) and adds up the
statistics (integer ones by all-reduce, float ones per batch in the one-process order), so metrics
on the same weights are those of one process. NCCL on CUDA (each rank its LOCAL_RANK device), gloo
on the CPU. Rank 0 alone writes checkpoints, records and examples.
"""
from __future__ import annotations

import contextlib
import os
import time
import warnings
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn as nn

from .errors import SeqbenchError


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def on(self) -> bool:
        """Whether a process group trains the run (of one process, under torchrun --nproc_per_node 1)."""
        return self.backend is not None


SINGLE = World()
_STORE = None  # the launcher's key-value store as init() joined it (prefixed by the restart attempt)
AGREE_S = 30.0  # how long a refusing rank waits for the others' refusals (refused_alike)
_ALIKE = None  # refused_alike's answer, once asked


def launched() -> bool:
    """Whether torchrun (or another launcher setting its variables) started this process."""
    return "WORLD_SIZE" in os.environ and "RANK" in os.environ


def env_rank() -> int:
    """This process's rank as the launcher set it (0 without a launcher): who prints errors."""
    return int(os.environ.get("RANK", "0"))


def current() -> World:
    """The process group this process belongs to (``SINGLE`` when none was started)."""
    if not (dist.is_available() and dist.is_initialized()):
        return SINGLE
    return World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")), dist.get_backend())


def init(device: str = "auto") -> World:
    """Join the launcher's process group (once): NCCL on CUDA, gloo on the CPU. ``device`` is the run's
    device setting; each rank then uses CUDA device LOCAL_RANK. Bad combinations are one line."""
    if not launched():
        return SINGLE
    if dist.is_initialized():
        return current()
    size, local = int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", "0"))
    cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if cuda:
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n == 0:
            raise SeqbenchError(f"device '{device}' asked for {size} processes, but this machine has no CUDA device "
                                f"(NCCL needs one per rank; on the CPU use --device cpu: gloo)")
        if local >= n:
            raise SeqbenchError(f"{int(os.environ.get('LOCAL_WORLD_SIZE', local + 1))} ranks on this node, but it has "
                                f"{n} CUDA device(s): give --nproc_per_node {n} or fewer")
        torch.cuda.set_device(local)
    backend = "nccl" if cuda else "gloo"
    if backend == "nccl" and not dist.is_nccl_available():
        raise SeqbenchError("NCCL is not available in this torch build; distributed CUDA runs need it")
    # the launcher's store, its keys prefixed by the restart attempt: a restarted group must not read the
    # addresses its dead predecessors published there (gloo then connects to a closed port)
    store, rank, size = next(dist.rendezvous("env://"))
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    global _STORE
    _STORE = dist.PrefixStore(f"seqbench/attempt-{attempt}", store)
    dist.init_process_group(backend, store=_STORE, rank=rank, world_size=size)
    return current()


def refused_alike() -> bool:
    """Whether every rank of the group refused the run, as they do alike (a refusal through ``on_main``, a
    check each rank makes on the same settings), so that they may meet at the closing barrier: each refusing
    rank marks the launcher's store and waits up to ``AGREE_S`` seconds for every rank's mark. False when
    the others did not come (a refusal of this rank alone: the others wait in a collective or train on);
    this rank must then say so itself and leave without the barrier, and torchrun stops the others. True
    outside a group that init() joined. Asked once; later calls give the same answer."""
    global _ALIKE
    world = current()
    if _STORE is None or not world.on:
        return True
    if _ALIKE is None:
        _ALIKE = _all_marked(world)
    return _ALIKE


def _all_marked(world: World) -> bool:
    keys, deadline = [f"refused/{r}" for r in range(world.size)], time.monotonic() + AGREE_S
    try:
        _STORE.set(keys[world.rank], "1")
        while not _STORE.check(keys):  # polled: the store's own timed wait logs two warning lines on timing out
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
    except RuntimeError:  # the store is gone with the launcher
        return False
    return True


def refused_elsewhere() -> bool:
    """Whether another rank of the group marked a refusal (``refused_alike``): a collective that failed here
    because that rank left is its consequence, not a second error."""
    world = current()
    if _STORE is None or not world.on:
        return False
    try:
        return any(_STORE.check([f"refused/{r}"]) for r in range(world.size) if r != world.rank)
    except RuntimeError:  # the store is gone with the launcher
        return False


def finish(wait: bool = True) -> None:
    """Leave the process group: after a normal end every rank reaches this point first (a rank tearing it
    down while another still talks to it aborts); a rank that raised (``wait=False``) leaves at once, so
    its traceback is printed and the launcher stops the group instead of every rank hanging."""
    if dist.is_available() and dist.is_initialized():
        try:
            if wait:
                dist.barrier()
            dist.destroy_process_group()
        except RuntimeError:  # a rank died: the launcher restarts the group or reports it
            pass


# ------------------------------------------------------------------------------- the batches
def rows(n: int, world: World) -> slice:
    """This rank's contiguous part of ``n`` rows (``torch.tensor_split``'s split: sizes differ by at most 1)."""
    q, r = divmod(n, world.size)
    lo = world.rank * q + min(world.rank, r)
    return slice(lo, lo + q + (1 if world.rank < r else 0))


def take_rows(batch, part: slice):
    """Every tensor of a (nested) batch tuple cut to the rows ``part`` (non-tensors kept)."""
    if isinstance(batch, torch.Tensor):
        return batch[part]
    if isinstance(batch, (tuple, list)):
        return type(batch)(take_rows(b, part) for b in batch)
    return batch


def batch_rows(batch) -> int:
    """The number of samples in a batch: its targets' first dimension."""
    return batch[1].shape[0]


def describe(world: World, batch_size: int) -> dict:
    """What a record says about the processes that trained it (``batch_size``: the global batch)."""
    return {"world_size": world.size, "backend": world.backend, "global_batch": batch_size,
            "per_rank_batch": batch_size // world.size}


def check_batch(batch_size: int, world: World) -> None:
    if world.on and batch_size % world.size:
        raise SeqbenchError(f"batch_size {batch_size} (the global batch) does not divide among {world.size} "
                            f"processes; choose a multiple of {world.size} or another --nproc_per_node")


# --------------------------------------------------------------------------------- collectives
def all_sum(t: torch.Tensor) -> torch.Tensor:
    """``t`` summed over the ranks, in place (NCCL reduces on the rank's CUDA device); ``t`` itself alone."""
    world = current()
    if not world.on:
        return t
    if world.backend == "nccl" and t.device.type != "cuda":
        tc = t.cuda()
        dist.all_reduce(tc)
        t.copy_(tc.cpu())
    else:
        dist.all_reduce(t)
    return t


def mean(total: torch.Tensor, n: int, world: World) -> float:
    """``total / n`` over every rank's (each rank gets the same value: one decision for all, e.g. to stop)."""
    if not world.on:
        return total.item() / max(n, 1)
    both = all_sum(torch.stack([total.detach().float().cpu(), torch.tensor(float(n))])).tolist()
    return both[0] / max(both[1], 1)


def broadcast_object(obj, world: World):
    """Rank 0's ``obj`` on every rank."""
    if not world.on:
        return obj
    box = [obj if world.main else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_objects(obj, world: World) -> list:
    """Every rank's ``obj``, by rank."""
    if not world.on:
        return [obj]
    out = [None] * world.size
    dist.all_gather_object(out, obj)
    return out


def broadcast_state(module: torch.nn.Module, world: World) -> None:
    """Rank 0's parameters and buffers into every rank's ``module``."""
    if world.on:
        with torch.no_grad():
            for t in list(module.parameters()) + list(module.buffers()):
                dist.broadcast(t.data, src=0)


def barrier(world: World) -> None:
    if world.on:
        dist.barrier()


class StatSum:
    """A split's evaluation statistics summed as one process sums them (float64, batch after batch).
    In a distributed run each rank adds its batches (``add(global batch index, stats)``): integer-valued
    statistics (counts, confusion matrices) are exact in any order, summed here and all-reduced; float
    ones are kept per batch, gathered and added in batch order, so the sums are bitwise one process's."""

    def __init__(self, world: World):
        self.world, self.sums, self.ints, self.floats = world, {}, {}, []

    def add(self, i: int, stats: dict) -> None:
        if not self.world.on:
            for k, v in stats.items():
                v = v.to(torch.float64)
                self.sums[k] = self.sums[k] + v if k in self.sums else v
            return
        for k, v in stats.items():
            if not v.is_floating_point():
                self.ints[k] = self.ints[k] + v.to(torch.int64) if k in self.ints else v.to(torch.int64)
        self.floats.append((i, {k: v.to(torch.float64) for k, v in stats.items() if v.is_floating_point()}))

    def result(self) -> dict:
        if not self.world.on:
            return self.sums
        shapes: dict = {}  # the integer statistics of every rank (one may have had no batch)
        for part in gather_objects({k: tuple(v.shape) for k, v in self.ints.items()}, self.world):
            shapes.update(part)
        out: dict = {}
        batches = sorted((b for part in gather_objects(self.floats, self.world) for b in part), key=lambda b: b[0])
        for _, stats in batches:
            for k, v in stats.items():
                out[k] = out[k] + v if k in out else v
        for k, shape in shapes.items():
            out[k] = all_sum(self.ints.get(k, torch.zeros(shape, dtype=torch.int64))).to(torch.float64)
        return out


def wrap(model: nn.Module, device: torch.device, world: World) -> nn.Module:
    """``model`` in DistributedDataParallel (gradients averaged over the ranks in the backward pass). Its
    buffers (batch-norm running statistics) are not broadcast before every forward (DDP's default, a
    message per step): ``average_buffers`` makes them equal before each evaluation (timm's distribute_bn)."""
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    unused = getattr(model, "unused_parameters", False)
    with warnings.catch_warnings():  # torch 2.14 deprecates the name; its own advice is to keep it for now
        warnings.filterwarnings("ignore", message="`broadcast_buffers` is deprecated", category=FutureWarning)
        return DistributedDataParallel(model, device_ids=ids, find_unused_parameters=unused, broadcast_buffers=False)


def average_buffers(model: nn.Module, world: World) -> None:
    """Every floating buffer of ``model`` (running statistics) averaged over the ranks: equal everywhere
    (already equal under SyncBatchNorm, where the average changes nothing)."""
    if world.on:
        with torch.no_grad():
            for b in model.buffers():
                if b.is_floating_point():
                    b.copy_(all_sum(b.detach().clone()) / world.size)


def check_last_batch(loader, batch_size: int, world: World) -> None:
    """Every rank needs a row of every training batch: refuse a last batch smaller than the world."""
    n = getattr(loader, "num_samples", None)
    last = n % batch_size if n else 0
    if 0 < last < world.size:
        raise SeqbenchError(f"the last training batch holds {last} of {n} samples, fewer than the {world.size} "
                            f"processes; choose a batch_size that leaves none or at least {world.size}")


def on_main(fn, world: World):
    """``fn()`` run by rank 0 alone; its result, or its one-line refusal, on every rank."""
    if not world.on:
        return fn()
    got, err = None, None
    if world.main:
        try:
            got = fn()
        except SeqbenchError as e:
            err = str(e)
    got, err = broadcast_object((got, err), world)
    if err is not None:
        raise SeqbenchError(err)
    return got


@contextlib.contextmanager
def on_main_held(cm, world: World):
    """The context ``cm`` entered by rank 0 alone (a lock); its refusal is every rank's."""
    on_main(cm.__enter__ if world.main else (lambda: None), world)
    try:
        yield
    finally:
        if world.main:
            cm.__exit__(None, None, None)


# ------------------------------------------------------------------------------- batch norm
class CPUSyncBatchNorm(nn.modules.batchnorm._BatchNorm):
    """Batch norm whose training statistics are those of the global batch, on the CPU (gloo), where
    torch's SyncBatchNorm runs only on accelerators: per channel, the sum and the sum of squares
    (float64) and the count are all-reduced with autograd (``torch.distributed.nn``), so gradients
    flow to every rank's inputs as in one process; running statistics are updated from them
    (unbiased variance). Evaluation uses the running statistics, as ``nn.BatchNorm2d``."""

    def _check_input_dim(self, x):
        if x.dim() < 2:
            raise ValueError(f"expected at least 2-D input (got {x.dim()}-D)")

    def forward(self, x):
        if not (self.training and current().on):
            return super().forward(x)
        from torch.distributed.nn.functional import all_reduce

        dims = [d for d in range(x.dim()) if d != 1]
        c = x.shape[1]
        local = torch.cat([x.sum(dims, dtype=torch.float64), (x * x).sum(dims, dtype=torch.float64),
                           x.new_full((1,), x.numel() // c, dtype=torch.float64)])
        total = all_reduce(local)
        n = total[-1]
        mean = total[:c] / n
        var = total[c:2 * c] / n - mean * mean
        shape = [1, c] + [1] * (x.dim() - 2)
        y = (x - mean.to(x.dtype).view(shape)) * torch.rsqrt(var.to(x.dtype).view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.mul_(1 - m).add_(mean.to(self.running_mean.dtype), alpha=m)
                unbiased = var * n / (n - 1).clamp(min=1)
                self.running_var.mul_(1 - m).add_(unbiased.to(self.running_var.dtype), alpha=m)
        return y


def sync_batchnorm(model: nn.Module, device: torch.device) -> nn.Module:
    """Every batch norm of ``model`` computing its training statistics over all ranks: torch's
    SyncBatchNorm on an accelerator, ``CPUSyncBatchNorm`` on the CPU (parameters and buffers kept)."""
    if device.type != "cpu":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)

    def convert(m):
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and not isinstance(m, CPUSyncBatchNorm):
            new = CPUSyncBatchNorm(m.num_features, m.eps, m.momentum, m.affine, m.track_running_stats)
            if m.affine:
                new.weight, new.bias = m.weight, m.bias
            if m.track_running_stats:
                new.running_mean, new.running_var = m.running_mean, m.running_var
                new.num_batches_tracked = m.num_batches_tracked
            new.train(m.training)
            return new
        for name, child in m.named_children():
            m.add_module(name, convert(child))
        return m

    return convert(model)


def rng_states(world: World):
    """The random states a checkpoint keeps: this process's (one process), or every rank's, by rank."""
    from .build import rng_state

    return rng_state() if not world.on else gather_objects(rng_state(), world)


def restore_rng(saved, world: World, seed: int, epoch: int) -> None:
    """Each rank's random state from a checkpoint: its own when it was saved at this world size; rank
    0's (or the single process's) on rank 0 and a fresh (seed, epoch, rank) stream on the others when
    the world size changed."""
    from .build import seed_everything, set_rng_state

    states = saved if isinstance(saved, list) else [saved]
    if len(states) == world.size or world.rank == 0:
        set_rng_state(states[world.rank if len(states) == world.size else 0])
    else:
        seed_everything(seed * 1_000_003 + world.rank + 7_919 * epoch, False)


class Job:
    """A torchrun job's run across restarts (``--max-restarts``): rank 0 notes the run id under
    ``<results>/checkpoints/.torchrun-<TORCHELASTIC_RUN_ID>``; restarted processes find it there and
    resume the run from its last checkpoint. Outside torchrun: nothing."""

    def __init__(self, results, world: World):
        from .records import results_dir

        self.world, job = world, os.environ.get("TORCHELASTIC_RUN_ID")
        self.marker = results_dir(results) / "checkpoints" / f".torchrun-{job}" if job and world.on else None

    def run_id(self) -> str | None:
        if self.marker is None:
            return None
        return on_main(lambda: self.marker.read_text().strip() if self.marker.is_file() else None, self.world)

    def has_checkpoint(self, run_id: str) -> bool:
        return on_main(lambda: (self.marker.parent / run_id / "last.pt").is_file(), self.world)

    def remember(self, run_id: str) -> None:
        if self.marker is not None and self.world.main:
            from .files import atomic_write

            self.marker.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(self.marker, run_id + "\n")

    def forget(self) -> None:
        """The run has its record (or was refused): a later restart of this job has nothing to resume;
        a checkpoints folder left empty goes too."""
        if self.marker is not None and self.world.main:
            self.marker.unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                self.marker.parent.rmdir()
