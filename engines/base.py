"""The inference-engine protocol every model backend implements (LSTM and XGBoost alike).

Kept dependency-free (numpy only) so the daemon can type against it without importing torch, onnxruntime,
xgboost or tensorrt; backends import those lazily inside their own modules.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

__all__ = ["InferenceEngine", "ModelLoadError", "EngineInfo", "BackendUnavailable", "latency_p50_us"]


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
