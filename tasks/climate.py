"""Daily weather drivers -> hydro-climatic state: four real public series and a long-memory stand-in.

The setting of Xu et al., "Message Propagation Through Time" (SDM 2024; reference code
XuShaoming/Message-Propagation-Through-Time ``scripts/preprocess.py``, ``Train_*_demo.py``): a
recurrent model reads daily weather drivers and predicts, at every step, a land-surface state that a
process model simulated (SWAT's soil water, snowpack, streamflow over 1000 simulated years). Scaling
(fit on the training part only), the chronological split (train / val / test = first 50% / next 10% /
last 40% unless a task says otherwise), windows, loaders and metrics (RMSE in the target's units, NSE)
are the framework's (``seqbench.series.SeriesTask``); the tasks here only provide the series.

Registered: ``climate-melbourne``, ``climate-seattle``, ``climate-co2``, ``climate-elnino`` (real
series, sha256-checksummed, read with pandas; downloaded, when a file is missing and
``SEQBENCH_DOWNLOAD`` allows, from jbrownlee/Datasets at commit d20fcb64 and statsmodels' and
vega_datasets' repositories, accepted only if the sha256 matches) and ``climate-hydro`` (a generated
stand-in for the paper's private SWAT simulation).
"""
from __future__ import annotations

import hashlib
import io
import math
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from seqbench.config import POSITIVE, SEED, choice, setting
from seqbench.data import ensure_files, file_digest, writable_dir
from seqbench.errors import SeqbenchError
from seqbench.registry import register_task
from seqbench.series import SeriesFrame, SeriesParams, SeriesTask

if TYPE_CHECKING:  # pandas is imported where it is used: importing it takes 0.3 s
    import pandas as pd

# ----------------------------------------------------------------------------- sources
JB_COMMIT = "d20fcb6402ae34e653d4513b00f39257bb37ed7f"
JB_URL = f"https://raw.githubusercontent.com/jbrownlee/Datasets/{JB_COMMIT}/"
SM_URLS = (
    "https://raw.githubusercontent.com/statsmodels/statsmodels/main/statsmodels/datasets/",
    "https://raw.githubusercontent.com/statsmodels/statsmodels/maintenance/0.14.x/statsmodels/datasets/",
)
VEGA_URLS = (
    "https://raw.githubusercontent.com/altair-viz/vega_datasets/master/vega_datasets/_data/",
    "https://raw.githubusercontent.com/vega/vega-datasets/v1.31.1/data/",
)

MELBOURNE_FILES = {  # sha256, as in the offline copies' SHA256SUMS
    "daily-min-temperatures.csv": "8b9de63ed6789492bf497625e7f9beb96a63d367b4b0a21754006f749fa5e5da",
    "daily-max-temperatures.csv": "4f4ab4d6134d9c0f8efb3d6af6edc30a0ad3c56573d0f20f45db010055d0371c",
}
SEATTLE_FILES = {"seattle-weather.csv": "62f0609f787158128aa2bd102967173a4953122dd4f872bf1d502cae1037df0b"}
CO2_FILES = {"co2.csv": "16695fa2786e53414e5a6b54767a3fdf5de99cfbc68617f69d1362d92776a92f"}
ELNINO_FILES = {"elnino.csv": "b647be00e0fd264be9764e317e6b963f35030014ecca2b21b204521716e463ad"}

MAX_GAP_DAYS = 7  # longest run of unparseable daily values we interpolate over
MAX_BAD_FRACTION = 0.01


def bent_doy(doy) -> np.ndarray:
    """The reference's seasonal day-of-year feature, bent at day 183: 183 - |doy - 183| (doy 1..366 ->
    0..183; 1 Jan -> 1, 2 Jul -> 183, 31 Dec -> 1 in a common year and 0 in a leap year)."""
    return 183.0 - np.abs(np.asarray(doy, dtype=np.float64) - 183.0)


def _fmt_range(dates: np.ndarray) -> str:
    import pandas as pd

    return f"{pd.Timestamp(dates[0]).date()}..{pd.Timestamp(dates[-1]).date()}"


# ----------------------------------------------------------------------------- presets
STRATEGY = "rmb-ssif"
TRAIN_FAST = {
    "strategy": STRATEGY, "optimizer": "adam", "lr": 0.01, "batch_size": 64,
    "schedule": "step", "lr_step": 600, "lr_gamma": 0.5,
}
# The reference's shell scripts: 200 epochs (500 in comments), batch 64, Adam 0.01, StepLR(600, 0.5)
# stepped once per epoch (``schedule=step``, ``lr_step=600``, ``lr_gamma=0.5``: with 200 epochs it never
# decays), hidden 32 (the model's own presets set its width, e.g. ``--hidden 32`` for the reference's GRU).
TRAIN_PAPER = dict(TRAIN_FAST, epochs=200)


def _presets(tiny_task: dict, fast_epochs: int, **task_keys) -> dict:
    """Training presets: ``paper`` the reference's (TRAIN_PAPER); ``fast`` the same with fewer epochs
    where that matters (climate-hydro: 20, one GRU-32 run ~40 s on a 2-core CPU; the real series keep
    200 epochs, 7-20 s there); ``tiny`` one epoch of small windows (and 6 generated years) for tests."""
    # strategy: RMB-SSIF (shuffled overlapping windows from zero states, the whole validation /
    # test part in one stateful pass), the reference's baseline; --strategy picks another.
    return {
        "tiny": {"strategy": STRATEGY, "epochs": 1, "batch_size": 8, "eval_batch_size": 64, "latency_time": 0.2,
                 **tiny_task},
        "fast": dict(TRAIN_FAST, epochs=fast_epochs, **task_keys),
        "paper": dict(TRAIN_PAPER, **task_keys),
    }


class _ClimateTask(SeriesTask):
    """Shared: checksummed files in one folder of the data root, a cached frame, ``info()``."""

    # The setting every task here follows (the MPTT paper's), and its reference code; a task on a
    # public series names that series' page instead (``climate-hydro`` stands in for the paper's data).
    paper = "Xu, Khandelwal, Renganathan & Kumar, Message Propagation Through Time, SDM 2024"
    paper_url = "https://arxiv.org/abs/2309.16882"
    reference = "https://github.com/XuShaoming/Message-Propagation-Through-Time"
    folder = ""  # below the data root
    files: dict = {}
    urls: dict = {}
    dataset = ""
    source = ""

    def _paths(self) -> dict:
        return ensure_files(Path(self.data_root) / self.folder, self.files, self.urls, self.dataset, algo="sha256")

    def load_frame(self) -> SeriesFrame:
        frame = getattr(self, "_frame", None)
        if frame is None:
            self._notes = {}
            frame = self._frame = self._build()
        return frame

    def _build(self) -> SeriesFrame:
        raise NotImplementedError

    def info(self) -> dict:
        d = super().info()  # features, targets, units, split sizes, strategy layout, scaling
        f = self._data()["frame"]
        d.update(
            source=self.source,
            files={n: {"sha256": h, "path": f"{self.folder}/{n}"} for n, h in self.files.items()},
            period=_fmt_range(f.dates) if f.dates is not None else None,
            steps=int(len(f.y)),
            **getattr(self, "_notes", {}),
        )
        return d


# ----------------------------------------------------------------------------- Melbourne
def read_daily_series(path, what: str) -> tuple[pd.Series, dict]:
    """A two-column daily CSV (date, value) -> a float Series on the full daily calendar.

    Some copies of the Melbourne files carry values marked ``?`` (e.g. ``?0.2``) and a trailing title
    line (the checksummed ones have neither): strips ``?`` markers (value kept), drops rows whose date
    does not parse, interpolates missing days and unparseable values linearly in time (runs of at most
    MAX_GAP_DAYS, at most MAX_BAD_FRACTION of the days; more is an error). The counts go to ``info()``."""
    import pandas as pd

    try:
        raw = pd.read_csv(path, dtype=str, keep_default_na=False, header=0)
    except (OSError, ValueError, pd.errors.ParserError) as e:
        raise SeqbenchError(f"{what} file {path} is unreadable: {e}") from None
    if raw.shape[1] < 2:
        raise SeqbenchError(f"{what} file {path} has {raw.shape[1]} column(s), expected date and value")
    d = raw.iloc[:, 0].str.strip().str.strip('"')
    v = raw.iloc[:, 1].str.strip().str.strip('"')
    dates = pd.to_datetime(d, format="%Y-%m-%d", errors="coerce")
    marked = int(v.str.contains("?", regex=False).sum())
    values = pd.to_numeric(v.str.replace("?", "", regex=False), errors="coerce")
    ok = dates.notna().to_numpy()
    dropped = int((~ok).sum())
    s = pd.Series(values.to_numpy()[ok], index=pd.DatetimeIndex(dates[ok]))
    if s.index.has_duplicates:
        raise SeqbenchError(f"{what} file {path} has repeated dates, e.g. {s.index[s.index.duplicated()][0].date()}")
    s = s.sort_index()
    if len(s) < 2:
        raise SeqbenchError(f"{what} file {path} has fewer than 2 dated rows")
    s = s.reindex(pd.date_range(s.index[0], s.index[-1], freq="D"))
    bad = s.isna().to_numpy()
    if bad.mean() > MAX_BAD_FRACTION or _longest_run(bad) > MAX_GAP_DAYS:
        raise SeqbenchError(
            f"{what} file {path}: {int(bad.sum())} of {len(s)} days missing or unparseable "
            f"(longest gap {_longest_run(bad)} days); at most {MAX_BAD_FRACTION:.0%} and gaps of "
            f"{MAX_GAP_DAYS} days are filled"
        )
    t = np.arange(len(s), dtype=np.float64)
    filled = np.interp(t, t[~bad], s.to_numpy()[~bad])
    notes = {"question_marks_stripped": marked, "undated_rows_dropped": dropped, "days_interpolated": int(bad.sum())}
    return pd.Series(filled, index=s.index), notes


def _longest_run(mask: np.ndarray) -> int:
    best = run = 0
    for b in mask.tolist():
        run = run + 1 if b else 0
        best = max(best, run)
    return best


@register_task("climate-melbourne")
class MelbourneTemperature(_ClimateTask):
    """Melbourne daily minimum temperature from the bent day of year and the daily maximum, 1981-1990.

    1981-01-01 .. 1990-12-31, Time Series Data Library (Australian Bureau of Meteorology), copies in
    jbrownlee/Datasets ``daily-min-temperatures.csv`` and ``daily-max-temperatures.csv``. Drivers: bent
    day of year, Tmax (degC); target: Tmin (degC). The two files have 3650 rows each (31 Dec 1984 and
    31 Dec 1988 are missing: each leap year has 365 rows): the series is put on the full daily calendar
    (3652 days) and those two days filled by linear interpolation in time. Windows of 365 days, stride
    183."""

    @dataclass
    class Params(SeriesParams):
        # 3652 days: the validation tenth is 365 days, the longest window that fits it (the
        # reference's 366 would not, for strategies that evaluate window by window).
        window: int = 365
        stride: int = 183

    presets = _presets({"task.window": 32, "task.stride": 16}, fast_epochs=200)
    features, targets = ("doy_bent", "temp_max"), ("temp_min",)
    folder = "climate/jbrownlee"
    files = MELBOURNE_FILES
    urls = {n: [JB_URL + n] for n in MELBOURNE_FILES}
    dataset = "Melbourne daily temperatures"
    reference = "https://github.com/jbrownlee/Datasets"
    source = "Time Series Data Library (Australian Bureau of Meteorology) via jbrownlee/Datasets@" + JB_COMMIT[:8]

    def _build(self) -> SeriesFrame:
        p = self._paths()
        tmin, n1 = read_daily_series(p["daily-min-temperatures.csv"], "Melbourne daily-min-temperatures")
        tmax, n2 = read_daily_series(p["daily-max-temperatures.csv"], "Melbourne daily-max-temperatures")
        idx = tmin.index.intersection(tmax.index)
        if len(idx) < 2:
            raise SeqbenchError("Melbourne: the daily min and max temperature files share no dates")
        tmin, tmax = tmin.loc[idx], tmax.loc[idx]
        self._notes = {"min_file": n1, "max_file": n2}
        return SeriesFrame(
            x=np.stack([bent_doy(idx.day_of_year), tmax.to_numpy()], 1),
            y=tmin.to_numpy()[:, None].astype(np.float64),
            feature_names=["doy_bent", "temp_max"],
            target_names=["temp_min"],
            target_units=["degC"],
            dates=idx.to_numpy().astype("datetime64[D]"),
        )

    @classmethod
    def write_fake_data(cls, root, seed: int = 0) -> None:
        """Two years (1981-1982) in the files' layout (CRLF, quoted dates), with one day missing and
        one ``?``-marked value, as some copies have."""
        import pandas as pd

        folder = Path(root) / cls.folder
        folder.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(seed)
        dates = pd.date_range("1981-01-01", "1982-12-31", freq="D")
        season = np.cos(2 * np.pi * (dates.day_of_year.to_numpy() - 20) / 365.25)
        tmax = 20 + 6 * season + rng.normal(0, 4, len(dates))
        tmin = np.minimum(11 + 4 * season + 0.3 * (tmax - 20) + rng.normal(0, 2, len(dates)), tmax - 0.5)
        keep = dates != pd.Timestamp("1981-12-31")  # a missing day, like 31 Dec of the leap years
        for name, col, vals in (("daily-min-temperatures.csv", "Temp", tmin),
                                ("daily-max-temperatures.csv", "Temperature", tmax)):
            rows = [f'"{d.date()}",{v:.1f}' for d, v, k in zip(dates, vals, keep) if k]
            if name.startswith("daily-min"):
                rows[40] = rows[40].replace(",", ",?", 1)
            (folder / name).write_bytes(("\r\n".join([f'"Date","{col}"'] + rows)).encode())


# ----------------------------------------------------------------------------- Seattle
def read_seattle(path) -> pd.DataFrame:
    """vega_datasets' seattle-weather.csv -> DataFrame indexed by date (complete daily calendar)."""
    import pandas as pd

    try:
        df = pd.read_csv(path)
        df["date"] = pd.to_datetime(df["date"], format="%Y/%m/%d")
        cols = ["precipitation", "temp_max", "temp_min", "wind"]
        df[cols] = df[cols].astype(np.float64)
    except (OSError, KeyError, ValueError, pd.errors.ParserError) as e:
        raise SeqbenchError(f"Seattle weather file {path} is unreadable: {type(e).__name__}: {e}") from None
    df = df.set_index("date").sort_index()
    full = pd.date_range(df.index[0], df.index[-1], freq="D")
    if len(df) < 365 or len(full) != len(df) or df[cols].isna().any().any():
        raise SeqbenchError(
            f"Seattle weather file {path}: expected a complete daily record of at least a year, "
            f"found {len(df)} rows over {len(full)} days with {int(df[cols].isna().sum().sum())} missing values"
        )
    return df[cols]


@register_task("climate-seattle")
class SeattleWeather(_ClimateTask):
    """Seattle daily minimum temperature from the day's precipitation, maximum temperature and wind, 2012-2015.

    2012-01-01 .. 2015-12-31 (NOAA, via vega_datasets ``seattle-weather.csv``; 1461 days, complete).
    Drivers: bent day of year, precipitation (mm), Tmax (degC), wind (m/s); target Tmin (degC). A daily
    driver -> state mapping like the paper's: the night minimum follows the season and the day's
    maximum, and the diurnal range it leaves depends on cloud and rain (wet nights stay warmer) and on
    wind (mixing prevents radiative cooling), with memory through the surrounding sea and soil. The
    file's ``weather`` label (sun / fog / rain / ..), a categorical summary of the same day, is not
    used. Windows of 120 days, stride 60."""

    @dataclass
    class Params(SeriesParams):
        # 4 years: the validation tenth is 146 days, so windows are 4 months.
        window: int = 120
        stride: int = 60

    presets = _presets({"task.window": 32, "task.stride": 16}, fast_epochs=200)
    features, targets = ("doy_bent", "precipitation", "temp_max", "wind"), ("temp_min",)
    folder = "climate/vega"
    files = SEATTLE_FILES
    urls = {n: [u + n for u in VEGA_URLS] for n in SEATTLE_FILES}
    dataset = "Seattle weather"
    reference = "https://github.com/altair-viz/vega_datasets"
    source = "NOAA daily records for Seattle via vega_datasets 0.9.0 (seattle-weather.csv)"

    def _build(self) -> SeriesFrame:
        df = read_seattle(self._paths()["seattle-weather.csv"])
        return SeriesFrame(
            x=np.stack([bent_doy(df.index.day_of_year), df.precipitation, df.temp_max, df.wind], 1).astype(np.float64),
            y=df[["temp_min"]].to_numpy(np.float64),
            feature_names=["doy_bent", "precipitation", "temp_max", "wind"],
            target_names=["temp_min"],
            target_units=["degC"],
            dates=df.index.to_numpy().astype("datetime64[D]"),
        )

    @classmethod
    def write_fake_data(cls, root, seed: int = 0) -> None:
        write_fake_seattle(Path(root) / cls.folder / "seattle-weather.csv", seed)


def write_fake_seattle(path: Path, seed: int = 0) -> None:
    """Two Seattle-like years (2012-2013) in vega's layout: wet winters, dry summers, 0.1 precision."""
    import pandas as pd

    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    dates = pd.date_range("2012-01-01", "2013-12-31", freq="D")
    c = -np.cos(2 * np.pi * (dates.day_of_year.to_numpy() - 20) / 365.25)  # -1 mid-January, +1 mid-July
    n = len(dates)
    wet = np.zeros(n, bool)
    for t in range(1, n):
        pw = (0.22 - 0.12 * c[t]) if not wet[t - 1] else (0.6 - 0.15 * c[t])
        wet[t] = rng.random() < pw
    precip = np.where(wet, np.round(rng.gamma(0.75, 8.0 - 2.0 * c, n), 1), 0.0)
    anom = np.zeros(n)
    for t in range(1, n):
        anom[t] = 0.7 * anom[t - 1] + rng.normal(0, 2.0)
    tmax = 16.5 + 9 * c + anom - 2.0 * wet
    tmin = 8.2 + 5 * c + 0.6 * anom + rng.normal(0, 1.5, n)
    tmin = np.minimum(tmin, tmax - 1.0)
    wind = rng.gamma(5.0, 0.65, n)
    label = np.where(wet, "rain", "sun")
    with open(path, "w", newline="") as f:
        f.write("date,precipitation,temp_max,temp_min,wind,weather\n")
        for i, d in enumerate(dates):
            f.write(f"{d:%Y/%m/%d},{precip[i]:.1f},{tmax[i]:.1f},{tmin[i]:.1f},{wind[i]:.1f},{label[i]}\n")


# ----------------------------------------------------------------------------- CO2
@register_task("climate-co2")
class MaunaLoaCO2(_ClimateTask):
    """Mauna Loa weekly CO2 (ppm) from time features, 1958-2001; missing weeks interpolated.

    1958-03-29 .. 2001-12-29, 2284 weeks (statsmodels' ``co2`` dataset, Keeling & Whorf, SIO). 59 weeks
    have no value: filled by linear interpolation in time between the neighbouring measured weeks (the
    first and last weeks are measured). Drivers are time features only: sin and cos of the phase of the
    year (day of year - 1) / 365.25 and the years since the first week; target CO2. A seasonal cycle on a
    trend that the test part (the last 40%, after ~1984) extrapolates: models must extrapolate the trend,
    and a strategy that reads the previous target (``tf-tfif``) is the fair comparison. Windows of 104
    weeks, stride 52."""

    @dataclass
    class Params(SeriesParams):
        window: int = 104
        stride: int = 52

    presets = _presets({"task.window": 16, "task.stride": 8}, fast_epochs=200)
    features, targets = ("year_sin", "year_cos", "years_since_start"), ("co2",)
    folder = "climate/statsmodels"
    files = CO2_FILES
    urls = {n: [u + "co2/" + n for u in SM_URLS] for n in CO2_FILES}
    dataset = "Mauna Loa CO2"
    reference = "https://github.com/statsmodels/statsmodels/tree/main/statsmodels/datasets/co2"
    source = "Keeling & Whorf (SIO), Mauna Loa weekly CO2, via statsmodels.datasets.co2"

    def _build(self) -> SeriesFrame:
        import pandas as pd

        path = self._paths()["co2.csv"]
        try:
            df = pd.read_csv(path)
            dates = pd.DatetimeIndex(pd.to_datetime(df["date"].astype(str), format="%Y%m%d"))
            co2 = pd.to_numeric(df["co2"], errors="coerce").to_numpy(np.float64)
        except (OSError, KeyError, ValueError, pd.errors.ParserError) as e:
            raise SeqbenchError(f"CO2 file {path} is unreadable: {type(e).__name__}: {e}") from None
        step = np.diff(dates.to_numpy()).astype("timedelta64[D]").astype(int)
        if len(df) < 2 or (step != 7).any():
            raise SeqbenchError(f"CO2 file {path}: expected consecutive weekly dates (7 days apart)")
        ok = np.isfinite(co2)
        if ok.sum() < 2:
            raise SeqbenchError(f"CO2 file {path}: fewer than 2 measured weeks")
        t = np.arange(len(co2), dtype=np.float64)
        filled = np.interp(t, t[ok], co2[ok])  # linear in time; constant beyond the ends
        self._notes = {"weeks_interpolated": int((~ok).sum())}
        phase = 2 * np.pi * (dates.day_of_year.to_numpy() - 1) / 365.25
        years = np.asarray((dates - dates[0]).days, dtype=np.float64) / 365.25
        return SeriesFrame(
            x=np.stack([np.sin(phase), np.cos(phase), years], 1),
            y=filled[:, None],
            feature_names=["year_sin", "year_cos", "years_since_start"],
            target_names=["co2"],
            target_units=["ppm"],
            dates=dates.to_numpy().astype("datetime64[D]"),
        )

    @classmethod
    def write_fake_data(cls, root, seed: int = 0) -> None:
        import pandas as pd

        folder = Path(root) / cls.folder
        folder.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(seed)
        dates = pd.date_range("1958-03-29", periods=320, freq="7D")
        t = np.arange(len(dates)) / 52.18
        co2 = 315 + 0.8 * t + 3 * np.sin(2 * np.pi * t) + rng.normal(0, 0.3, len(dates))
        missing = {3, 10, 11, 12, 150}
        lines = ["date,co2"] + [f"{d:%Y%m%d}," + ("" if i in missing else f"{v:.1f}")
                                for i, (d, v) in enumerate(zip(dates, co2))]
        (folder / "co2.csv").write_text("\n".join(lines) + "\n")


# ----------------------------------------------------------------------------- El Nino
MONTHS = ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC")


@register_task("climate-elnino")
class ElNinoSST(_ClimateTask):
    """Nino 1+2 monthly SST (degC) from month and time, 1950-2010.

    Monthly sea-surface temperature, Nino 1+2 region (0-10S, 90-80W), statsmodels' ``elnino`` (NOAA
    ERSST v3b): 61 years x 12 months read row by row into one monthly series of 732 values (dates the
    first of each month). Drivers: sin and cos of 2 pi (month - 1) / 12 and the years since January
    1950; target SST (degC). The seasonal cycle is predictable from the drivers, the El Nino anomalies
    are not (a strategy that feeds the previous target in, or carries state, is what can help). Windows
    of 24 months, stride 12."""

    @dataclass
    class Params(SeriesParams):
        window: int = 24
        stride: int = 12

    presets = _presets({"task.window": 12, "task.stride": 6}, fast_epochs=200)
    features, targets = ("month_sin", "month_cos", "years_since_start"), ("sst",)
    folder = "climate/statsmodels"
    files = ELNINO_FILES
    urls = {n: [u + "elnino/" + n for u in SM_URLS] for n in ELNINO_FILES}
    dataset = "El Nino SST"
    reference = "https://github.com/statsmodels/statsmodels/tree/main/statsmodels/datasets/elnino"
    source = "NOAA ERSST v3b, Nino 1+2 monthly SST, via statsmodels.datasets.elnino"

    def _build(self) -> SeriesFrame:
        import pandas as pd

        path = self._paths()["elnino.csv"]
        try:
            df = pd.read_csv(path)
            years = df["YEAR"].astype(int).to_numpy()
            sst = df[list(MONTHS)].astype(np.float64).to_numpy()
        except (OSError, KeyError, ValueError, pd.errors.ParserError) as e:
            raise SeqbenchError(f"El Nino file {path} is unreadable: {type(e).__name__}: {e}") from None
        if len(years) < 1 or (np.diff(years) != 1).any() or not np.isfinite(sst).all():
            raise SeqbenchError(f"El Nino file {path}: expected consecutive years with 12 monthly values each")
        month = np.tile(np.arange(12), len(years))
        year = np.repeat(years, 12)
        dates = np.array([f"{y:04d}-{m + 1:02d}-01" for y, m in zip(year, month)], dtype="datetime64[D]")
        phase = 2 * np.pi * month / 12
        return SeriesFrame(
            x=np.stack([np.sin(phase), np.cos(phase), (year - years[0]) + month / 12.0], 1),
            y=sst.reshape(-1, 1),
            feature_names=["month_sin", "month_cos", "years_since_start"],
            target_names=["sst"],
            target_units=["degC"],
            dates=dates,
        )

    @classmethod
    def write_fake_data(cls, root, seed: int = 0) -> None:
        folder = Path(root) / cls.folder
        folder.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(seed + 1)
        lines = ['"YEAR",' + ",".join(f'"{m}"' for m in MONTHS)]
        anom = 0.0
        for y in range(1950, 1980):  # 360 months: every part holds a window of 32
            vals = []
            for m in range(12):
                anom = 0.8 * anom + rng.normal(0, 0.5)
                vals.append(23 + 2.5 * math.cos(2 * math.pi * (m - 2) / 12) + anom)
            lines.append(f"{y}," + ",".join(f"{v:.3f}" for v in vals))
        (folder / "elnino.csv").write_text("\n".join(lines) + "\n")


# ============================================================================= hydro stand-in
HYDRO_VERSION = 1
SPINUP_YEARS = 5
DAYS = 365
LATITUDE = 47.6  # degrees N (Seattle)
TEMP_SHIFT = -6.0  # degC: catchment ~900 m above the station at 6.5 degC/km, winters cold enough for a snowpack
T_SNOW, T_MELT, DDF = 1.0, 0.0, 2.5  # degC, degC, mm/degC/day
# mm (a deep profile), mm (field capacity), 1/day (100-day drainage above it), 1/day (100-day baseflow recession)
S_MAX, S_FC, K_PERC, K_GW = 500.0, 250.0, 0.01, 0.01
RHO_P, SIGMA_P = 0.9, 0.15  # annual log-precipitation AR(1)
RHO_T, SIGMA_T = 0.8, 0.5  # annual temperature-offset AR(1), degC
KRS = 0.16  # Hargreaves radiation coefficient (interior), FAO-56 eq. 50
P_CLIP = (0.01, 0.99)
MIN_WET_DAYS, MIN_STATE_DAYS = 10, 5
HYDRO_TARGETS = {"soil_water": "mm", "snowpack": "mm", "streamflow": "mm/day"}
HYDRO_FEATURES = ["doy_bent", "precipitation", "temp_max", "temp_min", "solar", "wind"]
HYDRO_COLUMNS = ["year", "day", "precipitation", "temp_max", "temp_min", "solar", "wind",
                 "soil_water", "snowpack", "streamflow"]
_MONTH_OF_DAY = np.repeat(np.arange(12), [31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31])  # 365-day calendar, 0-based


def extraterrestrial_radiation(doy, lat_deg: float = LATITUDE) -> np.ndarray:
    """FAO-56 eq. 21: daily extraterrestrial radiation Ra (MJ m-2 day-1) for day of year ``doy``."""
    j = np.asarray(doy, dtype=np.float64)
    phi = math.radians(lat_deg)
    dr = 1 + 0.033 * np.cos(2 * np.pi * j / 365)
    delta = 0.409 * np.sin(2 * np.pi * j / 365 - 1.39)
    ws = np.arccos(np.clip(-math.tan(phi) * np.tan(delta), -1.0, 1.0))
    return 24 * 60 / np.pi * 0.0820 * dr * (
        ws * math.sin(phi) * np.sin(delta) + math.cos(phi) * np.cos(delta) * np.sin(ws))


def _harmonics(phase: np.ndarray) -> np.ndarray:
    return np.stack([np.ones_like(phase), np.cos(phase), np.sin(phase), np.cos(2 * phase), np.sin(2 * phase)], 1)


def _gamma_mom(x: np.ndarray) -> tuple[float, float]:
    m, v = float(np.mean(x)), float(np.var(x, ddof=1))
    return m * m / v, v / m


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    if len(a) < 3 or np.std(a) == 0 or np.std(b) == 0:
        return 0.0
    return float(np.corrcoef(a, b)[0, 1])


def fit_weather(df: pd.DataFrame) -> dict:
    """Monthly weather-generator statistics from a daily record (``read_seattle``'s frame); m = calendar month.

    Wet day: precipitation > 0; occurrence P(wet | dry) = p01[m], P(wet | wet) = p11[m] from the
    transition counts into day t of month m, clipped to [0.01, 0.99]; wet-day amounts and wind: Gamma
    per month by the method of moments (k = mean^2 / var, theta = var / mean). A month with fewer than
    10 wet days, or fewer than 5 days in a conditioning state, takes the statistics of all months.
    Tmax, Tmin: a 2-harmonic seasonal mean (least squares on [1, cos, sin, cos 2, sin 2] of the phase
    2 pi (doy - 1) / 365.25) fitted separately on wet and dry days; sd[m] the monthly std of the
    residuals; phi[m] the lag-1 correlation of the standardized residuals (clipped to [0, 0.95]); rho[m]
    the correlation of the two AR(1) innovations (clipped to [-0.95, 0.95])."""
    month = df.index.month.to_numpy() - 1
    phase = 2 * np.pi * (df.index.day_of_year.to_numpy() - 1) / 365.25
    p = df["precipitation"].to_numpy()
    wet = p > 0
    prev, cur, mon = wet[:-1], wet[1:], month[1:]

    def pooled_p(mask_prev):
        sel = prev == mask_prev
        return cur[sel].mean() if sel.any() else 0.5

    p01, p11, gk, gt, wk, wt = (np.zeros(12) for _ in range(6))
    all_k, all_t = _gamma_mom(p[wet])
    wind = df["wind"].to_numpy()
    for m in range(12):
        dry_m, wet_m = (mon == m) & ~prev, (mon == m) & prev
        p01[m] = cur[dry_m].mean() if dry_m.sum() >= MIN_STATE_DAYS else pooled_p(False)
        p11[m] = cur[wet_m].mean() if wet_m.sum() >= MIN_STATE_DAYS else pooled_p(True)
        amounts = p[wet & (month == m)]
        ok = len(amounts) >= MIN_WET_DAYS and np.var(amounts, ddof=1) > 0
        gk[m], gt[m] = _gamma_mom(amounts) if ok else (all_k, all_t)
        wk[m], wt[m] = _gamma_mom(wind[month == m])
    p01, p11 = np.clip(p01, *P_CLIP), np.clip(p11, *P_CLIP)

    basis = _harmonics(phase)
    coef = np.zeros((2, 2, 5))  # [Tmax/Tmin, dry/wet, harmonic]
    z = np.zeros((2, len(df)))
    sd, phi = np.zeros((2, 12)), np.zeros((2, 12))
    for j, col in enumerate(("temp_max", "temp_min")):
        temp = df[col].to_numpy()
        pooled = np.linalg.lstsq(basis, temp, rcond=None)[0]
        for w in (0, 1):
            sel = wet == bool(w)
            coef[j, w] = np.linalg.lstsq(basis[sel], temp[sel], rcond=None)[0] if sel.sum() >= 20 else pooled
        resid = temp - np.where(wet, basis @ coef[j, 1], basis @ coef[j, 0])
        for m in range(12):
            sd[j, m] = np.std(resid[month == m], ddof=1)
        z[j] = resid / sd[j, month]
        for m in range(12):
            sel = mon == m
            phi[j, m] = _corr(z[j, :-1][sel], z[j, 1:][sel])
    phi = np.clip(phi, 0.0, 0.95)
    rho = np.zeros(12)
    innov = (z[:, 1:] - phi[:, mon] * z[:, :-1]) / np.sqrt(1 - phi[:, mon] ** 2)
    for m in range(12):
        rho[m] = _corr(innov[0, mon == m], innov[1, mon == m])
    rho = np.clip(rho, -0.95, 0.95)
    return {
        "p01": p01, "p11": p11, "gamma_shape": gk, "gamma_scale": gt,
        "temp_coef": coef, "temp_sd": sd, "temp_phi": phi, "temp_rho": rho,
        "wind_shape": wk, "wind_scale": wt,
    }


def _annual_ar1(eps: np.ndarray, rho: float, sigma: float) -> np.ndarray:
    a = np.empty(len(eps))
    a[0] = sigma * eps[0]  # stationary start
    s = math.sqrt(1 - rho * rho) * sigma
    for y in range(1, len(eps)):
        a[y] = rho * a[y - 1] + s * eps[y]
    return a


def generate_weather(stats: dict, years: int, seed: int) -> dict:
    """``years`` x 365 days of weather from ``fit_weather`` statistics; deterministic in ``seed``.

    Occurrence: the first-order Markov chain; amounts and wind: the monthly Gammas (wind independent
    from day to day). Temperature: T_j = mu_j^{wet|dry}(day) + sd_j[m] z_j(t) + b(t) + TEMP_SHIFT (the
    harmonics' phase over 365 days, the generator's calendar), with standardized AR(1) anomalies
    z_j(t) = phi_j[m] z_j(t-1) + sqrt(1 - phi_j[m]^2) e_j(t), e = (e_max, e_min) standard normal with
    correlation rho[m]; if Tmin > Tmax the two are swapped. Low-frequency
    climate: an annual AR(1) a_y = RHO_P a_{y-1} + sqrt(1 - RHO_P^2) SIGMA_P eps (stationary start)
    multiplies precipitation amounts by exp(a - SIGMA_P^2 / 2), another, b_y (RHO_T, SIGMA_T degC),
    shifts both temperatures; both set at mid-year and linearly interpolated, so wet and dry, warm and
    cold spells last several years. Solar radiation (FAO-56 eq. 50): Rs = 0.16 sqrt(Tmax - Tmin) Ra, at
    most 0.75 Ra (clear sky), in MJ m-2 day-1. Draws from ``Generator(PCG64(seed))`` in a fixed order:
    annual precipitation shocks, annual temperature shocks, occurrence uniforms, gamma amounts,
    temperature innovations, wind."""
    rng = np.random.Generator(np.random.PCG64(seed))
    n = years * DAYS
    day = np.tile(np.arange(1, DAYS + 1), years)
    mon = np.tile(_MONTH_OF_DAY, years)
    # low-frequency climate: yearly values at mid-year, linearly interpolated day by day
    a = _annual_ar1(rng.standard_normal(years), RHO_P, SIGMA_P)
    b = _annual_ar1(rng.standard_normal(years), RHO_T, SIGMA_T)
    t = np.arange(n, dtype=np.float64)
    mid = np.arange(years) * DAYS + (DAYS - 1) / 2
    p_mult = np.exp(np.interp(t, mid, a) - SIGMA_P**2 / 2)
    t_off = np.interp(t, mid, b)

    u = rng.random(n)
    amount = rng.gamma(stats["gamma_shape"][mon], stats["gamma_scale"][mon])
    e = rng.standard_normal((n, 2))
    wind = rng.gamma(stats["wind_shape"][mon], stats["wind_scale"][mon])

    rho = stats["temp_rho"][mon]
    e1, e2 = e[:, 0], rho * e[:, 0] + np.sqrt(1 - rho**2) * e[:, 1]
    phi = stats["temp_phi"][:, mon]
    i1 = (np.sqrt(1 - phi[0] ** 2) * e1).tolist()
    i2 = (np.sqrt(1 - phi[1] ** 2) * e2).tolist()
    f1, f2 = phi[0].tolist(), phi[1].tolist()
    p01, p11, ul = stats["p01"][mon].tolist(), stats["p11"][mon].tolist(), u.tolist()
    wet, z1, z2 = [False] * n, [0.0] * n, [0.0] * n
    w, a1, a2 = False, 0.0, 0.0
    for k in range(n):  # the two sequential pieces: occurrence chain and AR(1) anomalies
        w = ul[k] < (p11[k] if w else p01[k])
        a1 = f1[k] * a1 + i1[k]
        a2 = f2[k] * a2 + i2[k]
        wet[k], z1[k], z2[k] = w, a1, a2
    wet = np.array(wet)
    basis = _harmonics(2 * np.pi * (day - 1) / DAYS)
    coef, sd = stats["temp_coef"], stats["temp_sd"]
    temps = []
    for j, z in enumerate((z1, z2)):
        mean = np.where(wet, basis @ coef[j, 1], basis @ coef[j, 0])
        temps.append(mean + sd[j, mon] * np.asarray(z) + t_off + TEMP_SHIFT)
    tmax, tmin = np.maximum(temps[0], temps[1]), np.minimum(temps[0], temps[1])
    ra = extraterrestrial_radiation(day)
    rng_t = np.sqrt(tmax - tmin)
    solar = np.minimum(KRS * rng_t * ra, 0.75 * ra)
    pet = 0.0023 * 0.408 * ra * np.maximum((tmax + tmin) / 2 + 17.8, 0.0) * rng_t
    return {
        "year": np.repeat(np.arange(1, years + 1), DAYS), "day": day,
        "precipitation": np.where(wet, amount * p_mult, 0.0), "temp_max": tmax, "temp_min": tmin,
        "solar": solar, "wind": wind, "pet": pet,
    }


def run_buckets(precip, tmax, tmin, pet, snow0: float = 0.0, soil0: float = 0.0, gw0: float = 0.0) -> dict:
    """The conceptual snow + soil-water + groundwater bucket model, day by day; states at the end of each day.

        Tmean    = (Tmax + Tmin) / 2
        snowfall = P if Tmean < T_SNOW else 0                   rain = P - snowfall
        melt     = min(DDF max(Tmean - T_MELT, 0), SWE + snowfall)
        SWE     <- SWE + snowfall - melt
        S       <- S + rain + melt;   Qs = max(S - S_MAX, 0);   S <- S - Qs        saturation excess
        PET      = 0.0023 * 0.408 Ra * max(Tmean + 17.8, 0) * sqrt(Tmax - Tmin)   Hargreaves (FAO-56 eq. 52)
        ET       = PET * S / S_MAX;   S <- S - ET
        perc     = K_PERC max(S - S_FC, 0);   S <- S - perc
        G       <- G + perc;   Qb = K_GW G;   G <- G - Qb                           linear reservoir
        Q        = Qs + Qb                                                          streamflow

    ET <= S since PET < S_MAX. Water is conserved exactly (to rounding):
    sum P = dSWE + dS + dG + sum ET + sum Q."""
    tmean = ((np.asarray(tmax) + np.asarray(tmin)) / 2)
    snowfall = np.where(tmean < T_SNOW, precip, 0.0)
    rain = (precip - snowfall).tolist()
    potmelt = (DDF * np.maximum(tmean - T_MELT, 0.0)).tolist()
    et_frac = (np.asarray(pet) / S_MAX).tolist()
    sf = snowfall.tolist()
    n = len(rain)
    names = ("snowpack", "soil_water", "groundwater", "melt", "runoff", "et", "perc", "baseflow")
    out = {k: [0.0] * n for k in names}
    SWE, SOIL, GW, MELT, RUN, ET, PERC, BASE = (out[k] for k in names)
    swe, s, g = float(snow0), float(soil0), float(gw0)
    smax, sfc, kp, kg = S_MAX, S_FC, K_PERC, K_GW
    for t in range(n):
        pack = swe + sf[t]
        m = potmelt[t]
        if m > pack:
            m = pack
        swe = pack - m
        s += rain[t] + m
        q = s - smax if s > smax else 0.0
        s -= q
        et = et_frac[t] * s
        s -= et
        pc = kp * (s - sfc) if s > sfc else 0.0
        s -= pc
        g += pc
        b = kg * g
        g -= b
        SWE[t], SOIL[t], GW[t], MELT[t], RUN[t], ET[t], PERC[t], BASE[t] = swe, s, g, m, q, et, pc, b
    res = {k: np.asarray(v) for k, v in out.items()}
    res["snowfall"] = snowfall
    res["streamflow"] = res["runoff"] + res["baseflow"]
    return res


def simulate_hydro(seattle: pd.DataFrame, years: int, gen_seed: int) -> dict:
    """Weather (fitted to ``seattle``) and bucket model for ``years`` years after SPINUP_YEARS of
    spin-up from empty stores (dropped): every driver, flux and state as arrays of length years*365,
    plus the states before the first kept day (``snow0``, ``soil0``, ``gw0``) and the fitted
    statistics (``stats``)."""
    stats = fit_weather(seattle)
    wx = generate_weather(stats, years + SPINUP_YEARS, gen_seed)
    hy = run_buckets(wx["precipitation"], wx["temp_max"], wx["temp_min"], wx["pet"])
    k = SPINUP_YEARS * DAYS
    out = {name: v[k:] for name, v in {**wx, **hy}.items()}
    out["year"] = out["year"] - SPINUP_YEARS
    for name, key in (("snow0", "snowpack"), ("soil0", "soil_water"), ("gw0", "groundwater")):
        out[name] = float(hy[key][k - 1]) if k > 0 else 0.0
    out["stats"] = stats
    return out


def hydro_digest(sim: dict, decimals: int = 6) -> str:
    """sha256 of the generated drivers and targets, rounded to ``decimals`` (pins the generator)."""
    h = hashlib.sha256()
    for name in HYDRO_COLUMNS:
        v = np.round(np.asarray(sim[name], dtype=np.float64), decimals) + 0.0  # + 0.0: no negative zeros
        h.update(np.ascontiguousarray(v).tobytes())
    return h.hexdigest()


def hydro_csv_text(sim: dict) -> str:
    """The cache's body: a CSV of HYDRO_COLUMNS, values to 4 decimals."""
    import pandas as pd

    df = pd.DataFrame({c: sim[c] for c in HYDRO_COLUMNS})
    buf = io.StringIO()
    df.to_csv(buf, index=False, float_format="%.4f", lineterminator="\n")
    return buf.getvalue()


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to a temporary file beside ``path`` (a name of its own per writer), then
    rename it over ``path``; the temporary file is removed if anything fails."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        with open(tmp, "x", newline="") as f:  # permissions from the umask, like any new file
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _fallback_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "seqbench" / "climate" / "hydro"


# The MPTT paper's test RMSE (mm) of soil water on its 1000-year SWAT simulation (Xu et al., SDM
# 2024, as quoted in our issue): shown beside our climate-hydro table, never compared as equal data.
PAPER_SWAT_SOIL_WATER_RMSE = {"mptt δ=1": 10.93, "ssmb-ssif": 13.99, "rmb-iif": 32.82}


@register_task("climate-hydro")
class HydroStandIn(_ClimateTask):
    """A 1000-year daily snow / soil-water / streamflow simulation driven by a Seattle-fitted weather
    generator: a documented, deterministic, long-memory stand-in for the paper's private SWAT run.

    A stochastic weather generator (``fit_weather`` on the Seattle file at generation time,
    ``generate_weather``) drives a bucket model (``run_buckets``); the target is one of its states or
    fluxes: ``soil_water`` (mm, default: the paper's table is on SW_ENDmm), ``snowpack`` (mm of water
    equivalent, SNOmm) or ``streamflow`` (mm/day, Q_pred_mm). Drivers: bent day of year, precipitation
    (mm), Tmax, Tmin (degC), solar radiation (MJ m-2), wind (m/s): the paper's inputs less relative
    humidity, which the generator does not make (wind enters no equation: a distractor input, as in SWAT
    runs that use Hargreaves PET). Calendar: synthetic, 365 days (no leap years) with the months of a
    common year, years 1..N; bent day of year in 1..183; ``SeriesFrame.dates`` is None.

    Soil water dries over the summer on the e-folding scale S_MAX / PET (months) and refills in autumn,
    and the groundwater store carries wet and dry years into the next. The 1000-year series of gen_seed
    0 fitted to the real Seattle file: mean annual precipitation 1079 mm (the record: 1106), ET 460 mm,
    streamflow 620 mm (surface 161, baseflow 458); a snowpack from December to April (peak SWE median
    109 mm, 10-90%: 50-227 mm), none July-September; soil water 150-500 mm. Lag-30 autocorrelation:
    soil water 0.81 (0.61 with the mean annual cycle removed, 0.27 at lag 90), groundwater 0.88,
    precipitation 0.05, streamflow 0.08."""

    @dataclass
    class Params(SeriesParams):
        target: str = choice("soil_water", tuple(HYDRO_TARGETS),
                              "soil_water (mm) | snowpack (mm SWE) | streamflow (mm/day)")
        years: int = setting(1000, POSITIVE)
        gen_seed: int = setting(0, SEED)

    presets = _presets({"task.years": 6, "task.window": 32, "task.stride": 16}, fast_epochs=20)
    folder = "climate/vega"  # the generator's fitting input
    files = SEATTLE_FILES
    urls = {n: [u + n for u in VEGA_URLS] for n in SEATTLE_FILES}
    dataset = "Seattle weather (climate-hydro generator input)"
    source = "generated: a weather generator fitted to vega_datasets seattle-weather.csv and a bucket model"

    def declared(self) -> tuple[list, list]:
        return list(HYDRO_FEATURES), [self.params.target]

    def cache_name(self) -> str:
        p = self.params
        return f"hydro_{p.years}y_seed{p.gen_seed}_v{HYDRO_VERSION}.csv"

    def cache_dirs(self) -> list[Path]:
        dirs = [Path(self.data_root) / "climate" / "hydro", _fallback_cache_dir()]
        return [d for i, d in enumerate(dirs) if all(d.resolve() != e.resolve() for e in dirs[:i])]

    def _header(self, seattle_sha: str) -> str:
        p = self.params
        return (f"# seqbench climate-hydro v{HYDRO_VERSION}: years={p.years} gen_seed={p.gen_seed} "
                f"spinup_years={SPINUP_YEARS} seattle_sha256={seattle_sha}\n")

    def _read_cache(self, path: Path, header: str):
        import pandas as pd

        try:
            text = path.read_text()
        except OSError:
            return None
        if not text.startswith(header):
            return None
        try:
            df = pd.read_csv(io.StringIO(text[len(header):]))
        except (ValueError, pd.errors.ParserError):
            return None
        if list(df.columns) != HYDRO_COLUMNS or len(df) != self.params.years * DAYS or df.isna().any().any():
            return None
        return df

    def _series(self) -> pd.DataFrame:
        """The series from the first valid cache, else generated (about 4 s per thousand years; a cached
        read takes 0.2 s) and cached as CSV (the 1000-year file: 24.6 MB) in the first writable one of
        ``cache_dirs()``: ``<data_root>/climate/hydro/`` (not writable: no write access, or no write
        permission bit on its nearest existing folder, so a root user does not write into a read-only
        data root), then ``${XDG_CACHE_HOME:-~/.cache}/seqbench/climate/hydro/``; none: in memory on
        every use. Written atomically (``atomic_write_text``: a crash never leaves a partial file under the
        final name). The first line records version, years,
        seed and the sha256 of the Seattle file fitted; a cache whose first line or rows differ is
        regenerated. Year and day are the first two columns; values to 4 decimals, and the frame is always
        read back from that text, so a fresh series and a cached one are identical."""
        import pandas as pd

        p = self.params
        seattle_path = self._paths()["seattle-weather.csv"]
        header = self._header(file_digest(seattle_path, "sha256"))
        seattle = read_seattle(seattle_path)
        self._notes = {"generated": False, "fitted_statistics": _stats_summary(fit_weather(seattle))}
        for d in self.cache_dirs():
            df = self._read_cache(d / self.cache_name(), header)
            if df is not None:
                self._notes.update(cache=str(d / self.cache_name()))
                return df
        sim = simulate_hydro(seattle, p.years, p.gen_seed)
        text = hydro_csv_text(sim)
        self._notes.update(generated=True, cache=None)
        for d in self.cache_dirs():
            if not writable_dir(d):
                continue
            try:
                atomic_write_text(d / self.cache_name(), header + text)
                self._notes["cache"] = str(d / self.cache_name())
                break
            except OSError:
                continue
        return pd.read_csv(io.StringIO(text))  # the same values a cached read gives

    def _build(self) -> SeriesFrame:
        df = self._series()
        p = self.params
        return SeriesFrame(
            x=np.stack([bent_doy(df["day"].to_numpy())] + [df[c].to_numpy(np.float64) for c in HYDRO_FEATURES[1:]], 1),
            y=df[[p.target]].to_numpy(np.float64),
            feature_names=list(HYDRO_FEATURES),
            target_names=[p.target],
            target_units=[HYDRO_TARGETS[p.target]],
            dates=None,
        )

    def info(self) -> dict:
        d = super().info()
        p = self.params
        d.update(
            period=f"synthetic 365-day calendar, years 1..{p.years}",
            generator={"version": HYDRO_VERSION, "years": p.years, "gen_seed": p.gen_seed,
                       "spinup_years": SPINUP_YEARS},
        )
        if p.target == "soil_water":  # for reference beside our rows: not the same data (SWAT, private)
            d["paper_rmse"] = PAPER_SWAT_SOIL_WATER_RMSE
        return d

    @classmethod
    def write_fake_data(cls, root, seed: int = 0) -> None:
        write_fake_seattle(Path(root) / cls.folder / "seattle-weather.csv", seed)


def _stats_summary(stats: dict) -> dict:
    return {k: np.round(v, 4).tolist() for k, v in stats.items()}
