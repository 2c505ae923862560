"""Qlib models of qlib-crypto (``module_path: qlib_crypto.model`` in a ``qrun`` YAML).

- :class:`DaskLGBModel`: Qlib's ``LGBModel`` trained with LightGBM's distributed interface (``lightgbm.dask``)
  on a Dask cluster; needs the ``dask`` extra (``pip install -e '.[dask]'``). See docs/scale-out.md.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {"DaskLGBModel": "dask_lgb"}

__all__ = ["DaskLGBModel"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
