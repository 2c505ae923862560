"""End to end: the repository's 60min workflow through plain `qrun` on small synthetic data.

5 instruments x 60 days of hourly bars in a temporary directory; the workflow YAML is the repository's
with dates and model size shrunk. Asserts the MLflow recorder holds IC metrics (equal to an independent
computation from the recorded predictions and labels), predictions, labels, the trained model, the IC
series, the portfolio report and the 24/7-annualised metrics.
"""

from __future__ import annotations

import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

sys.path.insert(0, str(Path(__file__).parent))
from test_handlers import daily_bars, synthetic_bars, write_provider  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "workflow_configs" / "workflow_config_lightgbm_crypto_60min.yaml"
QRUN = Path(sys.executable).with_name("qrun")
INSTRUMENTS = ["BTC-USDT", "ETH-USDT", "SOL-USDT-SWAP", "XRP-USDT", "DOGE-USDT-SWAP"]


def small_workflow(conf: dict) -> dict:
    """The repository workflow with dates for 2023-01-01 .. 2023-03-01 and a small model."""
    conf["qlib_init"]["provider_uri"] = {"60min": "qlib/60min", "day": "qlib/day"}
    handler = conf["task"]["dataset"]["kwargs"]["handler"]["kwargs"]
    handler.update(
        start_time="2023-01-01",
        end_time="2023-03-01 23:00:00",
        fit_start_time="2023-01-01",
        fit_end_time="2023-01-31 23:00:00",
        windows=[3, 12, 24],
    )
    conf["task"]["dataset"]["kwargs"]["segments"] = {
        "train": ["2023-01-01", "2023-01-31 23:00:00"],
        "valid": ["2023-02-01", "2023-02-14 23:00:00"],
        "test": ["2023-02-15", "2023-03-01 23:00:00"],
    }
    conf["task"]["model"]["kwargs"].update(num_boost_round=20, min_data_in_leaf=20, num_leaves=7)
    for record in conf["task"]["record"]:
        if record["class"] == "CryptoBacktestRecord":
            backtest = record["kwargs"]["config"]["backtest"]
            backtest.update(start_time="2023-02-15 00:00:00", end_time="2023-03-01 20:00:00")
            backtest["exchange"]["kwargs"]["instrument_meta"] = None  # no raw store in this test
            record["kwargs"]["config"]["strategy"]["kwargs"].update(topk=1)
        if record["class"] == "TrainingReportRecord":
            record["kwargs"]["out_dir"] = "reports/training"
    for anchor in ("data_handler_config", "port_analysis_config"):
        conf.pop(anchor, None)
    return conf


@pytest.fixture(scope="module")
def qrun_result(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("e2e")
    bars = synthetic_bars(INSTRUMENTS, n_bars=60 * 24, seed=11)
    write_provider(tmp / "qlib" / "60min", bars, "60min")
    write_provider(tmp / "qlib" / "day", daily_bars(bars), "day")
    with open(CONFIG) as fh:
        conf = small_workflow(yaml.safe_load(fh))
    (tmp / "wf.yaml").write_text(yaml.safe_dump(conf, sort_keys=False))
    proc = subprocess.run([str(QRUN), "wf.yaml"], cwd=tmp, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return tmp, conf


def test_recorder_holds_metrics_predictions_and_model(qrun_result):
    from mlflow.tracking import MlflowClient

    tmp, conf = qrun_result
    client = MlflowClient(tracking_uri=f"file:{tmp / 'mlruns'}")
    exp = client.get_experiment_by_name(conf["experiment_name"])
    assert exp is not None
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1
    run = runs[0]
    metrics = run.data.metrics
    for key in ("IC", "ICIR", "Rank IC", "Rank ICIR", "Long-Short Ann Return", "l2.train", "l2.valid"):
        assert key in metrics and np.isfinite(metrics[key]), key
    art = Path(run.info.artifact_uri.removeprefix("file://"))

    def load(name):
        with open(art / name, "rb") as fh:
            return pickle.load(fh)

    pred, label = load("pred.pkl"), load("label.pkl")
    test_dates = pred.index.get_level_values("datetime")
    assert test_dates.min() == pd.Timestamp("2023-02-15") and test_dates.max() <= pd.Timestamp("2023-03-01 23:00")
    assert set(pred.index.get_level_values("instrument")) == set(INSTRUMENTS)
    # IC recomputed from the recorded predictions and labels: mean over bars of the cross-sectional correlation
    joined = pd.concat([pred.iloc[:, 0].rename("score"), label.iloc[:, 0].rename("label")], axis=1).dropna()
    per_bar = pd.Series(
        {
            t: np.corrcoef(g["score"], g["label"])[0, 1]
            for t, g in joined.groupby(level="datetime")
            if g["score"].std() > 0 and g["label"].std() > 0
        }
    )
    assert len(per_bar) > 100
    assert metrics["IC"] == pytest.approx(per_bar.mean(), abs=1e-6)
    ic_series = load("sig_analysis/ic.pkl").dropna()
    pd.testing.assert_series_equal(
        ic_series.loc[per_bar.index], per_bar, check_names=False, check_index_type=False, check_freq=False, atol=1e-6
    )
    # the trained model, usable for prediction
    model = load("params.pkl")
    assert type(model).__name__ == "LGBModel" and model.model is not None
    assert model.model.num_feature() == 9 + 4 + (29 + 6 + 4) * 3 + 2 * 4
    # portfolio report and the 24/7 annualisation next to Qlib's own metrics
    report = load("portfolio_analysis/report_normal_60min.pkl")
    assert {"return", "bench", "cost"} <= set(report.columns)
    excess = report["return"] - report["bench"] - report["cost"]
    ours = metrics["crypto.60min.excess_return_with_cost.annualized_return_365d"]
    assert ours == pytest.approx(excess.mean() * 8760, rel=1e-6)
    assert (art / "portfolio_analysis" / "crypto_port_analysis_60min.pkl").exists()
    # the crypto backtest record: report files and its metrics; the equity curve is the report's account
    import json

    crypto_metrics = json.loads((art / "crypto_backtest" / "metrics.json").read_text())
    assert metrics["backtest.total_return"] == pytest.approx(crypto_metrics["total_return"], rel=1e-9)
    assert crypto_metrics["total_return"] == pytest.approx(report["account"].iloc[-1] / 1_000_000 - 1, rel=1e-6)
    assert (art / "crypto_backtest" / "report.html").exists()
    # every fill recomputed from the workflow config: taker fee by market type, slippage around the deal price
    exchange = next(r for r in conf["task"]["record"] if r["class"] == "CryptoBacktestRecord")["kwargs"]["config"][
        "backtest"
    ]["exchange"]["kwargs"]
    assert exchange["fees"]["spot"]["taker"] == 0.0010 and exchange["fees"]["swap"]["taker"] == 0.0005
    slippage_bps = float(exchange["slippage_bps"])
    fills = pd.read_csv(art / "crypto_backtest" / "fills.csv")
    assert len(fills) > 0
    assert set(fills["side"]) <= {"buy", "sell"} and set(fills["role"]) == {"taker"}
    amount = fills["amount"].abs().to_numpy(dtype="float64")
    deal = fills["deal_price"].to_numpy(dtype="float64")
    price = fills["price"].to_numpy(dtype="float64")
    sign = np.where(fills["side"] == "buy", 1.0, -1.0)
    np.testing.assert_allclose(price, deal * (1 + sign * slippage_bps / 1e4), rtol=1e-9)
    taker = np.where(fills["instrument"].str.endswith("-SWAP"), 0.0005, 0.0010)
    np.testing.assert_allclose(fills["fee"].to_numpy(dtype="float64"), amount * price * taker, rtol=1e-9)
    slippage = amount * np.abs(price - deal)
    np.testing.assert_allclose(fills["slippage"].to_numpy(dtype="float64"), slippage, rtol=1e-9)
    assert crypto_metrics["fees_paid"] == pytest.approx((amount * price * taker).sum(), rel=1e-9)
    assert crypto_metrics["slippage_paid"] == pytest.approx(slippage.sum(), rel=1e-9)
    # model with metadata for qlib-crypto predict, and the training report (recorder and user directory)
    meta = yaml.safe_load(next((art / "model").glob("*.meta.yaml")).read_text())
    assert len(meta["feature_names"]) == model.model.num_feature()
    training = json.loads((art / "training_report" / "training_report.json").read_text())
    assert training["metrics"]["IC"] == pytest.approx(per_bar.mean(), abs=1e-6)
    assert training["metrics"]["n_datetimes"] == len(per_bar)
    assert (art / "training_report" / "training_report.html").exists()
    assert list((tmp / "reports" / "training").glob("*.html"))


ROLLING_SCRIPT = """
import json, sys
import qlib
qlib.init(provider_uri={"60min": sys.argv[1]}, region="us", kernels=1)
from qlib_crypto.workflow.rolling import rolling_tasks
task = {
    "model": {"class": "LGBModel", "module_path": "qlib.contrib.model.gbdt"},
    "dataset": {"class": "DatasetH", "module_path": "qlib.data.dataset", "kwargs": {
        "handler": {"class": "CryptoAlpha158", "module_path": "qlib_crypto.data.handler", "kwargs": {
            "start_time": "2023-01-01", "end_time": "2023-01-15 23:00:00", "freq": "60min",
            "fit_start_time": "2023-01-01", "fit_end_time": "2023-01-10 23:00:00"}},
        "segments": {"train": ["2023-01-01", "2023-01-10 23:00:00"],
                     "test": ["2023-01-11 00:00:00", "2023-01-20 23:00:00"]}}},
}
tasks = rolling_tasks(task, step=48, freq="60min", horizon=int(sys.argv[2]))
out = []
for t in tasks:
    seg = t["dataset"]["kwargs"]["segments"]
    h = t["dataset"]["kwargs"]["handler"]["kwargs"]
    out.append({k: [str(v[0]), str(v[1])] for k, v in seg.items()} | {"fit": [str(h["fit_start_time"]), str(h["fit_end_time"])],
               "end": str(h["end_time"]), "records": [r["class"] for r in t["record"]]})
print(json.dumps(out))
"""


def test_walk_forward_windows_in_bars(tmp_path):
    import json

    # 20 days of hourly bars: 2023-01-01 00:00 .. 2023-01-20 23:00
    write_provider(tmp_path / "60min", synthetic_bars(INSTRUMENTS[:2], n_bars=20 * 24), "60min")
    horizon = 2
    proc = subprocess.run(
        [sys.executable, "-c", ROLLING_SCRIPT, str(tmp_path / "60min"), str(horizon)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    tasks = json.loads(proc.stdout.strip().splitlines()[-1])
    hour = pd.Timedelta(hours=1)
    # test windows of 48 bars from 2023-01-11 00:00 to the end of the data: 240 bars -> 5 windows
    assert len(tasks) == 5
    for i, t in enumerate(tasks):
        test_start = pd.Timestamp("2023-01-11") + i * 48 * hour
        assert [pd.Timestamp(x) for x in t["test"]] == [test_start, test_start + 47 * hour]
        # expanding train window, ending horizon + 1 bars before the test window (no label leak)
        assert pd.Timestamp(t["train"][0]) == pd.Timestamp("2023-01-01 01:00")
        assert pd.Timestamp(t["train"][1]) == test_start - (horizon + 1) * hour
        # normalisers refit on the train window; the handler loads through the test end
        assert t["fit"] == t["train"]
        assert pd.Timestamp(t["end"]) >= pd.Timestamp(t["test"][1])
        assert t["records"] == ["SignalRecord"]


def test_walk_forward_analysis_records_of_the_60min_workflow():
    """The repository's 60min records, as the walk-forward re-runs them on the merged predictions."""
    import copy

    from qlib_crypto.workflow.rolling import _analysis_records

    with open(CONFIG) as fh:
        conf = yaml.safe_load(fh)
    original = copy.deepcopy(conf)
    yaml_records = {r["class"]: r for r in conf["task"]["record"]}
    assert {
        "SignalRecord",
        "ModelArtifactRecord",
        "TrainingReportRecord",
        "SigAnaRecord",
        "CryptoBacktestRecord",
        "CryptoRiskRecord",
    } <= set(yaml_records)
    # merged walk-forward predictions over 2024-03-20 00:00 .. 2024-07-01 05:00 (wider than the test segment)
    times = pd.date_range("2024-03-20", periods=24 * 103 + 6, freq="h")
    index = pd.MultiIndex.from_product([times, ["BTC-USDT", "ETH-USDT-SWAP"]], names=["datetime", "instrument"])
    pred = pd.DataFrame({"score": np.arange(len(index), dtype=float)}, index=index).sample(frac=1.0, random_state=3)

    records = _analysis_records(conf, pred, "60min")
    # the signal is already merged and the model artifact needs one model: both dropped, order kept
    expected = [
        r["class"] for r in original["task"]["record"] if r["class"] not in ("SignalRecord", "ModelArtifactRecord")
    ]
    assert [r["class"] for r in records] == expected
    by_class = {r["class"]: r for r in records}
    # the backtest covers the predicted range, ending one bar before the last predicted bar
    backtest = by_class["CryptoBacktestRecord"]["kwargs"]["config"]["backtest"]
    assert pd.Timestamp(backtest["start_time"]) == pd.Timestamp("2024-03-20 00:00")
    assert pd.Timestamp(backtest["end_time"]) == pd.Timestamp("2024-07-01 04:00")
    old_backtest = yaml_records["CryptoBacktestRecord"]["kwargs"]["config"]["backtest"]
    assert {k: v for k, v in backtest.items() if k not in ("start_time", "end_time")} == {
        k: v for k, v in old_backtest.items() if k not in ("start_time", "end_time")
    }
    assert (
        by_class["CryptoBacktestRecord"]["kwargs"]["config"]["strategy"]
        == yaml_records["CryptoBacktestRecord"]["kwargs"]["config"]["strategy"]
    )
    # the training report runs without a model or dataset, into its own directory
    report_kwargs = by_class["TrainingReportRecord"]["kwargs"]
    assert report_kwargs["model"] is None and report_kwargs["dataset"] is None
    assert report_kwargs["out_dir"] == yaml_records["TrainingReportRecord"]["kwargs"]["out_dir"] + "_walk_forward"
    assert by_class["SigAnaRecord"] == yaml_records["SigAnaRecord"]
    assert by_class["CryptoRiskRecord"] == yaml_records["CryptoRiskRecord"]
    assert conf == original  # the workflow config is not modified
