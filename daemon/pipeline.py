"""The trading pipeline: ONE synchronous core that both ``tradingd run`` and ``tradingd backtest`` drive.

Replay = live: the daemon calls it from the feed's callback with live events; the backtest calls it with
recorded trades or 1m klines. No I/O of its own except through the objects it is handed (the broker commits to
its store; bars go to ``bar_sink``), no clock reads except the injected ``clock`` used only to MEASURE
tick-to-decision latency (decisions themselves use event time).

Per closed bar (``on_trade`` -> BarBuilder, or ``on_bar`` with 1m bars -> :class:`MinuteAggregator`)::

    IncrementalFeatures(tf).update(bar) -> engine_sets[tf].predict(row, symbol) -> {"xgboost": p, "lstm": p}
    -> optimizer.on_bar_close(..., atr, BookTop, AccountState, ts, book_stale=)
    -> risk.check(intent) -> broker.submit(intent, book, ts) -> optimizer.on_fill(fill) / on_order_done(coid)

Between bars every trade goes to ``broker.on_trade`` (resting orders) and ``optimizer.on_price`` (stop/TP).
Times: ``ts`` handed to the cores is the event's receive time (``Trade.ts_recv``) for trade-driven runs, and the
bar's close time (``open_ns + timeframe``) for klines-driven runs. A book that is not tradeable (``is_tradeable``
False) means no new orders: the optimizer is told ``book_stale=True`` and the pipeline counts it
(``counters["stale_book_bars"]``). Every decision is recorded as a :class:`Decision` (bounded by ``keep``).

Several symbols (``batch=True``, the default): a closed bar's features are computed at once, but the decision
waits for the bar BOUNDARY (timeframe, close time): when every subscribed symbol's bar of that boundary has closed,
the rows go through ONE ``engine_sets[tf].predict_batch`` call and ONE ``optimizer.decide_universe`` (which ranks
the entries across symbols under the portfolio caps). A boundary some symbol never closes (no trade yet, not listed)
is decided without it when the bar clock ``on_time(ts)`` passes its close, when a later bar of the same timeframe
closes, or on :meth:`TradingPipeline.flush` (end of a replay). The last decided boundary per timeframe is in
``boundaries`` (for /status). One symbol, or ``batch=False`` (the sequential path, kept for benchmarks), decides
each bar as it closes with ``optimizer.on_bar_close``.

Engine sets only need ``predict(row, symbol) -> dict[str, float]`` (and optionally ``observe(row, symbol)`` for
history priming without inference); see :class:`daemon.engineset.EngineSet`. An engine set with
``predict_boundary(rows, close_ns)`` (the pooled universe models, :class:`daemon.universe_engine.UniverseEngineSet`)
gets every row of a boundary, warm or not, and every primed bar through ``observe_bar(symbol, bar, row)``.
"""
from __future__ import annotations

import math
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import msgspec
import numpy as np
import structlog

from market.bars import BarBuilder
from market.events import Bar, DepthSnapshot, DepthUpdate, Fill, OrderIntent, Trade, timeframe_ns
from market.events import BookStatus
from daemon.plausible import ClockJump
from daemon.samples import SampleRing
from strategies.optimizer import BookTop, Signal, SymbolSignal
from strategies.risk import AccountState
from strategies.sizing import is_dust

__all__ = ["TradingPipeline", "Decision", "EngineSetLike", "MinuteAggregator", "book_top", "history_bars_needed"]

log = structlog.get_logger(__name__)

_M = 60_000_000_000


class EngineSetLike(Protocol):
    def predict(self, row: np.ndarray, symbol: str) -> dict[str, float]: ...


@dataclass
class Decision:
    """What happened at one bar close (the backtest's and tests' view of the pipeline)."""

    symbol: str
    timeframe: str
    bar_open_ns: int
    close: float
    ts: int  # event time handed to the cores
    predictions: dict[str, float]
    atr: float | None
    signal: Signal | None
    book_stale: bool
    intents: list[OrderIntent] = field(default_factory=list)
    risk: list[tuple[str, bool, str, float]] = field(default_factory=list)  # (coid, allowed, reason, qty)
    fills: list[Fill] = field(default_factory=list)
    errors: list[tuple[str, str]] = field(default_factory=list)  # (coid, broker error reason)
    latency_ns: int | None = None  # tick (ts_recv of the closing trade) to decision done


def book_top(book: Any) -> tuple[BookTop | None, bool]:
    """``(BookTop or None, stale)`` from an OrderBook, a ``(bids, asks)`` pair, or None (no book: not stale)."""
    if book is None:
        return None, False
    if hasattr(book, "best_bid"):
        if not book.is_tradeable:
            return None, True
        b, a = book.best_bid(), book.best_ask()
        if b is None or a is None:
            return None, True
        return BookTop(b[0], a[0]), False
    bids, asks = book
    if not bids or not asks:
        return None, True
    return BookTop(bids[0][0], asks[0][0]), False


def _spread_of(book: Any, p: Any) -> float:
    top, _ = book_top(book)
    return top.spread / top.mid if top is not None and top.valid else p.optimizer.cfg.assumed_spread_bps * 1e-4


def history_bars_needed(timeframes: Sequence[str], extra_bars: int = 0) -> int:
    """1m bars of history that warm features (+ ``extra_bars``, e.g. the LSTM's seq_len) on every timeframe."""
    from engines.features import FEATURE_SCHEMA
    longest = max(timeframe_ns(tf) for tf in timeframes) // _M
    return (FEATURE_SCHEMA.warmup + 2 + extra_bars) * longest + longest


class MinuteAggregator:
    """Higher-timeframe bars from closed 1m bars, with BarBuilder's rules (and engines.data.resample's numbers):
    open = first, high = max, low = min, close = last, sums added in time order. A bar is emitted when its last
    minute arrives (or when a minute of a later period shows it ended)."""

    def __init__(self, symbol: str, timeframes: Sequence[str]) -> None:
        self.symbol = symbol
        self.tfs = [(tf, timeframe_ns(tf)) for tf in sorted(set(timeframes), key=timeframe_ns) if tf != "1m"]
        self._acc: dict[str, list] = {}
        self.last = -1  # open time of the latest 1m bar folded in

    def add(self, bar: Bar) -> list[Bar]:
        """Fold one 1m bar in; the 1m bar itself (when '1m' was asked for) is NOT returned."""
        if bar.open_ns <= self.last:
            raise ValueError(f"1m bar at {bar.open_ns} not after {self.last}")
        self.last = bar.open_ns
        out: list[Bar] = []
        for tf, tf_ns in self.tfs:
            start = bar.open_ns - bar.open_ns % tf_ns
            a = self._acc.get(tf)
            if a is not None and a[0] != start:
                out.append(self._emit(tf, a))
                a = None
            if a is None:
                self._acc[tf] = [start, bar.open, bar.high, bar.low, bar.close, bar.volume, bar.quote_volume,
                                 bar.trades, bar.taker_buy_volume]
            else:
                if bar.high > a[2]:
                    a[2] = bar.high
                if bar.low < a[3]:
                    a[3] = bar.low
                a[4] = bar.close
                a[5] += bar.volume
                a[6] += bar.quote_volume
                a[7] += bar.trades
                a[8] += bar.taker_buy_volume
            if bar.open_ns + _M == start + tf_ns:
                out.append(self._emit(tf, self._acc.pop(tf)))
        out.sort(key=lambda b: b.open_ns + timeframe_ns(b.timeframe))
        return out

    def _emit(self, tf: str, a: list) -> Bar:
        return Bar(self.symbol, tf, a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7], a[8])


class _SymState:
    __slots__ = ("builder", "agg", "features", "last_open", "mark")

    def __init__(self, symbol: str, timeframes: Sequence[str], cfg: Any,
                 features: Callable[[str, str], Any] | None = None) -> None:
        from engines.features import IncrementalFeatures
        self.builder = BarBuilder(symbol, timeframes, cfg.bars)
        self.agg = MinuteAggregator(symbol, timeframes)
        self.features = {tf: features(symbol, tf) if features is not None else IncrementalFeatures(tf)
                         for tf in timeframes}
        self.last_open: dict[str, int] = {}
        self.mark = math.nan


@dataclass(slots=True)
class _Row:
    """A closed bar waiting for its boundary's decision."""

    bar: Bar
    row: np.ndarray | None
    atr: float | None
    book: Any


@dataclass(frozen=True)
class Observed:
    """What an observer sees of one symbol's decision: its feature row, the bar, and the inputs of the signal."""

    symbol: str
    row: np.ndarray | None
    close: float
    atr: float | None
    spread: float
    signal: Any  # strategies.optimizer.Signal or None (no ATR yet)
    predictions: Mapping[str, float]


class TradingPipeline:
    """See the module docstring. ``keep``: decisions kept for /status (bounded by default: a daemon runs for
    months; None keeps all, for backtests). ``engine_sets``: {timeframe: EngineSetLike}; a timeframe without one gets no
    predictions (the optimizer then makes no entry on it). ``books``: the live books by symbol (the protocol's),
    used when an event comes without one. ``bar_sink``: where closed bars go (default ``store.write_bars``).
    ``features(symbol, tf)``: the per-symbol feature evaluator (``update(bar) -> row | None`` and ``atr``; default
    engines.features.IncrementalFeatures; the universe replay passes precomputed ones)."""

    def __init__(self, cfg: Any, symbols: Sequence[str], engine_sets: Mapping[str, EngineSetLike], optimizer: Any,
                 risk: Any, broker: Any, store: Any = None, metrics: Any = None,
                 clock: Callable[[], int] = time.time_ns, *, books: Mapping[str, Any] | None = None,
                 bar_sink: Callable[[list[Bar]], None] | None = None, keep: int | None = 2000,
                 timeframes: Sequence[str] | None = None,
                 plan_sink: Callable[[str, dict | None], None] | None = None, batch: bool = True,
                 features: Callable[[str, str], Any] | None = None) -> None:
        self.cfg = cfg
        self.symbols = tuple(symbols)
        self.timeframes = tuple(timeframes or cfg.general.timeframes)
        self.engine_sets = dict(engine_sets)
        self.optimizer = optimizer
        self.risk = risk
        self.broker = broker
        self.store = store
        self.metrics = metrics
        self.clock = clock
        self.books: Mapping[str, Any] = books if books is not None else {}
        if bar_sink is None and store is not None:
            bar_sink = store.write_bars
        self.bar_sink = bar_sink
        # where the optimizer's exit plans go when they change (the daemon: the store's kv, for restarts)
        self.plan_sink = plan_sink
        self._plans: dict[str, dict | None] = {}
        self.prefix = cfg.optimizer.client_id_prefix
        self._sym = {s: _SymState(s, self.timeframes, cfg, features) for s in self.symbols}
        # decide at bar boundaries across symbols (module docstring); one symbol keeps the per-bar path
        self.batch = bool(batch) and len(self.symbols) > 1
        self._pending: dict[tuple[str, int], dict[str, _Row]] = {}  # (timeframe, close_ns) -> symbol -> row
        self.boundaries: dict[str, dict[str, Any]] = {}  # timeframe -> the last decided boundary (for /status)
        self.decisions: deque[Decision] = deque(maxlen=keep)
        # called after each decision batch (its orders already sent) with (timeframe, ts, [Observed]): the shadow
        # A/B (daemon.shadow) and the drift watch (daemon.drift); an observer's error is counted, never raised
        self.observers: list[Callable[[str, int, list[Observed]], None]] = []
        self.counters: Counter[str] = Counter()
        self.latencies_ns = SampleRing(100_000)  # preallocated: no per-sample allocation (soak)
        self.book_states: dict[str, str] = {}
        self.last_ts = 0
        self._store_ns = SampleRing(1000)
        # event type -> handler(ev, book): one dict lookup per event
        self._handlers: dict[type, Callable[[Any, Any], list[Decision]]] = {
            Trade: self.on_trade, DepthUpdate: self._on_depth_event, DepthSnapshot: self._on_depth_event,
            BookStatus: self._on_book_status_event, ClockJump: self._on_clock_jump}

    # ------------------------------------------------------------------------------------------ accessors
    def builder(self, symbol: str) -> BarBuilder:
        return self._sym[symbol].builder

    def features(self, symbol: str, tf: str):
        return self._sym[symbol].features[tf]

    def marks(self) -> dict[str, float]:
        out = {}
        pf = self.broker.portfolio
        for s, st in self._sym.items():
            m = st.mark
            if not (m > 0):  # no price seen yet: value an existing position at its entry price
                p = pf.positions.get(s)
                m = p.avg_price if p is not None and p.avg_price > 0 else math.nan
            if m > 0:
                out[s] = m
        return out

    def account(self) -> AccountState:
        pf = self.broker.portfolio
        marks = self.marks()
        try:
            equity = pf.mark(marks)[0]
        except ValueError:
            equity = math.nan
        positions = pf.positions
        filters = getattr(self.broker, "filters", None)
        if filters and any(is_dust(p.qty, filters.get(s), marks.get(s)) for s, p in positions.items()):
            # a remainder below one lot or the min notional at the mark (a base-asset commission's leftover) is
            # valued in equity but is not a position: the strategy neither manages nor exits what the venue
            # cannot sell
            positions = {s: p for s, p in positions.items() if not is_dust(p.qty, filters.get(s), marks.get(s))}
        return AccountState(equity, positions, marks)

    # ------------------------------------------------------------------------------------------ priming
    def prime(self, symbol: str, bars_1m: Iterable[Bar]) -> int:
        """Warm the feature state, the engines' sequence buffers (``observe``) and the optimizer's
        timeframe-selection metrics from history 1m bars, without predicting or trading. Returns the number of rows produced. Call before live events."""
        st = self._sym[symbol]
        n = 0
        for b in bars_1m:
            if b.open_ns <= st.agg.last:
                continue
            st.mark = b.close
            closed = ([b] if "1m" in self.timeframes else []) + st.agg.add(b)
            for bar in closed:
                if bar.open_ns <= st.last_open.get(bar.timeframe, -1):
                    continue
                st.last_open[bar.timeframe] = bar.open_ns
                if bar.timeframe not in st.features:
                    continue
                feats = st.features[bar.timeframe]
                row = feats.update(bar)
                es = self.engine_sets.get(bar.timeframe)
                ob = getattr(es, "observe_bar", None)
                if ob is not None:  # the universe engine: every bar, aligned by time across symbols
                    ob(symbol, bar, row)
                observe = getattr(self.optimizer, "observe_market", None)
                if observe is not None and feats.atr is not None:  # timeframe selection warm from history
                    observe(symbol, bar.timeframe, bar, feats.atr)
                if row is not None:
                    n += 1
                    obs = getattr(es, "observe", None)
                    if obs is not None:
                        obs(row, symbol)
        self.counters["primed_rows"] += n
        return n

    def finish_priming(self) -> None:
        """After every symbol's :meth:`prime`: engine sets that align history across symbols (the universe engine)
        step it now, at start-up, not at the first live boundary."""
        for es in self.engine_sets.values():
            fin = getattr(es, "finish_priming", None)
            if fin is not None:
                fin()

    # ------------------------------------------------------------------------------------------ events
    def on_event(self, ev: Any, book: Any = None) -> list[Decision]:
        """Dispatch a feed event by its type (Trade, DepthUpdate/DepthSnapshot, BookStatus, ClockJump; others,
        e.g. BookTicker, are ignored)."""
        handler = self._handlers.get(type(ev))
        return handler(ev, book) if handler is not None else []

    def _on_depth_event(self, ev: DepthUpdate | DepthSnapshot, book: Any) -> list[Decision]:
        self.on_depth(ev.symbol, book if book is not None else self.books.get(ev.symbol), ev.ts_recv)
        return []

    def _on_book_status_event(self, ev: BookStatus, book: Any) -> list[Decision]:
        self.on_book_status(ev)
        return []

    def _on_clock_jump(self, ev: ClockJump, book: Any) -> list[Decision]:
        """The venue's clock jumped (confirmed by the feed's guard): a gap in the bars, not a fill."""
        st = self._sym.get(ev.symbol)
        if st is not None and ev.kind == "trade":
            st.builder.gap()
            self.counters["clock_jumps"] += 1
        return []

    def _state(self, sym: str, book: Any) -> tuple[_SymState | None, Any]:
        """The symbol's state (None and counted when unknown) and its book (the live one unless given)."""
        st = self._sym.get(sym)
        if st is None:
            self.counters["unknown_symbol"] += 1
        return st, (book if book is not None else self.books.get(sym))

    def on_trade(self, trade: Trade, book: Any = None) -> list[Decision]:
        """A venue trade: close bars (decide on each), then resting orders and stop/TP checks."""
        sym = trade.symbol
        st, book = self._state(sym, book)
        if st is None:
            return []
        ts = trade.ts_recv
        self.last_ts = max(self.last_ts, ts)
        out: list[Decision] = []
        closed = st.builder.on_trade(trade)
        for bar in closed:
            out.extend(self._close(bar, book, ts))
        if trade.price > 0 and math.isfinite(trade.price):
            st.mark = trade.price
        if out:
            lat = self.clock() - trade.ts_recv
            for d in out:
                d.latency_ns = lat
            self.latencies_ns.append(lat)
            if self.metrics is not None:
                self.metrics.tick_to_decision.observe(lat / 1e9)
        self._broker_trade(trade, book)
        top, stale = book_top(book)
        acct = self.account()
        intents = self.optimizer.on_price(sym, trade.price, acct, ts, book_stale=stale)
        if intents:
            d = Decision(sym, "", 0, trade.price, ts, {}, None, None, stale)
            self.execute(intents, acct, book, ts, d)
            self.decisions.append(d)
            out.append(d)
        return out

    def on_bar(self, bar_1m: Bar, book: Any = None) -> list[Decision]:
        """A closed 1m bar (klines-driven runs): decide on it and on every higher bar it completes.
        ``ts`` for the cores is the bar's close time."""
        if bar_1m.timeframe != "1m":
            raise ValueError(f"on_bar takes 1m bars, got {bar_1m.timeframe}")
        sym = bar_1m.symbol
        st, book = self._state(sym, book)
        if st is None:
            return []
        ts = bar_1m.open_ns + _M
        self.last_ts = max(self.last_ts, ts)
        if bar_1m.open_ns <= st.agg.last:
            self.counters["old_bar"] += 1
            return []
        closed = ([bar_1m] if "1m" in self.timeframes else []) + st.agg.add(bar_1m)
        out = []
        for bar in closed:
            out.extend(self._close(bar, book, ts))
        st.mark = bar_1m.close
        return out

    def on_closed_bar(self, bar: Bar, book: Any = None, ts: int | None = None) -> list[Decision]:
        """A closed bar of a traded timeframe from a source without 1m bars (the universe backtest replays 5m/1h
        klines): marked, then staged and decided exactly like a bar the BarBuilder closed. ``ts`` defaults to the
        bar's close time."""
        st, book = self._state(bar.symbol, book)
        if st is None:
            return []
        ts = bar.open_ns + timeframe_ns(bar.timeframe) if ts is None else ts
        self.last_ts = max(self.last_ts, ts)
        st.mark = bar.close
        return self._close(bar, book, ts)

    def on_time(self, ts: int) -> list[Decision]:
        """Local clock tick (pass ``now - venue latency``): closes bars of quiet periods and decides on them."""
        out = []
        for sym, st in self._sym.items():
            for bar in st.builder.on_time(ts):
                out.extend(self._close(bar, self.books.get(sym), ts))
        if self._pending:  # the bar clock passed these boundaries: decide them without the symbols still quiet
            out.extend(self.flush(ts, upto=ts, reason="bar_clock"))
        return out

    def flush(self, ts: int | None = None, *, upto: int | None = None, reason: str = "flush") -> list[Decision]:
        """Decide every pending boundary (closing at or before ``upto``; all when None) with the symbols it has,
        oldest first. The end of a replay calls it; ``on_time`` calls it for the boundaries its clock passed."""
        ts = ts if ts is not None else self.last_ts
        out: list[Decision] = []
        for key in sorted(k for k in self._pending if upto is None or k[1] <= upto):
            out.extend(self._decide_boundary(key, ts, reason))
        return out

    def on_depth(self, symbol: str, book: Any, ts: int) -> None:
        """A book change: lets latency-delayed / resting paper orders meet the book (only when there are any)."""
        if book is None or not self.broker.open_orders():
            return
        for ex in self.broker.on_book(symbol, book, ts):
            self._after_execution(ex, None)

    def on_book_status(self, status: Any) -> None:
        prev = self.book_states.get(status.symbol)
        self.book_states[status.symbol] = status.state
        if prev != status.state:
            self.counters[f"book_{str(status.state).lower()}"] += 1
            log.info("book_status", symbol=status.symbol, state=status.state, reason=status.reason)

    # ------------------------------------------------------------------------------------------ control
    def halt(self, reason: str, ts: int | None = None) -> None:
        self.risk.halt(reason, ts if ts is not None else self.last_ts)

    def resume(self, ts: int | None = None) -> None:
        self.risk.resume(ts if ts is not None else self.last_ts)

    def flatten(self, ts: int | None = None) -> Decision:
        """Close every open position now (reduce-only market orders on the live books)."""
        ts = ts if ts is not None else self.last_ts
        acct = self.account()
        intents = self.risk.flatten_intents(acct.positions, ts, prefix=self.prefix)  # dust is not flattened
        d = Decision("*", "", 0, math.nan, ts, {}, None, None, False)
        for it in intents:
            self.execute([it], acct, self.books.get(it.symbol), ts, d)
        self.decisions.append(d)
        return d

    # ------------------------------------------------------------------------------------------ internals
    def _close(self, bar: Bar, book: Any, ts: int) -> list[Decision]:
        """A closed bar: decided now (one symbol / sequential path) or staged for its boundary (batched)."""
        if not self.batch:
            d = self._on_closed_bar(bar, book, ts)
            return [d] if d is not None else []
        st = self._sym[bar.symbol]
        tf = bar.timeframe
        if bar.open_ns <= st.last_open.get(tf, -1):  # already seen (history overlap at start-up)
            self.counters["bar_overlap"] += 1
            return []
        st.last_open[tf] = bar.open_ns
        self._bar_in(bar)
        feats = st.features.get(tf)
        row = feats.update(bar) if feats is not None else None
        close = bar.open_ns + timeframe_ns(tf)
        out: list[Decision] = []
        # a later bar of this timeframe closed: earlier boundaries will not complete (that symbol moved on)
        for key in sorted(k for k in self._pending if k[0] == tf and k[1] < close):
            out.extend(self._decide_boundary(key, ts, "later_bar"))
        rows = self._pending.setdefault((tf, close), {})
        rows[bar.symbol] = _Row(bar, row, feats.atr if feats is not None else None, book)
        if len(rows) == len(self.symbols):
            out.extend(self._decide_boundary((tf, close), ts, "complete"))
        return out

    def _observe(self, tf: str, ts: int, rows: list[Observed]) -> None:
        """Hand a decision batch to the observers; an observer's error is counted, never stops trading."""
        for fn in self.observers:
            try:
                fn(tf, ts, rows)
            except Exception as e:  # noqa: BLE001 - the shadow A/B must not stop the champion
                self.counters["observer_errors"] += 1
                log.error("observer_failed", timeframe=tf, error=f"{type(e).__name__}: {e}")

    def _bar_in(self, bar: Bar) -> None:
        """Count a closed bar and hand it to the bar sink (a store error is counted, never stops trading)."""
        tf = bar.timeframe
        self.counters["bars"] += 1
        m = self.metrics
        if m is not None:
            m.bars.labels(bar.symbol, tf).inc()
        if self.bar_sink is not None:
            t0 = time.perf_counter_ns()
            try:
                self.bar_sink([bar])
            except Exception as e:  # noqa: BLE001 - losing a stored bar must not stop trading; counted
                self.counters["bar_store_errors"] += 1
                log.error("bar_store_failed", error=str(e), symbol=bar.symbol, timeframe=tf)
            self._store_ns.append(time.perf_counter_ns() - t0)

    def _predict_many(self, tf: str, rows: Sequence[_Row], close_ns: int = 0) -> list[dict[str, float]]:
        """Predictions for the rows (ONE call per model through ``predict_batch`` when the engine set has it; the
        universe engine's ``predict_boundary`` sees every row, warm or not: its rolling state steps on each bar)."""
        out: list[dict[str, float]] = [{} for _ in rows]
        es = self.engine_sets.get(tf)
        pbd = getattr(es, "predict_boundary", None)
        idx = list(range(len(rows))) if pbd is not None else [i for i, r in enumerate(rows) if r.row is not None]
        if es is None or not idx:
            return out
        try:
            pb = getattr(es, "predict_batch", None)
            if pbd is not None:
                got = pbd([(r.bar.symbol, r.bar, r.row) for r in rows], close_ns)
            elif pb is not None:
                got = pb([rows[i].row for i in idx], [rows[i].bar.symbol for i in idx])
            else:
                got = [es.predict(rows[i].row, rows[i].bar.symbol) for i in idx]
        except Exception as e:  # noqa: BLE001 - a model failure is a counted no-trade, never a crash
            self.counters["predict_errors"] += 1
            log.error("predict_failed", timeframe=tf, error=f"{type(e).__name__}: {e}")
            return out
        m = self.metrics
        for i, p in zip(idx, got):
            out[i] = dict(p)
            for k in p:
                self.counters[f"predictions.{k}"] += 1
                if m is not None:
                    m.predictions.labels(tf, k).inc()
        return out

    def _decide_boundary(self, key: tuple[str, int], ts: int, reason: str) -> list[Decision]:
        """One boundary: batched inference, then ONE ``decide_universe`` over its symbols, then execution."""
        staged = self._pending.pop(key, None)
        if not staged:
            return []
        tf = key[0]
        rows = [staged[s] for s in self.symbols if s in staged]
        preds = self._predict_many(tf, rows, key[1])
        acct = self.account()
        ds: dict[str, Decision] = {}
        sigs: list[SymbolSignal] = []
        for r, p in zip(rows, preds):
            bar, atr = r.bar, r.atr
            top, stale = book_top(r.book)
            sig = None
            if atr is not None and atr > 0:
                spread = top.spread / top.mid if top is not None and top.valid else \
                    self.optimizer.cfg.assumed_spread_bps * 1e-4
                sig = self.optimizer.combine_signal(p, atr=atr, price=bar.close, spread=spread)
            ds[bar.symbol] = Decision(bar.symbol, tf, bar.open_ns, bar.close, ts, p, atr, sig, stale)
            if stale:
                self.counters["stale_book_bars"] += 1
            sigs.append(SymbolSignal(bar.symbol, bar, p, atr if atr is not None else math.nan, top, stale))
        intents = list(self.optimizer.decide_universe(tf, sigs, acct, ts))
        self.counters[f"boundaries.{reason}"] += 1
        if math.isfinite(acct.equity):
            self.risk.update_account(acct, ts)  # daily-loss state moves on every boundary, not only on orders
        if self.risk.flatten_required and any(p.qty for p in acct.positions.values()):
            intents += [i for i in self.risk.flatten_intents(acct.positions, ts, prefix=self.prefix)
                        if not any(j.symbol == i.symbol and j.reduce_only for j in intents)]
        extra: Decision | None = None
        for it in intents:  # exits, then entries best first (the optimizer's order)
            d = ds.get(it.symbol)
            if d is None:  # a flatten of a symbol without a row at this boundary
                if extra is None:
                    extra = Decision("*", tf, key[1], math.nan, ts, {}, None, None, False)
                d = extra
            r = staged.get(it.symbol)
            self.execute([it], acct, r.book if r is not None and r.book is not None else self.books.get(it.symbol),
                         ts, d)
        out = list(ds.values()) + ([extra] if extra is not None else [])
        for d in out:
            if d.symbol != "*":
                self._sync_plan(d.symbol)
            self.decisions.append(d)
        self.counters["decisions"] += len(ds)
        if self.observers:  # after the orders went out: observers never delay a decision
            self._observe(tf, ts, [Observed(r.bar.symbol, r.row, r.bar.close, r.atr, _spread_of(r.book, self),
                                            ds[r.bar.symbol].signal, p) for r, p in zip(rows, preds)])
        ranking = getattr(self.optimizer, "ranking", {}).get(tf, ())
        self.boundaries[tf] = {
            "close_ns": key[1], "ts": ts, "reason": reason, "symbols": [r.bar.symbol for r in rows],
            "missing": [s for s in self.symbols if s not in staged],
            "predicted": [r.bar.symbol for r, p in zip(rows, preds) if p],
            "intents": [i.client_order_id for i in intents],
            "ranking": [{"symbol": k.symbol, "direction": k.direction, "dollar_edge": k.dollar_edge,
                         "admitted_qty": k.admitted_qty, "reason": k.reason} for k in ranking]}
        return out

    def _on_closed_bar(self, bar: Bar, book: Any, ts: int) -> Decision | None:
        st = self._sym[bar.symbol]
        tf = bar.timeframe
        if bar.open_ns <= st.last_open.get(tf, -1):  # already seen (history overlap at start-up)
            self.counters["bar_overlap"] += 1
            return None
        st.last_open[tf] = bar.open_ns
        self._bar_in(bar)
        m = self.metrics
        feats = st.features.get(tf)
        row = feats.update(bar) if feats is not None else None
        atr = feats.atr if feats is not None else None
        preds: dict[str, float] = {}
        es = self.engine_sets.get(tf)
        if row is not None and es is not None:
            try:
                preds = dict(es.predict(row, bar.symbol))
            except Exception as e:  # noqa: BLE001 - a model failure is a counted no-trade, never a crash
                self.counters["predict_errors"] += 1
                log.error("predict_failed", timeframe=tf, error=f"{type(e).__name__}: {e}")
                preds = {}
            for k in preds:
                self.counters[f"predictions.{k}"] += 1
                if m is not None:
                    m.predictions.labels(tf, k).inc()
        top, stale = book_top(book)
        acct = self.account()
        sig = None
        if atr is not None and atr > 0:
            spread = top.spread / top.mid if top is not None and top.valid else \
                self.optimizer.cfg.assumed_spread_bps * 1e-4
            sig = self.optimizer.combine_signal(preds, atr=atr, price=bar.close, spread=spread)
        d = Decision(bar.symbol, tf, bar.open_ns, bar.close, ts, preds, atr, sig, stale)
        if stale:
            self.counters["stale_book_bars"] += 1
        intents = self.optimizer.on_bar_close(bar.symbol, tf, bar, preds, atr if atr is not None else math.nan,
                                              top, acct, ts, book_stale=stale)
        if math.isfinite(acct.equity):
            self.risk.update_account(acct, ts)  # daily-loss state moves on every bar, not only on orders
        if self.risk.flatten_required and any(p.qty for p in acct.positions.values()):
            intents = list(intents) + [i for i in self.risk.flatten_intents(
                acct.positions, ts, prefix=self.prefix)
                if not any(j.symbol == i.symbol and j.reduce_only for j in intents)]
        if intents:
            self.execute(intents, acct, book, ts, d)
        self._sync_plan(bar.symbol)  # a position adopted at this bar (restart without a stored plan)
        self.decisions.append(d)
        self.counters["decisions"] += 1
        if self.observers:  # after the orders went out: observers never delay a decision
            self._observe(tf, ts, [Observed(bar.symbol, row, bar.close, atr, _spread_of(book, self), sig, preds)])
        return d

    def execute(self, intents: Sequence[OrderIntent], acct: AccountState, book: Any, ts: int,
                d: Decision) -> None:
        """Intents -> risk.check -> broker.submit on ``book`` -> optimizer.on_fill / on_order_done, recorded in
        ``d``. Public: the klines backtest sends its intrabar stop/TP exits through this same path."""
        from market.matching import OrderError
        m = self.metrics
        for intent in intents:
            d.intents.append(intent)
            self.counters["intents"] += 1
            acct = self.account()
            dec = self.risk.check(intent, acct, ts)
            d.risk.append((intent.client_order_id, dec.allowed, dec.reason, dec.adjusted_qty))
            if not dec.allowed:
                self.counters[f"risk_rejected.{dec.reason}"] += 1
                if m is not None:
                    m.rejections.labels(f"risk_{dec.reason}").inc()
                self.optimizer.on_order_done(intent.client_order_id, False)
                continue
            if dec.adjusted_qty != intent.qty:
                intent = msgspec.structs.replace(intent, qty=dec.adjusted_qty)
            if book is None:
                book = self.books.get(intent.symbol)
            try:
                ex = self.broker.submit(intent, book, ts)
            except OrderError as e:
                self.counters[f"broker_rejected.{e.reason}"] += 1
                d.errors.append((intent.client_order_id, e.reason))
                if m is not None:
                    m.rejections.labels(f"broker_{e.reason}").inc()
                log.warning("order_rejected", coid=intent.client_order_id, reason=e.reason, error=str(e))
                self.optimizer.on_order_done(intent.client_order_id, False)
                continue
            self.counters["orders"] += 1
            if m is not None:
                m.orders.labels(intent.symbol, "BUY" if int(intent.side) > 0 else "SELL", intent.reason).inc()
            self._after_execution(ex, d)

    _execute = execute  # the old private name

    def _sync_plan(self, symbol: str) -> None:
        """Hand the optimizer's exit plan for ``symbol`` to ``plan_sink`` when it changed (opened, resized,
        adopted, closed)."""
        if self.plan_sink is None:
            return
        plan = self.optimizer.exit_plan(symbol)
        if plan != self._plans.get(symbol):
            self._plans[symbol] = plan
            try:
                self.plan_sink(symbol, plan)
            except Exception as e:  # noqa: BLE001 - a lost plan costs the restart its levels, not trading
                self.counters["plan_store_errors"] += 1
                log.error("plan_store_failed", symbol=symbol, error=str(e))

    def on_execution(self, ex: Any) -> None:
        """A broker execution that arrived outside a decision (a venue's late answer, a fill recovered at
        start-up): fills to the optimizer, the exit plan to its sink."""
        self._after_execution(ex, None)

    def _after_execution(self, ex: Any, d: Decision | None) -> None:
        self._after_execution_fills(ex, d)
        self._sync_plan(ex.order.symbol)

    def _after_execution_fills(self, ex: Any, d: Decision | None) -> None:
        m = self.metrics
        for f in ex.fills:
            self.counters["fills"] += 1
            if m is not None:
                m.fills.labels(f.symbol, "BUY" if int(f.side) > 0 else "SELL").inc()
            if d is not None:
                d.fills.append(f)
            self.optimizer.on_fill(f)
        if not ex.order.is_open:
            self.optimizer.on_order_done(ex.order.client_order_id, ex.order.filled_qty > 0)

    def _broker_trade(self, trade: Trade, book: Any) -> None:
        try:
            execs = self.broker.on_trade(trade, book)
        except Exception as e:
            from market.matching import OrderError
            if not isinstance(e, OrderError):
                raise
            self.counters[f"broker_rejected.{e.reason}"] += 1
            return
        for ex in execs:
            self._after_execution(ex, None)

    # ------------------------------------------------------------------------------------------ reporting
    def latency_summary(self) -> dict[str, float | int]:
        """Tick-to-decision p50/p99/max in microseconds over the kept samples."""
        if not self.latencies_ns:
            return {"n": 0}
        a = self.latencies_ns.values().astype(np.float64) / 1e3
        return {"n": int(a.size), "p50_us": float(np.percentile(a, 50)), "p99_us": float(np.percentile(a, 99)),
                "max_us": float(a.max())}

    def store_write_summary(self) -> dict[str, float | int]:
        if not self._store_ns:
            return {"n": 0}
        a = self._store_ns.values().astype(np.float64) / 1e6
        return {"n": int(a.size), "p50_ms": float(np.percentile(a, 50)), "max_ms": float(a.max())}
