"""Qlib strategies for crypto: :class:`SignalStrategy` (BUY/SELL/HOLD signals) and :class:`LongShortStrategy`.

Both are Qlib ``BaseStrategy`` subclasses, usable from qrun YAML (``class`` + ``module_path:
qlib_crypto.strategy``) and from ``qlib.backtest.backtest(...)``. Timing follows Qlib: at trade step ``i``
(bar ``T_i``) the strategy reads what was stamped in the previous step's interval ``[T_{i-1}, T_i)`` and its
orders execute in bar ``T_i`` at the exchange's deal price, so a signal stamped at bar ``t`` executes at bar
``t + 1``. The order arithmetic lives in :mod:`qlib_crypto.strategy.targets`.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Mapping

import numpy as np
import pandas as pd
from qlib.backtest.decision import Order, OrderDir, TradeDecisionWO
from qlib.strategy.base import BaseStrategy

from ..errors import ConfigError
from .targets import (
    MAX_POSITION_SIZE,
    TimeBook,
    apply_signals,
    changed_targets,
    check_known_instruments,
    check_longshort_universe,
    is_rebalance_step,
    is_swap,
    longonly_weights,
    longshort_weights,
    order_delta,
    orders_for_weights,
    scores_frame,
    signals_frame,
)

logger = logging.getLogger(__name__)


class _CryptoStrategyBase(BaseStrategy):
    """Shared plumbing: previous-step interval, prices, amounts, equity, order building."""

    def __init__(
        self,
        *,
        min_trade_value: float = 0.0,
        skip_unknown: bool = False,
        trade_exchange=None,
        level_infra=None,
        common_infra=None,
        **kwargs: Any,
    ) -> None:
        super().__init__(level_infra=level_infra, common_infra=common_infra, trade_exchange=trade_exchange, **kwargs)
        self.min_trade_value = float(min_trade_value)
        self.skip_unknown = bool(skip_unknown)

    # -- inputs ------------------------------------------------------------------------------------------
    def _input_frame(self) -> pd.DataFrame | None:
        """The strategy's input rows (``instrument`` column), checked against the provider at the run's start."""
        return None

    def _set_input_frame(self, frame: pd.DataFrame) -> None:  # pragma: no cover - overridden
        pass

    def _check_instruments(self) -> None:
        """Instruments of the input that the provider does not have: an error listing them, or with
        ``skip_unknown`` their rows dropped (a warning gives the count). Runs when a backtest starts."""
        frame = self._input_frame()
        if frame is None or not len(frame):
            return
        freq = self.trade_calendar.get_freq()
        try:
            from qlib.data import D

            known = D.list_instruments(D.instruments("all"), freq=freq, as_list=True)
        except Exception as exc:  # noqa: BLE001 - no instrument list for this provider: nothing to check against
            logger.debug("no instrument list at %s (%s): instruments not checked", freq, exc)
            return
        checked = check_known_instruments(
            frame,
            known,
            skip_unknown=self.skip_unknown,
            where=f"the {type(self).__name__} input",
            provider=f"the {freq} provider",
        )
        if checked is not frame:
            self._set_input_frame(checked)

    # -- time ------------------------------------------------------------------------------------------
    def _previous_interval(self) -> tuple[pd.Timestamp, pd.Timestamp] | None:
        """The closed time interval of the bar before the current step (None before the calendar starts)."""
        cal = self.trade_calendar
        step = cal.get_trade_step()
        if cal.start_index + step - 1 < 0:
            return None
        return cal.get_step_time(step, shift=1)

    # -- market and account ------------------------------------------------------------------------------
    def _price(self, inst: str, start: pd.Timestamp, end: pd.Timestamp) -> float:
        """The bar's deal price used to size orders (NaN when the instrument has no bar)."""
        try:
            price = self.trade_exchange.get_deal_price(inst, start, end, direction=OrderDir.BUY)
        except (KeyError, IndexError, ValueError):
            return float("nan")
        try:
            price = float(price)
        except (TypeError, ValueError):
            return float("nan")
        return price if math.isfinite(price) and price > 0 else float("nan")

    def _amount(self, inst: str) -> float:
        pos = self.trade_position
        return float(pos.get_stock_amount(inst)) if inst in pos.get_stock_list() else 0.0

    def _equity(self) -> float:
        return float(self.trade_position.calculate_value())

    def _orders(self, deltas: Mapping[str, float], start: pd.Timestamp, end: pd.Timestamp) -> list[Order]:
        """Orders for signed amounts: sells first (they free cash and margin), then buys."""
        sells, buys = [], []
        for inst, delta in sorted(deltas.items()):
            if delta == 0 or not math.isfinite(delta):
                continue
            order = Order(
                stock_id=inst,
                amount=abs(delta),
                direction=OrderDir.BUY if delta > 0 else OrderDir.SELL,
                start_time=start,
                end_time=end,
            )
            (buys if delta > 0 else sells).append(order)
        return sells + buys


class SignalStrategy(_CryptoStrategyBase):
    """Trade BUY/SELL/HOLD signals with position sizes (the output of ``qlib-crypto predict``).

    Semantics: a signal stamped at bar ``t`` executes at bar ``t + 1``; BUY targets a long exposure of
    ``|position_size| x equity``; SELL targets a short of the same size on swaps and a flat position on spot;
    HOLD trades nothing; a position is traded only when its target changes (equity drift is not rebalanced).
    A target that cannot be traded (no price in the bar) stays pending and is retried at the next bar.

    Parameters
    ----------
    signals : str | pathlib.Path | pandas.DataFrame
        A Parquet (``.parquet``), pickle or CSV path, or a DataFrame, with columns ``datetime`` (bar open
        time, UTC), ``instrument``, ``signal`` (BUY/SELL/HOLD or +1/-1/0), ``position_size`` (fraction of
        equity; the sign is ignored, the signal gives the direction).
    instrument_meta : mapping, optional
        ``{instrument: instType}`` or ``{instrument: {"instType": ...}}``; without it ``-SWAP`` = swap.
    min_trade_value : float
        Orders worth less than this (in quote currency) are not sent. Default 0.
    max_position_size : float
        Largest ``|position_size|`` of a BUY/SELL row (default 1.0: all of equity); larger sizes are an error.
    skip_unknown : bool
        Drop (with a warning) the rows of instruments the provider does not have, instead of refusing them.

    The signals are checked when the strategy is built (see :func:`~qlib_crypto.strategy.targets.signals_frame`:
    a NaN/inf or out-of-range size on a BUY/SELL row, or two rows for one (datetime, instrument), is a
    ``ConfigError`` naming the row) and when a backtest starts (instruments the provider does not have).
    """

    def __init__(
        self,
        *,
        signals: Any,
        instrument_meta: Mapping[str, Any] | None = None,
        min_trade_value: float = 0.0,
        max_position_size: float = MAX_POSITION_SIZE,
        **kwargs: Any,
    ) -> None:
        super().__init__(min_trade_value=min_trade_value, **kwargs)
        frame = signals_frame(signals, max_position_size=max_position_size)
        self._set_input_frame(frame)
        self.instrument_meta = dict(instrument_meta or {})
        self.desired: dict[str, float] = {}
        self.traded: dict[str, float] = {}
        self._warned_no_price: set[str] = set()

    def _input_frame(self) -> pd.DataFrame:
        return self.signals

    def _set_input_frame(self, frame: pd.DataFrame) -> None:
        self.signals = frame
        self._book = TimeBook(frame, ["signal", "position_size"])

    def reset(self, level_infra=None, common_infra=None, outer_trade_decision=None, **kwargs: Any) -> None:
        super().reset(
            level_infra=level_infra, common_infra=common_infra, outer_trade_decision=outer_trade_decision, **kwargs
        )
        if level_infra is not None:  # a new backtest run: forget the targets of the previous one
            self.desired, self.traded = {}, {}
            self._check_instruments()

    def generate_trade_decision(self, execute_result: list | None = None) -> TradeDecisionWO:
        step = self.trade_calendar.get_trade_step()
        start, end = self.trade_calendar.get_step_time(step)
        prev = self._previous_interval()
        if prev is not None:
            rows = self._book.rows_between(*prev)
            if rows:
                self.desired = apply_signals(self.desired, rows, self.instrument_meta)
        pending = changed_targets(self.desired, self.traded)
        if not pending:
            return TradeDecisionWO([], self)
        equity = self._equity()
        deltas: dict[str, float] = {}
        for inst, target in pending.items():
            current = self._amount(inst)
            price = self._price(inst, start, end)
            if not math.isfinite(price):
                if inst not in self._warned_no_price:
                    self._warned_no_price.add(inst)
                    logger.warning("%s has no price at %s: its target %.4g stays pending", inst, start, target)
                continue  # no bar: keep the target pending
            delta = order_delta(target, equity, price, current)
            self.traded[inst] = target
            if abs(delta) * price > self.min_trade_value:
                deltas[inst] = delta
        return TradeDecisionWO(self._orders(deltas, start, end), self)


class LongShortStrategy(_CryptoStrategyBase):
    """Dollar-neutral long/short on perpetual swaps: every ``rebalance_every`` bars, the ``topk`` best scores
    go long and the ``topk`` worst go short, each with ``gross_exposure / (2 topk)`` of equity; everything
    else is closed. Scores stamped at bar ``t`` are traded at bar ``t + 1``. The first rebalance is the
    first step with scores on the bar before it; the next ones follow every ``rebalance_every`` steps.

    With ``long_only=True`` (for spot, which cannot be shorted) the ``topk`` best scores go long with
    ``gross_exposure / topk`` each and nothing is shorted. A long/short book over fewer than two perpetual
    swaps cannot trade: it is refused when the strategy is built (a ``ConfigError``), before any backtest.

    Parameters
    ----------
    signal : pandas.Series | pandas.DataFrame | str
        Model scores on a (datetime, instrument) index (``pred.pkl``, ``<PRED>`` in qrun YAML), a frame with
        ``datetime, instrument, score`` columns, or a path to one.
    topk : int
        Instruments per side (fewer when fewer than ``2 topk`` swaps have a score).
    rebalance_every : int
        Bars between rebalances (1 = every bar).
    gross_exposure : float
        Sum of absolute weights (1.0: half of equity long, half short).
    swaps_only : bool, optional
        Ignore scores of spot instruments. Default: True for the long/short book (spot cannot be shorted),
        False with ``long_only``.
    long_only : bool
        Long the ``topk`` best scores only (spot or swaps), no shorts. Default False.
    instrument_meta : mapping, optional
        As for :class:`SignalStrategy`.
    min_trade_value : float
        Rebalancing trades worth less than this are skipped. Default 0.
    skip_unknown : bool
        As for :class:`SignalStrategy`.
    """

    def __init__(
        self,
        *,
        signal: Any,
        topk: int,
        rebalance_every: int = 1,
        gross_exposure: float = 1.0,
        swaps_only: bool | None = None,
        long_only: bool = False,
        instrument_meta: Mapping[str, Any] | None = None,
        min_trade_value: float = 0.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(min_trade_value=min_trade_value, **kwargs)
        if int(topk) < 1:
            raise ConfigError(f"topk={topk} is below 1", hint="give the number of instruments per side, e.g. 3")
        if int(rebalance_every) < 1:
            raise ConfigError(f"rebalance_every={rebalance_every} is below 1", hint="give a number of bars >= 1")
        if not float(gross_exposure) > 0:
            raise ConfigError(f"gross_exposure={gross_exposure} must be > 0", hint="e.g. 1.0")
        self.topk = int(topk)
        self.rebalance_every = int(rebalance_every)
        self.gross_exposure = float(gross_exposure)
        self.long_only = bool(long_only)
        self.swaps_only = (not self.long_only) if swaps_only is None else bool(swaps_only)
        self.instrument_meta = dict(instrument_meta or {})
        frame = scores_frame(signal)
        frame = frame[np.isfinite(frame["score"].to_numpy())]
        check_longshort_universe(frame["instrument"].unique(), self.instrument_meta, self.long_only)
        if self.swaps_only:
            keep = np.array([is_swap(i, self.instrument_meta) for i in frame["instrument"]], dtype=bool)
            frame = frame[keep] if len(frame) else frame
        self._set_input_frame(frame)
        self.last_rebalance: int | None = None

    def _input_frame(self) -> pd.DataFrame:
        return self.scores

    def _set_input_frame(self, frame: pd.DataFrame) -> None:
        self.scores = frame
        self._book = TimeBook(frame, ["score"])

    def reset(self, level_infra=None, common_infra=None, outer_trade_decision=None, **kwargs: Any) -> None:
        super().reset(
            level_infra=level_infra, common_infra=common_infra, outer_trade_decision=outer_trade_decision, **kwargs
        )
        if level_infra is not None:  # a new backtest run
            self.last_rebalance = None
            self._check_instruments()

    def generate_trade_decision(self, execute_result: list | None = None) -> TradeDecisionWO:
        step = self.trade_calendar.get_trade_step()
        if not is_rebalance_step(step, self.rebalance_every, self.last_rebalance):
            return TradeDecisionWO([], self)
        start, end = self.trade_calendar.get_step_time(step)
        prev = self._previous_interval()
        if prev is None:
            return TradeDecisionWO([], self)
        latest = self._book.latest_between(*prev)
        if not latest:
            return TradeDecisionWO([], self)
        scores = {k: v[0] for k, v in latest.items()}
        if self.long_only:
            weights = longonly_weights(scores, self.topk, self.gross_exposure)
        else:
            weights = longshort_weights(scores, self.topk, self.gross_exposure)
        if not weights:
            return TradeDecisionWO([], self)
        self.last_rebalance = step
        held = {inst: self._amount(inst) for inst in self.trade_position.get_stock_list()}
        names = set(weights) | {k for k, v in held.items() if v != 0}
        prices = {inst: self._price(inst, start, end) for inst in sorted(names)}  # sorted: no set order
        deltas = orders_for_weights(weights, held, prices, self._equity(), self.min_trade_value)
        return TradeDecisionWO(self._orders(deltas, start, end), self)
