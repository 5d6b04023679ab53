#!/usr/bin/env python3
"""Fault soak: the real feed -> guard -> book -> pipeline -> paper broker against the local venue's simulator
over loopback, with EVERY fault kind on, for MINUTES; figures are printed, never asserted.

    .venv/bin/python benchmarks/bench_fault_soak.py [--minutes 30] [--registry DIR] [--json out.json]
    scripts/bench --fault-soak 30          # the same, as a section of the performance suite

Faults: dropped depth diffs (gaps), duplicated frames, garbage frames, stalls, abrupt closes, forged frames
(absurd diff sizes, far-future / negative / 2^70 ms trade times, absurd trade sizes, repeated trade ids) and
stale REST snapshots under the current update id. Reported: RSS (start, end, max), bars closed vs decisions
made, refusals by reason vs forgeries by kind, book resyncs vs gaps (and bookTicker oracle checks /
mismatches), reconnects vs venue closes (+ stale-stream timeouts), and orders submitted while the book was not
synced (must be 0). With ``--registry`` (a model registry with every timeframe, e.g. the one ``scripts/bench``
trains) the pipeline predicts with real XGBoost+LSTM models; without, it decides with no predictions (no entries).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

SYM = "BTCUSDT"
BAR_CLOCK_LAG_NS = 2_000_000_000


def _rss_mb() -> float:
    import os
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def faults_all_on(seed: int = 1) -> Any:
    from daemon.config import FaultConfig
    return FaultConfig(drop_prob=0.002, dup_prob=0.002, garbage_prob=0.002, stall_every_s=45.0, stall_s=1.0,
                       close_every_s=60.0, forge_prob=0.01, stale_snapshot_prob=0.3, seed=seed)


async def _soak(minutes: float, registry: Path | None, progress_s: float) -> dict[str, Any]:
    from benchmarks.bench_suite import TFS, build_pipeline, load_sets
    from market.filters import SymbolFilters
    from daemon.config import Config, FeedConfig, SimulatorConfig
    from daemon.binance.feed import BinanceFeed
    from daemon.venue.server import LocalVenue, SimulatorSource

    if registry is not None:
        from engines.registry import ModelRegistry
        cfg, sets = load_sets(ModelRegistry(registry))
    else:
        cfg, sets = Config(), {}
    tmp = Path(tempfile.mkdtemp(prefix="bench_fault_soak_"))
    books: dict = {}
    pipe, store, writer = build_pipeline(cfg, sets, tmp, books)
    filters = {SYM: SymbolFilters(SYM, 0.01, 0.00001, 0.00001, 9000.0, 5.0, 1_000_000.0)}
    counts: Counter[str] = Counter()
    broker = pipe.broker
    real_submit = broker.submit

    def submit(intent, book, ts, **kw):  # the check that matters: never an order on a book that is not synced
        counts["orders"] += 1
        live = books.get(SYM)
        if live is None or not live.is_tradeable:
            counts["orders_on_unsynced_book"] += 1
        return real_submit(intent, book, ts, **kw)

    broker.submit = submit

    def on_event(ev: Any) -> None:
        for d in pipe.on_event(ev):
            if d.timeframe:
                counts["decisions"] += 1
                counts["decisions_book_stale"] += d.book_stale

    sim = SimulatorConfig()
    faults = faults_all_on()
    rss: list[float] = [_rss_mb()]
    async with LocalVenue(SimulatorSource([SYM], sim), faults) as venue:
        feed = BinanceFeed([SYM], venue.ws_url, venue.rest_url, FeedConfig(), on_event, filters=filters,
                           speed=getattr(sim, "speed", 1.0))
        books.update(feed.books)
        task = asyncio.create_task(feed.run())
        t0 = time.monotonic()
        next_report = t0 + progress_s
        next_rss = t0
        while time.monotonic() - t0 < minutes * 60:
            await asyncio.sleep(0.5)
            pipe.on_time(time.time_ns() - BAR_CLOCK_LAG_NS)  # the daemon's bar clock
            now = time.monotonic()
            if now >= next_rss:
                rss.append(_rss_mb())
                next_rss = now + 5.0
            if now >= next_report:
                next_report = now + progress_s
                print(f"[fault-soak] t={now - t0:.0f}s rss={rss[-1]:.1f}MB bars={pipe.counters['bars']} "
                      f"decisions={counts['decisions']} refused={sum(feed.stats.refused.values())} "
                      f"forged={sum(venue.stats.faults.forged.values())} resyncs={feed.stats.resyncs} "
                      f"reconnects={feed.stats.reconnects}", file=sys.stderr, flush=True)
        feed.stop()
        await asyncio.wait_for(task, 10)
        vf = venue.stats.faults
    writer.close()
    book = feed.books[SYM]
    st = feed.stats
    return {
        "minutes": minutes, "models": registry is not None,
        "rss_mb": {"start": rss[0], "end": rss[-1], "max": max(rss)},
        "bars_closed": pipe.counters["bars"], "decisions": counts["decisions"],
        "decisions_on_stale_book": counts["decisions_book_stale"],
        "orders": counts["orders"], "orders_on_unsynced_book": counts["orders_on_unsynced_book"],
        "refused_by_reason": {r: n for (_s, r), n in st.refused.items()},
        "forged_by_kind": dict(vf.forged), "stale_snapshots_served": vf.stale_snapshots,
        "snapshot_refusals": dict(st.snapshot_errors),
        "resyncs": st.resyncs, "gaps": st.gaps, "dropped_diffs": vf.dropped_depth,
        "book_stale_reasons": dict(book.stats.stale_reasons), "book_rejected": dict(book.stats.rejected),
        "oracle_checked": st.oracle_checked, "oracle_mismatches": st.oracle_mismatches,
        "reconnects": st.reconnects, "venue_closes": vf.closes, "stale_timeouts": st.stale_timeouts,
        "stalls": vf.stalls, "garbage_sent": vf.garbage, "decode_errors": dict(st.decode_errors),
        "bars_late_dropped": pipe.builder(SYM).stats.late_dropped, "clock_jumps": st.clock_jumps,
        "timeframes": list(TFS),
    }


def run(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=30.0, help="soak length (default 30)")
    ap.add_argument("--registry", type=Path, default=None, help="model registry (every timeframe) to predict with")
    ap.add_argument("--progress", type=float, default=30.0, help="seconds between progress lines on stderr")
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    a = ap.parse_args(argv)
    import logging

    import structlog
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))
    out = asyncio.run(_soak(a.minutes, a.registry, a.progress))
    text = json.dumps(out, indent=1)
    print(text)
    if a.json is not None:
        a.json.write_text(text)
    return out


if __name__ == "__main__":
    run()
