"""``tradingd backtest --data DIR`` through the live TradingPipeline (daemon/backtest/universe.py), on a small real
1h universe: portfolio caps at every boundary, fees, one batched inference call per boundary, the embargo end to
end, metrics.json recomputed from the recorded equity, and the baselines through the same costs."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from daemon.backtest.universe import symbol_filters

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::RuntimeWarning")]

RUNS = ("strategy", "momentum", "reversal", "buy_and_hold")


def _holdings_after(fills, ts: np.ndarray, symbols) -> np.ndarray:
    """(len(ts), N) quantities held after each boundary, rebuilt from the fills alone."""
    col = {s: j for j, s in enumerate(symbols)}
    q = np.zeros(len(symbols))
    out = np.zeros((len(ts), len(symbols)))
    fs = sorted(fills, key=lambda f: f.ts)
    k = 0
    for i, t in enumerate(ts):
        while k < len(fs) and fs[k].ts <= t:
            q[col[fs[k].symbol]] += fs[k].side * fs[k].qty
            k += 1
        out[i] = q
    return out


def test_caps_hold_at_every_boundary(universe_run):
    _, m, pb = universe_run
    r = pb.runs["strategy"]
    lo, hi = pb.span
    panel = pb.panel
    assert len(r.fills) >= 20, "the run must trade for the caps to mean anything"
    held = _holdings_after(r.fills, r.ts[1:-1], panel.symbols)  # the last point is after the final flatten
    close = panel.close[lo:hi - 1]
    n_open = (np.abs(held) > 1e-12).sum(axis=1)
    assert n_open.max() <= pb.cfg.risk.max_open_positions == 2
    gross = np.nansum(np.abs(held) * close, axis=1)
    # the gross cap limits what a boundary adds (held positions then drift with their prices): at every boundary
    # with an entry, the gross at that close is within the cap of the equity before it (the entry's fee, spread
    # and slippage on top)
    entry_ts = {f.ts for f in r.fills if f.reason == "entry"}
    at = np.array([t in entry_ts for t in r.ts[1:-1]])
    assert at.sum() >= 10
    cap = pb.cfg.risk.max_gross_exposure * r.equity[1:-1] * (1 + 0.001)  # the equity at that close
    assert (gross[at] <= cap[at]).all(), (gross[at] / r.equity[1:-1][at]).max()
    # and it did bind: candidates were refused for the count or cut by the gross cap
    opt = r.counters["optimizer"]
    assert opt.get("rank.max_positions", 0) + opt.get("rank.clipped_gross", 0) + opt.get("rank.no_room.gross", 0) > 0
    assert m["pipeline"]["limits"]["max_open_positions"] == 2


def test_fees_are_the_sum_of_fill_fees_at_the_configured_rate(universe_run):
    args, m, pb = universe_run
    for name in RUNS:
        r = pb.runs[name]
        fees = sum(f.fee for f in r.fills)
        got = m["strategy"] if name == "strategy" else m["baselines"][name]
        assert got["fees"] == pytest.approx(fees, rel=1e-12) and got["trades"] == len(r.fills)
        for f in r.fills:
            assert f.fee == pytest.approx(args.fee * f.price * f.qty, rel=1e-9)


def test_every_run_pays_the_same_spread_and_slippage(universe_run):
    """Each fill is half the spread plus the slippage away from its book's mid (to the tick), for the strategy and
    every baseline alike."""
    args, _, pb = universe_run
    want = args.spread_bps * 1e-4 / 2 + args.slippage_bps * 1e-4
    col = {s: j for j, s in enumerate(pb.panel.symbols)}
    for name in RUNS:
        assert pb.runs[name].fills
        for f in pb.runs[name].fills:
            tick = symbol_filters(f.symbol, pb.panel.close[:, col[f.symbol]]).tick_size
            away = f.side * (f.price - f.mid)
            assert want * f.mid * (1 - 1e-9) <= away <= want * f.mid + tick * (1 + 1e-6), (name, f)


def test_buy_and_hold_is_one_entry_and_one_exit_fee_per_symbol(universe_run):
    args, m, pb = universe_run
    r = pb.runs["buy_and_hold"]
    lo = pb.span[0]
    present = [s for j, s in enumerate(pb.panel.symbols) if np.isfinite(pb.panel.close[lo, j])]
    entries = [f for f in r.fills if f.reason == "entry"]
    exits = [f for f in r.fills if f.reason == "end_of_backtest"]
    assert sorted(f.symbol for f in entries) == sorted(present) == sorted(f.symbol for f in exits)
    assert all(f.side == 1 for f in entries) and all(f.side == -1 for f in exits)
    assert m["baselines"]["buy_and_hold"]["fees"] == pytest.approx(
        sum(args.fee * f.price * f.qty for f in entries + exits))
    # equal weight: each entry within one lot of cash / n
    notional = np.array([f.price * f.qty for f in entries])
    assert notional.max() / notional.min() < 1.001


def test_replay_engine_called_once_per_boundary_with_every_symbol(universe_run):
    _, _, pb = universe_run
    panel = pb.panel
    lo, hi = pb.span
    for name in ("strategy", "momentum", "reversal"):
        trace = pb.runs[name].trace
        ts = [t for t, _ in trace]
        assert ts == sorted(set(ts)), "one call per boundary"
        assert ts[-1] == hi - 1 and ts[0] <= lo - 50  # warm bars included
        for t, syms in trace:
            present = {s for j, s in enumerate(panel.symbols) if np.isfinite(panel.close[t, j])}
            assert set(syms) == present and len(syms) == len(set(syms)), t
        assert pb.runs[name].counters["engine"]["calls"] == len(trace)


def test_no_prediction_comes_from_a_model_or_calibration_that_saw_its_bar(universe_run):
    """Every served expected return at bar t comes from window k's model (trained on rows < train_hi, labels end
    before the test start) and a calibration on rows whose labels also end before it; and it equals the slope times
    the score's cross-sectional z-score (scipy) at t alone."""
    _, m, pb = universe_run
    h = m["pipeline"]["horizon"]
    lo, hi = pb.span
    cal = {c["window"]: c for c in pb.calibration["strategy"]}
    score, er = pb.scores["strategy"], pb.er["strategy"]
    served = 0
    for t, syms in pb.runs["strategy"].trace:
        if t < lo:  # warm bars: the engine answers nothing before the calibrated span
            continue
        k = next(i for i, w in enumerate(pb.windows) if w.test_lo <= t < w.test_hi)
        w = pb.windows[k]
        assert w.train_hi - 1 + h < w.test_lo <= t
        c = cal[k]
        assert c["rows_hi"] - 1 + h < w.test_lo and c["rows_lo"] >= pb.windows[0].test_lo
        row = score[t]
        ok = np.isfinite(row)
        z = np.full(row.shape, np.nan)
        z[ok] = stats.zscore(row[ok]) if ok.sum() > 1 and np.ptp(row[ok]) > 0 else 0.0
        np.testing.assert_allclose(er[t][ok], c["slope"] * z[ok], rtol=1e-9, atol=1e-15)
        served += 1
    assert served == hi - lo
    # the strategy never traded before the calibrated span
    assert min(f.ts for f in pb.runs["strategy"].fills) > int(pb.panel.open_ns[lo])


def test_metrics_json_keys_recomputed_from_the_equity_curve(universe_run):
    args, _, pb = universe_run
    m = json.loads((Path(args.report) / "metrics.json").read_text())
    bpy = 365 * 24  # 1h bars per year
    for name in RUNS:
        got = m["strategy"] if name == "strategy" else m["baselines"][name]
        keys = {"return_pct", "sharpe", "max_drawdown_pct", "trades", "fees"} if name == "strategy" else \
            {"return_pct", "sharpe"}
        assert keys <= set(got)
        eq = np.array(m["pipeline"]["equity"][name]["equity"], dtype=float)
        assert eq[0] == m["pipeline"]["starting_cash"]
        r = np.diff(eq) / eq[:-1]
        assert got["return_pct"] == pytest.approx((eq[-1] / eq[0] - 1) * 100, rel=1e-9, abs=1e-12)
        assert got["sharpe"] == pytest.approx(r.mean() / r.std(ddof=1) * math.sqrt(bpy), rel=1e-9)
        dd = (eq / np.maximum.accumulate(eq) - 1).min() * 100
        assert got["max_drawdown_pct"] == pytest.approx(dd, rel=1e-9, abs=1e-12)
    assert m["strategy"]["source"] == "TradingPipeline" and "return_pct" in m["strategy_vectorised"]
    # the final equity is the cash after the last flatten: the fills explain the whole change
    r = pb.runs["strategy"]
    cash = pb.runs["strategy"].equity[0] - sum(f.side * f.price * f.qty + f.fee for f in r.fills)
    assert r.equity[-1] == pytest.approx(cash, rel=1e-9)
    html = (Path(args.report) / "index.html").read_text()
    assert "pipeline_equity_1h.png" in html and (Path(args.report) / "pipeline_equity_1h.png").stat().st_size > 5000


def test_exits_at_the_horizon(universe_run):
    _, m, pb = universe_run
    h = m["pipeline"]["horizon"]
    assert m["pipeline"]["max_bars_held"] == f"1h={h}"
    for t in pb.runs["strategy"].trades:
        held_bars = (t.exit_ns - t.entry_ns) / 3_600_000_000_000
        assert held_bars <= h + 0.5, t


def test_replay_features_match_the_live_evaluator(small_universe_1h):
    """The replay's precomputed ATR and warm-up equal engines.features.IncrementalFeatures bar for bar (real bars)."""
    from daemon.backtest.universe import ReplayFeatures, _Cursor, panel_atr
    from engines.features import IncrementalFeatures
    from market.events import Bar
    from research.universe import load_universe
    panel = load_universe(small_universe_1h).panels["1h"]
    atr, first = panel_atr(panel)
    for j in (0, 3):
        live, cur = IncrementalFeatures("1h"), _Cursor()
        rep = ReplayFeatures(atr[:, j], int(first[j]), cur)
        for t in np.flatnonzero(np.isfinite(panel.close[:, j])).tolist():
            b = Bar(panel.symbols[j], "1h", int(panel.open_ns[t]), *(float(x[t, j]) for x in (
                panel.open, panel.high, panel.low, panel.close, panel.volume)))
            cur.t = t
            row_live, row_rep = live.update(b), rep.update(b)
            assert (row_live is None) == (row_rep is None), t
            if live.atr is None:
                assert rep.atr is None
            else:
                assert rep.atr == pytest.approx(live.atr, rel=1e-9), t


def test_vectorised_book_prices_equal_the_book():
    from daemon.backtest.universe import ReplayBook, book_prices
    from market.filters import SymbolFilters
    rng = np.random.default_rng(3)
    mids = np.exp(rng.uniform(-9, 11, 500))
    ticks = np.array([10.0 ** (math.floor(math.log10(m)) - 5) for m in mids])
    b, a, fb, fa = book_prices(mids, ticks, 1e-4, 1e-4)
    for i, m in enumerate(mids):
        bk = ReplayBook(SymbolFilters("X", ticks[i], 1.0, 1.0, 1e9, 5.0), 2.0, 1.0)
        bk.set_mid(float(m))
        assert (bk.best_bid()[0], bk.best_ask()[0]) == (b[i], a[i])
        assert bk.depth(1) == ([(fb[i], 1e15)], [(fa[i], 1e15)])
