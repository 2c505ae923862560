"""Signal rules and sizes, checked by hand on small score tables."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from qlib_crypto.errors import ConfigError
from qlib_crypto.workflow.signals import (
    SignalRules,
    default_vol_window,
    make_signals,
    realised_volatility,
)

T1 = pd.Timestamp("2024-01-01 00:00")
T2 = pd.Timestamp("2024-01-01 01:00")


def _scores(rows):
    idx = pd.MultiIndex.from_tuples([(t, i) for t, i, _ in rows], names=["datetime", "instrument"])
    return pd.Series([s for _, _, s in rows], index=idx, name="score")


def _by_inst(df, t):
    part = df[df["datetime"] == t].set_index("instrument")
    return part["signal"].to_dict(), part["position_size"].to_dict()


def test_threshold_mode_and_caps():
    scores = _scores([(T1, "A", 0.03), (T1, "B", 0.005), (T1, "C", -0.02), (T1, "D", float("nan"))])
    rules = SignalRules(mode="threshold", buy_threshold=0.01, sell_threshold=-0.01, max_position=0.25, max_total=1.0)
    out = make_signals(scores, rules)
    assert list(out.columns) == ["datetime", "instrument", "score", "signal", "position_size"]
    sig, size = _by_inst(out, T1)
    assert sig == {"A": "BUY", "B": "HOLD", "C": "SELL", "D": "HOLD"}
    # gross 0.5 <= max_total: no scaling
    assert size == pytest.approx({"A": 0.25, "B": 0.0, "C": -0.25, "D": 0.0})


def test_threshold_boundary_is_hold():
    scores = _scores([(T1, "A", 0.01), (T1, "B", -0.01)])
    out = make_signals(scores, SignalRules(mode="threshold", buy_threshold=0.01, sell_threshold=-0.01))
    assert list(out["signal"]) == ["HOLD", "HOLD"]


def test_quantile_mode_per_datetime_and_total_cap():
    # 5 instruments, 40% top / 20% bottom -> floor(2.0)=2 BUY, floor(1.0)=1 SELL at T1;
    # at T2 only 3 valid scores -> floor(1.2)=1 BUY, floor(0.6)=0 SELL.
    rows = [
        (T1, "A", 5.0),
        (T1, "B", 1.0),
        (T1, "C", 3.0),
        (T1, "D", -2.0),
        (T1, "E", 0.5),
        (T2, "A", -1.0),
        (T2, "B", 2.0),
        (T2, "C", 0.0),
        (T2, "D", float("nan")),
        (T2, "E", float("nan")),
    ]
    rules = SignalRules(mode="rank", buy_quantile=0.4, sell_quantile=0.2, max_position=0.5, max_total=1.2)
    out = make_signals(_scores(rows), rules)
    sig1, size1 = _by_inst(out, T1)
    assert sig1 == {"A": "BUY", "B": "HOLD", "C": "BUY", "D": "SELL", "E": "HOLD"}
    # gross = 3 x 0.5 = 1.5 > 1.2 -> each scaled by 1.2 / 1.5 = 0.8 -> 0.4
    assert size1 == pytest.approx({"A": 0.4, "B": 0.0, "C": 0.4, "D": -0.4, "E": 0.0})
    sig2, size2 = _by_inst(out, T2)
    assert sig2 == {"A": "HOLD", "B": "BUY", "C": "HOLD", "D": "HOLD", "E": "HOLD"}
    assert size2 == pytest.approx({"A": 0.0, "B": 0.5, "C": 0.0, "D": 0.0, "E": 0.0})
    assert abs(out.groupby("datetime")["position_size"].apply(lambda s: s.abs().sum())).max() <= 1.2 + 1e-12


def test_long_only_sell_has_zero_size():
    scores = _scores([(T1, "A", 1.0), (T1, "B", -1.0)])
    rules = SignalRules(mode="threshold", long_only=True, max_position=0.3)
    out = make_signals(scores, rules)
    sig, size = _by_inst(out, T1)
    assert sig == {"A": "BUY", "B": "SELL"}
    assert size == pytest.approx({"A": 0.3, "B": 0.0})


def test_vol_target_sizes_then_total_cap():
    # size = min(max_position, vol_target / vol): A 0.4/0.8=0.5 -> capped at 0.3; B 0.4/2.0 = 0.2;
    # C 0.4/4.0 = 0.1 (SELL); D NaN vol -> 0. Gross 0.6 > 0.45 -> scale 0.75.
    scores = _scores([(T1, "A", 3.0), (T1, "B", 2.0), (T1, "C", -1.0), (T1, "D", 5.0)])
    vol = pd.Series([0.8, 2.0, 4.0, float("nan")], index=scores.index)
    rules = SignalRules(mode="threshold", max_position=0.3, max_total=0.45, vol_target=0.4)
    out = make_signals(scores, rules, volatility=vol)
    sig, size = _by_inst(out, T1)
    assert sig == {"A": "BUY", "B": "BUY", "C": "SELL", "D": "BUY"}
    assert size == pytest.approx({"A": 0.3 * 0.75, "B": 0.2 * 0.75, "C": -0.1 * 0.75, "D": 0.0})


def test_vol_target_needs_volatility():
    with pytest.raises(ConfigError, match="vol_target"):
        make_signals(_scores([(T1, "A", 1.0)]), SignalRules(vol_target=0.5))


def test_realised_volatility_by_hand():
    close = pd.DataFrame({"A": [100.0, 110.0, 99.0, 99.0]}, index=pd.date_range("2024-01-01", periods=4, freq="h"))
    vol = realised_volatility(close, window=3, bars_per_year=8760)
    r = [math.log(110 / 100), math.log(99 / 110), 0.0]
    mean = sum(r) / 3
    std = math.sqrt(sum((x - mean) ** 2 for x in r) / 2)
    assert vol["A"].iloc[-1] == pytest.approx(std * math.sqrt(8760))
    assert default_vol_window("60min") == 168 and default_vol_window("day") == 20


def test_rules_from_yaml_and_overrides(tmp_path):
    p = tmp_path / "rules.yaml"
    p.write_text("rules:\n  mode: threshold\n  buy_threshold: 0.02\n  sell_threshold: -0.01\n  max_total: 0.5\n")
    rules = SignalRules.from_yaml(p)
    assert (rules.mode, rules.buy_threshold, rules.sell_threshold, rules.max_total) == ("threshold", 0.02, -0.01, 0.5)
    assert rules.max_position == 0.1  # default kept
    r2 = rules.updated(max_position=0.2, buy_threshold=None)
    assert (r2.max_position, r2.buy_threshold) == (0.2, 0.02)


@pytest.mark.parametrize(
    "values, match",
    [
        ({"mode": "momentum"}, "momentum"),
        ({"buy_treshold": 0.1}, "buy_threshold"),
        ({"mode": "threshold", "buy_threshold": -0.1, "sell_threshold": 0.1}, "sell_threshold"),
        ({"buy_quantile": 0.7, "sell_quantile": 0.5}, "exceeds 1"),
        ({"max_total": -1}, "max_total"),
    ],
)
def test_bad_rules_are_config_errors(values, match):
    with pytest.raises(ConfigError, match=match):
        SignalRules.from_dict(values)


def test_scores_in_instrument_datetime_order_and_frame_input():
    idx = pd.MultiIndex.from_tuples([("A", T1), ("B", T1)], names=["instrument", "datetime"])
    s = pd.Series([1.0, -1.0], index=idx)
    out = make_signals(s, SignalRules(mode="threshold"))
    assert list(out["instrument"]) == ["A", "B"] and list(out["signal"]) == ["BUY", "SELL"]
    frame = pd.DataFrame({"datetime": [T1, T1], "instrument": ["B", "A"], "score": [0.5, 2.0]})
    out2 = make_signals(frame, SignalRules(mode="quantile", buy_quantile=0.5, sell_quantile=0.5))
    assert list(out2["instrument"]) == ["A", "B"] and list(out2["signal"]) == ["BUY", "SELL"]
    assert np.allclose(out2["position_size"], [0.1, -0.1])
