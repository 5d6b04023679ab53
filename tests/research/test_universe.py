"""Universe folder loading: real data shapes, timeframe rules and every documented bad-input rule."""
from __future__ import annotations

import numpy as np
import pytest

from engines.data import resample
from research.dataset import FEATURE_NAMES, forward_returns, panel_features, pooled, target
from research.universe import UniverseError, load_universe, resolve_timeframes
from tests.research.rows import SYMS5, read_rows, write_rows

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")


def test_real_5m_folder_default_timeframes_and_resample(universe_5m):
    u = load_universe(universe_5m, symbols=SYMS5[:4], last_days=10)
    assert u.base == "5m"
    assert tuple(u.panels) == ("5m", "15m", "1h")          # configured timeframes at or above the base
    p5, p1 = u.panels["5m"], u.panels["1h"]
    assert p5.shape == (10 * 288, 4) and p5.symbols == SYMS5[:4]
    assert p5.present[:-300].all()          # the files end a few bars apart (2024-09-06/07): a ragged tail
    # coarser panels are built with engines.data.resample from the base bars
    a, k = p5.klines(0)
    r = resample(k, "1h")
    assert np.array_equal(p1.close[:, 0][np.isfinite(p1.close[:, 0])], r.close)
    assert "_summary.csv" in u.skipped


def test_real_1h_folder_late_listings(universe_1h):
    u = load_universe(universe_1h)
    info = u.info()
    assert info["base"] == "1h" and tuple(u.panels) == ("1h",)
    p = u.panels["1h"]
    assert p.shape[1] == info["n_symbols"] >= 130
    # listed later: absent (NaN) before their first bar, present after
    assert "TONUSDT" in info["late_listed"]
    j = p.symbols.index("TONUSDT")
    first = int(np.flatnonzero(p.present[:, j])[0])
    assert first > 0 and not p.present[:first, j].any()
    # a file with fewer rows than min_rows is skipped with its reason, not silently used
    assert any("min_rows" in why for why in info["skipped"].values())


def test_finer_timeframe_refused(universe_1h):
    with pytest.raises(UniverseError, match="5m is finer than the data's base timeframe 1h"):
        load_universe(universe_1h, ("5m",), symbols=("BTCUSDT", "ETHUSDT"))
    with pytest.raises(UniverseError, match="not a whole multiple"):
        resolve_timeframes("3m", ("15m", "5m"))
    assert resolve_timeframes("5m", None) == ("5m", "15m", "1h")
    assert resolve_timeframes("1h", None) == ("1h",)


@pytest.fixture()
def bad_folder(tmp_path, universe_5m):
    """Real 5m slices cut into: different lengths, a listing mid-period, a delisting, a gap, a timeframe mix."""
    rows = {}
    for s in SYMS5[:4]:
        head, r = read_rows(universe_5m / f"{s}-5m.csv.gz")
        rows[s] = (head, r[:1500])
    head = rows["BTCUSDT"][0]
    write_rows(tmp_path / "BTCUSDT-5m.csv.gz", head, rows["BTCUSDT"][1])               # full span
    write_rows(tmp_path / "ETHUSDT-5m.csv.gz", head, rows["ETHUSDT"][1][400:])         # listed mid-period
    write_rows(tmp_path / "SOLUSDT-5m.csv.gz", head, rows["SOLUSDT"][1][:1100])        # delisted / ends early
    r = rows["DOGEUSDT"][1]
    write_rows(tmp_path / "DOGEUSDT-5m.csv.gz", head, r[:700] + r[720:])                # a 20-bar gap
    _, r1h = read_rows(universe_5m.parent / "binance-spot-1h" / "BTCUSDT-1h.csv.gz")
    write_rows(tmp_path / "BTCUSDT-1h.csv.gz", head, r1h[:200])                         # timeframe mix
    (tmp_path / "notes.txt").write_text("not data")
    return tmp_path


def test_bad_input_rules(bad_folder):
    u = load_universe(bad_folder, ("5m", "1h"))
    p = u.panels["5m"]
    assert p.shape == (1500, 4)
    j = {s: p.symbols.index(s) for s in p.symbols}
    assert not p.present[:400, j["ETHUSDT"]].any() and p.present[400:, j["ETHUSDT"]].all()
    assert p.present[:1100, j["SOLUSDT"]].all() and not p.present[1100:, j["SOLUSDT"]].any()
    assert u.filled["DOGEUSDT"] == 20 and p.present[:, j["DOGEUSDT"]].all()
    assert p.volume[700:720, j["DOGEUSDT"]].sum() == 0                               # flat zero-volume fills
    assert "coarser than the base" in u.skipped["BTCUSDT-1h.csv.gz"]
    assert "notes.txt" in u.skipped
    info = u.info()
    assert info["late_listed"] == ["ETHUSDT"] and info["ended_early"] == ["SOLUSDT"]
    # absent symbols have no features and no label
    pf = panel_features(p)
    assert not pf.valid[:400, j["ETHUSDT"]].any() and not pf.valid[1100:, j["SOLUSDT"]].any()
    fwd = forward_returns(p.close, 6)
    assert np.isnan(fwd[1094:, j["SOLUSDT"]]).all()


def test_empty_file_refused_naming_it(bad_folder):
    (bad_folder / "XRPUSDT-5m.csv.gz").write_bytes(b"")
    with pytest.raises(UniverseError, match="XRPUSDT-5m.csv.gz"):
        load_universe(bad_folder)


def test_header_only_and_mostly_gaps_refused(bad_folder, universe_5m):
    head, r = read_rows(universe_5m / "XRPUSDT-5m.csv.gz")
    write_rows(bad_folder / "XRPUSDT-5m.csv.gz", head, [])
    with pytest.raises(UniverseError, match="XRPUSDT-5m.csv.gz"):
        load_universe(bad_folder)
    write_rows(bad_folder / "XRPUSDT-5m.csv.gz", head, r[:300] + r[900:1300])
    with pytest.raises(UniverseError, match="XRPUSDT-5m.csv.gz.*gap fills"):
        load_universe(bad_folder)


def test_pooled_dataset_shapes(universe_5m):
    u = load_universe(universe_5m, ("5m",), symbols=SYMS5, last_days=8)
    pf = panel_features(u.panels["5m"])
    T, N = u.panels["5m"].shape
    assert pf.X.shape == (T, N, len(FEATURE_NAMES)) and pf.X.dtype == np.float32
    y = target(forward_returns(pf.close, 12), "rank")
    p = pooled(pf, y, 0, T)
    expect = int((pf.valid & np.isfinite(y)).sum())
    assert p.X.shape == (expect, len(FEATURE_NAMES)) and len(p.y) == len(p.t) == len(p.j) == expect
    assert np.isfinite(p.X).all() and np.isfinite(p.y).all()
    assert (np.diff(p.t) >= 0).all()                       # ordered by bar (ranking groups)
    # the warm-up and each symbol's last h bars have no row
    last = max(int(np.flatnonzero(pf.valid[:, j])[-1]) for j in range(N))
    assert p.t.min() > 0 and p.t.max() == last - 12
    # rank target: centred cross-sectional percentile ranks
    assert np.allclose(np.nanmean(y[100:T - 12], axis=1), 0, atol=1e-12)
    s2 = pooled(pf, y, 0, T, step=3)
    assert set(np.unique(s2.t) % 3) == {0}
