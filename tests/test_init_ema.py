"""Runner: --init-from (another run's best weights before the first epoch) and the weights' moving
average (``ema``) that validation, best.pt and the test use."""
import pytest
import torch

from seqbench import config, registry
from seqbench.cli import main
from seqbench.errors import SeqbenchError
from seqbench.runner import Runner, WeightEMA
from conftest import QUICK


def _cfg(model="lstm", task="pmnist", **over):
    return config.resolve(registry.get_model(model), registry.get_task(task), "tiny", {**QUICK, **over})


def test_init_from_loads_the_best_weights_and_is_recorded(env):
    src = Runner(_cfg(seed=1), quiet=True)
    src.fit()
    best = torch.load(src.run_dir / "best.pt", weights_only=False)["model"]
    dst = Runner(_cfg(seed=2, init_from=src.run_id), quiet=True)
    assert any(not torch.equal(v, best[k]) for k, v in dst.model.state_dict().items())  # another init
    dst._init_from(src.run_id)
    assert all(torch.equal(v, best[k]) for k, v in dst.model.state_dict().items())
    rec = Runner(_cfg(seed=2, init_from=src.run_id), quiet=True).fit()
    assert rec["status"] == "completed"
    assert rec["init_from"]["run_id"] == src.run_id and rec["init_from"]["file"].endswith("best.pt")
    assert rec["config"]["init_from"] == src.run_id


def test_init_from_refuses_weights_that_do_not_fit_and_missing_runs(env, capsys):
    src = Runner(_cfg(), quiet=True)
    src.fit()
    with pytest.raises(SeqbenchError, match=r"do not fit this model \(backbone.rnn.weight_ih_l0 is \[64, 1\] there, \[128, 1\] here; 4 more\)") as e:
        Runner(_cfg(**{"model.hidden": 32, "init_from": src.run_id}), quiet=True).fit()
    assert "\n" not in str(e.value)
    with pytest.raises(SeqbenchError, match="no best.pt or last.pt"):
        Runner(_cfg(init_from="no-such-run"), quiet=True).fit()
    # the CLI flag: one line, exit 2; a run id that is no id is refused by the key's domain
    assert main(["run", "--model", "lstm", "--task", "pmnist", "--preset", "tiny", "--init-from", "nope"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot initialise from run 'nope'" in err[0]
    assert main(["run", "--model", "lstm", "--task", "pmnist", "--init-from", "../x"]) == 2
    assert "init_from" in capsys.readouterr().err


def test_weight_ema_math_and_swap():
    m = torch.nn.Linear(2, 1)
    with torch.no_grad():
        m.weight.fill_(1.0)
    ema = WeightEMA(m, 0.9)
    with torch.no_grad():
        m.weight.fill_(2.0)
    ema.update(m)
    assert torch.allclose(ema.shadow["weight"], torch.full((1, 2), 1.1))
    calls = []
    with ema.swapped(m, after=lambda: calls.append(m.weight.clone())):
        assert torch.allclose(m.weight, torch.full((1, 2), 1.1))
    assert torch.equal(m.weight, torch.full((1, 2), 2.0)) and torch.allclose(calls[0], torch.full((1, 2), 1.1))


def test_ema_is_what_validation_and_best_see_and_resume_keeps_it(env):
    one = Runner(_cfg(epochs=1, ema=0.5, seed=3), quiet=True)
    one.fit()
    last = torch.load(one.run_dir / "last.pt", weights_only=False)
    best = torch.load(one.run_dir / "best.pt", weights_only=False)
    assert best["epoch"] == 1 and last["ema"] is not None
    for k, v in last["ema"].items():  # best.pt holds the average; the trained weights are apart
        assert torch.equal(best["model"][k], v) and not torch.equal(last["model"][k], v)
    over = dict(epochs=2, ema=0.5, seed=3)
    rec = Runner(_cfg(**over), quiet=True).fit()
    first = Runner(_cfg(**over), quiet=True)
    assert first.fit(stop_after_epochs=1) is None
    resumed = Runner.resume(first.run_id, quiet=True).fit()
    assert resumed["metrics"]["test"] == rec["metrics"]["test"] and resumed["metrics"]["val"] == rec["metrics"]["val"]
    # with ema 0, nothing of it is kept
    plain = Runner(_cfg(epochs=1), quiet=True)
    plain.fit()
    assert plain.ema is None and torch.load(plain.run_dir / "last.pt", weights_only=False)["ema"] is None
