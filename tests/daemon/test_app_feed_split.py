"""`tradingd run` as a real subprocess, eight simulated symbols, its embedded venue limited to 7 streams per
connection (``[venue] max_streams``; a URL naming more is refused with HTTP 400) and the feed told the same
(``[feed] max_streams_per_connection``): 8 symbols x 3 streams go over 4 connections of 2 symbols. Checks: every
book SYNCED in /readyz, /status ``feed.connections`` lists the 4 (each 6 streams, connected, once), /metrics has
them per connection, and a 1m boundary is decided with predictions for every symbol."""
from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from daemon.config import SimulatorConfig
from tests.daemon.harness import Daemon, free_port, http_get, metric, wait_until, write_config

SYMBOLS = ("BTCUSDT",) + tuple(e.split("=")[0] for e in SimulatorConfig().universe[:7])


def write_split_config(path: Path, data_dir: Path, port: int) -> Path:
    return write_config(path, data_dir, port, symbols=SYMBOLS, speed=20.0, extra="""
[venue]
mode = "simulate"
max_streams = 7

[feed]
max_streams_per_connection = 7

[simulator]
history_days = 1
trades_per_s = 2.0

[engines]
family = "per_symbol"
first_run_xgb_rounds = 20
first_run_lstm_epochs = 1
first_run_lstm_hidden = 8

[retrain]
enabled = false
""")


@pytest.mark.slow
@pytest.mark.timeout(170)
def test_eight_symbols_over_four_connections_all_synced_and_decided(tmp_path):
    port = free_port()
    cfg = write_split_config(tmp_path / "config.toml", tmp_path / "var", port)
    d = Daemon(cfg, tmp_path)
    try:
        m = d.wait_line(r"ready: (http://\S+) \(venue simulate \S+, symbols ([A-Z,]+),", 120)
        url = m.group(1)

        def ready():
            code, body = http_get(url + "/readyz")
            return orjson.loads(body) if code == 200 else None
        body = wait_until(ready, 30, "readyz 200", d)
        assert body["books"] == {s: "SYNCED" for s in SYMBOLS}, body

        def all_decided():
            st = orjson.loads(http_get(url + "/status")[1])
            b = st["pipeline"]["boundaries"].get("1m")
            return st if b and b["predicted"] == list(SYMBOLS) else None
        status = wait_until(all_decided, 60, "a 1m boundary decided with predictions for all 8 symbols", d)
        conns = status["feed"]["connections"]
        assert [c["symbols"] for c in conns] == [list(SYMBOLS[i:i + 2]) for i in range(0, 8, 2)], conns
        assert all(c["streams"] == 6 and c["connected"] and c["connects"] == 1 and c["frames"] > 0
                   and not c["errors"] for c in conns), conns
        text = http_get(url + "/metrics")[1].decode()
        for i in range(4):
            assert metric(text, "tradingd_feed_connection_up", connection=str(i)) == 1, i
            assert metric(text, "tradingd_feed_connection_streams", connection=str(i)) == 6, i
            assert metric(text, "tradingd_feed_connection_connects_total", connection=str(i)) == 1, i
        assert metric(text, "tradingd_feed_connection_up", connection="4") == 0  # no fifth connection
        rc = d.stop()
        assert rc == 0, d.stderr()[-3000:]
    finally:
        d.kill()
    err = d.stderr()
    assert '"level": "error"' not in err, [ln for ln in err.splitlines() if '"level": "error"' in ln][:5]
