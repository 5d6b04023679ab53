"""The daemon's builder: from the config to one :class:`Components` bundle (store, venue link, broker, models,
optimizer, risk, feed and pipeline), in the start-up order of daemon.app's docstring.

Each ``open_*``/``build_*``/``wire_*`` function constructs one part from the config and what it needs; :func:`build` calls
them in order. What it opens is pushed on the app's :class:`Resources` AS IT OPENS it, so a start-up that fails
half-way (or a signal during it) still closes exactly what exists. The bundle is built once, complete, and never
changes afterwards (an engine set's hot swap happens inside its EngineSet). Lifecycle, tasks and signals stay in
daemon.app; this module starts no task of its own (``spawn_broker`` is the app's).
"""
from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

if TYPE_CHECKING:
    from daemon.binance.feed import BinanceFeed
    from daemon.engineset import EngineSet
    from daemon.metrics import Metrics
    from daemon.pipeline import TradingPipeline
    from daemon.recording import Recorder
    from daemon.store import SQLiteStore
    from daemon.storewriter import BarsAfterEvent, StoreWriter
    from daemon.venue.server import LocalVenue
    from engines.registry import ModelRegistry
    from market.filters import SymbolFilters
    from strategies.optimizer import DollarProfitOptimizer
    from strategies.risk import RiskManager

log = structlog.get_logger(__name__)

PLAN_PREFIX = "exit_plan."  # store kv keys of the optimizer's exit plans
WRITER_CLOSE_S = 7.5  # how long closing waits for the store writer to commit what is queued


class StartupError(Exception):
    """Start-up cannot complete; the message says what a human must fix (exit 3)."""


class NotClean(Exception):
    """A close that lost something (e.g. queued store writes): shutdown is not clean (exit 1)."""


# ------------------------------------------------------------------------------------------------ resources
class Resources:
    """What start-up opened, closed in reverse order at shutdown (safe at any start-up stage)."""

    def __init__(self) -> None:
        self._closers: list[tuple[str, Callable[[], Any]]] = []

    def push(self, name: str, close: Callable[[], Awaitable[None] | None]) -> None:
        self._closers.append((name, close))

    @property
    def names(self) -> list[str]:
        return [n for n, _ in self._closers]

    async def aclose(self) -> bool:
        """Close everything, last opened first; False when a close lost something (:class:`NotClean`). A close
        that fails otherwise is logged (``<name>_close_failed``) and the rest still close."""
        clean = True
        while self._closers:
            name, close = self._closers.pop()
            try:
                r = close()
                if inspect.isawaitable(r):
                    await r
            except NotClean as e:
                log.error(f"{name.replace('-', '_')}_not_clean", error=str(e))
                clean = False
            except Exception as e:  # noqa: BLE001 - the rest must still close
                log.warning(f"{name.replace('-', '_')}_close_failed", error=str(e))
        return clean


# ------------------------------------------------------------------------------------------------ the bundle
@dataclass(frozen=True)
class VenueLink:
    """Where the venue is: the in-process local venue (simulate/replay; None for remote) and its URLs."""

    venue: LocalVenue | None
    ws_url: str
    rest_url: str

    def now_ns(self) -> int:
        """The market's time: the embedded simulator's (``simulator.speed`` times the wall clock), else wall."""
        source = getattr(self.venue, "source", None)
        now = getattr(source, "now_ns", None)
        return now() if now is not None else time.time_ns()


@dataclass(frozen=True)
class Components:
    """Everything the running daemon is made of, built once by :func:`build`."""

    store: SQLiteStore
    writer: StoreWriter
    link: VenueLink
    filters: dict[str, SymbolFilters]
    broker: Any  # daemon.broker.PaperBroker | daemon.binance.testnet.TestnetBroker
    registry: ModelRegistry
    engine_sets: dict[str, EngineSet]
    feed: BinanceFeed
    pipeline: TradingPipeline
    recorder: FrameRecorder | None
    history: dict | None  # first-run klines by symbol (reused for priming), None when models existed

    @property
    def optimizer(self) -> DollarProfitOptimizer:
        return self.pipeline.optimizer

    @property
    def risk(self) -> RiskManager:
        return self.pipeline.risk


# ------------------------------------------------------------------------------------------------ the parts
def open_store(cfg: Any, metrics: Metrics, on_writer_error: Callable[[BaseException], None],
               resources: Resources, env: Mapping[str, str] | None = None) -> tuple[SQLiteStore, StoreWriter]:
    """The read connection (the loop's) and the writer thread that commits everything, in order. SQLite file, or
    PostgreSQL when ``store.url`` is set (password: systemd credential or ``store.password_env``, daemon.secrets);
    an unreachable server is a start-up error naming the URL without its password (exit 3)."""
    import os

    from daemon import secrets
    from daemon.store import StoreError
    from daemon.stores import open_store as open_any
    from daemon.storewriter import StoreWriter
    sc = cfg.store
    path = cfg.path(sc.path)
    if not sc.url:
        path.parent.mkdir(parents=True, exist_ok=True)
    password = secrets.read_secret(os.environ if env is None else env, secrets.DB_PASSWORD, sc.password_env)

    def connect(writer: bool = False) -> SQLiteStore:  # the writer's PostgreSQL session owns the account
        return open_any(sc.url, path, quote_asset=cfg.broker.quote_asset, busy_timeout_ms=sc.busy_timeout_ms,
                        password=password, account=sc.account, connect_timeout_s=sc.connect_timeout_s,
                        exclusive=writer)
    try:
        store = connect()
        resources.push("store", store.close)
        writer = StoreWriter(lambda: connect(True), max_queue=sc.writer_queue, on_error=on_writer_error,
                             observe_lag=metrics.store_commit_lag.observe, retry_backoff_s=(0.05, sc.retry_max_s))
    except StoreError as e:
        raise StartupError(str(e)) from None
    except ImportError as e:  # store.url set without the [postgres] extra
        raise StartupError(f"store.url: PostgreSQL needs psycopg (pip install '.[postgres]'): {e}") from None

    async def close_writer() -> None:  # everything the daemon did becomes durable before exit
        ok = await asyncio.get_running_loop().run_in_executor(None, writer.close, WRITER_CLOSE_S)
        log.info("store_writer_closed", flushed=ok, **{k: v for k, v in writer.snapshot().items() if k != "lag"})
        if not ok:  # writes may be lost: not a clean stop
            raise NotClean(f"store writer not flushed: {writer.pending} pending")
    resources.push("store-writer", close_writer)
    return store, writer


async def start_venue(cfg: Any, resources: Resources) -> VenueLink:
    """``remote``: the configured URLs; ``simulate``/``replay``: the local Binance-format venue on loopback."""
    mode = cfg.venue.mode
    if mode == "remote":
        return VenueLink(None, cfg.venue.ws_url.rstrip("/"), cfg.venue.rest_url.rstrip("/"))
    from daemon.venue.server import LocalVenue, SimulatorSource
    loop = asyncio.get_running_loop()
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
                history = await loop.run_in_executor(None, load_klines_csv, cfg.venue.history)
            except (KlinesError, OSError, ValueError) as e:
                raise StartupError(f"venue.history: {e}") from None
        try:
            source = await loop.run_in_executor(
                None, lambda: ReplaySource(cfg.venue.recording, cfg.venue.speed, cfg.simulator, history,
                                           simulated_history=cfg.venue.history == "simulated"))
        except (FileNotFoundError, OSError) as e:
            raise StartupError(f"venue.recording: {e}") from None
        missing = [s for s in cfg.general.symbols if s not in source.symbols]
        if missing:
            raise StartupError(f"general.symbols: {missing} not in the recording (it has {source.symbols})")
        start_on = cfg.venue.start_on
    venue = LocalVenue(source, cfg.faults, cfg.venue.host, cfg.venue.port, start_on=start_on,
                       max_streams=cfg.venue.max_streams)
    resources.push("venue", venue.stop)
    await venue.start()
    return VenueLink(venue, venue.ws_url, venue.rest_url)


async def fetch_filters(rest_url: str, symbols: tuple[str, ...] | list[str]) -> dict[str, SymbolFilters]:
    """The configured symbols' trading filters from the venue's exchangeInfo."""
    import aiohttp

    from daemon.binance.codec import DecodeError, parse_exchange_info
    url = f"{rest_url}/api/v3/exchangeInfo"
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
    missing = [s for s in symbols if s not in filters]
    if missing:
        raise StartupError(f"general.symbols: {missing} unknown to the venue ({url})")
    return {s: filters[s] for s in symbols}


def open_broker(cfg: Any, env: dict[str, str], store: SQLiteStore, writer: StoreWriter, link: VenueLink,
                filters: dict[str, SymbolFilters]) -> Any:
    """broker.kind = paper: PaperBroker (recovers its account from the store's fills). broker.kind = testnet
    (daemon.binance.testnet): signed orders to venue.rest_url (remote) or to the local venue's order API
    (simulate; the daemon's credentials are registered there, fees = broker.*_fee). Credentials: systemd
    credentials tradingd-api-key / tradingd-api-secret, else the environment variables venue.api_key_env /
    venue.api_secret_env (daemon.secrets). A testnet broker's session, clock sync, credential check and restart
    reconciliation run in its ``run()`` (the app supervises it); sends wait for it."""
    if cfg.broker.kind != "testnet":
        from daemon.broker import PaperBroker
        broker: Any = PaperBroker(cfg.broker, store, symbols=tuple(cfg.general.symbols), filters=filters,
                                  writer=writer)
    else:
        from daemon.binance.rest import BinanceRestClient
        from daemon.binance.testnet import TestnetBroker
        if cfg.venue.mode == "replay":
            raise StartupError("broker.kind = testnet needs venue.mode simulate or remote: a replayed recording "
                               "has no order API")
        from daemon import secrets
        key = secrets.read_secret(env, secrets.API_KEY, cfg.venue.api_key_env)
        secret = secrets.read_secret(env, secrets.API_SECRET, cfg.venue.api_secret_env)
        missing = [n for n, v in ((cfg.venue.api_key_env, key), (cfg.venue.api_secret_env, secret)) if not v]
        if missing:
            raise StartupError(f"broker.kind = testnet: API credentials missing: set the environment variable(s) "
                               f"{', '.join(missing)} (named by venue.api_key_env / venue.api_secret_env) or the "
                               f"systemd credentials {secrets.API_KEY} / {secrets.API_SECRET}")
        if cfg.venue.mode == "simulate" and link.venue is not None:
            orders = link.venue.orders
            quote = cfg.broker.quote_asset
            orders.add_key(key, secret, balances={quote: cfg.broker.starting_cash,
                                                  **{s[: -len(quote)]: 10.0 for s in cfg.general.symbols
                                                     if s.endswith(quote)}})
            orders.set_fees(cfg.broker.maker_fee, cfg.broker.taker_fee)
            orders.fill_at_touch = cfg.broker.fill_at_touch
        client = BinanceRestClient(link.rest_url, key, secret)
        broker = TestnetBroker(cfg.broker, store, client, symbols=tuple(cfg.general.symbols), filters=filters,
                               writer=writer)
    if broker.recovery_discrepancies:
        log.warning("recovery_discrepancies", items=broker.recovery_discrepancies[:20])
    return broker


async def broker_ready(broker: Any, stopped: asyncio.Event) -> bool:
    """Wait until a venue broker (testnet) has reconciled with the venue, or until a stop; True when ready (a
    paper broker is ready at once)."""
    wait_ready = getattr(broker, "wait_ready", None)
    if wait_ready is None or broker.is_ready:
        return True
    waiters = {asyncio.ensure_future(wait_ready()), asyncio.ensure_future(stopped.wait())}
    await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    for t in waiters:
        t.cancel()
    return bool(broker.is_ready)


def open_registry(cfg: Any) -> ModelRegistry:
    from engines.registry import ModelRegistry
    registry = ModelRegistry(cfg.path(cfg.engines.registry))
    registry.remove_stale_temp()
    return registry


def load_engines(cfg: Any, registry: ModelRegistry, metrics: Metrics) -> dict[str, EngineSet]:
    """Every timeframe's engines, loaded (schema-checked), backends chosen and warmed (blocking: run it in a
    worker thread)."""
    from daemon.engineset import EngineSet, ModelLoadError
    if cfg.model_family == "universe":  # the pooled models of `tradingd train --data` (daemon/universe_engine.py)
        from daemon.universe_engine import load_universe_sets
        try:
            return load_universe_sets(registry, cfg.general.timeframes, cfg.general.symbols, metrics=metrics)
        except ModelLoadError as e:
            raise StartupError(f"model refused: {e} (universe models come from `tradingd train --data DIR "
                               f"--registry {registry.root}`)") from None
    out = {}
    for tf in cfg.general.timeframes:
        try:
            out[tf] = EngineSet.load(registry, tf, cfg.engines, metrics=metrics)
        except ModelLoadError as e:
            raise StartupError(f"model refused: {e}") from None
    return out


class FrameRecorder:
    """The feed's ``on_raw`` hook: frames (recv_ns, raw) and REST snapshots (recv_ns, raw, symbol) to the
    recorder. A full disk must not stop trading: failures are counted (``errors``) and logged."""

    def __init__(self, recorder: Recorder) -> None:
        self.recorder = recorder
        self.errors = 0

    def __call__(self, recv_ns: int, raw: Any, symbol: str | None = None) -> None:
        try:
            if symbol is None:
                self.recorder.write(recv_ns, raw)
            else:
                self.recorder.write_snapshot(recv_ns, symbol, raw)
        except Exception as e:  # noqa: BLE001 - counted and logged
            self.errors += 1
            if self.errors in (1, 10, 100) or self.errors % 1000 == 0:
                log.error("record_failed", error=str(e), errors=self.errors)

    @property
    def files(self) -> list:
        return self.recorder.files

    def close(self) -> None:
        self.recorder.close()


def open_recorder(cfg: Any, resources: Resources) -> FrameRecorder | None:
    """recorder.enabled: every raw frame and REST snapshot, replayable by ``tradingd venue --recording``."""
    if not cfg.recorder.enabled:
        return None
    from daemon.recording import Recorder
    rec = FrameRecorder(Recorder(cfg.path(cfg.recorder.dir), prefix=cfg.venue.mode,
                                 rotate_bytes=int(cfg.recorder.rotate_mb * 1e6),
                                 rotate_seconds=cfg.recorder.rotate_minutes * 60))
    resources.push("recorder", rec.close)
    return rec


def wire_market_data(cfg: Any, link: VenueLink, filters: dict[str, SymbolFilters], recorder: FrameRecorder | None,
                     make_pipeline: Callable[[Mapping[str, Any]], TradingPipeline],
                     on_fatal: Callable[[str, BaseException], None]) -> tuple[BinanceFeed, TradingPipeline]:
    """The market-data wiring, all of it here: the websocket feed (its sans-I/O protocol owns the books), the
    pipeline reading them through the protocol's read-only view (``make_pipeline(books)``), and the feed's events going INLINE to the pipeline, one hop, never through
    the app (:func:`guard_events`)."""
    from daemon.binance.feed import BinanceFeed
    # event times are checked against the receive clock scaled by the venue's pace (replay/simulator speed)
    speed = cfg.venue.speed if cfg.venue.mode == "replay" else getattr(cfg.simulator, "speed", 1.0)
    feed = BinanceFeed(cfg.general.symbols, link.ws_url, link.rest_url, cfg.feed, on_raw=recorder,
                       filters=filters, speed=speed if cfg.venue.mode != "remote" else 1.0)
    pipeline = make_pipeline(feed.protocol.books)  # the protocol owns the books: a read-only view
    feed.on_event = guard_events(pipeline.on_event, on_fatal, feed.stop)
    return feed, pipeline


def guard_events(on_event: Callable[[Any], Any], on_fatal: Callable[[str, BaseException], None],
                 stop_feed: Callable[[], None]) -> Callable[[Any], None]:
    """The feed's callback: each event goes INLINE to ``on_event`` (the pipeline), so every decision sees the book
    right after the event that closed the bar. An exception from it is fatal: logged with its traceback,
    ``on_fatal("pipeline", exc)``, and the feed stops (no more events into a broken pipeline)."""
    def deliver(ev: Any) -> None:
        try:
            on_event(ev)
        except Exception as e:  # noqa: BLE001
            log.exception("pipeline_failed", event_type=type(ev).__name__)
            on_fatal("pipeline", e)
            stop_feed()
    return deliver


def record_model_versions(writer: StoreWriter, engine_sets: dict[str, EngineSet]) -> None:
    """What we trade with, in the store."""
    from engines.features import FEATURE_SCHEMA
    for tf, es in engine_sets.items():
        for kind, info in es.info().items():
            writer.submit(lambda st, tf=tf, kind=kind, info=info, ts=time.time_ns(): st.record_model_version(
                info["version"], f"{tf}/{kind}", info["path"], info.get("schema_hash", FEATURE_SCHEMA.hash), ts,
                active=True),
                kind="model_version")


def plan_sink(writer: StoreWriter) -> Callable[[str, dict | None], None]:
    """The optimizer's exit plan changed: stored (in order, after the fills that changed it) for restarts."""
    import orjson

    from daemon.store import kv_statement

    def sink(symbol: str, plan: dict | None) -> None:
        stmt = kv_statement(PLAN_PREFIX + symbol, orjson.dumps(plan).decode() if plan is not None else None)
        writer.write_statements([stmt], kind="exit_plan")
    return sink


def bar_sink(writer: StoreWriter, resources: Resources) -> BarsAfterEvent:
    """Closed bars go to the writer thread after the current decision (never blocks; dropped and counted if its
    queue is full); what is buffered at shutdown is flushed before the writer closes."""
    from daemon.storewriter import BarsAfterEvent
    sink = BarsAfterEvent(writer)
    resources.push("bars", sink.flush)
    return sink


def build_pipeline(cfg: Any, metrics: Metrics, store: SQLiteStore, writer: StoreWriter, broker: Any,
                   filters: dict[str, SymbolFilters], engine_sets: dict[str, EngineSet], books: Mapping[str, Any],
                   resources: Resources) -> TradingPipeline:
    """Optimizer, risk and the pipeline over them; exit plans of positions open at the last stop are restored
    (managed on their own timeframe and levels again) and fills made while we were down reach the optimizer."""
    from daemon.pipeline import TradingPipeline
    from strategies.optimizer import DollarProfitOptimizer
    from strategies.risk import RiskManager
    optimizer = DollarProfitOptimizer(cfg.optimizer, cfg.risk, filters=filters, fee_rate=cfg.broker.taker_fee,
                                      timeframes=cfg.general.timeframes,
                                      starting_equity=broker.portfolio.starting_cash)
    risk = RiskManager(cfg.risk, filters)
    risk.add_gate(lambda: "" if writer.available else "store_unavailable")  # nothing new that cannot persist
    pipeline = TradingPipeline(cfg, cfg.general.symbols, engine_sets, optimizer, risk, broker, store=store,
                               metrics=metrics, books=books, keep=2000, bar_sink=bar_sink(writer, resources),
                               plan_sink=plan_sink(writer))
    import orjson
    try:
        plans = [orjson.loads(v) for v in store.kv_items(PLAN_PREFIX).values()]
    except Exception as e:  # noqa: BLE001 - unreadable: adoption at the next bar instead
        log.error("exit_plans_unreadable", error=str(e))
        plans = []
    if plans or any(p.qty for p in broker.portfolio.positions.values()):
        n = optimizer.restore_exit_plans(plans, pipeline.account())
        log.info("exit_plans", stored=len(plans), restored=n)
    for ex in getattr(broker, "recovered", ()):  # fills made while we were down reach the optimizer
        pipeline.on_execution(ex)
    return pipeline


# ------------------------------------------------------------------------------------------------ build
async def build(cfg: Any, env: dict[str, str], metrics: Metrics, resources: Resources, *,
                status: Callable[[str], None], timings: dict[str, float],
                on_writer_error: Callable[[BaseException], None],
                on_fatal: Callable[[str, BaseException], None],
                spawn_broker: Callable[[Any], None], stopped: asyncio.Event) -> Components:
    """Start-up steps 2-6 of daemon.app's docstring, up to (not including) priming and starting the feed."""
    from daemon.firstrun import FirstRunError, ensure_models
    Path(cfg.general.data_dir).mkdir(parents=True, exist_ok=True)
    if cfg.retrain.enabled and cfg.cluster.executor != "local":
        from research.executor import ClusterUnreachable, check_reachable
        try:
            check_reachable(cfg.cluster.address)
        except ClusterUnreachable as e:
            raise StartupError(f"cluster: {e}") from None
    status("opening store")
    store, writer = open_store(cfg, metrics, on_writer_error, resources, env)
    status("starting venue")
    link = await start_venue(cfg, resources)
    filters = await fetch_filters(link.rest_url, tuple(cfg.general.symbols))
    broker = open_broker(cfg, env, store, writer, link, filters)
    spawn_broker(broker)
    status("loading models")
    registry = open_registry(cfg)
    try:
        history = await ensure_models(cfg, registry, link.rest_url, timings, status)
    except FirstRunError as e:
        raise StartupError(str(e)) from None
    t0 = time.perf_counter()
    engine_sets = await asyncio.get_running_loop().run_in_executor(None, load_engines, cfg, registry, metrics)
    timings["engines_load_s"] = time.perf_counter() - t0
    if getattr(broker, "wait_ready", None) is not None and not broker.is_ready:
        status("broker: reconciling with the venue")
        if not await broker_ready(broker, stopped):
            raise StartupError("broker: stopped before it was ready (see the log)")
    record_model_versions(writer, engine_sets)
    metrics.set_models({tf: es.info() for tf, es in engine_sets.items()})
    recorder = open_recorder(cfg, resources)
    feed, pipeline = wire_market_data(
        cfg, link, filters, recorder, on_fatal=on_fatal,
        make_pipeline=lambda books: build_pipeline(cfg, metrics, store, writer, broker, filters, engine_sets,
                                                   books, resources))
    return Components(store=store, writer=writer, link=link, filters=filters, broker=broker, registry=registry,
                      engine_sets=engine_sets, feed=feed, pipeline=pipeline, recorder=recorder, history=history)


async def prime(cfg: Any, parts: Components) -> None:
    """The pipeline's feature state from recent klines history (predictions start at the first live bar, not after
    48 bars); those 1m bars (and the first run's training history) also go to the store for the retrainer."""
    from daemon.binance.rest import fetch_klines_rest
    from daemon.pipeline import history_bars_needed
    from engines.data import klines_to_bars
    seq = max((es.seq_len for es in parts.engine_sets.values()), default=0)
    need_min = history_bars_needed(cfg.general.timeframes, seq)
    for sym, k in (parts.history or {}).items():
        parts.writer.write_bars(klines_to_bars(k))
    for sym in cfg.general.symbols:
        # always a fresh fetch: training may have taken minutes, and a gap would be filled with flat bars
        try:
            k = await fetch_klines_rest(parts.link.rest_url, sym, days=need_min / 1440 + 0.01)
        except Exception as e:  # noqa: BLE001 - no history: predictions start after warm-up
            log.warning("prime_history_unavailable", symbol=sym, error=str(e)[:200])
            continue
        if len(k) == 0:
            log.warning("prime_history_empty", symbol=sym)
            continue
        bars = klines_to_bars(k)
        parts.writer.write_bars(bars)
        rows = parts.pipeline.prime(sym, bars[-need_min:])
        log.info("primed", symbol=sym, bars=min(len(bars), need_min), rows=rows)
    parts.pipeline.finish_priming()
