"""Faster CPU runners for the pooled universe models at a daemon bar boundary (a batch of ~30 symbols).

:mod:`engines.pooled` scores with the libraries (research's path). For one small batch per boundary their per-call
overhead is most of the time: eager PyTorch's LSTM ~0.2-0.5 ms, xgboost's ``inplace_predict`` ~0.15-0.4 ms. Here:

* ``lstm`` -> ONNX Runtime (CPU, ``threads`` intra-op threads, sequential): the torch net exported IN MEMORY when the
  bundle is loaded (the TorchScript exporter, ``nn.LSTM`` -> the ONNX ``LSTM`` op, dynamic batch), fed the same
  standardised windows (:func:`engines.pooled.standardise_windows`);
* ``xgboost`` -> the compiled tree walker of :mod:`engines.xgb_engine` (the booster's trees flattened from its JSON,
  the first ``best_iteration + 1`` rounds, float32 sums in tree order as XGBoost does).

Each runner is checked against its library call when built, on probe inputs (max abs difference <= ``TOL``); one
that cannot be built or disagrees is not used (the model keeps the library call) and the reason is returned, for the
caller to count (``tradingd_backend_fallbacks_total``). ridge has no runner (~10 us already). The same bundle object
gets its runners built once (cached by identity; four timeframes may share a bundle in tests and benchmarks).
"""
from __future__ import annotations

import io
import warnings
import weakref
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import structlog

from engines.pooled import PooledModel, UniverseBundle, standardise_windows

__all__ = ["Runner", "build_runners", "runners_for", "TOL"]

log = structlog.get_logger(__name__)

TOL = 1e-6  # max abs difference to the library call on the probe inputs (the scores are ~1e-4..1e-1)


@dataclass(frozen=True, eq=False)
class Runner:
    """``fn(X)`` scores a batch exactly like ``PooledModel.predict(X)`` (same input, same (n,) float64 output)."""

    kind: str
    backend: str
    fn: Callable[[np.ndarray], np.ndarray]
    max_abs_err: float  # vs the library call on the probe inputs

    def __call__(self, X: np.ndarray) -> np.ndarray:
        return self.fn(X)


def _probe(m: PooledModel, n: int, seed: int) -> np.ndarray:
    """Probe inputs around the model's training distribution (mu +- sd), a row of NaN (no row: 0 after
    standardisation) included; (n, L, F) windows for the LSTM, (n, F) rows otherwise."""
    from engines.xsection import FEATURE_NAMES
    rng = np.random.default_rng(seed)
    f = len(FEATURE_NAMES)
    shape = (n, m.seq_len, f) if m.kind == "lstm" else (n, f)
    z = rng.standard_normal(shape) * rng.choice([0.3, 1.0, 3.0], size=shape)
    if m.mu is not None and m.sd is not None:
        x = np.asarray(m.mu, np.float64) + z * np.asarray(m.sd, np.float64)
    else:
        x = z * 0.01
    x = x.astype(np.float32)
    if m.kind == "lstm":
        x[0, : m.seq_len // 2] = np.nan  # a symbol listed mid-window
    else:
        x[0, ::3] = np.nan  # missing values take the trees' default branches
    return x


def _lstm_runner(m: PooledModel, threads: int) -> Runner:
    import onnxruntime as ort
    import torch
    net = m.obj
    x0 = torch.zeros(1, m.seq_len, int(np.asarray(m.mu).shape[-1]))
    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the LSTM batch-size warning: h0/c0 are built from Shape(x)
        torch.onnx.export(net, (x0,), buf, dynamo=False, opset_version=17, input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}})
    so = ort.SessionOptions()
    so.intra_op_num_threads = max(int(threads), 1)
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    sess = ort.InferenceSession(buf.getvalue(), so, providers=["CPUExecutionProvider"])
    mu, sd = m.mu, m.sd

    def fn(X: np.ndarray) -> np.ndarray:
        return sess.run(["y"], {"x": standardise_windows(X, mu, sd)})[0].astype(np.float64)
    return Runner("lstm", "onnxruntime-cpu", fn, 0.0)


def _xgb_runner(m: PooledModel) -> Runner:
    from engines.base import ModelLoadError
    from engines.xgb_engine import FlatForest, _load_pyext, compile_walker, flatten_booster
    b = m.obj
    ff = flatten_booster(b)
    rounds = int(b.num_boosted_rounds())
    if rounds <= 0 or ff.n_trees % rounds:
        raise ModelLoadError(f"{ff.n_trees} trees over {rounds} rounds")
    it = b.best_iteration if m.best_iteration is None else m.best_iteration
    keep = (int(it) + 1) * (ff.n_trees // rounds)  # iteration_range=(0, best_iteration + 1)
    ff = FlatForest(ff.nodes, ff.roots[:keep], ff.base_margin, ff.n_features, ff.max_depth)
    so = compile_walker(pyext=True)
    if so is None:
        raise ModelLoadError("no C compiler or Python headers for the compiled walker")
    walk = _load_pyext(so).predict
    nodes, roots, consts = ff.nodes, ff.roots, (ff.n_trees, ff.lockstep_depth, ff.base_margin, ff.n_features)

    def fn(X: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(X, dtype=np.float32)
        out = np.empty(x.shape[0], np.float64)
        if walk(nodes, roots, x, out, *consts, 1):  # a row with inf: the library's answer (its error) instead
            return m.predict(X)
        return out
    return Runner("xgboost", "compiled-cpu", fn, 0.0)


_BUILDERS: dict[str, Callable[[PooledModel, int], Runner]] = {
    "lstm": _lstm_runner,
    "xgboost": lambda m, threads: _xgb_runner(m),
}


def build_runners(bundle: UniverseBundle, threads: int = 1) -> tuple[dict[str, Runner], dict[str, str]]:
    """Runners for the bundle's models that have one and agree with the library (``{kind: Runner}``), and why
    the others were passed over (``{kind: reason}``: they keep the library call)."""
    runners: dict[str, Runner] = {}
    passed: dict[str, str] = {}
    for kind, m in bundle.models.items():
        make = _BUILDERS.get(kind)
        if make is None:
            continue
        try:
            r = make(m, threads)
            x = _probe(m, 64, seed=len(kind))
            want = m.predict(x, threads)
            got = r(x)
            err = float(np.max(np.abs(got - want))) if len(want) else 0.0
            if not (got.shape == want.shape and err <= TOL):
                raise ValueError(f"disagrees with the library call by {err:.3g} (> {TOL}) on probe inputs")
            runners[kind] = Runner(r.kind, r.backend, r.fn, err)
        except Exception as e:  # noqa: BLE001 - any failure keeps the library call; the reason is counted
            passed[kind] = f"{type(e).__name__}: {str(e)[:200]}"
            log.warning("pooled_runner_unused", kind=kind, reason=passed[kind])
    return runners, passed


_CACHE: weakref.WeakKeyDictionary[UniverseBundle, dict[int, tuple[dict[str, Runner], dict[str, str]]]] = \
    weakref.WeakKeyDictionary()


def runners_for(bundle: UniverseBundle, threads: int = 1) -> tuple[dict[str, Runner], dict[str, str]]:
    """:func:`build_runners`, once per bundle object and thread count."""
    per = _CACHE.setdefault(bundle, {})
    got = per.get(threads)
    if got is None:
        got = per[threads] = build_runners(bundle, threads)
    return got
