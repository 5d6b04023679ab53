"""engines.xsection's faster forms give the very numbers of what they replace (bit for bit, NaN and signs included):
``avg_rank`` those of ``scipy.stats.rankdata(nan_policy="omit")``, ``nanmean_last`` / ``nanstd_last`` those of
``np.nanmean`` / ``np.nanstd``, so ``cs_rank`` / ``cs_zscore`` are unchanged — on real 1h returns of the universe
(NaN before a listing) and on tied, infinite and all-NaN rows, in the shapes the daemon (one bar, (N,)) and research
(panels, (T, N) and (T, K, N)) use; and ``UniverseRolling`` (arrays indexed by symbol, ring buffers) equals the
per-symbol deque definition it replaced, step by step on real bars with listings, ends and gaps."""
from __future__ import annotations

import math
import warnings
from collections import deque

import numpy as np
import pytest
from scipy.stats import rankdata

from engines.xsection import (BETA_N, DV_N, EXTRA_RET, WARMUP, UniverseRolling, avg_rank, cs_rank, cs_zscore,
                              nan_mean_std_last, nanmean_last, nanstd_last)
from tests.paths import XS_SYMS as SYMS


def _old_rank(x: np.ndarray) -> np.ndarray:
    """cs_rank as it was defined with scipy."""
    r = rankdata(x, axis=-1, nan_policy="omit")
    n = np.isfinite(x).sum(axis=-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(np.isfinite(x), (r - 0.5) / n, np.nan)


def _old_zscore(x: np.ndarray) -> np.ndarray:
    """cs_zscore as it was defined with numpy's nan-functions."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        mu = np.nanmean(x, axis=-1, keepdims=True)
        sd = np.nanstd(x, axis=-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(sd > 0, (x - mu) / sd, 0.0) + np.where(np.isfinite(x), 0.0, np.nan)


def _same(got: np.ndarray, want: np.ndarray) -> None:
    assert got.shape == want.shape
    np.testing.assert_array_equal(got, want)  # NaN == NaN here
    assert (np.signbit(got) == np.signbit(want)).all()


def _check(x: np.ndarray) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        _same(avg_rank(x), rankdata(x, axis=-1, nan_policy="omit"))
        _same(nanmean_last(x), np.nanmean(x, axis=-1, keepdims=True))
        _same(nanstd_last(x), np.nanstd(x, axis=-1, keepdims=True))
        mu, sd = nan_mean_std_last(x)
        _same(mu, np.nanmean(x, axis=-1, keepdims=True))
        _same(sd, np.nanstd(x, axis=-1, keepdims=True))
    _same(cs_rank(x), _old_rank(x))
    _same(cs_zscore(x), _old_zscore(x))


@pytest.fixture(scope="module")
def real_bars(xs_panel) -> tuple[np.ndarray, np.ndarray]:
    """(close, volume) of the conftest's real 1h panel."""
    return xs_panel[1], xs_panel[2]


@pytest.fixture(scope="module")
def real_returns(real_bars) -> np.ndarray:
    """(T, N) 1h log returns of the real bars."""
    with np.errstate(invalid="ignore"):
        return np.diff(np.log(real_bars[0]), axis=0)


def test_same_numbers_on_real_returns(real_returns):
    r = real_returns
    assert np.isnan(r).any() and np.isfinite(r).sum() > 3000
    _check(r)  # a research panel (T, N)
    _check(np.round(r, 3))  # many ties
    _check(np.stack([r, np.round(r, 2), -r], axis=1))  # (T, K, N): the ranked columns of one bar stacked
    for t in range(0, len(r), 37):  # one bar, as the daemon ranks it
        _check(r[t])
        _check(np.ascontiguousarray(np.repeat(r[t][:, None], 3, axis=1))[:, 1])  # a strided column view


def test_same_numbers_on_ties_infinities_and_empty_rows():
    rng = np.random.default_rng(7)
    for k in range(400):
        shape = [(30,), (6, 30), (2, 4, 13), (1,), (3, 1), (100,)][k % 6]
        x = rng.standard_normal(shape) * 10.0 ** rng.uniform(-6, 3)
        if k % 2:
            x = np.round(x, 1)
        u = rng.random(shape)
        x[u < rng.uniform(0, 0.6)] = np.nan
        if k % 5 == 0:
            x[u > 0.9] = np.inf
            x[u < 0.05] = -np.inf
        if k % 7 == 0:
            x[..., :] = np.nan
        if k % 11 == 0:
            x[u > 0.5] = -0.0
        _check(x)
    _check(np.zeros((4, 0)))


class _DequeRolling:
    """The per-symbol definition UniverseRolling replaced (deques per symbol, a Python loop over the symbols, the
    beta window as a deque of the last BETA_N bars), kept here as the reference."""

    def __init__(self, symbols):
        self.symbols = tuple(symbols)
        self._s = {s: {"lc": deque(maxlen=max(EXTRA_RET) + 1), "ldv": deque(maxlen=DV_N), "n": 0, "last_t": -1,
                       "last_lc": math.nan} for s in self.symbols}
        self._t = -1
        self._win = deque()

    def step(self, bars, live_valid=None):
        self._t += 1
        t, n = self._t, len(self.symbols)
        ret = {h: np.full(n, np.nan) for h in EXTRA_RET}
        dv, r1 = np.full(n, np.nan), np.full(n, np.nan)
        present = np.zeros(n, dtype=bool)
        for j, sym in enumerate(self.symbols):
            b = bars.get(sym)
            st = self._s[sym]
            if b is None:
                continue
            close, volume = float(b[0]), float(b[1])
            lc = math.log(close)
            if st["last_t"] == t - 1:
                r1[j] = lc - st["last_lc"]
            st["last_t"], st["last_lc"] = t, lc
            st["lc"].append(lc)
            st["ldv"].append(math.log1p(close * volume))
            i = st["n"]
            st["n"] += 1
            if i < WARMUP:
                continue
            for h in EXTRA_RET:
                ret[h][j] = lc - st["lc"][-1 - h]
            dv[j] = sum(st["ldv"]) / DV_N
            ok = live_valid is None or bool(live_valid.get(sym, True))
            present[j] = ok and all(math.isfinite(ret[h][j]) for h in EXTRA_RET)
        sel = r1[present]
        sel = sel[np.isfinite(sel)]
        m = float(sel.mean()) if len(sel) else math.nan
        self._win.append((np.isfinite(r1) & math.isfinite(m), r1, m))
        if len(self._win) > BETA_N:
            self._win.popleft()
        beta = np.full(n, np.nan)
        if t >= BETA_N - 1:
            oks = np.array([w[0] for w in self._win])
            r = np.where(oks, np.array([w[1] for w in self._win]), 0.0)
            mm = np.where(oks, np.array([w[2] for w in self._win])[:, None], 0.0)
            cnt = oks.sum(axis=0).astype(float)
            with np.errstate(invalid="ignore", divide="ignore"):
                sr, sm, srm, smm = r.sum(0), mm.sum(0), (r * mm).sum(0), (mm * mm).sum(0)
                beta = (srm / cnt - sr / cnt * sm / cnt) / (smm / cnt - (sm / cnt) ** 2)
                var = smm / cnt - (sm / cnt) ** 2
            beta[~(cnt >= BETA_N / 2) | ~(var > 1e-14)] = np.nan
        return present, ret, dv, r1, m, beta


def test_rolling_state_equals_the_per_symbol_deque_definition(real_bars):
    c, v = real_bars
    rng = np.random.default_rng(3)
    new, ref = UniverseRolling(SYMS), _DequeRolling(SYMS)
    compared = 0
    for t in range(len(c)):
        bars = {s: (c[t, j], v[t, j]) for j, s in enumerate(SYMS) if np.isfinite(c[t, j])}
        live = {s: bool(rng.random() > 0.05) for s in bars}  # a few symbols without finite live features
        x = new.step(bars, live)
        present, ret, dv, r1, m, beta = ref.step(bars, live)
        _same(x.present, present)
        for h in EXTRA_RET:
            _same(x.ret[h], ret[h])
        _same(x.dv, dv)
        _same(x.r1, r1)
        assert x.market_ret == m or (math.isnan(x.market_ret) and math.isnan(m))
        _same(x.beta, beta)
        compared += int(np.isfinite(x.beta).sum())
    assert compared > 3000
