"""Training strategies on time series: each policy on a hand-worked example, and the strategy axis
crossed with every registered recurrent model."""
from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn as nn

from seqbench import config, registry
from seqbench.errors import SeqbenchError
from seqbench.runner import Runner
from seqbench.series import SeriesFrame, SeriesParams, SeriesTask, window_starts
from conftest import QUICK

SERIES_STRATEGIES = sorted(n for n, e in registry.strategies().items() if e.cls.layout)


def get_strategy(name):
    return registry.get_strategy(name).cls


@dataclass
class ToyParams(SeriesParams):
    window: int = 8
    stride: int = 4
    length: int = 200


class ToySeries(SeriesTask):
    """Two drivers; the target is a leaky running sum of the first (needs memory)."""

    Params = ToyParams
    presets = {"tiny": {"strategy": "rmb-ssif", "batch_size": 4, "epochs": 1}}

    def load_frame(self):
        g = np.random.default_rng(0)
        n = self.params.length
        x = np.stack([g.normal(size=n), np.sin(np.arange(n) / 5)], 1)
        y = np.zeros((n, 1))
        for t in range(1, n):
            y[t] = 0.9 * y[t - 1] + x[t, 0]
        return SeriesFrame(x, y, ["a", "b"], ["s"], ["mm"])


@pytest.fixture(scope="module", autouse=True)
def toy_task():
    registry.register_task("toy-series")(ToySeries)
    yield
    registry.unregister("toy-series")


class CumSum(nn.Module):
    """h_t = h_{t-1} + x_t, the output is h: states are easy to work out by hand."""

    state_batch_dim = 0

    def forward(self, x, state=None):
        h0 = state if state is not None else x.new_zeros(x.shape[0], 1)
        y = h0[:, None] + x.cumsum(1)
        return y, y[:, -1]


def _stub_task(n=12, window=4, stride=2):
    return SimpleNamespace(params=SimpleNamespace(window=window, stride=stride),
                           window_starts=lambda split: window_starts(n, window, stride))


def _epoch(strategy, model, starts, v):
    strategy.start(True)
    x = torch.stack([v[s : s + 4] for s in starts])[..., None]
    batch = (x, x, torch.as_tensor(starts), torch.arange(len(starts)))
    out, state = strategy.forward(model, batch)
    strategy.update(batch, state, out)
    strategy.end(True)
    return out


@pytest.mark.parametrize("keeper", [1.0, 0.0])
def test_mptt_read_write_propagate_by_hand(keeper):
    """T = 12, L = 4, stride 2: starts 0 2 4 6 8; key map 0->{2,4}, 2->{4,6}, 4->{6,8}, 6->{8}.
    Series v_t = t. Epoch 1 (zero states): window 0 = [0,1,2,3] has states 0 1 3 6, so start 2
    gets 1 (after step 1) and start 4 gets 6 (after step 3); window 2 = [2..5]: 2 5 9 14 -> start 4
    gets 5, start 6 gets 14; window 4: 4 9 15 22 -> 6 gets 9, 8 gets 22; window 6: 6 13 21 30 ->
    8 gets 13. hbar: s2 1 (c 1), s4 5.5, s6 11.5, s8 17.5 (c 2). Propagate (c > 1 only):
    mu = (delta*0 + 2*hbar) / (delta + 2); s2 keeps hbar 1, c 1. Epoch 2 reads
    s2 = (delta*0 + 1*1) / (delta + 1), s4..s8 = mu."""
    train = SimpleNamespace(keeper=keeper, mptt_warmup=0, epochs=2)
    s = get_strategy("mptt")(_stub_task(), CumSum(), train)
    v = torch.arange(12, dtype=torch.float64)
    starts = [0, 2, 4, 6, 8]
    out1 = _epoch(s, CumSum(), starts, v)
    assert torch.equal(out1[:, 0, 0], v[starts])  # epoch 1: zero states
    d = keeper
    mu = {4: 2 * 5.5 / (d + 2), 6: 2 * 11.5 / (d + 2), 8: 2 * 17.5 / (d + 2)}
    assert s.count.tolist() == [0, 1, 0, 0, 0]
    assert s.hbar[0][1].item() == pytest.approx(1.0)
    for st, want in mu.items():
        assert s.mu[0][st // 2].item() == pytest.approx(want)
    out2 = _epoch(s, CumSum(), starts, v)
    h0 = (out2[:, 0, 0] - v[starts]).tolist()
    want = [0.0, 1.0 / (d + 1), mu[4], mu[6], mu[8]]
    assert h0 == pytest.approx(want)


def test_mptt_warmup_delays_messages():
    train = SimpleNamespace(keeper=1.0, mptt_warmup=1, epochs=3)
    s = get_strategy("mptt")(_stub_task(), CumSum(), train)
    v = torch.arange(12, dtype=torch.float64)
    _epoch(s, CumSum(), [0, 2, 4, 6, 8], v)
    out = _epoch(s, CumSum(), [0, 2, 4, 6, 8], v)  # epoch index 1 = warmup: still zero states
    assert torch.equal(out[:, 0, 0], v[[0, 2, 4, 6, 8]])


def test_mptt_pieces_equal_one_pass_for_lstm():
    """Cutting a window into pieces carries the whole state (h and c of an LSTM): same outputs."""
    from seqbench.task import PerStepHead
    torch.manual_seed(0)
    lstm = registry.get_model("lstm").cls(3, registry.get_model("lstm").cls.Params(hidden=5, layers=2))
    model = PerStepHead(lstm, 1, 4)
    s = get_strategy("mptt")(_stub_task(), model, SimpleNamespace(keeper=1.0, mptt_warmup=0, epochs=1))
    s.start(True)
    x = torch.randn(3, 4, 3)
    out, _ = s.forward(model, (x, None, torch.tensor([0, 2, 4]), torch.arange(3)))
    assert torch.allclose(out, model(x)[0], atol=1e-6)
    # the stored states are the full states after step 1 and 3 (both layers' h and c)
    st = model.backbone(x[:, :2])[1]
    assert s.pending[0][0] == [1, 2, 3]  # piece ending after step 1: windows 0, 2, 4 -> starts 2, 4, 6
    assert torch.allclose(s.pending[0][1][0][0], st[0][:, 0])  # h of both layers, window 0
    assert torch.allclose(s.pending[0][1][1][1], st[1][:, 1])  # c of both layers, window 2


def test_ssmb_equals_window_by_window():
    """SSMB's batched pass = the reference's one window at a time with the detached carried state."""
    torch.manual_seed(0)
    gru = registry.get_model("gru").cls(2, registry.get_model("gru").cls.Params(hidden=4))
    s = get_strategy("ssmb-ssif")(None, gru, SimpleNamespace(epochs=1))
    s.start(True)
    x = torch.randn(5, 6, 2)
    out, _ = s.forward(gru, (x, None, None, None))
    st, ref = None, []
    for i in range(5):
        o, st = gru(x[i : i + 1], st)
        ref.append(o)
    assert torch.allclose(out, torch.cat(ref), atol=1e-6)
    # the next batch continues from the last window's final state
    x2 = torch.randn(2, 6, 2)
    out2, _ = s.forward(gru, (x2, None, None, None))
    assert torch.allclose(out2[:1], gru(x2[:1], st)[0], atol=1e-6)


def test_sspl_feeds_last_epochs_predictions():
    task = ToySeries(ToyParams(), None)
    task.use_strategy(get_strategy("sspl-tfif"))
    w = task.train_windows()
    s = get_strategy("sspl-tfif")(task, None, SimpleNamespace(epochs=10))
    assert s.decay(0) == pytest.approx(1 / (1 + np.exp(-5)))
    assert s.decay(10) == pytest.approx(1 / (1 + np.exp(5)))
    s.decay = lambda e: 0.0  # always the model's own predictions
    s.start(True)
    ids = torch.tensor([0, 3])
    batch = (w["x"][ids], w["y"][ids], w["starts"][ids], ids)
    out = torch.randn(2, task.params.window, 1)
    s.update(batch, None, out)
    s.end(True)
    s.start(True)  # next epoch: inputs at steps >= 1 are the predictions for the step before
    seen = {}
    def s_model(x, st):
        return seen.setdefault("x", x), None
    s.forward(s_model, batch)
    assert torch.allclose(seen["x"][:, 1:, -1], out[:, :-1, 0])
    assert torch.allclose(seen["x"][:, 0, -1], w["x"][ids, 0, -1])  # step 0 stays observed
    other = torch.tensor([1])  # windows not in that batch keep their observations
    assert torch.equal(s.cur[other], w["x"][other][..., -1])


def test_cmb_scif_conditions_each_window_on_previous_prediction():
    task = ToySeries(ToyParams(), None)
    task.use_strategy(get_strategy("cmb-scif"))
    s = get_strategy("cmb-scif")(task, None, SimpleNamespace(epochs=1))
    s.start(False)
    x, y = task._data()["splits"]["test"]
    seen = []

    def model(xc, st):
        seen.append(xc[:, :, -1].clone())
        return xc[:, :, :1] * 2, None

    out, _ = s.forward(model, (x[None], y[None], None, None))
    L = task.params.window
    assert torch.all(seen[0] == y[0, 0])  # the first window: the observed first target
    assert torch.all(seen[1] == out[0, L - 1, 0])  # then the previous window's last prediction
    assert out.shape[1] == x.shape[0]


def test_stream_rows_continue_and_windows_layout():
    task = ToySeries(ToyParams(), None)
    task.use_strategy(get_strategy("smb-ssif"))
    loader = task.loaders(4, 16, 0)["train"]
    b = list(loader)
    assert len(b) >= 2
    assert torch.equal(b[1][2], b[0][2] + task.params.window)  # row r of batch j+1 follows row r of batch j
    x, y = task._data()["splits"]["train"]
    assert torch.equal(b[1][0][2], x[int(b[1][2][2]) : int(b[1][2][2]) + 8])
    assert window_starts(10, 4, 3).tolist() == [0, 3, 6]
    assert window_starts(11, 4, 3).tolist() == [0, 3, 6, 7]  # one more window ends at the last step


def test_series_strategy_refused_on_other_tasks(env):
    cfg = config.resolve(registry.get_model("lstm"), registry.get_task("copy"), "tiny", {"strategy": "mptt"})
    with pytest.raises(SeqbenchError, match="time series"):
        Runner(cfg, quiet=True)
    cfg = config.resolve(registry.get_model("lstm"), registry.get_task("toy-series"), "tiny", {"strategy": "minibatch"})
    with pytest.raises(SeqbenchError, match="series strategy"):
        Runner(cfg, quiet=True)


def test_metrics_in_original_units():
    task = ToySeries(ToyParams(), None)
    task.use_strategy(get_strategy("rmb-ssif"))
    x, y = task._data()["splits"]["test"]
    sd = float(task._data()["y_std"][0])
    perfect = task.metrics(task.eval_stats(y[None], y[None]))
    assert perfect["rmse"] == 0 and perfect["nse"] == 1
    off = task.metrics(task.eval_stats(y[None] + 0.5, y[None]))
    assert off["rmse"] == pytest.approx(0.5 * sd, rel=1e-6)
    yo = y.double() * sd + float(task._data()["y_mean"][0])
    assert off["nse"] == pytest.approx(1 - (0.5 * sd) ** 2 / float(yo.var(unbiased=False)), rel=1e-6)


MODELS = [m for m, e in registry.models().items() if registry.SERIES in e.kinds]


@pytest.mark.parametrize("strategy", SERIES_STRATEGIES)
@pytest.mark.parametrize("model", MODELS)
def test_strategy_axis_with_every_recurrent_model(env, one_thread, model, strategy):
    cfg = config.resolve(registry.get_model(model), registry.get_task("toy-series"), "tiny",
                         {**QUICK, "strategy": strategy, "epochs": 2, "latency_time": 0.005})
    rec = Runner(cfg, quiet=True).fit()
    assert rec["status"] == "completed", rec["failure"]
    assert rec["strategy"] == strategy
    assert np.isfinite(rec["metrics"]["test"]["rmse"])
