"""Pooled models (batched = per-symbol, number for number), device=auto and the cost-aware portfolio."""
from __future__ import annotations

import numpy as np
import pytest

from research.dataset import forward_returns, panel_features, target
from research.device import choose_device
from research.models import ModelParams, fit_model, predict_panel, predict_rows
from research.portfolio import Costs, buy_and_hold, simulate
from research.universe import load_universe
from research.walkforward import ensemble_weights
from tests.research.rows import SYMS5

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")


@pytest.fixture(scope="module")
def pf5(universe_5m):
    return panel_features(load_universe(universe_5m, ("5m",), symbols=SYMS5, last_days=12).panels["5m"])


@pytest.mark.parametrize("kind,extra", [("xgboost", {}), ("xgboost", {"xgb_objective": "rank"}), ("ridge", {}),
                                        ("lstm", {"lstm_max_rows": 3000, "lstm_epochs": 1})])
def test_batched_inference_equals_per_symbol(pf5, kind, extra):
    prm = ModelParams(horizon=12, xgb_rounds=40, **extra)
    y = target(forward_returns(pf5.close, prm.horizon), prm.target)
    T = pf5.X.shape[0]
    m = fit_model(kind, pf5, y, 0, T // 2, prm)
    batch = predict_panel(m, pf5, T // 2, T)
    for j in range(pf5.X.shape[1]):
        t = np.flatnonzero(pf5.valid[T // 2:, j]) + T // 2
        one = predict_rows(m, pf5, t, np.full(len(t), j))
        got = batch[t - T // 2, j]
        if kind == "lstm":  # torch's batched GEMM may sum in another order than a smaller batch
            np.testing.assert_allclose(got, one, rtol=1e-5, atol=1e-6)
        else:
            assert np.array_equal(got, one)
    assert np.isfinite(batch[pf5.valid[T // 2:]]).all()
    assert np.nanstd(batch) > 0                                  # not a constant model


def test_device_auto_rules():
    assert choose_device("xgboost", 10_000)[0] == "cpu"
    dev, why = choose_device("xgboost", 5_000_000)
    assert dev in ("cpu", "cuda") and "5,000,000 rows" in why
    assert choose_device("lstm", 10, "cpu") == ("cpu", "device=cpu requested")
    with pytest.raises(ValueError, match="device must be"):
        choose_device("lstm", 10, "tpu")


def test_ensemble_weights_from_out_of_fold_icir():
    rng = np.random.default_rng(1)
    good = 0.05 + 0.1 * rng.standard_normal(500)
    bad = -0.02 + 0.1 * rng.standard_normal(500)
    w = ensemble_weights({"a": good, "b": bad, "c": 0.02 + 0.1 * rng.standard_normal(500)})
    assert w["b"] == 0 and w["a"] > w["c"] > 0 and sum(w.values()) == pytest.approx(1)
    assert ensemble_weights({"a": np.array([]), "b": np.array([])}) == {"a": 0.5, "b": 0.5}


def test_portfolio_costs_and_limits():
    T, N = 200, 6
    close = np.full((T, N), 100.0)
    rng = np.random.default_rng(3)
    scores = rng.standard_normal((T, N))
    c = Costs(fee=0.001, spread_bps=2, slippage_bps=1)
    # flat prices: one rebalance in, one sell-out: equity loses exactly the round-trip cost on the notional
    s = simulate(scores, close, top_k=2, rebalance=T + 1, costs=c)
    assert s.equity[-1] == pytest.approx(10_000 * (1 - c.per_side) * (1 - c.per_side))
    assert s.trades == 4
    # never more than top_k names; exposure <= 1 (long only, no leverage)
    s2 = simulate(scores, close * np.exp(np.cumsum(rng.normal(0, 0.01, (T, N)), axis=0)), top_k=2, rebalance=5,
                  costs=c)
    assert 0 < s2.exposure <= 1 + 1e-12 and s2.trades > 4
    # constant scores carry no ranking: stay in cash
    s3 = simulate(np.ones((T, N)), close, top_k=2, rebalance=5, costs=c)
    assert s3.trades == 0 and s3.equity[-1] == 10_000


def test_portfolio_delisted_name_is_sold_at_its_last_close():
    T = 50
    close = np.tile(np.linspace(100, 110, T)[:, None], (1, 3))
    close[30:, 0] = np.nan                                    # symbol 0 delists after bar 29
    scores = np.tile(np.array([3.0, 2.0, 1.0]), (T, 1))
    scores[30:, 0] = np.nan
    s = simulate(scores, close, top_k=1, rebalance=100, costs=Costs(0, 0, 0))
    # held symbol 0 from bar 0 to its last close (bar 29), then cash
    assert s.equity[-1] == pytest.approx(10_000 * close[29, 0] / close[0, 0])
    b = buy_and_hold(close, costs=Costs(0, 0, 0))
    assert b.equity[-1] == pytest.approx(10_000 * (close[29, 0] / 100 + 2 * 110 / 100) / 3)
