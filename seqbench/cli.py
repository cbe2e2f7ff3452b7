"""The ``seqbench`` command: run, list, report, bench, sweep.

Bad input ends with one line on stderr (``seqbench: error: ...``) and a non-zero exit, never a
traceback.
"""
from __future__ import annotations

import argparse
import dataclasses
import re
import os
import sys
from pathlib import Path

from .errors import SeqbenchError, clip

# Shortcut flags and the config keys they set.
SHORTCUTS = {
    "epochs": "epochs", "batch_size": "batch_size", "lr": "lr", "hidden": "model.hidden",
    "seed": "seed", "device": "device", "amp": "amp", "strategy": "strategy", "threads": "threads",
}


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2 (argparse prints usage + message otherwise)
        raise SeqbenchError(f"{message} (see '{self.prog} --help')")


def _positive(s: str) -> int:
    try:
        n = int(s)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {clip(repr(s))}")
    return n


def _positive_real(s: str) -> float:
    try:
        v = float(s)
    except ValueError:
        v = float("nan")
    if not (v > 0 and v < float("inf")):
        raise argparse.ArgumentTypeError(f"expected a finite number > 0, got {clip(repr(s))}")
    return v


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="seqbench", description="Benchmark recurrent and sequence models.")
    plugins = _Parser(add_help=False)  # every command takes --import
    plugins.add_argument("--import", dest="imports", action="append", default=[], metavar="FILE_OR_MODULE",
                         help="a plugin: a .py file or an importable module that registers models, tasks or "
                              "strategies with seqbench's decorators (repeatable; also $SEQBENCH_PLUGINS)")
    sub = p.add_subparsers(dest="cmd", required=True, parser_class=_Parser)
    add = sub.add_parser
    sub.add_parser = lambda *args, **kw: add(*args, parents=[plugins], **kw)

    r = sub.add_parser("run", help="train, evaluate, measure and record one run")
    r.add_argument("--model", help="a registered model (seqbench list)")
    r.add_argument("--task", help="a registered task (seqbench list)")
    r.add_argument("--preset", default=None, help="tiny | fast | paper (default fast), or a name the task or model "
                                                  "defines (e.g. ptb: small, medium, large)")
    for flag in SHORTCUTS:
        r.add_argument(f"--{flag.replace('_', '-')}", dest=flag, default=None, metavar="V",
                       help=f"sets {SHORTCUTS[flag]}")
    r.add_argument("--deterministic", action="store_true", help="deterministic algorithms")
    r.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="set any config key (repeatable); a bad key lists the valid ones")
    r.add_argument("--resume", metavar="RUN_ID", help="continue a run from its last checkpoint")
    r.add_argument("--init-from", dest="init_from", default=None, metavar="RUN_ID",
                   help="start from another run's best weights (best.pt, else last.pt; sets init_from)")
    r.add_argument("--stop-after-epochs", type=_positive, default=None, metavar="N",
                   help="stop after N >= 1 epochs of this invocation, leaving a checkpoint to --resume")
    r.add_argument("--stop-after-minutes", type=_positive_real, default=None, metavar="M",
                   help="stop before an epoch that would end later than M minutes after this invocation began "
                        "(at least one epoch runs), leaving a checkpoint to --resume")
    r.add_argument("--results", default=None, help="results folder (default $SEQBENCH_RESULTS or ./results)")
    r.add_argument("--quiet", action="store_true", help="no progress bars")

    ls = sub.add_parser("list", help="models, tasks, and which pairs are compatible")
    ls.add_argument("--json", action="store_true", help="the registry as data: every entry's settings and presets")
    sh = sub.add_parser("show", help="a model, task or strategy: what it is, its settings, presets and partners")
    sh.add_argument("name", help="a registered name (seqbench list)")
    sh.add_argument("--json", action="store_true", help="as data")

    rep = sub.add_parser("report", help="tables and plots from every record in results/")
    rep.add_argument("--results", default=None)

    b = sub.add_parser("bench", help="speed of models on a task's shapes, side by side (seqbench/bench.py)")
    b.add_argument("--task", help="a registered task: its shapes, wrapper and presets")
    b.add_argument("--models", help="contenders, comma-separated: lstm,hippo or hippo+step=fast (settings after +)")
    b.add_argument("--run", metavar="RUN_ID", help="a trained run against its pruned model (ISS), inference")
    b.add_argument("--preset", default="fast")
    b.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE", help="for every contender")
    b.add_argument("--mode", choices=("train", "infer", "both"), default="both")
    b.add_argument("--batch-size", type=_positive, default=64, help="train batch, and the larger infer batch (also 1)")
    b.add_argument("--baseline", help="the contender ratios are taken against (default: the first)")
    b.add_argument("--device", default=None, help="auto | cpu | cuda | cuda:N")
    b.add_argument("--threads", type=_positive, default=None,
                   help="torch threads (default: torch's, capped at the cores given)")
    b.add_argument("--rounds", type=_positive, default=5)
    b.add_argument("--min-run-time", type=_positive_real, default=0.5, help="seconds of timing per contender per round")
    b.add_argument("--results", default=None, help="results folder: where --run finds the run and, without "
                   "--out, where the JSON goes (<results>/benchmarks; default $SEQBENCH_RESULTS or ./results)")
    b.add_argument("--out", default=None, help="folder for the JSON (default <results>/benchmarks)")
    # seqbench sweep: the axes come from a sweep file and/or these flags (seqbench/sweep.py)
    s = sub.add_parser("sweep", help="a grid of runs (models x tasks x presets x strategies x seeds x settings) on Ray")
    s.add_argument("file", nargs="?", help="a sweep file (TOML, e.g. scripts/sweeps/mptt-hydro.toml)")
    for axis in ("models", "tasks", "presets", "strategies", "seeds"):
        s.add_argument(f"--{axis}", metavar="A,B", help=f"comma-separated {axis} (replace the file's)")
    s.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="any config key; the same key given again adds a value to its axis")
    s.add_argument("--name", help="the sweep's name in its records (default: the file's stem)")
    s.add_argument("--address",
                   help="an existing Ray cluster (host:port, ray://host:10001); default: a local Ray on this machine")
    s.add_argument("--cpus-per-run", type=float, default=1.0, metavar="N",
                   help="CPUs per run, = its torch threads (default 1)")
    s.add_argument("--gpus-per-run", type=float, default=0.0, metavar="G",
                   help="GPUs per run; fractions share a GPU (default 0)")
    s.add_argument("--max-retries", type=int, default=2, metavar="N",
                   help="retries of a run whose worker died (default 2)")
    s.add_argument("--retry-failed", action="store_true", help="run again the runs recorded as failed")
    s.add_argument("--dry-run", action="store_true", help="list the runs and which are done; change nothing")
    s.add_argument("--results", default=None, help="results folder (on a cluster: a path every node shares)")
    return p


def _from(e) -> str:
    """A plugin entry's source, as ``seqbench list`` shows it (built-ins: nothing)."""
    from . import registry

    return "" if e.source == registry.BUILTIN else f"  [plugin: {e.source}]"


def _cmd_list() -> int:
    from . import registry
    from .config import params_class
    from .data import data_root

    ms, ts = registry.models(), registry.tasks()
    print("models:")
    for name, e in ms.items():
        fields = ", ".join(f.name for f in dataclasses.fields(params_class(e.cls)))
        print(f"  {name:<12} kinds: {', '.join(sorted(e.kinds)):<26} params: {fields}{_from(e)}")
    print("tasks:")
    for name, e in ts.items():
        try:  # shapes that depend on the data (a vocabulary, a record's channels) need the files
            s = e.cls(params_class(e.cls)(), data_root()).spec()
        except SeqbenchError as err:
            print(f"  {name:<17} kind: {e.cls.kind:<9} (shape unknown: {err}){_from(e)}")
            continue
        print(f"  {name:<17} kind: {s.kind:<9} input {s.shape_text():<10} d_output {s.d_output:<5} select {s.monitor}"
              f"{_from(e)}")
    print("strategies (--strategy):")
    for name, e in registry.strategies().items():
        c = e.cls
        doc = re.split(r"\.\s+(?=[A-Z])|: ", " ".join((c.__doc__ or "").split()))[0]  # its first clause
        print(f"  {name:<12} {'series tasks' if c.layout else 'any task':<13} {doc}{_from(e)}")
    plugins = registry.plugins()
    if plugins:
        print("plugins:")
        for p in plugins:
            added = ", ".join(f"{what} {name}" for what, name in p.registered) or "nothing registered"
            print(f"  {p.source}: {'BROKEN' if p.broken and not p.registered else 'loaded'} ({added})")
            for why in p.broken:
                print(f"    broken: {why}")
    width = max(len(n) for n in ms) if ms else 5
    print("\ncompatible pairs (x = runs):")
    print(" " * (width + 2) + " ".join(f"{t:>{max(len(t), 3)}}" for t in ts))
    for mname, m in ms.items():
        cells = " ".join(f"{('x' if registry.compatible(m, t)[0] else '.'):>{max(len(tn), 3)}}" for tn, t in ts.items())
        print(f"  {mname:<{width}}{cells}")
    return 0


def _summary(rec: dict) -> None:
    from . import records
    from .report import fmt_float

    m, meas = rec["metrics"], rec["measure"]
    print(f"run {rec['run_id']}: {rec['status']}")
    if rec["status"] != "completed":
        print(f"  failure: {rec['failure']}")
    else:
        test = ", ".join(f"{k} {fmt_float(v)}" for k, v in (m["test"] or {}).items())
        val = ", ".join(f"{k} {fmt_float(v)}" for k, v in (m["val"] or {}).items())
        lat = meas["latency"]
        sel, chosen = rec["task_info"]["select"], records.Selection.of(rec)
        if chosen.reason == records.LAST_NO_VAL_SPLIT:  # the papers' protocol
            tb = m.get("test_best") or {}
            best = f"; best test {sel} over epochs {fmt_float(tb.get(sel))} at epoch {tb.get('epoch')}" if tb else ""
            print(f"  test: {test}   (last epoch's weights: no validation split{best})")
        elif chosen.reason == records.LAST_NO_FINITE_VAL:
            print(f"  test: {test}   (no epoch had a finite validation {sel}: the last epoch's weights were tested)")
        else:
            which = "last epoch" if chosen.reason == records.LAST_REQUESTED else "best val epoch"
            print(f"  test: {test}   ({which} {chosen.epoch}: {val})")
        print(f"  params {meas['params']['total']:,} (nonzero {meas['params']['nonzero']:,}, "
              f"sparsity {meas['sparsity']['overall']:.4f}), FLOPs/sample {meas['flops_per_sample']:,}")
        print(f"  latency {', '.join(_latency(lat, k) for k in lat)} on {rec['env']['device']}, "
              f"{meas['torch_threads']} thread(s); train {fmt_float(meas['train_throughput'])} samples/s")
    t = rec["timing"]
    print(f"  wall {t['wall_s']:.1f} s (train {t['train_s']:.1f} s), record {rec['path']}")


def _latency(lat: dict, key: str) -> str:
    d = lat[key]
    if d.get("runs", 2) < 2:  # one timed block: torch.utils.benchmark has no spread to report
        return f"{key} {d['median_ms']:.3f} ms (1 timing run: no IQR)"
    return f"{key} {d['median_ms']:.3f} ms (IQR {d['iqr_ms']:.3f})"


def _resume_hint(runner) -> str:
    """What to type to continue: with --results when the run does not write to the default folder."""
    if runner.epoch == 0:
        return "no epoch finished, so there is nothing to resume; start the run again"
    flag = "" if runner.results == Path("results") else f" --results {runner.results}"
    return f"continue with: seqbench run --resume {runner.run_id}{flag}"


def _cmd_run(a) -> int:
    from . import config, distributed, registry
    from .runner import Runner

    if a.resume:  # the run's own config; only this machine's settings (threads, device, ...) may change
        given = [f for f in ("model", "task", "preset", "init_from", *SHORTCUTS)
                 if getattr(a, f) is not None and SHORTCUTS.get(f) not in config.BOOKKEEPING]
        if given:
            raise SeqbenchError(f"--resume takes the run's own config; drop --{', --'.join(given)}")
        machine = {SHORTCUTS[k]: getattr(a, k) for k in SHORTCUTS if getattr(a, k) is not None}
        machine.update(config.machine_settings(config.parse_set(a.sets)))
        if a.deterministic:
            machine["deterministic"] = "true"
        distributed.init(machine.get("device", "auto"))
        runner = Runner.resume(a.resume, results=a.results, quiet=a.quiet, machine=machine)
        _say(f"resuming {a.resume} after epoch {runner.epoch}")
    else:
        if not a.model or not a.task:
            raise SeqbenchError("run needs --model and --task (or --resume RUN_ID); see 'seqbench list'")
        model, task = registry.get_model(a.model), registry.get_task(a.task)
        ok, why = registry.compatible(model, task)
        if not ok:
            raise SeqbenchError(why)
        overrides = {SHORTCUTS[k]: getattr(a, k) for k in SHORTCUTS if getattr(a, k) is not None}
        overrides.update(config.parse_set(a.sets))
        if a.deterministic:
            overrides["deterministic"] = "true"
        if a.init_from is not None:
            overrides["init_from"] = a.init_from
        cfg = config.resolve(model, task, a.preset or config.DEFAULT_PRESET, overrides)
        world = distributed.init(cfg.train.device)
        job = distributed.Job(a.results, world)  # under torchrun: the run this job started before a restart
        run_id = job.run_id()
        if run_id and job.has_checkpoint(run_id):
            runner = Runner.resume(run_id, results=a.results, quiet=a.quiet)
            _say(f"restarted: resuming {run_id} after epoch {runner.epoch}")
        else:
            runner = Runner(cfg, results=a.results, quiet=a.quiet, run_id=run_id)
            job.remember(runner.run_id)
            procs = f" x {world.size} processes ({world.backend})" if world.on else ""
            _say(f"run {runner.run_id} on {runner.setup.device}{procs}, {runner.setup.threads} thread(s)")
    try:
        rec = runner.fit(stop_after_epochs=a.stop_after_epochs, stop_after_minutes=a.stop_after_minutes)
    except SeqbenchError:
        if not a.resume and runner.epoch == 0:
            job.forget()
        raise
    except KeyboardInterrupt:
        print(f"\ninterrupted after epoch {runner.epoch}; {_resume_hint(runner)}", file=sys.stderr)
        return 130
    if rec is None:
        _say(f"stopped after epoch {runner.epoch}; {_resume_hint(runner)}")
        return 0
    if not a.resume:
        job.forget()
    if runner.world.main:
        _summary(rec)
    return 0 if rec["status"] == "completed" else 1


def _say(text: str) -> None:
    """A line on stdout from rank 0 (the one process of an ordinary run)."""
    from .distributed import env_rank

    if env_rank() == 0:
        print(text, flush=True)


def _cmd_report(a) -> int:
    from .report import build

    out = build(a.results)
    print(f"{out['records']} records -> {out['summary']}, {out['report']}, {len(out['plots'])} plots")
    return 0


def _cmd_bench(a) -> int:
    from .bench import main as bench_main

    return bench_main(a)


def _cmd_sweep(a) -> int:
    from .sweep import command

    return command(a)


def _cmd_show(a) -> int:
    from .show import show

    print(show(a.name, a.json))
    return 0


def _cmd_list_or_json(a) -> int:
    if a.json:
        import json

        from .show import registry_data

        print(json.dumps(registry_data(), indent=1))
        return 0
    return _cmd_list()


def _plugins(a) -> None:
    """``--import``: into ``$SEQBENCH_PLUGINS`` (child processes, Ray workers), then loaded; a broken plugin is
    one warning line each (``seqbench list`` shows them in place), the rest keeps working."""
    from . import registry

    registry.add_plugins(a.imports)
    # list shows broken plugins in place; report needs the registry only for plugins it was given
    if a.cmd == "list" or (a.cmd == "report" and not registry.plugin_specs()):
        return
    from .distributed import env_rank

    registry.discover()
    for line in registry.broken():
        if env_rank() == 0:
            print(f"seqbench: warning: {line}", file=sys.stderr)


_COMMANDS = {"run": _cmd_run, "list": _cmd_list_or_json, "show": _cmd_show, "bench": _cmd_bench,
             "sweep": _cmd_sweep, "report": _cmd_report}


def main(argv=None) -> int:
    ended = False  # a rank that raised leaves without waiting for the others (the launcher stops them)
    try:
        a = _parser().parse_args(argv)
        _plugins(a)
        code = _COMMANDS[a.cmd](a)
        ended = True
        return code
    except SeqbenchError as e:
        from .distributed import env_rank, refused_alike

        # the ranks of a distributed run refuse alike and rank 0 says so; a rank refusing alone says so
        # itself and leaves without the closing barrier (torchrun then stops the others)
        ended, rank = refused_alike(), env_rank()
        if rank == 0 or not ended:
            print(f"seqbench: error: {'' if ended else f'rank {rank}: '}{e}", file=sys.stderr)
        return e.code
    except RuntimeError:
        from .distributed import refused_elsewhere

        if refused_elsewhere():  # a collective broken by a rank that refused alone and said why
            return 2
        raise
    except KeyboardInterrupt:  # before training started (loading data, building): nothing to keep
        print("\nseqbench: interrupted", file=sys.stderr)
        return 130
    finally:
        if "torch.distributed" in sys.modules:
            from .distributed import finish

            finish(wait=ended)


def entry() -> None:
    try:
        code = main()
        sys.stdout.flush()
    except BrokenPipeError:
        # the reader of our output went away (`seqbench ... | head`): not an error of ours; silence the
        # interpreter's own flush at exit (Python docs, "Note on SIGPIPE")
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = 141
    sys.exit(code)
