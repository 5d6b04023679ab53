"""A real Prometheus server scrapes the daemon's /metrics (daemon.http.HttpServer + daemon.metrics.Metrics) on
loopback every second; its query API must report the target up and the exact counter values we set."""
from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import threading
import time
import urllib.parse
import urllib.request

import orjson
import pytest

from daemon.http import HttpHooks, HttpServer
from daemon.metrics import Metrics

PROMETHEUS = shutil.which("prometheus")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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


def query(prom: str, q: str) -> list:
    url = f"{prom}/api/v1/query?{urllib.parse.urlencode({'query': q})}"
    with urllib.request.urlopen(url, timeout=5) as r:
        body = orjson.loads(r.read())
    assert body["status"] == "success", body
    return body["data"]["result"]


@pytest.mark.skipif(PROMETHEUS is None, reason="prometheus binary not installed (Debian package 'prometheus')")
@pytest.mark.timeout(90)
def test_real_prometheus_scrapes_daemon_metrics(tmp_path):
    m = Metrics()
    m.frames.labels("simulate", "BTCUSDT", "trade").inc(1234)
    m.bars.labels("BTCUSDT", "1m").inc(7)
    m.tick_to_decision.observe(0.0021)
    srv = ServerThread(m)
    prom_port = free_port()
    (tmp_path / "prometheus.yml").write_text(f"""
global:
  scrape_interval: 1s
  scrape_timeout: 1s
scrape_configs:
  - job_name: tradingd
    static_configs:
      - targets: ["127.0.0.1:{srv.server.port}"]
""")
    proc = subprocess.Popen([PROMETHEUS, f"--config.file={tmp_path / 'prometheus.yml'}",
                             f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                             f"--web.listen-address=127.0.0.1:{prom_port}"],
                            stdout=subprocess.DEVNULL, stderr=open(tmp_path / "prometheus.log", "wb"))
    prom = f"http://127.0.0.1:{prom_port}"
    try:
        deadline = time.monotonic() + 60
        up = frames = None
        while time.monotonic() < deadline:
            assert proc.poll() is None, (tmp_path / "prometheus.log").read_text()[-2000:]
            try:
                up = query(prom, 'up{job="tradingd"}')
                frames = query(prom, 'tradingd_frames_total{stream="trade"}')
            except OSError:
                time.sleep(0.5)
                continue
            if up and up[0]["value"][1] == "1" and frames:
                break
            time.sleep(0.5)
        assert up and up[0]["value"][1] == "1", (up, (tmp_path / "prometheus.log").read_text()[-2000:])
        assert frames and float(frames[0]["value"][1]) == 1234
        assert frames[0]["metric"]["symbol"] == "BTCUSDT" and frames[0]["metric"]["venue"] == "simulate"
        bars = query(prom, 'tradingd_bars_total{timeframe="1m"}')
        assert float(bars[0]["value"][1]) == 7
        cnt = query(prom, "tradingd_tick_to_decision_seconds_count")
        assert float(cnt[0]["value"][1]) == 1
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        srv.stop()
