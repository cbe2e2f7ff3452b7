import json
import multiprocessing as mp

import pandas as pd
import pytest

from seqbench import iss, records, registry, report
from seqbench.errors import SeqbenchError


def fake_record(run_id, model="lstm", task="pmnist", seed=0, acc=0.9, lat=2.0, status="completed"):
    return {
        "schema": records.SCHEMA_VERSION, "run_id": run_id, "status": status,
        "failure": None if status == "completed" else "non-finite training loss at epoch 1, step 3",
        "model": model, "task": task, "preset": "tiny", "strategy": "minibatch", "strategy_label": "minibatch",
        "seed": seed, "config": {"model": model, "task": task, "strategy": "minibatch"},
        "env": {"device": "cpu", "device_name": "x86_64", "git_commit": "abc"},
        "task_info": {"select": "acc", "metrics": {"acc": "higher", "loss": "lower"}},
        "metrics": {"val": {"acc": acc - 0.01, "loss": 0.3}, "test": {"acc": acc, "loss": 0.3},
                    "selection": {"epoch": 2, "reason": "best_val"}}
        if status == "completed" else {"val": None, "test": None,
                                       "selection": {"epoch": 0, "reason": "last_no_finite_val"}},
        "history": [{"epoch": 1, "val_acc": acc / 2}, {"epoch": 2, "val_acc": acc}] if status == "completed" else [],
        "measure": {
            "params": {"total": 1000, "nonzero": 900}, "sparsity": {"overall": 0.1, "per_tensor": {}},
            "structure": None, "flops_per_sample": 2_000_000, "torch_threads": 2, "train_throughput": 500.0,
            "latency": {"b1": {"median_ms": lat, "iqr_ms": 0.1}, "b64": {"median_ms": lat * 10, "iqr_ms": 0.5}},
            "memory": {"peak_rss_mb": 300.0},
        } if status == "completed" else {},
        "timing": {"started": f"2026-01-01T00:00:0{seed}", "wall_s": 10.0, "train_s": 8.0, "epochs": 2},
    }


def schema1(rec):
    """``rec`` as schema 1 wrote it: ``best_epoch`` and no selection, no strategy label."""
    rec = {**rec, "schema": 1, "metrics": dict(rec["metrics"])}
    sel = rec["metrics"].pop("selection")
    rec["metrics"]["best_epoch"] = sel["epoch"] if sel["reason"] == "best_val" else None
    rec.pop("strategy_label")
    return rec


def test_schema_1_records_read_as_the_current_schema(tmp_path):
    """Records written before the typed selection: best_epoch and prose become a Selection, the
    strategy's label and the structure's description are asked of the registry."""
    old = schema1(fake_record("old", model="iss-lstm"))
    old["metrics"]["selection"] = "select last: the last epoch's weights"
    old["strategy"], old["config"] = "mptt", {**old["config"], "strategy": "mptt", "keeper": 0.0}
    old["measure"]["structure"] = {"method": "iss", "sizes": [3], "sizes_pruned": [2], "lam": 1e-3}
    nov = schema1(fake_record("noval"))
    nov["metrics"].update(best_epoch=None, val=None, selection="last epoch (no validation split)")
    bare = schema1(fake_record("bare"))  # the oldest: no selection field at all
    nofin = schema1(fake_record("nofinite"))
    nofin["metrics"].update(best_epoch=None, val=None)
    for r in (old, nov, bare, nofin):
        (tmp_path / "runs").mkdir(exist_ok=True)
        (tmp_path / "runs" / f"{r['run_id']}.json").write_text(json.dumps(r))
    got = {r["run_id"]: r for r in records.load_all(tmp_path)}
    assert {r["schema"] for r in got.values()} == {records.SCHEMA_VERSION}
    assert got["old"]["metrics"]["selection"] == {"epoch": 2, "reason": "last_requested"}
    assert "best_epoch" not in got["old"]["metrics"]
    assert got["old"]["strategy_label"] == "mptt δ=0" and got["bare"]["strategy_label"] == "minibatch"
    assert got["old"]["measure"]["structure"]["summary"] == "ISS widths 3 -> 2"
    assert got["old"]["measure"]["structure"]["units_kept"] == 2
    assert got["noval"]["metrics"]["selection"] == {"epoch": 2, "reason": "last_no_val_split"}
    assert got["bare"]["metrics"]["selection"] == {"epoch": 2, "reason": "best_val"}
    assert got["nofinite"]["metrics"]["selection"] == {"epoch": 2, "reason": "last_no_finite_val"}
    assert records.problem(old) is None and records.read(tmp_path / "runs" / "old.json")["schema"] == 2


def test_write_is_immutable_and_leaves_no_temp(tmp_path):
    rec = fake_record("r1")
    p = records.write(rec, tmp_path)
    with pytest.raises(SeqbenchError, match="immutable"):
        records.write(fake_record("r1", acc=0.1), tmp_path)
    assert json.loads(p.read_text())["metrics"]["test"]["acc"] == 0.9  # the first one survives
    assert [f.name for f in (tmp_path / "runs").iterdir()] == ["r1.json"]


def test_write_rejects_incomplete_record(tmp_path):
    rec = fake_record("r2")
    del rec["measure"]
    with pytest.raises(ValueError):
        records.write(rec, tmp_path)


def _writer(args):
    folder, i = args
    records.write(fake_record(f"run{i}", seed=i % 3), folder)


def test_eight_concurrent_writers_lose_nothing(tmp_path):
    with mp.get_context("spawn").Pool(8) as pool:
        pool.map(_writer, [(str(tmp_path), i) for i in range(8)])
    recs = records.load_all(tmp_path)
    assert sorted(r["run_id"] for r in recs) == sorted(f"run{i}" for i in range(8))


def test_plots_name_every_setting_and_raise_no_warning(tmp_path, monkeypatch):
    """A sweep's task (9 strategies x 2 seeds): the curves' key has one entry per strategy, its
    seeds sharing a colour; the accuracy-latency points are numbered with a key naming each
    strategy; no matplotlib warning (a legend too big for tight_layout had warned)."""
    import warnings

    from matplotlib.colors import to_hex

    from seqbench import config

    preset = config.resolve(registry.get_model("lstm"), registry.get_task("pmnist"), "tiny").flat()
    strategies = [f"strategy-{k}" for k in range(9)]
    for k, st in enumerate(strategies):
        for seed in (0, 1):
            rec = fake_record(f"r{k}-{seed}", seed=seed, acc=0.5 + k / 20 + seed / 100, lat=1.0 + k)
            rec["config"] = {**preset, "seed": seed, "strategy": st}  # no variant: the preset's values
            rec["strategy"], rec["strategy_label"] = st, st
            records.write(rec, tmp_path)
    seen = {}

    def keep(fig, path, key=None):
        ax = fig.axes[0]
        seen[path.name] = (list(key[1]), [t.get_text() for t in ax.texts],
                           {to_hex(line.get_color()) for line in ax.lines})
        return real(fig, path, key)

    real = report._savefig
    monkeypatch.setattr(report, "_savefig", keep)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        report.build(tmp_path)
    legend, _, colours = seen["curves_pmnist.png"]
    assert legend == [f"lstm/tiny [{st}], seeds 0,1" for st in strategies]
    assert len(colours) == 9  # 18 runs, a colour per strategy
    key, numbers, _ = seen["acc_vs_latency_pmnist.png"]
    assert sorted(numbers, key=int) == [str(i) for i in range(1, 10)]
    assert [k for k in key if k[0].isdigit()] == [f"{i}. lstm/tiny [{st}] (n=2)" for i, st in enumerate(strategies, 1)]


def test_nan_is_written_as_null(tmp_path):
    rec = fake_record("r3")
    rec["history"][0]["val_acc"] = float("nan")
    p = records.write(rec, tmp_path)
    assert json.loads(p.read_text())["history"][0]["val_acc"] is None


def test_report_tables_and_plots(tmp_path):
    runs = [("lstm", 0.90, 2.0), ("lstm", 0.92, 2.2), ("gru", 0.95, 1.5), ("hippo", 0.80, 1.0)]
    for i, (model, acc, lat) in enumerate(runs):
        records.write(fake_record(f"r{i}", model=model, seed=i, acc=acc, lat=lat), tmp_path)
    records.write(fake_record("bad", status="failed"), tmp_path)
    (tmp_path / "runs" / "junk.json").write_text("{not json")
    out = report.build(tmp_path)
    assert out["records"] == 5
    df = pd.read_csv(tmp_path / "summary.csv")
    assert len(df) == 5 and set(df.status) == {"completed", "failed"}
    md = (tmp_path / "report.md").read_text()
    for heading in ("## Accuracy", "## Sparsity", "## Latency", "## Failed runs"):
        assert heading in md
    # two lstm seeds are aggregated: mean 0.91, sample std 0.0141
    assert "0.91 ± 0.01414" in md
    assert "non-finite" in md
    for name in ("acc_vs_latency_pmnist.png", "curves_pmnist.png"):
        png = tmp_path / "plots" / name
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000


def test_pareto_front():
    pts = [(1.0, 0.80), (1.5, 0.95), (2.0, 0.90), (2.2, 0.96), (3.0, 0.5)]
    assert report.pareto(pts, higher_is_better=True) == [0, 1, 3]
    assert report.pareto(pts, higher_is_better=False) == [0, 4]


def test_report_shows_a_tasks_memoryless_baseline(tmp_path):
    rec = fake_record("c1", task="copy", acc=0.5)
    rec["task_info"] = {"select": "loss", "metrics": {"loss": "lower", "acc": "higher"}, "baseline_loss": 0.0945}
    rec["history"] = [{"epoch": 1, "val_loss": 0.2}, {"epoch": 2, "val_loss": 0.09}]
    records.write(rec, tmp_path)
    records.write(fake_record("p1"), tmp_path)  # pmnist declares no baseline
    report.build(tmp_path)
    lines = (tmp_path / "report.md").read_text().splitlines()
    copy_row = next(r for r in lines if r.startswith("| copy |"))
    pmnist_row = next(r for r in lines if r.startswith("| pmnist |"))
    header = next(r for r in lines if r.startswith("| task | model | preset | strategy | variant | n |"))
    col = [c.strip() for c in header.split("|")].index("baseline")
    assert [c.strip() for c in copy_row.split("|")][col] == "0.0945"
    assert [c.strip() for c in pmnist_row.split("|")][col] == "–"
    assert (tmp_path / "plots" / "curves_copy.png").stat().st_size > 5000


def test_report_rows_split_by_variant_strategy_label_and_iss_structure(tmp_path):
    """Runs of one preset with a changed setting (--set) are a separate row, not seeds of one; MPTT
    rows carry their keeper; an ISS run's structure cell says what pruning kept and saved."""
    from seqbench import config
    base = config.resolve(registry.get_model("lstm"), registry.get_task("pmnist"), "tiny").flat()
    a = fake_record("a", acc=0.5)
    a["config"] = dict(base)
    b = fake_record("b", acc=0.7)
    b["config"] = {**base, "lr": 0.01}
    m = fake_record("m", task="pmnist", acc=0.6)
    m["strategy"], m["strategy_label"] = "mptt", records.strategy_label("mptt", {"keeper": 0.0})
    m["config"] = {**base, "strategy": "mptt", "keeper": 0.0}
    i = fake_record("i", model="iss-lstm", acc=0.8)
    st = {"method": "iss", "sizes": [3, 2], "sizes_pruned": [3, 2], "pruned_from": [8, 6]}
    i["measure"]["structure"] = {**st, **iss.describe(st)}
    i["measure"]["pruning"] = {"before": {"params": {"total": 4000}, "flops_per_sample": 8_000_000}}
    for r in (a, b, m, i):
        records.write(r, tmp_path)
    df = report.frame(records.load_all(tmp_path))
    assert report.variant(b) == "lr=0.01" and report.variant(a) == ""
    assert m["strategy_label"] == "mptt δ=0" and "mptt δ=0" in set(df.strategy)
    rows = report.tables(df)["accuracy"]
    assert len(rows) == 4  # a and b are not averaged together
    s = report.tables(df)["sparsity"]
    cell = next(r["structure"] for r in s if r["model"] == "iss-lstm")
    assert cell == "ISS widths 8,6 -> 3,2; params 4000 -> 1000 (4.00x fewer); FLOPs/sample 4.00x fewer"
    assert {r["structure"] for r in s if r["model"] == "lstm"} == {"–"}  # no structure: a dash, never "nan"


def test_iss_plot_from_iss_records(tmp_path):
    """The plot reads the structure's description (units kept, strength); a schema-1 record gets it on reading."""
    for n, (kept, acc, lam) in enumerate([([8, 6], 0.9, 0.0), ([3, 2], 0.8, 1e-3)]):
        r = fake_record(f"i{n}", model="iss-lstm", acc=acc, seed=n)
        st = {"method": "iss", "sizes": kept, "sizes_pruned": kept, "lam": lam}
        r["measure"]["structure"] = {**st, **iss.describe(st)} if n else st
        records.write(r if n else schema1(r), tmp_path)
    out = report.build(tmp_path)
    assert (tmp_path / "plots" / "iss_pmnist.png") in out["plots"]


def test_gain_over_the_reference_model_is_paired_by_seed(tmp_path):
    """A task naming a reference model (camvid: fcn) gets a gains table: each other group's test
    metric minus the reference's run of the same seed; an unpaired seed is left out; an ablation is
    compared with the reference's own ablation, a setting only the group's model has is not looked
    for in the reference, and a group whose ablated reference does not exist gets no row."""
    from seqbench import config
    assert registry.get_task("camvid").cls.reference_model == "fcn"
    assert registry.get_task("cifar10").cls.reference_model == "resnet"
    assert registry.get_task("pmnist").cls.reference_model is None
    recs = []
    for model, seed, acc, skip in (("fcn", 0, 0.30, True), ("fcn", 1, 0.34, True), ("dag-rnn", 0, 0.33, True),
                                   ("dag-rnn", 1, 0.35, True), ("dag-rnn", 2, 0.90, True),  # seed 2: no fcn
                                   ("fcn", 0, 0.20, False), ("dag-rnn", 0, 0.10, False)):
        r = fake_record(f"{model}-{seed}-{skip}", model=model, task="camvid", seed=seed, acc=acc)
        flat = config.resolve(registry.get_model(model), registry.get_task("camvid"), "tiny").flat()
        r["config"] = {**flat, **({} if skip else {"lr": 0.5})}
        recs.append(r)
    rnn_only = next(k for k in config.declared_defaults({"model": "dag-rnn", "task": "camvid"})
                    if k.startswith("model.") and k not in config.declared_defaults({"model": "fcn", "task": "camvid"}))
    for name, seed, acc, extra in (("own", 1, 0.40, {rnn_only: "CHANGED"}),  # vs the plain fcn
                                   ("own-lr", 0, 0.25, {rnn_only: "CHANGED", "lr": 0.5}),  # vs fcn lr=0.5
                                   ("orphan", 0, 0.5, {"lr": 0.25})):  # no fcn at lr 0.25
        r = fake_record(name, model="dag-rnn", task="camvid", seed=seed, acc=acc)
        base = config.resolve(registry.get_model("dag-rnn"), registry.get_task("camvid"), "tiny").flat()
        r["config"] = {**base, **extra}
        recs.append(r)
    df = report.frame(recs)
    rows = report.gain_tables(df)["camvid"]
    plain = next(r for r in rows if r["variant"] == "")
    assert plain["seeds"] == "0,1" and plain["vs"] == "fcn/tiny"
    assert plain["Δtest_acc"] == "+0.0200 ± 0.0141 (+0.0300, +0.0100)"
    ablation = next(r for r in rows if r["variant"] == "lr=0.5")
    assert ablation["vs"] == "fcn/tiny (lr=0.5)" and ablation["Δtest_acc"] == "-0.1000"
    own = next(r for r in rows if r["variant"] == f"{rnn_only}=CHANGED")
    assert own["vs"] == "fcn/tiny" and own["seeds"] == "1" and own["Δtest_acc"] == "+0.0600"
    own_lr = next(r for r in rows if r["variant"] == f"lr=0.5 {rnn_only}=CHANGED")
    assert own_lr["vs"] == "fcn/tiny (lr=0.5)" and own_lr["Δtest_acc"] == "+0.0500"
    assert not [r for r in rows if r["variant"] == "lr=0.25"]
    assert "pmnist" not in report.gain_tables(report.frame([fake_record("x")]))
    records.write(recs[0], tmp_path)
    records.write(recs[2], tmp_path)
    text = report.build(tmp_path)["report"].read_text()
    assert "## Gain over the reference model: camvid" in text


def test_a_key_a_record_lacks_counts_at_its_default_in_the_variant():
    """A record written before a key existed ran at the key's declared default: when its preset now
    sets the key otherwise (squad fast-iss: select=last), the old run is its own row, not a seed of
    the new ones."""
    from seqbench import config
    base = config.resolve(registry.get_model("bidaf"), registry.get_task("squad"), "fast-iss").flat()
    new, old = fake_record("new", model="bidaf", task="squad"), fake_record("old", model="bidaf", task="squad")
    new["preset"] = old["preset"] = "fast-iss"
    new["config"] = dict(base)
    old["config"] = {k: v for k, v in base.items() if k != "select"}
    assert report.variant(new) == "" and report.variant(old) == "select=best"


def _cells(md: str, start: str) -> dict[str, str]:
    """The latency table's row starting with ``start``, by column."""
    lines = md.split("## Latency", 1)[1].splitlines()
    header = next(r for r in lines if r.startswith("| task |"))
    row = next(r for r in lines if r.startswith(start))
    return dict(zip([c.strip() for c in header.split("|")], [c.strip() for c in row.split("|")]))


def test_an_iqr_of_one_timing_run_is_unknown_not_zero(tmp_path):
    """``runs: 1`` (one timed block): no spread was measured; the report says – (and how many runs of a
    group measured one), not 0.000; summary.csv leaves the cell empty."""
    def rec(run_id, model, seed, b64_runs):
        r = fake_record(run_id, model=model, seed=seed)
        r["measure"]["latency"]["b1"]["runs"] = 12
        r["measure"]["latency"]["b64"].update(runs=b64_runs, iqr_ms=0.0 if b64_runs == 1 else 0.5)
        return r

    for r in (rec("a0", "lstm", 0, 1), rec("a1", "lstm", 1, 1), rec("b0", "gru", 0, 1), rec("b1", "gru", 1, 4),
              rec("c0", "hippo", 0, 3)):
        records.write(r, tmp_path)
    report.build(tmp_path)
    md = (tmp_path / "report.md").read_text()
    assert _cells(md, "| pmnist | lstm |")["b64_iqr_ms"] == "–"
    assert _cells(md, "| pmnist | gru |")["b64_iqr_ms"] == "0.500 (1 of 2 runs)"
    assert _cells(md, "| pmnist | hippo |")["b64_iqr_ms"] == "0.500"
    assert _cells(md, "| pmnist | lstm |")["b1_iqr_ms"] == "0.100"
    assert "An IQR of – : one timing run, no spread measured" in md
    # what ran the recurrence: the record's, or (records before the field) the model's declared implementation
    assert _cells(md, "| pmnist | lstm |")["impl"] == "library kernel"
    assert _cells(md, "| pmnist | hippo |")["impl"] == "eager"
    iqr = pd.read_csv(tmp_path / "summary.csv").set_index("run_id").lat_b64_iqr_ms
    assert iqr.isna().to_dict() == {"a0": True, "a1": True, "b0": True, "b1": False, "c0": False}
    records.write(rec("d0", "enrnn", 0, 5), tmp_path / "other")
    report.build(tmp_path / "other")
    assert "An IQR of –" not in (tmp_path / "other" / "report.md").read_text()  # the note only when it applies


def test_plots_of_groups_no_longer_in_the_records_are_removed(tmp_path, capsys):
    pruned = fake_record("i0", model="iss-lstm", task="ptb")
    st = {"method": "iss", "sizes": [3], "sizes_pruned": [2], "lam": 1e-3}
    pruned["measure"]["structure"] = {**st, **iss.describe(st)}
    for r in (fake_record("p0"), fake_record("s0", task="smnist"), pruned):
        records.write(r, tmp_path)
    plots = tmp_path / "plots"
    built = report.build(tmp_path)
    assert {"acc_vs_latency_smnist.png", "curves_smnist.png", "iss_ptb.png"} <= {p.name for p in built["plots"]}
    assert built["removed"] == [] and "removed" not in capsys.readouterr().out
    (plots / "notes.png").write_bytes(b"mine")  # not one of the report's names: kept
    (plots / "examples_camvid.png").write_bytes(b"old")  # a report's name, not written by this run: removed
    for name in ("s0", "i0"):
        (tmp_path / "runs" / f"{name}.json").unlink()
    built = report.build(tmp_path)
    gone = ["acc_vs_latency_ptb.png", "acc_vs_latency_smnist.png", "curves_ptb.png", "curves_smnist.png",
            "examples_camvid.png", "iss_ptb.png"]
    assert [p.name for p in built["removed"]] == gone
    assert sorted(p.name for p in plots.iterdir()) == ["acc_vs_latency_pmnist.png", "curves_pmnist.png", "notes.png"]
    out = capsys.readouterr().out.splitlines()
    assert out == [f"report: removed 6 plot(s) of groups no longer in the records from {plots}: {', '.join(gone)}"]
    assert "smnist" not in (tmp_path / "report.md").read_text()


def test_latency_rows_split_by_machine_and_threads_accuracy_does_not():
    """Seeds of one config on two machines and thread counts: one accuracy row over all of them, one latency
    row per (device, threads), each the mean of its own runs only."""
    recs = [fake_record("a", seed=0, lat=2.0), fake_record("b", seed=1, lat=4.0), fake_record("c", seed=2, lat=9.0)]
    recs[2]["env"]["device_name"] = "AMD EPYC"
    recs[1]["measure"]["torch_threads"] = 1
    t = report.tables(report.frame(recs))
    assert [r["n"] for r in t["accuracy"]] == [3]
    lat = {(r["device"], r["threads"]): r for r in t["latency"]}
    assert set(lat) == {("x86_64", 2), ("x86_64", 1), ("AMD EPYC", 2)}
    assert lat["x86_64", 2]["b1_ms"] == "2.000" and lat["x86_64", 1]["b1_ms"] == "4.000"
    assert lat["AMD EPYC", 2]["n"] == 1 and lat["AMD EPYC", 2]["b1_ms"] == "9.000"
