"""A maintained Binance client (``binance-sdk-spot``, Binance's own Python SDK, not our feed code) pointed at the local
venue over loopback sockets: it loads the markets, subscribes, receives, unsubscribes and lists, in simulate mode
and against the real recording, where klines must be there before any client has subscribed."""
from __future__ import annotations

import asyncio
import dataclasses
import logging

import orjson
import pytest
from binance_common.configuration import ConfigurationRestAPI, ConfigurationWebSocketStreams  # dev extra
from binance_sdk_spot.rest_api.models import KlinesIntervalEnum
from binance_sdk_spot.spot import Spot

from daemon.config import SimulatorConfig
from daemon.venue.replay import ReplaySource
from daemon.venue.server import LocalVenue, SimulatorSource
from tests.daemon.harness import run, until

SIM_CFG = dataclasses.replace(SimulatorConfig(), history_days=3)
M1 = KlinesIntervalEnum["INTERVAL_1m"].value


def client(venue: LocalVenue) -> Spot:
    return Spot(config_rest_api=ConfigurationRestAPI(base_path=venue.rest_url, timeout=5000, retries=0),
                config_ws_streams=ConfigurationWebSocketStreams(stream_url=venue.ws_url))


async def rest(fn, *a, **kw):
    """The SDK's REST client is blocking (requests): run it off the loop that serves the venue."""
    return (await asyncio.to_thread(fn, *a, **kw)).data()


def test_sdk_loads_markets_subscribes_lists_and_unsubscribes_on_the_simulated_venue():
    async def main():
        src = SimulatorSource(["BTCUSDT", "ETHUSDT"], SIM_CFG)
        async with LocalVenue(src, ping_interval_s=0.2, pong_timeout_s=1.0) as v:
            spot = client(v)
            api = spot.rest_api
            await rest(api.ping)
            t = (await rest(api.time)).server_time
            assert abs(t - src.server_time_ms()) < 5000
            info = await rest(api.exchange_info, symbol="BTCUSDT")
            assert [s.symbol for s in info.symbols] == ["BTCUSDT"]
            assert {f.actual_instance.filter_type for f in info.symbols[0].filters} >= {"PRICE_FILTER", "LOT_SIZE"}
            rows = await rest(api.klines, "BTCUSDT", M1)
            assert len(rows) == 500  # Binance's default limit
            sim_ms = src.sims["BTCUSDT"].t_ns // 1_000_000
            rows = await rest(api.klines, "BTCUSDT", M1, limit=1000)
            opens = [r[0] for r in rows]
            assert len(rows) == 1000 and opens == sorted(opens)
            assert sim_ms < opens[-1] + 60_000 and opens[-1] <= src.server_time_ms()  # the open bar is the last row
            part = await rest(api.klines, "BTCUSDT", M1, start_time=opens[10] + 1, end_time=opens[20], limit=5)
            assert [r[0] for r in part] == opens[11:16]  # bars opening at or after startTime
            depth = await rest(api.depth, "BTCUSDT", limit=5)
            assert len(depth.bids) == len(depth.asks) == 5 and float(depth.bids[0][0]) < float(depth.asks[0][0])

            conn = await spot.websocket_streams.create_connection()
            got: dict[str, list] = {"trade": [], "depth": [], "book": []}
            h_trade = await conn.trade(symbol="btcusdt")
            h_trade.on("message", got["trade"].append)
            h_depth = await conn.diff_book_depth(symbol="btcusdt", update_speed="100ms")
            h_depth.on("message", got["depth"].append)
            h_book = await conn.book_ticker(symbol="btcusdt")
            h_book.on("message", got["book"].append)
            await until(lambda: all(len(x) >= 3 for x in got.values()))
            assert got["trade"][0].s == "BTCUSDT" and float(got["trade"][0].p) > 0
            d = got["depth"][-1]
            assert d.e == "depthUpdate" and d.U <= d.u
            assert float(got["book"][-1].b) < float(got["book"][-1].a)
            listed = await conn.list_subscribe()
            assert sorted(listed["result"]) == ["btcusdt@bookTicker", "btcusdt@depth@100ms", "btcusdt@trade"]
            await h_trade.unsubscribe()
            listed = await conn.list_subscribe()
            assert sorted(listed["result"]) == ["btcusdt@bookTicker", "btcusdt@depth@100ms"]
            (vc,) = list(v.clients)
            assert "btcusdt@trade" not in vc.streams  # unsubscribed at the venue, not only in the client
            # the venue pinged; the SDK answered each ping, so the connection outlived several pong timeouts
            await asyncio.sleep(1.5)
            assert v.stats.pings_sent >= 5 and v.stats.pong_timeouts == 0 and len(v.clients) == 1
            # REST views of the same market the stream carries
            trades = await rest(api.get_trades, "BTCUSDT", limit=5)
            ids = [x.id for x in trades]
            assert 1 <= len(ids) <= 5 and ids == sorted(ids)
            px = await rest(api.ticker_price, symbol="BTCUSDT")
            assert float(px.actual_instance.price) > 0
            bt = await rest(api.ticker_book_ticker, symbol="BTCUSDT")
            assert float(bt.actual_instance.bid_price) < float(bt.actual_instance.ask_price)
            await conn.close_connection(close_session=True)

    run(main(), 60)


@pytest.fixture(scope="module")
def one_recording(binance_recording):
    return binance_recording[0]  # spot_btcusdt_20240808.gz


def test_sdk_against_the_recording_gets_klines_at_once_and_trades_without_a_snapshot(one_recording, caplog):
    caplog.set_level(logging.WARNING)
    src = ReplaySource(one_recording, speed=0, sim_cfg=SIM_CFG, simulated_history=True)
    first = next(orjson.loads(f.combined)["data"] for f in src.frames if f.kind == "trade")

    async def main():
        async with LocalVenue(src, start_on="snapshot") as v:  # the CLI's default
            spot = client(v)
            rows = await rest(spot.rest_api.klines, "BTCUSDT", M1, limit=1000)
            assert src.position == 0 and len(rows) == 1000  # before any client subscribed
            assert rows[-1][0] == first["T"] // 60_000 * 60_000 - 60_000
            assert float(rows[-1][4]) == pytest.approx(float(first["p"]), abs=0.01)
            assert (await rest(spot.rest_api.time)).server_time == src.frames[0].recv_ns // 1_000_000
            # a trades-only client never fetches a depth snapshot: the replay must start for it anyway
            conn = await spot.websocket_streams.create_connection()
            trades: list = []
            h = await conn.trade(symbol="btcusdt")
            h.on("message", trades.append)
            await until(lambda: len(trades) >= 50)
            assert trades[0].t == first["t"] and [x.t for x in trades[:50]] == sorted(x.t for x in trades[:50])
            assert v.stats.ws_errors == {}
            await conn.close_connection(close_session=True)

    run(main(), 60)
