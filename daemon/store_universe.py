"""``tradingd train --store PATH`` (no ``--symbol``): every symbol the daemon recorded in its SQLite store becomes a
universe and goes through the same pooled training as ``--data DIR`` (research/cli_train.py).

The store is read here (research never imports daemon): the finest timeframe stored is the base, its bars per
symbol become klines, and ``research.universe.universe_from_klines`` applies the folder rules (gaps filled as
flat zero-volume bars and counted, more than 20 % fills refused naming ``PATH#SYMBOL``, fewer than 200 bars
skipped and listed, different lengths on one grid, coarser timeframes resampled from the base; stored bars of
coarser timeframes are skipped and listed, as coarser files in a folder are)."""
from __future__ import annotations

import sys

from market.events import timeframe_ns

__all__ = ["store_universe", "add_arguments", "main"]


def store_universe(path: str, timeframes: tuple[str, ...] | None = None, *, symbols: tuple[str, ...] | None = None,
                   last_days: float = 0.0):
    """The store's bars as a ``research.universe.Universe`` (rules in the module docstring)."""
    from daemon.store import SQLiteStore
    from engines.data import bars_to_klines
    from research.universe import UniverseError, resolve_timeframes, universe_from_klines
    st = SQLiteStore(path, readonly=True)
    try:
        series = st.bar_series()
        if not series:
            raise UniverseError(f"{path}: the store holds no bars")
        base = min(series, key=timeframe_ns)
        tfs = resolve_timeframes(base, timeframes)
        skipped = {f"{path}#{sym}/{tf}": f"timeframe {tf} is coarser than the base {base}: built from the base bars "
                   "instead" for tf, syms in series.items() if tf != base for sym in syms}
        have = series[base]
        if symbols:
            missing = [s for s in symbols if s not in have]
            if missing:
                raise UniverseError(f"{path}: no {base} bars for {', '.join(missing)}")
        loaded = [(bars_to_klines(st.read_bars(sym, base)), f"{path}#{sym}") for sym in (symbols or sorted(have))]
    finally:
        st.close()
    return universe_from_klines(loaded, base, tfs, where=path, skipped=skipped, last_days=last_days)


class _StoreForm:
    """The parser as ``research.cli_train.add_arguments`` sees it: the same options, but ``--data`` (the folder
    form's input) is optional, since here the store is the input."""

    def __init__(self, parser) -> None:
        self.parser = parser

    def add_argument(self, *names, **kw):
        if "--data" in names:
            kw |= {"required": False, "default": None, "help": "not used with --store"}
        return self.parser.add_argument(*names, **kw)


def add_arguments(p) -> None:
    from research.cli_train import add_arguments as train_arguments
    train_arguments(_StoreForm(p))
    p.add_argument("--store", required=True, help="the daemon's SQLite store: every symbol recorded in it")


def main(args) -> int:
    from daemon.store import StoreError
    from research.cli_train import main as train_main
    from research.universe import UniverseError
    try:
        uni = store_universe(args.store, tuple(x for x in args.timeframes.split(",") if x) or None,
                             symbols=tuple(x for x in args.symbols.split(",") if x) or None,
                             last_days=args.last_days)
    except (UniverseError, StoreError, ValueError) as e:
        print(f"tradingd train: {e}", file=sys.stderr)
        return 2
    return train_main(args, uni=uni)
