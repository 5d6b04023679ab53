"""BinanceFeed against the local venue (simulated market, real loopback sockets): backoff with full jitter,
reconnect + resubscribe after an abrupt close, a silent stream counted dead, garbage counted and dropped, the
bounded-queue delivery mode, and the raw hook feeding a Recorder whose files replay."""
from __future__ import annotations

import asyncio
import dataclasses
import random

from daemon.binance.codec import decode_frame
from market.book import BookState
from daemon.config import FaultConfig, FeedConfig, SimulatorConfig
from market.events import DepthSnapshot, DepthUpdate, Trade
from daemon.binance.feed import BinanceFeed, BookStatus, backoff_delay
from daemon.record_cli import record
from daemon.recording import iter_recording
from daemon.venue.server import LocalVenue, SimulatorSource
from tests.daemon.harness import until as _until

SIM = dataclasses.replace(SimulatorConfig(), history_days=1, trades_per_s=30.0, speed=1.0)
FAST = FeedConfig(reconnect_initial_s=0.05, reconnect_max_s=0.2, stale_after_s=2.0)


def test_backoff_is_exponential_with_full_jitter():
    rng = random.Random(1)
    for attempt in range(12):
        cap = min(5.0, 0.1 * 2**attempt)
        xs = [backoff_delay(attempt, 0.1, 5.0, rng) for _ in range(300)]
        assert all(0.0 <= x <= cap for x in xs)
        assert max(xs) > 0.8 * cap and min(xs) < 0.2 * cap  # spread over the whole window: full jitter
    assert backoff_delay(10_000, 0.1, 5.0, rng) <= 5.0  # no overflow on huge attempt counts


def test_reconnects_after_abrupt_close_and_resubscribes():
    async def main():
        src = SimulatorSource(["BTCUSDT", "ETHUSDT"], SIM)
        async with LocalVenue(src, FaultConfig(close_after_frames=60)) as venue:
            events = []
            feed = BinanceFeed(["BTCUSDT", "ETHUSDT"], venue.ws_url, venue.rest_url, FAST, events.append, seed=2)
            task = asyncio.create_task(feed.run())
            await _until(lambda: venue.stats.faults.closes >= 2 and feed.stats.connects >= 3
                         and all(b.is_tradeable for b in feed.books.values()))
            clients = list(venue.clients)
            assert clients and clients[0].streams == {"btcusdt@trade", "btcusdt@depth@100ms", "btcusdt@bookTicker",
                                                      "ethusdt@trade", "ethusdt@depth@100ms",
                                                      "ethusdt@bookTicker"}  # subscriptions restored
            feed.stop()
            await asyncio.wait_for(task, 5)
        assert feed.stats.reconnects >= 2
        assert feed.stats.resyncs >= 2 * 2  # every reconnect resyncs both books
        stale = [e for e in events if isinstance(e, BookStatus) and e.reason == "disconnect"]
        assert len(stale) >= 2 * 2
        assert any(isinstance(e, Trade) and e.symbol == "ETHUSDT" for e in events)

    asyncio.run(asyncio.wait_for(main(), 40))


def test_silent_stream_counts_as_dead_and_reconnects():
    async def main():
        faults = FaultConfig(stall_every_s=0.3, stall_s=1.5)
        async with LocalVenue(SimulatorSource(["BTCUSDT"], SIM), faults) as venue:
            cfg = dataclasses.replace(FAST, stale_after_s=0.5)
            feed = BinanceFeed(["BTCUSDT"], venue.ws_url, venue.rest_url, cfg, lambda ev: None, seed=3)
            task = asyncio.create_task(feed.run())
            await _until(lambda: feed.stats.stale_timeouts >= 1 and feed.stats.connects >= 2)
            assert venue.stats.faults.stalls >= 1
            assert feed.books["BTCUSDT"].stats.stale_reasons["disconnect"] >= 1
            feed.stop()
            await asyncio.wait_for(task, 5)

    asyncio.run(asyncio.wait_for(main(), 30))


def test_garbage_is_counted_and_dropped_and_queue_mode_delivers():
    async def main():
        async with LocalVenue(SimulatorSource(["BTCUSDT"], SIM), FaultConfig(garbage_prob=0.2, seed=9)) as venue:
            feed = BinanceFeed(["BTCUSDT"], venue.ws_url, venue.rest_url, FAST)  # no callback: bounded queue
            task = asyncio.create_task(feed.run())
            got = []
            while sum(feed.stats.decode_errors.values()) < 20 or not any(isinstance(e, DepthUpdate) for e in got):
                got.append(await asyncio.wait_for(feed.queue.get(), 5))
            assert feed.books["BTCUSDT"].state is BookState.SYNCED  # garbage never broke the book
            assert all(isinstance(r, str) and r for r in feed.stats.decode_errors)  # counted by reason
            assert feed.stats.connects == 1  # and the connection survived them
            assert any(isinstance(e, DepthSnapshot) for e in got)
            assert feed.stats.queue_depth_max >= 1
            feed.stop()
            await asyncio.wait_for(task, 5)

    asyncio.run(asyncio.wait_for(main(), 30))


def test_stop_closes_the_socket_through_a_held_task_that_run_awaits():
    """stop() is synchronous, so it starts ws.close() as a task: the feed holds that task (the loop keeps only a
    weak reference: a fire-and-forget close can be collected mid-flight) and run() returns only once it is done,
    with no close left pending behind it."""
    async def main():
        async with LocalVenue(SimulatorSource(["BTCUSDT"], SIM)) as venue:
            feed = BinanceFeed(["BTCUSDT"], venue.ws_url, venue.rest_url, FAST, lambda ev: None, seed=4)
            task = asyncio.create_task(feed.run())
            await _until(lambda: feed.connected.is_set() and sum(feed.stats.frames.values()) > 10)
            feed.stop()
            closing = feed._close_task
            assert isinstance(closing, asyncio.Task)
            feed.stop()  # a second stop() starts no second close
            assert feed._close_task is closing
            await asyncio.wait_for(task, 5)
            assert closing.done() and closing.exception() is None
            others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task() and not t.done()
                      and "close" in repr(t.get_coro())]
            assert others == []

    asyncio.run(asyncio.wait_for(main(), 30))


def test_record_command_core_writes_frames_and_snapshots(tmp_path):
    async def main():
        async with LocalVenue(SimulatorSource(["BTCUSDT"], SIM)) as venue:
            return await record(["BTCUSDT"], venue.ws_url, venue.rest_url, tmp_path, seconds=1.0,
                                book_ticker=True)

    res = asyncio.run(asyncio.wait_for(main(), 30))
    assert res["files"] and res["frames"] > 20
    kinds = {"snap": 0, "depth": 0, "trade": 0, "ticker": 0}
    for recv_ns, raw in iter_recording(tmp_path):
        ev = decode_frame(raw, recv_ns)
        if isinstance(ev, DepthSnapshot):
            kinds["snap"] += 1
            assert ev.symbol == "BTCUSDT"  # the recorder added the symbol to the REST body
        elif isinstance(ev, DepthUpdate):
            kinds["depth"] += 1
        elif isinstance(ev, Trade):
            kinds["trade"] += 1
        else:
            kinds["ticker"] += 1
    assert kinds["snap"] == 1 and kinds["depth"] >= 5 and kinds["trade"] >= 5 and kinds["ticker"] >= 5
    assert sum(kinds.values()) == res["frames"]


def test_frame_counters_stay_bounded_whatever_stream_names_arrive():
    """A long-lived feed counts frames per stream; names it did not subscribe to (a misbehaving or hostile venue)
    share one "other" key, so 5,000 distinct names cannot grow the stats without bound."""
    got = []
    feed = BinanceFeed(["BTCUSDT"], "ws://127.0.0.1:9", "http://127.0.0.1:9", FAST, on_event=got.append)

    async def main():
        def data(tid: int) -> bytes:  # distinct trade ids: a repeated id is refused as a duplicate
            return b'{"e":"trade","E":1,"s":"BTCUSDT","t":%d,"p":"60000.0","q":"0.1","T":1,"m":true}' % tid
        for i in range(5000):
            await feed._on_frame(b'{"stream":"btcusdt@trade' + str(i).encode() + b'","data":' + data(2 * i) + b"}", i)
            await feed._on_frame(b'{"stream":"btcusdt@trade","data":' + data(2 * i + 1) + b"}", i)

    asyncio.run(main())
    assert sum(isinstance(e, Trade) for e in got) == 10_000  # every valid frame still delivered
    assert dict(feed.stats.frames) == {"btcusdt@trade": 5000, "other": 5000}
