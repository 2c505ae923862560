"""Instrument metadata snapshots (tick size, lot size, minimum size...), dated by the day they were read."""
from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .._atomic import atomic_path
from ..errors import ConfigError, StoreError
from .layout import meta_dir
from .manifest import build_manifest, write_manifest

log = logging.getLogger(__name__)
META_COLUMNS = [
    "instId", "instType", "baseCcy", "quoteCcy", "settleCcy", "ctVal", "ctMult",
    "tickSz", "lotSz", "minSz", "maxMktSz", "listTime", "state",
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


def write_instrument_meta(
    store_dir: str | Path, meta: pd.DataFrame, source: str, read_at: dt.date | str | None = None
) -> Path:
    """Store a metadata snapshot read on ``read_at`` (default: today, UTC). Same day -> instIds merged."""
    day = pd.Timestamp(read_at or dt.datetime.now(dt.timezone.utc).date()).date()
    frame = _normalise(meta)
    path = meta_dir(store_dir) / f"{day.isoformat()}.parquet"
    if path.exists():
        old = pd.read_parquet(path)
        frame = _normalise(pd.concat([old.drop(columns=["read_at"], errors="ignore"), frame], ignore_index=True))
    frame["read_at"] = day.isoformat()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        frame.to_parquet(tmp, index=False, compression="zstd")
    write_manifest(
        path,
        build_manifest(path, kind="instruments", instrument=None, timeframe=None, start_ms=None, end_ms=None,
                       row_count=len(frame), source=source, extra={"read_at": day.isoformat()}),
    )
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
