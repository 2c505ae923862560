"""The generic collection driver: any :class:`BarSource` -> the raw Parquet store, resumable.

``collect`` asks the store what was already fetched (``get_coverage``), fetches only the missing ranges,
concurrently across instruments (``workers`` threads; a source such as :class:`OkxSource` shares one rate
limiter per endpoint budget between them), writes bars with ``write_bars`` (atomic, validated, merged) and
records coverage with ``add_coverage`` as ranges complete, so an interrupted run resumes where it stopped and
a second identical run fetches nothing and changes no file. Funding rates and instrument metadata are stored
beside the bars. When a source gives up on a range (retries exhausted), what was fetched is kept and the
failure is reported with the instrument and time range (:class:`CollectionIncomplete`).

Coverage tells the truth: a range is recorded only when every bar slot in it was stored or verified absent.
Rows a source rejects (``chunk.attrs["rejected"]``: an unconfirmed past bar, a misaligned time, conflicting
duplicates) are quarantined with their reason, rows the store quarantines in ``write_bars`` (NaN, inf,
inconsistent OHLC, impossible times) likewise; the bar slots of both (``chunk.attrs["holes"]`` and
``WriteResult.quarantined_ts``) are left out of the coverage, so a re-run asks them again, and the run is
reported incomplete until they are filled.
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

from ..errors import CollectionIncomplete, ConfigError, ExchangeUnreachable, QlibCryptoError, StoreError
from ..timeframes import get_timeframe
from .base import BAR_COLUMNS, BarSource, parse_time_ms

log = logging.getLogger(__name__)

FLUSH_ROWS = 20_000  # buffered bars written at least this often ...
FLUSH_SECONDS = 2.0  # ... or after this many seconds
EARLIEST = "2009-01-03"  # the first Bitcoin block: no exchange has bars before it
EARLIEST_MS = 1230940800000
MAX_LISTED_RANGES = 5  # ranges named per instrument in one-line messages


def _iso(ms: int) -> str:
    return pd.Timestamp(int(ms), unit="ms", tz="UTC").isoformat().replace("+00:00", "Z")


def parse_bound_ms(value: Any, *, what: str) -> int:
    """``parse_time_ms`` that also turns out-of-range dates (``9999-01-01``) into a ``ConfigError``."""
    try:
        ms = parse_time_ms(value, what=what)
    except (OverflowError, pd.errors.OutOfBoundsDatetime) as exc:
        raise ConfigError(
            f"{what} {value!r} is out of range", hint=f"give a date between {EARLIEST} and now, e.g. 2024-01-01"
        ) from exc
    try:
        _iso(ms)
    except (OverflowError, ValueError, pd.errors.OutOfBoundsDatetime) as exc:
        raise ConfigError(
            f"{what} {value!r} is out of range", hint=f"give a date between {EARLIEST} and now, e.g. 2024-01-01"
        ) from exc
    return ms


def _ranges_text(ranges: list[tuple[int, int]]) -> str:
    shown = ", ".join(f"{_iso(a)}..{_iso(b)}" for a, b in ranges[:MAX_LISTED_RANGES])
    if len(ranges) > MAX_LISTED_RANGES:
        shown += f", ... ({len(ranges) - MAX_LISTED_RANGES} more)"
    return shown


def _slot_ranges(slots: Iterable[int], step: int) -> list[tuple[int, int]]:
    """Sorted bar open times -> merged half-open ranges of their slots."""
    out: list[tuple[int, int]] = []
    for t in sorted(set(int(s) for s in slots)):
        if out and out[-1][1] >= t:
            out[-1] = (out[-1][0], max(out[-1][1], t + step))
        else:
            out.append((t, t + step))
    return out


def _subtract_slots(lo: int, hi: int, slots: set[int], step: int) -> list[tuple[int, int]]:
    """[lo, hi) minus the bar slots [t, t + step) of ``slots``."""
    out, cursor = [], lo
    for a, b in _slot_ranges((t for t in slots if t + step > lo and t < hi), step):
        if a > cursor:
            out.append((cursor, a))
        cursor = max(cursor, b)
    if cursor < hi:
        out.append((cursor, hi))
    return out


@contextlib.contextmanager
def _writing(what: str) -> Any:
    """An OSError while writing the store (full disk, permissions) -> ``StoreError`` naming ``what``."""
    try:
        yield
    except OSError as exc:
        raise StoreError(
            f"cannot write {what} ({exc.strerror or exc})",
            hint="check free disk space and permissions; files written so far are complete, and "
            "re-running the same command finishes the job",
        ) from exc


def _reasons_text(reasons: dict[str, int]) -> str:
    return ", ".join(f"{name}: {reasons[name]:,}" for name in sorted(reasons))


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
    quarantine_reasons: dict[str, int] = field(default_factory=dict)  # quarantined rows by reason
    uncovered: list[tuple[int, int]] = field(default_factory=list)  # bar slots left uncovered (quarantined rows)
    holes: int = 0  # number of those bar slots

    @property
    def ok(self) -> bool:
        return self.error is None and not self.uncovered

    def problem(self) -> str:
        """What is incomplete, in one line (empty when ok)."""
        parts = []
        if self.error is not None:
            parts.append(self.error)
        if self.uncovered:
            parts.append(
                f"{self.quarantined:,} rows quarantined ({_reasons_text(self.quarantine_reasons)}); "
                f"their {self.holes:,} bar slot{'s' if self.holes != 1 else ''} stay uncovered"
            )
        return "; ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        out = dict(self.__dict__)
        out["ranges_fetched"] = [[_iso(a), _iso(b)] for a, b in self.ranges_fetched]
        out["failed_ranges"] = [[_iso(a), _iso(b)] for a, b in self.failed_ranges]
        out["uncovered"] = [[_iso(a), _iso(b)] for a, b in self.uncovered]
        out["quarantine_reasons"] = {k: self.quarantine_reasons[k] for k in sorted(self.quarantine_reasons)}
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
            ranges = _ranges_text(sorted(r.failed_ranges + r.uncovered)) or "?"
            parts.append(f"{r.instrument} [{ranges}]: {r.problem()}")
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
            reasons: dict[str, int] = {}
            for r in self.results:
                for name, n in r.quarantine_reasons.items():
                    reasons[name] = reasons.get(name, 0) + n
            lines.append(
                f"  {quarantined:,} bad rows quarantined ({_reasons_text(reasons)}) in "
                f"{Path(self.store_dir) / 'quarantine'}; their bar slots stay uncovered: re-run the same "
                "command to fetch them again"
            )
        for r in self.failures:
            if r.error is not None:
                lines.append(f"  INCOMPLETE {r.instrument}: not fetched {_ranges_text(r.failed_ranges)}: {r.error}")
            if r.uncovered:
                lines.append(
                    f"  INCOMPLETE {r.instrument}: uncovered {_ranges_text(r.uncovered)}: "
                    f"{r.quarantined:,} rows quarantined ({_reasons_text(r.quarantine_reasons)})"
                )
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "store_dir": self.store_dir,
            "timeframe": self.timeframe,
            "start": _iso(self.start_ms),
            "end": _iso(self.end_ms),
            "ok": self.ok,
            "bars_fetched": self.bars_fetched,
            "bars_added": self.bars_added,
            "quarantined": sum(r.quarantined for r in self.results),
            "elapsed_s": self.elapsed_s,
            "bars_per_s": self.bars_per_s,
            "results": [r.to_dict() for r in self.results],
        }

    def raise_if_incomplete(self) -> None:
        """Raise :class:`CollectionIncomplete` naming every instrument and range not fetched."""
        if not self.ok:
            err = CollectionIncomplete(
                f"collection incomplete for {len(self.failures)} of {len(self.results)} instruments: "
                + self.failure_text(),
                hint="what was fetched is stored and quarantined rows are kept apart; re-run the same command to "
                "resume",
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
            self.overall = tqdm(
                total=total, unit="bar", unit_scale=True, desc="all", position=0, file=sys.stderr, dynamic_ncols=True
            )

    def start(self, instrument: str, total: int) -> Any:
        if not self.enabled:
            return None
        with self._lock:
            pos = self._free.pop(0) if self._free else 1
        return self._tqdm(
            total=total,
            unit="bar",
            unit_scale=True,
            desc=instrument,
            position=pos,
            leave=False,
            file=sys.stderr,
            dynamic_ncols=True,
        )

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


def _quarantine_rejected(
    store: Path, instrument: str, timeframe: str, rows: list[tuple[int, tuple, str]], source: str
) -> None:
    """Quarantine rows a source rejected, with their reasons (``store.quarantine_bars``)."""
    from .. import store as raw_store

    rows = sorted(rows, key=lambda r: (r[0], r[2], repr(r[1])))
    frame = pd.DataFrame([list(v) for _t, v, _r in rows], columns=BAR_COLUMNS, dtype="float64")
    frame.insert(0, "datetime", pd.to_datetime([t for t, _v, _r in rows], unit="ms", utc=True))
    reasons = [r for _t, _v, r in rows]
    quarantine = getattr(raw_store, "quarantine_bars", None)
    if quarantine is not None:
        quarantine(store, instrument, timeframe, frame, reasons, source)
        return
    import numpy as np  # older store without quarantine_bars: its private writer

    from ..store import series

    series._quarantine(
        store,
        timeframe,
        instrument,
        np.asarray([t for t, _v, _r in rows], dtype=np.int64),
        frame[BAR_COLUMNS].to_numpy(dtype=np.float64),
        BAR_COLUMNS,
        np.asarray(reasons, dtype=object),
        source,
    )


def _store_quarantined_ts(written: Any, bars: pd.DataFrame, store: Path, instrument: str, timeframe: str) -> list[int]:
    """Open times of the rows ``write_bars`` quarantined (``WriteResult.quarantined_ts``)."""
    if not getattr(written, "quarantined", 0):
        return []
    ts = getattr(written, "quarantined_ts", None)
    if ts is not None:
        return [int(t) for t in ts]
    # A store without quarantined_ts: the rows given but not stored afterwards are the quarantined ones.
    from .. import store as raw_store

    epoch, one_ms = pd.Timestamp(0, tz="UTC"), pd.Timedelta(milliseconds=1)
    given = sorted(set(int(t) for t in (pd.DatetimeIndex(bars["datetime"]) - epoch) // one_ms))
    if not given:
        return []
    stored = raw_store.read_bars(store, instrument, timeframe, start=given[0], end=given[-1] + 1)
    have = set(int(t) for t in (stored.index - epoch) // one_ms)
    return [t for t in given if t not in have]


def _collect_one(
    source: BarSource,
    store: Path,
    instrument: str,
    timeframe: str,
    start_ms: int,
    end_ms: int,
    with_funding: bool,
    progress: _Progress,
    flush_rows: int,
    flush_seconds: float,
    stop: threading.Event,
) -> InstrumentResult:
    from .. import store as raw_store

    tf = get_timeframe(timeframe)
    result = InstrumentResult(instrument)
    covered = raw_store.get_coverage(store, instrument, tf.name)
    missing = raw_store.missing_ranges(covered, start_ms, end_ms)
    bar = progress.start(instrument, sum((b - a) // tf.ms for a, b in missing))
    buffer: list[pd.DataFrame] = []
    pending_cover: list[tuple[int, int]] = []
    pending_holes: set[int] = set()  # bar slots (open times) that must stay out of the coverage
    pending_rejected: list[tuple[int, tuple, str]] = []  # rows the source rejected, to quarantine
    all_holes: set[int] = set()
    buffered = 0
    last_flush = time.monotonic()

    def count_reasons(reasons: dict[str, int]) -> None:
        for name, n in reasons.items():
            result.quarantine_reasons[name] = result.quarantine_reasons.get(name, 0) + int(n)

    def flush() -> None:
        nonlocal buffered, last_flush
        frames = [f for f in buffer if len(f)]
        if frames:
            bars = pd.concat(frames, ignore_index=True)
            written = raw_store.write_bars(store, instrument, tf.name, bars, source.name)
            result.bars_added += written.rows_added
            result.quarantined += written.quarantined
            result.conflicts += written.conflicts
            count_reasons(getattr(written, "quarantine_reasons", {}) or {})
            # rows the store quarantined (NaN, inf, inconsistent OHLC, impossible times): their slots stay open
            pending_holes.update(
                t - t % tf.ms for t in _store_quarantined_ts(written, bars, store, instrument, tf.name)
            )
        if pending_rejected:
            with _writing(f"the quarantine of {instrument} {tf.name} in {str(store)!r}"):
                _quarantine_rejected(store, instrument, tf.name, pending_rejected, source.name)
            result.quarantined += len(pending_rejected)
            reasons: dict[str, int] = {}
            for _t, _v, reason in pending_rejected:
                reasons[reason] = reasons.get(reason, 0) + 1
            count_reasons(reasons)
        for lo, hi in pending_cover:  # only after the bars are on disk, and never over a quarantined slot
            for a, b in _subtract_slots(lo, hi, pending_holes, tf.ms):
                with _writing(f"the coverage of {instrument} {tf.name} in {str(store)!r}"):
                    raw_store.add_coverage(store, instrument, tf.name, a, b)
                result.ranges_fetched.append((a, b))
        all_holes.update(t for t in pending_holes if start_ms <= t < end_ms)
        buffer.clear()
        pending_cover.clear()
        pending_holes.clear()
        pending_rejected.clear()
        buffered = 0
        last_flush = time.monotonic()

    def finish() -> InstrumentResult:
        if all_holes:
            result.holes = len(all_holes)
            result.uncovered = _slot_ranges(all_holes, tf.ms)
        return result

    try:
        for lo, hi in missing:
            cursor = lo
            try:
                saw_attrs = False
                for chunk in source.fetch_bars(instrument, tf.name, lo, hi):
                    attrs = dict(chunk.attrs) if hasattr(chunk, "attrs") else {}
                    if attrs:
                        chunk.attrs = {}  # not carried into the concatenated frame
                    covered_range = attrs.get("covered")
                    pending_rejected.extend(attrs.get("rejected", ()))
                    pending_holes.update(int(t) for t in attrs.get("holes", ()))
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
                            cursor = max(cursor, c_hi)
                    if buffered >= flush_rows or time.monotonic() - last_flush >= flush_seconds:
                        flush()
                    if stop.is_set():  # interrupted: keep what was fetched and stop
                        flush()
                        result.error = "interrupted"
                        result.failed_ranges = [(cursor, hi)] + [r for r in missing if r[0] > lo]
                        return finish()
                if not saw_attrs:  # a source without coverage hints: the whole range is complete
                    pending_cover.append((lo, hi))
                flush()
            except QlibCryptoError as exc:
                if isinstance(exc, (ConfigError, StoreError, ExchangeUnreachable)):
                    raise
                flush()  # keep what was fetched
                result.error = str(exc)
                result.failed_ranges = [(cursor, hi)] + [r for r in missing if r[0] > lo]
                log.warning("%s %s: %s", instrument, tf.name, exc)
                return finish()
        if with_funding:
            try:
                funding = source.fetch_funding(instrument, start_ms, end_ms)
            except QlibCryptoError as exc:
                if isinstance(exc, (ConfigError, StoreError, ExchangeUnreachable)):
                    raise
                result.error = f"funding: {exc}"
                result.failed_ranges = [(start_ms, end_ms)]
                return finish()
            if funding is not None and len(funding):
                with _writing(f"the funding rates of {instrument} in {str(store)!r}"):
                    raw_store.write_funding(store, instrument, funding, source.name)
                result.funding_rows = len(funding)
        return finish()
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
    lock_timeout: float | None = None,
) -> CollectReport:
    """Collect bars of ``instruments`` for ``[start, end)`` (UTC, bar open times) from ``source`` into the store.

    Only what the store's coverage does not hold yet is fetched. ``workers`` instruments run at once.
    The store's writer lock is held throughout (waiting up to ``lock_timeout`` seconds for another writer).
    The progress bars show only when ``progress`` is true and stdout is a terminal. Raises
    :class:`CollectionIncomplete` (with ``.report``) when some range could not be fetched and
    ``raise_on_incomplete``; otherwise check ``report.ok``.
    """
    tf = get_timeframe(timeframe)
    start_ms = parse_bound_ms(start, what="start")
    end_ms = parse_bound_ms(end, what="end")
    if start_ms < EARLIEST_MS:
        raise ConfigError(
            f"start {_iso(start_ms)} is before {EARLIEST} (the first Bitcoin block)",
            hint=f"no exchange has bars before it: give a start on or after {EARLIEST}",
        )
    if start_ms >= end_ms:
        raise ConfigError(
            f"start {_iso(start_ms)} is not before end {_iso(end_ms)}",
            hint="--start is inclusive and --end exclusive: give start < end",
        )
    if int(workers) < 1:
        raise ConfigError(f"workers must be >= 1, got {workers!r}", hint="for example --workers 4")
    names = list(dict.fromkeys(i.strip() for i in instruments if i and i.strip()))
    if not names:
        raise ConfigError("no instruments to collect", hint="give at least one instrument")
    store = check_store_writable(store_dir)
    from .. import store as raw_store

    # One writer at a time: the store-wide lock is held for the whole collection (docs/store.md, Guarantees).
    with raw_store.store_lock(store, command="collect", timeout=lock_timeout):
        return _collect_locked(
            source,
            store,
            names,
            tf,
            start_ms,
            end_ms,
            workers,
            progress,
            with_funding,
            with_meta,
            raise_on_incomplete,
            flush_rows,
            flush_seconds,
        )


def _collect_locked(
    source: BarSource,
    store: Path,
    names: list[str],
    tf: Any,
    start_ms: int,
    end_ms: int,
    workers: int,
    progress: bool,
    with_funding: bool,
    with_meta: bool,
    raise_on_incomplete: bool,
    flush_rows: int,
    flush_seconds: float,
) -> CollectReport:
    from .. import store as raw_store

    t0 = time.monotonic()
    report = CollectReport(source.name, str(store), tf.name, start_ms, end_ms)
    if with_meta:
        meta = source.instrument_meta()
        if meta is not None and len(meta):
            with _writing(f"the instrument metadata in {str(store)!r}"):
                raw_store.write_instrument_meta(store, meta, source.name)
    total = 0
    for name in names:
        covered = raw_store.get_coverage(store, name, tf.name)
        total += sum((b - a) // tf.ms for a, b in raw_store.missing_ranges(covered, start_ms, end_ms))
    show = bool(progress) and sys.stdout.isatty()
    bars = _Progress(show, total, min(int(workers), len(names)))
    results: dict[str, InstrumentResult] = {}
    stop = threading.Event()
    pool = concurrent.futures.ThreadPoolExecutor(
        max_workers=min(int(workers), len(names)), thread_name_prefix="collect"
    )
    try:
        futures = {
            pool.submit(
                _collect_one,
                source,
                store,
                name,
                tf.name,
                start_ms,
                end_ms,
                with_funding,
                bars,
                flush_rows,
                flush_seconds,
                stop,
            ): name
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
