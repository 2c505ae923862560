"""Validation of a store: file hashes against manifests, readability, duplicates, gaps, OHLC sanity, NaN."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pyarrow.parquet as pq

from .._atomic import atomic_write_text
from ..errors import ConfigError, StoreError
from ..sources.base import BAR_COLUMNS
from ..timeframes import get_timeframe
from .layout import COVERAGE_FILE, MANIFEST_SUFFIX, check_instrument, data_files, require_store
from .manifest import iso_ms, mtime_iso, read_manifest, sha256_file, sidecar_from_embedded, utc_now_iso, write_manifest
from .series import FUNDING_COLUMNS, _bad_bar_rows, _bad_funding_rows, read_coverage_file
from .tables import content_sha256, read_embedded, read_table

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
    repaired: list[dict[str, Any]] = field(default_factory=list)

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
            "repaired": self.repaired,
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
        if self.repaired:
            lines.append(
                f"  repaired {len(self.repaired)}: "
                + "; ".join(f"{r['kind']} {r['file']} ({r['action']})" for r in self.repaired[:5])
                + (" ..." if len(self.repaired) > 5 else "")
            )
        for problem in self.problems[:20]:
            lines.append(f"  problem [{problem['kind']}] {problem['file']}: {problem['message']}")
        if len(self.problems) > 20:
            lines.append(f"  ... and {len(self.problems) - 20} more problems (see the JSON report)")
        return "\n".join(lines)

    def write_json(self, path: str | Path) -> Path:
        target = Path(path)
        atomic_write_text(target, json.dumps(self.to_dict(), indent=2, default=str))
        return target


def _embedded_ok(path: Path, ts: np.ndarray, values: np.ndarray) -> dict[str, Any] | None:
    embedded = read_embedded(path)
    if embedded is None:
        return None
    if embedded.get("content_sha256") != content_sha256(ts, values) or embedded.get("row_count") != len(ts):
        return None
    return embedded


def _check_file(report: ValidationReport, path: Path, columns: list[str], repair: bool = False):
    """Hash + manifest + readability checks; returns (ts, values) or None when unreadable."""
    report.files_checked += 1
    try:
        ts, values = read_table(path, columns)
    except StoreError as exc:
        ts = values = None
        report.add_problem(
            "unreadable", path, exc.message, hint="delete the file and its manifest, then re-collect the period"
        )
    manifest = None
    manifest_problem = None
    try:
        manifest = read_manifest(path)
    except StoreError as exc:
        manifest_problem = ("manifest_invalid", str(exc))
    if manifest is None and manifest_problem is None:
        manifest_problem = ("manifest_missing", "data file has no manifest")
    if manifest is not None:
        actual = sha256_file(path)
        if manifest.get("sha256") != actual:
            manifest_problem = (
                "hash_mismatch",
                f"sha256 {actual[:12]}... differs from manifest {str(manifest.get('sha256'))[:12]}...",
            )
    if ts is None:
        if manifest_problem is not None:
            report.add_problem(
                manifest_problem[0],
                path,
                manifest_problem[1],
                hint="delete the file and its manifest, then re-collect the period",
            )
        return None
    if manifest_problem is not None:
        embedded = _embedded_ok(path, ts, values)
        if embedded is not None and repair:
            write_manifest(path, sidecar_from_embedded(path, embedded, collected_at=mtime_iso(path)))
            report.repaired.append(
                {
                    "kind": manifest_problem[0],
                    "file": str(path),
                    "action": "rebuilt the manifest from the file's embedded manifest",
                }
            )
        elif embedded is not None:
            report.add_problem(
                manifest_problem[0],
                path,
                manifest_problem[1] + "; the file's rows match its embedded manifest",
                hint="re-run the command that wrote it, or qlib-crypto validate --repair to rebuild the manifest",
                repairable=True,
            )
        else:
            report.add_problem(
                manifest_problem[0],
                path,
                manifest_problem[1],
                hint="the file changed after it was written: restore it, or delete it and its manifest and re-collect",
            )
        manifest = embedded
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


def _bad_rows_problem(
    report: ValidationReport, path: Path, ts: np.ndarray, reasons: np.ndarray, bad: np.ndarray
) -> None:
    names, counts = np.unique(reasons[bad].astype(str), return_counts=True)
    first = int(np.flatnonzero(bad)[0])
    report.add_problem(
        "bad_rows",
        path,
        f"{int(bad.sum())} bad rows ({dict(zip(names.tolist(), counts.tolist()))}), first at {iso_ms(int(ts[first]))}",
        hint="re-import or re-collect the period",
    )


def _validate_bars(report: ValidationReport, directory: Path, timeframe: str, repair: bool) -> None:
    tf = get_timeframe(timeframe)
    instrument = directory.name
    all_ts = []
    for path in data_files(directory):
        try:
            loaded = _check_file(report, path, BAR_COLUMNS, repair)
        except Exception as exc:  # noqa: BLE001 - one bad file never stops validation
            report.add_problem("check_failed", path, f"{type(exc).__name__}: {exc}")
            continue
        if loaded is None:
            continue
        ts, values = loaded
        if len(ts) > 1 and np.any(np.diff(ts) <= 0):
            dups = int(np.sum(np.diff(np.sort(ts)) == 0))
            report.add_problem("unsorted_or_duplicate", path, f"timestamps not strictly increasing ({dups} duplicates)")
        reasons, bad = _bad_bar_rows(ts, values, tf)
        if bad.any():
            _bad_rows_problem(report, path, ts, reasons, bad)
        all_ts.append(ts)
    coverage = directory / COVERAGE_FILE
    if coverage.exists():
        try:
            read_coverage_file(coverage)
        except StoreError as exc:
            if repair:
                coverage.unlink()
                report.repaired.append(
                    {
                        "kind": "coverage_invalid",
                        "file": str(coverage),
                        "action": "deleted (the next collect re-fetches and verifies those ranges)",
                    }
                )
            else:
                report.add_problem("coverage_invalid", coverage, exc.message, hint=exc.hint)
    if not all_ts:
        return
    ts = np.unique(np.concatenate(all_ts))
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


def _extra_files(report: ValidationReport, directory: Path, repair: bool, allowed: tuple[str, ...] = ()) -> None:
    """Temp files, stray files and orphan manifests inside one series directory."""
    for extra in sorted(directory.iterdir()):
        if extra.suffix == ".tmp" or (extra.name.startswith(".") and ".tmp" in extra.name):
            if repair and extra.is_file():
                extra.unlink()
                report.repaired.append({"kind": "temp_file", "file": str(extra), "action": "deleted"})
            else:
                report.warnings.append(
                    {"kind": "temp_file", "file": str(extra), "message": "left by an interrupted write; safe to delete"}
                )
        elif extra.name.endswith(MANIFEST_SUFFIX):
            if not extra.with_name(extra.name[: -len(MANIFEST_SUFFIX)]).exists():
                if repair:
                    extra.unlink()
                    report.repaired.append({"kind": "orphan_manifest", "file": str(extra), "action": "deleted"})
                else:
                    report.add_problem(
                        "orphan_manifest",
                        extra,
                        "manifest without its data file",
                        hint="re-collect the period, or qlib-crypto validate --repair to delete it",
                    )
        elif extra.is_dir() or not (extra.name.endswith(".parquet") or extra.name in allowed):
            report.warnings.append(
                {"kind": "unknown_file", "file": str(extra), "message": "not part of the store layout"}
            )


def _series_dirs(report: ValidationReport, parent: Path) -> list[Path]:
    """Instrument directories under ``parent``; bad names and case collisions are problems."""
    out, seen = [], {}
    for entry in sorted(parent.iterdir()):
        if not entry.is_dir():
            report.warnings.append(
                {"kind": "unknown_file", "file": str(entry), "message": "not part of the store layout"}
            )
            continue
        try:
            check_instrument(entry.name)
        except ConfigError:
            report.add_problem(
                "unknown_directory",
                entry,
                f"{entry.name!r} is not an instrument directory",
                hint="move it out of the store",
            )
            continue
        folded = entry.name.casefold()
        if folded in seen:
            report.add_problem(
                "case_collision",
                entry,
                f"{entry.name!r} and {seen[folded]!r} differ only in case and would map to one Qlib instrument",
                hint="merge them into one upper-case series and delete the other directory",
            )
        seen.setdefault(folded, entry.name)
        out.append(entry)
    return out


def _known_instruments(store: Path) -> set[str]:
    names: set[str] = set()
    bars_root, funding_root = store / "bars", store / "funding"
    if bars_root.is_dir():
        for tf_dir in bars_root.iterdir():
            if tf_dir.is_dir():
                names.update(p.name for p in tf_dir.iterdir() if p.is_dir())
    if funding_root.is_dir():
        names.update(p.name for p in funding_root.iterdir() if p.is_dir())
    return names


def validate_store(
    store_dir: str | Path,
    *,
    timeframe: str | None = None,
    instruments: Iterable[str] | None = None,
    repair: bool = False,
) -> ValidationReport:
    """Re-hash every data file against its manifest and check the rows. See :class:`ValidationReport`.

    Never stops at one bad file: every finding is listed with its path. With ``repair`` (the caller holds the
    store lock) it also rebuilds sidecar manifests that the data files' embedded manifests prove, and deletes
    leftover temporary files, orphan manifests and unreadable coverage files (see docs/store.md, Guarantees).
    """
    store = require_store(store_dir)
    report = ValidationReport(store=str(store))
    wanted = set(instruments) if instruments else None
    if wanted:
        known = _known_instruments(store)
        unknown = sorted(wanted - known)
        if unknown:
            import difflib

            close = sorted({m for u in unknown for m in difflib.get_close_matches(u, sorted(known), n=3)})
            raise ConfigError(
                f"store {str(store)!r} holds no series for {', '.join(unknown)}",
                hint=(f"did you mean {', '.join(close)}? " if close else "")
                + f"{len(known)} instruments are stored"
                + (f", e.g. {', '.join(sorted(known)[:5])}" if known else ""),
            )
    tf_name = get_timeframe(timeframe).name if timeframe is not None else None
    bars_root = store / "bars"
    if bars_root.is_dir():
        for tf_dir in sorted(bars_root.iterdir()):
            if not tf_dir.is_dir():
                report.warnings.append(
                    {"kind": "unknown_file", "file": str(tf_dir), "message": "not part of the store layout"}
                )
                continue
            try:
                name = get_timeframe(tf_dir.name).name
            except ConfigError:
                report.add_problem(
                    "unknown_directory",
                    tf_dir,
                    f"{tf_dir.name!r} is not a timeframe directory",
                    hint="move it out of the store (timeframes are named 1m, 5m, 1h, 1d...)",
                )
                continue
            if name != tf_dir.name:
                report.add_problem(
                    "unknown_directory",
                    tf_dir,
                    f"{tf_dir.name!r} is not the store's spelling {name!r}",
                    hint=f"rename it to {name}",
                )
                continue
            if tf_name is not None and name != tf_name:
                continue
            for inst_dir in _series_dirs(report, tf_dir):
                if wanted is not None and inst_dir.name not in wanted:
                    continue
                try:
                    _validate_bars(report, inst_dir, tf_dir.name, repair)
                    _extra_files(report, inst_dir, repair, allowed=(COVERAGE_FILE,))
                except Exception as exc:  # noqa: BLE001 - one bad series never stops validation
                    report.add_problem("check_failed", inst_dir, f"{type(exc).__name__}: {exc}")
    funding_root = store / "funding"
    if funding_root.is_dir():
        for inst_dir in _series_dirs(report, funding_root):
            if wanted is not None and inst_dir.name not in wanted:
                continue
            for path in data_files(inst_dir):
                try:
                    loaded = _check_file(report, path, FUNDING_COLUMNS, repair)
                    if loaded is not None:
                        reasons, bad = _bad_funding_rows(*loaded)
                        if bad.any():
                            _bad_rows_problem(report, path, loaded[0], reasons, bad)
                except Exception as exc:  # noqa: BLE001
                    report.add_problem("check_failed", path, f"{type(exc).__name__}: {exc}")
            try:
                _extra_files(report, inst_dir, repair)
            except OSError as exc:
                report.add_problem("check_failed", inst_dir, f"{type(exc).__name__}: {exc}")
    meta_root = store / "meta" / "instruments"
    if meta_root.is_dir():
        for path in sorted(meta_root.glob("*.parquet")):
            report.files_checked += 1
            try:
                pq.read_metadata(path)
            except Exception as exc:  # noqa: BLE001 - any parquet failure is a finding
                report.add_problem("unreadable", path, f"{type(exc).__name__}: {exc}")
                continue
            try:
                _check_meta(report, path, repair)
            except Exception as exc:  # noqa: BLE001
                report.add_problem("check_failed", path, f"{type(exc).__name__}: {exc}")
    quarantine_root = store / "quarantine"
    if quarantine_root.is_dir():
        for path in sorted(quarantine_root.rglob("*.parquet")):
            try:
                report.quarantined_rows += pq.read_metadata(path).num_rows
            except Exception:  # noqa: BLE001
                report.warnings.append({"kind": "quarantine_unreadable", "file": str(path), "message": "unreadable"})
    return report


def _check_meta(report: ValidationReport, path: Path, repair: bool) -> None:
    from .meta import frame_content_sha256

    try:
        manifest = read_manifest(path)
    except StoreError as exc:
        manifest, problem = None, ("manifest_invalid", str(exc))
    else:
        problem = None
        if manifest is None:
            problem = ("manifest_missing", "metadata file has no manifest")
        elif manifest.get("sha256") != sha256_file(path):
            problem = ("hash_mismatch", "metadata file differs from its manifest's sha256")
    if problem is None:
        return
    import pandas as pd

    embedded = read_embedded(path)
    frame = pd.read_parquet(path)
    provable = (
        embedded is not None
        and embedded.get("content_sha256") == frame_content_sha256(frame)
        and embedded.get("row_count") == len(frame)
    )
    if provable and repair:
        write_manifest(path, sidecar_from_embedded(path, embedded, collected_at=mtime_iso(path)))
        report.repaired.append(
            {"kind": problem[0], "file": str(path), "action": "rebuilt the manifest from the file's embedded manifest"}
        )
    elif provable:
        report.add_problem(
            problem[0],
            path,
            problem[1] + "; the file's rows match its embedded manifest",
            hint="re-run the collection or qlib-crypto validate --repair",
            repairable=True,
        )
    else:
        report.add_problem(
            problem[0], path, problem[1], hint="delete the snapshot and its manifest, then collect again"
        )
