"""The backtest report as a person reads it: an HTML page and the text table ``qrun`` prints.

Nothing is computed here that :func:`qlib_crypto.workflow.backtest_report.build_report` did not compute: this
module arranges and formats the report's numbers (returns in %, money in the quote currency, durations in
bars and days) and draws them with plotly. Sections and their anchors are listed in :data:`SECTIONS`.
"""

from __future__ import annotations

import html
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from .. import _format as fmt

if TYPE_CHECKING:  # pragma: no cover
    from .backtest_report import BacktestReport

#: (anchor, heading) of every section of the backtest page, in order
SECTIONS: tuple[tuple[str, str], ...] = (
    ("summary", "Summary"),
    ("edge", "Where the edge went"),
    ("metrics", "Performance metrics"),
    ("benchmark", "Against the benchmark"),
    ("rolling", "Rolling Sharpe and volatility"),
    ("drawdowns", "Worst drawdowns"),
    ("monthly", "Monthly returns"),
    ("trades", "Trade statistics"),
    ("instruments", "Per instrument"),
    ("exposure", "Exposure"),
    ("orders", "Orders"),
    ("run", "Run"),
    ("trade-list", "Trades"),
)

#: the figures of the page: element id -> what it draws
FIGURES: dict[str, str] = {
    "fig-edge": "waterfall: gross P&L -> fees -> slippage -> funding -> net P&L",
    "fig-benchmark": "cumulative return of strategy (with / without costs) and benchmark; excess with / without "
    "costs; drawdowns; turnover",
    "fig-rolling": "rolling Sharpe ratio and rolling volatility",
    "fig-underwater": "drawdown curve with the five worst periods shaded",
    "fig-monthly": "monthly returns heatmap (%)",
    "fig-instruments": "net P&L per instrument",
    "fig-exposure": "long, short, net and gross exposure (fraction of equity)",
}

RISK_LABELS = {
    "return_with_cost": "strategy",
    "return_without_cost": "strategy, no costs",
    "benchmark": "benchmark",
    "excess_return_with_cost": "excess",
    "excess_return_without_cost": "excess, no costs",
}
RISK_ROWS = (
    ("total_return", "total return", "fraction"),
    ("annualized_return_geometric", "annualised return (geometric)", "fraction"),
    ("annualized_return", "annualised return (arithmetic, mean x B)", "fraction"),
    ("annualized_volatility", "annualised volatility", "fraction"),
    ("information_ratio", "Sharpe / information ratio", "ratio"),
    ("sortino", "Sortino", "ratio"),
    ("max_drawdown_geometric", "max drawdown", "fraction"),
    ("max_drawdown_duration", "max drawdown duration", "bars"),
    ("mean", "mean per bar", "fraction4"),
    ("std", "std per bar", "fraction4"),
    ("n_bars", "bars", "count"),
)
METRIC_LABELS = {
    "total_return": "total return",
    "annualized_return": "annualised return",
    "volatility": "annualised volatility",
    "sharpe": "Sharpe ratio",
    "sortino": "Sortino ratio",
    "calmar": "Calmar ratio",
    "max_drawdown": "max drawdown",
    "max_drawdown_duration": "max drawdown duration",
    "turnover": "turnover",
    "win_rate": "win rate",
    "exposure": "time in market",
    "fees_paid": "fees paid",
    "slippage_paid": "slippage paid",
    "funding_paid": "funding paid",
}
TRADE_LABELS = {
    "n_closed_trades": "closed trades",
    "n_open_trades": "open at the end",
    "n_long_trades": "long trades",
    "n_short_trades": "short trades",
    "win_rate": "win rate",
    "long_win_rate": "win rate, long",
    "short_win_rate": "win rate, short",
    "gross_profit": "gross profit (winning trades)",
    "gross_loss": "gross loss (losing trades)",
    "profit_factor": "profit factor",
    "expectancy": "expectancy per trade",
    "expectancy_ratio": "expectancy ratio",
    "avg_win": "average win",
    "avg_loss": "average loss",
    "best_trade": "best trade",
    "worst_trade": "worst trade",
    "avg_trade_return": "average trade return",
    "avg_holding_bars": "average holding time",
    "avg_holding_hours": "average holding time (hours)",
    "median_holding_hours": "median holding time",
    "trades_per_day": "trades per day",
}


class _Fmt:
    """Formatting bound to one report (currency, bar length)."""

    def __init__(self, report: "BacktestReport") -> None:
        self.ccy = str(report.summary.get("quote_currency") or "")
        self.hpb = float(report.annualisation.get("hours_per_bar") or 1.0)

    def __call__(self, value: Any, unit: str) -> str:
        if unit == "fraction4":
            return fmt.pct(value, 4)
        if unit == "days":
            return "n/a" if fmt._num(value) is None else f"{float(value):,.1f} days"
        return fmt.value(value, unit, currency=self.ccy, hours_per_bar=self.hpb)


def _unit(key: str) -> str:
    from .backtest_report import UNITS

    return UNITS.get(key, "")


# ------------------------------------------------------------------------------------------------- text
def summary_text(report: "BacktestReport", title: str | None = None) -> str:
    """The backtest summary as plain text (what ``qrun`` prints)."""
    f = _Fmt(report)
    s, a, att = report.summary, report.annualisation, report.attribution
    head = title or "qlib-crypto backtest"
    lines = [
        f"{head}: {fmt.timestamp(s.get('start'))} .. {fmt.timestamp(s.get('end'))} UTC, "
        f"{fmt.count(s.get('n_bars'))} {a.get('freq')} bars ({float(s.get('days') or 0):,.1f} days); "
        f"benchmark {s.get('benchmark') or 'none'}; money in {f.ccy or 'quote currency'}",
        f"annualised over {a.get('bars_per_year', 0):,.0f} bars a year ({a.get('days_per_year')} days x "
        f"{a.get('bars_per_day', 0):,.4g} bars a day, 24/7), risk-free rate 0; costs = fees + slippage",
    ]
    cols = [c for c in RISK_LABELS if c in report.risk.columns]
    rows = []
    for key, label, unit in RISK_ROWS:
        if key in ("mean", "std", "n_bars", "annualized_return"):
            continue
        rows.append([label] + [f(report.risk.at[key, c], unit) for c in cols])
    lines.append(fmt.text_table(rows, ["metric"] + [RISK_LABELS[c] for c in cols]))
    funding = att.get("funding")
    funding_text = (
        f"+ funding received {fmt.money(-funding, f.ccy)}"
        if funding is not None and funding < 0
        else f"- funding {fmt.money(funding, f.ccy)}"
    )
    lines.append(
        f"where the edge went: gross P&L {fmt.money(att.get('gross_pnl'), f.ccy, sign=True)} "
        f"- fees {fmt.money(att.get('fees'), f.ccy)} - slippage {fmt.money(att.get('slippage'), f.ccy)} "
        f"{funding_text} = net {fmt.money(att.get('net_pnl'), f.ccy, sign=True)} "
        f"({fmt.pct(att.get('net_return'), sign=True)}); per traded notional: gross {fmt.bps(att.get('gross_bps'))}, "
        f"costs {fmt.bps(_cost_bps(att))}"
    )
    ts = report.trade_stats
    lines.append(
        f"trades: {fmt.count(ts.get('n_closed_trades'))} closed ({fmt.ratio(ts.get('trades_per_day'))} a day), "
        f"win rate {fmt.pct(ts.get('win_rate'))}, profit factor {fmt.ratio(ts.get('profit_factor'))}, "
        f"expectancy {fmt.money(ts.get('expectancy'), f.ccy)}, average holding {fmt.hours(ts.get('avg_holding_hours'))}; "
        f"turnover {fmt.times(report.metrics.get('turnover'))}, final equity {fmt.money(s.get('final_equity'), f.ccy)}"
    )
    return "\n".join(lines)


def _cost_bps(att: dict) -> float:
    parts = [att.get(k) for k in ("fees_bps", "slippage_bps", "funding_bps")]
    if any(p is None or not np.isfinite(p) for p in parts):
        return float("nan")
    return float(sum(parts))


def edge_explanation(report: "BacktestReport") -> str:
    """One paragraph: gross P&L, what fees, slippage and funding took, net; and why a positive gross edge
    turned into a loss when it did."""
    f = _Fmt(report)
    att = report.attribution
    g, net = att.get("gross_pnl", float("nan")), att.get("net_pnl", float("nan"))
    text = (
        f"Before costs the strategy made {fmt.money(g, f.ccy, sign=True)} ({fmt.pct(att.get('gross_return'), sign=True)} "
        f"of the initial equity; {fmt.bps(att.get('gross_bps'))} of the {fmt.money(att.get('traded_notional'), f.ccy)} "
        f"traded). Fees took {fmt.money(att.get('fees'), f.ccy)} ({fmt.bps(att.get('fees_bps'))}), slippage "
        f"{fmt.money(att.get('slippage'), f.ccy)} ({fmt.bps(att.get('slippage_bps'))}), "
        + (
            f"funding brought {fmt.money(-att['funding'], f.ccy)} ({fmt.bps(-att['funding_bps'])})"
            if (att.get("funding") or 0) < 0 and att.get("funding_bps") is not None and np.isfinite(att["funding_bps"])
            else f"funding took {fmt.money(att.get('funding'), f.ccy)} ({fmt.bps(att.get('funding_bps'))})"
        )
        + f": net {fmt.money(net, f.ccy, sign=True)} ({fmt.pct(att.get('net_return'), sign=True)})."
    )
    if np.isfinite(g) and np.isfinite(net) and g > 0 > net:
        text += (
            f" The edge was positive before costs, but costs of {fmt.bps(_cost_bps(att))} per unit traded exceed "
            f"the gross edge of {fmt.bps(att.get('gross_bps'))}: trade less often, or find a larger edge per trade."
        )
    elif np.isfinite(g) and g <= 0:
        text += " There was no edge before costs: the losses are not (only) the costs."
    return text


# ---------------------------------------------------------------------------------------------- figures
def _fig_edge(report: "BacktestReport") -> Any:
    import plotly.graph_objects as go

    from .._html import COLORS, style_figure

    f = _Fmt(report)
    att = report.attribution
    labels = ["gross P&L", "fees", "slippage", "funding", "net P&L"]
    values = [
        att.get("gross_pnl"),
        -att.get("fees", 0.0),
        -att.get("slippage", 0.0),
        -att.get("funding", 0.0),
        att.get("net_pnl"),
    ]
    values = [float(v) if v is not None and np.isfinite(v) else 0.0 for v in values]
    fig = go.Figure(
        go.Waterfall(
            x=labels,
            y=values,
            measure=["absolute", "relative", "relative", "relative", "total"],
            text=[fmt.money(v, f.ccy, 0, sign=True) for v in values],
            textposition="outside",
            increasing={"marker": {"color": COLORS["gain"]}},
            decreasing={"marker": {"color": COLORS["loss"]}},
            totals={"marker": {"color": COLORS["strategy"]}},
            connector={"line": {"color": "#999"}},
            hovertemplate="%{x}: %{y:,.2f} " + f.ccy + "<extra></extra>",
        )
    )
    style_figure(fig, title=f"Where the edge went ({f.ccy or 'quote currency'})", height=380)
    fig.update_layout(showlegend=False, hovermode="closest")
    fig.update_yaxes(tickformat=",.0f", title_text=f.ccy)
    return fig


def _fig_benchmark(report: "BacktestReport") -> Any:
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    from .._html import COLORS, style_figure

    ts = report.timeseries
    x = ts.index
    fig = make_subplots(
        rows=4,
        cols=1,
        shared_xaxes=True,
        vertical_spacing=0.05,
        row_heights=[0.36, 0.24, 0.2, 0.2],
        subplot_titles=(
            "cumulative return",
            "excess return over the benchmark",
            "drawdown",
            "turnover (traded notional / equity)",
        ),
    )
    pct = "%{y:.2%}"

    def line(col: str, name: str, color: str, row: int, dash: str | None = None, fill: str | None = None) -> None:
        y = ts[col].to_numpy(dtype="float64")
        if not np.isfinite(y).any():
            return
        fig.add_trace(
            go.Scatter(
                x=x,
                y=y,
                name=name,
                mode="lines",
                line={"color": color, "width": 1.4, "dash": dash},
                fill=fill,
                hovertemplate=pct,
            ),
            row=row,
            col=1,
        )

    line("cum_return_with_cost", "strategy", COLORS["strategy"], 1)
    line("cum_return_without_cost", "strategy, no costs", COLORS["gross"], 1, "dash")
    line("cum_benchmark", f"benchmark ({report.summary.get('benchmark') or 'n/a'})", COLORS["benchmark"], 1)
    line("cum_excess_with_cost", "excess", COLORS["excess"], 2)
    line("cum_excess_without_cost", "excess, no costs", COLORS["excess_gross"], 2, "dash")
    line("drawdown", "drawdown", COLORS["loss"], 3, fill="tozeroy")
    line("excess_drawdown", "excess drawdown", COLORS["other"], 3)
    fig.add_trace(
        go.Bar(
            x=x,
            y=ts["turnover"],
            name="turnover per bar",
            marker={"color": COLORS["turnover"]},
            hovertemplate="%{y:.3f}x",
        ),
        row=4,
        col=1,
    )
    fig.add_trace(
        go.Scatter(
            x=x,
            y=ts["turnover_1d"],
            name="turnover, last 24 h",
            mode="lines",
            line={"color": "#8c564b", "width": 1.2},
            hovertemplate="%{y:.3f}x",
        ),
        row=4,
        col=1,
    )
    style_figure(fig, height=900)
    for row in (1, 2, 3):
        fig.update_yaxes(tickformat=".1%", row=row, col=1)
    fig.update_yaxes(tickformat=".3~g", ticksuffix="x", row=4, col=1)
    return fig


def _fig_rolling(report: "BacktestReport") -> Any:
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    from .._html import COLORS, style_figure

    ts = report.timeseries
    w = report.annualisation.get("rolling_window_bars")
    days = report.annualisation.get("rolling_window_days") or 0
    fig = make_subplots(
        rows=2,
        cols=1,
        shared_xaxes=True,
        vertical_spacing=0.08,
        subplot_titles=(
            f"rolling Sharpe ratio ({w} bars = {days:,.1f} days, annualised)",
            "rolling volatility (annualised)",
        ),
    )
    fig.add_trace(
        go.Scatter(
            x=ts.index,
            y=ts["rolling_sharpe"],
            name="rolling Sharpe",
            mode="lines",
            line={"color": COLORS["strategy"], "width": 1.3},
            hovertemplate="%{y:.2f}",
        ),
        row=1,
        col=1,
    )
    fig.add_trace(
        go.Scatter(
            x=ts.index,
            y=ts["rolling_volatility"],
            name="rolling volatility",
            mode="lines",
            line={"color": COLORS["turnover"], "width": 1.3},
            hovertemplate="%{y:.2%}",
        ),
        row=2,
        col=1,
    )
    style_figure(fig, height=520)
    fig.update_yaxes(tickformat=".2f", row=1, col=1)
    fig.update_yaxes(tickformat=".1%", row=2, col=1)
    return fig


def _fig_underwater(report: "BacktestReport") -> Any:
    import plotly.graph_objects as go

    from .._html import COLORS, style_figure

    ts = report.timeseries
    fig = go.Figure(
        go.Scatter(
            x=ts.index,
            y=ts["drawdown"],
            name="drawdown",
            mode="lines",
            fill="tozeroy",
            line={"color": COLORS["loss"], "width": 1.2},
            hovertemplate="%{y:.2%}",
        )
    )
    end = ts.index[-1] if len(ts) else None
    for i, row in enumerate(report.drawdowns.itertuples(index=False), start=1):
        x1 = row.recovery if not pd.isna(row.recovery) else end
        fig.add_vrect(
            x0=row.start,
            x1=x1,
            fillcolor="#ff9896",
            opacity=0.18,
            line_width=0,
            annotation_text=f"#{i}",
            annotation_position="top left",
        )
    style_figure(fig, title="Drawdown (the five worst periods shaded)", height=330)
    fig.update_layout(showlegend=False)
    fig.update_yaxes(tickformat=".1%")
    return fig


MONTH_NAMES = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def _fig_monthly(report: "BacktestReport") -> Any:
    import plotly.graph_objects as go

    from .._html import style_figure

    table = report.monthly_table
    months = [c for c in table.columns if c != "year"]
    z = table[months].to_numpy(dtype="float64") if len(table) else np.zeros((0, 12))
    text = [[fmt.pct(v) if np.isfinite(v) else "" for v in row] for row in z]
    lim = float(np.nanmax(np.abs(z))) if np.isfinite(z).any() else 0.01
    fig = go.Figure(
        go.Heatmap(
            z=np.where(np.isfinite(z), z, None).tolist(),
            x=list(MONTH_NAMES[: len(months)]),
            y=list(table.index),
            text=text,
            texttemplate="%{text}",
            colorscale="RdYlGn",
            zmid=0,
            zmin=-lim,
            zmax=lim,
            colorbar={"tickformat": ".0%"},
            hovertemplate="%{y} %{x}: %{z:.2%}<extra></extra>",
            xgap=2,
            ygap=2,
        )
    )
    style_figure(fig, title="Monthly returns (%)", height=max(220, 90 + 60 * len(table)))
    fig.update_layout(hovermode="closest")
    fig.update_yaxes(type="category", autorange="reversed", showgrid=False, zeroline=False)
    fig.update_xaxes(showgrid=False, zeroline=False)
    return fig


def _fig_instruments(report: "BacktestReport") -> Any:
    import plotly.graph_objects as go

    from .._html import COLORS, style_figure

    f = _Fmt(report)
    t = report.instruments
    y = t["net_pnl"].to_numpy(dtype="float64")
    fig = go.Figure(
        go.Bar(
            x=list(t["instrument"]),
            y=y,
            marker={"color": [COLORS["gain"] if v >= 0 else COLORS["loss"] for v in y]},
            hovertemplate="%{x}: %{y:,.2f} " + f.ccy + "<extra></extra>",
        )
    )
    style_figure(fig, title=f"Net P&L per instrument (closed trades after fees, minus funding; {f.ccy})", height=340)
    fig.update_layout(showlegend=False, hovermode="closest")
    fig.update_yaxes(tickformat=",.0f")
    return fig


def _fig_exposure(report: "BacktestReport") -> Any | None:
    import plotly.graph_objects as go

    from .._html import COLORS, style_figure

    ts = report.timeseries
    cols = [
        ("long_exposure", "long", COLORS["gain"]),
        ("short_exposure", "short", COLORS["loss"]),
        ("net_exposure", "net", COLORS["strategy"]),
        ("gross_exposure", "gross", COLORS["benchmark"]),
    ]
    fig = go.Figure()
    for col, name, color in cols:
        y = ts[col].to_numpy(dtype="float64")
        if np.isfinite(y).any():
            fig.add_trace(
                go.Scatter(
                    x=ts.index,
                    y=y,
                    name=name,
                    mode="lines",
                    line={"color": color, "width": 1.2},
                    hovertemplate="%{y:.1%}",
                )
            )
    if not fig.data:
        return None
    style_figure(fig, title="Exposure (market value / equity)", height=320)
    fig.update_yaxes(tickformat=".0%")
    return fig


# ------------------------------------------------------------------------------------------------- page
def backtest_html(report: "BacktestReport", *, title: str) -> str:
    from .._html import cards, grid_table, page, paragraph, plotly_div, table_html, tone, wide

    f = _Fmt(report)
    s, a, att, m = report.summary, report.annualisation, report.attribution, report.metrics
    ccy = f.ccy or "quote currency"
    subtitle = (
        f"{fmt.timestamp(s.get('start'))} .. {fmt.timestamp(s.get('end'))} UTC: {fmt.count(s.get('n_bars'))} "
        f"{a.get('freq')} bars ({float(s.get('days') or 0):,.1f} days). Annualisation: {a.get('basis')}. "
        f"Money in {ccy}. Costs = fees + slippage; funding is shown on its own."
    )
    sections: list[tuple[str, str, str]] = []
    head = cards(
        [
            ("net total return", fmt.pct(s.get("total_return")), tone(s.get("total_return"))),
            ("before costs", fmt.pct(s.get("total_return_without_cost")), tone(s.get("total_return_without_cost"))),
            (
                f"benchmark {s.get('benchmark') or ''}".strip(),
                fmt.pct(s.get("benchmark_total_return")),
                tone(s.get("benchmark_total_return")),
            ),
            ("excess return", fmt.pct(s.get("excess_total_return")), tone(s.get("excess_total_return"))),
            ("Sharpe ratio", fmt.ratio(s.get("sharpe")), tone(s.get("sharpe"))),
            ("max drawdown", fmt.pct(s.get("max_drawdown")), "neg" if (s.get("max_drawdown") or 0) < 0 else ""),
            ("net P&L", fmt.money(s.get("net_pnl"), f.ccy, sign=True), tone(s.get("net_pnl"))),
            ("final equity", fmt.money(s.get("final_equity"), f.ccy), ""),
        ]
    )
    sections.append(("Summary", head, "summary"))

    # where the edge went
    rows = []
    for label, key, ret, bp, sign in (
        ("gross P&L (at deal prices, before costs)", "gross_pnl", "gross_return", "gross_bps", 1.0),
        ("fees", "fees", "fees_return", "fees_bps", -1.0),
        ("slippage", "slippage", "slippage_return", "slippage_bps", -1.0),
        ("funding (positive = received)", "funding", "funding_return", "funding_bps", -1.0),
        ("net P&L", "net_pnl", "net_return", "net_bps", 1.0),
    ):
        vals = [att.get(k) for k in (key, ret, bp)]
        v, r, b = [sign * x if x is not None and np.isfinite(x) else None for x in vals]
        rows.append([label, fmt.money(v, f.ccy, sign=True), fmt.pct(r, sign=True), fmt.bps(b)])
    edge = (
        f"<p class='explain'>{html.escape(edge_explanation(report))}</p>"
        + plotly_div(_fig_edge(report), "fig-edge")
        + grid_table(
            ["step", ccy, "of initial equity", "of traded notional"],
            rows,
            row_classes=["", "", "", "", "total"],
            notes=[
                f"Traded notional: {fmt.money(att.get('traded_notional'), f.ccy)}. Closed round "
                f"trips made {fmt.money(att.get('closed_trades_pnl'), f.ccy)} after fees; positions "
                f"still open at the end and partial closes account for "
                f"{fmt.money(att.get('other_pnl'), f.ccy)}."
            ],
        )
    )
    sections.append(("Where the edge went", edge, "edge"))

    # metrics
    from .backtest_report import METRIC_DEFINITIONS, METRIC_KEYS

    mrows = [[METRIC_LABELS[k], f(m.get(k), _unit(k)), METRIC_DEFINITIONS[k]] for k in METRIC_KEYS]
    sections.append(
        (
            "Performance metrics",
            grid_table(
                ["metric", "value", "definition"],
                mrows,
                numeric_to=2,
                notes=[
                    f"r = per-bar return of equity, B = "
                    f"{a.get('bars_per_year', 0):,.0f} bars a year "
                    f"({a.get('basis')})."
                ],
            ),
            "metrics",
        )
    )

    # benchmark
    cols = [c for c in RISK_LABELS if c in report.risk.columns]
    rrows = [[label] + [f(report.risk.at[key, c], unit) for c in cols] for key, label, unit in RISK_ROWS]
    bench_html = plotly_div(_fig_benchmark(report), "fig-benchmark") + wide_table(
        ["", *[RISK_LABELS[c] for c in cols]],
        rrows,
        notes=[
            "Cumulative returns compound the per-bar returns; excess = strategy return - "
            'benchmark return per bar (Qlib\'s definition), compounded. "No costs" adds the '
            "bar's fees and slippage back (funding stays in). Arithmetic annualised return "
            "and the information ratio are Qlib's risk_analysis at N = "
            f"{a.get('bars_per_year', 0):,.0f}."
        ],
    )
    sections.append(("Against the benchmark", bench_html, "benchmark"))

    sections.append(("Rolling Sharpe and volatility", plotly_div(_fig_rolling(report), "fig-rolling"), "rolling"))

    # drawdowns
    drows = []
    for i, row in enumerate(report.drawdowns.itertuples(index=False), start=1):
        drows.append(
            [
                f"#{i}",
                fmt.timestamp(row.peak) if not pd.isna(row.peak) else "start",
                fmt.timestamp(row.start),
                fmt.timestamp(row.trough),
                fmt.timestamp(row.recovery) if row.recovered else "not recovered",
                fmt.pct(row.depth),
                fmt.bars(row.length_bars, f.hpb),
                fmt.bars(row.bars_to_trough, f.hpb),
            ]
        )
    dd_html = plotly_div(_fig_underwater(report), "fig-underwater") + grid_table(
        ["", "peak", "start", "trough", "recovery", "depth", "length (under water)", "start to trough"],
        drows,
        notes=[
            "Length counts the bars under the previous peak, from the first bar under water to "
            "the bar before the recovery (or to the end)."
        ]
        if drows
        else ["Equity never fell below a previous peak."],
    )
    sections.append(("Worst drawdowns", dd_html, "drawdowns"))

    # monthly
    table = report.monthly_table
    mrows2 = [
        [str(y)] + [fmt.pct(v) if np.isfinite(v) else "" for v in table.loc[y].to_numpy(dtype="float64")]
        for y in table.index
    ]
    month_html = plotly_div(_fig_monthly(report), "fig-monthly") + grid_table(
        ["year", *MONTH_NAMES, "year"],
        mrows2,
        notes=["Month-end equity over the previous month-end (the first month over the initial equity), UTC."],
    )
    sections.append(("Monthly returns", month_html, "monthly"))

    # trade statistics
    from .backtest_report import TRADE_STAT_KEYS

    trows = [[TRADE_LABELS[k], f(report.trade_stats.get(k), _unit(k))] for k in TRADE_STAT_KEYS]
    sections.append(
        (
            "Trade statistics",
            grid_table(
                ["", "value"],
                trows,
                notes=[
                    "A trade is a round trip (flat -> position -> flat, or a flip). P&L at fill prices after fees; profit factor ="
                    " gross profit / |gross loss|; expectancy = mean P&L per closed trade; expectancy ratio = expectancy / "
                    "|average loss|; trade return = P&L / (entry price x largest amount held)."
                ],
            ),
            "trades",
        )
    )

    # per instrument
    it = report.instruments
    irows, classes = [], []
    for row in list(it.to_dict(orient="records")) + [report.instruments_total]:
        if not row:
            continue
        irows.append(
            [
                row["instrument"],
                row["market"],
                fmt.count(row["trades"]),
                f"{fmt.count(row['long_trades'])} / {fmt.count(row['short_trades'])}",
                fmt.pct(row["win_rate"]),
                fmt.money(row["long_pnl"], f.ccy),
                fmt.money(row["short_pnl"], f.ccy),
                fmt.money(row["fees"], f.ccy),
                fmt.money(row["slippage"], f.ccy),
                fmt.money(row["funding"], f.ccy),
                fmt.money(row["net_pnl"], f.ccy),
                fmt.pct(row["net_pnl_pct"]),
                fmt.money(row["traded_notional"], f.ccy),
                fmt.hours(row["avg_holding_hours"]),
                fmt.count(row["open_trades"]),
            ]
        )
        classes.append("total" if row["instrument"] == "total" else "")
    inst_html = (plotly_div(_fig_instruments(report), "fig-instruments") if len(it) else "") + wide(
        grid_table(
            [
                "instrument",
                "market",
                "trades",
                "long / short",
                "win rate",
                "long P&L",
                "short P&L",
                "fees",
                "slippage",
                "funding paid",
                "net P&L",
                "net P&L %",
                "traded",
                "avg holding",
                "open",
            ],
            irows,
            numeric_from=2,
            row_classes=classes,
            notes=[
                "P&L of closed trades at fill prices after fees (so after slippage too; the fees and slippage columns "
                "show what they took); net P&L = that minus funding paid; % of the initial equity."
            ],
        )
    )
    sections.append(("Per instrument", inst_html, "instruments"))

    expo = _fig_exposure(report)
    sections.append(
        (
            "Exposure",
            plotly_div(expo, "fig-exposure")
            if expo is not None
            else paragraph("No position data was given (positions or a gross_exposure column)."),
            "exposure",
        )
    )

    o = report.orders
    if o.get("n_orders") is None:
        orders_html = paragraph("No order reports were given.")
    else:
        orows = [
            ["orders", fmt.count(o.get("n_orders"))],
            ["filled as asked", fmt.count(o.get("n_filled"))],
            ["partly filled", fmt.count(o.get("n_partial"))],
            ["rejected", fmt.count(o.get("n_rejected"))],
        ]
        orows += [[f"reason: {k}", fmt.count(v)] for k, v in (o.get("reasons") or {}).items()]
        orders_html = grid_table(["", "count"], orows)
    sections.append(("Orders", orders_html, "orders"))

    sections.append(("Run", table_html([(k, _info_value(k, v, f)) for k, v in report.info.items()]), "run"))

    shown = report.trades.head(200)
    trade_rows = [
        [
            r.instrument,
            r.side,
            fmt.timestamp(r.entry_time),
            fmt.timestamp(r.exit_time),
            fmt.ratio(r.entry_price, 6),
            fmt.ratio(r.exit_price, 6),
            fmt.ratio(r.max_amount, 6),
            fmt.money(r.pnl, f.ccy),
            fmt.money(r.fees, f.ccy),
            "yes" if r.closed else "open",
        ]
        for r in shown.itertuples(index=False)
    ]
    sections.append(
        (
            "Trades",
            wide(
                grid_table(
                    [
                        "instrument",
                        "side",
                        "entry",
                        "exit",
                        "entry price",
                        "exit price",
                        "largest amount",
                        "P&L",
                        "fees",
                        "closed",
                    ],
                    trade_rows,
                    numeric_from=4,
                    notes=[f"{len(report.trades):,d} trades (first 200 shown; all in trades.csv)."],
                )
            ),
            "trade-list",
        )
    )
    return page(title, sections, subtitle=subtitle, nav=True)


def wide_table(*args: Any, **kwargs: Any) -> str:
    from .._html import grid_table, wide

    return wide(grid_table(*args, **kwargs))


def _info_value(key: str, value: Any, f: _Fmt) -> str:
    """A run-information value as text: money keys in the quote currency, numbers without scientific notation."""
    if key in ("initial_equity", "final_equity", "account") or key.endswith("_notional"):
        return fmt.money(value, f.ccy)
    if isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_)):
        return fmt.plain(value)
    return "" if value is None else str(value)
