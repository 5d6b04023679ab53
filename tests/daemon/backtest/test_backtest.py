"""tradingd backtest on real BTCUSDT klines with tiny models: report files and their accounting identities,
causality (a perturbed future changes no earlier decision), walk-forward windows, bad CSV input."""
from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest

from daemon.backtest.klines import SynthBook, run_backtest
from daemon.backtest.options import BTCUSDT_FILTERS, BacktestOptions, walk_forward_windows
from daemon.config import config_from_dict

DAY = 86_400_000_000_000
M = 60_000_000_000

# tiny and fast; expected_move_atr_mult is raised so that near-0.5 tiny-model predictions still clear costs and
# the run really trades (the accounting checks below would be vacuous otherwise)
OPTS = BacktestOptions(timeframes=("1m", "5m"), train_days=3, test_days=1.5, warm_days=0.5, xgb_rounds=15,
                       xgb_early_stopping=5, lstm_epochs=1, lstm_hidden=8, lstm_seq_len=16, threads=1)
CFG = config_from_dict({"optimizer": {"expected_move_atr_mult": 25.0}})


@pytest.fixture(scope="module")
def k6(btc_klines_path):
    from engines.data import load_klines_csv
    return load_klines_csv(btc_klines_path)[:6 * 1440]


@pytest.fixture(scope="module")
def run6(k6, tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    return run_backtest(k6, out, opts=OPTS, cfg=CFG), out


def test_report_files_and_accounting(run6):
    res, out = run6
    for f in ("metrics.json", "trades.csv", "index.html", "equity_drawdown.png", "price_trades.png",
              "pnl_by_timeframe.png", "calibration.png", "trades_buy_and_hold.csv", "trades_baseline_momentum.csv"):
        assert (out / f).stat().st_size > 0, f
    m = json.loads((out / "metrics.json").read_text())
    s = m["runs"]["strategy"]
    rows = list(csv.DictReader(open(out / "trades.csv")))
    assert s["trades"] == len(rows) > 0, m["info"]["counters"]
    assert s["fees_paid"] > 0 and s["slippage_paid"] > 0
    # every position closed at the end: the trade list accounts for the whole equity change, fees included
    total = sum(float(r["pnl"]) for r in rows)
    assert total == pytest.approx(s["end_equity"] - s["start_equity"], abs=1e-6)
    assert s["start_equity"] == m["info"]["starting_cash"]
    assert sum(float(r["fees"]) for r in rows) == pytest.approx(s["fees_paid"], rel=1e-9)
    for name in ("buy_and_hold", "baseline_momentum"):
        r = m["runs"][name]
        assert r["trade_pnl_sum"] == pytest.approx(r["pnl"], abs=1e-6), name
        assert r["start_equity"] == m["info"]["starting_cash"]
    assert m["runs"]["buy_and_hold"]["trades"] == 1 and m["runs"]["buy_and_hold"]["fees_paid"] > 0
    # the pipeline's incremental features agree with the batch rows the predictions came from
    bp = m["info"]["counters"]["batch_predictions"]
    assert all(c.get("feature_mismatch", 0) == 0 and c.get("served", 0) > 0 for c in bp.values()), bp
    # equity is marked every 1m bar of the traded span
    assert s["bars"] == int(round((m["end_ns"] - m["start_ns"]) / M)) + 1
    assert 'src="equity_drawdown.png"' in (out / "index.html").read_text()


def test_walk_forward_models_never_see_their_window(run6):
    res, _ = run6
    m = res.metrics
    assert len(res.windows) == 2
    for w, info in zip(res.windows, m["info"]["windows"]):
        assert w.train_end_ns == w.test_start_ns and w.train_start_ns < w.train_end_ns
        for tf, t in info["timeframes"].items():
            if "train_end_ns" in t:
                assert t["train_end_ns"] + {"1m": 1, "5m": 5}[tf] * M <= w.test_start_ns
    ws = walk_forward_windows(0, 10 * DAY, 4, 3)
    assert [(w.train_start_ns, w.test_start_ns, w.test_end_ns) for w in ws] == [
        (0, 4 * DAY, 7 * DAY), (3 * DAY, 7 * DAY, 10 * DAY)]


def test_causality_perturbed_future_changes_no_earlier_decision(k6, run6):
    """Bars after t are changed (prices scaled by a wobbling factor, volumes doubled); every decision, order and
    fill before t must be identical, and the run after t must differ (else the test proves nothing)."""
    from engines.data import Klines
    res_a, _ = run6
    t = int(k6.open_ns[0]) + int(3.75 * DAY)  # inside the first traded window
    after = np.asarray(k6.open_ns) >= t
    f = np.where(after, 1 + 0.03 * np.sin(np.arange(len(k6)) / 50.0), 1.0)
    kb = Klines(k6.open_ns, k6.open * f, k6.high * f, k6.low * f, k6.close * f,
                np.where(after, k6.volume * 2, k6.volume), symbol=k6.symbol)
    res_b = run_backtest(kb, None, opts=OPTS, cfg=CFG)
    for name in ("strategy", "baseline_momentum"):
        a, b = res_a.decisions[name], res_b.decisions[name]
        before_a = [d for d in a if d[0] <= t]
        before_b = [d for d in b if d[0] <= t]
        assert before_a == before_b, name
        if name == "strategy":
            assert len(before_a) > 0  # decisions with orders happened before t
        assert [d for d in a if d[0] > t] != [d for d in b if d[0] > t], name
    # the models' predictions for bars closing by t are identical too (and some were made)
    for tf in OPTS.timeframes:
        open_ns, pa = res_a.predictions[tf]
        _, pb = res_b.predictions[tf]
        pre = open_ns + {"1m": 1, "5m": 5}[tf] * M <= t
        for kind in ("xgboost", "lstm"):
            assert np.isfinite(pa[kind][pre]).sum() > 10, (tf, kind)
            assert np.array_equal(pa[kind][pre], pb[kind][pre], equal_nan=True), (tf, kind)
    eq_a = res_a.report.runs["strategy"]
    eq_b = res_b.report.runs["strategy"]
    pre = eq_a.ts_ns <= t
    assert np.array_equal(eq_a.equity[pre], eq_b.equity[eq_b.ts_ns <= t])


def test_warm_start_models_never_saw_the_window_they_trade(run6):
    """Window 2 continues window 1's models (warm start, the default): the previous model's data end before this
    window's test start, the chain is recorded, and XGBoost really grew on top of the previous trees."""
    res, _ = run6
    wins = res.metrics["info"]["windows"]
    assert res.windows[0].index == 0 and len(wins) == 2
    warmed = 0
    for w, info in zip(res.windows, wins):
        for tf, t in info["timeframes"].items():
            tf_m = {"1m": 1, "5m": 5}[tf] * M
            src = t.get("warm_start_from_end_ns")
            if w.index == 0:
                assert src is None
                continue
            assert src is not None, (w.index, tf)
            warmed += 1
            # the model it continued from stopped before the PREVIOUS window's test start, hence before this one
            assert src + tf_m <= res.windows[w.index - 1].test_start_ns < w.test_start_ns
            assert src == wins[w.index - 1]["timeframes"][tf]["train_end_ns"]
            assert t["train_end_ns"] + tf_m <= w.test_start_ns
    assert warmed == 2


def test_warm_start_refuses_a_model_from_the_future(k6, tmp_path):
    from engines.train import TrainSpec, train_timeframe, train_timeframe_warm
    spec = TrainSpec("5m", xgb_rounds=5, xgb_early_stopping=3, lstm_epochs=1, lstm_hidden=4, lstm_seq_len=8,
                     threads=1)
    later = k6[2 * 1440:5 * 1440]
    train_timeframe(later, spec, tmp_path / "later")
    with pytest.raises(ValueError, match="warm start from a model that saw data up to"):
        train_timeframe_warm(k6[:4 * 1440], spec, tmp_path / "w", tmp_path / "later")
    # forward in time it works, and XGBoost keeps every earlier tree
    out = train_timeframe_warm(k6[3 * 1440:6 * 1440], spec, tmp_path / "w2", tmp_path / "later", xgb_rounds=4)
    ws = out.metrics["xgboost"]["warm_start"]
    assert ws["trees_after"] > ws["trees_before"] >= 1
    assert out.data_window["warm_start_from"]["end_ns"] < out.data_window["end_ns"]
    assert out.metrics["lstm"]["warm_start"]["fine_tune_windows"] > 0


def test_xgb_continue_training_keeps_the_previous_trees():
    from engines.xgb_model import XGBoostModel
    rng = np.random.default_rng(0)
    X = rng.normal(size=(600, 5))
    y = (X[:, 0] + 0.3 * rng.normal(size=600) > 0).astype(float)
    m = XGBoostModel(n_estimators=5, nthread=1)
    m.train(X[:400], y[:400], X[400:], y[400:], None)
    before = m.booster.num_boosted_rounds()
    p_first = m.booster[:before].inplace_predict(X[:50], predict_type="margin")
    r = m.continue_training(X[:400], y[:400], X[400:], y[400:], 6, None)
    assert m.booster.num_boosted_rounds() == before + 6 == r.rounds_used
    np.testing.assert_array_equal(m.booster[:before].inplace_predict(X[:50], predict_type="margin"), p_first)
    assert m.num_boost_round == 5  # the cold-start budget is untouched


def test_lstm_fine_tune_keeps_standardisation(tmp_path):
    import torch
    old_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _fine_tune_check(tmp_path)
    finally:
        torch.set_num_threads(old_threads)


def _fine_tune_check(tmp_path):
    import torch

    from engines.lstm_model import LSTMModel
    rng = np.random.default_rng(1)
    X = rng.normal(size=(300, 8, 3)).astype(np.float32) * 5 + 2
    y = (X[:, -1, 0] > 2).astype(np.float32)
    m = LSTMModel(seq_len=8, hidden=4, layers=1, epochs=1, batch_size=64)
    m.train(X[:200], y[:200], X[200:], y[200:])
    m.save(tmp_path / "v")
    m2 = LSTMModel.load(tmp_path / "v")
    mean = m2.net.mean.clone()

    def val_loss():
        p = np.clip(m2.predict(X[250:]), 1e-7, 1 - 1e-7)
        return float(-np.mean(y[250:] * np.log(p) + (1 - y[250:]) * np.log(1 - p)))

    before = val_loss()
    r = m2.fine_tune(X[100:250] * 3, y[100:250], X[250:], y[250:], epochs=2)  # other scale: norm must not move
    assert torch.equal(m2.net.mean, mean) and r.epochs_run == 2
    # the best epoch is kept, and "no epoch" (the handed-over weights) competes: never worse on validation
    assert val_loss() <= before + 1e-6
    assert val_loss() == pytest.approx(r.best_val_loss, rel=1e-4)


def test_streamed_parallel_run_equals_serial_run(k6, tmp_path):
    """Training in a forked process streamed window by window (and the baseline forked) decides exactly as the
    serial run. The forked path needs a process that has not loaded torch/XGBoost (their OpenMP pools do not
    survive a fork), so it runs as the real CLI in a fresh interpreter; the serial run is in-process."""
    import subprocess
    import sys
    from dataclasses import replace
    from pathlib import Path

    from engines.data import load_klines_csv
    csv_path = tmp_path / "BTC_USDT-1m_six_days.csv"
    _write_csv(csv_path, _rows(k6, len(k6)))
    (tmp_path / "c.toml").write_text("[optimizer]\nexpected_move_atr_mult = 25.0\n")
    exe = Path(sys.executable).parent / "tradingd"
    args = [str(exe), "backtest", "--data", str(csv_path), "--report", str(tmp_path / "par"),
            "--config", str(tmp_path / "c.toml"), "--timeframes", "1m,5m", "--train-days", "3", "--test-days", "1.5",
            "--warm-days", "0.5", "--xgb-rounds", "15", "--xgb-early-stopping", "5", "--lstm-epochs", "1",
            "--lstm-hidden", "8", "--lstm-seq-len", "16", "--threads", "1"]
    r = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    par = json.loads((tmp_path / "par" / "metrics.json").read_text())
    assert "streamed" in par["info"]["timing"]["training_in"], par["info"]["timing"]
    assert par["info"]["timing"]["baseline_in"] == "forked process"
    res_s = run_backtest(load_klines_csv(csv_path), tmp_path / "ser", opts=replace(OPTS, parallel=False), cfg=CFG)
    ser = json.loads((tmp_path / "ser" / "metrics.json").read_text())
    assert ser["info"]["timing"]["training_in"].startswith("this process")
    assert par["runs"]["strategy"]["trades"] > 0
    for name in ("strategy", "baseline_momentum", "buy_and_hold"):
        for key in ("total_return", "trades", "fees_paid", "end_equity", "max_drawdown"):
            assert par["runs"][name][key] == ser["runs"][name][key], (name, key)
    for f in ("trades.csv", "trades_baseline_momentum.csv"):
        assert (tmp_path / "par" / f).read_text() == (tmp_path / "ser" / f).read_text(), f
    assert len(par["info"]["windows"]) == len(ser["info"]["windows"]) == 2
    for wp, ws in zip(par["info"]["windows"], ser["info"]["windows"]):
        for tf in wp["timeframes"]:
            a, b = dict(wp["timeframes"][tf]), dict(ws["timeframes"][tf])
            a.pop("train_seconds"), b.pop("train_seconds")
            assert a == b, (wp["index"], tf)


def test_synth_book_costs_always_on():
    b = SynthBook(BTCUSDT_FILTERS, spread_bps=1.0, level_bps=0.5, levels=5, level_notional=10_000)
    b.set_mid(60_000.0)
    bid, ask = b.best_bid()[0], b.best_ask()[0]
    assert bid < 60_000 < ask and ask - bid == pytest.approx(6.0, abs=0.011)
    bids, asks = b.depth(5)
    assert [p for p, _ in bids] == sorted((p for p, _ in bids), reverse=True) and len(asks) == 5
    assert all(abs(q * 60_000 - 10_000) < 1 for _, q in asks)
    assert all(round(p / 0.01) * 0.01 == pytest.approx(p) for p, _ in bids + asks)
    with pytest.raises(ValueError, match="costs are never off"):
        BacktestOptions(spread_bps=0).validate()


# ------------------------------------------------------------------------------------------------ bad input
def _write_csv(path, rows):
    with open(path, "w") as fh:
        fh.write("open_time_ms,open,high,low,close,volume\n")
        for r in rows:
            fh.write(",".join(str(x) for x in r) + "\n")


def _rows(k, n):
    return [[int(k.open_ns[i]) // 1_000_000, k.open[i], k.high[i], k.low[i], k.close[i], k.volume[i]]
            for i in range(n)]


@pytest.mark.parametrize("case, expect", [
    ("nan", r":5: NaN"), ("unsorted", r":7: timestamps not sorted"), ("dup_differs", r":9: duplicated"),
    ("negative_price", r":4: price <= 0"), ("garbage", r":3: not a number")])
def test_bad_csv_exits_nonzero_naming_the_line(k6, tmp_path, capsys, case, expect):
    from daemon.cli import main as cli
    rows = _rows(k6, 20)
    if case == "nan":
        rows[3][4] = "nan"
    elif case == "unsorted":
        rows[5], rows[4] = rows[4], rows[5]
    elif case == "dup_differs":
        rows[7] = list(rows[6])
        rows[7][5] = rows[7][5] + 1.0
    elif case == "negative_price":
        rows[2][3] = -1
    elif case == "garbage":
        rows[1][2] = "abc"
    p = tmp_path / "BTCUSDT-1m-bad.csv"
    _write_csv(p, rows)
    rc = cli(["backtest", "--data", str(p), "--report", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert rc == 2
    import re
    assert re.search(re.escape(str(p)) + expect, err), err
    assert not (tmp_path / "r" / "metrics.json").exists()


def test_missing_minutes_zero_volume_and_exact_duplicates_follow_the_fill_rule(k6, tmp_path, capsys):
    """Missing minutes are filled as flat zero-volume bars at the previous close, an exact duplicate row is
    dropped, zero volume is allowed; the run completes and metrics.json reports the repairs."""
    from daemon.cli import main as cli
    rows = _rows(k6, 5 * 1440)
    rows[100][5] = 0.0                        # zero volume: allowed
    dropped = {2000, 2001, 2002, 3500}        # missing minutes
    rows.insert(4000, list(rows[4000]))       # exact duplicate
    rows = [r for i, r in enumerate(rows) if i not in dropped]
    p = tmp_path / "gappy.csv"  # a name without a symbol: --symbol says it (never a default)
    _write_csv(p, rows)
    rc = cli(["backtest", "--data", str(p), "--symbol", "BTCUSDT", "--report", str(tmp_path / "r"),
              "--timeframes", "5m", "--models", "xgboost", "--train-days", "3", "--test-days", "2",
              "--xgb-rounds", "10", "--no-baseline"])
    out = capsys.readouterr().out
    assert rc == 0, out
    m = json.loads((tmp_path / "r" / "metrics.json").read_text())
    d = m["info"]["data"]
    assert d["filled_missing_minutes"] == 4 and d["dropped_duplicate_rows"] == 1 and d["rows"] == 5 * 1440
    assert "previous close" in d["fill_rule"]
    summary = json.loads(out)
    assert summary["symbol"] == "BTCUSDT"
    assert summary["runs"]["strategy"]["fees_paid"] is not None and math.isfinite(summary["runs"]["buy_and_hold"]
                                                                                  ["total_return"])


# ------------------------------------------------------------------------------------------------ short files, symbol
# tiny settings for the CLI runs below; --train-days/--test-days are left at their defaults (30 + 7) unless named
FAST = ["--timeframes", "5m", "--models", "xgboost", "--xgb-rounds", "10", "--no-baseline"]


@pytest.fixture(scope="module")
def k_all(btc_klines_path):
    from engines.data import load_klines_csv
    return load_klines_csv(btc_klines_path)


def test_fit_windows_rule():
    from daemon.backtest.options import DataTooShort, fit_windows
    f = fit_windows(90 * DAY, 30, 7)  # long enough: exactly what was asked (the 90-day run is unchanged)
    assert (f.train_days, f.test_days, f.adapted) == (30, 7, False)
    assert not fit_windows(37 * DAY, 30, 7).adapted
    for days in (30, 30 + 9 / 1440, 10):  # 30 d + 9 min used to trade 9 minutes; exactly 30 d used to exit 2
        f = fit_windows(round(days * 1440) * M, 30, 7)
        assert f.adapted and f.train_days + f.test_days == pytest.approx(days, abs=1e-9)
        assert f.train_days / f.test_days == pytest.approx(30 / 7, rel=1e-3)
        ws = walk_forward_windows(0, round(days * 1440) * M, f.train_days, f.test_days)
        assert len(ws) == 1 and ws[0].test_end_ns == round(days * 1440) * M
        assert ws[0].test_end_ns - ws[0].test_start_ns == round(f.test_days * 1440) * M
    with pytest.raises(DataTooShort, match=r"4\.00 days of 1m data \(5760 minutes\).*at least 5\.29 days"):
        fit_windows(4 * DAY, 30, 7)
    with pytest.raises(ValueError, match=">= 1 minute"):
        BacktestOptions(test_days=1e-6).validate()


@pytest.mark.parametrize("days", [30, 10])
def test_short_file_adapts_its_windows(k_all, tmp_path, capsys, days):
    """A 30-day (exactly) or 10-day slice under the default 30 + 7 days trains and trades in proportion (the
    last 7/37 of the data), and says so in the log, metrics.json and the report."""
    from daemon.cli import main as cli
    p = tmp_path / f"BTC_USDT-1m_{days}d.csv"
    _write_csv(p, _rows(k_all, days * 1440))
    rc = cli(["backtest", "--data", str(p), "--report", str(tmp_path / "r"), *FAST])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    assert "backtest_windows_shrunk" in cap.err
    m = json.loads((tmp_path / "r" / "metrics.json").read_text())
    wr, cov = m["info"]["windows_rule"], m["info"]["coverage"]
    assert wr["adapted"] and wr["requested_train_days"] == 30 and wr["data_days"] == days
    assert cov["traded_days"] == pytest.approx(days * 7 / 37, abs=1 / 1440)
    assert cov["traded_share"] == pytest.approx(7 / 37, abs=1e-3) and cov["traded_share"] >= cov["warn_below"]
    assert len(m["info"]["windows"]) == 1
    assert m["runs"]["strategy"]["bars"] == round(wr["test_days"] * 1440) + 1  # every traded minute, from the start
    assert any("shrunk in proportion" in w for w in m["info"]["warnings"])
    assert "shrunk in proportion" in (tmp_path / "r" / "index.html").read_text()
    assert json.loads(cap.out)["warnings"] == m["info"]["warnings"]


def test_too_short_file_exits_2_naming_the_file_and_its_length(k_all, tmp_path, capsys):
    from daemon.cli import main as cli
    p = tmp_path / "BTC_USDT-1m_4d.csv"
    _write_csv(p, _rows(k_all, 4 * 1440))
    rc = cli(["backtest", "--data", str(p), "--report", str(tmp_path / "r"), *FAST])
    err = capsys.readouterr().err
    assert rc == 2
    assert f"{p}: 4.00 days of 1m data (5760 minutes)" in err and "at least 5.29 days" in err, err
    assert not (tmp_path / "r" / "metrics.json").exists()


def test_little_traded_share_warns(k_all, tmp_path, capsys):
    """A run that trades under TRADED_SHARE_WARN of the span (30 min of 10 days) runs, and warns everywhere."""
    from daemon.backtest.options import TRADED_SHARE_WARN
    from daemon.cli import main as cli
    p = tmp_path / "BTCUSDT-1m.csv"
    _write_csv(p, _rows(k_all, 10 * 1440))
    rc = cli(["backtest", "--data", str(p), "--report", str(tmp_path / "r"), *FAST, "--train-days", "9.5",
              "--test-days", "0.5"])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    m = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert not m["info"]["windows_rule"]["adapted"]
    share = m["info"]["coverage"]["traded_share"]
    assert share == pytest.approx(0.05) and share < TRADED_SHARE_WARN
    assert "backtest_little_traded" in cap.err
    assert any("only 5.0% of the data is traded" in w for w in m["info"]["warnings"]), m["info"]["warnings"]
    assert "only 5.0% of the data is traded" in (tmp_path / "r" / "index.html").read_text()


def test_symbol_from_the_flag_or_the_file_name_never_a_default(k6, tmp_path, capsys):
    from daemon.cli import main as cli
    p = tmp_path / "eth.csv"
    _write_csv(p, _rows(k6, 20))
    rc = cli(["backtest", "--data", str(p), "--report", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert rc == 2 and f"{p}: the file name names no trading pair" in err and "--symbol" in err, err
    rc = cli(["backtest", "--store", str(tmp_path / "s.sqlite"), "--report", str(tmp_path / "r")])
    assert rc == 2 and "--store needs --symbol" in capsys.readouterr().err
    # --symbol names it: the run gets past the symbol (and then refuses 20 minutes as too short, by name)
    rc = cli(["backtest", "--data", str(p), "--symbol", "ETHUSDT", "--report", str(tmp_path / "r")])
    assert rc == 2 and f"{p}: 0.01 days of 1m data" in capsys.readouterr().err
    # the library refuses klines without a symbol instead of calling them BTCUSDT
    from dataclasses import replace
    with pytest.raises(ValueError, match="name no symbol"):
        run_backtest(replace(k6, symbol=""), None, opts=OPTS, cfg=CFG)


# ------------------------------------------------------------------------------------------------ recording
# Tiny models trained here on real 2025 klines (xgb_rounds=30: their P(up) spread is wide enough that, with the
# relaxed optimizer below, the 11-minute recording really trades; fees stay as configured, 0.1 % taker).
REC_CFG = config_from_dict({"optimizer": {"expected_move_atr_mult": 100.0, "w_lstm": 0.0}})
REC_SPEC = dict(xgb_rounds=30, xgb_early_stopping=5, lstm_epochs=1, lstm_hidden=8, lstm_seq_len=8, threads=1)


def _first_trade(paths):
    from daemon.binance.codec import decode_frame
    from market.events import Trade
    from daemon.recording import iter_recording
    for recv, raw in iter_recording(paths):
        ev = decode_frame(raw, recv)
        if isinstance(ev, Trade):
            return ev
    raise AssertionError("no trade in the recording")


def _synthetic_history(k, first, n=200):
    """SYNTHETIC warm-up history (the shared klines are 2025, the recording 2024-08-08/09): the shape of the
    last ``n`` real 1m bars, scaled so the last close equals the recording's first trade price and shifted in
    time to end right before the recording's first minute. It only warms the feature state; nothing trades on
    it and no assertion is about it."""
    from market.events import Bar
    start = first.ts_event - first.ts_event % M
    src = k[-n:]
    f = first.price / float(src.close[-1])
    return [Bar(first.symbol, "1m", start - (n - i) * M, float(src.open[i]) * f, float(src.high[i]) * f,
                float(src.low[i]) * f, float(src.close[i]) * f, float(src.volume[i])) for i in range(n)]


@pytest.fixture(scope="module")
def rec_registry(k6, tmp_path_factory):
    from engines.registry import ModelRegistry
    from engines.train import TrainSpec, train_and_publish
    reg = ModelRegistry(tmp_path_factory.mktemp("registry"))
    train_and_publish(k6[:3 * 1440], TrainSpec("1m", **REC_SPEC), reg)
    return reg


@pytest.fixture(scope="module")
def rec_runs(rec_registry, binance_recording, k6, tmp_path_factory):
    from daemon.backtest.recording import run_recording_backtest
    hist = _synthetic_history(k6, _first_trade(binance_recording))
    out = tmp_path_factory.mktemp("rec_report")
    a = run_recording_backtest(binance_recording, rec_registry, out, cfg=REC_CFG, timeframes=("1m",), history=hist)
    b = run_recording_backtest(binance_recording, rec_registry, None, cfg=REC_CFG, timeframes=("1m",),
                               history=hist)
    return a, b, out, hist


def _walk(levels, qty):
    """Fill ``qty`` level by level (the test's own book walk): [(price, qty taken)]."""
    out, left = [], qty
    for p, q in levels:
        if left <= 1e-12:
            break
        take = min(q, left)
        out.append((p, take))
        left -= take
    assert left <= 1e-9, "book too thin"
    return out


def test_recording_replays_through_the_live_path(rec_runs, binance_recording):
    res, _, out, hist = rec_runs
    c = res.counters
    # every trade of the recording was processed (19,904 per the data README), the book synced with no gap
    assert c["replay"]["trades"] == 19_904 and c["bars"]["accepted"] == 19_904
    assert c["book"]["state"] == "SYNCED" and c["book"]["gaps"] == 0 and c["book"]["applied"] > 6000
    assert not any(k.startswith("decode_dropped") for k in c["replay"])
    # 1m bars closed by the recorded trades (10 min 50 s: 11 closes), each with a prediction (history primed)
    bar_ds = [d for d in res.decisions if d.timeframe == "1m"]
    assert 10 <= len(bar_ds) <= 11 and len(bar_ds) == c["pipeline"]["bars"] == c["bars"]["bars_closed"]
    assert all(set(d.predictions) == {"xgboost", "lstm"} for d in bar_ds)
    assert c["pipeline"]["predictions.xgboost"] == len(bar_ds)
    assert res.metrics["info"]["history"]["rows_primed"] > 0
    assert res.metrics["info"]["history"]["gap_minutes_to_recording"] == 0
    # decisions are made at recorded receive times, in order
    ts = [d.ts for d in res.decisions]
    assert ts == sorted(ts) and ts[0] > hist[-1].open_ns
    # orders were placed and filled on the real book
    assert len(res.orders) >= 2 and all(o.fills for o in res.orders)  # an entry and its exit at least
    assert c["pipeline"]["fills"] == sum(len(o.fills) for o in res.orders) == sum(len(d.fills) for d in res.decisions)
    assert c["broker"]["orders"] == len(res.orders) and c["pipeline"]["intents"] == len(res.orders)


def test_recording_fills_walk_the_recorded_book(rec_runs, binance_recording):
    """Each order's fills equal walking the book at its decision time, rebuilt here independently from the
    recording (snapshot + diffs up to the trade frame that triggered the decision), and the fee is the taker fee."""
    from daemon.binance.codec import decode_frame
    from market.book import OrderBook
    from market.events import DepthSnapshot, DepthUpdate, Trade
    from daemon.recording import iter_recording
    res = rec_runs[0]
    want = {o.ts for o in res.orders}
    books = {}
    book = OrderBook("BTCUSDT")
    for recv, raw in iter_recording(binance_recording):
        ev = decode_frame(raw, recv)
        if isinstance(ev, DepthSnapshot):
            book.on_snapshot(DepthSnapshot("BTCUSDT", ev.last_update_id, ev.bids, ev.asks, ev.ts_recv))
        elif isinstance(ev, DepthUpdate):
            book.on_update(ev)
        elif isinstance(ev, Trade) and ev.ts_recv in want and ev.ts_recv not in books:
            books[ev.ts_recv] = book.depth(1000)
    assert set(books) == want
    fee = REC_CFG.broker.taker_fee
    n_multi = 0
    for o in res.orders:
        bids, asks = books[o.ts]
        assert (list(o.bids), list(o.asks)) == (bids, asks)  # the depth the broker met is the recorded book
        walked = _walk(asks if o.side > 0 else bids, o.qty)
        got = [(f.price, f.qty) for f in o.fills]
        assert [p for p, _ in got] == [p for p, _ in walked], o.client_order_id
        assert [q for _, q in got] == pytest.approx([q for _, q in walked], rel=1e-9, abs=1e-12)
        avg = sum(p * q for p, q in got) / sum(q for _, q in got)
        assert avg == pytest.approx(sum(p * q for p, q in walked) / o.qty, rel=1e-12)
        for f in o.fills:
            assert f.fee == pytest.approx(f.price * f.qty * fee, rel=1e-9)
        n_multi += len(got) > 1
    assert n_multi >= 1  # at least one order walked more than one level (else the walk proves little)


def test_recording_report_accounts_for_the_equity_change(rec_runs):
    res, _, out, _ = rec_runs
    for f in ("metrics.json", "trades.csv", "index.html", "equity_drawdown.png", "price_trades.png",
              "pnl_by_timeframe.png"):
        assert (out / f).stat().st_size > 0, f
    m = json.loads((out / "metrics.json").read_text())
    s = m["runs"]["strategy"]
    rows = list(csv.DictReader(open(out / "trades.csv")))
    assert s["trades"] == len(rows) > 0
    assert s["start_equity"] == m["info"]["starting_cash"] == REC_CFG.broker.starting_cash
    assert sum(float(r["pnl"]) for r in rows) == pytest.approx(s["end_equity"] - s["start_equity"], abs=1e-6)
    assert s["fees_paid"] > 0 and s["slippage_paid"] > 0
    assert res.pipeline.broker.portfolio.qty("BTCUSDT") == 0.0
    # equity marked every whole minute of recording time (plus the start and the end point)
    ts = res.report.runs["strategy"].ts_ns
    assert all((t % M) == 0 for t in ts[1:-1]) and np.all(np.diff(ts) > 0) and len(ts) >= 12
    assert m["info"]["timing"]["trades_per_s"] > 0


def test_recording_replay_is_deterministic(rec_runs):
    from daemon.backtest.recording import decision_key
    a, b = rec_runs[0], rec_runs[1]
    ka, kb = [decision_key(d) for d in a.decisions], [decision_key(d) for d in b.decisions]
    assert ka == kb and any(d.fills for d in a.decisions)
    assert a.report.runs["strategy"].equity.tolist() == b.report.runs["strategy"].equity.tolist()


def test_recording_cli(rec_registry, binance_recording, k6, tmp_path, capsys):
    from daemon.cli import main as cli
    rec = [str(p) for p in binance_recording]
    rc = cli(["backtest", "--recording", *rec, "--report", str(tmp_path / "r")])
    assert rc == 2 and "needs --registry" in capsys.readouterr().err
    rc = cli(["backtest", "--recording", str(tmp_path / "missing.gz"), "--registry", str(rec_registry.root),
              "--report", str(tmp_path / "r"), "--timeframes", "1m"])
    assert rc == 2 and "missing.gz" in capsys.readouterr().err
    rc = cli(["backtest", "--recording", *rec, "--registry", str(tmp_path), "--report", str(tmp_path / "r"),
              "--timeframes", "1m"])
    assert rc == 2 and "1m" in capsys.readouterr().err  # empty registry: the model is refused, named
    # through the CLI with a --history CSV (the synthetic warm-up bars written as klines)
    hist = _synthetic_history(k6, _first_trade(binance_recording))
    p = tmp_path / "BTC_USDT-1m_synthetic.csv"
    _write_csv(p, [[b.open_ns // 1_000_000, b.open, b.high, b.low, b.close, b.volume] for b in hist])
    rc = cli(["backtest", "--recording", *rec, "--registry", str(rec_registry.root), "--report",
              str(tmp_path / "r"), "--timeframes", "1m", "--history", str(p), "--symbol", "BTCUSDT"])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    summary = json.loads(cap.out)
    assert summary["trades_processed"] == 19_904 and summary["predictions"]["predictions.xgboost"] >= 10
    assert (tmp_path / "r" / "metrics.json").exists()
    # without history it runs and says when predictions start
    rc = cli(["backtest", "--recording", *rec, "--registry", str(rec_registry.root), "--report",
              str(tmp_path / "r2"), "--timeframes", "1m"])
    cap = capsys.readouterr()
    assert rc == 0 and "predictions start only after" in cap.err
    assert json.loads(cap.out)["predictions"] == {}
