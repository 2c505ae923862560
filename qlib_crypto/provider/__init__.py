"""Qlib binary provider: dump the raw store into Qlib's on-disk format (see docs/provider.md)."""

from .dump import FIELDS, DumpResult, dump, recover

__all__ = ["FIELDS", "DumpResult", "dump", "recover"]
