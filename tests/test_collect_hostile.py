"""A hostile exchange: coverage tells the truth, pagers make progress, no network, masked credentials, bad input.

Every expected number is computed here from the simulator's ground truth (``sim.expected_bars``) and the fault
rules' row selectors, never from the code under test.
"""

from __future__ import annotations

import base64
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from okx_sim import DAY, HOUR, MINUTE, to_ms

from qlib_crypto import store
from qlib_crypto.cli import main
from qlib_crypto.errors import CollectionIncomplete, ExchangeUnreachable, PagingError, SourceError
from qlib_crypto.sources.collector import collect
from qlib_crypto.sources.okx import OkxSource, RetryPolicy

NOW = "2024-03-01T12:34:56.789Z"
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
START, END = "2023-11-01", "2023-11-03"  # 48 hourly bars, served by market/history-candles


def fast_source(sim, **kw) -> OkxSource:
    kw.setdefault("retry", RetryPolicy(max_retries=4, base_s=0.01, cap_s=0.05))
    return OkxSource(api_url=kw.pop("api_url", sim.url), timeout_s=0.5, limits=SRC_LIMITS, **kw)


def epoch_ms(index: pd.DatetimeIndex) -> np.ndarray:
    return np.asarray((index - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(milliseconds=1), dtype=np.int64)


def slot_ranges(slots, step: int) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for t in sorted(slots):
        if out and out[-1][1] == t:
            out[-1] = (out[-1][0], t + step)
        else:
            out.append((t, t + step))
    return out


def minus_slots(lo: int, hi: int, slots, step: int) -> list[tuple[int, int]]:
    """[lo, hi) without the slots, computed bar by bar."""
    keep = [t for t in range(lo, hi, step) if t not in set(slots)]
    return slot_ranges(keep, step)


def quarantined(store_dir: Path, tf: str, inst: str) -> pd.DataFrame:
    files = sorted((store_dir / "quarantine" / tf / inst).glob("*.parquet"))
    if not files:
        return pd.DataFrame(columns=["datetime", "reason"])
    return pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)


def candle_requests(sim) -> int:
    return sim.stats.requests["market/history-candles"] + sim.stats.requests["market/candles"]


# (sim fault kind, reason, row selector by open time, rows quarantined per bad slot)
DROPPED = [
    ("unconfirmed", "unconfirmed_past_bar", lambda t: (t // HOUR) % 3 == 0, 1),  # 16 of 48
    ("misaligned", "misaligned_timestamp", lambda t: (t // HOUR) % 4 == 1, 1),  # 12 of 48
    ("duplicate_conflicting", "duplicate_conflicting", lambda t: (t // HOUR) % 6 == 2, 2),  # 8 slots, both versions
    ("nan", "nan_value", lambda t: (t // HOUR) % 8 == 5, 1),  # quarantined by the store's write_bars
    ("ohlc_bad", "ohlc_inconsistent", lambda t: (t // HOUR) % 12 == 7, 1),  # quarantined by the store
]


@pytest.mark.parametrize("kind,reason,select,per_slot", DROPPED, ids=[d[0] for d in DROPPED])
def test_dropped_bars_are_quarantined_left_uncovered_and_refetched(
    okx_sim_factory, tmp_path, kind, reason, select, per_slot
):
    sim = okx_sim_factory(now=NOW, limits=SIM_LIMITS, gap_prob=0.0)
    sim.add_fault_rule(kind, endpoint=None, inst_id="BTC-USDT", rows=select)
    s = tmp_path / "s"
    lo, hi = to_ms(START), to_ms(END)
    exp = sim.expected_bars("BTC-USDT", "1H", lo, hi)
    assert len(exp) == 48
    bad = [int(t) for t in exp["ts"] if select(int(t))]
    good = exp[~exp["ts"].isin(bad)]
    expected_n = {"unconfirmed": 16, "misaligned": 12, "duplicate_conflicting": 8, "nan": 6, "ohlc_bad": 4}[kind]
    assert len(bad) == expected_n

    with fast_source(sim) as src:
        report = collect(
            src,
            s,
            ["BTC-USDT", "ETH-USDT"],
            "1h",
            START,
            END,
            progress=False,
            with_funding=False,
            raise_on_incomplete=False,
        )
    btc, eth = report.results
    # counted, with the reason; the healthy instrument is untouched
    assert not report.ok and eth.ok and eth.quarantined == 0
    assert btc.quarantined == per_slot * len(bad)
    assert btc.quarantine_reasons == {reason: per_slot * len(bad)}
    assert btc.holes == len(bad)
    assert f"{reason}: {per_slot * len(bad)}" in report.summary()
    # stored: every good bar, exactly; none of the bad slots
    got = store.read_bars(s, "BTC-USDT", "1h")
    np.testing.assert_array_equal(epoch_ms(got.index), good["ts"].to_numpy())
    np.testing.assert_array_equal(got["close"].to_numpy(), good["c"].to_numpy())
    # the quarantine holds the bad rows with their reason
    q = quarantined(s, "1h", "BTC-USDT")
    assert len(q) == per_slot * len(bad) and set(q["reason"]) == {reason}
    offset = 30_000 if kind == "misaligned" else 0
    assert sorted(set(epoch_ms(pd.DatetimeIndex(q["datetime"])).tolist())) == [t + offset for t in bad]
    # coverage: the range minus the bad slots; the healthy instrument is fully covered
    assert store.get_coverage(s, "BTC-USDT", "1h") == minus_slots(lo, hi, bad, HOUR)
    assert store.get_coverage(s, "ETH-USDT", "1h") == [(lo, hi)]
    with pytest.raises(CollectionIncomplete) as info:
        report.raise_if_incomplete()
    assert "BTC-USDT" in str(info.value) and reason in str(info.value) and "ETH-USDT [" not in str(info.value)

    # the server heals: a re-run asks exactly the holes again and fills them
    sim.clear_faults()
    before = candle_requests(sim)
    with fast_source(sim) as src:
        again = collect(src, s, ["BTC-USDT", "ETH-USDT"], "1h", START, END, progress=False, with_funding=False)
    assert again.ok
    assert again.results[0].bars_fetched == len(bad) and again.results[1].bars_fetched == 0
    assert candle_requests(sim) - before == len(slot_ranges(bad, HOUR))
    got = store.read_bars(s, "BTC-USDT", "1h")
    np.testing.assert_array_equal(epoch_ms(got.index), exp["ts"].to_numpy())
    np.testing.assert_array_equal(got["close"].to_numpy(), exp["c"].to_numpy())
    assert store.get_coverage(s, "BTC-USDT", "1h") == [(lo, hi)]


def test_identical_duplicates_collapse_and_are_covered(okx_sim_factory, tmp_path):
    sim = okx_sim_factory(now=NOW, limits=SIM_LIMITS, gap_prob=0.0)
    sim.add_fault_rule("duplicate_identical", endpoint=None, rows=lambda t: (t // HOUR) % 2 == 0)
    with fast_source(sim) as src:
        report = collect(src, tmp_path / "s", ["BTC-USDT"], "1h", START, END, progress=False, with_funding=False)
    exp = sim.expected_bars("BTC-USDT", "1H", to_ms(START), to_ms(END))
    assert report.ok and report.results[0].quarantined == 0
    assert sim.stats.injected["duplicate_identical"] >= 1
    got = store.read_bars(tmp_path / "s", "BTC-USDT", "1h")
    np.testing.assert_array_equal(epoch_ms(got.index), exp["ts"].to_numpy())
    assert store.get_coverage(tmp_path / "s", "BTC-USDT", "1h") == [(to_ms(START), to_ms(END))]
    assert not (tmp_path / "s" / "quarantine").exists()


def test_forming_bar_is_normal_but_an_unconfirmed_past_bar_at_the_edge_is_not(okx_sim_factory, tmp_path):
    sim = okx_sim_factory(now=NOW, limits=SIM_LIMITS, gap_prob=0.0)
    edge = sim.live_edge("1m")
    bad = edge - 5 * MINUTE  # inside the live-edge window, served by market/candles
    sim.add_fault_rule("unconfirmed", endpoint="market/candles", rows=lambda t: t == bad)
    start, end = edge - 120 * MINUTE, edge + 60 * MINUTE
    with fast_source(sim) as src:
        report = collect(
            src,
            tmp_path / "s",
            ["ETH-USDT"],
            "1m",
            start,
            end,
            progress=False,
            with_funding=False,
            raise_on_incomplete=False,
        )
    r = report.results[0]
    assert r.quarantine_reasons == {"unconfirmed_past_bar": 1} and r.holes == 1  # not the forming bar
    q = quarantined(tmp_path / "s", "1m", "ETH-USDT")
    assert epoch_ms(pd.DatetimeIndex(q["datetime"])).tolist() == [bad]
    # coverage ends at the forming bar, and skips the quarantined slot
    assert store.get_coverage(tmp_path / "s", "ETH-USDT", "1m") == [(start, bad), (bad + MINUTE, edge)]
    got = store.read_bars(tmp_path / "s", "ETH-USDT", "1m")
    assert epoch_ms(got.index).tolist() == [t for t in range(start, edge, MINUTE) if t != bad]


def test_candle_pager_that_ignores_paging_stops_with_paging_error(okx_sim_factory, tmp_path):
    sim = okx_sim_factory(now=NOW, limits=SIM_LIMITS, gap_prob=0.0, request_cap=300)
    sim.add_fault_rule("ignore_paging", endpoint="market/history-candles")
    lo, hi = to_ms("2023-06-01"), to_ms("2023-07-01")  # 720 bars: 3 windows, all far from the live edge
    with fast_source(sim) as src:
        with pytest.raises(PagingError) as direct:
            list(src.fetch_bars("BTC-USDT", "1h", lo, hi))
        assert isinstance(direct.value, SourceError) and direct.value.hint
        assert "does not advance the paging cursor" in str(direct.value)
        with pytest.raises(CollectionIncomplete) as info:
            collect(src, tmp_path / "s", ["BTC-USDT"], "1h", lo, hi, progress=False, with_funding=False)
    assert "does not advance the paging cursor" in str(info.value)
    assert store.get_coverage(tmp_path / "s", "BTC-USDT", "1h") == []  # nothing was recorded as fetched
    # bounded: two fetches (direct, then collect) of 3 windows, each window answered at most 3 times
    assert sim.stats.requests["market/history-candles"] <= 2 * 3 * 3
    assert sim.stats.total_requests < 300  # never hit the simulator's cap


def test_funding_pager_that_ignores_paging_stops_with_paging_error(okx_sim_factory, tmp_path):
    # a year of funding history kept: a full page of 400 rows, then the same page again and again
    sim = okx_sim_factory(now=NOW, limits=SIM_LIMITS, gap_prob=0.0, funding_retention_ms=400 * DAY, request_cap=200)
    sim.add_fault_rule("ignore_paging", endpoint="public/funding-rate-history")
    assert len(sim.expected_funding("BTC-USDT-SWAP", sim.now - 300 * DAY, sim.now)) == 900
    with fast_source(sim) as src:
        with pytest.raises(PagingError) as info:
            src.fetch_funding("BTC-USDT-SWAP", sim.now - 300 * DAY, sim.now)
        assert "funding" in str(info.value) and info.value.hint
        n = sim.stats.requests["public/funding-rate-history"]
        assert n <= 1 + 3  # one page that advanced, then 3 answers that did not
        # a day long before the newest 400 settlements: no answer ever holds a row of it
        report = collect(
            src,
            tmp_path / "s",
            ["BTC-USDT-SWAP"],
            "1h",
            "2023-06-01",
            "2023-06-02",
            progress=False,
            raise_on_incomplete=False,
        )
    assert not report.ok and "funding" in report.results[0].error and "paging cursor" in report.results[0].error
    assert sim.stats.total_requests < 200


def test_healthy_funding_paging_is_unchanged(okx_sim_factory):
    sim = okx_sim_factory(now=NOW, limits=SIM_LIMITS, funding_retention_ms=400 * DAY)
    with fast_source(sim) as src:
        got = src.fetch_funding("ETH-USDT-SWAP", sim.now - 300 * DAY, sim.now)
    exp = sim.expected_funding("ETH-USDT-SWAP", sim.now - 300 * DAY, sim.now)
    assert len(exp) == 900
    np.testing.assert_array_equal(epoch_ms(pd.DatetimeIndex(got["funding_time"])), exp["fundingTime"].to_numpy())
    np.testing.assert_array_equal(got["funding_rate"].to_numpy(), exp["fundingRate"].to_numpy())


def unused_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_no_network_fails_fast_with_one_line_exit_3_and_no_empty_store(tmp_path, capsys):
    port = unused_port()  # nothing listens there: connection refused
    new_store = tmp_path / "new" / "store"
    t0 = time.monotonic()
    rc = main(
        [
            "collect",
            "--source",
            "okx",
            "--api-url",
            f"http://127.0.0.1:{port}",
            "--instruments",
            "BTC-USDT",
            "--timeframe",
            "1h",
            "--start",
            "2024-01-01",
            "--end",
            "2024-01-02",
            "--store",
            str(new_store),
            "--quiet",
        ]
    )
    elapsed = time.monotonic() - t0
    captured = capsys.readouterr()
    print(f"time to fail without network: {elapsed:.2f} s")
    assert rc == 3
    err = captured.err.strip()
    assert "\n" not in err and captured.out == ""
    assert f"127.0.0.1:{port}" in err and "cannot be reached" in err and "--api-url" in err
    assert "re-run the same command to resume" not in err  # nothing was fetched
    assert not (tmp_path / "new").exists()  # no empty store left behind
    # an existing store is left as it was
    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "keep.txt").write_text("x")
    rc = main(
        [
            "collect",
            "--source",
            "okx",
            "--api-url",
            f"http://127.0.0.1:{port}",
            "--instruments",
            "BTC-USDT",
            "--timeframe",
            "1h",
            "--start",
            "2024-01-01",
            "--end",
            "2024-01-02",
            "--store",
            str(existing),
            "--max-retries",
            "0",
        ]
    )
    assert rc == 3 and (existing / "keep.txt").read_text() == "x"
    # the number of attempts is bounded, whatever --max-retries says
    with OkxSource(api_url=f"http://127.0.0.1:{port}", retry=RetryPolicy(max_retries=8)) as src:
        with pytest.raises(ExchangeUnreachable) as info:
            src.resolve_universe(["BTC-USDT"])
        assert src.stats["requests"] == 3
    assert info.value.exit_code == 3


SECRET = "S3CRET"


def run_cli(args: list[str], env_extra: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "QLIB_CRYPTO_OKX_API_URL"}
    env.update(env_extra or {})
    return subprocess.run(
        [sys.executable, "-m", "qlib_crypto", *args], env=env, capture_output=True, text=True, timeout=120
    )


def test_credentials_in_api_url_are_masked_everywhere(okx_sim, tmp_path, capsys):
    url = okx_sim.url.replace("http://", f"http://user:{SECRET}@")
    token = base64.b64encode(f"user:{SECRET}".encode()).decode()
    common = ["--instruments", "BTC-USDT", "--timeframe", "1h", "--start", "2024-02-20", "--end", "2024-02-21"]
    # a successful run, URL from the environment, with debug logs
    ok = run_cli(
        ["--verbose", "collect", "--source", "okx", "--store", str(tmp_path / "a"), "--quiet", *common],
        {"QLIB_CRYPTO_OKX_API_URL": url},
    )
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert "DEBUG" in ok.stderr  # a leak would have had its chance
    # the credentials were used (HTTP basic auth), never printed
    assert ("authorization", f"Basic {token}") in okx_sim.seen_headers
    # a failing run: every candle request fails with a 502 whose ccxt message carries the URL
    okx_sim.add_fault_rule("502", endpoint=None, predicate=lambda p: "bar" in p)
    bad = run_cli(
        [
            "--verbose",
            "collect",
            "--source",
            "okx",
            "--api-url",
            url,
            "--store",
            str(tmp_path / "b"),
            "--quiet",
            "--max-retries",
            "0",
            *common,
        ]
    )
    assert bad.returncode == 3, bad.stderr[-2000:]
    assert "Traceback" in bad.stderr and "ExchangeNotAvailable" in bad.stderr
    for proc in (ok, bad):
        for text in (proc.stdout, proc.stderr):
            assert SECRET not in text and token not in text
    # in process: a host that cannot be reached, and a bad URL, name the host but not the password
    rc = main(
        [
            "collect",
            "--source",
            "okx",
            "--api-url",
            f"http://user:{SECRET}@127.0.0.1:{unused_port()}",
            "--store",
            str(tmp_path / "c"),
            *common,
        ]
    )
    rc_bad_url = main(
        [
            "collect",
            "--source",
            "okx",
            "--api-url",
            f"ftp://user:{SECRET}@127.0.0.1:1",
            "--store",
            str(tmp_path / "d"),
            *common,
        ]
    )
    captured = capsys.readouterr()
    assert (
        rc == 3
        and "cannot be reached" in captured.err
        and rc_bad_url == 2
        and "ftp://user:***@127.0.0.1:1" in captured.err
    )
    assert SECRET not in captured.out + captured.err and token not in captured.out + captured.err


BAD_INPUT = [
    (["--source", "okx", "--timeout", "nan"], "nan"),
    (["--source", "okx", "--timeout", "inf"], "inf"),
    (["--source", "okx", "--timeout", "-1"], "-1"),
    (["--source", "synthetic", "--instruments", "999999"], "10,000"),
    (["--source", "synthetic", "--instruments", "3", "--end", "9999-01-01"], "9999-01-01"),
    (["--source", "okx", "--end", "9999-01-01", "--timeframe", "1d"], None),  # okx: clamped, see below
    (["--source", "synthetic", "--instruments", "3", "--start", "1990-01-01", "--end", "2000-01-01"], "2009-01-03"),
    (["--source", "okx", "--start", "2008-12-31"], "2009-01-03"),
    (["--source", "okx", "--start", "2300-01-01", "--end", "2300-02-01"], "2300-01-01"),
]


@pytest.mark.parametrize("args,named", [b for b in BAD_INPUT if b[1] is not None])
def test_bad_input_is_one_line_exit_2_and_nothing_written(okx_sim, tmp_path, capsys, args, named):
    argv = ["collect", "--store", str(tmp_path / "s"), "--quiet", "--api-url", okx_sim.url]
    defaults = {"--instruments": "BTC-USDT", "--timeframe": "1h", "--start": "2024-01-01", "--end": "2024-01-02"}
    for opt, value in defaults.items():
        if opt not in args:
            argv += [opt, value]
    rc = main(argv + args)
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    assert "\n" not in err and err.startswith("error:") and named in err
    assert not (tmp_path / "s").exists()
    assert okx_sim.stats.total_requests == 0


def test_okx_end_in_the_future_is_clamped_to_now(okx_sim, tmp_path, capsys):
    rc = main(
        [
            "collect",
            "--source",
            "okx",
            "--api-url",
            okx_sim.url,
            "--store",
            str(tmp_path / "s"),
            "--quiet",
            "--instruments",
            "BTC-USDT",
            "--timeframe",
            "1d",
            "--start",
            "2024-01-01",
            "--end",
            "9999-01-01",
        ]
    )
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert "--end 9999-01-01 is in the future" in captured.err
    got = store.read_bars(tmp_path / "s", "BTC-USDT", "1d")
    exp = okx_sim.expected_bars("BTC-USDT", "1Dutc", to_ms("2024-01-01"), to_ms("2262-01-01"))
    np.testing.assert_array_equal(epoch_ms(got.index), exp["ts"].to_numpy())
