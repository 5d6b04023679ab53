#!/usr/bin/env python3
"""Decision time at a bar boundary for a universe of symbols: the batched path (ONE inference call per model
and ONE ``decide_universe`` per boundary) against the sequential one (``batch=False``: per symbol ``predict`` and
``on_bar_close``), side by side in one run. Printed, never asserted.

    .venv/bin/python benchmarks/bench_universe_decide.py [--symbols 30 100] [--hours 2]

Real parts: tiny XGBoost (50 rounds) and LSTM (seq_len 8, hidden 16) models trained on synthetic rows, published
to a real registry and loaded through ``EngineSet.load`` (the daemon's backends) for 1m/5m/15m/1h; the real
optimizer, risk manager, paper broker and SQLite store. Market: seeded random-walk 1m bars per symbol, primed with
the history the 1h features need, then ``--hours`` of live minutes fed symbol after symbol. A boundary's time is
the wall time of feeding every symbol's 1m bar of that minute (features, inference, decision, orders): the
decision is complete when the last symbol's bar returns. Reported: p50/p99 over all minute boundaries, and the mean
over the hour boundaries (where all 4 timeframes close).

``--family universe``: the pooled universe models instead (``daemon/universe_engine.py``: rolling universe state,
the 33 cross-sectional features, ONE call per model for xgboost + ridge + lstm), trained by ``tradingd train --data``
on the first 2 days of this market's 1m bars (the bundle serves all 4 timeframes: the timing does not depend on
what it learned). Batched only (the universe models rank symbols against each other: there is no per-symbol path).
Both families side by side in one run: ``--family universe per_symbol``.
"""
from __future__ import annotations

import argparse
import gc
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TFS = ("1m", "5m", "15m", "1h")
M = 60_000_000_000


def registry(root: Path) -> Path:
    import dataclasses  # noqa: F401
    from engines.features import FEATURE_SCHEMA
    from engines.lstm_model import LSTMModel, make_sequences
    from engines.registry import ModelRegistry
    from engines.xgb_model import XGBoostModel
    names = list(FEATURE_SCHEMA.names)
    rng = np.random.default_rng(0)
    X = rng.standard_normal((2000, len(names))).astype(np.float32)
    y = (X[:, 0] + 0.5 * rng.standard_normal(2000) > 0).astype(np.float64)
    reg = ModelRegistry(root)
    xm = XGBoostModel(device="cpu", num_boost_round=50, nthread=1)
    xm.set_feature_schema(names, FEATURE_SCHEMA.hash)
    xm.train(X[:1500], y[:1500], X[1500:], y[1500:], early_stopping_rounds=None)
    lm = LSTMModel(device="cpu", seq_len=8, hidden=16, layers=1, epochs=1, batch_size=256)
    lm.set_feature_schema(names, FEATURE_SCHEMA.hash)
    Xs, idx = make_sequences(X, 8)
    lm.train(Xs[:1500], y[idx][:1500], Xs[1500:], y[idx][1500:])
    for tf in TFS:
        reg.publish("xgboost", tf, xm.save, feature_names=names, schema_hash=FEATURE_SCHEMA.hash, make_current=True)
        reg.publish("lstm", tf, lm.save, feature_names=names, schema_hash=FEATURE_SCHEMA.hash, make_current=True)
    return root


def market(n_sym: int, n_min: int, seed: int = 1):
    """symbol -> list of 1m Bars (a common factor plus each symbol's own moves)."""
    from market.events import Bar
    rng = np.random.default_rng(seed)
    t0 = 1_700_000_000_000_000_000 // (3600 * 10**9) * 3600 * 10**9
    f = rng.standard_normal(n_min) * 8e-4
    out = {}
    for k in range(n_sym):
        sym = f"S{k:03d}USDT"
        r = 0.7 * f + rng.standard_normal(n_min) * 6e-4
        close = 100.0 * np.exp(np.cumsum(r))
        opn = np.concatenate([[100.0], close[:-1]])
        hi = np.maximum(opn, close) * (1 + np.abs(rng.standard_normal(n_min)) * 2e-4)
        lo = np.minimum(opn, close) * (1 - np.abs(rng.standard_normal(n_min)) * 2e-4)
        vol = rng.uniform(5, 50, n_min)
        out[sym] = [Bar(sym, "1m", t0 + i * M, float(opn[i]), float(hi[i]), float(lo[i]), float(close[i]),
                        float(vol[i]), float(vol[i] * close[i]), 100, float(vol[i] / 2)) for i in range(n_min)]
    return out


def universe_sets(tmp: Path, bars, syms):
    """One pooled bundle trained by `tradingd train --data` on 2 days of the market's 1m bars, for every timeframe."""
    import gzip

    from daemon.cli import main as cli
    from daemon.universe_engine import UniverseEngineSet
    from engines.pooled import load_bundle
    folder = tmp / f"klines-{len(syms)}"
    folder.mkdir(exist_ok=True)
    for s in syms[:30]:
        with gzip.open(folder / f"{s}-1m.csv.gz", "wt") as f:
            f.write("open_time_ms,open,high,low,close,volume\n")
            for b in bars[s][:2880]:
                f.write(f"{b.open_ns // 1_000_000},{b.open!r},{b.high!r},{b.low!r},{b.close!r},{b.volume!r}\n")
    out = tmp / f"ureg-{len(syms)}"
    if cli(["train", "--data", str(folder), "--registry", str(out), "--timeframes", "1m", "--lstm-max-rows", "3000",
            "--threads", "1"]):
        raise SystemExit("training failed")
    b = load_bundle(out / "universe" / "1m")
    return {tf: UniverseEngineSet(tf, b, syms) for tf in TFS}


def pipeline(reg_root: Path, tmp: Path, syms, batch: bool, family: str = "per_symbol", bars=None):
    import dataclasses
    from daemon.broker import PaperBroker
    from daemon.config import Config, replace
    from daemon.engineset import EngineSet
    from daemon.pipeline import TradingPipeline
    from daemon.store import SQLiteStore
    from engines.registry import ModelRegistry
    from market.filters import SymbolFilters
    from strategies.optimizer import DollarProfitOptimizer
    from strategies.risk import RiskManager
    cfg = replace(Config(), general={"timeframes": TFS, "data_dir": str(tmp), "symbols": tuple(syms)})
    filters = {s: SymbolFilters(s, 0.0001, 0.001, 0.001, 1e7, 5.0) for s in syms}
    store = SQLiteStore(tmp / f"store-{family}-{len(syms)}-{int(batch)}.sqlite")
    broker = PaperBroker(cfg.broker, store, symbols=tuple(syms), filters=filters)
    opt = DollarProfitOptimizer(cfg.optimizer, cfg.risk, filters=filters, fee_rate=cfg.broker.taker_fee,
                                timeframes=TFS, starting_equity=cfg.broker.starting_cash)
    ecfg = dataclasses.replace(cfg.engines, warmup_iters=5)
    es = universe_sets(tmp, bars, syms) if family == "universe" else \
        {tf: EngineSet.load(ModelRegistry(reg_root), tf, ecfg) for tf in TFS}
    return TradingPipeline(cfg, syms, es, opt, RiskManager(cfg.risk, filters), broker, store=store,
                           bar_sink=lambda bars: None, batch=batch), es


def book(c: float):
    return [(c * 0.99995, 50.0)], [(c * 1.00005, 50.0)]


def run(reg_root: Path, tmp: Path, n_sym: int, hours: int, family: str = "per_symbol") -> None:
    from daemon.pipeline import history_bars_needed
    from daemon.universe_engine import history_extra_bars
    extra = history_extra_bars(16) if family == "universe" else 8  # the LSTM's window (16 / 8 bars)
    hist = history_bars_needed(TFS, extra)
    hist += (-hist) % 60  # live minutes start at an hour
    bars = market(n_sym, hist + hours * 60)
    syms = list(bars)
    gc.collect()
    gc.freeze()  # the market's Bars (~1M objects at 100 symbols, held by the benchmark only, not by a daemon) out
    # of the collector's full passes: one of them scanning these took ~200 ms and could land on a boundary
    res = {}
    modes = (True,) if family == "universe" else (True, False)
    for batch in modes:
        pipe, es = pipeline(reg_root, tmp, syms, batch, family, bars)
        t0 = time.perf_counter()
        for s in syms:
            pipe.prime(s, bars[s][:hist])
        pipe.finish_priming()  # as kernel.prime does (the universe engine steps the aligned history here)
        prime_s = time.perf_counter() - t0
        per, hour = [], []
        clock = time.perf_counter_ns
        for i in range(hist, hist + hours * 60):
            t = clock()
            for s in syms:
                b = bars[s][i]
                pipe.on_bar(b, book(b.close))
            dt = (clock() - t) / 1e6
            per.append(dt)
            if (bars[syms[0]][i].open_ns + M) % (3600 * 10**9) == 0:
                hour.append(dt)
        n_dec = pipe.counters["decisions"]
        preds = sum(es[tf].predictions for tf in TFS)
        res[batch] = (np.percentile(per, 50), np.percentile(per, 99), float(np.mean(hour)) if hour else float("nan"),
                      n_dec, preds, prime_s, pipe.counters["orders"])
    gc.unfreeze()
    print(f"{n_sym} symbols x {len(TFS)} timeframes ({family}), {hours * 60} minute boundaries ({hours} hour "
          f"boundaries):")
    for batch in modes:
        p50, p99, hr, n_dec, preds, prime_s, orders = res[batch]
        print(f"  {'batched   ' if batch else 'sequential'}  p50 {p50:7.2f} ms  p99 {p99:7.2f} ms  "
              f"hour boundary (4 tf) mean {hr:7.2f} ms   decisions {n_dec}  rows predicted {preds}  "
              f"orders {orders}  (priming {prime_s:.1f} s)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--symbols", type=int, nargs="+", default=[30, 100])
    ap.add_argument("--hours", type=int, default=2)
    ap.add_argument("--family", choices=("per_symbol", "universe"), nargs="+", default=["per_symbol"],
                    help="one or both (side by side in one run, per symbol count)")
    a = ap.parse_args()
    import logging

    import structlog
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    with tempfile.TemporaryDirectory() as d:
        root = registry(Path(d) / "registry")
        for n in a.symbols:
            for family in a.family:
                run(root, Path(d), n, a.hours, family)


if __name__ == "__main__":
    main()
