"""File import: OHLCV bars from CSV or Parquet files made elsewhere, into the same store with the same validation.

Reading is strict and happens for every file before anything is written: a missing column, an unparseable
or misaligned timestamp, or a non-numeric price raises :class:`~qlib_crypto.errors.ImportDataError` naming
the file, the column, the row and what to do, and the store is left untouched. Rows that parse but are not
valid bars (NaN, low above the open, negative volume...) are handed to the store, which quarantines them
with a reason and counts them. See ``docs/import.md``.
"""

from __future__ import annotations

import gzip
import io
import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import pandas as pd

from ..errors import ConfigError, ImportDataError
from ..timeframes import TIMEFRAMES, Timeframe, get_timeframe
from .base import BAR_COLUMNS, BarSource

logger = logging.getLogger(__name__)

TIME_FORMATS = ("auto", "iso", "s", "ms", "us")
CSV_SUFFIXES = (".csv", ".txt", ".tsv", ".csv.gz", ".csv.zip", ".csv.bz2", ".csv.xz", ".tsv.gz")
PARQUET_SUFFIXES = (".parquet", ".pq", ".parq")
FEATHER_SUFFIXES = (".feather", ".ftr")
JSON_SUFFIXES = (".json", ".json.gz", ".jsongz")
#: --format: how a file is laid out (``generic``: a table with a header row; the others: exports of those tools,
#: see docs/import.md "Recipes")
FILE_FORMATS = ("generic", "binance", "cryptodatadownload", "ccxt", "freqtrade")
VOLUME_UNITS = ("base", "quote")

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
    timeframe: str | None = None  # of bars (given, or from the file's name or content); None for funding


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


def _read_table(path: Path, skip_rows: int = 0, *, header: bool = True, any_csv: bool = False) -> pd.DataFrame:
    """A CSV (after ``skip_rows`` lines, with or without a header row), Parquet or Feather file as read.
    ``any_csv``: read every other suffix as CSV (Binance's ``.zip`` archives of one CSV)."""
    name = path.name.lower()
    if not path.is_file():
        raise ImportDataError(f"input file {str(path)!r} does not exist", hint="check the path")
    banner = None
    try:
        if name.endswith(PARQUET_SUFFIXES):
            return pd.read_parquet(path)
        if name.endswith(FEATHER_SUFFIXES):
            return pd.read_feather(path)
        if name.endswith(CSV_SUFFIXES) or (any_csv and not name.endswith(JSON_SUFFIXES)):
            sep = "\t" if ".tsv" in name else ","
            # round_trip: a float written with repr() reads back bit-identical (so identical bars merge once)
            frame = pd.read_csv(
                path,
                sep=sep,
                float_precision="round_trip",
                skipinitialspace=True,
                skiprows=skip_rows or None,
                header=0 if header else None,
            )
            banner = _banner_hint(path, skip_rows) if header and frame.shape[1] == 1 else None
            if banner is None:
                return frame
    except Exception as exc:  # noqa: BLE001 - pandas/pyarrow raise many types for unreadable files
        raise ImportDataError(
            f"cannot read {path.name!r} ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})",
            hint=_banner_hint(path, skip_rows)
            or "give a valid CSV (comma-separated, header row), Parquet or Feather file",
        ) from exc
    if banner is not None:  # a banner line read as the header: every row then looks like one odd column
        raise ImportDataError(f"{path.name}: the file does not start with its header row", hint=banner)
    raise ImportDataError(
        f"unsupported file type {path.name!r}",
        hint=f"use CSV ({', '.join(CSV_SUFFIXES[:3])}), Parquet ({', '.join(PARQUET_SUFFIXES)}) or Feather (.feather); "
        "JSON only with --format ccxt or freqtrade",
    )


def _first_lines(path: Path, n: int) -> list[str]:
    """The first ``n`` text lines of a (possibly compressed) CSV file, or [] when they cannot be read."""
    import bz2
    import itertools
    import lzma
    import zipfile
    from contextlib import ExitStack

    name = path.name.lower()
    try:
        with ExitStack() as stack:
            if name.endswith(".zip"):  # one CSV inside, as pandas reads it
                archive = stack.enter_context(zipfile.ZipFile(path))
                raw = stack.enter_context(archive.open(archive.namelist()[0]))
                fh = stack.enter_context(io.TextIOWrapper(raw, encoding="utf-8", errors="replace"))
            else:
                opener = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}.get(Path(name).suffix, open)
                fh = stack.enter_context(opener(path, "rt", encoding="utf-8", errors="replace"))
            return [line.rstrip("\r\n") for line in itertools.islice(fh, n)]
    except Exception:  # noqa: BLE001 - only used for a hint and to tell a header row from data
        return []


def _banner_hint(path: Path, skip_rows: int) -> str | None:
    """When the lines before the header are a banner (CryptoDataDownload's URL line), say how to skip them."""
    lines = _first_lines(path, skip_rows + 2)[skip_rows:]
    if len(lines) == 2 and "," not in lines[0] and "," in lines[1]:
        cdd = "cryptodatadownload" in lines[0].lower()
        return f"line {skip_rows + 1} ({lines[0][:60]!r}) is not a header: pass --skip-rows {skip_rows + 1}" + (
            " or --format cryptodatadownload" if cdd else ""
        )
    return None


def _missing_amount_hint(volume_col: str, quote: str | None, volume_note: str | None) -> str:
    """What to do when a file has no quote-currency volume: never --derive-amount for a volume column that is
    in quote currency already (that is the amount; the base volume is then derived from it)."""
    tokens = set(re.split(r"[^a-z0-9]+", volume_col.lower()))
    quote_words = {quote.lower()} if quote else {"usd", "usdt", "usdc", "busd", "fdusd", "eur"}
    to_quote = f"pass --volume-in quote (amount := {volume_col!r}, volume := amount / ((high + low + close) / 3))"
    if "quote" in volume_col.lower() or tokens & quote_words:
        return f"column {volume_col!r} looks like volume in quote currency: {to_quote}"
    derive = "pass --derive-amount (amount := volume x (high + low + close) / 3)"
    if volume_note:  # the format says which currency its volume is in
        return f"{volume_note}: {derive}"
    return (
        f"map the quote-currency volume with --column amount=COLUMN; if {volume_col!r} is in quote currency, "
        f"{to_quote}; if it is in base currency, {derive}"
    )


def _resolve_columns(
    frame: pd.DataFrame,
    path: Path,
    mapping: dict[str, str],
    datetime_column: str | None,
    derive_amount: bool,
    *,
    volume_in: str = "base",
    quote: str | None = None,
    volume_note: str | None = None,
) -> dict[str, str | None]:
    """canonical name -> file column (``amount`` is None when derived: --derive-amount, --volume-in quote).

    ``quote``: the quote currency of the instrument when known; ``volume_note``: what the file's format says
    about its volume column (for the hint when the amount is missing)."""
    columns = [str(c) for c in frame.columns]
    frame.columns = columns
    lower = {c.lower().strip(): c for c in columns}
    resolved: dict[str, str | None] = {}
    wanted = ["datetime"] + BAR_COLUMNS
    if datetime_column:
        mapping = {**mapping, "datetime": datetime_column}
    for canon in wanted:
        if canon in mapping:
            if canon == "amount" and volume_in == "quote":
                raise ConfigError(
                    f"--column amount={mapping[canon]} and --volume-in quote both given",
                    hint="--volume-in quote takes the amount from the volume column: drop one of them",
                )
            if mapping[canon] not in columns:
                raise ImportDataError(
                    f"{path.name}: column {mapping[canon]!r} (mapped to {canon}) not found; file columns: {columns}",
                    hint=f"fix the mapping, e.g. --column {canon}=<one of the file columns>",
                )
            resolved[canon] = mapping[canon]
            continue
        found = next((lower[a] for a in DEFAULT_ALIASES[canon] if a in lower), None)
        if canon == "amount" and volume_in == "quote":
            if found is not None:
                raise ImportDataError(
                    f"{path.name}: --volume-in quote makes the amount from column {resolved['volume']!r}, but the file "
                    f"has an amount column {found!r} too",
                    hint="drop --volume-in quote (map the base volume with --column volume=COLUMN), or pick the "
                    "quote-volume column with --column volume=COLUMN",
                )
            resolved[canon] = None
            continue
        if found is None and canon == "amount" and derive_amount:
            resolved[canon] = None
            continue
        if found is None:
            if canon == "datetime":
                hint = "name it with --datetime-column COLUMN"
            elif canon == "amount":
                hint = _missing_amount_hint(str(resolved["volume"]), quote, volume_note)
            elif canon == "volume" and any(re.fullmatch(r"volume[ _]+\w+", c.strip(), re.I) for c in columns):
                per_ccy = [c for c in columns if re.fullmatch(r"volume[ _]+\w+", c.strip(), re.I)]
                hint = (
                    f"the volume columns are {per_ccy}: map the base-currency one with --column volume=COLUMN and "
                    "the quote-currency one with --column amount=COLUMN"
                )
                if {"unix", "symbol"} <= set(lower) or "unix timestamp" in lower:
                    hint += ", or pass --format cryptodatadownload (a CryptoDataDownload file)"
            else:
                hint = f"map it with --column {canon}=COLUMN"
            raise ImportDataError(f"{path.name}: missing column {canon!r}; file columns: {columns}", hint=hint)
        resolved[canon] = found
    return resolved


def _row_ref(path: Path, pos: int, first_line: int | None | bool = True) -> str:
    """'row N' (1-based data row) and, for CSV, the file line. ``first_line``: the file line of the first data
    row (``True``: 2 for CSV with its header on line 1, none for binary files; ``None``: no line numbers)."""
    if first_line is True:
        first_line = None if path.name.lower().endswith(PARQUET_SUFFIXES + FEATHER_SUFFIXES + JSON_SUFFIXES) else 2
    if first_line is None or first_line is False:
        return f"row {pos + 1}"
    return f"row {pos + 1} (line {pos + first_line})"


def parse_timestamps(
    values: pd.Series,
    path: Path,
    column: str,
    *,
    time_format: str = "auto",
    timezone: str = "UTC",
    first_line: int | None | bool = True,
) -> np.ndarray:
    """A timestamp column -> int64 epoch ms UTC. ISO strings without an offset are local to ``timezone``;
    epoch numbers (``s``, ``ms``, ``us``) are UTC by definition. Raises ImportDataError naming the first bad row
    (``first_line``: see :func:`_row_ref`)."""
    if time_format not in TIME_FORMATS:
        raise ConfigError(f"unknown time format {time_format!r}", hint=f"use one of {', '.join(TIME_FORMATS)}")
    series = values.reset_index(drop=True)
    if series.isna().any():
        pos = int(np.flatnonzero(series.isna().to_numpy())[0])
        raise ImportDataError(
            f"{path.name}: empty timestamp in column {column!r} at {_row_ref(path, pos, first_line)}",
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
                    hint="pass --time-format us for epoch microseconds (Binance spot data from 2025); convert "
                    "nanoseconds to milliseconds, or give ISO strings",
                )
        else:
            fmt = "iso"
    if fmt in ("s", "ms", "us"):
        unit = {"s": "seconds", "ms": "milliseconds", "us": "microseconds"}[fmt]
        numbers = pd.to_numeric(series, errors="coerce")
        bad = numbers.isna().to_numpy()
        if bad.any():
            pos = int(np.flatnonzero(bad)[0])
            raise ImportDataError(
                f"{path.name}: cannot parse timestamp {series.iloc[pos]!r} in column {column!r} at "
                f"{_row_ref(path, pos, first_line)} as epoch {unit}",
                hint="fix the row, or choose the right --time-format (auto, iso, s, ms, us)",
            )
        scale = {"s": 1000.0, "ms": 1.0, "us": 0.001}[fmt]
        ms_float = numbers.to_numpy(dtype=float) * scale
        frac = np.abs(ms_float - np.round(ms_float)) > 1e-3
        if frac.any():
            pos = int(np.flatnonzero(frac)[0])
            raise ImportDataError(
                f"{path.name}: timestamp {series.iloc[pos]!r} in column {column!r} at {_row_ref(path, pos, first_line)} "
                f"is not a whole millisecond as epoch {unit}",
                hint="check --time-format (s, ms or us)",
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
                f"{_row_ref(path, pos, first_line)} as an ISO date/time",
                hint="use ISO format such as 2024-01-01T05:00:00 (or +00:00 / Z), epoch numbers with "
                "--time-format s or ms, or fix the row",
            )
    if idx.tz is None:
        try:
            idx = idx.tz_localize(timezone, ambiguous="NaT", nonexistent="NaT")
        except Exception as exc:  # noqa: BLE001
            raise ConfigError(
                f"cannot apply timezone {timezone!r} ({exc})", hint="use an IANA name such as UTC"
            ) from exc
        bad = np.asarray(idx.isna())
        if bad.any():
            pos = int(np.flatnonzero(bad)[0])
            raise ImportDataError(
                f"{path.name}: local time {series.iloc[pos]!r} at {_row_ref(path, pos, first_line)} is ambiguous or does not "
                f"exist in timezone {timezone!r} (daylight-saving change)",
                hint="export the file in UTC or with explicit offsets (e.g. +01:00)",
            )
    return idx.tz_convert("UTC").as_unit("ms").asi8.astype(np.int64)


def _check_alignment(
    ts: np.ndarray, tf: Timeframe, path: Path, column: str, raw: pd.Series, first_line: int | None | bool = True
) -> None:
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
        f"{path.name}: timestamp {raw.iloc[pos]!r} at {_row_ref(path, pos, first_line)} ({when}) is not aligned to the "
        f"{tf.name} timeframe (column {column!r})",
        hint=hint,
    )


# --------------------------------------------------------------------------------------------- --format readers
# Exports of common tools, each read as it is published (docs/import.md "Recipes"; the test fixtures in
# tests/fixtures/recipes/ copy their layouts). Each reader returns the table and what the format says about it.

#: Binance public-data klines (https://data.binance.vision, github.com/binance/binance-public-data): 12 columns,
#: no header row in spot files (a header row in USD-M futures files)
BINANCE_COLUMNS = [
    "open_time",
    "open",
    "high",
    "low",
    "close",
    "volume",
    "close_time",
    "quote_volume",
    "count",
    "taker_buy_volume",
    "taker_buy_quote_volume",
    "ignore",
]
_BINANCE_NAME = re.compile(r"^[A-Za-z0-9]+-(?P<tf>\d+[smhdw])-\d{4}-\d{2}(?:-\d{2})?\.(?:csv|zip)$")
#: freqtrade data files: <BASE>_<QUOTE>-<tf>.<ext> (spot), <BASE>_<QUOTE>_<SETTLE>-<tf>-futures.<ext> (swaps)
_FREQTRADE_NAME = re.compile(
    r"^(?P<pair>[A-Za-z0-9]+_[A-Za-z0-9]+(?:_[A-Za-z0-9]+)?)-(?P<tf>\d+[smhdwMy])(?:-(?P<candle>[A-Za-z_]+))?"
    r"\.(?:feather|ftr|json|json\.gz|jsongz|parquet)$"
)
OHLCV_COLUMNS = ["timestamp", "open", "high", "low", "close", "volume"]  # ccxt's fetch_ohlcv row


@dataclass
class _Loaded:
    """A file read for one --format: its table and what the format says about it."""

    frame: pd.DataFrame
    mapping: dict[str, str] = field(default_factory=dict)  # canonical name -> file column
    first_line: int | None | bool = True  # file line of the first data row (see _row_ref)
    time_format: str | None = None  # fixed by the format (the time column converted to epoch ms)
    instrument: str | None = None  # from the file name or content
    timeframe: str | None = None  # from the file name
    bar_ms: int | None = None  # bar length the file proves (Binance close_time - open_time)
    volume_in: str | None = None  # "quote" when the file's only volume is in quote currency
    volume_note: str | None = None  # what the format says about its volume (for the missing-amount hint)
    quote: str | None = None  # quote currency, when known


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _epoch_ms(values: pd.Series, path: Path, column: str, first_line: int | None | bool, units: str) -> np.ndarray:
    """Epoch numbers -> int64 epoch ms, the unit told per value: ``s|ms`` (below 1e11: seconds, else milliseconds;
    CryptoDataDownload files hold either), ``ms|us`` (from 1e14: microseconds, Binance spot from 2025), ``ms``."""
    series = values.reset_index(drop=True)
    numbers = pd.to_numeric(series, errors="coerce")
    desc = {"s|ms": "seconds or milliseconds", "ms|us": "milliseconds or microseconds", "ms": "milliseconds"}[units]
    bad = numbers.isna().to_numpy()
    if bad.any():
        pos = int(np.flatnonzero(bad)[0])
        raise ImportDataError(
            f"{path.name}: cannot parse timestamp {series.iloc[pos]!r} in column {column!r} at "
            f"{_row_ref(path, pos, first_line)} as epoch {desc}",
            hint="every row needs a bar open time: fix or remove the row",
        )
    v = numbers.to_numpy(dtype=np.float64)
    if units == "s|ms":
        ms, off = np.where(v < _EPOCH_S_MAX, v * 1000.0, v), (v <= 0) | (v >= _EPOCH_MS_MAX)
    elif units == "ms|us":
        ms, off = np.where(v >= _EPOCH_MS_MAX, v / 1000.0, v), (v < _EPOCH_S_MAX) | (v >= _EPOCH_MS_MAX * 1000)
    else:
        ms, off = v, (v < _EPOCH_S_MAX) | (v >= _EPOCH_MS_MAX)
    frac = ~off & (np.abs(ms - np.round(ms)) > 1e-6)
    if off.any() or frac.any():
        pos = int(np.flatnonzero(off | frac)[0])
        if frac[pos]:
            what = f"is not a whole millisecond as epoch {desc}"
        elif 0 < v[pos] < _EPOCH_S_MAX:
            what = f"looks like epoch seconds, not {desc}"
        elif v[pos] >= _EPOCH_MS_MAX and units == "ms":
            what = "looks like epoch microseconds or nanoseconds, not milliseconds"
        else:
            what = f"is not an epoch time in {desc}"
        raise ImportDataError(
            f"{path.name}: timestamp {series.iloc[pos]!r} in column {column!r} at {_row_ref(path, pos, first_line)} "
            f"{what}",
            hint="fix or remove the row, or check --format",
        )
    return np.round(ms).astype(np.int64)


def _read_ohlcv_json(path: Path, fmt: str) -> pd.DataFrame:
    """``[[ms, open, high, low, close, volume], ...]`` (ccxt's fetch_ohlcv, freqtrade's JSON data files)."""
    if not path.is_file():
        raise ImportDataError(f"input file {str(path)!r} does not exist", hint="check the path")
    shape = "[[timestamp ms, open, high, low, close, volume], ...]"
    try:
        opener = gzip.open if path.name.lower().endswith(("gz",)) else open
        with opener(path, "rt", encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, ValueError, EOFError) as exc:
        raise ImportDataError(
            f"cannot read {path.name!r} as JSON ({type(exc).__name__}: {exc})",
            hint=f"--format {fmt} JSON files hold {shape}",
        ) from exc
    if not isinstance(data, list) or not data:
        raise ImportDataError(
            f"{path.name}: the JSON is {type(data).__name__ if data else 'empty'}, not a list of rows",
            hint=f"--format {fmt} JSON files hold {shape}",
        )
    for pos, row in enumerate(data):
        if not isinstance(row, list) or len(row) < 6:
            raise ImportDataError(
                f"{path.name}: row {pos + 1} is {json.dumps(row)[:80]}, not {shape[1:-7]}",
                hint=f"--format {fmt} JSON files hold {shape}",
            )
    return pd.DataFrame([row[:6] for row in data], columns=OHLCV_COLUMNS)


def _csv_has_header(path: Path, skip_rows: int) -> bool:
    lines = _first_lines(path, skip_rows + 1)
    return bool(lines) and len(lines) > skip_rows and not _is_number(lines[skip_rows].split(",")[0].strip())


def _load_generic(path: Path, skip_rows: int, instrument: str | None) -> _Loaded:
    if skip_rows and path.name.lower().endswith(PARQUET_SUFFIXES + FEATHER_SUFFIXES):
        raise ConfigError(f"--skip-rows {skip_rows} applies to CSV files, not {path.name!r}", hint="drop --skip-rows")
    frame = _read_table(path, skip_rows)
    return _Loaded(
        frame,
        first_line=True if not skip_rows else skip_rows + 2,
        quote=instrument.split("-")[1] if instrument and "-" in instrument else None,
    )


def _load_cryptodatadownload(path: Path, skip_rows: int, instrument: str | None) -> _Loaded:
    """A banner line (``https://www.CryptoDataDownload.com``), then ``unix,date,symbol,open,high,low,close,
    Volume <BASE>,Volume <QUOTE>[,tradecount]``, newest first; ``unix`` in seconds or milliseconds."""
    if not skip_rows:
        lines = _first_lines(path, 2)
        skip_rows = 1 if len(lines) == 2 and "," not in lines[0] else 0  # the banner line
    frame = _read_table(path, skip_rows)
    frame.columns = [str(c).strip() for c in frame.columns]
    lower = {c.lower(): c for c in frame.columns}
    loaded = _Loaded(frame, first_line=skip_rows + 2)
    time_col = next((lower[k] for k in ("unix", "unix timestamp", "timestamp") if k in lower), None)
    if time_col is not None:
        frame[time_col] = _epoch_ms(frame[time_col], path, time_col, loaded.first_line, "s|ms")
        loaded.mapping["datetime"], loaded.time_format = time_col, "ms"
    elif "date" in lower:
        loaded.mapping["datetime"], loaded.time_format = lower["date"], "iso"
    else:
        raise ImportDataError(
            f"{path.name}: no 'unix' or 'date' column; file columns: {list(frame.columns)}",
            hint="a CryptoDataDownload file has the header unix,date,symbol,open,high,low,close,Volume BASE,Volume QUOTE",
        )
    per_ccy = {
        m.group(1).upper(): c
        for c in frame.columns
        if (m := re.fullmatch(r"volume[ _]+([A-Za-z0-9]+)", c, re.IGNORECASE))
    }
    base = quote = None
    if instrument:
        parts = instrument.split("-")
        base, quote = parts[0], (parts[1] if len(parts) > 1 else None)
    else:  # the pair from the symbol column: BTC/USDT, or BTCUSDT split by the volume columns' currencies
        sym_col = lower.get("symbol")
        symbols = sorted(set(frame[sym_col].dropna().astype(str).str.strip())) if sym_col else []
        if len(symbols) == 1:
            norm = normalise_symbol(symbols[0]).upper()
            if "-" in norm:
                base, quote = norm.split("-")[:2]
            else:
                pairs = [(b, q) for b in sorted(per_ccy) for q in sorted(per_ccy) if b != q and b + q == norm]
                base, quote = pairs[0] if pairs else (None, None)
        if base is None:
            raise ConfigError(
                f"name the instrument of {path.name!r}" + (f" (symbols {symbols[:3]})" if symbols else ""),
                hint="pass --instrument BASE-QUOTE, e.g. --instrument BTC-USDT (or BTC-USDT-SWAP)",
            )
        loaded.instrument = f"{base}-{quote}"
    loaded.quote = quote
    b_col, q_col = per_ccy.get(base.upper()), per_ccy.get((quote or "").upper())
    if per_ccy and not b_col and not q_col:
        raise ImportDataError(
            f"{path.name}: the volume columns {list(per_ccy.values())} are in neither {base} nor {quote}",
            hint="check --instrument (the file's pair), or map them with --column volume=COLUMN --column amount=COLUMN",
        )
    if b_col:
        loaded.mapping["volume"] = b_col
        if q_col:
            loaded.mapping["amount"] = q_col
        else:
            loaded.volume_note = f"column {b_col!r} is in base currency ({base})"
    elif q_col:  # only the quote volume: it is the amount, the base volume is derived from it
        loaded.mapping["volume"], loaded.volume_in = q_col, "quote"
    return loaded


def _load_binance(path: Path, skip_rows: int, instrument: str | None) -> _Loaded:
    """data.binance.vision klines: ``open_time, open, high, low, close, volume, close_time, quote_asset_volume,
    trades, taker_buy_base, taker_buy_quote, ignore``; times in ms (µs in spot files from 2025)."""
    header = _csv_has_header(path, skip_rows)
    frame = _read_table(path, skip_rows, header=header, any_csv=True)
    if frame.shape[1] < 8:
        raise ImportDataError(
            f"{path.name}: {frame.shape[1]} columns, not Binance klines ({', '.join(BINANCE_COLUMNS[:8])}, ...)",
            hint="give a klines CSV (or its .zip) from data.binance.vision, or use --format generic",
        )
    frame.columns = BINANCE_COLUMNS[: frame.shape[1]] + [
        f"extra_{i}" for i in range(frame.shape[1] - len(BINANCE_COLUMNS))
    ]
    loaded = _Loaded(frame, first_line=skip_rows + (2 if header else 1), time_format="ms")
    raw_open = pd.to_numeric(frame["open_time"], errors="coerce").to_numpy(dtype=np.float64)
    open_ms = _epoch_ms(frame["open_time"], path, "open_time", loaded.first_line, "ms|us")
    close = pd.to_numeric(frame["close_time"], errors="coerce").to_numpy(dtype=np.float64)
    if not np.isnan(close).any():  # close_time = open_time + bar - 1 (in the file's unit): the bar length
        per_ms = np.where(raw_open >= _EPOCH_MS_MAX, 1000.0, 1.0)
        lengths, counts = np.unique(np.round((close - raw_open + 1) / per_ms).astype(np.int64), return_counts=True)
        loaded.bar_ms = int(lengths[int(np.argmax(counts))])
    frame["open_time"] = open_ms
    loaded.mapping.update(datetime="open_time", volume="volume", amount="quote_volume")
    match = _BINANCE_NAME.match(path.name)
    loaded.timeframe = match.group("tf") if match else None
    return loaded


def _load_ccxt(path: Path, skip_rows: int, instrument: str | None) -> _Loaded:
    """ccxt's ``fetch_ohlcv`` rows ``[ms, open, high, low, close, volume]`` saved as JSON, or as CSV with or without
    a header row."""
    if path.name.lower().endswith(JSON_SUFFIXES):
        loaded = _Loaded(_read_ohlcv_json(path, "ccxt"), first_line=None)
        time_col = "timestamp"
    else:
        header = _csv_has_header(path, skip_rows)
        frame = _read_table(path, skip_rows, header=header)
        loaded = _Loaded(frame, first_line=skip_rows + (2 if header else 1))
        if header:
            lower = {str(c).lower().strip(): c for c in frame.columns}
            time_col = next((lower[a] for a in DEFAULT_ALIASES["datetime"] if a in lower), None)
            if time_col is None:
                raise ImportDataError(
                    f"{path.name}: no time column; file columns: {list(frame.columns)}",
                    hint="ccxt rows are timestamp,open,high,low,close,volume",
                )
        else:
            if frame.shape[1] < 6:
                raise ImportDataError(
                    f"{path.name}: {frame.shape[1]} columns, not ccxt's timestamp,open,high,low,close,volume",
                    hint="give fetch_ohlcv rows [ms, o, h, l, c, v], or use --format generic",
                )
            frame.columns = OHLCV_COLUMNS + [f"extra_{i}" for i in range(frame.shape[1] - 6)]
            time_col = "timestamp"
    frame = loaded.frame
    frame[time_col] = _epoch_ms(frame[time_col], path, str(time_col), loaded.first_line, "ms")
    loaded.mapping["datetime"], loaded.time_format = str(time_col), "ms"
    loaded.volume_note = "ccxt's volume is in base currency"
    loaded.quote = instrument.split("-")[1] if instrument and "-" in instrument else None
    return loaded


def _load_freqtrade(path: Path, skip_rows: int, instrument: str | None) -> _Loaded:
    """freqtrade's data files: Feather/Parquet with ``date`` (UTC) ``open high low close volume``, or JSON
    ``[[ms, o, h, l, c, v], ...]``; the name gives the pair and timeframe (``BTC_USDT-1h.feather``,
    ``BTC_USDT_USDT-1h-futures.feather``)."""
    if skip_rows:
        raise ConfigError("--skip-rows does not apply to freqtrade's Feather/JSON files", hint="drop --skip-rows")
    match = _FREQTRADE_NAME.match(path.name)
    name_inst = name_tf = None
    if match:
        candle = match.group("candle") or "spot"
        if candle not in ("spot", "futures"):
            raise ImportDataError(
                f"{path.name} holds freqtrade's {candle!r} candles, not traded bars",
                hint="import the pair's spot file (BTC_USDT-1h.feather) or futures file (BTC_USDT_USDT-1h-futures.feather)",
            )
        parts = match.group("pair").upper().split("_")
        name_inst = f"{parts[0]}-{parts[1]}" + ("-SWAP" if len(parts) == 3 or candle == "futures" else "")
        name_tf = match.group("tf")
    if path.name.lower().endswith(JSON_SUFFIXES):
        loaded = _Loaded(_read_ohlcv_json(path, "freqtrade"), first_line=None, time_format="ms")
        loaded.frame["timestamp"] = _epoch_ms(loaded.frame["timestamp"], path, "timestamp", None, "ms")
        loaded.mapping["datetime"] = "timestamp"
    elif path.name.lower().endswith(FEATHER_SUFFIXES + PARQUET_SUFFIXES):
        loaded = _Loaded(_read_table(path), first_line=None)
    else:
        raise ImportDataError(
            f"{path.name}: not a freqtrade data file", hint="give its .feather, .json or .parquet file"
        )
    loaded.instrument, loaded.timeframe = name_inst, name_tf
    loaded.volume_note = "freqtrade's volume is in base currency"
    inst = name_inst or instrument
    loaded.quote = inst.split("-")[1] if inst and "-" in inst else None
    return loaded


_LOADERS = {
    "generic": _load_generic,
    "cryptodatadownload": _load_cryptodatadownload,
    "binance": _load_binance,
    "ccxt": _load_ccxt,
    "freqtrade": _load_freqtrade,
}
_TF_BY_MS = {t.ms: t.name for t in TIMEFRAMES.values()}


def read_bar_file(
    path: str | Path,
    timeframe: str | None,
    *,
    instrument: str | Sequence[str] | None = None,
    symbol_column: str | None = None,
    columns: Sequence[str] | Mapping[str, str] | None = None,
    datetime_column: str | None = None,
    time_format: str = "auto",
    timezone: str = "UTC",
    derive_amount: bool = False,
    file_format: str = "generic",
    skip_rows: int = 0,
    volume_in: str | None = None,
) -> dict[str, pd.DataFrame]:
    """Read one OHLCV file into ``{instrument: bars}`` (``datetime`` UTC column + six floats).

    Without ``symbol_column`` the file holds one instrument, named by ``instrument``. With it, rows are
    grouped by that column (values like ``BTC/USDT`` are normalised to ``BTC-USDT``); ``instrument`` then
    optionally restricts the import to some of them. Raises ImportDataError (file, column, row, what to do).

    ``file_format`` (see :data:`FILE_FORMATS` and docs/import.md "Recipes"): ``generic`` is a CSV (after
    ``skip_rows`` lines), Parquet or Feather table with a header row; ``binance``, ``cryptodatadownload``,
    ``ccxt`` and ``freqtrade`` read those tools' exports as published (freqtrade and Binance file names also give
    the instrument and/or ``timeframe``, which may then be None). ``volume_in="quote"``: the volume column is in
    quote currency; it becomes ``amount`` and ``volume = amount / ((high + low + close) / 3)``.
    """
    return _read_bar_file(
        path,
        timeframe,
        instrument=instrument,
        symbol_column=symbol_column,
        columns=columns,
        datetime_column=datetime_column,
        time_format=time_format,
        timezone=timezone,
        derive_amount=derive_amount,
        file_format=file_format,
        skip_rows=skip_rows,
        volume_in=volume_in,
    )[1]


def _check_read_options(
    file_format: str,
    skip_rows: Any,
    volume_in: str | None,
    derive_amount: bool,
    time_format: str,
    timezone: str,
    datetime_column: str | None,
    mapping: dict[str, str],
    symbol_column: str | None,
) -> None:
    if file_format not in FILE_FORMATS:
        raise ConfigError(f"unknown file format {file_format!r}", hint=f"use one of {', '.join(FILE_FORMATS)}")
    if isinstance(skip_rows, bool) or not isinstance(skip_rows, (int, np.integer)) or skip_rows < 0:
        raise ConfigError(
            f"--skip-rows {skip_rows!r} is not a whole number >= 0",
            hint="give the number of lines before the header row, e.g. --skip-rows 1",
        )
    if volume_in is not None and volume_in not in VOLUME_UNITS:
        raise ConfigError(f"unknown volume currency {volume_in!r}", hint="use --volume-in base or --volume-in quote")
    if volume_in == "quote" and derive_amount:
        raise ConfigError(
            "--derive-amount and --volume-in quote both given",
            hint="--volume-in quote: the volume column is the amount (quote currency); --derive-amount: "
            "the volume is in base currency and the amount is estimated; pass the one that is true",
        )
    if file_format == "generic":
        return
    for option, given in (
        ("--time-format", time_format != "auto"),
        ("--timezone", timezone != "UTC"),
        ("--datetime-column", datetime_column is not None or "datetime" in mapping),
        ("--symbol-column", symbol_column is not None),
    ):
        if given:
            raise ConfigError(
                f"{option} does not apply with --format {file_format}",
                hint="the format fixes the time column (epoch times are UTC) and holds one instrument per file: "
                "drop the option, or read the file with --format generic",
            )


def _read_bar_file(
    path: str | Path,
    timeframe: str | None,
    *,
    instrument: str | Sequence[str] | None = None,
    symbol_column: str | None = None,
    columns: Sequence[str] | Mapping[str, str] | None = None,
    datetime_column: str | None = None,
    time_format: str = "auto",
    timezone: str = "UTC",
    derive_amount: bool = False,
    file_format: str = "generic",
    skip_rows: int = 0,
    volume_in: str | None = None,
) -> tuple[Timeframe, dict[str, pd.DataFrame]]:
    """:func:`read_bar_file`, also returning the timeframe (given, or from the file's name or content)."""
    from ..store.layout import check_instrument

    path = Path(path)
    _check_timezone(timezone)
    mapping = parse_column_map(columns)
    if symbol_column is None and "symbol" in mapping:
        symbol_column = mapping.pop("symbol")
    mapping.pop("symbol", None)
    _check_read_options(
        file_format, skip_rows, volume_in, derive_amount, time_format, timezone, datetime_column, mapping, symbol_column
    )
    tf = get_timeframe(timeframe) if timeframe is not None else None
    wanted = [instrument] if isinstance(instrument, str) else list(instrument or [])
    # One instrument, one name: OKX instIds are upper case, and Qlib keys instruments case-insensitively.
    wanted = [w.strip().upper() for item in wanted for w in str(item).split(",") if w.strip()]
    for name in wanted:
        check_instrument(name)
    if file_format == "generic" and symbol_column is None and len(wanted) != 1:
        raise ConfigError(
            "name the instrument of " + repr(path.name) + (f" (got {', '.join(wanted)})" if wanted else ""),
            hint="pass --instrument ID (e.g. BTC-USDT), or --symbol-column COLUMN for files holding several",
        )
    if file_format != "generic" and len(wanted) > 1:
        raise ConfigError(
            f"--format {file_format} files hold one instrument; got {', '.join(wanted)}", hint="pass one --instrument"
        )
    loaded = _LOADERS[file_format](path, int(skip_rows), wanted[0] if wanted else None)
    if loaded.instrument is not None:  # from the file's name or content
        if file_format == "freqtrade" and wanted and wanted != [loaded.instrument]:
            raise ConfigError(
                f"{path.name} holds {loaded.instrument} (from its name), not {wanted[0]}",
                hint="drop --instrument (freqtrade file names give the pair), or rename the file",
            )
        wanted = wanted or [loaded.instrument]
    if symbol_column is None and len(wanted) != 1:
        raise ConfigError(f"name the instrument of {path.name!r}", hint="pass --instrument ID, e.g. BTC-USDT")
    for name in wanted:
        check_instrument(name)
    if loaded.timeframe is not None:  # from the file's name
        named = get_timeframe(loaded.timeframe)
        if tf is not None and tf != named:
            raise ConfigError(
                f"{path.name} holds {named.name} bars (from its name), not --timeframe {tf.name}",
                hint=f"pass --timeframe {named.name}, or leave it out",
            )
        tf = named
    if loaded.bar_ms is not None:  # Binance: close_time - open_time proves the bar length
        proven = _TF_BY_MS.get(loaded.bar_ms)
        if tf is None and proven is not None:
            tf = get_timeframe(proven)
        if tf is not None and loaded.bar_ms != tf.ms:
            raise ImportDataError(
                f"{path.name}: its bars are {loaded.bar_ms / 60_000:g} min long (close_time - open_time), not {tf.name}",
                hint=f"pass --timeframe {proven}" if proven else "check the file",
            )
    if tf is None:
        raise ConfigError(
            f"no timeframe for {path.name!r}", hint="pass --timeframe, e.g. --timeframe 1h (the bar length of the file)"
        )
    if volume_in is not None and loaded.volume_in is not None and volume_in != loaded.volume_in:
        raise ConfigError(
            f"--volume-in {volume_in}, but {path.name}'s only volume column is in {loaded.volume_in} currency",
            hint="drop --volume-in",
        )
    volume_in = volume_in or loaded.volume_in or "base"
    mapping = {**loaded.mapping, **mapping}
    time_format = loaded.time_format or time_format
    first_line = loaded.first_line
    frame = loaded.frame
    if isinstance(frame.index, pd.DatetimeIndex) and not any(
        str(c).lower() in DEFAULT_ALIASES["datetime"] for c in frame.columns
    ):
        frame = frame.reset_index()  # Parquet written from a DataFrame indexed by time
    if len(frame) == 0:
        raise ImportDataError(f"{path.name}: the file has no rows", hint="check the file")
    resolved = _resolve_columns(
        frame,
        path,
        mapping,
        datetime_column,
        derive_amount,
        volume_in=volume_in,
        quote=loaded.quote,
        volume_note=loaded.volume_note,
    )
    if symbol_column is not None and symbol_column not in frame.columns:
        raise ImportDataError(
            f"{path.name}: symbol column {symbol_column!r} not found; file columns: {list(frame.columns)}",
            hint="pass the name of the column holding the instrument ids with --symbol-column",
        )
    frame = frame.reset_index(drop=True)
    ts = parse_timestamps(
        frame[resolved["datetime"]],
        path,
        resolved["datetime"],
        time_format=time_format,
        timezone=timezone,
        first_line=first_line,
    )
    _check_alignment(ts, tf, path, resolved["datetime"], frame[resolved["datetime"]], first_line)
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
                f"{path.name}: value {raw.iloc[pos]!r} in column {col!r} ({canon}) at {_row_ref(path, pos, first_line)} "
                "is not a number",
                hint="use '.' as the decimal separator and no thousands separators, or fix the row",
            )
        out[canon] = numbers.to_numpy(dtype=np.float64)
    typical = (out["high"] + out["low"] + out["close"]) / 3.0
    if volume_in == "quote":  # the file's volume is the quote volume: the amount; base volume from the typical price
        out["amount"] = out["volume"]
        with np.errstate(divide="ignore", invalid="ignore"):
            out["volume"] = out["amount"] / typical
    elif resolved["amount"] is None:
        out["amount"] = out["volume"] * typical
    out = out[["datetime"] + BAR_COLUMNS]
    if symbol_column is None:
        return tf, {wanted[0]: out.sort_values("datetime", kind="stable").reset_index(drop=True)}
    symbols = frame[symbol_column]
    if symbols.isna().any():
        pos = int(np.flatnonzero(symbols.isna().to_numpy())[0])
        raise ImportDataError(
            f"{path.name}: empty instrument in column {symbol_column!r} at {_row_ref(path, pos, first_line)}",
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
                f"{path.name}: bad instrument {name!r} in column {symbol_column!r} at {_row_ref(path, pos, first_line)}",
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
    return tf, result


def import_files(
    store_dir: str | Path,
    paths: Sequence[str | Path],
    timeframe: str | None,
    *,
    overwrite: bool = False,
    lock_timeout: float | None = None,
    **read_options: Any,
) -> list[FileImportResult]:
    """Import files into the store: every file is read and checked first, then written through
    ``store.write_bars(..., source="import:<file name>")``. ``read_options`` go to :func:`read_bar_file`.

    Conflicting stored bars are kept unless ``overwrite``; nothing is written when any file fails to read.
    Writing holds the store's writer lock (waiting up to ``lock_timeout`` seconds for another writer).
    ``timeframe`` may be None for files whose name or content gives it (``file_format`` freqtrade, binance).
    """
    from .. import store

    if not paths:
        raise ConfigError("no input files", hint="give one or more CSV or Parquet files")
    if timeframe is not None:
        get_timeframe(timeframe)
    parsed: list[tuple[Path, Timeframe, dict[str, pd.DataFrame]]] = []
    for raw_path in paths:
        path = Path(raw_path)
        parsed.append((path, *_read_bar_file(path, timeframe, **read_options)))
    results = []
    with store.store_lock(store_dir, command="import", timeout=lock_timeout):
        _write_imports(store_dir, parsed, overwrite, results)
    return results


def _write_imports(store_dir, parsed, overwrite, results) -> None:
    from .. import store

    for path, tf, by_instrument in parsed:
        for instrument, bars in by_instrument.items():
            res = store.write_bars(
                store_dir,
                instrument,
                tf.name,
                bars,
                source=f"import:{path.name}",
                on_conflict="overwrite" if overwrite else "keep",
            )
            results.append(
                FileImportResult(
                    file=path.name,
                    instrument=instrument,
                    rows_read=len(bars),
                    rows_repeated=res.rows_repeated,
                    rows_added=res.rows_added,
                    rows_identical=res.rows_identical,
                    conflicts=res.conflicts,
                    rows_replaced=res.rows_replaced,
                    quarantined=res.quarantined,
                    quarantine_reasons=dict(res.quarantine_reasons),
                    conflict_examples=list(res.conflict_examples),
                    first=bars["datetime"].iloc[0] if len(bars) else None,
                    last=bars["datetime"].iloc[-1] if len(bars) else None,
                    timeframe=tf.name,
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
                raise ImportDataError(
                    f"{path.name}: column {datetime_column!r} not found; file columns: {list(frame.columns)}",
                    hint="pass the settlement time column with --datetime-column",
                )
            found[canon] = datetime_column
            continue
        found[canon] = next((lower[a] for a in aliases if a in lower), None)
        if found[canon] is None and canon != "realized_rate":
            raise ImportDataError(
                f"{path.name}: missing column {canon!r} for funding rates; file columns: {list(frame.columns)}",
                hint=(
                    "name the settlement time column with --datetime-column"
                    if canon == "datetime"
                    else "the rate column must be named funding_rate (or fundingRate, rate, last_funding_rate)"
                ),
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
            raise ImportDataError(
                f"{path.name}: value {raw.iloc[pos]!r} in column {col!r} at {_row_ref(path, pos)} is not a number",
                hint="use '.' as the decimal separator, or fix the row",
            )
        out[canon] = numbers.to_numpy(dtype=np.float64)
    if symbol_column is not None:
        if symbol_column not in frame.columns:
            raise ImportDataError(
                f"{path.name}: symbol column {symbol_column!r} not found; file columns: {list(frame.columns)}",
                hint="pass the column holding the instrument ids with --symbol-column",
            )
        names = frame[symbol_column].astype(str).map(normalise_symbol).str.upper().to_numpy()
    else:
        if not instrument:
            raise ConfigError(
                f"name the instrument of {path.name!r}", hint="pass --instrument BTC-USDT-SWAP or --symbol-column"
            )
        names = np.full(len(frame), instrument.strip().upper(), dtype=object)
    wanted = {w.strip().upper() for w in (instrument or "").split(",") if w.strip()} if symbol_column else set()
    result: dict[str, pd.DataFrame] = {}
    for name in sorted(set(names.tolist())):
        if wanted and name not in wanted:
            continue
        from ..store.layout import check_instrument

        check_instrument(name)
        if not name.endswith("-SWAP"):
            raise ImportDataError(
                f"{path.name}: funding rates for {name!r}, which is not a perpetual swap",
                hint="funding belongs to swaps: name them as OKX swap instIds, e.g. BTC-USDT-SWAP",
            )
        result[name] = out[names == name].sort_values("funding_time", kind="stable").reset_index(drop=True)
    if not result:
        raise ImportDataError(
            f"{path.name}: no funding rows for {', '.join(sorted(wanted))}", hint="check --instrument"
        )
    return result


def import_funding_files(
    store_dir: str | Path,
    paths: Sequence[str | Path],
    *,
    overwrite: bool = False,
    lock_timeout: float | None = None,
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
                res = store.write_funding(
                    store_dir,
                    instrument,
                    frame,
                    f"import:{path.name}",
                    on_conflict="overwrite" if overwrite else "keep",
                )
                results.append(
                    FileImportResult(
                        file=path.name,
                        instrument=instrument,
                        rows_read=len(frame),
                        rows_repeated=res.rows_repeated,
                        rows_added=res.rows_added,
                        rows_identical=res.rows_identical,
                        conflicts=res.conflicts,
                        rows_replaced=res.rows_replaced,
                        quarantined=res.quarantined,
                        quarantine_reasons=dict(res.quarantine_reasons),
                    )
                )
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
            raise ConfigError(
                f"no bars for {instrument!r} in the files", hint=f"instruments: {', '.join(self.list_instruments())}"
            )
        bars = self._bars[instrument]
        t = bars["datetime"]
        lo, hi = pd.Timestamp(start_ms, unit="ms", tz="UTC"), pd.Timestamp(end_ms, unit="ms", tz="UTC")
        chunk = bars[(t >= lo) & (t < hi)]
        if len(chunk):
            yield chunk.reset_index(drop=True)
