"""What a task declares: its contract (``TaskSpec``), loaders, how it wraps a backbone, its metrics.

A task class sets ``kind`` (one of ``registry.INPUT_KINDS``), a ``Params`` dataclass and
``presets``; an instance is built from its params and the data root and provides:

    spec() -> TaskSpec                   shapes, loss, metrics with direction, the monitored one
    use_strategy(strategy_cls)           before spec() and loaders(): a strategy may shape the data
    loaders(batch_size, eval_batch_size, seed) -> {"train", "val"?, "test"}
    wrap(backbone) -> nn.Module          encoder in, ``head`` out; forward(x, state) -> (out, state)
    loss(out, y) -> scalar Tensor        the training loss (mean)
    eval_stats(out, y) -> {name: Tensor} sums over a batch; added up over the whole split
    metrics(sums) -> {name: float}       from the summed stats; one value per declared metric
    per_class(sums) -> dict | None       a per-class breakdown for the record (dense: IoU per class)
    examples(predict) -> (arrays, meta) | None   predictions to save beside the record (dense)
    info() -> dict                       extra facts for the record (e.g. the permutation)
    example_batch(n), example_input(x, n)  inputs without data files (bench), latency inputs
    loss_terms(out, y) -> (sum, count)   the loss as a sum and what it is a mean over (distributed runs)
    latency_batches                      the batch sizes latency is measured at (default 1, 64)
    reference_model                      the model others are compared with in the report, or None
    write_fake_data(root)                (classmethod) tiny generated files in the real layout, for tests

Loaders yield tuples ``(x, y, *extra)``; training strategies may use ``extra`` (e.g. window
starts). Evaluation loaders never drop the last batch. A task without a "val" loader is tested
after every epoch and its last epoch's weights are the ones recorded (the CIFAR papers' protocol).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass(frozen=True)
class Metric:
    name: str
    higher_is_better: bool

    def improves(self, value: float, best: float | None) -> bool:
        """Whether ``value`` beats ``best`` (None: no value yet, then any finite one does)."""
        if best is None:
            return math.isfinite(value)
        return value > best if self.higher_is_better else value < best


@dataclass
class TaskSpec:
    kind: str
    d_input: int
    d_output: int
    seq_len: int
    loss: str
    metrics: list[Metric] = field(default_factory=list)
    monitor: str = ""  # the metric validation watches to pick the best epoch (a record's task_info.select)
    input_shape: tuple = ()  # one sample's input shape where it is not [seq_len, d_input] (an image: C, H, W)

    def shape_text(self) -> str:
        return "x".join(map(str, self.input_shape)) if self.input_shape else f"{self.seq_len}x{self.d_input}"

    def metric(self, name: str) -> Metric:
        return next(m for m in self.metrics if m.name == name)


class Task:
    kind: str
    presets: dict = {}
    # the model the others are compared with, seed by seed, in the report's gains table (the
    # dense kind's fcn, the image kind's resnet: the same backbone without the idea under test)
    reference_model: str | None = None
    latency_batches: tuple = (1, 64)

    def __init__(self, params, data_root):
        self.params = params
        self.data_root = data_root

    def info(self) -> dict:
        return {}

    def per_class(self, sums) -> dict | None:
        return None

    def loss_terms(self, out, y) -> tuple:
        """The training loss of a batch as (sum, count): a distributed run divides the sum over all ranks
        by the count over all ranks, so its loss is the global batch's. Default: the mean times the rows,
        count None: the loss is a mean over rows, whose global number the run knows without asking."""
        return self.loss(out, y) * y.shape[0], None

    def examples(self, predict) -> tuple[dict, dict] | None:
        return None

    def use_strategy(self, strategy_cls) -> None:
        """Called by the runner before spec() and loaders(): the training strategy may shape the
        data. Tasks with their own loaders refuse the time-series strategies."""
        if getattr(strategy_cls, "layout", None) is not None:
            from .errors import SeqbenchError
            raise SeqbenchError(f"strategy '{strategy_cls.name}' trains on windows of a time series; "
                                f"task '{self.name}' is not one (use a series task, e.g. climate-hydro)")

    @classmethod
    def write_fake_data(cls, root, seed: int = 0) -> None:
        """Write a tiny, generated copy of the task's files under ``root`` in the real layout
        (for tests; tasks that generate their data need none)."""

    def example_batch(self, batch_size: int, seed: int = 0) -> tuple:
        """``(x, y)``: ``batch_size`` random samples shaped and typed as the training batches, made
        without the data files (``seqbench bench``, the runner's AMP check). This default serves a
        classification task over ``[seq_len, d_input]`` (or ``input_shape``) inputs."""
        s = self.spec()
        g = torch.Generator().manual_seed(seed)
        shape = tuple(s.input_shape) or (s.seq_len, s.d_input)
        return torch.randn(batch_size, *shape, generator=g), torch.randint(0, s.d_output, (batch_size,), generator=g)

    def example_input(self, x, batch_size: int):
        """A batch of ``batch_size`` inputs shaped like ``x`` (for latency measurement)."""
        reps = -(-batch_size // x.shape[0])
        return x.repeat(reps, *([1] * (x.dim() - 1)))[:batch_size]


class SequenceClassifier(nn.Module):
    """Backbone over the whole sequence, linear head on the last step's output."""

    per_step = False  # True: the head reads every step

    def __init__(self, backbone, d_output: int, seq_len: int):
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(backbone.d_output, d_output)
        self.seq_len = seq_len

    def forward(self, x, state=None):
        y, state = self.backbone(x, state)
        return self.head(y if self.per_step else y[:, -1]), state

    def flops_per_sample(self) -> int:
        h = self.head
        head = 2 * h.in_features * h.out_features + h.out_features
        return self.seq_len * self.backbone.flops_per_step() + head * (self.seq_len if self.per_step else 1)


class PerStepHead(SequenceClassifier):
    """Backbone over the whole sequence, one linear head applied at every step: [B, T, d_output]."""

    per_step = True


class ClassificationTask(Task):
    """Cross-entropy over classes; accuracy selects the best checkpoint."""

    def spec(self) -> TaskSpec:
        raise NotImplementedError

    def wrap(self, backbone):
        s = self.spec()
        return SequenceClassifier(backbone, s.d_output, s.seq_len)

    def loss(self, out, y):
        return F.cross_entropy(out.float(), y)

    def eval_stats(self, out, y):
        out = out.float()
        return {
            "loss_sum": F.cross_entropy(out, y, reduction="sum"),
            "correct": (out.argmax(-1) == y).sum(),
            "count": torch.tensor(y.numel()),
        }

    def metrics(self, sums):
        n = max(float(sums["count"]), 1.0)
        return {"acc": float(sums["correct"]) / n, "loss": float(sums["loss_sum"]) / n}

    @staticmethod
    def classification_metrics():
        return [Metric("acc", True), Metric("loss", False)]
