"""Backtest report: metrics, sections, JSON and HTML against hand-computed numbers on known equity series and fills."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

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
    m = compute_metrics(
        EQUITY,
        100.0,
        365.0,
        trade_pnls=[5.0, -1.0, 0.0, 2.0],
        traded_notional=213.45,
        in_market=[True, False, True, True],
        fees_paid=1.5,
        slippage_paid=0.25,
        funding_paid=-0.75,
    )
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
    idx = pd.to_datetime(
        ["2024-01-15 00:00", "2024-01-31 23:00", "2024-02-10 00:00", "2024-02-29 23:00", "2024-03-05 00:00"]
    )
    eq = pd.Series([105.0, 120.0, 90.0, 108.0, 113.4], index=idx)
    mr = monthly_returns(eq, 100.0)
    assert list(mr.index) == ["2024-01", "2024-02", "2024-03"]
    assert mr.to_numpy() == pytest.approx([0.20, 108 / 120 - 1, 113.4 / 108 - 1])


def _fills(rows):
    return pd.DataFrame(rows, columns=["datetime", "instrument", "side", "amount", "price", "fee", "slippage"])


def test_round_trips_and_win_rate_by_hand():
    t = pd.Timestamp("2024-01-01")
    h = pd.Timedelta(hours=1)
    fills = _fills(
        [
            (t, "A", "buy", 1.0, 100.0, 0.10, 0.0),  # long A
            (t + 2 * h, "A", "sell", 1.0, 110.0, 0.11, 0.0),  # closed: 10 - 0.21 = 9.79
            (t, "B-SWAP", "sell", 2.0, 50.0, 0.05, 0.0),  # short B
            (t + h, "B-SWAP", "buy", 2.0, 51.0, 0.05, 0.0),  # closed: -2 - 0.10 = -2.10
            (t, "C-SWAP", "buy", 1.0, 10.0, 0.01, 0.0),  # long C
            (t + h, "C-SWAP", "sell", 3.0, 12.0, 0.03, 0.0),  # flip: long closes (+2 - 0.01 - 0.01), short 2 opens
            (t + 2 * h, "C-SWAP", "buy", 2.0, 11.0, 0.02, 0.0),  # short closes: +2 - 0.02 - 0.02
            (t + 3 * h, "D-SWAP", "buy", 1.0, 5.0, 0.0, 0.0),  # still open at the end
        ]
    )
    trades = round_trips(fills)
    got = {(r.instrument, r.side, r.closed): r.pnl for r in trades.itertuples()}
    assert got == pytest.approx(
        {
            ("A", "long", True): 9.79,
            ("B-SWAP", "short", True): -2.10,
            ("C-SWAP", "long", True): 1.98,
            ("C-SWAP", "short", True): 1.96,
            ("D-SWAP", "long", False): 0.0,
        }
    )
    c_short = trades[(trades.instrument == "C-SWAP") & (trades.side == "short")].iloc[0]
    assert (c_short.entry_price, c_short.exit_price, c_short.max_amount) == (12.0, 11.0, 2.0)
    assert c_short.entry_time == t + h and c_short.exit_time == t + 2 * h


def test_in_market_by_bar():
    bars = pd.date_range("2024-01-01", periods=6, freq="h")
    fills = _fills(
        [
            (bars[1], "A", "buy", 2.0, 10.0, 0.0, 0.0),
            (bars[3], "A", "sell", 2.0, 11.0, 0.0, 0.0),  # flat again after bar 3
            (bars[4], "B-SWAP", "sell", 1.0, 5.0, 0.0, 0.0),  # short from bar 4 on
        ]
    )
    assert in_market_by_bar(fills, bars).tolist() == [False, True, True, False, True, True]


def test_build_report_from_qlib_frame_and_write(tmp_path):
    idx = pd.date_range("2024-01-31 22:00", periods=4, freq="h")
    init = 1000.0
    account = np.array([1010.0, 990.0, 1000.0, 1030.0])
    prev = np.concatenate([[init], account[:-1]])
    cost = np.array([0.5, 0.0, 0.0, 0.25])
    # Qlib's convention: return = (earning + cost) / previous equity; cost = cost / previous equity
    report_df = pd.DataFrame(
        {
            "account": account,
            "return": (account - prev + cost) / prev,
            "cost": cost / prev,
            "bench": 0.0,
            "turnover": 0.0,
        },
        index=idx,
    )
    assert initial_equity_from_report(report_df) == pytest.approx(init)
    fills = _fills(
        [
            (idx[0], "BTC-USDT-SWAP", "sell", 0.01, 40000.0, 0.5, 0.1),
            (idx[3], "BTC-USDT-SWAP", "buy", 0.01, 39000.0, 0.25, 0.05),
        ]
    )
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
    assert html.count('class="plotly-graph-div"') >= 6
    assert not re.search(r"<(script|img|link|iframe)[^>]+(src|href)=['\"]?https?:", html)  # nothing from the network
    assert len(pd.read_csv(paths["fills.csv"])) == 2 and len(pd.read_csv(paths["trades.csv"])) == 1
    assert len(pd.read_csv(paths["equity.csv"])) == 4


# ---------------------------------------------------------------------------------------------------------
# the whole report on a backtest worked out by hand (tests/report_scenario.py)
# ---------------------------------------------------------------------------------------------------------
from report_scenario import (  # noqa: E402
    BENCH,
    IDX,
    INIT,
    json_values,
    nan_equal,
    plotly_figures,
    scenario,
    values,
    visible_text,
)

DOCS = Path(__file__).resolve().parents[1] / "docs" / "backtest-reports.md"


@pytest.fixture(scope="module")
def hand():
    return scenario()


@pytest.fixture(scope="module")
def report(hand):
    return build_report(
        hand["report_df"],
        hand["fills"],
        freq="60min",
        initial_equity=INIT,
        funding=hand["funding"],
        order_reports=hand["orders"],
        positions=hand["positions"],
        info={"benchmark": "BTC-USDT", "strategy": "hand", "capped_notional": 3952180.5, "tiny_rate": 1.5e-7},
    )


@pytest.fixture(scope="module")
def written(report, tmp_path_factory):
    paths = report.write(tmp_path_factory.mktemp("bt") / "out", title="Hand backtest")
    return paths, json.loads(paths["report.json"].read_text()), paths["report.html"].read_text()


def test_where_the_edge_went_by_hand(report, hand):
    att = report.attribution
    net = hand["equity"][-1] - INIT
    # the accounting identity of the cash walk: net = gross at deal prices - fees - slippage - funding
    assert net == pytest.approx(hand["gross_pnl"] - hand["fees"] - hand["slippage"] - hand["funding_paid"], rel=1e-12)
    assert att["gross_pnl"] == pytest.approx(hand["gross_pnl"], rel=1e-12)
    assert (att["fees"], att["slippage"], att["funding"]) == pytest.approx(
        (hand["fees"], hand["slippage"], hand["funding_paid"]), rel=1e-12
    )
    assert att["net_pnl"] == pytest.approx(net, rel=1e-12) and att["net_return"] == pytest.approx(net / INIT)
    assert att["traded_notional"] == pytest.approx(hand["traded"])
    assert att["gross_bps"] == pytest.approx(hand["gross_pnl"] / hand["traded"] * 1e4)
    assert att["fees_bps"] == pytest.approx(hand["fees"] / hand["traded"] * 1e4)
    assert att["funding_bps"] == pytest.approx(hand["funding_paid"] / hand["traded"] * 1e4)
    assert att["gross_return"] == pytest.approx(hand["gross_pnl"] / INIT)
    # the closed round trips (A long, C short) and what the open ones and funding make of the rest
    f = hand["fills"]
    a, c = f[f.instrument == "A-USDT-SWAP"], f[f.instrument == "C-USDT-SWAP"]
    a_pnl = 2 * (a.price.iloc[1] - a.price.iloc[0]) - a.fee.iloc[0] - a.fee.iloc[1]
    c_pnl = 1 * (c.price.iloc[0] - c.price.iloc[1]) - c.fee.sum()
    assert att["closed_trades_pnl"] == pytest.approx(a_pnl + c_pnl)
    assert att["other_pnl"] == pytest.approx(net - (a_pnl + c_pnl - hand["funding_paid"]))


def test_benchmark_curves_with_and_without_costs_by_hand(report, hand):
    ts = report.timeseries
    eq, prev = hand["equity"], hand["prev"]
    f = hand["fills"]
    costs = [float(f.loc[f.datetime == t, "fee"].sum() + f.loc[f.datetime == t, "slippage"].sum()) for t in IDX]
    r_net = [eq[i] / prev[i] - 1 for i in range(len(eq))]
    r_gross = [r_net[i] + costs[i] / prev[i] for i in range(len(eq))]

    def comp(rs):
        w, out = 1.0, []
        for x in rs:
            w *= 1 + x
            out.append(w - 1)
        return out

    assert ts["cum_return_with_cost"].to_numpy() == pytest.approx(comp(r_net), rel=1e-12)
    assert ts["cum_return_with_cost"].iloc[-1] == pytest.approx(eq[-1] / INIT - 1, rel=1e-12)
    assert ts["cum_return_without_cost"].to_numpy() == pytest.approx(comp(r_gross), rel=1e-12)
    assert ts["cum_benchmark"].to_numpy() == pytest.approx(comp(BENCH), rel=1e-12)
    assert ts["cum_excess_with_cost"].to_numpy() == pytest.approx(comp([r - b for r, b in zip(r_net, BENCH)]))
    assert ts["cum_excess_without_cost"].to_numpy() == pytest.approx(comp([r - b for r, b in zip(r_gross, BENCH)]))
    notional = [float((f.loc[f.datetime == t, "amount"] * f.loc[f.datetime == t, "price"]).sum()) for t in IDX]
    assert ts["turnover"].to_numpy() == pytest.approx([notional[i] / prev[i] for i in range(len(eq))])
    assert ts["turnover_1d"].iloc[-1] == pytest.approx(sum(notional[i] / prev[i] for i in range(len(eq))))
    s = report.summary
    assert s["total_return_without_cost"] == pytest.approx(comp(r_gross)[-1])
    assert s["benchmark_total_return"] == pytest.approx(comp(BENCH)[-1])
    assert s["excess_total_return"] == pytest.approx(comp([r - b for r, b in zip(r_net, BENCH)])[-1])
    # the risk table: Qlib's PortAnaRecord series, 24/7 annualisation
    mean, sd = np.mean(r_net), np.std(r_net, ddof=1)
    assert report.risk.at["information_ratio", "return_with_cost"] == pytest.approx(mean / sd * math.sqrt(8760))
    ex = np.array(r_gross) - np.array(BENCH)
    assert report.risk.at["annualized_return", "excess_return_without_cost"] == pytest.approx(ex.mean() * 8760)
    assert report.risk.at["total_return", "benchmark"] == pytest.approx(comp(BENCH)[-1])
    # exposure from the positions: long and short market value over equity
    pos = hand["positions"]
    for i, t in enumerate(IDX):
        p = pos[pos.datetime == t]
        v = p.amount * p.price
        assert ts["long_exposure"].iloc[i] == pytest.approx(v[v > 0].sum() / eq[i])
        assert ts["short_exposure"].iloc[i] == pytest.approx(v[v < 0].sum() / eq[i])


def test_rolling_drawdowns_monthly_by_hand(report, hand):
    eq = hand["equity"]
    ann = report.annualisation
    assert (ann["bars_per_year"], ann["days_per_year"], ann["hours_per_bar"]) == (8760, 365, 1.0)
    assert ann["rolling_window_bars"] == 4  # a run shorter than 60 days: half of its 8 bars
    r = pd.Series(eq / hand["prev"] - 1)
    w = r.iloc[4:8]
    assert report.timeseries["rolling_sharpe"].iloc[-1] == pytest.approx(w.mean() / w.std(ddof=1) * math.sqrt(8760))
    assert report.timeseries["rolling_volatility"].iloc[-1] == pytest.approx(w.std(ddof=1) * math.sqrt(8760))
    # drawdowns: a loop with the running peak from the initial equity
    peak, dd = INIT, []
    for e in eq:
        peak = max(peak, e)
        dd.append(e / peak - 1)
    worst = int(np.argmin(dd))
    assert report.drawdowns.iloc[0]["depth"] == pytest.approx(dd[worst])
    assert report.drawdowns.iloc[0]["trough"] == IDX[worst]
    assert report.summary["max_drawdown_duration_days"] == pytest.approx(report.metrics["max_drawdown_duration"] / 24)
    jan = eq[3] / INIT - 1  # bars 20:00 .. 23:00 on Jan 31
    assert report.monthly_table.at["2024", "01"] == pytest.approx(jan)
    assert report.monthly_table.at["2024", "02"] == pytest.approx(eq[-1] / eq[3] - 1)
    assert report.monthly_table.at["2024", "year"] == pytest.approx(eq[-1] / INIT - 1)


def test_per_instrument_and_trade_stats_by_hand(report, hand):
    f = hand["fills"]
    t = report.instruments.set_index("instrument")
    a, b, c = (f[f.instrument == k] for k in ("A-USDT-SWAP", "B-USDT", "C-USDT-SWAP"))
    a_pnl = 2 * (a.price.iloc[1] - a.price.iloc[0]) - a.fee.iloc[0] - a.fee.iloc[1]
    c_pnl = c.price.iloc[0] - c.price.iloc[1] - c.fee.sum()
    assert t.at["A-USDT-SWAP", "realised_pnl"] == pytest.approx(a_pnl) and t.at[
        "A-USDT-SWAP", "long_pnl"
    ] == pytest.approx(a_pnl)
    assert t.at["A-USDT-SWAP", "net_pnl"] == pytest.approx(a_pnl - 0.3)  # funding paid on the long
    assert t.at["A-USDT-SWAP", "fees"] == pytest.approx(a.fee.sum()) and t.at["A-USDT-SWAP", "open_trades"] == 1
    assert t.at["C-USDT-SWAP", "short_pnl"] == pytest.approx(c_pnl) and t.at["C-USDT-SWAP", "short_trades"] == 1
    assert t.at["C-USDT-SWAP", "net_pnl"] == pytest.approx(c_pnl + 0.1)  # funding received on the short
    assert t.at["B-USDT", "trades"] == 0 and t.at["B-USDT", "open_trades"] == 1 and t.at["B-USDT", "market"] == "spot"
    assert t.at["B-USDT", "slippage"] == pytest.approx(b.slippage.sum())
    assert t.at["A-USDT-SWAP", "net_pnl_pct"] == pytest.approx((a_pnl - 0.3) / INIT)
    assert t.at["A-USDT-SWAP", "avg_holding_hours"] == 2.0 and t.at["C-USDT-SWAP", "avg_holding_hours"] == 2.0
    assert list(report.instruments["net_pnl"]) == sorted(report.instruments["net_pnl"], reverse=True)
    total = report.instruments_total
    assert total["trades"] == 2 and total["net_pnl"] == pytest.approx(a_pnl - 0.3 + c_pnl + 0.1)
    assert total["fees"] == pytest.approx(hand["fees"]) and total["funding"] == pytest.approx(0.2)
    ts = report.trade_stats
    wins = [x for x in (a_pnl, c_pnl) if x > 0]
    losses = [x for x in (a_pnl, c_pnl) if x < 0]
    assert ts["n_closed_trades"] == 2 and ts["n_open_trades"] == 2 and ts["win_rate"] == len(wins) / 2
    assert ts["expectancy"] == pytest.approx((a_pnl + c_pnl) / 2)
    if losses:
        assert ts["profit_factor"] == pytest.approx(sum(wins) / -sum(losses))
    assert ts["trades_per_day"] == pytest.approx(2 / (8 / 24)) and ts["avg_holding_hours"] == 2.0
    assert report.orders == {"n_orders": 8, "n_filled": 7, "n_partial": 0, "n_rejected": 1, "reasons": {"min_size": 1}}


def test_json_keys_are_stable_typed_and_documented(written, report):
    from qlib_crypto.workflow import backtest_report as br

    _, data, _ = written
    assert list(data) == [
        "schema",
        "metrics",
        "summary",
        "annualisation",
        "risk",
        "pnl_attribution",
        "trade_stats",
        "instruments",
        "instruments_total",
        "drawdowns",
        "monthly_returns",
        "monthly_returns_table",
        "yearly_returns",
        "orders",
        "trades",
        "timeseries",
        "info",
        "units",
        "n_trades",
        "n_fills",
    ]
    assert data["schema"] == br.SCHEMA
    assert list(data["metrics"]) == list(br.METRIC_KEYS) and list(data["summary"]) == list(br.SUMMARY_KEYS)
    assert list(data["risk"]) == list(br.RISK_SERIES)
    assert all(list(v) == list(br.RETURN_STAT_KEYS) for v in data["risk"].values())
    assert list(data["pnl_attribution"]) == list(br.ATTRIBUTION_KEYS)
    assert list(data["trade_stats"]) == list(br.TRADE_STAT_KEYS)
    assert all(list(row) == list(br.INSTRUMENT_COLUMNS) for row in data["instruments"])
    assert all(list(row) == list(br.DRAWDOWN_COLUMNS) for row in data["drawdowns"])
    assert list(data["timeseries"]) == ["datetime", *br.TIMESERIES_KEYS]
    assert len(data["trades"]) == data["n_trades"] == len(report.trades)  # the page's trade list, all of it
    assert list(data["trades"][0]) == [
        "instrument",
        "side",
        "entry_time",
        "exit_time",
        "entry_price",
        "exit_price",
        "max_amount",
        "pnl",
        "fees",
        "closed",
    ]
    assert all(len(v) == len(IDX) for v in data["timeseries"].values())
    # raw values: fractions and quote units, times as ISO strings
    assert data["summary"]["final_equity"] == pytest.approx(report.summary["final_equity"])
    assert data["summary"]["start"] == IDX[0].isoformat() and data["drawdowns"][0]["trough"].startswith("2024-")
    # every number has a unit, every key is documented
    numeric_keys = (
        set(data["metrics"])
        | set(data["summary"])
        | set(data["pnl_attribution"])
        | set(data["trade_stats"])
        | set(br.INSTRUMENT_COLUMNS)
        | set(br.DRAWDOWN_COLUMNS)
        | set(br.RETURN_STAT_KEYS)
        | set(br.TIMESERIES_KEYS)
    ) - {
        "start",
        "end",
        "quote_currency",
        "benchmark",
        "instrument",
        "market",
        "peak",
        "trough",
        "recovery",
        "recovered",
    }
    assert not numeric_keys - set(data["units"])
    docs = DOCS.read_text()
    keys = (
        set(data)
        | set(data["summary"])
        | set(data["annualisation"])
        | set(data["pnl_attribution"])
        | set(data["trade_stats"])
        | set(br.INSTRUMENT_COLUMNS)
        | set(br.DRAWDOWN_COLUMNS)
        | set(br.RISK_SERIES)
        | set(br.RETURN_STAT_KEYS)
        | set(br.TIMESERIES_KEYS)
        | set(data["orders"])
    )
    missing = sorted(k for k in keys if f"`{k}`" not in docs)
    assert not missing, f"keys not documented in {DOCS.name}: {missing}"


def test_html_shows_formatted_numbers_and_every_figure_is_in_the_json(written, report):
    from qlib_crypto.workflow._report_html import FIGURES, SECTIONS

    _, data, page = written
    text = visible_text(page)
    s = data["summary"]
    # returns in %, money with separators and the currency, durations in bars and days, the basis stated
    assert f"{s['total_return'] * 100:.2f}%" in text
    assert f"{s['final_equity']:,.2f} USDT" in text
    assert f"{s['net_pnl']:+,.2f} USDT" in text
    n = data["metrics"]["max_drawdown_duration"]
    assert f"{n:,d} bar{'s' if n != 1 else ''} ({n / 24:,.1f} days)" in text
    assert "8,760 bars a year = 365 days x 24 bars a day" in text
    assert f"{data['pnl_attribution']['fees_bps']:,.2f} bps" in text
    assert not re.search(r"\d(\.\d+)?e[+-]\d", text), "scientific notation in the page"
    assert "3,952,180.50 USDT" in text and "0.00000015" in text  # run information too
    for anchor, heading in SECTIONS:
        assert f"id='{anchor}'" in page and heading in text
    figs = plotly_figures(page)
    assert set(figs) == set(FIGURES)
    ts = data["timeseries"]

    def trace(fig, name):
        return next(t for t in figs[fig]["data"] if t.get("name") == name)

    bench_map = {
        "strategy": "cum_return_with_cost",
        "strategy, no costs": "cum_return_without_cost",
        "benchmark (BTC-USDT)": "cum_benchmark",
        "excess": "cum_excess_with_cost",
        "excess, no costs": "cum_excess_without_cost",
        "drawdown": "drawdown",
        "excess drawdown": "excess_drawdown",
        "turnover per bar": "turnover",
        "turnover, last 24 h": "turnover_1d",
    }
    assert {t["name"] for t in figs["fig-benchmark"]["data"]} == set(bench_map)
    for name, key in bench_map.items():
        assert nan_equal(values(trace("fig-benchmark", name)["y"]), json_values(ts[key])), name
        assert trace("fig-benchmark", name)["x"][0].startswith(ts["datetime"][0][:16])
    assert nan_equal(values(trace("fig-rolling", "rolling Sharpe")["y"]), json_values(ts["rolling_sharpe"]))
    assert nan_equal(values(trace("fig-rolling", "rolling volatility")["y"]), json_values(ts["rolling_volatility"]))
    assert nan_equal(values(figs["fig-underwater"]["data"][0]["y"]), json_values(ts["drawdown"]))
    for name in ("long", "short", "net", "gross"):
        assert nan_equal(values(trace("fig-exposure", name)["y"]), json_values(ts[f"{name}_exposure"]))
    att = data["pnl_attribution"]
    assert nan_equal(
        values(figs["fig-edge"]["data"][0]["y"]),
        [att["gross_pnl"], -att["fees"], -att["slippage"], -att["funding"], att["net_pnl"]],
    )
    table = data["monthly_returns_table"]
    assert nan_equal(
        values(figs["fig-monthly"]["data"][0]["z"]),
        json_values([table[y][f"{m:02d}"] for y in table for m in range(1, 13)]),
    )
    assert nan_equal(values(figs["fig-instruments"]["data"][0]["y"]), [r["net_pnl"] for r in data["instruments"]])
    # every drawn figure has a non-zero size set
    for fid, fig in figs.items():
        assert fig["layout"]["height"] > 0, fid


def test_summary_text_for_qrun(report):
    text = report.summary_text("Crypto backtest (60min)")
    s = report.summary
    assert text.startswith("Crypto backtest (60min): 2024-01-31 20:00 .. 2024-02-01 03:00 UTC, 8 60min bars")
    assert f"{s['total_return'] * 100:.2f}%" in text and f"{s['benchmark_total_return'] * 100:.2f}%" in text
    assert "annualised over 8,760 bars a year (365 days x 24 bars a day, 24/7)" in text
    for label in (
        "strategy",
        "strategy, no costs",
        "benchmark",
        "excess",
        "excess, no costs",
        "Sharpe",
        "max drawdown",
    ):
        assert label in text
    assert f"{report.attribution['gross_pnl']:+,.2f} USDT" in text
    assert "e+0" not in text and "e-0" not in text
