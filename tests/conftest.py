"""Shared fixtures: the real recorded data in ../shared/data (skip with a reason when it is absent)."""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.paths import BINANCE_WS, KLINES  # the one place for the paths


def _need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"real recorded data not found at {path} (see ../shared/data/README.md)")
    return path


@pytest.fixture(scope="session")
def binance_recording() -> list[Path]:
    """The two BTCUSDT spot recording files, in order (they join with no gap)."""
    return [_need(BINANCE_WS / "spot_btcusdt_20240808.gz"), _need(BINANCE_WS / "spot_btcusdt_20240809.gz")]


@pytest.fixture(scope="session")
def btc_klines_path() -> Path:
    return _need(KLINES / "BTC_USDT-1m_2025-05-20_2025-08-18.csv.gz")


@pytest.fixture(scope="session")
def eth_klines_path() -> Path:
    return _need(KLINES / "ETH_USDT-1m_2025-05-20_2025-08-18.csv.gz")


@pytest.fixture(scope="session")
def recorded_trades(binance_recording) -> list:
    """The ``@trade`` frames of the recording, decoded by daemon.binance.codec (the live decoder), in order."""
    import gzip

    from daemon.binance.codec import decode_frame
    from market.events import Trade
    out = []
    for path in binance_recording:
        with gzip.open(path, "rb") as fh:
            for line in fh:
                ts_recv, _, raw = line.rstrip(b"\n").partition(b" ")
                if b'"stream":"btcusdt@trade"' not in raw[:40]:
                    continue
                t = decode_frame(raw, int(ts_recv))
                assert isinstance(t, Trade)
                out.append(t)
    return out
