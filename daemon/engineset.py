"""The models of one timeframe, loaded, warmed and answering ``predict(feature_row, symbol)``.

``EngineSet.load`` takes the CURRENT xgboost and lstm versions from the model registry (verified against their
manifests and the running feature schema hash), picks each backend with :func:`engines.backends.choose_backend`
(the choice, its reason and whether it was a fallback are kept for /status and the logs), loads and warms the
engines. A backend that probes available but fails to load or warm up (a TensorRT build error, ORT's CUDA provider
failing to initialise) is a logged fallback to the next available backend, kept in ``info()["failed"]`` and counted
in ``tradingd_backend_fallbacks_total``. Any model problem (no model, truncated or corrupt file, other schema, or no
backend at all able to load it) is a :class:`ModelLoadError` naming the file: the daemon refuses to start rather
than trade on it.

The LSTM needs the last ``seq_len`` feature rows: they are kept per symbol in a ring buffer; until a symbol has
``seq_len`` rows only the XGBoost prediction is returned (the optimizer combines whatever is finite).

``swap(other)`` replaces the engines (already loaded and warmed elsewhere, e.g. by the retrainer hook) in one
assignment, keeping the feature history: the next ``predict`` uses the new models.
"""
from __future__ import annotations

import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import numpy as np
import structlog

from engines.base import BackendUnavailable, ModelLoadError

__all__ = ["EngineSet", "LoadedEngine", "ModelLoadError", "load_engine_sets"]

log = structlog.get_logger(__name__)

KINDS = ("xgboost", "lstm")


@dataclass(frozen=True)
class LoadedEngine:
    kind: str
    engine: Any
    version: str
    backend: str
    reason: str
    fallback: bool
    path: str
    failed: tuple[str, ...] = ()  # backends tried first that failed to load or warm up, with the error


class _BackendFailed(Exception):
    def __init__(self, stage: str, error: str) -> None:
        super().__init__(f"{stage}: {error}")
        self.stage, self.error = stage, error


def _load_warm(kind: str, backend: str, path: Any, warmup_iters: int, schema_hash: str,
               opts: dict[str, Any]) -> Any:
    """One backend's engine, loaded and warmed; any failure is a _BackendFailed naming the stage."""
    from engines.backends import create_engine
    try:
        engine = create_engine(kind, backend, expected_schema_hash=schema_hash, **opts)
        engine.load(path)
    except Exception as e:  # a library error at the boundary is a load failure of this backend
        raise _BackendFailed("load", f"{type(e).__name__}: {e}") from None
    try:
        engine.warmup(warmup_iters)
    except Exception as e:
        raise _BackendFailed("warmup", f"{type(e).__name__}: {e}") from None
    return engine


def _count_fallback(metrics: Any, timeframe: str, kind: str, requested: str, reason: str) -> None:
    c = getattr(metrics, "backend_fallbacks", None)
    if c is not None:
        c.labels(timeframe, kind, requested, reason).inc()


class _Window:
    """The LSTM's last ``n`` feature rows, oldest first, as a contiguous float32 view without copying: each row
    is written twice (slot i and i + n of a 2n-row buffer), so ``buf[i:i + n]`` is always the window in order.
    (``np.stack`` of a deque of rows cost ~100 µs per bar close with cold caches.)"""

    __slots__ = ("n", "buf", "i", "count")

    def __init__(self, n: int) -> None:
        self.n = n
        self.buf: np.ndarray | None = None
        self.i = 0
        self.count = 0

    def append(self, row: np.ndarray) -> None:
        if self.buf is None:
            self.buf = np.zeros((2 * self.n, len(row)), dtype=np.float32)
        i, n = self.i, self.n
        self.buf[i] = row
        self.buf[i + n] = row
        self.i = (i + 1) % n
        if self.count < n:
            self.count += 1

    @property
    def full(self) -> bool:
        return self.count >= self.n

    def rows(self) -> np.ndarray:
        """The kept rows, oldest first (all ``n`` once full)."""
        if self.buf is None:
            return np.zeros((0, 0), dtype=np.float32)
        return self.buf[self.i + self.n - self.count:self.i + self.n]


class EngineSet:
    def __init__(self, timeframe: str, engines: Mapping[str, LoadedEngine], *, metrics: Any = None) -> None:
        self.timeframe = timeframe
        self._engines: dict[str, LoadedEngine] = dict(engines)
        self.metrics = metrics
        self._rows: dict[str, _Window] = {}
        self._lat: dict[tuple[str, str], Any] = {}  # (kind, backend) -> the histogram's child (labels() is slow)
        self.predictions = 0
        self.errors = 0
        self.row_errors: Counter[tuple[str, str]] = Counter()  # (kind, reason) -> rows refused after a batch failed

    # ------------------------------------------------------------------------------------------ loading
    @classmethod
    def load(cls, registry: Any, timeframe: str, engines_cfg: Any, *, schema_hash: str | None = None,
             kinds: tuple[str, ...] = KINDS, metrics: Any = None, versions: Mapping[str, str] | None = None
             ) -> EngineSet:
        """Load and warm the current versions of ``kinds`` for ``timeframe`` (raises ModelLoadError); ``versions``
        names other versions by kind (a shadow challenger that is not current)."""
        from engines.backends import candidates, lstm_options
        from engines.features import FEATURE_SCHEMA
        schema_hash = schema_hash or FEATURE_SCHEMA.hash
        out: dict[str, LoadedEngine] = {}
        for kind in kinds:
            ref = registry.verify(timeframe, kind, versions[kind], schema_hash=schema_hash) \
                if versions and kind in versions else registry.load(timeframe, kind, schema_hash=schema_hash)
            requested = engines_cfg.xgb_backend if kind == "xgboost" else engines_cfg.lstm_backend
            try:
                chain = candidates(kind, requested)
            except BackendUnavailable as e:
                raise ModelLoadError(f"{timeframe} {kind}: {e}") from None
            if chain[0].fallback:  # the requested backend did not even probe available
                _count_fallback(metrics, timeframe, kind, requested, "unavailable")
            opts = lstm_options(engines_cfg) if kind == "lstm" else {}
            failures: list[str] = []
            for choice in chain:
                t0 = time.perf_counter()
                try:
                    engine = _load_warm(kind, choice.backend, ref.path, engines_cfg.warmup_iters, schema_hash, opts)
                except _BackendFailed as e:
                    failures.append(f"{choice.backend} {e.stage} failed: {e.error}")
                    log.warning("backend_load_failed", timeframe=timeframe, kind=kind, version=ref.version,
                                backend=choice.backend, stage=e.stage, error=e.error)
                    _count_fallback(metrics, timeframe, kind, requested, f"{e.stage}_failed")
                    continue
                backend = getattr(engine, "backend", choice.backend) or choice.backend
                reason = choice.reason + (f" (after {'; '.join(failures)})" if failures else "")
                fallback = choice.fallback or bool(failures)
                (log.warning if failures else log.info)(
                    "engine_loaded", timeframe=timeframe, kind=kind, version=ref.version, backend=backend,
                    reason=reason, fallback=fallback, seconds=round(time.perf_counter() - t0, 3))
                out[kind] = LoadedEngine(kind, engine, ref.version, backend, reason, fallback, str(ref.path),
                                         tuple(failures))
                break
            else:  # every backend failed on this model: the model (not the backend) is the problem
                raise ModelLoadError(f"{timeframe} {kind} version {ref.version} at {ref.path}: "
                                     f"no backend could load it: {'; '.join(failures)}")
        return cls(timeframe, out, metrics=metrics)

    # ------------------------------------------------------------------------------------------ queries
    @property
    def seq_len(self) -> int:
        le = self._engines.get("lstm")
        return int(getattr(le.engine, "seq_len", 0)) if le is not None else 0

    @property
    def ready(self) -> bool:
        return bool(self._engines) and all(bool(getattr(le.engine, "ready", True)) for le in self._engines.values())

    def info(self) -> dict[str, dict]:
        return {k: {"version": le.version, "backend": le.backend, "reason": le.reason, "fallback": le.fallback,
                    "path": le.path, "failed": list(le.failed)} for k, le in self._engines.items()}

    # ------------------------------------------------------------------------------------------ hot path
    def _buffer(self, symbol: str) -> _Window:
        buf = self._rows.get(symbol)
        n = max(self.seq_len, 1)
        if buf is None or buf.n != n:  # first use, or a swapped-in model with another window: keep the rows
            new = _Window(n)
            if buf is not None:
                for r in buf.rows()[-n:]:
                    new.append(r)
            self._rows[symbol] = buf = new
        return buf

    def observe(self, row: np.ndarray, symbol: str = "") -> None:
        """Remember a feature row for the LSTM's window without predicting (history priming)."""
        self._buffer(symbol).append(np.asarray(row, dtype=np.float32))

    def predict(self, row: np.ndarray, symbol: str = "") -> dict[str, float]:
        """P(up) per model for the bar whose features are ``row`` (the LSTM once the window is full)."""
        engines = self._engines  # one read: a concurrent swap() cannot mix old and new
        buf = self._buffer(symbol)
        buf.append(np.asarray(row, dtype=np.float32))
        out: dict[str, float] = {}
        m = self.metrics
        for kind, le in engines.items():
            if kind == "lstm":
                if not buf.full:
                    continue
                x = buf.rows()[None, :, :]
            else:
                x = np.asarray(row, dtype=np.float32)[None, :]
            t0 = time.perf_counter_ns()
            p = float(le.engine.predict(x)[0])
            dt = time.perf_counter_ns() - t0
            if m is not None:
                child = self._lat.get((kind, le.backend))
                if child is None:
                    child = self._lat[(kind, le.backend)] = m.inference_latency.labels(kind, le.backend)
                child.observe(dt / 1e9)
            out[kind] = p
        self.predictions += 1
        return out

    def predict_batch(self, rows: Sequence[np.ndarray], symbols: Sequence[str]) -> list[dict[str, float]]:
        """:meth:`predict` for many symbols' rows of one bar boundary in ONE inference call per model: the
        XGBoost rows stacked ``(n, f)``, the full LSTM windows stacked ``(k, seq_len, f)``. Same numbers as ``n``
        calls of :meth:`predict` (tests/daemon/test_engineset.py); a symbol given twice is a ValueError (its
        window would move twice)."""
        if len(rows) != len(symbols):
            raise ValueError(f"{len(rows)} rows for {len(symbols)} symbols")
        if len(set(symbols)) != len(symbols):
            raise ValueError("a symbol appears twice in one batch")
        engines = self._engines
        out: list[dict[str, float]] = [{} for _ in symbols]
        if not symbols:
            return out
        x2 = np.stack([np.asarray(r, dtype=np.float32) for r in rows])
        bufs = [self._buffer(s) for s in symbols]
        for b, r in zip(bufs, x2):
            b.append(r)
        m = self.metrics
        for kind, le in engines.items():
            if kind == "lstm":
                idx = [i for i, b in enumerate(bufs) if b.full]
                if not idx:
                    continue
                x = np.stack([bufs[i].rows() for i in idx])
            else:
                idx = range(len(symbols))
                x = x2
            t0 = time.perf_counter_ns()
            try:
                p = le.engine.predict(x)
            except Exception as e:  # noqa: BLE001 - one bad row must not cost the boundary's other symbols
                p = self._per_row(kind, le, x, [symbols[i] for i in idx], e)
            dt = time.perf_counter_ns() - t0
            if m is not None:
                child = self._lat.get((kind, le.backend))
                if child is None:
                    child = self._lat[(kind, le.backend)] = m.inference_latency.labels(kind, le.backend)
                child.observe(dt / 1e9)
            for j, i in enumerate(idx):
                v = float(p[j])
                if v == v:  # NaN: that row failed alone (counted in _per_row)
                    out[i][kind] = v
        self.predictions += len(symbols)
        return out

    def _per_row(self, kind: str, le: LoadedEngine, x: np.ndarray, symbols: Sequence[str],
                 batch_error: Exception) -> np.ndarray:
        """The batch failed: each row alone, so only the bad rows lose this model's prediction (NaN); each failure
        is counted (``row_errors``, ``tradingd_predict_row_errors_total{timeframe,kind,reason}``) and logged."""
        out = np.full(len(x), np.nan)
        failed = []
        for j in range(len(x)):
            try:
                out[j] = float(le.engine.predict(x[j:j + 1])[0])
            except Exception as e:  # noqa: BLE001 - counted below
                failed.append(symbols[j])
                reason = type(e).__name__
                self.row_errors[(kind, reason)] += 1
                c = getattr(self.metrics, "predict_row_errors", None) if self.metrics is not None else None
                if c is not None:
                    c.labels(self.timeframe, kind, reason).inc()
        log.warning("predict_batch_failed_per_row", timeframe=self.timeframe, kind=kind, rows=len(x),
                    failed=failed[:20], n_failed=len(failed), error=f"{type(batch_error).__name__}: {batch_error}")
        return out

    @property
    def engines(self) -> Mapping[str, LoadedEngine]:
        """The loaded engines by kind (read-only view; :meth:`swap` replaces them)."""
        return MappingProxyType(self._engines)

    def swap(self, new: EngineSet | Mapping[str, LoadedEngine]) -> None:
        """Atomically use ``new``'s engines (already loaded and warmed); the feature windows are kept."""
        engines = dict(new.engines if isinstance(new, EngineSet) else new)
        for le in engines.values():
            if not bool(getattr(le.engine, "ready", True)):
                raise ModelLoadError(f"{self.timeframe} {le.kind} {le.version}: swap of an engine not warmed up")
        self._engines = engines
        log.info("engines_swapped", timeframe=self.timeframe,
                 versions={k: le.version for k, le in engines.items()})


def load_engine_sets(registry: Any, timeframes: tuple[str, ...], engines_cfg: Any, *, metrics: Any = None
                     ) -> dict[str, EngineSet]:
    return {tf: EngineSet.load(registry, tf, engines_cfg, metrics=metrics) for tf in timeframes}
