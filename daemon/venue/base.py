"""The local venue's small interface: the frame it publishes and what its parts need from the server. The market
sources (:mod:`.replay`, the simulator source) and the order API (:mod:`.orders`) depend on this module, and
:mod:`.server` implements it, so no part imports the server back (no import cycle)."""
from __future__ import annotations

from collections import Counter
from typing import Any, NamedTuple, Protocol

__all__ = ["OutFrame", "Publisher", "Source", "VenueLike", "RestStats"]


class OutFrame(NamedTuple):
    """One frame the venue publishes: the combined-stream envelope bytes and (lazily) the bare payload bytes."""

    stream: str
    kind: str  # "depth" | "trade" | "bookTicker" | "other"
    ids: tuple[int, int] | None  # (U, u) of a depth diff
    combined: bytes
    data: bytes | None = None  # bare payload for /ws/<stream> clients; None: derived from `combined`
    recv_ns: int = 0
    symbol: str = ""


class Publisher(Protocol):
    """What a market source drives: frames out to the subscribed clients (a replay pauses while none listen)."""

    async def publish(self, f: OutFrame) -> None: ...
    def has_subscribers(self) -> bool: ...
    async def wait_subscribers(self) -> None: ...


class Source(Protocol):
    """A market behind the venue: a recording replay or the simulator."""

    symbols: list[str]

    async def run(self, venue: Publisher) -> None: ...
    def depth(self, symbol: str, limit: int) -> dict | None: ...
    def klines(self, symbol: str, interval: str, start_ms: int | None, end_ms: int | None,
               limit: int) -> list[list]: ...
    def exchange_info(self, server_ms: int) -> dict: ...
    def server_time_ms(self) -> int: ...


class RestStats(Protocol):
    """The venue's REST counters the order API adds to (by path, by Binance error code)."""

    rest_requests: Counter
    rest_errors: Counter


class VenueLike(Publisher, Protocol):
    """What the order API needs from the venue: its source (the simulator matches orders), its REST counters,
    and its ``publish``, which the order API wraps to see every frame before the clients do."""

    source: Any
    stats: RestStats
