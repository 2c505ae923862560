"""Fast, pandas-free reads of the raw store for the dumper (pyarrow + numpy).

The layout is the store's (docs/internals.md): ``bars/<timeframe>/<instrument>/<period>.parquet`` and
``funding/<instrument>/<YYYY>.parquet``, each with a ``.manifest.yaml`` holding the sha256 of the file's bytes.
Every file read here is hashed and checked against its manifest.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import ProviderError

MANIFEST_SUFFIX = ".manifest.yaml"
BAR_COLUMNS = ("open", "high", "low", "close", "volume", "amount")
FUNDING_COLUMNS = ("funding_rate",)
TIME_COLUMN = "datetime"


@dataclass
class StoreFile:
    """One period file of a series and the sha256 its manifest records."""

    path: Path
    sha256: str
    manifest: dict

    def __eq__(self, other: object) -> bool:
        return isinstance(other, StoreFile) and self.path == other.path and self.sha256 == other.sha256

    @property
    def name(self) -> str:
        return self.path.name


def list_dirs(path: Path) -> list[str]:
    if not path.is_dir():
        return []
    return sorted(p.name for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))


_NEEDED = ("sha256", "start_ts", "end_ts", "row_count")


def _yaml_load(text: str):
    """The manifest's top-level keys. The fields the dumper needs are plain ``key: scalar`` lines, read without
    PyYAML (its import and parsing cost more than the rest of a small update); anything else falls back to
    PyYAML."""
    fast: dict = {}
    for line in text.splitlines():
        key, sep, value = line.partition(": ")
        if sep and key in _NEEDED:
            value = value.strip()
            if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
                value = value[1:-1]
            fast[key] = value
    if (
        len(fast) == len(_NEEDED)
        and fast["row_count"].isdigit()
        and all("'" not in v and '"' not in v and "#" not in v for v in fast.values())
    ):
        fast["row_count"] = int(fast["row_count"])
        return fast
    import yaml

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    return yaml.load(text, Loader=loader)  # noqa: S506 (safe loader)


def series_files(directory: Path) -> list[StoreFile]:
    """Period files of one series (sorted) with the sha256 of their manifests."""
    if not directory.is_dir():
        return []
    out = []
    for path in sorted(directory.glob("*.parquet")):
        if path.name.startswith("."):
            continue
        mpath = path.with_name(path.name + MANIFEST_SUFFIX)
        try:
            manifest = _yaml_load(mpath.read_text())
        except FileNotFoundError:
            raise ProviderError(
                f"store file {str(path)!r} has no manifest {mpath.name!r}",
                hint="the store fails validation: run qlib-crypto validate and re-collect that period",
            ) from None
        except Exception as exc:  # yaml errors
            raise ProviderError(
                f"manifest {str(mpath)!r} cannot be read ({exc})",
                hint="the store fails validation: run qlib-crypto validate and re-collect that period",
            ) from exc
        sha = manifest.get("sha256") if isinstance(manifest, dict) else None
        if not isinstance(sha, str):
            raise ProviderError(
                f"manifest {str(mpath)!r} has no sha256", hint="run qlib-crypto validate and re-collect that period"
            )
        out.append(StoreFile(path, sha, manifest))
    return out


def read_series_file(f: StoreFile, columns: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
    """(epoch-ms int64 times, float64 values [k, n]) of one file, after checking its sha256."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    data = f.path.read_bytes()
    actual = hashlib.sha256(data).hexdigest()
    if actual != f.sha256:
        raise ProviderError(
            f"store file {str(f.path)!r} does not match its manifest (sha256 {actual[:12]}... != {f.sha256[:12]}...)",
            hint="the store fails validation: run qlib-crypto validate, then re-collect or re-import that period",
        )
    try:
        # ParquetFile, not read_table: read_table imports pyarrow.dataset, which imports pandas (0.5 s)
        table = pq.ParquetFile(pa.BufferReader(data)).read(columns=[TIME_COLUMN, *columns], use_threads=True)
    except Exception as exc:  # pyarrow raises several types
        raise ProviderError(
            f"store file {str(f.path)!r} cannot be read ({exc})", hint="run qlib-crypto validate"
        ) from exc
    tcol = table.column(TIME_COLUMN)
    ttype = tcol.type
    ts = _to_numpy(tcol, "<i8").copy()
    unit = getattr(ttype, "unit", "ms")
    if unit == "s":
        ts = ts * 1000
    elif unit == "us":
        ts = ts // 1000
    elif unit == "ns":
        ts = ts // 1_000_000
    values = np.empty((len(columns), len(ts)), dtype=np.float64)
    for j, c in enumerate(columns):
        values[j] = _to_numpy(table.column(c), "<f8")
    _refuse_out_of_range(f, columns, ts, values)
    return ts, values


_FLOAT32_MAX = float(np.finfo(np.float32).max)


def _refuse_out_of_range(f: StoreFile, columns: tuple[str, ...], ts: np.ndarray, values: np.ndarray) -> None:
    """Qlib's provider is float32: an infinite value, or one beyond float32's range (which becomes infinite), is
    refused rather than written (the store quarantines such rows; older stores may still hold them)."""
    finite = np.isfinite(values) | np.isnan(values)
    with np.errstate(invalid="ignore"):
        big = np.abs(np.where(np.isfinite(values), values, 0.0)) > _FLOAT32_MAX
    bad = ~finite | big
    if columns[:4] == BAR_COLUMNS[:4]:
        bad[:4] |= np.isnan(values[:4])  # a price must be a number
    if bad.any():
        j, i = (int(x[0]) for x in np.nonzero(bad))
        when = np.datetime_as_string(np.datetime64(int(ts[i]), "ms"), unit="m")
        raise ProviderError(
            f"store file {str(f.path)!r} holds a non-finite or out-of-range {columns[j]} ({values[j, i]!r}) at "
            f"{when}Z: Qlib's float32 provider cannot represent it; nothing was written",
            hint="re-import or re-collect that period (the store now quarantines such rows), then run qlib-crypto validate",
        )


def _to_numpy(column, dtype: str) -> np.ndarray:
    """A fixed-width Arrow column as a numpy view of its data buffer (nulls become NaN, or are refused).

    Arrow's own ``to_numpy``/``cast`` import pandas (half a second), which the dump path avoids."""
    arr = column.combine_chunks() if hasattr(column, "combine_chunks") else column
    width = np.dtype(dtype).itemsize
    if arr.type.bit_width != 8 * width:
        raise ProviderError(f"unexpected Parquet column type {arr.type}", hint="run qlib-crypto validate")
    out = np.frombuffer(arr.buffers()[1], dtype=dtype, count=len(arr), offset=arr.offset * width)
    if arr.null_count:
        if out.dtype.kind != "f":
            raise ProviderError("null timestamps in a store file", hint="run qlib-crypto validate")
        valid = np.unpackbits(np.frombuffer(arr.buffers()[0], dtype=np.uint8), bitorder="little")
        out = np.where(valid[arr.offset : arr.offset + len(arr)].astype(bool), out, np.nan)
    return out


class RowsHash:
    """Content hash of the first rows of a series (times and values), column by column, independent of the
    Parquet encoding; :meth:`extended` adds further rows without hashing the first ones again."""

    def __init__(self, ts: np.ndarray, values: np.ndarray, upto: int) -> None:
        self._parts = [hashlib.sha256(np.ascontiguousarray(ts[:upto], dtype="<i8").data)]
        for row in values:
            self._parts.append(hashlib.sha256(np.ascontiguousarray(row[:upto], dtype="<f8").data))
        self.rows = upto

    def extended(self, ts: np.ndarray, values: np.ndarray, upto: int) -> "RowsHash":
        new = object.__new__(RowsHash)
        new._parts = [p.copy() for p in self._parts]
        lo = self.rows
        new._parts[0].update(np.ascontiguousarray(ts[lo:upto], dtype="<i8").data)
        for part, row in zip(new._parts[1:], values):
            part.update(np.ascontiguousarray(row[lo:upto], dtype="<f8").data)
        new.rows = max(upto, lo)
        return new

    def hexdigest(self) -> str:
        return hashlib.sha256("".join(p.hexdigest() for p in self._parts).encode()).hexdigest()
