"""Every use of a Qlib internal by ``qlib_crypto.backtest``, in one module.

Qlib is pinned at 0.9.7 (``constraints.txt``). Everything else in ``qlib_crypto.backtest`` and
``qlib_crypto.strategy`` goes through Qlib's public extension points: subclasses that call ``super()``
(``Exchange.deal_order``/``get_quote_from_qlib``, ``SimulatorExecutor._collect_data`` /``reset_common_infra``,
``PortfolioMetrics.update_portfolio_metrics_record``/``generate_portfolio_metrics_dataframe``,
``Indicator.update_order_indicators``/``cal_trade_indicators``, ``NumpyOrderIndicator.assign``/``transfer``,
``Position.update_order``...), Qlib's documented configuration (``pos_type``, ``quote_cls``,
``order_indicator_cls``, a ``pd.Series`` benchmark) and public attributes.

What remains below relies on how Qlib 0.9.7 works inside: a private method, or an attribute that Qlib reads
internally and a subclass cannot reach otherwise. ``tests/test_qlib_compat.py`` has one test per function that
checks the assumption against the installed Qlib, so an upgrade that changes one of them fails there, by name.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Callable, Iterator

import pandas as pd
from qlib.backtest.position import Position

#: the Qlib version these hooks were written and tested against
QLIB_VERSION = "0.9.7"


def qlib_version() -> str:
    """The installed Qlib's version string."""
    import qlib

    return str(getattr(qlib, "__version__", "unknown"))


# ---------------------------------------------------------------------------------------------------- Exchange
def sort_quote_fields(exchange: Any) -> None:
    """Sort the fields ``Exchange.get_quote_from_qlib`` loads (``exchange.all_fields``).

    Qlib builds ``all_fields`` in ``Exchange.__init__`` as ``list(set(...))``, so the quote frame's column order
    follows ``PYTHONHASHSEED``; ``get_quote_from_qlib`` reads the attribute when it loads the quote. Sorting it
    first gives every run the same frame. Assumes: ``all_fields`` exists before ``get_quote_from_qlib`` runs and
    names the quote's columns in order.
    """
    exchange.all_fields = sorted(exchange.all_fields)


@contextmanager
def quote_features(features: Callable[..., Any]) -> Iterator[None]:
    """Within the block, ``Exchange.get_quote_from_qlib`` loads its quote with ``features`` instead of Qlib's
    ``D.features``.

    Qlib 0.9.7 reads the quote through the module global ``D`` of ``qlib.backtest.exchange``
    (``D.features(codes, all_fields, start_time, end_time, freq=freq, disk_cache=True)``; ``D.instruments()``
    when ``codes`` is empty); the exchange has no parameter for the loader. ``features`` takes the same
    arguments and returns the same frame (index ``(instrument, datetime)``, one float32 column per field).
    Every other attribute of ``D`` is Qlib's own. Not thread-safe (the backtest runs in one thread).
    """
    import qlib.backtest.exchange as qlib_exchange

    original = qlib_exchange.D
    qlib_exchange.D = _FeaturesOverride(original, features)
    try:
        yield
    finally:
        qlib_exchange.D = original


class _FeaturesOverride:
    """``D`` with ``features`` replaced."""

    def __init__(self, base: Any, features: Callable[..., Any]) -> None:
        self._base = base
        self.features = features

    def __getattr__(self, name: str) -> Any:
        return getattr(self._base, name)


# ---------------------------------------------------------------------------------------------------- Position
def add_position_entry(position: Any, stock_id: str, amount: float, price: float) -> None:
    """Create the holding entry ``{amount, price, weight}`` of ``stock_id`` (Qlib's ``Position._init_stock``).

    Qlib's ``Position`` has no public way to add an entry; its own ``_buy_stock`` uses ``_init_stock``.
    """
    position._init_stock(stock_id=stock_id, amount=amount, price=price)


def remove_position_entry(position: Any, stock_id: str) -> None:
    """Remove the holding entry of ``stock_id`` (Qlib's ``Position._del_stock``, as its ``_sell_stock`` does)."""
    Position._del_stock(position, stock_id)


def position_settle_type(position: Any) -> str:
    """The settlement mode of a position (``Position.ST_NO`` or ``ST_CASH``), which ``BaseExecutor.collect_data``
    sets through ``settle_start`` into the private ``_settle_type`` (read by ``_sell_stock`` for sale proceeds)."""
    return position._settle_type


# ----------------------------------------------------------------------------------------------------- Account
def install_account_parts(account: Any, *, portfolio_metrics: Any = None, indicator: Any = None) -> None:
    """Give Qlib's ``Account`` our ``PortfolioMetrics`` / ``Indicator`` subclass instances.

    ``Account.reset_report`` creates a plain ``PortfolioMetrics`` and ``Indicator()`` and there is no parameter
    for their classes (``backtest()`` builds the account itself). The account then uses whatever objects its
    ``portfolio_metrics`` and ``indicator`` attributes hold (``update_bar_end``, ``get_portfolio_metrics``,
    ``get_trade_indicator``). Call this after every ``Account.reset`` (``CryptoExecutor.reset_common_infra``).
    """
    if portfolio_metrics is not None:
        account.portfolio_metrics = portfolio_metrics
    if indicator is not None:
        account.indicator = indicator


def replace_account_position(account: Any, position: Any) -> None:
    """Make ``position`` the account's current position (the object every level of the backtest shares)."""
    account.current_position = position


# ---------------------------------------------------------------------------------------------------- Executor
#: nanoseconds per day: a tz-naive timestamp's ``floor(freq="D")`` depends only on ``value // DAY_NS`` and its unit
DAY_NS = 86_400_000_000_000


@contextmanager
def order_loop_day_cache(calendar: Any, days: dict) -> Iterator[None]:
    """Within the block, Qlib's order loop finds the step's trading day without pandas' ``floor(freq="D")``.

    Qlib 0.9.7's ``SimulatorExecutor._collect_data`` computes, for every order,
    ``self.trade_calendar.get_step_time()[0].floor(freq="D")`` (the day of ``dealt_order_amount``); pandas
    parses the ``"D"`` frequency on each call, ~75 us, more than the rest of an order. Inside the block
    ``calendar.get_step_time()`` (a ``CryptoTradeCalendar``, which calls :func:`step_start_for_order_loop`) answers
    the start as a :class:`OrderLoopStepStart`, whose ``floor(freq="D")`` is pandas' own result computed once per
    day and kept in ``days``. Assumes: inside the order loop the start is only floored to the day and (when
    ``verbose``) formatted; nothing else Qlib calls there (``Exchange.deal_order``, ``Account.update_order``) reads
    the calendar. Not reentrant; one thread.
    """
    calendar.order_loop_days = days
    try:
        yield
    finally:
        calendar.order_loop_days = None


def step_start_for_order_loop(start: Any, days: dict) -> Any:
    """``start`` as Qlib's order loop reads it inside :func:`order_loop_day_cache` (``start`` itself when it is
    tz-aware: its day depends on the zone, pandas floors it)."""
    if not isinstance(start, pd.Timestamp) or start.tz is not None:
        return start
    key = (start.value // DAY_NS, start.unit)
    day = days.get(key)
    if day is None:
        day = days[key] = start.floor(freq="D")
    return OrderLoopStepStart(start, day)


class OrderLoopStepStart:
    """A step's start inside Qlib's order loop: ``floor(freq="D")`` is the cached day (pandas' value), every other
    attribute, ``format`` and ``str`` are the timestamp's."""

    __slots__ = ("timestamp", "day")

    def __init__(self, timestamp: pd.Timestamp, day: pd.Timestamp) -> None:
        self.timestamp = timestamp
        self.day = day

    def floor(self, *args: Any, **kwargs: Any) -> pd.Timestamp:
        if not args and kwargs == {"freq": "D"} or args == ("D",) and not kwargs:
            return self.day
        return self.timestamp.floor(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.timestamp, name)

    def __format__(self, spec: str) -> str:
        return format(self.timestamp, spec)

    def __str__(self) -> str:
        return str(self.timestamp)

    def __repr__(self) -> str:
        return repr(self.timestamp)

    def __hash__(self) -> int:
        return hash(self.timestamp)

    def __eq__(self, other: Any) -> bool:
        return self.timestamp == other

    def __ne__(self, other: Any) -> bool:
        return self.timestamp != other

    def __lt__(self, other: Any) -> bool:
        return self.timestamp < other

    def __le__(self, other: Any) -> bool:
        return self.timestamp <= other

    def __gt__(self, other: Any) -> bool:
        return self.timestamp > other

    def __ge__(self, other: Any) -> bool:
        return self.timestamp >= other
