"""Fixtures for the universe pipeline backtest: a small real 1h universe (skips when the data is absent) and one
run of ``tradingd backtest --data DIR`` through the live pipeline, shared by the tests that inspect it."""
from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from tests.paths import UNIVERSE
from tests.research.rows import SYMS5, read_rows, write_rows

# tight portfolio limits (so that they bind) and a low fee (so that the calibrated edges clear the cost rule
# and the run trades): the tests check the mechanics, not the figures
LIMITS_TOML = """
[optimizer]
risk_per_trade = 0.2
max_position_fraction = 0.25

[risk]
max_open_positions = 2
max_gross_exposure = 0.35
max_daily_loss = 1000000.0
"""
FEE = 0.0002


@pytest.fixture(scope="session")
def small_universe_1h(tmp_path_factory) -> Path:
    """6 real 1h symbols, the last 2,400 bars (100 days)."""
    src = UNIVERSE / "binance-spot-1h"
    if not src.exists():
        pytest.skip(f"real universe data not found at {src} (see ../shared/data/README.md)")
    d = tmp_path_factory.mktemp("uni1h")
    for s in SYMS5:
        head, rows = read_rows(src / f"{s}-1h.csv.gz")
        write_rows(d / f"{s}-1h.csv.gz", head, rows[-2400:])
    return d


@pytest.fixture(scope="session")
def universe_run(small_universe_1h, tmp_path_factory):
    """(args, metrics, PipelineBacktest) of one traced run: ridge + xgboost, 30-day training, 20-day tests."""
    from daemon.backtest.universe import add_arguments, run
    d = tmp_path_factory.mktemp("unirun")
    (d / "limits.toml").write_text(LIMITS_TOML)
    p = argparse.ArgumentParser()
    add_arguments(p)
    args = p.parse_args(["--data", str(small_universe_1h), "--report", str(d / "rep"), "--models", "xgboost,ridge",
                         "--train-days", "30", "--test-days", "20", "--threads", "1", "--fee", str(FEE),
                         "--config", str(d / "limits.toml"), "--serial"])
    metrics, pb = run(args, trace=True)
    return args, metrics, pb
