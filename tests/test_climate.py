"""Climate tasks on generated files: loading, checksums, and the climate-hydro stand-in (pinned
generator output, water balance, physical bounds, memory, the cache)."""
import os
from pathlib import Path

import numpy as np
import pytest

from seqbench.errors import SeqbenchError
from seqbench.tasks import climate as C

REAL = {
    # task class, steps in the fake files, number of drivers
    "climate-melbourne": (C.MelbourneTemperature, 730, 2),
    "climate-seattle": (C.SeattleWeather, 731, 4),
    "climate-co2": (C.MaunaLoaCO2, 320, 3),
    "climate-elnino": (C.ElNinoSST, 360, 3),
}
# sha256 of the generator's output (hydro_digest: drivers and targets rounded to 6 decimals) for 3
# years, gen_seed 0, fitted to write_fake_seattle(seed=0). A change of the weather generator, the
# bucket model or their constants changes it: then bump HYDRO_VERSION (the cache name) and re-pin.
PINNED_3Y = "54477373387be1db232b1593263b5b4aa2dc5df863048a8ce3b9fa6346c1a6b0"


def _task(cls, root, **kw):
    kw = {"window": 32, "stride": 16, **kw}  # windows that fit the splits of the small files
    return cls(cls.Params(**kw), Path(root))


@pytest.fixture(scope="module")
def fake_seattle(tmp_path_factory):
    path = tmp_path_factory.mktemp("seattle") / "seattle-weather.csv"
    C.write_fake_seattle(path, seed=0)
    return C.read_seattle(path)


@pytest.fixture(scope="module")
def sim20(fake_seattle):
    return C.simulate_hydro(fake_seattle, 20, 0)


# ------------------------------------------------------------------------- real series
@pytest.mark.parametrize("name", list(REAL))
def test_real_task_loads_fake_files(env, name):
    cls, steps, n_drivers = REAL[name]
    task = _task(cls, env["data"])
    f = task.load_frame()
    assert f.x.shape == (steps, n_drivers) and f.y.shape == (steps, 1)
    assert f.x.dtype == np.float64 and f.y.dtype == np.float64
    assert np.isfinite(f.x).all() and np.isfinite(f.y).all()
    assert len(f.feature_names) == n_drivers and len(f.target_names) == len(f.target_units) == 1
    assert len(f.dates) == steps and (np.diff(f.dates) > np.timedelta64(0, "D")).all()
    if "doy_bent" in f.feature_names:  # 183 - |doy - 183|: integers in 0..183, 1 on 1 January
        d = f.x[:, f.feature_names.index("doy_bent")]
        assert d.min() >= 0 and d.max() == 183 and (d == np.round(d)).all() and d[0] == 1
        assert (np.diff(f.dates) == np.timedelta64(1, "D")).all()  # a complete daily calendar
    info = task.info()
    assert info["steps"] == steps and all(len(v["sha256"]) == 64 for v in info["files"].values())


def test_melbourne_fills_the_missing_day_and_strips_question_marks(env):
    task = _task(C.MelbourneTemperature, env["data"])
    f = task.load_frame()
    notes = task.info()["min_file"]
    assert notes == {"question_marks_stripped": 1, "undated_rows_dropped": 0, "days_interpolated": 1}
    i = int(np.flatnonzero(f.dates == np.datetime64("1981-12-31"))[0])  # absent from the files
    assert f.y[i, 0] == pytest.approx((f.y[i - 1, 0] + f.y[i + 1, 0]) / 2)


def test_co2_interpolates_missing_weeks(env):
    task = _task(C.MaunaLoaCO2, env["data"])
    f = task.load_frame()
    assert task.info()["weeks_interpolated"] == 5
    y = f.y[:, 0]  # weeks 10, 11, 12 are missing: a straight line from week 9 to week 13
    assert np.allclose(np.diff(y[9:14]), (y[13] - y[9]) / 4)


def test_daily_series_with_too_long_a_gap_is_refused(tmp_path):
    lines = ['"Date","Temp"'] + [f'"1981-01-{d:02d}",{"?" if 5 <= d <= 14 else "1.5"}' for d in range(1, 32)]
    (tmp_path / "t.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(SeqbenchError, match="unparseable"):
        C.read_daily_series(tmp_path / "t.csv", "test")


@pytest.mark.parametrize("name", list(REAL) + ["climate-hydro"])
def test_checksum_mismatch_is_one_line_error(env, monkeypatch, name):
    cls = REAL[name][0] if name in REAL else C.HydroStandIn
    monkeypatch.setenv("SEQBENCH_VERIFY", "1")  # the generated files do not match the real checksums
    with pytest.raises(SeqbenchError) as e:
        _task(cls, env["data"], **({"years": 2} if name == "climate-hydro" else {})).load_frame()
    msg = str(e.value)
    assert "corrupted" in msg and "sha256" in msg and "\n" not in msg


def test_checksum_match_passes_and_missing_file_is_one_line(env, monkeypatch):
    monkeypatch.setenv("SEQBENCH_VERIFY", "1")
    path = env["data"] / "climate" / "statsmodels" / "elnino.csv"
    digest = C.file_digest(path, "sha256")
    monkeypatch.setattr(C.ElNinoSST, "files", {"elnino.csv": digest})
    assert _task(C.ElNinoSST, env["data"]).load_frame().y.shape == (360, 1)
    path.unlink()
    with pytest.raises(SeqbenchError) as e:
        _task(C.ElNinoSST, env["data"]).load_frame()
    assert "missing elnino.csv" in str(e.value) and "\n" not in str(e.value)


# ------------------------------------------------------------------------- climate-hydro
def test_hydro_generator_output_is_pinned(fake_seattle):
    assert C.hydro_digest(C.simulate_hydro(fake_seattle, 3, 0)) == PINNED_3Y
    assert C.hydro_digest(C.simulate_hydro(fake_seattle, 3, 1)) != PINNED_3Y


def test_hydro_water_balance(sim20):
    s = sim20
    d_store = (s["snowpack"][-1] - s["snow0"]) + (s["soil_water"][-1] - s["soil0"]) + (s["groundwater"][-1] - s["gw0"])
    residual = s["precipitation"].sum() - d_store - s["et"].sum() - s["streamflow"].sum()
    assert abs(residual) < 1e-6
    # and day by day: P = dSWE + dS + dG + ET + Q
    store = s["snowpack"] + s["soil_water"] + s["groundwater"]
    prev = np.concatenate([[s["snow0"] + s["soil0"] + s["gw0"]], store[:-1]])
    daily = s["precipitation"] - (store - prev) - s["et"] - s["streamflow"]
    assert np.abs(daily).max() < 1e-9
    assert s["et"].sum() > 0 and s["baseflow"].sum() > 0 and s["runoff"].sum() > 0


def test_hydro_physical_bounds(sim20):
    s = sim20
    month = np.tile(C._MONTH_OF_DAY, 20)  # 0-based
    assert s["soil_water"].min() >= 0 and s["soil_water"].max() <= C.S_MAX
    assert s["snowpack"].min() >= 0 and s["groundwater"].min() >= 0
    assert s["streamflow"].min() >= 0 and s["precipitation"].min() >= 0 and s["et"].min() >= 0
    assert (s["temp_min"] <= s["temp_max"]).all() and (s["solar"] >= 0).all()
    assert (s["snowpack"][(month == 6) | (month == 7)] == 0).all()  # none in July and August
    assert (s["snowpack"][month == 0] > 0).mean() > 0.5  # a winter snowpack most Januaries
    assert (s["melt"] <= C.DDF * np.maximum((s["temp_max"] + s["temp_min"]) / 2 - C.T_MELT, 0) + 1e-12).all()


def _acf(x, lag):
    x = x - x.mean()
    return float((x[:-lag] * x[lag:]).sum() / (x * x).sum())


def _anomaly(x, years):
    x = x.reshape(years, C.DAYS)
    return (x - x.mean(0)).ravel()


def test_hydro_soil_water_remembers_months_precipitation_does_not(sim20):
    sw, p = sim20["soil_water"], sim20["precipitation"]
    # Raw lag-30 ACF includes the seasonal cycle (a pure sinusoid scores cos(2 pi 30/365) = 0.87);
    # the anomaly ACF (the mean annual cycle removed) is the memory itself. On the 1000-year series
    # fitted to the real Seattle file: soil 0.81 raw, 0.61 anomaly (0.27 at lag 90); precipitation 0.05.
    assert _acf(sw, 30) > 0.7 and _acf(_anomaly(sw, 20), 30) > 0.4 and _acf(_anomaly(sw, 20), 90) > 0.1
    assert _acf(p, 30) < 0.15 and abs(_acf(_anomaly(p, 20), 30)) < 0.1


def test_hydro_frame_targets_and_cache_reuse(env, monkeypatch):
    root = env["data"]
    monkeypatch.setenv("XDG_CACHE_HOME", str(env["tmp"] / "xdg"))
    task = _task(C.HydroStandIn, root, years=3)
    f = task.load_frame()
    assert f.x.shape == (3 * 365, 6) and f.y.shape == (3 * 365, 1) and f.dates is None
    assert f.feature_names == C.HYDRO_FEATURES and f.target_names == ["soil_water"] and f.target_units == ["mm"]
    assert f.x[:, 0].min() == 1 and f.x[:, 0].max() == 183
    path = root / "climate" / "hydro" / "hydro_3y_seed0_v1.csv"
    assert task.info()["cache"] == str(path) and task.info()["generated"]
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]  # no temporary file left
    mtime = path.stat().st_mtime_ns

    # the cached values are the generator's, to the 4 decimals stored
    sim = C.simulate_hydro(C.read_seattle(root / "climate" / "vega" / "seattle-weather.csv"), 3, 0)
    assert np.abs(f.y[:, 0] - sim["soil_water"]).max() <= 5e-5 + 1e-9

    def no_regeneration(*a, **k):
        raise AssertionError("regenerated although cached")

    monkeypatch.setattr(C, "simulate_hydro", no_regeneration)
    for target, unit in C.HYDRO_TARGETS.items():
        t2 = _task(C.HydroStandIn, root, years=3, target=target)
        g = t2.load_frame()
        assert g.target_names == [target] and g.target_units == [unit] and not t2.info()["generated"]
        assert np.array_equal(g.x, f.x)
    assert path.stat().st_mtime_ns == mtime
    assert np.array_equal(_task(C.HydroStandIn, root, years=3).load_frame().y, f.y)  # fresh == cached


def test_hydro_cache_of_another_input_is_regenerated(env, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(env["tmp"] / "xdg"))
    path = env["data"] / "climate" / "hydro" / "hydro_2y_seed0_v1.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("# seqbench climate-hydro v1: years=2 gen_seed=0 spinup_years=5 seattle_sha256=0\nyear,day\n1,1\n")
    task = _task(C.HydroStandIn, env["data"], years=2)
    assert task.load_frame().y.shape == (730, 1) and task.info()["generated"]
    header = "# seqbench climate-hydro v1: years=2 gen_seed=0 spinup_years=5 seattle_sha256="
    assert path.read_text().startswith(header) and not path.read_text().startswith(header + "0\n")
    assert len(path.read_text().splitlines()) == 2 + 730


def test_hydro_failed_write_leaves_no_file_and_falls_back(env, monkeypatch):
    xdg = env["tmp"] / "xdg"
    monkeypatch.setenv("XDG_CACHE_HOME", str(xdg))
    hydro_dir = env["data"] / "climate" / "hydro"
    want = _task(C.HydroStandIn, env["data"], years=2, gen_seed=5)

    def fail(*a, **k):  # the crash happens after the data were written, before the rename
        raise OSError("disk full")

    real_replace = os.replace
    monkeypatch.setattr(C.os, "replace", fail)
    f = want.load_frame()  # neither cache can be written: generated in memory
    assert f.y.shape == (730, 1) and want.info()["cache"] is None
    for d in (hydro_dir, xdg / "seqbench" / "climate" / "hydro"):
        assert not d.exists() or list(d.iterdir()) == []
    monkeypatch.setattr(C.os, "replace", real_replace)

    # a data root marked read-only (no write bits; root could still write): the cache goes to
    # $XDG_CACHE_HOME/seqbench/climate/hydro
    if hydro_dir.exists():
        hydro_dir.rmdir()  # empty, made by the failed attempt
    climate_dir = env["data"] / "climate"
    climate_dir.chmod(0o555)
    try:
        task = _task(C.HydroStandIn, env["data"], years=2, gen_seed=5)
        g = task.load_frame()
        assert not hydro_dir.exists()
    finally:
        climate_dir.chmod(0o755)
    fallback = xdg / "seqbench" / "climate" / "hydro" / "hydro_2y_seed5_v1.csv"
    assert task.info()["cache"] == str(fallback) and fallback.is_file()
    assert np.array_equal(g.y, f.y)  # in memory and cached: the same values
    again = _task(C.HydroStandIn, env["data"], years=2, gen_seed=5)
    assert np.array_equal(again.load_frame().x, g.x) and again.info()["cache"] == str(fallback)
    assert not again.info()["generated"]


def test_hydro_bad_params(env):
    from seqbench import config, registry
    with pytest.raises(SeqbenchError, match="'task.years': expected an integer >= 1"):
        config.resolve(registry.get_model("gru"), registry.get_task("climate-hydro"), "tiny", {"task.years": 0})


def test_fitted_statistics_follow_the_record(fake_seattle):
    st = C.fit_weather(fake_seattle)
    jan, jul = 0, 6  # the fake record: wet winters, dry summers
    assert st["p01"][jan] > st["p01"][jul] and st["p11"][jan] > st["p11"][jul]
    assert (st["gamma_shape"] > 0).all() and (st["gamma_scale"] > 0).all()
    assert (st["temp_sd"] > 0).all() and ((st["temp_phi"] >= 0) & (st["temp_phi"] <= 0.95)).all()
    wx = C.generate_weather(st, 30, 0)
    month = np.tile(C._MONTH_OF_DAY, 30)
    for m in (jan, jul):  # the generated wet-day frequency follows the fitted chain's stationary one
        pi = st["p01"][m] / (1 - st["p11"][m] + st["p01"][m])
        assert (wx["precipitation"][month == m] > 0).mean() == pytest.approx(pi, abs=0.08)
