"""Open the configured store: the SQLite file (embedded default) or PostgreSQL (``store.url``)."""
from __future__ import annotations

from pathlib import Path

from daemon.store import SQLiteStore, Store, StoreError

__all__ = ["open_store"]


def open_store(url: str, path: str | Path, *, quote_asset: str = "USDT", readonly: bool = False,
               busy_timeout_ms: int = 5000, password: str = "", account: str = "tradingd",
               connect_timeout_s: float = 5.0, exclusive: bool = False) -> Store:
    """``url`` empty: the SQLite file ``path``; ``postgresql://user@host:port/db``: daemon.pgstore (the password
    comes from the caller, i.e. the environment or a systemd credential, never the URL or the config file)."""
    if not url:
        return SQLiteStore(Path(path), quote_asset=quote_asset, readonly=readonly, busy_timeout_ms=busy_timeout_ms)
    from daemon.pgstore import PostgresStore, is_postgres_url  # psycopg: only with store.url set
    if not is_postgres_url(url):
        raise StoreError(url, "store.url must start with postgresql:// (or be empty for the SQLite file)")
    return PostgresStore(url, password=password, account=account, quote_asset=quote_asset, readonly=readonly,
                         connect_timeout_s=connect_timeout_s, exclusive=exclusive)


def store_spec(cfg) -> str:
    """How another process (the retrainer child, ``tradingd train --store``) names the configured store: the
    SQLite path, or ``postgresql://USER@HOST:PORT/DB#ACCOUNT`` (no password: the child reads it as the daemon
    does, from the systemd credential or ``$TRADINGD_DB_PASSWORD``)."""
    if cfg.store.url:
        return f"{cfg.store.url}#{cfg.store.account}"
    return str(cfg.path(cfg.store.path))


def open_store_spec(spec: str, *, readonly: bool = True, env=None) -> Store:
    """Open a :func:`store_spec` string (read-only by default: the retrainer reads while the daemon writes)."""
    import os

    from daemon import secrets
    if spec.startswith(("postgresql://", "postgres://")):
        url, _, account = spec.partition("#")
        password = secrets.read_secret(os.environ if env is None else env, secrets.DB_PASSWORD,
                                       "TRADINGD_DB_PASSWORD")
        return open_store(url, "", password=password, account=account or "tradingd", readonly=readonly)
    return SQLiteStore(Path(spec), readonly=readonly)
