"""Binance combined-stream websocket client: frames in, typed events and synced order books out.

The same code talks to the real venue, the spot testnet or the local venue: only the base URLs differ. Per
connection: subscribe ``<sym>@trade/<sym>@depth@100ms`` for every symbol (in the URL, so a reconnect restores
them), and once the stream is open fetch a REST depth snapshot per symbol while :class:`OrderBook` buffers the
diffs. Frames are decoded once (:func:`daemon.binance.codec.decode_frame`); a bad frame is a counted, logged drop.
A gap makes the book STALE and starts a resync (new snapshot) while diffs keep buffering. A dead connection (an
error, or silence longer than ``stale_after_s``) marks every book stale and reconnects with exponential backoff
and full jitter. Every raw frame and every REST snapshot body goes to ``on_raw`` (the recorder).

Events reach the consumer after the book has processed them, either through ``on_event`` (called inline, so the
book it reads is exactly the state after that event) or, without a callback, through the bounded ``queue``.
Besides the decoded events the consumer sees :class:`BookStatus` on every book state change.
"""
from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import msgspec
import structlog
import websockets
from websockets.asyncio.client import connect

from daemon.binance.codec import DecodeError, decode_frame, parse_depth_snapshot, stream_names
from market.book import BookState, OrderBook
from daemon.binance.bookcheck import TickerOracle
from daemon.plausible import JUMP, ClockJump, FrameGuard
from daemon.config import FeedConfig
from market.events import BookTicker, DepthSnapshot, DepthUpdate, Trade

__all__ = ["BinanceFeed", "BookStatus", "FeedStats", "backoff_delay"]

log = structlog.get_logger(__name__)

RawHook = Callable[..., None]  # (recv_ns, raw) for frames; (recv_ns, raw, symbol) for REST snapshots


class BookStatus(msgspec.Struct, frozen=True, gc=False):
    """A book changed state: ``state`` is a BookState value, ``reason`` why (gap, disconnect, snapshot, ...)."""

    symbol: str
    state: str
    reason: str
    last_update_id: int
    ts_recv: int


@dataclass
class FeedStats:
    frames: Counter = field(default_factory=Counter)  # valid frames by subscribed stream name, else "other"
    decode_errors: Counter = field(default_factory=Counter)  # dropped frames by DecodeError.reason
    unknown_frames: int = 0  # valid JSON we do not use (subscription replies, other event types)
    connects: int = 0
    reconnects: int = 0
    stale_timeouts: int = 0  # connections closed for silence
    snapshot_fetches: int = 0  # snapshots received and handed to a book
    snapshot_errors: Counter = field(default_factory=Counter)  # by reason (http status, decode reason, network)
    resyncs: int = 0  # snapshots that brought a STALE book back to SYNCED
    gaps: int = 0  # sync losses detected on a SYNCED book while streaming (gap, rejected, crossed)
    queue_full_waits: int = 0  # times the consumer queue was full (the reader waited: backpressure)
    queue_depth_max: int = 0
    refused: Counter = field(default_factory=Counter)  # implausible events dropped, by (symbol, reason)
    clock_jumps: int = 0  # confirmed jumps of a stream's clock (handled as gaps)
    oracle_checked: int = 0  # bookTicker frames compared with the book at the same update id
    oracle_mismatches: int = 0  # ... that disagreed (the book was marked stale and resynced)

    def as_dict(self) -> dict[str, Any]:
        return {"frames": dict(self.frames), "decode_errors": dict(self.decode_errors),
                "unknown_frames": self.unknown_frames, "connects": self.connects, "reconnects": self.reconnects,
                "stale_timeouts": self.stale_timeouts, "snapshot_fetches": self.snapshot_fetches,
                "snapshot_errors": dict(self.snapshot_errors), "resyncs": self.resyncs, "gaps": self.gaps,
                "queue_full_waits": self.queue_full_waits, "queue_depth_max": self.queue_depth_max,
                "refused": {f"{s}/{r}": n for (s, r), n in self.refused.items()}, "clock_jumps": self.clock_jumps,
                "oracle_checked": self.oracle_checked, "oracle_mismatches": self.oracle_mismatches}


def backoff_delay(attempt: int, initial_s: float, max_s: float, rng: random.Random) -> float:
    """Exponential backoff with full jitter: uniform in [0, min(max, initial * 2**attempt)]."""
    return rng.uniform(0.0, min(max_s, initial_s * (2.0 ** min(attempt, 60))))


def _stream_of(raw: bytes) -> str:
    if raw[:11] == b'{"stream":"':
        j = raw.find(b'"', 11)
        if j > 0:
            return raw[11:j].decode("ascii", "replace")
    return "?"


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
        self.books: dict[str, OrderBook] = {s: OrderBook(s, max_buffer=cfg.max_buffered_updates)
                                            for s in self.symbols}
        self.queue: asyncio.Queue = asyncio.Queue(cfg.queue_size)
        self.stats = FeedStats()
        # implausible events are refused before the book and the bars see them; bookTicker checks the book live
        self.guard = FrameGuard(cfg, filters, speed)
        self.stats.refused = self.guard.refused
        self.oracle = TickerOracle(max_pending=1024)
        if cfg.book_oracle and "bookTicker" not in extra_streams:
            extra_streams = (*extra_streams, "bookTicker")
        streams = []
        for s in self.symbols:
            streams += stream_names(s, depth_ms) + [f"{s.lower()}@{x}" for x in extra_streams]
        self.streams = streams
        self._stream_keys = frozenset(streams)  # stats.frames keys: a venue's stream names cannot grow the Counter
        self.url = f"{self.ws_base}/stream?streams={'/'.join(streams)}"
        self._rng = random.Random(seed)
        self._stopping = False
        self._ws: Any = None
        self._http: aiohttp.ClientSession | None = None
        self._fetching: dict[str, asyncio.Task] = {}
        self._last_recv = 0.0
        self._wake = asyncio.Event()
        self.connected = asyncio.Event()
        self._close_task: asyncio.Task | None = None  # stop()'s ws.close(), awaited by run() before it returns

    # ------------------------------------------------------------------ lifecycle
    def stop(self) -> None:
        """Ask run() to finish: closes the socket and ends the reconnect loop."""
        self._stopping = True
        self._wake.set()
        if self._ws is not None and self._close_task is None:
            # held, not fire-and-forget: the loop keeps only weak references to tasks, and run() awaits it
            self._close_task = asyncio.get_running_loop().create_task(self._ws.close(), name="feed-close")

    async def run(self) -> None:
        """Connect, stream, reconnect until stop(). Only cancellation or stop() ends it."""
        attempt = 0
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
            self._http = http
            while not self._stopping:
                got_frames = False
                try:
                    async with connect(self.url, max_size=1 << 24, open_timeout=10, close_timeout=1,
                                       ping_interval=20, ping_timeout=20, compression=None) as ws:
                        self._ws = ws
                        self.stats.connects += 1
                        self.connected.set()
                        log.info("feed_connected", url=self.url[:200])
                        got_frames = await self._session(ws)
                except (OSError, asyncio.TimeoutError, websockets.exceptions.WebSocketException) as e:
                    log.warning("feed_connection_lost", error=repr(e)[:200])
                finally:
                    self._ws = None
                    self.connected.clear()
                    self._on_disconnect()
                if self._stopping:
                    break
                attempt = 0 if got_frames else attempt + 1
                delay = backoff_delay(attempt, self.cfg.reconnect_initial_s, self.cfg.reconnect_max_s, self._rng)
                self.stats.reconnects += 1
                log.info("feed_reconnect", delay_s=round(delay, 3), attempt=attempt)
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), delay)
                except asyncio.TimeoutError:
                    pass
        self._http = None
        if self._close_task is not None:
            await self._close_task  # the close stop() started has finished (its errors surface) when run() ends

    # ------------------------------------------------------------------ one connection
    async def _session(self, ws: Any) -> bool:
        got = False
        self._last_recv = time.monotonic()
        watchdog = asyncio.create_task(self._watchdog(ws), name="feed-watchdog")
        for sym in self.symbols:
            self._start_fetch(sym)
        try:
            while True:
                try:
                    raw = await ws.recv(decode=False)
                except websockets.exceptions.ConnectionClosedOK:
                    return got
                got = True
                self._last_recv = time.monotonic()
                await self._on_frame(raw, self.clock())
        except websockets.exceptions.ConnectionClosed as e:
            log.warning("feed_connection_closed", code=getattr(e.rcvd, "code", None))
            return got
        finally:
            watchdog.cancel()

    async def _watchdog(self, ws: Any) -> None:
        limit = self.cfg.stale_after_s
        while True:
            await asyncio.sleep(limit / 4.0)
            silent = time.monotonic() - self._last_recv
            if silent > limit:
                self.stats.stale_timeouts += 1
                log.warning("feed_stale_stream", silent_s=round(silent, 3))
                await ws.close(code=1001, reason="stale")
                return

    def _on_disconnect(self) -> None:
        for t in self._fetching.values():
            t.cancel()
        self._fetching.clear()
        now = self.clock()
        for sym, book in self.books.items():
            before = book.state
            book.mark_stale("disconnect")
            if before is not book.state or before is BookState.SYNCED:
                self._emit_now(BookStatus(sym, book.state.value, "disconnect", book.last_update_id, now))

    # ------------------------------------------------------------------ frames
    async def _on_frame(self, raw: bytes, recv_ns: int) -> None:
        if self.on_raw is not None:
            self.on_raw(recv_ns, raw)
        try:
            ev = decode_frame(raw, recv_ns)
        except DecodeError as e:
            self.stats.decode_errors[e.reason] += 1
            log.warning("feed_frame_dropped", reason=e.reason, frame=bytes(raw[:120]))
            return
        if ev is None:
            self.stats.unknown_frames += 1
            return
        stream = _stream_of(raw)
        self.stats.frames[stream if stream in self._stream_keys else "other"] += 1
        refused = self.guard.check(ev)
        if refused is not None:
            if refused is not JUMP:
                n = self.stats.refused[(ev.symbol, refused)]
                if str(n).rstrip("0") == "1":  # 1st, 10th, 100th ...: a flood cannot flood the log
                    log.warning("feed_event_refused", reason=refused, count=n, frame=bytes(raw[:160]))
                return
            self.stats.clock_jumps += 1
            kind = "trade" if type(ev) is Trade else "depth"
            log.warning("feed_clock_jump", symbol=ev.symbol, kind=kind, ts_event=ev.ts_event)
            await self._emit(ClockJump(ev.symbol, kind, ev.ts_event, recv_ns))
        if type(ev) is BookTicker:
            book = self.books.get(ev.symbol)
            if book is not None and book.is_tradeable:
                self._oracle_result(book, self.oracle.on_ticker(book, ev), recv_ns)
        elif type(ev) is DepthUpdate:
            book = self.books.get(ev.symbol)
            if book is None:
                self.stats.decode_errors["unknown_symbol"] += 1
                return
            was_synced = book.state is BookState.SYNCED
            if book.on_update(ev) and self._oracle_result(book, self.oracle.after_change(book), recv_ns):
                await self._emit(ev)
                return
            if was_synced and book.state is not BookState.SYNCED:
                self.stats.gaps += 1
                reason = book.stats.stale_reasons.most_common(1)[0][0] if book.stats.stale_reasons else "gap"
                await self._emit(ev)
                await self._emit(BookStatus(ev.symbol, book.state.value, reason, book.last_update_id, recv_ns))
                self._start_fetch(ev.symbol)
                return
            if book.state is BookState.STALE and ev.symbol not in self._fetching:
                self._start_fetch(ev.symbol)  # e.g. a snapshot too old for the buffer: ask again
        elif type(ev) is DepthSnapshot:  # not expected on a stream; never trusted as a book source here
            self.stats.unknown_frames += 1
            return
        await self._emit(ev)

    def _oracle_result(self, book: OrderBook, ok: bool | None, recv_ns: int) -> bool:
        """A bookTicker check's outcome; a mismatch marks the book stale and resyncs it. True on a mismatch."""
        if ok is None:
            return False
        self.stats.oracle_checked += 1
        if ok:
            return False
        self.stats.oracle_mismatches += 1
        sym = book.symbol
        log.warning("book_oracle_mismatch", symbol=sym, update_id=book.last_update_id, best_bid=book.best_bid(),
                    best_ask=book.best_ask())
        book.mark_stale("oracle_mismatch")
        self.oracle.forget(sym)
        self._emit_now(BookStatus(sym, book.state.value, "oracle_mismatch", book.last_update_id, recv_ns))
        self._start_fetch(sym)
        return True

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
        """Fetch snapshots until the book is SYNCED (a snapshot older than the buffered diffs needs another)."""
        book = self.books[sym]
        attempt = 0
        try:
            while book.state is not BookState.SYNCED and not self._stopping:
                ok = await self._fetch_once(sym)
                if book.state is BookState.SYNCED:
                    return
                delay = backoff_delay(attempt, self.cfg.reconnect_initial_s / 5, self.cfg.reconnect_max_s,
                                      self._rng) if not ok else 0.05
                attempt += 1
                await asyncio.sleep(delay)
        finally:
            if self._fetching.get(sym) is asyncio.current_task():
                del self._fetching[sym]

    async def _fetch_once(self, sym: str) -> bool:
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
        try:
            snap = parse_depth_snapshot(body, sym, recv_ns)
        except DecodeError as e:
            self.stats.snapshot_errors[e.reason] += 1
            log.warning("feed_snapshot_dropped", symbol=sym, reason=e.reason)
            return False
        refused = self.guard.check(snap)
        if refused is not None:
            self.stats.snapshot_errors[refused] += 1
            log.warning("feed_snapshot_refused", symbol=sym, reason=refused)
            return False
        book = self.books[sym]
        was_stale = book.state is BookState.STALE
        book.on_snapshot(snap)
        self.stats.snapshot_fetches += 1
        if book.state is BookState.SYNCED and self._oracle_result(book, self.oracle.after_change(book), recv_ns):
            return True  # the snapshot lied (the tickers of its id disagree): the fetch loop asks again
        if book.state is BookState.SYNCED:
            if was_stale:
                self.stats.resyncs += 1
            await self._emit(snap)
            await self._emit(BookStatus(sym, book.state.value, "resync" if was_stale else "snapshot",
                                        book.last_update_id, recv_ns))
        return True

    # ------------------------------------------------------------------ views
    def counters(self) -> dict[str, Any]:
        """Feed + book counters for the metrics collector."""
        return {"feed": self.stats.as_dict(),
                "books": {s: {"state": b.state.value, **b.stats.as_dict()} for s, b in self.books.items()}}


# re-exported for consumers that type-switch on events
EVENT_TYPES = (Trade, DepthUpdate, DepthSnapshot, BookTicker, BookStatus)
