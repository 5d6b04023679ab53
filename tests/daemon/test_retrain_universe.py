"""Universe mode's retraining cycle (daemon/retrain_universe.py), in process on a real SQLite store holding four
simulated symbols' 1m bars (the simulator's correlated market): the bundle is retrained on every symbol, the
gate scores the champion through the daemon's inference path over the challenger's holdout, and only a
challenger that makes more money after costs becomes CURRENT. Runs without ../shared/data."""
from __future__ import annotations

import dataclasses
import json
import shutil

import numpy as np
import pytest

from daemon.retrain_universe import universe_retrain_cycle
from daemon.store import SQLiteStore
from engines.data import Klines, klines_to_bars
from engines.pooled import BUNDLE_MANIFEST, UNIVERSE_KIND, entry_files, load_bundle
from engines.registry import ModelRegistry

SYMBOLS = ["BTCUSDT", "ETHUSDT", "SOLUSDT", "BNBUSDT"]
TF = "1m"
COSTS = {"fee": 0.001, "spread_bps": 2.0, "slippage_bps": 1.0}


@pytest.fixture(scope="module")
def uni_store(tmp_path_factory):
    """3 days of the simulator's 1m history of four symbols in a real store."""
    from daemon.config import SimulatorConfig
    from daemon.venue.simulator import MarketSimulator
    path = tmp_path_factory.mktemp("unistore") / "tradingd.sqlite"
    st = SQLiteStore(path)
    for s in SYMBOLS:
        h = MarketSimulator(dataclasses.replace(SimulatorConfig(), history_days=3), s).history()
        k = Klines(open_ns=h["open_ms"].astype(np.int64) * 1_000_000, open=h["open"], high=h["high"], low=h["low"],
                   close=h["close"], volume=h["volume"], symbol=s)
        st.write_bars(klines_to_bars(k))
    st.close()
    return path


def cycle(store, reg_dir, **kw):
    kw = {"min_bars": 100, "threads": 1, "costs": COSTS} | kw
    return universe_retrain_cycle(str(store), str(reg_dir), SYMBOLS, [TF], **kw)


def decision(res):
    return res[TF]["decision"][UNIVERSE_KIND]


def test_first_cycle_promotes_and_records_the_gate_and_trigger(uni_store, tmp_path):
    reg = ModelRegistry(tmp_path / "models")
    res = cycle(uni_store, reg.root, trigger={"reason": "control", "detail": {}})
    d = decision(res)
    assert d["promoted"] and d["current_pnl"] is None and res[TF]["gate_error"] is None
    assert reg.current_version(TF, UNIVERSE_KIND) == d["version"]
    assert set(res[TF]["symbols"]) == set(SYMBOLS)
    vdir = reg.version_dir(TF, UNIVERSE_KIND, d["version"])
    m = json.loads((vdir / BUNDLE_MANIFEST).read_text())
    assert m["gate"]["promote"] is True and m["gate"]["bars"] > 100
    extra = json.loads((vdir / "manifest.json").read_text())["extra"]
    assert extra["trigger"]["reason"] == "control"
    # the drift reference: the live per-symbol features' bins and the holdout's expected returns
    from engines.drift import Reference
    from engines.features import FEATURE_SCHEMA
    ref = Reference.from_dict(extra["drift"])
    assert ref.names == tuple(FEATURE_SCHEMA.names) and ref.pred_edges is not None and ref.calib_gap is None
    load_bundle(vdir, version=d["version"])  # what the daemon will load


def test_gate_keeps_a_better_champion_and_promotes_over_a_worse_one(uni_store, tmp_path):
    from research.cli_train import _publish
    reg = ModelRegistry(tmp_path / "models")
    first = decision(cycle(uni_store, reg.root))["version"]
    # the same challenger must beat the champion by an impossible margin: published, not current
    res = cycle(uni_store, reg.root, min_improvement=1e12)
    d = decision(res)
    assert not d["promoted"] and d["current_pnl"] is not None and np.isfinite(d["current_pnl"])
    assert reg.current_version(TF, UNIVERSE_KIND) == first
    assert (reg.version_dir(TF, UNIVERSE_KIND, d["version"]) / BUNDLE_MANIFEST).is_file()
    # a champion whose ensemble ranks backwards (its weights negated; a valid, checksummed version) loses money on
    # the simulator's learnable market: the challenger replaces it
    src = reg.version_dir(TF, UNIVERSE_KIND, first)
    m = json.loads((src / BUNDLE_MANIFEST).read_text())
    m["ensemble"]["weights"] = {k: -v for k, v in m["ensemble"]["weights"].items()}
    bad = _publish(reg.root, TF, src, [f for e in m["models"] for f in entry_files(e)], m).version
    assert reg.current_version(TF, UNIVERSE_KIND) == bad
    res = cycle(uni_store, reg.root)
    d = decision(res)
    assert d["promoted"] and d["challenger_pnl"] > d["current_pnl"], d
    assert res[TF]["gate"]["current_version"] == bad
    assert reg.current_version(TF, UNIVERSE_KIND) == d["version"]


def test_a_champion_that_cannot_be_scored_is_a_gate_error_never_a_promotion(uni_store, tmp_path):
    reg = ModelRegistry(tmp_path / "models")
    first = decision(cycle(uni_store, reg.root))["version"]
    for f in reg.version_dir(TF, UNIVERSE_KIND, first).glob("*.ubj"):
        f.write_bytes(b"garbage")
    res = cycle(uni_store, reg.root, min_improvement=-1e12)  # would promote anything the gate could judge
    d = decision(res)
    assert not d["promoted"] and "ModelLoadError" in res[TF]["gate_error"]
    assert reg.current_version(TF, UNIVERSE_KIND) == first


def test_a_symbol_missing_from_a_young_store_without_a_venue_is_a_clear_error(uni_store, tmp_path):
    with pytest.raises(RuntimeError, match="no training data for DOGEUSDT"):
        universe_retrain_cycle(str(uni_store), str(tmp_path / "m"), SYMBOLS + ["DOGEUSDT"], [TF], min_bars=100)


def test_retrain_keeps_the_champions_parameters(uni_store, tmp_path):
    """A bundle trained with tuned parameters (``--params best.json``) is retrained with the same ones."""
    from research.cli_train import _publish
    reg = ModelRegistry(tmp_path / "models")
    first = decision(cycle(uni_store, reg.root))["version"]
    src = reg.version_dir(TF, UNIVERSE_KIND, first)
    m = json.loads((src / BUNDLE_MANIFEST).read_text())
    m["params"]["ridge_alpha"] = 7.5
    m["params"]["horizon"] = 30
    tuned = tmp_path / "tuned"
    shutil.copytree(src, tuned)
    _publish(reg.root, TF, tuned, [f for e in m["models"] for f in entry_files(e)], m)
    d = decision(cycle(uni_store, reg.root, min_improvement=-1e12))
    got = json.loads((reg.version_dir(TF, UNIVERSE_KIND, d["version"]) / BUNDLE_MANIFEST).read_text())["params"]
    assert got["ridge_alpha"] == 7.5 and got["horizon"] == 30


def test_a_champion_with_the_extra_kinds_is_retrained_and_judged_with_them(uni_store, tmp_path):
    """`tradingd train --store ... --models ...,xgboost_ft,lstm_emb` made the champion: the retrain trains the same
    kinds, and the gate scores the champion's per-symbol boosters and embedding by symbol (no gate error)."""
    from daemon.cli import main
    reg = ModelRegistry(tmp_path / "models")
    kinds = "xgboost,ridge,lstm,xgboost_ft,lstm_emb"
    assert main(["train", "--store", str(uni_store), "--registry", str(reg.root), "--timeframes", TF,
                 "--models", kinds, "--threads", "1", "--lstm-max-rows", "2000"]) == 0
    champ = reg.current_version(TF, UNIVERSE_KIND)
    res = cycle(uni_store, reg.root, min_improvement=1e12)
    d = decision(res)
    assert res[TF]["gate_error"] is None and res[TF]["gate"]["current_version"] == champ
    assert np.isfinite(d["current_pnl"]) and not d["promoted"]
    m = json.loads((reg.version_dir(TF, UNIVERSE_KIND, d["version"]) / BUNDLE_MANIFEST).read_text())
    assert [e["kind"] for e in m["models"]] == kinds.split(",")


def test_with_the_shadow_a_passing_challenger_is_published_not_current(uni_store, tmp_path):
    reg = ModelRegistry(tmp_path / "models")
    first = cycle(uni_store, reg.root, shadow=True)  # no champion: promoted at once, shadow or not
    assert decision(first)["promoted"] and not decision(first)["shadow"]
    d = decision(cycle(uni_store, reg.root, shadow=True, min_improvement=-1e12))
    assert d["shadow"] and not d["promoted"]
    assert reg.current_version(TF, UNIVERSE_KIND) == decision(first)["version"] != d["version"]
    d = decision(cycle(uni_store, reg.root, shadow=True, min_improvement=1e12))  # failed the gate: no shadow
    assert not d["shadow"] and not d["promoted"]
