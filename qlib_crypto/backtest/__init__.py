"""Crypto backtest layer on Qlib's backtest engine: exchange (fill model), margin position, executor.

Use from Python (``qlib.backtest.backtest(..., executor={"class": "CryptoExecutor", "module_path":
"qlib_crypto.backtest", ...}, exchange_kwargs={"exchange": {"class": "CryptoExchange", ...}},
pos_type="qlib_crypto.backtest.CryptoPosition")``) or from qrun YAML. See ``docs/backtest.md``.
"""

from .benchmark import benchmark_returns
from .costs import (
    bar_volatility,
    fill_price,
    funding_payment,
    liquidation_triggered,
    market_impact,
    max_amount_for_leverage,
    max_buy_amount_for_cash,
    participation_cap,
    round_down_to_lot,
    slippage_cost,
    trade_fee,
)
from .exchange import (
    DEFAULT_FEES,
    DEFAULT_MAX_PARTICIPATION,
    CryptoExchange,
    Execution,
    FastQuote,
    FillRecord,
    InstrumentSpec,
    OrderReport,
    load_instrument_specs,
)
from .executor import CryptoExecutor, CryptoPortfolioMetrics, ExecutionResult
from .position import CryptoPosition

__all__ = [
    "CryptoExchange",
    "CryptoExecutor",
    "CryptoPosition",
    "CryptoPortfolioMetrics",
    "Execution",
    "ExecutionResult",
    "FastQuote",
    "FillRecord",
    "OrderReport",
    "InstrumentSpec",
    "DEFAULT_FEES",
    "DEFAULT_MAX_PARTICIPATION",
    "benchmark_returns",
    "load_instrument_specs",
    "bar_volatility",
    "fill_price",
    "funding_payment",
    "liquidation_triggered",
    "market_impact",
    "max_amount_for_leverage",
    "max_buy_amount_for_cash",
    "participation_cap",
    "round_down_to_lot",
    "slippage_cost",
    "trade_fee",
]
