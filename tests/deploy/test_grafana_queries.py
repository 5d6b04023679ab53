"""Issue 17's must-show for Grafana/Prometheus: the real daemon (`tradingd run`, the embedded simulated venue)
scraped by a real Prometheus running deploy/prometheus/prometheus.yml with the alert rules of alerts.yml loaded
(`promtool check rules` clean); then EVERY query of the Grafana dashboard, template variables substituted, is
evaluated through Prometheus's HTTP query API the way Grafana does (time series panels: query_range over the
run; stat and table panels: an instant query) and must return data (a finite value)."""
from __future__ import annotations

import math
import re
import subprocess
import time

import orjson
import pytest

from tests.daemon.harness import (PROMETHEUS, PROMTOOL, TOKEN, Daemon, Prometheus, free_port, http_get, http_post,
                                  metric, prom_api, prom_query, wait_until, write_config)
from tests.paths import DEPLOY

PROM_DIR = DEPLOY / "prometheus"
SCRAPE_S = 1
# Grafana's $__rate_interval: max($__interval + scrape interval, 4 x scrape interval); $__interval = the step
STEP_S = 2
RATE_INTERVAL = f"{max(STEP_S + SCRAPE_S, 4 * SCRAPE_S)}s"
need_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool not installed (Debian package 'prometheus')")


def substitute(expr: str) -> str:
    return expr.replace("$__rate_interval", RATE_INTERVAL)


def finite(values) -> bool:
    return any(math.isfinite(float(v)) for _, v in values)


def lab_config(target: str) -> str:
    """deploy/prometheus/prometheus.yml with the test's target and a 1 s scrape/evaluation interval."""
    text = (PROM_DIR / "prometheus.yml").read_text()
    for old, new in (('"tradingd:8000"', f'"{target}"'), ("scrape_interval: 5s", f"scrape_interval: {SCRAPE_S}s"),
                     ("scrape_timeout: 5s", f"scrape_timeout: {SCRAPE_S}s"),
                     ("evaluation_interval: 5s", f"evaluation_interval: {SCRAPE_S}s")):
        assert old in text, old
        text = text.replace(old, new)
    return text


def promtool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([PROMTOOL, *args], cwd=PROM_DIR, capture_output=True, text=True, timeout=60)


@need_promtool
def test_alert_rules_and_scrape_config_are_promtool_clean():
    """`promtool check rules` and `check config` clean; `promtool test rules alerts_test.yml`: every alert fires
    on its trouble (with the labels and annotations stated there) and none on a healthy daemon."""
    r = promtool("check", "rules", "alerts.yml")
    assert r.returncode == 0 and "SUCCESS: 10 rules found" in r.stdout, r.stdout + r.stderr
    r = promtool("check", "config", "prometheus.yml")
    assert r.returncode == 0, r.stdout + r.stderr
    r = promtool("test", "rules", "alerts_test.yml")
    assert r.returncode == 0 and "SUCCESS" in r.stdout, r.stdout + r.stderr
    tested = set(re.findall(r"alertname: (\w+)", (PROM_DIR / "alerts_test.yml").read_text()))
    assert tested == set(re.findall(r"- alert: (\w+)", (PROM_DIR / "alerts.yml").read_text()))


def unavailable_lstm_backend() -> str | None:
    """An LSTM backend that does not probe available here: requested, the daemon falls back and counts it."""
    from engines.backends import probe
    return next((b for b in ("tensorrt", "onnxruntime-cuda", "torch-cuda") if not probe("lstm", b)[0]), None)


@pytest.mark.skipif(PROMETHEUS is None or PROMTOOL is None,
                    reason="prometheus/promtool not installed (Debian package 'prometheus')")
@pytest.mark.slow
@pytest.mark.timeout(180)
def test_every_dashboard_query_returns_data_from_the_running_daemon(tmp_path, panel_queries):
    port = free_port()
    missing_backend = unavailable_lstm_backend()
    # the embedded default (simulated venue, sped up), 1m bars (a decision every 0.5 s), tiny first-run models
    # (seconds); an LSTM backend that is unavailable here, so a backend fallback is counted; a retrain that times
    # out after 3 s (a bounded, failed run: its duration observed, TradingdRetrainFailed fires)
    cfg = write_config(tmp_path / "config.toml", tmp_path / "var", port, speed=120.0, extra=f"""
[simulator]
history_days = 1

[engines]
first_run_xgb_rounds = 20
first_run_lstm_epochs = 1
first_run_lstm_hidden = 8
{f'lstm_backend = "{missing_backend}"' if missing_backend else ""}

[retrain]
timeout_minutes = 0.05

[drift]
# the smallest window, so the drift statistics exist within ~25 s of live 1m bars at this speed
window_bars = 50
""")
    d = Daemon(cfg, tmp_path)
    p = None
    try:
        url = d.wait_line(r"ready: (http://\S+)", 120).group(1)
        t0 = time.time()
        p = Prometheus(tmp_path, f"127.0.0.1:{port}", config=lab_config(f"127.0.0.1:{port}"),
                       files={"alerts.yml": (PROM_DIR / "alerts.yml").read_text()})
        assert p.target()["health"] == "up"
        groups = prom_api(p.url, "rules")["groups"]
        rules = [r for g in groups for r in g["rules"]]
        assert {r["name"] for r in rules} >= {
            "TradingdTargetDown", "TradingdBookStale", "TradingdFeedReconnectStorm", "TradingdDriftAlarm",
            "TradingdRetrainFailed", "TradingdKillSwitchEngaged", "TradingdStoreLag"}
        # a retrain (killed by its timeout: failed), then the kill switch
        assert http_post(url + "/control/retrain", TOKEN) == (200, {"ok": True, "started": True})
        last = wait_until(lambda: orjson.loads(http_get(url + "/status")[1])["retrain"]["last"], 30, "a retrain", d)
        assert not last["ok"] and "timed out" in last["error"], last
        t_retrain = time.time() - t0
        assert http_post(url + "/control/halt", TOKEN)[0] == 200
        for alert in ("TradingdKillSwitchEngaged", "TradingdRetrainFailed"):  # rules without "for": firing at once
            firing = wait_until(lambda: prom_query(p.url, f'ALERTS{{alertname="{alert}"}}'), 20, alert, d)
            assert firing[0]["metric"]["alertstate"] == "firing", firing
        def drift_windows_full() -> bool:  # PSI/KS/calibration are NaN until a window of live bars is in
            got = prom_query(p.url, "tradingd_drift_psi == tradingd_drift_psi and tradingd_drift_calibration "
                                    "== tradingd_drift_calibration")
            return bool(got)
        wait_until(drift_windows_full, 90, "full drift windows", d)
        time.sleep(2 * SCRAPE_S + 1)  # the last events scraped (rate windows see them)
        t1 = time.time()
        empty = {}
        for panel, target in panel_queries:
            if panel["title"] == "Backend fallbacks" and missing_backend is None:
                continue  # every LSTM backend is available on this machine: nothing to fall back from
            expr = substitute(target["expr"])
            if panel["type"] == "timeseries":
                res = prom_api(p.url, "query_range", query=expr, start=str(t0), end=str(t1), step=f"{STEP_S}s")
                ok = any(finite(s["values"]) for s in res["result"])
            else:
                res = prom_api(p.url, "query", query=expr, time=str(t1))
                ok = any(finite([s["value"]]) for s in res["result"])
            if not ok:
                empty[f"{panel['title']} / {target['refId']}"] = expr
        assert empty == {}, empty
        assert len(panel_queries) >= 30
        # rules evaluated without error; the target-down alert did not fire
        rules = [r for g in prom_api(p.url, "rules")["groups"] for r in g["rules"]]
        assert [(r["name"], r.get("lastError")) for r in rules if r["health"] != "ok"] == []
        assert prom_query(p.url, 'ALERTS{alertname="TradingdTargetDown"}') == []
        # the decision outcomes are /status's counters: /metrics read between two /status reads lies between them
        def outcomes():
            st = orjson.loads(http_get(url + "/status")[1])
            return {"order": st["pipeline"]["counters"].get("orders", 0),
                    "no_signal": sum(v for k, v in st["optimizer"]["counters"].items() if k.startswith("no_signal."))}
        before = outcomes()
        text = http_get(url + "/metrics")[1].decode()
        after = outcomes()
        for outcome in ("order", "no_signal"):
            assert before[outcome] <= metric(text, "tradingd_decision_outcomes_total", outcome=outcome) \
                <= after[outcome], (outcome, before, after)
        assert after["no_signal"] > 0  # the decisions were seen (most bars: no edge above the cost)
        print(f"\n{len(panel_queries)} panel queries with data; {len(rules)} alert rules loaded; "
              f"ready -> retrain done {t_retrain:.1f} s (child {last['seconds']} s), queries at {t1 - t0:.1f} s")
        assert d.stop() == 0
    finally:
        if p is not None:
            p.stop()
        d.kill()
