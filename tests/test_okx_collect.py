"""OKX collection against the loopback simulator: exact bars under faults, boundaries, resume, idempotence."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from okx_sim import ALL_FAULT_KINDS, BARS, to_ms

from qlib_crypto import store
from qlib_crypto.errors import CollectionIncomplete, ConfigError
from qlib_crypto.sources.collector import collect
from qlib_crypto.sources.okx import OkxSource, RetryPolicy

# shortened windows (same ratios as OKX) so the tests run fast; the source uses the same budgets
SIM_LIMITS = {
    "market/history-candles": (20, 0.5, None),
    "market/candles": (40, 0.5, None),
    "public/funding-rate-history": (10, 0.5, "instId"),
    "public/instruments": (20, 0.5, "instType"),
}
SRC_LIMITS = {
    "history-candles": (20, 0.5, None),
    "candles": (40, 0.5, None),
    "funding-rate-history": (10, 0.5, "instId"),
    "instruments": (20, 0.5, "instType"),
}
NOW = "2024-03-01T12:34:56.789Z"


def fast_source(sim, **kw) -> OkxSource:
    kw.setdefault("retry", RetryPolicy(max_retries=12, base_s=0.01, cap_s=0.05))
    return OkxSource(api_url=sim.url, timeout_s=0.25, limits=SRC_LIMITS, **kw)


def stored_vs_expected(store_dir, sim, inst_id: str, tf: str, bar: str, start: str, end: str):
    got = store.read_bars(store_dir, inst_id, tf)
    exp = sim.expected_bars(inst_id, bar, to_ms(start), to_ms(end))
    return got, exp


def epoch_ms(index: pd.DatetimeIndex) -> np.ndarray:
    return np.asarray((index - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(milliseconds=1), dtype=np.int64)


def assert_exact(got: pd.DataFrame, exp: pd.DataFrame, swap: bool) -> None:
    got_ts = epoch_ms(got.index)
    np.testing.assert_array_equal(got_ts, exp["ts"].to_numpy())
    for ours, theirs in [("open", "o"), ("high", "h"), ("low", "l"), ("close", "c"), ("amount", "volCcyQuote")]:
        np.testing.assert_array_equal(got[ours].to_numpy(), exp[theirs].to_numpy(), err_msg=ours)
    # volume in base currency: spot `vol`, swap `volCcy` (swap `vol` is in contracts)
    np.testing.assert_array_equal(got["volume"].to_numpy(), exp["volCcy" if swap else "vol"].to_numpy())


def file_digests(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*.parquet"))
        if "meta" not in p.parts
    }


CASES = [
    ("1m", "1m", "2024-02-29T06:00", "2024-03-02"),  # ends after now: the forming bar is not stored
    ("1h", "1H", "2023-12-01", "2024-03-01"),
    ("1d", "1Dutc", "2022-06-01", "2024-03-05"),
]


@pytest.mark.parametrize("tf,bar,start,end", CASES)
def test_exact_bars_with_faults_of_every_kind(okx_sim_factory, tmp_path, tf, bar, start, end):
    sim = okx_sim_factory(
        now=NOW,
        limits=SIM_LIMITS,
        fault_rate=0.2,
        fault_kinds=ALL_FAULT_KINDS,
        fault_seed=len(tf) + 10 * len(bar),
        timeout_sleep_s=0.5,
    )
    sim.plan_faults(ALL_FAULT_KINDS, endpoint=None)  # every kind at least once, on any endpoint
    insts = ["BTC-USDT", "ETH-USDT-SWAP", "ARB-USDT", "DOGE-USDT-SWAP"]
    with fast_source(sim) as src:
        report = collect(src, tmp_path / "s", insts, tf, start, end, workers=3, progress=False)
    assert report.ok
    faults = sum(sim.stats.injected.values())
    assert 0.1 * sim.stats.total_requests <= faults <= 0.4 * sim.stats.total_requests
    assert set(sim.stats.injected) == set(ALL_FAULT_KINDS)
    edge = sim.live_edge(bar)
    for inst in insts:
        got, exp = stored_vs_expected(tmp_path / "s", sim, inst, tf, bar, start, end)
        assert len(exp) > 5
        assert_exact(got, exp, swap=inst.endswith("-SWAP"))
        assert got.index.is_unique and got.index.is_monotonic_increasing
        assert epoch_ms(got.index).max() < edge  # never the forming bar
    # every candle request asked 300 rows over an exact 300-bar window
    step = BARS[bar][0]
    for p in sim.requests_for("market/history-candles") + sim.requests_for("market/candles"):
        assert p["limit"] == "300"
        assert 0 < int(p["after"]) - (int(p["before"]) + 1) <= 300 * step


def test_first_and_last_bar_and_listing(okx_sim_factory, tmp_path):
    sim = okx_sim_factory(now=NOW, limits=SIM_LIMITS, gap_prob=0.0)
    with fast_source(sim) as src:
        collect(
            src,
            tmp_path / "s",
            ["ARB-USDT", "BTC-USDT"],
            "1h",
            "2024-02-01T05:00",
            "2024-02-25T07:00",
            workers=2,
            progress=False,
        )
    btc = store.read_bars(tmp_path / "s", "BTC-USDT", "1h")
    assert btc.index[0] == pd.Timestamp("2024-02-01T05:00Z")  # start inclusive
    assert btc.index[-1] == pd.Timestamp("2024-02-25T06:00Z")  # end exclusive
    assert len(btc) == 24 * 24 + 2
    arb = store.read_bars(tmp_path / "s", "ARB-USDT", "1h")
    assert arb.index[0] == pd.Timestamp("2024-02-20T10:00Z")  # listed 09:37 -> first whole hour bar 10:00
    # nothing was asked before the listing, and the range before it counts as fetched
    for p in sim.requests_for("market/history-candles", "ARB-USDT"):
        assert int(p["after"]) > to_ms("2024-02-20T10:00")
    assert store.get_coverage(tmp_path / "s", "ARB-USDT", "1h") == [
        (to_ms("2024-02-01T05:00"), to_ms("2024-02-25T07:00"))
    ]


def test_run_twice_identical_files_and_no_refetch(okx_sim_factory, tmp_path):
    sim = okx_sim_factory(now=NOW, limits=SIM_LIMITS, fault_rate=0.15, timeout_sleep_s=0.5)
    insts = ["BTC-USDT", "SOL-USDT-SWAP"]
    with fast_source(sim) as src:
        collect(src, tmp_path / "s", insts, "5m", "2024-02-20", "2024-03-01", workers=2, progress=False)
        first = file_digests(tmp_path / "s")
        candle_requests = sim.stats.requests["market/history-candles"] + sim.stats.requests["market/candles"]
        report = collect(src, tmp_path / "s", insts, "5m", "2024-02-20", "2024-03-01", workers=2, progress=False)
    assert report.bars_fetched == 0 and report.bars_added == 0
    assert sim.stats.requests["market/history-candles"] + sim.stats.requests["market/candles"] == candle_requests
    assert file_digests(tmp_path / "s") == first
    assert any("funding" in k for k in first)


def test_forming_bar_is_stored_only_once_final(okx_sim_factory, tmp_path):
    sim = okx_sim_factory(now=NOW, limits=SIM_LIMITS, gap_prob=0.0)
    with fast_source(sim) as src:
        collect(src, tmp_path / "s", ["ETH-USDT"], "1m", "2024-03-01T10:00", "2024-03-02", progress=False)
    edge = sim.live_edge("1m")
    got = store.read_bars(tmp_path / "s", "ETH-USDT", "1m")
    assert epoch_ms(got.index)[-1] == edge - 60_000
    sim.now += 7 * 60_000  # time passes: the forming bar and six more are final now
    with fast_source(sim) as src:  # a new source reads the new server time
        report = collect(src, tmp_path / "s", ["ETH-USDT"], "1m", "2024-03-01T10:00", "2024-03-02", progress=False)
    assert report.bars_fetched == 7
    got = store.read_bars(tmp_path / "s", "ETH-USDT", "1m")
    exp = sim.expected_bars("ETH-USDT", "1m", to_ms("2024-03-01T10:00"), to_ms("2024-03-02"))
    assert_exact(got, exp, swap=False)


def test_silent_empty_page_in_the_middle_is_verified(okx_sim_factory, tmp_path):
    sim = okx_sim_factory(now=NOW, limits=SIM_LIMITS, gap_prob=0.0)
    sim.plan_faults(["empty", "empty", "truncated"], endpoint="market/history-candles")
    with fast_source(sim, page_concurrency=1) as src:
        collect(src, tmp_path / "s", ["XRP-USDT"], "15m", "2024-01-01", "2024-02-01", progress=False)
    got = store.read_bars(tmp_path / "s", "XRP-USDT", "15m")
    assert len(got) == 31 * 96
    assert sim.stats.injected["empty"] == 2


def test_funding_and_metadata(okx_sim_factory, tmp_path):
    sim = okx_sim_factory(now=NOW, limits=SIM_LIMITS)
    with fast_source(sim) as src:
        collect(src, tmp_path / "s", ["BTC-USDT-SWAP", "BTC-USDT"], "1d", "2023-06-01", "2024-03-01", progress=False)
    funding = store.read_funding(tmp_path / "s", "BTC-USDT-SWAP")
    exp = sim.expected_funding("BTC-USDT-SWAP", to_ms("2023-06-01"), to_ms("2024-03-01"))
    # OKX keeps about 3 months: 92 days x 3 settlements, minus those after 2024-03-01 00:00
    assert len(exp) == len(funding) and 270 <= len(funding) <= 277
    np.testing.assert_array_equal(epoch_ms(funding.index), exp["fundingTime"].to_numpy())
    np.testing.assert_array_equal(funding["funding_rate"].to_numpy(), exp["fundingRate"].to_numpy())
    assert len(store.read_funding(tmp_path / "s", "BTC-USDT")) == 0
    meta = store.read_instrument_meta(tmp_path / "s").set_index("instId")
    assert meta.loc["BTC-USDT-SWAP", "ctVal"] == 0.01 and meta.loc["BTC-USDT-SWAP", "lotSz"] == 1.0
    assert meta.loc["BTC-USDT-SWAP", "baseCcy"] == "BTC" and meta.loc["BTC-USDT-SWAP", "quoteCcy"] == "USDT"
    assert meta.loc["BTC-USDT", "minSz"] == 0.001 and meta.loc["LUNA-USDT", "state"] == "suspend"
    assert meta.loc["ARB-USDT", "listTime"] == pd.Timestamp("2024-02-20T09:37Z")


def test_exhausted_retries_keep_what_was_fetched(okx_sim_factory, tmp_path):
    sim = okx_sim_factory(now=NOW, limits=SIM_LIMITS, gap_prob=0.0)
    bad_from = to_ms("2023-11-10")
    sim.add_fault_rule("500", inst_id="ETH-USDT", predicate=lambda p: int(p["after"]) > bad_from)
    with fast_source(sim, retry=RetryPolicy(max_retries=2, base_s=0.01, cap_s=0.02), page_concurrency=1) as src:
        with pytest.raises(CollectionIncomplete) as info:
            collect(
                src,
                tmp_path / "s",
                ["BTC-USDT", "ETH-USDT"],
                "1h",
                "2023-10-01",
                "2023-12-01",
                progress=False,
                with_funding=False,
            )
    msg = str(info.value)
    assert "ETH-USDT" in msg and "BTC-USDT [" not in msg
    report = info.value.report
    failed = report.results[1].failed_ranges[0]
    assert failed[1] == to_ms("2023-12-01") and to_ms("2023-10-20") <= failed[0] <= bad_from
    eth = store.read_bars(tmp_path / "s", "ETH-USDT", "1h")
    assert eth.index[0] == pd.Timestamp("2023-10-01", tz="UTC") and epoch_ms(eth.index)[-1] == failed[0] - 3_600_000
    # re-run once the server recovers: resumes from the failed range only
    sim.clear_faults()
    before = sim.stats.requests["market/history-candles"]
    with fast_source(sim) as src:
        collect(
            src,
            tmp_path / "s",
            ["BTC-USDT", "ETH-USDT"],
            "1h",
            "2023-10-01",
            "2023-12-01",
            progress=False,
            with_funding=False,
        )
    asked = sim.stats.requests["market/history-candles"] - before
    assert asked == -(-(to_ms("2023-12-01") - failed[0]) // (300 * 3_600_000))
    got, exp = stored_vs_expected(tmp_path / "s", sim, "ETH-USDT", "1h", "1H", "2023-10-01", "2023-12-01")
    assert_exact(got, exp, swap=False)


def test_universe_selection(okx_sim):
    with OkxSource(api_url=okx_sim.url) as src:
        spot = src.resolve_universe(inst_type="spot")
        top = src.resolve_universe(top=4)
        top_swap = src.resolve_universe(top=2, inst_type="swap")
    expected_spot = sorted(
        i.inst_id for i in okx_sim.instruments.values() if i.inst_type == "SPOT" and i.state == "live"
    )
    assert spot == expected_spot and "LUNA-USDT" not in spot
    # independent ranking from the simulator's own tickers: spot volCcy24h is quote, swap volCcy24h is base
    rows = [okx_sim._ticker_row(i) for i in okx_sim.instruments.values() if i.state == "live"]
    quote = {r["instId"]: float(r["volCcy24h"]) * (float(r["last"]) if r["instType"] == "SWAP" else 1.0) for r in rows}
    assert top == sorted(quote, key=lambda k: -quote[k])[:4]
    swaps = {k: v for k, v in quote.items() if k.endswith("-SWAP")}
    assert top_swap == sorted(swaps, key=lambda k: -swaps[k])[:2]


def test_unknown_instrument_lists_close_matches(okx_sim):
    with OkxSource(api_url=okx_sim.url) as src:
        with pytest.raises(ConfigError) as info:
            src.resolve_universe(["BTC-USDT", "ETH-USTD-SWAP"])
    assert "ETH-USTD-SWAP" in str(info.value) and "ETH-USDT-SWAP" in str(info.value)


def test_api_url_from_environment(okx_sim, monkeypatch):
    monkeypatch.setenv("QLIB_CRYPTO_OKX_API_URL", okx_sim.url + "/")
    with OkxSource() as src:
        assert src.server_time_ms() // 1000 == okx_sim.now // 1000
    with pytest.raises(ConfigError):
        OkxSource(api_url="127.0.0.1:8080")
