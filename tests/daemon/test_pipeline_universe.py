"""TradingPipeline over several symbols: each bar boundary is decided once, with ONE batched inference call per
model and ONE ``optimizer.decide_universe``; real BTC/ETH klines, the real optimizer, risk manager, paper broker and
SQLite store, deterministic fake engines (functions of the feature row)."""
from __future__ import annotations

import math

import msgspec
import pytest

from daemon.broker import PaperBroker
from daemon.config import Config, replace
from daemon.pipeline import TradingPipeline
from daemon.store import SQLiteStore
from engines.data import klines_to_bars, load_klines_csv
from engines.features import FEATURE_SCHEMA
from market.filters import SymbolFilters
from strategies.optimizer import DollarProfitOptimizer
from strategies.risk import RiskManager

SYMS = ("BTCUSDT", "ETHUSDT", "BTCXUSDT")
FILTERS = {"BTCUSDT": SymbolFilters("BTCUSDT", 0.01, 0.00001, 0.00001, 9000.0, 5.0),
           "ETHUSDT": SymbolFilters("ETHUSDT", 0.01, 0.0001, 0.0001, 9000.0, 5.0),
           "BTCXUSDT": SymbolFilters("BTCXUSDT", 0.00001, 0.1, 0.1, 9e6, 5.0)}
TFS = ("5m", "15m")
I_RET3 = FEATURE_SCHEMA.names.index("ret_3")


def p_of(row) -> float:
    """The fake model: momentum over 3 bars squashed to (0, 1)."""
    return 1.0 / (1.0 + math.exp(-800.0 * float(row[I_RET3])))


def synthetic_book(close: float):
    """A tight two-sided book around the close (klines carry no book)."""
    bid, ask = close * (1 - 0.00005), close * (1 + 0.00005)
    return [(bid, 5.0), (bid * 0.999, 50.0)], [(ask, 5.0), (ask * 1.001, 50.0)]


class BatchEngines:
    """The fake model, answering one row or a batch; counts the calls."""

    def __init__(self) -> None:
        self.calls = self.batch_calls = self.batch_rows = 0

    def predict(self, row, symbol):
        self.calls += 1
        return {"xgboost": p_of(row)}

    def predict_batch(self, rows, symbols):
        self.batch_calls += 1
        self.batch_rows += len(rows)
        return [{"xgboost": p_of(r)} for r in rows]

    def observe(self, row, symbol):
        pass


def make(tmp_path, batch: bool):
    cfg = replace(Config(), general={"timeframes": TFS, "data_dir": str(tmp_path), "symbols": SYMS},
                  broker={"taker_fee": 0.0001, "maker_fee": 0.0001})
    store = SQLiteStore(tmp_path / f"store{int(batch)}.sqlite")
    broker = PaperBroker(cfg.broker, store, symbols=SYMS, filters=FILTERS)
    opt = DollarProfitOptimizer(cfg.optimizer, cfg.risk, filters=FILTERS, fee_rate=cfg.broker.taker_fee,
                                timeframes=TFS, starting_equity=cfg.broker.starting_cash)
    engines = {tf: BatchEngines() for tf in TFS}
    pipe = TradingPipeline(cfg, SYMS, engines, opt, RiskManager(cfg.risk, FILTERS), broker, store=store,
                           batch=batch)
    return pipe, engines, opt


@pytest.fixture(scope="module")
def universe_bars(btc_klines_path, eth_klines_path):
    btc = klines_to_bars(load_klines_csv(btc_klines_path, symbol="BTCUSDT")[: 2 * 1440])
    eth = klines_to_bars(load_klines_csv(eth_klines_path, symbol="ETHUSDT")[: 2 * 1440])
    x = [msgspec.structs.replace(b, symbol="BTCXUSDT", open=b.open / 1000, high=b.high / 1000, low=b.low / 1000,
                                 close=b.close / 1000) for b in btc]
    assert [b.open_ns for b in btc] == [b.open_ns for b in eth]
    return {"BTCUSDT": btc, "ETHUSDT": eth, "BTCXUSDT": x}


def run(pipe, bars, start=1000):
    for s in SYMS:
        pipe.prime(s, bars[s][:start])
    for i in range(start, len(bars[SYMS[0]])):
        for s in SYMS:  # symbols' 1m bars interleaved as a feed delivers them
            b = bars[s][i]
            pipe.on_bar(b, synthetic_book(b.close))


def test_batched_boundaries_predict_like_the_sequential_path_in_one_call_each(tmp_path, universe_bars):
    seq, seq_eng, _ = make(tmp_path, batch=False)
    bat, bat_eng, opt = make(tmp_path, batch=True)
    run(seq, universe_bars)
    run(bat, universe_bars)
    key = lambda d: (d.symbol, d.timeframe, d.bar_open_ns)  # noqa: E731
    s_preds = {key(d): d.predictions for d in seq.decisions if d.timeframe}
    b_preds = {key(d): d.predictions for d in bat.decisions if d.timeframe}
    assert s_preds and s_preds == b_preds  # same bars decided, same numbers
    n_boundaries = {tf: len({d.bar_open_ns for d in bat.decisions if d.timeframe == tf}) for tf in TFS}
    for tf in TFS:
        assert bat_eng[tf].calls == 0 and seq_eng[tf].batch_calls == 0
        assert bat_eng[tf].batch_calls == n_boundaries[tf]  # ONE inference call per boundary
        assert bat_eng[tf].batch_rows == seq_eng[tf].calls
        assert bat.boundaries[tf]["symbols"] == list(SYMS) and bat.boundaries[tf]["missing"] == []
    assert opt.counters["universe_decisions"] == sum(n_boundaries.values())
    assert bat.counters["boundaries.complete"] == sum(n_boundaries.values())
    assert bat.counters["decisions"] == seq.counters["decisions"]


def test_a_symbol_missing_at_a_boundary_is_not_waited_for_forever(tmp_path, universe_bars):
    pipe, eng, _ = make(tmp_path, batch=True)
    for s in SYMS:
        pipe.prime(s, universe_bars[s][:1000])
    i0 = 1000 + (-1000) % 5  # the first minute of a 5m period
    for i in range(i0, i0 + 5):  # ETH misses the last minute of this 5m bar
        for s in SYMS:
            if not (s == "ETHUSDT" and i == i0 + 4):
                pipe.on_bar(universe_bars[s][i])
    assert pipe.boundaries == {}  # waiting for ETH
    got = pipe.on_time(universe_bars["BTCUSDT"][i0 + 4].open_ns + 60_000_000_000)  # the bar clock passes it
    assert {d.symbol for d in got} == {"BTCUSDT", "BTCXUSDT"}
    b = pipe.boundaries["5m"]
    assert b["reason"] == "bar_clock" and b["missing"] == ["ETHUSDT"]
    # a later boundary closes while one symbol is still missing from the earlier one: decided without it
    for i in range(i0 + 5, i0 + 10):
        for s in ("BTCUSDT", "BTCXUSDT"):
            pipe.on_bar(universe_bars[s][i])
    for i in range(i0 + 5, i0 + 15):
        pipe.on_bar(universe_bars["ETHUSDT"][i])
    assert pipe.counters["boundaries.later_bar"] >= 1
    left = pipe.flush()  # end of a replay: what is pending is decided
    assert left and pipe._pending == {}
