"""The ResNet blocks' in-place ReLUs and residual adds give bitwise the same outputs, parameter and
input gradients and BN running statistics as the out-of-place forward (kept here as the reference),
for every block form, attention, ablation and the dilated ImageNet trunks, in train and eval mode."""
import itertools
import types

import pytest
import torch
import torch.nn.functional as F

from seqbench.resnet import Block, ResNetTrunk, imagenet_trunk


def reference_branch(self, x):
    out = x
    for i in range(1, self.n_convs + 1):
        conv, norm = getattr(self, f"conv{i}"), getattr(self, f"bn{i}")
        if self.preact:
            out = conv(F.relu(norm(out)))
        else:
            out = norm(conv(out))
            if i < self.n_convs:
                out = F.relu(out)
    return self.bn_extra(out) if self.bn_extra is not None else out


def reference_block_forward(self, x, state=None):
    out = self.branch(x)
    if self.attn is not None:
        out, state = self.attn(out, state)
    if self.skip:
        out = out + (self.downsample(x) if self.downsample is not None else x)
    return (out if self.preact else F.relu(out)), state


def reference_trunk_forward(self, x):
    x = self.conv1(x)
    if self.bn1 is not None:
        x = F.relu(self.bn1(x))
    if self.maxpool is not None:
        x = self.maxpool(x)
    for stage in self.stages():
        x = stage(x)
    if self.final_bn is not None:
        x = F.relu(self.final_bn(x))
    return x


def out_of_place(trunk: ResNetTrunk) -> ResNetTrunk:
    """``trunk`` running the reference (out-of-place) forward in every block and in the trunk."""
    for m in trunk.modules():
        if isinstance(m, Block):
            m.branch = types.MethodType(reference_branch, m)
            m.forward = types.MethodType(reference_block_forward, m)
    trunk.forward = types.MethodType(reference_trunk_forward, trunk)
    return trunk


def run(trunk, x, g, train: bool):
    """Output, input gradient, parameter gradients and buffers after ``(trunk(x) * g).sum()``."""
    trunk.train(train)
    x = x.clone().requires_grad_(True)
    x0 = x.detach().clone()
    out = trunk(x)
    (out * g).sum().backward()
    assert torch.equal(x.detach(), x0)  # the input is never written
    return {"out": out.detach(), "x.grad": x.grad,
            **{f"grad {n}": p.grad for n, p in trunk.named_parameters()},
            **{f"buffer {n}": b for n, b in trunk.named_buffers()}}


def assert_same(build, x, train: bool):
    torch.manual_seed(0)
    new = build()
    torch.manual_seed(0)
    old = out_of_place(build())
    assert [n for n, _ in new.named_parameters()] == [n for n, _ in old.named_parameters()]
    with torch.no_grad():
        g = torch.randn_like(old.eval()(x))
    a, b = run(new, x, g, train), run(old, x, g, train)
    assert a.keys() == b.keys()
    for k in a:
        assert (a[k] is None) == (b[k] is None), k
        assert a[k] is None or torch.equal(a[k], b[k]), k
    with torch.no_grad():  # inference, as the benchmark times it
        new.eval(), old.eval()
        assert torch.equal(new(x), old(x))


CIFAR = list(itertools.product(["basic", "bottleneck"], [False, True], ["none", "se", "dia"],
                               [(True, True), (False, True), (True, False), (False, False)]))


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("block,preact,attn,skip_bn", CIFAR,
                         ids=[f"{b}-{'preact' if p else 'post'}-{a}-skip{int(s)}-bn{int(n)}"
                              for b, p, a, (s, n) in CIFAR])
def test_cifar_trunk_matches_out_of_place(one_thread, block, preact, attn, skip_bn, train):
    skip, bn = skip_bn
    torch.manual_seed(1)
    x = torch.randn(3, 3, 8, 8)
    assert_same(lambda: ResNetTrunk(3, block=block, layers=[2, 2], widths=[4, 8], stem="cifar", preact=preact,
                                    attn=attn, reduction=2, skip=skip, bn=bn), x, train)


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_dia_with_a_recurrent_cell_matches_out_of_place(one_thread, train):
    torch.manual_seed(1)
    x = torch.randn(2, 3, 8, 8)
    assert_same(lambda: ResNetTrunk(3, block="basic", layers=[2, 2], widths=[4, 8], attn="dia", reduction=2,
                                    dia_cell="gru"), x, train)


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("name,output_stride", [("resnet18", 8), ("resnet50", 16), ("resnet50", None)])
def test_imagenet_trunk_matches_out_of_place(one_thread, name, output_stride, train):
    torch.manual_seed(1)
    x = torch.randn(2, 3, 32, 32)
    assert_same(lambda: imagenet_trunk(name, output_stride, width=4), x, train)


@pytest.mark.parametrize("preact", [False, True], ids=["post", "preact"])
def test_bf16_autocast_matches_out_of_place(one_thread, preact):
    torch.manual_seed(1)
    x = torch.randn(2, 3, 8, 8)
    build = lambda: ResNetTrunk(3, block="bottleneck", layers=[1, 2], widths=[4, 8], preact=preact, attn="dia",  # noqa
                                reduction=2)
    torch.manual_seed(0)
    new = build()
    torch.manual_seed(0)
    old = out_of_place(build())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        a, b = new(x), old(x)
    assert a.dtype == b.dtype and torch.equal(a, b)
