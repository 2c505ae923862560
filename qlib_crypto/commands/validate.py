"""``qlib-crypto validate``: re-hash and check every file of a store."""
from __future__ import annotations

import click


@click.command("validate")
@click.option("--store", "store_dir", required=True, type=click.Path(file_okay=False), help="Store directory to check.")
@click.option("--timeframe", default=None, help="Only this timeframe (e.g. 1h).")
@click.option("--instruments", default=None, help="Only these instruments, comma-separated (e.g. BTC-USDT,ETH-USDT).")
@click.option("--report", "report_path", default=None, type=click.Path(dir_okay=False),
              help="Where to write the JSON report (default: STORE/reports/validation-<time>.json).")
def command(store_dir: str, timeframe: str | None, instruments: str | None, report_path: str | None) -> int:
    """Re-hash every data file against its manifest and check its rows.

    Checks: sha256 against the manifest, readability, row counts, duplicates, OHLC sanity
    (low <= min(open, close), high >= max(open, close), prices > 0, volumes >= 0), NaN. Gaps are listed
    as missing intervals (warnings: exchanges skip bars without trades). Exit code 0 when clean, 4 when
    problems are found; the JSON report lists every finding.

    \b
    Example:
      qlib-crypto validate --store data/store/synthetic
      qlib-crypto validate --store ./store --timeframe 1h --instruments BTC-USDT --report check.json
    """
    from datetime import datetime, timezone
    from pathlib import Path

    from ..store import validate_store

    inst = [s.strip() for s in instruments.split(",") if s.strip()] if instruments else None
    report = validate_store(store_dir, timeframe=timeframe, instruments=inst)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    target = Path(report_path) if report_path else Path(store_dir) / "reports" / f"validation-{stamp}.json"
    report.write_json(target)
    click.echo(report.summary())
    click.echo(f"report: {target}")
    return 0 if report.ok else 4
