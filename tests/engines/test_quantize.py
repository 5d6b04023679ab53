"""The INT8 LSTM (engines.quantize + the ``onnxruntime-cpu-int8`` backend) on real models trained on real BTC 1m
klines: it loads and predicts, tracks the fp32 engine within a tolerance derived from the quantization grid, its
calibration reader only ever holds training windows, and a version without a good INT8 file is refused (the
daemon then falls back, tests/daemon/test_int8_fallback.py)."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from engines.backends import candidates, create_engine
from engines.base import ModelLoadError
from engines.lstm_model import META_FILE
from engines.quantize import INT8_FILE, TrainingWindowReader, add_int8

TF = "5m"
DAYS = 30


@pytest.fixture(scope="module")
def real(btc_klines, tmp_path_factory):
    """A real 5m model (30 days of real BTC 1m klines, the training path `tradingd train` uses) whose INT8 copy
    is made with the calibrated ``static`` method, recording every window handed to the calibration reader; a
    copy of the version re-quantized ``dynamic``; and the dataset's train/val/test windows."""
    from engines import quantize
    from engines.train import TrainSpec, _splits, sequence_ends, train_timeframe, windows_at

    k = btc_klines[:DAYS * 1440]
    spec = TrainSpec(TF, lstm_epochs=2, xgb_rounds=20, threads=1, lstm_int8="static")
    seen: list[np.ndarray] = []

    class Recording(TrainingWindowReader):
        def __init__(self, windows, **kw):
            seen.append(np.array(windows, copy=True))
            super().__init__(windows, **kw)

    out = tmp_path_factory.mktemp("int8")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(quantize, "TrainingWindowReader", Recording)
        train_timeframe(k, spec, out)
    ds, h, a, b, tr, va, te = _splits(k, spec)
    L = spec.lstm_seq_len
    win = {name: windows_at(ds.X, sequence_ends(ds.X, rows, L), L) for name, rows in
           (("train", tr), ("val", va), ("test", te))}
    static = out / "lstm"
    dynamic = out / "lstm-dynamic"
    shutil.copytree(static, dynamic)
    assert add_int8(dynamic, "dynamic")["method"] == "dynamic"
    return {"static": static, "dynamic": dynamic, "seen": seen, "win": win}


def _predict(backend: str, d, x) -> np.ndarray:
    e = create_engine("lstm", backend)
    e.load(d)
    e.warmup(2)
    return np.asarray(e.predict(x), np.float64)


def _weights_on_int8_grid_delta(d, x) -> np.ndarray:
    """|p(fp32 net with every weight matrix rounded to the symmetric per-tensor int8 grid ONNX Runtime uses,
    step max|W|/127) - p(fp32 net)|: the output error the weight quantization alone causes, in torch."""
    import torch

    from engines.lstm_model import load_net, prob_module
    net = prob_module(load_net(d)).eval()
    with torch.inference_mode():
        p0 = net(torch.from_numpy(x)).numpy()
    with torch.no_grad():
        for name, w in net.named_parameters():
            if "weight" in name:
                s = w.abs().max() / 127
                w.copy_(torch.round(w / s) * s)
    with torch.inference_mode():
        pw = net(torch.from_numpy(x)).numpy()
    return np.abs(pw.astype(np.float64) - p0)


@pytest.mark.parametrize("method", ["dynamic", "static"])
def test_int8_engine_loads_and_predicts_on_real_model(real, method):
    d = real[method]
    meta = json.loads((d / META_FILE).read_text())
    assert INT8_FILE in meta["files"] and meta["int8"]["method"] == method
    e = create_engine("lstm", "onnxruntime-cpu-int8")
    e.load(d)
    e.warmup(3)
    info = e.info()
    assert e.ready and info.backend == "onnxruntime-cpu-int8"
    x = real["win"]["test"][:64]
    p = e.predict(x)
    assert p.shape == (64,) and np.isfinite(p).all() and ((p > 0) & (p < 1)).all()
    import onnx
    ops = {n.op_type for n in onnx.load(str(d / INT8_FILE)).graph.node}
    assert "DynamicQuantizeLSTM" in ops and "LSTM" not in ops  # the recurrent weights really are int8


@pytest.mark.parametrize("method", ["dynamic", "static"])
def test_int8_tracks_fp32_within_quantization_tolerance(real, method):
    """Tolerance from the quantization, stated before looking: the INT8 graph quantizes two operand sets per
    matmul (int8 weights on the grid above, uint8 activations with a step of the same relative size, range/255),
    and the error of the first steps feeds the later ones through the recurrence: at most 2 x 2 = 4 times the
    error of rounding the weights alone. Ranking (what the optimizer's threshold acts on) must keep a Spearman
    correlation >= 0.99 over the held-out window."""
    from scipy.stats import spearmanr
    d = real[method]
    x = real["win"]["test"]
    p32 = _predict("onnxruntime-cpu", d, x)
    p8 = _predict("onnxruntime-cpu-int8", d, x)
    dw = _weights_on_int8_grid_delta(d, x)
    assert dw.max() > 0  # the grid really moved the weights: the bound is not 0 by accident
    diff = np.abs(p8 - p32)
    assert diff.max() <= 4 * dw.max(), (diff.max(), dw.max())
    assert diff.mean() <= 4 * dw.mean(), (diff.mean(), dw.mean())
    assert diff.max() > 0  # and it is a different graph, not the fp32 file again
    assert spearmanr(p32, p8)[0] >= 0.99
    # one window at a time (the daemon's single-symbol path): the activation ranges are then that window's own,
    # so the answer differs from the batched one, and stays within the same bound
    e = create_engine("lstm", "onnxruntime-cpu-int8")
    e.load(d)
    one = np.array([e.predict(x[i:i + 1])[0] for i in range(200)], np.float64)
    assert np.abs(one - p32[:200]).max() <= 4 * dw.max()


def test_calibration_reader_sees_training_windows_only(real):
    """Every window the calibration reader was given during training is a training window (the same bytes as
    one built from the training rows) and none is a validation or test window."""
    seen = real["seen"]
    assert len(seen) == 1 and len(seen[0]) > 100
    key = lambda w: w.tobytes()  # noqa: E731
    train = {key(w) for w in real["win"]["train"]}
    later = {key(w) for w in real["win"]["val"]} | {key(w) for w in real["win"]["test"]}
    got = [key(w) for w in seen[0]]
    assert all(g in train for g in got)
    assert not any(g in later for g in got)
    meta = json.loads((real["static"] / META_FILE).read_text())
    assert meta["int8"]["calibration_windows"] == min(len(seen[0]), 2048)


def test_calibration_reader_spreads_over_training_and_refuses_bad_windows():
    w = np.arange(5000 * 2 * 3, dtype=np.float32).reshape(5000, 2, 3)
    r = TrainingWindowReader(w, max_windows=100, batch=32)
    assert len(r.windows) == 100
    assert r.windows[0].tobytes() == w[0].tobytes() and r.windows[-1].tobytes() == w[-1].tobytes()
    batches = []
    while (b := r.get_next()) is not None:
        batches.append(b["x"])
    assert sum(len(b) for b in batches) == 100 and max(len(b) for b in batches) == 32
    r.rewind()
    assert r.get_next() is not None
    bad = w[:10].copy()
    bad[3, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        TrainingWindowReader(bad)
    with pytest.raises(ValueError, match="windows"):
        TrainingWindowReader(np.empty((0, 2, 3), np.float32))


def test_static_without_calibration_is_recorded_not_raised(real, tmp_path):
    d = tmp_path / "v"
    shutil.copytree(real["dynamic"], d)
    rec = add_int8(d, "static", None)
    assert "error" in rec and INT8_FILE not in json.loads((d / META_FILE).read_text())["files"]
    assert not (d / INT8_FILE).exists()
    with pytest.raises(ModelLoadError, match="no lstm.int8.onnx"):
        create_engine("lstm", "onnxruntime-cpu-int8").load(d)
    # the fp32 engine still loads the same version
    create_engine("lstm", "onnxruntime-cpu").load(d)


def test_quantizer_failure_keeps_an_fp32_version(real, tmp_path, monkeypatch):
    from engines import quantize

    def boom(*a, **k):
        raise RuntimeError("quantizer exploded (injected)")

    monkeypatch.setattr(quantize, "quantize_onnx", boom)
    d = tmp_path / "v"
    shutil.copytree(real["dynamic"], d)
    rec = add_int8(d, "dynamic")
    assert rec["error"] == "RuntimeError: quantizer exploded (injected)"
    with pytest.raises(ModelLoadError, match="quantizer exploded"):
        create_engine("lstm", "onnxruntime-cpu-int8").load(d)


@pytest.mark.parametrize("damage", ["flip", "truncate", "delete"])
def test_corrupt_int8_file_is_refused(real, tmp_path, damage):
    d = tmp_path / "v"
    shutil.copytree(real["dynamic"], d)
    f = d / INT8_FILE
    data = bytearray(f.read_bytes())
    if damage == "flip":
        data[len(data) // 2] ^= 0xFF
        f.write_bytes(bytes(data))
    elif damage == "truncate":
        f.write_bytes(bytes(data[: len(data) // 3]))
    else:
        f.unlink()
    with pytest.raises(ModelLoadError, match="lstm.int8.onnx"):
        create_engine("lstm", "onnxruntime-cpu-int8").load(d)


def test_int8_is_opt_in_never_a_fallback_for_another_request():
    assert all(c.backend != "onnxruntime-cpu-int8" for c in candidates("lstm", "auto"))
    chain = candidates("lstm", "onnxruntime-cpu-int8")
    assert chain[0].backend == "onnxruntime-cpu-int8" and not chain[0].fallback
    assert "onnxruntime-cpu" in [c.backend for c in chain[1:]]  # its fallback is the fp32 graph
    with pytest.raises(ValueError, match="unknown INT8 method"):
        add_int8("/nonexistent", "int4")
