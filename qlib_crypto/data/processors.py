"""Qlib processors for crypto handlers: cross-sectional (market-relative) features and a fast label z-score.

Qlib 0.9.7 has no cross-sectional expression operators (``CSRank`` and friends are not in ``qlib.data.ops``),
so market-relative features are computed after loading, over the dataframe, per bar (``datetime``): they
only combine instruments of the same bar and never look at other bars.
"""
from __future__ import annotations

import re
from typing import Mapping

import numpy as np
import pandas as pd
from qlib.data.dataset.processor import Processor, get_group_columns

from ..errors import ConfigError
from .features import MARKET_OPERATIONS

_OPERATIONS = ("demean", "rank", "share", "zscore")


def _names(cols: pd.Index) -> pd.Index:
    return cols.get_level_values(-1) if isinstance(cols, pd.MultiIndex) else cols


def cross_sectional_transform(frame: pd.DataFrame, operation: str) -> pd.DataFrame:
    """Transform every column across the instruments of each ``datetime``.

    ``demean``: value minus the bar's mean; ``rank``: percentile rank (0..1] minus 0.5; ``share``: value
    divided by the bar's sum; ``zscore``: (value - mean) / std (ddof 1). NaN stays NaN and is ignored.
    """
    grouped = frame.groupby(level="datetime", sort=False)
    if operation == "demean":
        return frame - grouped.transform("mean")
    if operation == "rank":
        return grouped.rank(pct=True) - 0.5
    if operation == "share":
        total = grouped.transform("sum")
        return frame / total.where(total != 0)
    if operation == "zscore":
        return (frame - grouped.transform("mean")) / grouped.transform("std")
    raise ConfigError(f"unknown cross-sectional operation {operation!r}", hint=f"use one of {', '.join(_OPERATIONS)}")


class CrossSectionalFeatures(Processor):
    """Turn per-instrument columns into market-relative ones, by family prefix.

    ``operations`` maps a family prefix (``XRET``) to an operation (see :func:`cross_sectional_transform`);
    a column ``XRET24`` belongs to family ``XRET``. The default is
    :data:`qlib_crypto.data.features.MARKET_OPERATIONS`.
    """

    def __init__(self, fields_group: str | None = "feature", operations: Mapping[str, str] | None = None):
        self.fields_group = fields_group
        self.operations = dict(MARKET_OPERATIONS if operations is None else operations)
        for prefix, op in self.operations.items():
            if op not in _OPERATIONS:
                raise ConfigError(
                    f"unknown cross-sectional operation {op!r} for family {prefix!r}",
                    hint=f"use one of {', '.join(_OPERATIONS)}",
                )

    def __call__(self, df: pd.DataFrame) -> pd.DataFrame:
        cols = get_group_columns(df, self.fields_group)
        names = _names(cols)
        for prefix, op in self.operations.items():
            pattern = re.compile(rf"^{re.escape(prefix)}\d+$")
            selected = cols[[bool(pattern.match(str(n))) for n in names]]
            if len(selected) == 0:
                continue
            with pd.option_context("mode.chained_assignment", None):
                df[selected] = cross_sectional_transform(df[selected], op).astype(df[selected].dtypes.iloc[0])
        return df


class CSZScoreLabel(Processor):
    """Cross-sectional z-score of a column group (default the label), vectorised.

    Same result as Qlib's ``CSZScoreNorm`` (mean and ddof-1 std per ``datetime``) without a Python-level
    loop over bars, which matters with 8,760 hourly bars a year.
    """

    def __init__(self, fields_group: str | None = "label"):
        self.fields_group = fields_group

    def __call__(self, df: pd.DataFrame) -> pd.DataFrame:
        cols = get_group_columns(df, self.fields_group)
        out = cross_sectional_transform(df[cols], "zscore")
        with pd.option_context("mode.chained_assignment", None):  # df may be a filtered view (DropnaLabel)
            df[cols] = out.replace([np.inf, -np.inf], np.nan)
        return df

    def is_for_infer(self) -> bool:  # labels do not exist at inference
        return False


class InfToNaN(Processor):
    """Replace +/-inf by NaN in a column group (vectorised; a later ``Fillna`` fills them).

    Qlib's ``ProcessInf`` replaces inf by a per-bar column mean in a Python loop over bars, which is slow
    at hourly frequency; a division by a zero volume is better treated as missing.
    """

    def __init__(self, fields_group: str | None = "feature"):
        self.fields_group = fields_group

    def __call__(self, df: pd.DataFrame) -> pd.DataFrame:
        cols = get_group_columns(df, self.fields_group)
        values = df[cols].to_numpy(copy=True)
        values[np.isinf(values)] = np.nan
        with pd.option_context("mode.chained_assignment", None):
            df[cols] = values
        return df
