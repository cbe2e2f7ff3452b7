"""scripts/bench_iss.py --run: a trained run's dense model against its pruned one, for every
backbone with ISS pruning (the timing itself is the script's business; here: the plumbing)."""
import json
import sys
from pathlib import Path

import pytest

from seqbench import config, registry
from seqbench.errors import SeqbenchError
from seqbench.runner import Runner
from conftest import QUICK

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import bench_iss  # noqa: E402


@pytest.mark.parametrize("model", ["iss-lstm", "rhn"])
def test_bench_iss_times_a_trained_run_and_its_pruned_model(env, model, capsys):
    # a threshold of 1 zeroes every weight after the first step: one unit per layer survives
    over = {**QUICK, "model.lam": "0.01", "model.threshold": "1.0"}
    if model == "rhn":
        over.update({"model.hidden": "16", "model.depth": "2", "task.emb": "16", "task.tie": "true",
                     "model.tied_groups": "true"})  # the pruned embedding shrinks to one column
    rec = Runner(config.resolve(registry.get_model(model), registry.get_task("ptb"), "tiny", over), quiet=True).fit()
    assert rec["status"] == "completed", rec["failure"]
    out = env["tmp"] / "bench"
    assert bench_iss.main(["--run", rec["run_id"], "--quick", "--threads", "1", "--out", str(out)]) == 0
    res = json.loads(next(out.glob("*.json")).read_text())
    assert res["model"] == model and res["rel_err_pruned_vs_dense"] < 1e-5
    assert res["dense"]["sizes"] != res["pruned"]["sizes"] and max(res["pruned"]["sizes"]) == 1
    assert res["dense"]["params"] > res["pruned"]["params"] and res["flops_ratio"] > 1
    if model == "rhn":  # tied: the vocabulary x width matrix counted once, 15 of its 16 columns gone
        assert res["dense"]["params"] - res["pruned"]["params"] > 15 * res["vocab"]
        assert res["pruned"]["params"] < res["vocab"] * 16
    assert res["speedup"]["threads_1"] > 0
    assert "speedup (dense / pruned)" in capsys.readouterr().out


def test_bench_iss_refuses_a_run_without_iss_or_checkpoint(env):
    rec = Runner(config.resolve(registry.get_model("lstm"), registry.get_task("ptb"), "tiny", dict(QUICK)),
                 quiet=True).fit()
    with pytest.raises(SeqbenchError, match="no ISS pruning"):
        bench_iss.from_run(rec["run_id"])
    with pytest.raises(SeqbenchError, match="no best.pt or last.pt"):
        bench_iss.from_run("no-such-run")
