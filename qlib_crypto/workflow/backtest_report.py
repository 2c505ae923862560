"""Backtest reports for a 24/7 market: metrics as pure functions over arrays, plus JSON and HTML writers.

Inputs are what a Qlib backtest returns: the portfolio metrics DataFrame (``report_normal``, one row per
bar, column ``account`` = equity at the bar's close) and the executor's fills (one row per fill:
``datetime, instrument, side, amount, price, fee, slippage``). Funding payments come from the executor too
(``datetime, instrument, funding``, positive = received) or as a single total.

Annualisation uses ``bars_per_year(freq)`` of a 365-day, 24/7 year (8,760 hourly bars, 365 daily bars).
Formulas (``r`` = per-bar simple returns of equity, ``E_0`` = initial equity, ``n`` = number of bars,
``B`` = bars per year):

- ``total_return = E_n / E_0 - 1``; ``annualized_return = (E_n / E_0) ** (B / n) - 1``
- ``volatility = std(r, ddof=1) * sqrt(B)``; ``sharpe = mean(r) / std(r, ddof=1) * sqrt(B)`` (risk-free 0)
- ``sortino = mean(r) / sqrt(mean(min(r, 0) ** 2)) * sqrt(B)``
- ``max_drawdown = min(E_t / max_{s<=t} E_s - 1)`` (a negative fraction; ``E_0`` counts as a peak)
- ``max_drawdown_duration``: the longest run of consecutive bars with equity strictly below its running peak
- ``calmar = annualized_return / |max_drawdown|``
- ``turnover = sum |amount x fill price| / mean(E)`` (one-way traded notional over average equity)
- ``win_rate``: share of closed round trips (flat -> position -> flat, or a flip) whose P&L after fees > 0
- ``exposure``: share of bars that end with a non-zero position in some instrument
- ``fees_paid``, ``slippage_paid``: sums over fills; ``funding_paid``: net funding paid (negative = received)

A value that is undefined (e.g. a Sharpe ratio of a constant series) is ``null`` in JSON.
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
from ..settings import bars_per_year  # 365-day, 24/7 year: 60min -> 8760, day -> 365

logger = logging.getLogger(__name__)

#: the files :meth:`BacktestReport.write` puts in a report directory
REPORT_FILES: tuple[str, ...] = ("metrics.json", "report.json", "report.html", "fills.csv", "trades.csv",
                                 "equity.csv", "monthly_returns.csv")

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

FILL_COLUMNS = ("datetime", "instrument", "side", "amount", "price", "fee", "slippage")


# ----------------------------------------------------------------------------------------------------------
# pure metric functions over arrays
# ----------------------------------------------------------------------------------------------------------
def returns_from_equity(equity: Sequence[float], initial_equity: float) -> np.ndarray:
    """Per-bar simple returns ``E_t / E_{t-1} - 1`` with ``E_{-1} = initial_equity``."""
    eq = np.asarray(equity, dtype="float64")
    prev = np.concatenate([[float(initial_equity)], eq[:-1]])
    return eq / prev - 1.0


def total_return(equity: Sequence[float], initial_equity: float) -> float:
    eq = np.asarray(equity, dtype="float64")
    return float(eq[-1] / initial_equity - 1.0) if len(eq) else 0.0


def annualized_return(total: float, n_bars: int, periods_per_year: float) -> float:
    """Geometric annualisation ``(1 + total) ** (B / n) - 1``; -1 when the equity was wiped out."""
    if n_bars <= 0:
        return float("nan")
    growth = 1.0 + total
    if growth <= 0:
        return -1.0
    return float(growth ** (periods_per_year / n_bars) - 1.0)


def volatility(returns: Sequence[float], periods_per_year: float) -> float:
    r = np.asarray(returns, dtype="float64")
    if len(r) < 2:
        return float("nan")
    return float(np.std(r, ddof=1) * math.sqrt(periods_per_year))


def sharpe_ratio(returns: Sequence[float], periods_per_year: float) -> float:
    """Annualised Sharpe ratio with a zero risk-free rate; NaN when the returns do not vary."""
    r = np.asarray(returns, dtype="float64")
    if len(r) < 2:
        return float("nan")
    sd = np.std(r, ddof=1)
    if not sd > 0:
        return float("nan")
    return float(np.mean(r) / sd * math.sqrt(periods_per_year))


def sortino_ratio(returns: Sequence[float], periods_per_year: float) -> float:
    """Annualised Sortino ratio: mean over the downside deviation ``sqrt(mean(min(r, 0)^2))``."""
    r = np.asarray(returns, dtype="float64")
    if len(r) == 0:
        return float("nan")
    downside = math.sqrt(float(np.mean(np.minimum(r, 0.0) ** 2)))
    if not downside > 0:
        return float("nan")
    return float(np.mean(r) / downside * math.sqrt(periods_per_year))


def drawdown_curve(equity: Sequence[float], initial_equity: float | None = None) -> np.ndarray:
    """``E_t / running_peak_t - 1`` per bar (0 at a new peak); the initial equity counts as a peak."""
    eq = np.asarray(equity, dtype="float64")
    peak = np.maximum.accumulate(eq)
    if initial_equity is not None:
        peak = np.maximum(peak, float(initial_equity))
    return eq / peak - 1.0


def max_drawdown(equity: Sequence[float], initial_equity: float | None = None) -> float:
    """The deepest drawdown as a negative fraction (0.0 if equity never fell below a peak)."""
    dd = drawdown_curve(equity, initial_equity)
    return float(min(0.0, dd.min())) if len(dd) else 0.0


def max_drawdown_duration(equity: Sequence[float], initial_equity: float | None = None) -> int:
    """The longest run of consecutive bars whose equity is strictly below the running peak."""
    dd = drawdown_curve(equity, initial_equity)
    longest = run = 0
    for under in dd < 0:
        run = run + 1 if under else 0
        longest = max(longest, run)
    return int(longest)


def calmar_ratio(annual_return: float, max_dd: float) -> float:
    if not max_dd < 0:
        return float("nan")
    return float(annual_return / abs(max_dd))


def win_rate(trade_pnls: Sequence[float]) -> float:
    """Share of trades with a strictly positive P&L; NaN without trades."""
    p = np.asarray(trade_pnls, dtype="float64")
    if len(p) == 0:
        return float("nan")
    return float(np.mean(p > 0))


def turnover(traded_notional: float, equity: Sequence[float]) -> float:
    """One-way traded notional over the average equity."""
    eq = np.asarray(equity, dtype="float64")
    if len(eq) == 0 or not np.mean(eq) > 0:
        return float("nan")
    return float(traded_notional / np.mean(eq))


def exposure(in_market: Sequence[bool]) -> float:
    """Share of bars that end with an open position."""
    m = np.asarray(in_market, dtype=bool)
    return float(m.mean()) if len(m) else 0.0


def monthly_returns(equity: pd.Series, initial_equity: float) -> pd.Series:
    """Return of each calendar month (UTC): last equity of the month over the last of the month before
    (the initial equity for the first month). Indexed by ``YYYY-MM``."""
    if equity.empty:
        return pd.Series(dtype="float64", name="monthly_return")
    idx = pd.DatetimeIndex(equity.index)
    month_end = equity.groupby(idx.to_period("M")).last()
    prev = np.concatenate([[float(initial_equity)], month_end.to_numpy(dtype="float64")[:-1]])
    out = pd.Series(month_end.to_numpy(dtype="float64") / prev - 1.0, index=[str(p) for p in month_end.index])
    out.name = "monthly_return"
    return out


def round_trips(fills: pd.DataFrame) -> pd.DataFrame:
    """Group fills into round trips per instrument: a trade opens when the position leaves zero and closes
    when it returns to zero (a fill that crosses zero closes one trade and opens the next; its fee is split
    by amount). P&L = realised price P&L at fill prices minus the fees of the trade's fills.

    Columns: ``instrument side entry_time exit_time entry_price exit_price max_amount pnl fees closed``.
    """
    cols = ["instrument", "side", "entry_time", "exit_time", "entry_price", "exit_price", "max_amount", "pnl",
            "fees", "closed"]
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
                    cur = {"instrument": inst, "side": "long" if remaining > 0 else "short", "entry_time": row.datetime,
                           "exit_time": pd.NaT, "entry_cost": 0.0, "entry_qty": 0.0, "exit_value": 0.0,
                           "exit_qty": 0.0, "max_amount": 0.0, "fees": 0.0, "realised": 0.0}
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
    frame = pd.DataFrame({"datetime": pd.DatetimeIndex(fills["datetime"]), "instrument": fills["instrument"],
                          "qty": signed})
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
        return pd.DataFrame({c: pd.Series(dtype="float64" if c in ("amount", "price", "fee", "slippage") else object)
                             for c in FILL_COLUMNS})
    df = pd.DataFrame(fills).copy()
    aliases = {"time": "datetime", "fill_price": "price", "stock_id": "instrument", "direction": "side",
               "fees": "fee", "slippage_cost": "slippage"}
    df = df.rename(columns={k: v for k, v in aliases.items() if k in df.columns and v not in df.columns})
    missing = [c for c in ("datetime", "instrument", "side", "amount", "price") if c not in df.columns]
    if missing:
        raise BacktestError(f"fills lack the columns {missing} (have {list(df.columns)})",
                            hint="pass the executor's fills with datetime, instrument, side, amount, price, fee, slippage")
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
    """The fourteen report metrics (keys :data:`METRIC_KEYS`) from arrays; see the module docstring."""
    eq = np.asarray(equity, dtype="float64")
    if len(eq) == 0:
        raise BacktestError("the backtest produced no bars", hint="check the start and end times and the calendar")
    rets = returns_from_equity(eq, initial_equity)
    tot = total_return(eq, initial_equity)
    ann = annualized_return(tot, len(eq), periods_per_year)
    mdd = max_drawdown(eq, initial_equity)
    return {
        "total_return": tot,
        "annualized_return": ann,
        "volatility": volatility(rets, periods_per_year),
        "sharpe": sharpe_ratio(rets, periods_per_year),
        "sortino": sortino_ratio(rets, periods_per_year),
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
@dataclass
class BacktestReport:
    """Everything a backtest report shows; ``write(out_dir)`` writes JSON, HTML and CSV files."""

    metrics: dict[str, float]
    equity: pd.Series
    drawdown: pd.Series
    monthly_returns: pd.Series
    trades: pd.DataFrame
    fills: pd.DataFrame
    info: dict[str, Any] = field(default_factory=dict)

    def metrics_json(self) -> str:
        return json.dumps({k: _json_number(self.metrics[k]) for k in METRIC_KEYS}, indent=2)

    def write(self, out_dir: str | Path, *, title: str = "qlib-crypto backtest",
              extra: Mapping[str, pd.DataFrame | None] | None = None) -> dict[str, Path]:
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
            atomic_write_text(staged["report.json"], json.dumps(self.to_dict(), indent=2, default=str) + "\n",
                              fsync=False)
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

    def to_dict(self) -> dict[str, Any]:
        """Metrics, run information and monthly returns (the curves and trades go to CSV files)."""
        return {
            "metrics": {k: _json_number(self.metrics[k]) for k in METRIC_KEYS},
            "info": {k: _json_number(v) if isinstance(v, float) else v for k, v in self.info.items()},
            "monthly_returns": {k: _json_number(v) for k, v in self.monthly_returns.items()},
            "n_trades": int(len(self.trades)),
            "n_fills": int(len(self.fills)),
        }

    def to_html(self, *, title: str = "qlib-crypto backtest") -> str:
        """A self-contained page: metrics table, equity and drawdown plots, monthly returns, trades."""
        from .._html import figure_to_data_uri, img_html, new_figure, page, table_html

        sections: list[tuple[str, str]] = []
        sections.append(("Metrics", table_html([(k, _json_number(self.metrics[k])) for k in METRIC_KEYS])))
        sections.append(("Run", table_html(list(self.info.items()))))
        fig, ax = new_figure()
        ax.plot(self.equity.index, self.equity.to_numpy(), color="#1f77b4", lw=1.0)
        ax.set_title("Equity")
        ax.grid(alpha=0.3)
        fig.autofmt_xdate()
        sections.append(("Equity curve", img_html(figure_to_data_uri(fig), "equity curve")))
        fig, ax = new_figure(height=2.6)
        ax.fill_between(self.drawdown.index, self.drawdown.to_numpy(), 0.0, color="#d62728", alpha=0.5)
        ax.set_title("Drawdown")
        ax.grid(alpha=0.3)
        fig.autofmt_xdate()
        sections.append(("Drawdown", img_html(figure_to_data_uri(fig), "drawdown curve")))
        if len(self.monthly_returns):
            fig, ax = new_figure(height=2.8)
            vals = self.monthly_returns.to_numpy()
            ax.bar(range(len(vals)), vals, color=np.where(vals >= 0, "#2ca02c", "#d62728"))
            ax.set_xticks(range(len(vals)), list(self.monthly_returns.index), rotation=60, fontsize=7)
            ax.set_title("Monthly returns")
            ax.grid(alpha=0.3, axis="y")
            sections.append(("Monthly returns", img_html(figure_to_data_uri(fig), "monthly returns")
                             + table_html([(k, v) for k, v in self.monthly_returns.items()])))
        shown = self.trades.head(200)
        rows = "".join(
            "<tr>" + "".join(f"<td>{_cell(v)}</td>" for v in rec) + "</tr>" for rec in shown.itertuples(index=False)
        )
        head = "".join(f"<th>{c}</th>" for c in shown.columns)
        note = f"<p>{len(self.trades)} trades (first 200 shown; all in trades.csv).</p>"
        sections.append(("Trades", note + f"<table><tr>{head}</tr>{rows}</table>"))
        return page(title, sections)


def _cell(value: Any) -> str:
    import html

    if isinstance(value, float):
        return f"{value:.6g}"
    return html.escape(str(value))


def _json_number(value: Any) -> Any:
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, (np.integer,)):
        return int(value)
    return value


def _write_csv(df: pd.DataFrame, path: Path, *, index: bool = False) -> None:
    with atomic_path(path, fsync=False) as tmp:  # inside an atomic_dir stage, which fsyncs before the swap
        df.to_csv(tmp, index=index)


def initial_equity_from_report(report_df: pd.DataFrame) -> float:
    """Recover the starting equity from Qlib's first report row: ``E_1 / (1 + return_1 - cost_1)``
    (Qlib books ``return = (earning + cost) / E_0`` and ``cost = cost / E_0``)."""
    first = report_df.iloc[0]
    return float(first["account"] / (1.0 + first["return"] - first.get("cost", 0.0)))


def build_report(
    report_df: pd.DataFrame,
    fills: pd.DataFrame | None = None,
    *,
    freq: str,
    initial_equity: float | None = None,
    funding: pd.DataFrame | float | None = None,
    info: Mapping[str, Any] | None = None,
) -> BacktestReport:
    """Build a :class:`BacktestReport` from Qlib's portfolio metrics DataFrame and the executor's fills.

    ``funding``: a DataFrame with a ``funding`` column (cash received, negative = paid) or a number (the
    total received); ``funding_paid`` in the report is the net amount *paid*.
    """
    if report_df is None or len(report_df) == 0 or "account" not in report_df:
        raise BacktestError("the portfolio report is empty or has no 'account' column",
                            hint="run the backtest with generate_portfolio_metrics=True")
    equity = report_df["account"].astype("float64")
    equity.index = pd.DatetimeIndex(equity.index)
    equity.name = "equity"
    init = float(initial_equity) if initial_equity is not None else initial_equity_from_report(report_df)
    fills_n = normalize_fills(fills)
    bpy = bars_per_year(freq)
    trades = round_trips(fills_n)
    closed = trades[trades["closed"]] if len(trades) else trades
    traded = float((fills_n["amount"] * fills_n["price"]).sum()) if len(fills_n) else 0.0
    if funding is None:
        funding_received = 0.0
    elif isinstance(funding, (int, float, np.floating)):
        funding_received = float(funding)
    else:
        col = "funding" if "funding" in funding.columns else funding.columns[-1]
        funding_received = float(pd.to_numeric(funding[col]).sum()) if len(funding) else 0.0
    metrics = compute_metrics(
        equity.to_numpy(),
        init,
        bpy,
        trade_pnls=closed["pnl"].to_numpy() if len(closed) else [],
        traded_notional=traded,
        in_market=in_market_by_bar(fills_n, equity.index),
        fees_paid=float(fills_n["fee"].sum()),
        slippage_paid=float(fills_n["slippage"].sum()),
        funding_paid=0.0 - funding_received,
    )
    dd = pd.Series(drawdown_curve(equity.to_numpy(), init), index=equity.index, name="drawdown")
    run_info: dict[str, Any] = {
        "freq": freq,
        "bars_per_year": bpy,
        "start": str(equity.index[0]),
        "end": str(equity.index[-1]),
        "n_bars": int(len(equity)),
        "initial_equity": init,
        "final_equity": float(equity.iloc[-1]),
        "traded_notional": traded,
        "n_fills": int(len(fills_n)),
        "n_closed_trades": int(len(closed)),
    }
    run_info.update(dict(info or {}))
    return BacktestReport(
        metrics=metrics,
        equity=equity,
        drawdown=dd,
        monthly_returns=monthly_returns(equity, init),
        trades=trades,
        fills=fills_n,
        info=run_info,
    )


def metrics_from_json(path: str | Path) -> dict[str, Any]:
    """Read a ``metrics.json`` written by :meth:`BacktestReport.write`."""
    return json.loads(Path(path).read_text(encoding="utf-8"))


def iter_metric_items(metrics: Mapping[str, Any]) -> Iterable[tuple[str, float]]:
    """(key, value) pairs of the finite metrics, for loggers such as MLflow that reject NaN."""
    for k in METRIC_KEYS:
        v = metrics.get(k)
        if isinstance(v, (int, float, np.floating)) and math.isfinite(float(v)):
            yield k, float(v)
