"""Hand-computed backtests through CryptoExchange + CryptoExecutor + CryptoPosition on a tiny known provider.

Every expected number below is worked out by hand from the bar table in ``BARS`` (see the comments), and every
scenario also checks the accounting identity
    final equity = initial + price P&L - fees - slippage - funding paid
with price P&L = sum over fills of signed amount x (final close - the bar's close), all from ``BARS``.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from tiny_provider import scripted_strategy, use_provider

from qlib_crypto.backtest import CryptoExecutor

IDX = pd.date_range("2024-01-01", periods=8, freq="h")
NAN = float("nan")


def _bars(close, open_=None, high=None, low=None, volume=1000.0, funding=None):
    close = np.asarray(close, dtype=float)
    df = pd.DataFrame(
        {
            "open": close if open_ is None else np.asarray(open_, dtype=float),
            "high": close * 1.01 if high is None else np.asarray(high, dtype=float),
            "low": close * 0.99 if low is None else np.asarray(low, dtype=float),
            "close": close,
            "volume": np.full(len(close), volume),
        },
        index=IDX,
    )
    if funding is not None:
        df["funding_rate"] = np.asarray(funding, dtype=float)
    return df


BARS = {
    "AAA-USDT": _bars([100, 100, 105, 110, 108, 107, 106, 105]),
    "BBB-USDT-SWAP": _bars(
        [200, 200, 202, 198, 195, 190, 192, 191],
        open_=[200, 200, 201, 199, 196, 190, 191, 192],
        funding=[NAN, NAN, 0.001, NAN, -0.002, NAN, NAN, NAN],
    ),
    "CCC-USDT": _bars([10.0] * 8),
    "FFF-USDT-SWAP": _bars([50.0] * 8, funding=[NAN] * 8),
    "DDD-USDT-SWAP": _bars([30.0] * 8, high=[31.5] * 8, low=[28.5] * 8, volume=100.0, funding=[NAN] * 8),
    "EEE-USDT-SWAP": _bars([100.0] * 8, funding=[NAN] * 8),
    "GGG-USDT-SWAP": _bars([100, 100, 100, 62, 62, 62, 62, 62], funding=[NAN] * 8),
}
INIT = 10_000.0


def run(codes, script, exchange_kwargs=None, executor_kwargs=None, pos_type="qlib_crypto.backtest.CryptoPosition"):
    from qlib.backtest import backtest

    use_provider("fills", BARS)
    executor = CryptoExecutor(time_per_step="60min", generate_portfolio_metrics=True, **(executor_kwargs or {}))
    kwargs = {
        "freq": "60min",
        "deal_price": "close",
        "codes": codes,
        "start_time": IDX[1],
        "end_time": IDX[-2],
        "max_participation": None,
    }  # the hand scenarios size orders freely; the cap has its own test
    kwargs.update(exchange_kwargs or {})
    pm, _ = backtest(
        IDX[1],
        IDX[-2],
        strategy=scripted_strategy(script),
        executor=executor,
        benchmark=pd.Series(0.0, index=IDX),
        account=INIT,
        exchange_kwargs={
            "exchange": {"class": "CryptoExchange", "module_path": "qlib_crypto.backtest", "kwargs": kwargs}
        },
        pos_type=pos_type,
    )
    report, positions = pm["60min"]
    return report, positions, executor


def assert_identity(report, executor, expected_fees, expected_slippage, expected_funding):
    """final equity = initial + price P&L - fees - slippage - funding, each term computed from BARS by hand."""
    last_bar = report.index[-1]
    price_pnl = 0.0
    for fill in executor.fills.itertuples():
        bar_close = BARS[fill.instrument].loc[fill.datetime, "close"]
        final_close = BARS[fill.instrument].loc[last_bar, "close"]
        signed = fill.amount if fill.side == "buy" else -fill.amount
        price_pnl += signed * (final_close - bar_close)
    expected = INIT + price_pnl - expected_fees - expected_slippage - expected_funding
    assert report["account"].iloc[-1] == pytest.approx(expected, rel=1e-9)
    assert executor.totals["fees_paid"] == pytest.approx(expected_fees, rel=1e-9, abs=1e-12)
    assert executor.totals["slippage_paid"] == pytest.approx(expected_slippage, rel=1e-9, abs=1e-12)
    assert executor.totals["funding_paid"] == pytest.approx(expected_funding, rel=1e-9, abs=1e-12)


def test_one_buy_one_sell_with_fee_and_slippage():
    # buy 2 at bar 1 (close 100): fill 100 x 1.001 = 100.1, fee 2 x 100.1 x 0.001 = 0.2002, slippage 0.2
    # sell 2 at bar 3 (close 110): fill 110 x 0.999 = 109.89, fee 0.21978, slippage 0.22
    report, positions, ex = run(
        ["AAA-USDT"],
        {IDX[1]: [("AAA-USDT", "buy", 2)], IDX[3]: [("AAA-USDT", "sell", 2)]},
        exchange_kwargs={"slippage_bps": 10.0, "fees": {"spot": {"maker": 0.0008, "taker": 0.001}}},
    )
    fills = ex.fills
    assert list(fills["side"]) == ["buy", "sell"]
    assert fills["fill_price"].tolist() == pytest.approx([100.1, 109.89], rel=1e-12)
    assert fills["fee"].tolist() == pytest.approx([0.2002, 0.21978], rel=1e-12)
    assert fills["slippage"].tolist() == pytest.approx([0.2, 0.22], rel=1e-9)
    assert set(fills["role"]) == {"taker"}
    assert report["account"].iloc[-1] == pytest.approx(10000 - 200.2 - 0.2002 + 219.78 - 0.21978, rel=1e-12)
    assert report["fees"].sum() == pytest.approx(0.41998, rel=1e-12)
    assert report["slippage"].sum() == pytest.approx(0.42, rel=1e-9)
    assert report.attrs == {}  # the tables come from the executor, not through the DataFrame's attrs
    assert_identity(report, ex, 0.41998, 0.42, 0.0)


def test_short_across_two_funding_settlements_and_spot_short_rejected():
    # plain Qlib pos_type "Position": the executor upgrades it to CryptoPosition
    # short 1 BBB at bar 1 (close 200), fee 0.1; bar 2 rate +0.001 at open 201: short receives 0.201;
    # bar 4 rate -0.002 at open 196: short pays 0.392; cover at bar 5 (close 190), fee 0.095
    report, positions, ex = run(
        ["BBB-USDT-SWAP", "AAA-USDT"],
        {IDX[1]: [("BBB-USDT-SWAP", "sell", 1), ("AAA-USDT", "sell", 1)], IDX[5]: [("BBB-USDT-SWAP", "buy", 1)]},
        exchange_kwargs={"fees": {"swap": {"maker": 0.0002, "taker": 0.0005}}},
        pos_type="Position",
    )
    # the provider stores float32: the rates are float32(0.001) and float32(-0.002)
    r2, r4 = float(np.float32(0.001)), float(np.float32(-0.002))
    pay2, pay4 = -1 * 201 * r2, -1 * 196 * r4  # -0.201 (received), +0.392 (paid)
    ev = ex.funding_events
    assert list(ev["datetime"]) == [IDX[2], IDX[4]]
    assert ev["amount"].tolist() == [-1.0, -1.0]
    assert ev["payment"].tolist() == pytest.approx([pay2, pay4], rel=1e-12)
    assert pay2 == pytest.approx(-0.201, rel=1e-6) and pay4 == pytest.approx(0.392, rel=1e-6)
    assert report.loc[IDX[2], "funding"] == pytest.approx(pay2, rel=1e-12)
    assert positions[IDX[3]].get_stock_amount("BBB-USDT-SWAP") == -1.0
    assert report["account"].iloc[-1] == pytest.approx(10000 + 200 - 0.1 - pay2 - pay4 - 190 - 0.095, rel=1e-12)
    rep = ex.order_reports.set_index(["instrument", "datetime"])
    assert rep.loc[("AAA-USDT", IDX[1]), "status"] == "rejected"
    assert "spot_long_only" in rep.loc[("AAA-USDT", IDX[1]), "reasons"]
    assert rep.loc[("AAA-USDT", IDX[1]), "unfilled"] == 1.0
    assert_identity(report, ex, 0.195, 0.0, pay2 + pay4)


def test_lot_rounding_and_minimum_size_rejection():
    meta = {
        "CCC-USDT": {"instType": "SPOT", "lotSz": 0.1, "minSz": 0.5},
        "FFF-USDT-SWAP": {"instType": "SWAP", "lotSz": 1, "minSz": 1, "ctVal": 0.01},  # 1 contract = 0.01 coin
    }
    report, positions, ex = run(
        ["CCC-USDT", "FFF-USDT-SWAP"],
        {
            IDX[1]: [("CCC-USDT", "buy", 1.27), ("FFF-USDT-SWAP", "buy", 0.025)],
            IDX[2]: [("CCC-USDT", "buy", 0.3), ("FFF-USDT-SWAP", "buy", 0.005)],
        },
        exchange_kwargs={"instrument_meta": meta},
    )
    rep = ex.order_reports.set_index(["instrument", "datetime"])
    assert rep.loc[("CCC-USDT", IDX[1]), "filled"] == pytest.approx(1.2, rel=1e-12)  # 1.27 -> 12 lots of 0.1
    assert rep.loc[("CCC-USDT", IDX[1]), "status"] == "partial"
    assert rep.loc[("CCC-USDT", IDX[2]), "status"] == "rejected"
    assert rep.loc[("CCC-USDT", IDX[2]), "reasons"] == "below_min_size"
    assert rep.loc[("FFF-USDT-SWAP", IDX[1]), "filled"] == pytest.approx(0.02, rel=1e-12)  # 2 contracts
    assert rep.loc[("FFF-USDT-SWAP", IDX[2]), "reasons"] == "below_lot_size"
    # fees: 1.2 x 10 x 0.001 (spot taker default) + 0.02 x 50 x 0.0005 (swap taker default)
    fees = 1.2 * 10 * 0.001 + 0.02 * 50 * 0.0005
    assert report["account"].iloc[-1] == pytest.approx(INIT - fees, rel=1e-12)
    assert_identity(report, ex, fees, 0.0, 0.0)


def test_participation_cap_and_square_root_impact():
    # volume 100 per bar, cap 10% -> 10 of 25 fill, 15 unfilled.
    # sigma = (31.5 - 28.5) / 30 = 0.1; impact = 0.5 x 0.1 x sqrt(10 / 100); fill = 30 x (1 + impact)
    report, positions, ex = run(
        ["DDD-USDT-SWAP"],
        {IDX[1]: [("DDD-USDT-SWAP", "buy", 25)]},
        exchange_kwargs={"max_participation": 0.1, "impact_coef": 0.5},
    )
    rep = ex.order_reports.iloc[0]
    assert rep["filled"] == pytest.approx(10.0, rel=1e-12)
    assert rep["unfilled"] == pytest.approx(15.0, rel=1e-12)
    assert rep["reasons"] == "participation_cap"
    impact = 0.5 * 0.1 * math.sqrt(0.1)
    fill = 30 * (1 + impact)
    f = ex.fills.iloc[0]
    assert f["fill_price"] == pytest.approx(fill, rel=1e-12)
    assert f["slippage"] == pytest.approx(10 * (fill - 30), rel=1e-9)
    fee = 10 * fill * 0.0005
    assert_identity(report, ex, fee, 10 * (fill - 30), 0.0)


def test_leverage_breach_is_scaled_down():
    # max_leverage 2, equity 10000, price 100, swap taker 0.0005:
    # 100 q <= 2 x (10000 - 100 q x 0.0005)  ->  q = 20000 / (100 x 1.001)
    report, positions, ex = run(
        ["EEE-USDT-SWAP"], {IDX[1]: [("EEE-USDT-SWAP", "buy", 300)]}, executor_kwargs={"max_leverage": 2.0}
    )
    q = 20000 / (100 * 1.001)
    rep = ex.order_reports.iloc[0]
    assert rep["filled"] == pytest.approx(q, rel=1e-12)
    assert rep["reasons"] == "max_leverage" and rep["status"] == "partial"
    assert report.loc[IDX[1], "leverage"] == pytest.approx(2.0, rel=1e-9)
    assert report.loc[IDX[1], "gross_exposure"] == pytest.approx(100 * q, rel=1e-12)
    assert_identity(report, ex, q * 100 * 0.0005, 0.0, 0.0)


def test_liquidation_closes_everything_at_the_bar_close():
    # long 250 at 100 (fee 12.5): cash -15012.5; bar 3 close 62: equity 487.5 < 0.05 x 15500 = 775
    # -> sell 250 at 62 with taker fee 7.75 -> equity 479.75, flat afterwards
    report, positions, ex = run(
        ["GGG-USDT-SWAP"],
        {IDX[1]: [("GGG-USDT-SWAP", "buy", 250)]},
        executor_kwargs={"max_leverage": 3.0, "maintenance_margin": 0.05},
    )
    liq = ex.liquidations
    assert list(liq["datetime"]) == [IDX[3]]
    assert liq["equity"].iloc[0] == pytest.approx(487.5, rel=1e-12)
    assert liq["gross_exposure"].iloc[0] == pytest.approx(15500.0, rel=1e-12)
    last = ex.fills.iloc[-1]
    assert (last["role"], last["side"], last["amount"], last["fill_price"]) == ("liquidation", "sell", 250.0, 62.0)
    assert last["fee"] == pytest.approx(7.75, rel=1e-12)
    assert positions[IDX[-2]].get_stock_list() == []
    assert report["account"].iloc[-1] == pytest.approx(479.75, rel=1e-12)
    assert_identity(report, ex, 20.25, 0.0, 0.0)
