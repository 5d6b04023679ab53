"""LSTM inference backends behind the InferenceEngine protocol.

* ``onnxruntime-cpu``  — default on CPU: one intra-op thread, sequential execution, all graph optimisations
  (a batch-1 LSTM step is latency-bound; thread hand-offs cost more than they save).
* ``onnxruntime-cpu-int8`` — the version's INT8 graph (engines.quantize) on the same CPU settings; opt-in only
  (an accuracy trade, never picked by auto); a version without a good INT8 file falls back to fp32.
* ``onnxruntime-cuda`` — the same ONNX file on the CUDAExecutionProvider.
* ``torch-cuda``       — eager PyTorch on the GPU with CUDA graphs captured at warm-up for fixed batch sizes
  (static input buffer; smaller batches are padded up to the next captured size).
* ``tensorrt``         — a TensorRT engine built from the ONNX file (strongly typed; fp16 by casting the ONNX,
  optimisation profile over the batch axis), serialised and cached by GPU name + compute capability + TensorRT version + ONNX sha256.
* ``torch-cpu``        — eager PyTorch on CPU, for comparison only.

All backends read one version directory written by :class:`engines.lstm_model.LSTMModel.save`; the
standardisation and sigmoid are inside the network, so every backend takes raw features and returns P(up).
"""
from __future__ import annotations

import hashlib
import re
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import structlog

from engines.base import BackendUnavailable, ModelLoadError, VersionedEngine, latency_p50_us
from engines.lstm_model import (
    INPUT_NAME, ONNX_FILE, OUTPUT_NAME, _config_from_dict, load_net, prob_module, read_meta, verify_file,
)

log = structlog.get_logger(__name__)

__all__ = [
    "LSTMEngine", "OnnxRuntimeCPUEngine", "OnnxRuntimeCUDAEngine", "TorchCPUEngine", "TorchCUDAGraphEngine",
    "OnnxRuntimeCPUInt8Engine", "TensorRTEngine", "LSTM_ENGINES", "convert_to_tensorrt", "tensorrt_cache_key",
    "onnx_to_fp16",
]


class LSTMEngine(VersionedEngine):
    """LSTM load/validate/warm-up; subclasses implement ``_open`` and ``_run``."""

    kind = "lstm"

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.seq_len = 0

    def load(self, version_dir: Path) -> None:
        """Read and verify the version directory; any failure is a ModelLoadError and leaves us not ready."""
        self._ready = self._loaded = False
        d = Path(version_dir)
        meta = read_meta(d)
        cfg = _config_from_dict(meta["config"])
        schema = self._check_schema(d, meta)
        self._guarded(d, "LSTM", lambda: self._open(d, meta))
        self.seq_len = cfg.seq_len
        self._set_loaded(d, meta, schema)

    def warmup(self, n: int) -> None:
        """Run n batch-1 predictions (plus backend-specific batch shapes) on realistic inputs, then go ready."""
        self._require_loaded("warmup")
        rng = np.random.default_rng(0)
        mean = np.asarray(self.meta["norm"]["mean"], np.float32)
        std = np.asarray(self.meta["norm"]["std"], np.float32)
        x = (mean + std * rng.standard_normal((64, self.seq_len, self.n_features))).astype(np.float32)
        self._prepare(x)
        times = []
        for _ in range(max(1, int(n))):
            t0 = time.perf_counter_ns()
            self.predict(x[:1])
            times.append(time.perf_counter_ns() - t0)
        for b in self._warm_batches():
            self.predict(np.resize(x, (b, self.seq_len, self.n_features)))
        self._warm_ns = times
        self._ready = True
        log.info("engine_warm", kind=self.kind, backend=self.backend, version=self.version,
                 p50_us=latency_p50_us(times))

    def predict(self, batch: np.ndarray) -> np.ndarray:
        self._require_loaded("predict")
        x = np.asarray(batch)
        if x.ndim != 3 or x.shape[1] != self.seq_len or x.shape[2] != self.n_features:
            raise ValueError(f"LSTM input must be (n, {self.seq_len}, {self.n_features}), got {x.shape}")
        if x.dtype != np.float32 or not x.flags.c_contiguous:
            x = np.ascontiguousarray(x, dtype=np.float32)
        if x.shape[0] == 0:
            return np.empty(0, np.float32)
        if not np.isfinite(x).all():
            raise ValueError("LSTM input contains NaN/inf")
        return self._run(x).reshape(x.shape[0])

    # -- backend hooks
    def _open(self, d: Path, meta: dict[str, Any]) -> None:
        raise NotImplementedError

    def _run(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _prepare(self, x: np.ndarray) -> None:
        """Backend set-up that needs example inputs (CUDA graph capture); default nothing."""

    def _warm_batches(self) -> Sequence[int]:
        return (64,)


# --------------------------------------------------------------------------------------------- ONNX Runtime
def _read_verified_onnx(d: Path, meta: dict[str, Any], name: str = ONNX_FILE) -> bytes:
    path = verify_file(d, meta, name)
    data = path.read_bytes()
    if hashlib.sha256(data).hexdigest() != meta["files"][name]:  # changed between check and read
        raise ModelLoadError(f"{path}: changed while loading")
    return data


class OnnxRuntimeCPUEngine(LSTMEngine):
    backend = "onnxruntime-cpu"
    device = "cpu"

    def _session_options(self):
        import onnxruntime as ort
        so = ort.SessionOptions()
        so.intra_op_num_threads = int(self.options.get("threads", 1))
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.log_severity_level = 3
        return so

    def _providers(self) -> list:
        return ["CPUExecutionProvider"]

    def _open(self, d: Path, meta: dict[str, Any]) -> None:
        import onnxruntime as ort
        data = _read_verified_onnx(d, meta)
        try:
            self._sess = ort.InferenceSession(data, self._session_options(), providers=self._providers())
        except Exception as e:
            raise ModelLoadError(f"{self.backend}: ONNX Runtime refused {d / ONNX_FILE}: {e}") from None
        self._check_providers()
        self._outputs = [OUTPUT_NAME]

    def _check_providers(self) -> None:
        pass

    def _run(self, x: np.ndarray) -> np.ndarray:
        return self._sess.run(self._outputs, {INPUT_NAME: x})[0]

    def _extra_info(self) -> dict[str, Any]:
        s = getattr(self, "_sess", None)
        return {"providers": s.get_providers() if s else [], "threads": int(self.options.get("threads", 1))}


class OnnxRuntimeCPUInt8Engine(OnnxRuntimeCPUEngine):
    """The version's INT8 graph (``lstm.int8.onnx``, made at training time by :mod:`engines.quantize`) on ONNX
    Runtime's CPU provider. A version without it (older, ``none``, or quantization failed), or with a corrupt one,
    is a ModelLoadError: the daemon falls back to the next backend (fp32), counted."""

    backend = "onnxruntime-cpu-int8"

    def _open(self, d: Path, meta: dict[str, Any]) -> None:
        import onnxruntime as ort
        from engines.quantize import INT8_FILE
        rec = meta.get("int8") or {}
        if INT8_FILE not in meta["files"]:
            why = rec.get("error") or f"INT8 method {rec.get('method', 'not recorded (older version)')}"
            raise ModelLoadError(f"{self.backend}: {d} has no {INT8_FILE} ({why})")
        data = _read_verified_onnx(d, meta, INT8_FILE)
        try:
            self._sess = ort.InferenceSession(data, self._session_options(), providers=self._providers())
        except Exception as e:
            raise ModelLoadError(f"{self.backend}: ONNX Runtime refused {d / INT8_FILE}: {e}") from None
        self._outputs = [OUTPUT_NAME]
        self._int8 = dict(rec)

    def _extra_info(self) -> dict[str, Any]:
        return {**super()._extra_info(), "precision": "int8", "int8": getattr(self, "_int8", {})}


class OnnxRuntimeCUDAEngine(OnnxRuntimeCPUEngine):
    backend = "onnxruntime-cuda"
    device = "cuda"

    def _providers(self) -> list:
        import onnxruntime as ort
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise BackendUnavailable("onnxruntime-cuda: this onnxruntime build has no CUDAExecutionProvider "
                                     f"(available: {ort.get_available_providers()}); install onnxruntime-gpu")
        return [("CUDAExecutionProvider", {"device_id": int(self.options.get("device_id", 0))}),
                "CPUExecutionProvider"]

    def _check_providers(self) -> None:
        # ORT silently falls back to CPU when the CUDA provider fails to initialise: say so instead.
        if self._sess.get_providers()[0] != "CUDAExecutionProvider":
            raise BackendUnavailable(f"onnxruntime-cuda: CUDA provider did not initialise "
                                     f"(session providers {self._sess.get_providers()})")


# --------------------------------------------------------------------------------------------------- PyTorch
class TorchCPUEngine(LSTMEngine):
    """Eager PyTorch on CPU (comparison baseline for the benchmarks)."""

    backend = "torch-cpu"
    device = "cpu"

    def _open(self, d: Path, meta: dict[str, Any]) -> None:
        import torch
        self._torch = torch
        self._model = prob_module(load_net(d, meta, device="cpu")).eval()

    def _run(self, x: np.ndarray) -> np.ndarray:
        with self._torch.inference_mode():
            return self._model(self._torch.from_numpy(x)).numpy()


class TorchCUDAGraphEngine(LSTMEngine):
    """PyTorch on CUDA replaying CUDA graphs captured at warm-up for ``capture_batches`` (default 1, 64)."""

    backend = "torch-cuda"
    device = "cuda"

    def _open(self, d: Path, meta: dict[str, Any]) -> None:
        import torch
        if not torch.cuda.is_available():
            raise BackendUnavailable("torch-cuda: torch.cuda.is_available() is False (no GPU or CPU-only torch)")
        self._torch = torch
        self._model = prob_module(load_net(d, meta, device="cuda")).eval()
        self._graphs: dict[int, tuple[Any, Any, Any]] = {}
        self._graph_error = ""

    def _warm_batches(self) -> Sequence[int]:
        return tuple(sorted(self._buckets()))

    def _buckets(self) -> tuple[int, ...]:
        return tuple(sorted({int(b) for b in self.options.get("capture_batches", (1, 64)) if int(b) >= 1}))

    def _prepare(self, x: np.ndarray) -> None:
        torch = self._torch
        self._graphs.clear()
        try:
            for b in self._buckets():
                static_x = torch.zeros((b, self.seq_len, self.n_features), device="cuda")
                static_x.copy_(torch.from_numpy(np.resize(x, static_x.shape)))
                side = torch.cuda.Stream()
                side.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(side), torch.inference_mode():
                    for _ in range(3):  # warm cuDNN/allocator before capture, as torch.cuda.graphs requires
                        self._model(static_x)
                torch.cuda.current_stream().wait_stream(side)
                g = torch.cuda.CUDAGraph()
                with torch.inference_mode(), torch.cuda.graph(g):
                    static_y = self._model(static_x)
                host = torch.empty((b, self.seq_len, self.n_features), dtype=torch.float32).pin_memory()
                self._graphs[b] = (g, static_x, static_y, host)
        except Exception as e:  # capture unsupported for this op/driver: run eager, and say so
            self._graphs.clear()
            self._graph_error = f"{type(e).__name__}: {e}"
            log.warning("cuda_graph_capture_failed", backend=self.backend, error=self._graph_error)

    def _run(self, x: np.ndarray) -> np.ndarray:
        torch = self._torch
        n = x.shape[0]
        if not self._graphs:
            with torch.inference_mode():
                return self._model(torch.from_numpy(x).cuda()).float().cpu().numpy()
        biggest = max(self._graphs)
        if n > biggest:
            return np.concatenate([self._run(x[i:i + biggest]) for i in range(0, n, biggest)])
        b = min(k for k in self._graphs if k >= n)
        g, static_x, static_y, host = self._graphs[b]
        host[:n].copy_(torch.from_numpy(x))
        static_x[:n].copy_(host[:n], non_blocking=True)  # rows n..b keep old data; rows are independent
        g.replay()
        return static_y[:n].float().cpu().numpy()

    def _extra_info(self) -> dict[str, Any]:
        torch = getattr(self, "_torch", None)
        return {"cuda_graph_batches": sorted(getattr(self, "_graphs", {})),
                "cuda_graph_error": getattr(self, "_graph_error", ""),
                "gpu": torch.cuda.get_device_name() if torch is not None else ""}


# -------------------------------------------------------------------------------------------------- TensorRT
def _gpu_identity() -> tuple[str, str]:
    import torch
    name = torch.cuda.get_device_name()
    major, minor = torch.cuda.get_device_capability()
    return name, f"{major}.{minor}"


def tensorrt_cache_key(gpu_name: str, compute_capability: str, trt_version: str, onnx_sha256: str,
                       fp16: bool, max_batch: int) -> str:
    """Plan file name: a plan is only valid for the same GPU model, compute capability, TensorRT version and
    ONNX bytes (and build flags)."""
    raw = f"{gpu_name}|{compute_capability}|{trt_version}|{onnx_sha256}|fp16={fp16}|max_batch={max_batch}|strong"
    tag = re.sub(r"[^A-Za-z0-9]+", "-", gpu_name).strip("-")[:40]
    return f"lstm-{tag}-sm{compute_capability.replace('.', '')}-trt{trt_version}-" \
           f"{hashlib.sha256(raw.encode()).hexdigest()[:16]}.plan"


def onnx_to_fp16(onnx_bytes: bytes) -> bytes:
    """The ONNX graph with fp16 weights and arithmetic but fp32 inputs/outputs (casts at the edges), for a
    strongly typed fp16 TensorRT engine. Uses onnxconverter-common (the ``gpu`` extra)."""
    import onnx
    from onnxconverter_common import float16
    model = onnx.load_model_from_string(onnx_bytes)
    return float16.convert_float_to_float16(model, keep_io_types=True).SerializeToString()


def convert_to_tensorrt(onnx_bytes: bytes, *, seq_len: int, n_features: int, max_batch: int = 256,
                        opt_batch: int = 1, fp16: bool = True, workspace_mb: int = 1024) -> tuple[bytes, str]:
    """Build a serialised TensorRT engine (plan) from ONNX bytes; returns (plan, precision).

    The network is strongly typed (TensorRT 10 and 11: the weakly typed ``BuilderFlag.FP16`` and
    ``platform_has_fast_fp16`` are deprecated in 10 and gone in 11), so precision comes from the ONNX types:
    for fp16 the graph is cast to fp16 first (:func:`onnx_to_fp16`); without onnxconverter-common it is built
    in fp32 and the returned precision says why."""
    import tensorrt as trt
    precision = "fp32"
    if fp16:
        try:
            onnx_bytes, precision = onnx_to_fp16(onnx_bytes), "fp16"
        except ImportError as e:
            precision = f"fp32 (fp16 requested but {e.name or e} is not installed)"
            log.warning("tensorrt_fp16_unavailable", reason=precision)
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_bytes):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ModelLoadError(f"tensorrt: ONNX parser failed: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_mb) << 20)
    profile = builder.create_optimization_profile()
    profile.set_shape(INPUT_NAME, (1, seq_len, n_features), (max(1, min(opt_batch, max_batch)), seq_len, n_features),
                      (max_batch, seq_len, n_features))
    config.add_optimization_profile(profile)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise ModelLoadError("tensorrt: build_serialized_network returned None (see TensorRT log)")
    return bytes(plan), precision


class TensorRTEngine(LSTMEngine):
    """TensorRT engine from the version's ONNX file; the plan is cached (``cache_dir``, default
    ``<version_dir>/tensorrt``) and rebuilt when the GPU, TensorRT or the ONNX bytes change."""

    backend = "tensorrt"
    device = "cuda"

    def _open(self, d: Path, meta: dict[str, Any]) -> None:
        try:
            import tensorrt as trt
        except ImportError as e:
            raise BackendUnavailable(f"tensorrt: not installed ({e})") from None
        import torch
        if not torch.cuda.is_available():
            raise BackendUnavailable("tensorrt: no CUDA device visible to torch")
        self._torch, self._trt = torch, trt
        onnx_bytes = _read_verified_onnx(d, meta)
        cfg = _config_from_dict(meta["config"])
        n_features = int(meta["n_features"])
        fp16 = bool(self.options.get("fp16", True))
        self._max_batch = int(self.options.get("max_batch", 256))
        gpu, cc = _gpu_identity()
        cache_dir = Path(self.options.get("cache_dir") or d / "tensorrt")
        key = tensorrt_cache_key(gpu, cc, trt.__version__, meta["files"][ONNX_FILE], fp16, self._max_batch)
        plan_path = cache_dir / key
        logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(logger)
        engine = None
        if plan_path.is_file():
            engine = self._runtime.deserialize_cuda_engine(plan_path.read_bytes())
            if engine is None:
                log.warning("tensorrt_plan_unusable_rebuilding", path=str(plan_path))
        self._cache_hit = engine is not None
        if engine is None:
            t0 = time.perf_counter()
            plan, self._precision = convert_to_tensorrt(onnx_bytes, seq_len=cfg.seq_len, n_features=n_features,
                                       max_batch=self._max_batch, fp16=fp16,
                                       workspace_mb=int(self.options.get("workspace_mb", 1024)))
            self._build_s = time.perf_counter() - t0
            cache_dir.mkdir(parents=True, exist_ok=True)
            tmp = plan_path.with_suffix(".tmp")
            tmp.write_bytes(plan)
            tmp.replace(plan_path)
            engine = self._runtime.deserialize_cuda_engine(plan)
            if engine is None:
                raise ModelLoadError(f"tensorrt: freshly built plan does not deserialise ({plan_path})")
        self._engine = engine
        self._context = engine.create_execution_context()
        self._plan_path = plan_path
        self._stream = torch.cuda.Stream()

    def _warm_batches(self) -> Sequence[int]:
        return (64,)

    def _run(self, x: np.ndarray) -> np.ndarray:
        torch = self._torch
        n = x.shape[0]
        if n > self._max_batch:
            return np.concatenate([self._run(x[i:i + self._max_batch]) for i in range(0, n, self._max_batch)])
        with torch.cuda.stream(self._stream):
            xd = torch.from_numpy(x).to("cuda", non_blocking=False)
            out = torch.empty((n,), dtype=torch.float32, device="cuda")
            self._context.set_input_shape(INPUT_NAME, tuple(xd.shape))
            self._context.set_tensor_address(INPUT_NAME, xd.data_ptr())
            self._context.set_tensor_address(OUTPUT_NAME, out.data_ptr())
            if not self._context.execute_async_v3(self._stream.cuda_stream):
                raise RuntimeError("tensorrt: execute_async_v3 failed")
            self._stream.synchronize()
        return out.cpu().numpy()

    def _extra_info(self) -> dict[str, Any]:
        return {"plan": str(getattr(self, "_plan_path", "")), "cache_hit": getattr(self, "_cache_hit", None),
                "precision": getattr(self, "_precision", "from cached plan"),
                "build_s": getattr(self, "_build_s", None)}


LSTM_ENGINES: dict[str, type[LSTMEngine]] = {
    "onnxruntime-cpu": OnnxRuntimeCPUEngine,
    "onnxruntime-cpu-int8": OnnxRuntimeCPUInt8Engine,
    "onnxruntime-cuda": OnnxRuntimeCUDAEngine,
    "torch-cuda": TorchCUDAGraphEngine,
    "tensorrt": TensorRTEngine,
    "torch-cpu": TorchCPUEngine,
}
