#!/usr/bin/env python3
"""Per-trade BarBuilder cost and batch/incremental feature cost, printed as figures (never asserted).

    .venv/bin/python benchmarks/bench_features.py [--klines PATH] [--repeat N]

Bars: the 19,904 real BTCUSDT trades of ../shared/data/binance-ws, replayed many times (shifted in time so the
event clock keeps moving), 4 timeframes; reports median and p99 ns per on_trade over batches of 1,000 calls.
Features: batch_features over the 90-day BTC 1m klines (130,708 bars) and its 5m/15m/1h resamples, and
IncrementalFeatures.update per bar.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DATA = ROOT.parent / "shared" / "data"


def bench_bars(repeat: int) -> None:
    from market.bars import BarBuilder
    from market.events import Trade
    from tests.market.test_bars import recorded_trades

    files = [DATA / "binance-ws" / "spot_btcusdt_20240808.gz", DATA / "binance-ws" / "spot_btcusdt_20240809.gz"]
    if not all(f.exists() for f in files):
        print("bars: recording not found, skipped")
        return
    base = recorded_trades(files)
    span = base[-1].ts_event - base[0].ts_event + 60_000_000_000
    trades = [Trade(t.symbol, t.trade_id, t.price, t.qty, t.is_buyer_maker, t.ts_event + r * span, t.ts_recv)
              for r in range(repeat) for t in base]
    b = BarBuilder("BTCUSDT", ("1m", "5m", "15m", "1h"))
    on_trade = b.on_trade
    per = []
    clock = time.perf_counter_ns
    for i in range(0, len(trades) - 1000, 1000):
        chunk = trades[i:i + 1000]
        t0 = clock()
        for t in chunk:
            on_trade(t)
        per.append((clock() - t0) / 1000)
    per.sort()
    print(f"bars: {len(per) * 1000} trades, 4 timeframes: median {statistics.median(per) / 1000:.3f} us/trade "
          f"(per 1,000-trade batch), p99 batch {per[int(len(per) * 0.99)] / 1000:.3f} us/trade, "
          f"bars closed {b.stats.bars_closed}")


def bench_features(path: Path) -> None:
    import numpy as np
    from engines.data import klines_to_bars, load_klines_csv, resample
    from engines.features import IncrementalFeatures, batch_features

    if not path.exists():
        print("features: klines not found, skipped")
        return
    t0 = time.perf_counter()
    k = load_klines_csv(path)
    print(f"load_klines_csv: {len(k)} rows in {time.perf_counter() - t0:.3f} s")
    total = 0.0
    for tf in ("1m", "5m", "15m", "1h"):
        t0 = time.perf_counter()
        kk = k if tf == "1m" else resample(k, tf)
        t1 = time.perf_counter()
        best = min(_timed(batch_features, kk, tf) for _ in range(3))
        total += best
        print(f"batch_features {tf}: {len(kk)} bars in {best:.3f} s (best of 3; resample {t1 - t0:.3f} s)")
    print(f"batch_features all 4 timeframes: {total:.3f} s")
    kk = resample(k, "5m")
    bars = klines_to_bars(kk)
    inc = IncrementalFeatures("5m")
    t0 = time.perf_counter()
    for bar in bars:
        inc.update(bar)
    dt = time.perf_counter() - t0
    print(f"IncrementalFeatures.update 5m: {dt / len(bars) * 1e6:.1f} us/bar over {len(bars)} bars")
    del np


def _timed(fn, *a) -> float:
    t0 = time.perf_counter()
    fn(*a)
    return time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--klines", type=Path, default=DATA / "klines" / "BTC_USDT-1m_2025-05-20_2025-08-18.csv.gz")
    ap.add_argument("--repeat", type=int, default=10)
    ap.add_argument("--only", choices=("bars", "features"))
    a = ap.parse_args()
    if a.only != "features":
        bench_bars(a.repeat)
    if a.only != "bars":
        bench_features(a.klines)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
