"""INT8 vs FP32 LSTM on CPU, side by side in one run (issue 17 item 6): latency, held-out accuracy, dollar P&L.

    .venv/bin/python benchmarks/bench_int8.py [--timeframe 5m] [--epochs 4] [--n1 2000] [--n30 500]
                                              [--hidden 32] [--no-backtest] [--json out.json]

1. One LSTM is trained the way `tradingd train` does (engines.train.train_timeframe: 70 % train / 15 % val /
   15 % held-out test, time-ordered) on the 90-day real BTC 1m klines; its INT8 copies are made from the same
   weights: ``dynamic`` (the default) and ``static`` (calibrated on the training windows only).
2. Latency of ``engine.predict`` per backend (fp32 ``onnxruntime-cpu``, ``onnxruntime-cpu-int8`` with each INT8
   graph), 1 intra-op thread, warm: p50/p99 per single window and per batch of 30 windows (a universe boundary),
   on real held-out windows, the backends interleaved round by round so machine noise hits them alike.
3. Accuracy on the held-out window: AUC, IC (Spearman of P(up) with the forward return), log-loss, the signal's
   dollar P&L (engines.metrics_common.dollar_pnl, the training gate's), and the INT8 graph's max |dp| and rank
   correlation against fp32.
4. Dollar P&L of the single-file walk-forward backtest (`tradingd backtest --data ... --models lstm
   --timeframes TF --lstm-backend onnxruntime-cpu|onnxruntime-cpu-int8`), both runs with the same seeds (so the
   same trained weights in every window), traded windows only (out of sample).

Figures are printed (and written with --json), never asserted. The box may be shared: read p99 with that in mind.
"""
from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
KLINES = ROOT.parent / "shared" / "data" / "klines" / "BTC_USDT-1m_2025-05-20_2025-08-18.csv.gz"

FP32, INT8 = "onnxruntime-cpu", "onnxruntime-cpu-int8"


def _pct(ns: list[int], q: float) -> float:
    return float(np.percentile(np.asarray(ns, np.float64), q) / 1e3)


def latency(engines: dict[str, object], x: np.ndarray, n1: int, n30: int) -> dict[str, dict[str, float]]:
    """p50/p99 µs per single window and per batch of 30, the engines interleaved call by call."""
    t1: dict[str, list[int]] = {k: [] for k in engines}
    t30: dict[str, list[int]] = {k: [] for k in engines}
    m = len(x)
    for i in range(n1):
        w = x[(i * 7) % m][None]
        for k, e in engines.items():
            t0 = time.perf_counter_ns()
            e.predict(w)
            t1[k].append(time.perf_counter_ns() - t0)
    for i in range(n30):
        j = (i * 31) % (m - 30)
        w = np.ascontiguousarray(x[j:j + 30])
        for k, e in engines.items():
            t0 = time.perf_counter_ns()
            e.predict(w)
            t30[k].append(time.perf_counter_ns() - t0)
    return {k: {"b1_p50_us": _pct(t1[k], 50), "b1_p99_us": _pct(t1[k], 99),
                "b30_p50_us": _pct(t30[k], 50), "b30_p99_us": _pct(t30[k], 99)} for k in engines}


def accuracy(p: np.ndarray, y: np.ndarray, fwd: np.ndarray, position_size: float, fee: float) -> dict[str, float]:
    from scipy.stats import spearmanr

    from engines.metrics_common import binary_metrics, dollar_pnl
    m = binary_metrics(y, p)
    ok = np.isfinite(fwd)
    d = dollar_pnl(p, fwd, position_size=position_size, fee=fee)
    return {"auc": m["auc"], "logloss": m["logloss"], "ic": float(spearmanr(p[ok], fwd[ok])[0]),
            "signal_pnl_usd": float(d["pnl_usd"]), "n": int(len(p))}


def backtest(k, tf: str, backend: str, lstm_int8: str, epochs: int, atr_mult: float) -> dict:
    from daemon.backtest.klines import run_backtest
    from daemon.backtest.options import BacktestOptions
    from daemon.config import Config, config_from_dict
    cfg = config_from_dict({"optimizer": {"expected_move_atr_mult": atr_mult}}) if atr_mult else Config()
    opts = BacktestOptions(timeframes=(tf,), models=("lstm",), lstm_backend=backend, lstm_int8=lstm_int8,
                           lstm_epochs=epochs, baseline=False, threads=1)
    t0 = time.perf_counter()
    res = run_backtest(k, None, opts=opts, cfg=cfg)
    run = res.metrics["runs"]["strategy"]
    open_ns, preds = res.predictions[tf]
    backends = sorted({b for w in res.metrics["info"]["windows"] for t in w["timeframes"].values()
                       for b in (t.get("backends") or {}).values()})
    return {"pnl_usd": run["pnl"], "total_return": run["total_return"], "trades": run["trades"],
            "windows": len(res.windows), "backends": backends, "wall_s": time.perf_counter() - t0,
            "p_lstm": preds.get("lstm"), "decisions": res.decisions.get("strategy", [])}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--timeframe", default="5m")
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--hidden", type=int, default=32, help="LSTM hidden units (TrainSpec default 32)")
    ap.add_argument("--n1", type=int, default=2000, help="single-window calls per backend")
    ap.add_argument("--n30", type=int, default=500, help="batch-of-30 calls per backend")
    ap.add_argument("--no-backtest", action="store_true")
    ap.add_argument("--atr-mult", default="0,25",
                    help="backtests to run, by optimizer.expected_move_atr_mult (0 = the config default; the "
                         "default config barely trades these models, 25 is what the backtest tests use to trade)")
    ap.add_argument("--json", help="write the figures here")
    args = ap.parse_args(argv)
    if not KLINES.is_file():
        print(f"no data: {KLINES} missing (../shared/data)", file=sys.stderr)
        return 2
    import torch
    torch.set_num_threads(1)
    from engines.backends import create_engine
    from engines.data import load_klines_csv
    from engines.quantize import INT8_FILE, add_int8
    from engines.train import TrainSpec, _splits, sequence_ends, train_timeframe, windows_at

    k = load_klines_csv(str(KLINES))
    tf = args.timeframe
    spec = TrainSpec(tf, lstm_epochs=args.epochs, lstm_hidden=args.hidden, xgb_rounds=50, threads=1,
                     lstm_int8="dynamic")
    out: dict = {"machine": f"{platform.machine()} {platform.processor() or ''}".strip(), "timeframe": tf,
                 "epochs": args.epochs, "hidden": args.hidden, "data": KLINES.name}
    with tempfile.TemporaryDirectory(prefix="bench-int8-") as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        train_timeframe(k, spec, tmp / "m", progress=lambda m: print(m, file=sys.stderr))
        out["train_s"] = time.perf_counter() - t0
        ds, h, a, b, tr, va, te = _splits(k, spec)
        L = spec.lstm_seq_len
        e_tr, e_te = sequence_ends(ds.X, tr, L), sequence_ends(ds.X, te, L)
        x_tr, x_te = windows_at(ds.X, e_tr, L), windows_at(ds.X, e_te, L)
        y_te, fwd_te = ds.y[e_te].astype(np.float64), ds.fwd[e_te]
        dirs = {"int8-dynamic": tmp / "m" / "lstm", "int8-static": tmp / "static"}
        shutil.copytree(dirs["int8-dynamic"], dirs["int8-static"])
        t0 = time.perf_counter()
        rec = add_int8(dirs["int8-static"], "static", x_tr)
        out["static_quantize_s"] = time.perf_counter() - t0
        out["static_calibration_windows"] = rec.get("calibration_windows")
        out["bytes"] = {"fp32": (dirs["int8-dynamic"] / "lstm.onnx").stat().st_size,
                        "int8-dynamic": (dirs["int8-dynamic"] / INT8_FILE).stat().st_size,
                        "int8-static": (dirs["int8-static"] / INT8_FILE).stat().st_size}
        engines = {}
        for name, backend, d in (("fp32", FP32, dirs["int8-dynamic"]), ("int8-dynamic", INT8, dirs["int8-dynamic"]),
                                 ("int8-static", INT8, dirs["int8-static"])):
            e = create_engine("lstm", backend, threads=1)
            e.load(d)
            e.warmup(200)
            engines[name] = e
        out["latency"] = latency(engines, x_te, args.n1, args.n30)
        from scipy.stats import spearmanr
        p = {name: np.asarray(e.predict(x_te), np.float64) for name, e in engines.items()}
        out["accuracy"] = {name: accuracy(pp, y_te, fwd_te, spec.position_size, spec.cost / 2)
                           for name, pp in p.items()}
        for name in ("int8-dynamic", "int8-static"):
            out["accuracy"][name]["max_abs_dp_vs_fp32"] = float(np.abs(p[name] - p["fp32"]).max())
            out["accuracy"][name]["rank_corr_vs_fp32"] = float(spearmanr(p[name], p["fp32"])[0])
            out["accuracy"][name]["sign_flips_vs_fp32"] = int(((p[name] > 0.5) != (p["fp32"] > 0.5)).sum())

    out["backtest"] = {}
    for mult in ([] if args.no_backtest else [float(v) for v in args.atr_mult.split(",") if v.strip()]):
        bt = {}
        for name, backend, method in (("fp32", FP32, "dynamic"), ("int8-dynamic", INT8, "dynamic")):
            print(f"backtest {name} atr_mult {mult:g} ...", file=sys.stderr)
            bt[name] = backtest(k, tf, backend, method, 1, mult)
        a32, a8 = bt["fp32"].pop("p_lstm"), bt["int8-dynamic"].pop("p_lstm")
        ok = np.isfinite(a32) & np.isfinite(a8)
        d32, d8 = bt["fp32"].pop("decisions"), bt["int8-dynamic"].pop("decisions")
        bt["walk_forward_predictions"] = int(ok.sum())
        bt["max_abs_dp"] = float(np.abs(a32[ok] - a8[ok]).max()) if ok.any() else None
        bt["decisions_differing"] = int(sum(1 for u, v in zip(d32, d8) if u != v) + abs(len(d32) - len(d8)))
        out["backtest"][f"atr_mult={mult:g}" if mult else "config default"] = bt

    print(json.dumps(out, indent=1, default=float))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
