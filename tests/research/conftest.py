"""Fixtures for the universe research tests: slices of the real universe data (skip when it is absent)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.paths import UNIVERSE
from tests.research.rows import SYMS5, read_rows, write_rows


def _need(p: Path) -> Path:
    if not p.exists():
        pytest.skip(f"real universe data not found at {p} (see ../shared/data/README.md)")
    return p


@pytest.fixture(scope="session")
def universe_5m() -> Path:
    return _need(UNIVERSE / "binance-spot-5m")


@pytest.fixture(scope="session")
def universe_1h() -> Path:
    return _need(UNIVERSE / "binance-spot-1h")


@pytest.fixture(scope="session")
def small_1h_folder(tmp_path_factory, universe_1h) -> Path:
    """6 real 1h symbols, the last 2,400 bars (100 days): small enough for CLI runs in tests."""
    d = tmp_path_factory.mktemp("uni1h")
    for s in SYMS5:
        head, rows = read_rows(universe_1h / f"{s}-1h.csv.gz")
        write_rows(d / f"{s}-1h.csv.gz", head, rows[-2400:])
    return d


@pytest.fixture(scope="session")
def rng() -> np.random.Generator:
    return np.random.default_rng(7)


@pytest.fixture(scope="session")
def universe_1h_close(small_1h_folder) -> np.ndarray:
    """(T, N) closes of the small real 1h folder (NaN where a symbol has no bar)."""
    from research.universe import load_universe
    return load_universe(small_1h_folder).panels["1h"].close
