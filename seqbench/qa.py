"""The qa kind: extractive question answering. A sample is a (context, question) pair; the answer is
a span of the context's tokens; the model gives start and end logits over the context's tokens.

Text processing follows the BiDAF reference's ``squad/prepro.py`` (allenai/bi-att-flow and
wenwei202/iss-rnns; read and re-written, not copied), the metrics the official SQuAD v1.1 evaluation
(``evaluate-v1.1.py``). ``QATask`` builds the vocabularies and encodes (``encode``), batches
(``pack``, ``QALoader``), wraps (``QAModel``) and scores; a subclass gives the tokenised rows.
"""
from __future__ import annotations

import math
import re
import string
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import NONNEGATIVE, POSITIVE, Domain, setting
from .data import EpochLoader, check_training_part, subset_size
from .errors import SeqbenchError
from .registry import QA
from .task import Metric, Task, TaskSpec

PAD, UNK = 0, 1
HEADER = 3  # Tc, Tq, W at the start of every packed row
# Without the data files (seqbench bench, the AMP check; ``example_batch``): embedding tables of these
# sizes (they change the parameter count, not the time per sample) and samples of dev-v1.1's mean
# lengths under our tokenizer (context 145 tokens, question 12) with words of 1..12 characters.
NOMINAL_WORDS, NOMINAL_CHARS = 10_000, 100
EXAMPLE_LENGTHS = (145, 12, 12)
TOKEN_RE = re.compile(r"(?:[^\W\d_]\.){2,}|\d+(?:[.,:]\d+)+|\w+|[^\w\s]")


# ------------------------------------------------------------------------------------------ text
def normalize_quotes(text: str) -> str:
    """The reference's context normalisation before tokenising: '' and `` -> '" ' (two characters for
    two, so the answers' character offsets stay valid); answers are cut from that text."""
    return text.replace("''", '" ').replace("``", '" ')


def tokenize(text: str) -> tuple[list[str], list[int], list[int]]:
    """Tokens and their character offsets [start, end) in ``text``; every token is a substring of the text
    at its offsets. A regex tokenizer of ours instead of the reference's NLTK PTB tokenizer (which needs
    a ``punkt`` download): letter abbreviations (``U.S.``), numbers with separators (``1,000``, ``3.5``,
    ``10:30``), runs of word characters, and every other non-space character alone. That splits on
    ``- − — – / ~ " ' “ ’ ” ‘ °`` as the reference's ``process_tokens`` does, and on all other
    punctuation, as the PTB tokenizer does around words."""
    toks, starts, ends = [], [], []
    for m in TOKEN_RE.finditer(text):
        toks.append(m.group())
        starts.append(m.start())
        ends.append(m.end())
    return toks, starts, ends


def char_span_to_tokens(starts, ends, a_start: int, a_end: int):
    """(first, last) inclusive token indices of the tokens overlapping characters [a_start, a_end),
    or None when no token does (the reference's ``get_word_span``). On the real dev file 99.77% of the
    34,726 answers map to a span whose text normalises to the answer (``tests/test_squad.py`` prints the
    fraction); the rest begin or end inside a word ("four" in "fourth")."""
    idx = [i for i, (s, e) in enumerate(zip(starts, ends)) if not (a_end <= s or a_start >= e)]
    return (idx[0], idx[-1]) if idx else None


_PUNCT = set(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(s: str) -> str:
    """The official v1.1 normalisation: lower case, punctuation removed, articles removed, whitespace collapsed."""
    s = "".join(ch for ch in s.lower() if ch not in _PUNCT)
    return " ".join(_ARTICLES.sub(" ", s).split())


def exact_match(prediction: str, truth: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(truth))


def f1_score(prediction: str, truth: str) -> float:
    """Token F1 of the normalised strings (0 when nothing is shared, two empty strings included)."""
    p, t = normalize_answer(prediction).split(), normalize_answer(truth).split()
    same = sum((Counter(p) & Counter(t)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(p), same / len(t)
    return 2 * precision * recall / (precision + recall)


def best_over_truths(fn, prediction: str, truths) -> float:
    return max((fn(prediction, t) for t in truths), default=0.0)


# -------------------------------------------------------------------------------------- decoding
def best_spans(start_logits: torch.Tensor, end_logits: torch.Tensor, max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row, (j, k) maximising p_start(j) * p_end(k) over j <= k < j + max_len (log space; the
    softmaxes run over the positions given, masked ones carrying -1e30). Ties: the smallest j, then k."""
    lp1 = start_logits.float().log_softmax(-1)
    lp2 = end_logits.float().log_softmax(-1)
    B, T = lp1.shape
    L = max(1, min(max_len, T))
    win = F.pad(lp2, (0, L - 1), value=-math.inf).unfold(1, L, 1)  # [B, T, L]: win[b, j, d] = lp2[b, j + d]
    best = (lp1.unsqueeze(2) + win).reshape(B, T * L).argmax(1)
    j = torch.div(best, L, rounding_mode="floor")
    return j, j + best % L


# -------------------------------------------------------------------------------------- vocabulary
def build_vocab(counts: Counter, min_count: int, exclude=()) -> dict[str, int]:
    """{word: id} for the words counted more than ``min_count`` times (not in ``exclude``), ids from
    2 by count descending, ties by the word (0 padding, 1 unknown)."""
    kept = sorted((w for w, c in counts.items() if c > min_count and w not in exclude), key=lambda w: (-counts[w], w))
    return {w: i + 2 for i, w in enumerate(kept)}


def read_glove(path: Path, words: set[str], dim: int) -> dict[str, np.ndarray]:
    """The vectors of ``words`` in a GloVe text file ("word v1 ... vd" per line); other lines are
    skipped without parsing their numbers."""
    out = {}
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            for n, line in enumerate(f, 1):
                word, _, rest = line.rstrip("\n").partition(" ")
                if word not in words:
                    continue
                vec = np.array(rest.split(" "), dtype=np.float32)
                if vec.shape != (dim,):
                    raise SeqbenchError(
                        f"GloVe file {path}, line {n}: {vec.shape[0]} numbers, expected task.emb = {dim}")
                out[word] = vec
    except (OSError, ValueError) as e:
        raise SeqbenchError(f"GloVe file {path} is unreadable: {type(e).__name__}: {e}") from None
    return out


# ---------------------------------------------------------------------------------------- the data
@dataclass
class QAData:
    """Everything encoded: paragraphs (shared by their questions) and examples (one per question)."""

    para_text: list  # normalised context strings
    para_starts: list  # per paragraph, token character offsets (np.int64)
    para_ends: list
    para_words: list  # per paragraph, word ids [T] (np.int64)
    para_chars: list  # per paragraph, char ids [T, max_word_len] (np.int64, 0-padded)
    para_wlen: np.ndarray  # per paragraph, its longest (cut) word in characters
    ex_para: np.ndarray  # per example, its paragraph
    ex_words: list  # per example, question word ids
    ex_chars: list  # per example, question char ids [Tq, max_word_len]
    ex_wlen: np.ndarray
    ex_span: np.ndarray  # [N, 2] first / last token of the first answer ((0, 0) when it maps to none)
    ex_answers: list  # per example, its ground-truth texts
    ex_ids: list
    splits: dict  # {"train"|"val"|"test": np.ndarray of example indices}
    n_words: int  # trainable word rows (padding and unknown included)
    glove: np.ndarray | None  # fixed vectors [G, dim] of the ids n_words .. n_words + G - 1
    n_chars: int
    facts: dict  # for the record


def pack(data: QAData, idx, max_context: int | None, widths: tuple | None = None) -> torch.Tensor:
    """The packed LongTensor of examples ``idx``, one row each: a header (Tc, Tq, W), then the context
    word ids [Tc], the question word ids [Tq], the context char ids [Tc * W] and the question char ids
    [Tq * W], padded with 0. Contexts cut to ``max_context`` tokens when given (training); padded to
    ``widths`` (Tc, Tq, W) when given (the training layout, fixed: (400, 30, 16) by default, which
    ``example_batch`` also gives without data), else to the batch's longest."""
    paras = data.ex_para[idx]
    clen = [min(len(data.para_words[p]), max_context or 10**9) for p in paras]
    qlen = [len(data.ex_words[i]) for i in idx]
    if widths is None:
        Tc, Tq = max(clen), max(qlen)
        W = max(1, int(max(data.para_wlen[paras].max(), data.ex_wlen[idx].max())))
    else:
        Tc, Tq, W = widths
    B = len(idx)
    head = np.tile(np.array([[Tc, Tq, W]], dtype=np.int64), (B, 1))
    cw, qw = np.zeros((B, Tc), np.int64), np.zeros((B, Tq), np.int64)
    cc, qc = np.zeros((B, Tc, W), np.int64), np.zeros((B, Tq, W), np.int64)
    for r, (i, p, lc, lq) in enumerate(zip(idx, paras, clen, qlen)):
        cw[r, :lc] = data.para_words[p][:lc]
        qw[r, :lq] = data.ex_words[i]
        cc[r, :lc] = data.para_chars[p][:lc, :W]
        qc[r, :lq] = data.ex_chars[i][:, :W]
    return torch.from_numpy(np.concatenate([head, cw, qw, cc.reshape(B, -1), qc.reshape(B, -1)], 1))


def unpack(x: torch.Tensor):
    """(context words [B, Tc], question words [B, Tq], context chars [B, Tc, W], question chars [B, Tq, W])
    at the packed widths (see ``trim``)."""
    Tc, Tq, W = (int(v) for v in x[0, :HEADER].tolist())
    B = x.shape[0]
    o_q, o_cc = HEADER + Tc, HEADER + Tc + Tq
    o_qc = o_cc + Tc * W
    return (x[:, HEADER:o_q], x[:, o_q:o_cc], x[:, o_cc:o_qc].reshape(B, Tc, W), x[:, o_qc:].reshape(B, Tq, W))


CLUSTER_BATCHES = 20  # training with cluster: examples sorted by length within chunks of this many batches


def trim(cw, qw, cc, qc):
    """The four id tensors cut to the longest context, question and word they hold (padding is id 0
    and every sequence is left-aligned; the reference's ``len_opt``), so a batch packed at the fixed
    training widths costs what its own lengths cost."""
    Lc = max(1, int((cw != PAD).sum(1).max()))
    Lq = max(1, int((qw != PAD).sum(1).max()))
    W = max(1, int((cc != PAD).sum(2).max()), int((qc != PAD).sum(2).max()))
    return cw[:, :Lc], qw[:, :Lq], cc[:, :Lc, :W], qc[:, :Lq, :W]


class QALoader(EpochLoader):
    """Mini-batches of examples ``idx``, padded to each batch's longest context and question. Training
    (``shuffle``): shuffled by (seed, epoch), so a resumed run sees the same batches; with ``cluster``
    (the reference's ``--cluster``), the shuffled examples are sorted by context length within chunks
    of CLUSTER_BATCHES batches, cut into batches, and the batches shuffled: far less padding, the
    same examples per epoch. Evaluation: batches of similar lengths (sorted; the sums do not depend
    on the order). Never drops the last batch. Targets ``y`` are [B, 3]: the answer's first and last
    token and the example's index in the task, through which ``eval_stats`` finds the gold answers."""

    def __init__(self, data: QAData, idx: np.ndarray, batch_size: int, shuffle: bool, seed: int,
                 max_context: int | None, cluster: bool = False, widths: tuple | None = None):
        super().__init__(batch_size, shuffle, seed)
        self.data, self.idx, self.max_context = data, np.asarray(idx, dtype=np.int64), max_context
        self.cluster, self.widths = cluster, widths
        lens = np.array([len(data.para_words[p]) for p in data.ex_para[self.idx]], dtype=np.int64)
        self.lens = np.minimum(lens, max_context) if max_context else lens

    @property
    def num_samples(self) -> int:
        return len(self.idx)

    def batches(self) -> list[np.ndarray]:
        """This epoch's batches (positions into ``idx``)."""
        n, bs = len(self.idx), self.batch_size
        if not self.shuffle:
            pos = np.argsort(self.lens, kind="stable")
            return [pos[i:i + bs] for i in range(0, n, bs)]
        g = self.generator()
        pos = torch.randperm(n, generator=g).numpy()
        if not self.cluster:
            return [pos[i:i + bs] for i in range(0, n, bs)]
        chunk = bs * CLUSTER_BATCHES
        out = []
        for c in range(0, n, chunk):
            part = pos[c:c + chunk]
            part = part[np.argsort(self.lens[part], kind="stable")]
            out += [part[i:i + bs] for i in range(0, len(part), bs)]
        return [out[i] for i in torch.randperm(len(out), generator=g).tolist()]

    def __iter__(self):
        for pos in self.batches():
            b = self.idx[pos]
            y = torch.from_numpy(np.concatenate([self.data.ex_span[b], b[:, None]], 1))
            yield pack(self.data, b, self.max_context, self.widths), y


# ----------------------------------------------------------------------------------------- wrapper
class WordEmbedding(nn.Module):
    """Trainable rows ``[0, n_trainable)`` (N(0, 1), the reference's init for words without GloVe
    vectors; the padding row 0 kept at zero) and, with GloVe,
    fixed rows after them (a buffer, not a parameter: they are not trained and not counted)."""

    def __init__(self, n_trainable: int, dim: int, fixed: np.ndarray | None = None):
        super().__init__()
        self.n = n_trainable
        self.trainable = nn.Embedding(n_trainable, dim, padding_idx=PAD)
        nn.init.normal_(self.trainable.weight)
        with torch.no_grad():
            self.trainable.weight[PAD].zero_()
        self.register_buffer("fixed", torch.from_numpy(fixed) if fixed is not None else None, persistent=False)

    def forward(self, ids):
        e = self.trainable(ids.clamp(max=self.n - 1))
        if self.fixed is None:
            return e
        g = F.embedding((ids - self.n).clamp(min=0), self.fixed.to(e.dtype))
        return torch.where((ids >= self.n).unsqueeze(-1), g, e)


class QAModel(nn.Module):
    """Word and character embeddings (the task's: they depend on its vocabularies) in front of a QA
    backbone ``backbone(cw, cc, qw, qc, c_mask, q_mask) -> [B, Tc, 2]`` (start and end logits,
    padding masked). The backbone's output layer is the backbone's own (BiDAF's ends in an LSTM
    between its start and end logits): this wrapper has no ``head`` (None)."""

    def __init__(self, backbone: nn.Module, words: WordEmbedding, n_chars: int, nominal: tuple):
        super().__init__()
        self.backbone = backbone
        self.words = words
        self.chars = nn.Embedding(n_chars, backbone.char_dim)
        lim = math.sqrt(6.0 / (n_chars + backbone.char_dim))  # TF's default (glorot uniform) for char_emb_mat
        nn.init.uniform_(self.chars.weight, -lim, lim)
        self.head = None
        self.nominal = nominal  # (Tc, Tq, W) of the example latency and FLOPs are measured on

    def forward(self, x, state=None):
        cw, qw, cc, qc = trim(*unpack(x))
        out = self.backbone(self.words(cw), self.chars(cc), self.words(qw), self.chars(qc), cw != PAD, qw != PAD)
        return out, None

    def flops_per_sample(self) -> int:
        return int(self.backbone.flops(*self.nominal))


# -------------------------------------------------------------------------------------------- task
def _glove_path(v: str) -> bool:
    return v == "" or not v.startswith("-")


@dataclass
class QAParams:
    emb: int = setting(100, POSITIVE, "word vector size (a GloVe file's dimension when glove is given)")
    glove: str = setting("", Domain("a GloVe text file path (or empty)", _glove_path, "-x"),
                         "GloVe text file: fixed word vectors (empty: trainable random vectors)")
    word_count_min: int = setting(10, NONNEGATIVE, "training words seen more than this often get trainable vectors")
    char_count_min: int = setting(50, NONNEGATIVE, "training characters seen more than this often get ids")
    max_context: int = setting(400, POSITIVE,
                               "training: contexts cut to this many tokens, answers ending later dropped")
    max_question: int = setting(30, POSITIVE, "training: questions with more tokens dropped")
    max_word_len: int = setting(16, POSITIVE, "characters per word seen by the char CNN")
    max_answer_len: int = setting(30, POSITIVE, "decoding: longest answer in tokens")
    cluster: bool = False  # training batches of similar context lengths (the reference's --cluster)
    train_subset: int = setting(0, NONNEGATIVE, "first N training examples (0: all; tiny runs)")
    eval_subset: int = setting(0, NONNEGATIVE, "first N validation and test examples (0: all)")


class QATask(Task):
    """Base of the extractive QA tasks. A subclass gives ``rows()``: per split, the tokenised
    question rows (see ``encode``); this class builds the vocabularies, encodes, batches, wraps and
    scores."""

    kind = QA
    Params = QAParams

    def __init__(self, params, data_root):
        super().__init__(params, data_root)
        self._data: QAData | None = None
        self._notes: dict = {}

    # data
    def rows(self) -> tuple[dict, dict]:
        """({split: list of question rows}, {para_key: paragraph}): a question row has id, para_key,
        q_tokens, answers (texts), spans (per answer [first, last], or [-1, -1] when it maps to no
        token); a paragraph has context (quote-normalised), c_tokens, c_starts, c_ends."""
        raise NotImplementedError

    def has_files(self) -> bool:
        """Whether the data files are here (else ``wrap`` and ``example_batch`` use nominal sizes)."""
        return True

    def data(self) -> QAData:
        if self._data is None:
            self._data = encode(*self.rows(), self.params)
        return self._data

    def train_widths(self) -> tuple:
        """The fixed (Tc, Tq, W) training batches are packed at (the wrapper trims the padding)."""
        p = self.params
        return p.max_context, p.max_question, p.max_word_len

    def training_cause(self, n: int) -> str:
        """What left ``n`` training questions (for the one-line refusal of a training part below one batch)."""
        return f"the training split of {self.name} (after the training filter)"

    def loaders(self, batch_size: int, eval_batch_size: int, seed: int):
        d, p = self.data(), self.params
        out, subsets, n = {}, {}, len(d.splits["train"])
        check_training_part(n, batch_size, "questions", self.training_cause(n))
        for split, idx in d.splits.items():
            train = split == "train"
            asked, key = (p.train_subset, "task.train_subset") if train else (p.eval_subset, "task.eval_subset")
            idx = idx[: subset_size(asked, len(idx), key, split, "questions", subsets)]
            if train:
                out[split] = QALoader(d, idx, batch_size, True, seed, p.max_context, p.cluster, self.train_widths())
            else:
                out[split] = QALoader(d, idx, eval_batch_size, False, seed, None)
        self._notes["questions_used"] = {s: ld.num_samples for s, ld in out.items()}
        self._notes["subset_larger_than_split"] = subsets or None
        return out

    def spec(self) -> TaskSpec:
        return TaskSpec(kind=self.kind, d_input=self.params.emb, d_output=2, seq_len=self.params.max_context,
                        loss="cross_entropy (start + end)",
                        metrics=[Metric("f1", True), Metric("em", True), Metric("loss", False)], monitor="f1")

    def nominal_example(self) -> int:
        """The test example latency and FLOPs are measured on: the one with the median context length."""
        d = self.data()
        idx = d.splits["test"][: self.params.eval_subset or None]
        lens = np.array([len(d.para_words[d.ex_para[i]]) for i in idx])
        return int(idx[np.argsort(lens, kind="stable")[len(lens) // 2]])

    def vocab_sizes(self) -> tuple:
        """(trainable word rows, fixed GloVe vectors or None, char ids): the data's, or nominal
        ones when the files are absent (a bench without data)."""
        if self._data is None and not self.has_files():
            return NOMINAL_WORDS, None, NOMINAL_CHARS
        d = self.data()
        return d.n_words, d.glove, d.n_chars

    def wrap(self, backbone):
        n_words, glove, n_chars = self.vocab_sizes()
        words = WordEmbedding(n_words, self.params.emb, glove)
        if self._data is None and not self.has_files():
            nominal = self._example_lengths()
        else:
            x = self.example_input(None, 1)
            nominal = tuple(int(v) for v in x[0, :HEADER])
        return QAModel(backbone, words, n_chars, nominal)

    def _example_lengths(self) -> tuple:
        Tc, Tq, W = self.train_widths()
        return min(EXAMPLE_LENGTHS[0], Tc), min(EXAMPLE_LENGTHS[1], Tq), min(EXAMPLE_LENGTHS[2], W)

    def example_batch(self, batch_size: int, seed: int = 0) -> tuple:
        """Random samples in the training layout (``train_widths``), each a context of 145 tokens and
        a question of 12 (dev-v1.1's means) with words of 1..12 characters, random ids; targets a
        random span of the context (index 0: not a real example, for ``loss`` only)."""
        g = torch.Generator().manual_seed(seed)
        n_words, glove, n_chars = self.vocab_sizes()
        n_words += 0 if glove is None else len(glove)
        Tc, Tq, W = self.train_widths()
        lc, lq, lw = self._example_lengths()
        B = batch_size
        cw, qw = torch.zeros(B, Tc, dtype=torch.long), torch.zeros(B, Tq, dtype=torch.long)
        cw[:, :lc] = torch.randint(2, max(n_words, 3), (B, lc), generator=g)
        qw[:, :lq] = torch.randint(2, max(n_words, 3), (B, lq), generator=g)

        def chars(n):
            c = torch.zeros(B, n, W, dtype=torch.long)
            length = torch.randint(1, lw + 1, (B, n), generator=g)
            length[:, 0] = lw
            ids = torch.randint(2, max(n_chars, 3), (B, n, lw), generator=g)
            c[:, :, :lw] = torch.where(torch.arange(lw) < length.unsqueeze(2), ids, 0)
            return c

        cc = torch.zeros(B, Tc, W, dtype=torch.long)
        qc = torch.zeros(B, Tq, W, dtype=torch.long)
        cc[:, :lc], qc[:, :lq] = chars(lc), chars(lq)
        head = torch.tensor([[Tc, Tq, W]], dtype=torch.long).repeat(B, 1)
        x = torch.cat([head, cw, qw, cc.reshape(B, -1), qc.reshape(B, -1)], 1)
        start = torch.randint(0, lc, (B,), generator=g)
        end = torch.minimum(start + torch.randint(0, 4, (B,), generator=g), torch.tensor(lc - 1))
        return x, torch.stack([start, end, torch.zeros(B, dtype=torch.long)], 1)

    def example_input(self, x, batch_size: int):
        """``batch_size`` copies of the nominal example (the test example of median context length), unpadded."""
        one = pack(self.data(), np.array([self.nominal_example()]), None)
        return one.repeat(batch_size, 1)

    def loss(self, out, y):
        out = out.float()
        return F.cross_entropy(out[..., 0], y[:, 0]) + F.cross_entropy(out[..., 1], y[:, 1])

    def eval_stats(self, out, y):
        """Sums of the official SQuAD v1.1 metrics: answers normalised (``normalize_answer``), exact match
        and token F1, each the maximum over the question's ground truths; ``metrics`` gives them in
        percent over every question of the split (F1 selects the checkpoint). The prediction is the text
        of the decoded span (``best_spans``), cut from the context at its tokens' offsets."""
        out = out.float()
        d = self.data()
        j, k = best_spans(out[..., 0], out[..., 1], self.params.max_answer_len)
        em = f1 = 0.0
        for i, a, b in zip(y[:, 2].tolist(), j.tolist(), k.tolist()):
            p = d.ex_para[i]
            pred = d.para_text[p][d.para_starts[p][a]:d.para_ends[p][b]] if b < len(d.para_starts[p]) else ""
            em += best_over_truths(exact_match, pred, d.ex_answers[i])
            f1 += best_over_truths(f1_score, pred, d.ex_answers[i])
        loss = (F.cross_entropy(out[..., 0], y[:, 0], reduction="sum")
                + F.cross_entropy(out[..., 1], y[:, 1], reduction="sum"))
        return {"em_sum": torch.tensor(em, dtype=torch.float64), "f1_sum": torch.tensor(f1, dtype=torch.float64),
                "loss_sum": loss, "count": torch.tensor(y.shape[0])}

    def metrics(self, sums):
        n = max(float(sums["count"]), 1.0)
        return {"f1": 100.0 * float(sums["f1_sum"]) / n, "em": 100.0 * float(sums["em_sum"]) / n,
                "loss": float(sums["loss_sum"]) / n}

    def info(self) -> dict:
        d = self.data()
        i = self.nominal_example()
        Tc, Tq = len(d.para_words[d.ex_para[i]]), len(d.ex_words[i])
        return {**self._notes, **d.facts, "metric_units": "percent (official SQuAD v1.1 EM and F1)",
                "nominal_example": {"id": d.ex_ids[i], "context_tokens": Tc, "question_tokens": Tq,
                                    "what": "latency and FLOPs per sample: one question over this test context"}}


def encode(rows: dict, paras: dict, p: QAParams) -> QAData:
    """Vocabularies from the training rows, then every split encoded.

    Words: lower-cased words of the training text, a context's tokens counted once per question of the
    paragraph and question tokens once (the reference's counters); words seen more than
    ``word_count_min`` times get trainable vectors; with a GloVe file (``glove``), words it has are
    looked up in it (fixed vectors, for every split's words, as the reference's ``new_emb_mat``) and
    only frequent words it lacks are trainable; id 0 = padding, 1 = unknown. Characters of the training
    tokens seen more than ``char_count_min`` times (same counting) get ids (0 padding, 1 unknown); words
    are cut to ``max_word_len`` characters (16). Training examples keep the first answer; a question
    longer than ``max_question`` tokens (30) or an answer ending at token ``max_context`` (400) or later
    is dropped, and training contexts are cut to ``max_context`` tokens when packed (the reference's
    filter and truncation). Validation and test examples are all kept, whole."""
    train = rows["train"]
    words, chars = Counter(), Counter()
    for r in train:
        for t in r["q_tokens"]:
            words[t.lower()] += 1
            chars.update(t)
    for key, m in Counter(r["para_key"] for r in train).items():  # a context's tokens: once per question
        for t in paras[key]["c_tokens"]:
            words[t.lower()] += m
            for ch in t:
                chars[ch] += m
    glove_vecs, glove_ids = None, {}
    if p.glove:
        used = {r["para_key"] for split in rows.values() for r in split}
        every = {t for split in rows.values() for r in split for t in r["q_tokens"]}
        every |= {t for k in used for t in paras[k]["c_tokens"]}
        variants = {v for t in every for v in (t, t.lower(), t.capitalize(), t.upper())}
        table = read_glove(Path(p.glove).expanduser(), variants, p.emb)
        vocab = build_vocab(words, p.word_count_min, exclude=table)  # frequent words GloVe lacks: trainable
        names = sorted(table)
        glove_ids = {w: len(vocab) + 2 + i for i, w in enumerate(names)}
        glove_vecs = np.stack([table[w] for w in names]) if names else np.zeros((0, p.emb), np.float32)
    else:
        vocab = build_vocab(words, p.word_count_min)
    char_ids = build_vocab(chars, p.char_count_min)

    word_memo: dict = {}

    def word_id(t: str) -> int:
        """The trainable row of t, lower(t), capitalised, upper (the reference's order), then GloVe's, else UNK."""
        i = word_memo.get(t)
        if i is None:
            forms = (t, t.lower(), t.capitalize(), t.upper())
            i = next((vocab[v] for v in forms if v in vocab), None) or next(
                (glove_ids[v] for v in forms if v in glove_ids), UNK)
            word_memo[t] = i
        return i

    def words_of(tokens) -> np.ndarray:
        return np.fromiter((word_id(t) for t in tokens), dtype=np.int64, count=len(tokens))

    W = p.max_word_len
    char_memo: dict = {}

    def chars_of(tokens) -> tuple[np.ndarray, int]:
        rows = []
        for t in tokens:
            r = char_memo.get(t)
            if r is None:
                r = np.zeros(W, dtype=np.int64)
                cut = t[:W]
                r[:len(cut)] = [char_ids.get(ch, UNK) for ch in cut]
                char_memo[t] = r
            rows.append(r)
        a = np.stack(rows) if rows else np.zeros((0, W), dtype=np.int64)
        return a, min(W, max((len(t) for t in tokens), default=0))

    para_index: dict = {}
    P = {k: [] for k in ("text", "starts", "ends", "words", "chars", "wlen")}
    E = {k: [] for k in ("para", "words", "chars", "wlen", "span", "answers", "ids")}
    splits, facts = {}, {"examples": {}, "dropped_from_training": {}}
    for split in ("train", "val", "test"):
        if split not in rows:
            continue
        chosen, drop = [], Counter()
        for r in rows[split]:
            span = r["spans"][0] if r["spans"] else [-1, -1]
            if split == "train":
                if span[0] < 0:
                    drop["answer_maps_to_no_token"] += 1
                    continue
                if len(r["q_tokens"]) > p.max_question:
                    drop["question_too_long"] += 1
                    continue
                if span[1] >= p.max_context:
                    drop["answer_beyond_max_context"] += 1
                    continue
            key = r["para_key"]
            if key not in para_index:
                para = paras[key]
                para_index[key] = len(P["text"])
                P["text"].append(para["context"])
                P["starts"].append(np.asarray(para["c_starts"], dtype=np.int64))
                P["ends"].append(np.asarray(para["c_ends"], dtype=np.int64))
                P["words"].append(words_of(para["c_tokens"]))
                a, longest = chars_of(para["c_tokens"])
                P["chars"].append(a)
                P["wlen"].append(longest)
            chosen.append(len(E["para"]))
            E["para"].append(para_index[key])
            E["words"].append(words_of(r["q_tokens"]))
            a, longest = chars_of(r["q_tokens"])
            E["chars"].append(a)
            E["wlen"].append(longest)
            E["span"].append(span if span[0] >= 0 else [0, 0])
            E["answers"].append(list(r["answers"]))
            E["ids"].append(r["id"])
        if not chosen:
            raise SeqbenchError(f"QA split '{split}' has no examples left (training filter: {dict(drop) or 'none'})")
        splits[split] = np.array(chosen, dtype=np.int64)
        facts["examples"][split] = len(chosen)
        if split == "train":
            facts["dropped_from_training"] = dict(drop)
    facts.update(word_vocab={"trainable": len(vocab) + 2, "glove_fixed": len(glove_ids)}, char_vocab=len(char_ids) + 2)
    return QAData(
        para_text=P["text"], para_starts=P["starts"], para_ends=P["ends"], para_words=P["words"],
        para_chars=P["chars"], para_wlen=np.array(P["wlen"], dtype=np.int64),
        ex_para=np.array(E["para"], dtype=np.int64), ex_words=E["words"], ex_chars=E["chars"],
        ex_wlen=np.array(E["wlen"], dtype=np.int64), ex_span=np.array(E["span"], dtype=np.int64).reshape(-1, 2),
        ex_answers=E["answers"], ex_ids=E["ids"], splits=splits, n_words=len(vocab) + 2,
        glove=glove_vecs, n_chars=len(char_ids) + 2, facts=facts)
