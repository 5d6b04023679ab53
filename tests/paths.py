"""Where the tests find the project and the real recorded data (``../shared/data``): one place for the paths."""
from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
BINANCE_WS = SHARED_DATA / "binance-ws"
KLINES = SHARED_DATA / "klines"
UNIVERSE = SHARED_DATA / "universe"
DEPLOY = ROOT / "deploy"  # deploy/grafana (dashboard + provisioning), deploy/prometheus (scrape config, alert rules)
# the real 1h slice the cross-sectional tests use (tests/engines/conftest.py xs_panel): two listings, two ends
XS_SYMS = ("BTCUSDT", "ETHUSDT", "SOLUSDT", "DOGEUSDT", "XRPUSDT", "LINKUSDT", "TONUSDT", "DOGSUSDT")
