"""`tradingd run` as a real subprocess with EIGHT symbols of the simulator's correlated universe (issue #16).

One simulated market per symbol (the common factor plus each symbol's own moves, per-symbol filters), first-run
training on the first symbol, priming of all eight, then live 1m bars: at each 1m boundary the pipeline decides
all symbols together (one batched inference call per model, one ``decide_universe``). Checks: every book SYNCED in
/readyz; /status shows a 1m boundary decided with a row AND predictions for every symbol, none missing; SIGTERM ->
exit 0 with no error logged, and a store whose positions equal the sum of its fills.
"""
from __future__ import annotations

import time
from pathlib import Path

import orjson
import pytest

from daemon.config import SimulatorConfig
from tests.daemon.harness import Daemon, check_store, free_port, http_get, metric, wait_until, write_config

SYMBOLS = ("BTCUSDT",) + tuple(e.split("=")[0] for e in SimulatorConfig().universe[:7])


def write_universe_config(path: Path, data_dir: Path, port: int) -> Path:
    return write_config(path, data_dir, port, symbols=SYMBOLS, speed=20.0, extra="""
[venue]
mode = "simulate"

[simulator]
history_days = 1
trades_per_s = 2.0

[broker]
taker_fee = 0.0
maker_fee = 0.0

[engines]
family = "per_symbol"  # the per-symbol models, batched (universe mode: test_app_universe_models.py)
first_run_xgb_rounds = 20
first_run_lstm_epochs = 1
first_run_lstm_hidden = 8

[retrain]
enabled = false
""")


@pytest.mark.slow
@pytest.mark.timeout(170)
def test_eight_symbols_decided_together_at_a_boundary(tmp_path):
    assert len(SYMBOLS) == 8 and len(set(SYMBOLS)) == 8
    port = free_port()
    data = tmp_path / "var"
    cfg = write_universe_config(tmp_path / "config.toml", data, port)
    t_start = time.monotonic()
    d = Daemon(cfg, tmp_path)
    try:
        m = d.wait_line(r"ready: (http://\S+) \(venue simulate \S+, symbols ([A-Z,]+),", 120)
        url = m.group(1)
        assert m.group(2) == ",".join(SYMBOLS)

        def ready():
            code, body = http_get(url + "/readyz")
            return orjson.loads(body) if code == 200 else None
        body = wait_until(ready, 30, "readyz 200", d)
        assert body["books"] == {s: "SYNCED" for s in SYMBOLS}, body

        def all_decided():
            st = orjson.loads(http_get(url + "/status")[1])
            b = st["pipeline"]["boundaries"].get("1m")
            if b and b["symbols"] == list(SYMBOLS) and b["predicted"] == list(SYMBOLS):
                return st
            return None
        status = wait_until(all_decided, 60, "a 1m boundary decided with predictions for all 8 symbols", d)
        b = status["pipeline"]["boundaries"]["1m"]
        assert b["missing"] == [] and b["close_ns"] > 0, b
        ranked = {r["symbol"] for r in b["ranking"]}
        assert ranked <= set(SYMBOLS), b  # only the universe's symbols compete for the slots
        c = status["pipeline"]["counters"]
        assert c["decisions"] >= 8 and c.get("unknown_symbol", 0) == 0, c
        assert status["optimizer"]["counters"]["universe_decisions"] >= 1, status["optimizer"]
        assert set(status["pipeline"]["book_states"]) == set(SYMBOLS), status["pipeline"]
        text = http_get(url + "/metrics")[1].decode()
        for s in SYMBOLS:
            assert metric(text, "tradingd_book_synced", symbol=s) == 1, s
            assert metric(text, "tradingd_bars_total", symbol=s, timeframe="1m") >= 1, s
        print(f"\nboundary {b['close_ns']} ({b['reason']}): ranking {b['ranking']}; intents {b['intents']}")
        rc = d.stop()
        assert rc == 0, d.stderr()[-3000:]
    finally:
        d.kill()
    print(f"run time {time.monotonic() - t_start:.1f} s")
    err = d.stderr()
    assert '"level": "error"' not in err, [ln for ln in err.splitlines() if '"level": "error"' in ln][:5]
    check_store(data / "tradingd.sqlite")
