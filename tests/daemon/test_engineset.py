"""EngineSet's LSTM window (a double-written ring buffer) against the obvious deque + np.stack."""
from __future__ import annotations

from collections import deque

import numpy as np
import pytest

from daemon.engineset import EngineSet, LoadedEngine, _Window


class Capture:
    """A fake engine that records what it was given."""

    def __init__(self, seq_len: int = 0) -> None:
        self.seq_len = seq_len
        self.seen: list[np.ndarray] = []

    def predict(self, x: np.ndarray) -> np.ndarray:
        self.seen.append(np.array(x, copy=True))
        return np.array([0.5], dtype=np.float32)


def le(kind: str, engine) -> LoadedEngine:
    return LoadedEngine(kind, engine, "v1", "fake", "test", False, "/nowhere")


@pytest.mark.parametrize("n", [1, 3, 32])
def test_window_equals_a_deque(n):
    rng = np.random.default_rng(n)
    w, ref = _Window(n), deque(maxlen=n)
    for _ in range(5 * n + 7):
        row = rng.standard_normal(13).astype(np.float32)
        w.append(row)
        ref.append(row)
        got = w.rows()
        assert got.flags.c_contiguous and got.dtype == np.float32
        assert np.array_equal(got, np.stack(ref))
        assert w.full == (len(ref) == n)


def test_predict_feeds_the_lstm_the_last_rows_oldest_first_and_keeps_them_across_a_swap():
    rng = np.random.default_rng(0)
    lstm, xgb = Capture(seq_len=4), Capture()
    es = EngineSet("1m", {"lstm": le("lstm", lstm), "xgboost": le("xgboost", xgb)})
    rows = [rng.standard_normal(13).astype(np.float32) for _ in range(10)]
    for r in rows[:2]:
        es.observe(r, "BTCUSDT")
    out = es.predict(rows[2], "BTCUSDT")
    assert set(out) == {"xgboost"} and lstm.seen == []  # 3 rows < 4: no LSTM yet
    for r in rows[3:7]:
        out = es.predict(r, "BTCUSDT")
    assert set(out) == {"xgboost", "lstm"}
    assert np.array_equal(lstm.seen[-1], np.stack(rows[3:7])[None])
    assert np.array_equal(xgb.seen[-1], rows[6][None])
    es.predict(rows[0], "ETHUSDT")  # another symbol has its own window
    assert len(lstm.seen) == 4
    # a swapped-in LSTM with a longer window keeps the rows it can (and waits for the rest)
    lstm6 = Capture(seq_len=6)
    es.swap({"lstm": le("lstm", lstm6), "xgboost": le("xgboost", xgb)})
    es.predict(rows[7], "BTCUSDT")
    assert lstm6.seen == []  # 5 rows kept (the old window held 4) + this one = 5 < 6
    es.predict(rows[8], "BTCUSDT")
    assert np.array_equal(lstm6.seen[-1], np.stack(rows[3:9])[None])


def test_batched_inference_equals_per_symbol_inference_number_for_number(tiny_registry):
    """ONE predict_batch call over a boundary's rows gives each symbol exactly what its own predict gives, with
    real registry models (XGBoost and LSTM, whose windows fill at different times per symbol)."""
    import dataclasses

    from daemon.config import Config
    from engines.registry import ModelRegistry
    cfg = dataclasses.replace(Config().engines, warmup_iters=2)
    one = EngineSet.load(ModelRegistry(tiny_registry), "5m", cfg)
    many = EngineSet.load(ModelRegistry(tiny_registry), "5m", cfg)
    assert one.seq_len == 8
    rng = np.random.default_rng(7)
    syms = [f"S{i}USDT" for i in range(12)]
    from engines.features import FEATURE_SCHEMA
    f = len(FEATURE_SCHEMA.names)
    lstm_seen = mixed = 0
    for step in range(14):
        # symbols join at different bars, so some LSTM windows are full and others not at the same boundary
        here = [s for i, s in enumerate(syms) if step >= i // 2]
        rows = [rng.standard_normal(f).astype(np.float32) for _ in here]
        got = many.predict_batch(rows, here)
        want = [one.predict(r, s) for r, s in zip(rows, here)]
        assert got == want
        lstm_seen += sum("lstm" in g for g in got)
        mixed += any("lstm" in g for g in got) and any("lstm" not in g for g in got)
    assert lstm_seen > 0 and mixed > 0  # full and filling windows in one batch happened


def test_batch_refuses_a_symbol_twice():
    es = EngineSet("1m", {"xgboost": le("xgboost", Capture())})
    with pytest.raises(ValueError, match="twice"):
        es.predict_batch([np.zeros(13, np.float32)] * 2, ["A", "A"])


def test_a_bad_row_costs_only_its_symbol_not_the_boundary(tiny_registry):
    """A row the engines refuse (inf) fails the batch call; the set retries row by row: every other symbol
    gets exactly its per-symbol predictions, the bad one loses only that model's, and the refusal is counted in
    /metrics with its reason."""
    import dataclasses

    from daemon.config import Config
    from daemon.metrics import Metrics
    from engines.features import FEATURE_SCHEMA
    from engines.registry import ModelRegistry
    cfg = dataclasses.replace(Config().engines, warmup_iters=2)
    metrics = Metrics()
    one = EngineSet.load(ModelRegistry(tiny_registry), "5m", cfg)
    many = EngineSet.load(ModelRegistry(tiny_registry), "5m", cfg, metrics=metrics)
    rng = np.random.default_rng(3)
    syms = [f"S{i}USDT" for i in range(6)]
    f = len(FEATURE_SCHEMA.names)
    for step in range(10):
        rows = [rng.standard_normal(f).astype(np.float32) for _ in syms]
        bad = step == 9
        if bad:
            rows[2][0] = np.inf
        got = many.predict_batch(rows, syms)
        for k, (r, s) in enumerate(zip(rows, syms)):
            if bad and k == 2:
                with pytest.raises(ValueError, match="inf"):
                    one.predict(r, s)
                assert got[k] == {}  # both models refuse the inf row (each counted)
                continue
            assert got[k] == one.predict(r, s)
    assert all(set(g) == {"xgboost", "lstm"} for i, g in enumerate(got) if i != 2)
    assert many.row_errors == {("xgboost", "ValueError"): 1, ("lstm", "ValueError"): 1}
    text = metrics.render().decode()
    assert 'tradingd_predict_row_errors_total{kind="xgboost",reason="ValueError",timeframe="5m"} 1.0' in text
