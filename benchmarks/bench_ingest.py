#!/usr/bin/env python3
"""Ingest hot-path cost per frame on the real BTCUSDT recording, printed as figures (never asserted).

    .venv/bin/python benchmarks/bench_ingest.py [--repeat N] [--json]

Every figure is ``time.perf_counter_ns()`` around one call, for every frame of the recording (6,495 depth diffs,
19,904 trades, 73,174 bookTickers; ``--repeat`` passes), reported as median and p99 in µs. The timer itself
costs ~0.05-0.1 µs and is included. Rows:

* decode: ``decode_frame`` per depth / trade / bookTicker frame (plus an orjson + float() reference for depth);
* book apply: ``OrderBook.on_update`` per diff (after the recorded snapshot), and a best bid+ask query;
* guard check: ``FrameGuard.check`` (daemon/plausible.py: time, size, duplicate checks the feed runs between
  decode and book/bars) per depth / trade / bookTicker event;
* protocol frame in: ``MarketDataProtocol.receive_frame`` per depth / trade / bookTicker frame (decode + guard +
  book + bookTicker oracle + events out: the live feed's whole per-frame work without the socket);
* bar update: ``BarBuilder.on_trade`` per trade, 4 timeframes (skipped with a note if market.bars is missing);
* combined: decode + book per depth frame, decode + bars per trade frame, and the whole pipeline (every depth and
  trade frame in arrival order) per frame and amortised per depth frame (total time / depth frames).
Target from the issue: decode + book + bars <= 12 µs median per depth frame.

``run(argv) -> dict`` returns the figures (name -> {median_us, p99_us, n}) so the lead can add rows, e.g. the
loopback websocket frames/s figure another helper measures.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from time import perf_counter_ns
from typing import Any, Callable, Iterable

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
DATA = ROOT.parent / "shared" / "data" / "binance-ws"
FILES = [DATA / "spot_btcusdt_20240808.gz", DATA / "spot_btcusdt_20240809.gz"]
TARGET_US = 12.0


def _fig(samples: list[int]) -> dict[str, float]:
    s = sorted(samples)
    return {"median_us": statistics.median(s) / 1000.0, "p99_us": s[min(len(s) - 1, int(len(s) * 0.99))] / 1000.0,
            "n": len(s)}


def _time_each(fn: Callable[[Any], Any], items: Iterable[Any]) -> list[int]:
    out = []
    clock = perf_counter_ns
    for x in items:
        t0 = clock()
        fn(x)
        out.append(clock() - t0)
    return out


def run(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=3, help="passes over the recording (default 3)")
    ap.add_argument("--json", action="store_true", help="print the figures as JSON instead of a table")
    args = ap.parse_args(argv)

    from daemon.binance.codec import decode_frame
    from market.book import OrderBook
    from market.events import BookTicker, DepthSnapshot, DepthUpdate, Trade
    from daemon.recording import iter_recording

    missing = [str(f) for f in FILES if not f.exists()]
    if missing:
        print(f"bench_ingest: recording not found ({', '.join(missing)}); see ../shared/data/README.md")
        return {}
    frames = list(iter_recording(FILES))
    kinds: dict[type, list[tuple[int, bytes]]] = {DepthUpdate: [], Trade: [], BookTicker: [], DepthSnapshot: []}
    events = []
    for ns, raw in frames:
        ev = decode_frame(raw, ns)
        kinds[type(ev)].append((ns, raw))
        events.append(ev)
    figs: dict[str, Any] = {}
    notes: list[str] = []

    # ---------------------------------------------------------------------------------------- decode
    for name, typ in (("decode depth frame", DepthUpdate), ("decode trade frame", Trade),
                      ("decode bookTicker frame", BookTicker)):
        raws = [raw for _, raw in kinds[typ]] * args.repeat
        figs[name] = _fig(_time_each(lambda r: decode_frame(r, 0), raws))
    try:
        import orjson

        def ref(r: bytes) -> Any:
            d = orjson.loads(r)["data"]
            return [(float(p), float(q)) for p, q in d["b"]], [(float(p), float(q)) for p, q in d["a"]]

        figs["ref: orjson + float() depth"] = _fig(_time_each(ref, [raw for _, raw in kinds[DepthUpdate]] * args.repeat))
    except ImportError:
        notes.append("orjson reference row skipped (orjson not installed)")

    # ---------------------------------------------------------------------------------------- book
    snap_i = next(i for i, ev in enumerate(events) if isinstance(ev, DepthSnapshot))
    snap0 = events[snap_i]
    snap = DepthSnapshot("BTCUSDT", snap0.last_update_id, snap0.bids, snap0.asks, snap0.ts_recv)
    diffs_before = [ev for ev in events[:snap_i] if isinstance(ev, DepthUpdate)]
    diffs_after = [ev for ev in events[snap_i:] if isinstance(ev, DepthUpdate)]

    def fresh_book() -> OrderBook:
        b = OrderBook("BTCUSDT")
        for d in diffs_before:
            b.on_update(d)
        b.on_snapshot(snap)
        return b

    apply_s: list[int] = []
    query_s: list[int] = []
    for _ in range(args.repeat):
        book = fresh_book()
        apply_s += _time_each(book.on_update, diffs_after)
        assert book.stats.gaps == 0 and book.is_tradeable
        query_s += _time_each(lambda _: (book.best_bid(), book.best_ask()), range(len(diffs_after)))
    figs["book apply (on_update)"] = _fig(apply_s)
    figs["book best bid+ask query"] = _fig(query_s)

    # ---------------------------------------------------------------------------------------- plausibility guard
    from daemon.plausible import FrameGuard
    for name, typ in (("guard check depth", DepthUpdate), ("guard check trade", Trade),
                      ("guard check bookTicker", BookTicker)):
        evs = [ev for ev in events if type(ev) is typ]
        g_s: list[int] = []
        for _ in range(args.repeat):
            g = FrameGuard()  # fresh: trade ids are not refused as duplicates of the previous pass
            g_s += _time_each(g.check, evs)
        figs[name] = _fig(g_s)

    # ---------------------------------------------------------------------------------------- protocol
    # the live per-frame work without the socket: decode + guard + book + oracle + events out, as the feed,
    # book-check and the recording backtest drive it (daemon/binance/protocol.py)
    from daemon.binance.protocol import MarketDataProtocol
    proto_s: dict[type, list[int]] = {DepthUpdate: [], Trade: [], BookTicker: []}
    for _ in range(args.repeat):
        proto = MarketDataProtocol(["BTCUSDT"])
        for ev, (ns, raw) in zip(events, frames):
            if isinstance(ev, DepthSnapshot):  # REST, not the websocket hot path
                proto.receive_snapshot("BTCUSDT", raw, ns)
                continue
            t0 = perf_counter_ns()
            proto.receive_frame(raw, ns)
            proto_s[type(ev)].append(perf_counter_ns() - t0)
        assert proto.oracle.checked == proto.oracle.matched > 0 and proto.stats.gaps == 0
    for name, typ in (("protocol frame in: depth", DepthUpdate), ("protocol frame in: trade", Trade),
                      ("protocol frame in: bookTicker", BookTicker)):
        figs[name] = _fig(proto_s[typ])

    # ---------------------------------------------------------------------------------------- bars
    try:
        from market.bars import BarBuilder
    except ImportError as e:
        BarBuilder = None  # type: ignore[assignment]
        notes.append(f"bar rows skipped: market.bars not importable ({e})")
    tfs = ("1m", "5m", "15m", "1h")
    trades = [ev for ev in events if isinstance(ev, Trade)]
    if BarBuilder is not None:
        bars_s: list[int] = []
        for _ in range(args.repeat):
            bb = BarBuilder("BTCUSDT", tfs)
            bars_s += _time_each(bb.on_trade, trades)
        figs["bar update (on_trade, 4 tf)"] = _fig(bars_s)

    # ---------------------------------------------------------------------------------------- combined
    depth_s: list[int] = []
    trade_s: list[int] = []
    total_ns = 0
    n_depth = 0
    clock = perf_counter_ns
    for _ in range(args.repeat):
        book = OrderBook("BTCUSDT")
        bars = BarBuilder("BTCUSDT", tfs) if BarBuilder is not None else None
        for ev, (ns, raw) in zip(events, frames):
            if isinstance(ev, DepthSnapshot):  # REST, not the websocket hot path
                book.on_snapshot(snap)
                continue
            if isinstance(ev, DepthUpdate):
                t0 = clock()
                book.on_update(decode_frame(raw, ns))
                dt = clock() - t0
                depth_s.append(dt)
                n_depth += 1
                total_ns += dt
            elif isinstance(ev, Trade):
                t0 = clock()
                t = decode_frame(raw, ns)
                if bars is not None:
                    bars.on_trade(t)
                dt = clock() - t0
                trade_s.append(dt)
                total_ns += dt
    figs["decode + book per depth frame"] = _fig(depth_s)
    figs["decode + bars per trade frame" if BarBuilder else "decode per trade frame (no bars)"] = _fig(trade_s)
    figs["pipeline per frame (depth+trade)"] = _fig(depth_s + trade_s)
    figs["pipeline amortised per depth frame"] = {"median_us": total_ns / n_depth / 1000.0, "p99_us": float("nan"),
                                                  "n": n_depth, "note": "total depth+trade time / depth frames"}
    target = figs["decode + book per depth frame"]["median_us"]
    if BarBuilder is not None:
        target += figs["bar update (on_trade, 4 tf)"]["median_us"]
    figs["target check"] = {"decode+book+bars_median_us": target, "target_us": TARGET_US,
                            "met": target <= TARGET_US}

    result = {"figures": figs, "notes": notes,
              "frames": {"depth": len(kinds[DepthUpdate]), "trade": len(kinds[Trade]),
                         "bookTicker": len(kinds[BookTicker]), "repeat": args.repeat}}
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        _print_table(result)
    return result


def _print_table(result: dict[str, Any]) -> None:
    f = result["frames"]
    print(f"ingest on the real BTCUSDT recording: {f['depth']} depth, {f['trade']} trade, {f['bookTicker']} "
          f"bookTicker frames, x{f['repeat']} passes; perf_counter_ns around each call")
    print(f"{'row':<40} {'median µs':>10} {'p99 µs':>10} {'n':>9}")
    for name, v in result["figures"].items():
        if "median_us" not in v:
            continue
        print(f"{name:<40} {v['median_us']:>10.2f} {v['p99_us']:>10.2f} {v['n']:>9}")
    t = result["figures"]["target check"]
    print(f"decode + book + bars (sum of medians, per depth frame): {t['decode+book+bars_median_us']:.2f} µs "
          f"(target <= {t['target_us']} µs: {'met' if t['met'] else 'NOT met'})")
    for n in result["notes"]:
        print("note:", n)


if __name__ == "__main__":
    import logging

    import structlog

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))  # quiet sync logs
    run()
