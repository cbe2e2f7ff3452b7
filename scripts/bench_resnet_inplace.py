"""Inference time of ResNet-164 (the ``resnet`` model's ``paper`` preset: bottleneck blocks, widths
16/32/64, GAP + linear head for CIFAR-10) with the in-place ReLUs and residual adds of
``seqbench/resnet.py`` against the out-of-place forward (``tests/test_resnet_inplace.py``'s
reference), in eval mode under no_grad, on two copies with the same weights, timed side by side
(``seqbench.measure.interleaved``).

    OMP_NUM_THREADS=1 python scripts/bench_resnet_inplace.py --threads 1
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from seqbench import measure, records
from seqbench.image import ImageClassifier
from seqbench.resnet import ResNetTrunk, cifar_layers

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from test_resnet_inplace import out_of_place as reference_forward  # noqa: E402  (the tests' reference, one copy)


def build(depth: int, out_of_place: bool) -> ImageClassifier:
    """The CIFAR-10 ResNet-``depth`` (bottleneck, width 16) in eval mode, seed 0."""
    torch.manual_seed(0)
    n = cifar_layers(depth, "bottleneck")
    trunk = ResNetTrunk(3, block="bottleneck", layers=[n, n, n], widths=[16, 32, 64], stem="cifar")
    if out_of_place:
        reference_forward(trunk)
    return ImageClassifier(trunk, 10, (3, 32, 32)).eval()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--min-run-time", type=float, default=1.0, help="seconds of blocked_autorange per measurement")
    p.add_argument("--depth", type=int, default=164)
    p.add_argument("--out", help="JSON path (default results/benchmarks/resnet_inplace-<YYYYmmdd-HHMMSS>.json)")
    a = p.parse_args()
    torch.set_num_threads(a.threads)

    models = {"in-place": build(a.depth, False), "out-of-place": build(a.depth, True)}
    torch.manual_seed(1)
    x = torch.randn(a.batch, 3, 32, 32)
    with torch.no_grad():
        outs = {k: m(x)[0] for k, m in models.items()}  # also the warm-up
        equal = torch.equal(outs["in-place"], outs["out-of-place"])
        max_diff = float((outs["in-place"] - outs["out-of-place"]).abs().max())
        fns = {k: (lambda m=m: m(x)) for k, m in models.items()}
        times = measure.interleaved(fns, rounds=a.rounds, min_run_time=a.min_run_time)
    ratios = [i / o for i, o in zip(times["in-place"], times["out-of-place"])]
    summary = {k: measure.summarize(v) for k, v in times.items()}

    print(f"ResNet-{a.depth} (bottleneck, CIFAR-10) inference, batch {a.batch}, {a.threads} thread(s), "
          f"{a.rounds} rounds of {a.min_run_time:g} s, torch {torch.__version__}, {records.cpu_name()}")
    print(f"{'contender':14s} {'min ms':>9s} {'median ms':>10s} {'IQR ms':>8s}")
    for k, s in summary.items():
        print(f"{k:14s} {s['min'] * 1e3:9.2f} {s['median'] * 1e3:10.2f} {s['iqr'] * 1e3:8.2f}")
    ratio = statistics.median(ratios)
    print(f"in-place / out-of-place, median of per-round ratios: {ratio:.4f} "
          f"(rounds: {', '.join(f'{r:.3f}' for r in ratios)})")
    print(f"outputs equal: {equal} (max |diff| {max_diff:.1e})")

    res = {"benchmark": "resnet_inplace", "model": f"resnet-{a.depth} bottleneck width 16, cifar10 head",
           "batch": a.batch, "threads": torch.get_num_threads(), "rounds": a.rounds, "min_run_time": a.min_run_time,
           "torch": torch.__version__, "cpu": records.cpu_name(), "times_s": times,
           "summary_s": summary, "ratios_inplace_over_out_of_place": ratios, "median_ratio": ratio,
           "outputs_equal": equal, "max_abs_diff": max_diff}
    path = Path(a.out or f"results/benchmarks/resnet_inplace-{time.strftime('%Y%m%d-%H%M%S')}.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(res, indent=1) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
