"""Model analysis (IC by month, IC distribution, group returns, score autocorrelation): by hand on small frames, and
equal to the numbers inside Qlib's own analysis_model.model_performance_graph figures on 24/7 hourly bars."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from qlib_crypto.workflow.model_analysis import (
    distribution,
    group_returns,
    group_summary,
    model_analysis,
    monthly_mean,
    pred_label_frame,
    score_autocorrelation,
)


def _frame(times, insts, score, label):
    idx = pd.MultiIndex.from_product([times, insts], names=["datetime", "instrument"])
    return pd.Series(np.ravel(score), index=idx), pd.Series(np.ravel(label), index=idx)


def test_group_returns_by_hand():
    times = pd.date_range("2024-03-01", periods=2, freq="h")
    insts = [f"I{i:02d}" for i in range(11)]
    score = [
        [0.9, 0.1, 0.5, 0.3, 0.7, 0.2, 0.8, 0.4, 0.6, 0.0, -0.1],
        [0.0, 1.0, 0.2, 0.8, 0.4, 0.6, np.nan, 0.3, 0.5, 0.7, 0.9],
    ]
    label = [
        [0.09, 0.01, 0.05, 0.03, 0.07, 0.02, 0.08, 0.04, 0.06, 0.00, -0.01],
        [0.10, 0.20, 0.30, 0.40, 0.50, 0.60, 0.70, 0.80, np.nan, 1.00, 1.10],
    ]
    pred, lab = _frame(times, insts, score, label)
    g = group_returns(pred_label_frame(pred, lab), 5)
    # bar 0: 11 scores -> 2 per group by descending score; the lowest (-0.1) is in no group
    order = np.argsort(-np.array(score[0]), kind="stable")
    lab0 = np.array(label[0])[order]
    expect0 = [lab0[0:2].mean(), lab0[2:4].mean(), lab0[4:6].mean(), lab0[6:8].mean(), lab0[8:10].mean()]
    assert g.iloc[0][[f"Group{i}" for i in range(1, 6)]].to_numpy() == pytest.approx(expect0)
    assert g.iloc[0]["long-short"] == pytest.approx(expect0[0] - expect0[4])
    assert g.iloc[0]["long-average"] == pytest.approx(expect0[0] - np.mean(label[0]))
    # bar 1: 10 scored rows (one NaN score), NaN labels skipped in the means
    s1, l1 = np.array(score[1]), np.array(label[1])
    ok = ~np.isnan(s1)
    order = np.argsort(-s1[ok], kind="stable")
    lab1 = l1[ok][order]
    expect1 = [np.nanmean(lab1[2 * i : 2 * i + 2]) for i in range(5)]
    assert g.iloc[1][[f"Group{i}" for i in range(1, 6)]].to_numpy() == pytest.approx(expect1)
    assert g.iloc[1]["long-average"] == pytest.approx(expect1[0] - np.nanmean(l1))
    summary = group_summary(g, 8760)
    ls = g["long-short"]
    assert summary.at["annualized_return", "long-short"] == pytest.approx(ls.mean() * 8760)
    assert summary.at["information_ratio", "long-short"] == pytest.approx(ls.mean() / ls.std(ddof=1) * math.sqrt(8760))
    assert summary.at["cumulative_return", "Group1"] == pytest.approx(expect0[0] + expect1[0])


def test_autocorrelation_monthly_ic_and_distribution_by_hand():
    times = pd.date_range("2024-01-31 22:00", periods=4, freq="h")
    insts = ["A", "B", "C", "D", "E"]
    score = [[1.0, 2.0, 3.0, 4.0, 5.0], [2.0, 1.0, 3.0, 5.0, 4.0], [5.0, 4.0, 3.0, 2.0, 1.0], [5.0, 4.0, 3.0, 1.0, 2.0]]
    pred, lab = _frame(times, insts, score, np.zeros((4, 5)))
    ac = score_autocorrelation(pred_label_frame(pred, lab), lag=1)
    assert math.isnan(ac.iloc[0])  # nothing before the first bar
    for t in range(1, 4):
        assert ac.iloc[t] == pytest.approx(stats.spearmanr(score[t], score[t - 1]).statistic)
    ic = pd.Series([0.12, 0.3, -0.2, 0.4], index=times)
    assert monthly_mean(ic).to_dict() == pytest.approx({"2024-01": 0.21, "2024-02": 0.1})
    d = distribution(ic, bins=4)
    assert d["mean"] == pytest.approx(0.155) and d["std"] == pytest.approx(np.std([0.12, 0.3, -0.2, 0.4], ddof=1))
    assert d["t_stat"] == pytest.approx(0.155 / d["std"] * 2) and d["share_positive"] == 0.75
    assert d["histogram"]["edges"] == pytest.approx([-0.2, -0.05, 0.1, 0.25, 0.4])
    assert d["histogram"]["counts"] == [1, 0, 1, 2]
    std0 = np.std([0.12, 0.3, -0.2, 0.4])
    assert d["qq"]["sample"] == pytest.approx((np.array([-0.2, 0.12, 0.3, 0.4]) - 0.155) / std0)
    assert d["qq"]["theoretical"] == pytest.approx(stats.norm.ppf([0.2, 0.4, 0.6, 0.8]))


def test_numbers_equal_qlib_model_performance_graph_on_hourly_bars():
    """Qlib's analysis_model works on 24/7 bars: the report's numbers are the data of its figures."""
    from qlib.contrib.report.analysis_model import model_performance_graph  # needs statsmodels (dev extra)

    rng = np.random.default_rng(7)
    times = pd.date_range("2024-01-30", periods=24 * 6, freq="h")  # six days of hourly bars over a month end
    insts = [f"I{i:02d}-USDT-SWAP" for i in range(13)]
    idx = pd.MultiIndex.from_product([times, insts], names=["datetime", "instrument"])
    pred = pd.Series(rng.normal(size=len(idx)), index=idx)
    label = pd.Series(0.3 * pred.to_numpy() + rng.normal(size=len(idx)), index=idx)
    label.iloc[::17] = np.nan
    pred.iloc[5::23] = np.nan
    ma = model_analysis(pred, label, bars_per_year=8760)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pandas' FutureWarning on Qlib's freq="1M"
        figs = model_performance_graph(
            pd.DataFrame({"score": pred, "label": label}),
            graph_names=["group_return", "pred_ic", "pred_autocorr"],
            show_notebook=False,
        )
    cum, _, ic_bars, monthly, dist, autocorr = figs
    for trace in cum.data:  # cumulative returns of Group1..5, long-short, long-average
        assert np.allclose(np.asarray(trace.y, float), ma.group_cumulative[trace.name].to_numpy(), equal_nan=True)
    for trace in ic_bars.data:
        ours = ma.ic if trace.name == "IC" else ma.rank_ic
        assert np.allclose(
            np.asarray(trace.y, float), ours.reindex(pd.DatetimeIndex(trace.x)).to_numpy(), equal_nan=True
        )
    z = np.array(monthly.data[0].z, dtype=float)
    assert list(monthly.data[0].y) == ["2024"]
    assert np.allclose(z[0, :2], [ma.ic_monthly["2024-01"], ma.ic_monthly["2024-02"]]) and np.isnan(z[0, 2:]).all()
    assert np.allclose(ma.ic_monthly_table.loc["2024", ["01", "02"]].to_numpy(dtype=float), z[0, :2])
    qq = next(t for t in dist.data if t.type == "scatter" and t.mode == "markers")
    assert np.allclose(np.asarray(qq.x, float), ma.ic_distribution["qq"]["theoretical"])
    assert np.allclose(np.asarray(qq.y, float), ma.ic_distribution["qq"]["sample"])
    ac = autocorr.data[0]
    assert np.allclose(
        np.asarray(ac.y, float), ma.autocorrelation.reindex(pd.DatetimeIndex(ac.x)).to_numpy(), equal_nan=True
    )
