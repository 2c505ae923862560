"""Crypto strategies for Qlib's backtest: BUY/SELL/HOLD signals and dollar-neutral long/short on swaps."""

from .signal_strategy import LongShortStrategy, SignalStrategy

__all__ = ["SignalStrategy", "LongShortStrategy"]
