"""``qlib-crypto dump``: the store -> Qlib's binary provider format (one frequency per directory)."""

from __future__ import annotations

import click


def _split(values: tuple[str, ...]) -> list[str]:
    out: list[str] = []
    for v in values:
        out.extend(x.strip() for x in v.split(",") if x.strip())
    return out


@click.command("dump")
@click.option("--store", "store_dir", required=True, type=click.Path(file_okay=False), help="Raw store directory.")
@click.option(
    "--qlib-dir",
    required=True,
    type=click.Path(),
    metavar="DIR",  # checked by dump(): one-line errors
    help="Provider directory for this one frequency, e.g. ~/.qlib/qlib_data/crypto/okx/60min.",
)
@click.option(
    "--timeframe",
    required=True,
    help="Frequency to write: 1m 5m 15m 1h 4h 1d or Qlib names 1min 5min 15min 60min 240min day.",
)
@click.option("--instruments", multiple=True, help="Only these instruments (comma-separated or repeated).")
@click.option("--update", is_flag=True, help="Append only the bars after the last dumped one.")
@click.option(
    "--from-timeframe",
    "source_timeframe",
    default=None,
    help="Store timeframe to build from (e.g. 1h for --timeframe day). Default: --timeframe.",
)
@click.option(
    "--top",
    default=None,
    help="Liquidity universes top<N>.txt to write, comma-separated (default 10,20; empty for none).",
)
@click.option(
    "--window-days",
    type=int,
    default=None,
    help="Trailing window of the liquidity universes in whole days >= 1 (default 30).",
)
def command(store_dir, qlib_dir, timeframe, instruments, update, source_timeframe, top, window_days) -> int:
    """Dump the store into Qlib's binary format (full, or --update to append new bars).

    One frequency per directory (Qlib's names: 1min 5min 15min 60min 240min day); give Qlib the
    directories as a dict, e.g. qlib_crypto.init({"60min": DIR60, "day": DIRDAY}). A full dump is staged
    beside the target and swapped in; an update appends only bars after the last dumped one and refuses
    (asking for a full dump) if earlier store data changed. See docs/provider.md.

    \b
    Examples:
      qlib-crypto dump --store data/store/okx --qlib-dir ~/.qlib/qlib_data/crypto/okx/60min --timeframe 1h
      qlib-crypto dump --store data/store/okx --qlib-dir ~/.qlib/qlib_data/crypto/okx/day \\
          --timeframe day --from-timeframe 1h
      qlib-crypto dump --store data/store/okx --qlib-dir ~/.qlib/qlib_data/crypto/okx/60min --timeframe 1h --update
    """
    from ..errors import ConfigError
    from ..provider import dump
    from ..provider.dump import os_errors_as_provider_errors

    tops = None
    if top is not None:
        try:
            tops = [int(x) for x in top.split(",") if x.strip()]
        except ValueError:
            raise ConfigError(f"bad --top value {top!r}", hint="give integers such as 10,20") from None
        if any(n <= 0 for n in tops):
            raise ConfigError(f"bad --top value {top!r}", hint="universe sizes must be positive")
    names = _split(instruments) or None
    with os_errors_as_provider_errors(qlib_dir):  # disk full, read-only filesystem...: one line, exit 2
        res = dump(
            store_dir,
            qlib_dir,
            timeframe,
            instruments=names,
            update=update,
            source_timeframe=source_timeframe,
            top=tops,
            window_days=window_days,
        )
    if res.mode == "noop":
        click.echo(
            f"{res.qlib_dir}: up to date ({res.instruments} instruments, calendar {res.calendar_start} .. "
            f"{res.calendar_end})"
        )
        return 0
    rate = res.bars_written / res.seconds if res.seconds > 0 else float("nan")
    click.echo(
        f"{res.mode} dump of {res.freq}: {res.instruments_written}/{res.instruments} instruments, "
        f"{res.bars_written} bars, +{res.new_calendar_bars} calendar bars "
        f"({res.calendar_start} .. {res.calendar_end}) in {res.seconds:.2f}s ({rate:,.0f} bars/s)"
    )
    click.echo(f"  directory: {res.qlib_dir}  universes: {', '.join(res.universes)}")
    click.echo(f"  load it:   import qlib_crypto; qlib_crypto.init({{'{res.freq}': '{res.qlib_dir}'}})")
    return 0
