"""The dense kind: tasks whose input is an image ``x[B, 3, H, W]`` and whose target is a label per
pixel ``y[B, H', W']`` (scene parsing: CamVid, ADE20K).

A task (``DenseTask``) lists its (image file, label file) pairs per split and maps the dataset's label
values to class indices; this module does the rest, after torchvision's segmentation reference
(``references/segmentation``, ``_SimpleSegmentationModel``): file-backed, seeded loading and
augmentation (``DenseDataset``, ``DenseLoader``), the wrapper (``SegmentationModel``) and one
implementation of the metrics for every dense task (``confusion``, ``confusion_metrics``).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import NONNEGATIVE, POSITIVE, Domain, reals, setting
from .data import EpochLoader, check_training_part, epoch_key, subset_size, warn_once
from .errors import SeqbenchError
from .measure import count_flops
from .registry import DENSE
from .task import Metric, Task, TaskSpec

IGNORE = 255
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
N_EXAMPLES = 3
# The smallest side a dense trunk takes: more than its output stride (8 at the finest), so that its
# feature map is at least 2x2. Measured (seqbench.models.scene, ResNet-18 trunks, training mode): at
# output stride s a side of s gives a 1x1 map, and batch norm refuses a batch of one such sample
# (the last partial batch can be one); s + 1 runs at any batch size. ``DenseTask.wrap`` checks the
# sizes against the model's own output stride.
MIN_SIDE = 9
_SIZE_RE = re.compile(r"([1-9][0-9]*)x([1-9][0-9]*)")


def _size_domain(empty: bool) -> Domain:
    def ok(v):
        m = _SIZE_RE.fullmatch(v)
        return (empty and v == "") or (m is not None and min(int(m[1]), int(m[2])) >= MIN_SIDE)

    text = f"a size HxW in pixels, each side at least {MIN_SIDE}, e.g. 180x240{' (or empty)' if empty else ''}"
    return Domain(text, ok, "180by240")


SIZE, SIZE_OR_EMPTY = _size_domain(False), _size_domain(True)
SCALE = reals(0.0, 10.0, lo_open=True)


def parse_size(text: str) -> tuple[int, int] | None:
    if not text:
        return None
    h, w = text.lower().split("x")
    return int(h), int(w)


@dataclass
class DenseParams:
    """What every dense task shares (a task adds its own: ``size``, class weights, ...)."""

    crop: str = setting("", SIZE_OR_EMPTY, "training crop HxW; empty: the task's size")
    augment: bool = True  # training: random scale + crop + horizontal flip
    scale_min: float = setting(0.5, SCALE, "random scale range of the training augmentation")
    scale_max: float = setting(2.0, SCALE)
    train_subset: Optional[int] = setting(None, POSITIVE, "first N training images (tiny runs)")
    val_subset: Optional[int] = setting(None, POSITIVE)
    test_subset: Optional[int] = setting(None, POSITIVE)
    workers: int = setting(0, NONNEGATIVE, "loader worker processes (0: in the training process)")
    cache: bool = True  # keep decoded, resized images in memory after their first use

    def validate(self):
        if self.scale_min > self.scale_max:
            raise SeqbenchError(f"bad values for 'task.scale_min' ({self.scale_min:g}) and 'task.scale_max' "
                                f"({self.scale_max:g}): expected scale_min <= scale_max")


# ------------------------------------------------------------------------------ reading
def read_image(path: Path) -> torch.Tensor:
    """An RGB image file as uint8 [3, H, W]."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            a = np.asarray(im.convert("RGB"), dtype=np.uint8)
    except (OSError, ValueError) as e:
        raise SeqbenchError(f"image {path} is unreadable: {type(e).__name__}: {e}") from None
    return torch.from_numpy(a.copy()).permute(2, 0, 1).contiguous()


def label_values(path: Path) -> np.ndarray:
    """A label map file (one value per pixel, PNG mode L or P) as its values, int64 [H, W] in 0..255."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            if im.mode not in ("L", "P", "I;16", "I"):
                raise ValueError(f"mode {im.mode}, expected a one-channel label map")
            a = np.asarray(im, dtype=np.int64)
    except (OSError, ValueError) as e:
        raise SeqbenchError(f"label map {path} is unreadable: {type(e).__name__}: {e}") from None
    if a.size and (a.min() < 0 or a.max() > 255):
        raise SeqbenchError(f"label map {path}: values outside 0..255")
    return a


def read_label(path: Path, lut: torch.Tensor) -> torch.Tensor:
    """A label map file as uint8 [H, W] of class indices, through ``lut`` (256 entries: dataset value
    -> class index, or 255 = ignored)."""
    return lut[torch.from_numpy(label_values(path))]


def resize_image(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """uint8 [3, H, W] -> uint8 [3, h, w], bilinear (antialiased when shrinking)."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    y = F.interpolate(x[None].float(), size=size, mode="bilinear", align_corners=False, antialias=True)[0]
    return y.round().clamp(0, 255).to(torch.uint8)


def resize_label(y: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """uint8 [H, W] -> uint8 [h, w], nearest."""
    if tuple(y.shape[-2:]) == tuple(size):
        return y
    return F.interpolate(y[None, None].float(), size=size, mode="nearest")[0, 0].to(torch.uint8)


def normalize(x: torch.Tensor) -> torch.Tensor:
    """uint8 [3, H, W] -> float, normalised with ImageNet's mean and std (torchvision's), so ImageNet
    checkpoints fit."""
    m = torch.tensor(IMAGENET_MEAN)[:, None, None]
    s = torch.tensor(IMAGENET_STD)[:, None, None]
    return (x.float() / 255.0 - m) / s


def scale_crop_flip(x: torch.Tensor, y: torch.Tensor, g: torch.Generator, crop: tuple[int, int],
                    scale: tuple[float, float], flip: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """One training sample (uint8 image [3, H, W], label [H, W]): random scale s ~ U(scale), a random
    ``crop`` window (the scaled image padded with 0 / 255 to at least the crop), horizontal flip
    with probability 1/2: torchvision's segmentation reference recipe (bilinear image, nearest label)."""
    s = scale[0] + (scale[1] - scale[0]) * float(torch.rand((), generator=g))
    H, W = y.shape
    h, w = max(1, round(H * s)), max(1, round(W * s))
    x, y = resize_image(x, (h, w)), resize_label(y, (h, w))
    ch, cw = crop
    if h < ch or w < cw:  # pad bottom/right, as torchvision's reference pad_if_smaller
        ph, pw = max(ch - h, 0), max(cw - w, 0)
        x = F.pad(x, (0, pw, 0, ph), value=0)
        y = F.pad(y, (0, pw, 0, ph), value=IGNORE)
        h, w = y.shape
    oy = int(torch.randint(0, h - ch + 1, (), generator=g))
    ox = int(torch.randint(0, w - cw + 1, (), generator=g))
    x, y = x[:, oy:oy + ch, ox:ox + cw], y[oy:oy + ch, ox:ox + cw]
    if flip and float(torch.rand((), generator=g)) < 0.5:
        x, y = x.flip(-1), y.flip(-1)
    return x, y


class DenseDataset(torch.utils.data.Dataset):
    """(image, label) files of one split -> (normalised float image [3, h, w], int64 label [h', w']).

    ``size``: the network's input size (None: the image's own), images resized bilinear, antialiased;
    ``train``: labels follow the image size (nearest) and the augmentation runs (``crop``, ``scale``,
    ``flip``); otherwise labels stay at their file's resolution. PIL decodes the PNG/JPEG files;
    ``cache``: keep the decoded, resized uint8 arrays after their first read. Each training sample's
    augmentation comes from a generator seeded by (seed, epoch, sample index), so any number of worker
    processes and a resumed run see the same pixels."""

    def __init__(self, pairs: list[tuple[Path, Path]], lut: torch.Tensor, *, size=None, train: bool = False,
                 augment: bool = True, crop=None, scale=(0.5, 2.0), seed: int = 0, cache: bool = False):
        self.pairs, self.lut, self.size, self.train = list(pairs), lut, size, train
        self.augment, self.crop, self.scale, self.seed, self.epoch = augment, crop, scale, seed, 0
        self.cache = {} if cache else None

    def __len__(self) -> int:
        return len(self.pairs)

    def raw(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Sample i before augmentation: uint8 image at the network size, uint8 label (at the image
        size for training, at the file's resolution otherwise)."""
        if self.cache is not None and i in self.cache:
            return self.cache[i]
        img_path, lab_path = self.pairs[i]
        x, y = read_image(img_path), read_label(lab_path, self.lut)
        if tuple(x.shape[-2:]) != tuple(y.shape):
            raise SeqbenchError(f"{img_path} is {x.shape[2]}x{x.shape[1]} but its label map {lab_path} is "
                                f"{y.shape[1]}x{y.shape[0]}")
        if self.size is not None:
            x = resize_image(x, self.size)
            if self.train:
                y = resize_label(y, self.size)
        if self.cache is not None:
            self.cache[i] = (x, y)
        return x, y

    def __getitem__(self, i: int):
        x, y = self.raw(i)
        if self.train and self.augment:
            g = torch.Generator().manual_seed((epoch_key(self.seed, self.epoch) * 1_000_003 + i) % 2**63)
            crop = self.crop or tuple(y.shape)
            x, y = scale_crop_flip(x, y, g, crop, self.scale)
        elif self.train and self.crop and tuple(y.shape) != tuple(self.crop):
            g = torch.Generator().manual_seed((epoch_key(self.seed, self.epoch) * 1_000_003 + i) % 2**63)
            x, y = scale_crop_flip(x, y, g, self.crop, (1.0, 1.0), flip=False)
        return normalize(x), y.long()


def pad_collate(batch):
    """Stack samples, padding smaller ones at the bottom/right: images with 0 (after normalisation),
    labels with 255, as torchvision's segmentation reference collates."""
    xs, ys = zip(*batch)
    H = max(x.shape[1] for x in xs)
    W = max(x.shape[2] for x in xs)
    LH = max(y.shape[0] for y in ys)
    LW = max(y.shape[1] for y in ys)
    x = torch.zeros(len(xs), 3, H, W)
    y = torch.full((len(ys), LH, LW), IGNORE, dtype=torch.long)
    for i, (a, b) in enumerate(zip(xs, ys)):
        x[i, :, : a.shape[1], : a.shape[2]] = a
        y[i, : b.shape[0], : b.shape[1]] = b
    return x, y


class DenseLoader(EpochLoader):
    """Mini-batches of a ``DenseDataset`` (the ``EpochLoader`` contract of seqbench/data.py: an epoch's
    order from a generator seeded by (seed, epoch), set_epoch, num_samples, len, the last partial batch
    never dropped) with seeded augmentation; ``workers`` (``task.workers``) > 0 decodes in torch
    DataLoader worker processes."""

    def __init__(self, dataset: DenseDataset, batch_size: int, shuffle: bool = False, seed: int = 0, workers: int = 0):
        super().__init__(batch_size, shuffle, seed)
        self.dataset, self.workers = dataset, workers
        self.part = None

    @property
    def num_samples(self) -> int:
        return len(self.dataset)

    def shard(self, rank: int, size: int, by_rows: bool) -> None:
        """Decode only a distributed run's part (``seqbench.distributed``): rank's rows of every batch, or
        every size-th batch (padded to the part's largest sample, as the whole batch is when sizes agree)."""
        self.part = (rank, size, by_rows)

    def __iter__(self):
        from .distributed import World, rows

        self.dataset.seed, self.dataset.epoch = self.seed, self.epoch  # workers get a copy with these
        order = self.order()
        idx = list(range(self.num_samples)) if order is None else order.tolist()
        batches = [idx[i:i + self.batch_size] for i in range(0, len(idx), self.batch_size)]
        if self.part is not None:
            rank, size, by_rows = self.part
            world = World(rank, size)
            batches = [b[rows(len(b), world)] for b in batches] if by_rows else batches[rank::size]
        loader = torch.utils.data.DataLoader(self.dataset, batch_sampler=batches, num_workers=self.workers,
                                             collate_fn=pad_collate)
        yield from loader


# ------------------------------------------------------------------------------- metrics
def confusion(pred: torch.Tensor, y: torch.Tensor, k: int) -> torch.Tensor:
    """K x K counts, rows the label, columns the prediction, over pixels whose label is a class
    (255 and anything outside 0..K-1 is ignored): one bincount (torchvision's ConfusionMatrix)."""
    valid = (y >= 0) & (y < k)
    idx = k * y[valid].long() + pred[valid].long()
    return torch.bincount(idx, minlength=k * k).reshape(k, k)


def confusion_metrics(cm: torch.Tensor) -> dict:
    """mIoU, pixel accuracy, mean class accuracy and the per-class IoU and accuracy of a confusion
    matrix (rows label, columns prediction). NaN where a class has no pixel to judge: a class that
    appears neither in the labels nor in the predictions has no IoU (null in the record) and is left
    out of the mean (as mmseg's ``nanmean``); the class accuracy averages the classes present in the
    labels."""
    h = cm.double()
    tp, gt, pr = torch.diag(h), h.sum(1), h.sum(0)
    union = gt + pr - tp
    iou = torch.where(union > 0, tp / union.clamp(min=1), torch.full_like(tp, float("nan")))
    acc = torch.where(gt > 0, tp / gt.clamp(min=1), torch.full_like(tp, float("nan")))
    total = h.sum()
    return {"miou": float(np.nanmean(iou.numpy())) if (union > 0).any() else float("nan"),
            "pixel_acc": float(tp.sum() / total) if total > 0 else float("nan"),
            "class_acc": float(np.nanmean(acc.numpy())) if (gt > 0).any() else float("nan"),
            "iou": iou.tolist(), "acc": acc.tolist()}


# ------------------------------------------------------------------------------- wrapper
class SegmentationModel(nn.Module):
    """Feature extractor → ``head`` (1x1 conv to the classes) → bilinear upsampling to the input size
    (torchvision's ``_SimpleSegmentationModel``). The registered model is the feature extractor
    (``forward(x) -> [B, C', h, w]``, ``d_output = C'``); ``forward(x, state=None) -> (logits
    [B, K, H, W], None)``."""

    def __init__(self, backbone: nn.Module, num_classes: int, input_shape: tuple):
        super().__init__()
        self.backbone = backbone
        self.head = nn.Conv2d(backbone.d_output, num_classes, 1)
        self.input_shape = tuple(input_shape)

    def forward(self, x, state=None):
        logits = self.head(self.backbone(x))
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False), None

    def flops_per_sample(self) -> int:
        """At ``input_shape`` (the latency shape): convolutions, BNs and the recurrences' own counts
        (``count_flops``); the bilinear upsampling is not counted."""
        p = next(self.parameters())
        return count_flops(self, torch.zeros(1, *self.input_shape, device=p.device, dtype=p.dtype))


# ---------------------------------------------------------------------------------- task
class DenseTask(Task):
    """Base of the dense tasks. A subclass gives ``num_classes``, ``class_names``, ``palette`` (RGB
    per class), ``lut()`` and ``pairs(split) -> [(image, label)]`` for split in train/val/test,
    and ``size()`` (the network's input size, or None for each image's own).

    255 is the one ignore index (CamVid's void 11, ADE20K's "other" 0), for the loss and the confusion
    matrix alike. Evaluation is at the full label resolution: the logits are upsampled (bilinear) to
    the label size before the argmax. ``eval_stats`` gives each batch's K x K confusion matrix
    (``confusion``: rows ground truth, columns prediction), the runner adds them up over the split,
    ``metrics`` gives mIoU (selects the checkpoint), pixel accuracy and mean class accuracy,
    ``per_class`` the per-class IoU and accuracy the runner stores in the record. Latency is measured at
    ``latency_batches`` (1, 8) on inputs of ``latency_shape()`` (the evaluation size, or the training
    crop where images vary in size).

    What is refused or reported before training: a training part of fewer images than one batch, input
    sizes a trunk at the model's output stride cannot take (``wrap``), and, in the record and once on
    stderr, label pixels whose value is neither a class nor one of ``void_values`` (``check_labels``:
    they are ignored like void) and subsets larger than their split (all of it is used)."""

    kind = DENSE
    num_classes: int
    class_names: list
    palette: list
    void_values: tuple = ()  # the dataset's label values that mean "no class" (ignored)
    latency_batches = (1, 8)  # the runner's latency batch sizes for this kind
    reference_model = "fcn"  # the backbone without the RNN: the report's gains are over it

    def size(self) -> tuple[int, int] | None:
        return None

    def crop(self) -> tuple[int, int]:
        c = parse_size(self.params.crop) or self.size()
        if c is None:
            raise SeqbenchError(f"{self.name}: images vary in size here; give a training crop (task.crop=HxW)")
        return c

    def latency_shape(self) -> tuple[int, int]:
        """The (H, W) at which latency and FLOPs are measured: the evaluation size, or the crop."""
        return self.size() or self.crop()

    def spec(self) -> TaskSpec:
        h, w = self.latency_shape()
        return TaskSpec(kind=self.kind, d_input=3, d_output=self.num_classes, seq_len=0, loss="cross_entropy",
                        metrics=[Metric("miou", True), Metric("pixel_acc", True), Metric("class_acc", True)],
                        monitor="miou", input_shape=(3, h, w))

    def class_weights(self) -> torch.Tensor | None:
        return None

    def uses_class_weights(self) -> bool:
        """Whether the loss is class-weighted (by ``class_weights()``)."""
        return False

    def loss_weights(self) -> torch.Tensor | None:
        """The loss's class weights: ``class_weights()``, computed when the loss first needs them; before
        any loader is built (``seqbench bench``: no data files) weights of 1 in their place, the same
        computation without reading a file."""
        if not self.uses_class_weights():
            return None
        if getattr(self, "_datasets", None) is None:
            return torch.ones(self.num_classes)
        return self.class_weights()

    # ------------------------------------------------------------------ data
    def training_cause(self, n: int) -> str:
        """What left ``n`` training images (for the one-line refusal of a training part below one batch)."""
        return f"the training split of {self.name}"

    def datasets(self, seed: int, batch_size: int = 1) -> dict:
        """The splits' datasets (subsets taken); a training split of fewer images than ``batch_size`` is
        refused in one line."""
        p = self.params
        out, self._available, self._subsets = {}, {}, {}
        for split in ("train", "val", "test"):
            pairs = self.pairs(split)
            if pairs is None:
                continue
            self._available[split] = len(pairs)
            if split == "train":
                check_training_part(len(pairs), batch_size, "images", self.training_cause(len(pairs)))
            asked = getattr(p, f"{split}_subset")
            pairs = pairs[: subset_size(asked, len(pairs), f"task.{split}_subset", split, "images", self._subsets)]
            train = split == "train"
            out[split] = DenseDataset(pairs, self.lut(), size=self.size(), train=train, augment=p.augment,
                                      crop=self.crop() if train else None, scale=(p.scale_min, p.scale_max),
                                      seed=seed, cache=p.cache)
        return out

    def loaders(self, batch_size: int, eval_batch_size: int, seed: int):
        self._datasets = self.datasets(seed, batch_size)
        self._counts = {s: len(d) for s, d in self._datasets.items()}
        self._outside = self.check_labels()
        w = self.params.workers
        return {s: DenseLoader(d, batch_size if s == "train" else eval_batch_size, shuffle=s == "train", seed=seed,
                               workers=w) for s, d in self._datasets.items()}

    def example_batch(self, batch_size: int, seed: int = 0) -> tuple:
        """``(x, y)`` shaped and typed as a training batch (images at the training crop, int64 labels
        with a few ignored pixels), made without the data files (``seqbench bench``, the AMP check)."""
        g = torch.Generator().manual_seed(seed)
        h, w = self.crop()
        y = torch.randint(0, self.num_classes, (batch_size, h, w), generator=g)
        y[torch.rand(batch_size, h, w, generator=g) < 0.05] = IGNORE
        return torch.randn(batch_size, 3, h, w, generator=g), y

    def example_input(self, x, batch_size: int):
        """A batch of ``batch_size`` inputs at ``latency_shape()`` (crops of, or padding around, x)."""
        h, w = self.latency_shape()
        x = x[..., :h, :w]
        x = F.pad(x, (0, w - x.shape[-1], 0, h - x.shape[-2]))
        return super().example_input(x, batch_size)

    def check_labels(self) -> dict:
        """Every label file of the loaders read once (its values): pixels whose value is neither a class
        (``lut``) nor one of ``void_values`` are counted per split. The loss and the metrics ignore them
        like void; the counts go to the record (``info``) and, when there are any, one line to stderr."""
        known = (self.lut() != IGNORE).numpy()
        known[list(self.void_values)] = True
        pixels, maps, total_maps, values = {}, 0, 0, set()
        for split, ds in self._datasets.items():
            pixels[split] = 0
            for _, lab in ds.pairs:
                v = label_values(lab)
                bad = ~known[v]
                total_maps += 1
                if bad.any():
                    pixels[split] += int(bad.sum())
                    maps += 1
                    values.update(np.unique(v[bad]).tolist())
        if maps:
            shown = ", ".join(map(str, sorted(values)[:6])) + (", ..." if len(values) > 6 else "")
            void = ", ".join(map(str, self.void_values)) or "none"
            warn_once(f"{self.name}: {sum(pixels.values()):,} label pixels in {maps} of {total_maps} label maps have "
                      f"values that are neither a class nor void ({void}): {shown}; ignored like void")
        return {"pixels": pixels, "label_maps": maps, "values": sorted(values)}

    # ---------------------------------------------------------------- model
    def check_input_size(self, stride: int | None) -> None:
        """The training crop and the input size must be larger than the trunk's output stride ``stride`` on
        each side (a feature map of at least 2x2; see ``MIN_SIDE``): one line otherwise."""
        if not stride:
            return
        crop_key = "task.crop" if self.params.crop else "task.size"
        for key, hw in ((crop_key, self.crop()), ("task.size", self.size())):
            if hw is not None and min(hw) <= stride:
                raise SeqbenchError(f"{key} {hw[0]}x{hw[1]} is too small for a trunk at output stride {stride} "
                                    f"(model.output_stride): each side must be more than {stride} pixels, for a "
                                    f"feature map of at least 2x2")

    def wrap(self, backbone):
        trunk = getattr(backbone, "trunk", backbone)
        self.check_input_size(getattr(trunk, "output_stride", None))
        return SegmentationModel(backbone, self.num_classes, self.spec().input_shape)

    def loss(self, out, y):
        w = self.loss_weights()
        return F.cross_entropy(out.float(), y, weight=None if w is None else w.to(out.device),
                               ignore_index=IGNORE)

    def loss_terms(self, out, y):
        """The (class-weighted) loss summed over the valid pixels, and the weights' sum over them."""
        w = self.loss_weights()
        w = w.to(out.device) if w is not None else None
        total = F.cross_entropy(out.float(), y, weight=w, ignore_index=IGNORE, reduction="sum")
        valid = y[y != IGNORE]
        count = (w[valid].sum() if w is not None else torch.tensor(float(valid.numel()), device=out.device))
        return total, count

    def eval_stats(self, out, y):
        if out.shape[-2:] != y.shape[-2:]:  # evaluation at the labels' full resolution
            out = F.interpolate(out.float(), size=y.shape[-2:], mode="bilinear", align_corners=False)
        return {"confusion": confusion(out.argmax(1), y, self.num_classes)}

    def metrics(self, sums):
        m = confusion_metrics(sums["confusion"])
        return {k: m[k] for k in ("miou", "pixel_acc", "class_acc")}

    def per_class(self, sums) -> dict:
        """Per-class IoU and accuracy of a split, lists in class order (the runner records the test's)."""
        m = confusion_metrics(sums["confusion"])
        return {"classes": list(self.class_names), "iou": m["iou"], "acc": m["acc"]}

    def examples(self, predict) -> tuple[dict, dict] | None:
        """``N_EXAMPLES`` test images spread evenly over the split (its first and last among them: video
        frames in a row show one scene), their labels and ``predict``'s labels (argmax of the logits at the
        label resolution), as uint8 arrays for the report's picture, saved beside the record after the test."""
        ds = self._datasets["test"]
        n = min(N_EXAMPLES, len(ds))
        if n == 0:
            return None
        picked = [round(k * (len(ds) - 1) / (n - 1)) for k in range(n)] if n > 1 else [0]
        images, labels, preds = [], [], []
        for i in picked:
            raw_x, y = ds.raw(i)
            x, _ = ds[i]
            out = predict(x[None])
            out = F.interpolate(out.float(), size=y.shape[-2:], mode="bilinear", align_corners=False)
            images.append(raw_x.permute(1, 2, 0).numpy())
            labels.append(y.numpy())
            preds.append(out.argmax(1)[0].to(torch.uint8).numpy())
        arrays = {f"image{i}": a for i, a in enumerate(images)}
        arrays.update({f"label{i}": a for i, a in enumerate(labels)})
        arrays.update({f"pred{i}": a for i, a in enumerate(preds)})
        return arrays, {"n": n, "split": "test", "indices": picked,
                        "images": [str(ds.pairs[i][0].name) for i in picked]}

    def info(self) -> dict:
        out = {"classes": list(self.class_names), "palette": [list(c) for c in self.palette], "ignore_index": IGNORE,
               "void_values": list(self.void_values), "images_used": getattr(self, "_counts", None),
               "subset_larger_than_split": getattr(self, "_subsets", None) or None,
               "labels_outside_classes": getattr(self, "_outside", None),
               "eval_resolution": "the label files' own", "latency_shape": list(self.latency_shape())}
        w = self.class_weights()
        if w is not None:
            out["class_weights"] = [round(float(v), 6) for v in w]
        return out


def check_pairs(pairs: list[tuple[Path, Path]], what: str) -> None:
    """Every listed image and label file exists (one line naming the first missing ones)."""
    missing = [str(p) for pair in pairs for p in pair if not p.is_file()]
    if missing:
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise SeqbenchError(f"{what}: {len(missing)} listed files are missing: {', '.join(missing[:3])}{more}")


def median_frequency_weights(label_maps, num_classes: int) -> torch.Tensor:
    """SegNet's median-frequency balancing (Eigen & Fergus): freq(c) = pixels of class c / pixels of
    the images where c is present (ignored pixels excluded); w_c = median(freq) / freq(c)."""
    n = torch.zeros(num_classes, dtype=torch.float64)
    t = torch.zeros(num_classes, dtype=torch.float64)
    for y in label_maps:
        valid = y[y != IGNORE].long()
        counts = torch.bincount(valid, minlength=num_classes).double()[:num_classes]
        n += counts
        t += (counts > 0).double() * valid.numel()
    freq = torch.where(t > 0, n / t.clamp(min=1), torch.zeros_like(n))
    med = float(np.median(freq[freq > 0].numpy())) if (freq > 0).any() else 1.0
    return torch.where(freq > 0, med / freq.clamp(min=1e-12), torch.zeros_like(freq)).float()
