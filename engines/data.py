"""Klines: numpy OHLCV columns for training and backtests, the CSV loader, and resampling with BarBuilder's rules.

Bad-input rule of :func:`load_klines_csv` (issue #6) — refuse what cannot be repaired without guessing, repair
(and count) what has exactly one right answer:

* error naming the file and line: malformed row or header, NaN/inf, price <= 0, volume < 0, high < low or
  open/close outside [low, high], unsorted timestamps, a timestamp not aligned to the timeframe, a duplicated
  timestamp whose values differ;
* dropped and counted (``Klines.duplicates``): exact duplicate rows;
* allowed: zero volume;
* filled and counted (``Klines.filled``): missing bars, as flat zero-volume bars at the previous close — the same
  rule as ``BarBuilder`` with ``emit_empty`` — so a loaded series is a contiguous grid, one row per period.

:func:`resample` aggregates with BarBuilder's rules and floating-point order (open = first, high = max,
low = min, close = last, volume = 0.0 + v1 + v2 + ... in time order), so resampling the 1m bars a BarBuilder
emitted gives its higher-timeframe bars number for number. A leading partial period is kept (BarBuilder emits
it too); a trailing incomplete period is dropped by default (BarBuilder has not closed it yet).
"""
from __future__ import annotations

import gzip
import io
import re
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import structlog

from market.events import TIMEFRAME_SECONDS, Bar, timeframe_ns

__all__ = ["Klines", "KlinesError", "load_klines_csv", "resample", "bars_to_klines", "klines_to_bars", "HEADER"]

log = structlog.get_logger(__name__)

HEADER = ("open_time_ms", "open", "high", "low", "close", "volume")
_COLUMNS = ("open_ns", "open", "high", "low", "close", "volume")
_MS = 1_000_000


class KlinesError(ValueError):
    """Klines that cannot be used as they are; the message names the file and line when there is one."""


@dataclass(frozen=True, eq=False)
class Klines:
    """OHLCV columns of one symbol and timeframe: ``open_ns`` int64 (bar start, ns), the rest float64.

    Arrays are read-only. ``filled``/``duplicates`` count what the loader repaired (see module docstring).
    """

    open_ns: np.ndarray
    open: np.ndarray
    high: np.ndarray
    low: np.ndarray
    close: np.ndarray
    volume: np.ndarray
    symbol: str = ""
    timeframe: str = "1m"
    filled: int = 0
    duplicates: int = 0

    def __post_init__(self) -> None:
        n = len(self.open_ns)
        for name in _COLUMNS:
            a = np.asarray(getattr(self, name), dtype=np.int64 if name == "open_ns" else np.float64)
            if a.ndim != 1 or len(a) != n:
                raise KlinesError(f"Klines.{name}: expected a 1-d array of {n} values, got shape {a.shape}")
            if a.flags.writeable:
                a = a.copy() if a is getattr(self, name) else a
                a.flags.writeable = False
            object.__setattr__(self, name, a)
        timeframe_ns(self.timeframe)  # unknown timeframe -> ValueError

    def __len__(self) -> int:
        return len(self.open_ns)

    def __getitem__(self, sl: slice) -> Klines:
        if not isinstance(sl, slice):
            raise TypeError("Klines can only be sliced (k[a:b]); index the columns for single values")
        return Klines(**{c: getattr(self, c)[sl] for c in _COLUMNS}, symbol=self.symbol, timeframe=self.timeframe)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Klines):
            return NotImplemented
        return (self.symbol, self.timeframe) == (other.symbol, other.timeframe) and all(
            np.array_equal(getattr(self, c), getattr(other, c)) for c in _COLUMNS)

    __hash__ = None  # type: ignore[assignment]

    @property
    def tf_ns(self) -> int:
        return timeframe_ns(self.timeframe)

    def is_contiguous(self) -> bool:
        """One row per period, no gap (what features and resample need)."""
        return len(self) < 2 or bool(np.all(np.diff(self.open_ns) == self.tf_ns))


# -------------------------------------------------------------------------------------------------- loading
# the quote assets a file name's pair may end with (Binance spot's main ones)
QUOTE_ASSETS = ("FDUSD", "USDT", "USDC", "BUSD", "TUSD", "BTC", "ETH", "BNB", "EUR", "TRY")
_Q = "|".join(QUOTE_ASSETS)
# BTC_USDT-1m_..., BTC-USDT..., btcusdt-5m.csv.gz, ETHBTC.csv: a base, an optional _ or -, a known quote, then the
# end of the stem or a separator; an optional -<timeframe> follows
_NAME_RE = re.compile(rf"^(?P<base>[A-Za-z0-9]+?)[_-]?(?P<quote>{_Q})(?:$|[_.-])(?:(?P<tf>\d+[mhd])(?:$|[_.-]))?",
                      re.IGNORECASE)


def symbol_from_name(name: str) -> str:
    """The pair a file name names (``BTC_USDT-1m_2025...csv.gz`` -> ``BTCUSDT``, ``ethbtc.csv`` -> ``ETHBTC``),
    else "" (``eth.csv``, ``data.csv``: a base alone is not a pair; callers ask for the symbol instead of
    guessing one)."""
    m = _NAME_RE.match(Path(name).name)
    return (m["base"] + m["quote"]).upper() if m else ""


def _guess_from_name(path: Path) -> tuple[str, str | None]:
    m = _NAME_RE.match(path.name)
    if not m:
        return "", None
    tf = m["tf"] if m["tf"] in TIMEFRAME_SECONDS else None
    return (m["base"] + m["quote"]).upper(), tf


def _read_text(path: Path) -> str:
    with path.open("rb") as fh:
        magic = fh.read(2)
    opener = gzip.open if magic == b"\x1f\x8b" else open
    try:
        with opener(path, "rb") as fh:
            return fh.read().decode("utf-8")
    except (OSError, EOFError, UnicodeDecodeError) as e:
        raise KlinesError(f"{path}: cannot read ({type(e).__name__}: {e})") from None


def _parse_slow(path: Path, lines: list[str]) -> np.ndarray:
    """Row-by-row parse, only to name the first bad line after the fast parse failed."""
    out = np.empty((len(lines), 6))
    for i, line in enumerate(lines):
        parts = line.split(",")
        if len(parts) != 6:
            raise KlinesError(f"{path}:{i + 2}: expected 6 comma-separated values, got {len(parts)}: {line[:80]!r}")
        try:
            out[i, 0] = int(parts[0])
            out[i, 1:] = [float(x) for x in parts[1:]]
        except ValueError:
            raise KlinesError(f"{path}:{i + 2}: not a number in {line[:80]!r}") from None
    return out


def load_klines_csv(path: str | Path, *, symbol: str | None = None, timeframe: str | None = None) -> Klines:
    """Load ``open_time_ms,open,high,low,close,volume`` (gzip or plain), validated and repaired as documented.

    Symbol and timeframe default to what the file name says (``BTC_USDT-1m_...``); failing that the timeframe is
    the smallest step between rows.
    """
    path = Path(path)
    name_sym, name_tf = _guess_from_name(path)
    symbol = name_sym if symbol is None else symbol
    text = _read_text(path)
    lines = text.splitlines()
    if not lines:
        raise KlinesError(f"{path}:1: empty file, expected the header {','.join(HEADER)}")
    head = tuple(x.strip() for x in lines[0].split(","))
    if head != HEADER:
        raise KlinesError(f"{path}:1: expected the header {','.join(HEADER)}, got {lines[0][:120]!r}")
    body = lines[1:]
    while body and not body[-1].strip():
        body.pop()  # trailing blank lines
    if not body:
        raise KlinesError(f"{path}: no rows after the header")
    try:
        raw = np.loadtxt(io.StringIO("\n".join(body)), delimiter=",", dtype=np.float64, ndmin=2)
        if raw.shape != (len(body), 6):
            raise ValueError("shape")
    except ValueError:
        raw = _parse_slow(path, body)
    line_no = np.arange(2, len(body) + 2)

    ts_f = raw[:, 0]
    if not np.all(np.isfinite(ts_f)) or np.any(ts_f != np.floor(ts_f)) or np.any(np.abs(ts_f) >= 2.0**53):
        i = int(np.argmax(~np.isfinite(ts_f) | (ts_f != np.floor(ts_f)) | (np.abs(ts_f) >= 2.0**53)))
        raise KlinesError(f"{path}:{line_no[i]}: open_time_ms must be an integer, got {body[i][:40]!r}")
    ts = ts_f.astype(np.int64)
    o, h, l, c, v = (raw[:, j] for j in range(1, 6))

    bad_checks = (
        (~np.isfinite(raw[:, 1:]).all(axis=1), "NaN or infinite value"),
        ((o <= 0) | (h <= 0) | (l <= 0) | (c <= 0), "price <= 0"),
        (v < 0, "negative volume"),
        (h < l, "high < low"),
        ((o > h) | (o < l) | (c > h) | (c < l), "open/close outside [low, high]"),
    )
    for mask, what in bad_checks:
        if mask.any():
            i = int(np.argmax(mask))
            raise KlinesError(f"{path}:{line_no[i]}: {what}: {body[i][:120]!r}")

    d = np.diff(ts)
    if (d < 0).any():
        i = int(np.argmax(d < 0)) + 1
        raise KlinesError(f"{path}:{line_no[i]}: timestamps not sorted ({ts[i]} after {ts[i - 1]} on line "
                          f"{line_no[i - 1]})")
    dup = np.concatenate([[False], d == 0])
    if dup.any():
        same = np.concatenate([[False], (raw[1:] == raw[:-1]).all(axis=1)])
        differ = dup & ~same
        if differ.any():
            i = int(np.argmax(differ))
            raise KlinesError(f"{path}:{line_no[i]}: duplicated open_time_ms {ts[i]} with values different from "
                              f"line {line_no[i - 1]}")
    keep = ~dup
    n_dup = int(dup.sum())
    ts, o, h, l, c, v, line_no = (a[keep] for a in (ts, o, h, l, c, v, line_no))

    if timeframe is None:
        timeframe = name_tf
    if timeframe is None:
        steps = np.diff(ts)
        if not len(steps):
            raise KlinesError(f"{path}: one row and no timeframe in the name: pass timeframe=")
        step_s = int(steps.min()) // 1000
        matches = [tf for tf, s in TIMEFRAME_SECONDS.items() if s == step_s]
        if not matches:
            raise KlinesError(f"{path}: step of {step_s} s between rows is not a known timeframe")
        timeframe = matches[0]
    step_ms = timeframe_ns(timeframe) // _MS
    off = ts % step_ms != 0
    if off.any():
        i = int(np.argmax(off))
        raise KlinesError(f"{path}:{line_no[i]}: open_time_ms {ts[i]} is not aligned to {timeframe}")

    slot = (ts - ts[0]) // step_ms
    n = int(slot[-1]) + 1
    n_fill = n - len(ts)
    if n_fill:
        present = np.zeros(n, dtype=bool)
        present[slot] = True
        src = np.maximum.accumulate(np.where(present, np.cumsum(present) - 1, -1))  # last real row at or before
        prev_close = c[src]
        cols = []
        for a in (o, h, l, c):
            full = prev_close.copy()
            full[slot] = a
            cols.append(full)
        vol = np.zeros(n)
        vol[slot] = v
        o, h, l, c, v = *cols, vol
        ts = ts[0] + np.arange(n, dtype=np.int64) * step_ms
    if n_fill or n_dup:
        log.warning("klines.repaired", path=str(path), filled=n_fill, duplicates=n_dup)
    return Klines(ts * _MS, o, h, l, c, v, symbol=symbol, timeframe=timeframe, filled=n_fill, duplicates=n_dup)


# -------------------------------------------------------------------------------------------------- resampling
def resample(k: Klines, timeframe: str, *, drop_incomplete_last: bool = True) -> Klines:
    """Aggregate contiguous ``k`` into ``timeframe`` (a whole multiple of ``k.timeframe``) with BarBuilder's rules."""
    src = k.tf_ns
    dst = timeframe_ns(timeframe)
    if dst % src:
        raise KlinesError(f"resample: {timeframe} is not a whole multiple of {k.timeframe}")
    if not k.is_contiguous():
        raise KlinesError("resample: input has gaps; load it with load_klines_csv (fills them) first")
    if dst == src or len(k) == 0:
        return Klines(k.open_ns, k.open, k.high, k.low, k.close, k.volume, symbol=k.symbol, timeframe=timeframe)
    f = dst // src
    start0 = int(k.open_ns[0]) - int(k.open_ns[0]) % dst
    lead = (int(k.open_ns[0]) - start0) // src
    n = len(k) + lead
    periods = -(-n // f)
    trail = periods * f - n

    def pad(a: np.ndarray, value: float) -> np.ndarray:
        out = np.full(periods * f, value)
        out[lead:lead + len(a)] = a
        return out.reshape(periods, f)

    op = pad(k.open, np.nan)[:, 0].copy()
    op[0] = k.open[0]
    cl = pad(k.close, np.nan)[:, -1].copy()
    cl[-1] = k.close[-1]
    hi = pad(k.high, -np.inf).max(axis=1)
    lo = pad(k.low, np.inf).min(axis=1)
    vm = pad(k.volume, 0.0)
    vol = vm[:, 0].copy()
    for j in range(1, f):  # sequential, in time order: the same additions as BarBuilder (np.sum is pairwise)
        vol += vm[:, j]
    starts = start0 + np.arange(periods, dtype=np.int64) * dst
    if drop_incomplete_last and trail:
        starts, op, hi, lo, cl, vol = (a[:-1] for a in (starts, op, hi, lo, cl, vol))
    return Klines(starts, op, hi, lo, cl, vol, symbol=k.symbol, timeframe=timeframe)


# -------------------------------------------------------------------------------------------------- bars
def bars_to_klines(bars: Sequence[Bar]) -> Klines:
    """Columns of bars of one symbol and timeframe, strictly increasing in time."""
    if not bars:
        raise KlinesError("bars_to_klines: no bars")
    sym, tf = bars[0].symbol, bars[0].timeframe
    for b in bars:
        if b.symbol != sym or b.timeframe != tf:
            raise KlinesError(f"bars_to_klines: mixed bars ({sym} {tf} and {b.symbol} {b.timeframe})")
    ts = np.fromiter((b.open_ns for b in bars), dtype=np.int64, count=len(bars))
    if len(ts) > 1 and not (np.diff(ts) > 0).all():
        raise KlinesError("bars_to_klines: bars are not strictly increasing in time")
    cols = [np.fromiter((getattr(b, a) for b in bars), dtype=np.float64, count=len(bars))
            for a in ("open", "high", "low", "close", "volume")]
    return Klines(ts, *cols, symbol=sym, timeframe=tf)


def klines_to_bars(k: Klines) -> list[Bar]:
    """Bars from klines (quote volume, trade count and taker volume are unknown in klines: 0)."""
    sym, tf = k.symbol, k.timeframe
    return [Bar(sym, tf, t, o, h, l, c, v) for t, o, h, l, c, v in
            zip(k.open_ns.tolist(), k.open.tolist(), k.high.tolist(), k.low.tolist(), k.close.tolist(),
                k.volume.tolist())]


def _check_fields() -> None:  # the column names are the contract; keep them in one place
    names = [f.name for f in fields(Klines)][:6]
    assert tuple(names) == _COLUMNS, names


_check_fields()
