"""Typed, frozen messages that flow between the edges and the pure cores.

Everything past a venue adapter sees these, never a raw dict. Times are integer nanoseconds since the epoch:
``ts_event`` is the venue's clock, ``ts_recv`` the local receive time. Prices and sizes are floats parsed once
from the venue's decimal strings (the same string always gives the same float, so book comparisons are exact).
msgspec Structs are used because they are frozen, typed and ~5x cheaper to build than dataclasses.
"""
from __future__ import annotations

import enum

import msgspec

Level = tuple[float, float]  # (price, size)


class Trade(msgspec.Struct, frozen=True, gc=False):
    symbol: str
    trade_id: int
    price: float
    qty: float
    is_buyer_maker: bool  # True: the aggressor sold (hit the bid)
    ts_event: int
    ts_recv: int


class DepthUpdate(msgspec.Struct, frozen=True, gc=False):
    """One diff of the L2 book (Binance ``depthUpdate``). ``prev_final_id`` is futures' ``pu`` (-1 on spot)."""

    symbol: str
    first_id: int  # U
    final_id: int  # u
    prev_final_id: int  # pu, or -1 when the venue does not send it (spot)
    bids: list[Level]
    asks: list[Level]
    ts_event: int
    ts_recv: int


class DepthSnapshot(msgspec.Struct, frozen=True, gc=False):
    """REST depth snapshot (``GET /api/v3/depth``)."""

    symbol: str
    last_update_id: int
    bids: list[Level]
    asks: list[Level]
    ts_recv: int


class BookTicker(msgspec.Struct, frozen=True, gc=False):
    """Best bid/ask with the book update id it reflects (``bookTicker`` stream)."""

    symbol: str
    update_id: int
    bid_price: float
    bid_qty: float
    ask_price: float
    ask_qty: float
    ts_recv: int


class BookStatus(msgspec.Struct, frozen=True, gc=False):
    """A book changed state: ``state`` is a BookState value, ``reason`` why (gap, disconnect, snapshot, ...)."""

    symbol: str
    state: str
    reason: str
    last_update_id: int
    ts_recv: int


class Bar(msgspec.Struct, frozen=True, gc=False):
    """OHLCV bar of one timeframe. ``open_ns`` is the inclusive start, the bar covers [open_ns, open_ns+tf)."""

    symbol: str
    timeframe: str  # "1m", "5m", "15m", "1h", ...
    open_ns: int
    open: float
    high: float
    low: float
    close: float
    volume: float  # base asset
    quote_volume: float = 0.0
    trades: int = 0
    taker_buy_volume: float = 0.0


TIMEFRAME_SECONDS: dict[str, int] = {
    "1m": 60, "3m": 180, "5m": 300, "15m": 900, "30m": 1800,
    "1h": 3600, "2h": 7200, "4h": 14400, "1d": 86400,
}


def timeframe_ns(tf: str) -> int:
    try:
        return TIMEFRAME_SECONDS[tf] * 1_000_000_000
    except KeyError:
        raise ValueError(f"unknown timeframe {tf!r}; known: {', '.join(TIMEFRAME_SECONDS)}") from None


# --------------------------------------------------------------------------------------------- trading
class Side(enum.IntEnum):
    """+1 buy / -1 sell, so ``side * qty`` is the signed position change."""

    BUY = 1
    SELL = -1


class OrderType(str, enum.Enum):
    MARKET = "MARKET"
    LIMIT = "LIMIT"


class OrderStatus(str, enum.Enum):
    NEW = "NEW"
    PARTIALLY_FILLED = "PARTIALLY_FILLED"
    FILLED = "FILLED"
    CANCELED = "CANCELED"
    REJECTED = "REJECTED"


class OrderIntent(msgspec.Struct, frozen=True):
    """What the strategy wants, before risk checks. ``client_order_id`` is deterministic (idempotent retries)."""

    client_order_id: str
    symbol: str
    side: Side
    qty: float
    order_type: OrderType = OrderType.MARKET
    limit_price: float | None = None
    reduce_only: bool = False
    timeframe: str = ""
    reason: str = ""  # entry / stop / take_profit / peak / reversal / time / flatten
    ts: int = 0


class Fill(msgspec.Struct, frozen=True):
    """One execution. ``qty`` is what the venue executed (the order's filled quantity counts it); ``fee`` is the
    whole commission valued in quote currency, always >= 0; ``liquidity`` is "taker" or "maker".

    ``fee_qty`` is the part of the commission the venue kept in the BASE asset (Binance charges the asset a trade
    receives: base on a buy without BNB), valued in ``fee`` at the fill price: the position then moves by
    ``side * qty - fee_qty`` (what the account really holds) and cash by the notional only."""

    fill_id: str
    client_order_id: str
    symbol: str
    side: Side
    price: float
    qty: float
    fee: float
    liquidity: str
    ts: int
    fee_qty: float = 0.0

    @property
    def position_delta(self) -> float:
        """Signed change of the base holding: ``side * qty - fee_qty``."""
        return int(self.side) * self.qty - self.fee_qty
