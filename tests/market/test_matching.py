"""Paper matching core on plain levels: book walks, partial fills, resting limits, latency, stops, ids."""
from __future__ import annotations

import math

import pytest

from market.events import OrderIntent, OrderStatus, OrderType, Side, Trade
from market.matching import MatchingEngine, OrderError, walk_levels

BIDS = [(99.0, 1.0), (98.0, 2.0), (97.0, 5.0)]
ASKS = [(101.0, 1.0), (102.0, 2.0), (103.0, 5.0)]
LV = (BIDS, ASKS)


def eng(**kw) -> MatchingEngine:
    return MatchingEngine(**({"taker_fee": 0.001, "maker_fee": 0.0005, "symbols": ["BTCUSDT"]} | kw))


def mkt(coid, side, qty, sym="BTCUSDT"):
    return OrderIntent(coid, sym, side, qty)


def lim(coid, side, qty, px):
    return OrderIntent(coid, "BTCUSDT", side, qty, OrderType.LIMIT, px)


def trade(px, qty, ts, tid=1):
    return Trade("BTCUSDT", tid, px, qty, True, ts, ts)


def test_market_buy_walks_levels_with_fees_and_ids():
    e = eng()
    o, fills, new = e.submit(mkt("a1", Side.BUY, 2.5), LV, ts=10)
    assert new and o.status == OrderStatus.FILLED
    assert [(f.price, f.qty) for f in fills] == [(101.0, 1.0), (102.0, 1.5)]
    assert [f.fill_id for f in fills] == ["a1-1", "a1-2"]
    assert o.avg_fill_price == pytest.approx((101 + 153) / 2.5)
    assert all(f.fee == pytest.approx(f.price * f.qty * 0.001) and f.liquidity == "taker" for f in fills)
    assert all(f.ts == 10 for f in fills)


def test_market_sell_beyond_depth_is_partial_then_canceled():
    e = eng()
    o, fills, _ = e.submit(mkt("s1", Side.SELL, 10.0), LV, ts=1)
    assert sum(f.qty for f in fills) == 8.0
    assert o.status == OrderStatus.CANCELED and o.filled_qty == 8.0 and not o.is_open
    assert [f.price for f in fills] == [99.0, 98.0, 97.0]


def test_empty_side_cancels_market_without_fills():
    o, fills, _ = eng().submit(mkt("x", Side.BUY, 1.0), (BIDS, []), ts=1)
    assert fills == [] and o.status == OrderStatus.CANCELED


def test_idempotent_client_order_id():
    e = eng()
    o1, f1, new1 = e.submit(mkt("dup", Side.BUY, 1.0), LV, ts=1)
    o2, f2, new2 = e.submit(mkt("dup", Side.BUY, 5.0), LV, ts=2)  # retry (even with other fields)
    assert new1 and not new2 and f2 == [] and o2 == o1


@pytest.mark.parametrize("intent, reason", [
    (OrderIntent("b1", "BTCUSDT", Side.BUY, math.nan), "bad_qty"),
    (OrderIntent("b1", "BTCUSDT", Side.BUY, 0.0), "bad_qty"),
    (OrderIntent("b1", "BTCUSDT", Side.BUY, -1.0), "bad_qty"),
    (OrderIntent("b1", "BTCUSDT", Side.BUY, math.inf), "bad_qty"),
    (OrderIntent("b1", "BTCUSDT", Side.BUY, 1.0, OrderType.LIMIT, math.nan), "bad_price"),
    (OrderIntent("b1", "BTCUSDT", Side.BUY, 1.0, OrderType.LIMIT, -5.0), "bad_price"),
    (OrderIntent("b1", "BTCUSDT", Side.BUY, 1.0, OrderType.LIMIT, 0.0), "bad_price"),
    (OrderIntent("b1", "BTCUSDT", Side.BUY, 1.0, OrderType.LIMIT, None), "bad_price"),
    (OrderIntent("b1", "BTCUSDT", Side.BUY, 1.0, OrderType.MARKET, 100.0), "bad_price"),
    (OrderIntent("b1", "DOGEUSDT", Side.BUY, 1.0), "unknown_symbol"),
    (OrderIntent("", "BTCUSDT", Side.BUY, 1.0), "bad_client_order_id"),
    (OrderIntent("has space", "BTCUSDT", Side.BUY, 1.0), "bad_client_order_id"),
])
def test_bad_orders_refused_and_not_remembered(intent, reason):
    e = eng()
    with pytest.raises(OrderError) as ei:
        e.submit(intent, LV, ts=1)
    assert ei.value.reason == reason and str(ei.value)
    assert e.get(intent.client_order_id) is None and not e.open


def test_symbol_filters():
    from types import SimpleNamespace
    f = SimpleNamespace(tick_size=0.01, lot_step=0.001, min_qty=0.001, max_qty=100.0, min_notional=5.0)
    e = eng(filters={"BTCUSDT": f})
    with pytest.raises(OrderError, match="LOT_SIZE"):
        e.submit(mkt("q", Side.BUY, 0.0015), LV, 1)
    with pytest.raises(OrderError, match="tick"):
        e.submit(lim("p", Side.BUY, 1.0, 100.005), LV, 1)
    with pytest.raises(OrderError, match="notional"):
        e.submit(mkt("n", Side.BUY, 0.002), LV, 1)
    assert e.submit(mkt("ok", Side.BUY, 0.1), LV, 1)[0].status == OrderStatus.FILLED


def test_marketable_limit_takes_then_rests():
    e = eng()
    o, fills, _ = e.submit(lim("L", Side.BUY, 4.0, 102.0), LV, ts=1)
    assert [(f.price, f.qty, f.liquidity) for f in fills] == [(101.0, 1.0, "taker"), (102.0, 2.0, "taker")]
    assert o.status == OrderStatus.PARTIALLY_FILLED and o.remaining == pytest.approx(1.0)
    assert "L" in e.open


def test_resting_limit_fills_on_trades_partially_by_trade_size():
    e = eng()
    o, fills, _ = e.submit(lim("r", Side.BUY, 1.0, 100.0), LV, ts=1)
    assert fills == [] and o.status == OrderStatus.NEW
    assert e.on_trade(trade(100.5, 5.0, 2)) == []          # above our bid: nothing
    [(o, fills)] = e.on_trade(trade(100.0, 0.3, 3))          # at the price: front-of-queue assumption
    assert fills[0].price == 100.0 and fills[0].qty == pytest.approx(0.3) and fills[0].liquidity == "maker"
    assert fills[0].fee == pytest.approx(100.0 * 0.3 * 0.0005) and fills[0].fill_id == "r-1"
    assert o.status == OrderStatus.PARTIALLY_FILLED
    [(o, fills)] = e.on_trade(trade(99.5, 2.0, 4))           # through the price: the rest, at our limit
    assert fills[0].price == 100.0 and fills[0].qty == pytest.approx(0.7) and o.status == OrderStatus.FILLED
    assert not e.open and e.on_trade(trade(90.0, 1.0, 5)) == []


def test_back_of_queue_needs_trade_through():
    e = eng(fill_at_touch=False)
    e.submit(lim("r", Side.SELL, 1.0, 101.5), LV, ts=1)
    assert e.on_trade(trade(101.5, 3.0, 2)) == []
    [(o, fills)] = e.on_trade(trade(101.6, 3.0, 3))
    assert o.status == OrderStatus.FILLED and fills[0].price == 101.5


def test_one_trade_shared_in_price_time_priority():
    e = eng()
    e.submit(lim("b1", Side.BUY, 1.0, 100.0), LV, ts=1)
    e.submit(lim("b2", Side.BUY, 1.0, 100.5), LV, ts=2)   # better price, later
    e.submit(lim("b3", Side.BUY, 1.0, 100.0), LV, ts=3)
    res = e.on_trade(trade(99.0, 1.5, 4))
    assert [(o.client_order_id, sum(f.qty for f in fs)) for o, fs in res] == [("b2", 1.0), ("b1", 0.5)]
    assert e.open["b3"].filled_qty == 0.0


def test_book_crossing_fills_resting_limit():
    e = eng()
    e.submit(lim("c", Side.SELL, 2.0, 100.0), LV, ts=1)
    res = e.on_book("BTCUSDT", ([(100.5, 0.5), (100.0, 1.0), (99.0, 9.0)], [(101.0, 1.0)]), ts=2)
    [(o, fills)] = res
    assert fills[0].price == 100.0 and fills[0].qty == pytest.approx(1.5) and fills[0].liquidity == "maker"
    assert o.status == OrderStatus.PARTIALLY_FILLED


def test_latency_delays_activation():
    e = eng(latency_ns=50)
    o, fills, _ = e.submit(mkt("m", Side.BUY, 1.5), LV, ts=100)
    assert fills == [] and o.status == OrderStatus.NEW and o.active_at == 150
    assert e.on_book("BTCUSDT", LV, ts=149) == []
    moved = ([(100.0, 1.0)], [(105.0, 1.0), (106.0, 1.0)])
    [(o, fills)] = e.on_book("BTCUSDT", moved, ts=150)  # executes on the book at its arrival time
    assert [(f.price, f.qty) for f in fills] == [(105.0, 1.0), (106.0, 0.5)] and o.status == OrderStatus.FILLED
    e.submit(lim("l", Side.BUY, 1.0, 100.0), LV, ts=200)
    assert e.on_trade(trade(99.0, 1.0, 240)) == []       # before it is live: trades do not fill it
    assert e.on_trade(trade(99.0, 1.0, 260), LV)[-1][0].status == OrderStatus.FILLED


def test_cancel_is_idempotent_and_unknown_is_an_error():
    e = eng()
    e.submit(lim("c", Side.BUY, 1.0, 90.0), LV, ts=1)
    assert e.cancel("c", 2).status == OrderStatus.CANCELED
    assert e.cancel("c", 3).status == OrderStatus.CANCELED and not e.open
    assert e.on_trade(trade(80.0, 5.0, 4)) == []
    with pytest.raises(OrderError, match="no order"):
        e.cancel("nope", 5)


def test_stops_trigger_on_trade_prices():
    e = eng()
    e.set_stops("BTCUSDT", 95.0, 110.0, "pos7")
    assert e.stop_intent(trade(96.0, 1, 1), 2.0) is None
    it = e.stop_intent(trade(95.0, 1, 2), 2.0)
    assert it.client_order_id == "pos7-sl" and it.side == Side.SELL and it.qty == 2.0 and it.reduce_only
    it = e.stop_intent(trade(111.0, 1, 3), 2.0)
    assert it.client_order_id == "pos7-tp" and it.reason == "take_profit"
    # short: the stop is above, the target below
    e.set_stops("BTCUSDT", 105.0, 90.0, "s")
    assert e.stop_intent(trade(105.0, 1, 5), -1.0).side == Side.BUY
    assert e.stop_intent(trade(89.0, 1, 5), -1.0).client_order_id == "s-tp"
    assert e.stop_intent(trade(50.0, 1, 6), 0.0) is None
    with pytest.raises(OrderError):
        e.set_stops("BTCUSDT", math.nan, None, "t")


def test_walk_levels_respects_limit():
    assert walk_levels(ASKS, 10.0, Side.BUY, limit=102.0) == [(101.0, 1.0), (102.0, 2.0)]
    assert walk_levels(BIDS, 0.5, Side.SELL) == [(99.0, 0.5)]
