"""`tradingd backtest|train|hpo --data DIR` end to end on a small real universe (6 symbols x 100 days of 1h)."""
from __future__ import annotations

import json

import pytest

from daemon.cli import _universe_module, main

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::RuntimeWarning")]

FAST = ["--train-days", "30", "--test-days", "20", "--lstm-max-rows", "2000", "--threads", "1"]


def test_dispatch_folder_vs_file(small_1h_folder, btc_klines_path):
    assert _universe_module("backtest", ["--data", str(small_1h_folder), "--report", "x"]) == \
        "daemon.backtest.universe"  # the research walk-forward, then the strategy through the live pipeline
    assert _universe_module("train", [f"--data={small_1h_folder}"]) == "research.cli_train"
    assert _universe_module("backtest", ["--data", str(btc_klines_path), "--report", "x"]) is None  # single file
    assert _universe_module("run", ["--data", str(small_1h_folder)]) is None


def test_backtest_report(small_1h_folder, tmp_path, capsys):
    out = tmp_path / "rep"
    rc = main(["backtest", "--data", str(small_1h_folder), "--report", str(out), "--seeds", "2", *FAST])
    assert rc == 0, capsys.readouterr().err
    m = json.loads((out / "metrics.json").read_text())
    for model in ("xgboost", "ridge", "lstm", "ensemble", "reversal", "momentum"):
        d = m["signal"]["1h"][model]
        assert {"ic", "rank_ic", "icir", "rank_icir", "hit_rate", "tmb_per_bar", "turnover"} <= set(d)
    assert "rank_ic_std" in m["signal"]["1h"]["xgboost"] and m["signal"]["1h"]["xgboost"]["seeds"] == 2
    assert {"return_pct", "sharpe", "max_drawdown_pct", "trades", "fees"} <= set(m["strategy"])
    for b in ("buy_and_hold", "momentum", "reversal"):
        assert {"return_pct", "sharpe"} <= set(m["baselines"][b])
    w = m["ensemble"]["1h"]["weights"]
    assert len(w) == 2 and all(abs(sum(x["weights"].values()) - 1) < 1e-9 for x in w[0])
    for win in m["info"]["windows"]["1h"]:
        assert win["train_hi"] - 1 + m["info"]["params"]["1h"]["horizon"] < win["test_lo"]
    html = (out / "index.html").read_text()
    for png in ("ic_1h.png", "quantiles_1h.png", "equity_1h.png"):
        assert png in html and (out / png).stat().st_size > 5000


def test_hpo_then_backtest_with_params_then_train(small_1h_folder, tmp_path, capsys):
    hp = tmp_path / "hpo"
    rc = main(["hpo", "--data", str(small_1h_folder), "--trials", "4", "--jobs", "2", "--out", str(hp),
               "--inner-folds", "2", "--train-days", "40", "--threads", "1"])
    assert rc == 0, capsys.readouterr().err
    best = json.loads((hp / "best.json").read_text())
    h = best["hpo"]["1h"]
    assert h["trials"] >= 4 and h["completed"] >= 1 and 0 <= h["deflated_sharpe"] <= 1
    assert (hp / "1h.journal").stat().st_size > 0
    # the search never saw the outer test windows: its data ends before the first outer test bar
    rep = tmp_path / "rep"
    rc = main(["backtest", "--data", str(small_1h_folder), "--report", str(rep), "--params", str(hp / "best.json"),
               "--models", "xgboost,ridge", "--train-days", "40", "--test-days", "20", "--threads", "1"])
    assert rc == 0, capsys.readouterr().err
    m = json.loads((rep / "metrics.json").read_text())
    first_test = m["info"]["windows"]["1h"][0]["test_start_ns"]
    assert h["data_end_ns"] < first_test
    used = m["info"]["params"]["1h"]
    for k, v in best["timeframes"]["1h"].items():
        assert used[k] == v
    reg = tmp_path / "reg"
    rc = main(["train", "--data", str(small_1h_folder), "--registry", str(reg), "--params", str(hp / "best.json"),
               "--lstm-max-rows", "2000", "--threads", "1"])
    assert rc == 0, capsys.readouterr().err
    man = json.loads((reg / "universe" / "1h" / "manifest.json").read_text())
    assert man["params"]["horizon"] == best["timeframes"]["1h"]["horizon"] and man["hpo"]["trials"] == h["trials"]
    assert set(man["ensemble"]["weights"]) == {"xgboost", "ridge", "lstm"}
    for e in man["models"]:
        assert (reg / "universe" / "1h" / e["file"]).stat().st_size > 0 and e["info"]["device"] == "cpu"


def test_refusals_name_the_problem(small_1h_folder, tmp_path, capsys):
    rc = main(["backtest", "--data", str(small_1h_folder), "--report", str(tmp_path / "r"), "--timeframes", "5m"])
    assert rc == 2 and "finer than the data's base timeframe 1h" in capsys.readouterr().err
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "BTCUSDT-1h.csv.gz").write_bytes(b"")
    (tmp_path / "bad" / "ETHUSDT-1h.csv").write_text("open_time_ms,open,high,low,close,volume\n")
    rc = main(["train", "--data", str(tmp_path / "bad"), "--registry", str(tmp_path / "reg")])
    assert rc == 2 and "BTCUSDT-1h.csv.gz" in capsys.readouterr().err
