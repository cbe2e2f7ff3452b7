"""SQuAD v1.1 (Rajpurkar et al., EMNLP 2016): extractive question answering, task ``squad`` (kind
``qa``; the text processing, batches and metrics are ``seqbench/qa.py``'s). The official JSON files,
read with HF ``datasets``; the ``paper`` protocol is the ISS reference's BiDAF training
(wenwei202/iss-rnns ``bidaf/basic/cli.py``).
"""
from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from seqbench.config import FRACTION, SEED, choice, check_split, setting
from seqbench.data import ensure_files, verify_enabled, warn_once, writable_dir
from seqbench.errors import SeqbenchError
from seqbench.qa import (QAParams, QATask, char_span_to_tokens, normalize_answer, normalize_quotes,
                         tokenize)
from seqbench.registry import register_task

SQUAD_MD5 = {"train-v1.1.json": "981b29407e0affa3b1b156f72073b945",
             "dev-v1.1.json": "3e85deb501d4e538b6bc56f786231552"}
SQUAD_URL = "https://rajpurkar.github.io/SQuAD-explorer/dataset/"
PREPRO_VERSION = 1  # bump when the maps' output changes: it names their cache files
NOT_COMPARABLE = ("dev-holdout: trained on about 7.9k questions of 36 dev articles and tested on 6 other dev "
                  "articles; not comparable with published SQuAD v1.1 results (87.6k training questions, all of dev)")


@dataclass
class SquadParams(QAParams):
    split: str = choice("official", ("official", "dev-holdout"),
                         "official: train-v1.1 -> dev-v1.1; dev-holdout: dev's articles split into train/val/test")
    split_seed: int = setting(0, SEED, "dev-holdout: the shuffle of dev's articles")
    val_fraction: float = setting(0.125, FRACTION, "dev-holdout: share of the articles for validation")
    test_fraction: float = setting(0.125, FRACTION, "dev-holdout: share of the articles for test")

    def validate(self):
        check_split(self, "val_fraction", "test_fraction", "the rest of the articles trains")


_ADAM = {"optimizer": "adam", "lr": 1e-3, "ema": 0.999, "task.cluster": True}  # the README's --len_opt --cluster
SQUAD_PRESETS = {
    # seconds, whatever the files: tiny vectors, every word and char kept, the first 48 training and 8
    # validation and test questions (the generated files hold 54 / 9 / 9 in dev-holdout; the real
    # dev-holdout 7.9k training questions would take 30 s to 5 min)
    "tiny": {"epochs": 1, "batch_size": 8, "eval_batch_size": 16, "latency_time": 0.05, "task.split": "dev-holdout",
             "task.emb": 8, "task.word_count_min": 0, "task.char_count_min": 0, "task.train_subset": 48,
             "task.eval_subset": 8},
    # the real dev file split by article (see SQuAD, dev-holdout); the model's fast preset sets its
    # width (bidaf: d = 32). Measured at --threads 1 on this project's 2-core CPU under load (12 steps):
    # 2.35 s of CPU (3.6 s wall) per step of 60, 137 steps per epoch: 6 epochs ~ 35 min of one core.
    # 6 x 137 = 822 steps: EMA 0.99 (0.999 averages over ~1000 steps, more than the whole run).
    "fast": {**_ADAM, "ema": 0.99, "batch_size": 60, "eval_batch_size": 60, "epochs": 6, "task.split": "dev-holdout"},
    # the ISS reference's BiDAF (iss-rnns bidaf/basic/cli.py): Adam 1e-3, batch 60, 10k steps (= 6.85
    # epochs of train-v1.1's 87.6k questions: 7 epochs), EMA 0.999, GloVe 6B-100d when task.glove is given
    "paper": {**_ADAM, "batch_size": 60, "eval_batch_size": 60, "epochs": 7, "task.split": "official"},
}
# ISS fine-tuning (the model's fast-iss / paper-iss add lam and dropout; start them with --init-from
# a dense run of the same preset): the same budget again, as the reference's 10k more steps, and its
# final model tested (select last): the best validation epoch of a Lasso run is its least sparse one.
SQUAD_PRESETS["fast-iss"] = {**SQUAD_PRESETS["fast"], "select": "last"}
SQUAD_PRESETS["paper-iss"] = {**SQUAD_PRESETS["paper"], "select": "last"}


def _fallback_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "seqbench" / "squad" / "hf-cache"


class _NotSquad(Exception):
    """The source JSON parses, but not into SQuAD's articles / paragraphs / qas."""


def _flatten(batch, indices):
    """Articles -> one row per question (a batched Dataset.map); a batch not in SQuAD's layout raises
    ``_NotSquad``."""
    try:
        return _flatten_articles(batch, indices)
    except (KeyError, TypeError, AttributeError, IndexError, ValueError) as e:
        raise _NotSquad(f"{type(e).__name__}: {e}") from None


def _flatten_articles(batch, indices):
    out = {k: [] for k in ("id", "article", "para", "qi", "title", "context", "question", "answers", "answer_starts")}
    for a, title, paragraphs in zip(indices, batch["title"], batch["paragraphs"]):
        for pi, para in enumerate(paragraphs):
            for qi, qa in enumerate(para["qas"]):
                out["id"].append(qa["id"])
                out["article"].append(a)
                out["para"].append(pi)
                out["qi"].append(qi)
                out["title"].append(title)
                out["context"].append(para["context"])
                out["question"].append(qa["question"])
                out["answers"].append([x["text"] for x in qa["answers"]])
                out["answer_starts"].append([int(x["answer_start"]) for x in qa["answers"]])
    return out


def _tokenize(batch):
    """Question tokens, answer spans (and whether each span's text normalises to its answer), and
    the context's tokens on each paragraph's first question (a batched Dataset.map)."""
    out = {k: [] for k in ("context", "c_tokens", "c_starts", "c_ends", "q_tokens", "spans", "span_ok")}
    last = (None, None)
    for context, question, qi, answers, starts in zip(batch["context"], batch["question"], batch["qi"],
                                                      batch["answers"], batch["answer_starts"]):
        if last[0] != context:
            ctx = normalize_quotes(context)
            last = (context, (ctx, *tokenize(ctx)))
        ctx, toks, ts, te = last[1]
        spans, ok = [], []
        for text, s in zip(answers, starts):
            span = char_span_to_tokens(ts, te, s, s + len(text))
            spans.append(list(span) if span else [-1, -1])
            ok.append(bool(span) and normalize_answer(ctx[ts[span[0]]:te[span[1]]]) == normalize_answer(text))
        first = qi == 0
        out["context"].append(ctx if first else "")
        out["c_tokens"].append(toks if first else [])
        out["c_starts"].append(ts if first else [])
        out["c_ends"].append(te if first else [])
        out["q_tokens"].append(tokenize(question)[0])
        out["spans"].append(spans)
        out["span_ok"].append(ok)
    return out


COLUMNS = ["id", "article", "para", "title", "context", "c_tokens", "c_starts", "c_ends", "q_tokens", "answers",
           "spans", "span_ok"]


def _read_errors() -> tuple:
    """What reading a source or a cache through HF ``datasets`` raises for bad files (not bugs)."""
    try:
        import pyarrow as pa
        from datasets.exceptions import DatasetGenerationError
    except ImportError:
        return ValueError, KeyError, TypeError, OSError, EOFError, _NotSquad
    return ValueError, KeyError, TypeError, OSError, EOFError, _NotSquad, pa.ArrowException, DatasetGenerationError


def _blames_source(e: Exception) -> bool:
    """Whether a failure is the source's: not SQuAD's layout (``_NotSquad``), or the JSON builder failing to
    generate the Arrow copy for a reason other than the file system (a parse error, a truncated file)."""
    if isinstance(e, _NotSquad):
        return True
    if type(e).__name__ == "DatasetGenerationError":
        cause = e.__cause__ or e.__context__
        return not (isinstance(cause, OSError) and cause.errno is not None)
    return False


def _first_line(e: BaseException) -> str:
    """``Type: first line`` of an exception, the cause's when it is only a wrapper (DatasetGenerationError)."""
    if type(e).__name__ == "DatasetGenerationError" and (e.__cause__ or e.__context__) is not None:
        e = e.__cause__ or e.__context__
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:200]}" if text else type(e).__name__


def _read_error(path: Path, cache: Path, e: Exception, cache_failed: str) -> SeqbenchError:
    """The one-line error of a failed read: the source's when it is to blame, else the cache folder's."""
    if _blames_source(e):
        return SeqbenchError(f"SQuAD file {path} could not be read as SQuAD JSON: {_first_line(e)}")
    return SeqbenchError(f"SQuAD cache {cache} {cache_failed} {path} ({_first_line(e)}); it is derived data: "
                         f"delete that folder, or set XDG_CACHE_HOME or SEQBENCH_DATA elsewhere")


def read_json_text(path: Path) -> bytes:
    try:
        if path.name.endswith(".gz"):
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (OSError, EOFError) as e:
        raise SeqbenchError(f"SQuAD file {path} is unreadable: {e}") from None


@register_task("squad")
class SQuAD(QATask):
    """SQuAD v1.1: answer a question with a span of a Wikipedia paragraph; EM and F1 in percent.

    Splits (``task.split``):
    - ``official``: train on train-v1.1, test on dev-v1.1 after every epoch, no validation split: the
      reference's protocol (a fixed number of steps, the last checkpoint evaluated on dev; SQuAD's test
      set is hidden, the published numbers are dev numbers). The record keeps the last epoch's test
      metrics and, apart, the best over epochs (never used to select).
    - ``dev-holdout``: only dev-v1.1 is needed. Its 48 articles are shuffled by ``task.split_seed`` and
      split by article into test (``task.test_fraction``), validation (``task.val_fraction``) and
      training (the rest; 36 / 6 / 6 articles by default); validation F1 selects the checkpoint. The
      record lists each split's article titles. These numbers come from a model trained on about 7.9k
      dev questions and are NOT comparable with published SQuAD results (trained on 87.6k train
      questions, evaluated on all of dev); the record and the report say so."""

    paper = "Rajpurkar, Zhang, Lopyrev & Liang, SQuAD: 100,000+ Questions for Machine Comprehension of Text, EMNLP 2016"
    paper_url = "https://arxiv.org/abs/1606.05250"
    reference = "https://rajpurkar.github.io/SQuAD-explorer/"
    Params = SquadParams
    presets = SQUAD_PRESETS

    def _needed(self) -> list[str]:
        return ["dev-v1.1.json"] if self.params.split == "dev-holdout" else ["train-v1.1.json", "dev-v1.1.json"]

    def has_files(self) -> bool:
        folder = Path(self.data_root) / "squad"
        return all((folder / n).is_file() or (folder / f"{n}.gz").is_file() for n in self._needed())

    def files(self) -> dict[str, Path]:
        """{name: path} of the needed files, the official ``train-v1.1.json`` and ``dev-v1.1.json`` (plain
        or gzipped ``.json.gz``) under ``<data root>/squad/``; downloaded from the official site when
        missing and allowed (``SEQBENCH_DOWNLOAD``), else one line says which are missing and where they
        go. The md5 of each one's JSON text (``SQUAD_MD5``) is checked (``SEQBENCH_VERIFY=0``: not)."""
        folder = Path(self.data_root) / "squad"
        found = {}
        for n in self._needed():
            found[n] = next((p for p in (folder / n, folder / f"{n}.gz") if p.is_file()), None)
        missing = {n: SQUAD_MD5[n] for n, p in found.items() if p is None}
        if missing:  # downloaded as .json (md5-checked), or one line naming what is missing and where
            got = ensure_files(folder, missing, {n: [SQUAD_URL + n] for n in missing}, "SQuAD v1.1")
            found.update(got)
        checked = {}
        for n, p in found.items():
            if verify_enabled():
                got = hashlib.md5(read_json_text(p)).hexdigest()
                if got != SQUAD_MD5[n]:
                    raise SeqbenchError(f"SQuAD file {p} is corrupted: md5 of its JSON text {got} != expected "
                                        f"{SQUAD_MD5[n]} (delete it to download again, or SEQBENCH_VERIFY=0 for "
                                        f"generated test data)")
                checked[n] = got
        self._notes["md5_checked"] = checked or None
        self._notes["files"] = {n: str(p) for n, p in found.items()}
        return found

    def cache_dir(self) -> Path:
        """Where ``datasets`` caches its Arrow copy and the maps: ``<data root>/squad/hf-cache``, or, when
        the data root cannot be written (a shared read-only copy),
        ``${XDG_CACHE_HOME:-~/.cache}/seqbench/squad/hf-cache``; the record says which
        (``task_info.cache``)."""
        for d in (Path(self.data_root) / "squad" / "hf-cache", _fallback_cache_dir()):
            if writable_dir(d):
                return d
        return Path(tempfile.mkdtemp(prefix="seqbench-squad-"))  # nowhere to keep it: this run only

    def questions(self, name: str, path: Path, cache: Path) -> dict:
        """The tokenised question rows of one file as columns ({column: list}), through HF ``datasets``
        (``table``), cached under ``cache``. The cache is derived data: when it cannot be read (a
        truncated or garbage Arrow file), it is removed and rebuilt once from the source, said in one
        line on stderr; a rebuild that fails too is one error naming the cache folder. A source that is
        not SQuAD JSON is one error naming the source (also with ``SEQBENCH_VERIFY=0``)."""
        try:
            import datasets
        except ImportError as e:
            raise SeqbenchError(f"task squad needs the 'datasets' package (pip install datasets): {e}") from None
        datasets.disable_progress_bars()
        datasets.logging.set_verbosity_error()
        created = not cache.exists()
        try:
            builder = datasets.load_dataset_builder("json", data_files=str(path), field="data", cache_dir=str(cache))
        except _read_errors() as e:
            raise SeqbenchError(f"SQuAD cache {cache} cannot be used for {path}: {_first_line(e)}") from None
        folder = Path(builder.cache_dir)  # this file's Arrow copy and maps
        reused = folder.is_dir()
        try:
            return self.table(builder, name)
        except _read_errors() as e:
            if _blames_source(e) or not reused:
                if created:  # a refused run leaves no cache folder behind
                    shutil.rmtree(cache, ignore_errors=True)
                raise _read_error(path, cache, e, "could not be written for") from None
            warn_once(f"SQuAD cache {folder} is unreadable ({_first_line(e)}); rebuilding it from {path}")
        shutil.rmtree(folder, ignore_errors=True)
        try:
            return self.table(builder, name)
        except _read_errors() as e:
            raise _read_error(path, cache, e, "is unreadable and could not be rebuilt from") from None

    @staticmethod
    def table(builder, name: str) -> dict:
        """The local JSON through the ``json`` builder (``field="data"``: one row per article; offline), its
        Arrow copy in the builder's cache folder, flattened with ``Dataset.map`` to one row per question
        (``_flatten``), then tokenised and span-mapped with a second ``Dataset.map`` (``_tokenize``); both
        maps are cached beside the Arrow copy (a second run reads them in well under a second). Returns
        the columns the task uses, read whole (so a damaged cache fails here)."""
        builder.download_and_prepare()
        raw = builder.as_dataset(split="train")
        tag = name.split("-")[0]
        flat = raw.map(_flatten, batched=True, with_indices=True, remove_columns=raw.column_names,
                       new_fingerprint=f"seqbench-squad-{tag}-flat-v{PREPRO_VERSION}")
        tokens = flat.map(_tokenize, batched=True, new_fingerprint=f"seqbench-squad-{tag}-tokens-v{PREPRO_VERSION}")
        return tokens.select_columns(COLUMNS).to_dict()

    def rows(self):
        files = self.files()
        cache = self.cache_dir()
        self._notes["cache"] = str(cache)
        p = self.params
        tables = {n: self.questions(n, files[n], cache) for n in files}
        paras, by_file = {}, {}
        ok = []
        for n, d in tables.items():
            rows = []
            for i in range(len(d["id"])):
                key = (n, d["article"][i], d["para"][i])
                if d["c_tokens"][i]:
                    paras[key] = {"context": d["context"][i], "c_tokens": d["c_tokens"][i],
                                  "c_starts": d["c_starts"][i], "c_ends": d["c_ends"][i]}
                rows.append({"id": d["id"][i], "para_key": key, "article": d["article"][i], "title": d["title"][i],
                             "q_tokens": d["q_tokens"][i], "answers": d["answers"][i], "spans": d["spans"][i]})
            by_file[n] = rows
            ok += [v for r in d["span_ok"] for v in r]
        self._notes["answers_mapped_exactly"] = {"answers": len(ok), "fraction": sum(ok) / max(len(ok), 1)}
        if p.split == "official":
            self._notes["split"] = {"name": "official", "train": "train-v1.1.json", "test": "dev-v1.1.json",
                                    "protocol": "no validation split: dev tested after every epoch, the last "
                                                "epoch's weights recorded (the reference's fixed-step protocol)"}
            return {"train": by_file["train-v1.1.json"], "test": by_file["dev-v1.1.json"]}, paras
        rows = by_file["dev-v1.1.json"]
        titles = {}
        for r in rows:
            titles.setdefault(r["article"], r["title"])
        arts = sorted(titles)
        if len(arts) < 3:
            raise SeqbenchError(f"task.split=dev-holdout needs at least 3 articles in dev-v1.1.json, found {len(arts)}")
        order = [arts[i] for i in
                 torch.randperm(len(arts), generator=torch.Generator().manual_seed(p.split_seed)).tolist()]
        n_test = max(1, round(len(arts) * p.test_fraction))
        n_val = max(1, round(len(arts) * p.val_fraction))
        if n_test + n_val >= len(arts):
            raise SeqbenchError(f"task.split=dev-holdout: {len(arts)} articles leave none for training with "
                                f"val_fraction {p.val_fraction:g} and test_fraction {p.test_fraction:g}")
        part = {a: "test" for a in order[:n_test]}
        part.update({a: "val" for a in order[n_test:n_test + n_val]})
        out = {s: [r for r in rows if part.get(r["article"], "train") == s] for s in ("train", "val", "test")}
        self._notes["split"] = {"name": "dev-holdout", "seed": p.split_seed,
                                "articles": {s: [titles[a] for a in arts if part.get(a, "train") == s]
                                             for s in ("train", "val", "test")},
                                "questions": {s: len(v) for s, v in out.items()},
                                "comparable_with_published": False, "note": NOT_COMPARABLE}
        return out, paras

    def info(self) -> dict:
        d = super().info()
        d["dataset"] = "SQuAD v1.1"
        sp = d.get("split") or {}
        if sp.get("name") == "dev-holdout":  # the report's data column: not the published protocol
            n = {k: len(v) for k, v in sp["articles"].items()}
            d["data"] = (f"dev-holdout: {n['train']}/{n['val']}/{n['test']} dev articles, "
                         f"not comparable with published SQuAD")
        return d

    @classmethod
    def write_fake_data(cls, root, seed: int = 0) -> None:
        write_fake_squad(Path(root) / "squad", seed)


# --------------------------------------------------------------------------------------- fake data
_OBJECTS = ["ball", "cup", "kite", "boat", "lamp", "door", "hat", "bike"]
_COLORS = ["red", "blue", "green", "yellow", "black", "white", "orange", "purple"]
_NAMES = ["Anna", "Boris", "Chen", "Dara", "Emil", "Fatou", "Gita", "Hugo"]
_CITIES = ["Paris", "Lagos", "Lima", "Oslo", "Quito", "Seoul", "Turin", "Ulm"]


def _fake_article(rng, a: int, n_paras: int) -> dict:
    paras = []
    for p in range(n_paras):
        o1, o2 = rng.choice(len(_OBJECTS), 2, replace=False)
        c1, c2 = rng.choice(len(_COLORS), 2, replace=False)
        name, city = _NAMES[rng.integers(len(_NAMES))], _CITIES[rng.integers(len(_CITIES))]
        year = int(rng.integers(1900, 2000))
        context = (f"The {_OBJECTS[o1]} is {_COLORS[c1]} and the {_OBJECTS[o2]} is {_COLORS[c2]}, while "
                   f"{name} lives in {city} since {year}. ``Yes,'' {name} said.")
        qas = []
        for q, (question, answer, alt) in enumerate([
                (f"What color is the {_OBJECTS[o1]}?", _COLORS[c1], f"{_COLORS[c1]} and"),
                (f"Where does {name} live?", city, f"in {city}"),
                (f"Since when does {name} live in {city}?", str(year), f"since {year}")]):
            s = context.index(f" {answer}") + 1 if f" {answer}" in context else context.index(answer)
            answers = [{"answer_start": s, "text": answer}, {"answer_start": s, "text": answer},
                       {"answer_start": context.index(alt), "text": alt}]
            qas.append({"answers": answers, "question": question, "id": f"fake{a:02d}{p:02d}{q}"})
        paras.append({"context": context, "qas": qas})
    return {"title": f"Fake_article_{a}", "paragraphs": paras}


def write_fake_squad(folder: Path, seed: int = 0, dev_articles: int = 8, train_articles: int = 6) -> None:
    """Tiny SQuAD v1.1 files in the real layout (dev gzipped, train plain): articles of short
    paragraphs (about 20 tokens) with three questions each, three answers per question in dev."""
    import json

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    dev = {"data": [_fake_article(rng, a, 3) for a in range(dev_articles)], "version": "1.1"}
    train = {"data": [_fake_article(rng, 100 + a, 3) for a in range(train_articles)], "version": "1.1"}
    for art in train["data"]:  # one answer per question in train, as the real file
        for para in art["paragraphs"]:
            for qa in para["qas"]:
                qa["answers"] = qa["answers"][:1]
    with gzip.GzipFile(folder / "dev-v1.1.json.gz", "wb", mtime=0) as f:
        f.write(json.dumps(dev).encode())
    (folder / "train-v1.1.json").write_text(json.dumps(train))
