"""The extra model kinds on real 1h data: per-symbol fine-tuned XGBoost (``xgboost_ft``) and the LSTM with a symbol
embedding (``lstm_emb``): batched = per-symbol, save/load round trip, unseen symbols, no training past t_hi."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from research.dataset import forward_returns, panel_features, target
from research.models import (EXTRA_KINDS, ModelParams, fit_model, load_extra_model, predict_panel, predict_rows,
                             save_model)
from research.universe import load_universe

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")

PRM = ModelParams(horizon=6, lstm_max_rows=3000, lstm_epochs=1, threads=1)


@pytest.fixture(scope="module")
def pf1h(small_1h_folder):
    return panel_features(load_universe(small_1h_folder).panels["1h"])


@pytest.fixture(scope="module")
def fitted(pf1h):
    y = target(forward_returns(pf1h.close, PRM.horizon), PRM.target)
    T = pf1h.X.shape[0]
    return {k: fit_model(k, pf1h, y, 0, T // 2, PRM) for k in EXTRA_KINDS}


@pytest.mark.parametrize("kind", EXTRA_KINDS)
def test_batched_equals_per_symbol_and_round_trip(pf1h, fitted, kind, tmp_path):
    m = fitted[kind]
    T = pf1h.X.shape[0]
    batch = predict_panel(m, pf1h, T // 2, T)
    for j in range(pf1h.X.shape[1]):
        t = np.flatnonzero(pf1h.valid[T // 2:, j]) + T // 2
        one = predict_rows(m, pf1h, t, np.full(len(t), j))
        np.testing.assert_allclose(batch[t - T // 2, j], one, rtol=1e-5, atol=1e-6)
    assert np.isfinite(batch[pf1h.valid[T // 2:]]).all() and np.nanstd(batch) > 0
    entry = save_model(m, tmp_path / kind)
    back = load_extra_model(entry, tmp_path, PRM)
    assert np.array_equal(predict_panel(back, pf1h, T // 2, T), batch, equal_nan=True)


def test_fine_tuning_changes_some_symbols_and_not_the_unseen(pf1h, fitted):
    m = fitted["xgboost_ft"]
    base, per = m.obj
    assert m.info["fine_tuned"] == len(per) >= 1 and m.info["fine_tuned"] + m.info["kept_pooled"] <= 6
    T = pf1h.X.shape[0]
    got = predict_panel(m, pf1h, T // 2, T)
    import xgboost as xgb
    v = pf1h.valid[T // 2:]
    pooled_only = np.full(v.shape, np.nan)
    pooled_only[v] = base.predict(xgb.DMatrix(pf1h.X[T // 2:][v]))
    for j, s in enumerate(pf1h.symbols):
        same = np.allclose(got[:, j][v[:, j]], pooled_only[:, j][v[:, j]])
        assert same == (s not in per), s
    # a panel whose symbols were never seen in training: every row is scored by the pooled booster
    unseen = replace(pf1h, symbols=tuple(f"NEW{i}USDT" for i in range(len(pf1h.symbols))))
    assert np.allclose(predict_panel(m, unseen, T // 2, T)[v], pooled_only[v])


def test_embedding_unknown_symbol_uses_id_zero(pf1h, fitted):
    import torch
    m = fitted["lstm_emb"]
    net, vocab = m.obj
    assert sorted(vocab.values()) == list(range(1, 7))
    T = pf1h.X.shape[0]
    unseen = replace(pf1h, symbols=("BTCUSDT",) + tuple(f"NEW{i}USDT" for i in range(5)))
    got = predict_panel(m, unseen, T // 2, T)
    known = predict_panel(m, pf1h, T // 2, T)
    assert np.array_equal(got[:, 0], known[:, 0], equal_nan=True)        # BTC keeps its own id
    assert not np.allclose(got[:, 1:], known[:, 1:], equal_nan=True)     # the others fall back to "unknown"
    with torch.no_grad():
        net.emb.weight[0] += 1.0                                          # only id 0 moves them
    try:
        moved = predict_panel(m, unseen, T // 2, T)
    finally:
        with torch.no_grad():
            net.emb.weight[0] -= 1.0
    assert np.array_equal(moved[:, 0], got[:, 0], equal_nan=True)
    assert not np.allclose(moved[:, 1:], got[:, 1:], equal_nan=True)


@pytest.mark.parametrize("kind", EXTRA_KINDS)
def test_training_never_reads_labels_at_or_after_t_hi(pf1h, kind):
    fwd = forward_returns(pf1h.close, PRM.horizon)
    y = target(fwd, PRM.target)
    T = pf1h.X.shape[0]
    hi = T // 2
    y2 = y.copy()
    y2[hi:] = np.random.default_rng(3).standard_normal(y2[hi:].shape)
    a = predict_panel(fit_model(kind, pf1h, y, 0, hi, PRM), pf1h, hi, T)
    b = predict_panel(fit_model(kind, pf1h, y2, 0, hi, PRM), pf1h, hi, T)
    assert np.array_equal(a, b, equal_nan=True)
