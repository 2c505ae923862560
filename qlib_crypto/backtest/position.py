"""``CryptoPosition``: a Qlib ``Position`` with signed amounts (shorts on swaps), margin accounting and cheap copies.

Accounting (quote currency, e.g. USDT): ``cash`` is the collateral. A buy pays ``value + fee`` out of cash and a
sell receives ``value - fee`` (a short sale credits the proceeds and holds a negative amount). Then

    equity = cash + sum(amount x price)         gross exposure = sum(|amount| x price)
    leverage = gross exposure / equity

with prices marked to the bar close at every bar end (by Qlib's ``Account``). This is exactly Qlib's
``calculate_value()``, so Qlib's account value, returns and reports stay valid.

Set it through the account's ``pos_type``: ``pos_type="qlib_crypto.backtest.CryptoPosition"`` (Qlib resolves a
dotted class name); ``CryptoExecutor`` also upgrades a plain ``Position`` with nothing in it to this class.
"""

from __future__ import annotations

from typing import Dict, List, Union

from qlib.backtest.decision import Order
from qlib.backtest.position import Position

from . import _qlib_compat as compat

_SPECIAL_KEYS = ("cash", "now_account_value", "cash_delay")


def isclose(a: float, b: float) -> bool:
    """``numpy.isclose(a, b)`` for two floats (rtol 1e-5, atol 1e-8), without numpy's per-call overhead."""
    return abs(a - b) <= 1e-8 + 1e-5 * abs(b)


class CryptoPosition(Position):
    """Position with signed amounts; ``max_leverage`` and ``maintenance_margin`` are read by the exchange/executor.

    ``max_leverage`` (default 3.0): orders are scaled down so that gross exposure / equity stays at or below it
    (None disables the check). ``maintenance_margin`` (default 0.005): the executor liquidates everything when
    equity < maintenance_margin x gross exposure at a bar close.
    """

    max_leverage: float | None = 3.0
    maintenance_margin: float = 0.005

    def __init__(self, cash: float = 0, position_dict: Dict[str, Union[Dict[str, float], float]] = {}) -> None:
        super().__init__(cash=cash, position_dict=position_dict)

    # -- cheap copies (Qlib deep-copies the position every bar and in TopkDropoutStrategy every step) --
    def __deepcopy__(self, memo: dict) -> "CryptoPosition":
        new = self.__class__.__new__(self.__class__)
        new.__dict__.update(self.__dict__)
        new.position = {k: (v.copy() if isinstance(v, dict) else v) for k, v in self.position.items()}
        if "_closed_prices" in self.__dict__:
            new._closed_prices = dict(self._closed_prices)
        memo[id(self)] = new
        return new

    def __copy__(self) -> "CryptoPosition":
        return self.__deepcopy__({})

    # -- trading --
    def update_order(self, order: Order, trade_val: float, cost: float, trade_price: float) -> None:
        """Apply a fill: signed amount change ``+-trade_val / trade_price``; cash moves by value and fee."""
        stock_id = order.stock_id
        trade_amount = trade_val / trade_price
        if order.direction == Order.BUY:
            signed = trade_amount
        elif order.direction == Order.SELL:
            signed = -trade_amount
        else:
            raise NotImplementedError(f"do not support order direction {order.direction}")
        entry = self.position.get(stock_id)
        if entry is None:
            compat.add_position_entry(self, stock_id, signed, trade_price)
        elif isclose(entry["amount"], -signed):
            # closing the whole position (long or short): remember its last mark for Qlib's Account, which books
            # a buy's return after the position was updated
            closed = self.__dict__.setdefault("_closed_prices", {})
            closed.clear()
            closed[stock_id] = entry["price"]
            compat.remove_position_entry(self, stock_id)
        else:
            entry["amount"] += signed
        if signed > 0:
            self.position["cash"] -= trade_val + cost
        else:
            new_cash = trade_val - cost
            if compat.position_settle_type(self) == self.ST_CASH:
                self.position["cash_delay"] += new_cash
            else:
                self.position["cash"] += new_cash

    def open_entry(self, stock_id: str, price: float) -> None:
        """Hold ``stock_id`` with amount 0 at ``price`` unless it is held already.

        Qlib's ``Account`` books a sell's return (``value - amount x held price``) *before* the position applies
        the order, so a sell that opens a short needs an entry priced at its fill: then that return is 0, as for
        a buy that opens a long. The exchange calls this before passing such an order to the account.
        """
        if stock_id not in self.position:
            compat.add_position_entry(self, stock_id, 0.0, price)

    def settle_funding(self, stock_id: str, price: float, funding_rate: float) -> float:
        """Book one funding settlement on ``stock_id``; returns the payment (> 0 paid, < 0 received)."""
        amount = self.get_stock_amount(stock_id)
        payment = amount * price * funding_rate
        self.position["cash"] -= payment
        return payment

    # -- margin figures --
    def gross_exposure(self) -> float:
        """``sum(|amount| x price)`` over held instruments at their last marked prices."""
        total = 0.0
        for key, entry in self.position.items():
            if key in _SPECIAL_KEYS:
                continue
            total += abs(entry["amount"] * entry["price"])
        return total

    def equity(self) -> float:
        """``cash + sum(amount x price)`` (same as ``calculate_value``)."""
        return self.calculate_value()

    def leverage(self) -> float:
        """Gross exposure / equity (inf when equity <= 0 with exposure, 0 when flat)."""
        gross = self.gross_exposure()
        if gross == 0:
            return 0.0
        eq = self.equity()
        return gross / eq if eq > 0 else float("inf")

    def get_stock_price(self, code: str) -> float:
        entry = self.position.get(code)
        if entry is None:
            # a buy that covered a whole short removed the entry before Qlib's Account books the order's return
            return self.__dict__.get("_closed_prices", {}).get(code, float("nan"))
        return entry["price"]

    def get_stock_list(self) -> List[str]:
        """Held instruments, sorted by name.

        Qlib's ``Position.get_stock_list`` returns ``list(set(...))``, whose order changes with
        ``PYTHONHASHSEED``; ``calculate_value`` sums the holdings in that order and ``TopkDropoutStrategy`` ranks
        them from it, so the last digits of equity (and from them order sizes and trade counts) changed from run to
        run. A fixed order makes every run with the same inputs give the same bytes.
        """
        return sorted(k for k in self.position if k not in _SPECIAL_KEYS)

    def get_stock_amount_dict(self) -> dict:
        return {k: v["amount"] for k, v in self.position.items() if k not in _SPECIAL_KEYS}
