"""XGBoost benchmark: training time on the 90-day BTC 1m klines (all rows, seed params, early stopping), then
single-row and batch-64 inference latency (median, p99) for every XGBoost backend on this machine.

    .venv/bin/python benchmarks/bench_xgb.py [--threads 2] [--full-rounds 1000] [--iters 3000] [--json out.json]

Two models are timed for inference: the early-stopped seed model (what training really produced) and, because
early stopping may keep few trees, a model boosted for the full seed budget (``--full-rounds``, no early
stopping) as the worst case. Latency is wall time of ``engine.predict`` on real feature rows (float32 numpy in,
numpy out), perf_counter_ns, one call at a time after warm-up, on a machine that may be shared with other
jobs: read p99 with that in mind. Figures are printed, never asserted.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
KLINES = ROOT.parent / "shared" / "data" / "klines" / "BTC_USDT-1m_2025-05-20_2025-08-18.csv.gz"


def dataset(path: Path):
    """Features (engines.features) and next-bar direction labels for every 1m bar with a label."""
    from engines.data import load_klines_csv
    from engines.features import FEATURE_SCHEMA, batch_features
    k = load_klines_csv(path)
    X = batch_features(k, "1m")
    close = np.asarray(k.close, np.float64)
    fwd = np.full(close.shape, np.nan)
    fwd[:-1] = close[1:] / close[:-1] - 1.0
    keep = np.isfinite(fwd) & (fwd != 0.0)
    return X[keep], (fwd[keep] > 0).astype(np.float64), fwd[keep], list(FEATURE_SCHEMA.names), FEATURE_SCHEMA.hash


def lat(fn, xs: list[np.ndarray], iters: int) -> tuple[float, float]:
    for i in range(min(200, iters)):
        fn(xs[i % len(xs)])
    ts = np.empty(iters, np.int64)
    for i in range(iters):
        x = xs[i % len(xs)]
        t0 = time.perf_counter_ns()
        fn(x)
        ts[i] = time.perf_counter_ns() - t0
    return float(np.median(ts) / 1e3), float(np.percentile(ts, 99) / 1e3)


def bench_engines(version_dir: Path, Xte: np.ndarray, iters: int, cache: Path, label: str) -> list[dict]:
    from engines.xgb_engine import CompiledCPUEngine, NativeCPUEngine, make_xgb_engine
    from engines.xgb_model import XGBoostModel, select_device
    ref = XGBoostModel.load(version_dir).predict(Xte[:4096])
    cands = [("native-cpu (nthread=1)", lambda: NativeCPUEngine(nthread=1)),
             ("compiled-cpu [pyext]", lambda: CompiledCPUEngine(walker="pyext", cache_dir=cache)),
             ("compiled-cpu [ctypes]", lambda: CompiledCPUEngine(walker="ctypes", cache_dir=cache)),
             ("numpy-cpu (fallback)", lambda: CompiledCPUEngine(walker="numpy", cache_dir=cache))]
    if select_device() == "cuda":
        cands.insert(0, ("native-cuda", lambda: make_xgb_engine("native-cuda")))
    rows = []
    singles = [np.ascontiguousarray(Xte[i:i + 1]) for i in range(1024)]
    batches = [np.ascontiguousarray(Xte[i:i + 64]) for i in range(0, 64 * 64, 64)]
    for name, make in cands:
        eng = make()
        t0 = time.perf_counter()
        eng.load(version_dir)
        load_s = time.perf_counter() - t0
        eng.warmup(50)
        err = float(np.max(np.abs(eng.predict(Xte[:4096]) - ref)))
        n_it = iters if "numpy" not in name else max(50, iters // 20)
        s_med, s_p99 = lat(eng.predict, singles, n_it)
        b_med, b_p99 = lat(eng.predict, batches, max(50, n_it // 4))
        rows.append({"model": label, "backend": name, "single_med_us": s_med, "single_p99_us": s_p99,
                     "b64_med_us": b_med, "b64_p99_us": b_p99, "b64_per_row_us": b_med / 64,
                     "max_abs_err": err, "load_s": load_s, "info": eng.info().extra})
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--klines", type=Path, default=KLINES)
    ap.add_argument("--threads", type=int, default=2, help="XGBoost training threads")
    ap.add_argument("--full-rounds", type=int, default=1000, help="rounds of the no-early-stopping model (0: skip)")
    ap.add_argument("--iters", type=int, default=3000)
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    if not a.klines.exists():
        print(f"klines not found at {a.klines}", file=sys.stderr)
        return 2
    import structlog
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(30))   # warnings only
    from engines.xgb_model import XGBoostModel, binary_metrics, time_split
    import xgboost

    X, y, fwd, names, schema = dataset(a.klines)
    idx_tr, rest = time_split(len(y), 0.3)
    idx_va, idx_te = rest[: len(rest) // 2], rest[len(rest) // 2:]
    print(f"data: {len(y)} labelled 1m bars x {X.shape[1]} features; train {len(idx_tr)} / val {len(idx_va)} / "
          f"test {len(idx_te)} (time order); xgboost {xgboost.__version__}, {a.threads} threads, "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs visible")
    out: dict = {"train": [], "latency": []}
    tmp = Path(tempfile.mkdtemp(prefix="bench_xgb_"))
    models = []
    for label, objective, rounds, es in (("seed+early-stop", "logistic", 1000, 50),
                                         ("seed+early-stop", "dollar", 1000, 50),
                                         (f"full {a.full_rounds} rounds", "logistic", a.full_rounds, None)):
        if rounds <= 0:
            continue
        m = XGBoostModel(device=None, nthread=a.threads, num_boost_round=rounds)
        if objective == "dollar":
            m.configure_for_dollar_profit(10_000)
        m.set_feature_schema(names, schema)
        r = m.train(X[idx_tr], y[idx_tr], X[idx_va], y[idx_va], early_stopping_rounds=es,
                    fwd_return_train=fwd[idx_tr], fwd_return_val=fwd[idx_va])
        ev = m.evaluate(X[idx_te], y[idx_te], fwd[idx_te], position_size=10_000, fee=0.001)
        prior = binary_metrics(y[idx_te], np.full(len(idx_te), y[idx_tr].mean()))
        row = {"model": label, "objective": objective, "device": r.device, "seconds": r.seconds,
               "rounds_run": r.rounds_run, "rounds_used": r.rounds_used, "test_auc": ev["auc"],
               "test_logloss": ev["logloss"], "prior_logloss": prior["logloss"], "test_acc": ev["accuracy"],
               "pnl_usd": ev["pnl_usd"], "n_trades": ev["n_trades"]}
        out["train"].append(row)
        print(f"train {label:>22} {objective:>8}: {r.seconds:7.1f} s on {r.device}, rounds run {r.rounds_run}, "
              f"kept {r.rounds_used}; test AUC {ev['auc']:.4f} logloss {ev['logloss']:.5f} (prior "
              f"{prior['logloss']:.5f}) acc {ev['accuracy']:.4f} P&L ${ev['pnl_usd']:,.0f} / {ev['n_trades']} "
              f"trades at $10k, 0.1% fee per side", flush=True)
        d = m.save(tmp / f"{label}-{objective}".replace(" ", "_"))
        if objective == "logistic":
            models.append((label, d, r.rounds_used))
    Xte = X[idx_te].astype(np.float32)
    for label, d, n_trees in models:
        out["latency"].extend(bench_engines(d, Xte, a.iters, tmp / "cc", f"{label} ({n_trees} trees)"))
    print()
    print(f"{'model':<28} {'backend':<24} {'1-row med':>10} {'1-row p99':>10} {'b64 med':>10} {'b64 p99':>10} "
          f"{'b64/row':>8} {'max|err|':>9} {'load s':>7}")
    for r in out["latency"]:
        print(f"{r['model']:<28} {r['backend']:<24} {r['single_med_us']:>8.1f}us {r['single_p99_us']:>8.1f}us "
              f"{r['b64_med_us']:>8.1f}us {r['b64_p99_us']:>8.1f}us {r['b64_per_row_us']:>6.2f}us "
              f"{r['max_abs_err']:>9.1e} {r['load_s']:>7.2f}")
    if a.json:
        a.json.write_text(json.dumps(out, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
