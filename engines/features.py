"""Features: ONE definition, two evaluators — vectorised batch (training, backtest) and incremental (live).

Per bar ``t`` of one timeframe (windows in bars of that timeframe; ``lc = log(close)``):

==================  ===========================================================================================
``ret_h``           ``lc[t] - lc[t-h]`` for h in 1, 3, 6, 12 (log returns)
``rv_n``            ``sqrt(sum(r1[t-n+1..t]**2) / n)``, r1 the 1-bar log return, n in 12, 48 (realised vol)
``atr_14``          Wilder ATR(14) / close: TR[0] = high-low, TR = max(h-l, |h-c[t-1]|, |l-c[t-1]|); ATR[13] =
                    mean(TR[0..13]); ATR[t] = (ATR[t-1]*13 + TR[t]) / 14
``vol_z_20``        z-score of ``x = log1p(volume)`` against its 20-bar window (mean and population std of the
                    window including t); 0 when the std is below 1e-9 (flat volume)
``vwap_dist_20``    ``close / (sum(typical*vol) / sum(vol)) - 1`` over 20 bars, typical = (h+l+c)/3; 0 when the
                    window has no volume
``rsi_14``          Wilder RSI(14) scaled to [0, 1]: ``avg_gain / (avg_gain + avg_loss)``, seeded with the mean of
                    the first 14 changes; 0.5 when both are 0
``range_pos_20``    ``(close - min(low_20)) / (max(high_20) - min(low_20))``; 0.5 when the range is 0
``bar_range``       ``log(high / low)``
``bar_body``        ``log(close / open)``
==================  ===========================================================================================

Book variant (``BOOK_FEATURE_SCHEMA``) appends ``spread_bps`` and ``book_imbalance`` (see :func:`book_features`),
taken from the live order book at bar close. Historical klines have no book, so the default schema — the one
training uses — leaves them out rather than filling zeros the model would learn from; a model trained with the
book variant carries its different schema hash and is refused by a daemon that cannot supply the book.

Exactness: both evaluators perform the same floating-point operations in the same order (window sums added
oldest first, never ``np.sum``'s pairwise order or running add/subtract sums; logs via numpy's ufunc in both), so
they agree bit for bit (tests/engines/test_features.py compares with ``==`` over 90 days and four timeframes).
Each value depends only on its window, except ATR and RSI, whose Wilder recursion remembers all history: a live
instance warmed on a different start agrees with batch to ~1e-12 after a few hundred bars, not bit for bit.

The first ``FEATURE_SCHEMA.warmup`` (48) rows are NaN in batch, and ``IncrementalFeatures.update`` returns None for
them. Input must be contiguous bars (one per period; gaps filled as BarBuilder's ``emit_empty`` does).
"""
from __future__ import annotations

import hashlib
import json
import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import structlog

from market.events import Bar, timeframe_ns
from engines.data import Klines

__all__ = ["FeatureSchema", "FEATURE_SCHEMA", "BOOK_FEATURE_SCHEMA", "batch_features", "IncrementalFeatures",
           "atr", "book_features", "schema_for", "SchemaMismatch"]

log = structlog.get_logger(__name__)

RET_HORIZONS = (1, 3, 6, 12)
RV_WINDOWS = (12, 48)
ATR_N = 14
VOL_Z_N = 20
VWAP_N = 20
RSI_N = 14
RANGE_N = 20
BOOK_LEVELS = 5
VOL_Z_MIN_STD = 1e-9
WARMUP = max(max(RET_HORIZONS), max(RV_WINDOWS), ATR_N - 1, VOL_Z_N - 1, VWAP_N - 1, RSI_N, RANGE_N - 1)


class SchemaMismatch(ValueError):
    """A model's feature schema differs from the one the daemon computes."""


@dataclass(frozen=True)
class FeatureSchema:
    """Names and order of the feature columns; ``hash`` (sha256 of names + version + params) travels with models."""

    names: tuple[str, ...]
    version: int
    params: tuple[tuple[str, object], ...]
    warmup: int
    hash: str = field(init=False)

    def __post_init__(self) -> None:
        blob = json.dumps({"names": list(self.names), "version": self.version, "params": [list(p) for p in
                                                                                          self.params]},
                          sort_keys=True, separators=(",", ":"))
        object.__setattr__(self, "hash", hashlib.sha256(blob.encode()).hexdigest())

    @property
    def n_features(self) -> int:
        return len(self.names)

    def to_dict(self) -> dict:
        return {"names": list(self.names), "version": self.version, "params": [list(p) for p in self.params],
                "warmup": self.warmup, "hash": self.hash}

    def require(self, other_hash: str, what: str = "model") -> None:
        """Refuse a model built for another schema (names the two hashes)."""
        if other_hash != self.hash:
            raise SchemaMismatch(f"{what} was built for feature schema {other_hash[:12]}…, this daemon computes "
                                 f"{self.hash[:12]}… (v{self.version}, {self.n_features} features)")


_BAR_NAMES = (*(f"ret_{h}" for h in RET_HORIZONS), *(f"rv_{n}" for n in RV_WINDOWS), f"atr_{ATR_N}",
              f"vol_z_{VOL_Z_N}", f"vwap_dist_{VWAP_N}", f"rsi_{RSI_N}", f"range_pos_{RANGE_N}", "bar_range",
              "bar_body")
_PARAMS = (("ret_horizons", list(RET_HORIZONS)), ("rv_windows", list(RV_WINDOWS)), ("atr_n", ATR_N),
           ("vol_z_n", VOL_Z_N), ("vol_z_min_std", VOL_Z_MIN_STD), ("vwap_n", VWAP_N), ("rsi_n", RSI_N),
           ("range_n", RANGE_N))
FEATURE_SCHEMA = FeatureSchema(_BAR_NAMES, 1, _PARAMS, WARMUP)
BOOK_FEATURE_SCHEMA = FeatureSchema((*_BAR_NAMES, "spread_bps", "book_imbalance"), 1,
                                    (*_PARAMS, ("book_levels", BOOK_LEVELS)), WARMUP)
_NB = len(_BAR_NAMES)


def schema_for(book: bool) -> FeatureSchema:
    return BOOK_FEATURE_SCHEMA if book else FEATURE_SCHEMA


def book_features(bids: Sequence[tuple[float, float]], asks: Sequence[tuple[float, float]],
                  levels: int = BOOK_LEVELS) -> tuple[float, float]:
    """(spread in bps of mid, imbalance in [-1, 1] of the top ``levels`` sizes: (bid - ask) / (bid + ask)).

    ``bids`` descending and ``asks`` ascending, as ``OrderBook.depth(n)`` returns them. An empty or crossed side
    is an error (the caller must not compute features from a book that is not synced)."""
    if not bids or not asks:
        raise ValueError("book_features: a side of the book is empty")
    bid, ask = bids[0][0], asks[0][0]
    if not (0 < bid < ask):
        raise ValueError(f"book_features: crossed or invalid book (bid {bid}, ask {ask})")
    mid = (bid + ask) / 2.0
    bq = 0.0
    for _p, q in bids[:levels]:
        bq += q
    aq = 0.0
    for _p, q in asks[:levels]:
        aq += q
    tot = bq + aq
    return (ask - bid) / mid * 1e4, (bq - aq) / tot if tot > 0 else 0.0


# ------------------------------------------------------------------------------------------------ batch
def _wsum(x: np.ndarray, w: int) -> np.ndarray:
    """Window sums added oldest first (the incremental evaluator's order); NaN for t < w-1."""
    n = len(x)
    out = np.full(n, np.nan)
    m = n - w + 1
    if m <= 0:
        return out
    s = x[0:m].copy()
    for j in range(1, w):
        s += x[j:j + m]
    out[w - 1:] = s
    return out


def _wilder(x: list[float], n: int, first: int) -> np.ndarray:
    """Wilder average of ``x`` from index ``first``: seed = mean of x[first..first+n-1], then (a*(n-1) + x)/n."""
    out = np.full(len(x), np.nan)
    if len(x) < first + n:
        return out
    s = 0.0
    for v in x[first:first + n]:
        s += v
    a = s / n
    res = [a]
    k = n - 1.0
    nf = float(n)
    for v in x[first + n:]:
        a = (a * k + v) / nf
        res.append(a)
    out[first + n - 1:] = res
    return out


def _true_range(h: np.ndarray, l: np.ndarray, c: np.ndarray) -> np.ndarray:
    tr = h - l
    if len(c) > 1:
        pc = c[:-1]
        tr[1:] = np.maximum(np.maximum(tr[1:], np.abs(h[1:] - pc)), np.abs(l[1:] - pc))
    return tr


def atr(k: Klines, n: int = ATR_N) -> np.ndarray:
    """Wilder ATR(n) in price units per bar (NaN for the first n-1 bars) — the optimizer's stop/TP unit."""
    return _wilder(_true_range(k.high, k.low, k.close).tolist(), n, 0)


def batch_features(k: Klines, timeframe: str | None = None, *,
                   book: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """(n, n_features) float64 for every bar of ``k`` (NaN rows during warm-up).

    ``book=(spread_bps, imbalance)`` arrays (n,) select the book variant (BOOK_FEATURE_SCHEMA)."""
    if timeframe is not None and timeframe != k.timeframe:
        raise ValueError(f"batch_features: klines are {k.timeframe}, asked for {timeframe}")
    if not k.is_contiguous():
        raise ValueError("batch_features: klines have gaps (load them with load_klines_csv, which fills them)")
    n = len(k)
    nf = _NB + (2 if book is not None else 0)
    out = np.full((n, nf), np.nan)
    if n <= WARMUP:
        return out
    o, h, l, c, v = k.open, k.high, k.low, k.close, k.volume
    lc = np.log(c)
    col = 0
    for hz in RET_HORIZONS:
        out[hz:, col] = lc[hz:] - lc[:-hz]
        col += 1
    r1 = np.full(n, np.nan)
    r1[1:] = lc[1:] - lc[:-1]
    r1sq = r1 * r1
    for w in RV_WINDOWS:
        out[:, col] = np.sqrt(_wsum(r1sq, w) / float(w))
        col += 1
    out[:, col] = _wilder(_true_range(h, l, c).tolist(), ATR_N, 0) / c
    col += 1
    # volume z-score
    x = np.log1p(v)
    w = VOL_Z_N
    m = n - w + 1
    mu = _wsum(x, w)[w - 1:] / float(w)
    d = x[0:m] - mu
    s2 = d * d
    for j in range(1, w):
        d = x[j:j + m] - mu
        s2 += d * d
    sd = np.sqrt(s2 / float(w))
    ok = sd > VOL_Z_MIN_STD
    z = np.zeros(m)
    z[ok] = (x[w - 1:][ok] - mu[ok]) / sd[ok]
    out[w - 1:, col] = z
    col += 1
    # VWAP distance
    tp = (h + l + c) / 3.0
    spv = _wsum(tp * v, VWAP_N)[VWAP_N - 1:]
    sv = _wsum(v, VWAP_N)[VWAP_N - 1:]
    ok = sv > 0
    dist = np.zeros(len(sv))
    dist[ok] = c[VWAP_N - 1:][ok] / (spv[ok] / sv[ok]) - 1.0
    out[VWAP_N - 1:, col] = dist
    col += 1
    # RSI (Wilder), changes from index 1
    ch = np.zeros(n)
    ch[1:] = c[1:] - c[:-1]
    gain = np.where(ch > 0, ch, 0.0)
    loss = np.where(ch < 0, -ch, 0.0)
    ag = _wilder(gain.tolist(), RSI_N, 1)
    al = _wilder(loss.tolist(), RSI_N, 1)
    tot = ag + al
    ok = tot > 0
    rsi = np.where(np.isnan(tot), np.nan, 0.5)
    rsi[ok] = ag[ok] / tot[ok]
    out[:, col] = rsi
    col += 1
    # range position
    lo = np.lib.stride_tricks.sliding_window_view(l, RANGE_N).min(axis=1)
    hi = np.lib.stride_tricks.sliding_window_view(h, RANGE_N).max(axis=1)
    rng = hi - lo
    ok = rng > 0
    pos = np.full(len(rng), 0.5)
    pos[ok] = (c[RANGE_N - 1:][ok] - lo[ok]) / rng[ok]
    out[RANGE_N - 1:, col] = pos
    col += 1
    out[:, col] = np.log(h / l)
    out[:, col + 1] = np.log(c / o)
    col += 2
    if book is not None:
        sp, imb = (np.asarray(a, dtype=np.float64) for a in book)
        if sp.shape != (n,) or imb.shape != (n,):
            raise ValueError(f"batch_features: book arrays must have shape ({n},)")
        out[:, col] = sp
        out[:, col + 1] = imb
    out[:WARMUP] = np.nan
    return out


# ------------------------------------------------------------------------------------------------ incremental
def _seqsum(buf: deque) -> float:
    """Oldest-first sum (never ``sum()``: Python 3.12+ compensates, which would differ from batch)."""
    it = iter(buf)
    s = next(it)
    for x in it:
        s += x
    return s


@dataclass
class IncrementalStats:
    bars: int = 0
    filled: int = 0  # flat bars inserted for gaps
    resets: int = 0  # gaps too long to fill: warm-up restarted
    rejected: int = 0  # bars with non-finite or non-positive prices / negative volume


class IncrementalFeatures:
    """Live evaluator: ``update(bar)`` per closed bar in time order, O(1) per bar (fixed-size ring buffers)."""

    def __init__(self, timeframe: str, *, book: bool = False, max_fill: int = 10080) -> None:
        self.timeframe = timeframe
        self.tf_ns = timeframe_ns(timeframe)
        self.schema = schema_for(book)
        self.book = book
        self.max_fill = max_fill
        self.stats = IncrementalStats()
        self.symbol: str | None = None
        self._reset()

    def _reset(self) -> None:
        self._n = 0
        self._last_ns: int | None = None
        self._lc: deque[float] = deque(maxlen=max(RET_HORIZONS) + 1)
        self._r1sq: dict[int, deque[float]] = {w: deque(maxlen=w) for w in RV_WINDOWS}
        self._prev_c = math.nan
        self._atr_sum = 0.0
        self._atr = math.nan
        self._x: deque[float] = deque(maxlen=VOL_Z_N)
        self._pv: deque[float] = deque(maxlen=VWAP_N)
        self._v: deque[float] = deque(maxlen=VWAP_N)
        self._hi: deque[float] = deque(maxlen=RANGE_N)
        self._lo: deque[float] = deque(maxlen=RANGE_N)
        self._g_sum = self._l_sum = 0.0
        self._ag = self._al = math.nan

    @property
    def ready(self) -> bool:
        return self._n > WARMUP

    @property
    def atr(self) -> float | None:
        """Wilder ATR(14) in price units after the latest bar (None until defined) — the optimizer's unit."""
        return None if math.isnan(self._atr) else self._atr

    def update(self, bar: Bar, *, spread_bps: float | None = None, imbalance: float | None = None
               ) -> np.ndarray | None:
        """Fold one closed bar in; the feature row for it, or None during warm-up (or for a rejected bar)."""
        if bar.timeframe != self.timeframe:
            raise ValueError(f"IncrementalFeatures({self.timeframe}) got a {bar.timeframe} bar")
        if self.symbol is None:
            self.symbol = bar.symbol
        elif bar.symbol != self.symbol:
            raise ValueError(f"IncrementalFeatures for {self.symbol} got a {bar.symbol} bar")
        if self.book and (spread_bps is None or imbalance is None):
            raise ValueError("book variant: spread_bps and imbalance are required")
        o, h, l, c, v = bar.open, bar.high, bar.low, bar.close, bar.volume
        if not (0.0 < l <= h < math.inf and l <= o <= h and l <= c <= h and 0.0 <= v < math.inf):
            self.stats.rejected += 1
            log.warning("features.bar_rejected", symbol=bar.symbol, timeframe=bar.timeframe, open_ns=bar.open_ns)
            return None
        if self._last_ns is not None:
            step = bar.open_ns - self._last_ns
            if step <= 0:
                raise ValueError(f"IncrementalFeatures: bar at {bar.open_ns} not after {self._last_ns}")
            missing = step // self.tf_ns - 1
            if missing > self.max_fill:
                self.stats.resets += 1
                log.warning("features.gap_reset", symbol=bar.symbol, timeframe=self.timeframe, bars=missing)
                self._reset()
            elif missing > 0:
                pc = self._prev_c
                for _ in range(missing):
                    self._fold(pc, pc, pc, pc, 0.0)
                self.stats.filled += missing
        self._last_ns = bar.open_ns
        self.stats.bars += 1
        row = self._fold(o, h, l, c, v)
        if row is None:
            return None
        if self.book:
            row.append(float(spread_bps))
            row.append(float(imbalance))
        return np.array(row, dtype=np.float64)

    def _fold(self, o: float, h: float, l: float, c: float, v: float) -> list[float] | None:
        n = self._n
        lc = float(np.log(c))
        lcs = self._lc
        r1sq = None
        if lcs:
            r1 = lc - lcs[-1]
            r1sq = r1 * r1
        lcs.append(lc)
        for w, buf in self._r1sq.items():
            if r1sq is not None:
                buf.append(r1sq)
        # ATR (Wilder, TR[0] = h - l)
        pc = self._prev_c
        tr = h - l
        if n:
            a, b = abs(h - pc), abs(l - pc)
            if a > tr:
                tr = a
            if b > tr:
                tr = b
        if n < ATR_N:
            self._atr_sum += tr
            if n == ATR_N - 1:
                self._atr = self._atr_sum / ATR_N
        else:
            self._atr = (self._atr * (ATR_N - 1.0) + tr) / float(ATR_N)
        # RSI (Wilder over changes from bar 1)
        if n:
            ch = c - pc
            g = ch if ch > 0 else 0.0
            ls = -ch if ch < 0 else 0.0
            if n <= RSI_N:
                self._g_sum += g
                self._l_sum += ls
                if n == RSI_N:
                    self._ag = self._g_sum / RSI_N
                    self._al = self._l_sum / RSI_N
            else:
                self._ag = (self._ag * (RSI_N - 1.0) + g) / float(RSI_N)
                self._al = (self._al * (RSI_N - 1.0) + ls) / float(RSI_N)
        self._prev_c = c
        self._x.append(float(np.log1p(v)))
        self._pv.append((h + l + c) / 3.0 * v)
        self._v.append(v)
        self._hi.append(h)
        self._lo.append(l)
        self._n = n + 1
        if n < WARMUP:
            return None

        row = [lc - lcs[-1 - hz] for hz in RET_HORIZONS]
        for w, buf in self._r1sq.items():
            row.append(math.sqrt(_seqsum(buf) / float(w)))
        row.append(self._atr / c)
        xs = self._x
        mu = _seqsum(xs) / float(VOL_Z_N)
        it = iter(xs)
        d = next(it) - mu
        s2 = d * d
        for x in it:
            d = x - mu
            s2 += d * d
        sd = math.sqrt(s2 / float(VOL_Z_N))
        row.append((xs[-1] - mu) / sd if sd > VOL_Z_MIN_STD else 0.0)
        sv = _seqsum(self._v)
        row.append(c / (_seqsum(self._pv) / sv) - 1.0 if sv > 0 else 0.0)
        tot = self._ag + self._al
        row.append(self._ag / tot if tot > 0 else 0.5)
        lo, hi = min(self._lo), max(self._hi)
        rng = hi - lo
        row.append((c - lo) / rng if rng > 0 else 0.5)
        row.append(float(np.log(h / l)))
        row.append(float(np.log(c / o)))
        return row
