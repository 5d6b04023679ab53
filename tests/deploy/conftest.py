"""Fixtures of the deploy tests: the Grafana dashboard, as checked in and as deploy/grafana/build.py makes it."""
from __future__ import annotations

import importlib.util

import orjson
import pytest

from tests.paths import DEPLOY


@pytest.fixture(scope="session")
def dashboard_build():
    """deploy/grafana/build.py as a module (it is a script, not a package of ours)."""
    spec = importlib.util.spec_from_file_location("grafana_build", DEPLOY / "grafana" / "build.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="session")
def dashboard() -> dict:
    """The checked-in dashboard JSON."""
    return orjson.loads((DEPLOY / "grafana" / "tradingd.json").read_bytes())


@pytest.fixture(scope="session")
def panel_queries(dashboard) -> list[tuple[dict, dict]]:
    """(panel, target) for every query of the dashboard."""
    return [(p, t) for p in dashboard["panels"] if p["type"] != "row" for t in p["targets"]]
