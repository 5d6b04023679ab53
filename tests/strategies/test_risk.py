"""Risk limits and the kill switch: hand-worked limits, state machine, and properties."""
from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from market.events import OrderIntent, OrderType, Side
from strategies.risk import NS_PER_MINUTE, AccountState, RiskConfig, RiskManager, RiskState
from strategies.sizing import is_step_multiple

from market.filters import SymbolFilters

S = 1_000_000_000
DAY = 86_400 * S
T0 = 20_000 * DAY + 3_600 * S  # 01:00 UTC on some day
FILTERS = {"BTCUSDT": SymbolFilters("BTCUSDT", 0.01, 0.00001, 0.00001, 9000.0, 5.0),
           "ETHUSDT": SymbolFilters("ETHUSDT", 0.01, 0.0001, 0.0001, 9000.0, 5.0),
           "SOLUSDT": SymbolFilters("SOLUSDT", 0.01, 0.001, 0.001, 9000.0, 5.0),
           "XRPUSDT": SymbolFilters("XRPUSDT", 0.0001, 0.1, 0.1, 9e6, 5.0)}
MARKS = {"BTCUSDT": 60_000.0, "ETHUSDT": 3_000.0, "SOLUSDT": 150.0, "XRPUSDT": 0.5}


@dataclass(frozen=True)
class Pos:
    qty: float
    avg_price: float = 0.0


def acct(equity=100_000.0, **positions):
    return AccountState(equity, {k: Pos(v) for k, v in positions.items()}, MARKS)


def intent(qty=0.1, side=Side.BUY, sym="BTCUSDT", reduce_only=False, cid="c1", **kw):
    return OrderIntent(cid, sym, side, qty, reduce_only=reduce_only, **kw)


def rm(**cfg):
    return RiskManager(RiskConfig(**cfg), FILTERS)


def test_plain_entry_allowed():
    d = rm().check(intent(0.1), acct(), T0)
    assert d.allowed and d.reason == "ok" and d.adjusted_qty == 0.1


@pytest.mark.parametrize("it, reason", [
    (intent(math.nan), "bad_qty"), (intent(0.0), "bad_qty"), (intent(-1.0), "bad_qty"),
    (intent(math.inf), "bad_qty"), (intent(0.1, sym="DOGEUSDT"), "unknown_symbol"),
    (intent(0.1, order_type=OrderType.LIMIT, limit_price=math.nan), "bad_price"),
    (intent(0.1, order_type=OrderType.LIMIT, limit_price=-5.0), "bad_price"),
    (intent(0.1, order_type=OrderType.LIMIT), "bad_price"),
])
def test_bad_intents_rejected_with_reason(it, reason):
    r = rm()
    d = r.check(it, acct(), T0)
    assert not d.allowed and d.reason == reason and d.adjusted_qty == 0.0
    assert r.counters[f"rejected.{reason}"] == 1


def test_no_mark_price():
    d = rm().check(intent(0.1), AccountState(100_000.0, {}, {}), T0)
    assert d.reason == "no_price"


def test_order_notional_clipped_and_rounded_down():
    # 25,000 / 60,000 = 0.416666.. -> 0.41666 on the 0.00001 lot
    d = rm().check(intent(1.0), acct(), T0)
    assert d.allowed and d.reason == "clipped_order_notional" and d.adjusted_qty == 0.41666


def test_position_per_symbol():
    # holding 0.5 BTC (30,000); limit 50,000 -> room 20,000 / 60,000 = 0.33333
    d = rm(max_order_notional=1e9).check(intent(1.0), acct(BTCUSDT=0.5), T0)
    assert d.reason == "clipped_position_notional" and d.adjusted_qty == 0.33333
    # a flip from short 0.5: closes 0.5 then may open up to 50,000 / 60,000
    d = rm(max_order_notional=1e9).check(intent(2.0), acct(BTCUSDT=-0.5), T0)
    assert d.adjusted_qty == pytest.approx(0.5 + 0.83333)
    d = rm(max_order_notional=1e9, max_position_notional=30_000.0).check(intent(1.0), acct(BTCUSDT=0.5), T0)
    assert not d.allowed and d.reason == "no_room"


def test_max_open_positions():
    r = rm(max_open_positions=2)
    a = acct(ETHUSDT=1.0, SOLUSDT=-3.0)
    assert r.check(intent(0.1), a, T0).reason == "max_open_positions"
    assert r.check(intent(0.1, sym="ETHUSDT"), a, T0).allowed  # adding to an open one is fine


def test_below_venue_minimum_after_limits():
    assert rm().check(intent(0.00005), acct(), T0).reason == "below_venue_minimum"  # 3 USDT < 5


def test_reduce_only():
    r = rm()
    assert r.check(intent(0.1, side=Side.SELL, reduce_only=True), acct(), T0).reason == "reduce_only_no_position"
    assert r.check(intent(0.1, reduce_only=True), acct(BTCUSDT=0.2), T0).reason == "reduce_only_no_position"
    d = r.check(intent(5.0, side=Side.SELL, reduce_only=True), acct(BTCUSDT=0.2), T0)
    assert d.allowed and d.adjusted_qty == 0.2 and d.reason == "clipped_position"
    d = r.check(intent(0.3, side=Side.BUY, reduce_only=True), acct(BTCUSDT=-0.3), T0)
    assert d.allowed and d.adjusted_qty == 0.3


def test_orders_per_minute_sliding_window():
    r = rm(max_orders_per_minute=3)
    a = acct()
    for i in range(3):
        assert r.check(intent(0.01), a, T0 + i * S).allowed
    assert r.check(intent(0.01), a, T0 + 30 * S).reason == "rate_limit"
    # reduce-only is counted but never refused, so stops can always exit
    assert r.check(intent(0.01, side=Side.SELL, reduce_only=True), acct(BTCUSDT=0.5), T0 + 31 * S).allowed
    # the first order leaves the window at T0 + 60 s; the second and third and the exit are still in it
    assert r.check(intent(0.01), a, T0 + NS_PER_MINUTE).reason == "rate_limit"
    assert r.check(intent(0.01), a, T0 + NS_PER_MINUTE + 2 * S + 1).allowed


def test_daily_loss_states_flatten_and_new_day():
    r = rm()  # max daily loss 2,000, REDUCING from 1,000, sizes x 0.5 while REDUCING
    assert r.check(intent(0.1), acct(100_000.0), T0).allowed  # day start equity 100,000
    d = r.check(intent(0.1), acct(98_900.0), T0 + S)
    assert r.state is RiskState.REDUCING and d.allowed and d.adjusted_qty == 0.05 and d.reason == "clipped_reducing"
    d = r.check(intent(0.1), acct(97_900.0, BTCUSDT=0.15), T0 + 2 * S)
    assert r.state is RiskState.HALTED and not d.allowed and d.reason == "halted"
    assert r.check(intent(0.1, side=Side.SELL, reduce_only=True), acct(97_900.0, BTCUSDT=0.15), T0 + 3 * S).allowed
    assert r.flatten_required
    fl = r.flatten_intents({"BTCUSDT": Pos(0.15), "ETHUSDT": Pos(-2.0), "SOLUSDT": Pos(0.0)}, T0 + 4 * S)
    assert [(i.symbol, i.side, i.qty, i.reduce_only) for i in fl] == [
        ("BTCUSDT", Side.SELL, 0.15, True), ("ETHUSDT", Side.BUY, 2.0, True)]
    assert [i.client_order_id for i in fl] == [
        i.client_order_id for i in r.flatten_intents({"BTCUSDT": Pos(0.15), "ETHUSDT": Pos(-2.0)}, T0 + 4 * S)]
    # a recovery within the day does not lift the halt; the next UTC day does
    assert r.check(intent(0.1), acct(99_000.0), T0 + 5 * S).reason == "halted"
    assert r.check(intent(0.1), acct(97_900.0), T0 + DAY).allowed and r.state is RiskState.ACTIVE
    assert r.counters["transition.ACTIVE->REDUCING"] == 1
    assert r.counters["transition.REDUCING->HALTED"] == 1
    assert r.counters["transition.HALTED->ACTIVE"] == 1


def test_manual_halt_and_resume():
    r = rm()
    r.halt("operator", T0)
    assert r.state is RiskState.HALTED and not r.flatten_required
    assert r.check(intent(0.1), acct(), T0).reason == "halted"
    r.check(intent(0.1), acct(), T0 + DAY)  # a manual halt survives the new day
    assert r.state is RiskState.HALTED
    r.resume(T0 + DAY)
    assert r.check(intent(0.1), acct(), T0 + DAY).allowed
    assert rm(start_halted=True).check(intent(0.1), acct(), T0).reason == "halted"


def test_reducing_factor_zero_blocks_entries():
    r = rm(reducing_size_factor=0.0)
    r.check(intent(0.1), acct(100_000.0), T0)
    assert r.check(intent(0.1), acct(98_500.0), T0 + S).reason == "reducing"


ops = st.lists(st.one_of(
    st.tuples(st.just("halt")), st.tuples(st.just("resume")),
    st.tuples(st.just("order"), st.sampled_from(list(MARKS) + ["BADUSDT"]), st.sampled_from([Side.BUY, Side.SELL]),
              st.one_of(st.floats(-1, 50), st.just(math.nan)), st.booleans(), st.floats(90_000, 101_000),
              st.integers(0, 20 * S), st.floats(-3, 3))), max_size=60)


@settings(max_examples=150)
@given(ops)
def test_properties_no_entry_while_halted_and_limits_hold(seq):
    cfg = RiskConfig(max_orders_per_minute=10)
    r = RiskManager(cfg, FILTERS)
    ts = T0
    for op in seq:
        if op[0] == "halt":
            r.halt("test", ts)
            continue
        if op[0] == "resume":
            r.resume(ts)
            continue
        _, sym, side, qty, ro, equity, dt, held = op
        ts += dt
        pos = held if sym in MARKS else 0.0
        a = AccountState(equity, {sym: Pos(pos)} if sym in MARKS else {}, MARKS)
        before = r.state
        d = r.check(intent(qty, side=side, sym=sym, reduce_only=ro), a, ts)
        if not d.allowed:
            assert d.adjusted_qty == 0.0
            continue
        assert 0 < d.adjusted_qty <= qty
        reduces = pos != 0 and (pos > 0) != (side > 0) and d.adjusted_qty <= abs(pos)
        if r.state is RiskState.HALTED or before is RiskState.HALTED:
            assert reduces, "only reducing orders may pass while halted"
        if not reduces:
            price = MARKS[sym]
            assert d.adjusted_qty * price <= cfg.max_order_notional * (1 + 1e-9)
            new_pos = pos + side * d.adjusted_qty
            assert abs(new_pos) * price <= cfg.max_position_notional * (1 + 1e-9)
            assert is_step_multiple(d.adjusted_qty, FILTERS[sym].lot_step)


def test_portfolio_caps_clip_entries_to_the_gross_and_net_room():
    """Hard guard behind the optimizer: an entry never takes gross (or |net|) exposure past its cap x equity;
    reduce-only orders pass whatever the caps."""
    r = rm(max_gross_exposure=0.5, max_net_exposure=0.3, max_position_notional=1e9, max_order_notional=1e9)
    a = acct(100_000.0, ETHUSDT=10.0)  # 30k long ETH: net at its cap, gross 30k of 50k
    d = r.check(intent(1.0), a, T0)  # 60k of BTC asked
    assert not d.allowed and d.reason == "no_room"  # net room 0 for another long
    d = r.check(intent(1.0, side=Side.SELL), a, T0)  # a short: net room 30k + 30k, gross room 20k binds
    assert d.allowed and d.reason == "clipped_gross_exposure"
    assert d.adjusted_qty * 60_000.0 == pytest.approx(20_000.0, abs=0.6) and d.adjusted_qty * 60_000 <= 20_000
    d = r.check(intent(5.0, side=Side.SELL, sym="ETHUSDT", reduce_only=True), a, T0)
    assert d.allowed and d.adjusted_qty == 5.0
    assert r.counters["clipped.gross_exposure"] == 1


def test_unvalued_position_blocks_new_risk():
    r = rm()
    a = AccountState(100_000.0, {"DOGEUSDT": Pos(1000.0, math.nan)}, MARKS)  # no mark, no average price
    assert r.check(intent(0.1), a, T0).reason == "no_room"


def test_a_closed_gate_refuses_every_order_exits_included_and_reopens():
    """``add_gate``: while the store cannot persist, nothing new is sent (entries and exits), counted by reason."""
    r = RiskManager(RiskConfig(), FILTERS)
    down = [False]
    r.add_gate(lambda: "store_unavailable" if down[0] else "")
    a = acct(BTCUSDT=0.5)
    assert r.check(intent(0.1), a, T0).allowed
    down[0] = True
    for it in (intent(0.1), intent(0.2, Side.SELL, reduce_only=True, cid="x1")):
        d = r.check(it, a, T0 + S)
        assert not d.allowed and d.reason == "store_unavailable"
    assert r.counters["rejected.store_unavailable"] == 2
    down[0] = False
    assert r.check(intent(0.2, Side.SELL, reduce_only=True, cid="x2"), a, T0 + 2 * S).allowed
    assert r.state is RiskState.ACTIVE  # a gate is not the kill switch: no state change to undo
