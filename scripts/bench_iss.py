"""ISS: inference time of a dense language model against its ISS-pruned version.

    python scripts/bench_iss.py                                   # the paper's 1500,1500 vs 373,315
    python scripts/bench_iss.py --quick                           # seconds: short timings, T 5
    python scripts/bench_iss.py --sizes 200,200 --pruned-sizes 120,90 --emb 200
    python scripts/bench_iss.py --run iss-lstm-ptb-fast-s0-...    # a trained run (iss-lstm or rhn)

The model is the PTB language model's shape: embedding (vocab x emb) -> backbone -> linear head
over the vocabulary, in eval mode without autograd. Timed: one forward over T tokens at batch 1,
divided by T (ms per token), with torch.utils.benchmark (blocked_autorange, medians), at one
thread and at torch's default thread count. Without ``--run`` the backbone is iss-lstm with random
weights (the weights' values do not change dense kernels' time); the default pruned sizes 373,315
are the paper's ISS result for the large model (Wen et al. 2018, Table 1, ``ptb_word_lm_heter.py``
in the reference). With ``--run``: the run's trained weights (``best.pt``, else ``last.pt``, with
the run's config), any backbone with ISS pruning, pruned here with ``pruned(head)`` as the runner
does (``install_pruned``: a tied RHN's embedding loses the pruned columns too); the two models'
outputs are compared.

FLOPs per token: the backbone's ``flops_per_step`` and the head (the embedding lookup: none); for
iss-lstm also the LSTMs' and head's multiply-adds. Parameters count everything, the embedding
included (a tied head's weight once). Results are printed and written as JSON to results/benchmarks/ (or --out).
"""
from __future__ import annotations

import argparse
import copy
import json
import sys

import torch
from torch.utils import benchmark

from seqbench import config, records, registry
from seqbench.errors import SeqbenchError
from seqbench.model import install_pruned
from seqbench.models.iss import ISSLSTM, ISSParams
from seqbench.tasks.ptb import LanguageModel


def lm(backbone, vocab: int, emb: int, tie: bool = False) -> LanguageModel:
    """The PTB task's language model around ``backbone``, without dropout (timing is in eval mode)."""
    return LanguageModel(backbone, vocab, emb, bptt=1, dropout=0.0, tie=tie, init_range=0.1)


def build(vocab: int, emb: int, sizes: str) -> LanguageModel:
    return lm(ISSLSTM(emb, ISSParams(sizes=sizes)), vocab, emb)


def counts(model: LanguageModel) -> dict:
    """Widths, parameters (embedding included) and per-token cost: FLOPs in the suite's convention
    (the backbone's flops_per_step + the head's 2 h v + v) and, for iss-lstm, its multiply-adds."""
    st = model.backbone.structure(model.head)
    h, v = model.head.in_features, model.head.out_features
    out = {"sizes": st["sizes"], "params": sum(p.numel() for p in model.parameters()),  # a tied weight once
           "flops_per_token": model.backbone.flops_per_step() + 2 * h * v + v}
    if "total" in st:
        out["macs_per_token"] = st["total"]["macs_per_token"]
    return out


def from_run(run_id: str) -> tuple[LanguageModel, LanguageModel | None, dict]:
    """The run's trained language model (best.pt, else last.pt) and its pruned(head) version, for
    any backbone with ISS pruning (iss-lstm, rhn); the two models' outputs are compared."""
    res = records.results_dir()
    folder = res / "checkpoints" / run_id
    path = next((folder / n for n in ("best.pt", "last.pt") if (folder / n).is_file()), None)
    if path is None:
        raise SeqbenchError(f"no best.pt or last.pt in {folder}")
    record = res / "runs" / f"{run_id}.json"
    if record.is_file():
        flat = json.loads(record.read_text())["config"]
    else:
        flat = torch.load(folder / "last.pt", map_location="cpu", weights_only=False)["config"]
    state = torch.load(path, map_location="cpu", weights_only=False)["model"]
    if "embedding.weight" not in state or "head.weight" not in state:
        raise SeqbenchError(f"run '{run_id}' is not a language-model run (no embedding and head)")
    entry = registry.get_model(flat["model"])
    cfg = config.from_flat(flat, entry, registry.get_task(flat["task"]))
    vocab, emb = state["embedding.weight"].shape
    backbone = entry.cls(emb, cfg.model_params)
    if not callable(getattr(backbone, "pruned", None)):
        raise SeqbenchError(f"run '{run_id}' is a {flat['model']} run: that model has no ISS pruning")
    dense = lm(backbone, vocab, emb, tie=bool(flat.get("task.tie", False)))
    dense.load_state_dict({k: v for k, v in state.items() if k.split(".")[0] in ("backbone", "head", "embedding")})
    out = dense.backbone.pruned(dense.head)
    if out is None:
        return dense, None, {"source": str(path), "model": flat["model"]}
    small = copy.deepcopy(dense)
    install_pruned(small, *out)  # as the runner does (a tied RHN's embedding shrinks too)
    x = torch.randint(0, vocab, (2, 20))
    with torch.no_grad():
        ref = dense.eval()(x)[0]
        err = float((small.eval()(x)[0] - ref).norm() / ref.norm().clamp_min(1e-30))
    return dense, small, {"source": str(path), "model": flat["model"], "rel_err_pruned_vs_dense": err}


def time_per_token(model: LanguageModel, x, threads: int, min_run_time: float) -> dict:
    model.eval()

    def call():
        with torch.no_grad():
            model(x)

    call()  # warm-up
    m = benchmark.Timer(stmt="call()", globals={"call": call}, num_threads=threads).blocked_autorange(
        min_run_time=min_run_time)
    T = x.shape[1]
    return {"ms_per_token": m.median * 1e3 / T, "iqr_ms_per_token": m.iqr * 1e3 / T, "runs": len(m.times),
            "calls_per_run": m.number_per_run}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="1500,1500", help="dense per-layer widths")
    ap.add_argument("--pruned-sizes", default="373,315", help="pruned per-layer widths (the paper's ISS result)")
    ap.add_argument("--run", default=None, help="a run id: time its trained (and pruned) model instead "
                    "(--sizes, --pruned-sizes, --vocab, --emb are then read from the run)")
    ap.add_argument("--vocab", type=int, default=10000)
    ap.add_argument("--emb", type=int, default=1500, help="embedding size = the first LSTM's input")
    ap.add_argument("--T", type=int, default=35, help="tokens per timed forward (batch 1)")
    ap.add_argument("--min-run-time", type=float, default=2.0, help="seconds per timing (blocked_autorange)")
    ap.add_argument("--quick", action="store_true", help="T 5 and 0.2 s per timing")
    ap.add_argument("--threads", type=int, default=0, help="the 'all' thread count (0 = torch's default)")
    ap.add_argument("--out", default=None, help="folder for the JSON result (default results/benchmarks)")
    a = ap.parse_args(argv)
    if a.quick:
        a.T, a.min_run_time = 5, 0.2
    all_threads = a.threads or torch.get_num_threads()
    torch.manual_seed(0)
    extra = {}
    if a.run:
        dense, small, extra = from_run(a.run)
    else:
        dense, small = build(a.vocab, a.emb, a.sizes), build(a.vocab, a.emb, a.pruned_sizes)
    models = {"dense": dense} if small is None else {"dense": dense, "pruned": small}
    x = torch.randint(0, dense.head.out_features, (1, a.T))
    print(f"{extra.get('model', 'iss-lstm')} LM forward at batch 1, T {a.T}, vocab {dense.head.out_features}, emb {dense.backbone.d_input}, "
          f"torch {torch.__version__}; median ms per token")
    result = {"benchmark": "iss", "T": a.T, "batch": 1, "vocab": dense.head.out_features, "emb": dense.backbone.d_input,
              "min_run_time": a.min_run_time, **extra}
    for name, model in models.items():
        result[name] = counts(model)
        for th in sorted({1, all_threads}):
            result[name][f"threads_{th}"] = time_per_token(model, x, th, a.min_run_time)
    thread_counts = sorted({1, all_threads})
    print(f"{'model':8s} {'sizes':>12s} {'params':>12s} {'FLOPs/token':>12s} " + " ".join(f"{f'{t} thr ms':>10s}" for t in thread_counts))
    for name in models:
        r = result[name]
        print(f"{name:8s} {','.join(map(str, r['sizes'])):>12s} {r['params']:12,d} {r['flops_per_token']:12,d} "
              + " ".join(f"{r[f'threads_{t}']['ms_per_token']:10.3f}" for t in thread_counts))
    if small is not None:
        d, s = result["dense"], result["pruned"]
        result["speedup"] = {f"threads_{t}": d[f"threads_{t}"]["ms_per_token"] / s[f"threads_{t}"]["ms_per_token"]
                             for t in thread_counts}
        result["params_ratio"] = d["params"] / s["params"]
        result["flops_ratio"] = d["flops_per_token"] / s["flops_per_token"]
        if "macs_per_token" in d:
            result["macs_ratio"] = d["macs_per_token"] / s["macs_per_token"]
        print("speedup (dense / pruned): " + ", ".join(f"{v:.2f}x at {k.split('_')[1]} thread(s)" for k, v in result["speedup"].items())
              + f"; params {result['params_ratio']:.2f}x fewer, FLOPs/token {result['flops_ratio']:.2f}x fewer"
              + (f" (LSTM and head multiply-adds {result['macs_ratio']:.2f}x)" if "macs_ratio" in result else ""))
        if "rel_err_pruned_vs_dense" in result:
            print(f"pruned vs dense outputs: relative error {result['rel_err_pruned_vs_dense']:.2e}")
    else:
        print("nothing to prune in this run: the dense model only")
    result.update({"threads": thread_counts, "env": records.environment(torch.device("cpu"))})
    print(f"written {records.write_benchmark(result, 'iss', a.out)}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except SeqbenchError as e:
        print(f"bench_iss: {e}", file=sys.stderr)
        sys.exit(2)
