"""CIFAR-10 / CIFAR-100 (Krizhevsky 2009): ``cifar10`` and ``cifar100`` for the image backbones (the
DIANet code's protocol, gbup-group/DIANet ``cifar.py``, ``run_code.py``), and ``scifar``, the images
read pixel by pixel, for every recurrent model (s4's sCIFAR, state-spaces/s4
``src/dataloaders/basic.py``, and LRA's Image task). The data (``CIFARData``): the official
python-version files, or a checksummed subset of real CIFAR-10 images (``task.source``).
"""
from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from seqbench.config import POSITIVE, choice, reals, setting
from seqbench.data import check_training_part, ensure_archive, ensure_files, take_subsets, verify_enabled
from seqbench.errors import SeqbenchError
from seqbench.image import ImageLoader, ImageTask, normalize, random_crop_flip, split_indices
from seqbench.registry import SEQUENCE, register_task
from seqbench.task import ClassificationTask, TaskSpec

# DIANet's cifar.py normalisation (train and test).
DIANET_MEAN, DIANET_STD = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)
# s4 src/dataloaders/basic.py CIFAR10 (sCIFAR) and its grayscale (LRA Image) normalisation.
S4_MEAN, S4_STD = (0.4914, 0.4822, 0.4465), (0.247, 0.243, 0.261)
GRAY_MEAN, GRAY_STD = 122.6 / 255.0, 61.0 / 255.0
SUBSET_FILES = {"cifar10_subset.npz": "c9956a7e382f5724ad690131c521ba41fa16f8906da581bfee962aef979e69ec"}
SUBSET_META_MD5 = "5ff9c542aee3614f3951f8cda6e48888"  # batches.meta: the official file, torchvision's md5

# DIANet README, CIFAR-100 top-1 (mean of 5 runs, best test accuracy over epochs): the `paper`
# column of the report for (model, preset) pairs that reproduce those runs.
DIANET_CIFAR100 = {"resnet:paper": 0.7343, "dia-resnet:paper": 0.7667,
                   "resnet:paper-preact": 0.7653, "dia-resnet:paper-preact": 0.7820}


def _torchvision_cls(name: str):
    from torchvision.datasets import CIFAR10, CIFAR100

    return {"cifar10": CIFAR10, "cifar100": CIFAR100}[name]


def read_batch(path: Path, what: str) -> tuple[np.ndarray, np.ndarray]:
    """One official batch file: images [N, 3, 32, 32] uint8 and labels [N] (``labels`` in CIFAR-10,
    ``fine_labels`` in CIFAR-100), unpickled as torchvision does (latin-1 keys)."""
    try:
        with open(path, "rb") as f:
            d = pickle.load(f, encoding="latin1")
        data = np.asarray(d["data"], dtype=np.uint8)
        labels = np.asarray(d["labels"] if "labels" in d else d["fine_labels"], dtype=np.int64)
        if data.ndim != 2 or data.shape[1] != 3072 or len(data) != len(labels):
            raise ValueError(f"data {data.shape}, labels {labels.shape}; expected [N, 3072] and [N]")
    except (OSError, EOFError, pickle.UnpicklingError, KeyError, ValueError, TypeError, AttributeError) as e:
        raise SeqbenchError(f"{what} file {path} is unreadable: {type(e).__name__}: {e}") from None
    return data.reshape(-1, 3, 32, 32), labels


@dataclass
class CIFARParams:
    source: str = choice("official", ("official", "subset"),
                          "official: the full python-version files; subset: the real 6,102-image CIFAR-10 subset")
    val_fraction: float = setting(0.1, reals(0.0, 1.0, hi_open=True, what="a fraction"),
                                  "of the training images, held out for validation; 0: none (the papers' protocol)")
    augment: bool = True  # training batches: random crop (padding 4) + horizontal flip
    train_subset: Optional[int] = setting(None, POSITIVE, "first N of the (split) training images (tiny runs)")
    val_subset: Optional[int] = setting(None, POSITIVE)
    test_subset: Optional[int] = setting(None, POSITIVE)


_SGD = {"optimizer": "sgd", "momentum": 0.9, "lr": 0.1, "batch_size": 128, "eval_batch_size": 500}
CIFAR_PRESETS = {
    "tiny": {"epochs": 1, "batch_size": 16, "eval_batch_size": 64, "latency_time": 0.1,
             "task.train_subset": 64, "task.val_subset": 32, "task.test_subset": 32},
    # About 15 minutes per 20-layer model on one core of this project's CPU (41 s per epoch measured):
    # the real subset, DIANet's optimiser (SGD 0.1, momentum 0.9, batch 128), x0.1 at 1/2 and 3/4 of
    # the epochs (He et al.'s CIFAR schedule), weight decay 5e-4 (DIANet's cifar.py default).
    "fast": {**_SGD, "task.source": "subset", "epochs": 20, "weight_decay": 5e-4, "schedule": "multistep",
             "milestones": "10,15", "lr_gamma": 0.1},
    # DIANet (run_code.py): ResNet-164, 180 epochs, x0.1 at 60 and 120, wd 1e-4, no validation split.
    "paper": {**_SGD, "epochs": 180, "weight_decay": 1e-4, "schedule": "multistep", "milestones": "60,120",
              "lr_gamma": 0.1, "task.val_fraction": 0.0},
    # PreResNet-164 (run_code.py): 164 epochs, x0.1 at 81 and 122.
    "paper-preact": {**_SGD, "epochs": 164, "weight_decay": 1e-4, "schedule": "multistep", "milestones": "81,122",
                     "lr_gamma": 0.1, "task.val_fraction": 0.0},
}


class CIFARData:
    """The CIFAR readers and the split, for the image and the sequence tasks alike (``arrays``,
    ``loaders``); subclasses say how a batch of uint8 images becomes the model's input. Sources
    (``task.source``): ``official`` (``_official``) and ``subset`` (``_subset``)."""

    # the dataset's, for ``cifar10``, ``cifar100`` and ``scifar`` alike
    paper = "Krizhevsky, Learning Multiple Layers of Features from Tiny Images, tech. report, U. Toronto 2009"
    reference = "https://www.cs.toronto.edu/~kriz/cifar.html"
    dataset = "cifar10"  # which official files

    def _official(self) -> dict:
        """The python-version batch files in torchvision's layout, ``<data root>/cifar/
        cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}`` and ``cifar/cifar-100-python/
        {train, test, meta}``, each checked against torchvision's published md5 (``CIFAR10.train_list``,
        ...) before it is read; when files are missing and downloads are allowed, torchvision's archive
        (``CIFAR10.url``, ``tgz_md5``) is fetched and unpacked there. 50,000 training, 10,000 test
        images."""
        tv = _torchvision_cls(self.dataset)
        folder = Path(self.data_root) / "cifar" / tv.base_folder
        files = {name: md5 for name, md5 in tv.train_list + tv.test_list}
        files[tv.meta["filename"]] = tv.meta["md5"]
        what = "CIFAR-10" if self.dataset == "cifar10" else "CIFAR-100"
        paths = ensure_archive(folder, files, tv.url, tv.filename, tv.tgz_md5, what)
        parts = {s: [read_batch(paths[n], what) for n, _ in lst]
                 for s, lst in (("train", tv.train_list), ("test", tv.test_list))}
        out = {}
        for s, batches in parts.items():
            out[f"{s}_x"] = np.concatenate([b[0] for b in batches])
            out[f"{s}_y"] = np.concatenate([b[1] for b in batches])
        self._source_info = {"source": "official", "folder": str(folder), "md5_checked": verify_enabled()}
        return out

    def _subset(self) -> dict:
        """CIFAR-10 only: ``<data root>/cifar10-subset/cifar10_subset.npz``, 6,102 real CIFAR-10 images,
        the first 1,017 of each official batch file (5,085 training, 1,017 test; the arrays in the
        official row layout, 1024 R, 1024 G, 1024 B values per image), with the official
        ``batches.meta``. No published checksum covers a subset: the npz is pinned by its SHA-256 here
        and the record says which source and how many images a run used; the report marks subset rows.
        Numbers on the subset are not comparable with published CIFAR-10 results."""
        if self.dataset != "cifar10":
            raise SeqbenchError(f"task.source=subset exists for CIFAR-10 only ({self.name} has no offline subset); "
                                f"use task.source=official")
        folder = Path(self.data_root) / "cifar10-subset"
        ensure_files(folder, {"batches.meta": SUBSET_META_MD5}, {}, "CIFAR-10 subset")
        path = ensure_files(folder, SUBSET_FILES, {}, "CIFAR-10 subset", algo="sha256")["cifar10_subset.npz"]
        try:
            with np.load(path, allow_pickle=False) as z:
                out = {f"{s}_x": np.asarray(z[f"{s}_data"], np.uint8) for s in ("train", "test")}
                out.update({f"{s}_y": np.asarray(z[f"{s}_labels"], np.int64) for s in ("train", "test")})
        except (OSError, ValueError, KeyError) as e:
            raise SeqbenchError(f"CIFAR-10 subset file {path} is unreadable: {type(e).__name__}: {e}") from None
        for s in ("train", "test"):
            x, y = out[f"{s}_x"], out[f"{s}_y"]
            if x.ndim != 2 or x.shape[1] != 3072 or len(x) != len(y):
                raise SeqbenchError(
                    f"CIFAR-10 subset file {path}: {s} arrays {x.shape}, {y.shape}; expected [N, 3072], [N]")
            out[f"{s}_x"] = x.reshape(-1, 3, 32, 32)
        self._source_info = {"source": "subset", "file": str(path), "sha256_checked": verify_enabled(),
                             "note": "real CIFAR-10 images, the first 1,017 of each official batch file; "
                                     "not comparable with published full-CIFAR results"}
        return out

    def arrays(self) -> dict:
        if getattr(self, "_arrays", None) is None:
            self._arrays = self._subset() if self.params.source == "subset" else self._official()
            n_classes = getattr(self, "num_classes", 10 if self.dataset == "cifar10" else 100)
            for s in ("train", "test"):
                y = self._arrays[f"{s}_y"]
                if len(y) and (y.min() < 0 or y.max() >= n_classes):
                    raise SeqbenchError(f"{self.name}: {s} labels outside 0..{n_classes - 1}")
        return self._arrays

    def loaders(self, batch_size: int, eval_batch_size: int, seed: int):
        """Validation is ``task.val_fraction`` of the training images (default 0.1, i.e. 45k / 5k as in
        s4), split off by its own generator seeded 42 (independent of the run seed). ``val_fraction = 0``
        is the DIANet protocol: train on every training image, no validation; the runner then records the
        test metrics of the last epoch and, separately named, the best test accuracy over epochs (what
        DIANet reports, "best acc" of its ``cifar.py``, mean of 5 runs)."""
        p, a = self.params, self.arrays()
        n = len(a["train_x"])
        tr, va = split_indices(n, p.val_fraction)
        check_training_part(len(tr), batch_size, "images", f"task.val_fraction {p.val_fraction:g} of {n} images")
        self._subsets = {}
        parts = take_subsets({"train": tr, "val": va, "test": torch.arange(len(a["test_x"]))}, p, "images",
                             self._subsets)
        tr, va, te = parts["train"], parts["val"], parts["test"]
        x_train, y_train = torch.from_numpy(a["train_x"]), torch.from_numpy(a["train_y"])
        x_test, y_test = torch.from_numpy(a["test_x"]), torch.from_numpy(a["test_y"])
        self._counts = {s: len(idx) for s, idx in parts.items()}
        out = {"train": ImageLoader(x_train[tr], y_train[tr], batch_size, self.train_transform, shuffle=True,
                                    seed=seed),
               "test": ImageLoader(x_test[te], y_test[te], eval_batch_size, self.eval_transform)}
        if len(va):
            out["val"] = ImageLoader(x_train[va], y_train[va], eval_batch_size, self.eval_transform)
        elif p.val_fraction > 0:
            raise SeqbenchError(f"{self.name}: task.val_fraction {p.val_fraction:g} leaves no validation image")
        return out

    def info(self) -> dict:
        src = dict(getattr(self, "_source_info", {"source": self.params.source}))
        counts = getattr(self, "_counts", None)
        out = {"data_source": src, "images_used": counts, "val_split_seed": 42,
               "subset_larger_than_split": getattr(self, "_subsets", None) or None,
               "protocol": "validation split" if self.params.val_fraction > 0 else
               "no validation (the papers' protocol): last-epoch test metrics, best test over epochs recorded apart"}
        if src.get("source") == "subset" and counts:
            out["data"] = f"subset {counts['train']}/{counts['val']}/{counts['test']}"
        return out

    @classmethod
    def write_fake_data(cls, root, seed: int = 0) -> None:
        write_fake_cifar(Path(root), seed)


class _CIFARImages(CIFARData, ImageTask):
    """CIFAR as images: training batches get RandomCrop(32, padding 4) and a horizontal flip
    (``task.augment``); every image is normalised with the DIANet code's mean (0.4914, 0.4822, 0.4465)
    and std (0.2023, 0.1994, 0.2010)."""

    Params = CIFARParams
    presets = CIFAR_PRESETS
    mean, std = DIANET_MEAN, DIANET_STD


@register_task("cifar10")
class CIFAR10(_CIFARImages):
    """CIFAR-10: 32x32 colour images, 10 classes."""

    dataset, num_classes = "cifar10", 10


@register_task("cifar100")
class CIFAR100(_CIFARImages):
    """CIFAR-100: 32x32 colour images, 100 (fine) classes."""

    dataset, num_classes = "cifar100", 100

    def info(self) -> dict:
        return {**super().info(), "paper_acc": DIANET_CIFAR100,
                "paper_source": "DIANet README (gbup-group/DIANet), CIFAR-100 top-1, mean of 5 runs, "
                                "best test accuracy over epochs"}


@dataclass
class SCIFARParams(CIFARParams):
    augment: bool = False  # s4's sCIFAR default
    gray: bool = False  # LRA Image: 1024 x 1 grayscale instead of 1024 x 3 colour


SCIFAR_PRESETS = {
    "tiny": {"epochs": 1, "batch_size": 16, "eval_batch_size": 64, "latency_time": 0.1,
             "task.train_subset": 64, "task.val_subset": 32, "task.test_subset": 32},
    # the real subset; Adam and clipping as the MNIST fast preset
    "fast": {"task.source": "subset", "epochs": 10, "batch_size": 32, "eval_batch_size": 256, "lr": 1e-3,
             "grad_clip": 1.0},
}


@register_task("scifar")
class SequentialCIFAR(CIFARData, ClassificationTask):
    """CIFAR-10 read pixel by pixel: 1024 steps x 3 channels (or x 1 with ``task.gray``) → 10 classes.

    s4's sCIFAR: each image a sequence of 1024 steps in raster order (step h * 32 + w) with the 3
    channels as features, normalised with s4's mean (0.4914, 0.4822, 0.4465) and std (0.247, 0.243,
    0.261). ``task.gray=true`` is LRA's Image task (Tay et al. 2021, s4's ``grayscale``): PIL's luma
    L = (19595 R + 38470 G + 7471 B + 2^15) >> 16 (ITU-R 601-2, rounded as PIL does), normalised with
    mean 122.6/255 and std 61.0/255, 1024 steps x 1. No augmentation (s4's default)."""

    kind = SEQUENCE
    Params = SCIFARParams
    presets = SCIFAR_PRESETS
    dataset, num_classes, seq_len = "cifar10", 10, 1024

    def spec(self) -> TaskSpec:
        return TaskSpec(kind=self.kind, d_input=1 if self.params.gray else 3, d_output=10, seq_len=self.seq_len,
                        loss="cross_entropy", metrics=self.classification_metrics(), monitor="acc")

    def _to_seq(self, x: torch.Tensor) -> torch.Tensor:
        if self.params.gray:
            r, g, b = x[:, 0].int(), x[:, 1].int(), x[:, 2].int()
            lum = ((r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16).float() / 255.0
            return ((lum - GRAY_MEAN) / GRAY_STD).reshape(len(x), 1024, 1)
        return normalize(x, S4_MEAN, S4_STD).flatten(2).transpose(1, 2).contiguous()  # [B, 1024, 3], step h*32+w

    def train_transform(self, x, g):
        return self._to_seq(random_crop_flip(x, g) if self.params.augment else x)

    def eval_transform(self, x, g=None):
        return self._to_seq(x)

    def info(self) -> dict:
        return {**super().info(), "layout": "raster order, step h*32+w", "gray": self.params.gray}


# --------------------------------------------------------------------------------- fake data
def write_fake_cifar(root: Path, seed: int = 0, n_per_batch: int = 40, n_test: int = 60) -> None:
    """Tiny CIFAR files in the real layouts (official CIFAR-10 and CIFAR-100 pickles, the subset npz):
    noise images with a learnable colour stripe whose row encodes the label."""
    rng = np.random.default_rng(seed)

    def images(n, classes):
        y = rng.integers(0, classes, n)
        x = rng.integers(0, 60, (n, 3, 32, 32)).astype(np.uint8)
        for i, c in enumerate(y):
            x[i, c % 3, (c * 3) % 32, :] = 255
            x[i, (c // 3) % 3, :, (c * 7) % 32] = 200
        return x.reshape(n, 3072), y

    def dump(path, obj):
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as f:
            pickle.dump(obj, f, protocol=2)

    c10 = root / "cifar" / "cifar-10-batches-py"
    for k in range(1, 6):
        x, y = images(n_per_batch, 10)
        dump(c10 / f"data_batch_{k}", {"batch_label": f"training batch {k} of 5", "labels": y.tolist(), "data": x,
                                       "filenames": [f"fake_{k}_{i}.png" for i in range(len(y))]})
    x, y = images(n_test, 10)
    dump(c10 / "test_batch", {"batch_label": "testing batch 1 of 1", "labels": y.tolist(), "data": x,
                              "filenames": [f"fake_t_{i}.png" for i in range(len(y))]})
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    dump(c10 / "batches.meta", {"num_cases_per_batch": n_per_batch, "label_names": names, "num_vis": 3072})

    c100 = root / "cifar" / "cifar-100-python"
    for split, n in (("train", 5 * n_per_batch), ("test", n_test)):
        x, y = images(n, 100)
        dump(c100 / split, {"filenames": [f"f{i}.png" for i in range(n)], "batch_label": split,
                            "fine_labels": y.tolist(), "coarse_labels": (y // 5).tolist(), "data": x})
    dump(c100 / "meta", {"fine_label_names": [f"class{i}" for i in range(100)],
                         "coarse_label_names": [f"super{i}" for i in range(20)]})

    sub = root / "cifar10-subset"
    sub.mkdir(parents=True, exist_ok=True)
    tx, ty = images(5 * n_per_batch, 10)
    vx, vy = images(n_test, 10)
    np.savez(sub / "cifar10_subset.npz", train_data=tx, train_labels=ty, test_data=vx, test_labels=vy,
             train_origin=np.array([f"data_batch_{i // n_per_batch + 1}:{i % n_per_batch}" for i in range(len(ty))]),
             test_origin=np.array([f"test_batch:{i}" for i in range(len(vy))]))
    dump(sub / "batches.meta", {"num_cases_per_batch": 10000, "label_names": names, "num_vis": 3072})
