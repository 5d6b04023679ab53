"""Drift of the running models, watched at every bar close (the pipeline's ``drift`` hook), and the retrain it asks for.

One :class:`engines.drift.DriftStream` per symbol x timeframe x model, against the reference stored in that model
version's manifest (``extra.drift``, written at training); a version without one is reported as unmonitored. When
the engines are swapped (a retrain promoted a challenger) the streams of the changed models start afresh from the
new reference. Closed trades (the optimizer's performance record) feed one P&L detector per symbol x timeframe.

Exported: the ``tradingd_drift_*`` gauges labelled symbol/timeframe/model (the largest feature statistic; every
feature's value is in /status ``drift``), ``tradingd_drift_alarm`` 0/1. An alarm (or P&L decay) asks for a retrain
with the reason ("drift" or "pnl") and what alarmed; the retrainer applies its rate limit. A failure here is
counted and logged, never raised into the trading path.
"""
from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import structlog

from engines.base import ModelLoadError
from engines.drift import DriftStream, PnLDetector, Reference

log = structlog.get_logger(__name__)

PRED_KEY = {"universe": "expected_return"}  # a universe bundle's prediction (engines.pooled.UNIVERSE_KIND)
TRADES = "trades"  # the model label of per-trade P&L detection (a trade comes from the timeframe's models combined)


class DriftWatch:
    """See the module doc. ``request_retrain(reason, detail) -> dict`` is the retrainer's rate-limited entry;
    ``clock`` (monotonic seconds) paces repeated requests while an alarm stays up."""

    def __init__(self, cfg: Any, metrics: Any, registry: Any, engine_sets: Mapping[str, Any], optimizer: Any = None,
                 request_retrain: Callable[[str, dict], dict] | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 defer: Callable[[Callable[[], None]], Any] | None = None) -> None:
        self.cfg = cfg.drift
        self.params = cfg.drift.params()
        self.metrics = metrics
        self.registry = registry
        self.engine_sets = engine_sets
        self.optimizer = optimizer
        self.request_retrain = request_retrain
        self.clock = clock
        self.refs: dict[tuple[str, str], Reference | None] = {}
        self.versions: dict[tuple[str, str], str] = {}
        self.unmonitored: dict[str, str] = {}  # "tf/kind" -> why
        self.streams: dict[tuple[str, str, str], DriftStream] = {}
        self.pnl: dict[tuple[str, str], PnLDetector] = {}
        self.counters: Counter[str] = Counter()
        self.requests: list[dict] = []  # the last retrain requests and their answers (bounded)
        self._asked: dict[tuple[str, str, str], float] = {}
        self._trades_seen = getattr(getattr(optimizer, "performance", None), "n_trades", 0)
        self._gauges: dict[tuple[str, str, str], tuple] = {}
        # the daemon defers the work to right after the current event (loop.call_soon): the bar's decision and
        # its tick-to-decision figure do not include drift; None = at once (backtests, tests)
        self.defer = defer
        self._queue: list[tuple] = []
        import river.drift  # noqa: F401 - a 2-3 s import: at start-up, not on the loop at the first bar

    # ------------------------------------------------------------------------------------------ references
    def _sync(self, tf: str, kind: str, version: str) -> Reference | None:
        key = (tf, kind)
        if self.versions.get(key) == version:
            return self.refs.get(key)
        self.versions[key] = version
        for k in [k for k in self.streams if k[1] == tf and k[2] == kind]:
            del self.streams[k]
            self._asked.pop(k, None)
        for k in [k for k in self.pnl if k[1] == tf]:  # new models: P&L history of the old ones does not apply
            del self.pnl[k]
        ref = None
        try:
            from engines.registry import read_manifest
            d = (read_manifest(self.registry.version_dir(tf, kind, version)).get("extra") or {}).get("drift")
            if d is None:
                self.unmonitored[f"{tf}/{kind}"] = f"version {version} has no drift reference (trained before it)"
            else:
                ref = Reference.from_dict(d)
                self.unmonitored.pop(f"{tf}/{kind}", None)
        except (ModelLoadError, ValueError, OSError) as e:
            self.unmonitored[f"{tf}/{kind}"] = f"version {version}: {e}"[:300]
            self.counters["reference_errors"] += 1
            log.error("drift_reference_unusable", timeframe=tf, kind=kind, version=version, error=str(e)[:300])
        self.refs[key] = ref
        log.info("drift_reference", timeframe=tf, kind=kind, version=version, monitored=ref is not None)
        return ref

    # ------------------------------------------------------------------------------------------ the hook
    def observe(self, tf: str, ts: int, rows: list) -> None:
        """The pipeline observer (daemon.pipeline.Observed rows of one decision batch)."""
        for r in rows:
            self.on_bar(tf, r.symbol, r.row, r.predictions, r.close)

    def on_bar(self, tf: str, symbol: str, row: np.ndarray | None, preds: Mapping[str, float], close: float) -> None:
        """One closed bar's feature row and predictions (the pipeline calls this once per symbol and bar)."""
        if row is None:
            return
        self._queue.append((tf, symbol, np.array(row, np.float64), dict(preds), float(close)))
        if self.defer is None:
            self.drain()
        elif len(self._queue) == 1:
            self.defer(self.drain)

    def drain(self) -> None:
        """Process the queued bars, in order."""
        q, self._queue = self._queue, []
        for tf, symbol, row, preds, close in q:
            try:
                self._on_bar(tf, symbol, row, preds, close)
                self._on_trades()
            except Exception as e:  # noqa: BLE001 - drift is monitoring: counted, never a trading failure
                self.counters["errors"] += 1
                log.error("drift_failed", timeframe=tf, symbol=symbol, error=f"{type(e).__name__}: {e}")

    def _on_bar(self, tf: str, symbol: str, row: np.ndarray | None, preds: Mapping[str, float], close: float) -> None:
        es = self.engine_sets.get(tf)
        if es is None or row is None:
            return
        for kind, info in es.info().items():
            ref = self._sync(tf, kind, str(info["version"]))
            if ref is None:
                continue
            key = (symbol, tf, kind)
            s = self.streams.get(key)
            if s is None:
                s = self.streams[key] = DriftStream(ref, self.params)
            p = preds.get(PRED_KEY.get(kind, kind))
            if p is not None and self.metrics is not None:
                self.metrics.prediction_value.labels(tf, kind).observe(float(p))
            st = s.update(row, None if p is None else float(p), float(close))
            self._export(key, st)
            if st.alarm:
                self._ask("drift", key, {"symbol": symbol, "timeframe": tf, "model": kind,
                                         "reasons": list(st.reasons), "psi": _r(st.psi), "psi_feature": st.psi_feature,
                                         "ks": _r(st.ks), "prediction_psi": _r(st.prediction_psi),
                                         "calibration": _r(st.calibration), "error_change": st.error_change})

    def _export(self, key: tuple[str, str, str], st: Any) -> None:
        g = self._gauges.get(key)
        if g is None:
            m = self.metrics
            g = self._gauges[key] = tuple(x.labels(*key) for x in (
                m.drift_psi, m.drift_ks, m.drift_prediction_psi, m.drift_calibration, m.drift_error_change,
                m.drift_alarm))
        for child, v in zip(g, (st.psi, st.ks, st.prediction_psi, st.calibration, float(st.error_change),
                                float(st.alarm))):
            child.set(v)

    def _on_trades(self) -> None:
        perf = getattr(self.optimizer, "performance", None)
        if perf is None or perf.n_trades == self._trades_seen:
            return
        new = min(perf.n_trades - self._trades_seen, len(perf.trades))
        self._trades_seen = perf.n_trades
        for t in list(perf.trades)[-new:]:
            key = (t.symbol, t.timeframe)
            det = self.pnl.get(key)
            if det is None:
                det = self.pnl[key] = PnLDetector(self.params)
            was = det.change
            det.update(t.pnl, abs(t.entry_price * t.qty))
            self.metrics.drift_pnl_change.labels(t.symbol, t.timeframe, TRADES).set(float(det.change))
            if det.change:
                if not was:
                    log.warning("drift_pnl_decay", symbol=t.symbol, timeframe=t.timeframe, trades=det.trades,
                                last_bps=_r(det.last_bps))
                self._ask("pnl", (t.symbol, t.timeframe, TRADES),
                          {"symbol": t.symbol, "timeframe": t.timeframe, "model": TRADES, "trades": det.trades,
                           "scale_bps": _r(det.scale_bps), "last_bps": _r(det.last_bps)})

    def _ask(self, reason: str, key: tuple[str, str, str], detail: dict) -> None:
        """Ask for a retrain when an alarm rises, and again while it stays up once the rate limit could allow it."""
        if self.request_retrain is None or not self.cfg.retrain_on_alarm:
            return
        now = self.clock()
        last = self._asked.get(key)
        if last is not None and now - last < self.cfg.retrain_min_interval_minutes * 60:
            return
        self._asked[key] = now
        answer = self.request_retrain(reason, detail)
        self.counters[f"requests.{reason}"] += 1
        self.requests = (self.requests + [{"reason": reason, "detail": detail, "answer": answer}])[-10:]
        log.warning("drift_alarm", reason=reason, answer=answer, **detail)

    # ------------------------------------------------------------------------------------------ reporting
    def status(self) -> dict:
        streams = {}
        for (sym, tf, kind), s in self.streams.items():
            d = s.stats.as_dict()
            d["thresholds"] = {k: (v.round(6).tolist() if isinstance(v, np.ndarray) else v)
                               for k, v in s.thresholds.items()}
            d["features"] = {n: {"psi": _r(p), "ks": _r(k)} for n, p, k in zip(s.ref.names, s.last_psi, s.last_ks)}
            streams[f"{sym}/{tf}/{kind}"] = d
        return {"enabled": True, "window": self.params.window, "calibrated": self.params.calibrated,
                "streams": streams, "unmonitored": dict(self.unmonitored),
                "pnl": {f"{s}/{tf}": {"trades": d.trades, "change": d.change, "last_bps": _r(d.last_bps),
                                      "scale_bps": _r(d.scale_bps)} for (s, tf), d in self.pnl.items()},
                "alarms": sorted(k for k, v in streams.items() if v["alarm"]),
                "requests": self.requests, "counters": dict(self.counters)}


def _r(x: float) -> float | None:
    return None if x is None or not math.isfinite(x) else round(float(x), 6)
