"""`tradingd run` as a real subprocess: config -> store -> venue -> models -> feed -> HTTP -> SIGTERM.

(a) simulator venue, empty registry: first-run training with the small spec, then live bars, predictions, an
    order and its fill, the control endpoints, a clean SIGTERM drain and a store whose positions equal the sum
    of its fills; (b) replay of the real recording (both files, given as the directory) with models trained
    here on real klines; (c) a truncated model file -> exit 3; (d) bad config -> exit 2 naming the key.
Each run is bounded; every process started is killed in a finally.
"""
from __future__ import annotations

import re
import shutil
import sqlite3
import subprocess
import time
from pathlib import Path

import orjson
import pytest

from tests.daemon.harness import (PY, ROOT, TOKEN, Daemon, check_store, free_port, http_get, http_post, json_lines,
                                  metric, wait_until, write_config)


@pytest.fixture(scope="module")
def trained_registry(tmp_path_factory, btc_klines_path) -> Path:
    """Tiny 1m models trained on 4 days of real BTCUSDT klines (the small first-run spec)."""
    from engines.data import load_klines_csv
    from engines.registry import ModelRegistry
    from engines.train import TrainSpec, train_and_publish
    root = tmp_path_factory.mktemp("registry")
    k = load_klines_csv(btc_klines_path, symbol="BTCUSDT")[: 4 * 1440]
    train_and_publish(k, TrainSpec("1m", xgb_rounds=50, lstm_epochs=1, lstm_hidden=8), ModelRegistry(root))
    return root


# ------------------------------------------------------------------------------------------------ (a)
@pytest.mark.slow
@pytest.mark.timeout(150)
def test_simulator_first_run_trades_and_drains(tmp_path):
    port = free_port()
    data = tmp_path / "var"
    cfg = write_config(tmp_path / "config.toml", data, port, extra="""
[venue]
mode = "simulate"

[simulator]
history_days = 2
trades_per_s = 20.0
seed = 21  # the trend is up at the live start (+1.0 %/h): the long-only default enters within a few bars

[broker]
taker_fee = 0.0
maker_fee = 0.0

[engines]
first_run_xgb_rounds = 100
""")
    d = Daemon(cfg, tmp_path)
    try:
        m = d.wait_line(r"first run: trained 1m in ([0-9.]+) s", 90)
        train_s = float(m.group(1))
        url = d.wait_line(r"ready: (http://\S+)", 30).group(1)
        assert url == f"http://127.0.0.1:{port}"
        # first-run training ran in a child process (its memory went back to the OS when it exited)
        trained = [r for r in json_lines(d.stderr()) if r.get("event") == "first_run_trained"]
        assert len(trained) == 1 and trained[0]["daemon_pid"] == d.p.pid, trained
        assert trained[0]["train_pid"] != d.p.pid
        assert re.search(rf"first run: 1m done in [0-9.]+ s \(versions .*; pid {trained[0]['train_pid']}\)",
                         "\n".join(d.lines))
        wait_until(lambda: http_get(url + "/readyz")[0] == 200, 20, "readyz 200", d)
        code, body = http_get(url + "/healthz")
        assert code == 200 and orjson.loads(body)["ok"] is True
        # the first live 1m bar closes at the next minute boundary: bars, predictions, an order and its fill
        def traded():
            text = http_get(url + "/metrics")[1].decode()
            return text if metric(text, "tradingd_fills_total") >= 1 else None
        text = wait_until(traded, 75, "a bar close with predictions, an order and a fill", d)
        assert metric(text, "tradingd_frames_total", stream="trade") > 0
        assert metric(text, "tradingd_frames_total", stream="depth@100ms") > 0
        assert metric(text, "tradingd_bars_total", timeframe="1m") >= 1
        assert metric(text, "tradingd_predictions_total", engine="xgboost") >= 1
        assert metric(text, "tradingd_predictions_total", engine="lstm") >= 1  # primed window: LSTM at once
        assert metric(text, "tradingd_orders_total") >= 1
        assert metric(text, "tradingd_tick_to_decision_seconds_count") >= 1
        assert metric(text, "tradingd_book_synced", symbol="BTCUSDT") == 1
        assert metric(text, "tradingd_ready") == 1
        status = orjson.loads(http_get(url + "/status")[1])
        assert status["models"]["1m"]["xgboost"]["backend"] and status["models"]["1m"]["lstm"]["backend"]
        assert status["account"]["fills"] >= 1 and status["risk"]["state"] == "ACTIVE"
        lat = status["pipeline"]["tick_to_decision"]
        print(f"\nfirst-run training {train_s:.1f} s; tick-to-decision {lat}; timings {status['timings']}")
        # store writes run on the writer thread: committed there, nothing failed, the lag is exported
        assert status["store"]["committed"] >= 2 and status["store"]["error"] is None, status["store"]
        assert metric(text, "tradingd_store_commit_lag_seconds_count") >= 1
        print(f"store writer {status['store']}")
        # control: refused without the token, then halt / flatten / resume with it
        assert http_post(url + "/control/halt", None)[0] == 401
        code, body = http_post(url + "/control/halt", TOKEN)
        assert code == 200 and body["risk_state"] == "HALTED"
        code, body = http_post(url + "/control/flatten", TOKEN)
        assert code == 200 and body["ok"]
        status = orjson.loads(http_get(url + "/status")[1])
        assert all(p["qty"] == 0.0 for p in status["account"]["positions"].values()), status["account"]
        # flat: the stored exit plan (written by the store's writer thread, for restarts) is gone too
        def no_plan():
            db = sqlite3.connect(f"file:{data / 'tradingd.sqlite'}?mode=ro", uri=True)
            try:
                return db.execute("SELECT COUNT(*) FROM kv WHERE key LIKE 'exit_plan.%'").fetchone()[0] == 0
            finally:
                db.close()
        wait_until(no_plan, 10, "exit plan deleted after flatten", d)
        code, body = http_post(url + "/control/resume", TOKEN)
        assert code == 200 and body["risk_state"] == "ACTIVE"
        rc = d.stop()
        assert rc == 0, d.stderr()[-3000:]
    finally:
        d.kill()
    pos = check_store(data / "tradingd.sqlite")
    assert pos.get("BTCUSDT", 0.0) == 0.0  # flattened
    db = sqlite3.connect(data / "tradingd.sqlite")
    n_bars = db.execute("SELECT COUNT(*) FROM bars WHERE timeframe='1m'").fetchone()[0]
    assert n_bars >= 2 * 1440 - 5  # primed history + live bars, for the retrainer
    assert db.execute("SELECT COUNT(*) FROM model_versions WHERE active=1").fetchone()[0] == 2
    assert '"event": "stopped"' in d.stderr()


# ------------------------------------------------------------------------------------------------ (b)
@pytest.mark.slow
@pytest.mark.timeout(120)
@pytest.mark.parametrize("warm", [False, True], ids=["no-history", "klines-history"])
def test_replay_of_real_recording(tmp_path, binance_recording, trained_registry, btc_klines_path, warm):
    """The real recording replayed by the local venue. Without history the features are still warming up after
    its 11 minutes (no prediction); with ``venue.history`` (real BTC 1m klines served before the recording,
    moved to end where it starts) the first replayed bars are predicted and decided on."""
    port = free_port()
    data = tmp_path / "var"
    rec_dir = binance_recording[0].parent  # both files: a directory replays its *.gz in name (= time) order
    # with history: zero fees, so the 1m decisions of these 11 minutes can clear costs and the paper broker
    # fills against the REAL recorded book (the default fees are exercised by the simulator test's store check)
    history = f'history = "{btc_klines_path}"\n\n[broker]\ntaker_fee = 0.0\nmaker_fee = 0.0' if warm else ""
    cfg = write_config(tmp_path / "config.toml", data, port, extra=f"""
[venue]
mode = "replay"
recording = "{rec_dir}"
speed = 0.0
{history}

[engines]
registry = "{trained_registry}"
train_on_first_run = false
""")
    d = Daemon(cfg, tmp_path)
    try:
        url = d.wait_line(r"ready: (http://\S+)", 60).group(1)
        wait_until(lambda: http_get(url + "/readyz")[0] == 200, 30, "readyz 200", d)

        def replayed():
            text = http_get(url + "/metrics")[1].decode()
            return text if metric(text, "tradingd_frames_total", stream="trade") >= 19_904 else None
        text = wait_until(replayed, 60, "all 19,904 recorded trades", d)
        assert metric(text, "tradingd_frames_total", stream="depth@100ms") >= 6_000
        assert metric(text, "tradingd_frames_total", stream="trade") == 19_904
        assert 9 <= metric(text, "tradingd_bars_total", timeframe="1m") <= 11  # 11 minutes of recording
        assert metric(text, "tradingd_decode_errors_total") == 0
        status = orjson.loads(http_get(url + "/status")[1])
        if warm:  # primed from the served history: every live 1m bar of the recording is predicted
            assert status["pipeline"]["counters"]["primed_rows"] > 0
            assert metric(text, "tradingd_predictions_total", timeframe="1m", engine="xgboost") >= 9
            assert metric(text, "tradingd_predictions_total", timeframe="1m", engine="lstm") >= 9
            preds = [d["predictions"] for d in status["last_decisions"] if d["timeframe"] == "1m"]
            assert preds and all(0.0 <= p <= 1.0 for d in preds for p in d.values()), preds
            assert metric(text, "tradingd_orders_total") >= 1 and metric(text, "tradingd_fills_total") >= 1
            print(f"\nreplay with history: {status['pipeline']['counters']}, fills {status['account']['fills']}")
        else:
            # features need 48 bars of warm-up and a replay venue has no history before its recording: no
            # predictions (so no orders) in 11 minutes; the counters say so rather than guessing
            assert metric(text, "tradingd_predictions_total") == 0
        assert status["pipeline"]["counters"]["decisions"] >= 9
        assert status["feed"]["books"]["BTCUSDT"]["gaps"] == 0
        rc = d.stop()
        assert rc == 0, d.stderr()[-3000:]
    finally:
        d.kill()
    check_store(data / "tradingd.sqlite")


# ------------------------------------------------------------------------------------------------ (c)
@pytest.mark.timeout(90)
def test_truncated_model_refuses_to_start(tmp_path, trained_registry):
    reg = tmp_path / "models"
    shutil.copytree(trained_registry, reg)
    version = (reg / "1m" / "xgboost" / "current").read_text().strip()
    vdir = reg / "1m" / "xgboost" / version
    victim = max((p for p in vdir.iterdir() if p.is_file() and p.name != "manifest.json"),
                 key=lambda p: p.stat().st_size)
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    cfg = write_config(tmp_path / "config.toml", tmp_path / "var", free_port(), extra=f"""
[venue]
mode = "simulate"

[engines]
registry = "{reg}"
train_on_first_run = false
""")
    d = Daemon(cfg, tmp_path)
    try:
        rc = d.p.wait(60)
    finally:
        d.kill()
    err = d.stderr()
    assert rc == 3, err[-2000:]
    assert "start-up failed" in err and "model refused" in err and victim.name in err


# ------------------------------------------------------------------------------------------------ (d)
@pytest.mark.parametrize("body, key", [
    ("[http]\nport = 99999\n", "http.port"),
    ("[venue]\nmode = \"moon\"\n", "venue.mode"),
    ("[engines]\nno_such_option = 1\n", "engines.no_such_option"),
])
def test_bad_config_exits_2_naming_the_key(tmp_path, body, key):
    cfg = tmp_path / "bad.toml"
    cfg.write_text(body)
    p = subprocess.run([PY, "-m", "daemon.cli", "run", "--config", str(cfg)], cwd=ROOT, capture_output=True,
                       timeout=60)
    assert p.returncode == 2, p.stderr.decode()[-2000:]
    assert key in p.stderr.decode()


# ------------------------------------------------------------------------------------------------ newcomer
@pytest.mark.slow
@pytest.mark.timeout(600)
def test_embedded_default_trades_with_fees(tmp_path):
    """The embedded default as a newcomer gets it (sped-up simulator, 0.1 % fees, the shipped optimizer), with
    only the state dir, the port and the timeframes (1h alone: first-run training in seconds) set: a 1h decision
    after ready (a 1h bar closes every 30 s on a quiet box; waited for up to 120 s, since a starved loop slows the
    simulated market: the time is measured by benchmarks/bench_newcomer.py, not asserted), then an order and a
    fee-paying fill. The optimizer enters
    only where the edge clears the fees, ~8 % of 1h closes on this market (README), so the fill is waited for
    up to 360 s (12 event hours); logs piped -> JSON lines on both streams, progress lines included."""
    port = free_port()
    data = tmp_path / "var"
    cfg = tmp_path / "config.toml"
    cfg.write_text(f'[general]\ntimeframes = ["1h"]\ndata_dir = "{data}"\n\n[http]\nport = {port}\n')
    d = Daemon(cfg, tmp_path)
    try:
        url = d.wait_line(r"ready: (http://\S+)", 150).group(1)
        t_ready = time.monotonic()

        def status():
            return orjson.loads(http_get(url + "/status")[1])
        wait_until(lambda: status()["pipeline"]["counters"].get("decisions", 0) >= 1, 120, "a 1h decision", d)
        t_decision = time.monotonic() - t_ready
        st = wait_until(lambda: (s := status())["account"]["fills"] >= 1 and s, 360, "an order and a fill", d)
        t_fill = time.monotonic() - t_ready
        assert st["broker"]["stats"]["orders"] >= 1 and st["account"]["fees"] > 0, st["account"]
        d.wait_line(r"trading: \d+ decisions .*, [1-9]\d* fills", 15)  # the console progress line
        print(f"\nready -> first decision {t_decision:.1f} s, first fill {t_fill:.1f} s; account {st['account']}")
        assert d.stop() == 0
    finally:
        d.kill()
    assert d.lines and all(orjson.loads(x)["event"].startswith("tradingd: ") for x in d.lines)  # no plain lines
    err = d.stderr()
    assert all(line.startswith("{") for line in err.splitlines() if line.strip()), err[-2000:]
    check_store(data / "tradingd.sqlite")
