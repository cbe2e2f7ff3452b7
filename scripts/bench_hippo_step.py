"""HiPPO-LegS step timings: the O(N) step against the dense N x N step, and the cell against nn.LSTM.

    python scripts/bench_hippo_step.py                        # one step, N = 128 256 512 1024
    python scripts/bench_hippo_step.py --sizes 64 128 --min-run-time 0.2
    python scripts/bench_hippo_step.py --cell --hidden 512 --T 784   # fwd+bwd+Adam, hippo vs LSTM

Step mode: one recurrence step c <- A_t c + B_t u (batch 100, memory_size 1, float32, t fixed) of
``legs_step_dense`` (cached dense matrices: one [B, N] x [N, N] product) and of ``legs_step_fast``
(O(N) memory, ceil(log2 N)-round scan), plus the sequential ``solver="loop"`` for reference, all
in one process with torch.utils.benchmark (blocked_autorange; medians). The dense matrices are
built before timing (the one-off float64 build of a cached chunk is reported separately), and
both float32 steps are compared with a float64 dense step (relative error).

Cell mode: one training step (forward over T steps, cross-entropy on the last step through a
linear head, backward, Adam) of the hippo cell and of nn.LSTM with the same hidden size.

Results are printed and written as JSON to results/benchmarks/ (or --out).
"""
from __future__ import annotations

import argparse
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils import benchmark

from seqbench import records, registry
from seqbench.models import hippo as hp


def timer(fn, min_run_time: float):
    m = benchmark.Timer(stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads()).blocked_autorange(
        min_run_time=min_run_time
    )
    return {"median_s": m.median, "iqr_s": m.iqr, "runs": len(m.times), "per_run": m.number_per_run}


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


def bench_cell(a, device) -> dict:
    torch.manual_seed(0)
    cls = registry.get_model("hippo").cls
    hippo = cls(1, cls.Params(hidden=a.hidden, step=a.step)).to(device)
    lstm = nn.LSTM(1, a.hidden, batch_first=True).to(device)
    x = torch.rand(a.batch, a.T, 1, device=device)
    y = torch.randint(0, 10, (a.batch,), device=device)
    out = {}
    for name, body in (("hippo", hippo), ("lstm", lstm)):
        head = nn.Linear(a.hidden, 10).to(device)
        params = list(body.parameters()) + list(head.parameters())
        opt = torch.optim.Adam(params, lr=1e-3)

        def step():
            seq, _ = body(x)
            loss = F.cross_entropy(head(seq[:, -1]), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if device.type == "cuda":
                torch.cuda.synchronize()

        t0 = time.perf_counter()
        step()  # warm-up (builds the dense matrices, cuDNN plans)
        warm = time.perf_counter() - t0
        out[name] = {"warmup_s": warm, **timer(step, a.min_run_time)}
        print(f"  {name:6s} median {out[name]['median_s'] * 1e3:10.1f} ms/step   (warm-up {warm * 1e3:.0f} ms, "
              f"{out[name]['runs']} runs)", flush=True)
    ratio = out["hippo"]["median_s"] / out["lstm"]["median_s"]
    print(f"  ratio hippo/lstm = {ratio:.2f}")
    return {"benchmark": "hippo_cell", "hidden": a.hidden, "memory_order": a.hidden, "step": a.step, "T": a.T,
            "batch": a.batch, "hippo": out["hippo"], "lstm": out["lstm"], "hippo_over_lstm": ratio}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[128, 256, 512, 1024], help="memory orders N")
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--t", type=int, default=500, help="step index t used for the single-step timing")
    ap.add_argument("--no-loop", action="store_true", help="skip the sequential-solver column")
    ap.add_argument("--cell", action="store_true", help="time fwd+bwd+Adam of the cell against nn.LSTM")
    ap.add_argument("--T", type=int, default=784, help="sequence length (cell mode)")
    ap.add_argument("--hidden", type=int, default=512, help="hidden size = memory order (cell mode)")
    ap.add_argument("--step", choices=("dense", "fast"), default="dense", help="hippo step (cell mode)")
    ap.add_argument("--min-run-time", type=float, default=0.5, help="seconds per timing (blocked_autorange)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    ap.add_argument("--out", default=None, help="folder for the JSON result (default results/benchmarks)")
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    device = torch.device(a.device)
    if a.cell:
        print(f"one training step, B={a.batch}, T={a.T}, hidden={a.hidden} (hippo N={a.hidden}, step={a.step}), "
              f"{device}, {torch.get_num_threads()} threads:")
        result = bench_cell(a, device)
    else:
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
