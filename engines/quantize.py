"""INT8 copy of the LSTM's ONNX graph for the ``onnxruntime-cpu-int8`` backend (ONNX Runtime quantization).

Made at TRAINING time, next to ``lstm.onnx`` in the same version directory (``lstm.int8.onnx``, its sha256 in
``lstm.json`` and hence in the registry manifest): the static method needs training windows to calibrate on, and
only training has them (the daemon at load time has a model, not its data); a checksummed artifact also means
every load runs the same bytes, with no quantizer run at start-up.

Methods (``TrainSpec.lstm_int8``):

* ``dynamic`` (default): ``quantize_dynamic`` with int8 weights for the ``LSTM`` ops (``DynamicQuantizeLSTM``)
  and the head (``MatMulInteger``); activations are quantized per call from their actual range, so no
  calibration is needed and none is used.
* ``static``: the head's activations get fixed ranges (``quantize_static``, QDQ, MinMax) calibrated on training
  windows only (:class:`TrainingWindowReader`), then the LSTM ops are quantized dynamically as above (ONNX Runtime
  has no static/QDQ LSTM kernel). The output sigmoid is never quantized (P(up) would get 256 levels).
* ``none``: no INT8 file (the backend then falls back to fp32, counted).

A failure to quantize never fails training: the version is saved without the INT8 file and ``lstm.json``'s
``int8.error`` says why; the INT8 backend then refuses the version and the daemon falls back (counted).
"""
from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import structlog

from engines.lstm_model import INPUT_NAME, META_FILE, ONNX_FILE, read_meta, verify_file
from engines.metrics_common import atomic_write_bytes, sha256_file

log = structlog.get_logger(__name__)

__all__ = ["INT8_FILE", "INT8_METHODS", "TrainingWindowReader", "quantize_onnx", "add_int8"]

INT8_FILE = "lstm.int8.onnx"
INT8_METHODS = ("dynamic", "static", "none")


class TrainingWindowReader:
    """ONNX Runtime ``CalibrationDataReader`` over training windows: up to ``max_windows`` of them, evenly spaced
    over the whole training period (not just its start), in batches of ``batch``. It holds only what it is given:
    the caller hands it the TRAINING windows (engines.train), never validation or test ones."""

    def __init__(self, windows: np.ndarray, *, max_windows: int = 2048, batch: int = 256) -> None:
        w = np.asarray(windows, dtype=np.float32)
        if w.ndim != 3 or len(w) == 0:
            raise ValueError(f"calibration needs (n>0, seq_len, n_features) windows, got shape {w.shape}")
        if not np.isfinite(w).all():
            raise ValueError("calibration windows contain NaN/inf")
        idx = np.unique(np.linspace(0, len(w) - 1, min(len(w), max(1, int(max_windows)))).round().astype(np.int64))
        self.windows = np.ascontiguousarray(w[idx])
        self.batch = max(1, int(batch))
        self._i = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._i >= len(self.windows):
            return None
        x = self.windows[self._i:self._i + self.batch]
        self._i += self.batch
        return {INPUT_NAME: x}

    def rewind(self) -> None:
        self._i = 0


def _as_reader(reader: TrainingWindowReader):
    # a CalibrationDataReader subclass made here: the onnxruntime import stays out of module import time
    from onnxruntime.quantization import CalibrationDataReader

    class _R(CalibrationDataReader):
        def get_next(self):
            return reader.get_next()

        def rewind(self):
            reader.rewind()

    return _R()


def quantize_onnx(fp32: bytes, method: str = "dynamic", calibration: TrainingWindowReader | None = None) -> bytes:
    """INT8 ONNX bytes from the FP32 LSTM graph (see the module docstring for the methods)."""
    import logging

    import onnx
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_dynamic, quantize_static

    if method not in ("dynamic", "static"):
        raise ValueError(f"unknown INT8 method {method!r}; known: dynamic, static")
    if method == "static" and calibration is None:
        raise ValueError("static INT8 quantization needs calibration windows (training windows)")
    quiet = logging.getLogger()  # the quantizer warns on root about pre-processing: not actionable here
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        with tempfile.TemporaryDirectory(prefix="tradingd-int8-") as tmp:
            src, mid, out = Path(tmp) / "fp32.onnx", Path(tmp) / "qdq.onnx", Path(tmp) / "int8.onnx"
            src.write_bytes(fp32)
            if method == "static":
                model = onnx.load_model_from_string(fp32)
                sigmoids = [n.name for n in model.graph.node if n.op_type == "Sigmoid"]
                calibration.rewind()
                quantize_static(str(src), str(mid), _as_reader(calibration), quant_format=QuantFormat.QDQ,
                                op_types_to_quantize=["Gemm", "MatMul"], nodes_to_exclude=sigmoids,
                                activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                                extra_options={"CalibTensorRangeSymmetric": False})
                src = mid
            quantize_dynamic(str(src), str(out), weight_type=QuantType.QInt8,
                             op_types_to_quantize=["LSTM"] if method == "static" else ["LSTM", "MatMul", "Gemm"])
            data = out.read_bytes()
    finally:
        quiet.setLevel(level)
    ops = {n.op_type for n in onnx.load_model_from_string(data).graph.node}
    if "DynamicQuantizeLSTM" not in ops:
        raise RuntimeError(f"INT8 quantization left the LSTM in float (ops: {sorted(ops)})")
    return data


def add_int8(version_dir: Path | str, method: str = "dynamic", calibration: np.ndarray | None = None, *,
             max_windows: int = 2048) -> dict[str, Any]:
    """Write ``lstm.int8.onnx`` into a saved LSTM version and record it (sha256, method, calibration size) in
    ``lstm.json``; returns that record. ``calibration``: TRAINING windows (used by ``static`` only). Any quantizer
    failure is recorded as ``int8.error`` and logged, never raised: training goes on with an fp32-only version."""
    if method not in INT8_METHODS:
        raise ValueError(f"unknown INT8 method {method!r}; known: {', '.join(INT8_METHODS)}")
    d = Path(version_dir)
    meta = read_meta(d)
    rec: dict[str, Any] = {"method": method}
    meta["files"].pop(INT8_FILE, None)  # a previous INT8 graph is for previous weights
    (d / INT8_FILE).unlink(missing_ok=True)
    if method != "none":
        try:
            reader = TrainingWindowReader(calibration, max_windows=max_windows) if method == "static" else None
            data = quantize_onnx(verify_file(d, meta, ONNX_FILE).read_bytes(), method, reader)
            atomic_write_bytes(d / INT8_FILE, data)
            meta["files"][INT8_FILE] = sha256_file(d / INT8_FILE)
            rec["calibration_windows"] = int(len(reader.windows)) if reader is not None else 0
            rec["bytes"] = len(data)
        except Exception as e:  # noqa: BLE001 - an fp32-only version is still a good version
            rec["error"] = f"{type(e).__name__}: {e}"
            (d / INT8_FILE).unlink(missing_ok=True)
            log.warning("lstm_int8_failed", version_dir=str(d), method=method, error=rec["error"])
    meta["int8"] = rec
    atomic_write_bytes(d / META_FILE, json.dumps(meta, indent=1).encode())
    return rec
