"""The image kind: CIFAR readers, augmentation, the ResNet family with SE and DIA, FLOPs, parameter
counts against closed forms, the no-validation protocol, and the sequence view (scifar)."""
import json
import pickle

import numpy as np
import pytest
import torch
import torch.nn as nn

from seqbench import config, registry
from seqbench.cli import main
from seqbench.errors import SeqbenchError
from seqbench.image import random_crop_flip
from seqbench.measure import count_flops
from seqbench.resnet import DIALSTMCell, DIAUnit
from seqbench.runner import Runner
from conftest import QUICK


def build(model, task="cifar10", preset="tiny", **over):
    cfg = config.resolve(registry.get_model(model), registry.get_task(task), preset,
                         {f"model.{k}": v for k, v in over.items()})
    t = registry.get_task(task).cls(cfg.task_params, None)
    return t.wrap(registry.get_model(model).cls(t.spec().d_input, cfg.model_params))


# ------------------------------------------------------------------------------ DIA unit
def test_dia_lstm_step_equals_the_equations():
    torch.manual_seed(0)
    C, r, B = 12, 4, 5
    cell = DIALSTMCell(C, r)
    x, h0, c0 = torch.randn(B, C), torch.randn(B, C), torch.randn(B, C)

    def mlp(seq, v):  # C -> C/r -> 4C with ReLU between
        return seq[2].weight @ torch.relu(seq[0].weight @ v + seq[0].bias) + seq[2].bias

    for b in range(B):
        gates = mlp(cell.x2g, x[b]) + mlp(cell.h2g, h0[b])
        i, f, g, o = gates[:C], gates[C:2 * C], gates[2 * C:3 * C], gates[3 * C:]
        c = torch.sigmoid(f) * c0[b] + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.sigmoid(c)  # sigmoid, not tanh
        got_h, (got_h2, got_c) = cell(x[b:b + 1], (h0[b:b + 1], c0[b:b + 1]))
        assert torch.allclose(got_h[0], h, atol=1e-6) and torch.allclose(got_c[0], c, atol=1e-6)
        assert torch.equal(got_h, got_h2)
    assert cell.x2g[0].out_features == C // r and cell.x2g[2].out_features == 4 * C


def test_dia_unit_shared_per_stage_and_state_zero_at_each_stage_start():
    model = build("dia-resnet", depth=20, width=4)
    trunk = model.backbone.trunk
    units = []
    for stage in trunk.stages():
        first = stage.blocks[0].attn
        assert isinstance(first, DIAUnit)
        assert all(b.attn is first for b in stage.blocks)  # the same object in every block
        units.append(first)
    assert len({id(u) for u in units}) == 3  # one per stage
    assert [u.cell.x2g[0].in_features for u in units] == [4, 8, 16]  # the stage's output width
    # the shared unit's parameters are counted once
    n_dia = sum(p.numel() for u in units for p in u.parameters())
    assert sum(p.numel() for p in model.parameters()) == sum(
        p.numel() for n, p in model.named_parameters() if ".attn." not in n) + n_dia
    seen = []
    for u in units:
        u.register_forward_pre_hook(lambda m, args: seen.append((id(m), args[1])))
    model(torch.randn(2, 3, 32, 32))
    per_stage = [[s for uid, s in seen if uid == id(u)] for u in units]
    for states in per_stage:
        assert len(states) == 3 and states[0] is None  # zero (None) at the stage's first block
        assert all(isinstance(s, tuple) for s in states[1:])  # then carried block to block


def test_dia_recalibrates_the_branch_before_the_shortcut():
    torch.manual_seed(0)
    model = build("dia-resnet", depth=8, width=4).eval()
    blk = model.backbone.trunk.layer2.blocks[0]  # the strided first block is recalibrated too
    x = torch.randn(2, 4, 32, 32)
    branch = blk.branch(x)
    h, _ = blk.attn.cell(branch.mean((2, 3)), None)
    want = torch.relu(branch * h[:, :, None, None] + blk.downsample(x))
    got, state = blk(x, None)
    assert torch.allclose(got, want, atol=1e-6) and state is not None


@pytest.mark.parametrize("cell", ["lstm", "hippo", "gru"])
def test_any_recurrent_model_as_the_dia_cell(cell):
    model = build("dia-resnet", depth=8, width=8, dia_cell=cell)
    y, _ = model(torch.randn(3, 3, 32, 32))
    y.sum().backward()
    unit = model.backbone.trunk.layer1.blocks[0].attn
    assert unit.cell.cell.name == cell and unit.cell.cell.d_output == 2  # hidden C/r = 8/4
    assert all(p.grad is not None for p in unit.parameters())
    x = torch.zeros(1, 3, 32, 32)
    assert count_flops(model, x) > count_flops(build("resnet", depth=8, width=8), x)


def test_bad_dia_cell_is_one_line():
    with pytest.raises(SeqbenchError, match="'model.dia_cell': expected dia-lstm or a registered recurrent model"):
        config.resolve(registry.get_model("dia-resnet"), registry.get_task("cifar10"), "tiny",
                       {"model.dia_cell": "resnet"})


@pytest.mark.parametrize("model", ["resnet", "se-resnet", "dia-resnet"])
@pytest.mark.parametrize("ablation",
                         [{"skip": False}, {"bn": False}, {"preact": True}, {"preact": True, "skip": False}])
def test_ablations_run(model, ablation):
    m = build(model, depth=8, width=4, **ablation)
    y, _ = m(torch.randn(2, 3, 32, 32))
    y.sum().backward()
    mods = list(m.modules())
    if not ablation.get("bn", True):
        assert not any(isinstance(x, nn.BatchNorm2d) for x in mods)
    if not ablation.get("skip", True):
        assert all(b.downsample is None for s in m.backbone.trunk.stages() for b in s.blocks)


def test_bad_depth_is_one_line():
    with pytest.raises(SeqbenchError, match="depth 6n\\+2"):
        config.resolve(registry.get_model("resnet"), registry.get_task("cifar10"), "fast", {"model.depth": 21})
    with pytest.raises(SeqbenchError, match="depth 9n\\+2"):
        config.resolve(registry.get_model("resnet"), registry.get_task("cifar10"), "fast",
                       {"model.depth": 22, "model.block": "bottleneck"})


# -------------------------------------------------------------------- parameter counts
def closed_form(depth=164, classes=100, attn="none", preact=False, r_se=16, r_dia=4):
    """Parameters of a CIFAR bottleneck ResNet, counted by hand (convs without bias, BN weight and
    bias, fc with bias; SE and DIA linears with bias; one DIA unit per stage)."""
    n = (depth - 2) // 9
    total = 3 * 16 * 9  # stem conv
    total += 0 if preact else 2 * 16  # stem BN (post-activation only)
    cin = 16
    for p in (16, 32, 64):
        C = 4 * p
        for j in range(n):
            a = cin if j == 0 else C
            convs = a * p + 9 * p * p + p * C
            bns = (2 * a + 2 * p + 2 * p) if preact else (2 * p + 2 * p + 2 * C)
            total += convs + bns
            if j == 0:  # projection: 1x1 conv (+ BN when post-activation)
                total += a * C + (0 if preact else 2 * C)
            if attn == "se":
                m = C // r_se
                total += (C * m + m) + (m * C + C)
            if attn == "dia" and preact:
                total += 2 * C  # the reference's bn_additional
        if attn == "dia":  # one unit per stage: two MLPs C -> C/r -> 4C
            m = C // r_dia
            total += 2 * ((C * m + m) + (m * 4 * C + 4 * C))
        cin = C
    total += 2 * 256 if preact else 0  # final BN
    return total + 256 * classes + classes


@pytest.mark.parametrize("model,preact,want", [
    ("resnet", False, 1_727_284), ("se-resnet", False, 1_929_388), ("dia-resnet", False, 1_946_132),
    ("resnet", True, 1_726_388), ("dia-resnet", True, 1_961_364)])
def test_parameter_counts_164_on_cifar100(model, preact, want, capsys):
    m = build(model, "cifar100", "paper-preact" if preact else "paper")
    got = sum(p.numel() for p in m.parameters())
    attn = {"resnet": "none", "se-resnet": "se", "dia-resnet": "dia"}[model]
    with capsys.disabled():
        print(f"\n{model}{'-preact' if preact else ''}-164 on CIFAR-100: {got:,} parameters")
    assert got == closed_form(attn=attn, preact=preact) == want


# ---------------------------------------------------------------------------- FLOPs
def test_resnet20_flops_equal_a_hand_count():
    m = build("resnet", depth=20, width=16)
    got = m.flops_per_sample()
    # convs: 2 * k*k*Cin*Cout * H*W; BN: 2 per element; fc: 2*64*10 + 10
    conv = 3 * 16 * 9 * 32 * 32  # stem
    conv += 3 * 2 * (16 * 16 * 9 * 32 * 32)  # stage 1: 3 blocks of two 16->16 convs at 32x32
    conv += (16 * 32 * 9 * 16 * 16 + 32 * 32 * 9 * 16 * 16) + 2 * 2 * (32 * 32 * 9 * 16 * 16) + 16 * 32 * 16 * 16
    conv += (32 * 64 * 9 * 8 * 8 + 64 * 64 * 9 * 8 * 8) + 2 * 2 * (64 * 64 * 9 * 8 * 8) + 32 * 64 * 8 * 8
    bn = 16 * 32 * 32 * (1 + 6) + 32 * 16 * 16 * (6 + 1) + 64 * 8 * 8 * (6 + 1)
    want = 2 * conv + 2 * bn + 2 * 64 * 10 + 10
    assert got == pytest.approx(want, rel=0.01)
    assert 40e6 < got / 2 < 42e6  # ~41M multiply-adds: the usual figure for ResNet-20


# ---------------------------------------------------------------------- data readers
def test_official_and_subset_layouts_are_read(env):
    t10 = registry.get_task("cifar10").cls(config.params_class(registry.get_task("cifar10").cls)(), env["data"])
    a = t10.arrays()
    assert a["train_x"].shape == (200, 3, 32, 32) and a["test_x"].shape == (60, 3, 32, 32)
    raw = pickle.load(open(env["data"] / "cifar" / "cifar-10-batches-py" / "data_batch_1", "rb"), encoding="latin1")
    assert np.array_equal(a["train_x"][0].reshape(-1), raw["data"][0])  # 1024 R, 1024 G, 1024 B
    p = config.params_class(registry.get_task("cifar10").cls)(source="subset")
    s = registry.get_task("cifar10").cls(p, env["data"]).arrays()
    z = np.load(env["data"] / "cifar10-subset" / "cifar10_subset.npz")
    assert np.array_equal(s["train_x"].reshape(len(s["train_x"]), -1), z["train_data"])
    c100 = registry.get_task("cifar100").cls(config.params_class(registry.get_task("cifar100").cls)(), env["data"])
    assert c100.arrays()["train_y"].max() < 100
    with pytest.raises(SeqbenchError, match="subset exists for CIFAR-10 only"):
        registry.get_task("cifar100").cls(config.params_class(registry.get_task("cifar100").cls)(source="subset"),
                                          env["data"]).arrays()


def test_missing_official_files_offline_is_one_line(env, capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("SEQBENCH_DATA", str(tmp_path / "empty"))
    code = main(["run", "--model", "resnet", "--task", "cifar10", "--preset", "tiny"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert "CIFAR-10 data not found" in err[0] and "data_batch_1" in err[0] and "cifar-10-batches-py" in err[0]


def test_checksums_are_checked(env, capsys, monkeypatch):
    monkeypatch.setenv("SEQBENCH_VERIFY", "1")  # generated files cannot match torchvision's md5s
    assert main(["run", "--model", "resnet", "--task", "cifar10", "--preset", "tiny"]) == 2
    assert "is corrupted" in capsys.readouterr().err
    assert main(["run", "--model", "resnet", "--task", "cifar10", "--preset", "tiny",
                 "--set", "task.source=subset"]) == 2
    err = capsys.readouterr().err
    assert "CIFAR-10 subset file" in err and "is corrupted" in err


def test_real_subset_checksums_and_counts():
    """The real offline subset, when this checkout has ../shared/data beside it."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[2] / "shared" / "data"
    if not (root / "cifar10-subset" / "cifar10_subset.npz").is_file():
        pytest.skip("no ../shared/data/cifar10-subset here")
    t = registry.get_task("cifar10").cls(config.params_class(registry.get_task("cifar10").cls)(source="subset"), root)
    a = t.arrays()
    assert a["train_x"].shape == (5085, 3, 32, 32) and a["test_x"].shape == (1017, 3, 32, 32)
    assert np.bincount(a["test_y"], minlength=10).tolist() == [105, 93, 100, 104, 92, 87, 114, 102, 110, 110]
    ld = t.loaders(64, 256, 0)
    assert (ld["train"].num_samples, ld["val"].num_samples, ld["test"].num_samples) == (4577, 508, 1017)


# --------------------------------------------------------------------- augmentation
def test_random_crop_flip_is_a_padded_window_and_reproducible():
    x = torch.randint(0, 255, (6, 3, 8, 8), dtype=torch.uint8)
    a = random_crop_flip(x, torch.Generator().manual_seed(3), pad=2)
    b = random_crop_flip(x, torch.Generator().manual_seed(3), pad=2)
    assert torch.equal(a, b) and a.shape == x.shape
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for i in range(6):  # each output is some window of the padded image, flipped or not
        found = any(torch.equal(w, a[i]) or torch.equal(w.flip(2), a[i])
                    for oy in range(5) for ox in range(5) for w in [padded[i, :, oy:oy + 8, ox:ox + 8]])
        assert found
    assert torch.equal(random_crop_flip(x, None), x)  # evaluation: untouched


# ----------------------------------------------------------------- protocol and record
def test_no_validation_protocol_records_last_and_best_test_apart(env):
    over = {**QUICK, "epochs": 3, "limit_batches": 0, "task.val_fraction": 0.0}
    cfg = config.resolve(registry.get_model("resnet"), registry.get_task("cifar10"), "tiny", over)
    r = Runner(cfg, quiet=True)
    assert "val" not in r.setup.loaders
    rec = r.fit()
    m = rec["metrics"]
    assert rec["status"] == "completed" and m["selection"] == {"epoch": 3, "reason": "last_no_val_split"}
    assert m["val"] is None
    tests = [h["test_acc"] for h in rec["history"]]
    assert len(tests) == 3 and all("val_acc" not in h for h in rec["history"])
    assert m["test"]["acc"] == pytest.approx(tests[-1])  # the last epoch's weights
    assert m["test_best"] == {"epoch": 1 + int(np.argmax(tests)), "acc": max(tests)}
    assert json.loads(open(rec["path"]).read())["metrics"]["test_best"]["acc"] == max(tests)


def test_record_says_which_source_and_how_many_images(env):
    cfg = config.resolve(registry.get_model("resnet"), registry.get_task("cifar10"), "tiny",
                         {**QUICK, "task.source": "subset"})
    rec = Runner(cfg, quiet=True).fit()
    ti = rec["task_info"]
    assert ti["data_source"]["source"] == "subset" and ti["images_used"] == {"train": 64, "val": 20, "test": 32}
    assert ti["data"] == "subset 64/20/32" and ti["input_shape"] == [3, 32, 32]


# --------------------------------------------------------------------- sequences
def test_scifar_is_raster_order_and_gray_is_pils_luma(env):
    from PIL import Image

    T = registry.get_task("scifar").cls
    x = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    seq = T(config.params_class(T)(), env["data"]).eval_transform(x)
    assert seq.shape == (2, 1024, 3)
    h, w = 5, 17
    want = (x[1, :, h, w].float() / 255 - torch.tensor([0.4914, 0.4822, 0.4465])) / torch.tensor([0.247, 0.243, 0.261])
    assert torch.allclose(seq[1, h * 32 + w], want, atol=1e-6)
    gray = T(config.params_class(T)(gray=True), env["data"])
    g = gray.eval_transform(x)
    assert g.shape == (2, 1024, 1) and gray.spec().d_input == 1
    pil = np.asarray(Image.fromarray(x[0].permute(1, 2, 0).numpy()).convert("L"), dtype=np.float32).reshape(-1) / 255
    assert np.allclose(g[0, :, 0].numpy(), (pil - 122.6 / 255) / (61.0 / 255), atol=1e-6)


def test_scifar_runs_with_recurrent_models(env):
    for model in ("lstm", "hippo"):
        cfg = config.resolve(registry.get_model(model), registry.get_task("scifar"), "tiny", QUICK)
        rec = Runner(cfg, quiet=True).fit()
        assert rec["status"] == "completed" and rec["task_info"]["seq_len"] == 1024
