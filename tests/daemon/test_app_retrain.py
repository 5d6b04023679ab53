"""Retraining inside a running daemon: POST /control/retrain -> a child process trains a challenger from the
store's bars -> it is promoted -> the daemon loads, warms and swaps it while trading goes on; the loop lag
during the swap is reported in /status (a figure, not an assert on time). With the shadow A/B on, the
gate-passing challenger first runs in shadow; an operator's POST /control/pin-challenger promotes it."""
from __future__ import annotations

import orjson
import pytest

from tests.daemon.harness import TOKEN, Daemon, free_port, http_get, http_post, metric, wait_until, write_config


@pytest.mark.slow
@pytest.mark.timeout(240)
@pytest.mark.parametrize("shadow", [False, True], ids=["direct", "shadow"])
def test_retrain_cycle_swaps_new_version(tmp_path, shadow):
    port = free_port()
    cfg = write_config(tmp_path / "config.toml", tmp_path / "var", port, timeframes=("15m",), extra="""
[venue]
mode = "simulate"

[simulator]
history_days = 30

[engines]
first_run_xgb_rounds = 30
first_run_lstm_epochs = 1
first_run_lstm_hidden = 8

[retrain]
interval_minutes = 600.0
min_store_bars = 100
xgb_rounds = 30
lstm_epochs = 1
lstm_hidden = 8
# always promote, so the test sees a swap (the gate itself is tested in tests/daemon/test_retrain.py)
min_improvement_usd = -1e12

[shadow]
enabled = %s
""" % ("true" if shadow else "false"))
    d = Daemon(cfg, tmp_path)
    try:
        url = d.wait_line(r"ready: (http://\S+)", 150).group(1)
        before = orjson.loads(http_get(url + "/status")[1])["models"]["15m"]
        assert http_post(url + "/control/retrain", None)[0] == 401
        code, body = http_post(url + "/control/retrain", TOKEN)
        assert code == 200 and body == {"ok": True, "started": True}
        assert http_post(url + "/control/retrain", TOKEN)[1]["error"] == "a retrain is already running"

        def last():
            st = orjson.loads(http_get(url + "/status")[1])
            return st["retrain"]["last"]
        rep = wait_until(last, 150, "retrain report", d)
        assert rep["ok"], rep
        dec = rep["results"]["15m"]["decision"]
        if shadow:
            assert all(v["shadow"] and not v["promoted"] for v in dec.values()), dec
            st = orjson.loads(http_get(url + "/status")[1])
            assert st["models"]["15m"]["xgboost"]["version"] == before["xgboost"]["version"]  # champion trades on
            trial = st["retrain"]["shadow"]["running"]["15m"]
            assert trial["verdict"] == "pending" and dec["xgboost"]["version"] in trial["challenger_version"]
            code, body = http_post(url + "/control/pin-challenger", TOKEN)
            assert code == 200 and body["ended"]["15m"]["outcome"] == "promote", body
        else:
            assert all(v["promoted"] for v in dec.values())
        after = orjson.loads(http_get(url + "/status")[1])["models"]["15m"]
        for kind in ("xgboost", "lstm"):
            assert after[kind]["version"] == dec[kind]["version"] != before[kind]["version"]
            if not shadow:
                assert rep["swapped"]["15m"][kind] == dec[kind]["version"]
        print(f"retrain: {rep['seconds']} s in the child; loop lag during load+swap: max "
              f"{rep.get('swap_loop_lag_max_ms')} ms")
        code, text = http_get(url + "/metrics")
        assert metric(text.decode(), "tradingd_retrain_runs_total", outcome="ok") == 1
        if shadow:
            assert metric(text.decode(), "tradingd_shadow_outcomes_total", timeframe="15m", outcome="promote") == 1
        assert metric(text.decode(), "tradingd_retrain_promotions_total", timeframe="15m") == 1
        assert 'tradingd_retrain_runs_total{outcome="failed"} 0.0' in text.decode()  # exported from start
        for kind in ("xgboost", "lstm"):  # the exported versions follow the swap
            assert metric(text.decode(), "tradingd_model_version_info", timeframe="15m", kind=kind,
                          version=dec[kind]["version"]) == 1
            assert metric(text.decode(), "tradingd_model_version_info", version=before[kind]["version"]) == 0
        assert http_get(url + "/readyz")[0] == 200
        assert d.stop() == 0
    finally:
        d.kill()
