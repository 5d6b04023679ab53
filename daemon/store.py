"""Durable store: SQLite in WAL mode (the embedded default) or PostgreSQL (daemon.pgstore) behind one small
:class:`Store` protocol. The schema (:data:`MIGRATIONS`) and every statement are written once, in SQL both
dialects run; daemon.pgstore only maps the SQLite column types and placeholders (one place for each fact).

Why these settings (details in docs/STORE.md):

* WAL lets the retrainer (another process) read bars while the daemon writes; readers never block the writer.
* ``synchronous=FULL``: in WAL mode NORMAL can lose the last commits on power loss (not on a process crash);
  an order/fill reported to the strategy must survive both, and commits are few (one per execution).
* One transaction per execution: the order row, its fills, the positions/balance they move, daily P&L and the
  caller's replay cursor commit together or not at all. Start-up and crash recovery are one path
  (:meth:`SQLiteStore.recover`), which re-derives the account from the fills and reports any disagreement.
* Opening never half-writes a bad file: the file is checked through a read-only connection first (SQLite
  header, ``quick_check``, schema version), and each migration runs in its own transaction.
"""
from __future__ import annotations

import math
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple, Protocol

import structlog

from market.events import Bar, Fill, OrderStatus, OrderType, Side
from market.matching import Order, Stops
from market.portfolio import Portfolio, Position

__all__ = ["StoreError", "StoreUnavailable", "Store", "SQLiteStore", "Recovery", "SCHEMA_VERSION", "MIGRATIONS",
           "execution_statements"]

log = structlog.get_logger(__name__)

_SQLITE_MAGIC = b"SQLite format 3\x00"

# Store files this process has a connection to (resolved path -> count). POSIX record locks belong to the
# process: closing ANY descriptor of a file drops all of them, SQLite's included. A raw open()/close() of a file
# we already hold would let another process think it is the last connection and delete the live -wal/-shm. So
# the raw header check runs only on the first open of a path in this process (it was checked then).
_OPEN_PATHS: Counter[str] = Counter()
_OPEN_LOCK = threading.Lock()


class StoreError(Exception):
    """The store cannot be used; names the file and the problem. Needs a human (never retried blindly)."""

    def __init__(self, path: str | Path, problem: str) -> None:
        super().__init__(f"store {path}: {problem}")
        self.path = str(path)
        self.problem = problem


class StoreUnavailable(StoreError):
    """The store's server cannot be reached (a network store only; never SQLite). Transient: the writer thread
    retries with backoff and new orders stop meanwhile (daemon.storewriter)."""


# Each migration: (version, description, statements). Append only; never edit a released one.
MIGRATIONS: list[tuple[int, str, tuple[str, ...]]] = [
    (1, "orders, fills, positions, balances, daily_pnl, bars, model_versions, stops, kv", (
        """CREATE TABLE orders (
            client_order_id TEXT PRIMARY KEY,
            symbol TEXT NOT NULL,
            side INTEGER NOT NULL CHECK (side IN (1, -1)),
            order_type TEXT NOT NULL CHECK (order_type IN ('MARKET', 'LIMIT')),
            qty REAL NOT NULL CHECK (qty > 0),
            limit_price REAL,
            status TEXT NOT NULL,
            filled_qty REAL NOT NULL DEFAULT 0,
            avg_fill_price REAL NOT NULL DEFAULT 0,
            n_fills INTEGER NOT NULL DEFAULT 0,
            reduce_only INTEGER NOT NULL DEFAULT 0,
            reason TEXT NOT NULL DEFAULT '',
            timeframe TEXT NOT NULL DEFAULT '',
            active INTEGER NOT NULL DEFAULT 0,
            ts_created INTEGER NOT NULL,
            active_at INTEGER NOT NULL,
            ts_updated INTEGER NOT NULL
        )""",
        "CREATE INDEX orders_open ON orders(status) WHERE status IN ('NEW', 'PARTIALLY_FILLED')",
        """CREATE TABLE fills (
            seq INTEGER PRIMARY KEY,
            fill_id TEXT NOT NULL UNIQUE,
            client_order_id TEXT NOT NULL REFERENCES orders(client_order_id),
            symbol TEXT NOT NULL,
            side INTEGER NOT NULL CHECK (side IN (1, -1)),
            price REAL NOT NULL CHECK (price > 0),
            qty REAL NOT NULL CHECK (qty > 0),
            fee REAL NOT NULL CHECK (fee >= 0),
            liquidity TEXT NOT NULL CHECK (liquidity IN ('taker', 'maker')),
            ts INTEGER NOT NULL,
            realised_pnl REAL NOT NULL
        )""",
        "CREATE INDEX fills_order ON fills(client_order_id)",
        "CREATE INDEX fills_symbol_ts ON fills(symbol, ts)",
        """CREATE TABLE positions (
            symbol TEXT PRIMARY KEY,
            qty REAL NOT NULL,
            avg_price REAL NOT NULL,
            realised_pnl REAL NOT NULL,
            fees_paid REAL NOT NULL,
            ts_updated INTEGER NOT NULL
        )""",
        """CREATE TABLE balances (
            asset TEXT PRIMARY KEY,
            amount REAL NOT NULL,
            starting_amount REAL NOT NULL,
            ts_updated INTEGER NOT NULL
        )""",
        """CREATE TABLE daily_pnl (
            day TEXT PRIMARY KEY,
            realised_pnl REAL NOT NULL DEFAULT 0,
            fees REAL NOT NULL DEFAULT 0,
            volume_quote REAL NOT NULL DEFAULT 0,
            n_fills INTEGER NOT NULL DEFAULT 0
        )""",
        """CREATE TABLE bars (
            symbol TEXT NOT NULL,
            timeframe TEXT NOT NULL,
            open_ns INTEGER NOT NULL,
            open REAL NOT NULL, high REAL NOT NULL, low REAL NOT NULL, close REAL NOT NULL,
            volume REAL NOT NULL, quote_volume REAL NOT NULL DEFAULT 0,
            trades INTEGER NOT NULL DEFAULT 0, taker_buy_volume REAL NOT NULL DEFAULT 0,
            PRIMARY KEY (symbol, timeframe, open_ns)
        ) WITHOUT ROWID""",
        """CREATE TABLE model_versions (
            version TEXT PRIMARY KEY,
            kind TEXT NOT NULL,
            path TEXT NOT NULL,
            feature_schema_hash TEXT NOT NULL,
            created_ns INTEGER NOT NULL,
            metrics_json TEXT NOT NULL DEFAULT '{}',
            active INTEGER NOT NULL DEFAULT 0
        )""",
        """CREATE TABLE stops (
            symbol TEXT PRIMARY KEY,
            stop_loss REAL,
            take_profit REAL,
            tag TEXT NOT NULL
        )""",
        "CREATE TABLE kv (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    )),
    (2, "fills.fee_qty: commission kept in the base asset (Binance charges a buy's base)", (
        "ALTER TABLE fills ADD COLUMN fee_qty REAL NOT NULL DEFAULT 0 CHECK (fee_qty >= 0)",
    )),
]
SCHEMA_VERSION = MIGRATIONS[-1][0]


class Recovery(NamedTuple):
    """What start-up (and crash recovery, the same path) rebuilds from the store."""

    portfolio: Portfolio
    open_orders: list[Order]
    stops: list[Stops]
    cursor: str | None
    discrepancies: list[str]


class Store(Protocol):
    """What the broker, daemon and retrainer need from a store (SQLiteStore here; daemon.pgstore.PostgresStore)."""

    def recover(self, starting_cash: float) -> Recovery: ...
    def commit_execution(self, orders: Sequence[Order], fills: Sequence[Fill], realised: Sequence[float],
                         portfolio: Portfolio, *, stops: Mapping[str, Stops | None] | None = None,
                         cursor: str | None = None) -> None: ...
    def get_order(self, client_order_id: str) -> Order | None: ...
    def fills(self, symbol: str | None = None) -> list[Fill]: ...
    def set_cursor(self, cursor: str) -> None: ...
    def write_bars(self, bars: Iterable[Bar]) -> int: ...
    def read_bars(self, symbol: str, timeframe: str, since_ns: int = 0, limit: int | None = None) -> list[Bar]: ...
    def record_model_version(self, version: str, kind: str, path: str, feature_schema_hash: str,
                             created_ns: int, metrics_json: str = "{}", active: bool = False) -> None: ...
    def close(self) -> None: ...


def _day(ts_ns: int) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(ts_ns // 1_000_000_000))


class _SqlStore:
    """What both backends share: every read and write of the :class:`Store` protocol in portable SQL over four
    primitives a backend provides: ``_rows``/``_one`` (reads), ``_tx`` (a write transaction whose ``execute``/
    ``executemany`` take ``?`` placeholders) and ``_errors`` (its driver's exception types). ``_where`` names the
    store in errors (a path, or a URL without its password)."""

    quote_asset: str
    _errors: tuple[type[BaseException], ...] = ()

    @property
    def _where(self) -> str:
        raise NotImplementedError

    def _rows(self, sql: str, params: tuple = ()) -> list[tuple]:
        raise NotImplementedError

    def _one(self, sql: str, params: tuple = ()) -> tuple | None:
        rows = self._rows(sql, params)
        return rows[0] if rows else None

    def _tx(self):
        raise NotImplementedError

    # ------------------------------------------------------------------------------------------ writes
    def commit_execution(self, orders: Sequence[Order], fills: Sequence[Fill], realised: Sequence[float],
                         portfolio: Portfolio, *, stops: Mapping[str, Stops | None] | None = None,
                         cursor: str | None = None) -> None:
        """One transaction: order rows, fills (with the realised P&L each produced), the positions and cash
        after them (``portfolio`` is the post-fill state), daily P&L, stop changes and the replay cursor."""
        self.write_statements(execution_statements(orders, fills, realised, portfolio, stops=stops, cursor=cursor,
                                                   quote_asset=self.quote_asset))

    def write_statements(self, stmts: Sequence[tuple[str, tuple]]) -> None:
        """Run prepared ``(sql, params)`` statements in ONE transaction (all or nothing)."""
        with self._tx() as db:
            for sql, params in stmts:
                db.execute(sql, params)

    def set_cursor(self, cursor: str) -> None:
        self.write_statements([kv_statement("replay_cursor", cursor)])

    def write_bars(self, bars: Iterable[Bar]) -> int:
        rows = [(b.symbol, b.timeframe, b.open_ns, b.open, b.high, b.low, b.close, b.volume, b.quote_volume,
                 b.trades, b.taker_buy_volume) for b in bars]
        with self._tx() as db:
            db.executemany(_BARS_UPSERT, rows)
        return len(rows)

    def record_model_version(self, version: str, kind: str, path: str, feature_schema_hash: str,
                             created_ns: int, metrics_json: str = "{}", active: bool = False) -> None:
        with self._tx() as db:
            if active:
                db.execute("UPDATE model_versions SET active=0 WHERE kind=?", (kind,))
            db.execute("INSERT INTO model_versions VALUES (?,?,?,?,?,?,?) ON CONFLICT(version) DO UPDATE SET "
                       "kind=excluded.kind, path=excluded.path, feature_schema_hash=excluded.feature_schema_hash, "
                       "created_ns=excluded.created_ns, metrics_json=excluded.metrics_json, active=excluded.active",
                       (version, kind, path, feature_schema_hash, created_ns, metrics_json, int(active)))

    def put_kv(self, key: str, value: str | None) -> None:
        """Set (or delete, with None) one ``kv`` row, in its own transaction."""
        self.write_statements([kv_statement(key, value)])

    # ------------------------------------------------------------------------------------------- reads
    def read_bars(self, symbol: str, timeframe: str, since_ns: int = 0, limit: int | None = None) -> list[Bar]:
        q = ("SELECT symbol, timeframe, open_ns, open, high, low, close, volume, quote_volume, trades, "
             "taker_buy_volume FROM bars WHERE symbol=? AND timeframe=? AND open_ns>=? ORDER BY open_ns")
        args: tuple = (symbol, timeframe, since_ns)
        if limit is not None:
            q += " LIMIT ?"
            args += (limit,)
        try:
            return [Bar(*r) for r in self._rows(q, args)]
        except StoreError:
            raise
        except self._errors as e:
            raise StoreError(self._where, f"reading bars: {e}") from e

    def bar_series(self) -> dict[str, dict[str, int]]:
        """{timeframe: {symbol: bars stored}}: what the daemon recorded (``tradingd train --store``)."""
        try:
            rows = self._rows("SELECT timeframe, symbol, COUNT(*) FROM bars GROUP BY timeframe, symbol "
                              "ORDER BY timeframe, symbol", ())
        except StoreError:
            raise
        except self._errors as e:
            raise StoreError(self._where, f"listing bars: {e}") from e
        out: dict[str, dict[str, int]] = {}
        for tf, sym, n in rows:
            out.setdefault(tf, {})[sym] = int(n)
        return out

    def get_order(self, client_order_id: str) -> Order | None:
        r = self._one(f"SELECT {_ORDER_COLS} FROM orders WHERE client_order_id=?", (client_order_id,))
        return _order(r) if r else None

    def orders(self) -> list[Order]:
        return [_order(r) for r in self._rows(f"SELECT {_ORDER_COLS} FROM orders ORDER BY ts_created, "
                                              "client_order_id")]

    def fills(self, symbol: str | None = None) -> list[Fill]:
        q = ("SELECT fill_id, client_order_id, symbol, side, price, qty, fee, liquidity, ts, fee_qty FROM fills"
             + (" WHERE symbol=?" if symbol else "") + " ORDER BY seq")
        return [Fill(r[0], r[1], r[2], Side(r[3]), *r[4:]) for r in self._rows(q, (symbol,) if symbol else ())]

    def kv_items(self, prefix: str) -> dict[str, str]:
        """``kv`` rows whose key starts with ``prefix`` (e.g. the optimizer's ``exit_plan.`` entries)."""
        return {k: v for k, v in self._rows("SELECT key, value FROM kv") if k.startswith(prefix)}

    def cursor(self) -> str | None:
        r = self._one("SELECT value FROM kv WHERE key='replay_cursor'")
        return r[0] if r else None

    def recover(self, starting_cash: float) -> Recovery:
        """Rebuild the account from the fills (the source of truth) and check the stored positions/balance.

        ``starting_cash`` is used only for a store with no balance row yet; otherwise the stored starting
        amount wins (the account's history does not change when the config does)."""
        try:
            row = self._one("SELECT amount, starting_amount FROM balances WHERE asset=?", (self.quote_asset,))
            start = row[1] if row else starting_cash
            pf = Portfolio(start)
            for f in self.fills():
                pf.apply_fill(f)
            problems: list[str] = []
            if row and not _close(row[0], pf.cash):
                problems.append(f"balance {self.quote_asset}: stored {row[0]!r} != {pf.cash!r} from fills")
            stored = {r[0]: r[1:] for r in self._rows(
                "SELECT symbol, qty, avg_price, realised_pnl, fees_paid FROM positions")}
            for sym in set(stored) | set(pf.positions):
                p = pf.positions.get(sym, Position(sym))
                s = stored.get(sym)
                if s is None:
                    problems.append(f"position {sym}: missing, fills give qty {p.qty!r}")
                    continue
                for name, a, b in (("qty", s[0], p.qty), ("avg_price", s[1], p.avg_price),
                                   ("realised_pnl", s[2], p.realised), ("fees_paid", s[3], p.fees)):
                    if not _close(a, b):
                        problems.append(f"position {sym}: stored {name} {a!r} != {b!r} from fills")
            open_orders = [_order(r) for r in self._rows(
                f"SELECT {_ORDER_COLS} FROM orders WHERE status IN ('NEW', 'PARTIALLY_FILLED') "
                "ORDER BY ts_created, client_order_id")]
            for o in open_orders:
                n, q = self._one("SELECT COUNT(*), COALESCE(SUM(qty), 0) FROM fills WHERE client_order_id=?",
                                 (o.client_order_id,))
                if n != o.n_fills or not _close(q, o.filled_qty):
                    problems.append(f"order {o.client_order_id}: stored {o.n_fills} fills / {o.filled_qty!r} "
                                    f"filled, fills table has {n} / {q!r}")
            stops = [Stops(*r) for r in self._rows("SELECT symbol, stop_loss, take_profit, tag FROM stops")]
            cursor = self.cursor()
        except StoreError:
            raise
        except self._errors as e:
            raise StoreError(self._where, f"recovery failed: {e}") from e
        for msg in problems:
            log.error("store_discrepancy", store=self._where, problem=msg)
        return Recovery(pf, open_orders, stops, cursor, problems)


@dataclass
class SQLiteStore(_SqlStore):
    """The SQLite implementation of :class:`Store`. ``readonly=True`` is for other processes (the retrainer)."""

    path: Path
    quote_asset: str = "USDT"
    readonly: bool = False
    busy_timeout_ms: int = 5000
    _db: sqlite3.Connection = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.path = Path(self.path)
        self._key = str(self.path.resolve())
        with _OPEN_LOCK:
            held = _OPEN_PATHS[self._key] > 0
            if not held:
                self._check_file()
            _OPEN_PATHS[self._key] += 1  # before connecting: a concurrent open must not raw-read it
        self._closed = False
        try:
            self._connect()
        except BaseException:
            self._release()
            raise

    def _release(self) -> None:
        with _OPEN_LOCK:
            _OPEN_PATHS[self._key] -= 1
            if _OPEN_PATHS[self._key] <= 0:
                del _OPEN_PATHS[self._key]

    def _connect(self) -> None:
        try:
            if self.readonly:
                self._db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, isolation_level=None,
                                           timeout=self.busy_timeout_ms / 1000)
            else:
                self._db = sqlite3.connect(self.path, isolation_level=None, timeout=self.busy_timeout_ms / 1000)
                mode = self._db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
                if mode.lower() != "wal":
                    raise StoreError(self.path, f"could not enable WAL journal mode (got {mode!r})")
                self._db.execute("PRAGMA synchronous=FULL")
                self._db.execute("PRAGMA foreign_keys=ON")
                self._migrate()
        except sqlite3.Error as e:
            raise StoreError(self.path, f"{type(e).__name__}: {e}") from e

    # ------------------------------------------------------------------------------------ open/migrate
    def _check_file(self) -> None:
        """Read-only checks before anything writes: SQLite header, integrity, schema version."""
        p = self.path
        if not p.exists():
            if self.readonly:
                raise StoreError(p, "does not exist")
            if not p.parent.exists():
                raise StoreError(p, f"directory {p.parent} does not exist")
            return
        if p.is_dir():
            raise StoreError(p, "is a directory, not a SQLite file")
        size = p.stat().st_size
        if size == 0:
            return  # SQLite's own "new database"
        with open(p, "rb") as f:
            head = f.read(100)
        if len(head) < 100 or not head.startswith(_SQLITE_MAGIC):
            raise StoreError(p, "not a SQLite database (bad header: corrupt or not a store file)")
        page_size = int.from_bytes(head[16:18], "big")
        page_size = 65536 if page_size == 1 else page_size
        n_pages = int.from_bytes(head[28:32], "big")
        if page_size and n_pages and size < page_size * n_pages and not Path(f"{p}-wal").exists():
            raise StoreError(p, f"truncated: header says {n_pages} pages of {page_size} bytes, file has {size}")
        try:
            db = sqlite3.connect(f"file:{p}?mode=ro", uri=True, isolation_level=None)
            try:
                res = db.execute("PRAGMA quick_check").fetchall()
                if res != [("ok",)]:
                    raise StoreError(p, "corrupt (quick_check: " + "; ".join(r[0] for r in res[:5]) + ")")
                has = db.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='schema_version'"
                                 ).fetchone()
                if has:
                    v = db.execute("SELECT MAX(version) FROM schema_version").fetchone()[0] or 0
                    if v > SCHEMA_VERSION:
                        raise StoreError(p, f"schema version {v} is newer than this build supports "
                                         f"({SCHEMA_VERSION}); upgrade tradingd or use another store file")
                else:
                    others = db.execute("SELECT name FROM sqlite_master WHERE type='table'").fetchall()
                    if others:
                        raise StoreError(p, "a SQLite file without a schema_version table (not a tradingd "
                                         f"store; tables: {', '.join(r[0] for r in others[:5])})")
            finally:
                db.close()
        except sqlite3.DatabaseError as e:
            raise StoreError(p, f"corrupt or unreadable ({e})") from e

    def _migrate(self) -> None:
        db = self._db
        db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY, "
                   "description TEXT NOT NULL, applied_ns INTEGER NOT NULL)")
        current = db.execute("SELECT COALESCE(MAX(version), 0) FROM schema_version").fetchone()[0]
        for version, desc, stmts in MIGRATIONS:
            if version <= current:
                continue
            db.execute("BEGIN IMMEDIATE")
            try:
                for s in stmts:
                    db.execute(s)
                db.execute("INSERT INTO schema_version VALUES (?, ?, ?)", (version, desc, time.time_ns()))
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
            log.info("store_migrated", path=str(self.path), version=version, description=desc)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._db.close()
        finally:
            self._release()

    def __enter__(self) -> SQLiteStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------------------------ primitives
    _errors = (sqlite3.Error,)

    @property
    def _where(self) -> str:
        return str(self.path)

    def _rows(self, sql: str, params: tuple = ()) -> list[tuple]:
        return self._db.execute(sql, params).fetchall()

    def _tx(self):
        return _Tx(self._db, self.path)


def kv_statement(key: str, value: str | None) -> tuple[str, tuple]:
    if value is None:
        return ("DELETE FROM kv WHERE key=?", (key,))
    return ("INSERT INTO kv VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value=excluded.value", (key, value))


def execution_statements(orders: Sequence[Order], fills: Sequence[Fill], realised: Sequence[float],
                         portfolio: Portfolio, *, stops: Mapping[str, Stops | None] | None = None,
                         cursor: str | None = None, quote_asset: str = "USDT") -> list[tuple[str, tuple]]:
    """The statements of one execution's transaction, built from values only (no connection): the caller's
    thread snapshots the post-fill state, and the store's writer thread (daemon.storewriter) may commit it later."""
    if len(realised) != len(fills):
        raise ValueError("one realised value per fill")
    out: list[tuple[str, tuple]] = []
    ts_now = max([o.ts_updated for o in orders] + [f.ts for f in fills] + [0])
    for o in orders:
        out.append((
            "INSERT INTO orders VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?) ON CONFLICT(client_order_id) DO "
            "UPDATE SET status=excluded.status, filled_qty=excluded.filled_qty, avg_fill_price="
            "excluded.avg_fill_price, n_fills=excluded.n_fills, active=excluded.active, "
            "ts_updated=excluded.ts_updated",
            (o.client_order_id, o.symbol, int(o.side), o.order_type.value, o.qty, o.limit_price,
             o.status.value, o.filled_qty, o.avg_fill_price, o.n_fills, int(o.reduce_only), o.reason,
             o.timeframe, int(o.active), o.ts_created, o.active_at, o.ts_updated)))
    for f, r in zip(fills, realised):
        out.append(("INSERT INTO fills (fill_id, client_order_id, symbol, side, price, qty, fee, liquidity, "
                    "ts, realised_pnl, fee_qty) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                    (f.fill_id, f.client_order_id, f.symbol, int(f.side), f.price, f.qty, f.fee, f.liquidity,
                     f.ts, r, f.fee_qty)))
        out.append(("INSERT INTO daily_pnl (day, realised_pnl, fees, volume_quote, n_fills) VALUES "
                    "(?,?,?,?,1) ON CONFLICT(day) DO UPDATE SET realised_pnl=daily_pnl.realised_pnl+excluded."
                    "realised_pnl, fees=daily_pnl.fees+excluded.fees, volume_quote=daily_pnl.volume_quote+excluded."
                    "volume_quote, n_fills=daily_pnl.n_fills+1", (_day(f.ts), r, f.fee, f.price * f.qty)))
    for sym in sorted({f.symbol for f in fills}):
        p = portfolio.position(sym)
        out.append(("INSERT INTO positions VALUES (?,?,?,?,?,?) ON CONFLICT(symbol) DO UPDATE SET "
                    "qty=excluded.qty, avg_price=excluded.avg_price, realised_pnl=excluded.realised_pnl, "
                    "fees_paid=excluded.fees_paid, ts_updated=excluded.ts_updated",
                    (sym, p.qty, p.avg_price, p.realised, p.fees, ts_now)))
    if fills:
        out.append(("INSERT INTO balances VALUES (?,?,?,?) ON CONFLICT(asset) DO UPDATE SET amount=excluded.amount, "
                    "ts_updated=excluded.ts_updated", (quote_asset, portfolio.cash, portfolio.starting_cash, ts_now)))
    for sym, st in (stops or {}).items():
        if st is None:
            out.append(("DELETE FROM stops WHERE symbol=?", (sym,)))
        else:
            out.append(("INSERT INTO stops VALUES (?,?,?,?) ON CONFLICT(symbol) DO UPDATE SET "
                        "stop_loss=excluded.stop_loss, take_profit=excluded.take_profit, tag=excluded.tag",
                        (st.symbol, st.stop_loss, st.take_profit, st.tag)))
    if cursor is not None:
        out.append(kv_statement("replay_cursor", cursor))
    return out


class _Tx:
    """``BEGIN IMMEDIATE`` ... ``COMMIT`` (or ``ROLLBACK`` on any error); sqlite errors become StoreError."""

    def __init__(self, db: sqlite3.Connection, path: Path) -> None:
        self.db, self.path = db, path

    def __enter__(self) -> sqlite3.Connection:
        try:
            self.db.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as e:
            raise StoreError(self.path, f"cannot begin a write transaction: {e}") from e
        return self.db

    def __exit__(self, et, e, tb) -> bool:
        if et is None:
            try:
                self.db.execute("COMMIT")
                return False
            except sqlite3.Error as ce:
                self.db.execute("ROLLBACK")
                raise StoreError(self.path, f"commit failed: {ce}") from ce
        self.db.execute("ROLLBACK")
        if isinstance(e, sqlite3.Error):
            raise StoreError(self.path, f"write failed, rolled back: {e}") from e
        return False


_BARS_UPSERT = ("INSERT INTO bars VALUES (?,?,?,?,?,?,?,?,?,?,?) ON CONFLICT(symbol, timeframe, open_ns) DO UPDATE "
               "SET open=excluded.open, high=excluded.high, low=excluded.low, close=excluded.close, "
               "volume=excluded.volume, quote_volume=excluded.quote_volume, trades=excluded.trades, "
               "taker_buy_volume=excluded.taker_buy_volume")

_ORDER_COLS = ("client_order_id, symbol, side, order_type, qty, limit_price, status, ts_created, active_at, "
               "ts_updated, filled_qty, avg_fill_price, n_fills, reduce_only, reason, timeframe, active")


def _order(r: tuple) -> Order:
    return Order(r[0], r[1], Side(r[2]), OrderType(r[3]), r[4], r[5], OrderStatus(r[6]), r[7], r[8], r[9],
                 r[10], r[11], r[12], bool(r[13]), r[14], r[15], bool(r[16]))


def _close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)

