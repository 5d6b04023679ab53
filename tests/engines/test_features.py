"""Features: batch == incremental bit for bit on 90 days of real klines, formulas against textbook versions."""
from __future__ import annotations

import math

import numpy as np
import pytest

from market.events import Bar
from engines.data import Klines, klines_to_bars, load_klines_csv, resample
from engines.features import (BOOK_FEATURE_SCHEMA, FEATURE_SCHEMA, FeatureSchema, IncrementalFeatures,
                              SchemaMismatch, atr, batch_features, book_features)

M = 60_000_000_000
W = FEATURE_SCHEMA.warmup
NAMES = FEATURE_SCHEMA.names


def col(name):
    return NAMES.index(name)


@pytest.fixture(scope="module")
def btc(btc_klines_path):
    return load_klines_csv(btc_klines_path)


def incremental_matrix(k: Klines, **kw) -> tuple[np.ndarray, IncrementalFeatures]:
    inc = IncrementalFeatures(k.timeframe, **kw)
    rows = [inc.update(b) for b in klines_to_bars(k)]
    assert all(r is None for r in rows[:W]) and all(r is not None for r in rows[W:])
    return np.vstack(rows[W:]), inc


@pytest.mark.parametrize("tf", ["1m", "5m", "15m", "1h"])
def test_batch_equals_incremental_exactly_on_90_days(btc, tf):
    k = btc if tf == "1m" else resample(btc, tf)
    X = batch_features(k, tf)
    assert X.shape == (len(k), FEATURE_SCHEMA.n_features) and X.dtype == np.float64
    assert np.isnan(X[:W]).all() and np.isfinite(X[W:]).all()
    Y, inc = incremental_matrix(k)
    mismatch = {NAMES[j]: int((X[W:, j] != Y[:, j]).sum()) for j in range(len(NAMES)) if (X[W:, j] != Y[:, j]).any()}
    assert not mismatch, f"batch and incremental differ (count per feature): {mismatch}"
    # ATR for the optimizer: atr() in price units, the feature is ATR / close, the live value is the last ATR
    a = atr(k)
    assert np.array_equal(a[W:] / k.close[W:], X[W:, col("atr_14")])
    assert inc.atr == a[-1] and inc.ready


def test_eth_too_and_features_have_spread(eth_klines_path):
    k = resample(load_klines_csv(eth_klines_path), "15m")
    X = batch_features(k, "15m")
    Y, _ = incremental_matrix(k)
    assert np.array_equal(X[W:], Y)
    assert (X[W:].std(axis=0) > 0).all()  # no constant (dead) feature on real data


def test_incremental_fills_gaps_like_the_loader(btc):
    """Bars with holes (BarBuilder without emit_empty) give the same rows as batch over the filled klines."""
    k = btc[:3000]
    bars = klines_to_bars(k)
    holes = set(range(200, 205)) | {777, 1500}
    # make the holes real quiet minutes: flat at the previous close with zero volume, as the loader fills them
    o, h, l, c, v = (a.copy() for a in (k.open, k.high, k.low, k.close, k.volume))
    for i in sorted(holes):
        o[i] = h[i] = l[i] = c[i] = c[i - 1]
        v[i] = 0.0
    filled = Klines(k.open_ns, o, h, l, c, v, symbol=k.symbol)
    X = batch_features(filled, "1m")
    inc = IncrementalFeatures("1m")
    for i, b in enumerate(klines_to_bars(filled)):
        if i in holes:
            continue
        r = inc.update(b)
        if i >= W:
            assert np.array_equal(r, X[i]), i
    assert inc.stats.filled == len(holes)
    del bars


def test_no_look_ahead(btc):
    """Row t depends only on bars <= t: computing on a prefix gives the same rows."""
    k = btc[:2000]
    X = batch_features(k, "1m")
    for t in (W, 100, 999, 1999):
        assert np.array_equal(batch_features(k[: t + 1], "1m")[t], X[t])


# ------------------------------------------------------------------------------------------------ formulas
def textbook(k: Klines, t: int) -> dict[str, float]:
    """Straightforward re-derivations (fsum, statistics-style loops) of each feature at row t."""
    c, h, l, o, v = k.close, k.high, k.low, k.open, k.volume
    out = {f"ret_{n}": math.log(c[t] / c[t - n]) for n in (1, 3, 6, 12)}
    for n in (12, 48):
        out[f"rv_{n}"] = math.sqrt(math.fsum(math.log(c[i] / c[i - 1]) ** 2 for i in range(t - n + 1, t + 1)) / n)
    tr = [h[0] - l[0]] + [max(h[i] - l[i], abs(h[i] - c[i - 1]), abs(l[i] - c[i - 1])) for i in range(1, t + 1)]
    a = sum(tr[:14]) / 14
    for i in range(14, t + 1):
        a = (a * 13 + tr[i]) / 14
    out["atr_14"] = a / c[t]
    x = [math.log(1 + v[i]) for i in range(t - 19, t + 1)]
    mu = math.fsum(x) / 20
    sd = math.sqrt(math.fsum((y - mu) ** 2 for y in x) / 20)
    out["vol_z_20"] = (x[-1] - mu) / sd
    tp = [(h[i] + l[i] + c[i]) / 3 for i in range(t - 19, t + 1)]
    vw = math.fsum(p * q for p, q in zip(tp, v[t - 19:t + 1])) / math.fsum(v[t - 19:t + 1])
    out["vwap_dist_20"] = c[t] / vw - 1
    gains = [max(c[i] - c[i - 1], 0.0) for i in range(1, t + 1)]
    losses = [max(c[i - 1] - c[i], 0.0) for i in range(1, t + 1)]
    ag, al = sum(gains[:14]) / 14, sum(losses[:14]) / 14
    for g, lo in zip(gains[14:], losses[14:]):
        ag, al = (ag * 13 + g) / 14, (al * 13 + lo) / 14
    out["rsi_14"] = (100 - 100 / (1 + ag / al)) / 100  # the classic form
    lo20, hi20 = min(l[t - 19:t + 1]), max(h[t - 19:t + 1])
    out["range_pos_20"] = (c[t] - lo20) / (hi20 - lo20)
    out["bar_range"] = math.log(h[t] / l[t])
    out["bar_body"] = math.log(c[t] / o[t])
    return out


def test_formulas_match_textbook_definitions(btc):
    k = resample(btc[:6000], "5m")
    X = batch_features(k, "5m")
    assert set(textbook(k, W)) == set(NAMES)
    for t in (W, W + 1, 500, len(k) - 1):
        ref = textbook(k, t)
        for name, want in ref.items():
            assert X[t, col(name)] == pytest.approx(want, rel=1e-9, abs=1e-12), (t, name)


def test_degenerate_windows_have_defined_values():
    n = 80
    ts = np.arange(n, dtype=np.int64) * M
    flat = np.full(n, 100.0)
    k = Klines(ts, flat, flat, flat, flat, np.zeros(n))
    X = batch_features(k, "1m")
    Y, _ = incremental_matrix(k)
    assert np.array_equal(X[W:], Y)
    last = dict(zip(NAMES, X[-1]))
    assert last["vol_z_20"] == 0.0 and last["vwap_dist_20"] == 0.0 and last["rsi_14"] == 0.5
    assert last["range_pos_20"] == 0.5 and last["ret_12"] == 0.0 and last["rv_48"] == 0.0 and last["atr_14"] == 0
    # monotone rise: RSI 1, close near the top of the 20-bar range
    up = 100.0 + np.arange(n)
    X = batch_features(Klines(ts, up, up + 0.5, up - 0.5, up, np.ones(n)), "1m")
    assert X[-1, col("rsi_14")] == 1.0 and X[-1, col("range_pos_20")] == pytest.approx(1 - 0.5 / 20)


def test_short_input_is_all_warmup_and_errors():
    k = Klines(np.arange(W, dtype=np.int64) * M, *[np.full(W, 5.0)] * 4, np.ones(W))
    assert np.isnan(batch_features(k, "1m")).all()
    with pytest.raises(ValueError, match="asked for 5m"):
        batch_features(k, "5m")
    with pytest.raises(ValueError, match="gaps"):
        batch_features(Klines(np.array([0, 2 * M]), *[np.ones(2)] * 5), "1m")


def test_incremental_input_checks():
    inc = IncrementalFeatures("5m")
    b = Bar("BTCUSDT", "5m", 0, 1.0, 2.0, 0.5, 1.5, 3.0)
    inc.update(b)
    with pytest.raises(ValueError, match="not after"):
        inc.update(b)
    with pytest.raises(ValueError, match="1m bar"):
        inc.update(Bar("BTCUSDT", "1m", 10 * M, 1, 1, 1, 1, 1))
    with pytest.raises(ValueError, match="ETHUSDT"):
        inc.update(Bar("ETHUSDT", "5m", 10 * M, 1, 1, 1, 1, 1))
    assert inc.update(Bar("BTCUSDT", "5m", 5 * M, float("nan"), 2.0, 0.5, 1.5, 3.0)) is None
    assert inc.stats.rejected == 1 and inc.stats.bars == 1
    inc.update(Bar("BTCUSDT", "5m", 5 * M * 10**6, 1.0, 2.0, 0.5, 1.5, 3.0))  # absurd gap: restart warm-up
    assert inc.stats.resets == 1 and not inc.ready and inc.atr is None


# ------------------------------------------------------------------------------------------------ schema / book
def test_schema_hash_identifies_names_version_params():
    s = FEATURE_SCHEMA
    assert len(s.hash) == 64 and s.n_features == len(s.names) == 13
    assert FeatureSchema(s.names, s.version, s.params, s.warmup).hash == s.hash
    assert FeatureSchema(s.names[::-1], s.version, s.params, s.warmup).hash != s.hash
    assert FeatureSchema(s.names, s.version + 1, s.params, s.warmup).hash != s.hash
    assert FeatureSchema(s.names, s.version, s.params[:-1], s.warmup).hash != s.hash
    assert BOOK_FEATURE_SCHEMA.hash != s.hash and BOOK_FEATURE_SCHEMA.names[:13] == s.names
    s.require(s.hash)
    with pytest.raises(SchemaMismatch, match="feature schema"):
        s.require(BOOK_FEATURE_SCHEMA.hash)
    assert s.to_dict()["hash"] == s.hash


def test_book_variant(btc):
    k = btc[:200]
    rng = np.random.default_rng(3)
    sp, imb = rng.uniform(0.01, 2.0, len(k)), rng.uniform(-1, 1, len(k))
    X = batch_features(k, "1m", book=(sp, imb))
    assert X.shape == (len(k), BOOK_FEATURE_SCHEMA.n_features)
    assert np.array_equal(X[:, :13], batch_features(k, "1m"), equal_nan=True)
    inc = IncrementalFeatures("1m", book=True)
    assert inc.schema is BOOK_FEATURE_SCHEMA
    rows = [inc.update(b, spread_bps=s, imbalance=i) for b, s, i in zip(klines_to_bars(k), sp, imb)]
    assert np.array_equal(np.vstack(rows[W:]), X[W:])
    with pytest.raises(ValueError, match="required"):
        IncrementalFeatures("1m", book=True).update(klines_to_bars(k)[0])
    with pytest.raises(ValueError, match="shape"):
        batch_features(k, "1m", book=(sp[:5], imb))


def test_book_features_by_hand():
    bids = [(99.0, 1.0), (98.0, 2.0), (97.0, 4.0)]
    asks = [(101.0, 3.0), (102.0, 1.0)]
    sp, imb = book_features(bids, asks, levels=2)
    assert sp == pytest.approx(2.0 / 100.0 * 1e4) and imb == pytest.approx((3.0 - 4.0) / 7.0)
    with pytest.raises(ValueError, match="crossed"):
        book_features([(101.0, 1.0)], [(100.0, 1.0)])
    with pytest.raises(ValueError, match="empty"):
        book_features([], [(100.0, 1.0)])
