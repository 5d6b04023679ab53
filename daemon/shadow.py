"""The live shadow A/B (issue #17): a challenger that passed the retrainer's offline gate is not promoted at once;
it decides beside the champion on the same live bars (a pipeline observer), both sides' decisions are simulated
through the same costs (strategies.shadow.ShadowTrial), and the challenger becomes current only when the stated
rule says it is ahead (or an operator pins it with ``POST /control/pin-challenger``); otherwise it is dropped and
the champion stays (``POST /control/pin-champion`` ends a trial that way at once).

Per timeframe at most one trial runs. Side directions: the champion's is the signal the optimizer decided on; the
challenger's comes from the same ``optimizer.combine_signal`` over ITS predictions on the same feature row, ATR,
price and spread; a short direction counts as flat unless ``optimizer.allow_short``. Everything is in /status
``shadow`` and in /metrics (``tradingd_shadow_*``)."""
from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import structlog

from strategies.shadow import SIDES, ShadowConfig, ShadowTrial

log = structlog.get_logger(__name__)

__all__ = ["ShadowRunner"]


class ShadowRunner:
    """Holds the running trials; :meth:`observe` is the pipeline observer."""

    def __init__(self, cfg: ShadowConfig, optimizer: Any, registry: Any, engine_sets: dict[str, Any], *,
                 allow_short: bool = False, metrics: Any = None) -> None:
        cfg.validate()
        self.cfg = cfg
        self.optimizer = optimizer
        self.registry = registry
        self.engine_sets = engine_sets
        self.allow_short = allow_short
        self.metrics = metrics
        self.trials: dict[str, tuple[ShadowTrial, Any, dict[str, str]]] = {}
        self.finished: list[dict] = []
        self.errors = 0
        if metrics is not None:  # every series exists at 0 from start-up (dashboards and rate() alerts)
            for tf in engine_sets:
                metrics.shadow_running.labels(tf).set(0)
                metrics.shadow_bars.labels(tf).set(0)
                metrics.shadow_log_lr.labels(tf).set(0)
                for side in SIDES:
                    metrics.shadow_pnl.labels(tf, side).set(0)
                for outcome in ("promote", "reject", "replaced", "promotion_failed"):
                    metrics.shadow_outcomes.labels(tf, outcome)

    # ------------------------------------------------------------------------------------------ lifecycle
    def start(self, timeframe: str, challenger: Any, versions: Mapping[str, str], ts: int) -> dict:
        """Begin a trial of ``challenger`` (a loaded, warmed EngineSet of ``versions``) on ``timeframe``; a trial
        already running there is replaced (the newer challenger is what the offline gate passed last)."""
        if timeframe in self.trials:
            self._finish(timeframe, "replaced", "a newer challenger passed the offline gate", ts)
        t = ShadowTrial(self.cfg, challenger_version=",".join(f"{k}={v}" for k, v in sorted(versions.items())),
                        started_ts=ts)
        self.trials[timeframe] = (t, challenger, dict(versions))
        log.info("shadow_started", timeframe=timeframe, challenger=t.challenger_version)
        self._export(timeframe, t)
        return t.summary()

    def pin(self, side: str, ts: int) -> dict:
        """An operator's decision for every running trial (``POST /control/pin-<side>``)."""
        if side not in SIDES:
            raise ValueError(f"side must be one of {SIDES}")
        out = {}
        for tf in list(self.trials):
            t = self.trials[tf][0]
            t.pin(side, ts)
            out[tf] = self._conclude(tf, ts)
        return out

    # ------------------------------------------------------------------------------------------ observer
    def observe(self, timeframe: str, ts: int, rows: list[Any]) -> None:
        entry = self.trials.get(timeframe)
        if entry is None:
            return
        trial, challenger, _ = entry
        closes: dict[str, float] = {}
        dirs: dict[str, dict[str, int]] = {"champion": {}, "challenger": {}}
        for r in rows:
            closes[r.symbol] = r.close
            champ = r.signal.direction if r.signal is not None else 0
            dirs["champion"][r.symbol] = self._allowed(champ)
            if r.row is None or r.atr is None or not r.atr > 0:
                dirs["challenger"][r.symbol] = 0
                continue
            try:
                preds = challenger.predict(r.row, r.symbol)
            except Exception as e:  # noqa: BLE001 - a failing challenger decides nothing (counted)
                self.errors += 1
                log.error("shadow_predict_failed", timeframe=timeframe, error=f"{type(e).__name__}: {e}")
                dirs["challenger"][r.symbol] = 0
                continue
            sig = self.optimizer.combine_signal(preds, atr=r.atr, price=r.close, spread=r.spread)
            dirs["challenger"][r.symbol] = self._allowed(sig.direction)
        verdict = trial.on_bars(ts, closes, dirs)
        self._export(timeframe, trial)
        if verdict != "pending":
            self._conclude(timeframe, ts)

    def _allowed(self, d: int) -> int:
        return d if d >= 0 or self.allow_short else 0

    # ------------------------------------------------------------------------------------------ outcome
    def _conclude(self, timeframe: str, ts: int) -> dict:
        trial, challenger, versions = self.trials[timeframe]
        if trial.verdict == "promote":
            try:
                for kind, v in versions.items():
                    self.registry.set_current(timeframe, kind, v)
                es = self.engine_sets.get(timeframe)
                if es is not None:
                    es.swap(challenger)
            except Exception as e:  # noqa: BLE001 - the promotion failed: the champion stays, loudly
                self.errors += 1
                log.error("shadow_promotion_failed", timeframe=timeframe, error=f"{type(e).__name__}: {e}")
                return self._finish(timeframe, "promotion_failed", f"{type(e).__name__}: {e}", ts)
            if self.metrics is not None:
                self.metrics.set_models({tf: s.info() for tf, s in self.engine_sets.items()})
                self.metrics.retrain_promotions.labels(timeframe).inc()
        return self._finish(timeframe, trial.verdict, trial.reason, ts)

    def _finish(self, timeframe: str, verdict: str, reason: str, ts: int) -> dict:
        trial, _, versions = self.trials.pop(timeframe)
        rec = {**trial.summary(), "timeframe": timeframe, "outcome": verdict, "outcome_reason": reason,
               "finished_wall_ns": time.time_ns(), "versions": versions}
        self.finished = (self.finished + [rec])[-20:]
        (log.warning if verdict == "promotion_failed" else log.info)(
            "shadow_finished", timeframe=timeframe, outcome=verdict, reason=reason, bars=trial.n,
            champion_pnl=round(trial.sides["champion"].pnl, 6), challenger_pnl=round(trial.sides["challenger"].pnl, 6))
        m = self.metrics
        if m is not None:
            m.shadow_outcomes.labels(timeframe, verdict).inc()
            m.shadow_running.labels(timeframe).set(0)
        return rec

    def _export(self, timeframe: str, t: ShadowTrial) -> None:
        m = self.metrics
        if m is None:
            return
        m.shadow_running.labels(timeframe).set(1 if t.verdict == "pending" else 0)
        m.shadow_bars.labels(timeframe).set(t.n)
        m.shadow_log_lr.labels(timeframe).set(t.log_lr)
        for s in SIDES:
            m.shadow_pnl.labels(timeframe, s).set(t.sides[s].pnl)

    def status(self) -> dict:
        return {"config": {"min_bars": self.cfg.min_bars, "max_bars": self.cfg.max_bars, "alpha": self.cfg.alpha,
                           "tau": self.cfg.tau, "cost_per_side": self.cfg.cost_per_side},
                "running": {tf: t.summary() for tf, (t, _, _) in self.trials.items()},
                "finished": self.finished, "errors": self.errors}
