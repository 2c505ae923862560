"""Dates and times given by users: ISO 8601 only, UTC unless an offset says otherwise.

``01/04/2024`` means 1 April to some readers and 4 January to pandas; ``2024-13-01`` is no date at all. Every
command-line time goes through :func:`parse_iso`, which accepts exactly::

    2024-04-01                      (midnight UTC)
    2024-04-01 05:00 / 2024-04-01T05:00[:SS[.fff]]
    2024-04-01T05:00Z / 2024-04-01T05:00+00:00 / +0200

and raises :class:`~qlib_crypto.errors.ConfigError` (exit 2) naming the value for anything else.
"""

from __future__ import annotations

import re
from typing import Any

import pandas as pd

from .errors import ConfigError

ISO_RE = re.compile(
    r"^\d{4}-\d{2}-\d{2}"  # date
    r"(?:[T ]\d{2}:\d{2}(?::\d{2}(?:\.\d{1,9})?)?)?"  # optional time, minutes at least
    r"(?:Z|[+-]\d{2}:?\d{2})?$"  # optional offset
)
HINT = "use ISO 8601 (UTC unless an offset is given): 2024-04-01, '2024-04-01 05:00', 2024-04-01T05:00Z or +00:00"


def parse_iso(value: Any, what: str = "time") -> pd.Timestamp:
    """A user's time as a tz-aware UTC Timestamp; ISO 8601 only (see the module doc)."""
    if isinstance(value, pd.Timestamp):
        ts = value
    elif hasattr(value, "isoformat") and not isinstance(value, str):  # datetime / date objects
        ts = pd.Timestamp(value)
    else:
        text = str(value).strip()
        if not ISO_RE.match(text):
            raise ConfigError(f"{what} {value!r} is not an ISO 8601 date/time", hint=HINT)
        try:
            ts = pd.Timestamp(text)
        except (ValueError, TypeError, OverflowError) as exc:
            raise ConfigError(f"{what} {value!r} is not a valid date/time ({exc})", hint=HINT) from None
    if ts is pd.NaT:
        raise ConfigError(f"{what} {value!r} is not a date/time", hint=HINT)
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")


def parse_naive_utc(value: Any, what: str = "time") -> pd.Timestamp | None:
    """A command-line time as Qlib's calendars hold times: a naive UTC Timestamp (``None`` or ``""`` -> None).

    ISO 8601 only, as :func:`parse_iso`; an offset (``Z``, ``+02:00``) is converted to UTC first, so
    ``2024-04-01T07:00+02:00`` -> ``2024-04-01 05:00:00``."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    return parse_iso(value, what).tz_localize(None)
