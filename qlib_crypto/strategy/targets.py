"""Target -> order logic of the crypto strategies, as small pure functions (no Qlib objects).

A *target* is a signed fraction of equity: ``+0.1`` = a long worth 10% of equity, ``-0.1`` = a short of the
same size, ``0`` = flat. Strategies keep targets per instrument and turn a changed target into one order
whose signed amount is ``target x equity / price - current amount``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
import pandas as pd

from ..errors import ConfigError

BUY, SELL, HOLD = "BUY", "SELL", "HOLD"
#: the largest ``|position_size|`` a BUY/SELL signal may carry by default (a fraction of equity; 1 = all of it)
MAX_POSITION_SIZE = 1.0
_SIGNAL_ALIASES = {
    "BUY": BUY,
    "LONG": BUY,
    "1": BUY,
    "1.0": BUY,
    "SELL": SELL,
    "SHORT": SELL,
    "-1": SELL,
    "-1.0": SELL,
    "HOLD": HOLD,
    "0": HOLD,
    "0.0": HOLD,
    "NONE": HOLD,
    "NAN": HOLD,
    "": HOLD,
}


def is_swap(instrument: str, instrument_meta: Mapping[str, Any] | None = None) -> bool:
    """Perpetual swap or spot: from the metadata's ``instType`` when given, else from the ``-SWAP`` suffix."""
    if instrument_meta:
        inst_type = instrument_meta.get(instrument)
        if isinstance(inst_type, Mapping):
            inst_type = inst_type.get("instType")
        if inst_type is not None:
            return str(inst_type).upper() == "SWAP"
    return str(instrument).upper().endswith("-SWAP")


#: the normalised signal values (what ``normalize_signal`` returns; returned as they are)
_CANONICAL = frozenset((BUY, SELL, HOLD))


def normalize_signal(value: Any) -> str:
    """``BUY``/``SELL``/``HOLD`` from a signal value (strings in any case, or +1/-1/0)."""
    key = str(value).strip().upper()
    if key in _SIGNAL_ALIASES:
        return _SIGNAL_ALIASES[key]
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"unknown signal value {value!r}", hint="use BUY, SELL or HOLD (or +1, -1, 0)") from None
    if math.isnan(number) or number == 0:
        return HOLD
    return BUY if number > 0 else SELL


def signal_target(signal: str, position_size: float, swap: bool, current_target: float) -> float:
    """The new target after one signal.

    BUY -> ``+|position_size|``; SELL -> ``-|position_size|`` on a swap, ``0`` (flat) on spot;
    HOLD -> ``current_target`` (nothing changes).
    """
    sig = signal if signal in _CANONICAL else normalize_signal(signal)
    size = abs(float(position_size)) if position_size is not None and np.isfinite(position_size) else 0.0
    if sig == BUY:
        return size
    if sig == SELL:
        return -size if swap else 0.0
    return current_target


def apply_signals(
    targets: Mapping[str, float],
    signals: Iterable[tuple[str, str, float]],
    instrument_meta: Mapping[str, Any] | None = None,
) -> dict[str, float]:
    """Apply ``(instrument, signal, position_size)`` in order to a copy of ``targets`` (missing = 0)."""
    out = dict(targets)
    swaps: dict[str, bool] = {}  # is_swap per instrument, once per call
    for inst, sig, size in signals:
        swap = swaps.get(inst)
        if swap is None:
            swap = swaps[inst] = is_swap(inst, instrument_meta)
        out[inst] = signal_target(sig, size, swap, out.get(inst, 0.0))
    return out


def changed_targets(desired: Mapping[str, float], traded: Mapping[str, float], tol: float = 1e-12) -> dict[str, float]:
    """The instruments whose desired target differs from the last traded one (missing = 0)."""
    return {inst: tgt for inst, tgt in desired.items() if abs(tgt - traded.get(inst, 0.0)) > tol}


def order_delta(target: float, equity: float, price: float, current_amount: float) -> float:
    """Signed amount to trade (``+`` buy, ``-`` sell) to move from ``current_amount`` to ``target x equity``."""
    if not (price > 0 and math.isfinite(price)):
        return 0.0
    return target * equity / price - current_amount


def longonly_weights(
    scores: Mapping[str, float] | pd.Series, topk: int, gross_exposure: float = 1.0
) -> dict[str, float]:
    """Long-only weights (spot): the ``k = min(topk, n)`` best scores long ``+gross / k`` each (NaN scores
    dropped; ties broken by instrument name)."""
    items = [(str(k), float(v)) for k, v in dict(scores).items() if v is not None and np.isfinite(v)]
    k = min(int(topk), len(items))
    if k <= 0:
        return {}
    ranked = sorted(items, key=lambda kv: (-kv[1], kv[0]))
    w = float(gross_exposure) / k
    return {inst: w for inst, _ in ranked[:k]}


def check_longshort_universe(
    instruments: Iterable[str],
    instrument_meta: Mapping[str, Any] | None = None,
    long_only: bool = False,
    where: str = "the scores",
) -> None:
    """Refuse a long/short book that cannot trade: fewer than two perpetual swaps among ``instruments``.

    ``LongShortStrategy`` shorts swaps only (spot cannot be shorted), so on a spot universe it would trade
    nothing and record the metrics of a flat account. ``long_only=True`` (spot allowed) is always accepted."""
    if long_only:
        return
    names = sorted({str(i) for i in instruments})
    swaps = [n for n in names if is_swap(n, instrument_meta)]
    if len(swaps) >= 2:
        return
    shown = ", ".join(names[:6]) + (", ..." if len(names) > 6 else "")
    what = "no perpetual swaps" if not swaps else f"only one perpetual swap ({swaps[0]})"
    raise ConfigError(
        f"{what} in the universe of {where} ({len(names)} instruments: {shown}): LongShortStrategy shorts "
        "swaps only and would trade nothing",
        hint="use a swap universe (e.g. market okx_swap, instruments ending in -SWAP), or the long-only mode for "
        "spot (long_only: true; --long-only on the command line)",
    )


def longshort_weights(
    scores: Mapping[str, float] | pd.Series, topk: int, gross_exposure: float = 1.0
) -> dict[str, float]:
    """Dollar-neutral weights: the ``k = min(topk, n // 2)`` best scores long ``+gross / (2k)`` each, the ``k``
    worst short ``-gross / (2k)`` each (NaN scores dropped; ties broken by instrument name)."""
    items = [(str(k), float(v)) for k, v in dict(scores).items() if v is not None and np.isfinite(v)]
    k = min(int(topk), len(items) // 2)
    if k <= 0:
        return {}
    ranked = sorted(items, key=lambda kv: (-kv[1], kv[0]))
    w = float(gross_exposure) / (2 * k)
    out = {inst: w for inst, _ in ranked[:k]}
    out.update({inst: -w for inst, _ in ranked[-k:]})
    return out


def is_rebalance_step(step: int, every: int, last_rebalance: int | None = None) -> bool:
    """Rebalance at the first step that can trade, then every ``every`` steps after the last rebalance."""
    if last_rebalance is None:
        return True
    return int(step) - int(last_rebalance) >= max(1, int(every))


def orders_for_weights(
    weights: Mapping[str, float],
    amounts: Mapping[str, float],
    prices: Mapping[str, float],
    equity: float,
    min_trade_value: float = 0.0,
) -> dict[str, float]:
    """Signed amounts that bring every instrument held or weighted to ``weight x equity`` (missing = 0).
    Instruments without a usable price, or whose trade is worth less than ``min_trade_value``, are skipped."""
    out: dict[str, float] = {}
    for inst in sorted(set(weights) | {k for k, v in amounts.items() if v != 0}):
        price = prices.get(inst, float("nan"))
        delta = order_delta(weights.get(inst, 0.0), equity, price, amounts.get(inst, 0.0))
        if delta != 0 and abs(delta) * price > min_trade_value:
            out[inst] = delta
    return out


class TimeBook:
    """Rows (``datetime``, ``instrument``, values...) sorted by time, queried by closed time interval."""

    def __init__(self, frame: pd.DataFrame, value_columns: list[str]) -> None:
        frame = frame.sort_values("datetime", kind="mergesort")
        times = pd.DatetimeIndex(frame["datetime"])
        self.value_columns = value_columns
        self._unique, starts = np.unique(times.to_numpy(), return_index=True)
        self._bounds = np.append(starts, len(frame))
        self._instruments = frame["instrument"].astype(str).to_numpy()
        self._values = [frame[c].to_numpy() for c in value_columns]

    def __len__(self) -> int:
        return len(self._instruments)

    def rows_between(self, start: pd.Timestamp, end: pd.Timestamp) -> list[tuple]:
        """``(instrument, *values)`` of the rows with ``start <= datetime <= end``, in time order."""
        lo = np.searchsorted(self._unique, np.datetime64(pd.Timestamp(start).to_datetime64()), side="left")
        hi = np.searchsorted(self._unique, np.datetime64(pd.Timestamp(end).to_datetime64()), side="right")
        if hi <= lo:
            return []
        a, b = self._bounds[lo], self._bounds[hi]
        return [(self._instruments[i], *(col[i] for col in self._values)) for i in range(a, b)]

    def latest_between(self, start: pd.Timestamp, end: pd.Timestamp) -> dict[str, tuple]:
        """The last row per instrument in ``[start, end]``: ``{instrument: values}``."""
        return {row[0]: row[1:] for row in self.rows_between(start, end)}


def _naive_utc(values: Any) -> pd.DatetimeIndex:
    idx = pd.DatetimeIndex(pd.to_datetime(values))
    if idx.tz is not None:
        idx = idx.tz_convert("UTC").tz_localize(None)
    return idx


def load_frame(obj: Any, what: str, *, allow_pickle: bool = True) -> pd.DataFrame | pd.Series:
    """A DataFrame/Series as is, or read from a ``.parquet``, ``.pkl``/``.pickle`` or ``.csv`` path.

    Pickles execute code when read: they are accepted only where ``allow_pickle`` (Qlib prediction files from
    a trusted source), never for signals, which are data (Parquet or CSV).
    """
    if isinstance(obj, (pd.DataFrame, pd.Series)):
        return obj
    if isinstance(obj, (str, Path)):
        path = Path(obj)
        if not path.is_file():
            raise ConfigError(f"{what} file {str(path)!r} does not exist", hint="give the path of an existing file")
        suffix = path.suffix.lower()
        if suffix == ".parquet":
            return pd.read_parquet(path)
        if suffix in (".pkl", ".pickle"):
            if not allow_pickle:
                raise ConfigError(
                    f"{what} file {str(path)!r} is a pickle: {what} are data and are read from Parquet or CSV only "
                    "(a pickle can execute code when read)",
                    hint="convert it once from a trusted session: pd.read_pickle(path).to_parquet('signals.parquet')",
                )
            return pd.read_pickle(path)
        if suffix == ".csv":
            return pd.read_csv(path)
        raise ConfigError(
            f"{what} file {str(path)!r} has an unknown type {suffix!r}", hint="use .parquet, .pkl or .csv"
        )
    raise ConfigError(
        f"{what} of type {type(obj).__name__} is not supported",
        hint="pass a DataFrame, a Series or a .parquet/.pkl/.csv path",
    )


def _row_text(frame: pd.DataFrame, i: int) -> str:
    return f"row {i} ({frame['datetime'].iloc[i]}, {frame['instrument'].iloc[i]}, {frame['signal'].iloc[i]})"


def signals_frame(signals: Any, max_position_size: float = MAX_POSITION_SIZE) -> pd.DataFrame:
    """Normalise and check signals (DataFrame or path) into ``datetime`` (naive UTC), ``instrument``,
    ``signal``, ``position_size`` (its magnitude) columns, in the input's row order.

    The contract (a ConfigError names the first offending row, counting from 0 in the input): every row has a
    time and an instrument; a BUY or SELL row has a finite ``position_size`` with ``|size| <=
    max_position_size`` (default 1: all of equity); one row per ``(datetime, instrument)``. A HOLD row's size
    is not used (missing = 0)."""
    df = load_frame(signals, "signals", allow_pickle=False)
    if isinstance(df, pd.Series):
        raise ConfigError(
            "signals are a Series", hint="pass a DataFrame with datetime, instrument, signal, position_size"
        )
    df = df.copy()
    if not {"datetime", "instrument"} <= set(df.columns):
        df = df.reset_index()
    missing = [c for c in ("datetime", "instrument", "signal", "position_size") if c not in df.columns]
    if missing:
        raise ConfigError(
            f"signals lack the columns {missing} (have {list(df.columns)})",
            hint="write signals with `qlib-crypto predict` or give datetime, instrument, signal, position_size",
        )
    times = _naive_utc(df["datetime"])
    bad_time = np.flatnonzero(pd.isna(times))
    if len(bad_time):
        raise ConfigError(
            f"signals row {int(bad_time[0])} has no datetime ({len(bad_time)} such rows)",
            hint="give every signal the open time of its bar (UTC)",
        )
    inst = df["instrument"]
    bad_inst = np.flatnonzero(inst.isna().to_numpy() | (inst.astype(str).str.strip() == "").to_numpy())
    if len(bad_inst):
        raise ConfigError(
            f"signals row {int(bad_inst[0])} has no instrument ({len(bad_inst)} such rows)",
            hint="give every signal an instrument of the provider, e.g. BTC-USDT",
        )
    sizes = pd.to_numeric(df["position_size"], errors="coerce").to_numpy(dtype="float64")
    out = pd.DataFrame(
        {
            "datetime": times,
            "instrument": inst.astype(str).to_numpy(),
            "signal": [normalize_signal(v) for v in df["signal"].to_numpy()],
            "position_size": np.abs(sizes),
        }
    )
    trades = (out["signal"] != HOLD).to_numpy()
    bad = np.flatnonzero(trades & ~np.isfinite(sizes))
    if len(bad):
        i = int(bad[0])
        raise ConfigError(
            f"signals {_row_text(out, i)}: position_size {df['position_size'].iloc[i]!r} is not a finite number"
            + (f" ({len(bad)} BUY/SELL rows like it)" if len(bad) > 1 else ""),
            hint="give every BUY/SELL a finite fraction of equity (e.g. 0.1), or make the row HOLD",
        )
    limit = float(max_position_size)
    big = np.flatnonzero(trades & (np.abs(sizes) > limit * (1 + 1e-12)))
    if len(big):
        i = int(big[0])
        raise ConfigError(
            f"signals {_row_text(out, i)}: position_size {sizes[i]!r} is outside [-{limit:g}, {limit:g}]"
            + (f" ({len(big)} rows like it)" if len(big) > 1 else ""),
            hint="sizes are fractions of equity (0.05 = 5%, not 5); `qlib-crypto predict` bounds them by max_position",
        )
    out.loc[~trades, "position_size"] = np.where(
        np.isfinite(out.loc[~trades, "position_size"]), out.loc[~trades, "position_size"], 0.0
    )
    dup = out.duplicated(["datetime", "instrument"], keep=False).to_numpy()
    if dup.any():
        first = int(np.flatnonzero(dup)[0])
        when, name = out["datetime"].iloc[first], out["instrument"].iloc[first]
        same = np.flatnonzero((out["datetime"] == when).to_numpy() & (out["instrument"] == name).to_numpy())
        raise ConfigError(
            f"signals rows {first} and {int(same[1])} are both for {name} at {when} "
            f"({int(dup.sum())} rows share their (datetime, instrument) with another row)",
            hint="keep one signal per instrument and bar",
        )
    return out


def unknown_instruments(instruments: Iterable[str], known: Iterable[str]) -> list[str]:
    """The names in ``instruments`` that are not in ``known`` (case-sensitive, as Qlib's codes), sorted."""
    known_set = {str(k) for k in known}
    return sorted({str(i) for i in instruments} - known_set)


def check_known_instruments(
    frame: pd.DataFrame,
    known: Iterable[str],
    *,
    skip_unknown: bool = False,
    where: str = "the signals",
    provider: str = "the provider",
    warn: Any = None,
) -> pd.DataFrame:
    """Rows of ``frame`` whose instrument the provider has; unknown instruments are a ConfigError listing them,
    or, with ``skip_unknown``, dropped with a warning giving their count (``warn(message)``, default: logged)."""
    unknown = unknown_instruments(frame["instrument"], known)
    if not unknown:
        return frame
    rows = frame["instrument"].isin(unknown).to_numpy()
    shown = ", ".join(unknown[:10]) + (f", ... ({len(unknown)} in all)" if len(unknown) > 10 else "")
    if not skip_unknown:
        raise ConfigError(
            f"{where} name {len(unknown)} instrument(s) that {provider} does not have: {shown} "
            f"({int(rows.sum())} rows)",
            hint="fix the instrument names, dump those instruments into the provider, or pass --skip-unknown "
            "(skip_unknown: true) to drop their rows",
        )
    message = (
        f"skipping {int(rows.sum())} rows of {where} for {len(unknown)} instrument(s) {provider} does not have: {shown}"
    )
    if warn is None:
        import logging

        logging.getLogger(__name__).warning("%s", message)
    else:
        warn(message)
    return frame[~rows]


def calendar_coverage(times: Iterable[Any], first_bar: Any, last_bar: Any) -> tuple[int, int]:
    """How many of ``times`` fall before the calendar's first bar and after its last bar."""
    t = pd.DatetimeIndex(_naive_utc(list(times)))
    return int((t < pd.Timestamp(first_bar)).sum()), int((t > pd.Timestamp(last_bar)).sum())


def scores_frame(scores: Any) -> pd.DataFrame:
    """Normalise model scores (a Series/DataFrame on a (datetime, instrument) index in either order, a frame
    with ``datetime, instrument, score`` columns, or a path) to ``datetime, instrument, score``."""
    obj = load_frame(scores, "scores")
    if isinstance(obj, pd.DataFrame) and {"datetime", "instrument"} <= set(obj.columns):
        col = "score" if "score" in obj.columns else [c for c in obj.columns if c not in ("datetime", "instrument")][0]
        frame = obj[["datetime", "instrument", col]].rename(columns={col: "score"})
    else:
        if isinstance(obj, pd.DataFrame):
            obj = obj.iloc[:, 0]
        names = list(obj.index.names)
        if set(names) != {"datetime", "instrument"}:
            raise ConfigError(f"scores index levels are {names}", hint="index scores by (datetime, instrument)")
        frame = obj.rename("score").reset_index()[["datetime", "instrument", "score"]]
    return pd.DataFrame(
        {
            "datetime": _naive_utc(frame["datetime"]),
            "instrument": frame["instrument"].astype(str).to_numpy(),
            "score": pd.to_numeric(frame["score"], errors="coerce").to_numpy(dtype="float64"),
        }
    )
