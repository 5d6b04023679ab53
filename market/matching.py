"""Pure paper matching engine: fills orders against L2 levels and the venue's trade prints.

No I/O, no clock: every call carries the event time (the daemon's receive-time clock, ``ts_recv`` of the event
that drives it), so live and replay produce the same fills. The book is passed as plain levels
``(bids descending, asks ascending)`` of ``(price, qty)`` -- what ``OrderBook.depth(n)`` returns -- so the core is
testable without the book.

Fill model (the assumptions are the point, so they are listed):

* Market orders walk the opposite side level by level (one fill per level, taker fee). What the shown depth
  cannot fill is canceled (market orders are IOC): status PARTIALLY_FILLED is never left open for them.
* Limit orders that are marketable on arrival take liquidity as a taker at level prices up to the limit; the
  rest rests (GTC) at the limit price.
* A resting buy at ``P`` fills (maker fee, at ``P``) from a trade printed at a price ``< P``, or ``== P`` when
  ``fill_at_touch`` (the optimistic "front of the queue" assumption; set it False for "back of the queue": only a
  trade through the price fills). Each trade's size is shared out across our resting orders in price-time
  priority, so one trade never fills more than it printed. Sells mirror this.
* A resting buy is also filled when the book's ask crosses it (ask <= P): at ``P``, up to the size shown at
  asks <= P (maker). This covers recorded books that move through our price without a print we saw.
* Our paper orders do not remove liquidity from the recorded book: two market orders on the same snapshot both
  see the full depth.
* Latency: an order is inactive until ``ts + latency``; a market order then executes on the first book at or
  after that time, a limit order starts matching on trades/books at or after it.
* Stop-loss / take-profit are attached to a symbol's position and trigger on trade prices; the broker turns a
  trigger into a reduce-only market exit (``stop_intent``).

Client order ids are the identity of an order: submitting an id already known returns the known order and no
new fills (idempotent retries). Fill ids are ``f"{client_order_id}-{n}"``, n counting from 1 per order.
"""
from __future__ import annotations

import math
import re
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import msgspec

from market.events import Fill, OrderIntent, OrderStatus, OrderType, Side, Trade

__all__ = ["Levels", "Order", "OrderError", "Stops", "MatchingEngine", "walk_levels", "OPEN_STATUSES"]

Levels = tuple[Sequence[tuple[float, float]], Sequence[tuple[float, float]]]  # (bids desc, asks asc)
OPEN_STATUSES = (OrderStatus.NEW, OrderStatus.PARTIALLY_FILLED)
_COID_RE = re.compile(r"^[.A-Z:/a-z0-9_-]{1,36}$")  # Binance's newClientOrderId pattern
_EPS = 1e-9


class OrderError(ValueError):
    """An order refused before it exists (nothing is recorded). ``reason`` is a short label for counting."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class Order(msgspec.Struct, frozen=True):
    """The state of one order. ``avg_fill_price`` is 0.0 until something fills; ``n_fills`` numbers fill ids."""

    client_order_id: str
    symbol: str
    side: Side
    order_type: OrderType
    qty: float
    limit_price: float | None
    status: OrderStatus
    ts_created: int
    active_at: int
    ts_updated: int
    filled_qty: float = 0.0
    avg_fill_price: float = 0.0
    n_fills: int = 0
    reduce_only: bool = False
    reason: str = ""
    timeframe: str = ""
    active: bool = False  # has met the book (after its latency); only active orders match

    @property
    def remaining(self) -> float:
        r = self.qty - self.filled_qty
        return 0.0 if r <= _EPS * self.qty else r

    @property
    def is_open(self) -> bool:
        return self.status in OPEN_STATUSES


@dataclass(frozen=True)
class Stops:
    """Stop-loss / take-profit on one symbol's position; ``tag`` makes the exit's client order id."""

    symbol: str
    stop_loss: float | None
    take_profit: float | None
    tag: str


def walk_levels(levels: Sequence[tuple[float, float]], qty: float, side: Side,
                limit: float | None = None) -> list[tuple[float, float]]:
    """Take ``qty`` from the opposite side's levels (best first) -> ``[(price, qty)]``; stops at ``limit``."""
    out: list[tuple[float, float]] = []
    remaining = qty
    for price, size in levels:
        if remaining <= _EPS * qty:
            break
        if limit is not None and (price > limit if side == Side.BUY else price < limit):
            break
        if size <= 0:
            continue
        take = min(size, remaining)
        out.append((price, take))
        remaining -= take
    return out


def _is_multiple(x: float, step: float) -> bool:
    if step <= 0:
        return True
    n = round(x / step)
    return abs(n * step - x) <= 1e-9 * max(step, abs(x))


class MatchingEngine:
    """Order state machine + fill model for any number of symbols (see the module docstring)."""

    def __init__(self, *, taker_fee: float, maker_fee: float, latency_ns: int = 0, fill_at_touch: bool = True,
                 symbols: Iterable[str] | None = None, filters: Mapping[str, object] | None = None,
                 closed_memory: int = 10_000) -> None:
        self.taker_fee = taker_fee
        self.maker_fee = maker_fee
        self.latency_ns = int(latency_ns)
        self.fill_at_touch = fill_at_touch
        self.symbols = frozenset(symbols) if symbols is not None else None
        self.filters = dict(filters or {})  # symbol -> SymbolFilters-like (tick_size, lot_step, min_qty, ...)
        self.open: dict[str, Order] = {}
        self._closed: OrderedDict[str, Order] = OrderedDict()
        self._closed_memory = closed_memory
        self.stops: dict[str, Stops] = {}

    # ------------------------------------------------------------------------------------------ state
    def get(self, client_order_id: str) -> Order | None:
        return self.open.get(client_order_id) or self._closed.get(client_order_id)

    def restore(self, orders: Iterable[Order], stops: Iterable[Stops] = ()) -> None:
        """Load open orders and stops recovered from the store."""
        for o in orders:
            if o.is_open:
                self.open[o.client_order_id] = o
            else:
                self._remember_closed(o)
        for s in stops:
            self.stops[s.symbol] = s

    def _remember_closed(self, o: Order) -> None:
        self._closed[o.client_order_id] = o
        while len(self._closed) > self._closed_memory:
            self._closed.popitem(last=False)

    def _store(self, o: Order) -> Order:
        if o.is_open:
            self.open[o.client_order_id] = o
        else:
            self.open.pop(o.client_order_id, None)
            self._remember_closed(o)
        return o

    # ------------------------------------------------------------------------------------- validation
    def validate(self, intent: OrderIntent, levels: Levels | None = None) -> None:
        """Raise :class:`OrderError` for anything the venue would refuse (or that makes no sense)."""
        coid = intent.client_order_id
        if not isinstance(coid, str) or not _COID_RE.match(coid):
            raise OrderError("bad_client_order_id",
                             f"client_order_id {coid!r} must match {_COID_RE.pattern} (Binance newClientOrderId)")
        if self.symbols is not None and intent.symbol not in self.symbols:
            raise OrderError("unknown_symbol", f"order {coid}: unknown symbol {intent.symbol!r}; "
                             f"known: {', '.join(sorted(self.symbols))}")
        try:
            Side(intent.side)
        except ValueError:
            raise OrderError("bad_side", f"order {coid}: side must be BUY(+1) or SELL(-1), got {intent.side!r}") \
                from None
        q = intent.qty
        if not isinstance(q, (int, float)) or isinstance(q, bool) or not math.isfinite(q) or q <= 0:
            raise OrderError("bad_qty", f"order {coid}: qty must be a finite number > 0, got {q!r}")
        px = intent.limit_price
        if intent.order_type == OrderType.LIMIT:
            if px is None or not isinstance(px, (int, float)) or not math.isfinite(px) or px <= 0:
                raise OrderError("bad_price", f"order {coid}: limit price must be a finite number > 0, got {px!r}")
        elif intent.order_type == OrderType.MARKET:
            if px is not None:
                raise OrderError("bad_price", f"order {coid}: a market order takes no limit price (got {px!r})")
        else:
            raise OrderError("bad_type", f"order {coid}: unknown order type {intent.order_type!r}")
        f = self.filters.get(intent.symbol)
        if f is not None:
            if q < f.min_qty or (f.max_qty and q > f.max_qty) or not _is_multiple(q, f.lot_step):
                raise OrderError("lot_size", f"order {coid}: qty {q!r} violates LOT_SIZE (min {f.min_qty}, "
                                 f"max {f.max_qty}, step {f.lot_step})")
            if px is not None and not _is_multiple(px, f.tick_size):
                raise OrderError("tick_size", f"order {coid}: price {px!r} is not a multiple of tick {f.tick_size}")
            ref = px
            if ref is None and levels is not None:
                side_levels = levels[1] if intent.side == Side.BUY else levels[0]
                ref = side_levels[0][0] if side_levels else None
            if ref is not None and q * ref < f.min_notional:
                raise OrderError("min_notional", f"order {coid}: notional {q * ref:.8g} < min {f.min_notional}")

    # ------------------------------------------------------------------------------------------ orders
    def submit(self, intent: OrderIntent, levels: Levels | None, ts: int) -> tuple[Order, list[Fill], bool]:
        """-> ``(order, fills, is_new)``. A known client order id returns its order, no fills, ``is_new`` False."""
        known = self.get(intent.client_order_id)
        if known is not None:
            return known, [], False
        self.validate(intent, levels)
        order = Order(intent.client_order_id, intent.symbol, Side(intent.side), OrderType(intent.order_type),
                      float(intent.qty), None if intent.limit_price is None else float(intent.limit_price),
                      OrderStatus.NEW, ts, ts + self.latency_ns, ts, reduce_only=intent.reduce_only,
                      reason=intent.reason, timeframe=intent.timeframe)
        if self.latency_ns > 0 or levels is None:
            if levels is None and order.order_type == OrderType.MARKET and self.latency_ns == 0:
                raise OrderError("no_book", f"order {order.client_order_id}: market order needs a book")
            return self._store(order), [], True  # pending: activates on the first book at/after active_at
        order, fills = self._activate(order, levels, ts)
        return self._store(order), fills, True

    def cancel(self, client_order_id: str, ts: int) -> Order:
        o = self.open.get(client_order_id)
        if o is None:
            known = self.get(client_order_id)
            if known is None:
                raise OrderError("unknown_order", f"cancel: no order {client_order_id!r}")
            return known  # already closed: cancel is idempotent
        return self._store(msgspec.structs.replace(o, status=OrderStatus.CANCELED, ts_updated=ts))

    def _activate(self, order: Order, levels: Levels, ts: int) -> tuple[Order, list[Fill]]:
        """The order reaches the book: take what it can as a taker; market remainder is canceled."""
        order = msgspec.structs.replace(order, active=True, ts_updated=ts)
        opposite = levels[1] if order.side == Side.BUY else levels[0]
        takes = walk_levels(opposite, order.remaining, order.side,
                            order.limit_price if order.order_type == OrderType.LIMIT else None)
        order, fills = self._fill(order, takes, self.taker_fee, "taker", ts)
        if order.order_type == OrderType.MARKET and order.is_open:
            order = msgspec.structs.replace(order, status=OrderStatus.CANCELED, ts_updated=ts)
        return order, fills

    def _fill(self, order: Order, takes: list[tuple[float, float]], rate: float, liquidity: str,
              ts: int) -> tuple[Order, list[Fill]]:
        fills = []
        filled, notional, n = order.filled_qty, order.avg_fill_price * order.filled_qty, order.n_fills
        for price, q in takes:
            n += 1
            fills.append(Fill(f"{order.client_order_id}-{n}", order.client_order_id, order.symbol, order.side,
                              price, q, price * q * rate, liquidity, ts))
            filled += q
            notional += price * q
        if not fills:
            return order, fills
        status = OrderStatus.FILLED if order.qty - filled <= _EPS * order.qty else OrderStatus.PARTIALLY_FILLED
        return msgspec.structs.replace(order, filled_qty=filled, avg_fill_price=notional / filled, n_fills=n,
                                       status=status, ts_updated=ts), fills

    def _resting(self, symbol: str, ts: int) -> list[Order]:
        """Active open orders of ``symbol`` in price-time priority (best buy first, then best sell)."""
        rest = [o for o in self.open.values() if o.symbol == symbol and o.active_at <= ts]
        rest.sort(key=lambda o: (-o.side * (o.limit_price or 0.0), o.ts_created, o.client_order_id))
        return rest

    # ------------------------------------------------------------------------------------------ events
    def on_book(self, symbol: str, levels: Levels, ts: int) -> list[tuple[Order, list[Fill]]]:
        """A book update at ``ts``: activate orders whose latency elapsed; fill resting orders the book crosses."""
        out = []
        for o in self._resting(symbol, ts):
            if not o.active:  # first time this order meets the book after its latency
                new, fills = self._activate(o, levels, ts)
            elif o.order_type == OrderType.LIMIT:
                opposite = levels[1] if o.side == Side.BUY else levels[0]
                crossing = walk_levels(opposite, o.remaining, o.side, o.limit_price)
                avail = sum(q for _, q in crossing)
                takes = [(o.limit_price, min(avail, o.remaining))] if avail > 0 else []
                new, fills = self._fill(o, takes, self.maker_fee, "maker", ts)
            else:
                continue
            if new is not o and (fills or new.status != o.status or new.active != o.active):
                out.append((self._store(new), fills))
        return out

    def on_trade(self, trade: Trade, levels: Levels | None = None) -> list[tuple[Order, list[Fill]]]:
        """A venue trade print: resting limit orders it reaches fill (maker) up to the printed size in total."""
        ts = trade.ts_recv
        out = []
        if levels is not None and any(not o.active for o in self.open.values() if o.symbol == trade.symbol):
            out.extend(self.on_book(trade.symbol, levels, ts))
        available = trade.qty
        for o in self._resting(trade.symbol, ts):
            if available <= 0:
                break
            if o.order_type != OrderType.LIMIT or not o.active:
                continue
            lp = o.limit_price
            through = trade.price < lp if o.side == Side.BUY else trade.price > lp
            if not (through or (self.fill_at_touch and trade.price == lp)):
                continue
            q = min(o.remaining, available)
            available -= q
            new, fills = self._fill(o, [(lp, q)], self.maker_fee, "maker", ts)
            out.append((self._store(new), fills))
        return out

    # ------------------------------------------------------------------------------------------- stops
    def set_stops(self, symbol: str, stop_loss: float | None, take_profit: float | None, tag: str) -> Stops:
        for name, v in (("stop_loss", stop_loss), ("take_profit", take_profit)):
            if v is not None and not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise OrderError("bad_price", f"{symbol} {name} must be a finite number > 0, got {v!r}")
        if self.symbols is not None and symbol not in self.symbols:
            raise OrderError("unknown_symbol", f"stops: unknown symbol {symbol!r}")
        if not _COID_RE.match(f"{tag}-sl"):
            raise OrderError("bad_client_order_id", f"stops tag {tag!r} makes an invalid client order id")
        s = Stops(symbol, stop_loss, take_profit, tag)
        self.stops[symbol] = s
        return s

    def stop_intent(self, trade: Trade, position_qty: float) -> OrderIntent | None:
        """If ``trade`` triggers the stops on ``trade.symbol``'s position, the reduce-only market exit."""
        s = self.stops.get(trade.symbol)
        if s is None or position_qty == 0.0:
            return None
        p, long = trade.price, position_qty > 0
        hit_sl = s.stop_loss is not None and (p <= s.stop_loss if long else p >= s.stop_loss)
        hit_tp = s.take_profit is not None and (p >= s.take_profit if long else p <= s.take_profit)
        if not (hit_sl or hit_tp):
            return None
        kind = "sl" if hit_sl else "tp"
        return OrderIntent(f"{s.tag}-{kind}", trade.symbol, Side.SELL if long else Side.BUY, abs(position_qty),
                           reduce_only=True, reason="stop" if hit_sl else "take_profit", ts=trade.ts_recv)
