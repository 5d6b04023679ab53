"""`tradingd run` with recorder.enabled: every raw frame and the REST snapshot land in the replayable format,
and the book rebuilt from the recording applies every diff with no gap."""
from __future__ import annotations

import time

import orjson
import pytest

from daemon.binance.codec import decode_frame
from daemon.binance.bookcheck import BookChecker
from market.events import DepthSnapshot, DepthUpdate, Trade
from daemon.recording import RecordingReader
from tests.daemon.harness import Daemon, free_port, http_get, metric, write_config


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_daemon_records_what_it_receives(tmp_path):
    port = free_port()
    cfg = write_config(tmp_path / "config.toml", tmp_path / "var", port, extra="""
[venue]
mode = "simulate"

[simulator]
history_days = 2

[engines]
first_run_xgb_rounds = 30
first_run_lstm_epochs = 1
first_run_lstm_hidden = 8

[recorder]
enabled = true
dir = "rec"
""")
    d = Daemon(cfg, tmp_path)
    try:
        url = d.wait_line(r"ready: (http://\S+)", 120).group(1)
        time.sleep(4)
        text = http_get(url + "/metrics")[1].decode()
        st = orjson.loads(http_get(url + "/status")[1])
        assert st["recorder"]["errors"] == 0 and st["recorder"]["files"]
        assert d.stop() == 0
    finally:
        d.kill()
    files = sorted((tmp_path / "var" / "rec").glob("*.gz"))
    assert files
    reader = RecordingReader(files)
    checker = BookChecker()
    kinds = {"trade": 0, "depth": 0, "snapshot": 0}
    for recv_ns, raw in reader:
        ev = decode_frame(raw, recv_ns)
        if isinstance(ev, Trade):
            kinds["trade"] += 1
        elif isinstance(ev, DepthUpdate):
            kinds["depth"] += 1
        elif isinstance(ev, DepthSnapshot):
            kinds["snapshot"] += 1
            assert ev.symbol == "BTCUSDT"
        checker.on_event(ev)
    assert reader.stats.bad_lines == 0
    assert kinds["snapshot"] >= 1 and kinds["depth"] > 10 and kinds["trade"] > 0
    s = checker.summary()
    assert s["gaps"] == 0 and s["applied"] > 10
    # the recording holds at least what the daemon had counted when we scraped it
    assert kinds["trade"] >= metric(text, "tradingd_frames_total", stream="trade")
