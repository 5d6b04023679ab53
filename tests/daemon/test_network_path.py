"""THE network-path test: the real recording replayed by the local venue over a real loopback websocket + HTTP,
into BinanceFeed's books, checked against the recorded bookTicker frames (the oracle).

Clean run: every one of the 1,072 checkable bookTicker frames matches the feed's own book. Faulty run (dropped
depth diffs, duplicates, garbage, an abrupt close): every drop that hit a synced book is detected as a gap, no
diff is ever applied to a book that is not synced, every loss of sync ends in a completed resync, and there is
still not one mismatch.
"""
from __future__ import annotations

import asyncio
from collections import deque

from market.book import BookState
from daemon.binance.bookcheck import BookChecker
from daemon.config import FaultConfig, FeedConfig
from market.events import BookTicker, DepthUpdate
from daemon.binance.feed import BinanceFeed, BookStatus
from daemon.venue.replay import ReplaySource
from daemon.venue.server import LocalVenue

SYM = "BTCUSDT"


class FeedBookOracle:
    """Checks the FEED's book (not a copy) against bookTicker frames, the same rule as daemon.binance.bookcheck: a ticker
    is checked when the book's last applied id equals its ``u`` (tickers ahead of the book wait for it)."""

    def __init__(self, feed: BinanceFeed) -> None:
        self.feed = feed
        self.checked = self.matched = 0
        self.mismatches: list[tuple] = []
        self.pending: deque[BookTicker] = deque()
        self.updates: list[tuple] = []  # (U, u, state_before, last_before, state_after, last_after)
        self.statuses: list[BookStatus] = []
        self._state = BookState.BUFFERING
        self._last = -1

    def on_event(self, ev) -> None:
        book = self.feed.books[SYM]
        if isinstance(ev, DepthUpdate):
            self.updates.append((ev.first_id, ev.final_id, self._state, self._last, book.state,
                                 book.last_update_id))
        elif isinstance(ev, BookStatus):
            self.statuses.append(ev)
        elif isinstance(ev, BookTicker):
            if ev.update_id == book.last_update_id:
                self._check(ev)
            elif ev.update_id > book.last_update_id:
                self.pending.append(ev)
        if book.last_update_id != self._last:
            while self.pending and self.pending[0].update_id <= book.last_update_id:
                t = self.pending.popleft()
                if t.update_id == book.last_update_id:
                    self._check(t)
        self._state, self._last = book.state, book.last_update_id

    def _check(self, t: BookTicker) -> None:
        book = self.feed.books[SYM]
        if not book.is_tradeable:
            return
        self.checked += 1
        if book.best_bid() == (t.bid_price, t.bid_qty) and book.best_ask() == (t.ask_price, t.ask_qty):
            self.matched += 1
        else:
            self.mismatches.append((t.update_id, book.best_bid(), book.best_ask(), t))


async def _run_replay(paths, faults: FaultConfig):
    src = ReplaySource(paths, speed=0)
    checker = BookChecker()  # second opinion: rebuilds its own book from the events the feed received
    async with LocalVenue(src, faults) as venue:
        feed = BinanceFeed([SYM], venue.ws_url, venue.rest_url,
                           FeedConfig(reconnect_initial_s=0.05, reconnect_max_s=0.5, stale_after_s=5.0),
                           on_event=None, extra_streams=("bookTicker",), seed=1)
        oracle = FeedBookOracle(feed)

        def on_event(ev):
            oracle.on_event(ev)
            if not isinstance(ev, BookStatus):
                checker.on_event(ev)

        feed.on_event = on_event
        task = asyncio.create_task(feed.run())
        await asyncio.wait_for(venue.done.wait(), 60)
        last = -1
        while len(oracle.updates) + oracle.checked != last or feed._fetching:  # drain: quiet and no resync due
            last = len(oracle.updates) + oracle.checked
            await asyncio.sleep(0.3)
        end_book = src.depth(SYM, 100)
        end_book["feed_state"] = feed.books[SYM].state  # before stop() marks it stale
        feed.stop()
        await asyncio.wait_for(task, 10)
    return src, venue, feed, oracle, checker, end_book


def test_replay_over_loopback_matches_every_bookticker(binance_recording):
    src, venue, feed, oracle, checker, end_book = asyncio.run(_run_replay(binance_recording, FaultConfig()))
    assert feed.stats.frames == {"btcusdt@depth@100ms": 6495, "btcusdt@trade": 19904,
                                 "btcusdt@bookTicker": 73174}
    assert not feed.stats.decode_errors and feed.stats.snapshot_fetches == 1 and feed.stats.gaps == 0
    assert oracle.checked == 1072 and oracle.matched == 1072 and not oracle.mismatches
    assert checker.summary()["checked"] == 1072 and checker.summary()["mismatched"] == 0
    book = feed.books[SYM]
    assert book.stats.gaps == 0 and book.stats.applied == 6493  # all diffs after the recorded snapshot
    # the feed's book ends equal to the venue's true book, level for level (top 100)
    assert end_book["feed_state"] is BookState.SYNCED and book.last_update_id == end_book["lastUpdateId"]
    bids, asks = book.depth(100)
    assert bids == [(float(p), float(q)) for p, q in end_book["bids"]]
    assert asks == [(float(p), float(q)) for p, q in end_book["asks"]]


def test_replay_with_faults_every_gap_detected_and_resynced(binance_recording):
    faults = FaultConfig(drop_prob=0.01, dup_prob=0.01, garbage_prob=0.001, close_after_frames=40000, seed=5)
    src, venue, feed, oracle, checker, end_book = asyncio.run(_run_replay(binance_recording, faults))
    fs = venue.stats.faults
    assert fs.dropped_depth > 5 and fs.duplicated > 100 and fs.garbage > 10 and fs.closes >= 1
    book = feed.books[SYM]
    # garbage is counted and dropped, never a crash (an abort can swallow frames still in the send buffer)
    assert 0 < sum(feed.stats.decode_errors.values()) <= fs.garbage
    assert feed.stats.reconnects >= fs.closes and feed.stats.connects == fs.closes + 1
    # every drop whose successor reached a SYNCED book that had everything before the drop -> a gap there
    ups = oracle.updates
    expected_gaps = set()
    for first, final in fs.dropped_ids:
        succ = next((i for i, u in enumerate(ups) if u[1] > final), None)
        if succ is None:
            continue  # the dropped diff was the last one sent on its connection
        U, u, st_before, last_before, st_after, last_after = ups[succ]
        if st_before is BookState.SYNCED and last_before == first - 1:
            expected_gaps.add(succ)
            assert st_after is BookState.STALE and last_after == last_before, "a gap went undetected"
    assert len(expected_gaps) >= fs.dropped_depth // 2  # most drops hit a synced book
    assert book.stats.gaps == feed.stats.gaps >= len(expected_gaps)
    # no diff is ever applied to a book that is not synced
    for U, u, st_before, last_before, st_after, last_after in ups:
        if st_before is not BookState.SYNCED:
            assert last_after == last_before and st_after is not BookState.SYNCED
    # every loss of sync (gap or disconnect) ended in a completed resync; the last status is feed.stop()'s
    sts = oracle.statuses
    assert sts[-1].reason == "disconnect" and sts[-2].state == "SYNCED"
    for i, s in enumerate(sts[:-1]):
        if s.state != "SYNCED":
            assert any(x.state == "SYNCED" for x in sts[i + 1:-1]), f"stale book never resynced: {s}"
    assert sum(s.reason == "resync" for s in sts) == feed.stats.resyncs == book.stats.resyncs
    assert sum(s.reason == "gap" for s in sts) == book.stats.gaps
    assert feed.stats.resyncs >= book.stats.gaps + 1  # every gap, plus the reconnect after the close
    assert end_book["feed_state"] is BookState.SYNCED and book.last_update_id == end_book["lastUpdateId"]
    # zero mismatches, on the feed's book and on the independent checker
    assert oracle.checked > 500 and oracle.matched == oracle.checked and not oracle.mismatches
    assert checker.summary()["mismatched"] == 0
