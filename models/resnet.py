"""CIFAR ResNets, SE-ResNets and DIA-ResNets (DIANet, Huang et al., AAAI 2020): one family
(``seqbench/resnet.py``: blocks, the SE and DIA plug-ins, the trunk), three registered names that
differ only in the attention each residual branch gets.

- ``resnet``: He et al.'s CIFAR ResNets: ``model.block=basic`` at depth 6n+2 (20, 56, 110) or
  ``bottleneck`` at 9n+2 (164), stage widths ``model.width`` x (1, 2, 4) (16, 32, 64 as the papers);
  ``model.preact`` for the pre-activation form (PreResNet-164). Head (the task's): global average
  pool + linear.
- ``se-resnet``: a squeeze-and-excitation block (reduction ``model.reduction`` = 16) in every
  residual block: the baseline DIANet compares against.
- ``dia-resnet``: one DIA unit per stage, shared by all its blocks (``model.reduction`` = 4, the
  DIANet README's r); ``model.dia_cell`` = ``dia-lstm`` (DIANet's modified LSTM) or any registered
  recurrent model (``lstm``, ``gru``, ``hippo``, ``enrnn``, ...), run one step per block.
- ``model.skip=false`` / ``model.bn=false``: DIANet's stability ablations (no shortcuts / no BN).

Presets: ``tiny`` depth 8 at width 4; ``fast`` the 20-layer models; ``paper`` ResNet-164 (bottleneck)
and ``paper-preact`` PreResNet-164 for the CIFAR tasks.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch.nn as nn

from seqbench.config import POSITIVE, Domain, choice, setting
from seqbench.model import LIBRARY
from seqbench.registry import IMAGE, register_model
from seqbench.errors import SeqbenchError
from seqbench.resnet import EXPANSION, ResNetTrunk, cifar_layers


def _dia_cells() -> list[str]:
    from seqbench import registry
    from seqbench.registry import SEQUENCE

    return ["dia-lstm"] + sorted(n for n, e in registry.models().items() if SEQUENCE in e.kinds)


DIA_CELL = Domain(lambda: "dia-lstm or a registered recurrent model: " + ", ".join(_dia_cells()[1:]),
                  lambda v: v in _dia_cells(), "no-such-cell")


@dataclass
class ResNetParams:
    depth: int = setting(20, POSITIVE, "layers: 6n+2 with basic blocks (20, 56, 110), 9n+2 with bottlenecks (164)")
    block: str = choice("basic", ("basic", "bottleneck"))
    width: int = setting(16, POSITIVE, "planes of the first stage; the others x2, x4")
    preact: bool = False  # pre-activation blocks (PreResNet)
    skip: bool = True  # False: no shortcuts (DIANet's ablation)
    bn: bool = True  # False: no batch norm (DIANet's ablation)

    def validate(self):
        cifar_layers(self.depth, self.block)


def check_reduction(p) -> None:
    """The attention's bottleneck C/r keeps at least one channel in the narrowest stage (C = width x expansion)."""
    c = p.width * EXPANSION[p.block]
    if c // p.reduction < 1:
        raise SeqbenchError(f"bad value {p.reduction} for 'model.reduction': the first stage has {c} channels, so C/r "
                            f"would be 0; expected at most {c} (or a larger model.width)")


@dataclass
class SEParams(ResNetParams):
    reduction: int = setting(16, POSITIVE, "SE bottleneck: C -> C/r -> C (at least one channel)")

    def validate(self):
        super().validate()
        check_reduction(self)


@dataclass
class DIAParams(ResNetParams):
    reduction: int = setting(4, POSITIVE, "DIA bottleneck MLPs: C -> C/r -> 4C (DIANet's r = 4; C/r >= 1)")
    dia_cell: str = setting("dia-lstm", DIA_CELL, "the DIA unit: dia-lstm, or a registered recurrent model")

    def validate(self):
        super().validate()
        check_reduction(self)


_DEEP = {"model.depth": 164, "model.block": "bottleneck"}
RESNET_PRESETS = {
    "tiny": {"model.depth": 8, "model.width": 4},
    "fast": {"model.depth": 20, "model.width": 16},
    "paper": {**_DEEP, "model.preact": False},
    "paper-preact": {**_DEEP, "model.preact": True},
}


class CIFARResNet(nn.Module):
    """A CIFAR ResNet trunk of the family; subclasses choose the attention."""

    kinds = frozenset({IMAGE})
    implementation = LIBRARY  # convolutions (dia-resnet's attention cell: one step per block, eager)
    presets = RESNET_PRESETS
    Params = ResNetParams
    attn = "none"

    def __init__(self, d_input: int, p: ResNetParams):
        super().__init__()
        n = cifar_layers(p.depth, p.block)
        self.trunk = ResNetTrunk(d_input, block=p.block, layers=[n, n, n], widths=[p.width, 2 * p.width, 4 * p.width],
                                 stem="cifar", preact=p.preact, attn=self.attn, reduction=getattr(p, "reduction", 16),
                                 dia_cell=getattr(p, "dia_cell", "dia-lstm"), skip=p.skip, bn=p.bn)
        self.d_output = self.trunk.d_output

    def forward(self, x):
        return self.trunk(x)


@register_model("resnet")
class ResNet(CIFARResNet):
    paper = "He, Zhang, Ren & Sun, Deep Residual Learning for Image Recognition, CVPR 2016"
    paper_url = "https://arxiv.org/abs/1512.03385"
    # the family's reference code (its trunks, CIFAR protocol and parameter counts; the pre-activation
    # form also checked against bearpaw/pytorch-classification models/cifar/preresnet.py)
    reference = "https://github.com/gbup-group/DIANet"


@register_model("se-resnet")
class SEResNet(CIFARResNet):
    paper = "Hu, Shen & Sun, Squeeze-and-Excitation Networks, CVPR 2018"
    paper_url = "https://arxiv.org/abs/1709.01507"
    # DIANet's SE baseline on its trunks (the SE block itself as Hu et al. and imgclsmob's SE-ResNet)
    reference = "https://github.com/gbup-group/DIANet"
    Params = SEParams
    presets = {**RESNET_PRESETS, "tiny": {**RESNET_PRESETS["tiny"], "model.reduction": 4}}  # 4 channels: C/r = 1
    attn = "se"


@register_model("dia-resnet")
class DIAResNet(CIFARResNet):
    paper = "Huang, Liang, Liang & Yang, DIANet: Dense-and-Implicit Attention Network, AAAI 2020"
    paper_url = "https://arxiv.org/abs/1905.10671"
    reference = "https://github.com/gbup-group/DIANet"  # models/cifar/dia_resnet.py, dia_preresnet.py, cifar.py
    Params = DIAParams
    attn = "dia"

