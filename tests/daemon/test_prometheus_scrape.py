"""A real Prometheus server scrapes the daemon's /metrics on loopback every second: (a) the HTTP server with
values we set (model versions included), (b) `tradingd run` itself. The target must be up, every metric family
known to Prometheus, and `promtool check metrics` clean."""
from __future__ import annotations

import asyncio
import subprocess
import threading
import time

import orjson
import pytest

from daemon.http import HttpHooks, HttpServer
from daemon.metrics import Metrics
from tests.daemon.harness import PROMETHEUS, PROMTOOL, Prometheus, free_port
from tests.daemon.harness import prom_query as query


class ServerThread:
    """The daemon's HTTP server on its own event loop in a thread."""

    def __init__(self, metrics: Metrics) -> None:
        hooks = HttpHooks(render_metrics=metrics.render, health=lambda: (True, {}), ready=lambda: (True, {}),
                          status=lambda: {})
        self.server = HttpServer(hooks, "127.0.0.1", 0, None)
        self.loop = asyncio.new_event_loop()
        self.started = threading.Event()
        self.t = threading.Thread(target=self._run, daemon=True)
        self.t.start()
        assert self.started.wait(10)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self.server.start())
        self.started.set()
        self.loop.run_forever()

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.server.stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.t.join(10)


def family_names(m: Metrics) -> set[str]:
    return {fam.name + ("_total" if fam.type == "counter" else "") for fam in m.registry.collect()}


def promtool_problems(body: bytes) -> str:
    """`promtool check metrics` output for the exposition body ("" when clean)."""
    r = subprocess.run([PROMTOOL, "check", "metrics"], input=body, capture_output=True, timeout=30)
    return "" if r.returncode == 0 else (r.stdout + r.stderr).decode(errors="replace")


@pytest.mark.skipif(PROMETHEUS is None, reason="prometheus binary not installed (Debian package 'prometheus')")
@pytest.mark.timeout(90)
def test_real_prometheus_scrapes_daemon_metrics(tmp_path):
    m = Metrics()
    m.frames.labels("simulate", "BTCUSDT", "trade").inc(1234)
    m.bars.labels("BTCUSDT", "1m").inc(7)
    m.tick_to_decision.observe(0.0021)
    m.set_models({"1m": {"xgboost": {"version": "v1", "backend": "xgboost-cpu"},
                         "lstm": {"version": "v2", "backend": "torch-cpu"}}})
    srv = ServerThread(m)
    p = Prometheus(tmp_path, f"127.0.0.1:{srv.server.port}")
    proc, prom = p.proc, p.url
    try:
        deadline = time.monotonic() + 60
        up = frames = None
        while time.monotonic() < deadline:
            assert proc.poll() is None, p.log.read_text()[-2000:]
            try:
                up = query(prom, 'up{job="tradingd"}')
                frames = query(prom, 'tradingd_frames_total{stream="trade"}')
            except OSError:
                time.sleep(0.5)
                continue
            if up and up[0]["value"][1] == "1" and frames:
                break
            time.sleep(0.5)
        assert up and up[0]["value"][1] == "1", (up, p.log.read_text()[-2000:])
        assert frames and float(frames[0]["value"][1]) == 1234
        assert frames[0]["metric"]["symbol"] == "BTCUSDT" and frames[0]["metric"]["venue"] == "simulate"
        bars = query(prom, 'tradingd_bars_total{timeframe="1m"}')
        assert float(bars[0]["value"][1]) == 7
        cnt = query(prom, "tradingd_tick_to_decision_seconds_count")
        assert float(cnt[0]["value"][1]) == 1
        models = query(prom, "tradingd_model_version_info")
        assert {(r["metric"]["timeframe"], r["metric"]["kind"], r["metric"]["version"], r["metric"]["backend"])
                for r in models} == {("1m", "xgboost", "v1", "xgboost-cpu"), ("1m", "lstm", "v2", "torch-cpu")}
        # a swap replaces the label sets: only the new version shows
        m.set_models({"1m": {"xgboost": {"version": "v3", "backend": "xgboost-cpu"},
                             "lstm": {"version": "v2", "backend": "torch-cpu"}}})
        assert b'version="v1"' not in m.render() and b'version="v3"' in m.render()
    finally:
        p.stop()
        srv.stop()


@pytest.mark.skipif(PROMETHEUS is None or PROMTOOL is None,
                    reason="prometheus/promtool not installed (Debian package 'prometheus')")
@pytest.mark.slow
@pytest.mark.timeout(240)
def test_real_prometheus_scrapes_the_running_daemon(tmp_path):
    """`tradingd run` (simulator, first-run models) scraped by a real Prometheus: target up, every family of
    daemon.metrics known to Prometheus, the model versions in use as labels, promtool clean, and each failure
    /status counts (pipeline, recorder, store writer, dropped bars) exported with the same value."""
    from tests.daemon.harness import Daemon, http_get, write_config
    port = free_port()
    # two timeframes: model keys like "1m_lstm" and "5m_lstm" once became the same invalid label "_m_lstm"
    cfg = write_config(tmp_path / "config.toml", tmp_path / "var", port, timeframes=("1m", "5m"), extra="""
[venue]
mode = "simulate"

[simulator]
history_days = 2

[engines]
first_run_xgb_rounds = 20
first_run_lstm_epochs = 1
first_run_lstm_hidden = 8
""")
    d = Daemon(cfg, tmp_path)
    p = None
    try:
        url = d.wait_line(r"ready: (http://\S+)", 200).group(1)
        p = Prometheus(tmp_path, f"127.0.0.1:{port}")
        target = p.target()
        assert target["health"] == "up", target
        code, body = http_get(url + "/metrics")
        assert code == 200
        assert promtool_problems(body) == ""
        want = family_names(Metrics())
        deadline = time.monotonic() + 30
        while not want <= (got := p.families()) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert want <= got, sorted(want - got)
        status = orjson.loads(http_get(url + "/status")[1])
        models = query(p.url, "tradingd_model_version_info")
        assert {(r["metric"]["timeframe"], r["metric"]["kind"], r["metric"]["version"], r["metric"]["backend"])
                for r in models} == {(tf, k, i["version"], i["backend"]) for tf in ("1m", "5m")
                                     for k, i in status["models"][tf].items()}
        # every failure counted in /status is a series in Prometheus, with the value /status shows
        pipe, store = status["pipeline"]["counters"], status["store"]

        def prom_value(q: str) -> float:
            r = query(p.url, q)
            assert r, f"no series for {q}"
            return float(r[0]["value"][1])
        for kind in ("predict", "bar_store", "plan_store"):
            assert prom_value(f'tradingd_pipeline_errors_total{{kind="{kind}"}}') == pipe.get(f"{kind}_errors", 0)
        for event in ("dropped", "full_waits", "errors", "skipped"):
            assert prom_value(f'tradingd_store_writer_events_total{{event="{event}"}}') == store[event]
        assert prom_value('tradingd_store_dropped_bars_total{reason="queue_full"}') == \
            store["dropped_bars_queue_full"]
        assert prom_value('tradingd_store_dropped_bars_total{reason="write_failed"}') == store["dropped_bars_failed"]
        assert prom_value("tradingd_record_errors_total") == 0
        assert prom_value("tradingd_ready") == 1
        assert d.stop() == 0
    finally:
        if p is not None:
            p.stop()
        d.kill()
