"""Open the configured store: the SQLite file (embedded default) or PostgreSQL (``store.url``)."""
from __future__ import annotations

from pathlib import Path

from daemon.store import SQLiteStore, Store, StoreError

__all__ = ["open_store"]


def open_store(url: str, path: str | Path, *, quote_asset: str = "USDT", readonly: bool = False,
               busy_timeout_ms: int = 5000, password: str = "", account: str = "tradingd",
               connect_timeout_s: float = 5.0) -> Store:
    """``url`` empty: the SQLite file ``path``; ``postgresql://user@host:port/db``: daemon.pgstore (the password
    comes from the caller, i.e. the environment or a systemd credential, never the URL or the config file)."""
    if not url:
        return SQLiteStore(Path(path), quote_asset=quote_asset, readonly=readonly, busy_timeout_ms=busy_timeout_ms)
    from daemon.pgstore import PostgresStore, is_postgres_url  # psycopg: only with store.url set
    if not is_postgres_url(url):
        raise StoreError(url, "store.url must start with postgresql:// (or be empty for the SQLite file)")
    return PostgresStore(url, password=password, account=account, quote_asset=quote_asset, readonly=readonly,
                         connect_timeout_s=connect_timeout_s)
