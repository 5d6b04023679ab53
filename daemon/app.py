"""``tradingd run --config config.toml``: the daemon's lifecycle (start -> run -> drain -> stop), signals, exit codes.

Who does what: daemon.kernel builds the parts from the config into one frozen ``Components`` (store, venue link,
broker, models, feed -> pipeline; daemon.firstrun trains first models); daemon.collector shows them (/metrics,
/status, /healthz, /readyz, the progress line); daemon.control applies /control actions; daemon.hotswap retrains
and swaps engines. This module only starts them, supervises the tasks and stops them.

Start-up, in order (start-up and crash recovery are one path):

1. config (a bad file or value: message naming the key, exit 2) -> logging (daemon.logs) -> sd_notify watchdog
   pings start at once (training may take a while; the loop stays free);
2. store (SQLite, WAL; recovery happens in the PaperBroker, which re-derives the account from the fills);
3. venue: ``simulate``/``replay`` start the local Binance-format venue in-process on loopback
   (SimulatorSource / ReplaySource over ``venue.recording``: a file or a directory of .gz files), ``remote`` uses
   ``venue.ws_url``/``venue.rest_url``; exchange filters come from the venue's exchangeInfo;
4. models: a registry without current models and ``engines.train_on_first_run`` -> 1m klines history from the
   venue's REST klines (simulate: ``simulator.history_days``, remote: ``engines.first_run_history_days``) and a
   SMALL TrainSpec (``engines.first_run_*``) trained in a spawned child process (its memory goes back to the OS
   when it exits; progress lines on stdout); then every timeframe's engines are loaded (schema-checked),
   backends chosen, and warmed (daemon.engineset);
5. the pipeline's feature state is primed from recent klines history (so predictions start at the first live
   bar instead of after 48 bars), those 1m bars also go to the store for the retrainer;
6. feed (BinanceFeed; events go INLINE to the pipeline, so every decision sees exactly the book after the event
   that closed the bar: the socket's receive buffer is the only queue), HTTP (/metrics, /healthz, /readyz,
   /status, bearer-token /control/{halt,resume,flatten,retrain}), then READY=1 and a line on stdout with the URL.

Tasks are owned by a :class:`daemon.supervisor.Supervisor`: ``feed`` restarts with backoff; ``bar-clock``
(closes bars of quiet minutes from the wall clock), ``collector`` (copies core counters into Prometheus metrics
every second), ``loop-lag`` and ``watchdog`` are fatal when they die, and so is an exception from the pipeline.

Store writes happen OFF the loop: one writer thread (daemon.storewriter) owns a write connection and commits,
in order, each paper execution (one transaction: orders, fills, positions, balance, stops) and the closed bars;
the loop keeps a connection for reads. The store is always a consistent prefix of what the daemon did, memory
leads it by the writer's queue (depth in ``tradingd_queue_depth{queue="store"}``, submit-to-durable lag in
``tradingd_store_commit_lag_seconds`` and /status ``store``), shutdown flushes it, and a failed write is fatal
(exit 1: a store that cannot be written needs a human).

Retraining (daemon.hotswap over daemon.retrain): every ``retrain.interval_minutes`` and on ``POST /control/retrain`` a nice'd child
process trains challengers on the store's bars and promotes them only if they beat the current models on
held-out dollar P&L; changed versions are then loaded and warmed in a worker thread and swapped in on the loop
(the loop lag during the swap is measured and shown in /status ``retrain.last``).

Shutdown: the first SIGTERM/SIGINT halts new entries (risk halt), stops the feed, lets the current event finish,
waits up to ``broker.drain_timeout_s`` for the outcome of orders in flight at a venue broker (a flatten sent just
before the signal), closes HTTP/venue/store and exits 0 within ``SHUTDOWN_S`` + that; a second signal exits at
once with 1.

Exit codes: 0 clean stop; 1 fatal runtime error (a core task died; systemd restarts); 2 bad configuration;
3 start-up failure (store unusable, no/broken models, venue unreachable, training failed) — the unit's
``RestartPreventExitStatus=2 3`` keeps systemd from restart-looping on what needs a human.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import time
from typing import Any

import structlog

from daemon import kernel
from daemon.collector import Collector, View
from daemon.control import control
from daemon.kernel import Components, Resources, StartupError

__all__ = ["Daemon", "StartupError", "drain_orders", "bar_clock_lag_ns", "main", "add_arguments"]

log = structlog.get_logger(__name__)

EXIT_OK, EXIT_FATAL, EXIT_CONFIG, EXIT_STARTUP = 0, 1, 2, 3
SHUTDOWN_S = 15.0
PROGRESS_S = 10.0  # console progress line period (wall seconds)
BAR_CLOCK_LAG_NS = 2_000_000_000  # on_time(now - 2 s): trades stamped just before a boundary are not late


def say(msg: str) -> None:
    """Progress for a human at the terminal (stdout; logs go to stderr), in the log lines' format."""
    from daemon.logs import say as _say
    _say(msg)


def say_error(msg: str) -> None:
    from daemon.logs import say_error as _say_error
    _say_error(msg)


def bar_clock_lag_ns(cfg: Any) -> int:
    """2 s of wall clock, in event time (a sped-up simulator's trades arrive that much event time late)."""
    return int(BAR_CLOCK_LAG_NS * (cfg.simulator.speed if cfg.venue.mode == "simulate" else 1.0))


async def drain_orders(broker: Any, pipeline: Any, timeout_s: float) -> list[str]:
    """Wait (bounded) for the outcome of orders in flight at a venue broker, delivering each answer through
    the pipeline (store, optimizer) as it arrives. Returns the client ids still unknown at the deadline
    (logged; the next start reconciles them with the venue)."""
    in_flight = getattr(broker, "in_flight", None)
    if in_flight is None:
        return []
    t0 = time.monotonic()
    waiting = in_flight()
    if waiting:
        log.info("drain_waiting", orders=waiting[:20], timeout_s=timeout_s)
    while True:
        try:
            for ex in broker.on_book("", None, time.time_ns()):  # delivers queued venue answers
                pipeline.on_execution(ex)
        except Exception as e:  # noqa: BLE001 - e.g. a halted store: nothing more can be recorded
            log.error("drain_failed", error=f"{type(e).__name__}: {e}")
            return in_flight()
        waiting = in_flight()
        if not waiting or time.monotonic() - t0 >= timeout_s:
            break
        await asyncio.sleep(0.05)
    if waiting:
        log.warning("drain_timeout", orders=waiting[:20], seconds=round(time.monotonic() - t0, 3))
    else:
        log.info("drain_done", seconds=round(time.monotonic() - t0, 3))
    return waiting


# ------------------------------------------------------------------------------------------------ the daemon
class Daemon:
    """The lifecycle: start (daemon.kernel builds the components) -> run until a signal or a fatal task failure ->
    drain -> stop. Owns the tasks (a Supervisor), the signals and the exit code."""

    def __init__(self, cfg: Any, *, env: dict[str, str] | None = None) -> None:
        from daemon.metrics import Metrics
        from daemon.sdnotify import Notifier
        from daemon.supervisor import Supervisor
        self.cfg = cfg
        self.env = dict(os.environ if env is None else env)
        self.metrics = Metrics()
        self.notifier = Notifier(self.env)
        self.stop_event = asyncio.Event()
        self.exit_code = EXIT_OK
        self.fatal: str | None = None
        self.signals = 0
        self.started_ns = time.time_ns()
        self.timings: dict[str, float] = {}
        self.resources = Resources()  # what start-up opened, closed in reverse at shutdown
        self.supervisor = Supervisor(on_fatal=self.on_fatal,
                                     on_restart=lambda n: self.metrics.task_restarts.labels(n).inc())
        self.collector = Collector(cfg, self.metrics, self.view, started_ns=self.started_ns, timings=self.timings)
        self.parts: Components | None = None  # set once, when start-up has built everything
        self.retrain = None  # daemon.hotswap.RetrainCycle when retrain.enabled
        self.drift = None  # daemon.drift.DriftWatch when drift.enabled
        self._loop: asyncio.AbstractEventLoop | None = None

    def view(self) -> View:
        p = self.parts
        return View(parts=p, writer=p.writer if p is not None else None, retrain=self.retrain, supervisor=self.supervisor,
                    fatal=self.fatal, stopping=self.stop_event.is_set(), drift=self.drift)

    def status(self) -> dict:
        return self.collector.status()

    def event_now_ns(self) -> int:
        """The market's time (the embedded simulator's, else the wall clock)."""
        return self.parts.link.now_ns() if self.parts is not None else time.time_ns()

    # -------------------------------------------------------------------------------------- lifecycle
    async def run(self) -> int:
        from daemon.supervisor import loop_lag_monitor
        loop = self._loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_signal, sig)
        sup = self.supervisor
        sup.spawn("watchdog", self.notifier.watchdog_loop)
        sup.spawn("loop-lag", lambda: loop_lag_monitor(self.metrics.loop_lag.observe))
        try:
            start = asyncio.ensure_future(self.start())
            stop = asyncio.ensure_future(self.stop_event.wait())
            await asyncio.wait({start, stop}, return_when=asyncio.FIRST_COMPLETED)
            if not start.done():  # a signal during start-up: abandon it
                start.cancel()
                try:
                    await start
                except BaseException:  # noqa: BLE001 - cancelled start-up, whatever it was doing
                    pass
                say("stopped during start-up")
            else:
                start.result()  # raises StartupError
                await stop
        except StartupError as e:
            log.error("startup_failed", error=str(e))
            say_error(f"start-up failed: {e}")
            self.exit_code = EXIT_STARTUP
        except Exception as e:  # noqa: BLE001 - anything else in start-up is a start-up failure too
            log.exception("startup_failed", error=f"{type(e).__name__}: {e}")
            say_error(f"start-up failed: {type(e).__name__}: {e}")
            self.exit_code = EXIT_STARTUP
        finally:
            try:
                await asyncio.wait_for(self.shutdown(), SHUTDOWN_S + self.cfg.broker.drain_timeout_s)
            except asyncio.TimeoutError:
                log.error("shutdown_timeout", seconds=SHUTDOWN_S + self.cfg.broker.drain_timeout_s)
                if self.exit_code == EXIT_OK:
                    self.exit_code = EXIT_FATAL
        return self.exit_code

    def _on_signal(self, sig: int) -> None:
        self.signals += 1
        if self.signals >= 2:
            log.error("forced_exit", signal=signal.Signals(sig).name)
            os._exit(EXIT_FATAL)
        log.warning("stop_requested", signal=signal.Signals(sig).name)
        self.notifier.stopping("draining")
        self.stop_event.set()

    def on_fatal(self, name: str, exc: BaseException) -> None:
        """A core task (or the pipeline, or the store writer) failed: stop, exit 1."""
        self.fatal = f"{name}: {type(exc).__name__}: {exc}"
        log.error("fatal_task_failure", task=name, error=str(exc))
        say_error(f"fatal: {self.fatal}")
        self.exit_code = EXIT_FATAL
        self.stop_event.set()

    def _writer_failed(self, exc: BaseException) -> None:
        """Writer thread: a failed store write stops the daemon (exit 1), on the loop's thread."""
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self.on_fatal, "store-writer", exc)

    async def shutdown(self) -> None:
        """Stop entries, stop the feed, stop tasks, close everything. Safe at any start-up stage."""
        t0 = time.perf_counter()
        p = self.parts
        if p is not None:
            try:
                p.pipeline.halt("shutdown")
            except Exception as e:  # noqa: BLE001
                log.warning("halt_failed", error=str(e))
            p.feed.stop()
        if self.retrain is not None:
            self.retrain.cancel()
        if p is not None:  # before the broker's task is stopped
            await drain_orders(p.broker, p.pipeline, self.cfg.broker.drain_timeout_s)
        await self.supervisor.stop(timeout=5.0)
        if not await self.resources.aclose() and self.exit_code == EXIT_OK:  # writes may be lost
            self.exit_code = EXIT_FATAL
        self.notifier.close()
        log.info("stopped", exit_code=self.exit_code, seconds=round(time.perf_counter() - t0, 3))

    # -------------------------------------------------------------------------------------- start-up
    async def start(self) -> None:
        cfg = self.cfg
        parts = await kernel.build(cfg, self.env, self.metrics, self.resources, status=self._status,
                                   timings=self.timings, on_writer_error=self._writer_failed,
                                   on_fatal=self.on_fatal, spawn_broker=self._spawn_broker,
                                   stopped=self.stop_event)
        self.parts = parts
        await kernel.prime(cfg, parts)
        if cfg.drift.enabled:  # live bars only (not the priming history)
            from daemon.drift import DriftWatch
            self.drift = DriftWatch(cfg, self.metrics, parts.registry, parts.engine_sets, parts.optimizer,
                                    request_retrain=self._retrain_request, defer=asyncio.get_running_loop().call_soon)
            parts.pipeline.observers.append(self.drift.observe)
        sup = self.supervisor
        sup.spawn("feed", parts.feed.run, restart=True)
        url = await self._start_http()
        sup.spawn("collector", self._collect_loop)
        if cfg.venue.mode != "replay":  # a replay's time is the recording's: its trades close the bars
            sup.spawn("bar-clock", self._bar_clock)
        sup.spawn("progress", self._progress)
        if cfg.retrain.enabled:
            from daemon.hotswap import RetrainCycle
            self.retrain = RetrainCycle.from_config(cfg, self.metrics, parts.registry, parts.engine_sets,
                                                    parts.link.rest_url, pipeline=parts.pipeline)
            sup.spawn("retrain-scheduler", self.retrain.scheduler, restart=True)
        self.notifier.ready(f"serving {url}")
        self.timings["startup_s"] = (time.time_ns() - self.started_ns) / 1e9
        say(f"ready: {url} (venue {cfg.venue.mode} {parts.link.ws_url}, symbols {','.join(cfg.general.symbols)}, "
            f"timeframes {','.join(cfg.general.timeframes)}, models {cfg.model_family}, "
            f"start-up {self.timings['startup_s']:.1f} s)")
        log.info("ready", url=url, **{k: round(v, 3) for k, v in self.timings.items()})

    def _status(self, text: str) -> None:
        self.notifier.status(text)
        log.info("startup_step", step=text)

    def _spawn_broker(self, broker: Any) -> None:
        """A venue broker's session (clock sync, credential check, restart reconciliation) runs as the supervised
        task "broker"; its refusal is a start-up failure (exit 3)."""
        run = getattr(broker, "run", None)
        if run is None:
            return
        from daemon.binance.testnet import TestnetError

        async def run_broker() -> None:
            try:
                await run()
            except TestnetError as e:
                log.error("startup_failed", error=str(e))
                say_error(f"start-up failed: {e}")
                self.exit_code = EXIT_STARTUP
                self.stop_event.set()
        self.supervisor.spawn("broker", run_broker)

    async def _start_http(self) -> str:
        from daemon import secrets
        from daemon.http import HttpHooks, HttpServer
        cfg = self.cfg
        token = secrets.read_secret(self.env, secrets.CONTROL_TOKEN, cfg.http.control_token_env) or None
        hooks = HttpHooks(render_metrics=self.metrics.render, health=self.collector.health,
                          ready=self.collector.ready, status=self.collector.status, control=self._control,
                          count_error=lambda reason: self.metrics.http_errors.labels(reason).inc())
        http = HttpServer(hooks, cfg.http.host, cfg.http.port, token, keepalive_timeout_s=cfg.http.keepalive_timeout_s,
                          max_header_bytes=cfg.http.max_header_bytes)
        try:
            await http.start()
        except OSError as e:
            raise StartupError(f"http.port: cannot listen on {cfg.http.host}:{cfg.http.port}: {e}") from None
        self.resources.push("http", http.stop)
        return f"http://{http.host}:{http.port}"

    def _retrain_request(self, reason: str, detail: dict) -> dict:
        """daemon.drift asks for a retrain (drift alarm, P&L decay); the retrainer rate-limits it."""
        if self.retrain is None:
            return {"ok": False, "error": "retraining is disabled (retrain.enabled = false)"}
        return self.retrain.request(reason, detail)

    async def _control(self, action: str) -> dict:
        return control(action, self.parts, self.retrain, self.event_now_ns())

    # -------------------------------------------------------------------------------------- tasks
    async def _bar_clock(self) -> None:
        """Closes bars of quiet minutes from the (market's) clock."""
        assert self.parts is not None
        pipeline, link = self.parts.pipeline, self.parts.link
        lag = bar_clock_lag_ns(self.cfg)
        while True:
            await asyncio.sleep(0.5)
            try:
                pipeline.on_time(link.now_ns() - lag)
            except Exception as e:  # noqa: BLE001
                self.on_fatal("pipeline", e)
                return

    async def _progress(self) -> None:
        """Every PROGRESS_S a progress line on stdout, so a person at the terminal sees the loop work."""
        while True:
            await asyncio.sleep(PROGRESS_S)
            line = self.collector.progress_line()
            if line:
                say(line)

    async def _collect_loop(self) -> None:
        while True:
            self.collector.collect()
            await asyncio.sleep(1.0)


# ------------------------------------------------------------------------------------------------ CLI
def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default=None, help="config.toml (omitted: the embedded defaults, a local simulated "
                   "venue and the paper broker; a file with no options is refused, exit 2)")


def main(args: argparse.Namespace) -> int:
    from daemon.config import ConfigError, load_config
    try:
        cfg = load_config(args.config)
    except ConfigError as e:
        print(f"tradingd: bad config: {e}", file=sys.stderr, flush=True)
        return EXIT_CONFIG
    except (OSError, ValueError) as e:
        print(f"tradingd: bad config: {args.config}: {e}", file=sys.stderr, flush=True)
        return EXIT_CONFIG
    from daemon.logs import configure
    configure(cfg.logging.level, fmt=cfg.logging.format)
    daemon = Daemon(cfg)
    try:
        import uvloop
        runner = uvloop.run
    except ImportError:  # pragma: no cover - uvloop is a dependency; asyncio works the same
        runner = asyncio.run
    code = runner(daemon.run())
    return int(code)
