"""The import recipes of docs/import.md ("Recipes"): each documented command is taken from the docs and run
through the real CLI on fixture files in the exact layout of that export (tests/fixtures/recipes/, sources in
its README.md); the stored bars are compared with the fixture files read here with the standard library
(csv, json, zipfile; pyarrow for Feather), independently of the importer."""

from __future__ import annotations

import csv
import io
import json
import re
import shlex
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from qlib_crypto import store
from qlib_crypto.cli import main

FIX = Path(__file__).parent / "fixtures" / "recipes"
DOC = Path(__file__).resolve().parents[1] / "docs" / "import.md"
H = 3_600_000


# ------------------------------------------------------------------------------------------------- helpers
def recipe_commands() -> list[list[str]]:
    """Every ``qlib-crypto import`` command in the bash blocks of the docs' Recipes section."""
    section = DOC.read_text().split("\n## Recipes\n", 1)[1].split("\n## ", 1)[0]
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", section, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            if line.strip().startswith("qlib-crypto import "):
                commands.append(shlex.split(line))
    return commands


def run_recipe(fixture: str, st: Path, capsys) -> tuple[list[str], str]:
    """Run the docs' command naming ``fixture`` with the fixture files and the store ``st``; return its
    arguments and stdout."""
    found = [c for c in recipe_commands() if any(Path(a).name == fixture for a in c)]
    assert len(found) == 1, (fixture, found)
    args, it = [], iter(found[0][1:])
    for arg in it:
        if arg == "--store":
            args += ["--store", str(st)]
            next(it)
        else:
            args.append(str(FIX / Path(arg).name) if (FIX / Path(arg).name).is_file() else arg)
    capsys.readouterr()
    code = main(args)
    cap = capsys.readouterr()
    assert code == 0, cap.err
    return args, cap.out


def run(args, capsys) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(["import", *[str(a) for a in args]])
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def utc(ms: int) -> pd.Timestamp:
    return pd.Timestamp(int(ms), unit="ms", tz="UTC")


def assert_stored(st: Path, instrument: str, timeframe: str, rows: list[tuple], *, exact_amount: bool = True):
    """The store holds exactly ``rows`` = (open ms, open, high, low, close, volume, amount), in time order."""
    rows = sorted(rows)
    bars = store.read_bars(st, instrument, timeframe)
    assert list(bars.index) == [utc(r[0]) for r in rows]
    for j, col in enumerate(["open", "high", "low", "close", "volume"], start=1):
        assert bars[col].tolist() == [r[j] for r in rows], col
    if exact_amount:
        assert bars["amount"].tolist() == [r[6] for r in rows]
    else:
        np.testing.assert_allclose(bars["amount"].to_numpy(), [r[6] for r in rows], rtol=1e-13, atol=0)


def typical(h: float, lo: float, c: float) -> float:
    return (h + lo + c) / 3.0


# ------------------------------------------------------------------------------------------ CryptoDataDownload
def read_cdd(name: str) -> list[tuple]:
    lines = (FIX / name).read_text().splitlines()
    assert lines[0] == "https://www.CryptoDataDownload.com"
    out = []
    for r in csv.DictReader(lines[1:]):
        r = {k.lower(): v for k, v in r.items()}
        unix = int(r["unix"])
        ms = unix * 1000 if unix < 10**11 else unix  # seconds in older files, ms in Binance files
        quote = r.get("volume usdt", r.get("volume usd"))
        out.append(
            (
                ms,
                float(r["open"]),
                float(r["high"]),
                float(r["low"]),
                float(r["close"]),
                float(r["volume btc"]),
                float(quote),
            )
        )
    return out


def test_cryptodatadownload_hourly_ms_newest_first(tmp_path, capsys):
    st = tmp_path / "store"
    _, out = run_recipe("Binance_BTCUSDT_1h.csv", st, capsys)
    rows = read_cdd("Binance_BTCUSDT_1h.csv")
    assert rows[0][0] > rows[-1][0]  # the file is newest first
    assert_stored(st, "BTC-USDT", "1h", rows)  # BTCUSDT split by the volume columns' currencies
    assert "36 rows read, 36 added" in out
    # the first data line, by hand: 1704193200000 = 2024-01-02 11:00 UTC
    bar = store.read_bars(st, "BTC-USDT", "1h").loc[pd.Timestamp("2024-01-02 11:00", tz="UTC")]
    assert (bar["close"], bar["volume"], bar["amount"]) == (40466.68, 1783.80115, 72127139.25)


def test_cryptodatadownload_daily_seconds_lower_case_header(tmp_path, capsys):
    st = tmp_path / "store"
    run_recipe("Bitstamp_BTCUSD_d.csv", st, capsys)
    rows = read_cdd("Bitstamp_BTCUSD_d.csv")
    assert_stored(st, "BTC-USD", "1d", rows)  # BTC/USD -> BTC-USD
    bar = store.read_bars(st, "BTC-USD", "1d").loc[pd.Timestamp("2023-12-30", tz="UTC")]  # unix 1703894400
    assert (bar["close"], bar["volume"], bar["amount"]) == (38021.0, 652.51865, 24841749.35206547)


def test_cryptodatadownload_quote_volume_only(tmp_path, capsys):
    """Only `Volume USD`: it is the amount, and volume = amount / typical price ((110 + 90 + 100) / 3 = 100)."""
    f = tmp_path / "Gemini_BTCUSD_1h.csv"
    f.write_text(
        "https://www.CryptoDataDownload.com\n"
        "unix,date,symbol,open,high,low,close,Volume USD\n"
        "1704070800,2024-01-01 01:00:00,BTC/USD,100,110,90,100,2500\n"
        "1704067200,2024-01-01 00:00:00,BTC/USD,95,105,90,102,1940\n"
    )
    st = tmp_path / "store"
    code, _, err = run([f, "--format", "cryptodatadownload", "--timeframe", "1h", "--store", st], capsys)
    assert code == 0, err
    assert_stored(
        st,
        "BTC-USD",
        "1h",
        [
            (1704067200000, 95.0, 105.0, 90.0, 102.0, 1940 / 99.0, 1940.0),
            (1704070800000, 100.0, 110.0, 90.0, 100.0, 25.0, 2500.0),
        ],
    )


def test_cryptodatadownload_without_format_says_what_to_do(tmp_path, capsys):
    f, st = FIX / "Binance_BTCUSDT_1h.csv", tmp_path / "store"
    code, _, err = run([f, "--instrument", "BTC-USDT", "--timeframe", "1h", "--store", st], capsys)
    assert code == 2 and err.count("\n") == 1
    assert "--skip-rows 1" in err and "--format cryptodatadownload" in err
    code, _, err = run([f, "--skip-rows", "1", "--instrument", "BTC-USDT", "--timeframe", "1h", "--store", st], capsys)
    assert code == 2 and "'Volume BTC', 'Volume USDT'" in err and "--column volume=" in err
    assert not st.exists()
    code, _, err = run(
        [
            f,
            "--skip-rows",
            "1",
            "--column",
            "volume=Volume BTC",
            "--column",
            "amount=Volume USDT",
            "--instrument",
            "BTC-USDT",
            "--timeframe",
            "1h",
            "--store",
            st,
        ],
        capsys,
    )  # as the docs say
    assert code == 0, err
    assert_stored(st, "BTC-USDT", "1h", read_cdd("Binance_BTCUSDT_1h.csv"))


# ---------------------------------------------------------------------------------------------------- Binance
def read_binance(name: str) -> list[tuple]:
    path = FIX / name
    if path.suffix == ".zip":
        with zipfile.ZipFile(path) as zf:
            assert zf.namelist() == [path.stem + ".csv"]
            text = zf.read(zf.namelist()[0]).decode()
    else:
        text = path.read_text()
    out = []
    for r in csv.reader(io.StringIO(text)):
        if not r[0].isdigit():  # futures files have a header row
            continue
        t = int(r[0])
        ms = t // 1000 if t >= 10**14 else t  # microseconds in spot files from 2025
        out.append((ms, float(r[1]), float(r[2]), float(r[3]), float(r[4]), float(r[5]), float(r[7])))
    return out


def test_binance_spot_milliseconds_and_microseconds(tmp_path, capsys):
    st = tmp_path / "store"
    _, out = run_recipe("BTCUSDT-1h-2025-01-01.zip", st, capsys)
    rows = read_binance("BTCUSDT-1h-2024-01-01.csv") + read_binance("BTCUSDT-1h-2025-01-01.zip")
    assert_stored(st, "BTC-USDT", "1h", rows)
    assert "48 rows read, 48 added" in out
    assert "BTCUSDT-1h-2025-01-01.zip 1h" in out  # the timeframe from the file name
    first_2025 = store.read_bars(st, "BTC-USDT", "1h").loc[pd.Timestamp("2025-01-01 00:00", tz="UTC")]
    assert (first_2025["open"], first_2025["volume"]) == (93576.0, 446.33321)  # 1735689600000000 us, by hand


def test_binance_futures_file_with_header(tmp_path, capsys):
    st = tmp_path / "store"
    run_recipe("ETHUSDT-4h-2024-01-02.csv", st, capsys)
    rows = read_binance("ETHUSDT-4h-2024-01-02.csv")
    assert len(rows) == 6 and rows[1][0] - rows[0][0] == 4 * H
    assert_stored(st, "ETH-USDT-SWAP", "4h", rows)


def test_binance_bar_length_is_checked_against_close_time(tmp_path, capsys):
    renamed = tmp_path / "klines.csv"  # no timeframe in the name: close_time - open_time tells it
    shutil.copy(FIX / "BTCUSDT-1h-2024-01-01.csv", renamed)
    st = tmp_path / "store"
    code, _, err = run(
        [renamed, "--format", "binance", "--instrument", "BTC-USDT", "--timeframe", "4h", "--store", st], capsys
    )
    assert code == 2 and err.count("\n") == 1
    assert "60 min long" in err and "--timeframe 1h" in err
    code, _, err = run(
        [
            FIX / "BTCUSDT-1h-2024-01-01.csv",
            "--format",
            "binance",
            "--instrument",
            "BTC-USDT",
            "--timeframe",
            "15m",
            "--store",
            st,
        ],
        capsys,
    )
    assert code == 2 and "holds 1h bars (from its name)" in err
    assert not st.exists()
    code, out, err = run([renamed, "--format", "binance", "--instrument", "BTC-USDT", "--store", st], capsys)
    assert code == 0, err
    assert "klines.csv 1h" in out
    assert_stored(st, "BTC-USDT", "1h", read_binance("BTCUSDT-1h-2024-01-01.csv"))


# ------------------------------------------------------------------------------------------------------ ccxt
def derived(rows: list[list]) -> list[tuple]:
    """ccxt/freqtrade rows [ms, o, h, l, c, v] with amount = volume x (high + low + close) / 3."""
    return [
        (int(t), float(o), float(h), float(lo), float(c), float(v), float(v) * typical(h, lo, c))
        for t, o, h, lo, c, v in rows
    ]


def test_ccxt_json(tmp_path, capsys):
    st = tmp_path / "store"
    run_recipe("ccxt_okx_BTC-USDT_1h.json", st, capsys)
    rows = json.loads((FIX / "ccxt_okx_BTC-USDT_1h.json").read_text())
    assert_stored(st, "BTC-USDT", "1h", derived(rows), exact_amount=False)


def test_ccxt_csv_without_header(tmp_path, capsys):
    st = tmp_path / "store"
    run_recipe("ccxt_okx_ETH-USDT-SWAP_15m.csv", st, capsys)
    rows = [
        [float(x) for x in r] for r in csv.reader((FIX / "ccxt_okx_ETH-USDT-SWAP_15m.csv").read_text().splitlines())
    ]
    assert_stored(st, "ETH-USDT-SWAP", "15m", derived(rows), exact_amount=False)


def test_ccxt_with_header_and_seconds(tmp_path, capsys):
    f = tmp_path / "ohlcv.csv"  # pd.DataFrame(rows, columns=[...]).to_csv(index=False)
    f.write_text("timestamp,open,high,low,close,volume\n1704067200000,10,11,9,10,3\n1704070800000,10,12,10,11,4\n")
    st = tmp_path / "store"
    code, _, err = run(
        [f, "--format", "ccxt", "--instrument", "BTC-USDT", "--timeframe", "1h", "--derive-amount", "--store", st],
        capsys,
    )
    assert code == 0, err
    assert_stored(
        st,
        "BTC-USDT",
        "1h",
        [(1704067200000, 10.0, 11.0, 9.0, 10.0, 3.0, 30.0), (1704070800000, 10.0, 12.0, 10.0, 11.0, 4.0, 44.0)],
    )
    seconds = tmp_path / "seconds.json"
    seconds.write_text("[[1704067200, 10, 11, 9, 10, 3]]")
    code, _, err = run(
        [
            seconds,
            "--format",
            "ccxt",
            "--instrument",
            "BTC-USDT",
            "--timeframe",
            "1h",
            "--derive-amount",
            "--store",
            st,
        ],
        capsys,
    )
    assert code == 2 and err.count("\n") == 1
    assert "timestamp 1704067200 in column 'timestamp' at row 1 looks like epoch seconds, not milliseconds" in err


# ------------------------------------------------------------------------------------------------- freqtrade
def test_freqtrade_feather_and_futures_json(tmp_path, capsys):
    import pyarrow.feather as feather

    st = tmp_path / "store"
    _, out = run_recipe("BTC_USDT-1h.feather", st, capsys)
    table = feather.read_table(FIX / "BTC_USDT-1h.feather").to_pylist()
    spot = [[int(r["date"].timestamp() * 1000), r["open"], r["high"], r["low"], r["close"], r["volume"]] for r in table]
    assert_stored(st, "BTC-USDT", "1h", derived(spot), exact_amount=False)
    futures = json.loads((FIX / "ETH_USDT_USDT-4h-futures.json").read_text())
    assert_stored(st, "ETH-USDT-SWAP", "4h", derived(futures), exact_amount=False)
    assert "BTC_USDT-1h.feather 1h" in out and "4h" in out


def test_freqtrade_names_are_checked(tmp_path, capsys):
    st = tmp_path / "store"
    code, _, err = run(
        [
            FIX / "BTC_USDT-1h.feather",
            "--format",
            "freqtrade",
            "--instrument",
            "ETH-USDT",
            "--derive-amount",
            "--store",
            st,
        ],
        capsys,
    )
    assert code == 2 and "holds BTC-USDT (from its name)" in err
    code, _, err = run(
        [FIX / "BTC_USDT-1h.feather", "--format", "freqtrade", "--timeframe", "4h", "--derive-amount", "--store", st],
        capsys,
    )
    assert code == 2 and "holds 1h bars (from its name)" in err
    mark = tmp_path / "BTC_USDT_USDT-1h-mark.feather"
    shutil.copy(FIX / "BTC_USDT-1h.feather", mark)
    code, _, err = run([mark, "--format", "freqtrade", "--derive-amount", "--store", st], capsys)
    assert code == 2 and "'mark' candles" in err
    code, _, err = run([FIX / "BTC_USDT-1h.feather", "--format", "freqtrade", "--store", st], capsys)
    assert code == 2 and "freqtrade's volume is in base currency: pass --derive-amount" in err
    assert "--volume-in" not in err
    assert not st.exists()


# ---------------------------------------------------------------------------------- volume in quote currency
ROWS = [(1704067200000, 100.0, 110.0, 90.0, 100.0, 2500.0), (1704070800000, 100.0, 106.0, 94.0, 103.0, 3030.0)]


def write_quote_file(path: Path, volume_header: str) -> Path:
    path.write_text(
        f"timestamp,open,high,low,close,{volume_header}\n"
        + "".join(f"{t},{o},{h},{lo},{c},{q}\n" for t, o, h, lo, c, q in ROWS)
    )
    return path


def test_missing_amount_hint_for_a_quote_volume_column_never_says_derive(tmp_path, capsys):
    f, st = write_quote_file(tmp_path / "q.csv", "Volume USDT"), tmp_path / "store"
    code, _, err = run(
        [f, "--instrument", "BTC-USDT", "--timeframe", "1h", "--column", "volume=Volume USDT", "--store", st], capsys
    )
    assert code == 2 and err.count("\n") == 1
    assert "looks like volume in quote currency" in err and "--volume-in quote" in err
    assert "--derive-amount" not in err
    code, _, err = run(
        [
            f,
            "--instrument",
            "BTC-USDT",
            "--timeframe",
            "1h",
            "--column",
            "volume=Volume USDT",
            "--volume-in",
            "quote",
            "--store",
            st,
        ],
        capsys,
    )
    assert code == 0, err
    # amount = the file's quote volume; volume = amount / ((high + low + close) / 3): 2500 / 100, 3030 / 101
    assert_stored(st, "BTC-USDT", "1h", [(t, o, h, lo, c, q / typical(h, lo, c), q) for t, o, h, lo, c, q in ROWS])
    assert store.read_bars(st, "BTC-USDT", "1h")["volume"].tolist() == [25.0, 30.0]


def test_missing_amount_hint_for_a_plain_volume_gives_both_cases(tmp_path, capsys):
    f = write_quote_file(tmp_path / "plain.csv", "volume")
    code, _, err = run([f, "--instrument", "BTC-USDT", "--timeframe", "1h", "--store", tmp_path / "s"], capsys)
    assert code == 2
    assert "if 'volume' is in quote currency, pass --volume-in quote" in err
    assert "if it is in base currency, pass --derive-amount" in err


@pytest.mark.parametrize(
    "extra, needle",
    [
        (["--volume-in", "quote", "--derive-amount"], "--derive-amount and --volume-in quote both given"),
        (["--format", "binance", "--time-format", "ms"], "--time-format does not apply with --format binance"),
        (["--format", "ccxt", "--timezone", "Europe/Berlin"], "--timezone does not apply with --format ccxt"),
        (["--format", "cryptodatadownload", "--symbol-column", "symbol"], "--symbol-column does not apply"),
        (["--funding", "--format", "ccxt"], "apply to bars, not to --funding"),
    ],
)
def test_option_conflicts_are_one_line_errors(tmp_path, capsys, extra, needle):
    f = write_quote_file(tmp_path / "q.csv", "volume")
    code, _, err = run(
        [f, "--instrument", "BTC-USDT-SWAP", "--timeframe", "1h", *extra, "--store", tmp_path / "s"], capsys
    )
    assert code == 2 and err.count("\n") == 1 and needle in err, err
    assert not (tmp_path / "s").exists()


def test_every_recipe_command_is_tested():
    names = {Path(a).name for c in recipe_commands() for a in c}
    fixtures = {p.name for p in FIX.iterdir() if p.suffix not in (".py", ".md")}
    assert fixtures <= names  # each fixture is named by a documented command
    assert len(recipe_commands()) == 7
