"""strategies.shadow: the shadow P&L by hand, the mSPRT against numerical integration, and on real BTC/ETH 1m
returns the rule's false-promotion rate with two equally good sides, its power with a better challenger, and
that a deliberately worse challenger is never promoted."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import integrate, stats

from strategies.shadow import ShadowConfig, ShadowTrial, msprt_log_lr
from tests.paths import KLINES


def test_pnl_and_costs_by_hand():
    t = ShadowTrial(ShadowConfig(cost_per_side=0.001, min_bars=1))
    t.on_bars(1, {"A": 100.0}, {"champion": {"A": 1}, "challenger": {"A": 0}})
    t.on_bars(2, {"A": 110.0}, {"champion": {"A": 1}, "challenger": {"A": 1}})
    t.on_bars(3, {"A": 99.0}, {"champion": {"A": 0}, "challenger": {"A": 1}})
    r1, r2 = math.log(110 / 100), math.log(99 / 110)
    ch, cl = t.sides["champion"], t.sides["challenger"]
    assert ch.pnl == pytest.approx(-0.001 + r1 + r2 - 0.001)  # in at 1, rides both bars, out at 3
    assert cl.pnl == pytest.approx(-0.001 + r2)                # in at 2, rides the fall
    assert (ch.trades, cl.trades, t.n) == (2, 1, 2)            # the first bar has no return: not a paired bar
    assert t.mean == pytest.approx(((-0.001) - (r1 - 0.0)) / 2 + ((r2) - (r2 - 0.001)) / 2)


def test_bad_prices_are_counted_and_a_missing_direction_keeps_the_position():
    t = ShadowTrial(ShadowConfig(cost_per_side=0.0))
    t.on_bars(1, {"A": 100.0, "B": float("nan")}, {"champion": {"A": 1}, "challenger": {"A": 1}})
    t.on_bars(2, {"A": 101.0, "B": -5.0}, {"champion": {}, "challenger": {"A": 7}})  # 7: not a direction
    assert t.bad_input == 2
    assert t.sides["champion"].pos["A"] == 1 and t.sides["challenger"].pos["A"] == 1


@pytest.mark.parametrize("n,mean,var,tau", [(10, 0.002, 1e-5, 1e-3), (400, -0.0005, 4e-6, 5e-4), (1, 0.0, 1e-4, 1e-2)])
def test_msprt_closed_form_equals_the_integrated_mixture(n, mean, var, tau):
    se = math.sqrt(var / n)
    f = lambda th: stats.norm.pdf(mean, th, se) * stats.norm.pdf(th, 0, tau)  # noqa: E731
    num, _ = integrate.quad(f, -20 * tau, 20 * tau, points=[0.0, mean], limit=200)
    assert msprt_log_lr(n, mean, var, tau) == pytest.approx(math.log(num / stats.norm.pdf(mean, 0, se)), rel=1e-6,
                                                             abs=1e-9)


@pytest.fixture(scope="module")
def real_returns() -> np.ndarray:
    """(T, 2) 1m log returns of real BTC and ETH (90 days)."""
    from engines.data import load_klines_csv
    out = []
    for name, sym in (("BTC_USDT-1m_2025-05-20_2025-08-18.csv.gz", "BTCUSDT"),
                      ("ETH_USDT-1m_2025-05-20_2025-08-18.csv.gz", "ETHUSDT")):
        p = KLINES / name
        if not p.exists():
            pytest.skip(f"real klines not found at {p}")
        out.append(load_klines_csv(p, symbol=sym).close)
    n = min(len(c) for c in out)
    return np.stack([c[:n] for c in out], axis=1)


def _run(closes: np.ndarray, dirs: dict[str, np.ndarray], cfg: ShadowConfig) -> ShadowTrial:
    t = ShadowTrial(cfg)
    syms = ("BTC", "ETH")
    for i in range(len(closes)):
        v = t.on_bars(i, dict(zip(syms, closes[i])),
                      {s: dict(zip(syms, (int(x) for x in d[i]))) for s, d in dirs.items()})
        if v != "pending":
            break
    return t


CFG = ShadowConfig(min_bars=60, max_bars=1000, alpha=0.05, tau=5e-4, cost_per_side=0.0)


def _signal(ret_next: np.ndarray, rng, accuracy: float) -> np.ndarray:
    """Long/flat calls that are right with probability ``accuracy`` about the next bar's sign."""
    right = rng.random(ret_next.shape) < accuracy
    up = np.where(right, ret_next > 0, ret_next <= 0)
    return up.astype(int)


def test_equal_sides_are_rarely_promoted_on_real_returns(real_returns):
    """H0 true: both sides are coin flips of the same kind on real returns. Over 120 disjoint stretches the
    promotion rate stays within alpha plus three binomial standard errors (the always-valid guarantee)."""
    rng = np.random.default_rng(11)
    closes = real_returns
    seg = CFG.max_bars + 1
    promoted = trials = 0
    for k in range(120):
        lo = (k * seg) % (len(closes) - seg)
        c = closes[lo:lo + seg]
        rn = np.diff(np.log(c), axis=0, append=np.log(c[-1:]))
        dirs = {"champion": _signal(rn, rng, 0.5), "challenger": _signal(rn, rng, 0.5)}
        t = _run(c, dirs, CFG)
        promoted += t.verdict == "promote"
        trials += 1
    bound = CFG.alpha + 3 * math.sqrt(CFG.alpha * (1 - CFG.alpha) / trials)
    assert promoted / trials <= bound, (promoted, trials)


def test_a_better_challenger_is_promoted_and_a_worse_one_never(real_returns):
    rng = np.random.default_rng(5)
    closes = real_returns
    seg = CFG.max_bars + 1
    better = worse_promoted = worse_rejected = 0
    n = 20
    for k in range(n):
        lo = 3000 + k * seg
        c = closes[lo:lo + seg]
        rn = np.diff(np.log(c), axis=0, append=np.log(c[-1:]))
        champion = _signal(rn, rng, 0.5)
        t = _run(c, {"champion": champion, "challenger": _signal(rn, rng, 0.6)}, CFG)
        better += t.verdict == "promote"
        w = _run(c, {"champion": _signal(rn, rng, 0.6), "challenger": champion}, CFG)
        worse_promoted += w.verdict == "promote"
        worse_rejected += w.verdict == "reject"
    assert worse_promoted == 0
    assert worse_rejected == n
    assert better >= 0.8 * n, better


def test_pin_ends_the_trial_with_the_operators_side():
    t = ShadowTrial(CFG)
    assert t.pin("challenger", 5) == "promote" and "operator" in t.reason and t.decided_ts == 5
    assert t.pin("champion", 6) == "promote"  # already decided: a later pin changes nothing
    with pytest.raises(ValueError):
        ShadowTrial(CFG).pin("both", 1)
