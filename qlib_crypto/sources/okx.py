"""OKX spot and USDT perpetual swaps through ccxt, with our own paging, rate limiting and retries.

Why not ``fetch_ohlcv``: ccxt drops the quote volume and the ``confirm`` flag, its ``paginate`` option does not
work for past ranges, and a 200 answer with truncated JSON silently becomes an empty list. This module calls
ccxt's raw implicit API methods (``publicGetMarketHistoryCandles`` ...) of ``ccxt.async_support.okx`` on a
private event loop thread, pages with ``limit=300`` over fixed windows of 300 bars (exact boundaries, no
duplicates, never a ``confirm == "0"`` bar), shares one :class:`SlidingWindowLimiter` per endpoint budget
between every concurrent request, and retries transient failures with exponential backoff and jitter.
See docs/collect.md.
"""
from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import difflib
import logging
import os
import random
import threading
import time
from dataclasses import dataclass
from typing import Any, Iterable, Iterator

import pandas as pd

from ..errors import ConfigError, ExchangeAPIError, SourceError
from ..timeframes import get_timeframe
from .base import BAR_COLUMNS, BarSource
from .ratelimit import SlidingWindowLimiter

log = logging.getLogger(__name__)

API_URL_ENV = "QLIB_CRYPTO_OKX_API_URL"
PAGE_LIMIT = 300  # rows per candle request (OKX maximum)
FUNDING_PAGE_LIMIT = 400
CANDLES_KEEP = 1440  # market/candles serves only the latest 1,440 bars
INST_TYPES = {"spot": "SPOT", "swap": "SWAP"}

# endpoint budget -> (requests, window seconds, request parameter that keys the budget or None = per IP)
OKX_LIMITS: dict[str, tuple[int, float, str | None]] = {
    "history-candles": (20, 2.0, None),
    "candles": (40, 2.0, None),
    "instruments": (20, 2.0, "instType"),
    "funding-rate-history": (10, 2.0, "instId"),
    "tickers": (20, 2.0, None),
    "time": (10, 2.0, None),
}
_METHODS = {
    "history-candles": "publicGetMarketHistoryCandles",
    "candles": "publicGetMarketCandles",
    "instruments": "publicGetPublicInstruments",
    "funding-rate-history": "publicGetPublicFundingRateHistory",
    "tickers": "publicGetMarketTickers",
    "time": "publicGetPublicTime",
}


@dataclass(frozen=True)
class RetryPolicy:
    """Bounded exponential backoff with jitter: attempt k waits uniform(0.5, 1) x min(cap, base x 2**k) s."""

    max_retries: int = 8
    base_s: float = 0.5
    cap_s: float = 8.0

    def delay(self, attempt: int, rng: random.Random) -> float:
        full = min(self.cap_s, self.base_s * (2 ** attempt))
        return full * (0.5 + 0.5 * rng.random())


class _InvalidPayload(Exception):
    """A 200 answer whose body is not OKX's JSON envelope (truncated or invalid JSON)."""


def _is_retryable(exc: BaseException) -> bool:
    import ccxt

    if isinstance(exc, (_InvalidPayload, ccxt.NetworkError, ccxt.BadResponse, asyncio.TimeoutError)):
        return True
    # OKX's HTTP 500 carries a JSON body with a code ccxt does not know: ccxt raises a plain ExchangeError.
    return type(exc) is ccxt.ExchangeError


def _float(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


class _LoopThread:
    """An asyncio event loop on a daemon thread; coroutines are submitted from any thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="okx-source-loop", daemon=True)
        self.thread.start()

    def submit(self, coro) -> concurrent.futures.Future:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def run(self, coro) -> Any:
        return self.submit(coro).result()

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()


class OkxSource(BarSource):
    """Confirmed OKX bars (spot and swaps), funding-rate history and instrument metadata.

    ``api_url`` (or env ``QLIB_CRYPTO_OKX_API_URL``) points ccxt at another server (a proxy, the loopback
    simulator). ``limits`` overrides endpoint budgets (``{"history-candles": (20, 2.0, None), ...}``),
    ``margin_s`` is the limiter's safety margin, ``page_concurrency`` the number of windows of one
    instrument fetched at once. No API key is needed or read. Use as a context manager or call :meth:`close`.
    """

    name = "okx"

    def __init__(
        self,
        *,
        api_url: str | None = None,
        timeout_s: float = 10.0,
        retry: RetryPolicy | None = None,
        limits: dict[str, tuple[int, float, str | None]] | None = None,
        margin_s: float = 0.01,
        page_concurrency: int = 4,
        use_candles_endpoint: bool = True,
        verify_attempts: int = 3,
    ) -> None:
        url = api_url or os.environ.get(API_URL_ENV) or None
        if url is not None:
            url = url.strip().rstrip("/")
            if not url.startswith(("http://", "https://")):
                raise ConfigError(f"bad OKX API URL {url!r}", hint="give a full base URL such as http://127.0.0.1:8080")
        if timeout_s <= 0:
            raise ConfigError(f"bad request timeout {timeout_s!r} s", hint="give a positive number of seconds")
        self.api_url = url
        self.timeout_s = float(timeout_s)
        self.retry = retry or RetryPolicy()
        self.limits = dict(OKX_LIMITS)
        self.limits.update(limits or {})
        self.margin_s = margin_s
        self.page_concurrency = max(1, int(page_concurrency))
        self.use_candles_endpoint = use_candles_endpoint
        self.verify_attempts = max(0, int(verify_attempts))
        self._limiters: dict[tuple[str, str], SlidingWindowLimiter] = {}
        self._lock = threading.Lock()
        self._loop: _LoopThread | None = None
        self._exchange: Any = None
        self._instruments: dict[str, dict[str, dict]] = {}  # instType -> instId -> raw row
        self._time_offset_ms: float | None = None
        self._rng = random.Random()
        self.stats: collections.Counter = collections.Counter()  # requests, retries, by failure kind

    # -- lifecycle ------------------------------------------------------------------------------------
    def _ensure_loop(self) -> _LoopThread:
        with self._lock:
            if self._loop is None:
                self._loop = _LoopThread()
                self._exchange = self._loop.run(self._make_exchange())
            return self._loop

    async def _make_exchange(self) -> Any:
        import ccxt.async_support as ccxt_async

        exchange = ccxt_async.okx({
            "enableRateLimit": False,  # our limiter models OKX's windows exactly
            "timeout": int(self.timeout_s * 1000),
            "options": {"fetchMarkets": {"types": ["spot", "swap"]}},
        })
        if self.api_url:
            exchange.urls["api"]["rest"] = self.api_url
        return exchange

    def close(self) -> None:
        """Close the HTTP session and stop the event loop thread."""
        with self._lock:
            loop, exchange = self._loop, self._exchange
            self._loop = self._exchange = None
        if loop is not None:
            try:
                loop.run(exchange.close())
            finally:
                loop.stop()

    def __enter__(self) -> "OkxSource":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- requests -------------------------------------------------------------------------------------
    def limiter(self, endpoint: str, key: str = "") -> SlidingWindowLimiter:
        """The limiter shared by every request of one endpoint budget."""
        n, window, key_param = self.limits[endpoint]
        k = (endpoint, key if key_param else "")
        with self._lock:
            lim = self._limiters.get(k)
            if lim is None:
                lim = self._limiters[k] = SlidingWindowLimiter(n, window, margin_s=self.margin_s, name="/".join(k))
            return lim

    async def _request(self, endpoint: str, params: dict[str, Any], what: str, parse: Any = None) -> Any:
        """One API call with rate limiting and bounded retries; returns OKX's ``data`` list (or ``parse(data)``).

        ``parse`` may raise ``_InvalidPayload``: a malformed answer is retried like invalid JSON.
        """
        import ccxt

        key_param = self.limits[endpoint][2]
        limiter = self.limiter(endpoint, str(params.get(key_param, "")) if key_param else "")
        method = getattr(self._exchange, _METHODS[endpoint])
        attempt = 0
        while True:
            try:
                async with limiter.slot():
                    self.stats["requests"] += 1
                    response = await method(dict(params))
                if not isinstance(response, dict) or not isinstance(response.get("data"), list):
                    raise _InvalidPayload(f"invalid JSON answer ({str(response)[:60]!r}...)")
                if str(response.get("code", "0")) not in ("0", ""):
                    raise ccxt.ExchangeError(f"okx code {response.get('code')}: {response.get('msg')}")
                return parse(response["data"]) if parse is not None else response["data"]
            except ccxt.BadSymbol as exc:
                raise ConfigError(f"OKX does not know the instrument in {what}: {exc}",
                                  hint="check the instId spelling, e.g. BTC-USDT or BTC-USDT-SWAP") from exc
            except Exception as exc:  # noqa: BLE001 - classified below
                if not _is_retryable(exc):
                    raise SourceError(f"OKX {endpoint} request for {what} failed: {type(exc).__name__}: {exc}",
                                      hint="this error is not transient; check the parameters") from exc
                self.stats[f"retry_{type(exc).__name__}"] += 1
                if attempt >= self.retry.max_retries:
                    raise ExchangeAPIError(
                        f"OKX {endpoint} failed for {what} after {attempt + 1} attempts: "
                        f"{type(exc).__name__}: {str(exc)[:200]}",
                        hint="what was fetched is stored; re-run the same command to resume",
                    ) from exc
                delay = self.retry.delay(attempt, self._rng)
                log.debug("OKX %s %s: %s, retry %d in %.2fs", endpoint, what, type(exc).__name__, attempt + 1, delay)
                attempt += 1
                await asyncio.sleep(delay)

    def _call(self, endpoint: str, params: dict[str, Any], what: str, parse: Any = None) -> Any:
        return self._ensure_loop().run(self._request(endpoint, params, what, parse))

    # -- time -----------------------------------------------------------------------------------------
    def server_time_ms(self) -> int:
        """OKX server time (asked once, then extrapolated with the local clock)."""
        if self._time_offset_ms is None:
            def parse(data: list) -> int:
                try:
                    return int(data[0]["ts"])
                except (IndexError, KeyError, TypeError, ValueError) as exc:
                    raise _InvalidPayload(f"unexpected OKX time answer {data!r}") from exc

            server = self._call("time", {}, "server time", parse)
            self._time_offset_ms = server - time.time() * 1000
        return int(time.time() * 1000 + self._time_offset_ms)

    # -- instruments ----------------------------------------------------------------------------------
    def instruments(self, inst_type: str) -> dict[str, dict]:
        """Raw ``public/instruments`` rows of ``SPOT`` or ``SWAP``, by instId (read once)."""
        inst_type = INST_TYPES.get(inst_type.lower(), inst_type.upper())
        if inst_type not in INST_TYPES.values():
            raise ConfigError(f"unsupported instrument type {inst_type!r}", hint="use spot or swap")
        with self._lock:
            cached = self._instruments.get(inst_type)
        if cached is not None:
            return cached
        rows = self._call("instruments", {"instType": inst_type}, f"{inst_type} instruments")
        for _ in range(self.verify_attempts if not rows else 0):  # an empty list may be a silent failure
            rows = self._call("instruments", {"instType": inst_type}, f"{inst_type} instruments")
            if rows:
                break
        table = {str(r["instId"]): r for r in rows if isinstance(r, dict) and r.get("instId")}
        with self._lock:
            self._instruments[inst_type] = table
        return table

    def _all_instruments(self) -> dict[str, dict]:
        out: dict[str, dict] = {}
        for t in INST_TYPES.values():
            out.update(self.instruments(t))
        return out

    def instrument(self, inst_id: str) -> dict:
        """The raw metadata row of one instId; ``ConfigError`` listing close matches when unknown."""
        inst_type = "SWAP" if inst_id.upper().endswith("-SWAP") else "SPOT"
        row = self.instruments(inst_type).get(inst_id)
        if row is None:
            known = sorted(self._all_instruments())
            close = difflib.get_close_matches(inst_id.upper(), known, n=5, cutoff=0.5)
            raise ConfigError(
                f"unknown OKX instrument {inst_id!r}",
                hint=(f"close matches: {', '.join(close)}" if close else "no close match")
                + "; instruments are OKX instIds such as BTC-USDT (spot) or BTC-USDT-SWAP (perpetual swap)",
            )
        return row

    def list_instruments(self, inst_type: str | None = None) -> list[str]:
        """Live instIds of one type (``spot``/``swap``) or of both."""
        types = [inst_type] if inst_type else list(INST_TYPES)
        out = []
        for t in types:
            out += [i for i, r in self.instruments(t).items() if r.get("state") == "live"]
        return sorted(out)

    def top_by_quote_volume(self, n: int, inst_type: str | None = None) -> list[str]:
        """The ``n`` live instruments with the largest 24h quote volume (``market/tickers``)."""
        if n < 1:
            raise ConfigError(f"--top must be >= 1, got {n!r}", hint="for example --top 20")
        types = [INST_TYPES.get(inst_type.lower(), inst_type)] if inst_type else list(INST_TYPES.values())
        ranked: list[tuple[float, str]] = []
        for t in types:
            live = {i for i, r in self.instruments(t).items() if r.get("state") == "live"}
            tickers = self._call("tickers", {"instType": t}, f"{t} tickers")
            for _ in range(self.verify_attempts if (live and not tickers) else 0):  # verify an empty answer
                tickers = self._call("tickers", {"instType": t}, f"{t} tickers")
                if tickers:
                    break
            for row in tickers:
                inst_id = row.get("instId")
                if inst_id not in live:
                    continue
                vol_ccy = _float(row.get("volCcy24h"))
                # spot: volCcy24h is in quote currency; swaps: in base currency -> times the last price
                quote = vol_ccy if t == "SPOT" else vol_ccy * _float(row.get("last"))
                if quote == quote:
                    ranked.append((quote, inst_id))
        ranked.sort(key=lambda x: (-x[0], x[1]))
        return [i for _, i in ranked[:n]]

    def resolve_universe(
        self, instruments: Iterable[str] | None = None, inst_type: str | None = None, top: int | None = None
    ) -> list[str]:
        """Explicit instIds (checked), else the top N by 24h quote volume, else all live of ``inst_type``."""
        if instruments:
            names = [s.strip() for s in instruments if s and s.strip()]
            for name in names:
                self.instrument(name)
            return list(dict.fromkeys(names))
        if top is not None:
            return self.top_by_quote_volume(top, inst_type)
        if inst_type:
            return self.list_instruments(inst_type)
        raise ConfigError("no instruments selected", hint="give --instruments BTC-USDT,ETH-USDT-SWAP, --type spot|swap, or --top N")

    def instrument_meta(self) -> pd.DataFrame | None:
        """Metadata of every loaded instrument (tick size, lot size, min size, contract value, listing...)."""
        rows = []
        for inst_type in INST_TYPES.values():
            for inst_id, r in self.instruments(inst_type).items():
                base, quote = r.get("baseCcy") or "", r.get("quoteCcy") or ""
                uly = r.get("uly") or r.get("instFamily") or ""
                if (not base or not quote) and "-" in uly:
                    base, quote = uly.split("-")[:2]
                rows.append({
                    "instId": inst_id, "instType": r.get("instType", inst_type), "baseCcy": base, "quoteCcy": quote,
                    "settleCcy": r.get("settleCcy") or "", "ctVal": r.get("ctVal"), "ctMult": r.get("ctMult"),
                    "tickSz": r.get("tickSz"), "lotSz": r.get("lotSz"), "minSz": r.get("minSz"),
                    "maxMktSz": r.get("maxMktSz"), "listTime": r.get("listTime"), "state": r.get("state") or "",
                })
        return pd.DataFrame(rows) if rows else None

    def list_time_ms(self, inst_id: str) -> int | None:
        value = self.instrument(inst_id).get("listTime")
        try:
            return int(value) if value not in (None, "") else None
        except ValueError:
            return None

    # -- bars -----------------------------------------------------------------------------------------
    def _parse_candles(self, rows: list, is_swap: bool, lo: int, hi: int, step: int) -> dict[int, list[float]]:
        """Confirmed rows with lo <= ts < hi as {ts: [o,h,l,c,volume,amount]}."""
        out: dict[int, list[float]] = {}
        for row in rows:
            if not isinstance(row, (list, tuple)) or len(row) < 9:
                raise _InvalidPayload(f"unexpected candle row {row!r}")
            if str(row[8]) != "1":  # the bar still forming: never final
                continue
            ts = int(row[0])
            if ts < lo or ts >= hi or (ts - lo) % step:
                continue
            volume = _float(row[6] if is_swap else row[5])  # base currency for both
            out[ts] = [_float(row[1]), _float(row[2]), _float(row[3]), _float(row[4]), volume, _float(row[7])]
        return out

    async def _fetch_window(self, inst_id: str, is_swap: bool, bar: str, step: int, lo: int, hi: int,
                            expected: int, endpoint: str) -> dict[int, list[float]]:
        """All confirmed bars of [lo, hi) (at most 300 slots); short answers are verified by re-asking."""
        params = {"instId": inst_id, "bar": bar, "before": str(lo - 1), "after": str(hi), "limit": str(PAGE_LIMIT)}
        what = f"{inst_id} {bar} {_iso(lo)}..{_iso(hi)}"

        def parse(rows: list) -> dict[int, list[float]]:
            return self._parse_candles(rows, is_swap, lo, hi, step)

        got = await self._request(endpoint, params, what, parse)
        if len(got) >= expected:
            return got
        # Fewer rows than slots: a gap on the venue, or an answer silently cut short. Ask again until two
        # consecutive non-empty answers agree; an empty answer is re-asked every time (bounded by
        # verify_attempts). Keep the union: a bar never disappears from history.
        merged = dict(got)
        previous = set(got)
        for _ in range(self.verify_attempts):
            self.stats["verify_requests"] += 1
            again = await self._request(endpoint, params, what, parse)
            merged.update(again)
            if len(merged) >= expected or (again and set(again) == previous):
                break
            previous = set(again)
        return merged

    def fetch_bars(self, instrument: str, timeframe: str, start_ms: int, end_ms: int) -> Iterator[pd.DataFrame]:
        """Yield confirmed bars of ``[start_ms, end_ms)`` ascending, in chunks of up to 300 bars.

        Each chunk carries ``chunk.attrs["covered"] = (lo, hi)``: the range it completes (bars the exchange
        does not have there are absent, not missing). Before the listing time nothing is asked.
        """
        tf = get_timeframe(timeframe)
        step = tf.ms
        row = self.instrument(instrument)
        is_swap = row.get("instType") == "SWAP" or instrument.endswith("-SWAP")
        loop = self._ensure_loop()
        lo = -(-int(start_ms) // step) * step
        end_ms = int(end_ms)
        list_time = self.list_time_ms(instrument)
        if list_time is not None:
            first = -(-list_time // step) * step
            if first > lo:
                lo = min(first, max(lo, end_ms))
                if lo > start_ms:
                    yield _chunk({}, (int(start_ms), lo))  # before the listing: nothing to ask
        edge = self.server_time_ms() // step * step  # open time of the bar still forming
        hi = min(end_ms, edge + step)
        if lo >= hi:
            return
        windows = []
        w = lo
        while w < hi:
            windows.append((w, min(w + PAGE_LIMIT * step, hi)))
            w = windows[-1][1]
        candles_from = edge - (CANDLES_KEEP - 40) * step

        def submit(wlo: int, whi: int) -> concurrent.futures.Future:
            expected = max(0, (min(whi, edge) - wlo + step - 1) // step)
            endpoint = "candles" if (self.use_candles_endpoint and wlo >= candles_from) else "history-candles"
            return loop.submit(self._fetch_window(instrument, is_swap, tf.okx_bar, step, wlo, whi, expected, endpoint))

        pending: collections.deque = collections.deque()
        queue = collections.deque(windows)
        try:
            while queue or pending:
                while queue and len(pending) < self.page_concurrency:
                    wlo, whi = queue.popleft()
                    pending.append((wlo, whi, submit(wlo, whi)))
                wlo, whi, fut = pending.popleft()
                got = fut.result()
                if whi > edge - step:  # the live edge: complete only up to the newest confirmed bar
                    covered_hi = max(got) + step if got else wlo
                else:
                    covered_hi = whi
                yield _chunk(got, (wlo, covered_hi))
        finally:
            for _lo, _hi, fut in pending:
                fut.cancel()

    # -- funding --------------------------------------------------------------------------------------
    async def _funding(self, inst_id: str, start_ms: int, end_ms: int) -> dict[int, tuple[float, float]]:
        out: dict[int, tuple[float, float]] = {}
        after = end_ms
        while after > start_ms:
            params = {"instId": inst_id, "before": str(start_ms - 1), "after": str(after), "limit": str(FUNDING_PAGE_LIMIT)}
            what = f"{inst_id} funding {_iso(start_ms)}..{_iso(after)}"
            data = await self._request("funding-rate-history", params, what)
            if len(data) < FUNDING_PAGE_LIMIT:  # maybe the end of the kept history: verify once
                again = await self._request("funding-rate-history", params, what)
                if len(again) > len(data):
                    data = again
            page = {}
            for r in data:
                ts = int(r["fundingTime"])
                if start_ms <= ts < end_ms:
                    page[ts] = (_float(r.get("fundingRate")), _float(r.get("realizedRate")))
            out.update(page)
            if len(data) < FUNDING_PAGE_LIMIT or not page:
                break
            after = min(page)
        return out

    def fetch_funding(self, instrument: str, start_ms: int, end_ms: int) -> pd.DataFrame | None:
        """Funding-rate history of a swap in ``[start_ms, end_ms)`` (OKX keeps about 3 months); None for spot."""
        row = self.instrument(instrument)
        if row.get("instType") != "SWAP":
            return None
        got = self._ensure_loop().run(self._funding(instrument, int(start_ms), int(end_ms)))
        times = sorted(got)
        return pd.DataFrame({
            "funding_time": pd.to_datetime(times, unit="ms", utc=True),
            "funding_rate": [got[t][0] for t in times],
            "realized_rate": [got[t][1] for t in times],
        })


def _iso(ms: int) -> str:
    return pd.Timestamp(int(ms), unit="ms", tz="UTC").strftime("%Y-%m-%dT%H:%M")


def _chunk(got: dict[int, list[float]], covered: tuple[int, int]) -> pd.DataFrame:
    times = sorted(got)
    frame = pd.DataFrame([got[t] for t in times], columns=BAR_COLUMNS, dtype="float64")
    frame.insert(0, "datetime", pd.to_datetime(times, unit="ms", utc=True))
    frame.attrs["covered"] = (int(covered[0]), int(covered[1]))
    return frame
