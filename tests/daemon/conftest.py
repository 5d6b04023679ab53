"""Fixtures of the daemon tests."""
from __future__ import annotations

import numpy as np
import pytest

from engines.features import FEATURE_SCHEMA


@pytest.fixture(scope="module")
def tiny_registry(tmp_path_factory):
    """A real registry holding tiny XGBoost and LSTM (seq_len 8) 5m models trained on synthetic rows with the
    running feature schema: real model files through the real loaders, quick to train."""
    from engines.lstm_model import LSTMModel, make_sequences
    from engines.registry import ModelRegistry
    from engines.xgb_model import XGBoostModel
    names = list(FEATURE_SCHEMA.names)
    rng = np.random.default_rng(0)
    X = rng.standard_normal((600, len(names))).astype(np.float32)
    y = (X[:, 0] + 0.5 * rng.standard_normal(600) > 0).astype(np.float64)
    root = tmp_path_factory.mktemp("tiny_registry")
    reg = ModelRegistry(root)
    xm = XGBoostModel(device="cpu", num_boost_round=5, nthread=1)
    xm.set_feature_schema(names, FEATURE_SCHEMA.hash)
    xm.train(X[:450], y[:450], X[450:], y[450:], early_stopping_rounds=None)
    reg.publish("xgboost", "5m", xm.save, feature_names=names, schema_hash=FEATURE_SCHEMA.hash, make_current=True)
    lm = LSTMModel(device="cpu", seq_len=8, hidden=8, layers=1, epochs=1, batch_size=64)
    lm.set_feature_schema(names, FEATURE_SCHEMA.hash)
    Xs, idx = make_sequences(X, 8)
    lm.train(Xs[:400], y[idx][:400], Xs[400:], y[idx][400:])
    reg.publish("lstm", "5m", lm.save, feature_names=names, schema_hash=FEATURE_SCHEMA.hash, make_current=True)
    return root


@pytest.fixture(scope="module")
def real_universe_1h(tmp_path_factory):
    """A folder of 6 real 1h universe files (the last 800 bars of the recorded data), LINKUSDT listed 450 bars in
    (its earlier rows dropped): a symbol that joins mid-period. Skips when the data is absent."""
    import gzip

    from tests.paths import UNIVERSE
    src = UNIVERSE / "binance-spot-1h"
    if not src.is_dir():
        pytest.skip(f"real universe data not found at {src} (see ../shared/data/README.md)")
    d = tmp_path_factory.mktemp("uni1h_daemon")
    for s in ("BTCUSDT", "ETHUSDT", "SOLUSDT", "DOGEUSDT", "XRPUSDT", "LINKUSDT"):
        with gzip.open(src / f"{s}-1h.csv.gz", "rt") as f:
            lines = f.read().splitlines()
        rows = lines[1:][-1000:-200]  # BTC/ETH files end a few hours early: stop before every file's end
        if s == "LINKUSDT":
            rows = rows[450:]
        with gzip.open(d / f"{s}-1h.csv.gz", "wt") as f:
            f.write("\n".join([lines[0], *rows]) + "\n")
    return d
