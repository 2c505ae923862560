"""Parquet I/O for time-indexed tables (bars, funding) and the merge rule shared by every writer."""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from .._atomic import atomic_path
from ..errors import ConfigError, StoreError, ValidationError
from .manifest import iso_ms

log = logging.getLogger(__name__)
TIME_COLUMN = "datetime"
EMBEDDED_KEY = b"qlib_crypto.manifest"


def schema_for(columns: Sequence[str]) -> pa.Schema:
    return pa.schema([(TIME_COLUMN, pa.timestamp("ms", tz="UTC"))] + [(c, pa.float64()) for c in columns])


def to_epoch_ms(values: Any, *, what: str) -> np.ndarray:
    """Timestamps (tz-aware or naive UTC datetimes, or epoch-ms integers) -> int64 epoch ms."""
    if isinstance(values, pd.DatetimeIndex) or pd.api.types.is_datetime64_any_dtype(values):
        idx = pd.DatetimeIndex(values)
        if idx.tz is None:
            idx = idx.tz_localize("UTC")
        return idx.tz_convert("UTC").as_unit("ms").asi8.astype(np.int64)
    arr = np.asarray(values)
    if arr.dtype.kind in "iu":
        return arr.astype(np.int64)
    if arr.dtype.kind == "f" and np.all(np.isfinite(arr)) and np.all(arr == np.floor(arr)):
        return arr.astype(np.int64)
    try:
        idx = pd.DatetimeIndex(pd.to_datetime(arr, utc=True))
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"cannot read the {what} timestamps ({exc})", hint="give UTC datetimes or epoch ms") from exc
    return idx.as_unit("ms").asi8.astype(np.int64)


def frame_to_arrays(frame: pd.DataFrame, columns: Sequence[str], *, what: str) -> tuple[np.ndarray, np.ndarray]:
    """(ts_ms int64 [n], values float64 [n, k]) from a DataFrame with a datetime column or index."""
    if TIME_COLUMN in frame.columns:
        ts_source = frame[TIME_COLUMN]
    elif isinstance(frame.index, pd.DatetimeIndex) or frame.index.name == TIME_COLUMN:
        ts_source = frame.index
    else:
        raise ConfigError(
            f"{what} have no {TIME_COLUMN!r} column or datetime index (columns: {list(frame.columns)})",
            hint=f"name the bar open time column {TIME_COLUMN!r}",
        )
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ConfigError(f"{what} lack the columns {missing}", hint=f"provide all of {list(columns)}")
    ts = to_epoch_ms(ts_source, what=what)
    values = np.column_stack([pd.to_numeric(frame[c], errors="coerce").to_numpy(dtype=np.float64) for c in columns])
    return ts, values.reshape(len(ts), len(columns))


def read_table(path: Path, columns: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Read one Parquet data file -> (ts_ms, values[n, k])."""
    try:
        table = pq.read_table(path, columns=[TIME_COLUMN, *columns])
    except (OSError, pa.ArrowException) as exc:
        raise StoreError(
            f"cannot read store file {str(path)!r} ({type(exc).__name__}: {exc})",
            hint="the file is corrupt: run qlib-crypto validate, delete the file and its manifest, then re-collect",
        ) from exc
    ts = table.column(TIME_COLUMN).cast(pa.int64()).to_numpy()
    if len(columns):
        values = np.column_stack([table.column(c).to_numpy().astype(np.float64, copy=False) for c in columns])
    else:
        values = np.empty((len(ts), 0))
    return ts.astype(np.int64, copy=False), values.reshape(len(ts), len(columns))


def content_sha256(ts: np.ndarray, values: np.ndarray) -> str:
    """sha256 of the rows themselves (little-endian int64 times, then float64 values row-major).

    Independent of the Parquet encoding: it proves that the rows read back are the rows written.
    """
    digest = hashlib.sha256()
    digest.update(np.ascontiguousarray(ts, dtype="<i8").tobytes())
    digest.update(np.ascontiguousarray(values, dtype="<f8").tobytes())
    return digest.hexdigest()


def read_embedded(path: Path) -> dict[str, Any] | None:
    """The manifest embedded in a data file's Parquet key-value metadata (None for files without one)."""
    try:
        meta = pq.read_schema(path).metadata or {}
    except (OSError, pa.ArrowException):
        return None
    raw = meta.get(EMBEDDED_KEY)
    if raw is None:
        return None
    try:
        loaded = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None
    return loaded if isinstance(loaded, dict) else None


def write_table(
    path: Path, ts: np.ndarray, values: np.ndarray, columns: Sequence[str], embedded: dict[str, Any] | None = None
) -> None:
    """Write sorted rows atomically as zstd Parquet, without pandas metadata (same rows -> same bytes).

    ``embedded`` (the file's manifest without the wall-clock fields) goes into the Parquet key-value metadata,
    so the data file alone proves what it holds and a lost or stale sidecar manifest can be rebuilt.
    """
    arrays = [pa.array(ts.astype(np.int64), type=pa.int64()).cast(pa.timestamp("ms", tz="UTC"))]
    arrays += [pa.array(values[:, i], type=pa.float64()) for i in range(len(columns))]
    schema = schema_for(columns)
    if embedded is not None:
        schema = schema.with_metadata({EMBEDDED_KEY: json.dumps(embedded, sort_keys=True).encode("utf-8")})
    table = pa.Table.from_arrays(arrays, schema=schema)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd", use_dictionary=False, write_statistics=True)


@dataclass
class WriteResult:
    """What a write into the store did."""

    rows_in: int = 0
    rows_repeated: int = 0  # exact repeats inside the incoming rows, collapsed to one
    rows_added: int = 0
    rows_replaced: int = 0
    rows_identical: int = 0
    conflicts: int = 0
    quarantined: int = 0
    files_written: list[str] = field(default_factory=list)
    conflict_examples: list[dict[str, Any]] = field(default_factory=list)
    quarantine_reasons: dict[str, int] = field(default_factory=dict)
    quarantine_file: str | None = None
    quarantined_ts: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))
    manifests_healed: list[str] = field(default_factory=list)

    def merge(self, other: "WriteResult") -> "WriteResult":
        self.rows_in += other.rows_in
        self.rows_repeated += other.rows_repeated
        self.rows_added += other.rows_added
        self.rows_replaced += other.rows_replaced
        self.rows_identical += other.rows_identical
        self.conflicts += other.conflicts
        self.quarantined += other.quarantined
        self.files_written += other.files_written
        self.conflict_examples = (self.conflict_examples + other.conflict_examples)[:10]
        for reason, count in other.quarantine_reasons.items():
            self.quarantine_reasons[reason] = self.quarantine_reasons.get(reason, 0) + count
        self.quarantine_file = other.quarantine_file or self.quarantine_file
        self.quarantined_ts = np.union1d(self.quarantined_ts, other.quarantined_ts).astype(np.int64)
        self.manifests_healed += other.manifests_healed
        return self

    def to_dict(self) -> dict[str, Any]:
        out = dict(self.__dict__)
        out["quarantined_ts"] = [int(t) for t in self.quarantined_ts]
        return out


def dedupe_incoming(ts: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sort rows; identical duplicates collapse to one; timestamps with differing duplicates are flagged.

    Returns (ts, values, conflicting_mask) where conflicting rows are all versions of an ambiguous timestamp.
    """
    order = np.argsort(ts, kind="stable")
    ts, values = ts[order], values[order]
    if len(ts) < 2:
        return ts, values, np.zeros(len(ts), dtype=bool)
    same_ts = ts[1:] == ts[:-1]
    if not same_ts.any():
        return ts, values, np.zeros(len(ts), dtype=bool)
    same_row = same_ts & np.all((values[1:] == values[:-1]) | (np.isnan(values[1:]) & np.isnan(values[:-1])), axis=1)
    keep = np.ones(len(ts), dtype=bool)
    keep[1:] &= ~same_row  # drop exact repeats
    ts, values = ts[keep], values[keep]
    dup = np.zeros(len(ts), dtype=bool)
    if len(ts) > 1:
        clash = ts[1:] == ts[:-1]
        dup[1:] |= clash
        dup[:-1] |= clash
    return ts, values, dup


def merge_rows(
    old_ts: np.ndarray,
    old_values: np.ndarray,
    new_ts: np.ndarray,
    new_values: np.ndarray,
    *,
    on_conflict: str,
    columns: Sequence[str],
    what: str,
) -> tuple[np.ndarray, np.ndarray, WriteResult]:
    """Merge sorted unique new rows into sorted unique stored rows."""
    result = WriteResult()
    pos = np.searchsorted(old_ts, new_ts)
    pos_clipped = np.minimum(pos, max(len(old_ts) - 1, 0))
    exists = (pos < len(old_ts)) & (old_ts[pos_clipped] == new_ts) if len(old_ts) else np.zeros(len(new_ts), bool)
    if exists.any():
        old_rows = old_values[pos_clipped[exists]]
        new_rows = new_values[exists]
        identical = np.all((old_rows == new_rows) | (np.isnan(old_rows) & np.isnan(new_rows)), axis=1)
        result.rows_identical = int(identical.sum())
        differing = ~identical
        n_conflict = int(differing.sum())
        if n_conflict:
            idx_new = np.flatnonzero(exists)[differing]
            for j in idx_new[:10]:
                k = pos_clipped[j]
                result.conflict_examples.append(
                    {
                        "datetime": iso_ms(int(new_ts[j])),
                        "stored": dict(zip(columns, map(float, old_values[k]))),
                        "incoming": dict(zip(columns, map(float, new_values[j]))),
                        "fields": [
                            c
                            for c, a, b in zip(columns, old_values[k], new_values[j])
                            if not (a == b or (np.isnan(a) and np.isnan(b)))
                        ],
                    }
                )
            if on_conflict == "error":
                first = result.conflict_examples[0]
                raise ValidationError(
                    f"{n_conflict} {what} conflict with stored values, first at {first['datetime']}: "
                    f"stored {first['stored']} vs incoming {first['incoming']}",
                    hint="nothing was written; pass overwrite to replace stored bars, or keep to keep them",
                )
            result.conflicts = n_conflict
            if on_conflict == "overwrite":
                old_values = old_values.copy()
                old_values[pos_clipped[idx_new]] = new_values[idx_new]
                result.rows_replaced = n_conflict
            elif on_conflict != "keep":
                raise ConfigError(f"unknown on_conflict {on_conflict!r}", hint="use keep, overwrite or error")
    add = ~exists
    result.rows_added = int(add.sum())
    if result.rows_added:
        ts = np.concatenate([old_ts, new_ts[add]])
        values = np.concatenate([old_values, new_values[add]])
        order = np.argsort(ts, kind="stable")
        return ts[order], values[order], result
    return old_ts, old_values, result
