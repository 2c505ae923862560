"""The pure cost functions against hand-computed numbers, and configuration errors."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from qlib_crypto.backtest import costs
from qlib_crypto.backtest.exchange import load_instrument_specs
from qlib_crypto.backtest.position import CryptoPosition
from qlib_crypto.errors import ConfigError


def test_fill_price_buy_and_sell():
    assert costs.fill_price(100.0, +1, 2.0) == pytest.approx(100.02, rel=1e-15)
    assert costs.fill_price(100.0, -1, 2.0) == pytest.approx(99.98, rel=1e-15)
    assert costs.fill_price(100.0, +1, 2.0, impact=0.01) == pytest.approx(101.02, rel=1e-15)
    assert costs.fill_price(100.0, -1, 0.0, impact=0.01) == pytest.approx(99.0, rel=1e-15)


def test_fee_slippage_volatility_impact():
    assert costs.trade_fee(-3.0, 50.0, 0.0005) == pytest.approx(0.075, rel=1e-15)
    assert costs.slippage_cost(3.0, 49.9, 50.0) == pytest.approx(0.3, rel=1e-12)
    assert costs.bar_volatility(110.0, 90.0, 100.0) == pytest.approx(0.2, rel=1e-15)
    assert costs.bar_volatility(float("nan"), 90.0, 100.0) == 0.0
    # 0.5 x 0.2 x sqrt(25 / 100) = 0.05
    assert costs.market_impact(25.0, 100.0, 0.2, 0.5) == pytest.approx(0.05, rel=1e-15)
    assert costs.market_impact(25.0, 100.0, 0.2, 0.0) == 0.0
    assert costs.market_impact(25.0, 0.0, 0.2, 0.5) == math.inf


def test_lots_participation_cash_leverage_funding():
    assert costs.round_down_to_lot(0.3, 0.1) == pytest.approx(0.3, rel=1e-12)  # not 0.2 (float noise)
    assert costs.round_down_to_lot(1.27, 0.1) == pytest.approx(1.2, rel=1e-12)
    assert costs.round_down_to_lot(0.05, 0.1) == 0.0
    assert costs.round_down_to_lot(1.27, None) == 1.27
    assert costs.participation_cap(200.0, 0.1) == pytest.approx(20.0)
    assert costs.participation_cap(200.0, None) == math.inf
    assert costs.participation_cap(float("nan"), 0.1) == 0.0
    # 1001 cash at price 100 with 0.1% fee: 1001 / 1.001 / 100 = 10
    assert costs.max_buy_amount_for_cash(1001.0, 100.0, 0.001) == pytest.approx(10.0, rel=1e-12)
    # long 10 at 100 (other gross 0), equity 1000, L=2, no costs: may buy 10 more
    assert costs.max_amount_for_leverage(10.0, +1, 100.0, 0.0, 1000.0, 2.0) == pytest.approx(10.0, rel=1e-12)
    # short 10: selling may go to -20 -> 10 more; buying back is always allowed up to 10, then up to +20
    assert costs.max_amount_for_leverage(-10.0, -1, 100.0, 0.0, 1000.0, 2.0) == pytest.approx(10.0, rel=1e-12)
    assert costs.max_amount_for_leverage(-10.0, +1, 100.0, 0.0, 1000.0, 2.0) == pytest.approx(30.0, rel=1e-12)
    # already over the limit through other holdings: only reductions
    assert costs.max_amount_for_leverage(5.0, -1, 100.0, 5000.0, 1000.0, 2.0) == pytest.approx(5.0, rel=1e-12)
    assert costs.funding_payment(2.0, 100.0, 0.0001) == pytest.approx(0.02, rel=1e-12)
    assert costs.funding_payment(-2.0, 100.0, 0.0001) == pytest.approx(-0.02, rel=1e-12)
    assert costs.funding_payment(-2.0, 100.0, -0.0001) == pytest.approx(0.02, rel=1e-12)
    assert costs.liquidation_triggered(487.5, 15500.0, 0.05)
    assert not costs.liquidation_triggered(800.0, 15500.0, 0.05)
    assert not costs.liquidation_triggered(-1.0, 0.0, 0.05)


def test_instrument_specs_from_dict_and_frame():
    specs = load_instrument_specs(
        {"BTC-USDT-SWAP": {"instType": "SWAP", "lotSz": 1, "minSz": 1, "ctVal": 0.01}, "ETH-USDT": {"lotSz": 0.0001}}
    )
    assert specs["BTC-USDT-SWAP"].market == "swap"
    assert specs["BTC-USDT-SWAP"].lot_size == pytest.approx(0.01) and specs["BTC-USDT-SWAP"].min_size == pytest.approx(
        0.01
    )
    assert specs["ETH-USDT"].market == "spot" and specs["ETH-USDT"].min_size is None
    frame = pd.DataFrame(
        {"instId": ["X-USDT-SWAP"], "instType": ["SWAP"], "lotSz": [0.1], "minSz": [0.1], "ctVal": [10.0]}
    )
    spec = load_instrument_specs(frame)["X-USDT-SWAP"]
    assert spec.lot_size == pytest.approx(1.0) and spec.min_size == pytest.approx(1.0)
    with pytest.raises(ConfigError, match="instrument_meta"):
        load_instrument_specs(42)


def test_position_signed_amounts_and_cheap_copy():
    import copy

    from qlib.backtest.decision import Order

    pos = CryptoPosition(cash=1000.0)
    t = pd.Timestamp("2024-01-01")
    pos._init_stock("X-USDT-SWAP", 0.0, price=100.0)
    pos.update_order(
        Order(stock_id="X-USDT-SWAP", amount=2.0, direction=Order.SELL, start_time=t, end_time=t),
        trade_val=200.0,
        cost=0.1,
        trade_price=100.0,
    )
    assert pos.get_stock_amount("X-USDT-SWAP") == -2.0
    assert pos.get_cash() == pytest.approx(1199.9)
    pos.update_stock_price("X-USDT-SWAP", 110.0)
    assert pos.equity() == pytest.approx(1199.9 - 220.0)
    assert pos.gross_exposure() == pytest.approx(220.0)
    assert pos.leverage() == pytest.approx(220.0 / 979.9)
    clone = copy.deepcopy(pos)
    clone.update_stock_price("X-USDT-SWAP", 50.0)
    assert pos.get_stock_price("X-USDT-SWAP") == 110.0
    pos.update_order(
        Order(stock_id="X-USDT-SWAP", amount=2.0, direction=Order.BUY, start_time=t, end_time=t),
        trade_val=220.0,
        cost=0.11,
        trade_price=110.0,
    )
    assert pos.get_stock_list() == []
    assert pos.get_stock_price("X-USDT-SWAP") == 110.0  # remembered for Qlib's Account after a full cover
    assert pos.get_cash() == pytest.approx(1199.9 - 220.11)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"deal_price": "mid"}, "deal_price"),
        ({"slippage_bps": -1.0}, "slippage_bps"),
        ({"max_participation": 1.5}, "max_participation"),
        ({"fees": {"futures": {"taker": 0.001}}}, "futures"),
        ({"fees": {"spot": {"taker": 0.5}}}, "spot.taker"),
    ],
)
def test_exchange_config_errors_name_the_bad_value(kwargs, match):
    from qlib_crypto.backtest import CryptoExchange

    with pytest.raises(ConfigError, match=match) as info:
        CryptoExchange(**kwargs)
    assert info.value.hint


def test_executor_config_errors():
    from qlib_crypto.backtest import CryptoExecutor

    with pytest.raises(ConfigError, match="max_leverage"):
        CryptoExecutor(max_leverage=0)
    with pytest.raises(ConfigError, match="maintenance_margin"):
        CryptoExecutor(maintenance_margin=1.5)
