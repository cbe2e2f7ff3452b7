"""Runner: --init-from (another run's best weights before the first epoch) and the weights' moving
average (``ema``) that validation, best.pt and the test use."""
import pytest
import torch

from seqbench import config, registry
from seqbench.cli import main
from seqbench.errors import SeqbenchError
from seqbench.ema import WeightEMA
from seqbench.build import build
from seqbench.runner import Runner
from conftest import QUICK


def _cfg(model="lstm", task="pmnist", **over):
    return config.resolve(registry.get_model(model), registry.get_task(task), "tiny", {**QUICK, **over})


def test_init_from_loads_the_best_weights_and_is_recorded(env):
    src = Runner(_cfg(seed=1), quiet=True)
    src.fit()
    best = torch.load(src.dir / "best.pt", weights_only=False)["model"]
    dst = Runner(_cfg(seed=2, init_from=src.run_id), quiet=True)
    assert any(not torch.equal(v, best[k]) for k, v in dst.setup.model.state_dict().items())  # another init
    dst._init_from(src.run_id)
    assert all(torch.equal(v, best[k]) for k, v in dst.setup.model.state_dict().items())
    rec = Runner(_cfg(seed=2, init_from=src.run_id), quiet=True).fit()
    assert rec["status"] == "completed"
    assert rec["init_from"]["run_id"] == src.run_id and rec["init_from"]["file"].endswith("best.pt")
    assert rec["config"]["init_from"] == src.run_id


def test_init_from_refuses_weights_that_do_not_fit_and_missing_runs(env, capsys):
    src = Runner(_cfg(), quiet=True)
    src.fit()
    first = r"backbone.rnn.weight_ih_l0 is \[64, 1\] there, \[128, 1\] here"
    with pytest.raises(SeqbenchError, match=rf"do not fit this model \({first}; 4 more\)") as e:
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
    last = torch.load(one.dir / "last.pt", weights_only=False)
    best = torch.load(one.dir / "best.pt", weights_only=False)
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
    assert plain.setup.ema is None and torch.load(plain.dir / "last.pt", weights_only=False)["ema"] is None


def test_weight_ema_keep_zeros_holds_the_trained_zeros():
    m = torch.nn.Linear(3, 1, bias=False)
    ema = WeightEMA(m, 0.9)  # the average of nonzero weights
    with torch.no_grad():
        m.weight.copy_(torch.tensor([[0.0, 2.0, 0.0]]))  # training zeroed entries 0 and 2
    shadow = ema.shadow["weight"].clone()
    with ema.swapped(m, keep_zeros=True):
        assert torch.equal(m.weight, torch.tensor([[0.0, shadow[0, 1].item(), 0.0]]))
    with ema.swapped(m):  # without: the plain average
        assert torch.equal(m.weight, shadow)
    assert torch.equal(m.weight, torch.tensor([[0.0, 2.0, 0.0]]))


def test_an_iss_component_removed_in_training_is_removed_from_the_evaluated_average(env):
    """ISS + ema: validation, best.pt and the test see the average with the trained weights' zeros,
    so a unit the thresholding removed counts as removed (else the average keeps it for ~1/(1-decay)
    steps and nothing is ever pruned)."""
    r = build(config.resolve(registry.get_model("iss-lstm"), registry.get_task("ptb"), "tiny", {**QUICK, "ema": 0.9}),
              data=False)
    head = r.model.head
    with torch.no_grad():
        for s in r.backbone.iss_groups(head)[0].slices:  # component 0 of the first layer: all its weights
            s.tensor.index_fill_(s.dim, s.index([0]), 0.0)
    with r.ema.swapped(r.model):  # the plain average: unit 0 is still there
        assert not r.backbone.zero_groups(head)[0][0]
    with r.evaluated_weights():
        assert bool(r.backbone.zero_groups(head)[0][0]) and int(r.backbone.zero_groups(head)[0].sum()) == 1
    assert bool(r.backbone.zero_groups(head)[0][0])  # the trained weights are back


def test_select_last_tests_the_last_epoch(env, capsys):
    over = dict(epochs=3, seed=4)
    rec = Runner(_cfg(**over, select="last"), quiet=True).fit()
    m = rec["metrics"]
    assert m["selection"] == {"epoch": 3, "reason": "last_requested"}
    assert m["val"]["acc"] == rec["history"][-1]["val_acc"]
    assert torch.load(env["results"] / "checkpoints" / rec["run_id"] / "best.pt", weights_only=False)["epoch"] == 3
    brec = Runner(_cfg(**over), quiet=True).fit()  # the default: the best validation epoch
    best, vals = brec["metrics"], [h["val_acc"] for h in brec["history"]]
    assert best["selection"]["reason"] == "best_val" and best["val"]["acc"] == max(vals)
    # same training; with seed 4 the best validation epoch is not the last (ties keep the first),
    # so the two selections test different weights and select=last cannot pass by coincidence
    assert [h["val_acc"] for h in rec["history"]] == vals and best["selection"]["epoch"] != 3
    assert m["test"] != best["test"]
    assert main(["run", "--model", "lstm", "--task", "pmnist", "--set", "select=middle"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "'select'" in err[0] and "best, last" in err[0]


def test_the_iss_presets_of_squad_test_the_final_model():
    for preset in ("fast-iss", "paper-iss"):
        cfg = config.resolve(registry.get_model("bidaf"), registry.get_task("squad"), preset, {})
        assert cfg.train.select == "last" and cfg.model_params.lam > 0
    assert config.resolve(registry.get_model("bidaf"), registry.get_task("squad"), "fast", {}).train.select == "best"
