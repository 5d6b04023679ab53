"""`tradingd run` as a real subprocess with TWO symbols on the simulated venue (issue #5).

One simulator per symbol (daemon.venue.server.SimulatorSource; each starts at its own price, BTC at
``simulator.start_price``, ETH at its ``simulator.universe`` entry, moving with the market factor plus its own
seeded moves), first-run training on the FIRST symbol's klines only (daemon.firstrun.ensure_models), then
priming, live bars and predictions for BOTH symbols: the features are returns-based, so a model trained on one
symbol's history still answers for the other. Checks: both books SYNCED in /readyz, frames and live bars per
symbol in /metrics, both symbols in /status (books, marks, book states), a 1m decision with both engines'
predictions for each symbol, SIGTERM -> exit 0, and a store with primed + live 1m bars for both symbols whose
positions equal the sum of its fills.
"""
from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import orjson
import pytest

from daemon.config import SimulatorConfig
from daemon.venue.simulator import symbol_spec
from tests.daemon.harness import Daemon, check_store, free_port, http_get, metric, wait_until, write_config

SYMBOLS = ("BTCUSDT", "ETHUSDT")


def write_multi_config(path: Path, data_dir: Path, port: int, symbols=SYMBOLS) -> Path:
    return write_config(path, data_dir, port, symbols=symbols, extra="""
[venue]
mode = "simulate"

[simulator]
history_days = 1
trades_per_s = 10.0

[broker]
taker_fee = 0.0
maker_fee = 0.0

[engines]
first_run_xgb_rounds = 50
first_run_lstm_epochs = 1
first_run_lstm_hidden = 8

[retrain]
enabled = false
""")


@pytest.mark.slow
@pytest.mark.timeout(170)
def test_two_symbols_on_the_simulator(tmp_path):
    port = free_port()
    data = tmp_path / "var"
    cfg = write_multi_config(tmp_path / "config.toml", data, port)
    t_start = time.monotonic()
    d = Daemon(cfg, tmp_path)
    try:
        # first-run training happens on the first symbol's klines only
        d.wait_line(r"first run: no models for 1m; fetching 1 days of BTCUSDT 1m klines", 30)
        d.wait_line(r"first run: trained 1m in ([0-9.]+) s", 90)
        m = d.wait_line(r"ready: (http://\S+) \(venue simulate \S+, symbols ([A-Z,]+),", 30)
        url = m.group(1)
        assert m.group(2) == ",".join(SYMBOLS)

        # /readyz: ready only when EVERY book is SYNCED
        def ready():
            code, body = http_get(url + "/readyz")
            return orjson.loads(body) if code == 200 else None
        body = wait_until(ready, 30, "readyz 200", d)
        assert body["books"] == {s: "SYNCED" for s in SYMBOLS}, body

        # priming ran for both symbols (the log says how many feature rows each got)
        err = d.stderr()
        primed = [orjson.loads(line) for line in err.splitlines()
                  if line.startswith("{") and '"primed"' in line]
        primed = {p["symbol"]: p for p in primed if p.get("event") == "primed"}
        assert set(primed) == set(SYMBOLS), err[-3000:]
        assert all(p["rows"] > 0 for p in primed.values()), primed

        # a live 1m bar for both symbols, and for each a decision with xgboost AND lstm predictions
        seen: dict[str, dict] = {}

        def both_decided():
            st = orjson.loads(http_get(url + "/status")[1])
            for dec in st.get("last_decisions", []):
                if dec["timeframe"] == "1m" and dec["predictions"]:
                    seen.setdefault(dec["symbol"], dec)
            return st if set(seen) >= set(SYMBOLS) else None
        status = wait_until(both_decided, 80, "a 1m decision with predictions for both symbols", d)
        for s in SYMBOLS:
            preds = seen[s]["predictions"]
            assert set(preds) == {"xgboost", "lstm"}, seen
            assert all(0.0 <= p <= 1.0 for p in preds.values()), seen

        text = http_get(url + "/metrics")[1].decode()
        for s in SYMBOLS:
            assert metric(text, "tradingd_frames_total", symbol=s, stream="trade") > 0, s
            assert metric(text, "tradingd_frames_total", symbol=s, stream="depth@100ms") > 0, s
            assert metric(text, "tradingd_bars_total", symbol=s, timeframe="1m") >= 1, s
            assert metric(text, "tradingd_book_synced", symbol=s) == 1, s
        assert metric(text, "tradingd_predictions_total", engine="xgboost") >= 2
        assert metric(text, "tradingd_predictions_total", engine="lstm") >= 2
        assert metric(text, "tradingd_ready") == 1

        # /status names both symbols everywhere a symbol appears
        assert set(status["feed"]["books"]) == set(SYMBOLS), status["feed"]
        assert set(status["pipeline"]["book_states"]) == set(SYMBOLS), status["pipeline"]
        assert all(v == "SYNCED" for v in status["pipeline"]["book_states"].values()), status["pipeline"]
        assert set(status["account"]["marks"]) == set(SYMBOLS), status["account"]
        start = {s: symbol_spec(SimulatorConfig(), s).start_price for s in SYMBOLS}  # 60000 and 3000
        assert all(0.85 * start[s] < v < 1.15 * start[s] for s, v in status["account"]["marks"].items())
        assert status["pipeline"]["counters"]["decisions"] >= 2
        assert status["pipeline"]["counters"].get("unknown_symbol", 0) == 0
        assert status["pipeline"]["counters"]["primed_rows"] == sum(p["rows"] for p in primed.values())
        print(f"\nfirst live decisions: { {s: seen[s]['predictions'] for s in SYMBOLS} }; "
              f"account fills {status['account']['fills']}")

        rc = d.stop()
        assert rc == 0, d.stderr()[-3000:]
    finally:
        d.kill()
    print(f"run time {time.monotonic() - t_start:.1f} s")
    err = d.stderr()
    assert '"event": "stopped"' in err
    assert '"level": "error"' not in err, [ln for ln in err.splitlines() if '"level": "error"' in ln][:5]
    check_store(data / "tradingd.sqlite")
    db = sqlite3.connect(f"file:{data / 'tradingd.sqlite'}?mode=ro", uri=True)
    try:
        counts = dict(db.execute("SELECT symbol, COUNT(*) FROM bars WHERE timeframe='1m' GROUP BY symbol"))
        assert set(counts) == set(SYMBOLS), counts
        # BTCUSDT: the day of training history; both: the priming history and the live bars
        assert counts["BTCUSDT"] >= 1440 - 5, counts
        closes = {}
        for s in SYMBOLS:  # the live bar each decision was made on was stored too
            row = db.execute("SELECT close FROM bars WHERE symbol=? AND timeframe='1m' AND open_ns=?",
                             (s, seen[s]["bar_open_ns"])).fetchone()
            assert row is not None, (s, seen[s])
            closes[s] = row[0]
        hist = {s: [r[0] for r in db.execute("SELECT close FROM bars WHERE symbol=? AND timeframe='1m' "
                                             "ORDER BY open_ns DESC LIMIT 60", (s,))] for s in SYMBOLS}
        assert hist["BTCUSDT"] != hist["ETHUSDT"], closes  # two separate markets, not one copied
    finally:
        db.close()
