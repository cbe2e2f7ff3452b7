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
    a = cls(cls.Params(), env["data"]).loaders(64, 1000, seed=0)
    b = cls(cls.Params(), env["data"]).loaders(64, 1000, seed=5)
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


# ------------------------------------------------- declarations: listing, start-up, refusals, subsets
def test_every_task_states_its_shapes_without_data_folders_or_the_network(tmp_path, monkeypatch):
    """``seqbench list`` builds each task and asks its spec(): with an empty data root and downloads
    allowed, no task reads data, downloads, or makes a folder (data root, ~/.cache) to answer."""
    import socket
    import urllib.request

    import seqbench.data as D
    from seqbench.build import make_task
    from seqbench.tasks import ptb

    def no_network(*a, **k):
        raise AssertionError("spec() went to the network")

    for mod, name in ((D, "fetch_files"), (D, "fetch_archive"), (ptb, "fetch_files"), (ptb, "fetch_archive"),
                      (ptb, "_download"), (urllib.request, "urlopen"), (socket.socket, "connect")):
        monkeypatch.setattr(mod, name, no_network)
    data, home = tmp_path / "data", tmp_path / "home"
    data.mkdir()
    home.mkdir()
    monkeypatch.setenv("SEQBENCH_DATA", str(data))
    monkeypatch.setenv("SEQBENCH_DOWNLOAD", "1")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.delenv("SEQBENCH_VERIFY", raising=False)
    models = registry.models()
    for name, entry in registry.tasks().items():
        model = next(m for m in models.values() if registry.compatible(m, entry)[0])
        for preset in ("tiny", "fast", "paper"):
            if preset not in config.preset_names(model.cls, entry.cls, name):
                continue
            s = make_task(config.resolve(model, entry, preset)).spec()
            assert s.d_input > 0 and s.d_output > 0 and s.kind == entry.cls.kind, (name, preset)
    assert list(data.iterdir()) == [] and list(home.iterdir()) == []


def test_importing_the_tasks_imports_no_heavy_optional_library():
    """HF datasets, pandas, PIL, torchvision and matplotlib are imported where they are used."""
    import subprocess
    import sys

    heavy = ("datasets", "pandas", "pyarrow", "PIL", "torchvision", "matplotlib")
    code = ("import sys, seqbench.registry as r; r.tasks(); "
            f"print(','.join(m for m in {heavy!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == ""


def test_a_training_part_below_one_batch_and_large_subsets(env, capsys):
    """A split that leaves fewer training images than one batch is refused in one line; a subset
    larger than its split takes it all, said once on stderr and kept in the record's task info."""
    cls = registry.get_task("smnist").cls
    with pytest.raises(SeqbenchError) as e:
        cls(cls.Params(val_fraction=0.9999), env["data"]).loaders(64, 256, seed=0)
    assert str(e.value) == ("task.val_fraction 0.9999 of 300 images leaves 0 images for training, fewer than one "
                            "batch (64); a training part must hold at least one batch")
    t = cls(cls.Params(train_subset=1000, test_subset=50), env["data"])
    ld = t.loaders(64, 256, seed=0)
    assert ld["train"].num_samples == 270 and ld["test"].num_samples == 50
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["seqbench: warning: task.train_subset=1000 asks for more than the 270 images of the train split: "
                   "all 270 are used"]
    info = t.info()
    assert info["images_used"] == {"train": 270, "val": 30, "test": 50}
    assert info["subset_larger_than_split"] == {"train": {"key": "task.train_subset", "asked": 1000, "available": 270}}
    t.loaders(64, 256, seed=0)
    assert capsys.readouterr().err == ""  # once


def test_series_parts_must_each_hold_a_window(env):
    cls = registry.get_task("climate-melbourne").cls
    t = cls(cls.Params(window=32, stride=16, val_frac=0.01), env["data"])
    with pytest.raises(SeqbenchError, match=r"task.train_frac 0.5 and task.val_frac 0.01 of 730 steps leave 7 for "
                                            r"the val part, fewer than one window \(task.window 32\)"):
        t.loaders(8, 8, seed=0)


def test_mnist_checksums_and_mirrors_are_torchvision_s():
    """tasks/mnist.py writes out torchvision's MNIST checksums and mirrors (importing torchvision at every
    start costs seconds): they must stay the installed torchvision's."""
    from torchvision.datasets import MNIST

    from seqbench.tasks import mnist

    assert mnist.MNIST_MD5 == dict(MNIST.resources)
    assert list(mnist.MNIST_MIRRORS) == list(MNIST.mirrors)
