"""The Binance market-data protocol, sans I/O: raw frames + receive times in, typed events and snapshot requests out.

In the spirit of h11: this object never touches a socket or a clock. Whoever moves the bytes feeds it:

* the websocket feed (:mod:`daemon.binance.feed`): frames as they arrive, REST snapshot bodies when asked for,
  and the connection's life (``connection_made`` / ``connection_lost``);
* a recording replay (``tradingd backtest --recording``, ``tradingd book-check``): the recorded frames, with the
  REST snapshots the recorder wrote inline (``inline_snapshots=True``).

So replay is live: the same decoder, plausibility guard, order books, Binance's snapshot/diff sync procedure and
bookTicker oracle run in both. Per frame: decode (:func:`daemon.binance.codec.decode_frame`; a bad frame is a
counted, logged drop) -> refuse implausible events (:class:`daemon.plausible.FrameGuard`) -> apply to the
symbol's :class:`market.book.OrderBook` -> check the book against bookTicker (:class:`TickerOracle`). Out come,
in order, the events a consumer acts on after the book has processed them (Trade, DepthUpdate, DepthSnapshot,
BookTicker, :class:`market.events.BookStatus` on every book state change, :class:`daemon.plausible.ClockJump`)
and :class:`SnapshotNeeded` requests, which the I/O side answers with :meth:`MarketDataProtocol.receive_snapshot`
(a replay, which cannot fetch, ignores them: the recording carries the snapshots).

The books live here, once: the pipeline and the brokers read them through :attr:`MarketDataProtocol.books`, a
read-only mapping of :class:`market.book.BookView`.
"""
from __future__ import annotations

from collections import Counter, deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import msgspec
import structlog

from daemon.binance.codec import DecodeError, decode_frame, parse_depth_snapshot, stream_names
from daemon.config import FeedConfig
from daemon.plausible import JUMP, ClockJump, FrameGuard
from market.book import BookState, BookView, OrderBook
from market.events import BookStatus, BookTicker, DepthSnapshot, DepthUpdate, Trade

__all__ = ["MarketDataProtocol", "SnapshotNeeded", "FeedStats", "TickerOracle", "BookStatus", "ClockJump"]

log = structlog.get_logger(__name__)

_NOTHING: tuple = ()  # the common "no output" answer, allocated once


class SnapshotNeeded(msgspec.Struct, frozen=True, gc=False):
    """A request: ``symbol``'s book needs a REST depth snapshot (fetch it, then call ``receive_snapshot``).
    ``backoff``: the last snapshot was unusable (bad body, refused): wait before asking the venue again."""

    symbol: str
    reason: str  # connect | gap | crossed | oracle_mismatch | stale | snapshot_too_old | bad_snapshot
    ts_recv: int
    backoff: bool = False


@dataclass
class FeedStats:
    """The market-data stream's counters (/status ``feed``, /metrics). The protocol counts frames, drops, books
    and the oracle; the transport (the feed) counts connections, HTTP errors and its queue on the same object."""

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


class TickerOracle:
    """bookTicker as an oracle of the book's best levels. ``on_ticker``/``after_change`` return None when nothing
    was checked, True when every check matched, False on a mismatch.

    bookTicker is real-time while depth diffs come every 100 ms, so a ticker usually arrives *before* the diff
    that ends at its id: tickers ahead of the book wait (bounded) and are checked when the book's last applied id
    reaches theirs; those it jumps over can never be checked."""

    def __init__(self, *, max_pending: int = 100_000, max_mismatch_examples: int = 5) -> None:
        self.checked = 0
        self.matched = 0
        self.mismatched = 0
        self.mismatches: list[dict[str, Any]] = []
        self._max_examples = max_mismatch_examples
        self._pending: dict[str, deque[BookTicker]] = {}  # tickers ahead of the book, in arrival order
        self._max_pending = max_pending

    def on_ticker(self, book: BookView, t: BookTicker) -> bool | None:
        if t.update_id == book.last_update_id:
            return self._check(book, t)
        if t.update_id > book.last_update_id:
            # bookTicker is real-time, depth diffs come every 100 ms: the diff ending at this id is still to come.
            pend = self._pending.setdefault(t.symbol, deque())
            if len(pend) >= self._max_pending:
                pend.popleft()
            pend.append(t)
        return None

    def after_change(self, book: BookView) -> bool | None:
        """The book moved: check the waiting tickers of exactly its new update id, forget older ones."""
        pend = self._pending.get(book.symbol)
        last = book.last_update_id
        out: bool | None = None
        while pend and pend[0].update_id <= last:
            t = pend.popleft()
            if t.update_id == last:
                r = self._check(book, t)
                if r is not None:
                    out = r if out is None else (out and r)
        return out

    def forget(self, symbol: str) -> None:
        self._pending.pop(symbol, None)

    def _check(self, book: BookView, t: BookTicker) -> bool | None:
        if not book.is_tradeable:
            return None
        self.checked += 1
        bb, ba = book.best_bid(), book.best_ask()
        if bb == (t.bid_price, t.bid_qty) and ba == (t.ask_price, t.ask_qty):
            self.matched += 1
            return True
        self.mismatched += 1
        if len(self.mismatches) < self._max_examples:
            self.mismatches.append({"symbol": t.symbol, "update_id": t.update_id, "book_bid": bb, "book_ask": ba,
                                    "ticker_bid": (t.bid_price, t.bid_qty),
                                    "ticker_ask": (t.ask_price, t.ask_qty)})
        return False


def _stream_of(raw: bytes) -> str:
    if raw[:11] == b'{"stream":"':
        j = raw.find(b'"', 11)
        if j > 0:
            return raw[11:j].decode("ascii", "replace")
    return "?"


class MarketDataProtocol:
    """The market-data state of a feed (one connection, or several each carrying some symbols: every symbol's
    streams arrive on one): a book, a guard clock and an oracle queue per symbol.

    ``symbols``: the subscribed symbols (their books exist from the start, spot). Empty: the symbols are found in
    the data (a recording): a book is made at a symbol's first diff, USD-M futures when the diff carries ``pu``.
    ``inline_snapshots``: a snapshot frame in the stream is applied (a recording carries the REST snapshots
    inline); live, a snapshot on the stream is never trusted as a book source. ``resync_on_mismatch``: a book the
    oracle disproves goes STALE and asks for a snapshot (live, replay); False only counts (book-check audits the
    rebuilt book, it must not heal it). ``plausibility``: refuse implausible events (FrameGuard; off only for
    bare unit-level checks of the sync procedure). ``speed``: venue seconds per receive second (the guard's pace).
    """

    def __init__(self, symbols: Sequence[str] = (), cfg: FeedConfig = FeedConfig(), *,
                 filters: Mapping[str, Any] | None = None, speed: float = 1.0, extra_streams: Sequence[str] = (),
                 depth_ms: int = 100, inline_snapshots: bool = False, resync_on_mismatch: bool = True,
                 plausibility: bool = True, max_pending_tickers: int = 1024, max_mismatch_examples: int = 5) -> None:
        self.symbols = [s.upper() for s in symbols]
        self.cfg = cfg
        self.inline_snapshots = inline_snapshots
        self.resync_on_mismatch = resync_on_mismatch
        self._books: dict[str, OrderBook] = {s: OrderBook(s, max_buffer=cfg.max_buffered_updates)
                                             for s in self.symbols}
        self.books: Mapping[str, BookView] = MappingProxyType(self._books)  # live, read-only
        self.stats = FeedStats()
        self.guard = FrameGuard(cfg, filters, speed) if plausibility else None
        if self.guard is not None:
            self.stats.refused = self.guard.refused
        self.oracle = TickerOracle(max_pending=max_pending_tickers, max_mismatch_examples=max_mismatch_examples)
        self.ignored: Counter[str] = Counter()  # inline snapshots that could not be placed, by reason
        self._orphans: list[DepthSnapshot] = []  # symbol-less inline snapshots seen before any book
        if cfg.book_oracle and "bookTicker" not in extra_streams:
            extra_streams = (*extra_streams, "bookTicker")
        self.symbol_streams: dict[str, tuple[str, ...]] = {  # a symbol's streams: one connection carries them all
            s: (*stream_names(s, depth_ms), *(f"{s.lower()}@{x}" for x in extra_streams)) for s in self.symbols}
        streams = [name for names in self.symbol_streams.values() for name in names]
        self.streams = streams  # what to subscribe to
        self._stream_keys = frozenset(streams)  # stats.frames keys: a venue's stream names cannot grow the Counter

    # ------------------------------------------------------------------------------------------ connection
    def connection_made(self, recv_ns: int, symbols: Sequence[str] | None = None) -> list[SnapshotNeeded]:
        """A (re)connected stream: every book it carries (``symbols``; None: all) needs a snapshot (diffs buffer
        meanwhile)."""
        return [SnapshotNeeded(s, "connect", recv_ns) for s in (self._books if symbols is None else symbols)]

    def connection_lost(self, recv_ns: int, symbols: Sequence[str] | None = None) -> list[BookStatus]:
        """The stream died: no book it carried (``symbols``; None: all) can be trusted, and their buffered diffs
        are void. The books of other connections are untouched."""
        out = []
        for sym in (list(self._books) if symbols is None else symbols):
            book = self._books.get(sym)
            if book is None:
                continue
            before = book.state
            book.mark_stale("disconnect")
            if before is not book.state or before is BookState.SYNCED:
                out.append(BookStatus(sym, book.state.value, "disconnect", book.last_update_id, recv_ns))
        return out

    def needs_snapshot(self, symbol: str) -> bool:
        book = self._books.get(symbol)
        return book is not None and book.needs_snapshot

    # ------------------------------------------------------------------------------------------ frames
    def receive_frame(self, raw: bytes, recv_ns: int) -> Sequence[Any]:
        """One raw frame, received at ``recv_ns``: the events and requests it gives, in order."""
        try:
            ev = decode_frame(raw, recv_ns)
        except DecodeError as e:
            self.stats.decode_errors[e.reason] += 1
            log.warning("feed_frame_dropped", reason=e.reason, frame=bytes(raw[:120]))
            return _NOTHING
        if ev is None:
            self.stats.unknown_frames += 1
            return _NOTHING
        stream = _stream_of(raw)
        self.stats.frames[stream if stream in self._stream_keys else "other"] += 1
        return self._event(ev, ev.ts_recv, raw)

    def receive_event(self, ev: Any) -> Sequence[Any]:
        """An event decoded elsewhere (an in-process source, a test): the same path as a frame after decoding."""
        return self._event(ev, ev.ts_recv, b"")

    def _event(self, ev: Any, recv_ns: int, raw: bytes) -> Sequence[Any]:
        jump = None
        guard = self.guard
        if guard is not None:
            refused = guard.check(ev)
            if refused is not None:
                if refused is not JUMP:
                    n = self.stats.refused[(ev.symbol, refused)]
                    if str(n).rstrip("0") == "1":  # 1st, 10th, 100th ...: a flood cannot flood the log
                        log.warning("feed_event_refused", reason=refused, count=n, frame=bytes(raw[:160]))
                    return _NOTHING
                self.stats.clock_jumps += 1
                kind = "trade" if type(ev) is Trade else "depth"
                log.warning("feed_clock_jump", symbol=ev.symbol, kind=kind, ts_event=ev.ts_event)
                jump = ClockJump(ev.symbol, kind, ev.ts_event, recv_ns)
        t = type(ev)
        if t is DepthUpdate:
            book = self._books.get(ev.symbol)
            if book is None:
                if self.symbols:
                    self.stats.decode_errors["unknown_symbol"] += 1
                    return _NOTHING if jump is None else (jump,)
                book = self._new_book(ev.symbol, futures=ev.prev_final_id >= 0)
            was_synced = book.state is BookState.SYNCED
            if book.on_update(ev):
                ok = self.oracle.after_change(book)
                if ok is None and book.state is BookState.SYNCED:  # the common case: applied, nothing to check
                    return (ev,) if jump is None else (jump, ev)
                out: list[Any] = [] if jump is None else [jump]
                if self._oracle_result(book, ok, recv_ns, out):
                    out.append(ev)
                    return out
            else:
                out = [] if jump is None else [jump]
            if was_synced and book.state is not BookState.SYNCED:  # a gap, a rejected diff, a crossed book
                self.stats.gaps += 1
                reason = book.stats.stale_reasons.most_common(1)[0][0] if book.stats.stale_reasons else "gap"
                out.append(ev)
                out.append(BookStatus(ev.symbol, book.state.value, reason, book.last_update_id, recv_ns))
                out.append(SnapshotNeeded(ev.symbol, reason, recv_ns))
                return out
            if book.state is BookState.STALE:
                out.append(SnapshotNeeded(ev.symbol, "stale", recv_ns))  # e.g. a snapshot too old: ask again
            out.append(ev)
            return out
        if t is BookTicker:
            book = self._books.get(ev.symbol)
            if book is not None and book.is_tradeable:
                ok = self.oracle.on_ticker(book, ev)
                if ok is not None:
                    out = [] if jump is None else [jump]
                    self._oracle_result(book, ok, recv_ns, out)
                    out.append(ev)
                    return out
        elif t is DepthSnapshot:
            if not self.inline_snapshots:  # not expected on a live stream; never trusted as a book source
                self.stats.unknown_frames += 1
                return _NOTHING
            sym = self._snapshot_symbol(ev)
            if sym is None:
                return _NOTHING
            return self._snapshot(sym, ev if ev.symbol else msgspec.structs.replace(ev, symbol=sym), recv_ns)
        return (ev,) if jump is None else (jump, ev)

    # ------------------------------------------------------------------------------------------ snapshots
    def receive_snapshot(self, symbol: str, body: bytes | DepthSnapshot, recv_ns: int) -> list[Any]:
        """A REST depth snapshot of ``symbol`` (the raw body, or parsed): loads the book, replays its buffered
        diffs; out come the snapshot and a BookStatus when the book is synced, else another SnapshotNeeded."""
        if isinstance(body, DepthSnapshot):
            snap = body if body.symbol == symbol else msgspec.structs.replace(body, symbol=symbol)
        else:
            try:
                snap = parse_depth_snapshot(body, symbol, recv_ns)
            except DecodeError as e:
                self.stats.snapshot_errors[e.reason] += 1
                log.warning("feed_snapshot_dropped", symbol=symbol, reason=e.reason)
                return [SnapshotNeeded(symbol, "bad_snapshot", recv_ns, backoff=True)]
        if symbol not in self._books:
            if self.symbols:
                self.stats.snapshot_errors["unknown_symbol"] += 1
                return []
            self._new_book(symbol)
        return self._snapshot(symbol, snap, recv_ns)

    def _snapshot(self, sym: str, snap: DepthSnapshot, recv_ns: int) -> list[Any]:
        out: list[Any] = []
        if self.guard is not None:
            refused = self.guard.check(snap)
            if refused is not None:
                self.stats.snapshot_errors[refused] += 1
                log.warning("feed_snapshot_refused", symbol=sym, reason=refused)
                out.append(SnapshotNeeded(sym, "bad_snapshot", recv_ns, backoff=True))
                return out
        book = self._books[sym]
        was_stale = book.state is BookState.STALE
        book.on_snapshot(snap)
        self.stats.snapshot_fetches += 1
        if book.state is BookState.SYNCED and self._oracle_result(book, self.oracle.after_change(book), recv_ns, out):
            return out  # the snapshot lied (the tickers of its id disagree): a new one is asked for
        if book.state is BookState.SYNCED:
            if was_stale:
                self.stats.resyncs += 1
            out.append(snap)
            out.append(BookStatus(sym, book.state.value, "resync" if was_stale else "snapshot",
                                  book.last_update_id, recv_ns))
        else:
            out.append(SnapshotNeeded(sym, "snapshot_too_old", recv_ns))
        return out

    def _snapshot_symbol(self, s: DepthSnapshot) -> str | None:
        """Which book an inline snapshot is for. A recording without the "symbol" key is unambiguous with one
        book; before any book it waits for the first diff."""
        if s.symbol:
            if s.symbol in self._books:
                return s.symbol
            if self.symbols:
                self.ignored["other_symbol_snapshot"] += 1
                return None
            self._new_book(s.symbol)  # a snapshot before the first diff: the book starts from it
            return s.symbol
        if len(self._books) == 1:
            return next(iter(self._books))
        if not self._books:
            self._orphans.append(s)
        else:
            self.ignored["ambiguous_snapshot"] += 1
        return None

    def _new_book(self, sym: str, *, futures: bool = False) -> OrderBook:
        book = self._books[sym] = OrderBook(sym, futures=futures, max_buffer=self.cfg.max_buffered_updates)
        orphans, self._orphans = self._orphans, []
        for s in orphans:  # symbol-less snapshots that came first: this book is the only one
            book.on_snapshot(msgspec.structs.replace(s, symbol=sym))
            self.oracle.after_change(book)
        return book

    # ------------------------------------------------------------------------------------------ oracle
    def _oracle_result(self, book: OrderBook, ok: bool | None, recv_ns: int, out: list) -> bool:
        """A bookTicker check's outcome. On a mismatch (live/replay) the book goes stale and asks for a snapshot:
        True. Auditing (``resync_on_mismatch`` off) only counts."""
        if ok is None:
            return False
        self.stats.oracle_checked += 1
        if ok:
            return False
        self.stats.oracle_mismatches += 1
        sym = book.symbol
        log.warning("book_oracle_mismatch", symbol=sym, update_id=book.last_update_id, best_bid=book.best_bid(),
                    best_ask=book.best_ask())
        if not self.resync_on_mismatch:
            return False
        book.mark_stale("oracle_mismatch")
        self.oracle.forget(sym)
        out.append(BookStatus(sym, book.state.value, "oracle_mismatch", book.last_update_id, recv_ns))
        out.append(SnapshotNeeded(sym, "oracle_mismatch", recv_ns))
        return True

    # ------------------------------------------------------------------------------------------ views
    def counters(self) -> dict[str, Any]:
        """Stream + book counters (/status ``feed``, the metrics collector)."""
        return {"feed": self.stats.as_dict(),
                "books": {s: {"state": b.state.value, **b.stats.as_dict()} for s, b in self._books.items()}}
