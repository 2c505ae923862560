"""qlib-crypto: crypto research and backtesting for Microsoft Qlib.

Import-light on purpose: nothing heavy (pandas, Qlib) is imported until used.
"""
from __future__ import annotations

from typing import Any

__version__ = "0.1.0"


def init(provider_dir: Any, **overrides: Any) -> dict:
    """Initialise Qlib for crypto data: ``provider_dir`` is a provider directory, a parent of one directory
    per frequency, or a dict frequency -> directory; ``overrides`` go to ``qlib.init``.
    See :func:`qlib_crypto.settings.init`."""
    from .settings import init as _init

    return _init(provider_dir, **overrides)
