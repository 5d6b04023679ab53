"""Binance combined-stream websocket client: it only moves bytes. Connect, subscribe, read frames, fetch REST
depth snapshots when the protocol asks, reconnect.

The same code talks to the real venue, the spot testnet or the local venue: only the base URLs differ. The stream
names the protocol gives (``<sym>@trade/<sym>@depth@100ms[/<sym>@bookTicker]`` for every symbol) are subscribed in
the URL, so a reconnect restores them. A venue limits the streams of one connection (Binance: 1024), so the symbols
are split (:func:`group_streams`) across as many connections as ``feed.max_streams_per_connection`` needs, all
streams of a symbol on the same one: each connection has its own reconnect loop and stale-stream watchdog, and a
lost connection stales and resyncs only its own symbols' books while the others keep trading. Everything that knows Binance's market-data
rules (decoding, the plausibility guard, the order books and their snapshot/diff sync, the bookTicker oracle)
is :class:`daemon.binance.protocol.MarketDataProtocol`, sans I/O: each frame goes in with its receive time, and
what comes out goes to the consumer, except :class:`SnapshotNeeded` requests, which this client answers with a
``GET /api/v3/depth`` (one fetch loop per symbol until the protocol is satisfied). A dead connection (an error,
or silence longer than ``stale_after_s``) is reported to the protocol (its books go stale) and reconnects
with exponential backoff and full jitter. Every raw frame and every REST snapshot body goes to ``on_raw`` (the
recorder).

Events reach the consumer after the book has processed them, either through ``on_event`` (called inline, so the
book it reads is exactly the state after that event) or, without a callback, through the bounded ``queue``.
The books are the protocol's: ``feed.books`` is its read-only view.
"""
from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import structlog
import websockets
from websockets.asyncio.client import connect

from daemon.binance.protocol import FeedStats, MarketDataProtocol, SnapshotNeeded
from daemon.config import FeedConfig
from market.book import BookView
from market.events import BookStatus, BookTicker, DepthSnapshot, DepthUpdate, Trade

__all__ = ["BinanceFeed", "BookStatus", "FeedStats", "backoff_delay", "group_streams"]

log = structlog.get_logger(__name__)

RawHook = Callable[..., None]  # (recv_ns, raw) for frames; (recv_ns, raw, symbol) for REST snapshots


def backoff_delay(attempt: int, initial_s: float, max_s: float, rng: random.Random) -> float:
    """Exponential backoff with full jitter: uniform in [0, min(max, initial * 2**attempt)]."""
    return rng.uniform(0.0, min(max_s, initial_s * (2.0 ** min(attempt, 60))))


def group_streams(symbol_streams: Mapping[str, Sequence[str]], max_streams: int
                  ) -> list[tuple[tuple[str, ...], tuple[str, ...]]]:
    """Split symbols into connections of at most ``max_streams`` streams, every stream of a symbol in the same
    one: ``[(symbols, streams), ...]`` in the given order, each connection filled before the next is opened (341
    symbols x 3 streams fit one 1024-stream connection, 342 need two). A symbol with more streams than a connection
    may carry cannot be subscribed: ValueError."""
    if max_streams < 1:
        raise ValueError(f"max_streams must be >= 1, got {max_streams}")
    groups: list[tuple[tuple[str, ...], tuple[str, ...]]] = []
    syms: list[str] = []
    streams: list[str] = []
    for sym, names in symbol_streams.items():
        if len(names) > max_streams:
            raise ValueError(f"{sym} has {len(names)} streams, more than the {max_streams} one connection carries")
        if streams and len(streams) + len(names) > max_streams:
            groups.append((tuple(syms), tuple(streams)))
            syms, streams = [], []
        syms.append(sym)
        streams.extend(names)
    if syms:
        groups.append((tuple(syms), tuple(streams)))
    return groups


@dataclass(eq=False)
class Connection:
    """One websocket connection of the feed and its counters (/status ``feed.connections``, /metrics)."""

    index: int
    symbols: tuple[str, ...]
    streams: tuple[str, ...]
    url: str
    connects: int = 0
    reconnects: int = 0
    stale_timeouts: int = 0
    frames: int = 0
    errors: Counter = field(default_factory=Counter)  # connection failures by reason (http_<status>, network, ...)
    connected: bool = False
    ws: Any = None
    last_recv: float = 0.0
    wake: asyncio.Event = field(default_factory=asyncio.Event)  # stop() cuts a reconnect delay short

    def as_dict(self) -> dict[str, Any]:
        return {"index": self.index, "symbols": list(self.symbols), "streams": len(self.streams),
                "connects": self.connects, "reconnects": self.reconnects, "stale_timeouts": self.stale_timeouts,
                "frames": self.frames, "errors": dict(self.errors), "connected": self.connected}


class BinanceFeed:
    def __init__(self, symbols: Sequence[str], ws_url: str, rest_url: str, cfg: FeedConfig = FeedConfig(),
                 on_event: Callable[[Any], None] | None = None, on_raw: RawHook | None = None, *,
                 extra_streams: Sequence[str] = (), depth_ms: int = 100, seed: int | None = None,
                 clock: Callable[[], int] = time.time_ns, filters: dict | None = None, speed: float = 1.0) -> None:
        if not symbols:
            raise ValueError("BinanceFeed needs at least one symbol")
        self.symbols = [s.upper() for s in symbols]
        self.ws_base = ws_url.rstrip("/")
        self.rest_base = rest_url.rstrip("/")
        self.cfg = cfg
        self.on_event = on_event
        self.on_raw = on_raw
        self.clock = clock
        # the protocol owns the books, the guard and the oracle; this client feeds it frames and snapshots
        self.protocol = MarketDataProtocol(self.symbols, cfg, filters=filters, speed=speed,
                                           extra_streams=extra_streams, depth_ms=depth_ms)
        self.queue: asyncio.Queue = asyncio.Queue(cfg.queue_size)
        self.stats: FeedStats = self.protocol.stats  # one counter set: transport fields are counted here
        self.streams = self.protocol.streams
        self.connections = [
            Connection(i, syms, names, f"{self.ws_base}/stream?streams={'/'.join(names)}")
            for i, (syms, names) in enumerate(group_streams(self.protocol.symbol_streams,
                                                            cfg.max_streams_per_connection))]
        self.url = self.connections[0].url  # the first (with everything in one connection, the only) URL
        self._rng = random.Random(seed)
        self._stopping = False
        self._http: aiohttp.ClientSession | None = None
        self._fetching: dict[str, asyncio.Task] = {}
        self.connected = asyncio.Event()  # set while EVERY connection is up
        self._close_task: asyncio.Task | None = None  # stop()'s ws.close(), awaited by run() before it returns

    # ------------------------------------------------------------------ lifecycle
    def stop(self) -> None:
        """Ask run() to finish: closes every socket and ends the reconnect loops."""
        self._stopping = True
        for c in self.connections:
            c.wake.set()
        open_ws = [c.ws for c in self.connections if c.ws is not None]
        if open_ws and self._close_task is None:
            # held, not fire-and-forget: the loop keeps only weak references to tasks, and run() awaits it
            self._close_task = asyncio.get_running_loop().create_task(self._close_all(open_ws), name="feed-close")

    @staticmethod
    async def _close_all(sockets: list[Any]) -> None:
        await asyncio.gather(*(ws.close() for ws in sockets))  # together: each may wait its close_timeout

    async def run(self) -> None:
        """Connect, stream, reconnect until stop(), one loop per connection. Only cancellation or stop() ends it."""
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
            self._http = http
            if len(self.connections) == 1:
                await self._run_connection(self.connections[0])
            else:
                tasks = [asyncio.create_task(self._run_connection(c), name=f"feed-connection-{c.index}")
                         for c in self.connections]
                try:
                    await asyncio.gather(*tasks)
                finally:  # cancelled, or one loop failed: none outlives run()
                    for t in tasks:
                        t.cancel()
                    await asyncio.gather(*tasks, return_exceptions=True)
        self._http = None
        if self._close_task is not None:
            await self._close_task  # the close stop() started has finished (its errors surface) when run() ends

    async def _run_connection(self, c: Connection) -> None:
        attempt = 0
        stats = self.stats
        while not self._stopping:
            got_frames = False
            try:
                async with connect(c.url, max_size=1 << 24, open_timeout=10, close_timeout=1,
                                   ping_interval=20, ping_timeout=20, compression=None) as ws:
                    c.ws = ws
                    if self._stopping:  # stop() came while this connection was opening
                        break
                    stats.connects += 1
                    c.connects += 1
                    c.connected = True
                    if all(x.connected for x in self.connections):
                        self.connected.set()
                    log.info("feed_connected", connection=c.index, symbols=len(c.symbols), streams=len(c.streams),
                             url=c.url[:200])
                    got_frames = await self._session(c, ws)
            except websockets.exceptions.InvalidStatus as e:  # the venue refused the handshake (e.g. too many streams)
                status = e.response.status_code
                c.errors[f"http_{status}"] += 1
                log.warning("feed_connection_refused", connection=c.index, status=status,
                            body=bytes(e.response.body or b"")[:200], streams=len(c.streams))
            except (OSError, asyncio.TimeoutError, websockets.exceptions.WebSocketException) as e:
                c.errors["network"] += 1
                log.warning("feed_connection_lost", connection=c.index, error=repr(e)[:200])
            finally:
                c.ws = None
                c.connected = False
                self.connected.clear()
                self._on_disconnect(c)
            if self._stopping:
                break
            attempt = 0 if got_frames else attempt + 1
            delay = backoff_delay(attempt, self.cfg.reconnect_initial_s, self.cfg.reconnect_max_s, self._rng)
            stats.reconnects += 1
            c.reconnects += 1
            log.info("feed_reconnect", connection=c.index, delay_s=round(delay, 3), attempt=attempt)
            c.wake.clear()
            try:
                await asyncio.wait_for(c.wake.wait(), delay)
            except asyncio.TimeoutError:
                pass

    # ------------------------------------------------------------------ one connection
    async def _session(self, c: Connection, ws: Any) -> bool:
        got = False
        c.last_recv = time.monotonic()
        watchdog = asyncio.create_task(self._watchdog(c, ws), name=f"feed-watchdog-{c.index}")
        for req in self.protocol.connection_made(self.clock(), c.symbols):
            self._start_fetch(req.symbol)
        try:
            while True:
                try:
                    raw = await ws.recv(decode=False)
                except websockets.exceptions.ConnectionClosedOK:
                    return got
                got = True
                c.last_recv = time.monotonic()
                c.frames += 1
                await self._on_frame(raw, self.clock())
        except websockets.exceptions.ConnectionClosed as e:
            log.warning("feed_connection_closed", connection=c.index, code=getattr(e.rcvd, "code", None))
            return got
        finally:
            watchdog.cancel()

    async def _watchdog(self, c: Connection, ws: Any) -> None:
        limit = self.cfg.stale_after_s
        while True:
            await asyncio.sleep(limit / 4.0)
            silent = time.monotonic() - c.last_recv
            if silent > limit:
                self.stats.stale_timeouts += 1
                c.stale_timeouts += 1
                log.warning("feed_stale_stream", connection=c.index, silent_s=round(silent, 3))
                await ws.close(code=1001, reason="stale")
                return

    def _on_disconnect(self, c: Connection) -> None:
        for sym in c.symbols:
            t = self._fetching.pop(sym, None)
            if t is not None:
                t.cancel()
        for ev in self.protocol.connection_lost(self.clock(), c.symbols):
            self._emit_now(ev)

    @property
    def books(self) -> Mapping[str, BookView]:
        """The protocol's books (read-only view)."""
        return self.protocol.books

    # ------------------------------------------------------------------ frames
    async def _on_frame(self, raw: bytes, recv_ns: int) -> None:
        if self.on_raw is not None:
            self.on_raw(recv_ns, raw)
        inline = self.on_event
        for ev in self.protocol.receive_frame(raw, recv_ns):
            if type(ev) is SnapshotNeeded:
                self._start_fetch(ev.symbol)
            elif inline is not None:
                inline(ev)  # what _emit does with a callback, without a coroutine per event
            else:
                await self._emit(ev)

    async def _emit(self, ev: Any) -> None:
        if self.on_event is not None:
            self.on_event(ev)
            return
        q = self.queue
        if q.full():
            self.stats.queue_full_waits += 1
        await q.put(ev)
        n = q.qsize()
        if n > self.stats.queue_depth_max:
            self.stats.queue_depth_max = n

    def _emit_now(self, ev: Any) -> None:
        """Status events from sync code paths: never block (a full queue drops the oldest item)."""
        if self.on_event is not None:
            self.on_event(ev)
            return
        if self.queue.full():
            self.queue.get_nowait()
            self.stats.queue_full_waits += 1
        self.queue.put_nowait(ev)

    # ------------------------------------------------------------------ snapshots
    def _start_fetch(self, sym: str) -> None:
        t = self._fetching.get(sym)
        if t is None or t.done():
            self._fetching[sym] = asyncio.create_task(self._fetch_loop(sym), name=f"feed-snapshot-{sym}")

    async def _fetch_loop(self, sym: str) -> None:
        """Fetch snapshots until the protocol's book is synced (a snapshot older than the buffered diffs, or one
        the oracle disproves, needs another); back off after failures."""
        proto = self.protocol
        attempt = 0
        try:
            while proto.needs_snapshot(sym) and not self._stopping:
                ok = await self._fetch_once(sym)
                if not proto.needs_snapshot(sym):
                    return
                delay = backoff_delay(attempt, self.cfg.reconnect_initial_s / 5, self.cfg.reconnect_max_s,
                                      self._rng) if not ok else 0.05
                attempt += 1
                await asyncio.sleep(delay)
        finally:
            if self._fetching.get(sym) is asyncio.current_task():
                del self._fetching[sym]

    async def _fetch_once(self, sym: str) -> bool:
        """One ``GET /api/v3/depth``, handed to the protocol. False: no usable snapshot (back off)."""
        url = f"{self.rest_base}/api/v3/depth"
        params = {"symbol": sym, "limit": str(self.cfg.snapshot_limit)}
        assert self._http is not None
        try:
            async with self._http.get(url, params=params) as resp:
                body = await resp.read()
                if resp.status != 200:
                    self.stats.snapshot_errors[f"http_{resp.status}"] += 1
                    log.warning("feed_snapshot_http_error", symbol=sym, status=resp.status, body=body[:200])
                    return False
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as e:
            self.stats.snapshot_errors["network"] += 1
            log.warning("feed_snapshot_failed", symbol=sym, error=repr(e)[:200])
            return False
        recv_ns = self.clock()
        if self.on_raw is not None:
            self.on_raw(recv_ns, body, sym)
        ok = True
        for ev in self.protocol.receive_snapshot(sym, body, recv_ns):
            if type(ev) is SnapshotNeeded:
                ok = ok and not ev.backoff  # this loop is the one fetching: it asks again while needed
            else:
                await self._emit(ev)
        return ok

    # ------------------------------------------------------------------ views
    def counters(self) -> dict[str, Any]:
        """Feed + book counters for the metrics collector, and each connection's (``connections``)."""
        return {**self.protocol.counters(), "connections": [c.as_dict() for c in self.connections]}


# re-exported for consumers that type-switch on events
EVENT_TYPES = (Trade, DepthUpdate, DepthSnapshot, BookTicker, BookStatus)
