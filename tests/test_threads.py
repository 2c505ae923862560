"""The fast engine's thread count and its helpers (qlib_crypto.data.threads)."""

from __future__ import annotations

import os
import threading

import pytest

from qlib_crypto.data.threads import n_threads, run_all, split
from qlib_crypto.errors import ConfigError


def test_thread_count_from_the_environment(monkeypatch):
    monkeypatch.delenv("QLIB_CRYPTO_THREADS", raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert n_threads() == len(os.sched_getaffinity(0))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # what Dask sets in its workers
    assert n_threads() == 1
    monkeypatch.setenv("OMP_NUM_THREADS", "4,2")  # OpenMP's nested form: the outer level
    assert n_threads() == 4
    monkeypatch.setenv("OMP_NUM_THREADS", "auto")  # not ours to judge: ignored
    assert n_threads() == len(os.sched_getaffinity(0))
    monkeypatch.setenv("QLIB_CRYPTO_THREADS", "3")  # ours wins
    assert n_threads() == 3
    for bad in ("0", "-2", "two"):
        monkeypatch.setenv("QLIB_CRYPTO_THREADS", bad)
        with pytest.raises(ConfigError, match=f"QLIB_CRYPTO_THREADS='{bad}'"):
            n_threads()


def test_run_all_keeps_order_uses_threads_and_reraises():
    names = set()

    def work(k: int) -> int:
        names.add(threading.current_thread().name)
        return k * k

    assert run_all(work, list(range(20)), threads=3) == [k * k for k in range(20)]
    assert any(n.startswith("qlib_crypto") for n in names)
    names.clear()
    assert run_all(work, [1, 2], threads=1) == [1, 4]
    assert names == {threading.current_thread().name}  # one thread: the caller's

    def boom(k: int) -> int:
        if k == 3:
            raise ValueError("bad item 3")
        return k

    with pytest.raises(ValueError, match="bad item 3"):
        run_all(boom, list(range(6)), threads=2)


@pytest.mark.parametrize("n, parts", [(10, 3), (3, 5), (0, 2), (7, 1), (8, 4)])
def test_split_covers_every_index_once(n, parts):
    ranges = list(split(n, parts))
    covered = [i for a, b in ranges for i in range(a, b)]
    assert covered == list(range(n))
    sizes = [b - a for a, b in ranges]
    if n:
        assert max(sizes) - min(sizes) <= 1 and len(ranges) == min(parts, n)
