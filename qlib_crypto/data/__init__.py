"""Crypto handlers and feature sets for Qlib (``from qlib_crypto.data import CryptoAlpha158``).

Handlers and processors import Qlib, so they are loaded on first use; the feature-set functions in
:mod:`qlib_crypto.data.features` do not need Qlib.
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
}

__all__ = [
    "CryptoAlpha158",
    "CryptoAlpha360",
    "CryptoAlpha158DL",
    "CryptoAlpha360DL",
    "CrossSectionalFeatures",
    "CSZScoreLabel",
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
