"""``tradingd run --config config.toml``: wire the venue, feed, pipeline, broker, store, models and HTTP together.

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

Retraining (daemon.retrain): every ``retrain.interval_minutes`` and on ``POST /control/retrain`` a nice'd child
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
import math
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import structlog

log = structlog.get_logger(__name__)

EXIT_OK, EXIT_FATAL, EXIT_CONFIG, EXIT_STARTUP = 0, 1, 2, 3
PLAN_PREFIX = "exit_plan."  # store kv keys of the optimizer's exit plans
SHUTDOWN_S = 15.0
PROGRESS_S = 10.0  # console progress line period (wall seconds)
BAR_CLOCK_LAG_NS = 2_000_000_000  # on_time(now - 2 s): trades stamped just before a boundary are not late


class StartupError(Exception):
    """Start-up cannot complete; the message says what a human must fix (exit 3)."""


def say(msg: str) -> None:
    """Progress for a human at the terminal (stdout; logs go to stderr), in the log lines' format."""
    from daemon.logs import say as _say
    _say(msg)


def say_error(msg: str) -> None:
    from daemon.logs import say_error as _say_error
    _say_error(msg)


# ------------------------------------------------------------------------------------------------ the daemon
class Daemon:
    def __init__(self, cfg: Any, *, env: dict[str, str] | None = None) -> None:
        from daemon.metrics import Metrics
        from daemon.sdnotify import Notifier
        self.cfg = cfg
        self.env = dict(os.environ if env is None else env)
        self.metrics = Metrics()
        self.notifier = Notifier(self.env)
        self.stop_event: asyncio.Event | None = None
        self.exit_code = EXIT_OK
        self.fatal: str | None = None
        self.signals = 0
        self.started_ns = time.time_ns()
        self.store = self.venue = self.feed = self.pipeline = self.broker = self.http = None
        self.engine_sets: dict = {}
        self.filters: dict = {}
        self._bar_watches: dict = {}  # symbol -> plausible.ReadinessWatch (bars advancing, few late trades)
        self.supervisor = None
        self.ws_url = self.rest_url = ""
        self.timings: dict[str, float] = {}
        self._copied: dict[tuple, float] = {}
        self.writer = None  # daemon.storewriter.StoreWriter
        self._bars_after = None  # daemon.storewriter.BarsAfterEvent
        self._loop: asyncio.AbstractEventLoop | None = None
        self.recorder = None
        self.record_errors = 0
        self.retrain_gate_errors = 0
        self.retrainer = None
        self.retrain_task: asyncio.Task | None = None
        self.last_retrain: dict | None = None

    # -------------------------------------------------------------------------------------- lifecycle
    async def run(self) -> int:
        from daemon.supervisor import Supervisor, loop_lag_monitor
        loop = self._loop = asyncio.get_running_loop()
        self.stop_event = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_signal, sig)
        self.supervisor = Supervisor(on_fatal=self._on_fatal,
                                     on_restart=lambda n: self.metrics.task_restarts.labels(n).inc())
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
        assert self.stop_event is not None
        self.stop_event.set()

    def _on_fatal(self, name: str, exc: BaseException) -> None:
        self.fatal = f"{name}: {type(exc).__name__}: {exc}"
        log.error("fatal_task_failure", task=name, error=str(exc))
        say_error(f"fatal: {self.fatal}")
        self.exit_code = EXIT_FATAL
        if self.stop_event is not None:
            self.stop_event.set()

    async def shutdown(self) -> None:
        """Stop entries, stop the feed, stop tasks, close everything. Safe at any start-up stage."""
        t0 = time.perf_counter()
        if self.pipeline is not None:
            try:
                self.pipeline.halt("shutdown")
            except Exception as e:  # noqa: BLE001
                log.warning("halt_failed", error=str(e))
        if self.feed is not None:
            self.feed.stop()
        if self.retrain_task is not None and not self.retrain_task.done():
            self.retrain_task.cancel()
        await self._drain_orders(self.cfg.broker.drain_timeout_s)  # before the broker's task is stopped
        if self.supervisor is not None:
            await self.supervisor.stop(timeout=5.0)
        if self.http is not None:
            await self.http.stop()
        if self.venue is not None:
            await self.venue.stop()
        if self.recorder is not None:
            try:
                self.recorder.close()
            except Exception as e:  # noqa: BLE001
                log.warning("recorder_close_failed", error=str(e))
        if self._bars_after is not None:
            self._bars_after.flush()
        if self.writer is not None:  # everything the daemon did becomes durable before exit
            ok = await asyncio.get_running_loop().run_in_executor(None, self.writer.close, SHUTDOWN_S / 2)
            log.info("store_writer_closed", flushed=ok, **{k: v for k, v in self.writer.snapshot().items()
                                                          if k != "lag"})
            if not ok and self.exit_code == EXIT_OK:  # writes may be lost: not a clean stop
                log.error("store_writer_not_flushed", pending=self.writer.pending)
                self.exit_code = EXIT_FATAL
        if self.store is not None:
            try:
                self.store.close()
            except Exception as e:  # noqa: BLE001
                log.warning("store_close_failed", error=str(e))
        self.notifier.close()
        log.info("stopped", exit_code=self.exit_code, seconds=round(time.perf_counter() - t0, 3))

    async def _drain_orders(self, timeout_s: float) -> list[str]:
        """Wait (bounded) for the outcome of orders in flight at a venue broker, delivering each answer through
        the pipeline (store, optimizer) as it arrives. Returns the client ids still unknown at the deadline
        (logged; the next start reconciles them with the venue)."""
        broker, pipe = self.broker, self.pipeline
        in_flight = getattr(broker, "in_flight", None)
        if in_flight is None or pipe is None:
            return []
        t0 = time.monotonic()
        waiting = in_flight()
        if waiting:
            log.info("drain_waiting", orders=waiting[:20], timeout_s=timeout_s)
        while True:
            try:
                for ex in broker.on_book("", None, time.time_ns()):  # delivers queued venue answers
                    pipe._after_execution(ex, None)
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

    # -------------------------------------------------------------------------------------- start-up
    async def start(self) -> None:
        cfg = self.cfg
        Path(cfg.general.data_dir).mkdir(parents=True, exist_ok=True)
        self._status("opening store")
        self._open_store()
        self._status("starting venue")
        await self._start_venue()
        self.filters = await self._fetch_filters()
        self._open_broker()
        self._status("loading models")
        history = await self._ensure_models()
        t0 = time.perf_counter()
        self.engine_sets = await asyncio.get_running_loop().run_in_executor(None, self._load_engines)
        self.timings["engines_load_s"] = time.perf_counter() - t0
        await self._broker_ready()
        self._build_pipeline()
        for ex in getattr(self.broker, "recovered", ()):  # fills made while we were down reach the optimizer
            self.pipeline._after_execution(ex, None)
        await self._prime(history)
        self._start_feed()
        await self._start_http()
        sup = self.supervisor
        assert sup is not None
        sup.spawn("collector", self._collector)
        if cfg.venue.mode != "replay":  # a replay's time is the recording's: its trades close the bars
            sup.spawn("bar-clock", self._bar_clock)
        sup.spawn("progress", self._progress)
        if cfg.retrain.enabled:
            self._make_retrainer()
            sup.spawn("retrain-scheduler", self._retrain_scheduler, restart=True)
        url = f"http://{self.http.host}:{self.http.port}"
        self.notifier.ready(f"serving {url}")
        self.timings["startup_s"] = (time.time_ns() - self.started_ns) / 1e9
        say(f"ready: {url} (venue {cfg.venue.mode} {self.ws_url}, symbols {','.join(cfg.general.symbols)}, "
            f"timeframes {','.join(cfg.general.timeframes)}, start-up {self.timings['startup_s']:.1f} s)")
        log.info("ready", url=url, **{k: round(v, 3) for k, v in self.timings.items()})

    def _status(self, text: str) -> None:
        self.notifier.status(text)
        log.info("startup_step", step=text)

    def _open_store(self) -> None:
        from daemon.store import SQLiteStore, StoreError
        cfg = self.cfg
        path = cfg.path(cfg.store.path)
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.store = SQLiteStore(path, quote_asset=cfg.broker.quote_asset, busy_timeout_ms=cfg.store.busy_timeout_ms)
            from daemon.storewriter import StoreWriter
            self.writer = StoreWriter(
                lambda: SQLiteStore(path, quote_asset=cfg.broker.quote_asset, busy_timeout_ms=cfg.store.busy_timeout_ms),
                max_queue=cfg.store.writer_queue, on_error=self._writer_failed,
                observe_lag=self.metrics.store_commit_lag.observe)
        except StoreError as e:
            raise StartupError(str(e)) from None

    def _writer_failed(self, exc: BaseException) -> None:
        """Writer thread: a failed store write stops the daemon (exit 1), on the loop's thread."""
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._on_fatal, "store-writer", exc)

    async def _start_venue(self) -> None:
        cfg = self.cfg
        mode = cfg.venue.mode
        if mode == "remote":
            self.ws_url, self.rest_url = cfg.venue.ws_url.rstrip("/"), cfg.venue.rest_url.rstrip("/")
            return
        from daemon.venue.server import LocalVenue, SimulatorSource
        if mode == "simulate":
            source: Any = SimulatorSource(cfg.general.symbols, cfg.simulator)
            start_on = "subscriber"  # the market opens when the feed subscribes, after training and priming
        else:
            from daemon.venue.replay import ReplaySource
            if not cfg.venue.recording:
                raise StartupError("venue.recording: replay mode needs a recording (a file or a directory)")
            history = None
            if cfg.venue.history and cfg.venue.history != "simulated":
                from engines.data import KlinesError, load_klines_csv
                try:
                    history = await asyncio.get_running_loop().run_in_executor(
                        None, load_klines_csv, cfg.venue.history)
                except (KlinesError, OSError, ValueError) as e:
                    raise StartupError(f"venue.history: {e}") from None
            try:
                source = await asyncio.get_running_loop().run_in_executor(
                    None, lambda: ReplaySource(cfg.venue.recording, cfg.venue.speed, cfg.simulator, history,
                                               simulated_history=cfg.venue.history == "simulated"))
            except (FileNotFoundError, OSError) as e:
                raise StartupError(f"venue.recording: {e}") from None
            missing = [s for s in cfg.general.symbols if s not in source.symbols]
            if missing:
                raise StartupError(f"general.symbols: {missing} not in the recording (it has {source.symbols})")
            start_on = cfg.venue.start_on
        self.venue = LocalVenue(source, cfg.faults, cfg.venue.host, cfg.venue.port, start_on=start_on)
        await self.venue.start()
        self.ws_url, self.rest_url = self.venue.ws_url, self.venue.rest_url

    async def _fetch_filters(self) -> dict:
        import aiohttp

        from daemon.binance.codec import DecodeError, parse_exchange_info
        url = f"{self.rest_url}/api/v3/exchangeInfo"
        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15)) as s:
                async with s.get(url) as r:
                    body = await r.read()
                    if r.status != 200:
                        raise StartupError(f"exchangeInfo from {url}: HTTP {r.status}: {body[:200]!r}")
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as e:
            raise StartupError(f"venue unreachable: {url}: {e!r}") from None
        try:
            filters = parse_exchange_info(body)
        except DecodeError as e:
            raise StartupError(f"exchangeInfo from {url} undecodable: {e}") from None
        missing = [s for s in self.cfg.general.symbols if s not in filters]
        if missing:
            raise StartupError(f"general.symbols: {missing} unknown to the venue ({url})")
        return {s: filters[s] for s in self.cfg.general.symbols}

    def _open_broker(self) -> None:
        from daemon.broker import PaperBroker
        cfg = self.cfg
        if cfg.broker.kind == "testnet":
            self._open_testnet_broker()
            return
        self.broker = PaperBroker(cfg.broker, self.store, symbols=tuple(cfg.general.symbols), filters=self.filters,
                                  writer=self.writer)
        if self.broker.recovery_discrepancies:
            log.warning("recovery_discrepancies", items=self.broker.recovery_discrepancies[:20])

    def _open_testnet_broker(self) -> None:
        """broker.kind = testnet (daemon.binance.testnet): signed orders to venue.rest_url (remote) or to the local
        venue's order API (simulate; the daemon's credentials are registered there, fees = broker.*_fee).
        Credentials: systemd credentials tradingd-api-key / tradingd-api-secret, else the environment variables
        venue.api_key_env / venue.api_secret_env (daemon.secrets).
        The broker's session, clock sync, credential check and restart reconciliation run in the supervised
        task "broker" (a refusal: start-up failure, exit 3); sends wait for it."""
        from daemon.binance.rest import BinanceRestClient
        from daemon.binance.testnet import TestnetBroker, TestnetError
        cfg = self.cfg
        if cfg.venue.mode == "replay":
            raise StartupError("broker.kind = testnet needs venue.mode simulate or remote: a replayed recording "
                               "has no order API")
        from daemon import secrets
        key = secrets.read_secret(self.env, secrets.API_KEY, cfg.venue.api_key_env)
        secret = secrets.read_secret(self.env, secrets.API_SECRET, cfg.venue.api_secret_env)
        missing = [n for n, v in ((cfg.venue.api_key_env, key), (cfg.venue.api_secret_env, secret)) if not v]
        if missing:
            raise StartupError(f"broker.kind = testnet: API credentials missing: set the environment variable(s) "
                               f"{', '.join(missing)} (named by venue.api_key_env / venue.api_secret_env) or the "
                               f"systemd credentials {secrets.API_KEY} / {secrets.API_SECRET}")
        if cfg.venue.mode == "simulate":
            orders = self.venue.orders
            quote = cfg.broker.quote_asset
            orders.add_key(key, secret, balances={quote: cfg.broker.starting_cash,
                                                  **{s[: -len(quote)]: 10.0 for s in cfg.general.symbols
                                                     if s.endswith(quote)}})
            orders.set_fees(cfg.broker.maker_fee, cfg.broker.taker_fee)
            orders.fill_at_touch = cfg.broker.fill_at_touch
        client = BinanceRestClient(self.rest_url, key, secret)
        self.broker = TestnetBroker(cfg.broker, self.store, client, symbols=tuple(cfg.general.symbols),
                                    filters=self.filters, writer=self.writer)
        broker = self.broker

        async def run_broker() -> None:
            try:
                await broker.run()
            except TestnetError as e:
                log.error("startup_failed", error=str(e))
                say_error(f"start-up failed: {e}")
                self.exit_code = EXIT_STARTUP
                if self.stop_event is not None:
                    self.stop_event.set()
        assert self.supervisor is not None
        self.supervisor.spawn("broker", run_broker)
        if self.broker.recovery_discrepancies:
            log.warning("recovery_discrepancies", items=self.broker.recovery_discrepancies[:20])

    async def _broker_ready(self) -> None:
        """A venue broker (testnet) reconciles with the venue before the pipeline decides on its account."""
        ready = getattr(self.broker, "_ready", None)
        if ready is None or ready.is_set():
            return
        self._status("broker: reconciling with the venue")
        assert self.stop_event is not None
        waiters = {asyncio.ensure_future(ready.wait()), asyncio.ensure_future(self.stop_event.wait())}
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        for t in waiters:
            t.cancel()
        if not ready.is_set():
            raise StartupError("broker: stopped before it was ready (see the log)")

    async def _fetch_history(self, symbol: str, days: float):
        from daemon.binance.rest import fetch_klines_rest
        return await fetch_klines_rest(self.rest_url, symbol, days=days)

    async def _ensure_models(self):
        """Train first models when the registry has none (and the config allows it). Returns the history
        klines fetched for it (reused for priming) or None."""
        from engines.registry import ModelRegistry
        from engines.train import missing_models
        cfg = self.cfg
        self.registry = ModelRegistry(cfg.path(cfg.engines.registry))
        self.registry.remove_stale_temp()
        from engines.base import ModelLoadError
        try:
            missing = missing_models(self.registry, cfg.general.timeframes)
        except ModelLoadError as e:  # e.g. a `current` pointer naming no version directory: the file is named
            raise StartupError(f"model registry: {e}") from None
        if not missing:
            return None
        if not cfg.engines.train_on_first_run:
            raise StartupError(f"no current models for {missing} in {self.registry.root} and "
                               "engines.train_on_first_run is false: run `tradingd train` first")
        sym = cfg.general.symbols[0]
        days = cfg.simulator.history_days if cfg.venue.mode == "simulate" else cfg.engines.first_run_history_days
        say(f"first run: no models for {','.join(missing)}; fetching {days:g} days of {sym} 1m klines "
            f"from {self.rest_url}")
        self._status("first run: fetching history")
        t0 = time.perf_counter()
        try:
            k = await self._fetch_history(sym, days)
        except Exception as e:  # noqa: BLE001
            raise StartupError(f"first run: cannot fetch klines history from {self.rest_url}: {e}") from None
        self.timings["history_fetch_s"] = time.perf_counter() - t0
        say(f"first run: {len(k)} bars fetched in {self.timings['history_fetch_s']:.1f} s; training "
            f"(xgb_rounds={cfg.engines.first_run_xgb_rounds}, lstm_epochs={cfg.engines.first_run_lstm_epochs}, "
            f"lstm_hidden={cfg.engines.first_run_lstm_hidden})")
        self._status("first run: training")
        t0 = time.perf_counter()
        try:
            pid = await self._train_in_child(k, missing)
        except Exception as e:  # noqa: BLE001
            raise StartupError(f"first-run training failed: {type(e).__name__}: {e}") from None
        self.timings["first_run_train_s"] = time.perf_counter() - t0
        log.info("first_run_trained", timeframes=list(missing), train_pid=pid, daemon_pid=os.getpid(),
                 seconds=round(self.timings["first_run_train_s"], 3))
        say(f"first run: trained {','.join(missing)} in {self.timings['first_run_train_s']:.1f} s "
            f"(child process {pid})")
        return {sym: k}

    async def _train_in_child(self, k, timeframes) -> int:
        """First-run training in a spawned child process (returns its pid): the training's memory (torch,
        XGBoost's DMatrix, the feature frames) goes back to the OS when it exits, so the daemon stays small."""
        import multiprocessing
        cfg = self.cfg
        e = cfg.engines
        specs = [dict(timeframe=tf, xgb_rounds=e.first_run_xgb_rounds, lstm_epochs=e.first_run_lstm_epochs,
                      lstm_hidden=e.first_run_lstm_hidden, threads=e.first_run_threads,
                      cost=2 * cfg.broker.taker_fee + 0.0001) for tf in timeframes]
        from daemon.logs import current_format
        ctx = multiprocessing.get_context("spawn")
        recv, send = ctx.Pipe(duplex=False)
        proc = ctx.Process(target=_first_run_child, name="tradingd-first-run-train", daemon=True,
                           args=(str(self.registry.root), k, specs, cfg.logging.level, current_format(), send))
        proc.start()
        send.close()
        try:
            await asyncio.get_running_loop().run_in_executor(None, proc.join)
        except asyncio.CancelledError:  # a signal during training: the child goes too
            proc.terminate()
            await asyncio.get_running_loop().run_in_executor(None, proc.join, 5.0)
            if proc.is_alive():
                proc.kill()
            raise
        result = recv.recv() if recv.poll() else ("error", f"training process exited with {proc.exitcode}")
        recv.close()
        if result[0] != "ok":
            raise RuntimeError(result[1])
        return int(result[1])

    def _load_engines(self) -> dict:
        from daemon.engineset import EngineSet, ModelLoadError
        out = {}
        for tf in self.cfg.general.timeframes:
            try:
                out[tf] = EngineSet.load(self.registry, tf, self.cfg.engines, metrics=self.metrics)
            except ModelLoadError as e:
                raise StartupError(f"model refused: {e}") from None
        return out

    def _build_pipeline(self) -> None:
        from daemon.binance.feed import BinanceFeed
        from daemon.pipeline import TradingPipeline
        from engines.features import FEATURE_SCHEMA
        from strategies.optimizer import DollarProfitOptimizer
        from strategies.risk import RiskManager
        cfg = self.cfg
        for tf, es in self.engine_sets.items():  # record what we trade with
            for kind, info in es.info().items():
                self.writer.submit(lambda st, tf=tf, kind=kind, info=info, ts=time.time_ns(): st.record_model_version(
                    info["version"], f"{tf}/{kind}", info["path"], FEATURE_SCHEMA.hash, ts, active=True),
                    kind="model_version")
        self.metrics.set_models({tf: es.info() for tf, es in self.engine_sets.items()})
        self.optimizer = DollarProfitOptimizer(cfg.optimizer, cfg.risk, filters=self.filters,
                                               fee_rate=cfg.broker.taker_fee, timeframes=cfg.general.timeframes,
                                               starting_equity=self.broker.portfolio.starting_cash)
        self.risk = RiskManager(cfg.risk, self.filters)
        self.recorder = None
        if cfg.recorder.enabled:  # every raw frame and REST snapshot, replayable by `tradingd venue --recording`
            from daemon.recording import Recorder
            self.recorder = Recorder(cfg.path(cfg.recorder.dir), prefix=cfg.venue.mode,
                                     rotate_bytes=int(cfg.recorder.rotate_mb * 1e6),
                                     rotate_seconds=cfg.recorder.rotate_minutes * 60)
        # event times are checked against the receive clock scaled by the venue's pace (replay/simulator speed)
        speed = cfg.venue.speed if cfg.venue.mode == "replay" else getattr(cfg.simulator, "speed", 1.0)
        self.feed = BinanceFeed(cfg.general.symbols, self.ws_url, self.rest_url, cfg.feed, on_event=self._on_event,
                                on_raw=self._record if self.recorder else None, filters=self.filters,
                                speed=speed if cfg.venue.mode != "remote" else 1.0)
        self.pipeline = TradingPipeline(cfg, cfg.general.symbols, self.engine_sets, self.optimizer, self.risk,
                                        self.broker, store=self.store, metrics=self.metrics,
                                        books=self.feed.protocol.books,  # the protocol owns them: read-only view
                                        keep=2000, bar_sink=self._bar_sink, plan_sink=self._plan_sink)
        # exit plans of positions open at the last stop: managed on their own timeframe and levels again
        import orjson
        try:
            plans = [orjson.loads(v) for v in self.store.kv_items(PLAN_PREFIX).values()]
        except Exception as e:  # noqa: BLE001 - unreadable: adoption at the next bar instead
            log.error("exit_plans_unreadable", error=str(e))
            plans = []
        if plans or any(p.qty for p in self.broker.portfolio.positions.values()):
            n = self.optimizer.restore_exit_plans(plans, self.pipeline.account())
            log.info("exit_plans", stored=len(plans), restored=n)

    async def _prime(self, history: dict | None) -> None:
        from daemon.pipeline import history_bars_needed
        from engines.data import klines_to_bars
        cfg = self.cfg
        seq = max((es.seq_len for es in self.engine_sets.values()), default=0)
        need_min = history_bars_needed(cfg.general.timeframes, seq)
        for sym, k in (history or {}).items():  # the training history also goes to the store (retrainer)
            self.writer.write_bars(klines_to_bars(k))
        for sym in cfg.general.symbols:
            # always a fresh fetch: training may have taken minutes, and a gap would be filled with flat bars
            try:
                k = await self._fetch_history(sym, need_min / 1440 + 0.01)
            except Exception as e:  # noqa: BLE001 - no history: predictions start after warm-up
                log.warning("prime_history_unavailable", symbol=sym, error=str(e)[:200])
                continue
            if len(k) == 0:
                log.warning("prime_history_empty", symbol=sym)
                continue
            bars = klines_to_bars(k)
            self.writer.write_bars(bars)
            rows = self.pipeline.prime(sym, bars[-need_min:])
            log.info("primed", symbol=sym, bars=min(len(bars), need_min), rows=rows)

    def _start_feed(self) -> None:
        assert self.supervisor is not None and self.feed is not None
        self.supervisor.spawn("feed", self.feed.run, restart=True)

    def _record(self, recv_ns: int, raw, symbol: str | None = None) -> None:
        """Feed hook: frames (recv_ns, raw) and REST snapshots (recv_ns, raw, symbol) to the recorder."""
        try:
            if symbol is None:
                self.recorder.write(recv_ns, raw)
            else:
                self.recorder.write_snapshot(recv_ns, symbol, raw)
        except Exception as e:  # noqa: BLE001 - a full disk must not stop trading; counted and logged
            self.record_errors += 1
            if self.record_errors in (1, 10, 100) or self.record_errors % 1000 == 0:
                log.error("record_failed", error=str(e), errors=self.record_errors)

    async def _start_http(self) -> None:
        from daemon.http import HttpHooks, HttpServer
        cfg = self.cfg
        from daemon import secrets
        token = secrets.read_secret(self.env, secrets.CONTROL_TOKEN, cfg.http.control_token_env) or None
        hooks = HttpHooks(render_metrics=self.metrics.render, health=self._health, ready=self._ready,
                          status=self.status, control=self._control,
                          count_error=lambda reason: self.metrics.http_errors.labels(reason).inc())
        self.http = HttpServer(hooks, cfg.http.host, cfg.http.port, token,
                               keepalive_timeout_s=cfg.http.keepalive_timeout_s,
                               max_header_bytes=cfg.http.max_header_bytes)
        try:
            await self.http.start()
        except OSError as e:
            raise StartupError(f"http.port: cannot listen on {cfg.http.host}:{cfg.http.port}: {e}") from None

    # -------------------------------------------------------------------------------------- hot path
    def _on_event(self, ev: Any) -> None:
        """Feed callback (inline, after the book processed ``ev``). A pipeline exception is fatal."""
        try:
            self.pipeline.on_event(ev)  # type: ignore[union-attr]
        except Exception as e:  # noqa: BLE001
            log.exception("pipeline_failed", event_type=type(ev).__name__)
            self._on_fatal("pipeline", e)
            if self.feed is not None:
                self.feed.stop()

    def _plan_sink(self, symbol: str, plan: dict | None) -> None:
        """The optimizer's exit plan changed: stored (in order, after the fills that changed it) for restarts."""
        import orjson
        from daemon.store import kv_statement
        stmt = kv_statement(PLAN_PREFIX + symbol, orjson.dumps(plan).decode() if plan is not None else None)
        self.writer.write_statements([stmt], kind="exit_plan")

    def _bar_sink(self, bars: list) -> None:
        """Closed bars go to the writer thread after the current decision (never blocks; dropped and counted if
        its queue is full)."""
        if self._bars_after is None:
            from daemon.storewriter import BarsAfterEvent
            self._bars_after = BarsAfterEvent(self.writer)
        self._bars_after(bars)

    def event_now_ns(self) -> int:
        """The market's time: the embedded simulator's (``simulator.speed`` times the wall clock), else wall."""
        source = getattr(self.venue, "source", None)
        now = getattr(source, "now_ns", None)
        return now() if now is not None else time.time_ns()

    def _bar_clock_lag_ns(self) -> int:
        """2 s of wall clock, in event time (a sped-up simulator's trades arrive that much event time late)."""
        return int(BAR_CLOCK_LAG_NS * (self.cfg.simulator.speed if self.cfg.venue.mode == "simulate" else 1.0))

    async def _bar_clock(self) -> None:
        lag = self._bar_clock_lag_ns()
        while True:
            await asyncio.sleep(0.5)
            try:
                self.pipeline.on_time(self.event_now_ns() - lag)  # type: ignore[union-attr]
            except Exception as e:  # noqa: BLE001
                self._on_fatal("pipeline", e)
                return

    def progress_line(self) -> str | None:
        """One line for the console: what the daemon did since it started (None before the pipeline)."""
        pipe = self.pipeline
        if pipe is None:
            return None
        pf, c = self.broker.portfolio, self.optimizer.counters
        acct = pipe.account()
        pos = ", ".join(f"{s} {p.qty:+g}" for s, p in pf.positions.items() if p.qty) or "flat"
        below = c.get("no_signal.below_cost", 0)
        return (f"trading: {pipe.counters.get('decisions', 0)} decisions ({below} below cost), "
                f"{self.broker.stats.get('orders', 0)} orders, {pf.n_fills} fills, {pos}; "
                f"equity {acct.equity:,.2f} (realised {pf.realised:+,.2f}, fees {pf.fees:,.2f}); "
                f"market time {time.strftime('%Y-%m-%d %H:%M', time.gmtime(self.event_now_ns() / 1e9))} UTC")

    async def _progress(self) -> None:
        """Every PROGRESS_S a progress line on stdout, so a person at the terminal sees the loop work."""
        while True:
            await asyncio.sleep(PROGRESS_S)
            line = self.progress_line()
            if line:
                say(line)

    async def _collector(self) -> None:
        while True:
            self.collect()
            await asyncio.sleep(1.0)

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
        m, cfg = self.metrics, self.cfg
        venue = cfg.venue.mode
        if self.feed is not None:
            st = self.feed.stats
            for stream, n in st.frames.items():
                sym, _, kind = stream.partition("@")
                self._inc_to(m.frames.labels(venue, sym.upper(), kind), ("frames", stream), n)
            for reason, n in st.decode_errors.items():
                self._inc_to(m.decode_errors.labels(venue, reason), ("decode", reason), n)
            self._inc_to(m.reconnects.labels(venue), ("reconnects",), st.reconnects)
            m.queue_depth.labels("feed").set(self.feed.queue.qsize())
            if self.writer is not None:
                m.queue_depth.labels("store").set(self.writer.pending)
            for sym, book in self.feed.books.items():
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
        if self.pipeline is not None:
            pf = self.broker.portfolio
            acct = self.pipeline.account()
            marks = acct.marks
            alarms = self.optimizer.exit_alarms()
            for sym in cfg.general.symbols:
                m.position.labels(sym).set(pf.qty(sym))
                m.exit_alarm.labels(sym).set(alarms.get(sym, {}).get("refusals", 0))
                self._inc_to(m.exit_refused.labels(sym), ("exit_refused", sym),
                             self.optimizer.counters.get(f"exit_refused.{sym}", 0))
            if math.isfinite(acct.equity):
                m.equity.set(acct.equity)
                try:
                    m.unrealised.set(pf.mark(marks)[1])
                except ValueError:
                    pass
            m.realised.set(pf.realised)
            m.fees.set(pf.fees)
            m.daily_pnl.set(self.risk.daily_pnl)
            m.risk_state.set({"ACTIVE": 0, "REDUCING": 1, "HALTED": 2}[self.risk.state.value])
        self._collect_failures()
        ok, _ = self._ready()
        m.up.set(1 if ok else 0)

    def _collect_failures(self) -> None:
        """Every failure /status counts, in /metrics too (each series exported from start, at 0)."""
        m = self.metrics
        if self.pipeline is not None:
            for kind in ("predict", "bar_store", "plan_store"):
                self._inc_to(m.pipeline_errors.labels(kind), ("pipe", kind),
                             self.pipeline.counters.get(f"{kind}_errors", 0))
        self._inc_to(m.record_errors, ("record_errors",), self.record_errors)
        if self.writer is not None:
            ws = self.writer.stats
            for event in ("dropped", "full_waits", "errors", "skipped"):
                self._inc_to(m.store_writer.labels(event), ("writer", event), getattr(ws, event))
            self._inc_to(m.store_dropped_bars.labels("queue_full"), ("bars_dropped", "queue_full"),
                         ws.dropped_bars_queue_full)
            self._inc_to(m.store_dropped_bars.labels("write_failed"), ("bars_dropped", "write_failed"),
                         ws.dropped_bars_failed)

    # -------------------------------------------------------------------------------------- HTTP hooks
    def _health(self) -> tuple[bool, dict]:
        tasks = self.supervisor.snapshot() if self.supervisor else {}
        ok = self.fatal is None
        return ok, {"fatal": self.fatal, "tasks": tasks}

    def _ready(self) -> tuple[bool, dict]:
        books = {s: b.state.value for s, b in self.feed.books.items()} if self.feed else {}
        models = {tf: es.ready for tf, es in self.engine_sets.items()}
        ok = (bool(books) and all(v == "SYNCED" for v in books.values()) and bool(models)
              and all(models.values()) and self.fatal is None and not (self.stop_event and self.stop_event.is_set()))
        bars = self._bars_ready()
        return ok and not bars, {"books": books, "models_warm": models, "bars_not_ready": bars}

    def _bars_ready(self) -> dict[str, str]:
        """{symbol: reason} of symbols whose bars stopped advancing or whose trades mostly arrive late."""
        if self.pipeline is None:
            return {}
        from daemon.plausible import ReadinessWatch
        watches = self._bar_watches
        now, out = time.time_ns(), {}
        for sym in self.cfg.general.symbols:
            w = watches.get(sym) or watches.setdefault(sym, ReadinessWatch())
            bs = self.pipeline.builder(sym).stats
            ok, reason = w.observe(now, bs.bars_closed, bs.accepted, bs.late_dropped)
            if not ok:
                out[sym] = reason
        return out

    def status(self) -> dict:
        self.collect()
        pipe = self.pipeline
        out: dict[str, Any] = {"uptime_s": (time.time_ns() - self.started_ns) / 1e9, "venue": {
            "mode": self.cfg.venue.mode, "ws_url": self.ws_url, "rest_url": self.rest_url},
            "timings": self.timings, "fatal": self.fatal}
        if pipe is not None:
            pf = self.broker.portfolio
            acct = pipe.account()
            out["account"] = {"cash": pf.cash, "equity": acct.equity, "realised": pf.realised, "fees": pf.fees,
                              "fills": pf.n_fills, "marks": dict(acct.marks),
                              "positions": {s: {"qty": p.qty, "avg_price": p.avg_price, "realised": p.realised,
                                                "fees": p.fees} for s, p in pf.positions.items()}}
            out["risk"] = {"state": self.risk.state.value, "halt_reason": self.risk.halt_reason,
                           "daily_pnl": self.risk.daily_pnl, "counters": dict(self.risk.counters)}
            out["pipeline"] = {"counters": dict(pipe.counters), "tick_to_decision": pipe.latency_summary(),
                               "book_states": pipe.book_states}
            out["optimizer"] = {"counters": dict(self.optimizer.counters),
                                "positions": sorted(self.optimizer.positions),
                                "exit_alarms": self.optimizer.exit_alarms()}
            out["broker"] = {"stats": dict(self.broker.stats), "open_orders": len(self.broker.open_orders())}
            last = [d for d in list(pipe.decisions)[-5:]]
            out["last_decisions"] = [{"symbol": d.symbol, "timeframe": d.timeframe, "bar_open_ns": d.bar_open_ns,
                                      "predictions": d.predictions, "intents": [i.client_order_id for i in d.intents],
                                      "fills": len(d.fills), "book_stale": d.book_stale} for d in last]
        if self.writer is not None:  # also before the pipeline exists (start-up writes history bars)
            out["store"] = self.writer.snapshot()
        out["models"] = {tf: es.info() for tf, es in self.engine_sets.items()}
        out["retrain"] = {"enabled": self.retrainer is not None,
                          "running": bool(self.retrainer and self.retrainer.running),
                          "runs": self.retrainer.runs if self.retrainer else 0, "last": self.last_retrain,
                          "gate_errors": self.retrain_gate_errors}
        if self.feed is not None:
            out["feed"] = self.feed.counters()
        if self.recorder is not None:
            out["recorder"] = {"files": [str(f) for f in self.recorder.files][-5:], "errors": self.record_errors}
        if self.supervisor is not None:
            out["tasks"] = self.supervisor.snapshot()
        return out

    async def _control(self, action: str) -> dict:
        pipe = self.pipeline
        if pipe is None:
            return {"ok": False, "error": "not started"}
        ts = self.event_now_ns()
        if action == "halt":
            pipe.halt("control", ts)
        elif action == "resume":
            pipe.resume(ts)
        elif action == "flatten":
            d = pipe.flatten(ts)
            return {"ok": True, "orders": [i.client_order_id for i in d.intents], "fills": len(d.fills),
                    "risk": d.risk, "errors": d.errors}
        elif action == "retrain":
            if self.retrainer is None:
                return {"ok": False, "error": "retraining is disabled (retrain.enabled = false)"}
            if self.retrain_task is not None and not self.retrain_task.done():
                return {"ok": False, "error": "a retrain is already running"}
            self.retrain_task = asyncio.create_task(self.retrain_now("control"), name="retrain-on-demand")
            return {"ok": True, "started": True}
        else:
            return {"ok": False, "error": f"unknown action {action}"}
        return {"ok": True, "risk_state": self.risk.state.value}

    # ------------------------------------------------------------------------------------- retraining
    def _make_retrainer(self) -> None:
        from daemon.retrain import RetrainManager
        cfg, r = self.cfg, self.cfg.retrain
        for tf in cfg.general.timeframes:  # exported at 0 from start, so an alert can use rate()
            self.metrics.retrain_gate_errors.labels(tf)
        self.retrainer = RetrainManager(
            registry=str(self.registry.root), symbol=cfg.general.symbols[0], timeframes=list(cfg.general.timeframes),
            store=str(cfg.path(cfg.store.path)), rest_url=self.rest_url, history_days=r.history_days, nice=r.nice,
            threads=r.threads, timeout_s=r.timeout_minutes * 60, min_bars=r.min_store_bars,
            min_improvement=r.min_improvement_usd,
            spec_overrides={"xgb_rounds": r.xgb_rounds, "lstm_epochs": r.lstm_epochs, "lstm_hidden": r.lstm_hidden,
                            "cost": 2 * cfg.broker.taker_fee + 0.0001})

    async def _retrain_scheduler(self) -> None:
        period = self.cfg.retrain.interval_minutes * 60
        while True:
            await asyncio.sleep(period)
            await self.retrain_now("schedule")

    async def retrain_now(self, trigger: str) -> dict:
        """One cycle: child process trains and gates; then changed versions are loaded and warmed in a worker
        thread and swapped in on the loop. A failure is reported (metrics, log, /status) and trading goes on."""
        assert self.retrainer is not None
        outcome = await self.retrainer.run_once()
        self.metrics.retrain_runs.labels("ok" if outcome.ok else "failed").inc()
        self.metrics.retrain_duration.observe(outcome.seconds)
        for tf, res in (outcome.results or {}).items():  # the gate could not judge: nothing was promoted
            if res.get("gate_error"):
                self.retrain_gate_errors += 1
                self.metrics.retrain_gate_errors.labels(tf).inc()
                log.error("retrain_gate_error", timeframe=tf, error=res["gate_error"])
        report: dict = {"trigger": trigger, "ok": outcome.ok, "seconds": round(outcome.seconds, 2),
                        "error": outcome.error[-500:] if outcome.error else None, "results": outcome.results,
                        "priority": outcome.priority, "swapped": {}, "finished_ns": None}
        if outcome.ok:
            try:
                report["swapped"], report["swap_loop_lag_max_ms"] = await self._swap_changed_engines()
                if report["swapped"]:
                    self.metrics.set_models({tf: es.info() for tf, es in self.engine_sets.items()})
            except Exception as e:  # noqa: BLE001 - a model that fails to load is refused; old engines stay
                report["ok"] = False
                report["error"] = f"swap refused: {type(e).__name__}: {e}"
                log.error("retrain_swap_refused", error=report["error"])
        report["finished_ns"] = time.time_ns()
        self.last_retrain = report
        log.info("retrain_cycle", **{k: v for k, v in report.items() if k != "results"})
        return report

    async def _swap_changed_engines(self) -> tuple[dict, float]:
        from daemon.engineset import EngineSet
        changed = {}
        for tf, es in self.engine_sets.items():
            info = es.info()
            for kind, i in info.items():
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
                new = await loop.run_in_executor(None, lambda tf=tf: EngineSet.load(
                    self.registry, tf, self.cfg.engines, metrics=self.metrics))
                self.engine_sets[tf].swap(new)  # on the loop: a reference swap between two events
                swapped[tf] = {k: v["version"] for k, v in self.engine_sets[tf].info().items()}
        finally:
            stop.set()
            await probe_task
        return swapped, round(max(lags, default=0.0) * 1e3, 3)


def _first_run_child(registry_root: str, k, specs: list[dict], level: str, fmt: str, conn) -> None:
    """Child process: train and publish each missing timeframe (progress lines like the daemon's); sends
    ``("ok", pid)`` or ``("error", message)``."""
    from daemon.logs import configure
    configure(level, fmt=fmt)
    try:
        from engines.registry import ModelRegistry
        from engines.train import TrainSpec, train_and_publish
        registry = ModelRegistry(registry_root)
        for kw in specs:
            t0 = time.perf_counter()
            outcome, refs = train_and_publish(k, TrainSpec(**kw), registry, make_current=True, progress=say)
            say(f"first run: {kw['timeframe']} done in {time.perf_counter() - t0:.1f} s "
                f"(versions {', '.join(f'{n}={r.version}' for n, r in refs.items())}; pid {os.getpid()})")
    except Exception as e:  # noqa: BLE001 - reported to the daemon, which exits 3 with it
        conn.send(("error", f"{type(e).__name__}: {e}"))
    else:
        conn.send(("ok", os.getpid()))
    finally:
        conn.close()


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
