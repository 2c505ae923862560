"""Qlib settings for 24/7 crypto markets, in one place (importable, and usable from YAML via
:func:`qlib_init_config`).

- ``QLIB_INIT_KWARGS``: keyword arguments for ``qlib.init``. Qlib's regions are ``cn``/``us``/``tw`` only;
  ``us`` is used and overridden: fractional amounts (``trade_unit: None``), no price limits
  (``limit_threshold: None``), deals at the bar's close (``deal_price: close``).
- ``DAYS_PER_YEAR`` and :func:`bars_per_year`: annualisation for bars that run every hour of every day.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

QLIB_INIT_KWARGS: dict[str, Any] = {
    "region": "us",
    "trade_unit": None,
    "limit_threshold": None,
    "deal_price": "close",
}

DAYS_PER_YEAR = 365
_DAY_MINUTES = 1440


def bars_per_year(freq: str) -> float:
    """Bars per 365-day year at a Qlib frequency (``60min`` -> 8760, ``day`` -> 365, ``1min`` -> 525600).

    Also accepts ccxt spellings (``1h``, ``1d``)."""
    from .timeframes import get_timeframe

    tf = get_timeframe(freq)
    return DAYS_PER_YEAR * _DAY_MINUTES * 60_000 / tf.ms


def _freq_of(directory: Path) -> str | None:
    cal = directory / "calendars"
    if not cal.is_dir():
        return None
    freqs = sorted(p.stem for p in cal.glob("*.txt") if not p.stem.endswith("_future"))
    return freqs[0] if len(freqs) == 1 else None


def provider_uri(provider_dirs: str | os.PathLike | Mapping[str, str | os.PathLike]) -> dict[str, str]:
    """``provider_uri`` dict (frequency -> directory) for Qlib.

    Accepts a dict, one provider directory (its frequency is read from ``calendars/``), or a parent directory
    holding one provider directory per frequency (e.g. ``.../okx`` with ``60min/`` and ``day/``)."""
    from .errors import ConfigError

    if isinstance(provider_dirs, Mapping):
        return {str(k): str(Path(v).expanduser().absolute()) for k, v in provider_dirs.items()}
    root = Path(provider_dirs).expanduser().absolute()
    own = _freq_of(root)
    if own is not None:
        return {own: str(root)}
    found = {}
    if root.is_dir():
        for sub in sorted(root.iterdir()):
            f = _freq_of(sub) if sub.is_dir() else None
            if f is not None:
                found[f] = str(sub)
    if not found:
        raise ConfigError(
            f"no Qlib provider directory at {str(root)!r}",
            hint="dump one first (qlib-crypto dump --store DIR --qlib-dir DIR --timeframe 1h) or pass a dict freq -> dir",
        )
    return found


def qlib_init_config(provider_dirs: str | os.PathLike | Mapping[str, str | os.PathLike], **overrides: Any) -> dict:
    """The ``qlib_init`` section for a workflow YAML (or kwargs for ``qlib.init``): ``provider_uri`` as a
    dict frequency -> directory plus :data:`QLIB_INIT_KWARGS`, then ``overrides``."""
    config: dict[str, Any] = {"provider_uri": provider_uri(provider_dirs), **QLIB_INIT_KWARGS}
    config.update(overrides)
    return config


def init(provider_dir: str | os.PathLike | Mapping[str, str | os.PathLike], **overrides: Any) -> dict:
    """Call ``qlib.init`` with the crypto settings for ``provider_dir`` (see :func:`qlib_init_config`);
    returns the keyword arguments used."""
    import qlib

    config = qlib_init_config(provider_dir, **overrides)
    qlib.init(**config)
    return config
