"""``tradingd backtest --data DIR --report OUT`` where DIR is a folder of ``SYMBOL-TF.csv.gz``: the universe
walk-forward (research/walkforward.py) with signal metrics, the learned ensemble and the cost-aware portfolio
against buy-and-hold and the momentum/reversal factors. A single klines file goes to daemon.backtest as before."""
from __future__ import annotations

import time
from pathlib import Path

import structlog

from research.executor import add_executor_arguments, make_executor, run_command
from research.models import ALL_KINDS, MODEL_KINDS
from research.params import load_params, params_for
from research.portfolio import Costs
from research.universe import UniverseError, load_universe
from research.walkforward import WFOptions, evaluate, run_timeframe

log = structlog.get_logger(__name__)

__all__ = ["add_arguments", "main", "run"]

NOTE = ("Strategy figures come from a vectorised top-k long-only portfolio simulation with the costs stated in "
        "info.costs, not yet from the live TradingPipeline (the daemon does not trade a universe yet).")


def add_common(p) -> None:
    p.add_argument("--data", required=True, help="folder of SYMBOL-TF.csv[.gz] files (finest timeframe = base)")
    p.add_argument("--timeframes", default="", help="comma list; default: every configured timeframe >= the base")
    p.add_argument("--symbols", default="", help="comma list to restrict the universe (default: every file)")
    p.add_argument("--last-days", type=float, default=0.0, help="use only the most recent N days")
    p.add_argument("--models", default=",".join(MODEL_KINDS), 
                   help="xgboost,ridge,lstm or a subset; extra kinds: xgboost_ft, lstm_emb")
    p.add_argument("--train-days", type=float, default=WFOptions.train_days)
    p.add_argument("--test-days", type=float, default=WFOptions.test_days)
    p.add_argument("--embargo", type=int, default=0, help="bars between training labels and the test (>= horizon)")
    p.add_argument("--expanding", action="store_true", help="expanding instead of rolling training windows")
    p.add_argument("--params", help="best.json from `tradingd hpo` (per-timeframe parameters)")
    p.add_argument("--horizon", type=int, help="override the label horizon (bars) for every timeframe")
    p.add_argument("--lstm-max-rows", type=int, help="LSTM training subsample per window")
    p.add_argument("--threads", type=int, default=2, help="threads per library (XGBoost, torch)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--fee", type=float, default=Costs.fee, help="taker fee per side (fraction)")
    p.add_argument("--spread-bps", type=float, default=Costs.spread_bps)
    p.add_argument("--slippage-bps", type=float, default=Costs.slippage_bps)
    add_executor_arguments(p)


def add_arguments(p) -> None:
    add_common(p)
    p.add_argument("--report", required=True, help="report directory (metrics.json, index.html, PNGs)")
    p.add_argument("--seeds", type=int, default=1, help="repeat training with K seeds: mean ± std")
    p.add_argument("--strategy-timeframe", default="", help="timeframe of the headline strategy (default: the "
                                                           "coarsest evaluated)")


def _tfs(s: str) -> tuple[str, ...] | None:
    return tuple(x for x in s.split(",") if x) or None


def options(args) -> WFOptions:
    models = tuple(m for m in args.models.split(",") if m)
    bad = set(models) - set(ALL_KINDS)
    if bad or not models:
        raise ValueError(f"--models must be a subset of {','.join(ALL_KINDS)}, got {args.models!r}")
    return WFOptions(train_days=args.train_days, test_days=args.test_days, embargo=args.embargo,
                     expanding=args.expanding, models=models, seeds=getattr(args, "seeds", 1),
                     costs=Costs(args.fee, args.spread_bps, args.slippage_bps))


def _window_kwargs(pw: dict, pf, tf: str, args, opts: WFOptions) -> dict:
    """A per-window best.json (``tradingd hpo --per-window``): window k's models use window k's parameters; the
    yardstick (evaluation horizon, portfolio) is the built-in default, never a later window's choice."""
    from dataclasses import replace
    o = replace(opts, embargo=max(opts.embargo, pw["embargo"]))
    prm = params_for(tf, {}, threads=args.threads, device=args.device, lstm_max_rows=args.lstm_max_rows)
    wp = [prm.with_(**w["params"]) for w in pw["windows"]]
    from research.nested import outer_windows
    ws, _ = outer_windows(pf, o)
    starts = [int(pf.open_ns[w.test_lo]) for w in ws]
    if starts != [w["test_start_ns"] for w in pw["windows"]]:
        raise ValueError(f"{args.params}: its {tf} windows do not match this walk-forward's (same --data, "
                         f"--train-days, --test-days, --expanding, --last-days and --symbols as the hpo run?)")
    return {"prm": prm, "opts": o, "window_params": wp}


def run(args) -> dict:
    """The research walk-forward and its report (metrics.json, index.html)."""
    metrics, evals, results, _ = compute(args)
    from research.report import write_report
    write_report(Path(args.report), metrics, evals, results)
    return metrics


def compute(args) -> tuple[dict, dict, dict, dict]:
    """(metrics, evals, results, panels) of the walk-forward: ``results[tf]`` (a TfResult) holds the out-of-sample
    scores and ``panels[tf]`` the bars that ``daemon.backtest.universe`` replays through the live pipeline."""
    t0 = time.perf_counter()
    opts = options(args)
    loaded = load_params(args.params)
    from research.params import load_window_params
    per_window = load_window_params(args.params)
    uni = load_universe(args.data, _tfs(args.timeframes), symbols=_tfs(args.symbols), last_days=args.last_days)
    t_load = time.perf_counter() - t0
    from research.dataset import panel_features
    results, evals, timings, window_used = {}, {}, {}, {}
    executor = make_executor(args.executor, args.address, num_cpus_per_task=max(1, args.threads))  # Ray: atexit
    for tf, panel in uni.panels.items():
        t1 = time.perf_counter()
        pf = panel_features(panel)
        prm = params_for(tf, loaded, horizon=args.horizon, lstm_max_rows=args.lstm_max_rows, threads=args.threads,
                         device=args.device)
        if args.horizon and not loaded.get(tf, {}).get("rebalance"):
            prm = prm.with_(rebalance=args.horizon)
        t2 = time.perf_counter()
        wkw = _window_kwargs(per_window.get(tf), pf, tf, args, opts) if tf in per_window else {}
        if wkw:
            prm, opts_tf = wkw.pop("prm"), wkw.pop("opts")
        res = run_timeframe(pf, prm, opts_tf if wkw else opts,
                            progress=lambda s: log.info("backtest.progress", step=s), executor=executor, **wkw)
        ev = evaluate(res, opts)
        results[tf], evals[tf] = res, ev
        if wkw:
            window_used[tf] = [p.to_dict() for p in wkw["window_params"]]
        timings[tf] = {"features_s": t2 - t1, "train_predict_s": res.train_seconds,
                       "total_s": time.perf_counter() - t1}
        log.info("backtest.timeframe", tf=tf, **timings[tf])
    executor.close()
    main_tf = args.strategy_timeframe or list(uni.panels)[-1]
    if main_tf not in evals:
        raise ValueError(f"--strategy-timeframe {main_tf} was not evaluated (have {', '.join(evals)})")
    main_model = "ensemble" if "ensemble" in evals[main_tf]["strategies"] else opts.models[0]
    metrics = {
        "signal": {tf: ev["signal"] for tf, ev in evals.items()},
        "strategy": {**evals[main_tf]["strategies"][main_model], "timeframe": main_tf, "model": main_model},
        "baselines": {"buy_and_hold": evals[main_tf]["buy_and_hold"],
                      "momentum": evals[main_tf]["strategies"]["momentum"],
                      "reversal": evals[main_tf]["strategies"]["reversal"]},
        "strategies": {tf: ev["strategies"] for tf, ev in evals.items()},
        "baselines_by_tf": {tf: {"buy_and_hold": ev["buy_and_hold"], "momentum": ev["strategies"]["momentum"],
                                 "reversal": ev["strategies"]["reversal"]} for tf, ev in evals.items()},
        "ensemble": {tf: {"method": "rolling out-of-fold Rank ICIR, clipped at 0", "weights": r.ens_weights}
                     for tf, r in results.items()},
        "info": {"note": NOTE, "universe": uni.info(), "costs": vars(opts.costs) | {"per_side": opts.costs.per_side},
                 "options": {k: v for k, v in vars(opts).items() if k != "costs"},
                 "params": {tf: r.params.to_dict() for tf, r in results.items()},
                 "params_file": args.params,
                 "params_by_window": window_used,
                 "windows": {tf: [vars(w) | {"test_start_ns": int(r.open_ns[w.test_lo])} for w in r.windows]
                             for tf, r in results.items()},
                 "test_span_ns": {tf: ev["test_span_ns"] for tf, ev in evals.items()},
                 "models": {tf: r.model_info for tf, r in results.items()},
                 "timings_s": {"load": t_load, **timings, "total": time.perf_counter() - t0}},
    }
    return metrics, evals, results, uni.panels


def main(args) -> int:
    code, m = run_command("backtest", lambda: run(args), (UniverseError, ValueError))
    if code:
        return code
    s = m["strategy"]
    b = m["baselines"]
    print(f"strategy {s['timeframe']} {s['model']}: return {s['return_pct']:.2f}% sharpe {s['sharpe']:.2f} "
          f"maxDD {s['max_drawdown_pct']:.1f}% trades {s['trades']:.0f} | "
          f"buy-and-hold {b['buy_and_hold']['return_pct']:.2f}% "
          f"sharpe {b['buy_and_hold']['sharpe']:.2f} | momentum {b['momentum']['return_pct']:.2f}% "
          f"sharpe {b['momentum']['sharpe']:.2f}")
    for tf, ms in m["signal"].items():
        for name, d in ms.items():
            print(f"{tf:>4} {name:<9} rank_ic {d['rank_ic']:+.4f} rank_icir {d['rank_icir']:+.3f} ic {d['ic']:+.4f}")
    print(f"report: {Path(args.report) / 'index.html'}")
    return 0
