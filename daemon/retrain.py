"""Background retraining: a separate, lower-priority process that trains challengers and gates them.

The daemon never trains on its loop. :class:`RetrainManager` starts ``python -m daemon.retrain`` as a child
process (which lowers its own priority, with BLAS/OpenMP/torch threads capped), waits for it with a timeout (a
hung run is killed), and reads one JSON line of results. The child:

1. reads recent 1m bars from the store (read-only SQLite connection while the daemon writes; WAL allows it),
   topped up with the venue's klines history when the store is still young;
2. for each timeframe trains a challenger on everything before the most recent held-out window
   (engines.train: the same code as `tradingd train`);
3. evaluates the challenger AND the current model on that same held-out window by dollar P&L after fees;
4. publishes the challenger and moves the ``current`` pointer only if it made more money than the current one
   (or when no current model exists). If the current model cannot be evaluated the gate cannot judge: nothing
   is promoted, and the error is reported (``gate_error`` in the results, counted by the daemon). The daemon
   notices the new current version, loads and warms it off-loop and swaps it atomically.

A crashed or hung retrain only produces a failed outcome in metrics and logs; trading goes on.
"""
from __future__ import annotations

import asyncio
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import orjson
import structlog

log = structlog.get_logger(__name__)

THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS")


# ------------------------------------------------------------------------------------------ child process
def _current_pnl(ds, spec, registry, tf: str, test_rows: np.ndarray) -> dict | None:
    """Dollar P&L of the registry's current models on the held-out rows (None if there is no current)."""
    from engines.lstm_model import LSTMModel, make_sequences
    from engines.xgb_model import XGBoostModel, dollar_pnl
    out = {}
    fee = spec.cost / 2
    xdir, ldir = registry.current(tf, "xgboost"), registry.current(tf, "lstm")
    if xdir is None or ldir is None:
        return None
    xgb = XGBoostModel.load(xdir)
    out["xgboost"] = dollar_pnl(xgb.predict(ds.X[test_rows]), ds.fwd[test_rows],
                                position_size=spec.position_size, fee=fee)["pnl_usd"]
    lstm = LSTMModel.load(ldir)
    seqs, end = make_sequences(ds.X, lstm.config.seq_len)
    keep = np.isin(end, test_rows)
    out["lstm"] = dollar_pnl(lstm.predict(seqs[keep]), ds.fwd[end[keep]], position_size=spec.position_size,
                             fee=fee)["pnl_usd"]
    return out


def retrain_cycle(store_path: str | None, registry_root: str, symbol: str, timeframes: list[str], *,
                  rest_url: str | None = None, history_days: float = 30, spec_overrides: dict | None = None,
                  min_bars: int = 20_000, min_improvement: float = 0.0, executor: str = "local",
                  address: str = "", shadow: bool = False, trigger: dict | None = None) -> dict:
    """One retraining cycle (runs in the child process). Returns a JSON-able result per timeframe. ``trigger``
    (what asked for it: reason and detail) is recorded in every published version's manifest.

    With ``executor = "ray"`` each timeframe's training (both kinds) is a Ray task writing its model files under
    the registry's ``.staging`` folder (a path every node shares); this process alone gates and publishes them,
    so a lost worker never leaves a half-published model (research.executor). With ``shadow`` a gate-passing
    challenger is published but not made current: the daemon runs it in shadow first (daemon.shadow)."""
    from daemon.train_cli import load_symbol_bars
    from engines.registry import ModelRegistry
    from engines.train import TrainSpec, _rows, build_dataset, publish_trained, split_bounds, train_and_publish
    k = load_symbol_bars(store_path, symbol, rest_url, history_days, min_bars)
    reg = ModelRegistry(registry_root)
    results = {}
    trained = _train_remote(k, timeframes, spec_overrides, registry_root, executor, address) \
        if executor != "local" else {}
    for tf in timeframes:
        spec = TrainSpec(tf, **(spec_overrides or {}))
        t0 = time.perf_counter()
        ds = build_dataset(k, spec)
        a, b = split_bounds(len(ds.y), spec)
        te = _rows(ds.y, b, len(ds.y))
        gate_error = None
        try:
            current = _current_pnl(ds, spec, reg, tf, te)
        except Exception as e:  # noqa: BLE001 - the gate cannot judge: publish, never promote
            gate_error = f"{type(e).__name__}: {e}"[:500]
            log.error("retrain_gate_error", timeframe=tf, error=gate_error)
            current = None
        extra = {"trigger": trigger} if trigger else None
        if tf in trained:
            outcome, staging = trained[tf]
            refs = publish_trained(outcome, staging, spec, reg, make_current=False, extra=extra)
        else:
            outcome, refs = train_and_publish(k, spec, reg, make_current=False, extra=extra)
        challenger = {kind: outcome.metrics[kind]["dollar"]["pnl_usd"] for kind in ("xgboost", "lstm")}
        decision = {}
        for kind in ("xgboost", "lstm"):
            better = gate_error is None and (current is None or challenger[kind] > current[kind] + min_improvement)
            # with shadow: a gate-passing challenger runs beside the champion first (daemon.shadow); with no
            # current model at all there is nothing to compare against: it is promoted
            to_shadow = better and shadow and current is not None
            if better and not to_shadow:
                reg.set_current(tf, kind, refs[kind].version)
            decision[kind] = {"challenger_pnl": challenger[kind],
                              "current_pnl": None if current is None else current[kind],
                              "promoted": better and not to_shadow, "shadow": to_shadow,
                              "version": refs[kind].version}
        results[tf] = {"decision": decision, "seconds": time.perf_counter() - t0,
                       "window": outcome.data_window, "gate_error": gate_error, "executor": executor}
    if trained:
        shutil.rmtree(next(iter(trained.values()))[1].parent, ignore_errors=True)
    return results


def _train_job(tf: str, *, k1m, spec_overrides: dict, staging_root: str):
    """One cluster task: train ``tf``'s models into ``staging_root/tf`` (a shared path); return the outcome."""
    from engines.train import TrainSpec, train_timeframe
    out = Path(staging_root) / tf
    out.mkdir(parents=True, exist_ok=True)
    return train_timeframe(k1m, TrainSpec(tf, **spec_overrides), out)


def _train_remote(k, timeframes: list[str], spec_overrides: dict | None, registry_root: str, executor: str,
                  address: str) -> dict:
    """Every timeframe trained as a task of ``executor``; {tf: (outcome, staging dir)}. A failed task raises
    (nothing was published) and the staging folder is removed."""
    import uuid
    from research.executor import make_executor
    staging = Path(registry_root) / ".staging" / uuid.uuid4().hex
    staging.mkdir(parents=True)
    ex = make_executor(executor, address, num_cpus_per_task=max(1, int((spec_overrides or {}).get("threads", 1))))
    try:
        got = ex.map(_train_job, [(tf,) for tf in timeframes],
                     shared={"k1m": k, "spec_overrides": dict(spec_overrides or {}), "staging_root": str(staging)},
                     label=lambda j: f"retrain {j[0]}")
    except Exception:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    finally:
        ex.close()
    return {tf: (o, staging / tf) for tf, o in zip(timeframes, got)}


def lower_own_priority(increment: int) -> dict:
    """Raise this process's nice value by ``increment`` (lower priority; allowed without privileges unless a
    seccomp filter denies setpriority, e.g. a unit with ``~@resources``): on refusal log and go on at the
    inherited priority. Done by the child itself: ``preexec_fn`` is unsafe in a threaded daemon."""
    before = os.getpriority(os.PRIO_PROCESS, 0)
    if increment <= 0:
        return {"nice": before, "lowered": False, "error": None}
    try:
        os.setpriority(os.PRIO_PROCESS, 0, min(before + increment, 19))
    except OSError as e:
        log.warning("retrain_priority_unchanged", nice=before, wanted=increment, error=str(e))
        return {"nice": before, "lowered": False, "error": str(e)}
    return {"nice": os.getpriority(os.PRIO_PROCESS, 0), "lowered": True, "error": None}


def _limit_threads(threads: int) -> None:
    for var in THREAD_VARS:
        os.environ[var] = str(threads)


def child_main(argv: list[str] | None = None) -> int:
    import argparse
    p = argparse.ArgumentParser(prog="python -m daemon.retrain")
    p.add_argument("--store")
    p.add_argument("--registry", required=True)
    p.add_argument("--symbol", required=True)
    p.add_argument("--timeframes", required=True)
    p.add_argument("--rest-url")
    p.add_argument("--history-days", type=float, default=30)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--nice", type=int, default=0, help="lower our own priority by this much first")
    p.add_argument("--spec", default="{}", help="JSON TrainSpec overrides")
    p.add_argument("--min-bars", type=int, default=20_000)
    p.add_argument("--min-improvement", type=float, default=0.0)
    p.add_argument("--executor", default="local", choices=("local", "ray"))
    p.add_argument("--address", default="")
    p.add_argument("--shadow", action="store_true", help="a gate-passing challenger goes to the shadow A/B")
    p.add_argument("--trigger", default="", help="JSON: why this retrain runs (recorded in the manifests)")
    p.add_argument("--universe", default="", help="comma list of symbols: retrain the pooled universe bundles "
                   "on all of them (daemon.retrain_universe) instead of --symbol's per-symbol models")
    p.add_argument("--costs", default="{}", help="JSON research.portfolio.Costs for the universe gate")
    a = p.parse_args(argv)
    from daemon.logs import configure
    configure("info", json=True)
    priority = lower_own_priority(a.nice)
    _limit_threads(a.threads)
    try:
        import torch
        torch.set_num_threads(a.threads)
    except ImportError:
        pass
    spec = orjson.loads(a.spec)
    spec.setdefault("threads", a.threads)
    if a.universe:
        from daemon.retrain_universe import universe_retrain_cycle
        res = universe_retrain_cycle(a.store, a.registry, a.universe.split(","), a.timeframes.split(","),
                                     rest_url=a.rest_url, history_days=a.history_days, min_bars=a.min_bars,
                                     min_improvement=a.min_improvement, threads=a.threads,
                                     costs=orjson.loads(a.costs), executor=a.executor, address=a.address,
                                     trigger=orjson.loads(a.trigger) if a.trigger else None, shadow=a.shadow)
        sys.stdout.write(orjson.dumps({"ok": True, "results": res, "priority": priority}).decode() + "\n")
        return 0
    res = retrain_cycle(a.store, a.registry, a.symbol, a.timeframes.split(","), rest_url=a.rest_url,
                        history_days=a.history_days, spec_overrides=spec, min_bars=a.min_bars,
                        min_improvement=a.min_improvement, executor=a.executor, address=a.address,
                        shadow=a.shadow, trigger=orjson.loads(a.trigger) if a.trigger else None)
    sys.stdout.write(orjson.dumps({"ok": True, "results": res, "priority": priority}).decode() + "\n")
    return 0


# ------------------------------------------------------------------------------------------ daemon side
@dataclass
class RetrainOutcome:
    ok: bool
    seconds: float
    results: dict = field(default_factory=dict)
    error: str = ""
    priority: dict = field(default_factory=dict)  # the child's {"nice", "lowered", "error"}


@dataclass
class RetrainManager:
    """Runs retraining cycles in a child process; one at a time; never raises into the caller's loop."""

    registry: str
    symbol: str
    timeframes: list[str]
    store: str | None = None
    rest_url: str | None = None
    history_days: float = 30
    nice: int = 10
    threads: int = 1
    timeout_s: float = 3600
    spec_overrides: dict = field(default_factory=dict)
    min_bars: int = 20_000
    min_improvement: float = 0.0
    executor: str = "local"
    address: str = ""
    shadow: bool = False
    trigger: dict | None = None  # why the current run runs (recorded in the manifests it publishes)
    universe: tuple[str, ...] = ()  # universe mode: every traded symbol (the pooled bundles are retrained)
    costs: dict = field(default_factory=dict)  # universe mode: the gate's per-side costs (research.portfolio.Costs)
    running: bool = False
    runs: int = 0
    last: RetrainOutcome | None = None

    def command(self) -> list[str]:
        cmd = [sys.executable, "-m", "daemon.retrain", "--registry", self.registry, "--symbol", self.symbol,
               "--timeframes", ",".join(self.timeframes), "--threads", str(self.threads),
               "--history-days", str(self.history_days), "--spec", orjson.dumps(self.spec_overrides).decode(),
               "--min-bars", str(self.min_bars), "--min-improvement", repr(self.min_improvement),
               "--nice", str(self.nice)]
        if self.executor != "local":
            cmd += ["--executor", self.executor, "--address", self.address]
        if self.shadow:
            cmd += ["--shadow"]
        if self.universe:
            cmd += ["--universe", ",".join(self.universe), "--costs", orjson.dumps(self.costs).decode()]
        if self.store:
            cmd += ["--store", self.store]
        if self.rest_url:
            cmd += ["--rest-url", self.rest_url]
        if self.trigger:
            cmd += ["--trigger", orjson.dumps(self.trigger).decode()]
        return cmd

    async def run_once(self, trigger: dict | None = None) -> RetrainOutcome:
        if self.running:
            return RetrainOutcome(False, 0.0, error="a retrain is already running")
        self.running = True
        self.runs += 1
        self.trigger = trigger
        t0 = time.monotonic()
        env = dict(os.environ)
        for var in THREAD_VARS:
            env[var] = str(self.threads)
        proc = None
        try:
            proc = await asyncio.create_subprocess_exec(
                *self.command(), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env)
            out, err = await asyncio.wait_for(proc.communicate(), timeout=self.timeout_s)
            secs = time.monotonic() - t0
            if proc.returncode != 0:
                tail = err.decode(errors="replace")[-2000:]
                outcome = RetrainOutcome(False, secs, error=f"exit {proc.returncode}: {tail}")
            else:
                line = orjson.loads(out.decode().strip().splitlines()[-1])
                outcome = RetrainOutcome(True, secs, line["results"], priority=line.get("priority", {}))
        except asyncio.CancelledError:  # daemon shutting down: never leave an orphan trainer behind
            if proc is not None and proc.returncode is None:
                proc.kill()
                await proc.wait()
            self.running = False
            raise
        except asyncio.TimeoutError:
            if proc is not None:
                proc.kill()
                await proc.wait()
            outcome = RetrainOutcome(False, time.monotonic() - t0, error=f"timed out after {self.timeout_s}s")
        except Exception as e:  # noqa: BLE001 - report, never raise into trading
            outcome = RetrainOutcome(False, time.monotonic() - t0, error=f"{type(e).__name__}: {e}")
        finally:
            self.running = False
        self.last = outcome
        (log.info if outcome.ok else log.error)("retrain finished", ok=outcome.ok, seconds=round(outcome.seconds, 1),
                                                error=outcome.error[-300:] or None)
        return outcome


if __name__ == "__main__":
    sys.exit(child_main())
