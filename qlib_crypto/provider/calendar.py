"""24/7 calendars in Qlib's text format: ``YYYY-MM-DD HH:MM:SS`` per bar, ``YYYY-MM-DD`` for ``day``."""

from __future__ import annotations

import numpy as np

DAY_MS = 86_400_000


def format_times(times_ms: np.ndarray, freq: str) -> list[str]:
    """Qlib calendar strings of epoch-ms bar open times."""
    t = np.asarray(times_ms, dtype=np.int64).astype("datetime64[ms]")
    if freq == "day":
        return list(np.datetime_as_string(t.astype("datetime64[D]"), unit="D"))
    s = np.datetime_as_string(t.astype("datetime64[s]"), unit="s")
    return list(np.char.replace(s, "T", " "))


def calendar_text(first_key: int, last_key: int, bar_ms: int, freq: str) -> str:
    """Calendar file text for bar keys ``first_key..last_key`` (key = open time // bar_ms), one bar per line."""
    if last_key < first_key:
        return ""
    times = np.arange(first_key, last_key + 1, dtype=np.int64) * bar_ms
    return "\n".join(format_times(times, freq)) + "\n"


def future_bars(bar_ms: int) -> int:
    """Bars past the last one written to ``<freq>_future.txt``: one day's worth (at least one bar)."""
    return max(1, DAY_MS // bar_ms)


def format_one(time_ms: int, freq: str) -> str:
    return format_times(np.array([time_ms], dtype=np.int64), freq)[0]
