"""PTB language modelling (tasks/ptb.py): tokens and vocabulary, batchify layout, perplexity over
the whole stream, checksums of the text inside .gz files, presets. Generated data only, offline."""
import gzip
import hashlib
import math
import shutil

import pytest
import torch

from seqbench import config, registry
from seqbench.errors import SeqbenchError
from seqbench.runner import Runner
from seqbench.tasks import ptb as P
from conftest import QUICK

SPLIT_FILES = ("train", "valid", "test")


def _task(name, root, **params):
    cls = registry.get_task(name).cls
    return cls(cls.Params(**params), root)


def _write(folder, prefix, texts, gz=False):
    folder.mkdir(parents=True, exist_ok=True)
    for split, text in zip(SPLIT_FILES, texts):
        if gz:
            with gzip.open(folder / f"{prefix}{split}.txt.gz", "wb") as f:
                f.write(text.encode())
        else:
            (folder / f"{prefix}{split}.txt").write_text(text)


# ----------------------------------------------------------------------------- tokens, vocabulary
def test_tokens_eos_and_vocabulary_on_a_hand_written_corpus(env, tmp_path):
    corpus = " a b c \n b c \n c \n"
    assert P.tokenize(corpus) == ["a", "b", "c", "<eos>", "b", "c", "<eos>", "c", "<eos>"]
    # an empty line is a bare <eos>; a last line without newline counts; trailing blanks do not
    assert P.tokenize("a\n\nb") == ["a", "<eos>", "<eos>", "b", "<eos>"]
    assert P.tokenize("a \n ") == ["a", "<eos>"]
    # frequency descending, ties by token: c 3, <eos> 3 ('<' < 'c'), b 2, a 1
    vocab = P.build_vocab(P.tokenize(corpus))
    assert vocab == {"<eos>": 0, "c": 1, "b": 2, "a": 3}
    assert P.build_vocab(P.tokenize(" c \n b c \n a b c \n")) == vocab  # independent of line order

    root = tmp_path / "hand"
    _write(root / "ptb", "ptb.", [corpus, " c b \n", " a \n"])
    t = _task("ptb", root)
    st = t.corpus()["streams"]
    assert st["train"].tolist() == [3, 2, 1, 0, 2, 1, 0, 1, 0]
    assert st["val"].tolist() == [1, 2, 0] and st["test"].tolist() == [3, 0]
    assert t.spec().d_output == 4 and t.info()["vocab_size"] == 4

    _write(root / "ptb", "ptb.", [corpus, " c z \n", " a \n"])
    with pytest.raises(SeqbenchError, match="not in the training vocabulary") as e:
        _task("ptb", root).corpus()
    assert "\n" not in str(e.value)


def test_fake_char_files_spell_the_word_files(env):
    w, c = _task("ptb", env["data"]).corpus(), _task("ptb-char", env["data"]).corpus()
    for split in ("train", "val", "test"):
        inv_w = {i: s for s, i in w["vocab"].items()}
        inv_c = {i: s for s, i in c["vocab"].items()}
        words = " ".join(inv_w[i] for i in w["streams"][split].tolist())
        chars = "".join(inv_c[i] if inv_c[i] != "<eos>" else " <eos> " for i in c["streams"][split].tolist())
        assert " ".join(chars.replace("_", " ").split()) == words
    assert "_" in c["vocab"] and "<eos>" in c["vocab"]


def test_txt_and_txt_gz_give_identical_ids(env, tmp_path):
    plain = tmp_path / "plain"
    (plain / "ptb").mkdir(parents=True)
    for gz in (env["data"] / "ptb").glob("*.gz"):
        with gzip.open(gz, "rb") as f:
            (plain / "ptb" / gz.name[:-3]).write_bytes(f.read())
    for name in ("ptb", "ptb-char"):
        a, b = _task(name, env["data"]).corpus(), _task(name, plain).corpus()
        assert a["vocab"] == b["vocab"]
        for s in a["streams"]:
            assert torch.equal(a["streams"][s], b["streams"][s])


# ---------------------------------------------------------------------------------- checksums
def test_md5_is_of_the_text_and_a_mismatch_is_one_line(env, tmp_path, monkeypatch):
    folder = tmp_path / "copy" / "ptb"
    shutil.copytree(env["data"] / "ptb", folder)
    sums = {}
    for split in SPLIT_FILES:
        with gzip.open(folder / f"ptb.{split}.txt.gz", "rb") as f:
            sums[f"ptb.{split}.txt"] = hashlib.md5(f.read()).hexdigest()
    monkeypatch.setattr(P.PTB, "md5", sums)
    monkeypatch.setenv("SEQBENCH_VERIFY", "1")
    t = _task("ptb", folder.parent)
    assert t.info()["md5_checked"] == sums  # the .gz files pass: the sum is of their text
    monkeypatch.setenv("SEQBENCH_VERIFY", "0")  # generated data: no check
    assert _task("ptb", folder.parent).info()["md5_checked"] is None

    monkeypatch.setenv("SEQBENCH_VERIFY", "1")
    with gzip.open(folder / "ptb.valid.txt.gz", "wb") as f:
        f.write(b" a corrupted line \n")
    with pytest.raises(SeqbenchError, match="corrupted: md5") as e:
        _task("ptb", folder.parent).corpus()
    assert "\n" not in str(e.value) and "ptb.valid.txt.gz" in str(e.value)


def test_missing_files_offline_is_one_line(env, tmp_path):
    with pytest.raises(SeqbenchError, match="PTB data not found") as e:
        _task("ptb-char", tmp_path / "empty").corpus()
    assert "\n" not in str(e.value) and "ptb.char.train.txt" in str(e.value)


# ------------------------------------------------------------------------------------ batchify
def _consecutive(loader):
    """Row r of batch i+1 continues row r of batch i (where it is not padding)."""
    batches = list(loader)
    for (x, y), (x2, y2) in zip(batches, batches[1:]):
        real = y2[:, 0] != P.IGNORE
        assert torch.equal(y[real, -1], x2[real, 0])
    for x, y in batches:
        real = y[:, 1:] != P.IGNORE
        assert torch.equal(x[:, 1:][real], y[:, :-1][real])
    return batches


def test_train_batchify_rows_continue_across_batches():
    stream = torch.arange(103)
    loader = P.batchify_train(stream, rows=4, bptt=5)  # 25 columns, 3 tokens dropped
    batches = _consecutive(loader)
    assert len(loader) == len(batches) == 5 and batches[-1][0].shape == (4, 4)  # last chunk shorter
    x = torch.cat([b[0] for b in batches], 1)
    y = torch.cat([b[1] for b in batches], 1)
    assert torch.equal(x, torch.arange(100).view(4, 25)[:, :-1])
    assert torch.equal(y, torch.arange(100).view(4, 25)[:, 1:])
    assert loader.num_samples == 96


@pytest.mark.parametrize("rows", [1, 3, 10, 200])
def test_eval_batchify_scores_every_target_once(rows):
    stream = torch.arange(103)
    loader = P.batchify_eval(stream, rows=rows, bptt=5)
    batches = _consecutive(loader)
    y = torch.cat([b[1] for b in batches], 1)
    x = torch.cat([b[0] for b in batches], 1)
    kept = y != P.IGNORE
    assert y[kept].sort().values.tolist() == list(range(1, 103))  # each target exactly once
    assert torch.equal(x[kept] + 1, y[kept])  # each next to its own input
    assert loader.num_samples == 102
    for r in range(y.shape[0]):  # padding only at the end of a row
        k = int(kept[r].sum())
        assert kept[r, :k].all() and not kept[r, k:].any()


def test_task_loaders_are_stateful_streams(env):
    t = _task("ptb", env["data"], bptt=7)
    n = {s: len(v) for s, v in t.corpus()["streams"].items()}
    ld = t.loaders(batch_size=4, eval_batch_size=3, seed=0)
    for split in ld:
        _consecutive(ld[split])
    assert ld["train"].num_samples == 4 * (n["train"] // 4 - 1)
    assert ld["val"].num_samples == n["val"] - 1 and ld["test"].num_samples == n["test"] - 1
    a, b = [x for x, _ in ld["train"]], [x for x, _ in t.loaders(4, 3, seed=5)["train"]]
    assert all(torch.equal(u, v) for u, v in zip(a, b))  # fixed order, whatever the seed


# -------------------------------------------------------------------------------------- metrics
def _runner(task="ptb", model="lstm", **over):
    cfg = config.resolve(registry.get_model(model), registry.get_task(task), "tiny",
                         {**QUICK, "limit_batches": 0, "task.eval_tokens": None, **over})
    assert cfg.train.strategy == "stateful"
    return Runner(cfg, quiet=True)


def _eval(runner, eval_batch_size):
    t = runner.cfg.train
    runner.setup.loaders = runner.setup.task.loaders(t.batch_size, eval_batch_size, t.seed)
    return runner.setup.evaluate("val")


def test_perplexity_does_not_depend_on_the_eval_batch_size(env, one_thread):
    # An LSTM that forgets at every step (forget gate closed, no recurrent weights): each
    # prediction depends on its own input only, so B = 1, 3 and 10 rows must agree to rounding;
    # dropping the remainder (10 tokens here) would show at ~1e-5.
    runner = _runner()
    rnn = runner.setup.backbone.rnn
    with torch.no_grad():
        rnn.weight_hh_l0.zero_()
        rnn.bias_ih_l0[16:32] = -1e4
    res = {b: _eval(runner, b) for b in (1, 3, 10)}
    for b in (3, 10):
        assert res[b]["ppl"] == pytest.approx(res[1]["ppl"], rel=1e-6)


def test_perplexity_with_memory_is_the_rows_scored_from_zero_states(env, one_thread):
    # A random LSTM with memory: B rows cost B - 1 restarts from a zero state, the one thing that
    # still depends on B. The B = 10 number is exactly the sum over its 10 row segments each
    # evaluated alone (every target once), and within 1e-3 of the full-context B = 1 number.
    runner = _runner()
    stream = runner.setup.task.corpus()["streams"]["val"]
    ten, one = _eval(runner, 10), _eval(runner, 1)
    loader = P.batchify_eval(stream, 10, 5)
    nll, count = 0.0, 0
    for r in range(10):
        k = int((loader.y[r] != P.IGNORE).sum())
        seg = torch.cat([loader.x[r, :k], loader.y[r, k - 1 : k]])
        runner.setup.loaders["val"] = P.batchify_eval(seg, 1, 5)
        m = runner.setup.evaluate("val")
        nll, count = nll + m["loss"] * k, count + k
    assert count == len(stream) - 1
    assert ten["loss"] == pytest.approx(nll / count, rel=1e-6)
    assert ten["ppl"] == pytest.approx(one["ppl"], rel=1e-3)


@pytest.mark.parametrize("task", ["ptb", "ptb-char"])
def test_uniform_logits_score_the_vocabulary_size(env, task, one_thread):
    runner = _runner(task)
    with torch.no_grad():
        runner.setup.model.head.weight.zero_()
        runner.setup.model.head.bias.zero_()
    v = runner.setup.spec.d_output
    for split in ("val", "test"):
        m = runner.setup.evaluate(split)
        if task == "ptb":
            assert m["ppl"] == pytest.approx(v, rel=1e-6)  # float32 token NLLs
        else:
            assert m["bpc"] == pytest.approx(math.log2(v), rel=1e-6)
        assert m["loss"] == pytest.approx(math.log(v), rel=1e-6)


# ---------------------------------------------------------------------------------------- model
def test_wrap_tie_init_and_flops(env):
    t = _task("ptb", env["data"], emb=16, bptt=5, tie=True, init_range=0.05)
    lstm = registry.get_model("lstm").cls
    model = t.wrap(lstm(16, lstm.Params(hidden=16)))
    assert model.head.weight is model.embedding.weight
    assert model.embedding.weight.abs().max() <= 0.05 and not model.head.bias.any()
    x = torch.randint(0, t.spec().d_output, (3, 5))
    out, state = model(x)
    assert out.shape == (3, 5, t.spec().d_output) and len(state) == 2
    h, v = 16, t.spec().d_output
    assert model.flops_per_sample() == 5 * (model.backbone.flops_per_step() + 2 * h * v + v)
    with pytest.raises(SeqbenchError, match="task.tie needs") as e:
        t.wrap(lstm(16, lstm.Params(hidden=8)))
    assert "\n" not in str(e.value)


def test_presets_resolve_and_follow_the_papers():
    lstm, ptb, char = registry.get_model("lstm"), registry.get_task("ptb"), registry.get_task("ptb-char")
    for task, names in ((ptb, ("tiny", "fast", "paper", "small", "medium", "large")), (char, ("tiny",))):
        for name in names:
            cfg = config.resolve(lstm, task, name)
            assert cfg.train.strategy == "stateful" and cfg.train.optimizer == "sgd"
    assert config.resolve(lstm, char, "fast").train.strategy == "stateful"
    r = lambda name: config.resolve(lstm, ptb, name)  # noqa: E731
    small, medium, large, paper = r("small"), r("medium"), r("large"), r("paper")
    # lr and clip in the papers' units (their loss sums the bptt steps; ours is the per-token mean):
    # lr_paper = lr / bptt, clip_paper = clip * bptt
    zaremba = [(c.train.epochs, c.task_params.bptt, c.train.lr_hold, c.train.lr_gamma,
                round(c.train.grad_clip * c.task_params.bptt, 9), c.task_params.dropout, c.task_params.init_range,
                c.train.batch_size, c.train.lr / c.task_params.bptt, c.train.schedule)
               for c in (small, medium, large)]
    assert zaremba == [(13, 20, 4, 0.5, 5.0, 0.0, 0.1, 20, 1.0, "decay_after"),
                       (39, 35, 6, 0.8, 5.0, 0.5, 0.05, 20, 1.0, "decay_after"),
                       (55, 35, 14, 1 / 1.15, 10.0, 0.65, 0.04, 20, 1.0, "decay_after")]
    t = paper.train
    assert (t.epochs, t.batch_size, t.lr / 35, t.schedule, t.lr_step, t.lr_gamma, round(t.grad_clip * 35, 9)) == \
        (55, 20, 1.0, "step", 18, 0.1, 10.0)
    assert (paper.task_params.bptt, paper.task_params.dropout) == (35, 0.4)


def test_every_models_ptb_preset_trains_statefully_with_sgd():
    """A model's own ptb presets (iss-lstm's small/medium/large, rhn's paper-iss, ...) keep the
    task's protocol, also under a name the task itself does not define."""
    ptb = registry.get_task("ptb")
    seen = 0
    for entry in registry.models().values():
        for key in getattr(entry.cls, "presets", {}) or {}:
            task, _, name = key.rpartition(":")
            if task == "ptb":
                cfg = config.resolve(entry, ptb, name)
                assert (cfg.train.strategy, cfg.train.optimizer) == ("stateful", "sgd"), (entry.name, name)
                seen += 1
    assert seen >= 8


def test_rhn_paper_presets_follow_the_reference():
    """rhns/rhn_train.py ptb_sota and ptb_iss_sota, lr and clip in our per-token units."""
    rhn, ptb = registry.get_model("rhn"), registry.get_task("ptb")
    base, iss = config.resolve(rhn, ptb, "paper"), config.resolve(rhn, ptb, "paper-iss")
    for c in (base, iss):
        m, t, tr = c.model_params, c.task_params, c.train
        assert (m.hidden, m.depth, t.emb, t.tie, t.variational, t.bptt, tr.batch_size, tr.eval_batch_size) == \
            (830, 10, 830, True, True, 35, 20, 1)
        assert (tr.lr / 35, round(tr.grad_clip * 35, 9), tr.lr_hold, tr.lr_gamma) == (0.2, 10.0, 20, 1 / 1.02)
        assert tr.weight_decay * 35 == pytest.approx(1e-7)
    drops = lambda c: (c.task_params.word_dropout, c.task_params.dropout, c.model_params.drop_h)  # noqa: E731
    assert drops(base) == (0.25, 0.75, 0.25) and drops(iss) == pytest.approx((0.15, 0.45, 0.15))
    assert (base.train.epochs, base.model_params.lam) == (500, 0.0)
    got = (iss.train.epochs, iss.model_params.lam * 35, iss.model_params.threshold)
    assert got == (150, pytest.approx(0.005), 4e-4)


# -------------------------------------------------------------------------------------- dropout
def test_word_dropout_drops_word_types_per_row():
    torch.manual_seed(0)
    x = torch.tensor([[5, 7, 5, 9, 7, 5] * 4, [1, 2, 3, 1, 2, 3] * 4])
    for _ in range(20):
        m = P.word_mask(x, 0.5, torch.ones(1))
        assert set(m.unique().tolist()) <= {0.0, 2.0}
        for r in range(2):
            for w in x[r].unique():
                assert m[r][x[r] == w].unique().numel() == 1  # every occurrence shares one draw
    draws = torch.stack([P.word_mask(torch.arange(1000)[None], 0.25, torch.ones(1)) for _ in range(4)])
    assert draws.mean().item() == pytest.approx(1.0, abs=0.05)  # inverted dropout keeps the mean
    assert (draws == 0).float().mean().item() == pytest.approx(0.25, abs=0.03)


def test_variational_dropout_holds_one_mask_over_time_and_is_off_in_eval():
    torch.manual_seed(0)
    x = torch.ones(3, 7, 50)
    var, std = P.SeqDropout(0.5, True), P.SeqDropout(0.5, False)
    y = var(x)
    assert torch.equal(y, y[:, :1].expand_as(y)) and not torch.equal(y[0], y[1])
    z = std(x)
    assert not torch.equal(z[:, 0], z[:, 1])  # Zaremba's: a fresh mask every step
    var.eval(), std.eval()
    assert torch.equal(var(x), x) and torch.equal(std(x), x)


def test_language_model_dropouts_act_only_in_training(env):
    t = _task("ptb", env["data"], emb=8, bptt=6, dropout=0.5, variational=True, word_dropout=0.3)
    lstm = registry.get_model("lstm").cls
    torch.manual_seed(0)
    model = t.wrap(lstm(8, lstm.Params(hidden=8)))
    x = torch.randint(0, t.spec().d_output, (4, 6))
    model.train()
    a, b = model(x)[0], model(x)[0]
    assert not torch.allclose(a, b)
    model.eval()
    assert torch.equal(model(x)[0], model(x)[0])
