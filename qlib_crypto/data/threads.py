"""How many threads the fast feature engine uses, and a small helper to split work over them.

The numba kernels release the GIL (``nogil=True``), so independent pieces of work (groups of expressions,
blocks of columns) run in parallel in a thread pool without copying data between processes. The count is
``QLIB_CRYPTO_THREADS`` when set, else ``OMP_NUM_THREADS`` when set (Dask workers set it to 1, so a worker
uses one thread per task), else the CPUs this process may run on. ``QLIB_CRYPTO_THREADS=1`` runs everything
in the calling thread. The results do not depend on the count: every piece writes its own part.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterable, Sequence, TypeVar

from ..errors import ConfigError

T = TypeVar("T")
R = TypeVar("R")


def n_threads() -> int:
    """The engine's thread count (see the module doc)."""
    raw = os.environ.get("QLIB_CRYPTO_THREADS", "").strip()
    if raw:
        try:
            n = int(raw)
        except ValueError:
            n = 0
        if n < 1:
            raise ConfigError(
                f"QLIB_CRYPTO_THREADS={raw!r} is not a positive integer", hint="set it to 1, 2, ... or unset it"
            )
        return n
    omp = os.environ.get("OMP_NUM_THREADS", "").split(",")[0].strip()  # OpenMP allows "4,2" (nested levels)
    if omp.isdigit() and int(omp) >= 1:
        return int(omp)
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def run_all(func: Callable[[T], R], items: Sequence[T], threads: int | None = None) -> list[R]:
    """``[func(item) for item in items]``, run on up to ``threads`` threads (default :func:`n_threads`);
    results in ``items`` order, the first error re-raised."""
    threads = n_threads() if threads is None else threads
    if threads <= 1 or len(items) <= 1:
        return [func(it) for it in items]
    with ThreadPoolExecutor(max_workers=min(threads, len(items)), thread_name_prefix="qlib_crypto") as pool:
        return list(pool.map(func, items))


def split(n: int, parts: int) -> Iterable[tuple[int, int]]:
    """``parts`` contiguous ``(start, stop)`` ranges covering ``0 .. n`` (sizes differ by at most one)."""
    parts = max(1, min(parts, n))
    q, r = divmod(n, parts)
    start = 0
    for k in range(parts):
        stop = start + q + (k < r)
        yield start, stop
        start = stop
