"""``seqbench bench``: contenders built as runs build them, timed side by side, no data files; a
trained run against its pruned model. The timings themselves are not asserted (never a timing
assertion in a unit test): the plumbing, the table, the JSON and the report section are."""
import json
import statistics
from pathlib import Path

import pytest

from seqbench import bench, config, fused, registry
from seqbench.bench import parse_contenders
from seqbench.cli import main
from seqbench.report import build
from seqbench.runner import Runner
from conftest import QUICK

FAST = ["--rounds", "2", "--min-run-time", "0.01", "--threads", "1"]
FRESH_RSS = bench.fresh_rss


@pytest.fixture(autouse=True)
def rss_in_this_process(request, monkeypatch):
    """The CPU memory column as measured in this process: the command's fresh process per contender costs
    ~3 s each (torch's import); the tests named *fresh_process* measure it as the command does."""
    if "fresh_process" not in request.node.name:
        monkeypatch.setattr(bench, "fresh_rss", lambda contenders, job: None)


def test_contender_list_keeps_widths_together():
    assert parse_contenders("lstm,hippo+step=fast") == ["lstm", "hippo+step=fast"]
    assert parse_contenders("iss-lstm+sizes=1500,1500,iss-lstm+sizes=373,315") == \
        ["iss-lstm+sizes=1500,1500", "iss-lstm+sizes=373,315"]


def test_bench_without_data_files(tmp_path, monkeypatch, capsys):
    """No data root at all: the inputs come from the tasks' shapes (PTB: Mikolov's vocabulary)."""
    monkeypatch.setenv("SEQBENCH_DATA", str(tmp_path / "nothing"))
    monkeypatch.setenv("SEQBENCH_DOWNLOAD", "0")
    out = tmp_path / "bench"
    assert main(["bench", "--task", "pmnist", "--models", "lstm,gru+hidden=8,hippo+step=fast", "--preset", "tiny",
                 "--batch-size", "4", "--out", str(out), *FAST]) == 0
    printed = capsys.readouterr().out
    assert "| contender | impl | median_ms" in printed and "hippo+step=fast" in printed
    res = json.loads(next(out.glob("bench-pmnist-*.json")).read_text())
    assert [(t["mode"], t["batch"]) for t in res["tables"]] == [("train", 4), ("infer", 1), ("infer", 4)]
    for t in res["tables"]:
        rows = {r["contender"]: r for r in t["rows"]}
        assert set(rows) == {"lstm", "gru+hidden=8", "hippo+step=fast"}
        assert rows["lstm"]["ratio"] == 1.0 and all(r["median_ms"] > 0 and r["flops"] > 0 for r in rows.values())
        assert len(t["round_times_s"]["lstm"]) == 2
        times = t["round_times_s"]
        for n, r in rows.items():  # both ratios, as named: the median of the rounds' ratios, and of the medians
            assert r["ratio"] == statistics.median(a / b for a, b in zip(times[n], times["lstm"]))
            assert r["ratio_of_medians"] == statistics.median(times[n]) / statistics.median(times["lstm"])
    assert "| contender | impl | median_ms | iqr_ms | min_ms | ratio_paired | ratio_of_medians |" in printed
    fused_here = "fused" if fused.kernels() is not None else "eager"  # the fused cells, where they build
    assert {r["contender"]: r["impl"] for r in res["tables"][0]["rows"]} == {
        "lstm": "library kernel", "gru+hidden=8": "library kernel", "hippo+step=fast": fused_here}
    assert "ratio_paired: the median over 2 interleaved rounds of the time / lstm's" in printed
    assert res["configs"]["gru+hidden=8"]["model.hidden"] == 8
    assert res["configs"]["hippo+step=fast"]["model.step"] == "fast"
    assert res["threads"] == 1
    train = {r["contender"]: r for r in res["tables"][0]["rows"]}
    assert train["lstm"]["flops"] == 3 * 4 * res["tables"][1]["rows"][0]["flops"]  # 3 passes x batch 4
    assert main(["bench", "--task", "ptb", "--models", "iss-lstm+sizes=8,8,iss-lstm+sizes=3,2", "--preset", "tiny",
                 "--mode", "infer", "--batch-size", "2", "--set", "task.emb=8", "--out", str(out), *FAST]) == 0
    ptb = json.loads(sorted(out.glob("bench-ptb-*.json"))[-1].read_text())
    assert ptb["tables"][0]["rows"][0]["ms_per_step"] > 0  # per token at batch 1


def test_infer_mode_takes_no_training_step(tmp_path, monkeypatch):
    """--mode infer builds, warms and times without a training step (a task whose loss needs its data
    files, CamVid's class weights, must not be asked for them) and makes no training batch."""
    def no_step(*a, **k):
        raise AssertionError("a training step in --mode infer")

    monkeypatch.setattr(bench.Setup, "step", no_step)
    monkeypatch.setenv("SEQBENCH_DATA", str(tmp_path / "nothing"))
    monkeypatch.setenv("SEQBENCH_DOWNLOAD", "0")
    assert main(["bench", "--task", "pmnist", "--models", "lstm,gru", "--preset", "tiny", "--mode", "infer",
                 "--batch-size", "2", "--out", str(tmp_path / "b"), *FAST]) == 0
    got = bench.build_contenders(["lstm"], "pmnist", "tiny", {}, 2, modes=("infer",))
    assert got["lstm"]._train_batch is None
    with pytest.raises(AssertionError, match="training step"):
        bench.build_contenders(["lstm"], "pmnist", "tiny", {}, 2)  # both modes: a step


def test_memory_column_in_a_fresh_process_is_the_same_in_any_order(tmp_path, capsys):
    """rss_delta_mb: each contender in a process of its own, warmed up first, so the first contender is
    not charged with the process's warm-up (it was: ~175 MB against 5-30 MB), whatever the order."""
    got = {}
    for order in ("lstm,gru", "gru,lstm"):
        out = tmp_path / order.replace(",", "-")
        assert main(["bench", "--task", "pmnist", "--models", order, "--preset", "tiny", "--mode", "infer",
                     "--batch-size", "2", "--out", str(out), *FAST]) == 0
        res = json.loads(next(out.glob("*.json")).read_text())
        got[order] = {r["contender"]: r["rss_delta_mb"] for r in res["tables"][0]["rows"]}
    assert "each contender in a fresh, warmed-up process" in capsys.readouterr().out
    for n in ("lstm", "gru"):
        assert abs(got["lstm,gru"][n] - got["gru,lstm"][n]) < 1.0, got  # measured: within 0.1 MB


@pytest.mark.parametrize("model", ["iss-lstm", "rhn"])
def test_bench_a_trained_run_against_its_pruned_model(env, model, capsys):
    # a threshold of 1 zeroes every weight after the first step: one unit per layer survives
    over = {**QUICK, "model.lam": "0.01", "model.threshold": "1.0"}
    if model == "rhn":
        over.update({"model.hidden": "16", "model.depth": "2", "task.emb": "16", "task.tie": "true",
                     "model.tied_groups": "true"})  # the pruned embedding shrinks to one column
    rec = Runner(config.resolve(registry.get_model(model), registry.get_task("ptb"), "tiny", over), quiet=True).fit()
    assert rec["status"] == "completed", rec["failure"]
    out = env["tmp"] / "bench"
    assert main(["bench", "--run", rec["run_id"], "--batch-size", "3", "--out", str(out), *FAST]) == 0
    res = json.loads(next(out.glob("*.json")).read_text())
    rows = {r["contender"]: r for r in res["tables"][0]["rows"]}
    assert set(rows) == {"trained", "pruned"} and res["tables"][0]["batch"] == 1
    assert rows["pruned"]["rel_err_vs_trained"] < 1e-5
    assert rows["trained"]["params"] > rows["pruned"]["params"] and rows["trained"]["flops"] > rows["pruned"]["flops"]
    assert rows["pruned"]["params"] == rec["measure"]["params"]["total"]  # what the run measured after pruning
    if model == "rhn":  # tied: the vocabulary x width matrix counted once, 15 of its 16 columns gone
        vocab = rec["task_info"]["d_output"]
        assert rows["trained"]["params"] - rows["pruned"]["params"] > 15 * vocab
    else:  # the memory column of --run: the pair measured in one fresh process (the pruned model is the trained one's)
        pair = bench.from_run(rec["run_id"], batch_size=3, device="cpu")
        for c in pair.values():
            c.rss_delta_mb = None
        FRESH_RSS(pair, {"run": rec["run_id"], "results": str(env["results"].resolve()), "batch_size": 3, "threads": 1})
        assert all(isinstance(c.rss_delta_mb, float) for c in pair.values())  # the probe's


def test_report_shows_the_latest_bench_tables(env):
    out = env["results"] / "benchmarks"
    for _ in range(2):
        assert main(["bench", "--task", "smnist", "--models", "lstm,gru", "--preset", "tiny", "--mode", "infer",
                     "--batch-size", "2", "--out", str(out), *FAST]) == 0
    assert main(["run", "--model", "gru", "--task", "smnist", "--preset", "tiny", "--set", "limit_batches=1",
                 "--set", "latency_time=0.01", "--quiet"]) == 0
    build()
    text = (env["results"] / "report.md").read_text()
    assert text.count("### smnist: lstm, gru") == 1  # the latest of the two
    assert "| contender | impl | median_ms" in text


@pytest.mark.parametrize("args,needle", [
    (["--task", "pmnist", "--models", "nope"], "unknown model 'nope'"),
    (["--task", "pmnist", "--models", "resnet"], "cannot run task 'pmnist'"),
    (["--task", "pmnist", "--models", "lstm,lstm"], "given twice"),
    (["--task", "cifar10", "--models", "resnet,,"], "an empty name"),
    (["--task", "pmnist", "--models", ",lstm"], "an empty name"),
    (["--task", "pmnist", "--models", "lstm, ,gru"], "an empty name"),
    (["--task", "ptb", "--models", "iss-lstm+sizes=3,,2"], "an empty name"),
    (["--task", "pmnist", "--models", "lstm+hidden"], "expected model+key=value"),
    (["--task", "pmnist", "--models", "lstm+hidden=0"], "'model.hidden': expected an integer >= 1"),
    (["--task", "pmnist", "--models", "lstm", "--baseline", "gru"], "--baseline 'gru' is not one of"),
    (["--models", "lstm"], "bench needs --task and --models"),
    (["--run", "no-such-run"], "no best.pt or last.pt"),
    (["--run", "x", "--task", "pmnist"], "--run takes the run's own"),
    (["--task", "pmnist", "--models", "lstm", "--device", "mps"], "'device'"),
    (["--task", "pmnist", "--models", "lstm", "--mode", "train", "--batch-size", "10000000"],
     "lower --batch-size to "),
])
def test_bench_bad_input_is_one_line(env, capsys, args, needle):
    code = main(["bench", *args, "--preset", "tiny", *FAST])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("seqbench: error:") and needle in err[0], err


def test_ptb_vocabulary_without_files_is_the_real_one():
    """The vocabulary PTB's shape falls back on without files equals the real files' (checked when
    this checkout has ../shared/data beside it)."""
    root = Path(__file__).resolve().parents[2] / "shared" / "data"
    if not (root / "ptb").is_dir():
        pytest.skip("no ../shared/data/ptb here")
    for name in ("ptb", "ptb-char"):
        e = registry.get_task(name)
        t = e.cls(config.params_class(e.cls)(), root)
        assert len(t.corpus()["vocab"]) == e.cls.VOCAB


def test_bench_reads_no_data_for_a_strategy_with_memories(tmp_path, monkeypatch):
    """mptt (the MPTT strategy on series tasks) builds its window maps when training first needs them, so a
    bench of it reads no data files, as bench promises."""
    monkeypatch.setenv("SEQBENCH_DATA", str(tmp_path / "nothing"))
    monkeypatch.setenv("SEQBENCH_DOWNLOAD", "0")
    out = tmp_path / "bench"
    assert main(["bench", "--task", "climate-co2", "--models", "mptt,gru", "--preset", "tiny", "--batch-size", "4",
                 "--out", str(out), *FAST]) == 0
    res = json.loads(next(out.glob("bench-climate-co2-*.json")).read_text())
    assert res["configs"]["mptt"]["strategy"] == "mptt" and not (tmp_path / "nothing").exists()
