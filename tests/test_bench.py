"""Micro-benchmarks of one recurrent step per registered model (pytest-benchmark).

Skipped by the default run; run with ``pytest -m bench``. These time, they assert nothing
about speed: compare models by the ratios in the benchmark table."""
import pytest
import torch

from seqbench import config, registry

pytestmark = pytest.mark.bench

MODELS = [m for m, e in registry.models().items() if "sequence" in e.kinds]


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("hidden", [128, 512])
def test_one_step_forward_backward(benchmark, model, hidden):
    entry = registry.get_model(model)
    p = config.params_class(entry.cls)()
    if hasattr(p, "hidden"):
        p.hidden = hidden
    torch.manual_seed(0)
    net = entry.cls(1, p)
    x = torch.randn(64, 1, 1)

    def step():
        y, _ = net(x)
        y.sum().backward()

    benchmark.group = f"one step, batch 64, hidden {hidden}"
    benchmark(step)
    assert all(p.grad is not None for p in net.parameters())
