"""Labels on real klines: alignment with features (no look-ahead), cost, mask, class balance."""
from __future__ import annotations

import math

import numpy as np
import pytest

from engines.data import Klines, load_klines_csv, resample
from engines.features import FEATURE_SCHEMA, batch_features
from engines.labels import DEFAULT_COST, class_balance, make_labels, round_trip_cost

M = 60_000_000_000


@pytest.fixture(scope="module")
def btc(btc_klines_path):
    return load_klines_csv(btc_klines_path)


def test_default_cost_is_two_fees_plus_spread():
    assert DEFAULT_COST == pytest.approx(2 * 0.001 + 1e-4)
    assert round_trip_cost(0.0004, 0.0) == pytest.approx(0.0008)
    with pytest.raises(ValueError):
        round_trip_cost(-0.1)


@pytest.mark.parametrize("tf, horizon", [("1m", 1), ("5m", 3), ("1h", 1)])
def test_labels_on_real_klines(btc, tf, horizon):
    k = btc if tf == "1m" else resample(btc, tf)
    lab = make_labels(k, horizon, DEFAULT_COST)
    y, fwd = lab
    assert y.dtype == np.int8 and fwd.dtype == np.float64 and len(y) == len(fwd) == len(k)
    assert (y[-horizon:] == -1).all() and np.isnan(fwd[-horizon:]).all()
    assert lab.valid[:-horizon].all() and np.isfinite(fwd[:-horizon]).all()
    # by definition, row by row (independent arithmetic)
    for t in (0, 1, len(k) // 2, len(k) - horizon - 1):
        want = math.log(k.close[t + horizon] / k.close[t])
        assert fwd[t] == pytest.approx(want, rel=1e-9, abs=1e-15)
        assert y[t] == (1 if fwd[t] > DEFAULT_COST else 0)
    assert ((y[:-horizon] == 1) == (fwd[:-horizon] > DEFAULT_COST)).all()
    # the forward return from t is exactly the feature ret_h known at t+h: same log closes, shifted by h
    if horizon in (1, 3):
        X = batch_features(k, tf)
        j = FEATURE_SCHEMA.names.index(f"ret_{horizon}")
        w = FEATURE_SCHEMA.warmup
        assert np.array_equal(fwd[w:-horizon], X[w + horizon:, j])
    bal = class_balance(lab)
    print(f"\nclass balance {tf} h={horizon} cost={DEFAULT_COST}: {bal}")
    assert bal["labelled"] == len(k) - horizon and bal["up"] + bal["not_up"] == bal["labelled"]
    assert 0 < bal["up_fraction"] < 0.5  # net of fees "up" is the minority class on real data


def test_no_look_ahead_label_depends_only_on_closes_t_to_t_plus_h(btc):
    k = btc[:500]
    h = 4
    base = make_labels(k, h, 0.0)
    rng = np.random.default_rng(1)
    for t in rng.integers(10, 480, 20):
        c = k.close.copy()
        c[: t] *= rng.uniform(0.5, 1.5, t)  # the past moves
        c[t + h + 1:] *= rng.uniform(0.5, 1.5, len(c) - t - h - 1)  # the far future moves
        kk = Klines(k.open_ns, np.minimum(k.open, c), np.maximum(k.high, c), np.minimum(k.low, c), c, k.volume)
        lab = make_labels(kk, h, 0.0)
        assert lab.fwd_return[t] == base.fwd_return[t] and lab.y[t] == base.y[t]
    # and the close at t+h does matter
    c = k.close.copy()
    c[100 + h] *= 1.01
    kk = Klines(k.open_ns, k.open, np.maximum(k.high, c), k.low, c, k.volume)
    assert make_labels(kk, h, 0.0).fwd_return[100] != base.fwd_return[100]


def test_cost_moves_the_threshold_and_bad_arguments():
    ts = np.arange(4, dtype=np.int64) * M
    c = np.array([100.0, 100.1, 100.5, 100.0])
    k = Klines(ts, c, c, c, c, np.ones(4))
    assert make_labels(k, 1, 0.0).y.tolist() == [1, 1, 0, -1]
    assert make_labels(k, 1, 0.002).y.tolist() == [0, 1, 0, -1]  # log(100.1/100) = 0.001 < cost
    assert make_labels(k, 3, 0.0).y.tolist() == [0, -1, -1, -1]  # flat over 3 bars is not "up"
    assert make_labels(k, 9, 0.0).y.tolist() == [-1] * 4
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="horizon"):
            make_labels(k, bad)
    for bad in (-0.1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="cost"):
            make_labels(k, 1, bad)
