"""24/7 annualised metrics: hand-computed values on known return series, and the companion record."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from qlib_crypto.errors import ConfigError
from qlib_crypto.workflow.records import (
    CryptoRiskRecord,
    annualized_metrics,
    bars_per_year,
    crypto_risk_analysis,
    metric_name,
)

R = [0.02, -0.01, 0.03, -0.02]


def test_annualized_metrics_by_hand_hourly():
    m = annualized_metrics(R, 8760)
    # mean = 0.02 / 4; deviations +-0.015, +-0.025 -> sum of squares 0.0017, ddof 1
    std = math.sqrt(0.0017 / 3)
    assert m["n_bars"] == 4
    assert m["mean"] == pytest.approx(0.005)
    assert m["std"] == pytest.approx(std)
    assert m["annualized_return"] == pytest.approx(43.8)  # 0.005 * 8760
    assert m["annualized_volatility"] == pytest.approx(std * math.sqrt(8760))
    assert m["information_ratio"] == pytest.approx(0.005 / std * math.sqrt(8760))
    # cumulative sums 0.02 0.01 0.04 0.02 -> worst gap to the running max is 0.02 - 0.04
    assert m["max_drawdown"] == pytest.approx(-0.02)
    # wealth 1.02 1.0098 1.040094 1.01929212 -> worst is 1.01929212 / 1.040094 - 1 = -0.02
    assert m["max_drawdown_geometric"] == pytest.approx(-0.02)
    assert m["total_return"] == pytest.approx(1.02 * 0.99 * 1.03 * 0.98 - 1)
    assert m["annualized_return_geometric"] == pytest.approx(1.01929212 ** (8760 / 4) - 1, rel=1e-9)


def test_annualized_metrics_daily_and_against_qlib():
    from qlib.contrib.evaluate import risk_analysis

    m = annualized_metrics(pd.Series(R), 365)
    assert m["annualized_return"] == pytest.approx(0.005 * 365)
    assert m["annualized_return_geometric"] == pytest.approx(1.01929212 ** (365 / 4) - 1)
    rng = np.random.default_rng(3)
    r = pd.Series(rng.normal(0.0002, 0.01, 500))
    ours = annualized_metrics(r, 8760)
    theirs = risk_analysis(r, N=8760, freq=None)["risk"]
    for key in ("mean", "std", "annualized_return", "information_ratio"):
        assert ours[key] == pytest.approx(theirs[key], rel=1e-12)
    # Qlib's 238-day scaler at 60min is 952 bars: ours is 8760 / 952 times larger
    qlib_hourly = risk_analysis(r, freq="60min")["risk"]
    assert ours["annualized_return"] / qlib_hourly["annualized_return"] == pytest.approx(8760 / 952)


def test_annualized_metrics_edge_cases():
    # a loss on the first bar is a drawdown from the starting capital
    m = annualized_metrics([-0.05, 0.01], 365)
    assert m["max_drawdown"] == pytest.approx(-0.05)
    assert m["max_drawdown_geometric"] == pytest.approx(-0.05)
    # NaN bars are dropped
    m = annualized_metrics([0.01, float("nan"), 0.03], 365)
    assert m["n_bars"] == 2 and m["mean"] == pytest.approx(0.02)
    # flat series: no information ratio rather than inf
    m = annualized_metrics([0.001] * 10, 365)
    assert m["std"] == pytest.approx(0.0) and math.isnan(m["information_ratio"])
    assert annualized_metrics([], 365)["n_bars"] == 0
    with pytest.raises(ConfigError, match="bars_per_year"):
        annualized_metrics(R, 0)


def test_bars_per_year_and_names():
    assert bars_per_year("60min") == 8760
    assert bars_per_year("1day") == 365 and bars_per_year("day") == 365
    assert bars_per_year("1min") == 525600
    assert bars_per_year("240min") == 2190
    with pytest.raises(ConfigError, match="week"):
        bars_per_year("week")
    assert (
        metric_name("60min", "excess_return_with_cost", "annualized_return")
        == "crypto.60min.excess_return_with_cost.annualized_return_365d"
    )
    assert metric_name("1day", "benchmark", "max_drawdown") == "crypto.1day.benchmark.max_drawdown"


def _report() -> pd.DataFrame:
    idx = pd.date_range("2024-01-01", periods=4, freq="h")
    return pd.DataFrame(
        {"return": [0.02, -0.01, 0.03, -0.02], "bench": [0.01, 0.0, 0.01, -0.01], "cost": [0.001, 0.0, 0.001, 0.0]},
        index=idx,
    )


def test_crypto_risk_analysis_series():
    table = crypto_risk_analysis(_report(), "60min")
    # excess with cost: 0.009 -0.01 0.019 -0.01 -> mean 0.002
    assert table.at["mean", "excess_return_with_cost"] == pytest.approx(0.002)
    assert table.at["annualized_return", "excess_return_with_cost"] == pytest.approx(0.002 * 8760)
    # excess without cost: 0.01 -0.01 0.02 -0.01 -> mean 0.0025
    assert table.at["annualized_return", "excess_return_without_cost"] == pytest.approx(0.0025 * 8760)
    assert table.at["annualized_return", "benchmark"] == pytest.approx(0.0025 * 8760)
    assert table.at["total_return", "return_with_cost"] == pytest.approx(1.019 * 0.99 * 1.029 * 0.98 - 1)
    with pytest.raises(ConfigError, match="bench"):
        crypto_risk_analysis(_report().drop(columns="bench"), "60min")


class FakeRecorder:
    """The recorder calls a record template makes, over dicts."""

    def __init__(self, artifacts):
        self.artifacts = dict(artifacts)
        self.metrics = {}

    def load_object(self, path):
        return self.artifacts[path]

    def list_artifacts(self, path=None):
        return [k for k in self.artifacts if path is None or k.startswith(path + "/")]

    def save_objects(self, artifact_path=None, **objects):
        for k, v in objects.items():
            self.artifacts[f"{artifact_path}/{k}" if artifact_path else k] = v

    def log_metrics(self, **metrics):
        self.metrics.update(metrics)


def test_companion_record_reads_any_portfolio_report():
    rec = FakeRecorder({"portfolio_analysis/report_normal_60min.pkl": _report(), "pred.pkl": None})
    CryptoRiskRecord(rec).generate()
    assert rec.metrics["crypto.60min.excess_return_with_cost.annualized_return_365d"] == pytest.approx(0.002 * 8760)
    assert rec.metrics["crypto.60min.bars_per_year"] == 8760
    assert "portfolio_analysis/crypto_port_analysis_60min.pkl" in rec.artifacts
    with pytest.raises(ConfigError, match="report_normal"):
        CryptoRiskRecord(FakeRecorder({})).generate()


def test_companion_record_prints_the_risk_table(capsys):
    """As Qlib's PortAnaRecord prints its risk tables at the end of a qrun: %, ratios, the basis stated."""
    CryptoRiskRecord(FakeRecorder({"portfolio_analysis/report_normal_60min.pkl": _report()})).generate()
    out = capsys.readouterr().out
    assert "24/7 risk analysis (60min; annualised over 8,760 bars = 365 days x 24 bars a day" in out
    header = next(line for line in out.splitlines() if line.startswith("metric"))
    assert header.split() == [
        "metric",
        "benchmark",
        "return_without_cost",
        "return_with_cost",
        "excess_return_without_cost",
        "excess_return_with_cost",
    ]
    row = next(line for line in out.splitlines() if line.startswith("annualized_return "))
    # excess with cost: mean 0.002 per bar -> 17.52 a year; shown in %, not as a raw fraction
    assert row.split()[-1] == f"{0.002 * 8760 * 100:,.2f}%"
    ir = next(line for line in out.splitlines() if line.startswith("information_ratio"))
    ex = np.array([0.009, -0.01, 0.019, -0.01])
    assert ir.split()[-1] == f"{ex.mean() / ex.std(ddof=1) * math.sqrt(8760):.2f}"


class ArtifactRecorder(FakeRecorder):
    """FakeRecorder plus the artifact calls CryptoBacktestRecord makes (files copied into a dict)."""

    def log_artifact(self, local_path, artifact_path=None):
        from pathlib import Path

        self.artifacts[f"{artifact_path}/{Path(local_path).name}"] = Path(local_path).read_bytes()


def test_qrun_prints_the_backtest_summary_then_the_risk_table(capsys):
    """The records of a qrun workflow print, at the end, the backtest summary (as Qlib's PortAnaRecord prints its
    risk tables) and then the 24/7 risk table, with the numbers the records logged."""
    import json

    from tiny_provider import random_walk_bars, use_provider

    from qlib_crypto.workflow.backtest_record import CryptoBacktestRecord

    swaps = ["ETH-USDT-SWAP", "SOL-USDT-SWAP", "XRP-USDT-SWAP", "ADA-USDT-SWAP"]
    bars = random_walk_bars(["BTC-USDT", *swaps], 72, start="2024-03-01", seed=5)
    use_provider("records_print", bars)
    times = pd.date_range("2024-03-01", periods=72, freq="h")
    rng = np.random.default_rng(1)
    idx = pd.MultiIndex.from_product([times, swaps], names=["datetime", "instrument"])
    rec = ArtifactRecorder({"pred.pkl": pd.DataFrame({"score": rng.normal(size=len(idx))}, index=idx)})
    CryptoBacktestRecord(
        rec,
        config={
            "strategy": {
                "class": "LongShortStrategy",
                "module_path": "qlib_crypto.strategy",
                "kwargs": {"signal": "<PRED>", "topk": 1, "rebalance_every": 6},
            },
            "backtest": {
                "start_time": str(times[0]),
                "end_time": str(times[-2]),
                "account": 100_000.0,
                "benchmark": "BTC-USDT",
                "exchange": {"slippage_bps": 2.0},
            },
        },
        freq="60min",
    ).generate()
    CryptoRiskRecord(rec).generate()
    out = capsys.readouterr().out
    start = out.index("Crypto backtest (60min): 2024-03-01 00:00 .. 2024-03-03 22:00 UTC, 71 60min bars")
    assert out.index("24/7 risk analysis (60min;") > start
    summary = out[start:]
    total = rec.metrics["backtest.total_return"]
    assert "total return" in summary and f"{total * 100:.2f}%" in summary
    report = json.loads(rec.artifacts["crypto_backtest/report.json"])
    assert f"{report['pnl_attribution']['fees']:,.2f} USDT" in summary
    assert f"{report['summary']['final_equity']:,.2f} USDT" in summary
    # the report of the record has the run's funding events, order reports and positions
    assert report["orders"]["n_orders"] > 0 and any(v is not None for v in report["timeseries"]["long_exposure"])


# ---------------------------------------------------------------------------------------- signal analysis
def _signal(seed: int = 5) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Scores and labels on hourly bars with what makes the per-bar statistics tricky: bars of 1 to 25
    instruments (k = int(n * 0.2) from 0 to 5), NaN scores and labels, tied scores, a bar with no score."""
    rng = np.random.default_rng(seed)
    rows = []
    for t, time in enumerate(pd.date_range("2024-01-01", periods=240, freq="h")):
        n = 1 + t % 25
        for i in range(n):
            rows.append((time, f"I{i:02d}"))
    index = pd.MultiIndex.from_tuples(rows, names=["datetime", "instrument"])
    score = rng.normal(size=len(index))
    score[rng.random(len(index)) < 0.2] = np.round(score[rng.random(len(index)) < 0.2][:1], 1)[0]  # ties
    score = np.where(rng.random(len(index)) < 0.3, np.round(score, 1), score)  # more ties
    score[rng.random(len(index)) < 0.05] = np.nan
    label = rng.normal(scale=0.01, size=len(index))
    label[rng.random(len(index)) < 0.05] = np.nan
    times = index.get_level_values("datetime")
    score[times == times[-1]] = np.nan  # a bar without any score
    return (
        pd.DataFrame({"score": score}, index=index),
        pd.DataFrame({"LABEL0": label}, index=index),
    )


def test_long_short_returns_are_qlibs():
    from qlib.contrib.eva.alpha import calc_long_short_return

    from qlib_crypto.workflow.records import long_short_returns

    pred, label = _signal()
    ours = long_short_returns(pred["score"], label["LABEL0"])
    theirs = calc_long_short_return(pred["score"], label["LABEL0"])
    for a, b in zip(ours, theirs):
        assert a.index.equals(b.index)
        assert a.notna().sum() > 150  # most bars have a value; the 1-4 instrument bars (k = 0) do not
        pd.testing.assert_series_equal(a, b, check_names=False, check_exact=False, rtol=1e-12, atol=1e-16)
    # constant scores: every row ties, so the first k rows are both the long and the short side
    flat = pd.Series(0.5, index=pred.index)
    ls, _ = long_short_returns(flat, label["LABEL0"])
    q_ls, _ = calc_long_short_return(flat, label["LABEL0"])
    pd.testing.assert_series_equal(ls, q_ls, check_names=False, check_exact=False, rtol=1e-12, atol=1e-16)


class SigRecorder(FakeRecorder):
    """FakeRecorder listing the top-level artifacts as MLflow does (``list_artifacts("")``)."""

    def list_artifacts(self, path=None):
        if not path:
            return [k for k in self.artifacts if "/" not in k]
        return super().list_artifacts(path)

    def load_object(self, path):
        from qlib.utils.exceptions import LoadObjectError

        if path not in self.artifacts:
            raise LoadObjectError(path)
        return self.artifacts[path]


def test_sig_ana_record_gives_qlibs_metrics_and_artifacts():
    from qlib.workflow.record_temp import SigAnaRecord as QlibSigAnaRecord

    from qlib_crypto.workflow.records import SigAnaRecord

    pred, label = _signal(seed=9)
    runs = {}
    for name, cls in (("ours", SigAnaRecord), ("qlib", QlibSigAnaRecord)):
        rec = SigRecorder({"pred.pkl": pred, "label.pkl": label})
        cls(rec, ana_long_short=True, ann_scaler=8760).generate()
        runs[name] = rec
    ours, qlib = runs["ours"], runs["qlib"]
    assert sorted(ours.metrics) == sorted(qlib.metrics) and len(ours.metrics) == 8
    for key, value in qlib.metrics.items():
        assert ours.metrics[key] == pytest.approx(value, rel=1e-10, abs=1e-14), key
    arts = sorted(k for k in qlib.artifacts if k.startswith("sig_analysis/"))
    assert arts == sorted(k for k in ours.artifacts if k.startswith("sig_analysis/")) and len(arts) == 4
    for key in arts:
        pd.testing.assert_series_equal(
            ours.artifacts[key], qlib.artifacts[key], check_names=False, check_exact=False, rtol=1e-10, atol=1e-14
        )
