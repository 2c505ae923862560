"""The README's main job, `qlib-crypto demo`, end to end in a scratch directory (as a newcomer runs it).
Two demos in one directory: tests/test_demo_two_runs.py."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[1]


def test_demo_runs_the_whole_chain(tmp_path):
    shutil.copytree(REPO / "workflow_configs", tmp_path / "workflow_configs")
    proc = subprocess.run(
        [sys.executable, "-m", "qlib_crypto", "demo", "--quiet"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "qlib-crypto demo finished" in proc.stdout
    # quiet: our own data warnings may show, Python/numpy warnings of Qlib's code may not
    assert "Warning:" not in proc.stderr and "Traceback" not in proc.stderr, proc.stderr[-3000:]

    # provider: a 24/7 hourly calendar from 2023-01-01 00:00 to 2024-06-30 23:00, a daily one beside it
    cal = (tmp_path / "data/qlib/synthetic/60min/calendars/60min.txt").read_text().split("\n")
    cal = [c for c in cal if c]
    assert cal[0] == "2023-01-01 00:00:00" and cal[-1] == "2024-06-30 23:00:00"
    assert len(cal) == (pd.Timestamp("2024-07-01") - pd.Timestamp("2023-01-01")) // pd.Timedelta(hours=1)
    day_cal = [c for c in (tmp_path / "data/qlib/synthetic/day/calendars/day.txt").read_text().split("\n") if c]
    assert len(day_cal) == (pd.Timestamp("2024-07-01") - pd.Timestamp("2023-01-01")).days
    universe = (tmp_path / "data/qlib/synthetic/60min/instruments/all.txt").read_text().splitlines()
    assert len(universe) == 20 and any(line.startswith("BTC-USDT\t") for line in universe)

    # the qrun run is in ./mlruns with its IC metrics and artifacts
    runs = [
        p for p in (tmp_path / "mlruns").glob("*/*") if (p / "metrics").is_dir() and (p / "metrics" / "IC").exists()
    ]
    assert len(runs) == 1
    # this run's reports name that MLflow run (reports/latest -> reports/<stamp>/)
    assert json.loads((tmp_path / "reports/latest/run.json").read_text())["recorder_id"] == runs[0].name
    ic = float((runs[0] / "metrics" / "IC").read_text().split()[1])
    art = runs[0] / "artifacts"
    pred, label = pd.read_pickle(art / "pred.pkl"), pd.read_pickle(art / "label.pkl")
    joined = pd.concat([pred.iloc[:, 0].rename("score"), label.iloc[:, 0].rename("label")], axis=1).dropna()
    per_bar = [
        np.corrcoef(g["score"], g["label"])[0, 1]
        for _, g in joined.groupby(level="datetime")
        if g["score"].std() > 0 and g["label"].std() > 0
    ]
    assert len(per_bar) > 2000  # the test quarter, hourly
    assert ic == pytest.approx(np.mean(per_bar), abs=1e-6)
    assert (art / "crypto_backtest" / "report.html").read_text().count('class="plotly-graph-div"') >= 6

    # signals of the test quarter with the documented columns and rules
    sig = pd.read_parquet(tmp_path / "reports/latest/signals_60min.parquet")
    assert list(sig.columns) == ["datetime", "instrument", "score", "signal", "position_size"]
    assert set(sig["signal"]) <= {"BUY", "SELL", "HOLD"}
    assert sig["datetime"].min() >= pd.Timestamp("2024-04-01", tz="UTC")
    assert (sig.loc[sig["signal"] == "HOLD", "position_size"] == 0).all()
    assert sig.groupby("datetime")["position_size"].apply(lambda s: s.abs().sum()).max() <= 1.0 + 1e-12

    # the backtest report and the cost sweep: more cost never gives a higher net return
    metrics = json.loads((tmp_path / "reports/latest/backtest_60min/metrics.json").read_text())
    assert {"total_return", "sharpe", "fees_paid", "slippage_paid", "funding_paid"} <= set(metrics)
    # every fill: taker fee (OKX base tier: spot 0.10%, swap 0.05%) and 2 bps slippage, by hand
    fills = pd.read_csv(tmp_path / "reports/latest/backtest_60min/fills.csv")
    assert len(fills) > 0
    taker = np.where(fills["instrument"].str.endswith("-SWAP"), 0.0005, 0.0010)
    fee = fills["amount"].abs() * fills["price"] * taker
    np.testing.assert_allclose(fills["fee"], fee, rtol=1e-9)
    side = np.where(fills["side"] == "buy", 1.0, -1.0)
    np.testing.assert_allclose(fills["price"], fills["deal_price"] * (1 + side * 2e-4), rtol=1e-12)
    assert metrics["fees_paid"] == pytest.approx(fee.sum(), rel=1e-9)
    slippage = (fills["amount"].abs() * (fills["price"] - fills["deal_price"]).abs()).sum()
    assert metrics["slippage_paid"] == pytest.approx(slippage, rel=1e-9)
    equity = pd.read_csv(tmp_path / "reports/latest/backtest_60min/equity.csv")["equity"]
    assert metrics["total_return"] == pytest.approx(equity.iloc[-1] / equity.iloc[0] - 1, rel=1e-9)
    sweep = pd.read_csv(tmp_path / "reports/latest/sweep_60min/sweep.csv")
    assert len(sweep) == 4  # fees x0, x1 by slippage 0, 2 bps
    fee_col = next(c for c in sweep.columns if "fee" in c and "mult" in c)
    slip_col = next(c for c in sweep.columns if "slippage" in c and "bps" in c)
    ret_col = "total_return"
    free = sweep[(sweep[fee_col] == 0) & (sweep[slip_col] == 0)][ret_col].iloc[0]
    full = sweep[(sweep[fee_col] == 1) & (sweep[slip_col] == 2)][ret_col].iloc[0]
    assert free > full
