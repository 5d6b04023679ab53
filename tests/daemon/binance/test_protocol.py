"""The sans-I/O market-data protocol alone: the real recording's raw frames in (as the live feed hands them, the
REST snapshot body answering the protocol's request), events and snapshot requests out; at every bookTicker
frame the oracle checks, the protocol's book is the book rebuilt independently here from the same frames."""
from __future__ import annotations

import orjson
import pytest

from daemon.binance.codec import decode_frame
from daemon.binance.protocol import MarketDataProtocol, SnapshotNeeded
from daemon.recording import iter_recording
from market.book import BookState, OrderBook
from market.events import BookStatus, BookTicker, DepthSnapshot, DepthUpdate, Trade

SYM = "BTCUSDT"


@pytest.fixture(scope="module")
def frames(binance_recording):
    return list(iter_recording(binance_recording))


def _is_snapshot_body(raw: bytes) -> bool:
    return raw.startswith(b'{"lastUpdateId"')


class Reference:
    """The book rebuilt the plain way (decode_frame -> OrderBook), with nothing of the protocol."""

    def __init__(self) -> None:
        self.book = OrderBook(SYM)

    def feed(self, raw: bytes, ns: int) -> None:
        ev = decode_frame(raw, ns)
        if isinstance(ev, DepthSnapshot):
            self.book.on_snapshot(ev)
        elif isinstance(ev, DepthUpdate):
            self.book.on_update(ev)

    def snapshot(self, ns: int) -> DepthSnapshot:
        b = self.book
        return DepthSnapshot(SYM, b.last_update_id, sorted(b.bid_levels().items(), reverse=True),
                             sorted(b.ask_levels().items()), ns)


def _same_book(proto: MarketDataProtocol, ref: Reference) -> bool:
    a, b = proto.books[SYM], ref.book
    return (a.last_update_id == b.last_update_id and a.bid_levels() == b.bid_levels()
            and a.ask_levels() == b.ask_levels())


def _drive(proto, frames, ref, drop=None, resync_after=None):
    """Feed frames as the live feed does: a REST snapshot body goes to ``receive_snapshot`` (the answer to the
    protocol's request), everything else to ``receive_frame``. ``drop``: a frame index the protocol never sees
    (a lost diff). ``resync_after``: once the protocol has asked for a snapshot after the gap, serve it a fresh
    one built from the reference book this many frames later. Returns the outputs and the oracle comparisons."""
    outs, compared, want_since = [], 0, None
    for i, (ns, raw) in enumerate(frames):
        ref.feed(raw, ns)
        if i == drop:
            continue
        if _is_snapshot_body(raw):
            out = proto.receive_snapshot(SYM, raw, ns)
        else:
            before = proto.oracle.checked
            out = proto.receive_frame(raw, ns)
            if proto.oracle.checked > before:  # an oracle frame: the protocol's book is the reference book
                assert _same_book(proto, ref), (i, proto.books[SYM].last_update_id)
                compared += 1
        outs.extend(out)
        if drop is not None and want_since is None and any(type(e) is SnapshotNeeded for e in out):
            want_since = i
        if want_since is not None and resync_after is not None and i == want_since + resync_after:
            outs.extend(proto.receive_snapshot(SYM, ref.snapshot(ns), ns))
            resync_after = None
    return outs, compared


def test_real_frames_in_same_book_as_book_check_at_every_oracle_frame(frames):
    proto = MarketDataProtocol([SYM])
    assert proto.connection_made(1) == [SnapshotNeeded(SYM, "connect", 1)]
    outs, compared = _drive(proto, frames, Reference())
    # the same figures as `tradingd book-check` on this recording
    assert proto.oracle.checked == compared == 1072 and proto.oracle.matched == 1072
    assert proto.books[SYM].stats.applied == 6493 and proto.stats.gaps == 0 and proto.stats.oracle_mismatches == 0
    # out: every trade and diff of the recording, once, in order, the snapshot and one SYNCED status
    kinds = [type(e) for e in outs]
    assert kinds.count(Trade) == 19_904 and kinds.count(DepthUpdate) == 6495
    assert kinds.count(BookTicker) == sum(b"bookTicker" in r for _, r in frames)
    statuses = [e for e in outs if type(e) is BookStatus]
    assert [(s.state, s.reason) for s in statuses] == [("SYNCED", "snapshot")]
    assert kinds.count(DepthSnapshot) == 1 and SnapshotNeeded not in kinds
    assert proto.stats.frames["btcusdt@trade"] == 19_904 and proto.stats.snapshot_fetches == 1
    ids = [e.trade_id for e in outs if type(e) is Trade]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)


def test_a_lost_diff_asks_for_a_snapshot_and_a_fresh_one_resyncs(frames):
    """Drop one diff mid-stream: the protocol reports the gap and asks; the recording's (now too old) snapshot is
    not enough; a fresh snapshot (the reference book's, later) resyncs it and the books agree again."""
    depth_idx = [i for i, (_, raw) in enumerate(frames) if b"depthUpdate" in raw]
    drop = depth_idx[len(depth_idx) // 2]
    proto = MarketDataProtocol([SYM])
    ref = Reference()
    outs, compared = _drive(proto, frames, ref, drop=drop, resync_after=200)
    statuses = [(e.state, e.reason) for e in outs if type(e) is BookStatus]
    assert statuses == [("SYNCED", "snapshot"), ("STALE", "gap"), ("SYNCED", "resync")]
    gap_at = next(i for i, e in enumerate(outs) if type(e) is BookStatus and e.reason == "gap")
    assert type(outs[gap_at + 1]) is SnapshotNeeded and outs[gap_at + 1].reason == "gap"
    assert all(e.reason == "stale" for e in outs if type(e) is SnapshotNeeded and e.reason != "gap")
    assert proto.stats.gaps == 1 and proto.stats.resyncs == 1 and proto.books[SYM].is_tradeable
    assert 500 < compared < 1072 and proto.oracle.mismatched == 0
    assert _same_book(proto, ref)
    # the old snapshot again: not newer than the synced book, refused by it, nothing asked
    old = next(raw for _, raw in frames if _is_snapshot_body(raw))
    out = proto.receive_snapshot(SYM, old, 2)
    assert proto.books[SYM].stats.rejected["snapshot_not_newer"] == 1 and _same_book(proto, ref)
    assert not any(type(e) is SnapshotNeeded for e in out)


def test_snapshot_too_old_for_the_buffer_asks_again(frames):
    proto = MarketDataProtocol([SYM])
    depth = [(ns, raw) for ns, raw in frames if b"depthUpdate" in raw]
    for ns, raw in depth[:50]:
        assert [type(e) for e in proto.receive_frame(raw, ns)] == [DepthUpdate]  # buffered, passed on
    old = DepthSnapshot(SYM, 1, [(60_000.0, 1.0)], [(60_001.0, 1.0)], 0)
    out = proto.receive_snapshot(SYM, old, 5)
    assert [(type(e), e.reason) for e in out] == [(SnapshotNeeded, "snapshot_too_old")]
    assert proto.needs_snapshot(SYM)


def test_bad_input_is_counted_and_asks_with_backoff():
    proto = MarketDataProtocol([SYM])
    assert proto.receive_frame(b'{"stream":"btcusdt@trade","data":{"e":"trade"', 1) == ()
    assert proto.receive_frame(b'{"result":null,"id":1}', 1) == ()
    assert proto.stats.decode_errors["json"] == 1 and proto.stats.unknown_frames == 1
    out = proto.receive_snapshot(SYM, b"<html>busy</html>", 2)
    assert out == [SnapshotNeeded(SYM, "bad_snapshot", 2, backoff=True)]
    assert proto.stats.snapshot_errors["json"] == 1 and proto.books[SYM].state is BookState.BUFFERING
    absurd = orjson.dumps({"lastUpdateId": 10, "bids": [["100.0", "99999999999"]], "asks": [["101.0", "1"]]})
    assert proto.receive_snapshot(SYM, absurd, 3)[0].backoff
    assert proto.stats.snapshot_errors["snapshot_notional"] == 1
    # a snapshot on the live stream is never a book source
    sane = orjson.dumps({"lastUpdateId": 10, "bids": [["100.0", "1"]], "asks": [["101.0", "1"]]})
    assert list(proto.receive_frame(sane, 4)) == [] and proto.stats.unknown_frames == 2
    assert proto.books[SYM].state is BookState.BUFFERING


def test_oracle_mismatch_marks_stale_and_asks(frames):
    """Real bookTicker frames altered (best bid size) from the 1000th frame on: at the first check the book they
    disagree with goes STALE and asks for a snapshot, before the frame that triggered the check is passed on."""
    proto = MarketDataProtocol([SYM])
    out: list = []
    for i, (ns, raw) in enumerate(frames):
        if _is_snapshot_body(raw):
            proto.receive_snapshot(SYM, raw, ns)
            continue
        if i > 1000 and b"bookTicker" in raw:
            obj = orjson.loads(raw)
            obj["data"]["B"] = "123.456"
            raw = orjson.dumps(obj)
        out = list(proto.receive_frame(raw, ns))
        if any(type(e) is BookStatus for e in out):
            break
    assert [type(e) for e in out][:2] == [BookStatus, SnapshotNeeded] and len(out) == 3
    assert type(out[2]) in (DepthUpdate, BookTicker)
    assert out[0].reason == out[1].reason == "oracle_mismatch" and out[0].state == "STALE"
    assert proto.stats.oracle_mismatches == 1 and proto.needs_snapshot(SYM)


def test_connection_lost_and_the_books_are_read_only(frames):
    proto = MarketDataProtocol([SYM])
    for ns, raw in frames[:3000]:
        if _is_snapshot_body(raw):
            proto.receive_snapshot(SYM, raw, ns)
        else:
            proto.receive_frame(raw, ns)
    assert proto.books[SYM].is_tradeable
    assert proto.connection_lost(7) == [BookStatus(SYM, "STALE", "disconnect", proto.books[SYM].last_update_id, 7)]
    assert proto.connection_made(8) == [SnapshotNeeded(SYM, "connect", 8)]
    with pytest.raises(TypeError):
        proto.books["ETHUSDT"] = OrderBook("ETHUSDT")  # type: ignore[index]


def test_replay_mode_finds_the_symbol_and_takes_the_recorded_snapshot(frames):
    """As book-check and the recording backtest drive it: no symbols given, the recorded REST snapshot (no
    "symbol" key) arrives as a frame; everything out names the book's symbol."""
    proto = MarketDataProtocol(inline_snapshots=True)
    outs = [e for ns, raw in frames for e in proto.receive_frame(raw, ns)]
    assert list(proto.books) == [SYM] and proto.oracle.checked == 1072 and proto.oracle.mismatched == 0
    assert {e.symbol for e in outs} == {SYM} and SnapshotNeeded not in {type(e) for e in outs}
    snaps = [e for e in outs if type(e) is DepthSnapshot]
    recorded = orjson.loads(next(raw for _, raw in frames if _is_snapshot_body(raw)))
    assert "symbol" not in recorded and len(snaps) == 1 and snaps[0].last_update_id == recorded["lastUpdateId"]
