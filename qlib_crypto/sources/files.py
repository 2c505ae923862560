"""File import: OHLCV bars from CSV or Parquet files made elsewhere, into the same store with the same validation.

Reading is strict and happens for every file before anything is written: a missing column, an unparseable
or misaligned timestamp, or a non-numeric price raises :class:`~qlib_crypto.errors.ImportDataError` naming
the file, the column, the row and what to do, and the store is left untouched. Rows that parse but are not
valid bars (NaN, low above the open, negative volume...) are handed to the store, which quarantines them
with a reason and counts them. See ``docs/import.md``.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import pandas as pd

from ..errors import ConfigError, ImportDataError
from ..timeframes import Timeframe, get_timeframe
from .base import BAR_COLUMNS, BarSource

logger = logging.getLogger(__name__)

TIME_FORMATS = ("auto", "iso", "s", "ms")
CSV_SUFFIXES = (".csv", ".txt", ".tsv", ".csv.gz", ".csv.zip", ".csv.bz2", ".csv.xz", ".tsv.gz")
PARQUET_SUFFIXES = (".parquet", ".pq", ".parq")

#: Column names recognised without a mapping (case-insensitive), per canonical column.
DEFAULT_ALIASES: dict[str, tuple[str, ...]] = {
    "datetime": ("datetime", "timestamp", "time", "date", "ts", "open_time", "opentime", "date_time"),
    "open": ("open", "o"),
    "high": ("high", "h"),
    "low": ("low", "l"),
    "close": ("close", "c"),
    "volume": ("volume", "vol", "base_volume", "v"),
    "amount": ("amount", "quote_volume", "volccyquote", "quote_asset_volume", "turnover"),
}
_EPOCH_S_MAX = 1e11  # epoch seconds stay below this until year 5138; epoch ms of 1973+ are above it
_EPOCH_MS_MAX = 1e14  # epoch ms stay below this until year 5138


@dataclass
class FileImportResult:
    """What importing one instrument of one file (bars, or funding rates with --funding) did: rows read and the
    store's WriteResult counts."""

    file: str
    instrument: str
    rows_read: int
    rows_repeated: int = 0
    rows_added: int = 0
    rows_identical: int = 0
    conflicts: int = 0
    rows_replaced: int = 0
    quarantined: int = 0
    quarantine_reasons: dict[str, int] = field(default_factory=dict)
    conflict_examples: list[dict[str, Any]] = field(default_factory=list)
    first: pd.Timestamp | None = None
    last: pd.Timestamp | None = None


def normalise_symbol(symbol: str) -> str:
    """Map common spellings to OKX instIds: ``BTC/USDT`` -> ``BTC-USDT``, ``BTC/USDT:USDT`` -> ``BTC-USDT-SWAP``."""
    text = str(symbol).strip()
    match = re.fullmatch(r"([A-Za-z0-9]+)/([A-Za-z0-9]+):([A-Za-z0-9]+)", text)
    if match:  # ccxt's linear perpetual spelling
        return f"{match.group(1)}-{match.group(2)}-SWAP".upper()
    match = re.fullmatch(r"([A-Za-z0-9]+)/([A-Za-z0-9]+)", text)
    if match:
        return f"{match.group(1)}-{match.group(2)}".upper()
    return text


def parse_column_map(items: Sequence[str] | Mapping[str, str] | None) -> dict[str, str]:
    """``["open=o", "close=c"]`` (or a dict) -> ``{"open": "o", "close": "c"}``; keys are canonical names."""
    if not items:
        return {}
    pairs = items.items() if isinstance(items, Mapping) else []
    if not isinstance(items, Mapping):
        parsed = []
        for item in items:
            if "=" not in str(item):
                raise ConfigError(
                    f"bad column mapping {item!r}",
                    hint="write CANONICAL=FILE_COLUMN, e.g. --column open=o --column volume=vol",
                )
            key, _, value = str(item).partition("=")
            parsed.append((key.strip(), value.strip()))
        pairs = parsed
    mapping: dict[str, str] = {}
    canonical = set(BAR_COLUMNS) | {"datetime", "symbol"}
    for key, value in pairs:
        if key not in canonical:
            raise ConfigError(
                f"unknown column {key!r} in mapping {key}={value}",
                hint=f"map one of {', '.join(sorted(canonical))}, e.g. --column open=o",
            )
        if not value:
            raise ConfigError(f"empty file column name in mapping {key}=", hint="e.g. --column open=o")
        mapping[key] = value
    return mapping


def _check_timezone(timezone: str) -> str:
    try:
        pd.Timestamp("2024-01-01").tz_localize(timezone)
    except Exception as exc:  # noqa: BLE001 - pytz/zoneinfo raise various types
        raise ConfigError(
            f"unknown timezone {timezone!r}", hint="use an IANA name such as UTC, Europe/Berlin or Asia/Shanghai"
        ) from exc
    return timezone


def _read_table(path: Path) -> pd.DataFrame:
    name = path.name.lower()
    if not path.is_file():
        raise ImportDataError(f"input file {str(path)!r} does not exist", hint="check the path")
    try:
        if name.endswith(PARQUET_SUFFIXES):
            return pd.read_parquet(path)
        if name.endswith(CSV_SUFFIXES):
            sep = "\t" if ".tsv" in name else ","
            # round_trip: a float written with repr() reads back bit-identical (so identical bars merge once)
            return pd.read_csv(path, sep=sep, float_precision="round_trip", skipinitialspace=True)
    except Exception as exc:  # noqa: BLE001 - pandas/pyarrow raise many types for unreadable files
        raise ImportDataError(
            f"cannot read {path.name!r} ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})",
            hint="give a valid CSV (comma-separated, header row) or Parquet file",
        ) from exc
    raise ImportDataError(
        f"unsupported file type {path.name!r}",
        hint=f"use CSV ({', '.join(CSV_SUFFIXES[:3])}) or Parquet ({', '.join(PARQUET_SUFFIXES)})",
    )


def _resolve_columns(
    frame: pd.DataFrame, path: Path, mapping: dict[str, str], datetime_column: str | None, derive_amount: bool
) -> dict[str, str | None]:
    """canonical name -> file column (``amount`` may be None when derived)."""
    columns = [str(c) for c in frame.columns]
    frame.columns = columns
    lower = {c.lower().strip(): c for c in columns}
    resolved: dict[str, str | None] = {}
    wanted = ["datetime"] + BAR_COLUMNS
    if datetime_column:
        mapping = {**mapping, "datetime": datetime_column}
    for canon in wanted:
        if canon in mapping:
            if mapping[canon] not in columns:
                raise ImportDataError(
                    f"{path.name}: column {mapping[canon]!r} (mapped to {canon}) not found; file columns: {columns}",
                    hint=f"fix the mapping, e.g. --column {canon}=<one of the file columns>",
                )
            resolved[canon] = mapping[canon]
            continue
        found = next((lower[a] for a in DEFAULT_ALIASES[canon] if a in lower), None)
        if found is None and canon == "amount" and derive_amount:
            resolved[canon] = None
            continue
        if found is None:
            if canon == "datetime":
                hint = "name it with --datetime-column COLUMN"
            elif canon == "amount":
                hint = "map the quote-currency volume with --column amount=COLUMN, or pass --derive-amount to use volume x (high+low+close)/3"
            else:
                hint = f"map it with --column {canon}=COLUMN"
            raise ImportDataError(f"{path.name}: missing column {canon!r}; file columns: {columns}", hint=hint)
        resolved[canon] = found
    return resolved


def _row_ref(path: Path, pos: int) -> str:
    """'row N' (1-based data row) and, for CSV, the file line."""
    if path.suffix.lower() in PARQUET_SUFFIXES:
        return f"row {pos + 1}"
    return f"row {pos + 1} (line {pos + 2})"


def parse_timestamps(
    values: pd.Series, path: Path, column: str, *, time_format: str = "auto", timezone: str = "UTC"
) -> np.ndarray:
    """A timestamp column -> int64 epoch ms UTC. ISO strings without an offset are local to ``timezone``;
    epoch numbers are UTC by definition. Raises ImportDataError naming the first bad row."""
    if time_format not in TIME_FORMATS:
        raise ConfigError(f"unknown time format {time_format!r}", hint=f"use one of {', '.join(TIME_FORMATS)}")
    series = values.reset_index(drop=True)
    if series.isna().any():
        pos = int(np.flatnonzero(series.isna().to_numpy())[0])
        raise ImportDataError(
            f"{path.name}: empty timestamp in column {column!r} at {_row_ref(path, pos)}",
            hint="every row needs a bar open time; remove or fix the row",
        )
    fmt = time_format
    if pd.api.types.is_datetime64_any_dtype(series):
        fmt = "datetime"
    elif fmt == "auto":
        numeric = pd.to_numeric(series, errors="coerce") if series.dtype == object else series
        if pd.api.types.is_numeric_dtype(series) or (series.dtype == object and numeric.notna().all()):
            top = float(np.nanmax(np.abs(pd.to_numeric(series, errors="coerce").to_numpy(dtype=float))))
            if top < _EPOCH_S_MAX:
                fmt = "s"
            elif top < _EPOCH_MS_MAX:
                fmt = "ms"
            else:
                raise ImportDataError(
                    f"{path.name}: column {column!r} holds numbers too large for epoch seconds or milliseconds "
                    f"(up to {top:.0f})",
                    hint="convert microseconds/nanoseconds to milliseconds, or give ISO strings",
                )
        else:
            fmt = "iso"
    if fmt in ("s", "ms"):
        numbers = pd.to_numeric(series, errors="coerce")
        bad = numbers.isna().to_numpy()
        if bad.any():
            pos = int(np.flatnonzero(bad)[0])
            raise ImportDataError(
                f"{path.name}: cannot parse timestamp {series.iloc[pos]!r} in column {column!r} at "
                f"{_row_ref(path, pos)} as epoch {'seconds' if fmt == 's' else 'milliseconds'}",
                hint="fix the row, or choose the right --time-format (auto, iso, s, ms)",
            )
        scale = 1000.0 if fmt == "s" else 1.0
        ms_float = numbers.to_numpy(dtype=float) * scale
        frac = np.abs(ms_float - np.round(ms_float)) > 1e-3
        if frac.any():
            pos = int(np.flatnonzero(frac)[0])
            raise ImportDataError(
                f"{path.name}: timestamp {series.iloc[pos]!r} in column {column!r} at {_row_ref(path, pos)} "
                f"is not a whole millisecond as epoch {'seconds' if fmt == 's' else 'milliseconds'}",
                hint="check --time-format (s or ms)",
            )
        return np.round(ms_float).astype(np.int64)
    if fmt == "datetime":
        idx = pd.DatetimeIndex(series)
    else:
        text = series.astype(str).str.strip()
        parsed = pd.to_datetime(text, errors="coerce", format="ISO8601", utc=False) if len(text) else text
        try:
            idx = pd.DatetimeIndex(parsed)
        except (ValueError, TypeError):
            # offsets differ between rows (e.g. a DST change): parse each to UTC directly
            parsed = pd.to_datetime(text, errors="coerce", format="ISO8601", utc=True)
            idx = pd.DatetimeIndex(parsed)
        bad = np.asarray(idx.isna())
        if bad.any():
            pos = int(np.flatnonzero(bad)[0])
            raise ImportDataError(
                f"{path.name}: cannot parse timestamp {series.iloc[pos]!r} in column {column!r} at "
                f"{_row_ref(path, pos)} as an ISO date/time",
                hint="use ISO format such as 2024-01-01T05:00:00 (or +00:00 / Z), epoch numbers with "
                "--time-format s or ms, or fix the row",
            )
    if idx.tz is None:
        try:
            idx = idx.tz_localize(timezone, ambiguous="NaT", nonexistent="NaT")
        except Exception as exc:  # noqa: BLE001
            raise ConfigError(f"cannot apply timezone {timezone!r} ({exc})", hint="use an IANA name such as UTC") from exc
        bad = np.asarray(idx.isna())
        if bad.any():
            pos = int(np.flatnonzero(bad)[0])
            raise ImportDataError(
                f"{path.name}: local time {series.iloc[pos]!r} at {_row_ref(path, pos)} is ambiguous or does not "
                f"exist in timezone {timezone!r} (daylight-saving change)",
                hint="export the file in UTC or with explicit offsets (e.g. +01:00)",
            )
    return idx.tz_convert("UTC").as_unit("ms").asi8.astype(np.int64)


def _check_alignment(ts: np.ndarray, tf: Timeframe, path: Path, column: str, raw: pd.Series) -> None:
    offset = ts % tf.ms
    bad = offset != 0
    if not bad.any():
        return
    pos = int(np.flatnonzero(bad)[0])
    when = pd.Timestamp(int(ts[pos]), unit="ms", tz="UTC").isoformat()
    hint = f"timestamps must be {tf.name} bar open times (multiples of {tf.name} from 00:00 UTC)"
    if np.all(offset == tf.ms - 1) or np.all(offset == tf.ms - 1000):
        hint += "; these look like bar close times: subtract them or export open times"
    elif np.all(offset == offset[0]):
        minutes = f"{offset[0] / 60_000:g}"
        if offset[0] % 1_800_000 == 0:
            hint += f"; every timestamp is {minutes} min past a bar open: wrong --timezone?"
        else:
            hint += f"; every timestamp is {minutes} min past a bar open: check --timeframe"
    else:
        hint += "; check --timeframe and --time-format"
    raise ImportDataError(
        f"{path.name}: timestamp {raw.iloc[pos]!r} at {_row_ref(path, pos)} ({when}) is not aligned to the "
        f"{tf.name} timeframe (column {column!r})",
        hint=hint,
    )


def read_bar_file(
    path: str | Path,
    timeframe: str,
    *,
    instrument: str | Sequence[str] | None = None,
    symbol_column: str | None = None,
    columns: Sequence[str] | Mapping[str, str] | None = None,
    datetime_column: str | None = None,
    time_format: str = "auto",
    timezone: str = "UTC",
    derive_amount: bool = False,
) -> dict[str, pd.DataFrame]:
    """Read one CSV/Parquet OHLCV file into ``{instrument: bars}`` (``datetime`` UTC column + six floats).

    Without ``symbol_column`` the file holds one instrument, named by ``instrument``. With it, rows are
    grouped by that column (values like ``BTC/USDT`` are normalised to ``BTC-USDT``); ``instrument`` then
    optionally restricts the import to some of them. Raises ImportDataError (file, column, row, what to do).
    """
    from ..store.layout import check_instrument

    path = Path(path)
    tf = get_timeframe(timeframe)
    _check_timezone(timezone)
    mapping = parse_column_map(columns)
    if symbol_column is None and "symbol" in mapping:
        symbol_column = mapping.pop("symbol")
    mapping.pop("symbol", None)
    wanted = [instrument] if isinstance(instrument, str) else list(instrument or [])
    # One instrument, one name: OKX instIds are upper case, and Qlib keys instruments case-insensitively.
    wanted = [w.strip().upper() for item in wanted for w in str(item).split(",") if w.strip()]
    if symbol_column is None and len(wanted) != 1:
        raise ConfigError(
            "name the instrument of " + repr(path.name) + (f" (got {', '.join(wanted)})" if wanted else ""),
            hint="pass --instrument ID (e.g. BTC-USDT), or --symbol-column COLUMN for files holding several",
        )
    for name in wanted:
        check_instrument(name)
    frame = _read_table(path)
    if isinstance(frame.index, pd.DatetimeIndex) and not any(str(c).lower() in DEFAULT_ALIASES["datetime"] for c in frame.columns):
        frame = frame.reset_index()  # Parquet written from a DataFrame indexed by time
    if len(frame) == 0:
        raise ImportDataError(f"{path.name}: the file has no rows", hint="check the file")
    resolved = _resolve_columns(frame, path, mapping, datetime_column, derive_amount)
    if symbol_column is not None and symbol_column not in frame.columns:
        raise ImportDataError(
            f"{path.name}: symbol column {symbol_column!r} not found; file columns: {list(frame.columns)}",
            hint="pass the name of the column holding the instrument ids with --symbol-column",
        )
    frame = frame.reset_index(drop=True)
    ts = parse_timestamps(frame[resolved["datetime"]], path, resolved["datetime"], time_format=time_format, timezone=timezone)
    _check_alignment(ts, tf, path, resolved["datetime"], frame[resolved["datetime"]])
    out = pd.DataFrame({"datetime": pd.to_datetime(ts, unit="ms", utc=True)})
    for canon in BAR_COLUMNS:
        col = resolved[canon]
        if col is None:
            continue
        raw = frame[col]
        numbers = pd.to_numeric(raw, errors="coerce")
        text_bad = numbers.isna().to_numpy() & raw.notna().to_numpy()
        if raw.dtype == object:
            text_bad &= raw.astype(str).str.strip().ne("").to_numpy()
        if text_bad.any():  # overflowing literals such as 1e400 are numbers (infinite): the store quarantines them
            numbers = numbers.astype(np.float64)
            for pos in np.flatnonzero(text_bad):
                try:
                    numbers.iloc[pos] = float(str(raw.iloc[pos]).strip())
                    text_bad[pos] = False
                except ValueError:
                    pass
        if text_bad.any():
            pos = int(np.flatnonzero(text_bad)[0])
            raise ImportDataError(
                f"{path.name}: value {raw.iloc[pos]!r} in column {col!r} ({canon}) at {_row_ref(path, pos)} is not a number",
                hint="use '.' as the decimal separator and no thousands separators, or fix the row",
            )
        out[canon] = numbers.to_numpy(dtype=np.float64)
    if resolved["amount"] is None:
        out["amount"] = out["volume"] * (out["high"] + out["low"] + out["close"]) / 3.0
    out = out[["datetime"] + BAR_COLUMNS]
    if symbol_column is None:
        return {wanted[0]: out.sort_values("datetime", kind="stable").reset_index(drop=True)}
    symbols = frame[symbol_column]
    if symbols.isna().any():
        pos = int(np.flatnonzero(symbols.isna().to_numpy())[0])
        raise ImportDataError(
            f"{path.name}: empty instrument in column {symbol_column!r} at {_row_ref(path, pos)}",
            hint="every row needs an instrument id such as BTC-USDT",
        )
    names = symbols.astype(str).map(normalise_symbol).str.upper()
    result: dict[str, pd.DataFrame] = {}
    for name, rows in out.groupby(names.to_numpy(), sort=True):
        try:
            check_instrument(str(name))
        except ConfigError as exc:
            pos = int(np.flatnonzero((names == name).to_numpy())[0])
            raise ImportDataError(
                f"{path.name}: bad instrument {name!r} in column {symbol_column!r} at {_row_ref(path, pos)}",
                hint="use OKX instIds such as BTC-USDT or BTC-USDT-SWAP",
            ) from exc
        if wanted and name not in wanted:
            continue
        result[str(name)] = rows.sort_values("datetime", kind="stable").reset_index(drop=True)
    missing = [w for w in wanted if w not in result]
    if missing:
        raise ImportDataError(
            f"{path.name}: no rows for {', '.join(missing)} in column {symbol_column!r}",
            hint=f"instruments in the file: {', '.join(sorted(set(names)))[:300]}",
        )
    return result


def import_files(
    store_dir: str | Path,
    paths: Sequence[str | Path],
    timeframe: str,
    *,
    overwrite: bool = False,
    lock_timeout: float | None = None,
    **read_options: Any,
) -> list[FileImportResult]:
    """Import files into the store: every file is read and checked first, then written through
    ``store.write_bars(..., source="import:<file name>")``. ``read_options`` go to :func:`read_bar_file`.

    Conflicting stored bars are kept unless ``overwrite``; nothing is written when any file fails to read.
    Writing holds the store's writer lock (waiting up to ``lock_timeout`` seconds for another writer).
    """
    from .. import store

    if not paths:
        raise ConfigError("no input files", hint="give one or more CSV or Parquet files")
    tf = get_timeframe(timeframe)
    parsed: list[tuple[Path, dict[str, pd.DataFrame]]] = []
    for raw_path in paths:
        path = Path(raw_path)
        parsed.append((path, read_bar_file(path, tf.name, **read_options)))
    results = []
    with store.store_lock(store_dir, command="import", timeout=lock_timeout):
        _write_imports(store_dir, tf, parsed, overwrite, results)
    return results


def _write_imports(store_dir, tf, parsed, overwrite, results) -> None:
    from .. import store

    for path, by_instrument in parsed:
        for instrument, bars in by_instrument.items():
            res = store.write_bars(
                store_dir, instrument, tf.name, bars, source=f"import:{path.name}",
                on_conflict="overwrite" if overwrite else "keep",
            )
            results.append(
                FileImportResult(
                    file=path.name, instrument=instrument, rows_read=len(bars), rows_repeated=res.rows_repeated,
                    rows_added=res.rows_added,
                    rows_identical=res.rows_identical, conflicts=res.conflicts, rows_replaced=res.rows_replaced,
                    quarantined=res.quarantined, quarantine_reasons=dict(res.quarantine_reasons),
                    conflict_examples=list(res.conflict_examples),
                    first=bars["datetime"].iloc[0] if len(bars) else None,
                    last=bars["datetime"].iloc[-1] if len(bars) else None,
                )
            )
            logger.info("imported %s %s from %s: %s", instrument, tf.name, path.name, res)


FUNDING_ALIASES: dict[str, tuple[str, ...]] = {
    "datetime": ("funding_time", "fundingtime", "datetime", "timestamp", "time", "ts", "calc_time", "date"),
    "funding_rate": ("funding_rate", "fundingrate", "rate", "last_funding_rate", "lastfundingrate"),
    "realized_rate": ("realized_rate", "realizedrate"),
}


def read_funding_file(
    path: str | Path,
    *,
    instrument: str | None = None,
    symbol_column: str | None = None,
    datetime_column: str | None = None,
    time_format: str = "auto",
    timezone: str = "UTC",
) -> dict[str, pd.DataFrame]:
    """Read funding-rate history (settlement time, rate, optional realized rate) from CSV/Parquet.

    Returns ``{instrument: frame}`` with ``funding_time`` (UTC), ``funding_rate``, ``realized_rate``. Only
    perpetual swaps (``-SWAP`` instIds) have funding. Raises ImportDataError naming the file, column and row.
    """
    path = Path(path)
    _check_timezone(timezone)
    frame = _read_table(path)
    if len(frame) == 0:
        raise ImportDataError(f"{path.name}: the file has no rows", hint="check the file")
    frame.columns = [str(c) for c in frame.columns]
    lower = {c.lower().strip(): c for c in frame.columns}
    found: dict[str, str | None] = {}
    for canon, aliases in FUNDING_ALIASES.items():
        if canon == "datetime" and datetime_column:
            if datetime_column not in frame.columns:
                raise ImportDataError(f"{path.name}: column {datetime_column!r} not found; file columns: {list(frame.columns)}",
                                      hint="pass the settlement time column with --datetime-column")
            found[canon] = datetime_column
            continue
        found[canon] = next((lower[a] for a in aliases if a in lower), None)
        if found[canon] is None and canon != "realized_rate":
            raise ImportDataError(
                f"{path.name}: missing column {canon!r} for funding rates; file columns: {list(frame.columns)}",
                hint=("name the settlement time column with --datetime-column" if canon == "datetime"
                      else "the rate column must be named funding_rate (or fundingRate, rate, last_funding_rate)"),
            )
    ts = parse_timestamps(frame[found["datetime"]], path, found["datetime"], time_format=time_format, timezone=timezone)
    out = pd.DataFrame({"funding_time": pd.to_datetime(ts, unit="ms", utc=True)})
    for canon in ("funding_rate", "realized_rate"):
        col = found[canon]
        if col is None:
            out[canon] = np.nan
            continue
        raw = frame[col]
        numbers = pd.to_numeric(raw, errors="coerce")
        bad = numbers.isna().to_numpy() & raw.notna().to_numpy()
        if raw.dtype == object:
            bad &= raw.astype(str).str.strip().ne("").to_numpy()
        if bad.any():
            pos = int(np.flatnonzero(bad)[0])
            raise ImportDataError(f"{path.name}: value {raw.iloc[pos]!r} in column {col!r} at {_row_ref(path, pos)} is not a number",
                                  hint="use '.' as the decimal separator, or fix the row")
        out[canon] = numbers.to_numpy(dtype=np.float64)
    if symbol_column is not None:
        if symbol_column not in frame.columns:
            raise ImportDataError(f"{path.name}: symbol column {symbol_column!r} not found; file columns: {list(frame.columns)}",
                                  hint="pass the column holding the instrument ids with --symbol-column")
        names = frame[symbol_column].astype(str).map(normalise_symbol).str.upper().to_numpy()
    else:
        if not instrument:
            raise ConfigError(f"name the instrument of {path.name!r}", hint="pass --instrument BTC-USDT-SWAP or --symbol-column")
        names = np.full(len(frame), instrument.strip().upper(), dtype=object)
    wanted = {w.strip().upper() for w in (instrument or "").split(",") if w.strip()} if symbol_column else set()
    result: dict[str, pd.DataFrame] = {}
    for name in sorted(set(names.tolist())):
        if wanted and name not in wanted:
            continue
        from ..store.layout import check_instrument

        check_instrument(name)
        if not name.endswith("-SWAP"):
            raise ImportDataError(f"{path.name}: funding rates for {name!r}, which is not a perpetual swap",
                                  hint="funding belongs to swaps: name them as OKX swap instIds, e.g. BTC-USDT-SWAP")
        result[name] = out[names == name].sort_values("funding_time", kind="stable").reset_index(drop=True)
    if not result:
        raise ImportDataError(f"{path.name}: no funding rows for {', '.join(sorted(wanted))}", hint="check --instrument")
    return result


def import_funding_files(
    store_dir: str | Path, paths: Sequence[str | Path], *, overwrite: bool = False, lock_timeout: float | None = None,
    **read_options: Any,
) -> list[FileImportResult]:
    """Import funding-rate files into the store (every file read and checked first, then written under the
    store's lock). Stored rates that differ are kept unless ``overwrite``."""
    from .. import store

    if not paths:
        raise ConfigError("no input files", hint="give one or more CSV or Parquet files")
    parsed = [(Path(p), read_funding_file(p, **read_options)) for p in paths]
    results: list[FileImportResult] = []
    with store.store_lock(store_dir, command="import --funding", timeout=lock_timeout):
        for path, by_instrument in parsed:
            for instrument, frame in by_instrument.items():
                res = store.write_funding(store_dir, instrument, frame, f"import:{path.name}",
                                          on_conflict="overwrite" if overwrite else "keep")
                results.append(FileImportResult(
                    file=path.name, instrument=instrument, rows_read=len(frame), rows_repeated=res.rows_repeated,
                    rows_added=res.rows_added, rows_identical=res.rows_identical, conflicts=res.conflicts,
                    rows_replaced=res.rows_replaced, quarantined=res.quarantined,
                    quarantine_reasons=dict(res.quarantine_reasons),
                ))
    return results


class FileSource(BarSource):
    """Bars from CSV/Parquet files behind the BarSource interface (all files read once, of one timeframe)."""

    name = "import"

    def __init__(self, paths: Sequence[str | Path], timeframe: str, **read_options: Any) -> None:
        self.timeframe = get_timeframe(timeframe)
        self._bars: dict[str, pd.DataFrame] = {}
        for path in paths:
            for inst, bars in read_bar_file(path, self.timeframe.name, **read_options).items():
                both = pd.concat([self._bars[inst], bars]) if inst in self._bars else bars
                self._bars[inst] = both.drop_duplicates().sort_values("datetime", kind="stable").reset_index(drop=True)
        self.name = "import:" + "+".join(Path(p).name for p in paths)

    def list_instruments(self) -> list[str]:
        return sorted(self._bars)

    def fetch_bars(self, instrument: str, timeframe: str, start_ms: int, end_ms: int) -> Iterator[pd.DataFrame]:
        if get_timeframe(timeframe) != self.timeframe:
            raise ConfigError(
                f"the files hold {self.timeframe.name} bars, not {timeframe}",
                hint=f"ask for timeframe {self.timeframe.name}",
            )
        if instrument not in self._bars:
            raise ConfigError(f"no bars for {instrument!r} in the files", hint=f"instruments: {', '.join(self.list_instruments())}")
        bars = self._bars[instrument]
        t = bars["datetime"]
        lo, hi = pd.Timestamp(start_ms, unit="ms", tz="UTC"), pd.Timestamp(end_ms, unit="ms", tz="UTC")
        chunk = bars[(t >= lo) & (t < hi)]
        if len(chunk):
            yield chunk.reset_index(drop=True)
