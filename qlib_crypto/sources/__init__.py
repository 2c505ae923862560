"""Where bars come from: OKX through ccxt, the seeded synthetic market, and file import."""

from .base import BarSource, parse_time_ms

__all__ = ["BarSource", "parse_time_ms"]
