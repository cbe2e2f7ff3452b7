import json
import time

import pytest
import torch

from seqbench import config, records, registry
from seqbench.model import RecurrentBackbone
from seqbench.runner import Runner
from seqbench.strategy import Stateful
from conftest import QUICK


def _cfg(model="lstm", task="pmnist", preset="tiny", **over):
    return config.resolve(registry.get_model(model), registry.get_task(task), preset, {**QUICK, **over})


def test_resume_after_interrupt_matches_uninterrupted(env):
    over = dict(epochs=3, limit_batches=2, batch_size=16, eval_batch_size=32,
                **{"model.layers": 2, "model.dropout": 0.3, "seed": 7})
    full = Runner(_cfg(**over), quiet=True).fit()

    begin = time.time()
    first = Runner(_cfg(**over), quiet=True)
    assert first.fit(stop_after_epochs=1) is None  # "killed" after epoch 1, checkpoint left
    assert not (env["results"] / "runs" / f"{first.run_id}.json").exists()
    gap = 1.0
    time.sleep(gap)  # between the pieces: not the run's wall time
    resumed = Runner.resume(first.run_id, quiet=True)
    assert resumed.epoch == 1
    rec = resumed.fit()
    assert rec["status"] == "completed" and rec["run_id"] == first.run_id
    assert (rec["timing"]["pieces"], full["timing"]["pieces"]) == (2, 1)
    assert rec["timing"]["train_s"] < rec["timing"]["wall_s"] < time.time() - begin - gap
    assert rec["metrics"]["test"] == full["metrics"]["test"]
    assert rec["metrics"]["val"] == full["metrics"]["val"]
    strip = lambda h: [{k: v for k, v in r.items() if not k.endswith("_s")} for r in h]  # noqa: E731
    assert strip(rec["history"]) == strip(full["history"])
    with pytest.raises(Exception, match="finished already"):
        Runner.resume(first.run_id, quiet=True)


def test_best_checkpoint_is_what_gets_tested(env):
    runner = Runner(_cfg(epochs=2, limit_batches=0), quiet=True)
    rec = runner.fit()
    best = torch.load(runner.dir / "best.pt", weights_only=False)
    assert rec["metrics"]["selection"] == {"epoch": best["epoch"], "reason": "best_val"}
    vals = [h["val_acc"] for h in rec["history"]]
    assert rec["metrics"]["val"]["acc"] == max(vals)
    runner.setup.model.load_state_dict(best["model"])
    assert runner.setup.evaluate("test") == rec["metrics"]["test"]


class _NaNNet(RecurrentBackbone):
    def __init__(self, d_input, p):
        super().__init__()
        self.d_output = 4
        self.lin = torch.nn.Linear(d_input, 4)

    def forward(self, x, state=None):
        return self.lin(x) * float("nan"), state

    def flops_per_step(self):
        return 1


@pytest.fixture
def nan_model():
    registry.register_model("nan-test")(_NaNNet)
    yield "nan-test"
    registry.unregister("nan-test")


def test_nonfinite_loss_stops_and_records_failure(env, nan_model):
    rec = Runner(_cfg(model=nan_model, epochs=3, limit_batches=5), quiet=True).fit()
    assert rec["status"] == "failed"
    assert "non-finite" in rec["failure"]
    assert rec["history"] == []  # stopped inside the first epoch
    on_disk = json.loads(open(rec["path"]).read())
    assert on_disk["status"] == "failed" and on_disk["metrics"]["test"] is None


def test_eval_covers_every_sample_without_drop_last(env):
    runner = Runner(_cfg(limit_batches=0, eval_batch_size=7, **{"task.test_subset": 100}), quiet=True)
    n = sum(b[1].numel() for b in runner.setup.loaders["test"])
    assert n == 100 and len(runner.setup.loaders["test"]) == 15


def test_stateful_strategy_carries_detached_state():
    s = registry.get_strategy("stateful").cls()
    s.start(train=True)
    assert s.initial_state(None) is None
    h = (torch.ones(1, 2, 3, requires_grad=True) * 2, torch.zeros(1, 2, 3, requires_grad=True) + 1)
    s.update(None, h, None)
    carried = s.initial_state(None)
    assert all(not t.requires_grad for t in carried) and torch.equal(carried[0], h[0].detach())
    s.start(train=False)
    assert s.initial_state(None) is None
    assert isinstance(s, Stateful)


def test_stateful_strategy_runs_through_the_runner(env):
    rec = Runner(_cfg(strategy="stateful", batch_size=32, eval_batch_size=32), quiet=True).fit()
    assert rec["status"] == "completed" and rec["strategy"] == "stateful"


def test_record_schema(env):
    rec = Runner(_cfg(), quiet=True).fit()
    on_disk = json.loads(open(rec["path"]).read())
    for k in records.REQUIRED:
        assert k in on_disk
    assert on_disk["schema"] == records.SCHEMA_VERSION
    assert on_disk["config"]["model"] == "lstm" and on_disk["config"]["task.permutation"] == "bitreversal"
    assert on_disk["config"]["model.hidden"] == 16  # tiny preset
    env_ = on_disk["env"]
    assert env_["torch"] == torch.__version__ and env_["python"] and env_["device"] == "cpu"
    assert len(on_disk["task_info"]["permutation_indices"]) == 784
    assert on_disk["task_info"]["metrics"] == {"acc": "higher", "loss": "lower"}
    t = on_disk["timing"]
    assert t["wall_s"] >= t["train_s"] > 0
    lat = on_disk["measure"]["latency"]
    assert {"median_ms", "iqr_ms", "runs"} <= set(lat["b1"])
    assert on_disk["measure"]["torch_threads"] == torch.get_num_threads()
    assert on_disk["measure"]["memory"]["peak_rss_mb"] > 0


class _TwoRates(RecurrentBackbone):
    def __init__(self, d_input, p):
        super().__init__()
        self.d_output = 3
        self.slow = torch.nn.Linear(d_input, 3)
        self.fast = torch.nn.Linear(3, 3)

    def forward(self, x, state=None):
        return self.fast(torch.tanh(self.slow(x))), state

    def flops_per_step(self):
        return 1

    def optimizer_groups(self, lr):
        return [{"params": list(self.slow.parameters()), "lr": lr / 100}]


def test_model_optimizer_groups_get_their_own_lr(env):
    registry.register_model("two-rates-test")(_TwoRates)
    try:
        r = Runner(_cfg(model="two-rates-test", lr=0.1), quiet=True)
        lrs = sorted(g["lr"] for g in r.setup.optimizer.param_groups)
        assert lrs == [pytest.approx(0.001), pytest.approx(0.1)]
        n_params = sum(len(g["params"]) for g in r.setup.optimizer.param_groups)
        assert n_params == len(list(r.setup.model.parameters()))  # every parameter once: slow, fast, head
    finally:
        registry.unregister("two-rates-test")


def test_decay_after_schedule_holds_then_decays(env):
    """Zaremba et al.'s schedule: lr for lr_hold epochs, then x lr_gamma every epoch."""
    rec = Runner(_cfg(epochs=4, schedule="decay_after", lr_hold=2, lr_gamma=0.5, lr=1.0), quiet=True).fit()
    assert [r["lr"] for r in rec["history"]] == [1.0, 1.0, 0.5, 0.25]


def test_preset_names_beyond_tiny_fast_paper():
    from seqbench import config
    from seqbench.errors import SeqbenchError

    class M:
        presets = {"tiny": {}, "ptb:small": {}, "copy:huge": {}}

    class T:
        kind = "tokens"
        presets = {"medium": {}}

    assert config.preset_names(M, T, "ptb") == ["tiny", "fast", "paper", "medium", "small"]
    assert "huge" not in config.preset_names(M, T, "ptb")
    with pytest.raises(SeqbenchError, match="unknown preset 'huge'"):
        config.resolve(registry.get_model("lstm"), registry.get_task("pmnist"), "huge")


def test_stop_after_minutes_runs_at_least_one_epoch_and_stops_before_one_that_would_not_fit(env):
    r = Runner(_cfg(epochs=3), quiet=True)
    assert r.fit(stop_after_minutes=1e-6) is None  # the budget is spent by the first epoch
    assert r.epoch == 1
    resumed = Runner.resume(r.run_id, quiet=True)
    assert resumed.fit(stop_after_minutes=60)["status"] == "completed" and resumed.epoch == 3
