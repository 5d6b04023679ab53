"""A fixed-size ring of int64 samples (latencies): all memory allocated up front, none per sample.

A ``deque[int]`` of the same bound keeps allocating (one int object per sample, new blocks) until it is full,
which in a months-long daemon is weeks of slow RSS growth that looks like a leak (measured by the soak: the
tick-latency deque needed ~69 days of bars to fill). One writer; a reader on another thread may see a sample
being replaced, never a torn array.
"""
from __future__ import annotations

from collections.abc import Iterator

import numpy as np

__all__ = ["SampleRing"]


class SampleRing:
    """The last ``capacity`` int64 samples; ``values()`` in arrival order."""

    __slots__ = ("_a", "_i", "_n")

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("capacity must be >= 1")
        self._a = np.zeros(capacity, np.int64)
        self._i = 0  # next slot
        self._n = 0  # samples held

    def append(self, x: int) -> None:
        i = self._i
        self._a[i] = x
        i += 1
        self._i = 0 if i == self._a.size else i
        if self._n < self._a.size:
            self._n += 1

    def values(self) -> np.ndarray:
        """A copy, oldest first."""
        if self._n < self._a.size:
            return self._a[: self._n].copy()
        return np.concatenate((self._a[self._i:], self._a[: self._i]))

    @property
    def capacity(self) -> int:
        return int(self._a.size)

    def __len__(self) -> int:
        return self._n

    def __bool__(self) -> bool:
        return self._n > 0

    def __getitem__(self, k: int) -> int:
        """Index like a list of the held samples (``ring[-1]`` is the newest)."""
        n = self._n
        if not -n <= k < n:
            raise IndexError("sample index out of range")
        k = k % n
        start = 0 if n < self._a.size else self._i
        return int(self._a[(start + k) % self._a.size])

    def __iter__(self) -> Iterator[int]:
        return iter(self.values().tolist())
