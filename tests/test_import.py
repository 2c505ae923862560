"""``qlib-crypto import``: formats, timezones, symbol columns, merge with stored bars, and clear failures that
leave the store untouched."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from qlib_crypto import store
from qlib_crypto.cli import main
from qlib_crypto.errors import ConfigError, ImportDataError
from qlib_crypto.sources.files import FileSource, normalise_symbol, parse_column_map, read_bar_file

COLS = ["open", "high", "low", "close", "volume", "amount"]
# Six hourly bars written by hand (2024-03-01 00:00 .. 05:00 UTC); amount is arbitrary but positive.
ROWS = [
    [100.0, 101.0, 99.0, 100.5, 10.0, 1003.5],
    [100.5, 102.25, 100.0, 101.5, 12.0, 1214.0],
    [101.5, 103.0, 101.0, 102.5, 5.5, 563.75],
    [102.5, 102.5, 98.125, 99.0, 20.0, 1990.0],
    [99.0, 100.0, 97.5, 98.0, 7.25, 714.0],
    [98.0, 99.5, 97.0, 99.25, 3.0, 295.5],
]
EPOCH_S0 = 1709251200  # 2024-03-01T00:00:00Z, computed as 19783 days * 86400 s
TIMES = pd.date_range("2024-03-01", periods=6, freq="1h", tz="UTC")


def expected(rows=ROWS, times=TIMES) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=COLS, index=pd.DatetimeIndex(times, name="datetime"), dtype="float64")
    return frame


def write_csv(
    path: Path, stamps: list, rows=ROWS, header="timestamp,open,high,low,close,volume,amount", extra=None
) -> Path:
    lines = [header]
    for i, (stamp, row) in enumerate(zip(stamps, rows)):
        cells = [str(stamp)] + [repr(v) for v in row] + ([str(extra[i])] if extra else [])
        lines.append(",".join(cells))
    path.write_text("\n".join(lines) + "\n")
    return path


def store_hashes(root: Path) -> dict[str, str]:
    if not root.exists():
        return {}
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def run(args: list[str]) -> int:
    return main(["import", *[str(a) for a in args]])


@pytest.fixture
def st(tmp_path: Path) -> Path:
    return tmp_path / "store"


def test_epoch_second_constant():
    assert pd.Timestamp(EPOCH_S0, unit="s", tz="UTC") == TIMES[0]


# ----------------------------------------------------------------------------- formats
def test_csv_iso_strings_with_z(tmp_path, st, capsys):
    f = write_csv(tmp_path / "btc.csv", [t.strftime("%Y-%m-%dT%H:%M:%SZ") for t in TIMES])
    assert run([f, "--instrument", "BTC-USDT", "--timeframe", "1h", "--store", st]) == 0
    pd.testing.assert_frame_equal(store.read_bars(st, "BTC-USDT", "1h"), expected(), check_freq=False)
    out = capsys.readouterr().out
    assert "6 rows read, 6 added, 0 identical, 0 conflicts" in out
    manifest = yaml.safe_load(next((st / "bars" / "1h" / "BTC-USDT").glob("*.manifest.yaml")).read_text())
    assert manifest["source"] == "import:btc.csv" and manifest["row_count"] == 6


@pytest.mark.parametrize("unit,scale,fmt", [("s", 1, "auto"), ("ms", 1000, "auto"), ("s", 1, "s"), ("ms", 1000, "ms")])
def test_csv_epoch_seconds_and_milliseconds(tmp_path, st, unit, scale, fmt):
    stamps = [(EPOCH_S0 + 3600 * i) * scale for i in range(6)]
    f = write_csv(tmp_path / f"eth_{unit}.csv", stamps, header="ts,open,high,low,close,volume,amount")
    assert run([f, "--instrument", "ETH-USDT-SWAP", "--timeframe", "1h", "--time-format", fmt, "--store", st]) == 0
    pd.testing.assert_frame_equal(store.read_bars(st, "ETH-USDT-SWAP", "1h"), expected(), check_freq=False)


@pytest.mark.parametrize(
    "stamps,tz",
    [
        # Shanghai is UTC+8 all year: local 08:00 is 00:00 UTC
        ([f"2024-03-01 {8 + i:02d}:00:00" for i in range(6)], "Asia/Shanghai"),
        # New York on 2024-03-01 is EST, UTC-5: local 19:00 on Feb 29 is 00:00 UTC on Mar 1
        (
            [
                "2024-02-29 19:00",
                "2024-02-29 20:00",
                "2024-02-29 21:00",
                "2024-02-29 22:00",
                "2024-02-29 23:00",
                "2024-03-01 00:00",
            ],
            "America/New_York",
        ),
        # explicit offsets win over --timezone
        ([f"2024-03-01T{2 + i:02d}:00:00+02:00" for i in range(6)], "Asia/Tokyo"),
    ],
)
def test_timezone_conversion(tmp_path, st, stamps, tz):
    f = write_csv(tmp_path / "local.csv", stamps)
    assert run([f, "--instrument", "BTC-USDT", "--timeframe", "1h", "--timezone", tz, "--store", st]) == 0
    pd.testing.assert_frame_equal(store.read_bars(st, "BTC-USDT", "1h"), expected(), check_freq=False)


def test_parquet_with_column_mapping_and_datetime_dtype(tmp_path, st):
    frame = pd.DataFrame(ROWS, columns=["o", "h", "l", "c", "base_vol", "qv"])
    frame.insert(0, "open_time", TIMES.tz_convert("Europe/Berlin"))  # tz-aware column, converted to UTC
    path = tmp_path / "sol.parquet"
    frame.to_parquet(path)
    args = [path, "--instrument", "SOL-USDT", "--timeframe", "1h", "--store", st, "--datetime-column", "open_time"]
    for canon, col in zip(COLS, ["o", "h", "l", "c", "base_vol", "qv"]):
        args += ["--column", f"{canon}={col}"]
    assert run(args) == 0
    pd.testing.assert_frame_equal(store.read_bars(st, "SOL-USDT", "1h"), expected(), check_freq=False)


def test_symbol_column_with_two_instruments(tmp_path, st, capsys):
    # rows interleaved: even rows BTC (ccxt spelling BTC/USDT), odd rows ETH swap (ccxt BTC/USDT:USDT style)
    stamps, symbols, rows = [], [], []
    for i in range(6):
        stamps += [EPOCH_S0 * 1000 + 3600_000 * i] * 2
        symbols += ["BTC/USDT", "ETH/USDT:USDT"]
        rows += [ROWS[i], [v * 2 for v in ROWS[i]]]
    f = write_csv(
        tmp_path / "multi.csv", stamps, rows=rows, header="time,open,high,low,close,volume,amount,sym", extra=symbols
    )
    assert run([f, "--symbol-column", "sym", "--timeframe", "1h", "--store", st]) == 0
    pd.testing.assert_frame_equal(store.read_bars(st, "BTC-USDT", "1h"), expected(), check_freq=False)
    doubled = [[v * 2 for v in r] for r in ROWS]
    pd.testing.assert_frame_equal(store.read_bars(st, "ETH-USDT-SWAP", "1h"), expected(doubled), check_freq=False)
    assert sorted(store.list_instruments(st, "1h")) == ["BTC-USDT", "ETH-USDT-SWAP"]
    assert "12 rows read, 12 added" in capsys.readouterr().out
    # --instrument restricts a multi-instrument file
    st2 = st.parent / "store2"
    assert run([f, "--symbol-column", "sym", "--instrument", "ETH-USDT-SWAP", "--timeframe", "1h", "--store", st2]) == 0
    assert store.list_instruments(st2, "1h") == ["ETH-USDT-SWAP"]


def test_derive_amount_from_typical_price(tmp_path, st):
    f = tmp_path / "noamount.csv"
    f.write_text(
        "date,Open,High,Low,Close,Volume\n"
        + "".join(f"{t.strftime('%Y-%m-%d %H:%M')},{r[0]},{r[1]},{r[2]},{r[3]},{r[4]}\n" for t, r in zip(TIMES, ROWS))
    )
    assert run([f, "--instrument", "BTC-USDT", "--timeframe", "1h", "--store", st]) != 0  # amount missing
    assert run([f, "--instrument", "BTC-USDT", "--timeframe", "1h", "--store", st, "--derive-amount"]) == 0
    got = store.read_bars(st, "BTC-USDT", "1h")
    # first bar: 10 * (101 + 99 + 100.5) / 3 = 1001.666...
    assert got["amount"].iloc[0] == pytest.approx(10 * 300.5 / 3)
    assert got["amount"].iloc[3] == pytest.approx(20 * (102.5 + 98.125 + 99.0) / 3)


# ----------------------------------------------------------------------------- merge with stored bars
def test_overlap_merge_identical_once_conflicts_kept_unless_overwrite(tmp_path, st, capsys):
    first = write_csv(tmp_path / "first.csv", [t.isoformat() for t in TIMES[:4]], rows=ROWS[:4])
    changed = [list(r) for r in ROWS[2:]]
    changed[1][3] = 99.5  # bar 03:00 close differs from the stored 99.0 (still a valid bar)
    second = write_csv(tmp_path / "second.csv", [t.isoformat() for t in TIMES[2:]], rows=changed)
    assert run([first, "--instrument", "BTC-USDT", "--timeframe", "1h", "--store", st]) == 0
    capsys.readouterr()
    assert run([second, "--instrument", "BTC-USDT", "--timeframe", "1h", "--store", st]) == 0
    out = capsys.readouterr().out
    assert "4 rows read, 2 added, 1 identical, 1 conflicts (0 overwritten)" in out
    assert "2024-03-01T03:00" in out and "--overwrite" in out
    got = store.read_bars(st, "BTC-USDT", "1h")
    pd.testing.assert_frame_equal(got, expected(), check_freq=False)  # stored 03:00 bar kept
    assert run([second, "--instrument", "BTC-USDT", "--timeframe", "1h", "--store", st, "--overwrite"]) == 0
    assert "1 conflicts (1 overwritten)" in capsys.readouterr().out
    want = [list(r) for r in ROWS]
    want[3][3] = 99.5
    pd.testing.assert_frame_equal(store.read_bars(st, "BTC-USDT", "1h"), expected(want), check_freq=False)


def test_invalid_bars_are_quarantined_and_counted(tmp_path, st, capsys):
    rows = [list(r) for r in ROWS]
    rows[1][1] = 100.0  # high 100 < close 101.5: not a valid bar
    rows[4][4] = -1.0  # negative volume
    f = write_csv(tmp_path / "q.csv", [t.isoformat() for t in TIMES], rows=rows)
    assert run([f, "--instrument", "BTC-USDT", "--timeframe", "1h", "--store", st]) == 0
    out = capsys.readouterr().out
    assert "6 rows read, 4 added" in out and "2 quarantined" in out
    got = store.read_bars(st, "BTC-USDT", "1h")
    assert list(got.index) == [TIMES[0], TIMES[2], TIMES[3], TIMES[5]]
    quarantined = pd.concat(pd.read_parquet(p) for p in (st / "quarantine").rglob("*.parquet"))
    assert len(quarantined) == 2 and set(quarantined["source"]) == {"import:q.csv"}


# ----------------------------------------------------------------------------- failures leave the store untouched
@pytest.fixture
def filled(tmp_path, st) -> Path:
    f = write_csv(tmp_path / "base.csv", [t.isoformat() for t in TIMES])
    assert run([f, "--instrument", "BTC-USDT", "--timeframe", "1h", "--store", st]) == 0
    return st


def bad_files(tmp_path: Path) -> dict[str, tuple[Path, list[str]]]:
    later = pd.date_range("2024-03-01 06:00", periods=6, freq="1h", tz="UTC")
    iso = [t.isoformat() for t in later]
    missing = tmp_path / "missing.csv"
    missing.write_text(
        "timestamp,open,high,low,volume,amount\n"
        + "".join(f"{s},{r[0]},{r[1]},{r[2]},{r[4]},{r[5]}\n" for s, r in zip(iso, ROWS))
    )
    unparseable = write_csv(tmp_path / "unparseable.csv", iso[:3] + ["2024-03-01 9am"] + iso[4:])
    misaligned = write_csv(tmp_path / "misaligned.csv", iso[:2] + ["2024-03-01T08:30:00+00:00"] + iso[3:])
    text_price = tmp_path / "text.csv"
    text_price.write_text(
        "timestamp,open,high,low,close,volume,amount\n"
        + "".join(
            f"{s},{r[0]},{r[1]},{r[2]},{'1,5' if i == 4 else r[3]},{r[4]},{r[5]}\n".replace(",1,5,", ',"1,5",')
            for i, (s, r) in enumerate(zip(iso, ROWS))
        )
    )
    return {
        "missing": (missing, ["missing.csv", "'close'", "--column close="]),
        "unparseable": (unparseable, ["unparseable.csv", "'2024-03-01 9am'", "'timestamp'", "row 4 (line 5)"]),
        "misaligned": (misaligned, ["misaligned.csv", "08:30", "row 3 (line 4)", "1h"]),
        "text": (text_price, ["text.csv", "'1,5'", "'close'", "row 5 (line 6)", "decimal"]),
    }


@pytest.mark.parametrize("case", ["missing", "unparseable", "misaligned", "text"])
def test_bad_file_clear_error_nonzero_exit_store_unchanged(tmp_path, filled, capsys, case):
    path, needles = bad_files(tmp_path)[case]
    before = store_hashes(filled)
    capsys.readouterr()
    code = run([path, "--instrument", "BTC-USDT", "--timeframe", "1h", "--store", filled])
    err = capsys.readouterr().err
    assert code != 0
    assert err.count("\n") == 1 and err.startswith("error: ")
    for needle in needles:
        assert needle in err, (needle, err)
    assert store_hashes(filled) == before


def test_good_and_bad_file_together_write_nothing(tmp_path, filled):
    later = pd.date_range("2024-03-01 06:00", periods=6, freq="1h", tz="UTC")
    good = write_csv(tmp_path / "good.csv", [t.isoformat() for t in later])
    bad, _ = bad_files(tmp_path)["misaligned"]
    before = store_hashes(filled)
    assert run([good, bad, "--instrument", "BTC-USDT", "--timeframe", "1h", "--store", filled]) != 0
    assert store_hashes(filled) == before
    assert run([good, "--instrument", "BTC-USDT", "--timeframe", "1h", "--store", filled]) == 0
    assert len(store.read_bars(filled, "BTC-USDT", "1h")) == 12


def test_close_times_and_wrong_timezone_get_specific_hints(tmp_path):
    closes = write_csv(tmp_path / "c.csv", [(EPOCH_S0 + 3600 * (i + 1)) * 1000 - 1 for i in range(6)])
    with pytest.raises(ImportDataError, match="close times"):
        read_bar_file(closes, "1h", instrument="BTC-USDT")
    shifted = write_csv(tmp_path / "d.csv", [f"2024-03-0{1 + i} 00:00" for i in range(6)])
    with pytest.raises(ImportDataError, match="wrong --timezone"):
        read_bar_file(shifted, "1d", instrument="BTC-USDT", timezone="Asia/Kolkata")  # UTC+5:30


def test_option_errors(tmp_path, st):
    f = write_csv(tmp_path / "a.csv", [t.isoformat() for t in TIMES])
    assert run([f, "--timeframe", "1h", "--store", st]) != 0  # no --instrument
    assert run([f, "--instrument", "BTC-USDT", "--timeframe", "7m", "--store", st]) != 0
    assert run([f, "--instrument", "BTC-USDT", "--timeframe", "1h", "--timezone", "Mars/Base", "--store", st]) != 0
    assert run([tmp_path / "nope.csv", "--instrument", "BTC-USDT", "--timeframe", "1h", "--store", st]) != 0
    assert run([f, "--instrument", "BTC-USDT", "--timeframe", "1h", "--column", "opn=o", "--store", st]) != 0
    assert not st.exists()
    with pytest.raises(ConfigError):
        parse_column_map(["open"])
    assert parse_column_map(["open=o", "amount=quote vol"]) == {"open": "o", "amount": "quote vol"}
    numbers = write_csv(tmp_path / "us.csv", [(EPOCH_S0 + 3600 * i) * 1_000_000 for i in range(6)])
    with pytest.raises(ImportDataError, match="milliseconds"):
        read_bar_file(numbers, "1h", instrument="BTC-USDT")


def test_normalise_symbol():
    assert normalise_symbol("BTC/USDT") == "BTC-USDT"
    assert normalise_symbol("eth/usdt:USDT") == "ETH-USDT-SWAP"
    assert normalise_symbol("SOL-USDT-SWAP") == "SOL-USDT-SWAP"


def test_file_source_behind_the_bar_source_interface(tmp_path):
    f = write_csv(tmp_path / "a.csv", [t.isoformat() for t in TIMES])
    src = FileSource([f], "1h", instrument="BTC-USDT")
    assert src.list_instruments() == ["BTC-USDT"] and src.name == "import:a.csv"
    start = int(TIMES[1].value // 1_000_000)
    end = int(TIMES[4].value // 1_000_000)
    chunk = pd.concat(list(src.fetch_bars("BTC-USDT", "1h", start, end)))
    assert list(chunk["datetime"]) == list(TIMES[1:4])
    np.testing.assert_array_equal(chunk[COLS].to_numpy(), np.array(ROWS[1:4]))
    with pytest.raises(ConfigError):
        list(src.fetch_bars("BTC-USDT", "4h", start, end))


def test_store_export_reimported_is_all_identical(tmp_path, st, capsys):
    # synthetic bars have full-precision floats: a CSV export read back must give bit-identical values
    from qlib_crypto.sources.synthetic import SyntheticSource

    bars = SyntheticSource(["DOGE-USDT"], seed=3).bars("DOGE-USDT", "1h", "2022-01-01", "2022-01-03")
    store.write_bars(st, "DOGE-USDT", "1h", bars, source="synthetic")
    exported = tmp_path / "export.csv"
    store.read_bars(st, "DOGE-USDT", "1h").to_csv(exported)
    before = store_hashes(st / "bars")
    capsys.readouterr()
    assert run([exported, "--instrument", "DOGE-USDT", "--timeframe", "1h", "--store", st]) == 0
    n = len(bars)
    assert n > 40 and f"{n} rows read, 0 added, {n} identical, 0 conflicts" in capsys.readouterr().out
    assert store_hashes(st / "bars") == before
