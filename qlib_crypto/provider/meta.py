"""Instrument metadata inside a provider directory: ``<qlib_dir>/meta/instruments.json``.

``dump`` copies the trading rules of every dumped instrument from the store's newest metadata snapshot
(``<store>/meta/instruments/<YYYY-MM-DD>.parquet``, checked against its manifest) into the provider, so a
provider directory is self-contained: ``CryptoExchange`` reads lot sizes, minimum sizes and contract values
from it without access to the raw store. Read with pyarrow only (the dump path imports no pandas).

File layout (JSON, sorted keys, written by full dumps and updates alike, so both give the same bytes)::

    {"schema": 1,
     "read_at": "2024-06-30",              # the day the snapshot was read from the exchange (null: none)
     "snapshot": "2024-06-30.parquet",     # the store file it came from (null: the store has no metadata)
     "instruments": {"BTC-USDT": {"instType": "SPOT", "lotSz": 1e-08, "minSz": 1e-05, "ctVal": null,
                                  "ctMult": null, "tickSz": 0.1, "read_at": "2024-06-30"}, ...}}

Instruments of the provider that are missing from ``instruments`` have no metadata; the backtest then uses
the documented defaults (docs/backtest.md).
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any, Iterable

from ..errors import ProviderError
from .storeread import series_files

META_DIR = "meta"
META_FILE = "instruments.json"
META_REL = f"{META_DIR}/{META_FILE}"
META_SCHEMA = 1
#: the columns copied from a store snapshot (numbers as float or null, instType as a string)
META_NUMBERS = ("lotSz", "minSz", "ctVal", "ctMult", "tickSz")


def _snapshot_rows(store: Path) -> tuple[str | None, str | None, dict[str, dict[str, Any]]]:
    """(snapshot file name, read_at, {instId: fields}) of the store's newest metadata snapshot."""
    files = [f for f in series_files(store / "meta" / "instruments") if f.name[:1].isdigit()]
    if not files:
        return None, None, {}
    f = files[-1]  # file names are the read day (YYYY-MM-DD): the last one is the newest
    import pyarrow as pa
    import pyarrow.parquet as pq

    data = f.path.read_bytes()
    actual = hashlib.sha256(data).hexdigest()
    if actual != f.sha256:
        raise ProviderError(
            f"store file {str(f.path)!r} does not match its manifest (sha256 {actual[:12]}... != {f.sha256[:12]}...)",
            hint="the store fails validation: run qlib-crypto validate, then collect the metadata again",
        )
    try:
        # ParquetFile, not read_table (which imports pandas); one thread: a small file, and pyarrow's thread pool
        # can abort the process at exit when it was used for string columns
        pfile = pq.ParquetFile(pa.BufferReader(data))
        names = [c for c in ("instId", "instType", *META_NUMBERS, "read_at") if c in pfile.schema_arrow.names]
        table = pfile.read(columns=names, use_threads=False)
    except Exception as exc:  # pyarrow raises several types
        raise ProviderError(
            f"store file {str(f.path)!r} cannot be read ({exc})", hint="run qlib-crypto validate"
        ) from exc
    if "instId" not in names:
        raise ProviderError(f"metadata snapshot {str(f.path)!r} has no instId column", hint="run qlib-crypto validate")
    columns = {c: table.column(c).to_pylist() for c in names}
    read_at = f.path.stem
    rows: dict[str, dict[str, Any]] = {}
    for i, inst in enumerate(columns["instId"]):
        if not inst:
            continue
        entry: dict[str, Any] = {"instType": str(columns.get("instType", [None] * (i + 1))[i] or "").upper() or None}
        for key in META_NUMBERS:
            value = columns[key][i] if key in columns else None
            try:
                value = None if value is None else float(value)
            except (TypeError, ValueError):
                value = None
            entry[key] = value if value is not None and math.isfinite(value) else None
        row_read = columns["read_at"][i] if "read_at" in columns else None
        entry["read_at"] = str(row_read) if row_read else read_at
        rows[str(inst)] = entry
    return f.name, read_at, rows


def meta_text(store: str | Path, instruments: Iterable[str]) -> str:
    """The ``meta/instruments.json`` text for ``instruments`` (those with a row in the newest snapshot)."""
    snapshot, read_at, rows = _snapshot_rows(Path(store))
    wanted = sorted(set(instruments))
    doc = {
        "schema": META_SCHEMA,
        "snapshot": snapshot,
        "read_at": read_at,
        "instruments": {name: rows[name] for name in wanted if name in rows},
    }
    return json.dumps(doc, sort_keys=True, indent=1, allow_nan=False) + "\n"


def read_provider_meta(qlib_dir: str | Path) -> dict[str, Any] | None:
    """The metadata document of a provider directory, or None when it has no ``meta/instruments.json``
    (a provider dumped by an older version, or by another tool)."""
    path = Path(qlib_dir) / META_DIR / META_FILE
    if not path.is_file():
        return None
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ProviderError(
            f"instrument metadata {str(path)!r} is unreadable ({exc})",
            hint="dump the provider again (qlib-crypto dump) to rewrite it",
        ) from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("instruments"), dict):
        raise ProviderError(
            f"instrument metadata {str(path)!r} has no 'instruments' mapping",
            hint="dump the provider again (qlib-crypto dump) to rewrite it",
        )
    return doc
