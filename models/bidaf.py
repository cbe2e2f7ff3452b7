"""BiDAF: Bidirectional Attention Flow (Seo, Kembhavi, Farhadi & Hajishirzi, ICLR 2017), as the ISS
paper's reference implements it (wenwei202/iss-rnns, ``bidaf/basic/model.py``, a fork of
allenai/bi-att-flow), and ISS on its LSTMs (Wen et al., ICLR 2018, section 4.3). Written from the
papers and those codes (and allenai/allennlp-models ``rc/models/bidaf.py``); nothing is copied.
Registered: ``bidaf`` (a QA model: ``seqbench/qa.py``'s ``QAModel`` holds the embedding tables, which
depend on the task's vocabularies).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from seqbench import iss
from seqbench.config import NONNEGATIVE, NONNEGATIVE_REAL, POSITIVE, PROBABILITY, int_list, setting
from seqbench.errors import SeqbenchError
from seqbench.model import LIBRARY
from seqbench.registry import QA, register_model

NEG = -1e30  # the reference's VERY_NEGATIVE_NUMBER (exp_mask)
GATES = 4
LSTM_POINTWISE = 9  # per unit and step: 3 sigmoid, 2 tanh, 3 products, 1 sum (models/rnn.py's count)
DIRS = ("g0.fw", "g0.bw", "g1.fw", "g1.bw", "g2.fw", "g2.bw")


@dataclass
class BiDAFParams:
    hidden: int = setting(100, POSITIVE, "d: every LSTM's width per direction")
    # per-direction widths of g0.fw, g0.bw, g1.fw, g1.bw, g2.fw, g2.bw (a pruned model's); empty: hidden
    sizes: str = setting("", int_list("widths", "84,90,38,46,34,21"))
    char_dim: int = setting(8, POSITIVE, "character vector size (the task's char table has this width)")
    char_filters: int = setting(100, POSITIVE, "char CNN output size")
    char_width: int = setting(5, POSITIVE, "char CNN filter width")
    highway: int = setting(2, NONNEGATIVE, "highway layers")
    dropout: float = setting(0.2, PROBABILITY)
    lam: float = setting(0.0, NONNEGATIVE_REAL, "ISS group Lasso on g0, g1, g2 (0: dense BiDAF)")
    threshold: float = setting(0.0, NONNEGATIVE_REAL, "after every step zero weights with |w| < threshold")
    prune: bool = True  # pruned() shrinks g0, g1, g2 after training

    def widths(self) -> list[int]:
        if not self.sizes.strip():
            return [self.hidden] * 6
        w = [int(v) for v in self.sizes.split(",")]
        if len(w) != 6:
            raise SeqbenchError(f"bad value {self.sizes!r} for 'model.sizes': expected 6 widths "
                                f"({', '.join(DIRS)}) or empty")
        return w

    def validate(self):
        self.widths()


def _glorot_(w: torch.Tensor, fan_in: int, fan_out: int) -> None:
    lim = math.sqrt(6.0 / (fan_in + fan_out))
    nn.init.uniform_(w, -lim, lim)


def _lstm(d_in: int, h: int) -> nn.LSTM:
    """TF's BasicLSTMCell with forget_bias 1.0 as a torch LSTM: the forget gate's bias_hh starts at 1
    (trainable here, a constant plus a zero-started bias there: the same at the start and in every
    gradient); weights glorot-uniform over TF's joint [in + h, 4h] kernel, biases 0."""
    m = nn.LSTM(d_in, h, batch_first=True)
    with torch.no_grad():  # TF BasicLSTMCell: glorot over the joint [in + h, 4h] kernel, forget bias 1
        _glorot_(m.weight_ih_l0, d_in + h, GATES * h)
        _glorot_(m.weight_hh_l0, d_in + h, GATES * h)
        m.bias_ih_l0.zero_()
        m.bias_hh_l0.zero_()
        m.bias_hh_l0[h:2 * h].fill_(1.0)
    return m


def _linear(d_in: int, d_out: int) -> nn.Linear:
    """Glorot-uniform weights (TF's default, also the char CNN's), bias 0."""
    m = nn.Linear(d_in, d_out)
    with torch.no_grad():
        _glorot_(m.weight, d_in, d_out)
        m.bias.zero_()
    return m


def _lstm_flops(d_in: int, h: int, steps: int) -> int:
    return steps * (2 * GATES * h * (d_in + h) + 2 * GATES * h + LSTM_POINTWISE * h)


class BiLSTM(nn.Module):
    """A forward and a backward one-layer LSTM of their own widths (after ISS pruning the two directions
    keep different numbers of units; nn.LSTM(bidirectional=True) needs equal ones); outputs [fw ; bw]. The
    backward LSTM reads each sequence reversed within its length (``lengths``), so in both directions a
    padded position comes after every valid one and never reaches a valid output; padded outputs are
    whatever the cells make of the padding, and the model masks them (attention, logits, the softmax that
    weighs M for a). Dense runs, not packed sequences: on a CPU torch's packed LSTM takes a per-step path
    4-5 times slower (measured here, [60, 359] batches)."""

    def __init__(self, d_in: int, h_fw: int, h_bw: int):
        super().__init__()
        self.d_in = d_in
        self.fw, self.bw = _lstm(d_in, h_fw), _lstm(d_in, h_bw)

    @property
    def d_out(self) -> int:
        return self.fw.hidden_size + self.bw.hidden_size

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None) -> torch.Tensor:
        T = x.shape[1]
        if lengths is None or bool((lengths == T).all()):
            return torch.cat([self.fw(x)[0], self.bw(x.flip(1))[0].flip(1)], -1)
        t = torch.arange(T, device=x.device).unsqueeze(0)
        L = lengths.unsqueeze(1)
        rev = torch.where(t < L, L - 1 - t, t)  # reversal within each length (its own inverse)
        x_rev = x.gather(1, rev.unsqueeze(2).expand(-1, -1, x.shape[2]))
        y_bw = self.bw(x_rev)[0]
        return torch.cat([self.fw(x)[0], y_bw.gather(1, rev.unsqueeze(2).expand(-1, -1, y_bw.shape[2]))], -1)

    def flops(self, steps: int) -> int:
        return _lstm_flops(self.d_in, self.fw.hidden_size, steps) + _lstm_flops(self.d_in, self.bw.hidden_size, steps)


class Highway(nn.Module):
    def __init__(self, d: int):
        super().__init__()
        self.t, self.g = _linear(d, d), _linear(d, d)

    def forward(self, x):
        g = torch.sigmoid(self.g(x))
        return g * torch.relu(self.t(x)) + (1 - g) * x


@register_model("bidaf")
class BiDAF(nn.Module):
    """BiDAF over the task's word and 8-d character vectors, giving start and end logits, with optional
    ISS group Lasso on its modeling and output biLSTMs (g0, g1, g2) and pruning of their zero units.

    With ``hidden`` = d (100 in the reference):
    1. char CNN: dropout on the char vectors, ``char_filters`` (100) filters of width ``char_width`` (5)
       over each word's characters (no padding), ReLU, max over positions; shared by context and question;
    2. [char CNN ; word vector] through ``highway`` (2) highway layers, t = relu(W_t x), g = sigmoid(W_g x),
       g t + (1 - g) x, shared;
    3. contextual biLSTM (d per direction) shared by context (h) and question (u). Dropout on its input for
       the question pass only: the reference wraps the cells in DropoutWrapper for the question and runs
       the context through the bare cells (a quirk of both reference codes, kept);
    4. attention flow: S[t, j] = w . [h_t; u_j; h_t * u_j] + b (masked); c2q u~_t = sum_j softmax_j(S) u_j;
       q2c h~ = sum_t softmax_t(max_j S[t, j]) h_t; G = [h; u~; h * u~; h * h~] (8d);
    5. modeling biLSTMs g0 (G -> 2d) and g1 (-> M, 2d);
    6. output: start logits = w1 . [M; G] + b1 (the reference's order); a = sum_t softmax(start)_t M_t;
       g2 biLSTM over [G; M; a; M * a] -> M2; end logits = w2 . [M2; G] + b2. Both masked (-1e30).
    ``dropout`` (0.2: the reference's keep 0.8) on the char vectors, on the inputs of the LSTMs (u1's
    question pass, g0, g1, g2) and of the two logit layers; a fresh mask per step, as TF's DropoutWrapper.
    None on the highway layers, the attention or the context's contextual pass. Initialisation: ``_lstm``,
    ``_linear``.

    Parameters without embeddings at d = 100 (char CNN 4,100, highway 160,800, contextual LSTM 241,600,
    attention 601, g0 721,600, g1 241,600, g2 1,201,600, logits 2 x 1,001): 2,573,903 (torch's LSTMs carry
    two bias vectors); 2,570,703 with TF's one. The ISS paper's "a compact model with only 2.69M weights"
    is iss-rnns' ``get_num_params()``, every trainable variable, which includes the 8-d char table and the
    trainable word rows (words without a GloVe vector; GloVe's fixed vectors are not variables): ~119k such
    rows is our reading of the difference, unchecked against the train-v1.1 vocabulary."""

    implementation = LIBRARY  # its LSTMs are nn.LSTM calls; the rest convolutions and matrix products

    paper = "Seo, Kembhavi, Farhadi & Hajishirzi, Bidirectional Attention Flow for Machine Comprehension, ICLR 2017"
    paper_url = "https://arxiv.org/abs/1611.01603"
    # bidaf/basic/model.py, the ISS paper's BiDAF (section 4.3): a fork of allenai/bi-att-flow
    reference = "https://github.com/wenwei202/iss-rnns"
    kinds = frozenset({QA})
    Params = BiDAFParams
    describe_structure = staticmethod(iss.describe)
    # The reference thresholds at 4e-4 in its dense training too (its flags always register the
    # LSTM and attention variables); ISS fine-tuning (its README command, from the dense checkpoint:
    # --init-from) adds structure_wd 0.001 = lam (no conversion: see regularization) and keep 0.9.
    # fast: d = 32, 6 epochs of the dev-holdout split (822 steps; tasks/squad.py). fast-iss's lam is
    # scaled, not tuned: under Adam the Lasso moves each weight of a group by about
    # lr * lam / sqrt(group size) / sqrt(v) per step, so over a run the drift goes as
    # lam * steps / sqrt(size); the reference's 0.001 x 10k steps / sqrt(4800) at d = 100 is matched
    # at d = 32 (g0: 1,536 weights per component) and 822 steps by lam ~ 0.0067: 0.005 (and 0.01).
    presets = {
        "tiny": {"model.hidden": 4, "model.char_dim": 3, "model.char_filters": 4, "model.char_width": 3},
        "fast": {"model.hidden": 32, "model.threshold": 4e-4},
        "paper": {"model.hidden": 100, "model.threshold": 4e-4},
        "fast-iss": {"model.hidden": 32, "model.threshold": 4e-4, "model.lam": 0.005, "model.dropout": 0.1},
        "paper-iss": {"model.hidden": 100, "model.threshold": 4e-4, "model.lam": 0.001, "model.dropout": 0.1},
    }
    pruned_from: list[int] | None = None  # set on a model made by pruned(): the trained widths

    def __init__(self, d_input: int, p: BiDAFParams):
        super().__init__()
        self.p, self.d_word, self.char_dim = p, d_input, p.char_dim
        self.init_args = (d_input, p)
        d = p.hidden
        self.sizes = p.widths()
        k0f, k0b, k1f, k1b, k2f, k2b = self.sizes
        self.char_conv = nn.Conv1d(p.char_dim, p.char_filters, p.char_width)
        with torch.no_grad():
            _glorot_(self.char_conv.weight, p.char_width * p.char_dim, p.char_width * p.char_filters)
            self.char_conv.bias.zero_()
        dx = p.char_filters + d_input
        self.highway = nn.ModuleList(Highway(dx) for _ in range(p.highway))
        self.ctx = BiLSTM(dx, d, d)
        self.att = _linear(6 * d, 1)  # w . [h; u; h * u] + b
        self.g0 = BiLSTM(8 * d, k0f, k0b)
        self.g1 = BiLSTM(k0f + k0b, k1f, k1b)
        self.logits1 = _linear((k1f + k1b) + 8 * d, 1)  # over [M; G]
        self.g2 = BiLSTM(8 * d + 3 * (k1f + k1b), k2f, k2b)  # over [G; M; a; M * a]
        self.logits2 = _linear((k2f + k2b) + 8 * d, 1)  # over [M2; G]
        self.drop = nn.Dropout(p.dropout)

    # --------------------------------------------------------------------------------- forward
    def embed(self, w: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """Words [B, T, dw] and chars [B, T, W, dc] -> highway([char CNN ; words]) [B, T, filters + dw]."""
        B, T, W, dc = c.shape
        k = self.p.char_width
        c = self.drop(c).reshape(B * T, W, dc).transpose(1, 2)
        if W < k:  # words shorter than the filter: pad with zero vectors (so a conv position exists)
            c = F.pad(c, (0, k - W))
        ch = torch.relu(self.char_conv(c)).amax(2).reshape(B, T, -1)
        x = torch.cat([ch, w], -1)
        for layer in self.highway:
            x = layer(x)
        return x

    def forward(self, cw, cc, qw, qc, c_mask, q_mask):
        """Context/question word vectors [B, T, dw], char vectors [B, T, W, dc] and masks -> [B, Tc, 2]."""
        c_len, q_len = c_mask.sum(1), q_mask.sum(1)
        h = self.ctx(self.embed(cw, cc), c_len)  # [B, Tc, 2d]
        u = self.ctx(self.drop(self.embed(qw, qc)), q_len)  # [B, Tq, 2d]
        G = self.attention(h, u, c_mask, q_mask)
        M = self.g1(self.drop(self.g0(self.drop(G), c_len)), c_len)
        start = self.logits1(self.drop(torch.cat([M, G], -1))).squeeze(-1).masked_fill(~c_mask, NEG)
        p1 = torch.softmax(start.float(), -1).to(M.dtype)
        a = torch.einsum("bt,btk->bk", p1, M).unsqueeze(1).expand_as(M)
        M2 = self.g2(self.drop(torch.cat([G, M, a, M * a], -1)), c_len)
        end = self.logits2(self.drop(torch.cat([M2, G], -1))).squeeze(-1).masked_fill(~c_mask, NEG)
        return torch.stack([start, end], -1)

    def attention(self, h, u, c_mask, q_mask):
        d2 = h.shape[-1]
        w = self.att.weight[0]
        S = ((h @ w[:d2]).unsqueeze(2) + (u @ w[d2:2 * d2]).unsqueeze(1)
             + (h * w[2 * d2:]) @ u.transpose(1, 2) + self.att.bias)  # [B, Tc, Tq]
        S = S.masked_fill(~(c_mask.unsqueeze(2) & q_mask.unsqueeze(1)), NEG)
        u_att = torch.softmax(S.float(), 2).to(u.dtype) @ u  # c2q
        b = torch.softmax(S.amax(2).float(), 1).to(h.dtype)  # q2c over the context's positions
        h_att = torch.einsum("bt,btk->bk", b, h).unsqueeze(1).expand_as(h)
        return torch.cat([h, u_att, h * u_att, h * h_att], -1)

    def flops(self, Tc: int, Tq: int, W: int) -> int:
        """FLOPs of one sample with a context of Tc tokens, a question of Tq, words of W characters
        (a multiply-add 2, a pointwise op 1; softmaxes 3 per element; the padding of W to the filter width counted)."""
        p, words = self.p, Tc + Tq
        pos = max(W, p.char_width) - p.char_width + 1
        f = words * pos * p.char_filters * (2 * p.char_width * p.char_dim + 2)  # conv + bias + relu
        dx = p.char_filters + self.d_word
        f += words * len(self.highway) * (2 * (2 * dx * dx + dx) + 5 * dx)
        f += self.ctx.flops(Tc) + self.ctx.flops(Tq)
        d2 = self.ctx.d_out
        f += 2 * Tc * d2 + 2 * Tq * d2 + Tc * d2 + 2 * Tc * Tq * d2 + 2 * Tc * Tq  # S
        f += 3 * Tc * Tq + 2 * Tc * Tq * d2 + Tc * Tq + 3 * Tc + 2 * Tc * d2 + 2 * Tc * d2  # c2q, q2c, G's products
        K1 = self.g1.d_out
        f += self.g0.flops(Tc) + self.g1.flops(Tc) + self.g2.flops(Tc)
        f += Tc * (2 * self.logits1.in_features + 1) + 3 * Tc + 2 * Tc * K1 + Tc * K1  # start, softmax, a, M * a
        f += Tc * (2 * self.logits2.in_features + 1)
        return f

    # -------------------------------------------------------------------------------------- ISS
    def iss_groups(self, head=None) -> list[iss.Group]:
        """The 6 groups of g0, g1, g2's directions (the reference's groups_hidden100.json; the contextual
        LSTM is not regularised, as the reference); ``head`` is unused (the QA wrapper has none: BiDAF's
        output layers are its own). Component k of a direction is its gate rows k, H+k, 2H+k, 3H+k of
        weight_ih and weight_hh, its column k of weight_hh (biases carried) and every weight that reads
        its output:
            g0.fw / g0.bw: their columns of g1.fw's and g1.bw's weight_ih;
            g1.fw / g1.bw: their columns of the start logits (the M part) and of g2.fw's and g2.bw's
                weight_ih in the M, a and M * a parts. The reference's groups lack the a columns: a unit
                whose group is zero there still feeds a_k = sum_t p_t M_t[k] (M_t[k] is its bias-driven
                output) into g2, so removing it changes the output. With the a columns every removed unit
                is read by nothing and pruned = masked holds exactly (tested);
            g2.fw / g2.bw: their columns of the end logits (the M2 part)."""
        G = 8 * self.p.hidden
        k0f, k0b, k1f, k1b, k2f, k2b = (int(v) for v in self.sizes)
        K1 = k1f + k1b
        groups = []
        for name, lstm, reads in (
                ("g0.fw", self.g0.fw, [("g1.fw", 0), ("g1.bw", 0)]),
                ("g0.bw", self.g0.bw, [("g1.fw", k0f), ("g1.bw", k0f)]),
                ("g1.fw", self.g1.fw,
                 [("logits1", 0)] + [(g, G + o) for g in ("g2.fw", "g2.bw") for o in (0, K1, 2 * K1)]),
                ("g1.bw", self.g1.bw,
                 [("logits1", k1f)] + [(g, G + k1f + o) for g in ("g2.fw", "g2.bw") for o in (0, K1, 2 * K1)]),
                ("g2.fw", self.g2.fw, [("logits2", 0)]),
                ("g2.bw", self.g2.bw, [("logits2", k2f)])):
            g = iss.lstm_unit_slices(iss.Group(name, lstm.hidden_size), f"{name}.", lstm)
            for reader, offset in reads:
                mod = self.get_submodule(reader)
                w = mod.weight if isinstance(mod, nn.Linear) else mod.weight_ih_l0
                name_ = f"{reader}.{'weight' if isinstance(mod, nn.Linear) else 'weight_ih_l0'}"
                g.add(name_, w, 1, offset=offset, reads=True)
            groups.append(g)
        return groups

    def coordinate(self, head=None) -> list[int]:
        """The reference's structure coordinator before the test (``iss.coordinate_``): per group, the units
        read by nobody whose incoming weights it zeroed."""
        return iss.coordinate_(self.iss_groups())

    def regularization(self, head=None) -> torch.Tensor:
        """Group Lasso ``lam`` * sum over the 6 groups of sqrt(||w_k||^2 + 1e-8), added to the task loss. The
        reference adds structure_wd * that to the sum of the start and end cross-entropies, each a mean over
        its batch (towers averaged): our loss is the same sum, so lam = structure_wd needs no conversion
        (0.001 in its README command; the PTB runs' lam is divided by the summed steps because that loss is
        a sum over them, see models/iss.py)."""
        if self.p.lam == 0:
            return self.att.weight.new_zeros(())
        return iss.group_lasso(self.iss_groups(), self.p.lam)

    def thresholded(self) -> list[torch.Tensor]:
        """The tensors the reference zeroes below its threshold (its prepro/ and main/ scopes): the
        contextual LSTM, the attention weights, g0, g1, g2 and the logit layers (not the char CNN, the
        highway layers or the embeddings)."""
        return [t for m in (self.ctx, self.att, self.g0, self.g1, self.logits1, self.g2, self.logits2)
                for t in m.parameters()]

    def after_step(self, head=None) -> None:
        """Zero entries below ``threshold`` after every step (the reference's zero_threshold 4e-4, also
        during its dense training)."""
        iss.threshold_(self.thresholded(), self.p.threshold)

    def structure(self, head=None) -> dict:
        groups = self.iss_groups()
        rep = iss.report(groups, self.p.lam, self.p.threshold, self.pruned_from)
        named = dict(self.named_parameters())
        rep["params"] = sum(t.numel() for t in named.values())
        rep["params_pruned"] = iss.numel_after(groups, iss.kept_components(groups), named)
        rep["kept"] = dict(zip(rep["groups"], rep["sizes_pruned"]))
        return rep

    @torch.no_grad()
    def pruned(self, head=None):
        """A BiDAF without the all-zero components of g0, g1, g2 (``sizes`` = the kept widths), or
        None when nothing can be removed (or prune is off). Returns (backbone, head) as every ISS
        model; the head stays None."""
        if not self.p.prune:
            return None
        groups = self.iss_groups()
        kept = iss.kept_components(groups)
        if all(int(k.numel()) == g.size for k, g in zip(kept, groups)):
            return None
        ref = self.att.weight
        new = type(self)(self.d_word, dataclasses.replace(self.p, sizes=",".join(str(int(k.numel())) for k in kept)))
        new = new.to(device=ref.device, dtype=ref.dtype)
        iss.load_pruned(new, dict(self.named_parameters()), iss.pruned_tensors(groups, kept))
        new.pruned_from = list(self.pruned_from or self.sizes)
        new.train(self.training)
        return new, head
