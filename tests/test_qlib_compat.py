"""Seams with Qlib: every Qlib internal we rely on lives in ``qlib_crypto/backtest/_qlib_compat.py`` and has a
test here against the installed Qlib, so an upgrade that changes one fails in this file, by name.

Also: no other module of ``qlib_crypto.backtest`` / ``qlib_crypto.strategy`` touches a Qlib private name,
replaces an object's ``__class__``, or overrides a private Qlib hook; the executor extends
``SimulatorExecutor._collect_data`` through ``super()``; fills, funding and order reports leave a backtest through
the executor's API (not through ``DataFrame.attrs``).
"""

from __future__ import annotations

import ast
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import qlib
from qlib.backtest.account import Account
from qlib.backtest.decision import Order
from qlib.backtest.exchange import Exchange
from qlib.backtest.executor import SimulatorExecutor
from qlib.backtest.position import Position
from qlib.backtest.report import Indicator, PortfolioMetrics
from tiny_provider import scripted_strategy, use_provider

from qlib_crypto.backtest import (
    CryptoExchange,
    CryptoExecutor,
    CryptoPortfolioMetrics,
    CryptoPosition,
)
from qlib_crypto.backtest import (
    _qlib_compat as compat,
)
from qlib_crypto.backtest.executor import CryptoTradeCalendar, FastIndicator, FastOrderIndicator

PKG = Path(compat.__file__).resolve().parents[1]
IDX = pd.date_range("2024-01-01", periods=6, freq="h")
BARS = {
    "AAA-USDT": pd.DataFrame(
        {
            "open": [10.0] * 6,
            "high": [11.0] * 6,
            "low": [9.0] * 6,
            "close": [10.0, 10.0, 12.0, 12.0, 11.0, 11.0],
            "volume": [1e6] * 6,
        },
        index=IDX,
    ),
    "BBB-USDT-SWAP": pd.DataFrame(
        {
            "open": [50.0] * 6,
            "high": [51.0] * 6,
            "low": [49.0] * 6,
            "close": [50.0, 50.0, 48.0, 45.0, 46.0, 46.0],
            "volume": [1e6] * 6,
        },
        index=IDX,
    ),
}


def _account() -> Account:
    return Account(init_cash=1000.0, benchmark_config={"benchmark": None}, freq="60min")


def _order(stock: str, direction, amount: float) -> Order:
    return Order(stock_id=stock, amount=amount, direction=direction, start_time=IDX[1], end_time=IDX[2])


# ------------------------------------------------------------------------------------------- the version pin
def test_installed_qlib_is_the_version_the_hooks_were_written_for():
    assert compat.qlib_version() == compat.QLIB_VERSION == qlib.__version__, (
        "Qlib changed: re-check every function of qlib_crypto/backtest/_qlib_compat.py (and this file)"
    )


# ---------------------------------------------------------------------------- one test per touched internal
def test_sort_quote_fields_orders_the_columns_get_quote_from_qlib_loads():
    """Exchange.__init__ sets ``all_fields`` before calling get_quote_from_qlib, which loads exactly those
    columns in that order."""
    use_provider("compat", BARS)
    seen = {}

    class Probe(Exchange):
        def get_quote_from_qlib(self):
            seen["before"] = list(self.all_fields)
            compat.sort_quote_fields(self)
            super().get_quote_from_qlib()

    ex = Probe(
        freq="60min",
        start_time=IDX[0],
        end_time=IDX[-1],
        codes=list(BARS),
        deal_price="close",
        subscribe_fields=["$open", "$high", "$low"],
        limit_threshold=None,
        trade_unit=None,
    )
    assert sorted(seen["before"]) == ex.all_fields  # the same names, sorted
    assert {"$close", "$factor", "$volume", "$open"} <= set(ex.all_fields)
    assert list(ex.quote_df.columns[: len(ex.all_fields)]) == ex.all_fields


def test_quote_features_replaces_the_loader_get_quote_from_qlib_calls():
    """Exchange.get_quote_from_qlib loads its quote through ``qlib.backtest.exchange.D.features`` with
    (codes, all_fields, start, end, freq=..., disk_cache=True); within ``compat.quote_features`` it calls ours,
    and Qlib's ``D`` is back afterwards."""
    import qlib.backtest.exchange as qlib_exchange
    from qlib.data import D

    use_provider("compat", BARS)
    calls = []

    def probe(instruments, fields, start_time=None, end_time=None, freq="day", **kwargs):
        calls.append((list(instruments), list(fields), start_time, end_time, freq, kwargs))
        return D.features(instruments, fields, start_time, end_time, freq=freq, **kwargs)

    before = qlib_exchange.D
    with compat.quote_features(probe):
        ex = Exchange(
            freq="60min",
            start_time=IDX[0],
            end_time=IDX[-1],
            codes=list(BARS),
            deal_price="close",
            limit_threshold=None,
            trade_unit=None,
        )
    assert qlib_exchange.D is before
    assert calls == [(list(BARS), ex.all_fields, IDX[0], IDX[-1], "60min", {"disk_cache": True})]
    assert len(ex.quote_df) == 12


def test_the_fast_quote_is_qlibs_quote_frame_on_gaps_and_late_listings():
    """CryptoExchange reads its quote with the fast engine: the same frame as Qlib's ``D.features`` (index, rows,
    columns, float32 bits), on instruments with a gap, a late listing and an early delisting."""
    from qlib.data import D

    from qlib_crypto.backtest.exchange import _quote_features

    idx = pd.date_range("2024-01-01", periods=48, freq="h")
    rng = np.random.default_rng(3)

    def bars(index):
        close = 100 * np.exp(np.cumsum(rng.normal(0, 0.01, len(index))))
        return pd.DataFrame(
            {
                "open": close * 1.001,
                "high": close * 1.01,
                "low": close * 0.99,
                "close": close,
                "volume": rng.uniform(1, 100, len(index)),
            },
            index=index,
        )

    gappy = bars(idx).drop(idx[10:15])
    use_provider(
        "compat_quote",
        {"AAA-USDT": bars(idx), "GAP-USDT": gappy, "LATE-USDT": bars(idx[20:]), "EARLY-USDT-SWAP": bars(idx[:30])},
    )
    fields = ["$close", "$factor", "$funding_rate", "$high", "$low", "$open", "$volume"]
    codes = ["AAA-USDT", "EARLY-USDT-SWAP", "GAP-USDT", "LATE-USDT"]
    for start, end in ((idx[0], idx[-1]), (idx[12], idx[25]), (idx[31], idx[40])):
        ours = _quote_features(codes, fields, start, end, freq="60min", disk_cache=True)
        theirs = D.features(codes, fields, start, end, freq="60min", disk_cache=True)
        pd.testing.assert_index_equal(ours.index, theirs.index, exact=True)
        assert list(ours.columns) == list(theirs.columns) == fields
        assert (ours.dtypes == np.float32).all() and (theirs.dtypes == np.float32).all()
        a, b = ours.to_numpy(), theirs.to_numpy()
        assert np.array_equal(np.isnan(a), np.isnan(b))
        assert np.array_equal(a.view(np.uint32)[~np.isnan(a)], b.view(np.uint32)[~np.isnan(b)])


def test_add_and_remove_position_entry_are_qlibs_init_and_del_stock():
    pos = Position(cash=100.0)
    compat.add_position_entry(pos, "AAA-USDT", 2.0, 10.0)
    assert pos.check_stock("AAA-USDT") and pos.get_stock_amount("AAA-USDT") == 2.0
    assert pos.get_stock_price("AAA-USDT") == 10.0 and pos.get_stock_weight("AAA-USDT") == 0
    assert pos.calculate_value() == 100.0 + 2.0 * 10.0
    compat.remove_position_entry(pos, "AAA-USDT")
    assert not pos.check_stock("AAA-USDT") and pos.get_stock_list() == []


def test_position_settle_type_follows_settle_start_and_commit():
    """A sale's proceeds go to ``cash_delay`` while Qlib's settlement mode is ``cash`` (read from the private
    ``_settle_type``): CryptoPosition books them where Qlib's Position does."""
    qlib_pos, ours = (
        Position(cash=0.0, position_dict={"AAA-USDT": {"amount": 3.0, "price": 10.0}}),
        CryptoPosition(cash=0.0, position_dict={"AAA-USDT": {"amount": 3.0, "price": 10.0}}),
    )
    for pos in (qlib_pos, ours):
        assert compat.position_settle_type(pos) == Position.ST_NO
        pos.settle_start(Position.ST_CASH)
        assert compat.position_settle_type(pos) == Position.ST_CASH
        pos.update_order(_order("AAA-USDT", Order.SELL, 1.0), trade_val=10.0, cost=0.5, trade_price=10.0)
    assert ours.position["cash_delay"] == qlib_pos.position["cash_delay"] == 9.5
    for pos in (qlib_pos, ours):
        pos.settle_commit()
        assert compat.position_settle_type(pos) == Position.ST_NO
    assert ours.get_cash() == qlib_pos.get_cash() == 9.5


def test_install_account_parts_the_account_then_uses_them():
    account = _account()
    account.reset(freq="60min", benchmark_config={"benchmark": None}, port_metr_enabled=True)
    pm = CryptoPortfolioMetrics("60min", {"benchmark": pd.Series(0.01, index=IDX)})
    ind = FastIndicator(order_indicator_cls=FastOrderIndicator)
    compat.install_account_parts(account, portfolio_metrics=pm, indicator=ind)
    account.update_bar_end(
        IDX[1], IDX[2] - pd.Timedelta(seconds=1), None, atomic=True, outer_trade_decision=None, trade_info=[]
    )
    df, _ = account.get_portfolio_metrics()
    assert account.get_trade_indicator() is ind and list(ind.trade_indicator_his) == [IDX[1]]
    assert list(df.index) == [IDX[1]] and df["account"].iloc[0] == 1000.0
    assert df["bench"].iloc[0] == pytest.approx(0.01, rel=1e-15)  # sampled by our subclass from the Series
    assert {"fees", "slippage", "funding", "gross_exposure", "leverage"} <= set(df.columns)


def test_replace_account_position_then_orders_book_on_it():
    account = _account()
    new = CryptoPosition(cash=1000.0)
    compat.replace_account_position(account, new)
    assert account.current_position is new
    account.update_order(_order("AAA-USDT", Order.BUY, 2.0), trade_val=20.0, cost=0.1, trade_price=10.0)
    assert new.get_stock_amount("AAA-USDT") == 2.0 and new.get_cash() == pytest.approx(1000.0 - 20.1)


def test_account_books_a_sells_return_before_the_position_update():
    """What ``CryptoPosition.open_entry`` relies on: Account.update_order reads the held price of a SELL before it
    applies the order, so a short opened without an entry books a NaN return, and one with ``open_entry`` at the
    fill price books 0 (as a buy that opens a long does)."""
    for opened, expect_nan in ((False, True), (True, False)):
        account = _account()
        compat.replace_account_position(account, CryptoPosition(cash=1000.0))
        if opened:
            account.current_position.open_entry("BBB-USDT-SWAP", 50.0)
        account.update_order(_order("BBB-USDT-SWAP", Order.SELL, 1.0), trade_val=50.0, cost=0.0, trade_price=50.0)
        assert math.isnan(account.accum_info.get_return) == expect_nan
        assert account.current_position.get_stock_amount("BBB-USDT-SWAP") == -1.0
    assert account.accum_info.get_return == 0.0


def test_level_infrastructure_keeps_the_executors_calendar():
    """``LevelInfrastructure.reset_cal`` resets an installed calendar instead of replacing it, so the strategy of
    the level shares ``CryptoTradeCalendar``; its step times are Qlib's."""
    use_provider("compat", BARS)
    ex = CryptoExecutor(time_per_step="60min", start_time=IDX[1], end_time=IDX[4])
    cal = ex.trade_calendar
    assert type(cal) is CryptoTradeCalendar
    ex.reset(start_time=IDX[2], end_time=IDX[4])
    assert ex.trade_calendar is cal and cal.get_trade_len() == 3
    from qlib.backtest.utils import TradeCalendarManager

    ref = TradeCalendarManager("60min", start_time=IDX[2], end_time=IDX[4])
    for step in range(3):
        for shift in (0, 1):
            assert cal.get_step_time(step, shift) == ref.get_step_time(step, shift)
            assert cal.get_step_time(step, shift) is cal.get_step_time(step, shift)


# ------------------------------------------------------------------------- no private reach-ins elsewhere
def _qlib_private_names() -> set[str]:
    """Private names (``_x``, not dunder) that Qlib's backtest and strategy classes define or set on ``self``."""
    root = Path(qlib.__file__).parent
    names: set[str] = set()
    for path in list((root / "backtest").glob("*.py")) + [root / "strategy" / "base.py"]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                name = node.name
            elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "self":
                name = node.attr
            else:
                continue
            if name.startswith("_") and not name.startswith("__"):
                names.add(name)
    return names


def _our_modules() -> list[Path]:
    return sorted(
        p
        for p in list((PKG / "backtest").glob("*.py")) + list((PKG / "strategy").glob("*.py"))
        if p.name != "_qlib_compat.py"
    )


def test_only_the_compat_module_touches_qlib_internals():
    """Outside ``_qlib_compat.py``: no Qlib private name is read, written, called or overridden (except the
    executor's ``_collect_data``, Qlib's documented executor hook, always extended through ``super()``), and no
    object gets a new ``__class__``. (A private name of our own that collides with one of Qlib's fails too:
    rename it.)"""
    qlib_private = _qlib_private_names()
    assert {
        "_init_stock",
        "_del_stock",
        "_settle_type",
        "_sample_benchmark",
        "_calc_trade_info_by_order",
        "_update_order_trade_info",
        "_update_order_fulfill_rate",
        "_collect_data",
        "_get_order_iterator",
    } <= qlib_private
    bad = []
    for path in _our_modules():
        for node in ast.walk(ast.parse(path.read_text())):
            where = f"{path.name}:{getattr(node, 'lineno', '?')}"
            if isinstance(node, ast.Attribute):
                if node.attr == "__class__" and isinstance(node.ctx, ast.Store):
                    bad.append(f"{where} assigns __class__")
                elif node.attr == "_collect_data":
                    if not (isinstance(node.value, ast.Call) and getattr(node.value.func, "id", None) == "super"):
                        bad.append(f"{where} uses _collect_data other than through super()")
                elif node.attr in qlib_private:
                    bad.append(f"{where} uses Qlib's private {node.attr}")
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                if node.name in qlib_private and node.name != "_collect_data":
                    bad.append(f"{where} overrides Qlib's private {node.name}")
    assert bad == []


def test_no_private_qlib_hook_is_overridden():
    assert CryptoExchange._calc_trade_info_by_order is Exchange._calc_trade_info_by_order
    assert CryptoPortfolioMetrics._sample_benchmark is PortfolioMetrics._sample_benchmark
    assert FastIndicator.update_order_indicators is Indicator.update_order_indicators
    assert "_del_stock" not in CryptoPosition.__dict__ and "_init_stock" not in CryptoPosition.__dict__


def scripted_backtest(script: dict, executor: CryptoExecutor, idx: pd.DatetimeIndex, codes: list[str]):
    """Qlib's ``backtest`` of ``script`` (``scripted_strategy``) from ``idx[1]`` to ``idx[4]`` through ``executor``,
    a ``CryptoExchange`` on ``codes`` and ``CryptoPosition``, 1,000 of cash, a flat benchmark."""
    from qlib.backtest import backtest

    return backtest(
        idx[1],
        idx[4],
        strategy=scripted_strategy(script),
        executor=executor,
        benchmark=pd.Series(0.0, index=idx),
        account=1000.0,
        exchange_kwargs={
            "exchange": {
                "class": "CryptoExchange",
                "module_path": "qlib_crypto.backtest",
                "kwargs": {"freq": "60min", "codes": codes, "start_time": idx[1], "end_time": idx[4]},
            }
        },
        pos_type="qlib_crypto.backtest.CryptoPosition",
    )


def test_executor_extends_qlibs_step_through_super(monkeypatch):
    """Each step runs Qlib's own ``SimulatorExecutor._collect_data`` (the order loop), with funding before and
    the liquidation check after it; fills and order reports come from the executor's API."""

    use_provider("compat", BARS)
    calls = []
    original = SimulatorExecutor._collect_data

    def counting(self, trade_decision, level=0):
        calls.append(len(trade_decision.get_decision()))
        return original(self, trade_decision, level=level)

    monkeypatch.setattr(SimulatorExecutor, "_collect_data", counting)
    ex = CryptoExecutor(time_per_step="60min", generate_portfolio_metrics=True, max_leverage=None)
    script = {IDX[1]: [("AAA-USDT", "buy", 3.0)], IDX[3]: [("AAA-USDT", "sell", 3.0), ("BBB-USDT-SWAP", "sell", 1.0)]}
    pm, _ = scripted_backtest(script, ex, IDX, list(BARS))
    assert calls == [1, 0, 2, 0]  # once per step, with that step's orders
    report, _ = pm["60min"]
    assert report.attrs == {}
    result = ex.result()
    assert list(result.fills["side"]) == ["buy", "sell", "sell"]
    assert list(result.order_reports["status"]) == ["filled", "filled", "filled"]
    # account: buy 3 at 10 (bar 1), sell 3 at 12 and short 1 at 45 (bar 3), the short marked at 46 at the end
    # (bar 4); taker fees: spot 0.1%, swap 0.05%
    fees = 3 * 10 * 0.001 + 3 * 12 * 0.001 + 45 * 0.0005
    assert report["account"].iloc[-1] == pytest.approx(1000.0 + 3 * (12 - 10) + (45 - 46) - fees, rel=1e-12)
    assert result.totals["fees_paid"] == pytest.approx(fees, rel=1e-12)
    assert isinstance(ex.trade_account.portfolio_metrics, CryptoPortfolioMetrics)
    assert type(ex.trade_account.get_trade_indicator()) is FastIndicator


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_bar_benchmark_equals_qlibs_sampling(dtype):
    """The benchmark lookup gives Qlib's own values (``_sample_benchmark``: ``resam_ts_data`` of the Series) on
    bars with a value, on a bar without one and over several bars, in float64 and in float32 (Qlib's data)."""
    bench = pd.Series([0.01, -0.02, 0.003, 0.0, 0.05], index=IDX[[0, 1, 2, 4, 5]], dtype=dtype)
    kw = dict(
        account_value=1.0,
        cash=1.0,
        return_rate=0.0,
        total_turnover=0.0,
        turnover_rate=0.0,
        total_cost=0.0,
        cost_rate=0.0,
        stock_value=0.0,
    )
    one_bar = [(IDX[i], IDX[i + 1] - pd.Timedelta(seconds=1)) for i in range(5)]
    for spans in (one_bar, [(IDX[0], IDX[3] - pd.Timedelta(seconds=1))]):
        qlib_pm = PortfolioMetrics("60min", {"benchmark": bench})
        ours = CryptoPortfolioMetrics("60min", {"benchmark": bench})
        for start, end in spans:
            for pm in (qlib_pm, ours):
                pm.update_portfolio_metrics_record(trade_start_time=start, trade_end_time=end, **kw)
        q = qlib_pm.generate_portfolio_metrics_dataframe()["bench"]
        o = ours.generate_portfolio_metrics_dataframe()["bench"]
        assert list(q.index) == list(o.index) == [s for s, _ in spans]
        np.testing.assert_array_equal(o.to_numpy(dtype=float), q.to_numpy(dtype=float))
    assert ours.bar_benchmark(IDX[3], IDX[4] - pd.Timedelta(seconds=1)) == 0.0  # no value on the bar
    with_nan = CryptoPortfolioMetrics("60min", {"benchmark": bench.where(bench.index != IDX[1])})
    assert with_nan.bar_benchmark(IDX[1], IDX[2] - pd.Timedelta(seconds=1)) is None  # NaN: Qlib's own path


def test_qlibs_order_loop_floors_the_calendars_step_start_to_the_day():
    """``order_loop_day_cache`` relies on Qlib's order loop reading the day as
    ``self.trade_calendar.get_step_time()[0].floor(freq="D")`` and comparing it with ``self.deal_day``."""
    import inspect

    source = inspect.getsource(SimulatorExecutor._collect_data)
    assert 'self.trade_calendar.get_step_time()[0].floor(freq="D")' in source
    assert "now_deal_day > self.deal_day" in source


@pytest.mark.parametrize("unit", ["ns", "us", "s"])
def test_order_loop_step_start_days_are_pandas_floors(unit):
    rng = np.random.default_rng(3)
    stamps = pd.Timestamp("2023-12-30") + pd.to_timedelta(np.sort(rng.integers(0, 5 * 86_400, 200)), unit="s")
    days: dict = {}
    for ts in [t.as_unit(unit) for t in stamps] + [pd.Timestamp("1969-12-31 23:00").as_unit(unit)]:
        start = compat.step_start_for_order_loop(ts, days)
        want = ts.floor(freq="D")
        got = start.floor(freq="D")
        assert type(got) is pd.Timestamp and got == want and got.unit == want.unit, ts
        assert start.floor("D") == want and start.floor(freq="h") == ts.floor(freq="h")
        assert start == ts and hash(start) == hash(ts) and not start < ts and start <= ts and start >= ts
        assert format(start, "%Y-%m-%d %H:%M:%S") == format(ts, "%Y-%m-%d %H:%M:%S") and str(start) == str(ts)
        assert start.value == ts.value
    assert len(days) <= 7  # one pandas floor per day
    aware = pd.Timestamp("2024-01-01 05:00", tz="Asia/Tokyo")
    assert compat.step_start_for_order_loop(aware, days) is aware


def test_order_loop_day_cache_gives_qlibs_deal_days(monkeypatch):
    """Through a backtest over a day boundary, Qlib's order loop gets pandas' day of each step (a real
    ``Timestamp``) and resets ``dealt_order_amount`` on the new day; outside the loop the calendar's times are
    the plain timestamps."""

    idx = pd.date_range("2024-01-01 21:00", periods=6, freq="h")
    bars = {name: frame.set_axis(idx) for name, frame in BARS.items()}
    use_provider("compat_days", bars)
    seen = []
    original = SimulatorExecutor._collect_data

    def recording(self, trade_decision, level=0):
        start, _ = self.trade_calendar.get_step_time()
        seen.append((start.floor(freq="D"), start.timestamp))
        result = original(self, trade_decision, level=level)
        seen.append((self.deal_day, dict(self.dealt_order_amount)))
        assert type(self.trade_calendar.get_step_time()[0]) is compat.OrderLoopStepStart
        return result

    monkeypatch.setattr(SimulatorExecutor, "_collect_data", recording)
    ex = CryptoExecutor(time_per_step="60min", generate_portfolio_metrics=True, max_leverage=None)
    script = {t: [("AAA-USDT", "buy", 1.0)] for t in idx[1:5]}
    scripted_backtest(script, ex, idx, list(bars))
    steps = [seen[i : i + 2] for i in range(0, len(seen), 2)]
    assert len(steps) == 4
    per_day: dict = {}
    for (day, start), (deal_day, dealt) in steps:
        assert type(day) is pd.Timestamp and day == start.floor(freq="D") == deal_day
        per_day[start.date()] = per_day.get(start.date(), 0.0) + 1.0  # one filled 1.0 buy per step
        assert dealt == {"AAA-USDT": per_day[start.date()]}, start
    assert list(per_day.values()) == [2.0, 2.0]  # 22:00, 23:00 | 00:00, 01:00: reset on the new day
    assert ex.trade_calendar.order_loop_days is None
    assert type(ex.trade_calendar.get_step_time(0)[0]) is pd.Timestamp
