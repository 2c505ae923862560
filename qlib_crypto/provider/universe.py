"""Instrument universes: market-type lists and point-in-time liquidity universes (``top<N>``).

A liquidity universe is recomputed every day at 00:00 UTC (the *decision time* ``t``). At ``t`` every
instrument is scored by its quote volume (``amount``) summed over the trailing window ``[t - window_days, t)``,
using only bars that opened before ``t``. The ``N`` best-scored instruments with a positive score (ties broken
by instrument name) are members from ``t`` until the bar before the next decision time. Consecutive memberships
are merged into one span ``SYMBOL<TAB>start<TAB>end``; an instrument that drops out and comes back gets several
lines. Bars before the first decision time (the first UTC midnight after the first bar) are in no liquidity
universe: there is no history to rank on.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from .calendar import DAY_MS, format_times

DEFAULT_TOP = (10, 20)
DEFAULT_WINDOW_DAYS = 30


def market_of(instrument: str) -> str | None:
    """``okx_swap`` for perpetual swaps (``-SWAP``), ``okx_spot`` for ``BASE-QUOTE`` pairs, else None."""
    name = instrument.upper()
    if name.endswith("-SWAP"):
        return "okx_swap"
    if len(name.split("-")) == 2:
        return "okx_spot"
    return None


def instrument_lines(rows: Sequence[tuple[str, int, int]], freq: str) -> str:
    """Text of an instruments file from (symbol, start ms, end ms) rows, sorted by symbol then start."""
    rows = sorted(rows, key=lambda r: (r[0].upper(), r[1]))
    if not rows:
        return ""
    starts = format_times(np.array([r[1] for r in rows], dtype=np.int64), freq)
    ends = format_times(np.array([r[2] for r in rows], dtype=np.int64), freq)
    return "".join(f"{r[0].upper()}\t{s}\t{e}\n" for r, s, e in zip(rows, starts, ends))


def daily_amount_row(start: int, values: np.ndarray, first_key: int, last_key: int, bar_ms: int) -> np.ndarray:
    """Quote volume summed per UTC day (from the calendar's first day to its last) of one instrument whose
    float32 ``amount`` values start at calendar index ``start``; NaN counts as 0."""
    d0 = first_key * bar_ms // DAY_MS
    d1 = last_key * bar_ms // DAY_MS
    n = min(len(values), last_key - first_key + 1 - start)
    if n <= 0:
        return np.zeros(d1 - d0 + 1, dtype=np.float64)
    keys = first_key + start + np.arange(n, dtype=np.int64)
    day = keys * bar_ms // DAY_MS - d0
    w = np.nan_to_num(np.asarray(values[:n], dtype=np.float64), nan=0.0)
    return np.bincount(day, weights=w, minlength=d1 - d0 + 1)


def daily_amounts(
    amounts: Sequence[tuple[int, np.ndarray]], first_key: int, last_key: int, bar_ms: int
) -> tuple[np.ndarray, int]:
    """(matrix [instrument, UTC day] of summed quote volume, first day number) from per-instrument
    ``(start calendar index, float32 amount values)``; NaN counts as 0."""
    d0 = first_key * bar_ms // DAY_MS
    d1 = last_key * bar_ms // DAY_MS
    out = np.zeros((len(amounts), d1 - d0 + 1), dtype=np.float64)
    for i, (start, values) in enumerate(amounts):
        out[i] = daily_amount_row(start, values, first_key, last_key, bar_ms)
    return out, d0


def liquidity_spans(
    names: Sequence[str],
    daily: np.ndarray,
    d0: int,
    last_key: int,
    bar_ms: int,
    top: int,
    window_days: int = DEFAULT_WINDOW_DAYS,
) -> list[tuple[str, int, int]]:
    """(symbol, start ms, end ms) spans of the point-in-time top-``top`` universe (see module doc)."""
    n_inst, n_days = daily.shape
    last_ms = last_key * bar_ms
    name_rank = np.argsort(np.argsort(np.array([n.upper() for n in names])))
    member = np.zeros((n_inst, n_days), dtype=bool)  # member[i, d]: qualified at the decision of day d
    for d in range(1, n_days):
        score = daily[:, max(0, d - window_days) : d].sum(axis=1)
        order = np.lexsort((name_rank, -score))[:top]
        member[order[score[order] > 0], d] = True
    spans = []
    for i, name in enumerate(names):
        row = member[i]
        if not row.any():
            continue
        edges = np.diff(np.r_[0, row.astype(np.int8), 0])
        for s, e in zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)):
            start = (d0 + int(s)) * DAY_MS
            end = min((d0 + int(e)) * DAY_MS - bar_ms, last_ms)
            spans.append((name, start, end))
    return spans
