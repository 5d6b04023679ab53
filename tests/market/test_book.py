"""OrderBook: Binance's sync procedure on the real stream, gaps/resync, futures pu chaining, invariants."""
from __future__ import annotations

import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from daemon.binance.codec import decode_frame
from market.book import BookState, OrderBook
from market.events import DepthSnapshot, DepthUpdate
from daemon.recording import iter_recording

SYM = "BTCUSDT"


@pytest.fixture(scope="module")
def stream(binance_recording):
    """(snapshot, diffs in arrival order, index in diffs of the first diff that arrived after the snapshot)."""
    diffs, snap, after = [], None, None
    for ns, raw in iter_recording(binance_recording):
        ev = decode_frame(raw, ns)
        if isinstance(ev, DepthUpdate):
            diffs.append(ev)
        elif isinstance(ev, DepthSnapshot):
            snap, after = DepthSnapshot(SYM, ev.last_update_id, ev.bids, ev.asks, ev.ts_recv), len(diffs)
    assert snap is not None
    return snap, diffs, after


def _replay(snap, diffs, after, book=None):
    book = book or OrderBook(SYM)
    for d in diffs[:after]:
        assert book.on_update(d) is False  # buffered: no snapshot yet
    book.on_snapshot(snap)
    for d in diffs[after:]:
        book.on_update(d)
    return book


def _snapshot_of(book: OrderBook) -> DepthSnapshot:
    return DepthSnapshot(book.symbol, book.last_update_id, sorted(book.bid_levels().items(), reverse=True),
                         sorted(book.ask_levels().items()), 0)


def test_real_stream_syncs_and_applies_every_diff(stream):
    snap, diffs, after = stream
    book = OrderBook(SYM)
    assert book.state is BookState.BUFFERING and book.needs_snapshot and not book.is_tradeable
    assert book.best_bid() is None and book.mid() is None
    _replay(snap, diffs, after, book)
    s = book.stats
    # 3 diffs arrive before the snapshot: 2 are covered by it (u <= lastUpdateId), the 3rd bridges it.
    assert (s.buffered, s.dropped_stale, s.applied, s.gaps, s.crossed, s.duplicates) == (3, 2, 6493, 0, 0, 0)
    assert book.state is BookState.SYNCED and book.is_tradeable and not book.needs_snapshot
    assert book.last_update_id == diffs[-1].final_id
    bb, ba = book.best_bid(), book.best_ask()
    assert bb[0] == max(book.bid_levels()) and ba[0] == min(book.ask_levels())
    assert bb[0] < ba[0] and book.spread() == ba[0] - bb[0] and book.mid() == (bb[0] + ba[0]) / 2
    bids, asks = book.depth(10)
    assert bids == sorted(book.bid_levels().items(), reverse=True)[:10]
    assert asks == sorted(book.ask_levels().items())[:10]
    assert all(q > 0 for q in book.bid_levels().values()) and all(q > 0 for q in book.ask_levels().values())


def test_duplicated_diffs_are_ignored_not_gaps(stream):
    snap, diffs, after = stream
    book = OrderBook(SYM)
    book.on_snapshot(snap)
    for d in diffs[after - 1:]:
        assert book.on_update(d) is True
        assert book.on_update(d) is False  # the venue re-sent it
    assert book.stats.duplicates == len(diffs) - after + 1 and book.stats.gaps == 0
    ref = _replay(snap, diffs, after)
    assert book.bid_levels() == ref.bid_levels() and book.ask_levels() == ref.ask_levels()


@pytest.mark.parametrize("drop", [after_offset for after_offset in (5, 1000, 4000)])
def test_gap_marks_stale_until_a_new_snapshot_resyncs(stream, drop):
    snap, diffs, after = stream
    k = after + drop  # this diff is lost on the wire
    ref = OrderBook(SYM)  # a book that saw everything: the venue's truth
    book = OrderBook(SYM)
    for b in (ref, book):
        for d in diffs[:after]:
            b.on_update(d)
        b.on_snapshot(snap)
    for d in diffs[after:k]:
        ref.on_update(d)
        book.on_update(d)
    ref.on_update(diffs[k])
    frozen = (book.last_update_id, book.bid_levels(), book.ask_levels())
    resync_at = k + 300  # the feed fetches a new snapshot some diffs later
    for d in diffs[k + 1:resync_at]:
        assert book.on_update(d) is False  # never applied to a stale book
        ref.on_update(d)
        assert book.state is BookState.STALE and book.needs_snapshot and not book.is_tradeable
    assert (book.last_update_id, book.bid_levels(), book.ask_levels()) == frozen
    assert book.stats.gaps == 1 and book.stats.stale_reasons["gap"] == 1
    assert book.buffered == resync_at - (k + 1)
    # The new snapshot is taken a little *before* the newest buffered diff, as a real REST call would be.
    at = resync_at - 50
    book.on_snapshot(_snapshot_of(_replay(snap, diffs[:at], after)))
    assert book.state is BookState.SYNCED and book.stats.resyncs == 1
    assert book.last_update_id == diffs[resync_at - 1].final_id  # buffered diffs after the snapshot applied
    for d in diffs[resync_at:]:
        assert book.on_update(d) is True
        ref.on_update(d)
    assert book.bid_levels() == ref.bid_levels() and book.ask_levels() == ref.ask_levels()
    assert book.stats.gaps == 1


def test_snapshot_older_than_the_buffer_is_a_gap(stream):
    snap, diffs, after = stream
    book = OrderBook(SYM, max_buffer=100)
    for d in diffs[:after + 500]:  # snapshot arrives late; the buffer kept only the newest 100 diffs
        book.on_update(d)
    assert book.stats.buffer_overflow == after + 400 and book.buffered == 100
    book.on_snapshot(snap)
    assert book.state is BookState.STALE and book.stats.gaps == 1 and book.needs_snapshot
    assert book.stats.applied == 0


def test_mark_stale_drops_the_buffer_and_waits_for_a_snapshot(stream):
    snap, diffs, after = stream
    book = _replay(snap, diffs[:after + 10], after)
    assert book.is_tradeable
    book.mark_stale("disconnect")
    assert book.state is BookState.STALE and book.buffered == 0 and book.stats.stale_reasons["disconnect"] == 1
    assert book.on_update(diffs[after + 10]) is False and book.buffered == 1


# ------------------------------------------------------------------------------------------ synthetic
def _diff(U, u, bids=(), asks=(), pu=-1, sym=SYM):
    return DepthUpdate(sym, U, u, pu, list(bids), list(asks), 0, 0)


def _snap(lid, bids=((99.0, 1.0),), asks=((101.0, 1.0),)):
    return DepthSnapshot(SYM, lid, list(bids), list(asks), 0)


def test_futures_pu_chaining_from_wire_frames():
    def frame(U, u, pu, bids=(), asks=()):
        data = {"e": "depthUpdate", "E": 1, "T": 1, "s": SYM, "U": U, "u": u, "pu": pu,
                "b": [[str(p), str(q)] for p, q in bids], "a": [[str(p), str(q)] for p, q in asks]}
        return decode_frame(json.dumps({"stream": "btcusdt@depth@100ms", "data": data}), 0)

    book = OrderBook(SYM, futures=True)
    assert book.on_update(frame(90, 95, 89, bids=[(98.0, 5.0)])) is False  # buffered, older than snapshot
    assert book.on_update(frame(96, 100, 95, bids=[(98.5, 2.0)])) is False  # buffered, contains lastUpdateId
    book.on_snapshot(_snap(100))
    # futures: drop u < lastUpdateId, first applied has U <= lastUpdateId <= u (u == 100 is applied)
    assert book.stats.dropped_stale == 1 and book.stats.applied == 1 and book.bid_levels() == {99.0: 1.0, 98.5: 2.0}
    assert book.on_update(frame(101, 110, 100, asks=[(101.0, 0.0), (102.0, 3.0)])) is True
    assert book.on_update(frame(115, 120, 110, bids=[(99.5, 1.0)])) is True  # U jumps: fine on futures, pu chains
    assert book.on_update(frame(118, 120, 110)) is False and book.stats.duplicates == 1
    assert book.best_bid() == (99.5, 1.0) and book.best_ask() == (102.0, 3.0) and book.is_tradeable
    assert book.on_update(frame(122, 125, 121, bids=[(99.6, 1.0)])) is False  # pu 121 != 120: gap
    assert book.state is BookState.STALE and book.stats.gaps == 1 and book.best_bid() == (99.5, 1.0)
    # the same U jump on a spot book is a gap
    spot = OrderBook(SYM)
    spot.on_snapshot(_snap(100))
    assert spot.on_update(_diff(101, 110)) is True
    assert spot.on_update(_diff(115, 120)) is False and spot.stats.gaps == 1


def test_first_diff_must_bridge_the_snapshot():
    book = OrderBook(SYM)
    book.on_snapshot(_snap(100))
    assert book.on_update(_diff(103, 110)) is False and book.stats.gaps == 1  # 101..102 missing
    book = OrderBook(SYM)
    book.on_snapshot(_snap(100))
    assert book.on_update(_diff(95, 100)) is False and book.stats.duplicates == 1  # covered by the snapshot
    assert book.on_update(_diff(97, 104, bids=[(99.0, 0.0)])) is True  # U <= 101 <= u
    assert book.bid_levels() == {} and book.best_bid() is None and book.spread() is None


@pytest.mark.parametrize("bids,asks,reason", [
    ([(math.nan, 1.0)], [], "nan"), ([(99.0, math.nan)], [], "nan"), ([], [(101.0, -1.0)], "negative"),
    ([(-99.0, 1.0)], [], "negative"), ([(99.0, math.inf)], [], "inf"), ([(0.0, 1.0)], [], "zero_price"),
])
def test_bad_levels_are_rejected_counted_and_make_the_book_stale(bids, asks, reason):
    book = OrderBook(SYM)
    book.on_snapshot(_snap(100))
    before = (book.bid_levels(), book.ask_levels())
    assert book.on_update(_diff(101, 101, [(98.0, 1.0)] + bids, asks)) is False
    assert book.stats.rejected[reason] == 1 and book.state is BookState.STALE
    assert (book.bid_levels(), book.ask_levels()) == before  # nothing of the bad diff applied


def test_bad_snapshot_is_rejected():
    book = OrderBook(SYM)
    book.on_snapshot(_snap(100, bids=[(99.0, math.nan)]))
    assert book.state is BookState.BUFFERING and book.stats.rejected["snapshot_nan"] == 1
    book.on_snapshot(_snap(100, bids=[(102.0, 1.0)], asks=[(101.0, 1.0)]))
    assert book.state is BookState.BUFFERING and book.stats.rejected["snapshot_crossed"] == 1
    book.on_snapshot(DepthSnapshot("ETHUSDT", 1, [], [], 0))
    assert book.stats.rejected["symbol"] == 1 and book.stats.snapshots == 0


def test_crossed_update_marks_stale_and_is_counted():
    book = OrderBook(SYM)
    book.on_snapshot(_snap(100))
    assert book.on_update(_diff(101, 101, bids=[(101.5, 1.0)])) is True  # applied, but now bid > ask
    assert book.stats.crossed == 1 and book.state is BookState.STALE and not book.is_tradeable
    assert book.on_update(_diff(102, 102, bids=[(101.5, 0.0)])) is False  # stale: buffered, not applied
    locked = OrderBook(SYM)
    locked.on_snapshot(_snap(100))
    locked.on_update(_diff(101, 101, asks=[(99.0, 1.0)]))  # bid == ask is not a tradeable book either
    assert locked.stats.crossed == 1 and not locked.is_tradeable


def test_wrong_symbol_and_bad_ids_are_rejected():
    book = OrderBook(SYM)
    book.on_snapshot(_snap(100))
    assert book.on_update(_diff(101, 101, sym="ETHUSDT")) is False
    assert book.on_update(_diff(105, 101)) is False
    assert book.stats.rejected == {"symbol": 1, "ids": 1} and book.is_tradeable


# ------------------------------------------------------------------------------------------ properties
_price_bid = st.sampled_from([90.0 + i * 0.5 for i in range(20)])  # 90 .. 99.5
_price_ask = st.sampled_from([100.0 + i * 0.5 for i in range(20)])  # 100 .. 109.5
_size = st.sampled_from([0.0, 0.0, 0.001, 0.5, 1.0, 2.25, 1e6])
_side = lambda prices: st.lists(st.tuples(prices, _size), max_size=8)  # noqa: E731


@settings(max_examples=200, deadline=None)
@given(snap_b=_side(_price_bid), snap_a=_side(_price_ask),
       updates=st.lists(st.tuples(_side(_price_bid), _side(_price_ask)), max_size=40), n=st.integers(0, 25))
def test_book_equals_a_naive_dict_model(snap_b, snap_a, updates, n):
    model_b = {p: q for p, q in snap_b if q > 0}
    model_a = {p: q for p, q in snap_a if q > 0}
    book = OrderBook(SYM)
    book.on_snapshot(DepthSnapshot(SYM, 1000, snap_b, snap_a, 0))
    uid = 1000
    for bids, asks in updates:
        assert book.on_update(_diff(uid + 1, uid + 3, bids, asks)) is True
        uid += 3
        for model, levels in ((model_b, bids), (model_a, asks)):
            for p, q in levels:
                if q == 0:
                    model.pop(p, None)
                else:
                    model[p] = q
        assert book.bid_levels() == model_b and book.ask_levels() == model_a
        assert book.best_bid() == (max(model_b.items()) if model_b else None)
        assert book.best_ask() == (min(model_a.items()) if model_a else None)
        assert book.is_tradeable and book.last_update_id == uid
        if model_b and model_a:
            assert book.best_bid()[0] < book.best_ask()[0]
    assert all(q > 0 for q in book.bid_levels().values()) and all(q > 0 for q in book.ask_levels().values())
    assert book.depth(n) == (sorted(model_b.items(), reverse=True)[:n], sorted(model_a.items())[:n])


_any_price = st.sampled_from([95.0 + i * 0.5 for i in range(20)])  # both sides share a range: crossings happen


@settings(max_examples=200, deadline=None)
@given(updates=st.lists(st.tuples(_side(_any_price), _side(_any_price)), min_size=1, max_size=30))
def test_a_crossed_book_is_never_tradeable(updates):
    book = OrderBook(SYM)
    book.on_snapshot(DepthSnapshot(SYM, 0, [], [], 0))
    model_b: dict[float, float] = {}
    model_a: dict[float, float] = {}
    ever_crossed = False
    for i, (bids, asks) in enumerate(updates):
        applied = book.on_update(_diff(i + 1, i + 1, bids, asks))
        assert applied is not ever_crossed  # once stale, nothing more is applied
        if not applied:
            continue
        for model, levels in ((model_b, bids), (model_a, asks)):
            for p, q in levels:
                if q == 0:
                    model.pop(p, None)
                else:
                    model[p] = q
        crossed = bool(model_b and model_a and max(model_b) >= min(model_a))
        ever_crossed = ever_crossed or crossed
        assert book.is_tradeable is not crossed
        if book.is_tradeable and book.best_bid() and book.best_ask():
            assert book.best_bid()[0] < book.best_ask()[0]
    assert book.stats.crossed == int(ever_crossed)
