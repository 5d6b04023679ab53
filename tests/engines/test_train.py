"""Training end to end on real klines: dataset rules, both models published, engines load what was published."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from engines.data import load_klines_csv
from engines.features import FEATURE_SCHEMA
from engines.registry import ModelRegistry
from engines.train import TrainSpec, build_dataset, missing_models, split_bounds, train_and_publish

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def klines(btc_klines_path):
    return load_klines_csv(btc_klines_path)


def test_dataset_labels_are_up_or_down_by_more_than_cost(klines):
    spec = TrainSpec("15m")
    ds = build_dataset(klines[-30_000:], spec)
    up, down, skip = ds.y == 1, ds.y == 0, ds.y == -1
    assert (ds.fwd[up] > spec.cost).all() and (ds.fwd[down] < -spec.cost).all()
    small = np.isfinite(ds.fwd) & (np.abs(ds.fwd) <= spec.cost)
    assert skip[small].all()
    # the horizon's last rows have no label (no look-ahead past the data)
    assert (ds.y[-spec.h:] == -1).all()
    a, b = split_bounds(len(ds.y), spec)
    assert 0 < a < b < len(ds.y)


def test_train_and_publish_then_engines_load(klines, tmp_path):
    reg = ModelRegistry(tmp_path / "models")
    assert missing_models(reg, ["15m"]) == ["15m"]
    spec = TrainSpec("15m", xgb_rounds=60, lstm_epochs=1, lstm_hidden=8, lstm_seq_len=16, threads=1)
    msgs = []
    outcome, refs = train_and_publish(klines[-40_000:], spec, reg, progress=msgs.append)
    assert missing_models(reg, ["15m"]) == []
    assert set(refs) == {"xgboost", "lstm"} and any("AUC" in m for m in msgs)
    m_n = {k: outcome.metrics[k]["n"] for k in ("xgboost", "lstm")}
    for kind in ("xgboost", "lstm"):
        ref = reg.load("15m", kind, schema_hash=FEATURE_SCHEMA.hash)
        assert ref.manifest["data_window"]["timeframe"] == "15m"
        assert "auc" in ref.manifest["metrics"]["test"]
        # the drift reference (engines.drift) travels in the manifest: training feature bins, held-out predictions
        from engines.drift import Reference
        dr = ref.manifest["extra"]["drift"]
        parsed = Reference.from_dict(dr)
        assert parsed.names == FEATURE_SCHEMA.names and parsed.pred_edges is not None
        assert dr["rows"] == outcome.data_window["rows"]["train"] and dr["horizon"] == spec.h
        assert dr["pred"]["rows"] == m_n[kind] and "calib" in dr
    m = outcome.metrics
    print("held-out 15m:", {k: (round(v["auc"], 3), round(v["dollar"]["pnl_usd"])) for k, v in m.items()
                            if isinstance(v, dict)})
    assert 0.0 <= m["xgboost"]["auc"] <= 1.0 and m["lstm"]["n"] > 50
    from engines.backends import create_engine
    x = create_engine("xgboost", "compiled-cpu", expected_schema_hash=FEATURE_SCHEMA.hash)
    x.load(reg.current("15m", "xgboost"))
    x.warmup(5)
    ds = build_dataset(klines[-40_000:], spec)
    p = x.predict(ds.X[-10:].astype(np.float32))
    assert p.shape == (10,) and ((p >= 0) & (p <= 1)).all()


def test_train_cli(btc_klines_path, tmp_path):
    r = subprocess.run([sys.executable, "-m", "daemon.cli", "train", "--data", str(btc_klines_path),
                        "--last-days", "60", "--registry", str(tmp_path / "reg"), "--timeframes", "1h",
                        "--xgb-rounds", "30", "--lstm-epochs", "1", "--lstm-hidden", "8", "--threads", "1"],
                       capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-2000:]
    out = json.loads(r.stdout)
    assert set(out["1h"]["versions"]) == {"xgboost", "lstm"}
    assert (tmp_path / "reg" / "1h" / "xgboost").is_dir()


def test_train_cli_refuses_bad_csv(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("open_time_ms,open,high,low,close,volume\n60000,1,2,0.5,1.5,3\n0,1,2,0.5,1.5,3\n")
    r = subprocess.run([sys.executable, "-m", "daemon.cli", "train", "--data", str(bad), "--registry",
                        str(tmp_path / "reg")], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert r.returncode == 2 and "bad.csv:3" in r.stderr and "Traceback" not in r.stderr
