"""Signal metrics over a panel of predictions (T, N) against forward returns (T, N), and the deflated Sharpe.

Per bar t, over the symbols with both a prediction and a forward return (at least ``min_names``):
IC = Pearson correlation, Rank IC = Spearman (Pearson of average ranks); ICIR = mean(IC) / std(IC) over bars
(not annualised, as Qlib reports it); hit rate = share of names where the sign of the cross-sectionally
demeaned prediction equals that of the demeaned return; top-minus-bottom = mean forward return of the top
``q``-quantile minus the bottom one (in log return over the label horizon h; ``tmb_per_bar`` divides by h);
turnover = share of the top quantile replaced from one bar to the next.
"""
from __future__ import annotations

import math

import numpy as np
from scipy.stats import norm, rankdata

__all__ = ["ic_series", "signal_metrics", "quantile_returns", "deflated_sharpe", "expected_max_sharpe",
           "sharpe_per_bar"]

EULER_GAMMA = 0.5772156649015329


def _rowcorr(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    am = a - np.nanmean(a, axis=1, keepdims=True)
    bm = b - np.nanmean(b, axis=1, keepdims=True)
    num = np.nansum(am * bm, axis=1)
    den = np.sqrt(np.nansum(am * am, axis=1) * np.nansum(bm * bm, axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / den, np.nan)


def ic_series(pred: np.ndarray, fwd: np.ndarray, min_names: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """(IC, Rank IC) per bar, NaN where fewer than ``min_names`` names have both values."""
    ok = np.isfinite(pred) & np.isfinite(fwd)
    p = np.where(ok, pred, np.nan)
    f = np.where(ok, fwd, np.nan)
    n = ok.sum(axis=1)
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        ic = _rowcorr(p, f)
        rp = rankdata(p, axis=1, nan_policy="omit")
        rf = rankdata(f, axis=1, nan_policy="omit")
        ric = _rowcorr(np.where(ok, rp, np.nan), np.where(ok, rf, np.nan))
    ic[n < min_names] = np.nan
    ric[n < min_names] = np.nan
    return ic, ric


def _ir(x: np.ndarray) -> float:
    x = x[np.isfinite(x)]
    if len(x) < 2 or x.std(ddof=1) == 0:
        return float("nan")
    return float(x.mean() / x.std(ddof=1))


def quantile_returns(pred: np.ndarray, ret: np.ndarray, q: int = 5, min_names: int = 5) -> np.ndarray:
    """(T, q) mean ``ret`` of each prediction quantile per bar (quantile 0 = lowest predictions)."""
    ok = np.isfinite(pred) & np.isfinite(ret)
    r = rankdata(np.where(ok, pred, np.nan), axis=1, nan_policy="omit")
    n = ok.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        bucket = np.floor((r - 0.5) * q / n)
    out = np.full((pred.shape[0], q), np.nan)
    for k in range(q):
        m = ok & (bucket == k)
        cnt = m.sum(axis=1)
        s = np.where(m, ret, 0.0).sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            out[:, k] = np.where(cnt > 0, s / np.maximum(cnt, 1), np.nan)
    out[n[:, 0] < min_names] = np.nan
    return out


def _top_turnover(pred: np.ndarray, q: int) -> float:
    ok = np.isfinite(pred)
    r = rankdata(np.where(ok, pred, np.nan), axis=1, nan_policy="omit")
    n = ok.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        top = ok & (np.floor((r - 0.5) * q / n) == q - 1)
    a, b = top[:-1], top[1:]
    size = a.sum(axis=1)
    keep = (a & b).sum(axis=1)
    m = size > 0
    return float(np.mean(1 - keep[m] / size[m])) if m.any() else float("nan")


def signal_metrics(pred: np.ndarray, fwd: np.ndarray, h: int, q: int = 5, min_names: int = 5) -> dict:
    ic, ric = ic_series(pred, fwd, min_names)
    ok = np.isfinite(pred) & np.isfinite(fwd)
    pd_ = np.where(ok, pred, np.nan)
    fd = np.where(ok, fwd, np.nan)
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        pd_ = pd_ - np.nanmean(pd_, axis=1, keepdims=True)
        fd = fd - np.nanmean(fd, axis=1, keepdims=True)
        hit = np.nanmean(np.where(ok, np.sign(pd_) == np.sign(fd), np.nan), axis=1)
    hit[ok.sum(axis=1) < min_names] = np.nan
    qr = quantile_returns(pred, fwd, q, min_names)
    tmb = qr[:, -1] - qr[:, 0]
    fin = lambda x: float(np.nanmean(x)) if np.isfinite(x).any() else float("nan")  # noqa: E731
    return {"ic": fin(ic), "rank_ic": fin(ric), "icir": _ir(ic), "rank_icir": _ir(ric), "hit_rate": fin(hit),
            "top_minus_bottom": fin(tmb), "tmb_per_bar": fin(tmb) / h, "turnover": _top_turnover(pred, q),
            "bars": int(np.isfinite(ric).sum())}


def sharpe_per_bar(r: np.ndarray) -> float:
    r = r[np.isfinite(r)]
    if len(r) < 2 or r.std(ddof=1) == 0:
        return 0.0
    return float(r.mean() / r.std(ddof=1))


def expected_max_sharpe(n_trials: int, var_sr: float) -> float:
    """E[max SR] of ``n_trials`` independent zero-skill trials whose Sharpe estimates have variance ``var_sr``
    (Bailey & López de Prado 2014, eq. for SR0)."""
    if n_trials < 2 or not var_sr > 0:
        return 0.0
    n = float(n_trials)
    return math.sqrt(var_sr) * ((1 - EULER_GAMMA) * norm.ppf(1 - 1 / n) + EULER_GAMMA * norm.ppf(1 - 1 / (n * math.e)))


def deflated_sharpe(sr: float, n_obs: int, n_trials: int, var_sr: float, skew: float = 0.0,
                    kurt: float = 3.0) -> float:
    """P(true SR > 0) after selecting the best of ``n_trials`` (Bailey & López de Prado 2014): the probabilistic
    Sharpe ratio of ``sr`` (per-period, from ``n_obs`` returns with ``skew`` and non-excess ``kurt``) against the
    benchmark SR0 = :func:`expected_max_sharpe`."""
    sr0 = expected_max_sharpe(n_trials, var_sr)
    den = 1 - skew * sr + (kurt - 1) / 4 * sr * sr
    if n_obs < 2 or not den > 0:
        return float("nan")
    return float(norm.cdf((sr - sr0) * math.sqrt(n_obs - 1) / math.sqrt(den)))
