"""``tradingd train``: where the 1m klines come from (a CSV, the daemon's store, a venue's REST endpoint) and the
command line; the training itself is :mod:`engines.train` (pure, no venue or store)."""
from __future__ import annotations

import sys
from pathlib import Path

from engines.data import Klines
from engines.train import KINDS, TrainSpec, train_and_publish  # noqa: F401


def load_training_data(path: str | None, *, store: str | None = None, symbol: str = "",
                       rest_url: str | None = None, days: float = 30) -> Klines:
    """1m klines from a CSV (like ../shared/data/klines), the daemon's store, or a venue's REST endpoint."""
    if path:
        from engines.data import load_klines_csv
        return load_klines_csv(path, symbol=symbol or None)
    if store:
        from daemon.stores import open_store_spec
        from engines.data import bars_to_klines
        st = open_store_spec(store)  # a SQLite path or postgresql://...#account (daemon.stores.store_spec)
        try:
            bars = [b for b in st.read_bars(symbol, "1m")]
        finally:
            close = getattr(st, "close", None)
            if close:
                close()
        if not bars:
            raise ValueError(f"no 1m bars for {symbol} in store {store}")
        return bars_to_klines(bars)
    if rest_url:
        import asyncio

        from daemon.binance.rest import fetch_klines_rest
        return asyncio.run(fetch_klines_rest(rest_url, symbol, days=days))
    raise ValueError("give --data CSV, --store PATH or --venue-url URL")


def load_symbol_bars(store_path: str | None, symbol: str, rest_url: str | None, history_days: float,
                     min_bars: int):
    """A symbol's 1m klines to retrain on: the store's when it holds at least ``min_bars``, else the venue's
    history (also when the store is unreadable, e.g. the PostgreSQL server away); RuntimeError when neither."""
    from daemon.store import StoreError
    k = None
    if store_path and (store_path.startswith("postgresql://") or Path(store_path).exists()):
        try:
            k = load_training_data(None, store=store_path, symbol=symbol)
        except ValueError:
            k = None
        except StoreError as e:
            print(f"store unreadable, using venue history for {symbol}: {e}", file=sys.stderr)
    if (k is None or len(k) < min_bars) and rest_url:
        k = load_training_data(None, symbol=symbol, rest_url=rest_url, days=history_days)
    if k is None:
        raise RuntimeError(f"no training data for {symbol}: store empty and no venue URL")
    return k


# ----------------------------------------------------------------------------------------------------- CLI
def add_arguments(p) -> None:
    p.add_argument("--data", help="1m klines CSV (open_time_ms,open,high,low,close,volume; .gz ok)")
    p.add_argument("--store", help="read 1m bars from the daemon's store instead: its SQLite file, or "
                   "postgresql://USER@HOST:PORT/DB#ACCOUNT (password: $TRADINGD_DB_PASSWORD)")
    p.add_argument("--venue-url", help="read 1m klines history from this REST base URL instead")
    p.add_argument("--days", type=float, default=30, help="history to fetch with --venue-url (days)")
    p.add_argument("--last-days", type=float, default=0, help="train on only the most recent N days of --data")
    p.add_argument("--symbol", default="BTCUSDT")
    p.add_argument("--registry", required=True, help="model registry directory")
    p.add_argument("--timeframes", default="1m,5m,15m,1h")
    p.add_argument("--xgb-rounds", type=int, default=TrainSpec.xgb_rounds)
    p.add_argument("--lstm-epochs", type=int, default=TrainSpec.lstm_epochs)
    p.add_argument("--lstm-hidden", type=int, default=TrainSpec.lstm_hidden)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lstm-int8", default=TrainSpec.lstm_int8, choices=("dynamic", "static", "none"),
                   help="INT8 copy of the LSTM for engines.lstm_backend = onnxruntime-cpu-int8 (static: calibrated "
                        "on the training windows)")
    p.add_argument("--no-current", action="store_true", help="publish without moving the current pointers")


def main(args) -> int:
    import orjson
    from tqdm import tqdm

    from engines.registry import ModelRegistry
    try:
        k = load_training_data(args.data, store=args.store, symbol=args.symbol, rest_url=args.venue_url,
                               days=args.days)
    except (ValueError, OSError, RuntimeError) as e:
        print(f"tradingd train: {e}", file=sys.stderr)
        return 2
    if args.last_days:
        k = k[max(0, len(k) - int(args.last_days * 1440)):]
    tfs = [t.strip() for t in args.timeframes.split(",") if t.strip()]
    reg = ModelRegistry(args.registry)
    summary = {}
    bar = tqdm(tfs, desc="train", unit="tf", file=sys.stderr)
    for tf in bar:
        spec = TrainSpec(tf, xgb_rounds=args.xgb_rounds, lstm_epochs=args.lstm_epochs,
                         lstm_hidden=args.lstm_hidden, threads=args.threads, seed=args.seed,
                         lstm_int8=args.lstm_int8)
        try:
            outcome, refs = train_and_publish(k, spec, reg, make_current=not args.no_current,
                                              progress=lambda m: bar.write(m, file=sys.stderr))
        except ValueError as e:
            print(f"tradingd train: {e}", file=sys.stderr)
            return 2
        summary[tf] = {"versions": {kind: r.version for kind, r in refs.items()}, "metrics": outcome.metrics,
                       "seconds": outcome.seconds, "rows": outcome.data_window["rows"]}
    print(orjson.dumps(summary, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY).decode())
    return 0
