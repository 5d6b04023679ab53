"""No look-ahead: perturbing any bar after t changes no feature (cross-sectional ones included) at or before t,
and the walk-forward embargo keeps every training label before the test window."""
from __future__ import annotations

import numpy as np
import pytest

from research.dataset import forward_returns, panel_features, pooled, target
from research.models import ModelParams
from research.universe import Panel, load_universe
from research.walkforward import WFOptions, check_embargo, windows, Window
from tests.research.rows import SYMS5

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")


def _perturb(p: Panel, t: int, rng) -> Panel:
    f = np.ones(p.close.shape)
    f[t + 1:] = np.exp(rng.normal(0, 0.05, size=f[t + 1:].shape))
    vol = p.volume.copy()
    vol[t + 1:] *= rng.uniform(0.1, 10, size=vol[t + 1:].shape)
    o, c = p.open * f, p.close * f
    hi = np.maximum(p.high * f, np.maximum(o, c))
    lo = np.minimum(p.low * f, np.minimum(o, c))
    return Panel(p.timeframe, p.symbols, p.open_ns, o, hi, lo, c, vol)


@pytest.mark.parametrize("t", [700, 1200])
def test_perturbing_the_future_changes_nothing_before(universe_5m, rng, t):
    p = load_universe(universe_5m, ("5m",), symbols=SYMS5, last_days=6).panels["5m"]
    base = panel_features(p)
    alt = panel_features(_perturb(p, t, rng))
    assert np.array_equal(base.X[:t + 1], alt.X[:t + 1], equal_nan=True)
    # the test can fail: the future did change, and the cross-sectional columns with it
    assert not np.array_equal(base.X[t + 1:], alt.X[t + 1:], equal_nan=True)
    cs = [i for i, n in enumerate(base.names) if n.startswith(("cs_", "mkt_", "rel_", "beta"))]
    assert not np.array_equal(base.X[t + 5:, :, cs], alt.X[t + 5:, :, cs], equal_nan=True)


def test_label_at_t_uses_close_t_plus_h(universe_5m):
    p = load_universe(universe_5m, ("5m",), symbols=SYMS5[:3], last_days=2).panels["5m"]
    fwd = forward_returns(p.close, 12)
    assert np.allclose(fwd[:-12], np.log(p.close[12:] / p.close[:-12]), equal_nan=True)
    assert np.isnan(fwd[-12:]).all()
    # a symbol whose data ends early has no label in its last h bars
    for j in range(3):
        last = int(np.flatnonzero(p.present[:, j])[-1])
        assert np.isfinite(fwd[last - 12, j]) and np.isnan(fwd[last - 11:, j]).all()


@pytest.mark.parametrize("tf,h,expanding,embargo", [("5m", 48, False, 0), ("5m", 12, True, 30), ("1h", 6, False, 0),
                                                     ("1h", 24, True, 0)])
def test_embargo_no_training_label_overlaps_a_test_bar(tf, h, expanding, embargo):
    T = 72_000 if tf == "5m" else 6_000
    opts = WFOptions(train_days=40, test_days=20, expanding=expanding, embargo=embargo)
    ws = windows(T, tf, h, opts, first_valid=100)
    assert len(ws) >= 3
    for w in ws:
        assert w.train_hi - 1 + h < w.test_lo          # the last training row's label ends before the test
        assert w.test_lo - w.train_hi >= max(h, embargo)
    check_embargo(ws, h)
    tests = [(w.test_lo, w.test_hi) for w in ws]
    assert all(b == a2 for (_, b), (a2, _) in zip(tests, tests[1:]))   # test windows tile the span


def test_embargo_on_real_pooled_rows(universe_1h):
    p = load_universe(universe_1h, symbols=SYMS5).panels["1h"]
    pf = panel_features(p)
    prm = ModelParams(horizon=6)
    y = target(forward_returns(pf.close, prm.horizon), prm.target)
    for w in windows(p.shape[0], "1h", prm.horizon, WFOptions(train_days=60, test_days=30), first_valid=96):
        rows = pooled(pf, y, w.train_lo, w.train_hi)
        assert rows.t.max() + prm.horizon < w.test_lo


def test_check_embargo_catches_an_overlap():
    with pytest.raises(AssertionError, match="embargo violated"):
        check_embargo([Window(0, 100, 103, 200)], h=6)


@pytest.mark.parametrize("lo,hi,k,h", [(96, 1583, 3, 6), (96, 17_376, 3, 48), (0, 1000, 2, 24)])
def test_hpo_inner_folds_stay_inside_the_first_training_window(lo, hi, k, h):
    from research.hpo import inner_folds
    folds = inner_folds(lo, hi, k, h)
    assert len(folds) == k
    for a, b, c, d in folds:
        assert lo <= a < b and b - 1 + h < c < d and d - 1 + h < hi   # every label ends inside [lo, hi)


def test_hpo_data_ends_before_the_first_outer_test(universe_1h):
    from research.hpo import first_valid, hpo_data_end
    pf = panel_features(load_universe(universe_1h, symbols=SYMS5).panels["1h"])
    opts = WFOptions(train_days=60, test_days=30)
    end = hpo_data_end(pf, opts)
    for h in (1, 6, 24):
        first_test = windows(pf.X.shape[0], "1h", h, opts, first_valid=first_valid(pf))[0].test_lo
        assert end - 1 + h < first_test


def test_cross_section_of_one_bar_equals_the_panel_row(universe_1h):
    """What the daemon will do at a bar close: the cross-sectional columns from the N per-symbol rows of that bar
    alone (plus the beta state) equal the batch panel's, number for number."""
    from market.events import timeframe_ns
    from research import dataset as D
    p = load_universe(universe_1h, symbols=(*SYMS5, "TONUSDT", "NOTUSDT")).panels["1h"]
    ps, dv = D._per_symbol(p)
    lc = np.log(p.close)
    r1 = np.full(lc.shape, np.nan)
    r1[1:] = lc[1:] - lc[:-1]
    m = np.nanmean(np.where(np.isfinite(ps).all(axis=-1), r1, np.nan), axis=1)
    beta = D._beta(r1, m)
    close_ns = p.open_ns + timeframe_ns("1h")
    full = D.cross_section(ps, dv, beta, close_ns)
    for t in (150, 2000, 4000, 5600, 5990):      # before and after NOT (3276) and TON (5290) listed, after BTC ends
        one = D.cross_section(ps[t], dv[t], beta[t], close_ns[t])
        assert np.array_equal(one, full[t], equal_nan=True)
    assert np.isnan(full[150, -2:, 0]).all() and np.isfinite(full[5600, :, 0]).all()   # not listed yet; all listed
