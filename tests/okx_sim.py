"""A loopback OKX v5 simulator that the real ``ccxt.okx`` / ``ccxt.async_support.okx`` class talks to.

Point ccxt at it with ``exchange.urls['api']['rest'] = sim.url`` (or ``OkxSource(api_url=sim.url)``).
It is bound to 127.0.0.1 only, runs a threaded HTTP server, and is used as a context manager::

    with OkxSimulator(now="2024-03-01T12:34:56Z") as sim:
        ...  # sim.url, sim.stats, sim.expected_bars(...)

What it models (see docs/collect.md):
- Endpoints with OKX's JSON shapes: ``public/time``, ``public/instruments`` (SPOT, SWAP), ``market/tickers``,
  ``market/candles`` (only the latest 1,440 bars), ``market/history-candles``, ``public/funding-rate-history``.
- OKX paging: ``after``/``before`` exclusive, the newest ``limit`` rows of the interval, newest first; candle
  rows ``[ts,o,h,l,c,vol,volCcy,volCcyQuote,confirm]`` as strings; the bar still forming has confirm "0";
  ``limit`` max 300 (candles) / 400 (funding), default 100; swap ``vol`` in contracts, ``volCcy`` in base.
- A fixed "now": history ends there, with a forming bar. Funding history kept for 92 days.
- Strict sliding-window rate limits per endpoint budget (every arrival counts, rejected ones too): 429 with
  OKX code 50011 when exceeded. Requests and 429s are counted in :attr:`stats`.
- Deterministic fault injection: a seeded schedule (``fault_rate``, ``fault_kinds``), an explicit queue
  (:meth:`plan_faults`) and persistent rules (:meth:`add_fault_rule`). Kinds: ``429`` (50011), ``500``
  (OKX JSON body that ccxt maps to a plain ExchangeError), ``502`` (non-JSON HTML), ``503`` (50001,
  maintenance), ``timeout`` (sleep past the client timeout), ``truncated`` (200 with cut JSON), and the silent
  ``empty`` (200, valid JSON, no rows).
- Hostile answers (:data:`HOSTILE_KINDS`, through :meth:`add_fault_rule` / :meth:`plan_faults`; ``rows=`` picks
  the candle rows by open time): ``ignore_paging`` (``after``/``before`` ignored: the newest ``limit`` rows, any
  endpoint), and on candle answers ``unconfirmed`` (a past bar with confirm "0"), ``misaligned`` (open time
  shifted off the bar grid), ``duplicate_conflicting`` (the row twice, the second with other volumes),
  ``duplicate_identical`` (the row twice, identical), ``nan`` (close "NaN"), ``ohlc_bad`` (high below low).
  ``request_cap`` answers HTTP 400 to every request beyond it, so a client that loops forever terminates.
- Its own deterministic bar generator (a counter-based hash of instrument, bar and timestamp), independent of
  the package's synthetic market: :meth:`expected_bars` and :meth:`expected_funding` are the ground truth.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import json
import math
import random
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable, Iterable
from urllib.parse import parse_qsl, urlsplit

import numpy as np
import pandas as pd

MINUTE = 60_000
HOUR = 60 * MINUTE
DAY = 24 * HOUR
HK_OFFSET = -8 * HOUR  # Hong Kong aligned bars open at 16:00 UTC

# OKX bar name -> (length ms, alignment offset ms)
BARS: dict[str, tuple[int, int]] = {
    "1m": (MINUTE, 0),
    "3m": (3 * MINUTE, 0),
    "5m": (5 * MINUTE, 0),
    "15m": (15 * MINUTE, 0),
    "30m": (30 * MINUTE, 0),
    "1H": (HOUR, 0),
    "2H": (2 * HOUR, 0),
    "4H": (4 * HOUR, 0),
    "6H": (6 * HOUR, HK_OFFSET),
    "12H": (12 * HOUR, HK_OFFSET),
    "1D": (DAY, HK_OFFSET),
    "1W": (7 * DAY, HK_OFFSET),
    "6Hutc": (6 * HOUR, 0),
    "12Hutc": (12 * HOUR, 0),
    "1Dutc": (DAY, 0),
}

# endpoint -> (max requests, window seconds, key parameter or None for one budget per IP)
OKX_LIMITS: dict[str, tuple[int, float, str | None]] = {
    "market/history-candles": (20, 2.0, None),
    "market/candles": (40, 2.0, None),
    "public/instruments": (20, 2.0, "instType"),
    "public/funding-rate-history": (10, 2.0, "instId"),
    "market/tickers": (20, 2.0, None),
    "public/time": (10, 2.0, None),
}
FAULT_KINDS = ("429", "500", "502", "503", "timeout", "truncated")
ALL_FAULT_KINDS = FAULT_KINDS + ("empty",)
ROW_KINDS = ("unconfirmed", "misaligned", "duplicate_conflicting", "duplicate_identical", "nan", "ohlc_bad")
HOSTILE_KINDS = ("ignore_paging",) + ROW_KINDS
CANDLE_ENDPOINTS = ("market/candles", "market/history-candles")
FUNDING_RETENTION_MS = 92 * DAY
CANDLES_KEEP = 1440


def to_ms(value: object) -> int:
    """Epoch ms UTC of an ISO string / Timestamp / int (naive = UTC)."""
    if isinstance(value, (int, np.integer)):
        return int(value)
    ts = pd.Timestamp(value)
    if ts.tzinfo is None:
        ts = ts.tz_localize("UTC")
    return int(ts.value // 1_000_000)


@dataclass
class SimInstrument:
    inst_id: str
    list_time: int  # epoch ms
    base_price: float
    ct_val: float = 0.0  # swaps: base currency per contract
    state: str = "live"
    volume_rank: float = 1.0  # scales 24h volume in tickers

    @property
    def inst_type(self) -> str:
        return "SWAP" if self.inst_id.endswith("-SWAP") else "SPOT"

    @property
    def base(self) -> str:
        return self.inst_id.split("-")[0]

    @property
    def quote(self) -> str:
        return self.inst_id.split("-")[1]


_OLD = to_ms("2019-01-01")
DEFAULT_INSTRUMENTS: list[SimInstrument] = [
    SimInstrument("BTC-USDT", _OLD, 40000.0, volume_rank=10),
    SimInstrument("ETH-USDT", _OLD, 2500.0, volume_rank=8),
    SimInstrument("SOL-USDT", to_ms("2020-08-11T08:00:00Z"), 100.0, volume_rank=6),
    SimInstrument("XRP-USDT", _OLD, 0.55, volume_rank=5),
    SimInstrument("DOGE-USDT", _OLD, 0.085, volume_rank=4),
    SimInstrument("ADA-USDT", _OLD, 0.5, volume_rank=3),
    SimInstrument("ARB-USDT", to_ms("2024-02-20T09:37:00Z"), 1.8, volume_rank=2.5),  # listed inside test ranges
    SimInstrument("LUNA-USDT", _OLD, 0.9, state="suspend", volume_rank=0.1),
    SimInstrument("BTC-USDT-SWAP", _OLD, 40010.0, ct_val=0.01, volume_rank=12),
    SimInstrument("ETH-USDT-SWAP", _OLD, 2501.0, ct_val=0.1, volume_rank=9),
    SimInstrument("SOL-USDT-SWAP", to_ms("2021-01-01"), 100.2, ct_val=1.0, volume_rank=7),
    SimInstrument("DOGE-USDT-SWAP", _OLD, 0.0851, ct_val=1000.0, volume_rank=3.5),
]


def many_instruments(n: int, *, swaps: int = 0) -> list[SimInstrument]:
    """``n`` spot instruments (``C00-USDT`` ...) plus ``swaps`` swaps, all listed in 2019 (for benchmarks)."""
    out = [SimInstrument(f"C{i:02d}-USDT", _OLD, 1.0 + 7.0 * i, volume_rank=float(n - i)) for i in range(n)]
    out += [SimInstrument(f"C{i:02d}-USDT-SWAP", _OLD, 1.0 + 7.0 * i, ct_val=10.0) for i in range(swaps)]
    return out


def _key(*parts: object) -> int:
    return int.from_bytes(hashlib.blake2b(":".join(map(str, parts)).encode(), digest_size=8).digest(), "little")


def _uniform(key: int, ts: np.ndarray, salt: int) -> np.ndarray:
    """Counter-based hash (splitmix64 finaliser) of (key, ts, salt) -> uniform floats in [0, 1)."""
    with np.errstate(over="ignore"):
        x = (
            ts.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
            + np.uint64(key)
            + np.uint64(salt * 0xBF58476D1CE4E5B9 % 2**64)
        )
        x ^= x >> np.uint64(30)
        x *= np.uint64(0xBF58476D1CE4E5B9)
        x ^= x >> np.uint64(27)
        x *= np.uint64(0x94D049BB133111EB)
        x ^= x >> np.uint64(31)
    return (x >> np.uint64(11)).astype(np.float64) / float(2**53)


def _decimals(price: float) -> int:
    return int(min(8, max(1, 5 - math.floor(math.log10(price)))))


class BarGenerator:
    """Deterministic bars: a slow cycle times hash noise, rounded to a price tick; a few bars missing."""

    def __init__(self, seed: int = 7, gap_prob: float = 0.0005) -> None:
        self.seed = seed
        self.gap_prob = gap_prob

    def rows(self, inst: SimInstrument, bar: str, ts: np.ndarray, *, forming: bool = False) -> list[list[str]]:
        """Rows ``[ts,o,h,l,c,vol,volCcy,volCcyQuote,confirm]`` (strings) for open times ``ts``."""
        if len(ts) == 0:
            return []
        key = _key(self.seed, inst.inst_id, bar)
        u = [_uniform(key, ts, s) for s in range(6)]
        t = ts.astype(np.float64)
        level = inst.base_price * np.exp(
            0.15 * np.sin(2 * np.pi * t / (37 * DAY)) + 0.03 * np.sin(2 * np.pi * t / (1.3 * DAY) + 1.0)
        )
        close = level * (1 + 0.004 * (u[0] - 0.5))
        open_ = level * (1 + 0.004 * (u[1] - 0.5))
        high = np.maximum(open_, close) * (1 + 0.003 * u[2])
        low = np.minimum(open_, close) * (1 - 0.003 * u[3])
        d = _decimals(inst.base_price)
        if forming:  # a bar still forming: partial values, clearly different from the final ones
            close = open_ * (1 + 0.001)
            high = np.maximum(high, close)
        o, h, l, c = (np.round(a, d) for a in (open_, high, low, close))
        out = []
        for i in range(len(ts)):
            if inst.inst_type == "SWAP":  # vol in contracts, volCcy in base currency
                contracts = float(int(1 + 50_000 * u[4][i]))
                base_vol = round(contracts * inst.ct_val, 6)
                vol, vol_ccy = f"{contracts:.0f}", f"{base_vol:.6f}"
                quote_vol = f"{base_vol * c[i] * (1 + 0.0005 * (u[5][i] - 0.5)):.4f}"
            else:  # vol in base currency, volCcy and volCcyQuote in quote currency
                base_vol = round(1 + 900 * u[4][i], 4)
                vol = f"{base_vol:.4f}"
                quote_vol = vol_ccy = f"{base_vol * c[i] * (1 + 0.0005 * (u[5][i] - 0.5)):.4f}"
            if forming:
                vol = vol_ccy = quote_vol = "0.5"
            out.append(
                [
                    str(int(ts[i])),
                    f"{o[i]:.{d}f}",
                    f"{h[i]:.{d}f}",
                    f"{l[i]:.{d}f}",
                    f"{c[i]:.{d}f}",
                    vol,
                    vol_ccy,
                    quote_vol,
                    "0" if forming else "1",
                ]
            )
        return out

    def present(self, inst: SimInstrument, bar: str, ts: np.ndarray) -> np.ndarray:
        """Boolean mask: which of these open times have a bar (a few are missing, as on a real venue)."""
        if self.gap_prob <= 0:
            return np.ones(len(ts), dtype=bool)
        return _uniform(_key(self.seed, inst.inst_id, bar, "gap"), ts, 99) >= self.gap_prob

    def funding_rate(self, inst: SimInstrument, ts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        u = _uniform(_key(self.seed, inst.inst_id, "funding"), ts, 3)
        rate = np.round(0.0001 + 0.0006 * (u - 0.4), 8)
        realized = np.round(rate * 0.98, 8)
        return rate, realized


@dataclass
class FaultRule:
    kind: str
    endpoint: str | None = None
    inst_id: str | None = None
    predicate: Callable[[dict], bool] | None = None
    times: int | None = None  # None = forever
    hits: int = 0
    rows: Callable[[int], bool] | None = None  # row kinds: which candle rows (by open time); None = every one


@dataclass
class SimStats:
    requests: collections.Counter = field(default_factory=collections.Counter)  # per endpoint
    rate_limited: collections.Counter = field(default_factory=collections.Counter)  # genuine 429s per endpoint
    injected: collections.Counter = field(default_factory=collections.Counter)  # injected faults per kind
    ok: collections.Counter = field(default_factory=collections.Counter)  # 200 answers with data per endpoint
    candle_rows: int = 0  # confirmed candle rows served

    @property
    def total_requests(self) -> int:
        return sum(self.requests.values())

    @property
    def total_rate_limited(self) -> int:
        return sum(self.rate_limited.values())


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = True
    allow_reuse_address = True

    def __init__(self, sim: "OkxSimulator") -> None:
        self.sim = sim
        self._conns: set[socket.socket] = set()
        self._conns_lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), _Handler)

    def get_request(self):  # track connections so stop() can close idle keep-alive ones
        conn, addr = super().get_request()
        with self._conns_lock:
            self._conns.add(conn)
        return conn, addr

    def shutdown_request(self, request) -> None:
        with self._conns_lock:
            self._conns.discard(request)
        super().shutdown_request(request)

    def handle_error(self, request, client_address) -> None:  # a client that hung up (killed, timed out)
        pass

    def close_connections(self) -> None:
        with self._conns_lock:
            conns = list(self._conns)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: object) -> None:  # quiet
        pass

    def do_GET(self) -> None:  # noqa: N802
        self.server.sim.record_headers(self.headers.items())
        status, ctype, body = self.server.sim._handle(self.path)
        if status < 0:  # timeout fault: the client gave up; answer late, ignoring a closed socket
            status = 200
        with contextlib.suppress(OSError):
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)


class OkxSimulator:
    """The loopback OKX v5 server. See the module docstring."""

    def record_headers(self, items) -> None:
        """Keep the distinct request headers seen (bounded), so tests can check what clients send."""
        seen = self.__dict__.setdefault("seen_headers", set())
        if len(seen) < 10_000:
            seen.update((name.lower(), value) for name, value in items)

    def __init__(
        self,
        *,
        now: object = "2024-03-01T12:34:56.789Z",
        instruments: Iterable[SimInstrument] | None = None,
        seed: int = 7,
        gap_prob: float = 0.0005,
        limits: dict[str, tuple[int, float, str | None]] | None = None,
        window_scale: float = 1.0,
        fault_rate: float = 0.0,
        fault_kinds: Iterable[str] = FAULT_KINDS,
        fault_seed: int = 1,
        fault_endpoints: Iterable[str] = (
            "market/history-candles",
            "market/candles",
            "public/funding-rate-history",
            "public/instruments",
            "market/tickers",
        ),
        timeout_sleep_s: float = 1.0,
        log_requests: bool = True,
        funding_retention_ms: int = FUNDING_RETENTION_MS,
        misaligned_offset_ms: int = 30_000,
        request_cap: int | None = None,
    ) -> None:
        self.now = to_ms(now)
        self.instruments = {i.inst_id: i for i in (instruments if instruments is not None else DEFAULT_INSTRUMENTS)}
        self.generator = BarGenerator(seed=seed, gap_prob=gap_prob)
        base = dict(OKX_LIMITS)
        base.update(limits or {})
        self.limits = {ep: (n, w * window_scale, k) for ep, (n, w, k) in base.items()}
        self.fault_rate = float(fault_rate)
        self.fault_kinds = tuple(fault_kinds)
        unknown = set(self.fault_kinds) - set(ALL_FAULT_KINDS)
        if unknown:
            raise ValueError(f"unknown fault kinds {sorted(unknown)}; use {ALL_FAULT_KINDS}")
        self.fault_seed = fault_seed
        self.fault_endpoints = set(fault_endpoints)
        self.timeout_sleep_s = timeout_sleep_s
        self.funding_retention_ms = int(funding_retention_ms)
        self.misaligned_offset_ms = int(misaligned_offset_ms)
        self.request_cap = request_cap
        self.stats = SimStats()
        self.log: list[tuple[str, dict, int, str]] = []  # (endpoint, params, status, fault kind or "")
        self.log_requests = log_requests
        self._lock = threading.Lock()
        self._arrivals: dict[tuple[str, str], collections.deque] = collections.defaultdict(collections.deque)
        self._planned: list[tuple[str, str | None]] = []  # (kind, endpoint)
        self._rules: list[FaultRule] = []
        self._stop = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ------------------------------------------------------------------------------------
    def start(self) -> "OkxSimulator":
        self._stop.clear()
        self._server = _Server(self)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="okx-sim", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is None:
            return
        self._stop.set()  # wakes handlers sleeping in a timeout fault
        self._server.shutdown()
        self._server.close_connections()
        self._server.server_close()  # joins handler threads (block_on_close)
        assert self._thread is not None
        self._thread.join(timeout=10)
        self._server = None
        self._thread = None

    def __enter__(self) -> "OkxSimulator":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self._server is not None, "simulator not started"
        return self._server.server_address[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # -- fault control --------------------------------------------------------------------------------
    @staticmethod
    def _check_kind(kind: str) -> None:
        if kind not in ALL_FAULT_KINDS + HOSTILE_KINDS:
            raise ValueError(f"unknown fault kind {kind!r}; use one of {ALL_FAULT_KINDS + HOSTILE_KINDS}")

    def plan_faults(self, kinds: Iterable[str], endpoint: str | None = "market/history-candles") -> None:
        """Queue faults answered, in order, to the next requests of ``endpoint`` (None: any endpoint)."""
        kinds = list(kinds)
        for k in kinds:
            self._check_kind(k)
        with self._lock:
            self._planned.extend((k, endpoint) for k in kinds)

    def add_fault_rule(
        self,
        kind: str,
        *,
        endpoint: str | None = "market/history-candles",
        inst_id: str | None = None,
        predicate: Callable[[dict], bool] | None = None,
        times: int | None = None,
        rows: Callable[[int], bool] | None = None,
    ) -> FaultRule:
        """Answer ``kind`` to every matching request (``times`` times, or forever).

        For the row kinds (:data:`ROW_KINDS`) ``rows(open_time_ms)`` picks the confirmed candle rows to spoil
        (default: every one).
        """
        self._check_kind(kind)
        rule = FaultRule(kind, endpoint, inst_id, predicate, times, rows=rows)
        with self._lock:
            self._rules.append(rule)
        return rule

    def clear_faults(self) -> None:
        with self._lock:
            self._planned.clear()
            self._rules.clear()
        self.fault_rate = 0.0

    # -- ground truth ---------------------------------------------------------------------------------
    def live_edge(self, bar: str) -> int:
        """Open time of the bar still forming at ``now``."""
        ms, off = BARS[bar]
        return (self.now - off) // ms * ms + off

    def first_bar(self, inst: SimInstrument, bar: str) -> int:
        ms, off = BARS[bar]
        return -((-(inst.list_time - off)) // ms) * ms + off

    def expected_bars(self, inst_id: str, bar: str, start_ms: int, end_ms: int) -> pd.DataFrame:
        """Confirmed bars with open time in [start_ms, end_ms), ascending: columns ts + OKX fields as floats."""
        inst = self.instruments[inst_id]
        rows = self._candles(inst, bar, start_ms - 1, end_ms, limit=10**9, include_forming=False)
        rows = rows[::-1]
        cols = ["ts", "o", "h", "l", "c", "vol", "volCcy", "volCcyQuote", "confirm"]
        df = pd.DataFrame(rows, columns=cols)
        for c in cols:
            df[c] = pd.to_numeric(df[c]) if c == "ts" else df[c].astype(float)
        df["ts"] = df["ts"].astype("int64")
        return df

    def expected_funding(self, inst_id: str, start_ms: int, end_ms: int) -> pd.DataFrame:
        """Funding settlements in [start_ms, end_ms) that the server still keeps, ascending."""
        inst = self.instruments[inst_id]
        rows = self._funding(inst, start_ms - 1, end_ms, limit=10**9)[::-1]
        return pd.DataFrame(
            {
                "fundingTime": [int(r["fundingTime"]) for r in rows],
                "fundingRate": [float(r["fundingRate"]) for r in rows],
                "realizedRate": [float(r["realizedRate"]) for r in rows],
            }
        )

    # -- data -----------------------------------------------------------------------------------------
    def _candles(
        self,
        inst: SimInstrument,
        bar: str,
        before: int | None,
        after: int | None,
        limit: int,
        include_forming: bool = True,
        oldest: int | None = None,
    ) -> list[list[str]]:
        """Rows with before < ts < after, the newest ``limit`` of them, newest first."""
        ms, off = BARS[bar]
        edge = self.live_edge(bar)
        lo = self.first_bar(inst, bar)
        if oldest is not None:
            lo = max(lo, oldest)
        if before is not None:
            lo = max(lo, -((-(before + 1 - off)) // ms) * ms + off)
        hi = edge
        if after is not None:
            hi = min(hi, (after - 1 - off) // ms * ms + off)
        out: list[list[str]] = []
        if hi < lo or limit <= 0:
            return out
        if include_forming and hi == edge:
            out.extend(self.generator.rows(inst, bar, np.array([edge], dtype=np.int64), forming=True))
        top = hi if hi < edge else edge - ms
        while len(out) < limit and top >= lo:
            n = min((top - lo) // ms + 1, max(limit - len(out), 1) + 64)
            ts = top - ms * np.arange(n, dtype=np.int64)
            ts = ts[self.generator.present(inst, bar, ts)]
            rows = self.generator.rows(inst, bar, ts[: limit - len(out)])
            out.extend(rows)
            top = top - n * ms
        return out[:limit]

    def _funding(self, inst: SimInstrument, before: int | None, after: int | None, limit: int) -> list[dict]:
        period = 8 * HOUR
        lo = max(self.now - self.funding_retention_ms, inst.list_time)
        if before is not None:
            lo = max(lo, before + 1)
        lo = -(-lo // period) * period
        hi = self.now if after is None else min(self.now, after - 1)
        hi = hi // period * period
        if hi < lo:
            return []
        ts = hi - period * np.arange((hi - lo) // period + 1, dtype=np.int64)
        ts = ts[:limit]
        rate, realized = self.generator.funding_rate(inst, ts)
        return [
            {
                "instType": "SWAP",
                "instId": inst.inst_id,
                "formulaType": "withRate",
                "fundingRate": f"{rate[i]:.8f}",
                "realizedRate": f"{realized[i]:.8f}",
                "fundingTime": str(int(ts[i])),
                "method": "current_period",
            }
            for i in range(len(ts))
        ]

    def _instrument_row(self, inst: SimInstrument) -> dict:
        d = _decimals(inst.base_price)
        tick = f"{10.0**-d:.{d}f}"
        row = {
            "instType": inst.inst_type,
            "instId": inst.inst_id,
            "instFamily": "",
            "uly": "",
            "category": "1",
            "baseCcy": inst.base,
            "quoteCcy": inst.quote,
            "settleCcy": "",
            "ctVal": "",
            "ctMult": "",
            "ctValCcy": "",
            "ctType": "",
            "optType": "",
            "stk": "",
            "listTime": str(inst.list_time),
            "expTime": "",
            "lever": "10",
            "tickSz": tick,
            "lotSz": "0.0001",
            "minSz": "0.001",
            "maxLmtSz": "10000000",
            "maxMktSz": "1000000",
            "maxTwapSz": "",
            "maxIcebergSz": "",
            "maxTriggerSz": "",
            "maxStopSz": "",
            "alias": "",
            "state": inst.state,
            "ruleType": "normal",
            "instIdCode": _key(inst.inst_id) % 100000,
        }
        if inst.inst_type == "SWAP":
            family = f"{inst.base}-{inst.quote}"
            row.update(
                {
                    "instFamily": family,
                    "uly": family,
                    "baseCcy": "",
                    "quoteCcy": "",
                    "settleCcy": inst.quote,
                    "ctVal": f"{inst.ct_val:g}",
                    "ctMult": "1",
                    "ctValCcy": inst.base,
                    "ctType": "linear",
                    "lotSz": "1",
                    "minSz": "1",
                    "maxMktSz": "5000",
                    "lever": "100",
                }
            )
        return row

    def _ticker_row(self, inst: SimInstrument) -> dict:
        last = float(self.generator.rows(inst, "1H", np.array([self.live_edge("1H") - HOUR], dtype=np.int64))[0][4])
        base_vol = 1000.0 * inst.volume_rank * 40000.0 / inst.base_price  # quote volume ~ volume_rank * 4e7
        if inst.inst_type == "SWAP":
            vol24h, vol_ccy24h = f"{base_vol / inst.ct_val:.0f}", f"{base_vol:.4f}"  # contracts, base
        else:
            vol24h, vol_ccy24h = f"{base_vol:.4f}", f"{base_vol * last:.4f}"  # base, quote
        return {
            "instType": inst.inst_type,
            "instId": inst.inst_id,
            "last": f"{last}",
            "lastSz": "0.1",
            "askPx": f"{last}",
            "askSz": "1",
            "bidPx": f"{last}",
            "bidSz": "1",
            "open24h": f"{last}",
            "high24h": f"{last}",
            "low24h": f"{last}",
            "volCcy24h": vol_ccy24h,
            "vol24h": vol24h,
            "ts": str(self.now),
            "sodUtc0": f"{last}",
            "sodUtc8": f"{last}",
        }

    # -- request handling -----------------------------------------------------------------------------
    @staticmethod
    def _json(status: int, code: str, data: object, msg: str = "") -> tuple[int, str, bytes]:
        return status, "application/json", json.dumps({"code": code, "msg": msg, "data": data}).encode()

    def _pick_fault(self, endpoint: str, params: dict, n: int) -> tuple[str, Callable[[int], bool] | None]:
        """(fault kind, row selector) for this request (kind '' for none). Called under the lock."""
        kind, rule = self._pick_rule(endpoint, params, n)
        return kind, (rule.rows if rule is not None else None)

    def _pick_rule(self, endpoint: str, params: dict, n: int) -> tuple[str, FaultRule | None]:
        for i, (kind, ep) in enumerate(self._planned):
            if ep is None or ep == endpoint:
                del self._planned[i]
                return kind, None
        for rule in self._rules:
            if rule.times is not None and rule.hits >= rule.times:
                continue
            if rule.endpoint not in (None, endpoint):
                continue
            if rule.inst_id is not None and params.get("instId") != rule.inst_id:
                continue
            if rule.predicate is not None and not rule.predicate(params):
                continue
            rule.hits += 1
            return rule.kind, rule
        if self.fault_rate > 0 and endpoint in self.fault_endpoints:
            rng = random.Random(f"{self.fault_seed}:{endpoint}:{n}")
            if rng.random() < self.fault_rate:
                return rng.choice(self.fault_kinds), None
        return "", None

    def _handle(self, raw_path: str) -> tuple[int, str, bytes]:
        arrival = time.monotonic()
        parts = urlsplit(raw_path)
        path = parts.path
        params = dict(parse_qsl(parts.query))
        if not path.startswith("/api/v5/"):
            return 404, "text/plain", b"not found"
        endpoint = path[len("/api/v5/") :]
        with self._lock:
            n = self.stats.requests[endpoint]
            self.stats.requests[endpoint] += 1
            capped = self.request_cap is not None and self.stats.total_requests > self.request_cap
            limited = False
            if endpoint in self.limits:
                max_n, window, key_param = self.limits[endpoint]
                key = (endpoint, params.get(key_param, "") if key_param else "")
                q = self._arrivals[key]
                while q and q[0] <= arrival - window:
                    q.popleft()
                q.append(arrival)  # every arrival counts, rejected ones too
                limited = len(q) > max_n
            fault, select = ("", None) if limited else self._pick_fault(endpoint, params, n)
            if limited:
                self.stats.rate_limited[endpoint] += 1
            elif fault:
                self.stats.injected[fault] += 1
        if self.log_requests:
            with self._lock:
                self.log.append((endpoint, params, 429 if limited else 0, fault))
        if capped:
            return self._json(400, "51000", [], "Parameter error: simulator request cap reached")
        if limited:
            return self._json(429, "50011", [], "Too Many Requests")
        if fault == "429":
            return self._json(429, "50011", [], "Too Many Requests")
        if fault == "500":
            return self._json(500, "50099", [], "Internal Server Error")  # code unknown to ccxt -> ExchangeError
        if fault == "502":
            return 502, "text/html", b"<html><body><h1>502 Bad Gateway</h1></body></html>"
        if fault == "503":
            return self._json(503, "50001", [], "Service temporarily unavailable, please try again later")
        if fault == "timeout":
            self._stop.wait(self.timeout_sleep_s)
        if fault == "ignore_paging":  # a server (or proxy) that drops the paging parameters
            params = {k: v for k, v in params.items() if k not in ("after", "before")}
        status, ctype, body = self._route(endpoint, params)
        if fault in ROW_KINDS and status == 200 and endpoint in CANDLE_ENDPOINTS:
            answer = json.loads(body)
            answer["data"] = self._spoil_rows(fault, answer["data"], select)
            body = json.dumps(answer).encode()
        if fault == "timeout":
            return -1, ctype, body
        if fault == "truncated" and status == 200:
            return 200, "application/json", body[: max(1, len(body) // 2)]
        if fault == "empty" and status == 200:
            return self._json(200, "0", [])
        return status, ctype, body

    def _spoil_rows(self, kind: str, rows: list[list[str]], select: Callable[[int], bool] | None) -> list[list[str]]:
        """Candle rows (newest first) with the chosen confirmed rows spoiled as ``kind`` says."""
        out: list[list[str]] = []
        for row in rows:
            if row[8] != "1" or (select is not None and not select(int(row[0]))):
                out.append(row)
                continue
            r = list(row)
            if kind == "unconfirmed":
                r[8] = "0"
            elif kind == "misaligned":
                r[0] = str(int(r[0]) + self.misaligned_offset_ms)
            elif kind == "nan":
                r[4] = "NaN"
            elif kind == "ohlc_bad":
                r[2] = f"{float(r[3]) * 0.5:.10g}"  # high below low
            out.append(r)
            if kind == "duplicate_identical":
                out.append(list(r))
            elif kind == "duplicate_conflicting":
                twin = list(r)
                twin[5], twin[6], twin[7] = (f"{float(x) * 2:.4f}" for x in (r[5], r[6], r[7]))
                out.append(twin)
        return out

    def _int_param(self, params: dict, name: str) -> int | None:
        v = params.get(name)
        if v in (None, ""):
            return None
        return int(v)

    def _route(self, endpoint: str, params: dict) -> tuple[int, str, bytes]:
        try:
            if endpoint == "public/time":
                return self._json(200, "0", [{"ts": str(self.now)}])
            if endpoint == "public/instruments":
                inst_type = params.get("instType", "")
                if inst_type not in ("SPOT", "SWAP", "FUTURES", "OPTION", "MARGIN"):
                    return self._json(400, "51000", [], "Parameter instType error")
                rows = [self._instrument_row(i) for i in self.instruments.values() if i.inst_type == inst_type]
                if params.get("instId"):
                    rows = [r for r in rows if r["instId"] == params["instId"]]
                return self._json(200, "0", rows)
            if endpoint == "market/tickers":
                inst_type = params.get("instType", "")
                rows = [
                    self._ticker_row(i)
                    for i in self.instruments.values()
                    if i.inst_type == inst_type and i.state == "live"
                ]
                return self._json(200, "0", rows)
            if endpoint in ("market/candles", "market/history-candles"):
                inst = self.instruments.get(params.get("instId", ""))
                if inst is None:
                    return self._json(400, "51001", [], "Instrument ID does not exist")
                bar = params.get("bar", "1m")
                if bar not in BARS:
                    return self._json(400, "51000", [], "Parameter bar error")
                limit = self._int_param(params, "limit") or 100
                if limit < 1 or limit > 300:
                    return self._json(400, "51000", [], "Parameter limit error")
                oldest = None
                if endpoint == "market/candles":
                    oldest = self.live_edge(bar) - (CANDLES_KEEP - 1) * BARS[bar][0]
                rows = self._candles(
                    inst, bar, self._int_param(params, "before"), self._int_param(params, "after"), limit, oldest=oldest
                )
                with self._lock:
                    self.stats.candle_rows += sum(1 for r in rows if r[8] == "1")
                    self.stats.ok[endpoint] += 1
                return self._json(200, "0", rows)
            if endpoint == "public/funding-rate-history":
                inst = self.instruments.get(params.get("instId", ""))
                if inst is None or inst.inst_type != "SWAP":
                    return self._json(400, "51001", [], "Instrument ID does not exist")
                limit = self._int_param(params, "limit") or 100
                if limit < 1 or limit > 400:
                    return self._json(400, "51000", [], "Parameter limit error")
                rows = self._funding(inst, self._int_param(params, "before"), self._int_param(params, "after"), limit)
                return self._json(200, "0", rows)
        except ValueError:
            return self._json(400, "51000", [], "Parameter error")
        return self._json(404, "50000", [], f"unknown endpoint {endpoint}")

    def requests_for(self, endpoint: str, inst_id: str | None = None) -> list[dict]:
        """Parameters of the logged requests of ``endpoint`` (optionally for one instId)."""
        with self._lock:
            return [
                p for ep, p, _s, _f in self.log if ep == endpoint and (inst_id is None or p.get("instId") == inst_id)
            ]
