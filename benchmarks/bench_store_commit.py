#!/usr/bin/env python3
"""fsync'd commit latency of one execution (an order, its fill, the position, balance, daily P&L and the replay
cursor in ONE transaction: the daemon's own commit), SQLite vs PostgreSQL on the same box, printed as figures.

    .venv/bin/python benchmarks/bench_store_commit.py [--n 2000] [--url postgresql://user@host:port/db]

Durability as the daemon runs: SQLite in WAL mode with ``synchronous=FULL``; PostgreSQL with ``fsync=on`` and
``synchronous_commit=on`` (checked and printed). Without ``--url`` a throwaway PostgreSQL cluster is started in a
temp dir on the same filesystem as the SQLite file (tests/daemon/harness.py PgCluster: apt ``postgresql``); with
``--url`` the password comes from $TRADINGD_DB_PASSWORD. Timed: ``commit_execution`` call to return (the writer
thread's cost per execution), one after the other, after 50 warm-up commits.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from daemon.store import SQLiteStore  # noqa: E402
from market.portfolio import Portfolio  # noqa: E402
from tests.daemon.harness import one_fill_executions  # noqa: E402

WARMUP = 50


def timed(store, n: int) -> np.ndarray:
    jobs, _ = one_fill_executions(n + WARMUP, 0, Portfolio(1e9))
    out = np.empty(n)
    for i, (stmts, _) in enumerate(jobs):
        t0 = time.perf_counter_ns()
        store.write_statements(stmts)
        if i >= WARMUP:
            out[i - WARMUP] = (time.perf_counter_ns() - t0) / 1e6
    return out


def line(name: str, ms: np.ndarray) -> str:
    return (f"{name:<44} n={ms.size:5d}  p50 {np.percentile(ms, 50):6.3f} ms  p99 {np.percentile(ms, 99):6.3f} ms  "
            f"max {ms.max():7.3f} ms  ({1000 / ms.mean():,.0f} commits/s)")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--url", default="", help="an existing PostgreSQL (default: a throwaway local cluster)")
    a = ap.parse_args(argv)
    from daemon.pgstore import PostgresStore
    cluster = None
    if a.url:
        url, password = a.url, os.environ.get("TRADINGD_DB_PASSWORD", "")
    else:
        from tests.daemon.harness import PgCluster, pg_bindir
        bindir = pg_bindir()
        if bindir is None:
            raise SystemExit("PostgreSQL binaries not found (apt-get install postgresql) and no --url given")
        cluster = PgCluster(bindir)
        url, password = cluster.url, cluster.password
    try:
        with tempfile.TemporaryDirectory() as d:
            fs = subprocess.run(["df", "-T", d], capture_output=True, text=True).stdout.splitlines()[-1].split()[1]
            print(f"filesystem of the SQLite file {d}: {fs}"
                  + (f"; PostgreSQL data {cluster.data}" if cluster else f"; PostgreSQL {url}"))
            s = SQLiteStore(Path(d) / "bench.sqlite")
            mode = s._db.execute("PRAGMA journal_mode").fetchone()[0]
            sync = s._db.execute("PRAGMA synchronous").fetchone()[0]
            sq = timed(s, a.n)
            s.close()
            p = PostgresStore(url, password=password, account=f"bench_{os.getpid()}")
            settings = dict(p._rows("SELECT name, setting FROM pg_settings WHERE name IN ('fsync', "
                                    "'synchronous_commit', 'wal_sync_method', 'server_version')"))
            pg = timed(p, a.n)
            p._conn.execute(f"DROP SCHEMA {p.account} CASCADE")
            p.close()
        print(line(f"SQLite WAL synchronous={sync} ({mode})", sq))
        print(line(f"PostgreSQL {settings.get('server_version', '').split()[0]} fsync={settings.get('fsync')} "
                   f"sync_commit={settings.get('synchronous_commit')}", pg))
        print(f"wal_sync_method={settings.get('wal_sync_method')}; loopback TCP; one connection, one commit at a time")
    finally:
        if cluster is not None:
            cluster.close()


if __name__ == "__main__":
    main()
