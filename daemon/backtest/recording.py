"""``tradingd backtest --recording``: a raw recording replayed through the live path, with a report.

Over a raw recording (``--recording PATH... --registry DIR [--history CSV]``, :func:`run_recording_backtest`):
the ``<recv_ns> <frame>`` files are replayed through the live path itself (the live feed's sans-I/O protocol:
decode -> guard -> OrderBook + snapshot sync -> oracle; then TradingPipeline -> paper broker walking the recorded
L2 book), on the recording's receive times and as fast as the CPU goes. A recording is minutes long, far less than the features' warm-up and no training set, so
the models are the registry's CURRENT versions (``EngineSet.load``, as ``tradingd run``) and the feature state is
primed from ``--history`` 1m klines ending before the recording (without it, predictions start after the
warm-up, and the command says so). Equity is marked on the book mid every minute; every fill (bar-close orders,
stop/TP exits, resting or latency-delayed orders) reaches the report through a tap on the broker. Undecodable
frames are counted drops (``counters.replay.decode_dropped.<reason>``), implausible events counted refusals
(``counters.replay.refused.<reason>``), never a crash.
"""
from __future__ import annotations

import math
import tempfile
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import structlog

from daemon.backtest.options import _M, default_filters
from market.events import Bar, OrderIntent, timeframe_ns
from market.filters import SymbolFilters

log = structlog.get_logger(__name__)

__all__ = ["run_recording_backtest", "RecordingResult", "OrderRecord", "decision_key"]


@dataclass(frozen=True)
class OrderRecord:
    """One order the pipeline sent to the broker during a recording replay, with the book it met."""

    client_order_id: str
    side: int
    qty: float            # the quantity submitted (after risk)
    ts: int
    mid: float            # book mid when submitted (the report's slippage reference)
    bids: tuple           # book depth at submission (levels the broker could walk)
    asks: tuple
    fills: tuple          # the Fills this submission produced at once


class _FillTap:
    """Wraps the paper broker: every execution (an order submitted at a bar close or on a stop/TP, a resting or
    latency-delayed order filled later) passes through here, so the report's ledger sees every fill with the
    book mid at that moment. Everything else is the broker's own attribute."""

    def __init__(self, broker: Any, ledger: Any, keep_depth: int) -> None:
        self._b = broker
        self.ledger = ledger
        self.keep_depth = keep_depth
        self.orders: list[OrderRecord] = []
        self._tags: dict[str, tuple[str, str]] = {}

    def __getattr__(self, name: str) -> Any:
        return getattr(self._b, name)

    @staticmethod
    def _mid(book: Any) -> float:
        if book is None or not getattr(book, "is_tradeable", True):
            return math.nan
        m = book.mid()
        return float(m) if m is not None else math.nan

    def _take(self, ex: Any, mid: float) -> None:
        from daemon.backtest.report import FillRecord
        for f in ex.fills:
            tf, reason = self._tags.get(f.client_order_id, ("", ""))
            if not reason:  # broker-side stop exits are named <tag>-sl / <tag>-tp
                reason = {"sl": "stop", "tp": "take_profit"}.get(f.client_order_id.rsplit("-", 1)[-1], "")
            self.ledger.on_fill(FillRecord(f.ts, f.symbol, int(f.side), f.price, f.qty, f.fee,
                                           mid if mid == mid else f.price, tf, reason, f.client_order_id))

    def submit(self, intent: OrderIntent, book: Any, ts: int, **kw: Any):
        mid = self._mid(book)
        if book is not None and getattr(book, "is_tradeable", False):
            bids, asks = book.depth(self.keep_depth)
        else:
            bids, asks = (), ()
        self._tags[intent.client_order_id] = (intent.timeframe, intent.reason)
        ex = self._b.submit(intent, book, ts, **kw)  # OrderError propagates to the pipeline, as live
        if ex.is_new:
            self.orders.append(OrderRecord(intent.client_order_id, int(intent.side), intent.qty, ts, mid,
                                           tuple(bids), tuple(asks), tuple(ex.fills)))
            self._take(ex, mid)
        return ex

    def on_trade(self, trade: Any, book: Any = None, **kw: Any):
        execs = self._b.on_trade(trade, book, **kw)
        if execs:
            mid = self._mid(book)
            for ex in execs:
                self._take(ex, mid)
        return execs

    def on_book(self, symbol: str, book: Any, ts: int, **kw: Any):
        execs = self._b.on_book(symbol, book, ts, **kw)
        if execs:
            mid = self._mid(book)
            for ex in execs:
                self._take(ex, mid)
        return execs


class _ReplayClock:
    """The pipeline's latency clock in a replay: the trade's recorded receive time plus the CPU time spent since
    the replay handed the trade over, so tick-to-decision measures this process's work, not 2024 vs now."""

    __slots__ = ("ts", "t0")

    def __init__(self) -> None:
        self.ts = 0
        self.t0 = 0

    def __call__(self) -> int:
        return self.ts + (time.perf_counter_ns() - self.t0)


def decision_key(d: Any) -> tuple:
    """A Decision as a comparable tuple (everything but the measured latency)."""
    return (d.ts, d.symbol, d.timeframe, d.bar_open_ns, d.close, tuple(sorted(d.predictions.items())), d.atr,
            d.book_stale,
            tuple((i.client_order_id, int(i.side), i.qty, i.reason, i.timeframe) for i in d.intents),
            tuple(tuple(r) for r in d.risk),
            tuple((f.fill_id, f.client_order_id, int(f.side), f.price, f.qty, f.fee, f.ts) for f in d.fills),
            tuple(tuple(e) for e in d.errors))


@dataclass
class RecordingResult:
    metrics: dict
    decisions: list            # pipeline Decisions, in order (bar closes and between-bar stop/TP exits)
    orders: list[OrderRecord]  # every order submitted, with the book depth it met
    counters: dict             # frames, trades, decode drops, book stats, pipeline/optimizer/risk/broker counters
    report: Any                # daemon.backtest.report.ReportData
    pipeline: Any
    book: Any


def run_recording_backtest(paths: str | Path | Sequence[str | Path], registry: str | Path | Any,
                           report_dir: str | Path | None, *, cfg=None, symbol: str | None = None,
                           history: Any = None, timeframes: Sequence[str] | None = None,
                           kinds: Sequence[str] = ("xgboost", "lstm"), rules: SymbolFilters | None = None,
                           starting_cash: float | None = None, workdir: str | Path | None = None,
                           progress=None) -> RecordingResult:
    """Replay a raw ``<recv_ns> <frame>`` recording through the live path and report on it.

    MarketDataProtocol (the live feed's: decode, guard, the real L2 book the broker walks for fills, snapshot sync,
    oracle) -> TradingPipeline.on_trade
    (bars -> features -> engines -> optimizer -> risk -> paper broker), time = the recording's receive times,
    as fast as the CPU goes. Models: the CURRENT versions in ``registry`` (EngineSet.load, as ``tradingd run``).
    ``history``: 1m Bars or Klines ending before the recording, primed into the feature state at the first
    trade (only bars that open before the recording's first minute are used); without it predictions start
    after the features' warm-up. Equity is marked on the book mid every minute of recording time; at the end
    every position is closed on the last book, so the trade list accounts for the whole equity change."""
    import msgspec

    from daemon.binance.protocol import ClockJump, MarketDataProtocol
    from daemon.broker import PaperBroker
    from daemon.config import Config
    from daemon.engineset import EngineSet
    from market.events import BookStatus, BookTicker, DepthSnapshot, DepthUpdate, Trade
    from daemon.pipeline import TradingPipeline, history_bars_needed
    from daemon.recording import RecordingReader
    from daemon.backtest.report import ReportData, RunResult, TradeLedger, compute_metrics, write_report
    from daemon.store import SQLiteStore
    from engines.registry import ModelRegistry
    from strategies.optimizer import DollarProfitOptimizer
    from strategies.risk import RiskManager

    cfg = cfg or Config()
    say = progress or (lambda m: None)
    tfs = tuple(timeframes or cfg.general.timeframes)
    for tf in tfs:
        timeframe_ns(tf)
    reader = RecordingReader(paths)
    if not reader.paths:
        raise ValueError(f"no recording files in {paths}")
    for p in reader.paths:
        if not p.is_file():
            raise FileNotFoundError(f"recording file not found: {p}")
    reg = registry if hasattr(registry, "load") else ModelRegistry(Path(registry))
    t0 = time.perf_counter()
    engine_sets = {tf: EngineSet.load(reg, tf, cfg.engines, kinds=tuple(kinds)) for tf in tfs}
    info: dict[str, Any] = {"mode": "recording", "recording": [str(p) for p in reader.paths],
                            "registry": str(getattr(reg, "root", registry)), "timeframes": list(tfs),
                            "models": {tf: es.info() for tf, es in engine_sets.items()},
                            "timing": {"engines_load_s": time.perf_counter() - t0},
                            "fills": "market orders walk the recorded L2 book at the decision's receive time; "
                                     f"taker fee {cfg.broker.taker_fee}",
                            "equity_marks": "cash + position x book mid, every minute of recording time",
                            "calibration": "not computed: a recording of minutes has too few labelled bars"}
    hist_bars: list[Bar] = []
    if history is not None:
        if hasattr(history, "open_ns") and hasattr(history, "close"):
            from engines.data import klines_to_bars
            if getattr(history, "timeframe", "1m") != "1m":
                raise ValueError(f"history must be 1m bars, got {history.timeframe}")
            hist_bars = klines_to_bars(history)
        else:
            hist_bars = list(history)
        if any(b.timeframe != "1m" for b in hist_bars):
            raise ValueError("history must be 1m bars")
    seq = max((es.seq_len for es in engine_sets.values()), default=0)
    need_min = history_bars_needed(tfs, seq)
    if not hist_bars:
        info["warmup_note"] = (f"no history given: predictions start only after the features' warm-up "
                               f"(~{need_min} minutes of recording for {','.join(tfs)})")
        say(f"tradingd backtest: {info['warmup_note']}")

    own_tmp = None
    if workdir is None:
        own_tmp = tempfile.TemporaryDirectory(prefix="tradingd-backtest-rec-")
        workdir = own_tmp.name
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    store_path = workdir / "recording.sqlite"
    for suffix in ("", "-wal", "-shm"):  # a fresh account every run (the broker recovers from its store)
        Path(str(store_path) + suffix).unlink(missing_ok=True)
    store = SQLiteStore(store_path, quote_asset=cfg.broker.quote_asset)
    cash = float(starting_cash or cfg.broker.starting_cash)
    broker_cfg = cfg.broker.__class__(**{**asdict(cfg.broker), "starting_cash": cash})
    info["starting_cash"] = cash

    c: Counter[str] = Counter()
    ledger = TradeLedger()
    clock = _ReplayClock()
    st: dict[str, Any] = {"sym": symbol, "pipe": None, "tap": None}
    # the live feed's protocol object (replay = live); the recording carries the REST snapshots inline and its
    # symbols are found in the data. It owns the books: the pipeline and the broker read them through its view.
    proto = MarketDataProtocol(cfg=cfg.feed, filters={rules.symbol: rules} if rules is not None else None,
                               inline_snapshots=True)
    books = proto.books
    mark_ts: list[int] = []
    mark_eq: list[float] = []
    mark_pos: list[float] = []
    mark_px: list[float] = []
    next_mark = 0
    last_price = math.nan
    last_ts = 0
    first_trade_ts = 0

    def start(sym: str) -> None:
        rules_ = rules if rules is not None and rules.symbol == sym else default_filters(sym)
        filters = {sym: rules_}
        broker = PaperBroker(broker_cfg, store, symbols=(sym,), filters=filters)
        tap = _FillTap(broker, ledger, broker_cfg.book_depth)
        opt = DollarProfitOptimizer(cfg.optimizer, cfg.risk, filters=filters, fee_rate=broker_cfg.taker_fee,
                                    timeframes=tfs, starting_equity=cash)
        pipe = TradingPipeline(cfg, (sym,), engine_sets, opt, RiskManager(cfg.risk, filters), tap, store=None,
                               clock=clock, books=books, bar_sink=None, keep=None, timeframes=tfs)
        st.update(sym=sym, pipe=pipe, tap=tap)
        info["rules"] = msgspec.structs.asdict(rules_)

    def prime(first: Trade) -> None:
        start_min = first.ts_event - first.ts_event % _M
        use = [b for b in hist_bars if b.open_ns < start_min and b.symbol in ("", st["sym"])]
        c["history_bars_after_start_dropped"] += len(hist_bars) - len(use)
        if not use:
            return
        use = use[-need_min:]
        if use[0].symbol != st["sym"]:  # klines CSV without a symbol
            use = [msgspec.structs.replace(b, symbol=st["sym"]) for b in use]
        rows = st["pipe"].prime(st["sym"], use)
        gap = (start_min - (use[-1].open_ns + _M)) // _M
        info["history"] = {"bars_used": len(use), "rows_primed": rows, "first_open_ns": use[0].open_ns,
                           "last_open_ns": use[-1].open_ns, "gap_minutes_to_recording": int(gap),
                           "bars_needed": need_min}
        if gap > 0:
            log.warning("backtest_history_gap", minutes=int(gap))
        if len(use) < need_min:
            info["history"]["note"] = f"{len(use)} bars < {need_min} needed: some predictions start later"

    def mark_until(ts: int) -> None:
        nonlocal next_mark
        pipe, book = st["pipe"], books.get(st["sym"])
        while ts >= next_mark:
            m = book.mid() if book is not None and book.is_tradeable else None
            px = float(m) if m is not None else last_price
            pf = pipe.broker.portfolio
            q = pf.qty(st["sym"])
            mark_ts.append(next_mark)
            mark_eq.append(pf.cash + q * px)
            mark_pos.append(q)
            mark_px.append(px)
            next_mark += _M

    t_run = time.perf_counter()
    for recv_ns, raw in reader:
        c["frames"] += 1
        for ev in proto.receive_frame(raw, recv_ns):
            t = type(ev)
            if t is BookTicker:
                c["book_tickers"] += 1
                continue
            if t is DepthSnapshot:
                c["snapshots"] += 1
            sym = st["sym"]
            if sym is None:
                start(ev.symbol)
                sym = ev.symbol
            elif st["pipe"] is None:
                start(sym)
            if ev.symbol != sym:
                c["other_symbol_frames"] += 1
                continue
            pipe = st["pipe"]
            if t is DepthSnapshot or t is BookStatus or t is ClockJump:
                pipe.on_event(ev)  # as live: a snapshot meets resting orders, a status is counted, a jump is a gap
                continue
            book = books.get(sym)
            last_ts = max(last_ts, ev.ts_recv)
            if next_mark:
                mark_until(ev.ts_recv)
            if t is DepthUpdate:
                c["depth_updates"] += 1
                pipe.on_depth(sym, book, ev.ts_recv)
            elif t is Trade:
                c["trades"] += 1
                if not first_trade_ts:
                    first_trade_ts = ev.ts_recv
                    prime(ev)
                    # the curve starts with the cash at the first trade; marks follow every whole minute
                    mark_ts.append(ev.ts_recv)
                    mark_eq.append(cash)
                    mark_pos.append(0.0)
                    mark_px.append(ev.price)
                    next_mark = ev.ts_recv - ev.ts_recv % _M + _M
                clock.ts = ev.ts_recv
                clock.t0 = time.perf_counter_ns()
                pipe.on_trade(ev, book)
                if ev.price > 0 and math.isfinite(ev.price):
                    last_price = ev.price
            else:
                c[f"events.{t.__name__}"] += 1
    ps = proto.stats
    if ps.unknown_frames:
        c["frames_ignored"] += ps.unknown_frames
    for reason, n in ps.decode_errors.items():
        c[f"decode_dropped.{reason}"] += n
    for (_, reason), n in ps.refused.items():
        c[f"refused.{reason}"] += n
    info["timing"]["replay_s"] = time.perf_counter() - t_run
    pipe, tap = st["pipe"], st["tap"]
    book = books.get(st["sym"]) if st["sym"] is not None else None
    if pipe is None or not first_trade_ts:
        store.close()
        if own_tmp is not None:
            own_tmp.cleanup()
        raise ValueError(f"no trades{' of ' + symbol if symbol else ''} in the recording {reader.paths}")
    sym = st["sym"]
    # close out on the last book: the trade list then accounts for the whole equity change
    if pipe.broker.portfolio.qty(sym) != 0.0:
        pipe.flatten(last_ts)
    pf = pipe.broker.portfolio
    m = book.mid() if book is not None and book.is_tradeable else None
    px = float(m) if m is not None else last_price
    q = pf.qty(sym)
    if q != 0.0:
        info["open_at_end"] = {"qty": q, "note": "the end-of-run flatten did not fill (book not tradeable)"}
    mark_ts.append(max(last_ts, mark_ts[-1] + 1))
    mark_eq.append(pf.cash + q * px)
    mark_pos.append(q)
    mark_px.append(px)
    store.close()
    if own_tmp is not None:
        own_tmp.cleanup()

    n_tr = c["trades"]
    rs = info["timing"]["replay_s"]
    info["timing"]["trades_per_s"] = n_tr / rs if rs > 0 else None
    info["timing"]["frames_per_s"] = c["frames"] / rs if rs > 0 else None
    info["span"] = {"first_trade_ns": first_trade_ts, "last_event_ns": last_ts,
                    "minutes": (last_ts - first_trade_ts) / _M}
    info["latency_tick_to_decision"] = pipe.latency_summary()
    counters = {"replay": dict(c), "reader": reader.stats.as_dict(), "book": _book_stats(book) if book is not None else {},
                "bars": _plain(pipe.builder(sym).stats), "pipeline": dict(pipe.counters),
                "optimizer": dict(pipe.optimizer.counters), "risk": dict(pipe.risk.counters),
                "broker": dict(pipe.broker.stats), "orders": len(tap.orders)}
    info["counters"] = counters
    runs = {"strategy": RunResult("strategy", np.array(mark_ts, np.int64), np.array(mark_eq), np.array(mark_pos),
                                  ledger.fills, ledger.trades)}
    data = ReportData(sym, 60.0, np.array(mark_ts, np.int64), np.array(mark_px), runs, {}, info)
    t0 = time.perf_counter()
    metrics = write_report(report_dir, data) if report_dir is not None else compute_metrics(data)
    info["timing"]["report_s"] = time.perf_counter() - t0
    return RecordingResult(metrics, list(pipe.decisions), list(tap.orders), counters, data, pipe, book)


def _plain(x: Any) -> Any:
    if hasattr(x, "__dataclass_fields__"):
        return _plain(asdict(x))
    if isinstance(x, Mapping):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    return x


def _book_stats(book: Any) -> dict:
    out = _plain(book.stats.as_dict())
    out["state"] = str(getattr(book.state, "value", book.state))
    return out
