"""One writer at a time: a store-wide inter-process lock.

Every command that writes a store (``collect``, ``import``, ``validate --repair``) and every library function
that writes into it (``write_bars``, ``write_funding``, ``write_instrument_meta``, ``add_coverage``) holds
``<store>/.qlib_crypto.lock``, an OS file lock (``flock`` through the ``filelock`` library): the kernel
releases it when the process dies, however it dies, so a crashed writer never blocks the next one.

A second writer **waits** for the first, printing one line that says who holds the store, for at most
``timeout`` seconds (default :data:`DEFAULT_TIMEOUT_S`, or env ``QLIB_CRYPTO_LOCK_TIMEOUT``); then it refuses
with :class:`~qlib_crypto.errors.StoreLocked` (exit code 5) and writes nothing. ``timeout=0`` refuses at once.

The lock is re-entrant within one process (threads of one collector share it), so library functions can
take it unconditionally: inside a command that already holds it, taking it again costs a dict look-up.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Iterator

from filelock import FileLock, Timeout

from ..errors import ConfigError, StoreError, StoreLocked

LOCK_FILE = ".qlib_crypto.lock"
LOCK_INFO_FILE = ".qlib_crypto.lock.json"
LOCK_FILES = (LOCK_FILE, LOCK_INFO_FILE)
TIMEOUT_ENV = "QLIB_CRYPTO_LOCK_TIMEOUT"
DEFAULT_TIMEOUT_S = 3600.0

_guard = threading.Lock()
_held: dict[str, list] = {}  # resolved store path -> [FileLock, depth, threading.Lock]


def default_timeout() -> float:
    raw = os.environ.get(TIMEOUT_ENV)
    if raw is None or raw.strip() == "":
        return DEFAULT_TIMEOUT_S
    return check_timeout(raw, what=f"environment variable {TIMEOUT_ENV}")


def check_timeout(value: object, *, what: str = "--lock-timeout") -> float:
    try:
        seconds = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        seconds = float("nan")
    if not (seconds >= 0) or seconds == float("inf"):
        raise ConfigError(f"bad {what} {value!r}", hint="give a number of seconds >= 0, e.g. 600 (0 = refuse at once)")
    return seconds


def _holder(store: Path) -> str:
    try:
        info = json.loads((store / LOCK_INFO_FILE).read_text())
        return f"pid {info.get('pid')} ({info.get('command')}, since {info.get('since')})"
    except (OSError, ValueError, AttributeError):
        return "another process"


def _default_notify(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@contextlib.contextmanager
def store_lock(
    store_dir: str | os.PathLike,
    *,
    command: str = "write",
    timeout: float | None = None,
    notify: Callable[[str], None] | None = None,
) -> Iterator[Path]:
    """Hold the store's writer lock for the ``with`` block (re-entrant within the process).

    Creates the store directory if needed. Waits up to ``timeout`` seconds (None: env
    ``QLIB_CRYPTO_LOCK_TIMEOUT`` or one hour) with one message through ``notify`` (default: stderr), then
    raises :class:`StoreLocked`.
    """
    store = Path(store_dir)
    try:
        store.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StoreError(
            f"cannot create store directory {str(store)!r} ({exc.strerror or exc})",
            hint="choose a writable directory with --store",
        ) from exc
    key = str(store.resolve())
    with _guard:
        entry = _held.get(key)
        if entry is None:
            entry = _held[key] = [None, 0, threading.Lock()]
    with entry[2]:  # one thread of this process acquires; the others then re-enter
        if entry[1] == 0:
            lock = FileLock(str(store / LOCK_FILE), thread_local=False)
            wait = default_timeout() if timeout is None else check_timeout(timeout)
            try:
                lock.acquire(timeout=0)
            except Timeout:
                (notify or _default_notify)(
                    f"store {str(store)!r} is being written by {_holder(store)}; waiting for it "
                    f"(up to {wait:g} s; --lock-timeout or {TIMEOUT_ENV} sets the limit)"
                )
                t0 = time.monotonic()
                try:
                    lock.acquire(timeout=wait)
                except Timeout as exc:
                    raise StoreLocked(
                        f"store {str(store)!r} is still being written by {_holder(store)} after "
                        f"{time.monotonic() - t0:.0f} s; nothing was written",
                        hint="wait for the other command to finish and re-run, or raise --lock-timeout",
                    ) from exc
            except OSError as exc:
                raise StoreError(
                    f"cannot lock store {str(store)!r} ({exc.strerror or exc})",
                    hint="the store must be on a writable local or network filesystem that supports locks",
                ) from exc
            entry[0] = lock
            info = {"pid": os.getpid(), "command": command, "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
            with contextlib.suppress(OSError):
                tmp = store / f".{LOCK_INFO_FILE}.{os.getpid()}.tmp"
                tmp.write_text(json.dumps(info))
                os.replace(tmp, store / LOCK_INFO_FILE)
        entry[1] += 1
    try:
        yield store
    finally:
        with entry[2]:
            entry[1] -= 1
            if entry[1] == 0 and entry[0] is not None:
                with contextlib.suppress(OSError):
                    (store / LOCK_INFO_FILE).unlink()
                entry[0].release()
                entry[0] = None


def is_locked_by_me(store_dir: str | os.PathLike) -> bool:
    entry = _held.get(str(Path(store_dir).resolve()))
    return bool(entry and entry[1] > 0)
