#!/usr/bin/env python3
"""Crash soak: SIGKILL the paper-trading worker N times (default 200) at random moments and check the store
after every restart (positions == sum of fills, no duplicate ids, fills a prefix of a clean run's; finished
runs end with exactly the clean run's fills). Prints a summary; exit status 1 if any problem was found.

    .venv/bin/python scripts/crash_soak.py [-n 200] [--seed 1] [--max-delay 1.0] [--keep DIR]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.daemon import crash_worker as cw  # noqa: E402

RECORDING = [ROOT.parent / "shared" / "data" / "binance-ws" / f"spot_btcusdt_2024080{d}.gz" for d in (8, 9)]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", "--kills", type=int, default=200)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--max-delay", type=float, default=1.0, help="kill within this many seconds of READY")
    ap.add_argument("--keep", type=Path, help="directory to keep the store files in (default: a temp dir)")
    a = ap.parse_args()
    missing = [p for p in RECORDING if not p.exists()]
    if missing:
        print(f"recording not found: {missing[0]} (see ../shared/data/README.md)", file=sys.stderr)
        return 2
    rec = [str(p) for p in RECORDING]
    d = a.keep or Path(tempfile.mkdtemp(prefix="crash-soak-"))
    d.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    cw.run_clean(d / "clean.sqlite", rec)
    clean = cw.read_state(d / "clean.sqlite")
    t_clean = time.perf_counter() - t0
    t0 = time.perf_counter()
    st = cw.crash_loop(d, rec, clean, kills=a.kills, seed=a.seed, max_delay=a.max_delay,
                       log=lambda m: print(m, flush=True))
    dt = time.perf_counter() - t0
    steps = Counter(c.rsplit(".", 1)[-1] if c != "None" else "fresh" for c in st["resumed_at"])
    print(f"clean run: {len(clean['fills'])} fills, {len(clean['orders'])} orders, {t_clean:.1f} s")
    print(f"kills: {st['kills']}  restarts: {st['restarts']}  rounds: {st['rounds']} "
          f"(finished between kills: {st['finished_rounds']})  time: {dt:.1f} s")
    print(f"resumed at cursor step: {dict(steps)}  (step 1/2: the order/stops step of that event had committed; "
          "a submission there is repeated and must come back idempotent, a cancel is not repeated)")
    print(f"final fills: {st['final_fills']} (clean: {len(clean['fills'])})")
    print(f"problems: {len(st['problems'])}")
    for p in st["problems"][:20]:
        print("  ", p)
    print(f"stores in {d}")
    return 1 if st["problems"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
