"""Atomic writes: a file goes to a temporary file in the same directory, fsync, then rename; a directory of files
is staged beside its target and swapped into place (:func:`atomic_dir`)."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterable, Iterator


def _read_umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


_UMASK_AT_IMPORT = _read_umask()  # read once: os.umask is process-wide and not thread-safe to probe


def _default_mode() -> int:
    """0666 minus the umask (what ``open(path, "w")`` would give)."""
    return 0o666 & ~_UMASK_AT_IMPORT


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, fsync: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is renamed over ``path``.

    On an exception the temporary file is removed and ``path`` is left as it was.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=str(target.parent))
    os.fchmod(fd, _default_mode())  # mkstemp makes 0600 files; data files get the usual umask-based mode
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        if fsync:
            with open(tmp_path, "rb+") as fh:
                os.fsync(fh.fileno())
        os.replace(tmp_path, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes, *, fsync: bool = True) -> None:
    with atomic_path(path, fsync=fsync) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | os.PathLike, text: str, *, fsync: bool = True) -> None:
    atomic_write_bytes(path, text.encode("utf-8"), fsync=fsync)


# ---------------------------------------------------------------------------------------------- directories
def _exchange_dirs(a: Path, b: Path) -> bool:
    """Swap two directories in one step (Linux ``renameat2(RENAME_EXCHANGE)``); False where unsupported."""
    import ctypes
    import errno

    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if fn(at_fdcwd, os.fsencode(str(a)), at_fdcwd, os.fsencode(str(b)), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(a))


def _fsync_path(path: Path) -> None:
    fd = os.open(str(path), os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _recover_dir(target: Path) -> None:
    """Clean up after a killed :func:`atomic_dir` writer of ``target`` (call with the parent locked).

    ``.<name>.old-*`` with no ``target``: killed between the two renames of the fallback swap, so the newest
    old directory goes back into place; every other ``.<name>.old-*`` / ``.<name>.staging-*`` is removed.
    """
    import shutil

    parent, name = target.parent, target.name
    olds = sorted(parent.glob(f".{name}.old-*"), key=lambda p: p.stat().st_mtime)
    if not target.exists() and olds:
        os.rename(olds[-1], target)
        olds = olds[:-1]
    for p in list(parent.glob(f".{name}.staging-*")) + olds:
        shutil.rmtree(p, ignore_errors=True)


def recover_dir(path: str | os.PathLike) -> None:
    """Finish or clean up after a killed :func:`atomic_dir` writer of ``path``: put the old directory back if the
    kill came between the two renames of the fallback swap, and remove leftover staging/old directories.
    :func:`atomic_dir` does this itself first; readers may call it to make sure ``path`` is in place."""
    import fcntl

    target = Path(os.path.abspath(os.path.expanduser(os.fspath(path))))
    if not target.parent.is_dir():
        return
    lock_fd = os.open(str(target.parent), os.O_RDONLY)
    try:
        fcntl.flock(lock_fd, fcntl.LOCK_EX)
        _recover_dir(target)
    finally:
        os.close(lock_fd)


def _foreign_entries(target: Path, replaceable: Iterable[str]) -> list[str]:
    """Entries of ``target`` that are neither one of ``replaceable`` nor a temporary file of one of them."""
    allowed = set(replaceable)
    foreign = []
    for entry in sorted(os.listdir(target)):
        if entry in allowed:
            continue
        if entry.startswith(".") and entry.endswith(".tmp") and any(entry.startswith(f".{n}.") for n in allowed):
            continue  # an atomic_path temporary file left by a killed writer
        foreign.append(entry)
    return foreign


@contextlib.contextmanager
def atomic_dir(
    path: str | os.PathLike,
    *,
    replaceable: Iterable[str] | None = None,
    fsync: bool = True,
    what: str = "output directory",
) -> Iterator[Path]:
    """Write a directory of files as one unit: yield an empty staging directory, then swap it into place.

    The staging directory is ``.<name>.staging-<pid>`` beside ``path``. When the block ends without an exception,
    the staged files are fsynced and the staging directory replaces ``path`` by renames (one atomic
    ``renameat2(RENAME_EXCHANGE)`` on Linux; elsewhere ``path -> .<name>.old-<pid>`` then ``staging -> path``),
    so a reader sees the complete old set of files or the complete new set, never a mix. On an exception the
    staging directory is removed and ``path`` is left as it was. What a killed writer leaves
    (``.<name>.staging-*``, ``.<name>.old-*``) is cleaned up, or put back, by the next call for ``path``.
    Writers of directories in the same parent are serialised by an ``flock`` on the parent directory.

    ``replaceable``: the file names the directory may hold. An existing ``path`` holding anything else is
    refused with a ``ConfigError`` (so that ``--out .`` never replaces a directory of unrelated files);
    ``None`` skips the check. ``what`` names the directory in that message.
    """
    import fcntl
    import shutil

    from .errors import ConfigError

    target = Path(os.path.abspath(os.path.expanduser(os.fspath(path))))
    if target.is_symlink():
        target = Path(os.path.realpath(target))
    if target.parent == target:
        raise ConfigError(
            f"{what} {os.fspath(path)!r} is the filesystem root", hint="give a directory such as reports/backtest"
        )
    if target.exists() and not target.is_dir():
        raise ConfigError(
            f"{what} {os.fspath(path)!r} is a file, not a directory", hint=f"give a directory for the {what}"
        )
    parent = target.parent
    parent.mkdir(parents=True, exist_ok=True)
    lock_fd = os.open(str(parent), os.O_RDONLY)
    try:
        fcntl.flock(lock_fd, fcntl.LOCK_EX)
        _recover_dir(target)
        if replaceable is not None and target.is_dir():
            foreign = _foreign_entries(target, replaceable)
            if foreign:
                shown = ", ".join(foreign[:5]) + (", ..." if len(foreign) > 5 else "")
                raise ConfigError(
                    f"{what} {os.fspath(path)!r} holds other files ({shown}); it is replaced as a whole",
                    hint="give a new or empty directory, or one written by this same command",
                )
        staging = parent / f".{target.name}.staging-{os.getpid()}"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
        try:
            yield staging
            if fsync:
                for root, _dirs, files in os.walk(staging):
                    for name in files:
                        _fsync_path(Path(root) / name)
                    _fsync_path(Path(root))
            if not target.exists():
                os.rename(staging, target)
            elif _exchange_dirs(staging, target):
                shutil.rmtree(staging, ignore_errors=True)  # now holds the old set
            else:
                old = parent / f".{target.name}.old-{os.getpid()}"
                os.rename(target, old)
                os.rename(staging, target)
                shutil.rmtree(old, ignore_errors=True)
            if fsync:
                _fsync_path(parent)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    finally:
        os.close(lock_fd)  # releases the flock
