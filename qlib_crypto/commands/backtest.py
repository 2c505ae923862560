"""``qlib-crypto backtest``: backtest signals or model scores with the crypto exchange and write a report.

Heavy imports (Qlib, pandas) happen inside the functions so that ``qlib-crypto --help`` stays fast.
"""
from __future__ import annotations

import json
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
        click.option("--signals", "signals_path", type=click.Path(dir_okay=False),
                     help="Signals Parquet from `qlib-crypto predict` (datetime, instrument, signal, position_size)."),
        click.option("--pred", "pred_path", type=click.Path(dir_okay=False),
                     help="Model scores (pred.pkl: a Series on a (datetime, instrument) index)."),
        click.option("--provider-dir", required=True, type=click.Path(file_okay=False),
                     help="Qlib provider directory of --freq (its sibling `day` directory is used too), "
                          "or a parent holding <freq>/ and day/."),
        click.option("--freq", default="60min", show_default=True, help="Bar frequency of the backtest (60min, day...)."),
        click.option("--start", default=None, help="First bar (UTC, e.g. 2024-04-01); default: first signal."),
        click.option("--end", default=None, help="Last bar (UTC); default: one bar after the last signal."),
        click.option("--strategy", type=click.Choice(STRATEGIES), default=None,
                     help="signal (SignalStrategy), longshort (LongShortStrategy on swaps), topk (Qlib's "
                          "TopkDropoutStrategy, long-only). Default: signal with --signals, longshort with --pred."),
        click.option("--topk", type=int, default=3, show_default=True, help="longshort: swaps per side; topk: holdings."),
        click.option("--n-drop", type=int, default=1, show_default=True, help="topk: holdings replaced per bar."),
        click.option("--rebalance-every", type=int, default=1, show_default=True, help="longshort: bars between rebalances."),
        click.option("--gross-exposure", type=float, default=1.0, show_default=True,
                     help="longshort: sum of absolute weights (1.0 = half long, half short)."),
        click.option("--fees", default=None,
                     help="Fee rates, e.g. 'spot.taker=0.001,swap.taker=0.0005' or '{swap: {taker: 0.0005}}'. "
                          "Default: OKX base tier."),
        click.option("--config", "config_path", type=click.Path(dir_okay=False),
                     help="Exchange YAML: CryptoExchange kwargs, or an `exchange:` block with class/module_path/kwargs; "
                          "an optional `executor:` mapping holds CryptoExecutor kwargs. Options given here override it."),
        click.option("--max-leverage", type=float, default=None, help="Gross exposure / equity cap (executor default 3)."),
        click.option("--account", type=float, default=1_000_000.0, show_default=True, help="Initial equity (quote currency)."),
        click.option("--benchmark", default=None, help="Benchmark instrument (default BTC-USDT when present)."),
    ]
    for opt in reversed(options):
        func = opt(func)
    return func


def resolve_provider(provider_dir: str | Path, freq: str) -> dict[str, str]:
    """``provider_uri`` for ``qlib.init``: the frequency directory and the ``day`` directory beside it."""
    root = Path(provider_dir)
    if not root.is_dir():
        raise ConfigError(f"provider directory {str(root)!r} does not exist",
                          hint="dump the store first (`qlib-crypto dump`) or run `qlib-crypto demo`")
    if (root / "calendars" / f"{freq}.txt").is_file():
        freq_dir, day_dir = root, root.parent / "day"
    elif (root / freq / "calendars" / f"{freq}.txt").is_file():
        freq_dir, day_dir = root / freq, root / "day"
    else:
        raise ConfigError(f"no {freq} calendar under {str(root)!r} (looked for calendars/{freq}.txt and {freq}/calendars/)",
                          hint="give the provider directory dumped at --freq, e.g. data/qlib/synthetic/60min")
    uri = {freq: str(freq_dir.resolve())}
    if freq != "day":
        if not (day_dir / "calendars" / "day.txt").is_file():
            raise ConfigError(f"no day provider beside {str(freq_dir)!r} (looked in {str(day_dir)!r})",
                              hint="Qlib builds the account at `day` first: dump a `day` directory next to it")
        uri["day"] = str(day_dir.resolve())
    return uri


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
                raise ConfigError(f"bad fee item {part.strip()!r}", hint="write market.role=rate, e.g. swap.taker=0.0005")
            try:
                out.setdefault(market, {})[role] = float(value)
            except ValueError:
                raise ConfigError(f"fee rate {value.strip()!r} is not a number", hint="e.g. swap.taker=0.0005") from None
        return out
    import yaml

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"--fees {text!r} is not valid YAML: {exc}", hint="e.g. '{swap: {taker: 0.0005}}'") from None
    if not isinstance(data, dict):
        raise ConfigError(f"--fees {text!r} is not a mapping", hint="e.g. spot.taker=0.001,swap.taker=0.0005")
    return data


def load_config(path: str | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """(exchange config, executor kwargs) from an exchange YAML file."""
    if not path:
        return {}, {}
    import yaml

    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {str(p)!r} does not exist", hint="give the path of an exchange YAML file")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {str(p)!r} is not valid YAML: {exc}", hint="fix the YAML syntax") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {str(p)!r} holds a {type(data).__name__}", hint="write a YAML mapping")
    executor = data.pop("executor", None) or {}
    if isinstance(executor, dict) and "kwargs" in executor:
        executor = executor["kwargs"] or {}
    exchange = data.pop("exchange", None)
    if exchange is None:
        exchange = data
    elif data:
        raise ConfigError(f"config file {str(p)!r} has unknown top-level keys {sorted(data)}",
                          hint="use `exchange:` and `executor:` blocks, or only CryptoExchange kwargs")
    if isinstance(exchange, dict) and "kwargs" in exchange:
        exchange = dict(exchange.get("kwargs") or {})
    return dict(exchange), dict(executor)


def check_input_files(opts: dict[str, Any]) -> None:
    """Fail fast, before Qlib is imported: exactly one of --signals/--pred, and it must exist."""
    signals_path, pred_path = opts.get("signals_path"), opts.get("pred_path")
    if bool(signals_path) == bool(pred_path):
        raise ConfigError("give exactly one of --signals and --pred",
                          hint="--signals for BUY/SELL/HOLD signals, --pred for model scores (pred.pkl)")
    path = Path(signals_path or pred_path)
    if not path.is_file():
        option = "--signals" if signals_path else "--pred"
        raise ConfigError(f"{option} file {str(path)!r} does not exist", hint="give the path of an existing file")


def build_inputs(opts: dict[str, Any]) -> dict[str, Any]:
    """Initialise Qlib and turn the CLI options into ``run_backtest`` arguments (strategy config, times, ...)."""
    import pandas as pd

    from ..strategy.targets import scores_frame, signals_frame
    from ..timeframes import get_timeframe

    signals_path, pred_path = opts.get("signals_path"), opts.get("pred_path")
    if bool(signals_path) == bool(pred_path):
        raise ConfigError("give exactly one of --signals and --pred",
                          hint="--signals for BUY/SELL/HOLD signals, --pred for model scores (pred.pkl)")
    strategy_name = opts.get("strategy") or ("signal" if signals_path else "longshort")
    freq = opts["freq"]
    bar = pd.Timedelta(milliseconds=get_timeframe(freq).ms)
    if signals_path:
        frame = signals_frame(signals_path)
        if strategy_name != "signal":
            raw = pd.read_parquet(signals_path) if str(signals_path).endswith(".parquet") else None
            if raw is None or "score" not in raw.columns:
                raise ConfigError(f"--strategy {strategy_name} needs scores; {signals_path!r} has no score column",
                                  hint="use --strategy signal, or --pred pred.pkl")
            scores = scores_frame(raw[["datetime", "instrument", "score"]])
    else:
        if strategy_name == "signal":
            raise ConfigError("--strategy signal needs --signals", hint="use --strategy longshort or topk with --pred")
        scores = scores_frame(pred_path)
        frame = scores
    if len(frame) == 0:
        raise ConfigError("the input holds no rows", hint="check the signals/pred file")
    for name in ("topk", "rebalance_every"):
        if int(opts.get(name) or 0) < 1:
            raise ConfigError(f"--{name.replace('_', '-')} {opts.get(name)} is below 1", hint="give an integer >= 1")
    init_qlib(resolve_provider(opts["provider_dir"], freq))
    if strategy_name == "signal":
        strategy = {"class": "SignalStrategy", "module_path": "qlib_crypto.strategy", "kwargs": {"signals": frame}}
    else:
        pred = scores.set_index(["datetime", "instrument"])["score"]
        if strategy_name == "longshort":
            strategy = {"class": "LongShortStrategy", "module_path": "qlib_crypto.strategy",
                        "kwargs": {"signal": pred, "topk": int(opts["topk"]),
                                   "rebalance_every": int(opts["rebalance_every"]),
                                   "gross_exposure": float(opts["gross_exposure"])}}
        else:
            strategy = {"class": "TopkDropoutStrategy", "module_path": "qlib.contrib.strategy",
                        "kwargs": {"signal": pred, "topk": int(opts["topk"]), "n_drop": int(opts["n_drop"])}}
    exchange, executor = load_config(opts.get("config_path"))
    fees = parse_fees(opts.get("fees"))
    if fees is not None:
        merged = {m: dict(r) for m, r in (exchange.get("fees") or {}).items()}
        for market, rates in fees.items():
            merged.setdefault(market, {}).update(rates)
        exchange["fees"] = merged
    if opts.get("max_leverage") is not None:
        executor["max_leverage"] = float(opts["max_leverage"])
    start = opts.get("start") or frame["datetime"].min()
    end = opts.get("end") or (frame["datetime"].max() + bar)
    return {"strategy": strategy, "strategy_name": strategy_name, "freq": freq, "start_time": start, "end_time": end,
            "exchange": exchange, "executor": executor, "account": float(opts["account"]),
            "benchmark": opts.get("benchmark")}


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
@click.option("--out", "out_dir", default="reports/backtest", show_default=True, type=click.Path(file_okay=False),
              help="Output directory: metrics.json, report.json, report.html, fills.csv, trades.csv, equity.csv...")
def command(out_dir: str, slippage_bps: float | None, fee_multiplier: float, **opts: Any) -> int:
    """Backtest signals (SignalStrategy) or model scores (LongShortStrategy / TopkDropoutStrategy) with
    CryptoExchange + CryptoExecutor; write the report as JSON, HTML and CSV.

    \b
    Example:
      qlib-crypto backtest --signals reports/signals.parquet \\
          --provider-dir data/qlib/synthetic/60min --freq 60min --slippage-bps 2 --out reports/backtest
    """
    check_input_files(opts)
    from ..workflow.backtest_record import run_backtest

    inputs = build_inputs(opts)
    exchange = dict(inputs["exchange"])
    if slippage_bps is not None:
        if slippage_bps < 0:
            raise ConfigError(f"--slippage-bps {slippage_bps} is negative", hint="give basis points >= 0")
        exchange["slippage_bps"] = float(slippage_bps)
    if fee_multiplier != 1.0:
        if not fee_multiplier >= 0:
            raise ConfigError(f"--fee-multiplier {fee_multiplier} is negative", hint="give a number >= 0")
        exchange = apply_fee_multiplier(exchange, fee_multiplier)
    run = run_backtest(inputs["strategy"], start_time=inputs["start_time"], end_time=inputs["end_time"],
                       freq=inputs["freq"], account=inputs["account"], benchmark=inputs["benchmark"],
                       exchange=exchange, executor=inputs["executor"])
    report = run.report({"strategy": inputs["strategy_name"], "slippage_bps": float(exchange.get("slippage_bps", 0.0)),
                         "fee_multiplier": float(fee_multiplier)})
    paths = report.write(out_dir, title=f"qlib-crypto backtest ({inputs['strategy_name']}, {inputs['freq']})")
    from .._atomic import atomic_path

    for name, frame in (("order_reports.csv", run.order_reports), ("funding.csv", run.funding_events)):
        with atomic_path(Path(out_dir) / name) as tmp:
            frame.to_csv(tmp, index=False)
    m = report.metrics
    click.echo(f"backtest {inputs['strategy_name']} {report.info['start']} .. {report.info['end']}: "
               f"{report.info['n_bars']} bars, {len(report.fills)} fills, {len(report.trades)} trades")
    click.echo(json.dumps({k: (round(v, 6) if isinstance(v, float) else v) for k, v in m.items()}))
    click.echo(f"wrote {paths['metrics.json']} and {paths['report.html']}")
    return 0
