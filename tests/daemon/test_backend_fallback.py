"""A backend that probes available but fails to load or warm up is a logged, counted fallback to the next
backend (issue #13), on real model files in a real registry; only a model no backend can load is refused."""
from __future__ import annotations

import numpy as np
import pytest

import dataclasses

from daemon.config import Config
from daemon.engineset import EngineSet, ModelLoadError
from daemon.metrics import Metrics
from engines.features import FEATURE_SCHEMA
from engines.registry import ModelRegistry

TF = "5m"


@pytest.fixture(scope="module")
def registry_root(tmp_path_factory):
    """Tiny XGBoost and LSTM models trained on synthetic rows with the running feature schema, published."""
    from engines.lstm_model import LSTMModel, make_sequences
    from engines.xgb_model import XGBoostModel
    names = list(FEATURE_SCHEMA.names)
    rng = np.random.default_rng(0)
    X = rng.standard_normal((600, len(names))).astype(np.float32)
    y = (X[:, 0] + 0.5 * rng.standard_normal(600) > 0).astype(np.float64)
    root = tmp_path_factory.mktemp("registry")
    reg = ModelRegistry(root)
    xm = XGBoostModel(device="cpu", num_boost_round=5, nthread=1)
    xm.set_feature_schema(names, FEATURE_SCHEMA.hash)
    xm.train(X[:450], y[:450], X[450:], y[450:], early_stopping_rounds=None)
    reg.publish("xgboost", TF, xm.save, feature_names=names, schema_hash=FEATURE_SCHEMA.hash, make_current=True)
    lm = LSTMModel(device="cpu", seq_len=8, hidden=8, layers=1, epochs=1, batch_size=64)
    lm.set_feature_schema(names, FEATURE_SCHEMA.hash)
    Xs, idx = make_sequences(X, 8)
    ys = y[idx]
    lm.train(Xs[:400], ys[:400], Xs[400:], ys[400:])
    reg.publish("lstm", TF, lm.save, feature_names=names, schema_hash=FEATURE_SCHEMA.hash, make_current=True)
    return root


def _engines(**kw):
    return dataclasses.replace(Config().engines, warmup_iters=2, **kw)


def _fallbacks(m: Metrics, kind: str, requested: str, reason: str) -> float:
    v = m.registry.get_sample_value("tradingd_backend_fallbacks_total",
                                    {"timeframe": TF, "kind": kind, "requested": requested, "reason": reason})
    return v or 0.0


def test_ort_session_creation_failure_falls_back_instead_of_refusing(registry_root, monkeypatch):
    """ONNX Runtime raising at session creation (what a CUDA provider failing to initialise does) moves the
    LSTM on to the next backend; /status says which failed and why, /metrics counts it."""
    import onnxruntime as ort

    def broken(*a, **k):
        raise RuntimeError("provider failed to initialise (injected)")

    monkeypatch.setattr(ort, "InferenceSession", broken)
    m = Metrics()
    es = EngineSet.load(ModelRegistry(registry_root), TF, _engines(), metrics=m)
    info = es.info()["lstm"]
    assert info["backend"] == "torch-cpu" and info["fallback"] is True
    assert len(info["failed"]) == 1 and info["failed"][0].startswith("onnxruntime-cpu load failed")
    assert "injected" in info["reason"]
    assert _fallbacks(m, "lstm", "auto", "load_failed") == 1
    assert es.ready
    # and it answers: the fallback engine is loaded and warm, not a placeholder
    es2 = EngineSet.load(ModelRegistry(registry_root), TF, _engines(lstm_backend="torch-cpu"))
    x = np.random.default_rng(1).standard_normal((8, len(FEATURE_SCHEMA.names))).astype(np.float32)
    for r in x:
        a, b = es.predict(r, "S"), es2.predict(r, "S")
    assert a["lstm"] == pytest.approx(b["lstm"], abs=1e-6)


def test_warmup_failure_falls_back_to_the_next_xgboost_backend(registry_root, monkeypatch):
    from engines import xgb_engine

    def broken(self, n):
        raise RuntimeError("warm-up blew up (injected)")

    monkeypatch.setattr(xgb_engine.CompiledCPUEngine, "warmup", broken)
    m = Metrics()
    es = EngineSet.load(ModelRegistry(registry_root), TF, _engines(), metrics=m, kinds=("xgboost",))
    info = es.info()["xgboost"]
    assert info["backend"] == "native-cpu" and info["fallback"] is True
    assert info["failed"] == ["compiled-cpu warmup failed: RuntimeError: warm-up blew up (injected)"]
    assert _fallbacks(m, "xgboost", "auto", "warmup_failed") == 1


def test_unavailable_request_is_counted(registry_root):
    m = Metrics()
    es = EngineSet.load(ModelRegistry(registry_root), TF, _engines(xgb_backend="native-cuda"), metrics=m,
                        kinds=("xgboost",))
    assert es.info()["xgboost"]["fallback"] is True
    assert _fallbacks(m, "xgboost", "native-cuda", "unavailable") == 1


def test_healthy_load_is_no_fallback(registry_root):
    m = Metrics()
    es = EngineSet.load(ModelRegistry(registry_root), TF, _engines(), metrics=m)
    assert {k: v["fallback"] for k, v in es.info().items()} == {"xgboost": False, "lstm": False}
    assert all(v["failed"] == [] for v in es.info().values())


def test_a_model_no_backend_can_load_is_still_refused(registry_root, monkeypatch):
    """Every backend failing means the model is the problem: ModelLoadError (exit 3), naming each failure."""
    from engines import lstm_engine

    def broken(self, d, meta):
        raise RuntimeError("unreadable (injected)")

    for cls in (lstm_engine.OnnxRuntimeCPUEngine, lstm_engine.TorchCPUEngine):
        monkeypatch.setattr(cls, "_open", broken)
    with pytest.raises(ModelLoadError, match="no backend could load it: onnxruntime-cpu load failed.*torch-cpu"):
        EngineSet.load(ModelRegistry(registry_root), TF, _engines(), kinds=("lstm",))
