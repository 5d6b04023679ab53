"""Binance spot (testnet) order adapter: a broker with PaperBroker's interface over the signed REST client.

The signed REST client it talks through (:class:`daemon.binance.rest.BinanceRestClient`: signing, clock offset,
retries, idempotent order placement) lives in :mod:`daemon.binance.rest`.

``TestnetBroker`` keeps PaperBroker's contract with the pipeline (``submit``/``cancel``/``on_trade``/``on_book``/
``set_stops``/``portfolio``/``open_orders``/``stats``/``cursor``) on top of a venue that answers later:

* ``submit`` is synchronous and write-ahead: the order is committed to the store as NEW (with a writer: the
  send waits until that transaction is durable) BEFORE it is sent, from an asyncio task; it returns the open order
  with no fills.
* What the venue answers (fills from the POST's FULL response, later fills of resting orders found by polling
  ``GET /api/v3/order`` + ``GET /api/v3/myTrades``, cancels, rejections) is queued and delivered as
  :class:`daemon.broker.Execution` objects from the NEXT ``on_trade``/``on_book`` call; each execution is ONE
  store transaction (order row, its new fills, positions, balance), so positions always equal the sum of fills.
  A venue rejection arrives as a REJECTED order with no fills (the pipeline tells the strategy it is done).
* Restart: orders NEW/PARTIALLY_FILLED in the store are reconciled by ``GET /api/v3/order``: fills made while we
  were down come from ``myTrades`` (deduplicated by trade id: fill ids are ``<clientOrderId>-<tradeId>``); an
  order the venue never saw (-2013) is marked REJECTED. Venue open orders the store does not know are reported
  as discrepancies (never touched).
* Stops/take-profits are local, as in PaperBroker (a trigger sends a reduce-only market order).
* Fees: ``commissionAsset`` == the symbol's quote asset is the fee; a base-asset commission (what Binance charges
  a buy without BNB) is ``Fill.fee_qty`` and valued at the fill price in ``Fill.fee``: the position is what the
  venue account holds (qty - commission), the order's filled quantity is what the venue executed. A commission in
  a third asset (BNB) is recorded as 0 and counted (``fees_unpriced``).
* Exits are floored to the lot step (a position net of a base commission is off the grid); a remainder below
  one lot or the min notional (``strategies.sizing.is_dust``) cannot be sold and is not a position the strategy
  manages. A spot account cannot be short: ``optimizer.allow_short`` is refused with this broker (config).
"""
from __future__ import annotations

import asyncio
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import msgspec
import structlog

from daemon.broker import BrokerHalted, Execution, admit, levels_of, raise_if_halted, reduce_only
from daemon.config import BrokerConfig
from market.events import Fill, OrderIntent, OrderStatus, OrderType, Side, Trade
from market.matching import MatchingEngine, Order, OrderError, Stops
from market.portfolio import Portfolio
from daemon.store import Store, StoreError, StoreUnavailable, execution_statements
from daemon.binance.rest import AUTH_ERROR_CODES, BinanceApiError, BinanceRestClient, OutcomeUnknown, fmt_step
from strategies.sizing import is_dust

__all__ = ["TestnetError", "TestnetBroker"]

log = structlog.get_logger(__name__)

_STATUS = {"NEW": OrderStatus.NEW, "PARTIALLY_FILLED": OrderStatus.PARTIALLY_FILLED,
           "FILLED": OrderStatus.FILLED, "CANCELED": OrderStatus.CANCELED, "EXPIRED": OrderStatus.CANCELED,
           "EXPIRED_IN_MATCH": OrderStatus.CANCELED, "REJECTED": OrderStatus.REJECTED}
UNKNOWN_GRACE_MS = 5000  # + recvWindow: after that the venue refuses any late copy of an unanswered order
_QUOTES = ("USDT", "USDC", "FDUSD", "BUSD", "TUSD", "BTC", "ETH", "BNB")


class TestnetError(RuntimeError):
    """The adapter cannot work (credentials refused, venue unreachable at start): needs a human."""

    __test__ = False  # not a pytest test class


# ================================================================================================= broker
@dataclass
class _Delta:
    """What the venue said about one order: its status and the fills we had not seen."""

    coid: str
    status: str  # Binance status string, or "" for "unchanged"
    fills: list[Fill]
    ts: int
    reason: str = ""
    executed: float | None = None  # venue executedQty (None: unknown)


@dataclass
class TestnetBroker:
    """Broker on a Binance-protocol order API (see the module docstring). Call :meth:`run` (or ``start``) on
    the event loop; ``submit`` must be called on the loop's thread."""

    __test__ = False  # not a pytest test class

    cfg: BrokerConfig
    store: Store
    client: BinanceRestClient
    symbols: tuple[str, ...] | None = None
    filters: Mapping[str, Any] | None = None
    writer: Any = None
    poll_interval_s: float = 0.5
    portfolio: Portfolio = field(init=False)
    recovery_discrepancies: list[str] = field(init=False)
    stats: dict[str, int] = field(init=False)

    def __post_init__(self) -> None:
        self.engine = MatchingEngine(taker_fee=self.cfg.taker_fee, maker_fee=self.cfg.maker_fee,
                                     symbols=self.symbols, filters=self.filters)  # validation + stops only
        rec = self.store.recover(self.cfg.starting_cash)
        self.portfolio = rec.portfolio
        self.recovery_discrepancies = list(rec.discrepancies)
        self.cursor = rec.cursor
        self.engine.restore([], rec.stops)
        self.orders: dict[str, Order] = {o.client_order_id: o for o in rec.open_orders}  # open + in flight
        self._closed: OrderedDict[str, Order] = OrderedDict()
        self._to_reconcile = list(rec.open_orders)
        self._fill_ids: dict[str, set[str]] = {}  # open orders: fill ids committed or queued
        self._venue_ids: dict[str, int] = {}
        self._inbox: deque[_Delta] = deque()
        self._tasks: set[asyncio.Task] = set()
        self._ready = asyncio.Event()
        self.halted: str | None = None
        self.last_error: str | None = None
        self.recovered: list[Execution] = []
        self.stats = {"rejected": 0, "orders": 0, "fills": 0, "stops_triggered": 0, "stops_deferred": 0,
                      "stops_refused": 0,
                      "duplicates": 0, "venue_rejected": 0, "sent": 0, "polls": 0, "reconciled": 0,
                      "unknown_outcome": 0, "late_updates": 0, "cancels": 0, "unknown_pending": 0,
                      "poll_errors": 0}
        self._unknown_at: dict[str, int] = {}  # coid -> local ms when its send ended with an unknown outcome
        log.info("testnet_broker_recovered", open_orders=len(rec.open_orders), fills=self.portfolio.n_fills,
                 cash=self.portfolio.cash, discrepancies=len(rec.discrepancies), venue=self.client.base_url)

    # ------------------------------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        """Session + clock sync, credential check (GET /api/v3/account), then restart reconciliation."""
        try:
            await self.client.start()
        except Exception as e:  # noqa: BLE001
            raise TestnetError(f"venue {self.client.base_url} unreachable: {type(e).__name__}: {e}") from None
        try:
            acct = await self.client.account()
        except BinanceApiError as e:
            raise TestnetError(f"venue {self.client.base_url} refused our API credentials: {e}") from None
        if not acct.get("canTrade", True):
            raise TestnetError(f"venue {self.client.base_url}: this API key cannot trade (canTrade false)")
        await self._reconcile_store()
        self._ready.set()
        log.info("testnet_broker_ready", venue=self.client.base_url, reconciled=self.stats["reconciled"],
                 open_orders=len(self.orders))

    @property
    def is_ready(self) -> bool:
        """Reconciled with the venue (after :meth:`start`): orders may be sent."""
        return self._ready.is_set()

    async def wait_ready(self) -> None:
        await self._ready.wait()

    async def run(self) -> None:
        """start(), then poll the venue for what happens to open orders; closes the client when cancelled."""
        try:
            await self.start()
            while True:
                await asyncio.sleep(self.poll_interval_s)
                await self.poll_once()
        finally:
            for t in list(self._tasks):
                t.cancel()
            await self.client.close()

    async def close(self) -> None:
        for t in list(self._tasks):
            t.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=5)
        await self.client.close()

    def in_flight(self) -> list[str]:
        """Client ids whose outcome the venue has not told us yet: a send/cancel in progress, a market order
        still open, or an answer queued but not yet delivered (shutdown waits on these; a resting limit order
        is not in flight, it may rest for days)."""
        ids = {t.get_name().split("-", 1)[1] for t in self._tasks}
        ids.update(c for c, o in self.orders.items() if o.order_type == OrderType.MARKET)
        ids.update(d.coid for d in self._inbox)
        return sorted(ids)

    async def idle(self, timeout: float = 10.0) -> bool:
        """Wait until no send/cancel task is in flight (tests, shutdown). False on timeout."""
        end = time.monotonic() + timeout
        while self._tasks and time.monotonic() < end:
            await asyncio.wait(list(self._tasks), timeout=max(0.0, end - time.monotonic()))
        return not self._tasks

    # ------------------------------------------------------------------------------------------ API
    def submit(self, intent: OrderIntent, book: Any, ts: int, *, cursor: str | None = None) -> Execution:
        """Validate, persist as NEW, then send from a task. Returns the open order (no fills yet); fills come
        from later on_trade/on_book calls. A known client order id returns that order unchanged."""
        return self._submit(intent, book, ts, cursor=cursor, stops=None)

    def _submit(self, intent: OrderIntent, book: Any, ts: int, *, cursor: str | None,
                stops: Mapping[str, Stops | None] | None) -> Execution:
        self._check_halted()
        coid = intent.client_order_id
        try:
            known = self.orders.get(coid) or self._closed.get(coid) or self.store.get_order(coid)
        except StoreUnavailable as e:  # the id's history is unknowable now: refuse (counted), never guess
            raise OrderError("store_unavailable", str(e)) from None
        dup, levels = admit(intent, known, book, self.cfg.book_depth, self.stats)
        if dup is not None:
            return dup
        try:
            if intent.reduce_only:
                intent = self._reduce_only(intent)
            self.engine.validate(intent, levels)
        except OrderError:
            self.stats["rejected"] += 1
            raise
        order = Order(coid, intent.symbol, Side(intent.side), OrderType(intent.order_type), float(intent.qty),
                      None if intent.limit_price is None else float(intent.limit_price), OrderStatus.NEW, ts, ts,
                      ts, reduce_only=intent.reduce_only, reason=intent.reason, timeframe=intent.timeframe)
        durable = self._write_ahead(order, cursor=cursor, stops=stops)
        self.orders[coid] = order
        self._fill_ids[coid] = set()
        self.stats["orders"] += 1
        if cursor is not None:
            self.cursor = cursor
        self._spawn(self._send(order, durable), f"send-{coid}")
        return Execution(order, (), True)

    def cancel(self, client_order_id: str, ts: int, *, cursor: str | None = None) -> Order:
        """Ask the venue to cancel; the CANCELED state arrives as an Execution from a later on_trade/on_book.
        Returns the order as known now (a closed order: unchanged, cancel is a no-op)."""
        self._check_halted()
        o = self.orders.get(client_order_id)
        if o is None:
            known = self._closed.get(client_order_id) or self.store.get_order(client_order_id)
            if known is None:
                raise OrderError("unknown_order", f"cancel: no order {client_order_id!r}")
            return known
        self.stats["cancels"] += 1
        self._spawn(self._cancel(o), f"cancel-{client_order_id}")
        return o

    def on_book(self, symbol: str, book: Any, ts: int, *, cursor: str | None = None) -> list[Execution]:
        """Deliver what the venue answered since the last call (each one committed)."""
        self._check_halted()
        return self._drain(cursor)

    def on_trade(self, trade: Trade, book: Any = None, *, cursor: str | None = None) -> list[Execution]:
        """Deliver venue answers, then check local stops (a trigger sends a reduce-only market exit)."""
        self._check_halted()
        out = self._drain(cursor)
        sym = trade.symbol
        pos = self.portfolio.qty(sym)
        intent = self.engine.stop_intent(trade, pos)
        if intent is not None:
            if any(o.symbol == sym and o.reduce_only for o in self.orders.values()):
                return out  # an exit is already in flight
            levels = levels_of(book, self.cfg.book_depth)
            if levels is None and book is not None:
                self.stats["stops_deferred"] += 1
                return out
            self.engine.stops.pop(sym, None)
            try:
                ex = self._submit(intent, book, trade.ts_recv, cursor=cursor, stops={sym: None})
            except OrderError as e:  # e.g. below min notional: the stops are dropped (not retried every trade),
                # in the store too (a restart must not re-arm them)
                self.stats["stops_refused"] += 1
                log.warning("stop_exit_refused", symbol=sym, reason=e.reason, error=str(e))
                self._commit([], [], [], self.portfolio, {sym: None}, cursor)
                return out
            self.stats["stops_triggered"] += 1
            out.append(ex)
        return out

    def set_stops(self, symbol: str, stop_loss: float | None, take_profit: float | None, tag: str,
                  *, cursor: str | None = None) -> Stops:
        self._check_halted()
        s = self.engine.set_stops(symbol, stop_loss, take_profit, tag)
        self._commit([], [], [], self.portfolio, {symbol: s}, cursor)
        return s

    def mark(self, prices: Mapping[str, float]) -> tuple[float, float]:
        return self.portfolio.mark(prices)

    def open_orders(self) -> list[Order]:
        return list(self.orders.values())

    # ------------------------------------------------------------------------------------------ venue I/O
    def _spawn(self, coro: Awaitable[None], name: str) -> None:
        t = asyncio.get_running_loop().create_task(coro, name=name)  # type: ignore[arg-type]
        self._tasks.add(t)
        t.add_done_callback(self._task_done)

    def _task_done(self, t: asyncio.Task) -> None:
        self._tasks.discard(t)
        if not t.cancelled() and t.exception() is not None:
            log.error("testnet_task_failed", task=t.get_name(), error=repr(t.exception()))

    async def _durable(self, durable: asyncio.Future | None) -> None:
        while durable is not None and not durable.done():
            if self.writer is not None and self.writer.error is not None:
                raise BrokerHalted(f"store writer failed before the order was durable: {self.writer.error}")
            await asyncio.wait({durable}, timeout=0.1)

    async def _send(self, order: Order, durable: asyncio.Future | None) -> None:
        await self._durable(durable)  # write-ahead: nothing goes out before the NEW row is on disk
        await self._ready.wait()
        f = (self.filters or {}).get(order.symbol)
        qty = fmt_step(order.qty, getattr(f, "lot_step", None))
        price = fmt_step(order.limit_price, getattr(f, "tick_size", None)) if order.limit_price is not None else None
        side = "BUY" if order.side == Side.BUY else "SELL"
        self.stats["sent"] += 1
        try:
            resp = await self.client.place_order(order.symbol, side, order.order_type.value, qty, price,
                                                 order.client_order_id)
        except BinanceApiError as e:
            self.stats["venue_rejected"] += 1
            self.last_error = str(e)
            level = log.error if e.code in AUTH_ERROR_CODES else log.warning
            level("testnet_order_rejected", coid=order.client_order_id, code=e.code, msg=e.msg,
                  hint=AUTH_ERROR_CODES.get(e.code, ""))
            self._inbox.append(_Delta(order.client_order_id, "REJECTED", [], order.ts_updated,
                                      reason=f"{e.code}: {e.msg}"))
            return
        except (OutcomeUnknown, OSError, asyncio.TimeoutError, aiohttp.ClientError) as e:
            self._unknown_at[order.client_order_id] = time.time_ns() // 1_000_000
            self.stats["unknown_outcome"] += 1  # the poll loop asks the venue about it later
            log.error("order_outcome_unknown", coid=order.client_order_id, error=str(e))
            return
        self._venue_ids[order.client_order_id] = int(resp["orderId"])
        self._inbox.append(self._delta(order, resp, taker_default=True))

    async def _cancel(self, order: Order) -> None:
        await self._ready.wait()
        coid = order.client_order_id
        try:
            resp = await self.client.cancel_order(order.symbol, coid)
        except BinanceApiError as e:
            log.warning("cancel_refused", coid=coid, code=e.code, msg=e.msg)
            return
        # whatever the cancel said, the order's own state (+ any fills before the cancel) is the truth
        await self._refresh(order, known=resp)

    async def _refresh(self, order: Order, known: dict | None = None) -> None:
        """Ask the venue about one order; queue a delta with the fills we had not seen."""
        coid = order.client_order_id
        v = await self.client.get_order(order.symbol, coid)
        if v is None:
            if coid in self._venue_ids:
                log.error("venue_lost_order", coid=coid)
                return
            # a request whose outcome was unknown can still execute until its timestamp is older than
            # recvWindow (the venue refuses it after that): only then is "not found" final
            last = self._unknown_at.get(coid, order.ts_created // 1_000_000)
            if time.time_ns() // 1_000_000 - last < self.client.recv_window_ms + UNKNOWN_GRACE_MS:
                self.stats["unknown_pending"] += 1
                return
            self._inbox.append(_Delta(coid, "REJECTED", [], order.ts_updated, reason="never reached the venue"))
            return
        self._venue_ids[coid] = int(v["orderId"])
        executed = float(v["executedQty"])
        fills: list[dict] = []
        if executed > 0 and self._seen_qty(order) < executed * (1 - 1e-9):
            fills = [{"price": t["price"], "qty": t["qty"], "commission": t["commission"],
                      "commissionAsset": t["commissionAsset"], "tradeId": t["id"], "isMaker": t["isMaker"],
                      "time": t["time"]} for t in await self.client.my_trades(order.symbol, int(v["orderId"]))]
        d = self._delta(order, {**v, "fills": fills}, taker_default=False)
        if d.fills or _STATUS.get(d.status, order.status) != order.status:
            self._inbox.append(d)

    def _seen_qty(self, order: Order) -> float:
        """Filled quantity known locally (committed + queued)."""
        queued = sum(f.qty for d in self._inbox if d.coid == order.client_order_id for f in d.fills)
        cur = self.orders.get(order.client_order_id, order)
        return cur.filled_qty + queued

    def _delta(self, order: Order, v: dict, *, taker_default: bool) -> _Delta:
        coid = order.client_order_id
        seen = self._fill_ids.setdefault(coid, set())
        fills = []
        ts_default = int(v.get("transactTime") or v.get("updateTime") or 0) * 1_000_000 or order.ts_updated
        base, quote = self._assets(order.symbol)
        for x in v.get("fills") or []:
            fid = f"{coid}-{x['tradeId']}"
            if fid in seen:
                continue
            seen.add(fid)
            price, qty, comm = float(x["price"]), float(x["qty"]), float(x["commission"])
            asset = x.get("commissionAsset", quote)
            fee_qty = 0.0
            if asset == quote:
                fee = comm
            elif asset == base:  # the venue kept part of what the buy received: the holding is qty - comm
                fee, fee_qty = comm * price, comm
            else:  # e.g. BNB: no price for it here; the fee is recorded as 0 and counted
                fee = 0.0
                if comm > 0:
                    self.stats["fees_unpriced"] += 1
                    log.warning("commission_asset_unpriced", coid=coid, asset=asset, commission=comm)
            maker = bool(x.get("isMaker", not taker_default))
            ts = int(x["time"]) * 1_000_000 if x.get("time") else ts_default
            fills.append(Fill(fid, coid, order.symbol, order.side, price, qty, fee, "maker" if maker else "taker",
                              ts, fee_qty))
        return _Delta(coid, str(v.get("status", "")), fills, ts_default, executed=float(v.get("executedQty", 0)))

    async def poll_once(self) -> None:
        """Refresh every open order (resting limits fill at the venue while we wait)."""
        if not self._ready.is_set():
            return
        busy = {t.get_name().split("-", 1)[1] for t in self._tasks}  # "send-<coid>", "cancel-<coid>"
        for coid, o in list(self.orders.items()):
            if coid in busy:
                continue  # its send/cancel is in flight; an order whose send ended unanswered is polled
            self.stats["polls"] += 1
            try:
                await self._refresh(o)
            except (BinanceApiError, OSError, asyncio.TimeoutError, aiohttp.ClientError, ValueError,
                    KeyError) as e:
                self.stats["poll_errors"] += 1
                log.warning("poll_failed", coid=coid, error=f"{type(e).__name__}: {e}")

    async def _reconcile_store(self) -> None:
        """Restart: orders open in the store are asked about; venue open orders we do not know are reported."""
        if self._to_reconcile:
            stored = {}
            for f in self.store.fills():
                if f.client_order_id in self.orders:
                    stored.setdefault(f.client_order_id, set()).add(f.fill_id)
            for o in self._to_reconcile:
                self._fill_ids[o.client_order_id] = stored.get(o.client_order_id, set())
                await self._refresh(o)
                self.stats["reconciled"] += 1
            self._to_reconcile = []
            self.recovered = self._drain(None)
            for ex in self.recovered:
                log.info("reconciled_order", coid=ex.order.client_order_id, status=ex.order.status.value,
                         fills=len(ex.fills))
        for sym in self.symbols or ():
            try:
                venue_open = await self.client.open_orders(sym)
            except BinanceApiError as e:
                log.warning("open_orders_failed", symbol=sym, error=str(e))
                continue
            for v in venue_open:
                coid = v.get("clientOrderId", "")
                if coid not in self.orders and self.store.get_order(coid) is None:
                    msg = f"venue order {coid} ({sym}) is open at the venue but unknown to the store"
                    self.recovery_discrepancies.append(msg)
                    log.error("venue_unknown_open_order", problem=msg)

    # ------------------------------------------------------------------------------------------ commits
    def _drain(self, cursor: str | None) -> list[Execution]:
        out = []
        while self._inbox:
            d = self._inbox.popleft()
            ex = self._apply(d, cursor)
            if ex is not None:
                out.append(ex)
        return out

    def _apply(self, d: _Delta, cursor: str | None) -> Execution | None:
        o = self.orders.get(d.coid)
        if o is None:
            self.stats["late_updates"] += 1
            return None
        filled, notional, n = o.filled_qty, o.avg_fill_price * o.filled_qty, o.n_fills
        for f in d.fills:
            filled += f.qty
            notional += f.price * f.qty
            n += 1
        status = _STATUS.get(d.status, o.status)  # PENDING_CANCEL / "": unchanged
        if status == OrderStatus.FILLED and filled < o.qty * (1 - 1e-9):
            status = OrderStatus.PARTIALLY_FILLED  # the venue says filled but fills are missing: poll again
        elif (status in (OrderStatus.CANCELED, OrderStatus.REJECTED) and d.executed is not None
              and filled < d.executed * (1 - 1e-9)):
            status = OrderStatus.PARTIALLY_FILLED  # ended at the venue, but trades we have not seen: poll again
        if status == OrderStatus.NEW and filled > 0:
            status = OrderStatus.PARTIALLY_FILLED
        ts = max(o.ts_updated, d.ts, *(f.ts for f in d.fills))
        new = msgspec.structs.replace(o, status=status, filled_qty=filled, n_fills=n, ts_updated=ts,
                                      avg_fill_price=notional / filled if filled > 0 else 0.0,
                                      active=o.active or d.status not in ("", "REJECTED"))
        if new == o and not d.fills:
            return None
        if status == OrderStatus.REJECTED:
            self.stats["rejected"] += 1
            log.warning("order_rejected_by_venue", coid=d.coid, reason=d.reason)
        pf = self.portfolio.copy()
        realised = [pf.apply_fill(f) for f in d.fills]
        stop_changes: dict[str, Stops | None] = {}
        left = pf.qty(o.symbol)
        if d.fills and (left == 0.0 or is_dust(left, self.engine.filters.get(o.symbol), d.fills[-1].price)) \
                and o.symbol in self.engine.stops:
            self.engine.stops.pop(o.symbol)
            stop_changes[o.symbol] = None
        self._commit([new], d.fills, realised, pf, stop_changes, cursor)
        self.portfolio = pf
        if cursor is not None:
            self.cursor = cursor
        self.stats["fills"] += len(d.fills)
        if new.is_open:
            self.orders[d.coid] = new
        else:
            self.orders.pop(d.coid, None)
            self._fill_ids.pop(d.coid, None)
            self._venue_ids.pop(d.coid, None)
            self._closed[d.coid] = new
            while len(self._closed) > 10_000:
                self._closed.popitem(last=False)
        return Execution(new, tuple(d.fills), True)

    def _write_ahead(self, order: Order, *, cursor: str | None,
                     stops: Mapping[str, Stops | None] | None) -> asyncio.Future | None:
        """Commit the NEW order row (+ stop changes); with a writer, a future done when it is durable."""
        if self.writer is None:
            self._commit([order], [], [], self.portfolio, stops, cursor)
            return None
        stmts = execution_statements([order], [], [], self.portfolio, stops=stops, cursor=cursor,
                                     quote_asset=self._quote_asset())
        loop = asyncio.get_running_loop()
        fut = loop.create_future()

        def job(store: Any) -> None:
            store.write_statements(stmts)
            loop.call_soon_threadsafe(lambda: fut.done() or fut.set_result(None))
        try:
            self.writer.submit(job, kind="order_new")
        except StoreError as e:
            self._halt(e)
        return fut

    def _commit(self, orders: list[Order], fills: list[Fill], realised: list[float], pf: Portfolio,
                stops: Mapping[str, Stops | None] | None, cursor: str | None) -> None:
        """ONE transaction (now without a writer; queued in order with one)."""
        try:
            if self.writer is None:
                self.store.commit_execution(orders, fills, realised, pf, stops=stops, cursor=cursor)
            else:
                self.writer.write_statements(execution_statements(orders, fills, realised, pf, stops=stops,
                                                                  cursor=cursor, quote_asset=self._quote_asset()))
        except StoreError as e:
            self._halt(e)

    def _halt(self, e: StoreError) -> None:
        self.halted = str(e)
        log.error("testnet_broker_halted", error=str(e))
        raise e

    def _check_halted(self) -> None:
        raise_if_halted(self, "testnet")

    def _reduce_only(self, intent: OrderIntent) -> OrderIntent:
        return reduce_only(intent, self.portfolio.qty(intent.symbol), self.engine.filters.get(intent.symbol))

    def _quote_asset(self) -> str:
        return getattr(self.store, "quote_asset", self.cfg.quote_asset)

    def _assets(self, symbol: str) -> tuple[str, str]:
        quote = self._quote_asset()
        if not symbol.endswith(quote):
            quote = next((q for q in _QUOTES if symbol.endswith(q)), symbol[-4:])
        return symbol[: -len(quote)], quote
