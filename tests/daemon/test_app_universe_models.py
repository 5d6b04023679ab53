"""`tradingd run` in universe mode (issue #16): EIGHT simulated symbols, the pooled universe models trained
beforehand by `tradingd train --data DIR` on 1m klines the simulator generates (its seeded history), published into
the registry the daemon loads. Checks: every book SYNCED; a 1m boundary decided with an expected_return for every
symbol; ONE inference call per model per boundary; /status shows the universe models' version, weights and
calibration; the first run trains the bundle itself from every symbol's history; a registry without a bundle (and
no first-run training) is a clear start-up refusal."""
from __future__ import annotations

import gzip
import time
from pathlib import Path

import orjson
import pytest

from daemon.config import SimulatorConfig
from daemon.venue.simulator import MarketSimulator
from tests.daemon.harness import TOKEN, Daemon, free_port, http_get, http_post, metric, wait_until, write_config

SYMBOLS = ("BTCUSDT",) + tuple(e.split("=")[0] for e in SimulatorConfig().universe[:7])


def write_sim_klines(folder: Path, days: int) -> Path:
    """Each symbol's simulated 1m history (the simulator's seeded market) as ``SYMBOL-1m.csv.gz``."""
    folder.mkdir(parents=True, exist_ok=True)
    cfg = SimulatorConfig(history_days=days)
    for s in SYMBOLS:
        h = MarketSimulator(cfg, s).history()
        with gzip.open(folder / f"{s}-1m.csv.gz", "wt") as f:
            f.write("open_time_ms,open,high,low,close,volume\n")
            for row in zip(h["open_ms"].tolist(), h["open"].tolist(), h["high"].tolist(), h["low"].tolist(),
                           h["close"].tolist(), h["volume"].tolist()):
                f.write("%d,%r,%r,%r,%r,%r\n" % row)
    return folder


def universe_config(path: Path, data: Path, port: int, registry: Path, first_run: bool = False,
                    retrain: bool = False) -> Path:
    # retrain: always promote (min_improvement_usd), so the test sees a swap; the gate itself is tested in
    # tests/daemon/test_retrain_universe.py
    retrain_toml = ("enabled = true\ninterval_minutes = 600.0\nmin_store_bars = 100\nmin_improvement_usd = -1e12\n"
                    "[shadow]\nenabled = true\n") if retrain else "enabled = false\n"
    return write_config(path, data, port, symbols=SYMBOLS, speed=20.0, extra=f"""
[venue]
mode = "simulate"

[simulator]
history_days = 1
trades_per_s = 2.0

[engines]
family = "universe"
registry = "{registry}"
train_on_first_run = {str(first_run).lower()}

[retrain]
""" + retrain_toml)


@pytest.mark.slow
@pytest.mark.timeout(240)
@pytest.mark.parametrize("first_run", [False, True], ids=["trained-by-cli", "first-run"])
def test_universe_mode_decides_every_symbol_with_an_expected_return(tmp_path, first_run):
    """Models from `tradingd train --data` on the simulator's klines, or (first run) trained by the daemon's child
    process on every symbol's venue history."""
    from daemon.cli import main
    reg = tmp_path / "registry"
    if not first_run:
        rc = main(["train", "--data", str(write_sim_klines(tmp_path / "klines", 3)), "--registry", str(reg),
                   "--timeframes", "1m", "--lstm-max-rows", "1500", "--threads", "1"])
        assert rc == 0
    port = free_port()
    d = Daemon(universe_config(tmp_path / "config.toml", tmp_path / "var", port, reg, first_run, retrain=first_run),
               tmp_path)
    try:
        m = d.wait_line(r"ready: (http://\S+) \(venue simulate \S+, symbols ([A-Z,]+),", 150)
        url = m.group(1)
        if first_run:
            assert any("first run (universe): trained 1m" in ln for ln in d.lines), d.lines[-20:]
            assert (tmp_path / "var" / "first-run-klines" / "AVAXUSDT-1m.csv.gz").is_file()

        def ready():
            code, body = http_get(url + "/readyz")
            return orjson.loads(body) if code == 200 else None
        body = wait_until(ready, 30, "readyz 200", d)
        assert body["books"] == {s: "SYNCED" for s in SYMBOLS}, body

        def all_predicted():
            st = orjson.loads(http_get(url + "/status")[1])
            b = st["pipeline"]["boundaries"].get("1m")
            return st if b and b["predicted"] == list(SYMBOLS) else None
        st = wait_until(all_predicted, 90, "a 1m boundary with universe predictions for all 8 symbols", d)
        b = st["pipeline"]["boundaries"]["1m"]
        assert b["symbols"] == list(SYMBOLS) and b["missing"] == [], b
        last = [x for x in st["last_decisions"] if x["timeframe"] == "1m"]
        assert last and all(set(x["predictions"]) >= {"expected_return", "score", "u_xgboost", "u_ridge", "u_lstm"}
                            and "xgboost" not in x["predictions"] for x in last), last
        u = st["models"]["1m"]["universe"]
        assert u["version"] and set(u["weights"]) == {"xgboost", "ridge", "lstm"}
        assert u["calibration"]["horizon"] >= 1 and u["calibration"]["rows"] > 30
        # ONE call per model per decided boundary (every live boundary: priming filled the history)
        n_bound = sum(v for k, v in st["pipeline"]["counters"].items() if k.startswith("boundaries."))
        assert n_bound >= 1 and u["inference_calls"] == {k: n_bound for k in ("xgboost", "ridge", "lstm")}, \
            (u, st["pipeline"]["counters"])
        text = http_get(url + "/metrics")[1].decode()
        assert metric(text, "tradingd_predictions_total", timeframe="1m", engine="expected_return") >= 8
        # drift: every symbol's live features and expected return against the bundle's reference
        assert "1m/universe" not in st["drift"]["unmonitored"], st["drift"]["unmonitored"]
        assert {f"{s}/1m/universe" for s in SYMBOLS} <= set(st["drift"]["streams"]), list(st["drift"]["streams"])
        if first_run:  # the retrainer retrains the bundle on every symbol, gates it, and the daemon swaps it in
            # the challenger passes the offline gate, then decides in shadow beside the champion (daemon.shadow)
            # until the operator pins it
            assert st["retrain"]["mode"] == "universe"
            assert http_post(url + "/control/retrain", TOKEN)[1] == {"ok": True, "started": True}
            rep = wait_until(lambda: orjson.loads(http_get(url + "/status")[1])["retrain"]["last"], 150,
                             "universe retrain report", d)
            assert rep["ok"], rep
            dec = rep["results"]["1m"]["decision"]["universe"]
            assert dec["shadow"] and not dec["promoted"] and dec["current_pnl"] is not None, rep
            assert dec["version"] != u["version"] and rep["swapped"] == {}, rep
            assert rep["shadow"]["1m"]["challenger_version"] == f"universe={dec['version']}", rep["shadow"]

            def shadow_bars():
                sh = orjson.loads(http_get(url + "/status")[1])["retrain"]["shadow"]
                run = sh["running"].get("1m")
                return sh if run and run["bars"] >= 2 else None
            sh = wait_until(shadow_bars, 60, "the universe challenger deciding in shadow", d)
            assert sh["errors"] == 0, sh
            assert orjson.loads(http_get(url + "/status")[1])["models"]["1m"]["universe"]["version"] == u["version"]
            code, body = http_post(url + "/control/pin-challenger", TOKEN)
            assert code == 200 and body["ended"]["1m"]["outcome"] == "promote", body
            s1 = orjson.loads(http_get(url + "/status")[1])  # right after the promotion
            calls = sum(v for k, v in s1["pipeline"]["counters"].items() if k.startswith("boundaries."))

            def swapped_and_deciding():
                s2 = orjson.loads(http_get(url + "/status")[1])
                u2 = s2["models"]["1m"]["universe"]
                n2 = sum(v for k, v in s2["pipeline"]["counters"].items() if k.startswith("boundaries."))
                b2 = s2["pipeline"]["boundaries"].get("1m")
                return s2 if u2["version"] == dec["version"] and n2 > calls and b2["predicted"] == list(SYMBOLS) \
                    else None
            s2 = wait_until(swapped_and_deciding, 60, "a boundary decided by the swapped bundle", d)
            u2 = s2["models"]["1m"]["universe"]  # the promoted bundle's runners were built off the loop, before
            assert u2["runners"] == {"xgboost": "compiled-cpu", "lstm": "onnxruntime-cpu"}, u2
            assert not any(k.startswith("runner_") for k in u2["counters"]), u2["counters"]
            text = http_get(url + "/metrics")[1].decode()
            assert metric(text, "tradingd_retrain_promotions_total", timeframe="1m") == 1
            assert metric(text, "tradingd_shadow_outcomes_total", timeframe="1m", outcome="promote") == 1
        assert d.stop() == 0, d.stderr()[-3000:]
    finally:
        d.kill()
    err = d.stderr()
    assert '"level": "error"' not in err, [ln for ln in err.splitlines() if '"level": "error"' in ln][:5]


@pytest.mark.timeout(60)
def test_universe_mode_without_a_bundle_refuses_to_start(tmp_path):
    port = free_port()
    reg = tmp_path / "empty-registry"
    d = Daemon(universe_config(tmp_path / "config.toml", tmp_path / "var", port, reg), tmp_path)
    try:
        rc = d.p.wait(50)
    finally:
        d.kill()
    out = "\n".join(d.lines) + d.stderr()
    assert rc != 0
    assert "no current universe models for ['1m']" in out and "tradingd train --data" in out, out[-2000:]
