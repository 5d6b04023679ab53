"""The local venue: an aiohttp server speaking Binance spot's wire format on loopback.

Websocket: ``/stream?streams=a/b/c`` (combined envelope ``{"stream":..,"data":..}``) and ``/ws/<stream>`` (bare
payloads), plus the ``SUBSCRIBE``/``UNSUBSCRIBE``/``LIST_SUBSCRIPTIONS`` methods. REST: ``/api/v3/depth``,
``/api/v3/exchangeInfo``, ``/api/v3/klines``, ``/api/v3/ping``, ``/api/v3/time``, errors as Binance's
``{"code": -1121, "msg": "Invalid symbol."}`` with HTTP 400. Behind it one source: a recording replay
(:class:`daemon.venue.replay.ReplaySource`) or the market simulator (:class:`SimulatorSource`). Outgoing frames
pass a per-connection :class:`daemon.venue.faults.FaultInjector`.

Tests and the daemon use it as ``async with LocalVenue(source) as venue: venue.ws_url, venue.rest_url``.
"""
from __future__ import annotations

import argparse
import asyncio
import signal
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Protocol

import orjson
import structlog
from aiohttp import WSMsgType, web

from daemon.config import FaultConfig, SimulatorConfig
from daemon.events import TIMEFRAME_SECONDS
from daemon.venue.faults import FaultInjector, FaultStats
from daemon.venue.replay import OutFrame, ReplaySource
from daemon.venue.simulator import MarketSimulator, exchange_info

log = structlog.get_logger(__name__)

KLINE_INTERVALS = tuple(TIMEFRAME_SECONDS)
DEPTH_LIMIT_MAX = 5000


class Source(Protocol):
    symbols: list[str]

    async def run(self, venue: LocalVenue) -> None: ...
    def depth(self, symbol: str, limit: int) -> dict | None: ...
    def klines(self, symbol: str, interval: str, start_ms: int | None, end_ms: int | None,
               limit: int) -> list[list]: ...
    def exchange_info(self, server_ms: int) -> dict: ...
    def server_time_ms(self) -> int: ...


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
        """The market's time: up to where the simulators have run and published (what the clients have seen)."""
        return self._t_ns

    def open(self) -> None:
        """Start the event clock (once)."""
        if self._wall0 is None:
            self._wall0 = time.monotonic_ns()

    def depth(self, symbol: str, limit: int) -> dict | None: ...
    def klines(self, symbol: str, interval: str, start_ms: int | None, end_ms: int | None,
               limit: int) -> list[list]: ...
    def exchange_info(self, server_ms: int) -> dict: ...
    def server_time_ms(self) -> int: ...


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

    async def run(self, venue: LocalVenue) -> None:
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
    faults: FaultStats = field(default_factory=FaultStats)


@dataclass(eq=False)
class _Client:
    ws: web.WebSocketResponse
    transport: asyncio.BaseTransport | None
    combined: bool
    streams: set[str]
    faults: FaultInjector
    opened: float


def _err(code: int, msg: str, status: int = 400) -> web.Response:
    return web.Response(body=orjson.dumps({"code": code, "msg": msg}), status=status,
                        content_type="application/json")


def _json(obj) -> web.Response:
    return web.Response(body=orjson.dumps(obj), content_type="application/json")


def _valid_stream(name: str) -> bool:
    sym, _, rest = name.partition("@")
    return bool(sym) and sym.isalnum() and rest in ("trade", "aggTrade", "depth", "depth@100ms", "depth@1000ms",
                                                      "bookTicker")


class LocalVenue:
    def __init__(self, source: Source, faults: FaultConfig = FaultConfig(), host: str = "127.0.0.1",
                 port: int = 0, start_on: str | None = None) -> None:
        if start_on is None:  # a replay waits for its first synced client; a live market never waits
            start_on = "snapshot" if isinstance(source, ReplaySource) else "immediate"
        if start_on not in ("immediate", "subscriber", "snapshot"):
            raise ValueError(f"start_on: {start_on!r} is not immediate|subscriber|snapshot")
        self.source = source
        self.fault_cfg = faults
        self.host, self.port = host, port
        self.start_on = start_on
        self.stats = VenueStats()
        self.clients: set[_Client] = set()
        self._subscribed = asyncio.Event()
        self._snapshot_served = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self._task: asyncio.Task | None = None
        self._conn_index = 0
        self.done = asyncio.Event()  # set when the source has published everything (replay end)

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
        from daemon.venue.orders import attach_order_api  # signed order endpoints (simulate; replay: -1002)
        self.orders = attach_order_api(app, self)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # the ephemeral port when 0 was asked
        self._task = asyncio.create_task(self._run_source(), name="venue-source")
        log.info("venue_started", ws_url=self.ws_url, rest_url=self.rest_url, source=type(self.source).__name__)
        return self

    async def _run_source(self) -> None:
        if self.start_on in ("subscriber", "snapshot"):
            await self._subscribed.wait()
        if self.start_on == "snapshot":
            await self._snapshot_served.wait()
        try:
            await self.source.run(self)
        except Exception:
            log.exception("venue_source_failed")
            raise
        finally:
            self.done.set()

    async def stop(self) -> None:
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

    async def close_clients(self, abrupt: bool = True) -> None:
        """Drop every websocket connection (abruptly: no close frame, as a network failure would)."""
        for c in list(self.clients):
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
        names = [s for s in request.match_info.get("streams", "").split("/") if s]
        return await self._serve_ws(request, names, combined=False)

    async def _serve_ws(self, request: web.Request, names: list[str], combined: bool) -> web.StreamResponse:
        bad = [n for n in names if not _valid_stream(n)]
        if bad:
            return _err(-1100, f"Invalid stream name(s): {', '.join(bad)}")
        ws = web.WebSocketResponse(autoping=True, max_msg_size=1 << 20)
        await ws.prepare(request)
        self._conn_index += 1
        client = _Client(ws, request.transport, combined, set(names),
                         FaultInjector(self.fault_cfg, self.stats.faults, self._conn_index), time.monotonic())
        self.clients.add(client)
        self.stats.connections_total += 1
        self.stats.connections_open += 1
        if client.streams:
            self._subscribed.set()
        try:
            async for msg in ws:
                if msg.type == WSMsgType.TEXT:
                    await self._method(client, msg.data)
        finally:
            if client in self.clients:
                self.clients.discard(client)
                self.stats.connections_open -= 1
        return ws

    async def _method(self, client: _Client, text: str) -> None:
        try:
            req = orjson.loads(text)
            method, rid = req["method"], req.get("id")
            params = req.get("params") or []
        except (orjson.JSONDecodeError, KeyError, TypeError):
            await client.ws.send_bytes(orjson.dumps({"code": 3, "msg": "Invalid JSON: expected a method call"}))
            return
        if method in ("SUBSCRIBE", "UNSUBSCRIBE"):
            if not isinstance(params, list) or not all(isinstance(p, str) and _valid_stream(p) for p in params):
                await client.ws.send_str(orjson.dumps({"error": {"code": 2, "msg": "Invalid request"},
                                                       "id": rid}).decode())
                return
            if method == "SUBSCRIBE":
                client.streams.update(params)
                self._subscribed.set()
            else:
                client.streams.difference_update(params)
            await client.ws.send_str(orjson.dumps({"result": None, "id": rid}).decode())
        elif method == "LIST_SUBSCRIPTIONS":
            await client.ws.send_str(orjson.dumps({"result": sorted(client.streams), "id": rid}).decode())
        else:
            await client.ws.send_str(orjson.dumps({"error": {"code": 2, "msg": f"Unknown method {method}"},
                                                   "id": rid}).decode())

    def _drop(self, client: _Client, abrupt: bool = True) -> None:
        if client in self.clients:
            self.clients.discard(client)
            self.stats.connections_open -= 1
        if abrupt and client.transport is not None:
            client.transport.abort()

    async def publish(self, f: OutFrame) -> None:
        """Send one frame to every client subscribed to its stream, through that client's fault injector.

        Awaited sends give backpressure: a replay at speed 0 runs as fast as the slowest client reads."""
        for c in list(self.clients):
            if f.stream not in c.streams:
                continue
            act = c.faults.decide(f.kind, time.monotonic() - c.opened, f.ids)
            try:
                if act.stall_s:
                    await asyncio.sleep(act.stall_s)
                if act.garbage_before is not None:
                    await c.ws.send_frame(act.garbage_before, WSMsgType.TEXT)
                if act.send:
                    payload = f.combined if c.combined else (f.data or orjson.dumps(orjson.loads(f.combined)["data"]))
                    for _ in range(act.send):
                        await c.ws.send_frame(payload, WSMsgType.TEXT)
                    self.stats.frames_sent[f.stream] += act.send
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

    def _count(self, request: web.Request) -> None:
        self.stats.rest_requests[request.path] += 1

    async def _depth(self, request: web.Request) -> web.Response:
        self._count(request)
        sym = self._symbol(request)
        if isinstance(sym, web.Response):
            return self._counted(sym)
        limit = self._int(request, "limit", 100)
        if isinstance(limit, web.Response):
            return self._counted(limit)
        if not 1 <= limit <= DEPTH_LIMIT_MAX:
            return self._counted(_err(-1130, "Data sent for parameter 'limit' is not valid."))
        snap = self.source.depth(sym, limit)
        if snap is None:
            return self._counted(_err(-1001, "Internal error; unable to process your request. Please try again.",
                                      503))
        self._snapshot_served.set()
        return _json(snap)

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
            return self._counted(_err(-1130, "Data sent for parameter 'startTime' is not valid."))
        rows = self.source.klines(sym, interval, vals["startTime"], vals["endTime"], vals["limit"])
        return _json(rows)

    async def _exchange_info(self, request: web.Request) -> web.Response:
        self._count(request)
        info = self.source.exchange_info(self.source.server_time_ms())
        want = request.query.get("symbol")
        if want:
            if want not in self.source.symbols:
                return self._counted(_err(-1121, "Invalid symbol."))
            info["symbols"] = [s for s in info["symbols"] if s["symbol"] == want]
        return _json(info)

    async def _ping(self, request: web.Request) -> web.Response:
        self._count(request)
        return _json({})

    async def _time(self, request: web.Request) -> web.Response:
        self._count(request)
        return _json({"serverTime": self.source.server_time_ms()})

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
    from daemon.cfgbase import build_section

    raw = {k: getattr(base, k) for k in base.__dataclass_fields__}
    for arg, key in (("drop_prob", "drop_prob"), ("dup_prob", "dup_prob"), ("garbage_prob", "garbage_prob"),
                     ("stall_every", "stall_every_s"), ("stall_s", "stall_s"), ("close_every", "close_every_s"),
                     ("fault_seed", "seed")):
        v = getattr(args, arg)
        if v is not None:
            raw[key] = v
    return build_section(FaultConfig, raw, "faults", "command line")


def main(args: argparse.Namespace) -> int:
    from daemon.cfgbase import ConfigError
    from daemon.config import load_config

    try:
        cfg = load_config(args.config)
        faults = _fault_cfg(args, cfg.faults)
    except ConfigError as e:
        print(f"tradingd venue: {e}")
        return 2
    if args.recording:
        try:
            source: Source = ReplaySource(args.recording, speed=args.speed, sim_cfg=cfg.simulator)
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
                              start_on=args.start_on if args.recording else "immediate") as venue:
            print(f"venue: websocket {venue.ws_url}/stream?streams=...  REST {venue.rest_url}/api/v3/...",
                  flush=True)
            await stop.wait()
            print(f"venue: stats {dict(venue.stats.frames_sent)} faults {venue.stats.faults.as_dict()}")

    asyncio.run(serve())
    return 0
