"""The feed split across connections where the venue limits streams per connection (issue #16): the grouping
(every stream of a symbol on one connection, none over the limit), the local venue refusing a URL over its limit,
and, against the real local venue on loopback, a split feed that syncs every book and whose lost connection
resyncs only its own symbols' books while the other connection's keep streaming."""
from __future__ import annotations

import asyncio
import dataclasses
import subprocess

import orjson
import pytest
import websockets
from websockets.asyncio.client import connect

from daemon.binance.feed import BinanceFeed, BookStatus, group_streams
from daemon.binance.protocol import MarketDataProtocol
from daemon.config import FaultConfig, FeedConfig, SimulatorConfig
from daemon.venue.server import LocalVenue, SimulatorSource
from market.cfgbase import ConfigError, build_section
from market.events import DepthSnapshot, Trade
from tests.daemon.harness import PY, ROOT, free_port
from tests.daemon.harness import until as _until

SIM = dataclasses.replace(SimulatorConfig(), history_days=1, trades_per_s=30.0, speed=1.0)
FAST = FeedConfig(reconnect_initial_s=0.05, reconnect_max_s=0.2, stale_after_s=2.0)
UNIVERSE = ("BTCUSDT",) + tuple(e.split("=")[0] for e in SimulatorConfig().universe[:3])


def _symbols(n: int) -> list[str]:
    return [f"S{i}USDT" for i in range(n)]


@pytest.mark.parametrize("n, connections", [(1, 1), (3, 1), (341, 1), (342, 2), (683, 3)])
def test_grouping_fills_connections_to_1024_streams_and_keeps_a_symbols_streams_together(n, connections):
    proto = MarketDataProtocol(_symbols(n), FeedConfig())  # trade, depth@100ms, bookTicker per symbol
    assert all(len(v) == 3 for v in proto.symbol_streams.values())
    groups = group_streams(proto.symbol_streams, 1024)
    assert len(groups) == connections
    assert all(len(streams) <= 1024 for _, streams in groups)
    assert [s for syms, _ in groups for s in syms] == proto.symbols  # every symbol once, in order
    assert [x for _, streams in groups for x in streams] == proto.streams  # every stream once, in order
    for syms, streams in groups:
        assert list(streams) == [x for s in syms for x in proto.symbol_streams[s]]  # a symbol is never split
    if n == 342:
        assert [len(g[1]) for g in groups] == [1023, 3]


def test_the_feed_never_puts_more_streams_in_a_url_than_its_limit():
    for n, limit, want in ((342, 1024, 2), (8, 7, 4), (8, 3, 8), (5, 1024, 1)):
        feed = BinanceFeed(_symbols(n), "ws://venue", "http://venue",
                           dataclasses.replace(FeedConfig(), max_streams_per_connection=limit))
        assert len(feed.connections) == want, (n, limit)
        for c in feed.connections:
            named = c.url.split("/stream?streams=", 1)[1].split("/")
            assert len(named) == len(c.streams) <= limit
            assert {x.partition("@")[0] for x in named} == {s.lower() for s in c.symbols}
        assert sorted(x for c in feed.connections for x in c.streams) == sorted(feed.streams)
    one = BinanceFeed(["BTCUSDT", "ETHUSDT"], "ws://venue", "http://venue")  # everything fits: one connection
    assert len(one.connections) == 1 and one.url == "ws://venue/stream?streams=" + "/".join(one.streams)


def test_a_limit_below_one_symbols_streams_is_refused():
    with pytest.raises(ValueError, match="BTCUSDT has 3 streams, more than the 2"):
        group_streams({"BTCUSDT": ("a", "b", "c")}, 2)
    with pytest.raises(ConfigError, match=r"\[feed\] max_streams_per_connection: 2 is fewer than the 3 streams"):
        build_section(FeedConfig, {"max_streams_per_connection": 2}, "feed", "test")
    cfg = build_section(FeedConfig, {"max_streams_per_connection": 2, "book_oracle": False}, "feed", "test")
    assert cfg.max_streams_per_connection == 2  # trade + depth only: two fit
    with pytest.raises(ConfigError):
        build_section(FeedConfig, {"max_streams_per_connection": 1025}, "feed", "test")


def test_the_venue_refuses_a_url_over_its_limit_and_a_feed_counts_the_refusal():
    async def main():
        async with LocalVenue(SimulatorSource(list(UNIVERSE[:3]), SIM), max_streams=7) as venue:
            names = [f"{s.lower()}@{k}" for s in UNIVERSE[:3] for k in ("trade", "depth@100ms", "bookTicker")]
            async with connect(f"{venue.ws_url}/stream?streams={'/'.join(names[:7])}") as ws:  # at the limit: ok
                frame = orjson.loads(await asyncio.wait_for(ws.recv(), 5))
                assert frame["stream"] in names[:7]
                await ws.send(orjson.dumps({"method": "SUBSCRIBE", "params": [names[7]], "id": 1}).decode())
                while "id" not in (reply := orjson.loads(await asyncio.wait_for(ws.recv(), 5))):
                    pass
                assert reply["error"]["code"] == 2 and "at most 7 streams" in reply["error"]["msg"]
            for path in (f"/stream?streams={'/'.join(names[:8])}", f"/ws/{'/'.join(names[:8])}"):
                with pytest.raises(websockets.exceptions.InvalidStatus) as e:
                    async with connect(venue.ws_url + path):
                        pass
                assert e.value.response.status_code == 400
                body = orjson.loads(e.value.response.body)
                assert body["code"] == 2 and "at most 7 streams, the URL names 8" in body["msg"]
            assert venue.stats.ws_errors[2] == 3

            # a feed configured for more than the venue takes: refused handshakes, counted, retried, no crash
            cfg = dataclasses.replace(FAST, max_streams_per_connection=9)
            feed = BinanceFeed(list(UNIVERSE[:3]), venue.ws_url, venue.rest_url, cfg, lambda ev: None, seed=1)
            task = asyncio.create_task(feed.run())
            await _until(lambda: feed.connections[0].errors["http_400"] >= 2)
            assert feed.stats.connects == 0 and not feed.connected.is_set()
            assert feed.counters()["connections"][0]["errors"]["http_400"] >= 2
            feed.stop()
            await asyncio.wait_for(task, 5)

    asyncio.run(asyncio.wait_for(main(), 30))


def test_split_feed_syncs_every_book_and_a_lost_connection_resyncs_only_its_symbols():
    async def main():
        syms = list(UNIVERSE)  # 4 symbols x 3 streams, 7 per connection: 2 connections of 2 symbols
        async with LocalVenue(SimulatorSource(syms, SIM), max_streams=7) as venue:
            events: list = []
            cfg = dataclasses.replace(FAST, max_streams_per_connection=7)
            feed = BinanceFeed(syms, venue.ws_url, venue.rest_url, cfg, events.append, seed=5)
            assert [c.symbols for c in feed.connections] == [tuple(syms[:2]), tuple(syms[2:])]
            task = asyncio.create_task(feed.run())
            await _until(lambda: feed.connected.is_set() and all(b.is_tradeable for b in feed.books.values()))
            assert len(venue.clients) == 2 and sorted(len(c.streams) for c in venue.clients) == [6, 6]
            lost, kept = feed.connections
            snaps = {s: sum(isinstance(e, DepthSnapshot) and e.symbol == s for e in events) for s in syms}
            assert snaps == {s: 1 for s in syms}
            mark = len(events)

            await venue.close_clients(stream=f"{lost.symbols[0].lower()}@trade")  # the venue drops connection 0
            await _until(lambda: lost.connects == 2 and all(feed.books[s].is_tradeable for s in syms)
                         and all(feed.books[s].stats.resyncs == 1 for s in lost.symbols))
            after = events[mark:]
            await _until(lambda: all(any(isinstance(e, Trade) and e.symbol == s for e in events[mark:])
                                     for s in kept.symbols))
            feed.stop()
            await asyncio.wait_for(task, 5)

        def stale(s):
            return [e for e in after if isinstance(e, BookStatus) and e.symbol == s and e.reason == "disconnect"]
        for s in lost.symbols:  # went stale, fetched a new snapshot, resynced
            assert stale(s) and feed.books[s].stats.resyncs == 1
            assert sum(isinstance(e, DepthSnapshot) and e.symbol == s for e in after) == 1
        for s in kept.symbols:  # untouched: no stale status, no snapshot, no resync; its trades kept coming
            assert not stale(s) and feed.books[s].stats.resyncs == 0
            assert not any(isinstance(e, DepthSnapshot) and e.symbol == s for e in after)
            assert feed.books[s].stats.stale_reasons["disconnect"] == 1  # only stop()'s final close
        assert (lost.connects, lost.reconnects) == (2, 1)
        assert (kept.connects, kept.reconnects) == (1, 0)
        assert feed.stats.connects == 3 and feed.stats.resyncs == 2
        conns = feed.counters()["connections"]
        assert [(c["index"], c["symbols"], c["streams"]) for c in conns] == [(0, syms[:2], 6), (1, syms[2:], 6)]
        assert all(c["frames"] > 0 for c in conns)

    asyncio.run(asyncio.wait_for(main(), 40))


def test_faults_that_close_every_connection_resync_each_group_on_its_own():
    """``close_after_frames``: the venue drops each connection after N frames; every group reconnects through its
    own loop and every book comes back synced."""
    async def main():
        syms = list(UNIVERSE)
        async with LocalVenue(SimulatorSource(syms, SIM), FaultConfig(close_after_frames=80), max_streams=6) as venue:
            cfg = dataclasses.replace(FAST, max_streams_per_connection=6)
            feed = BinanceFeed(syms, venue.ws_url, venue.rest_url, cfg, lambda ev: None, seed=6)
            task = asyncio.create_task(feed.run())
            await _until(lambda: all(c.connects >= 2 for c in feed.connections)
                         and all(b.is_tradeable for b in feed.books.values()), 30)
            feed.stop()
            await asyncio.wait_for(task, 5)
        assert len(feed.connections) == 2
        assert all(c.reconnects >= 1 for c in feed.connections)
        assert all(feed.books[s].stats.resyncs >= 1 for s in syms)

    asyncio.run(asyncio.wait_for(main(), 40))


def test_tradingd_venue_max_streams_flag_limits_the_served_connections(tmp_path):
    """``tradingd venue --simulate --max-streams 4`` (a real subprocess): a URL naming 4 streams is served, 5 are
    refused with HTTP 400."""
    port = free_port()
    p = subprocess.Popen([PY, "-m", "daemon.cli", "venue", "--simulate", "--symbols", "BTCUSDT,ETHUSDT",
                          "--port", str(port), "--max-streams", "4"], cwd=ROOT, stdout=subprocess.PIPE,
                         stderr=subprocess.DEVNULL, text=True)
    try:
        line = p.stdout.readline()  # printed once the server listens
        assert line.startswith("venue: websocket"), line
        names = [f"{s}@{k}" for s in ("btcusdt", "ethusdt") for k in ("trade", "depth@100ms", "bookTicker")]

        async def main():
            async with connect(f"ws://127.0.0.1:{port}/stream?streams={'/'.join(names[:4])}") as ws:
                assert orjson.loads(await asyncio.wait_for(ws.recv(), 10))["stream"] in names[:4]
            with pytest.raises(websockets.exceptions.InvalidStatus) as e:
                async with connect(f"ws://127.0.0.1:{port}/stream?streams={'/'.join(names[:5])}"):
                    pass
            assert e.value.response.status_code == 400 and b"at most 4 streams" in e.value.response.body

        asyncio.run(asyncio.wait_for(main(), 20))
    finally:
        p.terminate()
        p.wait(10)
