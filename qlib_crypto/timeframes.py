"""Timeframes: ccxt spelling (``1m 5m 15m 1h 4h 1d``), their length, OKX bar names and Qlib frequency names."""

from __future__ import annotations

import difflib
from dataclasses import dataclass

from .errors import ConfigError


@dataclass(frozen=True)
class Timeframe:
    name: str  # ccxt spelling, e.g. "1h"
    ms: int  # bar length in milliseconds
    okx_bar: str  # OKX `bar` parameter, UTC-aligned
    qlib_freq: str  # Qlib frequency name used in file names and calendars

    @property
    def seconds(self) -> int:
        return self.ms // 1000

    @property
    def bars_per_year(self) -> float:
        """Bars in a 365-day year of a 24/7 market."""
        return 365 * 86_400_000 / self.ms


_M = 60_000
TIMEFRAMES: dict[str, Timeframe] = {
    t.name: t
    for t in [
        Timeframe("1m", _M, "1m", "1min"),
        Timeframe("3m", 3 * _M, "3m", "3min"),
        Timeframe("5m", 5 * _M, "5m", "5min"),
        Timeframe("15m", 15 * _M, "15m", "15min"),
        Timeframe("30m", 30 * _M, "30m", "30min"),
        Timeframe("1h", 60 * _M, "1H", "60min"),
        Timeframe("2h", 120 * _M, "2H", "120min"),
        Timeframe("4h", 240 * _M, "4H", "240min"),
        Timeframe("6h", 360 * _M, "6Hutc", "360min"),
        Timeframe("12h", 720 * _M, "12Hutc", "720min"),
        Timeframe("1d", 1440 * _M, "1Dutc", "day"),
    ]
}
_BY_QLIB = {t.qlib_freq: t for t in TIMEFRAMES.values()}
_ALIASES = {"1440min": "1d", "1day": "1d", "60m": "1h", "240m": "4h", "1H": "1h", "4H": "4h", "1D": "1d"}


def get_timeframe(name: str) -> Timeframe:
    """Look up a timeframe by ccxt spelling (``1h``) or Qlib frequency name (``60min``, ``day``)."""
    key = str(name).strip()
    if key in TIMEFRAMES:
        return TIMEFRAMES[key]
    if key in _BY_QLIB:
        return _BY_QLIB[key]
    if key in _ALIASES:
        return TIMEFRAMES[_ALIASES[key]]
    known = list(TIMEFRAMES) + list(_BY_QLIB)
    close = difflib.get_close_matches(key, known, n=3)
    raise ConfigError(
        f"unknown timeframe {name!r}",
        hint=f"use one of {', '.join(TIMEFRAMES)} (ccxt spelling) or {', '.join(_BY_QLIB)} (Qlib names)"
        + (f"; did you mean {', '.join(close)}?" if close else ""),
    )
