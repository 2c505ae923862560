"""Crypto data handlers: ``CryptoAlpha158`` (engineered features) and ``CryptoAlpha360`` (raw windows).

Both are Qlib ``DataHandlerLP`` subclasses wired the way Qlib's own ``Alpha158`` is: a ``QlibDataLoader``
with a feature set that is data (see :mod:`qlib_crypto.data.features`) plus processors, every part
addressable from a ``qrun`` YAML file as ``class`` + ``module_path`` + ``kwargs``.
"""
from __future__ import annotations

import logging
from typing import Any, Mapping, Sequence

from qlib.contrib.data.handler import check_transform_proc
from qlib.data.dataset.handler import DataHandlerLP

from ..errors import ConfigError
from .features import MARKET_FAMILIES, get_feature_config, get_label_config, get_raw_window_config, normalize_freq

logger = logging.getLogger(__name__)

_MODULE = "qlib_crypto.data.processors"
CROSS_SECTIONAL_PROCESSOR: dict[str, Any] = {
    "class": "CrossSectionalFeatures",
    "module_path": _MODULE,
    "kwargs": {"fields_group": "feature"},
}


def default_infer_processors(fit: bool = True) -> list[dict[str, Any]]:
    """Default inference processors: inf -> NaN, robust z-score fit on the train window (clip to +/-3), fill 0.

    Without a fit window (``fit=False``) the robust z-score is left out.
    """
    procs: list[dict[str, Any]] = [{"class": "InfToNaN", "module_path": _MODULE, "kwargs": {"fields_group": "feature"}}]
    if fit:
        procs.append({"class": "RobustZScoreNorm", "kwargs": {"fields_group": "feature", "clip_outlier": True}})
    procs.append({"class": "Fillna", "kwargs": {"fields_group": "feature"}})
    return procs


def default_learn_processors(label_norm: str = "zscore") -> list[dict[str, Any]]:
    """Default learning processors: drop rows without a label, normalise the label across instruments per bar.

    ``label_norm``: ``zscore`` (mean 0, std 1 per bar) or ``rank`` (Qlib's ``CSRankNorm``: percentile rank,
    robust to fat-tailed returns).
    """
    if label_norm == "zscore":
        norm: dict[str, Any] = {"class": "CSZScoreLabel", "module_path": _MODULE, "kwargs": {"fields_group": "label"}}
    elif label_norm == "rank":
        norm = {"class": "CSRankNorm", "kwargs": {"fields_group": "label"}}
    else:
        raise ConfigError(f"bad label_norm {label_norm!r}", hint="use zscore or rank")
    return [{"class": "DropnaLabel"}, norm]


def _proc_class_name(p: Any) -> str:
    if isinstance(p, Mapping):
        return str(p.get("class", ""))
    if isinstance(p, str):
        return p
    return type(p).__name__


def _label_config(label: Any, horizon: int, price: str) -> tuple[list[str], list[str]]:
    if label is None:
        return get_label_config(horizon, price)
    if isinstance(label, str):
        return [label], ["LABEL0"]
    if isinstance(label, (list, tuple)) and len(label) == 2 and isinstance(label[0], (list, tuple)):
        return list(label[0]), list(label[1])
    exprs = list(label)
    return exprs, [f"LABEL{i}" for i in range(len(exprs))]


class _CryptoHandlerBase(DataHandlerLP):
    """Shared wiring: loader config, label, default processors."""

    def _build(
        self,
        *,
        features: tuple[list[str], list[str]],
        instruments: Any,
        start_time: Any,
        end_time: Any,
        freq: str,
        infer_processors: Sequence | None,
        learn_processors: Sequence | None,
        fit_start_time: Any,
        fit_end_time: Any,
        process_type: str,
        filter_pipe: Any,
        inst_processors: Any,
        horizon: int,
        label: Any,
        label_price: str,
        label_norm: str,
        cross_sectional: bool,
        kwargs: dict,
    ) -> None:
        fit = fit_start_time is not None and fit_end_time is not None
        if infer_processors is None:
            if not fit:
                logger.warning(
                    "%s without fit_start_time/fit_end_time: features are not normalised "
                    "(pass the train segment as the fit window to enable RobustZScoreNorm)",
                    type(self).__name__,
                )
            infer_processors = default_infer_processors(fit)
        else:
            infer_processors = list(infer_processors)
        if learn_processors is None:
            learn_processors = default_learn_processors(label_norm)
        shared = kwargs.get("shared_processors") or []
        if cross_sectional and not any(
            _proc_class_name(p) == "CrossSectionalFeatures" for p in [*infer_processors, *shared]
        ):
            infer_processors = [dict(CROSS_SECTIONAL_PROCESSOR), *infer_processors]
        infer_processors = check_transform_proc(infer_processors, fit_start_time, fit_end_time)
        learn_processors = check_transform_proc(learn_processors, fit_start_time, fit_end_time)

        self.feature_names = list(features[1])
        self.label_config = _label_config(label, horizon, label_price)
        data_loader = {
            "class": "QlibDataLoader",
            "kwargs": {
                "config": {"feature": features, "label": self.label_config},
                "filter_pipe": filter_pipe,
                "freq": freq,
                "inst_processors": inst_processors,
            },
        }
        super().__init__(
            instruments=instruments,
            start_time=start_time,
            end_time=end_time,
            data_loader=data_loader,
            infer_processors=infer_processors,
            learn_processors=learn_processors,
            process_type=process_type,
            **kwargs,
        )


class CryptoAlpha158(_CryptoHandlerBase):
    """Alpha158's feature families with windows in bars, plus quote-volume, market-relative and funding features.

    Parameters beyond Qlib's ``Alpha158``:

    - ``feature_config``: a full feature configuration (see :mod:`qlib_crypto.data.features`);
    - ``windows``: windows (bars) for the rolling, amount and market groups (default per ``freq``);
    - ``include`` / ``exclude``: family names to keep / drop (``ROC``, ``MA``, ``KBAR``, ``FUND``...);
    - ``horizon``: label horizon in bars (label ``Ref($close, -(1+h))/Ref($close, -1) - 1``);
    - ``label``: a label expression (or ``[exprs, names]``) replacing the default one;
    - ``label_norm``: ``zscore`` or ``rank``, the cross-sectional label normalisation of the default
      learn processors;
    - ``infer_processors`` / ``learn_processors``: ``None`` means the crypto defaults.
    """

    def __init__(
        self,
        instruments: Any = "all",
        start_time: Any = None,
        end_time: Any = None,
        freq: str = "60min",
        infer_processors: Sequence | None = None,
        learn_processors: Sequence | None = None,
        fit_start_time: Any = None,
        fit_end_time: Any = None,
        process_type: str = DataHandlerLP.PTYPE_A,
        filter_pipe: Any = None,
        inst_processors: Any = None,
        feature_config: Mapping[str, Any] | None = None,
        windows: Sequence[int] | None = None,
        include: Sequence[str] | None = None,
        exclude: Sequence[str] | None = None,
        horizon: int = 1,
        label: Any = None,
        label_price: str = "close",
        label_norm: str = "zscore",
        **kwargs: Any,
    ) -> None:
        freq = normalize_freq(freq)
        features = get_feature_config(freq, feature_config, windows=windows, include=include, exclude=exclude)
        market_prefixes = tuple(MARKET_FAMILIES)
        cross_sectional = any(n.rstrip("0123456789") in market_prefixes for n in features[1])
        self._build(
            features=features,
            instruments=instruments,
            start_time=start_time,
            end_time=end_time,
            freq=freq,
            infer_processors=infer_processors,
            learn_processors=learn_processors,
            fit_start_time=fit_start_time,
            fit_end_time=fit_end_time,
            process_type=process_type,
            filter_pipe=filter_pipe,
            inst_processors=inst_processors,
            horizon=horizon,
            label=label,
            label_price=label_price,
            label_norm=label_norm,
            cross_sectional=cross_sectional,
            kwargs=kwargs,
        )


class CryptoAlpha360(_CryptoHandlerBase):
    """Raw-window handler: the last ``n_bars`` bars of open/high/low/close/vwap (divided by the latest close),
    volume (by the latest volume) and amount (by the latest amount), for models that learn their own features.
    """

    def __init__(
        self,
        instruments: Any = "all",
        start_time: Any = None,
        end_time: Any = None,
        freq: str = "60min",
        infer_processors: Sequence | None = None,
        learn_processors: Sequence | None = None,
        fit_start_time: Any = None,
        fit_end_time: Any = None,
        process_type: str = DataHandlerLP.PTYPE_A,
        filter_pipe: Any = None,
        inst_processors: Any = None,
        n_bars: int | None = None,
        fields: Sequence[str] | None = None,
        horizon: int = 1,
        label: Any = None,
        label_price: str = "close",
        label_norm: str = "zscore",
        **kwargs: Any,
    ) -> None:
        freq = normalize_freq(freq)
        features = get_raw_window_config(freq, n_bars, fields)
        self._build(
            features=features,
            instruments=instruments,
            start_time=start_time,
            end_time=end_time,
            freq=freq,
            infer_processors=infer_processors,
            learn_processors=learn_processors,
            fit_start_time=fit_start_time,
            fit_end_time=fit_end_time,
            process_type=process_type,
            filter_pipe=filter_pipe,
            inst_processors=inst_processors,
            horizon=horizon,
            label=label,
            label_price=label_price,
            label_norm=label_norm,
            cross_sectional=False,
            kwargs=kwargs,
        )
