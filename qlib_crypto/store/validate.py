"""Validation of a store: file hashes against manifests, readability, duplicates, gaps, OHLC sanity, NaN."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pyarrow.parquet as pq

from .._atomic import atomic_write_text
from ..errors import StoreError
from ..sources.base import BAR_COLUMNS
from ..timeframes import get_timeframe
from .layout import COVERAGE_FILE, data_files, require_store
from .manifest import iso_ms, read_manifest, sha256_file, utc_now_iso
from .series import FUNDING_COLUMNS, _bad_bar_rows
from .tables import read_table

MAX_LISTED_GAPS = 50


@dataclass
class ValidationReport:
    """Result of :func:`validate_store`. ``problems`` make it fail; ``warnings`` (gaps, temp files) do not."""

    store: str
    checked_at: str = field(default_factory=utc_now_iso)
    files_checked: int = 0
    rows_checked: int = 0
    problems: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[dict[str, Any]] = field(default_factory=list)
    series: list[dict[str, Any]] = field(default_factory=list)
    quarantined_rows: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems

    def add_problem(self, kind: str, path: Path | str, message: str, **extra: Any) -> None:
        self.problems.append({"kind": kind, "file": str(path), "message": message, **extra})

    def to_dict(self) -> dict[str, Any]:
        return {
            "store": self.store,
            "checked_at": self.checked_at,
            "ok": self.ok,
            "files_checked": self.files_checked,
            "rows_checked": self.rows_checked,
            "problem_count": len(self.problems),
            "warning_count": len(self.warnings),
            "quarantined_rows": self.quarantined_rows,
            "problems": self.problems,
            "warnings": self.warnings,
            "series": self.series,
        }

    def summary(self) -> str:
        missing = sum(s.get("missing_bars", 0) for s in self.series)
        lines = [
            f"store {self.store}: {'OK' if self.ok else 'PROBLEMS FOUND'}; {self.files_checked} files, "
            f"{len(self.series)} series, {self.rows_checked:,} rows checked; {missing:,} missing bars in gaps; "
            f"{self.quarantined_rows:,} rows in quarantine"
        ]
        for problem in self.problems[:20]:
            lines.append(f"  problem [{problem['kind']}] {problem['file']}: {problem['message']}")
        if len(self.problems) > 20:
            lines.append(f"  ... and {len(self.problems) - 20} more problems (see the JSON report)")
        return "\n".join(lines)

    def write_json(self, path: str | Path) -> Path:
        target = Path(path)
        atomic_write_text(target, json.dumps(self.to_dict(), indent=2, default=str))
        return target


def _check_file(report: ValidationReport, path: Path, columns: list[str]):
    """Hash + manifest + readability checks; returns (ts, values) or None when unreadable."""
    report.files_checked += 1
    manifest = None
    try:
        manifest = read_manifest(path)
    except StoreError as exc:
        report.add_problem("manifest_invalid", path, str(exc))
    if manifest is None and not any(p["file"] == str(path) for p in report.problems):
        report.add_problem("manifest_missing", path, "data file has no manifest", hint="re-collect this period")
    if manifest is not None:
        actual = sha256_file(path)
        if manifest.get("sha256") != actual:
            report.add_problem(
                "hash_mismatch", path, f"sha256 {actual[:12]}... differs from manifest {str(manifest.get('sha256'))[:12]}...",
                hint="the file changed after it was written: restore it or delete it and its manifest and re-collect",
            )
    try:
        ts, values = read_table(path, columns)
    except StoreError as exc:
        report.add_problem("unreadable", path, exc.message)
        return None
    if manifest is not None and manifest.get("row_count") != len(ts):
        report.add_problem("row_count_mismatch", path, f"{len(ts)} rows, manifest says {manifest.get('row_count')}")
    report.rows_checked += len(ts)
    return ts, values


def _gaps(ts: np.ndarray, step_ms: int) -> list[tuple[int, int]]:
    """Missing intervals [first missing bar, next present bar) between the first and last bar."""
    if len(ts) < 2:
        return []
    jumps = np.flatnonzero(np.diff(ts) > step_ms)
    return [(int(ts[i] + step_ms), int(ts[i + 1])) for i in jumps]


def _validate_bars(report: ValidationReport, directory: Path, timeframe: str) -> None:
    tf = get_timeframe(timeframe)
    instrument = directory.name
    all_ts = []
    for path in data_files(directory):
        loaded = _check_file(report, path, BAR_COLUMNS)
        if loaded is None:
            continue
        ts, values = loaded
        if len(ts) > 1 and np.any(np.diff(ts) <= 0):
            dups = int(np.sum(np.diff(np.sort(ts)) == 0))
            report.add_problem("unsorted_or_duplicate", path, f"timestamps not strictly increasing ({dups} duplicates)")
        reasons, bad = _bad_bar_rows(ts, values, tf)
        if bad.any():
            names, counts = np.unique(reasons[bad].astype(str), return_counts=True)
            first = int(np.flatnonzero(bad)[0])
            report.add_problem(
                "bad_rows", path, f"{int(bad.sum())} bad rows ({dict(zip(names.tolist(), counts.tolist()))}), "
                f"first at {iso_ms(int(ts[first]))}", hint="re-import or re-collect the period",
            )
        all_ts.append(ts)
    if not all_ts:
        return
    ts = np.concatenate(all_ts)
    ts = np.unique(ts)
    gaps = _gaps(ts, tf.ms)
    missing = sum((b - a) // tf.ms for a, b in gaps)
    report.series.append(
        {
            "instrument": instrument,
            "timeframe": tf.name,
            "rows": int(len(ts)),
            "start": iso_ms(int(ts[0])),
            "end": iso_ms(int(ts[-1])),
            "gap_count": len(gaps),
            "missing_bars": int(missing),
            "gaps": [[iso_ms(a), iso_ms(b)] for a, b in gaps[:MAX_LISTED_GAPS]],
        }
    )


def validate_store(
    store_dir: str | Path, *, timeframe: str | None = None, instruments: Iterable[str] | None = None
) -> ValidationReport:
    """Re-hash every data file against its manifest and check the rows. See :class:`ValidationReport`."""
    store = require_store(store_dir)
    report = ValidationReport(store=str(store))
    wanted = set(instruments) if instruments else None
    bars_root = store / "bars"
    tf_dirs = sorted(p for p in bars_root.iterdir() if p.is_dir()) if bars_root.is_dir() else []
    if timeframe is not None:
        name = get_timeframe(timeframe).name
        tf_dirs = [p for p in tf_dirs if p.name == name]
    for tf_dir in tf_dirs:
        for inst_dir in sorted(p for p in tf_dir.iterdir() if p.is_dir()):
            if wanted is not None and inst_dir.name not in wanted:
                continue
            _validate_bars(report, inst_dir, tf_dir.name)
            for extra in inst_dir.iterdir():
                if extra.suffix == ".tmp" or (extra.name.startswith(".") and ".tmp" in extra.name):
                    report.warnings.append({"kind": "temp_file", "file": str(extra), "message": "left by an interrupted write; safe to delete"})
                elif not (extra.name.endswith(".parquet") or extra.name.endswith(".manifest.yaml") or extra.name == COVERAGE_FILE):
                    report.warnings.append({"kind": "unknown_file", "file": str(extra), "message": "not part of the store layout"})
                elif extra.name.endswith(".manifest.yaml") and not extra.with_name(extra.name[: -len(".manifest.yaml")]).exists():
                    report.add_problem("orphan_manifest", extra, "manifest without its data file", hint="re-collect the period")
    funding_root = store / "funding"
    if funding_root.is_dir():
        for inst_dir in sorted(p for p in funding_root.iterdir() if p.is_dir()):
            if wanted is not None and inst_dir.name not in wanted:
                continue
            for path in data_files(inst_dir):
                _check_file(report, path, FUNDING_COLUMNS)
    meta_root = store / "meta" / "instruments"
    if meta_root.is_dir():
        for path in sorted(meta_root.glob("*.parquet")):
            report.files_checked += 1
            manifest = read_manifest(path)
            if manifest is None:
                report.add_problem("manifest_missing", path, "metadata file has no manifest")
            elif manifest.get("sha256") != sha256_file(path):
                report.add_problem("hash_mismatch", path, "metadata file differs from its manifest's sha256")
            try:
                pq.read_metadata(path)
            except Exception as exc:  # noqa: BLE001 - any parquet failure is a finding
                report.add_problem("unreadable", path, f"{type(exc).__name__}: {exc}")
    quarantine_root = store / "quarantine"
    if quarantine_root.is_dir():
        for path in quarantine_root.rglob("*.parquet"):
            try:
                report.quarantined_rows += pq.read_metadata(path).num_rows
            except Exception:  # noqa: BLE001
                report.warnings.append({"kind": "quarantine_unreadable", "file": str(path), "message": "unreadable"})
    return report
