"""OKX spot and USDT perpetual swaps through ccxt, with our own paging, rate limiting and retries.

Why not ``fetch_ohlcv``: ccxt drops the quote volume and the ``confirm`` flag, its ``paginate`` option does not
work for past ranges, and a 200 answer with truncated JSON silently becomes an empty list. This module calls
ccxt's raw implicit API methods (``publicGetMarketHistoryCandles`` ...) of ``ccxt.async_support.okx`` on a
private event loop thread, pages with ``limit=300`` over fixed windows of 300 bars (exact boundaries, no
duplicates, never a ``confirm == "0"`` bar), shares one :class:`SlidingWindowLimiter` per endpoint budget
between every concurrent request, and retries transient failures with exponential backoff and jitter.

Hostile answers are not trusted: a past bar still flagged ``confirm == "0"``, a misaligned timestamp, or two
different rows for one timestamp are rejected with a reason (the collector quarantines them and leaves their
bar slots uncovered); a page that does not advance the paging cursor is asked again a bounded number of times,
then :class:`~qlib_crypto.errors.PagingError`; a host that cannot be reached at all fails fast with
:class:`~qlib_crypto.errors.ExchangeUnreachable`. Credentials in the API URL are sent as HTTP basic auth and
masked (``user:***@host``) in every message. See docs/collect.md.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import concurrent.futures
import contextlib
import difflib
import logging
import math
import os
import random
import re
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator
from urllib.parse import unquote, urlsplit, urlunsplit

import pandas as pd

from ..errors import ConfigError, ExchangeAPIError, ExchangeUnreachable, PagingError, SourceError
from ..timeframes import get_timeframe
from .base import BAR_COLUMNS, BarSource
from .ratelimit import SlidingWindowLimiter

log = logging.getLogger(__name__)

API_URL_ENV = "QLIB_CRYPTO_OKX_API_URL"
PAGE_LIMIT = 300  # rows per candle request (OKX maximum)
FUNDING_PAGE_LIMIT = 400
CANDLES_KEEP = 1440  # market/candles serves only the latest 1,440 bars
INST_TYPES = {"spot": "SPOT", "swap": "SWAP"}
DEFAULT_HOST = "www.okx.com"
PAGING_ATTEMPTS = 3  # answers that do not advance the paging cursor before PagingError
UNREACHABLE_ATTEMPTS = 3  # connection failures before the first answer from the host -> ExchangeUnreachable
# reasons a candle row is rejected (quarantined by the collector; its bar slot stays uncovered)
REASON_UNCONFIRMED = "unconfirmed_past_bar"
REASON_MISALIGNED = "misaligned_timestamp"
REASON_DUPLICATE = "duplicate_conflicting"

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
        full = min(self.cap_s, self.base_s * (2**attempt))
        return full * (0.5 + 0.5 * rng.random())


MAX_TIMEOUT_S = 3600.0


def check_timeout(value: Any, *, what: str = "request timeout") -> float:
    """A finite number of seconds in (0, 3600]; ``ConfigError`` naming the value otherwise."""
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        seconds = float("nan")
    if not (math.isfinite(seconds) and 0 < seconds <= MAX_TIMEOUT_S):
        raise ConfigError(
            f"bad {what} {value!r} s",
            hint=f"give a finite number of seconds above 0 and at most {MAX_TIMEOUT_S:g}, e.g. 10",
        )
    return seconds


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


# -- credentials in URLs ---------------------------------------------------------------------------------
_USERINFO_RE = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<user>[^/@:\s]*)(?::(?P<password>[^/@\s]*))?@")
_secrets: set[str] = set()  # every secret an OkxSource was given (password, token, basic-auth value)
_secrets_lock = threading.Lock()


def mask_url(url: str) -> str:
    """``http://user:S3CRET@host`` -> ``http://user:***@host``; a bare token ``http://T@host`` -> ``http://***@host``."""

    def repl(m: re.Match) -> str:
        if m.group("password") is not None:
            return f"{m.group('scheme')}{m.group('user')}:***@"
        return f"{m.group('scheme')}***@"

    return _USERINFO_RE.sub(repl, str(url))


def register_secret(value: str | None) -> None:
    """Mask ``value`` (and its URL-encoded form) in every message :func:`mask_secrets` sees."""
    from urllib.parse import quote

    if value and len(value) >= 3:
        with _secrets_lock:
            _secrets.update({value, quote(value, safe="")})


def mask_secrets(text: Any) -> str:
    """``text`` with credentials in URLs and every registered secret replaced by ``***``."""
    out = mask_url(str(text))
    with _secrets_lock:
        secrets = sorted(_secrets, key=lambda v: (-len(v), v))  # longest first, fixed order
    for secret in secrets:
        if secret in out:
            out = out.replace(secret, "***")
    return out


def split_credentials(url: str) -> tuple[str, str | None, str | None]:
    """(URL without user info, user, password); user and password are URL-decoded, None when absent."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url, None, None
    userinfo, host = parts.netloc.rsplit("@", 1)
    user, sep, password = userinfo.partition(":")
    clean = urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))
    return clean, unquote(user), (unquote(password) if sep else None)


class SecretFilter(logging.Filter):
    """A logging filter that masks credentials in the message and the formatted traceback of every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a broken format string: leave it to the handler
            return True
        masked = mask_secrets(message)
        if masked != message:
            record.msg, record.args = masked, ()
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = mask_secrets(record.exc_text)
        if record.stack_info:
            record.stack_info = mask_secrets(record.stack_info)
        return True


@contextlib.contextmanager
def masked_logging() -> Iterator[None]:
    """Mask credentials in every log record handled by the root logger's handlers during the block."""
    flt = SecretFilter()
    handlers = list(logging.getLogger().handlers)
    for handler in handlers:
        handler.addFilter(flt)
    try:
        yield
    finally:
        for handler in handlers:
            handler.removeFilter(flt)


def _is_unreachable(exc: BaseException) -> bool:
    """A failure to open a connection at all (refused, unknown host, no route), as opposed to a bad answer."""
    import aiohttp

    cause = exc.__cause__ or exc.__context__
    return isinstance(cause, (aiohttp.ClientConnectorError, socket.gaierror))


def _unreachable_reason(exc: BaseException) -> str:
    import aiohttp

    cause = exc.__cause__ or exc.__context__
    if isinstance(cause, aiohttp.ClientSSLError):
        return "TLS/SSL handshake failed"
    os_error = getattr(cause, "os_error", None) or (cause if isinstance(cause, OSError) else None)
    if (
        isinstance(os_error, socket.gaierror)
        or isinstance(cause, socket.gaierror)
        or type(cause).__name__ == "ClientConnectorDNSError"
    ):
        return "unknown host name (DNS lookup failed)"
    errno = getattr(os_error, "errno", None)
    if isinstance(errno, int) and errno > 0:
        return os.strerror(errno).lower()
    return "connection failed"


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
        self._auth_header: str | None = None
        self.host = DEFAULT_HOST
        if url is not None:
            url = url.strip().rstrip("/")
            if not url.startswith(("http://", "https://")):
                raise ConfigError(
                    f"bad OKX API URL {mask_url(url)!r}", hint="give a full base URL such as http://127.0.0.1:8080"
                )
            url, user, password = split_credentials(url)
            if user is not None:  # sent as HTTP basic auth, never part of a URL ccxt could print
                token = f"{user}:{password}" if password is not None else user
                self._auth_header = "Basic " + base64.b64encode(token.encode()).decode()
                for secret in (password, self._auth_header.split(" ", 1)[1]):
                    register_secret(secret)
                if password is None and len(user) >= 8:  # a bare token (short user names are not secrets)
                    register_secret(user)
            self.host = urlsplit(url).netloc or url
        timeout_s = check_timeout(timeout_s)
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
        self._reached = False  # True once the host answered anything (even an error status)
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

        exchange = ccxt_async.okx(
            {
                "enableRateLimit": False,  # our limiter models OKX's windows exactly
                "timeout": int(self.timeout_s * 1000),
                "options": {"fetchMarkets": {"types": ["spot", "swap"]}},
            }
        )
        if self.api_url:
            exchange.urls["api"]["rest"] = self.api_url
        if self._auth_header:
            exchange.headers = {**(exchange.headers or {}), "Authorization": self._auth_header}
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
                self._reached = True
                if not isinstance(response, dict) or not isinstance(response.get("data"), list):
                    raise _InvalidPayload(f"invalid JSON answer ({str(response)[:60]!r}...)")
                if str(response.get("code", "0")) not in ("0", ""):
                    raise ccxt.ExchangeError(f"okx code {response.get('code')}: {response.get('msg')}")
                return parse(response["data"]) if parse is not None else response["data"]
            except ccxt.BadSymbol as exc:
                raise ConfigError(
                    f"OKX does not know the instrument in {what}: {mask_secrets(exc)}",
                    hint="check the instId spelling, e.g. BTC-USDT or BTC-USDT-SWAP",
                ) from exc
            except Exception as exc:  # noqa: BLE001 - classified below
                unreachable = _is_unreachable(exc)
                if not unreachable and not isinstance(exc, (ccxt.RequestTimeout, asyncio.TimeoutError)):
                    self._reached = True  # the host answered, even if badly
                if not _is_retryable(exc):
                    raise SourceError(
                        f"OKX {endpoint} request for {what} failed: {type(exc).__name__}: {mask_secrets(exc)}",
                        hint="this error is not transient; check the parameters",
                    ) from exc
                self.stats[f"retry_{type(exc).__name__}"] += 1
                if unreachable and not self._reached:
                    # Never reached the host: no network, wrong host or port. Do not spend the whole retry
                    # budget (about 35 s) on it: a few quick attempts, then one clear line.
                    self.stats["unreachable"] += 1
                    if attempt + 1 >= min(self.retry.max_retries + 1, UNREACHABLE_ATTEMPTS):
                        raise ExchangeUnreachable(
                            f"the OKX API host {self.host} cannot be reached: {_unreachable_reason(exc)} "
                            f"({attempt + 1} attempt{'s' if attempt else ''}, nothing was fetched)",
                            hint=f"check the network connection, or --api-url / env {API_URL_ENV}",
                        ) from exc
                elif attempt >= self.retry.max_retries:
                    raise ExchangeAPIError(
                        f"OKX {endpoint} failed for {what} after {attempt + 1} attempts: "
                        f"{type(exc).__name__}: {mask_secrets(exc)[:200]}",
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
        raise ConfigError(
            "no instruments selected", hint="give --instruments BTC-USDT,ETH-USDT-SWAP, --type spot|swap, or --top N"
        )

    def instrument_meta(self) -> pd.DataFrame | None:
        """Metadata of every loaded instrument (tick size, lot size, min size, contract value, listing...)."""
        rows = []
        for inst_type in INST_TYPES.values():
            for inst_id, r in self.instruments(inst_type).items():
                base, quote = r.get("baseCcy") or "", r.get("quoteCcy") or ""
                uly = r.get("uly") or r.get("instFamily") or ""
                if (not base or not quote) and "-" in uly:
                    base, quote = uly.split("-")[:2]
                rows.append(
                    {
                        "instId": inst_id,
                        "instType": r.get("instType", inst_type),
                        "baseCcy": base,
                        "quoteCcy": quote,
                        "settleCcy": r.get("settleCcy") or "",
                        "ctVal": r.get("ctVal"),
                        "ctMult": r.get("ctMult"),
                        "tickSz": r.get("tickSz"),
                        "lotSz": r.get("lotSz"),
                        "minSz": r.get("minSz"),
                        "maxMktSz": r.get("maxMktSz"),
                        "listTime": r.get("listTime"),
                        "state": r.get("state") or "",
                    }
                )
        return pd.DataFrame(rows) if rows else None

    def list_time_ms(self, inst_id: str) -> int | None:
        value = self.instrument(inst_id).get("listTime")
        try:
            return int(value) if value not in (None, "") else None
        except ValueError:
            return None

    # -- bars -----------------------------------------------------------------------------------------
    def _parse_candles(
        self, rows: list, is_swap: bool, lo: int, hi: int, step: int, forming_from: int | None = None
    ) -> "_CandlePage":
        """Classify the rows of one answer for the window [lo, hi).

        Rows outside the window are counted, not kept. The bar still forming (``confirm != "1"`` and open
        time >= ``forming_from``, the live edge) is skipped: it is normal and never final. Other rows are
        kept with a reason ("" = good): an unconfirmed bar in the past (``unconfirmed_past_bar``) and a time
        that is not on the bar grid (``misaligned_timestamp``) are rejected.
        """
        page = _CandlePage()
        for row in rows:
            if not isinstance(row, (list, tuple)) or len(row) < 9:
                raise _InvalidPayload(f"unexpected candle row {row!r}")
            try:
                ts = int(row[0])
            except (TypeError, ValueError) as exc:
                raise _InvalidPayload(f"unexpected candle time in row {row!r}") from exc
            page.n_rows += 1
            if ts < lo or ts >= hi:
                continue
            page.inside += 1
            vol_field = row[6] if is_swap else row[5]  # base currency for both
            key = (str(row[1]), str(row[2]), str(row[3]), str(row[4]), str(vol_field), str(row[7]))
            values = [_float(row[1]), _float(row[2]), _float(row[3]), _float(row[4]), _float(vol_field), _float(row[7])]
            if (ts - lo) % step:
                reason = REASON_MISALIGNED
            elif str(row[8]) != "1":
                if forming_from is None or ts >= forming_from:
                    page.forming += 1  # the bar still forming at the live edge
                    continue
                reason = REASON_UNCONFIRMED
            else:
                reason = ""
            page.rows.append((ts, key, values, reason))
        return page

    async def _ask_page(self, endpoint: str, params: dict[str, Any], what: str, parse: Any, stalled: Any) -> Any:
        """One page; an answer that does not advance the paging cursor (``stalled(page)``) is asked again,
        at most :data:`PAGING_ATTEMPTS` times in all, then :class:`PagingError`."""
        for attempt in range(PAGING_ATTEMPTS):
            page = await self._request(endpoint, params, what, parse)
            if not stalled(page):
                return page
            self.stats["paging_stalls"] += 1
            log.debug(
                "OKX %s %s: the answer holds no row inside the asked interval (attempt %d)", endpoint, what, attempt + 1
            )
            if attempt + 1 < PAGING_ATTEMPTS:
                await asyncio.sleep(self.retry.delay(attempt, self._rng))
        raise PagingError(
            f"OKX {endpoint} for {what}: the page does not advance the paging cursor ({PAGING_ATTEMPTS} answers in "
            f"a row hold no row inside the asked interval before={params.get('before')} after={params.get('after')})",
            hint="the server ignores the paging parameters: use the real OKX API or a proxy that passes query "
            "parameters through (--api-url), then re-run the same command to resume",
        )

    async def _fetch_window(
        self,
        inst_id: str,
        is_swap: bool,
        bar: str,
        step: int,
        lo: int,
        hi: int,
        expected: int,
        endpoint: str,
        forming_from: int | None = None,
    ) -> "_Window":
        """All confirmed bars of [lo, hi) (at most 300 slots); short answers are verified by re-asking.

        Rows the exchange answered badly (see :meth:`_parse_candles`, and every version of a timestamp
        answered with different values) come back in ``rejected``; their bar slots are ``holes`` unless a good
        bar fills the slot.
        """
        params = {"instId": inst_id, "bar": bar, "before": str(lo - 1), "after": str(hi), "limit": str(PAGE_LIMIT)}
        what = f"{inst_id} {bar} {_iso(lo)}..{_iso(hi)}"

        def parse(rows: list) -> _CandlePage:
            return self._parse_candles(rows, is_swap, lo, hi, step, forming_from)

        def stalled(page: _CandlePage) -> bool:  # rows, but none inside the window: paging ignored
            return page.n_rows > 0 and page.inside == 0

        rows = _WindowRows(step)
        previous = rows.add(await self._ask_page(endpoint, params, what, parse, stalled))
        if rows.n_bars() >= expected:
            return rows.result()
        # Fewer rows than slots: a gap on the venue, or an answer silently cut short. Ask again until two
        # consecutive non-empty answers agree; an empty answer is re-asked every time (bounded by
        # verify_attempts). Keep the union: a bar never disappears from history.
        for _ in range(self.verify_attempts):
            self.stats["verify_requests"] += 1
            again = rows.add(await self._ask_page(endpoint, params, what, parse, stalled))
            if rows.n_bars() >= expected or (again and again == previous):
                break
            previous = again
        return rows.result()

    def fetch_bars(self, instrument: str, timeframe: str, start_ms: int, end_ms: int) -> Iterator[pd.DataFrame]:
        """Yield confirmed bars of ``[start_ms, end_ms)`` ascending, in chunks of up to 300 bars.

        Each chunk carries ``chunk.attrs["covered"] = (lo, hi)``: the range it completes (bars the exchange
        does not have there are absent, not missing), ``chunk.attrs["holes"]``: open times of bar slots inside
        it that are *not* complete (a row there was rejected), and ``chunk.attrs["rejected"]``: the rejected
        rows as ``(ts, (open, high, low, close, volume, amount), reason)``. Before the listing time nothing is
        asked.
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
        # An unconfirmed bar at or after this open time is the bar still forming (one bar of tolerance for the
        # exchange confirming a just-closed bar late); an unconfirmed bar before it is a bad answer.
        forming_from = edge - step

        def submit(wlo: int, whi: int) -> concurrent.futures.Future:
            expected = max(0, (min(whi, edge) - wlo + step - 1) // step)
            endpoint = "candles" if (self.use_candles_endpoint and wlo >= candles_from) else "history-candles"
            return loop.submit(
                self._fetch_window(instrument, is_swap, tf.okx_bar, step, wlo, whi, expected, endpoint, forming_from)
            )

        pending: collections.deque = collections.deque()
        queue = collections.deque(windows)
        try:
            while queue or pending:
                while queue and len(pending) < self.page_concurrency:
                    wlo, whi = queue.popleft()
                    pending.append((wlo, whi, submit(wlo, whi)))
                wlo, whi, fut = pending.popleft()
                window = fut.result()
                got = window.bars
                if whi > edge - step:  # the live edge: complete only up to the newest confirmed bar
                    covered_hi = max(got) + step if got else wlo
                else:
                    covered_hi = whi
                yield _chunk(got, (wlo, covered_hi), window.rejected, window.holes)
        finally:
            for _lo, _hi, fut in pending:
                fut.cancel()

    # -- funding --------------------------------------------------------------------------------------
    async def _funding(self, inst_id: str, start_ms: int, end_ms: int) -> dict[int, tuple[float, float]]:
        """Pages backwards from ``end_ms``; each page must hold rows older than the cursor (else PagingError)."""
        out: dict[int, tuple[float, float]] = {}
        after = end_ms
        while after > start_ms:
            params = {
                "instId": inst_id,
                "before": str(start_ms - 1),
                "after": str(after),
                "limit": str(FUNDING_PAGE_LIMIT),
            }
            what = f"{inst_id} funding {_iso(start_ms)}..{_iso(after)}"

            def stalled(rows: list, cursor: int = after) -> bool:  # rows, but none older than the cursor
                return bool(rows) and not any(start_ms <= ts < cursor for ts, _r, _z in rows)

            data = await self._ask_page("funding-rate-history", params, what, _parse_funding, stalled)
            if len(data) < FUNDING_PAGE_LIMIT:  # maybe the end of the kept history: verify once
                again = await self._ask_page("funding-rate-history", params, what, _parse_funding, stalled)
                if len(again) > len(data):
                    data = again
            page = {ts: (rate, realized) for ts, rate, realized in data if start_ms <= ts < after}
            out.update(page)
            if len(data) < FUNDING_PAGE_LIMIT or not page:
                break
            after = min(page)  # strictly older than the previous cursor: every page advances
        return out

    def fetch_funding(self, instrument: str, start_ms: int, end_ms: int) -> pd.DataFrame | None:
        """Funding-rate history of a swap in ``[start_ms, end_ms)`` (OKX keeps about 3 months); None for spot."""
        row = self.instrument(instrument)
        if row.get("instType") != "SWAP":
            return None
        got = self._ensure_loop().run(self._funding(instrument, int(start_ms), int(end_ms)))
        times = sorted(got)
        return pd.DataFrame(
            {
                "funding_time": pd.to_datetime(times, unit="ms", utc=True),
                "funding_rate": [got[t][0] for t in times],
                "realized_rate": [got[t][1] for t in times],
            }
        )


def _iso(ms: int) -> str:
    return pd.Timestamp(int(ms), unit="ms", tz="UTC").strftime("%Y-%m-%dT%H:%M")


def _parse_funding(data: list) -> list[tuple[int, float, float]]:
    rows = []
    for r in data:
        try:
            ts = int(r["fundingTime"])
        except (KeyError, TypeError, ValueError) as exc:
            raise _InvalidPayload(f"unexpected funding row {r!r}") from exc
        rows.append((ts, _float(r.get("fundingRate")), _float(r.get("realizedRate"))))
    return rows


@dataclass
class _CandlePage:
    """One candle answer, classified: ``rows`` (ts, raw values key, values, reason or "") inside the window."""

    rows: list[tuple[int, tuple[str, ...], list[float], str]] = field(default_factory=list)
    n_rows: int = 0  # every row of the answer
    inside: int = 0  # rows inside the asked window
    forming: int = 0  # the bar still forming (skipped)


@dataclass
class _Window:
    bars: dict[int, list[float]]
    rejected: tuple[tuple[int, tuple[float, ...], str], ...]
    holes: tuple[int, ...]


class _WindowRows:
    """The rows of one window over all its answers: the versions answered for each time, and rejected rows.

    Identical repeats of a row collapse to one; a time answered with different values (in one answer or
    across answers) is ambiguous: every version is rejected as ``duplicate_conflicting``.
    """

    def __init__(self, step: int) -> None:
        self.step = step
        self.versions: dict[int, dict[tuple[str, ...], list[float]]] = {}
        self.rejected: dict[tuple[int, str, tuple[str, ...]], list[float]] = {}

    def add(self, page: _CandlePage) -> set[int]:
        """Add one answer; returns the open times of its good rows."""
        good: set[int] = set()
        for ts, key, values, reason in page.rows:
            if reason:
                self.rejected.setdefault((ts, reason, key), values)
            else:
                self.versions.setdefault(ts, {}).setdefault(key, values)
                good.add(ts)
        return good

    def n_bars(self) -> int:
        return sum(1 for v in self.versions.values() if len(v) == 1)

    def result(self) -> _Window:
        bars = {ts: next(iter(v.values())) for ts, v in self.versions.items() if len(v) == 1}
        rejected = [(ts, reason, key, values) for (ts, reason, key), values in self.rejected.items()]
        for ts, versions in self.versions.items():
            if len(versions) > 1:
                rejected += [(ts, REASON_DUPLICATE, key, values) for key, values in versions.items()]
        rejected.sort(key=lambda r: (r[0], r[1], r[2]))  # fixed order, whatever the answer order
        holes = sorted({ts - ts % self.step for ts, *_ in rejected} - set(bars))
        return _Window(bars, tuple((ts, tuple(values), reason) for ts, reason, _k, values in rejected), tuple(holes))


def _chunk(
    got: dict[int, list[float]],
    covered: tuple[int, int],
    rejected: tuple[tuple[int, tuple[float, ...], str], ...] = (),
    holes: tuple[int, ...] = (),
) -> pd.DataFrame:
    times = sorted(got)
    frame = pd.DataFrame([got[t] for t in times], columns=BAR_COLUMNS, dtype="float64")
    frame.insert(0, "datetime", pd.to_datetime(times, unit="ms", utc=True))
    frame.attrs["covered"] = (int(covered[0]), int(covered[1]))
    if rejected:
        frame.attrs["rejected"] = tuple(rejected)
    if holes:
        frame.attrs["holes"] = tuple(int(h) for h in holes)
    return frame
