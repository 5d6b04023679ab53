"""Pooled features and targets over a universe panel.

Per symbol (scale-free, from its own bars <= t): ``engines.features.batch_features`` (the live definition, 13
columns) plus two longer returns (``ret_24``, ``ret_96``) and the 48-bar mean of log dollar volume (used only
through its rank).

Cross-sectional at bar t (``engines.xsection.cross_section``, the one definition the daemon shares; a pure function of the universe's per-symbol rows at t plus the
rolling beta state): percentile ranks in (0, 1) over the symbols present at t of ret_1/3/12/24/96, rv_48,
vol_z_20 and dollar volume; the equal-weight universe return over 1 and 12 bars and the cross-sectional
dispersion of ret_12; each symbol's relative strength (ret_h minus the universe's ret_h, h in 12, 96) and its
rolling beta to the universe's 1-bar return over ``BETA_N`` bars; time of day (sin, cos of the bar's close).
A symbol absent at t (not listed yet, delisted, warm-up) has NaN features there and takes no part in the ranks.
The daemon can compute the same row at a bar close: per-symbol incremental features, then this function over
the N rows, plus O(N) rolling sums for beta.

Targets at t over ``h`` bars: ``fwd = log(close[t+h]) - log(close[t])`` (NaN when either bar is absent);
``target(kind)`` is ``raw`` (clipped at the cross-sectional 1st/99th percentiles), ``resid`` (minus the
cross-sectional mean: the market residual) or ``rank`` (cross-sectional percentile rank minus 0.5).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from market.events import timeframe_ns
from engines.features import FEATURE_SCHEMA, batch_features
from engines.xsection import (BETA_N, CS_NAMES, DV_N, EXTRA_RET, FEATURE_NAMES, WARMUP, cross_section, cs_rank,
                              quiet as _quiet)
from engines.xsection import PS_NAMES as _PS, RANKED as _RANKED  # noqa: F401 - the old private names
from research.universe import Panel

__all__ = ["FEATURE_NAMES", "PanelFeatures", "panel_features", "cross_section", "forward_returns", "target",
           "cs_rank", "pooled", "Pooled", "BETA_N", "CS_NAMES", "EXTRA_RET", "DV_N", "WARMUP"]


def _per_symbol(panel: Panel) -> tuple[np.ndarray, np.ndarray]:
    """(T, N, len(_PS)) per-symbol features and (T, N) log dollar volume 48-bar mean."""
    T, N = panel.shape
    out = np.full((T, N, len(_PS)), np.nan)
    dv = np.full((T, N), np.nan)
    nb = FEATURE_SCHEMA.n_features
    for j in range(N):
        a, k = panel.klines(j)
        n = len(k)
        f = batch_features(k)
        out[a:a + n, j, :nb] = f
        lc = np.log(k.close)
        for i, h in enumerate(EXTRA_RET):
            if n > h:
                out[a + h:a + n, j, nb + i] = lc[h:] - lc[:-h]
        x = np.log1p(k.close * k.volume)
        if n >= DV_N:
            c = np.concatenate([[0.0], np.cumsum(x)])
            dv[a + DV_N - 1:a + n, j] = (c[DV_N:] - c[:-DV_N]) / DV_N
        out[a:a + min(n, WARMUP), j, :] = np.nan  # one warm-up for every column
        dv[a:a + min(n, WARMUP), j] = np.nan
    return out, dv


def _rolling_sum(x: np.ndarray, w: int) -> np.ndarray:
    c = np.cumsum(np.vstack([np.zeros((1,) + x.shape[1:]), x]), axis=0)
    out = np.full(x.shape, np.nan)
    out[w - 1:] = c[w:] - c[:-w]
    return out


def _beta(r1: np.ndarray, m: np.ndarray, w: int = BETA_N) -> np.ndarray:
    """Rolling OLS beta of each symbol's 1-bar return on the universe's over the last ``w`` bars where both
    exist (NaN with fewer than w/2 pairs)."""
    ok = np.isfinite(r1) & np.isfinite(m)[:, None]
    r = np.where(ok, r1, 0.0)
    mm = np.where(ok, m[:, None], 0.0)
    n = _rolling_sum(ok.astype(float), w)
    sr, sm, srm, smm = (_rolling_sum(a, w) for a in (r, mm, r * mm, mm * mm))
    with np.errstate(invalid="ignore", divide="ignore"):
        cov = srm / n - sr / n * sm / n
        var = smm / n - (sm / n) ** 2
        b = cov / var
    b[~(n >= w / 2) | ~(var > 1e-14)] = np.nan
    return b


@dataclass(frozen=True, eq=False)
class PanelFeatures:
    timeframe: str
    symbols: tuple[str, ...]
    open_ns: np.ndarray
    X: np.ndarray          # (T, N, F) float32, NaN = no row
    close: np.ndarray      # (T, N)
    names: tuple[str, ...] = FEATURE_NAMES

    @property
    def valid(self) -> np.ndarray:
        return np.isfinite(self.X).all(axis=-1)


def panel_features(panel: Panel) -> PanelFeatures:
    ps, dv = _per_symbol(panel)
    lc = np.log(panel.close)
    r1 = np.full(lc.shape, np.nan)
    r1[1:] = lc[1:] - lc[:-1]
    with _quiet():
        m = np.nanmean(np.where(np.isfinite(ps).all(axis=-1), r1, np.nan), axis=1)
    beta = _beta(r1, m)
    close_ns = panel.open_ns + timeframe_ns(panel.timeframe)
    cs = cross_section(ps, dv, beta, close_ns)
    X = np.concatenate([ps, cs], axis=-1).astype(np.float32)
    return PanelFeatures(panel.timeframe, panel.symbols, panel.open_ns, X, panel.close)


def forward_returns(close: np.ndarray, h: int) -> np.ndarray:
    lc = np.log(close)
    fwd = np.full(close.shape, np.nan)
    if close.shape[0] > h:
        fwd[:-h] = lc[h:] - lc[:-h]
    return fwd


def target(fwd: np.ndarray, kind: str) -> np.ndarray:
    """Training target from forward returns (T, N); see the module docstring."""
    with _quiet():
        if kind == "raw":
            lo = np.nanpercentile(fwd, 1, axis=1, keepdims=True)
            hi = np.nanpercentile(fwd, 99, axis=1, keepdims=True)
            return np.clip(fwd, lo, hi)
        if kind == "resid":
            return fwd - np.nanmean(fwd, axis=1, keepdims=True)
        if kind == "rank":
            return cs_rank(fwd) - 0.5
    raise ValueError(f"unknown target kind {kind!r} (raw, resid, rank)")


@dataclass(frozen=True, eq=False)
class Pooled:
    X: np.ndarray       # (rows, F) float32
    y: np.ndarray       # (rows,) float64
    t: np.ndarray       # (rows,) bar index
    j: np.ndarray       # (rows,) symbol index


def pooled(pf: PanelFeatures, y: np.ndarray, t_lo: int, t_hi: int, *, step: int = 1,
           need_label: bool = True) -> Pooled:
    """Rows (t, j) with t in [t_lo, t_hi) (every ``step``-th bar), features valid and (optionally) a label;
    ordered by t then symbol (ranking objectives group by t)."""
    ts = np.arange(max(t_lo, 0), min(t_hi, pf.X.shape[0]), step)
    ok = pf.valid[ts]
    if need_label:
        ok &= np.isfinite(y[ts])
    ti, ji = np.nonzero(ok)
    t = ts[ti]
    return Pooled(pf.X[t, ji], y[t, ji], t, ji)
