"""The local venue: an aiohttp server speaking Binance spot's wire format on loopback, so third-party Binance
clients work against it as they do against the real venue.

Websocket: ``/stream?streams=a/b/c`` and ``/stream`` (combined envelope ``{"stream":..,"data":..}``), ``/ws``,
``/ws/<stream>`` and ``/ws/<id>`` (bare payloads), with the live ``SUBSCRIBE``/``UNSUBSCRIBE``/
``LIST_SUBSCRIPTIONS``/``SET_PROPERTY``/``GET_PROPERTY`` methods (:func:`ws_request`); a ping every 20 s, a
connection silent to pings for 60 s is dropped, a client's ping is answered. REST: ``/api/v3/depth``,
``/api/v3/exchangeInfo``, ``/api/v3/klines``, ``/api/v3/ping``, ``/api/v3/time``, ``/api/v3/trades``,
``/api/v3/ticker/price``, ``/api/v3/ticker/bookTicker``, errors as Binance's
``{"code": -1121, "msg": "Invalid symbol."}`` with HTTP 400. Behind it one source: a recording replay
(:class:`daemon.venue.replay.ReplaySource`) or the market simulator (:class:`SimulatorSource`). Outgoing frames
pass a per-connection :class:`daemon.venue.faults.FaultInjector`. A connection carries at most ``max_streams``
streams (Binance: 1024; ``[venue] max_streams``, ``--max-streams``): a SUBSCRIBE beyond it answers error 2, and a
URL naming more is refused before the handshake with HTTP 400 and ``{"code": 2, "msg": ...}`` (Binance does not
document how it refuses such a URL: this is our choice).

Tests and the daemon use it as ``async with LocalVenue(source) as venue: venue.ws_url, venue.rest_url``.
"""
from __future__ import annotations

import argparse
import asyncio
import re
import signal
import time
from collections import Counter, deque
from dataclasses import dataclass, field

import orjson
import structlog
from aiohttp import WSMsgType, web

from daemon.config import FaultConfig, SimulatorConfig
from market.events import TIMEFRAME_SECONDS
from daemon.venue.faults import FaultInjector, FaultStats, SnapshotFaults
from daemon.venue.base import OutFrame, Publisher, Source
from daemon.venue.replay import ReplaySource
from daemon.venue.simulator import MarketSimulator, exchange_info

log = structlog.get_logger(__name__)

KLINE_INTERVALS = tuple(TIMEFRAME_SECONDS)
DEPTH_LIMIT_MAX = 5000
TRADES_LIMIT_MAX = 1000  # /api/v3/trades: default 500, max 1000 (Binance)
RECENT_TRADES = TRADES_LIMIT_MAX  # trades the venue keeps per symbol for /api/v3/trades and ticker/price
PING_INTERVAL_S = 20.0  # Binance: "The WebSocket server will send a ping frame every 20 seconds"
PONG_TIMEOUT_S = 60.0  # Binance: no pong within a minute -> disconnected
MAX_STREAMS = 1024  # Binance: a single connection can listen to a maximum of 1024 streams
WS_METHODS = ("SUBSCRIBE", "UNSUBSCRIBE", "LIST_SUBSCRIPTIONS", "SET_PROPERTY", "GET_PROPERTY")
_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,36}$")  # Binance: int64, alphanumeric string of at most 36, or null


class SimulatorSource:
    """Drives one :class:`MarketSimulator` per symbol from the wall clock (the only clock read is here)."""

    def __init__(self, symbols: list[str] | tuple[str, ...], cfg: SimulatorConfig = SimulatorConfig(),
                 start_ns: int | None = None) -> None:
        self.cfg = cfg
        self.symbols = [s.upper() for s in symbols]
        self.start_ns = time.time_ns() if start_ns is None else start_ns
        self._wall0: int | None = None
        self._t_ns = self.start_ns
        self.speed = cfg.speed
        self.max_batch_ns = 50 * cfg.depth_interval_ms * 1_000_000  # most event time simulated per loop turn
        self.sims = {s: MarketSimulator(cfg, s, self.start_ns) for s in self.symbols}
        self.done = False

    def _now_ns(self) -> int:
        """Event time: ``simulator.speed`` event seconds per wall second since :meth:`run` began (the market
        opens then: a daemon that trains for minutes first does not wait for a simulated backlog)."""
        if self._wall0 is None:
            return self.start_ns
        return self.start_ns + int((time.monotonic_ns() - self._wall0) * self.speed)

    def now_ns(self) -> int:
        return self._now_ns()

    def open(self) -> None:
        """Start the event clock (once)."""
        if self._wall0 is None:
            self._wall0 = time.monotonic_ns()

    def depth(self, symbol: str, limit: int) -> dict | None:
        sim = self.sims.get(symbol)
        return None if sim is None else sim.snapshot(limit)

    def klines(self, symbol, interval, start_ms, end_ms, limit):
        return self.sims[symbol].klines(interval, start_ms, end_ms, limit)

    def exchange_info(self, server_ms: int) -> dict:
        return exchange_info(self.symbols, self.cfg, server_ms)

    def server_time_ms(self) -> int:
        return self._t_ns // 1_000_000

    async def run(self, venue: Publisher) -> None:
        dt = max(self.cfg.depth_interval_ms / 1000.0 / self.speed, 0.01)  # wall seconds between batches
        self.open()
        while True:
            now = self._now_ns()
            if now - self._t_ns > self.max_batch_ns:  # starved of CPU: the market slows down, never bursts
                behind = now - self._t_ns - self.max_batch_ns
                self._wall0 += int(behind / self.speed)
                now -= behind
            for sim in self.sims.values():
                for ev in sim.advance(now):
                    ids = (ev.payload["U"], ev.payload["u"]) if ev.kind == "depth" else None
                    data = orjson.dumps(ev.payload)
                    combined = b'{"stream":"' + ev.stream.encode() + b'","data":' + data + b"}"
                    await venue.publish(OutFrame(ev.stream, ev.kind, ids, combined, data, ev.ts_ns, sim.symbol))
            self._t_ns = now
            await asyncio.sleep(max(0.0, dt - (self._now_ns() - now) / 1e9 / self.speed))


@dataclass
class VenueStats:
    connections_total: int = 0
    connections_open: int = 0
    frames_sent: Counter = field(default_factory=Counter)  # by stream
    rest_requests: Counter = field(default_factory=Counter)  # by path
    rest_errors: Counter = field(default_factory=Counter)  # by Binance error code
    ws_errors: Counter = field(default_factory=Counter)  # refused websocket control messages, by Binance error code
    pings_sent: int = 0
    pong_timeouts: int = 0  # connections dropped because no pong came within the timeout
    faults: FaultStats = field(default_factory=FaultStats)


@dataclass(eq=False)
class _Client:
    ws: web.WebSocketResponse
    transport: asyncio.BaseTransport | None
    combined: bool
    streams: set[str]
    faults: FaultInjector
    opened: float
    last_pong: float = 0.0  # monotonic time of the last pong (or the open): no pong for PONG_TIMEOUT_S -> dropped


def _err(code: int, msg: str, status: int = 400) -> web.Response:
    return web.Response(body=orjson.dumps({"code": code, "msg": msg}), status=status,
                        content_type="application/json")


def _json(obj) -> web.Response:
    return web.Response(body=orjson.dumps(obj), content_type="application/json")


def _bare(combined: bytes, keep: bool) -> bytes:
    return combined if keep else orjson.dumps(orjson.loads(combined)["data"])


def _valid_stream(name: str) -> bool:
    sym, _, rest = name.partition("@")
    return bool(sym) and sym.isalnum() and rest in ("trade", "aggTrade", "depth", "depth@100ms", "depth@1000ms",
                                                      "bookTicker")


def _stream_shaped(name: str) -> bool:
    """A path part that names a stream (``sym@kind``, ``!all@arr``); anything else in ``/ws/<part>`` is a connection
    id or a listen key, which clients put there before they SUBSCRIBE (Binance accepts any such path)."""
    return "@" in name or name.startswith("!")


def _ws_error(code: int, msg: str, rid=None) -> dict:
    return {"error": {"code": code, "msg": msg}, "id": rid}


def _valid_id(rid) -> bool:
    if rid is None:
        return True
    if isinstance(rid, bool):
        return False
    if isinstance(rid, int):
        return -(1 << 63) <= rid < (1 << 63)
    return isinstance(rid, str) and bool(_ID_RE.match(rid))


def ws_request(text: str | bytes, streams: set[str], props: dict[str, bool], max_streams: int = MAX_STREAMS) -> dict:
    """Apply one live-subscription control message (Binance's SUBSCRIBE / UNSUBSCRIBE / LIST_SUBSCRIPTIONS /
    SET_PROPERTY / GET_PROPERTY) to a connection's ``streams`` and ``props``; return the reply, errors as Binance
    words them (``{"error": {"code": 2, "msg": "Invalid request: ..."}, "id": ...}``). Pure: no I/O, no clock."""
    try:
        req = orjson.loads(text)
    except orjson.JSONDecodeError as e:
        return _ws_error(3, f"Invalid JSON: {e}")
    if not isinstance(req, dict):
        return _ws_error(2, "Invalid request: expected a JSON object")
    rid = req.get("id")
    if not _valid_id(rid):
        return _ws_error(2, "Invalid request: request ID must be an unsigned integer")
    method = req.get("method")
    if method is None:
        return _ws_error(2, "Invalid request: missing field `method`", rid)
    if method not in WS_METHODS:
        return _ws_error(2, f"Invalid request: unknown variant `{method}`, expected one of "
                            + ", ".join(f"`{m}`" for m in WS_METHODS), rid)
    params = req.get("params", [])
    if params is None:
        params = []
    if not isinstance(params, list):
        return _ws_error(2, "Invalid request: params must be a list", rid)
    if method in ("SUBSCRIBE", "UNSUBSCRIBE"):
        if not all(isinstance(p, str) for p in params):
            return _ws_error(2, "Invalid request: stream names must be strings", rid)
        bad = [p for p in params if not _valid_stream(p)]
        if bad:
            return _ws_error(2, f"Invalid request: stream(s) not served by this venue: {', '.join(bad)}", rid)
        if method == "SUBSCRIBE":
            if len(streams | set(params)) > max_streams:
                return _ws_error(2, f"Invalid request: a connection listens to at most {max_streams} streams", rid)
            streams.update(params)
        else:
            streams.difference_update(params)
        return {"result": None, "id": rid}
    if method == "LIST_SUBSCRIPTIONS":
        if params:
            return _ws_error(2, "Invalid request: too many parameters", rid)
        return {"result": sorted(streams), "id": rid}
    # SET_PROPERTY ["combined", bool] / GET_PROPERTY ["combined"]
    want = 2 if method == "SET_PROPERTY" else 1
    if len(params) != want or not isinstance(params[0], str):
        return _ws_error(2, "Invalid request: property name must be a string", rid)
    if params[0] != "combined":
        return _ws_error(0, "Unknown property", rid)
    if method == "GET_PROPERTY":
        return {"result": props["combined"], "id": rid}
    if not isinstance(params[1], bool):
        return _ws_error(1, "Invalid value type: expected Boolean", rid)
    props["combined"] = params[1]
    return {"result": None, "id": rid}


class LocalVenue:
    def __init__(self, source: Source, faults: FaultConfig = FaultConfig(), host: str = "127.0.0.1",
                 port: int = 0, start_on: str | None = None, ping_interval_s: float = PING_INTERVAL_S,
                 pong_timeout_s: float = PONG_TIMEOUT_S, max_streams: int = MAX_STREAMS) -> None:
        if start_on is None:  # a replay waits for its first synced client; a live market never waits
            start_on = "snapshot" if isinstance(source, ReplaySource) else "immediate"
        if start_on not in ("immediate", "subscriber", "snapshot"):
            raise ValueError(f"start_on: {start_on!r} is not immediate|subscriber|snapshot")
        self.source = source
        self.fault_cfg = faults
        self.host, self.port = host, port
        self.start_on = start_on
        self.ping_interval_s, self.pong_timeout_s = ping_interval_s, pong_timeout_s
        self.max_streams = max_streams  # per connection, by SUBSCRIBE or in the URL
        self.stats = VenueStats()
        self._trades: dict[str, deque] = {}  # symbol -> the last RECENT_TRADES trade frames published
        self._heartbeat_task: asyncio.Task | None = None
        self._bg: set[asyncio.Task] = set()
        self._start_check = asyncio.Event()  # set on every subscription change and snapshot served
        self.clients: set[_Client] = set()
        self._subscribed = asyncio.Event()
        self._snapshot_served = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self._task: asyncio.Task | None = None
        self._conn_index = 0
        self.done = asyncio.Event()  # set when the source has published everything (replay end)
        self._snap_faults = SnapshotFaults(faults, self.stats.faults)

    # ------------------------------------------------------------------ lifecycle
    @property
    def ws_url(self) -> str:
        return f"ws://{self.host}:{self.port}"

    @property
    def rest_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def start(self) -> LocalVenue:
        app = web.Application()
        app.router.add_get("/stream", self._ws_combined)
        app.router.add_get("/ws/{streams:.*}", self._ws_raw)
        app.router.add_get("/ws", self._ws_raw)
        app.router.add_get("/api/v3/depth", self._depth)
        app.router.add_get("/api/v3/exchangeInfo", self._exchange_info)
        app.router.add_get("/api/v3/klines", self._klines)
        app.router.add_get("/api/v3/ping", self._ping)
        app.router.add_get("/api/v3/time", self._time)
        app.router.add_get("/api/v3/trades", self._recent_trades)
        app.router.add_get("/api/v3/ticker/price", self._ticker_price)
        app.router.add_get("/api/v3/ticker/bookTicker", self._book_ticker)
        from daemon.venue.orders import attach_order_api  # signed order endpoints (simulate; replay: -1002)
        self.orders = attach_order_api(app, self)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        self.port = self._runner.addresses[0][1]  # the ephemeral port when 0 was asked
        self._task = asyncio.create_task(self._run_source(), name="venue-source")
        if self.ping_interval_s > 0:
            self._heartbeat_task = asyncio.create_task(self._heartbeat(), name="venue-heartbeat")
        log.info("venue_started", ws_url=self.ws_url, rest_url=self.rest_url, source=type(self.source).__name__)
        return self

    def _may_start(self) -> bool:
        """``subscriber``: someone listens. ``snapshot``: someone listens and, if anyone listens to a depth stream,
        a depth snapshot was served (a trades-only client never fetches one and must not wait forever)."""
        if not self.has_subscribers():
            return False
        if self.start_on == "snapshot" and not self._snapshot_served.is_set():
            return not any("@depth" in s for c in self.clients for s in c.streams)
        return True

    async def _run_source(self) -> None:
        if self.start_on in ("subscriber", "snapshot"):
            while not self._may_start():
                self._start_check.clear()
                await self._start_check.wait()
        try:
            await self.source.run(self)
        except Exception:
            log.exception("venue_source_failed")
            raise
        finally:
            self.done.set()

    async def stop(self) -> None:
        if self._heartbeat_task is not None:
            self._heartbeat_task.cancel()
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass
        for c in list(self.clients):
            await c.ws.close()
        if self._runner is not None:
            await self._runner.cleanup()

    async def __aenter__(self) -> LocalVenue:
        return await self.start()

    async def __aexit__(self, *exc) -> None:
        await self.stop()

    async def close_clients(self, abrupt: bool = True, stream: str | None = None) -> None:
        """Drop every websocket connection (abruptly: no close frame, as a network failure would); with ``stream``,
        only the connections subscribed to it."""
        for c in list(self.clients):
            if stream is not None and stream not in c.streams:
                continue
            self._drop(c, abrupt)
            if not abrupt:
                await c.ws.close()

    def has_subscribers(self) -> bool:
        return any(c.streams for c in self.clients)

    async def wait_subscribers(self) -> None:
        while not self.has_subscribers():
            self._subscribed.clear()
            await self._subscribed.wait()

    # ------------------------------------------------------------------ websocket
    async def _ws_combined(self, request: web.Request) -> web.StreamResponse:
        names = [s for s in request.query.get("streams", "").split("/") if s]
        return await self._serve_ws(request, names, combined=True)

    async def _ws_raw(self, request: web.Request) -> web.StreamResponse:
        """``/ws``, ``/ws/<stream>[/<stream>...]`` and ``/ws/<id>``: stream-shaped parts subscribe, any other part
        (a client's connection id or listen key) is accepted and ignored, as Binance does; SUBSCRIBE follows."""
        parts = [s for s in request.match_info.get("streams", "").split("/") if s]
        names = [p for p in parts if _stream_shaped(p)]
        if len(names) < len(parts):
            log.info("venue_ws_path_ids_ignored", ids=[p for p in parts if not _stream_shaped(p)])
        return await self._serve_ws(request, names, combined=False)

    async def _serve_ws(self, request: web.Request, names: list[str], combined: bool) -> web.StreamResponse:
        bad = [n for n in names if not _valid_stream(n)]
        if bad:
            return _err(-1100, f"Invalid stream name(s): {', '.join(bad)}")
        n = len(set(names))
        if n > self.max_streams:
            # Binance documents the limit ("a single connection can listen to a maximum of 1024 streams") but not
            # how it refuses a URL over it: we refuse the handshake with HTTP 400 and the words SUBSCRIBE uses
            self.stats.ws_errors[2] += 1
            log.info("venue_ws_too_many_streams", streams=n, max_streams=self.max_streams)
            return _err(2, f"Invalid request: a connection listens to at most {self.max_streams} streams, "
                           f"the URL names {n}")
        ws = web.WebSocketResponse(autoping=False, max_msg_size=1 << 20)  # pings/pongs handled below
        await ws.prepare(request)
        self._conn_index += 1
        now = time.monotonic()
        client = _Client(ws, request.transport, combined, set(names),
                         FaultInjector(self.fault_cfg, self.stats.faults, self._conn_index), now, now)
        self.clients.add(client)
        self.stats.connections_total += 1
        self.stats.connections_open += 1
        if client.streams:
            self._subscribed.set()
            self._start_check.set()
        try:
            async for msg in ws:
                if msg.type == WSMsgType.TEXT:
                    await self._method(client, msg.data)
                elif msg.type == WSMsgType.PING:  # Binance answers a client's ping with its payload
                    await ws.pong(msg.data)
                elif msg.type == WSMsgType.PONG:
                    client.last_pong = time.monotonic()
                elif msg.type == WSMsgType.BINARY:
                    await self._method(client, msg.data)
        finally:
            if client in self.clients:
                self.clients.discard(client)
                self.stats.connections_open -= 1
        return ws

    async def _method(self, client: _Client, text: str | bytes) -> None:
        props = {"combined": client.combined}
        before = len(client.streams)
        reply = ws_request(text, client.streams, props, self.max_streams)
        client.combined = props["combined"]
        if "error" in reply:
            self.stats.ws_errors[reply["error"]["code"]] += 1
            log.info("venue_ws_request_refused", error=reply["error"], id=reply["id"])
        elif client.streams or len(client.streams) != before:
            self._subscribed.set()
            self._start_check.set()
        await client.ws.send_str(orjson.dumps(reply).decode())

    async def _heartbeat(self) -> None:
        """Binance's keepalive: a ping frame to every connection each ``ping_interval_s``; a connection that sent
        no pong for ``pong_timeout_s`` is dropped."""
        while True:
            await asyncio.sleep(self.ping_interval_s)
            now = time.monotonic()
            for c in list(self.clients):
                if now - c.last_pong > self.pong_timeout_s:
                    self.stats.pong_timeouts += 1
                    log.info("venue_pong_timeout", silent_s=round(now - c.last_pong, 1))
                    self._drop(c, abrupt=False)
                    t = asyncio.ensure_future(c.ws.close(code=1008, message=b"pong timeout"))
                    self._bg.add(t)
                    t.add_done_callback(self._bg.discard)
                    continue
                try:  # bounded: a client whose socket buffer is full must not hold up everyone's ping
                    await asyncio.wait_for(c.ws.ping(str(int(time.time() * 1000)).encode()), self.ping_interval_s)
                    self.stats.pings_sent += 1
                except asyncio.TimeoutError:
                    pass
                except (ConnectionError, RuntimeError):
                    self._drop(c, abrupt=True)

    def _drop(self, client: _Client, abrupt: bool = True) -> None:
        if client in self.clients:
            self.clients.discard(client)
            self.stats.connections_open -= 1
        if abrupt and client.transport is not None:
            client.transport.abort()

    async def publish(self, f: OutFrame) -> None:
        """Send one frame to every client subscribed to its stream, through that client's fault injector.

        Awaited sends give backpressure: a replay at speed 0 runs as fast as the slowest client reads."""
        if f.kind == "trade":  # kept for /api/v3/trades and /api/v3/ticker/price
            q = self._trades.get(f.symbol)
            if q is None:
                q = self._trades[f.symbol] = deque(maxlen=RECENT_TRADES)
            q.append(f)
        for c in list(self.clients):
            if f.stream not in c.streams:
                continue
            act = c.faults.decide(f.kind, time.monotonic() - c.opened, f.ids, f.combined)
            try:
                if act.stall_s:
                    await asyncio.sleep(act.stall_s)
                if act.garbage_before is not None:
                    await c.ws.send_frame(act.garbage_before, WSMsgType.TEXT)
                if act.forged_before is not None:
                    await c.ws.send_frame(_bare(act.forged_before, c.combined), WSMsgType.TEXT)
                if act.send:
                    payload = f.combined if c.combined else (f.data or orjson.dumps(orjson.loads(f.combined)["data"]))
                    for _ in range(act.send):
                        await c.ws.send_frame(payload, WSMsgType.TEXT)
                    self.stats.frames_sent[f.stream] += act.send
                if act.forged_after is not None:
                    await c.ws.send_frame(_bare(act.forged_after, c.combined), WSMsgType.TEXT)
            except (ConnectionError, RuntimeError) as e:
                log.info("venue_client_gone", error=repr(e))
                self._drop(c, abrupt=True)
                continue
            if act.close_after:
                log.info("venue_fault_close", conn=c.faults.sent)
                self._drop(c, abrupt=True)

    # ------------------------------------------------------------------ REST
    def _symbol(self, request: web.Request) -> str | web.Response:
        sym = request.query.get("symbol")
        if not sym:
            return _err(-1102, "Mandatory parameter 'symbol' was not sent, was empty/null, or malformed.")
        if sym not in self.source.symbols:
            return _err(-1121, "Invalid symbol.")
        return sym

    def _int(self, request: web.Request, name: str, default: int | None) -> int | None | web.Response:
        raw = request.query.get(name)
        if raw is None or raw == "":
            return default
        if not raw.isdigit() or len(raw) > 20:
            return _err(-1100, f"Illegal characters found in parameter '{name}'; legal range is '^[0-9]{{1,20}}$'.")
        return int(raw)

    def _symbol_limit(self, request: web.Request, default: int, most: int) -> tuple[str, int] | web.Response:
        """``symbol`` and ``limit`` (1..``most``) of a market-data request, or Binance's error reply."""
        sym = self._symbol(request)
        if isinstance(sym, web.Response):
            return sym
        limit = self._int(request, "limit", default)
        if isinstance(limit, web.Response):
            return limit
        if not 1 <= limit <= most:
            return _err(-1130, "Data sent for parameter 'limit' is not valid.")
        return sym, limit

    def _count(self, request: web.Request) -> None:
        self.stats.rest_requests[request.path] += 1

    async def _depth(self, request: web.Request) -> web.Response:
        self._count(request)
        args = self._symbol_limit(request, 100, DEPTH_LIMIT_MAX)
        if isinstance(args, web.Response):
            return self._counted(args)
        sym, limit = args
        snap = self.source.depth(sym, limit)
        if snap is None:
            return self._counted(_err(-1001, "Internal error; unable to process your request. Please try again.",
                                      503))
        self._snapshot_served.set()
        self._start_check.set()
        return _json(self._snap_faults.serve(sym, snap))

    async def _klines(self, request: web.Request) -> web.Response:
        self._count(request)
        sym = self._symbol(request)
        if isinstance(sym, web.Response):
            return self._counted(sym)
        interval = request.query.get("interval")
        if not interval:
            return self._counted(_err(-1102, "Mandatory parameter 'interval' was not sent, was empty/null, or "
                                             "malformed."))
        if interval not in KLINE_INTERVALS:
            return self._counted(_err(-1120, "Invalid interval."))
        vals = {}
        for name, default in (("startTime", None), ("endTime", None), ("limit", 500)):
            v = self._int(request, name, default)
            if isinstance(v, web.Response):
                return self._counted(v)
            vals[name] = v
        if not 1 <= vals["limit"] <= 1000:
            return self._counted(_err(-1130, "Data sent for parameter 'limit' is not valid."))
        if vals["startTime"] is not None and vals["endTime"] is not None and vals["startTime"] > vals["endTime"]:
            return self._counted(_err(-1023, "Start time is greater than end time."))
        rows = self.source.klines(sym, interval, vals["startTime"], vals["endTime"], vals["limit"])
        return _json(rows)

    async def _exchange_info(self, request: web.Request) -> web.Response:
        self._count(request)
        info = self.source.exchange_info(self.source.server_time_ms())
        want = self._symbols(request)  # symbol=X or symbols=["X","Y"]
        if isinstance(want, web.Response):
            return self._counted(want)
        if want is not None:
            info["symbols"] = [s for s in info["symbols"] if s["symbol"] in want]
        return _json(info)

    async def _ping(self, request: web.Request) -> web.Response:
        self._count(request)
        return _json({})

    async def _time(self, request: web.Request) -> web.Response:
        self._count(request)
        return _json({"serverTime": self.source.server_time_ms()})

    def _symbols(self, request: web.Request) -> list[str] | None | web.Response:
        """``symbol=X`` -> [X]; ``symbols=["X","Y"]`` -> [X, Y]; neither -> None (every symbol)."""
        if "symbol" in request.query:
            sym = self._symbol(request)
            return sym if isinstance(sym, web.Response) else [sym]
        raw = request.query.get("symbols")
        if raw is None:
            return None
        try:
            syms = orjson.loads(raw)
        except orjson.JSONDecodeError:
            syms = None
        if not isinstance(syms, list) or not syms or not all(isinstance(x, str) for x in syms):
            return _err(-1100, "Illegal characters found in parameter 'symbols'; expected a JSON list of symbols.")
        if any(x not in self.source.symbols for x in syms):
            return _err(-1121, "Invalid symbol.")
        return syms

    def _trade_payloads(self, symbol: str) -> list[dict]:
        out = []
        for f in self._trades.get(symbol, ()):
            out.append(orjson.loads(f.data) if f.data is not None else orjson.loads(f.combined)["data"])
        return out

    def _last_price(self, symbol: str) -> str | None:
        q = self._trades.get(symbol)
        if q:
            f = q[-1]
            return (orjson.loads(f.data) if f.data is not None else orjson.loads(f.combined)["data"])["p"]
        rows = self.source.klines(symbol, "1m", None, None, 1)  # no trade seen yet: the last bar's close
        return rows[-1][4] if rows else None

    async def _recent_trades(self, request: web.Request) -> web.Response:
        """``/api/v3/trades``: the most recent ``limit`` (default 500, max 1000) trades, oldest first."""
        self._count(request)
        args = self._symbol_limit(request, 500, TRADES_LIMIT_MAX)
        if isinstance(args, web.Response):
            return self._counted(args)
        sym, limit = args
        rows = []
        for t in self._trade_payloads(sym)[-limit:]:
            rows.append({"id": t["t"], "price": t["p"], "qty": t["q"],
                         "quoteQty": f"{float(t['p']) * float(t['q']):.8f}", "time": t["T"],
                         "isBuyerMaker": t["m"], "isBestMatch": True})
        return _json(rows)

    async def _ticker_price(self, request: web.Request) -> web.Response:
        """``/api/v3/ticker/price``: the last trade price (before any trade: the last bar's close)."""
        self._count(request)
        syms = self._symbols(request)
        if isinstance(syms, web.Response):
            return self._counted(syms)
        out = []
        for s in (self.source.symbols if syms is None else syms):
            px = self._last_price(s)
            if px is not None:
                out.append({"symbol": s, "price": px})
        if "symbol" in request.query:
            if not out:
                return self._counted(_err(-1001, "Internal error; unable to process your request. Please try "
                                                 "again.", 503))
            return _json(out[0])
        return _json(out)

    async def _book_ticker(self, request: web.Request) -> web.Response:
        """``/api/v3/ticker/bookTicker``: best bid and ask of the book the stream clients hold."""
        self._count(request)
        syms = self._symbols(request)
        if isinstance(syms, web.Response):
            return self._counted(syms)
        out = []
        for s in (self.source.symbols if syms is None else syms):
            d = self.source.depth(s, 1)
            if d is None:
                continue
            bid = d["bids"][0] if d["bids"] else ["0.00000000", "0.00000000"]
            ask = d["asks"][0] if d["asks"] else ["0.00000000", "0.00000000"]
            out.append({"symbol": s, "bidPrice": bid[0], "bidQty": bid[1], "askPrice": ask[0], "askQty": ask[1]})
        if "symbol" in request.query:
            if not out:
                return self._counted(_err(-1001, "Internal error; unable to process your request. Please try "
                                                 "again.", 503))
            return _json(out[0])
        return _json(out)

    def _counted(self, resp: web.Response) -> web.Response:
        try:
            code = orjson.loads(resp.body)["code"]
        except Exception:  # noqa: BLE001 - counting only
            code = "?"
        self.stats.rest_errors[code] += 1
        return resp


# ---------------------------------------------------------------------------------------------- CLI
def add_arguments(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--recording", help="replay this recording (a .gz file or a directory of them)")
    src.add_argument("--simulate", action="store_true", help="serve the built-in market simulator")
    p.add_argument("--config", help="config.toml (simulator/fault sections; defaults otherwise)")
    p.add_argument("--symbols", default="BTCUSDT", help="simulated symbols, comma separated")
    p.add_argument("--speed", type=float, default=1.0, help="replay speed factor; 0 = as fast as possible")
    p.add_argument("--start-on", default="snapshot", choices=("immediate", "subscriber", "snapshot"))
    p.add_argument("--history", default="simulated",
                   help="replay: 1m klines served from before the recording starts: 'simulated' (the simulator's "
                        "history_days, ending at the first trade price; default), a klines CSV (moved and scaled "
                        "to the recording), or 'none' (only bars of replayed trades: empty until the replay runs)")
    p.add_argument("--ping-interval", type=float, default=PING_INTERVAL_S,
                   help="seconds between the server's websocket pings (0 = never)")
    p.add_argument("--pong-timeout", type=float, default=PONG_TIMEOUT_S,
                   help="drop a connection that sent no pong for this many seconds")
    p.add_argument("--max-streams", type=int, default=None,
                   help=f"most streams per websocket connection (default: [venue] max_streams, {MAX_STREAMS}); a "
                        "URL naming more is refused with HTTP 400, a SUBSCRIBE beyond it with error 2")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=9443)
    p.add_argument("--drop-prob", type=float, default=None)
    p.add_argument("--dup-prob", type=float, default=None)
    p.add_argument("--garbage-prob", type=float, default=None)
    p.add_argument("--stall-every", type=float, default=None, help="seconds between stalls")
    p.add_argument("--stall-s", type=float, default=None)
    p.add_argument("--close-every", type=float, default=None, help="seconds between abrupt closes")
    p.add_argument("--fault-seed", type=int, default=None)


def _fault_cfg(args: argparse.Namespace, base: FaultConfig) -> FaultConfig:
    from market.cfgbase import build_section

    raw = {k: getattr(base, k) for k in base.__dataclass_fields__}
    for arg, key in (("drop_prob", "drop_prob"), ("dup_prob", "dup_prob"), ("garbage_prob", "garbage_prob"),
                     ("stall_every", "stall_every_s"), ("stall_s", "stall_s"), ("close_every", "close_every_s"),
                     ("fault_seed", "seed")):
        v = getattr(args, arg)
        if v is not None:
            raw[key] = v
    return build_section(FaultConfig, raw, "faults", "command line")


def main(args: argparse.Namespace) -> int:
    from market.cfgbase import ConfigError
    from daemon.config import load_config

    try:
        cfg = load_config(args.config)
        faults = _fault_cfg(args, cfg.faults)
    except ConfigError as e:
        print(f"tradingd venue: {e}")
        return 2
    max_streams = cfg.venue.max_streams if args.max_streams is None else args.max_streams
    if max_streams < 1:
        print(f"tradingd venue: --max-streams must be >= 1, got {max_streams}")
        return 2
    if args.recording:
        history = None
        if args.history not in ("simulated", "none"):
            from engines.data import KlinesError, load_klines_csv
            try:
                history = load_klines_csv(args.history)
            except (KlinesError, OSError, ValueError) as e:
                print(f"tradingd venue: cannot load --history: {e}")
                return 2
        try:
            source: Source = ReplaySource(args.recording, speed=args.speed, sim_cfg=cfg.simulator, history=history,
                                          simulated_history=args.history == "simulated")
        except (OSError, ValueError) as e:
            print(f"tradingd venue: cannot load recording: {e}")
            return 2
    else:
        source = SimulatorSource([s.strip().upper() for s in args.symbols.split(",") if s.strip()], cfg.simulator)

    async def serve() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        async with LocalVenue(source, faults, args.host, args.port,
                              start_on=args.start_on if args.recording else "immediate",
                              ping_interval_s=args.ping_interval, pong_timeout_s=args.pong_timeout,
                              max_streams=max_streams) as venue:
            print(f"venue: websocket {venue.ws_url}/stream?streams=... or {venue.ws_url}/ws + SUBSCRIBE  "
                  f"REST {venue.rest_url}/api/v3/...", flush=True)
            await stop.wait()
            print(f"venue: stats {dict(venue.stats.frames_sent)} faults {venue.stats.faults.as_dict()}")

    asyncio.run(serve())
    return 0
