"""The interface every bar source implements, so the store and everything after it never know the source."""

from __future__ import annotations

import abc
from typing import Iterator

import pandas as pd

from ..errors import ConfigError

BAR_COLUMNS = ["open", "high", "low", "close", "volume", "amount"]


def parse_time_ms(value: object, *, what: str = "time") -> int:
    """Parse a date/time (``2024-01-01``, ``2024-01-01T05:00``, a Timestamp, epoch ms int) to epoch ms UTC.

    Naive times are UTC.
    """
    if isinstance(value, (int,)) and not isinstance(value, bool):
        return int(value)
    if isinstance(value, str):  # users' times: ISO 8601 only (01/04/2024 is ambiguous)
        from ..timeparse import parse_iso

        return int(parse_iso(value, what).value // 1_000_000)
    try:
        ts = pd.Timestamp(value)
    except (ValueError, TypeError) as exc:
        raise ConfigError(
            f"cannot parse {what} {value!r}", hint="use ISO format such as 2024-01-01 or 2024-01-01T05:00"
        ) from exc
    if ts is pd.NaT:
        raise ConfigError(f"cannot parse {what} {value!r}", hint="use ISO format such as 2024-01-01")
    if ts.tzinfo is None:
        ts = ts.tz_localize("UTC")
    return int(ts.tz_convert("UTC").value // 1_000_000)


class BarSource(abc.ABC):
    """A source of confirmed OHLCV bars for (instrument, timeframe, [start_ms, end_ms)).

    ``fetch_bars`` yields DataFrames in chunks (any size, ascending), each with a ``datetime`` column
    (tz-aware UTC, bar open time) and float columns ``open high low close volume amount``. Only bars that
    are final (closed) are yielded. ``name`` goes into every manifest's ``source``.
    """

    name: str = "unknown"

    @abc.abstractmethod
    def list_instruments(self) -> list[str]:
        """Instruments this source can produce (OKX instIds)."""

    @abc.abstractmethod
    def fetch_bars(self, instrument: str, timeframe: str, start_ms: int, end_ms: int) -> Iterator[pd.DataFrame]:
        """Yield confirmed bars with open time in ``[start_ms, end_ms)``."""

    def fetch_funding(self, instrument: str, start_ms: int, end_ms: int) -> pd.DataFrame | None:
        """Funding-rate history (columns ``funding_time``, ``funding_rate``) or None when not applicable."""
        return None

    def instrument_meta(self) -> pd.DataFrame | None:
        """Instrument metadata (see docs/internals.md for columns) or None."""
        return None
