"""Seeded fault injection for the local venue's outgoing frames.

Pure decision logic (no sockets, no clock: the server passes the connection's elapsed time), one injector per
connection, so a test can set the faults, run a client, and compare what was injected (``FaultStats``, including
the ``(U, u)`` ids of every dropped depth diff) with what the client detected.
"""
from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass, field

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

    def as_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d.pop("dropped_ids")
        return d


@dataclass(frozen=True)
class Action:
    """What to do with one outgoing frame."""

    send: int = 1  # 0 = drop, 1 = send, 2 = send twice
    garbage_before: bytes | None = None
    stall_s: float = 0.0  # sleep this long before sending
    close_after: bool = False  # close the socket abruptly after this frame


SEND = Action()


class FaultInjector:
    def __init__(self, cfg: FaultConfig, stats: FaultStats, conn_index: int = 0) -> None:
        self.cfg = cfg
        self.stats = stats
        self.rng = random.Random(cfg.seed * 1_000_003 + conn_index)
        self.active = any((cfg.drop_prob, cfg.dup_prob, cfg.garbage_prob, cfg.stall_every_s,
                           cfg.close_every_s, cfg.close_after_frames))
        self.sent = 0
        self._next_stall = cfg.stall_every_s if cfg.stall_every_s > 0 else float("inf")
        self._next_close = cfg.close_every_s if cfg.close_every_s > 0 else float("inf")

    def decide(self, kind: str, elapsed_s: float, ids: tuple[int, int] | None = None) -> Action:
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
        if elapsed_s >= self._next_stall:
            stall = c.stall_s
            st.stalls += 1
            self._next_stall = elapsed_s + c.stall_s + c.stall_every_s
        if elapsed_s >= self._next_close or (c.close_after_frames and self.sent == c.close_after_frames):
            close = True
            st.closes += 1
            self._next_close = float("inf")
        return Action(send, garbage, stall, close)
