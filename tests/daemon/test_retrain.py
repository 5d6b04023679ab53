"""Background retraining in a real child process: reads bars from the store the daemon writes, gates the
challenger against the current model on held-out dollar P&L, and never raises into the caller."""
import asyncio
import sys

import pytest

from daemon.retrain import RetrainManager
from daemon.store import SQLiteStore
from engines.data import klines_to_bars, load_klines_csv
from engines.registry import ModelRegistry

SPEC = {"xgb_rounds": 40, "lstm_epochs": 1, "lstm_hidden": 8, "lstm_seq_len": 8}


@pytest.fixture(scope="module")
def store_with_bars(btc_klines_path, tmp_path_factory):
    k = load_klines_csv(btc_klines_path, symbol="BTCUSDT")
    path = tmp_path_factory.mktemp("store") / "tradingd.sqlite"
    st = SQLiteStore(path)
    st.write_bars(klines_to_bars(k[-40 * 1440:]))
    st.close()
    return path


def _manager(store, reg, **kw):
    return RetrainManager(registry=str(reg), symbol="BTCUSDT", timeframes=["1h"], store=str(store),
                          spec_overrides=SPEC, min_bars=1000, timeout_s=240, **kw)


def test_cycles_publish_and_gate(store_with_bars, tmp_path):
    reg_dir = tmp_path / "models"
    m = _manager(store_with_bars, reg_dir)
    first = asyncio.run(m.run_once())
    assert first.ok, first.error
    d1 = first.results["1h"]["decision"]
    assert all(d["promoted"] and d["current_pnl"] is None for d in d1.values())   # nothing to beat yet
    reg = ModelRegistry(reg_dir)
    assert reg.current_version("1h", "xgboost") == d1["xgboost"]["version"]

    second = asyncio.run(m.run_once())
    assert second.ok, second.error
    d2 = second.results["1h"]["decision"]
    for kind, d in d2.items():
        assert d["current_pnl"] is not None
        assert d["promoted"] == (d["challenger_pnl"] > d["current_pnl"])
        expected = d["version"] if d["promoted"] else d1[kind]["version"]
        assert reg.current_version("1h", kind) == expected
        assert len(reg.list_versions("1h", kind)) == 2        # the challenger is published either way
    print("retrain decisions:", d2, "seconds:", round(second.seconds, 1))


def test_crashed_and_hung_retrains_are_reported_not_raised(tmp_path, monkeypatch):
    m = RetrainManager(registry=str(tmp_path / "r"), symbol="BTCUSDT", timeframes=["1h"],
                       store=str(tmp_path / "missing.sqlite"), min_bars=1000, timeout_s=60)
    out = asyncio.run(m.run_once())
    assert not out.ok and "no training data" in out.error and not m.running

    hung = RetrainManager(registry=str(tmp_path / "r"), symbol="BTCUSDT", timeframes=["1h"], timeout_s=1.0)
    monkeypatch.setattr(hung, "command", lambda: [sys.executable, "-c", "import time; time.sleep(60)"])
    out = asyncio.run(hung.run_once())
    assert not out.ok and "timed out" in out.error and out.seconds < 30
