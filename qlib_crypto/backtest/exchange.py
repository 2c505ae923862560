"""``CryptoExchange``: Qlib's ``Exchange`` with a crypto fill model (fees, slippage, impact, lots, shorts, leverage).

See ``docs/backtest.md`` for every parameter and formula. The pure cost functions live in ``costs.py``.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Optional, Tuple

import numpy as np
import pandas as pd
from qlib.backtest.decision import Order, OrderDir
from qlib.backtest.exchange import Exchange
from qlib.backtest.high_performance_ds import BaseQuote, NumpyQuote
from qlib.backtest.position import BasePosition

from ..errors import BacktestError, ConfigError
from . import _qlib_compat as compat
from . import costs
from .position import CryptoPosition, isclose

logger = logging.getLogger(__name__)

#: OKX base-tier (regular user, VIP0) rates as read on 2026-11-24; re-check on OKX's fee schedule page.
DEFAULT_FEES: Dict[str, Dict[str, float]] = {
    "spot": {"maker": 0.0008, "taker": 0.0010},
    "swap": {"maker": 0.0002, "taker": 0.0005},
}

_DEAL_PRICES = ("close", "open", "vwap")

#: default of ``max_participation``: an order takes at most 10% of its bar's volume (the workflows' value)
DEFAULT_MAX_PARTICIPATION = 0.1
#: ``instrument_meta`` default: read ``meta/instruments.json`` of the provider directory of ``freq``
FROM_PROVIDER = "provider"


@dataclass
class FillRecord:
    """One executed fill (or one leg of a liquidation)."""

    datetime: pd.Timestamp
    instrument: str
    side: str  # "buy" | "sell"
    amount: float  # base units (coins), > 0
    deal_price: float  # the bar's deal price before slippage
    fill_price: float
    value: float  # amount x fill_price
    fee: float
    slippage: float  # amount x |fill_price - deal_price|
    role: str  # "taker" | "liquidation"
    market: str  # "spot" | "swap"

    def to_dict(self) -> dict:
        return {name: getattr(self, name) for name in self.__dataclass_fields__}


@dataclass
class OrderReport:
    """What happened to one order: requested vs filled amount and why it was clipped or rejected.

    ``deal_price`` is the bar's deal price (NaN when the instrument had no bar), ``capped`` the amount the
    participation cap removed (0 when it did not bind); ``unfilled x deal_price`` is the unfilled notional.
    """

    datetime: pd.Timestamp
    instrument: str
    side: str
    requested: float
    filled: float
    status: str  # "filled" | "partial" | "rejected"
    reasons: str  # ";"-joined reasons, "" when filled as asked
    deal_price: float = math.nan
    capped: float = 0.0

    @property
    def unfilled(self) -> float:
        return max(self.requested - self.filled, 0.0)

    def to_dict(self) -> dict:
        d = {name: getattr(self, name) for name in self.__dataclass_fields__}
        d["unfilled"] = self.unfilled
        return d


@dataclass
class Execution:
    """The outcome of one ``CryptoExchange.deal_order`` call: Qlib's ``(trade_val, trade_cost, trade_price)``,
    the fill (None when nothing traded) and the order report."""

    order: Order
    trade_val: float
    trade_cost: float
    trade_price: float
    fill: Optional[FillRecord]
    report: OrderReport


@dataclass
class InstrumentSpec:
    """Trading rules of one instrument in base units: lot size, minimum size and minimum notional.

    ``None`` = no rule (the documented default for an instrument without metadata: any fractional amount).
    """

    market: str = "spot"
    lot_size: float | None = None
    min_size: float | None = None
    min_notional: float | None = None
    contract_value: float = 1.0  # coins per contract (swaps; already applied to lot_size and min_size)
    tick_size: float | None = None  # informational: fills are not rounded to ticks
    read_at: str | None = None  # the day the metadata was read from the exchange


class FastQuote(BaseQuote):
    """``NumpyQuote`` with a real single-bar fast path over precomputed ``[bar, instrument]`` arrays.

    A query whose ``[start_time, end_time]`` covers exactly one bar of the quote's calendar is answered by one
    array lookup with the same result Qlib's own aggregation would give for that one bar; anything else falls
    back to ``NumpyQuote``.
    """

    def __init__(self, quote_df: pd.DataFrame, freq: str, region: str = "us") -> None:
        super().__init__(quote_df, freq)
        self._quote_df, self._freq, self._region = quote_df, freq, region
        self._numpy_quote: Optional[NumpyQuote] = None
        dt_level = quote_df.index.get_level_values("datetime")
        inst_level = quote_df.index.get_level_values("instrument")
        times = dt_level.unique().sort_values()
        self.times = times
        self.instruments = sorted(inst_level.unique())
        self.col_of = {inst: i for i, inst in enumerate(self.instruments)}
        self.row_of = {t: i for i, t in enumerate(times)}
        if len(times) > 1:
            step = times[1:] - times[:-1]
            nxt = list(times[1:]) + [times[-1] + step.min()]
        else:
            nxt = [times[0] + pd.Timedelta(hours=1)] if len(times) else []
        self._next = nxt
        self.arrays: Dict[str, np.ndarray] = {}
        self.bool_fields = set()
        # scatter every column into a [bar, instrument] array (missing cells: NaN, or True for bool columns)
        rows = times.get_indexer(dt_level)
        cols = pd.Index(self.instruments).get_indexer(inst_level)
        shape = (len(times), len(self.instruments))
        self.present = np.zeros(shape, dtype=bool)  # False where the (bar, instrument) row is missing
        self.present[rows, cols] = True
        for column in quote_df.columns:
            series = quote_df[column]
            if series.dtype == bool:
                self.bool_fields.add(column)
                arr = np.ones(shape, dtype=bool)
                arr[rows, cols] = series.to_numpy(dtype=bool)
            else:
                arr = np.full(shape, np.nan)
                arr[rows, cols] = series.to_numpy(dtype=np.float64, na_value=np.nan)
            self.arrays[column] = arr
        # True where the bar has no $close (Qlib's "suspended"): one lookup answers every tradability check
        self.suspended = np.isnan(self.arrays["$close"]) if "$close" in self.arrays else None
        self._last_key: Tuple[Any, Any] = (None, None)
        self._last_row: Optional[int] = None

    def get_all_stock(self):
        return self.col_of.keys()

    @property
    def numpy_quote(self) -> NumpyQuote:
        """Qlib's quote, built on first use, for queries spanning several bars."""
        if self._numpy_quote is None:
            self._numpy_quote = NumpyQuote(self._quote_df, self._freq, self._region)
        return self._numpy_quote

    def single_row(self, start_time: Any, end_time: Any) -> Optional[int]:
        """Row of the one bar ``[start_time, end_time]`` covers exactly, else None."""
        if start_time is self._last_key[0] and end_time is self._last_key[1]:
            return self._last_row
        row = self.row_of.get(start_time)
        if row is not None and not (end_time < self._next[row] and end_time >= start_time):
            row = None
        self._last_key = (start_time, end_time)
        self._last_row = row
        return row

    def locate(self, stock_id: str, start_time: Any, end_time: Any) -> Optional[Tuple[int, int]]:
        """``(row, col)`` of ``stock_id`` on the one bar ``[start_time, end_time]`` covers, else None."""
        col = self.col_of.get(stock_id)
        if col is None:
            return None
        row = self.single_row(start_time, end_time)
        return None if row is None else (row, col)

    def get_data(self, stock_id, start_time, end_time, field, method=None):  # noqa: D102 (BaseQuote's contract)
        col = self.col_of.get(stock_id)
        if col is None:
            return None
        arr = self.arrays.get(field)
        row = self.single_row(start_time, end_time) if arr is not None else None
        if row is None:
            return self.numpy_quote.get_data(stock_id, start_time, end_time, field, method)
        if not self.present[row, col]:
            return None  # Qlib's answer for a bar without a row
        value = arr[row, col]
        if field in self.bool_fields:
            return bool(value)
        value = float(value)
        if method == "ts_data_last" and math.isnan(value):
            return None
        if method == "sum" and math.isnan(value):
            return 0.0
        return value


def _as_float(value: Any) -> float | None:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(out) or out <= 0 else out


def _meta_rows(instrument_meta: Any) -> Tuple[Mapping[str, Mapping[str, Any]], Dict[str, Any]]:
    """(rows instId -> fields, description of the source) from any accepted ``instrument_meta`` value."""
    if isinstance(instrument_meta, (str, Path)):
        from ..provider.meta import read_provider_meta  # the provider is a lower layer

        path = Path(instrument_meta).expanduser()
        doc = read_provider_meta(path) if path.is_dir() else None
        if doc is not None:
            return doc["instruments"], {"source": f"provider {path}", "read_at": doc.get("read_at")}
        if path.is_dir() and not (path / "meta" / "instruments").is_dir() and (path / "calendars").is_dir():
            return {}, {
                "source": f"provider {path} (no meta/instruments.json: dump it again to add metadata)",
                "read_at": None,
            }
        from ..store import read_instrument_meta  # a raw store directory

        frame = read_instrument_meta(path)
        read_at = str(frame["read_at"].iloc[0]) if "read_at" in frame.columns and len(frame) else None
        return frame.set_index("instId").to_dict(orient="index"), {"source": f"store {path}", "read_at": read_at}
    if isinstance(instrument_meta, pd.DataFrame):
        frame = instrument_meta
        if "instId" in frame.columns:
            frame = frame.set_index("instId")
        return frame.to_dict(orient="index"), {"source": "DataFrame", "read_at": None}
    if isinstance(instrument_meta, Mapping):
        if isinstance(instrument_meta.get("instruments"), Mapping):  # a provider metadata document
            return instrument_meta["instruments"], {
                "source": "provider document",
                "read_at": instrument_meta.get("read_at"),
            }
        return instrument_meta, {"source": "dict", "read_at": None}
    raise ConfigError(
        f"instrument_meta of type {type(instrument_meta).__name__} is not supported",
        hint="give 'provider' (the default), a provider or store directory, a DataFrame with an instId column, "
        "a dict instId -> {lotSz, minSz...} or null",
    )


def load_instrument_specs(instrument_meta: Any) -> Dict[str, InstrumentSpec]:
    """Instrument rules from a provider directory (its ``meta/instruments.json``), a store directory, a provider
    metadata document, a DataFrame (``instId`` column or index) or a dict instId -> fields.

    Recognised fields: ``instType`` (SPOT/SWAP/...), ``lotSz``, ``minSz``, ``ctVal`` (contract value in coins:
    for swaps ``lotSz`` and ``minSz`` count contracts and are multiplied by ``ctVal x ctMult``), ``minNotional``,
    ``tickSz``, ``read_at``.
    """
    if instrument_meta is None:
        return {}
    rows, _ = _meta_rows(instrument_meta)
    return _specs_from_rows(rows)


def _specs_from_rows(rows: Mapping[str, Mapping[str, Any]]) -> Dict[str, InstrumentSpec]:
    specs: Dict[str, InstrumentSpec] = {}
    for inst in sorted(rows, key=str):
        meta = rows[inst] if isinstance(rows[inst], Mapping) else {"instType": rows[inst]}
        inst_type = str(meta.get("instType") or "").upper()
        if inst_type in ("SWAP", "FUTURES"):
            market = "swap"
        elif inst_type in ("SPOT", "MARGIN"):
            market = "spot"
        else:
            market = "swap" if str(inst).upper().endswith("-SWAP") else "spot"
        mult = 1.0
        ct_val = _as_float(meta.get("ctVal"))
        if market == "swap" and ct_val is not None:
            mult = ct_val * (_as_float(meta.get("ctMult")) or 1.0)
        lot = _as_float(meta.get("lotSz"))
        min_size = _as_float(meta.get("minSz"))
        read_at = meta.get("read_at")
        if read_at in (None, "") or (isinstance(read_at, float) and math.isnan(read_at)):
            read_at = None
        specs[str(inst)] = InstrumentSpec(
            market=market,
            lot_size=lot * mult if lot is not None else None,
            min_size=min_size * mult if min_size is not None else None,
            min_notional=_as_float(meta.get("minNotional")),
            contract_value=mult,
            tick_size=_as_float(meta.get("tickSz")),
            read_at=None if read_at is None else str(read_at),
        )
    return specs


def _provider_dir(freq: str) -> Optional[Path]:
    """The provider directory Qlib reads ``freq`` from (None when Qlib has no local directory for it)."""
    try:
        from qlib.config import C

        path = Path(C.dpm.get_data_uri(freq))  # as Qlib resolves it (a frequency it lacks: its default one)
    except Exception:  # noqa: BLE001 - Qlib not initialised, or an NFS/unknown URI: no provider metadata
        return None
    return path if path.is_dir() else None


def _check_fees(fees: Mapping[str, Mapping[str, float]] | None) -> Dict[str, Dict[str, float]]:
    merged = {m: dict(r) for m, r in DEFAULT_FEES.items()}
    for market, rates in (fees or {}).items():
        if market not in merged:
            raise ConfigError(f"unknown market {market!r} in fees", hint="use the keys spot and swap")
        for role, rate in (rates or {}).items():
            if role not in ("maker", "taker"):
                raise ConfigError(f"unknown fee role {role!r} for {market}", hint="use maker and taker")
            try:
                value = float(rate) if rate is not None and not isinstance(rate, bool) else float("nan")
            except (TypeError, ValueError):
                value = float("nan")
            if not (-0.01 <= value < 0.1):
                raise ConfigError(
                    f"fee rate {rate!r} for {market}.{role} is not a number in [-0.01, 0.1)",
                    hint="give a fraction, e.g. 0.001 for 0.1%",
                )
            merged[market][role] = value
    return merged


def _quote_features(
    instruments: Any,
    fields: list,
    start_time: Any = None,
    end_time: Any = None,
    freq: str = "day",
    disk_cache: Any = None,
    **kwargs: Any,
) -> pd.DataFrame:
    """``D.features`` for the exchange's quote, read by the fast feature engine: the raw fields of all instruments
    at once from the provider's ``.bin`` files (the same frame, values and rows as ``D.features``; tested in
    tests/test_qlib_compat.py). Expressions the engine does not know, or extra arguments, go to Qlib's own."""
    from qlib.data import D

    from ..data.engine import ExpressionError, compile_exprs
    from ..data.loader import load_expressions

    try:
        compile_exprs(fields)
    except ExpressionError:
        kwargs["disk_cache"] = disk_cache
    if kwargs:
        return D.features(instruments, fields, start_time, end_time, freq=freq, **kwargs)
    return load_expressions(instruments, fields, pd.Index(fields), start_time, end_time, freq, swap_level=False)


class CryptoExchange(Exchange):
    """Qlib ``Exchange`` for crypto spot and perpetual swaps (24/7, fractional amounts, shorts on swaps).

    Parameters (besides Qlib's own ``start_time, end_time, codes, subscribe_fields, extra_quote, quote_cls...``):
    freq: bar frequency (``60min``, ``day``...). deal_price: ``close | open | vwap`` of the bar the order executes
    in. fees: ``{spot: {maker, taker}, swap: {maker, taker}}`` fractions (defaults: OKX base tier). slippage_bps:
    fixed slippage in basis points. impact_coef: square-root impact coefficient (0 disables). max_participation:
    largest fraction of the bar's volume one order may take (default 0.1; None: no cap). instrument_meta:
    ``"provider"`` (default: ``meta/instruments.json`` of the provider directory of ``freq``, written by
    ``qlib-crypto dump``), a provider or store directory, a DataFrame or a dict with ``lotSz minSz ctVal
    minNotional instType`` (None: no metadata). Instruments without metadata get the documented defaults
    (market from the name, no lot size, no minimums, contract value 1). ``trade_unit`` is forced to None,
    ``min_cost`` to 0 and ``limit_threshold`` to None.
    """

    def __init__(
        self,
        freq: str = "60min",
        deal_price: str = "close",
        fees: Mapping[str, Mapping[str, float]] | None = None,
        slippage_bps: float = 0.0,
        impact_coef: float = 0.0,
        max_participation: float | None = DEFAULT_MAX_PARTICIPATION,
        instrument_meta: Any = FROM_PROVIDER,
        subscribe_fields: list | None = None,
        quote_cls: type = FastQuote,
        **kwargs: Any,
    ) -> None:
        if isinstance(deal_price, str) and deal_price.lstrip("$") not in _DEAL_PRICES:
            raise ConfigError(f"deal_price {deal_price!r} is not supported", hint="use close, open or vwap")
        if not isinstance(deal_price, str):
            raise ConfigError(f"deal_price {deal_price!r} must be one string", hint="use close, open or vwap")
        if slippage_bps is None or float(slippage_bps) < 0:
            raise ConfigError(f"slippage_bps {slippage_bps!r} must be >= 0", hint="give basis points, e.g. 2.0")
        if impact_coef is None or float(impact_coef) < 0:
            raise ConfigError(f"impact_coef {impact_coef!r} must be >= 0", hint="0 disables market impact")
        if max_participation is not None and not (0 < float(max_participation) <= 1):
            raise ConfigError(
                f"max_participation {max_participation!r} must be in (0, 1]", hint="e.g. 0.1, or null for no cap"
            )
        self.fees = _check_fees(fees)
        self.slippage_bps = float(slippage_bps)
        self.impact_coef = float(impact_coef)
        self.max_participation = None if max_participation is None else float(max_participation)
        if isinstance(instrument_meta, str) and instrument_meta == FROM_PROVIDER:
            provider = _provider_dir(freq)
            if provider is None:
                rows, self.meta_source = {}, {"source": f"none (no local {freq} provider directory)", "read_at": None}
            else:
                rows, self.meta_source = _meta_rows(provider)
        elif instrument_meta is None:
            rows, self.meta_source = {}, {"source": "none (instrument_meta: null)", "read_at": None}
        else:
            rows, self.meta_source = _meta_rows(instrument_meta)
        self.instrument_specs = _specs_from_rows(rows)
        self._markets: Dict[str, str] = {}
        self._recording: Optional[List[Execution]] = None
        for key, forced in (("trade_unit", None), ("min_cost", 0.0), ("limit_threshold", None)):
            if kwargs.get(key, forced) != forced:
                logger.warning("CryptoExchange ignores %s=%r (crypto: always %r)", key, kwargs[key], forced)
            kwargs[key] = forced
        kwargs.pop("open_cost", None)
        kwargs.pop("close_cost", None)
        kwargs.pop("impact_cost", None)
        fields = list(subscribe_fields or [])
        for extra in ("$open", "$high", "$low", "$funding_rate"):
            if extra not in fields:
                fields.append(extra)
        super().__init__(
            freq=freq,
            deal_price=deal_price,
            subscribe_fields=fields,
            open_cost=self.fees["spot"]["taker"],
            close_cost=self.fees["spot"]["taker"],
            impact_cost=0.0,
            quote_cls=quote_cls,
            **kwargs,
        )
        self._fast = self.quote if isinstance(self.quote, FastQuote) else None
        self._warned_deal_price: set = set()

    # ------------------------------------------------------------------ metadata
    def quote_instruments(self) -> List[str]:
        """The instruments of the loaded quote, sorted."""
        return sorted(str(i) for i in self.quote.get_all_stock())

    def metadata_summary(self) -> Dict[str, Any]:
        """Where the instrument metadata came from and which traded instruments use the defaults.

        ``{"source", "read_at", "with_metadata": [...], "defaults": [...]}`` over the quote's instruments;
        an instrument in ``defaults`` trades with the documented defaults (market from its name, no lot size,
        no minimum size or notional, contract value 1)."""
        names = self.quote_instruments()
        return {
            "source": self.meta_source.get("source"),
            "read_at": self.meta_source.get("read_at"),
            "with_metadata": [n for n in names if n in self.instrument_specs],
            "defaults": [n for n in names if n not in self.instrument_specs],
        }

    # ------------------------------------------------------------------ data
    def get_quote_from_qlib(self) -> None:
        # Qlib builds ``all_fields`` as ``list(set(...))``: its order (the quote frame's column order) changes with
        # PYTHONHASHSEED. A sorted list gives every run the same frame.
        compat.sort_quote_fields(self)
        with compat.quote_features(_quote_features):
            super().get_quote_from_qlib()
        # NaN volume on a bar with a price: no traded volume is known; treat it as 0 (documented).
        vol = self.quote_df["$volume"]
        if vol.isna().any():
            self.quote_df["$volume"] = vol.fillna(0.0)

    def market_of(self, instrument: str) -> str:
        """``spot`` or ``swap``: from the metadata's instType, else from the name (``-SWAP`` = swap)."""
        market = self._markets.get(instrument)
        if market is None:
            spec = self.instrument_specs.get(instrument)
            if spec is not None:
                market = spec.market
            else:
                market = "swap" if instrument.upper().endswith("-SWAP") else "spot"
            self._markets[instrument] = market
        return market

    def taker_fee(self, instrument: str) -> float:
        return self.fees[self.market_of(instrument)]["taker"]

    def _cell(self, stock_id: str, start_time: Any, end_time: Any, field: str) -> Optional[float]:
        """One bar's value through the fast path, or None when the query is not a single known bar."""
        fast = self._fast
        if fast is None:
            return None
        col = fast.col_of.get(stock_id)
        if col is None:
            return None
        row = fast.single_row(start_time, end_time)
        if row is None:
            return None
        return float(fast.arrays[field][row, col])

    def check_stock_suspended(self, stock_id: str, start_time: pd.Timestamp, end_time: pd.Timestamp) -> bool:
        fast = self._fast
        if fast is not None and fast.suspended is not None:
            col = fast.col_of.get(stock_id)
            if col is not None:
                row = fast.single_row(start_time, end_time)
                if row is not None:
                    return bool(fast.suspended[row, col])
        return super().check_stock_suspended(stock_id, start_time, end_time)

    def check_stock_limit(self, stock_id, start_time, end_time, direction=None) -> bool:
        # limit_threshold is always None: limited == suspended (no price bands in crypto)
        return self.check_stock_suspended(stock_id, start_time, end_time)

    def is_stock_tradable(self, stock_id, start_time, end_time, direction=None) -> bool:
        return not self.check_stock_suspended(stock_id, start_time, end_time)

    def check_order(self, order: Order) -> bool:
        return not self.check_stock_suspended(order.stock_id, order.start_time, order.end_time)

    def get_close(self, stock_id, start_time, end_time, method="ts_data_last"):
        if method == "ts_data_last":
            close = self._cell(stock_id, start_time, end_time, "$close")
            if close is not None:
                return None if math.isnan(close) else close
        return super().get_close(stock_id, start_time, end_time, method)

    def get_volume(self, stock_id, start_time, end_time, method="sum"):
        if method == "sum":
            vol = self._cell(stock_id, start_time, end_time, "$volume")
            if vol is not None:
                return 0.0 if math.isnan(vol) else vol
        return super().get_volume(stock_id, start_time, end_time, method)

    def get_factor(self, stock_id, start_time, end_time):
        factor = self._cell(stock_id, start_time, end_time, "$factor")
        if factor is not None:
            return factor
        return super().get_factor(stock_id, start_time, end_time)

    def get_deal_price(self, stock_id, start_time, end_time, direction, method="ts_data_last"):
        if method == "ts_data_last":
            pstr = self.sell_price if direction == OrderDir.SELL else self.buy_price
            price = self._cell(stock_id, start_time, end_time, pstr)
            if price is not None:
                if not (price > 1e-8):
                    bad = price
                    price = bad if pstr == "$close" else self._cell(stock_id, start_time, end_time, "$close")
                    if stock_id not in self._warned_deal_price:
                        self._warned_deal_price.add(stock_id)
                        if price is not None and price > 1e-8 and pstr != "$close":
                            logger.warning(
                                "%s: %s is %s at %s; using that bar's $close %s instead (warned once per instrument)",
                                stock_id,
                                pstr,
                                bad,
                                start_time,
                                price,
                            )
                        else:
                            logger.warning(
                                "%s: no usable deal price at %s (%s is %s%s); no price for that bar "
                                "(warned once per instrument)",
                                stock_id,
                                start_time,
                                pstr,
                                bad,
                                "" if pstr == "$close" else f", $close is {price}",
                            )
                    return None if price is None or math.isnan(price) else price
                return price
        return super().get_deal_price(stock_id, start_time, end_time, direction, method)

    def get_funding_rate(self, stock_id: str, start_time: pd.Timestamp, end_time: pd.Timestamp) -> float:
        """The funding rate settling in this bar (NaN when none)."""
        rate = self._cell(stock_id, start_time, end_time, "$funding_rate")
        if rate is None:
            value = self.quote.get_data(stock_id, start_time, end_time, field="$funding_rate", method="sum")
            rate = float(value) if value else math.nan
        return rate

    def get_bar_field(self, stock_id: str, start_time: pd.Timestamp, end_time: pd.Timestamp, field: str) -> float:
        """One bar's value of a quote field (``$open $high $low $close $volume``...), NaN when missing."""
        value = self._cell(stock_id, start_time, end_time, field)
        if value is None:
            value = self.quote.get_data(stock_id, start_time, end_time, field=field, method="ts_data_last")
            value = math.nan if value is None else float(value)
        return value

    # ------------------------------------------------------------------ fills
    def _fill_order(self, order: Order, position: Optional[BasePosition]) -> Tuple[float, float, float, dict]:
        """Apply the fill model to ``order`` (sets ``order.deal_amount``); returns price, value, fee and details."""
        stock, start, end = order.stock_id, order.start_time, order.end_time
        side = 1 if order.direction == Order.BUY else -1
        market = self.market_of(stock)
        spec = self.instrument_specs.get(stock)
        fee_rate = self.fees[market]["taker"]
        fast = self._fast
        loc = fast.locate(stock, start, end) if fast is not None else None
        arrays = fast.arrays if fast is not None else {}
        if loc is not None and "$volume" in arrays and "$factor" in arrays:
            # one bar: read the deal price, volume and factor straight from the quote arrays
            row, col = loc
            deal = float(arrays[self.sell_price if side < 0 else self.buy_price][row, col])
            if not deal > 1e-8:  # missing/zero deal price: get_deal_price's $close fallback (and warning)
                deal = float(self.get_deal_price(stock, start, end, direction=order.direction))
            volume = float(arrays["$volume"][row, col])
            if math.isnan(volume):
                volume = 0.0
            order.factor = float(arrays["$factor"][row, col])
        else:
            deal = float(self.get_deal_price(stock, start, end, direction=order.direction))
            volume = self.get_volume(stock, start, end)
            volume = 0.0 if volume is None or math.isnan(volume) else float(volume)
            order.factor = self.get_factor(stock, start, end)
        requested = float(order.amount)
        q = requested
        reasons: list[str] = []
        held = 0.0
        if position is not None and position.check_stock(stock):
            held = float(position.get_stock_amount(stock))
        can_short = market == "swap" and isinstance(position, CryptoPosition)

        # 1) spot (or a position class without shorts) is long-only; Qlib's rule: selling (almost) all goes through
        if side < 0 and position is not None and not can_short and not isclose(q, held):
            if q > held:
                reasons.append("spot_long_only" if market == "spot" else "position_cannot_short")
            q = max(min(q, held), 0.0)
        # 2) participation cap
        cap = costs.participation_cap(volume, self.max_participation)
        capped = 0.0
        if q > cap:
            reasons.append("no_volume" if cap == 0 else "participation_cap")
            capped = q - cap
            q = cap
        sigma = 0.0
        if self.impact_coef > 0:
            sigma = costs.bar_volatility(
                self.get_bar_field(stock, start, end, "$high"),
                self.get_bar_field(stock, start, end, "$low"),
                self.get_bar_field(stock, start, end, "$close"),
            )
            if q > 0 and volume <= 0:
                reasons.append("no_volume")
                q = 0.0
        impact = costs.market_impact(q, volume, sigma, self.impact_coef)
        fill = costs.fill_price(deal, side, self.slippage_bps, impact)
        # 3) leverage limit (margin accounts)
        max_lev = getattr(position, "max_leverage", None) if isinstance(position, CryptoPosition) else None
        if max_lev is not None and q > 0:
            equity = position.calculate_value()
            gross = position.gross_exposure()
            if held != 0.0:
                marked = position.get_stock_price(stock)
                equity += held * (deal - marked)
                gross -= abs(held) * marked
            cost_rate = fee_rate + abs(fill - deal) / deal
            q_max = costs.max_amount_for_leverage(held, side, deal, gross, equity, max_lev, cost_rate)
            if q > q_max * (1 + 1e-12):
                reasons.append("max_leverage")
                q = q_max
        # 4) spot buys are paid in cash (Qlib's cash rule with min_cost = 0)
        if side > 0 and market == "spot" and position is not None:
            cash = position.get_cash()
            value = q * fill
            if cash < value * fee_rate:
                if q > 0:
                    reasons.append("insufficient_cash")
                q = 0.0
            elif cash < value * (1 + fee_rate):
                reasons.append("cash_limit")
                q = min(q, costs.max_buy_amount_for_cash(cash, fill, fee_rate))
        elif side < 0 and market == "spot" and position is not None:
            if position.get_cash() + q * fill < q * fill * fee_rate:
                reasons.append("insufficient_cash")
                q = 0.0
        # 5) lot size, then minimum size / notional
        if spec is not None and spec.lot_size:
            rounded = costs.round_down_to_lot(q, spec.lot_size)
            if rounded < q:
                reasons.append("below_lot_size" if rounded == 0 else "lot_rounding")
            q = rounded
        if spec is not None and q > 0:
            if spec.min_size and q < spec.min_size * (1 - 1e-9):
                reasons.append("below_min_size")
                q = 0.0
            elif spec.min_notional and q * deal < spec.min_notional:
                reasons.append("below_min_notional")
                q = 0.0
        # final fill at the final amount
        impact = costs.market_impact(q, volume, sigma, self.impact_coef)
        fill = costs.fill_price(deal, side, self.slippage_bps, impact)
        order.deal_amount = q
        trade_val = q * fill
        fee = costs.trade_fee(q, fill, fee_rate)
        slip = costs.slippage_cost(q, fill, deal)
        if trade_val <= 1e-5:
            trade_val, fee, slip = 0.0, 0.0, 0.0
        details = {
            "market": market,
            "deal_price": deal,
            "fill_price": fill,
            "slippage": slip,
            "requested": requested,
            "reasons": reasons,
            "capped": capped,
        }
        return fill, trade_val, fee, details

    @contextlib.contextmanager
    def record_executions(self) -> Iterator[List[Execution]]:
        """Collect the :class:`Execution` of every ``deal_order`` call made inside the ``with`` block.

        ``CryptoExecutor`` wraps Qlib's order loop (``SimulatorExecutor._collect_data``) in it to get each
        order's fill and report; outside a block nothing is kept."""
        outer, log = self._recording, []
        self._recording = log
        try:
            yield log
        finally:
            self._recording = outer

    def deal_order(
        self,
        order: Order,
        trade_account: Any = None,
        position: BasePosition | None = None,
        dealt_order_amount: Dict[str, float] = defaultdict(float),
    ) -> Tuple[float, float, float]:
        """Execute ``order`` with the crypto fill model and book it on the account (or position).

        Qlib's contract: returns ``(trade_val, trade_cost, trade_price)`` and sets ``order.deal_amount``. The
        fill and the order report go to the active :meth:`record_executions` block, if any."""
        side = "buy" if order.direction == Order.BUY else "sell"
        if trade_account is not None and position is not None:
            raise BacktestError("deal_order got both trade_account and position", hint="pass only one of them")
        recording = self._recording
        if not self.check_order(order):
            order.deal_amount = 0.0
            if recording is not None:
                report = OrderReport(
                    order.start_time, order.stock_id, side, float(order.amount), 0.0, "rejected", "not_tradable"
                )
                recording.append(Execution(order, 0.0, 0.0, np.nan, None, report))
            return 0.0, 0.0, np.nan
        pos = trade_account.current_position if trade_account is not None else position
        trade_price, trade_val, trade_cost, details = self._fill_order(order, pos)
        fill = None
        if trade_val > 1e-5:
            if isinstance(pos, CryptoPosition) and order.direction == Order.SELL:
                pos.open_entry(order.stock_id, trade_price)  # a short opened: Qlib's Account books its return first
            if trade_account is not None:
                trade_account.update_order(order=order, trade_val=trade_val, cost=trade_cost, trade_price=trade_price)
            elif pos is not None:
                pos.update_order(order=order, trade_val=trade_val, cost=trade_cost, trade_price=trade_price)
        if recording is None:  # e.g. a strategy simulating its sells on a copy of the position
            return trade_val, trade_cost, trade_price
        if trade_val > 1e-5:
            fill = FillRecord(
                datetime=order.start_time,
                instrument=order.stock_id,
                side=side,
                amount=order.deal_amount,
                deal_price=details["deal_price"],
                fill_price=trade_price,
                value=trade_val,
                fee=trade_cost,
                slippage=details["slippage"],
                role="taker",
                market=details["market"],
            )
        filled = order.deal_amount if trade_val > 1e-5 else 0.0
        requested = details["requested"]
        status = "filled" if filled >= requested * (1 - 1e-9) else ("partial" if filled > 0 else "rejected")
        report = OrderReport(
            order.start_time,
            order.stock_id,
            side,
            requested,
            filled,
            status,
            ";".join(details["reasons"]),
            details["deal_price"],
            details["capped"],
        )
        recording.append(Execution(order, trade_val, trade_cost, trade_price, fill, report))
        return trade_val, trade_cost, trade_price
