"""The klines backtest: the live pipeline (bars -> features -> engines -> DollarProfitOptimizer -> risk ->
paper broker, :class:`daemon.pipeline.TradingPipeline`) driven by a simulated clock over 1m klines, walk-forward.

* Walk-forward (no look-ahead): the run is cut into test windows (``--test-days``); the models that trade a
  window are trained (engines/train.py ``train_timeframe``, fast settings) on the ``--train-days`` of 1m klines
  that END where the window starts. A window's model never sees a bar it trades; :func:`run_backtest` checks
  each trained model's data window against its test window and refuses otherwise.
* Costs are always on: klines have no order book, so a book is synthesised around each 1m close
  (:class:`SynthBook`: ``--spread-bps`` full spread, ``--levels`` levels every ``--level-bps`` with
  ``--level-notional`` quote each); the paper broker fills market orders against it (spread + depth walked) and
  charges the taker fee. Decisions at a bar close fill on the book around that close.
* Stops/take-profits between bar closes: live, ``optimizer.on_price`` sees every trade. From klines the
  backtest feeds it each 1m bar's path (open, then the adverse extreme, then the favourable one: the
  conservative order) and fills a triggered exit on a book centred at the stop/TP level (or the open when the
  bar gapped through it).
* At the end every open position is closed (``pipeline.flatten``) so trade P&L sums to the equity change.
* Baselines through the same costs: buy-and-hold (one market buy on the synthetic book, marked every bar, one
  sell at the end, same broker and fees) and a no-model momentum baseline (P(up) = 0.5 +/- conviction/2 by the
  sign of the last bar's return, the same pipeline, optimizer, risk and broker).

Training and batched prediction: :mod:`daemon.backtest.training`; options and windows:
:mod:`daemon.backtest.options`; the report: :mod:`daemon.backtest.report`.
"""
from __future__ import annotations

import math
import os
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import structlog

from daemon.backtest.options import (_DAY, _M, TRADED_SHARE_WARN, BacktestOptions, Window, default_filters,
                                     fit_windows, walk_forward_windows)
from daemon.backtest.predictions import BatchPredictions, MomentumBaseline, _Clock
from daemon.backtest.training import (_OMP_MODULES, _can_fork, _fork_safe_training, _Job, _prepare_timeframes,
                                      _train_and_predict, _TrainStream)
from market.events import Bar, OrderIntent, Side
from market.filters import SymbolFilters

log = structlog.get_logger(__name__)

__all__ = ["SynthBook", "run_backtest", "BacktestResult"]


# ------------------------------------------------------------------------------------------------ book
class SynthBook:
    """A book around a mid price for klines (no L2 history): ``levels`` levels a side, first at +/- half the
    spread, then every ``level_bps``, ``level_notional`` quote each; prices on the tick grid. Looks like an
    OrderBook to the pipeline and the broker (best_bid/best_ask/depth/is_tradeable)."""

    def __init__(self, rules: SymbolFilters, spread_bps: float, level_bps: float, levels: int,
                 level_notional: float) -> None:
        self.rules = rules
        self.half = spread_bps * 1e-4 / 2
        self.step = level_bps * 1e-4
        self.n = levels
        self.notional = level_notional
        self.is_tradeable = True
        self.mid_price = math.nan
        self._bids: list[tuple[float, float]] | None = None
        self._asks: list[tuple[float, float]] | None = None
        self._top = (math.nan, math.nan)
        self._qv = math.nan

    def set_mid(self, mid: float) -> None:
        """Re-centre the book (levels are built lazily: most bars only need the top for the decision)."""
        if mid != self.mid_price:
            self.mid_price = mid
            self._bids = self._asks = None
            t = self.rules.tick_size
            self._top = (round(math.floor(mid * (1 - self.half) / t + 1e-9) * t, 10),
                         round(math.ceil(mid * (1 + self.half) / t - 1e-9) * t, 10))
            lot = self.rules.lot_step
            self._qv = round(max(lot, math.floor(self.notional / mid / lot) * lot), 10)

    def _build(self) -> None:
        mid, t, lot = self.mid_price, self.rules.tick_size, self.rules.lot_step
        q = round(max(lot, math.floor(self.notional / mid / lot) * lot), 10)
        bids, asks = [], []
        for i in range(self.n):
            off = self.half + i * self.step
            b = round(math.floor(mid * (1 - off) / t + 1e-9) * t, 10)
            a = round(math.ceil(mid * (1 + off) / t - 1e-9) * t, 10)
            if bids and b >= bids[-1][0]:
                b = round(bids[-1][0] - t, 10)
            if asks and a <= asks[-1][0]:
                a = round(asks[-1][0] + t, 10)
            bids.append((b, q))
            asks.append((a, q))
        self._bids, self._asks = bids, asks

    def best_bid(self):
        return (self._top[0], self._q()) if self.mid_price == self.mid_price else None

    def best_ask(self):
        return (self._top[1], self._q()) if self.mid_price == self.mid_price else None

    def _q(self) -> float:
        return self._qv

    def mid(self) -> float | None:
        return (self._top[0] + self._top[1]) / 2 if self.mid_price == self.mid_price else None

    def depth(self, n: int):
        if self._bids is None:
            self._build()
        return self._bids[:n], self._asks[:n]



# ------------------------------------------------------------------------------------------------ simulation
@dataclass
class _Sim:
    """One account driven through the pipeline (strategy or baseline)."""

    name: str
    pipeline: Any
    book: SynthBook
    ledger: Any
    decisions: list[tuple] = field(default_factory=list)
    ts: list[int] = field(default_factory=list)
    equity: list[float] = field(default_factory=list)
    position: list[float] = field(default_factory=list)


def _make_pipeline(cfg, rules: SymbolFilters, engine_sets: Mapping[str, Any], opts: BacktestOptions, store_path: Path,
                   starting_cash: float, clock: _Clock):
    from daemon.broker import PaperBroker
    from daemon.pipeline import TradingPipeline
    from daemon.store import SQLiteStore
    from strategies.optimizer import DollarProfitOptimizer
    from strategies.risk import RiskManager
    filters = {rules.symbol: rules}
    store = SQLiteStore(store_path, quote_asset=cfg.broker.quote_asset)
    broker_cfg = cfg.broker.__class__(**{**asdict(cfg.broker), "starting_cash": starting_cash, "latency_ms": 0.0})
    broker = PaperBroker(broker_cfg, store, symbols=(rules.symbol,), filters=filters)
    opt = DollarProfitOptimizer(cfg.optimizer, cfg.risk, filters=filters, fee_rate=broker_cfg.taker_fee,
                                timeframes=opts.timeframes, starting_equity=starting_cash)
    risk = RiskManager(cfg.risk, filters)
    book = SynthBook(rules, opts.spread_bps, opts.level_bps, opts.levels, opts.level_notional)
    pipe = TradingPipeline(cfg, (rules.symbol,), engine_sets, opt, risk, broker, store=None,
                           clock=lambda: clock.now, books={rules.symbol: book}, bar_sink=None, keep=64,
                           timeframes=opts.timeframes)
    return pipe, book, store


def _record(sim: _Sim, decisions, mid: float) -> None:
    from daemon.backtest.report import FillRecord
    for d in decisions:
        tags = {i.client_order_id: i for i in d.intents}
        if d.intents or d.fills:
            sim.decisions.append((d.ts, d.timeframe, d.bar_open_ns,
                                  tuple((i.client_order_id, int(i.side), i.qty, i.reason) for i in d.intents),
                                  tuple((f.fill_id, f.price, f.qty, f.fee) for f in d.fills),
                                  tuple(d.risk), tuple(d.errors)))
        for f in d.fills:
            it = tags.get(f.client_order_id)
            sim.ledger.on_fill(FillRecord(f.ts, f.symbol, int(f.side), f.price, f.qty, f.fee, mid,
                                          it.timeframe if it else "", it.reason if it else "",
                                          f.client_order_id))


def _intrabar(sim: _Sim, bar: Bar, clock: _Clock, book: Any = None) -> None:
    """Stops / take-profits inside the bar: the optimizer sees the bar's price path (adverse extreme first).
    ``book``: the symbol's book (default ``sim.book``; the universe replay has one per symbol)."""
    book = sim.book if book is None else book
    from daemon.pipeline import Decision
    pipe = sim.pipeline
    opt = pipe.optimizer
    pos = opt.positions.get(bar.symbol)
    if pos is None or pos.pending_exit is not None or pipe.broker.portfolio.qty(bar.symbol) == 0.0:
        return
    lo, hi = min(bar.open, bar.low), max(bar.open, bar.high)
    if (pos.direction > 0 and pos.stop < lo and hi < pos.take_profit) or \
            (pos.direction < 0 and pos.take_profit < lo and hi < pos.stop):
        return  # no price of this bar's path reaches the stop or the take-profit: on_price would return nothing
    path = (bar.open, bar.low, bar.high) if pos.direction > 0 else (bar.open, bar.high, bar.low)
    ts = bar.open_ns + _M // 2
    for k, price in enumerate(path):
        stop, tp = pos.stop, pos.take_profit
        acct = pipe.account()
        intents = opt.on_price(bar.symbol, price, acct, ts)
        if not intents:
            continue
        reason = intents[0].reason
        level = stop if reason == "stop" else tp
        gapped = k == 0  # the bar opened beyond the level: the exit happens at the open
        fill_ref = price if gapped else level
        book.set_mid(fill_ref)
        d = Decision(bar.symbol, pos.timeframe, bar.open_ns, price, ts, {}, None, None, False)
        pipe.execute(intents, acct, book, ts, d)  # the pipeline's risk -> broker -> optimizer path
        pipe.decisions.append(d)
        _record(sim, [d], fill_ref)
        return


def _simulate(sims: list[_Sim], bars: list[Bar], prime_until: int, record_from: int, clock: _Clock,
              intrabar: bool, gate=None) -> None:
    """Drive the accounts bar by bar. ``gate(ts)`` (streamed training) is asked before deciding at a ``ts``
    beyond the last answer and blocks until the predictions up to ``ts`` exist; it returns how far they reach."""
    for sim in sims:
        pre = [b for b in bars if b.open_ns + _M <= prime_until]
        sim.pipeline.prime(bars[0].symbol, pre)
    sym = bars[0].symbol
    ready = (1 << 62) if gate is None else -1
    for b in bars:
        ts = b.open_ns + _M
        if ts <= prime_until:
            continue
        if ts > ready:
            ready = gate(ts)
        clock.now = ts
        for sim in sims:
            if intrabar:
                _intrabar(sim, b, clock)
            sim.book.set_mid(b.close)
            ds = sim.pipeline.on_bar(b, sim.book)
            if ds:
                _record(sim, ds, b.close)
            if ts >= record_from:
                pf = sim.pipeline.broker.portfolio
                q = pf.qty(sym)
                sim.ts.append(ts)
                sim.equity.append(pf.cash + q * b.close)
                sim.position.append(q)
    # close out: every open position is sold/bought back on the last book
    last = bars[-1]
    for sim in sims:
        sim.book.set_mid(last.close)
        if sim.pipeline.broker.portfolio.qty(sym) != 0.0:
            d = sim.pipeline.flatten(last.open_ns + _M)
            _record(sim, [d], last.close)
            pf = sim.pipeline.broker.portfolio
            sim.equity[-1] = pf.cash + pf.qty(sym) * last.close
            sim.position[-1] = pf.qty(sym)


@dataclass
class _SimOut:
    """What the report needs from a simulated account (picklable: a forked run sends it back)."""

    name: str
    ts: np.ndarray
    equity: np.ndarray
    position: np.ndarray
    fills: list
    trades: list
    decisions: list[tuple]
    counters: dict
    seconds: float
    cpu_s: float = math.nan

    @classmethod
    def of(cls, sim: _Sim, seconds: float) -> "_SimOut":
        p = sim.pipeline
        return cls(sim.name, np.array(sim.ts, np.int64), np.array(sim.equity), np.array(sim.position),
                   sim.ledger.fills, sim.ledger.trades, sim.decisions,
                   {"pipeline": dict(p.counters), "optimizer": dict(p.optimizer.counters),
                    "risk": dict(p.risk.counters), "broker": dict(p.broker.stats)}, seconds)


def _run_baseline(cfg, rules: SymbolFilters, opts: BacktestOptions, bars: list[Bar], prime_until: int,
                  record_from: int, store_path: Path, starting_cash: float) -> _SimOut:
    """The momentum baseline account over the bars (its own clock, pipeline, broker and store)."""
    from daemon.backtest.report import TradeLedger
    clock = _Clock()
    base = MomentumBaseline(opts.baseline_conviction, opts.models, record_from, clock)
    pipe, book, store = _make_pipeline(cfg, rules, {tf: base for tf in opts.timeframes}, opts, store_path,
                                       starting_cash, clock)
    sim = _Sim("baseline_momentum", pipe, book, TradeLedger())
    t0, c0 = time.perf_counter(), time.process_time()
    try:
        _simulate([sim], bars, prime_until, record_from, clock, opts.intrabar_exits)
    finally:
        store.close()
    out = _SimOut.of(sim, time.perf_counter() - t0)
    out.cpu_s = time.process_time() - c0
    return out


def _scratch_dir() -> str | None:
    d = "/dev/shm"
    return d if os.path.isdir(d) and os.access(d, os.W_OK | os.X_OK) else None


def _buy_and_hold(cfg, rules: SymbolFilters, opts: BacktestOptions, bars: list[Bar], record_from: int,
                  store_path: Path, starting_cash: float):
    """One market buy at the first recorded close (as much as the cash allows after fee and spread), marked
    every bar, one market sell at the end: the same broker, book and fees as the strategy."""
    from daemon.broker import PaperBroker
    from daemon.backtest.report import FillRecord, RunResult, TradeLedger
    from daemon.store import SQLiteStore
    from strategies.sizing import floor_to_step
    store = SQLiteStore(store_path, quote_asset=cfg.broker.quote_asset)
    broker_cfg = cfg.broker.__class__(**{**asdict(cfg.broker), "starting_cash": starting_cash, "latency_ms": 0.0})
    broker = PaperBroker(broker_cfg, store, symbols=(rules.symbol,), filters={rules.symbol: rules})
    book = SynthBook(rules, opts.spread_bps, opts.level_bps, opts.levels, opts.level_notional)
    led = TradeLedger()
    ts_l, eq, pos = [], [], []
    sym = rules.symbol
    rec = [b for b in bars if b.open_ns + _M >= record_from]

    def trade(side: Side, qty: float, b: Bar, tag: str) -> None:
        book.set_mid(b.close)
        ts = b.open_ns + _M
        ex = broker.submit(OrderIntent(f"bh-{tag}", sym, side, qty, reduce_only=side < 0, reason=tag, ts=ts),
                           book, ts)
        for f in ex.fills:
            led.on_fill(FillRecord(f.ts, f.symbol, int(f.side), f.price, f.qty, f.fee, b.close, "hold", tag,
                                   f.client_order_id))

    first = rec[0]
    book.set_mid(first.close)
    # the most we can buy: walk the book at 99.5 % of cash to leave room for the fee and depth
    qty = floor_to_step(starting_cash * 0.995 / book.best_ask()[0] / (1 + broker_cfg.taker_fee), rules.lot_step)
    ts_l.append(first.open_ns + _M)  # the curve starts with the cash, before the buy's fee and spread
    eq.append(starting_cash)
    pos.append(0.0)
    trade(Side.BUY, qty, first, "entry")
    for b in rec[1:]:
        q = broker.portfolio.qty(sym)
        ts_l.append(b.open_ns + _M)
        eq.append(broker.portfolio.cash + q * b.close)
        pos.append(q)
    trade(Side.SELL, broker.portfolio.qty(sym), rec[-1], "end_of_backtest")
    eq[-1] = broker.portfolio.cash
    pos[-1] = broker.portfolio.qty(sym)
    store.close()
    return RunResult("buy_and_hold", np.array(ts_l, np.int64), np.array(eq), np.array(pos), led.fills, led.trades)


@dataclass
class BacktestResult:
    metrics: dict
    decisions: dict[str, list[tuple]]   # run name -> compact decision log (ts, tf, bar_open, intents, fills, ...)
    report: Any                         # daemon.backtest.report.ReportData
    windows: list[Window]
    # tf -> (bar open_ns, {model: P(up) per bar, NaN where none was made}) from the batched walk-forward
    predictions: dict[str, tuple[np.ndarray, dict[str, np.ndarray]]] = field(default_factory=dict)


def run_backtest(k1m, report_dir: str | Path | None, *, opts: BacktestOptions = BacktestOptions(), cfg=None,
                 rules: SymbolFilters | None = None, starting_cash: float | None = None,
                 workdir: str | Path | None = None, progress=None) -> BacktestResult:
    """Walk-forward backtest of ``k1m`` (engines.data.Klines, 1m) and, with ``report_dir``, the report files."""
    from daemon.config import Config
    from daemon.backtest.report import ReportData, RunResult, TradeLedger, compute_metrics, write_report
    from engines.data import klines_to_bars
    opts.validate()
    cfg = cfg or Config()
    if rules is None:
        if not k1m.symbol:
            raise ValueError("the klines name no symbol: pass rules=default_filters(symbol) (CLI: --symbol)")
        rules = default_filters(k1m.symbol)
    if k1m.timeframe != "1m":
        raise ValueError(f"backtest needs 1m klines, got {k1m.timeframe}")
    starting_cash = float(starting_cash or cfg.broker.starting_cash)
    say = progress or (lambda m: None)
    t_all = time.perf_counter()
    info: dict[str, Any] = {"options": asdict(opts), "rules": msgspec.structs.asdict(rules), "starting_cash": starting_cash,
                            "data": {"rows": len(k1m), "filled_missing_minutes": k1m.filled,
                                     "dropped_duplicate_rows": k1m.duplicates,
                                     "fill_rule": "missing minutes are flat zero-volume bars at the previous close"},
                            "timing": {}}
    first, end = int(k1m.open_ns[0]), int(k1m.open_ns[-1]) + _M
    fit = fit_windows(end - first, opts.train_days, opts.test_days)
    windows = walk_forward_windows(first, end, fit.train_days, fit.test_days)
    record_from = windows[0].test_start_ns
    warnings: list[str] = []
    info["windows_rule"] = asdict(fit)
    if fit.adapted:
        warnings.append(f"{fit.data_days:.2f} days of data, shorter than train {fit.requested_train_days:g} + test "
                        f"{fit.requested_test_days:g} days: windows shrunk in proportion to train "
                        f"{fit.train_days:.2f} + test {fit.test_days:.2f} days")
        log.warning("backtest_windows_shrunk", data_days=round(fit.data_days, 3), train_days=round(fit.train_days, 3),
                    test_days=round(fit.test_days, 3))
    share = (end - record_from) / (end - first)
    info["coverage"] = {"data_days": fit.data_days, "traded_days": (end - record_from) / _DAY,
                        "traded_share": share, "warn_below": TRADED_SHARE_WARN}
    if share < TRADED_SHARE_WARN:
        warnings.append(f"only {share:.1%} of the data is traded ({(end - record_from) / _DAY:.2f} of "
                        f"{fit.data_days:.2f} days; the first {fit.train_days:g} days only train): the metrics "
                        f"describe a short span")
        log.warning("backtest_little_traded", traded_share=round(share, 4), data_days=round(fit.data_days, 3))
    info["warnings"] = warnings
    for w in warnings:
        say(f"warning: {w}")
    # the first recorded point (the bar closing at record_from) is simulated, never primed; nothing trades
    # before record_from (no predictions), so the curve starts at the starting cash
    prime_until = min(max(first, record_from - int(opts.warm_days * _DAY)), record_from - _M)

    t0 = time.perf_counter()
    tfd = _prepare_timeframes(k1m, opts)
    info["timing"]["batch_features_s"] = time.perf_counter() - t0
    clock = _Clock()
    sets = {tf: BatchPredictions(tf, clock, d.open_ns, d.X) for tf, d in tfd.items()}
    own_tmp = None
    if workdir is None:
        # scratch stores and models, deleted at the end: on tmpfs when there is one (the broker's SQLite
        # commits are fsynced; durability buys nothing here)
        own_tmp = tempfile.TemporaryDirectory(prefix="tradingd-backtest-", dir=_scratch_dir())
        workdir = own_tmp.name
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    baseline_job = None
    stream: _TrainStream | None = None
    outs: list[_SimOut] = []
    try:
        t0 = time.perf_counter()
        bars = klines_to_bars(k1m)
        info["timing"]["bars_s"] = time.perf_counter() - t0
        if opts.baseline:
            # the baseline needs no model: it runs (in a forked process when allowed) while the models train
            base_args = (cfg, rules, opts, bars, prime_until, record_from, workdir / "baseline.sqlite",
                         starting_cash)
            baseline_job = _Job(_run_baseline, base_args, fork=opts.parallel)
            info["timing"]["baseline_in"] = "forked process" if baseline_job.forked else "this process"
        gate = None
        if opts.parallel and _can_fork() and _fork_safe_training():
            # training streams window by window from a forked process; the strategy simulates behind it
            stream = _TrainStream(k1m, windows, tfd, opts, workdir / "models", sets, info, say)
            gate = stream.until
            info["timing"]["training_in"] = "forked process, streamed to the simulation window by window"
        else:
            info["timing"]["training_in"] = "this process" + (
                "" if not opts.parallel or _fork_safe_training() else
                f" (not forked: {', '.join(m for m in _OMP_MODULES if m in sys.modules)} already loaded here)")
            t0 = time.perf_counter()
            _train_and_predict(k1m, windows, tfd, opts, workdir / "models", sets, info, say)
            info["timing"]["train_and_predict_wall_s"] = time.perf_counter() - t0

        pipe, book, store = _make_pipeline(cfg, rules, sets, opts, workdir / "strategy.sqlite", starting_cash, clock)
        sim = _Sim("strategy", pipe, book, TradeLedger())
        t0, c0 = time.perf_counter(), time.process_time()
        try:
            _simulate([sim], bars, prime_until, record_from, clock, opts.intrabar_exits, gate)
            if stream is not None:
                info["timing"].update(stream.finish())
                info["timing"]["strategy_waited_for_training_s"] = stream.waited_s
        finally:
            if stream is not None:
                stream.close()
        store.close()
        info["timing"]["simulate_strategy_s"] = time.perf_counter() - t0
        info["timing"]["simulate_strategy_cpu_s"] = time.process_time() - c0  # this process only
        say(f"strategy simulated in {info['timing']['simulate_strategy_s']:.1f}s")
        outs.append(_SimOut.of(sim, info["timing"]["simulate_strategy_s"]))
        t0 = time.perf_counter()
        bh = _buy_and_hold(cfg, rules, opts, bars, record_from, workdir / "buy_and_hold.sqlite", starting_cash)
        info["timing"]["buy_and_hold_s"] = time.perf_counter() - t0
        if baseline_job is not None:
            t0 = time.perf_counter()
            bout = baseline_job.result()
            info["timing"]["baseline_wait_s"] = time.perf_counter() - t0
            info["timing"]["simulate_baseline_s"] = bout.seconds
            info["timing"]["simulate_baseline_cpu_s"] = bout.cpu_s
            outs.append(bout)
    finally:
        if baseline_job is not None:
            baseline_job.close()
        if own_tmp is not None:
            own_tmp.cleanup()

    runs = {}
    for o in outs:
        runs[o.name] = RunResult(o.name, o.ts, o.equity, o.position, o.fills, o.trades)
        info.setdefault("counters", {})[o.name] = o.counters
    runs["buy_and_hold"] = bh
    info["counters"]["batch_predictions"] = {tf: dict(s.counters) for tf, s in sets.items()}
    calib: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = {}
    for tf, s in sets.items():
        for kind, arr in s.preds.items():
            m = np.isfinite(arr)
            calib.setdefault(tf, {})[kind] = (arr[m], tfd[tf].y[m].astype(np.float64))
    rec = np.flatnonzero(np.asarray(k1m.open_ns) + _M >= record_from)
    price_ts = np.asarray(k1m.open_ns)[rec] + _M
    data = ReportData(k1m.symbol or rules.symbol, 60.0, price_ts, np.asarray(k1m.close)[rec], runs, calib, info)
    info["timing"]["total_before_report_s"] = time.perf_counter() - t_all
    t0 = time.perf_counter()
    metrics = write_report(report_dir, data) if report_dir is not None else compute_metrics(data)
    info["timing"]["report_s"] = time.perf_counter() - t0
    return BacktestResult(metrics, {o.name: o.decisions for o in outs}, data, windows,
                          {tf: (s.open_ns, dict(s.preds)) for tf, s in sets.items()})
