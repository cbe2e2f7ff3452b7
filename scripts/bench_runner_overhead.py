"""Runner overhead: ``Runner.train_epoch`` against a minimal hand-written loop, same process,
same model, same optimiser, same batches. Prints both times and the ratio (goal <= 1.05).

    python scripts/bench_runner_overhead.py --model lstm --task smnist --preset tiny --batches 20

Rounds alternate the two loops (``seqbench.measure.interleaved``, the timing helper ``seqbench bench``
uses: the order reversed every other round) so drift in machine speed hits both; the ratio is of
medians. The result is also written to results/benchmarks/ as JSON.
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

from seqbench import config, measure, records, registry
from seqbench.errors import SeqbenchError
from seqbench.runner import Runner


def hand_loop(model, opt, task, loader, n_batches, device, epoch):
    """What a user would write: forward, loss, backward, step. Nothing else."""
    model.train()
    loader.set_epoch(epoch)
    for i, (x, y) in enumerate(loader):
        if i >= n_batches:
            break
        x, y = x.to(device), y.to(device)
        out, _ = model(x)
        loss = task.loss(out, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    if device.type == "cuda":
        torch.cuda.synchronize()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="lstm")
    ap.add_argument("--task", default="smnist")
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--batches", type=int, default=20, help="training batches per timed epoch")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--set", dest="sets", action="append", default=[])
    ap.add_argument("--out", default=None, help="folder for the JSON result (default results/benchmarks)")
    a = ap.parse_args(argv)
    try:
        over = {"limit_batches": a.batches, "grad_clip": 0.0, "amp": "off", **config.parse_set(a.sets)}
        cfg = config.resolve(registry.get_model(a.model), registry.get_task(a.task), a.preset, over)
        runner = Runner(cfg, results=Path("/tmp/seqbench-bench"), quiet=True)
    except SeqbenchError as e:
        print(f"bench_runner_overhead: error: {e}", file=sys.stderr)
        return 2
    dev = runner.setup.device
    n = min(a.batches, len(runner.setup.loaders["train"]))

    epoch = {"runner": 0, "hand": 0}

    def run_runner():
        epoch["runner"] += 1
        runner.train_epoch(epoch["runner"])

    def run_hand():
        epoch["hand"] += 1
        s = runner.setup
        hand_loop(s.model, s.optimizer, s.task, s.loaders["train"], n, dev, epoch["hand"])

    run_runner(), run_hand()  # warm-up both
    times = measure.interleaved({"runner": run_runner, "hand": run_hand}, rounds=a.rounds)  # one epoch per round
    tr, th = times["runner"], times["hand"]
    mr, mh = statistics.median(tr), statistics.median(th)
    result = {
        "benchmark": "runner_overhead", "model": a.model, "task": a.task, "preset": a.preset,
        "batches": n, "batch_size": cfg.train.batch_size, "rounds": a.rounds,
        "runner_s": tr, "hand_s": th, "runner_median_s": mr, "hand_median_s": mh, "ratio": mr / mh,
        "env": records.environment(dev), "config": cfg.flat(),
    }
    print(f"{a.model} on {a.task} ({a.preset}), {n} batches of {cfg.train.batch_size}, {a.rounds} rounds, {dev}:")
    print(f"  runner  median {mr * 1e3:9.1f} ms/epoch   (all: {', '.join(f'{t * 1e3:.0f}' for t in tr)})")
    print(f"  hand    median {mh * 1e3:9.1f} ms/epoch   (all: {', '.join(f'{t * 1e3:.0f}' for t in th)})")
    print(f"  overhead ratio runner/hand = {mr / mh:.3f}  (goal <= 1.05)")
    print(f"  written {records.write_benchmark(result, f'runner_overhead-{a.model}-{a.task}-{a.preset}', a.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
