"""Streaming peak/trough detectors for exits: decisions use only the data seen so far (no look-ahead).

Two detectors, both O(1) per update and both deterministic:

* :class:`TrailingPeakDetector` (used by the optimizer's exits): once a position has moved at least
  ``min_favourable`` in its favour, it tracks the running extreme (highest high for a long, lowest low for a
  short) and fires when the close retraces ``retrace`` from that extreme — i.e. it exits longs just after a
  local price peak and shorts just after a trough. Within one bar the high/low is reached at or before the
  close, so comparing the close with the extreme including this bar's high/low is causal.
* :class:`SwingDetector`: confirms a swing high (low) at bar ``i - w`` once bars ``i-2w .. i`` are all seen and
  its high (low) is the strict maximum (minimum) of that window — the confirmation is ``w`` bars late by
  construction, never early.
"""
from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

__all__ = ["TrailingPeakDetector", "SwingDetector", "SwingPoint"]


class TrailingPeakDetector:
    """Trailing-retracement peak detector for one open position (prices in quote units).

    ``retrace`` and ``min_favourable`` are absolute price distances (the optimizer passes k × ATR at entry).
    Once fired it stays fired (:attr:`triggered`).
    """

    __slots__ = ("direction", "entry", "retrace", "min_favourable", "extreme", "armed", "triggered")

    def __init__(self, direction: int, entry: float, *, retrace: float, min_favourable: float) -> None:
        if direction not in (1, -1):
            raise ValueError(f"direction must be +1 or -1, got {direction!r}")
        if not (math.isfinite(entry) and entry > 0 and math.isfinite(retrace) and retrace > 0
                and math.isfinite(min_favourable) and min_favourable >= 0):
            raise ValueError("entry and retrace must be finite and > 0, min_favourable finite and >= 0")
        self.direction = direction
        self.entry = entry
        self.retrace = retrace
        self.min_favourable = min_favourable
        self.extreme = entry
        self.armed = False
        self.triggered = False

    def update(self, high: float, low: float, close: float) -> bool:
        """Feed one bar (or one price with high == low == close); True when this update fires the exit.
        Non-finite or non-positive inputs are ignored (return False)."""
        if self.triggered:
            return False
        if not all(math.isfinite(v) and v > 0 for v in (high, low, close)):
            return False
        if self.direction == 1:
            self.extreme = max(self.extreme, high)
            favourable, retraced = self.extreme - self.entry, self.extreme - close
        else:
            self.extreme = min(self.extreme, low)
            favourable, retraced = self.entry - self.extreme, close - self.extreme
        if favourable >= self.min_favourable:
            self.armed = True
        if self.armed and retraced >= self.retrace:
            self.triggered = True
            return True
        return False

    def update_price(self, price: float) -> bool:
        return self.update(price, price, price)


@dataclass(frozen=True)
class SwingPoint:
    kind: str  # "high" | "low"
    index: int  # index of the swing bar (0-based count of updates)
    price: float
    confirmed_at: int  # index of the update that confirmed it (= index + window)


class SwingDetector:
    """Confirmed swing highs/lows over a symmetric window of ``window`` bars each side."""

    def __init__(self, window: int) -> None:
        if window < 1:
            raise ValueError("window must be >= 1")
        self.window = window
        self._buf: deque[tuple[float, float]] = deque(maxlen=2 * window + 1)
        self._n = 0

    def update(self, high: float, low: float) -> list[SwingPoint]:
        """Feed one bar; returns the swing points this bar confirms (at most one high and one low)."""
        self._buf.append((high, low))
        self._n += 1
        out: list[SwingPoint] = []
        if len(self._buf) < self._buf.maxlen:
            return out
        w = self.window
        ch, cl = self._buf[w]
        others = [b for i, b in enumerate(self._buf) if i != w]
        idx = self._n - 1 - w
        if all(ch > h for h, _ in others):
            out.append(SwingPoint("high", idx, ch, self._n - 1))
        if all(cl < low for _, low in others):
            out.append(SwingPoint("low", idx, cl, self._n - 1))
        return out
