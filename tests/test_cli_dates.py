"""Dates on the command line are ISO 8601 only, for every command: ``01/04/2024`` (4 January to pandas, 1 April to
many readers) and ``2024-13-01`` are one-line errors with exit code 2; offsets are converted to UTC, and Qlib gets
naive UTC times. Expected times are written out by hand; backtest and sweep results are worked out from the bars.

The commands run in this process (``qlib_crypto.cli.main``); each backtest calls ``qlib.init`` for its provider.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from qlib_crypto import store
from qlib_crypto.cli import main
from qlib_crypto.errors import ConfigError
from qlib_crypto.timeparse import parse_iso, parse_naive_utc

# value -> the naive UTC time it means, worked out by hand
VALID = [
    ("2024-04-01", "2024-04-01 00:00:00"),
    ("2024-04-01 05:00", "2024-04-01 05:00:00"),
    ("2024-04-01T05:00", "2024-04-01 05:00:00"),
    ("2024-04-01T05:00:30", "2024-04-01 05:00:30"),
    ("2024-04-01T05:00Z", "2024-04-01 05:00:00"),
    ("2024-04-01T05:00+00:00", "2024-04-01 05:00:00"),
    ("2024-04-01T07:00+02:00", "2024-04-01 05:00:00"),
    ("2024-04-01 01:30-03:30", "2024-04-01 05:00:00"),
    ("2024-04-01T01:00+0200", "2024-03-31 23:00:00"),  # the offset moves it to the day before
    (" 2024-04-01 ", "2024-04-01 00:00:00"),
]
INVALID = [
    "01/04/2024",
    "04/01/2024",
    "2024-13-01",
    "2024-02-30",
    "2024-04-01T25:00",
    "1 April 2024",
    "2024-04-01 5pm",
    "20240401",
    "2024-4-1",
    "yesterday",
    "2024-04-01 05",
    "2024-04-01T05:00+2",
]


@pytest.mark.parametrize("value, expected", VALID)
def test_iso_forms_give_naive_utc(value, expected):
    ts = parse_naive_utc(value, "--start")
    assert ts.tzinfo is None and ts == pd.Timestamp(expected)
    assert parse_iso(value) == pd.Timestamp(expected, tz="UTC")


@pytest.mark.parametrize("value", INVALID)
def test_other_forms_are_config_errors_naming_the_value(value):
    with pytest.raises(ConfigError) as info:
        parse_naive_utc(value, "--start")
    assert info.value.exit_code == 2
    assert f"--start {value!r}" in str(info.value) and "ISO 8601" in str(info.value)


def test_empty_means_not_given():
    assert parse_naive_utc(None) is None and parse_naive_utc("") is None and parse_naive_utc("  ") is None


# ---------------------------------------------------------------------------------------------- the commands
N = 48
IDX = pd.date_range("2024-01-01", periods=N, freq="h", tz="UTC")
CLOSE = 100.0 + np.arange(N, dtype=float)  # BTC-USDT: +1 per bar
ACCOUNT = 1_000_000.0
SIZE = 0.4
SPOT_TAKER = 0.001
START_BAR, END_BAR = 29, 33  # 2024-01-02 05:00 .. 09:00 UTC


@pytest.fixture(scope="module")
def prov(tmp_path_factory) -> Path:
    """An hourly provider written by the real store and dump, and a signals file: BUY 40% BTC-USDT on every bar
    (a held position is not traded again, so the first bar of the range buys and the rest hold)."""
    root = tmp_path_factory.mktemp("dates")
    for name, close in (("BTC-USDT", CLOSE), ("ETH-USDT", np.full(N, 50.0))):
        bars = pd.DataFrame(
            {
                "datetime": IDX,
                "open": close,
                "high": close + 1,
                "low": close - 1,
                "close": close,
                "volume": 1e9,
                "amount": 1e9 * close,
            }
        )
        store.write_bars(root / "store", name, "1h", bars, "test")
    assert main(["dump", "--store", str(root / "store"), "--qlib-dir", str(root / "60min"), "--timeframe", "1h"]) == 0
    pd.DataFrame(
        {
            "datetime": [IDX[START_BAR - 1].tz_localize(None)],
            "instrument": ["BTC-USDT"],
            "signal": ["BUY"],
            "position_size": [SIZE],
        }
    ).to_parquet(root / "signals.parquet")
    return root


def hand_equity(fee_rate: float) -> float:
    """BUY SIZE of the equity at the first bar's close (signal of the bar before), marked at the last bar's close."""
    q = SIZE * ACCOUNT / CLOSE[START_BAR]
    return ACCOUNT - q * CLOSE[START_BAR] * (1 + fee_rate) + q * CLOSE[END_BAR]


def run(args, capsys) -> tuple[int, str, list[str]]:
    code = main([str(a) for a in args])
    cap = capsys.readouterr()
    return code, cap.out, [ln for ln in cap.err.splitlines() if ln.strip()]


def common(prov: Path, start: str, end: str) -> list:
    return [
        "--signals",
        prov / "signals.parquet",
        "--provider-dir",
        prov / "60min",
        "--freq",
        "60min",
        "--account",
        ACCOUNT,
        "--benchmark",
        "BTC-USDT",
        "--start",
        start,
        "--end",
        end,
    ]


@pytest.mark.parametrize(
    "start, end",
    [
        ("2024-01-02T07:00+02:00", "2024-01-02T09:00Z"),  # +02:00 is two hours ahead of UTC: 05:00 UTC
        ("2024-01-02 05:00", "2024-01-02T04:00-05:00"),
    ],
)
def test_backtest_reads_iso_times_as_utc(prov, tmp_path, capsys, start, end):
    out = tmp_path / "bt"
    code, _, err = run(["backtest", *common(prov, start, end), "--out", out], capsys)
    assert code == 0, err
    info = json.loads((out / "report.json").read_text())["info"]
    assert (info["start"], info["end"], info["n_bars"]) == ("2024-01-02 05:00:00", "2024-01-02 09:00:00", 5)
    assert info["final_equity"] == pytest.approx(hand_equity(SPOT_TAKER), rel=1e-12)


def test_sweep_reads_iso_times_as_utc(prov, tmp_path, capsys):
    out = tmp_path / "sweep"
    code, _, err = run(
        [
            "sweep",
            *common(prov, "2024-01-02T01:00-04:00", "2024-01-02 11:00+02:00"),
            "--fee-multipliers",
            "0,1",
            "--slippage-bps",
            "0",
            "--out",
            out,
        ],
        capsys,
    )
    assert code == 0, err
    runs = {r["fee_multiplier"]: r for r in json.loads((out / "sweep.json").read_text())["runs"]}
    assert runs[0.0]["final_equity"] == pytest.approx(hand_equity(0.0), rel=1e-12)
    assert runs[1.0]["final_equity"] == pytest.approx(hand_equity(SPOT_TAKER), rel=1e-12)


@pytest.mark.parametrize("command", ["backtest", "sweep"])
@pytest.mark.parametrize("option", ["--start", "--end"])
@pytest.mark.parametrize("value", ["01/04/2024", "2024-13-01", "2024-01-02 5pm"])
def test_backtest_and_sweep_refuse_other_forms(prov, tmp_path, capsys, command, option, value):
    start, end = ("2024-01-02", "2024-01-02 09:00")
    start, end = (value, end) if option == "--start" else (start, value)
    code, out, err = run([command, *common(prov, start, end), "--out", tmp_path / "o"], capsys)
    assert code == 2
    assert len(err) == 1 and err[0].startswith(f"error: {option} {value!r} is not"), err
    assert "ISO 8601" in err[0]
    assert not (tmp_path / "o").exists()


def test_predict_passes_naive_utc_times(monkeypatch, tmp_path, capsys):
    """The command converts --start/--end before the model is loaded; the scoring function (replaced here: no
    model is trained in this test) receives naive UTC Timestamps."""
    import qlib_crypto.workflow.predict as wp

    seen = {}

    def fake_predict(model_path, **kwargs):
        seen.update(kwargs)
        return pd.DataFrame(
            {
                "datetime": [pd.Timestamp("2024-01-02 05:00")],
                "instrument": ["BTC-USDT"],
                "score": [0.5],
                "signal": ["BUY"],
                "position_size": [0.1],
            }
        )

    monkeypatch.setattr(wp, "predict", fake_predict)
    (tmp_path / "mlruns").mkdir()
    code, out, err = run(
        [
            "predict",
            "--experiment",
            "e",
            "--tracking-uri",
            tmp_path / "mlruns",
            "--provider-dir",
            tmp_path,
            "--start",
            "2024-01-02T07:00+02:00",
            "--end",
            "2024-01-02 09:00",
            "--out",
            tmp_path / "s.parquet",
        ],
        capsys,
    )
    assert code == 0, err
    assert seen["start"] == pd.Timestamp("2024-01-02 05:00") and seen["start"].tzinfo is None
    assert seen["end"] == pd.Timestamp("2024-01-02 09:00") and seen["end"].tzinfo is None
    assert seen["latest"] is False


@pytest.mark.parametrize("option", ["--start", "--end"])
@pytest.mark.parametrize("value", ["01/04/2024", "2024-13-01"])
def test_predict_refuses_other_forms_before_loading_a_model(tmp_path, capsys, option, value):
    args = [
        "predict",
        "--model",
        tmp_path / "missing.pkl",
        "--provider-dir",
        tmp_path,
        option,
        value,
        "--out",
        tmp_path / "s.parquet",
    ]
    code, out, err = run(args, capsys)
    assert code == 2
    assert len(err) == 1 and err[0].startswith(f"error: {option} {value!r} is not"), err


def test_predict_start_after_end(tmp_path, capsys):
    code, _, err = run(
        [
            "predict",
            "--model",
            tmp_path / "m.pkl",
            "--provider-dir",
            tmp_path,
            "--start",
            "2024-01-02T05:00Z",
            "--end",
            "2024-01-02T06:00+02:00",
            "--out",
            tmp_path / "s.parquet",
        ],
        capsys,
    )
    assert code == 2 and len(err) == 1 and "after --end 2024-01-02 04:00:00" in err[0], err


def test_collect_reads_iso_times_as_utc(tmp_path, capsys):
    st = tmp_path / "store"
    code, _, err = run(
        [
            "collect",
            "--source",
            "synthetic",
            "--instruments",
            "BTC-USDT",
            "--seed",
            "1",
            "--timeframe",
            "1h",
            "--start",
            "2024-01-01T02:00+02:00",
            "--end",
            "2024-01-01T05:00Z",
            "--store",
            st,
            "--quiet",
            "--no-funding",
        ],
        capsys,
    )
    assert code == 0, err
    bars = store.read_bars(st, "BTC-USDT", "1h")
    # [00:00, 05:00) UTC; the synthetic market leaves some hours out (gaps), never the ends here
    hours = pd.date_range("2024-01-01 00:00", periods=5, freq="h", tz="UTC")
    assert bars.index[0] == hours[0] and bars.index[-1] == hours[-1] and bars.index.isin(hours).all()


@pytest.mark.parametrize("option", ["--start", "--end"])
@pytest.mark.parametrize("value", ["01/04/2024", "2024-13-01"])
def test_collect_refuses_other_forms(tmp_path, capsys, option, value):
    dates = {"--start": "2024-01-01", "--end": "2024-01-02"}
    dates[option] = value
    code, _, err = run(
        [
            "collect",
            "--source",
            "synthetic",
            "--instruments",
            "BTC-USDT",
            "--timeframe",
            "1h",
            "--start",
            dates["--start"],
            "--end",
            dates["--end"],
            "--store",
            tmp_path / "st",
        ],
        capsys,
    )
    assert code == 2
    assert len(err) == 1 and err[0].startswith(f"error: {option} {value!r} is not"), err
    assert not (tmp_path / "st").exists()
