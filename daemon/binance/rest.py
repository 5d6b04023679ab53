"""Binance REST, one place: the HMAC signature of SIGNED requests (:func:`sign`, also what the local venue
checks), the signed spot client (:class:`BinanceRestClient`, what the testnet broker talks through) and the
klines history read shared by the daemon's tools (:func:`fetch_klines_rest`).

``BinanceRestClient`` (aiohttp) signs requests as Binance's SIGNED endpoints require (HMAC-SHA256 of the
query string / form body with the secret, ``X-MBX-APIKEY`` header, ``timestamp`` + ``recvWindow``), keeps an
offset to the venue's clock (``GET /api/v3/time``; re-synced once on -1021), and retries: HTTP 429/418 after
the ``Retry-After`` the venue asked for, 5xx and connection errors with exponential backoff. An order POST whose
outcome is unknown (5xx, -1007, timeout, reset) is NEVER simply resent: the order is first looked up by its
client order id (``GET /api/v3/order?origClientOrderId=``) and resent (same id) only if the venue does not have
it. Client order ids are deterministic (the strategy's), so a resend can never double an order the venue has.

Secrets: the API secret lives only in the client object (never in reprs, logs or errors).
"""
from __future__ import annotations

import asyncio
import hashlib
import hmac
import time
from collections.abc import Awaitable, Callable, Mapping
from decimal import Decimal
from typing import Any
from urllib.parse import urlencode

import orjson
import structlog

from engines.data import Klines

__all__ = ["sign", "BinanceRestClient", "BinanceApiError", "OutcomeUnknown", "AUTH_ERROR_CODES", "fmt_step",
           "fetch_klines_rest"]

log = structlog.get_logger(__name__)

AUTH_ERROR_CODES = {-1022: "bad signature (wrong API secret?)", -2014: "API key missing or malformed",
                    -2015: "API key unknown to the venue, or it lacks TRADE permission / IP whitelist",
                    -1002: "not authorized (this venue has no order API)"}


def sign(secret: str, payload: str) -> str:
    """Binance's HMAC-SHA256 signature (lower-case hex) of ``payload`` (totalParams) with ``secret``."""
    return hmac.new(secret.encode(), payload.encode(), hashlib.sha256).hexdigest()


class BinanceApiError(Exception):
    """The venue refused a request: HTTP ``status``, Binance ``code`` and ``msg``."""

    def __init__(self, status: int, code: int, msg: str, path: str = "") -> None:
        hint = AUTH_ERROR_CODES.get(code)
        super().__init__(f"{path}: HTTP {status} code {code}: {msg}" + (f" [{hint}]" if hint else ""))
        self.status, self.code, self.msg, self.path = status, code, msg, path


class OutcomeUnknown(Exception):
    """A request reached (or may have reached) the venue but its answer was lost: it may have executed."""


def fmt_step(x: float, step: float | None) -> str:
    """``x`` as a plain decimal string on the ``step`` grid (what LOT_SIZE/PRICE_FILTER accept)."""
    if not step or step <= 0:
        return format(Decimal(repr(float(x))), "f")
    d = Decimal(repr(float(step))).normalize()
    n = round(x / step)
    return format((Decimal(n) * d).quantize(d), "f")


# ================================================================================================= client
class BinanceRestClient:
    """Signed Binance spot REST client (see the module docstring). ``clock_ms``/``sleep`` are injectable."""

    def __init__(self, base_url: str, api_key: str, api_secret: str, *, recv_window_ms: int = 5000,
                 timeout_s: float = 10.0, max_retries: int = 5, backoff_s: float = 0.2, backoff_max_s: float = 10.0,
                 max_resends: int = 3, clock_ms: Callable[[], int] | None = None,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key
        self.__secret = api_secret
        self.recv_window_ms = recv_window_ms
        self.timeout_s = timeout_s
        self.max_retries, self.backoff_s, self.backoff_max_s = max_retries, backoff_s, backoff_max_s
        self.max_resends = max_resends
        self.clock_ms = clock_ms or (lambda: time.time_ns() // 1_000_000)
        self.sleep = sleep
        self.offset_ms = 0
        self.session: Any = None
        self.stats: dict[str, int] = {"requests": 0, "retries": 0, "rate_limited": 0, "retry_after_waits_ms": 0,
                                      "server_errors": 0, "network_errors": 0, "time_resyncs": 0,
                                      "unknown_outcomes": 0, "resends": 0, "recovered_by_query": 0}

    def __repr__(self) -> str:  # never the secret
        return f"BinanceRestClient({self.base_url!r}, api_key={self.api_key[:4]}..., secret=***)"

    async def start(self) -> None:
        import aiohttp
        if self.session is None:
            self.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout_s))
        await self.sync_time()

    async def close(self) -> None:
        if self.session is not None:
            s, self.session = self.session, None
            await s.close()

    async def __aenter__(self) -> BinanceRestClient:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def sync_time(self) -> int:
        """Offset (ms) of the venue's clock from ours, measured at the request's midpoint."""
        t0 = self.clock_ms()
        body = await self.request("GET", "/api/v3/time", signed=False)
        t1 = self.clock_ms()
        self.offset_ms = int(body["serverTime"]) - (t0 + t1) // 2
        return self.offset_ms

    def _signed_query(self, params: Mapping[str, Any]) -> str:
        p = {k: v for k, v in params.items() if v is not None}
        p["recvWindow"] = self.recv_window_ms
        p["timestamp"] = self.clock_ms() + self.offset_ms
        q = urlencode(p)
        return f"{q}&signature={sign(self.__secret, q)}"

    def _backoff(self, attempt: int) -> float:
        return min(self.backoff_max_s, self.backoff_s * (2 ** (attempt - 1)))

    async def request(self, method: str, path: str, params: Mapping[str, Any] | None = None, *,
                      signed: bool = True, unknown_is_error: bool = False) -> Any:
        """One API call with retries. ``unknown_is_error``: raise :class:`OutcomeUnknown` instead of retrying
        when the venue may have executed the request (order placement)."""
        import aiohttp
        if self.session is None:
            raise RuntimeError("BinanceRestClient not started")
        attempt = 0
        resynced = False
        while True:
            attempt += 1
            self.stats["requests"] += 1
            query = self._signed_query(params or {}) if signed else urlencode(params or {})
            headers = {"X-MBX-APIKEY": self.api_key} if signed else {}
            url = f"{self.base_url}{path}"
            kw: dict[str, Any] = {"headers": headers}
            if method == "POST":
                kw["data"] = query
                headers["Content-Type"] = "application/x-www-form-urlencoded"
            elif query:
                url = f"{url}?{query}"
            try:
                async with self.session.request(method, url, **kw) as r:
                    status, raw, retry_after = r.status, await r.read(), r.headers.get("Retry-After")
            except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as e:
                self.stats["network_errors"] += 1
                if unknown_is_error:
                    self.stats["unknown_outcomes"] += 1
                    raise OutcomeUnknown(f"{method} {path}: {type(e).__name__}: {e}") from None
                if attempt > self.max_retries:
                    raise
                self.stats["retries"] += 1
                await self.sleep(self._backoff(attempt))
                continue
            if status == 200:
                return orjson.loads(raw)
            try:
                err = orjson.loads(raw)
                code, msg = int(err.get("code", 0)), str(err.get("msg", ""))
            except (orjson.JSONDecodeError, AttributeError, TypeError, ValueError):
                code, msg = 0, raw[:200].decode(errors="replace")
            if status in (429, 418):  # the request was refused, not executed: safe to repeat after the wait
                self.stats["rate_limited"] += 1
                try:
                    wait = float(retry_after) if retry_after else self._backoff(attempt)
                except ValueError:
                    wait = self._backoff(attempt)
                if attempt > self.max_retries:
                    raise BinanceApiError(status, code, msg, path)
                log.warning("venue_rate_limited", status=status, code=code, retry_after_s=wait, path=path)
                self.stats["retry_after_waits_ms"] += int(wait * 1000)
                self.stats["retries"] += 1
                await self.sleep(wait)
                continue
            if status >= 500:
                self.stats["server_errors"] += 1
                if unknown_is_error:
                    self.stats["unknown_outcomes"] += 1
                    raise OutcomeUnknown(f"{method} {path}: HTTP {status} code {code}: {msg}")
                if attempt > self.max_retries:
                    raise BinanceApiError(status, code, msg, path)
                self.stats["retries"] += 1
                await self.sleep(self._backoff(attempt))
                continue
            if code == -1021 and signed and not resynced:  # our clock drifted: measure again, re-sign, once
                resynced = True
                self.stats["time_resyncs"] += 1
                await self.sync_time()
                continue
            raise BinanceApiError(status, code, msg, path)

    # ------------------------------------------------------------------------------------------ endpoints
    async def account(self) -> dict:
        return await self.request("GET", "/api/v3/account")

    async def get_order(self, symbol: str, client_order_id: str) -> dict | None:
        """The venue's order with that client id, or None (-2013: the venue does not have it)."""
        try:
            return await self.request("GET", "/api/v3/order", {"symbol": symbol,
                                                               "origClientOrderId": client_order_id})
        except BinanceApiError as e:
            if e.code == -2013:
                return None
            raise

    async def cancel_order(self, symbol: str, client_order_id: str) -> dict | None:
        """DELETE; None when the venue has no open order with that id (-2011: unknown, filled or canceled)."""
        try:
            return await self.request("DELETE", "/api/v3/order", {"symbol": symbol,
                                                                  "origClientOrderId": client_order_id})
        except BinanceApiError as e:
            if e.code == -2011:
                return None
            raise

    async def open_orders(self, symbol: str | None = None) -> list[dict]:
        return await self.request("GET", "/api/v3/openOrders", {"symbol": symbol} if symbol else {})

    async def my_trades(self, symbol: str, order_id: int) -> list[dict]:
        out: list[dict] = []
        from_id = None
        while True:
            page = await self.request("GET", "/api/v3/myTrades", {"symbol": symbol, "orderId": order_id,
                                                                  "fromId": from_id, "limit": 1000})
            out.extend(page)
            if len(page) < 1000:
                return out
            from_id = int(page[-1]["id"]) + 1

    async def place_order(self, symbol: str, side: str, order_type: str, quantity: str, price: str | None,
                          client_order_id: str) -> dict:
        """POST /api/v3/order (FULL response), idempotent by ``client_order_id``: after an unknown outcome the
        order is looked up first and resent (same id) only when the venue does not have it. A duplicate of an
        open order (-2010 "Duplicate order sent.") answers the existing order. The result always has ``fills``
        (from the response, or from myTrades for an order found by lookup)."""
        params = {"symbol": symbol, "side": side, "type": order_type, "quantity": quantity,
                  "newClientOrderId": client_order_id, "newOrderRespType": "FULL"}
        if order_type == "LIMIT":
            params.update(timeInForce="GTC", price=price)
        sends = 0
        while True:
            sends += 1
            try:
                return await self.request("POST", "/api/v3/order", params, unknown_is_error=True)
            except OutcomeUnknown as e:
                log.warning("order_outcome_unknown", coid=client_order_id, error=str(e))
                await self.sleep(self._backoff(1))
            except BinanceApiError as e:
                if not (e.code == -2010 and "Duplicate" in e.msg):
                    raise
            try:
                found = await self.lookup(symbol, client_order_id)
            except Exception as e:  # noqa: BLE001 - the POST may have executed: unknown, never "rejected"
                raise OutcomeUnknown(f"order {client_order_id}: lookup after an unknown outcome failed: "
                                     f"{type(e).__name__}: {e}") from e
            if found is not None:
                self.stats["recovered_by_query"] += 1
                return found
            if sends > self.max_resends:
                raise OutcomeUnknown(f"order {client_order_id}: outcome unknown after {sends} sends")
            self.stats["resends"] += 1
            log.info("order_resend", coid=client_order_id, send=sends + 1)

    async def lookup(self, symbol: str, client_order_id: str) -> dict | None:
        """The order by client id with its trades as FULL-style ``fills`` (tradeId, isMaker kept), or None."""
        o = await self.get_order(symbol, client_order_id)
        if o is None:
            return None
        trades = await self.my_trades(symbol, int(o["orderId"])) if float(o["executedQty"]) > 0 else []
        o = dict(o)
        o["fills"] = [{"price": t["price"], "qty": t["qty"], "commission": t["commission"],
                       "commissionAsset": t["commissionAsset"], "tradeId": t["id"], "isMaker": t["isMaker"],
                       "time": t["time"]} for t in trades]
        return o


async def fetch_klines_rest(rest_url: str, symbol: str, *, days: float, end_ms: int | None = None,
                            session=None) -> Klines:
    """1m klines history from a Binance-format REST endpoint (``/api/v3/klines``, 1000 rows a request)."""
    import aiohttp

    from daemon.binance.codec import parse_klines
    from engines.data import bars_to_klines
    own = session is None
    session = session or aiohttp.ClientSession()
    try:
        if end_ms is None:
            async with session.get(f"{rest_url}/api/v3/time") as r:
                end_ms = int((await r.json())["serverTime"])
        start = end_ms - int(days * 86_400_000)
        bars = []
        while start < end_ms:
            params = {"symbol": symbol, "interval": "1m", "startTime": start, "endTime": end_ms, "limit": 1000}
            async with session.get(f"{rest_url}/api/v3/klines", params=params) as r:
                body = await r.read()
                if r.status != 200:
                    raise RuntimeError(f"klines request failed: HTTP {r.status}: {body[:200]!r}")
            page = parse_klines(body, symbol, "1m")
            if not page:
                break
            bars.extend(page)
            start = page[-1].open_ns // 1_000_000 + 60_000
        # the last bar may still be open: keep only closed minutes
        bars = [b for b in bars if b.open_ns // 1_000_000 + 60_000 <= end_ms]
        return bars_to_klines(bars)
    finally:
        if own:
            await session.close()
