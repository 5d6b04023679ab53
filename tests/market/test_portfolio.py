"""Portfolio accounting: hand-checked cases and the P&L identity under any sequence of fills (Hypothesis)."""
from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from market.events import Fill, Side
from market.portfolio import Portfolio


def fill(side: Side, qty: float, price: float, fee: float = 0.0, sym: str = "BTCUSDT", n: int = 0) -> Fill:
    return Fill(f"f-{n}", f"o-{n}", sym, side, price, qty, fee, "taker", n)


def test_open_add_reduce_close_long():
    p = Portfolio(1000.0)
    assert p.apply_fill(fill(Side.BUY, 1.0, 100.0, 0.1)) == 0.0
    assert p.apply_fill(fill(Side.BUY, 3.0, 120.0, 0.3)) == 0.0
    pos = p.position("BTCUSDT")
    assert pos.qty == 4.0 and pos.avg_price == pytest.approx(115.0)
    assert p.cash == pytest.approx(1000 - 100 - 360 - 0.4)
    r = p.apply_fill(fill(Side.SELL, 2.0, 130.0, 0.2))
    assert r == pytest.approx(2 * 15.0)                     # realised excludes the fee
    assert p.position("BTCUSDT").avg_price == pytest.approx(115.0)  # reducing keeps the average
    r = p.apply_fill(fill(Side.SELL, 2.0, 110.0, 0.2))
    assert r == pytest.approx(-10.0)
    pos = p.position("BTCUSDT")
    assert pos.qty == 0.0 and pos.avg_price == 0.0
    assert p.realised == pytest.approx(20.0) and p.fees == pytest.approx(0.8)
    assert p.cash == pytest.approx(1000 + 20.0 - 0.8)
    assert p.mark({}) == (pytest.approx(1019.2), 0.0)


def test_flip_long_to_short_in_one_fill():
    p = Portfolio(0.0)
    p.apply_fill(fill(Side.BUY, 1.0, 100.0))
    r = p.apply_fill(fill(Side.SELL, 3.0, 110.0))
    assert r == pytest.approx(10.0)  # only the closed 1.0 realises
    pos = p.position("BTCUSDT")
    assert pos.qty == pytest.approx(-2.0) and pos.avg_price == 110.0  # the rest opens at the fill price
    eq, unreal = p.mark({"BTCUSDT": 100.0})
    assert unreal == pytest.approx(20.0)  # short 2 from 110, marked at 100
    assert eq == pytest.approx(0 + 10 + 20)
    r = p.apply_fill(fill(Side.BUY, 2.0, 105.0))
    assert r == pytest.approx(10.0) and p.position("BTCUSDT").qty == 0.0


def test_dust_snaps_to_flat():
    p = Portfolio(0.0)
    p.apply_fill(fill(Side.BUY, 0.1, 100.0))
    p.apply_fill(fill(Side.BUY, 0.2, 100.0))
    p.apply_fill(fill(Side.SELL, 0.3, 100.0))  # 0.1 + 0.2 - 0.3 != 0 in floats
    assert p.position("BTCUSDT").qty == 0.0


@pytest.mark.parametrize("bad", [dict(price=math.nan), dict(price=-1.0), dict(qty=0.0), dict(qty=math.inf),
                                 dict(fee=-0.1), dict(fee=math.nan)])
def test_bad_fill_refused_and_state_unchanged(bad):
    p = Portfolio(100.0)
    kw = dict(side=Side.BUY, qty=1.0, price=10.0, fee=0.0) | bad
    with pytest.raises(ValueError):
        p.apply_fill(fill(**kw))
    assert p.cash == 100.0 and p.positions == {} and p.n_fills == 0


def test_mark_needs_prices_for_open_positions():
    p = Portfolio(100.0)
    p.apply_fill(fill(Side.BUY, 1.0, 10.0))
    with pytest.raises(ValueError, match="BTCUSDT"):
        p.mark({})
    with pytest.raises(ValueError):
        p.mark({"BTCUSDT": math.nan})


def test_commission_in_the_base_asset_moves_the_position_not_cash():
    """Binance charges a buy's commission in the base it receives: 1 BTC bought with 0.001 BTC kept by the venue
    is a 0.999 BTC holding and 100 USDT paid; the fee (0.1 USDT at the fill price) is in ``fees``."""
    p = Portfolio(1000.0)
    f = Fill("f-1", "o-1", "BTCUSDT", Side.BUY, 100.0, 1.0, 0.1, "taker", 1, 0.001)
    assert f.position_delta == pytest.approx(0.999)
    assert p.apply_fill(f) == 0.0
    pos = p.position("BTCUSDT")
    assert pos.qty == pytest.approx(0.999) and pos.avg_price == 100.0 and pos.fees == pytest.approx(0.1)
    assert p.cash == pytest.approx(900.0)
    assert p.mark({"BTCUSDT": 100.0})[0] == pytest.approx(1000.0 - 0.1)  # equity fell by the fee, once
    r = p.apply_fill(Fill("f-2", "o-2", "BTCUSDT", Side.SELL, 110.0, 0.999, 0.10989, "taker", 2))
    assert r == pytest.approx(0.999 * 10.0) and p.qty("BTCUSDT") == 0.0
    assert p.cash == pytest.approx(1000.0 + 0.999 * 10.0 - 0.1 - 0.10989)
    with pytest.raises(ValueError, match="fee_qty"):
        p.apply_fill(Fill("f-3", "o-3", "BTCUSDT", Side.BUY, 100.0, 1.0, 100.0, "taker", 3, 1.0))


_fills = st.lists(st.tuples(st.sampled_from(["BTCUSDT", "ETHUSDT"]), st.sampled_from([Side.BUY, Side.SELL]),
                            st.floats(1e-5, 50.0), st.floats(1.0, 1e5), st.floats(0.0, 0.01), st.booleans()),
                  max_size=60)


@settings(max_examples=300, deadline=None)
@given(_fills, st.floats(1.0, 1e5), st.floats(1.0, 1e5), st.floats(0.0, 1e7))
def test_pnl_identity(fills, mark_btc, mark_eth, start):
    """cash + sum(qty * mark) == start + realised + unrealised - fees, realised EXCLUDING fees; also when a
    buy's commission is kept in the base asset (``fee_qty``)."""
    p = Portfolio(start)
    realised_sum = 0.0
    held = []  # what each fill moves the holding by
    for i, (sym, side, q, px, fee_rate, in_base) in enumerate(fills):
        fq = q * fee_rate if in_base and side == Side.BUY else 0.0
        held.append((sym, side * q - fq))
        realised_sum += p.apply_fill(Fill(f"f-{i}", f"o-{i}", sym, side, px, q, q * px * fee_rate, "taker", i, fq))
    marks = {"BTCUSDT": mark_btc, "ETHUSDT": mark_eth}
    equity, unreal = p.mark(marks)
    scale = start + sum(q * px for _, _, q, px, *_ in fills) + sum(abs(p.qty(s)) * m for s, m in marks.items())
    tol = 1e-9 * max(scale, 1.0)
    assert equity == pytest.approx(p.cash + sum(p.qty(s) * m for s, m in marks.items()), abs=tol)
    assert equity == pytest.approx(start + p.realised + unreal - p.fees, abs=tol)
    assert p.realised == pytest.approx(realised_sum, abs=tol)
    # cash moved by the notionals and the fees paid in quote only
    cash = start - sum(side * q * px + (0.0 if in_base and side == Side.BUY else q * px * fr)
                       for _, side, q, px, fr, in_base in fills)
    assert p.cash == pytest.approx(cash, abs=tol)
    # signed quantity is exactly the sum of what the fills moved the holding by (up to dust snapping)
    for s in marks:
        net = sum(d for sym, d in held if sym == s)
        assert p.qty(s) == pytest.approx(net, abs=1e-9 * max(1.0, sum(q for _, _, q, *_ in fills)))
