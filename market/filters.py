"""A symbol's trading filters (exchangeInfo PRICE_FILTER, LOT_SIZE, NOTIONAL): the one shape every part uses
(codec, matching, sizing, brokers, backtest, plausibility)."""
from __future__ import annotations

import math

import msgspec


class SymbolFilters(msgspec.Struct, frozen=True):
    """The exchangeInfo filters an order must pass (one place for the venue's rounding rules)."""

    symbol: str
    tick_size: float
    lot_step: float
    min_qty: float
    max_qty: float
    min_notional: float
    max_price: float = math.inf  # PRICE_FILTER maxPrice (0 on the venue = no limit)
