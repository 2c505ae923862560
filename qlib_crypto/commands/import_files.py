"""``qlib-crypto import``: OHLCV bars from CSV or Parquet files -> the raw Parquet store."""

from __future__ import annotations

import click

from . import lock_timeout_option


@click.command("import")
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option(
    "--instrument",
    default=None,
    metavar="ID",
    help="OKX instId of the bars, e.g. BTC-USDT or ETH-USDT-SWAP. Required unless --symbol-column is "
    "given; with it, a comma-separated list restricts the import to those instruments.",
)
@click.option(
    "--timeframe",
    default=None,
    metavar="TF",
    help="Bar length of the file in ccxt spelling, e.g. 1m 5m 1h 4h 1d. Timestamps must be bar open "
    "times of this timeframe. Optional for --format freqtrade and binance (the file name or "
    "close_time gives it).",
)
@click.option(
    "--format",
    "file_format",
    type=click.Choice(["generic", "binance", "cryptodatadownload", "ccxt", "freqtrade"]),
    default="generic",
    show_default=True,
    help="Layout of the files: generic (CSV/Parquet/Feather with a header row), or an export as "
    "published: binance (data.binance.vision klines CSV/.zip), cryptodatadownload (banner line, "
    "unix ms/s, Volume BASE / Volume QUOTE), ccxt (fetch_ohlcv rows as JSON or CSV), freqtrade "
    "(BTC_USDT-1h.feather / .json). See docs/import.md, Recipes.",
)
@click.option(
    "--skip-rows",
    default=0,
    type=click.IntRange(min=0),
    show_default=True,
    metavar="N",
    help="CSV: lines to skip before the header row (e.g. 1 for a banner line).",
)
@click.option(
    "--volume-in",
    type=click.Choice(["base", "quote"]),
    default=None,
    help="Currency of the file's volume column (default base). quote: the column is the quote volume, "
    "stored as amount, and volume = amount / ((high + low + close) / 3).",
)
@click.option(
    "--store",
    "store_dir",
    required=True,
    type=click.Path(file_okay=False),
    help="Store directory, e.g. ./data/store/imported (created if missing).",
)
@click.option(
    "--column",
    "columns",
    multiple=True,
    metavar="NAME=COL",
    help="Map a bar column to a file column, repeatable: --column open=o --column amount=quote_vol. "
    "Names: datetime open high low close volume amount symbol. Common names (Open, vol, "
    "quote_volume, timestamp...) are recognised without a mapping.",
)
@click.option(
    "--datetime-column",
    default=None,
    metavar="COL",
    help="File column holding the bar open time, e.g. --datetime-column open_time.",
)
@click.option(
    "--symbol-column",
    default=None,
    metavar="COL",
    help="File column holding the instrument of each row (files with several instruments), e.g. "
    "--symbol-column symbol. BTC/USDT is read as BTC-USDT and BTC/USDT:USDT as BTC-USDT-SWAP.",
)
@click.option(
    "--time-format",
    type=click.Choice(["auto", "iso", "s", "ms", "us"]),
    default="auto",
    show_default=True,
    help="Timestamps as ISO strings (2024-01-01T05:00:00Z), epoch seconds, milliseconds or microseconds; "
    "auto tells numbers below 1e11 (seconds) from larger ones (milliseconds) and reads text as ISO.",
)
@click.option(
    "--timezone",
    default="UTC",
    show_default=True,
    metavar="TZ",
    help="Timezone of ISO timestamps without an offset, e.g. --timezone Asia/Shanghai (epoch numbers are always UTC).",
)
@click.option(
    "--derive-amount", is_flag=True, help="Files without quote volume: set amount = volume x (high + low + close) / 3."
)
@click.option(
    "--overwrite",
    is_flag=True,
    help="Replace stored bars that conflict with the file (default: keep the stored ones and report).",
)
@click.option(
    "--funding",
    is_flag=True,
    help="The files hold funding rates of perpetual swaps (columns funding_time or timestamp, "
    "funding_rate, optional realized_rate), not bars; --timeframe is not used.",
)
@lock_timeout_option()
def command(
    files: tuple[str, ...],
    instrument: str | None,
    timeframe: str,
    store_dir: str,
    columns: tuple[str, ...],
    datetime_column: str | None,
    symbol_column: str | None,
    time_format: str,
    timezone: str,
    derive_amount: bool,
    overwrite: bool,
    funding: bool,
    lock_timeout: float | None,
    file_format: str,
    skip_rows: int,
    volume_in: str | None,
) -> int:
    """Import OHLCV bars from CSV, Parquet or Feather FILES (and exports read with --format) into the store.

    \b
    Examples:
      qlib-crypto import btc_1h.csv --instrument BTC-USDT --timeframe 1h --store ./data/store/imported
      qlib-crypto import klines.parquet --symbol-column symbol --timeframe 1m \\
          --datetime-column open_time --time-format ms --column volume=base_vol --store data/store/imported
      qlib-crypto import eth.csv --instrument ETH-USDT-SWAP --timeframe 1d --timezone Europe/Berlin \\
          --derive-amount --store data/store/imported
      qlib-crypto import btc_funding.csv --funding --instrument BTC-USDT-SWAP --store data/store/imported
      qlib-crypto import Binance_BTCUSDT_1h.csv --format cryptodatadownload --timeframe 1h --store data/store/imported
      qlib-crypto import BTCUSDT-1h-2024-01.zip --format binance --instrument BTC-USDT --store data/store/imported
      qlib-crypto import user_data/data/binance/*.feather --format freqtrade --derive-amount --store data/store/imported

    Every file is checked before anything is written: a missing column, an unparseable or misaligned
    timestamp, or a non-numeric value stops the import with a message naming the file, column and row,
    and the store is left as it was. Bars already stored are merged: identical ones are kept once,
    conflicting ones are reported and kept unless --overwrite. Invalid bars (NaN, high below close,
    negative volume...) are quarantined in the store with a reason and counted in the summary.
    """
    from ..errors import ConfigError

    if funding:
        if file_format != "generic" or skip_rows or volume_in:
            raise ConfigError(
                "--format, --skip-rows and --volume-in apply to bars, not to --funding",
                hint="funding files are CSV/Parquet tables with a header row: drop those options",
            )
        return _import_funding(
            files, instrument, store_dir, symbol_column, datetime_column, time_format, timezone, overwrite, lock_timeout
        )
    if timeframe is None and file_format not in ("freqtrade", "binance"):
        raise ConfigError(
            "--timeframe is required for bars", hint="e.g. --timeframe 1h (or pass --funding for funding rates)"
        )
    from ..sources.files import import_files

    results = import_files(
        store_dir,
        list(files),
        timeframe,
        overwrite=overwrite,
        instrument=instrument,
        symbol_column=symbol_column,
        columns=list(columns),
        datetime_column=datetime_column,
        time_format=time_format,
        timezone=timezone,
        derive_amount=derive_amount,
        lock_timeout=lock_timeout,
        file_format=file_format,
        skip_rows=skip_rows,
        volume_in=volume_in,
    )
    _print_table(results)
    if timeframe is None:  # said by the files' names (freqtrade, binance) or Binance's close_time
        click.echo("timeframes from the files: " + ", ".join(f"{r.file} {r.timeframe}" for r in results))
    for res in results:
        if res.conflicts:
            ex = res.conflict_examples[0] if res.conflict_examples else None
            action = (
                "replaced by the file's values (--overwrite)"
                if res.rows_replaced
                else "kept the stored values (pass --overwrite to replace them)"
            )
            detail = ""
            if ex:  # every field that differs, stored vs file (not the close when only the volume differs)
                fields = ex.get("fields") or [
                    k
                    for k, a in ex["stored"].items()
                    if not (a == ex["incoming"].get(k) or (a != a and ex["incoming"].get(k) != ex["incoming"].get(k)))
                ]
                diffs = ", ".join(f"{k} stored {ex['stored'][k]!r} vs file {ex['incoming'][k]!r}" for k in fields)
                detail = f"; first at {ex['datetime']}: {diffs}"
            click.echo(
                f"conflicts: {res.instrument} from {res.file}: {res.conflicts} bars differ from the store, {action}{detail}"
            )
        if res.quarantined:
            reasons = ", ".join(f"{k} {v}" for k, v in sorted(res.quarantine_reasons.items()))
            click.echo(
                f"quarantined: {res.instrument} from {res.file}: {res.quarantined} rows ({reasons}), see {store_dir}/quarantine/"
            )
    return 0


def _print_table(results) -> None:
    """One row per file and instrument, then the totals; ``repeated`` counts exact repeats inside a file."""
    header = (
        f"{'file':<28} {'instrument':<18} {'read':>8} {'repeated':>8} {'added':>8} {'identical':>9} "
        f"{'conflicts':>9} {'quarantined':>11}"
    )
    click.echo(header)
    totals = dict(read=0, repeated=0, added=0, identical=0, conflicts=0, replaced=0, quarantined=0)
    for res in results:
        conflicts = f"{res.conflicts}" + ("*" if res.conflicts and res.rows_replaced else "")
        click.echo(
            f"{res.file[:28]:<28} {res.instrument:<18} {res.rows_read:>8} {res.rows_repeated:>8} {res.rows_added:>8} "
            f"{res.rows_identical:>9} {conflicts:>9} {res.quarantined:>11}"
        )
        totals["read"] += res.rows_read
        totals["repeated"] += res.rows_repeated
        totals["added"] += res.rows_added
        totals["identical"] += res.rows_identical
        totals["conflicts"] += res.conflicts
        totals["replaced"] += res.rows_replaced
        totals["quarantined"] += res.quarantined
    click.echo(
        f"total: {totals['read']} rows read, "
        + (f"{totals['repeated']} repeated inside a file (kept once), " if totals["repeated"] else "")
        + f"{totals['added']} added, {totals['identical']} identical, "
        f"{totals['conflicts']} conflicts ({totals['replaced']} overwritten), {totals['quarantined']} quarantined"
    )


def _import_funding(
    files, instrument, store_dir, symbol_column, datetime_column, time_format, timezone, overwrite, lock_timeout
) -> int:
    from ..sources.files import import_funding_files

    results = import_funding_files(
        store_dir,
        list(files),
        overwrite=overwrite,
        lock_timeout=lock_timeout,
        instrument=instrument,
        symbol_column=symbol_column,
        datetime_column=datetime_column,
        time_format=time_format,
        timezone=timezone,
    )
    _print_table(results)
    for res in results:
        if res.conflicts:
            action = (
                "replaced (--overwrite)"
                if res.rows_replaced
                else "kept the stored rates (pass --overwrite to replace them)"
            )
            click.echo(
                f"conflicts: {res.instrument} from {res.file}: {res.conflicts} settlements differ from the store, {action}"
            )
        if res.quarantined:
            reasons = ", ".join(f"{k} {v}" for k, v in sorted(res.quarantine_reasons.items()))
            click.echo(
                f"quarantined: {res.instrument} from {res.file}: {res.quarantined} rows ({reasons}), see {store_dir}/quarantine/"
            )
    return 0
