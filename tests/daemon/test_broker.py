"""PaperBroker on the REAL recording (book rebuilt by market.book + daemon.binance.codec) and on plain levels."""
from __future__ import annotations

import math

import pytest

from daemon.config import BrokerConfig
from market.events import DepthSnapshot, DepthUpdate, OrderIntent, OrderStatus, OrderType, Side, Trade
from daemon.broker import BrokerHalted, PaperBroker
from market.matching import OrderError
from daemon.store import SQLiteStore, StoreError

CFG = BrokerConfig(starting_cash=1_000_000.0, taker_fee=0.001, maker_fee=0.0002)
LV = ([(99.0, 1.0), (98.0, 2.0)], [(101.0, 1.0), (102.0, 2.0)])


def make(tmp_path, cfg=CFG, name="s.sqlite"):
    return PaperBroker(cfg, SQLiteStore(tmp_path / name), symbols=("BTCUSDT",))


@pytest.fixture(scope="module")
def events(binance_recording):
    """Decoded trade/depth/snapshot events of the real recording, in receive order."""
    from daemon.binance.codec import decode_frame
    from daemon.recording import iter_recording
    out = []
    for ts, raw in iter_recording(binance_recording):
        if b"@bookTicker" in raw[:40]:
            continue
        ev = decode_frame(raw, ts)
        if isinstance(ev, (Trade, DepthUpdate, DepthSnapshot)):
            out.append(ev)
    return out


def replay(events, on_event=None):
    """Feed the book; call ``on_event(i, ev, book)`` after each event once the book is synced."""
    from market.book import OrderBook
    book = OrderBook("BTCUSDT")
    for i, ev in enumerate(events):
        if isinstance(ev, DepthSnapshot):
            book.on_snapshot(ev)
        elif isinstance(ev, DepthUpdate):
            book.on_update(ev)
        if on_event is not None and book.is_tradeable:
            if on_event(i, ev, book) is False:
                break
    return book


def independent_walk(levels, qty):
    """The expected fills of a market order, written out separately from market.matching."""
    fills, left = [], qty
    for price, size in levels:
        if left <= 1e-12:
            break
        take = size if size < left else left
        fills.append((price, take))
        left -= take
    return fills


def test_market_orders_on_recorded_book(tmp_path, events):
    broker = make(tmp_path)
    checked = []
    sizes = [0.001, 0.2, 1.5, 7.0, 40.0]

    n_updates = [0]

    def on_event(i, ev, book):
        if not isinstance(ev, DepthUpdate):
            return
        n_updates[0] += 1
        if n_updates[0] % 500:
            return
        k = len(checked)
        side = Side.BUY if k % 2 == 0 else Side.SELL
        qty = sizes[k % len(sizes)]
        bids, asks = book.depth(1000)
        expect = independent_walk(asks if side == Side.BUY else bids, qty)
        cash0, pos0 = broker.portfolio.cash, broker.portfolio.qty("BTCUSDT")
        ex = broker.submit(OrderIntent(f"m{i}", "BTCUSDT", side, qty), book, ts=ev.ts_recv)
        got = [(f.price, f.qty) for f in ex.fills]
        assert got == [(p, pytest.approx(q, rel=1e-12)) for p, q in expect]
        notional = sum(p * q for p, q in expect)
        filled = sum(q for _, q in expect)
        assert ex.order.avg_fill_price == pytest.approx(notional / filled, rel=1e-12)
        best = (asks if side == Side.BUY else bids)[0][0]
        slippage = (ex.order.avg_fill_price - best) * side
        assert slippage >= -1e-9 * best and (slippage > 1e-9 * best) == (len(expect) > 1)
        assert sum(f.fee for f in ex.fills) == pytest.approx(notional * CFG.taker_fee, rel=1e-12)
        assert ex.order.status == OrderStatus.FILLED and ex.order.filled_qty == pytest.approx(qty)
        assert broker.portfolio.cash == pytest.approx(cash0 - side * notional - notional * CFG.taker_fee)
        assert broker.portfolio.qty("BTCUSDT") == pytest.approx(pos0 + side * qty)
        checked.append((i, len(expect)))

    replay(events, on_event)
    assert len(checked) >= 10 and max(n for _, n in checked) > 1  # some orders walked several levels
    rec = broker.store.recover(0.0)
    assert rec.discrepancies == [] and rec.portfolio.positions == broker.portfolio.positions


def test_market_order_beyond_walkable_depth_is_partial(tmp_path, events):
    cfg = BrokerConfig(starting_cash=1e6, taker_fee=0.001, book_depth=5)
    broker = make(tmp_path, cfg)
    done = []

    def on_event(i, ev, book):
        if isinstance(ev, DepthUpdate) and i > 3000:
            bids, _ = book.depth(5)
            avail = sum(q for _, q in bids)
            ex = broker.submit(OrderIntent("big", "BTCUSDT", Side.SELL, avail + 10.0), book, ts=ev.ts_recv)
            assert ex.order.status == OrderStatus.CANCELED  # market = IOC: the rest is canceled
            assert ex.order.filled_qty == pytest.approx(avail) and len(ex.fills) == 5
            assert [f.price for f in ex.fills] == [p for p, _ in bids]
            assert broker.store.get_order("big").status == OrderStatus.CANCELED
            done.append(1)
            return False

    replay(events, on_event)
    assert done


def test_limit_order_rests_and_fills_on_recorded_trades(tmp_path, events):
    broker = make(tmp_path)
    state = {}

    def on_event(i, ev, book):
        if "submitted" not in state:
            if isinstance(ev, DepthUpdate) and i > 2000:
                bid = book.best_bid()[0]
                px = bid - 1.0  # below the touch: rests, fills only when trades reach it
                ex = broker.submit(OrderIntent("lim1", "BTCUSDT", Side.BUY, 0.5, OrderType.LIMIT, px), book,
                                   ts=ev.ts_recv)
                assert ex.fills == () and ex.order.status == OrderStatus.NEW
                state.update(submitted=i, px=px, left=0.5, expect=[])
            return
        if isinstance(ev, Trade):
            # the expectation, computed from the recorded prints alone
            if state["left"] > 1e-12 and ev.price <= state["px"]:
                q = min(state["left"], ev.qty)
                state["left"] -= q
                state["expect"].append((ev.trade_id, q))
            for ex in broker.on_trade(ev, book):
                state.setdefault("got", []).append((ev.trade_id, sum(f.qty for f in ex.fills), ex))
            if state["left"] <= 1e-12:
                return False

    replay(events, on_event)
    assert state["left"] <= 1e-12, "the recording never traded through the limit price"
    got = state["got"]
    assert [(t, pytest.approx(q)) for t, q, _ in got] == state["expect"]
    fills = [f for _, _, ex in got for f in ex.fills]
    assert all(f.price == state["px"] and f.liquidity == "maker" for f in fills)
    assert [f.fill_id for f in fills] == [f"lim1-{n}" for n in range(1, len(fills) + 1)]
    assert sum(f.fee for f in fills) == pytest.approx(0.5 * state["px"] * CFG.maker_fee)
    assert got[-1][2].order.status == OrderStatus.FILLED
    assert broker.portfolio.position("BTCUSDT").avg_price == pytest.approx(state["px"], rel=1e-12)


def test_stop_loss_exits_at_market_on_recorded_data(tmp_path, events):
    broker = make(tmp_path)
    st = {}

    def on_event(i, ev, book):
        if "entry" not in st:
            if isinstance(ev, DepthUpdate) and i > 1000:
                ex = broker.submit(OrderIntent("e1", "BTCUSDT", Side.BUY, 0.3), book, ts=ev.ts_recv)
                p = ex.order.avg_fill_price
                broker.set_stops("BTCUSDT", p - 10.0, p + 10.0, "e1")
                st.update(entry=p)
            return
        if isinstance(ev, Trade):
            bids = book.depth(1000)[0]
            res = broker.on_trade(ev, book)
            if res:
                st.update(trade=ev, res=res, bids=bids)
                return False

    replay(events, on_event)
    assert "res" in st, "no recorded trade moved 10 USDT from the entry"
    [ex] = st["res"]
    t = st["trade"]
    kind = "sl" if t.price <= st["entry"] - 10 else "tp"
    assert t.price <= st["entry"] - 10 or t.price >= st["entry"] + 10
    assert ex.order.client_order_id == f"e1-{kind}" and ex.order.side == Side.SELL
    assert [(f.price, f.qty) for f in ex.fills] == [(p, pytest.approx(q)) for p, q in independent_walk(st["bids"], 0.3)]
    assert broker.portfolio.qty("BTCUSDT") == 0.0 and "BTCUSDT" not in broker.engine.stops
    assert broker.store.recover(0.0).stops == []


# ------------------------------------------------------------------------------------ plain levels
def test_idempotent_client_order_ids_across_restart(tmp_path):
    b = make(tmp_path)
    e1 = b.submit(OrderIntent("same", "BTCUSDT", Side.BUY, 1.5), LV, ts=1)
    e2 = b.submit(OrderIntent("same", "BTCUSDT", Side.BUY, 1.5), LV, ts=2)
    assert e1.is_new and not e2.is_new and e2.fills == () and e2.order == e1.order
    b.store.close()
    b2 = make(tmp_path)  # a restart: the id is known from the store
    e3 = b2.submit(OrderIntent("same", "BTCUSDT", Side.BUY, 1.5), LV, ts=3)
    assert not e3.is_new and e3.order == e1.order
    assert len(b2.store.fills()) == 2 and b2.portfolio.qty("BTCUSDT") == 1.5
    assert b2.store._db.execute("SELECT COUNT(*) FROM orders").fetchone()[0] == 1


@pytest.mark.parametrize("intent", [
    OrderIntent("b", "BTCUSDT", Side.BUY, math.nan),
    OrderIntent("b", "BTCUSDT", Side.BUY, 0.0),
    OrderIntent("b", "BTCUSDT", Side.SELL, -2.0),
    OrderIntent("b", "BTCUSDT", Side.BUY, 1.0, OrderType.LIMIT, math.nan),
    OrderIntent("b", "BTCUSDT", Side.BUY, 1.0, OrderType.LIMIT, 0.0),
    OrderIntent("b", "BTCUSDT", Side.BUY, 1.0, OrderType.LIMIT, -100.0),
    OrderIntent("b", "ETHBTC", Side.BUY, 1.0),
])
def test_bad_orders_clear_error_nothing_written(tmp_path, intent):
    b = make(tmp_path)
    with pytest.raises(OrderError) as ei:
        b.submit(intent, LV, ts=1)
    assert "b" in str(ei.value) and ei.value.reason
    db = b.store._db
    assert db.execute("SELECT COUNT(*) FROM orders").fetchone()[0] == 0
    assert db.execute("SELECT COUNT(*) FROM fills").fetchone()[0] == 0
    assert b.portfolio.cash == CFG.starting_cash and b.stats["rejected"] == 1
    assert b.submit(OrderIntent("b", "BTCUSDT", Side.BUY, 1.0), LV, ts=2).is_new  # the id is still free


def test_unsynced_book_refuses_market_orders(tmp_path):
    class Stale:
        is_tradeable = False

        def depth(self, n):
            raise AssertionError("must not read a stale book")
    b = make(tmp_path)
    with pytest.raises(OrderError, match="not synced"):
        b.submit(OrderIntent("x", "BTCUSDT", Side.BUY, 1.0), Stale(), ts=1)


def test_reduce_only_is_capped_and_refused_when_flat(tmp_path):
    b = make(tmp_path)
    with pytest.raises(OrderError, match="reduce-only"):
        b.submit(OrderIntent("r0", "BTCUSDT", Side.SELL, 1.0, reduce_only=True), LV, ts=1)
    b.submit(OrderIntent("o", "BTCUSDT", Side.BUY, 0.5), LV, ts=1)
    ex = b.submit(OrderIntent("r1", "BTCUSDT", Side.SELL, 3.0, reduce_only=True), LV, ts=2)
    assert ex.order.qty == 0.5 and b.portfolio.qty("BTCUSDT") == 0.0


def test_fill_is_committed_before_it_is_reported(tmp_path):
    b = make(tmp_path)
    b.submit(OrderIntent("a", "BTCUSDT", Side.BUY, 1.0), LV, ts=1)
    before = b.portfolio.copy()

    def boom(*a, **k):
        raise StoreError(tmp_path / "s.sqlite", "disk full (injected)")
    b.store.commit_execution = boom
    with pytest.raises(StoreError, match="disk full"):
        b.submit(OrderIntent("c", "BTCUSDT", Side.BUY, 1.0), LV, ts=2)
    assert b.portfolio == before  # the unreported fill did not touch the account
    with pytest.raises(BrokerHalted):
        b.submit(OrderIntent("d", "BTCUSDT", Side.BUY, 1.0), LV, ts=3)


def test_latency_and_resting_orders_survive_restart(tmp_path):
    cfg = BrokerConfig(starting_cash=1e5, latency_ms=5.0)
    b = make(tmp_path, cfg)
    ex = b.submit(OrderIntent("lat", "BTCUSDT", Side.BUY, 1.0), LV, ts=0)
    assert ex.fills == () and ex.order.active_at == 5_000_000
    b.submit(OrderIntent("rest", "BTCUSDT", Side.SELL, 1.0, OrderType.LIMIT, 150.0), LV, ts=1)
    b.store.close()
    b = make(tmp_path, cfg)
    assert {o.client_order_id for o in b.open_orders()} == {"lat", "rest"}
    assert b.on_book("BTCUSDT", LV, ts=4_999_999) == []
    [ex] = b.on_book("BTCUSDT", LV, ts=5_000_000)
    assert ex.order.status == OrderStatus.FILLED and ex.fills[0].price == 101.0
    b.on_book("BTCUSDT", LV, ts=5_000_001)  # activates "rest" (not marketable)
    [ex] = b.on_trade(Trade("BTCUSDT", 1, 150.5, 2.0, False, 6_000_000, 6_000_000))
    assert ex.order.client_order_id == "rest" and ex.order.status == OrderStatus.FILLED
    assert b.portfolio.qty("BTCUSDT") == 0.0
    assert b.portfolio.realised == pytest.approx(49.0)
    b.store.close()
    assert make(tmp_path, cfg).portfolio == b.portfolio


def test_cancel_after_restart(tmp_path):
    b = make(tmp_path)
    b.submit(OrderIntent("done", "BTCUSDT", Side.BUY, 0.5), LV, ts=1)
    b.submit(OrderIntent("rest", "BTCUSDT", Side.BUY, 0.5, OrderType.LIMIT, 90.0), LV, ts=1)
    b.store.close()
    b = make(tmp_path)
    assert b.cancel("done", 2).status == OrderStatus.FILLED      # closed before the restart: no-op
    assert b.cancel("rest", 2).status == OrderStatus.CANCELED
    assert b.store.get_order("rest").status == OrderStatus.CANCELED and not b.open_orders()
    with pytest.raises(OrderError, match="no order"):
        b.cancel("never", 3)


def test_refused_stop_exit_keeps_the_same_trades_resting_fill_and_drops_the_stops(tmp_path):
    """One trade fills a resting take-profit-side limit AND triggers the stops, whose exit for the dust left is
    below min notional: the refusal must not lose the resting order's fill (one transaction per trade), must
    not raise into the loop, and drops the stops in memory and in the store (not retried on every trade)."""
    from market.filters import SymbolFilters
    filters = {"BTCUSDT": SymbolFilters("BTCUSDT", 0.01, 0.00001, 0.00001, 9000.0, 5.0)}
    path = tmp_path / "s.sqlite"
    b = PaperBroker(CFG, SQLiteStore(path), symbols=("BTCUSDT",), filters=filters)
    lv = ([(59990.0, 1.0)], [(60010.0, 1.0)])
    b.submit(OrderIntent("in", "BTCUSDT", Side.BUY, 0.0002), lv, ts=1)
    rest = b.submit(OrderIntent("part", "BTCUSDT", Side.SELL, 0.00015, OrderType.LIMIT, 61000.0), lv, ts=2)
    assert rest.order.status == OrderStatus.NEW
    b.set_stops("BTCUSDT", None, 61000.0, "tp")
    up = ([(60990.0, 1.0)], [(61010.0, 1.0)])
    exs = b.on_trade(Trade("BTCUSDT", 7, 61000.0, 0.01, False, 3, 3), up)  # must not raise
    assert [(e.order.client_order_id, e.order.status) for e in exs] == [("part", OrderStatus.FILLED)]
    assert b.portfolio.qty("BTCUSDT") == pytest.approx(0.00005)
    assert "BTCUSDT" not in b.engine.stops and b.stats["stops_refused"] == 1
    assert b.on_trade(Trade("BTCUSDT", 8, 61000.0, 0.01, False, 4, 4), up) == []
    b.store.close()
    with SQLiteStore(path) as st:
        rec = st.recover(CFG.starting_cash)
        assert rec.stops == [] and rec.discrepancies == []
        assert rec.portfolio.qty("BTCUSDT") == pytest.approx(0.00005)
        fills = st._db.execute("SELECT client_order_id, qty FROM fills ORDER BY rowid").fetchall()
        assert [f[0] for f in fills] == ["in", "part"]


def test_reduce_only_floors_to_whole_lots_keeps_a_position_on_the_grid_and_refuses_dust():
    """A position net of a base-asset commission is off the lot grid: the exit is floored to whole lots. A
    position summed from fills that is 1 ulp under a whole number of lots keeps its last lot. Below one lot the
    venue cannot sell: refused with reason "dust" (and ``is_dust`` says so)."""
    from market.filters import SymbolFilters
    from daemon.broker import reduce_only
    from strategies.sizing import is_dust
    f = SymbolFilters("BTCUSDT", 0.01, 0.00001, 0.00001, 9000.0, 5.0)
    sell = OrderIntent("x-1", "BTCUSDT", Side.SELL, 100.0, reduce_only=True)  # "all of it"
    assert reduce_only(sell, 0.01232766, f).qty == 0.01232
    on_grid = 0.1 + 0.2  # 0.30000000000000004: on the grid to float rounding
    assert reduce_only(sell, on_grid, f).qty == on_grid
    under = 1.2345 - 2e-16  # a sum of fills a hair under 1.2345
    assert reduce_only(sell, under, f).qty == under and not is_dust(under, f)
    assert reduce_only(sell, 0.01232766).qty == 0.01232766  # no filters: clipped to the position only
    assert is_dust(0.00000766, f) and is_dust(-0.00000766, f) and not is_dust(0.0, f) and not is_dust(0.00001, f)
    with pytest.raises(OrderError, match="below one lot") as ei:
        reduce_only(sell, 0.00000766, f)
    assert ei.value.reason == "dust"
