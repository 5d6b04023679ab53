"""``tradingd record``: record raw frames and REST depth snapshots from a venue to rotating gzip files.

BinanceFeed does the connecting, subscribing, snapshotting, resyncing and reconnecting; its raw hook hands every
frame (as received, garbage included) and every snapshot body to :class:`daemon.recording.Recorder`. The files
replay through ``tradingd venue --recording`` and ``tradingd book-check``.
"""
from __future__ import annotations

import argparse
import asyncio
import signal
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ws-url", default="wss://stream.binance.com:9443", help="websocket base URL")
    p.add_argument("--rest-url", default="https://api.binance.com", help="REST base URL")
    p.add_argument("--symbols", default="BTCUSDT", help="comma separated, e.g. BTCUSDT,ETHUSDT")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--seconds", type=float, default=0.0, help="stop after this many seconds (0 = until SIGINT)")
    p.add_argument("--book-ticker", action="store_true", help="also record <sym>@bookTicker (the book oracle)")
    p.add_argument("--rotate-mb", type=float, default=64.0)
    p.add_argument("--rotate-minutes", type=float, default=60.0)


async def record(symbols: list[str], ws_url: str, rest_url: str, out: Path, seconds: float = 0.0,
                 book_ticker: bool = False, rotate_mb: float = 64.0, rotate_minutes: float = 60.0,
                 stop_event: asyncio.Event | None = None) -> dict:
    """Record until ``seconds`` pass or ``stop_event`` is set; returns the counters."""
    from daemon.config import FeedConfig
    from daemon.binance.feed import BinanceFeed
    from daemon.recording import Recorder

    out.mkdir(parents=True, exist_ok=True)
    stop_event = stop_event or asyncio.Event()
    with Recorder(out, prefix="_".join(s.lower() for s in symbols), rotate_bytes=int(rotate_mb * (1 << 20)),
                  rotate_seconds=rotate_minutes * 60.0) as rec:
        def on_raw(recv_ns: int, raw: bytes, symbol: str | None = None) -> None:
            if symbol is None:
                rec.write(recv_ns, raw)
            else:
                rec.write_snapshot(recv_ns, symbol, raw)

        feed = BinanceFeed(symbols, ws_url, rest_url, FeedConfig(), on_event=lambda ev: None, on_raw=on_raw,
                           extra_streams=("bookTicker",) if book_ticker else ())
        task = asyncio.create_task(feed.run(), name="record-feed")
        try:
            await asyncio.wait_for(stop_event.wait(), seconds if seconds > 0 else None)
        except asyncio.TimeoutError:
            pass
        feed.stop()
        try:
            await asyncio.wait_for(task, 5)
        except asyncio.TimeoutError:
            task.cancel()
        return {"frames": rec.frames, "files": [str(f) for f in rec.files], **feed.counters()}


def main(args: argparse.Namespace) -> int:
    symbols = [s.strip().upper() for s in args.symbols.split(",") if s.strip()]
    if not symbols:
        print("tradingd record: --symbols is empty")
        return 2

    async def go() -> dict:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        return await record(symbols, args.ws_url, args.rest_url, Path(args.out), args.seconds, args.book_ticker,
                            args.rotate_mb, args.rotate_minutes, stop)

    res = asyncio.run(go())
    print(f"recorded {res['frames']} lines into {len(res['files'])} file(s) under {args.out}; "
          f"feed {res['feed']['frames']} decode errors {res['feed']['decode_errors']}")
    return 0
