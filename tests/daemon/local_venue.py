"""A local venue (daemon.venue) on loopback for the order-API tests (not a test module): its simulator moves only
when a test steps it, with a signed key, plus small builders of intents, books and trades and the store
invariant (positions == signed sum of fills, no orphan fill, recovery clean)."""
from __future__ import annotations

import dataclasses
import sqlite3
import time
from pathlib import Path
from urllib.parse import urlencode

import aiohttp
import orjson
import pytest

from daemon.binance.codec import parse_exchange_info
from daemon.binance.rest import BinanceRestClient
from daemon.config import BrokerConfig, SimulatorConfig
from daemon.store import SQLiteStore
from daemon.binance.rest import sign
from daemon.venue.base import OutFrame
from daemon.venue.server import LocalVenue, SimulatorSource
from market.events import OrderIntent, OrderType, Side, Trade

SIM_CFG = dataclasses.replace(SimulatorConfig(), history_days=1, trades_per_s=20.0, speed=1.0)
KEY, SECRET = "test-key-1", "test-secret-1"
SYM = "BTCUSDT"
FEE = 0.001
BCFG = BrokerConfig(kind="testnet", taker_fee=FEE, maker_fee=FEE)


class Env:
    """A local venue whose simulator only moves when the test steps it (deterministic), plus helpers."""

    def __init__(self, venue: LocalVenue, src: SimulatorSource) -> None:
        self.venue, self.src = venue, src
        self.sim = src.sims[SYM]
        self.frames: list[dict] = []

    async def step(self, n: int = 1) -> None:
        """Advance the simulator ``n`` depth intervals and publish what it emitted (as SimulatorSource does)."""
        for _ in range(n):
            for ev in self.sim.advance(self.sim.t_ns + self.sim.dt_ns):
                data = orjson.dumps(ev.payload)
                combined = b'{"stream":"' + ev.stream.encode() + b'","data":' + data + b"}"
                self.frames.append({"kind": ev.kind, **ev.payload})
                await self.venue.publish(OutFrame(ev.stream, ev.kind, None, combined, data, ev.ts_ns, SYM))

    async def depth(self) -> dict:
        async with aiohttp.ClientSession() as s, s.get(f"{self.venue.rest_url}/api/v3/depth?symbol={SYM}&limit=1000") as r:
            return orjson.loads(await r.read())

    async def filters(self):
        async with aiohttp.ClientSession() as s, s.get(f"{self.venue.rest_url}/api/v3/exchangeInfo") as r:
            return parse_exchange_info(await r.read())

    def client(self, secret: str = SECRET, key: str = KEY, **kw) -> BinanceRestClient:
        return BinanceRestClient(self.venue.rest_url, key, secret, backoff_s=0.05, **kw)


async def open_env(fees: float = FEE) -> tuple[Env, LocalVenue]:
    src = SimulatorSource([SYM], SIM_CFG)
    venue = LocalVenue(src, start_on="subscriber")  # no websocket subscriber: the source never runs by itself
    await venue.start()
    venue.orders.add_key(KEY, SECRET)
    venue.orders.set_fees(fees, fees)
    return Env(venue, src), venue


def intent(coid: str, side: Side, qty: float, price: float | None = None, **kw) -> OrderIntent:
    return OrderIntent(coid, SYM, side, qty, OrderType.LIMIT if price is not None else OrderType.MARKET, price,
                       **kw)


def book_of(d: dict) -> tuple[list[tuple[float, float]], list[tuple[float, float]]]:
    return ([(float(p), float(q)) for p, q in d["bids"]], [(float(p), float(q)) for p, q in d["asks"]])


def trade(price: float, ts: int = 1) -> Trade:
    return Trade(SYM, 1, price, 0.001, False, ts, ts)


def store_check(path: Path) -> dict[str, float]:
    """positions == signed sum of fills, no orphan fill, recover() finds no discrepancy."""
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        fills = dict(db.execute("SELECT symbol, SUM(side * qty - fee_qty) FROM fills GROUP BY symbol").fetchall())
        pos = dict(db.execute("SELECT symbol, qty FROM positions").fetchall())
        for s in set(fills) | set(pos):
            assert pos.get(s, 0.0) == pytest.approx(fills.get(s, 0.0), abs=1e-12), s
        assert db.execute("SELECT COUNT(*) FROM fills f LEFT JOIN orders o USING (client_order_id) "
                          "WHERE o.client_order_id IS NULL").fetchone()[0] == 0
    finally:
        db.close()
    with SQLiteStore(path) as st:
        assert st.recover(BCFG.starting_cash).discrepancies == []
    return pos


async def raw(env: Env, method: str, path: str, params: dict, secret: str = SECRET, key: str = KEY,
              ts: int | None = None) -> tuple[int, dict, dict]:
    """A hand-signed request (the protocol as documented, independent of BinanceRestClient)."""
    p = dict(params, timestamp=ts if ts is not None else time.time_ns() // 1_000_000)
    q = urlencode(p)
    q += "&signature=" + sign(secret, q)
    async with aiohttp.ClientSession() as s:
        async with s.request(method, f"{env.venue.rest_url}{path}?{q}", headers={"X-MBX-APIKEY": key}) as r:
            return r.status, orjson.loads(await r.read()), dict(r.headers)


def walk(levels, qty: float) -> list[tuple[float, float]]:
    """The expected fills of a market order: an independent book walk (written apart from market.matching and the
    venue) over levels best first, REST depth strings or floats; ``left`` rounded as the venue's decimals are."""
    out, left = [], qty
    for p, q in levels:
        if left <= 1e-12:
            break
        take = min(float(q), left)
        out.append((float(p), take))
        left = round(left - take, 12)
    return out
