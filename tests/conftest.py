"""Shared pytest fixtures. ``okx_sim`` / ``okx_sim_factory``: the loopback OKX simulator (tests/okx_sim.py)."""

from __future__ import annotations

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))

# OpenMP threads (LightGBM's, num_threads: 2 in the shipped workflows) that wait for work sleep instead of
# spinning. Under `-n 2` the other worker keeps a core busy, and spinning threads then make LightGBM many times
# slower on a 2-core machine (measured: 100 rounds on 20,000 x 150 rows beside other busy processes, 139-145 s
# with libgomp's default policy, 6-7 s with PASSIVE). The wait policy changes no result, only how idle threads
# wait. Set here, before any test process loads libgomp; subprocesses (qrun, the demo, notebook kernels, Dask
# workers) inherit it. An explicit setting in the environment wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from okx_sim import OkxSimulator  # noqa: E402

#: The longest test files, longest first (seconds per file in a `-n 2` run, from `--durations=0`). With
#: `--dist loadfile` a worker takes the next whole file when it is free, so starting with the longest files
#: (and ending with the short ones) keeps both workers busy until the end; xdist's own order (most tests
#: first, --no-loadscope-reorder turns it off in pyproject.toml) ran the 2-test demo file last, alone.
#: Files not listed run after these, in collection order. Re-measure and update when a file grows.
LONGEST_FIRST = [
    "test_demo.py",
    "test_store_integrity.py",
    "test_warmup.py",
    "test_interrupts.py",
    "test_determinism.py",
    "test_console.py",
    "test_docs_commands.py",
    "test_fast_features.py",
    "test_dask_scale.py",
    "test_predict.py",
    "test_run_names.py",
    "test_atomic_dir.py",
    "test_handlers.py",
    "test_workflow_check.py",
    "test_notebook.py",
    "test_collect_hostile.py",
    "test_backtest_inputs.py",
    "test_workflow_e2e.py",
    "test_collect_cli.py",
    "test_sweep.py",
    "test_strategy_e2e.py",
    "test_synthetic.py",
    "test_provider_update.py",
    "test_okx_collect.py",
]


def pytest_collection_modifyitems(config, items):
    """Run the files of LONGEST_FIRST first, in that order (a stable sort: tests keep their order in a file)."""
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


@pytest.fixture
def okx_sim_factory():
    """Make started simulators (``okx_sim_factory(**kwargs)``); every one is stopped after the test."""
    started: list[OkxSimulator] = []

    def make(**kwargs) -> OkxSimulator:
        sim = OkxSimulator(**kwargs).start()
        started.append(sim)
        return sim

    yield make
    for sim in started:
        sim.stop()


@pytest.fixture
def okx_sim(okx_sim_factory) -> OkxSimulator:
    """A started simulator with OKX's real limits, no faults, now = 2024-03-01T12:34:56.789Z."""
    return okx_sim_factory()
