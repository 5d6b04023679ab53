"""Pure account accounting: cash, signed positions with average entry price, realised P&L and fees.

No I/O and no clock: the broker feeds it fills, the store persists its state. Conventions (also in
docs/STORE.md, the one place they are written down for the store):

* ``qty > 0`` is long, ``qty < 0`` short (the paper account may go short; a spot venue account cannot).
* ``cash`` is the quote balance. A buy of ``q`` at ``p`` reduces cash by ``q * p``, a sell increases it; the
  fee (quote currency, always >= 0) always reduces cash, except the part paid in the base asset
  (``Fill.fee_qty``, a venue commission on what a buy receives): that reduces the position instead, so the
  position is what the venue account holds. The identity below holds either way.
* Average-cost accounting: adding to a position moves the average entry price to the size-weighted mean;
  reducing it realises ``closed_qty * (price - avg) * sign(position)`` and keeps the average; a fill that crosses
  zero (long -> short in one fill) closes the whole position and opens the rest at the fill price.
* ``realised`` EXCLUDES fees; fees are tracked separately in ``fees``. Hence the identity (exact in real
  arithmetic, to float rounding here)::

      cash + sum(qty * mark) == starting_cash + realised + unrealised - fees
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from market.events import Fill, Side

__all__ = ["Position", "Portfolio", "QTY_EPS"]

# A position whose |qty| falls below this fraction of the size it came from is flat (float dust from
# e.g. 0.1 + 0.2 - 0.3); snapping it to 0 keeps "flat" exact for recovery and stop logic.
QTY_EPS = 1e-9


@dataclass(frozen=True)
class Position:
    """One symbol's position. ``avg_price`` is 0.0 when flat; realised/fees are cumulative for the symbol."""

    symbol: str
    qty: float = 0.0
    avg_price: float = 0.0
    realised: float = 0.0
    fees: float = 0.0

    @property
    def is_flat(self) -> bool:
        return self.qty == 0.0


@dataclass
class Portfolio:
    """Mutable accounting state; :meth:`copy` gives an independent one (the broker commits a copy first)."""

    starting_cash: float
    cash: float = math.nan
    positions: dict[str, Position] = field(default_factory=dict)
    n_fills: int = 0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.starting_cash) and self.starting_cash >= 0):
            raise ValueError(f"starting_cash must be finite and >= 0, got {self.starting_cash!r}")
        if math.isnan(self.cash):
            self.cash = self.starting_cash

    # ----------------------------------------------------------------------------------------- queries
    def position(self, symbol: str) -> Position:
        return self.positions.get(symbol) or Position(symbol)

    def qty(self, symbol: str) -> float:
        p = self.positions.get(symbol)
        return p.qty if p else 0.0

    @property
    def realised(self) -> float:
        """Realised P&L over all symbols, fees excluded."""
        return sum(p.realised for p in self.positions.values())

    @property
    def fees(self) -> float:
        return sum(p.fees for p in self.positions.values())

    def copy(self) -> Portfolio:
        return Portfolio(self.starting_cash, self.cash, dict(self.positions), self.n_fills)

    def mark(self, prices: Mapping[str, float]) -> tuple[float, float]:
        """``(equity, unrealised)`` at the given marks. Every non-flat position needs a finite mark."""
        equity = self.cash
        unrealised = 0.0
        for sym, p in self.positions.items():
            if p.qty == 0.0:
                continue
            m = prices.get(sym)
            if m is None or not math.isfinite(m) or m <= 0:
                raise ValueError(f"no valid mark price for open position {sym} (got {m!r})")
            equity += p.qty * m
            unrealised += p.qty * (m - p.avg_price)
        return equity, unrealised

    # ----------------------------------------------------------------------------------------- updates
    def apply_fill(self, fill: Fill) -> float:
        """Apply one fill; returns the realised P&L (fees excluded) this fill produced."""
        price, gross, fee, fq = fill.price, fill.qty, fill.fee, fill.fee_qty
        if not (math.isfinite(price) and price > 0):
            raise ValueError(f"fill {fill.fill_id}: price must be finite and > 0, got {price!r}")
        if not (math.isfinite(gross) and gross > 0):
            raise ValueError(f"fill {fill.fill_id}: qty must be finite and > 0, got {gross!r}")
        if not (math.isfinite(fee) and fee >= 0):
            raise ValueError(f"fill {fill.fill_id}: fee must be finite and >= 0, got {fee!r}")
        if not (math.isfinite(fq) and 0 <= fq < gross):
            raise ValueError(f"fill {fill.fill_id}: fee_qty must be finite, >= 0 and < qty, got {fq!r}")
        side = int(Side(fill.side))
        old = self.position(fill.symbol)
        signed = fill.position_delta  # what the holding really moves by
        sign = 1 if signed > 0 else -1
        q = abs(signed)
        realised = 0.0
        if old.qty == 0.0 or (old.qty > 0) == (sign > 0):
            # opening or adding: size-weighted average entry
            new_qty = old.qty + signed
            avg = (abs(old.qty) * old.avg_price + q * price) / abs(new_qty)
        else:
            closing = min(q, abs(old.qty))
            realised = closing * (price - old.avg_price) * (1.0 if old.qty > 0 else -1.0)
            new_qty = old.qty + signed
            if abs(new_qty) <= QTY_EPS * max(abs(old.qty), q):
                new_qty, avg = 0.0, 0.0
            elif q > abs(old.qty):  # flipped: the rest opens at the fill price
                avg = price
            else:
                avg = old.avg_price
        self.positions[fill.symbol] = replace(old, qty=new_qty, avg_price=avg, realised=old.realised + realised,
                                              fees=old.fees + fee)
        self.cash -= side * gross * price + (fee - fq * price)  # the notional, and the fee part paid in quote
        self.n_fills += 1
        return realised
