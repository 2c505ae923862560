"""``qlib-crypto predict``: score bars with a saved model (file or recorder run) and write signals."""

from __future__ import annotations

import click

from ..errors import ConfigError


def _provider_option(values: tuple[str, ...]):
    """``DIR`` or ``freq=DIR`` pairs -> a directory or a ``{freq: dir}`` mapping."""
    if not values:
        raise ConfigError("no provider directory given", hint="pass --provider-dir DIR (or 60min=DIR day=DIR)")
    pairs = [v for v in values if "=" in v]
    if not pairs:
        if len(values) > 1:
            raise ConfigError(
                f"several provider directories without frequencies: {', '.join(values)}",
                hint="name them as freq=DIR, e.g. 60min=data/qlib/synthetic/60min",
            )
        return values[0]
    if len(pairs) != len(values):
        raise ConfigError(f"mixed DIR and freq=DIR values: {', '.join(values)}", hint="use freq=DIR for every one")
    mapping = {}
    for v in pairs:
        freq, _, path = v.partition("=")
        from ..timeframes import get_timeframe

        mapping[get_timeframe(freq).qlib_freq] = path
    return mapping


@click.command("predict")
@click.option(
    "--model",
    "model_path",
    type=click.Path(),
    help="Model file written by save_model / ModelArtifactRecord. A model file is a pickle, which runs "
    "code when loaded: use only models from a trusted source. It is checked against its "
    ".meta.yaml (sha256 of both) before anything is loaded.",
)
@click.option(
    "--experiment",
    help="Recorder experiment to load the model from (instead of --model); the run's "
    "artifacts are pickles too: use only a trusted tracking store.",
)
@click.option("--run-id", default="latest", show_default=True, help="Recorder run id, or 'latest' finished run.")
@click.option(
    "--tracking-uri",
    help="MLflow tracking URI of the recorder (default: $MLFLOW_TRACKING_URI or ./mlruns); "
    "a local store must exist (it is never created).",
)
@click.option(
    "--provider-dir", "provider_dirs", multiple=True, help="Qlib provider directory, or freq=DIR pairs (repeatable)."
)
@click.option("--freq", help="Bar frequency (60min, day, 1h...); default: the model's.")
@click.option(
    "--start",
    help="First bar to score, ISO 8601 (UTC unless an offset is given), e.g. 2024-06-01 or '2024-06-01 05:00'; with --end scores a range.",
)
@click.option(
    "--end", help="Last bar to score, ISO 8601 (UTC unless an offset is given; default: the provider's last bar)."
)
@click.option(
    "--latest", is_flag=True, help="Score only the last bar at or before --end (the default without --start)."
)
@click.option("--rules", "rules_file", type=click.Path(), help="YAML file of signal rules.")
@click.option(
    "--mode", type=click.Choice(["threshold", "quantile", "rank"]), help="Signal rule mode (default quantile)."
)
@click.option("--buy-threshold", type=float, help="threshold mode: score above this -> BUY (default 0).")
@click.option("--sell-threshold", type=float, help="threshold mode: score below this -> SELL (default 0).")
@click.option("--buy-quantile", type=float, help="quantile mode: top fraction -> BUY (default 0.2).")
@click.option("--sell-quantile", type=float, help="quantile mode: bottom fraction -> SELL (default 0.2).")
@click.option("--max-position", type=float, help="Largest |size| per instrument, fraction of equity (default 0.1).")
@click.option("--max-total", type=float, help="Largest sum of |size| per bar (default 1.0).")
@click.option("--vol-target", type=float, help="Annualised volatility target per position (default off).")
@click.option("--vol-window", type=int, help="Bars of realised volatility (default one week of bars, >= 20).")
@click.option("--long-only", is_flag=True, default=None, help="SELL means flat (size 0) instead of short.")
@click.option(
    "--warmup-bars",
    type=int,
    help="History bars (>= 0) loaded before the first scored bar (default: the model's, else 400).",
)
@click.option("--out", required=True, type=click.Path(), help="Signals Parquet file to write (not a directory).")
def command(
    model_path,
    experiment,
    run_id,
    tracking_uri,
    provider_dirs,
    freq,
    start,
    end,
    latest,
    rules_file,
    mode,
    buy_threshold,
    sell_threshold,
    buy_quantile,
    sell_quantile,
    max_position,
    max_total,
    vol_target,
    vol_window,
    long_only,
    warmup_bars,
    out,
) -> int:
    """Score bars with a trained model and write BUY/SELL/HOLD signals with position sizes.

    The signals Parquet file has columns datetime, instrument, score, signal, position_size (signed: negative
    = short). Rules and defaults are in docs/predict.md.

    Trust: model files and recorder artifacts are pickles, which run code when loaded; use only models from a
    trusted source. Before loading, the model file is checked against the sha256 in its .meta.yaml, the
    .meta.yaml against its own metadata_sha256, and every module its handler config names must be an
    installed module (file paths are refused, never imported).

    \b
    Examples:
      # the latest bar, model from the demo's recorder run
      qlib-crypto predict --experiment crypto_lightgbm_60min --provider-dir data/qlib/synthetic/60min \\
          --out reports/signals_latest.parquet
      # a range, model file, top/bottom 10% by score, at most 5% of equity per instrument
      qlib-crypto predict --model models/lgb_60min.pkl --provider-dir 60min=data/qlib/synthetic/60min \\
          --start 2024-06-01 --end 2024-06-30 --mode quantile --buy-quantile 0.1 --sell-quantile 0.1 \\
          --max-position 0.05 --out reports/signals_june.parquet
    """
    from ..workflow.signals import SignalRules

    if model_path is None and experiment is None:
        raise ConfigError("no model given", hint="pass --model PATH or --experiment NAME [--run-id ID]")
    if model_path is not None and experiment is not None:
        raise ConfigError("both --model and --experiment given", hint="pass only one of them")
    if latest and start is not None:
        raise ConfigError(f"--latest and --start {start} both given", hint="use --latest, or --start/--end for a range")
    from ..timeparse import parse_naive_utc  # ISO 8601 only, -> naive UTC as Qlib's calendars hold times

    start, end = parse_naive_utc(start, "--start"), parse_naive_utc(end, "--end")
    if start is not None and end is not None and start > end:
        raise ConfigError(f"--start {start} is after --end {end} (UTC)", hint="swap them")
    if warmup_bars is not None and warmup_bars < 0:
        raise ConfigError(
            f"--warmup-bars {warmup_bars} is negative",
            hint="give the history bars to load before the first scored bar, e.g. 400",
        )
    from ..provider.dump import check_output_location

    check_output_location(out, "--out", kind="file", error=ConfigError)
    # fail fast, before Qlib is imported and before anything is unpickled
    if model_path is not None:  # the model and its metadata must match (sha256 of both), modules installed
        from ..workflow.model_io import verify_model

        verify_model(model_path)
    else:  # a local tracking store must exist (MLflow would create an empty one)
        from ..workflow.model_io import check_tracking_uri, default_tracking_uri

        check_tracking_uri(tracking_uri or default_tracking_uri())
    provider = _provider_option(provider_dirs)
    rules = SignalRules.from_yaml(rules_file) if rules_file else SignalRules()
    rules = rules.updated(
        mode=mode,
        buy_threshold=buy_threshold,
        sell_threshold=sell_threshold,
        buy_quantile=buy_quantile,
        sell_quantile=sell_quantile,
        max_position=max_position,
        max_total=max_total,
        vol_target=vol_target,
        vol_window=vol_window,
        long_only=long_only,
    )

    from ..workflow.predict import predict

    signals = predict(
        model_path,
        provider_uri=provider,
        freq=freq,
        experiment=experiment,
        run_id=run_id,
        tracking_uri=tracking_uri,
        start=start,
        end=end,
        latest=start is None,
        rules=rules,
        out=out,
        warmup_bars=warmup_bars,
    )
    counts = signals["signal"].value_counts()
    click.echo(
        f"wrote {len(signals)} signals to {out} "
        f"(BUY {counts.get('BUY', 0)}, SELL {counts.get('SELL', 0)}, HOLD {counts.get('HOLD', 0)})"
    )
    if len(signals):
        click.echo(latest_bar_table(signals))
    return 0


#: rows printed from each end of the latest bar's ranking (best scores and worst scores)
TABLE_ENDS = 10


def latest_bar_table(signals, ends: int = TABLE_ENDS) -> str:
    """The latest bar's signals, best score first: every row when there are at most ``2 x ends``, else the
    ``ends`` best and the ``ends`` worst (so SELL rows show as well as BUY rows) around a line counting the
    rows left out. Ties keep instrument order."""
    last = signals[signals["datetime"] == signals["datetime"].max()]
    last = last.sort_values(["score", "instrument"], ascending=[False, True], kind="mergesort", na_position="last")
    columns = ["instrument", "score", "signal", "position_size"]
    table = last[columns].to_string(index=False, float_format=lambda x: f"{x:.4f}").splitlines()
    header, rows = table[0], table[1:]
    if len(rows) > 2 * ends:
        rows = rows[:ends] + [f"... {len(rows) - 2 * ends} more instruments ..."] + rows[-ends:]
    title = f"latest bar {last['datetime'].iloc[0]} ({len(last)} instruments, best score first):"
    return "\n".join([title, header, *rows])
