"""Every Prometheus metric the daemon exports, in one registry per daemon (tests can run several).

Names follow Prometheus conventions (`tradingd_` prefix, base units: seconds, quote currency). Counters the pure
cores keep as plain ints (book stats, decode errors, risk counters) are copied in by the daemon's collector
tick, so the cores stay free of prometheus-client.
"""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics
from prometheus_client.exposition import generate_latest

disable_created_metrics()  # the *_created series double the scrape size for no use here

LAT_BUCKETS = (25e-6, 50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 50e-3, 0.1, 0.25, 1.0)


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        self.frames = Counter("tradingd_frames_total", "Frames received", ["venue", "symbol", "stream"], registry=r)
        self.decode_errors = Counter("tradingd_decode_errors_total", "Frames dropped as undecodable",
                                     ["venue", "reason"], registry=r)
        self.book_resyncs = Counter("tradingd_book_resyncs_total", "Order book resyncs", ["symbol"], registry=r)
        self.book_gaps = Counter("tradingd_book_gaps_total", "Sequence gaps detected", ["symbol"], registry=r)
        self.book_rejects = Counter("tradingd_book_rejected_total", "Book updates rejected", ["symbol", "reason"],
                                    registry=r)
        self.book_synced = Gauge("tradingd_book_synced", "1 when the book is synced and tradeable", ["symbol"],
                                 registry=r)
        self.reconnects = Counter("tradingd_reconnects_total", "Websocket reconnects", ["venue"], registry=r)
        self.queue_depth = Gauge("tradingd_queue_depth", "Items waiting in a bounded queue", ["queue"], registry=r)
        self.store_commit_lag = Histogram("tradingd_store_commit_lag_seconds",
                                          "Store writer: submit to durable commit (how far memory leads disk)",
                                          buckets=LAT_BUCKETS, registry=r)
        self.loop_lag = Histogram("tradingd_event_loop_lag_seconds", "Event-loop scheduling lag",
                                  buckets=LAT_BUCKETS, registry=r)
        self.tick_to_decision = Histogram("tradingd_tick_to_decision_seconds",
                                          "Receive time of the bar-closing trade to order decision",
                                          buckets=LAT_BUCKETS, registry=r)
        self.inference_latency = Histogram("tradingd_inference_latency_seconds", "Model inference latency",
                                           ["engine", "backend"], buckets=LAT_BUCKETS, registry=r)
        self.bars = Counter("tradingd_bars_total", "Bars closed", ["symbol", "timeframe"], registry=r)
        self.predictions = Counter("tradingd_predictions_total", "Predictions made", ["timeframe", "engine"],
                                   registry=r)
        self.prediction_value = Histogram("tradingd_prediction_value", "The models' predictions (P(up) in [0, 1]) at "
                                          "bar closes: their distribution (observed by the drift watch, off the "
                                          "decision path)", ["timeframe", "model"],
                                          buckets=tuple(round(0.05 * i, 2) for i in range(1, 20)), registry=r)
        self.orders = Counter("tradingd_orders_total", "Orders submitted", ["symbol", "side", "reason"], registry=r)
        self.fills = Counter("tradingd_fills_total", "Fills", ["symbol", "side"], registry=r)
        # copied in by the collector from the pipeline's and optimizer's counters (the Grafana panel "decisions")
        self.decision_outcomes = Counter("tradingd_decision_outcomes_total", "What bar-close decisions came to: "
                                         "order (sent), risk_rejected / broker_rejected (intents refused), or a "
                                         "no-trade reason of the optimizer (stale_book, no_signal, no_size, ...)",
                                         ["outcome"], registry=r)
        self.rejections = Counter("tradingd_order_rejections_total", "Orders refused by risk or broker",
                                  ["reason"], registry=r)
        self.exit_refused = Counter("tradingd_exit_refused_total", "Exits refused (risk, broker or venue); each is "
                                    "re-sent only after an exponential, bounded backoff", ["symbol"], registry=r)
        self.exit_alarm = Gauge("tradingd_exit_alarm", "Refused exits in a row for a position (0: none)", ["symbol"],
                                registry=r)
        self.http_errors = Counter("tradingd_http_errors_total", "HTTP requests refused or failed in the server "
                                   "(e.g. LineTooLong: a header over http.max_header_bytes)", ["reason"], registry=r)
        self.position = Gauge("tradingd_position", "Signed position (base units)", ["symbol"], registry=r)
        self.equity = Gauge("tradingd_equity", "Account equity (quote)", registry=r)
        self.realised = Gauge("tradingd_realised_pnl", "Realised P&L (quote)", registry=r)
        self.unrealised = Gauge("tradingd_unrealised_pnl", "Unrealised P&L (quote)", registry=r)
        self.daily_pnl = Gauge("tradingd_daily_pnl", "P&L since 00:00 UTC (quote)", registry=r)
        self.fees = Gauge("tradingd_fees_paid", "Fees paid (quote)", registry=r)
        self.risk_state = Gauge("tradingd_risk_state", "0 active, 1 reducing, 2 halted", registry=r)
        # versions as labels of one info-style gauge (an Info with keys like "1m_lstm" is not a valid label name)
        self.model_version = Gauge("tradingd_model_version_info", "1 for each model version in use",
                                   ["timeframe", "kind", "version", "backend"], registry=r)
        self.retrain_runs = Counter("tradingd_retrain_runs_total", "Retraining runs", ["outcome"], registry=r)
        self.shadow_running = Gauge("tradingd_shadow_running", "1 while a challenger runs in shadow on the timeframe",
                                    ["timeframe"], registry=r)
        self.shadow_bars = Gauge("tradingd_shadow_bars", "Paired bars of the running shadow trial", ["timeframe"],
                                 registry=r)
        self.shadow_pnl = Gauge("tradingd_shadow_pnl", "Simulated P&L of each side of the shadow trial (fraction "
                                "of one unit per symbol, after costs)", ["timeframe", "side"], registry=r)
        self.shadow_log_lr = Gauge("tradingd_shadow_log_lr", "The shadow trial's mSPRT log likelihood ratio "
                                   "(decides at log(1/alpha))", ["timeframe"], registry=r)
        self.shadow_outcomes = Counter("tradingd_shadow_outcomes_total", "Shadow trials ended, by outcome "
                                       "(promote, reject, replaced, promotion_failed)", ["timeframe", "outcome"],
                                       registry=r)
        self.retrain_gate_errors = Counter("tradingd_retrain_gate_errors_total",
                                           "Retrain gate could not evaluate the current model: nothing promoted",
                                           ["timeframe"], registry=r)
        self.retrain_duration = Histogram("tradingd_retrain_duration_seconds", "Retraining run duration",
                                          buckets=(1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600), registry=r)
        self.retrain_promotions = Counter("tradingd_retrain_promotions_total",
                                          "Retrained models promoted and swapped in", ["timeframe"], registry=r)
        self.task_restarts = Counter("tradingd_task_restarts_total", "Background tasks restarted after a crash",
                                     ["task"], registry=r)
        self.backend_fallbacks = Counter("tradingd_backend_fallbacks_total",
                                         "Engine backends passed over (unavailable, load or warm-up failed)",
                                         ["timeframe", "kind", "requested", "reason"], registry=r)
        self.frames_refused = Counter("tradingd_frames_refused_total", "Implausible events refused by the feed's "
                                      "guard (time, size, duplicate)", ["symbol", "reason"], registry=r)
        self.clock_jumps = Counter("tradingd_clock_jumps_total", "Confirmed jumps of a stream's event clock (gaps)",
                                   registry=r)
        self.book_oracle = Counter("tradingd_book_oracle_total", "bookTicker checks of the live book, by result",
                                   ["result"], registry=r)
        # the feed's websocket connections (feed.max_streams_per_connection splits the symbols), by index
        self.feed_connection_up = Gauge("tradingd_feed_connection_up", "1 while this feed connection is open",
                                        ["connection"], registry=r)
        self.feed_connection_streams = Gauge("tradingd_feed_connection_streams", "Streams this feed connection "
                                             "carries", ["connection"], registry=r)
        self.feed_connection_connects = Counter("tradingd_feed_connection_connects_total", "Websocket connects of "
                                                "this feed connection (1 + its reconnects that succeeded)",
                                                ["connection"], registry=r)
        self.feed_connection_errors = Counter("tradingd_feed_connection_errors_total", "Refused handshakes "
                                              "(http_<status>) and lost connections (network) of this feed "
                                              "connection", ["connection", "reason"], registry=r)
        # failures counted in /status, here too (copied in by the daemon's collector)
        self.pipeline_errors = Counter("tradingd_pipeline_errors_total",
                                       "Pipeline failures survived (predict, bar_store, plan_store)", ["kind"],
                                       registry=r)
        self.record_errors = Counter("tradingd_record_errors_total", "Recorder writes that failed", registry=r)
        self.predict_row_errors = Counter("tradingd_predict_row_errors_total",
                                          "Rows a model refused after its boundary batch failed (the other rows were "
                                          "predicted one by one)", ["timeframe", "kind", "reason"], registry=r)
        self.universe_refusals = Counter("tradingd_universe_refusals_total",
                                         "Bars the universe engine could not use (late_bar: its boundary was already "
                                         "stepped; unknown_symbol)", ["timeframe", "reason"], registry=r)
        self.store_dropped_bars = Counter("tradingd_store_dropped_bars_total",
                                          "Bar rows not stored (a gap in the retrainer's input)", ["reason"],
                                          registry=r)
        self.store_writer = Counter("tradingd_store_writer_events_total",
                                    "Store writer events: dropped (droppable jobs), full_waits, errors (fatal), "
                                    "skipped, outages (server lost), retries (reconnects)", ["event"], registry=r)
        self.store_available = Gauge("tradingd_store_available", "1 while the store accepts commits; 0 while its "
                                     "server is lost (new orders refused, the writer retries)", registry=r)
        self.up = Gauge("tradingd_ready", "1 when books are synced and models warm", registry=r)
        # model drift (daemon.drift over engines.drift); per-feature values are in /status only
        dl = ["symbol", "timeframe", "model"]
        self.drift_psi = Gauge("tradingd_drift_psi", "Largest per-feature PSI of the live window vs training", dl,
                               registry=r)
        self.drift_ks = Gauge("tradingd_drift_ks", "Largest per-feature binned KS of the live window vs training",
                              dl, registry=r)
        self.drift_prediction_psi = Gauge("tradingd_drift_prediction_psi", "PSI of the live predictions vs the "
                                          "held-out ones", dl, registry=r)
        self.drift_calibration = Gauge("tradingd_drift_calibration", "|mean predicted - realised up-rate| moved "
                                       "from its held-out value", dl, registry=r)
        self.drift_error_change = Gauge("tradingd_drift_error_change", "1 when Page-Hinkley saw the prediction "
                                        "error rise", dl, registry=r)
        self.drift_pnl_change = Gauge("tradingd_drift_pnl_change", "1 when Page-Hinkley saw per-trade P&L fall "
                                      "(model = the trades' timeframe's models combined: 'trades')", dl, registry=r)
        self.drift_alarm = Gauge("tradingd_drift_alarm", "1 while a drift statistic is beyond its threshold", dl,
                                 registry=r)
        self.retrain_triggers = Counter("tradingd_retrain_triggers_total", "Retrain requests by reason (schedule, "
                                        "control, drift, pnl) and result (started, rate_limited, busy)",
                                        ["reason", "result"], registry=r)

    def set_models(self, models: dict[str, dict[str, dict]]) -> None:
        """Export the model versions in use, ``{timeframe: {kind: {"version", "backend"}}}``; replaces the old
        label sets, so after a swap only the new versions show."""
        g = self.model_version
        g.clear()
        for tf, kinds in models.items():
            for kind, info in kinds.items():
                g.labels(tf, kind, str(info["version"]), str(info["backend"])).set(1)

    def render(self) -> bytes:
        return generate_latest(self.registry)
