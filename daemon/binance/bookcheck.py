"""``tradingd book-check RECORDING...``: rebuild the L2 book from a recording and check it against bookTicker.

The oracle: every bookTicker frame whose update id equals the book's last applied update id must show exactly
the book's best bid and ask (price and size). bookTicker is real-time while depth diffs come every 100 ms, so a
ticker usually arrives *before* the diff that ends at its id: tickers ahead of the book wait (bounded) and are
checked when the book's last applied id reaches theirs; those it jumps over can never be checked. :class:`BookChecker` is the pure core (events in, counts out) so
tests and the network-path test drive it directly; ``main`` only reads files.

Exit status: 0 all checked frames match; 1 a mismatch; 2 a missing/unreadable recording; 3 nothing could be
checked (no bookTicker frame ever lined up with a synced book, so nothing was verified).
"""
from __future__ import annotations

import argparse
import json
import sys
from collections import Counter, deque
from pathlib import Path
from typing import Any, Iterable

from market.book import OrderBook
from market.events import BookTicker, DepthSnapshot, DepthUpdate

__all__ = ["BookChecker", "TickerOracle", "check_recording", "add_arguments", "main"]


class TickerOracle:
    """bookTicker as an oracle of the book's best levels (one place for the rule, used offline by
    :class:`BookChecker` and live by the feed). ``on_ticker``/``after_change`` return None when nothing was
    checked, True when every check matched, False on a mismatch."""

    def __init__(self, *, max_pending: int = 100_000, max_mismatch_examples: int = 5) -> None:
        self.checked = 0
        self.matched = 0
        self.mismatched = 0
        self.mismatches: list[dict[str, Any]] = []
        self._max_examples = max_mismatch_examples
        self._pending: dict[str, deque[BookTicker]] = {}  # tickers ahead of the book, in arrival order
        self._max_pending = max_pending

    def on_ticker(self, book: OrderBook, t: BookTicker) -> bool | None:
        if t.update_id == book.last_update_id:
            return self._check(book, t)
        if t.update_id > book.last_update_id:
            # bookTicker is real-time, depth diffs come every 100 ms: the diff ending at this id is still to come.
            pend = self._pending.setdefault(t.symbol, deque())
            if len(pend) >= self._max_pending:
                pend.popleft()
            pend.append(t)
        return None

    def after_change(self, book: OrderBook) -> bool | None:
        """The book moved: check the waiting tickers of exactly its new update id, forget older ones."""
        pend = self._pending.get(book.symbol)
        last = book.last_update_id
        out: bool | None = None
        while pend and pend[0].update_id <= last:
            t = pend.popleft()
            if t.update_id == last:
                r = self._check(book, t)
                if r is not None:
                    out = r if out is None else (out and r)
        return out

    def forget(self, symbol: str) -> None:
        self._pending.pop(symbol, None)

    def _check(self, book: OrderBook, t: BookTicker) -> bool | None:
        if not book.is_tradeable:
            return None
        self.checked += 1
        bb, ba = book.best_bid(), book.best_ask()
        if bb == (t.bid_price, t.bid_qty) and ba == (t.ask_price, t.ask_qty):
            self.matched += 1
            return True
        self.mismatched += 1
        if len(self.mismatches) < self._max_examples:
            self.mismatches.append({"symbol": t.symbol, "update_id": t.update_id, "book_bid": bb, "book_ask": ba,
                                    "ticker_bid": (t.bid_price, t.bid_qty),
                                    "ticker_ask": (t.ask_price, t.ask_qty)})
        return False


class BookChecker:
    """One OrderBook per symbol (spot or USD-M futures, picked from the first diff's ``pu``). ``guard`` (a
    :class:`daemon.plausible.FrameGuard`) refuses implausible events before they reach a book, as live."""

    def __init__(self, *, max_mismatch_examples: int = 5, max_pending: int = 100_000, guard: Any = None) -> None:
        self.books: dict[str, OrderBook] = {}
        self.oracle = TickerOracle(max_pending=max_pending, max_mismatch_examples=max_mismatch_examples)
        self.ignored: Counter[str] = Counter()  # events that could not be used, by reason
        self.guard = guard
        self._orphan_snapshots: list[DepthSnapshot] = []  # symbol-less snapshots seen before any diff

    @property
    def checked(self) -> int:
        return self.oracle.checked

    @property
    def matched(self) -> int:
        return self.oracle.matched

    @property
    def mismatched(self) -> int:
        return self.oracle.mismatched

    @property
    def mismatches(self) -> list[dict[str, Any]]:
        return self.oracle.mismatches

    def on_event(self, ev: Any) -> None:
        if self.guard is not None:
            r = self.guard.check(ev)
            if r is not None and r != "jump":
                self.ignored["refused_" + r] += 1
                return
        if isinstance(ev, BookTicker):
            book = self.books.get(ev.symbol)
            if book is not None:
                self.oracle.on_ticker(book, ev)
        elif isinstance(ev, DepthUpdate):
            book = self.books.get(ev.symbol)
            if book is None:
                book = self.books[ev.symbol] = OrderBook(ev.symbol, futures=ev.prev_final_id >= 0)
                for s in self._orphan_snapshots:
                    book.on_snapshot(s)
                self._orphan_snapshots.clear()
            if book.on_update(ev):
                self.oracle.after_change(book)
        elif isinstance(ev, DepthSnapshot):
            self._on_snapshot(ev)

    def _on_snapshot(self, s: DepthSnapshot) -> None:
        if s.symbol:
            book = self.books.get(s.symbol)
            if book is None:  # snapshot before the first diff: the book starts from it
                book = self.books[s.symbol] = OrderBook(s.symbol)
            book.on_snapshot(s)
            self.oracle.after_change(book)
        elif len(self.books) == 1:  # a recording without the "symbol" key: unambiguous with one symbol
            book = next(iter(self.books.values()))
            book.on_snapshot(s)
            self.oracle.after_change(book)
        elif not self.books:
            self._orphan_snapshots.append(s)
        else:
            self.ignored["ambiguous_snapshot"] += 1

    def summary(self) -> dict[str, int]:
        books = self.books.values()
        return {"applied": sum(b.stats.applied for b in books), "checked": self.checked,
                "matched": self.matched, "mismatched": self.mismatched,
                "gaps": sum(b.stats.gaps for b in books)}

    def details(self) -> dict[str, Any]:
        out: dict[str, Any] = {"books": {s: {"state": b.state.value, **b.stats.as_dict()}
                                         for s, b in self.books.items()},
                               "ignored": dict(self.ignored), "mismatch_examples": self.mismatches}
        if self.guard is not None:
            out["refused"] = {f"{s}/{r}": n for (s, r), n in self.guard.refused.items()}
        return out


def check_recording(paths: Iterable[str | Path]) -> tuple[BookChecker, dict[str, Any]]:
    """Feed a recording through the decoder into a BookChecker; returns it and the reader/decoder stats."""
    from daemon.binance.codec import FrameDecoder
    from daemon.recording import RecordingReader

    from daemon.plausible import FrameGuard

    reader = RecordingReader(paths)
    decoder = FrameDecoder()
    checker = BookChecker(guard=FrameGuard())
    for recv_ns, raw in reader:
        ev = decoder.decode(raw, recv_ns)
        if ev is not None:
            checker.on_event(ev)
    return checker, {"reader": reader.stats.as_dict(), "decoder": decoder.stats}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("recording", nargs="+", type=Path,
                        help="recording files (<recv_ns> <raw frame> lines, gzip) or directories of *.gz, in order")
    parser.add_argument("-v", "--verbose", action="store_true", help="also print per-book stats to stderr")


def main(args: argparse.Namespace) -> int:
    import logging

    import structlog

    missing = [str(p) for p in args.recording if not p.exists()]
    if missing:
        print(f"tradingd book-check: recording not found: {', '.join(missing)}", file=sys.stderr)
        return 2
    # stdout carries only the summary line: route this command's logs to stderr, then put the config back.
    was_configured, old = structlog.is_configured(), structlog.get_config()
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr),
                        wrapper_class=structlog.make_filtering_bound_logger(
                            logging.INFO if args.verbose else logging.WARNING))
    try:
        checker, io_stats = check_recording(args.recording)
    except OSError as e:
        print(f"tradingd book-check: cannot read recording: {e}", file=sys.stderr)
        return 2
    finally:
        if was_configured:
            structlog.configure(**old)
        else:
            structlog.reset_defaults()
    print(json.dumps(checker.summary()))
    if args.verbose or checker.mismatched:
        print(json.dumps({**checker.details(), **io_stats}, default=str), file=sys.stderr)
    if checker.mismatched:
        print(f"tradingd book-check: {checker.mismatched} bookTicker frame(s) disagree with the rebuilt book",
              file=sys.stderr)
        return 1
    if checker.checked == 0:
        print("tradingd book-check: no bookTicker frame matched a synced book's update id; nothing was verified",
              file=sys.stderr)
        return 3
    return 0
