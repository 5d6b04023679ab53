"""The simulator's universe: one market factor plus each symbol's own moves (history and live), per-symbol start
prices, volatilities and filters that follow the price, deterministic by seed, and a symbol's market independent of
which other symbols are simulated beside it."""
from __future__ import annotations

import dataclasses

import msgspec
import numpy as np
import orjson
import pytest

from daemon.binance.codec import parse_exchange_info
from daemon.config import ConfigError, SimulatorConfig, config_from_dict
from daemon.venue.simulator import MarketSimulator, exchange_info, symbol_spec
from strategies.sizing import is_step_multiple
from tests.daemon.simbook import START, replay_client_book as _replay_client_book

SEC = 1_000_000_000


def cfg(**kw) -> SimulatorConfig:
    return dataclasses.replace(SimulatorConfig(), **{"history_days": 10, **kw})


def log_returns(c: SimulatorConfig, syms, step: int = 1) -> dict[str, np.ndarray]:
    out = {}
    for s in syms:
        close = MarketSimulator(c, s, START).history()["close"][step - 1::step]
        out[s] = np.diff(np.log(close))
    return out


@pytest.mark.parametrize("rho", [0.0, 0.3, 0.6, 0.9])
def test_history_cross_symbol_correlation_is_the_configured_one(rho):
    """10 days of 1m bars (14,399 returns: estimate std ~0.01): every pair correlates ~ rho, on 1m and 1h."""
    syms = ("BTCUSDT", "ETHUSDT", "SOLUSDT", "DOGEUSDT")
    r = log_returns(cfg(correlation=rho), syms)
    c = np.corrcoef(np.vstack([r[s] for s in syms]))
    off = c[~np.eye(len(syms), dtype=bool)]
    assert np.all(np.abs(off - rho) < 0.035), (rho, off)
    r60 = log_returns(cfg(correlation=rho, history_days=30), syms[:2], step=60)  # 719 hourly returns
    assert abs(np.corrcoef(r60["BTCUSDT"], r60["ETHUSDT"])[0, 1] - rho) < 0.15


def test_per_symbol_loading_and_volatility():
    """Universe entries set each symbol's loading (pair correlation a_i a_j) and its volatility multiple."""
    c = cfg(universe=("AAAUSDT=100:1:0.9", "BBBUSDT=10:2:0.5", "CCCUSDT=1:1:0"))
    r = log_returns(c, ("AAAUSDT", "BBBUSDT", "CCCUSDT"))
    assert np.corrcoef(r["AAAUSDT"], r["BBBUSDT"])[0, 1] == pytest.approx(0.45, abs=0.035)
    assert abs(np.corrcoef(r["AAAUSDT"], r["CCCUSDT"])[0, 1]) < 0.035
    assert np.std(r["BBBUSDT"]) / np.std(r["AAAUSDT"]) == pytest.approx(2.0, rel=0.05)


def test_live_market_shares_the_factor():
    """Live ticks of two simulators of one seed move together (the factor's stream is drawn identically in each),
    with the configured correlation, and a symbol's own stream stays its own."""
    c = cfg(history_days=1, correlation=0.8, trades_per_s=1.0, depth_levels=5)
    a, b = MarketSimulator(c, "BTCUSDT", START), MarketSimulator(c, "ETHUSDT", START)
    mids = []
    for i in range(1, 601):  # 10 minutes, one sample a second
        t = START + i * SEC
        a.advance(t)
        b.advance(t)
        mids.append((a.mid, b.mid))
    m = np.log(np.array(mids))
    ra, rb = np.diff(m[:, 0]), np.diff(m[:, 1])
    assert np.corrcoef(ra, rb)[0, 1] == pytest.approx(0.8, abs=0.1)  # 599 samples: std ~0.015
    assert a.regime == b.regime  # the volatility regime is the market's


def test_filters_differ_per_symbol_and_follow_the_price():
    c = SimulatorConfig()
    info = exchange_info(["BTCUSDT", "ETHUSDT", "DOGEUSDT", "XRPUSDT", "NEWUSDT"], c, 0)
    f = parse_exchange_info(orjson.dumps(info))
    # BTC (not listed: start_price) keeps the configured filters exactly
    assert (f["BTCUSDT"].tick_size, f["BTCUSDT"].lot_step, f["BTCUSDT"].min_notional) == (0.01, 0.00001, 5.0)
    assert msgspec.structs.replace(f["NEWUSDT"], symbol="BTCUSDT") == f["BTCUSDT"]
    assert len({(x.tick_size, x.lot_step) for x in f.values()}) == 4  # ETH, DOGE, XRP differ from BTC and each other
    for s, x in f.items():
        price = symbol_spec(c, s).start_price
        rel_tick = x.tick_size / price
        lot_value = x.lot_step * price
        assert 0.01 / 60_000 / 3.2 <= rel_tick <= 0.01 / 60_000 * 3.2, s  # within half a decade of BTC's
        assert 0.6 / 3.2 <= lot_value <= 0.6 * 3.2, s
        assert x.min_qty == x.lot_step and x.min_notional == 5.0
        assert x.max_qty * price == pytest.approx(9000 * 60_000, rel=2.5)


@pytest.mark.parametrize("sym", ["ETHUSDT", "DOGEUSDT"])
def test_a_cheap_symbols_book_trades_and_history_sit_on_its_own_grid(sym):
    sim = MarketSimulator(cfg(history_days=1), sym, START)
    sp = sim.spec
    assert sim.mid == sp.start_price and sim.history()["close"][-1] == pytest.approx(sp.start_price, rel=1e-12)
    counts = _replay_client_book(sim, 10)  # chained diffs, uncrossed book, trades at the touch
    assert counts["trade"] > 20
    h = sim.history()
    assert all(is_step_multiple(float(p), sp.tick_size) for p in h["close"][-500:])
    assert all(is_step_multiple(float(q), sp.lot_step) for q in h["volume"][-500:])
    for side in (sim.bids, sim.asks):  # integer ticks/lots internally: the served values are on the grid
        assert all(isinstance(p, int) and isinstance(q, int) for p, q in side.items())


def test_same_seed_same_universe_and_a_symbol_does_not_depend_on_its_neighbours():
    c = cfg(history_days=2)
    a = log_returns(c, ("BTCUSDT", "ETHUSDT"))
    b = log_returns(c, ("ETHUSDT", "BTCUSDT", "SOLUSDT"))  # other order, one more symbol
    assert all(np.array_equal(a[s], b[s]) for s in a)
    other = log_returns(dataclasses.replace(c, seed=8), ("BTCUSDT", "ETHUSDT"))
    assert not any(np.array_equal(a[s], other[s]) for s in a)
    x, y = MarketSimulator(c, "SOLUSDT", START), MarketSimulator(c, "SOLUSDT", START)
    assert x.advance(START + 3 * SEC) == y.advance(START + 3 * SEC)


@pytest.mark.parametrize("bad", [["ETH=abc"], ["ETHUSDT"], ["ETHUSDT=0"], ["ETHUSDT=3000:1:1.5"],
                                 ["ETHUSDT=3000", "ETHUSDT=3100"], ["ethusdt=3000"], ["ETHUSDT=1:2:0.5:9"]])
def test_bad_universe_entries_are_refused_at_load(bad):
    with pytest.raises(ConfigError, match="universe"):
        config_from_dict({"simulator": {"universe": bad}})
