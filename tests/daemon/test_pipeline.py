"""TradingPipeline over real data: real BTCUSDT klines (klines-driven, as the backtest drives it) and the real
websocket recording (trade-driven, as the daemon drives it), with deterministic fake engine sets (functions of
the feature row), the real optimizer, risk manager, paper broker and SQLite store."""
from __future__ import annotations

import math
import sqlite3

import msgspec
import numpy as np
import pytest

from daemon.binance.codec import decode_frame

from market.filters import SymbolFilters
from market.book import OrderBook
from daemon.broker import PaperBroker
from daemon.config import Config, replace
from market.events import DepthSnapshot, DepthUpdate, Trade
from daemon.pipeline import MinuteAggregator, TradingPipeline
from daemon.recording import iter_recording
from daemon.store import SQLiteStore
from engines.data import klines_to_bars, load_klines_csv, resample
from engines.features import FEATURE_SCHEMA, batch_features
from strategies.optimizer import DollarProfitOptimizer
from strategies.risk import RiskManager

SYM = "BTCUSDT"
FILTERS = {SYM: SymbolFilters(SYM, 0.01, 0.00001, 0.00001, 9000.0, 5.0)}
I_RET3 = FEATURE_SCHEMA.names.index("ret_3")


def p_of(row: np.ndarray) -> float:
    """The fake model: momentum over 3 bars squashed to (0, 1) (strong enough to clear costs)."""
    return 1.0 / (1.0 + math.exp(-800.0 * float(row[I_RET3])))


class FakeEngines:
    def __init__(self) -> None:
        self.calls = 0
        self.observed = 0

    def predict(self, row, symbol):
        self.calls += 1
        return {"xgboost": p_of(row)}

    def observe(self, row, symbol):
        self.observed += 1


class StaleBook:
    is_tradeable = False

    def best_bid(self):
        return None

    def best_ask(self):
        return None

    def depth(self, n):
        return [], []


def synthetic_book(close: float):
    """A tight two-sided book around the close (klines carry no book)."""
    bid = round(close * (1 - 0.00005), 2)
    ask = round(close * (1 + 0.00005), 2)
    return [(bid, 5.0), (round(bid - 1, 2), 50.0)], [(ask, 5.0), (round(ask + 1, 2), 50.0)]


def make_pipeline(tmp_path, timeframes=("5m", "15m"), clock=None):
    cfg = replace(Config(), general={"timeframes": timeframes, "data_dir": str(tmp_path)},
                  broker={"taker_fee": 0.0001, "maker_fee": 0.0001})
    store = SQLiteStore(tmp_path / "store.sqlite")
    broker = PaperBroker(cfg.broker, store, symbols=(SYM,), filters=FILTERS)
    opt = DollarProfitOptimizer(cfg.optimizer, cfg.risk, filters=FILTERS, fee_rate=cfg.broker.taker_fee,
                                timeframes=timeframes, starting_equity=cfg.broker.starting_cash)
    risk = RiskManager(cfg.risk, FILTERS)
    engines = {tf: FakeEngines() for tf in timeframes}
    kw = {"clock": clock} if clock else {}
    pipe = TradingPipeline(cfg, [SYM], engines, opt, risk, broker, store=store, **kw)
    return pipe, engines, store


@pytest.fixture(scope="module")
def klines(btc_klines_path):
    return load_klines_csv(btc_klines_path, symbol=SYM)[: 4 * 1440]


def test_aggregator_equals_resample(klines):
    k = klines[: 2 * 1440 + 7]  # ends mid-period: the incomplete bar is not emitted
    agg = MinuteAggregator(SYM, ["1m", "5m", "15m", "1h"])
    got: dict[str, list] = {"5m": [], "15m": [], "1h": []}
    for b in klines_to_bars(k):
        for hb in agg.add(b):
            got[hb.timeframe].append(hb)
    for tf, bars in got.items():
        r = resample(k, tf)
        assert len(bars) == len(r)
        assert [b.open_ns for b in bars] == r.open_ns.tolist()
        for col in ("open", "high", "low", "close", "volume"):
            assert [getattr(b, col) for b in bars] == getattr(r, col).tolist(), (tf, col)


def test_klines_driven_decisions_orders_and_store(tmp_path, klines):
    pipe, engines, store = make_pipeline(tmp_path)
    bars = klines_to_bars(klines)
    primed = pipe.prime(SYM, bars[:1440])
    assert primed > 0 and engines["5m"].observed > 0
    for b in bars[1440:]:
        pipe.on_bar(b, synthetic_book(b.close))
    decisions = [d for d in pipe.decisions if d.timeframe]
    by_tf = {tf: [d for d in decisions if d.timeframe == tf] for tf in ("5m", "15m")}
    assert len(by_tf["5m"]) == 3 * 1440 // 5 and len(by_tf["15m"]) == 3 * 1440 // 15
    # predictions are exactly the fake model of the batch features of the same bar (incremental == batch)
    k15 = resample(klines, "15m")
    X = batch_features(k15, "15m")
    idx = {int(t): i for i, t in enumerate(k15.open_ns)}
    for d in by_tf["15m"][:50] + by_tf["15m"][-50:]:
        assert d.predictions["xgboost"] == p_of(X[idx[d.bar_open_ns]])
        assert d.atr is not None and d.signal is not None
    # the optimizer traded, risk checked every intent, fills reached the portfolio and the store
    intents = [i for d in pipe.decisions for i in d.intents]
    fills = [f for d in pipe.decisions for f in d.fills]
    assert intents and fills, pipe.counters
    assert len([r for d in pipe.decisions for r in d.risk]) == len(intents)
    assert pipe.counters["orders"] > 0 and pipe.counters["fills"] == len(fills)
    assert {f.fill_id for f in store.fills()} == {f.fill_id for f in fills}
    db = sqlite3.connect(tmp_path / "store.sqlite")
    signed = db.execute("SELECT COALESCE(SUM(side * qty), 0) FROM fills WHERE symbol=?", (SYM,)).fetchone()[0]
    assert pipe.broker.portfolio.qty(SYM) == pytest.approx(signed, abs=1e-9)
    # bars reached the store for the retrainer (each timeframe)
    n15 = db.execute("SELECT COUNT(*) FROM bars WHERE timeframe='15m'").fetchone()[0]
    assert n15 == len(by_tf["15m"])
    assert pipe.counters["stale_book_bars"] == 0


def test_stale_book_means_no_orders(tmp_path, klines):
    pipe, engines, store = make_pipeline(tmp_path)
    bars = klines_to_bars(klines)
    pipe.prime(SYM, bars[:1440])
    stale = StaleBook()
    for b in bars[1440:1440 * 2]:
        pipe.on_bar(b, stale)
    decisions = [d for d in pipe.decisions if d.timeframe]
    assert decisions and all(d.book_stale for d in decisions)
    assert any(d.predictions for d in decisions)  # it still predicted; it refused to trade
    assert pipe.counters["stale_book_bars"] == len(decisions)
    assert pipe.counters["orders"] == 0 and not store.fills()
    assert pipe.optimizer.counters["stale_book"] > 0


def test_trade_driven_on_real_recording(tmp_path, binance_recording):
    """Trades + depth from the real recording through OrderBook and the pipeline; latency with an injected
    clock is exactly what the clock says; 1m bars close, reach the store, and no order is made without
    predictions (features are still warming up: 11 minutes < 48 bars)."""
    now = {"t": 0}
    pipe, engines, store = make_pipeline(tmp_path, timeframes=("1m", "5m"), clock=lambda: now["t"])
    book = OrderBook(SYM)
    n_trades = 0
    for recv_ns, raw in iter_recording(binance_recording):
        ev = decode_frame(raw, recv_ns)
        if isinstance(ev, DepthSnapshot):
            book.on_snapshot(DepthSnapshot(SYM, ev.last_update_id, ev.bids, ev.asks, ev.ts_recv))
        elif isinstance(ev, DepthUpdate):
            book.on_update(ev)
            pipe.on_depth(SYM, book, ev.ts_recv)
        elif isinstance(ev, Trade):
            n_trades += 1
            now["t"] = ev.ts_recv + 12_345
            pipe.on_trade(ev, book)
    assert n_trades == 19_904
    d1 = [d for d in pipe.decisions if d.timeframe == "1m"]
    assert 9 <= len(d1) <= 11
    assert all(d.latency_ns == 12_345 for d in d1)
    assert pipe.latency_summary()["p50_us"] == pytest.approx(12.345)
    assert all(d.predictions == {} for d in d1) and engines["1m"].calls == 0
    assert pipe.counters["orders"] == 0
    db = sqlite3.connect(tmp_path / "store.sqlite")
    assert db.execute("SELECT COUNT(*) FROM bars WHERE timeframe='1m'").fetchone()[0] == len(d1)
    # bars equal the builder's: volumes add up to the traded quantity of closed minutes
    assert sum(d.close > 0 for d in d1) == len(d1)


# ------------------------------------------------------------------------------------------------ EngineSet
class _Eng:
    def __init__(self, kind, seq_len=0, value=0.5, ready=True):
        self.kind, self.seq_len, self.value, self.ready = kind, seq_len, value, ready
        self.shapes = []

    def predict(self, x):
        self.shapes.append(x.shape)
        return np.full(x.shape[0], self.value)


def _set(seq_len=4, xv=0.6, lv=0.7, ready=True):
    from daemon.engineset import EngineSet, LoadedEngine
    x, l = _Eng("xgboost", value=xv, ready=ready), _Eng("lstm", seq_len, lv, ready)
    return EngineSet("5m", {"xgboost": LoadedEngine("xgboost", x, "v1", "compiled-cpu", "test", False, "/x"),
                            "lstm": LoadedEngine("lstm", l, "v1", "onnxruntime-cpu", "test", False, "/l")}), x, l


def test_engineset_lstm_only_with_a_full_window_per_symbol_and_swap():
    es, x, l = _set(seq_len=4)
    nf = FEATURE_SCHEMA.n_features
    rows = [np.full(nf, float(i)) for i in range(6)]
    assert es.predict(rows[0], "BTCUSDT") == {"xgboost": 0.6}
    es.observe(rows[1], "BTCUSDT")
    es.observe(rows[2], "BTCUSDT")
    out = es.predict(rows[3], "BTCUSDT")  # 4 rows now: the window is full
    assert out == {"xgboost": 0.6, "lstm": 0.7} and l.shapes[-1] == (1, 4, nf) and x.shapes[-1] == (1, nf)
    assert es.predict(rows[0], "ETHUSDT") == {"xgboost": 0.6}  # windows are per symbol
    new, _, _ = _set(seq_len=4, xv=0.1, lv=0.2)
    es.swap(new)
    assert es.predict(rows[4], "BTCUSDT") == {"xgboost": 0.1, "lstm": 0.2}  # history kept across the swap
    cold, _, _ = _set(ready=False)
    from daemon.engineset import ModelLoadError
    with pytest.raises(ModelLoadError, match="not warmed"):
        es.swap(cold)
    assert es.predict(rows[5], "BTCUSDT")["xgboost"] == 0.1


def test_engineset_load_refuses_missing_model(tmp_path):
    from daemon.engineset import EngineSet, ModelLoadError
    from engines.registry import ModelRegistry
    with pytest.raises(ModelLoadError, match="no current xgboost model for timeframe 5m"):
        EngineSet.load(ModelRegistry(tmp_path), "5m", Config().engines)


def test_prime_warms_timeframe_selection_from_history(tmp_path, klines):
    """After priming, every timeframe has selection metrics, so the first live selection is not forced onto
    the only timeframe that has closed a live bar (1m, which cannot clear costs at 0.1 % fees)."""
    tfs = ("1m", "5m", "15m", "1h")
    pipe, _engines, _store = make_pipeline(tmp_path, timeframes=tfs)
    opt = pipe.optimizer
    assert opt.market_metrics(SYM) == {}
    pipe.prime(SYM, klines_to_bars(klines[:2 * 1440]))
    metrics = opt.market_metrics(SYM)
    assert set(metrics) == set(tfs)
    assert metrics["1h"].volatility > metrics["1m"].volatility > 0   # ATR/price grows with the timeframe
    choice = opt.select_optimal_timeframe(metrics, symbol=SYM)
    assert all(choice.breakdown[tf].eligible for tf in tfs)
    assert choice.timeframe != "1m"
    assert not pipe.decisions                                           # priming decides nothing


def test_exit_plans_reach_the_sink_and_a_restart_restores_them(tmp_path, klines):
    """Every change of the optimizer's exit plan goes to ``plan_sink`` (the daemon stores it); a new optimizer
    (a restart) restores the open position's plan — same timeframe, entry, stop, take profit — from the last one."""
    pipe, engines, store = make_pipeline(tmp_path)
    sunk: list[tuple[str, dict | None]] = []
    pipe.plan_sink = lambda sym, plan: sunk.append((sym, plan))
    bars = klines_to_bars(klines)
    pipe.prime(SYM, bars[:1440])
    stop_at = None
    for i, b in enumerate(bars[1440:], 1440):
        pipe.on_bar(b, synthetic_book(b.close))
        if SYM in pipe.optimizer.positions and any(p is None for _, p in sunk):
            stop_at = i  # a position was opened, closed, and another is open now
            break
    assert stop_at is not None, pipe.counters
    assert sunk[-1][1] == pipe.optimizer.exit_plan(SYM) and sunk[-1][1] is not None
    opened = [p for _, p in sunk if p is not None]
    assert all(p["stop"] != p["take_profit"] and p["timeframe"] in ("5m", "15m") for p in opened)
    # "restart": a fresh optimizer, the account as recovered from the store, the last stored plan
    from daemon.broker import PaperBroker
    from strategies.risk import AccountState
    broker2 = PaperBroker(pipe.cfg.broker, store, symbols=(SYM,), filters=FILTERS)
    acct = AccountState(math.nan, broker2.portfolio.positions, {})
    opt2 = DollarProfitOptimizer(pipe.cfg.optimizer, pipe.cfg.risk, filters=FILTERS, fee_rate=0.0001,
                                 timeframes=("5m", "15m"), starting_equity=pipe.cfg.broker.starting_cash)
    assert opt2.restore_exit_plans([sunk[-1][1]], acct) == 1
    assert opt2.exit_plan(SYM) == pipe.optimizer.exit_plan(SYM)
    assert opt2.positions[SYM].qty == pytest.approx(abs(broker2.portfolio.qty(SYM)))
    # a plan for a position the account does not have (or the other way round) is dropped, not trusted
    flipped = dict(sunk[-1][1], direction=-sunk[-1][1]["direction"])
    opt3 = DollarProfitOptimizer(pipe.cfg.optimizer, pipe.cfg.risk, filters=FILTERS, fee_rate=0.0001,
                                 timeframes=("5m", "15m"), starting_equity=pipe.cfg.broker.starting_cash)
    assert opt3.restore_exit_plans([flipped, {"symbol": SYM}], acct) == 0
    assert opt3.counters["plan_discarded"] == 1 and opt3.counters["plan_invalid"] == 1


def test_dust_below_one_lot_is_valued_but_not_a_position_for_the_strategy(tmp_path):
    """What a base-asset commission leaves after an exit (< one lot) stays in equity, but the account the
    optimizer, risk and flatten see has no position there: nothing tries to sell what the venue cannot."""
    from market.events import Fill, Side
    pipe, _, store = make_pipeline(tmp_path)
    try:
        pf = pipe.broker.portfolio
        pf.apply_fill(Fill("b-1", "b", SYM, Side.BUY, 60000.0, 0.01234, 0.7404, "taker", 1, 0.00001234))
        pf.apply_fill(Fill("s-1", "s", SYM, Side.SELL, 60000.0, 0.01232, 0.7392, "taker", 2))
        assert pf.qty(SYM) == pytest.approx(0.00000766, abs=1e-12)
        acct = pipe.account()
        assert acct.qty(SYM) == 0.0 and acct.open_symbols() == []
        assert acct.equity == pytest.approx(pf.cash + pf.qty(SYM) * 60000.0)  # still valued (mark = entry)
        d = pipe.flatten(3)
        assert d.intents == []  # no exit for dust
        pf.apply_fill(Fill("b-2", "b2", SYM, Side.BUY, 60000.0, 0.001, 0.06, "taker", 4))  # a real position again
        assert pipe.account().qty(SYM) == pytest.approx(0.00100766, abs=1e-12)
    finally:
        store.close()


def test_a_confirmed_clock_jump_from_the_feed_restarts_bars_instead_of_deciding_on_flat_ones(tmp_path):
    """Trades 3 days later, confirmed by 3 events: the feed's guard emits ClockJump before the confirming trade;
    the pipeline restarts the bars there (no 4,000 flat bars run through the models on the loop)."""
    import asyncio

    from daemon.binance.feed import BinanceFeed
    from daemon.plausible import ClockJump
    pipe, _, _ = make_pipeline(tmp_path, timeframes=("1m",))
    seen = []

    def on_event(ev):
        seen.append(ev)
        pipe.on_event(ev)

    feed = BinanceFeed([SYM], "ws://127.0.0.1:9", "http://127.0.0.1:9", on_event=on_event)
    t0_ms = 1_723_161_240_000

    def trade(tid, t_ms):
        return (b'{"stream":"btcusdt@trade","data":{"e":"trade","E":%d,"s":"BTCUSDT","t":%d,"p":"60000.0",'
                b'"q":"0.01","T":%d,"m":false}}' % (t_ms, tid, t_ms))

    async def main():
        await feed._on_frame(trade(1, t0_ms), t0_ms * 1_000_000)
        await feed._on_frame(trade(2, t0_ms + 30_000), (t0_ms + 30_000) * 1_000_000)
        jump_ms = 3 * 86_400_000
        for i in range(3, 8):
            await feed._on_frame(trade(i, t0_ms + jump_ms + i * 1000), (t0_ms + 30_000 + i * 1000) * 1_000_000)

    asyncio.run(main())
    assert sum(isinstance(e, ClockJump) for e in seen) == 1 and feed.stats.clock_jumps == 1
    assert feed.stats.refused[(SYM, "time_ahead")] == 2  # until confirmed
    b = pipe.builder(SYM).stats
    assert b.gap_resets == 1 and b.empty_bars == 0 and b.bars_closed == 1
    assert pipe.counters["clock_jumps"] == 1 and pipe.counters["bars"] == 1


def test_events_are_dispatched_by_type_not_by_class_name(tmp_path):
    """on_event routes by the event's type: a Trade closes bars and moves the mark, a BookStatus is recorded, and
    an object that merely shares a class NAME with an event (another module's ``Trade``) is ignored, not traded on."""
    from daemon.binance.feed import BookStatus
    pipe, _, _ = make_pipeline(tmp_path, timeframes=("1m",))
    t0 = 1_723_161_240_000_000_000
    pipe.on_event(Trade(SYM, 1, 60_000.0, 0.01, False, t0, t0))
    pipe.on_event(Trade(SYM, 2, 60_010.0, 0.01, False, t0 + 61 * 10**9, t0 + 61 * 10**9))
    assert pipe.counters["bars"] == 1 and pipe.marks() == {SYM: 60_010.0}

    class Trade_(msgspec.Struct, frozen=True):  # same fields, same name, not market.events.Trade
        symbol: str
        trade_id: int
        price: float
        qty: float
        is_buyer_maker: bool
        ts_event: int
        ts_recv: int
    Trade_.__name__ = "Trade"
    impostor = Trade_(SYM, 3, 1.0, 0.01, False, t0 + 200 * 10**9, t0 + 200 * 10**9)
    assert pipe.on_event(impostor) == []
    assert pipe.counters["bars"] == 1 and pipe.marks() == {SYM: 60_010.0}
    assert pipe.builder(SYM).stats.accepted == 2
    pipe.on_event(BookStatus(SYM, "SYNCED", "snapshot", 1, t0))
    assert pipe.book_states == {SYM: "SYNCED"} and pipe.counters["book_synced"] == 1
