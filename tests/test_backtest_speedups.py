"""The speed-ups of the crypto backtest give Qlib's own answers.

References are independent of the fast code: Qlib's ``NumpyQuote`` and ``Indicator`` / ``NumpyOrderIndicator``,
pandas' ``unstack`` and numpy's ``nansum`` / ``nanmean``.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from qlib.backtest.decision import Order
from qlib.backtest.high_performance_ds import NumpyQuote
from qlib.backtest.report import Indicator
from qlib.utils import index_data as idd

from qlib_crypto.backtest import FastQuote
from qlib_crypto.backtest.executor import FastIndicator, FastOrderIndicator, _nanmean, _nansum

TIMES = pd.date_range("2024-01-01", periods=30, freq="h")


def _quote_df(seed: int = 0) -> pd.DataFrame:
    """A shuffled quote frame with missing rows, NaN closes and a bool column (like Qlib's limit flags)."""
    rng = np.random.default_rng(seed)
    idx = pd.MultiIndex.from_product([["B-USDT", "A-USDT", "C-USDT-SWAP"], TIMES], names=["instrument", "datetime"])
    df = pd.DataFrame(
        {
            "$close": rng.uniform(1, 100, len(idx)).astype("float32"),
            "$volume": rng.uniform(0, 1e3, len(idx)),
            "limit_buy": rng.random(len(idx)) > 0.5,
        },
        index=idx,
    )
    df.loc[rng.random(len(idx)) < 0.15, "$close"] = np.nan
    keep = np.sort(rng.permutation(len(idx))[: len(idx) - 12])  # 12 (instrument, bar) rows missing
    return df.iloc[keep].sample(frac=1.0, random_state=seed)


def test_fast_quote_arrays_equal_pandas_pivot():
    df = _quote_df()
    quote = FastQuote(df, "60min")
    assert list(quote.times) == list(TIMES)
    assert quote.instruments == ["A-USDT", "B-USDT", "C-USDT-SWAP"]
    for column in df.columns:
        wide = df[column].unstack(level="instrument").reindex(index=TIMES, columns=quote.instruments)
        if column == "limit_buy":
            expected = wide.astype(object).where(wide.notna(), True).to_numpy(dtype=bool)  # missing row: limited
        else:
            expected = wide.to_numpy(dtype=np.float64)
        got = quote.arrays[column]
        assert got.dtype == expected.dtype
        np.testing.assert_array_equal(got, expected, err_msg=column)
    np.testing.assert_array_equal(quote.suspended, np.isnan(quote.arrays["$close"]))


def test_fast_quote_single_bar_answers_equal_numpy_quote():
    df = _quote_df(seed=1)
    fast, ref = FastQuote(df, "60min"), NumpyQuote(df, "60min")
    checked = 0
    for inst in ["A-USDT", "B-USDT", "C-USDT-SWAP"]:
        for t in TIMES[::3]:
            end = t + pd.Timedelta(minutes=59, seconds=59)
            assert fast.locate(inst, t, end) == (list(TIMES).index(t), fast.instruments.index(inst))
            for field, method in (("$close", "ts_data_last"), ("$volume", "sum"), ("$close", None)):
                want = ref.get_data(inst, t, end, field, method)
                got = fast.get_data(inst, t, end, field, method)
                if isinstance(want, idd.SingleData):  # method None: Qlib's series of the one bar, ours its value
                    assert len(want.data) == 1
                    want = float(want.data[0])
                if want is None or (isinstance(want, float) and np.isnan(want)):
                    assert got is None or np.isnan(got), (inst, t, field, method, got)
                else:
                    assert got == pytest.approx(float(want), rel=0, abs=0), (inst, t, field, method)
                checked += 1
    assert checked == 3 * 10 * 3
    # a query spanning two bars is not a single bar: no fast location, Qlib's aggregation answers
    assert fast.locate("A-USDT", TIMES[0], TIMES[1] + pd.Timedelta(minutes=30)) is None
    assert fast.locate("X-USDT", TIMES[0], TIMES[0]) is None


def _trade_info(rng: np.random.Generator, n: int, duplicate: bool = False, zero_amount: bool = False) -> list:
    t = TIMES[5]
    out = []
    for i in range(n):
        amount = 0.0 if (zero_amount and i == 0) else float(rng.uniform(0.1, 5))
        order = Order(
            stock_id=f"I{(i % 2 if duplicate else i):02d}",
            amount=amount,
            start_time=t,
            end_time=t + pd.Timedelta(minutes=59),
            direction=Order.BUY if rng.random() < 0.5 else Order.SELL,
        )
        order.deal_amount = amount * float(rng.choice([0.0, 0.5, 1.0]))
        order.factor = 1.0
        out.append((order, float(rng.uniform(0, 1e4)), float(rng.uniform(0, 10)), float(rng.uniform(1, 100))))
    return out


@pytest.mark.parametrize(
    "n, duplicate, zero_amount",
    [(6, False, False), (1, False, False), (0, False, False), (5, True, False), (4, False, True), (40, False, False)],
)
def test_fast_indicator_equals_qlib_indicator(n, duplicate, zero_amount):
    trade_info = _trade_info(np.random.default_rng(n), n, duplicate, zero_amount)
    qlib_ind = Indicator()
    fast_ind = FastIndicator(order_indicator_cls=FastOrderIndicator)  # as CryptoExecutor installs it on the account
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # empty bars: mean of an empty slice, in both
        for ind in (qlib_ind, fast_ind):
            ind.reset()
            ind.update_order_indicators(trade_info)
            ind.cal_trade_indicators(TIMES[5], "60min", {})
            ind.record(TIMES[5])
    assert type(fast_ind.order_indicator) is FastOrderIndicator
    q, f = qlib_ind.order_indicator.data, fast_ind.order_indicator.data
    assert list(q) == list(f)
    for name in q:
        assert list(f[name].index) == list(q[name].index), name
        assert f[name].data.dtype == q[name].data.dtype, name
        np.testing.assert_array_equal(f[name].data, q[name].data, err_msg=name)
    assert (
        list(fast_ind.trade_indicator)
        == list(qlib_ind.trade_indicator)
        == ["ffr", "pa", "pos", "deal_amount", "value", "count"]
    )
    for name, want in qlib_ind.trade_indicator.items():
        got = fast_ind.trade_indicator[name]
        assert type(got) is type(want), name
        assert got == want or (np.isnan(got) and np.isnan(want)), (name, got, want)
    # the trade value indicator is the sum of |value| over the distinct instruments (last order per instrument)
    last = {order.stock_id: value for order, value, _, _ in trade_info}
    assert fast_ind.trade_indicator["value"] == pytest.approx(sum(last.values()), rel=1e-12)
    assert fast_ind.trade_indicator["count"] == len(last)


def test_nan_reductions_equal_numpy():
    rng = np.random.default_rng(4)
    for n in (1, 2, 7, 8, 9, 16, 17, 129, 1000):
        for _ in range(30):
            values = rng.normal(size=n) * 10.0 ** rng.integers(-6, 9, size=n)
            if rng.random() < 0.3:
                values[rng.integers(n)] = np.nan
            assert _nansum(values) == np.nansum(values)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN slice
                want, got = np.nanmean(values), _nanmean(values)
            assert type(got) is type(want)
            assert got == want or (np.isnan(got) and np.isnan(want))


@pytest.mark.parametrize(
    "config",
    [{}, {"ffr_config": {"weight_method": "amount_weighted"}, "pa_config": {"weight_method": "value_weighted"}}],
)
def test_empty_bar_indicators_equal_qlibs_on_every_bar(config):
    """Bars without orders reuse the values Qlib's path gave the first one: every bar's trade indicators, the
    recorded history and its DataFrame are Qlib's, through a run mixing empty bars and bars with orders."""
    rng = np.random.default_rng(7)
    bars = [0, 0, 3, 0, 1, 0, 0, 2, 0]  # orders per bar
    qlib_ind = Indicator()
    fast_ind = FastIndicator(order_indicator_cls=FastOrderIndicator)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # empty bars: mean of an empty slice
        for t, n in zip(TIMES, bars):
            trade_info = _trade_info(rng, n)
            for ind in (qlib_ind, fast_ind):
                ind.reset()
                ind.update_order_indicators(trade_info)
                ind.cal_trade_indicators(t, "60min", config)
                ind.record(t)
            want, got = qlib_ind.get_trade_indicator(), fast_ind.get_trade_indicator()
            assert list(got) == list(want)
            for name in want:
                assert type(got[name]) is type(want[name]), (t, name)
                assert got[name] == want[name] or (np.isnan(got[name]) and np.isnan(want[name])), (t, name)
            assert got is not fast_ind.empty_bar_indicators.get(("mean", "mean"))  # a fresh dict per bar
    assert len(fast_ind.empty_bar_indicators) == 1
    pd.testing.assert_frame_equal(
        fast_ind.generate_trade_indicators_dataframe(), qlib_ind.generate_trade_indicators_dataframe()
    )
    assert list(fast_ind.order_indicator_his) == list(qlib_ind.order_indicator_his)
    for t in qlib_ind.order_indicator_his:
        f, q = fast_ind.order_indicator_his[t].data, qlib_ind.order_indicator_his[t].data
        assert list(f) == list(q)
        for name in q:
            assert list(f[name].index) == list(q[name].index), (t, name)
            assert f[name].index.idx_list.dtype == q[name].index.idx_list.dtype, (t, name)
            assert f[name].index.is_sorted() == q[name].index.is_sorted(), (t, name)
            assert f[name].data.dtype == q[name].data.dtype, (t, name)
            np.testing.assert_array_equal(f[name].data, q[name].data, err_msg=f"{t} {name}")
    # the bars without orders took the shared-empty path (one empty metric object, one cached ffr)
    empty_bars = [t for t, n in zip(TIMES, bars) if n == 0]
    for t in empty_bars:
        f = fast_ind.order_indicator_his[t].data
        assert f["amount"] is FastOrderIndicator.empty_metric and f["pa"] is FastOrderIndicator.empty_metric
        assert f["ffr"] is fast_ind.order_indicator_his[empty_bars[0]].data["ffr"]
    # ... and the shared empty metric is still what Qlib builds for an empty dict
    fresh = idd.SingleData({})
    shared = FastOrderIndicator.empty_metric
    assert shared.data.dtype == fresh.data.dtype and shared.data.shape == fresh.data.shape
    assert shared.index.idx_list.dtype == fresh.index.idx_list.dtype and list(shared.index) == list(fresh.index)


def test_empty_metric_transfer_caches_only_qlibs_pure_functions():
    """A function outside Qlib's ``report`` module (or a closure) on the shared empty metrics runs every time."""
    calls = []

    def user_func(amount, deal_amount):
        calls.append(1)
        return amount / deal_amount

    for _ in range(3):
        order_indicator = FastOrderIndicator()
        order_indicator.assign("amount", {})
        order_indicator.assign("deal_amount", {})
        order_indicator.transfer(user_func, "ratio")
        assert order_indicator.data["ratio"] is not FastOrderIndicator.empty_metric
    assert len(calls) == 3


def test_empty_bar_with_show_indicator_takes_qlibs_path(capsys):
    fast_ind = FastIndicator(order_indicator_cls=FastOrderIndicator)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for t in TIMES[:2]:
            fast_ind.reset()
            fast_ind.update_order_indicators([])
            fast_ind.cal_trade_indicators(t, "60min", {"show_indicator": True})
    assert capsys.readouterr().out.count("[Indicator(60min)") == 2
    assert fast_ind.empty_bar_indicators == {}
