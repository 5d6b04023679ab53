"""Walk-forward evaluation over a universe: windows with an embargo, pooled models per window, out-of-sample
signal metrics, a learned (rolling ICIR) ensemble, and the cost-aware portfolio against baselines.

Windows (in bars of the timeframe): test windows of ``test_days`` follow each other from the end of the first
training span to the end of the data; the models that score test window [a, b) are fitted on the bars
[a - E - train, a - E) (rolling; ``expanding`` starts at the first bar) whose labels all end before a: a row t
has its label at t + h, and E >= h (the embargo, default h) so t + h < a. :func:`check_embargo` asserts it.

Ensemble (per timeframe and seed): window k's weights are each model's Rank ICIR over the earlier test windows'
bars whose labels ended before window k starts (so the weights are learned out of fold and causally),
negative ICIRs clipped to 0; equal weights when there is no history yet or all are <= 0. The scores combined
are the models' cross-sectional z-scores. Weights per window are recorded in the report.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import structlog

from market.events import timeframe_ns
from engines.xsection import cs_zscore  # noqa: F401 - re-exported (one definition)
from research.dataset import PanelFeatures, forward_returns, target
from research.executor import Executor, LocalExecutor
from research.metrics import ic_series, signal_metrics
from research.models import FACTORS, ModelParams, factor_scores, fit_model, predict_panel
from research.portfolio import Costs, buy_and_hold, simulate

log = structlog.get_logger(__name__)

__all__ = ["WFOptions", "Window", "windows", "check_embargo", "run_timeframe", "evaluate", "cs_zscore",
           "ensemble_weights", "TfResult", "bars_of"]

_DAY_NS = 86_400_000_000_000


@dataclass(frozen=True)
class WFOptions:
    train_days: float = 60.0
    test_days: float = 30.0
    embargo: int = 0                 # bars between the last training row and the test start (at least h)
    expanding: bool = False
    models: tuple[str, ...] = ("xgboost", "ridge", "lstm")
    seeds: int = 1
    costs: Costs = Costs()
    cash: float = 10_000.0


@dataclass(frozen=True)
class Window:
    train_lo: int
    train_hi: int      # exclusive; every training row t < train_hi has t + h < test_lo
    test_lo: int
    test_hi: int


def bars_of(days: float, tf: str) -> int:
    return max(1, int(round(days * _DAY_NS / timeframe_ns(tf))))


def windows(T: int, tf: str, h: int, opts: WFOptions, first_valid: int = 0) -> list[Window]:
    E = max(opts.embargo, h)
    tr = bars_of(opts.train_days, tf)
    te = bars_of(opts.test_days, tf)
    out = []
    a = first_valid + tr + E
    while a < T - h:
        b = min(a + te, T)
        lo = first_valid if opts.expanding else max(first_valid, a - E - tr)
        out.append(Window(lo, a - E, a, b))
        a = b
    return out


def check_embargo(ws: list[Window], h: int) -> None:
    for w in ws:
        if not (w.train_hi - 1 + h < w.test_lo):
            raise AssertionError(f"embargo violated: training row {w.train_hi - 1} has its label at "
                                 f"{w.train_hi - 1 + h} >= test start {w.test_lo}")


def ensemble_weights(ric_hist: dict[str, np.ndarray]) -> dict[str, float]:
    """Weights from each model's out-of-fold Rank IC history: ICIR clipped at 0, normalised; equal if none > 0."""
    irs = {}
    for m, x in ric_hist.items():
        x = x[np.isfinite(x)]
        irs[m] = float(x.mean() / x.std(ddof=1)) if len(x) > 20 and x.std(ddof=1) > 0 else 0.0
    pos = {m: max(v, 0.0) for m, v in irs.items()}
    tot = sum(pos.values())
    if tot <= 0:
        return {m: 1.0 / len(irs) for m in irs}
    return {m: v / tot for m, v in pos.items()}


@dataclass
class TfResult:
    tf: str
    params: ModelParams
    windows: list[Window]
    test_lo: int
    test_hi: int
    open_ns: np.ndarray
    fwd: np.ndarray                                         # (T, N) forward log return over h
    fwd1: np.ndarray                                        # (T, N) next-bar log return
    close: np.ndarray
    preds: dict[str, list[np.ndarray]] = field(default_factory=dict)   # model -> per-seed (T, N) OOS scores
    ens_weights: list[list[dict]] = field(default_factory=list)         # seed -> per-window weights
    model_info: list[dict] = field(default_factory=list)
    train_seconds: float = 0.0


def _fit_window(seed: int, k: int, m: str, *, pf: PanelFeatures, ys: list[np.ndarray], ws: list[Window],
                prms: list[ModelParams]) -> tuple[np.ndarray, dict]:
    """One job: model ``m`` fitted on window ``k``'s training rows with ``seed`` (and window k's parameters and
    target); its test bars' scores."""
    w = ws[k]
    fm = fit_model(m, pf, ys[k], w.train_lo, w.train_hi, prms[k], seed=seed)
    return predict_panel(fm, pf, w.test_lo, w.test_hi), dict(fm.info)


def run_timeframe(pf: PanelFeatures, prm: ModelParams, opts: WFOptions, *, progress=None,
                  window_params: list[ModelParams] | None = None, executor: Executor | None = None) -> TfResult:
    """Fit every model on every window (for each seed) and keep the out-of-sample scores of the test bars.
    ``window_params`` (nested HPO): window k's models use ``window_params[k]`` (its horizon and target too);
    ``prm`` stays the yardstick (evaluation horizon, portfolio). The fits are independent jobs: ``executor``
    (research.executor) runs them here or on a Ray cluster, same numbers."""
    tf = pf.timeframe
    h = prm.horizon
    fwd = forward_returns(pf.close, h)
    fwd1 = forward_returns(pf.close, 1)
    y = target(fwd, prm.target)
    valid_t = np.flatnonzero(pf.valid.any(axis=1))
    first_valid = int(valid_t[0]) if len(valid_t) else 0
    ws = windows(pf.X.shape[0], tf, h, opts, first_valid)
    if not ws:
        raise ValueError(f"{tf}: not enough bars for one walk-forward window (train {opts.train_days} d + "
                         f"embargo + test); have {pf.X.shape[0]} bars")
    check_embargo(ws, h)
    if window_params is not None:
        if len(window_params) != len(ws):
            raise ValueError(f"{tf}: the parameters file has {len(window_params)} windows, the walk-forward "
                             f"{len(ws)} (run hpo --per-window and backtest with the same days and embargo)")
        check_embargo(ws, max(p.horizon for p in window_params))
        ys = {(p.horizon, p.target): target(forward_returns(pf.close, p.horizon), p.target) for p in window_params}
    T, N = pf.close.shape
    res = TfResult(tf, prm, ws, ws[0].test_lo, ws[-1].test_hi, pf.open_ns, fwd, fwd1, pf.close)
    t0 = time.perf_counter()
    ex = executor or LocalExecutor()
    jobs = [(seed, k, m) for seed in range(opts.seeds) for k in range(len(ws)) for m in opts.models]
    prms = [prm if window_params is None else window_params[k] for k in range(len(ws))]
    yks = [y if window_params is None else ys[(p.horizon, p.target)] for p in prms]
    got = ex.map(_fit_window, jobs, shared={"pf": pf, "ys": yks, "ws": ws, "prms": prms},
                 label=lambda j: f"{tf} seed {j[0]} window {j[1] + 1}/{len(ws)} {j[2]}", progress=progress)
    fitted = dict(zip(jobs, got))
    for seed in range(opts.seeds):
        per_model = {m: np.full((T, N), np.nan) for m in opts.models}
        weights_seq = []
        ens = np.full((T, N), np.nan)
        for k, w in enumerate(ws):
            for m in opts.models:
                scores, info = fitted[(seed, k, m)]
                per_model[m][w.test_lo:w.test_hi] = scores
                res.model_info.append({"seed": seed, "window": k, "model": m, **info})
            # ensemble: weights from earlier test bars whose labels ended before this window
            hist_hi = w.test_lo - h
            hist = {}
            for m in opts.models:
                lo = ws[0].test_lo
                if hist_hi > lo:
                    _, ric = ic_series(per_model[m][lo:hist_hi], fwd[lo:hist_hi])
                    hist[m] = ric
                else:
                    hist[m] = np.array([])
            wts = ensemble_weights(hist)
            weights_seq.append({"window": k, "test_start_ns": int(pf.open_ns[w.test_lo]), "weights": wts})
            sl = slice(w.test_lo, w.test_hi)
            ens[sl] = sum(wt * np.nan_to_num(cs_zscore(per_model[m][sl]), nan=0.0) for m, wt in wts.items())
            ens[sl][~pf.valid[sl]] = np.nan
        for m in opts.models:
            res.preds.setdefault(m, []).append(per_model[m])
        if len(opts.models) > 1:
            res.preds.setdefault("ensemble", []).append(ens)
        res.ens_weights.append(weights_seq)
    for f in FACTORS:
        res.preds[f] = [factor_scores(pf, f, prm.momentum_lookback)]
    res.train_seconds = time.perf_counter() - t0
    return res


def _ms(vals: list[float]) -> tuple[float, float]:
    a = np.array(vals, dtype=float)
    return float(np.nanmean(a)), float(np.nanstd(a)) if len(a) > 1 else 0.0


def evaluate(res: TfResult, opts: WFOptions) -> dict:
    """Signal metrics and strategies over the test span, mean and std over seeds."""
    lo, hi = res.test_lo, res.test_hi
    h = res.params.horizon
    bpy = 365 * _DAY_NS / timeframe_ns(res.tf)
    out = {"signal": {}, "strategies": {}, "series": {}}
    for m, runs in res.preds.items():
        sig = [signal_metrics(p[lo:hi], res.fwd[lo:hi], h) for p in runs]
        d = {}
        for key in sig[0]:
            mean, sd = _ms([s[key] for s in sig])
            d[key] = mean
            if len(sig) > 1:
                d[key + "_std"] = sd
        d["seeds"] = len(sig)
        out["signal"][m] = d
        strat = [simulate(p[lo:hi], res.close[lo:hi], top_k=res.params.top_k, rebalance=res.params.rebalance,
                          hold_buffer=res.params.hold_buffer, costs=opts.costs, cash=opts.cash) for p in runs]
        sums = [s.summary(bpy) for s in strat]
        sd_ = {}
        for key in sums[0]:
            mean, sd = _ms([s[key] for s in sums])
            sd_[key] = mean
            if len(sums) > 1:
                sd_[key + "_std"] = sd
        out["strategies"][m] = sd_
        _, ric = ic_series(runs[0][lo:hi], res.fwd[lo:hi])
        out["series"][m] = {"rank_ic": ric, "equity": strat[0].equity, "returns": strat[0].returns,
                            "pred": runs[0][lo:hi]}
    bh = buy_and_hold(res.close[lo:hi], costs=opts.costs, cash=opts.cash)
    out["buy_and_hold"] = bh.summary(bpy)
    out["series"]["buy_and_hold"] = {"equity": bh.equity, "returns": bh.returns}
    out["test_span_ns"] = [int(res.open_ns[lo]), int(res.open_ns[hi - 1])]
    out["bars_per_year"] = bpy
    return out
