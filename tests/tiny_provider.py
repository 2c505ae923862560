"""Test helpers: write a tiny Qlib provider directory from in-memory bars, make it Qlib's current provider
(``use_provider``), and script a strategy's orders (``scripted_strategy``).

The writer is deliberately minimal and independent of :mod:`qlib_crypto.provider` (the code under test): it
writes exactly the format Qlib reads (calendar text file, ``instruments/all.txt``, little-endian float32 ``.bin``
files whose first value is the start index into the calendar). Daily bars are aggregated from the hourly ones on UTC days into a
``day`` directory beside it, for daily backtests and for Qlib's stock classes given a benchmark by name (the
crypto runner needs only the bar frequency's directory).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd

from qlib_crypto._atomic import atomic_write_bytes, atomic_write_text

FIELDS = ("open", "high", "low", "close", "volume", "amount", "vwap", "change", "factor")


def _write_freq_dir(root: Path, freq: str, bars: Mapping[str, pd.DataFrame], calendar: pd.DatetimeIndex) -> None:
    fmt = "%Y-%m-%d" if freq == "day" else "%Y-%m-%d %H:%M:%S"
    cal_txt = "\n".join(t.strftime(fmt) for t in calendar) + "\n"
    atomic_write_text(root / "calendars" / f"{freq}.txt", cal_txt, fsync=False)
    step = calendar[-1] - calendar[-2] if len(calendar) > 1 else pd.Timedelta(hours=1)
    future = calendar.append(pd.DatetimeIndex([calendar[-1] + step]))
    atomic_write_text(
        root / "calendars" / f"{freq}_future.txt", "\n".join(t.strftime(fmt) for t in future) + "\n", fsync=False
    )
    lines = []
    for inst, df in sorted(bars.items()):
        frame = df.reindex(calendar)
        valid = np.flatnonzero(frame["close"].notna().to_numpy())
        first, last = int(valid[0]), int(valid[-1])
        lines.append(f"{inst.upper()}\t{calendar[first].strftime(fmt)}\t{calendar[last].strftime(fmt)}")
        fdir = root / "features" / inst.lower()
        for field in list(FIELDS) + (["funding_rate"] if "funding_rate" in frame.columns else []):
            values = frame[field].to_numpy(dtype="<f4")[first : last + 1]
            payload = np.concatenate([np.array([first], dtype="<f4"), values]).astype("<f4").tobytes()
            atomic_write_bytes(fdir / f"{field}.{freq}.bin", payload, fsync=False)
    atomic_write_text(root / "instruments" / "all.txt", "\n".join(lines) + "\n", fsync=False)


def _complete(df: pd.DataFrame) -> pd.DataFrame:
    out = df.copy()
    if "vwap" not in out:
        out["vwap"] = (out["high"] + out["low"] + out["close"]) / 3.0
    if "amount" not in out:
        out["amount"] = out["volume"] * out["vwap"]
    if "factor" not in out:
        out["factor"] = 1.0
    if "change" not in out:
        out["change"] = out["close"] / out["close"].shift(1) - 1.0
    return out


def write_provider(root: str | Path, bars: Mapping[str, pd.DataFrame]) -> dict[str, str]:
    """Write ``<root>/60min`` and ``<root>/day`` provider directories from hourly bars.

    ``bars`` maps an instrument code (``BTC-USDT``, ``BTC-USDT-SWAP``) to a DataFrame indexed by naive UTC bar
    open times with columns ``open high low close volume`` (optional ``amount vwap change factor funding_rate``).
    Returns the ``provider_uri`` dict for ``qlib.init`` (``{"60min": ..., "day": ...}``).
    """
    root = Path(root)
    hourly = {k: _complete(v) for k, v in bars.items()}
    cal = pd.DatetimeIndex(sorted(set().union(*[set(v.index) for v in hourly.values()])))
    _write_freq_dir(root / "60min", "60min", hourly, cal)
    daily = {}
    for inst, df in hourly.items():
        g = df.groupby(df.index.floor("D"))
        d = pd.DataFrame(
            {
                "open": g["open"].first(),
                "high": g["high"].max(),
                "low": g["low"].min(),
                "close": g["close"].last(),
                "volume": g["volume"].sum(),
                "amount": g["amount"].sum(),
            }
        )
        d["vwap"] = d["amount"] / d["volume"]
        d["factor"] = 1.0
        d["change"] = d["close"] / d["close"].shift(1) - 1.0
        if "funding_rate" in df:
            d["funding_rate"] = g["funding_rate"].sum(min_count=1)
        daily[inst] = d
    dcal = pd.DatetimeIndex(sorted(set().union(*[set(v.index) for v in daily.values()])))
    _write_freq_dir(root / "day", "day", daily, dcal)
    return {"60min": str(root / "60min"), "day": str(root / "day")}


def random_walk_bars(
    instruments: list[str], n_bars: int, start: str = "2024-01-01", seed: int = 0, funding_every: int = 8
) -> dict[str, pd.DataFrame]:
    """Synthetic hourly bars (geometric random walk); swaps get a funding rate every ``funding_every`` bars."""
    rng = np.random.default_rng(seed)
    idx = pd.date_range(start, periods=n_bars, freq="h")
    out = {}
    for i, inst in enumerate(instruments):
        ret = rng.normal(0.0, 0.01, n_bars)
        close = 100.0 * (1 + i) * np.exp(np.cumsum(ret))
        open_ = np.concatenate([[close[0]], close[:-1]])
        spread = np.abs(rng.normal(0.0, 0.004, n_bars))
        high = np.maximum(open_, close) * (1 + spread)
        low = np.minimum(open_, close) * (1 - spread)
        volume = rng.uniform(1e3, 1e4, n_bars)
        df = pd.DataFrame({"open": open_, "high": high, "low": low, "close": close, "volume": volume}, index=idx)
        if inst.endswith("-SWAP"):
            fr = np.full(n_bars, np.nan)
            fr[::funding_every] = rng.normal(0.0001, 0.0002, len(fr[::funding_every]))
            df["funding_rate"] = fr
        out[inst] = df
    return out


# ---------------------------------------------------------------------------------------------- test helpers
_PROVIDERS: dict[str, dict[str, str]] = {}


def use_provider(name: str, bars: Mapping[str, pd.DataFrame], root: str | Path | None = None) -> dict[str, str]:
    """Write (once per process and ``name``) a provider for ``bars`` and make it Qlib's current provider.

    Re-initialises Qlib only when another provider is current, so test modules sharing a process do not
    clash. Returns the ``provider_uri`` dict.
    """
    import tempfile

    import qlib
    from qlib.config import C

    uri = _PROVIDERS.get(name)
    if uri is None:
        if root is not None:
            base = Path(root)
        else:  # a scratch directory of this process, removed when it exits
            import atexit
            import shutil

            base = Path(tempfile.mkdtemp(prefix=f"qc_bt_{name}_"))
            atexit.register(shutil.rmtree, base, True)
        uri = write_provider(base, bars)
        _PROVIDERS[name] = uri
    current = C.get("provider_uri") if C.registered else None
    if not current or {k: str(v) for k, v in dict(current).items()} != uri:
        qlib.init(provider_uri=uri, region="us", trade_unit=None, limit_threshold=None, deal_price="close", kernels=1)
    return uri


def scripted_strategy(script: Mapping[pd.Timestamp, list]) -> Any:
    """Return a ``BaseStrategy`` instance that places ``script[bar_time]`` orders (side ``buy``/``sell``)."""
    from qlib.backtest.decision import Order, TradeDecisionWO
    from qlib.strategy.base import BaseStrategy

    class _Scripted(BaseStrategy):
        def generate_trade_decision(self, execute_result=None):
            step = self.trade_calendar.get_trade_step()
            start, end = self.trade_calendar.get_step_time(step)
            orders = [
                Order(
                    stock_id=inst,
                    amount=float(amount),
                    start_time=start,
                    end_time=end,
                    direction=Order.BUY if side == "buy" else Order.SELL,
                )
                for inst, side, amount in script.get(pd.Timestamp(start), [])
            ]
            return TradeDecisionWO(orders, self)

    return _Scripted()
