"""The README's main job, `qlib-crypto demo`, end to end in a scratch directory (as a newcomer runs it)."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]


def test_demo_runs_the_whole_chain(tmp_path):
    shutil.copytree(REPO / "workflow_configs", tmp_path / "workflow_configs")
    proc = subprocess.run([sys.executable, "-m", "qlib_crypto", "demo", "--quiet"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "qlib-crypto demo finished" in proc.stdout

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
    runs = [p for p in (tmp_path / "mlruns").glob("*/*") if (p / "metrics").is_dir() and (p / "metrics" / "IC").exists()]
    assert len(runs) == 1
    ic = float((runs[0] / "metrics" / "IC").read_text().split()[1])
    assert np.isfinite(ic)
    assert (runs[0] / "artifacts" / "pred.pkl").exists() and (runs[0] / "artifacts" / "crypto_backtest" / "report.html").exists()

    # signals of the test quarter with the documented columns and rules
    sig = pd.read_parquet(tmp_path / "reports/signals_60min.parquet")
    assert list(sig.columns) == ["datetime", "instrument", "score", "signal", "position_size"]
    assert set(sig["signal"]) <= {"BUY", "SELL", "HOLD"}
    assert sig["datetime"].min() >= pd.Timestamp("2024-04-01", tz="UTC")
    assert (sig.loc[sig["signal"] == "HOLD", "position_size"] == 0).all()
    assert sig.groupby("datetime")["position_size"].apply(lambda s: s.abs().sum()).max() <= 1.0 + 1e-12

    # the backtest report and the cost sweep: more cost never gives a higher net return
    metrics = json.loads((tmp_path / "reports/backtest_60min/metrics.json").read_text())
    assert {"total_return", "sharpe", "fees_paid", "slippage_paid", "funding_paid"} <= set(metrics)
    sweep = pd.read_csv(tmp_path / "reports/sweep_60min/sweep.csv")
    assert len(sweep) == 6
    fee_col = next(c for c in sweep.columns if "fee" in c and "mult" in c)
    slip_col = next(c for c in sweep.columns if "slippage" in c and "bps" in c)
    ret_col = "total_return"
    free = sweep[(sweep[fee_col] == 0) & (sweep[slip_col] == 0)][ret_col].iloc[0]
    full = sweep[(sweep[fee_col] == 1) & (sweep[slip_col] == 2)][ret_col].iloc[0]
    assert free > full
