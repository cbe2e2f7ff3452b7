"""ISS-LSTM: stacked LSTMs that learn Intrinsic Sparse Structures (Wen et al., "Learning Intrinsic
Sparse Structures within Long Short-Term Memory", ICLR 2018). Written from the paper and checked
against the reference code (wenwei202/iss-rnns, TensorFlow: ``ptb/ptb_word_lm.py`` and
``ptb/ptb_word_lm_heter.py``, ``ptb/structure_grouplasso.json``); no reference code is copied.
Registered: ``iss-lstm``. ``iss_groups`` is the one place that says which entries make a component; the
regulariser, the thresholding, the zero check, ``structure`` and ``pruned`` run the shared machinery
of ``seqbench/iss.py`` (also ``rhn``'s and ``bidaf``'s) on it.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
import torch
import torch.nn as nn

from seqbench import iss
from seqbench.config import NONNEGATIVE_REAL, POSITIVE, PROBABILITY, int_list, setting
from seqbench.errors import SeqbenchError
from seqbench.model import LIBRARY, RecurrentBackbone
from seqbench.registry import register_model

GATES = 4
EPS = iss.EPS  # inside the group norm's square root, as the reference's add_structure_grouplasso
ELEMENTWISE_PER_UNIT = 9  # as models/rnn.py's LSTM: 3 sigmoid + 2 tanh + 3 products + 1 sum

# lam = paper's global_decay / num_steps (see ISSLSTM.regularization): the paper's large PTB model,
# structure_grouplasso.json (0.00245) over the 35 steps of its LargeConfig.
PAPER_LAM = 0.00245 / 35
# `--set model.lam=<value>` turns ISS on for any preset (lam 0 = a plain stacked LSTM baseline);
# only ptb:paper (the paper's ISS run) and ptb:fast (a small ISS run) set it.
_ZAREMBA_SMALL = {"model.sizes": "200,200", "model.init_range": 0.1}
ISS_PRESETS = {
    "tiny": {"model.hidden": 16},
    "fast": {"model.hidden": 64},
    "paper": {"model.hidden": 512},  # generic tasks: as the lstm baseline's paper preset
    "ptb:tiny": {"model.sizes": "16,16"},
    # Zaremba et al.'s three PTB models (the reference's Small/Medium/LargeConfig): dense baselines.
    "ptb:small": _ZAREMBA_SMALL,
    "ptb:medium": {"model.sizes": "650,650", "model.dropout": 0.5, "model.init_range": 0.05},
    "ptb:large": {"model.sizes": "1500,1500", "model.dropout": 0.65, "model.init_range": 0.04},
    # The paper's ISS run (SparseLargeConfig with structure_grouplasso.json): keep_prob 0.6,
    # init 0.04, global_decay 0.00245 over num_steps 35, zero threshold 1e-4.
    "ptb:paper": {"model.sizes": "1500,1500", "model.dropout": 0.4,
                  "model.init_range": 0.04, "model.lam": PAPER_LAM, "model.threshold": 1e-4},
    # Zaremba small with ISS: the paper's global_decay carried over to the small model's 20 steps
    # (0.00245 / 20: the paper's objective per token), threshold 1e-4. Chosen by that scaling, not
    # tuned on PTB here. Plain SGD moves a group's norm by at most lr * lam per step under the
    # Lasso: with the reference's step size (lr 1 on the summed cost = lr 20 on the mean loss)
    # ~14k steps of 6 epochs allow ~34, far above the initial group norms (~3 in layer 0, ~6 in
    # layer 1 with its head columns at init 0.1); at lr 1 on the mean loss only ~1.7.
    "ptb:fast": {**_ZAREMBA_SMALL, "model.lam": 0.00245 / 20, "model.threshold": 1e-4},
}


@dataclass
class ISSParams:
    hidden: int = setting(128, POSITIVE, "every layer's width (unless sizes is given)")
    layers: int = setting(1, POSITIVE)
    # comma-separated per-layer widths, e.g. "373,315"; overrides hidden and layers
    sizes: str = setting("", int_list("widths", "373,315"))
    dropout: float = setting(0.0, PROBABILITY, "between stacked layers (the task drops the input and the output)")
    init_range: float = setting(0.0, NONNEGATIVE_REAL, "0: torch's init; r > 0: weights U(-r, r), biases 0")
    lam: float = setting(0.0, NONNEGATIVE_REAL, "group Lasso strength, per token of a mean loss (0: plain LSTM)")
    threshold: float = setting(0.0, NONNEGATIVE_REAL, "after every step, zero weights with |w| < threshold (0: off)")
    prune: bool = True  # pruned() shrinks the model after training


def layer_sizes(p: ISSParams) -> list[int]:
    if p.sizes.strip():
        try:
            sizes = [int(s) for s in p.sizes.split(",")]
        except ValueError:
            raise SeqbenchError(
                f"bad model.sizes {p.sizes!r}: expected comma-separated integers, e.g. 373,315") from None
    else:
        sizes = [p.hidden] * p.layers
    if not sizes or any(s < 1 for s in sizes):
        raise SeqbenchError(f"iss-lstm needs at least one layer of width >= 1, got sizes {sizes}")
    return sizes


def _lstm_params(m: nn.LSTM):
    return m.weight_ih_l0, m.weight_hh_l0, m.bias_ih_l0, m.bias_hh_l0


@register_model("iss-lstm")
class ISSLSTM(RecurrentBackbone):
    """Stacked LSTMs trained with the ISS group Lasso and zero threshold, then pruned to the units left.

    A stack of single-layer ``nn.LSTM(batch_first=True)`` modules (cuDNN on a GPU) whose widths may differ
    (``sizes="373,315"``: the paper's "direct design" baseline, ``ptb_word_lm_heter.py``). State: a tuple
    with one ``(h, c)`` pair per layer, each ``[1, B, H_l]`` as nn.LSTM returns it. ``dropout`` acts between
    stacked layers only (a non-recurrent connection, Zaremba et al.); Zaremba's other two dropouts, on the
    embedded input and on the last layer's output, belong to the task's wrapper (``tasks/ptb.py``:
    ``task.dropout`` on the embedding and before the head), so the ptb presets set ``model.dropout`` to the
    task's rate: together they drop every non-recurrent connection once, as the reference's input dropout
    plus ``DropoutWrapper(output_keep_prob)`` per cell. The head and the embedding are initialised by the
    task."""

    paper = "Wen et al., Learning Intrinsic Sparse Structures within Long Short-Term Memory, ICLR 2018"
    implementation = LIBRARY  # each layer one nn.LSTM call
    paper_url = "https://arxiv.org/abs/1709.05027"
    reference = "https://github.com/wenwei202/iss-rnns"  # ptb/ptb_word_lm.py, ptb_word_lm_heter.py (TensorFlow)
    Params = ISSParams
    presets = ISS_PRESETS
    state_batch_dim = 1  # every (h, c) is [1, B, H_l]
    pruned_from: list[int] | None = None  # set on a model made by pruned(): the trained widths
    describe_structure = staticmethod(iss.describe)

    def __init__(self, d_input: int, p: ISSParams):
        super().__init__()
        self.p, self.init_args = p, (d_input, p)
        self.d_input = d_input
        self.sizes = layer_sizes(p)
        self.d_output = self.sizes[-1]
        ins = [d_input] + self.sizes[:-1]
        self.lstms = nn.ModuleList(nn.LSTM(d, h, batch_first=True) for d, h in zip(ins, self.sizes))
        self.drop = nn.Dropout(p.dropout) if p.dropout > 0 else None
        # init_range r > 0: every LSTM weight U(-r, r) (Zaremba et al. and the reference:
        # tf.random_uniform_initializer(-init_scale, init_scale)), biases 0 as the reference's TF
        # BasicLSTMCell creates them (TF 1.x _linear: a constant bias_start=0.0 initializer, which the
        # scope's uniform initializer does not override; forget_bias=0.0 in ptb_word_lm.py). Zaremba's Lua
        # code draws the biases U(-r, r) too. r = 0 keeps torch's init.
        if p.init_range > 0:
            with torch.no_grad():
                for m in self.lstms:
                    w_ih, w_hh, b_ih, b_hh = _lstm_params(m)
                    w_ih.uniform_(-p.init_range, p.init_range)
                    w_hh.uniform_(-p.init_range, p.init_range)
                    b_ih.zero_()
                    b_hh.zero_()

    # ------------------------------------------------------------------ forward
    def forward(self, x, state=None):
        out = []
        for i, m in enumerate(self.lstms):
            if i > 0 and self.drop is not None:
                x = self.drop(x)
            x, hc = m(x, None if state is None else tuple(state[i]))
            out.append(hc)
        return x, tuple(out)

    def flops_per_step(self) -> int:
        total, d = 0, self.d_input
        for h in self.sizes:
            # gate pre-activations: 4h rows over [x, h]; two bias vectors; the cell's pointwise work
            total += 2 * GATES * h * (d + h) + 2 * GATES * h + ELEMENTWISE_PER_UNIT * h
            d = h
        return total

    # ------------------------------------------------------------ ISS groups
    def iss_groups(self, head: nn.Linear | None = None) -> list[iss.Group]:
        """One group per layer: component k (torch's gate layout i, f, g, o) is every weight that writes or
        reads hidden unit k: rows k, H+k, 2H+k, 3H+k of weight_ih and weight_hh (its four gates), column k
        of weight_hh (h_k fed back) (``iss.lstm_unit_slices``), and column k of the next layer's weight_ih,
        or of the head (e.g. a language model's softmax) for the last layer. When all are zero, h_k is read
        by nobody and unit k can be removed exactly, whatever its biases (its gates still run on them, but
        its output meets only zero weights). Its bias rows travel with it but are in neither the group Lasso
        nor the zero check, as the reference: ``add_structure_grouplasso`` takes the cell's ``weights``
        (TF's BasicLSTMCell keeps ``biases`` apart) and the coupled ``softmax_w`` / next cell's ``weights``
        only, and its removability count (``plot_tensor``: 6 conditions = the h-rows, the coupled rows, the
        4 gate columns) looks only at weights. The head's bias belongs to no group. With a head tied to the
        embedding (``task.tie``) the last layer's groups reach into the embedding matrix. Without a head the
        last layer's group is incomplete (none of it removable)."""
        groups = []
        for i, (m, h) in enumerate(zip(self.lstms, self.sizes)):
            g = iss.lstm_unit_slices(iss.Group(f"lstms.{i}", h), f"lstms.{i}.", m)
            if i + 1 < len(self.lstms):
                g.add(f"lstms.{i + 1}.weight_ih_l0", self.lstms[i + 1].weight_ih_l0, 1, reads=True)
            elif head is not None:
                if head.in_features != h:
                    raise ValueError(f"head reads {head.in_features} features, the last layer has {h}")
                g.add("head.weight", head.weight, 1, reads=True)
            else:
                g.complete = False
            groups.append(g)
        return groups

    def iss_slices(self, head: nn.Linear | None = None) -> list[list[iss.Slice]]:
        """Per layer, the slices of its group (``iss_groups``)."""
        return [g.slices for g in self.iss_groups(head)]

    def group_sq_norms(self, head: nn.Linear | None = None) -> list[torch.Tensor]:
        """Per layer, the squared L2 norm of every component's group: a [H_l] tensor."""
        return iss.sq_norms(self.iss_groups(head))

    def coordinate(self, head=None) -> list[int]:
        """The reference's structure coordinator before the test (``iss.coordinate_``): per group, the units
        read by nobody whose incoming weights it zeroed."""
        return iss.coordinate_(self.iss_groups(head))

    def regularization(self, head: nn.Linear | None = None) -> torch.Tensor:
        """Group Lasso (paper eq. 2, reference ``add_structure_grouplasso``):
        R = lam * sum_l sum_k sqrt(||w_{l,k}||^2 + 1e-8), the self-connections counted twice as the
        reference (``iss.sq_norms``).

        Scaling of lam: the reference minimises ``cost + regularization`` with ``cost =
        reduce_sum(sequence_loss_by_example(...)) / batch_size``, the per-token cross-entropies summed and
        divided by the batch size only, i.e. the SUM over the num_steps (35 for the large model) of the
        per-step mean; ``global_decay`` (0.00245 in ``structure_grouplasso.json``) is unscaled. A task loss
        here is the mean over all tokens, 1/num_steps of that cost, so
            cost_ref + lam_ref * R = num_steps * (mean_CE + (lam_ref / num_steps) * R):
        the same problem with ``lam = lam_ref / num_steps`` (0.00245 / 35 = 7.0e-5 for the paper's large
        PTB run). That run's other step sizes convert with the same factor on the mean loss: plain SGD at
        lr 1.0 on the summed cost = lr 35 on the mean, and its clip of the global gradient norm (of
        cost + R) at 10 = 10 / 35 here."""
        if self.p.lam == 0:
            return self.lstms[0].weight_hh_l0.new_zeros(())
        return iss.group_lasso(self.iss_groups(head), self.p.lam)

    def zero_groups(self, head: nn.Linear | None = None) -> list[torch.Tensor]:
        """Per layer, a [H_l] bool: the component's whole group is exactly zero. Without a head
        the last layer's outgoing weights are unknown and none of its components counts as zero."""
        return iss.zero_components(self.iss_groups(head))

    def kept_components(self, head: nn.Linear | None = None) -> list[torch.Tensor]:
        """Per layer, the indices of the components a pruned model keeps (at least one)."""
        return iss.kept_components(self.iss_groups(head))

    # ------------------------------------------------------------------ hooks
    def after_step(self, head: nn.Linear | None = None) -> None:
        """Zero every entry with |w| < ``threshold`` of all LSTM weights and biases and the head's weight
        and bias. The reference (``ptb_word_lm.py``), whenever a group Lasso or an L1 decay is configured,
        zeroes every entry with |w| < max(1e-4, 2 * weight_decay) of EVERY trainable variable (embedding,
        LSTM weights and biases, softmax weight and bias) after every training step (its ``sparsity``
        fetch runs after each train op); the embedding belongs to the task's encoder and is not
        thresholded here."""
        iss.threshold_(list(self.parameters()) + (list(head.parameters()) if head is not None else []),
                       self.p.threshold)

    @staticmethod
    def _layer_cost(d: int, h: int) -> tuple[int, int]:
        """Parameters and multiply-adds per token of one LSTM layer (torch's two bias vectors)."""
        return GATES * h * (d + h) + 2 * GATES * h, GATES * h * (d + h)

    def structure(self, head: nn.Linear | None = None) -> dict:
        kept = [int(k.numel()) for k in self.kept_components(head)]
        zero = [int(z.sum()) for z in self.zero_groups(head)]
        layers, tot = [], {"params": 0, "params_pruned": 0,
                           "macs_per_token": 0, "macs_per_token_pruned": 0}
        d, d_kept = self.d_input, self.d_input
        for h, k, z in zip(self.sizes, kept, zero):
            (p0, m0), (p1, m1) = self._layer_cost(d, h), self._layer_cost(d_kept, k)
            layers.append({"hidden": h, "kept": k, "zero_groups": z, "input": d, "input_pruned": d_kept,
                           "params": p0, "params_pruned": p1, "macs_per_token": m0, "macs_per_token_pruned": m1})
            for key, v in (("params", p0), ("params_pruned", p1),
                           ("macs_per_token", m0), ("macs_per_token_pruned", m1)):
                tot[key] += v
            d, d_kept = h, k
        rep = {"method": "iss", "lam": self.p.lam, "threshold": self.p.threshold, "sizes": self.sizes,
               "sizes_pruned": kept, "pruned_from": self.pruned_from, "layers": layers, "head": None,
               "backbone": dict(tot)}
        if head is not None:
            bias = head.out_features if head.bias is not None else 0
            hd = {"in": self.sizes[-1], "in_pruned": kept[-1], "out": head.out_features,
                  "params": head.out_features * self.sizes[-1] + bias,
                  "params_pruned": head.out_features * kept[-1] + bias,
                  "macs_per_token": head.out_features * self.sizes[-1],
                  "macs_per_token_pruned": head.out_features * kept[-1]}
            rep["head"] = hd
            for key in tot:
                tot[key] += hd[key]
        rep["total"] = tot
        return rep

    @torch.no_grad()
    def pruned(self, head: nn.Linear):
        """A physically smaller (backbone, head) without the all-zero components, or None when
        nothing can be removed (or prune is off): an ``iss-lstm`` with ``sizes`` = the kept counts
        (weights copied by index) and a head of the kept input columns (same bias), whose outputs are
        those of the masked model. A layer with no component left keeps one (the lowest index, whose
        outgoing weights are all zero: a zero-width nn.LSTM cannot be built). A head tied to the embedding
        comes back untied (the new head holds a copy of the kept columns)."""
        if not self.p.prune:
            return None
        kept = self.kept_components(head)
        if all(int(k.numel()) == h for k, h in zip(kept, self.sizes)):
            return None
        groups = self.iss_groups(head)
        cut = iss.pruned_tensors(groups, kept)
        named = dict(self.named_parameters())
        named.update({f"head.{n}": p for n, p in head.named_parameters()})
        ref = self.lstms[0].weight_hh_l0
        p = dataclasses.replace(self.p, sizes=",".join(str(int(k.numel())) for k in kept))
        new = type(self)(self.d_input, p).to(device=ref.device, dtype=ref.dtype)
        new_head = nn.Linear(int(kept[-1].numel()), head.out_features, bias=head.bias is not None)
        new_head = new_head.to(device=head.weight.device, dtype=head.weight.dtype)
        iss.load_pruned(new, named, cut)
        iss.load_pruned(new_head, named, cut, prefix="head.")
        new.pruned_from = list(self.pruned_from or self.sizes)
        new.train(self.training)
        new_head.train(head.training)
        return new, new_head
