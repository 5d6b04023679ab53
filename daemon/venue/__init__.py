"""The local Binance-format venue: an aiohttp server that speaks Binance spot's websocket streams and REST market
data endpoints, fed either by a recording replay (:mod:`.replay`) or by the pure market simulator
(:mod:`.simulator`), with seeded fault injection (:mod:`.faults`). The daemon, the tests and the benchmarks talk to
it through the same client code they would point at the real venue or the spot testnet.
"""
from __future__ import annotations

__all__ = ["LocalVenue", "MarketSimulator", "ReplaySource", "SimulatorSource", "FaultInjector"]


def __getattr__(name: str):  # lazy: importing the package must not start aiohttp
    if name in ("LocalVenue", "SimulatorSource"):
        from daemon.venue import server
        return getattr(server, name)
    if name in ("ReplaySource",):
        from daemon.venue.replay import ReplaySource
        return ReplaySource
    if name == "MarketSimulator":
        from daemon.venue.simulator import MarketSimulator
        return MarketSimulator
    if name == "FaultInjector":
        from daemon.venue.faults import FaultInjector
        return FaultInjector
    raise AttributeError(name)
