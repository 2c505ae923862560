"""CryptoAlpha158 / CryptoAlpha360: feature names and counts, values against hand computation, no look-ahead.

Provider directories are written here directly in Qlib's binary format (float32 LE, first value = start
index into the calendar) so the test controls every bar; Qlib runs in subprocesses (qlib.init is global).
"""

from __future__ import annotations

import pickle
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from qlib_crypto.data import crypto_label, get_feature_config, get_raw_window_config
from qlib_crypto.errors import ConfigError

ALPHA158_ROLLING = (
    "ROC MA STD BETA RSQR RESI MAX MIN QTLU QTLD RANK RSV IMAX IMIN IMXD CORR CORD CNTP CNTN CNTD "
    "SUMP SUMN SUMD VMA VSTD WVMA VSUMP VSUMN VSUMD"
).split()
KBAR = "KMID KLEN KMID2 KUP KUP2 KLOW KLOW2 KSFT KSFT2".split()
PRICE = ["OPEN0", "HIGH0", "LOW0", "VWAP0"]
INSTRUMENTS = ["BTC-USDT", "ETH-USDT", "SOL-USDT-SWAP", "DOGE-USDT-SWAP"]


# ----------------------------------------------------------------------------------------------------------
# tiny provider writer (Qlib .bin format), shared with test_workflow_e2e.py
# ----------------------------------------------------------------------------------------------------------
def synthetic_bars(instruments=INSTRUMENTS, n_bars=480, start="2023-01-01", seed=0) -> dict[str, pd.DataFrame]:
    """Hourly random-walk bars; swaps carry a funding rate every 8 hours (NaN elsewhere). float32-exact."""
    rng = np.random.default_rng(seed)
    idx = pd.date_range(start, periods=n_bars, freq="h")
    market = rng.normal(0, 0.004, n_bars)
    out = {}
    for i, inst in enumerate(instruments):
        close = 100.0 * (i + 1) * np.exp(np.cumsum(market + rng.normal(0, 0.006, n_bars)))
        open_ = np.r_[close[0], close[:-1]]
        high = np.maximum(open_, close) * (1 + rng.uniform(0, 0.003, n_bars))
        low = np.minimum(open_, close) * (1 - rng.uniform(0, 0.003, n_bars))
        volume = rng.lognormal(5, 0.5, n_bars)
        df = pd.DataFrame(
            {"open": open_, "high": high, "low": low, "close": close, "volume": volume, "amount": volume * close},
            index=idx,
        )
        if inst.endswith("-SWAP"):
            rate = np.full(n_bars, np.nan)
            settle = idx.hour % 8 == 0
            rate[settle] = rng.normal(1e-4, 1e-4, settle.sum())
            df["funding_rate"] = rate
        out[inst] = df.astype("float32").astype("float64")  # the provider stores float32
    return out


def daily_bars(bars: dict[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
    out = {}
    for inst, df in bars.items():
        g = df.resample("D")
        day = pd.DataFrame(
            {
                "open": g["open"].first(),
                "high": g["high"].max(),
                "low": g["low"].min(),
                "close": g["close"].last(),
                "volume": g["volume"].sum(),
                "amount": g["amount"].sum(),
            }
        )
        if "funding_rate" in df:
            day["funding_rate"] = g["funding_rate"].sum()
        out[inst] = day.astype("float32").astype("float64")
    return out


def write_provider(root: Path, bars: dict[str, pd.DataFrame], freq: str) -> Path:
    """Write a Qlib provider directory (calendar, `all` market, features incl. vwap/change/factor)."""
    root = Path(root)
    cal = pd.DatetimeIndex(sorted(set().union(*[set(df.index) for df in bars.values()])))
    fmt = "%Y-%m-%d" if freq == "day" else "%Y-%m-%d %H:%M:%S"
    (root / "calendars").mkdir(parents=True, exist_ok=True)
    (root / "calendars" / f"{freq}.txt").write_text("\n".join(cal.strftime(fmt)) + "\n")
    future = cal.append(pd.DatetimeIndex([cal[-1] + (cal[1] - cal[0])]))
    (root / "calendars" / f"{freq}_future.txt").write_text("\n".join(future.strftime(fmt)) + "\n")
    (root / "instruments").mkdir(exist_ok=True)
    lines = []
    for inst, df in bars.items():
        lines.append(f"{inst}\t{df.index[0].strftime(fmt)}\t{df.index[-1].strftime(fmt)}")
        fdir = root / "features" / inst.lower()
        fdir.mkdir(parents=True, exist_ok=True)
        start = cal.get_loc(df.index[0])
        cols = {c: df[c] for c in df.columns}
        cols["vwap"] = df["amount"] / df["volume"]
        cols["change"] = df["close"] / df["close"].shift(1) - 1
        cols["factor"] = pd.Series(1.0, index=df.index)
        for name, series in cols.items():
            np.concatenate([[start], series.to_numpy(dtype=float)]).astype("<f4").tofile(fdir / f"{name}.{freq}.bin")
    (root / "instruments" / "all.txt").write_text("\n".join(lines) + "\n")
    return root


LOAD_SCRIPT = textwrap.dedent(
    """
    import pickle, sys
    import qlib
    provider, out, freq, start, end, fit_end = sys.argv[1:7]
    qlib.init(provider_uri={freq: provider}, region="us", trade_unit=None, limit_threshold=None,
              deal_price="close", kernels=1)
    from qlib_crypto.data import CryptoAlpha158, CryptoAlpha360
    cols = ["feature", "label"]
    plain = CryptoAlpha158(instruments="all", start_time=start, end_time=end, freq=freq,
                           infer_processors=[], learn_processors=[])
    default = CryptoAlpha158(instruments="all", start_time=start, end_time=end, freq=freq,
                             fit_start_time=start, fit_end_time=fit_end)
    raw = CryptoAlpha360(instruments="all", start_time=start, end_time=end, freq=freq, n_bars=5,
                         infer_processors=[], learn_processors=[])
    result = {
        "plain": plain.fetch(col_set=cols, data_key="infer"),
        "default_infer": default.fetch(col_set="feature", data_key="infer"),
        "default_learn": default.fetch(col_set=cols, data_key="learn"),
        "raw360": raw.fetch(col_set=cols, data_key="infer"),
        "feature_names": default.feature_names,
    }
    with open(out, "wb") as fh:
        pickle.dump(result, fh)
    """
)


def load_handlers(provider: Path, out: Path, freq: str, start: str, end: str, fit_end: str) -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", LOAD_SCRIPT, str(provider), str(out), freq, start, end, fit_end],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(out, "rb") as fh:
        return pickle.load(fh)


# ----------------------------------------------------------------------------------------------------------
# names and counts (no Qlib needed)
# ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "freq, windows, funding_windows",
    [("60min", [3, 6, 12, 24, 72, 168], [8, 24, 72, 168]), ("day", [3, 5, 10, 20, 30, 60], [1, 3, 7, 30])],
)
def test_feature_names_and_counts_per_frequency(freq, windows, funding_windows):
    exprs, names = get_feature_config(freq)
    # 9 k-bar + 4 price + 29 Alpha158 rolling families + 6 amount + 4 market families per window + 2 funding
    assert len(names) == 9 + 4 + (29 + 6 + 4) * len(windows) + 2 * len(funding_windows)
    assert len(exprs) == len(names) == len(set(names))
    assert names[:13] == KBAR + PRICE
    for family in ALPHA158_ROLLING:
        for d in windows:
            assert f"{family}{d}" in names
    for family in ["AMA", "ASTD", "ASUMD", "LAMT", "AVWAP", "ILLIQ", "XRET", "XRNK", "XVOL", "XAMT"]:
        assert [n for n in names if n.rstrip("0123456789") == family] == [f"{family}{d}" for d in windows]
    assert [n for n in names if n.startswith("FUND")] == [f"FUND{d}" for d in funding_windows] + [
        f"FUNDSUM{d}" for d in funding_windows
    ]
    # every quote-volume feature reads $amount, every funding feature reads $funding_rate
    for e, n in zip(exprs, names):
        if n.startswith(("AMA", "ASTD", "ASUMD", "LAMT", "ILLIQ", "XAMT")):
            assert "$amount" in e
        if n.startswith("FUND"):
            assert "$funding_rate" in e
        assert "Ref($close, -" not in e  # no feature reads a future bar


def test_feature_overrides_from_yaml_kwargs():
    _, names = get_feature_config("60min", windows=[5, 10])
    assert len(names) == 9 + 4 + (29 + 6 + 4) * 2 + 2 * 4
    assert "ROC5" in names and "ROC3" not in names and "FUND8" in names  # funding keeps its own windows
    _, names = get_feature_config("60min", include=["KBAR", "ROC", "FUND"])
    assert names == KBAR + [f"ROC{d}" for d in [3, 6, 12, 24, 72, 168]] + [f"FUND{d}" for d in [8, 24, 72, 168]]
    _, names = get_feature_config("day", exclude=["CORR", "CORD", "PRICE"])
    assert not any(n.startswith(("CORR", "CORD")) or n in PRICE for n in names)
    assert len(names) == 9 + (27 + 6 + 4) * 6 + 2 * 4
    conf = {"kbar": {}, "rolling": {"windows": [2, 4], "include": ["MA", "STD"]}, "funding": {"windows": [8]}}
    exprs, names = get_feature_config("60min", conf)
    assert names == KBAR + ["MA2", "MA4", "STD2", "STD4", "FUND8", "FUNDSUM8"]
    assert exprs[9] == "Mean($close, 2)/$close"
    with pytest.raises(ConfigError, match="NOPE"):
        get_feature_config("60min", include=["NOPE"])
    with pytest.raises(ConfigError, match="window"):
        get_feature_config("60min", windows=[0])
    with pytest.raises(ConfigError, match="bogus"):
        get_feature_config("60min", {"bogus": {}})


def test_raw_window_names_and_label():
    exprs, names = get_raw_window_config("60min", n_bars=3)
    assert len(names) == 7 * 3
    assert names[:3] == ["CLOSE2", "CLOSE1", "CLOSE0"]
    assert exprs[names.index("VOLUME1")] == "Ref($volume, 1)/($volume+1e-12)"
    assert exprs[names.index("HIGH0")] == "$high/$close"
    assert len(get_raw_window_config("day")[1]) == 7 * 60
    assert crypto_label() == (["Ref($close, -2)/Ref($close, -1) - 1"], ["LABEL0"])
    assert crypto_label(3)[0] == ["Ref($close, -4)/Ref($close, -1) - 1"]
    with pytest.raises(ConfigError, match="horizon"):
        crypto_label(0)


# ----------------------------------------------------------------------------------------------------------
# values (Qlib in a subprocess)
# ----------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    """Original provider and a copy where every bar after T is changed; handlers loaded on both."""
    tmp = tmp_path_factory.mktemp("handlers")
    bars = synthetic_bars()
    original = write_provider(tmp / "orig" / "60min", bars, "60min")
    t_cut = pd.Timestamp("2023-01-15 12:00:00")
    changed = tmp / "changed" / "60min"
    shutil.copytree(original, changed)
    cal = pd.DatetimeIndex(pd.read_csv(changed / "calendars" / "60min.txt", header=None)[0])
    rng = np.random.default_rng(42)
    for path in (changed / "features").glob("*/*.bin"):
        values = np.fromfile(path, dtype="<f4")
        start = int(values[0])
        times = cal[start : start + len(values) - 1]
        after = np.asarray(times > t_cut)
        data = values[1:]
        data[after] = data[after] * rng.uniform(0.5, 1.5, after.sum()).astype("f4")
        values.tofile(path)
    args = ("60min", "2023-01-01", "2023-01-20 23:00:00", "2023-01-10 23:00:00")
    return {
        "bars": bars,
        "t_cut": t_cut,
        "orig": load_handlers(original, tmp / "orig.pkl", *args),
        "changed": load_handlers(changed, tmp / "changed.pkl", *args),
    }


def test_features_match_hand_computation(loaded):
    bars, plain = loaded["bars"], loaded["orig"]["plain"]
    t = pd.Timestamp("2023-01-12 07:00:00")
    closes = pd.DataFrame({k: v["close"] for k, v in bars.items()})
    btc = bars["BTC-USDT"]
    row = plain.xs(t, level="datetime").loc["BTC-USDT"]
    i = btc.index.get_loc(t)
    o, h, lo, c = btc["open"].iloc[i], btc["high"].iloc[i], btc["low"].iloc[i], btc["close"].iloc[i]
    assert row[("feature", "KMID")] == pytest.approx((c - o) / o, rel=1e-4, abs=1e-7)
    assert row[("feature", "KLEN")] == pytest.approx((h - lo) / o, rel=1e-4)
    assert row[("feature", "ROC24")] == pytest.approx(btc["close"].iloc[i - 24] / c, rel=1e-5)
    assert row[("feature", "MA6")] == pytest.approx(btc["close"].iloc[i - 5 : i + 1].mean() / c, rel=1e-5)
    assert row[("feature", "MAX12")] == pytest.approx(btc["high"].iloc[i - 11 : i + 1].max() / c, rel=1e-5)
    ups = (btc["close"].diff().iloc[i - 23 : i + 1] > 0).mean()
    assert row[("feature", "CNTP24")] == pytest.approx(ups, abs=1e-6)
    assert row[("feature", "AMA24")] == pytest.approx(
        btc["amount"].iloc[i - 23 : i + 1].mean() / btc["amount"].iloc[i], rel=1e-4
    )
    # label: close 2 bars ahead over close 1 bar ahead, minus 1
    assert row[("label", "LABEL0")] == pytest.approx(
        btc["close"].iloc[i + 2] / btc["close"].iloc[i + 1] - 1, rel=1e-4, abs=1e-7
    )
    # market-relative: 24-bar return minus the mean 24-bar return of all instruments at t
    ret24 = closes.iloc[i] / closes.iloc[i - 24] - 1
    assert row[("feature", "XRET24")] == pytest.approx(ret24["BTC-USDT"] - ret24.mean(), rel=1e-3, abs=1e-6)
    assert row[("feature", "XRNK24")] == pytest.approx(ret24.rank(pct=True)["BTC-USDT"] - 0.5, abs=1e-6)
    amt24 = pd.DataFrame({k: v["amount"] for k, v in bars.items()}).iloc[i - 23 : i + 1].mean()
    assert row[("feature", "XAMT24")] == pytest.approx(amt24["BTC-USDT"] / amt24.sum(), rel=1e-4)
    cross = plain.xs(t, level="datetime")
    assert cross[("feature", "XRET24")].sum() == pytest.approx(0.0, abs=1e-6)
    # funding: mean and sum of the rates settled in the window, NaN for spot
    sol = bars["SOL-USDT-SWAP"]["funding_rate"]
    sol_row = cross.loc["SOL-USDT-SWAP"]
    assert sol_row[("feature", "FUND8")] == pytest.approx(sol.iloc[i - 7 : i + 1].dropna().iloc[-1], rel=1e-4)
    assert sol_row[("feature", "FUNDSUM72")] == pytest.approx(sol.iloc[i - 71 : i + 1].sum(), rel=1e-4)
    assert np.isnan(row[("feature", "FUND8")])


def test_default_processors(loaded):
    infer = loaded["orig"]["default_infer"]
    learn = loaded["orig"]["default_learn"]
    assert list(infer.columns) == loaded["orig"]["feature_names"]
    assert not infer.isna().any().any()  # Fillna
    assert infer.abs().max().max() <= 3.0 + 1e-6  # RobustZScoreNorm clips
    assert np.isfinite(learn["label"]).all().all()  # DropnaLabel
    # label z-scored across instruments per bar: mean 0, sample std 1
    per_bar = learn[("label", "LABEL0")].groupby(level="datetime")
    assert per_bar.mean().abs().max() < 1e-5
    assert (per_bar.std() - 1).abs().max() < 1e-4
    raw = loaded["orig"]["raw360"]
    assert raw.shape[1] == 7 * 5 + 1
    assert np.allclose(raw[("feature", "CLOSE0")].dropna(), 1.0)


def test_no_look_ahead(loaded):
    t_cut = loaded["t_cut"]
    for key in ("plain", "default_infer", "raw360"):
        orig, changed = loaded["orig"][key], loaded["changed"][key]
        feats_o = orig["feature"] if "feature" in orig.columns.get_level_values(0) else orig
        feats_c = changed["feature"] if "feature" in changed.columns.get_level_values(0) else changed
        before = feats_o.index.get_level_values("datetime") <= t_cut
        pd.testing.assert_frame_equal(feats_o[before], feats_c.loc[feats_o.index[before]], check_exact=True)
        # the change is real: features after T differ
        after = ~before
        assert not np.allclose(feats_o[after].to_numpy(), feats_c.loc[feats_o.index[after]].to_numpy(), equal_nan=True)
    # the label at T reads bars after T, so it must change (shows the cut is at T)
    lab_o = loaded["orig"]["plain"][("label", "LABEL0")].xs(t_cut, level="datetime")
    lab_c = loaded["changed"]["plain"][("label", "LABEL0")].xs(t_cut, level="datetime")
    assert not np.allclose(lab_o, lab_c)


def test_label_normalisation_choice():
    from qlib_crypto.data import default_learn_processors

    assert [p["class"] for p in default_learn_processors()] == ["DropnaLabel", "CSZScoreLabel"]
    assert default_learn_processors("rank")[1] == {"class": "CSRankNorm", "kwargs": {"fields_group": "label"}}
    with pytest.raises(ConfigError, match="median"):
        default_learn_processors("median")


def test_data_loaders_carry_the_feature_sets():
    from qlib_crypto.data import CryptoAlpha158DL, CryptoAlpha360DL

    label = (["Ref($close, -2)/Ref($close, -1) - 1"], ["LABEL0"])
    dl = CryptoAlpha158DL(freq="day", include=["ROC", "FUND"], config={"label": label})
    assert dl.fields["feature"][1] == [f"ROC{d}" for d in [3, 5, 10, 20, 30, 60]] + [f"FUND{d}" for d in [1, 3, 7, 30]]
    assert dl.fields["feature"][0][0] == "Ref($close, 3)/$close"
    assert dl.fields["label"] == label
    assert len(CryptoAlpha360DL(freq="60min", n_bars=4).fields["feature"][1]) == 7 * 4
