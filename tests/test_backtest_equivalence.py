"""With slippage 0 and fees equal to Qlib's open_cost/close_cost, Qlib's TopkDropoutStrategy gives the same
fills and account values through CryptoExchange + CryptoExecutor + CryptoPosition as through Qlib's stock
Exchange + SimulatorExecutor + Position (min_cost 0, trade_unit None) on the same data."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from tiny_provider import random_walk_bars, use_provider

from qlib_crypto.backtest import CryptoExecutor

INSTS = [f"Q{i:02d}-USDT" for i in range(8)]
N_BARS = 120
IDX = pd.date_range("2024-01-01", periods=N_BARS, freq="h")
FEE = 0.001


def _pred() -> pd.Series:
    rng = np.random.default_rng(3)
    return pd.Series(
        rng.normal(size=len(INSTS) * N_BARS),
        index=pd.MultiIndex.from_product([IDX, INSTS], names=["datetime", "instrument"]),
    )


def _run(ours: bool):
    from qlib.backtest import backtest

    use_provider("equivalence", random_walk_bars(INSTS, N_BARS, seed=5))
    strategy = {
        "class": "TopkDropoutStrategy",
        "module_path": "qlib.contrib.strategy",
        "kwargs": {"signal": _pred(), "topk": 3, "n_drop": 1},
    }
    bench = pd.Series(0.0, index=IDX)
    if ours:
        executor = CryptoExecutor(time_per_step="60min", generate_portfolio_metrics=True, max_leverage=None)
        exchange_kwargs = {
            "exchange": {
                "class": "CryptoExchange",
                "module_path": "qlib_crypto.backtest",
                "kwargs": {
                    "freq": "60min",
                    "deal_price": "close",
                    "slippage_bps": 0.0,
                    "codes": INSTS,
                    "fees": {"spot": {"maker": FEE, "taker": FEE}},
                    "start_time": IDX[1],
                    "end_time": IDX[-2],
                    "max_participation": None,  # Qlib's stock exchange has no volume cap: none here either
                },
            }
        }
        pos_type = "qlib_crypto.backtest.CryptoPosition"
    else:
        executor = {
            "class": "SimulatorExecutor",
            "module_path": "qlib.backtest.executor",
            "kwargs": {"time_per_step": "60min", "generate_portfolio_metrics": True},
        }
        exchange_kwargs = {
            "freq": "60min",
            "open_cost": FEE,
            "close_cost": FEE,
            "min_cost": 0.0,
            "deal_price": "close",
            "limit_threshold": None,
            "trade_unit": None,
            "codes": INSTS,
        }
        pos_type = "Position"
    pm, ind = backtest(
        IDX[1],
        IDX[-2],
        strategy=strategy,
        executor=executor,
        benchmark=bench,
        account=100_000.0,
        exchange_kwargs=exchange_kwargs,
        pos_type=pos_type,
    )
    return pm["60min"], ind["60min"][0], executor


def _holdings(positions: dict) -> dict:
    return {
        ts: {k: p.get_stock_amount(k) for k in p.get_stock_list()} | {"cash": p.get_cash()}
        for ts, p in positions.items()
    }


def test_topk_dropout_same_fills_and_account_values_as_qlib_stock():
    (rq, pq), iq, _ = _run(ours=False)
    (ro, po), io, ex = _run(ours=True)
    assert len(rq) == len(ro) == N_BARS - 2
    for col in ("account", "return", "total_cost", "total_turnover", "cash", "value"):
        np.testing.assert_allclose(ro[col].to_numpy(), rq[col].to_numpy(), rtol=1e-12, atol=1e-9, err_msg=col)
    hq, ho = _holdings(pq), _holdings(po)
    assert hq.keys() == ho.keys()
    for ts in hq:
        assert hq[ts].keys() == ho[ts].keys(), ts
        for k in hq[ts]:
            assert ho[ts][k] == pytest.approx(hq[ts][k], rel=1e-12, abs=1e-9)
    # the same trades: Qlib's per-step traded value/amount indicators agree, and our fill list adds up to them
    for col in ("value", "deal_amount", "count", "ffr", "pa", "pos"):
        np.testing.assert_allclose(io[col].to_numpy(), iq[col].to_numpy(), rtol=1e-12, atol=1e-9, err_msg=col)
    fills = ex.fills
    assert len(fills) > 20
    assert fills["value"].sum() == pytest.approx(rq["total_turnover"].iloc[-1], rel=1e-12)
    assert fills["fee"].sum() == pytest.approx(rq["total_cost"].iloc[-1], rel=1e-12)
    assert (fills["fee"] - fills["value"] * FEE).abs().max() < 1e-9
    assert (fills["slippage"] == 0).all()
