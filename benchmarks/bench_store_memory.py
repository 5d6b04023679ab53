#!/usr/bin/env python3
"""SQLite's heap while the store's bars table grows, printed as figures (never asserted).

    .venv/bin/python benchmarks/bench_store_memory.py [--bars 200000]

Why: the soak's RSS grows ~2 MB/h for its first ~45 minutes in SQLite's own heap. This writes bars through
``SQLiteStore.write_bars`` (one transaction per event, as the store writer does), with a second, idle connection
open as the daemon's loop has, and prints ``sqlite3_memory_used`` against the number of bars and file pages: the
heap is the writer's page cache filling, and it stops at SQLite's ``cache_size`` (default -2000: 2,000 KiB per
connection), whatever the file size.
"""
from __future__ import annotations

import argparse
import ctypes
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from market.events import Bar  # noqa: E402
from daemon.store import SQLiteStore  # noqa: E402

TFS = ("1m", "5m", "15m", "1h")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bars", type=int, default=200_000)
    a = ap.parse_args(argv)
    lib = ctypes.CDLL("libsqlite3.so.0")   # the library Python's sqlite3 module links on Debian
    lib.sqlite3_memory_used.restype = ctypes.c_int64
    with tempfile.TemporaryDirectory() as d:
        w = SQLiteStore(Path(d) / "store.db")
        r = SQLiteStore(Path(d) / "store.db")  # idle, like the loop's read connection
        cache = w._db.execute("PRAGMA cache_size").fetchone()[0]
        page = w._db.execute("PRAGMA page_size").fetchone()[0]
        print(f"cache_size {cache} ({'KiB' if cache < 0 else 'pages'}), page_size {page} B")
        t, n, k, next_print = 1_700_000_000 * 10**9, 0, 0, 0
        while n < a.bars:
            t += 60 * 10**9
            bars = [Bar("BTCUSDT", tf, t, 1.0, 2.0, 0.5, 1.5, 3.0, 4.0, 5, 1.0) for tf in TFS[: 1 + k % 4]]
            w.write_bars(bars)
            n += len(bars)
            k += 1
            if n >= next_print:
                pages = w._db.execute("PRAGMA page_count").fetchone()[0]
                print(f"bars {n:8,d}  file pages {pages:6,d}  SQLite heap {lib.sqlite3_memory_used() / 2**20:.2f} MB",
                      flush=True)
                next_print += max(1, a.bars // 16)
        r.close()
        w.close()


if __name__ == "__main__":
    main()
