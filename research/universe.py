"""A folder of ``SYMBOL-TF.csv.gz`` files -> one aligned panel (time x symbol) per timeframe.

Rules for what a folder may hold (each either handled as written here or refused with an error naming the file):

* **Base timeframe**: the finest timeframe among the files is the base; coarser timeframes are built from it
  (``engines.data.resample``, BarBuilder's rules). Files at other (coarser) timeframes are **skipped** and listed
  in ``Universe.skipped`` with the reason (a *timeframe mix*: only the base files are read, so a coarser file can
  never disagree with the bars built from the base).
* **Timeframes**: without an explicit request, every configured timeframe (``daemon.config`` default
  ``bars.timeframes``) at or above the base; a requested timeframe finer than the base, or not a whole multiple
  of it, is refused (:class:`UniverseError`).
* **Different lengths, a listing mid-period, a delisted symbol**: the panel's time grid is the union of every
  symbol's span; a symbol is *absent* (NaN) before its first and after its last bar. Absent rows have no
  features, no label and cannot be held; a held symbol that disappears is sold at its last close (portfolio.py).
* **Gaps inside a symbol's span**: filled by ``load_klines_csv`` as flat zero-volume bars at the previous close
  (counted per symbol in ``Universe.filled``). A symbol whose gaps exceed ``max_fill_frac`` of its span is
  refused naming the file (mostly invented data is not data).
* **Empty file / header only / malformed row**: refused with ``load_klines_csv``'s error naming the file (and
  line). A symbol with fewer than ``min_rows`` base bars is **skipped** (listed) — it cannot fill a feature
  warm-up plus a label.
* Files whose names do not match ``SYMBOL-TF.csv[.gz]`` (``_summary.csv``, READMEs) are ignored and listed.
  Two files for the same symbol and timeframe are refused.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import structlog

from market.events import TIMEFRAME_SECONDS, timeframe_ns
from engines.data import Klines, KlinesError, load_klines_csv, resample

log = structlog.get_logger(__name__)

__all__ = ["UniverseError", "Panel", "Universe", "scan_folder", "load_universe", "default_timeframes",
           "resolve_timeframes", "universe_from_klines", "fill_gaps"]

_FILE_RE = re.compile(r"^(?P<sym>[A-Za-z0-9]+)-(?P<tf>\d+[smhdwM])\.csv(?:\.gz)?$")
CONFIGURED_TIMEFRAMES = ("1m", "5m", "15m", "1h")


class UniverseError(ValueError):
    """A folder that cannot be used as a universe; the message names the file when there is one."""


@dataclass(frozen=True, eq=False)
class Panel:
    """OHLCV of N symbols on one time grid: ``open_ns`` (T,) int64; price/volume arrays (T, N), NaN = absent."""

    timeframe: str
    symbols: tuple[str, ...]
    open_ns: np.ndarray
    open: np.ndarray
    high: np.ndarray
    low: np.ndarray
    close: np.ndarray
    volume: np.ndarray

    @property
    def shape(self) -> tuple[int, int]:
        return self.close.shape

    @property
    def present(self) -> np.ndarray:
        return np.isfinite(self.close)

    def klines(self, j: int) -> tuple[int, Klines]:
        """(offset, contiguous klines) of symbol j over its own span."""
        idx = np.flatnonzero(np.isfinite(self.close[:, j]))
        a, b = int(idx[0]), int(idx[-1]) + 1
        return a, Klines(self.open_ns[a:b], self.open[a:b, j], self.high[a:b, j], self.low[a:b, j],
                         self.close[a:b, j], self.volume[a:b, j], symbol=self.symbols[j], timeframe=self.timeframe)

    def slice(self, a: int, b: int) -> Panel:
        return Panel(self.timeframe, self.symbols, self.open_ns[a:b], self.open[a:b], self.high[a:b], self.low[a:b],
                     self.close[a:b], self.volume[a:b])


@dataclass(frozen=True)
class Universe:
    base: str
    panels: dict[str, Panel]
    files: dict[str, str]                       # symbol -> base file read
    skipped: dict[str, str] = field(default_factory=dict)   # file name -> reason
    filled: dict[str, int] = field(default_factory=dict)    # symbol -> gap bars filled

    def info(self) -> dict:
        p = next(iter(self.panels.values()))
        spans = {s: [int(np.flatnonzero(p.present[:, j])[0]), int(np.flatnonzero(p.present[:, j])[-1])]
                 for j, s in enumerate(p.symbols)}
        return {"base": self.base, "timeframes": list(self.panels), "symbols": list(p.symbols),
                "n_symbols": len(p.symbols), "bars": {tf: int(q.shape[0]) for tf, q in self.panels.items()},
                "skipped": dict(self.skipped), "filled": {k: v for k, v in self.filled.items() if v},
                "late_listed": [s for s, (a, _) in spans.items() if a > 0],
                "ended_early": [s for s, (_, b) in spans.items() if b < p.shape[0] - 1]}


def scan_folder(folder: str | Path) -> tuple[dict[str, dict[str, Path]], dict[str, str]]:
    """{timeframe: {symbol: path}} of the kline files in ``folder`` and {name: reason} of what was ignored."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UniverseError(f"{folder}: not a directory")
    found: dict[str, dict[str, Path]] = {}
    ignored: dict[str, str] = {}
    for path in sorted(folder.iterdir()):
        m = _FILE_RE.match(path.name)
        if not m or not path.is_file():
            ignored[path.name] = "not a SYMBOL-TF.csv[.gz] file"
            continue
        tf = m["tf"]
        if tf not in TIMEFRAME_SECONDS:
            raise UniverseError(f"{path}: unknown timeframe {tf!r} in the file name")
        sym = m["sym"].upper()
        if sym in found.setdefault(tf, {}):
            raise UniverseError(f"{path}: a second file for {sym} {tf} (also {found[tf][sym].name})")
        found[tf][sym] = path
    if not found:
        raise UniverseError(f"{folder}: no SYMBOL-TF.csv[.gz] files")
    return found, ignored


def default_timeframes(base: str, configured: tuple[str, ...] = CONFIGURED_TIMEFRAMES) -> tuple[str, ...]:
    b = timeframe_ns(base)
    out = tuple(tf for tf in configured if timeframe_ns(tf) >= b and timeframe_ns(tf) % b == 0)
    return out or (base,)


def resolve_timeframes(base: str, requested: tuple[str, ...] | None,
                       configured: tuple[str, ...] = CONFIGURED_TIMEFRAMES) -> tuple[str, ...]:
    if not requested:
        return default_timeframes(base, configured)
    b = timeframe_ns(base)
    for tf in requested:
        t = timeframe_ns(tf)
        if t < b:
            raise UniverseError(f"timeframe {tf} is finer than the data's base timeframe {base}: bars cannot be "
                                f"made finer than the files (use {base} or coarser)")
        if t % b:
            raise UniverseError(f"timeframe {tf} is not a whole multiple of the base timeframe {base}")
    return tuple(sorted(set(requested), key=timeframe_ns))


def _align(ks: list[Klines], tf: str) -> Panel:
    step = timeframe_ns(tf)
    t0 = min(int(k.open_ns[0]) for k in ks)
    t1 = max(int(k.open_ns[-1]) for k in ks)
    T = (t1 - t0) // step + 1
    grid = t0 + np.arange(T, dtype=np.int64) * step
    cols = {c: np.full((T, len(ks)), np.nan) for c in ("open", "high", "low", "close", "volume")}
    for j, k in enumerate(ks):
        off = (int(k.open_ns[0]) - t0) // step
        for c, a in cols.items():
            a[off:off + len(k), j] = getattr(k, c)
    return Panel(tf, tuple(k.symbol for k in ks), grid, **cols)


def load_universe(folder: str | Path, timeframes: tuple[str, ...] | None = None, *,
                  symbols: tuple[str, ...] | None = None, min_rows: int = 200, max_fill_frac: float = 0.2,
                  last_days: float = 0.0) -> Universe:
    """Read ``folder`` with the rules in the module docstring. ``symbols`` restricts the set (tests,
    subsamples); ``last_days`` keeps only the most recent days of the base grid."""
    found, ignored = scan_folder(folder)
    base = min(found, key=timeframe_ns)
    tfs = resolve_timeframes(base, timeframes)
    skipped = dict(ignored)
    for tf, files in found.items():
        if tf != base:
            for s, p in files.items():
                skipped[p.name] = f"timeframe {tf} is coarser than the base {base}: built from the base files instead"
    files = found[base]
    if symbols:
        missing = [s for s in symbols if s not in files]
        if missing:
            raise UniverseError(f"{folder}: no {base} file for {', '.join(missing)}")
        files = {s: files[s] for s in symbols}
    loaded: list[tuple[Klines, str]] = []
    for sym, path in files.items():
        try:
            loaded.append((load_klines_csv(path, symbol=sym, timeframe=base), str(path)))
        except KlinesError as e:
            raise UniverseError(str(e) if str(path) in str(e) else f"{path}: {e}") from None
    return universe_from_klines(loaded, base, tfs, where=str(folder), skipped=skipped, min_rows=min_rows,
                                max_fill_frac=max_fill_frac, last_days=last_days)


def fill_gaps(k: Klines) -> Klines:
    """``load_klines_csv``'s gap rule for klines from elsewhere (the daemon's store): a missing bar becomes a
    flat zero-volume bar at the previous close, counted in ``filled``."""
    step = timeframe_ns(k.timeframe)
    if len(k) == 0 or (np.diff(k.open_ns) == step).all():
        return k
    off = (k.open_ns - k.open_ns[0]) % step != 0
    if off.any():
        raise KlinesError(f"bar at {int(k.open_ns[np.argmax(off)])} ns is not on the {k.timeframe} grid")
    slot = (k.open_ns - k.open_ns[0]) // step
    n = int(slot[-1]) + 1
    present = np.zeros(n, dtype=bool)
    present[slot] = True
    src = np.maximum.accumulate(np.where(present, np.cumsum(present) - 1, -1))
    prev = k.close[src]
    cols = []
    for c in (k.open, k.high, k.low, k.close):
        full = prev.copy()
        full[slot] = c
        cols.append(full)
    vol = np.zeros(n)
    vol[slot] = k.volume
    return Klines(k.open_ns[0] + np.arange(n, dtype=np.int64) * step, *cols, vol, symbol=k.symbol,
                  timeframe=k.timeframe, filled=k.filled + n - len(k), duplicates=k.duplicates)


def universe_from_klines(loaded: list[tuple[Klines, str]], base: str, tfs: tuple[str, ...], *, where: str,
                         skipped: dict[str, str] | None = None, min_rows: int = 200, max_fill_frac: float = 0.2,
                         last_days: float = 0.0) -> Universe:
    """The folder rules (module docstring) applied to base-timeframe klines already read, each with the name
    its messages use (a file, or ``store#SYMBOL``): gaps filled and counted, too short skipped, mostly gaps
    refused, one grid, coarser timeframes resampled. ``where`` names the source in universe-wide errors."""
    skipped = dict(skipped or {})
    ks: list[Klines] = []
    filled: dict[str, int] = {}
    files: dict[str, str] = {}
    for k, name in loaded:
        try:
            k = fill_gaps(k)
        except KlinesError as e:
            raise UniverseError(f"{name}: {e}") from None
        sym = k.symbol
        files[sym] = name
        if len(k) < min_rows:
            skipped[Path(name).name] = f"{len(k)} bars < min_rows {min_rows}"
            log.warning("universe.skipped", file=name, rows=len(k))
            continue
        if k.filled > max_fill_frac * len(k):
            raise UniverseError(f"{name}: {k.filled} of {len(k)} bars are gap fills (> {max_fill_frac:.0%}); "
                                f"refusing mostly-invented data")
        filled[sym] = k.filled
        ks.append(k)
    if len(ks) < 2:
        raise UniverseError(f"{where}: a universe needs at least 2 usable symbols at {base}, got {len(ks)}")
    panel = _align(ks, base)
    if last_days > 0:
        n = int(last_days * 86_400e9 // timeframe_ns(base))
        panel = panel.slice(max(0, panel.shape[0] - n), panel.shape[0])
        keep = [j for j in range(panel.shape[1]) if panel.present[:, j].sum() >= min_rows]
        ks = [ks[j] for j in keep]
        ks = [_cut(k, int(panel.open_ns[0])) for k in ks]
        panel = _align(ks, base)
    panels = {base: panel}
    for tf in tfs:
        if tf == base:
            continue
        rs = [resample(k, tf) for k in ks]
        rs = [r for r in rs if len(r) >= 2]
        panels[tf] = _align(rs, tf)
    return Universe(base, {tf: panels[tf] for tf in tfs}, files, skipped, filled)


def _cut(k: Klines, t0: int) -> Klines:
    i = int(np.searchsorted(k.open_ns, t0))
    return k[i:]
