"""The process the crash test kills: paper-trades the real recording through book + broker + store.

Crash-only: every start recovers from the store (the same path as a first start), rebuilds the book by
replaying the recording from its beginning (the book is not persisted, it is cheap to rebuild), and hands the
broker only the steps after the persisted replay cursor. The cursor ``"<event>.<step>"`` commits in the same
transaction as the fills it caused (step 0: the market event, 1: this worker's order or cancel, 2: its stops).

Orders are deterministic functions of the event stream (client order id ``w<event>``), so a clean run and a
run killed any number of times must end with exactly the same fills. An order step at the cursor's own event
is re-submitted after a restart: the broker must answer it idempotently (no second order for the same id).

STORE is a SQLite file, or ``postgresql://USER@HOST:PORT/DB#ACCOUNT`` (daemon.pgstore; the password from
$TRADINGD_DB_PASSWORD): the same kill -9 test runs against both backends.

Usage: python -m tests.daemon.crash_worker STORE [--events N] [--every K] RECORDING...
Prints READY after recovery and DONE <n_fills> at the end.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from daemon.binance.codec import decode_frame  # noqa: E402
from market.book import OrderBook  # noqa: E402
from daemon.broker import PaperBroker  # noqa: E402
from daemon.config import BrokerConfig  # noqa: E402
from market.events import DepthSnapshot, DepthUpdate, OrderIntent, OrderType, Side, Trade  # noqa: E402
from daemon.recording import iter_recording  # noqa: E402
from daemon.store import SQLiteStore  # noqa: E402



def is_pg(store) -> bool:
    return str(store).startswith("postgresql://")


def open_store(store, **kw):
    """The worker's (and the checker's) store: a SQLite path or ``postgresql://...#account``."""
    if is_pg(store):
        from daemon.pgstore import PostgresStore
        url, _, account = str(store).partition("#")
        return PostgresStore(url, password=os.environ.get("TRADINGD_DB_PASSWORD", ""), account=account, **kw)
    return SQLiteStore(Path(store), **kw)


def query(store, sql: str) -> list[tuple] | None:
    """Rows of ``sql`` read straight from the store's database (not through the store code); None when the
    store does not exist yet (killed before it was created)."""
    if is_pg(store):
        import psycopg
        url, _, account = str(store).partition("#")
        with psycopg.connect(url, password=os.environ.get("TRADINGD_DB_PASSWORD", "")) as conn:
            if not conn.execute("SELECT 1 FROM information_schema.tables WHERE table_schema=%s AND "
                                "table_name='schema_version'", (account,)).fetchone():
                return None
            if not conn.execute(f"SELECT 1 FROM {account}.schema_version").fetchone():
                return None  # killed inside the first migration: nothing committed
            conn.execute("SELECT set_config('search_path', %s, false)", (account,))
            return conn.execute(sql).fetchall()
    import sqlite3
    if not Path(store).exists():
        return None
    db = sqlite3.connect(f"file:{store}?mode=ro", uri=True)
    try:
        return db.execute(sql).fetchall()
    finally:
        db.close()


CFG = BrokerConfig(starting_cash=1_000_000.0, taker_fee=0.001, maker_fee=0.0002, book_depth=200)


def events(paths: list[str], limit: int):
    n = 0
    for ts, raw in iter_recording(paths):
        if b"@bookTicker" in raw[:40]:
            continue
        ev = decode_frame(raw, ts)
        if isinstance(ev, (Trade, DepthUpdate, DepthSnapshot)):
            yield n, ev
            n += 1
            if n >= limit:
                return


class NotIdempotent(RuntimeError):
    pass


def order_step(broker: PaperBroker, book: OrderBook, i: int, k: int, ts: int, cursor: str, redo: bool) -> None:
    """The k-th scheduled action, at event i. Deterministic given the book and the account.

    ``redo``: this step already committed before the crash. A submission is repeated anyway (the broker must
    return the existing order); a cancel is not (it picks "the oldest open order", which has changed)."""
    bid, ask = book.best_bid()[0], book.best_ask()[0]
    kind = k % 6
    coid = f"w{i}"
    if redo:
        if kind == 5:
            return
        submit = broker.submit

        def check(*a, **kw):
            ex = submit(*a, **kw)
            if ex.is_new or ex.fills:
                raise NotIdempotent(f"re-submitted {coid} created a new order")
            return ex
        broker = _Proxy(broker, check)
    if kind == 0:
        broker.submit(OrderIntent(coid, "BTCUSDT", Side.BUY, 0.35), book, ts, cursor=cursor)
    elif kind == 1:
        broker.submit(OrderIntent(coid, "BTCUSDT", Side.SELL, 0.2, OrderType.LIMIT, round(ask + 1.5, 2)), book, ts,
                      cursor=cursor)
    elif kind == 2:
        broker.submit(OrderIntent(coid, "BTCUSDT", Side.SELL, 0.5), book, ts, cursor=cursor)
    elif kind == 3:
        broker.submit(OrderIntent(coid, "BTCUSDT", Side.BUY, 0.25, OrderType.LIMIT, round(bid - 1.0, 2)), book, ts,
                      cursor=cursor)
    elif kind == 4:
        broker.submit(OrderIntent(coid, "BTCUSDT", Side.BUY, 0.6, OrderType.LIMIT, round(ask + 0.5, 2)), book, ts,
                      cursor=cursor)  # marketable limit: takes, then the rest rests
    else:
        opens = sorted(broker.open_orders(), key=lambda o: (o.ts_created, o.client_order_id))
        if opens:
            broker.cancel(opens[0].client_order_id, ts, cursor=cursor)


class _Proxy:
    def __init__(self, broker: PaperBroker, submit) -> None:
        self.submit = submit


def stops_step(broker: PaperBroker, book: OrderBook, i: int, cursor: str) -> None:
    pos = broker.portfolio.qty("BTCUSDT")
    if pos != 0.0:
        mid = book.mid()
        sl, tp = (mid - 4.0, mid + 6.0) if pos > 0 else (mid + 4.0, mid - 6.0)
        broker.set_stops("BTCUSDT", round(sl, 2), round(tp, 2), f"s{i}", cursor=cursor)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("store")
    ap.add_argument("recording", nargs="+")
    ap.add_argument("--events", type=int, default=12_000)
    ap.add_argument("--every", type=int, default=40, help="an order action every this many depth updates")
    ap.add_argument("--writer", action="store_true", help="commit through the daemon's StoreWriter thread "
                    "(write-behind) instead of on this thread")
    a = ap.parse_args(argv)
    writer = None
    if a.writer:
        from daemon.storewriter import StoreWriter
        open_store(a.store).close()  # create/migrate once, then the writer thread opens its own
        writer = StoreWriter(lambda: open_store(a.store), max_queue=64)
    broker = PaperBroker(CFG, open_store(a.store), symbols=("BTCUSDT",), writer=writer)
    if broker.recovery_discrepancies:
        print("DISCREPANCIES", broker.recovery_discrepancies, flush=True)
        return 3
    ci, cs = (-1, 9) if broker.cursor is None else map(int, broker.cursor.split("."))
    print("READY", broker.cursor, flush=True)
    book = OrderBook("BTCUSDT")
    n_depth = 0
    for i, ev in events(a.recording, a.events):
        if isinstance(ev, DepthSnapshot):
            book.on_snapshot(ev)
            continue
        if isinstance(ev, DepthUpdate):
            book.on_update(ev)
            n_depth += 1
        if not book.is_tradeable or i < ci:
            continue
        if i > ci or cs < 0:
            if isinstance(ev, Trade):
                broker.on_trade(ev, book, cursor=f"{i}.0")
            else:
                broker.on_book("BTCUSDT", book, ev.ts_recv, cursor=f"{i}.0")
        if isinstance(ev, DepthUpdate) and n_depth % a.every == 0:
            k = n_depth // a.every
            redo = i == ci and cs >= 1  # committed before the crash: re-submitted, must be idempotent
            order_step(broker, book, i, k, ev.ts_recv, f"{i}.1", redo)
            if k % 3 == 0 and (i > ci or cs < 2):
                stops_step(broker, book, i, f"{i}.2")
    if writer is not None and not writer.close():
        print("WRITER_CLOSE_TIMEOUT", flush=True)
        return 4
    print("DONE", broker.portfolio.n_fills, flush=True)
    broker.store.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


# ------------------------------------------------------------------------------------------- harness
# Used by tests/daemon/test_crash.py and scripts/crash_soak.py: run the worker, kill it, check the store.
def run_clean(store: Path, recording: list[str], extra: list[str] = (), timeout: float = 120) -> None:
    import subprocess
    out = subprocess.run([sys.executable, __file__, str(store), *recording, *extra], capture_output=True,
                         text=True, timeout=timeout)
    if out.returncode != 0 or "DONE" not in out.stdout:
        raise RuntimeError(f"clean worker run failed rc={out.returncode}: {out.stdout[-2000:]} {out.stderr[-2000:]}")


def read_state(store) -> dict:
    """Fills in commit order, order ids, positions as stored, and positions re-summed from the fills (SQL)."""
    q = {
        "fills": "SELECT fill_id, client_order_id, side, price, qty, fee, liquidity, ts FROM fills ORDER BY seq",
        "orders": "SELECT client_order_id, status, filled_qty FROM orders ORDER BY client_order_id",
        "positions": "SELECT symbol, qty FROM positions",
        "fill_sums": "SELECT symbol, SUM(side * qty) FROM fills GROUP BY symbol",
        "dup_coids": "SELECT client_order_id FROM orders GROUP BY client_order_id HAVING COUNT(*) > 1",
        "dup_fills": "SELECT fill_id FROM fills GROUP BY fill_id HAVING COUNT(*) > 1",
    }
    out = {k: [tuple(r) for r in (query(store, sql) or [])] for k, sql in q.items()}
    out["positions"], out["fill_sums"] = dict(out["positions"]), dict(out["fill_sums"])
    return out


def check_after_crash(store: Path, clean: dict) -> list[str]:
    """Problems with a store left by a killed worker (empty list = consistent). ``clean``: read_state of a
    clean run. Recovery is the broker's own start-up path; the sums are recomputed independently here."""
    problems = []
    if query(store, "SELECT 1") is None:
        return problems  # killed before the store was created
    with open_store(store) as s:
        problems += [f"recover: {d}" for d in s.recover(CFG.starting_cash).discrepancies]
    st = read_state(store)
    for sym in set(st["positions"]) | set(st["fill_sums"]):
        a, b = st["positions"].get(sym, 0.0), st["fill_sums"].get(sym, 0.0)
        if abs(a - b) > 1e-9:
            problems.append(f"position {sym} {a!r} != sum of fills {b!r}")
    if st["dup_coids"] or st["dup_fills"]:
        problems.append(f"duplicates: orders {st['dup_coids']} fills {st['dup_fills']}")
    n = len(st["fills"])
    if st["fills"] != clean["fills"][:n]:
        first = next(i for i, (x, y) in enumerate(zip(st["fills"], clean["fills"] + [None] * n)) if x != y)
        problems.append(f"fills diverge from the clean run at #{first}: {st['fills'][first]} vs "
                        f"{clean['fills'][first] if first < len(clean['fills']) else None}")
    known = {o[0] for o in clean["orders"]}
    extra = [o[0] for o in st["orders"] if o[0] not in known]
    if extra:
        problems.append(f"orders that the clean run never made: {extra[:5]}")
    return problems


def crash_loop(store_dir: Path, recording: list[str], clean: dict, *, kills: int, seed: int,
               max_delay: float = 1.0, extra: list[str] = (), log=print, store_for=None) -> dict:
    """Start the worker, SIGKILL it at a random moment after it is READY, check the store, repeat until
    ``kills`` kills landed on a running worker. A worker that finishes ends its round: the final state must
    equal the clean run's, and a new round starts on a fresh store (``store_for(round)``: default a SQLite file
    in ``store_dir``; a ``postgresql://...#account`` for the PostgreSQL store)."""
    if store_for is None:
        def store_for(r: int):
            return store_dir / f"crash-{seed}-{r}.sqlite"
    import random
    import signal
    import subprocess
    import time
    rng = random.Random(seed)
    stats = {"kills": 0, "rounds": 0, "finished_rounds": 0, "restarts": 0, "problems": [], "resumed_at": []}
    rnd = 0
    store = store_for(rnd)
    while stats["kills"] < kills:
        p = subprocess.Popen([sys.executable, __file__, str(store), *recording, *extra], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
        stats["restarts"] += 1
        ready = False
        for line in p.stdout:
            if line.startswith("READY"):
                ready = True
                stats["resumed_at"].append(line.split()[1])
                break
        if not ready:
            p.wait()
            raise RuntimeError(f"worker did not start (rc={p.returncode}): {p.stderr.read()[-2000:]}")
        time.sleep(rng.uniform(0.0, max_delay))
        if p.poll() is None:
            p.send_signal(signal.SIGKILL)
            stats["kills"] += 1
        rc = p.wait()
        rest = p.stdout.read()
        p.stdout.close()
        err = p.stderr.read()
        p.stderr.close()
        if rc not in (0, -signal.SIGKILL):
            raise RuntimeError(f"worker failed rc={rc}: {rest[-1000:]} {err[-2000:]}")
        problems = check_after_crash(store, clean)
        if rc == 0:
            if read_state(store)["fills"] != clean["fills"]:
                problems.append("a finished run's fills differ from the clean run")
            stats["finished_rounds"] += 1
            rnd += 1
            store = store_for(rnd)
        stats["problems"] += problems
        if problems:
            log(f"PROBLEM after restart {stats['restarts']}: {problems}")
    # finish the last round uninterrupted: no fill lost, same final fills as the clean run
    run_clean(store, recording, extra)
    stats["problems"] += check_after_crash(store, clean)
    final = read_state(store)
    if final["fills"] != clean["fills"] or final["positions"] != clean["positions"]:
        stats["problems"].append("final fills/positions differ from the clean run")
    stats["rounds"] = rnd + 1
    stats["final_fills"] = len(final["fills"])
    return stats
