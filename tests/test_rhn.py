"""RHN: the coupled-carry highway step by hand, ISS group membership by hand, pruned = masked."""
import sys

import pytest
import torch
import torch.nn as nn

from seqbench import registry

RHN = registry.get_model("rhn").cls


def _model(d=2, w=3, depth=2, **kw):
    torch.manual_seed(0)
    return RHN(d, RHN.Params(hidden=w, depth=depth, **kw)).double()


@torch.no_grad()
def _kill(m, dead, reader):
    """Zero the ISS groups of units ``dead`` (with ``tied_groups`` also W's columns) and their
    columns of ``reader``, the weight that reads the RHN's output (the head, or a tied embedding)."""
    rows = dead + [m.w + k for k in dead]
    m.W.weight[rows] = 0
    if m.p.tied_groups:
        m.W.weight[:, dead] = 0
    for lin in m.R:
        lin.weight[rows] = 0
        lin.weight[:, dead] = 0
    reader[:, dead] = 0


def test_one_step_by_hand():
    m = _model()
    x = torch.randn(1, 1, 2, dtype=torch.float64)
    s = torch.randn(1, 3, dtype=torch.float64)
    y, _ = m(x, s)
    w = 3
    for layer, lin in enumerate(m.R):
        pre = lin.weight @ s[0] + lin.bias + (m.W.weight @ x[0, 0] if layer == 0 else 0)
        h, g = torch.tanh(pre[:w]), torch.sigmoid(pre[w:])
        s = (h * g + s[0] * (1 - g))[None]
    assert torch.allclose(y[0, 0], s[0])


def test_group_membership_by_hand():
    """Unit k owns rows k and w+k of W and of every R_l, column k of every R_l, column k of the head."""
    m = _model(w=3, depth=2)
    head = nn.Linear(3, 4).double()
    # tied_groups (a tied embedding of width w): W's column k, the reading of input feature k, too
    for model in (m, _model(d=3, w=3, depth=2, tied_groups=True)):
        for k in range(3):
            want = model.W.weight[k].pow(2).sum() + model.W.weight[3 + k].pow(2).sum()
            if model.p.tied_groups:
                want = want + model.W.weight[:, k].pow(2).sum()
            for lin in model.R:
                w = lin.weight
                want = want + w[k].pow(2).sum() + w[3 + k].pow(2).sum() + w[:, k].pow(2).sum()
            want = want + head.weight[:, k].pow(2).sum()
            assert model.group_sq_norms(head)[k].item() == pytest.approx(want.item())
    # the regulariser's gradient is finite at an all-zero group
    m2 = _model(lam=0.1)
    with torch.no_grad():
        m2.W.weight[[0, 3]] = 0
        for lin in m2.R:
            lin.weight[[0, 3]] = 0
            lin.weight[:, 0] = 0
        head.weight[:, 0] = 0
    m2.regularization(head).backward()
    assert all(torch.isfinite(p.grad).all() for p in m2.parameters() if p.grad is not None)


def test_pruned_equals_masked_and_shrinks():
    m = _model(d=4, w=6, depth=3)
    head = nn.Linear(6, 5).double()
    dead = [1, 4]
    _kill(m, dead, head.weight)
    with torch.no_grad():
        for lin in m.R:
            lin.bias.uniform_(-1, 1)  # the dead units' biases stay non-zero: they must not matter
    x = torch.randn(3, 7, 4, dtype=torch.float64)
    ref = head(m(x)[0])
    small, small_head = m.pruned(head)
    assert small.w == 4 and small_head.in_features == 4 and small.pruned_from == [6]
    out = small_head(small(x)[0])
    assert (out - ref).norm() / ref.norm() < 1e-5
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in m.parameters())
    assert m.structure(head)["sizes_pruned"] == [4]
    assert small.pruned(small_head) is None  # nothing more to remove


def test_threshold_zeroes_small_weights_only():
    m = _model(threshold=0.05)
    head = nn.Linear(3, 2).double()
    m.after_step(head)
    for p in list(m.parameters()) + list(head.parameters()):
        assert ((p == 0) | (p.abs() >= 0.05)).all()


def test_state_dropout_masks_what_R_reads_with_one_mask(monkeypatch):
    """drop_h (the reference's noise_h): R_l reads s * m with one mask m for every micro-layer and
    step; the highway update uses the undropped s; off in eval."""
    mod = sys.modules[RHN.__module__]
    m = _model(d=2, w=3, depth=2, drop_h=0.5)
    mask = torch.tensor([[2.0, 0.0, 2.0], [0.0, 2.0, 2.0]], dtype=torch.float64)
    calls = []
    monkeypatch.setattr(mod, "variational_mask", lambda shape, p, like: calls.append((shape, p)) or mask)
    x = torch.randn(2, 4, 2, dtype=torch.float64)
    m.train()
    y, _ = m(x)
    assert calls == [((2, 3), 0.5)]  # one draw per chunk
    s = torch.zeros(2, 3, dtype=torch.float64)
    for t in range(4):
        for layer, lin in enumerate(m.R):
            pre = (s * mask) @ lin.weight.T + lin.bias + (x[:, t] @ m.W.weight.T if layer == 0 else 0)
            h, g = torch.tanh(pre[:, :3]), torch.sigmoid(pre[:, 3:])
            s = h * g + s * (1 - g)
        assert torch.allclose(y[:, t], s)
    m.eval()
    calls.clear()
    ref = _model(d=2, w=3, depth=2)
    assert torch.equal(m(x)[0], ref(x)[0]) and calls == []


def test_tied_groups_prune_with_a_tied_embedding_and_need_equal_widths():
    """A tied LM (embedding = head weight, width w): a dead component has its W rows and column,
    R rows and columns and its embedding column zero; pruning keeps the outputs."""
    from seqbench.errors import SeqbenchError

    w, dead = 6, [0, 3]
    m = _model(d=w, w=w, depth=2, tied_groups=True)
    emb = nn.Embedding(11, w).double()
    head = nn.Linear(w, 11).double()
    head.weight = emb.weight
    _kill(m, dead, emb.weight)
    assert m.kept(head).tolist() == [1, 2, 4, 5]
    x = torch.randint(0, 11, (2, 5))
    ref = head(m(emb(x))[0])
    small, small_head = m.pruned(head)
    # the dead units' input features go too: W loses their (zero) columns and names what it reads
    assert small.w == 4 and small.d_input == 4 and small.kept_inputs.tolist() == [1, 2, 4, 5]
    assert small.p.tied_groups and small.pruned(small_head) is None
    small_emb = nn.Embedding(11, 4).double()
    small_emb.weight.data.copy_(emb.weight[:, small.kept_inputs])
    assert torch.equal(small_head.weight, small_emb.weight)  # the head is still the embedding
    assert (small_head(small(small_emb(x))[0]) - ref).norm() / ref.norm() < 1e-5
    m.W.weight.data[0, 0] = 1.0  # input feature 0 read again: component 0 is alive
    assert 0 in m.kept(head).tolist()
    with pytest.raises(SeqbenchError, match="tied_groups needs the input width") as e:
        RHN(4, RHN.Params(hidden=6, tied_groups=True))
    assert "\n" not in str(e.value)


def test_pruned_tied_language_model_shrinks_its_embedding_and_stays_tied():
    """Through the PTB language model (tied, tied_groups): install_pruned cuts the embedding to the
    kept columns and re-ties the head; outputs equal, and the whole LM has fewer parameters."""
    from seqbench.model import install_pruned
    from seqbench.tasks.ptb import LanguageModel

    w, dead = 6, [2, 5]
    lm = LanguageModel(_model(d=w, w=w, depth=2, tied_groups=True).float(), 11, w, bptt=5, dropout=0.0,
                       tie=True, init_range=0.1)
    _kill(lm.backbone, dead, lm.embedding.weight)  # = the head's columns: tied
    x = torch.randint(0, 11, (3, 5))
    lm.eval()
    ref = lm(x)[0]
    n_dense, flops_dense = sum(p.numel() for p in lm.parameters()), lm.flops_per_sample()
    install_pruned(lm, *lm.backbone.pruned(lm.head))
    assert lm.embedding.weight.shape == (11, 4) and lm.head.weight is lm.embedding.weight
    assert (lm(x)[0] - ref).norm() / ref.norm() < 1e-6
    # 2 embedding (= head) columns; W [12, 6] -> [8, 4]; each R [12, 6] -> [8, 4] and its bias 12 -> 8
    assert n_dense - sum(p.numel() for p in lm.parameters()) == 2 * 11 + 3 * (12 * 6 - 8 * 4) + 2 * (12 - 8)
    assert lm.flops_per_sample() < flops_dense


def test_runner_prunes_a_tied_rhn_embedding_and_refuses_a_wrapper_that_cannot(env):
    """A tiny tied RHN with ISS on ptb (threshold 1: one unit survives): the record's params fall
    and pruned.pt's embedding has the kept width, tied to the head. A model whose pruning drops
    input features on a task whose wrapper cannot drop them is refused before training."""
    from conftest import QUICK
    from seqbench import config
    from seqbench.errors import SeqbenchError
    from seqbench.model import check_prunable
    from seqbench.runner import Runner

    over = {**QUICK, "model.lam": "0.01", "model.threshold": "1.0", "model.hidden": "16", "model.depth": "2",
            "model.tied_groups": "true", "task.emb": "16", "task.tie": "true"}
    cfg = config.resolve(registry.get_model("rhn"), registry.get_task("ptb"), "tiny", over)
    rec = Runner(cfg, quiet=True).fit()
    assert rec["status"] == "completed", rec["failure"]
    meas = rec["measure"]
    assert meas["structure"]["sizes"] == [1] and meas["structure"]["pruned_from"] == [16]
    before, after = meas["pruning"]["before"]["params"]["total"], meas["params"]["total"]
    assert before - after >= 15 * rec["task_info"]["d_output"]  # 15 embedding columns gone
    from seqbench.build import build
    from seqbench.model import load_pruned

    small = build(cfg, data=False).model
    load_pruned(small, torch.load(meas["pruning"]["file"], weights_only=True))
    assert small.embedding.weight.shape[1] == 1 and small.head.weight is small.embedding.weight
    with pytest.raises(SeqbenchError, match="cannot drop them") as e:
        check_prunable(nn.Sequential(), RHN(4, RHN.Params(hidden=4, tied_groups=True)), "rhn on copy")
    assert "\n" not in str(e.value)
    check_prunable(nn.Sequential(), RHN(4, RHN.Params(hidden=4)), "rhn on copy")  # untied: nothing to drop
