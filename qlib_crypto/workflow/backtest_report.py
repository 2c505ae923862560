"""Backtest reports for a 24/7 market: every figure computed once (:func:`build_report`), then written as
JSON (raw values, stable keys), HTML (formatted: %, quote currency, bars and days) and CSV.

Inputs are plain tables, whatever ran the backtest:

- ``report_df``: Qlib's portfolio metrics DataFrame (``report_normal``, one row per bar; ``account`` = equity
  at the bar's close, ``bench`` = the benchmark's return over the bar; ``return``/``cost`` as Qlib books them);
- ``fills``: one row per fill (``datetime instrument side amount price fee slippage``; ``market`` optional);
- ``funding``: funding settlements (``datetime instrument payment``, payment > 0 paid, as the executor records
  them; or a ``funding`` column, > 0 received) or one total received;
- ``order_reports`` (``status reasons`` ...), ``positions`` (Qlib's ``{time: Position}`` or a frame
  ``datetime instrument amount price``) and ``benchmark_returns`` (a Series per bar), all optional.

The metric formulas are in :mod:`qlib_crypto.workflow.metrics` (the one implementation, on Qlib's
``risk_analysis`` where its numbers fit); they are re-exported here. Annualisation uses ``bars_per_year(freq)``
of a 365-day, 24/7 year (8,760 hourly bars, 365 daily bars). See docs/backtest-reports.md for every section,
definition and JSON key.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from .._atomic import atomic_dir, atomic_path, atomic_write_text
from ..errors import BacktestError
from ..settings import DAYS_PER_YEAR, bars_per_year  # 365-day, 24/7 year: 60min -> 8760, day -> 365
from .metrics import (  # noqa: F401  (re-exported: the report's metric functions)
    DRAWDOWN_COLUMNS,
    RETURN_STAT_KEYS,
    TRADE_STAT_KEYS,
    annualized_return,
    bar_hours,
    calmar_ratio,
    compounded,
    default_rolling_window,
    drawdown_curve,
    drawdown_periods,
    exposure,
    finite_or_none,
    max_drawdown,
    max_drawdown_duration,
    monthly_returns,
    monthly_returns_table,
    return_stats,
    returns_from_equity,
    rolling_sharpe,
    rolling_volatility,
    sharpe_ratio,
    sortino_ratio,
    total_return,
    trade_stats,
    turnover,
    volatility,
    win_rate,
    yearly_returns,
)

logger = logging.getLogger(__name__)

SCHEMA = "qlib-crypto/backtest-report/2"

#: the files :meth:`BacktestReport.write` puts in a report directory
REPORT_FILES: tuple[str, ...] = (
    "metrics.json",
    "report.json",
    "report.html",
    "fills.csv",
    "trades.csv",
    "equity.csv",
    "monthly_returns.csv",
)

METRIC_KEYS: tuple[str, ...] = (
    "total_return",
    "annualized_return",
    "volatility",
    "sharpe",
    "sortino",
    "calmar",
    "max_drawdown",
    "max_drawdown_duration",
    "turnover",
    "win_rate",
    "exposure",
    "fees_paid",
    "slippage_paid",
    "funding_paid",
)

#: one line per metric, shown beside it in the HTML (the formulas are in docs/backtest-reports.md)
METRIC_DEFINITIONS: dict[str, str] = {
    "total_return": "E_n / E_0 - 1",
    "annualized_return": "(E_n / E_0) ** (B / n) - 1, geometric",
    "volatility": "std(r, ddof=1) x sqrt(B)",
    "sharpe": "mean(r) / std(r, ddof=1) x sqrt(B), risk-free rate 0",
    "sortino": "mean(r) / sqrt(mean(min(r, 0)^2)) x sqrt(B)",
    "calmar": "annualized_return / |max_drawdown|",
    "max_drawdown": "deepest fall of equity below its running peak (E_0 counts as a peak)",
    "max_drawdown_duration": "longest run of consecutive bars under the running peak",
    "turnover": "traded notional / average equity, whole run",
    "win_rate": "share of closed round trips with P&L after fees > 0",
    "exposure": "share of bars ending with an open position",
    "fees_paid": "sum of the fills' fees",
    "slippage_paid": "sum of amount x |fill price - deal price|",
    "funding_paid": "net funding paid (negative: received)",
}

#: the unit of every number in report.json (see qlib_crypto._format): fraction, ratio, quote, bars, days,
#: hours, times (x equity), bps, count
UNITS: dict[str, str] = {
    # metrics
    "total_return": "fraction",
    "annualized_return": "fraction",
    "volatility": "fraction",
    "sharpe": "ratio",
    "sortino": "ratio",
    "calmar": "ratio",
    "max_drawdown": "fraction",
    "max_drawdown_duration": "bars",
    "turnover": "times",
    "win_rate": "fraction",
    "exposure": "fraction",
    "fees_paid": "quote",
    "slippage_paid": "quote",
    "funding_paid": "quote",
    # summary
    "n_bars": "count",
    "days": "days",
    "initial_equity": "quote",
    "final_equity": "quote",
    "net_pnl": "quote",
    "total_return_without_cost": "fraction",
    "benchmark_total_return": "fraction",
    "excess_total_return": "fraction",
    "excess_total_return_without_cost": "fraction",
    "max_drawdown_duration_days": "days",
    "traded_notional": "quote",
    "n_fills": "count",
    "n_closed_trades": "count",
    "n_liquidations": "count",
    # risk table rows
    "mean": "fraction",
    "std": "fraction",
    "annualized_return_geometric": "fraction",
    "annualized_volatility": "fraction",
    "information_ratio": "ratio",
    "max_drawdown_geometric": "fraction",
    # attribution
    "gross_pnl": "quote",
    "fees": "quote",
    "slippage": "quote",
    "funding": "quote",
    "gross_return": "fraction",
    "fees_return": "fraction",
    "slippage_return": "fraction",
    "funding_return": "fraction",
    "net_return": "fraction",
    "gross_bps": "bps",
    "fees_bps": "bps",
    "slippage_bps": "bps",
    "funding_bps": "bps",
    "net_bps": "bps",
    "cost_share_of_gross": "fraction",
    "closed_trades_pnl": "quote",
    "other_pnl": "quote",
    # trade statistics
    "n_open_trades": "count",
    "n_long_trades": "count",
    "n_short_trades": "count",
    "long_win_rate": "fraction",
    "short_win_rate": "fraction",
    "gross_profit": "quote",
    "gross_loss": "quote",
    "profit_factor": "ratio",
    "expectancy": "quote",
    "expectancy_ratio": "ratio",
    "avg_win": "quote",
    "avg_loss": "quote",
    "best_trade": "quote",
    "worst_trade": "quote",
    "avg_trade_return": "fraction",
    "avg_holding_bars": "bars",
    "avg_holding_hours": "hours",
    "median_holding_hours": "hours",
    "trades_per_day": "ratio",
    # per instrument
    "trades": "count",
    "long_trades": "count",
    "short_trades": "count",
    "wins": "count",
    "realised_pnl": "quote",
    "long_pnl": "quote",
    "short_pnl": "quote",
    "net_pnl_pct": "fraction",
    "open_trades": "count",
    # drawdowns
    "depth": "fraction",
    "length_bars": "bars",
    "length_days": "days",
    "bars_to_trough": "bars",
    # time series
    "equity": "quote",
    "drawdown": "fraction",
    "cum_return_with_cost": "fraction",
    "cum_return_without_cost": "fraction",
    "cum_benchmark": "fraction",
    "cum_excess_with_cost": "fraction",
    "cum_excess_without_cost": "fraction",
    "excess_drawdown": "fraction",
    "return_with_cost": "fraction",
    "return_without_cost": "fraction",
    "benchmark_return": "fraction",
    "cost_return": "fraction",
    "turnover_1d": "times",
    "rolling_sharpe": "ratio",
    "rolling_volatility": "fraction",
    "long_exposure": "fraction",
    "short_exposure": "fraction",
    "net_exposure": "fraction",
    "gross_exposure": "fraction",
    # orders
    "n_orders": "count",
    "n_filled": "count",
    "n_partial": "count",
    "n_rejected": "count",
    # annualisation
    "bars_per_year": "count",
    "days_per_year": "count",
    "hours_per_bar": "hours",
    "bars_per_day": "ratio",
    "rolling_window_bars": "bars",
    "rolling_window_days": "days",
    "risk_free_rate": "fraction",
}

SUMMARY_KEYS: tuple[str, ...] = (
    "start",
    "end",
    "n_bars",
    "days",
    "quote_currency",
    "benchmark",
    "initial_equity",
    "final_equity",
    "net_pnl",
    "total_return",
    "total_return_without_cost",
    "benchmark_total_return",
    "excess_total_return",
    "excess_total_return_without_cost",
    "annualized_return",
    "sharpe",
    "max_drawdown",
    "max_drawdown_duration",
    "max_drawdown_duration_days",
    "turnover",
    "traded_notional",
    "n_fills",
    "n_closed_trades",
)

#: the series of the risk table, as Qlib's PortAnaRecord names them (costs = fees + slippage)
RISK_SERIES: tuple[str, ...] = (
    "return_with_cost",
    "return_without_cost",
    "benchmark",
    "excess_return_with_cost",
    "excess_return_without_cost",
)

TIMESERIES_KEYS: tuple[str, ...] = (
    "equity",
    "drawdown",
    "return_with_cost",
    "return_without_cost",
    "cost_return",
    "benchmark_return",
    "cum_return_with_cost",
    "cum_return_without_cost",
    "cum_benchmark",
    "cum_excess_with_cost",
    "cum_excess_without_cost",
    "excess_drawdown",
    "turnover",
    "turnover_1d",
    "rolling_sharpe",
    "rolling_volatility",
    "fees",
    "slippage",
    "funding",
    "long_exposure",
    "short_exposure",
    "net_exposure",
    "gross_exposure",
)

INSTRUMENT_COLUMNS: tuple[str, ...] = (
    "instrument",
    "market",
    "trades",
    "long_trades",
    "short_trades",
    "wins",
    "win_rate",
    "long_pnl",
    "short_pnl",
    "realised_pnl",
    "fees",
    "slippage",
    "funding",
    "net_pnl",
    "net_pnl_pct",
    "traded_notional",
    "avg_holding_hours",
    "open_trades",
)

ATTRIBUTION_KEYS: tuple[str, ...] = (
    "gross_pnl",
    "fees",
    "slippage",
    "funding",
    "net_pnl",
    "gross_return",
    "fees_return",
    "slippage_return",
    "funding_return",
    "net_return",
    "traded_notional",
    "gross_bps",
    "fees_bps",
    "slippage_bps",
    "funding_bps",
    "net_bps",
    "cost_share_of_gross",
    "closed_trades_pnl",
    "other_pnl",
)

FILL_COLUMNS = ("datetime", "instrument", "side", "amount", "price", "fee", "slippage")


# ----------------------------------------------------------------------------------------------------------
# fills and round trips
# ----------------------------------------------------------------------------------------------------------
def round_trips(fills: pd.DataFrame) -> pd.DataFrame:
    """Group fills into round trips per instrument: a trade opens when the position leaves zero and closes
    when it returns to zero (a fill that crosses zero closes one trade and opens the next; its fee is split
    by amount). P&L = realised price P&L at fill prices minus the fees of the trade's fills.

    Columns: ``instrument side entry_time exit_time entry_price exit_price max_amount pnl fees closed``.
    """
    cols = [
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
    fills = normalize_fills(fills)
    trades: list[dict[str, Any]] = []
    for inst, group in fills.groupby("instrument", sort=True):
        pos = 0.0
        cur: dict[str, Any] | None = None
        for row in group.itertuples(index=False):
            qty = row.amount if row.side == "buy" else -row.amount
            fee_per_unit = row.fee / row.amount if row.amount > 0 else 0.0
            remaining = qty
            while abs(remaining) > 1e-15:
                if cur is None:  # open a trade
                    cur = {
                        "instrument": inst,
                        "side": "long" if remaining > 0 else "short",
                        "entry_time": row.datetime,
                        "exit_time": pd.NaT,
                        "entry_cost": 0.0,
                        "entry_qty": 0.0,
                        "exit_value": 0.0,
                        "exit_qty": 0.0,
                        "max_amount": 0.0,
                        "fees": 0.0,
                        "realised": 0.0,
                    }
                    pos = 0.0
                sign = 1.0 if cur["side"] == "long" else -1.0
                if remaining * sign > 0:  # adds to the trade
                    q = abs(remaining)
                    cur["entry_cost"] += q * row.price
                    cur["entry_qty"] += q
                    pos += sign * q
                    cur["fees"] += q * fee_per_unit
                    cur["max_amount"] = max(cur["max_amount"], abs(pos))
                    remaining = 0.0
                else:  # reduces it, possibly through zero
                    q = min(abs(remaining), abs(pos))
                    avg_entry = cur["entry_cost"] / cur["entry_qty"]
                    cur["realised"] += sign * (row.price - avg_entry) * q
                    cur["exit_value"] += q * row.price
                    cur["exit_qty"] += q
                    cur["fees"] += q * fee_per_unit
                    pos -= sign * q
                    remaining += sign * q
                    if abs(pos) <= 1e-12 * max(1.0, cur["max_amount"]):
                        cur["exit_time"] = row.datetime
                        trades.append(_close_trade(cur, closed=True))
                        cur, pos = None, 0.0
                        if abs(remaining) <= 1e-9 * row.amount:
                            # rounding dust of a closing fill (the position books value / price, the fill its
                            # amount; they differ in the last digits), not a new trade in the other direction
                            remaining = 0.0
        if cur is not None:
            trades.append(_close_trade(cur, closed=False))
    return pd.DataFrame(trades, columns=cols)


def _close_trade(cur: Mapping[str, Any], *, closed: bool) -> dict[str, Any]:
    return {
        "instrument": cur["instrument"],
        "side": cur["side"],
        "entry_time": cur["entry_time"],
        "exit_time": cur["exit_time"] if closed else pd.NaT,
        "entry_price": cur["entry_cost"] / cur["entry_qty"],
        "exit_price": cur["exit_value"] / cur["exit_qty"] if cur["exit_qty"] > 0 else float("nan"),
        "max_amount": cur["max_amount"],
        "pnl": cur["realised"] - cur["fees"],
        "fees": cur["fees"],
        "closed": closed,
    }


def in_market_by_bar(fills: pd.DataFrame, bar_times: Sequence[pd.Timestamp]) -> np.ndarray:
    """For each bar, whether some instrument holds a non-zero amount after that bar's fills."""
    fills = normalize_fills(fills)
    times = pd.DatetimeIndex(bar_times)
    out = np.zeros(len(times), dtype=bool)
    if fills.empty or len(times) == 0:
        return out
    signed = np.where(fills["side"].to_numpy() == "buy", 1.0, -1.0) * fills["amount"].to_numpy(dtype="float64")
    frame = pd.DataFrame(
        {"datetime": pd.DatetimeIndex(fills["datetime"]), "instrument": fills["instrument"], "qty": signed}
    )
    per_bar = frame.groupby(["datetime", "instrument"])["qty"].sum().unstack("instrument", fill_value=0.0)
    held = per_bar.cumsum()
    scale = frame.groupby("instrument")["qty"].apply(lambda s: s.abs().max())
    flat_tol = 1e-9 * scale.reindex(held.columns).to_numpy()
    nonzero = (held.abs().to_numpy() > flat_tol).any(axis=1)
    # carry the state forward to every bar (state after the last fill at or before the bar)
    pos = np.searchsorted(held.index.to_numpy(), times.to_numpy(), side="right") - 1
    valid = pos >= 0
    out[valid] = nonzero[pos[valid]]
    return out


def normalize_fills(fills: pd.DataFrame | None) -> pd.DataFrame:
    """Fills with the columns ``datetime instrument side amount price fee slippage`` (side ``buy``/``sell``,
    ``amount`` >= 0), sorted by time; accepts common aliases (``time``, ``fill_price``, ``stock_id``)."""
    if fills is None or len(fills) == 0:
        return pd.DataFrame(
            {
                c: pd.Series(dtype="float64" if c in ("amount", "price", "fee", "slippage") else object)
                for c in FILL_COLUMNS
            }
        )
    df = pd.DataFrame(fills).copy()
    aliases = {
        "time": "datetime",
        "fill_price": "price",
        "stock_id": "instrument",
        "direction": "side",
        "fees": "fee",
        "slippage_cost": "slippage",
    }
    df = df.rename(columns={k: v for k, v in aliases.items() if k in df.columns and v not in df.columns})
    missing = [c for c in ("datetime", "instrument", "side", "amount", "price") if c not in df.columns]
    if missing:
        raise BacktestError(
            f"fills lack the columns {missing} (have {list(df.columns)})",
            hint="pass the executor's fills with datetime, instrument, side, amount, price, fee, slippage",
        )
    for c in ("fee", "slippage"):
        if c not in df.columns:
            df[c] = 0.0
    side = df["side"].map(_side_name)
    amount = df["amount"].astype("float64")
    # a signed amount with no usable side: the sign decides
    side = side.where(side.notna(), np.where(amount >= 0, "buy", "sell"))
    df["side"] = side
    df["amount"] = amount.abs()
    for c in ("price", "fee", "slippage"):
        df[c] = df[c].astype("float64")
    df["datetime"] = pd.to_datetime(df["datetime"])
    return df.sort_values("datetime", kind="mergesort").reset_index(drop=True)


def _side_name(value: Any) -> str | None:
    text = str(value).strip().lower()
    if text in ("buy", "b", "1", "long", "orderdir.buy"):
        return "buy"
    if text in ("sell", "s", "0", "-1", "short", "orderdir.sell"):
        return "sell"
    return None


def compute_metrics(
    equity: Sequence[float],
    initial_equity: float,
    periods_per_year: float,
    *,
    trade_pnls: Sequence[float] = (),
    traded_notional: float = 0.0,
    in_market: Sequence[bool] = (),
    fees_paid: float = 0.0,
    slippage_paid: float = 0.0,
    funding_paid: float = 0.0,
) -> dict[str, float]:
    """The fourteen report metrics (keys :data:`METRIC_KEYS`) from arrays; formulas in
    :mod:`qlib_crypto.workflow.metrics` (mean, std and the Sharpe ratio through Qlib's ``risk_analysis``)."""
    eq = np.asarray(equity, dtype="float64")
    if len(eq) == 0:
        raise BacktestError("the backtest produced no bars", hint="check the start and end times and the calendar")
    stats = return_stats(returns_from_equity(eq, initial_equity), periods_per_year)
    tot = total_return(eq, initial_equity)
    ann = annualized_return(tot, len(eq), periods_per_year)
    mdd = max_drawdown(eq, initial_equity)
    return {
        "total_return": tot,
        "annualized_return": ann,
        "volatility": stats["annualized_volatility"],
        "sharpe": stats["information_ratio"],
        "sortino": stats["sortino"],
        "calmar": calmar_ratio(ann, mdd),
        "max_drawdown": mdd,
        "max_drawdown_duration": max_drawdown_duration(eq, initial_equity),
        "turnover": turnover(traded_notional, eq),
        "win_rate": win_rate(trade_pnls),
        "exposure": exposure(in_market) if len(in_market) else 0.0,
        "fees_paid": float(fees_paid),
        "slippage_paid": float(slippage_paid),
        "funding_paid": float(funding_paid),
    }


# ----------------------------------------------------------------------------------------------------------
# the report object
# ----------------------------------------------------------------------------------------------------------
def _empty_frame(columns: Iterable[str]) -> pd.DataFrame:
    return pd.DataFrame(columns=list(columns))


@dataclass
class BacktestReport:
    """Everything a backtest report shows, computed once by :func:`build_report`; ``write(out_dir)`` writes
    JSON, HTML and CSV files, ``summary_text()`` the table ``qrun`` prints."""

    metrics: dict[str, float]
    equity: pd.Series
    drawdown: pd.Series
    monthly_returns: pd.Series
    trades: pd.DataFrame
    fills: pd.DataFrame
    info: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    annualisation: dict[str, Any] = field(default_factory=dict)
    timeseries: pd.DataFrame = field(default_factory=lambda: _empty_frame(TIMESERIES_KEYS))
    risk: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(index=list(RETURN_STAT_KEYS)))
    attribution: dict[str, float] = field(default_factory=dict)
    trade_stats: dict[str, float] = field(default_factory=dict)
    instruments: pd.DataFrame = field(default_factory=lambda: _empty_frame(INSTRUMENT_COLUMNS))
    instruments_total: dict[str, Any] = field(default_factory=dict)
    drawdowns: pd.DataFrame = field(default_factory=lambda: _empty_frame(DRAWDOWN_COLUMNS))
    monthly_table: pd.DataFrame = field(default_factory=pd.DataFrame)
    yearly_returns: pd.Series = field(default_factory=lambda: pd.Series(dtype="float64"))
    orders: dict[str, Any] = field(default_factory=dict)

    # ------------------------------------------------------------------------------------------- outputs
    def metrics_json(self) -> str:
        return json.dumps({k: finite_or_none(self.metrics[k]) for k in METRIC_KEYS}, indent=2)

    def write(
        self,
        out_dir: str | Path,
        *,
        title: str = "qlib-crypto backtest",
        extra: Mapping[str, pd.DataFrame | None] | None = None,
    ) -> dict[str, Path]:
        """Write ``metrics.json``, ``report.json``, ``report.html``, ``fills.csv``, ``trades.csv``,
        ``equity.csv`` and ``monthly_returns.csv`` (plus ``extra``: file name -> DataFrame, written as CSV without
        the index) into ``out_dir`` as one unit: staged beside it and swapped in (``qlib_crypto._atomic.atomic_dir``),
        so ``out_dir`` holds the old set of files or the new one, never a mix. ``out_dir`` must be new, empty, or
        hold only these files. Returns the final paths."""
        names = list(REPORT_FILES) + [n for n in (extra or {}) if n not in REPORT_FILES]
        out = Path(out_dir)
        with atomic_dir(out, replaceable=names, what="report directory") as stage:
            staged = {name: stage / name for name in REPORT_FILES}
            atomic_write_text(staged["metrics.json"], self.metrics_json() + "\n", fsync=False)
            atomic_write_text(staged["report.json"], self.to_json() + "\n", fsync=False)
            atomic_write_text(staged["report.html"], self.to_html(title=title), fsync=False)
            _write_csv(self.fills, staged["fills.csv"])
            _write_csv(self.trades, staged["trades.csv"])
            curves = pd.DataFrame({"equity": self.equity, "drawdown": self.drawdown})
            curves.index.name = "datetime"
            _write_csv(curves, staged["equity.csv"], index=True)
            mr = self.monthly_returns.to_frame()
            mr.index.name = "month"
            _write_csv(mr, staged["monthly_returns.csv"], index=True)
            for name, frame in (extra or {}).items():
                _write_csv(frame if frame is not None else pd.DataFrame(), stage / name)
        return {name: out / name for name in names}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1, allow_nan=False, default=str)

    def to_dict(self) -> dict[str, Any]:
        """The whole report as JSON-ready data (every number the HTML shows; keys in docs/backtest-reports.md).
        Raw values: fractions, quote currency, bars; ``units`` names the unit of each key."""
        ts = self.timeseries
        return {
            "schema": SCHEMA,
            "metrics": {k: finite_or_none(self.metrics[k]) for k in METRIC_KEYS},
            "summary": {k: _jsonable(self.summary.get(k)) for k in SUMMARY_KEYS},
            "annualisation": {k: _jsonable(v) for k, v in self.annualisation.items()},
            "risk": {
                s: {k: finite_or_none(self.risk.at[k, s]) if s in self.risk.columns else None for k in RETURN_STAT_KEYS}
                for s in RISK_SERIES
            },
            "pnl_attribution": {k: finite_or_none(self.attribution.get(k)) for k in ATTRIBUTION_KEYS},
            "trade_stats": {k: finite_or_none(self.trade_stats.get(k)) for k in TRADE_STAT_KEYS},
            "instruments": [
                {k: _jsonable(v) for k, v in row.items()} for row in self.instruments.to_dict(orient="records")
            ],
            "instruments_total": {k: _jsonable(v) for k, v in self.instruments_total.items()},
            "drawdowns": [
                {k: _jsonable(v) for k, v in row.items()} for row in self.drawdowns.to_dict(orient="records")
            ],
            "monthly_returns": {k: finite_or_none(v) for k, v in self.monthly_returns.items()},
            "monthly_returns_table": {
                str(y): {c: finite_or_none(self.monthly_table.at[y, c]) for c in self.monthly_table.columns}
                for y in self.monthly_table.index
            },
            "yearly_returns": {k: finite_or_none(v) for k, v in self.yearly_returns.items()},
            "orders": {k: _jsonable(v) for k, v in self.orders.items()},
            "trades": [{k: _jsonable(v) for k, v in row.items()} for row in self.trades.to_dict(orient="records")],
            "timeseries": {
                "datetime": [pd.Timestamp(t).isoformat() for t in ts.index],
                **{
                    k: [finite_or_none(v) for v in ts[k].to_numpy(dtype="float64")]
                    if k in ts.columns
                    else [None] * len(ts)
                    for k in TIMESERIES_KEYS
                },
            },
            "info": {k: _jsonable(v) for k, v in self.info.items()},
            "units": dict(UNITS),
            "n_trades": int(len(self.trades)),
            "n_fills": int(len(self.fills)),
        }

    def summary_text(self, title: str | None = None) -> str:
        """The summary ``qrun`` prints at the end (as Qlib's ``PortAnaRecord`` prints its risk tables): the run,
        the risk table of strategy / benchmark / excess with and without costs, and where the edge went."""
        from ._report_html import summary_text

        return summary_text(self, title=title)

    def to_html(self, *, title: str = "qlib-crypto backtest") -> str:
        """A self-contained page (plotly.js inline, no network): see docs/backtest-reports.md for the sections."""
        from ._report_html import backtest_html

        return backtest_html(self, title=title)


def _jsonable(value: Any) -> Any:
    if isinstance(value, pd.Timestamp):
        return None if pd.isna(value) else value.isoformat()
    if value is pd.NaT:
        return None
    if isinstance(value, (np.bool_, bool)):
        return bool(value)
    if isinstance(value, (float, np.floating, np.integer, int)):
        return finite_or_none(value)
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def _json_number(value: Any) -> Any:  # kept for callers of the old name
    return finite_or_none(value)


def _write_csv(df: pd.DataFrame, path: Path, *, index: bool = False) -> None:
    with atomic_path(path, fsync=False) as tmp:  # inside an atomic_dir stage, which fsyncs before the swap
        df.to_csv(tmp, index=index)


def initial_equity_from_report(report_df: pd.DataFrame) -> float:
    """Recover the starting equity from Qlib's first report row: ``E_1 / (1 + return_1 - cost_1)``
    (Qlib books ``return = (earning + cost) / E_0`` and ``cost = cost / E_0``)."""
    first = report_df.iloc[0]
    return float(first["account"] / (1.0 + first["return"] - first.get("cost", 0.0)))


# ----------------------------------------------------------------------------------------------------------
# building the report: every figure computed here, once
# ----------------------------------------------------------------------------------------------------------
def _bar_of(times: pd.DatetimeIndex, stamps: Any) -> np.ndarray:
    """Index of the bar each time falls in (the last bar starting at or before it; 0 before the first)."""
    t = pd.DatetimeIndex(pd.to_datetime(stamps))
    if t.tz is not None and times.tz is None:
        t = t.tz_convert("UTC").tz_localize(None)
    pos = np.searchsorted(times.asi8, t.asi8, side="right") - 1
    return np.clip(pos, 0, max(len(times) - 1, 0))


def _per_bar(times: pd.DatetimeIndex, stamps: Any, values: np.ndarray) -> np.ndarray:
    out = np.zeros(len(times), dtype="float64")
    if len(values):
        np.add.at(out, _bar_of(times, stamps), np.asarray(values, dtype="float64"))
    return out


def _funding_frame(funding: pd.DataFrame | float | None) -> tuple[pd.DataFrame, float]:
    """(events with ``datetime instrument paid``, total paid) from the accepted funding inputs."""
    empty = pd.DataFrame(
        {
            "datetime": pd.Series(dtype="datetime64[ns]"),
            "instrument": pd.Series(dtype=object),
            "paid": pd.Series(dtype="float64"),
        }
    )
    if funding is None:
        return empty, 0.0
    if isinstance(funding, (int, float, np.floating, np.integer)):
        return empty, -float(funding)  # a number is the total received
    frame = pd.DataFrame(funding)
    if len(frame) == 0:
        return empty, 0.0
    if "payment" in frame.columns:  # the executor's funding events: > 0 paid
        paid = pd.to_numeric(frame["payment"]).astype("float64")
    elif "funding" in frame.columns:  # > 0 received
        paid = -pd.to_numeric(frame["funding"]).astype("float64")
    else:
        paid = -pd.to_numeric(frame[frame.columns[-1]]).astype("float64")
    events = pd.DataFrame(
        {
            "datetime": pd.to_datetime(frame["datetime"]) if "datetime" in frame.columns else pd.NaT,
            "instrument": frame["instrument"].astype(str) if "instrument" in frame.columns else "",
            "paid": paid.to_numpy(),
        }
    )
    return events, float(paid.sum())


def _positions_exposure(positions: Any, times: pd.DatetimeIndex) -> pd.DataFrame | None:
    """Long and short market value per bar (quote currency) from Qlib positions or a positions frame."""
    if positions is None:
        return None
    rows: list[tuple[Any, float, float]] = []
    if isinstance(positions, pd.DataFrame):
        if not len(positions) or not {"datetime", "amount", "price"} <= set(positions.columns):
            return None
        value = positions["amount"].astype("float64") * positions["price"].astype("float64")
        frame = pd.DataFrame(
            {
                "datetime": pd.to_datetime(positions["datetime"]),
                "long": value.clip(lower=0.0),
                "short": value.clip(upper=0.0),
            }
        )
        agg = frame.groupby("datetime")[["long", "short"]].sum()
    elif isinstance(positions, Mapping):
        for t, pos in positions.items():
            long = short = 0.0
            try:
                codes = pos.get_stock_list()
            except AttributeError:
                continue
            for code in codes:
                v = float(pos.get_stock_amount(code)) * float(pos.get_stock_price(code))
                if math.isfinite(v):
                    long += max(v, 0.0)
                    short += min(v, 0.0)
            rows.append((pd.Timestamp(t), long, short))
        if not rows:
            return None
        agg = pd.DataFrame(rows, columns=["datetime", "long", "short"]).set_index("datetime").sort_index()
        agg = agg[~agg.index.duplicated(keep="last")]
    else:
        return None
    return agg.reindex(times)


def _quote_currency(fills: pd.DataFrame, benchmark: str | None) -> str:
    """The quote currency of the traded instruments (``BTC-USDT-SWAP`` -> ``USDT``), else the benchmark's."""
    names = list(fills["instrument"].astype(str).unique()) if len(fills) else []
    if benchmark:
        names.append(str(benchmark))
    quotes = sorted({parts[1] for n in names if len(parts := n.upper().split("-")) >= 2})
    return quotes[0] if len(quotes) == 1 else ("/".join(quotes) if quotes else "")


@dataclass
class ReportMetrics:
    """:func:`report_metrics`' result: the headline metrics and what :func:`build_report` goes on from."""

    metrics: dict[str, Any]
    equity: pd.Series
    init: float
    fills: pd.DataFrame
    trades: pd.DataFrame
    closed: pd.DataFrame
    notional: np.ndarray
    traded: float
    fund_events: pd.DataFrame
    funding_paid: float
    fees_paid: float
    slippage_paid: float


def report_metrics(
    report_df: pd.DataFrame,
    fills: pd.DataFrame | None = None,
    *,
    freq: str,
    initial_equity: float | None = None,
    funding: pd.DataFrame | float | None = None,
) -> ReportMetrics:
    """The headline metrics of :func:`build_report` (``BacktestReport.metrics``), without the rest of the
    report (per-bar series, tables, drawdown periods, calendar): what a cost sweep's row needs. Same code as
    the report's, so the same numbers; arguments as :func:`build_report`'s."""
    if report_df is None or len(report_df) == 0 or "account" not in report_df:
        raise BacktestError(
            "the portfolio report is empty or has no 'account' column",
            hint="run the backtest with generate_portfolio_metrics=True",
        )
    equity = report_df["account"].astype("float64")
    equity.index = pd.DatetimeIndex(equity.index)
    equity.name = "equity"
    times = pd.DatetimeIndex(equity.index)
    init = float(initial_equity) if initial_equity is not None else initial_equity_from_report(report_df)
    fills_n = normalize_fills(fills)
    bpy = bars_per_year(freq)
    trades = round_trips(fills_n)
    closed = trades[trades["closed"]] if len(trades) else trades
    notional = (fills_n["amount"] * fills_n["price"]).to_numpy(dtype="float64") if len(fills_n) else np.zeros(0)
    traded = float(notional.sum())
    fund_events, funding_paid = _funding_frame(funding)
    fees_paid = float(fills_n["fee"].sum())
    slippage_paid = float(fills_n["slippage"].sum())
    metrics = compute_metrics(
        equity.to_numpy(),
        init,
        bpy,
        trade_pnls=closed["pnl"].to_numpy() if len(closed) else [],
        traded_notional=traded,
        in_market=in_market_by_bar(fills_n, times),
        fees_paid=fees_paid,
        slippage_paid=slippage_paid,
        funding_paid=funding_paid,
    )
    return ReportMetrics(
        metrics=metrics,
        equity=equity,
        init=init,
        fills=fills_n,
        trades=trades,
        closed=closed,
        notional=notional,
        traded=traded,
        fund_events=fund_events,
        funding_paid=funding_paid,
        fees_paid=fees_paid,
        slippage_paid=slippage_paid,
    )


def build_report(
    report_df: pd.DataFrame,
    fills: pd.DataFrame | None = None,
    *,
    freq: str,
    initial_equity: float | None = None,
    funding: pd.DataFrame | float | None = None,
    info: Mapping[str, Any] | None = None,
    order_reports: pd.DataFrame | None = None,
    positions: Any = None,
    benchmark_returns: pd.Series | None = None,
    quote_currency: str | None = None,
    rolling_window: int | None = None,
) -> BacktestReport:
    """Build a :class:`BacktestReport` from Qlib's portfolio metrics DataFrame and the executor's tables.

    ``funding``: the executor's funding events (``payment`` > 0 paid), a DataFrame with a ``funding`` column
    (cash received, negative = paid), or a number (the total received); ``funding_paid`` in the report is the
    net amount *paid*. ``benchmark_returns`` (per bar) defaults to ``report_df["bench"]``. ``quote_currency``
    defaults to the instruments' quote (``-USDT``). ``rolling_window`` (bars) defaults to 30 days of bars.
    """
    m = report_metrics(report_df, fills, freq=freq, initial_equity=initial_equity, funding=funding)
    equity, init, fills_n, trades, closed, metrics = m.equity, m.init, m.fills, m.trades, m.closed, m.metrics
    times = pd.DatetimeIndex(equity.index)
    bpy, hpb, n = bars_per_year(freq), bar_hours(freq), len(equity)
    days = n * hpb / 24.0
    notional, traded = m.notional, m.traded
    fund_events, funding_paid, fees_paid, slippage_paid = m.fund_events, m.funding_paid, m.fees_paid, m.slippage_paid
    eq = equity.to_numpy(dtype="float64")
    dd = pd.Series(drawdown_curve(eq, init), index=times, name="drawdown")
    benchmark = (info or {}).get("benchmark")
    quote = quote_currency if quote_currency is not None else _quote_currency(fills_n, benchmark)

    # ---- per-bar series
    prev = np.concatenate([[init], eq[:-1]])
    r_net = eq / prev - 1.0
    fees_bar = _per_bar(times, fills_n["datetime"], fills_n["fee"].to_numpy()) if len(fills_n) else np.zeros(n)
    slip_bar = _per_bar(times, fills_n["datetime"], fills_n["slippage"].to_numpy()) if len(fills_n) else np.zeros(n)
    if len(fills_n) or "cost" not in report_df.columns:
        cost_r = (fees_bar + slip_bar) / prev
    else:  # a plain Qlib report without fills: Qlib's own cost column (fees as Qlib books them)
        cost_r = report_df["cost"].to_numpy(dtype="float64")
    r_gross = r_net + cost_r
    if benchmark_returns is not None:
        bench = pd.Series(benchmark_returns, dtype="float64").reindex(times).to_numpy(dtype="float64")
    elif "bench" in report_df.columns:
        bench = report_df["bench"].to_numpy(dtype="float64")
    else:
        bench = np.full(n, np.nan)
    has_bench = bool(np.isfinite(bench).any())
    bench_filled = np.nan_to_num(bench, nan=0.0)
    ex_net, ex_gross = r_net - bench_filled, r_gross - bench_filled
    turnover_bar = (_per_bar(times, fills_n["datetime"], notional) if len(fills_n) else np.zeros(n)) / prev
    bars_per_day = max(1, int(round(24.0 / hpb)))
    window = int(rolling_window) if rolling_window else default_rolling_window(n, bpy)
    r_series = pd.Series(r_net, index=times)
    funding_bar = (
        _per_bar(times, fund_events["datetime"], fund_events["paid"].to_numpy())
        if len(fund_events) and fund_events["datetime"].notna().all()
        else np.zeros(n)
    )
    ts = pd.DataFrame(index=times)
    ts["equity"] = eq
    ts["drawdown"] = dd.to_numpy()
    ts["return_with_cost"] = r_net
    ts["return_without_cost"] = r_gross
    ts["cost_return"] = cost_r
    ts["benchmark_return"] = bench if has_bench else np.nan
    ts["cum_return_with_cost"] = compounded(r_net)
    ts["cum_return_without_cost"] = compounded(r_gross)
    ts["cum_benchmark"] = compounded(bench_filled) if has_bench else np.nan
    ts["cum_excess_with_cost"] = compounded(ex_net) if has_bench else np.nan
    ts["cum_excess_without_cost"] = compounded(ex_gross) if has_bench else np.nan
    ts["excess_drawdown"] = drawdown_curve(1.0 + compounded(ex_net), 1.0) if has_bench else np.nan
    ts["turnover"] = turnover_bar
    ts["turnover_1d"] = pd.Series(turnover_bar, index=times).rolling(bars_per_day, min_periods=1).sum().to_numpy()
    ts["rolling_sharpe"] = rolling_sharpe(r_series, window, bpy).to_numpy()
    ts["rolling_volatility"] = rolling_volatility(r_series, window, bpy).to_numpy()
    ts["fees"] = fees_bar
    ts["slippage"] = slip_bar
    ts["funding"] = funding_bar
    expo = _positions_exposure(positions, times)
    if expo is not None:
        long_v, short_v = expo["long"].to_numpy(dtype="float64"), expo["short"].to_numpy(dtype="float64")
        ts["long_exposure"] = long_v / eq
        ts["short_exposure"] = short_v / eq
        ts["net_exposure"] = (long_v + short_v) / eq
        ts["gross_exposure"] = (long_v - short_v) / eq
    elif "gross_exposure" in report_df.columns:
        ts["gross_exposure"] = report_df["gross_exposure"].to_numpy(dtype="float64") / eq
    for k in TIMESERIES_KEYS:
        if k not in ts.columns:
            ts[k] = np.nan
    ts = ts[list(TIMESERIES_KEYS)]

    # ---- risk table (Qlib's PortAnaRecord series; costs = fees + slippage)
    series = {
        "return_with_cost": r_net,
        "return_without_cost": r_gross,
        "benchmark": bench if has_bench else np.full(n, np.nan),
        "excess_return_with_cost": ex_net if has_bench else np.full(n, np.nan),
        "excess_return_without_cost": ex_gross if has_bench else np.full(n, np.nan),
    }
    risk = pd.DataFrame({name: return_stats(values, bpy) for name, values in series.items()}).loc[
        list(RETURN_STAT_KEYS)
    ]

    # ---- where the edge went: gross -> fees -> slippage -> funding -> net
    net_pnl = float(eq[-1] - init)
    gross_pnl = net_pnl + fees_paid + slippage_paid + funding_paid
    closed_pnl = float(closed["pnl"].sum()) if len(closed) else 0.0

    def per_notional(x: float) -> float:
        return x / traded * 1e4 if traded > 0 else float("nan")

    attribution = {
        "gross_pnl": gross_pnl,
        "fees": fees_paid,
        "slippage": slippage_paid,
        "funding": funding_paid,
        "net_pnl": net_pnl,
        "gross_return": gross_pnl / init,
        "fees_return": fees_paid / init,
        "slippage_return": slippage_paid / init,
        "funding_return": funding_paid / init,
        "net_return": net_pnl / init,
        "traded_notional": traded,
        "gross_bps": per_notional(gross_pnl),
        "fees_bps": per_notional(fees_paid),
        "slippage_bps": per_notional(slippage_paid),
        "funding_bps": per_notional(funding_paid),
        "net_bps": per_notional(net_pnl),
        "cost_share_of_gross": (fees_paid + slippage_paid + funding_paid) / gross_pnl
        if gross_pnl > 0
        else float("nan"),
        "closed_trades_pnl": closed_pnl,
        "other_pnl": net_pnl - (closed_pnl - funding_paid),
    }

    # ---- trades and instruments
    tstats = trade_stats(trades, days=days, hours_per_bar=hpb)
    instruments, inst_total = _instrument_table(fills_n, trades, fund_events, init)

    # ---- drawdowns and calendar
    drawdowns = drawdown_periods(equity, init, top=5, hours_per_bar=hpb)
    monthly = monthly_returns(equity, init)
    yearly = yearly_returns(equity, init)
    table = monthly_returns_table(monthly, yearly)

    # ---- orders
    orders = _orders_summary(order_reports)

    run_info: dict[str, Any] = {
        "freq": freq,
        "bars_per_year": bpy,
        "start": str(times[0]),
        "end": str(times[-1]),
        "n_bars": int(n),
        "initial_equity": init,
        "final_equity": float(eq[-1]),
        "traded_notional": traded,
        "n_fills": int(len(fills_n)),
        "n_closed_trades": int(len(closed)),
    }
    run_info.update(dict(info or {}))
    annualisation = {
        "freq": freq,
        "bars_per_year": bpy,
        "days_per_year": DAYS_PER_YEAR,
        "hours_per_bar": hpb,
        "bars_per_day": 24.0 / hpb,
        "risk_free_rate": 0.0,
        "rolling_window_bars": window,
        "rolling_window_days": window * hpb / 24.0,
        "basis": (
            f"24/7 market: {bpy:,.0f} bars a year = {DAYS_PER_YEAR} days x {24.0 / hpb:,.4g} bars a day; "
            "risk-free rate 0"
        ),
    }
    summary = {
        "start": times[0],
        "end": times[-1],
        "n_bars": n,
        "days": days,
        "quote_currency": quote,
        "benchmark": benchmark,
        "initial_equity": init,
        "final_equity": float(eq[-1]),
        "net_pnl": net_pnl,
        "total_return": metrics["total_return"],
        "total_return_without_cost": float(ts["cum_return_without_cost"].iloc[-1]),
        "benchmark_total_return": float(ts["cum_benchmark"].iloc[-1]) if has_bench else float("nan"),
        "excess_total_return": float(ts["cum_excess_with_cost"].iloc[-1]) if has_bench else float("nan"),
        "excess_total_return_without_cost": float(ts["cum_excess_without_cost"].iloc[-1])
        if has_bench
        else float("nan"),
        "annualized_return": metrics["annualized_return"],
        "sharpe": metrics["sharpe"],
        "max_drawdown": metrics["max_drawdown"],
        "max_drawdown_duration": metrics["max_drawdown_duration"],
        "max_drawdown_duration_days": metrics["max_drawdown_duration"] * hpb / 24.0,
        "turnover": metrics["turnover"],
        "traded_notional": traded,
        "n_fills": int(len(fills_n)),
        "n_closed_trades": int(len(closed)),
    }
    return BacktestReport(
        metrics=metrics,
        equity=equity,
        drawdown=dd,
        monthly_returns=monthly,
        trades=trades,
        fills=fills_n,
        info=run_info,
        summary=summary,
        annualisation=annualisation,
        timeseries=ts,
        risk=risk,
        attribution=attribution,
        trade_stats=tstats,
        instruments=instruments,
        instruments_total=inst_total,
        drawdowns=drawdowns,
        monthly_table=table,
        yearly_returns=yearly,
        orders=orders,
    )


def _instrument_table(
    fills: pd.DataFrame, trades: pd.DataFrame, funding: pd.DataFrame, initial_equity: float
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """One row per traded (or funded) instrument; see :data:`INSTRUMENT_COLUMNS` and the docs."""
    names = sorted((set(fills["instrument"].astype(str)) | set(funding["instrument"].astype(str))) - {""})
    rows = []
    for name in names:
        f = fills[fills["instrument"].astype(str) == name]
        t = trades[trades["instrument"].astype(str) == name] if len(trades) else trades
        c = t[t["closed"].astype(bool)] if len(t) else t
        pnl = c["pnl"].to_numpy(dtype="float64") if len(c) else np.zeros(0)
        side = c["side"].to_numpy() if len(c) else np.zeros(0, dtype=object)
        fund = float(funding.loc[funding["instrument"] == name, "paid"].sum()) if len(funding) else 0.0
        realised = float(pnl.sum())
        held = (
            (pd.to_datetime(c["exit_time"]) - pd.to_datetime(c["entry_time"])).dt.total_seconds() / 3600
            if len(c)
            else pd.Series(dtype="float64")
        )
        market = ""
        if "market" in f.columns and len(f):
            market = ",".join(sorted(set(f["market"].astype(str))))
        elif name:
            market = "swap" if name.upper().endswith("-SWAP") else "spot"
        rows.append(
            {
                "instrument": name,
                "market": market,
                "trades": int(len(pnl)),
                "long_trades": int((side == "long").sum()),
                "short_trades": int((side == "short").sum()),
                "wins": int((pnl > 0).sum()),
                "win_rate": float((pnl > 0).mean()) if len(pnl) else float("nan"),
                "long_pnl": float(pnl[side == "long"].sum()),
                "short_pnl": float(pnl[side == "short"].sum()),
                "realised_pnl": realised,
                "fees": float(f["fee"].sum()),
                "slippage": float(f["slippage"].sum()),
                "funding": fund,
                "net_pnl": realised - fund,
                "net_pnl_pct": (realised - fund) / initial_equity,
                "traded_notional": float((f["amount"] * f["price"]).sum()),
                "avg_holding_hours": float(held.mean()) if len(held) else float("nan"),
                "open_trades": int((~t["closed"].astype(bool)).sum()) if len(t) else 0,
            }
        )
    table = pd.DataFrame(rows, columns=list(INSTRUMENT_COLUMNS))
    if len(table):
        table = table.sort_values(["net_pnl", "instrument"], ascending=[False, True], kind="mergesort")
        table = table.reset_index(drop=True)
    closed = trades[trades["closed"].astype(bool)] if len(trades) else trades
    all_pnl = closed["pnl"].to_numpy(dtype="float64") if len(closed) else np.zeros(0)
    held_all = (
        (pd.to_datetime(closed["exit_time"]) - pd.to_datetime(closed["entry_time"])).dt.total_seconds() / 3600
        if len(closed)
        else pd.Series(dtype="float64")
    )
    total = {"instrument": "total", "market": ""}
    for col in (
        "trades",
        "long_trades",
        "short_trades",
        "wins",
        "long_pnl",
        "short_pnl",
        "realised_pnl",
        "fees",
        "slippage",
        "funding",
        "net_pnl",
        "net_pnl_pct",
        "traded_notional",
        "open_trades",
    ):
        total[col] = table[col].sum() if len(table) else 0
    total["win_rate"] = float((all_pnl > 0).mean()) if len(all_pnl) else float("nan")
    total["avg_holding_hours"] = float(held_all.mean()) if len(held_all) else float("nan")
    total = {k: total[k] for k in INSTRUMENT_COLUMNS}
    return table, total


def _orders_summary(order_reports: pd.DataFrame | None) -> dict[str, Any]:
    """Counts of the exchange's order reports by status and by reason (``reasons`` is ``;``-joined)."""
    if order_reports is None or len(order_reports) == 0 or "status" not in order_reports.columns:
        return {
            "n_orders": 0 if order_reports is not None else None,
            "n_filled": None,
            "n_partial": None,
            "n_rejected": None,
            "reasons": {},
        }
    status = order_reports["status"].astype(str)
    reasons: dict[str, int] = {}
    if "reasons" in order_reports.columns:
        for text in order_reports["reasons"].fillna("").astype(str):
            for r in filter(None, (p.strip() for p in text.split(";"))):
                reasons[r] = reasons.get(r, 0) + 1
    ordered = dict(sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0])))
    return {
        "n_orders": int(len(order_reports)),
        "n_filled": int((status == "filled").sum()),
        "n_partial": int((status == "partial").sum()),
        "n_rejected": int((status == "rejected").sum()),
        "reasons": ordered,
    }


def metrics_from_json(path: str | Path) -> dict[str, Any]:
    """Read a ``metrics.json`` written by :meth:`BacktestReport.write`."""
    return json.loads(Path(path).read_text(encoding="utf-8"))


def iter_metric_items(metrics: Mapping[str, Any]) -> Iterable[tuple[str, float]]:
    """(key, value) pairs of the finite metrics, for loggers such as MLflow that reject NaN."""
    for k in METRIC_KEYS:
        v = metrics.get(k)
        if isinstance(v, (int, float, np.floating)) and math.isfinite(float(v)):
            yield k, float(v)
