#!/usr/bin/env python3
"""Drift monitoring cost per bar close, and the training-time reference, printed as figures (never asserted).

    .venv/bin/python benchmarks/bench_drift.py [--window 200] [--bars 20000]

Real BTC 1m features (../shared/data/klines): the reference is built from the first 70 % (as engines.train does
for a model's training rows, with a prediction part from a momentum score) and timed; then one
``DriftStream.update`` per live bar (13 features, 10 bins, prediction + calibration + Page-Hinkley) over the rest:
median and p99 per update in batches of 100, and the 1m-bar duty cycle it implies.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DATA = ROOT.parent / "shared" / "data"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--window", type=int, default=200)
    ap.add_argument("--bars", type=int, default=20_000)
    a = ap.parse_args()
    from engines.data import load_klines_csv
    from engines.drift import DriftParams, DriftStream, Reference, build_reference
    from engines.features import FEATURE_SCHEMA, batch_features
    path = DATA / "klines" / "BTC_USDT-1m_2025-05-20_2025-08-18.csv.gz"
    if not path.exists():
        print(f"drift: {path} not found, skipped")
        return
    k = load_klines_csv(path)
    X = batch_features(k, "1m")
    c = np.asarray(k.close)
    n = len(X)
    cut = int(n * 0.7)
    h, cost = 15, 0.002
    p = np.clip(0.5 + 50 * np.nan_to_num(X[:, 0]), 0.01, 0.99)  # a score in (0, 1)
    fwd = np.full(n, np.nan)
    fwd[:-h] = np.log(c[h:] / c[:-h])
    y = np.where(fwd > cost, 1, np.where(fwd < -cost, 0, -1))
    rows = np.where(np.isfinite(X[:cut]).all(axis=1))[0]
    t0 = time.perf_counter()
    ref = build_reference(X[rows], FEATURE_SCHEMA.names, pred=p[rows], y=y[rows], horizon=h, cost=cost)
    t_ref = time.perf_counter() - t0
    print(f"reference: {len(rows)} training rows x {X.shape[1]} features: {t_ref:.2f} s "
          f"(bins + cross-fitted null quantiles for windows {sorted(int(w) for w in ref['null']['features'])})")
    s = DriftStream(Reference.from_dict(ref), DriftParams(window=a.window))
    live = np.arange(cut, min(n, cut + a.bars))
    per = []
    clock = time.perf_counter_ns
    for i in range(0, len(live) - 100, 100):
        chunk = live[i:i + 100]
        t0 = clock()
        for j in chunk:
            s.update(X[j], float(p[j]), float(c[j]))
        per.append((clock() - t0) / 100)
    per.sort()
    med = statistics.median(per) / 1000
    print(f"update: {len(per) * 100} bar closes, window {a.window}: median {med:.1f} us per symbol x model, "
          f"p99 batch {per[int(len(per) * 0.99)] / 1000:.1f} us; 30 symbols x 4 timeframes x 2 models at one "
          f"boundary ~ {med * 240 / 1000:.1f} ms")


if __name__ == "__main__":
    main()
