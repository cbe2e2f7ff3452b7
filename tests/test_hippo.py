"""HiPPO-LegS / LegT: the matrices, the O(N) step against the dense one, no clamping of t, the
function approximation the memory exists for, gradients, and the cell against an independent
recurrence. All small and in float64; the whole file runs in a few seconds on one core."""
import math

import numpy as np
import pytest
import torch

from seqbench import config, registry
from seqbench.errors import SeqbenchError
from seqbench.models import hippo as hp


pytestmark = pytest.mark.usefixtures("one_thread")


def cell(name="hippo", d_input=1, **kw):
    cls = registry.get_model(name).cls
    return cls(d_input, cls.Params(**kw))


def ref_legs_bilinear(N, t):
    """(A_t, B_t) in the reference's sign (A_ref = -A): (I - A_ref/(2t))^-1 (I + A_ref/(2t)) and
    (I - A_ref/(2t))^-1 B/t, by a general dense solve (no triangular structure, no cache)."""
    A, B = hp.legs_matrices(N)
    A_ref, I = -A, torch.eye(N, dtype=torch.float64)
    lhs = I - A_ref / (2 * t)
    return torch.linalg.solve(lhs, I + A_ref / (2 * t)), torch.linalg.solve(lhs, B / t)


# ------------------------------------------------------------------------------- matrices
def test_legs_matrices_by_hand():
    A, B = hp.legs_matrices(3)
    r3, r5, r15 = math.sqrt(3), math.sqrt(5), math.sqrt(15)
    assert torch.allclose(A, torch.tensor([[1, 0, 0], [r3, 2, 0], [r5, r15, 3]], dtype=torch.float64))
    assert torch.allclose(B, torch.tensor([1, r3, r5], dtype=torch.float64))


def test_legt_matrices_by_hand_and_the_reference_normalisation():
    # LMU: A[n,k] = (2n+1)(-1 if n<k else (-1)^(n-k+1)) / theta, B[n] = (2n+1)(-1)^n / theta
    A, B = hp.legt_matrices(3, theta=2.0)
    assert torch.equal(A, torch.tensor([[-1, -1, -1], [3, -3, -3], [-5, 5, -5]], dtype=torch.float64) / 2)
    assert torch.equal(B, torch.tensor([1, -3, 5], dtype=torch.float64) / 2)
    # normalised: the reference's transition('legt'): A = -R (where(n<k, (-1)^(n-k), 1)) R, B = R
    An, Bn = hp.legt_matrices(3, theta=2.0, normalized=True)
    r = torch.sqrt(torch.tensor([1.0, 3.0, 5.0], dtype=torch.float64))
    sign = torch.tensor([[1, -1, 1], [1, 1, -1], [1, 1, 1]], dtype=torch.float64)
    assert torch.allclose(An, -(r[:, None] * sign * r[None, :]) / 2)
    assert torch.allclose(Bn, r / 2)
    # LegT's discrete pair: bilinear with dt = 1
    m = cell("hippo-legt", hidden=3, theta=2.0)
    I = torch.eye(3, dtype=torch.float64)
    assert torch.allclose(m._Ad64, torch.linalg.solve(I - A / 2, I + A / 2))
    assert torch.allclose(m._Bd64, torch.linalg.solve(I - A / 2, B))
    assert torch.equal(m.A, A.float()) and not any(n in ("A", "B") for n, _ in m.named_parameters())


# ------------------------------------------------------------------------------- the steps
def test_fast_step_equals_dense_step_over_2100_steps_float64():
    g = torch.Generator().manual_seed(0)
    N, Bsz, M = 32, 3, 2
    c_fast = c_dense = c_loop = torch.zeros(Bsz, M, N, dtype=torch.float64)
    worst = 0.0
    for t in range(2100):
        u = torch.randn(Bsz, M, generator=g, dtype=torch.float64)
        c_fast = hp.legs_step_fast(c_fast, u, t)
        c_dense = hp.legs_step_dense(c_dense, u, t)
        worst = max(worst, float((c_fast - c_dense).norm() / c_dense.norm()))
        if t < 60:  # the sequential solver agrees too
            c_loop = hp.legs_step_fast(c_loop, u, t, solver="loop")
            assert torch.allclose(c_loop, c_dense, rtol=1e-12, atol=1e-12)
    assert worst < 1e-9, worst


@pytest.mark.parametrize("disc", ["forward", "backward", "bilinear"])
@pytest.mark.parametrize("t", [1, 2, 7, 33, 5000])
def test_fast_step_equals_dense_one_step_every_gbt(disc, t):
    # one step from a random state (forward Euler is unstable for t < N, so no long run for it)
    g = torch.Generator().manual_seed(t)
    c = torch.randn(2, 3, 24, generator=g, dtype=torch.float64)
    u = torch.randn(2, 3, generator=g, dtype=torch.float64)
    a, b = hp.legs_step_fast(c, u, t, disc), hp.legs_step_dense(c, u, t, disc)
    assert float((a - b).norm() / b.norm()) < 1e-12


@pytest.mark.parametrize("disc", ["forward", "backward", "bilinear"])
def test_fast_step_hand_backward_equals_autograd(disc):
    """The cell's fast step backpropagates through ``legs_step_fast_adjoint`` (the transposed step),
    not autograd: both give the same (dc, du), at sizes that are and are not powers of 2."""
    g = torch.Generator().manual_seed(1)
    for N in (1, 2, 5, 8, 33):
        for t in (1, 2, 3, 16, 40, 1500):
            P = hp._row(hp.legs_fast_coefficients(N, [t], disc), 0)
            c = torch.randn(3, 2, N, generator=g, dtype=torch.float64, requires_grad=True)
            u = torch.randn(3, 2, generator=g, dtype=torch.float64, requires_grad=True)
            dx = torch.randn(3, 2, N, generator=g, dtype=torch.float64)
            want = torch.autograd.grad(hp.legs_step_fast(c, u, t, disc, coeffs=P), (c, u), dx)
            x = hp.legs_step_fast_grad(c, u, t, disc, P)
            assert x.grad_fn is not None and "FastStep" in type(x.grad_fn).__name__
            got = torch.autograd.grad(x, (c, u), dx)
            for w, h in zip(want, got):
                assert torch.allclose(h, w, rtol=1e-12, atol=1e-12), (N, t)
    c = torch.randn(2, 1, 6, dtype=torch.float64, requires_grad=True)
    u = torch.randn(2, 1, dtype=torch.float64, requires_grad=True)
    P = hp._row(hp.legs_fast_coefficients(6, [4], disc), 0)
    assert torch.autograd.gradcheck(lambda c, u: hp.legs_step_fast_grad(c, u, 4, disc, P), (c, u))


def test_first_step_sets_c_to_u_e0_and_constants_are_a_fixed_point():
    u = torch.tensor([[2.0, -1.0]], dtype=torch.float64)
    for disc in hp.DISCRETIZATIONS:
        c = hp.legs_step_dense(torch.zeros(1, 2, 5, dtype=torch.float64), u, 0, disc)
        assert torch.equal(c[..., 0], u) and not c[..., 1:].any()
        for t in (1, 2, 500):  # A e_0 = B: a constant history stays exactly u e_0
            c = hp.legs_step_dense(c, u, t, disc)
        assert torch.allclose(c[..., 0], u) and c[..., 1:].abs().max() < 1e-12


@pytest.mark.parametrize("t", [1500, 3000])
def test_no_clamping_beyond_1024(t):
    N = 8
    A_ref_t, B_ref_t = ref_legs_bilinear(N, t)
    A_t, B_t = hp.legs_transition(N, t)
    assert torch.allclose(A_t, A_ref_t, rtol=0, atol=1e-13) and torch.allclose(B_t, B_ref_t, rtol=0, atol=1e-15)
    A_1024, _ = hp.legs_transition(N, 1024)
    assert (A_t - A_1024).abs().max() > 1e-6  # a clamped table would return the t = 1024 matrix
    g = torch.Generator().manual_seed(1)
    c, u = torch.randn(4, 1, N, generator=g, dtype=torch.float64), torch.randn(4, 1, generator=g, dtype=torch.float64)
    expect = c @ A_ref_t.T + u[..., None] * B_ref_t
    assert torch.allclose(hp.legs_step_fast(c, u, t), expect, rtol=0, atol=1e-13)


@pytest.mark.parametrize("t", [3, 1500])
def test_zoh_is_exact_for_an_input_held_over_the_step(t):
    # integrate dc/ds = -(1/s) A c + (1/s) B f on [t, t+1] with f held, by RK4 with fine steps
    N, f = 6, 0.7
    A, B = hp.legs_matrices(N)
    c0 = torch.randn(N, generator=torch.Generator().manual_seed(2), dtype=torch.float64)

    def rhs(s, c):
        return (-A @ c + B * f) / s

    c, s, n = c0.clone(), float(t), 400
    h = 1.0 / n
    for _ in range(n):
        k1 = rhs(s, c)
        k2 = rhs(s + h / 2, c + h / 2 * k1)
        k3 = rhs(s + h / 2, c + h / 2 * k2)
        k4 = rhs(s + h, c + h * k3)
        c, s = c + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4), s + h
    A_t, B_t = hp.legs_transition(N, t, "zoh")
    assert torch.allclose(A_t @ c0 + B_t * f, c, rtol=0, atol=1e-10)
    # and in closed form: A_t = expm(-A ln((t+1)/t)), B_t = A^-1 (I - A_t) B
    assert torch.allclose(A_t, torch.linalg.matrix_exp(-A * math.log((t + 1) / t)), atol=1e-13)
    assert torch.allclose(B_t, torch.linalg.solve(A, (torch.eye(N, dtype=torch.float64) - A_t) @ B), atol=1e-12)


def test_dense_cache_is_bounded_in_bytes():
    cache = hp._LRUCache(max_bytes=3 * 8 * 10)
    for k in range(5):
        cache.get(k, lambda: (torch.zeros(10, dtype=torch.float64),))
    assert list(cache.data) == [2, 3, 4] and cache.bytes == 240
    cache.get(2, lambda: pytest.fail("hit expected"))
    cache.get(5, lambda: (torch.zeros(10, dtype=torch.float64),))
    assert list(cache.data) == [4, 2, 5]


# ---------------------------------------------------------------- what the memory is for
def test_legs_reconstructs_a_smooth_history_and_the_error_falls_with_N():
    """Feed f(k/T), k = 1..T, into the LegS recurrence and rebuild f on [0, 1] from c_T.

    Normalisation: c_n(t) = (1/t) int_0^t f(s) sqrt(2n+1) P_n(2s/t - 1) ds (the reference's
    B = sqrt(2n+1)) makes g_n(x) = sqrt(2n+1) P_n(2x - 1) orthonormal on [0, 1], so
    f ~ sum_n c_n g_n, and by Parseval the RMS error over [0, 1] is at most the truncation error of
    the exact projection plus ||c_T - c_exact||_2. We check the coefficients against the exact
    projection (Gauss-Legendre quadrature; a wrong normalisation is off by O(1)), that their error
    is first order in 1/T (the bilinear step freezes 1/t over each step and f is sampled at the
    step ends: O(1/T), measured ||.||_2 ~ 3.7/T), and bound the reconstruction by
    truncation + 5/T. The truncation error of this analytic f falls geometrically with N (about
    4e-2 at N = 8, 3e-8 at N = 16), so the error must fall from N = 8 to 16 and then sit on the
    O(1/T) floor."""

    def f(x):
        return torch.sin(3 * math.pi * x) * torch.exp(-x) + x**2

    z, w = (torch.tensor(a) for a in np.polynomial.legendre.leggauss(80))
    grid = torch.linspace(0, 1, 2001, dtype=torch.float64)

    def run(N, T):
        fs = f(torch.arange(1, T + 1, dtype=torch.float64) / T)
        c = torch.zeros(1, 1, N, dtype=torch.float64)
        co = hp.legs_fast_coefficients(N, range(1, T))
        c = hp.legs_step_fast(c, fs[0].view(1, 1), 0)
        for k in range(1, T):
            c = hp.legs_step_fast(c, fs[k].view(1, 1), k, coeffs=hp._row(co, k - 1))
        return c[0, 0]

    def exact(N):
        g = hp.legendre(N, z) * torch.sqrt(2 * torch.arange(N, dtype=torch.float64) + 1)
        return (w[:, None] * f((z + 1) / 2)[:, None] * g).sum(0) / 2

    def rms(c):
        return float((hp.legs_reconstruct(c, grid) - f(grid)).pow(2).mean().sqrt())

    T = 1000
    errs = {}
    for N in (8, 16, 32):
        c, ce = run(N, T), exact(N)
        coef_err = float((c - ce).norm())
        assert coef_err < 5 / T, (N, coef_err)
        errs[N] = rms(c)
        assert errs[N] <= rms(ce) + 5 / T, (N, errs[N], rms(ce))
    assert errs[8] > 2 * errs[16] and errs[32] <= errs[16] * 1.01 and errs[16] < 5e-3, errs
    # first order in 1/T: halving T doubles the coefficient error
    ratio = float((run(16, 500) - exact(16)).norm() / (run(16, 1000) - exact(16)).norm())
    assert 1.8 < ratio < 2.2, ratio


# ------------------------------------------------------------------------------- the cell
def reference_cell(m, x, As, Bs):
    """The cell's recurrence written out with explicit per-step matrices (As[t], Bs[t])."""
    H, M, N = m.d_output, m.M, m.N
    h = torch.zeros(x.shape[0], H, dtype=x.dtype)
    c = torch.zeros(x.shape[0], M, N, dtype=x.dtype)
    ys = []
    for t in range(x.shape[1]):
        xt = x[:, t]
        u = torch.cat([xt, h], -1) @ m.W_u.weight.T + m.W_u.bias
        c = c @ As(t).T + u[..., None] * Bs(t)
        xc = torch.cat([xt, c.reshape(len(xt), -1)], -1)
        hh = torch.tanh(xc @ m.W_h.weight.T + m.W_h.bias)
        g = torch.sigmoid(xc @ m.W_g.weight.T + m.W_g.bias)
        h = (1 - g) * h + g * hh
        ys.append(h)
    return torch.stack(ys, 1)


@pytest.mark.parametrize("step", ["dense", "fast"])
def test_legs_cell_matches_an_independent_recurrence_over_1100_steps(step):
    torch.manual_seed(0)
    N, T = 6, 1100
    m = cell(hidden=4, memory_order=N, memory_size=2, d_input=2, step=step).double()
    x = torch.randn(2, T, 2, dtype=torch.float64)
    mats = {t: ref_legs_bilinear(N, t) for t in range(1, T)}
    e0 = torch.zeros(N, dtype=torch.float64)
    e0[0] = 1
    with torch.no_grad():
        y, (h, c, t) = m(x)
        ref = reference_cell(m, x, lambda t: mats[t][0] if t else torch.zeros(N, N, dtype=torch.float64),
                             lambda t: mats[t][1] if t else e0)
        assert int(t) == T
        assert (y - ref).abs().max() < 1e-10
        # a stateful continuation across t = 1024 carries t on
        y1, s1 = m(x[:, :1000])
        y2, s2 = m(x[:, 1000:], s1)
        assert torch.allclose(torch.cat([y1, y2], 1), y, rtol=0, atol=1e-12) and int(s2[2]) == T


def test_legt_cell_matches_an_independent_recurrence():
    torch.manual_seed(0)
    m = cell("hippo-legt", hidden=3, memory_order=5, theta=50.0).double()
    A, B = hp.legt_matrices(5, 50.0)
    I = torch.eye(5, dtype=torch.float64)
    Ad, Bd = torch.linalg.solve(I - A / 2, I + A / 2), torch.linalg.solve(I - A / 2, B)
    x = torch.randn(3, 120, 1, dtype=torch.float64)
    with torch.no_grad():
        y, _ = m(x)
    assert (y - reference_cell(m, x, lambda t: Ad, lambda t: Bd)).abs().max() < 1e-12


@pytest.mark.parametrize("name,kw", [("hippo", {"step": "dense"}), ("hippo", {"step": "fast"}),
                                     ("hippo", {"discretization": "zoh"}), ("hippo-legt", {})])
def test_gradients_flow_gradcheck(name, kw):
    torch.manual_seed(0)
    m = cell(name, d_input=2, hidden=3, **kw).double()
    names = [n for n, _ in m.named_parameters()]
    params = tuple(p.detach().clone().requires_grad_(True) for p in m.parameters())
    x = torch.randn(2, 5, 2, dtype=torch.float64, requires_grad=True)

    def fn(x, *ps):
        y, (h, c, _) = torch.func.functional_call(m, dict(zip(names, ps)), (x,))
        return y, c

    assert torch.autograd.gradcheck(fn, (x, *params), eps=1e-6, atol=1e-7)


def test_dense_matrices_made_under_inference_mode_serve_training_later():
    hp.DENSE_CACHE.clear()
    m = cell(hidden=4)
    x = torch.randn(2, 70, 1)
    with torch.inference_mode():
        m(x)
    y, _ = m(x)
    y.sum().backward()
    assert m.W_u.weight.grad is not None


def test_bf16_autocast_keeps_the_memory_in_float32():
    m = cell(hidden=8, step="fast")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, (h, c, t) = m(torch.rand(2, 30, 1))
    assert c.dtype == torch.float32 and torch.isfinite(y).all()


def test_flops_by_hand_and_params():
    # D=1, H=2, M=1, N=2, dense: u 2*1*(1+2)+1 = 7; memory 2*2^2+2*2 = 12;
    # W_h, W_g 2*(2*2*(1+2)+2) = 28; tanh+sigmoid 4; gate update 3*2 = 6  -> 57
    assert cell(hidden=2).flops_per_step() == 57
    # fast, bilinear, N=2: 7N + N + 2N*1 (one scan round) + 3N = 26 instead of 12 -> 71
    assert cell(hidden=2, step="fast").flops_per_step() == 71
    m = cell(hidden=16)
    assert m.N == 16 and sum(p.numel() for p in m.parameters()) == (1 + 16 + 1) + 2 * (16 * (1 + 16) + 16)
    assert cell(hidden=16, memory_order=5, memory_size=3).W_h.in_features == 1 + 15


def test_bad_choices_fail_clearly():
    with pytest.raises(SeqbenchError, match="zoh"):
        cell(hidden=4, step="fast", discretization="zoh")
    legt, task = registry.get_model("hippo-legt"), registry.get_task("pmnist")
    with pytest.raises(SeqbenchError, match="model.step"):
        config.resolve(legt, task, "tiny", {"model.step": "fast"})
    cfg = config.resolve(registry.get_model("hippo"), task, "paper")
    assert cfg.model_params.hidden == 512 and cfg.model_params.memory_order is None


def test_auto_step_budget_is_what_other_tables_leave(monkeypatch):
    """Tables of another size held in the cache count against the budget; the cell's own do not
    (its earlier passes' chunks are the ones it would reuse)."""
    m = cell(hidden=8, memory_order=8)
    need = hp.chunk_size(8) * (8 * 8 + 8) * 4  # one chunk of float32 tables
    monkeypatch.setattr(hp, "DENSE_CACHE", hp._LRUCache(2 * need + need // 2))
    assert m.pick_step(10, torch.float32) == "dense"
    other = lambda: (torch.zeros(need // 4 // 2), torch.zeros(need // 4 // 2))  # noqa: E731 (one chunk's bytes)
    hp.DENSE_CACHE.get(("legs", 16, "bilinear", 0, torch.float32, "cpu"), other)
    hp.DENSE_CACHE.get(("legs", 16, "bilinear", 1, torch.float32, "cpu"), other)
    assert hp.DENSE_CACHE.bytes == 2 * need and m.pick_step(10, torch.float32) == "fast"
    hp.DENSE_CACHE.clear()
    for i in range(2):  # its own chunks: still dense
        hp.DENSE_CACHE.get(("legs", 8, "bilinear", i, torch.float32, "cpu"), other)
    assert m.pick_step(10, torch.float32, "cpu") == "dense"


def test_auto_step_is_dense_while_the_tables_fit_and_fast_beyond(monkeypatch):
    """step=auto (the default): N = 512 over 784 (the paper's) or 2000 steps keeps the cached dense
    tables (2.1 GB of the 4 GiB cache at 2000); 5000 steps would need more than the cache holds
    (every pass would rebuild every chunk), so the O(N) step runs; the two compute the same."""
    m = cell(hidden=512)
    assert m.step == "auto"
    assert m.pick_step(784, torch.float32) == "dense" and m.pick_step(2000, torch.float32) == "dense"
    assert m.pick_step(5000, torch.float32) == "fast" and m.pick_step(3000, torch.float64) == "fast"
    assert cell(hidden=512, discretization="zoh").pick_step(5000, torch.float32) == "dense"  # no O(N) ZOH
    torch.manual_seed(0)
    small = cell(hidden=6, memory_order=8, d_input=1, impl="eager")  # the rule of the eager loop
    x = torch.randn(3, 40, 1)
    y_dense, _ = small(x)
    assert small.last_step == "dense"
    fused = cell(hidden=6, memory_order=8, d_input=1)  # the fused loop's auto: the O(N) step (zoh: dense)
    fused.load_state_dict(small.state_dict())
    assert torch.allclose(fused(x)[0], y_dense, atol=1e-5) and fused.last_step == "fast"
    zoh = cell(hidden=6, memory_order=8, d_input=1, discretization="zoh")
    zoh(x)
    assert zoh.last_step == "dense"
    monkeypatch.setattr(hp.DENSE_CACHE, "max_bytes", 1000)  # now 40 steps' tables do not fit
    y_fast, _ = small(x)
    assert small.last_step == "fast" and torch.allclose(y_fast, y_dense, atol=1e-5)
    assert small.flops_per_step() == cell(hidden=6, memory_order=8, step="fast").flops_per_step()
