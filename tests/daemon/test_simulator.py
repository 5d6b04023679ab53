"""The market simulator is pure and seeded: same seed, same market; its diffs chain, its book never crosses, its
trades print at the best prices of the book the clients hold, and its klines history is contiguous and flows
into the live bars."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from daemon.config import SimulatorConfig
from daemon.venue.simulator import MINUTE_MS, MarketSimulator

from tests.daemon.simbook import SEC, START, replay_client_book as _replay_client_book


def _sim(**kw) -> MarketSimulator:
    cfg = dataclasses.replace(SimulatorConfig(), **{"history_days": 2, **kw})
    return MarketSimulator(cfg, "BTCUSDT", START)


def test_same_seed_same_market_other_seed_other_market():
    a, b, c = _sim(), _sim(), _sim(seed=8)
    ea, eb, ec = (s.advance(START + 5 * SEC) for s in (a, b, c))
    assert ea == eb and len(ea) > 50
    assert ea != ec
    assert a.klines("1m", None, None, 1000) == b.klines("1m", None, None, 1000)
    assert a.klines("1m", None, None, 1000) != c.klines("1m", None, None, 1000)


def test_invariants_over_a_minute_of_live_market():
    counts = _replay_client_book(_sim(), 60)
    assert counts["depth"] == counts["bookTicker"] > 500  # one diff per 100 ms (unless nothing changed)
    assert counts["trade"] > 200  # ~8/s


@settings(max_examples=12, deadline=None)
@given(seed=st.integers(0, 2**31), levels=st.integers(5, 80), rate=st.floats(1.0, 60.0),
       vol=st.floats(0.05, 5.0))
def test_invariants_hold_for_any_seed_and_parameters(seed, levels, rate, vol):
    sim = _sim(seed=seed, depth_levels=levels, trades_per_s=rate, vol_low=vol, vol_high=vol * 2,
               regime_switch_per_hour=30.0)
    _replay_client_book(sim, 5)


def test_history_is_contiguous_and_flows_into_live_bars():
    sim = _sim(history_days=30)
    h = sim.history()
    n = 30 * 1440
    assert len(h["open_ms"]) == n
    assert np.all(np.diff(h["open_ms"]) == MINUTE_MS)
    assert h["open_ms"][-1] + MINUTE_MS == (START // 1_000_000) // MINUTE_MS * MINUTE_MS  # ends at live start
    assert np.all(h["open"][1:] == h["close"][:-1])
    assert h["close"][-1] == sim.cfg.start_price
    assert np.all(h["high"] >= np.maximum(h["open"], h["close"]))
    assert np.all(h["low"] <= np.minimum(h["open"], h["close"]))
    assert np.all(h["volume"] >= 0) and np.all(h["taker_buy_volume"] <= h["volume"] + 1e-12)
    sim.advance(START + 200 * SEC)  # 3+ live minutes
    rows = sim.klines("1m", None, None, 1000)
    t = [r[0] for r in rows]
    assert all(b - a == MINUTE_MS for a, b in zip(t, t[1:]))
    assert all(rows[i][1] == rows[i - 1][4] for i in range(1, len(rows)))  # open == previous close, seamless
    assert rows[-1][0] == ((START + 200 * SEC) // 1_000_000) // MINUTE_MS * MINUTE_MS  # the open bar is served
    live = [r for r in rows if r[0] >= h["open_ms"][-1] + MINUTE_MS]
    end_m = ((START + 200 * SEC) // 1_000_000) // MINUTE_MS * MINUTE_MS
    assert len(live) == (end_m - live[0][0]) // MINUTE_MS + 1 == 5  # 50 s + 200 s span five minutes
    assert all(r[8] > 0 for r in live)  # bars built from the live trades
    h5 = sim.klines("5m", None, None, 1000)
    assert all(b[0] - a[0] == 5 * MINUTE_MS for a, b in zip(h5, h5[1:]))
    assert all(r[0] % (5 * MINUTE_MS) == 0 for r in h5)


def test_klines_window_semantics():
    sim = _sim()
    allrows = sim.klines("1m", None, None, 1000)
    start = allrows[10][0]
    got = sim.klines("1m", start, None, 3)
    assert [r[0] for r in got] == [start, start + MINUTE_MS, start + 2 * MINUTE_MS]  # first `limit` from start
    got = sim.klines("1m", None, start, 2)
    assert [r[0] for r in got] == [start - MINUTE_MS, start]  # the last `limit` up to end
    got = sim.klines("1h", start, start + 3 * 3600_000, 1000)
    assert len(got) in (3, 4) and all(r[6] - r[0] == 3600_000 - 1 for r in got)


def _hourly_returns(sim: MarketSimulator) -> np.ndarray:
    h = sim.history()
    close = h["close"][59::60]  # the close of each hour (history starts on a minute, not necessarily the hour)
    return np.diff(np.log(close))


def _lag1(r: np.ndarray) -> float:
    return float(np.corrcoef(r[1:], r[:-1])[0, 1])


def test_trend_makes_hourly_returns_autocorrelated_and_its_absence_does_not():
    """The OU drift is what makes the market learnable: 1h returns persist with it, not without it."""
    for seed in (7, 11, 12345):
        on = _lag1(_hourly_returns(_sim(seed=seed, history_days=30)))
        off = _lag1(_hourly_returns(_sim(seed=seed, history_days=30, trend_per_hour=0.0)))
        assert on > 0.15, (seed, on)
        assert abs(off) < 0.12, (seed, off)  # ~720 hourly returns: the estimate's std is ~0.04


def test_no_trend_means_zero_drift_live_too():
    sim = _sim(trend_per_hour=0.0)
    assert sim.drift == 0.0
    sim.advance(START + 5 * SEC)
    assert sim.drift == 0.0


def test_live_market_continues_the_history_trend():
    """Live ticks come from the same process: the drift starts at the history's last value and keeps its sign
    over a minute (time constant hours), so with tiny noise the live price moves the way the trend points.
    Checked on every seed of 0..11 whose trend is established (|drift| >= half its stationary std; a drift near 0
    may flip sign within the hour by chance), at least 4 of them."""
    checked = 0
    for seed in range(12):
        sim = _sim(seed=seed, vol_low=0.001, vol_high=0.001, trend_per_hour=0.01, trend_hours=6.0)
        d0 = sim.drift
        assert d0 == sim._hist_last_drift != 0.0
        if abs(d0) < 0.5 * 0.01 / 3600:
            continue
        checked += 1
        h = sim.history()
        last_hour = np.log(h["close"][-1] / h["close"][-61])
        assert np.sign(last_hour) == np.sign(d0)  # the history's last hour already went the trend's way
        mid0 = sim.mid
        sim.advance(START + 60 * SEC)
        assert np.sign(sim.drift) == np.sign(d0) and 0.5 < sim.drift / d0 < 2.0
        move = np.log(sim.mid / mid0)
        assert np.sign(move) == np.sign(d0)
        assert abs(move - d0 * 60) < 0.5 * abs(d0 * 60) + 1e-6  # ~ the drift integrated over the minute
    assert checked >= 4


def _history_klines(cfg: SimulatorConfig):
    from engines.data import Klines
    h = MarketSimulator(cfg, "BTCUSDT", START).history()
    return Klines(h["open_ms"] * 1_000_000, h["open"], h["high"], h["low"], h["close"], h["volume"], "BTCUSDT", "1m")


def _first_run_auc(cfg: SimulatorConfig, tf: str, tmp_path) -> dict[str, float]:
    """Held-out AUC of the daemon's first-run training (same TrainSpec as daemon/app.py) on the history."""
    from daemon.config import BrokerConfig, EnginesConfig
    from engines.train import TrainSpec, train_timeframe
    e = EnginesConfig()
    spec = TrainSpec(tf, xgb_rounds=e.first_run_xgb_rounds, lstm_epochs=e.first_run_lstm_epochs,
                     lstm_hidden=e.first_run_lstm_hidden, threads=e.first_run_threads,
                     cost=2 * BrokerConfig().taker_fee + 0.0001)
    out = train_timeframe(_history_klines(cfg), spec, tmp_path / f"{tf}-{cfg.trend_per_hour}")
    return {k: out.metrics[k]["auc"] for k in ("xgboost", "lstm")}


@pytest.mark.slow
def test_first_run_models_learn_the_default_market(tmp_path):
    """On the default simulator history the first-run models beat chance on held-out data (5m: ~800 labelled
    test rows); on the same market without the trend they do not. Without this the daemon's fee-aware optimizer
    has no edge to trade on its own default. One seed's held-out AUC without the trend scatters widely (seeds 3,
    7, 13, 21: XGBoost 0.55, 0.49, 0.59, 0.43), so the no-trend control is the mean over those four markets."""
    on = _first_run_auc(SimulatorConfig(), "5m", tmp_path)
    offs = [_first_run_auc(dataclasses.replace(SimulatorConfig(), trend_per_hour=0.0, seed=seed), "5m",
                           tmp_path / f"off{seed}") for seed in (3, 7, 13, 21)]
    off = {k: sum(o[k] for o in offs) / len(offs) for k in on}
    print(f"5m held-out AUC trend on {on}, trend off (mean of 4 seeds) {off}")
    assert max(on.values()) > 0.57, on
    assert min(on.values()) > 0.53, on
    assert max(off.values()) < 0.56, offs


def test_simulator_source_runs_event_time_at_simulator_speed():
    """``simulator.speed`` event seconds per wall second: a 1h bar of the embedded default closes every 30 s.
    The market opens when it runs (after the daemon's training), and a starved loop slows it, never bursts."""
    import asyncio
    import time

    from daemon.venue.server import SimulatorSource
    assert SimulatorConfig().speed == 120.0  # the embedded default: every timeframe closes within minutes

    class Sink:  # the venue's side of SimulatorSource.run: collects what it publishes
        def __init__(self):
            self.ts: list[int] = []

        async def publish(self, frame) -> None:
            self.ts.append(frame.recv_ns)

    async def run_for(src, seconds: float, block_s: float = 0.0) -> tuple[Sink, int]:
        sink = Sink()
        task = asyncio.create_task(src.run(sink))
        await asyncio.sleep(0.05)
        time.sleep(block_s)  # the loop starved (e.g. a CPU-bound neighbour)
        w0 = time.monotonic_ns()
        await asyncio.sleep(seconds)
        task.cancel()
        return sink, time.monotonic_ns() - w0

    cfg = dataclasses.replace(SimulatorConfig(), history_days=1, speed=120.0)
    src = SimulatorSource(["BTCUSDT"], cfg, start_ns=START)
    time.sleep(0.05)
    assert src.now_ns() == START and src.server_time_ms() == START // 1_000_000  # not open yet
    sink, wall = asyncio.run(run_for(src, 0.5))
    event = src.now_ns() - START
    # at most speed x wall; on a CPU-starved machine less (the market slows down), but far beyond real time
    assert 0.5 * SEC * 10 <= event <= (wall + 0.2 * SEC) * 120, (event, wall)
    assert max(sink.ts) <= src.now_ns() and sink.ts == sorted(sink.ts)
    starved = SimulatorSource(["BTCUSDT"], cfg, start_ns=START)
    sink, _ = asyncio.run(run_for(starved, 0.05, block_s=1.0))
    gaps = np.diff([START, *sink.ts])
    assert gaps.max() <= starved.max_batch_ns  # no 120 s jump after a 1 s stall
    real = SimulatorSource(["BTCUSDT"], dataclasses.replace(cfg, speed=1.0), start_ns=START)
    asyncio.run(run_for(real, 0.3))
    assert 0.2 * SEC <= real.now_ns() - START < 5 * SEC


def test_daemon_bar_clock_runs_on_the_simulators_event_time():
    """The daemon's bar clock and control timestamps read the market's time (the simulator's, ahead of the wall
    clock at speed > 1), and its 2 s lateness allowance is 2 s of wall clock in event time."""
    import types

    from daemon.app import BAR_CLOCK_LAG_NS, bar_clock_lag_ns
    from daemon.config import Config, replace
    from daemon.kernel import VenueLink
    from daemon.venue.server import SimulatorSource
    cfg = Config()
    src = SimulatorSource(["BTCUSDT"], cfg.simulator, start_ns=START)
    link = VenueLink(types.SimpleNamespace(source=src), "", "")  # the local venue's market clock
    assert link.now_ns() == START
    assert bar_clock_lag_ns(cfg) == BAR_CLOCK_LAG_NS * 120
    assert bar_clock_lag_ns(replace(cfg, venue={"mode": "remote"})) == BAR_CLOCK_LAG_NS
    import time
    assert abs(VenueLink(None, "", "").now_ns() - time.time_ns()) < 5 * SEC  # remote: the wall clock
