"""Fixtures shared by the engine tests."""
import functools

import numpy as np
import pytest


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """One intra-op thread: small models gain nothing from more, and on a shared 2-core box OpenMP
    spin-waiting against other processes multiplies wall time."""
    try:
        import torch
    except ImportError:
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


# ------------------------------------------------------------------------------ real inputs (factories)
@pytest.fixture(scope="session")
def btc_klines(btc_klines_path):
    """The real 90-day BTCUSDT 1m klines, loaded once per session."""
    from engines.data import load_klines_csv
    return load_klines_csv(str(btc_klines_path))


@pytest.fixture(scope="session")
def lstm_dataset(btc_klines):
    """Factory ``(rows, horizon=5, start=0) -> (X, close, y, fwd, names)``: the shared pipeline's features
    (engines.features.batch_features, float64 with NaN warm-up) of ``rows`` real 1m bars from ``start``, the
    up-label ``y`` and fractional forward returns over ``horizon`` bars (the last ``horizon`` rows: NaN)."""
    from engines.features import FEATURE_SCHEMA, batch_features

    def make(rows: int, horizon: int = 5, start: int = 0):
        kl = btc_klines[start:start + rows]
        X = np.asarray(batch_features(kl, "1m"), dtype=np.float64)
        names = list(FEATURE_SCHEMA.names)
        assert X.shape == (len(kl), len(names))
        c = np.asarray(kl.close, dtype=np.float64)
        fwd = np.full(len(c), np.nan)
        fwd[:-horizon] = c[horizon:] / c[:-horizon] - 1.0
        y = np.where(np.isfinite(fwd), (fwd > 0).astype(np.float64), np.nan)
        return X, c, y, fwd, names
    return make


@pytest.fixture(scope="session")
def xgb_dataset(btc_klines):
    """Factory ``(n_last=20_000, horizon=1) -> (X, y, fwd, names)`` from the last ``n_last`` real 1m bars, with
    the shared feature pipeline (past-only, so no look-ahead); label-less and exactly-flat minutes dropped.
    Cached: the same arguments give the same arrays."""
    from engines.features import FEATURE_SCHEMA, batch_features

    @functools.lru_cache(maxsize=4)
    def make(n_last: int = 20_000, horizon: int = 1):
        X = batch_features(btc_klines, "1m")
        close = np.asarray(btc_klines.close, dtype=np.float64)
        names = list(FEATURE_SCHEMA.names)
        fwd = np.full(close.shape, np.nan)
        fwd[:-horizon] = close[horizon:] / close[:-horizon] - 1.0
        sl = slice(len(close) - n_last, len(close))
        X, fwd = X[sl], fwd[sl]
        keep = np.isfinite(fwd) & (fwd != 0.0)        # drop the label-less last row and exactly-flat minutes
        X, fwd = X[keep], fwd[keep]
        y = (fwd > 0).astype(np.float64)
        return X, y, fwd, tuple(names)
    return make


@pytest.fixture(scope="session")
def windows_with_labels():
    """``(X, y, fwd, seq_len) -> (seqs, y, fwd, end)``: LSTM windows (engines.lstm_model.make_sequences) whose
    label is known."""
    from engines.lstm_model import make_sequences

    def make(X, y, fwd, seq_len):
        seqs, end = make_sequences(X, seq_len)
        ok = np.isfinite(y[end])
        return seqs[ok], y[end][ok], fwd[end][ok], end[ok]
    return make



@pytest.fixture(scope="module")
def xs_panel() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(open_ms (T,), close (T, N), volume (T, N)) of real 1h bars of XS_SYMS since 2024-08-01 over the union of
    their bars (TON lists on 08-08, DOGS on 08-26; BTC and ETH end early; NaN = absent), and a 3-hour gap of SOL
    mid-slice (a venue outage)."""
    from tests.paths import UNIVERSE, XS_SYMS
    d = UNIVERSE / "binance-spot-1h"
    if not d.is_dir():
        pytest.skip(f"real universe data absent: {d}")
    raw = {}
    for s in XS_SYMS:
        a = np.loadtxt(d / f"{s}-1h.csv.gz", delimiter=",", skiprows=1, ndmin=2)
        raw[s] = a[a[:, 0] >= 1_722_470_400_000]
    t = np.unique(np.concatenate([a[:, 0] for a in raw.values()]))
    c = np.full((len(t), len(XS_SYMS)), np.nan)
    v = np.full_like(c, np.nan)
    for j, s in enumerate(XS_SYMS):
        i = np.searchsorted(t, raw[s][:, 0])
        c[i, j], v[i, j] = raw[s][:, 4], raw[s][:, 5]
    c[300:303, XS_SYMS.index("SOLUSDT")] = np.nan
    return t, c, v
