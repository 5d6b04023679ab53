"""Nested HPO (``tradingd hpo --per-window``) on real 1h data: the search for outer window k never reads a bar at
or after its test start (perturbing those bars leaves its trials and choice unchanged), and ``tradingd backtest
--params`` scores each window with that window's own parameters."""
from __future__ import annotations

import json

import numpy as np
import pytest

from daemon.cli import main
from research.dataset import panel_features
from research.hpo import search_span
from research.nested import outer_windows
from research.portfolio import Costs
from research.universe import load_universe
from research.walkforward import WFOptions
from tests.research.rows import read_rows, write_rows

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::RuntimeWarning")]

OPTS = WFOptions(train_days=40, test_days=20)
CFG = {"opts": {"train_days": 40, "test_days": 20, "embargo": 0, "costs": Costs()}, "threads": 1, "device": "cpu",
       "inner_folds": 2}


def _perturbed_copy(src, dst, from_ns: int, seed: int = 5):
    """The same files with every bar opening at or after ``from_ns`` scaled by a random factor (OHLC together,
    so each row stays a valid kline) and its volume changed."""
    rng = np.random.default_rng(seed)
    dst.mkdir()
    for f in sorted(src.iterdir()):
        head, rows = read_rows(f)
        out = []
        for r in rows:
            t, *v = r.split(",")
            if int(t) * 1_000_000 >= from_ns:
                k = float(np.exp(rng.normal(0, 0.03)))
                v = [f"{float(x) * k:.10g}" for x in v[:4]] + [f"{float(v[4]) * rng.uniform(0.2, 5):.10g}"]
            out.append(",".join([t, *v]))
        write_rows(dst / f.name, head, out)


def _search(folder, k, out):
    pf = panel_features(load_universe(folder).panels["1h"])
    ws, _ = outer_windows(pf, OPTS)
    out.mkdir()
    stats, trials = search_span(pf, ws[k].train_lo, ws[k].test_lo, out, f"w{k}", 3, 1, 0, CFG)
    return ws, stats, [t["value"] for t in trials]


def test_window_search_never_reads_its_test_bars(small_1h_folder, tmp_path):
    pf = panel_features(load_universe(small_1h_folder).panels["1h"])
    ws, E = outer_windows(pf, OPTS)
    assert len(ws) >= 2 and E >= 12
    test0 = int(pf.open_ns[ws[0].test_lo])
    alt = tmp_path / "alt"
    _perturbed_copy(small_1h_folder, alt, test0)
    pf2 = panel_features(load_universe(alt).panels["1h"])
    assert not np.array_equal(pf.X[ws[0].test_lo:], pf2.X[ws[0].test_lo:], equal_nan=True)   # the future moved
    w_a, s_a, v_a = _search(small_1h_folder, 0, tmp_path / "a0")
    w_b, s_b, v_b = _search(alt, 0, tmp_path / "b0")
    assert w_a == w_b
    assert s_a["params"] == s_b["params"] and v_a == v_b and s_a["best_value_sharpe"] == s_b["best_value_sharpe"]
    # the test can fail: window 1's search span holds perturbed bars, and its trials see them
    _, s_c, v_c = _search(small_1h_folder, 1, tmp_path / "a1")
    _, s_d, v_d = _search(alt, 1, tmp_path / "b1")
    assert v_c != v_d


def test_per_window_hpo_then_backtest(small_1h_folder, tmp_path, capsys):
    hp = tmp_path / "hpo"
    rc = main(["hpo", "--data", str(small_1h_folder), "--trials", "2", "--out", str(hp), "--inner-folds", "2",
               "--train-days", "40", "--test-days", "20", "--threads", "1", "--per-window"])
    assert rc == 0, capsys.readouterr().err
    best = json.loads((hp / "best.json").read_text())
    h, wins = best["hpo"]["1h"], best["windows"]["1h"]
    assert h["per_window"] and h["windows"] == len(wins) >= 2
    assert h["trials"] == sum(w["trials"] for w in wins) >= 2 * len(wins)      # the DSR counts all of them
    assert 0 <= h["deflated_sharpe"] <= 1
    for w in wins:
        assert w["data_end_ns"] < w["test_start_ns"] and (hp / w["journal"]).stat().st_size > 0
    rep = tmp_path / "rep"
    rc = main(["backtest", "--data", str(small_1h_folder), "--report", str(rep), "--params", str(hp / "best.json"),
               "--models", "xgboost", "--train-days", "40", "--test-days", "20", "--threads", "1"])
    assert rc == 0, capsys.readouterr().err
    m = json.loads((rep / "metrics.json").read_text())
    assert [w["test_start_ns"] for w in m["info"]["windows"]["1h"]] == [w["test_start_ns"] for w in wins]
    used = m["info"]["params_by_window"]["1h"]
    for w, u in zip(wins, used):
        assert {k: u[k] for k in w["params"]} == w["params"]
    for win, u in zip(m["info"]["windows"]["1h"], used):
        assert win["train_hi"] - 1 + u["horizon"] < win["test_lo"]
    # another walk-forward grid than the search's is refused, naming the file
    rc = main(["backtest", "--data", str(small_1h_folder), "--report", str(tmp_path / "r2"), "--params",
               str(hp / "best.json"), "--models", "xgboost", "--train-days", "40", "--test-days", "10"])
    assert rc == 2 and "best.json" in capsys.readouterr().err
