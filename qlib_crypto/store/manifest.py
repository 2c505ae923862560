"""Per-file YAML manifests: what a data file holds and the sha256 of its bytes."""

from __future__ import annotations

import datetime as dt
import hashlib
from pathlib import Path
from typing import Any

import yaml

from .._atomic import atomic_write_text
from ..errors import StoreError
from .layout import MANIFEST_SUFFIX, SCHEMA_VERSION


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def manifest_path(data_file: Path) -> Path:
    return data_file.with_name(data_file.name + MANIFEST_SUFFIX)


def iso_ms(ts_ms: int | None) -> str | None:
    if ts_ms is None:
        return None
    return dt.datetime.fromtimestamp(ts_ms / 1000, tz=dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def utc_now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def build_manifest(
    data_file: Path,
    *,
    kind: str,
    instrument: str | None,
    timeframe: str | None,
    start_ms: int | None,
    end_ms: int | None,
    row_count: int,
    source: str,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    manifest = {
        "schema_version": SCHEMA_VERSION,
        "kind": kind,
        "file": data_file.name,
        "instrument": instrument,
        "timeframe": timeframe,
        "start_ts": iso_ms(start_ms),
        "end_ts": iso_ms(end_ms),
        "row_count": int(row_count),
        "sha256": sha256_file(data_file),
        "source": source,
        "collected_at": utc_now_iso(),
    }
    if extra:
        manifest.update(extra)
    return manifest


def embedded_manifest(
    file_name: str,
    *,
    kind: str,
    instrument: str | None,
    timeframe: str | None,
    start_ms: int | None,
    end_ms: int | None,
    row_count: int,
    source: str,
    content_sha256: str,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The manifest fields that a data file carries in its own Parquet metadata (no wall-clock fields, so
    the same rows from the same source always give the same bytes)."""
    manifest = {
        "schema_version": SCHEMA_VERSION,
        "kind": kind,
        "file": file_name,
        "instrument": instrument,
        "timeframe": timeframe,
        "start_ts": iso_ms(start_ms),
        "end_ts": iso_ms(end_ms),
        "row_count": int(row_count),
        "source": source,
        "content_sha256": content_sha256,
    }
    if extra:
        manifest.update(extra)
    return manifest


def sidecar_from_embedded(data_file: Path, embedded: dict[str, Any], collected_at: str | None = None) -> dict[str, Any]:
    """The YAML sidecar of a data file: its embedded manifest plus the sha256 of the file's bytes."""
    manifest = {k: v for k, v in embedded.items() if k not in ("sha256", "collected_at")}
    manifest["sha256"] = sha256_file(data_file)
    manifest["collected_at"] = collected_at or utc_now_iso()
    return manifest


def mtime_iso(path: Path) -> str:
    return dt.datetime.fromtimestamp(path.stat().st_mtime, tz=dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def write_manifest(data_file: Path, manifest: dict[str, Any]) -> None:
    atomic_write_text(manifest_path(data_file), yaml.safe_dump(manifest, sort_keys=False))


def read_manifest(data_file: Path) -> dict[str, Any] | None:
    path = manifest_path(data_file)
    if not path.exists():
        return None
    try:
        loaded = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise StoreError(
            f"manifest {str(path)!r} is not valid YAML ({exc})",
            hint="run qlib-crypto validate; re-collect the period or restore the file",
        ) from exc
    if not isinstance(loaded, dict):
        raise StoreError(f"manifest {str(path)!r} is not a mapping", hint="re-collect the period")
    return loaded


def merge_sources(old: str | None, new: str) -> str:
    """Source label for a file holding rows from ``old`` and ``new`` sources (e.g. ``okx+import:x.csv``)."""
    parts = set((old or "").split("+")) | {new}
    parts.discard("")
    return "+".join(sorted(parts))
