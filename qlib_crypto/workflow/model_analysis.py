"""Model analysis for the training report, as Qlib's ``qlib.contrib.report.analysis_model`` shows it: IC by month,
IC distribution, quantile (group) returns, score autocorrelation; computed once here, vectorised, for any bar
frequency (24/7 hourly bars included).

Qlib's ``model_performance_graph`` computes the same numbers inside and returns only plotly figures; a report
whose JSON holds every number it draws cannot use those figures without computing everything twice (and its
Q-Q plot needs statsmodels). So this module computes the numbers, and :func:`figures` draws them as Qlib's
own graph classes (``qlib.contrib.report.graph``: ``ScatterGraph``, ``BarGraph``, ``HeatmapGraph``) do, with
their layouts (:func:`qlib_crypto._html.graph_figure`: the same figures, without that module's 3 s import).
``tests/test_model_analysis.py`` checks that the numbers equal the data inside ``model_performance_graph``'s
figures on hourly bars.

Definitions (``s`` = score, ``y`` = label, per bar ``t`` across instruments):

- IC / rank IC: Pearson / Spearman correlation of ``s`` and ``y`` per bar (Qlib's ``calc_ic``);
- monthly IC: mean of the bar ICs of each calendar month (UTC);
- groups: per bar, instruments sorted by score (descending), ``k = n // N`` per group, group ``i`` = rows
  ``[k i, k (i + 1))`` (the ``n - k N`` lowest scores are in no group, as in Qlib); a group's return is the
  mean label of its rows; ``long-short = Group1 - GroupN``; ``long-average = Group1 - mean label of the bar``;
  cumulative returns are sums (Qlib's convention);
- score autocorrelation (lag ``L``): per bar, Pearson correlation of the percentile ranks of each instrument's
  score and of its score ``L`` rows earlier (Spearman-like; Qlib's ``_pred_autocorr``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np
import pandas as pd

from .metrics import finite_or_none, monthly_returns_table, return_stats

N_GROUPS = 5
GROUP_STAT_KEYS = ("mean", "std", "annualized_return", "information_ratio", "cumulative_return", "hit_rate", "n_bars")


def pred_label_frame(pred: pd.Series, label: pd.Series) -> pd.DataFrame:
    """``score`` and ``label`` on a ``(datetime, instrument)`` index, sorted (labels aligned to predictions)."""
    frame = pd.DataFrame({"score": pred.astype("float64"), "label": label.reindex(pred.index).astype("float64")})
    if list(frame.index.names) != ["datetime", "instrument"]:
        frame = (
            frame.reorder_levels(["datetime", "instrument"])
            if set(frame.index.names) >= {"datetime", "instrument"}
            else frame
        )
    return frame.sort_index()


def monthly_mean(series: pd.Series) -> pd.Series:
    """Mean per calendar month (UTC), indexed ``YYYY-MM``; NaN values skipped."""
    s = series.dropna()
    if s.empty:
        return pd.Series(dtype="float64")
    idx = pd.DatetimeIndex(s.index.get_level_values(0) if isinstance(s.index, pd.MultiIndex) else s.index)
    out = s.groupby(idx.to_period("M")).mean()
    out.index = [str(p) for p in out.index]
    return out.astype("float64")


def distribution(values: pd.Series, bins: int = 20) -> dict[str, Any]:
    """Summary of a series and the data of its histogram and normal Q-Q plot.

    ``histogram``: ``bins`` equal bins from min to max (``edges``, ``counts``). ``qq``: sorted values standardised
    with the fitted normal (mean, std ddof 0: ``scipy.stats.norm.fit``) against ``norm.ppf(i / (n + 1))``,
    ``i = 1..n`` (statsmodels' ``ProbPlot(fit=True)``, which Qlib's Q-Q plot uses). ``skew`` and ``kurtosis``
    (excess) are pandas'; ``t_stat = mean / std x sqrt(n)`` (std ddof 1).
    """
    from scipy import stats

    v = np.asarray(pd.Series(values, dtype="float64").dropna(), dtype="float64")
    n = len(v)
    if n == 0:
        return {
            "n": 0,
            "mean": None,
            "std": None,
            "skew": None,
            "kurtosis": None,
            "t_stat": None,
            "share_positive": None,
            "histogram": {"edges": [], "counts": []},
            "qq": {"theoretical": [], "sample": []},
        }
    std1 = float(np.std(v, ddof=1)) if n > 1 else float("nan")
    counts, edges = np.histogram(v, bins=bins)
    loc, scale = float(np.mean(v)), float(np.std(v, ddof=0))
    theoretical = stats.norm.ppf(np.arange(1, n + 1) / (n + 1))
    sample = (np.sort(v) - loc) / scale if scale > 0 else np.zeros(n)
    s = pd.Series(v)
    return {
        "n": int(n),
        "mean": float(v.mean()),
        "std": std1,
        "skew": float(s.skew()) if n > 2 else float("nan"),
        "kurtosis": float(s.kurt()) if n > 3 else float("nan"),
        "t_stat": float(v.mean() / std1 * math.sqrt(n)) if std1 and std1 > 0 else float("nan"),
        "share_positive": float((v > 0).mean()),
        "histogram": {"edges": [float(e) for e in edges], "counts": [int(c) for c in counts]},
        "qq": {"theoretical": [float(x) for x in theoretical], "sample": [float(x) for x in sample]},
    }


def group_returns(pred_label: pd.DataFrame, n_groups: int = N_GROUPS) -> pd.DataFrame:
    """Per-bar mean label of each score group (see the module docstring), plus ``long-short`` and
    ``long-average``; one row per bar that has a label."""
    df = pred_label.reset_index()
    bar_mean = df.groupby("datetime")["label"].mean()
    scored = df[df["score"].notna()].copy()
    # descending score within each bar; ties keep the input (instrument) order
    scored["neg"] = -scored["score"]
    scored = scored.sort_values(["datetime", "neg"], kind="mergesort")
    pos = scored.groupby("datetime").cumcount().to_numpy()
    size = scored.groupby("datetime")["score"].transform("size").to_numpy()
    k = size // n_groups
    group = np.where(k > 0, pos // np.maximum(k, 1), n_groups)
    scored["group"] = group
    in_group = scored[scored["group"] < n_groups]
    means = in_group.groupby(["datetime", "group"])["label"].mean().unstack("group")
    out = pd.DataFrame(index=pd.DatetimeIndex(sorted(df["datetime"].unique()), name="datetime"))
    for i in range(n_groups):
        out[f"Group{i + 1}"] = means[i].reindex(out.index) if i in means.columns else np.nan
    out["long-short"] = out["Group1"] - out[f"Group{n_groups}"]
    out["long-average"] = out["Group1"] - bar_mean.reindex(out.index)
    return out.dropna(how="all")


def group_summary(groups: pd.DataFrame, bars_per_year: float) -> pd.DataFrame:
    """Per column of :func:`group_returns`: ``mean`` (per bar), ``std``, ``annualized_return`` (``mean x B``),
    ``information_ratio`` (``mean / std x sqrt(B)``; both from Qlib's ``risk_analysis`` through
    :func:`~qlib_crypto.workflow.metrics.return_stats`), ``cumulative_return`` (sum), ``hit_rate`` (share of bars
    > 0), ``n_bars``."""
    rows = {}
    for col in groups.columns:
        s = groups[col].dropna()
        st = return_stats(s, bars_per_year)
        rows[col] = {
            "mean": st["mean"],
            "std": st["std"],
            "annualized_return": st["annualized_return"],
            "information_ratio": st["information_ratio"],
            "cumulative_return": float(s.sum()),
            "hit_rate": float((s > 0).mean()) if len(s) else float("nan"),
            "n_bars": float(len(s)),
        }
    return pd.DataFrame(rows).reindex(list(GROUP_STAT_KEYS))


def _grouped_pearson(keys: np.ndarray, x: np.ndarray, y: np.ndarray, index: pd.Index) -> pd.Series:
    ok = np.isfinite(x) & np.isfinite(y)
    frame = pd.DataFrame({"k": keys[ok], "x": x[ok], "y": y[ok]})
    g = frame.groupby("k")
    frame["dx"] = frame["x"] - g["x"].transform("mean")
    frame["dy"] = frame["y"] - g["y"].transform("mean")
    frame["xy"], frame["xx"], frame["yy"] = frame["dx"] * frame["dy"], frame["dx"] ** 2, frame["dy"] ** 2
    sums = frame.groupby("k")[["xy", "xx", "yy"]].sum()
    n = frame.groupby("k").size()
    with np.errstate(divide="ignore", invalid="ignore"):
        corr = sums["xy"] / np.sqrt(sums["xx"] * sums["yy"])
    corr[(n < 2) | ~(sums["xx"] > 0) | ~(sums["yy"] > 0)] = np.nan
    return corr.reindex(index)


def score_autocorrelation(pred_label: pd.DataFrame, lag: int = 1) -> pd.Series:
    """Per bar, the correlation of score percentile ranks with the same instruments' ranks ``lag`` rows earlier."""
    df = pred_label[["score"]].reset_index()
    df = df.sort_values(["instrument", "datetime"], kind="mergesort")
    df["score_last"] = df.groupby("instrument")["score"].shift(lag)
    ra = df.groupby("datetime")["score"].rank(pct=True).to_numpy(dtype="float64")
    rb = df.groupby("datetime")["score_last"].rank(pct=True).to_numpy(dtype="float64")
    bars = pd.DatetimeIndex(sorted(df["datetime"].unique()), name="datetime")
    out = _grouped_pearson(df["datetime"].to_numpy(), ra, rb, bars)
    out.name = "value"
    return out


@dataclass
class ModelAnalysis:
    """The numbers of the model analysis (see the module docstring); ``to_dict()`` for JSON."""

    ic: pd.Series
    rank_ic: pd.Series
    bars_per_year: float
    n_groups: int = N_GROUPS
    lag: int = 1
    ic_monthly: pd.Series = field(default_factory=pd.Series)
    rank_ic_monthly: pd.Series = field(default_factory=pd.Series)
    ic_monthly_table: pd.DataFrame = field(default_factory=pd.DataFrame)
    ic_distribution: dict = field(default_factory=dict)
    groups: pd.DataFrame = field(default_factory=pd.DataFrame)
    group_cumulative: pd.DataFrame = field(default_factory=pd.DataFrame)
    group_stats: pd.DataFrame = field(default_factory=pd.DataFrame)
    autocorrelation: pd.Series = field(default_factory=pd.Series)

    def to_dict(self) -> dict[str, Any]:
        g = self.groups
        return {
            "n_groups": self.n_groups,
            "lag": self.lag,
            "bars_per_year": self.bars_per_year,
            "ic_monthly": {k: finite_or_none(v) for k, v in self.ic_monthly.items()},
            "rank_ic_monthly": {k: finite_or_none(v) for k, v in self.rank_ic_monthly.items()},
            "ic_monthly_table": {
                str(y): {c: finite_or_none(self.ic_monthly_table.at[y, c]) for c in self.ic_monthly_table.columns}
                for y in self.ic_monthly_table.index
            },
            "ic_distribution": _clean(self.ic_distribution),
            "group_returns": _columns(g),
            "group_cumulative_returns": _columns(self.group_cumulative),
            "group_summary": {
                c: {k: finite_or_none(self.group_stats.at[k, c]) for k in self.group_stats.index}
                for c in self.group_stats.columns
            },
            "score_autocorrelation": {
                "datetime": [pd.Timestamp(t).isoformat() for t in self.autocorrelation.index],
                "value": [finite_or_none(v) for v in self.autocorrelation.to_numpy(dtype="float64")],
                "mean": finite_or_none(float(self.autocorrelation.mean())) if len(self.autocorrelation) else None,
            },
        }

    def figures(self) -> list[tuple[str, str, Any]]:
        """``(element id, title, plotly figure)`` of each plot, drawn with Qlib's graph classes."""
        return _figures(self)


def _columns(frame: pd.DataFrame) -> dict[str, list]:
    """A frame on a datetime index as ``{"datetime": [ISO...], column: [values...]}`` (NaN -> null)."""
    return {
        "datetime": [pd.Timestamp(t).isoformat() for t in frame.index],
        **{c: [finite_or_none(v) for v in frame[c].to_numpy(dtype="float64")] for c in frame.columns},
    }


def _clean(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return finite_or_none(value)


def model_analysis(
    pred: pd.Series,
    label: pd.Series,
    *,
    bars_per_year: float,
    ic: pd.Series | None = None,
    rank_ic: pd.Series | None = None,
    n_groups: int = N_GROUPS,
    lag: int = 1,
) -> ModelAnalysis:
    """Compute the model analysis of predictions against labels (both on ``(datetime, instrument)``).
    ``ic``/``rank_ic`` (per bar, from ``calc_ic``) are computed when not given."""
    if ic is None or rank_ic is None:
        from qlib.contrib.eva.alpha import calc_ic

        ic, rank_ic = calc_ic(pred, label.reindex(pred.index))
    pl = pred_label_frame(pred, label)
    groups = group_returns(pl, n_groups)
    icm = monthly_mean(ic)
    return ModelAnalysis(
        ic=ic,
        rank_ic=rank_ic,
        bars_per_year=float(bars_per_year),
        n_groups=n_groups,
        lag=lag,
        ic_monthly=icm,
        rank_ic_monthly=monthly_mean(rank_ic),
        ic_monthly_table=monthly_returns_table(icm),
        ic_distribution=distribution(ic),
        groups=groups,
        group_cumulative=groups.cumsum(),
        group_stats=group_summary(groups, bars_per_year),
        autocorrelation=score_autocorrelation(pl, lag),
    )


# ---------------------------------------------------------------------------------------------- figures
MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def _figures(ma: ModelAnalysis) -> list[tuple[str, str, Any]]:
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    from .._html import graph_figure, style_figure

    out: list[tuple[str, str, Any]] = []
    table = ma.ic_monthly_table
    if len(table):
        z = table.to_numpy(dtype="float64")
        text = [[f"{v:.3f}" if np.isfinite(v) else "" for v in row] for row in z]
        lim = float(np.nanmax(np.abs(z))) if np.isfinite(z).any() else 0.01
        frame = pd.DataFrame(np.where(np.isfinite(z), z, None), index=list(table.index), columns=list(MONTHS))
        fig = graph_figure(
            "Heatmap",
            frame,
            layout={"title": "Monthly IC"},
            graph_kwargs={
                "xtype": "array",
                "ytype": "array",
                "text": text,
                "texttemplate": "%{text}",
                "colorscale": "RdYlGn",
                "zmid": 0,
                "zmin": -lim,
                "zmax": lim,
                "xgap": 2,
                "ygap": 2,
                "hovertemplate": "%{y} %{x}: IC %{z:.4f}<extra></extra>",
            },
        )
        style_figure(fig, title="Monthly IC (mean of the bar ICs of each month)", height=max(220, 90 + 60 * len(table)))
        fig.update_layout(hovermode="closest")
        fig.update_yaxes(type="category", autorange="reversed", showgrid=False, zeroline=False)
        fig.update_xaxes(showgrid=False, zeroline=False)
        out.append(("fig-ic-monthly", "IC by month", fig))

    d = ma.ic_distribution
    if d.get("n"):
        edges = np.asarray(d["histogram"]["edges"])
        centers = (edges[:-1] + edges[1:]) / 2
        fig = make_subplots(rows=1, cols=2, subplot_titles=("IC histogram", "IC normal Q-Q"))
        hist = graph_figure(
            "Bar",
            pd.DataFrame({"bars": d["histogram"]["counts"]}, index=centers),
            graph_kwargs={"marker": {"color": "#1f77b4"}, "hovertemplate": "IC %{x:.3f}: %{y} bars"},
        ).data
        for trace in hist:
            fig.add_trace(trace, row=1, col=1)
        qq = pd.DataFrame({"sample": d["qq"]["sample"]}, index=d["qq"]["theoretical"])
        for trace in graph_figure(
            "Scatter", qq, graph_kwargs={"mode": "markers", "marker": {"color": "#19d3f3", "size": 4}}
        ).data:
            fig.add_trace(trace, row=1, col=2)
        lo, hi = float(min(qq.index.min(), qq["sample"].min())), float(max(qq.index.max(), qq["sample"].max()))
        fig.add_trace(
            go.Scatter(x=[lo, hi], y=[lo, hi], mode="lines", name="45 degrees", line={"color": "#636efa"}), row=1, col=2
        )
        style_figure(fig, height=360)
        fig.update_layout(showlegend=False, hovermode="closest", bargap=0.05)
        fig.update_xaxes(title_text="IC", row=1, col=1)
        fig.update_yaxes(title_text="bars", row=1, col=1)
        fig.update_xaxes(title_text="normal quantile", row=1, col=2)
        fig.update_yaxes(title_text="observed quantile (standardised)", row=1, col=2)
        out.append(("fig-ic-dist", "IC distribution", fig))

    if len(ma.groups):
        fig = graph_figure(
            "Scatter",
            ma.group_cumulative,
            layout={"title": "Cumulative Return"},
            graph_kwargs={"mode": "lines", "hovertemplate": "%{y:.2%}"},
        )
        style_figure(
            fig,
            title=f"Cumulative return by score group ({ma.n_groups} groups; sum of per-bar mean labels)",
            height=420,
        )
        fig.update_yaxes(tickformat=".1%")
        out.append(("fig-groups", "Quantile (group) returns", fig))

    if len(ma.autocorrelation):
        ac = ma.autocorrelation.to_frame("value")
        fig = graph_figure(
            "Scatter",
            ac,
            layout={"title": "Auto Correlation"},
            graph_kwargs={"mode": "lines", "line": {"width": 1}, "hovertemplate": "%{y:.3f}"},
        )
        style_figure(fig, title=f"Score autocorrelation (rank correlation with {ma.lag} bar(s) before)", height=320)
        fig.update_layout(showlegend=False)
        out.append(("fig-autocorr", "Score autocorrelation", fig))
    return out
