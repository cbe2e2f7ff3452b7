"""Sequential and permuted MNIST: a 28x28 image read pixel by pixel, 784 steps x 1 input.

``smnist`` feeds pixels in raster order; ``pmnist`` applies one fixed permutation to the 784
positions, by default the bit-reversal permutation of the HiPPO reference code (bit-reverse the
index in 10 bits, keep the indices below 784, in order: the reference's ``bitreversal_permutation``
in state-spaces/s4 ``src/dataloaders/utils/permutations.py``); a seeded random permutation is an
option. Pixels are scaled to [0, 1]. Validation is a fixed 10% of the 60k training images (a random
split with its own generator seeded 42, independent of the run seed); test is the official 10k.
"""
from __future__ import annotations

import gzip
import struct
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from seqbench.config import FRACTION, POSITIVE, SEED, choice, setting
from seqbench.data import TensorLoader, check_training_part, ensure_files, take_subsets
from seqbench.errors import SeqbenchError
from seqbench.registry import SEQUENCE, register_task
from seqbench.task import ClassificationTask, TaskSpec

SPLIT_SEED = 42
FILES = {
    "train_x": "train-images-idx3-ubyte.gz",
    "train_y": "train-labels-idx1-ubyte.gz",
    "test_x": "t10k-images-idx3-ubyte.gz",
    "test_y": "t10k-labels-idx1-ubyte.gz",
}


# The checksums and mirrors torchvision publishes for MNIST (torchvision/datasets/mnist.py, MNIST.resources
# and .mirrors), written out: importing torchvision costs 1.8 s of every run's start (it imports torch._dynamo).
# tests/test_data_config.py checks them against the installed torchvision. We read the .gz files ourselves
# (torchvision's MNIST wants them unpacked next to the archives, and data roots may be read-only).
MNIST_MD5 = {
    "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}
MNIST_MIRRORS = ("https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/")


def _resources():
    return dict(MNIST_MD5), {name: [m + name for m in MNIST_MIRRORS] for name in MNIST_MD5}


def read_idx(path) -> np.ndarray:
    """Read an IDX file (gzipped or not): magic 0x00 0x00 <dtype 0x08=ubyte> <ndim>, dims, data."""
    opener = gzip.open if str(path).endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
        zero, dtype, ndim = struct.unpack(">HBB", data[:4])
        if zero != 0 or dtype != 0x08 or not 1 <= ndim <= 3:
            raise ValueError("bad IDX header")
        dims = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
        arr = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
        if arr.size != int(np.prod(dims)):
            raise ValueError(f"expected {int(np.prod(dims))} values, found {arr.size}")
        return arr.reshape(dims)
    except (OSError, EOFError, ValueError, struct.error) as e:
        raise SeqbenchError(f"MNIST file {path} is unreadable: {e}") from None


def write_idx(path, arr: np.ndarray) -> None:
    """Write a uint8 array as a gzipped IDX file (the format read_idx reads)."""
    header = struct.pack(">HBB", 0, 0x08, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + np.ascontiguousarray(arr, dtype=np.uint8).tobytes())


def bitreversal_permutation(n: int) -> np.ndarray:
    """perm[t] = bit-reversal of t in ceil(log2 n) bits, keeping values < n (the HiPPO reference's)."""
    m = max(1, int(np.ceil(np.log2(n))))
    idx = np.arange(1 << m)
    rev = np.zeros_like(idx)
    for b in range(m):
        rev |= ((idx >> b) & 1) << (m - 1 - b)
    return rev[rev < n]


def make_permutation(kind: str, n: int, seed: int) -> Optional[np.ndarray]:
    if kind == "none":
        return None
    if kind == "bitreversal":
        return bitreversal_permutation(n)
    return np.random.default_rng(seed).permutation(n)


@dataclass
class MNISTParams:
    permutation: str = choice("none", ("none", "bitreversal", "random"))
    perm_seed: int = setting(0, SEED, "for permutation=random")
    val_fraction: float = setting(0.1, FRACTION, "of the 60k training images, held out for validation")
    train_subset: Optional[int] = setting(None, POSITIVE, "first N of the (shuffled-split) training part")
    val_subset: Optional[int] = setting(None, POSITIVE)
    test_subset: Optional[int] = setting(None, POSITIVE)


MNIST_PRESETS = {
    "tiny": {
        "epochs": 1, "batch_size": 64, "eval_batch_size": 256, "latency_time": 0.2,
        "task.train_subset": 512, "task.val_subset": 256, "task.test_subset": 256,
    },
    # Minutes on a laptop CPU: 2 epochs, small batches for many updates, gradient clipping
    # against the early loss spikes of long recurrences.
    "fast": {"epochs": 2, "batch_size": 32, "eval_batch_size": 500, "lr": 1e-3, "grad_clip": 1.0},
    # HiPPO reference (hippo-code / s4 mnist setup): batch 100, Adam 1e-3, 50 epochs, no clipping.
    "paper": {"epochs": 50, "batch_size": 100, "eval_batch_size": 500, "lr": 1e-3, "grad_clip": 0.0},
}


@register_task("smnist")
class SequentialMNIST(ClassificationTask):
    # the dataset's (``pmnist`` inherits them; its bit-reversal permutation is state-spaces/s4's, above)
    paper = "LeCun, Bottou, Bengio & Haffner, Gradient-Based Learning Applied to Document Recognition, Proc. IEEE 1998"
    reference = "https://yann.lecun.com/exdb/mnist/"
    kind = SEQUENCE
    Params = MNISTParams
    presets = MNIST_PRESETS
    seq_len = 784

    def __init__(self, params, data_root):
        super().__init__(params, data_root)
        self.perm = make_permutation(params.permutation, self.seq_len, params.perm_seed)
        self._counts, self._subsets = None, {}

    def spec(self) -> TaskSpec:
        return TaskSpec(
            kind=self.kind, d_input=1, d_output=10, seq_len=self.seq_len, loss="cross_entropy",
            metrics=self.classification_metrics(), monitor="acc",
        )

    def info(self) -> dict:
        return {
            "permutation": self.params.permutation,
            "permutation_indices": None if self.perm is None else self.perm.tolist(),
            "val_split_seed": SPLIT_SEED,
            "images_used": self._counts,
            "subset_larger_than_split": self._subsets or None,
        }

    @classmethod
    def write_fake_data(cls, root, seed: int = 0, n_train: int = 300, n_test: int = 100) -> None:
        folder = root / "mnist" / "MNIST" / "raw"
        folder.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(seed)
        for split, n in (("train", n_train), ("test", n_test)):
            y = rng.integers(0, 10, n).astype(np.uint8)
            x = rng.integers(0, 40, (n, 28, 28)).astype(np.uint8)
            x[np.arange(n), y * 2 + 4, :] = 255  # a learnable stripe whose row encodes the label
            write_idx(folder / FILES[f"{split}_x"], x)
            write_idx(folder / FILES[f"{split}_y"], y)

    def _arrays(self):
        md5, urls = _resources()
        folder = self.data_root / "mnist" / "MNIST" / "raw"
        paths = ensure_files(folder, {n: md5[n] for n in FILES.values()}, urls, "MNIST")
        out = {k: read_idx(paths[v]) for k, v in FILES.items()}
        for s in ("train", "test"):
            x, y = out[f"{s}_x"], out[f"{s}_y"]
            if x.ndim != 3 or x.shape[1:] != (28, 28) or y.ndim != 1 or len(x) != len(y):
                raise SeqbenchError(f"MNIST {s} files have shapes {x.shape} and {y.shape}, expected [N,28,28] and [N]")
        return out

    def _to_seq(self, x: np.ndarray) -> torch.Tensor:
        t = torch.from_numpy(x.reshape(len(x), -1).astype(np.float32) / 255.0)
        if self.perm is not None:
            t = t[:, torch.from_numpy(self.perm)]
        return t.unsqueeze(-1).contiguous()  # [N, 784, 1]

    def loaders(self, batch_size: int, eval_batch_size: int, seed: int):
        p = self.params
        a = self._arrays()
        n = len(a["train_x"])
        n_val = int(round(n * p.val_fraction))
        check_training_part(n - n_val, batch_size, "images", f"task.val_fraction {p.val_fraction:g} of {n} images")
        order = torch.randperm(n, generator=torch.Generator().manual_seed(SPLIT_SEED)).numpy()
        tr, va = order[: n - n_val], order[n - n_val :]
        if n_val == 0:
            raise SeqbenchError(f"task.val_fraction {p.val_fraction:g} of {n} images leaves no validation image")
        self._subsets = {}
        parts = take_subsets({"train": tr, "val": va, "test": np.arange(len(a["test_x"]))}, p, "images",
                             self._subsets)
        tr, va, te = parts["train"], parts["val"], parts["test"]
        self._counts = {s: len(idx) for s, idx in parts.items()}

        def part(xs, ys, idx):
            return self._to_seq(xs[idx]), torch.from_numpy(ys[idx].astype(np.int64))

        train = part(a["train_x"], a["train_y"], tr)
        val = part(a["train_x"], a["train_y"], va)
        test = part(a["test_x"], a["test_y"], te)
        return {
            "train": TensorLoader(*train, batch_size=batch_size, shuffle=True, seed=seed),
            "val": TensorLoader(*val, batch_size=eval_batch_size),
            "test": TensorLoader(*test, batch_size=eval_batch_size),
        }


@register_task("pmnist")
class PermutedMNIST(SequentialMNIST):
    @dataclass
    class Params(MNISTParams):
        permutation: str = choice("bitreversal", ("bitreversal", "random"))
