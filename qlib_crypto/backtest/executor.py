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

import logging
import math
from collections import defaultdict
from types import FunctionType
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

import pandas as pd
from qlib.backtest.decision import BaseTradeDecision, Order
from qlib.backtest.executor import SimulatorExecutor
from qlib.backtest.high_performance_ds import NumpyOrderIndicator
from qlib.backtest.position import Position
from qlib.backtest.report import Indicator, PortfolioMetrics
from qlib.utils import index_data as idd

from ..errors import BacktestError, ConfigError
from .exchange import CryptoExchange, FillRecord, OrderReport
from .position import CryptoPosition

logger = logging.getLogger(__name__)

#: extra per-bar columns added to Qlib's portfolio metrics DataFrame
EXTRA_COLUMNS = ("fees", "slippage", "funding", "gross_exposure", "leverage")


_NS_PER_DAY = 86_400_000_000_000


class FastOrderIndicator(NumpyOrderIndicator):
    """Qlib's ``NumpyOrderIndicator`` whose ``transfer`` reads a function's parameter names from its code object.

    Qlib calls ``inspect.signature`` on every metric function every bar; the names (and so the results) are the
    same, read from ``func.__code__`` and cached. ``assign`` builds the instrument index once for the metrics of
    a bar that share the same instruments (Qlib's read-only index sharing) instead of once per metric.
    """

    _param_cache: Dict[Any, Tuple[str, ...]] = {}

    def __init__(self) -> None:
        super().__init__()
        self._index_cache: Optional[Tuple[tuple, idd.Index]] = None

    def assign(self, col: str, metric: dict) -> None:  # noqa: D102 (BaseOrderIndicator's contract)
        if type(metric) is not dict or not metric:
            return super().assign(col, metric)
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
        metric = func(**{name: data[name] for name in names})
        if new_col is not None:
            data[new_col] = metric
            return None
        return metric


class FastIndicator(Indicator):
    """Qlib's ``Indicator`` with the per-bar order and trade metrics of an atomic executor computed on the arrays.

    Same values as Qlib's (same numpy reductions on the same float64 arrays): ``ffr = deal_amount / amount``,
    ``pa`` and ``pos`` from the (zero) price advantages, ``deal_amount``/``value`` = sums of absolute values,
    ``count`` = number of orders. Bars without orders, non-default ``indicator_config`` or an order indicator
    other than ``FastOrderIndicator`` take Qlib's own path.
    """

    def _fast_data(self) -> Optional[dict]:
        order_indicator = self.order_indicator
        if type(order_indicator) is not FastOrderIndicator:
            return None
        data = order_indicator.data
        amount = data.get("amount")
        if amount is None or not len(amount.data):
            return None
        return data

    def update_order_indicators(self, trade_info: list) -> None:  # noqa: D102 (Indicator's contract)
        self._update_order_trade_info(trade_info=trade_info)
        data = self._fast_data()
        deal = data.get("deal_amount") if data is not None else None
        if deal is None or deal.indices[0] is not data["amount"].indices[0]:
            self._update_order_fulfill_rate()
            return
        amount = data["amount"]
        with np.errstate(divide="ignore", invalid="ignore"):
            data["ffr"] = idd.SingleData(deal.data / amount.data, deal.indices[0])

    def cal_trade_indicators(self, trade_start_time: Any, freq: str, indicator_config: dict = {}) -> None:  # noqa: D102
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

    ``funding`` is the funding paid in the bar (> 0 paid, < 0 received). The DataFrame's ``attrs`` carry the
    executor's ``fills``, ``order_reports``, ``funding_events`` and ``liquidations`` tables.
    """

    crypto_executor: Any = None

    def _sample_benchmark(self, bench: pd.Series, trade_start_time: Any, trade_end_time: Any) -> Optional[float]:
        """Qlib's benchmark sampling with a single-bar fast path (same value: ``(1 + r) - 1``)."""
        if self.bench is None:
            return None
        cache = getattr(self, "_bench_cache", None)
        if cache is None or cache[0] is not bench:
            idx = bench.index
            if not isinstance(idx, pd.DatetimeIndex) or not idx.is_monotonic_increasing:
                return super()._sample_benchmark(bench, trade_start_time, trade_end_time)
            cache = (bench, idx.asi8, bench.to_numpy(dtype="float64"))
            self._bench_cache = cache
        _, stamps, values = cache
        try:
            lo = int(np.searchsorted(stamps, pd.Timestamp(trade_start_time).value, side="left"))
            hi = int(np.searchsorted(stamps, pd.Timestamp(trade_end_time).value, side="right"))
        except (TypeError, ValueError):
            return super()._sample_benchmark(bench, trade_start_time, trade_end_time)
        if hi - lo == 0:
            return 0.0
        if hi - lo == 1:
            return (values[lo] + 1) - 1
        return super()._sample_benchmark(bench, trade_start_time, trade_end_time)

    def generate_portfolio_metrics_dataframe(self) -> pd.DataFrame:
        df = super().generate_portfolio_metrics_dataframe()
        executor = getattr(self, "crypto_executor", None)
        if executor is not None:
            extra = executor._bar_columns
            for name in EXTRA_COLUMNS:
                df[name] = pd.Series(extra[name], dtype="float64").reindex(df.index)
            df.attrs.update(
                {
                    "fills": executor.fills,
                    "order_reports": executor.order_reports,
                    "funding_events": executor.funding_events,
                    "liquidations": executor.liquidations,
                    "totals": dict(executor.totals),
                }
            )
        return df


class CryptoExecutor(SimulatorExecutor):
    """Qlib executor for crypto bars (see the module docstring for the order of events in a step).

    Parameters: ``time_per_step`` (bar frequency, e.g. ``60min``), ``generate_portfolio_metrics``,
    ``max_leverage`` (gross exposure / equity cap enforced on orders; None disables; default 3.0),
    ``maintenance_margin`` (liquidation threshold as a fraction of gross exposure; default 0.005),
    ``settle_funding`` (default True), ``liquidate`` (default True), plus Qlib's ``SimulatorExecutor`` kwargs.
    After a run: ``fills``, ``order_reports``, ``funding_events``, ``liquidations`` (DataFrames) and ``totals``.
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
        self._deal_day_key: Any = None
        self.totals: Dict[str, float] = {"fees_paid": 0.0, "slippage_paid": 0.0, "funding_paid": 0.0}

    @property
    def fills(self) -> pd.DataFrame:
        """Every fill: ``datetime instrument side amount deal_price fill_price value fee slippage role market``."""
        cols = list(FillRecord.__dataclass_fields__)
        return pd.DataFrame([f.to_dict() for f in self._fills], columns=cols)

    @property
    def order_reports(self) -> pd.DataFrame:
        """Every order: requested, filled, unfilled amount, status and reasons (clipped or rejected)."""
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

    # ------------------------------------------------------------------ setup
    def reset(self, common_infra: Any = None, **kwargs: Any) -> None:
        if "start_time" in kwargs or "end_time" in kwargs:
            self._clear_records()
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
            account.current_position = pos = new
        if isinstance(pos, CryptoPosition):
            pos.max_leverage = self.max_leverage
            pos.maintenance_margin = self.maintenance_margin
        pm = account.portfolio_metrics
        if pm is not None and type(pm) is PortfolioMetrics:
            pm.__class__ = CryptoPortfolioMetrics
        if isinstance(pm, CryptoPortfolioMetrics):
            pm.crypto_executor = self
        indicator = getattr(account, "indicator", None)
        if type(indicator) is Indicator and indicator.order_indicator_cls is NumpyOrderIndicator:
            indicator.__class__ = FastIndicator
            indicator.order_indicator_cls = FastOrderIndicator

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
        start, end = self.trade_calendar.get_step_time()
        exchange = self.crypto_exchange
        position = self.trade_account.current_position
        funding = 0.0
        if self.settle_funding and isinstance(position, CryptoPosition):
            funding = self._settle_funding(exchange, position, start, end)

        fees = slippage = 0.0
        execute_result: list = []
        orders = self._get_order_iterator(trade_decision)
        if orders:
            # Qlib's per-order ``floor("D")`` (about 30 us each), done once per UTC day
            day_key = start.value // _NS_PER_DAY if start.tzinfo is None else start.floor(freq="D")
            if day_key != self._deal_day_key or self.deal_day is None:
                deal_day = start.floor(freq="D")
                if self.deal_day is None or deal_day > self.deal_day:
                    self.dealt_order_amount = defaultdict(float)
                    self.deal_day = deal_day
                self._deal_day_key = day_key
        for order in orders:
            trade_val, trade_cost, trade_price = exchange.deal_order(
                order, trade_account=self.trade_account, dealt_order_amount=self.dealt_order_amount
            )
            execute_result.append((order, trade_val, trade_cost, trade_price))
            self.dealt_order_amount[order.stock_id] += order.deal_amount
            if exchange.last_report is not None:
                self._reports.append(exchange.last_report)
            fill = exchange.last_fill
            if fill is not None:
                self._fills.append(fill)
                fees += fill.fee
                slippage += fill.slippage
            if self.verbose:
                logger.info("%s %s %s deal %s at %s", start, order.stock_id, order.direction, order.deal_amount, trade_price)

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
        cols = self._bar_columns
        cols["fees"][start] = fees
        cols["slippage"][start] = slippage
        cols["funding"][start] = funding
        if isinstance(position, CryptoPosition):
            gross, equity = marked if marked is not None else self._marked_gross_equity(exchange, position, start, end)
            cols["gross_exposure"][start] = gross
            cols["leverage"][start] = gross / equity if equity > 0 else (math.inf if gross > 0 else 0.0)
        return execute_result, {"trade_info": execute_result}

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
                {"datetime": start, "instrument": code, "amount": amount, "price": price, "funding_rate": rate, "payment": payment}
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
            "liquidation at %s: equity %.6g < maintenance_margin %.4g x gross exposure %.6g", start, equity, self.maintenance_margin, gross
        )
        self._liquidations.append({"datetime": start, "equity": equity, "gross_exposure": gross, "maintenance_margin": self.maintenance_margin})
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
                FillRecord(start, code, "sell" if amount > 0 else "buy", abs(amount), price, price, value, fee, 0.0, "liquidation", exchange.market_of(code))
            )
            fees += fee
        return fees
