"""A partial last ``day`` bar built from hourly bars carries only the funding settled up to its last hourly bar;
once the day is completed, ``dump --update`` rewrites it with every settlement of the day (byte-identical to a
full dump). Expected values are worked out by hand from the rates below."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from qlib_crypto.cli import main
from qlib_crypto.store import write_bars, write_funding

SWAP = "BTC-USDT-SWAP"
# settlements every 8 hours on 2024-03-01 and 2024-03-02 (UTC)
RATES = {
    "2024-03-01 00:00": 1.0e-4,
    "2024-03-01 08:00": 2.0e-4,
    "2024-03-01 16:00": -0.5e-4,
    "2024-03-02 00:00": 3.0e-4,
    "2024-03-02 08:00": -1.0e-4,
    "2024-03-02 16:00": 4.0e-4,
}


def hourly(start: str, n: int, first_close: float) -> pd.DataFrame:
    """n hourly bars whose close rises by 1 per bar, volume 2 + bar number, amount = volume x close."""
    idx = pd.date_range(start, periods=n, freq="h", tz="UTC")
    close = first_close + np.arange(n, dtype=float)
    volume = 2.0 + np.arange(n, dtype=float)
    return pd.DataFrame(
        {
            "datetime": idx,
            "open": close - 0.5,
            "high": close + 1.0,
            "low": close - 1.0,
            "close": close,
            "volume": volume,
            "amount": volume * close,
        }
    )


def funding() -> pd.DataFrame:
    return pd.DataFrame({"funding_time": pd.to_datetime(list(RATES), utc=True), "funding_rate": list(RATES.values())})


def read_day(qdir: Path, field: str) -> dict[str, float]:
    """``{day: value}`` of one field, read by hand: float32 LE, first value = start index in the calendar."""
    cal = (qdir / "calendars" / "day.txt").read_text().split()
    raw = np.fromfile(qdir / "features" / SWAP.lower() / f"{field}.day.bin", dtype="<f4")
    start = int(raw[0])
    return {cal[start + i]: float(v) for i, v in enumerate(raw[1:])}


def dump_day(store: Path, qdir: Path, *extra: str) -> None:
    code = main(
        ["dump", "--store", str(store), "--qlib-dir", str(qdir), "--timeframe", "1d", "--from-timeframe", "1h", *extra]
    )
    assert code == 0


def snapshot(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def test_partial_day_funding_stops_at_its_last_bar_and_update_completes_it(tmp_path):
    store, upd = tmp_path / "store", tmp_path / "upd"
    series = hourly("2024-03-01 00:00", 48, 100.0)  # two whole days
    # first stored up to 2024-03-02 10:00: the second day stops at its 10:00 bar (35 hourly bars)
    write_bars(store, SWAP, "1h", series.iloc[:35], "test")
    write_funding(store, SWAP, funding(), "test")  # the 2024-03-02 16:00 settlement is after the last bar
    dump_day(store, upd)

    rate = read_day(upd, "funding_rate")
    assert list(rate) == ["2024-03-01", "2024-03-02"]
    assert rate["2024-03-01"] == pytest.approx(1.0e-4 + 2.0e-4 - 0.5e-4, rel=1e-6)
    assert rate["2024-03-02"] == pytest.approx(3.0e-4 - 1.0e-4, rel=1e-6)  # 00:00 and 08:00 only, not 16:00
    close = read_day(upd, "close")
    assert close["2024-03-02"] == 134.0  # the 10:00 bar: the 35th close, 100 + 34

    # the day completes (11:00 .. 23:00); the update rewrites the partial day with the 16:00 settlement
    write_bars(store, SWAP, "1h", series.iloc[35:], "test")
    dump_day(store, upd, "--update")
    rate = read_day(upd, "funding_rate")
    assert rate["2024-03-01"] == pytest.approx(1.0e-4 + 2.0e-4 - 0.5e-4, rel=1e-6)
    assert rate["2024-03-02"] == pytest.approx(3.0e-4 - 1.0e-4 + 4.0e-4, rel=1e-6)
    close, volume = read_day(upd, "close"), read_day(upd, "volume")
    assert close["2024-03-02"] == 147.0  # 23:00 bar: 100 + 47
    assert volume["2024-03-02"] == sum(2.0 + i for i in range(24, 48))  # bars 24 .. 47 of the series

    full = tmp_path / "full"
    dump_day(store, full)
    assert snapshot(upd) == snapshot(full)


def test_settlements_after_the_last_bar_change_nothing_until_bars_arrive(tmp_path):
    """Funding stored ahead of the bars (the 16:00 settlement known before the 16:00 bar) leaves the partial day
    as it is; the same store dumped with and without the early settlement gives the same day bar."""
    with_early, without = tmp_path / "a", tmp_path / "b"
    bars = hourly("2024-03-02 00:00", 11, 50.0)  # 00:00 .. 10:00
    for store, rates in ((with_early, funding()), (without, funding().iloc[:5])):
        write_bars(store / "store", SWAP, "1h", bars, "test")
        write_funding(store / "store", SWAP, rates, "test")
        dump_day(store / "store", store / "q")
    assert read_day(with_early / "q", "funding_rate") == read_day(without / "q", "funding_rate")
    assert read_day(without / "q", "funding_rate")["2024-03-02"] == pytest.approx(3.0e-4 - 1.0e-4, rel=1e-6)
