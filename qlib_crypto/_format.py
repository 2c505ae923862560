"""How reports show numbers to a person: returns in %, money in the quote currency with separators, durations
in bars and days, ratios with two decimals. JSON keeps the raw values (fractions, quote units, bars); these
functions are only for HTML and printed tables.

Units (the ``units`` map of a report names one per value):

| unit | example value | shown as |
| --- | --- | --- |
| ``fraction`` | -0.23745 | ``-23.75%`` |
| ``ratio`` | 9.8034 | ``9.80`` |
| ``quote`` | 410068123.4 | ``410,068,123.40 USDT`` |
| ``bars`` | 2180 | ``2,180 bars (90.8 days)`` |
| ``times`` | 366.04 | ``366.0x`` |
| ``bps`` | 4.21 | ``4.21 bps`` |
| ``count`` | 1234 | ``1,234`` |
| ``hours`` | 30.5 | ``30.5 h (1.27 days)`` |
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Sequence

import numpy as np

NA = "n/a"


def _num(value: Any) -> float | None:
    if value is None or isinstance(value, (str, bytes)):
        return None
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def pct(value: Any, digits: int = 2, *, sign: bool = False) -> str:
    """A fraction as a percentage: ``-0.23745`` -> ``-23.75%``."""
    x = _num(value)
    if x is None:
        return NA
    y = x * 100
    if round(y, digits) == 0:
        y = 0.0  # no "-0.00%"
    return f"{y:{'+' if sign else ''},.{digits}f}%"


def money(value: Any, currency: str = "", digits: int = 2, *, sign: bool = False) -> str:
    """An amount of quote currency with thousands separators: ``410068123.4`` -> ``410,068,123.40 USDT``."""
    x = _num(value)
    if x is None:
        return NA
    if round(x, digits) == 0:
        x = 0.0  # no "-0.00"
    text = f"{x:{'+' if sign else ''},.{digits}f}"
    return f"{text} {currency}".rstrip()


def ratio(value: Any, digits: int = 2) -> str:
    x = _num(value)
    return NA if x is None else f"{x:,.{digits}f}"


def count(value: Any) -> str:
    x = _num(value)
    return NA if x is None else f"{int(round(x)):,d}"


def bars(value: Any, hours_per_bar: float) -> str:
    """A number of bars with its length in days: ``2180`` at 1 h -> ``2,180 bars (90.8 days)``."""
    x = _num(value)
    if x is None:
        return NA
    n = int(round(x))
    days = n * hours_per_bar / 24.0
    return f"{n:,d} bar{'s' if n != 1 else ''} ({days:,.1f} days)"


def hours(value: Any) -> str:
    x = _num(value)
    return NA if x is None else f"{x:,.1f} h ({x / 24:,.2f} days)"


def times(value: Any) -> str:
    x = _num(value)
    return NA if x is None else f"{x:,.1f}x"


def bps(value: Any) -> str:
    x = _num(value)
    return NA if x is None else f"{x:,.2f} bps"


def timestamp(value: Any) -> str:
    """``2024-04-01 00:00`` (UTC); ``n/a`` for a missing time."""
    import pandas as pd

    if value is None or (isinstance(value, float) and math.isnan(value)):
        return NA
    try:
        ts = pd.Timestamp(value)
    except (TypeError, ValueError):
        return str(value)
    if ts is pd.NaT or pd.isna(ts):
        return NA
    return ts.strftime("%Y-%m-%d %H:%M")


def plain(value: Any) -> str:
    """A number without scientific notation: integers with separators, others with up to 6 significant digits
    (``3952180.5`` -> ``3,952,180.5``, ``1.5e-07`` -> ``0.00000015``)."""
    x = _num(value)
    if x is None:
        return NA if value is None or isinstance(value, (float, np.floating)) else str(value)
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if float(x).is_integer() and abs(x) < 1e15:
        return f"{int(x):,d}"
    if abs(x) >= 1e5:
        return f"{x:,.2f}"
    digits = max(0, 5 - int(np.floor(np.log10(abs(x)))))
    return f"{x:,.{digits}f}".rstrip("0").rstrip(".")


def value(value: Any, unit: str, *, currency: str = "", hours_per_bar: float = 1.0) -> str:
    """Format ``value`` by its unit (see the module docstring); unknown units print the value plainly."""
    if unit == "fraction":
        return pct(value)
    if unit == "ratio":
        return ratio(value)
    if unit == "quote":
        return money(value, currency)
    if unit == "bars":
        return bars(value, hours_per_bar)
    if unit == "times":
        return times(value)
    if unit == "bps":
        return bps(value)
    if unit == "count":
        return count(value)
    if unit == "hours":
        return hours(value)
    if unit == "time":
        return timestamp(value)
    if isinstance(value, (float, np.floating, int, np.integer)) and not isinstance(value, (bool, np.bool_)):
        return plain(value)
    return NA if value is None else str(value)


def text_table(rows: Iterable[Sequence[Any]], headers: Sequence[str]) -> str:
    """A plain-text table with the first column left-aligned and the others right-aligned."""
    body = [[str(c) for c in r] for r in rows]
    table = [list(map(str, headers))] + body
    widths = [max(len(r[i]) for r in table) for i in range(len(headers))]

    def line(r: list[str]) -> str:
        return "  ".join(c.ljust(widths[i]) if i == 0 else c.rjust(widths[i]) for i, c in enumerate(r)).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(table[0]), rule] + [line(r) for r in body])
