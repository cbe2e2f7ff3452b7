"""ENRNN / scoRNN / rnn: the cell by hand in the column convention, the references' initialisation,
autograd against the papers' closed-form gradients and finite differences (float64), W1 orthogonal
and rho(W̄2) <= 1 through training, the normalisation flag, the learning-rate groups, presets and
FLOPs. Small sizes; the whole file runs in a few seconds on one core."""
import math

import pytest
import torch

from seqbench import config, registry
from seqbench.models import enrnn as en
from seqbench.runner import Runner
from conftest import QUICK


pytestmark = pytest.mark.usefixtures("one_thread")


def cell(name="enrnn", d_input=2, dtype=torch.float64, seed=0, **kw):
    torch.manual_seed(seed)
    cls = registry.get_model(name).cls
    return cls(d_input, cls.Params(**kw)).to(dtype)


def rho64(W) -> float:
    return float(torch.linalg.eigvals(W.detach().double()).abs().max())


# ------------------------------------------------------------------- closed forms (test helpers)
def cayley_grad_closed_form(G, A, W, d):
    """scoRNN's Theorem: W = (I + A)^-1 (I - A) D, G = dL/dW, V = (I + A)^-T G (D + W^T);
    dL/dA (A = S - S^T, S strictly upper and free) = V^T - V."""
    I = torch.eye(A.shape[0], dtype=A.dtype)
    V = torch.linalg.solve((I + A).t(), G @ (torch.diag(d) + W.t()))
    return V.t() - V


def en_grad_closed_form(G, W2):
    """ENRNN's eigenvalue-normalisation derivative: W̄ = W / sigma, sigma = |lambda| the spectral
    radius, G = dL/dW̄. With W u = lambda u (right) and v^H W = lambda v^H (left; v an eigenvector
    of W^H for conj(lambda)), P = conj(v) u^T / (v^H u), lambda = alpha + i beta:
        dL/dW = (G - <G, W̄> (alpha Re P + beta Im P) / sigma) / sigma."""
    Wc = W2.to(torch.complex128)
    lam_r, U = torch.linalg.eig(Wc)
    k = int(lam_r.abs().argmax())
    lam, u = lam_r[k], U[:, k : k + 1]
    lam_l, Vl = torch.linalg.eig(Wc.conj().t())  # W^H v = conj(lambda) v  <=>  v^H W = lambda v^H
    j = int((lam_l - lam.conj()).abs().argmin())
    v = Vl[:, j : j + 1]
    assert torch.allclose(v.conj().t() @ Wc, lam * v.conj().t(), atol=1e-10)
    P = (v.conj() @ u.t()) / (v.conj().t() @ u)
    sigma, alpha, beta = lam.abs(), lam.real, lam.imag
    Wbar = W2 / sigma
    return (G - (G * Wbar).sum() * (alpha * P.real + beta * P.imag) / sigma) / sigma


def finite_differences(f, p: torch.Tensor, eps=1e-6) -> torch.Tensor:
    """Central differences of the scalar f() in every entry of the parameter p (float64)."""
    g = torch.zeros_like(p)
    flat, gflat = p.data.view(-1), g.view(-1)
    for i in range(flat.numel()):
        old = float(flat[i])
        flat[i] = old + eps
        up = f()
        flat[i] = old - eps
        down = f()
        flat[i] = old
        gflat[i] = (up - down) / (2 * eps)
    return g


def rel(a, b) -> float:
    return float((a - b).norm() / b.norm())


def lively(m, seed=1):
    """O(1) activity for gradient checks: a larger input matrix, a random modReLU bias (some units
    below the ReLU threshold) and a random W3."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        m.U.copy_(torch.randn(m.U.shape, generator=g, dtype=torch.float64))
        m.bias.copy_(torch.rand(m.bias.shape, generator=g, dtype=torch.float64) * 0.4 - 0.3)
        if m.n2:
            m.W3.copy_(torch.randn(m.W3.shape, generator=g, dtype=torch.float64) * 0.5)
    return m


def data(m, B=3, T=6, seed=2):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, T, m.d_input, generator=g, dtype=torch.float64)
    C = torch.randn(B, T, m.d_output, generator=g, dtype=torch.float64)
    return x, C


def loss_fn(y, C):
    return (C * y).sum() + 0.5 * (y**2).sum()


def grads_with_matrix_grads(m, x, C):
    """Autograd gradients of the parameters and dL/dW1, dL/dW̄2 (the matrices used by the scan)."""
    m.zero_grad()
    W1, W3, W2b = m.recurrent_matrices()
    W1.retain_grad()
    if W2b is not None and not W2b.is_leaf:
        W2b.retain_grad()
    y, _ = m.scan(x, None, m.block_matrix(W1, W3, W2b))
    loss_fn(y, C).backward()
    return W1, W2b


# ------------------------------------------------------------------------------- the cell by hand
def test_modrelu_by_hand():
    z = torch.tensor([-2.0, -0.5, 0.0, 0.3, 3.0, 1.0])
    b = torch.tensor([-1.0, -1.0, 0.5, 0.5, -4.0, 0.0])
    # ReLU(|z| + b): 1, 0, 0.5, 0.8, 0, 1; times sign(z): -1, -1, 0, 1, 1, 1
    assert torch.allclose(en.modrelu(z, b), torch.tensor([-1.0, 0.0, 0.0, 0.8, 0.0, 1.0]))


def test_two_steps_by_hand_in_the_column_convention():
    m = lively(cell(hidden=4, n_neg=1, n2=3, d_input=2))
    with torch.no_grad():
        m.A.copy_(torch.randn(m.A.shape, dtype=torch.float64))
        m.W2.copy_(torch.randn(3, 3, dtype=torch.float64) * 0.3)
    # W1 from scratch: A by explicit entries, inverse, D as a matrix
    n1, n2 = 4, 3
    A = torch.zeros(n1, n1, dtype=torch.float64)
    k = 0
    for i in range(n1):
        for j in range(i + 1, n1):
            A[i, j], A[j, i] = m.A[k].detach(), -m.A[k].detach()
            k += 1
    I = torch.eye(n1, dtype=torch.float64)
    W1 = torch.inverse(I + A) @ (I - A) @ torch.diag(torch.tensor([1.0, 1.0, 1.0, -1.0], dtype=torch.float64))
    W2b = m.W2.detach() / rho64(m.W2) if rho64(m.W2) > 1 else m.W2.detach()
    x = torch.randn(2, 2, 2, dtype=torch.float64)
    h0 = torch.randn(2, n1 + n2, dtype=torch.float64)
    with torch.no_grad():
        y, h = m(x, h0)
    for s in range(2):
        hc = h0[s]
        for t in range(2):
            h1, h2 = hc[:n1], hc[n1:]
            z = m.U.detach() @ x[s, t] + torch.cat([W1 @ h1 + m.W3.detach() @ h2, W2b @ h2])
            hc = torch.relu(z.abs() + m.bias.detach()) * torch.sign(z)
            assert torch.allclose(y[s, t], hc, atol=1e-12)
        assert torch.allclose(h[s], hc, atol=1e-12)


# ------------------------------------------------------------------------------- initialisation
@pytest.mark.parametrize("name,sign", [("enrnn", 1.0), ("scornn", -1.0)])
def test_initialisation_is_the_references_transposed(name, sign):
    kw = {"hidden": 9, "n_neg": 3} | ({"n2": 6} if name == "enrnn" else {})
    m = cell(name, d_input=4, **kw)
    n1 = 9
    A, d = m.skew().detach(), m.d1
    assert torch.equal(d, torch.tensor([1.0] * 6 + [-1.0] * 3, dtype=torch.float64))
    # The reference's A_ref = -D A D: 2x2 blocks, A_ref[2k, 2k+1] = sign * tan(theta/2), theta in (0, pi/2)
    A_ref = -d[:, None] * A * d[None, :]
    blocks = torch.zeros_like(A_ref)
    idx = torch.arange(n1 // 2) * 2
    blocks[idx, idx + 1] = A_ref[idx, idx + 1]
    assert torch.equal(A_ref, blocks - blocks.t())
    s = sign * A_ref[idx, idx + 1]
    assert bool(((s > 0) & (s < 1)).all())
    # W1 is exactly the transpose of the reference's W1_ref = (I + A_ref)^-1 (I - A_ref) D
    W1 = m.recurrent_matrices()[0].detach()
    assert torch.allclose(W1.t(), en.cayley(A_ref) * d, atol=1e-12)
    assert torch.allclose(W1.t() @ W1, torch.eye(n1, dtype=torch.float64), atol=1e-12)
    assert float(m.U.detach().abs().max()) <= 0.01 and torch.equal(m.bias, torch.zeros_like(m.bias))
    if name == "enrnn":
        # W2 = (C(A2) D2)^T, so W2 W2^T = D2^2: diagonal, values in [0, 1) in equal pairs
        G = m.W2.detach() @ m.W2.detach().t()
        dg = torch.diagonal(G)
        assert torch.allclose(G, torch.diag(dg), atol=1e-7)  # W2 was built in float64, stored in float32
        assert torch.allclose(dg[0::2], dg[1::2], atol=1e-7) and float(dg.max()) < 1
        assert rho64(m.W2) < 1 and not bool(m.en_active)
        assert float(m.W3.detach().abs().max()) <= math.sqrt(6 / (9 + 6))
        assert m.W3.shape == (9, 6) and m.U.shape == (15, 4)
    else:
        assert {k for k, _ in m.named_parameters()} == {"A", "U", "bias"} and m.d_output == 9


def test_odd_n2_puts_one_more_scale_first():
    d = en.reference_d2_init(5, torch.Generator().manual_seed(0))
    assert d.shape == (5,) and torch.equal(d[1::2], d[2::2]) and bool((d.abs() < 1).all())


# ------------------------------------------------------------------------------- gradients
def test_cayley_gradient_autograd_closed_form_finite_differences():
    m = lively(cell(hidden=6, n_neg=2, n2=3, d_input=2))
    with torch.no_grad():
        m.A.add_(torch.randn(m.A.shape, dtype=torch.float64) * 0.5)  # away from the block init
    x, C = data(m)
    W1, _ = grads_with_matrix_grads(m, x, C)
    A = m.skew().detach()
    closed = cayley_grad_closed_form(W1.grad, A, W1.detach(), m.d1)
    auto = m.A.grad.clone()

    def f():
        with torch.no_grad():
            return float(loss_fn(m(x)[0], C))

    fd = finite_differences(f, m.A)
    e_closed, e_fd = rel(auto, en.upper_of(closed)), rel(auto, fd)
    print(f"\ncayley dL/dA: |auto - closed|/|closed| = {e_closed:.2e}, |auto - fd|/|fd| = {e_fd:.2e}")
    assert e_closed < 1e-12 and e_fd < 1e-8
    # The reference's update in its row convention maps onto ours entry by entry: its matrices are
    # our transposes (W1_ref = W1^T, A_ref = -D A D, dL/dW1_ref = G^T), and dL/dA = -D (dL/dA_ref) D.
    d = m.d1
    A_ref, W1_ref = -d[:, None] * A * d[None, :], W1.detach().t()
    dfa_ref = cayley_grad_closed_form(W1.grad.t(), A_ref, W1_ref, d)
    assert torch.allclose(en.upper_of(-d[:, None] * dfa_ref * d[None, :]), auto, atol=1e-12)


def designed_W2(kind: str) -> torch.Tensor:
    """A 5 x 5 real matrix with a chosen spectrum: top eigenvalue real 1.5, or a complex pair
    1.2 e^{+-0.7i}; the others inside the unit disc."""
    g = torch.Generator().manual_seed(3)
    def rot(r, t):
        return r * torch.tensor([[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]], dtype=torch.float64)
    L = torch.zeros(5, 5, dtype=torch.float64)
    if kind == "real":
        L[0, 0], L[1, 1], L[2, 2] = 1.5, 0.9, -0.7
        L[3:, 3:] = rot(0.6, 0.5)
    else:
        L[:2, :2] = rot(1.2, 0.7)
        L[2, 2], L[3, 3], L[4, 4] = 0.9, -0.5, 0.3
    Q = torch.eye(5, dtype=torch.float64) + 0.3 * torch.randn(5, 5, generator=g, dtype=torch.float64)
    return Q @ L @ torch.linalg.inv(Q)


@pytest.mark.parametrize("kind", ["real", "complex"])
def test_eigenvalue_normalisation_gradient_autograd_closed_form_finite_differences(kind):
    m = lively(cell(hidden=4, n_neg=1, n2=5, d_input=2))
    with torch.no_grad():
        m.W2.copy_(designed_W2(kind))
    rho = 1.5 if kind == "real" else 1.2
    assert abs(rho64(m.W2) - rho) < 1e-12
    x, C = data(m)
    _, W2b = grads_with_matrix_grads(m, x, C)
    assert bool(m.en_active) and abs(rho64(W2b) - 1) < 1e-12
    closed = en_grad_closed_form(W2b.grad, m.W2.detach())
    auto = m.W2.grad.clone()

    def f():
        with torch.no_grad():
            return float(loss_fn(m(x)[0], C))

    fd = finite_differences(f, m.W2)
    e_closed, e_fd = rel(auto, closed), rel(auto, fd)
    print(f"\nEN dL/dW2 ({kind} top eigenvalue): |auto - closed|/|closed| = {e_closed:.2e}, "
          f"|auto - fd|/|fd| = {e_fd:.2e}")
    assert e_closed < 1e-10 and e_fd < 1e-8
    # the normalisation matters: the gradient is not G / sigma alone
    assert rel(W2b.grad / rho, closed) > 1e-3


def test_before_the_flag_W2_is_used_as_is_and_its_gradient_is_plain():
    m = lively(cell(hidden=4, n_neg=1, n2=3, d_input=2))
    x, C = data(m)
    _, W2b = grads_with_matrix_grads(m, x, C)
    assert W2b is m.W2 and not bool(m.en_active) and rho64(m.W2) < 1
    assert m.W2.grad is not None and torch.isfinite(m.W2.grad).all()


def test_the_flag_is_sticky_and_saved():
    m = cell(hidden=4, n_neg=1, n2=5, d_input=2)
    with torch.no_grad():
        m.W2.copy_(designed_W2("real"))
        with torch.inference_mode():  # the evaluation / latency path sets it too
            m(torch.randn(2, 3, 2, dtype=torch.float64))
    assert bool(m.en_active) and "en_active" in m.state_dict()
    with torch.no_grad():
        m.W2.mul_(0.5)  # rho 0.75 < 1: still normalised, back onto the unit circle
    assert abs(rho64(m.normalized_W2()) - 1) < 1e-12
    fresh = cell(hidden=4, n_neg=1, n2=5, d_input=2)
    fresh.load_state_dict(m.state_dict())
    assert bool(fresh.en_active)


# ------------------------------------------------------------------------------- training
def test_training_keeps_W1_orthogonal_and_W2bar_in_the_unit_disc():
    """200 optimiser steps (float32, as trained; Adam, A in its own group) on random inputs at the
    first step only and large random targets for the whole state at the last step: holding h2 for
    9 steps pushes W2's spectral radius past 1 early, so the normalisation is exercised."""
    m = cell(hidden=16, n_neg=5, n2=8, d_input=3, dtype=torch.float32, lr_A=1e-2)
    groups = m.optimizer_groups(3e-2)
    grouped = {id(p) for g in groups for p in g["params"]}
    opt = torch.optim.Adam(groups + [{"params": [p for p in m.parameters() if id(p) not in grouped]}], lr=3e-2)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(16, 10, 3, generator=g)
    x[:, 1:] = 0
    target = 3 * torch.randn(16, 24, generator=g)
    A0 = m.A.detach().clone()
    worst_orth, worst_rho, first_active = 0.0, 0.0, None
    I = torch.eye(16)
    for step in range(200):
        y, _ = m(x)
        W1, _, W2b = m.recurrent_matrices()  # the matrices this step used (the flag is already decided)
        worst_orth = max(worst_orth, float((W1.detach().t() @ W1.detach() - I).norm()))
        worst_rho = max(worst_rho, rho64(W2b))
        if first_active is None and bool(m.en_active):
            first_active = step
        loss = torch.nn.functional.mse_loss(y[:, -1], target)
        opt.zero_grad()
        loss.backward()
        opt.step()
    print(f"\n200 steps: max ||W1^T W1 - I||_F = {worst_orth:.2e}, max rho(W̄2) = {worst_rho:.8f}, "
          f"normalised from step {first_active}, |A - A0| = {float((m.A.detach() - A0).norm()):.2f}, "
          f"loss {float(loss.detach()):.3f}")
    assert worst_orth < 1e-5
    assert worst_rho <= 1 + 1e-6
    assert first_active is not None and first_active < 150
    assert float((m.A.detach() - A0).norm()) > 0.1  # A really moved


# ------------------------------------------------------------------------------- runner, presets
def test_optimizer_groups_through_the_runner(env):
    for name, lr_A, want in [("enrnn", 1e-5, 1e-5), ("scornn", None, 1e-3)]:
        over = {**QUICK, "lr": 1e-3} | ({"model.lr_A": lr_A} if lr_A is not None else {})
        cfg = config.resolve(registry.get_model(name), registry.get_task("copy"), "tiny", over)
        runner = Runner(cfg, quiet=True)
        groups = runner.setup.optimizer.param_groups
        assert len(groups) == 2
        assert groups[0]["params"] == [runner.setup.backbone.A] and groups[0]["lr"] == want
        assert groups[1]["lr"] == 1e-3
        n_rest = sum(p.numel() for p in groups[1]["params"])
        assert n_rest + runner.setup.backbone.A.numel() == sum(p.numel() for p in runner.setup.model.parameters())


def test_paper_presets():
    def params(model, task, preset="paper"):
        return config.resolve(registry.get_model(model), registry.get_task(task), preset).model_params

    p = params("enrnn", "copy")
    assert (p.hidden, p.n_neg, p.n2, p.lr_A) == (172, 52, 20, 1e-5)
    p = params("enrnn", "adding")
    assert (p.hidden, p.n_neg, p.n2, p.lr_A) == (96, 29, 64, 1e-4)
    p = params("scornn", "copy")
    assert (p.hidden, p.n_neg, p.lr_A) == (190, 95, 1e-4)
    p = params("scornn", "adding")
    assert (p.hidden, p.n_neg, p.lr_A) == (170, 85, 1e-4)
    for task in ("copy", "adding"):
        p = params("enrnn", task, "fast")
        assert p.hidden + p.n2 == 128


def test_flops_by_hand():
    # enrnn n1 = 2, n2 = 1, d = 1 (n = 3): 2*3*1 + 2*(4 + 2 + 1) + (2 + 3) + 5*3 = 6 + 14 + 5 + 15
    assert cell("enrnn", d_input=1, hidden=2, n_neg=1, n2=1).flops_per_step() == 40
    # scornn n = 2, d = 1: 2*2*1 + 2*4 + 2 + 5*2
    assert cell("scornn", d_input=1, hidden=2, n_neg=1).flops_per_step() == 24
    # rnn hidden 2, d 1: 2*1*2*(1 + 2) + 2*1*2 + 1*2
    assert cell("rnn", d_input=1, hidden=2).flops_per_step() == 18


def test_bad_params_are_reported():
    from seqbench.errors import SeqbenchError

    from seqbench import config, registry

    def resolve(**over):
        return config.resolve(registry.get_model("enrnn"), registry.get_task("copy"), "tiny",
                              {f"model.{k}": v for k, v in over.items()})

    with pytest.raises(SeqbenchError, match=r"'model.n_neg': expected an integer in \[0, model.hidden = 4\]"):
        resolve(hidden=4, n_neg=5, n2=2)
    with pytest.raises(SeqbenchError, match="'model.lr_A': expected a finite number > 0 or none"):
        resolve(hidden=4, n2=2, lr_A=0.0)
