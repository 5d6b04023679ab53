"""The pooled universe models of one timeframe inside the pipeline: research's batch panel, one bar boundary at a time.

At each boundary (``predict_boundary``) the engine steps :class:`engines.xsection.UniverseRolling` with every
symbol's closed bar (the universe's rolling state: long returns, dollar volume, beta), builds the ``(N, 15)``
per-symbol rows from the pipeline's live 13 features plus those returns, the cross-sectional columns over the N rows
(``engines.xsection.cross_section``), keeps the last ``seq_len`` universe rows for the LSTM, and scores all symbols
with ONE call per model (``engines.pooled.UniverseBundle.predict``; the LSTM on ONNX Runtime and xgboost by the
compiled walker where they agree with the libraries when the bundle is loaded: ``engines.pooled_runtime``). Each
symbol gets ``{"expected_return": r, "score": z, "u_<model>": raw score}`` (``u_`` because "xgboost"/"lstm" mean
P(up) to the optimizer); a symbol without a complete row gets ``{}``.

The rolling state must see every universe bar once, in order: history priming (``TradingPipeline.prime`` feeds one
symbol's history after the other) hands bars to :meth:`observe_bar`, which keeps them by close time; they are
stepped in time order before the next boundary is predicted. A bar of a boundary already stepped (a symbol whose bar
arrived after its boundary was decided without it) cannot be inserted into the past: it is refused and counted
(``counters["late_bar"]``, ``tradingd_universe_refusals_total{reason="late_bar"}``): the symbol's long returns are
then over its bars without that one (the research panel would have it).
"""
from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import structlog

from daemon.config import MIN_UNIVERSE
from engines.base import ModelLoadError
from engines.features import FEATURE_SCHEMA
from engines.pooled import UNIVERSE_KIND, UNIVERSE_SCHEMA_HASH, UniverseBundle, load_bundle
from engines.xsection import BETA_N, EXTRA_RET, FEATURE_NAMES, WARMUP, UniverseRolling, cross_section

__all__ = ["UniverseEngineSet", "UniverseChallenger", "Prepared", "load_universe_sets", "load_current_bundle", "history_extra_bars", "MIN_SYMBOLS"]

log = structlog.get_logger(__name__)

MIN_SYMBOLS = MIN_UNIVERSE
WARM_CALLS = 3  # predictions on probe rows when a bundle's runners are set up (see _set_runners)


class UniverseEngineSet:
    """See the module docstring. ``symbols``: the pipeline's universe, in its order."""

    def __init__(self, timeframe: str, bundle: UniverseBundle, symbols: Sequence[str], *, metrics: Any = None,
                 threads: int = 1, fast: bool = True) -> None:
        self.timeframe = timeframe
        self.bundle = bundle
        self.symbols = tuple(symbols)
        self._j = {s: j for j, s in enumerate(self.symbols)}
        self.metrics = metrics
        self.threads = threads
        self._roll = UniverseRolling(self.symbols)
        self._hist = np.full((max(bundle.seq_len, 1), len(self.symbols), len(FEATURE_NAMES)), np.nan, np.float32)
        self._n_hist = 0  # rows in _hist (the newest last; the first L - n are unused)
        self._primed: dict[int, dict[str, tuple[float, float, np.ndarray | None]]] = {}
        self.last_close = -1
        self.steps = 0
        self.calls: Counter[str] = Counter()  # inference calls per model
        self.counters: Counter[str] = Counter()
        self.predictions = 0
        self.fast = fast  # the faster runners (engines.pooled_runtime) where they agree with the libraries
        self._runners: dict[str, Any] = {}
        self._runners_of: UniverseBundle | None = None
        self._runners_unused: dict[str, str] = {}
        self._calls: dict[str, Any] = {}
        self._set_runners()

    # -------------------------------------------------------------------------------------- pipeline hooks
    @property
    def seq_len(self) -> int:
        """Extra bars of history (beyond the live features' warm-up) before the first complete universe row: each
        symbol's own warm-up, then ``BETA_N / 2`` universe bars with a market return before beta exists, then the
        LSTM's window (what ``kernel.prime`` fetches)."""
        return history_extra_bars(self.bundle.seq_len)

    @property
    def ready(self) -> bool:
        return True

    def info(self) -> dict[str, dict]:
        i = self.bundle.info()
        return {UNIVERSE_KIND: {**i, "backend": "cpu", "reason": "pooled universe models (engines.pooled)",
                                "schema_hash": UNIVERSE_SCHEMA_HASH,
                                "fallback": False, "failed": [], "steps": self.steps,
                                "inference_calls": dict(self.calls), "counters": dict(self.counters),
                                "runners": {k: self._runners[k].backend for k in self._runners},
                                "runners_unused": dict(self._runners_unused)}}

    def prepare(self, bundle: UniverseBundle) -> Prepared:
        """A bundle made ready to swap in: checked against this timeframe, its runners built, checked and warmed.
        Called in a worker thread (daemon.hotswap, a shadow trial's start), so the swap itself on the loop is a
        few reference assignments."""
        if bundle.timeframe and bundle.timeframe != self.timeframe:
            raise ModelLoadError(f"{bundle.path}: bundle for timeframe {bundle.timeframe!r}, expected "
                                 f"{self.timeframe!r}")
        runners, unused = self._build_runners(bundle)
        return Prepared(bundle, runners, unused)

    def swap(self, new: UniverseBundle | Prepared | UniverseChallenger) -> None:
        """Hot swap (daemon.hotswap, on the loop between two events; or a shadow trial's promotion, which hands its
        :class:`UniverseChallenger`): the retrained bundle scores from the next boundary on; the rolling universe
        state and the row history stay (they do not depend on the models). A longer LSTM window than the history
        holds is filled by the first-row rule until enough boundaries pass. A bare bundle gets its runners at the
        next boundary (on the loop): hand a :class:`Prepared` to keep that off the loop."""
        if isinstance(new, UniverseChallenger):
            new = new.prepared
        if isinstance(new, UniverseBundle):
            if new.timeframe and new.timeframe != self.timeframe:
                raise ModelLoadError(f"{new.path}: bundle for timeframe {new.timeframe!r}, expected "
                                     f"{self.timeframe!r}")
            bundle = new
        else:
            bundle = new.bundle
        L = max(bundle.seq_len, 1)
        if L > len(self._hist):  # a longer window: the rows kept so far, newest last
            h = np.full((L, *self._hist.shape[1:]), np.nan, np.float32)
            h[L - len(self._hist):] = self._hist
            self._hist = h
        self.bundle = bundle
        if isinstance(new, Prepared):
            self._install(new.bundle, new.runners, new.unused)
        log.info("universe_engine_swapped", timeframe=self.timeframe, version=bundle.version,
                 weights=bundle.weights, slope=bundle.calibration.slope)

    def column(self, symbol: str) -> int | None:
        """The symbol's column in the universe rows (None: not in this universe)."""
        return self._j.get(symbol)

    def window(self) -> np.ndarray:
        """(L, N, F) the universe's last feature rows, the newest last (what the bundle scores at a boundary)."""
        return self._hist[len(self._hist) - self._n_hist:]

    def observe(self, row: np.ndarray, symbol: str = "") -> None:
        """The per-symbol engine set's priming hook: the universe engine primes through :meth:`observe_bar`."""

    def observe_bar(self, symbol: str, bar: Any, row: np.ndarray | None) -> None:
        """A history bar (priming): kept until the boundaries before the next live one are stepped in order."""
        if symbol not in self._j:
            return
        close_ns = bar.open_ns + _tf_ns(self.timeframe)
        if close_ns <= self.last_close:
            self._refuse("late_bar")
            return
        self._primed.setdefault(close_ns, {})[symbol] = (float(bar.close), float(bar.volume), row)

    def predict_boundary(self, rows: Sequence[tuple[str, Any, np.ndarray | None]], close_ns: int
                         ) -> list[dict[str, float]]:
        """``rows``: (symbol, closed bar, live feature row or None) of the boundary closing at ``close_ns``."""
        out: list[dict[str, float]] = [{} for _ in rows]
        self.finish_priming(before=close_ns)
        if close_ns <= self.last_close:
            self._refuse("late_bar", len(rows))
            return out
        entries = self._primed.pop(close_ns, {})
        for sym, bar, row in rows:
            if sym in self._j:
                entries[sym] = (float(bar.close), float(bar.volume), row)
            else:
                self._refuse("unknown_symbol")
        X = self._step(entries, close_ns)
        hist = self.window()
        if self._runners_of is not self.bundle:  # a new bundle: its own runners
            self._set_runners()
        t0 = time.perf_counter_ns()
        res = self.bundle.predict(hist, self.threads, self.symbols, runners=self._calls)
        dt = time.perf_counter_ns() - t0
        valid = np.isfinite(X).all(axis=-1)
        if valid.any():
            for k, n in self.bundle.calls([s for s, ok in zip(self.symbols, valid) if ok]).items():
                self.calls[k] += n  # 1; xgboost_ft: 1 per fine-tuned symbol present + 1 (engines.pooled.extra_calls)
                if self.metrics is not None:
                    self.metrics.inference_latency.labels(f"u_{k}", "cpu").observe(dt / 1e9 / len(self.bundle.models))
        valid_l, er_l, z_l = valid.tolist(), res["expected_return"].tolist(), res["z"].tolist()  # Python floats
        per_model = [(f"u_{k}", res[k].tolist()) for k in self.bundle.models]
        for i, (sym, _, _) in enumerate(rows):
            j = self._j.get(sym)
            if j is None or not valid_l[j]:
                continue
            er = er_l[j]
            if not math.isfinite(er):
                continue
            p = {"expected_return": er, "score": z_l[j]}
            for key, vals in per_model:
                p[key] = vals[j]
            out[i] = p
            self.predictions += 1
        return out

    def finish_priming(self, before: int | None = None) -> int:
        """Step the primed bars (closing before ``before``; all by default) in time order. ``kernel.prime`` calls it
        after the last symbol's history, so the first live boundary does not pay for thousands of steps. Only the
        last ``seq_len`` of them build feature rows (the LSTM's window); the older ones move the state only."""
        keys = sorted(k for k in self._primed if before is None or k < before)
        keep = len(self._hist)
        for i, c in enumerate(keys):
            self._step(self._primed.pop(c), c, rows=i >= len(keys) - keep)
        return len(keys)

    # -------------------------------------------------------------------------------------- internals
    def _step(self, entries: dict[str, tuple[float, float, np.ndarray | None]], close_ns: int, rows: bool = True
              ) -> np.ndarray | None:
        """One universe bar: the rolling state, then the (N, F) feature rows (NaN = no complete row); ``rows=False``
        (an old primed bar) moves the state only and keeps an all-NaN row (it leaves the LSTM window anyway)."""
        js, closes, vols, feats = [], [], [], []
        for s, (c, v, r) in entries.items():
            js.append(self._j[s])
            closes.append(c)
            vols.append(v)
            feats.append(r)
        has = [k for k, r in enumerate(feats) if r is not None]
        F = np.stack([feats[k] for k in has]) if has else np.zeros((0, FEATURE_SCHEMA.n_features))
        live = np.zeros(len(js), dtype=bool)  # the live features finite (one isfinite over the stacked rows)
        live[has] = np.isfinite(F).all(axis=1)
        x = self._roll.step_indexed(js, closes, vols, live, beta=rows)
        if not rows:
            self.last_close = close_ns
            self.steps += 1
            return None
        N, nb = len(self.symbols), FEATURE_SCHEMA.n_features
        ps = np.full((N, nb + len(EXTRA_RET)), np.nan)
        pres = [i for i, k in enumerate(has) if x.present[js[k]]]  # present implies live: a row exists
        if pres:
            jj = np.array([js[has[i]] for i in pres], dtype=np.intp)
            ps[jj, :nb] = F[pres]
            for i, h in enumerate(EXTRA_RET):
                ps[jj, nb + i] = x.ret[h][jj]
        cs = cross_section(ps, x.dv, x.beta, np.asarray(close_ns))
        X = np.concatenate([ps, cs], axis=-1).astype(np.float32)
        self._push_hist(X)
        self.last_close = close_ns
        self.steps += 1
        return X

    def _set_runners(self) -> None:
        """The bundle's faster runners (ONNX Runtime LSTM, compiled xgboost walker), each checked against its
        library call when built; one passed over (or failing at a boundary) keeps the library call, counted in
        ``counters["runner_unused.<kind>"]`` / ``["runner_error.<kind>"]`` and ``tradingd_backend_fallbacks_total``."""
        self._install(self.bundle, *self._build_runners(self.bundle))

    def _build_runners(self, b: UniverseBundle) -> tuple[dict[str, Any], dict[str, str]]:
        """Build, check and warm ``b``'s runners (no state of this engine set changes: a worker thread may call
        it). Warm-up: the first calls at the universe's batch size pay one-off costs (ONNX Runtime's arena and
        plans, cold caches) that would otherwise land on the first live boundary; the outputs are discarded."""
        from engines.pooled_runtime import runners_for
        runners, unused = runners_for(b, self.threads) if self.fast else ({}, {})
        probe = np.zeros((max(b.seq_len, 1), len(self.symbols), len(FEATURE_NAMES)), np.float32)
        for _ in range(WARM_CALLS):
            b.predict(probe, self.threads, self.symbols, runners=dict(runners))
        return dict(runners), dict(unused)

    def _install(self, b: UniverseBundle, runners: dict[str, Any], unused: dict[str, str]) -> None:
        self._runners, self._runners_unused, self._runners_of = dict(runners), dict(unused), b
        for kind, why in unused.items():
            self._fallback(kind, "build_failed", why)
        self._calls = {k: self._guarded(k, r) for k, r in self._runners.items()}

    def _guarded(self, kind: str, runner: Any):
        def call(X: np.ndarray) -> np.ndarray:
            try:
                return runner(X)
            except Exception as e:  # noqa: BLE001 - the library call answers this batch; counted
                self._fallback(kind, "runtime_error", f"{type(e).__name__}: {e}")
                return self.bundle.models[kind].predict(X, self.threads)
        return call

    def _fallback(self, kind: str, reason: str, why: str) -> None:
        key = "runner_unused" if reason == "build_failed" else "runner_error"
        self.counters[f"{key}.{kind}"] += 1
        c = getattr(self.metrics, "backend_fallbacks", None) if self.metrics is not None else None
        if c is not None:
            c.labels(self.timeframe, f"u_{kind}", "fast", reason).inc()
        log.warning("universe_runner_fallback", timeframe=self.timeframe, kind=kind, reason=reason, why=why)

    def _push_hist(self, X: np.ndarray) -> None:
        """The LSTM's window as one (L, N, F) array, shifted in place (not a deque stacked at every boundary)."""
        h = self._hist
        h[:-1] = h[1:]
        h[-1] = X
        self._n_hist = min(self._n_hist + 1, len(h))

    def _refuse(self, reason: str, n: int = 1) -> None:
        self.counters[reason] += n
        m = self.metrics
        c = getattr(m, "universe_refusals", None) if m is not None else None
        if c is not None:
            c.labels(self.timeframe, reason).inc(n)
        log.warning("universe_bar_refused", timeframe=self.timeframe, reason=reason, n=n)


@dataclass(frozen=True, eq=False)
class Prepared:
    """A bundle ready to swap in (:meth:`UniverseEngineSet.prepare`): its runners built, checked and warmed."""

    bundle: UniverseBundle
    runners: dict[str, Any]
    unused: dict[str, str]


class UniverseChallenger:
    """A shadow trial's challenger bundle (daemon.shadow) scored on the champion's universe rows: the rolling state
    and the cross-section do not depend on the models, so the challenger reads the champion's window and makes ONE
    call per model per boundary (cached by the boundary's close), then answers per symbol like the champion's
    ``predict_boundary`` does. ``prepared`` (built off the loop) is what a promotion swaps in."""

    def __init__(self, champion: UniverseEngineSet, prepared: Prepared) -> None:
        self.champion = champion
        self.prepared = prepared
        self.bundle = prepared.bundle
        self._at = -1
        self._res: dict[str, list[float]] = {}

    def info(self) -> dict[str, dict]:
        return {UNIVERSE_KIND: self.bundle.info()}

    def predict(self, row: np.ndarray | None, symbol: str) -> dict[str, float]:
        es = self.champion
        if self._at != es.last_close:
            r = self.bundle.predict(es.window(), es.threads, es.symbols, runners=self.prepared.runners)
            self._res = {"expected_return": r["expected_return"].tolist(), "score": r["z"].tolist()}
            self._at = es.last_close
        j = es.column(symbol)
        if j is None or not math.isfinite(self._res["expected_return"][j]):
            return {}
        return {"expected_return": self._res["expected_return"][j], "score": self._res["score"][j]}


def load_current_bundle(registry: Any, tf: str, version: str | None = None) -> UniverseBundle:
    """The registry's CURRENT bundle of ``tf`` (or ``version``), verified (checksums, schema, timeframe, feature
    names) and loaded; a ModelLoadError naming the file otherwise."""
    ref = registry.load(tf, UNIVERSE_KIND, schema_hash=UNIVERSE_SCHEMA_HASH) if version is None else \
        registry.verify(tf, UNIVERSE_KIND, version, schema_hash=UNIVERSE_SCHEMA_HASH)
    b = load_bundle(ref.path, version=ref.version)
    if b.timeframe != tf:
        raise ModelLoadError(f"{ref.path}: bundle for timeframe {b.timeframe!r}, expected {tf!r}")
    if list(ref.manifest["feature_schema"]["names"]) != list(FEATURE_NAMES):
        raise ModelLoadError(f"{ref.path}: feature names differ from the daemon's universe features")
    return b


def history_extra_bars(lstm_seq_len: int) -> int:
    """Bars of history beyond the live features' warm-up before a symbol's first complete universe row."""
    return WARMUP + BETA_N // 2 + lstm_seq_len + 2 - FEATURE_SCHEMA.warmup


def _tf_ns(tf: str) -> int:
    from market.events import timeframe_ns
    return timeframe_ns(tf)


def load_universe_sets(registry: Any, timeframes: Sequence[str], symbols: Sequence[str], *, metrics: Any = None,
                       threads: int = 1) -> dict[str, UniverseEngineSet]:
    """Every timeframe's CURRENT universe bundle from the registry (verified: checksums, schema), loaded; any problem
    is a ModelLoadError naming the file (the daemon refuses to start)."""
    if len(symbols) < MIN_SYMBOLS:
        raise ModelLoadError(f"the universe models need at least {MIN_SYMBOLS} symbols, got {len(symbols)}")
    out = {}
    for tf in timeframes:
        b = load_current_bundle(registry, tf)
        log.info("universe_engine_loaded", timeframe=tf, version=b.version, models=sorted(b.models),
                 weights=b.weights, slope=b.calibration.slope)
        out[tf] = UniverseEngineSet(tf, b, symbols, metrics=metrics, threads=threads)
    return out
