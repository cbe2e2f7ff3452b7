"""One build: a resolved config becomes everything a run needs, a ``Setup``.

    setup = build(cfg)              # task, loaders, model, optimiser, schedule, scaler, strategy, EMA
    setup.step(batch)               # one training step
    setup.evaluate("val")           # the task's metrics over a split, from summed statistics

``seqbench run`` (the runner), ``seqbench bench`` (``data=False``: no data files read), ``seqbench
sweep`` and the tests build through it. The order of the build is fixed (seed, task, loaders,
backbone, wrapper, optimiser, ...) so that a config and a seed give the same weights everywhere.
"""
from __future__ import annotations

import contextlib
import os
import random

import numpy as np
import torch

from . import config as C
from . import distributed, memory, registry
from .data import data_root
from .ema import WeightEMA
from .errors import SeqbenchError
from .model import check_prunable


# ------------------------------------------------------------------------------ the machine
def seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # all devices
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False


def pick_device(name: str) -> torch.device:
    """The run's device, checked against what this machine has (before anything is built)."""
    bad = f"bad value {name!r} for 'device': expected auto, cpu, cuda or cuda:N"
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise SeqbenchError(bad) from None
    if dev.type not in ("cpu", "cuda"):
        raise SeqbenchError(bad)
    if dev.type == "cuda":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n == 0:
            raise SeqbenchError(f"device '{name}' asked for, but this machine has no CUDA device")
        if dev.index is not None and dev.index >= n:
            raise SeqbenchError(f"device '{name}' asked for, but this machine has {n} CUDA device(s) "
                                f"(cuda:0..cuda:{n - 1})")
    return dev


def cores_available() -> int:
    """The cores this process may run on (its affinity mask: taskset, a container's cpuset)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def set_threads(n: int | None) -> int:
    """torch's intra-op threads for this process: ``n``, or torch's default capped at the cores the
    process may use (two runs side by side, each with its own cores, never oversubscribe them)."""
    n = n if n is not None else min(torch.get_num_threads(), cores_available())
    torch.set_num_threads(n)
    return torch.get_num_threads()


def rng_state() -> dict:
    """Every random state, as plain data and tensors (a checkpoint loads with ``weights_only=True``)."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    st = {"python": random.getstate(), "numpy": (name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached),
          "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def set_rng_state(st: dict) -> None:
    random.setstate(st["python"])
    name, keys, *rest = st["numpy"]
    keys = keys.numpy() if isinstance(keys, torch.Tensor) else np.asarray(keys)  # an older checkpoint: an array
    np.random.set_state((name, keys.astype(np.uint32), *rest))
    torch.set_rng_state(st["torch"])
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])


def check_amp_device(amp: str, device: torch.device) -> None:
    if amp == "fp16" and device.type != "cuda":
        raise SeqbenchError(f"amp fp16 needs a CUDA device (this run is on {device}); use amp bf16 or off")
    if amp == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise SeqbenchError(f"amp bf16 is not supported by {torch.cuda.get_device_name(device)}; use fp16 or off")


# --------------------------------------------------------------------- optimiser, schedule
def param_groups(model, backbone, t: C.TrainConfig) -> list[dict]:
    """The optimiser's parameter groups: a model's own (``optimizer_groups``, e.g. ENRNN's skew A
    at its own learning rate), then the rest; with ``decay_norm_bias=false`` the parameters of
    dim < 2 (biases, normalisation weights) get no weight decay (nanoGPT's rule)."""
    params = list(model.parameters())
    groups = []
    groups_fn = getattr(backbone, "optimizer_groups", None)
    if callable(groups_fn):
        groups = groups_fn(t.lr)
    grouped = {id(p) for g in groups for p in g["params"]}
    rest = [p for p in params if id(p) not in grouped]
    if t.decay_norm_bias or t.weight_decay == 0:
        return groups + [{"params": rest}]
    return groups + [{"params": [p for p in rest if p.dim() >= 2]},
                     {"params": [p for p in rest if p.dim() < 2], "weight_decay": 0.0}]


def make_optimizer(groups: list[dict], t: C.TrainConfig) -> torch.optim.Optimizer:
    if t.optimizer == "adam":
        return torch.optim.Adam(groups, lr=t.lr, weight_decay=t.weight_decay)
    if t.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=t.lr, weight_decay=t.weight_decay)
    if t.optimizer == "rmsprop":
        return torch.optim.RMSprop(groups, lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay)
    return torch.optim.SGD(groups, lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay, nesterov=t.nesterov)


def make_scheduler(opt, t: C.TrainConfig, batches_per_epoch: int):
    """The LR schedule (None: constant). ``poly`` steps every batch, the others every epoch."""
    LR = torch.optim.lr_scheduler
    if t.schedule == "cosine":
        return LR.CosineAnnealingLR(opt, T_max=max(t.epochs, 1))
    if t.schedule == "step":
        return LR.StepLR(opt, step_size=t.lr_step, gamma=t.lr_gamma)
    if t.schedule == "multistep":  # lr x gamma after each milestone epoch (DIANet's cifar.py schedule)
        return LR.MultiStepLR(opt, C.milestone_list(t.milestones), gamma=t.lr_gamma)
    if t.schedule == "poly":  # per iteration: lr (1 - it / iters)^power (torchvision's segmentation reference)
        total, power = max(t.epochs * batches_per_epoch, 1), t.poly_power
        return LR.LambdaLR(opt, lambda i: (1 - min(i, total) / total) ** power)
    if t.schedule == "decay_after":  # Zaremba et al.: lr * gamma ** max(epoch - lr_hold, 0), epochs from 1
        hold, gamma = t.lr_hold, t.lr_gamma
        return LR.LambdaLR(opt, lambda i: gamma ** max(i + 1 - hold, 0))
    return None


def _to(batch, device, channels_last: bool = False):
    def move(t):
        if not isinstance(t, torch.Tensor):
            return t
        t = t.to(device, non_blocking=True)
        four_d = channels_last and t.dim() == 4 and t.is_floating_point()
        return t.contiguous(memory_format=torch.channels_last) if four_d else t

    return tuple(move(t) for t in batch)


# ---------------------------------------------------------------------------------- the setup
class Setup:
    """What a run trains and evaluates with: built by ``build(cfg)``; its state (``state_dict``) is what
    a checkpoint keeps besides the runner's own bookkeeping. ``model`` is the plain model (evaluation,
    hooks, checkpoints); ``train_model`` what the training steps call (in a distributed run: the model in
    DistributedDataParallel)."""

    def __init__(self, cfg, device, threads, task, spec, loaders, model, optimizer, scheduler, scaler, strategy, ema,
                 world: distributed.World = distributed.SINGLE):
        self.cfg, self.device, self.threads, self.world = cfg, device, threads, world
        self.train_model = model
        self._global_rows = 0  # the rows of the global batch this rank last took its part of
        self.task, self.spec, self.loaders, self.model = task, spec, loaders, model
        self.optimizer, self.scheduler, self.scaler = optimizer, scheduler, scaler
        self.strategy, self.ema = strategy, ema
        self.per_step_schedule = cfg.train.schedule in C.PER_STEP_SCHEDULES  # stepped every batch, not every epoch
        self.memory: dict | None = None  # the training step's memory estimate (seqbench.memory.check)
        self.monitor = spec.metric(spec.monitor)  # the Metric that picks the best epoch

    @property
    def backbone(self):
        return self.model.backbone

    @property
    def head(self):
        """The wrapper's layer that reads the backbone's output (backbone hooks see it), or None."""
        return getattr(self.model, "head", None)

    def hook(self, name: str):
        """The backbone's optional hook ``name`` (``regularization``, ``after_step``, ``pruned``, ...) or None."""
        fn = getattr(self.backbone, name, None)
        return fn if callable(fn) else None

    def autocast(self):
        amp = self.cfg.train.amp
        if amp == "off":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16)

    def batches(self, split: str, train: bool = False):
        """The split's batches on the run's device (at most ``limit_batches``); in a distributed run this
        rank's part of them: its rows of every batch when training (or when the strategy carries state
        through evaluation), else every world-size-th batch."""
        for _, batch in self._sharded(split, train):
            yield batch

    def _sharded(self, split: str, train: bool):
        """(global batch index, this rank's part of the batch): a loader with ``shard`` reads only its
        part; any other gives every batch whole, cut here."""
        limit, w, loader = self.cfg.train.limit_batches, self.world, self.loaders[split]
        by_rows = train or self.strategy.eval_shard == "rows"
        native = w.on and callable(getattr(loader, "shard", None))
        if native:
            loader.shard(w.rank, w.size, by_rows)
        for k, batch in enumerate(loader):
            i = k * w.size + w.rank if native and not by_rows else k
            if limit and i >= limit:
                return
            if w.on and not native:
                if by_rows:
                    self._global_rows = distributed.batch_rows(batch)
                    batch = distributed.take_rows(batch, distributed.rows(self._global_rows, w))
                elif i % w.size != w.rank:
                    continue
            yield i, _to(batch, self.device, self.cfg.train.channels_last)

    def n_batches(self, split: str) -> int:
        n, limit = len(self.loaders[split]), self.cfg.train.limit_batches
        return min(n, limit) if limit else n

    def step(self, batch, plain: bool = False) -> torch.Tensor:
        """One training step: forward (through the strategy; ``plain``: ``model(x)``, as ``seqbench
        bench`` times it), the task's loss plus the backbone's regulariser, backward, clipping, the
        optimiser, the backbone's after-step hook, the schedule (per-step ones), the EMA, the
        strategy's update. Returns the task loss."""
        t, model, opt, head = self.cfg.train, self.model, self.optimizer, self.head
        reg, after_step = self.hook("regularization"), self.hook("after_step")
        with self.autocast():
            out, state = self.train_model(batch[0]) if plain else self.strategy.forward(self.train_model, batch)
            if self.world.on:  # the global batch's mean: this rank's sum over the count of all ranks
                loss, objective = self._distributed_loss(out, batch[1])
            else:
                loss = objective = self.task.loss(out, batch[1])
            total = objective + reg(head) if reg is not None else objective
        opt.zero_grad(set_to_none=True)
        self.scaler.scale(total).backward()
        if t.grad_clip > 0:
            self.scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip)
        self.scaler.step(opt)
        self.scaler.update()
        if after_step is not None:
            after_step(head)
        if self.per_step_schedule:
            self.scheduler.step()
        if self.ema is not None:
            self.ema.update(model)
        if not plain:
            self.strategy.update(batch, state, out)
        return loss

    def _distributed_loss(self, out, y):
        """(what ``step`` returns, what this rank backpropagates) in a distributed run. The objective is
        this rank's loss sum over the global count (DDP averages the ranks' gradients: the global batch's
        gradient). The returned value times this rank's rows, summed over the ranks, is the global batch's
        mean loss times its rows (what one process's epoch adds up; all-reduced at the epoch's end). A loss
        that is a mean over rows needs no message: the global rows are known from the batch cut here."""
        part, count = self.task.loss_terms(out, y)
        rows = y.shape[0]
        if count is None and self._global_rows:
            return part.detach() / max(rows, 1), part * (self.world.size / self._global_rows)
        local = torch.stack([(torch.tensor(float(rows)) if count is None else count).detach().float().cpu(),
                             torch.tensor(float(rows))])
        total, global_rows = distributed.all_sum(local).tolist()
        return part.detach() * (global_rows / total / max(rows, 1)), part * (self.world.size / total)

    @torch.no_grad()
    def eval_sums(self, split: str) -> dict:
        """The task's ``eval_stats`` summed over the whole split (float64, on the CPU; in a distributed
        run over every rank's part, as one process sums them: ``distributed.StatSum``; the ranks' buffers
        averaged first, so every rank evaluates the same model)."""
        distributed.average_buffers(self.model, self.world)
        self.model.eval()
        self.strategy.start(train=False)
        sums = distributed.StatSum(self.world)
        for i, batch in self._sharded(split, train=False):
            with self.autocast():
                out, state = self.strategy.forward(self.model, batch)
            self.strategy.update(batch, state, out)
            sums.add(i, {k: v.detach().cpu() for k, v in self.task.eval_stats(out, batch[1]).items()})
        self.strategy.end(train=False)
        return sums.result()

    def evaluate(self, split: str) -> dict:
        return self.task.metrics(self.eval_sums(split))

    @torch.no_grad()
    def predict(self, x):
        """The model's output for one input batch, in eval mode on the run's device, on the CPU."""
        self.model.eval()
        with self.autocast():
            out, _ = self.model(x.to(self.device))
        return out.float().cpu()

    def evaluated_weights(self):
        """A context in which the model holds the weights evaluation sees: the moving average (``ema``)
        with the trained weights' zeros, put through the backbone's ``after_step`` (ISS thresholding),
        or the trained weights."""
        if self.ema is None:
            return contextlib.nullcontext()
        fn, head = self.hook("after_step"), self.head
        return self.ema.swapped(self.model, (lambda: fn(head)) if fn else None, keep_zeros=fn is not None)

    def use_average(self) -> None:
        """The moving average into the model for good (a run without validation tests its last average)."""
        fn = self.hook("after_step")
        self.ema.copy_to(self.model, keep_zeros=fn is not None)
        if fn is not None:
            fn(self.head)

    def check_amp(self) -> None:
        """A mixed-precision mode the machine's kernels lack for this model (oneDNN has no bf16 LSTM
        on many CPUs) fails here, on two samples, instead of inside the first training step."""
        if self.cfg.train.amp == "off":
            return
        rng = rng_state()
        was = self.model.training
        try:
            x = self.task.example_batch(2)[0].to(self.device)
            self.model.eval()
            with torch.no_grad(), self.autocast():
                self.model(x)
        except RuntimeError as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise SeqbenchError(f"amp {self.cfg.train.amp} does not run {self.cfg.model} on {self.device} "
                                f"here ({first[:150]}); use --amp off") from None
        finally:
            self.model.train(was)
            set_rng_state(rng)

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler else None,
            "scaler": self.scaler.state_dict(),
            "strategy": self.strategy.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
        }

    def load_state_dict(self, ck: dict) -> None:
        self.model.load_state_dict(ck["model"])
        self.optimizer.load_state_dict(ck["optimizer"])
        if self.scheduler and ck["scheduler"]:
            self.scheduler.load_state_dict(ck["scheduler"])
        self.scaler.load_state_dict(ck["scaler"])
        self.strategy.load_state_dict(ck["strategy"])
        if self.ema is not None and ck.get("ema") is not None:
            self.ema.load_state_dict(ck["ema"])

    def restart_average(self) -> None:
        """The moving average starts again from the model's weights (after loading other weights)."""
        if self.ema is not None:
            self.ema = WeightEMA(self.model, self.cfg.train.ema)


def make_task(cfg: C.RunConfig):
    """The task of ``cfg`` with its training strategy told (a strategy may shape the data: windows,
    extra inputs); nothing read yet."""
    task = registry.get_task(cfg.task).cls(cfg.task_params, data_root())
    task.use_strategy(registry.get_strategy(cfg.train.strategy).cls)
    return task


def build(cfg: C.RunConfig, data: bool = True, world: distributed.World | None = None) -> Setup:
    """Everything a run of ``cfg`` needs, on its device; ``data=False`` reads no data files (the
    loaders are empty; ``task.example_batch`` gives inputs). ``world``: the process group the run is
    trained by (default: this process's; ``seqbench.distributed``)."""
    model_entry, task_entry = registry.get_model(cfg.model), registry.get_task(cfg.task)
    ok, why = registry.compatible(model_entry, task_entry)
    if not ok:
        raise SeqbenchError(why)
    t = cfg.train
    world = distributed.current() if world is None else world
    device = pick_device(t.device)
    if world.on and device.type == "cuda":
        device = torch.device("cuda", world.local_rank)  # each rank its own GPU
    check_amp_device(t.amp, device)
    threads = set_threads(t.threads)
    if world.on:
        distributed.check_batch(t.batch_size, world)
        strategy_cls = registry.get_strategy(t.strategy).cls
        if strategy_cls.eval_shard is None:
            raise SeqbenchError(f"strategy '{t.strategy}' cannot train distributed: {strategy_cls.not_distributed}; "
                                f"run it in one process")
    seed_everything(t.seed, t.deterministic)

    task = make_task(cfg)
    spec = task.spec()
    loaders = task.loaders(t.batch_size, t.eval_batch_size, t.seed) if data else {}
    memory.check_size(lambda: task.wrap(model_entry.cls(spec.d_input, cfg.model_params)), t, device)
    backbone = model_entry.cls(spec.d_input, cfg.model_params)
    model = task.wrap(backbone).to(device)
    if world.on and t.sync_bn:
        model = distributed.sync_batchnorm(model, device)
    if t.channels_last:
        model = model.to(memory_format=torch.channels_last)
    check_prunable(model, backbone, f"{cfg.model} on {cfg.task}")
    optimizer = make_optimizer(param_groups(model, backbone, t), t)
    per_epoch = len(loaders["train"]) if "train" in loaders else 1  # no data: seqbench bench
    if "train" in loaders and t.limit_batches:
        per_epoch = min(per_epoch, t.limit_batches)
    scheduler = make_scheduler(optimizer, t, per_epoch)
    ema = WeightEMA(model, t.ema) if t.ema > 0 else None
    strategy = registry.get_strategy(t.strategy).cls(task, model, t)
    scaler = torch.amp.GradScaler(device.type, enabled=t.amp == "fp16")
    setup = Setup(cfg, device, threads, task, spec, loaders, model, optimizer, scheduler, scaler, strategy, ema, world)
    setup.check_amp()
    if data:  # before training: a step that would not fit is one line, not the OOM killer (bench: its own batch)
        setup.memory = memory.check(setup)
    if world.on:
        distributed.check_last_batch(loaders.get("train"), t.batch_size, world)
        setup.train_model = distributed.wrap(model, device, world)
        if world.rank:  # its own draws (dropout) from here on; rank 0 goes on as one process would
            seed_everything(t.seed * 1_000_003 + world.rank, t.deterministic)
    return setup
