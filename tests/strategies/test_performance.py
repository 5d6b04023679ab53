"""Performance metrics against hand computations on a known sequence of trades."""
from __future__ import annotations

import math
import statistics

import pytest

from strategies.performance import NS_PER_DAY, ClosedTrade, PerformanceTracker

DAY0 = 20_000 * NS_PER_DAY  # a UTC midnight


def trade(pnl, tf="1h", exit_ns=DAY0 + 1, fees=0.0, direction=1):
    # entry 100, qty 1: exit = 100 + (pnl + fees) / direction gives gross - fees == pnl
    exit_price = 100.0 + direction * (pnl + fees)
    return ClosedTrade("BTCUSDT", tf, direction, 1.0, 100.0, exit_price, exit_ns - 10, exit_ns, fees)


def test_known_sequence():
    t = PerformanceTracker(1000.0)
    pnls = [100.0, -50.0, 200.0, -150.0, -100.0]
    for i, p in enumerate(pnls):
        assert t.update_performance(trade(p, exit_ns=DAY0 + i, fees=1.0 if i == 0 else 0.0))
    m = t.get_performance_metrics(DAY0 + 10)
    assert m.trades == 5 and m.wins == 2
    assert m.win_rate == pytest.approx(0.4)
    assert m.profit_factor == pytest.approx(300.0 / 300.0)
    assert m.realised_pnl == pytest.approx(0.0)
    # equity 1000 -> 1100 -> 1050 -> 1250 -> 1100 -> 1000: worst fall 250 from the 1250 peak (20 %)
    assert m.max_drawdown == pytest.approx(250.0)
    assert m.max_drawdown_pct == pytest.approx(0.2)
    rets = [100 / 1000, -50 / 1100, 200 / 1050, -150 / 1250, -100 / 1100]
    assert m.sharpe_per_trade == pytest.approx(statistics.mean(rets) / statistics.stdev(rets))
    assert m.daily_profit == pytest.approx(0.0)
    assert m.equity == pytest.approx(1000.0)


def test_net_pnl_includes_fees_and_shorts():
    tr = ClosedTrade("X", "5m", -1, 2.0, 100.0, 90.0, 0, 1, fees=3.0)
    assert tr.gross == pytest.approx(20.0) and tr.pnl == pytest.approx(17.0)


def test_daily_profit_by_utc_day_and_unrealised():
    t = PerformanceTracker(10_000.0)
    t.update_performance(trade(50.0, exit_ns=DAY0 - 1))  # previous UTC day
    t.update_performance(trade(-20.0, exit_ns=DAY0))
    t.update_performance(trade(70.0, exit_ns=DAY0 + NS_PER_DAY - 1))
    t.set_unrealised("BTCUSDT", 12.5)
    m = t.get_performance_metrics(DAY0 + 5)
    assert m.daily_profit == pytest.approx(50.0)
    assert t.daily_profit(DAY0 - 5) == 0.0  # only the current day is kept (constant memory over months)
    assert m.unrealised_pnl == 12.5 and m.equity == pytest.approx(10_000 + 100 + 12.5)
    t.set_unrealised("BTCUSDT", 0.0)
    assert t.get_performance_metrics(DAY0).unrealised_pnl == 0.0


def test_per_timeframe_and_hit_rate_window():
    t = PerformanceTracker(1000.0, hit_rate_window=4)
    t.update_performance(trade(10.0, tf="1m"))
    t.update_performance(trade(-5.0, tf="1m"))
    t.update_performance(trade(8.0, tf="1h"))
    for ok in [False, False, True, True, True, False]:  # window keeps the last 4: T, T, T, F
        t.record_prediction("1m", ok)
    s = t.timeframe_stats("1m")
    assert (s.trades, s.wins, s.pnl, s.profit_factor, s.pnl_per_trade) == (2, 1, 5.0, 2.0, 2.5)
    assert (s.predictions, s.hits, s.hit_rate) == (4, 3, 0.75)
    m = t.get_performance_metrics(DAY0)
    assert set(m.per_timeframe) == {"1m", "1h"}
    assert m.per_timeframe["1h"].profit_factor is None  # no losing trade: undefined


def test_running_hit_count_equals_the_window_sum():
    """The hit count is kept as a running sum (read at every bar close): it must equal the window's sum."""
    import random
    rng = random.Random(3)
    t = PerformanceTracker(1000.0, hit_rate_window=7)
    calls = []
    for _ in range(500):
        ok = rng.random() < 0.6
        calls.append(ok)
        t.record_prediction("5m", ok)
        s = t.timeframe_stats("5m")
        assert (s.predictions, s.hits) == (len(calls[-7:]), sum(calls[-7:]))


def test_empty_and_bad_input():
    t = PerformanceTracker(1000.0)
    m = t.get_performance_metrics(0)
    assert (m.trades, m.win_rate, m.profit_factor, m.sharpe_per_trade, m.max_drawdown) == (0, None, None, None, 0.0)
    assert not t.update_performance(ClosedTrade("X", "1m", 1, 1.0, 100.0, math.nan, 0, 1))
    assert t.dropped == 1 and t.get_performance_metrics(0).trades == 0
    with pytest.raises(ValueError):
        PerformanceTracker(0.0)


def test_constant_memory_statistics_equal_the_full_history():
    """Trades beyond ``keep_trades`` are forgotten, yet count, Sharpe and P&L are those of every trade."""
    import statistics
    t = PerformanceTracker(10_000.0, keep_trades=5)
    pnls = [13.0, -7.5, 2.25, 40.0, -18.0, 5.5, -1.0, 9.0, -3.25, 21.0, 0.5, -12.0]
    rets, eq = [], 10_000.0
    for i, p in enumerate(pnls):
        t.update_performance(trade(p, exit_ns=DAY0 + i))
        rets.append(p / eq)
        eq += p
    m = t.get_performance_metrics(DAY0 + 100)
    assert len(t.trades) == 5 and [x.pnl for x in t.trades] == pnls[-5:]
    assert m.trades == len(pnls) and m.realised_pnl == pytest.approx(sum(pnls))
    assert m.sharpe_per_trade == pytest.approx(statistics.mean(rets) / statistics.stdev(rets), rel=1e-9)
    assert m.daily_profit == pytest.approx(sum(pnls))
