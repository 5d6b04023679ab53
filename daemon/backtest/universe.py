"""``tradingd backtest --data DIR`` through the live pipeline: the universe walk-forward's out-of-sample scores
replayed bar by bar through ONE :class:`daemon.pipeline.TradingPipeline` (batch mode: one ``predict_batch`` and
one ``optimizer.decide_universe`` per bar boundary, then risk, then the paper broker with fees).

Rules (each one place, each tested in tests/daemon/backtest/test_universe.py):

* **Scores**: the research walk-forward (``research.cli_backtest.compute``) fits every model per window and keeps
  the test windows' out-of-sample scores; the strategy replays the ensemble (seed 0) at the strategy timeframe
  (``--strategy-timeframe``, default the coarsest evaluated: chosen without looking at any result, as the research
  report does). Nothing is re-trained here.
* **Calibration** (``research.calibration``): the optimizer needs an expected move, not a rank. Window k's slope is
  fitted on the out-of-sample scores of earlier test bars that lie inside window k's own training span
  (``[max(train_lo, first test bar), train_hi)``: rows the models that produced them never trained on, whose labels
  end before window k's test starts, since ``train_hi - 1 + h < test_lo``); the test window's bars then get
  ``expected_return = slope * cross-sectional z-score``. The first window has no such rows: the replay starts at
  the first calibrated window, for the strategy AND every baseline (same span).
* **Exits vs horizon**: the models predict the move over ``h`` bars (``research.params``), so the backtest sets
  ``optimizer.max_bars_held = {tf}={h}`` (a position is closed at the latest when its forecast expires); the ATR
  stop / take profit (checked inside each bar on its open -> adverse extreme -> favourable extreme path, the klines
  backtest's rule), peak and reversal exits stay as configured.
* **Costs**: the paper broker charges ``--fee`` (taker, per side). Klines have no book: each symbol gets a
  :class:`ReplayBook` around the bar's close whose touch is +/- half ``--spread-bps`` (what the optimizer sees and
  prices into its cost rule) and whose depth, which market orders walk, starts ``--slippage-bps`` beyond the touch
  (``optimizer.slippage_bps`` is set to the same value). Per side that is fee + half spread + slippage: the
  vectorised simulation's cost model.
* **Bars**: the panel's OHLCV; ``quote_volume = volume * close``, ``trades = 0``, ``taker_buy_volume = volume / 2``
  (the files carry no more). Filters per symbol from its price (:func:`symbol_filters`; klines have no
  exchangeInfo). A symbol absent at a bar is not staged; the boundary is decided with the others (``flush``). A held
  symbol whose data ends is valued at its last close and sold there at the end.
* **Baselines through the same pipeline and costs**: the momentum and reversal factors (scores calibrated like the
  model's) through the same pipeline, optimizer, risk and broker; equal-weight buy-and-hold of the symbols present
  at the first replayed bar, bought once at that close on the same books through the same broker (one entry fee
  per symbol), sold at the end (one exit fee per symbol).
* **Figures**: equity = cash + sum(qty x close) after each boundary, starting at the cash before the first one;
  return, Sharpe (per-bar returns, annualised by bars per year), max drawdown through
  ``research.portfolio.StrategyResult.summary``; trades = fills; fees = the sum of the fills' fees; turnover =
  traded notional / 2 / mean equity per day (one-sided, the fraction of the book replaced per day).
"""
from __future__ import annotations

import dataclasses
import html
import math
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import structlog

from daemon.backtest.klines import _intrabar, _record, _Sim, _scratch_dir
from daemon.backtest.predictions import _Clock
from market.events import Bar, OrderIntent, Side, timeframe_ns
from market.filters import SymbolFilters
from research.calibration import fit_calibration
from research.portfolio import Costs, StrategyResult
from research.walkforward import cs_zscore
from strategies.optimizer import EXPECTED_RETURN

log = structlog.get_logger(__name__)

__all__ = ["ReplayBook", "ReplayPredictions", "PipelineRun", "symbol_filters", "calibrated_returns",
           "replay", "buy_and_hold", "pipeline_backtest", "add_arguments", "main", "run"]

_DAY_NS = 86_400_000_000_000
NOTE = ("strategy and baselines: the live TradingPipeline (batch decisions per bar boundary, DollarProfitOptimizer "
        "ranking by dollar edge after costs, risk, paper broker with fees, spread and slippage) replaying the "
        "walk-forward's calibrated out-of-sample scores; the vectorised top-k figures are under "
        "strategy_vectorised / baselines_vectorised.")


# ------------------------------------------------------------------------------------------------ market
def symbol_filters(symbol: str, close: np.ndarray) -> SymbolFilters:
    """Filters from a symbol's prices (klines have no exchangeInfo): tick = 5 significant digits of the median
    close, lot step = the power of ten at or below 0.1 quote of notional, min notional 5 quote."""
    c = close[np.isfinite(close) & (close > 0)]
    px = float(np.median(c)) if len(c) else 1.0
    tick = 10.0 ** (math.floor(math.log10(px)) - 5)
    lot = 10.0 ** math.floor(math.log10(0.1 / px))
    return SymbolFilters(symbol, tick_size=tick, lot_step=lot, min_qty=lot, max_qty=1e15, min_notional=5.0)


class ReplayBook:
    """A book around a mid for klines: the touch at mid -/+ half the spread (what the optimizer's cost rule sees),
    market orders fill one level further, at mid -/+ (half spread + slippage), with depth for any order size."""

    is_tradeable = True

    def __init__(self, rules: SymbolFilters, spread_bps: float, slippage_bps: float) -> None:
        self.tick = rules.tick_size
        self.half = spread_bps * 1e-4 / 2
        self.slip = slippage_bps * 1e-4
        self.mid_price = math.nan
        self._top: tuple[tuple[float, float], tuple[float, float]] | None = None
        self._fill: tuple[float, float] = (math.nan, math.nan)

    def _px(self, x: float, up: bool) -> float:
        t = self.tick
        return round((math.ceil(x / t - 1e-9) if up else math.floor(x / t + 1e-9)) * t, 12)

    def set_mid(self, mid: float) -> None:
        if mid != self.mid_price:
            self.mid_price = mid
            b, a = self._px(mid * (1 - self.half), False), self._px(mid * (1 + self.half), True)
            fb, fa = self._px(mid * (1 - self.half - self.slip), False), self._px(mid * (1 + self.half + self.slip),
                                                                                 True)
            self._top = ((b, 1e15), (a, 1e15))
            self._fill = (min(fb, b), max(fa, a))

    def set_prices(self, mid: float, bid: float, ask: float, fill_bid: float, fill_ask: float) -> None:
        """The same book from prices computed for every symbol at once (:func:`book_prices`)."""
        self.mid_price = mid
        self._top = ((bid, 1e15), (ask, 1e15))
        self._fill = (fill_bid, fill_ask)

    def best_bid(self):
        return self._top[0] if self._top is not None else None

    def best_ask(self):
        return self._top[1] if self._top is not None else None

    def mid(self) -> float | None:
        return (self._top[0][0] + self._top[1][0]) / 2 if self._top is not None else None

    def depth(self, n: int):
        fb, fa = self._fill
        return [(fb, 1e15)], [(fa, 1e15)]


def book_prices(mid: np.ndarray, tick: np.ndarray, half: float, slip: float) -> tuple[np.ndarray, ...]:
    """:meth:`ReplayBook.set_mid`'s prices for many symbols at once: (bid, ask, fill bid, fill ask)."""
    b = np.round(np.floor(mid * (1 - half) / tick + 1e-9) * tick, 12)
    a = np.round(np.ceil(mid * (1 + half) / tick - 1e-9) * tick, 12)
    fb = np.minimum(np.round(np.floor(mid * (1 - half - slip) / tick + 1e-9) * tick, 12), b)
    fa = np.maximum(np.round(np.ceil(mid * (1 + half + slip) / tick - 1e-9) * tick, 12), a)
    return b, a, fb, fa


class _Cursor:
    """The bar index being replayed (the replay loop sets ``t``; the engine set and the features read it)."""

    t: int = -1


class ReplayFeatures:
    """The pipeline's per-symbol feature evaluator in the replay. The models' inputs are the research panel's
    (pooled, cross-sectional, computed in batch) and the replay engine does not read the pipeline's row, so only
    what the optimizer uses is kept: Wilder ATR(14) (``engines.features.atr``, the live evaluator's formula)
    computed in batch over the symbol's whole span. ``update`` returns a (constant) row once the ATR is defined
    and the live warm-up has passed, None before, like the live evaluator."""

    _ROW = np.zeros(1)

    def __init__(self, atr: np.ndarray, first: int, cursor: _Cursor) -> None:
        from engines.features import FEATURE_SCHEMA
        self._a = atr.tolist()
        self._ready = first + FEATURE_SCHEMA.warmup
        self._cur = cursor
        self.atr: float | None = None

    def update(self, bar: Bar) -> np.ndarray | None:
        t = self._cur.t
        a = self._a[t]
        self.atr = a if a == a and a > 0 else None
        return self._ROW if self.atr is not None and t >= self._ready else None


def panel_atr(panel) -> tuple[np.ndarray, np.ndarray]:
    """(T, N) Wilder ATR(14) of every symbol over its own span (NaN outside it) and each symbol's first bar."""
    from engines.features import atr
    out = np.full(panel.close.shape, np.nan)
    first = np.zeros(panel.close.shape[1], np.int64)
    for j in range(panel.close.shape[1]):
        if not np.isfinite(panel.close[:, j]).any():
            first[j] = len(out)
            continue
        a, k = panel.klines(j)
        out[a:a + len(k), j] = atr(k)
        first[j] = a
    return out, first


class ReplayPredictions:
    """The replay's engine set for one timeframe: ``predict_batch`` answers each symbol's precomputed
    ``{"expected_return": r}`` for the boundary being replayed (``t``, set by the replay loop); NaN -> no
    prediction. ``trace`` keeps every call's (t, symbols) for the tests."""

    def __init__(self, er: np.ndarray, symbols: tuple[str, ...], trace: bool = False,
                 cursor: _Cursor | None = None) -> None:
        self.er = er
        self.col = {s: j for j, s in enumerate(symbols)}
        self.cursor = cursor or _Cursor()
        self.calls = 0
        self.served = 0
        self.trace: list[tuple[int, tuple[str, ...]]] | None = [] if trace else None

    @property
    def t(self) -> int:
        return self.cursor.t

    def predict_batch(self, rows, symbols) -> list[dict[str, float]]:
        self.calls += 1
        t = self.cursor.t
        if self.trace is not None:
            self.trace.append((t, tuple(symbols)))
        if t < 0:
            return [{} for _ in symbols]
        er = self.er[t]
        col = self.col
        out = []
        for s in symbols:
            v = er[col[s]]
            out.append({EXPECTED_RETURN: float(v)} if v == v else {})
        self.served += sum(1 for o in out if o)
        return out

    def predict(self, row, symbol: str) -> dict[str, float]:
        return self.predict_batch([row], [symbol])[0]


# ------------------------------------------------------------------------------------------------ calibration
def calibrated_returns(score: np.ndarray, fwd: np.ndarray, windows, h: int) -> tuple[np.ndarray, list[dict]]:
    """(T, N) expected log returns over the horizon for the test windows that can be calibrated (module
    docstring), NaN elsewhere, and the calibration of each window."""
    er = np.full(score.shape, np.nan)
    first = windows[0].test_lo
    info = []
    for k, w in enumerate(windows):
        a, b = max(w.train_lo, first), w.train_hi
        rec: dict[str, Any] = {"window": k, "rows_lo": a, "rows_hi": b, "test_lo": w.test_lo, "test_hi": w.test_hi}
        if b - a >= h:
            try:
                cal = fit_calibration(score[a:b], fwd[a:b], h)
            except ValueError as e:
                rec["skipped"] = str(e)
            else:
                rec.update(cal.to_dict())
                sl = slice(w.test_lo, w.test_hi)
                er[sl] = cal.expected_return(cs_zscore(score[sl]))
        else:
            rec["skipped"] = "no out-of-sample rows inside the training span (the first window)"
        info.append(rec)
    return er, info


# ------------------------------------------------------------------------------------------------ runs
@dataclass
class PipelineRun:
    """One account replayed: the equity after each boundary (``equity[0]`` = cash before the first), its fills
    (daemon.backtest.report.FillRecord) and round trips, counters."""

    name: str
    ts: np.ndarray
    equity: np.ndarray
    fills: list
    trades: list
    bars_per_year: float
    counters: dict = field(default_factory=dict)
    seconds: float = 0.0
    boundaries: int = 0
    exposure: float = 0.0
    trace: list | None = None

    def summary(self) -> dict:
        eq = self.equity
        rets = eq[1:] / eq[:-1] - 1 if len(eq) > 1 else np.zeros(0)
        fees = float(sum(f.fee for f in self.fills))
        notional = float(sum(f.price * f.qty for f in self.fills))
        days = (self.ts[-1] - self.ts[0]) / _DAY_NS if len(self.ts) > 1 else 0.0
        turnover = notional / 2 / float(np.mean(eq)) / days if days > 0 else 0.0
        s = StrategyResult(eq, rets, len(self.fills), fees, turnover, self.exposure).summary(self.bars_per_year)
        s.pop("turnover")
        return {**s, "turnover_per_day": turnover, "traded_notional": notional, "round_trips": len(self.trades),
                "days": days, "bars": len(eq) - 1}


def _config(cfg, tf: str, h: int, costs: Costs, cash: float):
    """The configured daemon with the backtest's own settings: exits at the horizon, the costs, the cash."""
    opt = dataclasses.replace(cfg.optimizer, slippage_bps=costs.slippage_bps, max_bars_held=(f"{tf}={h}",))
    broker = dataclasses.replace(cfg.broker, taker_fee=costs.fee, starting_cash=cash, latency_ms=0.0)
    return dataclasses.replace(cfg, optimizer=opt, broker=broker)


def _bars(panel, t: int, present: np.ndarray) -> list[Bar]:
    tf, sym = panel.timeframe, panel.symbols
    o, hi, lo, c, v = (panel.open[t].tolist(), panel.high[t].tolist(), panel.low[t].tolist(),
                       panel.close[t].tolist(), panel.volume[t].tolist())
    on = int(panel.open_ns[t])
    return [Bar(sym[j], tf, on, o[j], hi[j], lo[j], c[j], v[j], v[j] * c[j], 0, v[j] / 2) for j in present]


def _ffill(x: np.ndarray) -> np.ndarray:
    ok = np.isfinite(x)
    idx = np.where(ok, np.arange(len(x))[:, None], 0)
    np.maximum.accumulate(idx, axis=0, out=idx)
    out = x[idx, np.arange(x.shape[1])]
    return out


def _fresh(path: Path) -> Path:
    """A run's scratch store must start empty: the paper broker would recover an earlier run's account from it."""
    if path.exists():
        raise ValueError(f"{path} exists: a replay needs a fresh store (the broker recovers its account from it)")
    return path


def replay(name: str, panel, er: np.ndarray, lo: int, hi: int, *, cfg, filters: dict[str, SymbolFilters],
           costs: Costs, workdir: Path, warm: int = 100, trace: bool = False,
           atr: tuple[np.ndarray, np.ndarray] | None = None) -> PipelineRun:
    """Replay bars ``[lo - warm, hi)`` of ``panel`` through one TradingPipeline whose engine set answers ``er``;
    the warm bars build features and the optimizer's metrics (no predictions before ``lo``); recorded from ``lo``.
    """
    from daemon.backtest.report import FillRecord, TradeLedger
    from daemon.broker import PaperBroker
    from daemon.pipeline import TradingPipeline
    from daemon.store import SQLiteStore
    from strategies.optimizer import DollarProfitOptimizer
    from strategies.risk import RiskManager
    tf, syms = panel.timeframe, panel.symbols
    tf_ns = timeframe_ns(tf)
    cash = cfg.broker.starting_cash
    store = SQLiteStore(_fresh(workdir / f"{name}.sqlite"), quote_asset=cfg.broker.quote_asset)
    broker = PaperBroker(cfg.broker, store, symbols=syms, filters=filters)
    opt = DollarProfitOptimizer(cfg.optimizer, cfg.risk, filters=filters, fee_rate=cfg.broker.taker_fee,
                                timeframes=(tf,), starting_equity=cash)
    risk = RiskManager(cfg.risk, filters)
    books = {s: ReplayBook(filters[s], costs.spread_bps, costs.slippage_bps) for s in syms}
    clock = _Clock()
    cur = _Cursor()
    er_live = er.copy()
    er_live[:lo] = np.nan  # nothing is traded before the recorded span
    eng = ReplayPredictions(er_live, syms, trace=trace, cursor=cur)
    atr_tn, first = atr if atr is not None else panel_atr(panel)
    col = {s: j for j, s in enumerate(syms)}
    pipe = TradingPipeline(cfg, syms, {tf: eng}, opt, risk, broker, store=None, clock=lambda: clock.now,
                           books=books, bar_sink=None, keep=64, timeframes=(tf,),
                           features=lambda s, _tf: ReplayFeatures(atr_tn[:, col[s]], int(first[col[s]]), cur))
    sim = _Sim(name, pipe, None, TradeLedger())
    ticks = np.array([filters[s].tick_size for s in syms])
    book_list = [books[s] for s in syms]
    present = np.isfinite(panel.close) & np.isfinite(panel.high) & np.isfinite(panel.low)
    last = _ffill(panel.close)
    start = max(0, lo - warm)
    n = hi - lo
    equity = np.empty(n + 1)
    ts_out = np.empty(n + 1, np.int64)
    equity[0], ts_out[0] = cash, int(panel.open_ns[lo])
    expo = 0.0
    t0 = time.perf_counter()
    try:
        for t in range(start, hi):
            close_ns = int(panel.open_ns[t]) + tf_ns
            clock.now = close_ns
            cur.t = t
            idx = np.flatnonzero(present[t])
            bars = _bars(panel, t, idx)
            mids = panel.close[t, idx]
            px = [x.tolist() for x in book_prices(mids, ticks[idx], books[syms[0]].half, books[syms[0]].slip)]
            if opt.positions:  # stops / take profits inside the bar, before its close is decided
                by_sym = {b.symbol: b for b in bars}
                for s in list(opt.positions):
                    b = by_sym.get(s)
                    if b is not None:
                        _intrabar(sim, b, clock, books[s])
            for i, b in enumerate(bars):
                bk = book_list[idx[i]]
                bk.set_prices(b.close, px[0][i], px[1][i], px[2][i], px[3][i])
                ds = pipe.on_closed_bar(b, bk, close_ns)
                for d in ds:
                    if d.intents or d.fills:
                        _record(sim, [d], d.close)
            for d in pipe.flush(close_ns, upto=close_ns, reason="replay"):  # a symbol absent at this bar
                if d.intents or d.fills:
                    _record(sim, [d], d.close)
            if t >= lo:
                pf = broker.portfolio  # replaced (copy-on-write) by every fill
                lt = last[t]
                held = 0.0
                for s, p in pf.positions.items():
                    if p.qty:
                        held += p.qty * lt[col[s]]
                e = pf.cash + held
                if t == hi - 1:  # the end: every open position is sold on its last book
                    for s, p in pf.positions.items():
                        books[s].set_mid(float(lt[col[s]]))
                    d = pipe.flatten(close_ns)
                    pf = broker.portfolio
                    for f in d.fills:
                        sim.ledger.on_fill(FillRecord(f.ts, f.symbol, int(f.side), f.price, f.qty, f.fee,
                                                      books[f.symbol].mid_price, tf, "end_of_backtest",
                                                      f.client_order_id))
                    held = sum(p.qty * lt[col[s]] for s, p in pf.positions.items() if p.qty)
                    e = pf.cash + held
                equity[t - lo + 1] = e
                ts_out[t - lo + 1] = close_ns
                expo += held / e if e > 0 else 0.0
    finally:
        store.close()
    bpy = 365 * _DAY_NS / tf_ns
    out = PipelineRun(name, ts_out, equity, sim.ledger.fills, sim.ledger.trades, bpy,
                      {"pipeline": dict(pipe.counters), "optimizer": dict(opt.counters), "risk": dict(risk.counters),
                       "broker": dict(broker.stats), "engine": {"calls": eng.calls, "served": eng.served}},
                      time.perf_counter() - t0, n, expo / max(n, 1), eng.trace)
    return out


def buy_and_hold(panel, lo: int, hi: int, *, cfg, filters: dict[str, SymbolFilters], costs: Costs,
                 workdir: Path) -> PipelineRun:
    """Equal weight in the symbols present at bar ``lo``, bought at its close on the replay books through the
    paper broker (one entry fee each), held, sold at each one's last close at the end (one exit fee each)."""
    from daemon.backtest.report import FillRecord, TradeLedger
    from daemon.broker import PaperBroker
    from daemon.store import SQLiteStore
    from strategies.sizing import floor_to_step
    tf, syms = panel.timeframe, panel.symbols
    tf_ns = timeframe_ns(tf)
    cash = cfg.broker.starting_cash
    store = SQLiteStore(_fresh(workdir / "buy_and_hold.sqlite"), quote_asset=cfg.broker.quote_asset)
    broker = PaperBroker(cfg.broker, store, symbols=syms, filters=filters)
    led = TradeLedger()
    books = {s: ReplayBook(filters[s], costs.spread_bps, costs.slippage_bps) for s in syms}
    last = _ffill(panel.close)
    t0 = time.perf_counter()

    def trade(s: str, side: Side, qty: float, mid: float, ts: int, tag: str) -> None:
        bk = books[s]
        bk.set_mid(mid)
        ex = broker.submit(OrderIntent(f"bh-{s}-{tag}", s, side, qty, reduce_only=side < 0, timeframe=tf,
                                       reason=tag, ts=ts), bk, ts)
        for f in ex.fills:
            led.on_fill(FillRecord(f.ts, f.symbol, int(f.side), f.price, f.qty, f.fee, mid, tf, tag,
                                   f.client_order_id))

    try:
        first = [j for j in range(len(syms)) if math.isfinite(panel.close[lo, j])]
        ts = int(panel.open_ns[lo]) + tf_ns
        fee = cfg.broker.taker_fee
        for j in first:
            s = syms[j]
            px = float(panel.close[lo, j]) * (1 + costs.spread_bps * 1e-4 / 2 + costs.slippage_bps * 1e-4)
            qty = floor_to_step(cash * 0.995 / len(first) / px / (1 + fee), filters[s].lot_step)
            trade(s, Side.BUY, qty, float(panel.close[lo, j]), ts, "entry")
        q = np.zeros(len(syms))
        for s, p in broker.portfolio.positions.items():
            q[syms.index(s)] = p.qty
        c = broker.portfolio.cash
        vals = c + np.nansum(last[lo:hi] * q, axis=1)
        equity = np.concatenate([[cash], vals])
        ts_out = np.concatenate([[int(panel.open_ns[lo])], panel.open_ns[lo:hi].astype(np.int64) + tf_ns])
        end = int(panel.open_ns[hi - 1]) + tf_ns
        for j in first:
            s = syms[j]
            qty = broker.portfolio.qty(s)
            if qty:
                trade(s, Side.SELL, qty, float(last[hi - 1, j]), end, "end_of_backtest")
        equity[-1] = broker.portfolio.cash + sum(p.qty * last[hi - 1, syms.index(s)]
                                                 for s, p in broker.portfolio.positions.items() if p.qty)
    finally:
        store.close()
    expo = float(np.mean(np.nansum(last[lo:hi] * q, axis=1) / vals))
    return PipelineRun("buy_and_hold", ts_out, equity, led.fills, led.trades, 365 * _DAY_NS / tf_ns,
                       {"broker": dict(broker.stats)}, time.perf_counter() - t0, hi - lo, expo)


@dataclass
class PipelineBacktest:
    metrics: dict
    runs: dict[str, PipelineRun]
    er: dict[str, np.ndarray]         # run -> (T, N) expected returns replayed
    calibration: dict[str, list[dict]]
    span: tuple[int, int]
    scores: dict[str, np.ndarray]     # run -> (T, N) out-of-sample scores that were calibrated
    windows: list                     # research.walkforward.Window
    cfg: Any = None                   # the configuration the pipeline ran with
    panel: Any = None


def pipeline_backtest(res, panel, model: str, *, cfg=None, costs: Costs = Costs(), cash: float | None = None,
                      workdir: str | Path | None = None, trace: bool = False, parallel: bool = True
                      ) -> PipelineBacktest:
    """The strategy (``model``'s seed-0 scores), the momentum and reversal factors and buy-and-hold through the
    pipeline over the calibrated test span of ``res`` (a research.walkforward.TfResult on ``panel``)."""
    from daemon.config import Config
    cfg = cfg or Config()
    h = res.params.horizon
    cash = float(cash or cfg.broker.starting_cash)
    tf = panel.timeframe
    if not np.array_equal(panel.open_ns, res.open_ns) or panel.close.shape != res.close.shape:
        raise ValueError("the panel and the walk-forward result are not on the same bars")
    rcfg = _config(cfg, tf, h, costs, cash)
    filters = {s: symbol_filters(s, panel.close[:, j]) for j, s in enumerate(panel.symbols)}
    names = {"strategy": model, "momentum": "momentum", "reversal": "reversal"}
    er, cal = {}, {}
    for run_name, m in names.items():
        er[run_name], cal[run_name] = calibrated_returns(res.preds[m][0], res.fwd, res.windows, h)
    ok = [c["window"] for c in cal["strategy"] if "slope" in c]
    if not ok:
        raise ValueError(f"{tf}: no test window can be calibrated (needs at least two walk-forward windows)")
    lo, hi = res.windows[ok[0]].test_lo, res.test_hi
    if hi - lo < 2:
        raise ValueError(f"{tf}: the calibrated test span has {hi - lo} bars")
    own = None
    if workdir is None:
        own = tempfile.TemporaryDirectory(prefix="tradingd-universe-", dir=_scratch_dir())
        workdir = own.name
    wd = Path(workdir)
    wd.mkdir(parents=True, exist_ok=True)
    runs: dict[str, PipelineRun] = {}
    try:
        from daemon.backtest.training import _Job
        # the baselines in forked processes (when allowed) while the strategy runs here
        atr = panel_atr(panel)
        jobs = {k: _Job(_replay_kw, (k, panel, er[k], lo, hi, rcfg, filters, costs, wd, trace, atr), fork=parallel)
                for k in ("momentum", "reversal")}
        runs["strategy"] = replay("strategy", panel, er["strategy"], lo, hi, cfg=rcfg, filters=filters,
                                  costs=costs, workdir=wd, trace=trace, atr=atr)
        runs["buy_and_hold"] = buy_and_hold(panel, lo, hi, cfg=rcfg, filters=filters, costs=costs, workdir=wd)
        for k, j in jobs.items():
            try:
                runs[k] = j.result()
            finally:
                j.close()
    finally:
        if own is not None:
            own.cleanup()
    summ = {k: r.summary() for k, r in runs.items()}
    metrics = {
        "strategy": summ["strategy"],
        "baselines": {k: summ[k] for k in ("buy_and_hold", "momentum", "reversal")},
        "pipeline": {
            "timeframe": tf, "model": model, "seed": 0, "horizon": h, "span_ns": [int(res.open_ns[lo]),
                                                                                 int(res.open_ns[hi - 1])],
            "span_bars": [lo, hi], "starting_cash": cash, "max_bars_held": f"{tf}={h}",
            "costs": {"fee": costs.fee, "spread_bps": costs.spread_bps, "slippage_bps": costs.slippage_bps},
            "limits": {"max_open_positions": rcfg.risk.max_open_positions,
                       "max_gross_exposure": rcfg.risk.max_gross_exposure,
                       "max_position_fraction": rcfg.optimizer.max_position_fraction},
            "calibration": cal, "seconds": {k: r.seconds for k, r in runs.items()},
            "counters": {k: r.counters for k, r in runs.items()},
            "exit_reasons": {k: _reasons(r) for k, r in runs.items()}},
    }
    return PipelineBacktest(metrics, runs, er, cal, (lo, hi), {k: res.preds[m][0] for k, m in names.items()},
                            list(res.windows), rcfg, panel)


def _replay_kw(name, panel, er, lo, hi, cfg, filters, costs, wd, trace, atr):
    return replay(name, panel, er, lo, hi, cfg=cfg, filters=filters, costs=costs, workdir=wd, trace=trace, atr=atr)


def _reasons(r: PipelineRun) -> dict[str, int]:
    out: dict[str, int] = {}
    for f in r.fills:
        out[f.reason] = out.get(f.reason, 0) + 1
    return out


# ------------------------------------------------------------------------------------------------ CLI
def add_arguments(p) -> None:
    from research.cli_backtest import add_arguments as research_arguments
    research_arguments(p)
    p.add_argument("--cash", type=float, default=0.0,
                   help="starting cash of the pipeline runs (default: broker.starting_cash)")
    p.add_argument("--serial", action="store_true", help="run the baselines in this process (no fork)")
    p.add_argument("--config", help="config.toml (optimizer, risk); fees, spread and slippage come from --fee, "
                                    "--spread-bps, --slippage-bps; default: built-in defaults")
    p.add_argument("--log-level", default="warning", choices=("debug", "info", "warning", "error"),
                   help="log level while the pipeline replays (every entry/exit logs at info)")


def _plot(out: Path, pb: PipelineBacktest) -> str:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(10, 3.5))
    for k, r in pb.runs.items():
        ax.plot(r.ts.astype("datetime64[ns]"), r.equity, label=k, lw=1.5 if k in ("strategy", "buy_and_hold") else 0.8)
    tf = pb.metrics["pipeline"]["timeframe"]
    ax.set_title(f"{tf}: equity through the live TradingPipeline (fees, spread, slippage)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    f = f"pipeline_equity_{tf}.png"
    fig.savefig(out / f, dpi=90)
    plt.close(fig)
    return f


def _html(png: str, m: dict) -> str:
    keys = ("return_pct", "sharpe", "max_drawdown_pct", "trades", "fees", "turnover_per_day", "exposure")
    rows = [("strategy", m["strategy"])] + list(m["baselines"].items())
    tr = "".join(f"<tr><td>{html.escape(k)}</td>" + "".join(
        f"<td>{v.get(x, float('nan')):.4g}</td>" for x in keys) + "</tr>" for k, v in rows)
    p = m["pipeline"]
    return (f"<h2>Live pipeline ({p['timeframe']} {p['model']}, after costs)</h2>"
            f"<table border=1 cellspacing=0><tr><th>run</th>{''.join(f'<th>{k}</th>' for k in keys)}</tr>{tr}"
            f"</table><p><img src='{png}'></p>")


def run(args, *, trace: bool = False) -> tuple[dict, PipelineBacktest]:
    from research.cli_backtest import compute
    from research.report import write_report
    t0 = time.perf_counter()
    metrics, evals, results, panels = compute(args)
    tf, model = metrics["strategy"]["timeframe"], metrics["strategy"]["model"]
    costs = Costs(args.fee, args.spread_bps, args.slippage_bps)
    from daemon.config import load_config
    from daemon.logs import configure
    cfg = load_config(args.config)
    configure(level=args.log_level, json=False)
    t1 = time.perf_counter()
    pb = pipeline_backtest(results[tf], panels[tf], model, cfg=cfg, costs=costs, cash=args.cash or None,
                           parallel=not args.serial, trace=trace)
    metrics["strategy_vectorised"] = metrics["strategy"]
    metrics["baselines_vectorised"] = metrics["baselines"]
    metrics["strategy"] = {**pb.metrics["strategy"], "timeframe": tf, "model": model, "source": "TradingPipeline"}
    metrics["baselines"] = pb.metrics["baselines"]
    metrics["pipeline"] = pb.metrics["pipeline"]
    metrics["pipeline"]["equity"] = {k: {"ts": r.ts, "equity": r.equity} for k, r in pb.runs.items()}
    metrics["info"]["note"] = NOTE + " " + metrics["info"].get("note", "")
    metrics["info"]["timings_s"]["pipeline"] = time.perf_counter() - t1
    metrics["info"]["timings_s"]["total"] = time.perf_counter() - t0
    out = Path(args.report)
    out.mkdir(parents=True, exist_ok=True)
    png = _plot(out, pb)
    write_report(out, metrics, evals, results, extra_html=_html(png, metrics))
    return metrics, pb


def main(args) -> int:
    from research.executor import run_command
    from research.universe import UniverseError
    code, got = run_command("backtest", lambda: run(args), (UniverseError, ValueError))
    if code:
        return code
    m = got[0]
    s, b = m["strategy"], m["baselines"]
    print(f"pipeline {s['timeframe']} {s['model']}: return {s['return_pct']:.2f}% sharpe {s['sharpe']:.2f} "
          f"maxDD {s['max_drawdown_pct']:.1f}% trades {s['trades']} fees {s['fees']:.2f} "
          f"turnover/day {s['turnover_per_day']:.2f}")
    for k, v in b.items():
        print(f"  {k:<13} return {v['return_pct']:.2f}% sharpe {v['sharpe']:.2f} maxDD {v['max_drawdown_pct']:.1f}%"
              f" trades {v['trades']}")
    for tf, ms in m["signal"].items():
        for name, d in ms.items():
            print(f"{tf:>4} {name:<9} rank_ic {d['rank_ic']:+.4f} rank_icir {d['rank_icir']:+.3f} ic {d['ic']:+.4f}")
    print(f"report: {Path(args.report) / 'index.html'} ({m['info']['timings_s']['total']:.1f}s)")
    return 0
