"""The plausibility guard (daemon/plausible.py), the live bookTicker oracle and the forgeries of venue/faults.py."""
from __future__ import annotations

import asyncio
import dataclasses
import gzip
import math
from collections import Counter

import orjson

from market.bars import BarBuilder
from daemon.binance.codec import FrameDecoder, decode_frame
from market.filters import SymbolFilters
from market.book import BookState, OrderBook
from daemon.binance.bookcheck import check_recording
from daemon.config import FaultConfig, FeedConfig, SimulatorConfig
from market.events import DepthSnapshot, DepthUpdate, Trade
from daemon.binance.feed import BinanceFeed
from daemon.plausible import JUMP, FrameGuard, ReadinessWatch
from daemon.recording import RecordingReader
from daemon.venue.faults import FORGE_KINDS, forge, poison_recording
from daemon.venue.server import LocalVenue, SimulatorSource
from tests.daemon.harness import until as _until

S = 1_000_000_000
T0 = 1_723_161_253 * S


def _trade(tid: int, ts: int, recv: int, price: float = 60_000.0, qty: float = 0.01) -> Trade:
    return Trade("BTCUSDT", tid, price, qty, False, ts, recv)


# ------------------------------------------------------------------------------------------ time
def test_forged_far_future_negative_and_huge_times_are_refused_and_the_stream_goes_on():
    g = FrameGuard()
    assert g.check(_trade(1, T0, T0)) is None
    assert g.check(_trade(2, T0 + 62 * 86_400 * S, T0 + S)) == "time_ahead"
    assert g.check(_trade(3, (2**70) * 1_000_000, T0 + S)) == "time_ahead"
    assert g.check(_trade(4, -1_000_000, T0 + S)) == "time_negative"
    for i in range(5, 50):  # the real stream keeps coming: every trade accepted, no jump
        assert g.check(_trade(i, T0 + i * S // 10, T0 + i * S // 10 + 3_000_000)) is None
    assert g.refused == Counter({("BTCUSDT", "time_ahead"): 2, ("BTCUSDT", "time_negative"): 1})
    assert not g.jumps


def test_a_burst_after_a_delivery_stall_is_not_refused():
    """A stall delays delivery: receive times bunch up, event times keep their spacing. Never refused."""
    g = FrameGuard()
    assert g.check(_trade(1, T0, T0)) is None
    recv = T0 + 20 * S  # 20 s of silence, then everything at once
    for i in range(2, 40):
        assert g.check(_trade(i, T0 + i * S // 2, recv + i * 1000)) is None
    assert not g.refused


def test_a_genuine_venue_clock_jump_is_confirmed_by_later_events_and_reported_once():
    cfg = FeedConfig()
    g = FrameGuard(cfg)
    assert g.check(_trade(1, T0, T0)) is None
    jump = 3 * 3600 * S
    out = [g.check(_trade(i, T0 + jump + i * S, T0 + i * S)) for i in range(2, 2 + cfg.jump_confirm_events + 2)]
    assert out[:cfg.jump_confirm_events - 1] == ["time_ahead"] * (cfg.jump_confirm_events - 1)
    assert out[cfg.jump_confirm_events - 1] is JUMP
    assert out[cfg.jump_confirm_events:] == [None, None]
    assert g.jumps["BTCUSDT"] == 1


def test_speed_scales_the_receive_clock():
    """A simulator at 10x: 1 s of receive time is 10 s of venue time (not refused); at 1x it would be."""
    fast, slow = FrameGuard(speed=10.0), FrameGuard(speed=1.0)
    for g in (fast, slow):
        g.check(_trade(1, T0, T0))
    assert fast.check(_trade(2, T0 + 10 * S, T0 + S)) is None
    assert slow.check(_trade(2, T0 + 10 * S, T0 + S)) == "time_ahead"


# ------------------------------------------------------------------------------------------ sizes, duplicates
def test_sizes_are_checked_against_exchange_filters_and_a_notional_bound():
    f = {"BTCUSDT": SymbolFilters("BTCUSDT", 0.01, 1e-5, 1e-5, 9000.0, 5.0, 1_000_000.0)}
    g = FrameGuard(filters=f)
    assert g.check(_trade(1, T0, T0, qty=9000.0)) is None
    assert g.check(_trade(2, T0, T0, qty=9000.5)) == "trade_qty"
    assert g.check(_trade(3, T0, T0, price=2_000_000.0)) == "trade_price"
    unknown = FrameGuard()  # no filters: the notional bound
    assert unknown.check(_trade(1, T0, T0, qty=1e11)) == "trade_notional"
    absurd = DepthUpdate("BTCUSDT", 10, 12, -1, [(61_000.0, 99_999_999_999.0)], [(61_001.0, 1.0)], T0, T0)
    assert unknown.check(absurd) == "depth_notional"
    snap = DepthSnapshot("BTCUSDT", 9, [(61_000.0, 1.0), (1.0, 5e9)], [(61_001.0, 1.0)], T0)
    assert unknown.check(snap) == "snapshot_notional"


def test_trades_are_deduplicated_by_id_within_a_window():
    g = FrameGuard(dataclasses.replace(FeedConfig(), trade_dedup_window=16))
    assert g.check(_trade(7, T0, T0)) is None
    assert g.check(_trade(7, T0, T0, price=60_600.0)) == "duplicate_trade"
    for i in range(100, 120):
        assert g.check(_trade(i, T0, T0)) is None
    assert g.check(_trade(7, T0, T0)) is None  # fell out of the window (memory stays bounded)


def test_a_forged_copy_of_the_next_diff_is_refused_so_the_real_one_applies():
    book, g = OrderBook("BTCUSDT"), FrameGuard()
    book.on_snapshot(DepthSnapshot("BTCUSDT", 100, [(61_000.0, 1.0)], [(61_001.0, 1.0)], T0))
    forged = DepthUpdate("BTCUSDT", 101, 102, -1, [(61_000.0, 99_999_999_999.0)], [], T0, T0)
    real = DepthUpdate("BTCUSDT", 101, 102, -1, [(61_000.0, 2.0)], [], T0, T0)
    for ev in (forged, real):
        if g.check(ev) is None:
            book.on_update(ev)
    assert book.best_bid() == (61_000.0, 2.0) and book.stats.duplicates == 0
    assert g.refused[("BTCUSDT", "depth_notional")] == 1


def test_a_synced_book_refuses_a_stale_snapshot_under_the_current_id():
    book = OrderBook("BTCUSDT")
    book.on_snapshot(DepthSnapshot("BTCUSDT", 100, [(61_000.0, 1.0)], [(61_001.0, 1.0)], T0))
    book.on_update(DepthUpdate("BTCUSDT", 101, 102, -1, [(61_000.5, 3.0)], [], T0, T0))
    book.on_snapshot(DepthSnapshot("BTCUSDT", 102, [(61_000.0, 1.0)], [(61_001.0, 1.0)], T0))  # stale levels
    assert book.best_bid() == (61_000.5, 3.0) and book.state is BookState.SYNCED
    assert book.stats.rejected["snapshot_not_newer"] == 1


# ------------------------------------------------------------------------------------------ bars, readiness
def test_a_confirmed_jump_restarts_the_bars_instead_of_filling_flat_bars():
    b = BarBuilder("BTCUSDT", ("1m",))
    b.on_trade(_trade(1, T0, T0))
    b.gap()
    closed = b.on_trade(_trade(2, T0 + 3 * 86_400 * S, T0 + S))
    assert len(closed) == 1 and b.stats.empty_bars == 0 and b.stats.gap_resets == 1
    plain = BarBuilder("BTCUSDT", ("1m",))  # without the jump signal, 3 days of quiet are filled
    plain.on_trade(_trade(1, T0, T0))
    assert len(plain.on_trade(_trade(2, T0 + 3 * 86_400 * S, T0 + S))) > 4000


def test_readiness_turns_false_when_bars_stall_or_most_trades_are_late():
    w = ReadinessWatch(bar_stall_s=150, max_late_ratio=0.5, min_trades=20)
    assert w.observe(0, 0, 0, 0) == (True, "")
    assert w.observe(60 * S, 1, 100, 0) == (True, "")
    assert w.observe(200 * S, 1, 150, 0) == (True, "")  # 140 s without a bar: still within bar_stall_s
    assert w.observe(220 * S, 1, 160, 0) == (False, "bars_stalled")
    assert w.observe(230 * S, 2, 170, 0) == (True, "")
    assert w.observe(240 * S, 2, 171, 100) == (False, "late_trades")
    assert w.observe(250 * S, 3, 210, 101) == (True, "")


# ------------------------------------------------------------------------------------------ the recording
def _bars_and_levels(lines, guarded: bool) -> tuple[list, float, FrameGuard]:
    """1m bars from the trades the guard lets through, and the largest best-level size a synced book showed."""
    dec, g = FrameDecoder(), FrameGuard()
    bars, built, book, max_level = BarBuilder("BTCUSDT", ("1m",)), [], OrderBook("BTCUSDT"), 0.0
    for recv, raw in lines:
        ev = dec.decode(raw, recv)
        if ev is None or (guarded and g.check(ev) not in (None, JUMP)):
            continue
        if type(ev) is Trade:
            built += bars.on_trade(ev)
        elif type(ev) is DepthUpdate:
            if book.on_update(ev):
                max_level = max(max_level, book.best_bid()[1], book.best_ask()[1])
        elif type(ev) is DepthSnapshot:
            book.on_snapshot(ev)
    return built, max_level, g


def test_poisoned_recording_book_check_matches_every_oracle_frame_and_bars_are_unchanged(binance_recording,
                                                                                       tmp_path):
    """Forgeries of every kind woven into the real recording (written as a recording file): ``book-check``
    still applies the same diffs and matches every bookTicker frame; every forgery is refused and counted; the 1m
    bars built from the accepted trades are exactly the clean recording's (so every bar is still decided on),
    and no phantom level ever reaches a synced book. Without the guard the same input is poisoned."""
    forged: Counter[str] = Counter()
    path = tmp_path / "poisoned.gz"
    with gzip.open(path, "wb") as f:
        for recv, raw, kind in poison_recording(RecordingReader(binance_recording), every=50):
            if kind:
                forged[kind] += 1
            f.write(b"%d %s\n" % (recv, raw))
    assert set(forged) == set(FORGE_KINDS) | {"stale_snapshot"}

    ck, _io = check_recording([path])
    assert ck.summary() == {"applied": 6493, "checked": 1072, "matched": 1072, "mismatched": 0, "gaps": 0}
    assert ck.books["BTCUSDT"].stats.rejected["snapshot_not_newer"] == forged["stale_snapshot"]
    refused = ck.guard.refused
    assert sum(refused.values()) == sum(n for k, n in forged.items() if k != "stale_snapshot")
    assert refused[("BTCUSDT", "depth_notional")] == forged["absurd_diff"]
    assert refused[("BTCUSDT", "duplicate_trade")] == forged["dup_trade_id"]
    assert refused[("BTCUSDT", "time_negative")] == forged["negative_time"]
    assert refused[("BTCUSDT", "time_ahead")] == forged["future_time"] + forged["huge_time"]

    clean_bars, clean_max, _ = _bars_and_levels(RecordingReader(binance_recording), guarded=True)
    bars, max_level, _ = _bars_and_levels(RecordingReader([path]), guarded=True)
    assert len(bars) >= 10  # the recording spans ~12 minutes
    assert [(b.open_ns, b.close, b.volume, b.trades) for b in bars] == \
        [(b.open_ns, b.close, b.volume, b.trades) for b in clean_bars]
    assert max_level == clean_max < 1e6

    raw_bars, raw_max, _ = _bars_and_levels(RecordingReader([path]), guarded=False)
    assert raw_max >= 99_999_999_999.0 and len(raw_bars) != len(bars)


# ------------------------------------------------------------------------------------------ loopback
FAST = dataclasses.replace(FeedConfig(), reconnect_initial_s=0.05, reconnect_max_s=0.2, stale_after_s=2.0)
SIM = SimulatorConfig(seed=11, trades_per_s=80.0, depth_levels=20)


def test_feed_over_loopback_refuses_every_forgery_and_the_oracle_checks_the_live_book():
    async def main():
        faults = FaultConfig(forge_prob=0.05, seed=5)
        async with LocalVenue(SimulatorSource(["BTCUSDT"], SIM), faults) as venue:
            phantom = []
            feed: BinanceFeed

            def on_event(ev):
                book = feed.books["BTCUSDT"]
                if book.is_tradeable:
                    phantom.extend(q for q in (book.best_bid()[1], book.best_ask()[1]) if q > 1e6)

            feed = BinanceFeed(["BTCUSDT"], venue.ws_url, venue.rest_url, FAST, on_event, seed=1)
            task = asyncio.create_task(feed.run())
            await _until(lambda: sum(venue.stats.faults.forged.values()) >= 40 and feed.stats.oracle_checked >= 50)
            feed.stop()
            await asyncio.wait_for(task, 5)
        forged = venue.stats.faults.forged
        assert set(forged) == set(FORGE_KINDS)
        assert sum(feed.stats.refused.values()) == sum(forged.values())
        assert feed.stats.oracle_mismatches == 0 and feed.stats.gaps == 0 and not phantom

    asyncio.run(asyncio.wait_for(main(), 60))


def test_a_lying_snapshot_is_caught_live_and_resynced():
    """The venue serves the first snapshot's levels under the current id after reconnects: the book loads them
    (the ids chain); the live checks (bookTicker oracle, or crossed levels) catch it and the book resyncs."""
    async def main():
        faults = FaultConfig(stale_snapshot_prob=0.5, close_after_frames=400, seed=3)
        async with LocalVenue(SimulatorSource(["BTCUSDT"], SIM), faults) as venue:
            feed = BinanceFeed(["BTCUSDT"], venue.ws_url, venue.rest_url, FAST, lambda ev: None, seed=1)
            task = asyncio.create_task(feed.run())
            await _until(lambda: venue.stats.faults.stale_snapshots >= 2 and feed.books["BTCUSDT"].is_tradeable
                         and feed.stats.oracle_checked > 20, timeout=40)
            feed.stop()
            await asyncio.wait_for(task, 5)
        book = feed.books["BTCUSDT"]
        caught = book.stats.stale_reasons["oracle_mismatch"] + book.stats.stale_reasons["crossed"]
        assert caught >= venue.stats.faults.stale_snapshots - 1  # the last one may still be in flight
        assert book.stats.resyncs >= caught

    asyncio.run(asyncio.wait_for(main(), 60))


def test_feed_oracle_mismatch_marks_the_book_stale_and_asks_for_a_snapshot():
    """A snapshot that lies about its update id (right id, wrong best bid size): the diffs chain onto it, the
    bookTicker of the same id disagrees: the book goes STALE (reason oracle_mismatch) and a resync starts."""
    events, fetches = [], []
    feed = BinanceFeed(["BTCUSDT"], "ws://127.0.0.1:9", "http://127.0.0.1:9", FAST, on_event=events.append)
    feed._start_fetch = fetches.append  # the resync request (no REST server here)
    book = feed.books["BTCUSDT"]
    book.on_snapshot(DepthSnapshot("BTCUSDT", 100, [(61_000.0, 5.0)], [(61_001.0, 1.0)], T0))  # truth: 1.0 bid

    def depth(U, u, bids):
        return orjson.dumps({"stream": "btcusdt@depth@100ms", "data": {
            "e": "depthUpdate", "E": T0 // 1_000_000, "s": "BTCUSDT", "U": U, "u": u, "b": bids, "a": []}})

    def ticker(u, bq):
        return orjson.dumps({"stream": "btcusdt@bookTicker", "data": {
            "u": u, "s": "BTCUSDT", "b": "61000.0", "B": bq, "a": "61001.0", "A": "1.0"}})

    async def main():
        await feed._on_frame(ticker(101, "1.0"), T0)  # ahead of the book: waits for the diff ending at 101
        await feed._on_frame(depth(101, 101, [["60999.0", "2.0"]]), T0)
        assert book.state is BookState.STALE and fetches == ["BTCUSDT"]

    asyncio.run(main())
    assert feed.stats.oracle_checked == 1 and feed.stats.oracle_mismatches == 1
    assert book.stats.stale_reasons["oracle_mismatch"] == 1
    assert [e.reason for e in events if type(e).__name__ == "BookStatus"] == ["oracle_mismatch"]


def test_forge_builds_frames_the_decoder_accepts():
    """Each forgery is well formed (it reaches the guard; a decoder refusal would test nothing)."""
    depth = (b'{"stream":"btcusdt@depth@100ms","data":{"e":"depthUpdate","E":1723161255208,"s":"BTCUSDT",'
             b'"U":5,"u":7,"b":[["61737.63","1.0"]],"a":[]}}')
    trade = (b'{"stream":"btcusdt@trade","data":{"e":"trade","E":1723161255208,"s":"BTCUSDT","t":9,'
             b'"p":"61737.63","q":"0.01","T":1723161255207,"m":true}}')
    for kind in FORGE_KINDS:
        raw = forge(kind, depth if kind == "absurd_diff" else trade)
        ev = decode_frame(raw, T0)
        assert ev is not None, kind
    assert decode_frame(forge("absurd_diff", depth), T0).bids[0][1] == 99_999_999_999.0
    assert not math.isnan(orjson.loads(forge("dup_trade_id", trade))["data"]["t"])
