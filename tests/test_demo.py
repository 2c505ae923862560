"""The README's main job, `qlib-crypto demo`, end to end in a scratch directory (as a newcomer runs it), then a
second time in the same directory with --quiet: each run keeps its own reports."""

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


def _mlflow_runs(root: Path) -> dict[str, Path]:
    """run id -> run directory of the finished qrun runs in ROOT/mlruns (file store: one directory per run)."""
    return {p.name: p for p in (root / "mlruns").glob("*/*") if (p / "artifacts" / "pred.pkl").exists()}


def test_demo_runs_the_whole_chain_twice_keeping_each_runs_reports(tmp_path):
    shutil.copytree(REPO / "workflow_configs", tmp_path / "workflow_configs")
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)  # as in a clone (Qlib's recorder runs git)
    demo = [sys.executable, "-m", "qlib_crypto", "demo"]
    proc = subprocess.run(demo, cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "qlib-crypto demo finished" in proc.stdout
    # without --quiet: the six step headers and short outputs, not Qlib's whole console
    lines = proc.stdout.splitlines()
    assert [line.split()[1] for line in lines if line.startswith("== ")] == [f"{i}/6" for i in range(1, 7)]
    assert len(lines) < 60, proc.stdout
    assert sum("done in" in line for line in lines) == 6
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

    # a second run in the same directory, --quiet: only the final summary; the data steps find their data
    second = subprocess.run(demo + ["--quiet"], cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert second.stdout.lstrip("\n").startswith("qlib-crypto demo finished in ")
    assert "== " not in second.stdout and "done in" not in second.stdout
    assert len(second.stdout.splitlines()) < 20
    _check_two_runs(tmp_path, proc.stdout, second.stdout)


def _check_two_runs(root: Path, first_out: str, second_out: str) -> None:
    """Each run left a complete report set naming the MLflow run of its own model."""
    reports = root / "reports"
    sets = sorted(p for p in reports.iterdir() if p.is_dir() and not p.is_symlink() and (p / "run.json").exists())
    assert len(sets) == 2
    assert not [p.name for p in reports.iterdir() if p.name.endswith(".partial")]
    runs = _mlflow_runs(root)
    assert len(runs) == 2
    ids = []
    for run_dir in sets:
        manifest = json.loads((run_dir / "run.json").read_text())
        rid = manifest["recorder_id"]
        ids.append(rid)
        assert manifest["stamp"] == run_dir.name
        # the run's own MLflow run: Qlib logged this demo's stamp (its _QLIB_CRYPTO_DEMO_RUN variable) as a param
        assert (runs[rid] / "params" / "_QLIB_CRYPTO_DEMO_RUN").read_text() == run_dir.name
        # complete: every file the manifest lists is there, and the expected ones are listed
        for name in manifest["files"]:
            assert (run_dir / name).is_file(), name
        assert {
            "signals_60min.parquet",
            "backtest_60min/report.html",
            "backtest_60min/report.json",
            "sweep_60min/sweep.json",
            "sweep_60min/sweep.csv",
            "training_60min/training_report.json",
            "demo.log",
            "run.json",
        } <= set(manifest["files"])
        # each report names the model's run
        assert json.loads((run_dir / "backtest_60min/report.json").read_text())["info"]["model_run"] == rid
        assert json.loads((run_dir / "sweep_60min/sweep.json").read_text())["model_run"] == rid
        assert json.loads((run_dir / "training_60min/training_report.json").read_text())["info"]["run_id"] == rid
        log = (run_dir / "demo.log").read_text()
        assert f"qlib-crypto predict --experiment crypto_lightgbm_60min --run-id {rid} " in log
        assert len(pd.read_csv(run_dir / "sweep_60min/sweep.csv")) == 4
        # the signals are the scores of that run's model on the test quarter (its pred.pkl)
        sig = pd.read_parquet(run_dir / "signals_60min.parquet")
        pred = pd.read_pickle(runs[rid] / "artifacts" / "pred.pkl").iloc[:, 0]
        sig = sig.set_index([sig["datetime"].dt.tz_localize(None).astype("datetime64[ns]"), "instrument"])["score"]
        joined = pd.concat([sig.rename("signal_score"), pred.rename("pred")], axis=1, join="inner")
        assert len(joined) == len(sig) > 1000
        np.testing.assert_allclose(joined["signal_score"], joined["pred"], rtol=1e-6, atol=1e-9)
    assert len(set(ids)) == 2 and set(ids) == set(runs)
    # reports/latest is the second run; each summary printed its own run directory
    assert (reports / "latest").resolve() == sets[1].resolve()
    assert f"reports/{sets[0].name}/" in first_out and f"reports/{sets[1].name}/" in second_out
