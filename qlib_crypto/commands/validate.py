"""``qlib-crypto validate``: re-hash and check every file of a store (``--repair`` heals what is provable)."""

from __future__ import annotations

import click

from . import lock_timeout_option


@click.command("validate")
@click.option("--store", "store_dir", required=True, type=click.Path(file_okay=False), help="Store directory to check.")
@click.option("--timeframe", default=None, help="Only this timeframe (e.g. 1h).")
@click.option("--instruments", default=None, help="Only these instruments, comma-separated (e.g. BTC-USDT,ETH-USDT).")
@click.option(
    "--report",
    "report_path",
    default=None,
    type=click.Path(dir_okay=False),
    help="Where to write the JSON report (default: STORE/reports/validation-<time>.json).",
)
@click.option(
    "--repair",
    is_flag=True,
    help="Also heal what the data files prove: rebuild a missing or stale manifest from the manifest "
    "embedded in its Parquet file (rows are never changed), delete temporary files of interrupted "
    "writes, orphan manifests and unreadable coverage files. Holds the store's writer lock.",
)
@lock_timeout_option(
    "--repair: seconds to wait for another writer of the store (default 3600, "
    "env QLIB_CRYPTO_LOCK_TIMEOUT; 0 = refuse at once)."
)
def command(
    store_dir: str,
    timeframe: str | None,
    instruments: str | None,
    report_path: str | None,
    repair: bool,
    lock_timeout: float | None,
) -> int:
    """Re-hash every data file against its manifest and check its rows.

    Checks: sha256 against the manifest, readability, row counts, duplicates, OHLC sanity
    (low <= min(open, close), high >= max(open, close), prices > 0, volumes >= 0), NaN, infinite values and
    values beyond float32's range, impossible times (before 2009-01-03 or after now), coverage files,
    stray directories and instrument names that differ only in case. One bad file never stops the check:
    every finding is listed with its path. Gaps are listed as missing intervals (warnings: exchanges skip
    bars without trades). Exit code 0 when clean, 4 when problems are found; the JSON report lists every
    finding. On a read-only store the summary is still printed (the report is then not written).

    \b
    Example:
      qlib-crypto validate --store data/store/synthetic
      qlib-crypto validate --store data/store/okx --timeframe 1h --instruments BTC-USDT --report check.json
      qlib-crypto validate --store data/store/okx --repair     # after a crash or a full disk
    """
    import contextlib
    from datetime import datetime, timezone
    from pathlib import Path

    from ..store import store_lock, validate_store
    from ..store.layout import require_store
    from ..store.lock import check_timeout

    if lock_timeout is not None:
        check_timeout(lock_timeout)
    require_store(store_dir)
    inst = [s.strip() for s in instruments.split(",") if s.strip()] if instruments else None
    guard = (
        store_lock(store_dir, command="validate --repair", timeout=lock_timeout) if repair else contextlib.nullcontext()
    )
    with guard:
        report = validate_store(store_dir, timeframe=timeframe, instruments=inst, repair=repair)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    target = Path(report_path) if report_path else Path(store_dir) / "reports" / f"validation-{stamp}.json"
    click.echo(report.summary())
    try:
        report.write_json(target)
    except OSError as exc:
        click.echo(
            f"warning: the JSON report was not written to {target} ({exc.strerror or exc}); "
            "pass --report PATH to write it elsewhere",
            err=True,
        )
    else:
        click.echo(f"report: {target}")
    return 0 if report.ok else 4
