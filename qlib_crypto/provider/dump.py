"""Dump the raw store into Qlib's binary provider format, fully or incrementally (see docs/provider.md).

Terms used below:
- *key* of a bar: its open time in epoch ms divided by the target bar length (calendar index = key - first key).
- *horizon*: end of the newest source bar dumped (its open time + the source bar length).
- *rewrite point* ``R``: the horizon rounded down to a target bar. Source rows before ``R`` are final once
  dumped; rows at or after ``R`` (a partly filled last ``day``, funding settlements after the last bar) are
  re-read and recomputed by the next update.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from ..errors import ConfigError, ProviderError
from ..timeframes import Timeframe, get_timeframe
from . import binfmt
from .calendar import DAY_MS, calendar_text, format_one, future_bars
from .meta import META_DIR, META_REL, meta_text
from .storeread import (
    BAR_COLUMNS,
    FUNDING_COLUMNS,
    RowsHash,
    StoreFile,
    list_dirs,
    read_series_file,
    series_files,
)
from .universe import (
    DEFAULT_TOP,
    DEFAULT_WINDOW_DAYS,
    daily_amount_row,
    instrument_lines,
    liquidity_spans,
    market_of,
)

log = logging.getLogger(__name__)

FIELDS = ("open", "high", "low", "close", "volume", "amount", "vwap", "change", "factor")
STATE_DIR = ".qlib_crypto"
STATE_FILE = "state.json"
DAILY_FILE = "daily_amount.npy"  # [instrument, UTC day] quote volume, so an update need not re-read every amount
JOURNAL_FILE = "journal.json"
STAGED_DIR = "staged"
STATE_SCHEMA = 1
_KNOWN_ENTRIES = {"calendars", "instruments", "features", META_DIR, STATE_DIR, "features_cache", "dataset_cache"}


@dataclass
class DumpResult:
    """What a dump or update wrote."""

    qlib_dir: Path
    freq: str
    mode: str  # "full", "update" or "noop"
    instruments: int
    instruments_written: int
    bars_written: int
    calendar_start: str
    calendar_end: str
    calendar_bars: int
    new_calendar_bars: int
    universes: list[str] = field(default_factory=list)
    seconds: float = 0.0


# --------------------------------------------------------------------------------------------- helpers


def _resolve_timeframes(timeframe: str, source_timeframe: str | None) -> tuple[Timeframe, Timeframe]:
    tgt = get_timeframe(timeframe)
    src = get_timeframe(source_timeframe) if source_timeframe else tgt
    if DAY_MS % tgt.ms:
        raise ConfigError(
            f"frequency {tgt.qlib_freq!r} does not divide a UTC day",
            hint="use 1min, 5min, 15min, 30min, 60min, 240min or day",
        )
    if tgt.ms % src.ms:
        raise ConfigError(
            f"cannot build {tgt.qlib_freq} bars from {src.name} bars",
            hint="the source timeframe must be finer than or equal to the target and divide it (e.g. 1h for day)",
        )
    return tgt, src


def _iso_ms(text) -> int:
    s = str(text).strip().rstrip("Z").replace(" ", "T")
    if "+" in s[10:]:
        s = s[: 10 + s[10:].index("+")]
    return int(np.datetime64(s, "ms").astype(np.int64))


def _manifest_range(f: StoreFile) -> tuple[int, int, int]:
    """(first ms, last ms, rows) recorded in a file's manifest."""
    m = f.manifest
    try:
        return _iso_ms(m["start_ts"]), _iso_ms(m["end_ts"]), int(m["row_count"])
    except Exception as exc:
        raise ProviderError(
            f"manifest of {str(f.path)!r} lacks start_ts/end_ts/row_count ({exc})", hint="run qlib-crypto validate"
        ) from exc


def _aggregate(ts: np.ndarray, vals: np.ndarray, src_ms: int, tgt_ms: int):
    """(keys, values [6, m], source-bar counts or None) of target bars from sorted source bars."""
    if len(ts) and np.any(ts % src_ms):
        bad = int(ts[np.flatnonzero(ts % src_ms)[0]])
        raise ProviderError(
            f"a bar opens at {format_one(bad, 'min')} (epoch ms {bad}), not on a {src_ms // 60_000}-minute boundary",
            hint="the store fails validation: run qlib-crypto validate and re-import those bars",
        )
    keys_all = ts // tgt_ms
    if src_ms == tgt_ms:
        return keys_all, vals, None
    n = len(ts)
    if n == 0:
        return keys_all, vals, np.empty(0, np.int64)
    starts = np.flatnonzero(np.r_[True, keys_all[1:] != keys_all[:-1]])
    ends = np.r_[starts[1:], n]
    out = np.empty((6, len(starts)), dtype=np.float64)
    out[0] = vals[0][starts]
    out[1] = np.maximum.reduceat(vals[1], starts)
    out[2] = np.minimum.reduceat(vals[2], starts)
    out[3] = vals[3][ends - 1]
    out[4] = np.add.reduceat(vals[4], starts)
    out[5] = np.add.reduceat(vals[5], starts)
    return keys_all[starts], out, ends - starts


def _field_arrays(
    k0: int,
    k_end: int,
    keys: np.ndarray,
    vals: np.ndarray,
    counts: np.ndarray | None,
    prev_close: float | None,
    fkeys: np.ndarray | None,
    frates: np.ndarray | None,
) -> dict[str, np.ndarray]:
    """float32 arrays of every field over keys ``k0..k_end`` (NaN where the instrument has no bar)."""
    n = k_end - k0 + 1
    sel = (keys >= k0) & (keys <= k_end)
    if not sel.all():
        keys, vals = keys[sel], vals[:, sel]
        counts = counts[sel] if counts is not None else None
    pos = keys - k0
    out: dict[str, np.ndarray] = {}
    for j, name in enumerate(BAR_COLUMNS):
        arr = np.full(n, np.nan, dtype=np.float32)
        arr[pos] = vals[j]
        out[name] = arr
    close, volume, amount = vals[3], vals[4], vals[5]
    with np.errstate(divide="ignore", invalid="ignore"):
        vwap = np.where(volume > 0, amount / np.where(volume > 0, volume, 1.0), np.nan)
        prev = np.empty_like(close)
        if len(close):
            prev[0] = np.nan if prev_close is None else prev_close
            prev[1:] = close[:-1]
        change = close / prev - 1.0
    for name, v in (("vwap", vwap), ("change", change)):
        arr = np.full(n, np.nan, dtype=np.float32)
        arr[pos] = v
        out[name] = arr
    factor = np.full(n, np.nan, dtype=np.float32)
    factor[pos] = 1.0
    out["factor"] = factor
    if counts is not None:
        bars = np.full(n, np.nan, dtype=np.float32)
        bars[pos] = counts
        out["bars"] = bars
    if fkeys is not None:
        fsel = (fkeys >= k0) & (fkeys <= k_end) & ~np.isnan(frates)
        fpos = fkeys[fsel] - k0
        sums = np.bincount(fpos, weights=frates[fsel], minlength=n)
        hit = np.bincount(fpos, minlength=n) > 0
        out["funding_rate"] = np.where(hit, sums, np.nan).astype(np.float32)
    return out


def _settled(fts: np.ndarray, fv: np.ndarray, horizon_ms: int, tgt_ms: int) -> tuple[np.ndarray, np.ndarray]:
    """(target-bar keys, rates) of the funding settlements before ``horizon_ms``, the end of the last source bar
    dumped. A partial last target bar (a day built from hourly bars that stops at 10:00) so carries only the
    settlements up to its last bar, as the hourly bars do; the later ones come with the update that completes it."""
    keep = fts < horizon_ms
    return fts[keep] // tgt_ms, fv[0][keep]


def _last_close_before(keys: np.ndarray, vals: np.ndarray, limit_key: int, default: float | None) -> float | None:
    """Close of the newest bar with key < ``limit_key`` (``default`` if there is none)."""
    i = int(np.searchsorted(keys, limit_key, side="left")) - 1
    return float(vals[3][i]) if i >= 0 else default


def _file_entry(f: StoreFile, ts: np.ndarray, vals: np.ndarray, rewrite_ms: int, is_last: bool, base=None) -> dict:
    """State entry of a store file: its sha256, last row time and, for the last file of a series or one that
    reaches the rewrite point, the content hash of its rows before the rewrite point (``base``: a
    :class:`RowsHash` of the first rows, to extend)."""
    entry = {"sha256": f.sha256, "last_ms": int(ts[-1]) if len(ts) else None}
    if is_last or (len(ts) and ts[-1] >= rewrite_ms):
        cut = int(np.searchsorted(ts, rewrite_ms, side="left"))
        if base is None:
            entry["pre_hash"] = RowsHash(ts, vals, cut).hexdigest()
        else:  # extend the hash of the rows checked already instead of hashing them again
            entry["pre_hash"] = base.extended(ts, vals, cut).hexdigest()
    return entry


def _read_series(files: Sequence[StoreFile], columns, what: str, rewrite_ms: int):
    """Read files -> (ts, vals, {file name: state entry}) with checks of order and manifests."""
    parts_ts, parts_vals, entries = [], [], {}
    last = None
    for i, f in enumerate(files):
        ts, vals = read_series_file(f, columns)
        if len(ts):
            if np.any(np.diff(ts) <= 0) or (last is not None and ts[0] <= last):
                raise ProviderError(
                    f"{what}: rows of {str(f.path)!r} are not sorted and unique",
                    hint="the store fails validation: run qlib-crypto validate",
                )
            last = int(ts[-1])
        entries[f.name] = _file_entry(f, ts, vals, rewrite_ms, i == len(files) - 1)
        parts_ts.append(ts)
        parts_vals.append(vals)
    if not parts_ts:
        return np.empty(0, np.int64), np.empty((len(columns), 0)), entries
    return np.concatenate(parts_ts), np.concatenate(parts_vals, axis=1), entries


# --------------------------------------------------------------------------------------------- dir safety


def _check_target(qlib_dir: Path, freq: str) -> dict | None:
    """Refuse a directory that is not a provider directory of ``freq``; return its state (or None)."""
    if not qlib_dir.exists():
        return None
    if not qlib_dir.is_dir():
        raise ProviderError(f"{str(qlib_dir)!r} is not a directory", hint="choose a directory for --qlib-dir")
    state = _read_state(qlib_dir)
    if state is not None and state.get("freq") != freq:
        raise ProviderError(
            f"{str(qlib_dir)!r} holds {state.get('freq')} data, not {freq}",
            hint="use one directory per frequency, e.g. .../okx/60min and .../okx/day",
        )
    cal_dir = qlib_dir / "calendars"
    if cal_dir.is_dir():
        other = sorted(p.stem for p in cal_dir.glob("*.txt") if p.stem not in (freq, f"{freq}_future"))
        if other:
            raise ProviderError(
                f"{str(qlib_dir)!r} holds calendars of another frequency ({', '.join(other)}), not {freq}",
                hint="use one directory per frequency, e.g. .../okx/60min and .../okx/day",
            )
    foreign = sorted(p.name for p in qlib_dir.iterdir() if p.name not in _KNOWN_ENTRIES)
    if foreign:
        raise ProviderError(
            f"{str(qlib_dir)!r} is not a Qlib provider directory (it holds {', '.join(foreign[:5])})",
            hint="point --qlib-dir at an empty or new directory; nothing was changed",
        )
    return state


def _read_state(qlib_dir: Path) -> dict | None:
    path = qlib_dir / STATE_DIR / STATE_FILE
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError as exc:
        raise ProviderError(f"dump state {str(path)!r} is unreadable ({exc})", hint="run a full dump") from exc


def _state_text(state: dict) -> str:
    return json.dumps(state, sort_keys=True, indent=1) + "\n"


@contextlib.contextmanager
def _locked(qlib_dir: Path):
    import fcntl

    qlib_dir.parent.mkdir(parents=True, exist_ok=True)
    lock_path = qlib_dir.parent / f".{qlib_dir.name}.lock"
    fh = open(lock_path, "a+")
    try:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise ProviderError(
                f"another dump into {str(qlib_dir)!r} is running", hint="wait for it to finish, then retry"
            ) from None
        yield
    finally:
        fh.close()


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two directories (Linux renameat2 RENAME_EXCHANGE); False if unsupported."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    rc = fn(at_fdcwd, os.fsencode(str(a)), at_fdcwd, os.fsencode(str(b)), rename_exchange)
    if rc == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(a))


def _recover_siblings(qlib_dir: Path) -> None:
    """Clean up after an interrupted full dump (called under the lock)."""
    parent, name = qlib_dir.parent, qlib_dir.name
    olds = sorted(parent.glob(f".{name}.old-*"))
    if not qlib_dir.exists() and olds:
        os.rename(olds[-1], qlib_dir)  # interrupted between the two renames of the fallback swap
        olds = olds[:-1]
    for p in list(parent.glob(f".{name}.staging-*")) + olds:
        shutil.rmtree(p, ignore_errors=True)


def recover(qlib_dir: str | os.PathLike) -> str | None:
    """Finish or roll back an interrupted dump/update of ``qlib_dir``; returns what was done (or None)."""
    qlib_dir = Path(qlib_dir)
    with _locked(qlib_dir):
        _recover_siblings(qlib_dir)
        return _recover_journal(qlib_dir)


def _recover_journal(qlib_dir: Path) -> str | None:
    jpath = qlib_dir / STATE_DIR / JOURNAL_FILE
    if not jpath.exists():
        return None
    journal = json.loads(jpath.read_text())
    staged_root = qlib_dir / STATE_DIR / STAGED_DIR
    if journal.get("phase") == "commit":
        for rel in journal["staged"]:
            src = staged_root / rel
            if src.exists():
                (qlib_dir / rel).parent.mkdir(parents=True, exist_ok=True)
                os.replace(src, qlib_dir / rel)
        action = "completed an interrupted update"
    else:
        for rel, spec in journal["bins"].items():
            path = qlib_dir / rel
            if path.exists():
                binfmt.restore_tail(path, spec["keep"], bytes.fromhex(spec["tail"]))
        for rel in journal["new_dirs"]:
            shutil.rmtree(qlib_dir / rel, ignore_errors=True)
        action = "rolled back an interrupted update"
    shutil.rmtree(staged_root, ignore_errors=True)
    jpath.unlink()
    log.warning("%s: %s", qlib_dir, action)
    return action


# --------------------------------------------------------------------------------------------- entry point


# pseudo filesystems nothing can be dumped into (kernel interfaces, not storage)
_PSEUDO_FS = {
    "proc",
    "sysfs",
    "cgroup",
    "cgroup2",
    "debugfs",
    "tracefs",
    "securityfs",
    "configfs",
    "devpts",
    "mqueue",
    "bpf",
    "pstore",
    "fusectl",
    "efivarfs",
    "binfmt_misc",
    "nsfs",
}


def _mount_of(path: str) -> tuple[str, str] | None:
    """(mount point, filesystem type) holding the existing absolute ``path`` (Linux), or None if unknown."""
    import re

    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return None
    best: tuple[str, str] | None = None
    for line in lines:
        left, sep, right = line.partition(" - ")
        fields = left.split()
        if not sep or len(fields) < 5 or not right.split():
            continue
        mnt = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[4])
        inside = path == mnt or path.startswith(mnt.rstrip("/") + "/")
        if inside and (best is None or len(mnt) >= len(best[0])):
            best = (mnt, right.split()[0])
    return best


def _existing_ancestor(p: Path) -> Path:
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def check_output_location(
    path: str | os.PathLike, what: str, *, kind: str = "dir", beside: bool = False, error: type = ProviderError
) -> Path:
    """Refuse, before anything is written, an output ``path`` that cannot be written; return it absolute.

    ``kind`` "dir": ``path`` must be a directory or not exist yet; "file": a regular file or not exist yet.
    ``beside``: the writer also creates entries next to ``path`` (a staging directory, a temporary file, a lock).
    Refused, with ``error`` naming ``what`` and the value: a path under a regular file, on a pseudo filesystem
    (/proc, /sys...), on a read-only or full filesystem, or in a directory this user cannot write.
    """
    raw = str(path)
    p = Path(os.path.abspath(os.path.expanduser(raw)))
    if p.exists():
        if kind == "dir" and not p.is_dir():
            raise error(f"{what} {raw!r} is a file, not a directory", hint=f"give a directory for {what}")
        if kind == "file" and p.is_dir():
            raise error(
                f"{what} {raw!r} is a directory, not a file",
                hint=f"give a file path for {what}, e.g. {raw.rstrip('/')}/signals.parquet",
            )
    places = []
    if kind == "dir":
        places.append(_existing_ancestor(p))
    if kind == "file" or beside:
        places.append(_existing_ancestor(p.parent))
    for anc in dict.fromkeys(places):
        if not anc.is_dir():
            raise error(
                f"{what} {raw!r} is under {str(anc)!r}, which is a file, not a directory",
                hint=f"choose a {what} whose parent directories are directories",
            )
        real = os.path.realpath(anc)
        mount = _mount_of(real)
        pseudo = mount[1] in _PSEUDO_FS if mount else (real + "/").startswith(("/proc/", "/sys/"))
        if pseudo:
            kind_fs = mount[1] if mount else real.split("/")[1]
            raise error(
                f"{what} {raw!r} is on the {kind_fs} pseudo-filesystem ({mount[0] if mount else real}), "
                "which holds no files",
                hint=f"choose a {what} on a disk, e.g. under your home directory",
            )
        try:
            st = os.statvfs(anc)
        except (OSError, AttributeError):  # no statvfs (Windows): the write itself will tell
            st = None
        if st is not None and st.f_flag & os.ST_RDONLY:
            raise error(
                f"{what} {raw!r} is on a read-only filesystem ({str(anc)!r})",
                hint=f"choose a {what} on a writable filesystem",
            )
        if st is not None and st.f_blocks > 0 and st.f_bavail == 0:
            raise error(
                f"{what} {raw!r} is on a full filesystem (0 bytes free in {str(anc)!r})",
                hint=f"free some space, or choose a {what} on another filesystem",
            )
        if not os.access(anc, os.W_OK | os.X_OK):
            raise error(
                f"{what} {raw!r} cannot be written: permission denied on {str(anc)!r}",
                hint=f"choose a {what} you can write, or fix the directory's permissions",
            )
    return p


_OS_HINTS = {
    errno.ENOSPC: "the filesystem is full: free some space or choose another --qlib-dir, then re-run",
    errno.EDQUOT: "the disk quota is exhausted: free some space or choose another --qlib-dir, then re-run",
    errno.EROFS: "the filesystem is read-only: choose a --qlib-dir on a writable filesystem",
    errno.EACCES: "permission denied: choose a --qlib-dir you can write, or fix its permissions",
    errno.EPERM: "operation not permitted: choose a --qlib-dir you can write, or fix its permissions",
    errno.ENOTDIR: "a part of the path is a file, not a directory: choose another --qlib-dir",
}


@contextlib.contextmanager
def os_errors_as_provider_errors(qlib_dir: str | os.PathLike):
    """Turn an OSError of a dump (disk full, read-only filesystem...) into one ProviderError line naming the
    directory (used by the CLI; :func:`dump` itself lets the OSError through, after cleaning up)."""
    qlib_dir = Path(qlib_dir).expanduser().absolute()
    try:
        yield
    except OSError as exc:
        where = f" ({exc.filename})" if exc.filename else ""
        raise ProviderError(
            f"dump into {str(qlib_dir)!r} failed: {exc.strerror or exc}{where}; the previous contents were kept",
            hint=_OS_HINTS.get(exc.errno, "fix the cause and re-run the dump"),
        ) from exc


def _check_window_days(window_days) -> None:
    if window_days is None:
        return
    if isinstance(window_days, bool) or not isinstance(window_days, (int, np.integer)) or window_days < 1:
        raise ConfigError(
            f"--window-days {window_days!r} is not a whole number of days >= 1",
            hint="give the trailing window of the liquidity universes in days, e.g. 30",
        )


def _refuse_case_collisions(store: Path, tf_name: str, names: Sequence[str]) -> None:
    """Qlib keeps one directory per lower-cased instrument: two store series mapping to one is refused."""
    by_dir: dict[str, list[str]] = {}
    for name in names:
        by_dir.setdefault(name.lower(), []).append(name)
    clashes = sorted(sorted(v) for v in by_dir.values() if len(v) > 1)
    if clashes:
        shown = "; ".join(" and ".join(c) for c in clashes[:5])
        raise ProviderError(
            f"store {str(store)!r} holds {tf_name} series whose names differ only in case ({shown}): they would "
            "share one Qlib directory; nothing was written",
            hint="keep one upper-case series per instrument: merge the rows (qlib-crypto import) and delete the "
            "other directory, then run qlib-crypto validate",
        )


def dump(
    store_dir: str | os.PathLike,
    qlib_dir: str | os.PathLike,
    timeframe: str,
    *,
    instruments: Iterable[str] | None = None,
    update: bool = False,
    source_timeframe: str | None = None,
    top: Sequence[int] | None = None,
    window_days: int | None = None,
) -> DumpResult:
    """Dump ``store_dir`` into Qlib's provider format in ``qlib_dir`` for one frequency.

    ``timeframe`` is the target frequency (``1h``/``60min``, ``1d``/``day``...); ``source_timeframe`` the store's
    bars to build it from (default: the same). ``update=True`` appends only bars after the last dumped one
    (refusing if earlier store data changed). ``top`` lists the liquidity universes (``top<N>.txt``) and
    ``window_days`` their trailing window. Raises ConfigError/ProviderError on bad input, leaving
    ``qlib_dir`` untouched.
    """
    t0 = time.perf_counter()
    tgt, src = _resolve_timeframes(timeframe, source_timeframe)
    _check_window_days(window_days)
    check_output_location(qlib_dir, "--qlib-dir", kind="dir", beside=True)
    qlib_dir = Path(qlib_dir).expanduser().absolute()
    store = Path(store_dir).expanduser()
    if not store.is_dir():
        raise ProviderError(
            f"store directory {str(store)!r} does not exist", hint="collect or import bars into a store first"
        )
    names = list_dirs(store / "bars" / src.name)
    if not names:
        tfs = list_dirs(store / "bars")
        raise ProviderError(
            f"store {str(store)!r} has no {src.name} bars",
            hint=(
                f"it holds {', '.join(tfs)} bars: pass --from-timeframe"
                if tfs
                else "the store is empty: collect or import bars first"
            ),
        )
    _refuse_case_collisions(store, src.name, names)
    explicit = sorted(dict.fromkeys(instruments)) if instruments else None
    if explicit is not None:
        missing = [n for n in explicit if n not in names]
        if missing:
            raise ProviderError(
                f"no {src.name} bars in store {str(store)!r} for {', '.join(missing)}",
                hint=f"{len(names)} instruments are stored, e.g. {', '.join(names[:5])}",
            )
        names = explicit
    with _locked(qlib_dir):
        _recover_siblings(qlib_dir)
        _check_target(qlib_dir, tgt.qlib_freq)
        if qlib_dir.exists():
            _recover_journal(qlib_dir)
        state = _check_target(qlib_dir, tgt.qlib_freq)
        if update:
            if state is None:
                raise ProviderError(
                    f"{str(qlib_dir)!r} has no dump of this tool to update",
                    hint="run a full dump first (without --update)",
                )
            result = _update(store, qlib_dir, tgt, src, names, explicit, state, top, window_days)
        else:
            result = _full(
                store,
                qlib_dir,
                tgt,
                src,
                names,
                explicit,
                tuple(DEFAULT_TOP if top is None else top),
                window_days or DEFAULT_WINDOW_DAYS,
            )
    result.seconds = time.perf_counter() - t0
    return result


# --------------------------------------------------------------------------------------------- full dump


def _full(store, qlib_dir, tgt, src, names, explicit, top, window_days) -> DumpResult:
    freq = tgt.qlib_freq
    bar_files, fund_files, ranges = {}, {}, {}
    for name in names:
        files = series_files(store / "bars" / src.name / name)
        spans = [_manifest_range(f) for f in files]
        spans = [s for s in spans if s[2] > 0]
        if not spans:
            if explicit is not None:
                raise ProviderError(
                    f"instrument {name!r} has no {src.name} bars in store {str(store)!r}",
                    hint="collect its bars or leave it out of --instruments",
                )
            log.warning("skipping %s: no %s bars", name, src.name)
            continue
        bar_files[name] = files
        ranges[name] = (min(s[0] for s in spans), max(s[1] for s in spans))
        if market_of(name) == "okx_swap":
            fund_files[name] = series_files(store / "funding" / name)
    if not bar_files:
        raise ProviderError(f"store {str(store)!r} has no {src.name} bars", hint="collect or import bars first")
    horizon = max(r[1] for r in ranges.values()) + src.ms
    rewrite_ms = horizon // tgt.ms * tgt.ms
    first_key = min(r[0] for r in ranges.values()) // tgt.ms
    last_key = (horizon - 1) // tgt.ms

    parent = qlib_dir.parent
    parent.mkdir(parents=True, exist_ok=True)
    staging = parent / f".{qlib_dir.name}.staging-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        (staging / "features").mkdir(parents=True)
        inst_state, amounts, rows, bars_written = {}, [], [], 0
        for name in sorted(bar_files):
            ts, vals, bentries = _read_series(bar_files[name], BAR_COLUMNS, name, rewrite_ms)
            if len(ts) == 0 or ts[0] != ranges[name][0] or ts[-1] != ranges[name][1]:
                raise ProviderError(
                    f"{name}: bars do not match the manifests' start_ts/end_ts",
                    hint="the store fails validation: run qlib-crypto validate",
                )
            keys, tv, counts = _aggregate(ts, vals, src.ms, tgt.ms)
            fentries, fkeys, frates = None, None, None
            if name in fund_files:
                fts, fv, fentries = _read_series(fund_files[name], FUNDING_COLUMNS, f"{name} funding", rewrite_ms)
                fkeys, frates = _settled(fts, fv, horizon, tgt.ms)
            k0 = int(keys[0])
            arrays = _field_arrays(k0, last_key, keys, tv, counts, None, fkeys, frates)
            _write_features(staging / "features" / name.lower(), k0 - first_key, arrays, freq)
            bars_written += len(keys)
            amounts.append(daily_amount_row(k0 - first_key, arrays["amount"], first_key, last_key, tgt.ms))
            rows.append((name, k0 * tgt.ms, int(keys[-1]) * tgt.ms))
            inst_state[name] = {
                "first_key": k0,
                "last_key": int(keys[-1]),
                "close_before": _last_close_before(keys, tv, rewrite_ms // tgt.ms, None),
                "bars": bentries,
                "funding": fentries,
            }
        state = {
            "schema": STATE_SCHEMA,
            "freq": freq,
            "timeframe": tgt.name,
            "source_timeframe": src.name,
            "instruments_filter": explicit,
            "top": list(top),
            "window_days": window_days,
            "first_key": first_key,
            "last_key": last_key,
            "horizon_ms": horizon,
            "rewrite_ms": rewrite_ms,
            "instruments": inst_state,
        }
        daily = np.vstack(amounts)
        texts = _text_files(state, tgt, rows, sorted(bar_files), daily)
        texts[META_REL] = meta_text(store, sorted(bar_files))  # lot sizes etc.: the provider is self-contained
        for rel, text in texts.items():
            path = staging / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        (staging / STATE_DIR).mkdir(exist_ok=True)
        (staging / STATE_DIR / DAILY_FILE).write_bytes(_npy_bytes(daily))
        (staging / "calendars").mkdir()
        cal = staging / "calendars" / f"{freq}.txt"
        cal.write_text(calendar_text(first_key, last_key, tgt.ms, freq))
        fut = staging / "calendars" / f"{freq}_future.txt"
        fut.write_text(calendar_text(first_key, last_key + future_bars(tgt.ms), tgt.ms, freq))
        (staging / STATE_DIR).mkdir(exist_ok=True)
        (staging / STATE_DIR / STATE_FILE).write_text(_state_text(state))
        _swap_in(staging, qlib_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return DumpResult(
        qlib_dir=qlib_dir,
        freq=freq,
        mode="full",
        instruments=len(bar_files),
        instruments_written=len(bar_files),
        bars_written=bars_written,
        calendar_start=format_one(first_key * tgt.ms, freq),
        calendar_end=format_one(last_key * tgt.ms, freq),
        calendar_bars=last_key - first_key + 1,
        new_calendar_bars=last_key - first_key + 1,
        universes=sorted(k[len("instruments/") : -4] for k in texts if k.startswith("instruments/")),
    )


def _swap_in(staging: Path, qlib_dir: Path) -> None:
    if not qlib_dir.exists():
        os.rename(staging, qlib_dir)
        return
    if _exchange(staging, qlib_dir):
        shutil.rmtree(staging, ignore_errors=True)  # now holds the old dataset
        return
    old = qlib_dir.parent / f".{qlib_dir.name}.old-{os.getpid()}"
    os.rename(qlib_dir, old)
    os.rename(staging, qlib_dir)
    shutil.rmtree(old, ignore_errors=True)


def _write_features(inst_dir: Path, start_index: int, arrays: dict[str, np.ndarray], freq: str) -> None:
    inst_dir.mkdir(parents=True, exist_ok=True)
    header = np.array([start_index], dtype=binfmt.DTYPE).tobytes()
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
    for fname, arr in arrays.items():
        fd = os.open(inst_dir / f"{fname}.{freq}.bin", flags, 0o644)
        try:
            for chunk in (memoryview(header), np.ascontiguousarray(arr, dtype=binfmt.DTYPE).data.cast("B")):
                while len(chunk):
                    chunk = chunk[os.write(fd, chunk) :]
        finally:
            os.close(fd)


def _npy_bytes(array: np.ndarray) -> bytes:
    import io

    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array, dtype="<f8"), allow_pickle=False)
    return buf.getvalue()


def _text_files(state: dict, tgt: Timeframe, rows, names: list[str], daily: np.ndarray) -> dict[str, str]:
    """Instrument files (all, market types, liquidity universes) keyed by relative path; ``daily``: one
    :func:`daily_amount_row` per instrument of ``names``."""
    freq = tgt.qlib_freq
    out = {"instruments/all.txt": instrument_lines(rows, freq)}
    for market in ("okx_spot", "okx_swap"):
        out[f"instruments/{market}.txt"] = instrument_lines([r for r in rows if market_of(r[0]) == market], freq)
    if state["top"]:  # an empty list: no liquidity universes
        d0 = state["first_key"] * tgt.ms // DAY_MS
        for n in state["top"]:
            spans = liquidity_spans(names, daily, d0, state["last_key"], tgt.ms, int(n), state["window_days"])
            out[f"instruments/top{int(n)}.txt"] = instrument_lines(spans, freq)
    return out


# --------------------------------------------------------------------------------------------- update


def _backfill(name: str, detail: str) -> ProviderError:
    return ProviderError(
        f"{name}: {detail}: the store changed before the last dumped bar",
        hint="run a full dump (without --update) to rewrite the directory",
    )


def _classify(name: str, files: list[StoreFile], old: dict | None, rewrite_ms: int, what: str):
    """Files to read for an update of one series, after checking that nothing before ``R`` changed.

    Returns (files to read, anything changed?)."""
    old = old or {}
    current = {f.name for f in files}
    gone = sorted(set(old) - current)
    if gone:
        raise _backfill(name, f"{what} file(s) {', '.join(gone)} disappeared")
    to_read, changed = [], False
    for f in files:
        entry = old.get(f.name)
        if entry is not None and entry["sha256"] == f.sha256:
            if entry["last_ms"] is not None and entry["last_ms"] >= rewrite_ms:
                to_read.append(f)
            continue
        changed = True
        if entry is not None and "pre_hash" not in entry:
            raise _backfill(name, f"{what} file {f.name} changed")
        to_read.append(f)
    return to_read, changed


def _read_update(name, files, to_read, old, columns, what, old_r, new_r, check_new=True):
    """Read ``to_read``: rows >= old ``R`` (ts, vals) and the new state entries of every file.

    ``check_new=False`` accepts rows before ``R`` in new files (funding of a newly listed instrument: its
    settlements before its first bar are not dumped)."""
    old = old or {}
    read_names = {f.name for f in to_read}
    entries, parts_ts, parts_vals = {}, [], []
    last_name = files[-1].name if files else None
    for f in files:
        if f.name not in read_names:
            e = dict(old[f.name])
            if f.name != last_name:
                e.pop("pre_hash", None)
            entries[f.name] = e
            continue
        ts, vals = read_series_file(f, columns)
        if len(ts) and np.any(np.diff(ts) <= 0):
            raise ProviderError(
                f"{what}: rows of {str(f.path)!r} are not sorted and unique", hint="run qlib-crypto validate"
            )
        cut = int(np.searchsorted(ts, old_r, side="left"))
        entry = old.get(f.name)
        base = None
        if entry is None:
            if cut and check_new:
                raise _backfill(name, f"new {what} file {f.name} holds rows before the last dumped bar")
        elif entry["sha256"] != f.sha256:
            base = RowsHash(ts, vals, cut)
            if base.hexdigest() != entry["pre_hash"]:
                raise _backfill(name, f"{what} rows in {f.name} were changed or added")
        entries[f.name] = _file_entry(f, ts, vals, new_r, f.name == last_name, base)
        parts_ts.append(ts[cut:])
        parts_vals.append(vals[:, cut:])
    if parts_ts:
        ts = np.concatenate(parts_ts)
        vals = np.concatenate(parts_vals, axis=1)
        if len(ts) and np.any(np.diff(ts) <= 0):
            raise ProviderError(f"{what}: rows are not sorted and unique across files", hint="run qlib-crypto validate")
    else:
        ts, vals = np.empty(0, np.int64), np.empty((len(columns), 0))
    return ts, vals, entries


def _update(store, qlib_dir, tgt, src, names, explicit, state, top, window_days) -> DumpResult:
    freq = tgt.qlib_freq
    if state.get("schema") != STATE_SCHEMA:
        raise ProviderError(f"dump state of {str(qlib_dir)!r} has an unknown schema", hint="run a full dump")
    for opt, value, key in (
        ("--from-timeframe", src.name, "source_timeframe"),
        ("--instruments", explicit, "instruments_filter"),
        ("--top", None if top is None else [int(n) for n in top], "top"),
        ("window_days", window_days, "window_days"),
    ):
        if value is not None and value != state[key]:
            raise ConfigError(
                f"{opt} {value!r} differs from the dumped directory's {state[key]!r}",
                hint="run a full dump (without --update) to change it",
            )
    if state["instruments_filter"] is not None:
        names = state["instruments_filter"]
    old_r, old_h = state["rewrite_ms"], state["horizon_ms"]
    first_key, old_last = state["first_key"], state["last_key"]
    old_inst = state["instruments"]
    gone = sorted(set(old_inst) - set(names))
    if gone:
        raise _backfill(", ".join(gone[:5]), "instrument(s) no longer in the store")

    # 1. classify files, find the new horizon
    plan = {}
    horizon = old_h
    for name in names:
        bfiles = series_files(store / "bars" / src.name / name)
        old = old_inst.get(name)
        if old is None and not bfiles:
            continue
        b_read, b_changed = _classify(name, bfiles, old and old["bars"], old_r, "bar")
        ffiles = series_files(store / "funding" / name) if market_of(name) == "okx_swap" else None
        f_read, f_changed = ([], False)
        if ffiles is not None:
            f_read, f_changed = _classify(name, ffiles, old and old["funding"], old_r, "funding")
        for f in bfiles:
            if f in b_read:
                _, end, n = _manifest_range(f)
                if n:
                    horizon = max(horizon, end + src.ms)
        plan[name] = (bfiles, b_read, b_changed or (old is None), ffiles, f_read, f_changed)
    new_r = horizon // tgt.ms * tgt.ms
    last_key = (horizon - 1) // tgt.ms
    rewrite_key = old_r // tgt.ms

    # 2. read and compute what changes
    writes = {}  # name -> (k0, arrays, keep values or None for a new instrument)
    new_state_inst = {}
    for name, (bfiles, b_read, _b_changed, ffiles, f_read, _f_changed) in plan.items():
        old = old_inst.get(name)
        recompute = bool(b_read or f_read)
        if not recompute:
            e = dict(old)
            e["bars"] = {f.name: _carry(old["bars"][f.name], f.name == bfiles[-1].name) for f in bfiles}
            if ffiles is not None:
                e["funding"] = {f.name: _carry(old["funding"][f.name], f.name == ffiles[-1].name) for f in ffiles}
            new_state_inst[name] = e
            continue
        ts, vals, bentries = _read_update(name, bfiles, b_read, old and old["bars"], BAR_COLUMNS, "bar", old_r, new_r)
        fkeys = frates = fentries = None
        if ffiles is not None:
            fts, fv, fentries = _read_update(
                name,
                ffiles,
                f_read,
                old and old["funding"],
                FUNDING_COLUMNS,
                "funding",
                old_r,
                new_r,
                check_new=old is not None,
            )
            fkeys, frates = _settled(fts, fv, horizon, tgt.ms)
        if len(ts) and ts[-1] + src.ms > horizon:
            raise ProviderError(f"{name}: bars after the manifests' end_ts", hint="run qlib-crypto validate")
        keys, tv, counts = _aggregate(ts, vals, src.ms, tgt.ms)
        if old is None:
            if not len(keys):
                continue
            k0 = int(keys[0])
            prev_close, keep = None, None
            first, last_present = k0, int(keys[-1])
        else:
            k0 = max(rewrite_key, old["first_key"])
            prev_close, keep = old["close_before"], k0 - old["first_key"]
            first = old["first_key"]
            if not len(keys) and old["last_key"] >= rewrite_key:
                raise _backfill(name, "bars at or after the last dumped bar disappeared")
            last_present = int(keys[-1]) if len(keys) else old["last_key"]
        arrays = _field_arrays(k0, last_key, keys, tv, counts, prev_close, fkeys, frates)
        writes[name] = (k0, arrays, keep)
        new_state_inst[name] = {
            "first_key": first,
            "last_key": last_present,
            "close_before": _last_close_before(keys, tv, new_r // tgt.ms, prev_close),
            "bars": bentries,
            "funding": fentries,
        }
    names_sorted = sorted(new_state_inst)
    new_meta = meta_text(store, names_sorted)
    if horizon == old_h and not writes and names_sorted == sorted(old_inst):
        meta_path = qlib_dir / META_REL
        if not meta_path.is_file() or meta_path.read_text() != new_meta:  # only the metadata changed
            from .._atomic import atomic_write_text

            atomic_write_text(meta_path, new_meta)
        cal_first = format_one(first_key * tgt.ms, freq)
        return DumpResult(
            qlib_dir,
            freq,
            "noop",
            len(names_sorted),
            0,
            0,
            cal_first,
            format_one(old_last * tgt.ms, freq),
            old_last - first_key + 1,
            0,
            [],
            0.0,
        )

    # 3. journal, then features (appends), then staged text files, then commit (calendar last)
    meta = qlib_dir / STATE_DIR
    staged_root = meta / STAGED_DIR
    shutil.rmtree(staged_root, ignore_errors=True)
    journal = {"phase": "write", "bins": {}, "new_dirs": [], "staged": []}
    pad_plan = {}
    for name in names_sorted:
        inst_dir = f"features/{name.lower()}"
        if name in writes and writes[name][2] is None:
            journal["new_dirs"].append(inst_dir)
            continue
        old = old_inst[name]
        old_len = old_last - old["first_key"] + 1
        keep = writes[name][2] if name in writes else old_len
        for fname in _field_names(name, src, tgt):
            rel = f"{inst_dir}/{fname}.{freq}.bin"
            journal["bins"][rel] = {"keep": keep, "tail": binfmt.read_tail(qlib_dir / rel, keep).hex()}
        pad_plan[name] = keep
    from .._atomic import atomic_write_text

    atomic_write_text(meta / JOURNAL_FILE, json.dumps(journal))
    try:  # until the commit mark, any failure rolls the features back to the old dataset
        bars_written = 0
        for name in names_sorted:
            inst_dir = qlib_dir / "features" / name.lower()
            if name in writes:
                k0, arrays, keep = writes[name]
                bars_written += int(np.count_nonzero(~np.isnan(arrays["close"])))
                if keep is None:
                    _write_features(inst_dir, k0 - first_key, arrays, freq)
                else:
                    for fname, arr in arrays.items():
                        binfmt.truncate_and_append(inst_dir / f"{fname}.{freq}.bin", keep, arr)
            else:
                pad = np.full(last_key - old_last, np.nan, dtype=np.float32)
                if len(pad):
                    for fname in _field_names(name, src, tgt):
                        binfmt.truncate_and_append(inst_dir / f"{fname}.{freq}.bin", pad_plan[name], pad)

        new_state = dict(state)
        new_state.update(last_key=last_key, horizon_ms=horizon, rewrite_ms=new_r, instruments=new_state_inst)
        rows = [(n, e["first_key"] * tgt.ms, e["last_key"] * tgt.ms) for n, e in sorted(new_state_inst.items())]
        daily = _update_daily(qlib_dir, tgt, sorted(old_inst), names_sorted, writes, first_key, last_key, rewrite_key)
        texts = _text_files(new_state, tgt, rows, names_sorted, daily)
        texts[META_REL] = new_meta
        texts[f"{STATE_DIR}/{STATE_FILE}"] = _state_text(new_state)
        (staged_root / STATE_DIR).mkdir(parents=True, exist_ok=True)
        (staged_root / STATE_DIR / DAILY_FILE).write_bytes(_npy_bytes(daily))
        for rel, text in texts.items():
            path = staged_root / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        cal_rel, fut_rel = f"calendars/{freq}.txt", f"calendars/{freq}_future.txt"
        (staged_root / "calendars").mkdir(parents=True, exist_ok=True)
        shutil.copyfile(qlib_dir / cal_rel, staged_root / cal_rel)
        with open(staged_root / cal_rel, "a") as fh:
            fh.write(calendar_text(old_last + 1, last_key, tgt.ms, freq))
        shutil.copyfile(staged_root / cal_rel, staged_root / fut_rel)
        with open(staged_root / fut_rel, "a") as fh:
            fh.write(calendar_text(last_key + 1, last_key + future_bars(tgt.ms), tgt.ms, freq))
        # the calendar is committed last
        journal["staged"] = list(texts) + [f"{STATE_DIR}/{DAILY_FILE}", fut_rel, cal_rel]
        atomic_write_text(meta / JOURNAL_FILE, json.dumps(dict(journal, phase="commit")))
    except BaseException:
        _recover_journal(qlib_dir)
        raise
    for rel in journal["staged"]:
        (qlib_dir / rel).parent.mkdir(parents=True, exist_ok=True)  # meta/ is new to a provider of an older dump
        os.replace(staged_root / rel, qlib_dir / rel)
    shutil.rmtree(staged_root, ignore_errors=True)
    (meta / JOURNAL_FILE).unlink()
    return DumpResult(
        qlib_dir=qlib_dir,
        freq=freq,
        mode="update",
        instruments=len(names_sorted),
        instruments_written=len(writes),
        bars_written=bars_written,
        calendar_start=format_one(first_key * tgt.ms, freq),
        calendar_end=format_one(last_key * tgt.ms, freq),
        calendar_bars=last_key - first_key + 1,
        new_calendar_bars=last_key - old_last,
        universes=sorted(k[len("instruments/") : -4] for k in texts if k.startswith("instruments/")),
    )


def _update_daily(qlib_dir, tgt, old_names, names, writes, first_key, last_key, rewrite_key) -> np.ndarray:
    """Daily quote volume matrix after an update: the stored one for days before the rewrite point's day,
    recomputed from the amount files' tails (the same additions in the same order as a full dump) after it."""
    freq, bar_ms = tgt.qlib_freq, tgt.ms
    d0 = first_key * bar_ms // DAY_MS
    n_days = last_key * bar_ms // DAY_MS - d0 + 1
    path = qlib_dir / STATE_DIR / DAILY_FILE
    try:
        old = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise ProviderError(f"dump state {str(path)!r} is unreadable ({exc})", hint="run a full dump") from exc
    if old.ndim != 2 or old.shape[0] != len(old_names) or old.shape[1] > n_days:
        raise ProviderError(f"dump state {str(path)!r} does not match the dump", hint="run a full dump")
    daily = np.zeros((len(names), n_days), dtype=np.float64)
    row_of = {n: i for i, n in enumerate(old_names)}
    redo = rewrite_key * bar_ms // DAY_MS - d0  # first day whose sums may change
    redo_index = (d0 + redo) * DAY_MS // bar_ms - first_key  # its first bar's calendar index
    for i, name in enumerate(names):
        if name in row_of:
            daily[i, : old.shape[1]] = old[row_of[name]]
        if name not in writes:
            continue
        fpath = qlib_dir / "features" / name.lower() / f"amount.{freq}.bin"
        start = int(np.fromfile(fpath, dtype=binfmt.DTYPE, count=1)[0])
        skip = max(redo_index - start, 0)
        values = np.fromfile(fpath, dtype=binfmt.DTYPE, offset=4 * (1 + skip))
        row = daily_amount_row(start + skip, values, first_key, last_key, bar_ms)
        daily[i, redo:] = row[redo:]
    return daily


def _carry(entry: dict, is_last: bool) -> dict:
    """State entry of a file not read by this update: a file that is no longer the last one of its series
    drops its pre-hash (an unread file ends before the rewrite point, so only the last one keeps it)."""
    e = dict(entry)
    if not is_last:
        e.pop("pre_hash", None)
    return e


def _field_names(name: str, src: Timeframe, tgt: Timeframe) -> list[str]:
    out = list(FIELDS)
    if src.ms != tgt.ms:
        out.append("bars")
    if market_of(name) == "okx_swap":
        out.append("funding_rate")
    return out
