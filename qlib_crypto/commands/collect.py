"""``qlib-crypto collect``: OKX (through ccxt) or the synthetic market -> the raw Parquet store."""
from __future__ import annotations

import click

SOURCES = ("okx", "synthetic")


@click.command("collect")
@click.option("--source", type=click.Choice(SOURCES), required=True,
              help="Where bars come from: okx (the exchange, through ccxt) or synthetic (seeded, offline).")
@click.option("--instruments", default=None, metavar="LIST|N",
              help="okx: comma-separated OKX instIds, e.g. BTC-USDT,ETH-USDT-SWAP (-SWAP = perpetual swap). "
                   "synthetic: a number N (makes N instruments) or a list of names.")
@click.option("--type", "inst_type", type=click.Choice(["spot", "swap"]), default=None,
              help="Without --instruments: all live instruments of this type (with --top: rank only this type).")
@click.option("--top", type=int, default=None, metavar="N",
              help="Without --instruments: the N live instruments with the largest 24h quote volume, e.g. --top 20.")
@click.option("--timeframe", required=True, metavar="TF",
              help="Bar length in ccxt spelling: 1m 3m 5m 15m 30m 1h 2h 4h 6h 12h 1d (1d = OKX 1Dutc, UTC days).")
@click.option("--start", required=True, metavar="DATE",
              help="First bar open time, inclusive, UTC (e.g. 2024-01-01 or 2024-01-01T08:00).")
@click.option("--end", default=None, metavar="DATE",
              help="End, exclusive, UTC (e.g. 2024-02-01). Default: now (bars still forming are never stored).")
@click.option("--store", "store_dir", required=True, type=click.Path(file_okay=False),
              help="Store directory (one per venue), e.g. ./data/store/okx. Created if missing.")
@click.option("--api-url", default=None, envvar="QLIB_CRYPTO_OKX_API_URL", show_envvar=True, metavar="URL",
              help="okx: base URL of the REST API (a proxy or the loopback simulator), e.g. http://127.0.0.1:8080.")
@click.option("--workers", type=int, default=4, show_default=True,
              help="Instruments fetched at once (they share one rate limiter per OKX endpoint).")
@click.option("--seed", type=int, default=None, help="synthetic: random seed of the market (same seed, same bars).")
@click.option("--quiet", "-q", is_flag=True, help="No progress bars (they are also off when stdout is not a terminal).")
@click.option("--no-funding", is_flag=True, help="Do not collect funding-rate history for swaps.")
@click.option("--timeout", "timeout_s", type=float, default=10.0, show_default=True,
              help="okx: seconds before a request is abandoned (then retried).")
@click.option("--max-retries", type=int, default=8, show_default=True,
              help="okx: retries per request (exponential backoff with jitter) before the range is reported.")
def command(
    source: str, instruments: str | None, inst_type: str | None, top: int | None, timeframe: str, start: str,
    end: str | None, store_dir: str, api_url: str | None, workers: int, seed: int | None, quiet: bool,
    no_funding: bool, timeout_s: float, max_retries: int,
) -> int:
    """Collect confirmed OHLCV bars into the store; a re-run fetches only what is missing.

    \b
    Examples:
      qlib-crypto collect --source okx --instruments BTC-USDT,ETH-USDT-SWAP \\
          --timeframe 1h --start 2024-01-01 --end 2024-02-01 --store ./data/store/okx
      qlib-crypto collect --source okx --type swap --top 20 --timeframe 1m \\
          --start 2024-06-01 --end 2024-06-08 --store ./data/store/okx
      qlib-crypto collect --source synthetic --instruments 20 --seed 1 --timeframe 1h \\
          --start 2023-01-01 --end 2024-07-01 --store ./data/store/synthetic

    Exit code 0 when everything was fetched, 3 when some range could not be fetched after retries
    (what was fetched is kept; run the same command again to resume), 2 on bad input.
    """
    import pandas as pd

    from ..errors import ConfigError
    from ..sources.base import parse_time_ms
    from ..timeframes import get_timeframe

    tf = get_timeframe(timeframe)
    start_ms = parse_time_ms(start, what="--start")
    end_ms = parse_time_ms(end, what="--end") if end else int(pd.Timestamp.now(tz="UTC").value // 1_000_000)
    if start_ms >= end_ms:
        raise ConfigError(f"--start {start!r} is not before --end {end or 'now'!r}",
                          hint="--start is inclusive and --end exclusive: give start < end")
    if workers < 1:
        raise ConfigError(f"--workers must be >= 1, got {workers}", hint="for example --workers 4")
    if top is not None and top < 1:
        raise ConfigError(f"--top must be >= 1, got {top}", hint="for example --top 20")
    if max_retries < 0:
        raise ConfigError(f"--max-retries must be >= 0, got {max_retries}", hint="for example --max-retries 8")
    names = [s.strip() for s in instruments.split(",") if s.strip()] if instruments else []

    from ..sources.collector import check_store_writable, collect

    check_store_writable(store_dir)
    if source == "okx":
        from ..sources.okx import OkxSource, RetryPolicy

        bar_source = OkxSource(api_url=api_url, timeout_s=timeout_s, retry=RetryPolicy(max_retries=max_retries))
    else:
        from ..sources.synthetic import SyntheticSource

        spec: int | list[str]
        if len(names) == 1 and names[0].isdigit():
            spec = int(names[0])
        elif names:
            spec = names
        else:
            raise ConfigError("--source synthetic needs --instruments N or a list of names",
                              hint="for example --instruments 20")
        bar_source = SyntheticSource(spec, **({"seed": seed} if seed is not None else {}))
    try:
        if source == "okx":
            universe = bar_source.resolve_universe(names or None, inst_type, top)
        else:
            universe = bar_source.list_instruments()
            if inst_type:
                universe = [i for i in universe if i.endswith("-SWAP") == (inst_type == "swap")]
            if top:
                universe = universe[:top]
        if not universe:
            raise ConfigError("the selection matches no instrument", hint="check --instruments, --type and --top")
        report = collect(bar_source, store_dir, universe, tf.name, start_ms, end_ms, workers=workers,
                         progress=not quiet, with_funding=not no_funding, raise_on_incomplete=False)
    finally:
        close = getattr(bar_source, "close", None)
        if callable(close):
            close()
    click.echo(report.summary())
    from ..store import validate_store

    click.echo(validate_store(store_dir, timeframe=tf.name, instruments=universe).summary())
    report.raise_if_incomplete()
    return 0
