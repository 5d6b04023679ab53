"""The local venue speaks Binance's wire format: REST bodies and errors, combined and raw streams, subscriptions,
a replay whose REST depth is consistent with what it streamed, and seeded, counted fault injection."""
from __future__ import annotations

import asyncio
import dataclasses

import aiohttp
import pytest
import orjson
from daemon.binance.codec import decode_frame, parse_depth_snapshot, parse_exchange_info, parse_klines
from daemon.binance.bookcheck import check_recording
from daemon.config import FaultConfig, SimulatorConfig
from market.events import DepthUpdate, Trade
from daemon.venue.faults import FaultInjector, FaultStats
from daemon.venue.replay import ReplaySource
from daemon.venue.server import LocalVenue, SimulatorSource
from tests.daemon.harness import run

SIM_CFG = dataclasses.replace(SimulatorConfig(), history_days=3, speed=1.0)


async def _get(session: aiohttp.ClientSession, url: str) -> tuple[int, object]:
    async with session.get(url) as r:
        return r.status, orjson.loads(await r.read())


def test_rest_endpoints_formats_and_errors():
    async def main():
        async with LocalVenue(SimulatorSource(["BTCUSDT", "ETHUSDT"], SIM_CFG)) as v, aiohttp.ClientSession() as s:
            base = v.rest_url + "/api/v3"
            assert await _get(s, base + "/ping") == (200, {})
            st, body = await _get(s, base + "/time")
            assert st == 200 and isinstance(body["serverTime"], int)
            # exchangeInfo: parsed by the same parser the daemon uses against the real venue
            st, info = await _get(s, base + "/exchangeInfo")
            filters = parse_exchange_info(orjson.dumps(info))
            assert set(filters) == {"BTCUSDT", "ETHUSDT"}
            assert filters["BTCUSDT"].tick_size == SIM_CFG.tick_size
            assert filters["BTCUSDT"].lot_step == SIM_CFG.lot_step
            assert filters["BTCUSDT"].min_notional == SIM_CFG.min_notional
            st, info = await _get(s, base + "/exchangeInfo?symbol=ETHUSDT")
            assert [x["symbol"] for x in info["symbols"]] == ["ETHUSDT"]
            # depth
            st, d = await _get(s, base + "/depth?symbol=BTCUSDT&limit=5")
            assert st == 200 and set(d) == {"lastUpdateId", "bids", "asks"}
            assert len(d["bids"]) == len(d["asks"]) == 5
            assert all(isinstance(p, str) and isinstance(q, str) for p, q in d["bids"] + d["asks"])
            bids = [float(p) for p, _ in d["bids"]]
            asks = [float(p) for p, _ in d["asks"]]
            assert bids == sorted(bids, reverse=True) and asks == sorted(asks) and bids[0] < asks[0]
            snap = parse_depth_snapshot(orjson.dumps(d), "BTCUSDT", 0)
            assert snap.last_update_id == d["lastUpdateId"]
            st, d = await _get(s, base + "/depth?symbol=BTCUSDT")
            assert len(d["bids"]) == 50  # default limit 100, the simulated book has 50 levels
            # Binance error format
            assert await _get(s, base + "/depth?symbol=NOPE") == (400, {"code": -1121, "msg": "Invalid symbol."})
            st, e = await _get(s, base + "/depth")
            assert st == 400 and e["code"] == -1102
            st, e = await _get(s, base + "/depth?symbol=BTCUSDT&limit=6000")
            assert st == 400 and e["code"] == -1130
            st, e = await _get(s, base + "/depth?symbol=BTCUSDT&limit=abc")
            assert st == 400 and e["code"] == -1100
            # klines
            st, rows = await _get(s, base + "/klines?symbol=BTCUSDT&interval=1m")
            assert st == 200 and len(rows) == 500  # default limit
            r = rows[0]
            assert len(r) == 12 and isinstance(r[0], int) and isinstance(r[6], int) and isinstance(r[8], int)
            assert all(isinstance(r[i], str) for i in (1, 2, 3, 4, 5, 7, 9, 10, 11))
            assert r[6] == r[0] + 60_000 - 1
            st, rows = await _get(s, base + "/klines?symbol=BTCUSDT&interval=1m&limit=1000")
            assert len(rows) == 1000
            bars = parse_klines(orjson.dumps(rows), "BTCUSDT", "1m")
            assert len(bars) == 1000 and bars[0].open_ns == rows[0][0] * 1_000_000
            start = rows[100][0]
            st, rows2 = await _get(s, base + f"/klines?symbol=BTCUSDT&interval=1m&startTime={start}&limit=3")
            assert [x[0] for x in rows2] == [start, start + 60_000, start + 120_000]
            st, rows3 = await _get(s, base + f"/klines?symbol=BTCUSDT&interval=15m&endTime={start}&limit=4")
            assert len(rows3) == 4 and rows3[-1][0] <= start and rows3[-1][6] - rows3[-1][0] == 15 * 60_000 - 1
            for q, code in (("interval=1m&limit=1001", -1130), ("interval=7m", -1120), ("", -1102),
                            ("interval=1m&limit=0", -1130)):
                st, e = await _get(s, base + "/klines?symbol=BTCUSDT&" + q)
                assert st == 400 and e["code"] == code, q
            assert v.stats.rest_errors[-1121] == 1

    run(main())


def test_streams_combined_raw_and_subscribe():
    async def main():
        async with LocalVenue(SimulatorSource(["BTCUSDT"], SIM_CFG)) as v, aiohttp.ClientSession() as s:
            async with s.ws_connect(v.ws_url + "/stream?streams=btcusdt@trade/btcusdt@depth@100ms") as ws:
                seen = set()
                while len(seen) < 2:
                    msg = orjson.loads((await ws.receive()).data)
                    assert set(msg) == {"stream", "data"}
                    seen.add(msg["stream"])
                    ev = decode_frame(orjson.dumps(msg), 0)
                    assert isinstance(ev, (Trade, DepthUpdate))
                assert seen == {"btcusdt@trade", "btcusdt@depth@100ms"}  # no bookTicker: not subscribed
                await ws.send_str(orjson.dumps({"method": "SUBSCRIBE", "params": ["btcusdt@bookTicker"],
                                                "id": 7}).decode())
                got_reply = got_ticker = False
                while not (got_reply and got_ticker):
                    msg = orjson.loads((await ws.receive()).data)
                    if msg.get("id") == 7:
                        assert msg == {"result": None, "id": 7}
                        got_reply = True
                    elif msg.get("stream") == "btcusdt@bookTicker":
                        got_ticker = got_reply  # the ticker came after the subscription
            async with s.ws_connect(v.ws_url + "/ws/btcusdt@trade") as ws:
                data = orjson.loads((await ws.receive()).data)
                assert data["e"] == "trade" and "stream" not in data  # raw stream: bare payload
                assert isinstance(decode_frame(orjson.dumps(data), 0), Trade)
            async with s.get(v.rest_url + "/stream?streams=btcusdt@nonsense") as r:
                assert r.status == 400

    run(main())


class _Collect:
    """Stands in for the server: records what the source publishes, with the source's depth at that moment."""

    def __init__(self, src: ReplaySource, every: int = 40) -> None:
        self.src = src
        self.every = every  # a REST depth reply sorts the book: sample, or the test takes seconds
        self.n = 0
        self.depth_ids: list[tuple[int, int]] = []  # (u of the diff just published, REST lastUpdateId)

    def has_subscribers(self) -> bool:
        return True

    async def publish(self, f) -> None:
        if f.kind == "depth":
            self.n += 1
            if self.n % self.every == 1 or self.n == 6495:
                self.depth_ids.append((f.ids[1], self.src.depth("BTCUSDT", 5)["lastUpdateId"]))


def test_replay_rest_depth_is_consistent_with_the_stream(binance_recording):
    src = ReplaySource(binance_recording, speed=0)
    assert src.symbols == ["BTCUSDT"] and src.books["BTCUSDT"].last_update_id == 50093239218
    assert sum(f.kind == "depth" for f in src.frames) == 6495
    sink = _Collect(src)
    asyncio.run(src.run(sink))
    assert src.done and src.position == len(src.frames)
    snap_id = 50093239218
    for u, rest_id in sink.depth_ids:
        assert rest_id == max(u, snap_id)  # the REST snapshot = last diff sent (or the recorded snapshot before)
    # the venue's true book at the end is the oracle's book (recorded snapshot + every diff) at the same id
    checker, _ = check_recording(binance_recording)
    oracle = checker.books["BTCUSDT"]
    final = parse_depth_snapshot(orjson.dumps(src.depth("BTCUSDT", 100)), "BTCUSDT", 0)
    assert final.last_update_id == oracle.last_update_id == sink.depth_ids[-1][0]
    assert (final.bids, final.asks) == tuple(map(list, oracle.depth(100)))


def test_replay_rewind_replays_what_a_fresh_source_does(binance_recording):
    src = ReplaySource(binance_recording, speed=0)
    first = _Collect(src, every=500)
    asyncio.run(src.run(first))
    end_book = src.depth("BTCUSDT", 1000)
    klines = src.klines("BTCUSDT", "1m", None, None, 1000)
    src.rewind()
    assert not src.done and src.position == 0 and src.klines("BTCUSDT", "1m", None, None, 1000) == []
    assert src.depth("BTCUSDT", 5)["lastUpdateId"] == 50093239218  # the recorded snapshot again, not the end
    second = _Collect(src, every=500)
    asyncio.run(src.run(second))
    assert second.depth_ids == first.depth_ids and second.n == first.n == 6495
    assert src.depth("BTCUSDT", 1000) == end_book
    assert src.klines("BTCUSDT", "1m", None, None, 1000) == klines


def test_replay_klines_from_replayed_trades(binance_recording):
    src = ReplaySource(binance_recording, speed=0)
    assert src.klines("BTCUSDT", "1m", None, None, 1000) == []  # nothing replayed yet
    asyncio.run(src.run(_Collect(src, every=10**9)))
    rows = src.klines("BTCUSDT", "1m", None, None, 1000)
    assert 10 <= len(rows) <= 13  # ~11 minutes recorded
    assert all(b[0] - a[0] == 60_000 for a, b in zip(rows, rows[1:]))
    assert sum(r[8] for r in rows) == 19904  # every recorded trade is in exactly one bar
    for r in rows:
        assert float(r[3]) <= min(float(r[1]), float(r[4])) <= max(float(r[1]), float(r[4])) <= float(r[2])


def test_replay_klines_history_is_moved_to_end_where_the_recording_starts(binance_recording, btc_klines_path):
    from engines.data import load_klines_csv
    k = load_klines_csv(btc_klines_path)
    src = ReplaySource(binance_recording, speed=0, history=k[-3000:])
    first_trade = next(orjson.loads(f.combined)["data"] for f in src.frames if f.kind == "trade")
    first_m = first_trade["T"] // 60_000 * 60_000
    before = src.klines("BTCUSDT", "1m", None, None, 1000)  # nothing replayed: the history alone
    assert len(before) == 1000 and before[-1][0] == first_m - 60_000
    assert float(before[-1][4]) == pytest.approx(float(first_trade["p"]), abs=0.01)  # scaled to the first trade
    # returns are the real klines' returns (moved and scaled, not invented)
    real = k.close[-1000:]
    got = [float(r[4]) for r in before]
    assert max(abs(got[i] / got[i - 1] - real[i] / real[i - 1]) for i in range(1, 1000)) < 1e-6
    asyncio.run(src.run(_Collect(src, every=10**9)))
    rows = src.klines("BTCUSDT", "1m", None, None, 3100)
    assert len(rows) >= 3010 and all(b[0] - a[0] == 60_000 for a, b in zip(rows, rows[1:]))  # contiguous
    h1 = src.klines("BTCUSDT", "1h", None, None, 100)
    assert len(h1) >= 50 and h1[-1][0] <= first_m + 11 * 60_000


def test_fault_injector_is_seeded_and_counts():
    cfg = FaultConfig(drop_prob=0.1, dup_prob=0.05, garbage_prob=0.02, close_after_frames=900, seed=3)

    def decisions():
        st = FaultStats()
        inj = FaultInjector(cfg, st, conn_index=1)
        out = [inj.decide("depth" if i % 3 == 0 else "trade", 0.0, (i, i)) for i in range(1000)]
        return out, st

    a, sa = decisions()
    b, sb = decisions()
    assert a == b and sa == sb
    assert sa.frames == 1000
    assert sa.dropped_depth == sum(1 for x in a if x.send == 0) == len(sa.dropped_ids) > 0
    assert all(i % 3 == 0 for i, _ in sa.dropped_ids)  # only depth diffs are dropped
    assert sa.duplicated == sum(1 for x in a if x.send == 2) > 0
    assert sa.garbage == sum(1 for x in a if x.garbage_before) > 0
    assert sa.closes == 1 and a[899].close_after
    other, _ = (lambda st: ([FaultInjector(dataclasses.replace(cfg, seed=4), st).decide("depth", 0.0)
                             for _ in range(200)], st))(FaultStats())
    assert other != a[:200]
    idle = FaultInjector(FaultConfig(), FaultStats())
    assert all(idle.decide("depth", 99.0).send == 1 for _ in range(100))


def test_replay_pauses_without_subscribers_and_starts_on_snapshot(binance_recording):
    async def main():
        src = ReplaySource(binance_recording, speed=0)
        async with LocalVenue(src, start_on="snapshot") as v, aiohttp.ClientSession() as s:
            async with s.ws_connect(v.ws_url + "/stream?streams=btcusdt@depth@100ms") as ws:
                await asyncio.sleep(0.2)
                assert src.position == 0  # subscribed, but no snapshot fetched yet
                st, d = await _get(s, v.rest_url + "/api/v3/depth?symbol=BTCUSDT&limit=1000")
                assert d["lastUpdateId"] == 50093239218 and len(d["bids"]) == 1000
                msg = orjson.loads((await ws.receive()).data)
                assert msg["stream"] == "btcusdt@depth@100ms"
            await asyncio.sleep(0.2)
            pos = src.position
            await asyncio.sleep(0.2)
            assert src.position == pos < len(src.frames)  # nobody listens: the replay clock stands still

    run(main())


def test_ws_request_replies_as_binance_documents():
    from daemon.venue.server import ws_request
    streams: set[str] = set()
    props = {"combined": False}

    def req(obj) -> dict:
        return ws_request(obj if isinstance(obj, (str, bytes)) else orjson.dumps(obj), streams, props)

    assert req({"method": "SUBSCRIBE", "params": ["btcusdt@trade", "btcusdt@depth@100ms"], "id": 1}) == \
        {"result": None, "id": 1}
    assert req({"method": "LIST_SUBSCRIPTIONS", "id": "a1-b2"}) == \
        {"result": ["btcusdt@depth@100ms", "btcusdt@trade"], "id": "a1-b2"}
    assert req({"method": "UNSUBSCRIBE", "params": ["btcusdt@depth@100ms"], "id": None}) == {"result": None, "id": None}
    assert streams == {"btcusdt@trade"}
    assert req({"method": "GET_PROPERTY", "params": ["combined"], "id": 2}) == {"result": False, "id": 2}
    assert req({"method": "SET_PROPERTY", "params": ["combined", True], "id": 3}) == {"result": None, "id": 3}
    assert props == {"combined": True}

    def code(obj) -> tuple[int, str, object]:
        r = req(obj)
        assert set(r) == {"error", "id"} and set(r["error"]) == {"code", "msg"}, r
        return r["error"]["code"], r["error"]["msg"], r["id"]

    assert code("{not json")[0] == 3 and code("{not json")[1].startswith("Invalid JSON")
    c, msg, rid = code({"method": "SUBSCRIB", "params": [], "id": 4})
    assert (c, rid) == (2, 4) and "unknown variant `SUBSCRIB`" in msg and "`LIST_SUBSCRIPTIONS`" in msg
    assert code({"params": [], "id": 5})[:2] == (2, "Invalid request: missing field `method`")
    for bad_id in (1.5, True, "x" * 37, "no spaces", [1]):
        assert code({"method": "LIST_SUBSCRIPTIONS", "id": bad_id}) == \
            (2, "Invalid request: request ID must be an unsigned integer", None), bad_id
    assert code({"method": "SUBSCRIBE", "params": "btcusdt@trade", "id": 6})[0] == 2
    c, msg, _ = code({"method": "SUBSCRIBE", "params": ["btcusdt@kline_1m"], "id": 7})
    assert c == 2 and "btcusdt@kline_1m" in msg
    assert code({"method": "LIST_SUBSCRIPTIONS", "params": ["x"], "id": 8})[:2] == \
        (2, "Invalid request: too many parameters")
    assert code({"method": "GET_PROPERTY", "params": ["speed"], "id": 9})[:2] == (0, "Unknown property")
    assert code({"method": "SET_PROPERTY", "params": ["combined", "yes"], "id": 10})[:2] == \
        (1, "Invalid value type: expected Boolean")
    assert code({"method": "GET_PROPERTY", "params": [3], "id": 11})[0] == 2
    assert code([1, 2])[0] == 2
    assert streams == {"btcusdt@trade"} and props == {"combined": True}  # refused requests changed nothing


def test_raw_ws_with_an_id_path_subscribes_lists_and_switches_envelope():
    """The shape third-party clients use: ``/ws/<id>`` (or ``/ws``), then SUBSCRIBE; a real websocket client."""
    import websockets

    async def main():
        async with LocalVenue(SimulatorSource(["BTCUSDT"], SIM_CFG)) as v:
            for path in ("/ws/3f9c2a77", "/ws"):
                async with websockets.connect(v.ws_url + path) as ws:
                    await ws.send(orjson.dumps({"method": "SUBSCRIBE", "params": ["btcusdt@trade"], "id": 1}).decode())
                    assert orjson.loads(await ws.recv()) == {"result": None, "id": 1}
                    data = orjson.loads(await ws.recv())
                    assert data["e"] == "trade" and "stream" not in data  # raw: bare payload
                    await ws.send('{"method": "LIST_SUBSCRIPTIONS", "id": 2}')
                    await ws.send('{"method": "SET_PROPERTY", "params": ["combined", true], "id": 3}')
                    await ws.send("{oops")
                    replies, frames = {}, []
                    while len(replies) < 3 or not frames or "stream" not in frames[-1]:
                        m = orjson.loads(await ws.recv())
                        if "id" in m:
                            replies[m["id"]] = m
                        else:
                            frames.append(m)
                    assert replies[2] == {"result": ["btcusdt@trade"], "id": 2}
                    assert replies[3] == {"result": None, "id": 3}
                    assert replies[None]["error"]["code"] == 3
                    assert frames[-1]["stream"] == "btcusdt@trade" and frames[-1]["data"]["e"] == "trade"
                    await ws.send('{"method": "UNSUBSCRIBE", "params": ["btcusdt@trade"], "id": 4}')
                    while (m := orjson.loads(await ws.recv())).get("id") != 4:
                        pass
                    assert m == {"result": None, "id": 4} and not any(c.streams for c in v.clients)
            assert v.stats.ws_errors == {3: 2}  # counted refusals
            async with websockets.connect(v.ws_url + "/stream") as ws:  # combined, nothing in the URL
                await ws.send('{"method": "SUBSCRIBE", "params": ["btcusdt@depth@100ms"], "id": 9}')
                assert orjson.loads(await ws.recv()) == {"result": None, "id": 9}
                assert orjson.loads(await ws.recv())["stream"] == "btcusdt@depth@100ms"
            async with aiohttp.ClientSession() as s, s.get(v.rest_url + "/ws/btcusdt@nonsense") as r:
                assert r.status == 400  # a stream-shaped name the venue does not serve: a clear error

    run(main())


def test_server_pings_answers_pings_and_drops_a_client_that_never_pongs():
    async def main():
        async with LocalVenue(SimulatorSource(["BTCUSDT"], SIM_CFG), ping_interval_s=0.1, pong_timeout_s=0.5) as v, \
                aiohttp.ClientSession() as s:
            async with s.ws_connect(v.ws_url + "/ws", autoping=False) as ws:
                await ws.ping(b"hello")
                pings = 0
                got_pong = False
                while True:  # never answer the venue's pings
                    msg = await ws.receive()
                    if msg.type == aiohttp.WSMsgType.PING:
                        pings += 1
                    elif msg.type == aiohttp.WSMsgType.PONG:
                        got_pong = msg.data == b"hello"
                    elif msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING):
                        break
                assert got_pong and pings >= 3 and v.stats.pong_timeouts == 1
            async with s.ws_connect(v.ws_url + "/ws") as ws:  # aiohttp answers pings while it reads: stays open
                reader = asyncio.create_task(ws.receive())
                await asyncio.sleep(1.2)
                assert not ws.closed and not reader.done() and v.stats.pong_timeouts == 1 and len(v.clients) == 1
                reader.cancel()

    run(main())


def test_rest_trades_tickers_and_klines_time_errors():
    async def main():
        async with LocalVenue(SimulatorSource(["BTCUSDT", "ETHUSDT"], SIM_CFG)) as v, aiohttp.ClientSession() as s:
            base = v.rest_url + "/api/v3"
            st, px = await _get(s, base + "/ticker/price?symbol=BTCUSDT")  # before any trade: the last bar's close
            assert st == 200 and set(px) == {"symbol", "price"} and float(px["price"]) > 0
            await asyncio.sleep(0.6)
            st, rows = await _get(s, base + "/trades?symbol=BTCUSDT")
            assert st == 200 and 1 <= len(rows) <= 500
            assert set(rows[0]) == {"id", "price", "qty", "quoteQty", "time", "isBuyerMaker", "isBestMatch"}
            assert [r["id"] for r in rows] == sorted(r["id"] for r in rows)
            st, last2 = await _get(s, base + "/trades?symbol=BTCUSDT&limit=2")
            assert last2 == rows[-2:] or last2[-1]["id"] > rows[-1]["id"]  # the most recent ones
            st, px = await _get(s, base + "/ticker/price?symbol=BTCUSDT")
            st2, rows = await _get(s, base + "/trades?symbol=BTCUSDT&limit=1")
            assert px["price"] == rows[-1]["price"] or rows[-1]["id"] > last2[-1]["id"]
            st, allpx = await _get(s, base + "/ticker/price")
            assert sorted(x["symbol"] for x in allpx) == ["BTCUSDT", "ETHUSDT"]
            st, info = await _get(s, base + '/exchangeInfo?symbols=["ETHUSDT","BTCUSDT"]')
            assert st == 200 and sorted(x["symbol"] for x in info["symbols"]) == ["BTCUSDT", "ETHUSDT"]
            st, some = await _get(s, base + '/ticker/bookTicker?symbols=["ETHUSDT"]')
            assert st == 200 and [x["symbol"] for x in some] == ["ETHUSDT"]
            assert float(some[0]["bidPrice"]) < float(some[0]["askPrice"])
            for q, code in (("/trades?symbol=BTCUSDT&limit=1001", -1130), ("/trades", -1102),
                            ("/ticker/price?symbol=NOPE", -1121), ('/ticker/price?symbols=["NOPE"]', -1121),
                            ("/ticker/bookTicker?symbols=BTCUSDT", -1100),
                            ("/klines?symbol=BTCUSDT&interval=1m&startTime=2000&endTime=1000", -1023)):
                st, e = await _get(s, base + q)
                assert st == 400 and e["code"] == code, q

    run(main())
