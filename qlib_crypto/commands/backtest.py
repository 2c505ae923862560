"""``qlib-crypto backtest``: backtest signals or model scores with the crypto exchange and write a report.

Heavy imports (Qlib, pandas) happen inside the functions so that ``qlib-crypto --help`` stays fast.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Callable

import click

from ..errors import ConfigError

STRATEGIES = ("signal", "longshort", "topk")


# ------------------------------------------------------------------------------------------------------
# helpers shared with ``qlib-crypto sweep``
# ------------------------------------------------------------------------------------------------------
def input_options(func: Callable) -> Callable:
    """The options that say what to backtest and where (shared by ``backtest`` and ``sweep``)."""
    options = [
        click.option(
            "--signals",
            "signals_path",
            type=click.Path(dir_okay=False),
            help="Signals file from `qlib-crypto predict`: Parquet or CSV with datetime, instrument, signal, "
            "position_size. Signals are data: pickles are refused (convert them to Parquet/CSV).",
        ),
        click.option(
            "--pred",
            "pred_path",
            type=click.Path(dir_okay=False),
            help="Model scores: Qlib's pred.pkl (a Series on a (datetime, instrument) index), or Parquet/CSV "
            "with datetime, instrument, score. A pickle runs code when it is loaded: give only a "
            "pred.pkl from a trusted source (your own qrun run).",
        ),
        click.option(
            "--provider-dir",
            required=True,
            type=click.Path(file_okay=False),
            help="Qlib provider directory of --freq (e.g. data/qlib/synthetic/60min), or a parent holding "
            "<freq>/. Only that frequency's directory is read.",
        ),
        click.option(
            "--freq", default="60min", show_default=True, help="Bar frequency of the backtest (60min, day...)."
        ),
        click.option(
            "--start",
            default=None,
            help="First bar, ISO 8601 (UTC unless an offset is given), e.g. 2024-04-01 or '2024-04-01 05:00'; default: first signal.",
        ),
        click.option(
            "--end",
            default=None,
            help="Last bar, ISO 8601 (UTC unless an offset is given); default: one bar after the last signal.",
        ),
        click.option(
            "--strategy",
            type=click.Choice(STRATEGIES),
            default=None,
            help="signal (SignalStrategy), longshort (LongShortStrategy on swaps), topk (Qlib's "
            "TopkDropoutStrategy, long-only). Default: signal with --signals, longshort with --pred.",
        ),
        click.option(
            "--topk", type=int, default=3, show_default=True, help="longshort: swaps per side; topk: holdings."
        ),
        click.option("--n-drop", type=int, default=1, show_default=True, help="topk: holdings replaced per bar."),
        click.option(
            "--rebalance-every", type=int, default=1, show_default=True, help="longshort: bars between rebalances."
        ),
        click.option(
            "--gross-exposure",
            type=float,
            default=1.0,
            show_default=True,
            help="longshort: sum of absolute weights (1.0 = half long, half short).",
        ),
        click.option(
            "--fees",
            default=None,
            help="Fee rates, e.g. 'spot.taker=0.001,swap.taker=0.0005' or '{swap: {taker: 0.0005}}'. "
            "Default: OKX base tier.",
        ),
        click.option(
            "--config",
            "config_path",
            type=click.Path(dir_okay=False),
            help="Exchange YAML: CryptoExchange kwargs, or an `exchange:` block with class/module_path/kwargs; "
            "an optional `executor:` mapping holds CryptoExecutor kwargs. Options given here override it.",
        ),
        click.option(
            "--max-leverage", type=float, default=None, help="Gross exposure / equity cap (executor default 3)."
        ),
        click.option(
            "--account", type=float, default=1_000_000.0, show_default=True, help="Initial equity (quote currency)."
        ),
        click.option("--benchmark", default=None, help="Benchmark instrument (default BTC-USDT when present)."),
        click.option(
            "--max-participation",
            default=None,
            metavar="X|none",
            help="Largest fraction of a bar's volume one order may take (default: config or 0.1); 'none' for no cap.",
        ),
        click.option(
            "--skip-unknown",
            is_flag=True,
            help="Drop (with a warning) the rows of instruments the provider does not have, instead of refusing them.",
        ),
        click.option(
            "--long-only", is_flag=True, help="longshort: long the --topk best scores only (spot or swaps), no shorts."
        ),
    ]
    for opt in reversed(options):
        func = opt(func)
    return func


def resolve_provider(provider_dir: str | Path, freq: str) -> dict[str, str]:
    """``provider_uri`` for ``qlib.init``: the directory dumped at ``freq`` (nothing else is needed: the
    benchmark is computed from its bars)."""
    root = Path(provider_dir)
    if not root.is_dir():
        raise ConfigError(
            f"provider directory {str(root)!r} does not exist",
            hint="dump the store first (`qlib-crypto dump`) or run `qlib-crypto demo`",
        )
    if (root / "calendars" / f"{freq}.txt").is_file():
        freq_dir = root
    elif (root / freq / "calendars" / f"{freq}.txt").is_file():
        freq_dir = root / freq
    else:
        raise ConfigError(
            f"no {freq} calendar under {str(root)!r} (looked for calendars/{freq}.txt and {freq}/calendars/)",
            hint="give the provider directory dumped at --freq, e.g. data/qlib/synthetic/60min",
        )
    return {freq: str(freq_dir.resolve())}


def provider_instruments(freq_dir: str | Path) -> list[str] | None:
    """The instruments of a provider directory (its ``instruments/all.txt``), or None without that file."""
    listing = Path(freq_dir) / "instruments" / "all.txt"
    try:
        text = listing.read_text(encoding="utf-8")
    except OSError:
        return None
    return [line.split("\t")[0].strip() for line in text.splitlines() if line.strip()]


def provider_calendar(freq_dir: str | Path, freq: str):
    """(first bar, last bar, bar length) of a provider's calendar, or None when it is empty or unreadable."""
    import pandas as pd

    try:
        lines = [
            ln.strip() for ln in (Path(freq_dir) / "calendars" / f"{freq}.txt").read_text().splitlines() if ln.strip()
        ]
    except OSError:
        return None
    if not lines:
        return None
    from ..timeframes import get_timeframe

    return pd.Timestamp(lines[0]), pd.Timestamp(lines[-1]), pd.Timedelta(milliseconds=get_timeframe(freq).ms)


def warn(message: str) -> None:
    """One ``warning: ...`` line on stderr."""
    click.echo(f"warning: {message}", err=True)


def check_against_provider(frame, freq_dir: str | Path, freq: str, *, skip_unknown: bool, option: str):
    """The input rows checked against the provider, before Qlib is imported: instruments it does not have are an
    error listing them (or, with ``--skip-unknown``, dropped with a warning); rows before the calendar's first
    bar or after its last bar are counted in a warning, and so are rows that all sit on its last bar (they would
    execute on the next bar). Returns the rows to backtest."""
    from ..strategy.targets import calendar_coverage, check_known_instruments

    known = provider_instruments(freq_dir)
    if known is not None:
        frame = check_known_instruments(
            frame,
            known,
            skip_unknown=skip_unknown,
            where=f"{option} file",
            provider=f"the provider {str(freq_dir)!r}",
            warn=warn,
        )
        if skip_unknown and len(frame) == 0:
            raise ConfigError(
                f"no {option} row is left after dropping unknown instruments",
                hint="check the instrument names against the provider's instruments/all.txt",
            )
    cal = provider_calendar(freq_dir, freq)
    if cal is not None and len(frame):
        first, last, _ = cal
        before, after = calendar_coverage(frame["datetime"], first, last)
        if before or after:
            warn(
                f"{before} {option} rows before the {freq} calendar's first bar {first} and {after} after its "
                f"last bar {last} are outside the provider and not traded"
            )
        inside = frame["datetime"][(frame["datetime"] >= first) & (frame["datetime"] <= last)]
        if len(inside) and (inside == last).all():  # e.g. `predict --latest`, then backtest
            warn(
                f"all {len(inside)} {option} rows are on the calendar's last bar {last} and cannot trade: a "
                "signal executes on the next bar, which the provider does not have yet (dump newer bars, then "
                "backtest)"
            )
    return frame


def init_qlib(provider_uri: dict[str, str]) -> None:
    """``qlib.init`` with the project's crypto settings."""
    import qlib

    from ..settings import QLIB_INIT_KWARGS

    kwargs = dict(QLIB_INIT_KWARGS)
    kwargs.pop("provider_uri", None)
    qlib.init(provider_uri=provider_uri, **kwargs)


def parse_fees(text: str | None) -> dict[str, dict[str, float]] | None:
    """``spot.taker=0.001,swap.taker=0.0005`` or an inline YAML/JSON mapping -> ``{market: {role: rate}}``."""
    if text is None or not str(text).strip():
        return None
    text = str(text).strip()
    if "=" in text and not text.startswith("{"):
        out: dict[str, dict[str, float]] = {}
        for part in text.split(","):
            key, _, value = part.partition("=")
            market, _, role = key.strip().partition(".")
            if not market or not role or not value.strip():
                raise ConfigError(
                    f"bad fee item {part.strip()!r}", hint="write market.role=rate, e.g. swap.taker=0.0005"
                )
            out.setdefault(market, {})[role] = value.strip()
        return check_fees(out, f"--fees {text!r}")
    import yaml

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(
            f"--fees {text!r} is not valid YAML: {_one_line(exc)}", hint="e.g. '{swap: {taker: 0.0005}}'"
        ) from None
    if not isinstance(data, dict):
        raise ConfigError(f"--fees {text!r} is not a mapping", hint="e.g. spot.taker=0.001,swap.taker=0.0005")
    return check_fees(data, f"--fees {text!r}")


def _one_line(exc: BaseException, limit: int = 200) -> str:
    """An exception's text on one line (YAML and Arrow errors span several)."""
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def check_number(
    value: Any,
    what: str,
    *,
    minimum: float | None = None,
    above: float | None = None,
    hint: str = "give a finite number",
) -> float:
    """``value`` as a finite float (>= ``minimum`` / > ``above``), else a ConfigError naming ``what`` and the value."""
    try:
        if isinstance(value, bool):
            raise TypeError
        number = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{what} {value!r} is not a number", hint=hint) from None
    if not math.isfinite(number):
        raise ConfigError(f"{what} {value!r} is not a finite number", hint=hint)
    if minimum is not None and number < minimum:
        raise ConfigError(f"{what} {value!r} is below {minimum:g}", hint=hint)
    if above is not None and not number > above:
        raise ConfigError(f"{what} {value!r} must be above {above:g}", hint=hint)
    return number


def check_fees(fees: Any, where: str) -> dict[str, dict[str, float]]:
    """Fee rates ``{spot|swap: {maker|taker: rate}}``, each a finite fraction in [-0.01, 0.1) as CryptoExchange
    accepts; anything else is a ConfigError naming ``where`` and the value."""
    example = "e.g. spot.taker=0.001,swap.taker=0.0005 or '{swap: {taker: 0.0005}}'"
    if not isinstance(fees, dict):
        raise ConfigError(f"{where} {fees!r} is not a mapping of markets to rates", hint=example)
    out: dict[str, dict[str, float]] = {}
    for market, rates in fees.items():
        if market not in ("spot", "swap"):
            raise ConfigError(f"{where}: unknown market {market!r}", hint="use the markets spot and swap; " + example)
        if not isinstance(rates, dict):
            raise ConfigError(f"{where}: {market} {rates!r} is not a mapping of maker/taker rates", hint=example)
        for role, rate in rates.items():
            if role not in ("maker", "taker"):
                raise ConfigError(f"{where}: unknown fee role {market}.{role}", hint="use maker and taker; " + example)
            number = check_number(rate, f"{where}: rate {market}.{role}", hint="give a fraction, e.g. 0.001 for 0.1%")
            if not -0.01 <= number < 0.1:
                raise ConfigError(
                    f"{where}: rate {market}.{role} {rate!r} is outside [-0.01, 0.1)",
                    hint="give a fraction, e.g. 0.001 for 0.1%",
                )
            out.setdefault(market, {})[role] = number
    return out


# numeric CryptoExchange / CryptoExecutor kwargs a config file may set: (minimum, strictly above)
_EXCHANGE_NUMBERS = {"slippage_bps": (0.0, None), "impact_coef": (0.0, None), "max_participation": (None, 0.0)}


def parse_participation(value: Any, what: str = "--max-participation") -> float | None:
    """A participation cap: a number in (0, 1], or ``none``/``null`` (no cap)."""
    if value is None or (isinstance(value, str) and value.strip().lower() in ("none", "null", "off")):
        return None
    number = check_number(
        value, what, above=0.0, hint="give a fraction of the bar's volume in (0, 1], e.g. 0.1, or none for no cap"
    )
    if number > 1:
        raise ConfigError(
            f"{what} {value!r} is above 1",
            hint="give a fraction of the bar's volume in (0, 1], e.g. 0.1, or none for no cap",
        )
    return number


_EXECUTOR_NUMBERS = {"max_leverage": (None, 0.0), "maintenance_margin": (0.0, None)}


def load_config(path: str | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """(exchange config, executor kwargs) from an exchange YAML file, its structure and numbers checked."""
    if not path:
        return {}, {}
    import yaml

    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {str(p)!r} does not exist", hint="give the path of an exchange YAML file")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError:
        raise ConfigError(f"config file {str(p)!r} is not a text file", hint="give an exchange YAML file") from None
    except yaml.YAMLError as exc:
        raise ConfigError(
            f"config file {str(p)!r} is not valid YAML: {_one_line(exc)}", hint="fix the YAML syntax"
        ) from None
    hint = "write a YAML mapping of CryptoExchange kwargs, or `exchange:` and `executor:` mappings"
    if not isinstance(data, dict):
        raise ConfigError(f"config file {str(p)!r} holds a {type(data).__name__}, not a mapping", hint=hint)
    executor = data.pop("executor", None) or {}
    if isinstance(executor, dict) and "kwargs" in executor:
        executor = executor["kwargs"] or {}
    if not isinstance(executor, dict):
        raise ConfigError(f"config file {str(p)!r}: executor {executor!r} is not a mapping", hint=hint)
    exchange = data.pop("exchange", None)
    if exchange is None:
        exchange = data
    elif data:
        raise ConfigError(
            f"config file {str(p)!r} has unknown top-level keys {sorted(data)}",
            hint="use `exchange:` and `executor:` blocks, or only CryptoExchange kwargs",
        )
    if isinstance(exchange, dict) and "kwargs" in exchange:
        exchange = exchange.get("kwargs") or {}
    if not isinstance(exchange, dict):
        raise ConfigError(f"config file {str(p)!r}: exchange {exchange!r} is not a mapping", hint=hint)
    exchange, executor = dict(exchange), dict(executor)
    for block, numbers in ((exchange, _EXCHANGE_NUMBERS), (executor, _EXECUTOR_NUMBERS)):
        for key, (minimum, above) in numbers.items():
            if block.get(key) is not None:
                block[key] = check_number(block[key], f"config file {str(p)!r}: {key}", minimum=minimum, above=above)
    if exchange.get("max_participation") is not None:
        exchange["max_participation"] = parse_participation(
            exchange["max_participation"], f"config file {str(p)!r}: max_participation"
        )
    if exchange.get("fees") is not None:
        exchange["fees"] = check_fees(exchange["fees"], f"config file {str(p)!r}: fees")
    return exchange, executor


SIGNAL_SUFFIXES = (".parquet", ".csv")
PRED_SUFFIXES = (".pkl", ".pickle", ".parquet", ".csv")


def check_input_files(opts: dict[str, Any]) -> None:
    """Fail fast, before Qlib is imported: exactly one of --signals/--pred, an existing file of a data type
    (signals: Parquet or CSV, never a pickle), and every shared option (see :func:`check_options`)."""
    signals_path, pred_path = opts.get("signals_path"), opts.get("pred_path")
    if bool(signals_path) == bool(pred_path):
        raise ConfigError(
            "give exactly one of --signals and --pred",
            hint="--signals for BUY/SELL/HOLD signals, --pred for model scores (pred.pkl)",
        )
    path = Path(signals_path or pred_path)
    option = "--signals" if signals_path else "--pred"
    if not path.is_file():
        raise ConfigError(f"{option} file {str(path)!r} does not exist", hint="give the path of an existing file")
    suffix = path.suffix.lower()
    if signals_path and suffix in (".pkl", ".pickle"):
        raise ConfigError(
            f"--signals file {str(path)!r} is a pickle: signals are data and are never unpickled (loading a pickle "
            "runs code)",
            hint="convert it to Parquet or CSV (columns datetime, instrument, signal, position_size), or write it "
            "with `qlib-crypto predict`",
        )
    allowed = SIGNAL_SUFFIXES if signals_path else PRED_SUFFIXES
    if suffix not in allowed:
        raise ConfigError(
            f"{option} file {str(path)!r} has the unsupported type {suffix or '(no suffix)'!r}",
            hint=f"give a {', '.join(allowed)} file",
        )
    check_options(opts)


def check_options(opts: dict[str, Any]) -> None:
    """Every option shared by ``backtest`` and ``sweep`` checked before any work: numbers finite and in
    range, times parseable, fees and the config file well-formed."""
    check_number(opts.get("account"), "--account", above=0.0, hint="give the initial equity, e.g. 1000000")
    check_number(opts.get("gross_exposure"), "--gross-exposure", above=0.0, hint="e.g. 1.0")
    if opts.get("max_leverage") is not None:
        check_number(opts["max_leverage"], "--max-leverage", above=0.0, hint="e.g. 3")
    for name, low in (("topk", 1), ("rebalance_every", 1), ("n_drop", 0)):
        value = opts.get(name)
        if value is not None and int(value) < low:
            raise ConfigError(f"--{name.replace('_', '-')} {value} is below {low}", hint=f"give an integer >= {low}")
    times = {name: parse_time(opts.get(name), f"--{name}") for name in ("start", "end")}
    if times["start"] is not None and times["end"] is not None and times["start"] > times["end"]:
        raise ConfigError(f"--start {opts['start']} is after --end {opts['end']}", hint="swap them")
    from ..timeframes import get_timeframe

    get_timeframe(opts["freq"])
    parse_fees(opts.get("fees"))
    load_config(opts.get("config_path"))
    parse_participation(opts.get("max_participation"))
    strategy = opts.get("strategy") or ("signal" if opts.get("signals_path") else "longshort")
    if opts.get("long_only") and strategy != "longshort":
        raise ConfigError(
            "--long-only applies to --strategy longshort only", hint="drop --long-only, or use --strategy longshort"
        )


def parse_time(value: Any, option: str):
    """A --start/--end value as a naive UTC pandas Timestamp, as Qlib's calendars hold times (None stays None).

    ISO 8601 only (``qlib_crypto.timeparse.parse_iso``): ``01/04/2024`` or ``2024-13-01`` is a ConfigError
    naming the option and the value; an offset (``+02:00``, ``Z``) is converted to UTC."""
    from ..timeparse import parse_naive_utc

    return parse_naive_utc(value, option)


def check_output_dir(out_dir: str | Path) -> None:
    """Refuse an --out directory that cannot be written (a file, under a file, read-only, /proc...)."""
    from ..provider.dump import check_output_location

    check_output_location(out_dir, "--out", kind="dir", beside=True, error=ConfigError)  # staged beside it


def read_table(path: str | Path, option: str):
    """Read a --signals/--pred file: Parquet or CSV (and for --pred only, Qlib's pickle). An empty, binary or
    unreadable file is a ConfigError naming it; the result must hold rows."""
    import pandas as pd

    p = Path(path)
    suffix = p.suffix.lower()
    kind = {".parquet": "Parquet", ".csv": "CSV"}.get(suffix, "pickle")
    hint = (
        "write signals with `qlib-crypto predict`, or a Parquet/CSV file with datetime, instrument, signal, "
        "position_size"
        if option == "--signals"
        else "give Qlib's pred.pkl, or a Parquet/CSV file with datetime, instrument, score"
    )
    if p.stat().st_size == 0:
        raise ConfigError(f"{option} file {str(p)!r} is empty", hint=hint)
    if kind == "CSV":
        with open(p, "rb") as fh:
            if b"\0" in fh.read(1 << 16):
                raise ConfigError(f"{option} file {str(p)!r} is a binary file, not CSV text", hint=hint)
    try:
        if kind == "Parquet":
            obj = pd.read_parquet(p)
        elif kind == "CSV":
            obj = pd.read_csv(p)
        else:  # Qlib's pred.pkl: trusted input, see --help
            obj = pd.read_pickle(p)
    except Exception as exc:  # Arrow, CSV parser, decoding and unpickling errors alike
        raise ConfigError(
            f"{option} file {str(p)!r} is not a readable {kind} file ({type(exc).__name__}: {_one_line(exc)})",
            hint=hint,
        ) from None
    if not isinstance(obj, (pd.DataFrame, pd.Series)):
        raise ConfigError(f"{option} file {str(p)!r} holds a {type(obj).__name__}, not a table", hint=hint)
    if len(obj) == 0:
        raise ConfigError(f"{option} file {str(p)!r} holds no rows", hint=hint)
    return obj


def check_benchmark(provider_uri: dict[str, str], freq: str, benchmark: str | None) -> None:
    """An explicit --benchmark must be an instrument of the provider (its instruments/all.txt)."""
    if not benchmark:
        return
    known = provider_instruments(provider_uri[freq])
    if known is None:
        return  # no universe file: Qlib will say what is wrong
    if str(benchmark).upper() not in {k.upper() for k in known}:
        raise ConfigError(
            f"--benchmark {benchmark!r} is not an instrument of {provider_uri[freq]!r}",
            hint=f"pick one of {', '.join(known[:8])}{', ...' if len(known) > 8 else ''}, "
            "or leave --benchmark out (BTC-USDT when present)",
        )


def build_inputs(opts: dict[str, Any]) -> dict[str, Any]:
    """Check and read every input, then initialise Qlib and turn the CLI options into ``run_backtest``
    arguments (strategy config, times, ...). Nothing is read by Qlib before all of it checked out."""
    import pandas as pd

    from ..strategy.targets import scores_frame, signals_frame
    from ..timeframes import get_timeframe

    signals_path, pred_path = opts.get("signals_path"), opts.get("pred_path")
    if bool(signals_path) == bool(pred_path):
        raise ConfigError(
            "give exactly one of --signals and --pred",
            hint="--signals for BUY/SELL/HOLD signals, --pred for model scores (pred.pkl)",
        )
    check_options(opts)
    strategy_name = opts.get("strategy") or ("signal" if signals_path else "longshort")
    freq = opts["freq"]
    bar = pd.Timedelta(milliseconds=get_timeframe(freq).ms)
    option = "--signals" if signals_path else "--pred"
    if strategy_name == "signal" and not signals_path:
        raise ConfigError("--strategy signal needs --signals", hint="use --strategy longshort or topk with --pred")
    raw = read_table(signals_path or pred_path, option)
    try:
        if signals_path:
            frame = signals_frame(raw)
            if strategy_name != "signal":
                if not isinstance(raw, pd.DataFrame) or "score" not in raw.columns:
                    raise ConfigError(
                        f"--strategy {strategy_name} needs scores; {signals_path!r} has no score column",
                        hint="use --strategy signal, or --pred pred.pkl",
                    )
                scores = scores_frame(raw[["datetime", "instrument", "score"]])
        else:
            scores = scores_frame(raw)
            frame = scores
    except ConfigError:
        raise
    except (ValueError, TypeError, KeyError, IndexError) as exc:
        raise ConfigError(
            f"{option} file {str(signals_path or pred_path)!r} has unreadable values "
            f"({type(exc).__name__}: {_one_line(exc)})",
            hint="check its datetime, instrument and signal/score columns",
        ) from None
    if len(frame) == 0:
        raise ConfigError("the input holds no rows", hint="check the signals/pred file")
    provider_uri = resolve_provider(opts["provider_dir"], freq)
    skip_unknown = bool(opts.get("skip_unknown"))
    frame = check_against_provider(frame, provider_uri[freq], freq, skip_unknown=skip_unknown, option=option)
    if strategy_name != "signal" and signals_path:
        scores = scores[scores["instrument"].isin(set(frame["instrument"]))] if skip_unknown else scores
    elif not signals_path:
        scores = frame
    from ..provider.meta import read_provider_meta

    meta_doc = read_provider_meta(provider_uri[freq])
    inst_types = {
        k: v.get("instType")
        for k, v in sorted((meta_doc or {}).get("instruments", {}).items())
        if isinstance(v, dict) and v.get("instType")
    }
    long_only = bool(opts.get("long_only"))
    if strategy_name == "longshort":
        from ..strategy.targets import check_longshort_universe

        finite = scores[scores["score"].notna()]
        check_longshort_universe(finite["instrument"].unique(), inst_types, long_only, where=f"{option} file")
    exchange, executor = load_config(opts.get("config_path"))
    if opts.get("max_participation") is not None:
        exchange["max_participation"] = parse_participation(opts["max_participation"])
    fees = parse_fees(opts.get("fees"))
    if fees is not None:
        merged = {m: dict(r) for m, r in (exchange.get("fees") or {}).items()}
        for market, rates in fees.items():
            merged.setdefault(market, {}).update(rates)
        exchange["fees"] = merged
    if opts.get("max_leverage") is not None:
        executor["max_leverage"] = float(opts["max_leverage"])
    check_benchmark(provider_uri, freq, opts.get("benchmark"))
    init_qlib(provider_uri)
    if strategy_name == "signal":
        strategy = {
            "class": "SignalStrategy",
            "module_path": "qlib_crypto.strategy",
            "kwargs": {"signals": frame, "instrument_meta": inst_types},
        }
    else:
        pred = scores.set_index(["datetime", "instrument"])["score"]
        if strategy_name == "longshort":
            strategy = {
                "class": "LongShortStrategy",
                "module_path": "qlib_crypto.strategy",
                "kwargs": {
                    "signal": pred,
                    "topk": int(opts["topk"]),
                    "rebalance_every": int(opts["rebalance_every"]),
                    "gross_exposure": float(opts["gross_exposure"]),
                    "long_only": long_only,
                    "instrument_meta": inst_types,
                },
            }
        else:
            strategy = {
                "class": "TopkDropoutStrategy",
                "module_path": "qlib.contrib.strategy",
                "kwargs": {"signal": pred, "topk": int(opts["topk"]), "n_drop": int(opts["n_drop"])},
            }
    start = parse_time(opts.get("start"), "--start")  # naive UTC, as Qlib's calendars hold times
    end = parse_time(opts.get("end"), "--end")
    start = frame["datetime"].min() if start is None else start
    end = (frame["datetime"].max() + bar) if end is None else end
    return {
        "strategy": strategy,
        "strategy_name": strategy_name,
        "freq": freq,
        "start_time": start,
        "end_time": end,
        "exchange": exchange,
        "executor": executor,
        "account": float(opts["account"]),
        "benchmark": opts.get("benchmark"),
    }


def apply_fee_multiplier(exchange: dict[str, Any], multiplier: float) -> dict[str, Any]:
    """The exchange kwargs with every fee rate (the defaults included) times ``multiplier``."""
    from ..backtest import DEFAULT_FEES
    from ..workflow.backtest_record import scale_fees

    fees = {m: dict(r) for m, r in DEFAULT_FEES.items()}
    for market, rates in (exchange.get("fees") or {}).items():
        fees.setdefault(market, {}).update(rates)
    out = dict(exchange)
    out["fees"] = scale_fees(fees, multiplier)
    return out


# ------------------------------------------------------------------------------------------------------
# the command
# ------------------------------------------------------------------------------------------------------
@click.command("backtest")
@input_options
@click.option("--slippage-bps", type=float, default=None, help="Fixed slippage in basis points (default: config or 0).")
@click.option("--fee-multiplier", type=float, default=1.0, show_default=True, help="Multiply every fee rate.")
@click.option(
    "--out",
    "out_dir",
    default="reports/backtest",
    show_default=True,
    type=click.Path(),
    metavar="DIR",
    help="Output directory: metrics.json, report.json, report.html, fills.csv, trades.csv, equity.csv...",
)
@click.option(
    "--model-run",
    default=None,
    metavar="RUN_ID",
    help="MLflow run id of the model behind the signals, recorded in the report's info (the demo sets it).",
)
def command(
    out_dir: str, slippage_bps: float | None, fee_multiplier: float, model_run: str | None = None, **opts: Any
) -> int:
    """Backtest signals (SignalStrategy) or model scores (LongShortStrategy / TopkDropoutStrategy) with
    CryptoExchange + CryptoExecutor; write the report as JSON, HTML and CSV.

    Trust: --signals files are data (Parquet or CSV; pickles are refused). A --pred pred.pkl is a pickle,
    which runs code when loaded: give only one from a trusted source (your own qrun run).

    \b
    Example:
      qlib-crypto backtest --signals reports/signals.parquet \\
          --provider-dir data/qlib/synthetic/60min --freq 60min --slippage-bps 2 --out reports/backtest
    """
    check_input_files(opts)
    if slippage_bps is not None:
        check_number(slippage_bps, "--slippage-bps", minimum=0.0, hint="give basis points >= 0, e.g. 2")
    check_number(fee_multiplier, "--fee-multiplier", minimum=0.0, hint="give a number >= 0, e.g. 1")
    check_output_dir(out_dir)
    inputs = build_inputs(opts)
    from ..workflow.backtest_record import run_backtest

    exchange = dict(inputs["exchange"])
    if slippage_bps is not None:
        exchange["slippage_bps"] = float(slippage_bps)
    if fee_multiplier != 1.0:
        exchange = apply_fee_multiplier(exchange, fee_multiplier)
    run = run_backtest(
        inputs["strategy"],
        start_time=inputs["start_time"],
        end_time=inputs["end_time"],
        freq=inputs["freq"],
        account=inputs["account"],
        benchmark=inputs["benchmark"],
        exchange=exchange,
        executor=inputs["executor"],
    )
    info = {
        "strategy": inputs["strategy_name"],
        "slippage_bps": float(exchange.get("slippage_bps", 0.0)),
        "fee_multiplier": float(fee_multiplier),
    }
    if model_run:
        info["model_run"] = str(model_run)
    report = run.report(info)
    # one unit: the report files and these two are staged beside out_dir and swapped in together
    paths = report.write(
        out_dir,
        title=f"qlib-crypto backtest ({inputs['strategy_name']}, {inputs['freq']})",
        extra={"order_reports.csv": run.order_reports, "funding.csv": run.funding_events},
    )
    m = report.metrics
    click.echo(
        f"backtest {inputs['strategy_name']} {report.info['start']} .. {report.info['end']}: "
        f"{report.info['n_bars']} bars, {len(report.fills)} fills, {len(report.trades)} trades"
    )
    click.echo(order_summary_line(run.order_summary(), run.settings))
    click.echo(json_line(m))
    click.echo(f"wrote {paths['metrics.json']} and {paths['report.html']}")
    return 0


def json_line(metrics: dict[str, Any]) -> str:
    """The metrics as one line of valid JSON: floats rounded to 6 decimals, NaN and infinities as null."""

    def clean(v: Any) -> Any:
        if isinstance(v, float):
            return round(v, 6) + 0.0 if math.isfinite(v) else None  # + 0.0: no "-0.0"
        return v

    return json.dumps({k: clean(v) for k, v in metrics.items()}, allow_nan=False)


def order_summary_line(summary: dict[str, Any], settings: dict[str, Any]) -> str:
    """``orders: N sent, C capped by the participation cap (...), U not fully filled (...)`` for the console."""
    cap = settings.get("max_participation")
    cap_text = "no participation cap" if cap is None else f"participation cap {cap:g} of bar volume"
    line = (
        f"orders: {summary['orders']} sent; {summary['orders_capped']} capped ({cap_text}; "
        f"{summary['capped_notional']:,.2f} notional cut); {summary['orders_unfilled']} not fully filled "
        f"({summary['unfilled_notional']:,.2f} notional unfilled)"
    )
    n_default = settings.get("instruments_default_metadata") or 0
    if n_default:
        line += (
            f"; {n_default} instrument(s) without metadata use the defaults (no lot size or minimums, contract value 1)"
        )
    return line
