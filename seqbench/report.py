"""``seqbench report``: every record in results/runs -> summary.csv, report.md and PNG plots.

Tables (mean ± std over seeds where a (task, model, preset, strategy) group has several runs):
accuracy (the task's metrics on test, the selection metric on validation), sparsity (params,
nonzero params, fraction of zeros, the model's structural report), latency (at the batch sizes the
task measured: 1 and 64, dense tasks 1 and 8; median and IQR, throughput, FLOPs), and, for records
that carry one, the per-class breakdown (dense tasks: test IoU per class). Plots: accuracy vs
batch-1 latency per task with the Pareto front marked, validation curves per task, and for records
that carry example predictions (dense tasks) image | ground truth | each model's prediction.
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
        })
        for b, d in lat.items():
            row[f"lat_{b}_ms"] = d.get("median_ms")
            # one timing run: torch.utils.benchmark measured no spread (its 0 is not a spread of 0)
            row[f"lat_{b}_iqr_ms"] = None if (d.get("runs") or 2) < 2 else d.get("iqr_ms")
    return row


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
            row = dict(name, device=dev, threads=int(threads), n=len(h))
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


def example_plots(recs: list[dict], res: Path, folder: Path) -> list[Path]:
    """Per task whose records carry example predictions (``examples``: dense tasks save their first
    test images' predictions beside the record): rows are the images, columns the image, its ground
    truth and each (model, preset, variant)'s prediction (its lowest seed), in the task's colour map
    (``task_info.palette``; ignored pixels black)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

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
        cols = 2 + len(data)
        fig, axes = plt.subplots(n, cols, figsize=(2.6 * cols, 2.0 * n), squeeze=False)
        base = data[next(iter(data))]
        for i in range(n):
            panels = [("image", base[f"image{i}"]), ("ground truth", palette[base[f"label{i}"]])]
            panels += [(label, palette[z[f"pred{i}"]]) for label, z in data.items()]
            for j, (title, img) in enumerate(panels):
                ax = axes[i, j]
                ax.imshow(img, interpolation="nearest")
                ax.set_xticks([])
                ax.set_yticks([])
                if i == 0:  # a long variant on its own line
                    ax.set_title(title.replace(" (", "\n(", 1), fontsize=7)
        fig.suptitle(f"{task}: test images, ground truth and predictions", fontsize=9)
        out.append(_savefig(fig, folder / f"examples_{task}.png"))
    return out


def _savefig(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    try:
        with warnings.catch_warnings():  # a key too wide for tight_layout: bbox_inches="tight" keeps it whole
            warnings.filterwarnings("ignore", "Tight layout not applied", UserWarning)
            fig.tight_layout()
        return atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120, bbox_inches="tight"))
    finally:
        plt.close(fig)


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
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.lines  # noqa: F401
    import matplotlib.ticker  # noqa: F401

    folder.mkdir(parents=True, exist_ok=True)
    out = []
    ok = df[df.status == "completed"] if len(df) else df
    for task, g in ok.groupby("task") if len(ok) else []:
        sel = g["select"].iloc[0]
        higher = next(r for r in recs if r["task"] == task)["task_info"]["metrics"][sel] == "higher"
        agg = g.groupby(["model", "preset", "strategy", "variant"], dropna=False).agg(
            lat=("lat_b1_ms", "mean"), val=(f"test_{sel}", "mean")).reset_index().dropna(subset=["lat", "val"])
        several = g.strategy.nunique() > 1  # name the strategy in both plots when the task's runs differ in it
        names = [_setting(r.model, r.preset, r.variant, r.strategy if several else None) for r in agg.itertuples()]
        # many or long names: numbered points and a key beside the axes, not crowded labels
        many = len(names) > 6 or max(map(len, names), default=0) > 28
        fig, ax = plt.subplots(figsize=(6.5, max(4.0, 0.17 * len(names) + 1)) if many else (6, 4))
        pts = list(zip(agg.lat, agg.val))
        ax.scatter(agg.lat, agg.val)
        for i, (name, pt) in enumerate(zip(names, pts), 1):
            ax.annotate(str(i) if many else name, pt, fontsize=7, xytext=(3, 3), textcoords="offset points")
        front = pareto(pts, higher)
        if front:
            ax.plot([pts[i][0] for i in front], [pts[i][1] for i in front], "r--", label="Pareto front")
        if many:
            key = [matplotlib.lines.Line2D([], [], ls="none", label=f"{i}. {n}") for i, n in enumerate(names, 1)]
            ax.legend(handles=ax.get_legend_handles_labels()[0] + key, fontsize=7, loc="upper left",
                      bbox_to_anchor=(1.02, 1.0), handlelength=0 if not front else None)
        elif front:
            ax.legend()
        ax.set_xscale("log")
        # 1 2 5 10 20 ...: a tick in every span
        ax.xaxis.set_major_locator(matplotlib.ticker.LogLocator(subs=(1.0, 2.0, 5.0), numticks=15))
        ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
        # a span of under 5x holds one 1-2-5 tick or none: label the minor ones
        narrow = len(pts) and max(agg.lat) < 5 * min(agg.lat)
        ax.xaxis.set_minor_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}") if narrow
                                     else matplotlib.ticker.NullFormatter())
        ax.set_xlabel("batch-1 latency, ms (median)")
        ax.set_ylabel(f"test {sel}")
        ax.set_title(f"{task}: test {sel} vs latency")
        out.append(_savefig(fig, folder / f"acc_vs_latency_{task}.png"))

        # one colour and one legend entry per setting, named as its point above; its seeds share the
        # colour (names from the table's rows: each record's variant is worked out once, in _row)
        name = {r.run_id: _setting(r.model, r.preset, r.variant, r.strategy if several else None)
                for r in g.itertuples()}
        runs = [r for r in recs if r["run_id"] in name and r["history"]]
        curves: dict[str, list[dict]] = {}
        for r in runs:
            curves.setdefault(name[r["run_id"]], []).append(r)
        lines = len(curves) + g["baseline"].nunique()
        # many settings or long names: the legend beside the axes (savefig keeps it whole), in columns
        # of at most 30, the figure as tall
        beside = lines > 10 or max(map(len, curves), default=0) > 40
        fig, ax = plt.subplots(figsize=(6, max(4.0, 0.15 * min(lines, 30) + 1)))
        colours = plt.get_cmap("tab10" if len(curves) <= 10 else "tab20")
        for i, (label, rs) in enumerate(sorted(curves.items())):
            seeds = sorted({r["seed"] for r in rs})  # a rerun of a seed is drawn, not named twice
            for j, r in enumerate(sorted(rs, key=lambda r: (r["seed"], r["run_id"]))):
                ys = [h.get(f"val_{sel}", h.get(f"test_{sel}")) for h in r["history"]]
                named = f"{label}, seed{'s' if len(seeds) > 1 else ''} {','.join(map(str, seeds))}"
                ax.plot([h["epoch"] for h in r["history"]], ys, marker="o", ms=3, lw=1, color=colours(i % colours.N),
                        label=None if j else named)
        for b in sorted(g["baseline"].dropna().unique()):
            ax.axhline(b, ls=":", color="k", label=f"memoryless baseline {b:.4g}")
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        no_val = any(f"val_{sel}" not in h for r in runs for h in r["history"])
        ax.set_ylabel(f"validation {sel}" + ("\n(test where a run has no validation split)" if no_val else ""))
        ax.set_title(f"{task}: training curves")
        if beside:
            ax.legend(fontsize=7, ncol=-(-lines // 30), loc="upper left", bbox_to_anchor=(1.02, 1.0))
        else:
            ax.legend(fontsize=7)
        out.append(_savefig(fig, folder / f"curves_{task}.png"))
    return out


def structure_plots(recs: list[dict], folder: Path) -> list[Path]:
    """Per task and structure method whose reports say how many units they keep (``units_kept``, from
    the model's ``describe_structure``: ISS): the test metric against the units kept, one point per
    run labelled with its strength (λ), one series per (model, epochs): the runs with a penalty
    joined by a line, strength-0 runs (the dense baseline, or a model trained at a kept width) as
    open squares."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = []
    by_task: dict[tuple, list] = {}
    for r in recs:
        st = (r.get("measure") or {}).get("structure")
        if r["status"] != "completed" or not isinstance(st, dict) or "units_kept" not in st:
            continue
        sel = r["task_info"]["select"]
        series = f"{r['model']}, {r['timing'].get('epochs')} epochs"  # a sweep of the strength at one budget
        key = (r["task"], st["method_label"], st["units_label"], st["strength_symbol"])
        point = (st["units_kept"], r["metrics"]["test"][sel], st.get("strength", 0.0), series, sel)
        by_task.setdefault(key, []).append(point)
    for (task, method, units, symbol), pts in sorted(by_task.items()):
        fig, ax = plt.subplots(figsize=(6, 4))
        for series in sorted({p[3] for p in pts}):
            mp = sorted(p for p in pts if p[3] == series)
            pen, dense = [p for p in mp if p[2]], [p for p in mp if not p[2]]
            line = ax.plot([p[0] for p in pen], [p[1] for p in pen], "o-", label=f"{series}: {method}")[0]
            ax.plot([p[0] for p in dense], [p[1] for p in dense], "s", mfc="none", color=line.get_color(),
                    label=f"{series}: dense at that width")
            for k, v, lam, _, _ in mp:
                ax.annotate(f"{symbol}={lam:.2g}", (k, v), fontsize=7, xytext=(3, 3), textcoords="offset points")
        ax.set_xlabel(units)
        ax.set_ylabel(f"test {pts[0][4]}")
        ax.set_title(f"{task}: {method}, {pts[0][4]} vs components kept")
        ax.legend(fontsize=8)
        out.append(_savefig(fig, folder / f"{method.lower()}_{task}.png"))
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
