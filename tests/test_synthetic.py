"""The copying and adding tasks: layouts by hand, deterministic generation, the memoryless baselines
through the tasks' own losses, and batch-size invariance of the evaluation sums."""
import math

import pytest
import torch

from seqbench import config, registry
from seqbench.errors import SeqbenchError
from seqbench.task import SequenceClassifier

from seqbench.tasks.synthetic import BLANK, MARKER, PerStepHead, copy_layout


def make(task: str, **params):
    entry = registry.get_task(task)
    p = config.params_class(entry.cls)(**params)
    return entry.cls(p, None)


def evaluate(task, outs, ys):
    """Add up eval_stats over batches as the runner does (float64 on the CPU)."""
    sums = {}
    for out, y in zip(outs, ys):
        for k, v in task.eval_stats(out, y).items():
            v = v.detach().to("cpu", torch.float64)
            sums[k] = sums[k] + v if k in sums else v
    return task.metrics(sums)


# ------------------------------------------------------------------------------ copy
def test_copy_layout_by_hand():
    seq = torch.tensor([[1, 2, 3, 4, 5, 6, 7, 8, 1, 2]])
    ids, target = copy_layout(seq, 3)  # T = 3: length 23
    s = [1, 2, 3, 4, 5, 6, 7, 8, 1, 2]
    assert ids[0].tolist() == s + [0, 0] + [9] + [0] * 10  # T - 1 = 2 blanks, marker, 10 blanks
    assert target[0].tolist() == [0] * 13 + s  # T + 10 blanks, then the symbols


def test_copy_split_layout_and_shapes():
    T = 7
    task = make("copy", seq_len=T, n_train=50, n_val=20, n_test=30)
    x, y = task.split_data("train")
    L = T + 20
    assert x.shape == (50, L, 10) and x.dtype == torch.float32 and y.shape == (50, L) and y.dtype == torch.long
    ids = x.argmax(-1)
    assert torch.equal(x.sum(-1), torch.ones(50, L))  # one-hot
    seq = ids[:, :10]
    assert ((seq >= 1) & (seq <= 8)).all()
    assert (ids[:, 10 : 10 + T - 1] == BLANK).all() and (ids[:, 10 + T :] == BLANK).all()
    assert (ids[:, 10 + T - 1] == MARKER).all() and ((ids == MARKER).sum(1) == 1).all()
    assert (y[:, : T + 10] == BLANK).all() and torch.equal(y[:, T + 10 :], seq)
    assert (y < 9).all()  # the marker is never a target: 9 output classes
    s = task.spec()
    assert (s.d_input, s.d_output, s.seq_len, s.monitor) == (10, 9, L, "loss")
    assert {m.name: m.higher_is_better for m in s.metrics} == {"loss": False, "acc_last10": True}
    # all 8 data symbols occur, nothing else
    assert set(seq.unique().tolist()) == set(range(1, 9))


def test_copy_memoryless_baseline_is_10_ln8_over_T_plus_20():
    T = 13
    task = make("copy", seq_len=T, n_train=8, n_val=40, n_test=8)
    x, y = task.split_data("val")
    # blank with certainty until the copy, then uniform over the 8 data symbols; nothing read from x
    logits = torch.full((40, T + 20, 9), -math.inf)
    logits[:, : T + 10, BLANK] = 0.0
    logits[:, T + 10 :, 1:] = 0.0
    want = 10 * math.log(8) / (T + 20)
    assert task.info()["baseline_loss"] == pytest.approx(want, rel=1e-12)
    assert task.loss(logits, y).item() == pytest.approx(want, rel=1e-6)
    m = evaluate(task, [logits], [y])
    assert m["loss"] == pytest.approx(want, rel=1e-6)
    # the exact copy scores 0 loss and full accuracy; shifting it by one step does not
    exact = torch.full((40, T + 20, 9), -math.inf).scatter_(2, y.unsqueeze(-1), 0.0)
    assert evaluate(task, [exact], [y]) == {"loss": 0.0, "acc_last10": 1.0}
    late = torch.roll(exact, 1, dims=1)
    assert evaluate(task, [late], [y])["loss"] == math.inf


def test_per_step_head_shape_and_flops():
    lstm = registry.get_model("lstm").cls
    backbone = lstm(10, config.params_class(lstm)(hidden=8))
    task = make("copy", seq_len=5)
    model = task.wrap(backbone)
    assert isinstance(model, PerStepHead)
    out, _ = model(torch.zeros(3, 25, 10))
    assert out.shape == (3, 25, 9)
    assert model.flops_per_sample() == 25 * (backbone.flops_per_step() + 2 * 8 * 9 + 9)


# ---------------------------------------------------------------------------- adding
def test_adding_layout_follows_reference_marker_rule():
    T = 5  # markers: first in [0, floor((T-1)/2)) = {0, 1}, second in [2, 5) = {2, 3, 4}
    task = make("adding", seq_len=T, n_train=400, n_val=8, n_test=8)
    x, y = task.split_data("train")
    assert x.shape == (400, T, 2) and y.shape == (400,)
    v, m = x[..., 0], x[..., 1]
    assert ((v >= 0) & (v < 1)).all()
    assert ((m == 0) | (m == 1)).all() and (m.sum(1) == 2).all()
    pos = m.nonzero()[:, 1].view(400, 2)
    assert set(pos[:, 0].tolist()) == {0, 1} and set(pos[:, 1].tolist()) == {2, 3, 4}
    assert torch.equal(y, v.gather(1, pos).sum(1))
    s = task.spec()
    assert (s.d_input, s.d_output, s.seq_len, s.monitor) == (2, 1, T, "mse")
    with pytest.raises(SeqbenchError, match="seq_len"):
        make("adding", seq_len=2)


def test_adding_baselines():
    n = 20000
    task = make("adding", seq_len=10, n_train=8, n_val=8, n_test=n)
    x, y = task.split_data("test")
    assert task.info()["baseline_mse"] == pytest.approx(1 / 6)
    # Predicting 1: (S - 1) has the triangular density 1 - |z| on [-1, 1], so (S - 1)^2 has mean
    # 1/6 and variance E z^4 - (1/6)^2 = 1/15 - 1/36 = 7/180; 5 standard errors of the mean.
    ones = torch.ones(n, 1)
    tol = 5 * math.sqrt(7 / 180 / n)
    assert task.loss(ones, y).item() == pytest.approx(1 / 6, abs=tol)
    assert evaluate(task, [ones], [y])["mse"] == pytest.approx(1 / 6, abs=tol)
    # the exact sum, computed from the inputs
    exact = (x[..., 0] * x[..., 1]).sum(1, keepdim=True)
    assert task.loss(exact, y).item() == 0.0
    assert evaluate(task, [exact], [y]) == {"mse": 0.0}
    lstm = registry.get_model("lstm").cls
    assert isinstance(task.wrap(lstm(2, config.params_class(lstm)(hidden=4))), SequenceClassifier)


# ------------------------------------------------------------------------------ both
@pytest.mark.parametrize("name", ["copy", "adding"])
def test_generation_deterministic_and_splits_differ(name):
    a = make(name, seq_len=6, n_train=16, n_val=16, n_test=16, data_seed=3)
    b = make(name, seq_len=6, n_train=16, n_val=16, n_test=16, data_seed=3)
    c = make(name, seq_len=6, n_train=16, n_val=16, n_test=16, data_seed=4)
    data = {s: a.split_data(s) for s in ("train", "val", "test")}
    for s in data:
        assert all(torch.equal(u, v) for u, v in zip(data[s], b.split_data(s)))
        assert not torch.equal(data[s][0], c.split_data(s)[0])
    assert not torch.equal(data["train"][0], data["val"][0])
    assert not torch.equal(data["val"][0], data["test"][0])
    assert not torch.equal(data["train"][0], data["test"][0])
    # the run seed reorders the training batches, never changes the data or the evaluation splits
    l0, l1 = a.loaders(4, 5, seed=0), a.loaders(4, 5, seed=1)
    xs0 = torch.cat([xb for xb, _ in l0["train"]])
    xs1 = torch.cat([xb for xb, _ in l1["train"]])
    assert not torch.equal(xs0, xs1)
    def key(t):
        return sorted(map(tuple, t.flatten(1).tolist()))
    assert key(xs0) == key(xs1) == key(data["train"][0])
    for s in ("val", "test"):
        assert [len(xb) for xb, _ in l0[s]] == [5, 5, 5, 1]  # never drops the last batch
        assert torch.equal(torch.cat([xb for xb, _ in l1[s]]), data[s][0])


@pytest.mark.parametrize("name", ["copy", "adding"])
def test_eval_stats_sum_over_uneven_batches(name):
    task = make(name, seq_len=6, n_train=8, n_val=10, n_test=8)
    x, y = task.split_data("val")
    g = torch.Generator().manual_seed(0)
    d_out = task.spec().d_output
    out = torch.randn(*(y.shape if name == "copy" else (10,)), d_out, generator=g)
    if name == "copy":  # make some last-10 predictions right so the accuracy is not trivially 0
        out[:5, -10:].scatter_(2, y[:5, -10:].unsqueeze(-1), 10.0)
    whole = evaluate(task, [out], [y])
    cuts = [(0, 3), (3, 8), (8, 10)]
    parts = evaluate(task, [out[i:j] for i, j in cuts], [y[i:j] for i, j in cuts])
    assert set(whole) == {m.name for m in task.spec().metrics}
    for k in whole:
        assert parts[k] == pytest.approx(whole[k], rel=1e-6)
    if name == "copy":
        assert 0.5 <= whole["acc_last10"] < 1.0
        assert whole["loss"] == pytest.approx(task.loss(out, y).item(), rel=1e-6)
    else:
        assert whole["mse"] == pytest.approx(task.loss(out, y).item(), rel=1e-6)


@pytest.mark.parametrize("name", ["copy", "adding"])
def test_presets_resolve(name):
    entry = registry.get_task(name)
    lstm = registry.get_model("lstm")
    paper = config.resolve(lstm, entry, "paper")
    assert paper.train.optimizer == "rmsprop" and paper.train.grad_clip == 0.0
    if name == "copy":
        t = paper.task_params
        assert (t.seq_len, paper.train.batch_size, paper.train.lr) == (2000, 20, 1e-3)
        assert paper.train.epochs * t.n_train // paper.train.batch_size == 4000  # the reference's iterations
    else:
        t = paper.task_params
        tr = paper.train
        assert (t.seq_len, t.n_train, tr.epochs, tr.batch_size, tr.lr) == (750, 100000, 6, 50, 1e-4)
    assert config.resolve(lstm, entry, "fast").task_params.seq_len == 200
    assert config.resolve(lstm, entry, "tiny").train.epochs == 1
