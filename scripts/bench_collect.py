"""Benchmark: OKX collection throughput against the loopback simulator with OKX's REAL limits.

Compares our collector (OkxSource + collect: one exact sliding-window limiter shared across instruments)
with plain ccxt ``fetch_ohlcv`` paging (since + limit=300, ccxt's own rate limiter), side by side, on the
same simulator enforcing a strict 20 requests / 2 s window on ``market/history-candles``.

    nice -n 10 python scripts/bench_collect.py --instruments 20 --days 3

Prints bars/s, percent of the 3,000 bars/s ceiling (20 req / 2 s x 300 bars), requests and 429s.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from okx_sim import OkxSimulator, many_instruments  # noqa: E402

CEILING = 20 / 2.0 * 300  # bars per second on history-candles


def run_ours(sim: OkxSimulator, names: list[str], start_ms: int, end_ms: int, workers: int) -> dict:
    from qlib_crypto.sources.collector import collect
    from qlib_crypto.sources.okx import OkxSource

    with tempfile.TemporaryDirectory() as tmp, OkxSource(api_url=sim.url, use_candles_endpoint=False) as src:
        src.server_time_ms()
        src.instruments("spot")
        src.instruments("swap")
        r0, l0 = sim.stats.requests["market/history-candles"], sim.stats.rate_limited["market/history-candles"]
        t0 = time.monotonic()
        report = collect(
            src,
            tmp,
            names,
            "1m",
            start_ms,
            end_ms,
            workers=workers,
            progress=False,
            with_funding=False,
            with_meta=False,
        )
        elapsed = time.monotonic() - t0
    return {
        "bars": report.bars_fetched,
        "seconds": elapsed,
        "requests": sim.stats.requests["market/history-candles"] - r0,
        "429s": sim.stats.rate_limited["market/history-candles"] - l0,
    }


def run_ccxt(sim: OkxSimulator, names: list[str], start_ms: int, end_ms: int) -> dict:
    import ccxt.async_support as ccxt_async

    async def main() -> dict:
        ex = ccxt_async.okx({"enableRateLimit": True, "options": {"fetchMarkets": {"types": ["spot", "swap"]}}})
        ex.urls["api"]["rest"] = sim.url
        try:
            await ex.load_markets()
            symbols = {m["id"]: s for s, m in ex.markets.items()}
            r0 = sim.stats.requests["market/history-candles"]
            l0 = sim.stats.rate_limited["market/history-candles"]
            bars = 0

            async def one(inst: str) -> int:
                got, since = 0, start_ms
                while since < end_ms:
                    try:
                        rows = await ex.fetch_ohlcv(symbols[inst], "1m", since=since, limit=300)
                    except Exception:  # noqa: BLE001 - count and retry as a naive user would
                        await asyncio.sleep(0.5)
                        continue
                    rows = [r for r in rows if r[0] < end_ms]
                    got += len(rows)
                    since += 300 * 60_000
                return got

            t0 = time.monotonic()
            counts = await asyncio.gather(*(one(n) for n in names))
            elapsed = time.monotonic() - t0
            bars = sum(counts)
            return {
                "bars": bars,
                "seconds": elapsed,
                "requests": sim.stats.requests["market/history-candles"] - r0,
                "429s": sim.stats.rate_limited["market/history-candles"] - l0,
            }
        finally:
            await ex.close()

    return asyncio.run(main())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--instruments", type=int, default=20)
    parser.add_argument("--days", type=float, default=3.0)
    parser.add_argument("--workers", type=int, default=8)
    args = parser.parse_args()
    now_ms = int(time.time() * 1000)
    end_ms = (now_ms // 86_400_000 - 2) * 86_400_000  # a past range (older than the candles endpoint horizon)
    start_ms = end_ms - int(args.days * 86_400_000)
    insts = many_instruments(args.instruments)
    names = [i.inst_id for i in insts]
    print(
        f"{args.instruments} instruments x {args.days:g} days of 1m bars "
        f"({args.instruments * int(args.days * 1440):,} bars), simulator with OKX limits (history 20 req / 2 s)"
    )
    results = {}
    with OkxSimulator(now=now_ms, instruments=insts, gap_prob=0.0) as sim:
        results["qlib-crypto collect"] = run_ours(sim, names, start_ms, end_ms, args.workers)
    time.sleep(2.1)
    with OkxSimulator(now=now_ms, instruments=insts, gap_prob=0.0) as sim:
        results["ccxt fetch_ohlcv"] = run_ccxt(sim, names, start_ms, end_ms)
    print(f"{'':22s} {'bars':>9s} {'seconds':>8s} {'bars/s':>8s} {'% of 3000':>9s} {'requests':>8s} {'429s':>5s}")
    for name, r in results.items():
        rate = r["bars"] / r["seconds"]
        print(
            f"{name:22s} {r['bars']:9,d} {r['seconds']:8.1f} {rate:8,.0f} {100 * rate / CEILING:8.1f}% "
            f"{r['requests']:8d} {r['429s']:5d}"
        )
    ours, theirs = results["qlib-crypto collect"], results["ccxt fetch_ohlcv"]
    ratio = (ours["bars"] / ours["seconds"]) / (theirs["bars"] / theirs["seconds"])
    print(f"ratio qlib-crypto / ccxt: {ratio:.3f}x")


if __name__ == "__main__":
    main()
