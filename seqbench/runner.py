"""The one training loop: every (model, task, strategy) runs through ``Runner``.

    Runner(cfg).fit() -> record

Builds the run (``build``), trains epoch by epoch, evaluates after each, keeps the selected weights
(``best.pt``: the best validation epoch; ``select=last``: the last epoch's; without a validation
split the last epoch's are tested), tests them, measures the model and writes one record
(``records.Record``). ``last.pt`` holds after every epoch what ``Runner.resume`` needs to end with
the same metrics as an uninterrupted run (same seed, CPU). ``init_from`` loads another run's
weights before the first epoch; ``ema`` evaluates a moving average of the weights (``Setup``).
Under torchrun every rank runs the loop on its part of the data (``seqbench.distributed``); rank 0
alone holds the lock and reads and writes files, and hands what it read to the others.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch

from . import config as C
from . import distributed, faults, measure, memory, records, registry
from .build import build
from .errors import SeqbenchError
from .model import load_fitting, prune_in_place, pruned_payload
from .progress import Progress, write
from .records import Selection
from .rundir import RunDir


class NonFiniteLoss(Exception):
    pass


@dataclass
class TrainState:
    """What the loop has done so far; saved in ``last.pt`` beside the setup's state."""

    epoch: int = 0  # epochs completed
    history: list = field(default_factory=list)
    best: dict = field(default_factory=lambda: {"epoch": None, "value": None, "val": None})
    train_time: float = 0.0
    train_samples: int = 0
    started: float = field(default_factory=time.time)
    wall_before: float = 0.0  # running time of earlier processes of this run (a resumed run)
    pieces: int = 1  # processes that trained it (1 + resumes)
    init_source: str | None = None


class Runner:
    def __init__(self, cfg: C.RunConfig, results=None, run_id: str | None = None, quiet: bool = False,
                 write_record: bool = True):
        """``write_record=False``: ``fit()`` returns the record without writing it (``seqbench sweep``:
        a Ray worker returns it, the driver writes it, so records need no shared file system)."""
        self.world = distributed.current()
        self.cfg, self.quiet, self.write_record = cfg, quiet or not self.world.main, write_record
        self.results = records.results_dir(results)
        t = cfg.train
        self.run_id = run_id or self._main(lambda: records.new_run_id(cfg.model, cfg.task, cfg.preset, t.seed))
        self.dir = RunDir(self.results, self.run_id)
        self.setup = build(cfg, world=self.world)
        self.env = records.environment(self.setup.device)  # at start: the code that trains is the code recorded
        self.state = TrainState()
        self.piece_start = time.time()
        self._main(lambda: records.check_writable(self.results))  # found now, not after an epoch of training

    def _main(self, fn):
        """``fn()`` on rank 0 alone, its result (or refusal) on every rank (``distributed.on_main``)."""
        return distributed.on_main(fn, self.world)

    @property
    def epoch(self) -> int:
        return self.state.epoch

    @classmethod
    def resume(cls, run_id: str, results=None, quiet: bool = False, write_record: bool = True,
               machine: dict | None = None) -> "Runner":
        """The run ``run_id`` as its last checkpoint left it (at any world size); ``machine``: settings of
        this machine for it (``config.BOOKKEEPING``: threads, device, ...), never its identity."""
        ck = distributed.on_main(RunDir(records.results_dir(results), run_id).resumable, distributed.current())
        registry.require(ck.get("plugins"), run_id)
        cfg = C.from_flat({**ck["config"], **C.machine_settings(machine or {})}, *C.entries(ck["config"]))
        self = cls(cfg, results=results, run_id=run_id, quiet=quiet, write_record=write_record)
        self.setup.load_state_dict(ck)
        distributed.restore_rng(ck["rng"], self.world, cfg.train.seed, ck["epoch"])
        s = self.state
        s.epoch, s.history, s.best, s.init_source = ck["epoch"], ck["history"], ck["best"], ck.get("init_source")
        s.train_time, s.train_samples, s.started = ck["train_time"], ck["train_samples"], ck["started"]
        if "wall_s" in ck:  # checkpoints before this field: wall time counts from the first start, as then
            s.wall_before, s.pieces = ck["wall_s"], ck["pieces"] + 1
        else:
            self.piece_start = s.started
        return self

    # ---------------------------------------------------------------- fit
    def fit(self, stop_after_epochs: int | None = None, stop_after_minutes: float | None = None) -> dict | None:
        """Train to the configured number of epochs, then test and record. ``stop_after_epochs``: return None
        after that many epochs of this call; ``stop_after_minutes``: before an epoch that would end later (the
        checkpoint stays for ``resume``). A non-finite loss ends the run with a record of status 'failed'."""
        if self.state.epoch == 0 and self.cfg.train.init_from:  # refused now: nothing written yet
            self._init_from(self.cfg.train.init_from)
        with distributed.on_main_held(self.dir.lock(), self.world):
            return self._fit(stop_after_epochs, stop_after_minutes)

    def _fit(self, stop_after_epochs: int | None, stop_after_minutes: float | None) -> dict | None:
        t, s = self.cfg.train, self.state
        measure.reset_peak_memory(self.setup.device)
        done, began, longest = 0, time.monotonic(), 0.0
        try:
            epochs = Progress(range(s.epoch + 1, t.epochs + 1), total=t.epochs - s.epoch, desc=self.run_id,
                              quiet=self.quiet, unit="epochs", every=float("inf"))
            for epoch in epochs:
                if stop_after_epochs is not None and done >= stop_after_epochs:
                    return None
                # a time budget (a lent GPU's minutes): stop before an epoch that would not fit in it
                budget = 60 * stop_after_minutes if stop_after_minutes is not None else math.inf
                if done and time.monotonic() - began + longest > budget:
                    return None
                epoch_began = time.monotonic()
                row, key = self._epoch(epoch)
                done += 1
                longest = max(longest, time.monotonic() - epoch_began)
                epochs.set_postfix(**{"train_loss": f"{row['train_loss']:.4f}", key: f"{row[key]:.4f}"})
                if self.world.main:
                    write(f"epoch {epoch}/{t.epochs}  train_loss {row['train_loss']:.4f}  "
                          f"{key} {row[key]:.4f}  ({row['train_s']:.1f}s train)")
        except NonFiniteLoss as e:
            return self._record("failed", failure=str(e))
        except (RuntimeError, MemoryError) as e:  # an allocation that failed all the same: one line, a record
            why = memory.oom_failure(e, self.setup)
            if why is None:
                raise
            if not distributed.refused_alike():  # this rank alone: the others wait in a collective, no record
                raise SeqbenchError(why) from None
            rec = self._record("failed", failure=why)
            raise SeqbenchError(f"{why}: run recorded as failed ({rec.get('path', 'no record written')})") from None
        return self._finish()

    def _epoch(self, epoch: int) -> tuple[dict, str]:
        """Train one epoch, evaluate (validation; the test split when there is none), keep the selected
        weights, step the schedule, checkpoint. Returns the history row and its selection key."""
        setup, s, sel = self.setup, self.state, self.setup.spec.monitor
        row = {"epoch": epoch, "lr": setup.optimizer.param_groups[0]["lr"]}
        row.update(self.train_epoch(epoch))
        ev = time.perf_counter()
        split = "val" if "val" in setup.loaders else "test"
        key = f"{split}_{sel}"
        with setup.evaluated_weights():  # the moving average, when the run keeps one
            row.update({f"{split}_{k}": v for k, v in setup.evaluate(split).items()})
            chosen = self.cfg.train.select == "last" or setup.monitor.improves(row[key], s.best["value"])
            if split == "val" and chosen:
                val = {k[4:]: v for k, v in row.items() if k.startswith("val_")}
                s.best = {"epoch": epoch, "value": row[key], "val": val}
                if self.world.main:
                    self.dir.save("best.pt", {"model": setup.model.state_dict(), "epoch": epoch})
        row["eval_s"] = time.perf_counter() - ev
        if setup.scheduler and not setup.per_step_schedule:
            setup.scheduler.step()
        s.history.append(row)
        prev = s.best.get("test_best")
        if split == "test" and setup.monitor.improves(row[key], prev and prev[sel]):
            s.best["test_best"] = {"epoch": epoch, sel: row[key]}  # reported apart, never selects
        s.epoch = epoch
        self.checkpoint()
        return row, key

    def train_epoch(self, epoch: int) -> dict:
        setup, t = self.setup, self.cfg.train
        setup.model.train()
        loader = setup.loaders["train"]
        if hasattr(loader, "set_epoch"):
            loader.set_epoch(epoch)
        setup.strategy.start(train=True)
        loss_sum = torch.zeros((), device=setup.device)
        n = 0
        batches = setup.batches("train", train=True)
        bar = Progress(batches, total=setup.n_batches("train"), desc=f"epoch {epoch}", quiet=self.quiet)
        start = time.perf_counter()
        for i, batch in enumerate(bar):
            loss = setup.step(batch)  # the (global) batch's mean loss
            bs = batch[1].shape[0]  # this rank's rows: the sums below are all-reduced at the end
            loss_sum += loss.detach().float() * bs
            n += bs
            faults.point("train:step")
            if (i + 1) % t.log_every == 0:  # one host sync every log_every steps, not every step
                mean = distributed.mean(loss_sum, n, self.world)
                if not math.isfinite(mean):
                    raise NonFiniteLoss(f"non-finite training loss at epoch {epoch}, step {i + 1}")
                bar.set_postfix(loss=f"{mean:.4f}")
        setup.strategy.end(train=True)
        mean = distributed.mean(loss_sum, n, self.world)  # also waits for queued GPU work: the time below is real
        n = int(distributed.all_sum(torch.tensor(float(n))).item()) if self.world.on else n
        elapsed = time.perf_counter() - start
        if not math.isfinite(mean):
            raise NonFiniteLoss(f"non-finite training loss in epoch {epoch}")
        self.state.train_time += elapsed
        self.state.train_samples += n
        return {"train_loss": mean, "train_samples": n, "train_s": elapsed}

    def _init_from(self, run_id: str) -> None:
        """Another run's selected weights (best.pt, else last.pt) before the first epoch; weights that
        do not fit this model are one line naming the first that does not."""
        state, path = self._main(lambda: RunDir(self.results, run_id).weights("cpu", what="cannot initialise from "))
        load_fitting(self.setup.model, state, f"cannot initialise from run '{run_id}'")
        self.setup.restart_average()  # the average starts from the loaded weights
        self.state.init_source = str(path)

    # ------------------------------------------------------------- finish
    def _finish(self) -> dict:
        """Select the weights, prune them (ISS), test, save example predictions, record."""
        setup = self.setup
        try:
            best = self._main(lambda: self.dir.load("best.pt", "cpu", "best checkpoint")["model"]
                              if self.dir.has("best.pt") else None)
            if best is not None:
                setup.model.load_state_dict(best)
        except Exception as e:  # truncated, overwritten, foreign: the run cannot be tested
            why = str(e) if isinstance(e, SeqbenchError) else \
                f"best checkpoint {self.dir / 'best.pt'} is unreadable ({type(e).__name__})"
            rec = self._record("failed", failure=why)
            where = rec.get("path", "the record goes to the caller")
            err = SeqbenchError(f"{why}: run recorded as failed ({where}); "
                                f"its last checkpoint {self.dir / 'last.pt'} is kept")
            err.record = rec  # the failed record, for a caller that writes records itself
            raise err from None
        if best is None and setup.ema is not None:  # no validation split: the last average is tested
            setup.use_average()
        pruning = self._prune()
        sums = setup.eval_sums("test")
        examples = setup.task.examples(setup.predict) if self.world.main else None
        if examples:
            arrays, meta = examples
            path = records.write_examples(arrays, self.run_id, self.results)
            examples = {**meta, "file": str(path.relative_to(self.results))}
        return self._record("completed", test=setup.task.metrics(sums), per_class=setup.task.per_class(sums),
                            examples=examples or None, pruning=pruning)

    def _prune(self) -> dict | None:
        """ISS: the backbone's ``coordinate`` zeroes what writes units nobody reads (the reference's structure
        coordinator); then a backbone with ``pruned(head)`` is replaced by the physically smaller model (on
        every rank alike), which the test and every measurement see; rank 0 saves it as ``pruned.pt``."""
        model, coordinate = self.setup.model, self.setup.hook("coordinate")
        coordinated = coordinate(self.setup.head) if coordinate else None
        if self.setup.hook("pruned") is None:
            return None
        before = {"params": measure.params(model), "flops_per_sample": measure.flops_per_sample(model)}
        if not prune_in_place(model):
            return None
        model.to(self.setup.device)
        if self.world.main:
            self.dir.save("pruned.pt", pruned_payload(model, self.state.best["epoch"]))
        return {"before": before, "file": str(self.dir / "pruned.pt"), "coordinated": coordinated}

    def selection(self) -> Selection:
        s, last = self.state, self.state.epoch
        if "val" not in self.setup.loaders:
            return Selection(last, records.LAST_NO_VAL_SPLIT)
        if s.best["epoch"] is None:
            return Selection(last, records.LAST_NO_FINITE_VAL)
        last = self.cfg.train.select == "last"
        return Selection(s.best["epoch"], records.LAST_REQUESTED if last else records.BEST_VAL)

    def _record(self, status: str, test=None, failure=None, per_class=None, examples=None, pruning=None) -> dict:
        """The run's record, made (measurements included) and written by rank 0, returned on every rank."""
        if not self.world.main:
            return distributed.broadcast_object(None, self.world)
        setup, s, t = self.setup, self.state, self.cfg.train
        mstart = time.perf_counter()
        meas = {}
        if status == "completed":
            x = next(iter(setup.loaders["test"]))[0]
            meas = measure.of_run(setup.model, setup.task, x, setup.device, setup.autocast, t.latency_time,
                                  s.train_samples / s.train_time if s.train_time > 0 else None, pruning)
        finished, flat = time.time(), self.cfg.flat()
        rec = records.Record(
            run_id=self.run_id, status=status, failure=failure, model=self.cfg.model, task=self.cfg.task,
            preset=self.cfg.preset, strategy=t.strategy, strategy_label=setup.strategy.label(flat), seed=t.seed,
            config=flat, config_hash=C.config_hash(flat), env=self.env,
            task_info=records.task_info(setup.spec, setup.task, setup.loaders["train"]),
            init_from={"run_id": t.init_from, "file": s.init_source} if t.init_from else None,
            metrics=records.metrics_block(s.best["val"], test, self.selection(), s.best.get("test_best"), per_class),
            history=s.history, measure=meas, examples=examples, plugins=self.plugins() or None,
            distributed=distributed.describe(self.world, t.batch_size),
            timing=records.timing(s, wall_s=s.wall_before + finished - self.piece_start, finished=finished,
                                  measure_s=time.perf_counter() - mstart),
        ).to_dict()
        if self.write_record:
            rec["path"] = str(records.write(rec, self.results))
        return distributed.broadcast_object(rec, self.world)

    def plugins(self) -> list[dict]:
        """The plugins this run's model, task and strategy came from: what a resume must load again."""
        c = self.cfg
        return registry.needed_plugins(registry.get_model(c.model), registry.get_task(c.task),
                                       registry.get_strategy(c.train.strategy))

    # --------------------------------------------------------- checkpoints
    def checkpoint(self) -> None:
        """``last.pt``: the setup's state (the plain model), every rank's random state, the loop's bookkeeping."""
        s, rng = self.state, distributed.rng_states(self.world)
        if self.world.main:
            self.dir.save("last.pt", {
                "run_id": self.run_id, "config": self.cfg.flat(), **self.setup.state_dict(), "rng": rng,
                "epoch": s.epoch, "history": s.history, "best": s.best, "init_source": s.init_source,
                "train_time": s.train_time, "train_samples": s.train_samples, "started": s.started,
                "wall_s": s.wall_before + time.time() - self.piece_start, "pieces": s.pieces,
                "world_size": self.world.size, "plugins": self.plugins(),
            })
