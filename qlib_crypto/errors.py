"""The one exception hierarchy of qlib-crypto.

Every error raised on purpose by the package is a :class:`QlibCryptoError`. Messages say what was wrong,
quote the offending value, and say what to do. The CLI prints ``str(err)`` on one line and exits with
``err.exit_code``; the traceback is shown only with ``--verbose``.
"""

from __future__ import annotations


class QlibCryptoError(Exception):
    """Base class of every error the package raises on purpose."""

    exit_code: int = 2

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        self.message = message
        self.hint = hint
        super().__init__(message if not hint else f"{message} ({hint})")


class ConfigError(QlibCryptoError):
    """A bad argument or configuration value: unknown timeframe, start >= end, unknown instrument..."""


class StoreError(QlibCryptoError):
    """The raw Parquet store cannot be read or written (unwritable directory, corrupt file...)."""


class StoreLocked(StoreError):
    """Another process holds the store's writer lock and did not release it within the lock timeout."""

    exit_code = 5


class ValidationError(StoreError):
    """Data failed validation (hash mismatch, bad OHLC rows, duplicates...)."""


class ImportDataError(QlibCryptoError):
    """An input file for ``qlib-crypto import`` is unusable (missing columns, bad timestamps...)."""


class SourceError(QlibCryptoError):
    """A data source (exchange API, synthetic market) failed."""


class ExchangeAPIError(SourceError):
    """The exchange API kept failing after bounded retries."""


class CollectionIncomplete(SourceError):
    """A collection finished with some ranges not fetched; what was fetched is stored, re-run to resume."""

    exit_code = 3


class ProviderError(QlibCryptoError):
    """The Qlib binary provider directory cannot be written or read as asked."""


class ModelError(QlibCryptoError):
    """A model file, its metadata, or its features do not match what is asked."""


class BacktestError(QlibCryptoError):
    """A backtest is configured or run wrongly."""


class PagingError(SourceError):
    """The exchange answered pages that do not advance the paging cursor (it ignores the paging parameters)."""


class ExchangeUnreachable(CollectionIncomplete):
    """The exchange host cannot be reached at all (connection refused, unknown host, no route): nothing fetched."""

    exit_code = 3
