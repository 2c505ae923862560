"""Target -> order logic of the crypto strategies, checked against hand-computed numbers."""

from __future__ import annotations

import pandas as pd
import pytest

from qlib_crypto.errors import ConfigError
from qlib_crypto.strategy.targets import (
    TimeBook,
    apply_signals,
    changed_targets,
    is_rebalance_step,
    is_swap,
    longshort_weights,
    normalize_signal,
    order_delta,
    orders_for_weights,
    scores_frame,
    signal_target,
    signals_frame,
)


def test_buy_sell_hold_semantics_on_swap_and_spot():
    # BUY -> +size, on both markets
    assert signal_target("BUY", 0.25, swap=True, current_target=0.0) == 0.25
    assert signal_target("BUY", 0.25, swap=False, current_target=-0.1) == 0.25
    # SELL -> short of the same size on a swap, flat on spot
    assert signal_target("SELL", 0.25, swap=True, current_target=0.25) == -0.25
    assert signal_target("SELL", 0.25, swap=False, current_target=0.25) == 0.0
    # predict writes signed sizes (-size for SELL): the sign never flips the direction
    assert signal_target("SELL", -0.25, swap=True, current_target=0.0) == -0.25
    # HOLD keeps whatever target was there
    assert signal_target("HOLD", 0.9, swap=True, current_target=-0.25) == -0.25
    assert signal_target("HOLD", 0.9, swap=False, current_target=0.0) == 0.0


def test_signal_values_and_market_type():
    assert [normalize_signal(v) for v in ("buy", " SELL ", "hold", 1, -1, 0, float("nan"))] == [
        "BUY",
        "SELL",
        "HOLD",
        "BUY",
        "SELL",
        "HOLD",
        "HOLD",
    ]
    with pytest.raises(ConfigError, match="'MAYBE'"):
        normalize_signal("MAYBE")
    assert is_swap("BTC-USDT-SWAP") and not is_swap("BTC-USDT")
    # metadata wins over the name
    assert not is_swap("ODD-SWAP", {"ODD-SWAP": {"instType": "SPOT"}})
    assert is_swap("ODD", {"ODD": "SWAP"})


def test_apply_signals_in_order_and_trade_only_on_change():
    targets = apply_signals(
        {}, [("BTC-USDT-SWAP", "BUY", 0.1), ("ETH-USDT", "SELL", 0.2), ("BTC-USDT-SWAP", "SELL", 0.3)]
    )
    # later signal of the same instrument wins; spot SELL -> flat
    assert targets == {"BTC-USDT-SWAP": -0.3, "ETH-USDT": 0.0}
    traded = {"BTC-USDT-SWAP": -0.3}
    # nothing changed -> nothing to trade (ETH flat target equals the implicit 0)
    assert changed_targets(targets, traded) == {}
    # a HOLD never creates a trade
    assert changed_targets(apply_signals(targets, [("BTC-USDT-SWAP", "HOLD", 0.5)]), traded) == {}
    # a repeated BUY of the same size is no change either
    t2 = apply_signals({"SOL-USDT": 0.1}, [("SOL-USDT", "BUY", 0.1)])
    assert changed_targets(t2, {"SOL-USDT": 0.1}) == {}
    assert changed_targets(apply_signals(t2, [("SOL-USDT", "BUY", 0.2)]), {"SOL-USDT": 0.1}) == {"SOL-USDT": 0.2}


def test_order_delta_by_hand():
    # flat -> 10% long of 10,000 equity at price 250: buy 4 units
    assert order_delta(0.10, 10_000.0, 250.0, 0.0) == pytest.approx(4.0)
    # long 4 -> short 10%: sell 8 (4 to close, 4 to open the short)
    assert order_delta(-0.10, 10_000.0, 250.0, 4.0) == pytest.approx(-8.0)
    # short -> flat: buy back
    assert order_delta(0.0, 9_000.0, 300.0, -3.0) == pytest.approx(3.0)
    # no usable price: no trade
    assert order_delta(0.1, 1000.0, float("nan"), 0.0) == 0.0


def test_longshort_weights_dollar_neutral_topk():
    scores = {
        "A-USDT-SWAP": 0.9,
        "B-USDT-SWAP": 0.5,
        "C-USDT-SWAP": 0.1,
        "D-USDT-SWAP": -0.2,
        "E-USDT-SWAP": -0.7,
        "F-USDT-SWAP": float("nan"),
    }
    w = longshort_weights(scores, topk=2, gross_exposure=1.0)
    assert w == {"A-USDT-SWAP": 0.25, "B-USDT-SWAP": 0.25, "D-USDT-SWAP": -0.25, "E-USDT-SWAP": -0.25}
    assert sum(w.values()) == 0.0 and sum(abs(v) for v in w.values()) == 1.0
    # topk larger than half the universe: k = n // 2 = 2 (5 finite scores)
    w = longshort_weights(scores, topk=10, gross_exposure=2.0)
    assert w == {"A-USDT-SWAP": 0.5, "B-USDT-SWAP": 0.5, "D-USDT-SWAP": -0.5, "E-USDT-SWAP": -0.5}
    assert longshort_weights({"A": 1.0}, topk=1) == {}


def test_rebalance_every_n():
    done, last = [], None
    for step in range(2, 12):  # the first step that can trade is 2
        if is_rebalance_step(step, 3, last):
            done.append(step)
            last = step
    assert done == [2, 5, 8, 11]
    assert all(is_rebalance_step(s, 1, s - 1) for s in range(1, 5))
    assert not is_rebalance_step(4, 3, 2)


def test_orders_for_weights_close_unweighted_and_skip_small():
    equity = 12_000.0
    weights = {"A-USDT-SWAP": 0.25, "B-USDT-SWAP": -0.25}
    amounts = {"A-USDT-SWAP": 10.0, "C-USDT-SWAP": -2.0}
    prices = {"A-USDT-SWAP": 200.0, "B-USDT-SWAP": 50.0, "C-USDT-SWAP": 30.0}
    out = orders_for_weights(weights, amounts, prices, equity)
    # A: 3000/200 = 15 target, hold 10 -> buy 5; B: -3000/50 = -60; C: close the short, buy 2
    assert out == pytest.approx({"A-USDT-SWAP": 5.0, "B-USDT-SWAP": -60.0, "C-USDT-SWAP": 2.0})
    # C's trade is worth 60 < 100: skipped; A (1000) and B (3000) stay
    out = orders_for_weights(weights, amounts, prices, equity, min_trade_value=100.0)
    assert set(out) == {"A-USDT-SWAP", "B-USDT-SWAP"}


def test_timebook_interval_queries():
    frame = pd.DataFrame(
        {
            "datetime": pd.to_datetime(
                ["2024-01-01 02:00", "2024-01-01 00:00", "2024-01-01 01:00", "2024-01-01 01:00"]
            ),
            "instrument": ["X", "X", "X", "Y"],
            "signal": ["SELL", "BUY", "HOLD", "BUY"],
            "position_size": [0.3, 0.1, 0.2, 0.4],
        }
    )
    book = TimeBook(frame, ["signal", "position_size"])
    # closed interval of one hourly step [01:00, 01:59:59]
    rows = book.rows_between(pd.Timestamp("2024-01-01 01:00"), pd.Timestamp("2024-01-01 01:59:59"))
    assert sorted(rows) == [("X", "HOLD", 0.2), ("Y", "BUY", 0.4)]
    assert book.rows_between(pd.Timestamp("2023-12-31"), pd.Timestamp("2023-12-31 23:59:59")) == []
    # a daily step sees all rows; last per instrument wins
    latest = book.latest_between(pd.Timestamp("2024-01-01"), pd.Timestamp("2024-01-01 23:59:59"))
    assert latest == {"X": ("SELL", 0.3), "Y": ("BUY", 0.4)}


def test_signals_and_scores_frames_normalise_inputs(tmp_path):
    raw = pd.DataFrame(
        {
            "datetime": pd.to_datetime(["2024-01-01 00:00"], utc=True),
            "instrument": ["BTC-USDT-SWAP"],
            "score": [0.3],
            "signal": ["SELL"],
            "position_size": [-0.1],
        }
    )
    path = tmp_path / "signals.parquet"
    raw.to_parquet(path)
    got = signals_frame(str(path))
    assert got["datetime"].iloc[0] == pd.Timestamp("2024-01-01 00:00")  # naive UTC
    assert got["position_size"].iloc[0] == 0.1 and got["signal"].iloc[0] == "SELL"
    with pytest.raises(ConfigError, match="position_size"):
        signals_frame(raw.drop(columns=["position_size"]))
    with pytest.raises(ConfigError, match="does not exist"):
        signals_frame(str(tmp_path / "missing.parquet"))
    pred = pd.Series(
        [1.0, 2.0],
        index=pd.MultiIndex.from_tuples(
            [("A", pd.Timestamp("2024-01-01")), ("B", pd.Timestamp("2024-01-01"))], names=["instrument", "datetime"]
        ),
    )
    sf = scores_frame(pred.to_frame("score"))
    assert list(sf.columns) == ["datetime", "instrument", "score"] and sf["score"].tolist() == [1.0, 2.0]
