"""Fixtures of the daemon tests."""
from __future__ import annotations

import numpy as np
import pytest

from engines.features import FEATURE_SCHEMA


@pytest.fixture(scope="module")
def tiny_registry(tmp_path_factory):
    """A real registry holding tiny XGBoost and LSTM (seq_len 8) 5m models trained on synthetic rows with the
    running feature schema: real model files through the real loaders, quick to train."""
    from engines.lstm_model import LSTMModel, make_sequences
    from engines.registry import ModelRegistry
    from engines.xgb_model import XGBoostModel
    names = list(FEATURE_SCHEMA.names)
    rng = np.random.default_rng(0)
    X = rng.standard_normal((600, len(names))).astype(np.float32)
    y = (X[:, 0] + 0.5 * rng.standard_normal(600) > 0).astype(np.float64)
    root = tmp_path_factory.mktemp("tiny_registry")
    reg = ModelRegistry(root)
    xm = XGBoostModel(device="cpu", num_boost_round=5, nthread=1)
    xm.set_feature_schema(names, FEATURE_SCHEMA.hash)
    xm.train(X[:450], y[:450], X[450:], y[450:], early_stopping_rounds=None)
    reg.publish("xgboost", "5m", xm.save, feature_names=names, schema_hash=FEATURE_SCHEMA.hash, make_current=True)
    lm = LSTMModel(device="cpu", seq_len=8, hidden=8, layers=1, epochs=1, batch_size=64)
    lm.set_feature_schema(names, FEATURE_SCHEMA.hash)
    Xs, idx = make_sequences(X, 8)
    lm.train(Xs[:400], y[idx][:400], Xs[400:], y[idx][400:])
    reg.publish("lstm", "5m", lm.save, feature_names=names, schema_hash=FEATURE_SCHEMA.hash, make_current=True)
    return root


@pytest.fixture(scope="module")
def store_with_bars(btc_klines_path, tmp_path_factory):
    """A real SQLite store holding the last 40 days of real BTCUSDT 1m bars (what the retrainer reads)."""
    from daemon.store import SQLiteStore
    from engines.data import klines_to_bars, load_klines_csv
    k = load_klines_csv(btc_klines_path, symbol="BTCUSDT")
    path = tmp_path_factory.mktemp("store") / "tradingd.sqlite"
    st = SQLiteStore(path)
    st.write_bars(klines_to_bars(k[-40 * 1440:]))
    st.close()
    return path


@pytest.fixture(scope="session")
def pg_cluster():
    """One throwaway PostgreSQL server for the session (tests/daemon/harness.py PgCluster); skips only when the
    PostgreSQL binaries are absent (``.ci/run`` installs them: apt ``postgresql``)."""
    from tests.daemon.harness import PgCluster, pg_bindir
    bindir = pg_bindir()
    if bindir is None:
        pytest.skip("PostgreSQL server binaries (initdb, postgres) not installed: apt-get install postgresql")
    c = PgCluster(bindir)
    try:
        yield c
    finally:
        c.close()


@pytest.fixture(params=["sqlite", "postgres"])
def open_store(request, tmp_path):
    """The store contract suite's backend: ``open_store(**kw)`` opens the SAME store each call (a SQLite file,
    or one account's schema on the session's PostgreSQL), so reopening tests recovery and migrations."""
    from daemon.store import SQLiteStore
    opened = []
    if request.param == "sqlite":
        path = tmp_path / "s.sqlite"

        def make(**kw):
            s = SQLiteStore(path, **kw)
            opened.append(s)
            return s
        make.backend = "sqlite"
    else:
        from daemon.pgstore import PostgresStore
        from tests.daemon.harness import pg_schema_name
        cluster = request.getfixturevalue("pg_cluster")
        account = pg_schema_name()

        def make(**kw):
            s = PostgresStore(cluster.url, password=cluster.password, account=account, **kw)
            opened.append(s)
            return s
        make.backend = "postgres"
        make.cluster = cluster
        make.account = account
    yield make
    for s in opened:
        s.close()


@pytest.fixture(scope="module")
def real_universe_1h(tmp_path_factory):
    """A folder of 6 real 1h universe files (the last 800 bars of the recorded data), LINKUSDT listed 450 bars in
    (its earlier rows dropped): a symbol that joins mid-period. Skips when the data is absent."""
    import gzip

    from tests.paths import UNIVERSE
    src = UNIVERSE / "binance-spot-1h"
    if not src.is_dir():
        pytest.skip(f"real universe data not found at {src} (see ../shared/data/README.md)")
    d = tmp_path_factory.mktemp("uni1h_daemon")
    for s in ("BTCUSDT", "ETHUSDT", "SOLUSDT", "DOGEUSDT", "XRPUSDT", "LINKUSDT"):
        with gzip.open(src / f"{s}-1h.csv.gz", "rt") as f:
            lines = f.read().splitlines()
        rows = lines[1:][-1000:-200]  # BTC/ETH files end a few hours early: stop before every file's end
        if s == "LINKUSDT":
            rows = rows[450:]
        with gzip.open(d / f"{s}-1h.csv.gz", "wt") as f:
            f.write("\n".join([lines[0], *rows]) + "\n")
    return d
