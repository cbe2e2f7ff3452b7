"""``seqbench report``: every record in results/runs -> summary.csv, report.md and PNG plots.

Tables (mean ± std over seeds where a (task, model, preset, strategy) group has several runs):
accuracy (the task's metrics on test, the selection metric on validation), sparsity (params,
nonzero params, fraction of zeros, the model's structural report), latency (at the batch sizes the
task measured: 1 and 64, dense tasks 1 and 8; median and IQR, throughput, FLOPs), and, for records
that carry one, the per-class breakdown (dense tasks: test IoU per class). Plots: accuracy vs
batch-1 latency per task (min–max bars over seeds, the Pareto front marked), validation curves per
task, ISS test metric vs units kept (a line per protocol), and for records that carry example
predictions (dense tasks) image | ground truth | each model's prediction. Long names go to a key
below the axes, wrapped to their width; points carry short labels (numbers, strengths).
"""
from __future__ import annotations

import json
import math
import sys
import warnings
from pathlib import Path

import pandas as pd

from . import records
from .errors import SeqbenchError
from .files import atomic_write

GROUP = ["task", "model", "preset", "strategy", "variant"]


def not_variant() -> set[str]:
    """Keys that never make a run another row: the machine's (``config.BOOKKEEPING``), the seed
    (averaged), the strategy (its own column) and the keys strategies show in their labels."""
    from . import config, registry

    shown = {k for e in registry.strategies().values() for k in e.cls.label_keys}
    return {*config.BOOKKEEPING, "seed", "strategy", *shown}


def variant(rec: dict, skip: set[str] | None = None) -> str:
    """The settings a run changed from its preset (``--set`` and flags), e.g. ``model.lam=6e-05``:
    runs of one preset with different settings are different rows, not seeds of one."""
    try:
        from . import config, registry
        base = config.resolve(registry.get_model(rec["model"]), registry.get_task(rec["task"]), rec["preset"]).flat()
    except Exception:  # a model or task this install no longer has: compare nothing
        return ""
    skip = not_variant() if skip is None else skip
    # a key the record lacks (written before the key existed) ran at its declared default
    cfg = {**{k: v for k, v in config.declared_defaults(rec["config"]).items() if k in base}, **rec["config"]}
    diff = [f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in cfg.items()
            if k not in skip and k in base and base[k] != v]
    return " ".join(sorted(diff))


def _row(rec: dict, skip: set[str]) -> dict:
    m, meas, ti = rec["metrics"] or {}, rec["measure"] or {}, rec["task_info"] or {}
    strategy = rec["strategy_label"]
    sel = records.Selection.of(rec)
    row = {
        "run_id": rec["run_id"], "status": rec["status"], "model": rec["model"], "task": rec["task"],
        "preset": rec["preset"], "strategy": strategy, "variant": variant(rec, skip),
        "seed": rec["seed"], "select": ti.get("select"), "best_epoch": sel.epoch if sel.validated else None,
        "epochs": rec["timing"].get("epochs"), "wall_s": rec["timing"].get("wall_s"),
        "train_s": rec["timing"].get("train_s"), "device": rec["env"].get("device"),
        "device_name": rec["env"].get("device_name"), "git_commit": rec["env"].get("git_commit"),
        "started": rec["timing"].get("started"), "failure": rec.get("failure"), "sweep": rec.get("sweep"),
        # a task's memoryless baseline for its selection metric, when it declares one (copy, adding)
        "baseline": ti.get(f"baseline_{ti.get('select')}"),
        # a published number, when the task carries one: keyed "<model>:<preset>" (DIANet's CIFAR-100
        # runs), "<model>", or the strategy (climate-hydro's SWAT numbers)
        "paper": _paper(ti, rec, strategy),
        # the data actually used, when it is not the task's full official data (the CIFAR subset)
        "data": ti.get("data"),
    }
    for split in ("val", "test"):
        for k, v in (m.get(split) or {}).items():
            row[f"{split}_{k}"] = v
    sel = ti.get("select")
    if (m.get("test_best") or {}).get(sel) is not None:  # no validation split: best test over epochs, apart
        row[f"test_best_{sel}"] = m["test_best"][sel]
    if meas:
        p, lat = meas.get("params", {}), meas.get("latency", {})
        row.update({
            "params": p.get("total"), "params_nonzero": p.get("nonzero"),
            "sparsity": (meas.get("sparsity") or {}).get("overall"),
            "structure": _structure_text(meas.get("structure"), meas),
            "flops_per_sample": meas.get("flops_per_sample"),
            "throughput": meas.get("train_throughput"), "torch_threads": meas.get("torch_threads"),
            "peak_rss_mb": (meas.get("memory") or {}).get("peak_rss_mb"),
            "peak_cuda_mb": (meas.get("memory") or {}).get("peak_cuda_mb"),
            "impl": meas.get("implementation") or _declared_implementation(rec["model"]),
        })
        for b, d in lat.items():
            row[f"lat_{b}_ms"] = d.get("median_ms")
            # one timing run: torch.utils.benchmark measured no spread (its 0 is not a spread of 0)
            row[f"lat_{b}_iqr_ms"] = None if (d.get("runs") or 2) < 2 else d.get("iqr_ms")
    return row


def _declared_implementation(model: str) -> str | None:
    """A record written before records named their implementation: the model's declared one, or None for a
    model this install does not have. A model whose ``model.impl`` now picks it (the fused cells came after
    records named their implementation) ran its eager loop then."""
    from . import registry
    from .model import BY_SETTING, EAGER, declared_implementation

    try:
        declared = declared_implementation(registry.get_model(model).cls)
    except SeqbenchError:
        return None
    return EAGER if declared == BY_SETTING else declared


def _paper(ti: dict, rec: dict, strategy: str):
    table = ti.get(f"paper_{ti.get('select')}") or {}
    for key in (f"{rec['model']}:{rec['preset']}", rec["model"], strategy):
        if key in table:
            return table[key]
    return None


def _structure_text(s, meas: dict | None = None) -> str | None:
    """The structure report's own summary (else its keys), and what pruning saved when the run pruned."""
    if not s:
        return None
    if isinstance(s, dict) and "summary" in s:
        txt = s["summary"]
        pr = (meas or {}).get("pruning")
        if pr:
            pb, pa = pr["before"]["params"]["total"], meas["params"]["total"]
            fb, fa = pr["before"]["flops_per_sample"], meas["flops_per_sample"]
            txt += f"; params {pb} -> {pa} ({pb / pa:.2f}x fewer); FLOPs/sample {fb / fa:.2f}x fewer"
        return txt
    return "; ".join(f"{k}={v}" for k, v in s.items()) if isinstance(s, dict) else str(s)


def _text_or_dash(v) -> str:
    """A structure cell: its text, or a dash where a run has none (pandas gives NaN or None)."""
    return v if isinstance(v, str) and v else "–"


def frame(recs: list[dict]) -> pd.DataFrame:
    skip = not_variant()
    df = pd.DataFrame([_row(records.upgrade(r), skip) for r in recs])
    return df.sort_values(["task", "model", "preset", "seed", "started"]).reset_index(drop=True) if len(df) else df


def _pm(values: pd.Series, fmt: str) -> str:
    v = values.dropna().astype(float)
    if not len(v):
        return "–"
    if len(v) == 1 or v.nunique() == 1:  # one run, or a value all runs share (epochs, a reference)
        return format(v.iloc[0], fmt)
    return f"{format(v.mean(), fmt)} ± {format(v.std(ddof=1), fmt)}"


def _md(rows: list[dict]) -> str:
    if not rows:
        return "_no runs_\n"
    cols = list(dict.fromkeys(c for r in rows for c in r))  # tasks differ in metrics: the union
    out = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    out += ["| " + " | ".join(str(r.get(c, "–")) for c in cols) + " |" for r in rows]
    return "\n".join(out) + "\n"


def _metric_cols(df: pd.DataFrame, prefix: str) -> list[str]:
    return [c for c in df.columns if c.startswith(prefix) and df[c].notna().any()]


def tables(df: pd.DataFrame) -> dict[str, list[dict]]:
    ok = df[df.status == "completed"] if len(df) else df
    acc, spa, lat = [], [], []
    for key, g in ok.groupby(GROUP, sort=True, dropna=False) if len(ok) else []:
        name = dict(zip(GROUP, key))
        sel = g["select"].iloc[0]
        a = dict(name, n=len(g))
        if g["data"].notna().any():  # e.g. "subset 4576/509/1017": not the task's full data
            a["data"] = g["data"].dropna().iloc[0]
        for c in _metric_cols(g, "test_"):
            a[c] = _pm(g[c], ".4g")
        a[f"val_{sel}"] = _pm(g[f"val_{sel}"], ".4g") if f"val_{sel}" in g else "–"
        a["baseline"] = _pm(g["baseline"], ".4g")
        if g["paper"].notna().any():
            a["paper"] = _pm(g["paper"], ".4g")
        a["epochs"] = _pm(g["epochs"], ".0f")
        a["train_min"] = _pm(g["train_s"] / 60, ".1f")
        acc.append(a)
        spa.append(dict(name, params=int(g["params"].iloc[0]), nonzero=_pm(g["params_nonzero"], ".0f"),
                        sparsity=_pm(g["sparsity"], ".4f"), structure=_text_or_dash(g["structure"].iloc[0])))
        # times are a machine's: one latency row per device and thread count, never a mean across them
        for (dev, threads), h in g.groupby(["device_name", "torch_threads"], sort=True, dropna=False):
            row = dict(name, impl=_text_or_dash(h["impl"].iloc[0]), device=dev, threads=int(threads), n=len(h))
            for b in _latency_batches(h):  # the batch sizes the task measured (b1, b64; dense tasks b1, b8)
                row[f"{b}_ms"] = _pm(h[f"lat_{b}_ms"], ".3f")
                row[f"{b}_iqr_ms"] = _iqr_cell(h[f"lat_{b}_ms"], h[f"lat_{b}_iqr_ms"])
            row.update(train_samples_per_s=_pm(h["throughput"], ".1f"),
                       mflops_per_sample=_pm(h["flops_per_sample"] / 1e6, ".2f"))
            lat.append(row)
    return {"accuracy": acc, "sparsity": spa, "latency": lat}


def _unknown_iqr(df: pd.DataFrame) -> bool:
    """Whether a completed run has a latency without its IQR (one timing run)."""
    ok = df[df.status == "completed"]
    return any((ok[c].notna() & ok[f"lat_{c[4:-3]}_iqr_ms"].isna()).any() for c in ok.columns
               if c.startswith("lat_b") and c.endswith("_ms") and not c.endswith("_iqr_ms"))


def _iqr_cell(lat: pd.Series, iqr: pd.Series) -> str:
    """An IQR cell: unknown (one timing run) is –; over the runs that measured one, said so when not all did."""
    known, measured = int(iqr.notna().sum()), int(lat.notna().sum())
    cell = _pm(iqr, ".3f")
    return cell if known in (0, measured) else f"{cell} ({known} of {measured} runs)"


def _latency_batches(g: pd.DataFrame) -> list[str]:
    found = [c[len("lat_"):-len("_ms")] for c in g.columns
             if c.startswith("lat_b") and c.endswith("_ms") and not c.endswith("_iqr_ms") and g[c].notna().any()]
    return sorted(found, key=lambda b: int(b[1:]) if b[1:].isdigit() else 0)


def _reference_model(task: str) -> str | None:
    from . import registry
    try:
        return registry.get_task(task).cls.reference_model
    except SeqbenchError:  # a task this install no longer has
        return None


def gain_tables(df: pd.DataFrame) -> dict[str, list[dict]]:
    """Per task that names a ``reference_model`` with completed runs: every other (model, preset,
    strategy, variant) group's test metrics minus the reference's runs of the same seed (same preset
    and strategy, and the same value of every setting of the group's variant that the reference
    also has — an ablation such as model.skip=false or a deeper net is compared with the
    reference's own; settings only the group's model has are its own business). A group whose
    reference runs do not exist gets no row. Reruns of a seed are averaged first, as in the
    accuracy table; mean ± std over the seeds both have, and each seed's difference."""
    from . import config

    out: dict[str, list[dict]] = {}
    ok = df[df.status == "completed"] if len(df) else df
    for task, t in ok.groupby("task", sort=True) if len(ok) else []:
        ref = _reference_model(task)
        if ref is None or ref not in set(t.model):
            continue
        ref_keys = set(config.declared_defaults({"model": ref, "task": task}))
        cols = _metric_cols(t, "test_")
        rows = []
        for key, g in t[t.model != ref].groupby(GROUP, sort=True, dropna=False):
            name = dict(zip(GROUP, key))
            refs = t[(t.model == ref) & (t.preset == name["preset"]) & (t.strategy == name["strategy"])]
            same = " ".join(kv for kv in str(name["variant"]).split() if kv.split("=", 1)[0] in ref_keys)
            base = refs[refs.variant == same].groupby("seed")[cols].mean()
            mine = g.groupby("seed")[cols].mean()
            seeds = sorted(set(mine.index) & set(base.index))
            if not seeds:
                continue
            vs = f"{ref}/{name['preset']}" + (f" ({same})" if same else "")
            row = {**name, "vs": vs, "seeds": ",".join(map(str, seeds))}
            for c in cols:
                d = (mine.loc[seeds, c] - base.loc[seeds, c]).dropna().astype(float)
                if len(d):
                    each = ", ".join(f"{v:+.4f}" for v in d)
                    row[f"Δ{c}"] = f"{d.mean():+.4f}" + (f" ± {d.std(ddof=1):.4f} ({each})" if len(d) > 1 else "")
            rows.append(row)
        if rows:
            out[task] = rows
    return out


def _setting(model: str, preset: str, variant: str, strategy: str | None = None) -> str:
    """A group's name as the tables list it: model/preset [strategy] (variant); the strategy only
    where it is given (a task whose runs differ in it)."""
    return f"{model}/{preset}" + (f" [{strategy}]" if strategy else "") + (f" ({variant})" if variant else "")


def _group_label(rec: dict) -> str:
    return _setting(rec["model"], rec["preset"], variant(rec))


def per_class_tables(recs: list[dict]) -> dict[str, list[dict]]:
    """Per task whose records carry a per-class breakdown (``metrics.test_per_class``: ``classes`` and
    their ``iou``, e.g. the dense tasks'): one row per class, one column per (model, preset, variant), mean ± std
    over seeds."""
    by_task: dict[str, dict[str, list[dict]]] = {}
    for r in recs:
        pc = (r.get("metrics") or {}).get("test_per_class")
        if r["status"] != "completed" or not isinstance(pc, dict) or not isinstance(pc.get("iou"), list):
            continue
        by_task.setdefault(r["task"], {}).setdefault(_group_label(r), []).append(dict(zip(pc["classes"], pc["iou"])))
    out = {}
    for task, groups in sorted(by_task.items()):
        classes = list(dict.fromkeys(c for runs in groups.values() for iou in runs for c in iou))
        rows = []
        for c in classes:
            row = {"class": c}
            for label, runs in sorted(groups.items()):
                row[f"{label} (n={len(runs)})"] = _pm(pd.Series([iou.get(c) for iou in runs], dtype=float), ".3f")
            rows.append(row)
        out[task] = rows
    return out


DPI = 120  # the saved pictures' resolution
KEY_FONT = 7  # points: the keys below the axes and the labels beside points
SHOWN_EXAMPLES = 3  # rows of an examples picture: the stored examples farthest apart in the test split
# settings that change what a run is compared from (the weights tested, the weights it started from): runs that
# differ in one are different protocols, never points of one line
PROTOCOL_KEYS = ("select", "init_from")
# where a point's label may go, in points from it (the first that overlaps no other label or point)
LABEL_OFFSETS = [(dx, dy) for dy in (2, -2, 9, -9, 16, -16) for dx in (6, -6)]  # clear of the front's ring


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _colours(n: int):
    """A colour per index: tab10 for up to 10, tab20 past that (cycled past 20)."""
    cmap = _pyplot().get_cmap("tab10" if n <= 10 else "tab20")
    return lambda i: cmap(i % cmap.N)


def _savefig(fig, path: Path, key: tuple | None = None) -> Path:
    """Lay ``fig`` out, put ``key`` (handles, labels[, title]) below its axes (``_key_below``) and save it at DPI."""
    try:
        with warnings.catch_warnings():  # text outside the axes (a point's label at the edge): tight bbox keeps it
            warnings.filterwarnings("ignore", "Tight layout not applied", UserWarning)
            fig.tight_layout()
        if key and key[0]:
            _key_below(fig, *key)
        return atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=DPI, bbox_inches="tight"))
    finally:
        _pyplot().close(fig)


def _key_below(fig, handles: list, labels: list[str], title: str | None = None):
    """A legend under all of ``fig``'s axes (below their tick labels), as many columns as its longest label
    allows, each label wrapped so the legend is no wider than the axes: long names never take the axes' width."""
    import textwrap

    renderer = fig.canvas.get_renderer()
    x0, x1 = min(a.get_position().x0 for a in fig.axes), max(a.get_position().x1 for a in fig.axes)
    span = (x1 - x0) * fig.bbox.width
    top = min(a.get_tightbbox(renderer).y0 for a in fig.axes) / fig.bbox.height - 0.01
    chars = max(20, int(span / (0.6 * KEY_FONT * fig.dpi / 72)))  # a character is about 0.6 em wide
    longest = max(map(len, labels))
    ncol = next(n for n in (6, 4, 3, 2, 1) if n == 1 or (n <= len(labels) and n * (longest + 6) <= chars))
    while True:
        width = max(12, chars // ncol - 6)
        wrapped = [textwrap.fill(t, width, subsequent_indent="    ") for t in labels]
        leg = fig.legend(handles, wrapped, loc="upper left", bbox_to_anchor=(x0, top), fontsize=KEY_FONT, ncol=ncol,
                         title=textwrap.fill(title, max(20, chars - 6)) if title else None, title_fontsize=KEY_FONT,
                         alignment="left", frameon=False, borderaxespad=0)
        if leg.get_window_extent(renderer).width <= span or width == 12:
            return leg
        leg.remove()
        chars = int(chars * 0.9)


def _label_points(ax, points: list[tuple[float, float]], texts: list[str]) -> None:
    """Each text beside its point, at the first of ``LABEL_OFFSETS`` where it overlaps no label placed before it
    and no point (else where it overlaps least): labels of near points do not overprint."""
    renderer = ax.figure.canvas.get_renderer()
    px = ax.transData.transform(points) if points else []
    r = 3 * ax.figure.dpi / 72  # a marker's half-width (ms 5 or 6)
    taken = [(x - r, y - r, x + r, y + r) for x, y in px]

    def overlap(b):
        return sum(max(0, min(b.x1, t[2]) - max(b.x0, t[0])) * max(0, min(b.y1, t[3]) - max(b.y0, t[1]))
                   for t in taken)

    for pt, text in zip(points, texts):
        best = None
        for dx, dy in LABEL_OFFSETS:
            a = ax.annotate(text, pt, xytext=(dx, dy), textcoords="offset points", fontsize=KEY_FONT,
                            ha="left" if dx > 0 else "right", va="bottom" if dy > 0 else "top")
            b = a.get_window_extent(renderer)
            cost = overlap(b)
            if best is None or cost < best[0]:
                if best:
                    best[1].remove()
                best = (cost, a, b)
            else:
                a.remove()
            if cost == 0:
                break
        taken.append((best[2].x0, best[2].y0, best[2].x1, best[2].y1))


def _latency_axis(ax, lo: float, hi: float) -> None:
    """Log scale where latencies ``lo`` to ``hi`` span over 4x: ticks from 1-2-5, else 1-2-3-5, else every digit
    (the first giving 4 in view), labelled plainly, no minor labels (they overprinted the major ones); linear
    scale, its own ticks, otherwise."""
    import matplotlib.ticker as mt

    if not (lo > 0 and hi / lo > 4):
        return
    ax.set_xscale("log")
    lo, hi = ax.get_xlim()
    decades = range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1)
    for subs in ((1, 2, 5), (1, 2, 3, 5), range(1, 10)):
        ticks = [s * 10.0 ** e for e in decades for s in subs if lo <= s * 10.0 ** e <= hi]
        if len(ticks) >= 4:
            break
    ax.xaxis.set_major_locator(mt.FixedLocator(ticks))
    ax.xaxis.set_major_formatter(mt.FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(mt.NullFormatter())


def _epoch_axis(ax, epochs: list[int]) -> None:
    """Whole epochs only, at most about 10 ticks (1-2-5 steps); one epoch gets a view of ±0.5 around it."""
    import matplotlib.ticker as mt

    lo, hi = math.floor(min(epochs)), math.ceil(max(epochs))
    step = next(m * 10 ** e for e in range(9) for m in (1, 2, 5) if (hi - lo) / (m * 10 ** e) <= 10)
    ax.xaxis.set_major_locator(mt.FixedLocator(range(-(-lo // step) * step, hi + 1, step)))
    ax.xaxis.set_minor_locator(mt.NullLocator())
    if hi - lo < 1:
        ax.set_xlim(lo - 0.5, hi + 0.5)


def _spread(indices: list[int], k: int) -> list[int]:
    """Positions of ``k`` of ``indices`` as far apart as they go: the first, then each time the one farthest from
    those chosen; in index order."""
    chosen = [min(range(len(indices)), key=indices.__getitem__)] if indices else []
    while len(chosen) < min(k, len(indices)):
        rest = [i for i in range(len(indices)) if i not in chosen]
        chosen.append(max(rest, key=lambda i: min(abs(indices[i] - indices[j]) for j in chosen)))
    return sorted(chosen, key=indices.__getitem__)


def example_plots(recs: list[dict], res: Path, folder: Path) -> list[Path]:
    """Per task whose records carry example predictions (``examples``: dense tasks save test images' predictions
    beside the record): rows are up to ``SHOWN_EXAMPLES`` images (those farthest apart in the test split, named on
    the left), columns the image, its ground truth and each (model, preset, variant)'s prediction (its lowest seed),
    in the task's colour map (``task_info.palette``; ignored pixels black), a key below naming each class's colour."""
    import matplotlib.patches
    import numpy as np

    plt = _pyplot()
    by_task: dict[str, dict[str, dict]] = {}
    for r in sorted(recs, key=lambda r: (r["seed"], r["run_id"])):
        ex = r.get("examples")
        if r["status"] != "completed" or not isinstance(ex, dict) or not (res / str(ex.get("file", ""))).is_file():
            continue
        by_task.setdefault(r["task"], {}).setdefault(_group_label(r), r)
    out = []
    for task, groups in sorted(by_task.items()):
        first = next(iter(groups.values()))
        palette = np.zeros((256, 3), np.uint8)
        pal = np.asarray(first["task_info"].get("palette") or [], np.uint8).reshape(-1, 3)
        palette[: len(pal)] = pal
        data = {label: np.load(res / r["examples"]["file"]) for label, r in sorted(groups.items())}
        n = min(r["examples"]["n"] for r in groups.values())
        meta = first["examples"]
        indices = list(meta.get("indices") or range(n))[:n]
        names = list(meta.get("images") or [f"test image {i}" for i in indices])
        rows = _spread(indices, SHOWN_EXAMPLES)
        cols = 2 + len(data)
        fig, axes = plt.subplots(len(rows), cols, figsize=(2.6 * cols, 2.0 * len(rows)), squeeze=False)
        base = data[next(iter(data))]
        for i, row in enumerate(rows):
            panels = [("image", base[f"image{row}"]), ("ground truth", palette[base[f"label{row}"]])]
            panels += [(label, palette[z[f"pred{row}"]]) for label, z in data.items()]
            for j, (title, img) in enumerate(panels):
                ax = axes[i, j]
                ax.imshow(img, interpolation="nearest")
                ax.set_xticks([])
                ax.set_yticks([])
                if i == 0:  # a long variant on its own line
                    ax.set_title(title.replace(" (", "\n(", 1), fontsize=7)
            axes[i, 0].set_ylabel(f"{names[row]}\n(test #{indices[row]})", fontsize=7)
        classes = list(first["task_info"].get("classes") or [])
        swatch = [matplotlib.patches.Patch(color=palette[c] / 255, label=name) for c, name in enumerate(classes)]
        swatch.append(matplotlib.patches.Patch(facecolor="k", edgecolor="0.5", label="ignored (void)"))
        fig.suptitle(f"{task}: test images, ground truth and predictions", fontsize=9)
        key = (swatch, [p.get_label() for p in swatch], "classes") if classes else None
        out.append(_savefig(fig, folder / f"examples_{task}.png", key))
    return out


def pareto(points: list[tuple[float, float]], higher_is_better: bool) -> list[int]:
    """Indices of points not dominated in (lower latency, better metric), by latency."""
    def key(i):
        return points[i][0], -points[i][1] if higher_is_better else points[i][1]

    order = sorted(range(len(points)), key=key)
    front, best = [], None
    for i in order:
        v = points[i][1]
        if best is None or (v > best if higher_is_better else v < best):
            front.append(i)
            best = v
    return front


def plots(df: pd.DataFrame, recs: list[dict], folder: Path) -> list[Path]:
    """Per task with completed runs: test metric vs batch-1 latency (``latency_plot``) and the validation curves
    (``curves_plot``); settings named as the tables name them, the strategy too where the task's runs differ in it."""
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    ok = df[df.status == "completed"] if len(df) else df
    for task, g in ok.groupby("task") if len(ok) else []:
        sel = g["select"].iloc[0]
        higher = next(r for r in recs if r["task"] == task)["task_info"]["metrics"][sel] == "higher"
        several = g.strategy.nunique() > 1
        # each record's variant is worked out once, in _row
        name = {r.run_id: _setting(r.model, r.preset, r.variant, r.strategy if several else None)
                for r in g.itertuples()}
        out += [p for p in (latency_plot(task, g, sel, higher, name, folder),
                            curves_plot(task, g, sel, recs, name, folder)) if p]
    return out


def latency_plot(task: str, g: pd.DataFrame, sel: str, higher: bool, name: dict, folder: Path) -> Path | None:
    """Test ``sel`` against batch-1 latency: a numbered point per setting (the mean over its runs, bars their
    min–max where it has several), the Pareto front ringed (joined where it has several points), a key below."""
    if not {"lat_b1_ms", f"test_{sel}"} <= set(g.columns):
        return None
    runs = g.assign(name=g.run_id.map(name)).dropna(subset=["lat_b1_ms", f"test_{sel}"])
    if not len(runs):
        return None
    agg = runs.groupby("name").agg(lat=("lat_b1_ms", "mean"), lat_lo=("lat_b1_ms", "min"),
                                   lat_hi=("lat_b1_ms", "max"), val=(f"test_{sel}", "mean"),
                                   val_lo=(f"test_{sel}", "min"), val_hi=(f"test_{sel}", "max"),
                                   n=("run_id", "size")).reset_index()
    fig, ax = _pyplot().subplots(figsize=(6.5, 4.2))
    colour = _colours(len(agg))
    handles = []
    for i, r in enumerate(agg.itertuples()):
        bars = r.n > 1
        handles.append(ax.errorbar(r.lat, r.val, xerr=[[r.lat - r.lat_lo], [r.lat_hi - r.lat]] if bars else None,
                                   yerr=[[r.val - r.val_lo], [r.val_hi - r.val]] if bars else None,
                                   fmt="o", ms=5, lw=1, capsize=3, color=colour(i)))
    pts = list(zip(agg.lat, agg.val))
    front = pareto(pts, higher)
    handles += ax.plot([pts[i][0] for i in front], [pts[i][1] for i in front], color="r", marker="o", ms=11,
                       mfc="none", ls="--" if len(front) > 1 else "none", lw=1)
    ax.margins(0.08)
    _latency_axis(ax, agg.lat_lo.min(), agg.lat_hi.max())
    ax.set_xlabel("batch-1 latency, ms (median of a run's timings)")
    ax.set_ylabel(f"test {sel}")
    ax.set_title(f"{task}: test {sel} vs latency")
    fig.tight_layout()  # the labels are placed in the laid-out axes' pixels
    _label_points(ax, pts, [str(i) for i in range(1, len(pts) + 1)])
    labels = [f"{i}. {r.name} (n={r.n})" for i, r in enumerate(agg.itertuples(), 1)]
    labels.append(f"Pareto front: no other point is both faster and better in test {sel}")
    title = "points: mean over a setting's n runs (its seeds); bars: their min–max, where n > 1"
    return _savefig(fig, folder / f"acc_vs_latency_{task}.png", (handles, labels, title))


def curves_plot(task: str, g: pd.DataFrame, sel: str, recs: list[dict], name: dict, folder: Path) -> Path | None:
    """Validation ``sel`` per epoch of each run (test where a run has no validation split): a colour per setting,
    its seeds sharing it, the task's memoryless baseline dotted, the settings in a key below."""
    runs = [r for r in recs if r["run_id"] in name and r["history"]]
    if not runs:
        return None
    curves: dict[str, list[dict]] = {}
    for r in runs:
        curves.setdefault(name[r["run_id"]], []).append(r)
    fig, ax = _pyplot().subplots(figsize=(6.5, 4))
    colour = _colours(len(curves))
    for i, (label, rs) in enumerate(sorted(curves.items())):
        seeds = sorted({r["seed"] for r in rs})  # a rerun of a seed is drawn, not named twice
        for j, r in enumerate(sorted(rs, key=lambda r: (r["seed"], r["run_id"]))):
            ys = [h.get(f"val_{sel}", h.get(f"test_{sel}")) for h in r["history"]]
            named = f"{label}, seed{'s' if len(seeds) > 1 else ''} {','.join(map(str, seeds))}"
            ax.plot([h["epoch"] for h in r["history"]], ys, marker="o", ms=3, lw=1, color=colour(i),
                    label=None if j else named)
    for b in sorted(g["baseline"].dropna().unique()):
        ax.axhline(b, ls=":", color="k", label=f"memoryless baseline {b:.4g}")
    _epoch_axis(ax, [h["epoch"] for r in runs for h in r["history"]])
    ax.set_xlabel("epoch")
    no_val = any(f"val_{sel}" not in h for r in runs for h in r["history"])
    ax.set_ylabel(f"validation {sel}" + ("\n(test where a run has no validation split)" if no_val else ""))
    ax.set_title(f"{task}: training curves")
    return _savefig(fig, folder / f"curves_{task}.png", ax.get_legend_handles_labels())


def _protocol(rec: dict) -> dict:
    """The run's ``PROTOCOL_KEYS`` values (a key the record lacks at its declared default)."""
    from . import config

    cfg = {**config.declared_defaults(rec["config"]), **rec["config"]}
    return {k: cfg.get(k) for k in PROTOCOL_KEYS}


def structure_plots(recs: list[dict], folder: Path) -> list[Path]:
    """Per task and structure method whose reports say how many units they keep (``units_kept``, from the model's
    ``describe_structure``: ISS) and with a run at a strength above 0: the test metric against the units kept. A
    series (colour) per model/preset, epochs and protocol (``PROTOCOL_KEYS``, named where the task's runs differ
    in it); a point per setting (mean over its seeds, bars their min–max), labelled with its strength; the runs
    with a penalty joined in order of strength, strength-0 runs (no penalty: dense, or trained at a width) as
    open squares; the series' names in a key below."""
    import matplotlib.lines

    plt = _pyplot()
    out = []
    by_task: dict[tuple, list[dict]] = {}
    for r in recs:
        st = (r.get("measure") or {}).get("structure")
        if r["status"] != "completed" or not isinstance(st, dict) or "units_kept" not in st:
            continue
        key = (r["task"], st["method_label"], st["units_label"], st["strength_symbol"])
        by_task.setdefault(key, []).append(
            {"units": st["units_kept"], "value": r["metrics"]["test"][r["task_info"]["select"]],
             "strength": st.get("strength") or 0.0, "sel": r["task_info"]["select"], "protocol": _protocol(r),
             "series": f"{r['model']}/{r['preset']}, {r['timing'].get('epochs')} epochs", "setting": _group_label(r)})
    for (task, method, units, symbol), pts in sorted(by_task.items()):
        if not any(p["strength"] for p in pts):  # dense runs only: no structure was learned
            continue
        shown = [k for k in PROTOCOL_KEYS if len({p["protocol"][k] for p in pts}) > 1]
        for p in pts:
            p["series"] += "".join(f", {k}={p['protocol'][k] or 'none'}" for k in shown)
        df = pd.DataFrame(pts).groupby(["series", "setting", "strength"]).agg(
            units=("units", "mean"), u_lo=("units", "min"), u_hi=("units", "max"), value=("value", "mean"),
            v_lo=("value", "min"), v_hi=("value", "max"), n=("value", "size")).reset_index()
        fig, ax = plt.subplots(figsize=(6.5, 4.2))
        colour = _colours(df.series.nunique())
        handles, labels = [], []
        for i, (series, s) in enumerate(df.groupby("series", sort=True)):
            s = s.sort_values(["strength", "units"])
            for r in s.itertuples():
                bars = r.n > 1
                ax.errorbar(r.units, r.value, xerr=[[r.units - r.u_lo], [r.u_hi - r.units]] if bars else None,
                            yerr=[[r.value - r.v_lo], [r.v_hi - r.value]] if bars else None, fmt="none", lw=1,
                            capsize=2, color=colour(i))
            pen, dense = s[s.strength > 0], s[s.strength == 0]
            line = ax.plot(pen.units, pen.value, "o-", ms=5, lw=1.2, color=colour(i))[0]
            ax.plot(dense.units, dense.value, "s", ms=6, mfc="none", color=colour(i))
            handles.append(line if len(pen) else ax.lines[-1])
            labels.append(series + ("" if len(pen) else f" ({symbol}=0 only)"))
        handles.append(matplotlib.lines.Line2D([], [], marker="s", ms=6, mfc="none", color="0.3", ls="none"))
        labels.append(f"open square: {symbol}=0, no penalty (dense, or trained at the width it names)")
        ax.margins(0.08)
        ax.set_xlabel(units)
        ax.set_ylabel(f"test {pts[0]['sel']}")
        ax.set_title(f"{task}: {method}, {pts[0]['sel']} vs components kept")
        fig.tight_layout()
        _label_points(ax, list(zip(df.units, df.value)), [f"{symbol}={v:.2g}" for v in df.strength])
        title = (f"a line per series: its runs with a penalty, by {symbol}; points: mean over a setting's seeds, "
                 f"bars: their min–max, where it has several")
        out.append(_savefig(fig, folder / f"{method.lower()}_{task}.png", (handles, labels, title)))
    return out


# the report's own plots (``structure_plots`` adds ``<method>_*`` for the methods of the records): a file of
# these names in plots/ that a report run did not write is a plot of a group no longer in the records
PLOT_PATTERNS = ("acc_vs_latency_*.png", "curves_*.png", "examples_*.png", "iss_*.png")


def build(results=None, out=None) -> dict:
    """Write the report of every record in ``results``; a line on ``out`` (stdout) names the stale plots removed."""
    res = records.results_dir(results)
    if not res.exists():
        raise SeqbenchError(f"results folder {res} does not exist "
                            f"(give the folder runs were written to with --results)")
    if not res.is_dir():
        raise SeqbenchError(f"results folder {res} is not a folder")
    recs = records.load_all(res)
    try:
        built = _write(res, recs)
        built["removed"] = _remove_stale_plots(res / "plots", built["plots"], recs)
    except OSError as e:
        raise SeqbenchError(f"cannot write the report into {res} ({e.strerror or type(e).__name__}: "
                            f"{e.filename or res}); every file there is either as it was or wholly replaced") from None
    if built["removed"]:
        print(f"report: removed {len(built['removed'])} plot(s) of groups no longer in the records from "
              f"{res / 'plots'}: {', '.join(p.name for p in built['removed'])}", file=out or sys.stdout)
    return built


def _remove_stale_plots(folder: Path, written: list[Path], recs: list[dict]) -> list[Path]:
    methods = {((r.get("measure") or {}).get("structure") or {}).get("method_label") for r in recs}
    patterns = {*PLOT_PATTERNS, *(f"{m.lower()}_*.png" for m in methods if isinstance(m, str) and m)}
    keep = {p.name for p in written}
    stale = sorted({p for pat in patterns for p in folder.glob(pat) if p.is_file() and p.name not in keep})
    for p in stale:
        p.unlink()
    return stale


def _write(res: Path, recs: list[dict]) -> dict:
    df = frame(recs)
    atomic_write(res / "summary.csv", df.to_csv(index=False))
    tabs = tables(df)
    pngs = plots(df, recs, res / "plots")
    pngs += structure_plots(recs, res / "plots")
    pngs += example_plots(recs, res, res / "plots")
    per_class = per_class_tables(recs)
    gains = gain_tables(df)
    failed = df[df.status != "completed"] if len(df) else df
    lines = [
        "# seqbench report",
        "",
        f"Generated by `seqbench report` from {len(recs)} records in `{res / 'runs'}`. Do not edit: regenerate.",
        "Values are mean ± std over seeds where a group has several runs (n).",
        "",
        "## Accuracy (test metrics at the best-validation checkpoint; "
        "the last epoch's with select=last or no validation split)",
        "",
    ]
    for task in dict.fromkeys(r["task"] for r in tabs["accuracy"]):  # tasks differ in metrics
        lines += [f"### {task}", "", _md([r for r in tabs["accuracy"] if r["task"] == task])]
    if not tabs["accuracy"]:
        lines.append(_md([]))
    for task, rows in gains.items():
        lines += [f"## Gain over the reference model: {task}", "",
                  "Test metric of each group minus the reference model's run of the same seed (paired; the "
                  "reference at the same values of the settings it shares with the group's variant); "
                  "mean ± std over the seeds both have, each seed's difference in brackets. For a loss, "
                  "negative is better.", "", _md(rows)]
    for task, rows in per_class.items():
        lines += [f"## Per-class test IoU: {task}", "", _md(rows)]
    lines += [
        "## Sparsity",
        "",
        _md(tabs["sparsity"]),
        "## Latency (forward pass, eval mode; torch.utils.benchmark median and IQR) and training throughput",
        "",
        *(["An IQR of – : one timing run, no spread measured; (k of n runs): the IQR over the runs that "
           "measured one.", ""] if len(df) and _unknown_iqr(df) else []),
        _md(tabs["latency"]),
    ]
    lines += bench_section(res / "benchmarks")
    if len(failed):
        lines += ["## Failed runs", "", _md([{"run_id": r.run_id, "failure": r.failure} for r in failed.itertuples()])]
    if pngs:
        lines += ["## Plots", ""] + [f"![{p.stem}](plots/{p.name})" for p in pngs] + [""]
    atomic_write(res / "report.md", "\n".join(lines))
    return {"records": len(recs), "summary": res / "summary.csv", "report": res / "report.md", "plots": pngs}


def bench_section(folder: Path) -> list[str]:
    """The latest ``seqbench bench`` table of each (task, contenders, device, settings), newest first."""
    latest: dict = {}
    for p in sorted(folder.glob("bench-*.json")) if folder.is_dir() else []:
        try:
            b = json.loads(p.read_text())
            key = (b["task"], tuple(b["configs"]), b["env"]["device_name"], b.get("run"),
                   json.dumps(b.get("overrides"), sort_keys=True), b.get("batch_size"))
            md = b["markdown"]
        except (OSError, ValueError, KeyError, TypeError):
            continue  # not a bench result (or an older format): other benchmarks have their own JSON
        latest[key] = (b.get("time", ""), p, b, md)
    if not latest:
        return []
    out = ["## Benchmarks (`seqbench bench`, latest of each)", ""]
    for _, p, b, md in sorted(latest.values(), key=lambda v: v[0], reverse=True):
        what = f"run {b['run']}" if b.get("run") else ", ".join(b["configs"])
        sets = " ".join(f"{k}={v}" for k, v in (b.get("overrides") or {}).items())
        out += [f"### {b['task']}: {what}", "",
                f"{b['env']['device_name']}, {b['threads']} thread(s), torch {b['env']['torch']}, {b.get('time', '')}"
                f"{'; ' + sets if sets else ''}; `{p.name}`", md, ""]
    return out


def fmt_float(v) -> str:  # used by the CLI summary
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4g}"
