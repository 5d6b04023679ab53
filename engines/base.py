"""The inference-engine protocol every model backend implements (LSTM and XGBoost alike).

Kept dependency-free (numpy only) so the daemon can type against it without importing torch, onnxruntime,
xgboost or tensorrt; backends import those lazily inside their own modules.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol, runtime_checkable

import numpy as np

__all__ = ["InferenceEngine", "ModelLoadError", "EngineInfo", "BackendUnavailable", "VersionedEngine",
           "latency_p50_us"]


class ModelLoadError(Exception):
    """A model version cannot be used: missing, truncated or corrupt file, wrong schema or shape.

    Raised by ``load``; the daemon keeps the previous engine and stops for a human instead of trading on it.
    """


class BackendUnavailable(RuntimeError):
    """The requested backend cannot run on this machine (library not installed, no GPU)."""


@runtime_checkable
class InferenceEngine(Protocol):
    """Load a model version directory, warm it up, then answer P(up) per row.

    * ``kind``: ``"lstm"`` or ``"xgboost"``; ``backend``: e.g. ``"onnxruntime-cpu"``, ``"compiled-cpu"``.
    * ``ready`` is False until ``warmup`` has run after a successful ``load``.
    * ``predict``: XGBoost input (n, n_features) float32; LSTM input (n, seq_len, n_features) float32.
      Returns float64/float32 array of shape (n,) with values in [0, 1].
    """

    kind: str
    backend: str

    @property
    def ready(self) -> bool: ...

    def load(self, version_dir: Path) -> None: ...

    def warmup(self, n: int) -> None: ...

    def predict(self, batch: np.ndarray) -> np.ndarray: ...


@dataclass(frozen=True)
class EngineInfo:
    """What an engine reports about itself (for /status, logs and `tradingd doctor`)."""

    kind: str
    backend: str
    device: str = "cpu"
    version: str = ""
    warm: bool = False
    p50_latency_us: float | None = None
    extra: dict = field(default_factory=dict)


def latency_p50_us(samples_ns: list[int] | np.ndarray) -> float | None:
    """Median of warm-up latencies in microseconds (None when nothing was timed)."""
    if len(samples_ns) == 0:
        return None
    return float(np.median(np.asarray(samples_ns, dtype=np.float64)) / 1e3)


class VersionedEngine:
    """What LSTM and XGBoost backends share: the state of one loaded model version, the loaded/ready gates,
    the feature-schema check, one error type for whatever a library raises at load, and ``info``.

    Subclasses write ``load`` as: ``meta = ...; schema = self._check_schema(d, meta)``, then
    ``self._guarded(d, what, open_fn)``, then ``self._set_loaded(d, meta, schema)``."""

    kind = ""
    backend = ""
    device = "cpu"

    def __init__(self, *, expected_schema_hash: str | None = None, **options: Any) -> None:
        self.options = options
        self.expected_schema_hash = expected_schema_hash
        self._ready = False
        self._loaded = False
        self.version = ""
        self.n_features = 0
        self.schema_hash = ""
        self.meta: dict[str, Any] = {}
        self._warm_ns: list[int] = []

    @property
    def ready(self) -> bool:
        return self._ready

    def _check_schema(self, d: Path, meta: dict[str, Any]) -> str:
        """A model trained on other features than the daemon computes would answer garbage: refused."""
        schema = str(meta.get("schema_hash", ""))
        if self.expected_schema_hash is not None and schema != self.expected_schema_hash:
            raise ModelLoadError(f"{d}: model feature schema {schema!r} differs from the running feature "
                                 f"pipeline's {self.expected_schema_hash!r}; retrain the model")
        return schema

    def _guarded(self, d: Path, what: str, open_fn: Callable[[], None]) -> None:
        """Library errors at the boundary become ModelLoadError (the daemon keeps the previous engine)."""
        try:
            open_fn()
        except (ModelLoadError, BackendUnavailable):
            raise
        except Exception as e:  # noqa: BLE001 - any library's failure means: this version cannot be used
            raise ModelLoadError(f"{self.backend}: cannot load {what} from {d}: {type(e).__name__}: {e}") from None

    def _set_loaded(self, d: Path, meta: dict[str, Any], schema: str) -> None:
        self.meta, self.n_features, self.schema_hash = meta, int(meta["n_features"]), schema
        self.version = Path(d).name
        self._warm_ns = []
        self._loaded = True

    def _require_loaded(self, what: str) -> None:
        if not self._loaded:
            raise RuntimeError(f"{self.backend}: {what} before load")

    def info(self) -> EngineInfo:
        return EngineInfo(kind=self.kind, backend=self.backend, device=self.device, version=self.version,
                          warm=self._ready, p50_latency_us=latency_p50_us(self._warm_ns),
                          extra=self._extra_info())

    def _extra_info(self) -> dict[str, Any]:
        return {}
