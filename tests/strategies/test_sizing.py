"""Seed §7.3 sizing and §7.4 risk levels against hand-computed numbers, plus property tests on the limits."""
from __future__ import annotations

import math
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from strategies.sizing import (MAX_CLIENT_ID_LEN, FiltersLike, ceil_to_step, client_order_id, floor_to_step,
                               is_step_multiple, parse_tf_pairs, position_size, risk_levels)

from market.filters import SymbolFilters

BTC = SymbolFilters("BTCUSDT", 0.01, 0.00001, 0.00001, 9000.0, 5.0)
BIG = dict(max_position_notional=1e12, max_position_fraction=1e6)


def size(**kw):
    args = dict(equity=100_000.0, price=60_000.0, atr=50.0, strength=1.0, timeframe_factor=1.0,
                risk_per_trade=0.01, stop_atr_mult=2.0, filters=BTC, **BIG)
    args.update(kw)
    return position_size(**args)


def test_symbol_filters_is_the_filters_protocol():
    """One shape: sizing's ``FiltersLike`` is the Protocol the market core's ``SymbolFilters`` satisfies."""
    assert isinstance(BTC, FiltersLike)
    assert set(FiltersLike.__annotations__) <= set(SymbolFilters.__struct_fields__)


def test_seed_example_base_quantity():
    # capital 100,000 x 1 % = 1,000 at risk; stop distance 2 x ATR 50 = 100 -> 10 units
    r = size(filters=SymbolFilters("X", 0.01, 0.00001, 0.00001, 0.0, 5.0))
    assert r.base_qty == pytest.approx(10.0)
    assert r.qty == 10.0 and r.reason == "ok" and r.limited_by == "risk"


def test_scaled_by_strength_and_timeframe_factor():
    r = size(strength=0.5, timeframe_factor=0.75)  # 10 x 0.5 x 0.75
    assert r.scaled_qty == pytest.approx(3.75) and r.qty == 3.75


def test_capped_by_fraction_of_equity_then_rounded_down_to_lot():
    # 25 % of 100,000 = 25,000 at 60,000 = 0.416666.. -> 0.41666 (DOWN to the 0.00001 lot)
    r = size(max_position_notional=50_000.0, max_position_fraction=0.25)
    assert r.limited_by == "position_fraction"
    assert r.qty == 0.41666
    assert r.notional == pytest.approx(24_999.6)


def test_capped_by_notional():
    r = size(max_position_notional=20_000.0, max_position_fraction=1.0)  # 0.33333..
    assert r.limited_by == "position_notional" and r.qty == 0.33333


def test_capped_by_venue_max_qty_and_existing_position():
    r = size(filters=SymbolFilters("X", 0.01, 0.001, 0.001, 4.0, 5.0))
    assert r.limited_by == "max_qty" and r.qty == 4.0
    r = size(max_position_notional=60_000.0, max_position_fraction=10, existing_qty=0.5)  # 1.0 - 0.5 held
    assert r.qty == 0.5
    r = size(max_position_notional=60_000.0, max_position_fraction=10, existing_qty=1.0)
    assert r.qty == 0.0 and r.reason == "no_room"


def test_small_sizes_are_no_trade_with_reason():
    # base = 100 * 0.01 / 100 = 0.01; x strength 0.008 = 0.00008 BTC = 4.80 USDT < min notional 5
    r = size(equity=100.0, strength=0.008)
    assert r.qty == 0.0 and r.reason == "below_min_notional"
    assert r.notional == pytest.approx(4.8)
    # 0.000004 rounds down to 0 on the 0.00001 lot
    r = size(equity=100.0, strength=0.0004)
    assert r.qty == 0.0 and r.reason == "rounds_to_zero"
    r = size(filters=SymbolFilters("X", 0.01, 0.00001, 20.0, 0.0, 5.0))
    assert r.qty == 0.0 and r.reason == "below_min_qty"


def test_max_positions_and_bad_input():
    assert size(open_positions=3, max_positions=3).reason == "max_positions"
    assert size(open_positions=2, max_positions=3).ok
    for bad in (dict(atr=0.0), dict(atr=math.nan), dict(price=-1.0), dict(equity=math.inf)):
        assert size(**bad).reason == "bad_input"
    assert size(strength=0.0).reason == "no_strength"


def test_rounding_helpers():
    assert floor_to_step(0.123456789, 0.00001) == 0.12345
    assert floor_to_step(0.3, 0.1) == 0.3  # 0.3 / 0.1 == 2.9999999999999996 in floats
    assert floor_to_step(0.29999, 0.1) == 0.2
    assert ceil_to_step(59_900.000001, 0.01) == 59_900.01
    assert ceil_to_step(0.3, 0.1) == 0.3
    assert floor_to_step(12.0, 0.0) == 12.0
    assert is_step_multiple(116_600.0, 0.00001)  # 1.166e10 lots: float noise in x / step is not a remainder
    assert not is_step_multiple(0.123456, 0.00001) and is_step_multiple(0.12345, 0.00001)


def test_risk_levels_long_and_short():
    lv = risk_levels(1, 60_000.0, 50.0, tick_size=0.01)
    assert (lv.stop_distance, lv.stop, lv.take_profit) == (100.0, 59_900.0, 60_150.0)
    lv = risk_levels(-1, 60_000.0, 50.0, tick_size=0.01)
    assert (lv.stop, lv.take_profit) == (60_100.0, 59_850.0)
    assert risk_levels(0, 60_000.0, 50.0) is None
    assert risk_levels(1, 60_000.0, math.nan) is None


def test_risk_levels_round_towards_entry():
    # long: stop 100.003 - 0.2468 = 99.7562 -> UP to 99.76; tp 100.003 + 0.3702 = 100.3732 -> DOWN to 100.37
    lv = risk_levels(1, 100.003, 0.1234, tick_size=0.01)
    assert (lv.stop, lv.take_profit) == (99.76, 100.37)
    # short: stop 100.2498 -> DOWN to 100.24; tp 99.6328 -> UP to 99.64
    lv = risk_levels(-1, 100.003, 0.1234, tick_size=0.01)
    assert (lv.stop, lv.take_profit) == (100.24, 99.64)
    # a short whose take profit would be below zero is refused
    assert risk_levels(-1, 10.0, 4.0) is None


def test_parse_tf_pairs():
    assert parse_tf_pairs(("1m=0.5", "1h=1"), "x") == {"1m": 0.5, "1h": 1.0}
    for bad in (("1m",), ("2m=1",), ("1m=abc",), ("1m=-1",), ("1m=1", "1m=2")):
        with pytest.raises(ValueError, match="x:"):
            parse_tf_pairs(bad, "x")


CID = re.compile(r"^[.A-Z:/a-z0-9_-]{1,36}$")


@given(st.text(max_size=20), st.text(max_size=12), st.integers(0, 2**63), st.text(max_size=12))
def test_client_ids_deterministic_and_valid(sym, tf, open_ns, reason):
    a = client_order_id("td", sym, tf, open_ns, reason)
    assert a == client_order_id("td", sym, tf, open_ns, reason)
    assert len(a) <= MAX_CLIENT_ID_LEN and CID.match(a)
    assert a != client_order_id("td", sym, tf, open_ns + 1, reason)
    assert a != client_order_id("td", sym, tf, open_ns, reason + "x")


@given(st.lists(st.tuples(st.sampled_from(["BTCUSDT", "ETHUSDT"]), st.sampled_from(["1m", "5m", "1h"]),
                          st.integers(0, 10**6), st.sampled_from(["entry", "stop", "peak"])),
                unique=True, max_size=50))
def test_client_ids_unique_per_decision(decisions):
    ids = {client_order_id("td", *d) for d in decisions}
    assert len(ids) == len(decisions)


finite = dict(allow_nan=False, allow_infinity=False)


@settings(max_examples=300)
@given(equity=st.floats(1.0, 1e8, **finite), price=st.floats(0.01, 1e6, **finite),
       atr_frac=st.floats(1e-5, 0.5, **finite), strength=st.floats(0, 1, **finite),
       factor=st.floats(0, 2, **finite), risk=st.floats(1e-4, 0.2, **finite),
       max_notional=st.floats(1.0, 1e7, **finite), max_frac=st.floats(0.01, 5, **finite),
       lot=st.sampled_from([1e-5, 1e-4, 0.001, 0.01, 0.1, 1.0]), min_lots=st.integers(1, 100),
       max_qty=st.sampled_from([0.0, 1.0, 100.0, 9000.0]), min_notional=st.floats(0, 100, **finite),
       existing_frac=st.floats(0, 1.2, **finite))
def test_size_never_exceeds_limits(equity, price, atr_frac, strength, factor, risk, max_notional, max_frac, lot,
                                   min_lots, max_qty, min_notional, existing_frac):
    f = SymbolFilters("X", 0.01, lot, lot * min_lots, max_qty, min_notional)
    cap = min(max_notional, max_frac * equity) / price
    existing = floor_to_step(existing_frac * cap, lot)
    r = position_size(equity=equity, price=price, atr=atr_frac * price, strength=strength, timeframe_factor=factor,
                      risk_per_trade=risk, stop_atr_mult=2.0, max_position_notional=max_notional,
                      max_position_fraction=max_frac, filters=f, existing_qty=existing)
    q = r.qty
    assert q >= 0
    if q == 0:
        assert r.reason != "ok"
        return
    assert r.reason == "ok"
    assert (q + existing) * price <= max_notional * (1 + 1e-9)
    assert (q + existing) * price <= max_frac * equity * (1 + 1e-9)
    assert max_qty == 0 or q + existing <= max_qty * (1 + 1e-9)
    assert q <= r.scaled_qty * (1 + 1e-12)  # never more than the risk-based size
    assert is_step_multiple(q, lot)
    assert q >= f.min_qty and q * price >= min_notional
