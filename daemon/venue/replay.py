"""Replay a recording (``<recv_ns> <raw JSON>`` lines, gzip) through the local venue.

The venue keeps its OWN true book: the recording's REST snapshot plus every recorded diff that follows it, applied
as each diff is streamed, so a REST depth snapshot taken at any moment is consistent with the stream
(``lastUpdateId`` = the last diff the venue has sent; diffs older than the recorded snapshot are streamed as
recorded and skipped by the venue's book, exactly as a client would skip them). Klines are built from the trades
replayed so far, after an optional warm-up history (``history``: 1m klines moved in time to end where the recording
starts and scaled to its first trade price, so features and models are warm at the first replayed bar; the
history is a warm-up, not the market of that day), or ``simulated_history``: the market simulator's
``history_days`` of 1m bars per symbol, ending where the recording starts at its first trade price, so a client
that loads klines before it subscribes gets bars from the first moment (a synthetic warm-up, said so in the log).
Timing follows the recorded receive times divided by ``speed`` (0 = as fast as the clients read); the replay clock
pauses while no client is subscribed, so a reconnecting client misses nothing but its own gap.
"""
from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import orjson
import structlog

from daemon.config import SimulatorConfig
from daemon.recording import RecordingReader
from daemon.venue.base import OutFrame, Publisher
from daemon.venue.simulator import MINUTE_MS, MarketSimulator, exchange_info, klines_rows

if TYPE_CHECKING:
    from engines.data import Klines

log = structlog.get_logger(__name__)


class _TrueBook:
    """The venue's book of one symbol, in the venue's own decimal strings (replies are byte-faithful)."""

    def __init__(self, snap: dict) -> None:
        self.last_update_id = int(snap["lastUpdateId"])
        self.bids = {p: q for p, q in snap["bids"]}
        self.asks = {p: q for p, q in snap["asks"]}

    def apply(self, d: dict) -> bool:
        if d["u"] <= self.last_update_id:
            return False
        for side, key in ((self.bids, "b"), (self.asks, "a")):
            for p, q in d[key]:
                if float(q) == 0.0:
                    side.pop(p, None)
                else:
                    side[p] = q
        self.last_update_id = d["u"]
        return True

    def snapshot(self, limit: int) -> dict:
        bids = sorted(self.bids.items(), key=lambda kv: -float(kv[0]))[:limit]
        asks = sorted(self.asks.items(), key=lambda kv: float(kv[0]))[:limit]
        return {"lastUpdateId": self.last_update_id, "bids": [list(x) for x in bids],
                "asks": [list(x) for x in asks]}


class ReplaySource:
    """A recording behind the venue's source interface (``symbols``, ``run``, ``depth``, ``klines``, ...)."""

    def __init__(self, path: str | Path | list[Path], speed: float = 1.0,
                 sim_cfg: SimulatorConfig = SimulatorConfig(), history: Klines | None = None,
                 simulated_history: bool = False) -> None:
        reader = RecordingReader(path)
        if not reader.paths or not all(p.exists() for p in reader.paths):
            raise FileNotFoundError(f"recording not found or empty: {path}")
        self.speed = float(speed)
        self.sim_cfg = sim_cfg
        self.frames: list[OutFrame] = []
        self.books: dict[str, _TrueBook] = {}
        self.skipped_lines = 0  # lines that are not JSON objects of a known shape (plus reader.stats)
        trades: list[tuple[int, float, float, bool, str]] = []
        pending_snaps: list[dict] = []
        for recv_ns, raw in reader:
            try:
                obj = orjson.loads(raw)
            except orjson.JSONDecodeError:
                self.skipped_lines += 1
                continue
            if not isinstance(obj, dict):
                self.skipped_lines += 1
                continue
            if "lastUpdateId" in obj:  # a recorded REST snapshot: seeds the venue's book, not streamed
                sym = str(obj.get("symbol", "")).upper()
                if sym and sym not in self.books:
                    self.books[sym] = _TrueBook(obj)
                elif not sym:
                    pending_snaps.append(obj)
                continue
            stream, data = obj.get("stream"), obj.get("data")
            if not isinstance(stream, str) or not isinstance(data, dict):
                self.skipped_lines += 1
                continue
            sym = str(data.get("s", "")).upper()
            ev = data.get("e")
            # Only the raw bytes are kept: a parsed diff (lists of [price, qty] strings) costs ~10x its JSON, and
            # ~60 MB of them per recording pinned RSS and fragmented the allocator in replay-loop soaks. The venue
            # book re-parses a diff when it applies it (run()); diffs are ~7% of frames.
            if ev == "depthUpdate":
                kind, ids = "depth", (int(data["U"]), int(data["u"]))
            elif ev == "trade":
                kind, ids = "trade", None
                trades.append((int(data["T"]), float(data["p"]), float(data["q"]), bool(data["m"]), sym))
            elif "u" in data and "b" in data and "e" not in data:
                kind, ids = "bookTicker", None
            else:
                kind, ids = "other", None
            self.frames.append(OutFrame(stream, kind, ids, raw, None, recv_ns, sym))
            if pending_snaps and sym and sym not in self.books:  # snapshot without a symbol: the recorded one
                self.books[sym] = _TrueBook(pending_snaps.pop(0))
        if pending_snaps and not self.books:
            syms = {f.symbol for f in self.frames if f.symbol}
            if len(syms) == 1:
                self.books[syms.pop()] = _TrueBook(pending_snaps[0])
        self.symbols = sorted({f.symbol for f in self.frames if f.symbol})
        self._seed = {sym: b.snapshot(len(b.bids) + len(b.asks)) for sym, b in self.books.items()}  # for rewind()
        tr = trades  # recorded (trade id) order
        self._tr_ms = np.array([t[0] for t in tr], dtype=np.int64)
        self._tr_px = np.array([t[1] for t in tr])
        self._tr_qty = np.array([t[2] for t in tr])
        self._tr_buy = np.array([not t[3] for t in tr])
        self._tr_sym = np.array([t[4] for t in tr])
        self.reader_stats = reader.stats
        self.position = 0  # frames replayed
        self.trades_replayed = 0
        self.now_ms = self.frames[0].recv_ns // 1_000_000 if self.frames else int(time.time() * 1000)
        self.done = False
        self.history: dict[str, dict[str, np.ndarray]] = {}
        if history is not None and len(history) and len(self._tr_ms):
            self.history = self._warmup(history)
        elif simulated_history:
            self.history = self._simulated_warmup()

    def _warmup(self, k: Klines) -> dict[str, dict[str, np.ndarray]]:
        """``k`` as 1m bars of the symbol it names (or the recording's first), moved to end at the recording's
        first trade minute and scaled to that trade's price (features are returns-based)."""
        sym = k.symbol.upper() if k.symbol and k.symbol.upper() in self.symbols else self.symbols[0]
        sel = np.flatnonzero(self._tr_sym == sym)
        if not len(sel):
            return {}
        t0, p0 = int(self._tr_ms[sel[0]]), float(self._tr_px[sel[0]])
        first_m = t0 // MINUTE_MS * MINUTE_MS
        open_ms = k.open_ns // 1_000_000
        shift = first_m - (int(open_ms[-1]) + MINUTE_MS)
        scale = p0 / float(k.close[-1])
        vol = np.asarray(k.volume, dtype=np.float64)
        px = {c: np.asarray(getattr(k, c), dtype=np.float64) * scale for c in ("open", "high", "low", "close")}
        vwap = (px["open"] + px["high"] + px["low"] + px["close"]) / 4.0
        log.info("replay_history", symbol=sym, bars=len(k), shift_days=round(shift / 86_400_000, 2),
                 scale=round(scale, 6))
        return {sym: {"open_ms": open_ms + shift, **px, "volume": vol, "quote_volume": vol * vwap,
                      "trades": np.zeros(len(k), dtype=np.int64), "taker_buy_volume": vol / 2,
                      "taker_buy_quote_volume": vol * vwap / 2}}

    def _simulated_warmup(self) -> dict[str, dict[str, np.ndarray]]:
        """Per symbol, the simulator's 1m history ending at the minute of the recording's first trade, its last
        close that trade's price."""
        out = {}
        for sym in self.symbols:
            sel = np.flatnonzero(self._tr_sym == sym)
            if not len(sel):
                continue
            t0, p0 = int(self._tr_ms[sel[0]]), float(self._tr_px[sel[0]])
            out[sym] = MarketSimulator(self.sim_cfg, sym, t0 * 1_000_000, start_price=p0).history()
            log.info("replay_simulated_history", symbol=sym, bars=len(out[sym]["open_ms"]), end_ms=t0)
        return out

    def rewind(self) -> None:
        """Back to the first frame with the recorded snapshots, for another pass (e.g. a soak loop) without
        parsing the recording again; a rewound source replays exactly what a fresh one would."""
        self.books = {sym: _TrueBook(snap) for sym, snap in self._seed.items()}
        self.position = 0
        self.trades_replayed = 0
        self.now_ms = self.frames[0].recv_ns // 1_000_000 if self.frames else int(time.time() * 1000)
        self.done = False

    # ---------------------------------------------------------------- REST views
    def depth(self, symbol: str, limit: int) -> dict | None:
        book = self.books.get(symbol)
        return None if book is None else book.snapshot(limit)

    def exchange_info(self, server_ms: int) -> dict:
        return exchange_info(self.symbols, self.sim_cfg, server_ms)

    def server_time_ms(self) -> int:
        return self.now_ms

    def klines(self, symbol: str, interval: str, start_ms: int | None, end_ms: int | None, limit: int,
               ) -> list[list]:
        """Bars (by trade time ``T``) from the trades replayed so far, after the warm-up history if any."""
        n = self.trades_replayed
        sel = self._tr_sym[:n] == symbol
        t, px, q, buy = self._tr_ms[:n][sel], self._tr_px[:n][sel], self._tr_qty[:n][sel], self._tr_buy[:n][sel]
        hist = self.history.get(symbol)
        if len(t) == 0:
            return klines_rows(hist, interval, start_ms, end_ms, limit) if hist is not None else []
        m = t // MINUTE_MS * MINUTE_MS
        first = int(m[0])
        last = max(int(m[-1]), self.now_ms // MINUTE_MS * MINUTE_MS)  # the open bar of the replay clock's minute
        nb = (last - first) // MINUTE_MS + 1
        idx = (m - first) // MINUTE_MS
        vol = np.bincount(idx, q, nb)
        qv = np.bincount(idx, q * px, nb)
        cnt = np.bincount(idx, None, nb).astype(np.int64)
        tbv = np.bincount(idx, q * buy, nb)
        tbqv = np.bincount(idx, q * px * buy, nb)
        high = np.full(nb, -np.inf)
        low = np.full(nb, np.inf)
        np.maximum.at(high, idx, px)
        np.minimum.at(low, idx, px)
        close = np.full(nb, np.nan)
        close[idx] = px  # last write wins: trades are in time order
        opn = np.full(nb, np.nan)
        opn[idx[::-1]] = px[::-1]
        for i in range(nb):  # quiet minutes: flat at the previous close
            if cnt[i] == 0:
                opn[i] = high[i] = low[i] = close[i] = close[i - 1]
        bars = {"open_ms": first + MINUTE_MS * np.arange(nb, dtype=np.int64), "open": opn, "high": high,
                "low": low, "close": close, "volume": vol, "quote_volume": qv, "trades": cnt,
                "taker_buy_volume": tbv, "taker_buy_quote_volume": tbqv}
        if hist is not None:
            bars = {c: np.concatenate([hist[c], bars[c]]) for c in bars}
        return klines_rows(bars, interval, start_ms, end_ms, limit)

    # ---------------------------------------------------------------- stream
    async def run(self, venue: Publisher) -> None:
        """Publish the frames in recorded order, paced by ``speed``; pause while nobody listens."""
        if not self.frames:
            self.done = True
            return
        rec0 = self.frames[0].recv_ns
        wall0 = time.monotonic()
        for i, f in enumerate(self.frames):
            if not venue.has_subscribers():
                t_pause = time.monotonic()
                await venue.wait_subscribers()
                wall0 += time.monotonic() - t_pause
            if self.speed > 0:
                delay = wall0 + (f.recv_ns - rec0) / 1e9 / self.speed - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
            elif i % 32 == 0:
                await asyncio.sleep(0)  # let REST requests and readers run between bursts
            if f.kind == "depth":
                book = self.books.get(f.symbol)
                if book is not None:
                    book.apply(orjson.loads(f.combined)["data"])
            elif f.kind == "trade":
                self.trades_replayed += 1
            self.now_ms = f.recv_ns // 1_000_000
            self.position = i + 1
            await venue.publish(f)
        self.done = True
        log.info("replay_done", frames=len(self.frames))
