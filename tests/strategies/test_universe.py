"""DollarProfitOptimizer.decide_universe: entries ranked across symbols by dollar edge after costs, admitted under
max_open_positions and the gross / net / per-symbol caps (Hypothesis over arbitrary universes), plus ties and edges."""
from __future__ import annotations

import dataclasses
import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from market.events import Bar, Side
from market.filters import SymbolFilters
from strategies.optimizer import BookTop, DollarProfitOptimizer, OptimizerConfig, SymbolSignal
from strategies.risk import AccountState, RiskConfig
from strategies.sizing import is_step_multiple, position_size

S = 1_000_000_000
H = 3600 * S
T0 = 20_000 * 86_400 * S
FEE = 0.001


@dataclasses.dataclass(frozen=True)
class Pos:
    qty: float
    avg_price: float


def filters_for(sym: str, price: float) -> SymbolFilters:
    """Binance-like filters that follow the price: ~1e-6 relative tick, a lot worth ~0.1-1 quote."""
    tick = 10.0 ** math.floor(math.log10(price) - 6)
    lot = 10.0 ** math.ceil(math.log10(0.1 / price))
    return SymbolFilters(sym, tick, lot, lot, 9e12 * lot, 5.0)


def make(filters, *, max_pos=3, gross=1.0, net=1.0, frac=0.25, allow_short=False, equity=100_000.0, **kw):
    cfg = OptimizerConfig(allow_short=allow_short, trade_selected_timeframe_only=False, max_position_fraction=frac,
                          exit_on_reversal=False, peak_exit=False, **kw)
    risk = RiskConfig(max_open_positions=max_pos, max_gross_exposure=gross, max_net_exposure=net,
                      max_position_notional=1e12, max_order_notional=1e12)
    return DollarProfitOptimizer(cfg, risk, filters=filters, fee_rate=FEE, timeframes=("1h",),
                                 starting_equity=equity)


def row(sym, price, p_up, atr_frac=0.01, spread_bps=1.0, i=0, stale=False):
    b = Bar(sym, "1h", T0 + i * H, price, price * 1.001, price * 0.999, price, 10.0)
    half = price * spread_bps * 1e-4 / 2
    return SymbolSignal(sym, b, {"xgboost": p_up, "lstm": p_up}, atr_frac * price, BookTop(price - half, price + half),
                        stale)


def expected(opt: DollarProfitOptimizer, r: SymbolSignal, equity: float) -> tuple[int, float, float, float] | None:
    """Independent re-derivation (module docstring formulas + sizing.position_size): direction, entry price,
    sized qty and dollar edge after costs; None when the row is no entry candidate."""
    cfg = opt.cfg
    p = r.predictions["xgboost"]
    move = cfg.expected_move_atr_mult * r.atr / r.bar.close
    cost = 2 * FEE + (r.book.ask - r.book.bid) / r.book.mid + 2 * cfg.slippage_bps * 1e-4
    edge = abs(p - 0.5) * 2 * move
    if p == 0.5 or edge <= cfg.edge_cost_multiple * cost:
        return None
    d = 1 if p > 0.5 else -1
    if d < 0 and not cfg.allow_short:
        return None
    price = r.book.ask if d > 0 else r.book.bid
    sz = position_size(equity=equity, price=price, atr=r.atr, strength=min(1.0, abs(2 * p - 1)),
                       timeframe_factor=1.0, risk_per_trade=cfg.risk_per_trade, stop_atr_mult=cfg.stop_atr_mult,
                       max_position_notional=opt.risk_cfg.max_position_notional,
                       max_position_fraction=cfg.max_position_fraction, filters=opt.filters[r.symbol])
    if not sz.ok:
        return None
    return d, price, sz.qty, sz.qty * price * (edge - cost)


def check_admission(opt, rows, account, pending: dict[str, tuple[int, float]], intents, equity):
    """Every invariant of one universe decision, recomputed from the inputs and the returned intents.
    ``pending``: symbol -> (direction, notional) of entries still in flight before this decision."""
    rc = opt.risk_cfg
    entries = [i for i in intents if not i.reduce_only]
    assert len({i.client_order_id for i in intents}) == len(intents)
    held = {s for s, p in account.positions.items() if p.qty != 0}
    gross = sum(abs(p.qty) * account.marks[s] for s, p in account.positions.items())
    net = sum(p.qty * account.marks[s] for s, p in account.positions.items())
    gross += sum(n for _, n in pending.values())
    net += sum(d * n for d, n in pending.values())
    occupied = held | set(pending)
    by_sym = {r.symbol: r for r in rows}
    exp = {s: expected(opt, r, equity) for s, r in by_sym.items() if s not in occupied}
    cands = {s: e for s, e in exp.items() if e is not None}
    ranking = opt.ranking.get("1h", ())
    # the ranking holds exactly the candidates, best dollar edge first, with the independently computed numbers
    assert {k.symbol for k in ranking} == set(cands)
    for k in ranking:
        d, price, qty, dollar = cands[k.symbol]
        assert (k.direction, k.price, k.qty) == (d, price, qty)
        assert k.dollar_edge == pytest.approx(dollar, rel=1e-9, abs=1e-9)
    edges = [k.dollar_edge for k in ranking]
    assert edges == sorted(edges, reverse=True)
    # the admitted entries are the ranking's admitted ones, in the same order
    assert [i.symbol for i in entries] == [k.symbol for k in ranking if k.admitted_qty > 0]
    assert all(i.qty == k.admitted_qty for i, k in zip(entries, [k for k in ranking if k.admitted_qty > 0]))
    # walk the ranking with our own totals: every limit holds after each entry, every refusal is justified
    slots = rc.max_open_positions - len(occupied)
    for k in ranking:
        f = opt.filters[k.symbol]
        if k.admitted_qty == 0:
            if slots > 0:  # refused with a free slot: the room left cannot hold the venue minimum
                room = min(rc.max_gross_exposure * equity - gross,
                           rc.max_net_exposure * equity - (net if k.direction > 0 else -net))
                assert k.reason.startswith("no_room")
                assert room < max(f.min_qty * k.price, f.min_notional) + f.lot_step * k.price
            else:
                assert k.reason == "max_positions"
            continue
        assert slots > 0, "more symbols open than max_open_positions"
        slots -= 1
        notional = k.admitted_qty * k.price
        assert k.admitted_qty <= k.qty and is_step_multiple(k.admitted_qty, f.lot_step)
        assert k.admitted_qty >= f.min_qty and notional >= f.min_notional
        if k.admitted_qty < k.qty:  # cut down only by a binding portfolio cap
            assert k.reason in ("clipped_gross", "clipped_net")
        gross += notional
        net += k.direction * notional
        assert gross <= rc.max_gross_exposure * equity * (1 + 1e-9)
        assert k.direction * net <= rc.max_net_exposure * equity * (1 + 1e-9)
        assert notional <= opt.cfg.max_position_fraction * equity * (1 + 1e-9)  # per-symbol cap
    return entries


SYMS = [f"S{i}USDT" for i in range(12)]


@st.composite
def universe(draw):
    n = draw(st.integers(1, 12))
    syms = SYMS[:n]
    prices = {s: 10.0 ** draw(st.floats(-3, 5)) for s in syms}
    equity = 10.0 ** draw(st.floats(3, 7))
    allow_short = draw(st.booleans())
    held = {}
    for s in syms:
        if draw(st.integers(0, 4)) == 0:  # some symbols already held (either way when shorts are allowed)
            frac = draw(st.floats(0.001, 0.6))
            sign = draw(st.sampled_from((1, -1))) if allow_short else 1
            held[s] = sign * frac * equity / prices[s]
    knobs = dict(max_pos=draw(st.integers(1, 8)), gross=draw(st.floats(0.05, 3.0)), net=draw(st.floats(0.05, 3.0)),
                 frac=draw(st.floats(0.01, 1.0)), allow_short=allow_short,
                 slippage_bps=draw(st.sampled_from((0.0, 0.5, 3.0))))
    rounds = []
    for _ in range(2):
        rounds.append({s: (draw(st.floats(0.0, 1.0)), draw(st.floats(0.001, 0.05)), draw(st.floats(0.0, 30.0)))
                       for s in syms})
    return syms, prices, equity, held, knobs, rounds


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(universe())
def test_universe_never_exceeds_limits_and_ranks_by_dollar_edge(u):
    syms, prices, equity, held, knobs, rounds = u
    filters = {s: filters_for(s, prices[s]) for s in syms}
    opt = make(filters, equity=equity, **knobs)
    account = AccountState(equity, {s: Pos(q, prices[s]) for s, q in held.items()}, dict(prices))
    pending: dict[str, tuple[int, float]] = {}
    for i, rnd in enumerate(rounds):  # round 1's entries stay pending (never filled) during round 2
        rows = [row(s, prices[s], p, a, sp, i=i) for s, (p, a, sp) in rnd.items()]
        intents = opt.decide_universe("1h", rows, account, T0 + (i + 1) * H)
        entries = check_admission(opt, rows, account, pending, intents, equity)
        for e in entries:
            k = next(k for k in opt.ranking["1h"] if k.symbol == e.symbol)
            pending[e.symbol] = (int(e.side), e.qty * k.price)


@settings(max_examples=150, deadline=None)
@given(n=st.integers(2, 12), max_pos=st.integers(1, 6), ps=st.lists(st.floats(0.55, 1.0), min_size=12, max_size=12))
def test_without_binding_caps_the_top_k_by_dollar_edge_win(n, max_pos, ps):
    """Caps far away: exactly the max_open_positions best candidates by dollar edge are opened, full size."""
    syms = SYMS[:n]
    prices = {s: 10.0 ** (i % 5) for i, s in enumerate(syms)}
    filters = {s: filters_for(s, prices[s]) for s in syms}
    opt = make(filters, max_pos=max_pos, gross=100.0, net=100.0, frac=0.02)
    account = AccountState(100_000.0, {}, dict(prices))
    rows = [row(s, prices[s], ps[i]) for i, s in enumerate(syms)]
    cands = {r.symbol: expected(opt, r, 100_000.0) for r in rows}
    cands = {s: e for s, e in cands.items() if e is not None}
    best = sorted(cands, key=lambda s: (-cands[s][3], s))[:max_pos]
    intents = opt.decide_universe("1h", rows, account, T0 + H)
    assert [i.symbol for i in intents] == best
    assert all(i.qty == cands[i.symbol][2] and i.side is Side.BUY for i in intents)


# ------------------------------------------------------------------------------------------------ unit cases
PRICES = {"AAAUSDT": 100.0, "BBBUSDT": 100.0, "CCCUSDT": 100.0}
FILT = {s: filters_for(s, p) for s, p in PRICES.items()}


def flat(equity=100_000.0):
    return AccountState(equity, {}, dict(PRICES))


def test_ties_are_broken_by_symbol_and_the_decision_is_deterministic():
    rows = [row(s, 100.0, 0.8) for s in ("CCCUSDT", "AAAUSDT", "BBBUSDT")]  # identical edges
    a = make(FILT, max_pos=2).decide_universe("1h", rows, flat(), T0 + H)
    b = make(FILT, max_pos=2).decide_universe("1h", list(reversed(rows)), flat(), T0 + H)
    assert [i.symbol for i in a] == ["AAAUSDT", "BBBUSDT"]
    assert [(i.symbol, i.qty, i.client_order_id) for i in a] == [(i.symbol, i.qty, i.client_order_id) for i in b]


def test_higher_edge_wins_the_last_slot_and_the_loser_is_reported():
    o = make(FILT, max_pos=1)
    rows = [row("AAAUSDT", 100.0, 0.7), row("BBBUSDT", 100.0, 0.9), row("CCCUSDT", 100.0, 0.5)]
    out = o.decide_universe("1h", rows, flat(), T0 + H)
    assert [i.symbol for i in out] == ["BBBUSDT"]
    rk = {k.symbol: k for k in o.ranking["1h"]}
    assert set(rk) == {"AAAUSDT", "BBBUSDT"}  # p = 0.5: no candidate
    assert rk["AAAUSDT"].reason == "max_positions" and rk["AAAUSDT"].admitted_qty == 0
    assert o.counters["rank.max_positions"] == 1


def test_gross_cap_cuts_the_second_entry_to_the_room_left():
    # frac 0.25 of 100k = 25k per symbol; gross cap 0.4 -> 40k: first 25k full, second cut to 15k, third refused
    o = make(FILT, max_pos=3, gross=0.4, frac=0.25)
    rows = [row(s, 100.0, p) for s, p in (("AAAUSDT", 0.99), ("BBBUSDT", 0.98), ("CCCUSDT", 0.97))]
    out = o.decide_universe("1h", rows, flat(), T0 + H)
    ask = 100.0 * (1 + 0.5e-4)
    assert [i.symbol for i in out] == ["AAAUSDT", "BBBUSDT"]
    assert out[0].qty * ask == pytest.approx(25_000, rel=1e-3)
    assert out[0].qty * ask + out[1].qty * ask <= 40_000 and out[1].qty * ask == pytest.approx(15_000, rel=1e-3)
    assert [k.reason for k in o.ranking["1h"]] == ["entry", "clipped_gross", "no_room.gross"]


def test_existing_positions_and_pending_entries_use_slots_and_room():
    o = make(FILT, max_pos=2, gross=1.0, frac=0.5)
    held = AccountState(100_000.0, {"AAAUSDT": Pos(600.0, 100.0)}, dict(PRICES))  # 60k held
    out = o.decide_universe("1h", [row("BBBUSDT", 100.0, 0.99)], held, T0 + H)
    assert len(out) == 1 and out[0].qty * 100.005 <= 40_000 + 1e-6  # only the 40k left under gross 1.0
    # BBB's entry is pending (not filled): the two slots are used, CCC cannot open
    out = o.decide_universe("1h", [row("CCCUSDT", 100.0, 0.99, i=1)], held, T0 + 2 * H)
    assert out == [] and o.ranking["1h"][0].reason == "max_positions"


def test_net_cap_limits_longs_but_lets_shorts_reduce_it():
    o = make(FILT, max_pos=5, gross=3.0, net=0.3, frac=0.25, allow_short=True)
    held = AccountState(100_000.0, {"AAAUSDT": Pos(300.0, 100.0)}, dict(PRICES))  # net +30k = the cap
    # the long ranks first (stronger signal) and finds no net room; the short is admitted (greedy, best first)
    out = o.decide_universe("1h", [row("BBBUSDT", 100.0, 0.99),
                                   row("CCCUSDT", 100.0, 0.05)], held, T0 + H)
    assert [(i.symbol, i.side) for i in out] == [("CCCUSDT", Side.SELL)]
    assert {k.symbol: k.reason for k in o.ranking["1h"]}["BBBUSDT"] == "no_room.net"


def test_replayed_boundary_returns_the_same_intents_and_stale_or_bad_rows_do_not_enter():
    o = make(FILT, max_pos=3)
    rows = [row("AAAUSDT", 100.0, 0.9), row("BBBUSDT", 100.0, 0.9, stale=True), row("AAAUSDT", 100.0, 0.9)]
    first = o.decide_universe("1h", rows, flat(), T0 + H)
    assert [i.symbol for i in first] == ["AAAUSDT"]
    assert o.counters["duplicate_row"] == 1 and o.counters["stale_book"] == 1
    again = o.decide_universe("1h", rows[:2], flat(), T0 + H)
    assert again == first and o.counters["entry"] == 1
    bad = row("CCCUSDT", 100.0, 0.9)
    bad = dataclasses.replace(bad, atr=math.nan)
    assert o.decide_universe("1h", [bad], flat(), T0 + H) == [] and o.counters["bad_input"] == 1


def test_no_equity_no_entries():
    for eq in (0.0, -5.0, math.nan):
        o = make(FILT)
        assert o.decide_universe("1h", [row("AAAUSDT", 100.0, 0.9)], flat(eq), T0 + H) == []


def test_slippage_estimate_is_a_cost():
    """A candidate whose edge beats fees + spread but not fees + spread + 2 x slippage is no candidate."""
    r = row("AAAUSDT", 100.0, 0.6, atr_frac=0.0075)  # edge 0.2 * 0.015 = 0.003; cost 0.002 + 0.0001 (+ slip)
    assert make(FILT, slippage_bps=0.0).decide_universe("1h", [r], flat(), T0 + H)
    assert make(FILT, slippage_bps=5.0).decide_universe("1h", [r], flat(), T0 + H) == []


def test_per_symbol_api_is_the_one_row_universe():
    """on_bar_close (what the pipeline calls) and a one-row decide_universe give the same intent."""
    a, b = make(FILT), make(FILT)
    r = row("AAAUSDT", 100.0, 0.9)
    x = a.on_bar_close(r.symbol, "1h", r.bar, r.predictions, r.atr, r.book, flat(), T0 + H)
    y = b.decide_universe("1h", [r], flat(), T0 + H)
    assert x == y and len(x) == 1
