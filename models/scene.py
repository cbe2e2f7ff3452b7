"""Scene parsing models (kind ``dense``): ``fcn``, a baseline; ``dag-rnn``, DAG-RNN (Shuai et al.,
"DAG-Recurrent Neural Networks for Scene Labeling", CVPR 2016); ``dense-rnn``, the dense attentional RNN
(Fan, Chu, Latecki, Ling, "Scene Parsing via Dense Recurrent Neural Networks with Attentional
Selection", WACV 2019, arXiv 1811.04778; no public code). All three build the same trunk
(``DenseModel``) and differ only in what sits between the trunk's feature map and the task's
classifier (the wrapper's 1x1 conv ``head`` and bilinear upsampling, ``seqbench/dense.py``).
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from seqbench.config import POSITIVE, Domain, choice, setting
from seqbench.errors import SeqbenchError
from seqbench.model import EAGER, LIBRARY
from seqbench.registry import DENSE, register_model
from seqbench.resnet import IMAGENET_RESNETS, imagenet_trunk, load_torchvision_weights

DIRECTIONS = ("se", "sw", "ne", "nw")
# (dr, dc): the direction rows and columns are visited in (+1 increasing, -1 decreasing); each direction is
# the south-east recurrence on the map flipped along the axes it visits decreasing.
_STEPS = {"se": (1, 1), "sw": (1, -1), "ne": (-1, 1), "nw": (-1, -1)}

OUTPUT_STRIDE = Domain("8, 16 or 32", lambda v: v in (8, 16, 32), 4)
CHECKPOINT_FILE = Domain("empty, or a torchvision ResNet checkpoint file that exists",
                         lambda v: v == "" or Path(v).expanduser().is_file(), "/no/such/resnet.pth")


@dataclass
class DenseModelParams:
    backbone: str = choice("resnet18", tuple(k for k in IMAGENET_RESNETS), "the trunk: torchvision's ResNet")
    output_stride: int = setting(8, OUTPUT_STRIDE, "the trunk's output stride (8: layer3 and layer4 dilated)")
    width: int = setting(64, POSITIVE, "planes of the trunk's first stage (64: the ImageNet ResNets); then x2, x4, x8")
    pretrained: str = setting("", CHECKPOINT_FILE,
                              "a torchvision ImageNet checkpoint for the trunk; empty: random init")

    def validate(self):
        if self.pretrained and self.width != 64:
            raise SeqbenchError(f"'model.pretrained' needs 'model.width' 64 (torchvision's ResNets), not {self.width}")


@dataclass
class DAGParams(DenseModelParams):
    d_in: int = setting(128, POSITIVE, "the RNN's input: the trunk's features reduced by a 1x1 conv")
    hidden: int = setting(128, POSITIVE, "hidden units of each direction")
    d_out: int = setting(128, POSITIVE, "the RNN's output o = sum_d V^d h^d, concatenated with the trunk's features")


@dataclass
class DenseRNNParams(DAGParams):
    att_dim: int = setting(32, POSITIVE, "attention width: e_ij = w^T tanh(W_a x_i + U_a h_j), w in R^att_dim")
    checkpoint: bool = False  # recompute each wavefront's attention scores in the backward pass (memory for time)


# Trunk sizes per preset. tiny: a width-8 ResNet-18 (32x32 inputs, seconds); fast: ResNet-18 OS8
# (CamVid at a reduced size; see tasks/scene.py); paper: dilated ResNet-101 OS8, 512 units (the
# dense-RNN paper's quoted width).
_TINY = {"model.backbone": "resnet18", "model.width": 8, "model.output_stride": 8}
_FAST = {"model.backbone": "resnet18", "model.width": 64, "model.output_stride": 8}
_PAPER = {"model.backbone": "resnet101", "model.width": 64, "model.output_stride": 8}


class DenseModel(nn.Module):
    """The shared trunk (``trunk``) and what sits after it (``neck``, subclasses);
    forward(x[B, 3, H, W]) -> features [B, d_output, H/os, W/os]. The trunk: ``seqbench/resnet.py``'s
    ``imagenet_trunk`` (``model.backbone`` resnet18 / resnet50 / resnet101, ``model.output_stride`` 8 by
    default, ``model.width``; ``model.pretrained`` a torchvision ImageNet checkpoint file)."""

    kinds = frozenset({DENSE})
    implementation = LIBRARY  # fcn: convolutions; the RNN models' wavefront is torch ops from Python
    Params = DenseModelParams
    presets = {"tiny": _TINY, "fast": _FAST, "paper": _PAPER}

    def __init__(self, d_input: int, p: DenseModelParams):
        super().__init__()
        self.p = p
        self.trunk = imagenet_trunk(p.backbone, p.output_stride, p.width, d_input)
        self.pretrained = (load_torchvision_weights(self.trunk, Path(p.pretrained).expanduser())
                           if p.pretrained else None)
        self.d_output = self.trunk.d_output

    def forward(self, x):
        return self.trunk(x)

    def structure(self, head=None) -> dict:
        out = {"backbone": self.p.backbone, "output_stride": self.trunk.output_stride}
        if self.pretrained:
            out["pretrained_sha256"] = self.pretrained["sha256"]
        return out


@register_model("fcn")
class FCN(DenseModel):
    """The trunk alone; the task's 1x1 head and upsampling make it an FCN (trunk → head → upsampling:
    the "same backbone without the RNN" baseline)."""

    paper = "Long, Shelhamer & Darrell, Fully Convolutional Networks for Semantic Segmentation, CVPR 2015"
    paper_url = "https://arxiv.org/abs/1411.4038"
    reference = "https://github.com/pytorch/vision"  # torchvision models/resnet.py: the trunk's names and dilation


class RNNModel(DenseModel):
    """Trunk features F → 1x1 reduction (BN, ReLU) to x (``model.d_in``) → four-direction 2-D RNN
    (``rnn_cls``) → o, BN, ReLU → concatenated with F: the head sees [F, o]. Everything around the
    recurrence (the reduction, BN + ReLU on o, the concatenation, one 1x1 classifier) is our reading,
    the same for both RNNs so that they differ only in the recurrence."""

    implementation = EAGER  # the wavefront: a few batched torch ops per anti-diagonal, from Python

    Params = DAGParams
    rnn_cls: type

    def __init__(self, d_input: int, p: DAGParams):
        super().__init__(d_input, p)
        c = self.trunk.d_output
        self.reduce = nn.Sequential(nn.Conv2d(c, p.d_in, 1, bias=False), nn.BatchNorm2d(p.d_in), nn.ReLU(inplace=True))
        self.rnn = self.make_rnn(p)
        self.post = nn.Sequential(nn.BatchNorm2d(p.d_out), nn.ReLU(inplace=True))
        self.d_output = c + p.d_out

    def forward(self, x):
        f = self.trunk(x)
        return torch.cat([f, self.post(self.rnn(self.reduce(f)))], 1)


# ----------------------------------------------------------------------------- wavefronts
class _Diagonals:
    """The anti-diagonal order of an H x W grid: positions sorted by (r + c, r). ``order[i]`` is the
    raster index (r * W + c) of the i-th position, ``bounds[k]`` the slice of diagonal k, ``sizes[k]`` its
    length. Per direction (each the south-east recurrence on its flipped map): ``src[d * N + i]`` the
    image's raster index of direction d's i-th unit in diagonal order, ``dst[d * N + p]`` the row d * N + i
    of the image's pixel p; ``raster_src``, ``raster_dst`` the same for the flipped map's raster order (the
    per-pixel loop's)."""

    def __init__(self, H: int, W: int, device):
        r, c = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
        r, c = r.reshape(-1), c.reshape(-1)
        key = (r + c) * (H + 1) + r
        order = torch.argsort(key)
        self.H, self.W, self.N = H, W, H * W
        self.rows, self.cols = r[order].to(device), c[order].to(device)
        self.order = order.to(device)
        self.inverse = torch.argsort(order).to(device)
        counts = torch.bincount((r + c), minlength=H + W - 1).tolist()
        starts = [0]
        for n in counts:
            starts.append(starts[-1] + n)
        self.bounds = [(starts[k], starts[k + 1]) for k in range(H + W - 1)]
        self.sizes = counts

        def image(rows, cols):  # [D * N]: the image's raster index of each direction's flipped-map position
            return torch.cat([(rows if dr > 0 else H - 1 - rows) * W + (cols if dc > 0 else W - 1 - cols)
                              for dr, dc in (_STEPS[d] for d in DIRECTIONS)])

        def inverse(src):
            return (torch.argsort(src.view(-1, H * W), 1) + torch.arange(len(DIRECTIONS))[:, None] * H * W).view(-1)

        src, raster_src = image(r[order], c[order]), image(r, c)
        self.src, self.dst = src.to(device), inverse(src).to(device)
        self.raster_src, self.raster_dst = raster_src.to(device), inverse(raster_src).to(device)
        # DAG-RNN: diagonal k's south-east predecessors as (j, before, after): F.pad widths (negative: a crop)
        # that turn diagonal j's states [.., L_j, ..] into one row per unit (r, k - r) of diagonal k, zero where
        # the predecessor lies outside the grid: N (row r - 1) and W (r) on diagonal k - 1, NW (r - 1) on k - 2.
        span = [(max(0, k - W + 1), min(k, H - 1)) for k in range(H + W - 1)]  # first and last row of diagonal k
        self.pred_pads = []
        for k in range(H + W - 1):
            pads = []
            for j, shift in ((k - 1, 1), (k - 1, 0), (k - 2, 1)):
                lo, hi = span[k][0] - shift, span[k][1] - shift  # the rows wanted from diagonal j
                if j >= 0 and max(lo, span[j][0]) <= min(hi, span[j][1]):  # some predecessor inside the grid
                    pads.append((j, span[j][0] - lo, hi - span[j][1]))
            self.pred_pads.append(pads)

    @staticmethod
    def get(H: int, W: int, device) -> "_Diagonals":
        return _diagonals(H, W, str(device))


@functools.lru_cache(maxsize=32)  # images of many sizes (ADE20K at its own sizes): the recent ones
def _diagonals(H: int, W: int, device: str) -> _Diagonals:
    return _Diagonals(H, W, device)


def _uniform(shape, fan_in: int, scale: float = 1.0) -> nn.Parameter:
    k = scale / math.sqrt(fan_in)
    return nn.Parameter(torch.empty(shape).uniform_(-k, k))


class FourDirectionRNN(nn.Module):
    """Base of the two 2-D RNNs: per-direction input map U, b, recurrent W, output V (stacked on a
    leading direction axis), the wavefront loop, the per-pixel loops. forward(x[B, C, H, W]) ->
    o [B, d_out, H, W] = Σ_d V^d h^d.

    Both recurrences run by anti-diagonal wavefronts: every predecessor of a unit on the anti-diagonal
    r + c = k lies on an earlier one, so the H + W − 1 diagonals are computed in order, each as one
    batched step over all its units; the four directions run together (each is the south-east
    recurrence on the feature map flipped along W, H or both: one gather of the pixels into each
    direction's diagonal order, one back). States are [D, N, B, hidden] (units, then the batch), so a
    step's product with W is one bmm of [D, L·B, hidden] by [D, hidden, hidden]. ``reference_forward``
    is the plain per-pixel loop of the equations (tests check the wavefront's values against it);
    ``loop_forward`` the per-pixel loop written for speed and autograd (tests check values and gradients
    against it; ``scripts/bench_dense_rnn.py`` times the wavefront against it). Initialisation (ours):
    uniform ±1/sqrt(fan-in), as torch's RNNs."""

    W_scale = 1.0

    def __init__(self, d_in: int, hidden: int, d_out: int):
        super().__init__()
        D = len(DIRECTIONS)
        self.d_in, self.hidden, self.d_out = d_in, hidden, d_out
        self.U = _uniform((D, hidden, d_in), d_in)
        self.b = _uniform((D, hidden), d_in)
        self.W = _uniform((D, hidden, hidden), hidden, self.W_scale)
        self.V = _uniform((D, d_out, hidden), hidden)
        self.c = nn.Parameter(torch.zeros(d_out))

    def _inputs(self, x: torch.Tensor, src: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x [B, C, H, W] -> each direction's pixels in the order ``src`` (image raster indices, [D * N]):
        xd [D, N * B, C] and U x + b as [D, N, B, hidden]."""
        B, C, H, W = x.shape
        D = len(DIRECTIONS)
        xd = x.permute(2, 3, 0, 1).contiguous().view(H * W, B * C).index_select(0, src).view(D, H * W * B, C)
        ux = torch.baddbmm(self.b[:, None, :], xd, self.U.transpose(1, 2))
        return xd, ux.view(D, H * W, B, self.hidden)

    def _outputs(self, h: torch.Tensor, dst: torch.Tensor, H: int, W: int) -> torch.Tensor:
        """o = Σ_d V^d h^d + c [B, d_out, H, W] from h [D, N, B, hidden] in the order that ``dst`` undoes (a
        gather and a sum, not index_add: the same sum on every run on a GPU too)."""
        D, N, B, n = h.shape
        y = torch.bmm(h.reshape(D, N * B, n), self.V.transpose(1, 2)).view(D * N, B * self.d_out)
        o = y.index_select(0, dst).view(D, N, B, self.d_out).sum(0) + self.c  # [N, B, d_out]
        return o.view(H, W, B, self.d_out).permute(2, 3, 0, 1).contiguous()

    def hidden_states(self, x: torch.Tensor) -> torch.Tensor:
        """h of every direction by wavefronts, each in its own (flipped) orientation: [4, B, H, W, hidden]."""
        B, C, H, W = x.shape
        dg = _Diagonals.get(H, W, x.device)
        hs = self.wavefront(*self._inputs(x, dg.src), dg)  # [D, N, B, hidden] in diagonal order
        return hs.index_select(1, dg.inverse).view(len(DIRECTIONS), H, W, B, self.hidden).permute(0, 3, 1, 2, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        H, W = x.shape[-2:]
        dg = _Diagonals.get(H, W, x.device)
        return self._outputs(self.wavefront(*self._inputs(x, dg.src), dg), dg.dst, H, W)

    def wavefront(self, xd, ux, dg) -> torch.Tensor:
        """h [D, N, B, hidden] in diagonal order from xd [D, N * B, C] and ux [D, N, B, hidden] in that order."""
        raise NotImplementedError

    # ------------------------------------------------------------- the per-pixel loops
    def loop_forward(self, x: torch.Tensor, together: bool = False) -> torch.Tensor:
        """The recurrence one pixel at a time, written for autograd: o [B, d_out, H, W]. The same gathers
        and projections around it as the wavefront (the input projections for all pixels at once); each
        pixel's state is a tensor of its own (no writes into a shared buffer), the states are stacked once
        at the end. ``together``: the four directions step together (one [4, B, ...] product per pixel);
        otherwise one direction after another."""
        H, W = x.shape[-2:]
        D = len(DIRECTIONS)
        dg = _Diagonals.get(H, W, x.device)
        xd, ux = self._inputs(x, dg.raster_src)  # each direction's flipped map in raster order
        groups = [slice(0, D)] if together else [slice(d, d + 1) for d in range(D)]
        h = torch.cat([self.loop_directions(xd[g], ux[g], g, H, W) for g in groups])  # [D, N, B, hidden]
        return self._outputs(h, dg.raster_dst, H, W)

    def loop_directions(self, xd, ux, g: slice, H: int, W: int) -> torch.Tensor:
        """h [D', N, B, hidden] of the directions ``g`` (xd [D', N * B, C], ux [D', N, B, hidden] in raster
        order of their flipped maps), pixel by pixel."""
        raise NotImplementedError

    @torch.no_grad()
    def reference_forward(self, x: torch.Tensor) -> torch.Tensor:
        """The equations, one pixel at a time, each direction in its own coordinates (no flips, no
        wavefronts): o [B, d_out, H, W]. The tests' oracle, written to be read, not timed."""
        B, C, H, W = x.shape
        out = self.c[None, :, None, None].expand(B, self.d_out, H, W).clone()
        for d, name in enumerate(DIRECTIONS):
            dr, dc = _STEPS[name]
            h = torch.zeros(B, H, W, self.hidden, dtype=x.dtype, device=x.device)
            for r in (range(H) if dr > 0 else range(H - 1, -1, -1)):
                for c in (range(W) if dc > 0 else range(W - 1, -1, -1)):
                    h[:, r, c] = self.reference_unit(d, x[:, :, r, c], h, r, c, dr, dc)
            out = out + torch.einsum("bhwk,ok->bohw", h, self.V[d])
        return out

    def reference_unit(self, d, x_i, h, r, c, dr, dc):
        raise NotImplementedError

    def pairs(self, H: int, W: int) -> int:
        return 0

    def flops(self, x) -> int:
        """Per sample, of the equations (a multiply-add 2, a pointwise op 1): see ``step_flops``."""
        H, W = x.shape[-2:]
        N = H * W
        d, h, o = self.d_in, self.hidden, self.d_out
        per_dir = N * (2 * d * h + h) + N * 2 * h * o + self.step_flops(N, H, W)
        return len(DIRECTIONS) * per_dir + N * (len(DIRECTIONS) - 1) * o + N * o  # sum over directions, + c

    def step_flops(self, N: int, H: int, W: int) -> int:
        raise NotImplementedError


class DAGRNN(FourDirectionRNN):
    """h_i = ReLU(U x_i + W Σ_{j∈P(i)} h_j + b), P(i) the 3 predecessors (Shuai et al.); a wavefront
    step gathers them from the two previous diagonals."""

    W_scale = 1.0 / 3.0  # our init: the three predecessors are summed

    def wavefront(self, xd, ux, dg):
        D, _, B, n = ux.shape
        Wt = self.W.transpose(1, 2)  # [D, hidden, hidden]
        hs = []  # per diagonal: [D, L, B, hidden]
        for u, pads in zip(ux.split(dg.sizes, 1), dg.pred_pads):  # split, not slices: no zero-filled ux per step
            if not pads:
                hs.append(F.relu(u))
                continue
            summed = functools.reduce(torch.add, [F.pad(hs[j], (0, 0, 0, 0, a, b)) for j, a, b in pads])
            L = u.shape[1]
            hs.append(F.relu(torch.baddbmm(u.view(D, L * B, n), summed.view(D, L * B, n), Wt)).view(D, L, B, n))
        return torch.cat(hs, 1)

    def loop_directions(self, xd, ux, g, H, W):
        D, N, B, n = ux.shape
        Wt = self.W[g].transpose(1, 2)
        cells, h = ux.unbind(1), []  # unbind: one stack in the backward, not a zero-filled ux per pixel
        for r in range(H):
            for c in range(W):
                preds = [h[i] for i, inside in (((r - 1) * W + c, r > 0), (r * W + c - 1, c > 0),
                                                ((r - 1) * W + c - 1, r > 0 and c > 0)) if inside]
                u = cells[r * W + c]
                h.append(F.relu(torch.baddbmm(u, functools.reduce(torch.add, preds), Wt) if preds else u))
        return torch.stack(h, 1)

    def reference_unit(self, d, x_i, h, r, c, dr, dc):
        H, W = h.shape[1:3]
        s = torch.zeros_like(h[:, 0, 0])
        for pr, pc in ((r - dr, c), (r, c - dc), (r - dr, c - dc)):
            if 0 <= pr < H and 0 <= pc < W:
                s = s + h[:, pr, pc]
        return F.relu(x_i @ self.U[d].T + s @ self.W[d].T + self.b[d])

    def step_flops(self, N, H, W):
        h = self.hidden
        return N * (2 * h + 2 * h * h + h + h)  # sum of 3 predecessors, W, add, ReLU


def _scores(ax_q: torch.Tensor, uh: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """e_ij = wᵀ tanh(W_a x_i + U_a h_j): ax_q [D, B, Q, a], uh [D, B, P, a], w [D, a] -> [D, B, Q, P],
    computed as 2 wᵀ σ(2 W_a x_i + 2 U_a h_j) − Σ w (tanh z = 2σ(2z) − 1: torch 2.14's CPU tanh took 6
    times σ's time here, and the scores are most of the dense RNN's work). The weighing by w is a product
    and a sum, not a matmul: its backward is two broadcasts, not bmm's with one column."""
    s = torch.sigmoid_((2 * ax_q)[:, :, :, None, :] + (2 * uh)[:, :, None, :, :])  # in place: add keeps nothing
    return (s * (2 * w)[:, None, None, None, :]).sum(-1) - w.sum(-1)[:, None, None, None]


class DenseAttentionRNN(FourDirectionRNN):
    """h_i = ReLU(U x_i + W Σ_{j∈D(i)} α_ij h_j + b), α_i = softmax_j wᵀ tanh(W_a x_i + U_a h_j),
    D(i) the quadrant before i (our reading of Fan et al.; see ``DenseRNNModel``). A wavefront step
    scores its units against every unit of the earlier diagonals and masks those outside each unit's
    quadrant."""

    def __init__(self, d_in: int, hidden: int, d_out: int, att_dim: int, use_checkpoint: bool = False):
        super().__init__(d_in, hidden, d_out)
        D = len(DIRECTIONS)
        self.att_dim, self.use_checkpoint = att_dim, use_checkpoint
        self.Wa = _uniform((D, att_dim, d_in), d_in)
        self.Ua = _uniform((D, att_dim, hidden), hidden)
        self.w = _uniform((D, att_dim), att_dim)

    def wavefront(self, xd, ux, dg):
        D, _, B, n = ux.shape
        a = self.att_dim
        ax = torch.bmm(xd, self.Wa.transpose(1, 2)).view(D, -1, B, a).transpose(1, 2)  # W_a x_i: [D, B, N, a]
        Wt, Uat = self.W.transpose(1, 2), self.Ua.transpose(1, 2)
        hs, uhs = [], []  # per diagonal: h [D, B, L, hidden], U_a h [D, B, L, a] (the attention's layout)
        for k, (u, ax_q) in enumerate(zip(ux.split(dg.sizes, 1), ax.split(dg.sizes, 2))):  # no zero-filled ux
            s, e = dg.bounds[k]
            L = e - s
            u = u.transpose(1, 2)  # [D, B, L, hidden]
            if k == 0:  # the first unit has no predecessor: its context is zero
                h = F.relu(u.contiguous())
            else:
                rq, cq = dg.rows[s:e], dg.cols[s:e]
                rk, ck = dg.rows[:s], dg.cols[:s]
                outside = (rk[None, :] > rq[:, None]) | (ck[None, :] > cq[:, None])  # [Q, P]: not in the quadrant
                args = (ax_q, outside, self.w, *uhs, *hs)
                if self.use_checkpoint and torch.is_grad_enabled():
                    ctx = checkpoint(self._context, k, *args, use_reentrant=False)
                else:
                    ctx = self._context(k, *args)
                h = F.relu(torch.bmm(ctx.view(D, B * L, n), Wt).view(D, B, L, n) + u)
            hs.append(h)
            uhs.append(torch.bmm(h.view(D, B * L, n), Uat).view(D, B, L, a))  # U_a h_j, once per unit
        return torch.cat(hs, 2).transpose(1, 2)

    @staticmethod
    def _context(k, ax_q, outside, w, *rest):
        """Σ_j α_ij h_j [D, B, Q, hidden] for the units of diagonal k (ax_q [D, B, Q, a]) over the units of
        diagonals < k (rest: their U_a h and h)."""
        uh, h = torch.cat(rest[:k], 2), torch.cat(rest[k:], 2)  # [D, B, P, a], [D, B, P, hidden]
        return torch.softmax(_scores(ax_q, uh, w).masked_fill(outside, float("-inf")), -1) @ h

    def loop_directions(self, xd, ux, g, H, W):
        D, N, B, n = ux.shape
        Wt, Uat, w = self.W[g].transpose(1, 2), self.Ua[g].transpose(1, 2), self.w[g]
        cells = ux.unbind(1)  # unbind: one stack in the backward, not a zero-filled ux per pixel
        axs = torch.bmm(xd, self.Wa[g].transpose(1, 2)).view(D, N, B, -1).unbind(1)  # W_a x_i for every pixel
        # the quadrant of (r, c) = columns 0..c of the finished rows + this row's pixels before c: the finished
        # rows kept column-major ([D', B, W, r, ·]: columns 0..c are one slice), this row's as it grows
        done_h = done_uh = None
        h = []
        for r in range(H):
            row_h, pre_h, pre_uh = [], None, None
            for c in range(W):
                u = cells[r * W + c]
                if r == 0 and c == 0:
                    hi = F.relu(u)
                else:
                    hk = torch.cat(([done_h[:, :, :c + 1].flatten(2, 3)] if r else []) + ([pre_h] if c else []), 2)
                    uk = torch.cat(([done_uh[:, :, :c + 1].flatten(2, 3)] if r else []) + ([pre_uh] if c else []), 2)
                    alpha = torch.softmax(_scores(axs[r * W + c][:, :, None], uk, w)[:, :, 0], -1)  # [D', B, P]
                    ctx = torch.bmm(alpha.view(D * B, 1, -1), hk.view(D * B, -1, n)).view(D, B, n)
                    hi = F.relu(torch.baddbmm(u, ctx, Wt))
                uhi = torch.bmm(hi, Uat)
                row_h.append(hi)
                pre_h = hi[:, :, None] if pre_h is None else torch.cat([pre_h, hi[:, :, None]], 2)
                pre_uh = uhi[:, :, None] if pre_uh is None else torch.cat([pre_uh, uhi[:, :, None]], 2)
            done_h = pre_h[:, :, :, None] if done_h is None else torch.cat([done_h, pre_h[:, :, :, None]], 3)
            done_uh = pre_uh[:, :, :, None] if done_uh is None else torch.cat([done_uh, pre_uh[:, :, :, None]], 3)
            h += row_h
        return torch.stack(h, 1)

    def reference_unit(self, d, x_i, h, r, c, dr, dc):
        H, W = h.shape[1:3]
        keys = [(pr, pc) for pr in range(H) for pc in range(W)
                if (pr - r) * dr <= 0 and (pc - c) * dc <= 0 and (pr, pc) != (r, c)]
        ctx = torch.zeros_like(h[:, 0, 0])
        if keys:
            hj = torch.stack([h[:, pr, pc] for pr, pc in keys], 1)  # [B, |D(i)|, hidden]
            e = torch.tanh((x_i @ self.Wa[d].T)[:, None, :] + hj @ self.Ua[d].T) @ self.w[d]  # [B, |D(i)|]
            ctx = (torch.softmax(e, 1)[:, :, None] * hj).sum(1)
        return F.relu(x_i @ self.U[d].T + ctx @ self.W[d].T + self.b[d])

    def pairs(self, H: int, W: int) -> int:
        """Σ_i |D(i)|: the (unit, predecessor) pairs of one direction."""
        return (H * (H + 1) // 2) * (W * (W + 1) // 2) - H * W

    def step_flops(self, N, H, W):
        h, a = self.hidden, self.att_dim
        per_unit = 2 * self.d_in * a + 2 * h * a + 2 * h * h + h + h  # W_a x, U_a h, W ctx, add, ReLU
        per_pair = a + a + 2 * a + 3 + 2 * h  # add, tanh, w-dot, softmax (exp, sum, divide), α h
        return N * per_unit + self.pairs(H, W) * per_pair

    def score_bytes(self, B: int, H: int, W: int, dtype_bytes: int = 4) -> int:
        """Bytes of the largest wavefront step's score tensor [4, B, Q, P, att_dim]: the transient
        (and, without checkpointing, per-step stored) cost of the attention."""
        dg = _Diagonals.get(H, W, "cpu")
        worst = max((e - s) * s for s, e in dg.bounds)
        return len(DIRECTIONS) * B * worst * self.att_dim * dtype_bytes


@register_model("dag-rnn")
class DAGRNNModel(RNNModel):
    """DAG-RNN (Shuai et al., CVPR 2016) on the shared trunk: four directional DAG-RNNs over the reduced
    trunk features x, their summed outputs o concatenated with the features (``RNNModel``).

    Four DAGs (south-east, south-west, north-east, north-west); in the south-east one, unit (r, c) has
    the 3 predecessors P = {(r-1, c), (r, c-1), (r-1, c-1)} (the others are its mirror images) and
        h_i = ReLU(U x_i + Σ_{j∈P(i)} W h_j + b)          (one W for the 3 predecessors)
    per direction d with its own U^d, W^d, b^d; o = Σ_d V^d h^d_i. The four DAGs, the recurrence, ReLU,
    the per-direction weights and the summed outputs follow the paper as secondary sources state it
    (the project's issue and notes; the four DAGs also by a third-party summary), not its method section
    verbatim. Its VGG-16 trunk with deconvolution and skip layers is replaced by the shared dilated
    ResNet, its class-weighted loss by the task's (``task.class_weights``). W is initialised divided
    by 3 (its three predecessors are summed)."""

    paper = "Shuai, Zuo, Wang & Wang, DAG-Recurrent Neural Networks for Scene Labeling, CVPR 2016"
    paper_url = "https://arxiv.org/abs/1509.00552"
    reference = "none: no reference code was read; written from the paper as secondary sources state it"
    Params = DAGParams
    presets = {"tiny": {**_TINY, "model.d_in": 8, "model.hidden": 8, "model.d_out": 8},
               "fast": {**_FAST, "model.d_in": 128, "model.hidden": 128, "model.d_out": 128},
               "paper": {**_PAPER, "model.d_in": 512, "model.hidden": 512, "model.d_out": 512}}

    def make_rnn(self, p):
        return DAGRNN(p.d_in, p.hidden, p.d_out)


@register_model("dense-rnn")
class DenseRNNModel(RNNModel):
    """The dense attentional RNN (Fan et al., WACV 2019) on the shared trunk: as ``dag-rnn``, but each
    unit is connected to every unit before it in its direction's order, weighed by attention.

    South-east (the others mirror it): D(i) = {(r', c') : r' ≤ r, c' ≤ c} \\ {i}, the whole quadrant, and
        e_ij = wᵀ tanh(W_a x_i + U_a h_j),   α_i = softmax_{j∈D(i)} e_ij,
        h_i = ReLU(U x_i + W Σ_{j∈D(i)} α_ij h_j + b).
    No code of the paper is public. From the paper (its abstract): dense connections between each pair
    of image units, an attention model that weighs them, end-to-end integration with a CNN; a quoted
    sentence: 512 input/hidden/output units, ReLU and softmax as the two non-linearities. Our reading:
    the quadrant as the dense predecessor set, the additive score e_ij (the form the project's issue
    gives; the paper may score differently), the attention's width ``model.att_dim``, the attention
    weighing the hidden states *before* W (one W for the context). The attention costs O((HW)²·att_dim)
    work and, for the backward pass, memory per direction; ``model.checkpoint=true`` recomputes each
    step's scores in the backward pass instead of storing them (``torch.utils.checkpoint``)."""

    paper = "Fan, Chu, Latecki & Ling, Scene Parsing via Dense Recurrent Neural Networks with Attentional " \
            "Selection, WACV 2019"
    paper_url = "https://arxiv.org/abs/1811.04778"
    reference = "none: no public code of the paper"
    Params = DenseRNNParams
    presets = {"tiny": {**_TINY, "model.d_in": 8, "model.hidden": 8, "model.d_out": 8, "model.att_dim": 4},
               "fast": {**_FAST, "model.d_in": 128, "model.hidden": 128, "model.d_out": 128, "model.att_dim": 32},
               "paper": {**_PAPER, "model.d_in": 512, "model.hidden": 512, "model.d_out": 512, "model.att_dim": 64,
                         "model.checkpoint": True}}

    def make_rnn(self, p):
        return DenseAttentionRNN(p.d_in, p.hidden, p.d_out, p.att_dim, p.checkpoint)
