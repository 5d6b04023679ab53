#!/usr/bin/env python3
"""Peer order-book ingest on the real BTCUSDT recording, for the performance suite (scripts/bench).

Runs in a SEPARATE virtualenv that has the peers installed (``pip install cryptofeed nautilus-trader``; the suite
creates ``.bench-venv/`` for that). It must not import tradingd: the peers are measured with their own code only,
on exactly the frames tradingd's row uses — the recorded REST snapshot, then every depth diff after it
(``u > lastUpdateId``), in recorded order.

* cryptofeed: ``Binance.message_handler(raw, conn, ts)`` per frame (its JSON decode with Decimal floats, the
  update-id check, Decimal price/qty, the ``order_book`` C extension's SortedDict book, the book callback) and
  ``Binance._book(msg, pair, ts)`` on pre-decoded dicts (book handling only). The book is seeded the way
  ``Binance._snapshot`` seeds it (no network: the symbol table comes from a one-symbol exchangeInfo).
* NautilusTrader: its Binance adapter's msgspec schema ``BinanceOrderBookMsg`` decode +
  ``parse_to_order_book_deltas`` + ``OrderBook.apply_deltas`` per frame (L2_MBP book), and ``apply_deltas`` on
  pre-parsed deltas (book only); the snapshot goes in through ``BinanceDepth.parse_to_order_book_snapshot``.

Per frame: perf_counter_ns around one call (the await, for cryptofeed), median and p99 in µs, ``--repeat`` passes,
each pass on a fresh book. Prints one JSON object: {peer: {"version", "rows": {name: {median_us, p99_us, n}},
"best_bid", "best_ask"} | {"error": "..."}}. Figures only, nothing asserted.
"""
from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import statistics
import sys
import traceback
from pathlib import Path
from time import perf_counter_ns
from typing import Any

DEFAULT_FILES = [Path(__file__).resolve().parents[2] / "shared" / "data" / "binance-ws" / f"spot_btcusdt_2024080{d}.gz"
                 for d in (8, 9)]


def load_frames(paths: list[Path]) -> tuple[dict, list[tuple[int, bytes]]]:
    """(REST snapshot dict, [(recv_ns, raw depth frame bytes)] after the snapshot, u > lastUpdateId)."""
    snap: dict | None = None
    depth: list[tuple[int, bytes, int]] = []
    for p in paths:
        with gzip.open(p, "rb") as f:
            for line in f:
                line = line.rstrip(b"\r\n")
                if not line:
                    continue
                ns, _, raw = line.partition(b" ")
                if snap is None and raw.startswith(b'{"lastUpdateId"'):
                    snap = json.loads(raw)
                elif b'"depthUpdate"' in raw:
                    d = json.loads(raw)["data"]
                    depth.append((int(ns), raw, int(d["u"])))
    if snap is None:
        raise SystemExit("no REST snapshot in the recording")
    last = int(snap["lastUpdateId"])
    return snap, [(ns, raw) for ns, raw, u in depth if u > last]


def fig(samples: list[int]) -> dict[str, float]:
    s = sorted(samples)
    return {"median_us": statistics.median(s) / 1000.0, "p99_us": s[min(len(s) - 1, int(len(s) * 0.99))] / 1000.0,
            "n": len(s)}


# ------------------------------------------------------------------------------------------------ cryptofeed
def bench_cryptofeed(snap: dict, frames: list[tuple[int, bytes]], repeat: int) -> dict[str, Any]:
    import importlib.metadata as md
    from decimal import Decimal

    from cryptofeed.defines import ASK, BID, L2_BOOK
    from cryptofeed.exchanges import Binance
    from cryptofeed.symbols import Symbols
    from cryptofeed.types import OrderBook
    from yapic import json as yjson

    info = {"symbols": [{"symbol": "BTCUSDT", "status": "TRADING", "baseAsset": "BTC", "quoteAsset": "USDT",
                         "filters": [{"filterType": "PRICE_FILTER", "tickSize": "0.01"}]}]}
    syms, extra = Binance._parse_symbol_data(info)
    Symbols.set(Binance.id, syms, extra)          # what symbol_mapping() would store after its REST call

    async def on_book(book, receipt_ts):        # the cheapest possible user callback
        return None

    def fresh():
        feed = Binance(symbols=["BTC-USDT"], channels=[L2_BOOK], callbacks={L2_BOOK: on_book})
        pair = "BTC-USDT"
        # exactly what Binance._snapshot does once its REST read returned
        feed.last_update_id[pair] = snap["lastUpdateId"]
        feed._l2_book[pair] = OrderBook(feed.id, pair, max_depth=feed.max_depth,
                                        bids={Decimal(u[0]): Decimal(u[1]) for u in snap["bids"]},
                                        asks={Decimal(u[0]): Decimal(u[1]) for u in snap["asks"]})
        return feed, pair

    async def run() -> dict[str, Any]:
        full: list[int] = []
        book_only: list[int] = []
        clock = perf_counter_ns
        strs = [raw.decode() for _, raw in frames]
        msgs = [yjson.loads(s, parse_float=Decimal)["data"] for s in strs]
        feed = pair = None
        for _ in range(repeat):
            feed, pair = fresh()
            handler = feed.message_handler
            for (ns, _), s in zip(frames, strs):
                ts = ns / 1e9
                t0 = clock()
                await handler(s, None, ts)
                full.append(clock() - t0)
            feed2, pair2 = fresh()
            bk = feed2._book
            for (ns, _), m in zip(frames, msgs):
                t0 = clock()
                await bk(m, "BTCUSDT", ns / 1e9)
                book_only.append(clock() - t0)
        b = feed._l2_book[pair].book
        bid, ask = b[BID].index(0)[0], b[ASK].index(0)[0]
        return {"rows": {"decode+book (message_handler)": fig(full), "book only (_book, pre-decoded)": fig(book_only)},
                "best_bid": float(bid), "best_ask": float(ask), "last_update_id": feed.last_update_id[pair],
                "book_levels": len(b[BID]) + len(b[ASK])}

    out = asyncio.run(run())
    out["version"] = md.version("cryptofeed")
    return out


# ------------------------------------------------------------------------------------------------ nautilus
def bench_nautilus(snap: dict, frames: list[tuple[int, bytes]], repeat: int) -> dict[str, Any]:
    import importlib.metadata as md

    import msgspec
    from nautilus_trader.adapters.binance.common.schemas.market import BinanceDepth, BinanceOrderBookMsg
    from nautilus_trader.model.book import OrderBook
    from nautilus_trader.model.enums import BookType
    from nautilus_trader.model.identifiers import InstrumentId

    iid = InstrumentId.from_str("BTCUSDT.BINANCE")
    dec = msgspec.json.Decoder(BinanceOrderBookMsg)
    snap_deltas = msgspec.json.decode(json.dumps(snap).encode(), type=BinanceDepth).parse_to_order_book_snapshot(
        iid, frames[0][0])

    def fresh() -> OrderBook:
        b = OrderBook(iid, BookType.L2_MBP)
        b.apply_deltas(snap_deltas)
        return b

    full: list[int] = []
    book_only: list[int] = []
    clock = perf_counter_ns
    pre = [dec.decode(raw).data.parse_to_order_book_deltas(iid, ns) for ns, raw in frames]
    book = None
    for _ in range(repeat):
        book = fresh()
        apply = book.apply_deltas
        for ns, raw in frames:
            t0 = clock()
            apply(dec.decode(raw).data.parse_to_order_book_deltas(iid, ns))
            full.append(clock() - t0)
        b2 = fresh()
        apply2 = b2.apply_deltas
        for d in pre:
            t0 = clock()
            apply2(d)
            book_only.append(clock() - t0)
    return {"version": md.version("nautilus_trader"),
            "rows": {"decode+book (adapter schema + parse + apply_deltas)": fig(full),
                     "book only (apply_deltas, pre-parsed)": fig(book_only)},
            "best_bid": float(book.best_bid_price()), "best_ask": float(book.best_ask_price()),
            "last_update_id": int(book.sequence), "book_levels": len(book.bids()) + len(book.asks())}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", nargs="*", type=Path, default=DEFAULT_FILES)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--only", choices=("cryptofeed", "nautilus"))
    a = ap.parse_args(argv)
    import logging
    logging.disable(logging.WARNING)               # peers' own log chatter would pollute stdout
    snap, frames = load_frames(list(a.files))
    out: dict[str, Any] = {"frames": len(frames), "snapshot_last_update_id": snap["lastUpdateId"],
                           "python": sys.version.split()[0]}
    for name, fn in (("cryptofeed", bench_cryptofeed), ("nautilus", bench_nautilus)):
        if a.only and a.only != name:
            continue
        try:
            out[name] = fn(snap, frames, a.repeat)
        except Exception as e:  # noqa: BLE001 - a broken peer is a row with its error, never a number
            out[name] = {"error": f"{type(e).__name__}: {e}",
                         "where": traceback.format_exc().strip().splitlines()[-3:]}
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
