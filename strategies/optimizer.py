"""DollarProfitOptimizer: timeframe selection -> combined signal -> size -> ATR stop/TP -> exits -> OrderIntents.

Pure core (no I/O, no clock; time is the ``ts`` passed in, int ns), driven identically by the daemon and the
backtest: call :meth:`DollarProfitOptimizer.on_bar_close` at every bar close and :meth:`~.on_fill` for every
fill; send the returned intents through :class:`strategies.risk.RiskManager` first.

Formulas (one place; the config options named are in :class:`OptimizerConfig`):

* combined P(up): ``p = (w_xgboost * p_xgb + w_lstm * p_lstm) / (w_xgboost + w_lstm)`` over the models that gave a
  finite prediction in [0, 1].
* expected move (fraction of price) ``m = expected_move_atr_mult * ATR / price``; expected edge
  ``e = |p - 0.5| * 2 * m``; cost ``c = 2 * fee_rate + spread / mid`` (taker fee on entry and exit, plus one full
  spread crossed over the round trip). A direction ``sign(p - 0.5)`` is taken only when ``e > edge_cost_multiple
  * c``; its strength is ``|2p - 1|`` in [0, 1].
* expected return: a model that predicts the move itself (the pooled universe models, calibrated out of fold to
  the log return over their horizon) gives ``predictions["expected_return"] = r``; when finite it replaces the
  P(up) path: ``e = |r|``, direction ``sign(r)`` under the same cost rule, strength ``min(1, |r| / m)``, and the
  reported ``p_up = 0.5 + strength * sign(r) / 2``.
* size: seed §7.3, see :func:`strategies.sizing.position_size`; stop/take profit: seed §7.4, see
  :func:`strategies.sizing.risk_levels`.
* timeframe score: weighted mean of five components in [0, 1] (see :meth:`~.select_optimal_timeframe`).
* universe: :meth:`DollarProfitOptimizer.decide_universe` takes every symbol's row of one timeframe at a bar
  boundary, ranks the entry candidates by expected dollar edge after costs ``qty * entry * (e - c)`` (the sized
  quantity, before portfolio caps) and admits them best first while ``risk.max_open_positions`` (open + pending +
  admitted symbols), the gross and net exposure caps (``risk.max_gross_exposure`` / ``max_net_exposure`` x
  equity; a candidate is cut down to the room left, or refused when the cut falls below the venue minimum) and the
  per-symbol cap (sizing: ``max_position_fraction`` / ``risk.max_position_notional``) allow. The per-symbol
  :meth:`~.on_bar_close` is the same decision with one row.
"""
from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import structlog

from market.cfgbase import opt
from market.events import TIMEFRAME_SECONDS, Bar, Fill, OrderIntent, Side, timeframe_ns
from strategies.peaks import TrailingPeakDetector
from strategies.performance import ClosedTrade, PerformanceMetrics, PerformanceTracker
from strategies.risk import AccountState, Exposure, RiskConfig, exposure_room, portfolio_exposure
from strategies.sizing import (FiltersLike, RiskLevels, SizeResult, client_order_id, floor_to_step, is_dust,
                               parse_tf_pairs, position_size, risk_levels)

__all__ = ["OptimizerConfig", "MarketMetrics", "TimeframeScore", "TimeframeChoice", "Signal", "BookTop",
           "ManagedPosition", "ExitDecision", "DollarProfitOptimizer", "MODELS", "SymbolSignal", "RankedCandidate",
           "EXPECTED_RETURN"]

log = structlog.get_logger(__name__)

MODELS = ("xgboost", "lstm")
EXPECTED_RETURN = "expected_return"  # the predictions key of a model that predicts the move (module docstring)


@dataclass(frozen=True)
class OptimizerConfig:
    """DollarProfitOptimizer: signal thresholds, sizing, exits and timeframe selection (strategies/optimizer.py)."""

    client_id_prefix: str = opt("td", "Prefix of client order ids (alphanumeric, at most 8 characters used).")
    w_xgboost: float = opt(0.5, "Weight of the XGBoost P(up) in the combined signal.", ge=0, le=1)
    w_lstm: float = opt(0.5, "Weight of the LSTM P(up) in the combined signal.", ge=0, le=1)
    expected_move_atr_mult: float = opt(2.0, "Expected move per trade in ATRs (edge = |p-0.5|*2*move; 2 ATR is "
                                        "the stop distance the trade is sized for).", gt=0, le=100)
    edge_cost_multiple: float = opt(1.0, "The expected edge must exceed this multiple of round-trip fees + "
                                    "spread to trade.", ge=1, le=100)
    assumed_spread_bps: float = opt(1.0, "Spread assumed when no book snapshot is given, in basis points.",
                                    ge=0, le=1000)
    slippage_bps: float = opt(0.0, "Slippage estimate per fill beyond the touch, in basis points; counted twice "
                              "(entry and exit) in the round-trip cost that the edge must beat and that ranks "
                              "entries across symbols (0: market orders of the traded size fill at the touch).",
                              ge=0, le=1000)
    risk_per_trade: float = opt(0.01, "Fraction of equity lost if the stop is hit (before strength/timeframe "
                                "scaling).", gt=0, le=0.2)
    stop_atr_mult: float = opt(2.0, "Stop distance in ATRs.", gt=0, le=100)
    take_profit_ratio: float = opt(1.5, "Take-profit distance as a multiple of the stop distance.", gt=0, le=100)
    max_position_fraction: float = opt(0.25, "Largest position per symbol as a fraction of equity (the hard "
                                       "notional cap is risk.max_position_notional).", gt=0, le=10)
    timeframe_factors: tuple[str, ...] = opt(("1m=0.5", "5m=0.75", "15m=1.0", "1h=1.0"),
                                             "Size factor per timeframe, 'tf=factor' (unlisted: 1.0).")
    max_bars_held: tuple[str, ...] = opt(("1m=60", "5m=48", "15m=32", "1h=24"),
                                         "Time exit after this many bars of the position's timeframe, "
                                         "'tf=bars' (unlisted or 0: no time exit).")
    allow_short: bool = opt(False, "Open short positions on down signals. Spot accounts cannot be short: only "
                            "broker.kind = \"paper\" may set this (a simulated short); the testnet broker trades "
                            "a spot venue and refuses it at start-up.")
    trade_selected_timeframe_only: bool = opt(True, "Enter only on the timeframe currently selected for the "
                                              "symbol (exits are managed on the position's own timeframe).")
    exit_on_reversal: bool = opt(True, "Exit when the signal on the position's timeframe points the other way.")
    peak_exit: bool = opt(True, "Exit near peaks (longs) / troughs (shorts) by trailing retracement.")
    peak_min_favourable_atr: float = opt(1.0, "Favourable move, in ATRs at entry, that arms the peak exit.",
                                         ge=0, le=100)
    peak_retrace_atr: float = opt(1.0, "Retracement from the best price since entry, in ATRs, that fires the "
                                  "peak exit.", gt=0, le=100)
    metrics_ema_bars: int = opt(20, "Bars in the EMA of each timeframe's volatility/volume/spread metrics.",
                                ge=1, le=10000)
    target_volatility: float = opt(0.005, "Per-bar ATR/price at which the volatility component scores 1.",
                                   gt=0, le=1)
    hit_rate_window: int = opt(100, "Recent predictions per timeframe in the model hit rate.", ge=1, le=100000)
    hit_rate_prior: int = opt(20, "Pseudo-observations at 0.5 (hit rate) / 0 P&L that shrink few-sample "
                              "performance towards neutral.", ge=0, le=100000)
    hit_rate_span: float = opt(0.1, "Hit-rate distance from 0.5 that maps to a component score of 0 or 1.",
                               gt=0, le=0.5)
    pnl_scale: float = opt(50.0, "P&L per trade (quote) at which the P&L component reaches ~0.88 (tanh).",
                           gt=0, le=1e9)
    sel_w_volatility: float = opt(0.15, "Selection weight: volatility component.", ge=0, le=100)
    sel_w_cost: float = opt(0.3, "Selection weight: expected move vs fees + spread.", ge=0, le=100)
    sel_w_volume: float = opt(0.15, "Selection weight: traded volume per hour relative to the best timeframe.",
                              ge=0, le=100)
    sel_w_hit_rate: float = opt(0.2, "Selection weight: recent model hit rate on the timeframe.", ge=0, le=100)
    sel_w_pnl: float = opt(0.2, "Selection weight: realised dollar P&L per trade on the timeframe.", ge=0, le=100)
    exit_retry_initial_s: float = opt(1.0, "A refused exit (risk, broker or venue) is not re-sent before this "
                                      "many seconds of event time; the wait doubles per refusal (alarm: "
                                      "exit_refused counter, /status optimizer.exit_alarms, a warning line).",
                                      gt=0, le=3600)
    exit_retry_max_s: float = opt(300.0, "Longest wait between re-sends of a refused exit.", gt=0, le=86400)

    def validate(self) -> None:
        if self.w_xgboost + self.w_lstm <= 0:
            raise ValueError("w_xgboost + w_lstm must be > 0")
        if (self.sel_w_volatility + self.sel_w_cost + self.sel_w_volume + self.sel_w_hit_rate
                + self.sel_w_pnl) <= 0:
            raise ValueError("the sel_w_* weights must not all be 0")
        parse_tf_pairs(self.timeframe_factors, "timeframe_factors")
        bars = parse_tf_pairs(self.max_bars_held, "max_bars_held")
        for tf, v in bars.items():
            if v != int(v):
                raise ValueError(f"max_bars_held: {tf}={v} must be a whole number of bars")
        if self.exit_retry_max_s < self.exit_retry_initial_s:
            raise ValueError("exit_retry_max_s must be >= exit_retry_initial_s")
        if not any(c.isalnum() for c in self.client_id_prefix):
            raise ValueError("client_id_prefix must contain at least one letter or digit")


# ------------------------------------------------------------------------------------------- value types
@dataclass(frozen=True)
class MarketMetrics:
    """Recent market conditions on one timeframe."""

    volatility: float  # ATR / price per bar (fraction)
    volume: float  # quote volume per hour (a rate, so timeframes compare)
    spread: float  # spread / mid (fraction)


@dataclass(frozen=True)
class TimeframeScore:
    timeframe: str
    score: float
    components: dict[str, float]  # volatility, cost, volume, hit_rate, pnl: each in [0, 1]
    weights: dict[str, float]
    eligible: bool = True
    note: str = ""


@dataclass(frozen=True)
class TimeframeChoice:
    """The chosen timeframe (None when no timeframe has usable metrics) and the full explanation."""

    timeframe: str | None
    score: float
    breakdown: dict[str, TimeframeScore]
    ranking: tuple[str, ...]  # best first; ties keep the fixed timeframe order


@dataclass(frozen=True)
class Signal:
    direction: int  # +1 / -1 / 0
    strength: float  # [0, 1]
    p_up: float
    edge: float  # |p - 0.5| * 2 * expected_move (fraction of price)
    cost: float  # 2 * fee + spread / mid (fraction of price)
    expected_move: float
    reason: str  # ok | no_prediction | below_cost | bad_input


@dataclass(frozen=True)
class BookTop:
    """Best bid/ask at decision time (from market.book.OrderBook.best_bid/best_ask)."""

    bid: float
    ask: float

    @property
    def mid(self) -> float:
        return (self.bid + self.ask) / 2

    @property
    def spread(self) -> float:
        return self.ask - self.bid

    @property
    def valid(self) -> bool:
        return math.isfinite(self.bid) and math.isfinite(self.ask) and 0 < self.bid <= self.ask


@dataclass(frozen=True)
class SymbolSignal:
    """One symbol's row at a bar close: what :meth:`DollarProfitOptimizer.on_bar_close` takes for one symbol,
    given together for the universe to :meth:`DollarProfitOptimizer.decide_universe`."""

    symbol: str
    bar: Bar
    predictions: Mapping[str, float]
    atr: float
    book: BookTop | None = None
    book_stale: bool = False


@dataclass(frozen=True)
class RankedCandidate:
    """One entry candidate of a universe decision, in rank order (for /status, logs and tests).

    ``dollar_edge`` = ``qty * price * net_edge``: the expected profit after costs of the sized position;
    ``admitted_qty`` is 0 when refused, less than ``qty`` when a portfolio cap cut it; ``reason`` is ``entry``,
    ``clipped_gross`` / ``clipped_net`` (admitted, cut), or why it was refused: ``max_positions``,
    ``no_room.gross`` / ``no_room.net``.
    """

    symbol: str
    direction: int
    price: float
    qty: float
    net_edge: float
    dollar_edge: float
    admitted_qty: float
    reason: str


@dataclass(frozen=True)
class _Candidate:
    symbol: str
    timeframe: str
    bar_open_ns: int
    direction: int
    price: float
    qty: float
    atr: float
    signal: Signal
    limited_by: str

    @property
    def net_edge(self) -> float:
        return self.signal.edge - self.signal.cost

    @property
    def dollar_edge(self) -> float:
        return self.qty * self.price * self.net_edge


@dataclass(frozen=True)
class ExitDecision:
    reason: str  # stop | take_profit | peak | reversal | time
    price: float  # the reference price that triggered it (the level, or the close)


@dataclass
class ManagedPosition:
    """The optimizer's exit plan for one open position (quantities absolute, ``direction`` the sign)."""

    symbol: str
    timeframe: str
    direction: int
    qty: float
    entry_price: float
    entry_ns: int
    atr: float
    stop: float
    take_profit: float
    peak: TrailingPeakDetector
    entry_fees: float = 0.0
    exit_qty: float = 0.0
    exit_value: float = 0.0
    exit_fees: float = 0.0
    pending_exit: OrderIntent | None = None
    exit_refusals: int = 0  # refused exits in a row (reset by an exit fill)
    exit_retry_ns: int = 0  # no exit is sent before this event time (backoff after a refusal)


@dataclass
class _PendingEntry:
    intent: OrderIntent
    direction: int
    atr: float
    filled: float = 0.0
    price: float = math.nan  # reference price at the decision: values the pending exposure


@dataclass
class _TfMetrics:
    volatility: float
    volume: float
    spread: float
    n: int = 1


# ------------------------------------------------------------------------------------------- optimizer
class DollarProfitOptimizer:
    """See the module docstring. One net position per symbol; exits are managed on its entry timeframe.

    ``filters``: exchange filters per tradeable symbol; ``fee_rate``: taker fee (broker.taker_fee);
    ``timeframes``: the traded timeframes in their fixed tie-break order (general.timeframes).
    """

    def __init__(self, cfg: OptimizerConfig, risk_cfg: RiskConfig, *, filters: Mapping[str, FiltersLike],
                 fee_rate: float, timeframes: Sequence[str], starting_equity: float) -> None:
        cfg.validate()
        if not (math.isfinite(fee_rate) and 0 <= fee_rate < 0.1):
            raise ValueError(f"fee_rate must be in [0, 0.1), got {fee_rate!r}")
        self.cfg = cfg
        self.risk_cfg = risk_cfg
        self.filters = dict(filters)
        self.fee_rate = fee_rate
        for tf in timeframes:
            timeframe_ns(tf)
        self.timeframes = tuple(timeframes)
        self._tf_factor = parse_tf_pairs(cfg.timeframe_factors, "timeframe_factors")
        self._max_bars = {k: int(v) for k, v in parse_tf_pairs(cfg.max_bars_held, "max_bars_held").items()}
        self.performance = PerformanceTracker(starting_equity, hit_rate_window=cfg.hit_rate_window)
        self.counters: Counter[str] = Counter()
        self.positions: dict[str, ManagedPosition] = {}
        self.selected: dict[str, TimeframeChoice] = {}
        self._pending: dict[str, _PendingEntry] = {}
        self._metrics: dict[str, dict[str, _TfMetrics]] = {}
        self._last_pred: dict[tuple[str, str], tuple[float, float]] = {}
        self._last_bar: dict[tuple[str, str], tuple[int, list[OrderIntent]]] = {}
        self._weights = {"volatility": cfg.sel_w_volatility, "cost": cfg.sel_w_cost, "volume": cfg.sel_w_volume,
                         "hit_rate": cfg.sel_w_hit_rate, "pnl": cfg.sel_w_pnl}
        self._wsum = sum(self._weights.values())
        self.ranking: dict[str, tuple[RankedCandidate, ...]] = {}  # last universe ranking per timeframe

    # ---------------------------------------------------------------------------------- small helpers
    def timeframe_factor(self, tf: str) -> float:
        return self._tf_factor.get(tf, 1.0)

    def _order_index(self, tf: str) -> tuple[int, int]:
        if tf in self.timeframes:
            return (0, self.timeframes.index(tf))
        return (1, TIMEFRAME_SECONDS.get(tf, 1 << 40))

    def _cost(self, spread: float) -> float:
        return 2 * self.fee_rate + spread + 2 * self.cfg.slippage_bps * 1e-4

    # ---------------------------------------------------------------------------------- selection
    def select_optimal_timeframe(self, metrics: Mapping[str, MarketMetrics], symbol: str | None = None
                                 ) -> TimeframeChoice:
        """Score each timeframe in [0, 1] as the weighted mean (weights ``sel_w_*``) of:

        * volatility = min(1, volatility / target_volatility)
        * cost = clamp(1 - (2*fee + spread) / (expected_move_atr_mult * volatility), 0, 1): how far the expected
          move clears the round-trip costs
        * volume = volume per hour / the largest volume per hour among the timeframes
        * hit_rate = clamp(0.5 + (h - 0.5) / (2 * hit_rate_span), 0, 1) with the model's recent hit rate
          shrunk to 0.5 by ``hit_rate_prior`` pseudo-predictions: h = (hits + prior/2) / (n + prior)
        * pnl = 0.5 + 0.5 * tanh(pnl_total / (trades + hit_rate_prior) / pnl_scale)

        Highest score wins; ties go to the earlier timeframe in the fixed order. Timeframes with non-finite
        or non-positive volatility are not eligible. With ``symbol`` the choice is remembered for entries.
        """
        cfg = self.cfg
        wsum = self._wsum
        w = self._weights  # one shared dict in every TimeframeScore (read-only; called at every bar close)
        w_vol, w_cost, w_volume, w_hit, w_pnl = (w["volatility"], w["cost"], w["volume"], w["hit_rate"], w["pnl"])
        vols = [m.volume for m in metrics.values() if math.isfinite(m.volume) and m.volume > 0]
        vmax = max(vols) if vols else 0.0
        breakdown: dict[str, TimeframeScore] = {}
        for tf, m in metrics.items():
            if not (math.isfinite(m.volatility) and m.volatility > 0 and math.isfinite(m.spread) and m.spread >= 0):
                breakdown[tf] = TimeframeScore(tf, 0.0, {}, w, False, "bad_metrics")
                continue
            st = self.performance.timeframe_stats(tf)
            prior = cfg.hit_rate_prior
            n = st.predictions + prior
            h = (st.hits + prior * 0.5) / n if n else 0.5
            pnl_pt = st.pnl / (st.trades + prior) if (st.trades + prior) else 0.0
            comp = {
                "volatility": min(1.0, m.volatility / cfg.target_volatility),
                "cost": min(1.0, max(0.0, 1 - self._cost(m.spread) / (cfg.expected_move_atr_mult * m.volatility))),
                "volume": (m.volume / vmax) if (vmax > 0 and math.isfinite(m.volume) and m.volume > 0) else 0.0,
                "hit_rate": min(1.0, max(0.0, 0.5 + (h - 0.5) / (2 * cfg.hit_rate_span))),
                "pnl": 0.5 + 0.5 * math.tanh(pnl_pt / cfg.pnl_scale),
            }
            # the same left-to-right sum as sum(w[k] * v for k, v in comp.items()), without the generator
            score = (0 + w_vol * comp["volatility"] + w_cost * comp["cost"] + w_volume * comp["volume"]
                     + w_hit * comp["hit_rate"] + w_pnl * comp["pnl"]) / wsum
            breakdown[tf] = TimeframeScore(tf, score, comp, w)
        eligible = [s for s in breakdown.values() if s.eligible]
        ranked = sorted(eligible, key=lambda s: (-round(s.score, 12), self._order_index(s.timeframe)))
        best = ranked[0] if ranked else None
        choice = TimeframeChoice(best.timeframe if best else None, best.score if best else 0.0, breakdown,
                                 tuple(s.timeframe for s in ranked))
        if symbol is not None:
            prev = self.selected.get(symbol)
            if prev is None or prev.timeframe != choice.timeframe:
                self.counters["timeframe_switches"] += 1
                log.info("timeframe_selected", symbol=symbol, timeframe=choice.timeframe,
                         score=round(choice.score, 4))
            self.selected[symbol] = choice
        return choice

    def market_metrics(self, symbol: str) -> dict[str, MarketMetrics]:
        """The EMA metrics tracked from the bars seen so far for ``symbol``, per timeframe."""
        return {tf: MarketMetrics(m.volatility, m.volume, m.spread)
                for tf, m in self._metrics.get(symbol, {}).items()}

    def observe_market(self, symbol: str, tf: str, bar: Bar, atr: float, book: BookTop | None = None) -> float:
        """Update the timeframe-selection metrics (volatility, volume, spread) from a closed bar, without
        deciding anything; used at each bar close and to warm the metrics from history at start-up, so the
        first live selection already knows every timeframe. Returns the spread fraction used."""
        price = bar.close
        if book is not None and book.valid:
            spread = book.spread / book.mid
        else:
            spread = self.cfg.assumed_spread_bps * 1e-4
        if not (math.isfinite(atr) and atr > 0 and math.isfinite(price) and price > 0 and tf in TIMEFRAME_SECONDS):
            return spread
        qv = bar.quote_volume if bar.quote_volume > 0 else bar.volume * price
        hours = TIMEFRAME_SECONDS[tf] / 3600
        self._update_metrics(symbol, tf, atr / price, qv / hours if math.isfinite(qv) else 0.0, spread)
        return spread

    def _update_metrics(self, symbol: str, tf: str, vol: float, volume_ph: float, spread: float) -> None:
        per = self._metrics.setdefault(symbol, {})
        m = per.get(tf)
        if m is None:
            per[tf] = _TfMetrics(vol, volume_ph, spread)
            return
        a = 2.0 / (self.cfg.metrics_ema_bars + 1)
        m.volatility += a * (vol - m.volatility)
        m.volume += a * (volume_ph - m.volume)
        m.spread += a * (spread - m.spread)
        m.n += 1

    # ---------------------------------------------------------------------------------- signal
    def combine_signal(self, predictions: Mapping[str, float], *, atr: float, price: float,
                       spread: float) -> Signal:
        """Combined direction and strength (see the module docstring for the fee/spread-aware threshold).
        ``spread`` is a fraction of the mid price."""
        if not (math.isfinite(atr) and atr > 0 and math.isfinite(price) and price > 0
                and math.isfinite(spread) and spread >= 0):
            return Signal(0, 0.0, 0.5, 0.0, 0.0, 0.0, "bad_input")
        move = self.cfg.expected_move_atr_mult * atr / price
        cost = self._cost(spread)
        er = predictions.get(EXPECTED_RETURN)
        if isinstance(er, (int, float)) and math.isfinite(er) and abs(er) < 1.0:
            edge = abs(float(er))
            strength = min(1.0, edge / move)
            sign = 1 if er > 0 else -1
            p_er = 0.5 + sign * strength / 2
            if er == 0 or edge <= self.cfg.edge_cost_multiple * cost:
                return Signal(0, 0.0, p_er, edge, cost, move, "below_cost")
            return Signal(sign, strength, p_er, edge, cost, move, "ok")
        weights = {"xgboost": self.cfg.w_xgboost, "lstm": self.cfg.w_lstm}
        num = den = 0.0
        for k, w in weights.items():
            p = predictions.get(k)
            if w > 0 and isinstance(p, (int, float)) and math.isfinite(p) and 0.0 <= p <= 1.0:
                num += w * p
                den += w
        if den == 0:
            return Signal(0, 0.0, 0.5, 0.0, cost, move, "no_prediction")
        p = num / den
        edge = abs(p - 0.5) * 2 * move
        if p == 0.5 or edge <= self.cfg.edge_cost_multiple * cost:
            return Signal(0, 0.0, p, edge, cost, move, "below_cost")
        return Signal(1 if p > 0.5 else -1, min(1.0, abs(2 * p - 1)), p, edge, cost, move, "ok")

    # ---------------------------------------------------------------------------------- sizing / levels
    def size(self, symbol: str, timeframe: str, signal: Signal, price: float, atr: float,
             account: AccountState) -> SizeResult:
        """The position's size for ``signal`` (risk, per-symbol caps, venue filters); the count of open positions
        and the portfolio caps are applied when candidates are admitted (:meth:`_admit`)."""
        f = self.filters[symbol]
        return position_size(equity=account.equity, price=price, atr=atr, strength=signal.strength,
                             timeframe_factor=self.timeframe_factor(timeframe),
                             risk_per_trade=self.cfg.risk_per_trade, stop_atr_mult=self.cfg.stop_atr_mult,
                             max_position_notional=self.risk_cfg.max_position_notional,
                             max_position_fraction=self.cfg.max_position_fraction, filters=f,
                             existing_qty=0.0)

    def levels(self, symbol: str, direction: int, entry: float, atr: float) -> RiskLevels | None:
        f = self.filters.get(symbol)
        return risk_levels(direction, entry, atr, stop_atr_mult=self.cfg.stop_atr_mult,
                           take_profit_ratio=self.cfg.take_profit_ratio, tick_size=f.tick_size if f else 0.0)

    def _new_position(self, symbol: str, tf: str, direction: int, qty: float, entry: float, entry_ns: int,
                      atr: float, fees: float) -> ManagedPosition | None:
        lv = self.levels(symbol, direction, entry, atr)
        if lv is None:
            return None
        peak = TrailingPeakDetector(direction, entry, retrace=self.cfg.peak_retrace_atr * atr,
                                    min_favourable=self.cfg.peak_min_favourable_atr * atr)
        return ManagedPosition(symbol, tf, direction, qty, entry, entry_ns, atr, lv.stop, lv.take_profit, peak,
                               entry_fees=fees)

    # ---------------------------------------------------------------------------------- exits
    def check_exit(self, position: ManagedPosition, bar: Bar | None = None, *, price: float | None = None,
                   ts: int, signal: Signal | None = None) -> ExitDecision | None:
        """First exit that applies, in order: stop, take profit, peak, signal reversal, time limit.

        With a bar, the stop/take profit are touched by its low/high (both in one bar: the stop, the
        conservative assumption) and the peak detector sees (high, low, close); with a ``price`` only the price.
        Updates the position's peak detector (streaming), so feed each bar once.
        """
        if bar is not None:
            hi, lo, close = bar.high, bar.low, bar.close
        elif price is not None:
            hi = lo = close = price
        else:
            raise ValueError("check_exit needs a bar or a price")
        if not all(math.isfinite(v) and v > 0 for v in (hi, lo, close)):
            self.counters["bad_exit_price"] += 1
            return None
        d, p = position.direction, position
        if (d == 1 and lo <= p.stop) or (d == -1 and hi >= p.stop):
            return ExitDecision("stop", p.stop)
        if (d == 1 and hi >= p.take_profit) or (d == -1 and lo <= p.take_profit):
            return ExitDecision("take_profit", p.take_profit)
        if bar is not None and self.cfg.peak_exit and p.peak.update(hi, lo, close):
            return ExitDecision("peak", close)
        if self.cfg.exit_on_reversal and signal is not None and signal.direction == -d:
            return ExitDecision("reversal", close)
        max_bars = self._max_bars.get(p.timeframe, 0)
        if max_bars > 0:
            tfn = timeframe_ns(p.timeframe)
            held = (ts - p.entry_ns + tfn // 2) // tfn
            if held >= max_bars:
                return ExitDecision("time", close)
        return None

    def _exit_intent(self, pos: ManagedPosition, dec: ExitDecision, account: AccountState, ts: int,
                     key: object) -> OrderIntent:
        qty = abs(account.qty(pos.symbol)) or (pos.qty - pos.exit_qty)
        if pos.exit_refusals:  # a retry is a new order (a venue that rejected an id keeps answering it as such)
            key = f"{key}r{pos.exit_refusals}"
        intent = OrderIntent(
            client_order_id=client_order_id(self.cfg.client_id_prefix, pos.symbol, pos.timeframe, key, dec.reason),
            symbol=pos.symbol, side=Side(-pos.direction), qty=qty, reduce_only=True, timeframe=pos.timeframe,
            reason=dec.reason, ts=ts)
        pos.pending_exit = intent
        self.counters[f"exit.{dec.reason}"] += 1
        log.info("exit_intent", symbol=pos.symbol, timeframe=pos.timeframe, reason=dec.reason, qty=qty,
                 ref_price=dec.price, coid=intent.client_order_id)
        return intent

    # ---------------------------------------------------------------------------------- reconcile
    def _reconcile(self, symbol: str, tf: str, account: AccountState, price: float, atr: float, ts: int) -> None:
        """The account (portfolio) is the truth for quantities; the optimizer keeps the exit plan."""
        acct = account.qty(symbol)
        pos = self.positions.get(symbol)
        pending = self._pending.get(symbol)
        if pos is not None:
            if acct == 0.0 and pending is None:
                self.counters["reconcile_dropped"] += 1
                log.warning("position_gone", symbol=symbol, qty=pos.qty)
                del self.positions[symbol]
                pos = None
            elif acct != 0.0 and (acct > 0) != (pos.direction > 0):
                self.counters["reconcile_dropped"] += 1
                del self.positions[symbol]
                pos = None
            elif acct != 0.0 and pos.pending_exit is None and abs(abs(acct) - (pos.qty - pos.exit_qty)) > 1e-12:
                self.counters["reconcile_qty"] += 1
                pos.qty = abs(acct) + pos.exit_qty
        if pos is None and acct != 0.0 and pending is None:
            p = account.positions[symbol]
            entry = p.avg_price if (math.isfinite(p.avg_price) and p.avg_price > 0) else price
            new = self._new_position(symbol, tf, 1 if acct > 0 else -1, abs(acct), entry, ts, atr, 0.0)
            if new is not None:
                self.positions[symbol] = new
                self.counters["reconcile_adopted"] += 1
                log.warning("position_adopted", symbol=symbol, qty=acct, entry=entry, timeframe=tf)

    # ---------------------------------------------------------------------------------- restart
    def exit_plan(self, symbol: str) -> dict | None:
        """The durable part of ``symbol``'s exit plan (None when flat): what a restart needs to keep managing
        the position on its own timeframe and levels. The trailing peak's state is not in it (it changes on every
        trade); after a restart the peak detector re-arms from the entry price."""
        pos = self.positions.get(symbol)
        if pos is None:
            return None
        return {"symbol": pos.symbol, "timeframe": pos.timeframe, "direction": pos.direction,
                "entry_price": pos.entry_price, "entry_ns": pos.entry_ns, "atr": pos.atr, "stop": pos.stop,
                "take_profit": pos.take_profit, "entry_fees": pos.entry_fees}

    def restore_exit_plans(self, plans: Iterable[Mapping[str, Any]], account: AccountState) -> int:
        """Start-up: re-create managed positions from stored exit plans for the account's open positions (the
        account is the truth for quantities). A plan without a matching position is dropped (counted)."""
        n = 0
        for p in plans:
            try:
                sym, tf, d = str(p["symbol"]), str(p["timeframe"]), int(p["direction"])
                entry, atr = float(p["entry_price"]), float(p["atr"])
                stop, tp = float(p["stop"]), float(p["take_profit"])
                entry_ns, fees = int(p["entry_ns"]), float(p.get("entry_fees", 0.0))
            except (KeyError, TypeError, ValueError):
                self.counters["plan_invalid"] += 1
                continue
            qty = account.qty(sym)
            if qty == 0.0 or (qty > 0) != (d > 0) or sym in self.positions:
                self.counters["plan_discarded"] += 1
                continue
            pos = self._new_position(sym, tf, d, abs(qty), entry, entry_ns, atr, fees)
            if pos is None:
                self.counters["plan_invalid"] += 1
                continue
            pos.stop, pos.take_profit = stop, tp
            self.positions[sym] = pos
            self.counters["plan_restored"] += 1
            log.info("exit_plan_restored", symbol=sym, timeframe=tf, qty=qty, stop=stop, take_profit=tp)
            n += 1
        return n

    # ---------------------------------------------------------------------------------- the entry point
    def on_bar_close(self, symbol: str, timeframe: str, bar: Bar, predictions: Mapping[str, float], atr: float,
                     book: BookTop | None, account: AccountState, ts: int, *, book_stale: bool = False
                     ) -> list[OrderIntent]:
        """Decide at the close of ``bar``: exits for the symbol's position (on its own timeframe) or an entry.

        Idempotent: the same bar fed again returns the same intents (same client order ids) without changing
        state; an older bar is ignored (counted). A known-stale book returns no intents (counted).
        """
        c = self.counters
        key = (symbol, timeframe)
        last = self._last_bar.get(key)
        if last is not None and bar.open_ns <= last[0]:
            if bar.open_ns == last[0]:
                c["replayed_bar"] += 1
                return list(last[1])
            c["old_bar"] += 1
            return []
        res = self._assess(symbol, timeframe, bar, predictions, atr, book, account, ts, book_stale)
        out = self._admit(timeframe, [res], account, ts) if isinstance(res, _Candidate) else res
        self._last_bar[key] = (bar.open_ns, list(out))
        return out

    def decide_universe(self, timeframe: str, rows: Sequence[SymbolSignal], account: AccountState, ts: int
                        ) -> list[OrderIntent]:
        """Decide at a bar boundary for every symbol of ``timeframe`` at once: each row's exits as in
        :meth:`on_bar_close`, then the entry candidates of all rows ranked by expected dollar edge after costs and
        admitted under the portfolio limits (module docstring). Returns the exits, then the entries best first.

        Idempotent per (symbol, timeframe) like :meth:`on_bar_close` (a row whose bar was already decided returns
        that decision's intents; an older one is ignored); a symbol given twice is counted and its later rows
        ignored. The ranking is kept in ``self.ranking[timeframe]``.
        """
        c = self.counters
        c["universe_decisions"] += 1
        exits: list[OrderIntent] = []
        replayed: list[OrderIntent] = []
        cands: list[_Candidate] = []
        seen: set[str] = set()
        for r in rows:
            if r.symbol in seen:
                c["duplicate_row"] += 1
                continue
            seen.add(r.symbol)
            key = (r.symbol, timeframe)
            last = self._last_bar.get(key)
            if last is not None and r.bar.open_ns <= last[0]:
                if r.bar.open_ns == last[0]:
                    c["replayed_bar"] += 1
                    replayed.extend(last[1])
                else:
                    c["old_bar"] += 1
                continue
            res = self._assess(r.symbol, timeframe, r.bar, r.predictions, r.atr, r.book, account, ts,
                               r.book_stale)
            if isinstance(res, _Candidate):
                cands.append(res)
            else:
                exits.extend(res)
                self._last_bar[key] = (r.bar.open_ns, list(res))
        entries = self._admit(timeframe, cands, account, ts)
        by_sym = {i.symbol: i for i in entries}
        for cd in cands:
            got = by_sym.get(cd.symbol)
            self._last_bar[(cd.symbol, timeframe)] = (cd.bar_open_ns, [got] if got is not None else [])
        return exits + replayed + entries

    def _admit(self, tf: str, cands: Sequence[_Candidate], account: AccountState, ts: int) -> list[OrderIntent]:
        """Rank ``cands`` by dollar edge (ties: net edge, then symbol) and admit them best first under the
        position count and the gross/net exposure caps; pending entries count as open, at their decision
        price. Records the ranking in ``self.ranking[tf]``."""
        c = self.counters
        ranked = sorted(cands, key=lambda k: (-k.dollar_edge, -k.net_edge, k.symbol))
        open_syms = set(account.open_symbols())
        exp = portfolio_exposure(account)
        gross, net = exp.gross, exp.net
        for sym, pe in self._pending.items():
            left = max(pe.intent.qty - pe.filled, 0.0)
            px = pe.price if math.isfinite(pe.price) else account.marks.get(sym, math.nan)
            if not (math.isfinite(px) and px > 0):
                px = 0.0
                exp = Exposure(exp.gross, exp.net, exp.unvalued + 1)  # unknown exposure: no new risk
            gross += left * px
            net += pe.direction * left * px
            open_syms.add(sym)
        slots = self.risk_cfg.max_open_positions - len(open_syms)
        out: list[OrderIntent] = []
        report: list[RankedCandidate] = []
        for k in ranked:
            qty, reason = k.qty, "entry"
            new_slot = k.symbol not in open_syms  # e.g. dust left in the account already holds a slot
            if new_slot and slots <= 0:
                qty, reason = 0.0, "max_positions"
            else:
                room, cap = exposure_room(Exposure(gross, net, exp.unvalued), k.direction, account.equity,
                                          self.risk_cfg.max_gross_exposure, self.risk_cfg.max_net_exposure)
                if qty * k.price > room:
                    f = self.filters[k.symbol]
                    qty = floor_to_step(room / k.price, f.lot_step)
                    while qty > 0 and qty * k.price > room:  # float rounding must never overshoot the cap
                        qty = floor_to_step(qty - f.lot_step, f.lot_step) if f.lot_step > 0 else 0.0
                    if qty <= 0 or qty < f.min_qty or qty * k.price < f.min_notional:
                        qty, reason = 0.0, f"no_room.{cap}"
                    else:
                        reason = f"clipped_{cap}"
            report.append(RankedCandidate(k.symbol, k.direction, k.price, k.qty, k.net_edge, k.dollar_edge, qty,
                                          reason))
            if qty <= 0:
                c[f"rank.{reason}"] += 1
                continue
            if reason != "entry":
                c[f"rank.{reason}"] += 1
            if new_slot:
                slots -= 1
                open_syms.add(k.symbol)
            gross += qty * k.price
            net += k.direction * qty * k.price
            intent = OrderIntent(
                client_order_id=client_order_id(self.cfg.client_id_prefix, k.symbol, tf, k.bar_open_ns, "entry"),
                symbol=k.symbol, side=Side(k.direction), qty=qty, timeframe=tf, reason="entry", ts=ts)
            self._pending[k.symbol] = _PendingEntry(intent, k.direction, k.atr, price=k.price)
            c["entry"] += 1
            log.info("entry_intent", symbol=k.symbol, timeframe=tf, side=k.direction, qty=qty,
                     p_up=round(k.signal.p_up, 4), edge=k.signal.edge, cost=k.signal.cost,
                     dollar_edge=round(k.dollar_edge, 4), limited_by=k.limited_by if reason == "entry" else reason,
                     coid=intent.client_order_id)
            out.append(intent)
        self.ranking[tf] = tuple(report)
        return out

    def _assess(self, symbol: str, tf: str, bar: Bar, predictions: Mapping[str, float], atr: float,
                book: BookTop | None, account: AccountState, ts: int, book_stale: bool
                ) -> list[OrderIntent] | _Candidate:
        """One symbol at a bar close: bookkeeping, then its exit intents, or its entry candidate (sized, not yet
        admitted against the portfolio)."""
        c = self.counters
        c["bars"] += 1
        if symbol not in self.filters:
            c["unknown_symbol"] += 1
            return []
        price = bar.close
        if not (all(math.isfinite(v) and v > 0 for v in (bar.open, bar.high, bar.low, price))
                and math.isfinite(atr) and atr > 0 and tf in TIMEFRAME_SECONDS and bar.timeframe == tf):
            c["bad_input"] += 1
            return []
        spread = self.observe_market(symbol, tf, bar, atr, book)
        signal = self.combine_signal(predictions, atr=atr, price=price, spread=spread)
        # model hit rate: was the previous bar's call on this timeframe right?
        prev = self._last_pred.get((symbol, tf))
        if prev is not None and prev[0] != 0.5 and price != prev[1]:
            self.performance.record_prediction(tf, (price > prev[1]) == (prev[0] > 0.5))
        if signal.reason != "no_prediction":
            self._last_pred[(symbol, tf)] = (signal.p_up, price)
        choice = self.select_optimal_timeframe(self.market_metrics(symbol), symbol=symbol)
        self._reconcile(symbol, tf, account, price, atr, ts)
        pos = self.positions.get(symbol)
        if pos is not None:
            self.performance.set_unrealised(symbol, pos.direction * (price - pos.entry_price)
                                            * (pos.qty - pos.exit_qty))
        if book_stale:
            c["stale_book"] += 1
            return []
        if pos is not None:
            if pos.timeframe != tf or pos.pending_exit is not None:
                return []
            dec = self.check_exit(pos, bar, ts=ts, signal=signal)
            return [self._exit_intent(pos, dec, account, ts, bar.open_ns)] if dec and self._exit_allowed(pos, ts) \
                else []
        if symbol in self._pending:
            c["entry_pending"] += 1
            return []
        if signal.direction == 0:
            c[f"no_signal.{signal.reason}"] += 1
            return []
        if signal.direction < 0 and not self.cfg.allow_short:
            c["short_disabled"] += 1
            return []
        if self.cfg.trade_selected_timeframe_only and choice.timeframe != tf:
            c["not_selected_timeframe"] += 1
            return []
        entry = price
        if book is not None and book.valid:
            entry = book.ask if signal.direction > 0 else book.bid
        sz = self.size(symbol, tf, signal, entry, atr, account)
        if not sz.ok:
            c[f"no_size.{sz.reason}"] += 1
            return []
        if self.levels(symbol, signal.direction, entry, atr) is None:
            c["no_levels"] += 1
            return []
        return _Candidate(symbol, tf, bar.open_ns, signal.direction, entry, sz.qty, atr, signal, sz.limited_by)

    def on_price(self, symbol: str, price: float, account: AccountState, ts: int, *, book_stale: bool = False
                 ) -> list[OrderIntent]:
        """Between bars (e.g. on each trade): stop and take-profit only, so they fire without waiting for
        the bar close. Peaks, reversals and time limits are decided at bar closes."""
        pos = self.positions.get(symbol)
        if pos is None or pos.pending_exit is not None or book_stale:
            if book_stale and pos is not None:
                self.counters["stale_book"] += 1
            return []
        if account.qty(symbol) == 0.0:
            return []
        if not (math.isfinite(price) and price > 0):
            self.counters["bad_input"] += 1
            return []
        dec = self.check_exit(pos, price=price, ts=ts)
        if dec is None or dec.reason not in ("stop", "take_profit") or not self._exit_allowed(pos, ts):
            return []
        return [self._exit_intent(pos, dec, account, ts, f"px{pos.entry_ns}")]

    def _exit_allowed(self, pos: ManagedPosition, ts: int) -> bool:
        """False (counted) while a refused exit's backoff runs: a refusal must not become a re-send per tick."""
        if ts < pos.exit_retry_ns:
            self.counters["exit_backoff"] += 1
            return False
        return True

    def exit_alarms(self) -> dict[str, dict[str, Any]]:
        """Positions whose exits the risk manager, broker or venue keep refusing (for /status and metrics)."""
        return {s: {"refusals": p.exit_refusals, "retry_at_ns": p.exit_retry_ns, "timeframe": p.timeframe,
                    "qty": p.qty - p.exit_qty} for s, p in self.positions.items() if p.exit_refusals}

    # ---------------------------------------------------------------------------------- fills / orders
    def on_fill(self, fill: Fill) -> ClosedTrade | None:
        """Entry fills open/extend the managed position (stop/TP from the fill price); fills against the
        position (exits, stops, flatten) close it. Returns the ClosedTrade when the position is closed."""
        sym = fill.symbol
        if not (math.isfinite(fill.price) and fill.price > 0 and math.isfinite(fill.qty) and fill.qty > 0
                and math.isfinite(fill.fee)):
            self.counters["bad_fill"] += 1
            return None
        pe = self._pending.get(sym)
        pos = self.positions.get(sym)
        if pe is not None and fill.client_order_id == pe.intent.client_order_id:
            held = abs(fill.position_delta)  # net of a commission the venue kept in the base asset
            if pos is None:
                pos = self._new_position(sym, pe.intent.timeframe, pe.direction, held, fill.price, fill.ts,
                                         pe.atr, fill.fee)
                if pos is None:
                    self.counters["fill_no_levels"] += 1
                else:
                    self.positions[sym] = pos
            else:
                total = pos.qty + held
                entry = (pos.entry_price * pos.qty + fill.price * held) / total
                fresh = self._new_position(sym, pos.timeframe, pos.direction, total, entry, pos.entry_ns, pe.atr,
                                           pos.entry_fees + fill.fee)
                if fresh is not None:
                    fresh.peak = pos.peak
                    self.positions[sym] = pos = fresh
            pe.filled += fill.qty
            if pe.filled >= pe.intent.qty * (1 - 1e-9):
                del self._pending[sym]
            return None
        if pos is not None and int(Side(fill.side)) == -pos.direction:
            remaining = pos.qty - pos.exit_qty
            closing = min(fill.qty, remaining)
            pos.exit_refusals, pos.exit_retry_ns = 0, 0
            pos.exit_qty += closing
            pos.exit_value += closing * fill.price
            pos.exit_fees += fill.fee
            left = pos.qty - pos.exit_qty
            all_sold = left <= 1e-9 * pos.qty
            if all_sold or is_dust(left, self.filters.get(sym), fill.price):  # what is left cannot be sold
                reason = (pos.pending_exit.reason if pos.pending_exit is not None
                          and fill.client_order_id == pos.pending_exit.client_order_id else "external")
                sold = pos.qty if all_sold else pos.exit_qty  # dust stays in the account, unsold
                trade = ClosedTrade(sym, pos.timeframe, pos.direction, sold, pos.entry_price,
                                    pos.exit_value / pos.exit_qty, pos.entry_ns, fill.ts,
                                    pos.entry_fees + pos.exit_fees, reason)
                self.performance.update_performance(trade)
                self.performance.set_unrealised(sym, 0.0)
                del self.positions[sym]
                self.counters["closed_trades"] += 1
                log.info("trade_closed", symbol=sym, timeframe=trade.timeframe, reason=reason,
                         pnl=round(trade.pnl, 4))
                return trade
            return None
        self.counters["unmatched_fill"] += 1
        return None

    def on_order_done(self, client_order_id: str, filled: bool = False) -> None:
        """The venue/broker finished an order (rejected, canceled, expired, or fully filled): forget it as
        pending so a new decision can be made."""
        for sym, pe in list(self._pending.items()):
            if pe.intent.client_order_id == client_order_id:
                del self._pending[sym]
                if not filled:
                    self.counters["entry_not_filled"] += 1
        for pos in self.positions.values():
            if pos.pending_exit is not None and pos.pending_exit.client_order_id == client_order_id:
                sent = pos.pending_exit
                pos.pending_exit = None
                if not filled:
                    self.counters["exit_not_filled"] += 1
                    self._exit_refused(pos, sent)

    def _exit_refused(self, pos: ManagedPosition, sent: OrderIntent) -> None:
        """Exponential, bounded backoff from the refused intent's event time, and the alarm."""
        pos.exit_refusals += 1
        doublings = min(pos.exit_refusals - 1, 60)
        wait_s = min(self.cfg.exit_retry_max_s, self.cfg.exit_retry_initial_s * 2.0 ** doublings)
        pos.exit_retry_ns = sent.ts + int(wait_s * 1e9)
        self.counters["exit_refused"] += 1
        self.counters[f"exit_refused.{pos.symbol}"] += 1
        log.warning("exit_refused", symbol=pos.symbol, reason=sent.reason, coid=sent.client_order_id,
                    refusals=pos.exit_refusals, retry_in_s=wait_s)

    # ---------------------------------------------------------------------------------- performance
    def update_performance(self, trade: ClosedTrade) -> bool:
        return self.performance.update_performance(trade)

    def get_performance_metrics(self, ts: int) -> PerformanceMetrics:
        return self.performance.get_performance_metrics(ts)
