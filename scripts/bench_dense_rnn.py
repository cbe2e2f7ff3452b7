"""The 2-D RNNs of the dense kind (models/scene.py): wavefront against per-pixel loops, and the
dense attention's time and memory at the presets' feature-map sizes.

    OMP_NUM_THREADS=1 python scripts/bench_dense_rnn.py     # wavefront vs loops, both RNNs, the fast preset's map
    python scripts/bench_dense_rnn.py --hw 6 8 --batch 2 --width 16 --rounds 3   # a quick check
    python scripts/bench_dense_rnn.py --sizes                 # dense attention at the presets' maps
    python scripts/bench_dense_rnn.py --sizes --paper         # ... and the paper preset's 64x64 map

Loop mode: on the same module and input, in one process, in interleaved rounds (``seqbench.measure.interleaved``:
every variant once per round, the order reversed every other round), the forward pass (no autograd) and the
forward + backward pass (a fixed output gradient; the input's and the parameters' gradients) of
    wavefront         ``forward``: anti-diagonal wavefronts, the four directions batched
    wavefront_before  the same as models/scene.py had it before issue 27 (``_Before`` below: the weight
                      broadcast over the batch in every step's matmul, predecessors gathered by index,
                      flips and index gathers around it, the scores by tanh and a matmul with w)
    loop              ``loop_forward``: per pixel, written for autograd, one direction after another (the
                      baseline: the loop a careful engineer would write)
    loop_together     ``loop_forward(together=True)``: per pixel, the four directions stepping together
    reference         ``reference_forward``: the tests' per-pixel oracle (forward only)
Ratios are each variant's time over the wavefront's, of the min and of the median over the rounds. Outputs
and gradients are compared with the wavefront's (max abs difference) as a check.

Sizes mode: for each preset's feature map (the input size / output stride 8) a forward + backward
pass of the dense attentional RNN alone at the preset's widths and batch, each in a fresh
subprocess: wall and CPU time, the process's peak RSS above what it held before the pass, and the
analytic size of the attention scores (the activations [4, B, Q, P, att_dim] summed over the
wavefront steps: what autograd stores without ``model.checkpoint``; and the largest single step:
what a checkpointed pass holds at once). The paper map (64x64, 512 units) is measured at batch 1
with checkpointing and reported per image.

Results are printed and written as JSON to results/benchmarks/ (or --out). Timings on a shared
machine move with its load: run on a quiet one for numbers to report; the JSON records the load average.
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

from seqbench import measure, records
from seqbench.models.scene import DAGRNN, DIRECTIONS, DenseAttentionRNN, _Diagonals

# (name, H, W, batch, d_in = hidden = d_out, att_dim, checkpoint): the presets' maps at output stride 8
PRESET_MAPS = [
    ("tiny (32x32 input)", 4, 4, 4, 8, 4, False),
    ("camvid fast, train and eval (120x160 input)", 15, 20, 8, 128, 32, False),
    ("camvid fast at 180x240 (not chosen)", 23, 30, 8, 128, 32, False),
]
PAPER_MAP = ("ade20k paper crop (512x512 input), per image", 64, 64, 1, 512, 64, True)
VARIANTS = ("wavefront", "wavefront_before", "loop", "loop_together", "reference")


def build(kind: str, c: int, att: int, checkpoint: bool = False):
    torch.manual_seed(0)
    return DenseAttentionRNN(c, c, c, att, checkpoint) if kind == "dense" else DAGRNN(c, c, c)


# ------------------------------------------------- the wavefronts before issue 27 (models/scene.py at 8e9a433)
_FLIPS = {"se": (), "sw": (-2,), "ne": (-3,), "nw": (-3, -2)}


@functools.lru_cache(maxsize=8)
def _before_pred(H: int, W: int) -> list:
    """DAG-RNN's predecessors per diagonal as indices into [zero, diagonal k-2, diagonal k-1] (0: outside)."""
    dg = _Diagonals.get(H, W, "cpu")
    rows, cols = dg.rows.tolist(), dg.cols.tolist()
    pos = {(a, b): i for i, (a, b) in enumerate(zip(rows, cols))}
    out = []
    for k, (s, e) in enumerate(dg.bounds):
        s2 = dg.bounds[k - 2][0] if k >= 2 else 0
        n2 = (dg.bounds[k - 2][1] - s2) if k >= 2 else 0
        s1 = dg.bounds[k - 1][0] if k >= 1 else 0
        out.append(torch.tensor([[off + pos[(pa, pb)] - base if pa >= 0 and pb >= 0 else 0
                                  for (pa, pb), off, base in (((a - 1, b), 1 + n2, s1), ((a, b - 1), 1 + n2, s1),
                                                              ((a - 1, b - 1), 1, s2))]
                                 for a, b in zip(rows[s:e], cols[s:e])], dtype=torch.long))
    return out


class _Before:
    """``forward`` as models/scene.py had it before issue 27: each direction's map flipped, stacked and
    gathered into diagonal order ([D, B, N, C]); every step's ``x @ W.transpose(1, 2)[:, None]`` broadcasts
    W over the batch (a copy of W as [4, B, hidden, hidden] per step); the states gathered back and flipped."""

    def forward(self, x):
        B, C, H, W = x.shape
        D = len(DIRECTIONS)
        dg = _Diagonals.get(H, W, x.device)
        xp = x.permute(0, 2, 3, 1)
        xd = torch.stack([xp.flip(_FLIPS[d]) if _FLIPS[d] else xp for d in DIRECTIONS])
        xd = xd.reshape(D, B, H * W, C)[:, :, dg.order]
        ux = torch.einsum("dbnc,dhc->dbnh", xd, self.U) + self.b[:, None, None, :]
        h = self.before_wavefront(xd, ux, dg)[:, :, dg.inverse].reshape(D, B, H, W, self.hidden)
        h = torch.stack([h[i].flip(_FLIPS[d]) if _FLIPS[d] else h[i] for i, d in enumerate(DIRECTIONS)])
        return torch.einsum("dbhwk,dok->bohw", h, self.V) + self.c[None, :, None, None]


class _BeforeDAGRNN(_Before, DAGRNN):
    def before_wavefront(self, xd, ux, dg):
        D, B, _, _ = ux.shape
        zero = ux.new_zeros(D, B, 1, self.hidden)
        hs, pred = [], _before_pred(dg.H, dg.W)
        Wt = self.W.transpose(1, 2)[:, None]  # [D, 1, hidden, hidden]
        for k, (s, e) in enumerate(dg.bounds):
            prev = torch.cat([zero] + hs[max(k - 2, 0):k], 2)  # [zero, diagonal k-2, diagonal k-1]
            summed = prev[:, :, pred[k]].sum(3)  # [D, B, L, hidden]
            hs.append(F.relu(ux[:, :, s:e] + summed @ Wt))
        return torch.cat(hs, 2)


class _BeforeDenseAttentionRNN(_Before, DenseAttentionRNN):
    def before_wavefront(self, xd, ux, dg):
        D, B, _, _ = ux.shape
        ax = torch.einsum("dbnc,dac->dbna", xd, self.Wa)
        Wt = self.W.transpose(1, 2)[:, None]
        hs, uhs = [], []
        for k, (s, e) in enumerate(dg.bounds):
            if k == 0:
                ctx = ux.new_zeros(D, B, e - s, self.hidden)
            else:
                rq, cq = dg.rows[s:e], dg.cols[s:e]
                rk, ck = dg.rows[:s], dg.cols[:s]
                allowed = (rk[None, :] <= rq[:, None]) & (ck[None, :] <= cq[:, None])
                uh, h = torch.cat(uhs, 2), torch.cat(hs, 2)
                score = torch.tanh(ax[:, :, s:e, None, :] + uh[:, :, None, :, :]) @ self.w[:, None, None, :, None]
                ctx = torch.softmax(score.squeeze(-1).masked_fill(~allowed, float("-inf")), -1) @ h
            h = F.relu(ux[:, :, s:e] + ctx @ Wt)
            hs.append(h)
            uhs.append(torch.einsum("dblh,dah->dbla", h, self.Ua))
        return torch.cat(hs, 2)


def build_before(kind: str, m):
    """The wavefront before issue 27 with ``m``'s parameters."""
    b = (_BeforeDenseAttentionRNN(m.d_in, m.hidden, m.d_out, m.att_dim) if kind == "dense"
         else _BeforeDAGRNN(m.d_in, m.hidden, m.d_out))
    b.load_state_dict(m.state_dict())
    return b


# --------------------------------------------------------------------------------------- loop mode
def bench_loop(a) -> dict:
    rows = []
    load = os.getloadavg()[0]
    for kind in a.models:
        m = build(kind, a.width, a.att_dim)
        before = build_before(kind, m)
        torch.manual_seed(1)
        x = torch.randn(a.batch, a.width, *a.hw)
        xg = x.clone().requires_grad_()
        g = torch.randn(a.batch, a.width, *a.hw)  # the output's gradient (d_out = width)
        fwd = {"wavefront": m, "wavefront_before": before, "loop": m.loop_forward,
               "loop_together": functools.partial(m.loop_forward, together=True), "reference": m.reference_forward}

        def forward(f):
            def run():
                with torch.no_grad():
                    return f(x)
            return run

        def forward_backward(f):
            def run():
                xg.grad = None
                for mod in (m, before):
                    mod.zero_grad(set_to_none=True)
                out = f(xg)
                out.backward(g)
                return out.detach(), [xg.grad] + [p.grad for p in (before if f is before else m).parameters()]
            return run

        fns = {f"forward/{n}": forward(f) for n, f in fwd.items()}
        fns.update({f"forward_backward/{n}": forward_backward(f) for n, f in fwd.items() if n != "reference"})
        # the check (and the warm-up): every variant's output and gradients against the wavefront's
        want = fns["forward/wavefront"]()
        want_out, want_grads = fns["forward_backward/wavefront"]()
        want_grads = [t.clone() for t in want_grads]
        out_diff = {n: float((fns[f"forward/{n}"]() - want).abs().max()) for n in fwd if n != "wavefront"}
        grad_diff = {}
        for n in fwd:
            if n not in ("wavefront", "reference"):
                out, grads = fns[f"forward_backward/{n}"]()
                grad_diff[n] = max(float((gr - w).abs().max()) for gr, w in zip(grads, want_grads))
                out_diff[n] = max(out_diff[n], float((out - want_out).abs().max()))
        times = measure.interleaved(fns, a.rounds)
        row = {"model": kind, "H": a.hw[0], "W": a.hw[1], "batch": a.batch, "width": a.width, "att_dim": a.att_dim,
               "rounds": a.rounds, "baseline": "loop (loop_forward: per pixel, written for autograd, one direction "
                                               "after another)",
               "max_abs_diff": max(out_diff.values()), "max_abs_diff_output": out_diff,
               "max_abs_diff_grad": grad_diff, "max_abs_grad": max(float(t.abs().max()) for t in want_grads)}
        for pas in ("forward", "forward_backward"):
            ts = {n: times[f"{pas}/{n}"] for n in fwd if f"{pas}/{n}" in times}
            row[pas] = {"times_s": ts, "min_s": {n: min(v) for n, v in ts.items()},
                        "median_s": {n: statistics.median(v) for n, v in ts.items()}}
            row[pas]["over_wavefront"] = {n: {q: row[pas][f"{q}_s"][n] / row[pas][f"{q}_s"]["wavefront"]
                                              for q in ("min", "median")} for n in ts}
        row["loop_over_wavefront"] = row["forward"]["over_wavefront"]["loop"]["median"]
        rows.append(row)
        for pas in ("forward", "forward_backward"):
            r = row[pas]
            print(f"{kind:5s} {pas:16s} {a.hw[0]}x{a.hw[1]} batch {a.batch} width {a.width}: " + ", ".join(
                f"{n} {r['median_s'][n] * 1e3:.1f} ms ({r['over_wavefront'][n]['median']:.2f}x, min "
                f"{r['over_wavefront'][n]['min']:.2f}x)" for n in r["times_s"]), flush=True)
        print(f"      max |diff| vs the wavefront: outputs {row['max_abs_diff']:.1e}, gradients "
              f"{max(grad_diff.values()):.1e} (largest gradient {row['max_abs_grad']:.1e})", flush=True)
    return {"benchmark": "dense_rnn_wavefront_vs_loop", "threads": torch.get_num_threads(),
            "torch": torch.__version__, "load_average_1m": [load, os.getloadavg()[0]], "variants": list(VARIANTS),
            "rows": rows}


def score_elements(H: int, W: int, B: int, att: int) -> tuple[int, int]:
    """Elements of the attention's tanh activations: summed over the steps, and the largest step."""
    dg = _Diagonals.get(H, W, "cpu")
    per = [(e - s) * s for s, e in dg.bounds]
    return 4 * B * att * sum(per), 4 * B * att * max(per)


def one_size(spec: list) -> dict:
    """Forward + backward of the dense RNN at one map (runs in a subprocess: its own peak RSS)."""
    name, H, W, B, c, att, ckpt = spec
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "1")))
    m = build("dense", c, att, ckpt)
    x = torch.randn(B, c, H, W, requires_grad=True)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0, c0 = time.perf_counter(), time.process_time()
    m(x).square().mean().backward()
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    stored, step = score_elements(H, W, B, att)
    return {"map": name, "H": H, "W": W, "batch": B, "width": c, "att_dim": att, "checkpoint": ckpt,
            "fwd_bwd_wall_s": wall, "fwd_bwd_cpu_s": cpu, "peak_rss_above_start_mb": (peak - base) / 1024,
            "pairs_per_direction": m.pairs(H, W), "scores_all_steps_mb": stored * 4 / 2**20,
            "scores_largest_step_mb": step * 4 / 2**20}


def bench_sizes(a) -> dict:
    rows = []
    for spec in PRESET_MAPS + ([PAPER_MAP] if a.paper else []):
        out = subprocess.run([sys.executable, __file__, "--one-size", json.dumps(spec)], capture_output=True, text=True,
                             env={**os.environ, "BENCH_THREADS": str(torch.get_num_threads())})
        if out.returncode != 0:
            print(f"{spec[0]}: failed: {out.stderr.strip().splitlines()[-1] if out.stderr.strip() else out.returncode}")
            continue
        r = json.loads(out.stdout.strip().splitlines()[-1])
        rows.append(r)
        print(f"{r['map']}: {r['H']}x{r['W']} batch {r['batch']} width {r['width']} att {r['att_dim']}"
              f"{' checkpointed' if r['checkpoint'] else ''}: fwd+bwd {r['fwd_bwd_wall_s']:.2f} s wall "
              f"({r['fwd_bwd_cpu_s']:.2f} s CPU), peak RSS +{r['peak_rss_above_start_mb']:.0f} MB; scores "
              f"{r['scores_all_steps_mb']:.0f} MB over all steps, {r['scores_largest_step_mb']:.0f} MB at the largest",
              flush=True)
    return {"benchmark": "dense_rnn_sizes", "threads": torch.get_num_threads(), "rows": rows}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    # defaults: the camvid fast preset's map (120x160 input at output stride 8) and widths
    p.add_argument("--hw", type=int, nargs=2, default=[15, 20], help="feature map H W (loop mode)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--width", type=int, default=128, help="d_in = hidden = d_out")
    p.add_argument("--att-dim", type=int, default=32)
    p.add_argument("--models", nargs="+", default=["dense", "dag"], choices=["dense", "dag"])
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--sizes", action="store_true", help="dense attention at the presets' feature maps")
    p.add_argument("--paper", action="store_true", help="with --sizes: also the paper preset's 64x64 map (heavy)")
    p.add_argument("--one-size", help=argparse.SUPPRESS)
    p.add_argument("--out", help="folder for the JSON (default results/benchmarks)")
    a = p.parse_args(argv)
    if a.one_size:
        print(json.dumps(one_size(json.loads(a.one_size))))
        return 0
    torch.set_num_threads(a.threads)
    res = bench_sizes(a) if a.sizes else bench_loop(a)
    res["env"] = records.environment(torch.device("cpu"))  # the commit, whether the tree was clean, the machine
    res["command"] = " ".join(["python", "scripts/bench_dense_rnn.py", *(sys.argv[1:] if argv is None else argv)])
    path = records.write_benchmark(res, "dense_rnn_sizes" if a.sizes else "dense_rnn_loop", a.out)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
