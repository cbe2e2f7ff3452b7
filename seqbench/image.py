"""The image kind: tasks whose input is an image ``x[B, C, H, W]`` and whose target is one label.

A task (``ImageTask``) keeps its images in memory as uint8 ``[N, C, H, W]`` and serves batches
through ``ImageLoader``: seeded by (seed, epoch) like ``TensorLoader`` (a resumed run sees the same
batches), with augmentation applied to the whole batch at once (random crop after zero padding,
horizontal flip: the CIFAR recipe of He et al. and the DIANet code) and normalisation on the fly.
The registered models are trunks (``forward(x) -> feature map [B, C', h, w]``, ``d_output = C'``);
the task's wrapper (``ImageClassifier``) adds global average pooling and the ``head``.

Metrics are the classification ones (accuracy and loss from summed counts over the whole split).

Validation: ``val_fraction`` of the training images, split off by its own generator (seed 42,
independent of the run seed). ``val_fraction = 0`` is the protocol of the CIFAR papers (train on
all training images, no validation): the runner then tests after every epoch and records the last
epoch's test metrics, and separately the best test value over epochs (see ``Runner``).

FLOPs per image: ``measure.count_flops`` on one forward pass (convolutions, linear layers, batch
norms; the DIA cells' analytic counts).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .data import EpochLoader
from .measure import count_flops
from .registry import IMAGE
from .task import ClassificationTask, TaskSpec

SPLIT_SEED = 42


def split_indices(n: int, val_fraction: float, seed: int = SPLIT_SEED) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, val) indices of ``n`` training images: a random ``val_fraction`` held out by its own
    generator (the same split whatever the run seed)."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_val = int(round(n * val_fraction))
    return order[: n - n_val], order[n - n_val:]


class ImageLoader(EpochLoader):
    """Mini-batches of uint8 images ``[N, C, H, W]`` and labels, transformed per batch.

    ``transform(batch_uint8, generator) -> tensor`` turns a batch into the model's input; on a
    training loader the generator is seeded from (seed, epoch, batch index), so augmentation is
    reproducible and a resumed run sees the same pixels."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int, transform,
                 shuffle: bool = False, seed: int = 0):
        assert images.dtype == torch.uint8 and images.shape[0] == labels.shape[0]
        super().__init__(batch_size, shuffle, seed)
        self.images, self.labels, self.transform = images, labels, transform

    @property
    def num_samples(self) -> int:
        return self.images.shape[0]

    def __iter__(self):
        n, order = self.num_samples, self.order()
        for b, i in enumerate(range(0, n, self.batch_size)):
            idx = slice(i, i + self.batch_size) if order is None else order[i: i + self.batch_size]
            g = torch.Generator().manual_seed(self.epoch_key() * 10_007 + b) if self.shuffle else None
            yield self.transform(self.images[idx], g), self.labels[idx]


def random_crop_flip(x: torch.Tensor, g: torch.Generator | None, pad: int = 4, flip: bool = True) -> torch.Tensor:
    """Per image: a random ``H x W`` crop of the image zero-padded by ``pad`` on each side, then a
    horizontal flip with probability 1/2 (torchvision's RandomCrop(padding) + RandomHorizontalFlip)."""
    B, C, H, W = x.shape
    if g is None:
        return x
    if pad:
        xp = F.pad(x, (pad, pad, pad, pad))
        oy = torch.randint(0, 2 * pad + 1, (B,), generator=g)
        ox = torch.randint(0, 2 * pad + 1, (B,), generator=g)
        rows = (oy[:, None] + torch.arange(H))[:, None, :, None]  # [B, 1, H, 1]
        cols = (ox[:, None] + torch.arange(W))[:, None, None, :]  # [B, 1, 1, W]
        x = xp[torch.arange(B)[:, None, None, None], torch.arange(C)[None, :, None, None], rows, cols]
    if flip:
        f = torch.rand(B, generator=g) < 0.5
        x = torch.where(f[:, None, None, None], x.flip(3), x)
    return x


def normalize(x: torch.Tensor, mean, std) -> torch.Tensor:
    """uint8 [B, C, H, W] → float32, (x / 255 - mean) / std per channel."""
    m = torch.tensor(mean, dtype=torch.float32)[None, :, None, None]
    s = torch.tensor(std, dtype=torch.float32)[None, :, None, None]
    return (x.float() / 255.0 - m) / s


class ImageClassifier(nn.Module):
    """Trunk → global average pool → ``head`` (linear). forward(x, state=None) -> (logits, None)."""

    def __init__(self, backbone: nn.Module, num_classes: int, input_shape: tuple):
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(backbone.d_output, num_classes)
        self.input_shape = tuple(input_shape)

    def forward(self, x, state=None):
        return self.head(self.backbone(x).mean((2, 3))), None

    def flops_per_sample(self) -> int:
        p = next(self.parameters())
        return count_flops(self, torch.zeros(1, *self.input_shape, device=p.device, dtype=p.dtype))


class ImageTask(ClassificationTask):
    """Base of the image classification tasks: ``num_classes``, ``input_shape`` (C, H, W) and the
    in-memory uint8 arrays come from the subclass (``arrays() -> dict`` of train/test images and
    labels); this class splits, augments, normalises, wraps."""

    kind = IMAGE
    reference_model = "resnet"  # SE and DIA are compared with the plain ResNet of the same depth
    num_classes: int
    input_shape: tuple = (3, 32, 32)
    mean: tuple
    std: tuple

    def spec(self) -> TaskSpec:
        return TaskSpec(kind=self.kind, d_input=self.input_shape[0], d_output=self.num_classes, seq_len=0,
                        loss="cross_entropy", metrics=self.classification_metrics(), monitor="acc",
                        input_shape=self.input_shape)

    def wrap(self, backbone):
        return ImageClassifier(backbone, self.num_classes, self.input_shape)

    def train_transform(self, x, g):
        return normalize(random_crop_flip(x, g) if self.params.augment else x, self.mean, self.std)

    def eval_transform(self, x, g=None):
        return normalize(x, self.mean, self.std)
