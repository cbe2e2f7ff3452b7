"""ISS-LSTM: group membership, the group Lasso, thresholding, pruning (== the masked model), saving
the pruned model, and a short training that removes whole components."""
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from seqbench import config, iss, registry
from seqbench.models.iss import EPS, ISSLSTM, ISSParams
from seqbench.task import PerStepHead


def build(d_input=4, sizes="3,2", d_out=5, seed=0, **kw):
    torch.manual_seed(seed)
    m = ISSLSTM(d_input, ISSParams(sizes=sizes, **kw))
    head = nn.Linear(m.d_output, d_out)
    with torch.no_grad():  # random everything, biases included (they must not matter for pruning)
        for p in list(m.parameters()) + list(head.parameters()):
            p.normal_(0.0, 0.5)
    return m, head


def members(model, head):
    """{(layer, k): set of (param name, row, col) or (name, row)} from the model's slices;
    penalised and carried separately."""
    pen, car = {}, {}
    for l, layer in enumerate(model.iss_slices(head)):
        for k in range(model.sizes[l]):
            for s in layer:
                shape = s.tensor.shape
                idx = s.index([k]).tolist()
                if s.tensor.dim() == 1:
                    ent = {(s.name, i) for i in idx}
                elif s.dim == 0:
                    ent = {(s.name, i, j) for i in idx for j in range(shape[1])}
                else:
                    ent = {(s.name, i, j) for i in range(shape[0]) for j in idx}
                (pen if s.penalised else car).setdefault((l, k), set()).update(ent)
    return pen, car


def test_group_membership_by_hand(one_thread):
    # input 4 -> LSTM 3 -> LSTM 2 -> head Linear(2, 5); torch's gate rows i, f, g, o
    m, head = build()
    pen, car = members(m, head)
    rows = {(0, 0): [0, 3, 6, 9], (0, 1): [1, 4, 7, 10], (0, 2): [2, 5, 8, 11],
            (1, 0): [0, 2, 4, 6], (1, 1): [1, 3, 5, 7]}
    w_ih0, w_hh0 = "lstms.0.weight_ih_l0", "lstms.0.weight_hh_l0"
    w_ih1, w_hh1 = "lstms.1.weight_ih_l0", "lstms.1.weight_hh_l0"
    expect = {}
    # layer 0: its gate rows of W_ih0 [12, 4] and W_hh0 [12, 3], column k of W_hh0, column k of W_ih1 [8, 3]
    for k in range(3):
        r = rows[(0, k)]
        expect[(0, k)] = ({(w_ih0, i, j) for i in r for j in range(4)} | {(w_hh0, i, j) for i in r for j in range(3)}
                          | {(w_hh0, i, k) for i in range(12)} | {(w_ih1, i, k) for i in range(8)})
    # layer 1: gate rows of W_ih1 [8, 3] and W_hh1 [8, 2], column k of W_hh1, column k of head [5, 2]
    for k in range(2):
        r = rows[(1, k)]
        expect[(1, k)] = ({(w_ih1, i, j) for i in r for j in range(3)} | {(w_hh1, i, j) for i in r for j in range(2)}
                          | {(w_hh1, i, k) for i in range(8)} | {("head.weight", i, k) for i in range(5)})
    assert pen == expect
    # the biases are carried (copied when pruning), outside the Lasso and the zero check
    for layer, k in ((0, 1), (1, 0)):
        biases = (f"lstms.{layer}.bias_ih_l0", f"lstms.{layer}.bias_hh_l0")
        assert car[(layer, k)] == {(b, i) for b in biases for i in rows[(layer, k)]}

    # every weight entry: how many groups own it
    owners = {}
    for g, ents in pen.items():
        for e in ents:
            owners.setdefault(e, set()).add(g)
    for i in range(12):
        for j in range(4):  # W_ih0: its row's component only (its columns are the input: nobody's)
            assert owners[(w_ih0, i, j)] == {(0, i % 3)}
        for j in range(3):  # W_hh0: its row's and its column's component (the same one on the diagonal)
            assert owners[(w_hh0, i, j)] == {(0, i % 3), (0, j)}
    for i in range(8):
        for j in range(3):  # W_ih1: its row's (layer 1) and its column's (layer 0) component
            assert owners[(w_ih1, i, j)] == {(1, i % 2), (0, j)}
        for j in range(2):
            assert owners[(w_hh1, i, j)] == {(1, i % 2), (1, j)}
    for i in range(5):
        for j in range(2):
            assert owners[("head.weight", i, j)] == {(1, j)}
    n_weights = 12 * 4 + 12 * 3 + 8 * 3 + 8 * 2 + 5 * 2
    assert len(owners) == n_weights  # every weight entry is in some group; biases and head.bias in none
    assert not any(e[0].startswith("head.bias") or "bias" in e[0] for e in owners)


def test_regularizer_by_hand_and_finite_gradient_at_zero(one_thread):
    m, head = build(lam=0.5)
    w_ih0, w_hh0 = m.lstms[0].weight_ih_l0, m.lstms[0].weight_hh_l0
    w_ih1, w_hh1 = m.lstms[1].weight_ih_l0, m.lstms[1].weight_hh_l0
    total = 0.0
    for k in range(3):
        r = [k, 3 + k, 6 + k, 9 + k]
        # W_hh0's self-connections (rows r, column k) are both in the gate rows and in column k:
        # counted twice, as in the reference
        sq = (w_ih0[r] ** 2).sum() + (w_hh0[r] ** 2).sum() + (w_hh0[:, k] ** 2).sum() + (w_ih1[:, k] ** 2).sum()
        total += math.sqrt(float(sq.detach()) + EPS)
    for k in range(2):
        r = [k, 2 + k, 4 + k, 6 + k]
        sq = (w_ih1[r] ** 2).sum() + (w_hh1[r] ** 2).sum() + (w_hh1[:, k] ** 2).sum() + (head.weight[:, k] ** 2).sum()
        total += math.sqrt(float(sq.detach()) + EPS)
    assert float(m.regularization(head).detach()) == pytest.approx(0.5 * total, rel=1e-6)

    # zero component 1 of layer 0 entirely: finite gradient, zero on its entries
    with torch.no_grad():
        for s in m.iss_slices(head)[0]:
            if s.penalised:
                s.tensor.index_fill_(s.dim, s.index([1]), 0.0)
    m.regularization(head).backward()
    for p in list(m.parameters()) + [head.weight]:
        assert p.grad is None or torch.isfinite(p.grad).all()
    assert torch.all(w_ih0.grad[[1, 4, 7, 10]] == 0) and torch.all(w_ih1.grad[:, 1] == 0)
    assert m.zero_groups(head)[0].tolist() == [False, True, False]
    # lam 0: the plain LSTM, no regulariser
    assert float(build(lam=0.0)[0].regularization(head)) == 0.0


def test_after_step_zeroes_below_threshold_only(one_thread):
    m, head = build(threshold=0.3)
    params = list(m.parameters()) + list(head.parameters())
    before = [p.detach().clone() for p in params]
    m.after_step(head)
    for b, p in zip(before, params):
        small = b.abs() < 0.3
        assert small.any() and (~small).any()
        assert torch.all(p[small] == 0) and torch.equal(p[~small], b[~small])
    m2, head2 = build(threshold=0.0)
    ref = [p.detach().clone() for p in m2.parameters()]
    m2.after_step(head2)
    assert all(torch.equal(a, b) for a, b in zip(ref, m2.parameters()))


def zero_components(m, head, which):
    with torch.no_grad():
        for l, layer in enumerate(m.iss_slices(head)):
            for s in layer:
                if s.penalised and which.get(l):
                    s.tensor.index_fill_(s.dim, s.index(which[l]), 0.0)


def rel_err(a, b):
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("which,kept", [({0: [1, 3], 1: [2]}, [3, 3]), ({0: [0, 1, 2, 3, 4]}, [1, 4])])
def test_pruned_equals_masked_and_saves(one_thread, tmp_path, which, kept):
    m, head = build(d_input=3, sizes="5,4", d_out=7, seed=1)
    zero_components(m, head, which)
    m.eval()
    x = torch.randn(2, 6, 3)
    with torch.no_grad():
        ref = head(m(x)[0])
    out = m.pruned(head)
    assert out is not None
    small, small_head = out
    assert small.sizes == kept and small.d_output == kept[-1] and small_head.in_features == kept[-1]
    assert small.p.sizes == ",".join(map(str, kept)) and small.p.lam == m.p.lam
    with torch.no_grad():
        y, state = small(x)
        got = small_head(y)
    assert rel_err(got, ref) < 1e-5
    assert [tuple(h.shape) for h, _ in state] == [(1, 2, k) for k in kept]
    # the structure report counts the parameters the pruned model has
    rep = m.structure(head)
    assert rep["sizes_pruned"] == kept
    n_small = sum(p.numel() for p in small.parameters()) + sum(p.numel() for p in small_head.parameters())
    assert rep["total"]["params_pruned"] == n_small
    assert rep["total"]["params"] == sum(p.numel() for p in m.parameters()) + sum(p.numel() for p in head.parameters())
    assert rep["total"]["macs_per_token_pruned"] < rep["total"]["macs_per_token"]
    # save the pruned wrapper, reload into one built from the kept sizes
    wrapper = PerStepHead(m, 7, 6)
    wrapper.backbone, wrapper.head = small, small_head
    torch.save(wrapper.state_dict(), tmp_path / "pruned.pt")
    fresh = PerStepHead(ISSLSTM(3, ISSParams(sizes=",".join(map(str, kept)))), 7, 6)
    fresh.load_state_dict(torch.load(tmp_path / "pruned.pt"))
    fresh.eval()
    with torch.no_grad():
        assert rel_err(fresh(x)[0], ref) < 1e-5


def test_pruned_none_when_nothing_zero_or_prune_off(one_thread):
    m, head = build()
    assert m.pruned(head) is None
    m, head = build(prune=False)
    zero_components(m, head, {0: [0]})
    assert m.pruned(head) is None
    # without a head, the last layer cannot be certified removable: it is reported whole
    m, head = build()
    zero_components(m, head, {1: [0]})
    assert m.structure()["sizes_pruned"] == [3, 2] and m.structure(head)["sizes_pruned"] == [3, 1]


def test_flops_and_presets(one_thread):
    entry = registry.get_model("iss-lstm")
    m = ISSLSTM(4, ISSParams(sizes="3,2"))
    # layer 0: 2*4*3*(4+3) + 2*4*3 + 9*3; layer 1: 2*4*2*(3+2) + 2*4*2 + 9*2
    assert m.flops_per_step() == (168 + 24 + 27) + (80 + 16 + 18)
    lstm = registry.get_model("lstm")
    one = config.params_class(lstm.cls)(hidden=2)
    assert ISSLSTM(1, ISSParams(hidden=2)).flops_per_step() == lstm.cls(1, one).flops_per_step()
    for name, preset in entry.cls.presets.items():
        p = ISSParams()
        for k, v in preset.items():
            setattr(p, k.split(".", 1)[1], v)
        ISSLSTM(8, p)  # every preset builds
    assert entry.cls.presets["ptb:paper"]["model.lam"] == pytest.approx(0.00245 / 35)
    cfg = config.resolve(entry, registry.get_task("pmnist"), "tiny")
    assert cfg.model_params.hidden == 16 and cfg.model_params.lam == 0.0


def test_init_range():
    torch.manual_seed(0)
    m = ISSLSTM(5, ISSParams(sizes="6,4", init_range=0.04))
    for n, p in m.named_parameters():
        if "bias" in n:
            assert torch.all(p == 0)
        else:
            assert p.abs().max() <= 0.04 and p.abs().max() > 0.03


def train_sign_task(lam, steps=500):
    """SGD (as the reference) on: predict the sign of input channel 0 one step late; the three
    other channels are noise. Group Lasso and thresholding at 1e-2 after every step."""
    torch.manual_seed(0)
    m = ISSLSTM(4, ISSParams(sizes="12,8", lam=lam, threshold=1e-2))
    head = nn.Linear(8, 2)
    opt = torch.optim.SGD(list(m.parameters()) + list(head.parameters()), lr=1.0)
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        x = torch.randn(32, 10, 4, generator=g)
        y = (x[:, :, 0] > 0).long().roll(1, dims=1)
        y[:, 0] = 0
        loss = F.cross_entropy(head(m(x)[0]).reshape(-1, 2), y.reshape(-1)) + m.regularization(head)
        opt.zero_grad()
        loss.backward()
        opt.step()
        m.after_step(head)
    return m, head, x, y


def test_training_with_group_lasso_removes_components(one_thread):
    dense, dense_head, _, _ = train_sign_task(lam=0.0)
    assert dense.structure(dense_head)["sizes_pruned"] == [12, 8] and dense.pruned(dense_head) is None
    m, head, x, y = train_sign_task(lam=0.005)
    rep = m.structure(head)
    assert sum(rep["sizes_pruned"]) < sum(rep["sizes"]), rep["sizes_pruned"]  # here [4, 5]
    small, small_head = m.pruned(head)
    assert small.sizes == rep["sizes_pruned"]
    with torch.no_grad():
        got = small_head(small(x)[0])
        assert rel_err(got, head(m(x)[0])) < 1e-5
        acc = (got.argmax(-1)[:, 1:] == y[:, 1:]).float().mean()
    assert acc > 0.9, float(acc)  # the pruned model still solves the task


def test_state_carries_across_chunks_and_detaches(one_thread):
    from seqbench.strategy import detach_state

    m, _ = build(d_input=3, sizes="5,4", dropout=0.5)
    m.eval()  # dropout (between the layers) off
    x = torch.randn(2, 8, 3)
    with torch.no_grad():
        full, _ = m(x)
        a, st = m(x[:, :5])
        b, _ = m(x[:, 5:], detach_state(st))
    assert isinstance(st, tuple) and all(isinstance(hc, tuple) for hc in st)
    assert torch.allclose(torch.cat([a, b], 1), full, atol=1e-6)
    m.train()
    assert not torch.equal(m(x)[0], m(x)[0])  # dropout between the layers is on in training


def test_runner_prunes_tests_and_saves_the_small_model(env):
    """Through the runner (ptb, tiny): a threshold of 1 zeroes every weight after the first step,
    so every component goes but one per layer; the record and pruned.pt hold the small model."""
    from conftest import QUICK
    from seqbench.runner import Runner

    over = {**QUICK, "model.lam": "0.01", "model.threshold": "1.0"}
    rec = Runner(config.resolve(registry.get_model("iss-lstm"), registry.get_task("ptb"), "tiny", over),
                 quiet=True).fit()
    assert rec["status"] == "completed", rec["failure"]
    st, meas = rec["measure"]["structure"], rec["measure"]
    assert st["sizes"] == [1, 1] and st["pruned_from"] == [16, 16]
    assert meas["pruning"]["before"]["params"]["total"] > meas["params"]["total"]
    small = torch.load(meas["pruning"]["file"], weights_only=True)  # plain data: weights and widths
    assert small["backbone"]["params"]["sizes"] == "1,1" and small["head"]["in"] == 1


@pytest.mark.parametrize("model,task,over", [
    ("iss-lstm", "ptb", {}),
    ("rhn", "ptb", {"model.tied_groups": "true", "model.hidden": "16", "task.emb": "16", "task.tie": "true"}),
    ("bidaf", "squad", {}),
])
def test_pruned_file_is_plain_data_that_rebuilds_the_pruned_model(env, model, task, over):
    """pruned.pt holds weights and widths (torch.load weights_only=True); ``load_pruned`` turns a model
    built from the run's config into the pruned model the run tested: the same outputs."""
    from conftest import QUICK
    from seqbench.build import build
    from seqbench.model import load_pruned
    from seqbench.runner import Runner

    cfg = config.resolve(registry.get_model(model), registry.get_task(task), "tiny",
                         {**QUICK, **over, "model.threshold": "1.0"})
    r = Runner(cfg, quiet=True)
    rec = r.fit()
    assert rec["status"] == "completed" and rec["measure"]["pruning"], rec["failure"]
    payload = torch.load(rec["measure"]["pruning"]["file"], weights_only=True)
    setup = build(cfg, data=False)
    load_pruned(setup.model, payload)
    x = setup.task.example_batch(3)[0]
    with torch.no_grad():
        want, got = r.setup.model.eval()(x)[0], setup.model.eval()(x)[0]
    assert torch.equal(want, got)
    assert sum(p.numel() for p in setup.model.parameters()) == rec["measure"]["params"]["total"]


@pytest.mark.parametrize("model,task,over", [
    ("iss-lstm", "ptb", {}),
    ("rhn", "ptb", {"model.tied_groups": "true", "model.hidden": "16", "task.emb": "16", "task.tie": "true"}),
    ("rhn", "ptb", {}),
    ("bidaf", "squad", {}),
])
def test_coordinator_removes_units_nobody_reads_and_changes_no_output(env, model, task, over):
    """The reference's structure coordinator: a unit whose outgoing weights are all zero but whose incoming
    ones are not is kept by the zero check; ``coordinate`` zeroes its incoming weights, the output stays
    the same (bitwise), the unit is removed, and the pruned model computes what the masked one does."""
    from conftest import QUICK
    from seqbench.build import build
    from seqbench.model import prune_in_place

    cfg = config.resolve(registry.get_model(model), registry.get_task(task), "tiny", {**QUICK, **over})
    setup = build(cfg, data=False)
    bb, head = setup.backbone, setup.head
    groups = bb.iss_groups(head)
    with torch.no_grad():
        for g in groups:
            for s in g.slices:
                if s.reads:
                    s.tensor.index_fill_(s.dim, s.index([1]), 0.0)  # unit 1 of every group: read by nobody
    assert not any(bool(z[1]) for z in iss.zero_components(bb.iss_groups(head)))  # its incoming weights live
    x = setup.task.example_batch(3)[0]
    setup.model.eval()
    with torch.no_grad():
        before = setup.model(x)[0]
        counts = bb.coordinate(head)
        after = setup.model(x)[0]
    assert torch.equal(before, after) and sum(counts) >= 1
    assert all(bool(z[1]) for z in iss.zero_components(bb.iss_groups(head)) if z.numel() > 1)
    if bb.p.prune and prune_in_place(setup.model):
        with torch.no_grad():
            small = setup.model.eval()(x)[0]
        assert torch.allclose(small, after, atol=1e-6)
