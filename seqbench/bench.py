"""``seqbench bench``: the speed of registered models on a task's shapes, side by side.

    seqbench bench --task pmnist --models lstm,hippo,enrnn,iss-lstm --set model.hidden=512 --batch-size 100
    seqbench bench --task cifar10 --models resnet,se-resnet,dia-resnet --mode infer
    seqbench bench --task pmnist --models hippo+step=dense,hippo+step=fast      # one model, two settings
    seqbench bench --run RUN_ID                                              # a trained run vs its pruned model

Each contender is built exactly as ``seqbench run`` builds it (the config resolved from presets and
overrides, the task's wrapper around the backbone, the run's optimiser, AMP and strategy hooks) by
``build(cfg, data=False)``: no data files are read, inputs come from ``task.example_batch`` (the
task's shapes and dtypes). A contender is a model name, optionally with settings after ``+``
(``iss-lstm+sizes=373,315``: a key without a dot is a model key).

- ``--mode train``: one call = ``Setup.step`` (forward, loss + regulariser, backward, clipping,
  optimiser step, after-step hook) at ``--batch-size``.
- ``--mode infer``: one call = a forward in eval mode without autograd, at batch 1 and at
  ``--batch-size``; no training step is ever taken (nor a training batch made). Default: both.

Timing (``measure.interleaved``): warm-up calls first (lazy initialisation, cuDNN plans, HiPPO's
tables), then ``--rounds`` rounds; in each round every contender is timed once with
torch.utils.benchmark's ``blocked_autorange`` (CUDA synchronised by the Timer), the order reversed
every other round so drift hits all alike. Per contender: min / median / IQR of the round medians,
and two ratios to the baseline (``--baseline``, default the first contender): ``ratio`` (the
markdown's ``ratio_paired``), the median of the per-round ratios, which drift in the machine's speed
does not move, and ``ratio_of_medians``, median_ms over the baseline's; far apart, the speed drifted.
Also: memory (CUDA: the most allocated during two calls above what was allocated before them, i.e.
the call's own activations and gradients, not the contenders' resident weights; CPU,
``rss_delta_mb``: the resident-set growth from before the contender was built to after one call of
each measured kind, each contender in a fresh process warmed up first (``fresh_rss``) — what building
and first running it took, not a per-call peak), analytic FLOPs (the wrapper's ``flops_per_sample``
times the batch; a training step counted as 3 forward passes, the usual convention) and the achieved
FLOP/s.

The table is printed as Markdown and saved with every number as JSON in
``results/benchmarks/bench-<task>-<time>.json``; ``seqbench report`` shows the latest of each.
"""
from __future__ import annotations

import copy
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

from . import config, measure, memory, records, registry
from .build import Setup, build, pick_device, set_threads
from .errors import SeqbenchError, clip
from .model import fit_problems, prune_in_place
from .rundir import RunDir


def parse_contenders(text: str) -> list[str]:
    """``a,b+k=1,2,c`` → ``["a", "b+k=1,2", "c"]``: a piece starting with a digit continues the
    previous value (widths such as ``sizes=373,315``); model names never start with one."""
    out: list[str] = []
    for piece in (p.strip() for p in text.split(",")):
        if not piece:
            raise SeqbenchError(f"--models {clip(repr(text))}: an empty name (a comma too many); "
                                f"e.g. --models lstm,gru")
        if out and piece[0].isdigit() and "=" in out[-1]:
            out[-1] += "," + piece
        else:
            out.append(piece)
    return out


def contender_config(spec: str, task: str, preset: str, overrides: dict) -> config.RunConfig:
    name, *settings = spec.split("+")
    extra = {}
    for s in settings:
        if "=" not in s:
            raise SeqbenchError(f"contender {clip(repr(spec))}: expected model+key=value, got {clip(repr(s))}")
        k, v = s.split("=", 1)
        extra[k if "." in k or k in config.TRAIN_KEYS else f"model.{k}"] = v
    m, t = registry.get_model(name), registry.get_task(task)
    ok, why = registry.compatible(m, t)
    if not ok:
        raise SeqbenchError(why)
    return config.resolve(m, t, preset, {**overrides, **extra})


def _rss_mb() -> float:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return float("nan")


class Contender:
    """A built model with its calls: ``call("infer", batch)`` and ``call("train", batch)``; ``model``:
    another model than the setup's to time in inference (a pruned copy)."""

    def __init__(self, label: str, setup: Setup, batch_size: int, model=None):
        self.label, self.setup, self.batch_size = label, setup, batch_size
        self.model = model if model is not None else setup.model
        self._train_batch = None  # made on the first training call: --mode infer never makes one
        self.infer_x = {b: setup.task.example_batch(b)[0].to(setup.device) for b in sorted({1, batch_size})}
        self.flops = int(self.model.flops_per_sample())
        self.params = sum(p.numel() for p in self.model.parameters())
        self.seq_len = setup.spec.seq_len
        self.impl = measure.implementation(self.model)

    @property
    def train_batch(self) -> tuple:
        if self._train_batch is None:
            self._train_batch = tuple(t.to(self.setup.device) for t in self.setup.task.example_batch(self.batch_size))
        return self._train_batch

    def warm(self, rss_before: float, modes=("train", "infer")) -> None:
        """One call of each kind timed (only those: no training step for --mode infer) right after
        building: lazy state is made; ``rss_delta_mb``: the resident-set growth since ``rss_before``."""
        for mode in modes:
            self.call(mode, self.batch_size)()
        self.rss_delta_mb = _rss_mb() - rss_before

    def call(self, mode: str, batch: int):
        setup, model = self.setup, self.model
        if mode == "train":
            batch_ = self.train_batch

            def fn():
                model.train()
                setup.step(batch_, plain=True)
        else:
            x = self.infer_x[batch]

            def fn():
                model.eval()
                with torch.no_grad(), setup.autocast():
                    model(x)
        return fn


def build_contenders(specs, task, preset, overrides, batch_size, modes=("train", "infer")) -> dict[str, Contender]:
    """Each contender built and warmed by one call of each of ``modes`` (no training step without "train")."""
    out, cfgs = {}, {}
    for spec in specs:  # every config checked before anything is built
        if spec in cfgs:
            raise SeqbenchError(f"contender {clip(repr(spec))} given twice")
        cfgs[spec] = contender_config(spec, task, preset, overrides)
    for spec, cfg in cfgs.items():
        before = _rss_mb()
        setup = build(cfg, data=False)
        if "train" in modes:  # a training step at --batch-size that would not fit: one line, as for a run
            memory.check(setup, batch_size, knob="--batch-size")
        c = Contender(spec, setup, batch_size)
        c.warm(before, modes)
        out[spec] = c
    return out


def _warm_process() -> None:
    """What any first model costs the process, done before one is measured: torch's first optimiser
    imports torch._dynamo (about 150 MB), the first backward starts autograd's engine."""
    p = torch.nn.Parameter(torch.ones(8))
    opt = torch.optim.Adam([p], lr=1e-3)
    (p * p).sum().backward()
    opt.step()
    with torch.no_grad():
        torch.nn.functional.linear(torch.ones(2, 8), torch.ones(4, 8))


_PROBE = "from seqbench.bench import _rss_probe; _rss_probe()"


def _rss_probe() -> None:
    """In a fresh process (``fresh_rss``): the job on stdin, the contenders' ``rss_delta_mb`` on stdout."""
    job = json.loads(sys.stdin.read())
    set_threads(job["threads"])
    torch.manual_seed(0)
    _warm_process()
    if job.get("run"):
        got = from_run(job["run"], job["results"], job["batch_size"], "cpu")
    else:
        got = build_contenders([job["spec"]], job["task"], job["preset"], job["overrides"], job["batch_size"],
                               job["modes"])
    print(json.dumps({n: c.rss_delta_mb for n, c in got.items()}))


def fresh_rss(contenders: dict[str, Contender], job: dict) -> None:
    """The CPU memory column, each contender measured in a process of its own (a ``--run`` pair in one:
    the pruned model is made from the trained one), after ``_warm_process``: measured in this process,
    the first contender was charged with the process's warm-up, and later ones reused memory that
    earlier ones freed. ``job``: what the probe needs to build them again (``_rss_probe``)."""
    import subprocess

    groups = [[n] for n in contenders] if not job.get("run") else [list(contenders)]
    for names in groups:
        one = {**job, "spec": names[0]}
        p = subprocess.run([sys.executable, "-c", _PROBE], input=json.dumps(one), capture_output=True, text=True,
                           env={**os.environ, "OMP_NUM_THREADS": str(job["threads"])})
        try:
            got = json.loads(p.stdout.strip().splitlines()[-1])
        except (ValueError, IndexError):
            first = (p.stderr.strip().splitlines() or [f"exit code {p.returncode}"])[-1]
            raise SeqbenchError(f"measuring the memory of {', '.join(names)} in a fresh process failed: "
                                f"{clip(first, 200)}") from None
        for n in names:
            contenders[n].rss_delta_mb = got[n]


def from_run(run_id: str, results=None, batch_size: int = 1, device: str | None = None) -> dict[str, Contender]:
    """A trained run's model (its selected weights, with the run's config) and, for a backbone with
    ISS pruning, its physically pruned model (``prune_in_place``, as the runner tests it)."""
    res = records.results_dir(results)
    rd = RunDir(res, run_id)
    state, _ = rd.weights()
    rec = res / "runs" / f"{run_id}.json"
    try:
        flat = json.loads(rec.read_text())["config"] if rec.is_file() else rd.load("last.pt")["config"]
    except (OSError, ValueError, KeyError, TypeError, SeqbenchError) as e:
        raise SeqbenchError(f"run {clip(repr(run_id))}: cannot read its config ({type(e).__name__})") from None
    cfg = config.from_flat(flat, registry.get_model(flat["model"]), registry.get_task(flat["task"]))
    cfg.train.device = device or "auto"  # this machine's, not the one the run trained on
    before = _rss_mb()
    setup = build(cfg, data=False)
    problems = fit_problems(setup.model, state)
    if problems:
        raise SeqbenchError(f"run {clip(repr(run_id))}: its weights do not fit its model ({problems[0][:150]})")
    setup.model.load_state_dict(state)
    out = {"trained": Contender("trained", setup, batch_size)}
    out["trained"].warm(before, modes=("infer",))
    before = _rss_mb()
    small = copy.deepcopy(setup.model) if setup.hook("pruned") else None
    if small is not None and prune_in_place(small):
        small.to(setup.device)
        out["pruned"] = Contender("pruned", setup, batch_size, model=small)
        out["pruned"].warm(before, modes=("infer",))
        x = out["trained"].infer_x[1]
        with torch.no_grad():
            a, b = setup.model.eval()(x)[0], small.eval()(x)[0]
        out["pruned"].rel_err = float((b - a).norm() / a.norm().clamp_min(1e-30))
    return out


def run(contenders: dict[str, Contender], modes: list[str], batch_size: int, baseline: str | None,
        rounds: int, min_run_time: float) -> dict:
    names = list(contenders)
    base = baseline or names[0]
    if base not in contenders:
        raise SeqbenchError(f"--baseline {clip(repr(base))} is not one of the contenders: {', '.join(names)}")
    dev = next(iter(contenders.values())).setup.device
    tables = []
    for mode in modes:
        for batch in ([batch_size] if mode == "train" else sorted({1, batch_size})):
            fns = {n: c.call(mode, batch) for n, c in contenders.items()}
            mem = {}
            for n, fn in fns.items():  # warm-up, and the memory one call needs
                if dev.type == "cuda":
                    torch.cuda.synchronize(dev)
                    torch.cuda.reset_peak_memory_stats(dev)
                    held = torch.cuda.memory_allocated(dev)  # every contender's weights (and state) stay resident
                for _ in range(2):
                    fn()
                if dev.type == "cuda":
                    torch.cuda.synchronize(dev)
                    mem[n] = {"peak_cuda_mb": (torch.cuda.max_memory_allocated(dev) - held) / 2**20}
                else:
                    mem[n] = {"rss_delta_mb": contenders[n].rss_delta_mb}
            times = measure.interleaved(fns, rounds=rounds, min_run_time=min_run_time)
            rows = []
            base_median = statistics.median(times[base])
            for n, c in contenders.items():
                s = measure.summarize(times[n])
                ratios = [a / b for a, b in zip(times[n], times[base])]
                flops = c.flops * batch * (3 if mode == "train" else 1)
                row = {"contender": n, "impl": c.impl, "mode": mode, "batch": batch, "params": c.params,
                       "min_ms": s["min"] * 1e3, "median_ms": s["median"] * 1e3, "iqr_ms": s["iqr"] * 1e3,
                       "ratio": statistics.median(ratios), "ratio_of_medians": s["median"] / base_median,
                       "flops": flops,
                       "gflop_per_s": flops / s["median"] / 1e9 if s["median"] > 0 else None, **mem[n]}
                if c.seq_len:
                    row["ms_per_step"] = s["median"] * 1e3 / c.seq_len
                if hasattr(c, "rel_err"):
                    row["rel_err_vs_trained"] = c.rel_err
                rows.append(row)
            tables.append({"mode": mode, "batch": batch, "rows": rows, "round_times_s": times})
    return {"baseline": base, "tables": tables}


# the markdown's names of two columns (the JSON keeps ``ratio`` and ``ratio_of_medians``)
HEADERS = {"ratio": "ratio_paired", "ratio_of_medians": "ratio_of_medians"}


def markdown(result: dict) -> str:
    base = result["baseline"]
    rss = any("rss_delta_mb" in r for t in result["tables"] for r in t["rows"])
    lines = [f"\nratio_paired: the median over {result['rounds']} interleaved rounds of the time / {base}'s in the "
             f"same round (drift cancels); ratio_of_medians: median_ms / {base}'s (far apart: the speed drifted)"
             + ("; rss_delta_mb: resident-set growth from building it to one call of each mode, each contender in a "
                "fresh, warmed-up process" if rss else "")]
    for t in result["tables"]:
        lines.append(f"\n{t['mode']}, batch {t['batch']}\n")
        cols = ["contender", "impl", "median_ms", "iqr_ms", "min_ms", "ratio", "ratio_of_medians", "ms_per_step",
                "params", "flops", "gflop_per_s", "peak_cuda_mb", "rss_delta_mb"]
        cols = [c for c in cols if any(c in r and r[c] is not None for r in t["rows"])]
        lines.append("| " + " | ".join(HEADERS.get(c, c) for c in cols) + " |")
        lines.append("|" + "|".join("---" for _ in cols) + "|")
        for r in t["rows"]:
            lines.append("| " + " | ".join(_fmt(c, r.get(c)) for c in cols) + " |")
    return "\n".join(lines) + "\n"


def _fmt(col: str, v) -> str:
    if v is None:
        return "–"
    if col in ("params", "flops"):
        return f"{int(v):,}"
    if col in HEADERS:
        return f"{v:.2f}"
    if isinstance(v, float):
        return f"{v:.3f}" if abs(v) < 1000 else f"{v:,.0f}"
    return str(v)


def main(a) -> int:
    """The CLI's ``bench``: build, time, print, save."""
    threads = set_threads(a.threads)
    modes = ["train", "infer"] if a.mode == "both" else [a.mode]
    overrides = config.parse_set(a.sets)
    if a.device:
        overrides["device"] = a.device
    pick_device(overrides.get("device", "auto"))  # one line now if the machine lacks it
    torch.manual_seed(0)
    if a.run:
        if a.models or a.task or a.sets:
            raise SeqbenchError("--run takes the run's own model, task and settings; drop --models/--task/--set")
        if a.mode == "train":
            raise SeqbenchError("--run times inference (the trained model against its pruned one): use --mode infer")
        contenders = from_run(a.run, a.results, a.batch_size, a.device)
        task = next(iter(contenders.values())).setup.cfg.task
        modes = ["infer"]
        job = {"run": a.run, "results": str(records.results_dir(a.results).resolve())}
    else:
        if not a.task or not a.models:
            raise SeqbenchError("bench needs --task and --models (or --run RUN_ID); see 'seqbench list'")
        task = a.task
        contenders = build_contenders(parse_contenders(a.models), task, a.preset, overrides, a.batch_size, modes)
        job = {"task": task, "preset": a.preset, "overrides": overrides, "modes": modes}
    dev = next(iter(contenders.values())).setup.device
    if dev.type != "cuda":
        fresh_rss(contenders, {**job, "batch_size": a.batch_size, "threads": threads})
    print(f"bench on {task}: {', '.join(contenders)}; {dev} ({records.environment(dev)['device_name']}), "
          f"{threads} thread(s), torch {torch.__version__}", flush=True)
    result = run(contenders, modes, a.batch_size, a.baseline, a.rounds, a.min_run_time)
    result.update({
        "benchmark": "bench", "task": task, "preset": a.preset, "overrides": overrides, "run": a.run,
        "rounds": a.rounds, "min_run_time": a.min_run_time, "threads": threads, "batch_size": a.batch_size,
        "configs": {n: c.setup.cfg.flat() for n, c in contenders.items()},
        "env": records.environment(dev), "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
    })
    result["markdown"] = markdown(result)
    print(result["markdown"])
    folder = Path(a.out) if a.out else records.results_dir(a.results) / "benchmarks"  # where report reads them
    out = records.write_benchmark(result, f"bench-{task}", folder)
    print(f"written {out}")
    return 0
