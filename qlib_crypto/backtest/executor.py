"""``CryptoExecutor``: steps the 24/7 bar calendar, settles funding, executes orders, liquidates, records fills.

Per step (bar ``t``, ``[cal[t], cal[t+1])``), in this order:

1. funding: for every held swap whose ``$funding_rate`` is set on bar ``t``, the holder pays
   ``amount x price x rate`` (``price`` = the bar's ``$open``, the mark at the settlement instant, falling back
   to the last mark); longs pay and shorts receive a positive rate, the reverse for a negative rate;
2. the strategy's orders, one after another, through ``CryptoExchange.deal_order`` (fills and order reports);
3. liquidation check at the bar close: when ``equity < maintenance_margin x gross exposure`` every position
   is closed at the bar's ``$close`` paying the taker fee (role ``liquidation``);
4. Qlib's bar end (prices marked to the close, portfolio metrics, history of positions, indicators).
"""

from __future__ import annotations

import contextlib
import logging
import math
from dataclasses import dataclass
from types import FunctionType
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import pandas as pd
from qlib.backtest.decision import BaseTradeDecision, Order
from qlib.backtest.executor import SimulatorExecutor
from qlib.backtest.high_performance_ds import NumpyOrderIndicator
from qlib.backtest.position import Position
from qlib.backtest.report import Indicator, PortfolioMetrics
from qlib.backtest.utils import TradeCalendarManager
from qlib.utils import index_data as idd

from ..errors import BacktestError, ConfigError
from . import _qlib_compat as compat
from .exchange import CryptoExchange, FillRecord, OrderReport
from .position import CryptoPosition

logger = logging.getLogger(__name__)

#: extra per-bar columns added to Qlib's portfolio metrics DataFrame
EXTRA_COLUMNS = ("fees", "slippage", "funding", "gross_exposure", "leverage")


class CryptoTradeCalendar(TradeCalendarManager):
    """Qlib's ``TradeCalendarManager`` that remembers the ``(start, end)`` of each step it was asked for.

    Qlib computes a step's closed end (``next bar - 1 s``) on every ``get_step_time`` call, and a step asks for it
    a dozen times (the strategy, then Qlib's order loop once per order); the answers are the same objects each
    time. ``CryptoExecutor`` gives its level this calendar, which the strategy of that level shares.

    Inside Qlib's order loop (``compat.order_loop_day_cache``, set by ``CryptoExecutor._collect_data``) the start
    comes as ``compat.OrderLoopStepStart``, whose day (``floor(freq="D")``, read once per order) is cached.
    """

    #: the day cache while Qlib's order loop runs (``compat.order_loop_day_cache``), else None
    order_loop_days: Optional[dict] = None

    def reset(self, freq: str, start_time: Any = None, end_time: Any = None) -> None:  # noqa: D102
        super().reset(freq, start_time=start_time, end_time=end_time)
        self._step_times: Dict[int, Tuple[pd.Timestamp, pd.Timestamp]] = {}
        self.order_loop_days = None

    def get_step_time(self, trade_step: Optional[int] = None, shift: int = 0) -> Tuple[pd.Timestamp, pd.Timestamp]:
        if trade_step is None:
            trade_step = self.get_trade_step()
        key = trade_step - shift  # "shift bars earlier": step t with shift 1 is step t - 1
        times = self._step_times.get(key)
        if times is None:
            times = self._step_times[key] = super().get_step_time(key, 0)
        days = self.order_loop_days
        if days is not None:
            return compat.step_start_for_order_loop(times[0], days), times[1]
        return times


@dataclass
class ExecutionResult:
    """What a ``CryptoExecutor`` recorded in one run, as plain tables (see ``CryptoExecutor``'s properties)."""

    fills: pd.DataFrame
    order_reports: pd.DataFrame
    funding_events: pd.DataFrame
    liquidations: pd.DataFrame
    bar_costs: pd.DataFrame
    totals: Dict[str, float]


class FastOrderIndicator(NumpyOrderIndicator):
    """Qlib's ``NumpyOrderIndicator`` whose ``transfer`` reads a function's parameter names from its code object.

    Qlib calls ``inspect.signature`` on every metric function every bar; the names (and so the results) are the
    same, read from ``func.__code__`` and cached. ``assign`` builds the instrument index once for the metrics of
    a bar that share the same instruments (Qlib's read-only index sharing) instead of once per metric.

    A bar without orders assigns eight empty metrics and derives ``ffr`` from two of them. The first empty metric
    is Qlib's ``SingleData({})``; later ones reuse that object (the same empty float64 data and index), and a
    function of Qlib's ``report`` module (pure, no closure) applied to such shared empty metrics only gives its
    first (empty ``SingleData``) result, reused too. Nothing changes these objects in place: Qlib replaces a
    metric in ``data`` rather than mutating it, and an empty array has no element to write.
    """

    _param_cache: Dict[Any, Tuple[str, ...]] = {}
    #: Qlib's ``SingleData({})``, built by the first empty ``assign`` of the process and shared after it
    empty_metric: Optional[idd.SingleData] = None
    #: code object of a Qlib ``report`` function -> its (empty ``SingleData``) result on ``empty_metric`` inputs
    _empty_results: Dict[Any, idd.SingleData] = {}

    def __init__(self) -> None:
        super().__init__()
        self._index_cache: Optional[Tuple[tuple, idd.Index]] = None

    def assign(self, col: str, metric: dict) -> None:  # noqa: D102 (BaseOrderIndicator's contract)
        if type(metric) is not dict:
            return super().assign(col, metric)
        if not metric:
            empty = FastOrderIndicator.empty_metric
            if empty is None:
                super().assign(col, metric)
                FastOrderIndicator.empty_metric = self.data[col]
            else:
                self.data[col] = empty
            return None
        keys = tuple(metric)
        cached = self._index_cache
        if cached is None or cached[0] != keys:
            cached = self._index_cache = (keys, idd.Index(keys))
        self.data[col] = idd.SingleData(list(metric.values()), cached[1])

    def transfer(self, func, new_col: str | None = None):  # noqa: D102 (BaseOrderIndicator's contract)
        code = func.__code__ if type(func) is FunctionType else None
        if code is None or code.co_flags & 0x0C or code.co_kwonlyargcount or code.co_posonlyargcount:
            return super().transfer(func, new_col)  # *args / **kwargs / keyword-only: Qlib's own path
        names = self._param_cache.get(code)
        if names is None:
            names = code.co_varnames[: code.co_argcount]
            self._param_cache[code] = names
        data = self.data
        kwargs = {name: data[name] for name in names}
        empty = FastOrderIndicator.empty_metric
        if (
            empty is not None
            and names
            and func.__closure__ is None
            and func.__module__ == "qlib.backtest.report"
            and all(value is empty for value in kwargs.values())
        ):
            metric = self._empty_results.get(code)
            if metric is None:
                metric = func(**kwargs)
                if type(metric) is idd.SingleData and not len(metric.data):
                    self._empty_results[code] = metric
        else:
            metric = func(**kwargs)
        if new_col is not None:
            data[new_col] = metric
            return None
        return metric


class FastIndicator(Indicator):
    """Qlib's ``Indicator`` with the per-bar order and trade metrics of an atomic executor computed on the arrays.

    Same values as Qlib's (same numpy reductions on the same float64 arrays): ``ffr = deal_amount / amount``,
    ``pa`` and ``pos`` from the (zero) price advantages, ``deal_amount``/``value`` = sums of absolute values,
    ``count`` = number of orders. Non-default ``indicator_config`` or an order indicator other than
    ``FastOrderIndicator`` take Qlib's own path.

    A bar without orders (every metric empty) has the same trade indicators every time: the first such bar takes
    Qlib's path and its values (numpy scalars: NaN ffr/pa/pos, zero deal_amount/value, count 0) are copied into
    the later ones (Qlib's path on empty arrays costs numpy's empty-slice warnings each bar).
    """

    #: the trade metrics ``cal_trade_indicators`` reads
    TRADE_METRICS = ("ffr", "pa", "deal_amount", "trade_value", "amount")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.empty_bar_indicators: Dict[Tuple[str, str], dict] = {}  # (ffr method, pa method) -> Qlib's values

    def _fast_data(self) -> Optional[dict]:
        order_indicator = self.order_indicator
        if type(order_indicator) is not FastOrderIndicator:
            return None
        data = order_indicator.data
        amount = data.get("amount")
        if amount is None or not len(amount.data):
            return None
        return data

    def _empty_bar(self) -> bool:
        """True when the bar's order metrics that the trade indicators read are all there and all empty."""
        order_indicator = self.order_indicator
        if type(order_indicator) is not FastOrderIndicator:
            return False
        data = order_indicator.data
        for name in self.TRADE_METRICS:
            metric = data.get(name)
            if metric is None or len(metric.data):
                return False
        return True

    def cal_trade_indicators(self, trade_start_time: Any, freq: str, indicator_config: dict = {}) -> None:  # noqa: D102
        if not indicator_config.get("show_indicator", False) and self._empty_bar():
            key = (
                indicator_config.get("ffr_config", {}).get("weight_method", "mean"),
                indicator_config.get("pa_config", {}).get("weight_method", "mean"),
            )
            values = self.empty_bar_indicators.get(key)
            if values is None:
                super().cal_trade_indicators(trade_start_time, freq, indicator_config)
                self.empty_bar_indicators[key] = dict(self.trade_indicator)
            else:
                self.trade_indicator.update(values)
            return None
        data = self._fast_data()
        if (
            data is None
            or indicator_config.get("show_indicator", False)
            or indicator_config.get("ffr_config", {}).get("weight_method", "mean") != "mean"
            or indicator_config.get("pa_config", {}).get("weight_method", "mean") != "mean"
            or any(name not in data for name in ("ffr", "pa", "deal_amount", "trade_value"))
        ):
            return super().cal_trade_indicators(trade_start_time, freq, indicator_config)
        pa = data["pa"].data
        amount = data["amount"].data
        trade = self.trade_indicator
        trade["ffr"] = _nanmean(data["ffr"].data)
        trade["pa"] = _nanmean(pa)
        trade["pos"] = _nansum((pa > 0).astype(np.float64)) / len(pa[~np.isnan(pa)])
        trade["deal_amount"] = _nansum(np.absolute(data["deal_amount"].data))
        trade["value"] = _nansum(np.absolute(data["trade_value"].data))
        trade["count"] = len(amount[~np.isnan(amount)])


def _nansum(values: np.ndarray) -> np.float64:
    """``np.nansum`` of a 1-d float64 array (the same ``add.reduce`` when there is no NaN, without its copy)."""
    if np.isnan(values).any():
        return np.nansum(values)
    return np.add.reduce(values)


def _nanmean(values: np.ndarray) -> np.float64:
    """``np.nanmean`` of a non-empty 1-d float64 array (sum / count as numpy computes it when there is no NaN)."""
    if not len(values) or np.isnan(values).any():
        return np.nanmean(values)
    return np.float64(np.add.reduce(values) / np.intp(len(values)))


class CryptoPortfolioMetrics(PortfolioMetrics):
    """Qlib's ``PortfolioMetrics`` plus per-bar ``fees slippage funding gross_exposure leverage`` columns.

    ``funding`` is the funding paid in the bar (> 0 paid, < 0 received). The executor records the values of each
    bar with :meth:`record_bar_extras`. A benchmark given as a ``pd.Series`` of bar returns is sampled per bar
    with a binary search and the arithmetic of Qlib's ``_sample_benchmark`` (``prod(1 + r) - 1`` in the series'
    own dtype), so the values are Qlib's.
    """

    def __init__(self, freq: str = "day", benchmark_config: dict = {}) -> None:
        super().__init__(freq=freq, benchmark_config=benchmark_config)
        self.extras: Dict[str, Dict[Any, float]] = {name: {} for name in EXTRA_COLUMNS}
        self._bench_cache: Optional[Tuple[Any, np.ndarray, np.ndarray]] = None

    @classmethod
    def like(cls, metrics: PortfolioMetrics) -> "CryptoPortfolioMetrics":
        """A new, empty instance with the frequency and the (already loaded) benchmark of ``metrics``."""
        new = cls(metrics.freq, {"benchmark": metrics.bench})
        new.benchmark_config = metrics.benchmark_config
        return new

    def record_bar_extras(self, trade_start_time: Any, **values: float) -> None:
        """Store this bar's ``fees slippage funding gross_exposure leverage`` (any subset)."""
        for name, value in values.items():
            self.extras[name][trade_start_time] = value

    def bar_benchmark(self, trade_start_time: Any, trade_end_time: Any) -> Optional[float]:
        """The benchmark's return over ``[start, end]``, or None when the lookup does not apply (Qlib samples it)."""
        bench = self.bench
        if not isinstance(bench, pd.Series):
            return None
        cache = self._bench_cache
        if cache is None or cache[0] is not bench:
            idx = bench.index
            if not isinstance(idx, pd.DatetimeIndex) or not idx.is_monotonic_increasing or bench.dtype.kind != "f":
                return None
            cache = self._bench_cache = (bench, idx.asi8, bench.to_numpy())
        _, stamps, values = cache
        try:
            lo = int(np.searchsorted(stamps, pd.Timestamp(trade_start_time).value, side="left"))
            hi = int(np.searchsorted(stamps, pd.Timestamp(trade_end_time).value, side="right"))
        except (TypeError, ValueError):
            return None
        if hi - lo == 0:
            return 0.0
        window = values[lo:hi]
        if np.isnan(window).any():
            return None  # Qlib's own path skips NaN
        return (window + 1).prod() - 1

    def update_portfolio_metrics_record(
        self,
        trade_start_time: Any = None,
        trade_end_time: Any = None,
        *args: Any,
        bench_value: Optional[float] = None,
        **kwargs: Any,
    ) -> None:
        if bench_value is None and trade_start_time is not None and trade_end_time is not None:
            bench_value = self.bar_benchmark(trade_start_time, trade_end_time)
        super().update_portfolio_metrics_record(
            trade_start_time, trade_end_time, *args, bench_value=bench_value, **kwargs
        )

    def generate_portfolio_metrics_dataframe(self) -> pd.DataFrame:
        df = super().generate_portfolio_metrics_dataframe()
        for name in EXTRA_COLUMNS:
            df[name] = pd.Series(self.extras[name], dtype="float64").reindex(df.index)
        return df


class CryptoExecutor(SimulatorExecutor):
    """Qlib executor for crypto bars (see the module docstring for the order of events in a step).

    Parameters: ``time_per_step`` (bar frequency, e.g. ``60min``), ``generate_portfolio_metrics``,
    ``max_leverage`` (gross exposure / equity cap enforced on orders; None disables; default 3.0),
    ``maintenance_margin`` (liquidation threshold as a fraction of gross exposure; default 0.005),
    ``settle_funding`` (default True), ``liquidate`` (default True), plus Qlib's ``SimulatorExecutor`` kwargs.
    After a run: ``fills``, ``order_reports``, ``funding_events``, ``liquidations``, ``bar_costs``
    (DataFrames), ``totals`` and :meth:`result` (all of them in one :class:`ExecutionResult`).
    """

    def __init__(
        self,
        time_per_step: str = "60min",
        start_time: str | pd.Timestamp | None = None,
        end_time: str | pd.Timestamp | None = None,
        indicator_config: dict = {},
        generate_portfolio_metrics: bool = False,
        verbose: bool = False,
        track_data: bool = False,
        common_infra: Any = None,
        trade_type: str = SimulatorExecutor.TT_SERIAL,
        max_leverage: float | None = 3.0,
        maintenance_margin: float = 0.005,
        settle_funding: bool = True,
        liquidate: bool = True,
        **kwargs: Any,
    ) -> None:
        if max_leverage is not None and not float(max_leverage) > 0:
            raise ConfigError(f"max_leverage {max_leverage!r} must be > 0", hint="e.g. 1.0 (no leverage), 3.0, or null")
        if not 0 <= float(maintenance_margin) < 1:
            raise ConfigError(f"maintenance_margin {maintenance_margin!r} must be in [0, 1)", hint="e.g. 0.005 (0.5%)")
        self.max_leverage = None if max_leverage is None else float(max_leverage)
        self.maintenance_margin = float(maintenance_margin)
        self.settle_funding = bool(settle_funding)
        self.liquidate = bool(liquidate)
        self._clear_records()
        super().__init__(
            time_per_step=time_per_step,
            start_time=start_time,
            end_time=end_time,
            indicator_config=indicator_config,
            generate_portfolio_metrics=generate_portfolio_metrics,
            verbose=verbose,
            track_data=track_data,
            common_infra=common_infra,
            trade_type=trade_type,
            **kwargs,
        )

    # ------------------------------------------------------------------ records
    def _clear_records(self) -> None:
        self._fills: List[FillRecord] = []
        self._reports: List[OrderReport] = []
        self._funding: List[dict] = []
        self._liquidations: List[dict] = []
        self._bar_columns: Dict[str, Dict[pd.Timestamp, float]] = {name: {} for name in EXTRA_COLUMNS}
        self._order_days: dict = {}  # the trading days of Qlib's order loop (compat.order_loop_day_cache)
        self.totals: Dict[str, float] = {"fees_paid": 0.0, "slippage_paid": 0.0, "funding_paid": 0.0}

    @property
    def fills(self) -> pd.DataFrame:
        """Every fill: ``datetime instrument side amount deal_price fill_price value fee slippage role market``."""
        cols = list(FillRecord.__dataclass_fields__)
        return pd.DataFrame([f.to_dict() for f in self._fills], columns=cols)

    @property
    def order_reports(self) -> pd.DataFrame:
        """Every order: ``datetime instrument side requested filled status reasons deal_price capped unfilled``."""
        cols = list(OrderReport.__dataclass_fields__) + ["unfilled"]
        return pd.DataFrame([r.to_dict() for r in self._reports], columns=cols)

    @property
    def funding_events(self) -> pd.DataFrame:
        """Every funding settlement: ``datetime instrument amount price funding_rate payment`` (> 0 paid)."""
        cols = ["datetime", "instrument", "amount", "price", "funding_rate", "payment"]
        return pd.DataFrame(self._funding, columns=cols)

    @property
    def liquidations(self) -> pd.DataFrame:
        """Every liquidation: ``datetime equity gross_exposure maintenance_margin``."""
        return pd.DataFrame(self._liquidations, columns=["datetime", "equity", "gross_exposure", "maintenance_margin"])

    @property
    def bar_costs(self) -> pd.DataFrame:
        """Per bar: ``fees slippage funding gross_exposure leverage`` (index ``datetime``)."""
        frame = pd.DataFrame({name: pd.Series(self._bar_columns[name], dtype="float64") for name in EXTRA_COLUMNS})
        frame.index.name = "datetime"
        return frame

    def result(self) -> "ExecutionResult":
        """Everything this executor recorded in its last run, as plain DataFrames and a dict."""
        return ExecutionResult(
            fills=self.fills,
            order_reports=self.order_reports,
            funding_events=self.funding_events,
            liquidations=self.liquidations,
            bar_costs=self.bar_costs,
            totals=dict(self.totals),
        )

    # ------------------------------------------------------------------ setup
    def reset(self, common_infra: Any = None, **kwargs: Any) -> None:
        if "start_time" in kwargs or "end_time" in kwargs:
            self._clear_records()
            if not self.level_infra.has("trade_calendar"):  # Qlib's reset_cal then resets this one
                self.level_infra.reset_infra(
                    trade_calendar=CryptoTradeCalendar(
                        self.time_per_step,
                        start_time=kwargs.get("start_time"),
                        end_time=kwargs.get("end_time"),
                        level_infra=self.level_infra,
                    )
                )
        super().reset(common_infra=common_infra, **kwargs)

    def reset_common_infra(self, common_infra: Any, copy_trade_account: bool = False) -> None:
        super().reset_common_infra(common_infra, copy_trade_account=copy_trade_account)
        if not hasattr(self, "trade_account"):
            return
        account = self.trade_account
        pos = account.current_position
        if type(pos) is Position:  # upgrade Qlib's default long-only position (documented)
            new = CryptoPosition(cash=pos.get_cash())
            new.position = pos.position
            new.init_cash = pos.init_cash
            compat.replace_account_position(account, new)
            pos = new
        if isinstance(pos, CryptoPosition):
            pos.max_leverage = self.max_leverage
            pos.maintenance_margin = self.maintenance_margin
        # Qlib's Account.reset has just created a plain PortfolioMetrics and Indicator: use our subclasses
        pm = account.portfolio_metrics
        if pm is not None and type(pm) is PortfolioMetrics and pm.is_empty():
            compat.install_account_parts(account, portfolio_metrics=CryptoPortfolioMetrics.like(pm))
        indicator = account.get_trade_indicator()
        if type(indicator) is Indicator and indicator.order_indicator_cls is NumpyOrderIndicator:
            compat.install_account_parts(account, indicator=FastIndicator(order_indicator_cls=FastOrderIndicator))

    @property
    def crypto_exchange(self) -> CryptoExchange:
        exchange = self.trade_exchange
        if not isinstance(exchange, CryptoExchange):
            raise BacktestError(
                f"CryptoExecutor needs a CryptoExchange, got {type(exchange).__name__}",
                hint="set exchange: {class: CryptoExchange, module_path: qlib_crypto.backtest, kwargs: {...}}",
            )
        return exchange

    # ------------------------------------------------------------------ one step
    def _collect_data(self, trade_decision: BaseTradeDecision, level: int = 0) -> Tuple[List[object], dict]:
        """Qlib's step (``SimulatorExecutor._collect_data``: the orders, one after another, through the exchange)
        with funding settled before it and the liquidation check after it."""
        start, end = self.trade_calendar.get_step_time()
        exchange = self.crypto_exchange
        position = self.trade_account.current_position
        funding = 0.0
        if self.settle_funding and isinstance(position, CryptoPosition):
            funding = self._settle_funding(exchange, position, start, end)

        calendar = self.trade_calendar
        day_cache = (
            compat.order_loop_day_cache(calendar, self._order_days)
            if type(calendar) is CryptoTradeCalendar
            else contextlib.nullcontext()
        )
        with exchange.record_executions() as executions, day_cache:
            execute_result, kwargs = super()._collect_data(trade_decision, level=level)
        fees = slippage = 0.0
        for execution in executions:
            self._reports.append(execution.report)
            fill = execution.fill
            if fill is not None:
                self._fills.append(fill)
                fees += fill.fee
                slippage += fill.slippage

        marked: Optional[Tuple[float, float]] = None
        if self.liquidate and isinstance(position, CryptoPosition):
            marked = self._marked_gross_equity(exchange, position, start, end)
            n_fills = len(self._fills)
            liq_fees = self._check_liquidation(exchange, position, start, end, execute_result, marked)
            fees += liq_fees
            if len(self._fills) != n_fills:
                marked = None  # positions were closed: mark again

        self.totals["fees_paid"] += fees
        self.totals["slippage_paid"] += slippage
        self.totals["funding_paid"] += funding
        values = {"fees": fees, "slippage": slippage, "funding": funding}
        if isinstance(position, CryptoPosition):
            gross, equity = marked if marked is not None else self._marked_gross_equity(exchange, position, start, end)
            values["gross_exposure"] = gross
            values["leverage"] = gross / equity if equity > 0 else (math.inf if gross > 0 else 0.0)
        cols = self._bar_columns
        for name, value in values.items():
            cols[name][start] = value
        pm = self.trade_account.portfolio_metrics
        if isinstance(pm, CryptoPortfolioMetrics):
            pm.record_bar_extras(start, **values)
        return execute_result, kwargs

    def _settle_funding(self, exchange: CryptoExchange, position: CryptoPosition, start, end) -> float:
        total = 0.0
        for code in position.get_stock_list():
            if exchange.market_of(code) != "swap":
                continue
            rate = exchange.get_funding_rate(code, start, end)
            if math.isnan(rate):
                continue
            price = exchange.get_bar_field(code, start, end, "$open")
            if math.isnan(price):
                price = position.get_stock_price(code)
            amount = position.get_stock_amount(code)
            payment = position.settle_funding(code, price, rate)
            self._funding.append(
                {
                    "datetime": start,
                    "instrument": code,
                    "amount": amount,
                    "price": price,
                    "funding_rate": rate,
                    "payment": payment,
                }
            )
            total += payment
        return total

    @staticmethod
    def _marked_gross_equity(exchange: CryptoExchange, position: CryptoPosition, start, end) -> Tuple[float, float]:
        """Gross exposure and equity with every holding marked at this bar's close (last mark when missing)."""
        gross = 0.0
        equity = position.get_cash(include_settle=True)
        fast = exchange._fast
        row = fast.single_row(start, end) if fast is not None else None
        closes = fast.arrays.get("$close") if row is not None else None
        col_of = fast.col_of if closes is not None else {}
        entries = position.position
        for code in position.get_stock_list():
            entry = entries[code]
            amount = entry["amount"]
            col = col_of.get(code)
            close = float(closes[row, col]) if col is not None else exchange.get_bar_field(code, start, end, "$close")
            if math.isnan(close):
                close = entry["price"]
            gross += abs(amount) * close
            equity += amount * close
        return gross, equity

    def _check_liquidation(
        self,
        exchange: CryptoExchange,
        position: CryptoPosition,
        start,
        end,
        execute_result: list,
        marked: Optional[Tuple[float, float]] = None,
    ) -> float:
        gross, equity = marked if marked is not None else self._marked_gross_equity(exchange, position, start, end)
        if not (gross > 0 and equity < self.maintenance_margin * gross):
            return 0.0
        logger.warning(
            "liquidation at %s: equity %.6g < maintenance_margin %.4g x gross exposure %.6g",
            start,
            equity,
            self.maintenance_margin,
            gross,
        )
        self._liquidations.append(
            {
                "datetime": start,
                "equity": equity,
                "gross_exposure": gross,
                "maintenance_margin": self.maintenance_margin,
            }
        )
        fees = 0.0
        for code in list(position.get_stock_list()):
            amount = position.get_stock_amount(code)
            if amount == 0:
                continue
            price = exchange.get_bar_field(code, start, end, "$close")
            if math.isnan(price):
                price = position.get_stock_price(code)
            direction = Order.SELL if amount > 0 else Order.BUY
            order = Order(stock_id=code, amount=abs(amount), start_time=start, end_time=end, direction=direction)
            order.deal_amount = abs(amount)
            order.factor = 1.0
            value = abs(amount) * price
            fee = value * exchange.taker_fee(code)
            self.trade_account.update_order(order=order, trade_val=value, cost=fee, trade_price=price)
            execute_result.append((order, value, fee, price))
            self._fills.append(
                FillRecord(
                    start,
                    code,
                    "sell" if amount > 0 else "buy",
                    abs(amount),
                    price,
                    price,
                    value,
                    fee,
                    0.0,
                    "liquidation",
                    exchange.market_of(code),
                )
            )
            fees += fee
        return fees
