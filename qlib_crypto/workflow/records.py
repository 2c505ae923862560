"""Record templates that annualise portfolio metrics for a 24/7 market (365 days, 8,760 hourly bars).

Qlib's ``risk_analysis`` annualises with 238 trading days (952 bars a year at 60min), which understates
crypto figures. The records here log, next to Qlib's own metrics, the same statistics annualised with
:func:`qlib_crypto.settings.bars_per_year` under names such as
``crypto.60min.excess_return_with_cost.annualized_return_365d``.

- :func:`annualized_metrics`: the pure computation (tested by hand).
- :class:`CryptoPortAnaRecord`: Qlib's ``PortAnaRecord`` plus the 24/7 metrics.
- :class:`CryptoRiskRecord`: a companion record that reads the ``report_normal_<freq>.pkl`` artifacts any
  portfolio record wrote (Qlib's or our own backtest's) and logs the 24/7 metrics.
- :class:`SigAnaRecord`: Qlib's ``SigAnaRecord`` (same metrics, artifacts and arguments) with the per-bar IC,
  rank IC and long-short returns computed in one vectorised pass instead of Python calls per bar.
"""

from __future__ import annotations

import logging
import math
import re
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd
from qlib.workflow.record_temp import PortAnaRecord, RecordTemp
from qlib.workflow.record_temp import SigAnaRecord as QlibSigAnaRecord

from ..errors import ConfigError
from .metrics import return_stats

logger = logging.getLogger(__name__)

METRIC_PREFIX = "crypto"
ARTIFACT_PATH = "portfolio_analysis"

# The series of a Qlib portfolio report analysed, as name -> function of the report.
REPORT_SERIES: dict[str, Any] = {
    "benchmark": lambda rep: rep["bench"],
    "return_without_cost": lambda rep: rep["return"],
    "return_with_cost": lambda rep: rep["return"] - rep["cost"],
    "excess_return_without_cost": lambda rep: rep["return"] - rep["bench"],
    "excess_return_with_cost": lambda rep: rep["return"] - rep["bench"] - rep["cost"],
}


def bars_per_year(freq: str) -> float:
    """Bars in a 365-day year for a Qlib frequency (``60min`` -> 8760, ``day``/``1day`` -> 365)."""
    name = str(freq).strip()
    m = re.fullmatch(r"(\d*)(min|minute|day|d)", name)
    if m is None:
        raise ConfigError(
            f"cannot annualise frequency {freq!r}",
            hint="use a minute or day frequency such as 60min, 1min or day",
        )
    count = int(m.group(1) or 1)
    is_day = m.group(2) in ("day", "d")
    qlib_name = "day" if is_day else f"{count}min"
    try:  # the project-wide definition, when available
        from qlib_crypto.settings import bars_per_year as settings_bars_per_year

        base = float(settings_bars_per_year(qlib_name))
    except (ImportError, AttributeError, ConfigError, KeyError, ValueError):
        base = 365.0 if is_day else 365.0 * 24 * 60 / count
    return base / count if is_day else base


def annualized_metrics(returns: Iterable[float] | pd.Series, bars_per_year: float) -> dict[str, float]:
    """Statistics of a per-bar simple return series, annualised over ``bars_per_year`` bars.

    NaN returns are dropped. The numbers come from :func:`qlib_crypto.workflow.metrics.return_stats` (the one
    implementation, built on Qlib's ``risk_analysis``). Returned keys:

    - ``n_bars``, ``mean``, ``std`` (ddof 1);
    - ``annualized_return``: arithmetic, ``mean * N`` (as Qlib's ``risk_analysis``);
    - ``annualized_return_geometric``: ``prod(1 + r) ** (N / n) - 1``;
    - ``annualized_volatility``: ``std * sqrt(N)``;
    - ``information_ratio``: ``mean / std * sqrt(N)`` (NaN when ``std`` is 0);
    - ``max_drawdown``: most negative gap between the cumulative sum and its running maximum (Qlib's);
    - ``max_drawdown_geometric``: most negative ``wealth / running max - 1`` with compounding;
    - ``total_return``: ``prod(1 + r) - 1``.
    """
    if not (isinstance(bars_per_year, (int, float)) and bars_per_year > 0 and math.isfinite(bars_per_year)):
        raise ConfigError(f"bad bars_per_year {bars_per_year!r}", hint="pass a positive number, e.g. 8760 for 60min")
    stats = return_stats(returns, float(bars_per_year))
    return {k: stats[k] for k in _METRIC_KEYS}


_METRIC_KEYS = (
    "n_bars",
    "mean",
    "std",
    "annualized_return",
    "annualized_return_geometric",
    "annualized_volatility",
    "information_ratio",
    "max_drawdown",
    "max_drawdown_geometric",
    "total_return",
)
_ANNUALISED = {"annualized_return", "annualized_return_geometric", "annualized_volatility", "information_ratio"}


def metric_name(freq: str, series: str, key: str) -> str:
    """Recorder metric name, e.g. ``crypto.60min.excess_return_with_cost.annualized_return_365d``."""
    suffix = "_365d" if key in _ANNUALISED else ""
    return f"{METRIC_PREFIX}.{freq}.{series}.{key}{suffix}"


def crypto_risk_analysis(report: pd.DataFrame, freq: str) -> pd.DataFrame:
    """24/7 statistics of each series of a Qlib portfolio report (columns ``return bench cost``).

    Returns a DataFrame with one row per metric and one column per series of :data:`REPORT_SERIES`.
    """
    missing = [c for c in ("return", "bench", "cost") if c not in report.columns]
    if missing:
        raise ConfigError(
            f"portfolio report lacks columns {missing}",
            hint="pass the report_normal_<freq>.pkl DataFrame written by a portfolio record",
        )
    n = bars_per_year(freq)
    table = {name: annualized_metrics(fn(report), n) for name, fn in REPORT_SERIES.items()}
    return pd.DataFrame(table).loc[list(_METRIC_KEYS)]


def flatten_risk_table(table: pd.DataFrame, freq: str) -> dict[str, float]:
    """``{metric_name: value}`` for a table of :func:`crypto_risk_analysis` (finite values only)."""
    out: dict[str, float] = {}
    for series in table.columns:
        for key in table.index:
            value = float(table.at[key, series])
            if math.isfinite(value):
                out[metric_name(freq, series, key)] = value
    out[f"{METRIC_PREFIX}.{freq}.bars_per_year"] = bars_per_year(freq)
    return out


def _freq_of_report(artifact_name: str) -> str | None:
    m = re.fullmatch(r"(?:.*/)?report_normal_(.+)\.pkl", artifact_name)
    return m.group(1) if m else None


def _log_tables(recorder: Any, reports: dict[str, pd.DataFrame]) -> dict[str, Any]:
    artifacts: dict[str, Any] = {}
    for freq, report in reports.items():
        table = crypto_risk_analysis(report, freq)
        recorder.log_metrics(**flatten_risk_table(table, freq))
        artifacts[f"crypto_port_analysis_{freq}.pkl"] = table
        # printed, as Qlib's PortAnaRecord prints its risk tables at the end of a qrun
        print(format_risk_table(table, freq), flush=True)
    return artifacts


#: how each row of a risk table is shown (see :mod:`qlib_crypto._format`)
RISK_ROW_UNITS = {
    "n_bars": "count",
    "mean": "fraction",
    "std": "fraction",
    "annualized_return": "fraction",
    "annualized_return_geometric": "fraction",
    "annualized_volatility": "fraction",
    "information_ratio": "ratio",
    "max_drawdown": "fraction",
    "max_drawdown_geometric": "fraction",
    "total_return": "fraction",
}


def format_risk_table(table: pd.DataFrame, freq: str) -> str:
    """The table of :func:`crypto_risk_analysis` as text: returns and drawdowns in %, ratios with two
    decimals, the annualisation basis in the title."""
    from .. import _format as fmt

    n = bars_per_year(freq)
    title = (
        f"24/7 risk analysis ({freq}; annualised over {n:,.0f} bars = 365 days x "
        f"{n / 365:,.4g} bars a day, risk-free rate 0; arithmetic annualised return = mean x {n:,.0f}, "
        f"as Qlib's risk_analysis)"
    )
    rows = []
    for key in table.index:
        unit = RISK_ROW_UNITS.get(key, "ratio")
        digits = 4 if key in ("mean", "std") else 2
        cells = [fmt.pct(v, digits) if unit == "fraction" else fmt.value(v, unit) for v in table.loc[key]]
        rows.append([key] + cells)
    return title + "\n" + fmt.text_table(rows, ["metric"] + [str(c) for c in table.columns])


class CryptoPortAnaRecord(PortAnaRecord):
    """Qlib's ``PortAnaRecord`` (backtest, reports, Qlib's 238-day metrics) plus 24/7-annualised metrics.

    Takes the same arguments as ``PortAnaRecord``. Adds the metrics ``crypto.<freq>.<series>.<metric>``
    and the artifact ``portfolio_analysis/crypto_port_analysis_<freq>.pkl`` for each report frequency.
    """

    def _generate(self, **kwargs: Any) -> dict[str, Any]:
        artifacts = super()._generate(**kwargs)
        reports = {freq: obj for name, obj in artifacts.items() if (freq := _freq_of_report(name)) is not None}
        artifacts.update(_log_tables(self.recorder, reports))
        return artifacts

    def list(self) -> list[str]:
        return super().list() + [f"crypto_port_analysis_{freq}.pkl" for freq in self.all_freq]


class CryptoRiskRecord(RecordTemp):
    """Companion record: 24/7 metrics from the portfolio reports already in the recorder.

    Use it after any portfolio record that writes ``portfolio_analysis/report_normal_<freq>.pkl`` (Qlib's
    ``PortAnaRecord`` or the crypto backtest's record). ``freq`` limits the frequencies analysed (default:
    every report found).
    """

    artifact_path = ARTIFACT_PATH

    def __init__(self, recorder: Any, freq: str | Sequence[str] | None = None) -> None:
        super().__init__(recorder=recorder)
        self.freq = [freq] if isinstance(freq, str) else (list(freq) if freq is not None else None)

    def _report_freqs(self) -> list[str]:
        if self.freq is not None:
            return list(self.freq)
        names = self.recorder.list_artifacts(ARTIFACT_PATH)
        return sorted({f for n in names if (f := _freq_of_report(n)) is not None})

    def generate(self, **kwargs: Any) -> dict[str, Any]:
        from .._run_guard import guard_recorder

        guard_recorder(self.recorder)  # run name; KILLED on Ctrl-C/SIGTERM
        freqs = self._report_freqs()
        if not freqs:
            raise ConfigError(
                "no portfolio report (portfolio_analysis/report_normal_<freq>.pkl) in the recorder",
                hint="put CryptoRiskRecord after a portfolio record such as PortAnaRecord in the record list",
            )
        reports = {f: self.load(f"report_normal_{f}.pkl", parents=False) for f in freqs}
        artifacts = _log_tables(self.recorder, reports)
        self.save(**artifacts)
        return artifacts

    def list(self) -> list[str]:
        return [f"crypto_port_analysis_{f}.pkl" for f in (self.freq or [])]


# ---------------------------------------------------------------------------------------------------------
# signal analysis
# ---------------------------------------------------------------------------------------------------------
def long_short_returns(pred: pd.Series, label: pd.Series, quantile: float = 0.2) -> tuple[pd.Series, pd.Series]:
    """Qlib's ``calc_long_short_return(pred, label, quantile=quantile)`` (``dropna=False``) in one vectorised
    pass: per datetime with ``n`` rows, ``k = int(n * quantile)``; the long return is the mean label of the ``k``
    highest scores, the short return that of the ``k`` lowest (among equal scores the earlier row, and rows
    without a score after all others, as ``nlargest``/``nsmallest`` with ``keep="first"`` choose them), and
    the result is ``(long - short) / 2`` with the mean label of all rows beside it. Equal to Qlib's within float
    rounding of the means
    (tests/test_records.py); Qlib's version calls pandas twice per bar (10 s for a quarter of hourly bars)."""
    df = pd.DataFrame({"pred": pred, "label": label})
    group = df.groupby(level="datetime", group_keys=False)
    r_avg = group.label.mean()  # Qlib's own expression
    times = df.index.get_level_values("datetime")
    codes, uniques = pd.factorize(times, sort=True)
    p = df["pred"].to_numpy(dtype="float64")
    y = df["label"].to_numpy(dtype="float64")
    sizes = np.bincount(codes, minlength=len(uniques))
    k = (sizes * quantile).astype(np.int64)  # int(len(x) * quantile), per bar
    rows = np.arange(len(df))
    valid = ~np.isnan(p)

    def chosen(descending: bool) -> np.ndarray:
        # stable order by (bar, score): ties keep their row order; NaN scores after the others, in row order
        # (pandas' nlargest/nsmallest fill up with them when a bar has fewer than k scores)
        key = np.where(valid, -p if descending else p, np.inf)
        order = np.lexsort((rows, key, ~valid, codes))
        bar = codes[order]
        starts = np.searchsorted(bar, np.arange(len(uniques)))
        rank = np.arange(len(order)) - starts[bar]
        take = np.zeros(len(df), dtype=bool)
        take[order] = rank < k[bar]
        return take

    index = pd.Index(uniques, name="datetime")

    def mean_label(take: np.ndarray) -> pd.Series:
        sel = take & ~np.isnan(y)
        total = np.bincount(codes[sel], weights=y[sel], minlength=len(uniques))
        count = np.bincount(codes[sel], minlength=len(uniques))
        return pd.Series(np.where(count > 0, total / np.maximum(count, 1), np.nan), index=index)

    r_long, r_short = mean_label(chosen(True)), mean_label(chosen(False))
    return (r_long - r_short) / 2, r_avg


class SigAnaRecord(QlibSigAnaRecord):
    """Qlib's ``SigAnaRecord``: the same arguments (``ana_long_short``, ``ann_scaler``, ``label_col``), metrics
    (``IC``, ``ICIR``, ``Rank IC``, ``Rank ICIR``, ``Long-Short Ann Return``...) and ``sig_analysis/``
    artifacts (``ic.pkl``, ``ric.pkl``, ``long_short_r.pkl``, ``long_avg_r.pkl``), with the per-bar
    statistics computed vectorised (:func:`qlib_crypto.workflow.training_report.ic_series`,
    :func:`long_short_returns`): on hourly bars Qlib's per-bar Python calls take seconds per thousand bars. The
    values equal Qlib's within float rounding (tests/test_records.py). Use it in a workflow as
    ``class: SigAnaRecord`` with ``module_path: qlib_crypto.workflow.records``."""

    def _generate(self, label: pd.DataFrame | None = None, **kwargs: Any) -> dict[str, Any] | None:
        from pprint import pprint

        from .training_report import ic_series

        pred = self.load("pred.pkl")
        if label is None:
            label = self.load("label.pkl")
        if label is None or not isinstance(label, pd.DataFrame) or label.empty:
            logger.warning("Empty label.")
            return None
        score, target = pred.iloc[:, 0], label.iloc[:, self.label_col]
        ic, ric = ic_series(score, target)
        metrics = {
            "IC": ic.mean(),
            "ICIR": ic.mean() / ic.std(),
            "Rank IC": ric.mean(),
            "Rank ICIR": ric.mean() / ric.std(),
        }
        objects: dict[str, Any] = {"ic.pkl": ic, "ric.pkl": ric}
        if self.ana_long_short:
            long_short_r, long_avg_r = long_short_returns(score, target)
            metrics.update(
                {
                    "Long-Short Ann Return": long_short_r.mean() * self.ann_scaler,
                    "Long-Short Ann Sharpe": long_short_r.mean() / long_short_r.std() * self.ann_scaler**0.5,
                    "Long-Avg Ann Return": long_avg_r.mean() * self.ann_scaler,
                    "Long-Avg Ann Sharpe": long_avg_r.mean() / long_avg_r.std() * self.ann_scaler**0.5,
                }
            )
            objects.update({"long_short_r.pkl": long_short_r, "long_avg_r.pkl": long_avg_r})
        self.recorder.log_metrics(**metrics)
        pprint(metrics)  # as Qlib's record prints them
        return objects
