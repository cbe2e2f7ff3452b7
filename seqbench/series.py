"""Time-series tasks: drivers x[t] -> targets y[t] over one long chronological record.

A series task only loads its record (``load_frame`` -> ``SeriesFrame``); this base does the rest,
the way the MPTT paper's reference code does it (XuShaoming/Message-Propagation-Through-Time,
``scripts/Train_*_demo.py`` and ``preprocess.py``):

- chronological splits: the first ``train_frac`` of the record trains, the next ``val_frac``
  validates, the rest tests (reference: 50 / 10 / 40);
- standardisation of x and y with mean and standard deviation fit on the training part only;
- training windows of ``window`` steps every ``stride`` steps, plus one window ending at the last
  step when the stride does not reach it (the reference's ``SampleData``);
- the training strategy (``seqbench.strategy``) decides the layout of the training batches, the
  inference mode of validation and test, and whether one more input channel is added (the
  observed previous target for teacher forcing, the window's first target for conditional
  mini-batches), see ``use_strategy``;
- metrics in the target's original units: RMSE and the Nash-Sutcliffe efficiency
  NSE = 1 - sum (y - yhat)^2 / sum (y - mean y)^2 over every evaluated step (with windowed
  inference, overlapping steps count once per window, as in the reference); ``loss`` is the MSE
  of the standardised values. The training loss is the standardised MSE (the reference divides
  the sum of squares by n + 1; we use the plain mean).

Batches are ``(x, y, starts, ids)``: the windows' first steps in the split and their indices.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .data import TensorLoader
from .config import FRACTION, POSITIVE, check_split, setting
from .errors import SeqbenchError
from . import registry
from .registry import SERIES
from .task import Metric, PerStepHead, Task, TaskSpec


@dataclass
class SeriesFrame:
    x: np.ndarray  # [T, D] drivers, chronological, no NaN
    y: np.ndarray  # [T, K] targets, no NaN
    feature_names: list
    target_names: list
    target_units: list
    dates: np.ndarray | None = None  # datetime64[D], length T


@dataclass
class SeriesParams:
    window: int = setting(366, POSITIVE, "L, steps per training window")
    stride: int = setting(183, POSITIVE, "between window starts (L / 2 in the reference)")
    train_frac: float = setting(0.5, FRACTION, "the first part of the record, for training")
    val_frac: float = setting(0.1, FRACTION, "the part after it, for validation; the rest is the test part")

    def validate(self):
        check_split(self, "train_frac", "val_frac", "the rest is the test part")


def window_starts(n: int, window: int, stride: int) -> np.ndarray:
    """Starts of the windows of ``window`` steps every ``stride`` steps in a series of ``n``, plus
    one that ends at the last step if the stride misses it (the reference's SampleData)."""
    if n < window:
        raise SeqbenchError(f"a split of {n} steps is shorter than one window of {window}; lower task.window")
    starts = list(range(0, n - window + 1, stride))
    if starts[-1] != n - window:
        starts.append(n - window)
    return np.asarray(starts, dtype=np.int64)


class SeriesTask(Task):
    """Base of the series tasks. A subclass gives ``load_frame``; it declares its drivers and targets
    (``features``, ``targets``, or ``declared()``) when it can, so that ``spec()`` reads no data (a
    listing, a bench); the frame it loads must match them. Every part of the record (train, val, test)
    must hold at least one window: fewer steps refuse the run in one line."""

    kind = SERIES
    Params = SeriesParams
    features: tuple = ()  # the drivers' names, as the frame has them
    targets: tuple = ()  # the targets' names

    def load_frame(self) -> SeriesFrame:
        raise NotImplementedError

    def declared(self) -> tuple[list, list] | None:
        """(feature names, target names) as declared, or None when only the data knows them."""
        return (list(self.features), list(self.targets)) if self.features and self.targets else None

    # ------------------------------------------------------------- strategy
    def use_strategy(self, strategy_cls) -> None:
        if getattr(strategy_cls, "layout", None) is None:
            series = sorted(n for n, e in registry.strategies().items() if getattr(e.cls, "layout", None))
            raise SeqbenchError(f"task '{self.name}' is a time series: choose a series strategy "
                                f"({', '.join(series)}), not '{strategy_cls.name}'")
        self.strategy_cls = strategy_cls

    def _strategy(self):
        if getattr(self, "strategy_cls", None) is None:
            self.strategy_cls = registry.get_strategy("rmb-ssif").cls
        return self.strategy_cls

    # ----------------------------------------------------------------- data
    def _data(self) -> dict:
        if getattr(self, "_cache", None) is not None:
            return self._cache
        p = self.params
        f = self.load_frame()
        x, y = np.asarray(f.x, np.float64), np.asarray(f.y, np.float64)
        if x.ndim != 2 or y.ndim != 2 or len(x) != len(y):
            raise SeqbenchError(f"task '{self.name}': drivers {x.shape} and targets {y.shape} do not line up")
        if not (np.isfinite(x).all() and np.isfinite(y).all()):
            raise SeqbenchError(f"task '{self.name}': the record has missing or non-finite values")
        dec = self.declared()
        if dec is not None and (list(f.feature_names), list(f.target_names)) != dec:
            raise SeqbenchError(f"task '{self.name}': the data has drivers {f.feature_names} and targets "
                                f"{f.target_names}, the task declares {dec[0]} and {dec[1]}")
        n = len(x)
        a, b = int(n * p.train_frac), int(n * p.train_frac) + int(n * p.val_frac)
        bounds = {"train": (0, a), "val": (a, b), "test": (b, n)}
        for split, (lo, hi) in bounds.items():
            if hi - lo < p.window:
                raise SeqbenchError(f"task.train_frac {p.train_frac:g} and task.val_frac {p.val_frac:g} of {n} steps "
                                    f"leave {hi - lo} for the {split} part, fewer than one window (task.window "
                                    f"{p.window}): every part must hold a window")
        xm, xs = x[:a].mean(0), x[:a].std(0)
        ym, ys = y[:a].mean(0), y[:a].std(0)
        xs[xs == 0], ys[ys == 0] = 1.0, 1.0  # a constant channel stays 0 (as sklearn's StandardScaler)
        extra = self._strategy().extra_input
        splits = {}
        for split, (lo, hi) in bounds.items():
            xz = (x[lo:hi] - xm) / xs
            yz = (y[lo:hi] - ym) / ys
            if extra == "previous_target":  # y[t-1]; the first step gets y[0] (the reference's label_shift)
                prev = np.concatenate([yz[:1, :1], yz[:-1, :1]])
                xz = np.concatenate([xz, prev], 1)
            elif extra == "initial_target":  # filled per window
                xz = np.concatenate([xz, np.repeat(yz[:1, :1], len(xz), 0)], 1)
            splits[split] = (torch.as_tensor(xz, dtype=torch.float32), torch.as_tensor(yz, dtype=torch.float32))
        self._cache = {"frame": f, "splits": splits, "bounds": bounds,
                       "y_mean": torch.as_tensor(ym), "y_std": torch.as_tensor(ys)}
        return self._cache

    def window_starts(self, split: str) -> np.ndarray:
        x = self._data()["splits"][split][0]
        return window_starts(len(x), self.params.window, self.params.stride)

    def _windows(self, split: str, starts) -> dict:
        x, y = self._data()["splits"][split]
        L = self.params.window
        idx = torch.as_tensor(starts)[:, None] + torch.arange(L)
        xw, yw = x[idx], y[idx]
        if self._strategy().extra_input == "initial_target":  # the reference's init_one_feat
            xw[..., -1] = yw[:, :1, 0]
        return {"x": xw, "y": yw, "starts": torch.as_tensor(starts), "ids": torch.arange(len(starts))}

    def train_windows(self) -> dict:
        if getattr(self, "_train_windows", None) is None:
            self._train_windows = self._windows("train", self.window_starts("train"))
        return self._train_windows

    def loaders(self, batch_size: int, eval_batch_size: int, seed: int) -> dict:
        s = self._strategy()
        L = self.params.window
        n_train = len(self._data()["splits"]["train"][0])
        if s.layout == "windows":
            w = self.train_windows()
            train = TensorLoader(w["x"], w["y"], w["starts"], w["ids"], batch_size=batch_size, shuffle=True, seed=seed)
        elif s.layout == "stream":  # B columns of consecutive windows; batch j holds window j of each
            B = max(1, min(batch_size, n_train // L))
            per = n_train // (B * L)
            starts = (torch.arange(per)[:, None] * L + torch.arange(B)[None, :] * per * L).reshape(-1)
            w = self._windows("train", starts.numpy())
            train = TensorLoader(w["x"], w["y"], w["starts"], w["ids"], batch_size=B)
        elif s.layout == "sequence":  # consecutive non-overlapping windows, in order
            w = self._windows("train", np.arange(0, n_train - L + 1, L))
            train = TensorLoader(w["x"], w["y"], w["starts"], w["ids"], batch_size=batch_size)
        else:
            raise SeqbenchError(f"unknown layout '{s.layout}' of strategy '{s.name}'")
        out = {"train": train}
        for split in ("val", "test"):
            if s.inference == "windows":
                w = self._windows(split, self.window_starts(split))
                out[split] = TensorLoader(w["x"], w["y"], w["starts"], w["ids"], batch_size=eval_batch_size)
            else:  # sequential / conditional: the whole split as one sequence
                x, y = self._data()["splits"][split]
                z = torch.zeros(1, dtype=torch.long)
                out[split] = TensorLoader(x[None], y[None], z, z, batch_size=1)
        return out

    # ------------------------------------------------------------ contract
    def spec(self) -> TaskSpec:
        """Shapes from the declared drivers and targets (plus the strategy's extra input), without reading
        data; from the data for a task that declares none."""
        dec = self.declared()
        if dec is not None:
            d_input, d_output = len(dec[0]) + (self._strategy().extra_input is not None), len(dec[1])
        else:
            x, y = self._data()["splits"]["train"]
            d_input, d_output = x.shape[1], y.shape[1]
        return TaskSpec(
            kind=SERIES, d_input=d_input, d_output=d_output, seq_len=self.params.window, loss="mse",
            metrics=[Metric("rmse", False), Metric("nse", True), Metric("loss", False)], monitor="rmse",
        )

    def example_batch(self, batch_size: int, seed: int = 0) -> tuple:
        s = self.spec()
        g = torch.Generator().manual_seed(seed)
        return (torch.randn(batch_size, s.seq_len, s.d_input, generator=g),
                torch.randn(batch_size, s.seq_len, s.d_output, generator=g))

    def wrap(self, backbone):
        s = self.spec()
        model = PerStepHead(backbone, s.d_output, s.seq_len)
        with torch.no_grad():  # the reference GRU's densor init (models.py init_weights)
            model.head.weight.uniform_(-0.1, 0.1)
            model.head.bias.zero_()
        return model

    def example_input(self, x, batch_size: int):
        """Latency is per window of ``window`` steps (sequential inference would feed a whole split)."""
        return super().example_input(x[:, : self.params.window], batch_size)

    def loss(self, out, y):
        return F.mse_loss(out.float(), y)

    def eval_stats(self, out, y):
        d = self._data()
        m, sd = d["y_mean"].to(y.device), d["y_std"].to(y.device)
        z = out.double() - y.double()
        yo = y.double() * sd + m  # original units
        err = z * sd
        return {
            "sse": (err**2).sum(), "sse_z": (z**2).sum(), "sum_y": yo.sum(), "sum_y2": (yo**2).sum(),
            "count": torch.tensor(y.numel(), dtype=torch.float64),
        }

    def metrics(self, sums):
        n = max(float(sums["count"]), 1.0)
        sse = float(sums["sse"])
        sst = float(sums["sum_y2"]) - float(sums["sum_y"]) ** 2 / n
        return {"rmse": (sse / n) ** 0.5, "nse": 1.0 - sse / sst if sst > 0 else float("nan"),
                "loss": float(sums["sse_z"]) / n}

    def info(self) -> dict:
        d = self._data()
        f, s = d["frame"], self._strategy()
        return {
            "features": list(f.feature_names), "targets": list(f.target_names), "units": list(f.target_units),
            "split_steps": {k: hi - lo for k, (lo, hi) in d["bounds"].items()},
            "train_windows": int(len(self.window_starts("train"))),
            "layout": s.layout, "inference": s.inference, "extra_input": s.extra_input,
            "y_mean": d["y_mean"].tolist(), "y_std": d["y_std"].tolist(),
        }
