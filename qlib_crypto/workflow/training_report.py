"""Training report: JSON metrics and one self-contained HTML page (IC, rank IC, cumulative IC, feature
importance, prediction distribution, train/valid loss curves).

The Qlib record templates that write it (and the model) into a recorder are in
:mod:`qlib_crypto.workflow.report_record`.
"""
from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from .._atomic import atomic_dir, atomic_write_text
from ..errors import ConfigError

logger = logging.getLogger(__name__)

JSON_NAME = "training_report.json"
HTML_NAME = "training_report.html"


def _as_series(values: pd.Series | pd.DataFrame, name: str) -> pd.Series:
    if isinstance(values, pd.DataFrame):
        if values.shape[1] < 1:
            raise ConfigError(f"{name} has no column", hint=f"pass {name} as a Series or one-column DataFrame")
        values = values.iloc[:, 0]
    if not isinstance(values, pd.Series):
        raise ConfigError(f"{name} is a {type(values).__name__}", hint="pass a pandas Series on (datetime, instrument)")
    if "datetime" not in (values.index.names or []):
        raise ConfigError(f"{name} index levels are {list(values.index.names)}",
                          hint="index it by (datetime, instrument) as Qlib's pred.pkl/label.pkl are")
    return values.astype("float64")


def ic_series(pred: pd.Series, label: pd.Series) -> tuple[pd.Series, pd.Series]:
    """Per-datetime Pearson IC and Spearman rank IC between predictions and labels (Qlib's ``calc_ic``)."""
    from qlib.contrib.eva.alpha import calc_ic

    pred = _as_series(pred, "pred")
    label = _as_series(label, "label").reindex(pred.index)
    return calc_ic(pred, label)


def _ratio(mean: float, std: float) -> float:
    return float(mean / std) if std and math.isfinite(std) and std > 0 else float("nan")


def feature_importance(model: Any, feature_names: Sequence[str] | None = None,
                       importance_type: str = "gain") -> pd.Series | None:
    """LightGBM importance (``gain`` by default), indexed by feature name, largest first; None if unknown."""
    booster = getattr(model, "model", model)
    if not hasattr(booster, "feature_importance"):
        return None
    values = np.asarray(booster.feature_importance(importance_type=importance_type), dtype="float64")
    names = list(feature_names) if feature_names is not None and len(feature_names) == len(values) \
        else list(booster.feature_name())
    return pd.Series(values, index=names, name=importance_type).sort_values(ascending=False, kind="mergesort")


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def training_metrics(pred: pd.Series, label: pd.Series) -> tuple[dict[str, Any], pd.Series, pd.Series]:
    """IC / ICIR / rank IC / rank ICIR and prediction statistics; also returns the IC and rank IC series."""
    pred = _as_series(pred, "pred")
    ic, ric = ic_series(pred, label)
    desc = pred.describe(percentiles=[0.05, 0.25, 0.5, 0.75, 0.95])
    metrics = {
        "IC": float(ic.mean()),
        "ICIR": _ratio(ic.mean(), ic.std()),
        "Rank IC": float(ric.mean()),
        "Rank ICIR": _ratio(ric.mean(), ric.std()),
        "IC > 0 share": float((ic.dropna() > 0).mean()) if ic.notna().any() else float("nan"),
        "n_datetimes": int(ic.notna().sum()),
        "n_predictions": int(pred.notna().sum()),
        "pred_stats": {k: float(v) for k, v in desc.items() if k != "count"},
    }
    return metrics, ic, ric


def _series_json(s: pd.Series) -> dict[str, Any]:
    return {pd.Timestamp(k).isoformat(): _clean(float(v)) for k, v in s.items()}


def _plots(ic: pd.Series, ric: pd.Series, pred: pd.Series, importance: pd.Series | None,
           evals_result: Mapping | None) -> list[tuple[str, str]]:
    from .._html import figure_to_data_uri, img_html, new_figure

    sections: list[tuple[str, str]] = []
    fig, ax = new_figure()
    ax.plot(ic.index, ic.values, lw=0.6, alpha=0.6, label="IC")
    ax.plot(ric.index, ric.values, lw=0.6, alpha=0.6, label="rank IC")
    window = max(1, min(len(ic) // 10, 168))
    if window > 1:
        ax.plot(ic.index, ic.rolling(window, min_periods=1).mean(), lw=1.5, label=f"IC, {window}-bar mean")
    ax.axhline(0, color="k", lw=0.5)
    ax.legend(loc="upper left", fontsize=8)
    ax.set_title("IC and rank IC per bar")
    sections.append(("IC and rank IC over time", img_html(figure_to_data_uri(fig), "IC over time")))

    fig, ax = new_figure()
    ax.plot(ic.index, ic.fillna(0).cumsum(), label="cumulative IC")
    ax.plot(ric.index, ric.fillna(0).cumsum(), label="cumulative rank IC")
    ax.legend(loc="upper left", fontsize=8)
    sections.append(("Cumulative IC", img_html(figure_to_data_uri(fig), "cumulative IC")))

    if importance is not None and len(importance):
        top = importance.head(30)[::-1]
        fig, ax = new_figure(9.0, max(2.5, 0.22 * len(top) + 1))
        ax.barh(list(top.index), top.values)
        ax.set_xlabel(f"importance ({importance.name})")
        sections.append(("Feature importance (top 30)", img_html(figure_to_data_uri(fig), "feature importance")))

    fig, ax = new_figure()
    ax.hist(pred.dropna().values, bins=50)
    ax.set_xlabel("score")
    sections.append(("Prediction distribution", img_html(figure_to_data_uri(fig), "prediction distribution")))

    if evals_result:
        fig, ax = new_figure()
        for split, curves in evals_result.items():
            for metric, values in dict(curves).items():
                ax.plot(range(len(values)), list(values), label=f"{metric} {split}")
        ax.set_xlabel("boosting round")
        ax.legend(fontsize=8)
        sections.append(("Train / valid loss", img_html(figure_to_data_uri(fig), "loss curves")))
    return sections


def training_report(
    pred: pd.Series | pd.DataFrame,
    label: pd.Series | pd.DataFrame,
    model: Any = None,
    evals_result: Mapping[str, Mapping[str, Sequence[float]]] | None = None,
    out_dir: str | os.PathLike = "reports/training",
    *,
    feature_names: Sequence[str] | None = None,
    title: str = "Training report",
    info: Mapping[str, Any] | None = None,
) -> dict[str, Path]:
    """Write ``training_report.json`` and ``training_report.html`` into ``out_dir``; returns their paths.

    ``evals_result`` is LightGBM's ``{"train": {"l2": [...]}, "valid": {"l2": [...]}}`` (as filled by
    ``LGBModel.fit(evals_result=...)``). ``info`` adds free key/values (experiment, run id...).
    """
    from .._html import page, table_html

    pred_s = _as_series(pred, "pred")
    metrics, ic, ric = training_metrics(pred_s, label)
    importance = feature_importance(model, feature_names) if model is not None else None
    evals = {str(k): {str(m): [float(x) for x in v] for m, v in dict(c).items()}
             for k, c in dict(evals_result or {}).items()}
    report = {
        "title": title,
        "info": dict(info or {}),
        "metrics": {k: (_clean(v) if not isinstance(v, dict) else {a: _clean(b) for a, b in v.items()})
                    for k, v in metrics.items()},
        "ic": _series_json(ic),
        "rank_ic": _series_json(ric),
        "feature_importance": None if importance is None else
        {"type": importance.name, "values": {str(k): float(v) for k, v in importance.items()}},
        "evals_result": evals or None,
    }
    out = Path(out_dir)
    json_path, html_path = out / JSON_NAME, out / HTML_NAME
    summary = [(k, v) for k, v in metrics.items() if k != "pred_stats"] + list((info or {}).items())
    sections = [("Summary", table_html(summary))] + _plots(ic, ric, pred_s, importance, evals)
    # one unit: both files are staged beside out_dir and swapped in together (old pair or new pair, never a mix)
    with atomic_dir(out, replaceable=(JSON_NAME, HTML_NAME), what="training report directory") as stage:
        atomic_write_text(stage / JSON_NAME, json.dumps(report, indent=1, allow_nan=False, default=str), fsync=False)
        atomic_write_text(stage / HTML_NAME, page(title, sections), fsync=False)
    logger.info("training report written to %s", out)
    return {"json": json_path, "html": html_path}
