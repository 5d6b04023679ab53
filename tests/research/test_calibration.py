"""The score -> expected return calibration against scipy's linregress on real universe bars."""
from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import linregress

from research.calibration import Calibration, fit_calibration
from research.walkforward import cs_zscore


def test_slope_equals_scipy_and_round_trips(universe_1h_close):
    close = universe_1h_close
    lc = np.log(close)
    h = 4
    fwd = np.full(close.shape, np.nan)
    fwd[:-h] = lc[h:] - lc[:-h]
    rev = np.full(close.shape, np.nan)
    rev[1:] = -(lc[1:] - lc[:-1])  # the reversal factor as the score
    c = fit_calibration(rev, fwd, h)
    z = cs_zscore(rev)
    ok = np.isfinite(z) & np.isfinite(fwd)
    ref = linregress(z[ok], fwd[ok])
    assert c.slope == pytest.approx(ref.slope, rel=1e-9) and c.rows == ok.sum()
    assert c.intercept == pytest.approx(fwd[ok].mean())
    assert Calibration.from_dict(c.to_dict()) == c
    assert c.expected_return(2.0) == pytest.approx(2 * c.slope)


def test_too_few_rows_is_an_error():
    with pytest.raises(ValueError, match="at least 30 rows"):
        fit_calibration(np.ones((3, 4)), np.ones((3, 4)), 1)
