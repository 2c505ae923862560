"""The one implementation of the performance metrics (backtest report, 24/7 risk records, summaries).

Every figure a report shows is computed here, once, from plain arrays / Series; the report modules only
arrange and format them. Annualisation is 24/7: ``B = bars_per_year(freq)`` bars in a 365-day year
(8,760 hourly bars, 365 daily bars), risk-free rate 0.

Where Qlib's ``qlib.contrib.evaluate.risk_analysis`` computes a number we use (mean, sample std, arithmetic
annualised return ``mean x B``, information ratio ``mean / std x sqrt(B)``, geometric annualised return), it
is called with ``N = B`` (:func:`return_stats`); the Sharpe ratio of a report *is* Qlib's information
ratio at ``N = B``. What it does not give is computed here:

- drawdowns count the starting capital as a peak (Qlib's running maximum starts at the first bar, so a loss
  on the first bar is not a drawdown there), and come with their durations and periods;
- Sortino, Calmar, rolling Sharpe and volatility, monthly and yearly returns, trade statistics.

Conventions: ``E_0`` is the initial equity, ``E_1 .. E_n`` the equity at each bar's close, and
``r_t = E_t / E_{t-1} - 1``. Undefined values (the Sharpe ratio of a constant series...) are NaN.
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from ..settings import DAYS_PER_YEAR, bars_per_year

__all__ = [
    "DAYS_PER_YEAR",
    "bars_per_year",
    "bar_hours",
    "returns_from_equity",
    "total_return",
    "annualized_return",
    "volatility",
    "sharpe_ratio",
    "sortino_ratio",
    "drawdown_curve",
    "max_drawdown",
    "max_drawdown_duration",
    "drawdown_periods",
    "calmar_ratio",
    "win_rate",
    "turnover",
    "exposure",
    "monthly_returns",
    "monthly_returns_table",
    "yearly_returns",
    "rolling_sharpe",
    "rolling_volatility",
    "default_rolling_window",
    "return_stats",
    "RETURN_STAT_KEYS",
    "compounded",
    "trade_stats",
    "TRADE_STAT_KEYS",
    "profit_factor",
    "expectancy",
]

NAN = float("nan")


def bar_hours(freq: str) -> float:
    """Length of one bar in hours (``60min`` -> 1, ``day`` -> 24)."""
    return DAYS_PER_YEAR * 24.0 / bars_per_year(freq)


# ---------------------------------------------------------------------------------------------- returns
def returns_from_equity(equity: Sequence[float], initial_equity: float) -> np.ndarray:
    """Per-bar simple returns ``E_t / E_{t-1} - 1`` with ``E_0 = initial_equity``."""
    eq = np.asarray(equity, dtype="float64")
    prev = np.concatenate([[float(initial_equity)], eq[:-1]])
    return eq / prev - 1.0


def compounded(returns: Sequence[float] | pd.Series) -> np.ndarray | pd.Series:
    """Cumulative compounded return ``prod(1 + r) - 1`` after each bar (NaN bars count as 0)."""
    if isinstance(returns, pd.Series):
        return (1.0 + returns.fillna(0.0)).cumprod() - 1.0
    r = np.nan_to_num(np.asarray(returns, dtype="float64"), nan=0.0)
    return np.cumprod(1.0 + r) - 1.0


def total_return(equity: Sequence[float], initial_equity: float) -> float:
    eq = np.asarray(equity, dtype="float64")
    return float(eq[-1] / initial_equity - 1.0) if len(eq) else 0.0


def annualized_return(total: float, n_bars: int, periods_per_year: float) -> float:
    """Geometric annualisation ``(1 + total) ** (B / n) - 1``; -1 when the equity was wiped out."""
    if n_bars <= 0:
        return NAN
    growth = 1.0 + total
    if growth <= 0:
        return -1.0
    with np.errstate(over="ignore"):
        return float(np.power(growth, periods_per_year / n_bars) - 1.0)


def _std(r: np.ndarray) -> float:
    """Sample std (ddof 1); exactly 0 for a constant series (float rounding would give ~1e-19)."""
    if len(r) < 2:
        return NAN
    if np.ptp(r) == 0:
        return 0.0
    return float(np.std(r, ddof=1))


def volatility(returns: Sequence[float], periods_per_year: float) -> float:
    """``std(r, ddof=1) x sqrt(B)``."""
    return _std(np.asarray(returns, dtype="float64")) * math.sqrt(periods_per_year)


def sharpe_ratio(returns: Sequence[float], periods_per_year: float) -> float:
    """``mean(r) / std(r, ddof=1) x sqrt(B)`` (risk-free rate 0; Qlib's information ratio at ``N = B``);
    NaN when the returns do not vary."""
    r = np.asarray(returns, dtype="float64")
    sd = _std(r)
    if not sd > 0:
        return NAN
    return float(np.mean(r) / sd * math.sqrt(periods_per_year))


def sortino_ratio(returns: Sequence[float], periods_per_year: float) -> float:
    """``mean(r) / sqrt(mean(min(r, 0)^2)) x sqrt(B)``; NaN without a losing bar."""
    r = np.asarray(returns, dtype="float64")
    if len(r) == 0:
        return NAN
    downside = math.sqrt(float(np.mean(np.minimum(r, 0.0) ** 2)))
    if not downside > 0:
        return NAN
    return float(np.mean(r) / downside * math.sqrt(periods_per_year))


# -------------------------------------------------------------------------------------------- drawdowns
def drawdown_curve(equity: Sequence[float], initial_equity: float | None = None) -> np.ndarray:
    """``E_t / running_peak_t - 1`` per bar (0 at a new peak); the initial equity counts as a peak."""
    eq = np.asarray(equity, dtype="float64")
    if not len(eq):
        return eq
    peak = np.maximum.accumulate(eq)
    if initial_equity is not None:
        peak = np.maximum(peak, float(initial_equity))
    return eq / peak - 1.0


def max_drawdown(equity: Sequence[float], initial_equity: float | None = None) -> float:
    """The deepest drawdown as a negative fraction (0.0 if equity never fell below a peak)."""
    dd = drawdown_curve(equity, initial_equity)
    return float(min(0.0, dd.min())) if len(dd) else 0.0


def _underwater_runs(dd: np.ndarray) -> list[tuple[int, int]]:
    """(first, last) bar index of every run of consecutive bars with a drawdown < 0."""
    runs: list[tuple[int, int]] = []
    start = None
    for i, under in enumerate(dd < 0):
        if under and start is None:
            start = i
        elif not under and start is not None:
            runs.append((start, i - 1))
            start = None
    if start is not None:
        runs.append((start, len(dd) - 1))
    return runs


def max_drawdown_duration(equity: Sequence[float], initial_equity: float | None = None) -> int:
    """The longest run of consecutive bars whose equity is strictly below the running peak."""
    runs = _underwater_runs(drawdown_curve(equity, initial_equity))
    return int(max((b - a + 1 for a, b in runs), default=0))


DRAWDOWN_COLUMNS = (
    "peak",
    "start",
    "trough",
    "recovery",
    "depth",
    "length_bars",
    "length_days",
    "bars_to_trough",
    "recovered",
)


def drawdown_periods(
    equity: pd.Series, initial_equity: float | None = None, *, top: int | None = 5, hours_per_bar: float = 1.0
) -> pd.DataFrame:
    """The ``top`` deepest drawdown periods (all with ``top=None``), deepest first.

    A period is a run of consecutive bars under the running peak. Columns: ``peak`` (the last bar at the
    peak; NaT when the peak is the initial equity), ``start`` (first bar under water), ``trough`` (bar of the
    lowest equity), ``recovery`` (first bar back at or above the peak; NaT if still under water at the end),
    ``depth`` (``trough equity / peak - 1``, negative), ``length_bars`` (bars under water), ``length_days``
    (``length_bars x hours_per_bar / 24``), ``bars_to_trough`` (``trough - start + 1``), ``recovered``.
    """
    times = pd.DatetimeIndex(equity.index)
    dd = drawdown_curve(equity.to_numpy(dtype="float64"), initial_equity)
    rows = []
    for a, b in _underwater_runs(dd):
        trough = a + int(np.argmin(dd[a : b + 1]))
        recovered = b + 1 < len(dd)
        rows.append(
            {
                "peak": times[a - 1] if a > 0 else pd.NaT,
                "start": times[a],
                "trough": times[trough],
                "recovery": times[b + 1] if recovered else pd.NaT,
                "depth": float(dd[trough]),
                "length_bars": int(b - a + 1),
                "length_days": (b - a + 1) * hours_per_bar / 24.0,
                "bars_to_trough": int(trough - a + 1),
                "recovered": bool(recovered),
            }
        )
    frame = pd.DataFrame(rows, columns=list(DRAWDOWN_COLUMNS))
    if len(frame):
        frame = frame.sort_values(["depth", "start"], kind="mergesort").reset_index(drop=True)
    return frame if top is None else frame.head(top).reset_index(drop=True)


def calmar_ratio(annual_return: float, max_dd: float) -> float:
    """``annualized_return / |max_drawdown|``; NaN without a drawdown."""
    if not max_dd < 0:
        return NAN
    return float(annual_return / abs(max_dd))


# ------------------------------------------------------------------------------------------ activity
def win_rate(trade_pnls: Sequence[float]) -> float:
    """Share of trades with a strictly positive P&L; NaN without trades."""
    p = np.asarray(trade_pnls, dtype="float64")
    if len(p) == 0:
        return NAN
    return float(np.mean(p > 0))


def turnover(traded_notional: float, equity: Sequence[float]) -> float:
    """One-way traded notional over the average equity."""
    eq = np.asarray(equity, dtype="float64")
    if len(eq) == 0 or not np.mean(eq) > 0:
        return NAN
    return float(traded_notional / np.mean(eq))


def exposure(in_market: Sequence[bool]) -> float:
    """Share of bars that end with an open position."""
    m = np.asarray(in_market, dtype=bool)
    return float(m.mean()) if len(m) else 0.0


# -------------------------------------------------------------------------------------------- calendar
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


def yearly_returns(equity: pd.Series, initial_equity: float) -> pd.Series:
    """Return of each calendar year (UTC), as :func:`monthly_returns`; indexed by ``YYYY``."""
    if equity.empty:
        return pd.Series(dtype="float64", name="yearly_return")
    idx = pd.DatetimeIndex(equity.index)
    year_end = equity.groupby(idx.year).last()
    prev = np.concatenate([[float(initial_equity)], year_end.to_numpy(dtype="float64")[:-1]])
    return pd.Series(
        year_end.to_numpy(dtype="float64") / prev - 1.0, index=[str(y) for y in year_end.index], name="yearly_return"
    )


def monthly_returns_table(monthly: pd.Series, yearly: pd.Series | None = None) -> pd.DataFrame:
    """Monthly returns (index ``YYYY-MM``) as a year x month table (columns ``01`` .. ``12``, NaN for months
    outside the run) plus a ``year`` column with the yearly returns when given."""
    cols = [f"{m:02d}" for m in range(1, 13)]
    years = sorted({k[:4] for k in monthly.index})
    table = pd.DataFrame(NAN, index=years, columns=cols, dtype="float64")
    for key, value in monthly.items():
        table.at[key[:4], key[5:7]] = float(value)
    if yearly is not None:
        table["year"] = [float(yearly.get(y, NAN)) for y in years]
    table.index.name = "year"
    return table


# --------------------------------------------------------------------------------------------- rolling
def default_rolling_window(n_bars: int, periods_per_year: float) -> int:
    """30 days of bars (720 hourly bars, 30 daily bars), shortened to half the run when the run is shorter
    than 60 days; at least 2 bars."""
    month = int(round(periods_per_year / DAYS_PER_YEAR * 30))
    if n_bars < 2 * month:
        month = n_bars // 2
    return max(2, month)


def rolling_sharpe(returns: pd.Series, window: int, periods_per_year: float) -> pd.Series:
    """Sharpe ratio of the last ``window`` bars at each bar (NaN before ``window`` bars or when flat)."""
    r = returns.astype("float64")
    mean = r.rolling(window, min_periods=window).mean()
    std = r.rolling(window, min_periods=window).std(ddof=1)
    flat = (r.rolling(window, min_periods=window).max() - r.rolling(window, min_periods=window).min()) == 0
    out = mean / std.where(~flat & (std > 0)) * math.sqrt(periods_per_year)
    out.name = "rolling_sharpe"
    return out


def rolling_volatility(returns: pd.Series, window: int, periods_per_year: float) -> pd.Series:
    """Annualised volatility of the last ``window`` bars at each bar."""
    r = returns.astype("float64")
    flat = (r.rolling(window, min_periods=window).max() - r.rolling(window, min_periods=window).min()) == 0
    out = r.rolling(window, min_periods=window).std(ddof=1).mask(flat, 0.0) * math.sqrt(periods_per_year)
    out.name = "rolling_volatility"
    return out


# --------------------------------------------------------------------------------- return statistics
RETURN_STAT_KEYS = (
    "n_bars",
    "mean",
    "std",
    "total_return",
    "annualized_return",
    "annualized_return_geometric",
    "annualized_volatility",
    "information_ratio",
    "sortino",
    "max_drawdown",
    "max_drawdown_geometric",
    "max_drawdown_duration",
)


def return_stats(returns: Iterable[float] | pd.Series, periods_per_year: float) -> dict[str, float]:
    """Statistics of a per-bar simple return series (NaN bars dropped), annualised over ``B`` bars.

    From Qlib's ``risk_analysis(r, N=B)``: ``mean``, ``std`` (ddof 1), ``annualized_return`` (arithmetic
    ``mean x B``, mode ``sum``), ``information_ratio`` (``mean / std x sqrt(B)``) and
    ``annualized_return_geometric`` (``prod(1 + r) ** (B / n) - 1``, mode ``product``). Computed here:
    ``annualized_volatility`` (``std x sqrt(B)``), ``sortino``, ``total_return`` (``prod(1 + r) - 1``),
    ``max_drawdown`` (on the cumulative sum, Qlib's arithmetic convention), ``max_drawdown_geometric``
    (with compounding) and ``max_drawdown_duration`` (bars), both counted from the starting capital.
    A constant series has ``std`` 0 and no information ratio.
    """
    r = np.asarray(pd.Series(returns, dtype="float64").dropna(), dtype="float64")
    n = int(r.size)
    if n == 0:
        return {k: NAN for k in RETURN_STAT_KEYS} | {"n_bars": 0.0}
    from qlib.contrib.evaluate import risk_analysis

    series = pd.Series(r)
    if n >= 2:
        arith = risk_analysis(series, N=periods_per_year, freq=None, mode="sum")["risk"]
        geo = risk_analysis(series, N=periods_per_year, freq=None, mode="product")["risk"]
        mean, std = float(arith["mean"]), float(arith["std"])
        ann_arith, ann_geo = float(arith["annualized_return"]), float(geo["annualized_return"])
        ir = float(arith["information_ratio"])
    else:
        mean, std, ir = float(r[0]), NAN, NAN
        ann_arith = mean * periods_per_year
        ann_geo = annualized_return(float(r[0]), 1, periods_per_year)
    if n >= 2 and np.ptp(r) == 0:  # constant: Qlib's std is ~1e-19 and its ratio absurd
        std, ir = 0.0, NAN
    if not (std > 0):
        ir = NAN
    wealth = np.cumprod(1.0 + r)
    if wealth[-1] <= 0:
        ann_geo = -1.0
    cumsum = np.cumsum(r)
    peak_sum = np.maximum.accumulate(np.concatenate([[0.0], cumsum]))[1:]
    return {
        "n_bars": float(n),
        "mean": mean,
        "std": std,
        "total_return": float(wealth[-1] - 1.0),
        "annualized_return": ann_arith,
        "annualized_return_geometric": ann_geo,
        "annualized_volatility": std * math.sqrt(periods_per_year),
        "information_ratio": ir,
        "sortino": sortino_ratio(r, periods_per_year),
        "max_drawdown": float(min(0.0, np.min(cumsum - peak_sum))),
        "max_drawdown_geometric": max_drawdown(wealth, 1.0),
        "max_drawdown_duration": float(max_drawdown_duration(wealth, 1.0)),
    }


# ----------------------------------------------------------------------------------------------- trades
TRADE_STAT_KEYS = (
    "n_closed_trades",
    "n_open_trades",
    "n_long_trades",
    "n_short_trades",
    "win_rate",
    "long_win_rate",
    "short_win_rate",
    "gross_profit",
    "gross_loss",
    "profit_factor",
    "expectancy",
    "expectancy_ratio",
    "avg_win",
    "avg_loss",
    "best_trade",
    "worst_trade",
    "avg_trade_return",
    "avg_holding_bars",
    "avg_holding_hours",
    "median_holding_hours",
    "trades_per_day",
)


def profit_factor(pnls: Sequence[float]) -> float:
    """Sum of winning P&L over the absolute sum of losing P&L; NaN without a loss (or a trade)."""
    p = np.asarray(pnls, dtype="float64")
    loss = -float(p[p < 0].sum())
    return float(p[p > 0].sum()) / loss if loss > 0 else NAN


def expectancy(pnls: Sequence[float]) -> float:
    """Average P&L per trade, ``win_rate x avg_win - loss_rate x avg_loss`` (= the mean); NaN without trades."""
    p = np.asarray(pnls, dtype="float64")
    return float(p.mean()) if len(p) else NAN


def trade_stats(trades: pd.DataFrame, *, days: float, hours_per_bar: float) -> dict[str, float]:
    """Statistics of round trips (columns ``side entry_time exit_time entry_price max_amount pnl closed``).

    Only closed trades count, except ``n_open_trades``. ``expectancy`` is the mean P&L per trade (quote
    currency), ``expectancy_ratio`` = expectancy / average loss, ``avg_trade_return`` the mean of
    ``pnl / (entry_price x max_amount)``; holding time = exit - entry; ``trades_per_day`` = closed trades / days
    of the run.
    """
    if len(trades):
        closed = trades[trades["closed"].astype(bool)]
        n_open = int((~trades["closed"].astype(bool)).sum())
    else:
        closed, n_open = trades, 0
    pnl = closed["pnl"].to_numpy(dtype="float64") if len(closed) else np.zeros(0)
    wins, losses = pnl[pnl > 0], pnl[pnl < 0]
    side = closed["side"].to_numpy() if len(closed) else np.zeros(0, dtype=object)
    if len(closed):
        held = (pd.to_datetime(closed["exit_time"]) - pd.to_datetime(closed["entry_time"])).dt.total_seconds() / 3600
        held = held.to_numpy(dtype="float64")
        notional = (closed["entry_price"] * closed["max_amount"]).to_numpy(dtype="float64")
        with np.errstate(divide="ignore", invalid="ignore"):
            trade_ret = np.where(notional > 0, pnl / notional, np.nan)
    else:
        held = trade_ret = np.zeros(0)
    avg_loss = float(-losses.mean()) if len(losses) else NAN
    exp = expectancy(pnl)
    return {
        "n_closed_trades": float(len(pnl)),
        "n_open_trades": float(n_open),
        "n_long_trades": float((side == "long").sum()),
        "n_short_trades": float((side == "short").sum()),
        "win_rate": win_rate(pnl),
        "long_win_rate": win_rate(pnl[side == "long"]),
        "short_win_rate": win_rate(pnl[side == "short"]),
        "gross_profit": float(wins.sum()),
        "gross_loss": float(losses.sum()),
        "profit_factor": profit_factor(pnl),
        "expectancy": exp,
        "expectancy_ratio": exp / avg_loss if avg_loss and avg_loss > 0 else NAN,
        "avg_win": float(wins.mean()) if len(wins) else NAN,
        "avg_loss": -avg_loss if not math.isnan(avg_loss) else NAN,
        "best_trade": float(pnl.max()) if len(pnl) else NAN,
        "worst_trade": float(pnl.min()) if len(pnl) else NAN,
        "avg_trade_return": float(np.nanmean(trade_ret)) if np.isfinite(trade_ret).any() else NAN,
        "avg_holding_bars": float(held.mean() / hours_per_bar) if len(held) else NAN,
        "avg_holding_hours": float(held.mean()) if len(held) else NAN,
        "median_holding_hours": float(np.median(held)) if len(held) else NAN,
        "trades_per_day": float(len(pnl) / days) if days > 0 else NAN,
    }


def finite_or_none(value: Any) -> Any:
    """A JSON-ready value: non-finite floats become None, numpy scalars Python numbers."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(float(value)) else None
    return value


def clean_mapping(values: Mapping[str, Any]) -> dict[str, Any]:
    return {str(k): finite_or_none(v) for k, v in values.items()}
