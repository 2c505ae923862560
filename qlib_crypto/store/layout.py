"""Paths of the raw store and the partitioning rule (see docs/store.md)."""

from __future__ import annotations

import difflib
import re
from pathlib import Path

import numpy as np

from ..errors import ConfigError, StoreError
from ..timeframes import Timeframe, get_timeframe

SCHEMA_VERSION = 1
MANIFEST_SUFFIX = ".manifest.yaml"
COVERAGE_FILE = "_coverage.yaml"
_INSTRUMENT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_MONTHLY_BELOW_MS = 5 * 60_000  # timeframes shorter than 5 minutes are partitioned by month, others by year


def check_instrument(instrument: str) -> str:
    """Return ``instrument`` if it is a valid instrument id (OKX instId style), else raise ConfigError."""
    if not isinstance(instrument, str) or not _INSTRUMENT_RE.match(instrument):
        raise ConfigError(
            f"invalid instrument name {instrument!r}",
            hint="use an OKX instId such as BTC-USDT or BTC-USDT-SWAP (letters, digits, '-', '_', '.')",
        )
    return instrument


def bars_dir(store_dir: str | Path, instrument: str, timeframe: str | Timeframe) -> Path:
    tf = timeframe if isinstance(timeframe, Timeframe) else get_timeframe(timeframe)
    return Path(store_dir) / "bars" / tf.name / check_instrument(instrument)


def funding_dir(store_dir: str | Path, instrument: str) -> Path:
    return Path(store_dir) / "funding" / check_instrument(instrument)


def meta_dir(store_dir: str | Path) -> Path:
    return Path(store_dir) / "meta" / "instruments"


def quarantine_dir(store_dir: str | Path, kind: str, instrument: str) -> Path:
    return Path(store_dir) / "quarantine" / kind / check_instrument(instrument)


def is_monthly(tf: Timeframe) -> bool:
    return tf.ms < _MONTHLY_BELOW_MS


def period_keys(ts_ms: np.ndarray, monthly: bool) -> np.ndarray:
    """Partition key (``YYYY-MM`` or ``YYYY``) of each epoch-ms timestamp."""
    unit = "M" if monthly else "Y"
    return np.datetime_as_string(ts_ms.astype("datetime64[ms]").astype(f"datetime64[{unit}]"), unit=unit)


def period_bounds_ms(key: str) -> tuple[int, int]:
    """[start, end) in epoch ms of a period key."""
    if len(key) == 7:
        start = np.datetime64(key, "M")
        end = start + np.timedelta64(1, "M")
    else:
        start = np.datetime64(key, "Y")
        end = start + np.timedelta64(1, "Y")
    return int(start.astype("datetime64[ms]").astype(np.int64)), int(end.astype("datetime64[ms]").astype(np.int64))


def data_files(directory: Path) -> list[Path]:
    """Period Parquet files of one series, sorted by period."""
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.glob("*.parquet") if not p.name.startswith("."))


def require_store(store_dir: str | Path) -> Path:
    path = Path(store_dir)
    if not path.is_dir():
        raise StoreError(
            f"store directory {str(path)!r} does not exist",
            hint="collect or import data first, e.g. qlib-crypto collect --source synthetic --store DIR ...",
        )
    return path


def unknown_series_error(store_dir: Path, instrument: str, tf: Timeframe) -> StoreError:
    tf_dir = store_dir / "bars" / tf.name
    known = sorted(p.name for p in tf_dir.iterdir() if p.is_dir()) if tf_dir.is_dir() else []
    if not known:
        tfs = sorted(p.name for p in (store_dir / "bars").iterdir()) if (store_dir / "bars").is_dir() else []
        return StoreError(
            f"store {str(store_dir)!r} has no {tf.name} bars",
            hint=f"timeframes in this store: {', '.join(tfs) or 'none'}; collect {tf.name} bars first",
        )
    close = difflib.get_close_matches(instrument, known, n=3)
    return StoreError(
        f"store {str(store_dir)!r} has no {tf.name} bars for instrument {instrument!r}",
        hint=(f"did you mean {', '.join(close)}? " if close else "")
        + f"{len(known)} instruments are stored, e.g. {', '.join(known[:5])}",
    )
