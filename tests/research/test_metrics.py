"""IC / Rank IC against scipy per bar on real data; the deflated Sharpe against the paper's worked example."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import pearsonr, spearmanr

from research.dataset import forward_returns, panel_features
from research.metrics import deflated_sharpe, expected_max_sharpe, ic_series, quantile_returns, signal_metrics
from research.models import factor_scores
from research.universe import load_universe

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")


@pytest.fixture(scope="module")
def real_1h(universe_1h):
    p = load_universe(universe_1h, symbols=("BTCUSDT", "ETHUSDT", "SOLUSDT", "DOGEUSDT", "XRPUSDT", "LINKUSDT",
                                            "TONUSDT", "NOTUSDT", "PEPEUSDT", "ARBUSDT")).panels["1h"]
    return panel_features(p)


def test_ic_and_rank_ic_match_scipy_per_bar(real_1h):
    pf = real_1h
    pred = factor_scores(pf, "reversal", 24)
    fwd = forward_returns(pf.close, 6)
    ic, ric = ic_series(pred, fwd, min_names=5)
    checked = 0
    for t in range(0, pf.X.shape[0], 7):
        ok = np.isfinite(pred[t]) & np.isfinite(fwd[t])
        if ok.sum() < 5:
            assert np.isnan(ic[t]) and np.isnan(ric[t])
            continue
        assert ic[t] == pytest.approx(pearsonr(pred[t, ok], fwd[t, ok])[0], abs=1e-12)
        assert ric[t] == pytest.approx(spearmanr(pred[t, ok], fwd[t, ok])[0], abs=1e-12)
        checked += 1
    assert checked > 700
    # the late listings (TON, NOT) change the cross-section size over time: both sizes were compared
    n = (np.isfinite(pred) & np.isfinite(fwd)).sum(axis=1)
    assert len(set(n[n >= 5].tolist())) >= 2


def test_signal_metrics_definitions(real_1h):
    pf = real_1h
    fwd = forward_returns(pf.close, 6)
    perfect = signal_metrics(fwd, fwd, 6)
    assert perfect["rank_ic"] == pytest.approx(1.0) and perfect["ic"] == pytest.approx(1.0)
    assert perfect["hit_rate"] > 0.95 and perfect["top_minus_bottom"] > 0
    anti = signal_metrics(-fwd, fwd, 6)
    assert anti["rank_ic"] == pytest.approx(-1.0) and anti["top_minus_bottom"] == pytest.approx(
        -perfect["top_minus_bottom"], rel=1e-4)  # ties (equal returns) take average ranks
    ic, ric = ic_series(factor_scores(pf, "momentum", 24), fwd)
    m = signal_metrics(factor_scores(pf, "momentum", 24), fwd, 6)
    x = ric[np.isfinite(ric)]
    assert m["rank_icir"] == pytest.approx(x.mean() / x.std(ddof=1))
    q = quantile_returns(fwd, fwd, 5)
    ok = np.isfinite(q).all(axis=1)
    assert (np.diff(q[ok], axis=1) >= 0).all()               # sorting by the outcome orders the quintiles


def test_deflated_sharpe_worked_example():
    # Bailey & López de Prado (2014), numerical example: annualised SR 2.5 over 5 years of daily returns
    # (T = 1250), N = 100 trials with annualised SR variance 0.5, skew -3, kurtosis 10 -> DSR ~ 0.9004
    sr = 2.5 / math.sqrt(250)
    v = 0.5 / 250
    assert expected_max_sharpe(100, v) * math.sqrt(250) == pytest.approx(1.7894, abs=1e-3)
    assert deflated_sharpe(sr, 1250, 100, v, skew=-3, kurt=10) == pytest.approx(0.9004, abs=1e-3)
    # more trials raise the bar; one trial reduces to the probabilistic Sharpe ratio against 0
    assert deflated_sharpe(sr, 1250, 1000, v, -3, 10) < deflated_sharpe(sr, 1250, 100, v, -3, 10)
    assert expected_max_sharpe(1, v) == 0.0
