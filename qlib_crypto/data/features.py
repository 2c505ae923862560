"""Crypto feature sets as data: lists of Qlib expressions and their names.

A feature set is built from a ``feature_config`` dict, in the spirit of Qlib's ``Alpha158DL``::

    {
        "kbar": {},                                          # k-bar shape (KMID ... KSFT2)
        "price": {"windows": [0], "feature": ["OPEN", "HIGH", "LOW", "VWAP"]},
        "rolling": {"windows": [3, 6, 12, 24, 72, 168], "include": None, "exclude": []},
        "amount": {"windows": [...], "include": None, "exclude": []},     # quote volume ($amount)
        "market": {"windows": [...], "include": None, "exclude": []},     # cross-sectional, see processors
        "funding": {"windows": [...], "include": None, "exclude": []},    # swaps only; NaN for spot
    }

Windows are counted in bars of the handler's frequency. A group left out of the dict is not built; a
group without ``windows`` uses the frequency's default (:data:`DEFAULT_WINDOWS`).

Every family is one expression template with ``{d}`` standing for the window, so the whole feature set
is data. Alpha158's part (``kbar``, ``price`` and the 29 ``rolling`` families) is generated from Qlib's
``Alpha158DL.get_feature_config`` with windows in bars (:func:`alpha158_families`; also as
``KBAR_FEATURES`` / ``ROLLING_FAMILIES``); the crypto families are written here:
:data:`AMOUNT_FAMILIES`, :data:`MARKET_FAMILIES`, :data:`FUNDING_FAMILIES`.
"""

from __future__ import annotations

import copy
import functools
from typing import Any, Iterable, Mapping, Sequence

from ..errors import ConfigError

# ---------------------------------------------------------------------------------------------------------
# Defaults per frequency (windows in bars)
# ---------------------------------------------------------------------------------------------------------
DEFAULT_WINDOWS: dict[str, list[int]] = {
    "60min": [3, 6, 12, 24, 72, 168],  # 3 hours .. one week
    "day": [3, 5, 10, 20, 30, 60],  # 3 days .. two months
}
# Funding settles every 8 hours: windows that hold 1, 3, 9 and 21 settlements (8 h .. a week) at 60min.
DEFAULT_FUNDING_WINDOWS: dict[str, list[int]] = {
    "60min": [8, 24, 72, 168],
    "day": [1, 3, 7, 30],
}
# Raw-window handler: number of past bars per field.
DEFAULT_RAW_BARS: dict[str, int] = {"60min": 60, "day": 60}

_FREQ_ALIASES = {"1h": "60min", "1H": "60min", "60m": "60min", "1d": "day", "1day": "day", "1440min": "day", "D": "day"}


def normalize_freq(freq: str) -> str:
    """Return the Qlib frequency name (``60min``, ``day``...) for ``freq`` (also accepts ``1h``, ``1d``)."""
    f = str(freq).strip()
    return _FREQ_ALIASES.get(f, f)


def default_windows(freq: str) -> list[int]:
    """Default rolling windows (in bars) for a frequency; other minute frequencies scale the 60min set."""
    f = normalize_freq(freq)
    if f in DEFAULT_WINDOWS:
        return list(DEFAULT_WINDOWS[f])
    minutes = _minutes(f)
    # Keep the same wall-clock spans as the 60min defaults (3 hours .. one week), at least 2 bars.
    spans_h = DEFAULT_WINDOWS["60min"]
    return sorted({max(2, round(h * 60 / minutes)) for h in spans_h})


def default_funding_windows(freq: str) -> list[int]:
    """Default funding-rate windows (in bars) for a frequency (8 hours .. one week of wall clock)."""
    f = normalize_freq(freq)
    if f in DEFAULT_FUNDING_WINDOWS:
        return list(DEFAULT_FUNDING_WINDOWS[f])
    minutes = _minutes(f)
    return sorted({max(1, round(h * 60 / minutes)) for h in DEFAULT_FUNDING_WINDOWS["60min"]})


def _minutes(freq: str) -> int:
    if freq.endswith("min") and freq[:-3].isdigit():
        return int(freq[:-3])
    raise ConfigError(
        f"unknown frequency {freq!r} for the crypto feature set",
        hint="use a Qlib frequency name such as 60min, 240min or day, or pass `windows` explicitly",
    )


# ---------------------------------------------------------------------------------------------------------
# Feature families (expression templates)
# ---------------------------------------------------------------------------------------------------------
_EPS = "1e-12"

# Alpha158's families are generated from Qlib's own ``Alpha158DL.get_feature_config`` (windows in bars), so
# they stay Qlib's expressions; only the crypto families below are written here. The generation imports Qlib
# on first use (see :func:`alpha158_families`).
_SENTINEL = 987654321  # a window no feature set uses; replaced by ``{d}`` in the generated templates


@functools.lru_cache(maxsize=1)
def _alpha158_templates() -> tuple[tuple[tuple[str, str], ...], tuple[tuple[str, str], ...]]:
    from qlib.contrib.data.loader import Alpha158DL

    fields, names = Alpha158DL.get_feature_config({"kbar": {}, "rolling": {"windows": [_SENTINEL]}})
    kbar, rolling = [], []
    tag = str(_SENTINEL)
    for expr, name in zip(fields, names):
        if name.endswith(tag):
            template = expr.replace("{", "{{").replace("}", "}}").replace(tag, "{d}")
            rolling.append((name[: -len(tag)], template))
        else:
            kbar.append((name, expr))
    return tuple(kbar), tuple(rolling)


def alpha158_families() -> tuple[dict[str, str], dict[str, str]]:
    """``(kbar, rolling)``: Alpha158's k-bar expressions by name and its rolling families as templates
    (``{d}`` = window), generated from Qlib's ``Alpha158DL.get_feature_config`` (fresh dicts)."""
    kbar, rolling = _alpha158_templates()
    return dict(kbar), dict(rolling)


def alpha158_price(fields: Sequence[str], windows: Sequence[int]) -> tuple[list[str], list[str]]:
    """Alpha158's price group (``$field/$close``, ``Ref($field, d)/$close``) from Qlib's generator."""
    from qlib.contrib.data.loader import Alpha158DL

    exprs, names = Alpha158DL.get_feature_config({"price": {"windows": list(windows), "feature": list(fields)}})
    return list(exprs), list(names)


_AUP = "Greater($amount-Ref($amount, 1), 0)"
_ADOWN = "Greater(Ref($amount, 1)-$amount, 0)"
_AMOVE = "Abs($amount-Ref($amount, 1))"

# Quote-volume ($amount, USDT) features: liquidity level and its dynamics.
AMOUNT_FAMILIES: dict[str, str] = {
    "AMA": f"Mean($amount, {{d}})/($amount+{_EPS})",  # average quote volume vs the current bar
    "ASTD": f"Std($amount, {{d}})/($amount+{_EPS})",  # dispersion of quote volume
    "ASUMD": f"(Sum({_AUP}, {{d}})-Sum({_ADOWN}, {{d}}))/(Sum({_AMOVE}, {{d}})+{_EPS})",  # RSI of quote volume
    "LAMT": "Log(Mean($amount, {d})+1)",  # log average quote volume (liquidity level)
    "AVWAP": f"Sum($amount, {{d}})/(Sum($volume, {{d}})+{_EPS})/$close",  # window VWAP vs close
    "ILLIQ": f"Mean(Abs($close/Ref($close, 1)-1)/($amount+{_EPS}), {{d}})*1e6",  # Amihud illiquidity
}

# Cross-sectional (market-relative) features. The expression is per instrument; the processor
# :class:`qlib_crypto.data.processors.CrossSectionalFeatures` then transforms each column across the
# instruments of the same bar, with the operation in :data:`MARKET_OPERATIONS` for its family prefix.
MARKET_FAMILIES: dict[str, str] = {
    "XRET": "$close/Ref($close, {d})-1",  # return minus the cross-sectional mean return
    "XRNK": "$close/Ref($close, {d})-1",  # cross-sectional percentile rank of the return
    "XVOL": "Std($close/Ref($close, 1)-1, {d})",  # volatility minus the cross-sectional mean volatility
    "XAMT": "Mean($amount, {d})",  # share of the market's quote volume
}
MARKET_OPERATIONS: dict[str, str] = {"XRET": "demean", "XRNK": "rank", "XVOL": "demean", "XAMT": "share"}

# Funding-rate features (USDT perpetual swaps). `$funding_rate` holds the rate on the bar in which it
# settles and NaN elsewhere; Qlib's rolling Mean/Sum skip NaN, so these are the mean and the sum of the
# rates settled in the window; spot instruments have no field and get NaN (filled by processors).
FUNDING_FAMILIES: dict[str, str] = {
    "FUND": "Mean($funding_rate, {d})",
    "FUNDSUM": "Sum($funding_rate, {d})",
}

CRYPTO_GROUP_FAMILIES: dict[str, dict[str, str]] = {
    "amount": AMOUNT_FAMILIES,
    "market": MARKET_FAMILIES,
    "funding": FUNDING_FAMILIES,
}
GROUPS = ("kbar", "price", "rolling", *CRYPTO_GROUP_FAMILIES)


def group_families() -> dict[str, dict[str, str]]:
    """Family templates per rolling group: Alpha158's (generated from Qlib) then the crypto ones."""
    return {"rolling": alpha158_families()[1], **CRYPTO_GROUP_FAMILIES}


def __getattr__(name: str) -> Any:  # the generated tables, computed on first access
    if name == "KBAR_FEATURES":
        return alpha158_families()[0]
    if name == "ROLLING_FAMILIES":
        return alpha158_families()[1]
    if name == "GROUP_FAMILIES":
        return group_families()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


PRICE_FIELDS = ("OPEN", "HIGH", "LOW", "CLOSE", "VWAP")


def default_feature_config(freq: str = "60min") -> dict[str, Any]:
    """The default crypto feature configuration for ``freq`` (a fresh dict, safe to modify)."""
    wins = default_windows(freq)
    return {
        "kbar": {},
        "price": {"windows": [0], "feature": ["OPEN", "HIGH", "LOW", "VWAP"]},
        "rolling": {"windows": list(wins)},
        "amount": {"windows": list(wins)},
        "market": {"windows": list(wins)},
        "funding": {"windows": default_funding_windows(freq)},
    }


def _check_windows(group: str, windows: Iterable[Any], *, allow_zero: bool = False) -> list[int]:
    out = []
    for w in windows:
        if isinstance(w, bool) or not isinstance(w, int) or w < (0 if allow_zero else 1):
            raise ConfigError(
                f"bad window {w!r} in feature group {group!r}",
                hint="windows are whole numbers of bars" + (" >= 0" if allow_zero else " >= 1"),
            )
        out.append(int(w))
    return out


def _check_names(group: str, names: Iterable[str] | None, known: Iterable[str]) -> None:
    if names is None:
        return
    known = list(known)
    bad = [n for n in names if n not in known]
    if bad:
        raise ConfigError(
            f"unknown feature families {bad} in {group!r}",
            hint=f"known families: {', '.join(known)}",
        )


def get_feature_config(
    freq: str = "60min",
    feature_config: Mapping[str, Any] | None = None,
    *,
    windows: Sequence[int] | None = None,
    include: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
) -> tuple[list[str], list[str]]:
    """Build ``(expressions, names)`` of the CryptoAlpha158 feature set.

    ``feature_config`` replaces the default configuration (see the module docstring); ``windows``
    overrides the windows of the rolling, amount and market groups; ``include`` / ``exclude`` keep or drop
    families by name across all groups (``KBAR`` and ``PRICE`` name the two non-rolling groups).
    """
    freq = normalize_freq(freq)
    conf = copy.deepcopy(dict(feature_config)) if feature_config is not None else default_feature_config(freq)
    families_by_group = group_families()
    kbar_features = alpha158_families()[0]
    unknown_groups = set(conf) - set(GROUPS)
    if unknown_groups:
        raise ConfigError(
            f"unknown feature groups {sorted(unknown_groups)} in feature_config",
            hint="use kbar, price, rolling, amount, market, funding",
        )
    all_families = ["KBAR", "PRICE", *[f for fams in families_by_group.values() for f in fams]]
    _check_names("include", include, all_families)
    _check_names("exclude", exclude, all_families)
    if windows is not None:
        windows = _check_windows("windows", windows)

    def use(family: str, local_include: Sequence[str] | None, local_exclude: Sequence[str]) -> bool:
        if family in local_exclude or (exclude and family in exclude):
            return False
        if local_include is not None and family not in local_include:
            return False
        return include is None or family in include

    fields: list[str] = []
    names: list[str] = []
    if "kbar" in conf and use("KBAR", None, []):
        fields += list(kbar_features.values())
        names += list(kbar_features)
    if "price" in conf and use("PRICE", None, []):
        pconf = conf["price"] or {}
        pwins = _check_windows("price", pconf.get("windows", [0]), allow_zero=True)
        pfeats = [str(f).upper() for f in pconf.get("feature", ["OPEN", "HIGH", "LOW", "VWAP"])]
        _check_names("price.feature", pfeats, PRICE_FIELDS)
        if pfeats and pwins:
            pexprs, pnames = alpha158_price(pfeats, pwins)
            fields += pexprs
            names += pnames
    for group, families in families_by_group.items():
        if group not in conf:
            continue
        gconf = conf[group] or {}
        if windows is not None and group != "funding":
            gwins = list(windows)
        elif gconf.get("windows") is not None:
            gwins = _check_windows(group, gconf["windows"])
        elif group == "funding":
            gwins = default_funding_windows(freq)
        else:
            gwins = default_windows(freq)
        local_include = gconf.get("include")
        local_exclude = gconf.get("exclude") or []
        _check_names(f"{group}.include", local_include, families)
        _check_names(f"{group}.exclude", local_exclude, families)
        for family, template in families.items():
            if not use(family, local_include, local_exclude):
                continue
            fields += [template.format(d=d) for d in gwins]
            names += [f"{family}{d}" for d in gwins]
    return fields, names


def get_raw_window_config(
    freq: str = "60min", n_bars: int | None = None, fields: Sequence[str] | None = None
) -> tuple[list[str], list[str]]:
    """Build ``(expressions, names)`` of the raw-window (Alpha360-like) feature set.

    The last ``n_bars`` bars (lags ``n_bars-1`` .. 0) of open/high/low/close/vwap divided by the latest
    close, volume divided by the latest volume and amount divided by the latest amount. Names are
    ``<FIELD><lag>`` (``CLOSE0`` is the latest bar).
    """
    freq = normalize_freq(freq)
    n = DEFAULT_RAW_BARS.get(freq, 60) if n_bars is None else n_bars
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ConfigError(f"bad n_bars {n_bars!r} for the raw-window handler", hint="use a whole number of bars >= 1")
    wanted = [f.upper() for f in (fields or ["CLOSE", "OPEN", "HIGH", "LOW", "VWAP", "VOLUME", "AMOUNT"])]
    _check_names("fields", wanted, ["CLOSE", "OPEN", "HIGH", "LOW", "VWAP", "VOLUME", "AMOUNT"])
    exprs: list[str] = []
    names: list[str] = []
    for field in wanted:
        base = f"${field.lower()}"
        denom = "$close" if field in PRICE_FIELDS else f"({base}+{_EPS})"
        for lag in range(n - 1, -1, -1):
            exprs.append(f"{base}/{denom}" if lag == 0 else f"Ref({base}, {lag})/{denom}")
            names.append(f"{field}{lag}")
    return exprs, names


def get_label_config(horizon: int = 1, price: str = "close") -> tuple[list[str], list[str]]:
    """The forward-return label with a one-bar execution delay: ``Ref($p, -(1+h)) / Ref($p, -1) - 1``."""
    if isinstance(horizon, bool) or not isinstance(horizon, int) or horizon < 1:
        raise ConfigError(f"bad label horizon {horizon!r}", hint="use a whole number of bars >= 1")
    if price not in ("close", "vwap", "open"):
        raise ConfigError(f"bad label price {price!r}", hint="use close, vwap or open")
    return [f"Ref(${price}, -{1 + horizon})/Ref(${price}, -1) - 1"], ["LABEL0"]


def crypto_label(horizon: int = 1, price: str = "close") -> tuple[list[str], list[str]]:
    """Alias of :func:`get_label_config` (the name used in YAML examples and notebooks)."""
    return get_label_config(horizon, price)
