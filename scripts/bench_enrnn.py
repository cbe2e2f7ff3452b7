"""ENRNN: the share of the eigen-decomposition (and of the Cayley solve) in one training step.

    python scripts/bench_enrnn.py                       # copy:paper sizes (n1 172, n2 20), T = 100
    python scripts/bench_enrnn.py --T 100 --batch 20 --threads 1 --min-run-time 0.5

One training step = forward over T steps (one-hot copy-task-like inputs, d = 10), a per-step linear
head (9 classes), cross-entropy, backward, RMSprop with A in its own group: the runner's step. The
model is put past the normalisation onset (rho(W2) > 1, the flag set), so every step runs the
differentiable eigen-decomposition and its backward, as in most of a training run. Timed apart with
the same Timer (medians): the eigen part (``spectral_radius(W2)``: copy to float64, eigvals,
max |lambda|, and its backward) and the Cayley part (the n1 x n1 solve and its backward). The
shares are those medians over the step's median. Prints only; nothing is asserted or written.
"""
from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from torch.utils import benchmark

from seqbench.models import enrnn as en


def median_s(fn, min_run_time: float) -> float:
    t = benchmark.Timer(stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
    return t.blocked_autorange(min_run_time=min_run_time).median


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hidden", type=int, default=172)
    ap.add_argument("--n-neg", type=int, default=52)
    ap.add_argument("--n2", type=int, default=20)
    ap.add_argument("--T", type=int, default=100)
    ap.add_argument("--batch", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--min-run-time", type=float, default=0.5)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)

    d_in, classes = 10, 9
    m = en.ENRNN(d_in, en.ENRNNParams(hidden=a.hidden, n_neg=a.n_neg, n2=a.n2, lr_A=1e-5))
    with torch.no_grad():
        m.W2.mul_(1.5 / float(torch.linalg.eigvals(m.W2).abs().max()))  # past the onset
    head = torch.nn.Linear(m.d_output, classes)
    groups = m.optimizer_groups(1e-3)
    rest = [p for p in m.parameters() if p is not m.A] + list(head.parameters())
    opt = torch.optim.RMSprop(groups + [{"params": rest}], lr=1e-3)
    ids = torch.randint(0, d_in, (a.batch, a.T))
    x, y = F.one_hot(ids, d_in).float(), torch.randint(0, classes, (a.batch, a.T))

    def step():
        out, _ = m(x)
        loss = F.cross_entropy(head(out).reshape(-1, classes), y.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step()
    assert bool(m.en_active)

    def eig_part():
        W2 = m.W2.detach().requires_grad_()
        en.spectral_radius(W2).backward()

    def eig_nograd():
        with torch.no_grad():
            en.spectral_radius(m.W2)

    def cayley_part():
        a_ = m.A.detach().requires_grad_()
        en.scaled_cayley(en.skew_from_upper(a_, m.n1), m.d1).sum().backward()

    t_step = median_s(step, a.min_run_time)
    t_eig = median_s(eig_part, a.min_run_time)
    t_eig0 = median_s(eig_nograd, a.min_run_time)
    t_cay = median_s(cayley_part, a.min_run_time)
    print(f"ENRNN n1 {a.hidden} (n_neg {a.n_neg}), n2 {a.n2}, T {a.T}, batch {a.batch}, "
          f"{torch.get_num_threads()} thread(s), torch {torch.__version__}")
    print(f"  training step                      {t_step * 1e3:9.3f} ms")
    print(f"  eigen-decomposition fwd + bwd      {t_eig * 1e3:9.3f} ms   {100 * t_eig / t_step:5.2f} % of the step")
    print(f"  eigen-decomposition, no autograd   {t_eig0 * 1e3:9.3f} ms   (before the onset)")
    print(f"  Cayley solve fwd + bwd             {t_cay * 1e3:9.3f} ms   {100 * t_cay / t_step:5.2f} % of the step")


if __name__ == "__main__":
    main()
