"""``qlib-crypto collect``: OKX (through ccxt) or the synthetic market -> the raw Parquet store."""

from __future__ import annotations

from pathlib import Path

import click

from . import lock_timeout_option

SOURCES = ("okx", "synthetic")
MAX_SYNTHETIC_INSTRUMENTS = 10_000


@click.command("collect")
@click.option(
    "--source",
    type=click.Choice(SOURCES),
    required=True,
    help="Where bars come from: okx (the exchange, through ccxt) or synthetic (seeded, offline).",
)
@click.option(
    "--instruments",
    default=None,
    metavar="LIST|N",
    help="okx: comma-separated OKX instIds, e.g. BTC-USDT,ETH-USDT-SWAP (-SWAP = perpetual swap). "
    "synthetic: a number N (makes N instruments, at most 10,000) or a list of names.",
)
@click.option(
    "--type",
    "inst_type",
    type=click.Choice(["spot", "swap"]),
    default=None,
    help="Without --instruments: all live instruments of this type (with --top: rank only this type).",
)
@click.option(
    "--top",
    type=int,
    default=None,
    metavar="N",
    help="Without --instruments: the N live instruments with the largest 24h quote volume, e.g. --top 20.",
)
@click.option(
    "--timeframe",
    required=True,
    metavar="TF",
    help="Bar length in ccxt spelling: 1m 3m 5m 15m 30m 1h 2h 4h 6h 12h 1d (1d = OKX 1Dutc, UTC days).",
)
@click.option(
    "--start",
    required=True,
    metavar="DATE",
    help="First bar open time, inclusive, UTC (e.g. 2024-01-01 or 2024-01-01T08:00).",
)
@click.option(
    "--end",
    default=None,
    metavar="DATE",
    help="End, exclusive, UTC (e.g. 2024-02-01). Default: now (bars still forming are never stored). "
    "okx: a later --end is clamped to now; synthetic: at most now + one bar.",
)
@click.option(
    "--store",
    "store_dir",
    required=True,
    type=click.Path(file_okay=False),
    help="Store directory (one per venue), e.g. ./data/store/okx. Created if missing.",
)
@click.option(
    "--api-url",
    default=None,
    envvar="QLIB_CRYPTO_OKX_API_URL",
    show_envvar=True,
    metavar="URL",
    help="okx: base URL of the REST API (a proxy or the loopback simulator), e.g. http://127.0.0.1:8080. "
    "user:password@ in it is sent as HTTP basic auth and printed masked (user:***@).",
)
@click.option(
    "--workers",
    type=int,
    default=4,
    show_default=True,
    help="Instruments fetched at once (they share one rate limiter per OKX endpoint).",
)
@click.option("--seed", type=int, default=None, help="synthetic: random seed of the market (same seed, same bars).")
@click.option("--quiet", "-q", is_flag=True, help="No progress bars (they are also off when stdout is not a terminal).")
@click.option("--no-funding", is_flag=True, help="Do not collect funding-rate history for swaps.")
@click.option(
    "--timeout",
    "timeout_s",
    type=float,
    default=10.0,
    show_default=True,
    help="okx: seconds before a request is abandoned (then retried); above 0, at most 3600.",
)
@click.option(
    "--max-retries",
    type=int,
    default=8,
    show_default=True,
    help="okx: retries per request (exponential backoff with jitter) before the range is reported.",
)
@lock_timeout_option()
def command(
    source: str,
    instruments: str | None,
    inst_type: str | None,
    top: int | None,
    timeframe: str,
    start: str,
    end: str | None,
    store_dir: str,
    api_url: str | None,
    workers: int,
    seed: int | None,
    quiet: bool,
    no_funding: bool,
    timeout_s: float,
    max_retries: int,
    lock_timeout: float | None,
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

    Exit code 0 when everything was fetched, 3 when some range could not be fetched after retries, some
    bars were quarantined (their slots stay uncovered) or the exchange host cannot be reached (what was
    fetched is kept; run the same command again to resume), 2 on bad input.
    """
    from ..sources.okx import masked_logging

    with masked_logging():
        try:
            return _run(
                source,
                instruments,
                inst_type,
                top,
                timeframe,
                start,
                end,
                store_dir,
                api_url,
                workers,
                seed,
                quiet,
                no_funding,
                timeout_s,
                max_retries,
                lock_timeout,
            )
        except Exception as exc:
            _mask_exception_chain(exc)
            raise


def _mask_exception_chain(exc: BaseException) -> None:
    """Mask credentials in the messages of ``exc`` and of its causes (printed, also with --verbose)."""
    from ..errors import QlibCryptoError
    from ..sources.okx import mask_secrets

    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        text = str(e)
        masked = mask_secrets(text)
        if masked != text:
            e.args = (masked,)
            if isinstance(e, QlibCryptoError):
                e.message, e.hint = masked, None
        e = e.__cause__ or e.__context__


def _missing_dirs(path: Path) -> list[Path]:
    """``path`` and its ancestors that do not exist yet, deepest first."""
    out = []
    p = path.absolute()
    while not p.exists() and p != p.parent:
        out.append(p)
        p = p.parent
    return out


def _remove_empty_created(created: list[Path]) -> None:
    """Remove directories this command created if they hold nothing but lock files (deepest first)."""
    try:
        from ..store.lock import LOCK_FILES
    except ImportError:  # a store without the lock module
        LOCK_FILES = (".qlib_crypto.lock", ".qlib_crypto.lock.json")
    for d in created:
        if not d.is_dir():
            continue
        try:
            entries = list(d.iterdir())
            if any(not (e.is_file() and (e.name in LOCK_FILES or e.name.startswith(".write-probe-"))) for e in entries):
                return
            for e in entries:
                e.unlink()
            d.rmdir()
        except OSError:
            return


def _run(
    source: str,
    instruments: str | None,
    inst_type: str | None,
    top: int | None,
    timeframe: str,
    start: str,
    end: str | None,
    store_dir: str,
    api_url: str | None,
    workers: int,
    seed: int | None,
    quiet: bool,
    no_funding: bool,
    timeout_s: float,
    max_retries: int,
    lock_timeout: float | None = None,
) -> int:
    import time

    from ..store.lock import check_timeout

    if lock_timeout is not None:
        check_timeout(lock_timeout)

    from ..errors import ConfigError
    from ..sources.collector import EARLIEST, EARLIEST_MS, parse_bound_ms
    from ..sources.okx import check_timeout
    from ..timeframes import get_timeframe

    tf = get_timeframe(timeframe)
    check_timeout(timeout_s, what="--timeout")
    now_ms = int(time.time() * 1000)
    latest = (now_ms // tf.ms + 1) * tf.ms  # end of the bar forming now: no bar opens later
    start_ms = parse_bound_ms(start, what="--start")
    if start_ms < EARLIEST_MS:
        raise ConfigError(
            f"--start {start!r} is before {EARLIEST} (the first Bitcoin block)",
            hint=f"no exchange has bars before it: give --start {EARLIEST} or later",
        )
    if start_ms >= latest:
        raise ConfigError(
            f"--start {start!r} is in the future (now is {_iso(now_ms)})",
            hint="give a --start in the past, e.g. 2024-01-01",
        )
    if end and _beyond_pandas(end):  # e.g. 9999-01-01: a valid date, later than pandas can hold
        end_ms = latest + 1
    else:
        end_ms = parse_bound_ms(end, what="--end") if end else now_ms
    if start_ms >= end_ms:
        raise ConfigError(
            f"--start {start!r} is not before --end {end or 'now'!r}",
            hint="--start is inclusive and --end exclusive: give start < end",
        )
    if end_ms > latest:
        if source != "okx":
            raise ConfigError(
                f"--end {end!r} is in the future (now is {_iso(now_ms)})",
                hint=f"give an --end up to now + one bar ({_iso(latest)}) or omit --end (= now)",
            )
        end_ms = latest  # okx: nothing exists after the bar forming now; the bar itself is never stored
        click.echo(f"note: --end {end} is in the future; collecting up to now ({_iso(end_ms)})", err=True)
    if workers < 1:
        raise ConfigError(f"--workers must be >= 1, got {workers}", hint="for example --workers 4")
    if top is not None and top < 1:
        raise ConfigError(f"--top must be >= 1, got {top}", hint="for example --top 20")
    if max_retries < 0:
        raise ConfigError(f"--max-retries must be >= 0, got {max_retries}", hint="for example --max-retries 8")
    names = [s.strip() for s in instruments.split(",") if s.strip()] if instruments else []
    spec: int | list[str] = names
    if source == "synthetic":
        if len(names) == 1 and names[0].isdigit():
            spec = int(names[0])
            if not 1 <= spec <= MAX_SYNTHETIC_INSTRUMENTS:
                raise ConfigError(
                    f"--instruments {names[0]} synthetic instruments is out of range",
                    hint=f"give a number from 1 to {MAX_SYNTHETIC_INSTRUMENTS:,}, e.g. --instruments 20",
                )
        elif not names:
            raise ConfigError(
                "--source synthetic needs --instruments N or a list of names", hint="for example --instruments 20"
            )
        elif len(names) > MAX_SYNTHETIC_INSTRUMENTS:
            raise ConfigError(
                f"--instruments lists {len(names):,} synthetic instruments",
                hint=f"give at most {MAX_SYNTHETIC_INSTRUMENTS:,}",
            )

    from ..sources.collector import check_store_writable, collect

    created = _missing_dirs(Path(store_dir))
    try:
        check_store_writable(store_dir)
        if source == "okx":
            from ..sources.okx import OkxSource, RetryPolicy

            bar_source = OkxSource(api_url=api_url, timeout_s=timeout_s, retry=RetryPolicy(max_retries=max_retries))
        else:
            from ..sources.synthetic import SyntheticSource

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
            report = collect(
                bar_source,
                store_dir,
                universe,
                tf.name,
                start_ms,
                end_ms,
                workers=workers,
                progress=not quiet,
                with_funding=not no_funding,
                raise_on_incomplete=False,
                lock_timeout=lock_timeout,
            )
        finally:
            close = getattr(bar_source, "close", None)
            if callable(close):
                close()
    finally:
        _remove_empty_created(created)  # a failed first run leaves no empty store behind
    click.echo(report.summary())
    from ..store import validate_store

    root = Path(store_dir)
    stored = [i for i in universe if (root / "bars" / tf.name / i).is_dir() or (root / "funding" / i).is_dir()]
    if stored:  # validate what this run selected and the store holds (a failed first run may hold nothing)
        click.echo(validate_store(store_dir, timeframe=tf.name, instruments=stored).summary())
    else:
        click.echo(f"store {store_dir}: nothing stored for the selected instruments")
    report.raise_if_incomplete()
    return 0


def _beyond_pandas(text: str) -> bool:
    """True for an ISO date after 2262 (beyond pandas' nanosecond timestamps), e.g. ``9999-01-01``."""
    import datetime as dt

    try:
        value = dt.datetime.fromisoformat(str(text).strip().replace("Z", "+00:00"))
    except ValueError:
        return False
    return value.year >= 2262


def _iso(ms: int) -> str:
    import pandas as pd

    return pd.Timestamp(int(ms), unit="ms", tz="UTC").isoformat().replace("+00:00", "Z")
