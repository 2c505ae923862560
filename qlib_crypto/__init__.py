"""qlib-crypto: crypto research and backtesting for Microsoft Qlib.

Import-light on purpose: nothing heavy (pandas, Qlib) is imported until used.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"


def _quiet_under_qrun() -> None:
    """Under Qlib's ``qrun`` (which imports this package when it builds our first class, the data handler):
    Qlib's known console noise off from here on (qlib_crypto/_quiet.py; our own warnings stay)."""
    import os
    import sys

    if sys.argv and os.path.basename(str(sys.argv[0])).split(".")[0] == "qrun":
        from ._quiet import install

        install()


_quiet_under_qrun()


def init(provider_dir: Any, **overrides: Any) -> dict:
    """Initialise Qlib for crypto data: ``provider_dir`` is a provider directory, a parent of one directory
    per frequency, or a dict frequency -> directory; ``overrides`` go to ``qlib.init``.
    See :func:`qlib_crypto.settings.init`."""
    from .settings import init as _init

    return _init(provider_dir, **overrides)
