"""Peak detectors: hand-worked sequences, and no look-ahead (a prefix gives the same decisions)."""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from strategies.peaks import SwingDetector, TrailingPeakDetector


def feed(det, prices):
    return [det.update_price(p) for p in prices]


def test_long_exits_after_peak_once_armed():
    det = TrailingPeakDetector(1, 100.0, retrace=2.0, min_favourable=3.0)
    # 103 arms (favourable 3); 102 retraces 1; 101 retraces 2 from the 103 peak -> fire
    assert feed(det, [101.0, 103.0, 102.0, 101.0, 100.0]) == [False, False, False, True, False]
    assert det.triggered and det.extreme == 103.0


def test_long_not_armed_does_not_fire_on_a_drop():
    det = TrailingPeakDetector(1, 100.0, retrace=2.0, min_favourable=3.0)
    assert feed(det, [102.0, 99.0, 97.0]) == [False, False, False]  # the stop handles this, not the peak exit


def test_short_exits_after_trough():
    det = TrailingPeakDetector(-1, 100.0, retrace=2.0, min_favourable=3.0)
    assert feed(det, [98.0, 96.0, 97.0, 98.5]) == [False, False, False, True]
    assert det.extreme == 96.0


def test_bar_uses_high_then_close():
    det = TrailingPeakDetector(1, 100.0, retrace=2.0, min_favourable=3.0)
    # one bar: the high 104 arms it and the close 101.5 is 2.5 below it -> fires at this bar's close
    assert det.update(104.0, 100.5, 101.5) is True


def test_bad_values_ignored_and_bad_construction_refused():
    det = TrailingPeakDetector(1, 100.0, retrace=2.0, min_favourable=0.0)
    assert det.update(float("nan"), 1.0, 1.0) is False and det.extreme == 100.0
    with pytest.raises(ValueError):
        TrailingPeakDetector(0, 100.0, retrace=1.0, min_favourable=0.0)
    with pytest.raises(ValueError):
        TrailingPeakDetector(1, 100.0, retrace=0.0, min_favourable=0.0)


def test_swing_high_and_low_confirmed_window_bars_late():
    det = SwingDetector(2)
    highs = [1, 2, 5, 3, 2, 1, 1]
    lows = [0.5, 1.5, 4, 2, 1, 0.2, 0.6]
    out = [det.update(h, lo) for h, lo in zip(highs, lows)]
    assert out[:4] == [[], [], [], []]
    assert [(p.kind, p.index, p.price, p.confirmed_at) for p in out[4]] == [("high", 2, 5, 4)]
    assert out[5] == [] and out[6] == []  # the 0.2 low at index 5 needs two more bars to confirm


bars = st.lists(st.tuples(st.floats(50, 150), st.floats(0, 5), st.floats(0, 5), st.floats(0, 1)),
                min_size=1, max_size=80)


def _ohlc(raw):
    out = []
    for mid, up, down, frac in raw:
        hi, lo = mid + up, max(mid - down, 1.0)
        out.append((hi, lo, lo + frac * (hi - lo)))
    return out


@settings(max_examples=200)
@given(bars, bars, st.sampled_from([1, -1]), st.floats(0.5, 10), st.floats(0, 10))
def test_trailing_detector_has_no_look_ahead(prefix_raw, future_raw, direction, retrace, min_fav):
    prefix, future = _ohlc(prefix_raw), _ohlc(future_raw)
    a = TrailingPeakDetector(direction, 100.0, retrace=retrace, min_favourable=min_fav)
    b = TrailingPeakDetector(direction, 100.0, retrace=retrace, min_favourable=min_fav)
    only_prefix = [a.update(*x) for x in prefix]
    whole = [b.update(*x) for x in prefix + future]
    assert whole[:len(prefix)] == only_prefix
    assert sum(whole) <= 1  # fires at most once


@settings(max_examples=200)
@given(bars, bars, st.integers(1, 4))
def test_swing_detector_has_no_look_ahead(prefix_raw, future_raw, w):
    prefix, future = _ohlc(prefix_raw), _ohlc(future_raw)
    a, b = SwingDetector(w), SwingDetector(w)
    only_prefix = [a.update(h, lo) for h, lo, _ in prefix]
    whole = [b.update(h, lo) for h, lo, _ in prefix + future]
    assert whole[:len(prefix)] == only_prefix
    for i, pts in enumerate(whole):
        for p in pts:
            assert p.confirmed_at == i and p.index == i - w  # confirmed exactly w bars after the swing bar
