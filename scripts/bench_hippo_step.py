"""HiPPO-LegS step kernels: the O(N) step against the dense N x N step, one recurrence step alone.

    python scripts/bench_hippo_step.py                        # one step, N = 128 256 512 1024
    python scripts/bench_hippo_step.py --sizes 64 128 --min-run-time 0.2

Whole cells and models side by side (hippo with each step against nn.LSTM, training or inference)
are ``seqbench bench --task pmnist --models lstm,hippo+step=dense,hippo+step=fast``; against the
reference implementation, ``scripts/bench_hippo_ref.py``. This script times the step kernels only.

Step mode: one recurrence step c <- A_t c + B_t u (batch 100, memory_size 1, float32, t fixed) of
``legs_step_dense`` (cached dense matrices: one [B, N] x [N, N] product) and of ``legs_step_fast``
(O(N) memory, ceil(log2 N)-round scan), plus the sequential ``solver="loop"`` for reference, all
in one process with torch.utils.benchmark (blocked_autorange; medians). The dense matrices are
built before timing (the one-off float64 build of a cached chunk is reported separately), and
both float32 steps are compared with a float64 dense step (relative error).

Results are printed and written as JSON to results/benchmarks/ (or --out).
"""
from __future__ import annotations

import argparse
import sys
import time

import torch
from seqbench import measure, records
from seqbench.models import hippo as hp


def timer(fn, min_run_time: float):
    return {"median_s": measure.interleaved({"fn": fn}, rounds=1, min_run_time=min_run_time)["fn"][0]}


def bench_steps(a, device) -> dict:
    rows = []
    g = torch.Generator(device="cpu").manual_seed(0)
    for N in a.sizes:
        c = torch.randn(a.batch, 1, N, generator=g).to(device)
        u = torch.randn(a.batch, 1, generator=g).to(device)
        t = a.t
        hp.DENSE_CACHE.clear()
        t0 = time.perf_counter()
        hp.legs_transition(N, t, "bilinear", torch.float32, device)  # builds (and caches) t's chunk
        if device.type == "cuda":
            torch.cuda.synchronize()
        fill_s = time.perf_counter() - t0
        co = hp._row(hp.legs_fast_coefficients(N, [t], "bilinear", torch.float32, device), 0)
        ref = hp.legs_step_dense(c.double(), u.double(), t)  # float64 reference
        dense_out, fast_out = hp.legs_step_dense(c, u, t), hp.legs_step_fast(c, u, t, coeffs=co)

        def rel(x):
            return float((x.double() - ref).norm() / ref.norm())

        row = {
            "N": N, "batch": a.batch, "t": t, "chunk_steps": hp.chunk_size(N), "dense_chunk_build_s": fill_s,
            "dense": timer(lambda: hp.legs_step_dense(c, u, t), a.min_run_time),
            "fast": timer(lambda: hp.legs_step_fast(c, u, t, coeffs=co), a.min_run_time),
            "rel_err_dense_f32": rel(dense_out), "rel_err_fast_f32": rel(fast_out),
        }
        if not a.no_loop:
            row["loop"] = timer(lambda: hp.legs_step_fast(c, u, t, solver="loop"), a.min_run_time)
        row["dense_over_fast"] = row["dense"]["median_s"] / row["fast"]["median_s"]
        rows.append(row)
        loop = f"{row['loop']['median_s'] * 1e6:10.1f}" if "loop" in row else f"{'-':>10}"
        print(f"{N:6d} {row['dense']['median_s'] * 1e6:10.1f} {row['fast']['median_s'] * 1e6:10.1f} {loop} "
              f"{row['dense_over_fast']:11.2f} {row['rel_err_dense_f32']:10.1e} {row['rel_err_fast_f32']:10.1e} "
              f"{fill_s * 1e3:12.1f}", flush=True)
    return {"benchmark": "hippo_step", "rows": rows}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[128, 256, 512, 1024], help="memory orders N")
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--t", type=int, default=500, help="step index t used for the single-step timing")
    ap.add_argument("--no-loop", action="store_true", help="skip the sequential-solver column")
    ap.add_argument("--min-run-time", type=float, default=0.5, help="seconds per timing (blocked_autorange)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    ap.add_argument("--out", default=None, help="folder for the JSON result (default results/benchmarks)")
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    device = torch.device(a.device)
    print(f"one LegS step (bilinear, t={a.t}), batch {a.batch}, memory_size 1, float32, {device}, "
          f"{torch.get_num_threads()} threads; medians in microseconds")
    print(f"{'N':>6} {'dense':>10} {'fast':>10} {'loop':>10} {'dense/fast':>11} {'err dense':>10} "
          f"{'err fast':>10} {'chunk ms':>12}")
    result = bench_steps(a, device)
    result.update({"threads": torch.get_num_threads(), "env": records.environment(device)})
    print(f"written {records.write_benchmark(result, result['benchmark'], a.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
