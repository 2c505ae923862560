"""Benchmark: Qlib's stock hourly backtest vs qlib-crypto's exchange/position/executor, same TopkDropout strategy.

Writes a synthetic provider (random-walk hourly bars, --instruments spot instruments, --bars bars) in a temp dir
(a raw store written with ``qlib_crypto.store.write_bars``, then ``qlib_crypto.provider.dump`` at 60min and day),
then runs Qlib's ``TopkDropoutStrategy`` through
  (a) Qlib's stock ``Exchange`` + ``SimulatorExecutor`` + ``Position`` (min_cost 0, open_cost = close_cost = fee), and
  (b) ``CryptoExchange`` (slippage 0, spot taker fee = the same fee) + ``CryptoExecutor`` + ``CryptoPosition``,
side by side in one process, and prints ms per step for each, the ratio, and whether fills and account values
are identical (max relative differences). Each arm's time is the whole ``qlib.backtest.backtest`` call (exchange
and quote set-up included); both start from empty Qlib data caches with the strategy module already imported and
the shared predictions' index already sliced once.

    python scripts/bench_backtest.py                  # a year: 8760 bars x 50 instruments
    python scripts/bench_backtest.py --bars 500       # quick
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd


def run(backend: str, pred: pd.Series, insts: list[str], start, end, fee: float, topk: int, n_drop: int):
    from qlib.backtest import backtest

    strategy = {
        "class": "TopkDropoutStrategy",
        "module_path": "qlib.contrib.strategy",
        "kwargs": {"signal": pred, "topk": topk, "n_drop": n_drop},
    }
    if backend == "qlib":
        executor = {
            "class": "SimulatorExecutor",
            "module_path": "qlib.backtest.executor",
            "kwargs": {"time_per_step": "60min", "generate_portfolio_metrics": True},
        }
        exchange_kwargs = {
            "freq": "60min",
            "open_cost": fee,
            "close_cost": fee,
            "min_cost": 0.0,
            "deal_price": "close",
            "limit_threshold": None,
            "trade_unit": None,
            "codes": insts,
        }
        pos_type = "Position"
    else:
        executor = {
            "class": "CryptoExecutor",
            "module_path": "qlib_crypto.backtest",
            "kwargs": {"time_per_step": "60min", "generate_portfolio_metrics": True, "max_leverage": None},
        }
        exchange_kwargs = {
            "exchange": {
                "class": "CryptoExchange",
                "module_path": "qlib_crypto.backtest",
                "kwargs": {
                    "freq": "60min",
                    "deal_price": "close",
                    "slippage_bps": 0.0,
                    "codes": insts,
                    "fees": {"spot": {"maker": fee, "taker": fee}},
                    "start_time": start,
                    "end_time": end,
                    "max_participation": None,  # equal costs: Qlib's stock exchange has no volume cap
                },
            }
        }
        pos_type = "qlib_crypto.backtest.CryptoPosition"
    t0, c0 = time.perf_counter(), time.process_time()
    pm, ind = backtest(
        start,
        end,
        strategy=strategy,
        executor=executor,
        benchmark=insts[0],
        account=1_000_000.0,
        exchange_kwargs=exchange_kwargs,
        pos_type=pos_type,
    )
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
    report, positions = pm["60min"]
    trades = ind["60min"][1]  # Indicator
    return elapsed, cpu, report, positions, trades


def random_walk_provider(root: Path, insts: list[str], n_bars: int, seed: int = 7) -> dict[str, str]:
    """Geometric random-walk hourly bars from 2024-01-01 (1% a bar, spread 0.4%) dumped by qlib-crypto at 60min
    and day under ``root``; returns the ``provider_uri`` dict."""
    from qlib_crypto.provider import dump
    from qlib_crypto.store import write_bars

    rng = np.random.default_rng(seed)
    idx = pd.date_range("2024-01-01", periods=n_bars, freq="h", tz="UTC")
    store = root / "store"
    for i, inst in enumerate(insts):
        close = 100.0 * (1 + i) * np.exp(np.cumsum(rng.normal(0.0, 0.01, n_bars)))
        open_ = np.concatenate([[close[0]], close[:-1]])
        spread = np.abs(rng.normal(0.0, 0.004, n_bars))
        high, low = np.maximum(open_, close) * (1 + spread), np.minimum(open_, close) * (1 - spread)
        volume = rng.uniform(1e3, 1e4, n_bars)
        bars = pd.DataFrame(
            {
                "datetime": idx,
                "open": open_,
                "high": high,
                "low": low,
                "close": close,
                "volume": volume,
                "amount": volume * (high + low + close) / 3.0,
            }
        )
        write_bars(store, inst, "1h", bars, "bench")
    dump(store, root / "60min", "1h")
    dump(store, root / "day", "1d", source_timeframe="1h")
    return {"60min": str(root / "60min"), "day": str(root / "day")}


def positions_table(positions: dict) -> pd.DataFrame:
    rows = []
    for ts, pos in positions.items():
        for code in sorted(pos.get_stock_list()):
            rows.append((ts, code, pos.get_stock_amount(code)))
        rows.append((ts, "cash", pos.get_cash()))
    return pd.DataFrame(rows, columns=["datetime", "key", "value"]).set_index(["datetime", "key"])["value"]


def max_rel_diff(a: pd.Series, b: pd.Series) -> float:
    a, b = a.align(b)
    if a.isna().ne(b.isna()).any():
        return float("inf")
    denom = np.maximum(np.abs(a.to_numpy()), 1e-9)
    return float(np.nanmax(np.abs((a - b).to_numpy()) / denom)) if len(a) else 0.0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bars", type=int, default=8760, help="hourly bars (default 8760 = one year)")
    ap.add_argument("--instruments", type=int, default=50)
    ap.add_argument("--topk", type=int, default=10)
    ap.add_argument("--n-drop", type=int, default=3)
    ap.add_argument("--fee", type=float, default=0.001)
    ap.add_argument("--order", choices=["qlib-first", "ours-first"], default="qlib-first")
    args = ap.parse_args(argv)

    insts = [f"C{i:03d}-USDT" for i in range(args.instruments)]
    tmp = tempfile.mkdtemp(prefix="bench_backtest_")
    try:
        return _bench(args, insts, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _bench(args: argparse.Namespace, insts: list[str], tmp: str) -> int:
    import qlib

    uri = random_walk_provider(Path(tmp), insts, args.bars, seed=7)
    qlib.init(provider_uri=uri, region="us", trade_unit=None, limit_threshold=None, deal_price="close", kernels=1)
    import logging

    logging.getLogger("qlib").setLevel(logging.WARNING)
    idx = pd.date_range("2024-01-01", periods=args.bars, freq="h")
    rng = np.random.default_rng(11)
    pred = pd.Series(
        rng.normal(size=args.instruments * args.bars),
        index=pd.MultiIndex.from_product([idx, insts], names=["datetime", "instrument"]),
    )
    start, end = idx[1], idx[-2]
    order = ["qlib", "ours"] if args.order == "qlib-first" else ["ours", "qlib"]
    # same start for both arms: one-off imports done before timing, Qlib's in-memory data caches (calendar,
    # instruments, features) emptied before each arm so the second arm does not reuse the first one's loads
    import qlib.contrib.strategy  # noqa: F401  (imports cvxpy & co: about 0.8 s, not part of a backtest)
    from qlib.backtest.signal import create_signal_from
    from qlib.data.cache import H

    import qlib_crypto.backtest  # noqa: F401

    # both arms share `pred`: pandas builds its MultiIndex's lookup caches on the first time slice, which would
    # otherwise be paid by whichever arm runs first
    create_signal_from(pred).get_signal(start_time=idx[0], end_time=idx[1])

    results = {}
    for backend in order:
        H.clear()
        results[backend] = run(backend, pred, insts, start, end, args.fee, args.topk, args.n_drop)
    (tq, cq, rq, pq, _), (to, co, ro, po, _) = results["qlib"], results["ours"]
    steps = len(rq)
    ms_q, ms_o = tq / steps * 1e3, to / steps * 1e3
    print(f"instruments={args.instruments} bars={args.bars} steps={steps} topk={args.topk} n_drop={args.n_drop}")
    print(f"qlib stock exchange+executor : {ms_q:8.3f} ms/step  ({tq:7.2f} s; CPU {cq / steps * 1e3:.3f} ms/step)")
    print(f"qlib-crypto exchange+executor: {ms_o:8.3f} ms/step  ({to:7.2f} s; CPU {co / steps * 1e3:.3f} ms/step)")
    print(
        f"speed-up (qlib / ours)       : {ms_q / ms_o:8.2f}x  (CPU time: {cq / co:.2f}x; on a shared machine the "
        "CPU-time ratio is the steadier one)"
    )
    acct = max_rel_diff(rq["account"], ro["account"])
    cost = max_rel_diff(rq["total_cost"], ro["total_cost"])
    turn = max_rel_diff(rq["total_turnover"], ro["total_turnover"])
    rets = max_rel_diff(rq["return"], ro["return"])
    bench = max_rel_diff(rq["bench"], ro["bench"])
    posd = max_rel_diff(positions_table(pq), positions_table(po))
    identical = max(acct, cost, turn, rets, bench, posd) <= 1e-9
    print(
        f"max relative difference: account {acct:.2e}, return {rets:.2e}, bench {bench:.2e}, "
        f"total_cost {cost:.2e}, turnover {turn:.2e}, positions {posd:.2e}"
    )
    print(f"identical results (<= 1e-9): {identical}")
    return 0 if identical else 1


if __name__ == "__main__":
    sys.exit(main())
