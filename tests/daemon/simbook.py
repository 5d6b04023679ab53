"""Following the simulator as a client would (snapshot, then diffs), every invariant checked on the way: the
harness the simulator tests share."""
from __future__ import annotations

from daemon.venue.simulator import MarketSimulator

START = 1_700_000_030_000_000_000  # 50 s into a minute
SEC = 1_000_000_000


def replay_client_book(sim: MarketSimulator, seconds: float) -> dict:
    """Follow the simulator like a client: snapshot, then diffs; check every invariant on the way."""
    snap = sim.snapshot(5000)
    bids = {float(p): float(q) for p, q in snap["bids"]}
    asks = {float(p): float(q) for p, q in snap["asks"]}
    last_u = snap["lastUpdateId"]
    last_trade = None
    counts = {"trade": 0, "depth": 0, "bookTicker": 0}
    for ev in sim.advance(START + int(seconds * SEC)):
        d = ev.payload
        counts[ev.kind] += 1
        if ev.kind == "depth":
            assert d["U"] == last_u + 1, "depth ids must chain: U = previous u + 1"
            assert d["u"] - d["U"] + 1 == len(d["b"]) + len(d["a"])
            last_u = d["u"]
            for side, key in ((bids, "b"), (asks, "a")):
                for p, q in d[key]:
                    if float(q) == 0.0:
                        side.pop(float(p), None)
                    else:
                        side[float(p)] = float(q)
            assert max(bids) < min(asks), "book crossed"
            assert len(bids) == len(asks) == sim.cfg.depth_levels
        elif ev.kind == "trade":
            price = float(d["p"])
            if d["m"]:  # seller was the aggressor: hits the best bid
                assert price == max(bids)
                assert float(d["q"]) < bids[price]
            else:
                assert price == min(asks)
                assert float(d["q"]) < asks[price]
            if last_trade is not None:
                assert d["t"] == last_trade + 1
            last_trade = d["t"]
        else:
            assert d["u"] == last_u
            assert (float(d["b"]), float(d["B"])) == (max(bids), bids[max(bids)])
            assert (float(d["a"]), float(d["A"])) == (min(asks), asks[min(asks)])
    return counts
