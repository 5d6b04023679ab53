"""StoreWriter: FIFO commits on its own thread, flush/close, backpressure, and stop-on-failure (prefix kept)."""
from __future__ import annotations

import sqlite3
import threading

import pytest

from daemon.broker import BrokerHalted, PaperBroker
from daemon.config import BrokerConfig
from market.events import Bar, OrderIntent, Side
from daemon.store import SQLiteStore, StoreError
from daemon.storewriter import StoreWriter

BOOK = ([(100.0, 5.0), (99.5, 5.0)], [(100.5, 5.0), (101.0, 5.0)])
CFG = BrokerConfig(starting_cash=100_000.0, taker_fee=0.001, maker_fee=0.0, latency_ms=0.0)


def bar(i: int, sym: str = "BTCUSDT") -> Bar:
    return Bar(sym, "1m", i * 60_000_000_000, 100.0, 101.0, 99.0, 100.0 + i, 1.0)


def writer_for(path, **kw) -> StoreWriter:
    SQLiteStore(path).close()
    return StoreWriter(lambda: SQLiteStore(path), **kw)


def rows(path, sql: str):
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return db.execute(sql).fetchall()
    finally:
        db.close()


def test_jobs_commit_in_order_on_another_thread(tmp_path):
    path = tmp_path / "s.sqlite"
    w = writer_for(path)
    threads = []
    for i in range(50):
        w.submit(lambda s, i=i: (threads.append(threading.get_ident()), s.write_bars([bar(i)])))
    assert w.flush(10)
    assert w.pending == 0 and w.stats.committed == 50
    assert set(threads) == {w._thread.ident} and threading.get_ident() not in threads
    assert [r[0] for r in rows(path, "SELECT close FROM bars ORDER BY open_ns")] == [100.0 + i for i in range(50)]
    assert w.lag_summary()["n"] == 50
    assert w.close()


def test_broker_with_writer_stores_the_same_as_without(tmp_path):
    """Same orders through a synchronous broker and a write-behind broker: identical store contents."""
    def run(path, writer):
        b = PaperBroker(CFG, SQLiteStore(path), symbols=("BTCUSDT",), writer=writer)
        for i, (side, qty) in enumerate([(Side.BUY, 1.0), (Side.BUY, 6.0), (Side.SELL, 3.0), (Side.SELL, 4.0)]):
            b.submit(OrderIntent(f"o{i}", "BTCUSDT", side, qty), BOOK, 1_000 + i, cursor=f"{i}")
        b.set_stops("BTCUSDT", 90.0, 120.0, "t", cursor="stops")
        if writer is not None:
            assert writer.close()
        b.store.close()
        return {t: rows(path, f"SELECT * FROM {t} ORDER BY 1") for t in
                ("orders", "positions", "balances", "daily_pnl", "stops", "kv")}, \
            rows(path, "SELECT fill_id, price, qty, fee, realised_pnl FROM fills ORDER BY seq")

    sync = run(tmp_path / "a.sqlite", None)
    wb = run(tmp_path / "b.sqlite", writer_for(tmp_path / "b.sqlite"))
    assert len(sync[1]) >= 5  # the 6.0 buy walks two ask levels
    assert wb == sync
    with SQLiteStore(tmp_path / "b.sqlite") as s:
        assert s.recover(CFG.starting_cash).discrepancies == []


def test_failed_job_stops_writing_and_halts_the_broker(tmp_path):
    path = tmp_path / "s.sqlite"
    errors = []
    w = writer_for(path, on_error=errors.append)
    b = PaperBroker(CFG, SQLiteStore(path), symbols=("BTCUSDT",), writer=w)
    b.submit(OrderIntent("ok", "BTCUSDT", Side.BUY, 1.0), BOOK, 1)
    w.submit(lambda s: s.write_statements([("INSERT INTO no_such_table VALUES (1)", ())]), kind="bad")
    w.write_bars([bar(1)])  # after the failure: skipped, so the store stays a prefix
    assert w.flush(10)
    assert len(errors) == 1 and isinstance(errors[0], StoreError) and "no_such_table" in str(errors[0])
    assert w.stats.errors == 1 and w.stats.skipped == 1
    assert rows(path, "SELECT COUNT(*) FROM bars") == [(0,)]
    assert rows(path, "SELECT client_order_id FROM orders") == [("ok",)]
    with pytest.raises(StoreError, match="stopped after a failed write"):
        w.write_bars([bar(2)])
    with pytest.raises(BrokerHalted):
        b.submit(OrderIntent("next", "BTCUSDT", Side.BUY, 1.0), BOOK, 2)
    w.close()


def test_full_queue_drops_bars_but_waits_for_executions(tmp_path):
    path = tmp_path / "s.sqlite"
    w = writer_for(path, max_queue=2)
    gate, busy = threading.Event(), threading.Event()
    w.submit(lambda s: (busy.set(), gate.wait(10)), kind="block")  # the thread is busy with this one
    assert busy.wait(10)
    w.submit(lambda s: s.write_bars([bar(1)]), droppable=True)
    w.submit(lambda s: s.write_bars([bar(2)]), droppable=True)  # queue now full (2)
    assert w.write_bars([bar(3)]) is False and w.stats.dropped == 1
    done = threading.Event()

    def execution() -> None:
        w.write_statements([("INSERT INTO kv VALUES ('k', 'v')", ())])
        done.set()
    t = threading.Thread(target=execution)
    t.start()
    assert not done.wait(0.3)  # waits for room, never dropped
    gate.set()
    t.join(10)
    assert done.is_set() and w.stats.full_waits == 1
    assert w.close()
    assert rows(path, "SELECT COUNT(*) FROM bars") == [(2,)]
    assert rows(path, "SELECT value FROM kv WHERE key='k'") == [("v",)]


def test_open_failure_is_raised_by_the_constructor(tmp_path):
    with pytest.raises(StoreError, match="does not exist"):
        StoreWriter(lambda: SQLiteStore(tmp_path / "missing-dir" / "s.sqlite"))


def test_close_flushes_and_refuses_later_jobs(tmp_path):
    path = tmp_path / "s.sqlite"
    w = writer_for(path)
    for i in range(20):
        w.write_bars([bar(i)])
    assert w.close()
    assert rows(path, "SELECT COUNT(*) FROM bars") == [(20,)]
    with pytest.raises(RuntimeError, match="closed"):
        w.write_bars([bar(99)])


def test_a_failed_bar_write_is_dropped_and_counted_not_fatal(tmp_path):
    """Bars are droppable: a bar job that fails rolled back only itself; executions keep committing."""
    path = tmp_path / "s.sqlite"
    errors = []
    w = writer_for(path, on_error=errors.append)
    w.submit(lambda s: s.write_statements([("INSERT INTO no_such_table VALUES (1)", ())]), droppable=True,
             kind="bars")
    w.write_statements([("INSERT INTO kv VALUES ('after', 'ok')", ())])
    assert w.flush(10)
    assert errors == [] and w.error is None and w.stats.dropped == 1 and w.stats.committed == 1
    assert rows(path, "SELECT value FROM kv WHERE key='after'") == [("ok",)]
    w.close()


def test_bars_after_event_hand_off_after_the_current_callback_in_one_job(tmp_path):
    import asyncio

    from daemon.storewriter import BarsAfterEvent
    path = tmp_path / "s.sqlite"
    w = writer_for(path)
    sink = BarsAfterEvent(w)

    async def event() -> int:
        sink([bar(1)])
        sink([bar(2), bar(3)])  # several timeframes closing on one event
        return w.stats.submitted  # nothing queued while the decision runs

    async def main() -> tuple[int, int]:
        during = await asyncio.get_running_loop().create_task(event())
        await asyncio.sleep(0)
        return during, w.stats.submitted
    assert asyncio.run(main()) == (0, 1)
    sink([bar(4)])  # no running loop: at once
    assert w.close() and rows(path, "SELECT COUNT(*) FROM bars") == [(4,)]


def test_dropped_bar_rows_are_counted_by_reason_and_exported(tmp_path):
    """Every bar ROW the writer loses is counted (queue full / write failed) and reaches /metrics: a hole in the
    retrainer's input is visible, not silent."""
    from daemon.collector import Collector, View
    from daemon.config import Config
    from daemon.metrics import Metrics
    path = tmp_path / "s.sqlite"
    w = writer_for(path, max_queue=1)
    gate, busy = threading.Event(), threading.Event()
    w.submit(lambda s: (busy.set(), gate.wait(10)), kind="block")
    assert busy.wait(10)
    assert w.write_bars([bar(1)]) is True                      # fills the queue
    assert w.write_bars([bar(2), bar(3), bar(4)]) is False     # 3 rows dropped: queue full
    db = sqlite3.connect(path)
    db.execute("DROP TABLE bars")                              # the queued bar write will now fail
    db.commit()
    db.close()
    gate.set()
    assert w.flush(10)
    assert w.stats.dropped_bars_queue_full == 3 and w.stats.dropped_bars_failed == 1 and w.error is None
    d = Collector(Config(), Metrics(), lambda: View(writer=w))  # the daemon's /status and /metrics
    status = d.status()["store"]
    assert status["dropped_bars_queue_full"] == 3 and status["dropped_bars_failed"] == 1
    text = d.metrics.render().decode()
    assert 'tradingd_store_dropped_bars_total{reason="queue_full"} 3.0' in text
    assert 'tradingd_store_dropped_bars_total{reason="write_failed"} 1.0' in text
    assert 'tradingd_store_writer_events_total{event="dropped"} 2.0' in text
    w.close()
