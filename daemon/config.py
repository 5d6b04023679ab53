"""The one typed, frozen config tree, loaded once from ``config.toml``.

Each section is a frozen dataclass; :mod:`market.cfgbase` checks keys, types and ranges. Secrets never live
here: API keys and the control token are read from the environment (or systemd credentials) by name.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from market.bars import BarsConfig
from market.cfgbase import ConfigError, build_section, load_toml, opt
from market.events import TIMEFRAME_SECONDS
from strategies.optimizer import OptimizerConfig
from strategies.risk import RiskConfig

MIN_UNIVERSE = 3  # cross-sectional ranks and z-scores over fewer symbols carry no information

if TYPE_CHECKING:
    from engines.drift import DriftParams

__all__ = ["Config", "ConfigError", "load_config", "config_from_dict"]


@dataclass(frozen=True)
class GeneralConfig:
    symbols: tuple[str, ...] = opt(("BTCUSDT", "ETHUSDT", "SOLUSDT", "BNBUSDT", "XRPUSDT"),
                                   "Symbols to trade, venue spelling (upper case). The embedded default is a small "
                                   "universe of the simulated market (engines.family auto: pooled universe models).")
    timeframes: tuple[str, ...] = opt(("1m", "5m", "15m", "1h"), "Bar timeframes built and traded.",
                                      choices=tuple(TIMEFRAME_SECONDS))
    data_dir: str = opt("var", "Root for the store, recordings and models when their paths are relative.")

    def validate(self) -> None:
        if not self.symbols:
            raise ValueError("symbols: at least one symbol is required")
        if not self.timeframes:
            raise ValueError("timeframes: at least one timeframe is required")
        for s in self.symbols:
            if not s.isalnum() or s.upper() != s:
                raise ValueError(f"symbols: {s!r} must be upper-case alphanumeric, e.g. BTCUSDT")


@dataclass(frozen=True)
class VenueConfig:
    mode: str = opt("simulate", "simulate: start the local venue's market simulator on loopback; replay: start "
                    "the local venue replaying `recording`; remote: connect to ws_url/rest_url.",
                    choices=("simulate", "replay", "remote"))
    ws_url: str = opt("wss://stream.binance.com:9443", "Websocket base URL (remote mode). Testnet: "
                      "wss://stream.testnet.binance.vision")
    rest_url: str = opt("https://api.binance.com", "REST base URL (remote mode). Testnet: "
                        "https://testnet.binance.vision")
    host: str = opt("127.0.0.1", "Local venue bind address (simulate/replay).")
    port: int = opt(0, "Local venue port; 0 picks a free port.", ge=0, le=65535)
    recording: str = opt("", "Recording to replay (replay mode): a file or directory of .gz frame files.")
    speed: float = opt(1.0, "Replay speed factor (replay mode); 0 = as fast as possible.", ge=0.0, le=10000.0)
    history: str = opt("", "Replay mode: 1m klines CSV the venue serves BEFORE the recording (moved in time to end "
                       "where it starts, scaled to its first trade price), so features and models are warm at the "
                       "first replayed bar. 'simulated': the simulator's history_days instead (synthetic). Empty: "
                       "only the recording's own bars (predictions start after warm-up).")
    max_streams: int = opt(1024, "Local venue (simulate/replay): most streams one websocket connection may carry "
                           "(Binance: 1024), by SUBSCRIBE or in the URL; a /stream?streams= or /ws/... URL naming "
                           "more is refused with HTTP 400 before the handshake.", ge=1, le=1_000_000)
    start_on: str = opt("snapshot", "When the replay starts: immediately, at the first subscriber, or when the "
                        "first subscriber has also fetched its depth snapshot (replays the whole recording to a "
                        "synced book). The replay pauses while no client is subscribed.",
                        choices=("immediate", "subscriber", "snapshot"))
    api_key_env: str = opt("TRADINGD_API_KEY", "Environment variable holding the venue API key (never the key).")
    api_secret_env: str = opt("TRADINGD_API_SECRET", "Environment variable holding the venue API secret.")


@dataclass(frozen=True)
class FaultConfig:
    drop_prob: float = opt(0.0, "Probability that the local venue drops a depth frame (creates a gap).", ge=0, le=1)
    dup_prob: float = opt(0.0, "Probability that a frame is sent twice.", ge=0, le=1)
    garbage_prob: float = opt(0.0, "Probability that a garbage (non-JSON) frame is sent.", ge=0, le=1)
    stall_every_s: float = opt(0.0, "Every this many seconds the stream stalls (0 = never).", ge=0, le=86400)
    stall_s: float = opt(0.0, "Length of a stall in seconds.", ge=0, le=3600)
    close_every_s: float = opt(0.0, "Every this many seconds the venue closes the socket abruptly (0 = never).",
                               ge=0, le=86400)
    close_after_frames: int = opt(0, "Close each connection abruptly after it was sent this many frames "
                                  "(0 = never); deterministic, for tests.", ge=0, le=1_000_000_000)
    forge_prob: float = opt(0.0, "Probability that a trade or depth frame comes with a forged one (absurd size, "
                            "far-future/negative/huge time, a repeated trade id: see venue/faults.py).", ge=0, le=1)
    stale_snapshot_prob: float = opt(0.0, "Probability that a REST depth snapshot carries the current update id "
                                     "with the levels of the first snapshot served (a stale cache).", ge=0, le=1)
    seed: int = opt(1, "Seed of the fault injector's random stream.", ge=0, le=2**32 - 1)


@dataclass(frozen=True)
class SimulatorConfig:
    seed: int = opt(13, "Seed of the market simulator (same seed, same market). 13: the trend is up when the live "
                    "market opens (+0.7 %/h), so the long-only default has something to buy in its first minutes "
                    "(README).", ge=0, le=2**32 - 1)
    start_price: float = opt(60000.0, "Initial mid price.", gt=0, le=1e9)
    history_days: int = opt(30, "Days of 1m klines history served before the live stream starts.", ge=1, le=400)
    vol_low: float = opt(0.35, "Annualised volatility of the calm regime.", gt=0, le=10)
    vol_high: float = opt(0.7, "Annualised volatility of the turbulent regime.", gt=0, le=10)
    regime_switch_per_hour: float = opt(0.2, "Expected regime switches per hour.", ge=0, le=3600)
    trades_per_s: float = opt(8.0, "Mean trade arrival rate (Poisson).", gt=0, le=10000)
    depth_levels: int = opt(50, "Price levels on each side of the simulated book.", ge=5, le=5000)
    tick_size: float = opt(0.01, "Price tick (exchangeInfo PRICE_FILTER).", gt=0, le=1e6)
    lot_step: float = opt(0.00001, "Quantity step (exchangeInfo LOT_SIZE).", gt=0, le=1e6)
    min_notional: float = opt(5.0, "Minimum order notional (exchangeInfo NOTIONAL).", ge=0, le=1e9)
    depth_interval_ms: int = opt(100, "Depth diff cadence, as in <sym>@depth@100ms.", ge=10, le=1000)
    trend_per_hour: float = opt(0.005, "Persistent drift (trend): stationary std of an Ornstein-Uhlenbeck drift, "
                                "as log return per hour (0.005 = 0.5 %/h; 0 = pure random walk, nothing to "
                                "learn). Deliberately learnable: 1h returns get lag-1 autocorrelation ~0.3, far "
                                "more than real markets show on average, so models can clear 0.2 % round-trip "
                                "fees.", ge=0, le=0.1)
    trend_hours: float = opt(4.0, "Time constant of the trend drift in hours (how long a trend's sign "
                             "typically persists).", gt=0, le=1000)
    speed: float = opt(120.0, "Event time per wall-clock second: the simulated market runs this many times faster "
                       "than the wall clock (120: a 1m bar closes every 0.5 s, a 1h bar every 30 s, so a newcomer "
                       "sees decisions, orders and fills within minutes); 1 = real time. The market itself (per "
                       "event second) is unchanged, so the history stays consistent; bars, features, the optimizer "
                       "and risk run on event time. Read by whoever scales wall-clock checks (bar clock, "
                       "plausibility).", gt=0, le=1000)
    correlation: float = opt(0.6, "Pairwise correlation of two symbols' returns (and trends) through one common "
                             "market factor: a symbol's moves are sqrt(correlation) x the factor's plus the rest "
                             "its own (0 = independent symbols). A universe entry's loading overrides it.",
                             ge=0, le=1)
    universe: tuple[str, ...] = opt(
        ("ETHUSDT=3000:1.2", "BNBUSDT=550:1.1", "SOLUSDT=150:1.6", "XRPUSDT=0.55:1.4", "ADAUSDT=0.45:1.5",
         "DOGEUSDT=0.12:1.8", "AVAXUSDT=30:1.7", "LINKUSDT=14:1.6", "LTCUSDT=70:1.3", "DOTUSDT=6:1.5"),
        "Per-symbol market, 'SYMBOL=start_price[:vol_mult[:loading]]': the start price, a multiple of vol_low/"
        "vol_high and of the trend, and the correlation with the market factor (default sqrt(correlation)). Tick "
        "and lot step follow the price (the configured ones at start_price, shifted by its power of ten). A "
        "symbol not listed starts at start_price with vol_mult 1.")

    def universe_params(self) -> dict[str, tuple[float, float, float]]:
        """``universe`` parsed: symbol -> (start_price, vol_mult, loading); a bad entry raises ValueError."""
        out: dict[str, tuple[float, float, float]] = {}
        for item in self.universe:
            sym, sep, rest = item.partition("=")
            parts = rest.split(":")
            if not sep or not sym.isalnum() or sym != sym.upper() or not 1 <= len(parts) <= 3:
                raise ValueError(f"universe: {item!r} must look like 'ETHUSDT=3000:1.2:0.8'")
            try:
                vals = [float(v) for v in parts]
            except ValueError:
                raise ValueError(f"universe: {item!r}: not a number") from None
            price, vm, load = (vals + [1.0, math.sqrt(self.correlation)][len(vals) - 1:])[:3]
            if not (0 < price <= 1e9 and 0 < vm <= 100 and 0 <= load <= 1):
                raise ValueError(f"universe: {item!r}: need 0 < price <= 1e9, 0 < vol_mult <= 100, "
                                 "0 <= loading <= 1")
            if sym in out:
                raise ValueError(f"universe: {sym} given twice")
            out[sym] = (price, vm, load)
        return out

    def validate(self) -> None:
        self.universe_params()


@dataclass(frozen=True)
class FeedConfig:
    stale_after_s: float = opt(10.0, "A stream silent this long counts as dead: reconnect and mark books stale.",
                                 gt=0, le=3600)
    reconnect_initial_s: float = opt(0.5, "First reconnect delay; doubles each failure, with jitter.", gt=0, le=3600)
    reconnect_max_s: float = opt(30.0, "Cap of the reconnect delay.", gt=0, le=86400)
    snapshot_limit: int = opt(1000, "Levels asked for in the REST depth snapshot.",
                              choices=(5, 10, 20, 50, 100, 500, 1000, 5000))
    max_buffered_updates: int = opt(20000, "Diffs buffered while waiting for a snapshot before giving up.",
                                    ge=10, le=10_000_000)
    queue_size: int = opt(10000, "Bound of the decoded-event queue between the socket and the cores.",
                          ge=10, le=10_000_000)
    max_event_ahead_s: float = opt(5.0, "An event stamped this far ahead of its stream's clock (event time vs "
                                   "receive time) is refused as implausible (counted).", gt=0, le=86400)
    max_event_behind_s: float = opt(60.0, "An event stamped this far before its stream's newest event is refused.",
                                    gt=0, le=86400)
    jump_confirm_events: int = opt(3, "This many consecutive implausible events that agree with each other are "
                                   "the venue's clock really jumping: accepted, and handled as a gap.", ge=2, le=1000)
    max_notional: float = opt(1e9, "A trade, book level or ticker worth more than this (quote) is refused.", gt=0, le=1e15)
    trade_dedup_window: int = opt(8192, "Trades are de-duplicated by id over this many recent ids per symbol.",
                                  ge=16, le=10_000_000)
    book_oracle: bool = opt(True, "Subscribe to bookTicker and check the book's best levels against it whenever "
                            "the update ids coincide; a mismatch marks the book stale and resyncs.")
    max_streams_per_connection: int = opt(1024, "Most streams one websocket connection carries (Binance spot and "
                                          "USD-M: 1024; options: 200). The symbols are split across as many "
                                          "connections as needed, all streams of a symbol on one (a lost "
                                          "connection resyncs only its symbols' books).", ge=1, le=1024)

    def validate(self) -> None:
        per_symbol = 3 if self.book_oracle else 2  # trade + depth (+ bookTicker)
        if self.max_streams_per_connection < per_symbol:
            raise ValueError(f"max_streams_per_connection: {self.max_streams_per_connection} is fewer than the "
                             f"{per_symbol} streams of one symbol (a symbol's streams share one connection)")


@dataclass(frozen=True)
class RecorderConfig:
    enabled: bool = opt(False, "Record every raw frame received (with its receive time) for replay.")
    dir: str = opt("recordings", "Recording directory (relative to general.data_dir).")
    rotate_mb: float = opt(64.0, "Start a new file after this many MB of uncompressed frames.", gt=0, le=1e6)
    rotate_minutes: float = opt(60.0, "Start a new file after this many minutes.", gt=0, le=10080)


@dataclass(frozen=True)
class EnginesConfig:
    registry: str = opt("models", "Model registry directory (relative to general.data_dir).")
    lstm_backend: str = opt("auto", "LSTM inference backend; auto takes the best available and reports it. "
                            "onnxruntime-cpu-int8 (opt-in) runs the INT8 graph made at training time; a version "
                            "without a good one falls back to fp32 (counted in tradingd_backend_fallbacks_total).",
                            choices=("auto", "tensorrt", "torch-cuda", "onnxruntime-cuda", "onnxruntime-cpu",
                                     "onnxruntime-cpu-int8"))
    xgb_backend: str = opt("auto", "XGBoost inference backend; auto takes the best available and reports it.",
                           choices=("auto", "native-cuda", "native-cpu", "compiled-cpu"))
    warmup_iters: int = opt(20, "Warm-up predictions run on each engine before it is marked ready.", ge=1, le=10_000)
    train_on_first_run: bool = opt(True, "Train the first models from venue klines if the registry is empty.")
    ort_threads: int = opt(1, "ONNX Runtime intra-op threads for the LSTM (1 = lowest batch-1 latency).",
                           ge=1, le=64)
    cuda_graph_batches: tuple[int, ...] = opt((1, 64), "Batch sizes captured as CUDA graphs at warm-up "
                                              "(torch-cuda LSTM backend); other sizes pad up or chunk.",
                                              choices=(1, 2, 4, 8, 16, 32, 64, 128, 256))
    tensorrt_fp16: bool = opt(True, "Build the TensorRT LSTM engine with fp16 kernels where the GPU has them.")
    tensorrt_max_batch: int = opt(256, "Largest batch in the TensorRT optimisation profile (bigger is chunked).",
                                  ge=1, le=65536)
    tensorrt_workspace_mb: int = opt(1024, "TensorRT builder workspace memory pool limit (MiB).", ge=16, le=262_144)
    first_run_history_days: float = opt(30.0, "First run (remote venue): days of 1m klines fetched to train on "
                                        "(simulate uses simulator.history_days).", gt=0, le=1000)
    first_run_xgb_rounds: int = opt(300, "First-run training: XGBoost boosting rounds (small: start-up speed).",
                                    ge=1, le=100000)
    first_run_lstm_epochs: int = opt(2, "First-run training: LSTM epochs.", ge=1, le=1000)
    first_run_lstm_hidden: int = opt(16, "First-run training: LSTM hidden units.", ge=1, le=4096)
    first_run_threads: int = opt(0, "First-run training threads (0 = the libraries' default).", ge=0, le=256)
    family: str = opt("auto", "Model family: per_symbol = the 13-feature P(up) XGBoost+LSTM per timeframe, trained on "
                      "general.symbols[0]; universe = the pooled cross-sectional models of `tradingd train --data "
                      "DIR` (expected return per symbol, >= 3 symbols), trained on every symbol; the first run and "
                      "the retrainer train either. auto = universe with >= 3 symbols (cross-sectional ranks need a "
                      "universe), else per_symbol.",
                      choices=("auto", "per_symbol", "universe"))


@dataclass(frozen=True)
class BrokerConfig:
    kind: str = opt("paper", "paper: fill against the live book; testnet: the venue's test order API.",
                    choices=("paper", "testnet"))
    starting_cash: float = opt(100000.0, "Paper account's starting quote balance.", gt=0, le=1e12)
    taker_fee: float = opt(0.001, "Taker fee rate (0.001 = 0.1 %).", ge=0, lt=0.1)
    maker_fee: float = opt(0.001, "Maker fee rate.", ge=0, lt=0.1)
    latency_ms: float = opt(0.0, "Simulated order latency before an order reaches the book.", ge=0, le=60_000)
    fill_at_touch: bool = opt(True, "Paper: a resting limit order fills on a trade printed AT its price (front of "
                              "the queue); false = only a trade through the price fills (back of the queue).")
    book_depth: int = opt(1000, "Paper: book levels per side a market order may walk.", ge=1, le=100_000)
    quote_asset: str = opt("USDT", "Quote currency of the account (the balances row the cash lives in).")
    drain_timeout_s: float = opt(10.0, "Shutdown waits up to this long for the outcome of orders in flight (sent "
                                 "to a venue, not yet answered: e.g. a flatten at SIGTERM) before exiting; what "
                                 "is still unknown then is reconciled at the next start.", ge=0, le=120)


@dataclass(frozen=True)
class StoreConfig:
    path: str = opt("tradingd.sqlite", "SQLite store (WAL mode), relative to general.data_dir.")
    busy_timeout_ms: int = opt(5000, "How long a store connection waits for another's write lock.", ge=0, le=600_000)
    writer_queue: int = opt(10000, "Writes waiting for the store's writer thread before bars are dropped "
                            "(counted) and executions wait for room.", ge=1, le=10_000_000)
    url: str = opt("", "Empty: the SQLite file `path` (embedded default). postgresql://USER@HOST:PORT/DB: a "
                   "PostgreSQL server (pip install '.[postgres]'); its password comes from systemd credential "
                   "tradingd-db-password or the variable `password_env`, never from this file.")
    account: str = opt("tradingd", "PostgreSQL: this daemon's schema in the database (its own tables; several "
                       "daemons share one database with one account each). Lower-case letters, digits, _.")
    password_env: str = opt("TRADINGD_DB_PASSWORD", "Environment variable holding the PostgreSQL password.")
    connect_timeout_s: float = opt(5.0, "PostgreSQL: connect timeout (start-up and reconnects).", gt=0, le=300)
    retry_max_s: float = opt(5.0, "PostgreSQL lost while running: the writer reconnects with exponential backoff "
                             "up to this interval (new orders are refused until it commits again).", gt=0, le=600)

    def validate(self) -> None:
        if not self.url:
            return
        from urllib.parse import parse_qsl, urlsplit
        if not self.url.startswith(("postgresql://", "postgres://")):
            raise ValueError("url: must start with postgresql:// (or be empty for the SQLite file)")
        parts = urlsplit(self.url)
        if parts.password is not None or "password" in dict(parse_qsl(parts.query)):
            raise ValueError("url: holds a password; put it in the environment variable named by password_env "
                             "(or the systemd credential tradingd-db-password), never in the config file")
        import re
        if not re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", self.account):
            raise ValueError(f"account: {self.account!r} must be lower-case letters, digits and _ (a PostgreSQL "
                             "schema name), not starting with a digit, at most 63")


@dataclass(frozen=True)
class HttpConfig:
    host: str = opt("127.0.0.1", "Bind address of /metrics, /healthz, /readyz, /status.")
    port: int = opt(8000, "HTTP port (the seed's port); 0 picks a free one.", ge=0, le=65535)
    control_token_env: str = opt("TRADINGD_CONTROL_TOKEN", "Environment variable with the bearer token for "
                                 "control endpoints (halt/resume/flatten); unset disables them.")
    keepalive_timeout_s: float = opt(15.0, "An idle keep-alive connection is closed after this many seconds.",
                                     gt=0, le=3600)
    max_header_bytes: int = opt(8190, "Longest request line or header field accepted (longer: HTTP 400, one "
                                "log line, counted in tradingd_http_errors_total).", ge=1024, le=65536)


@dataclass(frozen=True)
class RetrainConfig:
    enabled: bool = opt(True, "Retrain in a background process on the recorded bars.")
    interval_minutes: float = opt(360.0, "Minutes between scheduled retrains.", gt=0, le=525_600)
    nice: int = opt(10, "Niceness of the retraining process.", ge=0, le=19)
    threads: int = opt(1, "Threads the retraining process may use.", ge=1, le=256)
    timeout_minutes: float = opt(60.0, "A retrain running longer is killed and reported as failed.", gt=0, le=1440)
    min_store_bars: int = opt(20000, "Fewer 1m bars in the store than this: train on venue klines history too.",
                              ge=100, le=100_000_000)
    history_days: float = opt(30.0, "Days of venue klines fetched when the store is still young.", gt=0, le=1000)
    min_improvement_usd: float = opt(0.0, "A challenger replaces the current model only if its held-out dollar "
                                     "P&L beats the current one's by more than this (quote).", ge=-1e15, le=1e15)
    xgb_rounds: int = opt(300, "Retraining: XGBoost boosting rounds (early stopping applies).", ge=1, le=100_000)
    lstm_epochs: int = opt(2, "Retraining: LSTM epochs.", ge=1, le=1000)
    lstm_hidden: int = opt(16, "Retraining: LSTM hidden units.", ge=1, le=4096)


@dataclass(frozen=True)
class ClusterConfig:
    """Where the retrainer's heavy jobs run (research/executor.py). The daemon never needs a cluster to trade."""

    executor: str = opt("local", "local: the retrain child trains every timeframe itself; ray: each timeframe is a "
                        "Ray task on the cluster at `address` (model files staged under the registry, which must be "
                        "a path every node shares; published by the daemon's side only). Needs the cluster extra.",
                        choices=("local", "ray"))
    address: str = opt("", "Ray cluster address (host:port of `ray start --head`); required with executor = "
                       "\"ray\". Checked at start-up: unreachable is exit 3.")

    def validate(self) -> None:
        if self.executor == "ray" and not self.address:
            raise ValueError("cluster.address is required when cluster.executor = \"ray\"")


@dataclass(frozen=True)
class ShadowSection:
    """Live A/B (daemon/shadow.py): a challenger that passed the retrainer's offline gate first decides in shadow
    beside the champion; both are simulated through the same costs (broker.taker_fee + half the assumed spread +
    optimizer.slippage_bps per side) and the challenger is promoted only when the mSPRT says it is ahead."""

    enabled: bool = opt(True, "Run gate-passing challengers in shadow before promoting them (false: promote on the "
                        "offline gate alone). A registry without a current model promotes its first models at once.")
    min_bars: int = opt(60, "Paired bar closes before a promotion can be decided.", ge=1, le=10_000_000)
    max_bars: int = opt(2000, "No decision after this many paired bar closes: the challenger is dropped.",
                        ge=1, le=10_000_000)
    alpha: float = opt(0.05, "Always-valid false-promotion rate of the sequential test.", gt=0, lt=1)
    tau: float = opt(0.0005, "Prior scale of the per-bar P&L difference in the mSPRT mixture (fraction).", gt=0,
                     le=1)

    def validate(self) -> None:
        if self.min_bars > self.max_bars:
            raise ValueError("shadow.min_bars must be <= shadow.max_bars")


@dataclass(frozen=True)
class DriftConfig:
    enabled: bool = opt(True, "Watch each model's drift at every bar close (engines.drift against the reference in "
                        "its manifest) and export it (tradingd_drift_*; per feature in /status).")
    window_bars: int = opt(200, "Rolling window of live bars (and of resolved predictions) the statistics cover.",
                           choices=(50, 100, 200, 500, 1000))
    calibrated: bool = opt(True, "Alarm levels also above the reference's 99 % null quantile for this window "
                           "(windows of the training rows themselves): about 1 % false alarms on unchanged "
                           "data. false: the floors below alone.")
    psi_threshold: float = opt(0.1, "Per-feature PSI alarm floor.", gt=0, le=100)
    ks_threshold: float = opt(0.1, "Per-feature (binned) KS alarm floor.", gt=0, le=1)
    prediction_psi_threshold: float = opt(0.1, "PSI of the prediction distribution: alarm floor.", gt=0, le=100)
    calibration_threshold: float = opt(0.05, "|mean predicted - realised up-rate| moved this far from its held-out "
                                       "value: alarm floor.", gt=0, le=1)
    ph_delta: float = opt(0.1, "Page-Hinkley tolerance (in standard deviations) of the error and P&L detectors.",
                          ge=0, le=10)
    ph_threshold: float = opt(50.0, "Page-Hinkley detection threshold (in standard deviations).", gt=0, le=1e6)
    ph_min_instances: int = opt(30, "Resolved predictions / closed trades before a detector may fire.",
                                ge=2, le=100_000)
    retrain_on_alarm: bool = opt(True, "A drift alarm (or P&L decay) starts a retrain (reason recorded in the "
                                 "new versions' manifests); the retrain.interval_minutes timer stays as a floor.")
    retrain_min_interval_minutes: float = opt(60.0, "No drift-triggered retrain sooner than this after the last "
                                              "retrain of any trigger (refusals counted).", gt=0, le=525_600)

    def params(self) -> DriftParams:
        from engines.drift import DriftParams
        return DriftParams(window=self.window_bars, psi=self.psi_threshold, ks=self.ks_threshold,
                           prediction_psi=self.prediction_psi_threshold, calibration=self.calibration_threshold,
                           calibrated=self.calibrated, ph_delta=self.ph_delta, ph_threshold=self.ph_threshold,
                           ph_min_instances=self.ph_min_instances)


@dataclass(frozen=True)
class LoggingConfig:
    level: str = opt("info", "Log level.", choices=("debug", "info", "warning", "error"))
    format: str = opt("auto", "auto: human-readable console lines on a terminal, JSON lines under systemd "
                      "(JOURNAL_STREAM set) or when piped; json / console force one. Progress lines (stdout) use "
                      "the same format.", choices=("auto", "json", "console"))


@dataclass(frozen=True)
class Config:
    general: GeneralConfig = GeneralConfig()
    venue: VenueConfig = VenueConfig()
    faults: FaultConfig = FaultConfig()
    simulator: SimulatorConfig = SimulatorConfig()
    feed: FeedConfig = FeedConfig()
    cluster: ClusterConfig = ClusterConfig()
    shadow: ShadowSection = ShadowSection()
    recorder: RecorderConfig = RecorderConfig()
    bars: BarsConfig = BarsConfig()
    engines: EnginesConfig = EnginesConfig()
    broker: BrokerConfig = BrokerConfig()
    store: StoreConfig = StoreConfig()
    http: HttpConfig = HttpConfig()
    retrain: RetrainConfig = RetrainConfig()
    drift: DriftConfig = DriftConfig()
    logging: LoggingConfig = LoggingConfig()
    optimizer: OptimizerConfig = OptimizerConfig()
    risk: RiskConfig = RiskConfig()

    @property
    def model_family(self) -> str:
        """``engines.family`` resolved: ``auto`` is universe with >= MIN_UNIVERSE symbols, else per_symbol."""
        f = self.engines.family
        if f == "auto":
            return "universe" if len(self.general.symbols) >= MIN_UNIVERSE else "per_symbol"
        return f

    def validate(self) -> None:
        """Cross-section rules: the universe model family needs >= 3 symbols; a spot
        venue's account (testnet broker) cannot hold a negative quantity; a short
        there is a sale of coins held, and closing it with a buy leaves a base-commission remainder that cannot
        be sold (the wedge of issue #14)."""
        if self.engines.family == "universe":
            if len(self.general.symbols) < MIN_UNIVERSE:
                raise ValueError(f"engines.family = \"universe\" needs at least 3 symbols in general.symbols (its "
                                 f"features rank symbols against each other), got {len(self.general.symbols)}")
        if self.optimizer.allow_short and self.broker.kind != "paper":
            raise ValueError(f"optimizer.allow_short = true needs broker.kind = \"paper\": the "
                             f"{self.broker.kind!r} broker trades a spot account, which cannot be short")

    def path(self, p: str) -> Path:
        """Resolve a path option against general.data_dir."""
        q = Path(p)
        return q if q.is_absolute() else Path(self.general.data_dir) / q


def config_from_dict(raw: dict, source: str = "<config>") -> Config:
    return build_section(Config, raw, "", source)


def load_config(path: str | Path | None) -> Config:
    """Load and check ``config.toml``; ``None`` (no --config) gives the embedded defaults; an empty file is refused."""
    if path is None:
        return Config()
    raw = load_toml(path)
    if not raw:  # a truncated or mis-generated file must not silently start the full default daemon
        raise ConfigError(f"{path}: the config file is empty (no options); run without --config for the embedded "
                          "defaults, or generate a full file with scripts/gen_config.py")
    return config_from_dict(raw, str(path))


def replace(cfg: Config, **sections: dict) -> Config:
    """A copy of ``cfg`` with some options changed, e.g. ``replace(cfg, venue={"mode": "replay"})``."""
    new = {}
    for name, changes in sections.items():
        new[name] = dataclasses.replace(getattr(cfg, name), **changes)
    return dataclasses.replace(cfg, **new)
