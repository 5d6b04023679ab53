"""daemon/backtest/report.py: metrics against hand computation, the trade ledger's identities, and the report files."""
from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest

from daemon.backtest.report import (FillRecord, ReportData, RunResult, TradeLedger, calibration_table, equity_metrics,
                           trade_metrics, write_report)

M = 60_000_000_000


def test_equity_metrics_hand_computed():
    # 100 -> 110 -> 99 -> 99 -> 121 on 1m bars
    e = np.array([100.0, 110.0, 99.0, 99.0, 121.0])
    ts = np.arange(5) * M
    m = equity_metrics(e, ts, 60, position=np.array([0, 1, 1, 0, 0.0]))
    r = np.array([0.1, -0.1, 0.0, 121 / 99 - 1])
    ppy = 365 * 24 * 60
    assert m["periods_per_year"] == ppy
    assert m["total_return"] == pytest.approx(0.21)
    assert m["annualised_return"] is None  # 21 % in 4 minutes compounds past float range
    m2 = equity_metrics(np.array([100.0, 100.5]), np.array([0, 86400 * 10**9]), 86400)
    assert m2["annualised_return"] == pytest.approx(1.005 ** 365 - 1)
    assert m["sharpe"] == pytest.approx(r.mean() / r.std(ddof=1) * math.sqrt(ppy))
    assert m["sortino"] == pytest.approx(r.mean() / math.sqrt((0.1 ** 2) / 4) * math.sqrt(ppy))
    # the deepest drawdown: 110 -> 99 (10 %), peak at bar 1, recovered at bar 4
    assert m["max_drawdown"] == pytest.approx(0.1)
    assert m["max_drawdown_peak_ns"] == 1 * M and m["max_drawdown_trough_ns"] == 2 * M
    assert m["max_drawdown_duration_s"] == 3 * 60 and m["max_drawdown_recovered"]
    assert m["longest_underwater_s"] == 3 * 60
    assert m["exposure"] == pytest.approx(0.4)
    assert m["pnl"] == pytest.approx(21.0)


def test_drawdown_not_recovered_lasts_to_the_end_and_flat_curve_has_no_ratio():
    e = np.array([100.0, 120.0, 90.0, 100.0])
    m = equity_metrics(e, np.arange(4) * M, 60)
    assert m["max_drawdown"] == pytest.approx(0.25)
    assert not m["max_drawdown_recovered"] and m["max_drawdown_duration_s"] == 2 * 60
    flat = equity_metrics(np.full(10, 5.0), np.arange(10) * M, 60)
    assert flat["sharpe"] is None and flat["sortino"] is None and flat["max_drawdown"] == 0.0
    with pytest.raises(ValueError):
        equity_metrics(np.array([1.0, math.nan]), np.arange(2), 60)


def _fill(ts, side, price, qty, fee, mid=None, tf="5m", reason="entry"):
    return FillRecord(ts, "BTCUSDT", side, price, qty, fee, price if mid is None else mid, tf, reason)


def test_ledger_round_trips_flip_and_identity_with_cash():
    led = TradeLedger()
    fills = [
        _fill(1, 1, 100.0, 2.0, 0.2, mid=99.9),              # long 2
        _fill(2, 1, 102.0, 1.0, 0.1),                        # long 3 (avg 100.667)
        _fill(3, -1, 105.0, 4.0, 0.42, mid=105.1, reason="reversal"),  # closes 3, opens short 1 (flip)
        _fill(4, 1, 101.0, 1.0, 0.101, tf="", reason="flatten"),       # closes the short
    ]
    cash = 0.0
    for f in fills:
        led.on_fill(f)
        cash += -f.side * f.price * f.qty - f.fee
    assert led.open_symbols() == []
    t1, t2 = led.trades
    assert (t1.direction, t1.qty, t1.exit_reason, t1.timeframe) == (1, 3.0, "reversal", "5m")
    assert t1.entry_price == pytest.approx((200 + 102) / 3) and t1.exit_price == 105.0
    assert t1.gross_pnl == pytest.approx(3 * 105 - 302) and t1.fees == pytest.approx(0.2 + 0.1 + 0.42 * 3 / 4)
    assert (t2.direction, t2.qty, t2.timeframe) == (-1, 1.0, "5m")  # timeframe of the fill that opened it
    assert t2.gross_pnl == pytest.approx(105 - 101) and t2.fees == pytest.approx(0.42 / 4 + 0.101)
    # all positions closed: trade P&L sums to the cash change, fees included
    assert sum(t.pnl for t in led.trades) == pytest.approx(cash)
    tm = trade_metrics(led.trades, led.fills)
    assert tm["trades"] == 2 and tm["win_rate"] == 1.0 and tm["profit_factor"] is None
    assert tm["fees_paid"] == pytest.approx(0.2 + 0.1 + 0.42 + 0.101)
    assert tm["slippage_paid"] == pytest.approx(0.1 * 2 + 0.1 * 4)


def test_trade_metrics_profit_factor_and_average():
    led = TradeLedger()
    for i, (buy, sell) in enumerate([(100, 110), (100, 95), (100, 97)]):
        led.on_fill(_fill(10 * i, 1, buy, 1, 0.0))
        led.on_fill(_fill(10 * i + 1, -1, sell, 1, 0.0))
    tm = trade_metrics(led.trades)
    assert tm["profit_factor"] == pytest.approx(10 / 8) and tm["avg_trade"] == pytest.approx(2 / 3)
    assert tm["win_rate"] == pytest.approx(1 / 3)


def test_calibration_table_bins():
    p = np.array([0.05, 0.12, 0.18, 0.55, 0.58, 0.95, np.nan])
    y = np.array([0, 1, 0, 1, 1, 1, 1])
    rows = calibration_table(p, y, bins=[0, 0.2, 0.5, 1.0])
    assert [(r["n"], r["up_rate"]) for r in rows] == [(3, pytest.approx(1 / 3)), (3, 1.0)]
    assert calibration_table(p, np.full(7, -1)) == []


def test_write_report_files(tmp_path):
    n = 300
    ts = (np.arange(n) + 1) * M
    price = 100 + np.cumsum(np.sin(np.arange(n) / 7))
    led = TradeLedger()
    led.on_fill(_fill(ts[10], 1, price[10], 1.0, 0.1))
    led.on_fill(_fill(ts[50], -1, price[50], 1.0, 0.1, reason="peak"))
    pos = np.zeros(n)
    pos[10:50] = 1.0
    eq = 1000 + np.where(pos > 0, price - price[10], 0.0)
    eq[50:] = 1000 + led.trades[0].pnl
    strat = RunResult("strategy", ts, eq, pos, led.fills, led.trades)
    bh = RunResult("buy_and_hold", ts, 1000 * price / price[0], np.ones(n))
    rng = np.random.default_rng(0)
    calib = {"5m": {"xgboost": (rng.random(200), rng.integers(0, 2, 200))}}
    data = ReportData("BTCUSDT", 60, ts, price, {"strategy": strat, "buy_and_hold": bh}, calib, {"note": "toy"})
    m = write_report(tmp_path, data)
    for f in ("metrics.json", "trades.csv", "trades_buy_and_hold.csv", "index.html", "equity_drawdown.png",
              "price_trades.png", "pnl_by_timeframe.png", "calibration.png"):
        assert (tmp_path / f).stat().st_size > 0, f
    on_disk = json.loads((tmp_path / "metrics.json").read_text())
    assert on_disk["runs"]["strategy"]["trades"] == 1 == m["runs"]["strategy"]["trades"]
    assert "sqrt(525600)" in on_disk["annualisation"]
    rows = list(csv.DictReader(open(tmp_path / "trades.csv")))
    assert len(rows) == 1 and float(rows[0]["pnl"]) == led.trades[0].pnl
    html = (tmp_path / "index.html").read_text()
    for f in ("equity_drawdown.png", "price_trades.png", "pnl_by_timeframe.png", "calibration.png"):
        assert f'src="{f}"' in html
    assert (tmp_path / "equity_drawdown.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
