"""Reading and writing bar and funding series, quarantine, and collector coverage."""

from __future__ import annotations

import datetime as dt
import logging
import threading
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
import yaml

from .._atomic import atomic_write_text
from ..errors import ConfigError, StoreError
from ..sources.base import BAR_COLUMNS, parse_time_ms
from ..timeframes import Timeframe, get_timeframe
from .layout import (
    COVERAGE_FILE,
    bars_dir,
    check_instrument,
    data_files,
    funding_dir,
    is_monthly,
    period_bounds_ms,
    period_keys,
    quarantine_dir,
    require_store,
    unknown_series_error,
)
from .lock import store_lock
from .manifest import (
    embedded_manifest,
    merge_sources,
    mtime_iso,
    read_manifest,
    sha256_file,
    sidecar_from_embedded,
    write_manifest,
)
from .tables import (
    TIME_COLUMN,
    WriteResult,
    content_sha256,
    dedupe_incoming,
    frame_to_arrays,
    merge_rows,
    read_embedded,
    read_table,
    write_table,
)

log = logging.getLogger(__name__)
FUNDING_COLUMNS = ["funding_rate", "realized_rate"]
_coverage_lock = threading.Lock()


FLOAT32_MAX = float(np.finfo(np.float32).max)  # larger values become inf in Qlib's float32 provider
EARLIEST_MS = int(pd.Timestamp("2009-01-03", tz="UTC").value // 1_000_000)  # the first Bitcoin block


def now_ms() -> int:
    return int(dt.datetime.now(dt.timezone.utc).timestamp() * 1000)


def time_bounds_reasons(ts: np.ndarray, step_ms: int, now: int | None = None) -> list[tuple[np.ndarray, str]]:
    """Impossible times: before 2009-01-03, or opening after the present plus one bar."""
    latest = (now_ms() if now is None else now) + step_ms
    return [(ts < EARLIEST_MS, "time_before_2009"), (ts > latest, "time_in_future")]


def _bad_value_checks(values: np.ndarray) -> list[tuple[np.ndarray, str]]:
    finite = np.isfinite(values)
    return [
        (np.isnan(values).any(axis=1), "nan_value"),
        ((~finite & ~np.isnan(values)).any(axis=1), "non_finite_value"),
        ((np.abs(np.where(finite, values, 0.0)) > FLOAT32_MAX).any(axis=1), "beyond_float32_range"),
    ]


def _bad_bar_rows(ts: np.ndarray, values: np.ndarray, tf: Timeframe) -> tuple[np.ndarray, np.ndarray]:
    """Per-row reason code for bad bars ("" = good). Order of checks = order of reasons."""
    o, h, l, c, v, a = (values[:, i] for i in range(6))
    reasons = np.full(len(ts), "", dtype=object)
    with np.errstate(invalid="ignore"):
        checks = (
            _bad_value_checks(values)
            + time_bounds_reasons(ts, tf.ms)
            + [
                (ts % tf.ms != 0, "misaligned_timestamp"),
                ((o <= 0) | (h <= 0) | (l <= 0) | (c <= 0), "non_positive_price"),
                ((v < 0) | (a < 0), "negative_volume"),
                ((l > np.minimum(o, c)) | (h < np.maximum(o, c)) | (l > h), "ohlc_inconsistent"),
            ]
        )
    for mask, reason in checks:
        reasons[(reasons == "") & mask] = reason
    return reasons, reasons != ""


def _bad_funding_rows(ts: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Funding rows: the rate must be a finite number within float32 range; times within bounds."""
    reasons = np.full(len(ts), "", dtype=object)
    rate = values[:, :1]
    realized = np.where(np.isnan(values[:, 1:]), 0.0, values[:, 1:])  # realized rate may be unknown (NaN)
    with np.errstate(invalid="ignore"):
        checks = [
            (np.isnan(rate[:, 0]), "nan_value"),
            (~np.isfinite(rate[:, 0]) | ~np.isfinite(realized).all(axis=1), "non_finite_value"),
            ((np.abs(np.where(np.isfinite(values), values, 0.0)) > FLOAT32_MAX).any(axis=1), "beyond_float32_range"),
        ] + time_bounds_reasons(ts, 0)
    for mask, reason in checks:
        reasons[(reasons == "") & mask] = reason
    return reasons, reasons != ""


def _quarantine(
    store: Path,
    kind: str,
    instrument: str,
    ts: np.ndarray,
    values: np.ndarray,
    columns: Sequence[str],
    reasons: np.ndarray,
    source: str,
) -> str:
    """Write rejected rows with their reasons; the file is named by its content, so the same rejected rows
    give the same file (a re-run after a crash does not pile up copies)."""
    import hashlib

    from .._atomic import atomic_path

    digest = hashlib.sha256()
    digest.update(content_sha256(ts, values).encode())
    digest.update("\x00".join(str(r) for r in reasons).encode())
    digest.update(str(source).encode())
    path = quarantine_dir(store, kind, instrument) / f"{digest.hexdigest()[:24]}.parquet"
    if path.exists():
        return str(path)
    frame = pd.DataFrame(values, columns=list(columns))
    frame.insert(0, TIME_COLUMN, pd.to_datetime(ts, unit="ms", utc=True))
    frame["reason"] = np.asarray(reasons, dtype=object).astype(str)
    frame["source"] = source
    try:
        with atomic_path(path) as tmp:
            frame.to_parquet(tmp, index=False, compression="zstd")
    except OSError as exc:
        raise StoreError(
            f"cannot write quarantine file {str(path)!r} ({exc.strerror or exc})",
            hint="check free disk space and permissions; nothing else was written",
        ) from exc
    return str(path)


def quarantine_bars(
    store_dir: str | Path, instrument: str, timeframe: str, bars: pd.DataFrame, reasons: Sequence[str], source: str
) -> str | None:
    """Quarantine bars a source rejected before the store saw them (e.g. an unconfirmed past bar).

    ``bars``: a ``datetime`` column or index and the six bar columns; ``reasons``: one string per row.
    Returns the quarantine file (None when there are no rows).
    """
    tf = get_timeframe(timeframe)
    check_instrument(instrument)
    if len(bars) == 0:
        return None
    if len(reasons) != len(bars):
        raise ConfigError(f"{len(reasons)} reasons for {len(bars)} quarantined bars", hint="give one reason per row")
    frame = bars.copy()
    for col in BAR_COLUMNS:
        if col not in frame.columns:
            frame[col] = np.nan
    ts, values = frame_to_arrays(frame, BAR_COLUMNS, what=f"quarantined bars of {instrument}")
    with store_lock(store_dir, command="quarantine"):
        return _quarantine(
            Path(store_dir),
            tf.name,
            instrument,
            ts,
            values,
            BAR_COLUMNS,
            np.asarray(list(reasons), dtype=object),
            source,
        )


def _trusted_manifest(path: Path, ts: np.ndarray, values: np.ndarray) -> tuple[dict[str, Any], bool]:
    """The manifest of an existing data file, healing a missing or stale sidecar from the file's embedded
    manifest. Returns (manifest, healed). Raises StoreError when the file cannot be trusted."""
    embedded = read_embedded(path)
    if embedded is not None and (
        embedded.get("content_sha256") != content_sha256(ts, values) or embedded.get("row_count") != len(ts)
    ):
        raise StoreError(
            f"store file {str(path)!r} does not hold the rows its embedded manifest describes (corrupt file)",
            hint="run qlib-crypto validate; delete the file and its manifest, then re-collect or re-import the period",
        )
    try:
        sidecar = read_manifest(path)
    except StoreError:
        sidecar = None
    if sidecar is not None and sidecar.get("sha256") == sha256_file(path):
        return sidecar, False
    if embedded is None:
        raise StoreError(
            f"store file {str(path)!r} does not match its manifest and carries no embedded manifest "
            "(written by an older version and changed since)",
            hint="run qlib-crypto validate; delete the file and its manifest, then re-collect or re-import the period",
        )
    healed = sidecar_from_embedded(path, embedded, collected_at=mtime_iso(path))
    write_manifest(path, healed)
    log.warning("rebuilt the manifest of %s from the file's embedded manifest", path)
    return healed, True


def _write_partitioned(
    directory: Path,
    *,
    kind: str,
    instrument: str,
    timeframe: str | None,
    monthly: bool,
    ts: np.ndarray,
    values: np.ndarray,
    columns: Sequence[str],
    source: str,
    on_conflict: str,
    what: str,
) -> WriteResult:
    total = WriteResult()
    if not len(ts):
        return total
    keys = period_keys(ts, monthly)
    # Plan every period first so an "error" conflict anywhere writes nothing.
    plans = []
    for key in np.unique(keys):
        sel = keys == key
        path = directory / f"{key}.parquet"
        if path.exists():
            old_ts, old_values = read_table(path, columns)
        else:
            old_ts, old_values = np.empty(0, np.int64), np.empty((0, len(columns)))
        merged_ts, merged_values, result = merge_rows(
            old_ts, old_values, ts[sel], values[sel], on_conflict=on_conflict, columns=columns, what=what
        )
        plans.append((path, old_ts, old_values, merged_ts, merged_values, result))
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StoreError(
            f"cannot create store directory {str(directory)!r} ({exc})", hint="check the path and permissions"
        ) from exc
    for path, old_ts, old_values, merged_ts, merged_values, result in plans:
        try:
            manifest: dict[str, Any] = {}
            if path.exists():
                # A crash between the data file's rename and its manifest's leaves a stale sidecar: heal it.
                manifest, healed = _trusted_manifest(path, old_ts, old_values)
                if healed:
                    result.manifests_healed.append(str(path))
            if result.rows_added or result.rows_replaced or not path.exists():
                embedded = embedded_manifest(
                    path.name,
                    kind=kind,
                    instrument=instrument,
                    timeframe=timeframe,
                    start_ms=int(merged_ts[0]),
                    end_ms=int(merged_ts[-1]),
                    row_count=len(merged_ts),
                    source=merge_sources(manifest.get("source"), source),
                    content_sha256=content_sha256(merged_ts, merged_values),
                )
                write_table(path, merged_ts, merged_values, columns, embedded)
                write_manifest(path, sidecar_from_embedded(path, embedded))
                result.files_written.append(str(path))
        except OSError as exc:
            raise StoreError(
                f"cannot write {str(path)!r} ({exc.strerror or exc})",
                hint="check free disk space and permissions; files written so far are complete, and re-running "
                "the same command finishes the job",
            ) from exc
        total.merge(result)
    return total


def _check_name_collision(parent: Path, instrument: str) -> None:
    """Two series whose names differ only in case would share one Qlib provider directory: refuse."""
    if not parent.is_dir():
        return
    folded = instrument.casefold()
    clash = sorted(
        p.name for p in parent.iterdir() if p.is_dir() and p.name != instrument and p.name.casefold() == folded
    )
    if clash:
        raise StoreError(
            f"instrument {instrument!r} collides with the stored series {clash[0]!r} in {str(parent)!r} "
            "(names that differ only in case map to one Qlib instrument)",
            hint=f"use the stored spelling {clash[0]!r}; instrument names are upper case OKX instIds",
        )


def write_bars(
    store_dir: str | Path,
    instrument: str,
    timeframe: str,
    bars: pd.DataFrame,
    source: str,
    *,
    on_conflict: str = "keep",
) -> WriteResult:
    """Validate and merge ``bars`` into the store (see docs/store.md).

    Bad rows (NaN, misaligned time, non-positive prices, negative volumes, inconsistent OHLC, and every
    version of a timestamp given twice with different values) are quarantined with a reason and counted,
    never dropped silently. Rows equal to stored ones are kept once; rows that differ from stored ones are
    conflicts: stored values are kept (``on_conflict="keep"``), replaced (``"overwrite"``), or nothing is
    written and ``ValidationError`` is raised (``"error"``). Only period files whose content changes are
    rewritten, each atomically with its manifest.
    """
    tf = get_timeframe(timeframe)
    check_instrument(instrument)
    store = Path(store_dir)
    ts, values = frame_to_arrays(bars, BAR_COLUMNS, what=f"bars of {instrument}")
    rows_in = len(ts)
    ts, values, ambiguous = dedupe_incoming(ts, values)
    reasons, bad = _bad_bar_rows(ts, values, tf)
    reasons[ambiguous & ~bad] = "duplicate_conflicting"
    bad |= ambiguous
    with store_lock(store, command="write_bars"):
        directory = bars_dir(store, instrument, tf)
        _check_name_collision(directory.parent, instrument)
        quarantine_file = None
        if bad.any():
            quarantine_file = _quarantine(
                store, tf.name, instrument, ts[bad], values[bad], BAR_COLUMNS, reasons[bad], source
            )
            log.warning("%s %s: %d bad rows quarantined in %s", instrument, tf.name, int(bad.sum()), quarantine_file)
        result = _write_partitioned(
            directory,
            kind="bars",
            instrument=instrument,
            timeframe=tf.name,
            monthly=is_monthly(tf),
            ts=ts[~bad],
            values=values[~bad],
            columns=BAR_COLUMNS,
            source=source,
            on_conflict=on_conflict,
            what=f"{instrument} {tf.name} bars",
        )
    result.rows_in = rows_in
    result.rows_repeated = rows_in - len(ts)
    result.quarantined = int(bad.sum())
    result.quarantine_file = quarantine_file
    result.quarantined_ts = np.unique(ts[bad]).astype(np.int64)
    if bad.any():
        names, counts = np.unique(reasons[bad].astype(str), return_counts=True)
        result.quarantine_reasons = dict(zip(names.tolist(), counts.tolist()))
    return result


def _range_ms(start: Any, end: Any) -> tuple[int | None, int | None]:
    start_ms = parse_time_ms(start, what="start") if start is not None else None
    end_ms = parse_time_ms(end, what="end") if end is not None else None
    if start_ms is not None and end_ms is not None and start_ms >= end_ms:
        raise ConfigError(
            f"start {start!r} is not before end {end!r}", hint="start is inclusive and end exclusive: give start < end"
        )
    return start_ms, end_ms


def _read_series(directory: Path, columns: Sequence[str], start_ms: int | None, end_ms: int | None):
    parts_ts, parts_values = [], []
    for path in data_files(directory):
        lo, hi = period_bounds_ms(path.stem)
        if (end_ms is not None and lo >= end_ms) or (start_ms is not None and hi <= start_ms):
            continue
        ts, values = read_table(path, columns)
        parts_ts.append(ts)
        parts_values.append(values)
    if not parts_ts:
        return np.empty(0, np.int64), np.empty((0, len(columns)))
    ts = np.concatenate(parts_ts)
    values = np.concatenate(parts_values)
    mask = np.ones(len(ts), dtype=bool)
    if start_ms is not None:
        mask &= ts >= start_ms
    if end_ms is not None:
        mask &= ts < end_ms
    return ts[mask], values[mask]


def _to_frame(ts: np.ndarray, values: np.ndarray, columns: Sequence[str]) -> pd.DataFrame:
    index = pd.DatetimeIndex(pd.to_datetime(ts, unit="ms", utc=True), name=TIME_COLUMN)
    return pd.DataFrame(values, index=index, columns=list(columns))


def read_bars(
    store_dir: str | Path, instrument: str, timeframe: str, start: Any = None, end: Any = None
) -> pd.DataFrame:
    """Bars of one instrument: index ``datetime`` (UTC bar open time), float64 ``open high low close volume amount``.

    ``start`` is inclusive, ``end`` exclusive (``None`` = unbounded); naive times are UTC.
    Raises ``StoreError`` if the store holds no such series (with close matches).
    """
    store = require_store(store_dir)
    tf = get_timeframe(timeframe)
    directory = bars_dir(store, instrument, tf)
    if not directory.is_dir():
        raise unknown_series_error(store, instrument, tf)
    start_ms, end_ms = _range_ms(start, end)
    ts, values = _read_series(directory, BAR_COLUMNS, start_ms, end_ms)
    return _to_frame(ts, values, BAR_COLUMNS)


def list_timeframes(store_dir: str | Path) -> list[str]:
    root = Path(store_dir) / "bars"
    if not root.is_dir():
        return []
    return sorted((p.name for p in root.iterdir() if p.is_dir()), key=lambda n: get_timeframe(n).ms)


def list_instruments(store_dir: str | Path, timeframe: str) -> list[str]:
    root = Path(store_dir) / "bars" / get_timeframe(timeframe).name
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if p.is_dir() and data_files(p))


# --- collector coverage -------------------------------------------------------------------------------


def _merge_ranges(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    merged: list[tuple[int, int]] = []
    for lo, hi in sorted((int(a), int(b)) for a, b in ranges if b > a):
        if merged and lo <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], hi))
        else:
            merged.append((lo, hi))
    return merged


def get_coverage(store_dir: str | Path, instrument: str, timeframe: str) -> list[tuple[int, int]]:
    """Half-open epoch-ms ranges a collector has fully fetched for this series (merged, sorted)."""
    path = bars_dir(store_dir, instrument, timeframe) / COVERAGE_FILE
    if not path.exists():
        return []
    return read_coverage_file(path)


def read_coverage_file(path: Path) -> list[tuple[int, int]]:
    """Parse a ``_coverage.yaml``; ``StoreError`` naming the file when it is not what it should be."""
    hint = (
        f"delete {str(path)!r} (the next collect then re-fetches and verifies that range) "
        "or restore it; qlib-crypto validate lists every such file"
    )
    try:
        loaded = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError, OSError) as exc:
        raise StoreError(f"coverage file {str(path)!r} is not readable YAML ({type(exc).__name__})", hint=hint) from exc
    if loaded is None:
        loaded = {}
    ranges = loaded.get("ranges", []) if isinstance(loaded, dict) else None
    if not isinstance(ranges, list):
        raise StoreError(f"coverage file {str(path)!r} is not a mapping with a 'ranges' list", hint=hint)
    out = []
    for item in ranges:
        if (
            not isinstance(item, (list, tuple))
            or len(item) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) for v in item)
            or item[0] > item[1]
        ):
            raise StoreError(f"coverage file {str(path)!r} holds a bad range {item!r}", hint=hint)
        out.append((int(item[0]), int(item[1])))
    return _merge_ranges(out)


def add_coverage(store_dir: str | Path, instrument: str, timeframe: str, start_ms: int, end_ms: int) -> None:
    """Record that [start_ms, end_ms) was fully fetched (atomic; merged with what was recorded)."""
    path = bars_dir(store_dir, instrument, timeframe) / COVERAGE_FILE
    with store_lock(store_dir, command="add_coverage"), _coverage_lock:
        ranges = get_coverage(store_dir, instrument, timeframe) + [(int(start_ms), int(end_ms))]
        merged = _merge_ranges(ranges)
        atomic_write_text(path, yaml.safe_dump({"ranges": [list(r) for r in merged]}, sort_keys=False))


def missing_ranges(covered: list[tuple[int, int]], start_ms: int, end_ms: int) -> list[tuple[int, int]]:
    """Parts of [start_ms, end_ms) not in ``covered``."""
    out, cursor = [], start_ms
    for lo, hi in _merge_ranges(covered):
        if hi <= cursor:
            continue
        if lo >= end_ms:
            break
        if lo > cursor:
            out.append((cursor, min(lo, end_ms)))
        cursor = max(cursor, hi)
    if cursor < end_ms:
        out.append((cursor, end_ms))
    return out


# --- funding ------------------------------------------------------------------------------------------


def write_funding(
    store_dir: str | Path, instrument: str, funding: pd.DataFrame, source: str, *, on_conflict: str = "overwrite"
) -> WriteResult:
    """Store funding-rate history (``funding_time``, ``funding_rate``, optional ``realized_rate``).

    Funding records are revised by exchanges (realized rate filled in later), so by default the incoming
    values replace stored ones for the same settlement time.
    """
    check_instrument(instrument)
    frame = funding.copy()
    if "funding_time" in frame.columns:
        frame = frame.rename(columns={"funding_time": TIME_COLUMN})
    if "realized_rate" not in frame.columns:
        frame["realized_rate"] = np.nan
    ts, values = frame_to_arrays(frame, FUNDING_COLUMNS, what=f"funding of {instrument}")
    ts, values, ambiguous = dedupe_incoming(ts, values)
    reasons, bad = _bad_funding_rows(ts, values)
    reasons[ambiguous & ~bad] = "duplicate_conflicting"
    bad |= ambiguous
    result_q = None
    with store_lock(store_dir, command="write_funding"):
        directory = funding_dir(store_dir, instrument)
        _check_name_collision(directory.parent, instrument)
        if bad.any():
            result_q = _quarantine(
                Path(store_dir), "funding", instrument, ts[bad], values[bad], FUNDING_COLUMNS, reasons[bad], source
            )
        result = _write_funding_rows(directory, instrument, ts, values, bad, source, on_conflict)
    result.rows_in = len(frame)
    result.rows_repeated = len(frame) - len(ts)
    result.quarantined = int(bad.sum())
    if bad.any():
        names, counts = np.unique(reasons[bad].astype(str), return_counts=True)
        result.quarantine_reasons = dict(zip(names.tolist(), counts.tolist()))
    result.quarantine_file = result_q
    return result


def _write_funding_rows(directory, instrument, ts, values, bad, source, on_conflict) -> WriteResult:
    return _write_partitioned(
        directory,
        kind="funding",
        instrument=instrument,
        timeframe=None,
        monthly=False,
        ts=ts[~bad],
        values=values[~bad],
        columns=FUNDING_COLUMNS,
        source=source,
        on_conflict=on_conflict,
        what=f"{instrument} funding rates",
    )


def read_funding(store_dir: str | Path, instrument: str, start: Any = None, end: Any = None) -> pd.DataFrame:
    """Funding history indexed by ``datetime`` (settlement time, UTC): ``funding_rate``, ``realized_rate``.

    Empty when none is stored (spot instruments have none).
    """
    start_ms, end_ms = _range_ms(start, end)
    ts, values = _read_series(funding_dir(store_dir, instrument), FUNDING_COLUMNS, start_ms, end_ms)
    return _to_frame(ts, values, FUNDING_COLUMNS)


def list_funding_instruments(store_dir: str | Path) -> list[str]:
    root = Path(store_dir) / "funding"
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if p.is_dir() and data_files(p))
