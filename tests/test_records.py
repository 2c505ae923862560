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
    return pd.DataFrame({"return": [0.02, -0.01, 0.03, -0.02], "bench": [0.01, 0.0, 0.01, -0.01],
                         "cost": [0.001, 0.0, 0.001, 0.0]}, index=idx)


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
