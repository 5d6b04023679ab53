"""The local venue's signed order API (Binance spot REST subset) for the market SIMULATOR source.

Why: ``broker.kind = "testnet"`` talks to a real order API over HTTP; tests and simulate-mode runs need one that
speaks Binance's documented protocol on loopback, with the failure modes a real venue has (bad signature, stale
timestamp, rate limits, an answer lost after the order executed).

Protocol subset (https://developers.binance.com/docs/binance-spot-api-docs/rest-api):

* SIGNED requests: ``X-MBX-APIKEY`` header; ``timestamp`` (ms) and optional ``recvWindow`` (default 5000, max
  60000); ``signature`` = hex HMAC-SHA256 of *totalParams* (the query string concatenated with the request body,
  without the ``signature`` parameter itself) keyed with the secret. A request is accepted when
  ``timestamp < serverTime + 1000`` and ``serverTime - timestamp <= recvWindow``.
* ``POST /api/v3/order``: symbol, side BUY|SELL, type MARKET|LIMIT, timeInForce GTC (LIMIT only), quantity,
  price (LIMIT only), newClientOrderId (``^[.A-Z:/a-z0-9_-]{1,36}$``, generated when absent), newOrderRespType
  ACK|RESULT|FULL (default FULL): FULL carries ``fills[]`` of price/qty/commission/commissionAsset/tradeId.
* ``GET /api/v3/order`` and ``DELETE /api/v3/order`` by ``orderId`` or ``origClientOrderId``;
  ``GET /api/v3/openOrders`` (symbol optional); ``GET /api/v3/account``; ``GET /api/v3/myTrades``
  (symbol, orderId, fromId, limit).
* Errors, as Binance sends them (``{"code": .., "msg": ..}``): -1021 timestamp outside recvWindow, -1022 bad
  signature, -2014 API-key format invalid (missing key), -2015 unknown key (HTTP 401), -1102 mandatory parameter,
  -1100 illegal characters, -1106 parameter not required, -1115/-1116/-1117 bad timeInForce/type/side, -1121
  invalid symbol, -1131 recvWindow too large, -1013 filter failure (PRICE_FILTER / LOT_SIZE / NOTIONAL), -2010
  new order rejected (duplicate open client order id; insufficient balance; market order with no liquidity),
  -2011 cancel of an unknown/closed order, -2013 order does not exist, HTTP 429 (-1003) with ``Retry-After`` and
  HTTP 418 for a client that ignores it, HTTP 503 (-1007) "execution status unknown". In replay mode every order
  endpoint answers -1002 (HTTP 401): a recording has no order book to match against.

Matching model (the simulator's market, kept visible):

* A MARKET order walks the simulated book's levels, exactly as ``GET /api/v3/depth`` shows them at that moment
  (taker commission per level); what the shown depth cannot fill expires (status EXPIRED), as Binance's IOC
  market orders do. A marketable LIMIT takes the levels up to its price, the rest rests (GTC).
* A resting order fills (maker commission, at its price) from the simulator's trade prints of the opposite
  aggressor: a sell print below a resting buy's price (or at it when ``fill_at_touch``), a buy print above a
  resting sell; each print's size is shared across resting orders in price-time priority. A depth change that
  moves the opposite touch through a resting price fills it too (up to the size shown there).
* Our orders do not remove liquidity from the simulated book (the simulator does not know them), as in paper.
* Commission at ``maker_fee``/``taker_fee`` is charged, as on Binance without BNB, in the asset the trade
  RECEIVES (``commission_in="received"``, the default): a buy's in the base asset (it receives ``qty -
  commission``, commission rounded to 8 decimals as the venue shows it), a sell's in the quote asset.
  ``commission_in="quote"`` charges every trade in quote. Balances (free/locked) are checked: a buy needs quote,
  a sell needs base (spot: no shorting beyond the base balance).
* ``clientOrderId`` uniqueness is checked against OPEN orders only (as on Binance): resending the id of an order
  that already FILLED creates a second order. A client must query before resending (see daemon.binance.testnet).

Test knobs (never reachable over HTTP): :meth:`OrderApi.inject_rate_limit`, :meth:`OrderApi.inject_unknown_outcome`.
"""
from __future__ import annotations

import hmac
import math
import os
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any
from urllib.parse import parse_qsl

import orjson
import structlog
from aiohttp import web

from daemon.binance.rest import sign
from daemon.venue.base import OutFrame, VenueLike
from market.matching import walk_levels

__all__ = ["OrderApi", "attach_order_api", "DEFAULT_KEY_ENV", "DEFAULT_SECRET_ENV"]

log = structlog.get_logger(__name__)

# `tradingd venue --simulate` accepts the key/secret found in these variables (the defaults of venue.api_key_env
# and venue.api_secret_env); the daemon's simulate mode registers its own credentials with add_key().
DEFAULT_KEY_ENV = "TRADINGD_API_KEY"
DEFAULT_SECRET_ENV = "TRADINGD_API_SECRET"

RECV_WINDOW_DEFAULT = 5000
RECV_WINDOW_MAX = 60000
_COID_RE = re.compile(r"^[.A-Z:/a-z0-9_-]{1,36}$")
_NUM_RE = re.compile(r"^([0-9]{1,20})(\.[0-9]{1,20})?$")
_EPS = 1e-12
_UINT_RE = re.compile(r"[0-9]{1,20}")  # ASCII digits only (str.isdigit() accepts "²", which int() refuses)


def _uint(v: str) -> bool:
    return _UINT_RE.fullmatch(v) is not None


def _fmt(x: float) -> str:
    return f"{x:.8f}"


class _ApiError(Exception):
    def __init__(self, code: int, msg: str, status: int = 400, headers: dict[str, str] | None = None) -> None:
        super().__init__(msg)
        self.code, self.msg, self.status, self.headers = code, msg, status, headers or {}


def _mandatory(name: str) -> _ApiError:
    return _ApiError(-1102, f"Mandatory parameter '{name}' was not sent, was empty/null, or malformed.")


@dataclass
class _Order:
    order_id: int
    symbol: str
    client_order_id: str
    side: str  # BUY | SELL
    type: str  # MARKET | LIMIT
    tif: str  # GTC or "" for market
    price: float  # 0 for market
    qty: float
    time_ms: int
    update_ms: int
    executed: float = 0.0
    quote: float = 0.0  # cummulativeQuoteQty
    status: str = "NEW"
    locked: float = 0.0  # what this order still locks (quote for a buy, base for a sell)

    @property
    def remaining(self) -> float:
        r = self.qty - self.executed
        return 0.0 if r <= 1e-9 * self.qty else r

    @property
    def is_open(self) -> bool:
        return self.status in ("NEW", "PARTIALLY_FILLED")

    def view(self) -> dict:
        """The GET /api/v3/order body."""
        return {"symbol": self.symbol, "orderId": self.order_id, "orderListId": -1,
                "clientOrderId": self.client_order_id, "price": _fmt(self.price), "origQty": _fmt(self.qty),
                "executedQty": _fmt(self.executed), "cummulativeQuoteQty": _fmt(self.quote), "status": self.status,
                "timeInForce": self.tif or "GTC", "type": self.type, "side": self.side, "stopPrice": _fmt(0.0),
                "icebergQty": _fmt(0.0), "time": self.time_ms, "updateTime": self.update_ms,
                "isWorking": self.type == "LIMIT", "workingTime": self.time_ms, "origQuoteOrderQty": _fmt(0.0),
                "selfTradePreventionMode": "NONE"}


@dataclass
class _Trade:
    id: int
    order_id: int
    symbol: str
    price: float
    qty: float
    commission: float
    commission_asset: str
    time_ms: int
    is_buyer: bool
    is_maker: bool

    def fill_view(self) -> dict:
        return {"price": _fmt(self.price), "qty": _fmt(self.qty), "commission": _fmt(self.commission),
                "commissionAsset": self.commission_asset, "tradeId": self.id}

    def view(self) -> dict:
        return {"symbol": self.symbol, "id": self.id, "orderId": self.order_id, "orderListId": -1,
                "price": _fmt(self.price), "qty": _fmt(self.qty), "quoteQty": _fmt(self.price * self.qty),
                "commission": _fmt(self.commission), "commissionAsset": self.commission_asset,
                "time": self.time_ms, "isBuyer": self.is_buyer, "isMaker": self.is_maker, "isBestMatch": True}


@dataclass
class _Account:
    api_key: str
    secret: str
    balances: dict[str, list[float]]  # asset -> [free, locked]
    orders: dict[int, _Order] = field(default_factory=dict)
    by_coid: dict[str, int] = field(default_factory=dict)  # latest order with that client id
    trades: list[_Trade] = field(default_factory=list)


@dataclass(frozen=True)
class _SymbolInfo:
    base: str
    quote: str
    tick: Decimal
    min_price: Decimal
    step: Decimal
    min_qty: Decimal
    max_qty: Decimal
    min_notional: float


class OrderApi:
    """Order endpoints + per-API-key accounts of the local venue. ``source`` is the venue's market source;
    only a :class:`daemon.venue.server.SimulatorSource` (it has ``sims``) can match orders."""

    def __init__(self, source: Any, *, maker_fee: float = 0.001, taker_fee: float = 0.001,
                 commission_in: str = "received", fill_at_touch: bool = True,
                 venue: VenueLike | None = None) -> None:
        self.source = source
        self.venue = venue
        self.sims = getattr(source, "sims", None)
        self.set_fees(maker_fee, taker_fee, commission_in=commission_in)
        self.fill_at_touch = fill_at_touch
        self.accounts: dict[str, _Account] = {}
        self.stats: Counter = Counter()  # by "path" and by error "code:<n>"
        self._order_id = 0
        self._trade_id = 0
        self._pending_429 = 0
        self._retry_after_s = 1
        self._banned_until = 0.0
        self._unknown: list[bool] = []  # queued "answer 503 -1007" faults: executed or not
        self.info: dict[str, _SymbolInfo] = {}
        if self.sims is not None:
            for s in source.exchange_info(0)["symbols"]:
                f = {x["filterType"]: x for x in s["filters"]}
                self.info[s["symbol"]] = _SymbolInfo(
                    s["baseAsset"], s["quoteAsset"], Decimal(f["PRICE_FILTER"]["tickSize"]),
                    Decimal(f["PRICE_FILTER"]["minPrice"]), Decimal(f["LOT_SIZE"]["stepSize"]),
                    Decimal(f["LOT_SIZE"]["minQty"]), Decimal(f["LOT_SIZE"]["maxQty"]),
                    float(f["NOTIONAL"]["minNotional"]))

    # ------------------------------------------------------------------------------------------ set-up
    def add_key(self, api_key: str, secret: str, balances: dict[str, float] | None = None) -> None:
        """Accept ``api_key`` signed with ``secret``; its account starts with ``balances`` (default: 1,000,000
        of every quote asset and 10 of every base asset the venue lists)."""
        if not api_key or not secret:
            raise ValueError("api key and secret must be non-empty")
        if balances is None:
            balances = {}
            for i in self.info.values():
                balances.setdefault(i.quote, 1_000_000.0)
                balances.setdefault(i.base, 10.0)
        self.accounts[api_key] = _Account(api_key, secret, {a: [float(v), 0.0] for a, v in balances.items()})

    def set_fees(self, maker_fee: float, taker_fee: float, *, commission_in: str | None = None) -> None:
        """Fee rates, and the asset commissions are charged in: "received" (Binance: a buy's in base) or "quote"."""
        if commission_in is not None:
            if commission_in not in ("received", "quote"):
                raise ValueError(f"commission_in must be 'received' or 'quote', got {commission_in!r}")
            self.commission_in = commission_in
        self.maker_fee, self.taker_fee = maker_fee, taker_fee

    def inject_rate_limit(self, retry_after_s: int = 1, times: int = 1) -> None:
        """The next ``times`` order-API requests answer HTTP 429 (-1003) with ``Retry-After``; a request arriving
        before that time is up answers HTTP 418 (what Binance does to a client that ignores 429)."""
        self._pending_429 += times
        self._retry_after_s = int(retry_after_s)

    def inject_unknown_outcome(self, executed: bool = True, times: int = 1) -> None:
        """The next ``times`` POST /api/v3/order answer HTTP 503 (-1007, execution status unknown), after
        executing the order (``executed``) or without executing it."""
        self._unknown.extend([executed] * times)

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/api/v3/order", self._new_order)
        app.router.add_get("/api/v3/order", self._query_order)
        app.router.add_delete("/api/v3/order", self._cancel_order)
        app.router.add_get("/api/v3/openOrders", self._open_orders)
        app.router.add_get("/api/v3/account", self._account)
        app.router.add_get("/api/v3/myTrades", self._my_trades)

    def orders_of(self, api_key: str, client_order_id: str | None = None) -> list[dict]:
        """Every order of ``api_key`` (optionally only those with ``client_order_id``), oldest first (tests)."""
        acct = self.accounts[api_key]
        return [o.view() for o in acct.orders.values()
                if client_order_id is None or o.client_order_id == client_order_id]

    # ------------------------------------------------------------------------------------------ request
    def _now_ms(self) -> int:
        return int(self.source.server_time_ms())

    async def _handle(self, request: web.Request, fn) -> web.Response:
        self.stats[request.path] += 1
        if self.venue is not None:
            self.venue.stats.rest_requests[request.path] += 1
        try:
            self._rate_gate()
            if self.sims is None:
                raise _ApiError(-1002, "You are not authorized to execute this request. (this local venue replays "
                                "a recording: it has no order API; use venue.mode = simulate)", 401)
            acct, params = await self._authenticate(request)
            body = fn(acct, params)
            return web.Response(body=orjson.dumps(body), content_type="application/json")
        except _ApiError as e:
            self.stats[f"code:{e.code}"] += 1
            if self.venue is not None:
                self.venue.stats.rest_errors[e.code] += 1
            return web.Response(body=orjson.dumps({"code": e.code, "msg": e.msg}), status=e.status,
                                content_type="application/json", headers=e.headers)

    def _rate_gate(self) -> None:
        now = time.monotonic()
        if now < self._banned_until:
            wait = max(1, math.ceil(self._banned_until - now))
            raise _ApiError(-1003, f"Way too many requests; IP banned until {int(time.time() * 1000 + wait * 1000)}. "
                            "Please use the websocket for live updates to avoid bans.", 418,
                            {"Retry-After": str(wait)})
        if self._pending_429 > 0:
            self._pending_429 -= 1
            self._banned_until = now + self._retry_after_s
            raise _ApiError(-1003, "Too many requests; current limit of IP is 6000 requests per 1 MINUTE. Please "
                            "use the websocket for live updates to avoid polling the API.", 429,
                            {"Retry-After": str(self._retry_after_s)})

    async def _authenticate(self, request: web.Request) -> tuple[_Account, dict[str, str]]:
        key = request.headers.get("X-MBX-APIKEY", "")
        if not key:
            raise _ApiError(-2014, "API-key format invalid.", 401)
        acct = self.accounts.get(key)
        if acct is None:
            raise _ApiError(-2015, "Invalid API-key, IP, or permissions for action.", 401)
        qs = request.query_string
        body = (await request.text()) if request.can_read_body else ""
        params: dict[str, str] = {}
        sig = None
        parts = []
        for raw in (qs, body):
            kept = []
            for piece in raw.split("&") if raw else []:
                if piece.startswith("signature="):
                    sig = piece[len("signature="):]
                    continue
                kept.append(piece)
            parts.append("&".join(kept))
            for k, v in parse_qsl(raw, keep_blank_values=True):
                if k != "signature":
                    params[k] = v
        ts_raw = params.get("timestamp", "")
        if not _uint(ts_raw):
            raise _mandatory("timestamp")
        rw_raw = params.get("recvWindow", "")
        if rw_raw and not _uint(rw_raw):
            raise _ApiError(-1100, "Illegal characters found in parameter 'recvWindow'; legal range is "
                            "'^[0-9]{1,20}$'.")
        recv_window = int(rw_raw) if rw_raw else RECV_WINDOW_DEFAULT
        if recv_window > RECV_WINDOW_MAX:
            raise _ApiError(-1131, "recvWindow must be less than 60000")
        ts, now = int(ts_raw), self._now_ms()
        if ts >= now + 1000:
            raise _ApiError(-1021, "Timestamp for this request was 1000ms ahead of the server's time.")
        if now - ts > recv_window:
            raise _ApiError(-1021, "Timestamp for this request is outside of the recvWindow.")
        if not sig:
            raise _mandatory("signature")
        expected = sign(acct.secret, parts[0] + parts[1])
        if not hmac.compare_digest(expected, sig.lower()):
            raise _ApiError(-1022, "Signature for this request is not valid.")
        return acct, params

    # ------------------------------------------------------------------------------------------ params
    def _symbol(self, params: dict[str, str], required: bool = True) -> str | None:
        s = params.get("symbol", "")
        if not s:
            if required:
                raise _mandatory("symbol")
            return None
        if s not in self.info:
            raise _ApiError(-1121, "Invalid symbol.")
        return s

    @staticmethod
    def _decimal(params: dict[str, str], name: str) -> Decimal | None:
        raw = params.get(name)
        if raw is None or raw == "":
            return None
        if not _NUM_RE.match(raw):
            raise _ApiError(-1100, f"Illegal characters found in parameter '{name}'; legal range is "
                            "'^([0-9]{1,20})(\\.[0-9]{1,20})?$'.")
        try:
            return Decimal(raw)
        except InvalidOperation:
            raise _ApiError(-1100, f"Illegal characters found in parameter '{name}'.") from None

    def _find(self, acct: _Account, params: dict[str, str], symbol: str, missing_code: int,
              missing_msg: str) -> _Order:
        oid_raw, coid = params.get("orderId", ""), params.get("origClientOrderId", "")
        if not oid_raw and not coid:
            raise _ApiError(-1102, "Param 'origClientOrderId' or 'orderId' must be sent, but both were empty/null!")
        if oid_raw:
            if not _uint(oid_raw):
                raise _ApiError(-1100, "Illegal characters found in parameter 'orderId'; legal range is "
                                "'^[0-9]{1,20}$'.")
            o = acct.orders.get(int(oid_raw))
        else:
            oid = acct.by_coid.get(coid)
            o = acct.orders.get(oid) if oid is not None else None
        if o is None or o.symbol != symbol or (coid and o.client_order_id != coid):
            raise _ApiError(missing_code, missing_msg)
        return o

    # ------------------------------------------------------------------------------------------ handlers
    async def _new_order(self, request: web.Request) -> web.Response:
        return await self._handle(request, self._do_new_order)

    async def _query_order(self, request: web.Request) -> web.Response:
        def q(acct, params):
            sym = self._symbol(params)
            return self._find(acct, params, sym, -2013, "Order does not exist.").view()
        return await self._handle(request, q)

    async def _cancel_order(self, request: web.Request) -> web.Response:
        def c(acct, params):
            sym = self._symbol(params)
            o = self._find(acct, params, sym, -2011, "Unknown order sent.")
            if not o.is_open:
                raise _ApiError(-2011, "Unknown order sent.")
            self._release(acct, o)
            o.status, o.update_ms = "CANCELED", self._now_ms()
            v = o.view()
            out = {k: v[k] for k in ("symbol", "orderId", "orderListId", "price", "origQty", "executedQty",
                                     "cummulativeQuoteQty", "status", "timeInForce", "type", "side",
                                     "selfTradePreventionMode")}
            out["origClientOrderId"] = o.client_order_id
            out["clientOrderId"] = params.get("newClientOrderId") or f"cancel-{o.order_id}"
            out["transactTime"] = o.update_ms
            return out
        return await self._handle(request, c)

    async def _open_orders(self, request: web.Request) -> web.Response:
        def oo(acct, params):
            sym = self._symbol(params, required=False)
            return [o.view() for o in acct.orders.values() if o.is_open and (sym is None or o.symbol == sym)]
        return await self._handle(request, oo)

    async def _account(self, request: web.Request) -> web.Response:
        def a(acct, params):
            mk, tk = _fmt(self.maker_fee), _fmt(self.taker_fee)
            return {"makerCommission": int(round(self.maker_fee * 10000)),
                    "takerCommission": int(round(self.taker_fee * 10000)), "buyerCommission": 0,
                    "sellerCommission": 0,
                    "commissionRates": {"maker": mk, "taker": tk, "buyer": _fmt(0), "seller": _fmt(0)},
                    "canTrade": True, "canWithdraw": False, "canDeposit": False, "brokered": False,
                    "requireSelfTradePrevention": False, "preventSor": False, "updateTime": self._now_ms(),
                    "accountType": "SPOT", "permissions": ["SPOT"], "uid": 1,
                    "balances": [{"asset": k, "free": _fmt(v[0]), "locked": _fmt(v[1])}
                                 for k, v in sorted(acct.balances.items())]}
        return await self._handle(request, a)

    async def _my_trades(self, request: web.Request) -> web.Response:
        def mt(acct, params):
            sym = self._symbol(params)
            oid, from_id = params.get("orderId", ""), params.get("fromId", "")
            lim_raw = params.get("limit", "") or "500"
            for name, v in (("orderId", oid), ("fromId", from_id), ("limit", lim_raw)):
                if v and not _uint(v):
                    raise _ApiError(-1100, f"Illegal characters found in parameter '{name}'; legal range is "
                                    "'^[0-9]{1,20}$'.")
            limit = int(lim_raw)
            if not 1 <= limit <= 1000:
                raise _ApiError(-1130, "Data sent for parameter 'limit' is not valid.")
            out = [t for t in acct.trades if t.symbol == sym and (not oid or t.order_id == int(oid))
                   and (not from_id or t.id >= int(from_id))]
            return [t.view() for t in out[:limit]]
        return await self._handle(request, mt)

    # ------------------------------------------------------------------------------------------ orders
    def _do_new_order(self, acct: _Account, params: dict[str, str]) -> dict:
        sym = self._symbol(params)
        info = self.info[sym]
        side = params.get("side", "")
        if not side:
            raise _mandatory("side")
        if side not in ("BUY", "SELL"):
            raise _ApiError(-1117, "Invalid side.")
        typ = params.get("type", "")
        if not typ:
            raise _mandatory("type")
        if typ not in ("MARKET", "LIMIT"):
            raise _ApiError(-1116, "Invalid orderType.")
        tif = params.get("timeInForce", "")
        qty = self._decimal(params, "quantity")
        price = self._decimal(params, "price")
        if typ == "LIMIT":
            if not tif:
                raise _mandatory("timeInForce")
            if tif != "GTC":
                raise _ApiError(-1115, "Invalid timeInForce.")
            if price is None:
                raise _mandatory("price")
        else:
            if price is not None:
                raise _ApiError(-1106, "Parameter 'price' sent when not required.")
            if tif:
                raise _ApiError(-1106, "Parameter 'timeInForce' sent when not required.")
        if qty is None:
            raise _mandatory("quantity")
        resp_type = params.get("newOrderRespType", "FULL")
        if resp_type not in ("ACK", "RESULT", "FULL"):
            raise _ApiError(-1100, "Illegal characters found in parameter 'newOrderRespType'.")
        coid = params.get("newClientOrderId") or f"venue-{self._order_id + 1}"
        if not _COID_RE.match(coid):
            raise _ApiError(-1100, "Illegal characters found in parameter 'newClientOrderId'; legal range is "
                            "'^[\\.A-Z\\:/a-z0-9_-]{1,36}$'.")
        # filters (exact decimal arithmetic, as the venue's strings are)
        if qty < info.min_qty or qty > info.max_qty or qty % info.step != 0:
            raise _ApiError(-1013, "Filter failure: LOT_SIZE")
        if price is not None and (price < info.min_price or price % info.tick != 0):
            raise _ApiError(-1013, "Filter failure: PRICE_FILTER")
        prev = acct.by_coid.get(coid)
        if prev is not None and acct.orders[prev].is_open:
            raise _ApiError(-2010, "Duplicate order sent.")
        unknown = self._unknown.pop(0) if self._unknown else None
        if unknown is False:  # lost before the matching engine: nothing happened
            raise _ApiError(-1007, "Timeout waiting for response from backend server. Send status unknown; "
                            "execution status unknown.", 503)
        q, px = float(qty), (float(price) if price is not None else 0.0)
        bids, asks = self._levels(sym)
        opposite = asks if side == "BUY" else bids
        ref = px if typ == "LIMIT" else (opposite[0][0] if opposite else 0.0)
        if typ == "MARKET" and not opposite:
            raise _ApiError(-2010, "Market is closed.")
        if q * ref < info.min_notional:
            raise _ApiError(-1013, "Filter failure: NOTIONAL")
        takes = walk_levels(opposite, q, 1 if side == "BUY" else -1, px if typ == "LIMIT" else None)
        # balance: a buy needs quote for what it takes now (+ commission) and for what rests; a sell needs base
        if side == "BUY":
            taken = sum(p * x for p, x in takes)
            rest = (q - sum(x for _, x in takes)) * px if typ == "LIMIT" else 0.0
            quote_fee = self.taker_fee if self.commission_in == "quote" else 0.0
            need, asset = taken * (1 + quote_fee) + rest, info.quote
        else:
            need, asset = q, info.base
        if acct.balances.get(asset, [0.0, 0.0])[0] + 1e-9 < need:
            raise _ApiError(-2010, "Account has insufficient balance for requested action.")
        now = self._now_ms()
        self._order_id += 1
        o = _Order(self._order_id, sym, coid, side, typ, tif if typ == "LIMIT" else "", px, q, now, now)
        acct.orders[o.order_id] = o
        acct.by_coid[coid] = o.order_id
        fills = [self._fill(acct, o, p, x, maker=False, now=now) for p, x in takes]
        if o.is_open:
            if typ == "MARKET":
                o.status = "EXPIRED"  # IOC: the shown depth could not fill the rest
            else:
                self._lock(acct, o)
        if unknown is True:  # executed, then the answer was lost
            raise _ApiError(-1007, "Timeout waiting for response from backend server. Send status unknown; "
                            "execution status unknown.", 503)
        ack = {"symbol": sym, "orderId": o.order_id, "orderListId": -1, "clientOrderId": coid,
               "transactTime": now}
        if resp_type == "ACK":
            return ack
        v = o.view()
        ack.update({k: v[k] for k in ("price", "origQty", "executedQty", "cummulativeQuoteQty", "status",
                                      "timeInForce", "type", "side", "workingTime", "selfTradePreventionMode")})
        if resp_type == "FULL":
            ack["fills"] = [t.fill_view() for t in fills]
        return ack

    def _levels(self, sym: str) -> tuple[list[tuple[float, float]], list[tuple[float, float]]]:
        """The simulated book exactly as GET /api/v3/depth shows it now (same decimal strings)."""
        snap = self.sims[sym].snapshot(5000)
        return ([(float(p), float(q)) for p, q in snap["bids"]], [(float(p), float(q)) for p, q in snap["asks"]])

    def _lock(self, acct: _Account, o: _Order) -> None:
        info = self.info[o.symbol]
        asset, amount = (info.quote, o.remaining * o.price) if o.side == "BUY" else (info.base, o.remaining)
        b = acct.balances.setdefault(asset, [0.0, 0.0])
        b[0] -= amount
        b[1] += amount
        o.locked = amount

    def _release(self, acct: _Account, o: _Order) -> None:
        if o.locked:
            info = self.info[o.symbol]
            b = acct.balances[info.quote if o.side == "BUY" else info.base]
            b[0] += o.locked
            b[1] -= o.locked
            o.locked = 0.0

    def _fill(self, acct: _Account, o: _Order, price: float, qty: float, *, maker: bool, now: int) -> _Trade:
        info = self.info[o.symbol]
        rate = self.maker_fee if maker else self.taker_fee
        in_base = o.side == "BUY" and self.commission_in == "received"
        commission = round(qty * rate, 8) if in_base else price * qty * rate
        if o.locked:  # a resting order's fill uses what it locked
            self._release(acct, o)
            relock = True
        else:
            relock = False
        base = acct.balances.setdefault(info.base, [0.0, 0.0])
        quote = acct.balances.setdefault(info.quote, [0.0, 0.0])
        if in_base:
            base[0] += qty - commission
            quote[0] -= price * qty
        elif o.side == "BUY":
            base[0] += qty
            quote[0] -= price * qty + commission
        else:
            base[0] -= qty
            quote[0] += price * qty - commission
        o.executed += qty
        o.quote += price * qty
        o.status = "FILLED" if o.remaining == 0.0 else "PARTIALLY_FILLED"
        o.update_ms = now
        if relock and o.is_open:
            self._lock(acct, o)
        self._trade_id += 1
        t = _Trade(self._trade_id, o.order_id, o.symbol, price, qty, commission,
                   info.base if in_base else info.quote, now, o.side == "BUY", maker)
        acct.trades.append(t)
        return t

    # ------------------------------------------------------------------------------------------ market
    def _resting(self, symbol: str) -> list[tuple[_Account, _Order]]:
        out = [(a, o) for a in self.accounts.values() for o in a.orders.values()
               if o.symbol == symbol and o.is_open and o.type == "LIMIT"]
        out.sort(key=lambda ao: (-(1 if ao[1].side == "BUY" else -1) * ao[1].price, ao[1].order_id))
        return out

    def on_frame(self, f: OutFrame) -> None:
        """Every frame the simulator publishes: trade prints (and touches that move through resting prices)
        fill resting LIMIT orders."""
        if f.kind not in ("trade", "depth") or not self.accounts:
            return
        resting = self._resting(f.symbol)
        if not resting:
            return
        now = self._now_ms()
        if f.kind == "trade":
            t = orjson.loads(f.data) if f.data is not None else orjson.loads(f.combined)["data"]
            price, avail = float(t["p"]), float(t["q"])
            sell_aggressor = bool(t["m"])  # buyer is the maker: the aggressor sold into the bids
            for acct, o in resting:
                if avail <= _EPS:
                    break
                if (o.side == "BUY") != sell_aggressor:
                    continue
                through = price < o.price if o.side == "BUY" else price > o.price
                if not (through or (self.fill_at_touch and price == o.price)):
                    continue
                q = min(o.remaining, avail)
                avail -= q
                self._fill(acct, o, o.price, q, maker=True, now=now)
        else:
            bids, asks = self._levels(f.symbol)
            for acct, o in resting:
                opposite = asks if o.side == "BUY" else bids
                avail = sum(x for _, x in walk_levels(opposite, o.remaining, 1 if o.side == "BUY" else -1,
                                                      o.price))
                if avail > _EPS:
                    self._fill(acct, o, o.price, min(avail, o.remaining), maker=True, now=now)


def attach_order_api(app: web.Application, venue: VenueLike) -> OrderApi:
    """Register the order endpoints on the venue's app and route its published frames through the matcher.

    Credentials: none until :meth:`OrderApi.add_key`, except that a key/secret pair found in the environment
    variables ``TRADINGD_API_KEY``/``TRADINGD_API_SECRET`` is accepted (for ``tradingd venue --simulate``)."""
    api = OrderApi(venue.source, venue=venue)
    api.routes(app)
    key, secret = os.environ.get(DEFAULT_KEY_ENV, ""), os.environ.get(DEFAULT_SECRET_ENV, "")
    if key and secret and api.sims is not None:
        api.add_key(key, secret)
    if api.sims is not None:
        publish = venue.publish

        async def publish_and_match(f: OutFrame) -> None:
            try:
                api.on_frame(f)
            except Exception:  # noqa: BLE001 - the market data stream must not stop for the order desk
                log.exception("venue_order_match_failed")
            await publish(f)

        venue.publish = publish_and_match  # type: ignore[method-assign]
    return api
