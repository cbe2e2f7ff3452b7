from seqbench import config, registry
from seqbench.errors import SeqbenchError
from seqbench.runner import Runner
from conftest import QUICK

import pytest


def test_model_with_missing_dependency_fails_only_when_chosen(monkeypatch):
    monkeypatch.setitem(registry._BROKEN, "seqbench.models.fancy", "ModuleNotFoundError: No module named 'triton'")
    assert "lstm" in registry.models()  # the others still work
    with pytest.raises(SeqbenchError, match="seqbench.models.fancy .*triton"):
        registry.get_model("fancy")


def test_amp_bf16_and_cosine_schedule_run(env):
    cfg = config.resolve(registry.get_model("gru"), registry.get_task("pmnist"), "tiny",
                         {**QUICK, "amp": "bf16", "schedule": "cosine", "epochs": 2, "limit_batches": 1,
                          "batch_size": 8, "eval_batch_size": 8})
    rec = Runner(cfg, quiet=True).fit()
    assert rec["status"] == "completed"
    lrs = [h["lr"] for h in rec["history"]]
    assert lrs[0] == pytest.approx(1e-3) and lrs[1] < lrs[0]  # cosine decays per epoch
