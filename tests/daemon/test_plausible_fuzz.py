"""Hypothesis: frames with arbitrary numbers in every field through decoder -> guard -> book / bars / oracle.

No exception may escape, and the book's invariants hold after every frame: a SYNCED book holds only finite,
positive prices and sizes, and its best bid is below its best ask."""
from __future__ import annotations

import json
import math

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from market.bars import BarBuilder
from daemon.binance.codec import DecodeError, FrameDecoder, parse_depth_snapshot
from market.book import OrderBook
from daemon.binance.bookcheck import TickerOracle
from market.events import BookTicker, DepthSnapshot, DepthUpdate, Trade
from daemon.plausible import JUMP, FrameGuard

_wild = st.one_of(
    st.integers(-(2**80), 2**80),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from(["NaN", "nan", "Infinity", "-inf", "1e400", "-0", "0", "", "abc", "1e-400", "99999999999"]),
    st.floats().map(repr),  # any float as a decimal string, nan and inf included
    st.none(), st.booleans())
# mostly plausible values so books get synced and bars built, with arbitrary ones mixed in (1 in 8)
def _mostly(good: st.SearchStrategy) -> st.SearchStrategy:
    return st.integers(0, 7).flatmap(lambda k: _wild if k == 7 else good)  # one_of would flatten _wild's branches


_id = _mostly(st.integers(0, 6))
_first_id = _mostly(st.integers(1, 3))  # diffs chain often: U in 1..3, u = U + 0..1 (snapshot ids 0..6)
_bid = _mostly(st.sampled_from(["99.0", "99.5", "100.0", "100.5"]))
_ask = _mostly(st.sampled_from(["101.0", "101.5", "102.0", "100.5"]))
_qty = _mostly(st.sampled_from(["0", "0.5", "1.0", "2.25"]))
_time = _mostly(st.integers(1_700_000_000_000, 1_700_000_300_000))
_recv = st.integers(0, 3).flatmap(  # the local receive clock: an int, but any int64 now and then
    lambda k: st.integers(-(2**63), 2**63 - 1) if k == 3 else st.integers(1_700_000_000 * 10**9, 1_700_000_300 * 10**9))


def _levels(price: st.SearchStrategy) -> st.SearchStrategy:
    good = st.tuples(price, _qty).map(list)
    return st.lists(st.integers(0, 9).flatmap(lambda k: st.lists(_wild, max_size=3) if k == 9 else good), max_size=4)


def _env(stream: str, data: dict) -> bytes:
    return json.dumps({"stream": stream, "data": data}).encode()


_depth = st.builds(lambda E, U, n, b, a: _env("x@depth@100ms", {
    "e": "depthUpdate", "E": E, "s": "X", "U": U, "u": U + n if isinstance(U, int) and isinstance(n, int) else n,
    "b": b, "a": a}), _time, _first_id, _mostly(st.integers(0, 1)), _levels(_bid), _levels(_ask))
_trade = st.builds(lambda E, t, p, q, T, m: _env("x@trade", {"e": "trade", "E": E, "s": "X", "t": t, "p": p,
                                                             "q": q, "T": T, "m": m}),
                   _time, _mostly(st.integers(0, 10**6)), st.one_of(_bid, _ask), _qty, _time, _mostly(st.booleans()))
_ticker = st.builds(lambda u, b, B, a, A: _env("x@bookTicker", {"u": u, "s": "X", "b": b, "B": B, "a": a, "A": A}),
                    _id, _bid, _qty, _ask, _qty)
_snapshot = st.builds(lambda i, b, a: b"SNAP" + json.dumps({"lastUpdateId": i, "bids": b, "asks": a}).encode(),
                      _id, _levels(_bid), _levels(_ask))
_frame = st.integers(0, 9).flatmap(lambda k: (_depth, _depth, _depth, _depth, _trade, _trade, _trade, _ticker,
                                               _snapshot, st.binary(max_size=40))[k])
_frames = st.lists(st.tuples(_frame, _recv), min_size=5, max_size=60)


def _check_book(book: OrderBook) -> None:
    if not book.is_tradeable:
        return
    for side in (book.bid_levels(), book.ask_levels()):
        for p, q in side.items():
            assert math.isfinite(p) and p > 0 and math.isfinite(q) and q > 0, (p, q)
    b, a = book.best_bid(), book.best_ask()
    if b is not None and a is not None:
        assert b[0] < a[0], (b, a)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.booleans(), _frames)
def test_arbitrary_numbers_never_escape_and_never_break_the_book(start_synced, frames):
    dec, guard = FrameDecoder(), FrameGuard(speed=0.0)  # unpaced: receive times here are drawn, not a clock
    book, bars, oracle = OrderBook("X"), BarBuilder("X", ("1m", "5m")), TickerOracle(max_pending=64)
    if start_synced:  # an honest snapshot first, so the arbitrary diffs mostly meet a synced book
        book.on_snapshot(DepthSnapshot("X", 0, [(99.0, 1.0), (98.5, 2.0)], [(101.0, 1.0), (101.5, 3.0)], 0))
    for raw, recv in frames:
        if raw[:4] == b"SNAP":
            try:
                ev = parse_depth_snapshot(raw[4:], "X", recv)
            except DecodeError:
                continue
        else:
            ev = dec.decode(raw, recv)
        if ev is None or guard.check(ev) not in (None, JUMP):
            continue
        if type(ev) is DepthUpdate:
            if book.on_update(ev):
                oracle.after_change(book)
        elif type(ev) is DepthSnapshot:
            book.on_snapshot(ev)
        elif type(ev) is Trade:
            for bar in bars.on_trade(ev):
                assert bar.low <= min(bar.open, bar.close) <= max(bar.open, bar.close) <= bar.high
                assert math.isfinite(bar.volume) and bar.volume >= 0
        elif type(ev) is BookTicker:
            if oracle.on_ticker(book, ev) is False:
                book.mark_stale("oracle_mismatch")
        _check_book(book)
        bars.on_time(recv)
    event(f"book synced at some point: {book.stats.snapshots > 0}; diffs applied: {book.stats.applied > 0}")
    event(f"bars closed: {bars.stats.bars_closed > 0}")
