"""Drift -> retrain inside a running daemon: a real `tradingd run` (simulated venue, real models trained at first
run, real registry) with the drift floors set low and calibration off, so the first full window alarms: the
alarm is exported, a retrain runs with reason "drift" recorded in the new versions' manifests and the log, the
promoted models are swapped in, their fresh streams alarm again, and the rate limit refuses a second retrain."""
from __future__ import annotations

import orjson
import pytest

from tests.daemon.harness import Daemon, free_port, http_get, json_lines, metric, wait_until, write_config


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_drift_alarm_triggers_rate_limited_retrain(tmp_path):
    port = free_port()
    cfg = write_config(tmp_path / "config.toml", tmp_path / "var", port, timeframes=("1m",), speed=120.0, extra="""
[venue]
mode = "simulate"

[simulator]
history_days = 3

[engines]
first_run_xgb_rounds = 20
first_run_lstm_epochs = 1
first_run_lstm_hidden = 8

[retrain]
interval_minutes = 600.0
min_store_bars = 100
history_days = 3
xgb_rounds = 20
lstm_epochs = 1
lstm_hidden = 8
# always promote, so the swapped-in models' fresh drift streams alarm again (the gate: tests/daemon/test_retrain.py)
min_improvement_usd = -1e12

[shadow]
# promoted by the offline gate at once (the shadow A/B path: tests/daemon/test_app_retrain.py[shadow])
enabled = false

[drift]
window_bars = 50
calibrated = false
psi_threshold = 1e-9
ks_threshold = 1e-9
retrain_min_interval_minutes = 30.0
""")
    d = Daemon(cfg, tmp_path)
    try:
        url = d.wait_line(r"ready: (http://\S+)", 150).group(1)
        before = orjson.loads(http_get(url + "/status")[1])["models"]["1m"]

        def status():
            return orjson.loads(http_get(url + "/status")[1])

        rep = wait_until(lambda: status()["retrain"]["last"], 400, "a drift-triggered retrain", d)
        assert rep["trigger"] == "drift" and rep["ok"], rep
        assert rep["detail"]["symbol"] == "BTCUSDT" and rep["detail"]["timeframe"] == "1m"
        assert {"psi", "ks"} & set(rep["detail"]["reasons"])
        dec = rep["results"]["1m"]["decision"]
        from engines.registry import ModelRegistry, read_manifest
        reg = ModelRegistry(tmp_path / "var" / "models")
        for kind in ("xgboost", "lstm"):  # the reason is in the registry entry of the new versions
            assert dec[kind]["promoted"] and dec[kind]["version"] != before[kind]["version"]
            m = read_manifest(reg.version_dir("1m", kind, dec[kind]["version"]))
            assert m["extra"]["trigger"]["reason"] == "drift"
            assert m["extra"]["trigger"]["detail"]["model"] in ("xgboost", "lstm")
            assert "drift" in m["extra"]  # and the new reference
        # the new models' streams start afresh, fill their window, alarm again: refused by the rate limit
        text = wait_until(lambda: (lambda t: t if metric(t, "tradingd_retrain_triggers_total", reason="drift",
                                                             result="rate_limited") >= 1 else None)(
            http_get(url + "/metrics")[1].decode()), 90, "a rate-limited drift request", d)
        assert metric(text, "tradingd_retrain_triggers_total", reason="drift", result="started") == 1
        assert metric(text, "tradingd_retrain_runs_total", outcome="ok") == 1
        for kind in ("xgboost", "lstm"):
            assert metric(text, "tradingd_drift_alarm", symbol="BTCUSDT", timeframe="1m", model=kind) == 1
            assert metric(text, "tradingd_drift_psi", symbol="BTCUSDT", timeframe="1m", model=kind) > 0
        st = status()
        assert st["retrain"]["by_reason"] == {"drift": 1}
        assert st["models"]["1m"]["xgboost"]["version"] == dec["xgboost"]["version"]
        s = st["drift"]["streams"]["BTCUSDT/1m/xgboost"]
        assert s["alarm"] and set(s["features"]) >= {"ret_1", "rv_48"} and s["rows"] == 50
        assert any(r["answer"].get("error", "").startswith("rate limited") for r in st["drift"]["requests"])
        logs = json_lines("\n".join(d.lines) + "\n" + d.stderr())
        assert any(e.get("event") == "retrain_started" and e.get("trigger") == "drift" for e in logs)
        assert any(e.get("event") == "drift_alarm" for e in logs)
        assert http_get(url + "/readyz")[0] == 200
        assert d.stop() == 0
    finally:
        d.kill()
