"""ENRNN and scoRNN recurrent cells, and a plain tanh RNN baseline.

ENRNN: Helfrich & Ye, "Eigenvalue Normalized Recurrent Neural Networks for Short Term Memory" (AAAI
2020); scoRNN: Helfrich, Willmott & Ye, "Orthogonal Recurrent Neural Networks with Scaled Cayley
Transform" (ICML 2018). Written from the papers and checked against the reference code
(KHelfrich1/ENRNN ``ENRNN.py``, ``ENRNN_copying.py``, ``ENRNN_adding.py``; SpartinStuff/scoRNN
``scoRNN.py``, ``scoRNN_copying.py``, ``scoRNN_adding.py``); no reference code is copied.
Registered: ``enrnn``, ``scornn`` (the ENRNN cell with n2 = 0) and ``rnn`` (torch's tanh RNN).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from seqbench.config import NONNEGATIVE, POSITIVE, POSITIVE_REAL, setting
from seqbench.errors import SeqbenchError
from seqbench import fused
from seqbench.model import FusedLoop, RecurrentBackbone, impl_setting, no_autocast
from seqbench.models.rnn import RNNParams, TorchRNN
from seqbench.registry import register_model


# ------------------------------------------------------------------------------------ maths
def modrelu(z: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """ReLU(|z| + b) * sign(z) (0 where z = 0)."""
    return F.relu(z.abs() + b) * z.sign()


def skew_from_upper(a: torch.Tensor, n: int) -> torch.Tensor:
    """The n x n skew-symmetric matrix S - S^T whose strictly-upper entries are ``a``
    (``torch.triu_indices(n, n, 1)`` order)."""
    iu = torch.triu_indices(n, n, 1, device=a.device)
    S = a.new_zeros(n, n).index_put((iu[0], iu[1]), a)
    return S - S.t()


def upper_of(A: torch.Tensor) -> torch.Tensor:
    """The strictly-upper entries of a square matrix (``torch.triu_indices`` order)."""
    n = A.shape[-1]
    iu = torch.triu_indices(n, n, 1, device=A.device)
    return A[iu[0], iu[1]]


def cayley(A: torch.Tensor) -> torch.Tensor:
    """(I + A)^-1 (I - A); orthogonal for skew-symmetric A (I + A is then always invertible)."""
    I = torch.eye(A.shape[-1], dtype=A.dtype, device=A.device)
    return torch.linalg.solve(I + A, I - A)


def scaled_cayley(A: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """(I + A)^-1 (I - A) D with D = diag(d). Its gradient is autograd's; it equals the scoRNN paper's
    closed form (Theorem 3.1; checked in the tests, also against finite differences): with
    G = dL/dW1 and V = (I + A)^-T G (D + W1^T), dL/dA = V^T - V (from dW1 = -(I + A)^-1 dA (D + W1))."""
    return cayley(A) * d


def spectral_radius(W: torch.Tensor) -> torch.Tensor:
    """max |eigenvalue| of a real square matrix (differentiable when W requires grad), computed on
    the CPU in float64 and returned on W's device in W's dtype (the reference also computes it on the
    host, with scipy's Schur form of the float32 matrix). (float32 eigenvalues of a non-normal W2 are
    off by ~1e-6 relative, enough to leave rho(W̄2) visibly above 1.)"""
    Wc = W.to("cpu", torch.float64)
    return torch.linalg.eigvals(Wc).abs().max().to(W.device, W.dtype)


def reference_skew_init(n: int, sign: float, generator=None) -> torch.Tensor:
    """The references' initial skew matrix (float64): 2x2 blocks with A[2k, 2k+1] =
    sign * sqrt((1 - cos t)/(1 + cos t)) = sign * tan(t / 2), t ~ U(0, pi/2), k < n // 2."""
    k = n // 2
    t = torch.rand(k, generator=generator, dtype=torch.float64) * (math.pi / 2)
    s = sign * torch.sqrt((1 - torch.cos(t)) / (1 + torch.cos(t)))
    A = torch.zeros(n, n, dtype=torch.float64)
    idx = torch.arange(k) * 2
    A[idx, idx + 1] = s
    return A - A.t()


def reference_d2_init(n: int, generator=None) -> torch.Tensor:
    """The ENRNN reference's diagonal scaling of W2's initialisation (float64): U(-1, 1) values in
    equal pairs (d1, d1, d2, d2, ...); for odd n one more U(-1, 1) value first."""
    d = (torch.rand(n // 2, generator=generator, dtype=torch.float64) * 2 - 1).repeat_interleave(2)
    if n % 2:
        d = torch.cat([torch.rand(1, generator=generator, dtype=torch.float64) * 2 - 1, d])
    return d


# ------------------------------------------------------------------------------------ params
@dataclass
class ScoRNNParams:
    hidden: int = setting(128, POSITIVE, "n1: the orthogonal (scaled Cayley) block")
    # number of -1 entries of D, at most hidden; None: hidden // 2 (the scoRNN references' choice)
    n_neg: Optional[int] = setting(None, NONNEGATIVE)
    lr_A: Optional[float] = setting(None, POSITIVE_REAL, "learning rate of the skew parameter A; None: the run's lr")
    impl: str = impl_setting()

    def validate(self):
        if self.n_neg is not None and self.n_neg > self.hidden:
            raise SeqbenchError(f"bad value {self.n_neg} for 'model.n_neg': "
                                f"expected an integer in [0, model.hidden = {self.hidden}]")


@dataclass
class ENRNNParams(ScoRNNParams):
    n2: int = setting(32, NONNEGATIVE, "the eigenvalue-normalised block")


# ENRNN_copying.py: n1 = 172 with 52 negative entries, n2 = 20, RMSprop 1e-3, A 1e-5.
# ENRNN_adding.py: n1 = 96 with 29 negative, n2 = 64, RMSprop 1e-4, A 1e-4 (the task's presets carry
# the optimiser and the base lr). fast: 128 state units (as many state numbers as a hidden-64 LSTM's
# h and c) split in the reference's proportions, about 30% of D negative; lr_A as the reference for
# the same optimiser (not tuned here).
ENRNN_PRESETS = {
    "tiny": {"model.hidden": 12, "model.n_neg": 4, "model.n2": 4},
    "fast": {"model.hidden": 112, "model.n_neg": 34, "model.n2": 16},
    "copy:fast": {"model.hidden": 112, "model.n_neg": 34, "model.n2": 16, "model.lr_A": 1e-5},
    "adding:fast": {"model.hidden": 80, "model.n_neg": 24, "model.n2": 48, "model.lr_A": 1e-4},
    "copy:paper": {"model.hidden": 172, "model.n_neg": 52, "model.n2": 20, "model.lr_A": 1e-5},
    "adding:paper": {"model.hidden": 96, "model.n_neg": 29, "model.n2": 64, "model.lr_A": 1e-4},
}

# scoRNN_copying.py: n = 190 with 95 negative, RMSprop 1e-3, A RMSprop 1e-4 (T = 1000 and 2000).
# scoRNN_adding.py: n = 170 with 85 negative, Adam 1e-3 (T = 200), A RMSprop 1e-4.
SCORNN_PRESETS = {
    "tiny": {"model.hidden": 12, "model.n_neg": 6},
    "fast": {"model.hidden": 128, "model.n_neg": 64},
    "copy:fast": {"model.hidden": 128, "model.n_neg": 64, "model.lr_A": 1e-4},
    # hidden 136: 9588 backbone parameters on adding, matched to enrnn's adding:fast (9688)
    "adding:fast": {"model.hidden": 136, "model.n_neg": 68, "model.lr_A": 1e-4},
    "copy:paper": {"model.hidden": 190, "model.n_neg": 95, "model.lr_A": 1e-4},
    "adding:paper": {"model.hidden": 170, "model.n_neg": 85, "model.lr_A": 1e-4},
}


# ------------------------------------------------------------------------------------ the cell
@register_model("enrnn")
class ENRNN(FusedLoop, RecurrentBackbone):
    """ENRNN: a modReLU RNN whose state is an orthogonal (scaled Cayley) block fed by an
    eigenvalue-normalised block.

    State h = [h1 (n1 = hidden), h2 (n2)], column vectors:
        z_t = U x_t + [W1 h1 + W3 h2 ; W̄2 h2]
        h_t = modReLU(z_t) = ReLU(|z_t| + b) * sign(z_t)
      W1 = (I + A)^-1 (I - A) D  scaled Cayley transform of a skew-symmetric A, orthogonal for every A;
           D = diag(+1 (n1 - n_neg times), -1 (n_neg times)), as the references' ``D1``.
      W̄2 = W2 / rho(W2)          eigenvalue normalisation (rho: the spectral radius), for good from the
           first forward in which rho(W2) > 1 on (``normalized_W2``); before that W̄2 = W2.
      W3                          couples h2 into the first block (the references' 'coupled' mode).
      b                           the modReLU bias. As in the references (``ENRNN.py``:
           ``relu(bias_add(abs(res), bias)) * sign(res)``, ``res = x U + recurrent``), z has no other bias.
    Every matrix is the transpose of the reference's row-vector one (``reset_parameters``)."""

    paper = "Helfrich & Ye, Eigenvalue Normalized Recurrent Neural Networks for Short Term Memory, AAAI 2020"
    paper_url = "https://arxiv.org/abs/1911.07964"
    reference = "https://github.com/KHelfrich1/ENRNN"  # ENRNN.py, ENRNN_copying.py, ENRNN_adding.py
    Params = ENRNNParams
    presets = ENRNN_PRESETS
    ref_sign = 1.0  # sign of the reference's initial skew entries (ENRNN.py: +, scoRNN.py: -)

    def __init__(self, d_input: int, p: ScoRNNParams):
        super().__init__()
        n1, n2 = p.hidden, getattr(p, "n2", 0)
        n_neg = p.n_neg if p.n_neg is not None else n1 // 2
        self.d_input, self.n1, self.n2, self.n_neg, self.lr_A = d_input, n1, n2, n_neg, p.lr_A
        self.impl = p.impl
        self.d_output = n1 + n2
        n = n1 + n2
        self.A = nn.Parameter(torch.zeros(n1 * (n1 - 1) // 2))  # strictly-upper entries of the skew A
        self.register_buffer("d1", torch.cat([torch.ones(n1 - n_neg), -torch.ones(n_neg)]), persistent=False)
        if n2 > 0:
            self.W2 = nn.Parameter(torch.zeros(n2, n2))
            self.W3 = nn.Parameter(torch.zeros(n1, n2))
            self.register_buffer("en_active", torch.zeros((), dtype=torch.bool))
        self.U = nn.Parameter(torch.zeros(n, d_input))
        self.bias = nn.Parameter(torch.zeros(n))  # the modReLU bias
        self.reset_parameters()

    def reset_parameters(self):
        """The references' initialisation, transposed to the column convention.

        The references compute ``h_t = f(x_t U_ref + h_{t-1} W_ref)`` (row vectors, TensorFlow); here
        U = U_ref^T, W3 = W3_ref^T, W2 = W2_ref^T, and [[W1, W3], [0, W̄2]] is the transpose of their
        [[W1_ref, 0], [W3_ref, W̄2_ref]]. With C(A) = (I + A)^-1 (I - A), C(A)^T = C(-A) and
        D C(A) D = C(DAD), W1_ref^T = (C(A_ref) D)^T = C(-D A_ref D) D: our A is -D A_ref D (entrywise a
        sign flip), so the initial W1 is exactly the transpose of the reference's, and since the
        optimisers are elementwise and odd, training follows the reference's trajectory entry by entry.
        A_ref: 2x2 diagonal blocks, A_ref[2k, 2k+1] = tan(theta_k / 2), theta_k ~ U(0, pi/2), positive in
        ``ENRNN.py``, negative in ``scoRNN.py`` (``reference_skew_init``). W2_ref = C(A2) D2 with A2
        built the same way (positive) and D2 = diag(d_1, d_1, d_2, d_2, ...), d_k ~ U(-1, 1), for odd n2
        one more entry first, as the reference (which shifts the pairs against A2's blocks). W3 Glorot
        uniform, U ~ U(-0.01, 0.01), b = 0."""
        n1, n2 = self.n1, self.n2
        with torch.no_grad():
            d = self.d1.double()
            A_ref = reference_skew_init(n1, self.ref_sign)
            self.A.copy_(upper_of(-d[:, None] * A_ref * d[None, :]))  # W1 = W1_ref^T
            if n2 > 0:
                W2_ref = cayley(reference_skew_init(n2, 1.0)) * reference_d2_init(n2)
                self.W2.copy_(W2_ref.t())
                nn.init.xavier_uniform_(self.W3)  # Glorot: bound sqrt(6 / (n1 + n2)), symmetric in the fans
                self.en_active.fill_(False)
            nn.init.uniform_(self.U, -0.01, 0.01)
            nn.init.zeros_(self.bias)

    # ---- the matrices of one forward
    def skew(self) -> torch.Tensor:
        """A = S - S^T, S strictly upper holding the parameter ``A`` (n1 (n1 - 1) / 2 entries, the true
        count). The reference keeps a full n1 x n1 variable and applies the skew-symmetric gradient
        V^T - V to it (its lower triangle mirrors the upper); our gradient of an upper entry (i < j) is
        exactly the reference's (V^T - V)_ij."""
        return skew_from_upper(self.A, self.n1)

    def normalized_W2(self) -> torch.Tensor:
        """W̄2: W2 / rho(W2) once the flag is set (it is set here, when rho(W2) > 1), else W2.

        The flag is the references' ``enrnn_begin``, here the buffer ``en_active`` (saved in
        checkpoints): once set, W2 is divided by its spectral radius at every later step, also when rho
        drops below 1 again, so every eigenvalue of W̄2 lies in the closed unit disc, the largest on the
        circle. At initialisation rho(W2) <= max|D2| < 1. Before the flag is set rho is computed without
        autograd (no gradient through unused eigenvectors). The gradient through rho is autograd's and
        equals the ENRNN paper's closed form (the reference's ``EN_Deriv``; checked in the tests): with
        lambda = alpha + i beta the eigenvalue of largest modulus sigma, W2 u = lambda u,
        v^H W2 = lambda v^H, P = conj(v) u^T / (v^H u) (d lambda = <P, dW2>, real inner product):
            d sigma / dW2 = (alpha Re P + beta Im P) / sigma,
            dL/dW2 = (G - <G, W̄2> (alpha Re P + beta Im P) / sigma) / sigma,   G = dL/dW̄2."""
        W2 = self.W2
        if not bool(self.en_active):
            with torch.no_grad():
                rho0 = spectral_radius(W2.detach())
            if not bool(rho0 > 1.0):
                return W2
            with torch.no_grad():
                self.en_active.fill_(True)
        return W2 / spectral_radius(W2)

    def recurrent_matrices(self):
        """(W1, W3, W̄2) for this forward (W3, W̄2 None when n2 = 0); autocast off, in the parameters'
        dtype. Once per forward (= optimiser step), never per time step: one n1 x n1 solve and one
        n2 x n2 eigen-decomposition; the time loop is one [B, n] x [n, n] product and a modReLU per step."""
        with no_autocast(self.A.device.type):
            W1 = scaled_cayley(self.skew(), self.d1)
            if self.n2 == 0:
                return W1, None, None
            return W1, self.W3, self.normalized_W2()

    @staticmethod
    def block_matrix(W1, W3=None, W2bar=None) -> torch.Tensor:
        """[[W1, W3], [0, W̄2]]: the recurrent matrix of the whole state, column convention."""
        if W3 is None:
            return W1
        zeros = W1.new_zeros(W2bar.shape[0], W1.shape[1])
        return torch.cat([torch.cat([W1, W3], 1), torch.cat([zeros, W2bar], 1)], 0)

    # ---- the recurrence
    def scan(self, x, state, W):
        """The time loop with a given recurrent matrix W [n, n] (column convention)."""
        Bsz, T, _ = x.shape
        n = self.d_output
        h = state if state is not None else x.new_zeros(Bsz, n, dtype=self.U.dtype)
        if T > 0 and self.use_fused(x, h):  # the same loop in C++ (seqbench/fused.py)
            return fused.enrnn_loop(F.linear(x, self.U), h, W, self.bias)
        xu = F.linear(x, self.U).unbind(1)  # the input's part for all steps at once
        Wt, b = W.t(), self.bias
        ys = []
        for k in range(T):
            h = modrelu(torch.addmm(xu[k], h, Wt), b)
            ys.append(h)
        y = torch.stack(ys, dim=1) if ys else x.new_zeros(Bsz, 0, n)
        return y, h

    def forward(self, x, state=None):
        return self.scan(x, state, self.block_matrix(*self.recurrent_matrices()))

    # ---- runner hooks
    def optimizer_groups(self, lr: float) -> list:
        """A in its own group with ``lr_A`` (the run's lr when None); W2, W3, U and b use the run's lr, as in
        the references (ENRNN copying: RMSprop 1e-3, A 1e-5; adding: RMSprop 1e-4, A 1e-4; scoRNN copying:
        RMSprop 1e-3, A RMSprop 1e-4; adding: Adam 1e-3, A RMSprop 1e-4). The optimiser type is the run's
        for every group (scoRNN adding's RMSprop-for-A is not reproduced)."""
        return [{"params": [self.A], "lr": self.lr_A if self.lr_A is not None else lr}]

    def flops_per_step(self) -> int:
        """The model's count (multiply-add = 2, pointwise = 1), though the implementation multiplies by
        the full block matrix (its n2 x n1 zero block included: one GEMM per step instead of three). The
        per-forward n1^3 solve and n2^3 eigen-decomposition (once per batch) are not counted."""
        n1, n2, d = self.n1, self.n2, self.d_input
        n = n1 + n2
        f = 2 * n * d  # U x
        f += 2 * (n1 * n1 + n1 * n2 + n2 * n2)  # W1 h1, W3 h2, W̄2 h2
        f += (n1 if n2 else 0) + n  # W1 h1 + W3 h2; + U x
        f += 5 * n  # modReLU: |z|, + b, ReLU, sign, product
        return f


@register_model("scornn")
class ScoRNN(ENRNN):
    """scoRNN: the ENRNN cell with n2 = 0, initialised as scoRNN.py (negative skew entries)."""

    paper = "Helfrich, Willmott & Ye, Orthogonal Recurrent Neural Networks with Scaled Cayley Transform, ICML 2018"
    paper_url = "https://arxiv.org/abs/1707.09520"
    reference = "https://github.com/SpartinStuff/scoRNN"  # scoRNN.py, scoRNN_copying.py, scoRNN_adding.py
    Params = ScoRNNParams
    presets = SCORNN_PRESETS
    ref_sign = -1.0


# ------------------------------------------------------------------------------------ baseline
@register_model("rnn")
class TanhRNN(TorchRNN):
    """Elman RNN, h_t = tanh(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh) (torch's nn.RNN), stacked."""

    paper = "Elman, Finding Structure in Time, Cognitive Science 1990"
    reference = "https://pytorch.org/docs/stable/generated/torch.nn.RNN.html"  # the module it runs
    Params = RNNParams
    rnn_cls = nn.RNN
    gates = 1
    elementwise_per_unit = 1  # tanh
