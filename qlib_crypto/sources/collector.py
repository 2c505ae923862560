"""The generic collection driver: any :class:`BarSource` -> the raw Parquet store, resumable.

``collect`` asks the store what was already fetched (``get_coverage``), fetches only the missing ranges,
concurrently across instruments (``workers`` threads; a source such as :class:`OkxSource` shares one rate
limiter per endpoint budget between them), writes bars with ``write_bars`` (atomic, validated, merged) and
records coverage with ``add_coverage`` as ranges complete, so an interrupted run resumes where it stopped and
a second identical run fetches nothing and changes no file. Funding rates and instrument metadata are stored
beside the bars. When a source gives up on a range (retries exhausted), what was fetched is kept and the
failure is reported with the instrument and time range (:class:`CollectionIncomplete`).
"""
from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import os
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import pandas as pd

from ..errors import CollectionIncomplete, ConfigError, QlibCryptoError, StoreError
from ..timeframes import get_timeframe
from .base import BarSource, parse_time_ms

log = logging.getLogger(__name__)

FLUSH_ROWS = 20_000  # buffered bars written at least this often ...
FLUSH_SECONDS = 2.0  # ... or after this many seconds


def _iso(ms: int) -> str:
    return pd.Timestamp(int(ms), unit="ms", tz="UTC").isoformat().replace("+00:00", "Z")


@dataclass
class InstrumentResult:
    """What happened to one instrument."""

    instrument: str
    bars_fetched: int = 0
    bars_added: int = 0
    quarantined: int = 0
    conflicts: int = 0
    ranges_fetched: list[tuple[int, int]] = field(default_factory=list)
    funding_rows: int = 0
    error: str | None = None
    failed_ranges: list[tuple[int, int]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_dict(self) -> dict[str, Any]:
        out = dict(self.__dict__)
        out["ranges_fetched"] = [[_iso(a), _iso(b)] for a, b in self.ranges_fetched]
        out["failed_ranges"] = [[_iso(a), _iso(b)] for a, b in self.failed_ranges]
        return out


@dataclass
class CollectReport:
    """Result of :func:`collect`: per-instrument results, totals and throughput."""

    source: str
    store_dir: str
    timeframe: str
    start_ms: int
    end_ms: int
    results: list[InstrumentResult] = field(default_factory=list)
    elapsed_s: float = 0.0

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.results)

    @property
    def bars_fetched(self) -> int:
        return sum(r.bars_fetched for r in self.results)

    @property
    def bars_added(self) -> int:
        return sum(r.bars_added for r in self.results)

    @property
    def bars_per_s(self) -> float:
        return self.bars_fetched / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def failures(self) -> list[InstrumentResult]:
        return [r for r in self.results if not r.ok]

    def failure_text(self) -> str:
        parts = []
        for r in self.failures:
            ranges = ", ".join(f"{_iso(a)}..{_iso(b)}" for a, b in r.failed_ranges) or "?"
            parts.append(f"{r.instrument} [{ranges}]: {r.error}")
        return "; ".join(parts)

    def summary(self) -> str:
        """A few lines for humans."""
        lines = [
            f"collected {len(self.results)} instruments ({self.source}, {self.timeframe}, "
            f"{_iso(self.start_ms)} .. {_iso(self.end_ms)}) into {self.store_dir}: "
            f"{self.bars_fetched:,} bars fetched, {self.bars_added:,} new, "
            f"{sum(r.funding_rows for r in self.results):,} funding rows, {self.elapsed_s:.1f}s "
            f"({self.bars_per_s:,.0f} bars/s)"
        ]
        quarantined = sum(r.quarantined for r in self.results)
        if quarantined:
            lines.append(f"  {quarantined:,} bad rows quarantined")
        for r in self.failures:
            ranges = ", ".join(f"{_iso(a)}..{_iso(b)}" for a, b in r.failed_ranges)
            lines.append(f"  INCOMPLETE {r.instrument}: not fetched {ranges}: {r.error}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source, "store_dir": self.store_dir, "timeframe": self.timeframe,
            "start": _iso(self.start_ms), "end": _iso(self.end_ms), "ok": self.ok,
            "bars_fetched": self.bars_fetched, "bars_added": self.bars_added, "elapsed_s": self.elapsed_s,
            "bars_per_s": self.bars_per_s, "results": [r.to_dict() for r in self.results],
        }

    def raise_if_incomplete(self) -> None:
        """Raise :class:`CollectionIncomplete` naming every instrument and range not fetched."""
        if not self.ok:
            err = CollectionIncomplete(
                f"collection incomplete for {len(self.failures)} of {len(self.results)} instruments: "
                + self.failure_text(),
                hint="what was fetched is stored; re-run the same command to resume",
            )
            err.report = self  # type: ignore[attr-defined]
            raise err


def check_store_writable(store_dir: str | os.PathLike) -> Path:
    """Create ``store_dir`` if needed and prove it is writable; ``StoreError`` otherwise."""
    path = Path(store_dir)
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-probe-", dir=str(path))
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise StoreError(
            f"store directory {str(path)!r} is not writable ({exc.strerror or exc})",
            hint="choose a directory you can write to with --store, or fix its permissions",
        ) from exc
    return path


class _Progress:
    """tqdm bars: one for the whole collection and one per running instrument, with bars/s."""

    def __init__(self, enabled: bool, total: int, workers: int) -> None:
        self.enabled = enabled
        self._lock = threading.Lock()
        self._free = list(range(1, workers + 1))
        self.overall = None
        if enabled:
            from tqdm import tqdm

            self._tqdm = tqdm
            self.overall = tqdm(total=total, unit="bar", unit_scale=True, desc="all", position=0, file=sys.stderr,
                                dynamic_ncols=True)

    def start(self, instrument: str, total: int) -> Any:
        if not self.enabled:
            return None
        with self._lock:
            pos = self._free.pop(0) if self._free else 1
        return self._tqdm(total=total, unit="bar", unit_scale=True, desc=instrument, position=pos, leave=False,
                          file=sys.stderr, dynamic_ncols=True)

    def update(self, bar: Any, n: int) -> None:
        if bar is not None:
            bar.update(n)
        if self.overall is not None:
            with self._lock:
                self.overall.update(n)

    def finish(self, bar: Any) -> None:
        if bar is None:
            return
        pos = bar.pos
        bar.close()
        with self._lock:
            self._free.append(abs(pos))
            self._free.sort()

    def close(self) -> None:
        if self.overall is not None:
            self.overall.close()


def _collect_one(
    source: BarSource, store: Path, instrument: str, timeframe: str, start_ms: int, end_ms: int,
    with_funding: bool, progress: _Progress, flush_rows: int, flush_seconds: float, stop: threading.Event,
) -> InstrumentResult:
    from .. import store as raw_store

    tf = get_timeframe(timeframe)
    result = InstrumentResult(instrument)
    covered = raw_store.get_coverage(store, instrument, tf.name)
    missing = raw_store.missing_ranges(covered, start_ms, end_ms)
    bar = progress.start(instrument, sum((b - a) // tf.ms for a, b in missing))
    buffer: list[pd.DataFrame] = []
    pending_cover: list[tuple[int, int]] = []
    buffered = 0
    last_flush = time.monotonic()

    def flush() -> None:
        nonlocal buffered, last_flush
        frames = [f for f in buffer if len(f)]
        if frames:
            bars = pd.concat(frames, ignore_index=True)
            written = raw_store.write_bars(store, instrument, tf.name, bars, source.name)
            result.bars_added += written.rows_added
            result.quarantined += written.quarantined
            result.conflicts += written.conflicts
        for lo, hi in pending_cover:  # only after the bars are on disk
            raw_store.add_coverage(store, instrument, tf.name, lo, hi)
        buffer.clear()
        pending_cover.clear()
        buffered = 0
        last_flush = time.monotonic()

    try:
        for lo, hi in missing:
            cursor = lo
            try:
                saw_attrs = False
                for chunk in source.fetch_bars(instrument, tf.name, lo, hi):
                    covered_range = chunk.attrs.get("covered") if hasattr(chunk, "attrs") else None
                    if len(chunk):
                        buffer.append(chunk)
                        buffered += len(chunk)
                        result.bars_fetched += len(chunk)
                        progress.update(bar, len(chunk))
                    if covered_range is not None:
                        saw_attrs = True
                        c_lo, c_hi = max(int(covered_range[0]), lo), min(int(covered_range[1]), hi)
                        if c_hi > c_lo:
                            pending_cover.append((c_lo, c_hi))
                            result.ranges_fetched.append((c_lo, c_hi))
                            cursor = max(cursor, c_hi)
                    if buffered >= flush_rows or time.monotonic() - last_flush >= flush_seconds:
                        flush()
                    if stop.is_set():  # interrupted: keep what was fetched and stop
                        flush()
                        result.error = "interrupted"
                        result.failed_ranges = [(cursor, hi)] + [r for r in missing if r[0] > lo]
                        return result
                if not saw_attrs:  # a source without coverage hints: the whole range is complete
                    pending_cover.append((lo, hi))
                    result.ranges_fetched.append((lo, hi))
                flush()
            except QlibCryptoError as exc:
                if isinstance(exc, (ConfigError, StoreError)):
                    raise
                flush()  # keep what was fetched
                result.error = str(exc)
                result.failed_ranges = [(cursor, hi)] + [r for r in missing if r[0] > lo]
                log.warning("%s %s: %s", instrument, tf.name, exc)
                return result
        if with_funding:
            try:
                funding = source.fetch_funding(instrument, start_ms, end_ms)
            except QlibCryptoError as exc:
                if isinstance(exc, (ConfigError, StoreError)):
                    raise
                result.error = f"funding: {exc}"
                result.failed_ranges = [(start_ms, end_ms)]
                return result
            if funding is not None and len(funding):
                raw_store.write_funding(store, instrument, funding, source.name)
                result.funding_rows = len(funding)
        return result
    finally:
        progress.finish(bar)


def collect(
    source: BarSource,
    store_dir: str | os.PathLike,
    instruments: Iterable[str],
    timeframe: str,
    start: Any,
    end: Any,
    *,
    workers: int = 4,
    progress: bool = True,
    with_funding: bool = True,
    with_meta: bool = True,
    raise_on_incomplete: bool = True,
    flush_rows: int = FLUSH_ROWS,
    flush_seconds: float = FLUSH_SECONDS,
) -> CollectReport:
    """Collect bars of ``instruments`` for ``[start, end)`` (UTC, bar open times) from ``source`` into the store.

    Only what the store's coverage does not hold yet is fetched. ``workers`` instruments run at once.
    The progress bars show only when ``progress`` is true and stdout is a terminal. Raises
    :class:`CollectionIncomplete` (with ``.report``) when some range could not be fetched and
    ``raise_on_incomplete``; otherwise check ``report.ok``.
    """
    tf = get_timeframe(timeframe)
    start_ms = parse_time_ms(start, what="start")
    end_ms = parse_time_ms(end, what="end")
    if start_ms >= end_ms:
        raise ConfigError(f"start {_iso(start_ms)} is not before end {_iso(end_ms)}",
                          hint="--start is inclusive and --end exclusive: give start < end")
    if int(workers) < 1:
        raise ConfigError(f"workers must be >= 1, got {workers!r}", hint="for example --workers 4")
    names = list(dict.fromkeys(i.strip() for i in instruments if i and i.strip()))
    if not names:
        raise ConfigError("no instruments to collect", hint="give at least one instrument")
    store = check_store_writable(store_dir)
    from .. import store as raw_store

    t0 = time.monotonic()
    report = CollectReport(source.name, str(store), tf.name, start_ms, end_ms)
    if with_meta:
        meta = source.instrument_meta()
        if meta is not None and len(meta):
            raw_store.write_instrument_meta(store, meta, source.name)
    total = 0
    for name in names:
        covered = raw_store.get_coverage(store, name, tf.name)
        total += sum((b - a) // tf.ms for a, b in raw_store.missing_ranges(covered, start_ms, end_ms))
    show = bool(progress) and sys.stdout.isatty()
    bars = _Progress(show, total, min(int(workers), len(names)))
    results: dict[str, InstrumentResult] = {}
    stop = threading.Event()
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=min(int(workers), len(names)), thread_name_prefix="collect")
    try:
        futures = {
            pool.submit(_collect_one, source, store, name, tf.name, start_ms, end_ms, with_funding, bars,
                        flush_rows, flush_seconds, stop): name
            for name in names
        }
        for fut in concurrent.futures.as_completed(futures):
            results[futures[fut]] = fut.result()
    except BaseException:
        stop.set()  # running instruments write what they fetched and return
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        with contextlib.suppress(Exception):
            bars.close()
    report.results = [results[n] for n in names]
    report.elapsed_s = time.monotonic() - t0
    if raise_on_incomplete:
        report.raise_if_incomplete()
    return report
