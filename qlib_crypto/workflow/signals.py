"""From model scores to BUY/SELL/HOLD signals and bounded position sizes: pure functions, no I/O.

Two rule modes:

- ``threshold``: ``score > buy_threshold`` -> BUY, ``score < sell_threshold`` -> SELL, else HOLD.
- ``quantile`` (alias ``rank``): per datetime, rank the instruments by score; the top
  ``floor(n * buy_quantile)`` are BUY, the bottom ``floor(n * sell_quantile)`` are SELL, the rest HOLD
  (``n`` = instruments with a score at that datetime; ties keep instrument order).

Sizes are signed fractions of equity: ``+size`` for BUY, ``-size`` for SELL (a short target; with
``long_only`` SELL gets 0, meaning "hold none"), 0 for HOLD. Before scaling, each BUY/SELL gets
``max_position``, or with a volatility target ``min(max_position, vol_target / realised_vol)``; then, per
datetime, if the sum of absolute sizes exceeds ``max_total`` every size is multiplied by
``max_total / sum``. An instrument whose realised volatility is unknown (NaN) or zero gets size 0.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd

from ..errors import ConfigError

BUY, SELL, HOLD = "BUY", "SELL", "HOLD"
SIGNAL_COLUMNS = ["datetime", "instrument", "score", "signal", "position_size"]
_MODES = {"threshold": "threshold", "quantile": "quantile", "rank": "quantile"}


@dataclass
class SignalRules:
    """Rules turning scores into signals and sizes. Defaults are the documented ones (docs/predict.md)."""

    mode: str = "quantile"
    buy_threshold: float = 0.0
    sell_threshold: float = 0.0
    buy_quantile: float = 0.2
    sell_quantile: float = 0.2
    max_position: float = 0.1
    max_total: float = 1.0
    vol_target: float | None = None
    vol_window: int | None = None
    long_only: bool = False

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> "SignalRules":
        """Check every value; raise :class:`ConfigError` naming the bad one."""
        mode = str(self.mode).lower()
        if mode not in _MODES:
            raise ConfigError(f"unknown signal mode {self.mode!r}", hint="use 'threshold' or 'quantile' (alias 'rank')")
        self.mode = _MODES[mode]
        for name in ("buy_threshold", "sell_threshold", "buy_quantile", "sell_quantile", "max_position", "max_total"):
            value = getattr(self, name)
            try:
                value = float(value)
            except (TypeError, ValueError):
                raise ConfigError(f"signal rule {name}={value!r} is not a number", hint="give a float") from None
            if not math.isfinite(value):
                raise ConfigError(f"signal rule {name}={value!r} is not finite", hint="give a finite float")
            setattr(self, name, value)
        if self.sell_threshold > self.buy_threshold:
            raise ConfigError(
                f"sell_threshold={self.sell_threshold} is above buy_threshold={self.buy_threshold}",
                hint="use sell_threshold <= buy_threshold so that no score is both BUY and SELL",
            )
        for name in ("buy_quantile", "sell_quantile"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"{name}={getattr(self, name)} is outside [0, 1]", hint="give a fraction such as 0.2")
        if self.buy_quantile + self.sell_quantile > 1.0:
            raise ConfigError(
                f"buy_quantile + sell_quantile = {self.buy_quantile + self.sell_quantile} exceeds 1",
                hint="lower one of them so the BUY and SELL groups cannot overlap",
            )
        for name in ("max_position", "max_total"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name}={getattr(self, name)} is negative", hint="give a fraction of equity >= 0")
        if self.vol_target is not None:
            self.vol_target = float(self.vol_target)
            if not self.vol_target > 0:
                raise ConfigError(f"vol_target={self.vol_target} must be > 0", hint="e.g. 0.5 for 50% annualised")
        if self.vol_window is not None:
            self.vol_window = int(self.vol_window)
            if self.vol_window < 2:
                raise ConfigError(
                    f"vol_window={self.vol_window} is below 2 bars", hint="use e.g. 168 for a week of hours"
                )
        self.long_only = bool(self.long_only)
        return self

    @classmethod
    def from_dict(cls, values: Mapping[str, Any] | None) -> "SignalRules":
        """Build rules from a mapping; unknown keys are an error. ``None`` values keep the defaults."""
        values = dict(values or {})
        if "rules" in values and isinstance(values["rules"], Mapping) and len(values) == 1:
            values = dict(values["rules"])
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = [k for k in values if k not in known]
        if unknown:
            close = difflib.get_close_matches(unknown[0], known, n=1)
            raise ConfigError(
                f"unknown signal rule {unknown[0]!r}",
                hint=f"known rules: {', '.join(sorted(known))}" + (f"; did you mean {close[0]!r}?" if close else ""),
            )
        return cls(**{k: v for k, v in values.items() if v is not None})

    @classmethod
    def from_yaml(cls, path: str | Path) -> "SignalRules":
        """Read rules from a YAML file: a mapping of rule names (optionally nested under ``rules:``)."""
        import yaml

        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"signal rules file {str(p)!r} does not exist", hint="give the path of a YAML file")
        try:
            data = yaml.safe_load(p.read_text(encoding="utf-8"))
        except yaml.YAMLError as exc:
            raise ConfigError(
                f"signal rules file {str(p)!r} is not valid YAML: {exc}", hint="fix the YAML syntax"
            ) from None
        if data is not None and not isinstance(data, Mapping):
            raise ConfigError(
                f"signal rules file {str(p)!r} holds a {type(data).__name__}, not a mapping",
                hint="write 'mode: quantile' style key: value lines",
            )
        return cls.from_dict(data)

    def updated(self, **overrides: Any) -> "SignalRules":
        """A copy with the non-None ``overrides`` applied (command-line options over a YAML file)."""
        values = dataclasses.asdict(self)
        values.update({k: v for k, v in overrides.items() if v is not None})
        return SignalRules.from_dict(values)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def scores_to_frame(scores: pd.Series | pd.DataFrame) -> pd.DataFrame:
    """Normalise scores (a Series on a (datetime, instrument) MultiIndex, in either level order, or a
    DataFrame with ``datetime, instrument, score`` columns) to a frame sorted by datetime, instrument."""
    if isinstance(scores, pd.DataFrame) and {"datetime", "instrument"} <= set(scores.columns):
        frame = scores[["datetime", "instrument", "score"]].copy()
    else:
        if isinstance(scores, pd.DataFrame):
            if scores.shape[1] != 1:
                raise ConfigError(f"scores have {scores.shape[1]} columns", hint="pass one score column")
            scores = scores.iloc[:, 0]
        names = list(scores.index.names)
        if set(names) != {"datetime", "instrument"}:
            raise ConfigError(f"scores index levels are {names}", hint="index scores by (datetime, instrument)")
        frame = scores.rename("score").reset_index()[["datetime", "instrument", "score"]]
    frame["score"] = frame["score"].astype("float64")
    return frame.sort_values(["datetime", "instrument"], kind="mergesort").reset_index(drop=True)


def classify(frame: pd.DataFrame, rules: SignalRules) -> pd.Series:
    """BUY/SELL/HOLD for each row of a ``datetime, instrument, score`` frame (NaN score -> HOLD)."""
    score = frame["score"].to_numpy(dtype="float64")
    signal = np.full(len(frame), HOLD, dtype=object)
    valid = ~np.isnan(score)
    if rules.mode == "threshold":
        signal[valid & (score > rules.buy_threshold)] = BUY
        signal[valid & (score < rules.sell_threshold)] = SELL
        return pd.Series(signal, index=frame.index, name="signal")
    for _, idx in frame.groupby("datetime", sort=False).indices.items():
        idx = idx[valid[idx]]
        n = len(idx)
        k_buy = int(math.floor(n * rules.buy_quantile + 1e-9))
        k_sell = int(math.floor(n * rules.sell_quantile + 1e-9))
        order = idx[np.argsort(-score[idx], kind="stable")]  # best first; ties keep row (instrument) order
        if k_buy:
            signal[order[:k_buy]] = BUY
        if k_sell:
            worst_first = idx[np.argsort(score[idx], kind="stable")]
            signal[worst_first[:k_sell]] = SELL
    return pd.Series(signal, index=frame.index, name="signal")


def position_sizes(
    frame: pd.DataFrame, signal: pd.Series, rules: SignalRules, volatility: pd.Series | None = None
) -> pd.Series:
    """Signed position sizes (fractions of equity) for classified rows; see the module docstring.

    ``volatility`` is the annualised realised volatility per row (aligned with ``frame``); it is required
    when ``rules.vol_target`` is set.
    """
    sig = signal.to_numpy()
    direction = np.where(sig == BUY, 1.0, np.where(sig == SELL, -1.0, 0.0))
    if rules.long_only:
        direction[direction < 0] = 0.0
    magnitude = np.full(len(frame), rules.max_position, dtype="float64")
    if rules.vol_target is not None:
        if volatility is None:
            raise ConfigError(
                "vol_target is set but no realised volatility was given",
                hint="pass volatility=..., or unset vol_target",
            )
        vol = np.asarray(volatility, dtype="float64")
        with np.errstate(divide="ignore", invalid="ignore"):
            target = np.where((vol > 0) & np.isfinite(vol), rules.vol_target / vol, 0.0)
        magnitude = np.minimum(magnitude, target)
    size = direction * magnitude
    gross = pd.Series(np.abs(size), index=frame.index).groupby(frame["datetime"]).transform("sum").to_numpy()
    with np.errstate(divide="ignore", invalid="ignore"):
        scale = np.where(gross > rules.max_total, rules.max_total / gross, 1.0)
    size = size * scale
    size[size == 0] = 0.0  # no negative zeros in files
    return pd.Series(size, index=frame.index, name="position_size")


def realised_volatility(close: pd.DataFrame, window: int, bars_per_year: float) -> pd.DataFrame:
    """Annualised realised volatility: rolling sample std (ddof=1) of log returns over ``window`` bars,
    times ``sqrt(bars_per_year)``. ``close`` is wide: index datetime, one column per instrument."""
    log_ret = np.log(close.astype("float64")).diff()
    return log_ret.rolling(window, min_periods=max(2, window // 2)).std(ddof=1) * math.sqrt(bars_per_year)


def default_vol_window(freq: str) -> int:
    """One week of bars (168 at 60min), at least 20 bars (20 at day)."""
    from ..timeframes import get_timeframe

    return max(20, int(round(get_timeframe(freq).bars_per_year / 365 * 7)))


def make_signals(
    scores: pd.Series | pd.DataFrame, rules: SignalRules | None = None, volatility: pd.Series | None = None
) -> pd.DataFrame:
    """Scores -> DataFrame with columns ``datetime, instrument, score, signal, position_size``.

    ``volatility`` (needed with a vol target) is a Series on a (datetime, instrument) MultiIndex.
    """
    rules = rules or SignalRules()
    frame = scores_to_frame(scores)
    vol_aligned = None
    if volatility is not None:
        if isinstance(volatility.index, pd.MultiIndex) and list(volatility.index.names) == ["instrument", "datetime"]:
            volatility = volatility.swaplevel().sort_index()
        key = pd.MultiIndex.from_arrays([frame["datetime"], frame["instrument"]])
        vol_aligned = pd.Series(volatility.reindex(key).to_numpy(dtype="float64"), index=frame.index)
    frame["signal"] = classify(frame, rules)
    frame["position_size"] = position_sizes(frame, frame["signal"], rules, vol_aligned)
    return frame[SIGNAL_COLUMNS]
