"""BarBuilder: event-time bars, checked against an independent reference model and on real recorded trades."""
from __future__ import annotations

import math
from collections import defaultdict

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from market.bars import BarBuilder
from daemon.config import BarsConfig
from market.events import Bar, Trade, timeframe_ns

M = 60_000_000_000
T0 = 1_723_161_000 * 1_000_000_000 + 123_456_789  # not aligned on purpose
TFS = ("1m", "5m", "15m", "1h")


def trade(ts, price=100.0, qty=1.0, buyer_maker=False, sym="BTCUSDT", tid=0):
    return Trade(sym, tid, price, qty, buyer_maker, ts, ts)


def run(builder, events):
    """Feed ('t', Trade) / ('c', ts) events; return the closed bars by timeframe."""
    out = defaultdict(list)
    for kind, x in events:
        bars = builder.on_trade(x) if kind == "t" else builder.on_time(x)
        for b in bars:
            out[b.timeframe].append(b)
    return out


def aggregate(bars_1m, tf):
    """Aggregate 1m bars into ``tf`` periods: the rule higher timeframes must follow exactly."""
    tf_ns = timeframe_ns(tf)
    groups: dict[int, list[Bar]] = {}
    for b in bars_1m:
        groups.setdefault(b.open_ns - b.open_ns % tf_ns, []).append(b)
    res = []
    for start, bs in groups.items():
        v = qv = tb = 0.0
        n = 0
        for b in bs:
            v += b.volume
            qv += b.quote_volume
            tb += b.taker_buy_volume
            n += b.trades
        res.append(Bar(bs[0].symbol, tf, start, bs[0].open, max(b.high for b in bs), min(b.low for b in bs),
                       bs[-1].close, v, qv, n, tb))
    return res


def reference_1m(events, emit_empty):
    """Independent model of the rules: late = older than the open minute (grace 0); bars = trades per minute."""
    hwm = None
    minutes: dict[int, list[Trade]] = {}
    accepted = []
    for kind, x in events:
        if kind == "c":
            if hwm is not None:
                hwm = max(hwm, x)
            continue
        if not (0 < x.price < math.inf and 0 <= x.qty < math.inf):
            continue
        if hwm is not None and x.ts_event < hwm - hwm % M:
            continue  # late
        hwm = x.ts_event if hwm is None else max(hwm, x.ts_event)
        accepted.append(x)
        minutes.setdefault(x.ts_event - x.ts_event % M, []).append(x)
    if hwm is None:
        return [], accepted, None
    open_minute = hwm - hwm % M
    bars = []
    last_close = None
    starts = sorted(minutes)
    grid = range(starts[0], open_minute, M) if emit_empty else [s for s in starts if s < open_minute]
    for s in grid:
        ts_ = minutes.get(s)
        if ts_:
            v = qv = tb = 0.0
            for t in ts_:
                v += t.qty
                qv += t.price * t.qty
                if not t.is_buyer_maker:
                    tb += t.qty
            p = [t.price for t in ts_]
            bars.append(Bar("BTCUSDT", "1m", s, p[0], max(p), min(p), p[-1], v, qv, len(ts_), tb))
            last_close = p[-1]
        else:
            bars.append(Bar("BTCUSDT", "1m", s, last_close, last_close, last_close, last_close, 0.0, 0.0, 0, 0.0))
    return bars, accepted, open_minute


# ------------------------------------------------------------------------------------------------ Hypothesis
_step = st.one_of(st.integers(0, 3_000), st.integers(0, 200_000), st.integers(0, 5_400_000),
                  st.integers(-90_000, 0))  # ms; negative = out-of-order / late
_price = st.one_of(st.floats(90.0, 110.0), st.sampled_from([float("nan"), 0.0, -1.0, float("inf")]))
_qty = st.one_of(st.floats(0.0, 5.0), st.sampled_from([float("nan"), -0.5]))
_event = st.tuples(st.sampled_from("tttttttc"), _step, _price, _qty, st.booleans())


def build_events(raw):
    events, ts = [], T0
    for i, (kind, step_ms, price, qty, bm) in enumerate(raw):
        ts += step_ms * 1_000_000
        if kind == "c":
            events.append(("c", ts))
        else:
            events.append(("t", trade(ts, price, qty, bm, tid=i)))
    return events


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_event, min_size=1, max_size=120), st.booleans())
def test_bars_match_reference_model_and_aggregate_exactly(raw, emit_empty):
    events = build_events(raw)
    b = BarBuilder("BTCUSDT", TFS, BarsConfig(emit_empty=emit_empty))
    got = run(b, events)
    ref, accepted, open_minute = reference_1m(events, emit_empty)

    # 1m bars are exactly the reference (which also says which trades are late or bad).
    assert got["1m"] == ref
    assert b.stats.accepted == len(accepted)
    n_bad = sum(1 for k, x in events if k == "t" and not (0 < x.price < math.inf and 0 <= x.qty < math.inf))
    assert b.stats.bad_dropped == n_bad
    assert b.stats.late_dropped == sum(1 for k, _ in events if k == "t") - n_bad - len(accepted)

    # Volume conserved: closed bars + the open bar hold every accepted trade's quantity.
    cur = b.current("1m")
    vol = sum(x.volume for x in got["1m"]) + (cur.volume if cur else 0.0)
    assert vol == pytest.approx(math.fsum(t.qty for t in accepted), rel=1e-12, abs=1e-12)
    assert sum(x.trades for x in got["1m"]) + (cur.trades if cur else 0) == len(accepted)

    for tf in TFS:
        for x in got[tf]:
            assert x.high >= max(x.open, x.close) and x.low <= min(x.open, x.close)
            assert x.open_ns % timeframe_ns(tf) == 0
            assert 0.0 <= x.taker_buy_volume <= x.volume
        starts = [x.open_ns for x in got[tf]]
        assert starts == sorted(set(starts))  # strictly increasing: never reopened, never duplicated
        if emit_empty and starts:  # contiguous once started
            assert starts == list(range(starts[0], starts[-1] + 1, timeframe_ns(tf)))
        if tf != "1m":
            # Higher timeframe == aggregate of its 1m bars, number for number (closed periods only).
            closed = {x.open_ns for x in got[tf]}
            agg = [a for a in aggregate(got["1m"], tf) if a.open_ns in closed]
            assert got[tf] == agg
            # every period whose end passed is closed
            if open_minute is not None and got["1m"]:
                tf_ns = timeframe_ns(tf)
                ended = {a.open_ns for a in aggregate(got["1m"], tf) if a.open_ns + tf_ns <= open_minute}
                assert ended <= closed

    # current() of a higher timeframe == aggregate of its closed 1m bars plus the open 1m bar.
    if cur is not None:
        for tf in TFS[1:]:
            tf_ns = timeframe_ns(tf)
            start = cur.open_ns - cur.open_ns % tf_ns
            ones = [x for x in got["1m"] if x.open_ns >= start] + [cur]
            assert b.current(tf) == aggregate(ones, tf)[0]


@settings(max_examples=60, deadline=None)
@given(st.lists(_event, min_size=1, max_size=80))
def test_late_trades_never_change_anything(raw):
    """Feeding a late trade at any point changes no emitted bar, no open bar, only the late counter."""
    events = build_events(raw)
    b1 = BarBuilder("BTCUSDT", TFS)
    b2 = BarBuilder("BTCUSDT", TFS)
    out1, out2 = [], []
    for kind, x in events:
        out1 += b1.on_trade(x) if kind == "t" else b1.on_time(x)
        out2 += b2.on_trade(x) if kind == "t" else b2.on_time(x)
        m = b2.current("1m")
        if m is not None:
            before = [b2.current(tf) for tf in TFS]
            late = trade(m.open_ns - 1, price=1e9, qty=1e9)
            assert b2.on_trade(late) == []
            assert [b2.current(tf) for tf in TFS] == before
    assert out1 == out2
    assert b2.stats.late_dropped >= b1.stats.late_dropped


def test_higher_timeframes_without_1m_equal_the_aggregate():
    events = build_events([("t", 7_000 * i % 50_000 + 1, 100.0 + (i * 37 % 11), 0.1 * (i % 7), i % 3 == 0)
                           for i in range(400)])
    full = run(BarBuilder("BTCUSDT", TFS), events)
    only = run(BarBuilder("BTCUSDT", ("1h", "5m")), events)
    assert "1m" not in only
    assert only["5m"] == full["5m"] and only["1h"] == full["1h"]
    assert len(full["5m"]) > 10


# ------------------------------------------------------------------------------------------------ unit rules
def test_period_boundaries_and_on_time_quiet_periods():
    base = 1_700_000_000 * 1_000_000_000 // (3600 * 10**9) * 3600 * 10**9  # an hour boundary
    b = BarBuilder("BTCUSDT", ("1m", "5m"))
    assert b.on_time(base + 10 * M) == []  # nothing before the first trade
    assert b.current("1m") is None
    assert b.on_trade(trade(base + 5, 100.0, 1.0)) == []
    assert b.on_trade(trade(base + M - 1, 101.0, 2.0, buyer_maker=True)) == []
    # a trade exactly at the end closes the bar
    out = b.on_trade(trade(base + M, 99.0, 1.0))
    assert out == [Bar("BTCUSDT", "1m", base, 100.0, 101.0, 100.0, 101.0, 3.0, 100.0 + 202.0, 2, 1.0)]
    assert b.on_time(base + 2 * M - 1) == []  # period not ended yet
    out = b.on_time(base + 5 * M)  # quiet: closes minute 1 and flat minutes 2..4, then the 5m bar
    assert [(x.timeframe, x.open_ns) for x in out] == [("1m", base + i * M) for i in range(1, 5)] + [("5m", base)]
    flat = out[1]
    assert (flat.open, flat.high, flat.low, flat.close, flat.volume, flat.trades) == (99.0, 99.0, 99.0, 99.0, 0, 0)
    five = out[-1]
    assert (five.open, five.high, five.low, five.close, five.volume, five.trades) == (100.0, 101.0, 99.0, 99.0,
                                                                                      4.0, 3)
    assert b.stats.empty_bars == 3
    # the open bar after on_time is flat at the last close until a trade comes; the first trade sets the open
    assert b.current("1m").close == 99.0 and b.current("1m").volume == 0.0
    b.on_trade(trade(base + 5 * M + 1, 105.0, 1.0))
    assert b.current("1m").open == 105.0 and b.current("5m").open == 105.0


def test_emit_empty_false_skips_quiet_minutes():
    b = BarBuilder("BTCUSDT", ("1m", "5m"), BarsConfig(emit_empty=False))
    base = 100 * 5 * M
    b.on_trade(trade(base + 1, 100.0))
    out = b.on_trade(trade(base + 12 * M, 101.0))  # jumps over minutes 1..11: 1m + the 5m bar, nothing flat
    assert [(x.timeframe, x.open_ns) for x in out] == [("1m", base), ("5m", base)]
    assert b.on_time(base + 30 * M) == [Bar("BTCUSDT", "1m", base + 12 * M, 101.0, 101.0, 101.0, 101.0, 1.0, 101.0,
                                            1, 1.0),
                                        Bar("BTCUSDT", "5m", base + 10 * M, 101.0, 101.0, 101.0, 101.0, 1.0, 101.0,
                                            1, 1.0)]


def test_late_grace_folds_into_open_bar_and_beyond_it_drops():
    b = BarBuilder("BTCUSDT", ("1m",), BarsConfig(late_grace_ms=500))
    base = 1000 * M
    b.on_trade(trade(base + 10, 100.0, 1.0))
    b.on_trade(trade(base + M + 10, 100.0, 1.0))  # closes minute 0
    b.on_trade(trade(base + M - 400_000_000, 120.0, 2.0))  # 0.4 s late: folded into minute 1
    assert b.stats.late_folded == 1 and b.stats.late_dropped == 0
    assert b.current("1m").volume == 3.0 and b.current("1m").high == 120.0
    b.on_trade(trade(base + M - 600_000_000, 130.0, 5.0))  # 0.6 s late: dropped
    assert b.stats.late_dropped == 1 and b.current("1m").volume == 3.0
    # grace 0 (default): any trade before the open bar is dropped; one inside it, out of order, is on time
    b0 = BarBuilder("BTCUSDT", ("1m",))
    b0.on_trade(trade(base + M + 500, 100.0))
    b0.on_trade(trade(base + M + 100, 99.0))
    b0.on_trade(trade(base + M - 1, 98.0))
    assert (b0.stats.accepted, b0.stats.late_dropped, b0.current("1m").low) == (2, 1, 99.0)


@pytest.mark.parametrize("price, qty, reason", [
    (float("nan"), 1.0, "price"), (0.0, 1.0, "price"), (-5.0, 1.0, "price"), (float("inf"), 1.0, "price"),
    (100.0, float("nan"), "qty"), (100.0, -1.0, "qty"), (100.0, float("inf"), "qty"),
])
def test_bad_trades_are_dropped_and_counted(price, qty, reason):
    b = BarBuilder("BTCUSDT", ("1m",))
    b.on_trade(trade(10 * M, 100.0, 1.0))
    before = b.current("1m")
    assert b.on_trade(trade(10 * M + 5, price, qty)) == []
    assert b.on_trade(trade(99 * M, price, qty)) == []  # a bad trade cannot close bars either
    assert b.current("1m") == before
    assert b.stats.bad_dropped == 2 and b.stats.bad_by_reason == {reason: 2}


def test_other_symbol_dropped_and_unknown_timeframes_refused():
    b = BarBuilder("BTCUSDT", ("1m",))
    b.on_trade(trade(10 * M, sym="ETHUSDT"))
    assert b.stats.bad_by_reason == {"symbol": 1} and b.current("1m") is None
    with pytest.raises(ValueError, match="unknown timeframe"):
        BarBuilder("BTCUSDT", ("7m",))
    with pytest.raises(ValueError):
        BarBuilder("BTCUSDT", ())
    with pytest.raises(KeyError):
        b.current("5m")


def test_absurd_time_jump_restarts_instead_of_filling_forever():
    b = BarBuilder("BTCUSDT", ("1m", "1h"), BarsConfig(max_fill_bars=100))
    b.on_trade(trade(60 * 60 * M + 1, 100.0))
    out = b.on_trade(trade(60 * 60 * M + 10**9 * M, 101.0))  # ~1900 years later
    assert [x.timeframe for x in out] == ["1m", "1h"]
    assert b.stats.gap_resets == 1 and b.stats.empty_bars == 0
    assert b.current("1m").close == 101.0


def test_closed_bars_sorted_by_end_for_non_nested_timeframes():
    b = BarBuilder("BTCUSDT", ("3m", "5m"), BarsConfig(emit_empty=False))
    b.on_trade(trade(4 * M + 1, 100.0))  # minute 4: 3m period [3,6), 5m period [0,5)
    out = b.on_trade(trade(20 * M, 101.0))
    ends = [x.open_ns + timeframe_ns(x.timeframe) for x in out]
    assert ends == sorted(ends) and [x.timeframe for x in out] == ["5m", "3m"]


# ------------------------------------------------------------------------------------------------ real data
def test_real_recorded_trades(recorded_trades):
    trades = recorded_trades
    assert len(trades) == 19_904
    assert [t.trade_id for t in trades] == list(range(trades[0].trade_id, trades[0].trade_id + len(trades)))
    b = BarBuilder("BTCUSDT", TFS)
    events = [("t", t) for t in trades]
    got = run(b, events)
    ref, accepted, _ = reference_1m(events, True)
    assert b.stats.accepted == len(trades) and b.stats.late_dropped == b.stats.bad_dropped == 0
    assert got["1m"] == ref and len(ref) >= 9  # 23:54 .. 00:05 UTC
    assert got["5m"] == aggregate(got["1m"], "5m")[: len(got["5m"])] and len(got["5m"]) >= 1
    # the midnight 1h/15m/5m boundary (2024-08-09 00:00 UTC) closed the 23:xx bars
    midnight = 1_723_161_600 * 10**9
    assert [x.open_ns + timeframe_ns(x.timeframe) for x in got["1h"]] == [midnight]
    # the closed bars + the open one hold every trade's quantity
    vol = math.fsum(x.volume for x in got["1m"]) + b.current("1m").volume
    assert vol == pytest.approx(math.fsum(t.qty for t in trades), rel=1e-12)
    tb = math.fsum(t.qty for t in trades if not t.is_buyer_maker)
    assert math.fsum(x.taker_buy_volume for x in got["1m"]) + b.current("1m").taker_buy_volume == \
        pytest.approx(tb, rel=1e-12)
