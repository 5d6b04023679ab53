"""Retraining while trading, and the hot swap (daemon.retrain does the training and the gate in a child process).

Every ``retrain.interval_minutes`` and on ``POST /control/retrain`` a nice'd child process trains challengers on
the store's bars and promotes them only if they beat the current models on held-out dollar P&L; changed versions
are then loaded and warmed in a worker thread and swapped in on the loop (the loop lag during the swap is
measured and shown in /status ``retrain.last``). A failure is reported (metrics, log, /status) and trading goes
on with the old engines.
"""
from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

import structlog

if TYPE_CHECKING:
    from daemon.engineset import EngineSet
    from daemon.metrics import Metrics
    from daemon.retrain import RetrainManager
    from engines.registry import ModelRegistry

log = structlog.get_logger(__name__)


class RetrainCycle:
    """One retrainer (``manager``) and the engine sets it may swap; at most one cycle runs at a time."""

    def __init__(self, cfg: Any, metrics: Metrics, manager: RetrainManager, registry: ModelRegistry,
                 engine_sets: dict[str, EngineSet], shadow: Any = None) -> None:
        self.cfg = cfg
        self.shadow = shadow  # daemon.shadow.ShadowRunner when shadow.enabled
        self.metrics = metrics
        self.manager = manager
        self.registry = registry
        self.engine_sets = engine_sets
        self.gate_errors = 0
        self.last: dict | None = None
        self._task: asyncio.Task | None = None
        self.clock = time.monotonic  # paces drift-triggered retrains (injectable)
        self.last_start: float | None = None  # clock() when the last cycle of any trigger started
        self.by_reason: dict[str, int] = {}
        for tf in cfg.general.timeframes:  # exported at 0 from start, so an alert can use rate()
            metrics.retrain_gate_errors.labels(tf)
            metrics.retrain_promotions.labels(tf)
        for outcome in ("ok", "failed"):
            metrics.retrain_runs.labels(outcome)

    @classmethod
    def from_config(cls, cfg: Any, metrics: Metrics, registry: ModelRegistry, engine_sets: dict[str, EngineSet],
                    rest_url: str, pipeline: Any = None) -> RetrainCycle:
        from daemon.retrain import RetrainManager
        from daemon.stores import store_spec
        r = cfg.retrain
        shadow = None
        universe = cfg.model_family == "universe"
        if cfg.shadow.enabled and pipeline is not None:
            from daemon.shadow import ShadowRunner
            from strategies.shadow import ShadowConfig
            sc = cfg.shadow
            per_side = cfg.broker.taker_fee + cfg.optimizer.assumed_spread_bps * 1e-4 / 2 \
                + cfg.optimizer.slippage_bps * 1e-4
            shadow = ShadowRunner(ShadowConfig(sc.min_bars, sc.max_bars, sc.alpha, sc.tau, per_side),
                                  pipeline.optimizer, registry, engine_sets, allow_short=cfg.optimizer.allow_short,
                                  metrics=metrics)
            pipeline.observers.append(shadow.observe)
        manager = RetrainManager(
            registry=str(registry.root), symbol=cfg.general.symbols[0], timeframes=list(cfg.general.timeframes),
            store=store_spec(cfg), rest_url=rest_url, history_days=r.history_days, nice=r.nice,
            threads=r.threads, timeout_s=r.timeout_minutes * 60, min_bars=r.min_store_bars,
            min_improvement=r.min_improvement_usd, executor=cfg.cluster.executor, address=cfg.cluster.address,
            shadow=shadow is not None, universe=tuple(cfg.general.symbols) if universe else (),
            costs={"fee": cfg.broker.taker_fee, "spread_bps": cfg.optimizer.assumed_spread_bps,
                   "slippage_bps": cfg.optimizer.slippage_bps},
            spec_overrides={"xgb_rounds": r.xgb_rounds, "lstm_epochs": r.lstm_epochs, "lstm_hidden": r.lstm_hidden,
                            "cost": 2 * cfg.broker.taker_fee + 0.0001})
        return cls(cfg, metrics, manager, registry, engine_sets, shadow)

    # ------------------------------------------------------------------------------------------ triggers
    async def scheduler(self) -> None:
        period = self.cfg.retrain.interval_minutes * 60
        while True:
            await asyncio.sleep(period)
            await self.run_now("schedule")

    def start(self, trigger: str, detail: dict | None = None) -> dict:
        """On demand (``/control/retrain``): start a cycle in the background unless one is running."""
        if self._task is not None and not self._task.done() or self.manager.running:
            self.metrics.retrain_triggers.labels(trigger, "busy").inc()
            return {"ok": False, "error": "a retrain is already running"}
        self._task = asyncio.create_task(self.run_now(trigger, detail), name="retrain-on-demand")
        return {"ok": True, "started": True}

    def request(self, reason: str, detail: dict | None = None) -> dict:
        """A drift alarm or P&L decay (daemon.drift) asks for a retrain: started unless one runs or the last one
        of any trigger started less than ``drift.retrain_min_interval_minutes`` ago (refusals counted)."""
        min_s = self.cfg.drift.retrain_min_interval_minutes * 60
        if self.last_start is not None and self.clock() - self.last_start < min_s:
            self.metrics.retrain_triggers.labels(reason, "rate_limited").inc()
            return {"ok": False, "error": f"rate limited: last retrain started {self.clock() - self.last_start:.0f} s "
                                          f"ago (< {min_s:.0f} s)"}
        return self.start(reason, detail)

    def cancel(self) -> None:
        """Shutdown: an on-demand cycle stops (its child process goes with it)."""
        if self._task is not None and not self._task.done():
            self._task.cancel()

    def status(self) -> dict:
        return {"enabled": True, "running": bool(self.manager.running), "runs": self.manager.runs,
                "last": self.last, "gate_errors": self.gate_errors, "by_reason": dict(self.by_reason),
                "mode": "universe" if self.manager.universe else "per_symbol",
                "shadow": self.shadow.status() if self.shadow is not None else {"enabled": False}}

    # ------------------------------------------------------------------------------------------ the cycle
    async def run_now(self, trigger: str, detail: dict | None = None) -> dict:
        """One cycle: child process trains and gates; then changed versions are loaded and warmed in a worker
        thread and swapped in on the loop. ``trigger`` (schedule, control, drift, pnl) and ``detail`` go into the
        published versions' manifests and the log."""
        if self.manager.running:
            self.metrics.retrain_triggers.labels(trigger, "busy").inc()
            return {"trigger": trigger, "ok": False, "error": "a retrain is already running"}
        self.last_start = self.clock()
        self.by_reason[trigger] = self.by_reason.get(trigger, 0) + 1
        self.metrics.retrain_triggers.labels(trigger, "started").inc()
        log.info("retrain_started", trigger=trigger, detail=detail)
        outcome = await self.manager.run_once({"reason": trigger, "detail": detail or {}, "at_ns": time.time_ns()})
        m = self.metrics
        m.retrain_runs.labels("ok" if outcome.ok else "failed").inc()
        m.retrain_duration.observe(outcome.seconds)
        for tf, res in (outcome.results or {}).items():  # the gate could not judge: nothing was promoted
            if res.get("gate_error"):
                self.gate_errors += 1
                m.retrain_gate_errors.labels(tf).inc()
                log.error("retrain_gate_error", timeframe=tf, error=res["gate_error"])
        report: dict = {"trigger": trigger, "detail": detail, "ok": outcome.ok, "seconds": round(outcome.seconds, 2),
                        "error": outcome.error[-500:] if outcome.error else None, "results": outcome.results,
                        "priority": outcome.priority, "swapped": {}, "finished_ns": None}
        if outcome.ok and self.shadow is not None:
            try:
                report["shadow"] = await self.start_shadow_trials(outcome.results or {})
            except Exception as e:  # noqa: BLE001 - a challenger that fails to load is refused; champion stays
                report["shadow"] = {"error": f"{type(e).__name__}: {e}"}
                log.error("shadow_start_refused", error=report["shadow"]["error"])
        if outcome.ok:
            try:
                report["swapped"], report["swap_loop_lag_max_ms"] = await self.swap_changed_engines()
                if report["swapped"]:
                    m.set_models({tf: es.info() for tf, es in self.engine_sets.items()})
                    for tf in report["swapped"]:
                        m.retrain_promotions.labels(tf).inc()
            except Exception as e:  # noqa: BLE001 - a model that fails to load is refused; old engines stay
                report["ok"] = False
                report["error"] = f"swap refused: {type(e).__name__}: {e}"
                log.error("retrain_swap_refused", error=report["error"])
        report["finished_ns"] = time.time_ns()
        self.last = report
        log.info("retrain_cycle", **{k: v for k, v in report.items() if k != "results"})
        return report

    async def start_shadow_trials(self, results: dict) -> dict:
        """Every timeframe whose challenger passed the offline gate (not promoted: ``shadow`` in its decision)
        starts a shadow trial with the challenger's versions (the current ones for kinds that did not pass)."""
        from daemon.engineset import EngineSet
        from daemon.universe_engine import UniverseChallenger, UniverseEngineSet, load_current_bundle
        from engines.pooled import UNIVERSE_KIND
        loop = asyncio.get_running_loop()
        started = {}
        for tf, res in results.items():
            dec = res.get("decision") or {}
            versions = {k: d["version"] for k, d in dec.items() if d.get("shadow")}
            if not versions or tf not in self.engine_sets:
                continue
            champ = self.engine_sets[tf]
            for kind in champ.info():
                versions.setdefault(kind, self.registry.current_version(tf, kind))
            if isinstance(champ, UniverseEngineSet):  # scored on the champion's universe rows
                prep = await loop.run_in_executor(None, lambda tf=tf, v=versions, c=champ: c.prepare(
                    load_current_bundle(self.registry, tf, v[UNIVERSE_KIND])))
                es = UniverseChallenger(champ, prep)
            else:
                es = await loop.run_in_executor(None, lambda tf=tf, v=versions: EngineSet.load(
                    self.registry, tf, self.cfg.engines, metrics=self.metrics, versions=v, kinds=tuple(v)))
            started[tf] = self.shadow.start(tf, es, versions, time.time_ns())
        return started

    def _load_current(self, tf: str) -> Any:
        """The registry's current models of ``tf`` loaded and warmed (worker thread): an EngineSet, or in universe
        mode the pooled bundle that ``UniverseEngineSet.swap`` takes (its rolling universe state stays)."""
        from daemon.engineset import EngineSet
        from daemon.universe_engine import UniverseEngineSet, load_current_bundle
        es = self.engine_sets[tf]
        if isinstance(es, UniverseEngineSet):  # runners built and warmed here, off the loop
            return es.prepare(load_current_bundle(self.registry, tf))
        return EngineSet.load(self.registry, tf, self.cfg.engines, metrics=self.metrics)

    async def swap_changed_engines(self) -> tuple[dict, float]:
        """Load the registry's current versions that differ from the running ones (worker thread) and swap them in
        on the loop; returns ``({tf: {kind: version}}, max loop lag in ms during it)``."""
        changed: dict[str, list[str]] = {}
        for tf, es in self.engine_sets.items():
            for kind, i in es.info().items():
                cur = self.registry.current_version(tf, kind)
                if cur is not None and cur != i["version"]:
                    changed.setdefault(tf, []).append(kind)
        if not changed:
            return {}, 0.0
        loop = asyncio.get_running_loop()
        lags: list[float] = []
        stop = asyncio.Event()

        async def probe() -> None:  # how late the loop wakes while models load and swap
            while not stop.is_set():
                t0 = loop.time()
                await asyncio.sleep(0.005)
                lags.append(loop.time() - t0 - 0.005)

        probe_task = asyncio.create_task(probe(), name="swap-lag-probe")
        swapped = {}
        try:
            for tf in changed:
                new = await loop.run_in_executor(None, lambda tf=tf: self._load_current(tf))
                self.engine_sets[tf].swap(new)  # on the loop: a reference swap between two events
                swapped[tf] = {k: v["version"] for k, v in self.engine_sets[tf].info().items()}
        finally:
            stop.set()
            await probe_task
        return swapped, round(max(lags, default=0.0) * 1e3, 3)
