"""Backend selection: the best backend that can actually run here, with a reason; a missing GPU or library
is a logged fallback, never a crash.

Probes are lazy and cheap first: a machine without an NVIDIA device node / nvidia-smi never imports torch or
tensorrt just to learn there is no GPU.
"""
from __future__ import annotations

import functools
import importlib
import importlib.util
import os
import shutil
from dataclasses import dataclass
from typing import Any

import structlog

from engines.base import BackendUnavailable, InferenceEngine


def _log():
    # fetched per call (rare): a logger cached at import time would ignore later logging configuration
    return structlog.get_logger(__name__)

__all__ = [
    "LSTM_PREFERENCE", "XGB_PREFERENCE", "KINDS", "BackendChoice", "probe", "choose_backend", "select_backend",
    "create_engine", "gpu_present", "lstm_options", "candidates",
]

# Best first. torch-cpu is a comparison backend (benchmarks), never picked by auto; onnxruntime-cpu-int8 trades
# accuracy for speed, so only an explicit request runs it (its fallback is the fp32 chain above).
LSTM_PREFERENCE = ("tensorrt", "torch-cuda", "onnxruntime-cuda", "onnxruntime-cpu")
XGB_PREFERENCE = ("native-cuda", "compiled-cpu", "native-cpu")
EXTRA_BACKENDS = {"lstm": ("torch-cpu", "onnxruntime-cpu-int8"), "xgboost": ()}
OPT_IN = frozenset({"onnxruntime-cpu-int8"})  # never a fallback for another request
KINDS = {"lstm": LSTM_PREFERENCE, "xgboost": XGB_PREFERENCE}


@dataclass(frozen=True)
class BackendChoice:
    kind: str
    requested: str
    backend: str
    reason: str
    fallback: bool  # True when a specific request could not be honoured


@functools.lru_cache(maxsize=1)
def gpu_present() -> bool:
    """An NVIDIA GPU is visible: device node or nvidia-smi (no heavy import)."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return False
    return os.path.exists("/dev/nvidia0") or os.path.exists("/dev/nvidiactl") or shutil.which("nvidia-smi") is not None


def _has_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


@functools.lru_cache(maxsize=1)
def _torch_cuda() -> tuple[bool, str]:
    if not gpu_present():
        return False, "no NVIDIA GPU visible (no /dev/nvidia*, no nvidia-smi)"
    if not _has_module("torch"):
        return False, "torch not installed"
    import torch
    if not torch.cuda.is_available():
        return False, f"torch {torch.__version__} sees no CUDA device (CPU-only build or driver problem)"
    return True, f"CUDA GPU {torch.cuda.get_device_name()} via torch {torch.__version__}"


def _probe_uncached(kind: str, backend: str) -> tuple[bool, str]:
    if kind == "lstm":
        if backend in ("onnxruntime-cpu", "onnxruntime-cpu-int8"):
            return (True, "onnxruntime installed") if _has_module("onnxruntime") else \
                (False, "onnxruntime not installed")
        if backend == "torch-cpu":
            return (True, "torch installed") if _has_module("torch") else (False, "torch not installed")
        if backend == "onnxruntime-cuda":
            if not gpu_present():
                return False, "no NVIDIA GPU visible"
            if not _has_module("onnxruntime"):
                return False, "onnxruntime not installed"
            import onnxruntime as ort
            prov = ort.get_available_providers()
            if "CUDAExecutionProvider" not in prov:
                return False, f"onnxruntime {ort.__version__} has no CUDAExecutionProvider (providers {prov})"
            return True, "onnxruntime CUDAExecutionProvider available"
        if backend == "torch-cuda":
            return _torch_cuda()
        if backend == "tensorrt":
            if not gpu_present():
                return False, "no NVIDIA GPU visible"
            if not _has_module("tensorrt"):
                return False, "tensorrt not installed"
            ok, why = _torch_cuda()  # the TensorRT engine uses torch for device buffers and streams
            if not ok:
                return False, f"tensorrt installed but {why}"
            import tensorrt as trt
            return True, f"TensorRT {trt.__version__} on {why}"
        return False, f"unknown LSTM backend {backend!r}"
    if kind == "xgboost":
        try:
            xe = importlib.import_module("engines.xgb_engine")
        except ImportError as e:
            return False, f"engines.xgb_engine not importable ({e})"
        # the XGBoost helper's own probe, when it offers one, knows its backends best
        for fname in ("backend_available", "probe_backend"):
            fn = getattr(xe, fname, None)
            if callable(fn):
                res = fn(backend)
                return (bool(res[0]), str(res[1])) if isinstance(res, tuple) else (bool(res), "reported by xgb_engine")
        if not _has_module("xgboost"):
            return False, "xgboost not installed"
        if backend in ("native-cpu", "compiled-cpu"):
            return True, "xgboost installed (CPU)"
        if backend == "native-cuda":
            if not gpu_present():
                return False, "no NVIDIA GPU visible"
            import xgboost
            if not xgboost.build_info().get("USE_CUDA", False):
                return False, f"xgboost {xgboost.__version__} is a CPU-only build (USE_CUDA=False)"
            return True, f"xgboost {xgboost.__version__} CUDA build + GPU"
        return False, f"unknown XGBoost backend {backend!r}"
    return False, f"unknown engine kind {kind!r}"


@functools.lru_cache(maxsize=64)
def probe(kind: str, backend: str) -> tuple[bool, str]:
    """(available, reason) for one backend; never raises."""
    try:
        return _probe_uncached(kind, backend)
    except Exception as e:  # a broken install is "unavailable", with the reason
        return False, f"probe failed: {type(e).__name__}: {e}"


def choose_backend(kind: str, requested: str = "auto") -> BackendChoice:
    """The backend to use and why. ``auto`` takes the first available in preference order; a specific
    request that cannot run falls back the same way, with a warning."""
    if kind not in KINDS:
        raise ValueError(f"unknown engine kind {kind!r}; known: {sorted(KINDS)}")
    order = KINDS[kind]
    known = order + EXTRA_BACKENDS[kind]
    if requested != "auto" and requested not in known:
        raise ValueError(f"unknown {kind} backend {requested!r}; known: {', '.join(known)} or auto")
    skipped: list[str] = []
    if requested != "auto":
        ok, why = probe(kind, requested)
        if ok:
            return BackendChoice(kind, requested, requested, f"requested; {why}", False)
        skipped.append(f"{requested}: {why}")
    for b in order:
        if b == requested:
            continue
        ok, why = probe(kind, b)
        if ok:
            reason = f"{b}: {why}" + (f" (skipped {'; '.join(skipped)})" if skipped else "")
            choice = BackendChoice(kind, requested, b, reason, requested != "auto")
            if choice.fallback:
                _log().warning("backend_fallback", kind=kind, requested=requested, chosen=b, reason=reason)
            return choice
        skipped.append(f"{b}: {why}")
    raise BackendUnavailable(f"no {kind} backend can run here: {'; '.join(skipped)}")


def candidates(kind: str, requested: str = "auto") -> list[BackendChoice]:
    """Backends to try in order: :func:`choose_backend`'s pick, then every other backend that probes
    available (preference order, then the comparison backends as a last resort). A backend can probe fine
    and still fail to load or warm up (a TensorRT build error, ORT's CUDA provider failing to initialise):
    the caller then moves on to the next one instead of refusing to start."""
    first = choose_backend(kind, requested)
    out = [first]
    for b in KINDS[kind] + EXTRA_BACKENDS[kind]:
        if b in (first.backend, requested) or b in OPT_IN:
            continue
        ok, why = probe(kind, b)
        if ok:
            out.append(BackendChoice(kind, requested, b, f"{b}: {why}", True))
    return out


def select_backend(kind: str, requested: str = "auto") -> str:
    choice = choose_backend(kind, requested)
    _log().info("backend_selected", kind=kind, requested=requested, backend=choice.backend, reason=choice.reason)
    return choice.backend


def lstm_options(cfg: Any) -> dict[str, Any]:
    """LSTM engine options from an ``EnginesConfig`` (the daemon passes them to ``create_engine``)."""
    return {"threads": cfg.ort_threads, "capture_batches": tuple(cfg.cuda_graph_batches),
            "fp16": cfg.tensorrt_fp16, "max_batch": cfg.tensorrt_max_batch,
            "workspace_mb": cfg.tensorrt_workspace_mb}


def create_engine(kind: str, backend: str, **options: Any) -> InferenceEngine:
    """Instantiate (not load) the engine class for ``kind``/``backend``; heavy imports happen here."""
    if kind == "lstm":
        from engines.lstm_engine import LSTM_ENGINES
        try:
            return LSTM_ENGINES[backend](**options)
        except KeyError:
            raise ValueError(f"unknown LSTM backend {backend!r}; known: {sorted(LSTM_ENGINES)}") from None
    if kind == "xgboost":
        xe = importlib.import_module("engines.xgb_engine")
        for fname in ("make_xgb_engine", "create_xgb_engine"):
            fn = getattr(xe, fname, None)
            if callable(fn):
                return fn(backend, **options)
        table = getattr(xe, "XGB_ENGINES", None)
        if isinstance(table, dict) and backend in table:
            return table[backend](**options)
        raise ValueError(f"engines.xgb_engine offers no factory for backend {backend!r}")
    raise ValueError(f"unknown engine kind {kind!r}")
