"""Instrument metadata snapshots (tick size, lot size, minimum size...), dated by the day they were read."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from .._atomic import atomic_path
from ..errors import ConfigError, StoreError
from .layout import meta_dir
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
from .tables import EMBEDDED_KEY, read_embedded

log = logging.getLogger(__name__)
META_COLUMNS = [
    "instId",
    "instType",
    "baseCcy",
    "quoteCcy",
    "settleCcy",
    "ctVal",
    "ctMult",
    "tickSz",
    "lotSz",
    "minSz",
    "maxMktSz",
    "listTime",
    "state",
]
NUMERIC_COLUMNS = ["ctVal", "ctMult", "tickSz", "lotSz", "minSz", "maxMktSz"]
STRING_COLUMNS = ["instId", "instType", "baseCcy", "quoteCcy", "settleCcy", "state"]


def _normalise(meta: pd.DataFrame) -> pd.DataFrame:
    if "instId" not in meta.columns:
        raise ConfigError("instrument metadata has no 'instId' column", hint=f"columns expected: {META_COLUMNS}")
    frame = meta.copy()
    for col in META_COLUMNS:
        if col not in frame.columns:
            frame[col] = np.nan if col in NUMERIC_COLUMNS or col == "listTime" else ""
    for col in NUMERIC_COLUMNS:
        frame[col] = pd.to_numeric(frame[col], errors="coerce").astype("float64")  # "" -> NaN
    for col in STRING_COLUMNS:
        frame[col] = frame[col].fillna("").astype(str)
    list_time = frame["listTime"]
    if pd.api.types.is_datetime64_any_dtype(list_time):
        lt = pd.to_datetime(list_time, utc=True)
    else:
        lt = pd.to_datetime(pd.to_numeric(list_time, errors="coerce"), unit="ms", utc=True)
    frame["listTime"] = lt.astype("datetime64[ms, UTC]")
    extra = [c for c in frame.columns if c not in META_COLUMNS]
    frame = frame[META_COLUMNS + extra].drop_duplicates("instId", keep="last")
    return frame.sort_values("instId").reset_index(drop=True)


def frame_content_sha256(frame: pd.DataFrame) -> str:
    """sha256 of a metadata frame's values and column names (independent of the Parquet encoding)."""
    digest = hashlib.sha256("\x00".join(map(str, frame.columns)).encode())
    digest.update(pd.util.hash_pandas_object(frame, index=False).to_numpy().tobytes())
    return digest.hexdigest()


def _write_meta_file(path: Path, frame: pd.DataFrame, embedded: dict[str, Any]) -> None:
    table = pa.Table.from_pandas(frame, preserve_index=False).replace_schema_metadata(
        {EMBEDDED_KEY: json.dumps(embedded, sort_keys=True).encode("utf-8")}
    )
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd")


def trusted_meta_manifest(path: Path, frame: pd.DataFrame | None = None) -> tuple[dict[str, Any] | None, bool]:
    """Check a metadata snapshot against its sidecar; rebuild a missing or stale sidecar from the manifest
    embedded in the Parquet file when the file's rows match it. Returns (manifest or None, healed)."""
    try:
        sidecar = read_manifest(path)
    except StoreError:
        sidecar = None
    if sidecar is not None and sidecar.get("sha256") == sha256_file(path):
        return sidecar, False
    embedded = read_embedded(path)
    if embedded is None:
        return None, False
    if frame is None:
        frame = pd.read_parquet(path)
    if embedded.get("content_sha256") != frame_content_sha256(frame) or embedded.get("row_count") != len(frame):
        return None, False
    healed = sidecar_from_embedded(path, embedded, collected_at=mtime_iso(path))
    write_manifest(path, healed)
    return healed, True


def write_instrument_meta(
    store_dir: str | Path, meta: pd.DataFrame, source: str, read_at: dt.date | str | None = None
) -> Path:
    """Store a metadata snapshot read on ``read_at`` (default: today, UTC). Same day -> instIds merged."""
    day = pd.Timestamp(read_at or dt.datetime.now(dt.timezone.utc).date()).date()
    frame = _normalise(meta)
    path = meta_dir(store_dir) / f"{day.isoformat()}.parquet"
    with store_lock(store_dir, command="write_instrument_meta"):
        old = None
        sources = source
        if path.exists():
            try:
                old = pd.read_parquet(path)
            except Exception as exc:  # noqa: BLE001 - any parquet failure means a corrupt snapshot
                raise StoreError(
                    f"cannot read metadata snapshot {str(path)!r} ({type(exc).__name__})",
                    hint="delete it and its manifest, then collect again",
                ) from exc
            try:
                manifest, _ = trusted_meta_manifest(path, old)
            except OSError as exc:
                raise StoreError(
                    f"cannot write the manifest of {str(path)!r} ({exc.strerror or exc})",
                    hint="check free disk space and permissions",
                ) from exc
            sources = merge_sources((manifest or {}).get("source"), source)
            frame = _normalise(pd.concat([old.drop(columns=["read_at"], errors="ignore"), frame], ignore_index=True))
        frame["read_at"] = day.isoformat()
        if old is not None and list(old.columns) == list(frame.columns) and old.equals(frame):
            return path  # nothing new (its sidecar was checked, and healed if needed, above)
        embedded = embedded_manifest(
            path.name,
            kind="instruments",
            instrument=None,
            timeframe=None,
            start_ms=None,
            end_ms=None,
            row_count=len(frame),
            source=sources,
            content_sha256=frame_content_sha256(frame),
            extra={"read_at": day.isoformat()},
        )
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            _write_meta_file(path, frame, embedded)
            write_manifest(path, sidecar_from_embedded(path, embedded))
        except OSError as exc:
            raise StoreError(
                f"cannot write {str(path)!r} ({exc.strerror or exc})",
                hint="check free disk space and permissions; re-running the same command finishes the job",
            ) from exc
    return path


def read_instrument_meta(store_dir: str | Path, as_of: Any = None) -> pd.DataFrame:
    """Newest metadata snapshot read on or before ``as_of`` (default: the newest). One row per instId.

    If every snapshot is newer than ``as_of``, the oldest one is returned (and a warning is logged).
    """
    files = sorted(meta_dir(store_dir).glob("[0-9]*.parquet"))
    if not files:
        raise StoreError(
            f"store {str(store_dir)!r} holds no instrument metadata",
            hint="collect with qlib-crypto collect (it stores metadata), or pass instrument_meta=None",
        )
    chosen = files[-1]
    if as_of is not None:
        day = pd.Timestamp(as_of).date().isoformat()
        eligible = [f for f in files if f.stem <= day]
        if eligible:
            chosen = eligible[-1]
        else:
            chosen = files[0]
            log.warning("no instrument metadata read on or before %s; using the oldest (%s)", day, chosen.stem)
    return pd.read_parquet(chosen)
