"""Multi-timeframe OHLCV bars built from trades in event time — a pure core (no I/O, no clock calls).

Rules (tests/market/test_bars.py checks each one):

* **Periods.** A bar of timeframe ``tf`` covers ``[open_ns, open_ns + tf)`` with ``open_ns`` a multiple of ``tf``
  counted from the Unix epoch (UTC). Time is the trade's ``ts_event`` (venue clock), never the local clock, so
  live and replay build the same bars.
* **Closing.** A trade at or after the end of the open bar closes it (and every period in between, see below);
  ``on_time(ts)`` closes bars whose period ended by ``ts`` when no trade comes (the daemon drives it from its
  clock, replay from venue time). Nothing is emitted before the first accepted trade. A wall clock should be
  passed a little behind (``now - expected venue latency``, e.g. 2 s): a trade stamped before a boundary that
  arrives after ``on_time`` closed it is late (see below).
* **One base.** Trades build 1m bars; every higher timeframe is the aggregate of its 1m bars (open = first open,
  high = max, low = min, close = last close, volume / quote_volume / trades / taker_buy_volume = sums added in time
  order). Higher bars therefore equal the aggregate of their 1m bars *exactly*, also across quiet minutes, and
  :func:`engines.data.resample` reproduces them number for number. All timeframes must be whole minutes.
* **Quiet periods.** With ``BarsConfig.emit_empty`` (default) a period without trades closes as a flat bar at
  the previous close with zero volume, so each timeframe has exactly one bar per period once it started. Without
  it, empty minutes emit nothing and a higher bar aggregates only the minutes that traded. A jump of more than
  ``max_fill_bars`` empty minutes is a bad timestamp, not a quiet market: the open bars are closed, nothing is
  filled, the series restarts at the new period (counted as ``gap_resets``).
* **Late trades.** A trade older than the open 1m bar's start is late. Bars never reopen: if it is late by more
  than ``late_grace_ms`` it is dropped (``late_dropped``); within the grace it is folded into the open bar as if it
  had happened at the bar's start (``late_folded``) — its volume is kept, at the price of counting it in the next
  period. With the default grace 0 every late trade is dropped. A trade inside the open bar is on time even if
  older than the previous trade (venues stamp in milliseconds and reorder slightly).
* **Bad trades** (NaN/inf/<=0 price, NaN/inf/<0 quantity, another symbol) are dropped and counted by reason.
* ``taker_buy_volume`` is the volume of trades whose buyer was the taker (``is_buyer_maker`` False).

Speed: ``on_trade`` updates a mutable accumulator in place and allocates only when a bar closes (the frozen
:class:`~market.events.Bar`); see benchmarks/bench_features.py for the per-trade cost.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import structlog

from market.cfgbase import opt
from market.events import Bar, Trade, timeframe_ns


@dataclass(frozen=True)
class BarsConfig:
    emit_empty: bool = opt(True, "Quiet period: close bars with no trades as flat bars at the previous close "
                           "with zero volume (so every timeframe has one bar per period).")
    late_grace_ms: int = opt(0, "A trade older than the open bar's start by more than this is dropped and "
                             "counted as late (bars are never reopened); a trade late by at most this much is "
                             "folded into the open bar.", ge=0, le=3_600_000)
    max_fill_bars: int = opt(10080, "Most flat 1m bars filled for one quiet gap (emit_empty); a longer jump in "
                             "event time (a bad timestamp, not a quiet market) restarts the series, counted.",
                             ge=1, le=527_040)

__all__ = ["BarBuilder", "BarStats", "BASE_TIMEFRAME"]

log = structlog.get_logger(__name__)

BASE_TIMEFRAME = "1m"
_M = timeframe_ns(BASE_TIMEFRAME)
_INF = float("inf")
_NO_TIME = -(1 << 62)


@dataclass
class BarStats:
    """Counters the daemon exports (the only mutable state visible outside the builder)."""

    accepted: int = 0
    late_dropped: int = 0
    late_folded: int = 0
    bad_dropped: int = 0
    bad_by_reason: dict[str, int] = field(default_factory=dict)
    bars_closed: int = 0  # all timeframes that are emitted
    empty_bars: int = 0  # flat 1m bars filled for quiet minutes
    gap_resets: int = 0


class _Acc:
    """A bar being built (mutable, internal). ``n == 0`` and ``has`` False means nothing in it yet."""

    __slots__ = ("start", "end", "o", "h", "l", "c", "v", "qv", "n", "tb", "has")

    def __init__(self) -> None:
        self.start = self.end = _NO_TIME
        self.reset()

    def reset(self) -> None:
        self.o = self.h = self.l = self.c = 0.0
        self.v = self.qv = self.tb = 0.0
        self.n = 0
        self.has = False

    def merge(self, o: float, h: float, l: float, c: float, v: float, qv: float, n: int, tb: float) -> None:
        if self.has:
            if h > self.h:
                self.h = h
            if l < self.l:
                self.l = l
        else:
            self.o, self.h, self.l = o, h, l
            self.has = True
        self.c = c
        self.v += v
        self.qv += qv
        self.n += n
        self.tb += tb


def _log_count(event: str, count: int, **kw) -> None:
    """Log the 1st, 10th, 100th ... occurrence so a flood of bad input cannot flood the log."""
    if str(count).rstrip("0") == "1":
        log.warning(event, count=count, **kw)


class BarBuilder:
    """Bars of one symbol for several timeframes. Feed ``on_trade``/``on_time``; both return closed bars."""

    def __init__(self, symbol: str, timeframes: Sequence[str] = ("1m", "5m", "15m", "1h"),
                 cfg: BarsConfig = BarsConfig()) -> None:
        if not timeframes:
            raise ValueError("BarBuilder needs at least one timeframe")
        tfs = sorted(set(timeframes), key=timeframe_ns)  # raises ValueError on an unknown timeframe
        for tf in tfs:
            if timeframe_ns(tf) % _M:
                raise ValueError(f"timeframe {tf!r} is not a whole number of minutes")
        self.symbol = symbol
        self.timeframes: tuple[str, ...] = tuple(tfs)
        self.cfg = cfg
        self.stats = BarStats()
        self._emit_base = BASE_TIMEFRAME in tfs
        self._emit_empty = cfg.emit_empty
        self._grace_ns = cfg.late_grace_ms * 1_000_000
        self._max_fill = cfg.max_fill_bars
        self._m = _Acc()  # the open 1m bar
        self._hi: list[tuple[str, int, _Acc]] = [(tf, timeframe_ns(tf), _Acc()) for tf in tfs if tf != BASE_TIMEFRAME]
        self._started = False
        self._last_close = 0.0
        self._gap_next = False  # the next period change is a gap (a confirmed venue clock jump): no filling

    # ------------------------------------------------------------------------------------------ hot path
    def on_trade(self, t: Trade) -> list[Bar]:
        """Fold one trade in; return the bars it closed (all timeframes, ordered by end time, then timeframe)."""
        p = t.price
        q = t.qty
        if not (0.0 < p < _INF and 0.0 <= q < _INF) or t.symbol != self.symbol:
            self._bad(t)
            return []
        ts = t.ts_event
        m = self._m
        if ts >= m.end:
            out = self._advance(ts)
        else:
            out = []
            if ts < m.start:
                if ts < m.start - self._grace_ns:
                    self.stats.late_dropped += 1
                    _log_count("bars.late_trade_dropped", self.stats.late_dropped, symbol=self.symbol,
                               late_ms=(m.start - ts) / 1e6)
                    return out
                self.stats.late_folded += 1
        if m.n:
            if p > m.h:
                m.h = p
            elif p < m.l:
                m.l = p
        else:
            m.o = m.h = m.l = p
        m.c = p
        m.v += q
        m.qv += p * q
        m.n += 1
        if not t.is_buyer_maker:
            m.tb += q
        self.stats.accepted += 1
        return out

    def on_time(self, ts_ns: int) -> list[Bar]:
        """Close every bar whose period ended at or before ``ts_ns`` (quiet markets). Never opens a series."""
        if not self._started or ts_ns < self._m.end:
            return []
        return self._advance(ts_ns)

    def gap(self) -> None:
        """The stream's clock jumped (confirmed by the feed's guard): the next period change restarts the series
        instead of filling the jumped-over minutes with flat bars."""
        self._gap_next = True

    # ------------------------------------------------------------------------------------------ queries
    def current(self, tf: str) -> Bar | None:
        """The open (partial) bar of ``tf`` as it stands, or None before the first trade."""
        if tf not in self.timeframes:
            raise KeyError(f"timeframe {tf!r} not built here; built: {', '.join(self.timeframes)}")
        if not self._started:
            return None
        m = self._m
        base = self._base_values()
        if tf == BASE_TIMEFRAME:
            if base is None:
                return None
            return Bar(self.symbol, tf, m.start, *base)
        for name, tf_ns, acc in self._hi:
            if name != tf:
                continue
            tmp = _Acc()
            if acc.has:
                tmp.merge(acc.o, acc.h, acc.l, acc.c, acc.v, acc.qv, acc.n, acc.tb)
                start = acc.start
            else:
                start = m.start - m.start % tf_ns
            if base is not None:
                tmp.merge(*base)
            if not tmp.has:
                return None
            return Bar(self.symbol, tf, start, tmp.o, tmp.h, tmp.l, tmp.c, tmp.v, tmp.qv, tmp.n, tmp.tb)
        raise AssertionError("unreachable")

    # ------------------------------------------------------------------------------------------ internals
    def _bad(self, t: Trade) -> None:
        p, q = t.price, t.qty
        if t.symbol != self.symbol:
            reason = "symbol"
        elif not 0.0 < p < _INF:
            reason = "price"
        else:
            reason = "qty"
        s = self.stats
        s.bad_dropped += 1
        s.bad_by_reason[reason] = s.bad_by_reason.get(reason, 0) + 1
        _log_count("bars.bad_trade_dropped", s.bad_dropped, symbol=t.symbol, reason=reason, price=p, qty=q,
                   trade_id=t.trade_id)

    def _base_values(self) -> tuple | None:
        """(o, h, l, c, v, qv, n, tb) of the open 1m bar: its trades, a flat bar (emit_empty) or None."""
        m = self._m
        if m.n:
            return (m.o, m.h, m.l, m.c, m.v, m.qv, m.n, m.tb)
        if self._emit_empty:
            c = self._last_close
            return (c, c, c, c, 0.0, 0.0, 0, 0.0)
        return None

    def _advance(self, ts: int) -> list[Bar]:
        """Close the open 1m bar and every period before the one holding ``ts``; open that one."""
        out: list[Bar] = []
        new_start = ts - ts % _M
        m = self._m
        if not self._started:
            self._started = True
        else:
            gap = (new_start - m.start) // _M - 1  # empty minutes strictly between
            fill = self._emit_empty and gap <= self._max_fill and not (self._gap_next and gap > 0)
            self._gap_next = False
            if self._emit_empty and not fill and gap > 0:
                self.stats.gap_resets += 1
                log.warning("bars.gap_reset", symbol=self.symbol, minutes=gap)
            cur = m.start
            while True:
                self._close_minute(cur, out)
                nxt = cur + _M if fill else new_start
                for tf, tf_ns, acc in self._hi:
                    if acc.has and acc.end <= nxt:
                        self._emit_acc(tf, acc, out)
                if nxt >= new_start:
                    break
                cur = nxt
                m.n = 0  # an empty minute: closes flat at the last close
            if len(out) > 1:  # only non-nested timeframes (e.g. 3m with 5m) can come out of end order
                out.sort(key=lambda b: b.open_ns + timeframe_ns(b.timeframe))  # stable: ties keep tf order
        m.start = new_start
        m.end = new_start + _M
        m.reset()
        return out

    def _close_minute(self, start: int, out: list[Bar]) -> None:
        base = self._base_values()
        if base is None:
            return
        o, h, l, c, v, qv, n, tb = base
        if not n:
            self.stats.empty_bars += 1
        self._last_close = c
        if self._emit_base:
            out.append(Bar(self.symbol, BASE_TIMEFRAME, start, o, h, l, c, v, qv, n, tb))
            self.stats.bars_closed += 1
        for _tf, tf_ns, acc in self._hi:
            if not acc.has:
                acc.start = start - start % tf_ns
                acc.end = acc.start + tf_ns
            acc.merge(o, h, l, c, v, qv, n, tb)

    def _emit_acc(self, tf: str, acc: _Acc, out: list[Bar]) -> None:
        out.append(Bar(self.symbol, tf, acc.start, acc.o, acc.h, acc.l, acc.c, acc.v, acc.qv, acc.n, acc.tb))
        self.stats.bars_closed += 1
        acc.reset()
