"""HiPPO-LegS beside the reference cell (HazyResearch/hippo-code), one training step each, same process.

    python scripts/bench_hippo_ref.py --ref /path/to/hippo-code                     # T 784, 2000 x N 128, 512
    python scripts/bench_hippo_ref.py --ref /path/to/hippo-code --T 100 --N 32 --rounds 2 --batch 8

``--ref`` is a checkout of https://github.com/HazyResearch/hippo-code (its ``model/`` package is
imported from there; it needs scipy: ``pip install scipy``). Nothing of it is copied here.

One call = forward over T steps of a batch of 1-d inputs, cross-entropy of a linear head on the
last hidden state, backward, Adam: for the reference's ``LegendreScaleCell`` (bilinear, gate 'G',
``init_t=0``, its ``RNN`` unroll; its tables stop at ``max_length=1024``: later steps reuse
t = 1024) and for ours: the fused loop (``model.impl=fused``, the default) with ``model.step`` dense,
fast and auto (the default), and the eager loop with step auto (``eager``). The contenders run
in interleaved rounds (``seqbench.measure.interleaved``, one call per round, the order reversed
every other round) after one warm-up call each (which builds the dense tables). Printed: the median
seconds per step and the ratio to the reference; written as JSON to results/benchmarks/.
"""
from __future__ import annotations

import argparse
import statistics
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F

from seqbench import measure, records
from seqbench.models.hippo import DENSE_CACHE, HiPPOLegS, HiPPOParams


def reference_cell(ref: str, N: int):
    sys.path.insert(0, ref)
    try:
        from model.opcell import LegendreScaleCell
        from model.rnn import RNN
    except ImportError as e:
        raise SystemExit(f"cannot import the reference from {ref} ({e}); it needs scipy: pip install scipy")
    cell = LegendreScaleCell(1, N, memory_size=1, memory_order=N, gate="G", discretization="bilinear", init_t=0)
    rnn = RNN(cell)

    class Wrapped(nn.Module):  # [B, T, 1] -> [B, T, H] like ours; the reference unrolls [T, B, 1]
        def __init__(self):
            super().__init__()
            self.rnn = rnn

        def forward(self, x):
            out, state = self.rnn(x.transpose(0, 1), return_output=True)
            return out.transpose(0, 1), state

    return Wrapped()


def ours(N: int, step: str, impl: str = "fused"):
    m = HiPPOLegS(1, HiPPOParams(hidden=N, step=step, impl=impl))

    class Wrapped(nn.Module):
        def __init__(self):
            super().__init__()
            self.cell = m

        def forward(self, x):
            return self.cell(x)

    return Wrapped()


def step_fn(model, x, y, H):
    head = nn.Linear(H, 10)
    opt = torch.optim.Adam(list(model.parameters()) + list(head.parameters()), lr=1e-3)

    def fn():
        out, _ = model(x)
        loss = F.cross_entropy(head(out[:, -1]), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return fn


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ref", required=True, help="a checkout of HazyResearch/hippo-code")
    ap.add_argument("--T", type=int, nargs="+", default=[784, 2000])
    ap.add_argument("--N", type=int, nargs="+", default=[128, 512], help="hidden size = memory order")
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    rows = []
    print(f"one training step (fwd T steps + bwd + Adam), batch {a.batch}, {a.threads} thread(s), "
          f"torch {torch.__version__}")
    names = ("dense", "fast", "auto", "eager")
    cols = " ".join(f"{k + ' s':>10} {k + '/ref':>9}" for k in names)
    print(f"{'T':>6} {'N':>5} {'reference s':>12} " + cols)
    for T in a.T:
        for N in a.N:
            torch.manual_seed(0)
            x, y = torch.rand(a.batch, T, 1), torch.randint(0, 10, (a.batch,))
            DENSE_CACHE.clear()
            fns = {"reference": step_fn(reference_cell(a.ref, N), x, y, N)}
            for s in ("dense", "fast", "auto"):
                fns[s] = step_fn(ours(N, s), x, y, N)
            fns["eager"] = step_fn(ours(N, "auto", "eager"), x, y, N)
            for fn in fns.values():
                fn()  # warm-up: the tables, allocations
            times = measure.interleaved(fns, rounds=a.rounds)
            med = {k: statistics.median(v) for k, v in times.items()}
            row = {"T": T, "N": N, "batch": a.batch, "median_s": med, "times_s": times,
                   "ratio_to_reference": {k: med[k] / med["reference"] for k in med if k != "reference"}}
            rows.append(row)
            print(f"{T:6d} {N:5d} {med['reference']:12.3f} " + " ".join(
                f"{med[k]:10.3f} {row['ratio_to_reference'][k]:9.2f}" for k in names), flush=True)
    out = records.write_benchmark({"benchmark": "hippo_vs_reference", "rows": rows, "threads": a.threads,
                                   "env": records.environment(torch.device("cpu"))}, "hippo_vs_reference", a.out)
    print(f"written {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
