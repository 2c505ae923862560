"""The one metrics implementation (qlib_crypto.workflow.metrics) against independent computations: plain Python
loops over the textbook (empyrical / QuantStats style) formulas at 24/7 annualisation, and Qlib's risk_analysis."""

from __future__ import annotations

import math
import statistics

import numpy as np
import pandas as pd
import pytest

from qlib_crypto.workflow import metrics as M

B_HOUR = 365 * 24  # 24/7 hourly bars a year
R = np.random.default_rng(11).normal(0.0002, 0.004, 500)
E0 = 1000.0


def _equity(returns, e0=E0):
    eq, out = e0, []
    for r in returns:
        eq = eq * (1 + r)
        out.append(eq)
    return out


def _hand_drawdowns(equity, e0):
    """Running peak from e0, drawdown per bar, runs under water: a loop, no numpy."""
    peak, dd = e0, []
    for e in equity:
        peak = max(peak, e)
        dd.append(e / peak - 1)
    runs, start = [], None
    for i, d in enumerate(dd):
        if d < 0 and start is None:
            start = i
        if d >= 0 and start is not None:
            runs.append((start, i - 1))
            start = None
    if start is not None:
        runs.append((start, len(dd) - 1))
    return dd, runs


def test_ratios_match_textbook_formulas_at_8760():
    eq = _equity(R)
    r = [eq[0] / E0 - 1] + [eq[i] / eq[i - 1] - 1 for i in range(1, len(eq))]
    assert M.returns_from_equity(eq, E0) == pytest.approx(r, rel=1e-12)
    mean, sd = statistics.fmean(r), statistics.stdev(r)
    downside = math.sqrt(sum(min(x, 0.0) ** 2 for x in r) / len(r))
    assert M.sharpe_ratio(r, B_HOUR) == pytest.approx(mean / sd * math.sqrt(8760), rel=1e-10)
    assert M.volatility(r, B_HOUR) == pytest.approx(sd * math.sqrt(8760), rel=1e-10)
    assert M.sortino_ratio(r, B_HOUR) == pytest.approx(mean / downside * math.sqrt(8760), rel=1e-10)
    total = eq[-1] / E0 - 1
    assert M.annualized_return(total, len(r), B_HOUR) == pytest.approx((eq[-1] / E0) ** (8760 / len(r)) - 1, rel=1e-10)
    dd, runs = _hand_drawdowns(eq, E0)
    assert M.max_drawdown(eq, E0) == pytest.approx(min(dd))
    assert M.max_drawdown_duration(eq, E0) == max(b - a + 1 for a, b in runs)
    mdd = min(dd)
    ann = (eq[-1] / E0) ** (8760 / len(r)) - 1
    assert M.calmar_ratio(ann, mdd) == pytest.approx(ann / abs(mdd))
    # undefined values are NaN, not a division by ~0
    assert math.isnan(M.sharpe_ratio([0.001] * 5, B_HOUR)) and math.isnan(M.sortino_ratio([0.01, 0.02], B_HOUR))
    assert math.isnan(M.calmar_ratio(0.5, 0.0))


def test_return_stats_is_qlib_risk_analysis_where_it_fits():
    from qlib.contrib.evaluate import risk_analysis

    s = pd.Series(R)
    st = M.return_stats(s, B_HOUR)
    summed = risk_analysis(s, N=B_HOUR, freq=None, mode="sum")["risk"]
    product = risk_analysis(s, N=B_HOUR, freq=None, mode="product")["risk"]
    assert st["mean"] == summed["mean"] and st["std"] == summed["std"]
    assert st["annualized_return"] == summed["annualized_return"]
    assert st["information_ratio"] == summed["information_ratio"]
    assert st["annualized_return_geometric"] == product["annualized_return"]
    # and by hand
    assert st["annualized_return"] == pytest.approx(statistics.fmean(R) * 8760, rel=1e-12)
    assert st["annualized_volatility"] == pytest.approx(statistics.stdev(R) * math.sqrt(8760), rel=1e-10)
    wealth = _equity(R, 1.0)
    assert st["total_return"] == pytest.approx(wealth[-1] - 1, rel=1e-10)
    dd, runs = _hand_drawdowns(wealth, 1.0)
    assert st["max_drawdown_geometric"] == pytest.approx(min(dd))
    assert st["max_drawdown_duration"] == max(b - a + 1 for a, b in runs)
    csum, peak, worst = 0.0, 0.0, 0.0
    for x in R:
        csum += x
        peak = max(peak, csum)
        worst = min(worst, csum - peak)
    assert st["max_drawdown"] == pytest.approx(worst)
    # where Qlib's number does not fit: its drawdown misses a loss on the first bar
    first_loss = pd.Series([-0.05, 0.01, 0.01])
    assert M.return_stats(first_loss, 365)["max_drawdown_geometric"] == pytest.approx(-0.05)
    assert risk_analysis(first_loss, N=365, freq=None, mode="product")["risk"]["max_drawdown"] == 0.0
    flat = M.return_stats([0.001] * 10, 365)
    assert flat["std"] == 0.0 and math.isnan(flat["information_ratio"])
    assert M.return_stats([], 365)["n_bars"] == 0


def test_drawdown_periods_by_hand():
    idx = pd.date_range("2024-01-01", periods=10, freq="h")
    # E0 = 100; peaks 110 (bar 1), dips to 99 (bar 3), recovers at bar 5 (112); then 95.2 at bar 7 and no recovery
    eq = pd.Series([105.0, 110.0, 104.5, 99.0, 108.0, 112.0, 106.4, 95.2, 103.0, 111.0], index=idx)
    periods = M.drawdown_periods(eq, 100.0, top=5, hours_per_bar=1.0)
    assert list(periods.columns) == list(M.DRAWDOWN_COLUMNS)
    first = periods.iloc[0]  # the deepest: 95.2 / 112 - 1 = -15%
    assert first["depth"] == pytest.approx(95.2 / 112 - 1)
    assert (first["peak"], first["start"], first["trough"]) == (idx[5], idx[6], idx[7])
    assert pd.isna(first["recovery"]) and not first["recovered"]
    assert first["length_bars"] == 4 and first["bars_to_trough"] == 2 and first["length_days"] == pytest.approx(4 / 24)
    second = periods.iloc[1]  # 99 / 110 - 1
    assert second["depth"] == pytest.approx(99 / 110 - 1)
    assert (second["peak"], second["start"], second["trough"], second["recovery"]) == (idx[1], idx[2], idx[3], idx[5])
    assert second["length_bars"] == 3 and second["recovered"]
    assert len(periods) == 2
    assert len(M.drawdown_periods(eq, 100.0, top=1)) == 1
    # a loss on the first bar: the peak is the initial equity (no bar)
    p = M.drawdown_periods(pd.Series([95.0, 101.0], index=idx[:2]), 100.0)
    assert pd.isna(p.iloc[0]["peak"]) and p.iloc[0]["start"] == idx[0] and p.iloc[0]["recovery"] == idx[1]
    # a daily run: days = bars
    assert M.drawdown_periods(eq, 100.0, hours_per_bar=24.0).iloc[0]["length_days"] == 4


def test_rolling_sharpe_and_volatility_by_hand():
    idx = pd.date_range("2024-01-01", periods=60, freq="h")
    r = pd.Series(R[:60], index=idx)
    w = 24
    rs, rv = M.rolling_sharpe(r, w, B_HOUR), M.rolling_volatility(r, w, B_HOUR)
    assert rs.iloc[: w - 1].isna().all() and rv.iloc[: w - 1].isna().all()
    for end in (w - 1, 40, 59):
        window = list(r.iloc[end - w + 1 : end + 1])
        assert rs.iloc[end] == pytest.approx(
            statistics.fmean(window) / statistics.stdev(window) * math.sqrt(8760), rel=1e-9
        )
        assert rv.iloc[end] == pytest.approx(statistics.stdev(window) * math.sqrt(8760), rel=1e-9)
    flat = M.rolling_sharpe(pd.Series([0.01] * 5), 3, 365)
    assert flat.isna().all()
    assert M.default_rolling_window(2183, B_HOUR) == 720  # 30 days of hourly bars
    assert M.default_rolling_window(100, B_HOUR) == 50 and M.default_rolling_window(90, 365) == 30
    assert M.default_rolling_window(3, 365) == 2


def test_monthly_yearly_returns_and_table():
    idx = pd.to_datetime(["2023-12-31 23:00", "2024-01-31 23:00", "2024-02-29 23:00", "2024-03-05 00:00"])
    eq = pd.Series([110.0, 121.0, 108.9, 119.79], index=idx)
    monthly = M.monthly_returns(eq, 100.0)
    yearly = M.yearly_returns(eq, 100.0)
    assert monthly.to_dict() == pytest.approx({"2023-12": 0.1, "2024-01": 0.1, "2024-02": -0.1, "2024-03": 0.1})
    assert yearly.to_dict() == pytest.approx({"2023": 0.1, "2024": 119.79 / 110 - 1})
    table = M.monthly_returns_table(monthly, yearly)
    assert list(table.index) == ["2023", "2024"] and list(table.columns) == [f"{m:02d}" for m in range(1, 13)] + [
        "year"
    ]
    assert table.at["2023", "12"] == pytest.approx(0.1) and math.isnan(table.at["2023", "01"])
    assert table.at["2024", "02"] == pytest.approx(-0.1) and table.at["2024", "year"] == pytest.approx(119.79 / 110 - 1)


def test_trade_stats_by_hand():
    t = pd.Timestamp("2024-01-01")
    h = pd.Timedelta(hours=1)
    trades = pd.DataFrame(
        {
            "instrument": ["A", "A", "B", "B", "C"],
            "side": ["long", "short", "long", "short", "long"],
            "entry_time": [t, t + 2 * h, t, t + 5 * h, t + 9 * h],
            "exit_time": [t + 2 * h, t + 3 * h, t + 6 * h, t + 9 * h, pd.NaT],
            "entry_price": [100.0, 50.0, 10.0, 20.0, 5.0],
            "max_amount": [1.0, 2.0, 10.0, 1.0, 3.0],
            "pnl": [10.0, -4.0, 6.0, -2.0, 1.0],
            "closed": [True, True, True, True, False],
        }
    )
    st = M.trade_stats(trades, days=2.0, hours_per_bar=1.0)
    assert tuple(st) == M.TRADE_STAT_KEYS
    assert (st["n_closed_trades"], st["n_open_trades"], st["n_long_trades"], st["n_short_trades"]) == (4, 1, 2, 2)
    assert st["win_rate"] == 0.5 and st["long_win_rate"] == 1.0 and st["short_win_rate"] == 0.0
    assert st["gross_profit"] == 16.0 and st["gross_loss"] == -6.0
    assert st["profit_factor"] == pytest.approx(16 / 6)
    assert st["expectancy"] == pytest.approx(2.5)  # 0.5 x 8 - 0.5 x 3
    assert st["expectancy_ratio"] == pytest.approx(2.5 / 3)
    assert (st["avg_win"], st["avg_loss"], st["best_trade"], st["worst_trade"]) == (8.0, -3.0, 10.0, -4.0)
    assert st["avg_trade_return"] == pytest.approx(np.mean([10 / 100, -4 / 100, 6 / 100, -2 / 20]))
    assert st["avg_holding_hours"] == pytest.approx((2 + 1 + 6 + 4) / 4) and st["median_holding_hours"] == 3.0
    assert st["avg_holding_bars"] == pytest.approx(3.25) and st["trades_per_day"] == 2.0
    assert M.trade_stats(trades, days=2.0, hours_per_bar=24.0)["avg_holding_bars"] == pytest.approx(3.25 / 24)
    none = M.trade_stats(trades.iloc[0:0], days=1.0, hours_per_bar=1.0)
    assert none["n_closed_trades"] == 0 and math.isnan(none["profit_factor"]) and math.isnan(none["win_rate"])
    assert math.isnan(M.profit_factor([1.0, 2.0]))  # no losing trade


def test_bar_hours():
    assert M.bar_hours("60min") == 1.0 and M.bar_hours("day") == 24.0 and M.bar_hours("15min") == 0.25
