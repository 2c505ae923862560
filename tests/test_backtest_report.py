"""Report metrics against hand-computed numbers on known equity series and fills."""
from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from qlib_crypto.workflow.backtest_report import (
    METRIC_KEYS,
    build_report,
    compute_metrics,
    drawdown_curve,
    in_market_by_bar,
    initial_equity_from_report,
    max_drawdown,
    max_drawdown_duration,
    monthly_returns,
    returns_from_equity,
    round_trips,
    sharpe_ratio,
    sortino_ratio,
)

# initial 100, then returns +10%, -10%, 0%, +20%
EQUITY = [110.0, 99.0, 99.0, 118.8]


def test_returns_sharpe_sortino_by_hand():
    r = returns_from_equity(EQUITY, 100.0)
    assert r == pytest.approx([0.1, -0.1, 0.0, 0.2])
    # mean 0.05; deviations .05 -.15 -.05 .15 -> sum of squares 0.05 -> sample variance 0.05 / 3
    assert sharpe_ratio(r, 8760) == pytest.approx(0.05 / math.sqrt(0.05 / 3) * math.sqrt(8760))
    # downside deviation sqrt((0 + 0.01 + 0 + 0) / 4) = 0.05 -> sortino = 0.05 / 0.05 * sqrt(B)
    assert sortino_ratio(r, 365) == pytest.approx(math.sqrt(365))
    assert math.isnan(sharpe_ratio([0.01, 0.01, 0.01], 365))  # no variation: undefined
    assert math.isnan(sortino_ratio([0.01, 0.02], 365))  # no downside: undefined


def test_drawdown_and_duration_by_hand():
    # peak 110 then 99, 99 (-10%, 2 bars under water), 118.8 is a new peak
    assert max_drawdown(EQUITY, 100.0) == pytest.approx(-0.1)
    assert max_drawdown_duration(EQUITY, 100.0) == 2
    eq = [100.0, 110.0, 100.0, 105.0, 111.0, 90.0, 95.0, 120.0, 119.0]
    # runs under water: (100, 105) = 2, (90, 95) = 2, (119) = 1; deepest 90 / 111 - 1
    assert max_drawdown(eq, 100.0) == pytest.approx(90 / 111 - 1)
    assert max_drawdown_duration(eq, 100.0) == 2
    # a loss on the very first bar counts against the initial equity
    assert max_drawdown([95.0, 97.0, 101.0], 100.0) == pytest.approx(-0.05)
    assert max_drawdown_duration([95.0, 97.0, 101.0], 100.0) == 2
    assert drawdown_curve([95.0, 101.0], 100.0) == pytest.approx([-0.05, 0.0])


def test_compute_metrics_all_keys_by_hand():
    m = compute_metrics(EQUITY, 100.0, 365.0, trade_pnls=[5.0, -1.0, 0.0, 2.0], traded_notional=213.45,
                        in_market=[True, False, True, True], fees_paid=1.5, slippage_paid=0.25, funding_paid=-0.75)
    assert tuple(m) == METRIC_KEYS
    assert m["total_return"] == pytest.approx(0.188)
    ann = 1.188 ** (365 / 4) - 1
    assert m["annualized_return"] == pytest.approx(ann)
    assert m["volatility"] == pytest.approx(math.sqrt(0.05 / 3) * math.sqrt(365))
    assert m["calmar"] == pytest.approx(ann / 0.1)
    assert m["max_drawdown"] == pytest.approx(-0.1) and m["max_drawdown_duration"] == 2
    assert m["win_rate"] == pytest.approx(0.5)  # 5 and 2 win; -1 and 0 do not
    assert m["turnover"] == pytest.approx(213.45 / ((110 + 99 + 99 + 118.8) / 4))
    assert m["exposure"] == pytest.approx(0.75)
    assert (m["fees_paid"], m["slippage_paid"], m["funding_paid"]) == (1.5, 0.25, -0.75)


def test_monthly_returns_by_hand():
    idx = pd.to_datetime(["2024-01-15 00:00", "2024-01-31 23:00", "2024-02-10 00:00", "2024-02-29 23:00", "2024-03-05 00:00"])
    eq = pd.Series([105.0, 120.0, 90.0, 108.0, 113.4], index=idx)
    mr = monthly_returns(eq, 100.0)
    assert list(mr.index) == ["2024-01", "2024-02", "2024-03"]
    assert mr.to_numpy() == pytest.approx([0.20, 108 / 120 - 1, 113.4 / 108 - 1])


def _fills(rows):
    return pd.DataFrame(rows, columns=["datetime", "instrument", "side", "amount", "price", "fee", "slippage"])


def test_round_trips_and_win_rate_by_hand():
    t = pd.Timestamp("2024-01-01")
    h = pd.Timedelta(hours=1)
    fills = _fills([
        (t, "A", "buy", 1.0, 100.0, 0.10, 0.0),        # long A
        (t + 2 * h, "A", "sell", 1.0, 110.0, 0.11, 0.0),  # closed: 10 - 0.21 = 9.79
        (t, "B-SWAP", "sell", 2.0, 50.0, 0.05, 0.0),      # short B
        (t + h, "B-SWAP", "buy", 2.0, 51.0, 0.05, 0.0),   # closed: -2 - 0.10 = -2.10
        (t, "C-SWAP", "buy", 1.0, 10.0, 0.01, 0.0),       # long C
        (t + h, "C-SWAP", "sell", 3.0, 12.0, 0.03, 0.0),  # flip: long closes (+2 - 0.01 - 0.01), short 2 opens
        (t + 2 * h, "C-SWAP", "buy", 2.0, 11.0, 0.02, 0.0),  # short closes: +2 - 0.02 - 0.02
        (t + 3 * h, "D-SWAP", "buy", 1.0, 5.0, 0.0, 0.0),   # still open at the end
    ])
    trades = round_trips(fills)
    got = {(r.instrument, r.side, r.closed): r.pnl for r in trades.itertuples()}
    assert got == pytest.approx({
        ("A", "long", True): 9.79,
        ("B-SWAP", "short", True): -2.10,
        ("C-SWAP", "long", True): 1.98,
        ("C-SWAP", "short", True): 1.96,
        ("D-SWAP", "long", False): 0.0,
    })
    c_short = trades[(trades.instrument == "C-SWAP") & (trades.side == "short")].iloc[0]
    assert (c_short.entry_price, c_short.exit_price, c_short.max_amount) == (12.0, 11.0, 2.0)
    assert c_short.entry_time == t + h and c_short.exit_time == t + 2 * h


def test_in_market_by_bar():
    bars = pd.date_range("2024-01-01", periods=6, freq="h")
    fills = _fills([
        (bars[1], "A", "buy", 2.0, 10.0, 0.0, 0.0),
        (bars[3], "A", "sell", 2.0, 11.0, 0.0, 0.0),   # flat again after bar 3
        (bars[4], "B-SWAP", "sell", 1.0, 5.0, 0.0, 0.0),  # short from bar 4 on
    ])
    assert in_market_by_bar(fills, bars).tolist() == [False, True, True, False, True, True]


def test_build_report_from_qlib_frame_and_write(tmp_path):
    idx = pd.date_range("2024-01-31 22:00", periods=4, freq="h")
    init = 1000.0
    account = np.array([1010.0, 990.0, 1000.0, 1030.0])
    prev = np.concatenate([[init], account[:-1]])
    cost = np.array([0.5, 0.0, 0.0, 0.25])
    # Qlib's convention: return = (earning + cost) / previous equity; cost = cost / previous equity
    report_df = pd.DataFrame({"account": account, "return": (account - prev + cost) / prev, "cost": cost / prev,
                              "bench": 0.0, "turnover": 0.0}, index=idx)
    assert initial_equity_from_report(report_df) == pytest.approx(init)
    fills = _fills([
        (idx[0], "BTC-USDT-SWAP", "sell", 0.01, 40000.0, 0.5, 0.1),
        (idx[3], "BTC-USDT-SWAP", "buy", 0.01, 39000.0, 0.25, 0.05),
    ])
    funding = pd.DataFrame({"datetime": [idx[2]], "instrument": ["BTC-USDT-SWAP"], "funding": [0.4]})
    rep = build_report(report_df, fills, freq="60min", funding=funding)
    m = rep.metrics
    assert m["total_return"] == pytest.approx(0.03)
    assert m["fees_paid"] == pytest.approx(0.75) and m["slippage_paid"] == pytest.approx(0.15)
    assert m["funding_paid"] == pytest.approx(-0.4)  # received
    assert m["exposure"] == pytest.approx(0.75)  # short through bars 0..2, flat after bar 3's fill
    assert m["win_rate"] == 1.0  # 0.01 * 1000 - 0.75 = 9.25 > 0
    assert m["turnover"] == pytest.approx((400.0 + 390.0) / account.mean())
    r = account / prev - 1
    assert m["sharpe"] == pytest.approx(r.mean() / r.std(ddof=1) * math.sqrt(8760))
    assert list(rep.monthly_returns.index) == ["2024-01", "2024-02"]
    assert rep.monthly_returns.to_numpy() == pytest.approx([990 / 1000 - 1, 1030 / 990 - 1])
    paths = rep.write(tmp_path / "out")
    metrics = json.loads(paths["metrics.json"].read_text())
    assert list(metrics) == list(METRIC_KEYS)
    html = paths["report.html"].read_text()
    assert "data:image/png;base64," in html and "http://" not in html and "https://" not in html
    assert len(pd.read_csv(paths["fills.csv"])) == 2 and len(pd.read_csv(paths["trades.csv"])) == 1
    assert len(pd.read_csv(paths["equity.csv"])) == 4
