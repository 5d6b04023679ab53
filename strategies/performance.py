"""Trade performance accounting for the optimizer: pure, fed closed trades and model outcomes, no clock.

Definitions (one place):

* A trade's ``pnl`` is net: ``direction * (exit - entry) * qty - fees`` (quote currency).
* win rate = trades with pnl > 0 / trades (breakeven is not a win); ``None`` with no trades.
* profit factor = sum of winning pnl / |sum of losing pnl|; ``None`` when there is no losing trade.
* Sharpe = mean / sample std (ddof=1) of PER-TRADE returns ``pnl / equity before the trade``, not annualised;
  ``None`` with fewer than 2 trades or zero dispersion.
* max drawdown = the largest fall from a running peak of the REALISED equity curve
  ``starting_equity + cumulative pnl`` (in trade close order), in quote and as a fraction of that peak.
* daily profit = realised pnl of trades whose exit falls in the UTC day of the ``ts`` passed in.
* model hit rate per timeframe = share of correct direction calls among the last ``hit_rate_window``
  predictions on that timeframe (fed by the optimizer when the next bar closes).
"""
from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

__all__ = ["ClosedTrade", "TimeframeStats", "PerformanceMetrics", "PerformanceTracker", "NS_PER_DAY"]

NS_PER_DAY = 86_400 * 1_000_000_000


@dataclass(frozen=True)
class ClosedTrade:
    symbol: str
    timeframe: str
    direction: int  # +1 long, -1 short
    qty: float
    entry_price: float
    exit_price: float
    entry_ns: int
    exit_ns: int
    fees: float = 0.0
    reason: str = ""

    @property
    def gross(self) -> float:
        return self.direction * (self.exit_price - self.entry_price) * self.qty

    @property
    def pnl(self) -> float:
        return self.gross - self.fees


@dataclass(frozen=True)
class TimeframeStats:
    trades: int = 0
    wins: int = 0
    pnl: float = 0.0
    gross_profit: float = 0.0
    gross_loss: float = 0.0  # >= 0
    predictions: int = 0
    hits: int = 0

    @property
    def win_rate(self) -> float | None:
        return self.wins / self.trades if self.trades else None

    @property
    def profit_factor(self) -> float | None:
        return self.gross_profit / self.gross_loss if self.gross_loss > 0 else None

    @property
    def pnl_per_trade(self) -> float | None:
        return self.pnl / self.trades if self.trades else None

    @property
    def hit_rate(self) -> float | None:
        return self.hits / self.predictions if self.predictions else None


@dataclass(frozen=True)
class PerformanceMetrics:
    realised_pnl: float
    unrealised_pnl: float
    daily_profit: float
    trades: int
    wins: int
    win_rate: float | None
    profit_factor: float | None
    sharpe_per_trade: float | None
    max_drawdown: float
    max_drawdown_pct: float
    equity: float  # starting equity + realised + unrealised
    per_timeframe: dict[str, TimeframeStats] = field(default_factory=dict)


@dataclass
class _TfAcc:
    trades: int = 0
    wins: int = 0
    pnl: float = 0.0
    gross_profit: float = 0.0
    gross_loss: float = 0.0


class PerformanceTracker:
    """Accumulates closed trades (in close order) and unrealised marks; :meth:`get_performance_metrics`."""

    def __init__(self, starting_equity: float, *, hit_rate_window: int = 100, keep_trades: int = 1000) -> None:
        if not (math.isfinite(starting_equity) and starting_equity > 0):
            raise ValueError("starting_equity must be finite and > 0")
        self.starting_equity = starting_equity
        self.hit_rate_window = hit_rate_window
        # constant memory over months: the last trades for inspection, every statistic as a running sum
        self.trades: deque[ClosedTrade] = deque(maxlen=keep_trades)
        self.n_trades = 0
        self._realised = 0.0
        self._gross_profit = 0.0
        self._gross_loss = 0.0
        self._wins = 0
        self._peak = starting_equity
        self._max_dd = 0.0
        self._max_dd_pct = 0.0
        self._ret_mean = 0.0  # per-trade returns, Welford's running mean and sum of squared deviations
        self._ret_m2 = 0.0
        self._tf: dict[str, _TfAcc] = {}
        self._hits: dict[str, deque[bool]] = {}
        self._hit_count: dict[str, int] = {}  # running sum(self._hits[tf]): read at every bar close
        self._unrealised: dict[str, float] = {}
        self._day = -1  # UTC day number of the last closed trade, and that day's realised pnl
        self._day_pnl = 0.0
        self.dropped = 0  # non-finite trades refused

    # ------------------------------------------------------------------------------------- updates
    def update_performance(self, trade: ClosedTrade) -> bool:
        """Record one closed trade; returns False (and counts it) when its numbers are not finite."""
        pnl = trade.pnl
        if not (math.isfinite(pnl) and math.isfinite(trade.qty) and trade.qty > 0):
            self.dropped += 1
            return False
        equity_before = self.starting_equity + self._realised
        self.trades.append(trade)
        self.n_trades += 1
        self._realised += pnl
        if pnl > 0:
            self._wins += 1
            self._gross_profit += pnl
        elif pnl < 0:
            self._gross_loss += -pnl
        r = pnl / equity_before if equity_before > 0 else 0.0
        delta = r - self._ret_mean
        self._ret_mean += delta / self.n_trades
        self._ret_m2 += delta * (r - self._ret_mean)
        eq = self.starting_equity + self._realised
        self._peak = max(self._peak, eq)
        dd = self._peak - eq
        if dd > self._max_dd:
            self._max_dd = dd
        if self._peak > 0:
            self._max_dd_pct = max(self._max_dd_pct, dd / self._peak)
        acc = self._tf.setdefault(trade.timeframe, _TfAcc())
        acc.trades += 1
        acc.pnl += pnl
        if pnl > 0:
            acc.wins += 1
            acc.gross_profit += pnl
        elif pnl < 0:
            acc.gross_loss += -pnl
        day = trade.exit_ns // NS_PER_DAY
        if day != self._day:
            self._day, self._day_pnl = day, 0.0
        self._day_pnl += pnl
        return True

    def set_unrealised(self, symbol: str, pnl: float) -> None:
        if math.isfinite(pnl):
            if pnl == 0.0:
                self._unrealised.pop(symbol, None)
            else:
                self._unrealised[symbol] = pnl

    def record_prediction(self, timeframe: str, correct: bool) -> None:
        dq = self._hits.get(timeframe)
        if dq is None:
            dq = self._hits[timeframe] = deque(maxlen=self.hit_rate_window)
            self._hit_count[timeframe] = 0
        n = self._hit_count[timeframe]
        if len(dq) == dq.maxlen and dq[0]:
            n -= 1  # the oldest call leaves the window
        dq.append(bool(correct))
        self._hit_count[timeframe] = n + bool(correct)

    # ------------------------------------------------------------------------------------- queries
    def timeframe_stats(self, timeframe: str) -> TimeframeStats:
        acc = self._tf.get(timeframe, _TfAcc())
        hits = self._hits.get(timeframe, ())
        return TimeframeStats(acc.trades, acc.wins, acc.pnl, acc.gross_profit, acc.gross_loss,
                              len(hits), self._hit_count.get(timeframe, 0))

    def daily_profit(self, ts: int) -> float:
        return self._day_pnl if ts // NS_PER_DAY == self._day else 0.0

    def get_performance_metrics(self, ts: int) -> PerformanceMetrics:
        n = self.n_trades
        sharpe = None
        if n >= 2:
            var = self._ret_m2 / (n - 1)
            sharpe = self._ret_mean / math.sqrt(var) if var > 0 else None
        unreal = sum(self._unrealised.values())
        tfs = sorted(set(self._tf) | set(self._hits))
        return PerformanceMetrics(
            realised_pnl=self._realised,
            unrealised_pnl=unreal,
            daily_profit=self.daily_profit(ts),
            trades=n,
            wins=self._wins,
            win_rate=self._wins / n if n else None,
            profit_factor=self._gross_profit / self._gross_loss if self._gross_loss > 0 else None,
            sharpe_per_trade=sharpe,
            max_drawdown=self._max_dd,
            max_drawdown_pct=self._max_dd_pct,
            equity=self.starting_equity + self._realised + unreal,
            per_timeframe={tf: self.timeframe_stats(tf) for tf in tfs},
        )
