"""The dense kind: the wavefront recurrences against per-pixel loops, the dilated ImageNet trunk and
torchvision's names, confusion-matrix metrics, the file-backed loader, CamVid / ADE20K readers (the
real files when ../shared/data is beside this checkout), the poly schedule, per-class records,
example predictions and the report's tables and picture."""
import functools
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from seqbench import config, registry, report
from seqbench.cli import main
from seqbench.dense import (IGNORE, DenseDataset, DenseLoader, confusion, confusion_metrics,
                            median_frequency_weights, scale_crop_flip)
from seqbench.errors import SeqbenchError
from seqbench.models.scene import DAGRNN, DIRECTIONS, DenseAttentionRNN
from seqbench.resnet import imagenet_trunk
from seqbench.runner import Runner
from conftest import QUICK

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def task(name, env_data, preset="tiny", **over):
    e = registry.get_task(name)
    cfg = config.resolve(registry.get_model("fcn"), e, preset, {f"task.{k}": v for k, v in over.items()})
    return e.cls(cfg.task_params, env_data)


# ------------------------------------------------------------------- wavefront = per-pixel loop
@pytest.mark.parametrize("cls", [DAGRNN, DenseAttentionRNN])
@pytest.mark.parametrize("hw", [(4, 5), (5, 3), (1, 6), (6, 1), (3, 3)])
def test_wavefront_equals_the_per_pixel_loop(cls, hw):
    torch.manual_seed(0)
    kw = {"att_dim": 5} if cls is DenseAttentionRNN else {}
    m = cls(6, 7, 3, **kw).double()
    with torch.no_grad():  # a larger bias and W: every unit active, the recurrence does work
        m.b.add_(0.5)
        m.W.mul_(2.0)
    x = torch.randn(2, 6, *hw, dtype=torch.float64)
    got, want = m(x), m.reference_forward(x)
    assert got.shape == (2, 3, *hw)
    assert torch.allclose(got, want, atol=1e-10, rtol=0), (got - want).abs().max()
    # each direction matters: the output changes when one direction's weights change
    for d in range(len(DIRECTIONS)):
        with torch.no_grad():
            m.V[d].add_(0.1)
        assert not torch.allclose(m(x), got)
        with torch.no_grad():
            m.V[d].sub_(0.1)


def test_dag_rnn_unit_sees_exactly_its_three_predecessors():
    """South-east: h(r, c) from h(r-1, c), h(r, c-1), h(r-1, c-1) only: with U = 0 except at one
    pixel, the state spreads to the south-east quadrant of that pixel and nowhere else."""
    m = DAGRNN(1, 1, 1).double()
    with torch.no_grad():
        m.U.fill_(1.0)
        m.b.zero_()
        m.W.fill_(1.0)
    x = torch.zeros(1, 1, 4, 5, dtype=torch.float64)
    x[0, 0, 1, 2] = 1.0
    h = m.hidden_states(x)[0, 0, :, :, 0]  # direction se, in its own (unflipped) orientation
    nonzero = (h > 0).nonzero().tolist()
    assert sorted(nonzero) == sorted([r, c] for r in range(1, 4) for c in range(2, 5))
    # the count of monotone paths (Delannoy numbers) with W = 1: h(2, 3) = 3, h(3, 4) = 13
    assert h[2, 3] == 3 and h[3, 4] == 13


def test_checkpointed_attention_gives_the_same_values_and_gradients():
    torch.manual_seed(1)
    m = DenseAttentionRNN(4, 5, 3, 4).double()
    x = torch.randn(2, 4, 3, 4, dtype=torch.float64, requires_grad=True)
    m(x).square().sum().backward()
    g = [x.grad.clone()] + [p.grad.clone() for p in m.parameters()]
    x.grad = None
    m.zero_grad()
    m.use_checkpoint = True
    m(x).square().sum().backward()
    g2 = [x.grad] + [p.grad for p in m.parameters()]
    assert all(torch.allclose(a, b, atol=1e-12) for a, b in zip(g, g2))


def test_dense_rnn_flops_count_the_quadrant_pairs():
    m = DenseAttentionRNN(4, 6, 3, 5)
    H, W = 3, 4
    pairs = sum((r + 1) * (c + 1) - 1 for r in range(H) for c in range(W))
    assert m.pairs(H, W) == pairs
    model = registry.get_model("dense-rnn")
    p = config.resolve(model, registry.get_task("camvid"), "tiny").model_params
    small = model.cls(3, p)
    from seqbench.measure import count_flops
    with_rnn = count_flops(small, torch.zeros(1, 3, 32, 32))
    rnn = small.rnn.flops(torch.zeros(1, p.d_in, 4, 4))
    assert rnn > 0 and with_rnn > rnn  # the recurrence's own count is inside the model's


# ------------------------------------------------------------------------------- the trunk
@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_trunk_names_are_torchvisions(name):
    import torchvision

    tv = getattr(torchvision.models, name)(weights=None).state_dict()
    ours = imagenet_trunk(name, 8).state_dict()
    assert set(ours) == {k for k in tv if not k.startswith("fc.")}
    assert all(ours[k].shape == tv[k].shape for k in ours)


def test_torchvision_checkpoint_loads_through_model_pretrained(tmp_path):
    import torchvision

    torch.manual_seed(0)
    tv = torchvision.models.resnet18(weights=None).eval()
    path = tmp_path / "resnet18.pth"
    torch.save(tv.state_dict(), path)
    model = registry.get_model("fcn")
    cfg = config.resolve(model, registry.get_task("camvid"), "fast", {"model.pretrained": str(path)})
    ours = model.cls(3, cfg.model_params)
    assert ours.structure()["pretrained_sha256"] and ours.pretrained["file"] == str(path)
    x = torch.randn(1, 3, 64, 64)
    tv_feat = torch.nn.Sequential(*list(tv.children())[:-2])
    stride32 = imagenet_trunk("resnet18", None)
    stride32.load_state_dict(ours.trunk.state_dict())
    with torch.no_grad():
        assert torch.allclose(stride32.eval()(x), tv_feat(x), atol=1e-5)  # same weights, same function
        assert ours.eval()(x).shape == (1, 512, 8, 8)  # output stride 8
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(SeqbenchError, match="unreadable as a torch checkpoint"):
        model.cls(3, config.resolve(model, registry.get_task("camvid"), "fast",
                                    {"model.pretrained": str(bad)}).model_params)
    with pytest.raises(SeqbenchError, match="needs 'model.width' 64"):
        config.resolve(model, registry.get_task("camvid"), "tiny", {"model.pretrained": str(path)})
    r50 = tmp_path / "r50.pth"
    torch.save(torchvision.models.resnet50(weights=None).state_dict(), r50)
    with pytest.raises(SeqbenchError, match="does not fit this trunk"):
        model.cls(3, config.resolve(model, registry.get_task("camvid"), "fast",
                                    {"model.pretrained": str(r50)}).model_params)


@pytest.mark.parametrize("name,os_,want",
                         [("resnet18", 8, 8), ("resnet18", 16, 4), ("resnet50", 8, 8), ("resnet18", 32, 2)])
def test_output_stride(name, os_, want):
    t = imagenet_trunk(name, os_, width=8)
    assert t(torch.zeros(1, 3, 64, 64)).shape[-2:] == (want, want) and t.output_stride == os_
    dil = [m.dilation[0] for m in t.layer4.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size[0] == 3]
    assert max(dil) == {8: 4, 16: 2, 32: 1}[os_]


def test_cifar_checkpoints_with_the_old_block_names_still_load():
    model = registry.get_model("dia-resnet")
    m = model.cls(3, config.resolve(model, registry.get_task("cifar10"), "tiny").model_params)
    sd = m.state_dict()
    assert any(k.startswith("trunk.layer1.0.") for k in sd)

    def blocks(k):
        for i in (1, 2, 3):
            k = k.replace(f"layer{i}.", f"layer{i}.blocks.")
        return k

    old = {blocks(k): v
           for k, v in sd.items()}
    m2 = model.cls(3, config.resolve(model, registry.get_task("cifar10"), "tiny").model_params)
    m2.load_state_dict(old)  # strict
    assert all(torch.equal(m2.state_dict()[k], v) for k, v in sd.items())


# ---------------------------------------------------------------------------------- metrics
def test_confusion_metrics_by_hand():
    y = torch.tensor([[0, 0, 1, 1], [2, 2, IGNORE, 1]])
    pred = torch.tensor([[0, 1, 1, 1], [2, 0, 2, 1]])
    cm = confusion(pred, y, 4)
    assert cm.tolist() == [[1, 1, 0, 0], [0, 3, 0, 0], [1, 0, 1, 0], [0, 0, 0, 0]]  # the ignored pixel is not counted
    m = confusion_metrics(cm)
    iou = [1 / 3, 3 / 4, 1 / 2]  # tp / (gt + pred - tp)
    assert m["iou"][:3] == pytest.approx(iou) and np.isnan(m["iou"][3])  # class 3: in neither
    assert m["miou"] == pytest.approx(sum(iou) / 3)
    assert m["pixel_acc"] == pytest.approx(5 / 7)
    assert m["class_acc"] == pytest.approx((1 / 2 + 1 + 1 / 2) / 3)


def test_eval_stats_upsample_to_the_label_resolution(env):
    t = task("camvid", env["data"])
    out = torch.zeros(1, 11, 2, 2)
    out[0, 0] = 2.5
    out[0, 3, :, 1] = 5.0  # upsampled bilinearly to 4 columns: class 3 scores 0, 1.25, 3.75, 5 against class 0's 2.5
    y = torch.full((1, 4, 4), 3)
    y[0, 0, 0] = IGNORE
    cm = t.eval_stats(out, y)["confusion"]
    assert cm.sum() == 15 and cm[3, 3] == 8 and cm[3, 0] == 7
    m = t.metrics({"confusion": cm.double()})
    assert set(m) == {"miou", "pixel_acc", "class_acc"} and m["pixel_acc"] == pytest.approx(8 / 15)


def test_loss_ignores_255_and_uses_median_frequency_weights(env):
    t = task("camvid", env["data"], class_weights="median_freq")
    t.loaders(4, 4, 0)
    w = t.class_weights()
    assert w.shape == (11,) and (w[[0, 1, 3, 4, 5, 8]] > 0).all() and (w[[2, 6, 7, 9, 10]] == 0).all()
    out = torch.randn(2, 11, 3, 3)
    y = torch.randint(0, 11, (2, 3, 3))
    y[0, 0, 0] = IGNORE
    want = F.cross_entropy(out, y, weight=w, ignore_index=255)
    assert torch.allclose(t.loss(out, y), want)
    assert t.info()["class_weights"] == pytest.approx(w.tolist(), abs=1e-5)


def test_median_frequency_by_hand():
    a = torch.tensor([[0, 0, 0, 1]], dtype=torch.uint8)  # class 0: 3/4, class 1: 1/4
    b = torch.tensor([[1, 1, 2, IGNORE]], dtype=torch.uint8)  # class 1: 2/3, class 2: 1/3 (void excluded)
    w = median_frequency_weights([a, b], 3)
    freq = torch.tensor([3 / 4, 3 / 7, 1 / 3], dtype=torch.float64)  # class 1: 3 pixels / (4 + 3)
    assert torch.allclose(w.double(), freq.median() / freq, atol=1e-6)


# ----------------------------------------------------------------------------------- loader
def test_loader_contract_and_seeded_augmentation(env):
    t = task("camvid", env["data"], train_subset=7)
    ld = t.loaders(3, 2, seed=5)
    tr = ld["train"]
    assert tr.num_samples == 7 and len(tr) == 3  # the last partial batch is kept
    sizes = [x.shape[0] for x, _ in tr]
    assert sizes == [3, 3, 1]
    tr.set_epoch(1)
    a = [(x.clone(), y.clone()) for x, y in tr]
    b = [(x.clone(), y.clone()) for x, y in tr]
    assert all(torch.equal(x1, x2) and torch.equal(y1, y2) for (x1, y1), (x2, y2) in zip(a, b))
    tr.set_epoch(2)
    c = [(x, y) for x, y in tr]
    assert not all(torch.equal(x1, x2) for (x1, _), (x2, _) in zip(a, c))
    x, y = a[0]
    assert x.shape == (3, 3, 32, 32) and y.shape == (3, 32, 32) and y.dtype == torch.long
    assert set(y.unique().tolist()) <= set(range(11)) | {IGNORE}
    tr.workers = 1  # a worker process gives the same batches
    tr.set_epoch(1)
    d = [(x, y) for x, y in tr]
    assert all(torch.equal(x1, x2) and torch.equal(y1, y2) for (x1, y1), (x2, y2) in zip(a, d))
    # evaluation: labels at the files' resolution, inputs at task.size
    t2 = task("camvid", env["data"], size="16x24")
    x, y = next(iter(t2.loaders(2, 2, 0)["test"]))
    assert x.shape[-2:] == (16, 24) and y.shape[-2:] == (32, 32)


def test_scale_crop_flip_pads_with_ignore_and_is_reproducible():
    x = torch.randint(0, 255, (3, 10, 12), dtype=torch.uint8)
    y = torch.randint(0, 5, (10, 12), dtype=torch.uint8)
    g = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    a = scale_crop_flip(x, y, g(), (16, 16), (0.5, 0.6))  # always smaller than the crop: padded
    b = scale_crop_flip(x, y, g(), (16, 16), (0.5, 0.6))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert a[0].shape == (3, 16, 16) and a[1].shape == (16, 16)
    assert (a[1] == IGNORE).sum() >= 16 * 16 - 6 * 8  # at most a 6x8 scaled image inside
    xs, ys = scale_crop_flip(x, y, g(), (4, 4), (1.0, 1.0), flip=False)  # a plain window
    found = any(torch.equal(y[r:r + 4, c:c + 4], ys) for r in range(7) for c in range(9))
    assert found


# ------------------------------------------------------------------------------------- data
def test_camvid_offline_and_corrupted_are_one_line(env, capsys, tmp_path, monkeypatch):
    argv = ["run", "--model", "fcn", "--task", "camvid", "--preset", "tiny", "--results", str(tmp_path / "r")]
    monkeypatch.setenv("SEQBENCH_VERIFY", "1")
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "CamVid file" in err[0] and "is corrupted" in err[0]
    monkeypatch.setenv("SEQBENCH_DATA", str(tmp_path / "empty"))
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "CamVid data not found" in err[0] and "train.txt" in err[0]
    monkeypatch.setenv("SEQBENCH_DATA", str(env["data"]))
    monkeypatch.setenv("SEQBENCH_VERIFY", "0")
    next((env["data"] / "camvid" / "testannot").glob("*.png")).unlink()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "listed files are missing" in err[0]


def test_ade20k_offline_is_one_line(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("SEQBENCH_DATA", str(tmp_path / "empty"))
    monkeypatch.setenv("SEQBENCH_DOWNLOAD", "0")
    assert main(["run", "--model", "fcn", "--task", "ade20k", "--preset", "tiny",
                 "--results", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "ADE20K data not found" in err[0] and "objectInfo150.txt" in err[0]


def test_ade20k_counts_are_checked(env, monkeypatch):
    monkeypatch.setenv("SEQBENCH_VERIFY", "1")
    with pytest.raises(SeqbenchError, match="ADE20K training: 14 images .* expected 20210"):
        task("ade20k", env["data"]).loaders(2, 2, 0)


def test_ade20k_fake_layout_labels_and_padding(env):
    t = task("ade20k", env["data"])
    ld = t.loaders(2, 3, 0)
    assert t.class_names[:2] == ["class1", "class2"] and len(t.class_names) == 150
    # 14 training images: 30% (4) validate, the tiny preset's first 8 of the other 10 train; test_subset 4
    assert (ld["train"].num_samples, ld["val"].num_samples, ld["test"].num_samples) == (8, 4, 4)
    x, y = next(iter(ld["test"]))  # native sizes, padded to the largest: image 0, label 255
    for i in range(x.shape[0]):
        img, lab = t._datasets["test"].raw(i)
        h, w = lab.shape
        assert torch.equal(y[i, :h, :w], lab.long()) and (y[i, h:] == IGNORE).all() and (y[i, :, w:] == IGNORE).all()
        assert (x[i, :, h:] == 0).all()
    xt, yt = next(iter(ld["train"]))
    assert xt.shape == (2, 3, 32, 32) and yt.shape == (2, 32, 32)
    assert t.example_input(x, 8).shape == (8, 3, 32, 32)  # latency at the crop


def test_real_ade20k_sample_is_read():
    """The benchmark's own 3-image sample (CSAILVision/sceneparsing sampleData) in the real layout."""
    from seqbench.tasks.scene import ade20k_lut, ade20k_pairs, read_object_info

    folder = SHARED / "ade20k-sample"
    if not (folder / "objectInfo150.txt").is_file():
        pytest.skip("no ../shared/data/ade20k-sample here")
    names = read_object_info(folder / "objectInfo150.txt")
    assert len(names) == 150 and names[:3] == ["wall", "building", "sky"] and names[-1] == "flag"
    csv = read_object_info(folder / "objectInfo150.csv")  # its Name column has ';' for ', ' and for spaces
    assert len(csv) == 150 and csv[:3] == names[:3] and csv[44] == "chest" and names[44] == "chest of drawers"
    pairs = ade20k_pairs(folder, "validation")
    assert [p[0].name for p in pairs] == [f"ADE_val_0000000{i}.jpg" for i in (1, 2, 3)]
    ds = DenseDataset(pairs, ade20k_lut())
    from PIL import Image
    sizes = []
    for i, (img, lab) in enumerate(pairs):
        x, y = ds[i]
        raw = np.asarray(Image.open(lab))
        assert x.shape[1:] == y.shape == raw.shape
        assert ((raw == 0) == (y.numpy() == IGNORE)).all()  # "other" is ignored
        assert np.array_equal(y.numpy()[raw > 0], raw[raw > 0] - 1)  # 1..150 -> 0..149
        sizes.append(tuple(raw.shape))
    assert sizes == [(512, 683), (364, 500), (300, 400)]
    x, y = next(iter(DenseLoader(ds, 3)))
    assert x.shape == (3, 3, 512, 683) and (y[2, 300:] == IGNORE).all()


def test_real_camvid_lists_and_files():
    folder = SHARED / "camvid"
    if not (folder / "train.txt").is_file():
        pytest.skip("no ../shared/data/camvid here")
    t = task("camvid", SHARED, preset="fast")  # checksums on: the pinned SHA-256 of the lists
    assert [len(t.pairs(s)) for s in ("train", "val", "test")] == [367, 101, 233]
    # median-frequency weights from the training labels against SegNet's published ones: within 20%
    # for 10 classes; SignSymbol's is 2.5x lower here (SegNet's own counting is not published)
    from seqbench.tasks.scene import SEGNET_WEIGHTS
    ratio = (t.class_weights() / torch.tensor(SEGNET_WEIGHTS)).tolist()
    assert all(0.95 < r < 1.2 for i, r in enumerate(ratio) if i != 6) and 0.35 < ratio[6] < 0.45
    x, y = DenseDataset(t.pairs("test")[:1], t.lut(), size=(120, 160))[0]
    assert x.shape == (3, 120, 160) and y.shape == (360, 480)
    assert set(y.unique().tolist()) <= set(range(11)) | {IGNORE}


# ------------------------------------------------------------------ runner, records, report
def test_poly_schedule_steps_every_batch(env):
    over = {**QUICK, "limit_batches": 0, "epochs": 2, "schedule": "poly", "poly_power": 0.9, "lr": 0.1,
            "task.train_subset": 8, "batch_size": 4}
    cfg = config.resolve(registry.get_model("fcn"), registry.get_task("camvid"), "tiny", over)
    r = Runner(cfg, quiet=True)
    lrs = []
    r.setup.optimizer.register_step_pre_hook(lambda opt, args, kwargs: lrs.append(opt.param_groups[0]["lr"]))
    rec = r.fit()
    total = 2 * 2
    assert lrs == pytest.approx([0.1 * (1 - i / total) ** 0.9 for i in range(total)])
    assert [h["lr"] for h in rec["history"]] == pytest.approx([0.1, 0.1 * 0.5 ** 0.9])


def test_bad_poly_power_and_sizes_are_one_line(env, capsys):
    for key, bad in (("poly_power", "0"), ("task.size", "32"), ("task.scale_min", "0"), ("model.output_stride", "4"),
                     ("model.pretrained", "/no/such.pth")):
        assert main(["run", "--model", "dag-rnn", "--task", "camvid", "--preset", "tiny", "--set", f"{key}={bad}"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and f"'{key}'" in err[0]
    assert main(["run", "--model", "fcn", "--task", "camvid", "--preset", "tiny", "--set", "task.scale_min=3"]) == 2
    assert "scale_min <= scale_max" in capsys.readouterr().err


def test_records_carry_per_class_iou_examples_and_the_report_draws_them(env):
    recs = []
    for model in ("fcn", "dense-rnn"):
        cfg = config.resolve(registry.get_model(model), registry.get_task("camvid"), "tiny", QUICK)
        recs.append(Runner(cfg, quiet=True).fit())
    for rec in recs:
        pc = json.loads(Path(rec["path"]).read_text())["metrics"]["test_per_class"]
        assert pc["classes"] == registry.get_task("camvid").cls.class_names and len(pc["iou"]) == len(pc["acc"]) == 11
        present = [v for v in pc["iou"] if v is not None]  # null: a class in neither labels nor predictions
        assert rec["metrics"]["test"]["miou"] == pytest.approx(np.mean(present))
        assert sorted(rec["measure"]["latency"]) == ["b1", "b8"]
        ex = rec["examples"]
        z = np.load(env["results"] / ex["file"])
        assert ex["n"] == 3 and z["image0"].shape == (32, 32, 3) and z["label0"].shape == z["pred0"].shape == (32, 32)
        last = rec["task_info"]["images_used"]["test"] - 1
        assert ex["indices"] == [0, round(last / 2), last]  # spread over the split: frames of different scenes
        assert rec["task_info"]["palette"][3] == [128, 64, 128] and rec["task_info"]["classes"][0] == "Sky"
        on_disk = json.loads(Path(rec["path"]).read_text())
        assert on_disk["examples"]["file"] == ex["file"]
    out = report.build(env["results"])
    text = out["report"].read_text()
    assert "## Per-class test IoU: camvid" in text and "| Pedestrian |" in text
    assert "fcn/tiny" in text and "dense-rnn/tiny" in text and "(n=1)" in text
    assert "b8_ms" in text and "b64_ms" not in text
    assert (env["results"] / "plots" / "examples_camvid.png").is_file()
    assert "miou" in (env["results"] / "summary.csv").read_text()


def test_bench_script_runs_at_a_tiny_size(tmp_path, capsys):
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "scripts" / "bench_dense_rnn.py"
    spec = importlib.util.spec_from_file_location("bench_dense_rnn", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.main(["--hw", "3", "4", "--batch", "1", "--width", "4", "--att-dim", "2", "--rounds", "1",
                     "--out", str(tmp_path)]) == 0
    res = json.loads(next(tmp_path.glob("dense_rnn_loop-*.json")).read_text())
    assert [r["model"] for r in res["rows"]] == ["dense", "dag"]
    assert all(r["max_abs_diff"] < 1e-5 and r["loop_over_wavefront"] > 0 for r in res["rows"])


# ------------------------------------------------------- what is refused, reported, or read lazily
def test_sizes_a_trunk_cannot_take_are_refused_in_one_line(env, capsys, tmp_path):
    """Sides of at most the trunk's output stride give a 1x1 feature map, which batch norm refuses
    for a batch of one: below 9 by declaration, up to the model's own stride when the model is built."""
    res = tmp_path / "res"
    for sets, needle in ((["task.size=8x8"], "'task.size': expected a size HxW in pixels, each side at least 9"),
                         (["task.size=16x16", "model.output_stride=16"], "task.size 16x16 is too small for a trunk "
                                                                         "at output stride 16"),
                         (["task.crop=32x32", "model.output_stride=32"], "task.crop 32x32 is too small")):
        argv = ["run", "--model", "fcn", "--task", "camvid", "--preset", "tiny", "--results", str(res)]
        assert main(argv + [a for s in sets for a in ("--set", s)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and needle in err[0], err
        assert not res.exists()
    # the smallest taken size trains, a batch of one included
    over = {**QUICK, "task.size": "9x9", "task.train_subset": 1, "batch_size": 1}
    rec = Runner(config.resolve(registry.get_model("fcn"), registry.get_task("camvid"), "tiny", over), quiet=True).fit()
    assert rec["status"] == "completed"


def test_a_training_part_below_one_batch_is_refused_in_one_line(env, capsys, tmp_path):
    res = tmp_path / "res"
    assert main(["run", "--model", "fcn", "--task", "ade20k", "--preset", "tiny", "--results", str(res),
                 "--set", "task.val_fraction=0.9"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["seqbench: error: task.val_fraction 0.9 of 14 training images leaves 1 image for training, fewer "
                   "than one batch (4); a training part must hold at least one batch"]
    assert not res.exists()


def test_labels_outside_the_classes_and_large_subsets_are_in_the_record_and_said_once(env, capsys):
    from PIL import Image

    lab = sorted((env["data"] / "camvid" / "trainannot").glob("*.png"))[0]
    a = np.asarray(Image.open(lab)).copy()
    a[:2, :5], a[2, :3] = 200, 12  # 13 pixels that are neither a class (0..10) nor void (11)
    Image.fromarray(a).save(lab)
    over = {**QUICK, "task.train_subset": 100}  # the generated split has 12
    rec = Runner(config.resolve(registry.get_model("fcn"), registry.get_task("camvid"), "tiny", over), quiet=True).fit()
    warnings = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("seqbench: warning:")]
    assert warnings == [
        "seqbench: warning: task.train_subset=100 asks for more than the 12 images of the train split: all 12 are used",
        "seqbench: warning: camvid: 13 label pixels in 1 of 20 label maps have values that are neither a class nor "
        "void (11): 12, 200; ignored like void"], warnings
    ti = rec["task_info"]
    assert ti["labels_outside_classes"] == {"pixels": {"train": 13, "val": 0, "test": 0}, "label_maps": 1,
                                            "values": [12, 200]}
    assert ti["subset_larger_than_split"] == {"train": {"key": "task.train_subset", "asked": 100, "available": 12}}
    assert ti["images_used"] == {"train": 12, "val": 4, "test": 4} and ti["void_values"] == [11]


def test_class_weights_are_computed_when_the_loss_first_needs_them(env, tmp_path, monkeypatch, capsys):
    """Building the model and timing it read no label (a bench without data: weights of 1 stand in,
    the same computation); a run computes them at its first training step."""
    import seqbench.dense as D
    from seqbench.build import build

    t = task("camvid", env["data"], class_weights="median_freq")
    t.loaders(4, 4, 0)
    assert getattr(t, "_weights", None) is None  # loaders built, the weights not yet
    x, y = t.example_batch(2)
    t.loss(torch.randn(2, 11, *y.shape[1:]), y)
    assert t._weights is not None and t.info()["class_weights"] == pytest.approx(t._weights.tolist(), abs=1e-5)
    cfg = config.resolve(registry.get_model("fcn"), registry.get_task("camvid"), "tiny",
                         {**QUICK, "task.class_weights": "median_freq"})

    def no_reading(*a, **k):
        raise AssertionError("a label file was read")

    monkeypatch.setattr(D, "label_values", no_reading)
    monkeypatch.setenv("SEQBENCH_DATA", str(tmp_path / "nothing"))
    setup = build(cfg, data=False)
    x, y = setup.task.example_batch(2)
    assert torch.isfinite(setup.step((x, y))) and setup.task.loss_weights().tolist() == [1.0] * 11
    out = tmp_path / "bench"
    assert main(["bench", "--task", "camvid", "--models", "fcn", "--preset", "tiny", "--set",
                 "task.class_weights=median_freq", "--batch-size", "2", "--out", str(out), "--rounds", "1",
                 "--min-run-time", "0.01", "--threads", "1"]) == 0
    assert not (tmp_path / "nothing").exists()


# ------------------------------------------------- the fair per-pixel loop and the wavefront (issue 27)
@pytest.mark.parametrize("cls", [DAGRNN, DenseAttentionRNN])
@pytest.mark.parametrize("hw", [(4, 5), (5, 3), (1, 6), (6, 1), (1, 1)])
@pytest.mark.parametrize("together", [False, True])
def test_the_per_pixel_loop_gives_the_wavefronts_values_and_gradients(cls, hw, together):
    """``loop_forward`` (the benchmark's baseline) = ``reference_forward`` in values, = the wavefront in
    values and in the gradients of the input and of every parameter."""
    torch.manual_seed(0)
    kw = {"att_dim": 5} if cls is DenseAttentionRNN else {}
    m = cls(6, 7, 3, **kw).double()
    with torch.no_grad():
        m.b.add_(0.5)
        m.W.mul_(2.0)
    x = torch.randn(2, 6, *hw, dtype=torch.float64, requires_grad=True)
    g = torch.randn(2, 3, *hw, dtype=torch.float64)

    def run(f):
        x.grad = None
        m.zero_grad(set_to_none=True)
        out = f(x)
        out.backward(g)
        return out.detach(), [x.grad] + [torch.zeros_like(p) if p.grad is None else p.grad for p in m.parameters()]

    got, got_grads = run(functools.partial(m.loop_forward, together=together))
    want, want_grads = run(m)
    assert torch.allclose(got, m.reference_forward(x), atol=1e-10, rtol=0)
    assert torch.allclose(got, want, atol=1e-10, rtol=0), (got - want).abs().max()
    for name, a, b in zip(["x"] + [n for n, _ in m.named_parameters()], got_grads, want_grads):
        assert torch.allclose(a, b, atol=1e-10, rtol=0), (name, (a - b).abs().max())


@pytest.mark.parametrize("cls", [DAGRNN, DenseAttentionRNN])
def test_no_step_copies_the_weights_per_sample(cls):
    """Issue 27: ``x @ W.transpose(1, 2)[:, None]`` copied W to [4, B, hidden, hidden] at every wavefront
    step (and its backward made per-sample weight gradients); the products now fold the batch into the
    rows: no op of a forward + backward pass makes a tensor of that shape."""
    from torch.utils._python_dispatch import TorchDispatchMode

    shapes = set()

    class Shapes(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            shapes.update(tuple(t.shape) for t in (out if isinstance(out, (tuple, list)) else [out])
                          if isinstance(t, torch.Tensor))
            return out

    torch.manual_seed(0)
    m = cls(6, 7, 3, **({"att_dim": 5} if cls is DenseAttentionRNN else {}))
    x = torch.randn(3, 6, 4, 5, requires_grad=True)
    with Shapes():
        m(x).square().sum().backward()
    assert (4, 3, 7, 6) in shapes or (4, 7, 7) in shapes  # the mode saw the pass
    assert (4, 3, 7, 7) not in shapes and (12, 7, 7) not in shapes
