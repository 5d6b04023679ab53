"""``engines.lstm_backend = "onnxruntime-cpu-int8"`` in the daemon's engine set, on real models trained on real BTC
1m klines and published by ``train_and_publish`` into a real registry: config selects the INT8 graph; a version
whose INT8 file is damaged or absent still loads, on the fp32 graph, as a fallback counted in
``tradingd_backend_fallbacks_total`` with the reason in the engine set's info (what /status shows)."""
from __future__ import annotations

import dataclasses
import json
import shutil

import numpy as np
import pytest

from daemon.config import config_from_dict
from daemon.engineset import EngineSet, ModelLoadError
from daemon.metrics import Metrics
from engines.features import FEATURE_SCHEMA
from engines.quantize import INT8_FILE
from engines.registry import MANIFEST, ModelRegistry
from market.cfgbase import ConfigError

TF = "5m"
INT8 = "onnxruntime-cpu-int8"


@pytest.fixture(scope="module")
def registry_root(btc_klines_path, tmp_path_factory):
    """Both models of 30 days of real BTC 1m klines, trained (1 torch thread: the box is shared) and published
    as `tradingd train` does, with the default (dynamic) INT8 copy of the LSTM."""
    import torch

    from engines.data import load_klines_csv
    from engines.train import TrainSpec, train_and_publish
    root = tmp_path_factory.mktemp("int8-registry")
    k = load_klines_csv(str(btc_klines_path))[:30 * 1440]
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train_and_publish(k, TrainSpec(TF, lstm_epochs=1, xgb_rounds=10, threads=1), ModelRegistry(root))
    finally:
        torch.set_num_threads(old)
    return root


def _cfg(**kw):
    return config_from_dict({"engines": {"lstm_backend": INT8, "warmup_iters": 2, **kw}}).engines


def _fallbacks(m: Metrics, reason: str) -> float:
    return m.registry.get_sample_value("tradingd_backend_fallbacks_total",
                                       {"timeframe": TF, "kind": "lstm", "requested": INT8, "reason": reason}) or 0.0


def _copy(root, tmp_path):
    dst = tmp_path / "registry"
    shutil.copytree(root, dst)
    reg = ModelRegistry(dst)
    return reg, reg.version_dir(TF, "lstm", reg.current_version(TF, "lstm"))


def _window(n: int = 40) -> np.ndarray:
    return np.random.default_rng(3).standard_normal((n, len(FEATURE_SCHEMA.names))).astype(np.float32)


def test_config_selects_the_int8_graph(registry_root):
    m = Metrics()
    reg = ModelRegistry(registry_root)
    es = EngineSet.load(reg, TF, _cfg(), metrics=m, kinds=("lstm",))
    info = es.info()["lstm"]
    assert info["backend"] == INT8 and info["fallback"] is False and info["failed"] == []
    assert _fallbacks(m, "load_failed") == 0 and _fallbacks(m, "unavailable") == 0
    # the INT8 file is an artifact of the same version, checksummed in the registry manifest
    man = json.loads((reg.version_dir(TF, "lstm", info["version"]) / MANIFEST).read_text())
    assert man["files"][INT8_FILE]["optional"] is True and len(man["files"][INT8_FILE]["sha256"]) == 64
    assert "optional" not in man["files"]["lstm.onnx"]
    # and it is the INT8 graph that answers: differs from the fp32 engine set, slightly
    es32 = EngineSet.load(reg, TF, dataclasses.replace(_cfg(), lstm_backend="onnxruntime-cpu"), kinds=("lstm",))
    for r in _window():
        a, b = es.predict(r, "S"), es32.predict(r, "S")
    assert a["lstm"] != b["lstm"] and a["lstm"] == pytest.approx(b["lstm"], abs=0.01)


def test_unknown_backend_name_is_a_config_error():
    with pytest.raises(ConfigError, match="lstm_backend"):
        config_from_dict({"engines": {"lstm_backend": "onnx-int9"}})


@pytest.mark.parametrize("damage", ["corrupt", "delete"])
def test_damaged_int8_file_is_a_counted_fallback_to_fp32(registry_root, tmp_path, damage):
    reg, vdir = _copy(registry_root, tmp_path)
    f = vdir / INT8_FILE
    if damage == "corrupt":
        data = bytearray(f.read_bytes())
        data[len(data) // 2] ^= 0xFF
        f.write_bytes(bytes(data))
    else:
        f.unlink()
    m = Metrics()
    es = EngineSet.load(reg, TF, _cfg(), metrics=m, kinds=("lstm",))
    info = es.info()["lstm"]
    assert info["backend"] == "onnxruntime-cpu" and info["fallback"] is True and es.ready
    assert len(info["failed"]) == 1 and info["failed"][0].startswith(f"{INT8} load failed")
    assert INT8_FILE in info["failed"][0] and INT8_FILE in info["reason"]
    assert _fallbacks(m, "load_failed") == 1
    # the fallback answers with the fp32 graph
    es32 = EngineSet.load(reg, TF, dataclasses.replace(_cfg(), lstm_backend="onnxruntime-cpu"), kinds=("lstm",))
    for r in _window():
        a, b = es.predict(r, "S"), es32.predict(r, "S")
    assert a["lstm"] == b["lstm"]


def test_damaged_fp32_file_still_refuses_the_version(registry_root, tmp_path):
    """Only the opt-in INT8 file is optional: the fp32 graph every other backend reads is still checked."""
    reg, vdir = _copy(registry_root, tmp_path)
    f = vdir / "lstm.onnx"
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0xFF
    f.write_bytes(bytes(data))
    with pytest.raises(ModelLoadError, match="lstm.onnx"):
        EngineSet.load(reg, TF, _cfg(), kinds=("lstm",))


def test_version_made_without_int8_is_a_counted_fallback(registry_root, tmp_path):
    """A version published without an INT8 graph (``lstm_int8 = "none"``, or one from before this option)."""
    from engines.quantize import add_int8
    reg, vdir = _copy(registry_root, tmp_path)
    src = tmp_path / "staging"
    shutil.copytree(vdir, src)
    (src / MANIFEST).unlink()
    add_int8(src, "none")
    reg.publish("lstm", TF, src, feature_names=list(FEATURE_SCHEMA.names), schema_hash=FEATURE_SCHEMA.hash,
                make_current=True)
    m = Metrics()
    es = EngineSet.load(reg, TF, _cfg(), metrics=m, kinds=("lstm",))
    info = es.info()["lstm"]
    assert info["backend"] == "onnxruntime-cpu" and info["fallback"] is True
    assert "INT8 method none" in info["failed"][0]
    assert _fallbacks(m, "load_failed") == 1
