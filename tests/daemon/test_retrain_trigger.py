"""The retrainer's drift entry (daemon.hotswap.RetrainCycle.request): a real child process per cycle (a stand-in
trainer that echoes its command line, in the retrainer's one-JSON-line protocol), the trigger passed to it, the
rate limit on an injected clock, and the counts by reason in /metrics."""
from __future__ import annotations

import asyncio
import dataclasses
import sys

import numpy as np
import orjson

from daemon.config import Config, SimulatorConfig, replace
from daemon.hotswap import RetrainCycle
from daemon.metrics import Metrics
from daemon.retrain import RetrainManager, retrain_cycle
from daemon.store import SQLiteStore
from daemon.venue.simulator import MarketSimulator
from engines.data import Klines, klines_to_bars
from engines.registry import ModelRegistry, read_manifest
from tests.daemon.harness import metric

ECHO = "import json, sys; print(json.dumps({'ok': True, 'results': {}, 'priority': {}, 'argv': sys.argv[1:]}))"


def test_drift_request_is_rate_limited_and_its_reason_reaches_the_trainer(tmp_path, monkeypatch):
    cfg = replace(Config(), drift={"retrain_min_interval_minutes": 10.0})
    man = RetrainManager(registry=str(tmp_path / "models"), symbol="BTCUSDT", timeframes=["1m"], timeout_s=60)
    seen: list[list[str]] = []
    real_command = man.command

    def command():  # the real command line (with --trigger), run by a trainer that only echoes it
        seen.append(real_command())
        return [sys.executable, "-c", ECHO]
    monkeypatch.setattr(man, "command", command)
    now = [1000.0]
    cycle = RetrainCycle(cfg, Metrics(), man, ModelRegistry(tmp_path / "models"), engine_sets={})
    cycle.clock = lambda: now[0]

    async def go():
        a = cycle.request("drift", {"symbol": "BTCUSDT", "model": "xgboost"})
        busy = cycle.request("drift", {"symbol": "BTCUSDT", "model": "lstm"})  # the first is still running
        await cycle._task
        now[0] += 9 * 60
        limited = cycle.request("pnl", {"symbol": "BTCUSDT"})
        now[0] += 2 * 60
        b = cycle.request("pnl", {"symbol": "BTCUSDT"})
        await cycle._task
        return a, busy, limited, b
    a, busy, limited, b = asyncio.run(go())
    assert a == {"ok": True, "started": True} and b == {"ok": True, "started": True}
    assert busy["error"] == "a retrain is already running"
    assert limited["error"].startswith("rate limited")
    assert len(seen) == 2
    trig = [orjson.loads(c[c.index("--trigger") + 1]) for c in seen]
    assert [t["reason"] for t in trig] == ["drift", "pnl"] and trig[0]["detail"]["model"] == "xgboost"
    text = cycle.metrics.render().decode()
    assert metric(text, "tradingd_retrain_triggers_total", reason="drift", result="started") == 1
    assert metric(text, "tradingd_retrain_triggers_total", reason="drift", result="busy") == 1
    assert metric(text, "tradingd_retrain_triggers_total", reason="pnl", result="rate_limited") == 1
    assert metric(text, "tradingd_retrain_triggers_total", reason="pnl", result="started") == 1
    assert cycle.status()["by_reason"] == {"drift": 1, "pnl": 1}
    assert cycle.last["trigger"] == "pnl" and cycle.last["ok"]


def test_retrain_child_records_the_trigger_in_the_manifest(tmp_path):
    """retrain_cycle (the child's body) publishes with the trigger in every manifest's extra."""
    h = MarketSimulator(dataclasses.replace(SimulatorConfig(), history_days=12)).history()
    k = Klines(open_ns=h["open_ms"].astype(np.int64) * 1_000_000, open=h["open"], high=h["high"], low=h["low"],
               close=h["close"], volume=h["volume"], symbol="BTCUSDT")
    st = SQLiteStore(tmp_path / "s.sqlite")
    st.write_bars(klines_to_bars(k))
    st.close()
    trig = {"reason": "drift", "detail": {"symbol": "BTCUSDT", "reasons": ["psi"]}, "at_ns": 1}
    res = retrain_cycle(str(tmp_path / "s.sqlite"), str(tmp_path / "models"), "BTCUSDT", ["1h"], min_bars=100,
                        spec_overrides={"xgb_rounds": 10, "lstm_epochs": 1, "lstm_hidden": 4, "lstm_seq_len": 8,
                                        "threads": 1}, trigger=trig)
    reg = ModelRegistry(tmp_path / "models")
    for kind, dec in res["1h"]["decision"].items():
        m = read_manifest(reg.version_dir("1h", kind, dec["version"]))
        assert m["extra"]["trigger"] == trig and "drift" in m["extra"]
