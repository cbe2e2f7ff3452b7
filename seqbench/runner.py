"""The one training loop: every (model, task, strategy) runs through ``Runner``.

    Runner(cfg).fit() -> record

Seeds python/numpy/torch, builds the task, the backbone and the task's wrapper around it, trains
with the configured optimiser/schedule/clipping/AMP, validates each epoch, keeps the best
validation checkpoint (``select=last``: the last epoch's), tests on it, measures the model and
writes one record. A checkpoint of everything (model, optimiser, schedule, strategy, RNG states,
history) is written after every epoch to ``<results>/checkpoints/<run_id>/last.pt``;
``Runner.resume(run_id)`` continues from it and ends with the same metrics as an uninterrupted run
(same seed, CPU).

Two settings change which weights are where: ``init_from`` (``--init-from RUN_ID``) loads another
run's best weights (its best.pt, else last.pt) before the first epoch, any task, and refuses weights
that do not fit in one line; ``ema`` > 0 keeps a moving average of the weights (``WeightEMA``), and
validation, best.pt, the test and the measurements use the average (put through the backbone's
``after_step``, e.g. ISS thresholding) while training goes on with the trained weights.
"""
from __future__ import annotations

import contextlib
import math
import os
import random
import socket
import secrets
import time

import numpy as np
import torch

from . import config as C
from . import faults, measure, records, registry
from .data import data_root
from .errors import SeqbenchError, clip
from .model import check_prunable, install_pruned
from .progress import Progress, write
from .strategy import get_strategy


class NonFiniteLoss(Exception):
    pass


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
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise SeqbenchError(f"bad value {name!r} for 'device': expected auto, cpu, cuda or cuda:N") from None
    if dev.type not in ("cpu", "cuda"):
        raise SeqbenchError(f"bad value {name!r} for 'device': expected auto, cpu, cuda or cuda:N")
    if dev.type == "cuda":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n == 0:
            raise SeqbenchError(f"device '{name}' asked for, but this machine has no CUDA device")
        if dev.index is not None and dev.index >= n:
            raise SeqbenchError(f"device '{name}' asked for, but this machine has {n} CUDA device(s) (cuda:0..cuda:{n - 1})")
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


def _to(batch, device, channels_last: bool = False):
    def move(t):
        if not isinstance(t, torch.Tensor):
            return t
        t = t.to(device, non_blocking=True)
        return t.contiguous(memory_format=torch.channels_last) if channels_last and t.dim() == 4 and t.is_floating_point() else t

    return tuple(move(t) for t in batch)


def _rng_state() -> dict:
    st = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def _set_rng_state(st: dict) -> None:
    random.setstate(st["python"])
    np.random.set_state(st["numpy"])
    torch.set_rng_state(st["torch"])
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])


def _lock_owner(path) -> str | None:
    """Who holds a run's lock, or None when nobody does (no lock, or its process on this host is gone)."""
    try:
        host, pid, _ = path.read_text().split()
        pid = int(pid)
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return None  # an unreadable or half-written lock: its writer died mid-write
    if host == socket.gethostname():
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass  # alive, another user's
    return f"process {pid} on {host}"


class WeightEMA:
    """An exponential moving average of a model's floating-point parameters, updated after every
    optimiser step: shadow <- decay * shadow + (1 - decay) * weight (TF's ExponentialMovingAverage
    without num_updates, as the BiDAF reference's ``var_decay``). ``swapped`` puts the averages into
    the model for a while (validation, saving best.pt) and the trained weights back after."""

    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay = decay
        self.shadow = {n: p.detach().clone() for n, p in model.named_parameters() if p.is_floating_point()}

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        for n, p in model.named_parameters():
            s = self.shadow.get(n)
            if s is not None:
                s.lerp_(p.detach(), 1.0 - self.decay)

    def state_dict(self) -> dict:
        return dict(self.shadow)

    @torch.no_grad()
    def load_state_dict(self, state: dict) -> None:
        for n, t in state.items():
            self.shadow[n].copy_(t)

    @torch.no_grad()
    def copy_to(self, model: torch.nn.Module, keep_zeros: bool = False) -> None:
        """The averages into ``model``; ``keep_zeros``: every entry of any parameter that the trained
        weights hold at exactly zero stays zero (meant for a model that removes weights during
        training, ISS: a component its thresholding has removed is removed from the average too,
        which otherwise takes thousands of steps to decay below the threshold; our reading, the
        reference trains 10k steps). It does not ask which parameters the thresholding touches:
        an exact zero elsewhere (an embedding entry, say) is kept too, a change of one weight."""
        for n, p in model.named_parameters():
            if n in self.shadow:
                zero = p == 0 if keep_zeros else None
                p.copy_(self.shadow[n])
                if zero is not None:
                    p.masked_fill_(zero, 0.0)

    @contextlib.contextmanager
    def swapped(self, model: torch.nn.Module, after=None, keep_zeros: bool = False):
        """The averages in ``model`` (``keep_zeros``: see ``copy_to``; then ``after()``: e.g. ISS
        thresholding, as the reference thresholds the loaded averages at test) inside the block;
        the trained weights after it."""
        with torch.no_grad():
            saved = {n: p.detach().clone() for n, p in model.named_parameters() if n in self.shadow}
        self.copy_to(model, keep_zeros)
        if after is not None:
            after()
        try:
            yield
        finally:
            with torch.no_grad():
                for n, p in model.named_parameters():
                    if n in saved:
                        p.copy_(saved[n])


class Runner:
    def __init__(self, cfg: C.RunConfig, results=None, run_id: str | None = None, quiet: bool = False,
                 data: bool = True, write_record: bool = True):
        """``data=False`` builds the model, optimiser and strategy as a run would, without reading the
        task's data or touching a results folder: ``step`` then trains on ``task.example_batch``
        batches (``seqbench bench``). ``write_record=False``: ``fit()`` returns the record without
        writing it (``seqbench sweep``: a Ray worker returns it, the driver writes it, so records need
        no shared file system)."""
        self.cfg, self.quiet, self.write_record = cfg, quiet, write_record
        t = cfg.train
        self.model_entry = registry.get_model(cfg.model)
        self.task_entry = registry.get_task(cfg.task)
        ok, why = registry.compatible(self.model_entry, self.task_entry)
        if not ok:
            raise SeqbenchError(why)
        self.results = records.results_dir(results)
        self.run_id = run_id or records.new_run_id(cfg.model, cfg.task, cfg.preset, t.seed)
        self.run_dir = self.results / "checkpoints" / self.run_id
        self.device = pick_device(t.device)
        if t.amp == "fp16" and self.device.type != "cuda":
            raise SeqbenchError(f"amp fp16 needs a CUDA device (this run is on {self.device}); use amp bf16 or off")
        if t.amp == "bf16" and self.device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise SeqbenchError(f"amp bf16 is not supported by {torch.cuda.get_device_name(self.device)}; use fp16 or off")
        self.threads = set_threads(t.threads)
        self.env = records.environment(self.device)  # at start: the code that trains is the code recorded
        seed_everything(t.seed, t.deterministic)

        strategy_cls = get_strategy(t.strategy)
        self.task = self.task_entry.cls(cfg.task_params, data_root())
        self.task.use_strategy(strategy_cls)  # a strategy may shape the data (windows, extra inputs)
        self.spec = self.task.spec()
        self.loaders = self.task.loaders(t.batch_size, t.eval_batch_size, t.seed) if data else {}
        backbone = self.model_entry.cls(self.spec.d_input, cfg.model_params)
        self.model = self.task.wrap(backbone).to(self.device)
        if t.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.backbone = backbone
        check_prunable(self.model, backbone, f"{cfg.model} on {cfg.task}")
        self.optimizer = self._optimizer()
        self.scheduler = self._scheduler()
        self.per_step_schedule = t.schedule in C.PER_STEP_SCHEDULES  # stepped after every batch, not every epoch
        self.ema = WeightEMA(self.model, t.ema) if t.ema > 0 else None
        self.strategy = strategy_cls(self.task, self.model, t)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=t.amp == "fp16")
        self.select = self.spec.metric(self.spec.select)

        self.epoch = 0  # epochs completed
        self.history: list[dict] = []
        self.best: dict = {"epoch": None, "value": None, "val": None}
        self.train_time = 0.0
        self.train_samples = 0
        self.started = time.time()
        # wall time spent on this run by earlier processes (a resumed run; the gaps between them are
        # not counted: a paper run trained in pieces over several GPU sessions) and how many there were
        self.wall_before, self.pieces, self.piece_start = 0.0, 1, time.time()
        self._lock_token = None
        self._check_amp()
        if data:
            records.check_writable(self.results)  # found now, not after an epoch of training

    def _check_amp(self) -> None:
        """A mixed-precision mode the machine's kernels lack for this model (oneDNN has no bf16 LSTM
        on many CPUs) fails here, on two samples, instead of inside the first training step."""
        if self.cfg.train.amp == "off":
            return
        rng = _rng_state()
        was = self.model.training
        try:
            x = self.task.example_batch(2)[0].to(self.device)
            self.model.eval()
            with torch.no_grad(), self._autocast():
                self.model(x)
        except RuntimeError as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise SeqbenchError(f"amp {self.cfg.train.amp} does not run {self.cfg.model} on {self.device} "
                                f"here ({first[:150]}); use --amp off") from None
        finally:
            self.model.train(was)
            _set_rng_state(rng)

    # ----------------------------------------------------------------- setup
    def _param_groups(self) -> list[dict]:
        """The optimiser's parameter groups: a model's own (``optimizer_groups``, e.g. ENRNN's skew A
        at its own learning rate), then the rest; with ``decay_norm_bias=false`` the parameters of
        dim < 2 (biases, normalisation weights) get no weight decay."""
        t = self.cfg.train
        params = list(self.model.parameters())
        groups = []
        groups_fn = getattr(self.backbone, "optimizer_groups", None)
        if callable(groups_fn):
            groups = groups_fn(t.lr)
        grouped = {id(p) for g in groups for p in g["params"]}
        rest = [p for p in params if id(p) not in grouped]
        if t.decay_norm_bias or t.weight_decay == 0:
            return groups + [{"params": rest}]
        return groups + [{"params": [p for p in rest if p.dim() >= 2]},
                         {"params": [p for p in rest if p.dim() < 2], "weight_decay": 0.0}]

    def _optimizer(self):
        t = self.cfg.train
        params = self._param_groups()
        if t.optimizer == "adam":
            return torch.optim.Adam(params, lr=t.lr, weight_decay=t.weight_decay)
        if t.optimizer == "adamw":
            return torch.optim.AdamW(params, lr=t.lr, weight_decay=t.weight_decay)
        if t.optimizer == "rmsprop":
            return torch.optim.RMSprop(params, lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay)
        return torch.optim.SGD(params, lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay, nesterov=t.nesterov)

    def _scheduler(self):
        t = self.cfg.train
        if t.schedule == "cosine":
            return torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, T_max=max(t.epochs, 1))
        if t.schedule == "step":
            return torch.optim.lr_scheduler.StepLR(self.optimizer, step_size=t.lr_step, gamma=t.lr_gamma)
        if t.schedule == "multistep":  # lr x gamma after each milestone epoch (DIANet's cifar.py schedule)
            return torch.optim.lr_scheduler.MultiStepLR(self.optimizer, C.milestone_list(t.milestones), gamma=t.lr_gamma)
        if t.schedule == "poly":  # per iteration: lr (1 - it / iters)^power (torchvision's segmentation reference)
            per_epoch = self._n_batches("train") if "train" in self.loaders else 1  # no data: seqbench bench
            total, power = max(t.epochs * per_epoch, 1), t.poly_power
            return torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda i: (1 - min(i, total) / total) ** power)
        if t.schedule == "decay_after":  # Zaremba et al.: lr * gamma ** max(epoch - lr_hold, 0), epochs from 1
            hold, gamma = t.lr_hold, t.lr_gamma
            return torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda i: gamma ** max(i + 1 - hold, 0))
        return None

    def _autocast(self):
        amp = self.cfg.train.amp
        if amp == "off":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if amp == "bf16" else torch.float16
        return torch.autocast(self.device.type, dtype=dtype)

    def _batches(self, split: str):
        limit = self.cfg.train.limit_batches
        for i, batch in enumerate(self.loaders[split]):
            if limit and i >= limit:
                return
            yield _to(batch, self.device, self.cfg.train.channels_last)

    def _n_batches(self, split: str) -> int:
        n, limit = len(self.loaders[split]), self.cfg.train.limit_batches
        return min(n, limit) if limit else n

    # ------------------------------------------------------------ one loop
    def train_epoch(self, epoch: int) -> dict:
        t = self.cfg.train
        self.model.train()
        loader = self.loaders["train"]
        if hasattr(loader, "set_epoch"):
            loader.set_epoch(epoch)
        self.strategy.start(train=True)
        loss_sum = torch.zeros((), device=self.device)
        n = 0
        bar = Progress(self._batches("train"), total=self._n_batches("train"), desc=f"epoch {epoch}", quiet=self.quiet)
        start = time.perf_counter()
        for i, batch in enumerate(bar):
            loss = self.step(batch)
            bs = batch[1].shape[0]
            loss_sum += loss.detach().float() * bs
            n += bs
            if (i + 1) % t.log_every == 0:  # one host sync every log_every steps, not every step
                mean = loss_sum.item() / n
                if not math.isfinite(mean):
                    raise NonFiniteLoss(f"non-finite training loss at epoch {epoch}, step {i + 1}")
                bar.set_postfix(loss=f"{mean:.4f}")
        self.strategy.end(train=True)
        mean = loss_sum.item() / max(n, 1)  # also waits for queued GPU work: the time below is real
        elapsed = time.perf_counter() - start
        if not math.isfinite(mean):
            raise NonFiniteLoss(f"non-finite training loss in epoch {epoch}")
        self.train_time += elapsed
        self.train_samples += n
        return {"train_loss": mean, "train_samples": n, "train_s": elapsed}

    def step(self, batch, plain: bool = False) -> torch.Tensor:
        """One training step: forward (through the strategy; ``plain``: ``model(x)``, as ``seqbench
        bench`` times it), the task's loss plus the backbone's regulariser, backward, clipping, the
        optimiser, the backbone's after-step hook, the strategy's update. Returns the task loss."""
        t, model, opt = self.cfg.train, self.model, self.optimizer
        head = getattr(model, "head", None)  # backbone hooks see the layer that reads their output
        reg = getattr(self.backbone, "regularization", None)
        after_step = getattr(self.backbone, "after_step", None)
        with self._autocast():
            out, state = model(batch[0]) if plain else self.strategy.forward(model, batch)
            loss = self.task.loss(out, batch[1])
            total = loss + reg(head) if reg is not None else loss
        opt.zero_grad(set_to_none=True)
        self.scaler.scale(total).backward()
        if t.grad_clip > 0:
            self.scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip)
        self.scaler.step(opt)
        self.scaler.update()
        if after_step is not None:
            after_step(head)
        if self.per_step_schedule:  # poly: after every batch
            self.scheduler.step()
        if self.ema is not None:
            self.ema.update(model)
        if not plain:
            self.strategy.update(batch, state, out)
        return loss

    def evaluate(self, split: str) -> dict:
        return self.task.metrics(self.eval_sums(split))

    @torch.no_grad()
    def eval_sums(self, split: str) -> dict:
        """The task's ``eval_stats`` summed over the whole split (float64, on the CPU)."""
        self.model.eval()
        self.strategy.start(train=False)
        sums: dict = {}
        for batch in self._batches(split):
            with self._autocast():
                out, state = self.strategy.forward(self.model, batch)
            self.strategy.update(batch, state, out)
            for k, v in self.task.eval_stats(out, batch[1]).items():
                v = v.detach().to("cpu", torch.float64)
                sums[k] = sums[k] + v if k in sums else v
        self.strategy.end(train=False)
        return sums

    def _evaluated_weights(self):
        """The weights validation and best.pt see: the moving average (``ema``), with the trained
        weights' zeros and put through the backbone's ``after_step`` when it has one (ISS), or the
        trained weights."""
        if self.ema is None:
            return contextlib.nullcontext()
        fn = getattr(self.backbone, "after_step", None)
        head = getattr(self.model, "head", None)
        return self.ema.swapped(self.model, (lambda: fn(head)) if callable(fn) else None, keep_zeros=callable(fn))

    def _init_from(self, run_id: str) -> None:
        """Load another run's best weights (best.pt, else last.pt) before the first epoch; weights
        that do not fit this model are one line naming the first that does not."""
        folder = self.results / "checkpoints" / run_id
        path = next((folder / n for n in ("best.pt", "last.pt") if (folder / n).is_file()), None)
        if path is None:
            raise SeqbenchError(f"cannot initialise from run {clip(repr(run_id))}: no best.pt or last.pt in {folder}")
        try:
            state = torch.load(path, map_location=self.device, weights_only=False)["model"]
        except Exception as e:
            raise SeqbenchError(f"cannot initialise from run '{run_id}': {path} is unreadable ({type(e).__name__})") from None
        own = self.model.state_dict()
        problems = ([f"{k} is {list(state[k].shape)} there, {list(own[k].shape)} here" for k in own
                     if k in state and state[k].shape != own[k].shape]
                    + [f"{k} is missing there" for k in own if k not in state]
                    + [f"{k} is not in this model" for k in state if k not in own])
        if problems:
            more = f"; {len(problems) - 1} more" if len(problems) > 1 else ""
            raise SeqbenchError(f"cannot initialise from run '{run_id}': its weights do not fit this model "
                                f"({problems[0]}{more})")
        self.model.load_state_dict(state)
        if self.ema is not None:  # the average starts from the loaded weights
            self.ema = WeightEMA(self.model, self.cfg.train.ema)
        self.init_source = str(path)

    def _improves(self, value: float, best: float | None) -> bool:
        if best is None:
            return math.isfinite(value)
        return value > best if self.select.higher_is_better else value < best

    def _better(self, value: float) -> bool:
        return self._improves(value, self.best["value"])

    @property
    def watch(self) -> str:
        """The split evaluated after every epoch: validation, or the test split when the task has no
        validation split (then the last epoch's weights are tested, and the best test value over
        epochs is recorded apart as ``test_best``, as the CIFAR papers report it)."""
        return "val" if "val" in self.loaders else "test"

    # --------------------------------------------------------- checkpoints
    def _save(self, name: str, payload: dict) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.run_dir / f".{name}.tmp"
        torch.save(payload, tmp)
        faults.point(f"save:{name}")
        os.replace(tmp, self.run_dir / name)

    def checkpoint(self) -> None:
        self._save("last.pt", {
            "run_id": self.run_id,
            "config": self.cfg.flat(),
            "epoch": self.epoch,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler else None,
            "scaler": self.scaler.state_dict(),
            "strategy": self.strategy.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "init_source": getattr(self, "init_source", None),
            "rng": _rng_state(),
            "history": self.history,
            "best": self.best,
            "train_time": self.train_time,
            "train_samples": self.train_samples,
            "started": self.started,
            "wall_s": self.wall_before + time.time() - self.piece_start,
            "pieces": self.pieces,
        })

    # --------------------------------------------------------------- lock
    # One process at a time trains a run: its checkpoint folder holds ``lock`` (host, pid, token) while
    # fit() runs. A lock whose process is gone (kill -9) is stale and taken over.
    def _acquire_lock(self) -> None:
        if self._lock_token is not None:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        path, token = self.run_dir / "lock", secrets.token_hex(8)
        for _ in range(2):
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                owner = _lock_owner(path)
                if owner is not None:
                    raise SeqbenchError(f"run '{self.run_id}' is in use by {owner} (its checkpoint folder "
                                        f"{self.run_dir} is locked); wait for it, or delete {path} if it is gone") from None
                path.unlink(missing_ok=True)  # stale: its process is gone
                continue
            with os.fdopen(fd, "w") as f:
                f.write(f"{socket.gethostname()} {os.getpid()} {token}\n")
            self._lock_token = token
            return
        raise SeqbenchError(f"run '{self.run_id}': could not lock {path}")

    def _release_lock(self) -> None:
        if self._lock_token is None:
            return
        path = self.run_dir / "lock"
        try:
            if path.read_text().split()[2] == self._lock_token:
                path.unlink()
        except (OSError, IndexError):
            pass
        self._lock_token = None

    @classmethod
    def resume(cls, run_id: str, results=None, quiet: bool = False, write_record: bool = True) -> "Runner":
        path = records.results_dir(results) / "checkpoints" / run_id / "last.pt"
        if not path.is_file():
            raise SeqbenchError(f"cannot resume {clip(repr(run_id))}: no checkpoint at {clip(str(path), 200)}")
        if (records.results_dir(results) / "runs" / f"{run_id}.json").exists():
            raise SeqbenchError(f"run '{run_id}' has finished already (its record exists)")
        owner = _lock_owner(path.parent / "lock")
        if owner is not None:
            raise SeqbenchError(f"run '{run_id}' is in use by {owner}; wait for it, or delete {path.parent / 'lock'} if it is gone")
        try:
            ck = torch.load(path, map_location="cpu", weights_only=False)
            flat = ck["config"]
        except Exception as e:  # a truncated or foreign file
            raise SeqbenchError(f"cannot resume '{run_id}': checkpoint {path} is unreadable ({type(e).__name__})") from None
        cfg = C.from_flat(flat, registry.get_model(flat["model"]), registry.get_task(flat["task"]))
        self = cls(cfg, results=results, run_id=run_id, quiet=quiet, write_record=write_record)
        self.model.load_state_dict(ck["model"])
        self.optimizer.load_state_dict(ck["optimizer"])
        if self.scheduler and ck["scheduler"]:
            self.scheduler.load_state_dict(ck["scheduler"])
        self.scaler.load_state_dict(ck["scaler"])
        self.strategy.load_state_dict(ck["strategy"])
        if self.ema is not None and ck.get("ema") is not None:
            self.ema.load_state_dict(ck["ema"])
        if ck.get("init_source"):
            self.init_source = ck["init_source"]
        _set_rng_state(ck["rng"])
        self.epoch, self.history, self.best = ck["epoch"], ck["history"], ck["best"]
        self.train_time, self.train_samples, self.started = ck["train_time"], ck["train_samples"], ck["started"]
        if "wall_s" in ck:  # checkpoints before this field: wall time counts from the first start, as then
            self.wall_before, self.pieces = ck["wall_s"], ck["pieces"] + 1
        else:
            self.piece_start = self.started
        return self

    # ---------------------------------------------------------------- fit
    def fit(self, stop_after_epochs: int | None = None, stop_after_minutes: float | None = None) -> dict | None:
        """Train to the configured number of epochs, then test and record. With
        ``stop_after_epochs``, return None after that many epochs of this call (the checkpoint
        stays for ``resume``). A non-finite loss ends the run with a record of status 'failed'."""
        self._acquire_lock()
        try:
            return self._fit(stop_after_epochs, stop_after_minutes)
        finally:
            self._release_lock()

    def _fit(self, stop_after_epochs: int | None, stop_after_minutes: float | None = None) -> dict | None:
        t = self.cfg.train
        measure.reset_peak_memory(self.device)
        done_here, began, longest = 0, time.monotonic(), 0.0
        if self.epoch == 0 and t.init_from:
            self._init_from(t.init_from)
        try:
            epochs = Progress(range(self.epoch + 1, t.epochs + 1), total=t.epochs - self.epoch, desc=self.run_id,
                              quiet=self.quiet, unit="epochs", every=float("inf"))
            for epoch in epochs:
                if stop_after_epochs is not None and done_here >= stop_after_epochs:
                    return None
                # a time budget (a lent GPU's minutes): stop before an epoch that would not fit in it
                if stop_after_minutes is not None and done_here and \
                        time.monotonic() - began + longest > 60 * stop_after_minutes:
                    return None
                epoch_began = time.monotonic()
                row = {"epoch": epoch, "lr": self.optimizer.param_groups[0]["lr"]}
                row.update(self.train_epoch(epoch))
                ev = time.perf_counter()
                split = self.watch  # val; or, with no validation split (the papers' protocol), test
                key = f"{split}_{self.spec.select}"
                with self._evaluated_weights():  # the moving average, when the run keeps one
                    row.update({f"{split}_{k}": v for k, v in self.evaluate(split).items()})
                    value = row[key]
                    if split == "val" and (t.select == "last" or self._better(value)):
                        self.best = {"epoch": epoch, "value": value,
                                     "val": {k[4:]: v for k, v in row.items() if k.startswith("val_")}}
                        self._save("best.pt", {"model": self.model.state_dict(), "epoch": epoch})
                row["eval_s"] = time.perf_counter() - ev
                if self.scheduler and not self.per_step_schedule:
                    self.scheduler.step()
                self.history.append(row)
                prev = self.best.get("test_best")
                if split == "test" and self._improves(value, prev and prev[self.spec.select]):
                    self.best["test_best"] = {"epoch": epoch, self.spec.select: value}  # reported apart, never selects
                self.epoch = epoch
                done_here += 1
                self.checkpoint()
                longest = max(longest, time.monotonic() - epoch_began)
                epochs.set_postfix(**{"train_loss": f"{row['train_loss']:.4f}", key: f"{value:.4f}"})
                write(f"epoch {epoch}/{t.epochs}  train_loss {row['train_loss']:.4f}  "
                      f"{key} {value:.4f}  ({row['train_s']:.1f}s train)")
        except NonFiniteLoss as e:
            return self._record(status="failed", failure=str(e))
        return self._finish()

    def _finish(self) -> dict:
        best_path = self.run_dir / "best.pt"
        if best_path.is_file():
            try:
                state = torch.load(best_path, map_location=self.device, weights_only=False)["model"]
                self.model.load_state_dict(state)
            except Exception as e:  # truncated, overwritten, foreign: the run cannot be tested
                why = f"best checkpoint {best_path} is unreadable ({type(e).__name__})"
                rec = self._record(status="failed", failure=why)
                err = SeqbenchError(f"{why}: run recorded as failed ({rec.get('path', 'the record goes to the caller')}); its last "
                                    f"checkpoint {self.run_dir / 'last.pt'} is kept")
                err.record = rec  # the failed record, for a caller that writes records itself
                raise err from None
        elif self.ema is not None:  # no validation split: the last average is what gets tested
            fn = getattr(self.backbone, "after_step", None)
            self.ema.copy_to(self.model, keep_zeros=callable(fn))
            if callable(fn):
                fn(getattr(self.model, "head", None))
        self.pruning = self._prune()
        sums = self.eval_sums("test")
        test = self.task.metrics(sums)
        per_class = getattr(self.task, "per_class", None)  # a task's per-class breakdown (dense: IoU per class)
        self.test_per_class = per_class(sums) if callable(per_class) else None
        self.examples = self._examples()
        return self._record(status="completed", test=test)

    @torch.no_grad()
    def _predict(self, x):
        """The model's output for one input batch, in eval mode on the run's device, on the CPU."""
        self.model.eval()
        with self._autocast():
            out, _ = self.model(x.to(self.device))
        return out.float().cpu()

    def _examples(self) -> dict | None:
        """A task that shows predictions (``examples(predict) -> (arrays, meta)``: dense tasks, their
        first test images) gets them saved as ``<results>/examples/<run_id>.npz``; the record says where."""
        fn = getattr(self.task, "examples", None)
        got = fn(self._predict) if callable(fn) else None
        if not got:
            return None
        arrays, meta = got
        path = records.write_examples(arrays, self.run_id, self.results)
        return {**meta, "file": str(path.relative_to(self.results))}

    def _prune(self) -> dict | None:
        """A backbone with ``pruned(head)`` (ISS) is replaced by the physically smaller model it
        returns; the test and every measurement then see the small model, which is saved whole
        (``pruned.pt``: torch.load gives the module back)."""
        fn = getattr(self.backbone, "pruned", None)
        head = getattr(self.model, "head", None)
        if not callable(fn):
            return None
        before = {"params": measure.params(self.model), "flops_per_sample": measure.flops_per_sample(self.model)}
        small = fn(head)
        if small is None:
            return None
        install_pruned(self.model, *small)
        self.backbone = self.model.backbone
        self.model.to(self.device)
        self._save("pruned.pt", {"model": self.model, "epoch": self.best["epoch"]})
        return {"before": before, "file": str(self.run_dir / "pruned.pt")}

    def _measure(self) -> dict:
        t = self.cfg.train
        x = next(iter(self.loaders["test"]))[0]
        lat = {}
        for bs in getattr(self.task, "latency_batches", (1, 64)):  # a task may declare its own (dense: 1, 8)
            xb = self.task.example_input(x, bs).to(self.device)
            lat[f"b{bs}"] = measure.latency(self.model, xb, t.latency_time, self._autocast)
        return {
            "params": measure.params(self.model),
            "sparsity": measure.sparsity(self.model),
            "structure": measure.structure(self.model),
            "flops_per_sample": measure.flops_per_sample(self.model),
            "latency": lat,
            "torch_threads": torch.get_num_threads(),
            "train_throughput": self.train_samples / self.train_time if self.train_time > 0 else None,
            "memory": measure.peak_memory(self.device),
            "pruning": getattr(self, "pruning", None),  # ISS: the dense model's size before pruning
        }

    def _record(self, status: str, test: dict | None = None, failure: str | None = None) -> dict:
        mstart = time.perf_counter()
        meas = self._measure() if status == "completed" else {}
        finished = time.time()
        rec = {
            "schema": records.SCHEMA_VERSION,
            "run_id": self.run_id,
            "status": status,
            "failure": failure,
            "model": self.cfg.model,
            "task": self.cfg.task,
            "preset": self.cfg.preset,
            "strategy": self.cfg.train.strategy,
            "seed": self.cfg.train.seed,
            "config": self.cfg.flat(),
            "config_hash": C.config_hash(self.cfg.flat()),  # the run's identity (config.identity)
            "env": self.env,
            "task_info": {
                "kind": self.spec.kind, "d_input": self.spec.d_input, "d_output": self.spec.d_output,
                "seq_len": self.spec.seq_len, "loss": self.spec.loss, "select": self.spec.select,
                "input_shape": list(self.spec.input_shape) or None,
                "metrics": {m.name: ("higher" if m.higher_is_better else "lower") for m in self.spec.metrics},
                "train_samples": self.loaders["train"].num_samples if hasattr(self.loaders["train"], "num_samples") else None,
                **self.task.info(),
            },
            "init_from": ({"run_id": self.cfg.train.init_from, "file": getattr(self, "init_source", None)}
                          if self.cfg.train.init_from else None),
            "metrics": {"best_epoch": self.best["epoch"], "val": self.best["val"], "test": test,
                        "selection": ("last epoch (no validation split)" if self.watch != "val" else
                                      "select last: the last epoch's weights" if self.cfg.train.select == "last"
                                      else "best validation epoch"),
                        **({"test_best": self.best["test_best"]} if "test_best" in self.best else {}),
                        **({"test_per_class": self.test_per_class} if getattr(self, "test_per_class", None) else {})},
            "history": self.history,
            **({"examples": self.examples} if getattr(self, "examples", None) else {}),
            "measure": meas,
            "timing": {
                "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(self.started)),
                "finished": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(finished)),
                "wall_s": self.wall_before + finished - self.piece_start,  # running time, all pieces
                "pieces": self.pieces,  # processes that trained it (1 + resumes)
                "train_s": self.train_time,
                "eval_s": sum(r.get("eval_s", 0.0) for r in self.history),
                "measure_s": time.perf_counter() - mstart,
                "epochs": self.epoch,
            },
        }
        if self.write_record:
            rec["path"] = str(records.write(rec, self.results))
        return rec
