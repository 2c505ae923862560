"""``qlib-crypto sweep`` and ``qlib-crypto backtest`` on a tiny provider: one BUY held to the end, so every
grid cell's net return can be computed by hand (the CLI runs in a subprocess: qlib.init is process-global)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pandas as pd
import pytest

from qlib_crypto.commands.sweep import parse_grid
from qlib_crypto.errors import ConfigError
from qlib_crypto.workflow.backtest_record import SWEEP_COLUMNS, scale_fees

N_BARS = 10
IDX = pd.date_range("2024-03-01", periods=N_BARS, freq="h")
CLOSE = 200.0 + 2.0 * np.arange(N_BARS)
ACCOUNT = 100_000.0
TAKER = 0.001
SIZE = 0.5

SCRIPT = textwrap.dedent(
    """
    import json, sys
    from qlib_crypto.cli import main
    root = sys.argv[1]
    common = ["--signals", root + "/signals.parquet", "--provider-dir", root + "/prov/60min", "--freq", "60min",
              "--start", sys.argv[2], "--end", sys.argv[3], "--account", "100000", "--fees", "spot.taker=0.001",
              "--benchmark", "BTC-USDT"]
    codes = {}
    codes["sweep"] = main(["sweep", *common, "--fee-multipliers", "0,2", "--slippage-bps", "0,10",
                           "--out", root + "/sweep"])  # default --jobs: forked processes, one per CPU
    codes["sweep1"] = main(["sweep", *common, "--fee-multipliers", "0,2", "--slippage-bps", "0,10",
                            "--jobs", "1", "--out", root + "/sweep1"])  # serial, in this process
    codes["backtest"] = main(["backtest", *common, "--slippage-bps", "5", "--fee-multiplier", "0.5",
                              "--out", root + "/bt"])
    codes["same"] = main(["sweep", *common, "--fee-multipliers", "0.5", "--slippage-bps", "5",
                          "--out", root + "/same"])  # the one cell of the backtest above
    codes["missing"] = main(["backtest", "--signals", root + "/nope.parquet", "--provider-dir", root + "/prov/60min"])
    codes["both"] = main(["backtest", "--signals", root + "/signals.parquet", "--pred", root + "/p.pkl",
                          "--provider-dir", root + "/prov/60min"])
    print("CODES" + json.dumps(codes))
    """
)


def hand_total_return(fee_multiplier: float, slippage_bps: float) -> float:
    """BUY 50% of equity at bar 2's close (signal at bar 1), held to the last bar (8)."""
    s = slippage_bps / 1e4
    q = SIZE * ACCOUNT / CLOSE[2]  # sized on the pre-trade equity: the same in every cell
    fill = CLOSE[2] * (1 + s)
    fee = q * fill * TAKER * fee_multiplier
    final = ACCOUNT - q * fill - fee + q * CLOSE[8]
    return final / ACCOUNT - 1


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    from tiny_provider import write_provider

    root = tmp_path_factory.mktemp("sweep")
    bars = pd.DataFrame({"open": CLOSE, "high": CLOSE + 1, "low": CLOSE - 1, "close": CLOSE, "volume": 1e6}, index=IDX)
    write_provider(root / "prov", {"BTC-USDT": bars})
    pd.DataFrame(
        {"datetime": [IDX[1]], "instrument": ["BTC-USDT"], "signal": ["BUY"], "position_size": [SIZE]}
    ).to_parquet(root / "signals.parquet")
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(root), str(IDX[0]), str(IDX[8])],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("CODES")][-1]
    return root, json.loads(line[5:]), proc.stderr


def test_sweep_table_shape_and_files(cli_run):
    root, codes, _ = cli_run
    assert codes["sweep"] == 0
    table = pd.read_csv(root / "sweep" / "sweep.csv")
    assert list(table.columns) == SWEEP_COLUMNS and len(table) == 4
    assert sorted(zip(table.fee_multiplier, table.slippage_bps)) == [(0, 0), (0, 10), (2, 0), (2, 10)]
    runs = json.loads((root / "sweep" / "sweep.json").read_text())["runs"]
    assert len(runs) == 4
    q = SIZE * ACCOUNT / CLOSE[2]
    for run in runs:  # each cell by hand: one BUY at bar 2 held to bar 8
        m, s = run["fee_multiplier"], run["slippage_bps"]
        assert run["final_equity"] == pytest.approx(ACCOUNT * (1 + hand_total_return(m, s)), rel=1e-9)
        assert run["fees_paid"] == pytest.approx(q * CLOSE[2] * (1 + s / 1e4) * TAKER * m, rel=1e-9, abs=1e-12)
    assert (root / "sweep" / "sweep.png").stat().st_size > 1000
    assert "data:image/png;base64," in (root / "sweep" / "sweep.html").read_text()


def test_sweep_in_forked_processes_is_the_serial_table(cli_run):
    root, codes, _ = cli_run
    assert codes["sweep"] == codes["sweep1"] == 0
    assert (root / "sweep" / "sweep.csv").read_bytes() == (root / "sweep1" / "sweep.csv").read_bytes()
    runs = [json.loads((root / d / "sweep.json").read_text())["runs"] for d in ("sweep", "sweep1")]
    assert runs[0] == runs[1]


def test_sweep_row_is_the_full_backtest_reports_metrics(cli_run):
    """A sweep row computes only the headline metrics (no report): the same numbers as the full report of the
    same backtest (`qlib-crypto backtest`, its metrics.json and equity)."""
    root, codes, _ = cli_run
    assert codes["same"] == 0 and codes["backtest"] == 0
    row = pd.read_csv(root / "same" / "sweep.csv").iloc[0]
    metrics = json.loads((root / "bt" / "metrics.json").read_text())
    compared = [k for k in SWEEP_COLUMNS if k in metrics]
    assert len(compared) >= 7
    for k in compared:
        assert row[k] == pytest.approx(metrics[k], rel=1e-6, abs=1e-9), k  # metrics.json is rounded to 6 digits
    equity = pd.read_csv(root / "bt" / "equity.csv")
    assert row["final_equity"] == pytest.approx(float(equity["equity"].iloc[-1]), rel=1e-12)


def test_sweep_more_cost_lower_net_return_by_hand(cli_run):
    root, _, _ = cli_run
    table = pd.read_csv(root / "sweep" / "sweep.csv").set_index(["fee_multiplier", "slippage_bps"])
    for (m, s), row in table.iterrows():
        assert row["total_return"] == pytest.approx(hand_total_return(m, s), rel=1e-9)
    r = table["total_return"]
    assert r[(0, 0)] > r[(0, 10)] > r[(2, 10)] and r[(0, 0)] > r[(2, 0)] > r[(2, 10)]
    assert table.loc[(0, 0), "fees_paid"] == 0 and table.loc[(0, 0), "slippage_paid"] == 0
    q = SIZE * ACCOUNT / CLOSE[2]
    assert table.loc[(2, 10), "slippage_paid"] == pytest.approx(q * CLOSE[2] * 0.001, rel=1e-9)


def test_backtest_cli_writes_report(cli_run):
    root, codes, _ = cli_run
    assert codes["backtest"] == 0
    metrics = json.loads((root / "bt" / "metrics.json").read_text())
    assert len(metrics) == 14
    assert metrics["total_return"] == pytest.approx(hand_total_return(0.5, 5.0), rel=1e-9)
    fills = pd.read_csv(root / "bt" / "fills.csv")
    assert len(fills) == 1 and fills["side"].iloc[0] == "buy"
    assert pd.Timestamp(fills["datetime"].iloc[0]) == IDX[2]
    for name in ("report.html", "report.json", "monthly_returns.csv"):
        assert (root / "bt" / name).is_file()
    # one BUY never closed: a single open round trip of q coins
    trades = pd.read_csv(root / "bt" / "trades.csv")
    assert len(trades) == 1
    assert trades["side"].iloc[0] == "long" and not bool(trades["closed"].iloc[0])
    assert trades["max_amount"].iloc[0] == pytest.approx(SIZE * ACCOUNT / CLOSE[2], rel=1e-9)
    assert trades["entry_price"].iloc[0] == pytest.approx(CLOSE[2] * (1 + 5.0 / 1e4), rel=1e-9)
    # one equity row per bar from --start (bar 0) to --end (bar 8), ending at the hand final equity
    equity = pd.read_csv(root / "bt" / "equity.csv", index_col="datetime", parse_dates=True)
    assert len(equity) == 9 and list(equity.index) == list(IDX[:9])
    assert equity["equity"].iloc[-1] == pytest.approx(ACCOUNT * (1 + hand_total_return(0.5, 5.0)), rel=1e-9)


def test_cli_errors_are_one_line_with_exit_code(cli_run):
    _, codes, stderr = cli_run
    assert codes["missing"] == 2 and "nope.parquet" in stderr
    assert codes["both"] == 2 and "exactly one of --signals and --pred" in stderr


def test_parse_grid_and_scale_fees():
    assert parse_grid("0, 0.5,1,2,1", "fee multiplier") == [0.0, 0.5, 1.0, 2.0]
    with pytest.raises(ConfigError, match="'-1'"):
        parse_grid("0,-1", "slippage")
    with pytest.raises(ConfigError, match="'x'"):
        parse_grid("1,x", "slippage")
    with pytest.raises(ConfigError, match="empty"):
        parse_grid(" , ", "slippage")
    assert scale_fees({"spot": {"taker": 0.001}, "swap": {"maker": 0.0002}}, 2.0) == {
        "spot": {"taker": 0.002},
        "swap": {"maker": 0.0004},
    }


def test_sweep_warns_once_about_the_data_not_once_per_cell(tmp_path):
    """A bar without a price is met by every cell of a sweep: its warnings (the exchange's missing deal price,
    the strategy's pending target) are printed once, not once per cell, serially or in forked processes."""
    from tiny_provider import write_provider

    close = CLOSE.copy()
    close[2] = np.nan  # the BUY's execution bar
    bars = pd.DataFrame({"open": close, "high": close + 1, "low": close - 1, "close": close, "volume": 1e6}, index=IDX)
    write_provider(tmp_path / "prov", {"BTC-USDT": bars})
    pd.DataFrame(
        {"datetime": [IDX[1]], "instrument": ["BTC-USDT"], "signal": ["BUY"], "position_size": [SIZE]}
    ).to_parquet(tmp_path / "signals.parquet")
    common = [
        "--signals", str(tmp_path / "signals.parquet"), "--provider-dir", str(tmp_path / "prov" / "60min"),
        "--freq", "60min", "--start", str(IDX[0]), "--end", str(IDX[8]), "--account", "100000",
        "--fees", "spot.taker=0.001", "--benchmark", "BTC-USDT", "--fee-multipliers", "0,1,2", "--slippage-bps", "0,10",
    ]  # fmt: skip
    for jobs in ("1", "2"):
        proc = subprocess.run(
            [sys.executable, "-m", "qlib_crypto", "sweep", *common, "--jobs", jobs, "--out", str(tmp_path / jobs)],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert len(pd.read_csv(tmp_path / jobs / "sweep.csv")) == 6
        price = [ln for ln in proc.stderr.splitlines() if "no usable deal price" in ln]
        pending = [ln for ln in proc.stderr.splitlines() if "stays pending" in ln]
        # serially once; with 2 forked processes at most once in each
        assert 1 <= len(price) <= int(jobs) and 1 <= len(pending) <= int(jobs), proc.stderr[-3000:]
