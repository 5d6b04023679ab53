"""From a cross-sectional score to an expected return the optimizer can weigh against costs.

A pooled model's output (an ensemble of cross-sectionally z-scored model scores) is a ranking, not a move. The
calibration is fitted on rows the model did not train on (a holdout or the training window's own out-of-fold
tail): the OLS slope of the symbol's forward log return over the label horizon on its score's cross-sectional
z-score. ``expected_return(z) = slope * z`` is the symbol's move relative to the universe over the horizon; the
intercept (the universe's mean drift over the fitting rows) is recorded but not used: a past drift is not a
forecast, and a long-only book must not buy the market because it rose during the holdout."""
from __future__ import annotations

import numpy as np

from engines.pooled import Calibration  # one definition: the daemon applies what research fits
from engines.xsection import cs_zscore

__all__ = ["Calibration", "fit_calibration"]


def fit_calibration(score: np.ndarray, fwd: np.ndarray, horizon: int) -> Calibration:
    """``score`` and ``fwd`` are (T, N) over the same bars; rows where either is NaN are left out. A slope below
    zero (the score ranks backwards on these rows) is kept: the optimizer then trades its sign honestly, and the
    report shows it."""
    z = cs_zscore(np.asarray(score, dtype=np.float64))
    f = np.asarray(fwd, dtype=np.float64)
    ok = np.isfinite(z) & np.isfinite(f)
    n = int(ok.sum())
    if n < 30:
        raise ValueError(f"calibration needs at least 30 rows with a score and a forward return, got {n}")
    x, y = z[ok], f[ok]
    xm, ym = x.mean(), y.mean()
    vx = float(((x - xm) ** 2).sum())
    slope = float(((x - xm) * (y - ym)).sum() / vx) if vx > 0 else 0.0
    return Calibration(slope, float(ym), int(horizon), n)
