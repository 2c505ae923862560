"""Incremental ``--update``: byte-identical to a full dump after any sequence of updates, refuses backfills,
and interrupted dumps/updates (killed subprocesses) leave a readable old dataset and recover."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from qlib_crypto.errors import ConfigError, ProviderError
from qlib_crypto.provider import dump
from qlib_crypto.store import write_bars, write_funding

PY = sys.executable
PAUSE_DUMP = Path(__file__).with_name("_pause_dump.py")


def bars(start: str, n: int, seed: int, p0: float = 100.0, drop=()) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    idx = pd.date_range(start, periods=n, freq="h", tz="UTC")
    close = p0 * np.exp(np.cumsum(rng.normal(0, 0.01, n)))
    open_ = np.r_[p0, close[:-1]]
    vol = rng.uniform(1, 100, n)
    df = pd.DataFrame(
        {
            "datetime": idx,
            "open": open_,
            "high": np.maximum(open_, close) * 1.001,
            "low": np.minimum(open_, close) * 0.999,
            "close": close,
            "volume": vol,
            "amount": vol * close,
        }
    )
    return df.drop(index=list(drop)).reset_index(drop=True)


def snapshot(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def history():
    """Hourly history over a year boundary: gaps, a delisting, a late listing, funding ahead of the bars."""
    a = bars("2023-12-30 00:00", 24 * 5, 1, drop=range(50, 58))  # 8-hour gap on 12-31
    b = bars("2023-12-30 05:00", 40, 2, p0=20.0)  # stops trading on 12-31 20:00
    c = bars("2024-01-01 13:00", 60, 3, p0=3.0)  # listed in the middle of the history
    d = bars("2023-12-30 00:00", 24 * 5, 4, p0=7.0, drop=range(70, 95))
    fund = pd.DataFrame({"funding_time": pd.date_range("2023-12-30 00:00", "2024-01-04 16:00", freq="8h", tz="UTC")})
    fund["funding_rate"] = np.linspace(-3e-4, 3e-4, len(fund))
    return {"AAA-USDT": a, "BBB-USDT-SWAP": b, "CCC-USDT-SWAP": c, "DDD-USDT": d}, fund


def read_back(qdir: Path, freq: str, name: str, field: str) -> tuple[pd.DatetimeIndex, np.ndarray]:
    """Read one field's ``.bin`` by hand: float32 little-endian, first value = start index in the calendar;
    returns the calendar times it covers and its values."""
    cal = pd.to_datetime((qdir / "calendars" / f"{freq}.txt").read_text().splitlines(), utc=True)
    raw = np.fromfile(qdir / "features" / name.lower() / f"{field}.{freq}.bin", dtype="<f4")
    start = int(raw[0])
    assert start + len(raw) - 1 == len(cal)  # every instrument ends at the calendar end
    return cal[start:], raw[1:]


def assert_close_matches_input(qdir: Path, freq: str, frames, lo, hi, fund=None, swaps=()):
    """``close`` equals the input bars in [lo, hi) reindexed to the calendar from the first bar (NaN where
    missing); ``funding_rate`` of ``swaps`` is the settlement rate in the bar it falls in, NaN elsewhere."""
    for name, df in frames.items():
        part = df[(df["datetime"] >= lo) & (df["datetime"] < hi)].set_index("datetime")
        if part.empty:  # not listed yet: no files
            assert not (qdir / "features" / name.lower()).exists(), name
            continue
        times, close = read_back(qdir, freq, name, "close")
        assert times[0] == part.index[0], name
        np.testing.assert_array_equal(close, part["close"].reindex(times).to_numpy(np.float32), err_msg=name)
        if name in swaps:
            ftimes, rate = read_back(qdir, freq, name, "funding_rate")
            assert ftimes.equals(times)
            f = fund[(fund["funding_time"] >= times[0]) & (fund["funding_time"] <= times[-1])]
            expected = np.full(len(times), np.nan, np.float32)
            expected[times.get_indexer(f["funding_time"])] = f["funding_rate"].to_numpy(np.float32)
            assert (times.get_indexer(f["funding_time"]) >= 0).all()
            assert np.isfinite(expected).sum() >= 3
            np.testing.assert_array_equal(rate, expected, err_msg=name)


def write_until(store: Path, frames, fund, lo, hi):
    for name, df in frames.items():
        part = df[(df["datetime"] >= lo) & (df["datetime"] < hi)]
        if len(part):
            write_bars(store, name, "1h", part, "t")
    fpart = fund[(fund["funding_time"] >= lo) & (fund["funding_time"] < hi + pd.Timedelta("6h"))]
    for name in ("BBB-USDT-SWAP", "CCC-USDT-SWAP"):
        write_funding(store, name, fpart, "t")


@pytest.mark.parametrize("timeframe, source", [("1h", None), ("day", "1h"), ("240min", "1h")])
def test_updates_equal_full_dump(tmp_path, timeframe, source):
    frames, fund = history()
    store, upd, full = tmp_path / "store", tmp_path / "upd", tmp_path / "full"
    cuts = pd.to_datetime(
        [
            "2023-12-30 00:00",
            "2023-12-30 09:00",
            "2023-12-31 03:00",
            "2023-12-31 05:00",
            "2024-01-01 00:00",
            "2024-01-01 13:00",
            "2024-01-01 14:30",
            "2024-01-02 00:00",
            "2024-01-03 22:00",
            "2024-01-04 00:00",
        ],
        utc=True,
    )
    write_until(store, frames, fund, cuts[0], cuts[1])
    dump(store, upd, timeframe, source_timeframe=source, top=[2])
    modes = []
    for lo, hi in zip(cuts[1:-1], cuts[2:]):
        write_until(store, frames, fund, lo, hi)
        res = dump(store, upd, timeframe, update=True, source_timeframe=source)
        modes.append(res.mode)
        dump(store, full, timeframe, source_timeframe=source, top=[2])
        assert snapshot(upd) == snapshot(full), (lo, hi)
    assert "update" in modes
    # nothing new: an update changes nothing
    before = snapshot(upd)
    dump(store, upd, timeframe, update=True, source_timeframe=source)
    assert snapshot(upd) == before
    # every instrument ends at the calendar end; the late listing starts at its own index
    freq = "60min" if timeframe == "1h" else timeframe
    n_cal = len((upd / "calendars" / f"{freq}.txt").read_text().splitlines())
    for name in frames:
        raw = np.fromfile(upd / "features" / name.lower() / f"close.{freq}.bin", dtype="<f4")
        assert int(raw[0]) + len(raw) - 1 == n_cal
    start_c = int(np.fromfile(upd / "features" / "ccc-usdt-swap" / f"close.{freq}.bin", dtype="<f4")[0])
    cal = (upd / "calendars" / f"{freq}.txt").read_text().splitlines()
    assert cal[start_c] == {"60min": "2024-01-01 13:00:00", "day": "2024-01-01", "240min": "2024-01-01 12:00:00"}[freq]
    if timeframe == "1h":
        # independent read-back of the updated directory against the input bars and funding
        assert_close_matches_input(upd, freq, frames, cuts[0], cuts[-1], fund, swaps=("BBB-USDT-SWAP", "CCC-USDT-SWAP"))


def test_update_appends_in_place_and_pads_idle_instruments(tmp_path):
    store, out = tmp_path / "store", tmp_path / "q"
    write_bars(store, "AAA-USDT", "1h", bars("2024-01-01", 10, 1), "t")
    write_bars(store, "BBB-USDT", "1h", bars("2024-01-01", 10, 2), "t")
    dump(store, out, "1h")
    path = out / "features" / "bbb-usdt" / "close.60min.bin"
    inode, old = path.stat().st_ino, path.read_bytes()
    new = bars("2024-01-01", 14, 1).iloc[10:]
    write_bars(store, "AAA-USDT", "1h", new, "t")
    res = dump(store, out, "1h", update=True)
    assert res.mode == "update" and res.new_calendar_bars == 4 and res.bars_written == 4
    assert path.stat().st_ino == inode  # appended, not rewritten
    data = path.read_bytes()
    assert data[: len(old)] == old
    assert np.isnan(np.frombuffer(data[len(old) :], dtype="<f4")).all() and len(data) == len(old) + 16
    a = np.fromfile(out / "features" / "aaa-usdt" / "close.60min.bin", dtype="<f4")
    np.testing.assert_array_equal(a[11:], new["close"].to_numpy(np.float32))


def test_update_refuses_backfill_and_changed_options(tmp_path):
    store, out = tmp_path / "store", tmp_path / "q"
    full = bars("2024-01-01", 30, 1, drop=(5,))
    write_bars(store, "AAA-USDT", "1h", full.iloc[:20], "t")
    dump(store, out, "1h")
    before = snapshot(out)
    write_bars(store, "AAA-USDT", "1h", bars("2024-01-01", 30, 1).iloc[5:6], "t")  # fills the old gap
    with pytest.raises(ProviderError, match="full dump"):
        dump(store, out, "1h", update=True)
    assert snapshot(out) == before

    store2, out2 = tmp_path / "store2", tmp_path / "q2"
    write_bars(store2, "AAA-USDT", "1h", full.iloc[:20], "t")
    dump(store2, out2, "1h")
    changed = full.iloc[3:4].copy()
    changed["close"] *= 1.01
    changed["high"] *= 1.01
    write_bars(store2, "AAA-USDT", "1h", changed, "t", on_conflict="overwrite")
    write_bars(store2, "AAA-USDT", "1h", full.iloc[20:], "t")
    before = snapshot(out2)
    with pytest.raises(ProviderError, match="changed or added"):
        dump(store2, out2, "1h", update=True)
    assert snapshot(out2) == before
    # a new instrument whose history starts before the last dumped bar
    store3, out3 = tmp_path / "store3", tmp_path / "q3"
    write_bars(store3, "AAA-USDT", "1h", full.iloc[:20], "t")
    dump(store3, out3, "1h")
    write_bars(store3, "ZZZ-USDT", "1h", bars("2024-01-01 02:00", 5, 9), "t")
    with pytest.raises(ProviderError, match="ZZZ-USDT"):
        dump(store3, out3, "1h", update=True)
    with pytest.raises(ConfigError, match="--top"):
        dump(store2, out2, "1h", update=True, top=[3])
    dump(store3, out3, "1h")  # the hinted way out works
    assert "ZZZ-USDT" in (out3 / "instruments" / "all.txt").read_text()
    dump(store, out, "1h")
    assert np.fromfile(out / "features" / "aaa-usdt" / "close.60min.bin", dtype="<f4")[6] == np.float32(
        bars("2024-01-01", 30, 1)["close"].iloc[5]
    )


# ------------------------------------------------------------------------------------ interruptions

READ_OLD = textwrap.dedent("""
    import pickle, sys
    import qlib_crypto
    from qlib.data import D
    qlib_crypto.init({"60min": sys.argv[1]}, kernels=1)
    df = D.features(["AAA-USDT", "BBB-USDT"], ["$close"], freq="60min")
    pickle.dump(([str(t) for t in D.calendar(freq="60min")], df), open(sys.argv[2], "wb"))
""")


def run_until_paused(args, point: str, marker: Path) -> subprocess.Popen:
    """Start ``qlib-crypto ARGS`` paused at ``point`` by tests/_pause_dump.py; return once it is there."""
    proc = subprocess.Popen(
        [PY, str(PAUSE_DUMP), point, str(marker), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    deadline = time.monotonic() + 120
    try:
        while not marker.exists():
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline
            time.sleep(0.05)
    except BaseException:
        kill(proc)  # never leave the child (paused, holding the dump lock) behind
        raise
    return proc


def kill(proc: subprocess.Popen) -> None:
    proc.kill()
    proc.wait(timeout=30)


def two_instrument_store(store: Path, n: int) -> None:
    write_bars(store, "AAA-USDT", "1h", bars("2024-01-01", n, 1), "t")
    write_bars(store, "BBB-USDT", "1h", bars("2024-01-01", n, 2, p0=9.0), "t")


def test_interrupted_full_dump_keeps_old_dataset(tmp_path):
    store, out = tmp_path / "store", tmp_path / "okx" / "60min"
    two_instrument_store(store, 24)
    dump(store, out, "1h")
    old = snapshot(out)
    write_bars(store, "AAA-USDT", "1h", bars("2024-01-01", 48, 1).iloc[24:], "t")
    args = ["dump", "--store", str(store), "--qlib-dir", str(out), "--timeframe", "1h"]
    proc = run_until_paused(args, "full-staged", tmp_path / "marker")
    try:
        assert snapshot(out) == old  # the new dataset is complete in the staging dir, not yet swapped in
        with pytest.raises(ProviderError, match="another dump"):  # the running dump holds the lock
            dump(store, out, "1h")
    finally:
        kill(proc)
    assert snapshot(out) == old
    assert list((tmp_path / "okx").glob(".60min.staging-*"))
    res = tmp_path / "res.pkl"
    (tmp_path / "read.py").write_text(READ_OLD)
    subprocess.run([PY, str(tmp_path / "read.py"), str(out), str(res)], check=True, capture_output=True, timeout=300)
    cal, df = pickle.loads(res.read_bytes())
    assert len(cal) == 24
    np.testing.assert_array_equal(
        df.xs("AAA-USDT", level="instrument")["$close"].to_numpy(),
        bars("2024-01-01", 24, 1)["close"].to_numpy(np.float32),
    )
    dump(store, out, "1h")
    assert not list((tmp_path / "okx").glob(".60min.*-*"))
    dump(store, tmp_path / "fresh", "1h")
    assert snapshot(out) == snapshot(tmp_path / "fresh")


@pytest.mark.parametrize("point", ["update-written", "update-committing"])
def test_interrupted_update_rolls_back_or_forward(tmp_path, point):
    store, out = tmp_path / "store", tmp_path / "q"
    two_instrument_store(store, 24)
    dump(store, out, "1h")
    old = snapshot(out)
    write_bars(store, "AAA-USDT", "1h", bars("2024-01-01", 30, 1).iloc[24:], "t")
    write_bars(store, "CCC-USDT", "1h", bars("2024-01-02 01:00", 3, 3), "t")  # a new listing
    args = ["dump", "--store", str(store), "--qlib-dir", str(out), "--timeframe", "1h", "--update"]
    proc = run_until_paused(args, point, tmp_path / "marker")
    kill(proc)
    now = snapshot(out)
    if point == "update-written":
        # features were appended but nothing was committed: the old calendar and instruments still rule,
        # and every old feature file still starts with its old bytes
        for rel in ("calendars/60min.txt", "instruments/all.txt", ".qlib_crypto/state.json"):
            assert now[rel] == old[rel]
        for rel, data in old.items():
            assert now[rel][: len(data)] == data
        assert (out / ".qlib_crypto" / "journal.json").exists()
    else:
        # committed and part-way through the renames: the first staged file is in place, the calendar
        # (renamed last) is still the old one
        journal = json.loads((out / ".qlib_crypto" / "journal.json").read_text())
        assert journal["phase"] == "commit"
        first = journal["staged"][0]
        assert not (out / ".qlib_crypto" / "staged" / first).exists() and now[first] != old.get(first)
        assert (out / ".qlib_crypto" / "staged" / journal["staged"][-1]).exists()
        assert now["calendars/60min.txt"] == old["calendars/60min.txt"]
    # the next run rolls back or completes the interrupted update, then brings the directory up to date
    dump(store, out, "1h", update=True)
    assert not (out / ".qlib_crypto" / "journal.json").exists()
    dump(store, tmp_path / "fresh", "1h")
    assert snapshot(out) == snapshot(tmp_path / "fresh")


def test_swap_fallback_and_recovery_between_renames(tmp_path, monkeypatch):
    import importlib

    dump_mod = importlib.import_module("qlib_crypto.provider.dump")  # the module, not the function

    store, out = tmp_path / "store", tmp_path / "okx" / "60min"
    two_instrument_store(store, 24)
    dump(store, out, "1h")
    old = snapshot(out)
    # a filesystem without renameat2(RENAME_EXCHANGE): two renames
    monkeypatch.setattr(dump_mod, "_exchange", lambda a, b: False)
    write_bars(store, "AAA-USDT", "1h", bars("2024-01-01", 30, 1).iloc[24:], "t")
    dump(store, out, "1h")
    new = snapshot(out)
    assert new != old and not list((tmp_path / "okx").glob(".60min.*-*"))
    # interrupted between the two renames: the directory is missing and the old one sits beside it
    os.rename(out, tmp_path / "okx" / ".60min.old-12345")
    (tmp_path / "okx" / ".60min.staging-12345").mkdir()
    dump_mod.recover(out)
    assert snapshot(out) == new and not list((tmp_path / "okx").glob(".60min.*-*"))


def test_failing_update_rolls_back_at_once(tmp_path, monkeypatch):
    import importlib

    binfmt = importlib.import_module("qlib_crypto.provider.binfmt")
    store, out = tmp_path / "store", tmp_path / "q"
    two_instrument_store(store, 24)
    dump(store, out, "1h")
    old = snapshot(out)
    write_bars(store, "AAA-USDT", "1h", bars("2024-01-01", 30, 1).iloc[24:], "t")
    write_bars(store, "CCC-USDT", "1h", bars("2024-01-02 01:00", 3, 3), "t")
    real, calls = binfmt.truncate_and_append, []

    def failing(path, keep, values):
        calls.append(path)
        if len(calls) == 12:
            raise OSError(28, "No space left on device")
        return real(path, keep, values)

    monkeypatch.setattr(binfmt, "truncate_and_append", failing)
    with pytest.raises(OSError, match="No space"):
        dump(store, out, "1h", update=True)
    assert snapshot(out) == old and not (out / "features" / "ccc-usdt").exists()
    monkeypatch.setattr(binfmt, "truncate_and_append", real)
    dump(store, out, "1h", update=True)
    dump(store, tmp_path / "fresh", "1h")
    assert snapshot(out) == snapshot(tmp_path / "fresh")


@pytest.mark.parametrize("timeframe, source", [("1m", None), ("15min", "1m")])
def test_minute_updates_across_monthly_store_files_equal_full_dump(tmp_path, timeframe, source):
    """1m bars are stored in monthly files: updates that cross a month end still equal a full dump."""

    def minute_bars(start, n, seed, drop=()):
        df = bars(start, n, seed, drop=drop)
        df["datetime"] = pd.date_range(start, periods=n, freq="min", tz="UTC").delete(list(drop))
        return df

    store, upd, full = tmp_path / "store", tmp_path / "upd", tmp_path / "full"
    frames = {
        "AAA-USDT": minute_bars("2024-01-31 22:00", 240, 1, drop=range(100, 130)),
        "BBB-USDT": minute_bars("2024-01-31 23:10", 150, 2),
    }
    cuts = pd.to_datetime(
        [
            "2024-01-31 22:00",
            "2024-01-31 23:07",
            "2024-01-31 23:59",
            "2024-02-01 00:20",
            "2024-02-01 00:21",
            "2024-02-01 02:00",
        ],
        utc=True,
    )
    for i, (lo, hi) in enumerate(zip(cuts[:-1], cuts[1:])):
        for name, df in frames.items():
            part = df[(df["datetime"] >= lo) & (df["datetime"] < hi)]
            if len(part):
                write_bars(store, name, "1m", part, "t")
        dump(store, upd, timeframe, source_timeframe=source, update=i > 0)
        dump(store, full, timeframe, source_timeframe=source)
        assert snapshot(upd) == snapshot(full), (lo, hi)
        if timeframe == "1m":
            # independent read-back of the updated directory against the input bars so far
            assert_close_matches_input(upd, "1min", frames, cuts[0], hi)
    assert sorted(p.name for p in (store / "bars" / "1m" / "AAA-USDT").glob("*.parquet")) == [
        "2024-01.parquet",
        "2024-02.parquet",
    ]
