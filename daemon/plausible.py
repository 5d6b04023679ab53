"""Plausibility guard: no single decoded event may move a stream's clock or a book beyond what is believable.

The decoder only checks that a frame is well formed (finite, non-negative, below absurd bounds such as 1e12).
A frame can be well formed and still a lie: a trade stamped 62 days ahead (the bars would restart there and
drop every later real trade as late), a diff with a 99,999,999,999 BTC level (the book would stay SYNCED with a
phantom level, and the real diff with the same ids would be dropped as a duplicate), a trade id seen before.
This pure core (no I/O, no clock reads: the receive time comes with each event) refuses such events *before*
they reach the book or the bars, and counts each refusal by ``(symbol, reason)``:

* **time**: per stream ``(symbol, kind)`` the guard keeps the largest ``event time - receive time * speed``
  offset seen (the least-delayed event). An event whose offset is more than ``max_event_ahead_s`` above it is ahead
  of the venue's clock (``time_ahead``); one more than ``max_event_behind_s`` older than the newest accepted event
  is ``time_behind``; ``<= 0`` is ``time_negative``. Delivery delays (a stall, then a burst) only lower the
  offset, so they are never refused. ``speed`` is a replay/simulator speed (venue seconds per receive second); 0 (unpaced replay) checks against the
  stream's newest event only, allowing ``UNPACED_AHEAD_NS`` of quiet between two events.
* **genuine jumps**: ``jump_confirm_events`` consecutive refused events that agree with each other (within ``max_event_ahead_s``)
  are the venue's clock, not a forgery: the stream is re-based there, the confirming event is accepted and
  :meth:`FrameGuard.check` returns ``"jump"`` so the consumer treats it as a gap (the bars restart, no flat
  bars are synthesised for the jumped-over time).
* **sizes**: a trade above LOT_SIZE ``maxQty`` or a price above PRICE_FILTER ``maxPrice`` (when exchange
  filters are known), and any trade, book level or ticker whose notional exceeds ``max_notional`` (always: a
  book level aggregates many orders, so LOT_SIZE does not bound it, but no real level is worth 1e9 quote).
* **duplicates**: trades are de-duplicated by id over the last ``trade_dedup_window`` ids of the symbol.
"""
from __future__ import annotations

from collections import Counter, deque
from itertools import starmap
from operator import mul
from collections.abc import Mapping
from typing import Any

import msgspec

from daemon.config import FeedConfig
from market.events import BookTicker, DepthSnapshot, DepthUpdate, Trade

__all__ = ["ClockJump", "FrameGuard", "ReadinessWatch", "JUMP"]

JUMP = "jump"
UNPACED_AHEAD_NS = 600_000_000_000  # speed 0: an event may be up to 10 min (+ max_event_ahead_s) past the newest


class ClockJump(msgspec.Struct, frozen=True, gc=False):
    """A stream's clock jumped (confirmed): the consumer handles it as a gap (the bars restart, no filling)."""

    symbol: str
    kind: str  # "trade" | "depth"
    ts_event: int
    ts_recv: int
_INF = float("inf")


class _Clock:
    __slots__ = ("offset", "newest", "cand", "cand_n")

    def __init__(self, offset: float, newest: int) -> None:
        self.offset = offset
        self.newest = newest
        self.cand = 0.0
        self.cand_n = 0


def _levels_ok(levels: list, bound: float, _max=max, _starmap=starmap, _mul=mul) -> bool:
    """Every level's price * qty <= bound (one C-level pass: ~30 ns a level)."""
    return not levels or _max(_starmap(_mul, levels)) <= bound


class FrameGuard:
    """``check(event) -> None`` (accept), a refusal reason (the event must be dropped), or ``"jump"``
    (accepted: the stream's clock jumped, confirmed by ``jump_confirm_events`` events; treat it as a gap)."""

    def __init__(self, cfg: FeedConfig = FeedConfig(), filters: Mapping[str, Any] | None = None,
                 speed: float = 1.0) -> None:
        if not speed >= 0:
            raise ValueError(f"speed must be >= 0 (venue seconds per receive second; 0 = unpaced), got {speed}")
        self.cfg = cfg
        self.filters = dict(filters or {})
        self.speed = float(speed)
        self.refused: Counter[tuple[str, str]] = Counter()
        self.jumps: Counter[str] = Counter()
        self._clocks: dict[str, dict[str, _Clock]] = {"trade": {}, "depth": {}}  # kind -> symbol -> clock
        self._ids: dict[str, tuple[set[int], deque[int]]] = {}  # symbol -> recent trade ids (set + age order)
        self._window = cfg.trade_dedup_window
        self._ahead = cfg.max_event_ahead_s * 1e9
        self._behind = cfg.max_event_behind_s * 1e9

    # ------------------------------------------------------------------------------------------ entry
    def check(self, ev: Any) -> str | None:
        t = type(ev)
        if t is Trade:
            r = self._trade(ev)
        elif t is DepthUpdate:
            b = self.cfg.max_notional
            r = None if _levels_ok(ev.bids, b) and _levels_ok(ev.asks, b) else "depth_notional"
            if r is None:
                r = self._time(ev.symbol, "depth", ev.ts_event, ev.ts_recv)
        elif t is BookTicker:
            b = self.cfg.max_notional
            r = None if (ev.bid_price * ev.bid_qty <= b and ev.ask_price * ev.ask_qty <= b) else "ticker_notional"
        elif t is DepthSnapshot:
            b = self.cfg.max_notional
            r = None if _levels_ok(ev.bids, b) and _levels_ok(ev.asks, b) else "snapshot_notional"
        else:
            return None
        if r is not None and r is not JUMP:
            self.refused[(ev.symbol, r)] += 1
        return r

    def refused_total(self) -> int:
        return sum(self.refused.values())

    # ------------------------------------------------------------------------------------------ kinds
    def _trade(self, t: Trade) -> str | None:
        f = self.filters.get(t.symbol)
        if f is not None:
            if t.qty > f.max_qty:
                return "trade_qty"
            if t.price > getattr(f, "max_price", _INF):
                return "trade_price"
        if t.price * t.qty > self.cfg.max_notional:
            return "trade_notional"
        seen = self._ids.get(t.symbol)
        if seen is None:
            seen = self._ids[t.symbol] = (set(), deque())
        ids, order = seen
        tid = t.trade_id
        if tid in ids:
            return "duplicate_trade"
        r = self._time(t.symbol, "trade", t.ts_event, t.ts_recv)
        if r is None or r is JUMP:
            ids.add(tid)
            order.append(tid)
            if len(order) > self._window:  # O(1): a dict's oldest key is not (deleted slots are scanned)
                ids.discard(order.popleft())
        return r

    def _time(self, symbol: str, kind: str, ts: int, recv: int) -> str | None:
        if ts <= 0:
            return "time_negative"
        # unpaced (a replay as fast as possible): the receive clock says nothing, the stream's own newest time does
        off = ts - recv * self.speed if self.speed else ts
        clocks = self._clocks[kind]
        c = clocks.get(symbol)
        if c is None:
            clocks[symbol] = _Clock(off, ts)
            return None
        if off > (c.offset if self.speed else c.newest + UNPACED_AHEAD_NS) + self._ahead:
            reason = "time_ahead"
        elif ts < c.newest - self._behind:
            reason = "time_behind"
        else:
            c.cand_n = 0
            if off > c.offset:
                c.offset = off
            if ts > c.newest:
                c.newest = ts
            return None
        # implausible: a forgery, or the venue's clock really moved (confirmed by the events that follow)
        if c.cand_n and abs(off - c.cand) <= self._ahead:
            c.cand_n += 1
        else:
            c.cand, c.cand_n = off, 1
        if c.cand_n >= self.cfg.jump_confirm_events:
            c.offset, c.newest, c.cand_n = off, ts, 0
            self.jumps[symbol] += 1
            return JUMP
        return reason


class ReadinessWatch:
    """Readiness beyond "books synced": bars must keep advancing and trades must not mostly arrive late.

    Pure: ``observe(now_ns, bars_closed, accepted, late_dropped)`` with the bar builder's running totals (one
    symbol) returns ``(ok, reason)``. Not ready when no bar closed for ``bar_stall_s`` after the first one, or
    when more than ``max_late_ratio`` of the last window's trades (at least ``min_trades``) were dropped late."""

    def __init__(self, bar_stall_s: float = 150.0, max_late_ratio: float = 0.5, min_trades: int = 20) -> None:
        self.bar_stall_ns = int(bar_stall_s * 1e9)
        self.max_late_ratio = max_late_ratio
        self.min_trades = min_trades
        self._bars = -1
        self._bars_ns = 0
        self._win: tuple[int, int] = (0, 0)
        self._late_bad = False

    def observe(self, now_ns: int, bars_closed: int, accepted: int, late_dropped: int) -> tuple[bool, str]:
        if bars_closed != self._bars:
            self._bars, self._bars_ns = bars_closed, now_ns
        acc0, late0 = self._win
        da, dl = accepted - acc0, late_dropped - late0
        if da + dl >= self.min_trades:
            self._late_bad = dl > self.max_late_ratio * (da + dl)
            self._win = (accepted, late_dropped)
        if self._late_bad:
            return False, "late_trades"
        if bars_closed > 0 and now_ns - self._bars_ns > self.bar_stall_ns:
            return False, "bars_stalled"
        return True, ""
