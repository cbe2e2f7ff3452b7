"""The fused loops (``seqbench/fused.py``, ``seqbench/csrc/cells.cpp``) against the eager cells, their oracle:
outputs, final states and the gradients of every parameter, the input and the initial state, for every
cell with a fused loop and every memory step / discretisation, short and long sequences, batch 1 and many,
a continued state, float64 and float32. Tolerances, relative to the larger of 1 and the largest magnitude:
float64 1e-9; float32 2e-4 (the loops sum in a different order than BLAS), or within 4x the eager float32
cell's own distance from the float64 result (the measured maxima: ``pytest tests/test_fused.py -s`` prints
them). Forward-Euler LegS is compared in float64 only (``test_equal``).
Without a compiler the cells run eager with one line (a subprocess with CXX pointing nowhere)."""
import os
import shutil
import subprocess
import sys

import pytest
import torch

from seqbench import fused, registry
from seqbench.model import EAGER, FUSED

pytestmark = pytest.mark.usefixtures("one_thread")

# Skipped only where there is no C++ compiler; where there is one, the extension must build (test_builds).
HAS_COMPILER = shutil.which(os.environ.get("CXX", "c++")) is not None
needs_kernels = pytest.mark.skipif(not HAS_COMPILER, reason="no C++ compiler here: the cells run eager")


@needs_kernels
def test_builds():
    assert fused.kernels() is not None, fused._STATE.get("why")


# (model, settings): every memory step and discretisation of the HiPPO cells, ENRNN with and without its
# second block, RHN shallow and deep
CELLS = [
    ("hippo", {"hidden": 12, "step": "dense", "discretization": "bilinear"}),
    ("hippo", {"hidden": 12, "step": "dense", "discretization": "zoh", "memory_size": 2}),
    ("hippo", {"hidden": 12, "step": "dense", "discretization": "forward"}),
    ("hippo", {"hidden": 12, "step": "dense", "discretization": "backward", "memory_order": 9}),
    ("hippo", {"hidden": 12, "step": "fast", "discretization": "bilinear"}),
    ("hippo", {"hidden": 12, "step": "fast", "discretization": "forward", "memory_size": 2}),
    ("hippo", {"hidden": 12, "step": "fast", "discretization": "backward", "memory_order": 7}),
    ("hippo-legt", {"hidden": 12, "discretization": "bilinear", "theta": 50.0}),
    ("hippo-legt", {"hidden": 12, "discretization": "zoh", "memory_size": 2, "theta": 20.0}),
    ("enrnn", {"hidden": 10, "n_neg": 3, "n2": 6}),
    ("scornn", {"hidden": 14, "n_neg": 7}),
    ("rhn", {"hidden": 10, "depth": 1}),
    ("rhn", {"hidden": 10, "depth": 3, "drop_h": 0.3}),
]
# (batch, steps): 150 crosses a chunk of HiPPO's dense tables (64 at N 12); 784: a pMNIST sequence
SHAPES = [(1, 5), (1, 150), (6, 40), (2, 784)]
TOL = {torch.float64: 1e-9, torch.float32: 2e-4}


def pair(name, settings, dtype, d_input=3):
    """The same cell twice, fused and eager, with equal weights (and buffers)."""
    cls = registry.get_model(name).cls
    torch.manual_seed(0)
    eager = cls(d_input, cls.Params(**settings, impl="eager")).to(dtype)
    fast = cls(d_input, cls.Params(**settings, impl="fused")).to(dtype)
    fast.load_state_dict(eager.state_dict())
    if name == "enrnn":  # a W2 with spectral radius above 1: the eigenvalue normalisation runs too
        with torch.no_grad():
            eager.W2.mul_(3.0)
            fast.W2.copy_(eager.W2)
    return eager, fast


def run(model, x, state, seed):
    """Outputs, final state and gradients (parameters, input, initial state) of one forward + backward."""
    x = x.clone().requires_grad_(True)
    st = None
    if state is not None:
        st = tuple(s.clone().requires_grad_(s.is_floating_point()) for s in state) if isinstance(state, tuple) \
            else state.clone().requires_grad_(True)
    torch.manual_seed(seed)  # the same dropout mask in both
    y, end = model(x, st)
    ends = [e for e in (end if isinstance(end, tuple) else (end,)) if e.is_floating_point()]
    g = torch.Generator().manual_seed(1)
    weights = [torch.randn(v.shape, generator=g, dtype=torch.float64).to(v.dtype) for v in [y, *ends]]
    loss = sum((v * r).sum() for v, r in zip([y, *ends], weights))
    loss.backward()
    out = {"y": y, **{f"state{i}": e for i, e in enumerate(ends)}, "dx": x.grad}
    if st is not None:
        for i, s in enumerate(st if isinstance(st, tuple) else (st,)):
            if s.is_floating_point():
                out[f"dstate{i}"] = s.grad
    out.update({f"d{n}": p.grad for n, p in model.named_parameters()})
    return out


def maxdiff(a: dict, b: dict) -> dict:
    """Per entry: max |a - b| over the larger of 1 and max |b|."""
    assert a.keys() == b.keys()
    out = {}
    for k in b:
        assert a[k] is not None and b[k] is not None, k
        ref = b[k].detach().double()
        if ref.numel() == 0:  # the input's gradient of a model without inputs
            out[k] = 0.0 if a[k].shape == ref.shape else float("inf")
            continue
        out[k] = float((a[k].detach().double() - ref).abs().max()) / max(1.0, float(ref.abs().max()))
    return out


def differences(name, settings, dtype, B, T, continued=False, d_input=3):
    """(fused vs eager in ``dtype``; fused and eager in ``dtype`` vs eager in float64 (float32 only); the
    fused model)."""
    eager, fast = pair(name, settings, dtype, d_input)
    truth = pair(name, settings, torch.float64, d_input)[0]
    for m in (eager, fast, truth):
        m.train(bool(settings.get("drop_h")))
    x = torch.randn(B, T, d_input, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    state = None
    if continued:  # a state from a first piece of the sequence (HiPPO: t continues)
        with torch.no_grad():
            _, state = truth(x[:, : T // 2])
        x = x[:, T // 2:]
    cast = (lambda s: tuple(v.to(dtype) if v.is_floating_point() else v for v in s) if isinstance(s, tuple)
            else s.to(dtype)) if state is not None else (lambda s: None)
    ref, got = run(eager, x.to(dtype), cast(state), 3), run(fast, x.to(dtype), cast(state), 3)
    errors = None
    if dtype != torch.float64:
        exact = run(truth, x, state, 3)
        errors = maxdiff(got, exact), maxdiff(ref, exact)
    return maxdiff(got, ref), errors, fast


@needs_kernels
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("B,T", SHAPES, ids=[f"B{b}-T{t}" for b, t in SHAPES])
@pytest.mark.parametrize("name,settings", CELLS, ids=[f"{n}-{'-'.join(map(str, s.values()))}" for n, s in CELLS])
def test_equal(name, settings, B, T, dtype):
    """Within TOL of the eager cell, or (float32) as close to the float64 result as the eager float32 cell,
    within 4x. Forward Euler (LegS ``discretization=forward``) is unstable while t < N (the step's
    |1 - (n+1)/t| > 1 grows the memory by orders of magnitude): in float32 both loops lose digits to it
    (eager 2e-4 of the largest gradient from the float64 result, fused 2e-3), so it is compared in float64."""
    if dtype == torch.float32 and settings.get("discretization") == "forward":
        pytest.skip("forward Euler LegS: compared in float64 only (unstable for t < N)")
    diffs, errors, fast = differences(name, settings, dtype, B, T)
    assert fast.implementation == FUSED
    worst = max(diffs, key=diffs.get)
    own = f"; from float64: fused {errors[0][worst]:.2e}, eager {errors[1][worst]:.2e}" if errors else ""
    print(f"{name} {settings} B{B} T{T} {dtype}: max relative difference {diffs[worst]:.2e} ({worst}{own})")
    bad = {k: d for k, d in diffs.items() if d > TOL[dtype] and not (errors and errors[0][k] <= 4 * errors[1][k])}
    assert not bad, (bad, errors)


@needs_kernels
@pytest.mark.parametrize("name,settings", [CELLS[0], CELLS[4], CELLS[7], CELLS[9], CELLS[12]],
                         ids=["hippo-dense", "hippo-fast", "hippo-legt", "enrnn", "rhn"])
def test_continued_state(name, settings):
    """A second piece of a sequence from the first's state (stateful strategies, MPTT): HiPPO's t continues
    into the right tables, and the initial state's gradient is the eager cell's."""
    diffs, _, _ = differences(name, settings, torch.float64, 3, 140, continued=True)
    assert max(diffs.values()) <= TOL[torch.float64], diffs


@needs_kernels
@pytest.mark.parametrize("settings", [CELLS[1][1], CELLS[4][1]], ids=["dense-zoh", "fast"])
@pytest.mark.parametrize("d_input", [0, 1, fused.FOLD_INPUT + 4])
def test_hippo_input_widths(settings, d_input):
    """HiPPO's input part of [hh, g]: narrow inputs (up to FOLD_INPUT) enter inside the loop, wider ones as one
    product before it; no input at all (d_input 0)."""
    for dtype in (torch.float64, torch.float32):
        diffs, errors, _ = differences("hippo", settings, dtype, 4, 30, d_input=d_input)
        bad = {k: d for k, d in diffs.items() if d > TOL[dtype] and not (errors and errors[0][k] <= 4 * errors[1][k])}
        assert not bad, (d_input, dtype, bad)


@needs_kernels
def test_memory_steps_alone():
    """The C++ memory steps against models/hippo.py's steps, one t at a time, over 300 steps from t0 = 0 and
    from t0 = 97 (dense tables across chunks; the O(N) step for each GBT discretisation)."""
    from seqbench.models import hippo as hp
    K = fused.kernels()
    N, R = 10, 3
    for t0 in (0, 97):
        us = torch.randn(300, R, dtype=torch.float64)
        c0 = torch.randn(R, N, dtype=torch.float64) if t0 else torch.zeros(R, N, dtype=torch.float64)
        for disc in ("bilinear", "forward", "backward", "zoh"):
            C = hp.chunk_size(N)
            chunks = [hp._legs_chunk(N, disc, i, torch.float64, torch.device("cpu"))
                      for i in range(t0 // C, (t0 + 299) // C + 1)]
            As, Bs = [a for a, _ in chunks], [b for _, b in chunks]
            dense = K.memory_scan(c0, us, 0, C, t0 // C, True, 0.0, As, Bs, t0)[0]
            c = c0[None]
            for k in range(300):
                c = hp.legs_step_dense(c, us[k][None], t0 + k, disc)
                assert torch.allclose(dense[k], c[0], rtol=1e-10, atol=1e-10), (disc, k)
            if disc in hp.GBT_ALPHA:
                fast = K.memory_scan(c0, us, 1, 1, 0, True, hp.GBT_ALPHA[disc], [], [], t0)[0]
                assert torch.allclose(fast, dense, rtol=1e-9, atol=1e-9), disc


@needs_kernels
def test_no_grad_and_inference():
    """Without autograd the fused loop saves nothing and returns the same outputs."""
    eager, fast = pair("hippo", {"hidden": 8}, torch.float32)
    x = torch.randn(2, 30, 3)
    with torch.inference_mode():
        a, _ = eager(x)
        b, _ = fast(x)
    assert torch.allclose(a, b, atol=1e-5)


def test_eager_setting_is_eager():
    eager, _ = pair("rhn", {"hidden": 6}, torch.float32)
    assert eager.implementation == EAGER


def test_no_compiler_falls_back_with_one_line(tmp_path):
    """With no compiler (CXX pointing nowhere, an empty kernel cache) the fused cells run eager: one warning
    line, the eager outputs, and the implementation says eager."""
    code = (
        "import torch\n"
        "from seqbench import registry\n"
        "cls = registry.get_model('hippo').cls\n"
        "torch.manual_seed(0); f = cls(1, cls.Params(hidden=8))\n"
        "torch.manual_seed(0); e = cls(1, cls.Params(hidden=8, impl='eager'))\n"
        "x = torch.randn(2, 20, 1)\n"
        "assert torch.equal(f(x)[0], e(x)[0])\n"
        "y = f(x)[0]\n"
        "print('implementation:', f.implementation)\n"
    )
    env = {**os.environ, "CXX": str(tmp_path / "no-compiler"), "SEQBENCH_KERNELS": str(tmp_path / "kernels")}
    p = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert "implementation: eager" in p.stdout
    warnings = [line for line in p.stderr.splitlines() if line.startswith("seqbench: warning:")]
    assert len(warnings) == 1 and "fused cells unavailable" in warnings[0], p.stderr
    assert "Traceback" not in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr
