"""HiPPO memory cells (Gu, Dao, Ermon, Rudra, Re, "HiPPO: Recurrent Memory with Optimal Polynomial
Projections", NeurIPS 2020): ``hippo`` (LegS, the scaled Legendre measure) and ``hippo-legt`` (LegT,
the translated Legendre measure of the LMU, Voelker et al. 2019). Written from the paper and checked
against the behaviour of the reference code (HazyResearch/hippo-code ``model/memory.py``,
``model/op.py``, ``model/opcell.py``); no reference code is copied. A LegS step is either dense
(``legs_step_dense``: cached N x N matrices) or O(N) (``legs_step_fast``: a parallel scan). All math is
float64-capable and batched over [B, M, N] = batch, memory channels, order.
"""
from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from seqbench.config import POSITIVE, POSITIVE_REAL, choice, setting
from seqbench.errors import SeqbenchError
from seqbench import fused
from seqbench.model import FusedLoop, RecurrentBackbone, impl_setting, no_autocast
from seqbench.registry import register_model

DISCRETIZATIONS = ("bilinear", "forward", "backward", "zoh")
GBT_ALPHA = {"forward": 0.0, "bilinear": 0.5, "backward": 1.0}


# ----------------------------------------------------------------------------------- matrices
def legs_matrices(N: int, dtype=torch.float64, device=None):
    """LegS (A, B) in the convention dc/dt = -(1/t) A c + (1/t) B f; A lower triangular, positive:
    A[n, k] = sqrt(2n+1) sqrt(2k+1) (n > k), n + 1 (n = k), 0 (n < k);  B[n] = sqrt(2n+1).

    ``c_n(t) = (1/t) * integral_0^t f(s) sqrt(2n+1) P_n(2s/t - 1) ds`` are the coefficients of f on
    [0, t] in the orthonormal scaled Legendre basis (``legs_reconstruct``; tested). The reference stores the
    same matrices with the opposite sign (its A is our -A, dc/dt = (1/t)(A c + B f)), so its
    ``(I - A/(2t))^-1 (I + A/(2t))`` is our ``(I + A/(2t))^-1 (I - A/(2t))``."""
    n = torch.arange(N, dtype=torch.float64, device=device)
    s = torch.sqrt(2 * n + 1)
    A = torch.tril(s[:, None] * s[None, :], -1) + torch.diag(n + 1)
    return A.to(dtype), s.to(dtype)


def legt_matrices(N: int, theta: float = 1.0, normalized: bool = False, dtype=torch.float64, device=None):
    """LegT / LMU (A, B) in the convention dc/dt = A c + B f (A has negative eigenvalues; paper appendix).

    LMU form: A[n,k] = (2n+1)/theta * (-1 if n<k else (-1)^(n-k+1)), B[n] = (2n+1)(-1)^n/theta.
    ``normalized``: the similar system D^-1 A D, D^-1 B with D = diag(sqrt(2n+1)(-1)^n), i.e.
    B'_n = sqrt(2n+1)/theta (the reference's ``transition('legt', N)`` scaled by 1/theta); its
    coefficients are D^-1 times the LMU ones."""
    n = torch.arange(N, dtype=torch.float64, device=device)
    i, k = n[:, None], n[None, :]
    sign_lower = 1.0 - 2.0 * torch.remainder(i - k + 1, 2)  # (-1)^(i-k+1)
    A = (2 * i + 1) * torch.where(i < k, -torch.ones_like(sign_lower), sign_lower)
    B = (2 * n + 1) * (1.0 - 2.0 * torch.remainder(n, 2))
    if normalized:
        d = torch.sqrt(2 * n + 1) * (1.0 - 2.0 * torch.remainder(n, 2))
        A = A * d[None, :] / d[:, None]
        B = B / d
    return (A / theta).to(dtype), (B / theta).to(dtype)


def discretize(G: torch.Tensor, B: torch.Tensor, dt, method: str = "bilinear", lower: bool = False):
    """Discretise dc/dt = G c + B f over steps of length ``dt`` (a float or a [K] tensor).

    GBT: A_d = (I - a dt G)^-1 (I + (1-a) dt G), B_d = (I - a dt G)^-1 dt B (a = 0, 1/2, 1);
    ZOH: [[A_d, B_d], [0, 1]] = expm([[G, B], [0, 0]] dt). Returns A_d [..., N, N], B_d [..., N]
    (batched over dt when dt is a tensor). ``lower``: G is lower triangular (triangular solve)."""
    N = G.shape[-1]
    dt = torch.as_tensor(dt, dtype=G.dtype, device=G.device)
    batched = dt.dim() > 0
    dtv = dt.reshape(-1, 1, 1)
    I = torch.eye(N, dtype=G.dtype, device=G.device)
    if method == "zoh":
        M = torch.zeros(dtv.shape[0], N + 1, N + 1, dtype=G.dtype, device=G.device)
        M[:, :N, :N] = G * dtv
        M[:, :N, N] = B * dtv[:, :, 0]
        E = torch.linalg.matrix_exp(M)
        Ad, Bd = E[:, :N, :N], E[:, :N, N]
    elif method in GBT_ALPHA:
        a = GBT_ALPHA[method]
        lhs = I - a * dtv * G
        rhs = torch.cat([I + (1 - a) * dtv * G, (dtv[:, :, 0] * B).unsqueeze(-1)], dim=-1)
        if lower:
            X = torch.linalg.solve_triangular(lhs, rhs, upper=False)
        else:
            X = torch.linalg.solve(lhs, rhs)
        Ad, Bd = X[..., :N], X[..., N]
    else:
        raise SeqbenchError(f"unknown discretization '{method}'; choose one of {', '.join(DISCRETIZATIONS)}")
    if not batched:
        Ad, Bd = Ad[0], Bd[0]
    return Ad.contiguous(), Bd.contiguous()


def legs_transitions(N: int, ts, method: str = "bilinear", dtype=torch.float64, device=None):
    """Dense LegS step matrices for the steps t in ``ts`` (ints >= 0), computed in float64:
    A_t [K, N, N], B_t [K, N]. t = 0 is the first input: A_0 = 0, B_0 = e_0 (c = u e_0, the projection
    of a constant history: exact for every discretisation); t >= 1 steps from time t to t + 1:
      GBT with dt = 1 and generator G_t = -A/t: A_t = (I + a A/t)^-1 (I - (1-a) A/t),
          B_t = (I + a A/t)^-1 B/t; a = 1/2 "bilinear" (default, as the reference), 0 "forward"
          (Euler), 1 "backward".
      "zoh": exact for an input held constant over [t, t+1]. With tau = ln t the LegS ODE is time
          invariant, dc/dtau = -A c + B f, so with d tau = ln((t+1)/t): A_t = expm(-A d tau),
          B_t = A^-1 (I - A_t) B, computed as the top block row of expm([[-A, B], [0, 0]] d tau) (the
          reference: ``la.expm(A * (log(t+1) - log(t)))`` and ``solve_triangular(A, A_t B - B)`` in its
          sign)."""
    ts = torch.as_tensor(ts, dtype=torch.float64, device=device).reshape(-1)
    A, B = legs_matrices(N, device=device)
    pos = ts > 0
    tp = torch.where(pos, ts, torch.ones_like(ts))
    if method == "zoh":
        dt = torch.log1p(1.0 / tp)  # ln((t+1)/t): the step in log-time, where LegS is time invariant
    else:
        dt = 1.0 / tp  # GBT with dt = 1 and generator -A/t
    Ad, Bd = discretize(-A, B, dt, method, lower=True)
    e0 = torch.zeros(N, dtype=torch.float64, device=device)
    e0[0] = 1.0
    Ad = torch.where(pos[:, None, None], Ad, torch.zeros_like(Ad))
    Bd = torch.where(pos[:, None], Bd, e0)
    return Ad.to(dtype), Bd.to(dtype)


def legs_transition(N: int, t: int, method: str = "bilinear", dtype=torch.float64, device=None):
    """(A_t [N, N], B_t [N]) for one step t, from the chunk cache."""
    C, t = chunk_size(N), int(t)
    A, B = _legs_chunk(N, method, t // C, dtype, torch.device(device if device is not None else "cpu"))
    return A[t % C], B[t % C]


def legendre(N: int, z: torch.Tensor) -> torch.Tensor:
    """P_0..P_{N-1} at z (any shape): [..., N], by the three-term recurrence
    (n+1) P_{n+1} = (2n+1) z P_n - n P_{n-1}."""
    P = [torch.ones_like(z), z][:N]
    for n in range(1, N - 1):
        P.append(((2 * n + 1) * z * P[n] - n * P[n - 1]) / (n + 1))
    return torch.stack(P, dim=-1)


def legs_reconstruct(c: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The history encoded by LegS coefficients c [..., N] at relative times x in [0, 1]
    (0 = the first input, 1 = now): f(x) ~ sum_n c_n sqrt(2n+1) P_n(2x - 1). Returns [..., len(x)]."""
    N = c.shape[-1]
    basis = legendre(N, 2 * x.to(c.dtype) - 1) * torch.sqrt(2 * torch.arange(N, dtype=c.dtype, device=c.device) + 1)
    return c @ basis.t()


# ------------------------------------------------------------------------- the dense cache
class _LRUCache:
    """Least-recently-used cache bounded by the bytes of the tensors it holds."""

    def __init__(self, max_bytes: int):
        self.max_bytes, self.bytes, self.data, self.sizes = max_bytes, 0, OrderedDict(), {}

    def get(self, key, make):
        if key in self.data:
            self.data.move_to_end(key)
            return self.data[key]
        value = make()
        self.data[key] = value
        self.sizes[key] = sum(v.numel() * v.element_size() for v in value)
        self.bytes += self.sizes[key]
        while self.bytes > self.max_bytes and len(self.data) > 1:
            old, _ = self.data.popitem(last=False)
            self.bytes -= self.sizes.pop(old)
        return value

    def held_by_others(self, mine) -> int:
        """Bytes held under the keys for which ``mine(key)`` is false."""
        return sum(size for key, size in self.sizes.items() if not mine(key))

    def clear(self):
        self.data.clear()
        self.sizes.clear()
        self.bytes = 0


# 4 GiB holds N = 512 float32 tables for 4,000 steps (the paper's pMNIST: 784; the reference keeps
# 1,024 as a buffer and clamps beyond) or N = 1024 for 1,000. A training pass keeps every table it
# used alive until its backward (autograd saves A_t for dc), so for a model whose tables fit,
# keeping them after the pass adds nothing to its training's peak memory and spares the next pass
# their rebuild (with 1 GiB, N = 512 and T = 2000 rebuilt every chunk on every pass: 60 s a
# training step instead of ~25). Beyond the budget (what other cells' tables leave of it) chunks
# are recomputed (never clamped), and step=auto takes the O(N) step.
DENSE_CACHE = _LRUCache(4 << 30)


def chunk_size(N: int) -> int:
    """Steps per cached chunk: a float64 chunk of [C, N, N] stays near 32 MiB (C in 1..64)."""
    return max(1, min(64, (1 << 22) // (N * N)))


def _legs_chunk(N: int, method: str, idx: int, dtype, device: torch.device):
    def make():
        C = chunk_size(N)
        # Plain tensors whatever the caller's mode: no autograd history, no inference tensors
        # (those could not be saved for a later backward), no autocast.
        with torch.inference_mode(False), torch.no_grad(), no_autocast(device.type):
            return legs_transitions(N, range(idx * C, (idx + 1) * C), method, dtype, device)

    return DENSE_CACHE.get(("legs", N, method, idx, dtype, str(device)), make)


# --------------------------------------------------------------------------------- the steps
def apply_dense(c: torch.Tensor, u: torch.Tensor, A_t: torch.Tensor, B_t: torch.Tensor) -> torch.Tensor:
    """c [B, M, N] <- A_t c + B_t u, u [B, M]."""
    N = c.shape[-1]
    out = torch.addmm(u.reshape(-1, 1) * B_t, c.reshape(-1, N), A_t.t())
    return out.view(c.shape)


def legs_step_dense(c: torch.Tensor, u: torch.Tensor, t: int, discretization: str = "bilinear") -> torch.Tensor:
    """One LegS step with the dense (cached) A_t, B_t. c [B, M, N], u [B, M], t = inputs consumed.
    The matrices are computed in float64 with ``torch.linalg.solve_triangular`` (ZOH:
    ``torch.linalg.matrix_exp``), cast to c's dtype and cached (LRU, bounded in bytes) in chunks of
    consecutive t. 2 N^2 FLOPs per channel."""
    A_t, B_t = legs_transition(c.shape[-1], t, discretization, c.dtype, c.device)
    return apply_dense(c, u, A_t, B_t)


def _shift(x: torch.Tensor, k: int, value: float = 0.0) -> torch.Tensor:
    """x shifted right by k along the last dim: out[..., n] = x[..., n-k], ``value`` for n < k."""
    if k >= x.shape[-1]:
        return torch.full_like(x, value)
    return F.pad(x[..., :-k], (k, 0), value=value)


def _shift_left(x: torch.Tensor, k: int) -> torch.Tensor:
    """x shifted left by k along the last dim (the adjoint of ``_shift``): out[..., n] = x[..., n+k], 0 beyond."""
    if k >= x.shape[-1]:
        return torch.zeros_like(x)
    return F.pad(x[..., k:], (0, k))


def scan_rounds(N: int) -> int:
    return math.ceil(math.log2(N)) if N > 1 else 0


def _window_products(m: torch.Tensor, shift, rounds: int) -> list:
    """The scan's multipliers: round r's is the product of m over windows of 2^r (``shift`` says in
    which direction a window extends and what lies beyond the vector)."""
    out, step = [], 1
    for _ in range(rounds):
        out.append(m)
        m = m * shift(m, step)
        step *= 2
    return out


def _scan(x: torch.Tensor, mults: torch.Tensor, shift) -> torch.Tensor:
    """The Hillis-Steele rounds of a first-order linear recurrence: x <- x + mults[r] * shift(x, 2^r)
    (``_shift``: forwards, S_n = coef_n S_{n-1} + x_n; ``_shift_left``: its transpose, backwards)."""
    step = 1
    for r in range(mults.shape[-2]):
        x = torch.addcmul(x, mults[r], shift(x, step))
        step *= 2
    return x


def legs_fast_coefficients(N: int, ts, discretization: str = "bilinear", dtype=torch.float64, device=None) -> dict:
    """The batch-independent vectors of ``legs_step_fast`` for the steps t in ``ts`` (t >= 1),
    computed in float64 and cast: each entry has a leading dim K = len(ts).

    With d = 1/t, a = the GBT alpha, k = (1-a) d, D_n = 1 + a d (n+1):
      y = (I - k A) c + d B u = p1 * c + s * (d u - k excl_cumsum(s c)),  p1 = 1 - k (n+1)
      S_n = coef_n S_{n-1} + q_n y_n,  coef_n = (1 - a d n) / D_n,  q_n = s_n / D_n
      x = y / D - r * S_{n-1},  r_n = a d s_n / D_n
    ``m`` [K, R, N]: the scan's multipliers, m[r] = products of coef over windows of 2^r ending at n."""
    if discretization not in GBT_ALPHA:
        raise SeqbenchError(f"the fast LegS step supports {', '.join(GBT_ALPHA)}, "
                            f"not '{discretization}' (use the dense step)")
    a = GBT_ALPHA[discretization]
    ts = torch.as_tensor(ts, dtype=torch.float64, device=device).reshape(-1, 1)
    if (ts < 1).any():
        raise ValueError("legs_fast_coefficients needs t >= 1 (t = 0 is the first input: c = u e_0)")
    n = torch.arange(N, dtype=torch.float64, device=device)
    s = torch.sqrt(2 * n + 1)
    d = 1.0 / ts
    k = (1 - a) * d
    D = 1 + a * d * (n + 1)
    coef = (1 - a * d * n) / D
    ms = _window_products(coef, lambda x, k: _shift(x, k, 1.0), scan_rounds(N))
    # The adjoint's scan runs backwards, G_j = g_j + coef_{j+1} G_{j+1}: mT[r][j] = the product of
    # the 2^r coefficients after j (0 where the window leaves the vector: G is 0 there).
    mts = _window_products(_shift_left(coef, 1), _shift_left, scan_rounds(N))
    empty = torch.zeros(len(ts), 0, N, dtype=torch.float64, device=device)
    out = {
        "d": d[:, 0], "k": k[:, 0], "s": s.expand(len(ts), N), "p1": 1 - k * (n + 1), "q": s / D, "invD": 1 / D,
        "r": a * d * s / D, "m": torch.stack(ms, 1) if ms else empty, "mT": torch.stack(mts, 1) if mts else empty,
    }
    return {key: v.to(dtype) for key, v in out.items()}


def _row(coeffs: dict, i: int) -> dict:
    return {key: v[i] for key, v in coeffs.items()}


def legs_step_fast(c: torch.Tensor, u: torch.Tensor, t: int, discretization: str = "bilinear",
                   solver: str = "scan", coeffs: Optional[dict] = None) -> torch.Tensor:
    """One LegS GBT step in O(N) memory without forming A_t.

    c [B, M, N], u [B, M], t = inputs consumed (0: the first input). ``solver``: "scan" (parallel
    scan, default) or "loop" (sequential recurrence over n, a check). ``coeffs``: this t's row of
    ``legs_fast_coefficients`` (computed here when not given).

    A = diag(n+1) + strictly-lower s s^T (s_n = sqrt(2n+1)), so A v = (n+1) v + s * exclusive_cumsum(s v)
    is O(N), and (I + d A) x = b (d = a/t) is a forward recurrence x_n = (b_n - d s_n S_{n-1}) /
    (1 + d(n+1)), S_n = S_{n-1} + s_n x_n. Eliminating x_n gives S_n = a_n S_{n-1} + s_n b_n / (1 + d(n+1))
    with a_n = (1 - d n)/(1 + d(n+1)) (bilinear: (2t - n)/(2t + n + 1)). Its closed form through
    cumprod(a) is unusable (prefix products exactly 0 at n = 2t for t <= N/2, spanning hundreds of orders
    of magnitude otherwise), so the recurrence runs as a parallel (Hillis-Steele) scan of the affine maps
    S -> a S + beta: ceil(log2 N) rounds of one multiply-add on [B, M, N], no division, and every
    |a_n| < 1, so as stable as the sequential recurrence. O(N log N) work, O(log N) depth, no Python loop
    over n. ZOH has no O(N) form (expm(-A tau) is dense): only the dense step supports it."""
    if discretization not in GBT_ALPHA:
        raise SeqbenchError(f"the fast LegS step supports {', '.join(GBT_ALPHA)}, "
                            f"not '{discretization}' (use the dense step)")
    N = c.shape[-1]
    if t == 0:
        return F.pad(u.unsqueeze(-1), (0, N - 1)).to(c.dtype)
    if solver == "loop":
        return _legs_step_loop(c, u, t, GBT_ALPHA[discretization])
    if solver != "scan":
        raise ValueError(f"unknown solver '{solver}'")
    P = coeffs if coeffs is not None else _row(legs_fast_coefficients(N, [t], discretization, c.dtype, c.device), 0)
    a = GBT_ALPHA[discretization]
    d, k = 1.0 / float(t), (1.0 - a) / float(t)
    u = u.unsqueeze(-1)
    if k != 0.0:  # y = p1 c + s (d u - k excl_cumsum(s c))
        excl = _shift(torch.cumsum(P["s"] * c, dim=-1), 1)
        y = torch.addcmul(P["p1"] * c, P["s"], torch.add(d * u, excl, alpha=-k))
    else:
        y = torch.addcmul(c, P["s"], u, value=d)
    if a == 0.0:
        return y
    S = _scan(y * P["q"], P["m"], _shift)  # S_n = coef_n S_{n-1} + q_n y_n
    return torch.addcmul(y * P["invD"], P["r"], _shift(S, 1), value=-1.0)


def _legs_step_loop(c, u, t, a):
    """The GBT step by the sequential forward recurrence over n (Python loop; reference/check)."""
    N = c.shape[-1]
    n = torch.arange(N, dtype=c.dtype, device=c.device)
    s = torch.sqrt(2 * n + 1)
    d = 1.0 / t
    y = c + (d * s) * u.unsqueeze(-1)
    if a < 1.0:
        Ac = (n + 1) * c + s * _shift(torch.cumsum(s * c, dim=-1), 1)
        y = y - ((1.0 - a) * d) * Ac
    if a == 0.0:
        return y
    xs, S = [], torch.zeros_like(y[..., 0])
    for i in range(N):
        xi = (y[..., i] - a * d * s[i] * S) / (1 + a * d * (i + 1))
        S = S + s[i] * xi
        xs.append(xi)
    return torch.stack(xs, dim=-1)


def legs_step_fast_adjoint(dx: torch.Tensor, t: int, a: float, P: dict):
    """The transpose of the (linear) fast step x = L_t c + b_t u: (dc, du) = (L_t^T dx, b_t . dx),
    by the same O(N) pieces run backwards (see ``legs_fast_coefficients``): x = y/D - r S_{n-1}
    gives dS = -shift_left(r dx) and dy = dx/D; the scan S = L beta transposes to a backward scan
    G_j = dS_j + coef_{j+1} G_{j+1} (multipliers ``mT``) and adds q G to dy; y = p1 c + s (d u - k
    excl_cumsum(s c)) gives dc = p1 dy - k s rev_cumsum(shift_left(s dy)) and du = d sum(s dy)."""
    d, k = 1.0 / float(t), (1.0 - a) / float(t)
    if a == 0.0:
        dy = dx
    else:
        G = _scan(_shift_left(P["r"] * dx, 1).neg_(), P["mT"], _shift_left)
        dy = torch.addcmul(dx * P["invD"], P["q"], G)
    sdy = dy * P["s"]
    du = sdy.sum(-1) * d
    if k == 0.0:
        return dy, du
    rev = torch.flip(torch.cumsum(torch.flip(_shift_left(sdy, 1), (-1,)), -1), (-1,))
    return torch.addcmul(dy * P["p1"], P["s"], rev, value=-k), du


class _FastStep(torch.autograd.Function):
    """One fast LegS step (t >= 1) with a hand-written backward: the step is linear in (c, u) with
    coefficients that depend on t only, so its backward needs no activation and runs as
    ~2 log2 N + 10 kernels, without autograd's node per forward op (~25 per step). A training
    step of the cell: 0.88x the time at N = 128, T = 784 and 0.81x at N = 512, T = 200 (batch 100,
    one thread, interleaved). Equal to autograd through ``legs_step_fast`` (tested)."""

    @staticmethod
    def forward(ctx, c, u, t, a_name, P):
        ctx.t, ctx.a, ctx.P = t, GBT_ALPHA[a_name], P
        return legs_step_fast(c, u, t, a_name, coeffs=P)

    @staticmethod
    def backward(ctx, dx):
        dc, du = legs_step_fast_adjoint(dx, ctx.t, ctx.a, ctx.P)
        return dc, du, None, None, None


def legs_step_fast_grad(c: torch.Tensor, u: torch.Tensor, t: int, discretization: str, coeffs: dict) -> torch.Tensor:
    """``legs_step_fast`` (t >= 1, scan) with the hand-written backward where a gradient is needed."""
    if torch.is_grad_enabled() and (c.requires_grad or u.requires_grad):
        return _FastStep.apply(c, u, t, discretization, coeffs)
    return legs_step_fast(c, u, t, discretization, coeffs=coeffs)


def fast_step_flops(N: int, discretization: str = "bilinear") -> int:
    """Per-sample FLOPs of one ``legs_step_fast`` (scan) step for one memory channel (multiply-add
    = 2); the t-only vectors (``legs_fast_coefficients``) are shared by the batch, not counted."""
    a = GBT_ALPHA[discretization]
    # y: s*c, cumsum, d u - k excl (2), p1*c, addcmul (2) = 7N; without the A c term one addcmul
    f = 7 * N if a < 1.0 else 2 * N
    if a > 0.0:
        f += N + 2 * N * scan_rounds(N) + 3 * N  # y*q; scan rounds (multiply-add); y/D - r S_prev
    return f


# ------------------------------------------------------------------------------- the cell
@dataclass
class HiPPOParams:
    hidden: int = setting(256, POSITIVE)
    memory_order: Optional[int] = setting(None, POSITIVE, "N; None = hidden (the reference's memory_order=-1)")
    memory_size: int = setting(1, POSITIVE, "M, memory channels")
    discretization: str = choice("bilinear", DISCRETIZATIONS)
    step: str = choice("auto", ("auto", "dense", "fast"),
                        "dense: cached N x N matrices; fast: the O(N) LegS step; auto: the fused loop takes "
                        "fast (zoh: dense), the eager one dense while a forward's tables fit the cache, else fast")
    impl: str = impl_setting()


# hidden 512 = memory order 512: the HiPPO paper's (p)MNIST models.
HIPPO_PRESETS = {
    "tiny": {"model.hidden": 16},
    "fast": {"model.hidden": 64},
    "pmnist:paper": {"model.hidden": 512},
    "smnist:paper": {"model.hidden": 512},
}


@register_model("hippo")
class HiPPOLegS(FusedLoop, RecurrentBackbone):
    """HiPPO-LegS memory cell (the reference's ``legs`` cell): a gated RNN whose memory c holds the
    input history's coefficients in the scaled Legendre basis.

    The reference's ``MemoryCell`` with gate 'G', memory activation 'id', hidden activation tanh,
    ``ux``/``hx``/``hm``/``bias`` on, ``um``/``hh`` off; per step
        u_t = W_u [x_t, h_{t-1}]                     (M channels)
        c_t = A_t c_{t-1} + B_t u_t                  (c: [B, M, N]; ``legs_transitions``)
        h~_t = tanh(W_h [x_t, vec c_t]),  g_t = sigmoid(W_g [x_t, vec c_t])
        h_t = (1 - g_t) h_{t-1} + g_t h~_t
    state = (h, c, t), t the inputs consumed (a 0-dim tensor, so a stateful strategy continues t), as
    the reference's ``LSICell`` with ``init_t=0``. Unlike the reference (tables up to
    ``max_length=1024``, later steps silently reuse t = 1024), t is never clamped. The memory recurrence
    runs in the parameters' dtype with autocast off (bf16 would destroy it). Subclasses change the
    measure by overriding ``_setup_memory``, ``_memory_step`` and ``_memory_flops``."""

    paper = "Gu, Dao, Ermon, Rudra & Ré, HiPPO: Recurrent Memory with Optimal Polynomial Projections, NeurIPS 2020"
    paper_url = "https://arxiv.org/abs/2008.07669"
    reference = "https://github.com/HazyResearch/hippo-code"  # model/memory.py, model/op.py, model/opcell.py
    # (``hippo-legt`` inherits them: LegT is the same paper's, the LMU's measure)
    Params = HiPPOParams
    presets = HIPPO_PRESETS

    def __init__(self, d_input: int, p: HiPPOParams):
        super().__init__()
        H, M = p.hidden, p.memory_size
        N = p.memory_order if p.memory_order is not None else H
        if p.discretization not in DISCRETIZATIONS:
            raise SeqbenchError(f"hippo: unknown discretization '{p.discretization}'")
        self.d_input, self.d_output, self.M, self.N = d_input, H, M, N
        self.discretization, self.step, self.impl = p.discretization, p.step, p.impl
        self.W_u = nn.Linear(d_input + H, M)
        self.W_h = nn.Linear(d_input + M * N, H)
        self.W_g = nn.Linear(d_input + M * N, H)
        self.reset_parameters()
        self._setup_memory(p)

    def reset_parameters(self):
        """The reference's initialisers (hippo-code model/memory.py MemoryCell.default_initializers,
        model/components.py get_initializer / Linear_): W_u ('uxh': 'uniform', memory activation
        'id') kaiming_uniform with gain 1; W_h ('hxm' then 'hx' and 'hm': 'xavier') xavier_normal
        separately on its x columns and on its memory columns; the gate W_g (Linear_ default
        init='normal') kaiming_normal with gain 1 (std 1/sqrt(fan_in)). Biases: torch's default
        nn.Linear init (the reference does not re-init them)."""
        D = self.d_input
        with torch.no_grad():
            nn.init.kaiming_uniform_(self.W_u.weight, nonlinearity="linear")
            if D > 0:
                nn.init.xavier_normal_(self.W_h.weight[:, :D])
            nn.init.xavier_normal_(self.W_h.weight[:, D:])
            nn.init.kaiming_normal_(self.W_g.weight, nonlinearity="linear")

    # ---- measure-specific pieces
    def _setup_memory(self, p):
        if self.step == "fast" and self.discretization not in GBT_ALPHA:
            raise SeqbenchError("hippo: step=fast supports the bilinear, forward and backward discretizations; "
                                "use step=dense for zoh")
        self.last_step = self.step if self.step != "auto" else None  # the step the last forward took
        A, B = legs_matrices(self.N, dtype=torch.float32)
        # The continuous-time matrices, fixed (buffers, not parameters; not saved in checkpoints).
        self.register_buffer("A", A, persistent=False)
        self.register_buffer("B", B, persistent=False)

    def pick_step(self, t_end: int, dtype, device=None) -> str:
        """``auto``: the dense step while the tables of the steps up to ``t_end`` fit the dense cache
        (they are built once and reused by every later pass), the O(N) step beyond (a pass that
        needs more tables than the cache holds would rebuild every chunk on every pass: 46 s instead
        of 0.3 s per forward at N = 512, T = 2000 with a 1 GiB cache, measured). ZOH has only the
        dense step. The budget is what tables of other sizes, dtypes or devices leave of the cache
        (layers of one N share theirs)."""
        if self.step != "auto":
            return self.step
        if self.discretization not in GBT_ALPHA:
            return "dense"
        C = chunk_size(self.N)
        chunks = -(-t_end // C)
        table = chunks * C * (self.N * self.N + self.N) * torch.empty((), dtype=dtype).element_size()
        mine = ("legs", self.N, self.discretization)
        dev = str(torch.device(device if device is not None else "cpu"))
        others = DENSE_CACHE.held_by_others(lambda k: k[:3] == mine and k[4:] == (dtype, dev))
        return "dense" if table <= DENSE_CACHE.max_bytes - others else "fast"

    def _memory_context(self, dtype, device, t_end: int = 0) -> dict:
        """What the steps of one forward share (built once per forward)."""
        step = self.pick_step(t_end, dtype, device)
        self.last_step = step
        return {"chunk": None, "dtype": dtype, "device": device, "step": step,
                "C": chunk_size(self.N) if step == "dense" else 64}

    def _memory_step(self, c, u, t: int, ctx: dict):
        C = ctx["C"]
        if ctx["step"] == "fast":
            if t == 0:
                return legs_step_fast(c, u, 0, self.discretization)
            if ctx["chunk"] != t // C:  # the t-only vectors of the next C steps (cheap; not cached)
                ctx["chunk"] = t // C
                ts = range(max(1, t // C * C), (t // C + 1) * C)
                with torch.inference_mode(False), torch.no_grad():
                    co = legs_fast_coefficients(self.N, ts, self.discretization, ctx["dtype"], ctx["device"])
                ctx["coeffs"], ctx["first"] = [_row(co, i) for i in range(len(ts))], ts[0]
            return legs_step_fast_grad(c, u, t, self.discretization, ctx["coeffs"][t - ctx["first"]])
        if ctx["chunk"] != t // C:  # the next chunk of dense matrices (from the LRU cache)
            ctx["chunk"] = t // C
            ctx["A"], ctx["B"] = _legs_chunk(self.N, self.discretization, t // C, ctx["dtype"], ctx["device"])
        return apply_dense(c, u, ctx["A"][t % C], ctx["B"][t % C])

    def _fused_memory(self, dtype, device, t0: int, T: int) -> tuple:
        """The memory step's arguments of the fused loop (``seqbench/csrc/cells.cpp`` ``Memory``): the dense
        tables of the steps t0 .. t0 + T - 1 (the same cached chunks as the eager step), or the O(N) step."""
        # auto: the O(N) step. In the fused loop it is faster than the dense one at every size measured
        # (training steps at batch 1 / 64 / 100, N 64 / 64 / 128 / 512, T 784: 0.90 / 0.79 / 0.82 / 0.85 of
        # the dense step's time); ZOH has only the dense step.
        step = self.step if self.step != "auto" else ("fast" if self.discretization in GBT_ALPHA else "dense")
        self.last_step = step
        if step == "fast":
            return (1, 1, 0, True, GBT_ALPHA[self.discretization], [], [], t0)
        C = chunk_size(self.N)
        chunks = [_legs_chunk(self.N, self.discretization, i, dtype, device)
                  for i in range(t0 // C, (t0 + T - 1) // C + 1)]
        return (0, C, t0 // C, True, 0.0, [a.contiguous() for a, _ in chunks], [b.contiguous() for _, b in chunks], t0)

    def _memory_flops(self) -> int:
        N = self.N
        if (self.last_step or self.step) == "fast":  # auto: the step the last forward took (dense before any)
            return fast_step_flops(N, self.discretization)
        return 2 * N * N + 2 * N  # A_t c (N^2 multiply-adds) + B_t u (product, sum)

    # ---- the shared cell
    def initial_state(self, batch: int, device, dtype):
        return (
            torch.zeros(batch, self.d_output, device=device, dtype=dtype),
            torch.zeros(batch, self.M, self.N, device=device, dtype=dtype),
            torch.zeros((), dtype=torch.long, device=device),
        )

    def forward(self, x, state=None):
        Bsz, T, D = x.shape
        H, M, N = self.d_output, self.M, self.N
        dtype = self.W_u.weight.dtype
        h, c, t = state if state is not None else self.initial_state(Bsz, x.device, dtype)
        t0 = int(t)
        # The input's contributions for all steps at once; the recurrent parts per step.
        xu = F.linear(x, self.W_u.weight[:, :D], self.W_u.bias)  # [B, T, M]
        w_hg = torch.cat([self.W_h.weight, self.W_g.weight], 0)  # [2H, D + M N]
        b_hg = torch.cat([self.W_h.bias, self.W_g.bias])
        w_uh, w_hgm = self.W_u.weight[:, D:].t(), w_hg[:, D:].t()
        t_end = torch.full((), t0 + T, dtype=torch.long, device=x.device)
        if T > 0 and self.use_fused(x, h, c):  # the same loop in C++ (seqbench/fused.py)
            memory = self._fused_memory(c.dtype, c.device, t0, T)
            ys, h, c = fused.hippo_loop(xu, x, w_hg[:, :D].t(), b_hg, h, c, w_uh, w_hgm, memory)
            return ys, (h, c, t_end)
        xhg = F.linear(x, w_hg[:, :D], b_hg)  # [B, T, 2H]
        no_amp = no_autocast(x.device.type)  # the memory recurrence stays in the model's dtype
        ctx = self._memory_context(c.dtype, c.device, t0 + T)
        xu, xhg = xu.unbind(1), xhg.unbind(1)  # unbind: one backward node for all steps (slices: T)
        ys = []
        for k in range(T):
            u = torch.addmm(xu[k], h, w_uh)
            with no_amp:
                c = self._memory_step(c, u.to(c.dtype), t0 + k, ctx)
            pre = torch.addmm(xhg[k], c.reshape(Bsz, M * N), w_hgm)
            hh, g = pre.chunk(2, dim=-1)
            h = h + torch.sigmoid(g) * (torch.tanh(hh) - h)  # = (1 - g) h + g h~
            ys.append(h)
        y = torch.stack(ys, dim=1) if ys else x.new_zeros(Bsz, 0, H)
        return y, (h, c, t_end)

    def flops_per_step(self) -> int:
        D, H, M, N = self.d_input, self.d_output, self.M, self.N
        f = 2 * M * (D + H) + M  # u = W_u [x, h] + b
        f += M * self._memory_flops()
        f += 2 * (2 * H * (D + M * N) + H)  # W_h and W_g pre-activations with biases
        f += 2 * H  # tanh, sigmoid
        f += 3 * H  # h + g * (h~ - h): difference, product, sum
        return f


@dataclass
class HiPPOLegTParams(HiPPOParams):
    theta: float = setting(784.0, POSITIVE_REAL, "window length in steps (LMU theta); 784 = one MNIST sequence")
    step: str = choice("dense", ("dense",), "LegT is time invariant: one dense N x N pair")
    normalized: bool = False  # True: the reference's normalised 'legt' form instead of the LMU's


@register_model("hippo-legt")
class HiPPOLegT(HiPPOLegS):
    """HiPPO-LegT (LMU measure): the same cell with the time-invariant LegT memory; c starts at 0
    and every input makes one step of length 1 (no special first step).

    The measure is a sliding window of length theta (LMU, Voelker et al. 2019; HiPPO paper appendix);
    A_t, B_t are one pair of matrices (GBT with dt = 1, or ZOH), computed once (``legt_matrices``,
    ``normalized`` for the reference's form)."""

    Params = HiPPOLegTParams

    def _setup_memory(self, p):
        if self.step != "dense":
            raise SeqbenchError("hippo-legt: only step=dense (LegT's A is dense)")
        A, B = legt_matrices(self.N, p.theta, p.normalized)
        self.register_buffer("A", A.float(), persistent=False)
        self.register_buffer("B", B.float(), persistent=False)
        # The discretised pair in float64, cast once per (dtype, device) on first use.
        self._Ad64, self._Bd64 = discretize(A, B, 1.0, self.discretization)
        self._cast = {}

    def _memory_context(self, dtype, device, t_end: int = 0) -> dict:
        key = (dtype, str(device))
        if key not in self._cast:
            with torch.inference_mode(False), torch.no_grad():
                self._cast[key] = (self._Ad64.to(device, dtype), self._Bd64.to(device, dtype))
        return {"A": self._cast[key][0], "B": self._cast[key][1]}

    def _memory_step(self, c, u, t: int, ctx: dict):
        return apply_dense(c, u, ctx["A"], ctx["B"])

    def _fused_memory(self, dtype, device, t0: int, T: int) -> tuple:
        ctx = self._memory_context(dtype, device)
        return (2, 1, 0, False, 0.0, [ctx["A"]], [ctx["B"]], t0)

    def _memory_flops(self) -> int:
        return 2 * self.N * self.N + 2 * self.N
