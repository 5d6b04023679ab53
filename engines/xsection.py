"""The universe's rolling state at each bar close: the time-series inputs of the cross-sectional features.

The research panel (research/dataset.py, batch over a whole history) needs, per symbol at bar t, besides the live
per-symbol features (engines.features, incremental already): ``ret_24``, ``ret_96`` (log close differences over
the symbol's own bars), ``dv`` (mean of ``log1p(close * volume)`` over its last 48 bars), one warm-up for all of
them (the symbol's first ``WARMUP`` bars are NaN), and ``beta``: the OLS beta of its 1-bar log return on the
universe's equal-weight 1-bar return (the mean over the symbols *present* at t: every feature finite) over the
last 96 universe bars where both exist (NaN with fewer than 48 such bars, a flat universe, or before 96 universe
bars). The ranks, universe returns, relative strength and time of day are then a pure function of the N rows at t
(:func:`cross_section`). This module is that rolling part, incremental: O(N) per bar, no I/O, and the same
numbers as the batch definitions (tests/engines/test_xsection.py recomputes them from real bars); and the one place
for the cross-sectional definitions (names, :func:`cross_section`, :func:`cs_rank`, :func:`cs_zscore`) that the
research panel (research/dataset.py) and the daemon's universe engine (engines/pooled.py) both use.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import warnings

import numpy as np

from engines.features import FEATURE_SCHEMA

__all__ = ["EXTRA_RET", "DV_N", "BETA_N", "WARMUP", "PS_NAMES", "RANKED", "CS_NAMES", "FEATURE_NAMES", "XRow",
           "UniverseRolling", "cross_section", "cs_rank", "cs_zscore", "quiet",
           "avg_rank", "nanmean_last", "nanstd_last", "nan_mean_std_last"]

EXTRA_RET = (24, 96)
DV_N = 48
BETA_N = 96
WARMUP = max(FEATURE_SCHEMA.warmup, max(EXTRA_RET), DV_N - 1, BETA_N)
PS_NAMES = (*FEATURE_SCHEMA.names, *(f"ret_{h}" for h in EXTRA_RET))  # per-symbol columns
RANKED = ("ret_1", "ret_3", "ret_12", "ret_24", "ret_96", "rv_48", "vol_z_20")
CS_NAMES = (*(f"cs_rank_{n}" for n in RANKED), "cs_rank_dollar_vol", "mkt_ret_1", "mkt_ret_12", "cs_disp_12",
            "rel_ret_12", "rel_ret_96", "beta_96", "tod_sin", "tod_cos")
FEATURE_NAMES = (*PS_NAMES, *CS_NAMES)  # the pooled universe models' input columns, in order
_PS_IDX = {n: i for i, n in enumerate(PS_NAMES)}
_LC_N = max(EXTRA_RET) + 1  # log closes kept per symbol


class quiet:
    """Silence numpy's all-NaN-slice RuntimeWarnings (absent symbols are NaN by design)."""

    def __enter__(self):
        self._w = warnings.catch_warnings()
        self._w.__enter__()
        warnings.simplefilter("ignore", category=RuntimeWarning)

    def __exit__(self, *a):
        self._w.__exit__(*a)


def avg_rank(x: np.ndarray) -> np.ndarray:
    """``scipy.stats.rankdata(x, axis=-1, nan_policy="omit")`` (average ranks from 1, NaN stays NaN), the same
    numbers in a few numpy calls: scipy's checks and per-call set-up cost ~50 us per column, paid 8 times per
    universe bar in the daemon (tests/engines/test_xsection_fast.py compares them on real and tied data)."""
    x = np.asarray(x, dtype=np.float64)
    n = x.shape[-1]
    if n == 0:
        return x.copy()
    order = np.argsort(x, axis=-1, kind="stable")  # NaN last
    xs = np.take_along_axis(x, order, axis=-1)
    new = np.empty(xs.shape, dtype=bool)  # a tie group starts here
    new[..., :1] = True
    np.not_equal(xs[..., 1:], xs[..., :-1], out=new[..., 1:])
    end = np.empty_like(new)  # a tie group ends here
    end[..., -1:] = True
    end[..., :-1] = new[..., 1:]
    pos = np.arange(n)
    first = np.maximum.accumulate(np.where(new, pos, 0), axis=-1)
    last = np.minimum.accumulate(np.where(end, pos, n)[..., ::-1], axis=-1)[..., ::-1]
    rs = 0.5 * (last + 1 + first + 1)  # scipy: .5 * (count[dense] + count[dense - 1] + 1)
    r = np.empty(x.shape, dtype=np.float64)
    np.put_along_axis(r, order, rs, axis=-1)
    r[np.isnan(x)] = np.nan
    return r


def cs_rank(x: np.ndarray) -> np.ndarray:
    """Percentile rank along the last axis in (0, 1): (average rank - 0.5) / n_present; NaN stays NaN."""
    x = np.asarray(x, dtype=np.float64)
    r = avg_rank(x)
    n = np.isfinite(x).sum(axis=-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(np.isfinite(x), (r - 0.5) / n, np.nan)


def nanmean_last(x: np.ndarray) -> np.ndarray:
    """``np.nanmean(x, axis=-1, keepdims=True)`` for float64 ``x``, the same operations without numpy's generic
    wrapper (its dispatch and warning set-up cost more than the sum for a universe of 30)."""
    mask = np.isnan(x)
    arr = np.where(mask, 0.0, x)
    cnt = np.sum(~mask, axis=-1, dtype=np.intp, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.divide(np.sum(arr, axis=-1, keepdims=True), cnt)


def nanstd_last(x: np.ndarray) -> np.ndarray:
    """``np.nanstd(x, axis=-1, keepdims=True)`` (ddof 0) for float64 ``x``: numpy's nanvar steps, in its order."""
    return nan_mean_std_last(x)[1]


def nan_mean_std_last(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(:func:`nanmean_last`, :func:`nanstd_last`) of ``x`` with one NaN mask and one sum (nanvar's mean is
    nanmean's: the same sum of the same zero-filled array)."""
    mask = np.isnan(x)
    arr = np.where(mask, 0.0, x)
    cnt = np.sum(~mask, axis=-1, dtype=np.intp, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        avg = np.divide(np.sum(arr, axis=-1, keepdims=True), cnt)
        np.subtract(arr, avg, out=arr)
        arr[mask] = 0.0
        np.multiply(arr, arr, out=arr)
        var = np.divide(np.sum(arr, axis=-1, keepdims=True), cnt)
        var[cnt <= 0] = np.nan
        return avg, np.sqrt(var, out=var)


def cs_zscore(x: np.ndarray) -> np.ndarray:
    """Cross-sectional z-score along the last axis (the symbols), over the finite entries; 0 where they do not
    vary, NaN stays NaN."""
    x = np.asarray(x, dtype=np.float64)
    mu, sd = nan_mean_std_last(x)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(sd > 0, (x - mu) / sd, 0.0) + np.where(np.isfinite(x), 0.0, np.nan)


def cross_section(ps: np.ndarray, dv: np.ndarray, beta: np.ndarray, close_ns: np.ndarray) -> np.ndarray:
    """Cross-sectional columns (..., N, len(CS_NAMES)) from per-symbol rows ``ps`` (..., N, len(PS_NAMES)) at the
    same bars: a pure function of the rows at each bar (works on one bar (N, F) or a whole panel (T, N, F))."""
    idx = _PS_IDX
    present = np.isfinite(ps).all(axis=-1)
    ps = np.where(present[..., None], ps, np.nan)
    # the 8 ranked columns ranked in ONE call: (..., 8, N), the symbols last
    ranked = np.stack([*(ps[..., idx[n]] for n in RANKED), np.where(present, dv, np.nan)], axis=-2)
    rk = cs_rank(ranked)
    cols = [rk[..., k, :] for k in range(len(RANKED) + 1)]
    m1 = nanmean_last(ps[..., idx["ret_1"]])
    m12, disp = nan_mean_std_last(ps[..., idx["ret_12"]])
    m96 = nanmean_last(ps[..., idx["ret_96"]])
    shape = ps.shape[:-1]
    cols += [np.broadcast_to(m1, shape), np.broadcast_to(m12, shape), np.broadcast_to(disp, shape),
             ps[..., idx["ret_12"]] - m12, ps[..., idx["ret_96"]] - m96, np.where(present, beta, np.nan)]
    day = 86_400e9
    phase = 2 * np.pi * (np.asarray(close_ns, dtype=np.float64) % day) / day
    tod = np.broadcast_to(np.asarray(phase)[..., None], shape)
    cols += [np.sin(tod), np.cos(tod)]
    out = np.stack(cols, axis=-1)
    out[~present] = np.nan
    return out


@dataclass(frozen=True, eq=False)
class XRow:
    """One universe bar: arrays over ``symbols`` (NaN where a symbol has no value at this bar)."""

    symbols: tuple[str, ...]
    present: np.ndarray  # bool: listed at this bar, warmed up, and its live features finite
    ret: dict[int, np.ndarray]  # h -> log(close_t / close_{t-h}) over the symbol's own bars
    dv: np.ndarray
    r1: np.ndarray  # 1-bar log return (NaN when absent now or at the previous universe bar)
    market_ret: float  # equal-weight 1-bar return of the present symbols
    beta: np.ndarray


class UniverseRolling:
    """Feed :meth:`step` once per universe bar (every bar of the timeframe, in order) with the bars of the
    symbols listed at it; a symbol missing from a step is absent there (as in the batch panel).

    The state is arrays indexed by symbol (ring buffers of each symbol's own log closes and log dollar volumes,
    and of the universe's last ``BETA_N`` bars), so a step is a few numpy calls over the universe rather than a
    Python loop per symbol; every number is computed by the same operations, in the same order, as the per-symbol
    definition (Python's left-to-right ``sum`` is a cumulative sum's last element; beta's window is laid out oldest
    first exactly as before)."""

    def __init__(self, symbols: Sequence[str]) -> None:
        self.symbols = tuple(symbols)
        n = len(self.symbols)
        self._j = {s: j for j, s in enumerate(self.symbols)}
        self._t = -1
        self._lc = np.zeros((n, _LC_N))  # ring: the symbol's last log closes (own bar i at i % _LC_N)
        self._ldv = np.zeros((n, DV_N))  # ring: the symbol's last log1p(close * volume)
        self._n = np.zeros(n, dtype=np.int64)  # the symbol's own bars so far
        self._last_t = np.full(n, -1, dtype=np.int64)
        self._last_lc = np.full(n, math.nan)
        self._wok = np.zeros((BETA_N, n), dtype=bool)  # ring of the universe's last BETA_N bars (t at t % BETA_N)
        self._wr1 = np.zeros((BETA_N, n))
        self._wm = np.zeros(BETA_N)

    def step(self, bars: Mapping[str, tuple[float, float]], live_valid: Mapping[str, bool] | None = None, *,
             beta: bool = True) -> XRow:
        """``bars``: symbol -> (close, volume) of this universe bar; ``live_valid``: whether its live features
        (engines.features) are finite (default: yes). ``beta=False`` skips the O(96 N) beta of THIS bar (NaN; the
        state still moves on): history priming needs the state, not every old bar's row."""
        js, closes, vols, live = [], [], [], []
        for sym, b in bars.items():
            j = self._j.get(sym)
            if j is None:
                continue
            js.append(j)
            closes.append(float(b[0]))
            vols.append(float(b[1]))
            live.append(live_valid is None or bool(live_valid.get(sym, True)))
        return self.step_indexed(js, closes, vols, live, beta=beta)

    def step_indexed(self, js: Sequence[int], closes: Sequence[float], volumes: Sequence[float],
                     live: Sequence[bool], *, beta: bool = True) -> XRow:
        """:meth:`step` with the bars as parallel lists: symbol index (into ``symbols``, each at most once),
        close, volume, live features finite."""
        self._t += 1
        t = self._t
        n = len(self.symbols)
        ret = {h: np.full(n, np.nan) for h in EXTRA_RET}
        dv, r1 = np.full(n, np.nan), np.full(n, np.nan)
        present = np.zeros(n, dtype=bool)
        if js:
            j = np.asarray(js, dtype=np.intp)
            lc = np.array([math.log(c) for c in closes])  # math.log: the per-symbol definition's numbers
            ldv = np.array([math.log1p(c * v) for c, v in zip(closes, volumes)])
            cont = self._last_t[j] == t - 1
            r1[j[cont]] = lc[cont] - self._last_lc[j[cont]]
            self._last_t[j] = t
            self._last_lc[j] = lc
            i = self._n[j]  # each symbol's own bar index
            self._lc[j, i % _LC_N] = lc
            self._ldv[j, i % DV_N] = ldv
            self._n[j] = i + 1
            w = i >= WARMUP
            if w.any():
                jw, iw, lw = j[w], i[w], lc[w]
                for h in EXTRA_RET:
                    ret[h][jw] = lw - self._lc[jw, (iw - h) % _LC_N]
                cols = (iw[:, None] + 1 + np.arange(DV_N)) % DV_N  # the last DV_N bars, oldest first
                dv[jw] = np.cumsum(self._ldv[jw[:, None], cols], axis=1)[:, -1] / DV_N
                ok = np.asarray(live, dtype=bool)[w]
                for h in EXTRA_RET:
                    ok &= np.isfinite(ret[h][jw])
                present[jw] = ok
        sel = r1[present]
        sel = sel[np.isfinite(sel)]
        m = float(sel.mean()) if len(sel) else math.nan
        ok = np.isfinite(r1) & math.isfinite(m)
        k = t % BETA_N
        self._wok[k], self._wr1[k], self._wm[k] = ok, r1, m
        b = self._beta(t) if beta else np.full(n, np.nan)
        return XRow(self.symbols, present, ret, dv, r1, m, b)

    def _beta(self, t: int) -> np.ndarray:
        """Window sums recomputed from the 96 stored bars (exact, O(96 N); a running sum drifts in the last bits)."""
        n = len(self.symbols)
        if t < BETA_N - 1:
            return np.full(n, np.nan)
        order = (t + 1 + np.arange(BETA_N)) % BETA_N  # oldest first
        oks = self._wok[order]
        r = np.where(oks, self._wr1[order], 0.0)
        mm = np.where(oks, self._wm[order][:, None], 0.0)
        cnt = oks.sum(axis=0).astype(float)
        with np.errstate(invalid="ignore", divide="ignore"):
            sr, sm, srm, smm = r.sum(0), mm.sum(0), (r * mm).sum(0), (mm * mm).sum(0)
            cov = srm / cnt - sr / cnt * sm / cnt
            var = smm / cnt - (sm / cnt) ** 2
            b = cov / var
        b[~(cnt >= BETA_N / 2) | ~(var > 1e-14)] = np.nan
        return b
