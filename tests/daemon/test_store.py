"""The store contract (SQLite AND PostgreSQL: the ``open_store`` fixture) and SQLite specifics: schema/migrations, one-transaction executions, recovery checks, concurrent reader, bad files."""
from __future__ import annotations

import os
import sqlite3
import subprocess
import sys

import pytest

from market.events import Bar, Fill, OrderStatus, OrderType, Side
from market.matching import Order, Stops
from market.portfolio import Portfolio
from daemon.store import MIGRATIONS, SCHEMA_VERSION, SQLiteStore, StoreError, StoreUnavailable


def order(coid="o1", status=OrderStatus.FILLED, filled=1.0, n=1) -> Order:
    return Order(coid, "BTCUSDT", Side.BUY, OrderType.MARKET, 1.0, None, status, 1, 1, 1, filled,
                 100.0 if filled else 0.0, n, active=True)


def fill(coid="o1", n=1, side=Side.BUY, qty=1.0, price=100.0, ts=1_723_161_254_000_000_000) -> Fill:
    return Fill(f"{coid}-{n}", coid, "BTCUSDT", side, price, qty, 0.1, "taker", ts)


def execute(store, pf, o, fills, **kw):
    pf2 = pf.copy()
    realised = [pf2.apply_fill(f) for f in fills]
    store.commit_execution([o], fills, realised, pf2, **kw)
    return pf2


def test_schema_pragmas_and_tables(tmp_path):
    path = tmp_path / "s.sqlite"
    with SQLiteStore(path) as s:
        db = s._db
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        assert {"orders", "fills", "positions", "balances", "daily_pnl", "bars", "model_versions",
                "schema_version", "stops", "kv"} <= tables
        assert db.execute("SELECT MAX(version) FROM schema_version").fetchone()[0] == SCHEMA_VERSION
    with SQLiteStore(path) as s:  # reopening migrates nothing twice
        assert s._db.execute("SELECT COUNT(*) FROM schema_version").fetchone()[0] == len(MIGRATIONS)


def test_reopen_migrates_nothing_twice(open_store):
    s = open_store()
    assert s._one("SELECT MAX(version) FROM schema_version")[0] == SCHEMA_VERSION
    s.close()
    s = open_store()
    assert s._one("SELECT COUNT(*) FROM schema_version")[0] == len(MIGRATIONS)


def test_execution_round_trip_and_recover(open_store):
    s = open_store()
    pf = s.recover(1000.0).portfolio
    pf = execute(s, pf, order(), [fill()], cursor="42")
    s.commit_execution([order("o2", OrderStatus.NEW, 0.0, 0)], [], [], pf,
                       stops={"BTCUSDT": Stops("BTCUSDT", 90.0, 120.0, "t1")})
    pf = execute(s, pf, order("o3"), [fill("o3", side=Side.SELL, qty=0.4, price=110.0)], cursor="43")
    s.close()
    s = open_store()
    rec = s.recover(5.0)  # the stored starting amount wins over a changed config
    assert rec.discrepancies == []
    assert rec.portfolio.starting_cash == 1000.0
    assert rec.portfolio.cash == pf.cash and rec.portfolio.positions == pf.positions
    assert [o.client_order_id for o in rec.open_orders] == ["o2"]
    assert rec.stops == [Stops("BTCUSDT", 90.0, 120.0, "t1")] and rec.cursor == "43"
    day = s._rows("SELECT day, realised_pnl, fees, n_fills FROM daily_pnl")
    assert day == [("2024-08-08", pytest.approx(0.4 * 10.0), pytest.approx(0.2), 2)]
    assert [f.fill_id for f in s.fills()] == ["o1-1", "o3-1"]
    assert s.get_order("o3").status == OrderStatus.FILLED and s.get_order("zz") is None


def test_failed_execution_writes_nothing(open_store):
    s = open_store()
    pf = execute(s, s.recover(1000.0).portfolio, order(), [fill()], cursor="1")
    with pytest.raises(StoreError, match="UNIQUE|rolled back") as ei:
        execute(s, pf, order("o9"), [fill("o9"), fill("o1")], cursor="2")  # o1-1 already exists
    assert not isinstance(ei.value, StoreUnavailable)  # a bad write is not a lost server: never retried
    assert s.get_order("o9") is None and len(s.fills()) == 1 and s.cursor() == "1"
    assert s.recover(1000.0).discrepancies == []


def test_floats_and_nanoseconds_round_trip_exactly(open_store):
    """Doubles stay doubles (PostgreSQL's REAL would be float4) and ns timestamps stay 64-bit."""
    s = open_store()
    f = Fill("p-1", "p", "BTCUSDT", Side.BUY, 61234.567891234567, 0.123456789012345, 0.0061234567891, "taker",
             1_923_161_254_123_456_789, 1.23456789e-7)
    o = Order("p", "BTCUSDT", Side.BUY, OrderType.LIMIT, 0.123456789012345, 61234.567891234567, OrderStatus.FILLED,
              1_923_161_254_123_456_789, 1_923_161_254_123_456_789, 1_923_161_254_123_456_789, 0.123456789012345,
              61234.567891234567, 1)
    execute(s, s.recover(1000.0).portfolio, o, [f])
    assert s.fills() == [f] and s.get_order("p") == o
    b = Bar("BTCUSDT", "1m", 1_923_161_254_000_000_000, 1.1, 2.2, 0.3, 1.7, 10.000000000001, 3.3, 7, 1.25)
    s.write_bars([b])
    s.write_bars([b])  # an upsert: the same bar again is one row
    assert s.read_bars("BTCUSDT", "1m") == [b]


def test_recover_reports_positions_that_disagree_with_fills(open_store):
    s = open_store()
    execute(s, s.recover(1000.0).portfolio, order(), [fill()])
    s.write_statements([("UPDATE positions SET qty = 7.0", ())])
    rec = s.recover(1000.0)
    assert any("stored qty 7.0 != 1.0" in d for d in rec.discrepancies)
    assert rec.portfolio.qty("BTCUSDT") == 1.0  # the fills are the truth


def bars(n, t0=0):
    return [Bar("BTCUSDT", "1m", t0 + i * 60_000_000_000, 1.0 + i, 2.0 + i, 0.5, 1.5 + i, 10.0) for i in range(n)]


def test_other_process_reads_bars_while_daemon_writes(tmp_path):
    path = tmp_path / "s.sqlite"
    w = SQLiteStore(path)
    w.write_bars(bars(100))
    reader = SQLiteStore(path, readonly=True)
    assert len(reader.read_bars("BTCUSDT", "1m")) == 100
    # hold a write transaction open: the reader still reads the last committed state (WAL)
    w._db.execute("BEGIN IMMEDIATE")
    w._db.executemany("INSERT INTO bars VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                      [(b.symbol, b.timeframe, b.open_ns, b.open, b.high, b.low, b.close, b.volume, 0, 0, 0)
                       for b in bars(50, t0=10**15)])
    assert len(reader.read_bars("BTCUSDT", "1m")) == 100
    w._db.execute("COMMIT")
    assert len(reader.read_bars("BTCUSDT", "1m")) == 150
    # and a real second process reads while this one keeps committing
    code = ("import sys, time; from daemon.store import SQLiteStore; s = SQLiteStore(sys.argv[1], readonly=True)\n"
            "n = []\n"
            "for _ in range(500):\n"
            "    n.append(len(s.read_bars('BTCUSDT', '1m')))\n"
            "    if n[-1] >= n[0] + 50: break\n"
            "    time.sleep(0.01)\n"
            "assert n == sorted(n) and n[0] >= 150, n; print(n[0], n[-1])")
    proc = subprocess.Popen([sys.executable, "-c", code, str(path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
    i = 0
    while proc.poll() is None and i < 100_000:
        w.write_bars(bars(10, t0=10**16 + i * 10**12))
        i += 1
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    first, last = map(int, out.split())
    assert last >= first + 50  # it saw the writer's commits as they happened
    bs = reader.read_bars("BTCUSDT", "1m", limit=3)
    assert bs == bars(3)
    reader.close()
    w.close()


def test_reader_sees_committed_state_while_a_write_is_open(open_store):
    """Another connection (the retrainer's, read-only) reads the last committed bars while a write is open."""
    w = open_store()
    w.write_bars(bars(100))
    reader = open_store(readonly=True)
    assert len(reader.read_bars("BTCUSDT", "1m")) == 100
    with w._tx() as db:
        db.executemany("INSERT INTO bars VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                       [(b.symbol, b.timeframe, b.open_ns, b.open, b.high, b.low, b.close, b.volume, 0, 0, 0)
                        for b in bars(50, t0=10**15)])
        assert len(reader.read_bars("BTCUSDT", "1m")) == 100
    assert len(reader.read_bars("BTCUSDT", "1m")) == 150
    assert reader.read_bars("BTCUSDT", "1m", since_ns=10**15, limit=3) == bars(50, t0=10**15)[:3]
    with pytest.raises(StoreError):
        reader.write_bars(bars(1, t0=10**17))


def test_model_versions(open_store):
    s = open_store()
    s.record_model_version("v1", "xgboost", "models/v1", "abc", 1, active=True)
    s.record_model_version("v2", "xgboost", "models/v2", "abc", 2, active=True)
    s.record_model_version("v2", "xgboost", "models/v2", "abc", 2, active=True)  # idempotent
    assert s._rows("SELECT version FROM model_versions WHERE active=1") == [("v2",)]
    assert s._one("SELECT COUNT(*) FROM model_versions")[0] == 2


# ------------------------------------------------------------------------------------------ bad files
def _snapshot(path):
    return {p.name: p.read_bytes() for p in path.parent.iterdir()}


def test_random_bytes_file(tmp_path):
    path = tmp_path / "s.sqlite"
    path.write_bytes(os.urandom(8192))
    before = _snapshot(path)
    with pytest.raises(StoreError) as ei:
        SQLiteStore(path)
    assert str(path) in str(ei.value) and "not a SQLite database" in str(ei.value)
    assert _snapshot(path) == before  # nothing written, no -wal/-shm left behind


def test_truncated_file(tmp_path):
    path = tmp_path / "s.sqlite"
    s = SQLiteStore(path)
    s.write_bars(bars(2000))
    s._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    s.close()
    for f in tmp_path.glob("s.sqlite-*"):
        f.unlink()
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    before = _snapshot(path)
    with pytest.raises(StoreError) as ei:
        SQLiteStore(path)
    assert str(path) in str(ei.value) and ("truncated" in str(ei.value) or "corrupt" in str(ei.value))
    assert _snapshot(path) == before


def test_corrupted_pages(tmp_path):
    path = tmp_path / "s.sqlite"
    s = SQLiteStore(path)
    s.write_bars(bars(2000))
    s._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    s.close()
    for f in tmp_path.glob("s.sqlite-*"):
        f.unlink()
    data = bytearray(path.read_bytes())
    data[4096 * 3: 4096 * 6] = os.urandom(4096 * 3)  # garbage over b-tree pages, header intact
    path.write_bytes(bytes(data))
    with pytest.raises(StoreError, match="corrupt"):
        SQLiteStore(path)


def test_newer_schema_version_refused_by_both(open_store):
    s = open_store()
    s.write_statements([("INSERT INTO schema_version VALUES (99, 'from the future', 0)", ())])
    s.close()
    with pytest.raises(StoreError, match=rf"schema version 99 is newer .*supports \({SCHEMA_VERSION}\)"):
        open_store()


def test_newer_schema_version_refused(tmp_path):
    path = tmp_path / "s.sqlite"
    SQLiteStore(path).close()
    db = sqlite3.connect(path)
    db.execute("INSERT INTO schema_version VALUES (99, 'from the future', 0)")
    db.commit()
    db.close()
    with pytest.raises(StoreError, match=rf"schema version 99 is newer .*supports \({SCHEMA_VERSION}\)") as ei:
        SQLiteStore(path)
    assert str(path) in str(ei.value)


def test_version_1_store_is_migrated_and_its_fills_keep_their_meaning(tmp_path):
    """A store written before fills.fee_qty existed (version 1) opens, gains the column (0 for old fills) and
    recovers with no discrepancy; a fill with a base-asset commission then round-trips."""
    path = tmp_path / "v1.sqlite"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE schema_version (version INTEGER PRIMARY KEY, description TEXT NOT NULL, "
               "applied_ns INTEGER NOT NULL)")
    for stmt in MIGRATIONS[0][2]:
        db.execute(stmt)
    db.execute("INSERT INTO schema_version VALUES (1, ?, 0)", (MIGRATIONS[0][1],))
    o, f = order(), fill()
    pf = Portfolio(1000.0)
    r = pf.apply_fill(f)
    db.execute("INSERT INTO orders VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
               (o.client_order_id, o.symbol, 1, "MARKET", o.qty, None, "FILLED", 1.0, 100.0, 1, 0, "", "", 1, 1, 1, 1))
    db.execute("INSERT INTO fills (fill_id, client_order_id, symbol, side, price, qty, fee, liquidity, ts, "
               "realised_pnl) VALUES (?,?,?,?,?,?,?,?,?,?)",
               (f.fill_id, f.client_order_id, f.symbol, 1, f.price, f.qty, f.fee, f.liquidity, f.ts, r))
    p = pf.position("BTCUSDT")
    db.execute("INSERT INTO positions VALUES (?,?,?,?,?,?)", ("BTCUSDT", p.qty, p.avg_price, p.realised, p.fees, 1))
    db.execute("INSERT INTO balances VALUES (?,?,?,?)", ("USDT", pf.cash, 1000.0, 1))
    db.commit()
    db.close()
    with SQLiteStore(path) as s:
        assert s._db.execute("SELECT MAX(version) FROM schema_version").fetchone()[0] == SCHEMA_VERSION
        assert [x.fee_qty for x in s.fills()] == [0.0]
        rec = s.recover(1000.0)
        assert rec.discrepancies == [] and rec.portfolio.qty("BTCUSDT") == 1.0
        # a buy whose commission (0.001 BTC) the venue kept: the position grows by 0.999, cash pays 100 * 1
        f2 = Fill("o2-1", "o2", "BTCUSDT", Side.BUY, 100.0, 1.0, 0.1, "taker", f.ts + 1, 0.001)
        pf2 = execute(s, rec.portfolio, order("o2"), [f2])
        assert pf2.qty("BTCUSDT") == pytest.approx(1.999, abs=1e-12)
        assert pf2.cash == pytest.approx(rec.portfolio.cash - 100.0, abs=1e-9)
    with SQLiteStore(path) as s:
        rec = s.recover(1000.0)
        assert rec.discrepancies == []
        assert [x.fee_qty for x in s.fills()] == [0.0, 0.001]
        assert rec.portfolio.qty("BTCUSDT") == pytest.approx(1.999, abs=1e-12)


def test_foreign_sqlite_file_refused(tmp_path):
    path = tmp_path / "other.sqlite"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE t (x)")
    db.commit()
    db.close()
    with pytest.raises(StoreError, match="not a tradingd store"):
        SQLiteStore(path)


def test_failed_migration_leaves_nothing_on_both(open_store, monkeypatch):
    import daemon.store as st
    open_store().close()
    bad = st.MIGRATIONS + [(SCHEMA_VERSION + 1, "broken", ("CREATE TABLE extra (x INTEGER)", "THIS IS NOT SQL"))]
    monkeypatch.setattr(st, "MIGRATIONS", bad)
    monkeypatch.setattr(st, "SCHEMA_VERSION", SCHEMA_VERSION + 1)
    with pytest.raises(StoreError, match="syntax error"):
        open_store()
    monkeypatch.undo()
    s = open_store()
    assert s._one("SELECT MAX(version) FROM schema_version")[0] == SCHEMA_VERSION
    with pytest.raises((StoreError, *s._errors), match="extra"):  # the broken migration's table is not there
        s._rows("SELECT * FROM extra")


def test_failed_migration_leaves_nothing(tmp_path, monkeypatch):
    import daemon.store as st
    bad = st.MIGRATIONS + [(SCHEMA_VERSION + 1, "broken", ("CREATE TABLE extra (x)", "THIS IS NOT SQL"))]
    monkeypatch.setattr(st, "MIGRATIONS", bad)
    monkeypatch.setattr(st, "SCHEMA_VERSION", SCHEMA_VERSION + 1)
    path = tmp_path / "s.sqlite"
    with pytest.raises(StoreError, match="syntax error"):
        st.SQLiteStore(path)
    db = sqlite3.connect(path)
    assert db.execute("SELECT MAX(version) FROM schema_version").fetchone()[0] == SCHEMA_VERSION
    assert not db.execute("SELECT 1 FROM sqlite_master WHERE name='extra'").fetchone()


def test_missing_directory_and_readonly_missing(tmp_path):
    with pytest.raises(StoreError, match="does not exist"):
        SQLiteStore(tmp_path / "nope" / "s.sqlite")
    with pytest.raises(StoreError, match="does not exist"):
        SQLiteStore(tmp_path / "s.sqlite", readonly=True)


def test_portfolio_fixture_sanity():
    assert Portfolio(1.0).cash == 1.0


def test_kv_put_items_delete(open_store):
    with open_store() as s:
        s.put_kv("exit_plan.BTCUSDT", '{"a": 1}')
        s.put_kv("exit_plan.ETHUSDT", '{"b": 2}')
        s.put_kv("replay_cursor", "7.0")
        assert s.kv_items("exit_plan.") == {"exit_plan.BTCUSDT": '{"a": 1}', "exit_plan.ETHUSDT": '{"b": 2}'}
        s.put_kv("exit_plan.BTCUSDT", None)
        assert s.kv_items("exit_plan.") == {"exit_plan.ETHUSDT": '{"b": 2}'}
        assert s.kv_items("exit_plan_") == {}  # a prefix, not a LIKE pattern
        assert s.cursor() == "7.0"
