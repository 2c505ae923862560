"""The fill and cost model as small pure functions (no Qlib objects, no I/O).

Notation: ``deal`` is the bar's deal price (close, open or vwap), ``q >= 0`` the traded amount in base units
(coins; for swaps ``contracts x ctVal``), ``side`` is ``+1`` for a buy and ``-1`` for a sell.

- bar volatility      ``sigma = (high - low) / close`` of the bar the order executes in
- impact              ``impact = impact_coef x sigma x sqrt(q / bar_volume)``
- buy fill            ``fill = deal x (1 + slippage_bps / 10_000 + impact)``
- sell fill           ``fill = deal x (1 - slippage_bps / 10_000 - impact)``
- fee                 ``fee = q x fill x fee_rate`` (market orders pay the taker rate)
- slippage cost       ``slippage = q x |fill - deal|``
- funding payment     ``payment = amount x price x funding_rate`` (signed amount; > 0 means paid by the holder)
"""

from __future__ import annotations

import math


def bar_volatility(high: float, low: float, close: float) -> float:
    """Relative range of a bar, ``(high - low) / close``; 0 when any input is missing or close <= 0."""
    if not (close > 0) or math.isnan(high) or math.isnan(low):
        return 0.0
    return max(high - low, 0.0) / close


def market_impact(amount: float, bar_volume: float, volatility: float, impact_coef: float) -> float:
    """Square-root participation impact as a fraction of price: ``impact_coef x volatility x sqrt(q / volume)``.

    Returns 0 when ``impact_coef`` is 0 or the amount is 0; ``inf`` when the bar has no volume but an amount is
    traded with a positive coefficient (the caller rejects such orders).
    """
    if impact_coef == 0.0 or amount <= 0.0:
        return 0.0
    if not (bar_volume > 0):
        return math.inf
    return impact_coef * volatility * math.sqrt(amount / bar_volume)


def fill_price(deal_price: float, side: int, slippage_bps: float, impact: float = 0.0) -> float:
    """Fill price of a market order: ``deal x (1 + side x (slippage_bps / 1e4 + impact))``."""
    return deal_price * (1.0 + side * (slippage_bps / 1e4 + impact))


def trade_fee(amount: float, fill: float, fee_rate: float) -> float:
    """Exchange fee: ``|amount| x fill x fee_rate``."""
    return abs(amount) * fill * fee_rate


def slippage_cost(amount: float, fill: float, deal_price: float) -> float:
    """Cost of slippage and impact against the deal price: ``|amount| x |fill - deal|``."""
    return abs(amount) * abs(fill - deal_price)


def round_down_to_lot(amount: float, lot_size: float | None) -> float:
    """Round a non-negative amount down to a multiple of ``lot_size`` (no rounding when None or <= 0).

    A relative tolerance of 1e-9 lot keeps ``0.3 / 0.1`` from rounding down to 0.2.
    """
    if not lot_size or lot_size <= 0 or amount <= 0:
        return max(amount, 0.0)
    n_lots = math.floor(amount / lot_size + 1e-9)
    return n_lots * lot_size


def participation_cap(bar_volume: float, max_participation: float | None) -> float:
    """Largest amount one order may take from a bar: ``max_participation x bar_volume`` (inf when no cap)."""
    if max_participation is None:
        return math.inf
    if not (bar_volume > 0):
        return 0.0
    return max_participation * bar_volume


def max_buy_amount_for_cash(cash: float, fill: float, fee_rate: float) -> float:
    """Largest amount whose value plus fee fits in ``cash``: ``cash / (1 + fee_rate) / fill``."""
    if cash <= 0 or fill <= 0:
        return 0.0
    return cash / (1.0 + fee_rate) / fill


def max_amount_for_leverage(
    current_amount: float,
    side: int,
    price: float,
    other_gross: float,
    equity: float,
    max_leverage: float,
    cost_rate: float = 0.0,
) -> float:
    """Largest order amount ``q`` keeping ``gross / equity <= max_leverage`` after the trade.

    ``gross = other_gross + |current_amount + side x q| x price`` and the equity after the trade is
    ``equity - q x price x cost_rate`` (fees and slippage). Reducing an existing position towards zero is always
    allowed; beyond zero the bound is ``q <= (L x E - other_gross - x x price) / (price x (1 + L x cost_rate))``
    with ``x = side x current_amount``.
    """
    if price <= 0:
        return 0.0
    x = side * current_amount
    reduce_only = max(-x, 0.0)
    bound = (max_leverage * equity - other_gross - x * price) / (price * (1.0 + max_leverage * cost_rate))
    return max(bound, reduce_only, 0.0)


def funding_payment(amount: float, price: float, funding_rate: float) -> float:
    """Funding paid by the holder of a signed ``amount``: ``amount x price x funding_rate``.

    Positive: paid (a long with a positive rate, or a short with a negative rate). Negative: received.
    """
    return amount * price * funding_rate


def liquidation_triggered(equity: float, gross_exposure: float, maintenance_margin: float) -> bool:
    """True when ``equity < maintenance_margin x gross_exposure`` and there is some exposure."""
    return gross_exposure > 0 and equity < maintenance_margin * gross_exposure
