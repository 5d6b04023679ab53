"""The Grafana dashboard ``tradingd.json``, generated from the spec below (one line per panel): edit ``ROWS`` and run
``python deploy/grafana/build.py`` (tests/deploy/test_dashboard.py checks the checked-in JSON equals the output,
and the linter conventions; tests/deploy/test_grafana_queries.py runs every query against the real daemon).

Every query uses only metrics daemon/metrics.py exports. Conventions (Grafana's dashboard linter): one datasource
variable (``DS_PROMETHEUS``) used by every panel, ``$__rate_interval`` in every rate/increase, a unit on every
panel, counters (``_total``/``_count``/``_sum``/``_bucket``) only inside rate/increase.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

OUT = Path(__file__).with_name("tradingd.json")
DS = {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
RI = "$__rate_interval"


def rate(metric: str, by: str = "", sel: str = "") -> str:
    agg = f"sum by ({by}) " if by else "sum"
    return f"{agg}(rate({metric}{sel}[{RI}]))"


def q(metric: str, quantiles=(0.5, 0.99), by: str = "") -> list[tuple[str, str]]:
    """histogram_quantile of a histogram's buckets, one target per quantile."""
    extra = f", {by}" if by else ""
    lbl = "".join(f" {{{{{b.strip()}}}}}" for b in by.split(",")) if by else ""
    return [(f"histogram_quantile({x}, sum by (le{extra}) (rate({metric}_bucket[{RI}])))", f"p{round(x * 100)}{lbl}")
            for x in quantiles]


# (row title, [(panel title, unit, kind, [(expr, legend), ...], description), ...]);
# kind: "timeseries" (a range query), "stat" (last value), "table" (instant query, one row per series)
ROWS: list[tuple[str, list[tuple[str, str, str, list[tuple[str, str]], str]]]] = [
    ("Feed health", [
        ("Frames/s", "reqps", "timeseries",
         [(rate("tradingd_frames_total", "symbol, stream"), "{{symbol}} {{stream}}")],
         "Websocket frames received per second by stream."),
        ("Sequence gaps and resyncs", "ops", "timeseries",
         [(rate("tradingd_book_gaps_total", "symbol"), "gaps {{symbol}}"),
          (rate("tradingd_book_resyncs_total", "symbol"), "resyncs {{symbol}}")],
         "Depth-stream sequence gaps detected and the order book resyncs they caused."),
        ("Stale books", "short", "timeseries",
         [("sum(1 - tradingd_book_synced)", "books not synced"),
          (rate("tradingd_decision_outcomes_total", sel='{outcome="stale_book"}'), "bar closes on a stale book /s")],
         "Books not synced (not tradeable: no new orders) and bar closes decided on a stale book."),
        ("Reconnects", "ops", "timeseries", [(rate("tradingd_reconnects_total", "venue"), "{{venue}}")],
         "Websocket reconnects per second (alert: TradingdFeedReconnectStorm)."),
    ]),
    ("Decisions", [
        ("Tick to decision", "s", "timeseries", q("tradingd_tick_to_decision_seconds", (0.5, 0.9, 0.99)),
         "Receive time of the bar-closing trade to the order decision (histogram quantiles)."),
        ("Decisions by outcome", "ops", "timeseries",
         [(rate("tradingd_decision_outcomes_total", "outcome"), "{{outcome}}")],
         "What bar-close decisions came to: orders sent, intents refused, or the optimizer's no-trade reason."),
        ("Fills", "ops", "timeseries", [(rate("tradingd_fills_total", "symbol, side"), "{{symbol}} {{side}}")],
         "Fills per second by symbol and side."),
    ]),
    ("P&L", [
        ("Equity", "currencyUSD", "timeseries", [("tradingd_equity", "equity")], "Account equity (quote)."),
        ("Realised, unrealised, daily P&L and fees", "currencyUSD", "timeseries",
         [("tradingd_realised_pnl", "realised"), ("tradingd_unrealised_pnl", "unrealised"),
          ("tradingd_daily_pnl", "since 00:00 UTC"), ("tradingd_fees_paid", "fees paid")],
         "Realised and unrealised P&L, P&L since 00:00 UTC and fees paid (quote)."),
        ("Positions", "short", "timeseries", [("tradingd_position", "{{symbol}}")],
         "Signed position per symbol (base units)."),
        ("Drawdown from the 24 h peak", "percentunit", "timeseries",
         [("tradingd_equity / max_over_time(tradingd_equity[24h]) - 1", "drawdown")],
         "Equity relative to its highest value over the last 24 hours."),
        ("Risk state", "short", "stat", [("tradingd_risk_state", "risk state")],
         "0 active, 1 reducing, 2 halted (kill switch; alert TradingdKillSwitchEngaged)."),
    ]),
    ("Models", [
        ("Model versions in use", "none", "table", [("tradingd_model_version_info", "")],
         "One row per timeframe and model kind: version and inference backend."),
        ("Engines by backend", "short", "stat", [("count by (backend) (tradingd_model_version_info)", "{{backend}}")],
         "Models in use per inference backend."),
        ("Predictions/s", "ops", "timeseries", [(rate("tradingd_predictions_total", "timeframe, engine"),
                                                 "{{timeframe}} {{engine}}")], "Predictions made per second."),
        ("Inference latency p99", "s", "timeseries",
         q("tradingd_inference_latency_seconds", (0.99,), "engine, backend"),
         "Model inference latency (99th percentile) per engine and backend."),
        ("Backend fallbacks", "ops", "timeseries",
         [(rate("tradingd_backend_fallbacks_total", "timeframe, kind, requested, reason"),
           "{{timeframe}} {{kind}} {{requested}}: {{reason}}")],
         "Backends passed over (requested one unavailable, or failed to load / warm up)."),
        ("Prediction distribution", "percentunit", "timeseries",
         q("tradingd_prediction_value", (0.1, 0.5, 0.9), "timeframe, model"),
         "Quantiles of the models' P(up) at bar closes (a model stuck at one value, or drifting, shows here)."),
        ("Drift: largest feature PSI and KS", "short", "timeseries",
         [("max by (timeframe, model) (tradingd_drift_psi)", "PSI {{timeframe}} {{model}}"),
          ("max by (timeframe, model) (tradingd_drift_ks)", "KS {{timeframe}} {{model}}")],
         "Largest per-feature PSI / binned KS of the live window against the training reference (over symbols)."),
        ("Drift: predictions and calibration", "short", "timeseries",
         [("max by (timeframe, model) (tradingd_drift_prediction_psi)", "prediction PSI {{timeframe}} {{model}}"),
          ("max by (timeframe, model) (tradingd_drift_calibration)", "calibration {{timeframe}} {{model}}")],
         "PSI of the live prediction distribution vs held-out predictions; calibration gap moved from its held-out value."),
        ("Drift alarms and change detectors", "short", "timeseries",
         [("sum by (timeframe, model) (tradingd_drift_alarm)", "alarms {{timeframe}} {{model}}"),
          ("sum by (timeframe, model) (tradingd_drift_error_change)", "error change {{timeframe}} {{model}}")],
         "Symbols in drift alarm (alert: TradingdDriftAlarm) and Page-Hinkley changes in prediction error."),
    ]),
    ("Retraining", [
        ("Retrain runs", "ops", "timeseries", [(rate("tradingd_retrain_runs_total", "outcome"), "{{outcome}}")],
         "Retraining runs by outcome (alert: TradingdRetrainFailed)."),
        ("Retrain duration", "s", "timeseries", q("tradingd_retrain_duration_seconds", (0.5, 0.99)),
         "Duration of retraining runs (child process)."),
        ("Promotions and gate errors", "ops", "timeseries",
         [(rate("tradingd_retrain_promotions_total", "timeframe"), "promoted {{timeframe}}"),
          (rate("tradingd_retrain_gate_errors_total", "timeframe"), "gate error {{timeframe}}")],
         "Retrained models promoted and swapped in; gate errors (nothing promoted)."),
        ("Shadow A/B: simulated P&L", "percentunit", "timeseries",
         [("tradingd_shadow_pnl", "{{timeframe}} {{side}}")],
         "The running shadow trial's simulated P&L of each side after the same costs (fraction per symbol)."),
        ("Shadow A/B: evidence", "short", "timeseries",
         [("tradingd_shadow_log_lr", "log LR {{timeframe}}"), ("tradingd_shadow_bars", "paired bars {{timeframe}}"),
          ("tradingd_shadow_running", "running {{timeframe}}")],
         "mSPRT log likelihood ratio (decides at log(1/alpha)), paired bars so far, and whether a trial runs."),
        ("Shadow A/B: outcomes", "ops", "timeseries",
         [(rate("tradingd_shadow_outcomes_total", "timeframe, outcome"), "{{timeframe}} {{outcome}}")],
         "Shadow trials ended: promote, reject, replaced, promotion_failed."),
    ]),
    ("Store and loop", [
        ("Store commit lag", "s", "timeseries", q("tradingd_store_commit_lag_seconds", (0.5, 0.99)),
         "Store writer: submit to durable commit (alert: TradingdStoreLag)."),
        ("Queue depth", "short", "timeseries", [("tradingd_queue_depth", "{{queue}}")],
         "Items waiting in the feed and store queues."),
        ("Dropped bars", "ops", "timeseries", [(rate("tradingd_store_dropped_bars_total", "reason"), "{{reason}}")],
         "Bar rows not stored (a gap in the retrainer's input)."),
        ("Event-loop lag", "s", "timeseries", q("tradingd_event_loop_lag_seconds", (0.5, 0.99, 0.999)),
         "How late the event loop wakes a 100 ms timer: the delay every task suffers."),
    ]),
]


def panel(pid: int, title: str, unit: str, kind: str, targets: list[tuple[str, str]], desc: str,
          x: int, y: int) -> dict:
    table = kind == "table"
    p: dict = {
        "id": pid, "type": kind, "title": title, "description": desc, "datasource": DS,
        "gridPos": {"h": 8, "w": 8, "x": x, "y": y},
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "options": {},
        "targets": [{"datasource": DS, "refId": chr(ord("A") + i), "expr": expr, "legendFormat": legend,
                     "instant": kind != "timeseries", "range": kind == "timeseries",
                     **({"format": "table"} if table else {})}
                    for i, (expr, legend) in enumerate(targets)],
    }
    if table:
        p["transformations"] = [{"id": "organize", "options": {"excludeByName": {
            "Time": True, "Value": True, "__name__": True, "instance": True, "job": True}}}]
    return p


def build() -> dict:
    panels: list[dict] = []
    pid, y = 1, 0
    for row, specs in ROWS:
        panels.append({"id": pid, "type": "row", "title": row, "collapsed": False,
                       "gridPos": {"h": 1, "w": 24, "x": 0, "y": y}, "panels": []})
        pid, y = pid + 1, y + 1
        for i, spec in enumerate(specs):
            if i and i % 3 == 0:
                y += 8
            panels.append(panel(pid, *spec, x=(i % 3) * 8, y=y))
            pid += 1
        y += 8
    return {
        "__inputs": [{"name": "DS_PROMETHEUS", "label": "Prometheus", "type": "datasource",
                      "pluginId": "prometheus", "pluginName": "Prometheus"}],
        "annotations": {"list": []},
        "editable": True,
        "graphTooltip": 1,
        "panels": panels,
        "refresh": "30s",
        "schemaVersion": 39,
        "tags": ["tradingd"],
        "templating": {"list": [{"name": "DS_PROMETHEUS", "label": "Data source", "type": "datasource",
                                 "query": "prometheus", "current": {}, "hide": 0, "refresh": 1, "regex": "",
                                 "options": []}]},
        "time": {"from": "now-6h", "to": "now"},
        "timezone": "utc",
        "title": "tradingd",
        "uid": "tradingd",
        "version": 1,
    }


def render() -> str:
    return json.dumps(build(), indent=2, sort_keys=False) + "\n"


if __name__ == "__main__":
    OUT.write_text(render())
    print(f"wrote {OUT}", file=sys.stderr)
