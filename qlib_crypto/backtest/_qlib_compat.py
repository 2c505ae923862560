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
