"""XGBoostModel reports the device XGBoost really trained on, not the one it was asked for (issue #13)."""
from __future__ import annotations

import json

import numpy as np

from engines.xgb_model import XGBoostModel, read_meta, select_device


def _data(n=400, f=5, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, f)).astype(np.float32)
    y = (X[:, 0] + rng.standard_normal(n) > 0).astype(np.float64)
    return X[:300], y[:300], X[300:], y[300:]


def test_requesting_cuda_reports_the_device_actually_used(tmp_path):
    import xgboost as xgb
    m = XGBoostModel(device="cuda", num_boost_round=3, nthread=1)
    r = m.train(*_data(), early_stopping_rounds=None)
    really = json.loads(m.booster.save_config())["learner"]["generic_param"]["device"]
    assert r.device_requested == "cuda"
    assert r.device == ("cuda" if really.startswith("cuda") else "cpu")
    if select_device() == "cpu":  # this machine: CPU wheel or no GPU -> cpu, with the reason
        assert r.device == "cpu" and m.device == "cpu"
        want = "built without CUDA" if not xgb.build_info().get("USE_CUDA") else "no usable GPU"
        assert want in r.device_reason
        meta = read_meta(m.save(tmp_path / "v"))
        assert meta["device_trained"] == "cpu" and want in meta["device_reason"]
    else:
        assert r.device == "cuda" and r.device_reason == ""


def test_cpu_request_has_no_reason():
    r = XGBoostModel(device="cpu", num_boost_round=2, nthread=1).train(*_data(seed=1), early_stopping_rounds=None)
    assert (r.device, r.device_requested, r.device_reason) == ("cpu", "cpu", "")
