"""Qlib's feature file format: little-endian float32, first value = start index in the calendar, then one
value per calendar bar (NaN where the instrument has no bar)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

DTYPE = np.dtype("<f4")


def encode_feature(start_index: int, values: np.ndarray) -> bytes:
    """Bytes of a feature file starting at calendar index ``start_index``."""
    out = np.empty(len(values) + 1, dtype=DTYPE)
    out[0] = start_index
    out[1:] = values
    return out.tobytes()


def read_feature(path: str | os.PathLike) -> tuple[int, np.ndarray]:
    """(start index, float32 values) of a feature file."""
    raw = np.fromfile(path, dtype=DTYPE)
    if len(raw) == 0:
        return 0, raw
    return int(raw[0]), raw[1:]


def feature_length(path: str | os.PathLike) -> int:
    """Number of bar values (not counting the start index) in a feature file."""
    return max(os.path.getsize(path) // 4 - 1, 0)


def read_tail(path: str | os.PathLike, offset_values: int) -> bytes:
    """Raw bytes of a feature file from bar value ``offset_values`` (0-based, after the header) to the end."""
    with open(path, "rb") as fh:
        fh.seek(4 * (offset_values + 1))
        return fh.read()


def truncate_and_append(path: str | os.PathLike, keep_values: int, values: np.ndarray) -> None:
    """Keep the header and the first ``keep_values`` values, then append ``values`` (in place)."""
    with open(path, "r+b") as fh:
        fh.truncate(4 * (keep_values + 1))
        fh.seek(0, os.SEEK_END)
        fh.write(np.asarray(values, dtype=DTYPE).tobytes())


def restore_tail(path: str | os.PathLike, keep_values: int, tail: bytes) -> None:
    """Undo :func:`truncate_and_append`: cut back to ``keep_values`` values and write the saved ``tail``."""
    p = Path(path)
    with open(p, "r+b") as fh:
        fh.truncate(4 * (keep_values + 1))
        fh.seek(0, os.SEEK_END)
        fh.write(tail)
