"""What the daemon shows: core counters copied into Prometheus metrics (every second and before each scrape),
/status, /healthz and /readyz, and the console's progress line. Reads the components, changes none of them."""
from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from daemon.hotswap import RetrainCycle
    from daemon.kernel import Components
    from daemon.metrics import Metrics
    from daemon.plausible import ReadinessWatch
    from daemon.storewriter import StoreWriter
    from daemon.supervisor import Supervisor


# tradingd_decision_outcomes_total{outcome}: outcome -> (component, counter key; a key ending in "." sums its family)
DECISION_OUTCOMES = {
    "order": ("pipeline", "orders"), "risk_rejected": ("pipeline", "risk_rejected."),
    "broker_rejected": ("pipeline", "broker_rejected."), "stale_book": ("pipeline", "stale_book_bars"),
    "no_signal": ("optimizer", "no_signal."), "no_size": ("optimizer", "no_size."),
    "entry_pending": ("optimizer", "entry_pending"), "short_disabled": ("optimizer", "short_disabled"),
    "not_selected_timeframe": ("optimizer", "not_selected_timeframe"), "no_levels": ("optimizer", "no_levels"),
}


def counter_total(counters: dict[str, int], key: str) -> int:
    """``counters[key]``, or the sum of the family ``key*`` when ``key`` ends in a dot."""
    if key.endswith("."):
        return sum(v for k, v in counters.items() if k.startswith(key))
    return counters.get(key, 0)


@dataclass(frozen=True)
class View:
    """What exists at this moment of the daemon's life (before start-up completes: only some of it)."""

    parts: Components | None = None
    writer: StoreWriter | None = None  # also before the pipeline exists (start-up writes history bars)
    retrain: RetrainCycle | None = None
    supervisor: Supervisor | None = None
    fatal: str | None = None
    stopping: bool = False
    drift: Any = None  # daemon.drift.DriftWatch when drift.enabled


class Collector:
    """``view``: the app's current :class:`View`; ``timings``: start-up timings (the app fills them)."""

    def __init__(self, cfg: Any, metrics: Metrics, view: Callable[[], View], *,
                 started_ns: int | None = None, timings: dict[str, float] | None = None) -> None:
        self.cfg = cfg
        self.metrics = metrics
        self.view = view
        self.started_ns = time.time_ns() if started_ns is None else started_ns
        self.timings = timings if timings is not None else {}
        self._copied: dict[tuple, float] = {}
        self._bar_watches: dict[str, ReadinessWatch] = {}  # bars advancing, few late trades

    # ------------------------------------------------------------------------------------------ metrics
    def _inc_to(self, child: Any, key: tuple, value: float) -> None:
        """Counters in the cores are totals: add the increase since the last copy."""
        prev = self._copied.get(key, 0.0)
        if value > prev:
            child.inc(value - prev)
            self._copied[key] = value
        elif value < prev:  # a restarted component (e.g. the feed) counts from 0 again
            self._copied[key] = value

    def collect(self) -> None:
        """Copy core counters into Prometheus metrics (called every second and before each scrape)."""
        v = self.view()
        m, cfg, p = self.metrics, self.cfg, v.parts
        venue = cfg.venue.mode
        if p is not None:
            feed = p.feed
            st = feed.stats
            for stream, n in st.frames.items():
                sym, _, kind = stream.partition("@")
                self._inc_to(m.frames.labels(venue, sym.upper(), kind), ("frames", stream), n)
            for reason, n in st.decode_errors.items():
                self._inc_to(m.decode_errors.labels(venue, reason), ("decode", reason), n)
            self._inc_to(m.reconnects.labels(venue), ("reconnects",), st.reconnects)
            for c in feed.connections:
                i = str(c.index)
                m.feed_connection_up.labels(i).set(1 if c.connected else 0)
                m.feed_connection_streams.labels(i).set(len(c.streams))
                self._inc_to(m.feed_connection_connects.labels(i), ("conn_connects", i), c.connects)
                for reason, n in c.errors.items():
                    self._inc_to(m.feed_connection_errors.labels(i, reason), ("conn_errors", i, reason), n)
            m.queue_depth.labels("feed").set(feed.queue.qsize())
            m.queue_depth.labels("store").set(p.writer.pending)
            for sym, book in feed.books.items():
                bs = book.stats
                self._inc_to(m.book_resyncs.labels(sym), ("resyncs", sym), getattr(bs, "resyncs", 0))
                self._inc_to(m.book_gaps.labels(sym), ("gaps", sym), getattr(bs, "gaps", 0))
                for reason, n in getattr(bs, "rejected", {}).items():
                    self._inc_to(m.book_rejects.labels(sym, reason), ("rejected", sym, reason), n)
                m.book_synced.labels(sym).set(1 if book.is_tradeable else 0)
            for (sym, reason), n in st.refused.items():
                self._inc_to(m.frames_refused.labels(sym, reason), ("refused", sym, reason), n)
            self._inc_to(m.clock_jumps, ("clock_jumps",), st.clock_jumps)
            self._inc_to(m.book_oracle.labels("checked"), ("oracle", "checked"), st.oracle_checked)
            self._inc_to(m.book_oracle.labels("mismatched"), ("oracle", "mismatched"), st.oracle_mismatches)
            pf, opt, risk = p.broker.portfolio, p.optimizer, p.risk
            acct = p.pipeline.account()
            alarms = opt.exit_alarms()
            for sym in cfg.general.symbols:
                m.position.labels(sym).set(pf.qty(sym))
                for side in ("BUY", "SELL"):  # exported at 0 from start (dashboards, alerts)
                    m.fills.labels(sym, side)
                m.exit_alarm.labels(sym).set(alarms.get(sym, {}).get("refusals", 0))
                self._inc_to(m.exit_refused.labels(sym), ("exit_refused", sym),
                             opt.counters.get(f"exit_refused.{sym}", 0))
            if math.isfinite(acct.equity):
                m.equity.set(acct.equity)
                try:
                    m.unrealised.set(pf.mark(acct.marks)[1])
                except ValueError:
                    pass
            m.realised.set(pf.realised)
            m.fees.set(pf.fees)
            m.daily_pnl.set(risk.daily_pnl)
            m.risk_state.set({"ACTIVE": 0, "REDUCING": 1, "HALTED": 2}[risk.state.value])
            sources = {"pipeline": p.pipeline.counters, "optimizer": opt.counters}
            for outcome, (src, key) in DECISION_OUTCOMES.items():
                self._inc_to(m.decision_outcomes.labels(outcome), ("outcome", outcome),
                             counter_total(sources[src], key))
        self._collect_failures(v)
        ok, _ = self.ready()
        m.up.set(1 if ok else 0)

    def _collect_failures(self, v: View) -> None:
        """Every failure /status counts, in /metrics too (each series exported from start, at 0)."""
        m = self.metrics
        p = v.parts
        if p is not None:
            for kind in ("predict", "bar_store", "plan_store"):
                self._inc_to(m.pipeline_errors.labels(kind), ("pipe", kind),
                             p.pipeline.counters.get(f"{kind}_errors", 0))
        errors = p.recorder.errors if p is not None and p.recorder is not None else 0
        self._inc_to(m.record_errors, ("record_errors",), errors)
        if v.writer is not None:
            ws = v.writer.stats
            for event in ("dropped", "full_waits", "errors", "skipped", "outages", "retries"):
                self._inc_to(m.store_writer.labels(event), ("writer", event), getattr(ws, event))
            m.store_available.set(1 if v.writer.available else 0)
            self._inc_to(m.store_dropped_bars.labels("queue_full"), ("bars_dropped", "queue_full"),
                         ws.dropped_bars_queue_full)
            self._inc_to(m.store_dropped_bars.labels("write_failed"), ("bars_dropped", "write_failed"),
                         ws.dropped_bars_failed)

    # ------------------------------------------------------------------------------------------ HTTP
    def health(self) -> tuple[bool, dict]:
        v = self.view()
        tasks = v.supervisor.snapshot() if v.supervisor is not None else {}
        return v.fatal is None, {"fatal": v.fatal, "tasks": tasks}

    def ready(self) -> tuple[bool, dict]:
        v = self.view()
        p = v.parts
        books = {s: b.state.value for s, b in p.feed.books.items()} if p is not None else {}
        models = {tf: es.ready for tf, es in p.engine_sets.items()} if p is not None else {}
        ok = (bool(books) and all(s == "SYNCED" for s in books.values()) and bool(models)
              and all(models.values()) and v.fatal is None and not v.stopping)
        bars = self._bars_ready(p)
        return ok and not bars, {"books": books, "models_warm": models, "bars_not_ready": bars}

    def _bars_ready(self, p: Components | None) -> dict[str, str]:
        """{symbol: reason} of symbols whose bars stopped advancing or whose trades mostly arrive late."""
        if p is None:
            return {}
        from daemon.plausible import ReadinessWatch
        watches = self._bar_watches
        now, out = time.time_ns(), {}
        for sym in self.cfg.general.symbols:
            w = watches.get(sym) or watches.setdefault(sym, ReadinessWatch())
            bs = p.pipeline.builder(sym).stats
            ok, reason = w.observe(now, bs.bars_closed, bs.accepted, bs.late_dropped)
            if not ok:
                out[sym] = reason
        return out

    def status(self) -> dict:
        self.collect()
        v = self.view()
        p = v.parts
        out: dict[str, Any] = {"uptime_s": (time.time_ns() - self.started_ns) / 1e9, "venue": {
            "mode": self.cfg.venue.mode, "ws_url": p.link.ws_url if p else "", "rest_url": p.link.rest_url if p else ""},
            "timings": self.timings, "fatal": v.fatal}
        if p is not None:
            pipe, risk, opt, broker = p.pipeline, p.risk, p.optimizer, p.broker
            pf = broker.portfolio
            acct = pipe.account()
            out["account"] = {"cash": pf.cash, "equity": acct.equity, "realised": pf.realised, "fees": pf.fees,
                              "fills": pf.n_fills, "marks": dict(acct.marks),
                              "positions": {s: {"qty": q.qty, "avg_price": q.avg_price, "realised": q.realised,
                                                "fees": q.fees} for s, q in pf.positions.items()}}
            out["risk"] = {"state": risk.state.value, "halt_reason": risk.halt_reason,
                           "daily_pnl": risk.daily_pnl, "counters": dict(risk.counters)}
            out["pipeline"] = {"counters": dict(pipe.counters), "tick_to_decision": pipe.latency_summary(),
                               "book_states": pipe.book_states,
                               "boundaries": pipe.boundaries}  # the last decided bar boundary per timeframe
            out["optimizer"] = {"counters": dict(opt.counters), "positions": sorted(opt.positions),
                                "exit_alarms": opt.exit_alarms()}
            out["broker"] = {"stats": dict(broker.stats), "open_orders": len(broker.open_orders())}
            out["last_decisions"] = [{"symbol": d.symbol, "timeframe": d.timeframe, "bar_open_ns": d.bar_open_ns,
                                      "predictions": d.predictions, "intents": [i.client_order_id for i in d.intents],
                                      "fills": len(d.fills), "book_stale": d.book_stale}
                                     for d in list(pipe.decisions)[-5:]]
        if v.writer is not None:
            out["store"] = v.writer.snapshot()
        out["models"] = {tf: es.info() for tf, es in p.engine_sets.items()} if p is not None else {}
        out["retrain"] = v.retrain.status() if v.retrain is not None else {
            "enabled": False, "running": False, "runs": 0, "last": None, "gate_errors": 0}
        out["drift"] = v.drift.status() if v.drift is not None else {"enabled": False}
        if p is not None:
            out["feed"] = p.feed.counters()
            if p.recorder is not None:
                out["recorder"] = {"files": [str(f) for f in p.recorder.files][-5:], "errors": p.recorder.errors}
        if v.supervisor is not None:
            out["tasks"] = v.supervisor.snapshot()
        return out

    # ------------------------------------------------------------------------------------------ console
    def progress_line(self) -> str | None:
        """One line for the console: what the daemon did since it started (None before the pipeline)."""
        p = self.view().parts
        if p is None:
            return None
        pipe, broker = p.pipeline, p.broker
        pf, c = broker.portfolio, p.optimizer.counters
        acct = pipe.account()
        pos = ", ".join(f"{s} {q.qty:+g}" for s, q in pf.positions.items() if q.qty) or "flat"
        below = c.get("no_signal.below_cost", 0)
        return (f"trading: {pipe.counters.get('decisions', 0)} decisions ({below} below cost), "
                f"{broker.stats.get('orders', 0)} orders, {pf.n_fills} fills, {pos}; "
                f"equity {acct.equity:,.2f} (realised {pf.realised:+,.2f}, fees {pf.fees:,.2f}); "
                f"market time {time.strftime('%Y-%m-%d %H:%M', time.gmtime(p.link.now_ns() / 1e9))} UTC")
