"""``tradingd book-check RECORDING...``: rebuild the L2 book from a recording and check it against bookTicker.

The oracle: every bookTicker frame whose update id equals the book's last applied update id must show exactly
the book's best bid and ask (price and size). bookTicker is real-time while depth diffs come every 100 ms, so a
ticker usually arrives *before* the diff that ends at its id: tickers ahead of the book wait (bounded) and are
checked when the book's last applied id reaches theirs; those it jumps over can never be checked. The frames go
through the same sans-I/O protocol object as live (:mod:`daemon.binance.protocol`); :class:`BookChecker` is the
audit on top of it (frames or events in, counts out), so tests and the network-path test drive it directly;
``main`` only reads files.

Exit status: 0 all checked frames match; 1 a mismatch; 2 a missing/unreadable recording; 3 nothing could be
checked (no bookTicker frame ever lined up with a synced book, so nothing was verified).
"""
from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from daemon.binance.protocol import MarketDataProtocol, TickerOracle
from market.book import BookView

__all__ = ["BookChecker", "TickerOracle", "check_recording", "add_arguments", "main"]


class BookChecker:
    """The audit on top of :class:`daemon.binance.protocol.MarketDataProtocol` (the same object the live feed
    and the recording backtest drive): books found in the data (spot or USD-M futures, picked from the first
    diff's ``pu``), snapshots taken from the recording, and the oracle only counts (a mismatch must not heal the
    book it measures). ``plausible``: refuse implausible events before they reach a book, as live."""

    def __init__(self, *, max_mismatch_examples: int = 5, max_pending: int = 100_000,
                 plausible: bool = False) -> None:
        self.protocol = MarketDataProtocol(inline_snapshots=True, resync_on_mismatch=False, plausibility=plausible,
                                           max_pending_tickers=max_pending,
                                           max_mismatch_examples=max_mismatch_examples)
        self.oracle = self.protocol.oracle
        self.guard = self.protocol.guard

    @property
    def books(self) -> Mapping[str, BookView]:
        return self.protocol.books

    @property
    def ignored(self) -> Counter[str]:
        """Events that could not be used, by reason (refusals are in ``guard.refused``)."""
        return self.protocol.ignored

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

    def on_frame(self, raw: bytes, recv_ns: int) -> None:
        self.protocol.receive_frame(raw, recv_ns)

    def on_event(self, ev: Any) -> None:
        """An already decoded event (None, an undecodable frame, is ignored)."""
        if ev is not None:
            self.protocol.receive_event(ev)

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
    """Feed a recording's raw frames through the protocol into a BookChecker; returns it and the reader/decoder
    stats."""
    from daemon.recording import RecordingReader

    reader = RecordingReader(paths)
    checker = BookChecker(plausible=True)
    for recv_ns, raw in reader:
        checker.on_frame(raw, recv_ns)
    st = checker.protocol.stats
    return checker, {"reader": reader.stats.as_dict(),
                     "decoder": {"decoded": sum(st.frames.values()), "unknown": st.unknown_frames,
                                 "rejected": dict(st.decode_errors)}}


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
