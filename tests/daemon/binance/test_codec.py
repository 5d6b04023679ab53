"""Binance codec: the real recording decodes completely and exactly; bad input is a labelled DecodeError."""
from __future__ import annotations

import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import daemon.binance.codec as binance
from daemon.binance.codec import DecodeError, FrameDecoder, decode_frame, parse_depth_snapshot, parse_exchange_info, parse_klines, stream_names
from market.filters import SymbolFilters
from market.events import BookTicker, DepthSnapshot, DepthUpdate, Trade
from daemon.recording import iter_recording


@pytest.fixture(scope="module")
def frames(binance_recording):
    return list(iter_recording(binance_recording))


def test_real_recording_decodes_completely(frames):
    kinds: dict[type, list] = {DepthUpdate: [], Trade: [], BookTicker: [], DepthSnapshot: []}
    for ns, raw in frames:
        ev = decode_frame(raw, ns)
        kinds[type(ev)].append(ev)
    assert [len(kinds[k]) for k in (DepthUpdate, Trade, BookTicker, DepthSnapshot)] == [6495, 19904, 73174, 1]
    depth = kinds[DepthUpdate]
    assert all(b.first_id == a.final_id + 1 for a, b in zip(depth, depth[1:]))  # README: continuous
    assert all(d.prev_final_id == -1 for d in depth)  # spot: no pu
    trades = kinds[Trade]
    assert all(b.trade_id == a.trade_id + 1 for a, b in zip(trades, trades[1:]))
    snap = kinds[DepthSnapshot][0]
    assert snap.symbol == "" and snap.last_update_id == 50093239218 and len(snap.bids) == 1000


def test_values_equal_float_of_the_wire_strings(frames):
    """Same float as Python's float(str) for every price/size and ms->ns times, checked against orjson-free
    json.loads on a sample of frames of each kind."""
    seen = set()
    for ns, raw in frames[:3000]:
        obj = json.loads(raw)
        ev = decode_frame(raw, ns)
        d = obj.get("data", obj)
        assert ev.ts_recv == ns
        if isinstance(ev, DepthUpdate):
            assert ev.bids == [(float(p), float(q)) for p, q in d["b"]]
            assert ev.asks == [(float(p), float(q)) for p, q in d["a"]]
            assert (ev.first_id, ev.final_id, ev.ts_event, ev.symbol) == (d["U"], d["u"], d["E"] * 10**6, d["s"])
        elif isinstance(ev, Trade):
            assert (ev.price, ev.qty, ev.trade_id, ev.is_buyer_maker, ev.ts_event) == (
                float(d["p"]), float(d["q"]), d["t"], d["m"], d["T"] * 10**6)
        elif isinstance(ev, BookTicker):
            assert (ev.bid_price, ev.bid_qty, ev.ask_price, ev.ask_qty, ev.update_id) == (
                float(d["b"]), float(d["B"]), float(d["a"]), float(d["A"]), d["u"])
        elif isinstance(ev, DepthSnapshot):
            assert ev.bids == [(float(p), float(q)) for p, q in d["bids"]]
        seen.add(type(ev))
    assert seen == {DepthUpdate, Trade, BookTicker, DepthSnapshot}


def test_fast_and_slow_paths_agree(frames):
    for ns, raw in frames[:2000:7]:
        assert binance._decode_slow(raw, ns) == decode_frame(raw, ns)
        assert decode_frame(raw.decode(), ns) == decode_frame(raw, ns)  # str frames (websockets text)


def test_futures_depth_aggtrade_and_bookticker():
    depth = {"stream": "btcusdt@depth@100ms", "data": {
        "e": "depthUpdate", "E": 1700000000123, "T": 1700000000120, "s": "BTCUSDT", "U": 100, "u": 105, "pu": 99,
        "b": [["37000.10", "1.5"]], "a": [["37000.20", "0"]]}}
    ev = decode_frame(json.dumps(depth), 7)
    assert ev == DepthUpdate("BTCUSDT", 100, 105, 99, [(37000.1, 1.5)], [(37000.2, 0.0)], 1700000000123 * 10**6, 7)
    agg = {"e": "aggTrade", "E": 2, "s": "BTCUSDT", "a": 555, "p": "37000.1", "q": "0.01", "f": 1, "l": 2,
           "T": 1, "m": False}
    assert decode_frame(json.dumps({"stream": "btcusdt@aggTrade", "data": agg}), 3) == Trade(
        "BTCUSDT", 555, 37000.1, 0.01, False, 10**6, 3)
    tick = {"e": "bookTicker", "u": 400900217, "E": 1568014460893, "T": 1568014460891, "s": "BNBUSDT",
            "b": "25.35190000", "B": "31.21000000", "a": "25.36520000", "A": "40.66000000"}
    assert decode_frame(json.dumps(tick), 1) == BookTicker("BNBUSDT", 400900217, 25.3519, 31.21, 25.3652, 40.66, 1)


def test_unknown_but_valid_frames_are_none():
    assert decode_frame(b'{"result":null,"id":1}', 0) is None
    assert decode_frame(b'{"stream":"btcusdt@kline_1m","data":{"e":"kline","E":1,"s":"BTCUSDT","k":{}}}', 0) is None
    assert decode_frame(b'{"stream":"btcusdt@depth5","data":{"lastUpdateId":1,"bids":[],"asks":[]}}', 0) is None


def _depth(b='[["100.0","1.0"]]', a='[["101.0","2.0"]]', **over):
    fields = {"e": '"depthUpdate"', "E": "1", "s": '"BTCUSDT"', "U": "1", "u": "2", "b": b, "a": a, **over}
    body = ",".join(f'"{k}":{v}' for k, v in fields.items() if v is not None)
    return ('{"stream":"btcusdt@depth@100ms","data":{%s}}' % body).encode()


def _trade(p='"100.0"', q='"1.0"', **over):
    fields = {"e": '"trade"', "E": "1", "s": '"BTCUSDT"', "t": "5", "p": p, "q": q, "T": "1", "m": "true", **over}
    body = ",".join(f'"{k}":{v}' for k, v in fields.items() if v is not None)
    return ('{"stream":"btcusdt@trade","data":{%s}}' % body).encode()


@pytest.mark.parametrize("raw,reason", [
    (b'{"stream":"btcusdt@trade","data":{"e":"trade"', "json"),
    (b"not json at all", "json"),
    (b"", "json"),
    (b'{"stream":"btcusdt@trade","data":{"e":"tr\xffade"}}', "json"),  # invalid UTF-8
    (b"[1, 2, 3]", "not_object"),
    (b'{"stream":"btcusdt@trade","data":[1]}', "envelope"),
    (_depth(b='[["NaN","1.0"]]'), "nan"),
    (_depth(a='[["101.0","nan"]]'), "nan"),
    (_depth(b='[["Infinity","1.0"]]'), "inf"),
    (_depth(b='[["100.0","-1.0"]]'), "negative"),
    (_depth(b='[["-100.0","1.0"]]'), "negative"),
    (_depth(b='[["100.0","1e13"]]'), "absurd"),
    (_depth(b='[["1e300","1.0"]]'), "absurd"),
    (_depth(b='[["0","1.0"]]'), "zero"),
    (_depth(u=None), "missing_field"),
    (_depth(s=None), "missing_field"),
    (_depth(u='"abc"'), "type"),
    (_depth(s="12"), "type"),
    (_depth(b='"100.0"'), "type"),
    (_depth(b='[["100.0","1.0","3"]]'), "shape"),
    (_depth(b='[["1_000.0","1.0"]]'), "type"),  # float() would accept this; the wire never has it
    (_depth(U="9"), "ids"),  # U > u
    (_trade(p='"0"'), "zero"),
    (_trade(p='"-5"'), "negative"),
    (_trade(q='"0"'), "zero"),
    (_trade(p='"NaN"'), "nan"),
    (_trade(t=None), "missing_field"),
    (_trade(m='"maybe"'), "type"),
    (b'{"e":"depthUpdate","E":1,"s":"X","U":1,"u":2,"b":[["1","x"]],"a":[]}', "type"),  # bare payload path
    (b'{"lastUpdateId":1,"bids":[["1","-2"]],"asks":[]}', "negative"),
])
def test_bad_input_is_a_labelled_decode_error(raw, reason):
    with pytest.raises(DecodeError) as ei:
        decode_frame(raw, 0)
    assert ei.value.reason == reason, str(ei.value)


def test_frame_decoder_counts_drops(frames):
    fd = FrameDecoder()
    for ns, raw in frames[:50]:
        assert fd.decode(raw, ns) is not None
    assert fd.decode(b"garbage", 1) is None
    assert fd.decode(_depth(b='[["NaN","1.0"]]'), 1) is None
    assert fd.decode(b'{"result":null,"id":1}', 1) is None
    assert fd.stats == {"decoded": 50, "unknown": 1, "rejected": {"json": 1, "nan": 1}}


def test_mutated_real_frames_never_raise_anything_but_decode_error(frames):
    sample = [raw for _, raw in frames[:500]]

    @settings(max_examples=300, deadline=None)
    @given(i=st.integers(0, len(sample) - 1), cut=st.integers(0, 2000), junk=st.binary(max_size=8),
           skip=st.integers(0, 4))
    def check(i, cut, junk, skip):
        raw = sample[i]
        mutated = raw[:cut] + junk + raw[cut + skip:]
        try:
            ev = decode_frame(mutated, 1)
        except DecodeError as e:
            assert e.reason
        else:
            for p, q in getattr(ev, "bids", []) + getattr(ev, "asks", []):
                assert 0 < p < math.inf and 0 <= q <= binance.MAX_QTY

    check()


def test_parse_depth_snapshot(frames):
    ns, raw = next((ns, raw) for ns, raw in frames if raw.startswith(b'{"lastUpdateId"'))
    s = parse_depth_snapshot(raw, "BTCUSDT", ns)
    assert (s.symbol, s.last_update_id, s.ts_recv) == ("BTCUSDT", 50093239218, ns)
    assert s.bids[0] == (61837.63, 3.78826) and len(s.asks) == 1000
    with pytest.raises(DecodeError, match="negative"):
        parse_depth_snapshot(b'{"lastUpdateId":1,"bids":[["1","-1"]],"asks":[]}', "X", 0)
    with pytest.raises(DecodeError) as ei:
        parse_depth_snapshot(b'{"bids":[],"asks":[]}', "X", 0)
    assert ei.value.reason == "missing_field"
    with pytest.raises(DecodeError) as ei:
        parse_depth_snapshot(b"<html>502</html>", "X", 0)
    assert ei.value.reason == "json"


EXCHANGE_INFO = {"timezone": "UTC", "symbols": [
    {"symbol": "BTCUSDT", "status": "TRADING", "filters": [
        {"filterType": "PRICE_FILTER", "minPrice": "0.01000000", "maxPrice": "1000000.00000000",
         "tickSize": "0.01000000"},
        {"filterType": "LOT_SIZE", "minQty": "0.00001000", "maxQty": "9000.00000000", "stepSize": "0.00001000"},
        {"filterType": "ICEBERG_PARTS", "limit": 10},
        {"filterType": "NOTIONAL", "minNotional": "5.00000000", "applyMinToMarket": True,
         "maxNotional": "9000000.00000000", "applyMaxToMarket": False, "avgPriceMins": 5}]},
    {"symbol": "ETHUSDT", "filters": [
        {"filterType": "PRICE_FILTER", "minPrice": "0.01", "maxPrice": "100000", "tickSize": "0.01"},
        {"filterType": "LOT_SIZE", "minQty": "0.0001", "maxQty": "100000", "stepSize": "0.0001"},
        {"filterType": "MIN_NOTIONAL", "minNotional": "10"}]}]}


def test_parse_exchange_info():
    f = parse_exchange_info(json.dumps(EXCHANGE_INFO))
    assert f["BTCUSDT"] == SymbolFilters("BTCUSDT", 0.01, 0.00001, 0.00001, 9000.0, 5.0, 1_000_000.0)
    assert f["ETHUSDT"] == SymbolFilters("ETHUSDT", 0.01, 0.0001, 0.0001, 100000.0, 10.0, 100_000.0)
    broken = json.loads(json.dumps(EXCHANGE_INFO))
    del broken["symbols"][0]["filters"][1]
    with pytest.raises(DecodeError) as ei:
        parse_exchange_info(json.dumps(broken))
    assert ei.value.reason == "missing_filter"
    with pytest.raises(DecodeError):
        parse_exchange_info(b'{"symbols": 5}')


def test_parse_klines():
    rows = [[1723161240000, "61800.00", "61850.00", "61790.00", "61837.63", "12.5", 1723161299999, "772000.1", 321,
             "6.1", "377000.0", "0"],
            [1723161300000, "61837.63", "61900.00", "61837.00", "61890.00", "8.25", 1723161359999, "510000.0", 200,
             "4.0", "247000.0", "0"]]
    bars = parse_klines(json.dumps(rows), "BTCUSDT", "1m")
    assert [b.open_ns for b in bars] == [1723161240000 * 10**6, 1723161300000 * 10**6]
    assert (bars[0].open, bars[0].high, bars[0].low, bars[0].close, bars[0].volume) == (
        61800.0, 61850.0, 61790.0, 61837.63, 12.5)
    assert (bars[0].trades, bars[0].quote_volume, bars[0].taker_buy_volume) == (321, 772000.1, 6.1)
    bad = json.loads(json.dumps(rows))
    bad[0][3] = "61900.00"  # low above open
    with pytest.raises(DecodeError, match="ohlc"):
        parse_klines(json.dumps(bad), "BTCUSDT", "1m")
    with pytest.raises(DecodeError, match="kline_time"):
        parse_klines(json.dumps(rows[::-1]), "BTCUSDT", "1m")
    bad[0][3] = "NaN"
    with pytest.raises(DecodeError) as ei:
        parse_klines(json.dumps(bad), "BTCUSDT", "1m")
    assert ei.value.reason == "nan"
    with pytest.raises(DecodeError):
        parse_klines(b"[[1]]", "BTCUSDT", "1m")


def test_stream_names():
    assert stream_names("BTCUSDT") == ["btcusdt@trade", "btcusdt@depth@100ms"]
    assert stream_names("ethusdt", 1000) == ["ethusdt@trade", "ethusdt@depth"]
    with pytest.raises(ValueError):
        stream_names("BTCUSDT", 250)


def test_decode_error_is_value_error():
    assert issubclass(DecodeError, ValueError)
    e = DecodeError("nan", "at $.b[0][0]")
    assert e.reason == "nan" and "at $.b" in str(e)
    # the decoder refuses what is not a frame with a DecodeError, so the feed's `except ValueError` counts it
    for raw, reason in ((b"1", "not_object"), (b"{not json", "json"), (b'{"stream": 1, "data": {}}', "envelope")):
        with pytest.raises(ValueError) as ei:
            decode_frame(raw, 0)
        assert isinstance(ei.value, DecodeError) and ei.value.reason == reason, (raw, ei.value)
