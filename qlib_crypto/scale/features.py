"""Features on Dask workers: the fast feature engine per group of instruments, merged into the frame the
single-process engine returns (same index, same float32 values, one contiguous block).

How it is exact:

- Every Qlib expression is a time series of *one* instrument (Qlib 0.9.7 has no cross-sectional operators;
  rolling windows, ``Ref``, ``Corr`` only look back along one instrument's bars). Splitting the instruments
  into groups and evaluating :func:`qlib_crypto.data.loader.load_expressions` on each group therefore gives,
  row for row, the values of evaluating all instruments at once. The universe's point-in-time spans are
  passed along with each group.
- The merge puts the rows in the single-process order (``datetime`` then ``instrument``, or the reverse
  without ``swap_level``) and rebuilds the index from the groups' labels; the client keeps one output block
  and fetches one group's block at a time, so it never holds the data twice.
- Cross-sectional features (``CrossSectionalFeatures``: the market-relative families ``XRET``...), the
  cross-sectional label normalisation (``CSRankNorm``/``CSZScoreLabel``) and the normalisers fitted on the
  train window (``RobustZScoreNorm``'s per-column median and MAD) combine *instruments* of a bar or rows of
  the whole universe: they run after the merge, in the handler, over the whole universe, exactly as in one
  process. So a distributed handler's frames are equal to the single-process handler's, bit for bit.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
import pandas as pd

from ..data.handler import CryptoAlpha158, CryptoAlpha360
from ..data.loader import FastDataLoader, load_expressions
from .cluster import get_client, in_worker, n_workers, normalize_spec, qlib_config, run_locked

logger = logging.getLogger(__name__)


def _load_group(
    conf: dict,
    instruments: Any,
    exprs: list,
    columns: pd.Index,
    start_time,
    end_time,
    freq: str,
    swap_level: bool,
    row_fields,
) -> pd.DataFrame:
    """On a worker: the fast engine's frame for one group of instruments."""
    return run_locked(
        conf,
        load_expressions,
        instruments,
        exprs,
        columns,
        start_time,
        end_time,
        freq,
        swap_level=swap_level,
        row_fields=row_fields,
    )


def _frame_labels(frame: pd.DataFrame) -> tuple:
    """The index of a group's frame as (level 0 values, level 1 values, codes 0, codes 1)."""
    idx = frame.index
    return idx.levels[0], idx.levels[1], np.asarray(idx.codes[0]), np.asarray(idx.codes[1])


def _frame_values(frame: pd.DataFrame) -> np.ndarray:
    return np.ascontiguousarray(frame.to_numpy(dtype=np.float32).T)  # (columns, rows)


def split_groups(names: list[str], n_groups: int) -> list[list[str]]:
    """``names`` (sorted) cut into ``n_groups`` contiguous groups of near-equal size (none empty)."""
    n_groups = max(1, min(n_groups, len(names)))
    bounds = np.linspace(0, len(names), n_groups + 1).round().astype(int)
    return [names[a:b] for a, b in zip(bounds[:-1], bounds[1:]) if b > a]


def merge_groups(labels: list[tuple], fetch, columns: pd.Index, swap_level: bool) -> pd.DataFrame:
    """The single-process frame from the groups' index labels and, one group at a time, their value blocks
    (``fetch(i)`` -> ``(n_columns, rows_i)`` float32)."""
    from ..data.engine import empty_block

    keep = [i for i, lab in enumerate(labels) if len(lab[2])]
    outer = pd.Index(sorted(set().union(*(set(labels[i][0]) for i in keep)))) if keep else pd.Index([])
    inner = (
        pd.Index(sorted(set().union(*(set(labels[i][1]) for i in keep))), dtype=object)
        if keep
        else pd.Index([], dtype=object)
    )
    if swap_level:  # level 0 datetime, level 1 instrument
        outer = pd.DatetimeIndex(outer)
    else:
        outer, inner = pd.Index(list(outer), dtype=object), pd.DatetimeIndex(list(inner))
    codes0, codes1, sizes = [], [], []
    for i in keep:
        l0, l1, c0, c1 = labels[i]
        codes0.append(outer.get_indexer(l0)[c0])
        codes1.append(inner.get_indexer(l1)[c1])
        sizes.append(len(c0))
    c0 = np.concatenate(codes0) if codes0 else np.empty(0, dtype=np.int64)
    c1 = np.concatenate(codes1) if codes1 else np.empty(0, dtype=np.int64)
    key = c0.astype(np.int64) * max(len(inner), 1) + c1
    order = np.argsort(key, kind="stable")
    if len(order) and np.any(np.diff(key[order]) == 0):
        raise ValueError("two groups returned the same (datetime, instrument) row")  # pragma: no cover
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    out = empty_block((len(columns), len(order)))
    offset = 0
    for i, size in zip(keep, sizes):
        block = fetch(i)
        out[:, rank[offset : offset + size]] = block
        offset += size
        del block
    names = ["datetime", "instrument"] if swap_level else ["instrument", "datetime"]
    index = pd.MultiIndex(levels=[outer, inner], codes=[c0[order], c1[order]], names=names, verify_integrity=False)
    return pd.DataFrame(out.T, index=index, columns=columns, copy=False)


class DaskDataLoader(FastDataLoader):
    """``FastDataLoader`` whose fast path runs on a Dask cluster, one task per group of instruments.

    ``dask``: a cluster spec (:mod:`qlib_crypto.scale.cluster`; default a LocalCluster with the machine's
    cores); ``groups_per_worker``: instrument groups per worker (more groups, smaller blocks per task). Inside
    a Dask task (e.g. a walk-forward window) it computes in-process, like ``FastDataLoader``. The result is
    identical to ``FastDataLoader``'s (see the module doc).
    """

    def __init__(
        self,
        config: Any,
        filter_pipe: Any = None,
        swap_level: bool = True,
        freq: Any = "day",
        inst_processors: Any = None,
        engine: str = "fast",
        dask: Any = "local",
        groups_per_worker: int = 2,
    ) -> None:
        self.dask = normalize_spec(dask if dask is not None else "local")
        self.groups_per_worker = int(groups_per_worker)
        super().__init__(
            config=config,
            filter_pipe=filter_pipe,
            swap_level=swap_level,
            freq=freq,
            inst_processors=inst_processors,
            engine=engine,
        )

    def _load_fast(self, instruments, start_time, end_time, groups: list, freq: str, row_fields: set | None = None):
        if in_worker():
            return super()._load_fast(instruments, start_time, end_time, groups, freq, row_fields)
        from qlib.data import D
        from qlib.data.data import DatasetProvider

        from ..data.loader import _columns

        if instruments is None:
            instruments = "all"
        if isinstance(instruments, str):
            instruments = D.instruments(instruments, filter_pipe=self.filter_pipe)
        inst_d = DatasetProvider.get_instruments_d(instruments, freq)
        names = sorted(inst_d) if isinstance(inst_d, dict) else sorted(set(inst_d))
        columns = _columns(groups)
        exprs = [e for _, ex, _ in groups for e in ex]
        client = get_client(self.dask)
        parts = split_groups(names, n_workers(client) * max(1, self.groups_per_worker))
        conf = qlib_config()
        t0 = time.perf_counter()
        args = [({n: inst_d[n] for n in part} if isinstance(inst_d, dict) else part) for part in parts]
        futures = [
            client.submit(
                _load_group,
                conf,
                a,
                exprs,
                columns,
                start_time,
                end_time,
                freq,
                self.swap_level,
                row_fields,
                pure=False,
            )
            for a in args
        ]
        try:
            labels = client.gather([client.submit(_frame_labels, f, pure=False) for f in futures])
            frame = merge_groups(
                labels,
                lambda i: client.submit(_frame_values, futures[i], pure=False).result(),
                columns,
                self.swap_level,
            )
        finally:
            client.cancel(futures)
        logger.info(
            "fast feature engine on Dask: %d groups, %d expressions, %d rows in %.2f s",
            len(parts),
            frame.shape[1],
            frame.shape[0],
            time.perf_counter() - t0,
        )
        return frame


def _use_dask_loader(handler_init, self, dask: Any, groups_per_worker: int, kwargs: dict) -> None:
    """Build the crypto handler with its loader replaced by a :class:`DaskDataLoader`, then load."""
    init_data = kwargs.pop("init_data", True)
    handler_init(self, init_data=False, **kwargs)
    loader = self.data_loader
    self.data_loader = DaskDataLoader(
        config=loader.fields if not loader.is_group else dict(loader.fields),
        filter_pipe=loader.filter_pipe,
        swap_level=loader.swap_level,
        freq=loader.freq,
        inst_processors=loader.inst_processors,
        engine=loader.engine,
        dask=dask,
        groups_per_worker=groups_per_worker,
    )
    if init_data:
        self.setup_data()


class DaskAlpha158(CryptoAlpha158):
    """``CryptoAlpha158`` whose features are computed on a Dask cluster (``dask``: a cluster spec, default a
    LocalCluster); same frames as ``CryptoAlpha158`` with the same arguments."""

    def __init__(self, *args: Any, dask: Any = "local", groups_per_worker: int = 2, **kwargs: Any) -> None:
        _use_dask_loader(lambda s, **kw: CryptoAlpha158.__init__(s, *args, **kw), self, dask, groups_per_worker, kwargs)


class DaskAlpha360(CryptoAlpha360):
    """``CryptoAlpha360`` whose raw windows are computed on a Dask cluster (see :class:`DaskAlpha158`)."""

    def __init__(self, *args: Any, dask: Any = "local", groups_per_worker: int = 2, **kwargs: Any) -> None:
        _use_dask_loader(lambda s, **kw: CryptoAlpha360.__init__(s, *args, **kw), self, dask, groups_per_worker, kwargs)
