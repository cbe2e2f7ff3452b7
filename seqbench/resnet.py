"""One ResNet family for every image backbone: CIFAR ResNets (He et al. 2016), pre-activation
ResNets (He et al., "Identity Mappings in Deep Residual Networks", 2016), SE (Hu et al., CVPR 2018)
and DIA (Huang et al., "DIANet: Dense-and-Implicit Attention Network", AAAI 2020) as per-block
attention plug-ins, and the ImageNet-shaped trunk (torchvision's ResNet-18/50 module names, dilation
for output stride 8 or 16) that the dense tasks' models put their heads on.

Written from the papers and checked against the reference code (gbup-group/DIANet
``models/cifar/dia_resnet.py``, ``dia_preresnet.py``, ``cifar.py``; bearpaw/pytorch-classification
``models/cifar/preresnet.py``; torchvision ``models/resnet.py`` for the names); nothing is copied.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .errors import SeqbenchError

EXPANSION = {"basic": 1, "bottleneck": 4}


def _norm(c: int, bn: bool) -> nn.Module:
    return nn.BatchNorm2d(c) if bn else nn.Identity()


def _conv(cin, cout, k, stride=1, dilation=1, bn=True) -> nn.Conv2d:
    pad = dilation * (k // 2)
    return nn.Conv2d(cin, cout, k, stride=stride, padding=pad, dilation=dilation, bias=not bn)


def _add(out, other):
    """``out + other``, written into ``out`` unless that would narrow the dtype (mixed precision)."""
    return out.add_(other) if torch.result_type(out, other) == out.dtype else out + other


# ------------------------------------------------------------------------------ attention
class SE(nn.Module):
    """Squeeze-and-excitation (Hu et al.): one per block. GAP → FC C→C/r → ReLU → FC C/r→C → sigmoid,
    times the branch (r = 16; both FCs with bias, as Hu et al. and imgclsmob's SE-ResNet)."""

    def __init__(self, c: int, reduction: int = 16):
        super().__init__()
        mid = max(c // reduction, 1)
        self.fc1, self.fc2 = nn.Linear(c, mid), nn.Linear(mid, c)

    def forward(self, branch, state=None):
        w = torch.sigmoid(self.fc2(F.relu(self.fc1(branch.mean((2, 3))))))
        return branch * w[:, :, None, None], None


class DIALSTMCell(nn.Module):
    """DIANet's modified LSTM: bottleneck-MLP gates, h = o ⊙ sigmoid(c). State (h, c), each [B, C].

    Gates [i, f, g, o] = B_x(x_t) + B_h(h_{t-1}), each B a bottleneck MLP C → C/r → 4C with ReLU between
    (r = 4, biases on); c_t = f⊙c_{t-1} + i⊙tanh(g), h_t = o⊙σ(c_t) (a sigmoid, not tanh: h is the
    attention)."""

    def __init__(self, c: int, reduction: int = 4):
        super().__init__()
        mid = max(c // reduction, 1)
        self.x2g = nn.Sequential(nn.Linear(c, mid), nn.ReLU(), nn.Linear(mid, 4 * c))
        self.h2g = nn.Sequential(nn.Linear(c, mid), nn.ReLU(), nn.Linear(mid, 4 * c))

    def forward(self, x, state=None):
        if state is None:  # zero state, on the input's device and dtype
            state = (torch.zeros_like(x), torch.zeros_like(x))
        h, c = state
        i, f, g, o = (self.x2g(x) + self.h2g(h)).chunk(4, dim=1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.sigmoid(c)
        return h, (h, c)

    def flops(self) -> int:  # per sample per step: the four linear maps, then the pointwise cell
        c, mid = self.x2g[0].in_features, self.x2g[0].out_features
        mlp = 2 * (2 * c * mid + mid) + 2 * (2 * mid * 4 * c + 4 * c)
        return mlp + 4 * c + 4 * c + 3 * c + 2 * c  # gate sum; 3 sigmoid + tanh; c update; h


class RecurrentDIACell(nn.Module):
    """Any registered recurrent backbone as the DIA unit (``dia_cell=<model>``): one step per block on
    x_t, its state carried through the stage, its output mapped to C by a linear layer and a sigmoid
    (hidden width C/r). Our generalisation: the paper says many modules can serve as the DIA unit."""

    def __init__(self, c: int, model: str, reduction: int = 4):
        super().__init__()
        from . import registry
        from .config import params_class
        from .registry import SEQUENCE

        entry = registry.get_model(model)
        if SEQUENCE not in entry.kinds:
            raise SeqbenchError(f"model.dia_cell '{model}' is not a recurrent model over sequences")
        p = params_class(entry.cls)()
        if hasattr(p, "hidden"):
            p.hidden = max(c // reduction, 1)
        self.cell = entry.cls(c, p)
        self.out = nn.Linear(self.cell.d_output, c)

    def forward(self, x, state=None):
        y, state = self.cell(x[:, None, :], state)
        return torch.sigmoid(self.out(y[:, -1])), state

    def flops(self) -> int:
        return self.cell.flops_per_step() + 2 * self.out.in_features * self.out.out_features + 2 * self.out.out_features


class DIAUnit(nn.Module):
    """The stage's shared attention unit: x_t = GAP(branch), h = cell(x_t, state), branch ⊙ h.

    ONE unit per stage, shared by all its blocks, its state zero at the stage's first block and never
    carried across stages; x_t is taken after the branch's last BN. The default cell is DIANet's
    (``DIALSTMCell``). The DIA width is the stage's output width (the reference hard-codes 64/128/256 in
    its Bottleneck path, and its BasicBlock path returns the wrong tuple; neither is repeated here)."""

    def __init__(self, c: int, reduction: int = 4, cell: str = "dia-lstm"):
        super().__init__()
        self.cell = DIALSTMCell(c, reduction) if cell == "dia-lstm" else RecurrentDIACell(c, cell, reduction)

    def forward(self, branch, state=None):
        h, state = self.cell(branch.mean((2, 3)), state)
        return branch * h[:, :, None, None].to(branch.dtype), state


# --------------------------------------------------------------------------------- blocks
class Block(nn.Module):
    """A residual block; torchvision's names (conv1, bn1, ..., downsample) for weight compatibility.

    ``basic`` = two 3x3 convs, ``bottleneck`` = 1x1 → 3x3 → 1x1 with expansion 4 and the stride on the
    3x3 conv (as DIANet's CIFAR code and torchvision). A projection shortcut (1x1 conv, + BN in the
    post-activation form) where the stride or the width changes. Post-activation (``preact=False``):
    ``out = relu(attn(branch) + shortcut)``, the branch ending in its last BN. Pre-activation:
    ``out = attn(branch) + shortcut`` with BN-ReLU before each conv, the projection a bare 1x1 conv on
    the raw block input (bearpaw's ``PreResNet``). Attention (``attn``) acts on the residual branch,
    before the add, in every block (the strided first block too). ``extra_bn``: one more BN after the
    branch's last conv, as the reference's DIA-PreResNet (``dia_preresnet.py``, ``bn_additional``);
    the trunk sets it for ``preact`` with ``dia``, so its size equals the reference's."""

    def __init__(self, kind: str, cin: int, planes: int, stride: int = 1, dilation: int = 1, *,
                 preact: bool = False, attn: nn.Module | None = None, skip: bool = True, bn: bool = True,
                 extra_bn: bool = False):
        super().__init__()
        cout = planes * EXPANSION[kind]
        self.kind, self.preact, self.skip = kind, preact, skip
        if kind == "basic":
            convs = [(cin, planes, 3, stride, dilation), (planes, cout, 3, 1, dilation)]
        else:
            convs = [(cin, planes, 1, 1, 1), (planes, planes, 3, stride, dilation), (planes, cout, 1, 1, 1)]
        for i, (a, b, k, s, d) in enumerate(convs, 1):
            setattr(self, f"conv{i}", _conv(a, b, k, s, d, bn))
            # post-activation: BN after each conv; pre-activation: BN before each conv (on its input)
            setattr(self, f"bn{i}", _norm(b if not preact else a, bn))
        self.n_convs = len(convs)
        self.bn_extra = _norm(cout, bn) if extra_bn else None  # DIA-PreResNet's bn_additional
        self.downsample = None
        if skip and (stride != 1 or cin != cout):
            proj = _conv(cin, cout, 1, stride, 1, bn)
            self.downsample = proj if preact else nn.Sequential(proj, _norm(cout, bn))
        self.attn = attn
        self.out_channels = cout

    def branch(self, x):
        """The residual branch. Its ReLUs run in place on the BN or conv output before them (neither
        backward reads its output), never on ``x`` itself (the shortcut reads it; a BN-less
        pre-activation block's first ReLU would otherwise get it from the identity norm)."""
        out = x
        for i in range(1, self.n_convs + 1):
            conv, norm = getattr(self, f"conv{i}"), getattr(self, f"bn{i}")
            if self.preact:
                y = norm(out)
                out = conv(F.relu(y, inplace=y is not x))
            else:
                out = norm(conv(out))
                if i < self.n_convs:
                    out = F.relu(out, inplace=True)
        return self.bn_extra(out) if self.bn_extra is not None else out

    def forward(self, x, state=None):
        """The shortcut is added, and the post-activation ReLU applied, in place on the branch's
        output (a BN, conv or attention product: no backward reads it; the attention read the branch
        before)."""
        out = self.branch(x)
        if self.attn is not None:
            out, state = self.attn(out, state)
        if self.skip:
            out = _add(out, self.downsample(x) if self.downsample is not None else x)
        return (out if self.preact else F.relu(out, inplace=True)), state


class Stage(nn.Module):
    """Blocks in order; an attention state (DIA) starts at None (zero) here and ends here.

    The blocks are the stage's children named 0, 1, ... (``layer1.0.conv1.weight``: torchvision's
    names, so its ImageNet checkpoints load). Checkpoints written while the blocks sat in a
    ``blocks`` list (``layer1.blocks.0.conv1.weight``) still load: their keys are renamed on load."""

    def __init__(self, blocks: list[Block]):
        super().__init__()
        for i, blk in enumerate(blocks):
            self.add_module(str(i), blk)
        self.register_load_state_dict_pre_hook(_rename_old_block_keys)

    @property
    def blocks(self) -> list[Block]:
        return list(self._modules.values())

    def forward(self, x):
        state = None
        for blk in self.blocks:
            x, state = blk(x, state)
        return x


def _rename_old_block_keys(module, state_dict, prefix, *args) -> None:
    old = prefix + "blocks."
    for k in [k for k in state_dict if k.startswith(old)]:
        state_dict[prefix + k[len(old):]] = state_dict.pop(k)


def make_attention(attn: str, c: int, reduction: int, dia_cell: str = "dia-lstm"):
    """A factory giving each block of a stage its attention module: a new SE per block, or the one
    DIA unit of the stage for all of them."""
    if attn == "none":
        return lambda: None
    if attn == "se":
        return lambda: SE(c, reduction)
    if attn == "dia":
        unit = DIAUnit(c, reduction, dia_cell)
        return lambda: unit
    raise SeqbenchError(f"unknown attention '{attn}'")


# ---------------------------------------------------------------------------------- trunk
class ResNetTrunk(nn.Module):
    """Stem + stages; forward(x[B, C, H, W]) -> the last stage's feature map.

    ``stem``: ``cifar`` (3x3 conv to ``widths[0]``; post-activation adds BN-ReLU) or ``imagenet``
    (7x7/2 conv, BN-ReLU, 3x3/2 max-pool). ``layers``: blocks per stage; ``widths``: each stage's
    planes; the first block of stage i > 0 has stride 2, unless ``output_stride`` turns the late
    strides into dilation (as torchvision's ``replace_stride_with_dilation``). Pre-activation adds a
    final BN-ReLU after the last stage. Ablations (DIANet's stability experiments), for every backbone:
    ``skip=False`` removes the shortcuts (identity and projection), ``bn=False`` replaces every BN by
    the identity (the convs then get biases, which BN made redundant).
    """

    def __init__(self, d_input: int, *, block: str, layers: list[int], widths: list[int], stem: str = "cifar",
                 preact: bool = False, attn: str = "none", reduction: int = 16, dia_cell: str = "dia-lstm",
                 skip: bool = True, bn: bool = True, output_stride: int | None = None, stem_width: int | None = None):
        super().__init__()
        w0 = stem_width or widths[0]
        if stem == "cifar":
            self.conv1 = _conv(d_input, w0, 3, bn=bn)
            self.bn1 = _norm(w0, bn) if not preact else None
            self.maxpool = None
            total_stride = 1
        elif stem == "imagenet":
            self.conv1 = nn.Conv2d(d_input, w0, 7, stride=2, padding=3, bias=not bn)
            self.bn1 = _norm(w0, bn)
            self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
            total_stride = 4
        else:
            raise SeqbenchError(f"unknown stem '{stem}'")
        cin, dilation = w0, 1
        for i, (n, planes) in enumerate(zip(layers, widths)):
            stride, previous = (1 if i == 0 else 2), dilation
            if output_stride is not None and stride == 2 and total_stride * 2 > output_stride:
                dilation, stride = dilation * 2, 1  # the stride becomes dilation (torchvision's rule:
            total_stride *= stride                  # the stage's first block keeps the previous one)
            cout = planes * EXPANSION[block]
            make = make_attention(attn, cout, reduction, dia_cell)
            blocks = []
            for j in range(n):
                blocks.append(Block(block, cin, planes, stride if j == 0 else 1, previous if j == 0 else dilation,
                                    preact=preact, attn=make(), skip=skip, bn=bn, extra_bn=preact and attn == "dia"))
                cin = cout
            setattr(self, f"layer{i + 1}", Stage(blocks))
        self.n_stages = len(layers)
        self.final_bn = _norm(cin, bn) if preact else None  # pre-activation: BN-ReLU after the last stage
        self.d_output = cin
        self.output_stride = total_stride
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """As the DIANet code: convs N(0, sqrt(2 / (k·k·C_out))), BN weight 1 and bias 0, linear layers
        torch's default."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):  # N(0, sqrt(2 / n)), n = k*k*C_out (DIANet's init, He fan-out)
                n = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / n))
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def stages(self) -> list[Stage]:
        return [getattr(self, f"layer{i + 1}") for i in range(self.n_stages)]

    def forward(self, x):
        x = self.conv1(x)
        if self.bn1 is not None:
            x = F.relu(self.bn1(x), inplace=True)  # on the stem's own BN or conv output
        if self.maxpool is not None:
            x = self.maxpool(x)
        for stage in self.stages():
            x = stage(x)
        if self.final_bn is not None:
            y = self.final_bn(x)
            x = F.relu(y, inplace=y is not x)  # not in place on the stage's output (bn=False)
        return x


def cifar_layers(depth: int, block: str) -> int:
    """Blocks per stage of a CIFAR ResNet of ``depth`` layers: 6n+2 (basic) or 9n+2 (bottleneck)."""
    per = 6 if block == "basic" else 9
    if depth < per + 2 or (depth - 2) % per:
        raise SeqbenchError(f"bad value {depth} for 'model.depth': a CIFAR ResNet with {block} blocks has depth "
                            f"{per}n+2 ({per + 2}, {2 * per + 2}, ...; "
                            f"e.g. {'20, 56, 110' if block == 'basic' else '164'})")
    return (depth - 2) // per


# ------------------------------------------------------------------- ImageNet trunks (dense)
# torchvision's ResNet-18/34/50/101: block and blocks per stage (widths 64, 128, 256, 512 x expansion).
IMAGENET_RESNETS = {"resnet18": ("basic", [2, 2, 2, 2]), "resnet34": ("basic", [3, 4, 6, 3]),
                    "resnet50": ("bottleneck", [3, 4, 6, 3]), "resnet101": ("bottleneck", [3, 4, 23, 3])}


def imagenet_trunk(name: str, output_stride: int | None = None, width: int = 64, d_input: int = 3) -> ResNetTrunk:
    """torchvision's ResNet ``name`` without its pooling and fc (module names as torchvision's, so its
    ImageNet checkpoints load), the strides of the late stages turned into dilation down to
    ``output_stride`` (8: layer3 dilation 2, layer4 dilation 4), for basic blocks too (torchvision
    refuses dilation in BasicBlock; here both 3x3 convs of a dilated basic block are dilated)."""
    block, layers = IMAGENET_RESNETS[name]
    return ResNetTrunk(d_input, block=block, layers=layers, widths=[width, 2 * width, 4 * width, 8 * width],
                       stem="imagenet", output_stride=output_stride)


def load_torchvision_weights(trunk: ResNetTrunk, path) -> dict:
    """Load a torchvision ResNet state-dict file (its ImageNet checkpoint, e.g. resnet18-f37072fd.pth)
    into ``trunk``, ignoring ``fc.*``; any other missing or unexpected key is an error (one line).
    Returns the file's name and SHA-256 for the record."""
    from .data import file_digest

    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # not a file, truncated, not a state dict
        raise SeqbenchError(f"model.pretrained {path}: unreadable as a torch checkpoint ({type(e).__name__})") from None
    if not isinstance(sd, dict):
        raise SeqbenchError(f"model.pretrained {path}: not a state dict")
    sd = {k: v for k, v in sd.items() if not k.startswith("fc.")}
    try:
        missing, unexpected = trunk.load_state_dict(sd, strict=False)
    except RuntimeError as e:  # a shape mismatch: another depth or width
        first = str(e).strip().splitlines()
        raise SeqbenchError(f"model.pretrained {path} does not fit this trunk "
                            f"({first[-1].strip()[:150] if first else ''})") from None
    if missing or unexpected:
        raise SeqbenchError(f"model.pretrained {path} does not fit this trunk: missing {missing[:3]}, "
                            f"unexpected {unexpected[:3]} (a torchvision ResNet of the same depth is expected)")
    return {"file": str(path), "sha256": file_digest(path, "sha256")}
