"""engines.drift on real market data (../shared/data): the statistics against independent implementations
(scipy's two-sample KS, PSI written here from its definition), the false-alarm rate on a stationary stretch,
alarms after a real volatility regime break and after a synthetic shift injected into real bars, and the change
detectors on prediction error and per-trade P&L."""
from __future__ import annotations

import datetime as dt
import json
import math

import numpy as np
import pytest
from scipy.stats import ks_2samp

from engines.drift import (EPS, NULL_QUANTILE, DriftParams, DriftStream, PnLDetector, Reference, build_reference)
from engines.features import FEATURE_SCHEMA, batch_features
from tests.paths import KLINES, UNIVERSE

NAMES = FEATURE_SCHEMA.names
DAY_NS = 86_400 * 10**9


def _ns(day: str) -> int:
    return int(dt.datetime.fromisoformat(day).replace(tzinfo=dt.timezone.utc).timestamp() * 1e9)


def _load(path):
    from engines.data import load_klines_csv
    if not path.exists():
        pytest.skip(f"real recorded data not found at {path} (see ../shared/data/README.md)")
    return load_klines_csv(str(path))


@pytest.fixture(scope="module")
def split_days():
    """BTC and ETH 1m bars: features, closes, and a stationary split by construction: even UTC days are the
    training reference, odd days the live stream (both sample the same 90 days, so the same regimes)."""
    out = {}
    for sym in ("BTC", "ETH"):
        k = _load(KLINES / f"{sym}_USDT-1m_2025-05-20_2025-08-18.csv.gz")
        X = batch_features(k, "1m")
        even = (np.asarray(k.open_ns) // DAY_NS) % 2 == 0
        ref = build_reference(X[even], NAMES)
        out[sym] = (X, np.asarray(k.close), even, ref, k)
    return out


def _stream(ref: dict, **kw) -> DriftStream:
    return DriftStream(Reference.from_dict(json.loads(json.dumps(ref, allow_nan=False))), DriftParams(**kw))


# ------------------------------------------------------------------------------------------ the statistics
def test_psi_and_ks_match_independent_implementations(split_days):
    X, close, even, ref, _ = split_days["BTC"]
    train = X[even]
    train = train[np.isfinite(train).all(axis=1)]
    live = np.where(~even)[0][5000:5200]  # one 200-bar window of live rows
    s = _stream(ref, window=200)
    for i in live:
        s.update(X[i], None, close[i])
    assert s.stats.full
    for f, name in enumerate(NAMES):
        # PSI from its definition: deciles of the training column, shares of each decile bin on both sides
        edges = np.quantile(train[:, f], np.arange(1, 10) / 10)
        e = np.array([np.mean(np.searchsorted(edges, train[:, f], side="right") == b) for b in range(10)])
        a = np.array([np.mean(np.searchsorted(edges, X[live, f], side="right") == b) for b in range(10)])
        e, a = np.maximum(e, EPS), np.maximum(a, EPS)
        want = float(np.sum((a - e) * np.log(a / e)))
        assert s.last_psi[f] == pytest.approx(want, rel=1e-9, abs=1e-12), name
        # KS: exactly scipy's two-sample statistic of the bin indices; never above the unbinned one
        ks = ks_2samp(np.searchsorted(edges, train[:, f], side="right"),
                      np.searchsorted(edges, X[live, f], side="right")).statistic
        assert s.last_ks[f] == pytest.approx(ks, abs=1e-12), name
        assert s.last_ks[f] <= ks_2samp(train[:, f], X[live, f]).statistic + 1e-12, name
    assert s.stats.psi == pytest.approx(float(s.last_psi.max()))
    assert s.stats.psi_feature == NAMES[int(s.last_psi.argmax())]


def test_reference_round_trips_and_bad_input_is_refused(split_days):
    X, close, even, ref, _ = split_days["BTC"]
    json.dumps(ref, allow_nan=False)  # goes into the manifest as is
    assert Reference.from_dict(ref).null_threshold("psi", 200) is None  # psi/ks are per feature
    assert Reference.from_dict(ref).feature_thresholds("psi", 200).shape == (len(NAMES),)
    bad = dict(ref, edges=ref["edges"][:-1])
    with pytest.raises(ValueError, match="malformed"):
        Reference.from_dict(bad)
    s = _stream(ref, window=50)
    row = X[np.where(~even)[0][100]].copy()
    row[3] = np.nan
    st = s.update(row, 0.5, 100.0)
    assert st.refused_rows == 1 and st.rows == 0
    assert s.update(row[:-1], 0.5, 100.0).refused_rows == 2


# ------------------------------------------------------------------------------------------ false alarms
def test_false_alarm_rate_on_stationary_stretch(split_days):
    """The calibrated thresholds are the NULL_QUANTILE (0.99) quantile of the joint feature statistic over
    windows the reference did not contain, so a stream distributed like the training rows alarms on
    1 - 0.99 = 1 % of evaluations. The bound adds three standard errors: of the live rate (independent windows =
    live rows / window) and of the null quantile itself (estimated from the reference's independent windows)."""
    W = 200
    alarms = evals = 0
    for sym, (X, close, even, ref, _) in split_days.items():
        s = _stream(ref, window=W)
        for i in np.where(~even)[0]:
            st = s.update(X[i], None, close[i])
            if st.full:
                evals += 1
                alarms += st.alarm
    rate = alarms / evals
    p = 1 - NULL_QUANTILE
    n_live = evals / W
    n_null = sum(int(r["rows"]) for *_, r, _ in split_days.values()) / W
    bound = p + 3 * math.sqrt(p * (1 - p) / n_live + p * (1 - p) / n_null)
    print(f"stationary false-alarm rate {rate:.4f} over {evals} bar closes (bound {bound:.4f})")
    assert rate <= bound


# ------------------------------------------------------------------------------------------ real regime change
@pytest.mark.parametrize("symbol", ["BTCUSDT", "ETHUSDT"])
def test_alarm_after_real_volatility_break(symbol):
    """5 Aug 2024 (the carry-trade unwind): a model trained on the 87 days before 1 Aug sees 1-hour realised
    volatility above anything in its training data. The break's onset is defined on the training side (the first
    live bar whose 12-bar realised vol exceeds the training maximum); an alarm must be up within 24 bars (2 h)."""
    k = _load(UNIVERSE / "binance-spot-5m" / f"{symbol}-5m.csv.gz")
    X = batch_features(k, "5m")
    t, c = np.asarray(k.open_ns), np.asarray(k.close)
    train = (t >= _ns("2024-05-06")) & (t < _ns("2024-08-01"))
    s = _stream(build_reference(X[train], NAMES), window=200)
    r = np.concatenate([[0.0], np.diff(np.log(c))])
    rv12 = np.sqrt(np.convolve(r ** 2, np.ones(12))[:len(r)] / 12)
    live = np.where(t >= _ns("2024-08-01"))[0]
    onset = int(live[np.argmax(rv12[live] > rv12[train].max())])
    assert rv12[onset] > rv12[train].max() and t[onset] < _ns("2024-08-06")  # the break exists in the data
    first = None
    for i in np.where(t >= _ns("2024-08-01") - 200 * 300 * 10**9)[0]:  # window filled before the live start
        st = s.update(X[i], None, c[i])
        if i >= onset and st.alarm:
            first = i
            reasons = st.reasons
            break
    assert first is not None and first - onset <= 24, (first, onset)
    assert set(reasons) & {"psi", "ks"}
    print(f"{symbol}: onset {dt.datetime.utcfromtimestamp(t[onset] / 1e9)}, alarm after {first - onset} bars")


# ------------------------------------------------------------------------------------------ synthetic shift
@pytest.mark.parametrize("symbol", ["BTCUSDT", "SOLUSDT"])
def test_alarm_after_synthetic_volatility_shift(symbol):
    """Real 5m bars from 1 Jul 2024 on, their log-price moves from the injection point scaled so that the day's
    volatility is twice the highest daily volatility of the training days (1 Apr - 28 Jun): a regime the model
    never saw. PSI/KS compare the window's marginals, so a shift shows once it fills enough of the window: the
    alarm must be up within one window (200 bars)."""
    from engines.data import Klines
    k = _load(UNIVERSE / "binance-spot-5m" / f"{symbol}-5m.csv.gz")
    X = batch_features(k, "5m")
    t, c = np.asarray(k.open_ns), np.asarray(k.close)
    train = (t >= _ns("2024-04-01")) & (t < _ns("2024-06-29"))
    s = _stream(build_reference(X[train], NAMES), window=200)
    r = np.concatenate([[0.0], np.diff(np.log(c))])
    day = t // DAY_NS
    max_day_vol = max(r[day == d].std() for d in np.unique(day[train]))
    inj = int(np.argmax(t >= _ns("2024-07-01")))
    lo, hi = inj - 500, inj + 400
    factor = 2 * max_day_vol / r[inj - 288:inj].std()
    base = c[inj - 1]

    def scaled(a):
        a = np.asarray(a[lo:hi], np.float64).copy()
        m = np.arange(lo, hi) >= inj
        a[m] = base * (a[m] / base) ** factor
        return a
    k2 = Klines(k.open_ns[lo:hi], scaled(k.open), scaled(k.high), scaled(k.low), scaled(k.close),
                k.volume[lo:hi], symbol=symbol, timeframe="5m")
    X2 = batch_features(k2, "5m")
    assert np.array_equal(k2.close[:inj - lo], c[lo:inj]) and k2.close[-1] != c[hi - 1]  # real bars up to inj
    first = None
    for j in range(hi - lo):
        st = s.update(X2[j], None, k2.close[j])
        if lo + j >= inj and st.alarm:
            first = lo + j
            break
    assert first is not None and first - inj <= 200, (first, inj)
    assert set(st.reasons) & {"psi", "ks"}
    print(f"{symbol}: volatility x{factor:.1f}: alarm {first - inj} bars after the injection ({st.psi_feature})")


# ------------------------------------------------------------------------------------------ model & P&L
def test_calibration_and_error_detector_see_a_model_turning_bad(split_days):
    """The naive momentum model of engines.train (p = 0.55 after an up bar, 0.45 after a down bar) with its
    training-rule labels (15-bar horizon, cost 0.2 %): unchanged on live days its error detector stays quiet;
    when it breaks halfway (0.35 added to every prediction: a stale input, a wrong scaler) the prediction
    distribution and the error detector alarm within 300 resolved predictions, calibration (a window of 200
    resolved predictions, only moves as they resolve) within 2000 bars."""
    X, close, even, _, _ = split_days["BTC"]
    h, cost = 15, 0.002
    i_ret1 = NAMES.index("ret_1")
    p = np.where(X[:, i_ret1] > 0, 0.55, 0.45)
    fwd = np.full(len(close), np.nan)
    fwd[:-h] = np.log(close[h:] / close[:-h])
    y = np.where(fwd > cost, 1, np.where(fwd < -cost, 0, -1))
    fin = np.isfinite(X).all(axis=1)
    tr = np.where(even & fin)[0]
    ref = build_reference(X[tr], NAMES, pred=p[tr], y=y[tr], horizon=h, cost=cost)
    assert "calib" in ref and "pred" in ref and ref["null"]["calibration"]
    live = np.where(~even & fin)[0]
    half = len(live) // 2
    s = _stream(ref, window=200)
    for i in live[:half]:
        st = s.update(X[i], float(p[i]), close[i])
    assert not st.error_change and st.resolved > 200 and math.isfinite(st.calibration)
    flipped_at, seen = st.resolved, set()
    fired = None
    for i in live[half:half + 2000]:
        st = s.update(X[i], float(p[i] + 0.35), close[i])
        seen |= set(st.reasons)
        if st.error_change and fired is None:
            fired = st.resolved - flipped_at
    assert fired is not None and fired <= 300, fired
    assert {"prediction_psi", "calibration", "error_change"} <= seen and st.alarm
    print(f"error detector: fired {fired} resolved predictions after the model broke")


def test_pnl_detector_sees_per_trade_pnl_decay(split_days):
    """Per-trade P&L of 15-bar momentum trades on real BTC bars (1 bp fee each way): the detector stays quiet on
    their real outcomes, and fires once every trade from some point on loses an extra 30 bp."""
    X, close, *_ = split_days["BTC"]
    i0 = np.arange(1000, 120_000, 15)
    direction = np.sign(np.log(close[i0] / close[i0 - 15]))
    ret = direction * np.log(close[i0 + 15] / close[i0]) - 2e-4
    det = PnLDetector(DriftParams())
    n = 4000
    for r in ret[:n]:
        assert not det.update(10_000 * r, 10_000.0)
    fired = None
    for j, r in enumerate(ret[n:n + 2000]):
        if det.update(10_000 * (r - 0.003), 10_000.0):
            fired = j
            break
    assert fired is not None and fired <= 200, fired
    print(f"P&L detector: fired after {fired + 1} losing trades (scale {det.scale_bps:.1f} bp)")
    assert not det.update(float("nan"), 1.0) or det.change  # a non-finite trade is ignored, latched state kept
