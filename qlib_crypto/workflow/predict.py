"""Score the latest bars (or a range) of a Qlib provider directory with a saved model and write signals.

The dataset is rebuilt for the requested range from what was saved with the model: the fitted dataset
(``<model>.dataset.pkl`` or the recorder's ``dataset`` artifact, so normalisation statistics are the
training ones) or else the handler config in the metadata (its processors then re-fit on their fit window,
which is loaded too). ``warmup_bars`` bars before the first scored bar are loaded so rolling windows are
full.
"""

from __future__ import annotations

import copy
import logging
import os
from pathlib import Path
from typing import Any, Mapping

import pandas as pd

from .._atomic import atomic_path
from ..errors import ConfigError, ModelError, ProviderError
from .model_io import check_config_modules, check_features, load_dataset, load_model, load_model_from_recorder
from .signals import SIGNAL_COLUMNS, SignalRules, default_vol_window, make_signals, realised_volatility

logger = logging.getLogger(__name__)

DEFAULT_WARMUP_BARS = 400


def _qlib_init(provider_uri: Mapping[str, str]) -> None:
    """qlib.init with the crypto settings (:func:`qlib_crypto.settings.init`)."""
    from ..settings import init

    init(provider_uri)


def normalize_provider_uri(provider: str | os.PathLike | Mapping[str, str], freq: str) -> dict[str, str]:
    """``{freq: dir}`` from a provider directory, a parent of one directory per frequency, or a mapping;
    the directory for ``freq`` must hold its calendar."""
    from ..settings import provider_uri

    uri = provider_uri(provider)
    if freq not in uri:
        raise ConfigError(
            f"no provider directory for frequency {freq!r} (found {', '.join(uri) or 'none'})",
            hint=f"pass the directory dumped at {freq}, or {freq}=DIR",
        )
    calendar = Path(uri[freq]) / "calendars" / f"{freq}.txt"
    if not calendar.is_file():
        raise ProviderError(
            f"provider directory {uri[freq]!r} has no calendar for {freq!r} ({calendar} missing)",
            hint="dump the store first (qlib-crypto dump) or pass the directory of this frequency",
        )
    return uri


def _naive_utc(value: Any, name: str) -> pd.Timestamp:
    """A timestamp as Qlib's calendars hold it: naive UTC (aware values are converted to UTC)."""
    try:
        ts = pd.Timestamp(value)
    except (ValueError, TypeError):
        raise ConfigError(
            f"{name}={value!r} is not a timestamp", hint="use e.g. 2024-06-01 or 2024-06-01T12:00"
        ) from None
    return ts.tz_convert("UTC").tz_localize(None) if ts.tz is not None else ts


def _resolve_model(model_path, experiment, run_id, tracking_uri):
    if (model_path is None) == (experiment is None):
        raise ConfigError(
            "give exactly one of a model path and a recorder experiment",
            hint="use --model PATH or --experiment NAME [--run-id ID]",
        )
    if model_path is not None:
        model, meta = load_model(model_path)
        return model, meta, load_dataset(meta["model_path"], meta)
    return load_model_from_recorder(experiment, run_id or "latest", tracking_uri, with_dataset=True)


def _instrument_list(instruments: Any, start, end, freq: str) -> list[str]:
    from qlib.data import D

    if isinstance(instruments, (list, tuple)):
        return [str(i) for i in instruments]
    market = D.instruments(instruments) if isinstance(instruments, str) else instruments
    return list(D.list_instruments(market, start_time=start, end_time=end, freq=freq, as_list=True))


def predict(
    model_path: str | os.PathLike | None = None,
    *,
    provider_uri: str | os.PathLike | Mapping[str, str],
    freq: str | None = None,
    experiment: str | None = None,
    run_id: str = "latest",
    tracking_uri: str | None = None,
    start: Any = None,
    end: Any = None,
    latest: bool | None = None,
    rules: SignalRules | Mapping | None = None,
    out: str | os.PathLike | None = None,
    instruments: Any = None,
    warmup_bars: int | None = None,
    init_qlib: bool = True,
) -> pd.DataFrame:
    """Score bars with a saved model and turn the scores into signals.

    ``latest`` (default: True when ``start`` is None, else False) scores the last calendar bar at or before ``end``
    (default: the last bar of the provider); otherwise every bar in ``[start, end]``. Instruments without
    a bar at a scored datetime are left out. Returns (and with ``out`` writes, atomically, as Parquet) a
    frame with columns ``datetime, instrument, score, signal, position_size``; ``datetime`` is the bar
    open time in UTC.

    The model file is a pickle (it runs code when loaded): use only models from a trusted source. It is
    verified against its metadata (see :func:`qlib_crypto.workflow.model_io.verify_model`) before anything in
    the metadata is used.
    """
    from ..timeframes import get_timeframe

    check_warmup_bars(warmup_bars, "warmup_bars")
    if out is not None:
        from ..provider.dump import check_output_location

        check_output_location(out, "out", kind="file", error=ConfigError)
    rules = rules if isinstance(rules, SignalRules) else SignalRules.from_dict(rules)
    if latest is None:
        latest = start is None
    if latest and start is not None:
        raise ConfigError(f"latest=True and start={start!r} both given", hint="drop start, or pass latest=False")
    if not latest and start is None:
        raise ConfigError("latest=False needs a start", hint="pass start (and optionally end) for a range")
    model, meta, dataset = _resolve_model(model_path, experiment, run_id, tracking_uri)
    model_freq = meta.get("freq")
    freq = freq or model_freq
    if not freq:
        raise ConfigError("the frequency is unknown", hint="pass freq (e.g. 60min); the model metadata has none")
    freq = get_timeframe(freq).qlib_freq
    if model_freq and get_timeframe(model_freq).qlib_freq != freq:
        raise ModelError(
            f"the model was trained on {model_freq!r} bars but {freq!r} was asked",
            hint=f"predict with freq={model_freq!r}, or use a model trained at {freq}",
        )
    uri = normalize_provider_uri(provider_uri, freq)
    if init_qlib:
        _qlib_init(uri)

    from qlib.data import D
    from qlib.data.dataset import DatasetH
    from qlib.data.dataset.handler import DataHandlerLP
    from qlib.utils import init_instance_by_config

    cal = pd.DatetimeIndex(D.calendar(freq=freq))
    if len(cal) == 0:
        raise ProviderError(f"the {freq} calendar of {uri!r} is empty", hint="dump some bars first")
    end_ts = cal[-1] if end is None else _naive_utc(end, "end")
    i_end = cal.searchsorted(end_ts, side="right") - 1
    if i_end < 0:
        raise ConfigError(f"end={end!r} is before the first bar {cal[0]}", hint="pick a later end")
    if latest:
        i_start = i_end
    else:
        i_start = cal.searchsorted(_naive_utc(start, "start"), side="left")
        if i_start > i_end:
            raise ConfigError(f"no {freq} bar between start={start!r} and end={end_ts}", hint="widen the range")
    t_start, t_end = cal[i_start], cal[i_end]
    extra = dict(meta.get("extra") or {})
    warmup = warmup_bars if warmup_bars is not None else extra.get("warmup_bars") or DEFAULT_WARMUP_BARS
    warmup = check_warmup_bars(
        warmup, "the model metadata's extra.warmup_bars" if warmup_bars is None else "warmup_bars"
    )
    load_start = cal[max(0, i_start - warmup)]

    segments = {"test": (t_start, t_end)}
    if dataset is not None:
        handler_kwargs: dict[str, Any] = {"start_time": load_start, "end_time": t_end}
        if instruments is not None:
            handler_kwargs["instruments"] = instruments
        dataset.config(handler_kwargs=handler_kwargs, segments=segments)
        dataset.setup_data(handler_kwargs={"init_type": DataHandlerLP.IT_LS})
    else:
        hcfg = copy.deepcopy(meta.get("handler_config"))
        if not hcfg:
            raise ModelError("the model metadata has no handler config", hint="re-save the model with handler_config")
        check_config_modules(hcfg, "the model metadata's handler_config")  # never import a file it names
        kwargs = hcfg.setdefault("kwargs", {})
        fit_start = kwargs.get("fit_start_time")
        if fit_start is not None and pd.Timestamp(fit_start) < load_start:
            load_start = pd.Timestamp(fit_start)  # processors re-fit on their window: load it
        kwargs.update(start_time=load_start, end_time=t_end)
        if instruments is not None:
            kwargs["instruments"] = instruments
        dataset = DatasetH(handler=init_instance_by_config(hcfg, accept_types=DataHandlerLP), segments=segments)

    features = dataset.prepare("test", col_set="feature", data_key=DataHandlerLP.DK_I)
    if meta.get("feature_names") is not None:
        check_features(
            meta["feature_names"],
            list(features.columns.get_level_values(-1)),
            model_name=str(meta.get("model_path") or meta.get("source") or "the model"),
        )
    if features.empty:
        raise ProviderError(f"no feature rows between {t_start} and {t_end}", hint="check the instruments and range")
    scores = model.predict(dataset, segment="test")
    if isinstance(scores, pd.DataFrame):
        scores = scores.iloc[:, 0]
    scores = scores.rename("score")

    # the raw close decides which (datetime, instrument) pairs have a bar, and feeds the realised volatility
    vol_window = rules.vol_window or default_vol_window(freq)
    close_start = cal[max(0, i_start - vol_window - 1)]
    inst_list = _instrument_list(dataset.handler.instruments, close_start, t_end, freq)
    close = D.features(inst_list, ["$close"], close_start, t_end, freq=freq)
    close = close["$close"].swaplevel().sort_index() if not close.empty else pd.Series(dtype="float64")
    keep = close.reindex(scores.index).notna().to_numpy()
    scores = scores[keep]
    volatility = None
    if rules.vol_target is not None:
        wide = close.unstack("instrument")
        from ..settings import bars_per_year

        vol = realised_volatility(wide, vol_window, bars_per_year(freq))
        volatility = vol.stack(future_stack=True).rename("volatility")
    signals = make_signals(scores, rules, volatility)
    signals["datetime"] = pd.to_datetime(signals["datetime"]).dt.tz_localize("UTC").astype("datetime64[ms, UTC]")
    signals["instrument"] = signals["instrument"].astype(str)
    signals = signals[SIGNAL_COLUMNS].reset_index(drop=True)
    if out is not None:
        write_signals(signals, out)
    return signals


def check_warmup_bars(value: Any, what: str) -> int | None:
    """``value`` as a whole number of bars >= 0 (None stays None), else a ConfigError naming it."""
    if value is None:
        return None
    try:
        ok = not isinstance(value, bool) and float(value) == int(value) and int(value) >= 0
    except (TypeError, ValueError, OverflowError):
        ok = False
    if not ok:
        raise ConfigError(
            f"{what} {value!r} is not a whole number of bars >= 0",
            hint=f"give the history bars to load before the first scored bar, e.g. {DEFAULT_WARMUP_BARS}",
        )
    return int(value)


def write_signals(signals: pd.DataFrame, out: str | os.PathLike) -> Path:
    """Write a signals frame to Parquet atomically (zstd, no pandas index)."""
    out = Path(out)
    with atomic_path(out) as tmp:
        signals.to_parquet(tmp, index=False, compression="zstd")
    logger.info("wrote %d signals to %s", len(signals), out)
    return out
