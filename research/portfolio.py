"""Cross-sectional long-only portfolio driven by scores, with costs — a vectorised simulation (first step; the
live TradingPipeline does not yet trade a universe, see README).

Every ``rebalance`` bars, at bar t's close, the portfolio targets equal weights 1/top_k in the ``top_k``
highest-scoring names present at t (spot: long only, the rest in cash); a held name is kept while it still ranks
within ``top_k * hold_buffer`` (fewer trades). Between rebalances the weights drift with the closes. Every change
of weight pays ``fee + slippage`` per side on the notional traded (taker fee 0.1 % per side by default, plus half
the spread and a slippage allowance). A held name with no next bar (delisted, data ends) is sold at its last close.
Buy-and-hold: equal weights in every name present at the first bar, bought once (paying the same costs), held,
and sold at the end. Equity starts at ``cash``; returns per bar are simple returns of equity.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["Costs", "simulate", "buy_and_hold", "StrategyResult"]


@dataclass(frozen=True)
class Costs:
    fee: float = 0.001          # taker fee per side
    spread_bps: float = 2.0     # full spread; half is paid per side
    slippage_bps: float = 1.0   # per side

    @property
    def per_side(self) -> float:
        return self.fee + (self.spread_bps / 2 + self.slippage_bps) * 1e-4


@dataclass(frozen=True, eq=False)
class StrategyResult:
    equity: np.ndarray       # (T+1,) equity after each bar, starting at cash
    returns: np.ndarray      # (T,)
    trades: int
    fees: float
    turnover: float          # mean one-sided turnover per rebalance
    exposure: float          # mean invested fraction

    def summary(self, bars_per_year: float) -> dict:
        r = self.returns
        sd = r.std(ddof=1) if len(r) > 1 else 0.0
        peak = np.maximum.accumulate(self.equity)
        dd = float(((self.equity - peak) / peak).min()) if len(self.equity) else 0.0
        return {"return_pct": float((self.equity[-1] / self.equity[0] - 1) * 100),
                "sharpe": float(r.mean() / sd * math.sqrt(bars_per_year)) if sd > 0 else 0.0,
                "max_drawdown_pct": dd * 100, "trades": int(self.trades), "fees": float(self.fees),
                "turnover": float(self.turnover), "exposure": float(self.exposure)}


def _simple_returns(close: np.ndarray) -> np.ndarray:
    r = np.full(close.shape, np.nan)
    r[1:] = close[1:] / close[:-1] - 1
    return r


def simulate(scores: np.ndarray, close: np.ndarray, *, top_k: int, rebalance: int, hold_buffer: float = 1.0,
             costs: Costs = Costs(), cash: float = 10_000.0, need_spread: bool = True) -> StrategyResult:
    """Scores (T, N) known at each bar's close (NaN = not tradeable); close (T, N) NaN = absent.

    ``need_spread``: a bar whose scores are all equal carries no ranking information, so the rebalance goes to
    cash rather than picking names by their column order."""
    T, N = close.shape
    if scores.shape != close.shape:
        raise ValueError("scores and close must have the same shape")
    if top_k < 1 or rebalance < 1:
        raise ValueError("top_k and rebalance must be >= 1")
    r = _simple_returns(close)
    c = costs.per_side
    w = np.zeros(N)
    eq = cash
    equity = np.empty(T + 1)
    equity[0] = cash
    rets = np.zeros(T)
    trades = 0
    fees = 0.0
    turns = []
    expo = 0.0
    keep_rank = max(top_k, int(math.floor(top_k * hold_buffer)))
    for t in range(T):
        e0 = eq
        if t > 0:  # mark the held names over bar t (from t-1's close to t's)
            rt = r[t]
            gone = (w > 0) & ~np.isfinite(rt)
            rr = np.where(np.isfinite(rt), rt, 0.0)
            g = float(w @ rr)
            eq *= 1 + g
            w = w * (1 + rr) / (1 + g)
            if gone.any():  # no bar at t: sold at its last close
                sold = float(w[gone].sum())
                cost = sold * c
                eq *= 1 - cost
                fees += sold * costs.fee * eq
                trades += int(gone.sum())
                w[gone] = 0.0
        if t % rebalance == 0 and t < T - 1:
            s = scores[t]
            ok = np.isfinite(s) & np.isfinite(close[t])
            target = np.zeros(N)
            if ok.any() and (not need_spread or np.ptp(s[ok]) > 0):
                order = np.argsort(-np.where(ok, s, -np.inf), kind="stable")
                rank = np.empty(N, dtype=np.int64)
                rank[order] = np.arange(N)
                held = (w > 0) & ok & (rank < keep_rank)
                chosen = list(np.flatnonzero(held)[np.argsort(rank[held])][:top_k])
                for i in order[:ok.sum()]:
                    if len(chosen) >= top_k:
                        break
                    if i not in chosen:
                        chosen.append(int(i))
                target[chosen] = 1.0 / top_k
            dw = target - w
            traded = np.abs(dw) > 1e-12
            turn = float(np.abs(dw).sum())
            if turn > 0:
                eq *= 1 - turn * c
                fees += turn * costs.fee * eq
                trades += int(traded.sum())
            turns.append(turn / 2)
            w = target
        expo += w.sum()
        equity[t + 1] = eq
        rets[t] = eq / e0 - 1
    # sell everything at the end
    if w.sum() > 0:
        sold = float(w.sum())
        eq *= 1 - sold * c
        fees += sold * costs.fee * eq
        trades += int((w > 0).sum())
        equity[-1] = eq
        rets[-1] = equity[-1] / equity[-2] - 1
    return StrategyResult(equity, rets, trades, fees, float(np.mean(turns)) if turns else 0.0, expo / max(T, 1))


def buy_and_hold(close: np.ndarray, *, costs: Costs = Costs(), cash: float = 10_000.0) -> StrategyResult:
    """Equal-weight buy-and-hold of the names present at the first bar (same costs)."""
    T, N = close.shape
    first = np.isfinite(close[0])
    scores = np.full(close.shape, np.nan)
    scores[0, first] = 1.0
    k = max(int(first.sum()), 1)
    # rebalance only at t = 0 (rebalance period longer than the run); hold_buffer keeps everything
    return simulate(scores, close, top_k=k, rebalance=T + 1, costs=costs, cash=cash, need_spread=False)
