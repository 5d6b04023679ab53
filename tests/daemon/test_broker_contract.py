"""The one contract every broker passes (daemon.broker.Broker): the paper broker on a real order book, and the
testnet broker against the local venue's Binance order API over real HTTP on loopback. Both trade the SAME
book: the venue's depth (its simulator moves only when a test steps it), loaded into a market.book.OrderBook.

A venue answers later: what ``submit``/``cancel`` do not return at once arrives as executions from the next
``on_book``/``on_trade`` (``Case.settle``); the paper broker has nothing pending, the contract is the same.
"""
from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import sqlite3
from pathlib import Path

import pytest

from daemon.binance.testnet import TestnetBroker
from daemon.broker import Broker, BrokerHalted, Execution, PaperBroker
from daemon.config import BrokerConfig
from daemon.store import SQLiteStore, StoreError
from daemon.storewriter import StoreWriter
from market.book import OrderBook
from market.events import DepthSnapshot, OrderIntent, OrderStatus, OrderType, Side, Trade
from market.matching import OrderError
from strategies.sizing import is_dust
from tests.daemon.harness import run
from tests.daemon.local_venue import FEE, SYM, open_env, store_check, walk

KINDS = ["paper", "testnet"]
CFG = BrokerConfig(taker_fee=FEE, maker_fee=FEE)


@dataclasses.dataclass
class Case:
    """One broker on a store file, the venue's book, and a way to collect what the broker reports later."""

    kind: str
    broker: Broker
    book: OrderBook
    filters: dict
    path: Path
    make: object  # () -> a new broker on the same store (a restart); async for the testnet
    reported: list[Execution] = dataclasses.field(default_factory=list)

    async def settle(self, ts: int = 10) -> list[Execution]:
        """Everything the broker reports once the venue has answered (paper: nothing is pending)."""
        if isinstance(self.broker, TestnetBroker):
            assert await self.broker.idle(10)
        out = self.broker.on_book(SYM, self.book, ts)
        self.reported.extend(out)
        return out

    async def submit(self, intent: OrderIntent, ts: int = 1) -> Execution:
        """Submit and settle: the order's final state with every fill it made."""
        ex = self.broker.submit(intent, self.book, ts)
        self.reported.append(ex)
        later = [e for e in await self.settle(ts + 1) if e.order.client_order_id == intent.client_order_id]
        fills = ex.fills + tuple(f for e in later for f in e.fills)
        return Execution(later[-1].order if later else ex.order, fills, ex.is_new)

    def fills(self) -> list:
        return [f for e in self.reported for f in e.fills]


def real_book(depth: dict) -> OrderBook:
    book = OrderBook(SYM)
    book.on_snapshot(DepthSnapshot(SYM, int(depth["lastUpdateId"]),
                                   [(float(p), float(q)) for p, q in depth["bids"]],
                                   [(float(p), float(q)) for p, q in depth["asks"]], 1))
    assert book.is_tradeable
    return book


@contextlib.asynccontextmanager
async def open_case(kind: str, tmp_path: Path, *, writer: bool = False, busy_timeout_ms: int = 5000):
    env, venue = await open_env()
    path = tmp_path / f"{kind}.sqlite"
    stores: list[SQLiteStore] = []
    brokers: list = []
    w = StoreWriter(lambda: SQLiteStore(path)) if writer else None
    try:
        filters = await env.filters()
        book = real_book(await env.depth())

        async def make():
            store = SQLiteStore(path, busy_timeout_ms=busy_timeout_ms)
            stores.append(store)
            if kind == "paper":
                b = PaperBroker(CFG, store, symbols=(SYM,), filters=filters, writer=w)
            else:
                b = TestnetBroker(dataclasses.replace(CFG, kind="testnet"), store, env.client(), symbols=(SYM,),
                                  filters=filters, writer=w)
                await b.start()
            brokers.append(b)
            return b
        yield Case(kind, await make(), book, filters, path, make)
        if w is not None:
            w.flush()
    finally:
        for b in brokers:
            if isinstance(b, TestnetBroker):
                await b.close()
        if w is not None:
            w.close()
        for s in stores:
            s.close()
        await venue.stop()


@pytest.fixture(params=KINDS)
def kind(request) -> str:
    return request.param


def store_rows(path: Path) -> tuple[int, int]:
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return (db.execute("SELECT COUNT(*) FROM orders").fetchone()[0],
                db.execute("SELECT COUNT(*) FROM fills").fetchone()[0])
    finally:
        db.close()


def held(fills) -> float:
    """The signed position a list of fills makes (a base-asset commission is not held)."""
    return sum(f.side * f.qty - f.fee_qty for f in fills)


# ------------------------------------------------------------------------------------------------ contract
def test_both_brokers_satisfy_the_protocol(kind, tmp_path):
    async def main():
        async with open_case(kind, tmp_path) as c:
            assert isinstance(c.broker, Broker)
    run(main())


def test_market_order_fills_walk_the_book_and_the_store_has_them(kind, tmp_path):
    async def main():
        async with open_case(kind, tmp_path) as c:
            _, asks = c.book.depth(1000)
            lot = c.filters[SYM].lot_step
            qty = round(sum(q for _, q in asks[:3]) - 3 * lot, 5)  # spans three levels
            expected = walk(asks, qty)
            assert len(expected) == 3
            ex = await c.submit(OrderIntent("c-mkt-1", SYM, Side.BUY, qty))
            assert ex.is_new and ex.order.status == OrderStatus.FILLED
            assert ex.order.filled_qty == pytest.approx(qty, abs=1e-12)
            assert [f.price for f in ex.fills] == [p for p, _ in expected]
            assert [f.qty for f in ex.fills] == pytest.approx([q for _, q in expected], abs=1e-12)
            assert ex.order.avg_fill_price == pytest.approx(sum(p * q for p, q in expected) / qty, rel=1e-12)
            assert all(f.liquidity == "taker" and f.client_order_id == "c-mkt-1" for f in ex.fills)
            assert len({f.fill_id for f in ex.fills}) == 3
            assert c.broker.portfolio.qty(SYM) == pytest.approx(held(ex.fills), abs=1e-12)
            assert c.broker.open_orders() == []
            # the store has exactly what was reported: the order's final row, its fills, the position
            st = c.broker.store
            assert st.get_order("c-mkt-1") == ex.order
            assert sorted(f.fill_id for f in st.fills()) == sorted(f.fill_id for f in ex.fills)
            assert st.recover(CFG.starting_cash).portfolio.positions == c.broker.portfolio.positions
        store_check(c.path)
    run(main())


@pytest.mark.parametrize("writer", [False, True], ids=["sync-store", "store-writer"])
def test_every_change_reaches_the_store_and_a_restart_recovers_it(kind, writer, tmp_path):
    """Orders, fills, stops and positions go through the same statements with or without the write-behind writer;
    a new broker on the store (a restart) recovers the same portfolio, stops and open orders."""
    async def main():
        async with open_case(kind, tmp_path, writer=writer) as c:
            bid = c.book.best_bid()[0]
            await c.submit(OrderIntent("c-st-1", SYM, Side.BUY, 0.01))
            await c.submit(OrderIntent("c-st-2", SYM, Side.SELL, 0.004))
            rest = await c.submit(OrderIntent("c-st-3", SYM, Side.BUY, 0.002, OrderType.LIMIT, round(bid - 50, 2)))
            assert rest.order.status == OrderStatus.NEW and rest.fills == ()
            c.broker.set_stops(SYM, round(bid - 500, 2), round(bid + 500, 2), "c-st")
            assert c.broker.portfolio.qty(SYM) == pytest.approx(held(c.fills()), abs=1e-12)
            if writer:
                c.broker.writer.flush()
            pf, stops = c.broker.portfolio, c.broker.engine.stops[SYM]
            again = await c.make()  # a restart on the same store
            assert again.portfolio == pf
            assert again.engine.stops[SYM] == stops
            assert [o.client_order_id for o in again.open_orders()] == ["c-st-3"]
        store_check(c.path)
    run(main())


def test_resubmitting_a_client_order_id_returns_the_order_unchanged(kind, tmp_path):
    async def main():
        async with open_case(kind, tmp_path) as c:
            first = await c.submit(OrderIntent("c-dup-1", SYM, Side.BUY, 0.02))
            rows = store_rows(c.path)
            pos = c.broker.portfolio.qty(SYM)
            again = c.broker.submit(OrderIntent("c-dup-1", SYM, Side.BUY, 0.02), c.book, 5)
            assert not again.is_new and again.fills == () and again.order == first.order
            assert await c.settle(6) == []  # nothing sent, nothing filled
            assert c.broker.stats["duplicates"] == 1 and c.broker.portfolio.qty(SYM) == pos
            assert store_rows(c.path) == rows
            restarted = await c.make()  # the store knows the id after a restart
            after = restarted.submit(OrderIntent("c-dup-1", SYM, Side.BUY, 0.02), c.book, 7)
            assert not after.is_new and after.order == first.order
            if isinstance(restarted, TestnetBroker):
                assert await restarted.idle(10) and restarted.stats["sent"] == 0
            assert restarted.portfolio.qty(SYM) == pos and store_rows(c.path) == rows
        store_check(c.path)
    run(main())


def test_reduce_only_is_clipped_to_the_position_and_what_is_left_below_a_lot_is_refused(kind, tmp_path):
    """Flat: a reduce-only order is refused. Long: an exit of "everything" is clipped to the position and floored
    to the lot; it leaves nothing the venue could sell (flat, or dust below one lot), and another reduce-only
    exit is refused before anything is written or sent."""
    async def main():
        async with open_case(kind, tmp_path) as c:
            f = c.filters[SYM]
            with pytest.raises(OrderError) as ei:
                c.broker.submit(OrderIntent("c-ro-0", SYM, Side.SELL, 1.0, reduce_only=True), c.book, 1)
            assert ei.value.reason == "reduce_only"
            await c.submit(OrderIntent("c-ro-1", SYM, Side.BUY, 0.01234))
            pos = c.broker.portfolio.qty(SYM)
            ex = await c.submit(OrderIntent("c-ro-2", SYM, Side.SELL, 100.0, reduce_only=True), 3)
            assert ex.order.qty <= pos and pos - ex.order.qty < f.lot_step
            assert ex.order.qty == pytest.approx(round(ex.order.qty / f.lot_step) * f.lot_step, abs=1e-12)
            assert ex.order.status == OrderStatus.FILLED
            left = c.broker.portfolio.qty(SYM)
            assert left == pytest.approx(pos - ex.order.qty, abs=1e-12)
            assert left == 0.0 or is_dust(left, f)
            rows, rejected = store_rows(c.path), c.broker.stats["rejected"]
            with pytest.raises(OrderError) as ei:
                c.broker.submit(OrderIntent("c-ro-3", SYM, Side.SELL, 1.0, reduce_only=True), c.book, 5)
            assert ei.value.reason == ("reduce_only" if left == 0.0 else "dust")
            assert c.broker.stats["rejected"] == rejected + 1
            assert await c.settle(6) == [] and store_rows(c.path) == rows
        store_check(c.path)
    run(main())


def test_cancel_ends_a_resting_order_and_is_a_no_op_on_a_closed_one(kind, tmp_path):
    async def main():
        async with open_case(kind, tmp_path) as c:
            bid = c.book.best_bid()[0]
            rest = await c.submit(OrderIntent("c-cx-1", SYM, Side.BUY, 0.003, OrderType.LIMIT, round(bid - 100, 2)))
            assert rest.order.status == OrderStatus.NEW
            assert [o.client_order_id for o in c.broker.open_orders()] == ["c-cx-1"]
            c.broker.cancel("c-cx-1", 3)
            await c.settle(4)
            assert c.broker.open_orders() == []
            assert c.broker.store.get_order("c-cx-1").status == OrderStatus.CANCELED
            assert c.fills() == [] and c.broker.portfolio.qty(SYM) == 0.0
            done = await c.submit(OrderIntent("c-cx-2", SYM, Side.BUY, 0.001), 5)
            assert c.broker.cancel("c-cx-2", 7) == done.order  # closed: unchanged
            assert c.broker.cancel("c-cx-1", 8).status == OrderStatus.CANCELED
            assert await c.settle(9) == []
            with pytest.raises(OrderError, match="no order"):
                c.broker.cancel("c-cx-never", 10)
        store_check(c.path)
    run(main())


def test_a_store_failure_halts_the_broker_and_it_refuses_all_work(kind, tmp_path):
    """Another connection holds the store's write lock (as a backup or a sqlite3 shell would): the broker's
    commit fails, and from then on every call refuses (a restart recovers from the store)."""
    async def main():
        async with open_case(kind, tmp_path, busy_timeout_ms=100) as c:
            await c.submit(OrderIntent("c-h-1", SYM, Side.BUY, 0.002))
            rows = store_rows(c.path)
            pf = c.broker.portfolio
            lock = sqlite3.connect(c.path, isolation_level=None)
            try:
                lock.execute("BEGIN IMMEDIATE")
                with pytest.raises(StoreError):
                    c.broker.set_stops(SYM, 1000.0, None, "c-h")
            finally:
                lock.execute("ROLLBACK")
                lock.close()
            b, book = c.broker, c.book
            calls = [lambda: b.submit(OrderIntent("c-h-2", SYM, Side.BUY, 0.001), book, 3),
                     lambda: b.cancel("c-h-1", 3), lambda: b.on_book(SYM, book, 3),
                     lambda: b.on_trade(Trade(SYM, 1, 1000.0, 0.01, False, 3, 3), book),
                     lambda: b.set_stops(SYM, 1000.0, None, "c-h")]
            for call in calls:
                with pytest.raises(BrokerHalted):
                    call()
            await asyncio.sleep(0.1)
            assert store_rows(c.path) == rows and c.broker.portfolio == pf
            restarted = await c.make()
            assert restarted.portfolio == pf and restarted.engine.stops == {}
        store_check(c.path)
    run(main())
