"""engines.xsection.UniverseRolling (the daemon's per-bar path) equals a batch recomputation (numpy, the research
panel's definitions) on real 1h bars of 8 symbols: two listings and two ends inside the slice, and a gap."""
from __future__ import annotations


import warnings

import numpy as np
import pytest

from engines.xsection import BETA_N, DV_N, EXTRA_RET, WARMUP, UniverseRolling

from tests.paths import XS_SYMS as SYMS


@pytest.fixture(scope="module")
def panel(xs_panel) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return xs_panel


def _rolling_sum(x: np.ndarray, w: int) -> np.ndarray:
    c = np.cumsum(np.vstack([np.zeros((1,) + x.shape[1:]), x]), axis=0)
    out = np.full(x.shape, np.nan)
    out[w - 1:] = c[w:] - c[:-w]
    return out


def batch(c: np.ndarray, v: np.ndarray) -> dict[str, np.ndarray]:
    """The research panel's time-series definitions (research/dataset.py), over the whole slice at once."""
    T, N = c.shape
    out = {f"ret_{h}": np.full((T, N), np.nan) for h in EXTRA_RET}
    out["dv"] = np.full((T, N), np.nan)
    for j in range(N):
        idx = np.flatnonzero(np.isfinite(c[:, j]))  # the symbol's own bars
        lc = np.log(c[idx, j])
        n = len(idx)
        for h in EXTRA_RET:
            r = np.full(n, np.nan)
            r[h:] = lc[h:] - lc[:-h]
            r[:WARMUP] = np.nan
            out[f"ret_{h}"][idx, j] = r
        x = np.log1p(c[idx, j] * v[idx, j])
        d = np.full(n, np.nan)
        cs = np.concatenate([[0.0], np.cumsum(x)])
        d[DV_N - 1:] = (cs[DV_N:] - cs[:-DV_N]) / DV_N
        d[:WARMUP] = np.nan
        out["dv"][idx, j] = d
    lcp = np.log(c)
    r1 = np.full((T, N), np.nan)
    r1[1:] = lcp[1:] - lcp[:-1]
    present = np.isfinite(out["ret_24"]) & np.isfinite(out["ret_96"])
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        m = np.nanmean(np.where(present, r1, np.nan), axis=1)
    ok = np.isfinite(r1) & np.isfinite(m)[:, None]
    r = np.where(ok, r1, 0.0)
    mm = np.where(ok, m[:, None], 0.0)
    n = _rolling_sum(ok.astype(float), BETA_N)
    sr, sm, srm, smm = (_rolling_sum(a, BETA_N) for a in (r, mm, r * mm, mm * mm))
    with np.errstate(invalid="ignore", divide="ignore"):
        cov = srm / n - sr / n * sm / n
        var = smm / n - (sm / n) ** 2
        beta = cov / var
    beta[~(n >= BETA_N / 2) | ~(var > 1e-14)] = np.nan
    out.update(beta=beta, r1=r1, m=m, present=present)
    return out


def test_incremental_equals_batch_on_real_bars(panel):
    _, c, v = panel
    btc, ton, dogs = (SYMS.index(s) for s in ("BTCUSDT", "TONUSDT", "DOGSUSDT"))
    assert np.isnan(c[-10:, btc]).all()  # BTC's file ends before the others'
    assert np.isnan(c[0, ton]) and np.isnan(c[0, dogs])  # two listings inside the slice
    b = batch(c, v)
    roll = UniverseRolling(SYMS)
    checked = 0
    for t in range(len(c)):
        bars = {s: (c[t, j], v[t, j]) for j, s in enumerate(SYMS) if np.isfinite(c[t, j])}
        x = roll.step(bars)
        np.testing.assert_array_equal(x.present, b["present"][t])
        for h in EXTRA_RET:
            np.testing.assert_allclose(x.ret[h], b[f"ret_{h}"][t], rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(x.dv, b["dv"][t], rtol=1e-12)
        np.testing.assert_allclose(x.r1, b["r1"][t], rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(x.market_ret, b["m"][t], rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(x.beta, b["beta"][t], rtol=1e-7, atol=1e-9)
        checked += int(np.isfinite(x.beta).sum())
    assert checked > 3000  # most of the slice has betas to compare
    listed = np.isfinite(c[-1])  # BTC's and ETH's files end a few hours before the others (a delisting)
    assert listed.sum() == 6 and x.present[listed].all() and not x.present[~listed].any()


def test_future_bars_do_not_change_the_past(panel):
    """No look-ahead: the rows up to t are the same whatever comes after t."""
    _, c, v = panel
    b = batch(c[:400], v[:400])
    b2 = batch(np.vstack([c[:400], np.full((50, len(SYMS)), 1e6)]), np.vstack([v[:400], np.full((50, len(SYMS)), 1e9)]))
    for k in ("ret_24", "ret_96", "dv", "beta", "r1"):
        np.testing.assert_array_equal(b[k], b2[k][:400])  # the batch reference itself has no look-ahead
    a = UniverseRolling(SYMS)
    for t in range(400):
        x = a.step({s: (c[t, j], v[t, j]) for j, s in enumerate(SYMS) if np.isfinite(c[t, j])})
    np.testing.assert_allclose(x.beta, b["beta"][399], rtol=1e-7, atol=1e-9)
