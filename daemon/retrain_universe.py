"""Universe mode's retraining cycle (runs in the retrain child process, ``python -m daemon.retrain --universe``).

The pooled bundles are retrained the way ``tradingd train --data`` trains them (research/cli_train.py, one code
path), on every traded symbol's 1m bars: the store's, or the venue's klines history for a symbol the store holds
fewer than ``min_bars`` of (a young store). The parameters are the current bundle's (a bundle trained with
``--params best.json`` keeps its tuned parameters), else the defaults.

The gate (``judge``): the challenger's holdout ensemble scores are out of sample (its holdout fits never saw
those bars). The champion, the registry's current bundle, is scored over the SAME bars through the daemon's own
inference path (``UniverseBundle.predict``, one boundary at a time, as live). Both score sets drive research's
long-only portfolio rule (``research.portfolio.simulate``: top_k names, rebalanced every horizon) through the
daemon's costs (taker fee, half the assumed spread, slippage, per side); the challenger becomes CURRENT only if
its dollar P&L beats the champion's by more than ``min_improvement``. A champion trained recently may have seen
part of that window: the gate then favours it (conservative). A champion that cannot be scored (corrupt files,
another feature schema) is a ``gate_error``: the challenger is published, never promoted. With no champion the
challenger is promoted.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import structlog

log = structlog.get_logger(__name__)

__all__ = ["universe_retrain_cycle", "bundle_scores", "make_judge"]


def bundle_scores(bundle: Any, pf: Any, lo: int, hi: int, threads: int = 1) -> np.ndarray:
    """(hi - lo, N) ensemble scores of a loaded bundle over bars [lo, hi) of a research panel, one boundary at a
    time through ``UniverseBundle.predict`` (the daemon's live path: its last ``seq_len`` rows as the window)."""
    L = max(bundle.seq_len, 1)
    out = np.full((hi - lo, pf.X.shape[1]), np.nan)
    syms = tuple(pf.symbols)  # xgboost_ft / lstm_emb score by symbol
    for i, t in enumerate(range(lo, hi)):
        out[i] = bundle.predict(pf.X[max(0, t - L + 1):t + 1], threads, syms)["ensemble"]
    return out


def make_judge(registry: Any, *, costs: Any, min_improvement: float, threads: int = 1, cash: float = 10_000.0,
               shadow: bool = False):
    """The gate of the module docstring, as ``research.cli_train.train_universe``'s ``judge``. With ``shadow`` a
    challenger that passes over an existing champion is published but not made current (``"shadow": True``): the
    daemon runs it beside the champion first (daemon.shadow)."""
    from engines.pooled import UNIVERSE_KIND, UNIVERSE_SCHEMA_HASH, load_bundle
    from research.portfolio import simulate

    def pnl(scores: np.ndarray, close: np.ndarray, prm: Any) -> float:
        top_k = max(1, min(prm.top_k, scores.shape[1] - 1))
        r = simulate(scores, close, top_k=top_k, rebalance=max(1, prm.rebalance), hold_buffer=prm.hold_buffer,
                     costs=costs, cash=cash)
        return float(r.equity[-1] - r.equity[0])

    def judge(tf: str, pf: Any, lo: int, hi: int, ens: np.ndarray, prm: Any) -> dict:
        close = pf.close[lo:hi]
        out: dict[str, Any] = {"rule": "holdout dollar P&L of research.portfolio.simulate after costs",
                               "bars": int(hi - lo), "challenger_pnl": pnl(ens, close, prm), "current_pnl": None,
                               "current_version": None, "gate_error": None}
        try:
            cur = registry.current_version(tf, UNIVERSE_KIND)
            if cur is None:
                return out | {"promote": True}
            ref = registry.load(tf, UNIVERSE_KIND, schema_hash=UNIVERSE_SCHEMA_HASH)
            champ = load_bundle(ref.path, version=ref.version)
            out["current_version"] = ref.version
            out["current_pnl"] = pnl(bundle_scores(champ, pf, lo, hi, threads), close, prm)
        except Exception as e:  # noqa: BLE001 - the gate cannot judge (ModelLoadError, a scoring error): never promote
            out["gate_error"] = f"{type(e).__name__}: {e}"[:500]
            log.error("retrain_gate_error", timeframe=tf, error=out["gate_error"])
            return out | {"promote": False}
        better = out["challenger_pnl"] > out["current_pnl"] + min_improvement
        return out | {"promote": better, "shadow": better and shadow}
    return judge


def _current_params(registry: Any, timeframes: list[str]) -> tuple[dict[str, dict], list[str]]:
    """The current bundles' recorded parameters per timeframe (minus run-time choices) and their model kinds (all
    timeframes'), for retraining alike: a bundle with ``xgboost_ft`` is retrained with it."""
    from engines.pooled import BUNDLE_MANIFEST, MODEL_KINDS, UNIVERSE_KIND
    out = {}
    kinds: set[str] = set()
    for tf in timeframes:
        try:
            v = registry.current_version(tf, UNIVERSE_KIND)
            if v is None:
                continue
            m = json.loads((registry.version_dir(tf, UNIVERSE_KIND, v) / BUNDLE_MANIFEST).read_text())
            prm = {k: val for k, val in (m.get("params") or {}).items() if k not in ("threads", "device")}
            out[tf] = prm
            kinds |= {e["kind"] for e in m.get("models", ()) if e.get("kind") in MODEL_KINDS}
        except Exception as e:  # noqa: BLE001 - the defaults then; the gate reports a broken champion
            log.warning("retrain_params_unreadable", timeframe=tf, error=str(e))
    return out, [k for k in MODEL_KINDS if k in kinds]


def universe_retrain_cycle(store_path: str | None, registry_root: str, symbols: list[str], timeframes: list[str], *,
                           rest_url: str | None = None, history_days: float = 30, min_bars: int = 20_000,
                           min_improvement: float = 0.0, threads: int = 1, costs: dict | None = None,
                           trigger: dict | None = None, executor: str = "local", address: str = "",
                           shadow: bool = False) -> dict:
    """One universe retraining cycle; the result per timeframe has the per-symbol cycle's shape (``decision``
    keyed by kind, ``seconds``, ``window``, ``gate_error``) plus the gate's figures."""
    from daemon.train_cli import load_symbol_bars
    from engines.pooled import UNIVERSE_KIND
    from engines.registry import ModelRegistry
    from research import cli_train
    from research.portfolio import Costs
    from research.universe import universe_from_klines
    t0 = time.perf_counter()
    reg = ModelRegistry(registry_root)
    loaded = [(load_symbol_bars(store_path, s, rest_url, history_days, min_bars), f"retrain#{s}") for s in symbols]
    uni = universe_from_klines(loaded, "1m", tuple(timeframes), where="retrain")
    seconds_data = time.perf_counter() - t0
    judge = make_judge(reg, costs=Costs(**(costs or {})), min_improvement=min_improvement, threads=threads,
                       shadow=shadow)
    with tempfile.TemporaryDirectory(prefix="tradingd-universe-retrain-") as tmp:
        params = Path(tmp) / "params.json"
        prm, kinds = _current_params(reg, timeframes)
        params.write_text(json.dumps({"timeframes": prm}))
        p = argparse.ArgumentParser()
        cli_train.add_arguments(p)
        args = p.parse_args(["--data", tmp, "--registry", registry_root, "--timeframes", ",".join(timeframes),
                             "--threads", str(threads), "--params", str(params), "--executor", executor,
                             *(["--models", ",".join(kinds)] if kinds else []),
                             *(["--address", address] if address else [])])
        res = cli_train.train_universe(args, uni, judge=judge, extra={"trigger": trigger} if trigger else None)
    results = {}
    for tf, m in res["timeframes"].items():
        g = m.get("gate") or {}
        results[tf] = {"decision": {UNIVERSE_KIND: {"challenger_pnl": g.get("challenger_pnl"),
                                                    "current_pnl": g.get("current_pnl"),
                                                    "promoted": bool(g.get("promote")) and not g.get("shadow"),
                                                    "shadow": bool(g.get("shadow")),
                                                    "version": m["registry_version"]}},
                       "gate": g, "gate_error": g.get("gate_error"), "window": m["trained_on"],
                       "symbols": m["symbols"], "executor": res.get("executor", executor)}
    log.info("universe_retrain", seconds=round(time.perf_counter() - t0, 2), data_s=round(seconds_data, 2),
             promoted={tf: r["decision"][UNIVERSE_KIND]["promoted"] for tf, r in results.items()})
    return results
