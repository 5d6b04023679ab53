"""Model drift: a training-time reference and the live statistics compared with it. Pure (no I/O, no clock).

Reference (:func:`build_reference`, computed when a model is trained and stored in its manifest, ``extra.drift``):

* per feature, ``bins`` (10) quantile bins of the TRAINING rows: the ``bins - 1`` interior edges and the share of
  training rows in each bin (ties may make edges repeat; an empty bin then has share 0 on both sides);
* the same bins of the model's predictions on the HELD-OUT rows (in-sample predictions would be overconfident),
  with the held-out calibration gap ``mean(p) - realised up-rate`` and the Brier error's mean and std;
* a null distribution for each statistic: the statistic of every window (``NULL_WINDOWS`` sizes, stride
  ``w // 10``) of the same rows against the reference, summarised by its ``NULL_QUANTILE`` (0.99) quantile. With
  ``calibrated`` thresholds an alarm needs a statistic above that quantile (and above the configured floor), so
  a live stream distributed like the training data alarms on about 1 % of windows by construction, whatever the
  autocorrelation of the features (which makes textbook chi-square limits useless on market data).

Live (:class:`DriftStream`, one per symbol x timeframe x model, fed once per bar close, O(features x bins)):

* PSI = sum_k (a_k - e_k) ln(a_k / e_k) over bins (shares smoothed by ``EPS``) of the last ``window`` rows, per
  feature (max and arg-max exported) and of the predictions;
* KS from the binned reference: max_k |E_k - A_k| of the cumulative shares at the bin edges (exactly scipy's
  ``ks_2samp`` statistic of the two samples' bin indices, a lower bound of the unbinned KS);
* calibration drift: |(mean p - realised up-rate) - reference gap| over the last ``window`` resolved predictions
  (a prediction resolves ``horizon`` bars later with the training label rule: up if the log return > cost, down
  if < -cost, else not counted);
* Page-Hinkley (``river.drift.PageHinkley``, mode "up") on the standardised Brier error of resolved predictions;
  :class:`PnLDetector` runs it (mode "down") on per-trade dollar P&L per unit of entry notional.
"""
from __future__ import annotations

import math
from bisect import bisect_right
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["DEFAULT_BINS", "NULL_WINDOWS", "NULL_QUANTILE", "EPS", "quantile_edges", "bin_index", "psi", "binned_ks",
           "build_reference", "with_predictions", "Reference", "DriftParams", "DriftStream", "DriftStats",
           "PnLDetector"]

DEFAULT_BINS = 10
NULL_WINDOWS = (50, 100, 200, 500, 1000)
NULL_QUANTILE = 0.99
EPS = 1e-4  # share given to an empty bin (both sides), so PSI stays finite


# ------------------------------------------------------------------------------------------ statistics
def quantile_edges(x: np.ndarray, bins: int = DEFAULT_BINS) -> np.ndarray:
    """The ``bins - 1`` interior quantile edges of the finite values of ``x`` (may repeat on ties)."""
    x = np.asarray(x, np.float64)
    x = x[np.isfinite(x)]
    if x.size == 0:
        raise ValueError("quantile_edges: no finite values")
    return np.quantile(x, np.arange(1, bins) / bins)


def bin_index(edges: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Bin of each value: number of edges <= x (``searchsorted(edges, x, 'right')``), 0..len(edges)."""
    return np.searchsorted(edges, x, side="right")


def _shares(counts: np.ndarray) -> np.ndarray:
    c = np.asarray(counts, np.float64)
    return c / np.maximum(c.sum(axis=-1, keepdims=True), 1.0)


def psi(expected: np.ndarray, actual: np.ndarray, eps: float = EPS) -> np.ndarray:
    """PSI of shares (last axis = bins; rows are features): sum (a - e) ln(a / e), shares floored at ``eps``."""
    e = np.maximum(np.asarray(expected, np.float64), eps)
    a = np.maximum(np.asarray(actual, np.float64), eps)
    return ((a - e) * np.log(a / e)).sum(axis=-1)


def binned_ks(expected: np.ndarray, actual: np.ndarray) -> np.ndarray:
    """Largest gap of the cumulative shares over the bin edges (last axis = bins)."""
    return np.abs(np.cumsum(expected, axis=-1) - np.cumsum(actual, axis=-1)).max(axis=-1)


def _cum_counts(idx: np.ndarray, bins: int) -> np.ndarray:
    """(n + 1, bins) running counts of the bin indices ``idx``: window counts are differences of two rows."""
    onehot = np.zeros((idx.size + 1, bins), np.int32)
    onehot[np.arange(1, idx.size + 1), idx] = 1
    return np.cumsum(onehot, axis=0, dtype=np.int32)


def _window_counts(idx: np.ndarray, bins: int, w: int, stride: int, cum: np.ndarray | None = None) -> np.ndarray:
    """(n_windows, bins) counts of each length-``w`` window of the bin indices ``idx`` (starts every ``stride``)."""
    cum = _cum_counts(idx, bins) if cum is None else cum
    starts = np.arange(0, idx.size - w + 1, stride)
    return cum[starts + w] - cum[starts]


def _null(stat_windows: Mapping[int, np.ndarray]) -> dict[str, float]:
    return {str(w): float(np.quantile(v, NULL_QUANTILE)) for w, v in stat_windows.items() if v.size >= 20}


def _feature_null(X: np.ndarray, bins: int, blocks: int = 10) -> dict[str, dict]:
    """Per window size: each feature's scale (the NULL_QUANTILE quantile of its window PSI / KS) and ``q``, the
    NULL_QUANTILE quantile over windows of max over features and both statistics of statistic / scale.

    Cross-fitted, so the windows are not part of the reference they are compared with (as live windows are not):
    the rows are cut into ``blocks`` contiguous blocks; bins from the even blocks judge windows of the odd ones
    and the other way round. A slow feature (realised vol) moves little inside a window, so its window PSI is
    large even on unchanged data; the per-feature scale lets one quantile fit all features."""
    n, F = X.shape
    cut = np.linspace(0, n, blocks + 1).astype(int)
    parts = [np.concatenate([np.arange(cut[i], cut[i + 1]) for i in range(j, blocks, 2)]) for j in (0, 1)]
    ws = [w for w in NULL_WINDOWS if min(parts[0].size, parts[1].size) >= 5 * w]  # enough independent windows
    per: dict[int, list[list[np.ndarray]]] = {w: [] for w in ws}  # window -> per direction: [psi_f, ks_f, ...]
    for fit, judge in ((parts[0], parts[1]), (parts[1], parts[0])):
        cols: dict[int, list[np.ndarray]] = {w: [] for w in ws}
        for f in range(F):  # one feature's running counts at a time (memory: judged rows x bins)
            e = quantile_edges(X[fit, f], bins)
            pr = _shares(np.bincount(bin_index(e, X[fit, f]), minlength=bins))
            idx = bin_index(e, X[judge, f])
            cum = _cum_counts(idx, bins)
            for w in ws:
                sh = _shares(_window_counts(idx, bins, w, max(w // 10, 1), cum))
                cols[w] += [psi(pr, sh), binned_ks(pr, sh)]
        for w in ws:
            per[w].append(np.stack(cols[w], axis=1))
    out: dict[str, dict] = {}
    for w in ws:
        m = np.concatenate(per[w])
        if m.shape[0] < 20:
            continue
        scale = np.maximum(np.quantile(m, NULL_QUANTILE, axis=0), 1e-6)
        q = float(np.quantile((m / scale).max(axis=1), NULL_QUANTILE))
        out[str(w)] = {"psi": scale[0::2].tolist(), "ks": scale[1::2].tolist(), "q": q}
    return out


def build_reference(X: np.ndarray, names: Sequence[str], pred: np.ndarray | None = None,
                    y: np.ndarray | None = None, *, horizon: int = 1, cost: float = 0.0,
                    bins: int = DEFAULT_BINS) -> dict[str, Any]:
    """The JSON-able drift reference of a model: ``X`` its training rows (finite rows kept), ``pred`` its
    predictions on held-out rows and ``y`` their labels (1 up / 0 down / -1 not counted)."""
    X = np.asarray(X, np.float64)
    X = X[np.isfinite(X).all(axis=1)]
    if X.shape[0] < 2 * bins or X.shape[1] != len(names):
        raise ValueError(f"build_reference: need >= {2 * bins} finite rows of {len(names)} features, "
                         f"got {X.shape}")
    edges = np.stack([quantile_edges(X[:, f], bins) for f in range(X.shape[1])])
    idx = np.stack([bin_index(edges[f], X[:, f]) for f in range(X.shape[1])], axis=1)
    props = np.stack([_shares(np.bincount(idx[:, f], minlength=bins)) for f in range(X.shape[1])])
    ref: dict[str, Any] = {"bins": bins, "rows": int(X.shape[0]), "names": list(names), "horizon": int(horizon),
                           "cost": float(cost), "edges": edges.tolist(), "props": props.tolist(),
                           "null_quantile": NULL_QUANTILE, "null": {"features": _feature_null(X, bins)}}
    return ref if pred is None else with_predictions(ref, pred, y)


def with_predictions(ref: Mapping[str, Any], pred: np.ndarray, y: np.ndarray | None = None) -> dict[str, Any]:
    """A copy of a feature reference with one model's held-out predictions (and labels) added: the feature
    part is shared by the models of a timeframe, the prediction part is each model's own."""
    bins = int(ref["bins"])
    ref = dict(ref, null=dict(ref["null"]))
    p = np.asarray(pred, np.float64)
    keep = np.isfinite(p)
    p = p[keep]
    if p.size < 2 * bins:
        return ref
    pe = quantile_edges(p, bins)
    pi = bin_index(pe, p)
    pp = _shares(np.bincount(pi, minlength=bins))
    ref["pred"] = {"edges": pe.tolist(), "props": pp.tolist(), "rows": int(p.size), "mean": float(p.mean())}
    ref["null"]["pred_psi"] = _null({w: psi(pp, _shares(_window_counts(pi, bins, w, max(w // 10, 1))))
                                     for w in NULL_WINDOWS if p.size >= 5 * w})
    if y is None:
        return ref
    yy = np.asarray(y, np.float64)[keep]
    lab = yy >= 0
    if lab.sum() < 2 * bins:
        return ref
    pl, yl = p[lab], yy[lab]
    gap = float(pl.mean() - yl.mean())
    err = (pl - yl) ** 2
    ref["calib"] = {"gap": gap, "up_rate": float(yl.mean()), "rows": int(lab.sum()), "brier": float(err.mean()),
                    "brier_std": float(max(err.std(), 1e-9))}
    cs = np.concatenate([[0.0], np.cumsum(pl - yl)])
    cal: dict[int, np.ndarray] = {}
    for w in NULL_WINDOWS:
        if lab.sum() >= 5 * w:
            st = np.arange(0, int(lab.sum()) - w + 1, max(w // 10, 1))
            cal[w] = np.abs((cs[st + w] - cs[st]) / w - gap)
    ref["null"]["calibration"] = _null(cal)
    return ref


# ------------------------------------------------------------------------------------------ the reference
@dataclass(frozen=True)
class Reference:
    """A manifest's ``extra.drift`` parsed into arrays (refuses a malformed one with ValueError)."""

    names: tuple[str, ...]
    bins: int
    edges: np.ndarray          # (F, bins - 1)
    props: np.ndarray          # (F, bins)
    pred_edges: np.ndarray | None
    pred_props: np.ndarray | None
    horizon: int
    cost: float
    calib_gap: float | None
    brier: float | None
    brier_std: float | None
    null: Mapping[str, Mapping[str, float]]

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Reference:
        try:
            bins = int(d["bins"])
            edges = np.asarray(d["edges"], np.float64)
            props = np.asarray(d["props"], np.float64)
            names = tuple(d["names"])
            pr = d.get("pred") or {}
            cal = d.get("calib") or {}
            pe = np.asarray(pr["edges"], np.float64) if pr else None
            pp = np.asarray(pr["props"], np.float64) if pr else None
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"drift reference malformed: {type(e).__name__}: {e}") from None
        if edges.shape != (len(names), bins - 1) or props.shape != (len(names), bins) or \
                (pe is not None and (pe.shape != (bins - 1,) or pp is None or pp.shape != (bins,))):
            raise ValueError(f"drift reference malformed: edges {edges.shape}, props {props.shape} for "
                             f"{len(names)} features x {bins} bins")
        return cls(names, bins, edges, props, pe, pp, int(d.get("horizon", 1)), float(d.get("cost", 0.0)),
                   cal.get("gap"), cal.get("brier"), cal.get("brier_std"), d.get("null") or {})

    def null_threshold(self, stat: str, window: int) -> float | None:
        """The null quantile of a scalar statistic (prediction_psi, calibration) for this window, if stored."""
        v = (self.null.get(stat) or {}).get(str(window))
        return None if v is None or isinstance(v, Mapping) else float(v)

    def feature_thresholds(self, stat: str, window: int) -> np.ndarray | None:
        """Per-feature null thresholds (scale x joint quantile) of ``psi`` / ``ks`` for this window."""
        v = (self.null.get("features") or {}).get(str(window))
        if not isinstance(v, Mapping):
            return None
        scale = np.asarray(v.get(stat, ()), np.float64)
        if scale.shape != (len(self.names),):
            return None
        return scale * float(v["q"])


@dataclass(frozen=True)
class DriftParams:
    """Thresholds (the daemon's ``[drift]`` section). With ``calibrated`` an alarm needs the statistic above BOTH
    the floor here and the reference's null quantile for this window; without, the floor alone."""

    window: int = 200
    psi: float = 0.1
    ks: float = 0.1
    prediction_psi: float = 0.1
    calibration: float = 0.05
    calibrated: bool = True
    ph_delta: float = 0.1
    ph_threshold: float = 50.0
    ph_min_instances: int = 30


@dataclass
class DriftStats:
    rows: int = 0
    full: bool = False
    psi: float = math.nan
    psi_feature: str = ""
    ks: float = math.nan
    ks_feature: str = ""
    prediction_psi: float = math.nan
    calibration: float = math.nan
    resolved: int = 0
    error_change: bool = False
    alarm: bool = False
    reasons: tuple[str, ...] = ()
    refused_rows: int = 0

    def as_dict(self) -> dict[str, Any]:
        def f(x: float) -> float | None:
            return None if not math.isfinite(x) else round(float(x), 6)
        return {"rows": self.rows, "full": self.full, "psi": f(self.psi), "psi_feature": self.psi_feature,
                "ks": f(self.ks), "ks_feature": self.ks_feature, "prediction_psi": f(self.prediction_psi),
                "calibration": f(self.calibration), "resolved": self.resolved, "error_change": self.error_change,
                "alarm": self.alarm, "reasons": list(self.reasons), "refused_rows": self.refused_rows}


def _page_hinkley(params: DriftParams, mode: str):
    from river.drift import PageHinkley
    return PageHinkley(min_instances=params.ph_min_instances, delta=params.ph_delta,
                       threshold=params.ph_threshold, alpha=1.0 - 1e-4, mode=mode)


class DriftStream:
    """Live drift of one model on one symbol's bars (see module doc). ``update`` once per bar close."""

    def __init__(self, ref: Reference, params: DriftParams) -> None:
        self.ref, self.p = ref, params
        F, K, W = len(ref.names), ref.bins, params.window
        self._base = np.arange(F) * K    # flat index of each feature's first bin
        self._ring = np.zeros((W, F), np.int64)  # flat bin index of each kept row
        self._counts = np.zeros(F * K, np.float64)
        # the reference's side of PSI and KS, once: floored shares, their logs, cumulative shares
        self._em = np.maximum(ref.props, EPS).ravel()
        self._le = np.log(self._em)
        self._ecum = np.cumsum(ref.props, axis=1)
        self._inv_w = 1.0 / W
        self._pedges = None if ref.pred_edges is None else ref.pred_edges.tolist()
        self._pring = [0] * W
        self._pcounts = [0] * K
        self._pem = None if ref.pred_props is None else [max(e, EPS) for e in ref.pred_props.tolist()]
        self._n = 0          # finite rows seen
        self._pn = 0         # predictions seen
        self._pending: deque[tuple[float, float]] = deque()  # (p, close) awaiting the horizon
        self._cal = deque(maxlen=W)  # (p - y) of resolved predictions
        self._cal_sum = 0.0
        self._ph = _page_hinkley(params, "up")
        self.stats = DriftStats()
        self.thresholds = self._thresholds()
        self.last_psi = self.last_ks = np.full(F, np.nan)

    def _thresholds(self) -> dict[str, Any]:
        """Alarm levels: psi / ks per feature (arrays), the others scalars; see DriftParams."""
        p, ref, w = self.p, self.ref, self.p.window
        F = len(ref.names)
        out: dict[str, Any] = {"psi": np.full(F, p.psi), "ks": np.full(F, p.ks),
                               "prediction_psi": p.prediction_psi, "calibration": p.calibration, "calibrated": []}
        if p.calibrated:
            for stat in ("psi", "ks"):
                q = ref.feature_thresholds(stat, w)
                if q is not None:
                    out[stat] = np.maximum(out[stat], q)
                    out["calibrated"].append(stat)
            for stat, key in (("prediction_psi", "pred_psi"), ("calibration", "calibration")):
                q = ref.null_threshold(key, w)
                if q is not None:
                    out[stat] = max(out[stat], q)
                    out["calibrated"].append(stat)
        return out

    def update(self, row: np.ndarray, pred: float | None, close: float) -> DriftStats:
        st, W = self.stats, self.p.window
        x = np.asarray(row, np.float64)
        if x.shape != (len(self.ref.names),) or not np.isfinite(x).all():
            st.refused_rows += 1
            return st
        # features: the bin of each value, the window's counts moved by one row
        b = (x[:, None] >= self.ref.edges).sum(axis=1) + self._base
        slot = self._n % W
        if self._n >= W:
            self._counts[self._ring[slot]] -= 1.0
        self._ring[slot] = b
        self._counts[b] += 1.0
        self._n += 1
        st.rows = min(self._n, W)
        st.full = self._n >= W
        reasons = []
        if st.full:
            F, K = self.ref.edges.shape[0], self.ref.bins
            a = self._counts * self._inv_w
            am = np.maximum(a, EPS)
            ps = ((am - self._em) * (np.log(am) - self._le)).reshape(F, K).sum(axis=1)
            ks = np.abs(self._ecum - a.reshape(F, K).cumsum(axis=1)).max(axis=1)
            self.last_psi, self.last_ks = ps, ks
            i, j = int(ps.argmax()), int(ks.argmax())
            st.psi, st.psi_feature, st.ks, st.ks_feature = float(ps[i]), self.ref.names[i], float(ks[j]), \
                self.ref.names[j]
            if (ps > self.thresholds["psi"]).any():
                reasons.append("psi")
            if (ks > self.thresholds["ks"]).any():
                reasons.append("ks")
        # predictions: their distribution, then calibration and error once the horizon has passed
        if pred is not None and math.isfinite(pred) and self._pedges is not None:
            pb = bisect_right(self._pedges, pred)
            pc = self._pcounts
            k = self._pn % W
            if self._pn >= W:
                pc[self._pring[k]] -= 1
            self._pring[k] = pb
            pc[pb] += 1
            self._pn += 1
            if self._pn >= W:
                iw = self._inv_w
                st.prediction_psi = sum((max(c * iw, EPS) - e) * math.log(max(c * iw, EPS) / e)
                                        for c, e in zip(pc, self._pem))
                if st.prediction_psi > self.thresholds["prediction_psi"]:
                    reasons.append("prediction_psi")
        self._resolve(pred, close)
        if len(self._cal) >= W and self.ref.calib_gap is not None:
            st.calibration = abs(self._cal_sum / len(self._cal) - self.ref.calib_gap)
            if st.calibration > self.thresholds["calibration"]:
                reasons.append("calibration")
        if st.error_change:
            reasons.append("error_change")
        st.reasons = tuple(reasons)
        st.alarm = bool(reasons)
        return st

    def _resolve(self, pred: float | None, close: float) -> None:
        """A prediction made ``horizon`` bars ago meets its outcome now (the training label rule)."""
        h = self.ref.horizon
        self._pending.append((pred if pred is not None and math.isfinite(pred) else math.nan, close))
        if len(self._pending) <= h:
            return
        p0, c0 = self._pending.popleft()
        if not (math.isfinite(p0) and c0 > 0 and close > 0):
            return
        r = math.log(close / c0)
        if r > self.ref.cost:
            y = 1.0
        elif r < -self.ref.cost:
            y = 0.0
        else:
            return
        d = p0 - y
        if len(self._cal) == self._cal.maxlen:
            self._cal_sum -= self._cal[0]
        self._cal.append(d)
        self._cal_sum += d
        self.stats.resolved += 1
        if self.ref.brier is not None and not self.stats.error_change:
            self._ph.update((d * d - self.ref.brier) / self.ref.brier_std)
            if self._ph.drift_detected:
                self.stats.error_change = True  # latched: the model's error rose; cleared by a new model


class PnLDetector:
    """Page-Hinkley (decrease) on per-trade dollar P&L per unit of entry notional, in units of its standard
    deviation over the first ``ph_min_instances`` trades (so one threshold fits any position size and market)."""

    def __init__(self, params: DriftParams) -> None:
        self._ph = _page_hinkley(params, "down")
        self._first: list[float] = []
        self._n0 = max(params.ph_min_instances, 2)
        self.scale_bps = math.nan
        self.trades = 0
        self.change = False
        self.last_bps = math.nan

    def update(self, pnl_usd: float, notional_usd: float) -> bool:
        if not (math.isfinite(pnl_usd) and math.isfinite(notional_usd) and notional_usd > 0):
            return self.change
        self.last_bps = x = 1e4 * pnl_usd / notional_usd
        self.trades += 1
        if not math.isfinite(self.scale_bps):
            self._first.append(x)
            if len(self._first) < self._n0:
                return self.change
            self.scale_bps = max(float(np.std(self._first)), 1e-3)
            todo, self._first = self._first, []
        else:
            todo = [x]
        for v in todo:
            self._ph.update(v / self.scale_bps)
            if self._ph.drift_detected:
                self.change = True  # latched until a new model
        return self.change
