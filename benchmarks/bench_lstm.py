"""LSTM benchmark: training time on the 90-day BTC 1m klines, then batch-1 and batch-64 inference latency
(median, p99) for every LSTM backend available on this machine.

    .venv/bin/python benchmarks/bench_lstm.py [--epochs 3] [--rows 0] [--json out.json]

Latency is wall time of ``engine.predict`` (input already a float32 numpy array, output back in numpy),
measured with perf_counter_ns after warm-up, one call at a time, on a machine that may be shared: read the
p99 column with that in mind. Figures are printed, never asserted.
"""
from __future__ import annotations

import argparse
import gzip
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


def features_and_labels(path: Path, rows: int, horizon: int):
    """Features from engines.features when it exists (else a small causal set), label = close[t+h] > close[t]."""
    with gzip.open(path, "rt") as f:
        k = np.loadtxt(f, delimiter=",", skiprows=1)
    if rows:
        k = k[-rows:]
    X = None
    source = "local"
    try:
        from engines.data import load_klines_csv
        from engines.features import batch_features
        kl = load_klines_csv(path)
        X = np.asarray(batch_features(kl, "1m"), dtype=np.float64)
        if rows:
            X = X[-rows:]
        source = "engines.features"
    except Exception:
        o, h, low, c, v = k[:, 1], k[:, 2], k[:, 3], k[:, 4], k[:, 5]
        lc, n = np.log(c), len(c)

        def lag(p):
            r = np.full(n, np.nan)
            r[p:] = lc[p:] - lc[:-p]
            return r
        lv = np.log1p(v)
        cs = np.concatenate([[0.0], np.cumsum(lv)])
        m60 = np.full(n, np.nan)
        m60[59:] = (cs[60:] - cs[:-60]) / 60
        X = np.column_stack([lag(1), lag(5), lag(15), np.log(h / low), np.log(c / o), lv - m60])
    c = k[:, 4]
    fwd = np.full(len(c), np.nan)
    fwd[:-horizon] = c[horizon:] / c[:-horizon] - 1
    y = np.where(np.isfinite(fwd), (fwd > 0).astype(float), np.nan)
    return X, y, fwd, source


def time_calls(fn, x, n: int) -> np.ndarray:
    out = np.empty(n, np.int64)
    for i in range(n):
        t0 = time.perf_counter_ns()
        fn(x)
        out[i] = time.perf_counter_ns() - t0
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--klines", type=Path, default=KLINES)
    ap.add_argument("--rows", type=int, default=0, help="use only the last N rows (0 = all 90 days)")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--seq-len", type=int, default=32)
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--horizon", type=int, default=5)
    ap.add_argument("--iters", type=int, default=2000, help="timed batch-1 calls per backend")
    ap.add_argument("--iters64", type=int, default=300, help="timed batch-64 calls per backend")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads for training")
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args()
    if not a.klines.exists():
        print(f"klines not found: {a.klines}", file=sys.stderr)
        return 2

    import torch
    from engines.backends import EXTRA_BACKENDS, LSTM_PREFERENCE, choose_backend, create_engine, probe
    from engines.lstm_model import LSTMModel, binary_metrics, make_sequences, time_split

    torch.set_num_threads(a.threads)
    X, y, fwd, source = features_and_labels(a.klines, a.rows, a.horizon)
    seqs, end = make_sequences(X, a.seq_len)
    ok = np.isfinite(y[end])
    seqs, yy, ff = seqs[ok], y[end][ok], fwd[end][ok]
    n = len(seqs)
    n_test = n // 10
    dev, te = slice(0, n - n_test - a.horizon), slice(n - n_test, n)
    tr, va = time_split(n - n_test - a.horizon, 0.15, gap=a.horizon)
    model = LSTMModel(seq_len=a.seq_len, hidden=a.hidden, layers=a.layers, dropout=0.1, lr=1e-3,
                      batch_size=a.batch_size, epochs=a.epochs, patience=2, seed=0)
    print(f"data: {len(X)} 1m rows ({source} features, {X.shape[1]} cols) -> {n} windows; train {len(tr)}, "
          f"val {len(va)}, test {n_test}; torch {torch.__version__} threads {torch.get_num_threads()}; "
          f"device {model.device}")
    dseq, dy = seqs[dev], yy[dev]
    cpu0 = time.process_time()
    res = model.train(dseq[tr], dy[tr], dseq[va], dy[va],
                      on_epoch_end=lambda ep, r: print(f"  epoch {ep}: train {r['train_loss']:.5f} "
                                                       f"val {r['val_loss']:.5f}", flush=True))
    train_cpu = time.process_time() - cpu0
    test = model.evaluate(seqs[te], yy[te], ff[te], cost=0.002)
    base = binary_metrics(yy[te], np.full(n_test, dy[tr].mean()))
    per_epoch = res.seconds / max(1, res.epochs_run)
    print(f"training: {res.epochs_run} epochs in {res.seconds:.1f}s wall, {train_cpu:.1f}s CPU "
          f"({per_epoch:.1f}s wall/epoch, {a.threads} thread(s)), best epoch "
          f"{res.best_epoch}, precision {res.precision}; params seq_len={a.seq_len} hidden={a.hidden} "
          f"layers={a.layers} batch={a.batch_size} lr=1e-3 dropout=0.1")
    print(f"held-out test: AUC {test['auc']:.4f} logloss {test['logloss']:.5f} (base-rate {base['logloss']:.5f}) "
          f"acc {test['accuracy']:.4f} P&L after 0.2% round trip ${test['pnl']['pnl_usd']:.0f} over "
          f"{test['pnl']['n_trades']} trades of $10k")

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        vdir = Path(tmp) / "bench-v1"
        model.save(vdir)
        x1, x64 = seqs[te][:1].copy(), seqs[te][:64].copy()
        for backend in LSTM_PREFERENCE + EXTRA_BACKENDS["lstm"]:
            avail, why = probe("lstm", backend)
            if not avail:
                rows.append({"backend": backend, "available": False, "reason": why})
                continue
            e = create_engine("lstm", backend)
            t0 = time.perf_counter()
            e.load(vdir)
            load_s = time.perf_counter() - t0
            e.warmup(100)
            b1 = time_calls(e.predict, x1, a.iters) / 1e3
            b64 = time_calls(e.predict, x64, a.iters64) / 1e3
            rows.append({"backend": backend, "available": True, "load_s": load_s,
                         "b1_p50_us": float(np.median(b1)), "b1_p99_us": float(np.percentile(b1, 99)),
                         "b64_p50_us": float(np.median(b64)), "b64_p99_us": float(np.percentile(b64, 99)),
                         "b64_per_row_us": float(np.median(b64)) / 64})
    auto = choose_backend("lstm")
    print(f"\nLSTM inference ({platform.processor() or platform.machine()}, {os.cpu_count()} cpus; "
          f"seq_len {a.seq_len} x {X.shape[1]} features; {a.iters} batch-1 / {a.iters64} batch-64 calls)")
    print(f"{'backend':<18}{'b1 p50 µs':>11}{'b1 p99 µs':>11}{'b64 p50 µs':>12}{'b64 p99 µs':>12}{'µs/row@64':>11}")
    for r in rows:
        if r["available"]:
            print(f"{r['backend']:<18}{r['b1_p50_us']:>11.1f}{r['b1_p99_us']:>11.1f}{r['b64_p50_us']:>12.1f}"
                  f"{r['b64_p99_us']:>12.1f}{r['b64_per_row_us']:>11.2f}")
        else:
            print(f"{r['backend']:<18}  unavailable: {r['reason']}")
    print(f"auto -> {auto.backend} ({auto.reason})")
    if a.json:
        a.json.write_text(json.dumps({"train": {k: v for k, v in vars(res).items() if k != "history"},
                                      "history": res.history, "test": test, "baseline": base,
                                      "latency": rows, "args": {k: str(v) for k, v in vars(a).items()}},
                                     indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
