"""``seqbench sweep``: a grid of runs on Ray, on this machine or on a cluster; resumable, fault-tolerant.

A sweep is axes: models, tasks, presets, strategies, seeds, any config key with a list of values
(``set``) and ``variants`` (groups of settings that vary together, e.g. a strategy with its own
keys). The run list is the cross product, minus the (model, task) pairs that cannot run together
(listed once, not run). A sweep comes from a file (TOML, ``scripts/sweeps/*.toml``)::

    name = "mptt-hydro"               # optional: the file's stem
    models = ["gru"]                  # every axis: a list, or one value
    tasks = ["climate-hydro"]
    presets = ["fast"]                # default: fast
    strategies = ["rmb-iif", "mptt"]  # default: what the presets say
    seeds = [0, 1, 2, 3, 4]           # default: 0
    [set]                             # any config key: one value (fixed) or a list (an axis)
    epochs = 2
    "model.lam" = [0.0, 3e-5]
    [[variants]]                      # one table per point of this axis
    strategy = "mptt"
    keeper = 0.0

or from flags (``--models a,b --tasks c --seeds 0,1,2 --set key=value``; the same ``--set`` key
given twice is an axis), which replace the file's axes of the same name.

Every run is one Ray task calling ``Runner(cfg, ...).fit()``, the runner of ``seqbench run``. A run
is identified by its resolved config (``config.identity``/``config_hash``, written in every record):
a finished run is skipped, a failed one is skipped unless ``--retry-failed``, an interrupted one
resumes from ``<results>/checkpoints/<run_id>/last.pt`` (its run id is derived from model, task,
preset, seed and the hash). The worker returns its record and the driver writes it. A worker process
that dies (kill -9, OOM, node lost) is retried by Ray (``--max-retries``) and resumes from its last
checkpoint; a run that fails by itself (non-finite loss) is recorded as failed, and a run whose
config is refused is reported: neither is retried. Ctrl-C cancels the runs in flight and keeps
every record written.
"""
from __future__ import annotations

import dataclasses
import itertools
import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import config, records, registry
from .errors import SeqbenchError, clip

AXES = ("models", "tasks", "presets", "strategies", "seeds")
FILE_KEYS = ("name", "description", *AXES, "set", "variants")
INSTALL_HINT = "seqbench sweep needs Ray: pip install -e \".[ray]\" (or pip install 'ray==2.60.0')"
# The driver's environment that a worker takes over (data root, download/verify switches, and the
# crash tests' fault injection): in local Ray workers inherit it anyway, on a cluster they do not.
_FORWARD_PREFIX = "SEQBENCH_"
_FORWARD_SKIP = ("SEQBENCH_RESULTS",)  # the results folder goes as an absolute path


# ------------------------------------------------------------------------------------ the spec
@dataclass
class Spec:
    name: str
    models: list = field(default_factory=list)
    tasks: list = field(default_factory=list)
    presets: list = field(default_factory=lambda: [config.DEFAULT_PRESET])
    strategies: list = field(default_factory=list)  # empty: the presets' strategy
    seeds: list = field(default_factory=lambda: [0])
    set: dict = field(default_factory=dict)  # key -> list of values (one value: fixed)
    variants: list = field(default_factory=lambda: [{}])


def _as_list(v) -> list:
    return list(v) if isinstance(v, (list, tuple)) else [v]


def load_file(path) -> dict:
    """A sweep file as a dict of axes (TOML). Bad files are one line."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib
    p = Path(path)
    if not p.is_file():
        folder = " (it is a folder)" if p.is_dir() else ""
        raise SeqbenchError(f"sweep file {clip(str(p), 200)} does not exist{folder}")
    try:
        data = tomllib.loads(p.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise SeqbenchError(f"sweep file {p} is not valid TOML: {clip(str(e), 200)}") from None
    bad = sorted(set(data) - set(FILE_KEYS))
    if bad:
        raise SeqbenchError(f"sweep file {p}: unknown key(s) {', '.join(map(repr, bad))}; "
                            f"valid: {', '.join(FILE_KEYS)}")
    if not isinstance(data.get("set", {}), dict):
        raise SeqbenchError(f"sweep file {p}: 'set' must be a table of config keys")
    variants = data.get("variants", [{}])
    if not isinstance(variants, list) or not all(isinstance(v, dict) for v in variants):
        raise SeqbenchError(f"sweep file {p}: 'variants' must be an array of tables ([[variants]])")
    data.setdefault("name", p.stem)
    return data


def build_spec(file: str | None = None, name: str | None = None, sets: list[str] = (), **axes) -> Spec:
    """The sweep from a file and/or flags: a flag's axis (``models="lstm,gru"``) replaces the file's,
    a ``--set`` key replaces the file's ``set`` entry; ``sets`` repeating a key make it an axis."""
    data = load_file(file) if file else {"name": "adhoc"}
    for axis in AXES:
        if axes.get(axis) is not None:
            data[axis] = [v.strip() for v in axes[axis].split(",") if v.strip()]
    flag_sets: dict = {}
    for item in sets:
        if "=" not in item:
            raise SeqbenchError(f"--set expects key=value, got {clip(repr(item))}")
        k, v = item.split("=", 1)
        flag_sets.setdefault(k.strip(), []).append(v)
    spec = Spec(name=name or data["name"])
    for axis in AXES:
        if axis in data:
            setattr(spec, axis, _as_list(data[axis]))
    spec.set = {k: _as_list(v) for k, v in {**data.get("set", {}), **flag_sets}.items()}
    spec.variants = data.get("variants") or [{}]
    if not spec.models or not spec.tasks:
        raise SeqbenchError("a sweep needs models and tasks: a sweep file, or --models and --tasks "
                            "(see 'seqbench list')")
    try:
        spec.seeds = [int(s) for s in spec.seeds]
    except (TypeError, ValueError):
        raise SeqbenchError(f"bad seeds {clip(repr(spec.seeds))}: expected integers, e.g. 0,1,2") from None
    for axis in AXES:
        if not getattr(spec, axis) and axis != "strategies":
            raise SeqbenchError(f"axis '{axis}' is empty")
    owners = {"seed": "seeds", **({"strategy": "strategies"} if spec.strategies else {})}
    for k in spec.set:
        owners.setdefault(k, "set")
        if owners[k] != "set":
            raise SeqbenchError(f"key '{k}' is given twice (in 'set' and as {owners[k]}); give it once")
    for v in spec.variants:
        for k in v:
            if k in owners:
                raise SeqbenchError(f"key '{k}' is given twice (in 'variants' and as {owners[k]}); give it once")
    for m in spec.models:
        registry.get_model(str(m))
    for t in spec.tasks:
        registry.get_task(str(t))
    return spec


# ------------------------------------------------------------------------------------ the runs
@dataclass
class Run:
    model: str
    task: str
    preset: str
    overrides: dict  # what the axes set (seed, strategy, set keys, a variant's keys)
    fixed: dict  # bookkeeping added by the sweep (threads, device): outside the run's identity
    cfg: config.RunConfig
    hash: str
    status: str = "todo"  # todo | resume | done | failed
    run_id: str = ""
    record: dict | None = None  # the finished (or failed) record found for it

    @property
    def label(self) -> str:
        over = " ".join(f"{k}={_fmt(v)}" for k, v in self.overrides.items() if k != "seed")
        return f"{self.model} {self.task} {self.preset}{' ' + over if over else ''} seed={self.overrides['seed']}"


def _fmt(v) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def expand(spec: Spec, fixed: dict | None = None) -> tuple[list[Run], list[str]]:
    """The run list (every config resolved and checked: a bad key or value is one line naming the
    run, before anything starts) and the incompatible pairs with their reason (once each).
    ``fixed``: bookkeeping settings added to every run (threads, device), outside its identity."""
    set_axes = [[(k, v) for v in vals] for k, vals in spec.set.items()]
    runs, skipped = [], []
    for model, task in itertools.product(spec.models, spec.tasks):
        ok, why = registry.compatible(registry.get_model(model), registry.get_task(task))
        if not ok:
            skipped.append(why)
    for seed, task, preset, model, strategy, *rest in itertools.product(
            spec.seeds, spec.tasks, spec.presets, spec.models, spec.strategies or [None], *set_axes, spec.variants):
        me, te = registry.get_model(model), registry.get_task(task)
        if not registry.compatible(me, te)[0]:
            continue
        *pairs, variant = rest
        over = {"seed": seed, **({"strategy": strategy} if strategy else {}), **dict(pairs), **variant}
        try:
            cfg = config.resolve(me, te, str(preset), {**over, **(fixed or {})})
        except SeqbenchError as e:
            raise SeqbenchError(f"run {model} {task} {preset} {over}: {e}") from None
        runs.append(Run(model, task, str(preset), over, dict(fixed or {}), cfg, config.config_hash(cfg.flat())))
    if not runs:
        raise SeqbenchError("the sweep has no run: " + ("; ".join(skipped) if skipped else "an axis is empty"))
    seen = {}
    for r in runs:  # two points of the grid that resolve to one config (e.g. a key set to its preset value)
        if r.hash in seen:
            raise SeqbenchError(f"runs '{seen[r.hash].label}' and '{r.label}' resolve to the same config; drop one")
        seen[r.hash] = r
    return runs, skipped


def base_run_id(run: Run) -> str:
    return f"{run.model}-{run.task}-{run.preset}-s{run.cfg.train.seed}-h{run.hash[:10]}"


def find_status(runs: list[Run], results: Path, retry_failed: bool, clean: bool = True) -> None:
    """Each run's status from the records in ``results`` (matched by identity, recomputed from each
    record's stored config: a default changed since a record was written is seen) and its run id."""
    by_hash: dict[str, list[dict]] = {}
    for rec in records.load_all(results, clean=clean):
        by_hash.setdefault(config.config_hash(rec["config"]), []).append(rec)
    runs_dir, ck = results / "runs", results / "checkpoints"
    for run in runs:
        found = by_hash.get(run.hash, [])
        done = [r for r in found if r["status"] == "completed"]
        failed = [r for r in found if r["status"] != "completed"]
        if done:
            run.status, run.record = "done", max(done, key=lambda r: r["timing"].get("finished") or "")
            run.run_id = run.record["run_id"]
            continue
        if failed and not retry_failed:
            run.status, run.record = "failed", failed[-1]
            run.run_id = run.record["run_id"]
            continue
        base, k = base_run_id(run), 0
        run.run_id = base
        while (runs_dir / f"{run.run_id}.json").exists():  # a failed attempt's record: a new id
            k += 1
            run.run_id = f"{base}-r{k}"
        run.status = "resume" if (ck / run.run_id / "last.pt").is_file() else "todo"


# ------------------------------------------------------------------------------------ the worker
def _wait_for_lock(path: Path, timeout: float = 60.0) -> None:
    """Before a retried attempt resumes: the dead attempt's lock must be stale. On this host the
    runner sees that (its pid is gone; a process of a lost node may take a moment to exit). From
    another host it cannot: a lock written on a host where no Ray node is alive any more is removed.
    A lock still held after ``timeout`` is left to the runner, which refuses the run in one line."""
    from .rundir import lock_owner

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            host = path.read_text().split()[0]
        except (OSError, IndexError):
            return  # no lock, or a half-written one (stale for the runner)
        if host == socket.gethostname():
            if lock_owner(path) is None:
                return
        else:
            import ray

            if host not in {n.get("NodeManagerHostname") for n in ray.nodes() if n.get("Alive")}:
                path.unlink(missing_ok=True)
                return
        time.sleep(1.0)


def work(job: dict) -> dict:
    """One sweep run in a Ray worker: resume from its checkpoint if an earlier attempt left one, else
    start; ``fit()`` returns the record, which goes back to the driver unwritten. A user-facing
    error (a config the worker refuses, data missing on this node) comes back as ``error``."""
    for k in [k for k in os.environ if k.startswith("SEQBENCH_FAULT") and k not in job["env"]]:
        del os.environ[k]  # a reused worker: no fault setting left over from another sweep
    os.environ.update(job["env"])
    from .runner import Runner

    results = Path(job["results"])
    t0 = time.time()
    try:
        run_dir = results / "checkpoints" / job["run_id"]
        _wait_for_lock(run_dir / "lock")
        if (run_dir / "last.pt").is_file():
            runner = Runner.resume(job["run_id"], results=results, quiet=True, write_record=False)
            resumed = runner.epoch
        else:
            cfg = config.resolve(registry.get_model(job["model"]), registry.get_task(job["task"]), job["preset"],
                                 job["overrides"])
            runner = Runner(cfg, results=results, run_id=job["run_id"], quiet=True, write_record=False)
            resumed = None
        rec = runner.fit()
        return {"record": rec, "resumed_from": resumed, "seconds": time.time() - t0}
    except SeqbenchError as e:
        return {"error": str(e), "record": getattr(e, "record", None), "seconds": time.time() - t0}


# ------------------------------------------------------------------------------------ the driver
def _prepare_data(runs: list[Run]) -> None:
    """Local sweeps: each distinct task's data is checked (and downloaded or generated) once, here,
    before the workers start, so they do not race on a download and a missing file is one line now."""
    from .build import make_task

    seen = set()
    for run in runs:
        c = run.cfg
        key = (c.task, json.dumps(dataclasses.asdict(c.task_params), sort_keys=True, default=str), c.train.strategy)
        if key in seen:
            continue
        seen.add(key)
        task = make_task(c)
        task.spec()
        task.loaders(c.train.batch_size, c.train.eval_batch_size, c.train.seed)


def _ray():
    try:
        import ray
    except ImportError:
        raise SeqbenchError(INSTALL_HINT) from None
    return ray


# The local Ray's head, run by a helper process in a session of its own: the session holds every
# process of this Ray instance (Ray's workers get process groups of their own, not sessions) and
# nothing else. The helper reads the driver's end of a pipe: at EOF (the driver ended, or died, even
# by kill -9) it kills every process of its session at once (Linux: found in /proc). Without it,
# after a kill -9 of the driver Ray's DashboardAgent and RuntimeEnvAgent outlived it by about a minute.
# Not started: the log monitor (log_to_driver is off) and the autoscaler's monitor (a fixed local node);
# ray.init has no option for these, so RayParams' defaults are changed, here only. Ray 2.60's raylet
# refuses to start without its two agents, so they stay.
_HEAD = """# seqbench sweep: its local Ray (seqbench/sweep.py, _HEAD)
import json, os, signal, sys
try:
    from ray._private import parameter
    _params = parameter.RayParams.__init__
    def _lean(self, *a, **k):
        k.setdefault("include_log_monitor", False)
        k.setdefault("no_monitor", True)
        _params(self, *a, **k)
    parameter.RayParams.__init__ = _lean
except Exception:
    pass
import ray
out = os.fdopen(int(sys.argv[2]), "w")
try:
    ray.init(address="local", num_cpus=int(sys.argv[1]), include_dashboard=False, log_to_driver=False,
             logging_level="ERROR")
    out.write(json.dumps({"address": ray.get_runtime_context().gcs_address}) + "\\n")
except BaseException as e:
    out.write(json.dumps({"error": (str(e).strip().splitlines() or [type(e).__name__])[0]}) + "\\n")
out.close()
sys.stdin.buffer.read()
import time
me, sid = os.getpid(), os.getsid(0)
for _ in range(250):  # Ray's workers have process groups of their own, in this session: the session is killed
    alive = []
    for d in os.listdir("/proc"):
        try:
            st = open(f"/proc/{d}/stat").read().rsplit(")", 1)[1].split()
            if int(d) != me and int(st[3]) == sid and st[0] != "Z":
                alive.append(int(d))
        except (OSError, ValueError, IndexError):
            pass
    for pid in alive:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    if not alive:
        break
    time.sleep(0.02)
os._exit(0)
"""


class _LocalHead:
    """A local Ray instance that dies with this process (see ``_HEAD``); it starts in the background."""

    def __init__(self, num_cpus: int):
        read, write = os.pipe()
        try:
            self.proc = subprocess.Popen([sys.executable, "-c", _HEAD, str(num_cpus), str(write)],
                                         stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, pass_fds=(write,),
                                         start_new_session=True)
        finally:
            os.close(write)
        self._reply = os.fdopen(read)

    def address(self) -> str:
        """The head's GCS address, once it has started; its error line if it could not."""
        line = self._reply.readline()
        self._reply.close()
        try:
            reply = json.loads(line)
        except ValueError:
            reply = {"error": f"its process ended (exit code {self.proc.wait()})"}
        if "address" not in reply:
            raise SeqbenchError(f"cannot start a local Ray instance: {clip(reply['error'], 200)}")
        return reply["address"]

    def stop(self) -> None:
        """Every process of the instance killed (EOF on the helper's stdin), waited for."""
        if not self._reply.closed:
            self._reply.close()
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:  # a helper that does not end: its group killed from here
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def _start_head(ray, address: str | None, num_cpus: int | None) -> _LocalHead | None:
    """The sweep's own local Ray, started now (its start overlaps the data checks), where one is needed."""
    if address is not None or ray.is_initialized() or not os.path.isdir("/proc"):
        return None
    # one mode for every process of this local instance (Ray >= 2.5x turns token auth on once a
    # token file exists: see docs/commands.md), and no usage report from an offline machine
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    from .build import cores_available

    return _LocalHead(num_cpus or cores_available())


def _connect(ray, address: str | None, num_cpus: int | None, head: _LocalHead | None = None) -> bool:
    """Join ``head``'s Ray, or ``address``, or start a local Ray in this process (no /proc), unless this
    process already has one; True if this process connected."""
    if ray.is_initialized():
        return False
    kw = dict(include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    if head is not None:
        address, kw = head.address(), dict(log_to_driver=False, logging_level="ERROR")
    try:
        if address is None:  # the settings of _start_head
            os.environ.setdefault("RAY_AUTH_MODE", "disabled")
            os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
            from .build import cores_available

            ray.init(address="local", num_cpus=num_cpus or cores_available(), **kw)
        else:
            ray.init(address=address, **kw)
    except Exception as e:  # a wrong address, an auth mismatch, ray:// without ray[client]
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        where = f"Ray at {address}" if address else "a local Ray instance"
        raise SeqbenchError(f"cannot start or reach {where}: {clip(first, 200)} (every process of a cluster "
                            f"needs the same RAY_AUTH_MODE; ray:// needs pip install 'ray[client]')") from None
    return True


def _check_resources(ray, cpus: float, gpus: float) -> None:
    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    most_cpu = max((n.get("CPU", 0) for n in nodes), default=0)
    most_gpu = max((n.get("GPU", 0) for n in nodes), default=0)
    if cpus > most_cpu:
        raise SeqbenchError(f"--cpus-per-run {cpus:g}: no Ray node has that many CPUs (the largest has {most_cpu:g})")
    if gpus > most_gpu:
        raise SeqbenchError(f"--gpus-per-run {gpus:g}: no Ray node has that many GPUs (the largest has {most_gpu:g})")


def estimate_eta(pending: list[tuple], done: list[tuple], slots: int, running_for=()) -> tuple[float, bool] | None:
    """Seconds until the last pending run ends, and whether that is only a lower bound; None before a
    finished run to go by.

    ``pending``: the unfinished runs' keys ``(setting, family)`` in the order Ray starts them (submitted);
    ``done``: ``(setting, family, seconds)`` of finished runs; ``running_for``: how long each of the first
    pending runs (those in flight) has run. A run costs the mean of the finished runs of its setting (its
    config but the seed), else of its family (model, task, preset). A run of neither is counted at the
    shortest finished run, and a run in flight longer than its estimate as ending now: the result is then
    a lower bound. The runs are laid in order on ``slots`` slots, each on the first one free."""
    import heapq

    if not done:
        return None
    by: dict = {}
    for setting, family, sec in done:
        by.setdefault(("s", setting), []).append(sec)
        by.setdefault(("f", family), []).append(sec)
    shortest = min(sec for *_, sec in done)
    lower = False

    def cost(key) -> float:
        nonlocal lower
        for level, k in (("s", key[0]), ("f", key[1])):
            if (level, k) in by:
                return sum(by[level, k]) / len(by[level, k])
        lower = True
        return shortest

    slots = max(1, int(slots))
    free = [0.0] * max(0, slots - len(running_for))
    for key, ran in zip(pending, running_for):
        left = cost(key) - ran
        lower |= left < 0
        free.append(max(left, 0.0))
    heapq.heapify(free)
    end = max(free, default=0.0)
    for key in pending[len(running_for):]:
        t = heapq.heappop(free) + cost(key)
        end = max(end, t)
        heapq.heappush(free, t)
    return end, lower


class _Status:
    """Counts, ETA (``estimate_eta``), and one line per finished run; a bar on a terminal. Ray starts the
    runs in the order submitted, each when a slot frees: the k-th run started at the k-th moment a
    slot was free (the start, then every finish), which gives how long the runs in flight have run."""

    def __init__(self, runs: list, slots, out):
        from .progress import interactive

        self.total, self.slots, self.out = len(runs), slots, out
        self.keys = [(r.label.rsplit(" seed=", 1)[0], (r.model, r.task, r.preset)) for r in runs]
        self.index = {id(r): i for i, r in enumerate(runs)}
        self.done = self.failed = 0
        self.start = time.monotonic()
        self.freed = [self.start] * max(1, int(slots()))  # the moments a slot was free
        self.finished: set[int] = set()
        self.seconds: list[tuple] = []  # (setting, family, seconds) of the finished runs
        self.bar = None
        if interactive():
            from tqdm.auto import tqdm

            self.bar = tqdm(total=self.total, desc="sweep", unit="run", dynamic_ncols=True)

    def line(self, text: str, ok: bool, run=None, seconds: float | None = None) -> None:
        self.done += ok
        self.failed += not ok
        now = time.monotonic()
        if run is not None:
            i = self.index[id(run)]
            self.finished.add(i)
            if seconds is not None:
                self.seconds.append((*self.keys[i], seconds))
        self.freed.append(now)
        finished = self.done + self.failed
        left = self.total - finished
        running = min(left, self.slots())
        if finished and left:
            pending = [i for i in range(self.total) if i not in self.finished]
            freed = sorted(self.freed)
            flight = [now - freed[i] for i in pending[:running] if i < len(freed)]
            est = estimate_eta([self.keys[i] for i in pending], self.seconds, running or 1, flight)
            eta = "ETA ?" if est is None else f"ETA {'≥ ' if est[1] else ''}{_hms(est[0])}"
        else:
            eta = _hms(now - self.start)
        head = f"[{finished}/{self.total} | {self.failed} failed | {running} running | {eta}]"
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(failed=self.failed, running=running)
            self.bar.write(f"{head} {text}", file=self.out)
        else:
            print(f"{head} {text}", file=self.out, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _hms(s: float) -> str:
    s = int(round(s))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


def _result_text(rec: dict) -> str:
    if rec["status"] != "completed":
        return f"failed: {rec.get('failure')}"
    sel = rec["task_info"]["select"]
    v = (rec["metrics"].get("test") or {}).get(sel)
    return f"completed, test {sel} {v:.4g}" if isinstance(v, (int, float)) else "completed"


def run_sweep(spec: Spec, results=None, address: str | None = None, cpus_per_run: float = 1.0,
              gpus_per_run: float = 0.0, max_retries: int = 2, retry_failed: bool = False,
              dry_run: bool = False, num_cpus: int | None = None, out=None) -> int:
    """Run (or with ``dry_run`` list) a sweep; the exit code: 0 when every run of it has completed."""
    out = out or sys.stdout
    if not (math.isfinite(cpus_per_run) and cpus_per_run > 0):
        raise SeqbenchError(f"bad value {cpus_per_run!r} for --cpus-per-run: expected a number > 0")
    if not (math.isfinite(gpus_per_run) and gpus_per_run >= 0):
        raise SeqbenchError(f"bad value {gpus_per_run!r} for --gpus-per-run: expected a number >= 0")
    if max_retries < 0:
        raise SeqbenchError(f"bad value {max_retries} for --max-retries: expected an integer >= 0")
    results = records.results_dir(results).resolve()
    taken = set(spec.set) | {k for v in spec.variants for k in v}
    fixed = {"threads": max(1, int(cpus_per_run))} if "threads" not in taken else {}
    if gpus_per_run == 0 and "device" not in taken:
        fixed["device"] = "cpu"  # a run that reserved no GPU must not use one (Ray hides none from it)
    runs, skipped = expand(spec, fixed)  # every run's config checked: bad input is one line, before Ray
    ray = None if dry_run else _ray()  # then, without Ray, the line saying how to install it
    find_status(runs, results, retry_failed, clean=not dry_run)
    todo = [r for r in runs if r.status in ("todo", "resume")]
    print(f"sweep {spec.name}: {len(runs)} runs; {sum(r.status == 'done' for r in runs)} done, "
          f"{sum(r.status == 'failed' for r in runs)} failed (not retried without --retry-failed), "
          f"{len(todo)} to run ({sum(r.status == 'resume' for r in runs)} resume from a checkpoint)", file=out)
    for why in skipped:
        print(f"  skipped: {why}", file=out)
    if dry_run:
        for r in runs:
            extra = {"done": r.run_id, "failed": f"{r.run_id}: {(r.record or {}).get('failure')}",
                     "resume": f"{r.run_id} (checkpoint)", "todo": r.run_id}[r.status]
            print(f"  {r.status:<7} {r.label}  {extra}", file=out)
        return 0
    if todo:
        head = _start_head(ray, address, num_cpus)
        try:
            if address is None:
                _prepare_data(todo)
            rc = _execute(ray, spec, todo, results, address, cpus_per_run, gpus_per_run, max_retries, num_cpus,
                          out, head)
        finally:
            if head is not None:
                head.stop()
        if rc == 130:
            return rc
        find_status(runs, results, retry_failed=False)
    _final(spec, runs, results, out)
    return 0 if all(r.status == "done" for r in runs) else 1


def _execute(ray, spec, todo, results, address, cpus, gpus, max_retries, num_cpus, out, head=None) -> int:
    started = _connect(ray, address, num_cpus, head)
    try:
        _check_resources(ray, cpus, gpus)
        env = {k: v for k, v in os.environ.items() if k.startswith(_FORWARD_PREFIX) and k not in _FORWARD_SKIP}
        # declared on the function, not per call: with GPUs Ray then gives each run a fresh worker
        # process (max_calls=1), so no CUDA state carries from one run to the next
        remote = ray.remote(num_cpus=cpus, num_gpus=gpus, max_retries=max_retries, retry_exceptions=False)(work)
        refs = {}
        for run in todo:
            job = {"model": run.model, "task": run.task, "preset": run.preset, "run_id": run.run_id,
                   "overrides": {**run.overrides, **run.fixed},
                   "results": str(results), "env": env}
            refs[remote.options(name=f"seqbench:{run.run_id}").remote(job)] = run

        def slots() -> int:
            res = ray.cluster_resources()
            n = res.get("CPU", 0) / cpus
            return int(min(n, res.get("GPU", 0) / gpus) if gpus else n)

        status = _Status(todo, slots, out)
        pending = list(refs)
        try:
            while pending:
                done, pending = ray.wait(pending, num_returns=1, timeout=2.0)
                for ref in done:
                    _collect(ray, ref, refs[ref], spec, results, status, max_retries)
        except KeyboardInterrupt:
            for ref in pending:
                ray.cancel(ref, force=True)
            status.close()
            print(f"\nsweep interrupted: {status.done + status.failed} runs finished here, their records kept; "
                  f"the same command continues (runs in flight resume from their last epoch)", file=sys.stderr)
            return 130
        status.close()
        return 0
    finally:
        if started:
            ray.shutdown()


def _collect(ray, ref, run: Run, spec: Spec, results: Path, status: _Status, max_retries: int) -> None:
    try:
        res = ray.get(ref)
    except ray.exceptions.RayTaskError as e:  # an exception in the run itself: a bug, not retried
        cause = getattr(e, "cause", None) or e
        first = (str(cause).strip().splitlines() or [""])[0]
        status.line(f"{run.label}: error {type(cause).__name__}: {clip(first, 200)}", ok=False, run=run)
        return
    except ray.exceptions.RayError as e:  # its worker died every time (kill -9, OOM, node lost)
        status.line(f"{run.label}: its worker died {max_retries + 1} times ({type(e).__name__}); its checkpoint "
                    f"is kept: run the sweep again to resume it", ok=False, run=run)
        return
    rec = res.get("record")
    if rec is not None:
        rec["sweep"] = spec.name
        rec.pop("path", None)
        try:
            rec["path"] = str(records.write(rec, results))
        except SeqbenchError as e:  # another driver wrote this run's record meanwhile
            status.line(f"{run.label}: {e}", ok=False, run=run)
            return
    if res.get("error") and rec is None:
        status.line(f"{run.label}: error: {res['error']}", ok=False, run=run)
        return
    resumed = f", resumed after epoch {res['resumed_from']}" if res.get("resumed_from") is not None else ""
    status.line(f"{run.label}: {_result_text(rec)} ({res['seconds']:.0f} s{resumed}) {rec['run_id']}",
                ok=rec["status"] == "completed", run=run, seconds=None if resumed else res["seconds"])


def _final(spec: Spec, runs: list[Run], results: Path, out) -> None:
    """Regenerate the report, then print this sweep's runs grouped, mean ± std over seeds."""
    from . import report

    try:
        built = report.build(results, out=out)
        print(f"report: {built['records']} records -> {built['report']}", file=out)
    except SeqbenchError as e:
        print(f"seqbench: warning: report not regenerated: {e}", file=sys.stderr)
    recs = [r.record for r in runs if r.status == "done"]
    if recs:
        df = report.frame(recs)
        rows = []
        for row in report.tables(df)["accuracy"]:
            sel = df[df.task == row["task"]]["select"].iloc[0]
            keep = [*report.GROUP, "n", f"test_{sel}", f"val_{sel}", "epochs"]
            rows.append({k: row.get(k, "–") for k in keep})
        for task in dict.fromkeys(r["task"] for r in rows):
            print(f"\nsweep {spec.name}, {task} (mean ± std over seeds):", file=out)
            print(report._md([r for r in rows if r["task"] == task]).rstrip(), file=out)
    bad = [r for r in runs if r.status != "done"]
    if bad:
        print(f"\n{len(bad)} of {len(runs)} runs not completed:", file=out)
        for r in bad:
            left = "interrupted: resumes from its checkpoint" if r.status == "resume" else "not run"
            why = (r.record or {}).get("failure") or left
            print(f"  {r.label}: {why}", file=out)


def command(a) -> int:
    """``seqbench sweep`` from parsed arguments (seqbench/cli.py)."""
    spec = build_spec(a.file, a.name, a.sets, **{axis: getattr(a, axis) for axis in AXES})
    return run_sweep(spec, results=a.results, address=a.address, cpus_per_run=a.cpus_per_run,
                     gpus_per_run=a.gpus_per_run, max_retries=a.max_retries, retry_failed=a.retry_failed,
                     dry_run=a.dry_run)
