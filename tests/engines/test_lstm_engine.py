"""LSTM engines and backend selection: what `auto` picks here and why, fallback instead of a crash when a
GPU backend is requested on a CPU box, TensorRT plan cache keys, and the TensorRT build where it exists."""
from __future__ import annotations

import importlib.util

import numpy as np
import pytest
from structlog.testing import capture_logs

from engines import backends
from engines.backends import choose_backend, create_engine, probe, select_backend
from engines.base import BackendUnavailable, ModelLoadError
from engines.lstm_engine import (
    LSTM_ENGINES, OnnxRuntimeCPUEngine, TensorRTEngine, TorchCUDAGraphEngine, tensorrt_cache_key,
)



HAS_TRT = importlib.util.find_spec("tensorrt") is not None


def _cuda() -> bool:
    try:
        import torch
        return torch.cuda.is_available()
    except ImportError:
        return False


@pytest.fixture(scope="module")
def version(lstm_dataset, windows_with_labels, tmp_path_factory):
    from engines.lstm_model import LSTMModel, time_split
    X, c, y, fwd, names = lstm_dataset(3000)
    seqs, yy, _, _ = windows_with_labels(X, y, fwd, 10)
    tr, va = time_split(len(seqs), 0.25, gap=5)
    m = LSTMModel(device="cpu", seq_len=10, hidden=12, layers=1, epochs=1, seed=5)
    m.train(seqs[tr], yy[tr], seqs[va], yy[va])
    d = tmp_path_factory.mktemp("eng") / "v7"
    m.save(d)
    return d, seqs[va][:128], m


def test_auto_picks_best_available_with_reason():
    for kind in ("lstm",):
        ch = choose_backend(kind, "auto")
        assert ch.backend in backends.KINDS[kind] and not ch.fallback and ch.reason
        assert probe(kind, ch.backend)[0]
        # nothing better than the choice is available
        better = backends.KINDS[kind][: backends.KINDS[kind].index(ch.backend)]
        assert not any(probe(kind, b)[0] for b in better)
    if not backends.gpu_present():
        ch = choose_backend("lstm")
        assert ch.backend == "onnxruntime-cpu"
        assert "no NVIDIA GPU" in ch.reason


@pytest.mark.skipif(backends.gpu_present(), reason="this machine has a GPU; fallback path not exercised")
@pytest.mark.parametrize("requested", ["tensorrt", "torch-cuda", "onnxruntime-cuda"])
def test_missing_gpu_is_a_logged_fallback_not_a_crash(requested):
    with capture_logs() as logs:
        ch = choose_backend("lstm", requested)
    assert ch.backend == "onnxruntime-cpu" and ch.fallback and requested in ch.reason
    assert any(e["event"] == "backend_fallback" and e["log_level"] == "warning" for e in logs)
    assert select_backend("lstm", requested) == "onnxruntime-cpu"


def test_unknown_names_are_errors():
    with pytest.raises(ValueError, match="unknown lstm backend"):
        choose_backend("lstm", "tpu")
    with pytest.raises(ValueError, match="unknown engine kind"):
        choose_backend("svm")
    with pytest.raises(ValueError):
        create_engine("lstm", "tpu")
    assert probe("lstm", "tpu") == (False, "unknown LSTM backend 'tpu'")


def test_create_engine_maps_every_lstm_backend():
    for name, cls in LSTM_ENGINES.items():
        e = create_engine("lstm", name)
        assert isinstance(e, cls) and e.backend == name and e.kind == "lstm" and not e.ready


def test_lstm_options_from_config_reach_the_engine():
    from daemon.config import EnginesConfig
    from engines.backends import lstm_options
    opts = lstm_options(EnginesConfig())
    assert opts["threads"] == 1 and opts["capture_batches"] == (1, 64) and opts["fp16"] is True
    e = create_engine("lstm", "torch-cuda", **opts)
    assert e._buckets() == (1, 64)


def test_ort_cpu_engine_info_after_warmup(version):
    d, xs, m = version
    e = OnnxRuntimeCPUEngine()
    e.load(d)
    e.warmup(20)
    info = e.info()
    assert info.warm and info.backend == "onnxruntime-cpu" and info.version == "v7"
    assert info.p50_latency_us is not None and info.p50_latency_us > 0
    assert info.extra["providers"] == ["CPUExecutionProvider"] and info.extra["threads"] == 1
    np.testing.assert_allclose(e.predict(xs), m.predict(xs), atol=1e-5)


def test_schema_mismatch_is_refused(version):
    d, _, _ = version
    with pytest.raises(ModelLoadError, match="feature schema"):
        OnnxRuntimeCPUEngine(expected_schema_hash="something-else").load(d)


def test_nan_input_is_refused(version):
    d, xs, _ = version
    e = OnnxRuntimeCPUEngine()
    e.load(d)
    bad = xs[:2].copy()
    bad[1, 3, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        e.predict(bad)
    with pytest.raises(RuntimeError):
        OnnxRuntimeCPUEngine().predict(xs[:1])


@pytest.mark.skipif(_cuda(), reason="CUDA present: the unavailable path is not reachable")
def test_gpu_engines_raise_backend_unavailable_on_cpu(version):
    d, _, _ = version
    for cls in (TorchCUDAGraphEngine, TensorRTEngine):
        with pytest.raises(BackendUnavailable):
            cls().load(d)


def test_tensorrt_cache_key_changes_with_each_input():
    base = dict(gpu_name="NVIDIA GH200 480GB", compute_capability="9.0", trt_version="10.3.0",
                onnx_sha256="ab" * 32, fp16=True, max_batch=256)
    k = tensorrt_cache_key(**base)
    assert k == tensorrt_cache_key(**base) and k.endswith(".plan") and "sm90" in k and "GH200" in k
    for field, other in [("gpu_name", "NVIDIA H100"), ("compute_capability", "8.9"), ("trt_version", "10.4.0"),
                         ("onnx_sha256", "cd" * 32), ("fp16", False), ("max_batch", 64)]:
        assert tensorrt_cache_key(**{**base, field: other}) != k, field


@pytest.mark.skipif(not (HAS_TRT and _cuda()), reason="tensorrt not importable / no CUDA GPU here")
def test_tensorrt_engine_builds_caches_and_matches(version, tmp_path):
    d, xs, m = version
    e = TensorRTEngine(cache_dir=tmp_path)
    e.load(d)
    assert e.info().extra["cache_hit"] is False
    e.warmup(3)
    np.testing.assert_allclose(e.predict(xs), m.predict(xs), atol=5e-3)
    e2 = TensorRTEngine(cache_dir=tmp_path)
    e2.load(d)
    assert e2.info().extra["cache_hit"] is True


@pytest.mark.skipif(not _cuda(), reason="no CUDA GPU here")
def test_torch_cuda_graphs_captured_and_match(version):
    d, xs, m = version
    e = TorchCUDAGraphEngine(capture_batches=(1, 8, 64))
    e.load(d)
    e.warmup(3)
    assert e.info().extra["cuda_graph_batches"] == [1, 8, 64], e.info().extra
    for n in (1, 5, 8, 64, 100):
        np.testing.assert_allclose(e.predict(xs[:n]), m.predict(xs[:n]), atol=1e-4)


def test_truncated_onnx_refused_by_ort(version, tmp_path):
    import shutil
    d, _, _ = version
    v = tmp_path / "v"
    shutil.copytree(d, v)
    data = (v / "lstm.onnx").read_bytes()
    (v / "lstm.onnx").write_bytes(data[:100])
    with pytest.raises(ModelLoadError, match="lstm.onnx"):
        OnnxRuntimeCPUEngine().load(v)


def test_onnx_fp16_cast_for_strongly_typed_tensorrt(version):
    """The fp16 ONNX a strongly typed TensorRT engine is built from: fp16 weights, fp32 at the edges, and (where
    ONNX Runtime CPU runs it) the same probabilities within fp16 error."""
    pytest.importorskip("onnxconverter_common", reason="onnxconverter-common (the gpu extra) not installed")
    import onnx
    import onnxruntime as ort
    from engines.lstm_engine import onnx_to_fp16
    d, xs, m = version
    raw = (d / "lstm.onnx").read_bytes()
    half = onnx.load_model_from_string(onnx_to_fp16(raw))
    onnx.checker.check_model(half)
    f32, f16 = onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16
    assert [i.type.tensor_type.elem_type for i in half.graph.input] == [f32]
    assert [o.type.tensor_type.elem_type for o in half.graph.output] == [f32]
    weights = [t for t in half.graph.initializer if t.data_type in (f32, f16)]
    assert weights and all(t.data_type == f16 for t in weights)
    try:
        sess = ort.InferenceSession(half.SerializeToString(), providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001 - ORT CPU lacks some fp16 kernels; TensorRT is what runs it
        pytest.skip(f"ONNX Runtime CPU cannot run the fp16 graph: {str(e).splitlines()[0][:120]}")
    got = sess.run(None, {sess.get_inputs()[0].name: xs})[0].reshape(-1)
    np.testing.assert_allclose(got, m.predict(xs), atol=2e-2)
