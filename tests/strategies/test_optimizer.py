"""DollarProfitOptimizer: hand-computed signal/selection numbers, the bar-close flow, exits, idempotent ids."""
from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from market.events import Bar, Fill, Side
from market.portfolio import Portfolio
from strategies.optimizer import BookTop, DollarProfitOptimizer, MarketMetrics, OptimizerConfig
from strategies.risk import AccountState, RiskConfig, RiskManager
from strategies.sizing import is_step_multiple

from market.filters import SymbolFilters

S = 1_000_000_000
H = 3600 * S
T0 = 20_000 * 86_400 * S
BTC = SymbolFilters("BTCUSDT", 0.01, 0.00001, 0.00001, 9000.0, 5.0)
FILTERS = {"BTCUSDT": BTC}
BOOK = BookTop(59_999.99, 60_000.01)


def make(timeframes=("1h",), cfg=None, risk=None, equity=100_000.0):
    return DollarProfitOptimizer(cfg or OptimizerConfig(), risk or RiskConfig(), filters=FILTERS, fee_rate=0.001,
                                 timeframes=timeframes, starting_equity=equity)


def bar(i, o, h, lo, c, tf="1h", vol=10.0, step=H):
    return Bar("BTCUSDT", tf, T0 + i * step, o, h, lo, c, vol)


def acct(qty=0.0, avg=0.0, equity=100_000.0, mark=60_000.0):
    pos = {"BTCUSDT": Portfolio(1.0).position("BTCUSDT")}
    pos = {"BTCUSDT": dataclasses.replace(pos["BTCUSDT"], qty=qty, avg_price=avg)} if qty else {}
    return AccountState(equity, pos, {"BTCUSDT": mark})


def close_ts(b, step=H):
    return b.open_ns + step


# ----------------------------------------------------------------------------------------------- signal
def test_signal_hand_computed():
    o = make()
    # p = (0.8 + 0.7) / 2 = 0.75; move = 2 x 600 / 60,000 = 0.02; edge = 0.25 x 2 x 0.02 = 0.01
    # cost = 2 x 0.001 + 0.0001 = 0.0021 < 0.01 -> long, strength |2p - 1| = 0.5
    s = o.combine_signal({"xgboost": 0.8, "lstm": 0.7}, atr=600.0, price=60_000.0, spread=0.0001)
    assert (s.direction, s.reason) == (1, "ok")
    assert s.p_up == pytest.approx(0.75) and s.edge == pytest.approx(0.01) and s.cost == pytest.approx(0.0021)
    assert s.strength == pytest.approx(0.5)
    # ATR 60: move 0.002, edge 0.001 < cost -> no trade although the models agree
    s = o.combine_signal({"xgboost": 0.8, "lstm": 0.7}, atr=60.0, price=60_000.0, spread=0.0001)
    assert (s.direction, s.reason) == (0, "below_cost")
    s = o.combine_signal({"xgboost": 0.2, "lstm": 0.3}, atr=600.0, price=60_000.0, spread=0.0001)
    assert s.direction == -1 and s.strength == pytest.approx(0.5)


def test_signal_weights_missing_and_bad_predictions():
    o = make(cfg=OptimizerConfig(w_xgboost=0.75, w_lstm=0.25))
    s = o.combine_signal({"xgboost": 0.9, "lstm": 0.5}, atr=600.0, price=60_000.0, spread=0.0)
    assert s.p_up == pytest.approx(0.8)
    s = o.combine_signal({"xgboost": float("nan"), "lstm": 0.7}, atr=600.0, price=60_000.0, spread=0.0)
    assert s.p_up == pytest.approx(0.7)  # a NaN model is left out, the other decides alone
    s = o.combine_signal({"xgboost": 1.5}, atr=600.0, price=60_000.0, spread=0.0)
    assert s.reason == "no_prediction" and s.direction == 0
    assert o.combine_signal({"lstm": 0.9}, atr=-1.0, price=60_000.0, spread=0.0).reason == "bad_input"


def test_signal_from_an_expected_return_replaces_p_up():
    o = make()
    # move = 2 x 600 / 60,000 = 0.02; cost = 2 x 0.001 + 0.0001 = 0.0021
    s = o.combine_signal({"expected_return": 0.005, "xgboost": 0.1}, atr=600.0, price=60_000.0, spread=0.0001)
    assert (s.direction, s.reason) == (1, "ok")  # the expected return wins over a P(up) pointing down
    assert s.edge == pytest.approx(0.005) and s.strength == pytest.approx(0.25) and s.p_up == pytest.approx(0.625)
    s = o.combine_signal({"expected_return": -0.03}, atr=600.0, price=60_000.0, spread=0.0001)
    assert s.direction == -1 and s.strength == 1.0 and s.p_up == pytest.approx(0.0)
    s = o.combine_signal({"expected_return": 0.002}, atr=600.0, price=60_000.0, spread=0.0001)
    assert (s.direction, s.reason) == (0, "below_cost")  # 0.002 < 0.0021
    # not finite, or absurd (|r| >= 1): ignored, the P(up) path decides
    for bad in (float("nan"), float("inf"), 5.0):
        s = o.combine_signal({"expected_return": bad, "xgboost": 0.8, "lstm": 0.7}, atr=600.0, price=60_000.0,
                             spread=0.0001)
        assert s.p_up == pytest.approx(0.75)


# ----------------------------------------------------------------------------------------------- selection
METRICS = {
    "1m": MarketMetrics(0.001, 1e6, 0.0001),
    "5m": MarketMetrics(0.0025, 2e6, 0.0001),
    "15m": MarketMetrics(0.004, 4e6, 0.0001),
    "1h": MarketMetrics(0.01, 3e6, 0.0001),
}


def test_timeframe_selection_breakdown_hand_computed():
    o = make(timeframes=("1m", "5m", "15m", "1h"))
    ch = o.select_optimal_timeframe(METRICS)
    b = ch.breakdown
    # volatility = min(1, v / 0.005); cost = clamp(1 - 0.0021 / (2 v)); volume = vol / 4e6; no history -> 0.5, 0.5
    assert b["1m"].components == pytest.approx({"volatility": 0.2, "cost": 0.0, "volume": 0.25, "hit_rate": 0.5,
                                                "pnl": 0.5})
    assert b["5m"].components["cost"] == pytest.approx(0.58)
    assert b["15m"].components["cost"] == pytest.approx(0.7375)
    assert b["1h"].components == pytest.approx({"volatility": 1.0, "cost": 0.895, "volume": 0.75, "hit_rate": 0.5,
                                                "pnl": 0.5})
    # weights 0.15 / 0.3 / 0.15 / 0.2 / 0.2
    assert {tf: s.score for tf, s in b.items()} == pytest.approx(
        {"1m": 0.2675, "5m": 0.524, "15m": 0.69125, "1h": 0.731})
    assert b["1h"].weights == {"volatility": 0.15, "cost": 0.3, "volume": 0.15, "hit_rate": 0.2, "pnl": 0.2}
    assert ch.timeframe == "1h" and ch.ranking == ("1h", "15m", "5m", "1m")
    assert o.select_optimal_timeframe(METRICS) == ch  # deterministic


def test_model_performance_moves_the_choice():
    o = make(timeframes=("1m", "5m", "15m", "1h"))
    for i in range(30):  # 24 of 30 right: shrunk (24 + 10) / (30 + 20) = 0.68 -> hit score 1.0 -> 15m +0.1
        o.performance.record_prediction("15m", i < 24)
    ch = o.select_optimal_timeframe(METRICS)
    assert ch.breakdown["15m"].components["hit_rate"] == pytest.approx(1.0)
    assert ch.timeframe == "15m" and ch.score == pytest.approx(0.79125)


def test_ties_follow_the_fixed_order_and_bad_metrics_are_ineligible():
    same = {"5m": MarketMetrics(0.004, 1e6, 0.0), "15m": MarketMetrics(0.004, 1e6, 0.0),
            "1h": MarketMetrics(float("nan"), 1e6, 0.0)}
    assert make(timeframes=("5m", "15m", "1h")).select_optimal_timeframe(same).timeframe == "5m"
    ch = make(timeframes=("15m", "5m", "1h")).select_optimal_timeframe(same)
    assert ch.timeframe == "15m" and ch.ranking == ("15m", "5m")
    assert not ch.breakdown["1h"].eligible and ch.breakdown["1h"].note == "bad_metrics"
    assert make().select_optimal_timeframe({}).timeframe is None


# ----------------------------------------------------------------------------------------------- flow
def _enter(o):
    b0 = bar(0, 60_000, 60_100, 59_900, 60_000)
    # ATR 1000: base = 1000 / 2000 = 0.5 BTC, x strength 0.5 x 1h factor 1.0 = 0.25 BTC (15,000 < caps)
    out = o.on_bar_close("BTCUSDT", "1h", b0, {"xgboost": 0.8, "lstm": 0.7}, 1000.0, BOOK, acct(), close_ts(b0))
    assert len(out) == 1
    it = out[0]
    assert (it.side, it.qty, it.reduce_only, it.reason, it.timeframe) == (Side.BUY, 0.25, False, "entry", "1h")
    assert o.on_fill(Fill("f1", it.client_order_id, "BTCUSDT", Side.BUY, 60_000.0, 0.25, 15.0, "taker",
                          close_ts(b0) + 1)) is None
    pos = o.positions["BTCUSDT"]
    assert (pos.stop, pos.take_profit, pos.qty) == (58_000.0, 63_000.0, 0.25)  # 60,000 -/+ 2,000 / 3,000
    return it


def test_entry_then_peak_exit_and_closed_trade():
    o = make()
    _enter(o)
    a = acct(0.25, 60_000.0)
    keep = {"xgboost": 0.6, "lstm": 0.6}
    b1 = bar(1, 60_000, 60_500, 59_000, 60_200)
    assert o.on_bar_close("BTCUSDT", "1h", b1, keep, 1000.0, BOOK, a, close_ts(b1)) == []
    b2 = bar(2, 60_200, 62_000, 60_100, 61_800)  # +2000 from entry arms the peak exit (>= 1 ATR)
    assert o.on_bar_close("BTCUSDT", "1h", b2, keep, 1000.0, BOOK, a, close_ts(b2)) == []
    b3 = bar(3, 61_800, 61_900, 60_700, 60_800)  # 62,000 - 60,800 = 1,200 >= 1 ATR retracement
    out = o.on_bar_close("BTCUSDT", "1h", b3, keep, 1000.0, BOOK, a, close_ts(b3))
    assert [(i.side, i.qty, i.reduce_only, i.reason) for i in out] == [(Side.SELL, 0.25, True, "peak")]
    tr = o.on_fill(Fill("f2", out[0].client_order_id, "BTCUSDT", Side.SELL, 60_790.0, 0.25, 15.2, "taker",
                        close_ts(b3) + 1))
    # (60,790 - 60,000) x 0.25 - (15 + 15.2) = 167.3
    assert tr.pnl == pytest.approx(167.3) and tr.reason == "peak"
    assert "BTCUSDT" not in o.positions
    m = o.get_performance_metrics(close_ts(b3))
    assert m.trades == 1 and m.win_rate == 1.0 and m.realised_pnl == pytest.approx(167.3)


def test_entry_net_of_base_commission_and_exit_leaving_dust_closes_the_trade():
    """The venue kept 0.000255 BTC of a 0.25 BTC buy: the managed position is 0.249745 (off the 1e-5 lot grid);
    the exit sells the whole lots (0.24974) and the trade closes on them, although 0.000005 BTC (dust below one
    lot) stays in the account."""
    o = make()
    b0 = bar(0, 60_000, 60_100, 59_900, 60_000)
    it = o.on_bar_close("BTCUSDT", "1h", b0, {"xgboost": 0.8, "lstm": 0.7}, 1000.0, BOOK, acct(), close_ts(b0))[0]
    o.on_fill(Fill("f1", it.client_order_id, "BTCUSDT", Side.BUY, 60_000.0, 0.25, 15.0, "taker", close_ts(b0) + 1,
                   0.000255))
    pos = o.positions["BTCUSDT"]
    assert pos.qty == pytest.approx(0.249745)  # what the account holds, not what was executed
    assert "BTCUSDT" not in o._pending  # the entry order is complete: 0.25 executed
    tr = o.on_fill(Fill("f2", "exit-1", "BTCUSDT", Side.SELL, 61_000.0, 0.24974, 15.2, "taker", close_ts(b0) + 2))
    assert tr is not None and tr.qty == pytest.approx(0.24974)  # 0.000005 left: dust, the trade is closed
    assert tr.pnl == pytest.approx(0.24974 * 1000.0 - 15.0 - 15.2)
    assert "BTCUSDT" not in o.positions and o.counters["closed_trades"] == 1


def test_stop_exit_on_bar_low_and_on_price():
    o = make()
    _enter(o)
    b1 = bar(1, 60_000, 60_100, 57_900, 58_500)
    out = o.on_bar_close("BTCUSDT", "1h", b1, {"xgboost": 0.6, "lstm": 0.6}, 1000.0, BOOK, acct(0.25, 60_000.0),
                         close_ts(b1))
    assert [(i.reason, i.side, i.reduce_only) for i in out] == [("stop", Side.SELL, True)]
    o2 = make()
    _enter(o2)
    assert o2.on_price("BTCUSDT", 62_000.0, acct(0.25, 60_000.0), T0 + H + 5) == []
    out = o2.on_price("BTCUSDT", 63_000.0, acct(0.25, 60_000.0), T0 + H + 6)
    assert [(i.reason, i.qty) for i in out] == [("take_profit", 0.25)]
    assert o2.on_price("BTCUSDT", 64_000.0, acct(0.25, 60_000.0), T0 + H + 7) == []  # exit already pending


def test_reversal_and_time_exits():
    o = make()
    _enter(o)
    b1 = bar(1, 60_000, 60_100, 59_900, 60_000)
    out = o.on_bar_close("BTCUSDT", "1h", b1, {"xgboost": 0.2, "lstm": 0.2}, 1000.0, BOOK, acct(0.25, 60_000.0),
                         close_ts(b1))
    assert [i.reason for i in out] == ["reversal"]
    o = make(cfg=OptimizerConfig(max_bars_held=("1h=3",)))
    _enter(o)
    flat = {"xgboost": 0.5, "lstm": 0.5}
    reasons = []
    for i in range(1, 5):
        b = bar(i, 60_000, 60_100, 59_900, 60_000)
        reasons.append([x.reason for x in o.on_bar_close("BTCUSDT", "1h", b, flat, 1000.0, BOOK,
                                                          acct(0.25, 60_000.0), close_ts(b))])
    assert reasons == [[], [], ["time"], []]  # the 3rd bar after the entry fill; then the exit is pending


def test_short_entry_levels():
    o = make(cfg=OptimizerConfig(allow_short=True))  # paper's explicit choice; the default is long-only
    b0 = bar(0, 60_000, 60_100, 59_900, 60_000)
    out = o.on_bar_close("BTCUSDT", "1h", b0, {"xgboost": 0.2, "lstm": 0.3}, 1000.0, BOOK, acct(), close_ts(b0))
    assert out[0].side == Side.SELL
    o.on_fill(Fill("f", out[0].client_order_id, "BTCUSDT", Side.SELL, 60_000.0, out[0].qty, 1.0, "taker", 1))
    p = o.positions["BTCUSDT"]
    assert (p.direction, p.stop, p.take_profit) == (-1, 62_000.0, 57_000.0)
    no_short = make()  # the default
    assert no_short.on_bar_close("BTCUSDT", "1h", b0, {"xgboost": 0.2, "lstm": 0.3}, 1000.0, BOOK, acct(),
                                 close_ts(b0)) == []
    assert no_short.counters["short_disabled"] == 1


def test_stale_book_bad_input_and_unselected_timeframe():
    o = make()
    b0 = bar(0, 60_000, 60_100, 59_900, 60_000)
    strong = {"xgboost": 0.9, "lstm": 0.9}
    assert o.on_bar_close("BTCUSDT", "1h", b0, strong, 1000.0, BOOK, acct(), close_ts(b0), book_stale=True) == []
    assert o.counters["stale_book"] == 1
    assert o.on_bar_close("BTCUSDT", "1h", bar(1, 1, 1, 1, float("nan")), strong, 1000.0, None, acct(), 0) == []
    assert o.counters["bad_input"] == 1
    o = make(timeframes=("1m", "1h"))
    assert o.on_bar_close("BTCUSDT", "1h", b0, strong, 1000.0, BOOK, acct(), close_ts(b0))  # 1h selected
    o.on_order_done(o._pending["BTCUSDT"].intent.client_order_id)  # the venue rejected it
    m1 = Bar("BTCUSDT", "1m", T0 + H, 60_000, 60_050, 59_950, 60_000, 1.0)
    assert o.on_bar_close("BTCUSDT", "1m", m1, {"xgboost": 1.0, "lstm": 1.0}, 80.0, BOOK, acct(),
                          T0 + H + 60 * S) == []
    assert o.selected["BTCUSDT"].timeframe == "1h" and o.counters["not_selected_timeframe"] == 1


def test_replayed_bar_is_idempotent_and_ids_are_deterministic():
    b0 = bar(0, 60_000, 60_100, 59_900, 60_000)
    args = ("BTCUSDT", "1h", b0, {"xgboost": 0.8, "lstm": 0.7}, 1000.0, BOOK, acct(), close_ts(b0))
    o = make()
    first = o.on_bar_close(*args)
    assert o.on_bar_close(*args) == first and o.counters["replayed_bar"] == 1
    assert o.counters["entry"] == 1
    assert make().on_bar_close(*args) == first  # a restarted process makes the same decision, same id
    older = bar(-1, 60_000, 60_100, 59_900, 60_000)
    assert o.on_bar_close("BTCUSDT", "1h", older, {"lstm": 0.9}, 1000.0, BOOK, acct(), 0) == []
    b1 = bar(1, 60_000, 60_100, 59_900, 60_000)
    o.on_order_done(first[0].client_order_id)
    nxt = o.on_bar_close("BTCUSDT", "1h", b1, {"xgboost": 0.8, "lstm": 0.7}, 1000.0, BOOK, acct(), close_ts(b1))
    assert nxt[0].client_order_id != first[0].client_order_id


def test_reconcile_adopts_unknown_position_and_drops_vanished_one():
    o = make()
    b0 = bar(0, 60_000, 60_100, 57_000, 58_000)
    out = o.on_bar_close("BTCUSDT", "1h", b0, {"xgboost": 0.5, "lstm": 0.5}, 1000.0, BOOK, acct(0.1, 59_500.0),
                         close_ts(b0))
    # adopted at its average price: stop 57,500, low 57,000 touches it -> exit at once
    assert o.counters["reconcile_adopted"] == 1
    assert [(i.reason, i.qty) for i in out] == [("stop", 0.1)]
    o = make()
    _enter(o)
    b1 = bar(1, 60_000, 60_100, 59_900, 60_000)
    o.on_bar_close("BTCUSDT", "1h", b1, {"lstm": 0.5}, 1000.0, BOOK, acct(), close_ts(b1))
    assert "BTCUSDT" not in o.positions and o.counters["reconcile_dropped"] == 1


# ----------------------------------------------------------------------------------------------- properties
step = st.tuples(st.floats(-0.03, 0.03), st.floats(0, 0.02), st.floats(0, 0.02), st.floats(0, 1), st.floats(0, 1),
                 st.floats(0.001, 0.05), st.booleans())


@settings(max_examples=60, deadline=None)
@given(st.lists(step, min_size=1, max_size=60), st.floats(1_000, 1e7))
def test_simulated_run_respects_limits_and_risk(steps, equity0):
    """Bars + random predictions; fills at the close through the RiskManager into a real Portfolio."""
    risk_cfg = RiskConfig()
    o = make(equity=equity0, risk=risk_cfg)
    rm = RiskManager(risk_cfg, FILTERS)
    pf = Portfolio(equity0)
    price = 60_000.0
    seen_ids: dict[str, tuple] = {}
    for i, (ret, up, down, px, pl, atr_frac, halt) in enumerate(steps):
        o_ = price
        price = max(100.0, price * (1 + ret))
        b = bar(i, o_, max(o_, price) * (1 + up), min(o_, price) * (1 - down), price)
        ts = close_ts(b)
        if halt:
            rm.halt("test", ts)
        else:
            rm.resume(ts)
        eq, _ = pf.mark({"BTCUSDT": price})
        a = AccountState(eq, pf.positions, {"BTCUSDT": price})
        book = BookTop(price - 0.01, price + 0.01)
        for it in o.on_bar_close("BTCUSDT", "1h", b, {"xgboost": px, "lstm": pl}, atr_frac * price, book, a, ts):
            key = (b.open_ns, it.reason)
            assert seen_ids.setdefault(it.client_order_id, key) == key, "one id per decision"
            if not it.reduce_only:
                assert is_step_multiple(it.qty, BTC.lot_step) and it.qty >= BTC.min_qty
                assert it.qty * price >= BTC.min_notional
                entry = book.ask if it.side == Side.BUY else book.bid  # the price it was sized at
                assert it.qty * entry <= min(risk_cfg.max_position_notional,
                                                o.cfg.max_position_fraction * eq) * (1 + 1e-9)
                assert pf.qty("BTCUSDT") == 0.0  # one position per symbol, no pyramiding
            d = rm.check(it, a, ts)
            if halt and d.allowed:
                assert it.reduce_only
            if not d.allowed:
                o.on_order_done(it.client_order_id)
                continue
            fill = Fill(f"f{i}{it.reason}", it.client_order_id, "BTCUSDT", it.side, price, d.adjusted_qty,
                        price * d.adjusted_qty * 0.001, "taker", ts + 1)
            pf.apply_fill(fill)
            o.on_fill(fill)
            if d.adjusted_qty < it.qty:
                o.on_order_done(it.client_order_id, filled=True)
    m = o.get_performance_metrics(T0 + len(steps) * H)
    closed = sum(t.pnl for t in o.performance.trades)
    assert m.realised_pnl == pytest.approx(closed)


# ----------------------------------------------------------------------------------------------- real data
def _run_real(k1m, days):
    """30 days of real BTCUSDT klines as 15m + 1h bars, causal momentum 'models', Wilder ATR(14), fills at the
    close +/- half a 1-tick spread with a 0.1 % fee, through RiskManager into a real Portfolio."""
    from engines.data import klines_to_bars, resample

    k = k1m[: days * 1440]
    bars = sorted(klines_to_bars(resample(k, "15m")) + klines_to_bars(resample(k, "1h")),
                  key=lambda b: (b.open_ns + (900 if b.timeframe == "15m" else 3600) * S, b.timeframe))
    filters = {"BTCUSDT": BTC}
    risk_cfg = RiskConfig()
    o = DollarProfitOptimizer(OptimizerConfig(), risk_cfg, filters=filters, fee_rate=0.001,
                              timeframes=("15m", "1h"), starting_equity=100_000.0)
    rm = RiskManager(risk_cfg, filters)
    pf = Portfolio(100_000.0)
    state = {}  # per timeframe: prev close, ATR, closes
    intents = []
    for b in bars:
        tf_s = 900 if b.timeframe == "15m" else 3600
        ts = b.open_ns + tf_s * S
        st_ = state.setdefault(b.timeframe, {"prev": None, "atr": None, "closes": []})
        prev = st_["prev"]
        tr = b.high - b.low if prev is None else max(b.high - b.low, abs(b.high - prev), abs(b.low - prev))
        st_["atr"] = tr if st_["atr"] is None else st_["atr"] + (tr - st_["atr"]) / 14
        st_["prev"] = b.close
        closes = st_["closes"]
        closes.append(b.close)
        atr = st_["atr"]
        if len(closes) < 15:
            continue
        mom = (closes[-1] - closes[-5]) / (2 * atr)
        p = 0.5 + max(-0.45, min(0.45, 0.5 * mom))
        book = BookTop(b.close - 0.005, b.close + 0.005)
        eq, _ = pf.mark({"BTCUSDT": b.close})
        a = AccountState(eq, pf.positions, {"BTCUSDT": b.close})
        for it in o.on_bar_close("BTCUSDT", b.timeframe, b, {"xgboost": p, "lstm": 0.5 + 0.8 * (p - 0.5)}, atr,
                                 book, a, ts):
            intents.append(it)
            if not it.reduce_only:
                entry = book.ask if it.side == Side.BUY else book.bid
                assert it.qty * entry <= min(risk_cfg.max_position_notional, 0.25 * eq) * (1 + 1e-9)
                assert is_step_multiple(it.qty, BTC.lot_step) and it.qty >= BTC.min_qty
            d = rm.check(it, a, ts)
            if not d.allowed:
                o.on_order_done(it.client_order_id)
                continue
            px = book.ask if it.side == Side.BUY else book.bid
            f = Fill(f"f{len(intents)}", it.client_order_id, "BTCUSDT", it.side, px, d.adjusted_qty,
                     px * d.adjusted_qty * 0.001, "taker", ts + 1)
            pf.apply_fill(f)
            o.on_fill(f)
            if d.adjusted_qty < it.qty:
                o.on_order_done(it.client_order_id, filled=True)
    return o, pf, intents, bars


def test_real_btc_klines_run_matches_portfolio_accounting(btc_klines_path):
    from engines.data import load_klines_csv

    k = load_klines_csv(btc_klines_path)
    o, pf, intents, bars = _run_real(k, 30)
    assert o.counters["closed_trades"] >= 5, o.counters  # the run really trades
    assert len({i.client_order_id for i in intents}) == len(intents)
    # two independent accountings agree: the optimizer's closed trades (net of fees) vs the portfolio's
    # realised P&L minus fees, once the open position (if any) is taken out at its entry cost
    open_fees = 0.0
    if pf.qty("BTCUSDT") != 0.0:
        pos = o.positions["BTCUSDT"]
        open_fees = pos.entry_fees
    closed = sum(t.pnl for t in o.performance.trades)
    assert closed == pytest.approx(pf.realised - pf.fees + open_fees, abs=1e-6)
    m = o.get_performance_metrics(bars[-1].open_ns)
    assert m.trades == len(o.performance.trades)
    assert 0.0 <= m.max_drawdown_pct < 1.0
    for tf in ("15m", "1h"):  # model hit rates are tracked over the last hit_rate_window calls
        assert m.per_timeframe[tf].predictions == o.cfg.hit_rate_window
    # deterministic: the same data gives the same decisions
    o2, _, intents2, _ = _run_real(k, 30)
    assert [i.client_order_id for i in intents2] == [i.client_order_id for i in intents]


def test_refused_exit_backs_off_exponentially_and_raises_an_alarm():
    """Issue #14: a refused stop exit was re-sent on every trade (1,450 refusals in 150 s). Now each refusal
    waits exit_retry_initial_s * 2**(n-1) (capped at exit_retry_max_s) of event time before the next send, and
    the position is listed in exit_alarms until an exit fills."""
    o = make(cfg=OptimizerConfig(exit_retry_initial_s=1.0, exit_retry_max_s=4.0))
    _enter(o)
    a = acct(0.25, 60_000.0)
    t = T0 + H + 10 * S
    sent = []
    for k in range(0, 40 * 4):  # 40 s of trades every 250 ms, all beyond the take profit, every exit refused
        ts = t + k * S // 4
        out = o.on_price("BTCUSDT", 63_000.0, a, ts)
        if out:
            sent.append((ts - t) / S)
            o.on_order_done(out[0].client_order_id, False)
    # sends at 0, +1, +2, +4, then every 4 s (the cap): not one per trade
    assert sent[:6] == [0.0, 1.0, 3.0, 7.0, 11.0, 15.0] and len(sent) == 12
    assert o.counters["exit_refused"] == 12 and o.counters["exit_backoff"] > 100
    assert o.exit_alarms()["BTCUSDT"]["refusals"] == 12
    # an exit that fills clears the alarm
    out = o.on_price("BTCUSDT", 63_000.0, a, t + 60 * S)
    o.on_fill(Fill("fx", out[0].client_order_id, "BTCUSDT", Side.SELL, 63_000.0, 0.1, 1.0, "taker", t + 60 * S))
    assert o.exit_alarms() == {}


def test_exit_retry_bounds_are_validated():
    with pytest.raises(ValueError, match="exit_retry_max_s"):
        make(cfg=OptimizerConfig(exit_retry_initial_s=10.0, exit_retry_max_s=1.0))
