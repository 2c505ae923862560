"""A small backtest worked out by hand (cash walk, deal prices, fees, slippage, funding) for the report tests, and
helpers that read the plotly figures and the visible text of a report page."""

from __future__ import annotations

import base64
import html as html_lib
import json
import re

import numpy as np
import pandas as pd

INIT = 1000.0
IDX = pd.date_range("2024-01-31 20:00", periods=8, freq="h")  # crosses a month end
CLOSE = {
    "A-USDT-SWAP": [100.0, 102.0, 106.0, 104.0, 103.0, 105.0, 107.0, 108.0],
    "B-USDT": [50.0, 50.0, 51.0, 52.0, 49.0, 50.0, 51.0, 53.0],
    "C-USDT-SWAP": [30.0, 31.0, 30.0, 30.0, 29.0, 28.0, 28.0, 27.0],
}
SLIP = 0.0002  # 2 bps
FEE = {"swap": 0.0005, "spot": 0.001}
ORDERS = [  # bar, instrument, side, amount
    (0, "A-USDT-SWAP", "buy", 2.0),
    (1, "B-USDT", "buy", 1.0),
    (2, "A-USDT-SWAP", "sell", 2.0),  # closes the A long
    (3, "C-USDT-SWAP", "sell", 1.0),  # opens a C short
    (4, "B-USDT", "sell", 0.5),  # B stays open
    (5, "C-USDT-SWAP", "buy", 1.0),  # closes the C short
    (6, "A-USDT-SWAP", "buy", 1.0),  # open at the end
]
FUNDING = [(1, "A-USDT-SWAP", 0.3), (4, "C-USDT-SWAP", -0.1)]  # payment > 0 paid
BENCH = [0.001, -0.002, 0.003, 0.0, 0.001, -0.001, 0.002, 0.0]


def scenario() -> dict:
    """Fills, funding, positions and the equity of every bar by a cash walk; plus the hand-computed totals."""
    cash, held = INIT, {k: 0.0 for k in CLOSE}
    fills, positions, equity, gross_flow = [], [], [], 0.0
    for t in range(len(IDX)):
        for bar, inst, side, amount in ORDERS:
            if bar != t:
                continue
            deal = CLOSE[inst][t]
            price = deal * (1 + SLIP) if side == "buy" else deal * (1 - SLIP)
            market = "swap" if inst.endswith("-SWAP") else "spot"
            fee = amount * price * FEE[market]
            signed = amount if side == "buy" else -amount
            cash -= signed * price + fee
            gross_flow -= signed * deal  # the same trade at the deal price, no costs
            held[inst] += signed
            fills.append(
                {
                    "datetime": IDX[t],
                    "instrument": inst,
                    "side": side,
                    "amount": amount,
                    "price": price,
                    "fee": fee,
                    "slippage": amount * abs(price - deal),
                    "deal_price": deal,
                    "value": amount * price,
                    "role": "taker",
                    "market": market,
                }
            )
        for bar, _inst, payment in FUNDING:
            if bar == t:
                cash -= payment
        value = sum(held[k] * CLOSE[k][t] for k in CLOSE)
        equity.append(cash + value)
        for k in sorted(CLOSE):
            if held[k] != 0:
                positions.append({"datetime": IDX[t], "instrument": k, "amount": held[k], "price": CLOSE[k][t]})
    fills = pd.DataFrame(fills)
    final_value = sum(held[k] * CLOSE[k][-1] for k in CLOSE)
    eq = np.array(equity)
    prev = np.concatenate([[INIT], eq[:-1]])
    fees = float(fills["fee"].sum())
    report_df = pd.DataFrame(
        {
            "account": eq,
            # Qlib's booking: return = (earning + cost) / previous equity, cost = fees / previous equity
            "return": (eq - prev + fills.groupby("datetime")["fee"].sum().reindex(IDX, fill_value=0.0).to_numpy())
            / prev,
            "cost": fills.groupby("datetime")["fee"].sum().reindex(IDX, fill_value=0.0).to_numpy() / prev,
            "bench": BENCH,
            "turnover": 0.0,
        },
        index=IDX,
    )
    funding = pd.DataFrame(
        [
            {"datetime": IDX[b], "instrument": i, "amount": 0.0, "price": 0.0, "funding_rate": 0.0, "payment": p}
            for b, i, p in FUNDING
        ]
    )
    orders = pd.DataFrame(
        {
            "datetime": [IDX[b] for b, *_ in ORDERS] + [IDX[7]],
            "instrument": [i for _, i, *_ in ORDERS] + ["B-USDT"],
            "status": ["filled"] * len(ORDERS) + ["rejected"],
            "reasons": [""] * len(ORDERS) + ["min_size"],
        }
    )
    return {
        "report_df": report_df,
        "fills": fills,
        "funding": funding,
        "positions": pd.DataFrame(positions),
        "orders": orders,
        "equity": eq,
        "prev": prev,
        "gross_pnl": gross_flow + final_value,  # price P&L at deal prices
        "fees": fees,
        "slippage": float(fills["slippage"].sum()),
        "funding_paid": sum(p for *_, p in FUNDING),
        "traded": float((fills["amount"] * fills["price"]).sum()),
    }


# --------------------------------------------------------------------------------------------- page parsing
def plotly_figures(page: str) -> dict[str, dict]:
    """``{div id: {"data": [...], "layout": {...}}}`` of every ``Plotly.newPlot`` call in a page."""
    dec = json.JSONDecoder()
    out = {}
    for m in re.finditer(r"Plotly\.newPlot\(\s*(?=\")", page):  # the calls of the page, not of plotly.js
        pos = m.end()
        div_id, pos = dec.raw_decode(page, pos)
        pos = page.index(",", pos) + 1
        data, pos = dec.raw_decode(page, pos + len(page[pos:]) - len(page[pos:].lstrip()))
        pos = page.index(",", pos) + 1
        layout, pos = dec.raw_decode(page, pos + len(page[pos:]) - len(page[pos:].lstrip()))
        out[div_id] = {"data": data, "layout": layout}
    return out


def values(obj) -> np.ndarray:
    """A plotly array (a list, or a base64 typed array ``{"dtype", "bdata"}``) as float64, None -> NaN."""
    if isinstance(obj, dict) and "bdata" in obj:
        arr = np.frombuffer(base64.b64decode(obj["bdata"]), dtype=np.dtype(obj["dtype"])).astype("float64")
        return arr.reshape(obj["shape"].split(",")) if "shape" in obj and isinstance(obj["shape"], str) else arr
    return np.array([np.nan if v is None else v for v in np.ravel(np.array(obj, dtype=object))], dtype="float64")


def visible_text(page: str) -> str:
    """The page's text without scripts and styles, entities decoded, whitespace collapsed."""
    text = re.sub(r"<script.*?</script>|<style.*?</style>", " ", page, flags=re.S)
    text = html_lib.unescape(re.sub(r"<[^>]+>", " ", text))
    return re.sub(r"\s+", " ", text)


def nan_equal(a, b) -> bool:
    a, b = np.asarray(a, dtype="float64"), np.asarray(b, dtype="float64")
    return a.shape == b.shape and bool(np.allclose(a, b, rtol=1e-12, atol=1e-15, equal_nan=True))


def json_values(seq) -> np.ndarray:
    return np.array([np.nan if v is None else v for v in seq], dtype="float64")
