"""SampleRing: the same samples, in the same order, as a bounded deque would hold."""
from __future__ import annotations

from collections import deque

import pytest
from hypothesis import given
from hypothesis import strategies as st

from daemon.samples import SampleRing


@given(st.integers(1, 7), st.lists(st.integers(-2**62, 2**62), max_size=40))
def test_ring_equals_a_bounded_deque(cap, xs):
    r, d = SampleRing(cap), deque(maxlen=cap)
    for x in xs:
        r.append(x)
        d.append(x)
        assert len(r) == len(d) and bool(r) == bool(d)
        assert r.values().tolist() == list(d) == list(r)
        assert r[-1] == d[-1] and r[0] == d[0]


def test_ring_index_errors_and_capacity():
    r = SampleRing(3)
    assert not r and r.values().size == 0 and r.capacity == 3
    with pytest.raises(IndexError):
        r[-1]
    for x in (1, 2, 3, 4):
        r.append(x)
    assert r.values().tolist() == [2, 3, 4] and r[-3] == 2
    with pytest.raises(IndexError):
        r[3]
    with pytest.raises(ValueError):
        SampleRing(0)
