"""Shared pytest fixtures. ``okx_sim`` / ``okx_sim_factory``: the loopback OKX simulator (tests/okx_sim.py)."""

from __future__ import annotations

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))

from okx_sim import OkxSimulator  # noqa: E402


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
