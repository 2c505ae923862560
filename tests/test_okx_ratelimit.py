"""The sliding-window limiter: exact window arithmetic, thread safety, and zero 429s against the simulator."""

from __future__ import annotations

import collections
import threading
import time

import pytest
from okx_sim import many_instruments

from qlib_crypto.errors import ConfigError
from qlib_crypto.sources.collector import collect
from qlib_crypto.sources.okx import OkxSource, RetryPolicy
from qlib_crypto.sources.ratelimit import SlidingWindowLimiter


class FakeClock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_window_arithmetic_with_fake_clock():
    clock = FakeClock()
    lim = SlidingWindowLimiter(3, 1.0, margin_s=0.1, clock=clock)
    assert [lim.try_acquire() for _ in range(3)] == [0.0, 0.0, 0.0]
    # window full of requests still in flight: poll until one is answered
    assert 0 < lim.try_acquire() < 0.01
    clock.t = 0.2
    lim.release()  # first answer at t=0.2: it may have arrived as late as 0.2
    # 4th may go once 0.2 leaves the window: at 0.2 + 1.0 + 0.1 = 1.3
    assert lim.try_acquire() == pytest.approx(1.1)
    clock.t = 1.0
    assert lim.try_acquire() == pytest.approx(0.3)
    clock.t = 1.3
    assert lim.try_acquire() == 0.0
    assert lim.granted == 4
    assert lim.in_flight == 3


def test_release_without_acquire_is_an_error():
    lim = SlidingWindowLimiter(2, 1.0)
    with pytest.raises(RuntimeError):
        lim.release()


@pytest.mark.parametrize("args", [(0, 1.0), (5, 0.0), (5, -1.0)])
def test_bad_limits_are_config_errors(args):
    with pytest.raises(ConfigError):
        SlidingWindowLimiter(*args)


def test_threads_never_exceed_the_window():
    """8 threads x 15 requests through 10 per 0.2 s: check each 'arrival' against a strict window."""
    n, window = 10, 0.2
    lim = SlidingWindowLimiter(n, window, margin_s=0.0)
    arrivals: list[float] = []
    lock = threading.Lock()

    def worker(i: int) -> None:
        for k in range(15):
            with lim:
                time.sleep(0.001 * ((i + k) % 3))  # latency before the "server" sees it
                with lock:
                    arrivals.append(time.monotonic())
                time.sleep(0.001 * ((i * k) % 2))  # latency of the answer

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert len(arrivals) == 120
    arrivals.sort()
    window_q: collections.deque = collections.deque()
    worst = 0
    for t in arrivals:
        while window_q and window_q[0] <= t - window:
            window_q.popleft()
        window_q.append(t)
        worst = max(worst, len(window_q))
    assert worst <= n  # that the limiter fills the window is checked deterministically with FakeClock above


FAST = {"history-candles": (20, 0.5, None), "candles": (40, 0.5, None)}


def test_full_speed_collection_gets_zero_429(okx_sim_factory, tmp_path):
    """8 instruments at full speed through one shared limiter: the strict simulator counts no 429."""
    insts = many_instruments(8)
    sim = okx_sim_factory(instruments=insts, gap_prob=0.0, limits={"market/history-candles": (20, 0.5, None)})
    with OkxSource(api_url=sim.url, limits=FAST, retry=RetryPolicy(max_retries=0), use_candles_endpoint=False) as src:
        report = collect(
            src,
            tmp_path / "s",
            [i.inst_id for i in insts],
            "1m",
            "2024-02-25",
            "2024-02-27",
            workers=8,
            progress=False,
            with_funding=False,
        )
    pages = 8 * (2 * 1440 // 300 + 1)  # 10 windows of 300 bars per instrument per 2 days
    assert sim.stats.requests["market/history-candles"] == pages
    assert sim.stats.total_rate_limited == 0
    assert report.bars_fetched == 8 * 2 * 1440


def test_simulator_does_enforce_the_window(okx_sim_factory, tmp_path):
    """Control: a client limiter looser than the server's window does get 429s (then retries them)."""
    insts = many_instruments(6)
    sim = okx_sim_factory(instruments=insts, gap_prob=0.0, limits={"market/history-candles": (20, 0.5, None)})
    loose = {"history-candles": (40, 0.5, None)}
    with OkxSource(
        api_url=sim.url,
        limits=loose,
        retry=RetryPolicy(max_retries=1, base_s=0.01, cap_s=0.02),
        use_candles_endpoint=False,
    ) as src:
        collect(
            src,
            tmp_path / "s",
            [i.inst_id for i in insts],
            "1m",
            "2024-02-25",
            "2024-02-27",
            workers=6,
            progress=False,
            with_funding=False,
            raise_on_incomplete=False,
        )
    assert sim.stats.rate_limited["market/history-candles"] > 0
