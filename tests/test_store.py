"""The raw store: round trips, partitioning, merge rules, quarantine, coverage, validation."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from qlib_crypto.cli import main
from qlib_crypto.errors import ConfigError, StoreError, ValidationError
from qlib_crypto.store import (
    add_coverage,
    get_coverage,
    list_instruments,
    missing_ranges,
    read_bars,
    read_funding,
    read_instrument_meta,
    validate_store,
    write_bars,
    write_funding,
    write_instrument_meta,
)

COLS = ["open", "high", "low", "close", "volume", "amount"]


def make_bars(start: str, periods: int, freq: str = "1h", seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.01, periods)))
    open_ = np.concatenate([[100.0], close[:-1]])
    high = np.maximum(open_, close) * (1 + rng.uniform(0, 0.01, periods))
    low = np.minimum(open_, close) * (1 - rng.uniform(0, 0.01, periods))
    volume = rng.uniform(1, 10, periods)
    idx = pd.date_range(start, periods=periods, freq=freq, tz="UTC", name="datetime")
    return pd.DataFrame(
        {"open": open_, "high": high, "low": low, "close": close, "volume": volume, "amount": volume * close}, index=idx
    )


def tree_hashes(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_round_trip_and_yearly_partition(tmp_path):
    bars = make_bars("2023-12-31 12:00", 30)
    result = write_bars(tmp_path, "BTC-USDT", "1h", bars, "test")
    assert result.rows_added == 30 and result.quarantined == 0
    files = sorted(p.name for p in (tmp_path / "bars/1h/BTC-USDT").glob("*.parquet"))
    assert files == ["2023.parquet", "2024.parquet"]
    back = read_bars(tmp_path, "BTC-USDT", "1h")
    pd.testing.assert_frame_equal(back, bars, check_freq=False)
    assert str(back.index.tz) == "UTC" and list(back.dtypes) == [np.float64] * 6
    window = read_bars(tmp_path, "BTC-USDT", "1h", start="2024-01-01", end="2024-01-01 03:00")
    assert list(window.index) == list(pd.date_range("2024-01-01", periods=3, freq="h", tz="UTC"))


def test_minute_bars_partition_by_month(tmp_path):
    bars = make_bars("2024-01-31 23:58", 5, freq="1min")
    write_bars(tmp_path, "ETH-USDT", "1m", bars, "test")
    assert sorted(p.name for p in (tmp_path / "bars/1m/ETH-USDT").glob("*.parquet")) == [
        "2024-01.parquet",
        "2024-02.parquet",
    ]


def test_same_rows_give_same_bytes_and_rewrite_is_noop(tmp_path):
    bars = make_bars("2024-01-01", 48)
    write_bars(tmp_path / "a", "BTC-USDT", "1h", bars, "test")
    write_bars(tmp_path / "b", "BTC-USDT", "1h", bars.iloc[::-1], "test")  # order does not matter
    pa = (tmp_path / "a/bars/1h/BTC-USDT/2024.parquet").read_bytes()
    pb = (tmp_path / "b/bars/1h/BTC-USDT/2024.parquet").read_bytes()
    assert pa == pb
    before = tree_hashes(tmp_path / "a")
    again = write_bars(tmp_path / "a", "BTC-USDT", "1h", bars, "test")
    assert again.rows_identical == 48 and again.files_written == []
    assert tree_hashes(tmp_path / "a") == before


def test_conflicts_keep_overwrite_error(tmp_path):
    bars = make_bars("2024-01-01", 10)
    write_bars(tmp_path, "BTC-USDT", "1h", bars, "okx")
    changed = bars.copy()
    changed.iloc[2, changed.columns.get_loc("close")] = changed.iloc[2]["close"] * 1.0001
    changed.iloc[2, changed.columns.get_loc("high")] = max(changed.iloc[2]["high"], changed.iloc[2]["close"])
    before = tree_hashes(tmp_path)
    with pytest.raises(ValidationError, match="conflict"):
        write_bars(tmp_path, "BTC-USDT", "1h", changed, "import:x.csv", on_conflict="error")
    assert tree_hashes(tmp_path) == before
    kept = write_bars(tmp_path, "BTC-USDT", "1h", changed, "import:x.csv")
    assert (kept.conflicts, kept.rows_identical, kept.rows_replaced) == (1, 9, 0)
    assert read_bars(tmp_path, "BTC-USDT", "1h")["close"].iloc[2] == bars["close"].iloc[2]
    over = write_bars(tmp_path, "BTC-USDT", "1h", changed, "import:x.csv", on_conflict="overwrite")
    assert over.rows_replaced == 1
    assert read_bars(tmp_path, "BTC-USDT", "1h")["close"].iloc[2] == changed["close"].iloc[2]
    manifest = (tmp_path / "bars/1h/BTC-USDT/2024.parquet.manifest.yaml").read_text()
    assert "source: import:x.csv+okx" in manifest


def test_bad_rows_are_quarantined_with_reasons(tmp_path):
    bars = make_bars("2024-01-01", 8).reset_index()
    bars.loc[1, "close"] = np.nan  # nan_value
    bars.loc[2, "low"] = bars.loc[2, "open"] * 1.5  # low above open: ohlc_inconsistent
    bars.loc[3, "volume"] = -1.0  # negative_volume
    bars.loc[4, "open"] = 0.0  # non_positive_price
    bars.loc[5, "datetime"] = bars.loc[5, "datetime"] + pd.Timedelta(minutes=7)  # misaligned_timestamp
    dup = bars.iloc[[6]].copy()
    dup["close"] = dup["close"] * 1.01
    dup["high"] = dup[["high", "close"]].max(axis=1)
    bars = pd.concat([bars, dup], ignore_index=True)  # two versions of bar 6: duplicate_conflicting
    result = write_bars(tmp_path, "BTC-USDT", "1h", bars, "test")
    assert result.quarantined == 7
    assert result.quarantine_reasons == {
        "nan_value": 1,
        "ohlc_inconsistent": 1,
        "negative_volume": 1,
        "non_positive_price": 1,
        "misaligned_timestamp": 1,
        "duplicate_conflicting": 2,
    }
    kept = read_bars(tmp_path, "BTC-USDT", "1h")
    assert len(kept) == 2  # rows 0 and 7
    q = pd.read_parquet(result.quarantine_file)
    assert len(q) == 7 and set(q["reason"]) == set(result.quarantine_reasons)
    assert validate_store(tmp_path).quarantined_rows == 7


def test_unknown_series_and_bad_range(tmp_path):
    write_bars(tmp_path, "BTC-USDT", "1h", make_bars("2024-01-01", 3), "test")
    with pytest.raises(StoreError, match="did you mean BTC-USDT"):
        read_bars(tmp_path, "BTC-USDC", "1h")
    with pytest.raises(StoreError, match="no 1d bars"):
        read_bars(tmp_path, "BTC-USDT", "1d")
    with pytest.raises(ConfigError, match="not before"):
        read_bars(tmp_path, "BTC-USDT", "1h", start="2024-01-02", end="2024-01-01")
    with pytest.raises(ConfigError, match="invalid instrument"):
        write_bars(tmp_path, "BTC/USDT", "1h", make_bars("2024-01-01", 3), "test")
    assert list_instruments(tmp_path, "1h") == ["BTC-USDT"]


def test_unwritable_store(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(StoreError, match="cannot create"):
        write_bars(blocker / "store", "BTC-USDT", "1h", make_bars("2024-01-01", 3), "test")


def test_validate_detects_tampering_and_corruption(tmp_path):
    bars = make_bars("2024-01-01", 24)
    write_bars(tmp_path, "BTC-USDT", "1h", bars.drop(bars.index[[5, 6, 7, 15]]), "test")
    report = validate_store(tmp_path)
    assert report.ok
    (series,) = report.series
    assert series["missing_bars"] == 4
    assert series["gaps"] == [
        ["2024-01-01T05:00:00Z", "2024-01-01T08:00:00Z"],
        ["2024-01-01T15:00:00Z", "2024-01-01T16:00:00Z"],
    ]
    assert main(["validate", "--store", str(tmp_path)]) == 0
    data = tmp_path / "bars/1h/BTC-USDT/2024.parquet"
    raw = bytearray(data.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    data.write_bytes(bytes(raw))
    report = validate_store(tmp_path)
    assert not report.ok and "hash_mismatch" in {p["kind"] for p in report.problems}
    assert main(["validate", "--store", str(tmp_path), "--report", str(tmp_path / "r.json")]) == 4
    assert (tmp_path / "r.json").exists()
    data.write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(StoreError, match="corrupt"):
        read_bars(tmp_path, "BTC-USDT", "1h")
    assert "unreadable" in {p["kind"] for p in validate_store(tmp_path).problems}


def test_coverage_and_missing_ranges(tmp_path):
    assert get_coverage(tmp_path, "BTC-USDT", "1h") == []
    add_coverage(tmp_path, "BTC-USDT", "1h", 0, 100)
    add_coverage(tmp_path, "BTC-USDT", "1h", 200, 300)
    add_coverage(tmp_path, "BTC-USDT", "1h", 100, 150)
    assert get_coverage(tmp_path, "BTC-USDT", "1h") == [(0, 150), (200, 300)]
    assert missing_ranges([(0, 150), (200, 300)], 50, 400) == [(150, 200), (300, 400)]
    assert missing_ranges([(0, 150)], 0, 100) == []
    assert missing_ranges([], 10, 20) == [(10, 20)]


def test_funding_and_metadata(tmp_path):
    times = pd.date_range("2024-01-01", periods=4, freq="8h", tz="UTC")
    write_funding(
        tmp_path,
        "BTC-USDT-SWAP",
        pd.DataFrame({"funding_time": times, "funding_rate": [1e-4, -2e-4, 3e-4, 0.0]}),
        "test",
    )
    back = read_funding(tmp_path, "BTC-USDT-SWAP")
    assert list(back.index) == list(times) and back["funding_rate"].tolist() == [1e-4, -2e-4, 3e-4, 0.0]
    assert read_funding(tmp_path, "BTC-USDT").empty
    meta = pd.DataFrame(
        {
            "instId": ["BTC-USDT", "BTC-USDT-SWAP"],
            "instType": ["SPOT", "SWAP"],
            "lotSz": ["0.00000001", "0.01"],
            "minSz": ["0.00001", "0.01"],
            "ctVal": ["", "0.01"],
            "listTime": ["1548133413000", "1573557408000"],
            "state": ["live", "live"],
        }
    )
    write_instrument_meta(tmp_path, meta, "test", read_at="2024-01-01")
    newer = meta.assign(lotSz=["0.0001", "0.1"])
    write_instrument_meta(tmp_path, newer, "test", read_at="2024-06-01")
    old = read_instrument_meta(tmp_path, as_of="2024-03-01").set_index("instId")
    assert old.loc["BTC-USDT-SWAP", "lotSz"] == 0.01 and old.loc["BTC-USDT-SWAP", "ctVal"] == 0.01
    assert old.loc["BTC-USDT", "listTime"] == pd.Timestamp(1548133413000, unit="ms", tz="UTC")
    assert read_instrument_meta(tmp_path).set_index("instId").loc["BTC-USDT-SWAP", "lotSz"] == 0.1
    assert validate_store(tmp_path).ok


def test_files_get_the_umask_mode_not_0600(tmp_path):
    import os
    import stat

    from qlib_crypto import _atomic

    write_bars(tmp_path, "BTC-USDT", "1h", make_bars("2024-01-01", 3), "test")
    umask = os.umask(0)
    os.umask(umask)
    expected = 0o666 & ~umask
    assert _atomic._UMASK_AT_IMPORT == umask
    data = tmp_path / "bars/1h/BTC-USDT/2024.parquet"
    for path in (data, data.with_name(data.name + ".manifest.yaml")):
        assert stat.S_IMODE(path.stat().st_mode) == expected, path
