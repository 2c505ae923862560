"""A seeded, deterministic synthetic crypto market (the offline default for the demo, the docs and the tests).

The model (see ``docs/synthetic-market.md``):

- a common market factor ``m_t`` with Student-t shocks and EGARCH-like stochastic volatility (a slow and a
  fast log-volatility component, each an AR(1) driven partly by past absolute shocks: volatility clusters);
- per base currency an idiosyncratic return ``sigma_i,t * e_i,t`` (Student-t, its own log-volatility loaded
  on the market's), so the underlying log return is ``beta_i * m_t + sigma_i,t * e_i,t + mu_i,t``;
- a planted, weak cross-sectional structure ``mu_i,t``: short-term reversal of idiosyncratic moves that
  happened on *low* volume (moves on high volume do not revert), as in Campbell, Grossman and Wang (1993),
  spread over the following bars with weights decaying by ``reversal_decay`` (0.7) per bar, so it still
  reaches the research label's bar t+2 (one bar of execution delay);
- volume that rises with volatility, absolute shocks, intraday and weekly seasonality (weekends quieter);
- swaps follow their base's path plus a small mean-reverting basis, and pay funding every 8 hours;
- listing dates (bars only from the listing), a few missing bars and rare market-wide outages.

Determinism: every random number is drawn from a generator keyed by ``(seed, timeframe, name, block,
stream)``. Bars are generated in fixed blocks of :data:`BLOCK_BARS` bars counted from :data:`ORIGIN_MS`
(2020-01-01 UTC); a block uses the draws of the previous block as burn-in for its recursions and is
pinned to a coarse random walk at its boundaries, so a bar never depends on how a range is chunked, nor on
which other instruments are requested.
"""

from __future__ import annotations

import difflib
import logging
import math
import re
import time
import zlib
from collections import OrderedDict
from dataclasses import dataclass, fields, replace
from typing import Any, Iterator, Sequence

import numpy as np
import pandas as pd

from ..errors import ConfigError
from ..timeframes import Timeframe, get_timeframe
from ._filters import ar1_filter
from .base import BAR_COLUMNS, BarSource

logger = logging.getLogger(__name__)

ORIGIN_MS = 1_577_836_800_000  # 2020-01-01T00:00:00Z: the synthetic market starts here
BLOCK_BARS = 65_536  # bars per generation block (any timeframe)
HOUR_MS = 3_600_000
DAY_MS = 86_400_000
YEAR_MS = 365 * DAY_MS
FUNDING_INTERVAL_MS = 8 * HOUR_MS  # settlements at 00:00, 08:00, 16:00 UTC
_FUNDING_CHUNK = 4096  # settlements per funding random stream chunk
_COARSE_BLOCKS = 4096  # coarse random-walk steps drawn per stream (far more than ever needed)

#: Base currencies in the order used for ``instruments=N`` (roughly by market size); beyond this list
#: names are ``SYN<k>``.
BASES: tuple[str, ...] = (
    "BTC",
    "ETH",
    "SOL",
    "XRP",
    "DOGE",
    "ADA",
    "AVAX",
    "LINK",
    "DOT",
    "TRX",
    "LTC",
    "BCH",
    "UNI",
    "ATOM",
    "ETC",
    "FIL",
    "NEAR",
    "APT",
    "ARB",
    "OP",
    "AAVE",
    "MKR",
    "SUI",
    "INJ",
    "TIA",
    "SEI",
    "PEPE",
    "SHIB",
    "WLD",
    "ORDI",
    "STX",
    "IMX",
    "GRT",
    "SAND",
    "MANA",
    "AXS",
    "CRV",
    "LDO",
    "DYDX",
    "COMP",
    "SNX",
    "1INCH",
    "YFI",
    "SUSHI",
    "BAT",
    "ENS",
    "GMT",
    "APE",
    "ALGO",
    "XLM",
    "EOS",
    "XTZ",
    "KSM",
    "ICP",
    "HBAR",
    "VET",
    "THETA",
    "EGLD",
    "FLOW",
    "ZIL",
)
# Rough prices on 2020-01-01 (USDT) for a realistic start; other bases get a seeded log-uniform price.
_START_PRICE = {
    "BTC": 7200.0,
    "ETH": 130.0,
    "SOL": 0.95,
    "XRP": 0.19,
    "DOGE": 0.002,
    "ADA": 0.033,
    "AVAX": 4.5,
    "LINK": 1.8,
    "DOT": 2.9,
    "TRX": 0.013,
    "LTC": 41.0,
    "BCH": 205.0,
    "UNI": 3.2,
    "ATOM": 4.0,
    "ETC": 4.4,
    "FIL": 4.0,
    "NEAR": 0.8,
    "APT": 8.0,
    "ARB": 1.2,
    "OP": 1.4,
}
_INSTID_RE = re.compile(r"^([A-Z0-9]{1,20})-([A-Z]{2,10})(-SWAP)?$")


@dataclass(frozen=True)
class SyntheticParams:
    """Parameters of the synthetic market (all have sensible defaults; pass overrides to SyntheticSource)."""

    market_vol: float = 0.60  # annualised volatility of the market factor
    idio_vol_range: tuple[float, float] = (0.35, 0.90)  # annualised idiosyncratic volatility (non-BTC)
    btc_idio_vol: float = 0.12
    beta_range: tuple[float, float] = (0.7, 1.4)  # BTC has beta 1
    tail_df: float = 4.0  # Student-t degrees of freedom of idiosyncratic shocks
    market_tail_df: float = 5.0
    vol_slow_halflife_h: float = 96.0
    vol_fast_halflife_h: float = 4.0
    vol_slow_std: float = 0.35  # stationary std of the slow log-volatility component
    vol_fast_std: float = 0.25
    vol_feedback: float = 0.7  # share of log-vol innovation driven by past |shocks| (EGARCH-like)
    market_vol_loading: float = 0.6  # instrument log-vol = loading * market log-vol + own components
    weekend_activity: float = 0.65  # volume multiplier on Saturdays and Sundays (UTC)
    weekend_vol: float = 0.8  # volatility multiplier on weekends
    intraday_volume_amp: float = 0.3  # log-volume amplitude of the intraday cycle (peak 15:00 UTC)
    intraday_vol_amp: float = 0.12
    volume_vol_elasticity: float = 1.0  # d log volume / d log volatility
    volume_shock_loading: float = 0.25  # log volume per unit of |standardised shock| above its mean
    volume_noise_std: float = 0.6
    volume_noise_halflife_h: float = 1.0
    reversal_strength: float = 0.05  # planted reversal (fraction of next-bar volatility per unit shock)
    reversal_decay: float = 0.7  # per-bar decay of the reversal memory (half-life ~2 bars: reaches bar t+2)
    reversal_volume_slope: float = 2.0  # how sharply the reversal fades as volume rises
    late_listing_fraction: float = 0.4  # share of instruments (beyond the first 6 bases) listed after origin
    late_listing_end: str = "2024-01-01"  # latest listing date
    missing_rate: float = 5e-4  # per-bar probability of a missing bar (timeframes <= 1h; 0 above)
    outages_per_year: float = 3.0  # market-wide outages (5-120 min; bars fully inside are missing)
    basis_std: float = 3e-4  # stationary std of the swap log basis
    basis_halflife_h: float = 4.0
    funding_mean: float = 1e-4  # mean funding rate per 8 h (0.01 %)
    funding_persistence: float = 0.85  # AR(1) coefficient per settlement
    funding_return_loading: float = 0.003  # funding per unit of the last 8 h log return
    funding_noise: float = 3e-5
    funding_cap: float = 0.0075


def _key(text: str) -> int:
    return zlib.crc32(text.encode("utf-8"))


def _rng(seed: int, *parts: object) -> np.random.Generator:
    """A generator keyed by (seed, parts...): stable across processes and platforms."""
    entropy = [int(seed)] + [p if isinstance(p, int) else _key(str(p)) for p in parts]
    return np.random.default_rng(np.random.SeedSequence([e & 0xFFFFFFFF for e in entropy]))


def _unit(seed: int, *parts: object) -> float:
    """A stable uniform number in [0, 1) keyed by (seed, parts...)."""
    return float(_rng(seed, "unit", *parts).random())


def _std_t(rng: np.random.Generator, df: float, n: int) -> np.ndarray:
    """Student-t draws scaled to unit variance."""
    return rng.standard_t(df, n) * math.sqrt((df - 2.0) / df)


def _mean_abs_std_t(df: float) -> float:
    """E|z| for a unit-variance Student-t."""
    e_abs_t = 2.0 * math.sqrt(df) * math.gamma((df + 1) / 2) / (math.sqrt(math.pi) * (df - 1) * math.gamma(df / 2))
    return e_abs_t * math.sqrt((df - 2.0) / df)


def _phi(halflife_ms: float, bar_ms: int) -> float:
    return 0.5 ** (bar_ms / halflife_ms)


def _ar1(innov: np.ndarray, phi: float, std: float) -> np.ndarray:
    """AR(1) with stationary std ``std`` driven by unit-variance innovations, zero initial state."""
    return ar1_filter(std * math.sqrt(1.0 - phi * phi), phi, innov)


def _lag(x: np.ndarray) -> np.ndarray:
    out = np.empty_like(x)
    out[0] = 0.0
    out[1:] = x[:-1]
    return out


def parse_instid(inst_id: str) -> tuple[str, str, bool]:
    """Split an OKX instId into (base, quote, is_swap); raise ConfigError when malformed."""
    match = _INSTID_RE.match(str(inst_id))
    if not match:
        raise ConfigError(
            f"bad synthetic instrument name {inst_id!r}",
            hint="use OKX instIds such as BTC-USDT (spot) or ETH-USDT-SWAP (perpetual swap)",
        )
    return match.group(1), match.group(2), match.group(3) is not None


def default_instruments(n: int) -> list[str]:
    """The naming rule for ``instruments=N``: base k is ``BASES[k]`` (``SYN<k>`` past the list);
    even k is spot (``<BASE>-USDT``), odd k a perpetual swap (``<BASE>-USDT-SWAP``); so ``BTC-USDT`` first."""
    if n < 1:
        raise ConfigError(f"number of synthetic instruments must be >= 1, got {n}", hint="pass e.g. 20")
    names = []
    for k in range(n):
        base = BASES[k] if k < len(BASES) else f"SYN{k:03d}"
        names.append(f"{base}-USDT" if k % 2 == 0 else f"{base}-USDT-SWAP")
    return names


@dataclass(frozen=True)
class _BaseSpec:
    base: str
    rank: int
    beta: float
    idio_vol: float
    start_price: float
    quote_volume_per_day: float


@dataclass(frozen=True)
class _InstSpec:
    inst_id: str
    base: _BaseSpec
    quote: str
    is_swap: bool
    list_ms: int  # listing time (may be before ORIGIN_MS)
    volume_mult: float


class _LRU(OrderedDict):
    def __init__(self, maxsize: int) -> None:
        super().__init__()
        self.maxsize = maxsize

    def get_or(self, key: Any, make: Any) -> Any:
        if key in self:
            self.move_to_end(key)
            return self[key]
        value = make()
        self[key] = value
        if len(self) > self.maxsize:
            self.popitem(last=False)
        return value


class SyntheticSource(BarSource):
    """Seeded synthetic OKX-like market: spot and ``-SWAP`` instruments, any timeframe, 24/7.

    ``instruments`` is a number N (names from :func:`default_instruments`) or a list of OKX instIds.
    ``params`` override :class:`SyntheticParams` fields (e.g. ``reversal_strength=0``).
    """

    name = "synthetic"

    def __init__(self, instruments: int | Sequence[str] = 20, seed: int = 7, **params: Any) -> None:
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ConfigError(f"bad synthetic seed {seed!r}", hint="use a non-negative integer such as 7")
        self.seed = int(seed)
        known = {f.name for f in fields(SyntheticParams)}
        unknown = sorted(set(params) - known)
        if unknown:
            raise ConfigError(
                f"unknown synthetic market parameter(s) {', '.join(unknown)}",
                hint=f"known parameters: {', '.join(sorted(known))}",
            )
        self.params = replace(SyntheticParams(), **params)
        if isinstance(instruments, (int, np.integer)) and not isinstance(instruments, bool):
            names = default_instruments(int(instruments))
        elif isinstance(instruments, str):
            names = [s.strip() for s in instruments.split(",") if s.strip()]
        else:
            names = [str(s).strip() for s in instruments]
        if not names:
            raise ConfigError("no synthetic instruments given", hint="pass a number N or a list of instIds")
        seen: set[str] = set()
        self._instruments: list[str] = []
        for name in names:
            parse_instid(name)
            if name not in seen:
                seen.add(name)
                self._instruments.append(name)
        self._specs: dict[str, _InstSpec] = {}
        self._market_cache = _LRU(16)
        self._base_cache = _LRU(64)
        self._bar_cache = _LRU(48)
        self._funding_cache = _LRU(64)
        self._coarse_cache: dict[tuple, np.ndarray] = {}

    # ----------------------------------------------------------------- public API
    def list_instruments(self) -> list[str]:
        return list(self._instruments)

    def listing_time(self, instrument: str) -> pd.Timestamp:
        """Listing time of an instrument (UTC); the source yields bars only from it (and from 2020-01-01)."""
        return pd.Timestamp(self._spec(instrument).list_ms, unit="ms", tz="UTC")

    def fetch_bars(self, instrument: str, timeframe: str, start_ms: int, end_ms: int) -> Iterator[pd.DataFrame]:
        """Yield bars with open time in ``[start_ms, end_ms)``, one DataFrame per generation block."""
        spec = self._spec(instrument)
        tf = get_timeframe(timeframe)
        if start_ms >= end_ms:
            raise ConfigError(
                f"start {pd.Timestamp(start_ms, unit='ms', tz='UTC')} is not before end "
                f"{pd.Timestamp(end_ms, unit='ms', tz='UTC')}",
                hint="--start is inclusive and --end exclusive; give an end after the start",
            )
        now_ms = int(time.time() * 1000)
        first = max(-(-(start_ms - ORIGIN_MS) // tf.ms), -(-(spec.list_ms - ORIGIN_MS) // tf.ms), 0)
        # only closed bars: the bar [open, open + tf) is final once open + tf <= now
        last_final = (now_ms - ORIGIN_MS) // tf.ms  # index of the bar still forming
        stop = min(-(-(end_ms - ORIGIN_MS) // tf.ms), last_final)
        if stop <= first:
            return
        for block in range(first // BLOCK_BARS, (stop - 1) // BLOCK_BARS + 1):
            lo = max(first, block * BLOCK_BARS) - block * BLOCK_BARS
            hi = min(stop, (block + 1) * BLOCK_BARS) - block * BLOCK_BARS
            bars = self._instrument_block(spec, tf, block)
            keep = bars["present"][lo:hi]
            idx = np.arange(lo, hi)[keep] + block * BLOCK_BARS
            if len(idx) == 0:
                continue
            frame = pd.DataFrame({"datetime": pd.to_datetime(ORIGIN_MS + idx * tf.ms, unit="ms", utc=True)})
            for col in BAR_COLUMNS:
                frame[col] = bars[col][lo:hi][keep]
            yield frame

    def bars(self, instrument: str, timeframe: str, start: Any, end: Any) -> pd.DataFrame:
        """Convenience: all bars of ``[start, end)`` as one DataFrame indexed by UTC ``datetime``."""
        from .base import parse_time_ms

        chunks = list(self.fetch_bars(instrument, timeframe, parse_time_ms(start), parse_time_ms(end)))
        if not chunks:
            empty = pd.DataFrame(columns=BAR_COLUMNS, dtype="float64")
            empty.index = pd.DatetimeIndex([], tz="UTC", name="datetime")
            return empty
        return pd.concat(chunks, ignore_index=True).set_index("datetime")

    def fetch_funding(self, instrument: str, start_ms: int, end_ms: int) -> pd.DataFrame | None:
        """Funding rates of a swap at its 00:00/08:00/16:00 UTC settlements in ``[start_ms, end_ms)``."""
        spec = self._spec(instrument)
        if not spec.is_swap:
            return None
        now_ms = int(time.time() * 1000)
        lo = max(
            -(-(start_ms - ORIGIN_MS) // FUNDING_INTERVAL_MS), -(-(spec.list_ms - ORIGIN_MS) // FUNDING_INTERVAL_MS), 0
        )
        hi = min(-(-(end_ms - ORIGIN_MS) // FUNDING_INTERVAL_MS), (now_ms - ORIGIN_MS) // FUNDING_INTERVAL_MS + 1)
        if hi <= lo:
            return pd.DataFrame(
                {"funding_time": pd.to_datetime([], utc=True), "funding_rate": np.array([], dtype="float64")}
            )
        rates = self._funding_series(spec, hi)
        idx = np.arange(lo, hi)
        return pd.DataFrame(
            {
                "funding_time": pd.to_datetime(ORIGIN_MS + idx * FUNDING_INTERVAL_MS, unit="ms", utc=True),
                "funding_rate": rates[lo:hi],
            }
        )

    def instrument_meta(self) -> pd.DataFrame:
        """OKX-like instrument metadata (one row per instrument; columns as in docs/internals.md)."""
        rows = []
        for inst in self._instruments:
            spec = self._spec(inst)
            p0 = spec.base.start_price
            tick = 10.0 ** (math.floor(math.log10(p0)) - 4)
            if spec.is_swap:
                ct_val = 10.0 ** round(math.log10(100.0 / p0))
                rows.append(
                    dict(
                        instId=inst,
                        instType="SWAP",
                        baseCcy="",
                        quoteCcy="",
                        settleCcy=spec.quote,
                        ctVal=ct_val,
                        ctMult=1.0,
                        tickSz=tick,
                        lotSz=0.01,
                        minSz=0.01,
                        maxMktSz=10000.0,
                        listTime=spec.list_ms,
                        state="live",
                        uly=f"{spec.base.base}-{spec.quote}",
                        ctValCcy=spec.base.base,
                    )
                )
            else:
                min_sz = 10.0 ** round(math.log10(10.0 / p0))
                rows.append(
                    dict(
                        instId=inst,
                        instType="SPOT",
                        baseCcy=spec.base.base,
                        quoteCcy=spec.quote,
                        settleCcy="",
                        ctVal=float("nan"),
                        ctMult=float("nan"),
                        tickSz=tick,
                        lotSz=min_sz / 1000.0,
                        minSz=min_sz,
                        maxMktSz=1_000_000.0 / p0,
                        listTime=spec.list_ms,
                        state="live",
                        uly="",
                        ctValCcy="",
                    )
                )
        meta = pd.DataFrame(rows)
        meta["listTime"] = pd.to_datetime(meta["listTime"], unit="ms", utc=True)
        return meta

    # ----------------------------------------------------------------- specs
    def _spec(self, instrument: str) -> _InstSpec:
        if instrument in self._specs:
            return self._specs[instrument]
        if instrument not in self._instruments:
            close = difflib.get_close_matches(str(instrument), self._instruments, n=3)
            raise ConfigError(
                f"unknown synthetic instrument {instrument!r}",
                hint=(f"did you mean {', '.join(close)}? " if close else "")
                + f"this source has {len(self._instruments)} instruments: {', '.join(self._instruments[:6])}"
                + ("..." if len(self._instruments) > 6 else ""),
            )
        base, quote, is_swap = parse_instid(instrument)
        bspec = self._base_spec(base)
        p = self.params
        u_list = _unit(self.seed, "listing", instrument)
        if bspec.rank < 6 or u_list >= p.late_listing_fraction:
            # listed before the synthetic market starts: a plausible earlier listing time
            list_ms = ORIGIN_MS - int((30 + 700 * _unit(self.seed, "prelist", instrument)) * DAY_MS)
            list_ms -= list_ms % HOUR_MS
        else:
            end = pd.Timestamp(p.late_listing_end, tz="UTC").value // 1_000_000
            begin = ORIGIN_MS + 60 * DAY_MS
            frac = u_list / max(p.late_listing_fraction, 1e-12)
            list_ms = begin + int(frac * (end - begin))
            list_ms -= list_ms % HOUR_MS  # listings happen on the hour
        mult = (2.5 if is_swap else 1.0) * math.exp(0.3 * (_unit(self.seed, "volmult", instrument) - 0.5))
        spec = _InstSpec(instrument, bspec, quote, is_swap, list_ms, mult)
        self._specs[instrument] = spec
        return spec

    def _base_spec(self, base: str) -> _BaseSpec:
        p = self.params
        rank = BASES.index(base) if base in BASES else len(BASES) + int(_unit(self.seed, "rank", base) * 100)
        u = [_unit(self.seed, "base", base, i) for i in range(4)]
        if base == "BTC":
            beta, idio = 1.0, p.btc_idio_vol
        else:
            beta = p.beta_range[0] + (p.beta_range[1] - p.beta_range[0]) * u[0]
            idio = p.idio_vol_range[0] + (p.idio_vol_range[1] - p.idio_vol_range[0]) * u[1]
        price = _START_PRICE.get(base, 10.0 ** (-3 + 5 * u[2]))
        quote_day = 2.0e9 * (rank + 1) ** -1.1 * math.exp(0.4 * (u[3] - 0.5))
        return _BaseSpec(base, rank, beta, idio, price, quote_day)

    # ----------------------------------------------------------------- generation
    def _season(self, tf: Timeframe, t_ms: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(log-volatility, log-volume) seasonal terms at bar open times."""
        p = self.params
        weekday = ((t_ms // DAY_MS) + 3) % 7  # 1970-01-01 was a Thursday; Monday = 0
        weekend = weekday >= 5
        if tf.ms < 12 * HOUR_MS:
            hour_mid = ((t_ms + tf.ms / 2.0) % DAY_MS) / HOUR_MS
            intraday = np.cos(2.0 * np.pi * (hour_mid - 15.0) / 24.0)
        else:
            intraday = np.zeros(len(t_ms))
        log_vol = p.intraday_vol_amp * intraday + np.where(weekend, math.log(p.weekend_vol), 0.0)
        log_volume = p.intraday_volume_amp * intraday + np.where(weekend, math.log(p.weekend_activity), 0.0)
        return log_vol, log_volume

    def _coarse_walk(self, tf: Timeframe, name: str, vol_per_bar: float) -> np.ndarray:
        """Cumulative coarse log returns at block starts (index k = level at the start of block k)."""
        key = (tf.name, name)
        if key not in self._coarse_cache:
            steps = _rng(self.seed, tf.name, name, "coarse").standard_normal(_COARSE_BLOCKS)
            self._coarse_cache[key] = np.concatenate([[0.0], np.cumsum(steps)])
        return self._coarse_cache[key] * vol_per_bar * math.sqrt(BLOCK_BARS)

    def _market_block(self, tf: Timeframe, block: int) -> dict[str, np.ndarray]:
        def make() -> dict[str, np.ndarray]:
            p = self.params
            n = BLOCK_BARS
            z = np.concatenate(
                [
                    _std_t(_rng(self.seed, tf.name, "market", b + 1, "z"), p.market_tail_df, n)
                    for b in (block - 1, block)
                ]
            )
            rng_h = _rng(self.seed, tf.name, "market", block + 1, "h")
            rng_h_prev = _rng(self.seed, tf.name, "market", block, "h")
            # draw the vol noise per block so each block's draws are its own
            h = self._logvol_two(tf, rng_h_prev, rng_h, z, p.market_tail_df)[n:]
            z = z[n:]
            t_ms = ORIGIN_MS + (block * n + np.arange(n)) * tf.ms
            s_vol, _ = self._season(tf, t_ms)
            var_h = p.vol_slow_std**2 + p.vol_fast_std**2
            sigma = p.market_vol / math.sqrt(YEAR_MS / tf.ms) * np.exp(s_vol + h - var_h)
            e_abs = _mean_abs_std_t(p.market_tail_df)
            # market-wide outages: bars lying fully inside an outage are missing for everyone
            rng_o = _rng(self.seed, tf.name, "market", block + 1, "outage")
            span_ms = n * tf.ms
            count = rng_o.poisson(p.outages_per_year * span_ms / YEAR_MS)
            starts = t_ms[0] + rng_o.random(count) * span_ms
            lengths = (5 + 115 * rng_o.random(count)) * 60_000
            outage = np.zeros(n, dtype=bool)
            for s0, ln in zip(starts, lengths):
                i0 = int(math.ceil((s0 - t_ms[0]) / tf.ms))
                i1 = int(math.floor((s0 + ln - t_ms[0]) / tf.ms))  # bars i with open >= s0 and close <= s0+ln
                if i1 > i0:
                    outage[max(i0, 0) : min(i1, n)] = True
            return {"m": sigma * z, "h": h, "sigma": sigma, "g": np.abs(z) - e_abs, "outage": outage}

        return self._market_cache.get_or((tf.name, block), make)

    def _logvol_two(
        self, tf: Timeframe, rng_prev: np.random.Generator, rng_cur: np.random.Generator, shocks: np.ndarray, df: float
    ) -> np.ndarray:
        """Log-volatility over two concatenated blocks, noise drawn per block from its own generator."""
        p = self.params
        n = BLOCK_BARS
        e_abs = _mean_abs_std_t(df)
        # standardised |shock|, capped so one extreme Student-t draw cannot blow up the volatility
        g = np.minimum((np.abs(shocks) - e_abs) / math.sqrt(1.0 - e_abs * e_abs), 4.0)
        g_lag = _lag(g)
        a = p.vol_feedback
        h = np.zeros(2 * n)
        noise = np.concatenate([rng_prev.standard_normal((2, n)), rng_cur.standard_normal((2, n))], axis=1)
        for j, (halflife_h, std) in enumerate(
            ((p.vol_slow_halflife_h, p.vol_slow_std), (p.vol_fast_halflife_h, p.vol_fast_std))
        ):
            innov = a * g_lag + math.sqrt(1.0 - a * a) * noise[j]
            h += _ar1(innov, _phi(halflife_h * HOUR_MS, tf.ms), std)
        return h

    def _base_block(self, tf: Timeframe, bspec: _BaseSpec, block: int) -> dict[str, np.ndarray]:
        def make() -> dict[str, np.ndarray]:
            p = self.params
            n = BLOCK_BARS
            mkt = self._market_block(tf, block)
            rngs = [_rng(self.seed, tf.name, "base", bspec.base, b + 1) for b in (block - 1, block)]
            e = np.concatenate([_std_t(r, p.tail_df, n) for r in rngs])
            # own log-vol (noise from the same per-block generators, drawn after e)
            h_own = self._logvol_two(tf, rngs[0], rngs[1], e, p.tail_df)[n:]
            h = p.market_vol_loading * mkt["h"] + h_own
            t_ms = ORIGIN_MS + (block * n + np.arange(n)) * tf.ms
            s_vol, s_volume = self._season(tf, t_ms)
            var_h = (p.market_vol_loading**2 + 1.0) * (p.vol_slow_std**2 + p.vol_fast_std**2)
            sigma = bspec.idio_vol / math.sqrt(YEAR_MS / tf.ms) * np.exp(s_vol + h - var_h)
            # volume noise (unexpected activity) and the planted reversal
            vn = np.concatenate([r.standard_normal(n) for r in rngs])
            u = _ar1(vn, _phi(p.volume_noise_halflife_h * HOUR_MS, tf.ms), 1.0)
            weight = 2.0 / (1.0 + np.exp(p.reversal_volume_slope * u))  # low volume -> up to 2, high -> 0
            memory = ar1_filter(1.0, p.reversal_decay, e * weight)
            mu = -p.reversal_strength * sigma * _lag(memory)[n:]
            e, u = e[n:], u[n:]
            r = bspec.beta * mkt["m"] + sigma * e + mu
            # pin the block to the coarse walk: r sums to the coarse step (variance-weighted bridge)
            var_bar = (bspec.beta * mkt["sigma"]) ** 2 + sigma**2
            mkt_vol_bar = p.market_vol / math.sqrt(YEAR_MS / tf.ms)
            idio_vol_bar = bspec.idio_vol / math.sqrt(YEAR_MS / tf.ms)
            coarse = bspec.beta * self._coarse_walk(tf, "market", mkt_vol_bar) + self._coarse_walk(
                tf, bspec.base, idio_vol_bar
            )
            r = r + var_bar / var_bar.sum() * ((coarse[block + 1] - coarse[block]) - r.sum())
            log_close = math.log(bspec.start_price) + coarse[block] + np.cumsum(r)
            e_abs = _mean_abs_std_t(p.tail_df)
            log_activity = (
                s_volume
                + p.volume_vol_elasticity
                * (np.log(np.sqrt(var_bar)) - math.log(math.hypot(bspec.beta * mkt_vol_bar, idio_vol_bar)))
                + p.volume_shock_loading * (0.5 * (np.abs(e) - e_abs) + 0.5 * mkt["g"])
                + p.volume_noise_std * u
            )
            return {
                "log_close": log_close,
                "log_open0": math.log(bspec.start_price) + coarse[block],
                "sigma_total": np.sqrt(var_bar),
                "log_activity": log_activity,
                "outage": mkt["outage"],
            }

        return self._base_cache.get_or((tf.name, bspec.base, block), make)

    def _instrument_block(self, spec: _InstSpec, tf: Timeframe, block: int) -> dict[str, np.ndarray]:
        def make() -> dict[str, np.ndarray]:
            p = self.params
            n = BLOCK_BARS
            base = self._base_block(tf, spec.base, block)
            rngs = [_rng(self.seed, tf.name, "inst", spec.inst_id, b + 1) for b in (block - 1, block)]
            log_close = base["log_close"]
            log_open = np.empty(n)
            log_open[0] = base["log_open0"]
            log_open[1:] = log_close[:-1]
            if spec.is_swap:
                bn = np.concatenate([r.standard_normal(n) for r in rngs])
                basis = _ar1(bn, _phi(p.basis_halflife_h * HOUR_MS, tf.ms), p.basis_std)
                log_close = log_close + basis[n:]
                log_open = log_open + basis[n - 1 : 2 * n - 1]
            rng = rngs[1]
            sig = base["sigma_total"]
            ext = np.abs(rng.standard_normal((2, n))) * 0.6 * sig
            close = np.exp(log_close)
            open_ = np.exp(log_open)
            high = np.maximum(open_, close) * np.exp(ext[0])
            low = np.minimum(open_, close) * np.exp(-ext[1])
            t_ms = ORIGIN_MS + (block * n + np.arange(n)) * tf.ms
            quote = (
                spec.base.quote_volume_per_day
                * spec.volume_mult
                * tf.ms
                / DAY_MS
                * np.exp(base["log_activity"] + 0.15 * rng.standard_normal(n) - 0.5 * 0.15**2)
            )
            typical = (high + low + close) / 3.0
            volume = quote / typical
            amount = volume * typical
            present = ~base["outage"]
            if tf.ms <= HOUR_MS and p.missing_rate > 0:
                present &= rng.random(n) >= p.missing_rate
            present &= t_ms >= spec.list_ms  # bars only from the listing
            return {
                "open": open_,
                "high": high,
                "low": low,
                "close": close,
                "volume": volume,
                "amount": amount,
                "present": present,
            }

        return self._bar_cache.get_or((tf.name, spec.inst_id, block), make)

    def _funding_series(self, spec: _InstSpec, upto: int) -> np.ndarray:
        """Funding rates at settlement indices ``0 .. upto-1`` (8 h grid from ORIGIN_MS)."""
        p = self.params
        chunks = -(-upto // _FUNDING_CHUNK)

        def make() -> np.ndarray:
            total = chunks * _FUNDING_CHUNK
            tf = get_timeframe("1h")
            # 8 h log return of the base (1 h timeframe path) ending at each settlement
            hours = total * 8
            blocks = -(-hours // BLOCK_BARS)
            log_close = np.concatenate([self._base_block(tf, spec.base, b)["log_close"] for b in range(blocks)])
            log_open0 = math.log(spec.base.start_price)
            path = np.concatenate([[log_open0], log_close])  # path[h] = log price at ORIGIN + h hours
            idx = np.arange(total) * 8
            ret8 = np.where(idx >= 8, path[idx] - path[np.maximum(idx - 8, 0)], 0.0)
            noise = np.concatenate(
                [_rng(self.seed, "funding", spec.inst_id, c).standard_normal(_FUNDING_CHUNK) for c in range(chunks)]
            )
            x = ar1_filter(1.0, p.funding_persistence, p.funding_return_loading * ret8 + p.funding_noise * noise)
            return np.round(np.clip(p.funding_mean + x, -p.funding_cap, p.funding_cap), 8)

        return self._funding_cache.get_or((spec.inst_id, chunks), make)
