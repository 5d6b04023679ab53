"""Broker adapters the daemon calls. ``PaperBroker``: the matching core + portfolio + store.

Every change (a new order, fills, the positions and cash they move, stops, the caller's replay cursor) is ONE
transaction. Without a ``writer`` it is committed before the broker returns (what the strategy has been told
survives a crash); the in-memory portfolio is updated only after the commit succeeds. With a ``writer``
(daemon.storewriter, what the daemon uses) the transaction's statements are built here from the post-fill state
and committed in order by the writer thread, off the event loop: the store stays a consistent prefix and memory
leads it by the writer's queue (see that module for the contract). If the store fails the broker refuses further
work (``StoreError`` is "stop for a human"; a restart recovers from the store).

A venue's real order API (Binance spot testnet protocol) is ``daemon.binance.testnet.TestnetBroker`` (``broker.kind =
"testnet"``). Both satisfy :class:`Broker`, the one interface the pipeline and the app call, and pass one contract
suite (tests/daemon/test_broker_contract.py).
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import msgspec
import structlog

from daemon.config import BrokerConfig
from market.events import Fill, OrderIntent, OrderType, Side, Trade
from market.matching import Levels, MatchingEngine, Order, OrderError, Stops
from market.portfolio import Portfolio
from daemon.store import Store, StoreError, StoreUnavailable, execution_statements
from market.filters import SymbolFilters
from strategies.sizing import is_dust, sellable_qty

__all__ = ["Broker", "PaperBroker", "Execution", "OrderError", "BrokerHalted", "levels_of", "reduce_only"]

log = structlog.get_logger(__name__)


class BrokerHalted(RuntimeError):
    """The broker stopped after a store failure; restart (which recovers from the store)."""


@dataclass(frozen=True)
class Execution:
    """One order's new state and the fills that produced it (``is_new`` False for an idempotent replay)."""

    order: Order
    fills: tuple[Fill, ...] = ()
    is_new: bool = True


@runtime_checkable
class Broker(Protocol):
    """What the pipeline and the app need of a broker (paper or a venue's order API).

    The contract (tests/daemon/test_broker_contract.py runs it over every broker): fills are consistent with the
    book (a venue's may arrive later, from ``on_trade``/``on_book``); a known client order id returns that order
    unchanged (``is_new`` False); reduce-only orders are clipped to the position and floored to the lot, and what
    is left below one lot is refused as dust; after a store failure every call raises :class:`BrokerHalted`;
    each change is ONE store transaction (``daemon.store.execution_statements``), so the store's positions equal
    the sum of its fills and ``portfolio`` is what the store recovers."""

    cfg: BrokerConfig
    store: Store
    filters: Mapping[str, SymbolFilters] | None
    writer: Any  # daemon.storewriter.StoreWriter or None (commit on the caller's thread)
    portfolio: Portfolio
    stats: dict[str, int]
    cursor: str | None
    recovery_discrepancies: list[str]

    def submit(self, intent: OrderIntent, book: Any, ts: int, *, cursor: str | None = None) -> Execution: ...

    def cancel(self, client_order_id: str, ts: int, *, cursor: str | None = None) -> Order: ...

    def on_book(self, symbol: str, book: Any, ts: int, *, cursor: str | None = None) -> list[Execution]: ...

    def on_trade(self, trade: Trade, book: Any = None, *, cursor: str | None = None) -> list[Execution]: ...

    def set_stops(self, symbol: str, stop_loss: float | None, take_profit: float | None, tag: str,
                  *, cursor: str | None = None) -> Stops: ...

    def mark(self, prices: Mapping[str, float]) -> tuple[float, float]: ...

    def open_orders(self) -> list[Order]: ...


def levels_of(book: Any, depth: int) -> Levels | None:
    """Levels from an ``OrderBook`` (``depth(n)``; None unless tradeable) or a ``(bids, asks)`` pair."""
    if book is None:
        return None
    if hasattr(book, "depth"):
        if not getattr(book, "is_tradeable", True):
            return None
        return book.depth(depth)
    bids, asks = book
    return bids, asks


def admit(intent: OrderIntent, known: Order | None, book: Any, depth: int,
          stats: Any) -> tuple[Execution | None, Levels | None]:
    """The submit prelude both brokers share: a client order id already known returns that order unchanged
    (an idempotent retry, ``(Execution, None)``); a market order on a book known not to be synced is refused
    before anything is written; otherwise ``(None, levels)`` of ``book``."""
    if known is not None:
        stats["duplicates"] += 1
        return Execution(known, (), False), None
    levels = levels_of(book, depth)
    if intent.order_type == OrderType.MARKET and levels is None and book is not None:
        stats["rejected"] += 1
        raise OrderError("book_not_tradeable", f"order {intent.client_order_id}: the book is not synced")
    return None, levels


def raise_if_halted(broker: Any, name: str) -> None:
    """Paper and testnet brokers alike refuse all work after a store (or store-writer) failure."""
    if not broker.halted:
        w = broker.writer
        if w is None or w.error is None:
            return
        broker.halted = f"store writer failed: {w.error}"
    raise BrokerHalted(f"{name} broker halted after a store failure: {broker.halted}")


def reduce_only(intent: OrderIntent, pos: float, filters: Any = None) -> OrderIntent:
    """A reduce-only order against the signed position ``pos``: refused unless it reduces it, clipped to it and,
    with the symbol's ``filters``, floored to the lot step (a position net of a base-asset commission is off the
    grid; what is left below one lot is dust, see :func:`strategies.sizing.is_dust`)."""
    if pos == 0.0 or (pos > 0) == (intent.side == Side.BUY):
        raise OrderError("reduce_only", f"order {intent.client_order_id}: reduce-only but it would not "
                         f"reduce the {intent.symbol} position ({pos!r})")
    qty = intent.qty
    if math.isfinite(qty) and qty > abs(pos):
        qty = abs(pos)
    if filters is not None and math.isfinite(qty) and qty > 0:
        if is_dust(qty, filters):
            raise OrderError("dust", f"order {intent.client_order_id}: {qty!r} {intent.symbol} is below one lot "
                             f"(step {filters.lot_step}, min qty {filters.min_qty}): the venue cannot sell it")
        qty = sellable_qty(qty, filters.lot_step)
    return intent if qty == intent.qty else msgspec.structs.replace(intent, qty=qty)


@dataclass
class PaperBroker:
    """Paper trading against the live (or replayed) book. Recovers its state from ``store`` on construction."""

    cfg: BrokerConfig
    store: Store
    symbols: tuple[str, ...] | None = None
    filters: Mapping[str, Any] | None = None
    writer: Any = None  # daemon.storewriter.StoreWriter: commit off the caller's thread (write-behind)
    portfolio: Portfolio = field(init=False)
    recovery_discrepancies: list[str] = field(init=False)
    stats: dict[str, int] = field(init=False)

    def __post_init__(self) -> None:
        self.engine = MatchingEngine(taker_fee=self.cfg.taker_fee, maker_fee=self.cfg.maker_fee,
                                     latency_ns=int(round(self.cfg.latency_ms * 1_000_000)),
                                     fill_at_touch=self.cfg.fill_at_touch, symbols=self.symbols,
                                     filters=self.filters)
        rec = self.store.recover(self.cfg.starting_cash)
        self.portfolio = rec.portfolio
        self.recovery_discrepancies = rec.discrepancies
        self.cursor = rec.cursor
        self.engine.restore(rec.open_orders, rec.stops)
        self.stats = {"rejected": 0, "orders": 0, "fills": 0, "stops_triggered": 0, "stops_deferred": 0,
                      "stops_refused": 0,
                      "duplicates": 0}
        self.halted: str | None = None
        log.info("paper_broker_recovered", open_orders=len(rec.open_orders), fills=self.portfolio.n_fills,
                 cash=self.portfolio.cash, discrepancies=len(rec.discrepancies), cursor=rec.cursor)

    # ------------------------------------------------------------------------------------------- API
    def submit(self, intent: OrderIntent, book: Any, ts: int, *, cursor: str | None = None) -> Execution:
        """Place an order at ``ts`` against ``book`` (an OrderBook or ``(bids, asks)`` levels).

        A client order id already known (this session or in the store) returns that order, unchanged.
        A bad order raises :class:`OrderError` and nothing is written."""
        self._check_halted()
        try:
            known = self.engine.get(intent.client_order_id) or self.store.get_order(intent.client_order_id)
        except StoreUnavailable as e:  # the id's history is unknowable now: refuse (counted), never guess
            raise OrderError("store_unavailable", str(e)) from None
        dup, levels = admit(intent, known, book, self.cfg.book_depth, self.stats)
        if dup is not None:
            return dup
        try:
            if intent.reduce_only:  # a refused reduce-only order is a rejection too (as in the testnet broker)
                intent = self._reduce_only(intent)
            order, fills, _ = self.engine.submit(intent, levels, ts)
        except OrderError:
            self.stats["rejected"] += 1
            raise
        self.stats["orders"] += 1
        return self._commit([(order, fills)], cursor=cursor)[0]

    def cancel(self, client_order_id: str, ts: int, *, cursor: str | None = None) -> Order:
        self._check_halted()
        before = self.engine.get(client_order_id)
        if before is None:  # closed long ago: the store knows it (cancel of a closed order is a no-op)
            stored = self.store.get_order(client_order_id)
            if stored is not None:
                return stored
        o = self.engine.cancel(client_order_id, ts)
        if before is not None and before.is_open:
            self._commit([(o, [])], cursor=cursor)
        return o

    def on_book(self, symbol: str, book: Any, ts: int, *, cursor: str | None = None) -> list[Execution]:
        """A book update: activates latency-delayed orders and fills resting orders the book crosses."""
        self._check_halted()
        levels = levels_of(book, self.cfg.book_depth)
        if levels is None or not self.engine.open:
            return []
        return self._commit(self.engine.on_book(symbol, levels, ts), cursor=cursor)

    def on_trade(self, trade: Trade, book: Any = None, *, cursor: str | None = None) -> list[Execution]:
        """A venue trade: fills resting limit orders, then checks stops (exit = market order on ``book``).

        Everything one trade causes commits in ONE transaction, so a crash never keeps half of it."""
        self._check_halted()
        sym = trade.symbol
        pending = any(not o.active for o in self.engine.open.values() if o.symbol == sym)
        levels = levels_of(book, self.cfg.book_depth) if pending else None  # the book walk is not free
        results = self.engine.on_trade(trade, levels) if self.engine.open else []
        pos = self.portfolio.qty(sym)
        if sym in self.engine.stops and results:
            after = self.portfolio.copy()
            for _, fills in results:
                for f in fills:
                    after.apply_fill(f)
            pos = after.qty(sym)
        intent = self.engine.stop_intent(trade, pos)
        stop_change: dict[str, Stops | None] = {}
        if intent is not None:
            levels = levels if levels is not None else levels_of(book, self.cfg.book_depth)
            if levels is None:
                self.stats["stops_deferred"] += 1  # no tradeable book: try again on the next trade
            else:
                self.engine.stops.pop(sym, None)
                stop_change[sym] = None
                try:
                    intent = reduce_only(intent, pos, self.engine.filters.get(sym))
                    order, fills, _ = self.engine.submit(intent, levels, trade.ts_recv)
                except OrderError as e:
                    # e.g. the dust left is below min notional: the stops are dropped (in the store too, below),
                    # not retried on every trade, and this trade's resting fills still commit
                    self.stats["stops_refused"] += 1
                    log.warning("stop_exit_refused", symbol=sym, reason=e.reason, error=str(e))
                else:
                    self.stats["stops_triggered"] += 1
                    results.append((order, fills))
        return self._commit(results, cursor=cursor, stops=stop_change)

    def set_stops(self, symbol: str, stop_loss: float | None, take_profit: float | None, tag: str,
                  *, cursor: str | None = None) -> Stops:
        """Attach stops to ``symbol``'s position (replacing earlier ones); exit ids are ``tag-sl`` / ``tag-tp``."""
        self._check_halted()
        s = self.engine.set_stops(symbol, stop_loss, take_profit, tag)
        self._commit([], cursor=cursor, stops={symbol: s})
        return s

    def mark(self, prices: Mapping[str, float]) -> tuple[float, float]:
        return self.portfolio.mark(prices)

    def open_orders(self) -> list[Order]:
        return list(self.engine.open.values())

    # -------------------------------------------------------------------------------------- internals
    def _check_halted(self) -> None:
        raise_if_halted(self, "paper")

    def _reduce_only(self, intent: OrderIntent) -> OrderIntent:
        return reduce_only(intent, self.portfolio.qty(intent.symbol), self.engine.filters.get(intent.symbol))

    def _commit(self, results: list[tuple[Order, list[Fill]]], *, cursor: str | None,
                stops: Mapping[str, Stops | None] | None = None) -> list[Execution]:
        if not results and not stops:
            return []  # no state change, nothing to make durable (the cursor may lag: replay is idempotent)
        pf = self.portfolio.copy()
        all_fills: list[Fill] = []
        realised: list[float] = []
        latest: dict[str, Order] = {}
        for order, fills in results:
            latest[order.client_order_id] = order
            for f in fills:
                realised.append(pf.apply_fill(f))
                all_fills.append(f)
        # a position that went flat drops its stops
        stop_changes = dict(stops or {})
        for sym in {f.symbol for f in all_fills}:
            if pf.qty(sym) == 0.0 and sym in self.engine.stops:
                self.engine.stops.pop(sym)
                stop_changes[sym] = None
        try:
            if self.writer is None:
                self.store.commit_execution(list(latest.values()), all_fills, realised, pf, stops=stop_changes,
                                            cursor=cursor)
            else:
                self.writer.write_statements(execution_statements(
                    list(latest.values()), all_fills, realised, pf, stops=stop_changes, cursor=cursor,
                    quote_asset=getattr(self.store, "quote_asset", self.cfg.quote_asset)))
        except StoreError as e:
            self.halted = str(e)
            log.error("paper_broker_halted", error=str(e))
            raise
        self.portfolio = pf
        if cursor is not None:
            self.cursor = cursor
        self.stats["fills"] += len(all_fills)
        return [Execution(o, tuple(f), True) for o, f in results]
