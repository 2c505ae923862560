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


def _bar_starts(index: pd.Index) -> np.ndarray | None:
    """Row offsets at which each bar's rows start (plus the end), when ``index`` is a ``(datetime, ...)``
    MultiIndex whose rows of one bar are contiguous (the handlers' sorted frames); else None."""
    if not isinstance(index, pd.MultiIndex) or index.names[0] != "datetime" or len(index) == 0:
        return None
    codes = np.asarray(index.codes[0])
    if (codes < 0).any():
        return None
    change = np.flatnonzero(codes[1:] != codes[:-1]) + 1
    starts = np.concatenate(([0], change, [len(codes)])).astype(np.int64)
    if len(np.unique(codes[starts[:-1]])) != len(starts) - 1:  # a bar's rows are split: use pandas' groupby
        return None
    return starts


def cross_sectional_transform(frame: pd.DataFrame, operation: str) -> pd.DataFrame:
    """Transform every column across the instruments of each ``datetime``.

    ``demean``: value minus the bar's mean; ``rank``: percentile rank (0..1] minus 0.5; ``share``: value
    divided by the bar's sum; ``zscore``: (value - mean) / std (ddof 1). NaN stays NaN and is ignored.
    """
    if operation == "rank":
        starts = _bar_starts(frame.index)
        if starts is not None and len(frame.columns) and all(dt == np.float32 for dt in frame.dtypes):
            from .engine import _kernels

            values = np.ascontiguousarray(frame.to_numpy(dtype=np.float32).T)
            pct = _kernels().cs_rank_pct(values, starts)
            pct -= 0.5
            return pd.DataFrame(pct.T, index=frame.index, columns=frame.columns, copy=False)
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


# ---------------------------------------------------------------------------------------------------------
# Copy-free processing of the handler's frames (used by the crypto handlers' ``process_data``)
# ---------------------------------------------------------------------------------------------------------
# Processors that touch every column of their group are applied to a float32 block in place, with the
# arithmetic of their pandas versions (values identical); processors that touch a few columns are called
# as they are on a sub-frame of those columns. Anything else makes the handler fall back to Qlib's
# ``DataHandlerLP.process_data``.
_CHUNK = 16  # columns per step of the column-wise in-place operations (bounds the temporaries)


class Block:
    """A frame's values as one ``(n_columns, n_rows)`` float32 array (each column contiguous) plus its labels."""

    def __init__(self, values: np.ndarray, index: pd.Index, columns: pd.Index) -> None:
        self.values = values
        self.index = index
        self.columns = columns

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.values.T, index=self.index, columns=self.columns, copy=False)

    def positions(self, group: str | None) -> np.ndarray:
        """Column positions of a group, as Qlib's ``get_group_columns`` selects them."""
        n = len(self.columns)
        if group is None:
            return np.arange(n)
        return np.arange(n)[self.columns.get_loc(group)]

    def sub_frame(self, positions: np.ndarray) -> pd.DataFrame:
        return pd.DataFrame(self.values[positions].T, index=self.index, columns=self.columns[positions])

    def chunks(self, positions: np.ndarray):
        for k in range(0, len(positions), _CHUNK):
            yield positions[k : k + _CHUNK]


def _qlib_processor_types() -> dict[str, type]:
    from qlib.data.dataset import processor as qp

    return {
        "RobustZScoreNorm": qp.RobustZScoreNorm,
        "Fillna": qp.Fillna,
        "DropnaLabel": qp.DropnaLabel,
        "CSRankNorm": qp.CSRankNorm,
    }


def block_kind(proc: Processor) -> str | None:
    """How the copy-free path applies ``proc``: ``wide`` (in place on the block), ``narrow`` (the processor
    itself on a sub-frame of its columns), ``dropna`` (row selection), or None (not supported)."""
    qt = _qlib_processor_types()
    t = type(proc)
    if t in (InfToNaN, qt["RobustZScoreNorm"], qt["Fillna"]):
        return "wide"
    if t in (CrossSectionalFeatures, CSZScoreLabel, qt["CSRankNorm"]):
        return "narrow"
    if t is qt["DropnaLabel"]:
        return "dropna"
    return None


def _narrow_positions(proc: Processor, block: Block) -> np.ndarray:
    pos = block.positions(proc.fields_group)
    if isinstance(proc, CrossSectionalFeatures):
        names = _names(block.columns[pos])
        keep = [any(re.match(rf"^{re.escape(p)}\d+$", str(n)) for p in proc.operations) for n in names]
        pos = pos[np.asarray(keep, dtype=bool)] if len(pos) else pos
    return pos


def apply_narrow(proc: Processor, block: Block, with_fit: bool) -> None:
    """Run ``proc`` on the sub-frame of the columns it changes and write them back (float32)."""
    pos = _narrow_positions(proc, block)
    if len(pos) == 0:
        return
    sub = block.sub_frame(pos)
    if with_fit:
        proc.fit(sub)
    out = proc(sub)
    block.values[pos] = out.to_numpy(dtype=np.float32).T


def apply_wide(proc: Processor, block: Block, with_fit: bool, fit_rows: slice | np.ndarray | None) -> None:
    """``InfToNaN``, ``Fillna`` and ``RobustZScoreNorm`` in place, in one pass per column (numba kernels with the
    arithmetic of numpy's in-place operations, so the bits are the same as the pandas/Qlib versions)."""
    from .engine import _kernels

    qt = _qlib_processor_types()
    v = block.values
    if isinstance(proc, InfToNaN):
        _kernels().block_inf_to_nan(v, np.ascontiguousarray(block.positions(proc.fields_group), dtype=np.int64))
        return
    if type(proc) is qt["Fillna"]:
        # numpy's ``part[isnan(part)] = value`` stores value cast to the block's dtype: the kernel stores the same
        with np.errstate(over="ignore"):
            fill = float(v.dtype.type(proc.fill_value))
        _kernels().block_fillna(v, np.ascontiguousarray(block.positions(proc.fields_group), dtype=np.int64), fill)
        return
    if type(proc) is qt["RobustZScoreNorm"]:
        pos = block.positions(proc.fields_group)
        if with_fit:
            _fit_robust_zscore(proc, block, pos, fit_rows)
        mean, std = np.asarray(proc.mean_train), np.asarray(proc.std_train)
        if mean.dtype == std.dtype == v.dtype:  # the same arithmetic as numpy's in-place ops, in one pass
            _kernels().block_zscore(
                v,
                np.ascontiguousarray(pos, dtype=np.int64),
                np.ascontiguousarray(mean),
                np.ascontiguousarray(std),
                bool(proc.clip_outlier),
            )
            return
        for k in range(0, len(pos), _CHUNK):  # statistics of another dtype (e.g. fitted by Qlib on float64)
            c = pos[k : k + _CHUNK]
            part = v[c]
            part -= mean[k : k + _CHUNK][:, None]
            part /= std[k : k + _CHUNK][:, None]
            if proc.clip_outlier:
                np.clip(part, -3, 3, out=part)
            v[c] = part
        return
    raise TypeError(f"{type(proc).__name__} has no in-place version")  # pragma: no cover


def _fit_robust_zscore(proc: Processor, block: Block, pos: np.ndarray, fit_rows) -> None:
    """Qlib's ``RobustZScoreNorm.fit`` (median and 1.4826 x MAD per column over the fit window, float32).

    A median is an order statistic (or the float32 mean of the two middle ones), so any exact selection
    gives numpy's ``nanmedian`` bits: a radix selection (numba, :func:`kernels.robust_stats`) on contiguous
    columns and rows, else ``np.nanmedian`` on column chunks of the same shape as Qlib's."""
    from qlib.constant import EPS

    rows = slice(None) if fit_rows is None else fit_rows
    means, stds = [], []
    n = block.values.shape[1]
    if (
        isinstance(rows, slice)
        and rows.step in (None, 1)
        and len(pos)
        and np.array_equal(pos, np.arange(pos[0], pos[0] + len(pos)))
    ):
        # the same order statistics by a radix selection (numba), on the contiguous columns and rows
        from .engine import _kernels
        from .threads import n_threads, run_all, split

        r0, r1, _ = rows.indices(n)
        cols = block.values[pos[0] : pos[0] + len(pos)]
        parts = run_all(  # column ranges on the engine's threads (the kernel releases the GIL)
            lambda ab: _kernels().robust_stats(cols[ab[0] : ab[1]], r0, max(r0, r1)),
            list(split(len(pos), n_threads())),
        )
        means, stds = [m for m, _ in parts], [d for _, d in parts]
        pos_chunks = []
    else:
        pos_chunks = list(block.chunks(pos))
    for c in pos_chunks:
        x = block.values[c][:, rows].T  # (n_fit, chunk), as Qlib's X[:, chunk]
        m = np.nanmedian(x, axis=0)
        means.append(m)
        stds.append(np.nanmedian(np.abs(x - m), axis=0))
    proc.cols = block.columns[pos]
    proc.mean_train = np.concatenate(means) if means else np.empty(0, dtype=np.float32)
    proc.std_train = np.concatenate(stds) if stds else np.empty(0, dtype=np.float32)
    proc.std_train += EPS
    proc.std_train *= 1.4826


def fit_rows(proc: Processor, index: pd.MultiIndex):
    """Rows of ``proc``'s fit window, selected exactly as Qlib's ``fetch_df_by_index(df, slice(fit_start_time,
    fit_end_time), level="datetime")`` selects them (``MultiIndex.get_locs`` with the same label slice, whose
    bounds pandas reads differently for strings and timestamps)."""
    window = slice(proc.fit_start_time, proc.fit_end_time)
    if window == slice(None, None):
        return slice(None)
    key = (window, slice(None)) if list(index.names).index("datetime") == 0 else (slice(None), window)
    locs = np.asarray(index.get_locs(key))
    if len(locs) and locs[-1] - locs[0] + 1 == len(locs):
        return slice(int(locs[0]), int(locs[-1]) + 1)
    return locs
