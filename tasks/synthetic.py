"""Long-memory synthetic tasks: ``copy`` (the copying memory task) and ``adding`` (the adding problem).

Both generate their data in memory from ``task.data_seed`` (``SyntheticTask``). The layouts follow
the reference code of scoRNN (Helfrich, Willmott & Ye, ICML 2018; SpartinStuff/scoRNN
``scoRNN_copying.py``, ``scoRNN_adding.py``) and ENRNN (Helfrich & Ye, AAAI 2020; KHelfrich1/ENRNN
``ENRNN_copying.py``, ``ENRNN_adding.py``), whose generators are the same in both repositories; the
``paper`` presets are ENRNN's settings.
"""
from __future__ import annotations

import math
import zlib
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from seqbench.data import TensorLoader
from seqbench.config import POSITIVE, SEED, setting
from seqbench.errors import SeqbenchError
from seqbench.registry import SEQUENCE, register_task
from seqbench.task import Metric, PerStepHead, SequenceClassifier, Task, TaskSpec

SPLITS = ("train", "val", "test")

# Copying task alphabet (the reference's): 0 blank, 1..8 data symbols, 9 marker.
BLANK, MARKER = 0, 9
N_DATA_SYMBOLS = 8
COPY_LEN = 10  # K, symbols to copy (the reference's n_sequence)
COPY_VOCAB = 10  # one-hot input width (n_input)
COPY_CLASSES = 9  # output classes: blank and 1..8 (n_classes)


@dataclass
class SyntheticParams:
    seq_len: int = setting(200, POSITIVE, "T: copy, the delay (the sequence has T + 20 steps); adding, the length")
    n_train: int = setting(10000, POSITIVE)
    n_val: int = setting(1000, POSITIVE)
    n_test: int = setting(1000, POSITIVE)
    data_seed: int = setting(0, SEED, "generates the data; independent of the run seed")


def split_rng(task: str, data_seed: int, split: str) -> np.random.Generator:
    """The generator of one split: its own stream for every (task, data_seed, split)."""
    key = zlib.crc32(f"{task}/{split}".encode())
    return np.random.default_rng(np.random.SeedSequence([data_seed, key]))


class DecodedLoader(TensorLoader):
    """A ``TensorLoader`` over compactly stored samples; ``decode(*batch) -> (x, y)`` expands each
    batch after it is drawn (shuffling, seeding and the partial last batch are TensorLoader's)."""

    def __init__(self, *tensors, decode, batch_size: int, shuffle: bool = False, seed: int = 0):
        super().__init__(*tensors, batch_size=batch_size, shuffle=shuffle, seed=seed)
        self.decode = decode

    def __iter__(self):
        for batch in super().__iter__():
            yield self.decode(*batch)


class SyntheticTask(Task):
    """Data generated from ``data_seed`` into three splits; subclasses say how (``generate``), how a
    stored batch becomes ``(x, y)`` (``decode``) and what predicting without memory scores
    (``baseline``).

    Each split draws from its own numpy stream, ``SeedSequence([data_seed, crc32("<task>/<split>")])``
    (``split_rng``): the splits are independent, the same data_seed gives the same data on every run, and
    the run seed only changes the order of the training batches. The references have no validation split;
    ours is an extra independent stream (``paper``: of the reference's test size). Samples are stored
    compactly (the copied symbols; the adding problem's values and marker positions) and expanded batch by
    batch (``DecodedLoader``): a copying training set at T = 2000 is 200 kB of symbols but would be 1.6 GB
    of one-hot float inputs. ``info()`` carries the memoryless baseline as ``baseline_<selection metric>``
    (``baseline_loss``, ``baseline_mse``), so reports can show it beside every result."""

    kind = SEQUENCE
    Params = SyntheticParams
    min_seq_len = 1
    # the protocol's paper and code (``paper`` presets: ENRNN's settings); copy and adding inherit them
    paper = "Helfrich & Ye, Eigenvalue Normalized Recurrent Neural Networks for Short Term Memory, AAAI 2020"
    paper_url = "https://arxiv.org/abs/1911.07964"
    reference = "https://github.com/KHelfrich1/ENRNN"
    reference_generator = ""  # the reference's generator of this task (a record's task_info.reference)

    def __init__(self, params, data_root=None):
        super().__init__(params, data_root)
        p, name = params, getattr(self, "name", type(self).__name__)
        if p.seq_len < self.min_seq_len:
            raise SeqbenchError(f"{name}: task.seq_len must be >= {self.min_seq_len} (got {p.seq_len})")

    def example_batch(self, batch_size: int, seed: int = 0) -> tuple:
        """Generated as the data is (no files here): a fresh draw of ``batch_size`` samples."""
        stored = self.generate(batch_size, np.random.default_rng(seed))
        return self.decode(*stored)[:2]

    # ---- what a subclass provides
    def generate(self, n: int, rng: np.random.Generator) -> tuple:
        """``n`` samples, compactly stored (tensors with a first dimension n)."""
        raise NotImplementedError

    def decode(self, *stored) -> tuple:
        """A batch of stored samples -> ``(x, y)`` as the model and the loss see them."""
        raise NotImplementedError

    def baseline(self) -> float:
        """The selection metric of the best prediction that remembers nothing."""
        raise NotImplementedError

    # ---- shared
    def stored(self, split: str) -> tuple:
        p = self.params
        return self.generate(getattr(p, f"n_{split}"), split_rng(self.name, p.data_seed, split))

    def split_data(self, split: str) -> tuple:
        """The whole split as ``(x, y)`` (for tests and inspection)."""
        return self.decode(*self.stored(split))

    def loaders(self, batch_size: int, eval_batch_size: int, seed: int):
        return {
            split: DecodedLoader(
                *self.stored(split), decode=self.decode,
                batch_size=batch_size if split == "train" else eval_batch_size,
                shuffle=split == "train", seed=seed,
            )
            for split in SPLITS
        }

    def info(self) -> dict:
        p = self.params
        return {
            f"baseline_{self.spec().monitor}": self.baseline(),
            "data_seed": p.data_seed,
            "val_samples": p.n_val,
            "test_samples": p.n_test,
            "reference": self.reference_generator,
        }


def copy_layout(seq: torch.Tensor, T: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Symbols ``seq`` [B, K] -> input ids and targets [B, T + 2K] (the reference's copying_data):
    input = seq, T - 1 blanks, marker, K blanks; target = T + K blanks, seq."""
    B, K = seq.shape
    ids = seq.new_full((B, T + 2 * K), BLANK)
    ids[:, :K] = seq
    ids[:, K + T - 1] = MARKER
    target = seq.new_full((B, T + 2 * K), BLANK)
    target[:, T + K :] = seq
    return ids, target


# Seconds on a CPU (tests, CI): the same for both tasks.
TINY_PRESET = {
    "epochs": 1, "batch_size": 16, "eval_batch_size": 32, "latency_time": 0.2,
    "task.seq_len": 20, "task.n_train": 64, "task.n_val": 32, "task.n_test": 32,
}

COPY_PRESETS = {
    "tiny": TINY_PRESET,
    # Minutes on a CPU: T = 200 (220 steps), the reference's optimiser and batch size; 2500 updates
    # (measured here: ~20 ms per update for lstm, ~50 ms for hippo, hidden 64, 2 cores).
    "fast": {
        "epochs": 5, "batch_size": 20, "eval_batch_size": 500, "optimizer": "rmsprop", "lr": 1e-3,
        "task.seq_len": 200, "task.n_train": 10000, "task.n_val": 500, "task.n_test": 500,
    },
    # ENRNN_copying.py: T = 2000, batch 20, RMSprop 1e-3, 4000 iterations over 20000 training
    # sequences (4 passes), test 1000 evaluated in 10 batches of 100; no clipping.
    "paper": {
        "epochs": 4, "batch_size": 20, "eval_batch_size": 100, "optimizer": "rmsprop", "lr": 1e-3,
        "momentum": 0.0, "weight_decay": 0.0, "grad_clip": 0.0, "schedule": "none",
        "task.seq_len": 2000, "task.n_train": 20000, "task.n_val": 1000, "task.n_test": 1000,
    },
}


@register_task("copy")
class CopyTask(SyntheticTask):
    """The copying memory task (Arjovsky, Shah & Bengio 2016): recall K = 10 symbols after a delay of T
    blanks; per-step cross-entropy.

    The reference's ``copying_data(T, seq)`` (``copy_layout``): K symbols drawn uniformly from 1..8
    (``np.random.randint(1, high=9)``), then T - 1 blanks (0), the marker 9, then K blanks: length
    T + 2K. The target is T + K blanks, then the K symbols: the marker sits at step K + T - 1 (0-based)
    and the symbols are due at steps T + K .. T + 2K - 1, starting the step after the marker. (The
    docstring example in both reference files shows T blanks before the marker and the copy starting at
    the marker's own step; the code, which produced the published results, has T - 1 blanks, and we
    follow the code.) Inputs are one-hot over the 10 input symbols (``tf.one_hot(x, 10)``); the output
    has 9 classes, blank and 1..8 (``n_classes = 9``: the marker is never a target). A linear head reads
    every step (``PerStepHead``); the loss is the cross-entropy averaged over all T + 2K steps and all
    sequences (``reduce_mean(sparse_softmax_cross_entropy_with_logits)``). The memoryless baseline (blank
    with certainty until the copy, then uniform over the 8 symbols) scores K ln 8 / (T + 2K), the
    reference's ``baseline``."""

    presets = COPY_PRESETS
    reference_generator = "KHelfrich1/ENRNN ENRNN_copying.py copying_data (= SpartinStuff/scoRNN scoRNN_copying.py)"

    @property
    def length(self) -> int:
        return self.params.seq_len + 2 * COPY_LEN

    def spec(self) -> TaskSpec:
        return TaskSpec(
            kind=self.kind, d_input=COPY_VOCAB, d_output=COPY_CLASSES, seq_len=self.length,
            loss="cross_entropy", metrics=[Metric("loss", False), Metric("acc_last10", True)], monitor="loss",
        )

    def generate(self, n, rng):
        seq = rng.integers(1, N_DATA_SYMBOLS + 1, size=(n, COPY_LEN), dtype=np.uint8)
        return (torch.from_numpy(seq),)

    def decode(self, seq):
        ids, target = copy_layout(seq.long(), self.params.seq_len)
        return F.one_hot(ids, COPY_VOCAB).float(), target

    def baseline(self) -> float:
        return COPY_LEN * math.log(N_DATA_SYMBOLS) / self.length

    def wrap(self, backbone):
        return PerStepHead(backbone, COPY_CLASSES, self.length)

    def loss(self, out, y):
        return F.cross_entropy(out.float().reshape(-1, out.shape[-1]), y.reshape(-1))

    def eval_stats(self, out, y):
        out = out.float()
        last_out, last_y = out[:, -COPY_LEN:], y[:, -COPY_LEN:]
        return {
            "loss_sum": F.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1), reduction="sum"),
            "steps": torch.tensor(y.numel()),
            "correct_last": (last_out.argmax(-1) == last_y).sum(),
            "count_last": torch.tensor(last_y.numel()),
        }

    def metrics(self, sums):
        return {
            "loss": float(sums["loss_sum"]) / max(float(sums["steps"]), 1.0),
            "acc_last10": float(sums["correct_last"]) / max(float(sums["count_last"]), 1.0),
        }


ADDING_PRESETS = {
    "tiny": TINY_PRESET,
    # Minutes on a CPU: scoRNN_adding.py's T = 200 and its LSTM optimiser (Adam 1e-3,
    # batch 50) on a fifth of its training set: 2000 updates (~25-50 ms each here, hidden 64).
    "fast": {
        "epochs": 5, "batch_size": 50, "eval_batch_size": 500, "optimizer": "adam", "lr": 1e-3,
        "task.seq_len": 200, "task.n_train": 20000, "task.n_val": 1000, "task.n_test": 1000,
    },
    # ENRNN_adding.py: T = 750, batch 50, 6 epochs of 100k (reshuffled every epoch), test 10k,
    # RMSprop 1e-4; no clipping.
    "paper": {
        "epochs": 6, "batch_size": 50, "eval_batch_size": 1000, "optimizer": "rmsprop", "lr": 1e-4,
        "momentum": 0.0, "weight_decay": 0.0, "grad_clip": 0.0, "schedule": "none",
        "task.seq_len": 750, "task.n_train": 100000, "task.n_val": 10000, "task.n_test": 10000,
    },
}


@register_task("adding")
class AddingTask(SyntheticTask):
    """The adding problem (Hochreiter & Schmidhuber 1997; Le, Jaitly & Hinton 2015): the sum of the two
    marked values of a long sequence; MSE.

    The reference's ``Generate_Data(size, length)``: T steps of 2 channels, values U[0, 1) and a marker
    channel with exactly two ones, one at a position uniform in [0, h) and one uniform in [h, T) with
    h = floor((T - 1) / 2). The target is the sum of the two marked values, read by a linear head from
    the last step (``SequenceClassifier`` with one output). Predicting 1 always scores the variance of a
    sum of two U(0, 1), 2/12 = 1/6 ~ 0.167."""

    presets = ADDING_PRESETS
    min_seq_len = 3  # the first marker's range [0, floor((T-1)/2)) must not be empty
    reference_generator = "KHelfrich1/ENRNN ENRNN_adding.py Generate_Data (= SpartinStuff/scoRNN scoRNN_adding.py)"

    def spec(self) -> TaskSpec:
        return TaskSpec(
            kind=self.kind, d_input=2, d_output=1, seq_len=self.params.seq_len,
            loss="mse", metrics=[Metric("mse", False)], monitor="mse",
        )

    def generate(self, n, rng):
        T = self.params.seq_len
        values = rng.random((n, T), dtype=np.float32)
        half = (T - 1) // 2
        pos = np.stack([rng.integers(0, half, n), rng.integers(half, T, n)], axis=1)
        values, pos = torch.from_numpy(values), torch.from_numpy(pos.astype(np.int64))
        return values, pos, values.gather(1, pos).sum(1)

    def decode(self, values, pos, target):
        marker = torch.zeros_like(values).scatter_(1, pos, 1.0)
        return torch.stack([values, marker], dim=-1), target

    def baseline(self) -> float:
        return 1.0 / 6.0  # E[(U1 + U2 - 1)^2] = Var(U1 + U2) = 2/12

    def wrap(self, backbone):
        return SequenceClassifier(backbone, 1, self.params.seq_len)

    def loss(self, out, y):
        return F.mse_loss(out.float().reshape(-1), y.float())

    def eval_stats(self, out, y):
        return {
            "sq_sum": ((out.float().reshape(-1) - y.float()) ** 2).sum(),
            "count": torch.tensor(y.numel()),
        }

    def metrics(self, sums):
        return {"mse": float(sums["sq_sum"]) / max(float(sums["count"]), 1.0)}
