"""``tradingd train --data DIR --registry OUT`` where DIR is a folder of ``SYMBOL-TF.csv.gz``: pooled models per
timeframe and kind, trained on every symbol's rows, written with a manifest.

Per timeframe: the ensemble weights are learned out of fold first — every model is fitted on all labelled bars
but the last ``--holdout-frac`` (with an embargo of the horizon), scored on that holdout, and weighted by its
Rank ICIR there (clipped at 0); then every model is refitted on all labelled bars and saved. The manifest
(``OUT/universe/<tf>/manifest.json``) records the parameters (``--params best.json`` from ``tradingd hpo``), the
feature names, the symbols, the holdout metrics, the ensemble weights and each model's device decision."""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import structlog

from research.cli_backtest import add_common, options
from research.dataset import FEATURE_NAMES, forward_returns, panel_features, target
from research.executor import make_executor, run_command
from research.metrics import signal_metrics
from research.models import fit_model, predict_panel, save_model
from research.params import load_params, params_for
from research.report import plain
from research.universe import UniverseError, load_universe
from research.walkforward import ensemble_weights
from engines.pooled import BUNDLE_MANIFEST, UNIVERSE_KIND, UNIVERSE_SCHEMA_HASH, ensemble_score, entry_files
from engines.xsection import cs_zscore
from research.calibration import fit_calibration

log = structlog.get_logger(__name__)

__all__ = ["add_arguments", "main", "train_universe"]


def add_arguments(p) -> None:
    add_common(p)
    p.add_argument("--registry", required=True, help="output folder (models under universe/<tf>/)")
    p.add_argument("--holdout-frac", type=float, default=0.15, help="share of bars that learns the ensemble weights")
    p.add_argument("--seed", type=int, default=0)


def train_universe(args, uni=None, *, judge=None, extra: dict | None = None) -> dict:
    """``uni``: a universe read elsewhere (``tradingd train --store``: daemon/store_universe.py); else ``--data``.

    ``judge`` (the daemon's retrainer, daemon/retrain_universe.py): called per timeframe as ``judge(tf, pf, lo,
    hi, ensemble, params)`` with the challenger's out-of-sample holdout ensemble scores over bars [lo, hi); its
    answer (a dict with ``promote``, and ``shadow`` when a passing challenger must first run beside the champion)
    is recorded as ``manifest["gate"]`` and decides whether the published version becomes CURRENT. Without a judge every version is made current (``tradingd train``). ``extra`` goes into every
    published version's registry manifest (e.g. the retrain's trigger)."""
    t0 = time.perf_counter()
    opts = options(args)
    loaded = load_params(args.params)
    hpo_stats = {}
    if args.params:
        hpo_stats = json.loads(Path(args.params).read_text()).get("hpo", {})
    if uni is None:
        uni = load_universe(args.data, tuple(x for x in args.timeframes.split(",") if x) or None,
                            symbols=tuple(x for x in args.symbols.split(",") if x) or None, last_days=args.last_days)
    out = {}
    executor = make_executor(args.executor, args.address, num_cpus_per_task=max(1, args.threads))
    for tf, panel in uni.panels.items():
        pf = panel_features(panel)
        prm = params_for(tf, loaded, horizon=args.horizon, lstm_max_rows=args.lstm_max_rows, threads=args.threads,
                         device=args.device)
        h = prm.horizon
        fwd = forward_returns(pf.close, h)
        y = target(fwd, prm.target)
        T = pf.X.shape[0]
        fv = int(np.flatnonzero(pf.valid.any(axis=1))[0])
        cut = T - h - int((T - h - fv) * args.holdout_frac)
        hold = {}
        shared = {"pf": pf, "y": y, "prm": prm, "seed": args.seed}
        got = executor.map(_holdout_job, [(m, fv, cut - h, cut, T - h) for m in opts.models], shared=shared,
                           label=lambda j: f"{tf} {j[0]} holdout fit")
        scores = dict(zip(opts.models, got))
        for m in opts.models:
            hold[m] = signal_metrics(scores[m], fwd[cut:T - h], h)
        from research.metrics import ic_series
        wts = ensemble_weights({m: ic_series(s, fwd[cut:T - h])[1] for m, s in scores.items()})
        ens = np.where(pf.valid[cut:T - h], ensemble_score(scores, wts), np.nan)
        hold["ensemble"] = signal_metrics(ens, fwd[cut:T - h], h)
        cal = fit_calibration(ens, fwd[cut:T - h], h)
        gate = judge(tf, pf, cut, T - h, ens, prm) if judge is not None else None
        d = Path(args.registry) / "universe" / tf
        d.mkdir(parents=True, exist_ok=True)
        # the final fits write their files into d (a path every node shares); only _publish below makes them a
        # registry version, so a failed job publishes nothing
        entries = executor.map(_final_job, [(m, fv, T, str(d)) for m in opts.models], shared=shared,
                               label=lambda j: f"{tf} {j[0]} final fit")
        manifest = {"timeframe": tf, "kind": "pooled-universe", "features": list(FEATURE_NAMES),
                    "symbols": list(pf.symbols), "params": prm.to_dict(), "params_file": args.params,
                    "hpo": hpo_stats.get(tf), "models": entries,
                    "ensemble": {"method": "holdout Rank ICIR, clipped at 0", "weights": wts},
                    "calibration": cal.to_dict(),
                    "holdout": {"from_ns": int(pf.open_ns[cut]), "metrics": hold},
                    "trained_on": {"from_ns": int(pf.open_ns[fv]), "to_ns": int(pf.open_ns[T - 1]),
                                   "bars": int(T - fv)}}
        if gate is not None:
            manifest["gate"] = gate
        (d / "manifest.json").write_text(json.dumps(plain(manifest), indent=1))
        files = [f for e in entries for f in entry_files(e)]  # xgboost_ft's per-symbol files, the LSTM's ONNX too
        drift = _drift_reference(pf, fv, cut - h, h, cal.slope * cs_zscore(ens))
        ref = _publish(Path(args.registry), tf, d, files, plain(manifest),
                       make_current=gate is None or (bool(gate.get("promote")) and not gate.get("shadow")),
                       extra={**(extra or {}), **({"drift": drift} if drift else {})})
        manifest["registry_version"] = ref.version
        out[tf] = manifest
        log.info("train.timeframe", tf=tf, weights=wts, dir=str(d), version=ref.version, slope=cal.slope)
    executor.close()
    return {"timeframes": out, "seconds": time.perf_counter() - t0, "universe": uni.info(),
            "executor": executor.name}


DRIFT_ROWS = 100_000  # the most recent pooled training rows in the drift reference (bins; enough for quantiles)


def _drift_reference(pf, lo: int, hi: int, h: int, expected: np.ndarray) -> dict | None:
    """The bundle's drift reference (engines.drift, as the per-symbol models'): bins of the live 13 per-symbol
    features over the pooled training rows [lo, hi) (the most recent DRIFT_ROWS), plus the holdout's
    out-of-sample expected returns (the daemon watches ``expected_return``). Labels are not P(up): no
    calibration part. None (logged) when it cannot be built: the daemon then reports the bundle unmonitored."""
    from engines.drift import build_reference, with_predictions
    from engines.features import FEATURE_SCHEMA
    nb = FEATURE_SCHEMA.n_features
    X = pf.X[lo:hi, :, :nb].reshape(-1, nb)
    X = X[np.isfinite(X).all(axis=1)][-DRIFT_ROWS:]
    try:
        return with_predictions(build_reference(X, FEATURE_SCHEMA.names, horizon=h), np.ravel(expected))
    except ValueError as e:
        log.warning("drift_reference_skipped", error=str(e))
        return None


def _holdout_job(m: str, lo: int, hi: int, s_lo: int, s_hi: int, *, pf, y, prm, seed) -> np.ndarray:
    """One job: ``m`` fitted on bars [lo, hi), scored on [s_lo, s_hi) (the holdout that learns the weights)."""
    return predict_panel(fit_model(m, pf, y, lo, hi, prm, seed=seed), pf, s_lo, s_hi)


def _final_job(m: str, lo: int, hi: int, out_dir: str, *, pf, y, prm, seed) -> dict:
    """One job: ``m`` fitted on every labelled bar, its file written under ``out_dir``; its manifest entry."""
    return save_model(fit_model(m, pf, y, lo, hi, prm, seed=seed), Path(out_dir) / m)


def _publish(root: Path, tf: str, d: Path, files: list[str], manifest: dict, *, make_current: bool = True,
             extra: dict | None = None):
    """The bundle into the model registry (``root/<tf>/universe/<version>/``: checksummed, atomic, CURRENT) where
    the daemon loads it (``[engines] family = "universe"``); the bundle's manifest travels as universe.json."""
    import shutil

    from engines.registry import ModelRegistry

    def write(tmp: Path) -> None:
        for f in files:
            shutil.copy2(d / f, tmp / f)
        (tmp / BUNDLE_MANIFEST).write_text(json.dumps(manifest, indent=1))
    ens = manifest["holdout"]["metrics"].get("ensemble", {})
    return ModelRegistry(root).publish(
        UNIVERSE_KIND, tf, write, feature_names=list(FEATURE_NAMES), schema_hash=UNIVERSE_SCHEMA_HASH,
        data_window=manifest["trained_on"], metrics={"holdout_ensemble": ens},
        extra={"weights": manifest["ensemble"]["weights"], "calibration": manifest["calibration"],
               "symbols": manifest["symbols"], **(extra or {})}, make_current=make_current)


def main(args, uni=None) -> int:
    code, res = run_command("train", lambda: train_universe(args, uni), (UniverseError, ValueError))
    if code:
        return code
    for tf, m in res["timeframes"].items():
        hm = m["holdout"]["metrics"]
        print(f"{tf}: " + ", ".join(f"{k} rank_ic {v['rank_ic']:+.4f}" for k, v in hm.items()) +
              f"; ensemble weights {json.dumps({k: round(v, 3) for k, v in m['ensemble']['weights'].items()})}")
    print(json.dumps({"registry": str(Path(args.registry) / 'universe'), "seconds": round(res["seconds"], 1)}))
    return 0
