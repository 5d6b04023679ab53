"""The one contract every inference backend passes (LSTM and XGBoost alike), on models trained from real
BTC klines. Backends that cannot run on this machine are skipped with the probe's reason."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from engines.backends import EXTRA_BACKENDS, LSTM_PREFERENCE, XGB_PREFERENCE, create_engine, probe
from engines.base import InferenceEngine, ModelLoadError
from engines.xgb_model import XGBoostModel



CASES = [("lstm", b) for b in LSTM_PREFERENCE + EXTRA_BACKENDS["lstm"]] + [("xgboost", b) for b in XGB_PREFERENCE]
SEQ_LEN = 12
# INT8 answers carry the quantization error, and its activations are quantized per call over the whole batch, so
# a window's answer also moves (within that error) with the batch it comes in; the bound derived from the
# quantization grid is checked in tests/engines/test_quantize.py, this is the contract's coarse ceiling
INT8_ATOL = 1e-2


@pytest.fixture(scope="module")
def real_rows(lstm_dataset):
    X, c, y, fwd, names = lstm_dataset(4000)
    return X, y, fwd, names


@pytest.fixture(scope="module")
def lstm_version(real_rows, tmp_path_factory):
    pytest.importorskip("torch")
    from engines.lstm_model import LSTMModel, make_sequences, time_split
    X, y, _, names = real_rows
    seqs, end = make_sequences(X, SEQ_LEN)
    ok = np.isfinite(y[end])
    seqs, yy = seqs[ok], y[end][ok]
    tr, va = time_split(len(seqs), 0.25, gap=5)
    m = LSTMModel(device="cpu", seq_len=SEQ_LEN, hidden=16, layers=2, dropout=0.1, epochs=1, seed=3)
    m.set_feature_schema(names, "contract")
    m.train(seqs[tr], yy[tr], seqs[va], yy[va])
    d = tmp_path_factory.mktemp("lstm") / "v1"
    m.save(d)
    from engines.quantize import add_int8
    add_int8(d, "dynamic")  # the onnxruntime-cpu-int8 backend's graph, as training makes it
    return d, seqs[va][:200]


@pytest.fixture(scope="module")
def xgb_version(real_rows, tmp_path_factory):
    X, y, _, names = real_rows
    ok = np.isfinite(X).all(axis=1) & np.isfinite(y)
    X, y = X[ok].astype(np.float32), y[ok]
    n_tr = int(len(X) * 0.75)
    m = XGBoostModel(device="cpu")
    m.configure(num_boost_round=30, learning_rate=0.1, max_depth=4)
    m.set_feature_schema(names, "contract")
    m.train(X[:n_tr], y[:n_tr], X[n_tr:], y[n_tr:])
    d = tmp_path_factory.mktemp("xgb") / "v1"
    m.save(d)
    return d, X[n_tr:][:200]


@pytest.fixture(params=CASES, ids=[f"{k}-{b}" for k, b in CASES])
def case(request):
    kind, backend = request.param
    ok, why = probe(kind, backend)
    if not ok:
        pytest.skip(f"{kind}/{backend} unavailable here: {why}")
    version = request.getfixturevalue("lstm_version" if kind == "lstm" else "xgb_version")
    return kind, backend, version[0], version[1]


def _engine(kind, backend):
    return create_engine(kind, backend)


def test_load_warmup_ready_predict_shape_and_range(case):
    kind, backend, d, x = case
    e = _engine(kind, backend)
    assert isinstance(e, InferenceEngine)
    assert e.kind == kind and e.backend == backend
    assert not e.ready
    e.load(d)
    assert not e.ready, "an engine must not be ready before warm-up"
    e.warmup(5)
    assert e.ready
    p = e.predict(x[:64])
    assert p.shape == (64,)
    assert np.isfinite(p).all() and (p >= 0).all() and (p <= 1).all()
    assert np.std(p) > 0, "a trained model on real data should not output a constant"


def test_batch_consistent_with_row_by_row_and_deterministic(case):
    kind, backend, d, x = case
    e = _engine(kind, backend)
    e.load(d)
    e.warmup(2)
    rows = np.array([e.predict(x[i:i + 1])[0] for i in range(64)])
    b64 = e.predict(x[:64])
    atol = INT8_ATOL if backend == "onnxruntime-cpu-int8" else 1e-5
    np.testing.assert_allclose(b64, rows, atol=atol, rtol=0)
    np.testing.assert_array_equal(e.predict(x[:64]), b64)
    assert e.predict(x[:1]).shape == (1,)
    assert e.predict(x[:0]).shape == (0,)
    # larger than any captured/optimised batch still works (chunked)
    big = np.concatenate([x] * 2)
    np.testing.assert_allclose(e.predict(big)[: len(x)], e.predict(x), atol=atol, rtol=0)


def test_same_model_same_answers_across_backends(case):
    """Every backend agrees with the training-side model it serves: LSTM backends with the PyTorch model they
    were exported from (fp16 TensorRT: looser), XGBoost backends (the compiled tree walker included) with the
    booster's own predict. (The XGBoost cases used to skip here on every machine.)"""
    kind, backend, d, x = case
    e = _engine(kind, backend)
    e.load(d)
    e.warmup(1)
    if kind == "lstm":
        from engines.lstm_model import LSTMModel
        ref = LSTMModel.load(d, device="cpu").predict(x)
    else:
        ref = XGBoostModel.load(d, device="cpu").predict(x)
    atol = {"tensorrt": 5e-3, "onnxruntime-cpu-int8": INT8_ATOL}.get(backend, 1e-5)
    np.testing.assert_allclose(e.predict(x), ref, atol=atol, rtol=0)


def test_wrong_input_shape_is_a_clear_error(case):
    kind, backend, d, x = case
    e = _engine(kind, backend)
    e.load(d)
    bad = x[:4, ..., :-1] if x.ndim >= 2 else x
    with pytest.raises(ValueError):
        e.predict(bad)


def _truncate_binary_files(v: Path) -> list[str]:
    hit = []
    for f in v.rglob("*"):
        if f.is_file() and f.suffix != ".json":
            data = f.read_bytes()
            f.write_bytes(data[: len(data) // 2])
            hit.append(f.name)
    return hit


def test_refuses_truncated_model_file(case, tmp_path):
    kind, backend, d, x = case
    v = tmp_path / d.name
    shutil.copytree(d, v)
    assert _truncate_binary_files(v)
    e = _engine(kind, backend)
    with pytest.raises(ModelLoadError) as ei:
        e.load(v)
    assert str(v) in str(ei.value) or v.name in str(ei.value), f"error should name the file: {ei.value}"
    assert not e.ready


def test_refuses_corrupt_metadata_and_missing_dir(case, tmp_path):
    kind, backend, d, x = case
    v = tmp_path / d.name
    shutil.copytree(d, v)
    for meta in v.glob("*.json"):
        meta.write_text(meta.read_text()[:20])
    e = _engine(kind, backend)
    with pytest.raises(ModelLoadError):
        e.load(v)
    with pytest.raises(ModelLoadError):
        e.load(tmp_path / "no-such-version")
    assert not e.ready


def test_failed_reload_leaves_engine_not_ready(case, tmp_path):
    kind, backend, d, x = case
    e = _engine(kind, backend)
    e.load(d)
    e.warmup(1)
    assert e.ready
    v = tmp_path / d.name
    shutil.copytree(d, v)
    _truncate_binary_files(v)
    with pytest.raises(ModelLoadError):
        e.load(v)
    assert not e.ready


def test_lstm_metadata_carries_schema(lstm_version):
    d, _ = lstm_version
    meta = json.loads((d / "lstm.json").read_text())
    assert meta["schema_hash"] == "contract" and meta["feature_names"]
