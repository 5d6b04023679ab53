"""``tradingd backtest``: over 1m klines (:mod:`daemon.backtest.klines`) or a raw recording
(:mod:`daemon.backtest.recording`), with a report (:mod:`daemon.backtest.report`).

Symbol: ``--symbol``, else the pair the file name names (``BTC_USDT-1m_...``, ``BTCUSDT-5m.csv.gz``:
``engines.data.symbol_from_name``); a name that names none (``eth.csv``) exits 2 asking for ``--symbol``, and so
does ``--store`` without it. Never a default symbol.

Bad input: ``engines.data.load_klines_csv`` refuses unusable files with an error naming the file and line (the
command prints it and exits 2) and repairs what has one right answer (missing minutes filled as flat
zero-volume bars at the previous close, exact duplicate rows dropped); the counts are in metrics.json ``info``.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

from daemon.backtest.klines import run_backtest
from daemon.backtest.options import (BTCUSDT_FILTERS, MIN_TEST_DAYS, MIN_TRAIN_DAYS, BacktestOptions, DataTooShort,
                                     default_filters)
from daemon.backtest.recording import run_recording_backtest

__all__ = ["add_arguments", "main"]


def add_arguments(p) -> None:
    d = BacktestOptions()
    p.add_argument("--data", help="1m klines CSV (open_time_ms,open,high,low,close,volume; .gz ok)")
    p.add_argument("--store", help="read 1m bars from the daemon's SQLite store instead")
    p.add_argument("--recording", nargs="+", metavar="PATH",
                   help="raw frame recording(s) (<recv_ns> <frame> .gz files or directories): replayed through the "
                        "live path (real L2 book fills) with the models of --registry")
    p.add_argument("--registry", help="--recording: model registry directory (e.g. made by `tradingd train`)")
    p.add_argument("--history", help="--recording: 1m klines CSV ending before the recording, primes the features "
                                     "(without it predictions start after the warm-up)")
    p.add_argument("--symbol", default="",
                   help="symbol (default: the pair the --data file name names, e.g. BTC_USDT-1m_...csv.gz or "
                        "BTCUSDT-5m.csv.gz; required when it names none, and with --store)")
    p.add_argument("--report", required=True, help="report directory (metrics.json, trades.csv, PNGs, index.html)")
    p.add_argument("--config", help="config.toml (optimizer, risk, broker fees, bars); default: built-in defaults")
    p.add_argument("--timeframes", default=",".join(d.timeframes))
    p.add_argument("--models", default=",".join(d.models), help="xgboost,lstm or one of them")
    p.add_argument("--train-days", type=float, default=d.train_days,
                   help=f"walk-forward training days; a file shorter than train+test has both shrunk in proportion "
                        f"(down to {MIN_TRAIN_DAYS:g} + {MIN_TEST_DAYS:g} days, else exit 2)")
    p.add_argument("--test-days", type=float, default=d.test_days, help="walk-forward test (traded) days")
    p.add_argument("--warm-days", type=float, default=d.warm_days,
                   help="days of decisions without predictions before the first window (optimizer warm-up)")
    p.add_argument("--xgb-rounds", type=int, default=d.xgb_rounds)
    p.add_argument("--xgb-early-stopping", type=int, default=d.xgb_early_stopping)
    p.add_argument("--lstm-epochs", type=int, default=d.lstm_epochs)
    p.add_argument("--lstm-hidden", type=int, default=d.lstm_hidden)
    p.add_argument("--lstm-seq-len", type=int, default=d.lstm_seq_len)
    p.add_argument("--threads", type=int, default=d.threads,
                   help="threads per library for training/inference (0 = library default; 1 is fastest on small "
                        "shared boxes)")
    p.add_argument("--no-warm-start", action="store_true",
                   help="train every walk-forward window from scratch (default: window 1 from scratch, later "
                        "windows continue the previous window's models)")
    p.add_argument("--xgb-warm-rounds", type=int, default=d.xgb_warm_rounds,
                   help="warm start: XGBoost trees added per window (early-stopped)")
    p.add_argument("--lstm-warm-epochs", type=int, default=d.lstm_warm_epochs,
                   help="warm start: LSTM fine-tuning epochs per window (on the windows not fitted yet)")
    p.add_argument("--serial", action="store_true",
                   help="run the momentum baseline in this process after the strategy (default: a forked "
                        "process while the models train)")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--xgb-backend", default=d.xgb_backend)
    p.add_argument("--lstm-backend", default=d.lstm_backend,
                   help="onnxruntime-cpu (fp32), onnxruntime-cpu-int8 (the INT8 graph, see --lstm-int8), torch-cpu")
    p.add_argument("--lstm-int8", default=d.lstm_int8, choices=("dynamic", "static", "none"),
                   help="how each window's INT8 LSTM is made (static: calibrated on its training windows)")
    p.add_argument("--spread-bps", type=float, default=d.spread_bps, help="synthetic book full spread (bps)")
    p.add_argument("--level-bps", type=float, default=d.level_bps, help="synthetic book level spacing (bps)")
    p.add_argument("--levels", type=int, default=d.levels, help="synthetic book levels per side")
    p.add_argument("--level-notional", type=float, default=d.level_notional,
                   help="synthetic book size per level (quote)")
    p.add_argument("--tick-size", type=float, default=BTCUSDT_FILTERS.tick_size)
    p.add_argument("--lot-step", type=float, default=BTCUSDT_FILTERS.lot_step)
    p.add_argument("--min-notional", type=float, default=BTCUSDT_FILTERS.min_notional)
    p.add_argument("--starting-cash", type=float, default=0.0, help="0 = broker.starting_cash")
    p.add_argument("--no-baseline", action="store_true", help="skip the momentum baseline run")
    p.add_argument("--baseline-conviction", type=float, default=d.baseline_conviction)
    p.add_argument("--no-intrabar-exits", action="store_true",
                   help="check stops/take-profits only at bar closes (not on each 1m bar's range)")
    p.add_argument("--log-level", default="warning", choices=("debug", "info", "warning", "error"),
                   help="log level during the run (info logs every intent and timeframe switch)")
    p.add_argument("--workdir", help="keep the walk-forward models here (default: a temporary directory)")


def _split(s: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in s.split(",") if x.strip())


def main(args) -> int:
    import orjson

    from daemon.config import load_config
    from daemon.logs import configure
    from engines.data import KlinesError
    configure(level=args.log_level, json=False)
    if args.recording:
        return _main_recording(args)
    if not args.data and not args.store:
        print("tradingd backtest: give --data CSV or --store PATH", file=sys.stderr)
        return 2
    try:
        cfg = load_config(args.config)
        opts = BacktestOptions(
            timeframes=_split(args.timeframes), models=_split(args.models), train_days=args.train_days,
            test_days=args.test_days, warm_days=args.warm_days, xgb_rounds=args.xgb_rounds,
            xgb_early_stopping=args.xgb_early_stopping, lstm_epochs=args.lstm_epochs,
            lstm_hidden=args.lstm_hidden, lstm_seq_len=args.lstm_seq_len, threads=args.threads, seed=args.seed,
            warm_start=not args.no_warm_start, xgb_warm_rounds=args.xgb_warm_rounds,
            lstm_warm_epochs=args.lstm_warm_epochs, parallel=not args.serial,
            xgb_backend=args.xgb_backend, lstm_backend=args.lstm_backend, spread_bps=args.spread_bps,
            lstm_int8=args.lstm_int8,
            level_bps=args.level_bps, levels=args.levels, level_notional=args.level_notional,
            baseline=not args.no_baseline, baseline_conviction=args.baseline_conviction,
            intrabar_exits=not args.no_intrabar_exits)
        opts.validate()
        t0 = time.perf_counter()
        if args.data:
            from engines.data import load_klines_csv, symbol_from_name
            if not (args.symbol or symbol_from_name(args.data)):  # never a default symbol (eth.csv is not BTC)
                print(f"tradingd backtest: {args.data}: the file name names no trading pair (like BTC_USDT-1m_... "
                      f"or BTCUSDT-5m.csv.gz); pass --symbol, e.g. --symbol ETHUSDT", file=sys.stderr)
                return 2
            k = load_klines_csv(args.data, symbol=args.symbol or None)
        else:
            if not args.symbol:
                print("tradingd backtest: --store needs --symbol (the store keeps bars of every symbol)",
                      file=sys.stderr)
                return 2
            from daemon.train_cli import load_training_data
            k = load_training_data(None, store=args.store, symbol=args.symbol)
        load_s = time.perf_counter() - t0
        rules = default_filters(k.symbol, tick_size=args.tick_size, lot_step=args.lot_step,
                            min_qty=args.lot_step, min_notional=args.min_notional)
        res = run_backtest(k, args.report, opts=opts, cfg=cfg, rules=rules,
                           starting_cash=args.starting_cash or None, workdir=args.workdir,
                           progress=lambda m: print(m, file=sys.stderr))
    except DataTooShort as e:
        print(f"tradingd backtest: {args.data or args.store}: {e}", file=sys.stderr)
        return 2
    except (KlinesError, ValueError, OSError) as e:
        print(f"tradingd backtest: {e}", file=sys.stderr)
        return 2
    m = res.metrics
    t = dict(m["info"]["timing"], load_s=load_s)
    summary = {"report": str(Path(args.report).resolve()), "symbol": m["symbol"], "timing_s": t,
               "warnings": m["info"].get("warnings", []),
               "runs": {name: {k: r.get(k) for k in ("total_return", "annualised_return", "sharpe", "sortino",
                                                      "max_drawdown", "trades", "win_rate", "profit_factor",
                                                      "fees_paid", "slippage_paid", "exposure")}
                        for name, r in m["runs"].items()}}
    print(orjson.dumps(summary, option=orjson.OPT_INDENT_2).decode())
    return 0


def _main_recording(args) -> int:
    """``tradingd backtest --recording PATH... --registry DIR --report DIR [--history CSV]``."""
    import orjson

    from daemon.config import load_config
    from engines.base import ModelLoadError
    from engines.data import KlinesError
    if args.data or args.store:
        print("tradingd backtest: --recording replays a recording; --data/--store are for klines runs",
              file=sys.stderr)
        return 2
    if not args.registry:
        print("tradingd backtest: --recording needs --registry DIR (models, e.g. from `tradingd train`)",
              file=sys.stderr)
        return 2
    if not Path(args.registry).is_dir():
        print(f"tradingd backtest: registry {args.registry} is not a directory", file=sys.stderr)
        return 2
    try:
        cfg = load_config(args.config)
        history = None
        if args.history:
            from engines.data import load_klines_csv
            history = load_klines_csv(args.history, symbol=args.symbol or None)
        else:
            print("tradingd backtest: no --history: predictions start only after the features' warm-up",
                  file=sys.stderr)
        timeframes = _split(args.timeframes)
        sym = args.symbol or None
        rules = default_filters(sym or "BTCUSDT", tick_size=args.tick_size, lot_step=args.lot_step,
                            min_qty=args.lot_step, min_notional=args.min_notional)
        res = run_recording_backtest(args.recording, args.registry, args.report, cfg=cfg, symbol=sym,
                                     history=history, timeframes=timeframes, kinds=_split(args.models),
                                     rules=rules, starting_cash=args.starting_cash or None, workdir=args.workdir,
                                     progress=lambda m: print(m, file=sys.stderr))
    except (KlinesError, ModelLoadError, ValueError, OSError) as e:
        print(f"tradingd backtest: {e}", file=sys.stderr)
        return 2
    m = res.metrics
    r = m["runs"]["strategy"]
    c = res.counters
    summary = {"report": str(Path(args.report).resolve()), "symbol": m["symbol"], "timing_s": m["info"]["timing"],
               "trades_processed": c["replay"].get("trades", 0), "frames": c["replay"].get("frames", 0),
               "bars": c["pipeline"].get("bars", 0), "predictions": {k: v for k, v in c["pipeline"].items()
                                                                    if k.startswith("predictions.")},
               "orders": c["orders"], "fills": c["pipeline"].get("fills", 0),
               "strategy": {k: r.get(k) for k in ("pnl", "total_return", "trades", "fees_paid", "slippage_paid",
                                                  "max_drawdown")}}
    print(orjson.dumps(summary, option=orjson.OPT_INDENT_2).decode())
    return 0
