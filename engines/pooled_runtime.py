"""Faster CPU runners for the pooled universe models at a daemon bar boundary (a batch of ~30 symbols).

:mod:`engines.pooled` scores with the libraries (research's path). For one small batch per boundary their per-call
overhead is most of the time: eager PyTorch's LSTM ~0.2-0.5 ms, xgboost's ``inplace_predict`` ~0.15-0.4 ms. Here:

* ``lstm`` -> ONNX Runtime (CPU, ``threads`` intra-op threads, sequential): the bundle's ONNX graph, written at
  training time (:func:`engines.pooled.export_lstm_onnx`; no torch in the process); for a bundle trained before it
  (the ``.pt`` only) the torch net exported IN MEMORY the same way; fed the same standardised windows
  (:func:`engines.pooled.standardise_windows`);
* ``xgboost`` -> the compiled tree walker of :mod:`engines.xgb_engine` (the booster's trees flattened from its JSON,
  the first ``best_iteration + 1`` rounds, float32 sums in tree order as XGBoost does).

Each runner is checked when built, on probe inputs (max abs difference <= ``TOL``), against its library call — for
an LSTM loaded from its ONNX graph, against torch's answers recorded at training (``lstm.answers.npz``); one
that cannot be built or disagrees is not used (the model keeps the library call) and the reason is returned, for the
caller to count (``tradingd_backend_fallbacks_total``). ridge has no runner (~10 us already). The same bundle object
gets its runners built once (cached by identity; four timeframes may share a bundle in tests and benchmarks).
"""
from __future__ import annotations

import weakref
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import structlog

from engines.pooled import TOL, OnnxLSTM, PooledModel, UniverseBundle, export_lstm_onnx, ort_session, probe_inputs
from engines.pooled import standardise_windows

__all__ = ["Runner", "build_runners", "runners_for", "TOL"]

log = structlog.get_logger(__name__)


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
    return probe_inputs(m.kind, m.seq_len, m.mu, m.sd, n, seed)


def _lstm_runner(m: PooledModel, threads: int) -> Runner:
    if isinstance(m.obj, OnnxLSTM):  # the bundle's own graph (no torch): the model's session for these threads
        sess = m.obj.session(threads)
    else:  # a bundle trained before the graph was saved: the torch net, exported here
        sess = ort_session(export_lstm_onnx(m.obj, m.seq_len, int(np.asarray(m.mu).shape[-1])), threads)
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
            if m.answers is not None:  # torch's answers recorded at training (the model itself runs the graph)
                x, want = m.answers
            else:
                x = _probe(m, 64, seed=len(kind))
                want = m.predict(x, threads)
            got = r(x)
            err = float(np.max(np.abs(got - want))) if len(want) else 0.0
            if not (got.shape == want.shape and err <= TOL):
                ref = "library call" if m.answers is None else "torch answers recorded at training"
                raise ValueError(f"disagrees with the {ref} by {err:.3g} (> {TOL}) on probe inputs")
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
