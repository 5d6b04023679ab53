"""Seeded fault injection for the local venue's outgoing frames.

Pure decision logic (no sockets, no clock: the server passes the connection's elapsed time), one injector per
connection, so a test can set the faults, run a client, and compare what was injected (``FaultStats``, including
the ``(U, u)`` ids of every dropped depth diff) with what the client detected.
"""
from __future__ import annotations

import dataclasses
import json
import random
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import orjson

from daemon.config import FaultConfig

GARBAGE = (b"\x00\x01garbage\xff", b'{"stream": "btcusdt@depth@100ms", "data": {"e": "depthUpdate", "U": ',
           b"not json at all", b'{"stream":"btcusdt@trade","data":{"e":"trade","p":"NaN"}}')


@dataclass
class FaultStats:
    """What the venue injected, summed over connections (the server owns one and passes it to every injector)."""

    frames: int = 0
    dropped_depth: int = 0
    duplicated: int = 0
    garbage: int = 0
    stalls: int = 0
    closes: int = 0
    dropped_ids: list[tuple[int, int]] = field(default_factory=list)  # (U, u) of each dropped depth diff
    forged: Counter = field(default_factory=Counter)  # forged frames sent, by kind (see FORGE_KINDS)
    stale_snapshots: int = 0  # REST snapshots served with the current id and stale levels

    def as_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d.pop("dropped_ids")
        d["forged"] = dict(self.forged)
        return d


@dataclass(frozen=True)
class Action:
    """What to do with one outgoing frame."""

    send: int = 1  # 0 = drop, 1 = send, 2 = send twice
    garbage_before: bytes | None = None
    stall_s: float = 0.0  # sleep this long before sending
    close_after: bool = False  # close the socket abruptly after this frame
    forged_before: bytes | None = None  # a forged frame sent before this one (combined-stream envelope)
    forged_after: bytes | None = None


SEND = Action()


class FaultInjector:
    def __init__(self, cfg: FaultConfig, stats: FaultStats, conn_index: int = 0) -> None:
        self.cfg = cfg
        self.stats = stats
        self.rng = random.Random(cfg.seed * 1_000_003 + conn_index)
        self.active = any((cfg.drop_prob, cfg.dup_prob, cfg.garbage_prob, cfg.stall_every_s,
                           cfg.close_every_s, cfg.close_after_frames, cfg.forge_prob))
        self.sent = 0
        self._next_stall = cfg.stall_every_s if cfg.stall_every_s > 0 else float("inf")
        self._next_close = cfg.close_every_s if cfg.close_every_s > 0 else float("inf")

    def decide(self, kind: str, elapsed_s: float, ids: tuple[int, int] | None = None,
               frame: bytes | None = None) -> Action:
        """Fate of the next frame of ``kind`` ("depth", "trade", "bookTicker") on a connection open ``elapsed_s``."""
        st = self.stats
        st.frames += 1
        self.sent += 1
        if not self.active:
            return SEND
        c, r = self.cfg, self.rng
        send, garbage, stall, close = 1, None, 0.0, False
        if kind == "depth" and c.drop_prob and r.random() < c.drop_prob:
            send = 0
            st.dropped_depth += 1
            if ids is not None:
                st.dropped_ids.append(ids)
        elif c.dup_prob and r.random() < c.dup_prob:
            send = 2
            st.duplicated += 1
        if c.garbage_prob and r.random() < c.garbage_prob:
            garbage = GARBAGE[r.randrange(len(GARBAGE))]
            st.garbage += 1
        before = after = None
        if c.forge_prob and frame is not None and kind in ("depth", "trade") and r.random() < c.forge_prob:
            fk = "absurd_diff" if kind == "depth" else TRADE_FORGERIES[r.randrange(len(TRADE_FORGERIES))]
            forged = forge(fk, frame)
            if forged is not None:
                st.forged[fk] += 1
                if fk == "dup_trade_id":
                    after = forged
                else:
                    before = forged
        if elapsed_s >= self._next_stall:
            stall = c.stall_s
            st.stalls += 1
            self._next_stall = elapsed_s + c.stall_s + c.stall_every_s
        if elapsed_s >= self._next_close or (c.close_after_frames and self.sent == c.close_after_frames):
            close = True
            st.closes += 1
            self._next_close = float("inf")
        return Action(send, garbage, stall, close, before, after)


# ------------------------------------------------------------------------------------------ forgeries
# Frames that are well formed (the decoder accepts them) but lie: the daemon's plausibility guard must refuse
# every one. Each is derived from a real frame, so its ids and symbol look right.
TRADE_FORGERIES = ("future_time", "negative_time", "huge_time", "absurd_trade", "dup_trade_id")
FORGE_KINDS = ("absurd_diff",) + TRADE_FORGERIES
ABSURD_QTY = "99999999999.00000000"
_DAY_MS = 86_400_000
_FORGED_ID = 10**15  # forged trades other than the duplicate get ids far from the venue's


def forge(kind: str, frame: bytes) -> bytes | None:
    """A forged copy of ``frame`` (a combined-stream envelope): ``absurd_diff`` (a depth diff with the same ids and
    one level of 99,999,999,999), ``future_time`` (a trade 62 days ahead), ``negative_time``, ``huge_time``
    (2^70 ms), ``absurd_trade`` (size 1e11), ``dup_trade_id`` (the same trade id, another price). None when
    ``frame`` is not of the kind's stream type."""
    try:
        env = orjson.loads(frame)
        d = dict(env["data"])
        e = d.get("e")
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return None
    if kind == "absurd_diff":
        if e != "depthUpdate":
            return None
        side = "b" if d.get("b") else "a"
        levels = list(d.get(side) or [["1.00000000", "0"]])
        levels[0] = [levels[0][0], ABSURD_QTY]
        d[side] = levels
    elif kind in TRADE_FORGERIES:
        if e != "trade":
            return None
        if kind != "dup_trade_id":
            d["t"] = int(d["t"]) + _FORGED_ID
        if kind == "future_time":
            d["T"] = d["E"] = int(d["T"]) + 62 * _DAY_MS
        elif kind == "negative_time":
            d["T"] = d["E"] = -1
        elif kind == "huge_time":
            d["T"] = d["E"] = 2**70
        elif kind == "absurd_trade":
            d["q"] = "100000000000.00000000"
        elif kind == "dup_trade_id":
            d["p"] = f"{float(d['p']) * 1.01:.8f}"
    else:
        raise ValueError(f"unknown forgery {kind!r}; one of {', '.join(FORGE_KINDS)}")
    # stdlib json: orjson refuses integers beyond 64 bits (2^70 ms), which is the point of huge_time
    return json.dumps({"stream": env["stream"], "data": d}, separators=(",", ":")).encode()


class SnapshotFaults:
    """REST depth snapshots that lie: with ``stale_snapshot_prob`` the venue serves the current update id with
    the levels of the first snapshot it served for the symbol (a stale cache under a fresh id)."""

    def __init__(self, cfg: FaultConfig, stats: FaultStats) -> None:
        self.prob = cfg.stale_snapshot_prob
        self.stats = stats
        self.rng = random.Random(cfg.seed * 7_919 + 1)
        self._first: dict[str, dict] = {}

    def serve(self, symbol: str, snap: dict) -> dict:
        first = self._first.setdefault(symbol, snap)
        if self.prob and first is not snap and first["lastUpdateId"] != snap["lastUpdateId"] \
                and self.rng.random() < self.prob:
            self.stats.stale_snapshots += 1
            return {**first, "lastUpdateId": snap["lastUpdateId"]}
        return snap


def poison_recording(lines: Iterable[tuple[int, bytes]], every: int = 50,
                     seed: int = 1) -> Iterator[tuple[int, bytes, str | None]]:
    """A recording's ``(recv_ns, raw)`` lines with forgeries woven in: every ``every``-th depth or trade frame
    comes with a forged one (kinds in turn), and after the first snapshot, every ``every * 20``-th depth diff is
    followed by a stale snapshot under that diff's id. Yields ``(recv_ns, raw, forgery kind or None)``."""
    rng = random.Random(seed)
    n = n_depth = 0
    first_snap: dict | None = None
    for recv_ns, raw in lines:
        if first_snap is None and b'"lastUpdateId"' in raw[:40]:
            first_snap = orjson.loads(raw)
        is_depth, is_trade = b"@depth" in raw[:40], b"@trade" in raw[:40]
        if not (is_depth or is_trade):
            yield recv_ns, raw, None
            continue
        n += 1
        kind = None
        if n % every == 0:
            kind = "absurd_diff" if is_depth else TRADE_FORGERIES[rng.randrange(len(TRADE_FORGERIES))]
        forged = forge(kind, raw) if kind else None
        if forged is not None and kind != "dup_trade_id":
            yield recv_ns, forged, kind
        yield recv_ns, raw, None
        if forged is not None and kind == "dup_trade_id":
            yield recv_ns, forged, kind
        if is_depth:
            n_depth += 1
            if first_snap is not None and n_depth % (every * 20) == 0:
                u = orjson.loads(raw)["data"]["u"]
                yield recv_ns, orjson.dumps({**first_snap, "lastUpdateId": u}), "stale_snapshot"
