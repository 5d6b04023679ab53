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
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import warnings

import numpy as np
from scipy.stats import rankdata

from engines.features import FEATURE_SCHEMA

__all__ = ["EXTRA_RET", "DV_N", "BETA_N", "WARMUP", "PS_NAMES", "RANKED", "CS_NAMES", "FEATURE_NAMES", "XRow",
           "UniverseRolling", "cross_section", "cs_rank", "cs_zscore", "quiet"]

EXTRA_RET = (24, 96)
DV_N = 48
BETA_N = 96
WARMUP = max(FEATURE_SCHEMA.warmup, max(EXTRA_RET), DV_N - 1, BETA_N)
PS_NAMES = (*FEATURE_SCHEMA.names, *(f"ret_{h}" for h in EXTRA_RET))  # per-symbol columns
RANKED = ("ret_1", "ret_3", "ret_12", "ret_24", "ret_96", "rv_48", "vol_z_20")
CS_NAMES = (*(f"cs_rank_{n}" for n in RANKED), "cs_rank_dollar_vol", "mkt_ret_1", "mkt_ret_12", "cs_disp_12",
            "rel_ret_12", "rel_ret_96", "beta_96", "tod_sin", "tod_cos")
FEATURE_NAMES = (*PS_NAMES, *CS_NAMES)  # the pooled universe models' input columns, in order


class quiet:
    """Silence numpy's all-NaN-slice RuntimeWarnings (absent symbols are NaN by design)."""

    def __enter__(self):
        self._w = warnings.catch_warnings()
        self._w.__enter__()
        warnings.simplefilter("ignore", category=RuntimeWarning)

    def __exit__(self, *a):
        self._w.__exit__(*a)


def cs_rank(x: np.ndarray) -> np.ndarray:
    """Percentile rank along the last axis in (0, 1): (average rank - 0.5) / n_present; NaN stays NaN."""
    x = np.asarray(x, dtype=np.float64)
    r = rankdata(x, axis=-1, nan_policy="omit")
    n = np.isfinite(x).sum(axis=-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(np.isfinite(x), (r - 0.5) / n, np.nan)


def cs_zscore(x: np.ndarray) -> np.ndarray:
    """Cross-sectional z-score along the last axis (the symbols), over the finite entries; 0 where they do not
    vary, NaN stays NaN."""
    x = np.asarray(x, dtype=np.float64)
    with quiet():
        mu = np.nanmean(x, axis=-1, keepdims=True)
        sd = np.nanstd(x, axis=-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(sd > 0, (x - mu) / sd, 0.0) + np.where(np.isfinite(x), 0.0, np.nan)


def cross_section(ps: np.ndarray, dv: np.ndarray, beta: np.ndarray, close_ns: np.ndarray) -> np.ndarray:
    """Cross-sectional columns (..., N, len(CS_NAMES)) from per-symbol rows ``ps`` (..., N, len(PS_NAMES)) at the
    same bars: a pure function of the rows at each bar (works on one bar (N, F) or a whole panel (T, N, F))."""
    idx = {n: i for i, n in enumerate(PS_NAMES)}
    present = np.isfinite(ps).all(axis=-1)
    ps = np.where(present[..., None], ps, np.nan)
    cols = [cs_rank(ps[..., idx[n]]) for n in RANKED]
    cols.append(cs_rank(np.where(present, dv, np.nan)))
    with np.errstate(invalid="ignore"), quiet():
        m1 = np.nanmean(ps[..., idx["ret_1"]], axis=-1, keepdims=True)
        m12 = np.nanmean(ps[..., idx["ret_12"]], axis=-1, keepdims=True)
        m96 = np.nanmean(ps[..., idx["ret_96"]], axis=-1, keepdims=True)
        disp = np.nanstd(ps[..., idx["ret_12"]], axis=-1, keepdims=True)
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


class _Sym:
    __slots__ = ("lc", "ldv", "n", "last_t", "last_lc")

    def __init__(self) -> None:
        self.lc: deque[float] = deque(maxlen=max(EXTRA_RET) + 1)
        self.ldv: deque[float] = deque(maxlen=DV_N)
        self.n = 0
        self.last_t = -1
        self.last_lc = math.nan


class UniverseRolling:
    """Feed :meth:`step` once per universe bar (every bar of the timeframe, in order) with the bars of the
    symbols listed at it; a symbol missing from a step is absent there (as in the batch panel)."""

    def __init__(self, symbols: Sequence[str]) -> None:
        self.symbols = tuple(symbols)
        self._s = {s: _Sym() for s in self.symbols}
        self._t = -1
        self._win: deque[tuple[np.ndarray, np.ndarray, float]] = deque()  # (ok mask, r1, m) per universe bar

    def step(self, bars: Mapping[str, tuple[float, float]], live_valid: Mapping[str, bool] | None = None, *,
             beta: bool = True) -> XRow:
        """``bars``: symbol -> (close, volume) of this universe bar; ``live_valid``: whether its live features
        (engines.features) are finite (default: yes). ``beta=False`` skips the O(96 N) beta of THIS bar (NaN; the
        state still moves on): history priming needs the state, not every old bar's row."""
        self._t += 1
        t = self._t
        n = len(self.symbols)
        nan = np.full(n, np.nan)
        ret = {h: nan.copy() for h in EXTRA_RET}
        dv, r1 = nan.copy(), nan.copy()
        present = np.zeros(n, dtype=bool)
        for j, sym in enumerate(self.symbols):
            b = bars.get(sym)
            st = self._s[sym]
            if b is None:
                continue
            close, volume = float(b[0]), float(b[1])
            lc = math.log(close)
            if st.last_t == t - 1:
                r1[j] = lc - st.last_lc
            st.last_t, st.last_lc = t, lc
            st.lc.append(lc)
            st.ldv.append(math.log1p(close * volume))
            i = st.n  # the symbol's own bar index
            st.n += 1
            if i < WARMUP:
                continue
            for h in EXTRA_RET:
                ret[h][j] = lc - st.lc[-1 - h]
            dv[j] = sum(st.ldv) / DV_N
            ok = live_valid is None or bool(live_valid.get(sym, True))
            present[j] = ok and all(math.isfinite(ret[h][j]) for h in EXTRA_RET)
        sel = r1[present]
        sel = sel[np.isfinite(sel)]
        m = float(sel.mean()) if len(sel) else math.nan
        ok = np.isfinite(r1) & math.isfinite(m)
        self._push(ok, r1, m)
        b = self._beta(t) if beta else np.full(n, np.nan)
        return XRow(self.symbols, present, ret, dv, r1, m, b)

    def _push(self, ok: np.ndarray, r1: np.ndarray, m: float) -> None:
        self._win.append((ok, r1, m))
        if len(self._win) > BETA_N:
            self._win.popleft()

    def _beta(self, t: int) -> np.ndarray:
        """Window sums recomputed from the 96 stored bars (exact, O(96 N); a running sum drifts in the last bits)."""
        n = len(self.symbols)
        if t < BETA_N - 1:
            return np.full(n, np.nan)
        oks = np.array([w[0] for w in self._win])
        r = np.where(oks, np.array([w[1] for w in self._win]), 0.0)
        mm = np.where(oks, np.array([w[2] for w in self._win])[:, None], 0.0)
        cnt = oks.sum(axis=0).astype(float)
        with np.errstate(invalid="ignore", divide="ignore"):
            sr, sm, srm, smm = r.sum(0), mm.sum(0), (r * mm).sum(0), (mm * mm).sum(0)
            cov = srm / cnt - sr / cnt * sm / cnt
            var = smm / cnt - (sm / cnt) ** 2
            b = cov / var
        b[~(cnt >= BETA_N / 2) | ~(var > 1e-14)] = np.nan
        return b
