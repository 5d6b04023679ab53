"""``tradingd hpo --data DIR --trials N --jobs J --out DIR``: Optuna search of the model and portfolio parameters
on an inner walk-forward that never sees an outer test window.

* Data the search may see, per timeframe: the bars of the FIRST outer training window only, i.e. up to
  ``first bar with features + train_days`` — the outer walk-forward (``tradingd backtest`` with the same
  ``--train-days``) starts testing at least one embargo after that, so no outer test bar and no label ending in
  one is ever used by the search (``hpo.<tf>.data_end_ns`` in best.json; tested).
* Inner walk-forward: the first half of that span trains, the second half is cut into ``--inner-folds`` test
  folds (expanding training, an embargo of the horizon before each fold). Objective: mean over folds of the
  annualised Sharpe, after costs, of the top-k long-only portfolio driven by the pooled XGBoost model.
  ``MedianPruner`` stops a trial after a fold where it is below the median of earlier trials at that fold.
* J processes share one study through Optuna's ``JournalStorage`` on a ``JournalFileBackend`` file
  (``OUT/<tf>.journal``; Optuna's FAQ advises against SQLite for parallel workers); ``MaxTrialsCallback`` caps
  the total at N trials across workers.
* best.json: per timeframe the best parameters (``tradingd backtest --params best.json``; ``tradingd train
  --params`` copies them into the model manifest) and the search statistics: trials tried, pruned, and the
  deflated Sharpe ratio (Bailey & López de Prado 2014) of the chosen configuration given every completed trial's
  Sharpe — a lucky search among many trials gets a low DSR.
"""
from __future__ import annotations

import json
import multiprocessing as mp
import time
from pathlib import Path

import numpy as np
import structlog
from scipy.stats import kurtosis, skew

from research.cli_backtest import add_common, options
from research.dataset import FEATURE_NAMES, PanelFeatures, forward_returns, panel_features, target
from research.executor import make_executor, run_command
from research.metrics import deflated_sharpe, ic_series
from research.nested import first_valid, outer_windows
from research.models import fit_model, predict_panel
from research.params import params_for
from research.portfolio import simulate
from research.universe import UniverseError, load_universe
from research.walkforward import WFOptions, bars_of

log = structlog.get_logger(__name__)

__all__ = ["add_arguments", "main", "inner_folds", "hpo_data_end", "suggest", "run_hpo", "search_span",
           "first_valid", "outer_windows"]

_DAY_NS = 86_400_000_000_000


def add_arguments(p) -> None:
    add_common(p)
    p.add_argument("--trials", type=int, default=30, help="total trials per timeframe (all workers together)")
    p.add_argument("--jobs", type=int, default=1, help="worker processes sharing the study (journal file)")
    p.add_argument("--out", required=True, help="output folder: best.json, <tf>.journal, trials.json")
    p.add_argument("--inner-folds", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--per-window", action="store_true",
                   help="nested: a search inside EVERY outer training window (--trials each); best.json then "
                        "holds each window's parameters for `tradingd backtest --params`")


def hpo_data_end(pf: PanelFeatures, opts: WFOptions) -> int:
    """Exclusive end bar of what the search may see: the end of the first outer training window."""
    return min(pf.X.shape[0], first_valid(pf) + bars_of(opts.train_days, pf.timeframe))


def inner_folds(lo: int, hi: int, k: int, h: int) -> list[tuple[int, int, int, int]]:
    """(train_lo, train_hi, test_lo, test_hi) folds inside [lo, hi): expanding training, embargo h, and every
    test label (t + h) ends before ``hi``."""
    usable_hi = hi - h
    mid = lo + (usable_hi - lo) // 2
    step = (usable_hi - mid) // k
    out = []
    for i in range(k):
        a = mid + i * step
        b = usable_hi if i == k - 1 else a + step
        if a - h - lo < 100 or b - a < 10:
            continue
        out.append((lo, a - h, a, b))
    return out


def suggest(trial, tf: str, n_symbols: int) -> dict:
    base = params_for(tf, {})
    h0 = base.horizon
    hs = sorted({max(1, h0 // 2), h0, 2 * h0})
    h = trial.suggest_categorical("horizon", hs)
    return {
        "horizon": h,
        "target": trial.suggest_categorical("target", ["rank", "resid", "raw"]),
        "xgb_objective": trial.suggest_categorical("xgb_objective", ["reg", "rank"]),
        "xgb_depth": trial.suggest_int("xgb_depth", 2, 6),
        "xgb_eta": trial.suggest_float("xgb_eta", 0.01, 0.2, log=True),
        "xgb_min_child_weight": trial.suggest_float("xgb_min_child_weight", 10, 2000, log=True),
        "xgb_subsample": trial.suggest_float("xgb_subsample", 0.5, 1.0),
        "xgb_colsample": trial.suggest_float("xgb_colsample", 0.4, 1.0),
        "xgb_lambda": trial.suggest_float("xgb_lambda", 0.5, 100, log=True),
        "top_k": trial.suggest_int("top_k", 1, max(1, min(10, n_symbols // 3))),
        "rebalance": h * trial.suggest_categorical("rebalance_x", [1, 2, 4, 8]),
        "hold_buffer": trial.suggest_float("hold_buffer", 1.0, 3.0),
    }


def _load_cache(path: Path) -> PanelFeatures:
    d = np.load(path, allow_pickle=False)
    return PanelFeatures(str(d["tf"]), tuple(d["symbols"].tolist()), d["open_ns"], d["X"], d["close"])


def _objective_factory(pf: PanelFeatures, data_end: int, cfg: dict, data_lo: int | None = None):
    import optuna
    opts = WFOptions(**cfg["opts"])
    costs = opts.costs
    fv = first_valid(pf) if data_lo is None else max(first_valid(pf), data_lo)
    bpy = 365 * _DAY_NS / (int(pf.open_ns[1] - pf.open_ns[0]))
    N = pf.X.shape[1]

    def objective(trial) -> float:
        sp = suggest(trial, pf.timeframe, N)
        prm = params_for(pf.timeframe, {}, threads=cfg["threads"], device=cfg["device"]).with_(**sp)
        fwd = forward_returns(pf.close, prm.horizon)
        y = target(fwd, prm.target)
        folds = inner_folds(fv, data_end, cfg["inner_folds"], prm.horizon)
        if not folds:
            raise optuna.TrialPruned("no inner fold fits the HPO data span")
        sharpes, rics, rets = [], [], []
        for i, (a, b, c, d) in enumerate(folds):
            m = fit_model("xgboost", pf, y, a, b, prm, seed=trial.number)
            pred = predict_panel(m, pf, c, d)
            _, ric = ic_series(pred, fwd[c:d])
            if not np.isfinite(ric).any():
                raise optuna.TrialPruned("the model scores every name the same (no split learned)")
            rics.append(float(np.nanmean(ric)))
            s = simulate(pred, pf.close[c:d], top_k=prm.top_k, rebalance=prm.rebalance,
                         hold_buffer=prm.hold_buffer, costs=costs)
            rets.append(s.returns)
            sharpes.append(s.summary(bpy)["sharpe"])
            trial.report(float(np.mean(sharpes)), i)
            if trial.should_prune():
                raise optuna.TrialPruned()
        r = np.concatenate(rets)
        sr = float(r.mean() / r.std(ddof=1)) if r.std(ddof=1) > 0 else 0.0
        trial.set_user_attr("rank_ic", float(np.mean(rics)))
        trial.set_user_attr("sr_per_bar", sr)
        trial.set_user_attr("n_obs", int(len(r)))
        trial.set_user_attr("skew", float(skew(r)) if r.std() > 0 else 0.0)
        trial.set_user_attr("kurt", float(kurtosis(r, fisher=False)) if r.std() > 0 else 3.0)
        trial.set_user_attr("params_full", sp)
        return float(np.mean(sharpes))
    return objective


def _storage(path: Path):
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend
    return JournalStorage(JournalFileBackend(str(path)))


def _worker(cache: str, journal: str, study: str, data_end: int, n_trials: int, seed: int, cfg: dict,
            data_lo: int | None = None) -> None:
    import optuna
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    pf = _load_cache(Path(cache))
    st = optuna.load_study(study_name=study, storage=_storage(Path(journal)),
                           sampler=optuna.samplers.TPESampler(seed=seed, n_startup_trials=5),
                           pruner=optuna.pruners.MedianPruner(n_startup_trials=4, n_warmup_steps=0))
    from optuna.study import MaxTrialsCallback
    from optuna.trial import TrialState
    st.optimize(_objective_factory(pf, data_end, cfg, data_lo), n_trials=n_trials,
                callbacks=[MaxTrialsCallback(n_trials, states=(TrialState.COMPLETE, TrialState.PRUNED,
                                                               TrialState.FAIL))],
                catch=(ValueError,))


def _run_workers(what: str, worker_args: list[tuple]) -> None:
    """One :func:`_worker` per argument tuple sharing the study: in this process for one, else spawned processes
    (a failed worker is a RuntimeError naming ``what``)."""
    if len(worker_args) == 1:
        _worker(*worker_args[0])
        return
    ctx = mp.get_context("spawn")
    ps = [ctx.Process(target=_worker, args=a) for a in worker_args]
    for p in ps:
        p.start()
    for p in ps:
        p.join()
    bad = [p.exitcode for p in ps if p.exitcode]
    if bad:
        raise RuntimeError(f"{what}: {len(bad)} HPO worker(s) failed (exit codes {bad})")


def run_hpo(args) -> dict:
    import optuna
    t0 = time.perf_counter()
    opts = options(args)
    if args.trials < 1 or args.jobs < 1:
        raise ValueError("--trials and --jobs must be >= 1")
    uni = load_universe(args.data, tuple(x for x in args.timeframes.split(",") if x) or None,
                        symbols=tuple(x for x in args.symbols.split(",") if x) or None, last_days=args.last_days)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cfg = {"opts": {"train_days": opts.train_days, "test_days": opts.test_days, "embargo": opts.embargo,
                    "costs": opts.costs}, "threads": args.threads, "device": args.device,
           "inner_folds": args.inner_folds}
    best: dict = {"timeframes": {}, "hpo": {}}
    all_trials = {}
    if getattr(args, "per_window", False):
        return _run_per_window(args, opts, uni, out, cfg, t0)
    executor = make_executor(args.executor, args.address, num_cpus_per_task=max(1, args.threads))
    for tf, panel in uni.panels.items():
        pf = panel_features(panel)
        data_end = hpo_data_end(pf, opts)
        cache = out / f"features_{tf}.npz"
        np.savez(cache, tf=tf, symbols=np.array(pf.symbols), open_ns=pf.open_ns, X=pf.X, close=pf.close)
        journal = out / f"{tf}.journal"
        name = f"tradingd-{tf}"
        optuna.create_study(study_name=name, storage=_storage(journal), direction="maximize", load_if_exists=True)
        t1 = time.perf_counter()
        if executor.name != "local":  # J workers as J tasks on the cluster (cache and journal on a shared path)
            executor.map(_worker, [(str(cache), str(journal), name, data_end, args.trials, args.seed + i, cfg)
                                   for i in range(args.jobs)], label=lambda j: f"{tf} hpo worker seed {j[5]}")
        else:
            _run_workers(tf, [(str(cache), str(journal), name, data_end, args.trials, args.seed + i, cfg)
                              for i in range(args.jobs)])
        search_s = time.perf_counter() - t1
        cache.unlink()
        st = optuna.load_study(study_name=name, storage=_storage(journal))
        from optuna.trial import TrialState
        done = [t for t in st.trials if t.state == TrialState.COMPLETE]
        pruned = [t for t in st.trials if t.state == TrialState.PRUNED]
        if not done:
            raise RuntimeError(f"{tf}: no HPO trial completed ({len(st.trials)} tried)")
        bt = st.best_trial
        srs = np.array([t.user_attrs["sr_per_bar"] for t in done])
        var_sr = float(srs.var(ddof=1)) if len(srs) > 1 else 0.0
        n_tried = len(done) + len(pruned)
        dsr = deflated_sharpe(bt.user_attrs["sr_per_bar"], bt.user_attrs["n_obs"], n_tried, var_sr,
                              bt.user_attrs["skew"], bt.user_attrs["kurt"])
        best["timeframes"][tf] = bt.user_attrs["params_full"]
        best["hpo"][tf] = {"trials": len(st.trials), "completed": len(done), "pruned": len(pruned),
                           "best_value_sharpe": bt.value, "best_trial": bt.number,
                           "best_rank_ic": bt.user_attrs["rank_ic"], "sr_per_bar": bt.user_attrs["sr_per_bar"],
                           "var_sr_across_trials": var_sr, "n_obs": bt.user_attrs["n_obs"],
                           "deflated_sharpe": dsr, "data_end_ns": int(pf.open_ns[data_end - 1]) if data_end else None,
                           "data_end_bar": data_end, "inner_folds": args.inner_folds,
                           "search_seconds": search_s, "trials_per_minute": len(st.trials) / search_s * 60,
                           "jobs": args.jobs, "journal": journal.name}
        all_trials[tf] = [{"number": t.number, "state": t.state.name, "value": t.value, "params": t.params,
                           **{k: v for k, v in t.user_attrs.items() if k != "params_full"}} for t in st.trials]
        log.info("hpo.timeframe", tf=tf, **{k: v for k, v in best["hpo"][tf].items() if k != "journal"})
    executor.close()
    best["executor"] = executor.name
    return _write_best(out, best, all_trials, uni, t0)


def main(args) -> int:
    code, best = run_command("hpo", lambda: run_hpo(args), (UniverseError, ValueError, RuntimeError))
    if code:
        return code
    for tf, h in best["hpo"].items():
        if h.get("per_window"):
            print(f"{tf}: {h['windows']} outer windows x {h['trials_per_window']} trials = {h['trials']} trials "
                  f"({h['pruned']} pruned), deflated Sharpe ratio over all of them {h['deflated_sharpe']:.3f}, "
                  f"{h['trials_per_minute']:.2f} trials/min with {h['jobs']} job(s)")
            continue
        print(f"{tf}: {h['trials']} trials ({h['pruned']} pruned), best inner Sharpe {h['best_value_sharpe']:.2f}, "
              f"deflated Sharpe ratio {h['deflated_sharpe']:.3f}, {h['trials_per_minute']:.2f} trials/min "
              f"with {h['jobs']} job(s)")
    print(f"best parameters: {Path(args.out) / 'best.json'}")
    return 0


# ------------------------------------------------------------------------------- nested: every outer window
def search_span(pf: PanelFeatures, lo: int, hi: int, out: Path, name: str, trials: int, jobs: int, seed: int,
                cfg: dict) -> tuple[dict, list]:
    """One Optuna study on bars [lo, hi) only (inner folds inside, every label before ``hi``): its summary
    statistics and its trials. J processes share the journal file ``out/<name>.journal``."""
    import optuna
    from optuna.trial import TrialState
    cache = out / f"features_{name}.npz"
    np.savez(cache, tf=pf.timeframe, symbols=np.array(pf.symbols), open_ns=pf.open_ns, X=pf.X, close=pf.close)
    journal = out / f"{name}.journal"
    optuna.create_study(study_name=name, storage=_storage(journal), direction="maximize", load_if_exists=True)
    t1 = time.perf_counter()
    try:
        _run_workers(name, [(str(cache), str(journal), name, hi, trials, seed + i, cfg, lo) for i in range(jobs)])
    finally:
        cache.unlink(missing_ok=True)
    search_s = time.perf_counter() - t1
    st = optuna.load_study(study_name=name, storage=_storage(journal))
    done = [t for t in st.trials if t.state == TrialState.COMPLETE]
    pruned = [t for t in st.trials if t.state == TrialState.PRUNED]
    if not done:
        raise RuntimeError(f"{name}: no HPO trial completed ({len(st.trials)} tried)")
    bt = st.best_trial
    stats = {"trials": len(st.trials), "completed": len(done), "pruned": len(pruned), "best_value_sharpe": bt.value,
             "best_trial": bt.number, "best_rank_ic": bt.user_attrs["rank_ic"],
             "sr_per_bar": bt.user_attrs["sr_per_bar"], "n_obs": bt.user_attrs["n_obs"],
             "skew": bt.user_attrs["skew"], "kurt": bt.user_attrs["kurt"], "params": bt.user_attrs["params_full"],
             "srs": [t.user_attrs["sr_per_bar"] for t in done], "search_seconds": search_s,
             "journal": journal.name}
    trials = [{"number": t.number, "state": t.state.name, "value": t.value, "params": t.params,
               **{k: v for k, v in t.user_attrs.items() if k != "params_full"}} for t in st.trials]
    return stats, trials


def _run_per_window(args, opts: WFOptions, uni, out: Path, cfg: dict, t0: float) -> dict:
    """Nested HPO: window k's search sees bars [its training start, its test start) only, so every outer test
    window is scored with parameters chosen without it. The deflated Sharpe ratio counts every trial of every
    window: the chosen configurations' inner returns pooled (Sharpe per bar, weighted by observations) against
    the expected maximum of that many trials with the variance of all completed trials' Sharpe ratios."""
    best: dict = {"timeframes": {}, "hpo": {}, "windows": {}, "embargo": {}}
    all_trials = {}
    for tf, panel in uni.panels.items():
        pf = panel_features(panel)
        ws, E = outer_windows(pf, opts)
        if not ws:
            raise ValueError(f"{tf}: not enough bars for one outer window (train {opts.train_days} d + embargo "
                             f"{E} + test)")
        rows, srs, secs = [], [], 0.0
        n_tr = n_pr = 0
        for k, w in enumerate(ws):
            lo = w.train_lo
            stats, trials = search_span(pf, lo, w.test_lo, out, f"{tf}.w{k}", args.trials, args.jobs,
                                        args.seed + 1000 * k, cfg)
            all_trials[f"{tf}.w{k}"] = trials
            srs += stats.pop("srs")
            secs += stats["search_seconds"]
            n_tr += stats["trials"]
            n_pr += stats["pruned"]
            rows.append({"window": k, "data_lo_bar": lo, "data_end_bar": w.test_lo,
                         "data_lo_ns": int(pf.open_ns[lo]), "data_end_ns": int(pf.open_ns[w.test_lo - 1]),
                         "test_start_ns": int(pf.open_ns[w.test_lo]), "test_end_ns": int(pf.open_ns[w.test_hi - 1]),
                         **stats})
            log.info("hpo.window", tf=tf, window=k, best=stats["best_value_sharpe"], trials=stats["trials"])
        n_obs = sum(r["n_obs"] for r in rows)
        sr = sum(r["sr_per_bar"] * r["n_obs"] for r in rows) / n_obs
        var_sr = float(np.var(srs, ddof=1)) if len(srs) > 1 else 0.0
        dsr = deflated_sharpe(sr, n_obs, n_tr, var_sr, float(np.mean([r["skew"] for r in rows])),
                              float(np.mean([r["kurt"] for r in rows])))
        best["windows"][tf] = rows
        best["embargo"][tf] = E
        best["timeframes"][tf] = rows[-1]["params"]   # `tradingd train --params`: the latest window's choice
        best["hpo"][tf] = {"per_window": True, "windows": len(rows), "trials_per_window": args.trials,
                           "trials": n_tr, "completed": len(srs), "pruned": n_pr, "sr_per_bar": sr, "n_obs": n_obs,
                           "var_sr_across_trials": var_sr, "deflated_sharpe": dsr, "embargo": E,
                           "inner_folds": args.inner_folds, "search_seconds": secs,
                           "trials_per_minute": n_tr / secs * 60 if secs > 0 else float("nan"), "jobs": args.jobs}
        log.info("hpo.timeframe", tf=tf, **best["hpo"][tf])
    return _write_best(out, best, all_trials, uni, t0)


def _write_best(out, best: dict, all_trials: list, uni, t0: float) -> dict:
    """``best.json`` (what ``--params`` reads) and ``trials.json``, with the features, universe and seconds."""
    from research.report import plain
    best["features"] = list(FEATURE_NAMES)
    best["universe"] = uni.info()
    best["seconds"] = time.perf_counter() - t0
    (out / "best.json").write_text(json.dumps(plain(best), indent=1))
    (out / "trials.json").write_text(json.dumps(plain(all_trials), indent=1))
    return best
