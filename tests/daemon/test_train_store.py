"""``tradingd train --store PATH``: every symbol a real SQLite store holds (written by the store's own API from real
1h universe data) becomes a universe and trains exactly as the same bars given as a folder (``--data DIR``)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from daemon.cli import _universe_module, main
from daemon.store import SQLiteStore
from daemon.store_universe import store_universe
from engines.data import klines_to_bars, load_klines_csv, resample
from research.universe import UniverseError
from tests.paths import UNIVERSE

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::RuntimeWarning")]

SYMS = ("BTCUSDT", "ETHUSDT", "SOLUSDT", "XRPUSDT")
FAST = ["--models", "xgboost,ridge", "--threads", "1", "--seed", "0"]


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    """A store and a folder with the same bars: 4 real 1h symbols of different lengths (one listed later, one
    ending early), one with 30 missing bars; 4h bars of one symbol stored too (coarser: skipped)."""
    src = UNIVERSE / "binance-spot-1h"
    if not src.exists():
        pytest.skip(f"real universe data not found at {src}")
    d = tmp_path_factory.mktemp("rec")
    folder = d / "folder"
    folder.mkdir()
    path = d / "tradingd.sqlite"
    st = SQLiteStore(path)
    ks = {s: load_klines_csv(src / f"{s}-1h.csv.gz", symbol=s, timeframe="1h") for s in SYMS}
    end = min(int(k.open_ns[-1]) for k in ks.values())
    H = 3_600_000_000_000
    spans = {"BTCUSDT": (1500, 0), "ETHUSDT": (1500, 100), "SOLUSDT": (1200, 0), "XRPUSDT": (1500, 0)}
    for s in SYMS:
        k = ks[s]
        a, b = spans[s]
        keep = (k.open_ns > end - a * H) & (k.open_ns <= end - b * H)
        k = k[int(np.argmax(keep)):int(np.argmax(keep)) + int(keep.sum())]
        bars = klines_to_bars(k)
        if s == "XRPUSDT":
            bars = bars[:500] + bars[530:]
        st.write_bars(bars)
        lines = ["open_time_ms,open,high,low,close,volume"] + [
            f"{x.open_ns // 1_000_000},{x.open!r},{x.high!r},{x.low!r},{x.close!r},{x.volume!r}" for x in bars]
        (folder / f"{s}-1h.csv").write_text("\n".join(lines) + "\n")
    st.write_bars(klines_to_bars(resample(k, "4h")))
    st.close()
    return path, folder


def test_dispatch():
    assert _universe_module("train", ["--store", "x.sqlite", "--registry", "r"]) == "daemon.store_universe"
    assert _universe_module("train", ["--store=x.sqlite", "--symbol", "BTCUSDT", "--registry", "r"]) is None


def test_store_universe_follows_the_folder_rules(recorded):
    path, _ = recorded
    uni = store_universe(str(path))
    p = uni.panels["1h"]
    assert uni.base == "1h" and p.symbols == SYMS and p.shape[0] == 1500
    info = uni.info()
    assert info["late_listed"] == ["SOLUSDT"] and info["ended_early"] == ["ETHUSDT"]
    assert uni.filled["XRPUSDT"] == 30 and (p.volume[:, 3] == 0).sum() >= 30
    assert any("XRPUSDT/4h" in k for k in uni.skipped)
    with pytest.raises(UniverseError, match="finer than"):
        store_universe(str(path), ("5m",))


def test_train_store_equals_train_folder(recorded, tmp_path, capsys):
    path, folder = recorded
    rc = main(["train", "--store", str(path), "--registry", str(tmp_path / "a"), *FAST])
    assert rc == 0, capsys.readouterr().err
    rc = main(["train", "--data", str(folder), "--registry", str(tmp_path / "b"), *FAST])
    assert rc == 0, capsys.readouterr().err
    ma = json.loads((tmp_path / "a" / "universe" / "1h" / "manifest.json").read_text())
    mb = json.loads((tmp_path / "b" / "universe" / "1h" / "manifest.json").read_text())
    assert ma["symbols"] == list(SYMS) and ma["trained_on"] == mb["trained_on"]
    assert ma["holdout"] == mb["holdout"] and ma["ensemble"] == mb["ensemble"]
    ra = np.load(tmp_path / "a" / "universe" / "1h" / "ridge.npz")
    rb = np.load(tmp_path / "b" / "universe" / "1h" / "ridge.npz")
    assert np.array_equal(ra["w"], rb["w"])


def test_store_refusals(recorded, tmp_path, capsys):
    empty = tmp_path / "empty.sqlite"
    SQLiteStore(empty).close()
    rc = main(["train", "--store", str(empty), "--registry", str(tmp_path / "r")])
    assert rc == 2 and "holds no bars" in capsys.readouterr().err
    path, _ = recorded
    gappy = tmp_path / "gappy.sqlite"
    st = SQLiteStore(gappy)
    src = SQLiteStore(path, readonly=True)
    for s in ("BTCUSDT", "ETHUSDT"):
        bars = src.read_bars(s, "1h")
        st.write_bars(bars if s == "BTCUSDT" else bars[:300] + bars[700:])
    src.close()
    st.close()
    rc = main(["train", "--store", str(gappy), "--registry", str(tmp_path / "r")])
    assert rc == 2 and f"{gappy}#ETHUSDT" in capsys.readouterr().err
