"""Crypto handlers and feature sets for Qlib (``from qlib_crypto.data import CryptoAlpha158``).

Handlers, loaders and processors import Qlib, so they are loaded on first use. The feature-set functions in
:mod:`qlib_crypto.data.features` import Qlib's ``Alpha158DL`` on first call (Alpha158's families are generated
from it); the expression parser :mod:`qlib_crypto.data.expr` needs no Qlib.
"""

from __future__ import annotations

import importlib
from typing import Any

from .features import (
    crypto_label,
    default_feature_config,
    get_feature_config,
    get_label_config,
    get_raw_window_config,
)

_LAZY = {
    "CryptoAlpha158": "handler",
    "CryptoAlpha360": "handler",
    "default_infer_processors": "handler",
    "default_learn_processors": "handler",
    "CrossSectionalFeatures": "processors",
    "CSZScoreLabel": "processors",
    "InfToNaN": "processors",
    "CryptoAlpha158DL": "loader",
    "CryptoAlpha360DL": "loader",
    "FastDataLoader": "loader",
}

__all__ = [
    "CryptoAlpha158",
    "CryptoAlpha360",
    "CryptoAlpha158DL",
    "CryptoAlpha360DL",
    "CrossSectionalFeatures",
    "CSZScoreLabel",
    "FastDataLoader",
    "InfToNaN",
    "crypto_label",
    "default_feature_config",
    "default_infer_processors",
    "default_learn_processors",
    "get_feature_config",
    "get_label_config",
    "get_raw_window_config",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module = importlib.import_module(f".{_LAZY[name]}", __name__)
        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
