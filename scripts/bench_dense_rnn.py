"""The 2-D RNNs of the dense kind (models/scene.py): wavefront against the per-pixel loop, and the
dense attention's time and memory at the presets' feature-map sizes.

    python scripts/bench_dense_rnn.py                         # wavefront vs loop, both RNNs, the fast preset's map
    python scripts/bench_dense_rnn.py --hw 6 8 --batch 2 --width 16 --rounds 3   # a quick check
    python scripts/bench_dense_rnn.py --sizes                 # dense attention at the presets' maps
    python scripts/bench_dense_rnn.py --sizes --paper         # ... and the paper preset's 64x64 map

Loop mode: one forward pass (no autograd) of ``forward`` (anti-diagonal wavefronts, four directions
batched) and of ``reference_forward`` (the equations pixel by pixel, one direction after another)
on the same module and input, in one process, in interleaved rounds (``seqbench.measure.interleaved``:
the order reversed every other round); the ratio is loop / wavefront of the median times. The outputs are compared
(max abs
difference) as a check.

Sizes mode: for each preset's feature map (the input size / output stride 8) a forward + backward
pass of the dense attentional RNN alone at the preset's widths and batch, each in a fresh
subprocess: wall and CPU time, the process's peak RSS above what it held before the pass, and the
analytic size of the attention scores (the tanh activations [4, B, Q, P, att_dim] summed over the
wavefront steps: what autograd stores without ``model.checkpoint``; and the largest single step:
what a checkpointed pass holds at once). The paper map (64x64, 512 units) is measured at batch 1
with checkpointing and reported per image.

Results are printed and written as JSON to results/benchmarks/ (or --out). Timings on a shared
machine move with its load: run on a quiet one for numbers to report.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import torch

from seqbench import measure, records
from seqbench.models.scene import DAGRNN, DenseAttentionRNN, _Diagonals

# (name, H, W, batch, d_in = hidden = d_out, att_dim, checkpoint): the presets' maps at output stride 8
PRESET_MAPS = [
    ("tiny (32x32 input)", 4, 4, 4, 8, 4, False),
    ("camvid fast, train and eval (120x160 input)", 15, 20, 8, 128, 32, False),
    ("camvid fast at 180x240 (not chosen)", 23, 30, 8, 128, 32, False),
]
PAPER_MAP = ("ade20k paper crop (512x512 input), per image", 64, 64, 1, 512, 64, True)


def build(kind: str, c: int, att: int, checkpoint: bool = False):
    torch.manual_seed(0)
    return DenseAttentionRNN(c, c, c, att, checkpoint) if kind == "dense" else DAGRNN(c, c, c)


def bench_loop(a) -> dict:
    rows = []
    for kind in a.models:
        m = build(kind, a.width, a.att_dim).eval()
        x = torch.randn(a.batch, a.width, *a.hw)
        with torch.no_grad():
            diff = float((m(x) - m.reference_forward(x)).abs().max())
        with torch.no_grad():
            m(x)  # warm-up
            times = measure.interleaved({"wavefront": lambda: m(x), "loop": lambda: m.reference_forward(x)}, a.rounds)
        wave, loop = times["wavefront"], times["loop"]
        row = {"model": kind, "H": a.hw[0], "W": a.hw[1], "batch": a.batch, "width": a.width, "att_dim": a.att_dim,
               "rounds": a.rounds, "wavefront_s": wave, "loop_s": loop, "max_abs_diff": diff,
               "wavefront_median_s": statistics.median(wave), "loop_median_s": statistics.median(loop)}
        row["loop_over_wavefront"] = row["loop_median_s"] / row["wavefront_median_s"]
        rows.append(row)
        print(f"{kind:6s} {a.hw[0]}x{a.hw[1]} batch {a.batch} width {a.width}: "
              f"wavefront {row['wavefront_median_s'] * 1e3:9.1f} ms, "
              f"per-pixel loop {row['loop_median_s'] * 1e3:9.1f} ms, ratio {row['loop_over_wavefront']:7.1f}x "
              f"(max |diff| {diff:.1e})", flush=True)
    return {"benchmark": "dense_rnn_wavefront_vs_loop", "threads": torch.get_num_threads(), "rows": rows}


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
    p.add_argument("--rounds", type=int, default=5)
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
    path = records.write_benchmark(res, "dense_rnn_sizes" if a.sizes else "dense_rnn_loop", a.out)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
