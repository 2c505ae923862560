"""Scale-out on a Dask cluster (the ``dask`` extra: ``pip install -c constraints.txt -e '.[dask]'``).

- :mod:`.cluster`: where the cluster is (``dask:`` YAML block, ``--dask ADDRESS``, else a LocalCluster) and
  how workers initialise Qlib;
- :mod:`.features`: the fast feature engine per group of instruments on workers (``DaskDataLoader``,
  ``DaskAlpha158``, ``DaskAlpha360``), identical to the single-process frames;
- :mod:`.tasks`: walk-forward windows (``DaskTrainerR``) and cost-sweep cells as Dask tasks;
- :class:`qlib_crypto.model.DaskLGBModel`: LightGBM trained with ``lightgbm.dask``.

See docs/scale-out.md. Nothing here is imported by the rest of the package unless a Dask option is used.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "get_client": "cluster",
    "normalize_spec": "cluster",
    "qlib_config": "cluster",
    "close_clients": "cluster",
    "DaskDataLoader": "features",
    "DaskAlpha158": "features",
    "DaskAlpha360": "features",
    "DaskTrainerR": "tasks",
    "distributed_sweep": "tasks",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
