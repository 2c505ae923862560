"""The raw Parquet store: partitioned bar and funding files with YAML manifests, validation, quarantine.

See docs/store.md for the layout and docs/internals.md for the contract.
"""

from .layout import SCHEMA_VERSION, bars_dir, funding_dir
from .lock import store_lock
from .meta import META_COLUMNS, read_instrument_meta, write_instrument_meta
from .series import (
    add_coverage,
    get_coverage,
    list_funding_instruments,
    list_instruments,
    list_timeframes,
    missing_ranges,
    quarantine_bars,
    read_bars,
    read_funding,
    write_bars,
    write_funding,
)
from .tables import WriteResult
from .validate import ValidationReport, validate_store

__all__ = [
    "SCHEMA_VERSION",
    "META_COLUMNS",
    "WriteResult",
    "ValidationReport",
    "bars_dir",
    "funding_dir",
    "read_bars",
    "write_bars",
    "read_funding",
    "write_funding",
    "read_instrument_meta",
    "write_instrument_meta",
    "list_instruments",
    "list_timeframes",
    "list_funding_instruments",
    "get_coverage",
    "add_coverage",
    "missing_ranges",
    "validate_store",
    "store_lock",
    "quarantine_bars",
]
