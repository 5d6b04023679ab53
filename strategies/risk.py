"""Risk limits and the kill switch, enforced on every order intent before it leaves the process.

Pure: no I/O, no clock (``ts`` in ns is passed in). State machine (every transition logged and counted)::

    ACTIVE ──daily loss >= reduce_at_loss_fraction × max_daily_loss──> REDUCING (entries scaled down)
    ACTIVE/REDUCING ──daily loss >= max_daily_loss, or halt()──> HALTED (no new entries)
    REDUCING/HALTED(daily loss) ──new UTC day──> ACTIVE        any ──resume()──> ACTIVE

Reduce-only orders (exits, stops, flatten) are allowed in every state and are never refused by the order-rate
limit (they are still counted in it), so a position can always be closed; the one exception is a closed gate
(:meth:`RiskManager.add_gate`: the store cannot persist, so nothing new is sent until it can). Daily P&L is equity now minus the
first equity seen in the current UTC day (so it includes unrealised P&L). A ``resume()`` while the day's loss
is still beyond the limit halts again at the next check.
"""
from __future__ import annotations

import enum
import math
from collections import Counter, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

import structlog

from market.cfgbase import opt
from market.events import OrderIntent, OrderType, Side
from strategies.sizing import FiltersLike, client_order_id, floor_to_step

__all__ = ["RiskConfig", "RiskState", "RiskDecision", "RiskManager", "AccountState", "PositionLike",
           "NS_PER_MINUTE", "Exposure", "portfolio_exposure", "exposure_room"]

log = structlog.get_logger(__name__)

NS_PER_MINUTE = 60_000_000_000
NS_PER_DAY = 86_400_000_000_000


@dataclass(frozen=True)
class RiskConfig:
    """Hard risk limits and kill switch, checked on every order before it is sent (strategies/risk.py)."""

    max_position_notional: float = opt(50000.0, "Largest position per symbol, in quote currency at the mark.",
                                       gt=0, le=1e12)
    max_open_positions: int = opt(3, "Most symbols with an open position at once.", ge=1, le=1000)
    max_order_notional: float = opt(25000.0, "Largest single order, in quote currency (orders above are cut "
                                    "down to it).", gt=0, le=1e12)
    max_orders_per_minute: int = opt(30, "Orders allowed in any sliding 60 s window (reduce-only orders are "
                                     "counted but never refused).", ge=1, le=100000)
    max_daily_loss: float = opt(2000.0, "Loss since the start of the UTC day (equity based, quote currency) at "
                                "which new entries halt until the next UTC day.", gt=0, le=1e12)
    reduce_at_loss_fraction: float = opt(0.5, "Fraction of max_daily_loss at which the state becomes REDUCING "
                                         "(1 disables REDUCING).", gt=0, le=1)
    reducing_size_factor: float = opt(0.5, "Entry sizes are multiplied by this while REDUCING (0 = no entries).",
                                      ge=0, le=1)
    flatten_on_daily_loss: bool = opt(True, "When the daily loss limit halts trading, ask for every position "
                                      "to be closed (flatten_required / flatten_intents).")
    start_halted: bool = opt(False, "Start in HALTED (needs a manual resume before any entry).")
    max_gross_exposure: float = opt(1.0, "Portfolio cap: sum of |position notional| over all symbols, as a fraction "
                                    "of equity (1 = no leverage). Entries are cut down to the room left.",
                                    gt=0, le=100)
    max_net_exposure: float = opt(1.0, "Portfolio cap: |long notional - short notional| as a fraction of equity "
                                  "(binds only where shorts are allowed: spot long-only has net = gross).",
                                  gt=0, le=100)


class PositionLike(Protocol):
    qty: float  # signed: > 0 long, < 0 short
    avg_price: float


@dataclass(frozen=True)
class AccountState:
    """What the risk manager and optimizer need to know about the account at one instant.

    ``positions`` may be ``market.portfolio.Portfolio.positions`` directly (anything with signed ``qty`` and
    ``avg_price``); ``marks`` are the current prices used to value orders and positions.
    """

    equity: float
    positions: Mapping[str, PositionLike] = field(default_factory=dict)
    marks: Mapping[str, float] = field(default_factory=dict)

    def qty(self, symbol: str) -> float:
        p = self.positions.get(symbol)
        return float(p.qty) if p is not None else 0.0

    def open_symbols(self) -> list[str]:
        return sorted(s for s, p in self.positions.items() if p.qty != 0.0)


@dataclass(frozen=True)
class Exposure:
    """Notional of the account's positions: ``gross`` = sum |qty| x price, ``net`` = sum qty x price (quote).
    ``unvalued`` counts positions with neither a finite mark nor an average price (their size is unknown)."""

    gross: float
    net: float
    unvalued: int = 0


def portfolio_exposure(account: AccountState) -> Exposure:
    """Gross and net notional at the account's marks (the position's average price where a mark is missing)."""
    gross = net = 0.0
    unvalued = 0
    for sym, p in account.positions.items():
        q = float(p.qty)
        if q == 0.0:
            continue
        px = account.marks.get(sym)
        if not _finite_pos(px):
            px = p.avg_price
        if not (_finite_pos(px) and math.isfinite(q)):
            unvalued += 1
            continue
        gross += abs(q) * px
        net += q * px
    return Exposure(gross, net, unvalued)


def exposure_room(exp: Exposure, direction: int, equity: float, max_gross: float, max_net: float
                  ) -> tuple[float, str]:
    """Notional (quote) a new position in ``direction`` may add before a portfolio cap binds, and which cap
    binds (``gross`` / ``net``). Never negative; 0 when equity is not a positive number or a position cannot be
    valued (the exposure is then unknown: no new risk)."""
    if not (math.isfinite(equity) and equity > 0) or exp.unvalued:
        return 0.0, "gross"
    gross_room = max_gross * equity - exp.gross
    net_room = max_net * equity - (exp.net if direction > 0 else -exp.net)
    if net_room < gross_room:
        return max(net_room, 0.0), "net"
    return max(gross_room, 0.0), "gross"


class RiskState(str, enum.Enum):
    ACTIVE = "ACTIVE"
    REDUCING = "REDUCING"
    HALTED = "HALTED"


@dataclass(frozen=True)
class RiskDecision:
    """``allowed``: send it with ``adjusted_qty`` (may be less than asked). ``reason``: ok, clipped_<limit>,
    or why it was refused."""

    allowed: bool
    reason: str
    adjusted_qty: float


def _finite_pos(x: object) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x > 0


class RiskManager:
    """Checks intents against :class:`RiskConfig`; owns the ACTIVE/REDUCING/HALTED state.

    ``filters`` maps every tradeable symbol to its exchange filters; an intent for any other symbol is refused.
    ``counters`` (allowed, rejected.<reason>, clipped.<limit>, transition.<from>-><to>) is what the daemon exports.
    """

    def __init__(self, cfg: RiskConfig, filters: Mapping[str, FiltersLike]) -> None:
        self.cfg = cfg
        self.filters = dict(filters)
        self.state = RiskState.HALTED if cfg.start_halted else RiskState.ACTIVE
        self.halt_reason = "start_halted" if cfg.start_halted else ""
        self.counters: Counter[str] = Counter()
        self._orders: deque[int] = deque()
        self._day: int | None = None
        self._day_start_equity: float | None = None
        self.daily_pnl = 0.0
        self._last_ts = 0
        self._gates: list[Callable[[], str]] = []

    def add_gate(self, gate: Callable[[], str]) -> None:
        """``gate()`` returns a refusal reason ("" = open). While any gate is closed EVERY order is refused, exits
        included (e.g. ``store_unavailable``: nothing new is sent that could not be persisted; the optimizer
        re-sends refused exits with its bounded backoff once the gate opens)."""
        self._gates.append(gate)

    # ------------------------------------------------------------------------------------ state machine
    def _transition(self, to: RiskState, reason: str, ts: int) -> None:
        if to is self.state:
            return
        frm = self.state
        self.state = to
        self.halt_reason = "" if to is RiskState.ACTIVE else reason
        self.counters[f"transition.{frm.value}->{to.value}"] += 1
        log.warning("risk_state", frm=frm.value, to=to.value, reason=reason, daily_pnl=round(self.daily_pnl, 2),
                    ts=ts)

    def halt(self, reason: str, ts: int) -> None:
        """Manual kill switch: no new entries until :meth:`resume`."""
        self._transition(RiskState.HALTED, f"manual:{reason}", ts)

    def resume(self, ts: int) -> None:
        self._transition(RiskState.ACTIVE, "manual_resume", ts)

    @property
    def flatten_required(self) -> bool:
        """True while halted by the daily loss limit with ``flatten_on_daily_loss``: the caller should send
        :meth:`flatten_intents`."""
        return (self.cfg.flatten_on_daily_loss and self.state is RiskState.HALTED
                and self.halt_reason == "daily_loss")

    def update_account(self, account: AccountState, ts: int) -> None:
        """Track the UTC day's starting equity and move between states on the daily loss."""
        ts = max(ts, self._last_ts)  # time never runs backwards for the limits
        self._last_ts = ts
        day = ts // NS_PER_DAY
        eq = account.equity
        if not math.isfinite(eq):
            self.counters["bad_equity"] += 1
            return
        if day != self._day:
            self._day = day
            self._day_start_equity = eq
            self.daily_pnl = 0.0
            if self.state is not RiskState.ACTIVE and self.halt_reason in ("daily_loss", "daily_loss_soft"):
                self._transition(RiskState.ACTIVE, "new_utc_day", ts)
        assert self._day_start_equity is not None
        self.daily_pnl = eq - self._day_start_equity
        loss = -self.daily_pnl
        if loss >= self.cfg.max_daily_loss:
            if self.state is not RiskState.HALTED:
                self._transition(RiskState.HALTED, "daily_loss", ts)
        elif (loss >= self.cfg.reduce_at_loss_fraction * self.cfg.max_daily_loss
              and self.state is RiskState.ACTIVE):
            self._transition(RiskState.REDUCING, "daily_loss_soft", ts)

    # ------------------------------------------------------------------------------------ checks
    def _reject(self, reason: str) -> RiskDecision:
        self.counters[f"rejected.{reason}"] += 1
        self.counters["rejected"] += 1
        return RiskDecision(False, reason, 0.0)

    def _accept(self, qty: float, reason: str, ts: int) -> RiskDecision:
        self._orders.append(ts)
        self.counters["allowed"] += 1
        if reason != "ok":
            self.counters[reason.replace("clipped_", "clipped.")] += 1
        return RiskDecision(True, reason, qty)

    def check(self, intent: OrderIntent, account: AccountState, ts: int) -> RiskDecision:
        """Decide whether ``intent`` may be sent now and with what quantity (never more than asked)."""
        for gate in self._gates:
            closed = gate()
            if closed:
                return self._reject(closed)
        f = self.filters.get(intent.symbol)
        if f is None:
            return self._reject("unknown_symbol")
        if not _finite_pos(intent.qty):
            return self._reject("bad_qty")
        try:
            side = Side(intent.side)
        except ValueError:
            return self._reject("bad_side")
        if intent.order_type is OrderType.LIMIT or intent.limit_price is not None:
            if not _finite_pos(intent.limit_price):
                return self._reject("bad_price")
        price = intent.limit_price if intent.limit_price is not None else account.marks.get(intent.symbol)
        if not _finite_pos(price):
            return self._reject("no_price")
        self.update_account(account, ts)
        ts = self._last_ts
        while self._orders and self._orders[0] <= ts - NS_PER_MINUTE:
            self._orders.popleft()

        pos = account.qty(intent.symbol)
        opposite = pos != 0.0 and (pos > 0) != (side > 0)
        if intent.reduce_only or (opposite and intent.qty <= abs(pos)):
            if not opposite:
                return self._reject("reduce_only_no_position")
            q = min(intent.qty, abs(pos))
            return self._accept(q, "ok" if q == intent.qty else "clipped_position", ts)

        # ---- a new entry (or an increase / flip): every limit applies
        if self.state is RiskState.HALTED:
            return self._reject("halted")
        qty = intent.qty
        reason = "ok"
        if self.state is RiskState.REDUCING:
            if self.cfg.reducing_size_factor <= 0:
                return self._reject("reducing")
            qty *= self.cfg.reducing_size_factor
            reason = "clipped_reducing"
        if len(self._orders) >= self.cfg.max_orders_per_minute:
            return self._reject("rate_limit")
        if pos == 0.0 and len(account.open_symbols()) >= self.cfg.max_open_positions:
            return self._reject("max_open_positions")
        cap_order = self.cfg.max_order_notional / price
        if qty > cap_order:
            qty, reason = cap_order, "clipped_order_notional"
        # room up to the per-symbol limit in the order's direction (an opposite position is closed first)
        held_same = 0.0 if opposite else abs(pos)
        room = self.cfg.max_position_notional / price - held_same + (abs(pos) if opposite else 0.0)
        if qty > room:
            qty, reason = max(room, 0.0), "clipped_position_notional"
        # portfolio caps: what closes an opposite position first is released, the rest is new exposure
        released = abs(pos) if opposite else 0.0
        exp = portfolio_exposure(account)
        if released:
            mark = account.marks.get(intent.symbol, price)
            exp = Exposure(exp.gross - released * mark, exp.net - pos * mark, exp.unvalued)
        free, cap = exposure_room(exp, int(side), account.equity, self.cfg.max_gross_exposure,
                                  self.cfg.max_net_exposure)
        if qty > released + free / price:
            qty, reason = released + free / price, f"clipped_{cap}_exposure"
        if f.max_qty > 0 and qty > f.max_qty:
            qty, reason = f.max_qty, "clipped_max_qty"
        qty = floor_to_step(qty, f.lot_step)
        if qty <= 0:
            return self._reject("no_room")
        if qty < f.min_qty or qty * price < f.min_notional:
            return self._reject("below_venue_minimum")
        return self._accept(qty, reason, ts)

    # ------------------------------------------------------------------------------------ flatten
    def flatten_intents(self, positions: Mapping[str, PositionLike], ts: int, *, prefix: str = "td"
                        ) -> list[OrderIntent]:
        """Reduce-only market orders closing every open position (ids deterministic per symbol and ``ts``)."""
        out = []
        for sym in sorted(positions):
            q = positions[sym].qty
            if q == 0.0 or not math.isfinite(q):
                continue
            side = Side.SELL if q > 0 else Side.BUY
            out.append(OrderIntent(client_order_id=client_order_id(prefix, "flatten", sym, ts), symbol=sym,
                                   side=side, qty=abs(q), reduce_only=True, reason="flatten", ts=ts))
        if out:
            self.counters["flatten_orders"] += len(out)
            log.warning("risk_flatten", symbols=[i.symbol for i in out], ts=ts)
        return out
