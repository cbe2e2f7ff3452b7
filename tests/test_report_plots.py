"""The report's pictures read at their saved size: long names in a key below the axes, spreads drawn, protocols
apart, ticks that do not overprint."""
import numpy as np
import pytest
from matplotlib.container import ErrorbarContainer
from matplotlib.image import imread

from seqbench import config, iss, records, registry, report

from test_records_report import fake_record  # tests/ is on sys.path (pytest prepends it)

LONG_RUN = "lstm-pmnist-tiny-s0-20261130-200349-156ea2-fine-tuned-from-the-dense-baseline"


def _rec(run_id, model, task, seed=0, acc=0.5, lat=2.0, epochs=1, **changes):
    """A completed record of ``model`` on ``task`` at preset tiny with ``changes`` (its variant), ``epochs`` of
    history."""
    r = fake_record(run_id, model=model, task=task, seed=seed, acc=acc, lat=lat)
    base = config.resolve(registry.get_model(model), registry.get_task(task), "tiny").flat()
    r["config"] = {**base, "seed": seed, **changes}
    r["history"] = [{"epoch": e, "val_acc": acc * e / epochs} for e in range(1, epochs + 1)]
    r["timing"]["epochs"] = epochs
    return r


def _iss(rec, kept, lam):
    st = {"method": "iss", "sizes": kept, "sizes_pruned": kept, "lam": lam}
    rec["measure"]["structure"] = {**st, **iss.describe(st)}
    return rec


def _camvid(tmp_path, run_id, model, seed, miou, **changes):
    """A camvid record with 6 stored examples (test indices 0, 1, 2, 40, 80, 120) saved beside it."""
    r = _rec(run_id, model, "camvid", seed=seed, acc=miou, lat=150.0 + 20 * seed, epochs=3, **changes)
    r["task_info"].update(classes=[f"class-{c}" for c in range(11)], palette=[[20 * c, 10, 200 - 15 * c]
                                                                              for c in range(11)])
    idx = [0, 1, 2, 40, 80, 120]
    rng = np.random.default_rng(seed)
    arrays = {f"{kind}{i}": rng.integers(0, 11, (12, 16), dtype=np.uint8) for kind in ("label", "pred")
              for i in range(len(idx))}
    arrays.update({f"image{i}": rng.integers(0, 255, (12, 16, 3), dtype=np.uint8) for i in range(len(idx))})
    path = records.write_examples(arrays, run_id, tmp_path)
    r["examples"] = {"n": len(idx), "split": "test", "indices": idx, "images": [f"frame_{i:04d}.png" for i in idx],
                     "file": str(path.relative_to(tmp_path))}
    return r


@pytest.fixture
def rendered(tmp_path, monkeypatch):
    """``build(tmp_path)`` with each saved figure kept by file name: (figure, its key, the saved picture's width)."""
    seen = {}
    real = report._savefig

    def keep(fig, path, key=None):
        out = real(fig, path, key)
        seen[path.name] = (fig, key, imread(path).shape[1])
        return out

    monkeypatch.setattr(report, "_savefig", keep)

    def build():
        report.build(tmp_path)
        return seen

    return build


def _axes_share(fig, saved_width):
    """The axes' span (leftmost to rightmost) as a share of the saved picture's width (bbox_inches='tight' crops
    the figure at the save's DPI, never scales it)."""
    x0, x1 = min(a.get_position().x0 for a in fig.axes), max(a.get_position().x1 for a in fig.axes)
    return (x1 - x0) * fig.get_figwidth() * report.DPI / saved_width


def _write_long_named(tmp_path):
    long = {"init_from": LONG_RUN, "select": "last", "grad_clip": 0.25}
    for k in range(8):  # 8 settings with long names, the first three with two seeds
        for seed in (0, 1) if k < 3 else (0,):
            records.write(_rec(f"p{k}-{seed}", "lstm", "pmnist", seed=seed, acc=0.5 + k / 40 + seed / 50,
                               lat=1.0 + k, **long, lr=0.001 * (k + 1)), tmp_path)
    for k, (lam, kept) in enumerate([(0.0, [8, 6]), (1e-3, [5, 4]), (3e-3, [3, 2])]):
        for select in ("best", "last"):
            rec = _rec(f"i{k}{select}", "iss-lstm", "ptb", acc=0.6 - lam * 50, epochs=3, select=select,
                       init_from=LONG_RUN, **{"model.lam": lam})
            records.write(_iss(rec, kept, lam), tmp_path)
    for model in ("fcn", "dag-rnn"):
        for seed in (0, 1, 2):
            records.write(_camvid(tmp_path, f"{model}-{seed}", model, seed, 0.3 + seed / 100, init_from=LONG_RUN,
                                  grad_clip=0.5), tmp_path)


def test_every_plot_kind_keeps_half_the_width_with_long_names(tmp_path, rendered):
    """Each kind of picture, its settings named at length: the axes keep at least half the saved picture's
    width (the names go to a key below them, wrapped to their width)."""
    _write_long_named(tmp_path)
    seen = rendered()
    kinds = {"acc_vs_latency_pmnist.png", "curves_pmnist.png", "iss_ptb.png", "examples_camvid.png",
             "acc_vs_latency_camvid.png", "curves_camvid.png"}
    assert kinds <= set(seen)
    for name, (fig, key, width) in seen.items():
        share = _axes_share(fig, width)
        assert share >= 0.5, f"{name}: the axes take {share:.0%} of the picture's width"
        assert len(fig.legends) == 1 and not any(a.get_legend() for a in fig.axes), name  # the key, below
        leg, axes_top = fig.legends[0], min(a.get_tightbbox().y0 for a in fig.axes)
        assert leg.get_window_extent().y1 <= axes_top + 1, f"{name}: the key is below the axes and their labels"
        span = (max(a.get_position().x1 for a in fig.axes) - min(a.get_position().x0 for a in fig.axes))
        assert leg.get_window_extent().width <= span * fig.bbox.width + 1, f"{name}: the key is wider than the axes"
    key = seen["acc_vs_latency_pmnist.png"][1][1]
    assert any(LONG_RUN in k for k in key)  # the full name is in the key, wrapped on the picture
    assert all(len(t.get_text()) <= 2 for t in seen["acc_vs_latency_pmnist.png"][0].axes[0].texts)  # numbers


def test_latency_plot_draws_the_spread_over_seeds_and_a_one_point_front_as_a_ring(tmp_path, rendered):
    """Groups with three seeds get min–max bars in both directions (the key says so); a front of one point is a
    ring with no line in the picture or the key; two near points' labels do not overprint."""
    for model, base in (("fcn", 0.316), ("dag-rnn", 0.318), ("dense-rnn", 0.324)):
        for seed, d in enumerate((-0.006, 0.0, 0.016)):
            r = _rec(f"{model}{seed}", model, "camvid", seed=seed, acc=base + d,
                     lat={"fcn": 100, "dag-rnn": 120, "dense-rnn": 140}[model] + 10 * seed)
            r["task_info"]["select"], r["task_info"]["metrics"] = "acc", {"acc": "higher"}
            records.write(r, tmp_path)
    # copy-like: two near points (the one faster and better: a front of one point)
    records.write(_rec("near1", "lstm", "pmnist", acc=0.800, lat=3.00), tmp_path)
    records.write(_rec("near2", "gru", "pmnist", acc=0.799, lat=3.05), tmp_path)
    seen = rendered()

    fig, (handles, labels, title), _ = seen["acc_vs_latency_camvid.png"]
    assert "min–max" in title
    bars = [c for c in fig.axes[0].containers if isinstance(c, ErrorbarContainer)]
    assert len(bars) == 3
    for c, (model, base) in zip(bars, (("dag-rnn", 0.318), ("dense-rnn", 0.324), ("fcn", 0.316))):
        segs = [s for col in c.lines[2] for s in col.get_segments()]
        vertical = [s for s in segs if s[0][0] == s[1][0]]
        horizontal = [s for s in segs if s[0][1] == s[1][1]]
        assert len(vertical) == len(horizontal) == 1
        assert sorted(vertical[0][:, 1]) == pytest.approx([base - 0.006, base + 0.016])
        assert sorted(horizontal[0][:, 0]) == pytest.approx([c.lines[0].get_xdata()[0] - 10,
                                                             c.lines[0].get_xdata()[0] + 10])
    front = handles[labels.index(next(t for t in labels if t.startswith("Pareto")))]
    assert front.get_linestyle() == "--" and list(front.get_xdata()) == [110, 130, 150]  # each slower and better

    fig, (handles, labels, _), _ = seen["acc_vs_latency_pmnist.png"]
    front = handles[-1]
    assert labels[-1].startswith("Pareto") and front.get_linestyle() == "None" and len(front.get_xdata()) == 1
    texts = [t.get_window_extent() for t in fig.axes[0].texts]
    assert len(texts) == 2 and not texts[0].overlaps(texts[1])
    points = fig.axes[0].transData.transform([(3.0, 0.8), (3.05, 0.799)])
    assert not any(t.contains(*p) for t in texts for p in points)  # nor sit on a point


def test_iss_plot_splits_protocols_and_needs_a_penalty(tmp_path, rendered):
    """select=best and select=last runs, and a run from scratch, are different series (a line each, named in
    the key); seeds of a setting are one point with bars; a task whose ISS runs are all at strength 0 gets no
    picture."""
    for k, (lam, kept) in enumerate([(1e-3, [5, 4]), (3e-3, [3, 2])]):
        for select, shift in (("best", 0.0), ("last", 1.0)):
            for seed in (0, 1):
                rec = _rec(f"s{k}{select}{seed}", "iss-lstm", "ptb", seed=seed, acc=0.5 + shift + seed / 100,
                           select=select, init_from=LONG_RUN, **{"model.lam": lam})
                records.write(_iss(rec, [u + seed for u in kept], lam), tmp_path)
    records.write(_iss(_rec("dense", "iss-lstm", "ptb", acc=0.55), [8, 6], 0.0), tmp_path)
    records.write(_iss(_rec("tiny", "iss-lstm", "pmnist"), [8, 6], 0.0), tmp_path)  # no ISS point
    seen = rendered()
    assert "iss_pmnist.png" not in seen and not (tmp_path / "plots" / "iss_pmnist.png").exists()

    fig, (handles, labels, _), _ = seen["iss_ptb.png"]
    ax = fig.axes[0]
    series = {t: h for t, h in zip(labels, handles) if t.startswith("iss-lstm/tiny")}
    assert set(series) == {"iss-lstm/tiny, 1 epochs, select=best, init_from=none (λ=0 only)",
                           f"iss-lstm/tiny, 1 epochs, select=best, init_from={LONG_RUN}",
                           f"iss-lstm/tiny, 1 epochs, select=last, init_from={LONG_RUN}"}
    for select, shift in (("best", 0.0), ("last", 1.0)):  # each line: its own protocol's two strengths only
        line = series[f"iss-lstm/tiny, 1 epochs, select={select}, init_from={LONG_RUN}"]
        assert list(line.get_xdata()) == [10, 6]  # units kept (9 and 11, 5 and 7): the seeds' mean, by strength
        assert list(line.get_ydata()) == pytest.approx([0.5 + shift + 0.005] * 2)
    assert sorted(t.get_text() for t in ax.texts) == ["λ=0", "λ=0.001", "λ=0.001", "λ=0.003", "λ=0.003"]
    assert len([c for c in ax.containers if isinstance(c, ErrorbarContainer) and c.has_yerr]) == 4


def test_ticks_read_single_epochs_and_log_latencies(tmp_path, rendered):
    """One epoch of history: one whole-epoch tick; latencies over a wide span: a log axis whose labels are one
    1-2-5 series, no minor labels, none overprinting another."""
    for k, lat in enumerate((0.9, 1.3, 4.0, 12.0, 31.0)):
        records.write(_rec(f"r{k}", "lstm", "pmnist", acc=0.5 + k / 20, lat=lat, lr=0.001 * (k + 1)), tmp_path)
    seen = rendered()
    ax = seen["curves_pmnist.png"][0].axes[0]
    assert list(ax.get_xticks()) == [1] and ax.get_xlim() == (0.5, 1.5)

    fig = seen["acc_vs_latency_pmnist.png"][0]
    ax = fig.axes[0]
    assert ax.get_xscale() == "log"
    labels = [t for t in ax.get_xticklabels() if t.get_text()]
    assert [t.get_text() for t in labels] == ["1", "2", "5", "10", "20"]
    assert not any(t.get_text() for t in ax.xaxis.get_minorticklabels())
    boxes = [t.get_window_extent() for t in labels]
    assert not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1:])


def test_examples_show_the_stored_frames_farthest_apart_and_a_class_key(tmp_path, rendered):
    """Six stored examples: the three farthest apart in the test split are the rows, named on the left; a key
    below names every class's colour and the ignored pixels'."""
    for model in ("fcn", "dag-rnn"):
        records.write(_camvid(tmp_path, f"{model}-0", model, 0, 0.3), tmp_path)
    fig, (handles, labels, title), width = rendered()["examples_camvid.png"]
    rows = [fig.axes[i * 4].get_ylabel() for i in range(3)]  # image, ground truth, two predictions per row
    assert rows == ["frame_0000.png\n(test #0)", "frame_0040.png\n(test #40)", "frame_0120.png\n(test #120)"]
    assert labels == [f"class-{c}" for c in range(11)] + ["ignored (void)"]
    assert [tuple(np.round(np.asarray(h.get_facecolor()[:3]) * 255)) for h in handles[:2]] == [(0, 10, 200),
                                                                                               (20, 10, 185)]
    assert report._spread([5, 0, 3, 9], 2) == [1, 3] and report._spread([4], 3) == [0]
