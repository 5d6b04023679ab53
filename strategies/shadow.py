"""Live A/B in shadow: the champion trades, a challenger that passed the offline gate only decides, on the same
bars, and both sides' decisions are simulated through the same costs until the evidence says which is better.

Pure core (no I/O, no clock: time is the bar's close ``ts``). Per symbol and side, the simulated position is the
side's signal direction at each bar close (``+1`` long, ``-1`` short where allowed, ``0`` flat), held until the next
close of that symbol: the bar's P&L is ``position * log(close / previous close)`` minus ``cost_per_side`` for each
unit the position changed. At every batch of bar closes (one call of :meth:`ShadowTrial.on_bars`) the two sides'
P&L summed over the symbols gives one paired difference ``d = challenger - champion``.

The rule (stated, and tested): a mixture sequential probability ratio test (mSPRT, Johari et al. 2017: "Always
valid inference"; normal mixture with variance ``tau**2`` over the mean of ``d``, the variance of ``d`` estimated
from the trial so far) on ``H0: mean(d) = 0``. It may be read after every bar without inflating the false-positive
rate ``alpha``:

* nothing is decided before ``min_bars`` paired bars (the variance of ``d`` must be estimated first);
* ``promote`` when the test rejects H0 with ``mean(d) > 0``;
* ``reject`` when it rejects with ``mean(d) < 0``, or when ``max_bars`` pass without a decision (no evidence of an
  improvement: the champion stays);
* ``pending`` otherwise. A pin (``pin("champion")`` / ``pin("challenger")``, from ``POST /control/shadow``) ends
  the trial with that side, whatever the evidence.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

__all__ = ["ShadowConfig", "ShadowTrial", "msprt_log_lr", "SIDES"]

SIDES = ("champion", "challenger")


@dataclass(frozen=True)
class ShadowConfig:
    min_bars: int = 60             # paired bars before anything is decided
    max_bars: int = 2_000          # no decision by then: reject (the champion stays)
    alpha: float = 0.05            # the always-valid false-positive rate of the mSPRT
    tau: float = 1e-3              # the mixture's standard deviation over the mean difference (per bar, fraction)
    cost_per_side: float = 0.0011  # taker fee + half the spread, per unit of position change

    def validate(self) -> None:
        if not (1 <= self.min_bars <= self.max_bars):
            raise ValueError("shadow: need 1 <= min_bars <= max_bars")
        if not (0 < self.alpha < 1 and self.tau > 0 and 0 <= self.cost_per_side < 0.1):
            raise ValueError("shadow: need 0 < alpha < 1, tau > 0, 0 <= cost_per_side < 0.1")


def msprt_log_lr(n: int, mean: float, var: float, tau: float) -> float:
    """log of the normal-mixture likelihood ratio after ``n`` observations with sample ``mean`` and variance
    ``var`` (H0: the true mean is 0): ``0.5 * log(v / (v + n t2)) + n^2 t2 mean^2 / (2 v (v + n t2))``."""
    if n <= 0 or not (var > 0):
        return 0.0
    t2 = tau * tau
    return 0.5 * math.log(var / (var + n * t2)) + (n * n * t2 * mean * mean) / (2 * var * (var + n * t2))


@dataclass
class _Side:
    pos: dict[str, float] = field(default_factory=dict)
    pnl: float = 0.0       # cumulative, fraction of one unit per symbol
    fees: float = 0.0
    trades: int = 0


@dataclass
class ShadowTrial:
    """One champion-vs-challenger trial; feed :meth:`on_bars` at each boundary, read :attr:`verdict`."""

    cfg: ShadowConfig
    challenger_version: str = ""
    started_ts: int = 0
    sides: dict[str, _Side] = field(default_factory=lambda: {s: _Side() for s in SIDES})
    last_close: dict[str, float] = field(default_factory=dict)
    n: int = 0
    _sum: float = 0.0
    _sumsq: float = 0.0
    verdict: str = "pending"       # pending | promote | reject
    reason: str = ""
    decided_ts: int | None = None
    bad_input: int = 0

    def on_bars(self, ts: int, closes: Mapping[str, float], directions: Mapping[str, Mapping[str, int]]) -> str:
        """One boundary: ``closes`` by symbol, ``directions[side][symbol]`` in {-1, 0, 1} (a symbol a side did not
        decide keeps that side's previous position). Returns the verdict after it."""
        if self.verdict != "pending":
            return self.verdict
        step = {s: 0.0 for s in SIDES}
        any_symbol = False
        for sym, px in closes.items():
            if not (isinstance(px, (int, float)) and math.isfinite(px) and px > 0):
                self.bad_input += 1
                continue
            prev = self.last_close.get(sym)
            r = math.log(px / prev) if prev is not None else 0.0
            self.last_close[sym] = float(px)
            any_symbol = any_symbol or prev is not None
            for s in SIDES:
                side = self.sides[s]
                old = side.pos.get(sym, 0.0)
                new = directions.get(s, {}).get(sym)
                new = old if new is None or new not in (-1, 0, 1) else float(new)
                gain = old * r
                fee = abs(new - old) * self.cfg.cost_per_side
                side.pnl += gain - fee
                side.fees += fee
                side.trades += int(new != old)
                side.pos[sym] = new
                step[s] += gain - fee
        if not any_symbol:
            return self.verdict
        d = step["challenger"] - step["champion"]
        self.n += 1
        self._sum += d
        self._sumsq += d * d
        self._decide(ts)
        return self.verdict

    @property
    def mean(self) -> float:
        return self._sum / self.n if self.n else 0.0

    @property
    def var(self) -> float:
        if self.n < 2:
            return 0.0
        return max((self._sumsq - self.n * self.mean ** 2) / (self.n - 1), 0.0)

    @property
    def log_lr(self) -> float:
        return msprt_log_lr(self.n, self.mean, self.var, self.cfg.tau)

    def _decide(self, ts: int) -> None:
        threshold = math.log(1 / self.cfg.alpha)
        if self.n >= self.cfg.min_bars and self.var > 0 and self.log_lr >= threshold:
            if self.mean > 0:
                self._end("promote", f"mSPRT rejects equal P&L after {self.n} bars: challenger ahead", ts)
                return
            if self.mean < 0:
                self._end("reject", f"mSPRT rejects equal P&L after {self.n} bars: challenger behind", ts)
                return
        if self.n >= self.cfg.max_bars:
            self._end("reject", f"no evidence of an improvement after {self.n} bars", ts)

    def _end(self, verdict: str, reason: str, ts: int) -> None:
        self.verdict, self.reason, self.decided_ts = verdict, reason, ts

    def pin(self, side: str, ts: int) -> str:
        """End the trial with ``side`` (a human's decision); returns the verdict."""
        if side not in SIDES:
            raise ValueError(f"pin: side must be one of {SIDES}, got {side!r}")
        if self.verdict == "pending":
            self._end("promote" if side == "challenger" else "reject", f"pinned to the {side} by the operator", ts)
        return self.verdict

    def summary(self) -> dict:
        return {"challenger_version": self.challenger_version, "verdict": self.verdict, "reason": self.reason,
                "bars": self.n, "mean_diff": self.mean, "log_lr": self.log_lr,
                "threshold": math.log(1 / self.cfg.alpha), "min_bars": self.cfg.min_bars,
                "max_bars": self.cfg.max_bars, "started_ts": self.started_ts, "decided_ts": self.decided_ts,
                **{f"{s}_pnl": self.sides[s].pnl for s in SIDES}, **{f"{s}_fees": self.sides[s].fees for s in SIDES},
                **{f"{s}_trades": self.sides[s].trades for s in SIDES}, "bad_input": self.bad_input}
