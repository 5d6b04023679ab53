"""End-to-end frames/s through the loopback websocket: the local venue replays the real recording at speed 0
(as fast as the client reads) into BinanceFeed (decode + book + event callback), in one process and one event
loop (server and client share the CPU, so this is a lower bound of what the client alone sustains).

Also measured: the same stream read by a bare aiohttp websocket client (transport only, no decode/book), and the
simulator's 30-day 1m history generation. Usage: .venv/bin/python benchmarks/bench_loopback.py [--loop uvloop]
"""
from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import sys
import time
from pathlib import Path

import structlog

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
REC = ROOT.parent / "shared" / "data" / "binance-ws"
PATHS = [REC / "spot_btcusdt_20240808.gz", REC / "spot_btcusdt_20240809.gz"]


async def feed_run(src) -> tuple[int, float]:
    from daemon.config import FeedConfig
    from daemon.binance.feed import BinanceFeed
    from daemon.venue.server import LocalVenue

    n = 0
    t_first = t_last = 0.0

    def on_event(ev) -> None:
        nonlocal n, t_first, t_last
        n += 1
        t_last = time.perf_counter()
        if n == 1:
            t_first = t_last

    async with LocalVenue(src) as venue:
        feed = BinanceFeed(["BTCUSDT"], venue.ws_url, venue.rest_url, FeedConfig(), on_event,
                           extra_streams=("bookTicker",))
        task = asyncio.create_task(feed.run())
        await venue.done.wait()
        while sum(feed.stats.frames.values()) < len(src.frames):
            await asyncio.sleep(0.01)
        frames = sum(feed.stats.frames.values())
        assert feed.books["BTCUSDT"].is_tradeable and not feed.stats.decode_errors
        feed.stop()
        await task
    return frames, t_last - t_first


async def raw_run(src) -> tuple[int, float]:
    import aiohttp

    from daemon.venue.server import LocalVenue

    async with LocalVenue(src, start_on="subscriber") as venue, aiohttp.ClientSession() as s:
        url = venue.ws_url + "/stream?streams=btcusdt@trade/btcusdt@depth@100ms/btcusdt@bookTicker"
        async with s.ws_connect(url, max_msg_size=1 << 24) as ws:
            n = 0
            t0 = 0.0
            while n < len(src.frames):
                await ws.receive()
                n += 1
                if n == 1:
                    t0 = time.perf_counter()
            return n, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    if args.loop == "uvloop":
        import uvloop
        uvloop.install()
    from daemon.config import SimulatorConfig
    from daemon.venue.replay import ReplaySource
    from daemon.venue.simulator import MarketSimulator

    if not all(p.exists() for p in PATHS):
        sys.exit(f"recording not found under {REC}")
    t = time.perf_counter()
    src0 = ReplaySource(PATHS, speed=0)
    load_s = time.perf_counter() - t
    print(f"recording: {len(src0.frames)} frames, loaded in {load_s:.2f} s; loop={args.loop}")
    rates, raw_rates = [], []
    for _ in range(args.repeat):
        n, dt = asyncio.run(feed_run(ReplaySource(PATHS, speed=0)))
        rates.append(n / dt)
        n2, dt2 = asyncio.run(raw_run(ReplaySource(PATHS, speed=0)))
        raw_rates.append(n2 / dt2)
    print(f"venue -> websocket -> BinanceFeed (decode + book + callback): median {statistics.median(rates):,.0f} "
          f"frames/s (runs: {', '.join(f'{r:,.0f}' for r in rates)})")
    print(f"venue -> websocket -> bare aiohttp reader (transport only):   median "
          f"{statistics.median(raw_rates):,.0f} frames/s (runs: {', '.join(f'{r:,.0f}' for r in raw_rates)})")
    ts = []
    for seed in range(5):
        t = time.perf_counter()
        sim = MarketSimulator(SimulatorConfig(seed=seed, history_days=30), "BTCUSDT", 1_700_000_000_000_000_000)
        ts.append(time.perf_counter() - t)
    print(f"simulator: 30 days of 1m history ({len(sim.history()['open_ms'])} bars) generated in median "
          f"{statistics.median(ts) * 1e3:.1f} ms")
    t = time.perf_counter()
    evs = sim.advance(sim.start_ns + 3600 * 1_000_000_000)
    dt = time.perf_counter() - t
    print(f"simulator: 1 h of live market ({len(evs)} events) generated in {dt:.2f} s ({len(evs) / dt:,.0f} events/s)")


if __name__ == "__main__":
    main()
