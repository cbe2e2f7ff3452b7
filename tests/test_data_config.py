import numpy as np
import pytest
import torch

from seqbench import config, registry
from seqbench.data import TensorLoader, ensure_files, file_digest
from seqbench.errors import SeqbenchError
from seqbench.tasks.mnist import bitreversal_permutation, read_idx, write_idx


def test_bitreversal_matches_reference_construction():
    # The reference builds it by repeated half-splitting (bitreversal_po2) and keeps values < n.
    assert bitreversal_permutation(8).tolist() == [0, 4, 2, 6, 1, 5, 3, 7]
    p = bitreversal_permutation(784)
    assert sorted(p.tolist()) == list(range(784))
    perm = np.arange(1024).reshape(1024, 1)
    for _ in range(10):
        half = perm.shape[0] // 2
        perm = np.hstack((perm[:half], perm[half:]))
    ref = perm.squeeze(0)
    assert p.tolist() == ref[ref < 784].tolist()


def test_idx_roundtrip(tmp_path):
    a = np.random.default_rng(0).integers(0, 256, (5, 28, 28)).astype(np.uint8)
    write_idx(tmp_path / "x.gz", a)
    assert np.array_equal(read_idx(tmp_path / "x.gz"), a)


def test_pmnist_applies_the_permutation_and_smnist_does_not(env):
    te = registry.get_task("pmnist").cls(registry.get_task("pmnist").cls.Params(test_subset=10), env["data"])
    ts = registry.get_task("smnist").cls(registry.get_task("smnist").cls.Params(test_subset=10), env["data"])
    xp = next(iter(te.loaders(4, 10, 0)["test"]))[0]
    xs = next(iter(ts.loaders(4, 10, 0)["test"]))[0]
    raw = read_idx(env["data"] / "mnist/MNIST/raw/t10k-images-idx3-ubyte.gz")[:10].reshape(10, -1) / 255.0
    assert xs.shape == (10, 784, 1) and np.allclose(xs[..., 0].numpy(), raw)
    assert np.allclose(xp[..., 0].numpy(), raw[:, bitreversal_permutation(784)])


def test_split_is_fixed_and_disjoint(env):
    cls = registry.get_task("smnist").cls
    a = cls(cls.Params(), env["data"]).loaders(1000, 1000, seed=0)
    b = cls(cls.Params(), env["data"]).loaders(1000, 1000, seed=5)
    assert torch.equal(a["val"].tensors[0], b["val"].tensors[0])  # independent of the run seed
    assert a["val"].num_samples == 30 and a["train"].num_samples == 270  # 10% of 300 generated
    tr = {t.numpy().tobytes() for t in a["train"].tensors[0]}
    assert not any(v.numpy().tobytes() in tr for v in a["val"].tensors[0])


def test_tensor_loader_order_depends_only_on_seed_and_epoch():
    x = torch.arange(10)
    l1, l2 = TensorLoader(x, batch_size=3, shuffle=True, seed=1), TensorLoader(x, batch_size=3, shuffle=True, seed=1)
    l1.set_epoch(2), l2.set_epoch(2)
    o1, o2 = [b[0] for b in l1], [b[0] for b in l2]
    assert all(torch.equal(a, b) for a, b in zip(o1, o2))
    assert [len(b) for b in o1] == [3, 3, 3, 1]  # no dropped tail
    l2.set_epoch(3)
    assert not all(torch.equal(a, b[0]) for a, b in zip(o1, l2))


def test_checksums(tmp_path, monkeypatch):
    monkeypatch.setenv("SEQBENCH_DOWNLOAD", "0")
    f = tmp_path / "a.bin"
    f.write_bytes(b"hello")
    good = file_digest(f)
    assert ensure_files(tmp_path, {"a.bin": good}, {}, "X")["a.bin"] == f
    f.write_bytes(b"hellO")
    with pytest.raises(SeqbenchError, match="corrupted"):
        ensure_files(tmp_path, {"a.bin": good}, {}, "X")
    with pytest.raises(SeqbenchError, match="missing b.bin"):
        ensure_files(tmp_path, {"b.bin": good}, {}, "X")


def test_preset_order_and_overrides():
    m, t = registry.get_model("lstm"), registry.get_task("pmnist")
    tiny = config.resolve(m, t, "tiny")
    assert tiny.train.epochs == 1 and tiny.model_params.hidden == 16 and tiny.task_params.train_subset == 512
    paper = config.resolve(m, t, "paper")
    p = paper
    assert (p.train.batch_size, p.train.lr, p.train.epochs, p.model_params.hidden) == (100, 1e-3, 50, 512)
    c = config.resolve(m, t, "tiny", {"model.hidden": "33", "lr": "0.5", "task.test_subset": "none",
                                      "deterministic": "yes"})
    assert (c.model_params.hidden, c.train.lr, c.task_params.test_subset, c.train.deterministic) == \
        (33, 0.5, None, True)
    flat = c.flat()
    again = config.from_flat(flat, m, t)
    assert again.flat() == flat


def test_model_preset_for_one_task_wins(monkeypatch):
    m, t = registry.get_model("gru"), registry.get_task("smnist")
    monkeypatch.setattr(m.cls, "presets", {"fast": {"model.hidden": 10}, "smnist:fast": {"model.hidden": 12}})
    assert config.resolve(m, t, "fast").model_params.hidden == 12
    assert config.resolve(m, registry.get_task("pmnist"), "fast").model_params.hidden == 10
