"""The benchmark of a backtest as bar returns, from the bar frequency's own provider directory.

Qlib's ``backtest()`` builds its ``Account`` at frequency ``day`` first, and a benchmark given by name is loaded
right there from daily bars: an hourly backtest then needs a ``day`` provider directory, and any range without a
whole daily bar in it (a few hours, the last partial day, the bar after ``predict --latest``) fails with
``The benchmark [...] does not exist``. Qlib also accepts the benchmark as a ``pd.Series`` of per-bar returns
(``PortfolioMetrics``' documented ``benchmark`` type); :func:`benchmark_returns` computes that series at the
backtest's own frequency, exactly as Qlib computes a named benchmark at that frequency
(``$close / Ref($close, 1) - 1``, missing bars 0), so only the bar frequency's directory is read.
"""

from __future__ import annotations

import logging
from typing import Any

import pandas as pd

logger = logging.getLogger(__name__)

BENCHMARK_FIELD = "$close/Ref($close,1)-1"


def benchmark_returns(code: str, start_time: Any, end_time: Any, freq: str) -> pd.Series:
    """Per-bar returns of instrument ``code`` over ``[start_time, end_time]`` at ``freq`` (index: bar open times).

    Bars of the calendar where the instrument has no data are absent (their benchmark return is 0 in Qlib's
    report); an instrument without any bar in the range gives an empty series and a warning.
    """
    from qlib.data import D

    frame = D.features([code], [BENCHMARK_FIELD], start_time, end_time, freq=freq)
    if frame is None or len(frame) == 0:
        logger.warning(
            "benchmark %s has no %s bar between %s and %s: its return is 0 over the backtest",
            code,
            freq,
            start_time,
            end_time,
        )
        return pd.Series([], index=pd.DatetimeIndex([], name="datetime"), dtype="float64", name=BENCHMARK_FIELD)
    column = frame.columns[0]
    return frame.groupby(level="datetime", group_keys=False)[column].mean().fillna(0)
