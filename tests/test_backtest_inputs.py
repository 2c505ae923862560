"""The signals contract and the backtest's inputs (issue 9, part 1), through the `qlib-crypto backtest` command
and the Python API, on tiny hand-made providers. Expected numbers are worked out from the bars below.

The command runs in this process (``qlib_crypto.cli.main``); every run calls ``qlib.init`` for its provider,
which also empties Qlib's in-memory caches.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from qlib_crypto.cli import main
from qlib_crypto.errors import ConfigError
from qlib_crypto.strategy.targets import signals_frame

N = 72
IDX = pd.date_range("2024-01-01", periods=N, freq="h")
I = np.arange(N, dtype=float)
ACCOUNT = 1_000_000.0
SPOT_TAKER = 0.001
CLOSES = {
    "BTC-USD": 100.0 + I,  # spot
    "SOL-USDT": np.full(N, 20.0),  # spot
    "ETH-USDT-SWAP": 50.0 + 0.5 * I,
    "XRP-USDT-SWAP": np.full(N, 10.0),
    "LOW-USDT": np.full(N, 100.0),  # spot, thin: 1,000 coins a bar
}
VOLUME = {name: (1_000.0 if name == "LOW-USDT" else 1e9) for name in CLOSES}


def _bars() -> dict[str, pd.DataFrame]:
    return {
        name: pd.DataFrame({"open": c, "high": c + 1, "low": c - 1, "close": c, "volume": VOLUME[name]}, index=IDX)
        for name, c in CLOSES.items()
    }


@pytest.fixture(scope="module")
def prov(tmp_path_factory):
    """``<root>/full/{60min,day}`` and ``<root>/hourly/60min`` (no day directory)."""
    from tiny_provider import write_provider

    root = tmp_path_factory.mktemp("inputs")
    write_provider(root / "full", _bars())
    shutil.copytree(root / "full" / "60min", root / "hourly" / "60min")
    return root


def run(args, capsys) -> tuple[int, list[str], list[str]]:
    """(exit code, stdout lines, stderr lines that are ours: 'error: ' / 'warning: ')."""
    code = main([str(a) for a in args])
    cap = capsys.readouterr()
    ours = [ln for ln in cap.err.splitlines() if ln.startswith(("error: ", "warning: "))]
    return code, cap.out.splitlines(), ours


def write_signals(path: Path, rows) -> Path:
    pd.DataFrame(rows, columns=["datetime", "instrument", "signal", "position_size"]).to_parquet(path)
    return path


def backtest(prov_dir: Path, signals: Path, out: Path, *extra) -> list:
    return [
        "backtest",
        "--signals",
        signals,
        "--provider-dir",
        prov_dir,
        "--freq",
        "60min",
        "--account",
        ACCOUNT,
        "--out",
        out,
        *extra,
    ]


def fills(out: Path) -> pd.DataFrame:
    return pd.read_csv(out / "fills.csv", parse_dates=["datetime"])


# ------------------------------------------------------------------------------------------- unknown instruments
def test_unknown_instruments_are_an_error_that_lists_them(prov, tmp_path, capsys):
    sig = write_signals(
        tmp_path / "s.parquet",
        [(IDX[5], "BTC-USD", "BUY", 0.3), (IDX[5], "ETH-USD", "BUY", 0.2), (IDX[7], "DOGE-USD", "SELL", -0.1)],
    )
    code, _, err = run(backtest(prov / "full" / "60min", sig, tmp_path / "out"), capsys)
    assert code == 2 and len(err) == 1 and err[0].startswith("error: ")
    assert "2 instrument(s)" in err[0] and "DOGE-USD, ETH-USD" in err[0] and "--skip-unknown" in err[0]
    assert not (tmp_path / "out").exists()


def test_skip_unknown_drops_their_rows_with_a_count(prov, tmp_path, capsys):
    sig = write_signals(
        tmp_path / "s.parquet",
        [(IDX[5], "BTC-USD", "BUY", 0.3), (IDX[5], "ETH-USD", "BUY", 0.2), (IDX[7], "ETH-USD", "SELL", -0.1)],
    )
    out = tmp_path / "out"
    code, _, err = run(backtest(prov / "full" / "60min", sig, out, "--skip-unknown"), capsys)
    assert code == 0
    assert any("skipping 2 rows" in ln and "1 instrument(s)" in ln and "ETH-USD" in ln for ln in err), err
    f = fills(out)
    assert list(f["instrument"]) == ["BTC-USD"] and list(f["datetime"]) == [IDX[6]]
    assert f["amount"].iloc[0] == pytest.approx(0.3 * ACCOUNT / CLOSES["BTC-USD"][6], rel=1e-12)


# -------------------------------------------------------------------------------------------- sizes and rows
@pytest.mark.parametrize(
    "rows, needles",
    [
        ([(IDX[5], "BTC-USD", "BUY", 0.3), (IDX[8], "BTC-USD", "BUY", float("nan"))], ["row 1", "BTC-USD", "nan"]),
        ([(IDX[5], "BTC-USD", "SELL", float("-inf"))], ["row 0", "SELL", "-inf"]),
        ([(IDX[5], "SOL-USDT", "HOLD", 0.0), (IDX[6], "BTC-USD", "BUY", 5.0)], ["row 1", "5.0", "outside [-1, 1]"]),
        (
            [(IDX[5], "BTC-USD", "BUY", 0.3), (IDX[6], "SOL-USDT", "BUY", 0.1), (IDX[5], "BTC-USD", "SELL", -0.3)],
            ["rows 0 and 2", "BTC-USD", str(IDX[5])],
        ),
    ],
)
def test_bad_sizes_and_duplicate_rows_are_errors_naming_the_row(prov, tmp_path, capsys, rows, needles):
    sig = write_signals(tmp_path / "s.parquet", rows)
    code, _, err = run(backtest(prov / "full" / "60min", sig, tmp_path / "out"), capsys)
    assert code == 2 and len(err) == 1 and err[0].startswith("error: signals "), err
    for needle in needles:
        assert needle in err[0], (needle, err[0])
    assert not (tmp_path / "out").exists()


def test_signals_frame_contract():
    ok = signals_frame(
        pd.DataFrame(
            {
                "datetime": [IDX[0], IDX[0], IDX[1]],
                "instrument": ["A", "B", "A"],
                "signal": ["BUY", "HOLD", "SELL"],
                "position_size": [0.25, np.nan, -1.0],
            }
        )
    )
    assert ok["position_size"].tolist() == [0.25, 0.0, 1.0]  # HOLD's missing size is 0; magnitudes
    with pytest.raises(ConfigError, match=r"row 0 .*position_size 1.5"):
        signals_frame(
            pd.DataFrame({"datetime": [IDX[0]], "instrument": ["A"], "signal": ["BUY"], "position_size": [1.5]})
        )
    # a caller may allow larger sizes (leveraged targets)
    assert (
        signals_frame(
            pd.DataFrame({"datetime": [IDX[0]], "instrument": ["A"], "signal": ["BUY"], "position_size": [1.5]}),
            max_position_size=2.0,
        )["position_size"][0]
        == 1.5
    )


# -------------------------------------------------------------------------------------- signals vs the calendar
def test_signals_outside_the_calendar_are_counted_in_a_warning(prov, tmp_path, capsys):
    hour = pd.Timedelta(hours=1)
    rows = [
        (IDX[0] - 2 * hour, "BTC-USD", "BUY", 0.1),
        (IDX[0] - hour, "SOL-USDT", "BUY", 0.1),
        (IDX[3], "BTC-USD", "BUY", 0.2),
        (IDX[-1] + hour, "BTC-USD", "SELL", -0.1),
        (IDX[-1] + 2 * hour, "BTC-USD", "BUY", 0.1),
        (IDX[-1] + 3 * hour, "SOL-USDT", "BUY", 0.1),
    ]
    sig = write_signals(tmp_path / "s.parquet", rows)
    out = tmp_path / "out"
    code, _, err = run(backtest(prov / "full" / "60min", sig, out), capsys)
    assert code == 0
    assert any("2 --signals rows before" in ln and "3 after" in ln for ln in err), err
    f = fills(out)  # the one signal inside the calendar trades
    assert list(zip(f["datetime"], f["instrument"])) == [(IDX[4], "BTC-USD")]


# ----------------------------------------------------------------------------------------------- date ranges
def _hand_equity(buy_bar: int, last_bar: int, size: float) -> float:
    """BUY ``size`` of equity in BTC-USD at ``buy_bar``'s close (taker fee), marked at ``last_bar``'s close."""
    c = CLOSES["BTC-USD"]
    q = size * ACCOUNT / c[buy_bar]
    return ACCOUNT - q * c[buy_bar] * (1 + SPOT_TAKER) + q * c[last_bar]


@pytest.mark.parametrize(
    "start, end, n_bars",
    [
        (IDX[29], IDX[33], 5),  # a few hours inside one day ("2024-01-02 05:00" .. "09:00")
        (IDX[29], IDX[29], 1),  # one bar
        (IDX[60], None, 12),  # default end: past the calendar, clipped inside the last day
    ],
)
def test_any_range_of_one_bar_or_more_works(prov, tmp_path, capsys, start, end, n_bars):
    sig = write_signals(
        tmp_path / "s.parquet",
        [(start - pd.Timedelta(hours=1), "BTC-USD", "BUY", 0.4), (IDX[-1], "SOL-USDT", "HOLD", 0.0)],
    )
    out = tmp_path / "out"
    extra = ["--start", str(start)] + (["--end", str(end)] if end is not None else [])
    code, _, err = run(backtest(prov / "full" / "60min", sig, out, *extra), capsys)
    assert code == 0, err
    report = json.loads((out / "report.json").read_text())
    assert report["info"]["n_bars"] == n_bars and report["info"]["start"] == str(start)
    last = IDX.get_loc(pd.Timestamp(report["info"]["end"]))
    assert last == IDX.get_loc(start) + n_bars - 1
    f = fills(out)
    assert list(f["datetime"]) == [start]  # the signal of the bar before the range trades at its first bar
    assert report["info"]["final_equity"] == pytest.approx(_hand_equity(IDX.get_loc(start), last, 0.4), rel=1e-12)


def test_predict_latest_bar_then_backtest(prov, tmp_path, capsys):
    """`predict --latest` writes signals on the last bar; backtesting them (default start/end) runs on that one bar
    and says why nothing trades."""
    sig = write_signals(tmp_path / "s.parquet", [(IDX[-1], "BTC-USD", "BUY", 0.1), (IDX[-1], "SOL-USDT", "SELL", -0.1)])
    out = tmp_path / "out"
    code, stdout, err = run(backtest(prov / "full" / "60min", sig, out), capsys)
    assert code == 0, err
    assert any("all 2 --signals rows are on the calendar's last bar" in ln for ln in err), err
    report = json.loads((out / "report.json").read_text())
    assert report["info"]["n_bars"] == 1 and report["info"]["final_equity"] == ACCOUNT
    assert len(fills(out)) == 0


# ------------------------------------------------------------------------------------------- hourly data alone
def test_hourly_provider_alone_gives_the_same_backtest(prov, tmp_path, capsys):
    assert not (prov / "hourly" / "day").exists()
    sig = write_signals(
        tmp_path / "s.parquet",
        [(IDX[2], "BTC-USD", "BUY", 0.3), (IDX[2], "ETH-USDT-SWAP", "SELL", -0.2), (IDX[20], "BTC-USD", "SELL", -0.3)],
    )
    outs = {}
    for name in ("full", "hourly"):
        outs[name] = tmp_path / name
        code, _, err = run(backtest(prov / name / "60min", sig, outs[name], "--benchmark", "BTC-USD"), capsys)
        assert code == 0, err
    for fname in ("metrics.json", "fills.csv", "equity.csv"):
        assert (outs["hourly"] / fname).read_bytes() == (outs["full"] / fname).read_bytes(), fname
    equity = pd.read_csv(outs["hourly"] / "equity.csv")["equity"]
    # bar 3: buy BTC, short ETH (sized on the initial equity); bar 21 (the default end, one bar after the last
    # signal): sell the BTC; the ETH short is marked at bar 21's close
    q_btc, q_eth = 0.3 * ACCOUNT / CLOSES["BTC-USD"][3], 0.2 * ACCOUNT / CLOSES["ETH-USDT-SWAP"][3]
    cash = (
        ACCOUNT
        - q_btc * CLOSES["BTC-USD"][3] * (1 + SPOT_TAKER)
        + q_eth * CLOSES["ETH-USDT-SWAP"][3] * (1 - 0.0005)
        + q_btc * CLOSES["BTC-USD"][21] * (1 - SPOT_TAKER)
    )
    assert len(equity) == 20  # bars 2 .. 21: default start = the first signal
    assert equity.iloc[-1] == pytest.approx(cash - q_eth * CLOSES["ETH-USDT-SWAP"][21], rel=1e-12)


RECORD_SCRIPT = textwrap.dedent(
    """
    import json, sys, pathlib, yaml
    import pandas as pd, qlib
    from qlib.workflow import R
    from qlib_crypto.workflow.backtest_record import CryptoBacktestRecord
    root, cfg_path = pathlib.Path(sys.argv[1]), sys.argv[2]
    conf = yaml.safe_load(open(cfg_path))
    init = dict(conf["qlib_init"])
    init["provider_uri"] = {"60min": str(root / "hourly" / "60min")}
    init["exp_manager"]["kwargs"]["uri"] = "file:" + str(root / "mlruns")
    qlib.init(**init)
    port = conf["port_analysis_config"]
    port["backtest"].update(start_time=sys.argv[3], end_time=sys.argv[4], benchmark="BTC-USD", account=1000000)
    port["strategy"]["kwargs"].update(topk=1, rebalance_every=6)
    with R.start(experiment_name="hourly_only"):
        rec = R.get_recorder()
        rec.save_objects(**{"pred.pkl": pd.read_pickle(root / "pred.pkl").to_frame("score")})
        CryptoBacktestRecord(rec, config=port, freq="60min").generate()
        print("METRICS" + json.dumps(rec.list_metrics()))
    """
)


def test_the_60min_workflow_backtest_runs_on_hourly_data_alone(prov, tmp_path):
    """The repository's 60min workflow names only the 60min directory, and its backtest block (no start/end
    repeated in the exchange, no raw store path) runs as qrun would run it, on a provider without `day`."""
    import yaml

    cfg = Path(__file__).resolve().parents[1] / "workflow_configs" / "workflow_config_lightgbm_crypto_60min.yaml"
    conf = yaml.safe_load(cfg.read_text())
    assert list(conf["qlib_init"]["provider_uri"]) == ["60min"]
    ex_kwargs = conf["port_analysis_config"]["backtest"]["exchange"]["kwargs"]
    assert "start_time" not in ex_kwargs and "end_time" not in ex_kwargs
    assert ex_kwargs.get("instrument_meta", "provider") == "provider"
    root = tmp_path
    shutil.copytree(prov / "hourly", root / "hourly")
    scores = pd.Series(
        {(t, inst): float(rank) for t in IDX for rank, inst in enumerate(["XRP-USDT-SWAP", "ETH-USDT-SWAP"])}
    )
    scores.index.names = ["datetime", "instrument"]
    scores.to_pickle(root / "pred.pkl")
    proc = subprocess.run(
        [sys.executable, "-c", RECORD_SCRIPT, str(root), str(cfg), str(IDX[10]), str(IDX[40])],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads([ln for ln in proc.stdout.splitlines() if ln.startswith("METRICS")][-1][7:])
    assert metrics["backtest.fees_paid"] > 0  # it traded: long ETH (best score), short XRP


# ------------------------------------------------------------------------------------------ participation cap
def test_participation_cap_defaults_to_a_tenth_of_the_bar_volume(prov, tmp_path, capsys):
    sig = write_signals(tmp_path / "s.parquet", [(IDX[4], "LOW-USDT", "BUY", 0.5)])
    out = tmp_path / "out"
    code, stdout, err = run(backtest(prov / "full" / "60min", sig, out), capsys)
    assert code == 0, err
    requested = 0.5 * ACCOUNT / 100.0  # 5,000 coins; the bar traded 1,000
    f = fills(out)
    assert f["amount"].tolist() == pytest.approx([0.1 * 1_000.0], rel=1e-12)
    rep = pd.read_csv(out / "order_reports.csv")
    assert rep["reasons"].tolist() == ["participation_cap"] and rep["capped"].tolist() == [requested - 100.0]
    info = json.loads((out / "report.json").read_text())["info"]
    assert info["max_participation"] == 0.1
    assert (info["orders"], info["orders_capped"], info["orders_unfilled"]) == (1, 1, 1)
    assert info["capped_notional"] == pytest.approx((requested - 100.0) * 100.0, rel=1e-12)
    assert info["unfilled_notional"] == pytest.approx((requested - 100.0) * 100.0, rel=1e-12)
    assert any(ln.startswith("orders: 1 sent; 1 capped") and "490,000.00" in ln for ln in stdout), stdout
    # no cap on request: the whole order fills
    out2 = tmp_path / "out2"
    code, _, err = run(backtest(prov / "full" / "60min", sig, out2, "--max-participation", "none"), capsys)
    assert code == 0, err
    assert fills(out2)["amount"].tolist() == pytest.approx([requested], rel=1e-12)


# ---------------------------------------------------------------------------------------- long/short on spot
def _spot_scores(path: Path) -> Path:
    rows = [(t, inst, float(score)) for t in IDX for inst, score in (("BTC-USD", 3), ("SOL-USDT", 2), ("LOW-USDT", 1))]
    pd.DataFrame(rows, columns=["datetime", "instrument", "score"]).to_parquet(path)
    return path


def test_longshort_on_a_spot_universe_is_refused_before_the_backtest(prov, tmp_path, capsys):
    pred = _spot_scores(tmp_path / "pred.parquet")
    args = [
        "backtest",
        "--pred",
        pred,
        "--provider-dir",
        prov / "full" / "60min",
        "--strategy",
        "longshort",
        "--out",
        tmp_path / "out",
    ]
    code, _, err = run(args, capsys)
    assert code == 2 and len(err) == 1
    assert "no perpetual swaps" in err[0] and "--long-only" in err[0] and "BTC-USD" in err[0]
    assert not (tmp_path / "out").exists()
    from qlib_crypto.strategy import LongShortStrategy

    with pytest.raises(ConfigError, match="no perpetual swaps"):
        LongShortStrategy(signal=pd.read_parquet(pred), topk=1)


def test_long_only_mode_buys_the_best_spot_scores(prov, tmp_path, capsys):
    pred = _spot_scores(tmp_path / "pred.parquet")
    out = tmp_path / "out"
    args = [
        "backtest",
        "--pred",
        pred,
        "--provider-dir",
        prov / "full" / "60min",
        "--strategy",
        "longshort",
        "--long-only",
        "--topk",
        2,
        "--gross-exposure",
        0.5,
        "--rebalance-every",
        100,
        "--start",
        IDX[1],
        "--end",
        IDX[5],
        "--account",
        ACCOUNT,
        "--out",
        out,
    ]
    code, _, err = run(args, capsys)
    assert code == 0, err
    f = fills(out).sort_values("instrument")
    # step 0 (bar 1) reads the scores of bar 0: BTC-USD and SOL-USDT, 0.25 of equity each, bought at bar 1
    assert list(f["instrument"]) == ["BTC-USD", "SOL-USDT"] and set(f["side"]) == {"buy"}
    assert set(f["datetime"]) == {IDX[1]}
    assert f["amount"].tolist() == pytest.approx(
        [0.25 * ACCOUNT / CLOSES["BTC-USD"][1], 0.25 * ACCOUNT / 20.0], rel=1e-12
    )


# ------------------------------------------------------------------------------------- metadata in the provider
def _store(root: Path, with_meta: bool) -> Path:
    from qlib_crypto import store

    st = root / "store"
    for name in ("BTC-USDT", "ETH-USDT-SWAP"):
        c = 100.0 + I if name == "BTC-USDT" else 50.0 + 0.5 * I
        df = pd.DataFrame(
            {"open": c, "high": c + 1, "low": c - 1, "close": c, "volume": 1e9, "amount": 1e9 * c}, index=IDX
        )
        store.write_bars(st, name, "1h", df, source="test")
    if with_meta:
        store.write_instrument_meta(
            st,
            pd.DataFrame(
                {
                    "instId": ["BTC-USDT", "ETH-USDT-SWAP"],
                    "instType": ["SPOT", "SWAP"],
                    "lotSz": [0.5, 1.0],
                    "minSz": [1.0, 1.0],
                    "ctVal": [np.nan, 0.1],
                    "tickSz": [0.1, 0.01],
                }
            ),
            source="test",
            read_at="2024-01-02",
        )
    return st


def test_dump_writes_instrument_metadata_and_the_exchange_reads_it_by_default(tmp_path, capsys):
    from qlib_crypto.provider import dump

    st = _store(tmp_path, with_meta=True)
    dump(st, tmp_path / "qlib" / "60min", "1h")
    doc = json.loads((tmp_path / "qlib" / "60min" / "meta" / "instruments.json").read_text())
    assert doc["read_at"] == "2024-01-02" and doc["snapshot"] == "2024-01-02.parquet"
    assert doc["instruments"]["BTC-USDT"] == {
        "instType": "SPOT",
        "lotSz": 0.5,
        "minSz": 1.0,
        "ctVal": None,
        "ctMult": None,
        "tickSz": 0.1,
        "read_at": "2024-01-02",
    }
    assert doc["instruments"]["ETH-USDT-SWAP"]["ctVal"] == 0.1
    # a backtest on the provider alone (no store path anywhere) rounds to the lots read from it
    sig = write_signals(
        tmp_path / "s.parquet", [(IDX[2], "BTC-USDT", "BUY", 0.3), (IDX[2], "ETH-USDT-SWAP", "SELL", -0.2)]
    )
    out = tmp_path / "out"
    code, stdout, err = run(backtest(tmp_path / "qlib" / "60min", sig, out), capsys)
    assert code == 0, err
    f = fills(out).set_index("instrument")["amount"]
    want_btc = math.floor(0.3 * ACCOUNT / (100.0 + 3) / 0.5) * 0.5  # lots of 0.5 coin
    want_eth = math.floor(0.2 * ACCOUNT / (50.0 + 1.5) / 0.1) * 0.1  # lots of 1 contract = 0.1 coin
    assert f["BTC-USDT"] == pytest.approx(want_btc, rel=1e-12) and f["ETH-USDT-SWAP"] == pytest.approx(
        want_eth, rel=1e-12
    )
    info = json.loads((out / "report.json").read_text())["info"]
    assert info["instrument_meta_read_at"] == "2024-01-02" and info["instruments_default_metadata"] == 0


def test_series_without_metadata_get_the_defaults_and_the_report_says_so(tmp_path, capsys):
    from qlib_crypto.provider import dump

    st = _store(tmp_path, with_meta=False)  # an imported store: bars only
    dump(st, tmp_path / "qlib" / "60min", "1h")
    doc = json.loads((tmp_path / "qlib" / "60min" / "meta" / "instruments.json").read_text())
    assert doc["instruments"] == {} and doc["read_at"] is None
    sig = write_signals(tmp_path / "s.parquet", [(IDX[2], "BTC-USDT", "BUY", 0.3)])
    out = tmp_path / "out"
    code, stdout, err = run(backtest(tmp_path / "qlib" / "60min", sig, out), capsys)
    assert code == 0, err
    assert fills(out)["amount"].tolist() == pytest.approx([0.3 * ACCOUNT / 103.0], rel=1e-12)  # no lot rounding
    info = json.loads((out / "report.json").read_text())["info"]
    assert info["instruments_default_metadata"] == 2
    assert info["instruments_default_metadata_names"] == "BTC-USDT, ETH-USDT-SWAP"
    assert any("2 instrument(s) without metadata use the defaults" in ln for ln in stdout), stdout


def test_update_rewrites_the_metadata_like_a_full_dump(tmp_path):
    from qlib_crypto import store
    from qlib_crypto.provider import dump

    st = _store(tmp_path, with_meta=True)
    dump(st, tmp_path / "inc", "1h")
    store.write_instrument_meta(
        st,
        pd.DataFrame({"instId": ["BTC-USDT"], "instType": ["SPOT"], "lotSz": [0.25]}),
        source="test",
        read_at="2024-01-05",
    )
    result = dump(st, tmp_path / "inc", "1h", update=True)  # no new bars: only the metadata changed
    dump(st, tmp_path / "full", "1h")
    inc = (tmp_path / "inc" / "meta" / "instruments.json").read_bytes()
    assert inc == (tmp_path / "full" / "meta" / "instruments.json").read_bytes()
    doc = json.loads(inc)
    assert result.mode == "noop" and doc["read_at"] == "2024-01-05"
    assert doc["instruments"]["BTC-USDT"]["lotSz"] == 0.25 and "ETH-USDT-SWAP" not in doc["instruments"]


# -------------------------------------------------------------------------------------------- what comes out
def test_the_printed_metrics_line_is_valid_json(prov, tmp_path, capsys):
    sig = write_signals(tmp_path / "s.parquet", [(IDX[5], "SOL-USDT", "HOLD", 0.0)])  # flat: no Sharpe ratio
    code, stdout, err = run(
        backtest(prov / "full" / "60min", sig, tmp_path / "out", "--start", IDX[5], "--end", IDX[9]), capsys
    )
    assert code == 0, err
    line = [ln for ln in stdout if ln.startswith("{")][-1]

    def no_constants(name):
        raise AssertionError(f"{name} is not JSON")

    metrics = json.loads(line, parse_constant=no_constants)
    assert metrics["sharpe"] is None and metrics["total_return"] == 0.0


def test_run_backtest_returns_plain_tables(prov):
    """The report DataFrame carries no attrs: it prints, concatenates and saves; the fills, funding and order
    reports come from the executor as DataFrames."""
    import qlib

    from qlib_crypto.workflow.backtest_record import run_backtest

    qlib.init(
        provider_uri={"60min": str(prov / "hourly" / "60min")},
        region="us",
        trade_unit=None,
        limit_threshold=None,
        deal_price="close",
        kernels=1,
    )
    strategy = {
        "class": "SignalStrategy",
        "module_path": "qlib_crypto.strategy",
        "kwargs": {
            "signals": pd.DataFrame(
                {"datetime": [IDX[2]], "instrument": ["BTC-USD"], "signal": ["BUY"], "position_size": [0.2]}
            )
        },
    }
    runs = [run_backtest(strategy, start_time=IDX[1], end_time=IDX[6], account=ACCOUNT) for _ in range(2)]
    a, b = runs
    assert a.report_df.attrs == {}
    assert "account" in str(a.report_df) and "account" in repr(a.report_df)
    both = pd.concat([a.report_df, b.report_df])
    assert len(both) == 2 * len(a.report_df)
    a.report_df.to_parquet(Path(str(prov)) / "report.parquet")
    assert isinstance(a.fills, pd.DataFrame) and list(a.fills["instrument"]) == ["BTC-USD"]
    assert a.fills["amount"].iloc[0] == pytest.approx(0.2 * ACCOUNT / CLOSES["BTC-USD"][3], rel=1e-12)
    assert isinstance(a.order_reports, pd.DataFrame) and isinstance(a.funding_events, pd.DataFrame)
    assert a.totals["fees_paid"] == pytest.approx(a.fills["fee"].sum(), rel=1e-12)
    assert a.settings["benchmark"] == "BTC-USD"  # no BTC-USDT here: the first instrument


def test_strategies_check_their_instruments_when_a_backtest_starts(prov, caplog):
    """From Python (qrun, notebooks) the strategies refuse instruments the provider does not have, or drop them
    with ``skip_unknown``, before the first step."""
    import qlib

    from qlib_crypto.workflow.backtest_record import run_backtest

    qlib.init(
        provider_uri={"60min": str(prov / "hourly" / "60min")},
        region="us",
        trade_unit=None,
        limit_threshold=None,
        deal_price="close",
        kernels=1,
    )
    signals = pd.DataFrame(
        {
            "datetime": [IDX[2], IDX[2]],
            "instrument": ["BTC-USD", "ETH-USD"],
            "signal": ["BUY", "BUY"],
            "position_size": [0.2, 0.2],
        }
    )
    strategy = {"class": "SignalStrategy", "module_path": "qlib_crypto.strategy", "kwargs": {"signals": signals}}
    with pytest.raises(ConfigError, match="ETH-USD"):
        run_backtest(strategy, start_time=IDX[1], end_time=IDX[6], account=ACCOUNT)
    strategy["kwargs"]["skip_unknown"] = True
    run = run_backtest(strategy, start_time=IDX[1], end_time=IDX[6], account=ACCOUNT)
    assert list(run.fills["instrument"]) == ["BTC-USD"]
    assert any("skipping 1 rows" in r.getMessage() and "ETH-USD" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(
    "extra, needles",
    [
        (["--max-participation", "1.5"], ["--max-participation", "1.5", "above 1"]),
        (["--max-participation", "abc"], ["--max-participation", "'abc'"]),
        (["--max-participation", "0"], ["--max-participation", "'0'"]),
        (["--long-only"], ["--long-only", "longshort"]),
    ],
)
def test_new_options_are_checked_before_any_work(prov, tmp_path, capsys, extra, needles):
    sig = write_signals(tmp_path / "s.parquet", [(IDX[5], "BTC-USD", "BUY", 0.3)])
    code, _, err = run(backtest(prov / "full" / "60min", sig, tmp_path / "out", *extra), capsys)
    assert code == 2 and len(err) == 1 and err[0].startswith("error: "), err
    for needle in needles:
        assert needle in err[0], (needle, err[0])
    assert not (tmp_path / "out").exists()
