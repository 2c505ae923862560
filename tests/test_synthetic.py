"""The synthetic market: determinism, stylised facts measured with independent statistics, funding, errors."""

from __future__ import annotations

import functools

import numpy as np
import pandas as pd
import pytest

from qlib_crypto.errors import ConfigError
from qlib_crypto.sources.base import BarSource
from qlib_crypto.sources.synthetic import BLOCK_BARS, ORIGIN_MS, SyntheticSource, default_instruments
from qlib_crypto.timeframes import TIMEFRAMES

MS_H = 3_600_000


def ms(text: str) -> int:
    return int(pd.Timestamp(text, tz="UTC").value // 1_000_000)


@pytest.fixture(scope="module")
def market() -> SyntheticSource:
    return SyntheticSource(20, seed=7)


@pytest.fixture(scope="module")
def year_1h(market: SyntheticSource) -> dict[str, pd.DataFrame]:
    """One year of 1h bars for six instruments listed before the window."""
    names = ["BTC-USDT", "ETH-USDT-SWAP", "SOL-USDT", "XRP-USDT-SWAP", "DOGE-USDT", "ADA-USDT-SWAP"]
    return {n: market.bars(n, "1h", "2023-01-01", "2024-01-01") for n in names}


def log_returns(bars: pd.DataFrame) -> pd.Series:
    """Close-to-close log returns over consecutive bars only (gaps dropped)."""
    full = bars["close"].asfreq("1h")
    return np.log(full).diff().dropna()


# ----------------------------------------------------------------------------- naming and interface
def test_naming_rule_and_interface():
    assert default_instruments(5) == ["BTC-USDT", "ETH-USDT-SWAP", "SOL-USDT", "XRP-USDT-SWAP", "DOGE-USDT"]
    names = default_instruments(70)
    assert len(set(names)) == 70 and names[69] == "SYN069-USDT-SWAP"
    src = SyntheticSource(["OP-USDT-SWAP", "BTC-USDT"])
    assert isinstance(src, BarSource) and src.name == "synthetic"
    assert src.list_instruments() == ["OP-USDT-SWAP", "BTC-USDT"]
    assert SyntheticSource("BTC-USDT,ETH-USDT").list_instruments() == ["BTC-USDT", "ETH-USDT"]


def test_bad_arguments_raise_clear_errors(market):
    with pytest.raises(ConfigError, match="ETH-USDT-SWAP"):  # close match suggested
        list(market.fetch_bars("ETH-USDT-SWP", "1h", ms("2023-01-01"), ms("2023-01-02")))
    with pytest.raises(ConfigError, match="unknown timeframe"):
        list(market.fetch_bars("BTC-USDT", "7m", ms("2023-01-01"), ms("2023-01-02")))
    with pytest.raises(ConfigError, match="not before"):
        list(market.fetch_bars("BTC-USDT", "1h", ms("2023-01-02"), ms("2023-01-01")))
    with pytest.raises(ConfigError, match="reversal_strenght"):
        SyntheticSource(3, reversal_strenght=0.1)
    with pytest.raises(ConfigError, match="seed"):
        SyntheticSource(3, seed=-1)
    with pytest.raises(ConfigError, match="BTCUSDT"):
        SyntheticSource(["BTCUSDT"])


# ----------------------------------------------------------------------------- determinism
def test_same_seed_same_bars_other_seed_other_bars():
    a = SyntheticSource(4, seed=3).bars("SOL-USDT", "15m", "2022-05-01", "2022-05-03")
    b = SyntheticSource(4, seed=3).bars("SOL-USDT", "15m", "2022-05-01", "2022-05-03")
    c = SyntheticSource(4, seed=4).bars("SOL-USDT", "15m", "2022-05-01", "2022-05-03")
    pd.testing.assert_frame_equal(a, b)
    assert len(a) > 150
    common = a.index.intersection(c.index)
    assert not np.allclose(a.loc[common, "close"], c.loc[common, "close"])


def test_chunked_equals_whole_across_a_block_boundary():
    # 1m block 1 starts at ORIGIN + 65536 minutes; fetch a window around it whole and in odd chunks
    boundary = ORIGIN_MS + BLOCK_BARS * 60_000
    start, end = boundary - 700 * 60_000, boundary + 900 * 60_000
    whole_src = SyntheticSource(["ETH-USDT-SWAP"], seed=7)
    whole = pd.concat(list(whole_src.fetch_bars("ETH-USDT-SWAP", "1m", start, end)), ignore_index=True)
    cuts = [start, start + 37 * 60_000 + 12_345, boundary - 60_000, boundary + 1, boundary + 333 * 60_000, end]
    parts = []
    for lo, hi in zip(cuts[:-1], cuts[1:]):
        fresh = SyntheticSource(["ETH-USDT-SWAP"], seed=7)  # no cache shared with the whole fetch
        parts.extend(fresh.fetch_bars("ETH-USDT-SWAP", "1m", lo, hi))
    chunked = pd.concat(parts, ignore_index=True)
    pd.testing.assert_frame_equal(whole, chunked)
    # every bar of the window is there except the few missing ones, and the path is continuous at the boundary
    assert 0.99 * 1600 <= len(whole) <= 1600
    closes = whole.set_index("datetime")["close"]
    step = np.abs(np.diff(np.log(closes.to_numpy())))
    assert step.max() < 20 * np.median(step)


def test_subset_of_instruments_gives_same_bars_and_funding(market):
    small = SyntheticSource(["OP-USDT-SWAP", "BTC-USDT"], seed=7)
    for inst in ["OP-USDT-SWAP", "BTC-USDT"]:
        pd.testing.assert_frame_equal(
            market.bars(inst, "4h", "2023-01-01", "2023-06-01"), small.bars(inst, "4h", "2023-01-01", "2023-06-01")
        )
    pd.testing.assert_frame_equal(
        market.fetch_funding("OP-USDT-SWAP", ms("2023-01-01"), ms("2023-02-01")),
        small.fetch_funding("OP-USDT-SWAP", ms("2023-01-01"), ms("2023-02-01")),
    )


@pytest.mark.parametrize("timeframe", sorted(TIMEFRAMES))
def test_every_timeframe_gives_aligned_valid_bars(market, timeframe):
    tf = TIMEFRAMES[timeframe]
    start = ms("2023-03-01")
    end = start + 200 * tf.ms
    chunks = list(market.fetch_bars("ETH-USDT-SWAP", timeframe, start, end))
    bars = pd.concat(chunks, ignore_index=True)
    t = (bars["datetime"] - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(milliseconds=1)
    assert (t % tf.ms == 0).all() and t.min() >= start and t.max() < end
    assert t.is_monotonic_increasing and t.is_unique
    assert 190 <= len(bars) <= 200
    assert list(bars.columns) == ["datetime", "open", "high", "low", "close", "volume", "amount"]
    assert (bars[["open", "high", "low", "close", "volume", "amount"]].dtypes == "float64").all()


# ----------------------------------------------------------------------------- stylised facts
def test_ohlc_valid_and_amount_is_volume_times_typical_price(year_1h):
    for bars in year_1h.values():
        o, h, l, c = (bars[k].to_numpy() for k in ("open", "high", "low", "close"))
        assert (l > 0).all() and (bars["volume"] > 0).all()
        assert (l <= np.minimum(o, c)).all() and (h >= np.maximum(o, c)).all()
        typical = (h + l + c) / 3.0
        np.testing.assert_allclose(bars["amount"].to_numpy(), bars["volume"].to_numpy() * typical, rtol=1e-12)


def test_fat_tails_and_volatility_clustering(year_1h):
    for name, bars in year_1h.items():
        r = log_returns(bars).to_numpy()
        d = r - r.mean()
        kurtosis = (d**4).mean() / (d**2).mean() ** 2  # Pearson kurtosis, normal = 3
        assert kurtosis > 4.0, (name, kurtosis)
        a = np.abs(d)
        ac1 = np.corrcoef(a[:-1], a[1:])[0, 1]
        ac24 = np.corrcoef(a[:-24], a[24:])[0, 1]
        assert ac1 > 0.1 and ac24 > 0.05, (name, ac1, ac24)
        # raw returns themselves are nearly uncorrelated (a weak planted reversal only)
        assert abs(np.corrcoef(d[:-1], d[1:])[0, 1]) < 0.1


def test_common_market_factor_with_positive_betas(year_1h):
    rets = pd.DataFrame({n: log_returns(b) for n, b in year_1h.items()}).dropna()
    market_ret = rets.mean(axis=1).to_numpy()
    betas = [np.cov(rets[n], market_ret)[0, 1] / market_ret.var(ddof=1) for n in rets]
    assert np.mean(betas) > 0.5 and min(betas) > 0.2
    corr = rets.corr().to_numpy()
    assert corr[np.triu_indices(len(corr), 1)].mean() > 0.2


def test_volume_rises_with_volatility_and_weekends_are_quieter(year_1h):
    for name, bars in year_1h.items():
        r = log_returns(bars)
        vol = bars["volume"].reindex(r.index)
        assert np.corrcoef(np.log(vol), np.abs(r))[0, 1] > 0.1, name
        weekend = bars.index.dayofweek >= 5
        assert bars["amount"][weekend].mean() < 0.9 * bars["amount"][~weekend].mean(), name
        assert np.abs(r[r.index.dayofweek >= 5]).mean() < np.abs(r[r.index.dayofweek < 5]).mean(), name


def test_missing_bars_exist_but_are_few(year_1h):
    expected = 365 * 24
    missing = [expected - len(b) for b in year_1h.values()]
    assert sum(missing) > 0
    assert max(missing) < 0.005 * expected


def test_later_listings_start_later(market):
    meta = market.instrument_meta().set_index("instId")
    late = meta.index[meta["listTime"] > pd.Timestamp(ORIGIN_MS, unit="ms", tz="UTC")]
    early = meta.index[meta["listTime"] <= pd.Timestamp(ORIGIN_MS, unit="ms", tz="UTC")]
    assert len(late) >= 1 and "BTC-USDT" in early
    for inst in late:
        listed = meta.loc[inst, "listTime"]
        window_start = listed - pd.Timedelta(days=10)
        bars = market.bars(inst, "1h", window_start, listed + pd.Timedelta(days=10))
        first = bars.index[0]
        assert listed <= first < listed + pd.Timedelta(hours=3)
    first_btc = market.bars("BTC-USDT", "1d", "2019-01-01", "2020-03-01").index[0]
    assert first_btc == pd.Timestamp("2020-01-01", tz="UTC")


def test_instrument_metadata_columns(market):
    meta = market.instrument_meta()
    for col in [
        "instId",
        "instType",
        "baseCcy",
        "quoteCcy",
        "settleCcy",
        "ctVal",
        "ctMult",
        "tickSz",
        "lotSz",
        "minSz",
        "maxMktSz",
        "listTime",
        "state",
    ]:
        assert col in meta.columns
    assert list(meta["instId"]) == market.list_instruments()
    swaps = meta[meta["instId"].str.endswith("-SWAP")]
    assert set(swaps["instType"]) == {"SWAP"} and (swaps["ctVal"] > 0).all() and (swaps["settleCcy"] == "USDT").all()
    spots = meta[~meta["instId"].str.endswith("-SWAP")]
    assert set(spots["instType"]) == {"SPOT"} and (spots["baseCcy"] + "-" + spots["quoteCcy"] == spots["instId"]).all()
    assert (meta[["tickSz", "lotSz", "minSz"]] > 0).all().all()


# ----------------------------------------------------------------------------- funding
def test_funding_only_at_8h_settlements_for_swaps(market):
    assert market.fetch_funding("BTC-USDT", ms("2023-01-01"), ms("2023-02-01")) is None
    f = market.fetch_funding("ETH-USDT-SWAP", ms("2023-01-01T03:00"), ms("2023-07-01"))
    times = pd.DatetimeIndex(f["funding_time"])
    assert set(times.hour) == {0, 8, 16} and (times.minute == 0).all() and (times.second == 0).all()
    # every settlement in [2023-01-01 03:00, 2023-07-01): first is 08:00 on Jan 1, 3 per day after
    days = (pd.Timestamp("2023-07-01") - pd.Timestamp("2023-01-01")).days
    assert len(f) == 3 * days - 1 and times[0] == pd.Timestamp("2023-01-01T08:00", tz="UTC")
    rate = f["funding_rate"].to_numpy()
    assert (np.abs(rate) < 0.0075).all() and np.abs(rate).mean() < 0.001
    assert (rate > 0).mean() > 0.6  # mostly positive
    ar1 = np.corrcoef(rate[:-1], rate[1:])[0, 1]
    assert 0.3 < ar1 < 0.99  # persistent yet mean-reverting


def test_funding_relates_to_recent_returns(market):
    f = market.fetch_funding("XRP-USDT-SWAP", ms("2022-01-01"), ms("2023-01-01")).set_index("funding_time")
    closes = market.bars("XRP-USDT-SWAP", "1h", "2021-12-31", "2023-01-01")["close"]
    # log return over the 8 hours before each settlement, from 1h closes (bar opening 1h before settlement)
    last = closes.reindex(f.index - pd.Timedelta(hours=1))
    prev = closes.reindex(f.index - pd.Timedelta(hours=9))
    ret8 = pd.Series(np.log(last.to_numpy() / prev.to_numpy()), index=f.index)
    innov = f["funding_rate"] - 0.85 * f["funding_rate"].shift(1)
    ok = ret8.notna() & innov.notna()
    assert np.corrcoef(ret8[ok], innov[ok])[0, 1] > 0.3


# ----------------------------------------------------------------------------- planted structure
# The project's research label has one bar of execution delay: at bar t it is the return of bar t+2,
# close[t+2] / close[t+1] - 1, predicted from bars up to t. The planted reversal must reach that far.
def _mean_rank_ic(signal: np.ndarray, label: np.ndarray) -> float:
    """Spearman per row (bar) across columns (instruments), averaged; NaN cells dropped, rows with < 8 left skipped."""
    ics = []
    for s, y in zip(signal, label):
        ok = ~(np.isnan(s) | np.isnan(y))
        if ok.sum() < 8:
            continue
        rs, ry = s[ok].argsort().argsort(), y[ok].argsort().argsort()
        ics.append(np.corrcoef(rs, ry)[0, 1])
    return float(np.mean(ics))


@functools.lru_cache(maxsize=2)
def _panel(kind: str) -> dict[str, object]:
    """Six months of 1h closes and volumes (16 instruments, seed 5) with and without the planted reversal."""
    params = {} if kind == "planted" else {"reversal_strength": 0.0}
    src = SyntheticSource(16, seed=5, **params)
    frames = {n: src.bars(n, "1h", "2021-01-01", "2021-07-01") for n in src.list_instruments()}
    closes = pd.DataFrame({n: f["close"] for n, f in frames.items()}).asfreq("1h")
    volumes = pd.DataFrame({n: f["volume"] for n, f in frames.items()}).asfreq("1h")
    keep = closes.notna().mean() > 0.95  # instruments listed before the window
    assert keep.sum() >= 10
    closes, volumes = closes.loc[:, keep], volumes.loc[:, keep]
    r = np.log(closes).diff()
    z = (r / r.rolling(24, min_periods=12).std()).clip(-4, 4)  # return in units of recent volatility
    log_v = np.log(volumes)
    rel_volume = log_v - log_v.rolling(24, min_periods=12).mean()  # volume versus its own last day
    return {
        "kind": kind,
        "z": z,
        "quiet": (rel_volume < 0).astype(float).where(rel_volume.notna()),
        "rel_volume": rel_volume,
        "next": closes.shift(-1) / closes - 1.0,
        "delayed": closes.shift(-2) / closes.shift(-1) - 1.0,
    }


@pytest.fixture(params=["planted", "control"])
def panel_1h(request) -> dict[str, object]:
    return _panel(request.param)


def test_quiet_moves_revert_into_the_delayed_label(panel_1h):
    # statistic: minus the sum of the standardised returns of the last 3 bars that traded on below-usual volume
    zq = panel_1h["z"] * panel_1h["quiet"]
    signal = -(zq + zq.shift(1) + zq.shift(2))
    ic = _mean_rank_ic(signal.to_numpy(), panel_1h["delayed"].to_numpy())
    if panel_1h["kind"] == "planted":
        assert 0.012 < ic < 0.08, ic  # weak (a few percent), yet there
    else:
        assert abs(ic) < 0.012, ic


def test_one_bar_reversal_persists_beyond_the_next_bar(panel_1h):
    signal = -panel_1h["z"].to_numpy()  # the last bar's loser gains a little, also one bar later
    ic_next = _mean_rank_ic(signal, panel_1h["next"].to_numpy())
    ic_delayed = _mean_rank_ic(signal, panel_1h["delayed"].to_numpy())
    if panel_1h["kind"] == "planted":
        assert 0.015 < ic_next < 0.09, ic_next
        # a reversal that died after one bar (memory decay 0.3) would leave about 0.3 x ic_next here
        assert ic_delayed > 0.5 * ic_next, (ic_next, ic_delayed)
    else:
        assert abs(ic_next) < 0.012 and abs(ic_delayed) < 0.012, (ic_next, ic_delayed)


def test_delayed_reversal_is_stronger_after_low_volume_moves():
    panel_1h = _panel("planted")
    rel = panel_1h["rel_volume"]
    rel = rel.sub(rel.mean(axis=1), axis=0)  # relative volume versus the other instruments at the same bar
    y = panel_1h["delayed"]
    y = y.sub(y.mean(axis=1), axis=0)
    df = pd.DataFrame({"z": panel_1h["z"].stack(), "rel": rel.stack(), "y": y.stack()}).dropna()
    busy = df["rel"] > df["rel"].quantile(0.7)

    def reversal(d: pd.DataFrame) -> float:
        return float(np.corrcoef(-d["z"], d["y"].clip(-0.05, 0.05))[0, 1])

    assert reversal(df[~busy]) > 0.012
    assert reversal(df[~busy]) > reversal(df[busy]) + 0.01


@pytest.mark.parametrize("n", [0, 1, 2, 7, 5000])
@pytest.mark.parametrize("phi", [0.0, 0.5, 0.9999, -0.3, 1.0])
@pytest.mark.parametrize("b0", [1.0, 0.37, 1e-300, -2.5])
def test_ar1_filter_is_scipy_lfilter_bit_for_bit(n, phi, b0):
    """The synthetic market's AR(1) filter (no scipy.signal import) gives lfilter's exact bits."""
    from scipy.signal import lfilter

    from qlib_crypto.sources._filters import ar1_filter

    rng = np.random.default_rng(n * 7 + 1)
    x = rng.standard_normal(n) * 3.0
    if n >= 7:
        x[2], x[3], x[4], x[5], x[6] = np.nan, 0.0, -0.0, np.inf, 1e308
    want = lfilter([b0], [1.0, -phi], x)
    got = ar1_filter(b0, phi, x)
    assert got.dtype == want.dtype and got.shape == want.shape
    assert np.array_equal(np.isnan(got), np.isnan(want))
    assert np.array_equal(
        np.where(np.isnan(want), 0.0, want).view(np.int64), np.where(np.isnan(got), 0.0, got).view(np.int64)
    )
