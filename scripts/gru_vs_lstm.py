"""Why nn.GRU is ~10x nn.LSTM on CPU at batch 1: torch runs nn.LSTM through oneDNN's fused RNN primitive
(at::mkldnn_rnn, used when torch.backends.mkldnn is enabled and the input is float32 on CPU); nn.GRU has no
such path and runs ATen's per-step loop. Times with oneDNN on and off, interleaved rounds, one thread."""
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from seqbench import records  # noqa: E402

torch.set_num_threads(1)
torch.manual_seed(0)
x = torch.randn(1, 784, 1)  # pmnist at batch 1, hidden 64 (the fast preset)
mods = {"lstm": torch.nn.LSTM(1, 64, batch_first=True), "gru": torch.nn.GRU(1, 64, batch_first=True)}


def t(m, mk):
    with torch.no_grad(), torch.backends.mkldnn.flags(enabled=mk):
        t0 = time.perf_counter()
        for _ in range(5):
            m(x)
        return (time.perf_counter() - t0) / 5 * 1e3


res = {(n, mk): [] for n in mods for mk in (True, False)}
for _ in range(3):
    for n, m in mods.items():
        for mk in (True, False):
            t(m, mk)
for _ in range(11):
    for n, m in mods.items():
        for mk in (True, False):
            res[(n, mk)].append(t(m, mk))
rows = []
for (n, mk), v in res.items():
    rows.append({"model": n, "onednn": mk, "median_ms": statistics.median(v), "min_ms": min(v), "rounds_ms": v})
    print(f"{n:5s} oneDNN {'on ' if mk else 'off'}: median {statistics.median(v):.2f} ms, min {min(v):.2f} ms")
out = {"benchmark": "gru_vs_lstm", "shape": [1, 784, 1], "hidden": 64, "threads": 1, "rows": rows,
       "env": records.environment(torch.device("cpu")), "command": "python scripts/gru_vs_lstm.py"}
print("written", records.write_benchmark(out, "gru_vs_lstm", Path(__file__).resolve().parent.parent / "results" /
                                         "benchmarks"))
