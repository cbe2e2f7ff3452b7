"""The qa kind and SQuAD: official EM/F1 by hand, tokens and answer spans (also on the real dev file
when ../shared/data is here), decoding, packing, the HF-datasets pipeline and its cache, splits,
GloVe; BiDAF: parameter count, ISS groups by hand, pruned = masked, the runner with ISS."""
import errno
import gzip
import json
import math
import os
import shutil
from pathlib import Path

import pytest
import torch

from seqbench import config, iss, registry
from seqbench.build import build
from seqbench.cli import main
from seqbench.errors import SeqbenchError
from seqbench.model import load_pruned
from seqbench.qa import (best_spans, best_over_truths, char_span_to_tokens, exact_match, f1_score, normalize_answer,
                         normalize_quotes, pack, tokenize, trim, unpack)
from seqbench.runner import Runner
from conftest import QUICK

SQuAD = registry.get_task("squad").cls
BiDAF = registry.get_model("bidaf").cls


def task(env=None, root=None, **params):
    return SQuAD(SQuAD.Params(**params), root or env["data"])


def tiny(env, **params):
    return task(env, **{"split": "dev-holdout", "emb": 8, "word_count_min": 0, "char_count_min": 0, **params})


# ------------------------------------------------------------------------------ official metrics
def test_normalisation_em_and_f1_by_hand():
    assert normalize_answer("The  Denver Broncos!") == "denver broncos"
    assert normalize_answer("an apple, a pear") == "apple pear"
    assert normalize_answer("Theory of A.B.C.") == "theory of abc"  # 'the' only as a whole word
    assert normalize_answer("  ") == ""
    # P = 2/2, R = 2/3 -> F1 = 0.8; EM 0
    assert f1_score("Denver Broncos", "the Denver Broncos team") == pytest.approx(0.8)
    assert exact_match("Denver Broncos", "the Denver Broncos team") == 0.0
    assert exact_match("the Denver Broncos.", "denver broncos") == 1.0
    # repeated tokens count as often as both have them: common {y: 2}, P = R = 2/3
    assert f1_score("x y y", "y y z") == pytest.approx(2 / 3)
    assert f1_score("x", "z") == 0.0 and f1_score("", "") == 0.0  # v1.1: nothing shared scores 0
    truths = ["Denver Broncos", "Broncos", "the team"]
    assert best_over_truths(exact_match, "broncos", truths) == 1.0
    # "Denver" vs "Denver Broncos": P 1, R 1/2 -> 2/3; vs the others 0
    assert best_over_truths(f1_score, "Denver", truths) == pytest.approx(2 / 3)
    assert best_over_truths(exact_match, "Denver", truths) == 0.0


# -------------------------------------------------------------------------------- tokens, spans
def test_tokenizer_splits_as_the_reference_and_keeps_offsets():
    text = normalize_quotes("``Hi,'' said O'Neil-Smith: 1,000 km/h (3.5°) in the U.S. ~2010–2012.")
    assert len(text) == len("``Hi,'' said O'Neil-Smith: 1,000 km/h (3.5°) in the U.S. ~2010–2012.")
    toks, starts, ends = tokenize(text)
    assert toks == ['"', "Hi", ",", '"', "said", "O", "'", "Neil", "-", "Smith", ":", "1,000", "km", "/", "h", "(",
                    "3.5", "°", ")", "in", "the", "U.S.", "~", "2010", "–", "2012", "."]
    assert all(text[s:e] == t for t, s, e in zip(toks, starts, ends))
    # the answer "Neil-Smith" (chars 14..24) is tokens 7..9; a span inside one token maps to it
    s = text.index("Neil")
    assert char_span_to_tokens(starts, ends, s, s + len("Neil-Smith")) == (7, 9)
    assert char_span_to_tokens(starts, ends, s + 1, s + 3) == (7, 7)
    assert char_span_to_tokens(starts, ends, len(text), len(text) + 2) is None


def test_real_dev_file_answers_map_to_spans_and_split_by_article(tmp_path, monkeypatch, capsys):
    """The real dev-v1.1 (when this checkout has ../shared/data beside it): md5, counts, the
    fraction of answers whose mapped token span normalises to the answer, the article split. Read
    from two copies this test makes, whatever the shared folder's own permission bits: one marked
    read-only (the cache goes to ${XDG_CACHE_HOME}), one writable (the cache goes beside the file)."""
    src = Path(__file__).resolve().parents[2] / "shared" / "data" / "squad" / "dev-v1.1.json.gz"
    if not src.is_file():
        pytest.skip("no ../shared/data/squad here")
    xdg = tmp_path / "xdg"
    monkeypatch.setenv("XDG_CACHE_HOME", str(xdg))
    monkeypatch.setenv("SEQBENCH_VERIFY", "1")
    ro, rw = tmp_path / "ro", tmp_path / "rw"
    for root in (ro, rw):
        (root / "squad").mkdir(parents=True)
        shutil.copy(src, root / "squad" / src.name)
    for d in (ro / "squad", ro):
        os.chmod(d, 0o555)
    try:
        t = task(root=ro, split="dev-holdout")
        d = t.data()
        notes = t.info()
    finally:
        for d_ in (ro, ro / "squad"):
            os.chmod(d_, 0o755)
    assert notes["cache"] == str(xdg / "seqbench" / "squad" / "hf-cache")  # not under the read-only root
    assert not (ro / "squad" / "hf-cache").exists()
    mapped = notes["answers_mapped_exactly"]
    with capsys.disabled():
        print(f"\nSQuAD dev-v1.1: {mapped['fraction']:.4%} of {mapped['answers']} answers map to a token span whose "
              f"text normalises to the answer")
    assert mapped["answers"] == 34726 and mapped["fraction"] > 0.99
    assert notes["md5_checked"] == {"dev-v1.1.json": "3e85deb501d4e538b6bc56f786231552"}
    split = notes["split"]
    assert {k: len(v) for k, v in split["articles"].items()} == {"train": 36, "val": 6, "test": 6}
    assert sum(split["questions"].values()) == 10570 and not split["comparable_with_published"]
    assert not (set(split["articles"]["train"]) & set(split["articles"]["test"]))
    # evaluation keeps every question; training drops only the reference's filter
    assert len(d.splits["val"]) == split["questions"]["val"] and len(d.splits["test"]) == split["questions"]["test"]
    assert split["questions"]["train"] - len(d.splits["train"]) == sum(notes["dropped_from_training"].values())
    # the writable copy keeps its cache beside the file, and reads the same questions
    t2 = task(root=rw, split="dev-holdout")
    d2 = t2.data()
    assert t2.info()["cache"] == str(rw / "squad" / "hf-cache")
    assert any((rw / "squad" / "hf-cache").rglob("cache-*tokens*.arrow"))
    assert d2.ex_ids == d.ex_ids


# ------------------------------------------------------------------------------------- decoding
def test_best_spans_is_the_best_pair_with_start_before_end_and_the_length_cap():
    # the best start is 3 and the best end 1: j <= k forbids the pair; the best allowed is (0, 1)
    ls = torch.log(torch.tensor([[0.3, 0.05, 0.05, 0.6]]))
    le = torch.log(torch.tensor([[0.1, 0.7, 0.1, 0.1]]))
    j, k = best_spans(ls, le, 30)
    assert (j.item(), k.item()) == (0, 1)  # 0.3 * 0.7 = 0.21 > 0.6 * 0.1
    j, k = best_spans(ls, le, 1)  # one token at most: the best j == k is (3, 3): 0.06 > 0.03
    assert (j.item(), k.item()) == (3, 3)
    g = torch.Generator().manual_seed(0)
    for _ in range(20):  # brute force on random logits, masked positions at the end
        T, L = 9, int(torch.randint(1, 6, (1,), generator=g))
        a, b = torch.randn(2, T, generator=g), torch.randn(2, T, generator=g)
        a[:, 7:], b[:, 7:] = -1e30, -1e30
        j, k = best_spans(a, b, L)
        pa, pb = a.softmax(-1), b.softmax(-1)
        for r in range(2):
            best = max(((pa[r, x] * pb[r, y]).item(), x, y) for x in range(7) for y in range(x, min(x + L, 7)))
            assert (j[r].item(), k[r].item()) == best[1:]


# ----------------------------------------------------------------------------- pipeline, batches
def test_pack_unpack_round_trip_and_loaders(env):
    t = tiny(env)
    d = t.data()
    idx = d.splits["val"][:3]
    x = pack(d, idx, None)
    cw, qw, cc, qc = unpack(x)
    for r, i in enumerate(idx):
        p = d.ex_para[i]
        n, m = len(d.para_words[p]), len(d.ex_words[i])
        assert torch.equal(cw[r, :n], torch.from_numpy(d.para_words[p])) and (cw[r, n:] == 0).all()
        assert torch.equal(qw[r, :m], torch.from_numpy(d.ex_words[i])) and (qw[r, m:] == 0).all()
        W = cc.shape[2]
        assert torch.equal(cc[r, :n], torch.from_numpy(d.para_chars[p][:, :W]))
        assert torch.equal(qc[r, :m], torch.from_numpy(d.ex_chars[i][:, :W]))
    ld = t.loaders(4, 5, seed=0)
    assert set(ld) == {"train", "val", "test"}
    seen = [int(i) for _, y in ld["val"] for i in y[:, 2]]
    assert sorted(seen) == sorted(d.splits["val"].tolist())  # every question once
    # cluster: the same examples in an epoch, batches of sorted lengths within a chunk
    t2 = tiny(env, cluster=True)
    a = t2.loaders(4, 5, seed=1)["train"]
    got = sorted(int(i) for _, y in a for i in y[:, 2])
    assert got == sorted(t2.data().splits["train"].tolist())
    a.set_epoch(2)
    first = [y[:, 2].tolist() for _, y in a]
    a.set_epoch(2)
    assert first == [y[:, 2].tolist() for _, y in a]  # seeded by (seed, epoch): a resume sees the same


def test_gold_spans_score_100_through_eval_stats(env):
    """Logits that point at each example's first answer span: EM = F1 = 100 (answers cut from the
    context at token offsets and compared with the official normalisation)."""
    t = tiny(env)
    d = t.data()
    x, y = next(iter(t.loaders(4, 8, seed=0)["test"]))
    Tc = int(x[0, 0])
    out = torch.full((y.shape[0], Tc, 2), -5.0)
    out[torch.arange(len(y)), y[:, 0], 0] = 5.0
    out[torch.arange(len(y)), y[:, 1], 1] = 5.0
    m = t.metrics(t.eval_stats(out, y))
    assert m["em"] == pytest.approx(100.0) and m["f1"] == pytest.approx(100.0)
    # one token too many on every example: EM 0, F1 < 100
    shifted = torch.full_like(out, -5.0)
    shifted[torch.arange(len(y)), y[:, 0], 0] = 5.0
    shifted[torch.arange(len(y)), (y[:, 1] + 1).clamp(max=Tc - 1), 1] = 5.0
    m2 = t.metrics(t.eval_stats(shifted, y))
    assert m2["f1"] < 100.0
    assert d.ex_answers[int(y[0, 2])][0] in d.para_text[d.ex_para[int(y[0, 2])]]


def test_hf_cache_is_reused_and_a_read_only_root_falls_back(env, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    t = tiny(env)
    t.data()
    cache = Path(t.info()["cache"])
    assert cache == env["data"] / "squad" / "hf-cache"
    files = sorted(p.name for p in cache.rglob("cache-*.arrow"))
    assert files and any("tokens" in f for f in files)  # the maps' results, under their fingerprints
    t2 = tiny(env)
    t2.data()
    assert sorted(p.name for p in cache.rglob("cache-*.arrow")) == files  # read back, nothing new
    # a data root marked read-only: the cache goes to ${XDG_CACHE_HOME}/seqbench/squad/hf-cache
    ro = tmp_path / "ro"
    SQuAD.write_fake_data(ro)
    os.chmod(ro / "squad", 0o555)
    try:
        t3 = task(root=ro, split="dev-holdout", emb=8, word_count_min=0, char_count_min=0)
        t3.data()
        assert t3.info()["cache"] == str(tmp_path / "xdg" / "seqbench" / "squad" / "hf-cache")
        assert not (ro / "squad" / "hf-cache").exists()
    finally:
        os.chmod(ro / "squad", 0o755)


def test_an_unreadable_hf_cache_is_rebuilt_once_from_the_source(env, capsys):
    """A truncated Arrow copy, then a garbage map cache: each time the cache is rebuilt from the intact
    source, said in one line on stderr, and the questions are the same."""
    want = tiny(env).data().ex_ids
    capsys.readouterr()
    cache = env["data"] / "squad" / "hf-cache"
    for name, damage in (("json-train.arrow", lambda b: b[:1000]), ("cache-*tokens*.arrow", lambda b: b"x" * 5000)):
        path = next(cache.rglob(name))
        path.write_bytes(damage(path.read_bytes()))
        t = tiny(env)
        assert t.data().ex_ids == want
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("seqbench: warning: SQuAD cache ") and "is unreadable" in err[0], err
        assert str(cache) in err[0] and "rebuilding it from" in err[0] and "dev-v1.1.json.gz" in err[0]
        assert t.info()["cache"] == str(cache)
        tiny(env).data()  # rebuilt: read back silently
        assert capsys.readouterr().err == ""


def test_a_cache_that_cannot_be_rebuilt_is_one_line_naming_its_folder(env, monkeypatch):
    tiny(env).data()
    cache = env["data"] / "squad" / "hf-cache"

    def full_disk(builder, name):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(SQuAD, "table", staticmethod(full_disk))
    with pytest.raises(SeqbenchError, match="SQuAD cache .* could not be rebuilt from .*derived data") as e:
        tiny(env).data()
    assert str(cache) in str(e.value) and "\n" not in str(e.value) and "No space left" in str(e.value)


def test_a_truncated_source_without_verification_is_one_line_and_leaves_no_cache(env, tmp_path, capsys, monkeypatch):
    """SEQBENCH_VERIFY=0 (the env fixture): the JSON builder's error is one line naming the source file."""
    root = tmp_path / "cut"
    (root / "squad").mkdir(parents=True)
    with gzip.open(env["data"] / "squad" / "dev-v1.1.json.gz") as f:
        text = f.read()
    (root / "squad" / "dev-v1.1.json").write_bytes(text[: len(text) // 2])
    monkeypatch.setenv("SEQBENCH_DATA", str(root))
    res = tmp_path / "res"
    assert main(["run", "--model", "bidaf", "--task", "squad", "--preset", "tiny", "--results", str(res)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0], err
    assert err[0].startswith(f"seqbench: error: SQuAD file {root / 'squad' / 'dev-v1.1.json'} could not be read as "
                             f"SQuAD JSON: ")
    assert sorted(p.name for p in (root / "squad").iterdir()) == ["dev-v1.1.json"] and not res.exists()


def test_official_split_tests_dev_every_epoch_without_validation(env):
    t = task(env, split="official", emb=8, word_count_min=0, char_count_min=0)
    ld = t.loaders(4, 8, seed=0)
    assert set(ld) == {"train", "test"}
    d = t.data()
    assert d.facts["examples"]["train"] == 6 * 3 * 3 and d.facts["examples"]["test"] == 8 * 3 * 3
    assert t.info()["split"]["name"] == "official"
    cfg = config.resolve(registry.get_model("bidaf"), registry.get_task("squad"), "tiny",
                         {**QUICK, "task.split": "official"})
    rec = Runner(cfg, quiet=True).fit()
    assert rec["status"] == "completed" and rec["metrics"]["selection"]["reason"] == "last_no_val_split"


def test_missing_and_corrupted_files_are_one_line(env, tmp_path, capsys, monkeypatch):
    empty = tmp_path / "empty"
    empty.mkdir()
    missing = r"SQuAD v1.1 data not found: missing dev-v1.1.json in .*downloads are off"
    with pytest.raises(SeqbenchError, match=missing) as e:
        task(root=empty, split="dev-holdout").data()
    assert "\n" not in str(e.value)
    monkeypatch.setenv("SEQBENCH_VERIFY", "1")  # the generated file is not the real one
    with pytest.raises(SeqbenchError, match="md5 of its JSON text .* != expected 3e85deb501d4e538b6bc56f786231552"):
        tiny(env).data()
    monkeypatch.setenv("SEQBENCH_VERIFY", "0")
    bad = tmp_path / "bad" / "squad"
    bad.mkdir(parents=True)
    (bad / "dev-v1.1.json").write_text('{"version": "1.1", "data": [{"title": 3}]}')
    with pytest.raises(SeqbenchError, match="could not be read as SQuAD JSON"):
        task(root=tmp_path / "bad", split="dev-holdout").data()
    with pytest.raises(SeqbenchError, match="val_fraction.*test_fraction"):
        config.resolve(registry.get_model("bidaf"), registry.get_task("squad"), "tiny",
                       {"task.val_fraction": "0.5", "task.test_fraction": "0.5"})


def test_glove_vectors_are_fixed_and_frequent_unknown_words_trainable(env, tmp_path):
    glove = tmp_path / "glove.txt"
    vecs = {"the": [0.5] * 8, "ball": [0.25] * 8, "red": [-1.0] * 8}
    glove.write_text("".join(f"{w} {' '.join(map(str, v))}\n" for w, v in vecs.items()))
    t = tiny(env, glove=str(glove), word_count_min=5)
    d = t.data()
    assert d.glove.shape == (3, 8) and d.facts["word_vocab"]["glove_fixed"] == 3
    model = t.wrap(BiDAF(8, BiDAF.Params(hidden=4, char_dim=3, char_filters=4, char_width=3)))
    assert not any("fixed" in n for n, _ in model.named_parameters())  # a buffer: not trained, not counted
    glove_ids = torch.arange(d.n_words, d.n_words + 3)  # in the order of the sorted words: ball, red, the
    assert torch.equal(model.words(glove_ids), torch.tensor([vecs["ball"], vecs["red"], vecs["the"]]))
    ctx_words = {w for p in d.para_words for w in p.tolist()}
    assert set(glove_ids.tolist()) <= ctx_words  # "The" in the text is GloVe's "the"
    # frequent words GloVe lacks ("is", "and") are trainable rows; words it has are not
    plain = tiny(env, word_count_min=5).data()
    assert d.n_words == plain.n_words - 3 and d.n_words > 2
    with pytest.raises(SeqbenchError, match="expected task.emb = 16"):
        tiny(env, glove=str(glove), emb=16).data()


# ----------------------------------------------------------------------------------------- BiDAF
def test_parameter_count_at_d100_without_embeddings():
    d = 100
    m = BiDAF(100, BiDAF.Params(hidden=d))
    lstm = lambda i, h: 4 * h * i + 4 * h * h + 8 * h  # noqa: E731  torch: two bias vectors
    want = (5 * 8 * 100 + 100) + 2 * 2 * (200 * 200 + 200) + 2 * lstm(200, d) + (6 * d + 1) \
        + 2 * lstm(8 * d, d) + 2 * lstm(2 * d, d) + (10 * d + 1) + 2 * lstm(14 * d, d) + (10 * d + 1)
    n = sum(p.numel() for p in m.parameters())
    assert n == want == 2_573_903
    assert n - 8 * 4 * d == 2_570_703  # TF's LSTMs have one bias vector: 8 directions x 4d fewer
    # the ISS paper's "2.69M weights" is not this count (see models/bidaf.py); the grouped LSTMs
    assert sum(p.numel() for mod in (m.g0, m.g1, m.g2) for p in mod.parameters()) == 2_164_800


def _small(seed=0, **kw):
    torch.manual_seed(seed)
    m = BiDAF(6, BiDAF.Params(hidden=3, char_dim=2, char_filters=3, char_width=2, dropout=0.0, **kw)).double()
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0.0, 0.5)
    return m.eval()


def _entries(s: iss.Slice, k: int) -> set:
    idx = s.index([k]).tolist()
    if s.tensor.dim() == 1:
        return {(s.name, i) for i in idx}
    if s.dim == 0:
        return {(s.name, i, j) for i in idx for j in range(s.tensor.shape[1])}
    return {(s.name, i, j) for i in range(s.tensor.shape[0]) for j in idx}


def test_iss_groups_by_hand():
    """d = 3 (G = 24 wide), every direction 3 units. Unit k of a direction: rows k, 3+k, 6+k, 9+k of
    its weight_ih and weight_hh, column k of weight_hh, and the columns that read it downstream."""
    m = _small()
    groups = {g.name: g for g in m.iss_groups()}
    assert list(groups) == ["g0.fw", "g0.bw", "g1.fw", "g1.bw", "g2.fw", "g2.bw"]

    def own(name, k):
        rows = [k, 3 + k, 6 + k, 9 + k]
        w_ih, w_hh = f"{name}.weight_ih_l0", f"{name}.weight_hh_l0"
        n_in = m.get_submodule(name).input_size
        return ({(w_ih, r, j) for r in rows for j in range(n_in)} | {(w_hh, r, j) for r in rows for j in range(3)}
                | {(w_hh, r, k) for r in range(12)})

    def cols(name, c, rows=12):
        return {(name, r, c) for r in range(rows)}

    # g1 reads [g0.fw ; g0.bw] (6 wide); logits1 reads [M (g1.fw, g1.bw) ; G]; g2 reads [G ; M ; a ; M * a]
    # (24 + 6 + 6 + 6 = 42 wide); logits2 reads [M2 ; G]
    want = {}
    for k in range(3):
        want[("g0.fw", k)] = own("g0.fw", k) | cols("g1.fw.weight_ih_l0", k) | cols("g1.bw.weight_ih_l0", k)
        want[("g0.bw", k)] = own("g0.bw", k) | cols("g1.fw.weight_ih_l0", 3 + k) | cols("g1.bw.weight_ih_l0", 3 + k)
        for name, base in (("g1.fw", 0), ("g1.bw", 3)):
            e = own(name, k) | cols("logits1.weight", base + k, rows=1)
            for reader in ("g2.fw.weight_ih_l0", "g2.bw.weight_ih_l0"):
                e |= cols(reader, 24 + base + k) | cols(reader, 30 + base + k) | cols(reader, 36 + base + k)
            want[(name, k)] = e
        want[("g2.fw", k)] = own("g2.fw", k) | cols("logits2.weight", k, rows=1)
        want[("g2.bw", k)] = own("g2.bw", k) | cols("logits2.weight", 3 + k, rows=1)
    for (name, k), ents in want.items():
        got = set().union(*(_entries(s, k) for s in groups[name].slices if s.penalised))
        assert got == ents, (name, k, sorted(got ^ ents)[:5])
        carried = set().union(*(_entries(s, k) for s in groups[name].slices if not s.penalised))
        rows = [k, 3 + k, 6 + k, 9 + k]
        assert carried == {(f"{name}.bias_{b}_l0", r) for b in ("ih", "hh") for r in rows}
    # the Lasso of one component by hand: sqrt of its sum of squares (+1e-8), lam-weighted
    lam = 0.3
    m.p.lam = lam
    named = {n: p.detach() for n, p in m.named_parameters()}

    def sq(ents):
        return sum(float(named[e[0]][e[1:]]) ** 2 for e in ents) + sum(  # self-connections counted twice
            float(named[f"{n}.weight_hh_l0"][r, k]) ** 2 for (n, k) in [key] for r in [k, 3 + k, 6 + k, 9 + k])

    total = 0.0
    for key, ents in want.items():
        total += math.sqrt(sq(ents) + iss.EPS)
    assert float(m.regularization().detach()) == pytest.approx(lam * total, rel=1e-9)
    # the contextual LSTM, attention, highway and char CNN are in no group
    grouped = {s.name for g in groups.values() for s in g.slices}
    assert not any(n.startswith(("ctx.", "att.", "highway.", "char_conv.")) for n in grouped)


def _batch(B=3, Tc=9, Tq=4, W=5, seed=1):
    g = torch.Generator().manual_seed(seed)
    f64 = torch.float64
    cw, qw = torch.randn(B, Tc, 6, generator=g, dtype=f64), torch.randn(B, Tq, 6, generator=g, dtype=f64)
    cc, qc = torch.randn(B, Tc, W, 2, generator=g, dtype=f64), torch.randn(B, Tq, W, 2, generator=g, dtype=f64)
    cm = torch.arange(Tc)[None] < torch.tensor([[Tc], [5], [7]])[:B]
    qm = torch.arange(Tq)[None] < torch.tensor([[Tq], [2], [3]])[:B]
    return cw, cc, qw, qc, cm, qm


def _zero(m, dead: dict, skip=()):
    with torch.no_grad():
        for g in m.iss_groups():
            if g.name in dead:
                for s in g.slices:
                    if s.penalised and (s.name, s.offset) not in skip:
                        s.tensor.index_fill_(s.dim, s.index(dead[g.name]), 0.0)


def test_pruned_equals_masked_and_counts():
    m = _small(seed=2)
    dead = {"g0.fw": [0, 2], "g0.bw": [1], "g1.fw": [2], "g1.bw": [0, 1], "g2.fw": [1], "g2.bw": [0, 2]}
    _zero(m, dead)
    b = _batch()
    ref = m(*b)
    small, head = m.pruned(None)
    assert head is None and small.sizes == [1, 2, 2, 1, 2, 1] and small.pruned_from == [3] * 6
    assert small.p.sizes == "1,2,2,1,2,1"
    out = small(*b)
    valid = b[4].unsqueeze(-1).expand_as(ref)
    assert (out - ref)[valid].abs().max() < 1e-12
    st = m.structure()
    assert st["kept"] == dict(zip(["g0.fw", "g0.bw", "g1.fw", "g1.bw", "g2.fw", "g2.bw"], [1, 2, 2, 1, 2, 1]))
    assert st["params_pruned"] == sum(p.numel() for p in small.parameters())
    assert st["params"] == sum(p.numel() for p in m.parameters())
    assert small.pruned(None) is None and small.flops(9, 4, 5) < m.flops(9, 4, 5)
    # a whole direction zero keeps one unit (a zero-width LSTM cannot be built); outputs still equal
    m2 = _small(seed=3)
    _zero(m2, {"g2.bw": [0, 1, 2]})
    s2, _ = m2.pruned(None)
    assert s2.sizes == [3, 3, 3, 3, 3, 1]
    assert (s2(*b) - m2(*b))[valid].abs().max() < 1e-12


def test_the_a_columns_make_g1_groups_exact():
    """The reference's groups lack g2's columns for a = sum_t p_t M_t: a g1 unit zero in every other
    entry still reaches g2 through them (its output is bias-driven, not zero). Our groups include
    them: such a unit is not counted as removable; zeroing those columns too makes it removable."""
    m = _small(seed=4)
    G, K1 = 24, 6
    a_cols = {("g2.fw.weight_ih_l0", G + K1), ("g2.bw.weight_ih_l0", G + K1)}  # the a part of g1.fw
    _zero(m, {"g1.fw": [1]}, skip=a_cols)
    z = dict(zip([g.name for g in m.iss_groups()], iss.zero_components(m.iss_groups())))
    assert not z["g1.fw"][1]  # the reference would count it removed; its a-columns still read it
    b = _batch()
    ref = m(*b)
    with torch.no_grad():  # what removing it does: its a-columns stop being read
        m.g2.fw.weight_ih_l0[:, G + K1 + 1] = 0
        m.g2.bw.weight_ih_l0[:, G + K1 + 1] = 0
    changed = m(*b)
    assert (changed - ref)[b[4].unsqueeze(-1).expand_as(ref)].abs().max() > 1e-6
    assert iss.zero_components(m.iss_groups())[2][1]  # now the whole group is zero: removable


def test_threshold_touches_the_references_scopes_only():
    m = _small(seed=5, threshold=0.3)
    before = {n: p.detach().clone() for n, p in m.named_parameters()}
    m.after_step()
    for n, p in m.named_parameters():
        if n.startswith(("char_conv.", "highway.")):
            assert torch.equal(p, before[n])
        else:
            small = before[n].abs() < 0.3
            assert torch.all(p[small] == 0) and torch.equal(p[~small], before[n][~small])


def test_runner_with_iss_prunes_records_kept_components_and_saves(env):
    """Threshold 1 zeroes every grouped weight after the first step: one unit per direction
    survives; the record keeps the kept counts, pruned.pt the small model, EMA included."""
    over = {**QUICK, "model.lam": "0.01", "model.threshold": "1.0", "ema": "0.9"}
    cfg = config.resolve(registry.get_model("bidaf"), registry.get_task("squad"), "tiny", over)
    rec = Runner(cfg, quiet=True).fit()
    assert rec["status"] == "completed", rec["failure"]
    st, meas = rec["measure"]["structure"], rec["measure"]
    assert st["sizes"] == [1] * 6 and st["pruned_from"] == [4] * 6
    assert meas["pruning"]["before"]["params"]["total"] > meas["params"]["total"]
    assert meas["pruning"]["before"]["flops_per_sample"] > meas["flops_per_sample"]
    small = build(cfg, data=False).model  # pruned.pt holds weights and widths (plain data), not the module
    load_pruned(small, torch.load(meas["pruning"]["file"], weights_only=True))
    assert small.backbone.sizes == [1] * 6
    assert rec["task_info"]["split"]["comparable_with_published"] is False
    assert set(rec["metrics"]["test"]) == {"f1", "em", "loss"}


def test_presets_and_init_from_for_iss_fine_tuning(env):
    entry, t = registry.get_model("bidaf"), registry.get_task("squad")
    names = config.preset_names(entry.cls, t.cls, "squad")
    assert {"fast-iss", "paper-iss"} <= set(names)
    p = config.resolve(entry, t, "paper-iss")
    mp = p.model_params
    assert (mp.lam, mp.threshold, mp.dropout, mp.hidden) == (0.001, 4e-4, 0.1, 100)
    assert (p.train.batch_size, p.train.lr, p.train.ema, p.task_params.split) == (60, 1e-3, 0.999, "official")
    f = config.resolve(entry, t, "fast-iss")
    assert f.task_params.split == "dev-holdout"
    assert f.model_params.hidden == config.resolve(entry, t, "fast").model_params.hidden
    dense = Runner(config.resolve(entry, t, "tiny", QUICK), quiet=True)
    dense.fit()
    over = {**QUICK, "model.lam": "0.01", "init_from": dense.run_id}
    rec = Runner(config.resolve(entry, t, "tiny", over), quiet=True).fit()
    assert rec["init_from"]["run_id"] == dense.run_id
    assert main(["run", "--model", "bidaf", "--task", "squad", "--preset", "tiny", "--set", "model.sizes=1,2"]) == 2


def test_bench_a_trained_bidaf_run_against_its_pruned_model(env, capsys):
    """``seqbench bench --run`` on a QA run (EMA on: best.pt holds the thresholded average): the
    model rebuilt as the run built it, pruned, both timed at batch 1 (the plumbing, not the times)."""
    over = {**QUICK, "model.lam": "0.01", "model.threshold": "1.0", "ema": "0.5"}
    rec = Runner(config.resolve(registry.get_model("bidaf"), registry.get_task("squad"), "tiny", over),
                 quiet=True).fit()
    out = env["tmp"] / "bench"
    assert main(["bench", "--run", rec["run_id"], "--batch-size", "2", "--out", str(out), "--rounds", "2",
                 "--min-run-time", "0.01", "--threads", "1"]) == 0
    res = json.loads(next(out.glob("*.json")).read_text())
    rows = {r["contender"]: r for r in res["tables"][0]["rows"]}
    assert set(rows) == {"trained", "pruned"} and res["tables"][0]["batch"] == 1
    assert rows["pruned"]["rel_err_vs_trained"] < 1e-5
    assert rows["trained"]["params"] > rows["pruned"]["params"] and rows["trained"]["flops"] > rows["pruned"]["flops"]
    assert rows["pruned"]["params"] == rec["measure"]["params"]["total"]  # the model the run tested


def test_example_batch_without_data_files(tmp_path):
    """No files: nominal vocabulary sizes, the training layout, dev's mean lengths after trimming."""
    t = task(root=tmp_path / "nothing", split="dev-holdout", emb=8)
    assert not t.has_files()
    x, y = t.example_batch(2)
    assert x.shape == (2, 3 + 430 + 430 * 16) and y.shape == (2, 3)
    cw, qw, cc, qc = trim(*unpack(x))
    assert cw.shape == (2, 145) and qw.shape == (2, 12) and cc.shape == (2, 145, 12)
    net = t.wrap(BiDAF(8, BiDAF.Params(hidden=4, char_dim=3, char_filters=4, char_width=3)))
    assert net.words.n == 10_000 and net.nominal == (145, 12, 12)
    out, _ = net(x)
    assert out.shape == (2, 145, 2) and torch.isfinite(t.loss(out, y))
