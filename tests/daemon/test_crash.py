"""Crash test: a paper-trading subprocess is SIGKILLed at random moments >= 20 times; after every restart the
store is consistent (positions == sum of fills, no duplicate ids, fills a prefix of a clean run's), and the
resumed run ends with exactly the clean run's fills."""
from __future__ import annotations

import pytest

from tests.daemon import crash_worker as cw


@pytest.fixture(scope="module")
def clean(binance_recording, tmp_path_factory):
    path = tmp_path_factory.mktemp("clean") / "clean.sqlite"
    cw.run_clean(path, [str(p) for p in binance_recording])
    state = cw.read_state(path)
    assert len(state["fills"]) > 100 and cw.check_after_crash(path, state) == []
    return state


def test_sigkill_at_random_moments(clean, binance_recording, tmp_path):
    stats = cw.crash_loop(tmp_path, [str(p) for p in binance_recording], clean, kills=20, seed=1234,
                          max_delay=0.8)
    assert stats["kills"] >= 20
    assert stats["problems"] == []
    assert stats["final_fills"] == len(clean["fills"])


def test_sigkill_with_the_writer_thread(clean, binance_recording, tmp_path):
    """The daemon's write-behind (daemon.storewriter): commits leave the caller's thread, the store stays a
    consistent prefix at every kill, and resuming from the committed cursor ends with the clean run's fills."""
    stats = cw.crash_loop(tmp_path, [str(p) for p in binance_recording], clean, kills=20, seed=99,
                          max_delay=0.8, extra=["--writer"])
    assert stats["kills"] >= 20
    assert stats["problems"] == []
    assert stats["final_fills"] == len(clean["fills"])


@pytest.fixture
def pg_store_for(pg_cluster, monkeypatch):
    """Fresh ``postgresql://...#account`` stores on the session's PostgreSQL (password in the workers' env)."""
    from tests.daemon.harness import pg_schema_name
    monkeypatch.setenv("TRADINGD_DB_PASSWORD", pg_cluster.password)
    base = pg_schema_name("crash")
    return lambda rnd: f"{pg_cluster.url}#{base}_{rnd}"


def test_sigkill_on_postgresql_with_the_writer_thread(clean, binance_recording, tmp_path, pg_store_for):
    """The same kill -9 test on the PostgreSQL store, through the daemon's writer thread: after every kill the
    account is a consistent prefix, and the resumed run ends with exactly the fills of the clean (SQLite) run."""
    stats = cw.crash_loop(tmp_path, [str(p) for p in binance_recording], clean, kills=8, seed=8,
                          max_delay=0.8, extra=["--writer"], store_for=pg_store_for)
    assert stats["kills"] >= 8
    assert stats["problems"] == []
    assert stats["final_fills"] == len(clean["fills"])


def test_checker_detects_a_lost_fill_on_postgresql(clean, binance_recording, pg_store_for):
    import psycopg
    store = pg_store_for(99)
    cw.run_clean(store, [str(p) for p in binance_recording], ["--events", "3000"])
    assert len(cw.read_state(store)["fills"]) > 5 and cw.check_after_crash(store, clean) == []
    url, _, account = store.partition("#")
    with psycopg.connect(url, password=__import__("os").environ["TRADINGD_DB_PASSWORD"]) as conn:
        conn.execute(f"DELETE FROM {account}.fills WHERE fill_id = (SELECT fill_id FROM {account}.fills "
                     "ORDER BY seq OFFSET 4 LIMIT 1)")
    problems = cw.check_after_crash(store, clean)
    assert any("sum of fills" in p or "recover" in p for p in problems)
    assert any("diverge" in p for p in problems)


def test_checker_detects_a_lost_fill(clean, binance_recording, tmp_path):
    """The check can fail: delete one committed fill and it reports it."""
    import sqlite3
    path = tmp_path / "s.sqlite"
    cw.run_clean(path, [str(p) for p in binance_recording])
    db = sqlite3.connect(path)
    db.execute("DELETE FROM fills WHERE seq = 5")
    db.commit()
    db.close()
    problems = cw.check_after_crash(path, clean)
    assert any("sum of fills" in p or "recover" in p for p in problems)
    assert any("diverge" in p for p in problems)
