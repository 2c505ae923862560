"""Qlib data loaders for the crypto feature sets (like Qlib's ``Alpha158DL`` / ``Alpha360DL``).

Use them where Qlib takes a ``data_loader`` (e.g. ``DataHandlerLP(data_loader=...)`` or a nested loader),
when you want the crypto features without the crypto handlers' processors.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

from qlib.data.dataset.loader import QlibDataLoader

from .features import get_feature_config, get_raw_window_config, normalize_freq


class CryptoAlpha158DL(QlibDataLoader):
    """``QlibDataLoader`` with the CryptoAlpha158 feature set (group ``feature``); ``config`` adds groups
    (e.g. ``{"label": [[expr], ["LABEL0"]]}``)."""

    def __init__(
        self,
        config: Mapping[str, Any] | None = None,
        freq: str = "60min",
        feature_config: Mapping[str, Any] | None = None,
        windows: Sequence[int] | None = None,
        include: Sequence[str] | None = None,
        exclude: Sequence[str] | None = None,
        **kwargs: Any,
    ) -> None:
        freq = normalize_freq(freq)
        full = {"feature": get_feature_config(freq, feature_config, windows=windows, include=include, exclude=exclude)}
        full.update(dict(config or {}))
        super().__init__(config=full, freq=freq, **kwargs)


class CryptoAlpha360DL(QlibDataLoader):
    """``QlibDataLoader`` with the raw-window feature set of CryptoAlpha360 (group ``feature``)."""

    def __init__(
        self,
        config: Mapping[str, Any] | None = None,
        freq: str = "60min",
        n_bars: int | None = None,
        fields: Sequence[str] | None = None,
        **kwargs: Any,
    ) -> None:
        freq = normalize_freq(freq)
        full = {"feature": get_raw_window_config(freq, n_bars, fields)}
        full.update(dict(config or {}))
        super().__init__(config=full, freq=freq, **kwargs)
