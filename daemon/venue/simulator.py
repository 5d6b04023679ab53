"""A pure, seeded market simulator that emits Binance spot payloads.

No I/O and no clock: the caller drives it with ``advance(t_ns)``; the same seed and the same times give the same
market, byte for byte. Model (kept simple on purpose, every part visible):

* mid price: geometric Brownian motion whose volatility switches between a calm and a turbulent regime by a
  two-state Markov chain (``regime_switch_per_hour``), plus a persistent drift (trend): an Ornstein-Uhlenbeck
  process ``mu`` (log return per hour) with stationary std ``trend_per_hour`` and time constant ``trend_hours``,
  so a trend's sign typically lasts hours and returns are positively autocorrelated at 5m-1h horizons, as real
  markets are at times. Why: a pure random walk has nothing to learn, so models trained on it stay at
  P(up) ~ 0.5 and an honest fee-aware optimizer never trades; ``trend_per_hour = 0`` gives the pure walk.
  The drift is exactly discretised (``mu' = a mu + s sqrt(1 - a^2) z``, ``a = exp(-dt / tau)``), per minute in
  the history and per step live, continuing from the history's last value;
* L2 book: ``depth_levels`` levels a side on a fixed price grid (plus the touch), a 1-3 tick spread around the
  mid; persisting levels keep their size unless re-drawn, so diffs stay small. Prices are integer ticks and sizes
  integer lots internally, so the book is exact and never crossed;
* trades: Poisson arrivals, exponential sizes; a buy lifts the best ask, a sell hits the best bid *of the book the
  clients hold* (the last diff sent), and eats into that level (never past it) — the next diff shows it;
* every ``depth_interval_ms`` one ``depthUpdate`` diff with ``U`` = previous ``u`` + 1 and ``u`` = ``U`` + changes - 1,
  followed by a ``bookTicker`` carrying that ``u``;
* ``history_days`` of 1m klines, generated vectorised with the same regime model, ending exactly at the live start
  (last history close == first live open == ``start_price``) and continued by bars built from the live trades;
* a universe: every symbol's shock is ``a z_market + sqrt(1 - a^2) z_own`` (and so is its trend's innovation),
  ``a`` its loading (``simulator.correlation`` -> ``a = sqrt(correlation)``, or its ``simulator.universe`` entry),
  scaled by its ``vol_mult``; the volatility regime is the market's. The market factor's random stream depends on
  the seed only, so the simulators of one seed (one per symbol, stepped in lockstep by the venue) draw the same
  factor, in the history and live, and two symbols' returns correlate ``a_i a_j`` without sharing any object.
  Each symbol has its own start price and filters that follow it (:func:`symbol_spec`). A single symbol's market
  is statistically what it was before universes (its shock is still a standard normal).
"""
from __future__ import annotations

import math
import zlib
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from daemon.config import SimulatorConfig
from market.events import TIMEFRAME_SECONDS

NS_PER_MS = 1_000_000
MINUTE_MS = 60_000
YEAR_S = 365.0 * 24 * 3600
FACTOR_SALT = 0x4D4B54  # the market factor's random streams: (seed, FACTOR_SALT, k), the same for every symbol
REF_TRADE_UNITS = 0.02  # mean trade size in base units at start_price (BTC-like); other symbols: same notional


@dataclass(frozen=True)
class SymbolSpec:
    """One symbol's simulated market: start price, volatility multiple, factor loading and exchange filters."""

    symbol: str
    start_price: float
    vol_mult: float
    loading: float  # correlation of the symbol's shocks with the market factor
    tick_size: float
    lot_step: float
    min_notional: float
    max_qty: float


def _clean(x: float) -> float:
    return float(f"{x:.12g}")


def symbol_spec(cfg: SimulatorConfig, symbol: str) -> SymbolSpec:
    """``symbol``'s parameters (its ``simulator.universe`` entry, else start_price / vol 1 / sqrt(correlation)).
    Filters follow the price: ``tick_size`` and ``lot_step`` as configured at ``start_price``, shifted by the power
    of ten of price / start_price (a 3000 coin next to a 60000 one: tick / 10, lot x 10), ``maxQty`` scaled the
    same way; ``min_notional`` is in the quote currency, the same for every symbol (Binance: 5 USDT)."""
    sym = symbol.upper()
    price, vm, load = cfg.universe_params().get(sym, (cfg.start_price, 1.0, math.sqrt(cfg.correlation)))
    scale = 10.0 ** round(math.log10(price / cfg.start_price))
    # 1e-8: the 8 decimals of the venue's number strings
    return SymbolSpec(sym, price, vm, load, max(_clean(cfg.tick_size * scale), 1e-8),
                      max(_clean(cfg.lot_step / scale), 1e-8), cfg.min_notional, _clean(9000.0 / scale))


class SimEvent(NamedTuple):
    ts_ns: int
    stream: str  # e.g. "btcusdt@trade"
    kind: str  # "trade" | "depth" | "bookTicker"
    payload: dict


def _fmt(x: float) -> str:
    return f"{x:.8f}"


class MarketSimulator:
    """One symbol's simulated market; see the module docstring for the model."""

    def __init__(self, cfg: SimulatorConfig, symbol: str = "BTCUSDT", start_ns: int = 1_700_000_000_000_000_000,
                 *, start_price: float | None = None) -> None:
        self.cfg = cfg
        self.symbol = symbol.upper()
        self.sym_l = symbol.lower()
        self.spec = symbol_spec(cfg, self.symbol)
        self.start_price = self.spec.start_price if start_price is None else float(start_price)
        self.start_ns = int(start_ns)
        self.dt_ns = cfg.depth_interval_ms * NS_PER_MS
        salt = zlib.crc32(self.symbol.encode())
        self._hist_seed = (cfg.seed, salt, 1)
        self._rng = np.random.default_rng((cfg.seed, salt, 2))
        self._frng = np.random.default_rng((cfg.seed, FACTOR_SALT, 2))  # the market factor, live
        self._load = self.spec.loading
        self._own = math.sqrt(max(0.0, 1.0 - self._load**2))
        self._vm = self.spec.vol_mult
        self.tick = self.spec.tick_size
        self.lot = self.spec.lot_step
        self.start_m_ms = (self.start_ns // NS_PER_MS) // MINUTE_MS * MINUTE_MS
        self._history: dict[str, np.ndarray] | None = None
        self._regime_sw_per_s = cfg.regime_switch_per_hour / 3600.0
        s_mu = cfg.trend_per_hour / 3600.0
        self._drift_a = math.exp(-(self.dt_ns / 1e9) / (cfg.trend_hours * 3600.0)) if s_mu > 0 else 1.0
        self._drift_b = s_mu * math.sqrt(1.0 - self._drift_a**2)
        # mean trade size ~0.02 base units at start_price (BTC-like), the same notional for every symbol, >= 1 lot
        self.mean_lots = max(1.0, REF_TRADE_UNITS * (cfg.start_price / self.start_price) / self.lot)
        self.regime = self._history_last_regime()
        # the drift (log return per second) = vol_mult x (loading x market trend + own x own trend), continued
        # from the history
        self._mkt_drift, self._own_drift = self._hist_last_drifts
        self.drift = self._hist_last_drift
        self.mid = self.start_price
        # price grid spacing: ~0.2 bp of the price, at least one tick, so a typical 100 ms move keeps most levels
        self.grid = max(1, int(round(self.start_price * 2e-5 / self.tick)))
        self.update_id = 1_000_000
        self.trade_id = 1
        self.t_ns = self.start_ns
        self.bids: dict[int, int] = {}
        self.asks: dict[int, int] = {}
        self.bids, self.asks = self._target_book({}, {}, self.mid)
        self._live_bars: dict[int, list] = {}  # minute open ms -> [o,h,l,c,v,qv,n,tbv,tbqv]
        self._last_close = float(self.history()["close"][-1])

    # ------------------------------------------------------------------ history
    def history(self) -> dict[str, np.ndarray]:
        """``history_days`` of 1m bars ending at the live start minute (cached); numpy columns."""
        if self._history is None:
            self._history = self._make_history()
        return self._history

    def _regimes(self, rng: np.random.Generator, n: int, p_switch: float) -> np.ndarray:
        switches = rng.random(n) < p_switch
        return (np.cumsum(switches) + rng.integers(0, 2)) % 2

    def _drift_path(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """Per-minute OU drift (log return per second), stationary from the first minute."""
        c = self.cfg
        s = c.trend_per_hour / 3600.0
        z = rng.standard_normal(n)
        if s == 0.0:
            return np.zeros(n)
        a = math.exp(-60.0 / (c.trend_hours * 3600.0))
        b = s * math.sqrt(1.0 - a * a)
        out = np.empty(n)
        mu = s * float(z[0])
        for i, e in enumerate((z * b).tolist()):  # AR(1): a plain loop (~0.2 us a minute of history)
            if i:
                mu = a * mu + e
            out[i] = mu
        return out

    def _make_history(self) -> dict[str, np.ndarray]:
        c = self.cfg
        n = c.history_days * 1440
        rng = np.random.default_rng(self._hist_seed)
        frng = np.random.default_rng((c.seed, FACTOR_SALT, 1))  # the market's: the same for every symbol
        regime = self._regimes(frng, n, 1.0 - math.exp(-self._regime_sw_per_s * 60.0))
        vol = np.where(regime == 1, c.vol_high, c.vol_low) * (self._vm * math.sqrt(60.0 / YEAR_S))
        z = self._load * frng.standard_normal(n) + self._own * rng.standard_normal(n)
        mkt_drift = self._drift_path(np.random.default_rng((c.seed, FACTOR_SALT, 3)), n)
        own_drift = self._drift_path(np.random.default_rng((*self._hist_seed, 3)), n)
        drift = self._vm * (self._load * mkt_drift + self._own * own_drift)
        logret = -0.5 * vol**2 + vol * z + drift * 60.0
        cum = np.cumsum(logret)
        close = self.start_price * np.exp(cum - cum[-1])  # the last close is exactly the live start price
        open_ = np.empty(n)
        open_[0] = close[0] * math.exp(-logret[0])
        open_[1:] = close[:-1]
        tick = self.tick
        close = np.round(close / tick) * tick
        open_ = np.round(open_ / tick) * tick
        open_[1:] = close[:-1]  # contiguous after rounding too
        ext = np.abs(rng.standard_normal((2, n))) * vol * 0.6
        high = np.maximum(open_, close) * np.exp(ext[0])
        low = np.minimum(open_, close) * np.exp(-ext[1])
        high = np.maximum(np.ceil(high / tick) * tick, np.maximum(open_, close))
        low = np.minimum(np.floor(low / tick) * tick, np.minimum(open_, close))
        rate = c.trades_per_s * 60.0 * np.where(regime == 1, 2.0, 1.0)
        trades = rng.poisson(rate)
        mean_qty = self.mean_lots * self.lot
        volume = np.round(trades * mean_qty * rng.gamma(4.0, 0.25, n) / self.lot) * self.lot
        taker_buy = np.round(volume * rng.beta(5, 5, n) / self.lot) * self.lot
        vwap = (open_ + high + low + close) / 4.0
        open_ms = self.start_m_ms - MINUTE_MS * np.arange(n, 0, -1, dtype=np.int64)
        self._hist_last_regime = int(regime[-1])
        self._hist_last_drift = float(drift[-1])
        self._hist_last_drifts = (float(mkt_drift[-1]), float(own_drift[-1]))
        return {"open_ms": open_ms, "open": open_, "high": high, "low": low, "close": close, "volume": volume,
                "quote_volume": volume * vwap, "trades": trades.astype(np.int64), "taker_buy_volume": taker_buy,
                "taker_buy_quote_volume": taker_buy * vwap}

    def _history_last_regime(self) -> int:
        self.history()
        return self._hist_last_regime

    # ------------------------------------------------------------------ book
    def _target_book(self, bids: dict[int, int], asks: dict[int, int], mid: float,
                     ) -> tuple[dict[int, int], dict[int, int]]:
        """The book after quotes move to ``mid``: levels that persist keep their size (re-drawn with prob. 0.15)."""
        rng = self._rng
        levels = self.cfg.depth_levels
        g = self.grid
        spread = 1 + int(rng.integers(0, 3))
        bb = int(math.floor(mid / self.tick - spread / 2.0))
        ba = bb + spread
        top_grid_bid = (bb - 1) // g * g
        bid_px = [bb] + [top_grid_bid - i * g for i in range(levels - 1)]
        bot_grid_ask = -((-(ba + 1)) // g) * g
        ask_px = [ba] + [bot_grid_ask + i * g for i in range(levels - 1)]
        redraw = rng.random(2 * levels) < 0.15
        sizes = 1 + rng.geometric(1.0 / (self.mean_lots * 3.0), 2 * levels)
        nb = {}
        for i, p in enumerate(bid_px):
            old = bids.get(p)
            nb[p] = int(sizes[i]) if old is None or redraw[i] else old
        na = {}
        for i, p in enumerate(ask_px):
            old = asks.get(p)
            na[p] = int(sizes[levels + i]) if old is None or redraw[levels + i] else old
        return nb, na

    def best_bid(self) -> tuple[float, float]:
        p = max(self.bids)
        return p * self.tick, self.bids[p] * self.lot

    def best_ask(self) -> tuple[float, float]:
        p = min(self.asks)
        return p * self.tick, self.asks[p] * self.lot

    def snapshot(self, limit: int = 100) -> dict:
        """REST ``/api/v3/depth`` body of the book the clients hold (``lastUpdateId`` = last diff's ``u``)."""
        tick, lot = self.tick, self.lot
        bids = sorted(self.bids.items(), reverse=True)[:limit]
        asks = sorted(self.asks.items())[:limit]
        return {"lastUpdateId": self.update_id,
                "bids": [[_fmt(p * tick), _fmt(q * lot)] for p, q in bids],
                "asks": [[_fmt(p * tick), _fmt(q * lot)] for p, q in asks]}

    # ------------------------------------------------------------------ live
    def advance(self, t_ns: int) -> list[SimEvent]:
        """Run the market up to ``t_ns`` and return the events it emitted, in time order."""
        out: list[SimEvent] = []
        while self.t_ns + self.dt_ns <= t_ns:
            self._step(out)
        return out

    def _step(self, out: list[SimEvent]) -> None:
        rng, c = self._rng, self.cfg
        t0 = self.t_ns
        t1 = t0 + self.dt_ns
        dt_s = self.dt_ns / 1e9
        work_b, work_a = dict(self.bids), dict(self.asks)
        n = int(rng.poisson(c.trades_per_s * dt_s * (2.0 if self.regime else 1.0)))
        if n:
            times = np.sort(rng.integers(t0 + 1, t1 + 1, n))
            buys = rng.random(n) < 0.5
            qtys = np.maximum(1, np.round(rng.exponential(self.mean_lots, n))).astype(np.int64)
            best_b, best_a = max(self.bids), min(self.asks)  # the book the clients hold
            for ts, buy, q in zip(times.tolist(), buys.tolist(), qtys.tolist()):
                side, px = (work_a, best_a) if buy else (work_b, best_b)
                avail = side[px] - 1  # never exhaust the touch inside a step: trades stay at the sent best
                q = min(q, avail)
                if q <= 0:
                    continue
                side[px] -= q
                self._trade(out, ts, px, q, buy)
        # mid moves, the market's regime may switch (the factor stream: the same draws in every symbol)
        frng = self._frng
        if frng.random() < 1.0 - math.exp(-self._regime_sw_per_s * dt_s):
            self.regime ^= 1
        sigma = (c.vol_high if self.regime else c.vol_low) * self._vm * math.sqrt(dt_s / YEAR_S)
        fz = frng.standard_normal(2)
        zs = rng.standard_normal(2)
        z = self._load * float(fz[0]) + self._own * float(zs[0])
        self.mid *= math.exp(self.drift * dt_s - 0.5 * sigma * sigma + sigma * z)
        if self._drift_a < 1.0:
            self._mkt_drift = self._drift_a * self._mkt_drift + self._drift_b * float(fz[1])
            self._own_drift = self._drift_a * self._own_drift + self._drift_b * float(zs[1])
            self.drift = self._vm * (self._load * self._mkt_drift + self._own * self._own_drift)
        nb, na = self._target_book(work_b, work_a, self.mid)
        db = sorted(((p, nb.get(p, 0)) for p in set(self.bids) | set(nb) if self.bids.get(p) != nb.get(p)),
                    reverse=True)
        da = sorted((p, na.get(p, 0)) for p in set(self.asks) | set(na) if self.asks.get(p) != na.get(p))
        self.bids, self.asks = nb, na
        self.t_ns = t1
        nchg = len(db) + len(da)
        if not nchg:
            return
        first = self.update_id + 1
        self.update_id += nchg
        e_ms = t1 // NS_PER_MS
        tick, lot = self.tick, self.lot
        out.append(SimEvent(t1, f"{self.sym_l}@depth@{c.depth_interval_ms}ms", "depth", {
            "e": "depthUpdate", "E": e_ms, "s": self.symbol, "U": first, "u": self.update_id,
            "b": [[_fmt(p * tick), _fmt(q * lot)] for p, q in db],
            "a": [[_fmt(p * tick), _fmt(q * lot)] for p, q in da]}))
        bp, ap = max(nb), min(na)
        out.append(SimEvent(t1, f"{self.sym_l}@bookTicker", "bookTicker", {
            "u": self.update_id, "s": self.symbol, "b": _fmt(bp * tick), "B": _fmt(nb[bp] * lot),
            "a": _fmt(ap * tick), "A": _fmt(na[ap] * lot)}))

    def _trade(self, out: list[SimEvent], ts: int, px: int, q: int, buy: bool) -> None:
        price, qty = px * self.tick, q * self.lot
        ms = ts // NS_PER_MS
        out.append(SimEvent(ts, f"{self.sym_l}@trade", "trade", {
            "e": "trade", "E": ms, "s": self.symbol, "t": self.trade_id, "p": _fmt(price), "q": _fmt(qty),
            "T": ms, "m": not buy, "M": True}))
        self.trade_id += 1
        m = ms // MINUTE_MS * MINUTE_MS
        bar = self._live_bars.get(m)
        if bar is None:
            prev = self._close_before(m)
            bar = self._live_bars[m] = [prev, prev, prev, prev, 0.0, 0.0, 0, 0.0, 0.0]
        bar[1] = max(bar[1], price)
        bar[2] = min(bar[2], price)
        bar[3] = price
        bar[4] += qty
        bar[5] += qty * price
        bar[6] += 1
        if buy:
            bar[7] += qty
            bar[8] += qty * price

    def _close_before(self, m: int) -> float:
        earlier = [k for k in self._live_bars if k < m]
        return self._live_bars[max(earlier)][3] if earlier else self._last_close

    # ------------------------------------------------------------------ klines
    def minute_bars(self) -> dict[str, np.ndarray]:
        """History + live 1m bars up to the minute holding the simulator's time (the last one still open, flat until
        its first trade: Binance serves the open bar from its first millisecond)."""
        h = self.history()
        end_m = (self.t_ns // NS_PER_MS) // MINUTE_MS * MINUTE_MS
        n_live = (end_m - self.start_m_ms) // MINUTE_MS + 1  # the open minute is served before its first trade
        if n_live <= 0:
            return h
        live = np.empty((n_live, 9))
        prev = self._last_close
        for i in range(n_live):
            m = self.start_m_ms + i * MINUTE_MS
            bar = self._live_bars.get(m)
            live[i] = bar if bar is not None else [prev, prev, prev, prev, 0, 0, 0, 0, 0]
            prev = live[i, 3]
        cols = ("open", "high", "low", "close", "volume", "quote_volume", "trades", "taker_buy_volume",
                "taker_buy_quote_volume")
        out = {"open_ms": np.concatenate([h["open_ms"], self.start_m_ms + MINUTE_MS * np.arange(n_live)])}
        for j, name in enumerate(cols):
            out[name] = np.concatenate([h[name], live[:, j].astype(h[name].dtype)])
        return out

    def klines(self, interval: str, start_ms: int | None, end_ms: int | None, limit: int) -> list[list]:
        return klines_rows(self.minute_bars(), interval, start_ms, end_ms, limit)


def resample(b: dict[str, np.ndarray], interval: str) -> dict[str, np.ndarray]:
    """1m columns -> ``interval`` columns, grouped on epoch-aligned period starts."""
    tf_ms = TIMEFRAME_SECONDS[interval] * 1000
    if tf_ms == MINUTE_MS or len(b["open_ms"]) == 0:
        return b
    key = b["open_ms"] // tf_ms
    starts = np.flatnonzero(np.r_[True, key[1:] != key[:-1]])
    ends = np.r_[starts[1:], len(key)] - 1
    out = {"open_ms": key[starts] * tf_ms, "open": b["open"][starts], "close": b["close"][ends],
           "high": np.maximum.reduceat(b["high"], starts), "low": np.minimum.reduceat(b["low"], starts)}
    for name in ("volume", "quote_volume", "trades", "taker_buy_volume", "taker_buy_quote_volume"):
        out[name] = np.add.reduceat(b[name], starts)
    return out


def klines_rows(b1m: dict[str, np.ndarray], interval: str, start_ms: int | None, end_ms: int | None,
                limit: int) -> list[list]:
    """Binance ``/api/v3/klines`` rows. With ``startTime`` the first ``limit`` bars from it, else the last ones."""
    b = resample(b1m, interval)
    tf_ms = TIMEFRAME_SECONDS[interval] * 1000
    t = b["open_ms"]
    lo = 0 if start_ms is None else int(np.searchsorted(t, start_ms, "left"))
    hi = len(t) if end_ms is None else int(np.searchsorted(t, end_ms, "right"))
    if start_ms is not None:
        hi = min(hi, lo + limit)
    else:
        lo = max(lo, hi - limit)
    rows = []
    for i in range(lo, hi):
        o = int(t[i])
        rows.append([o, _fmt(b["open"][i]), _fmt(b["high"][i]), _fmt(b["low"][i]), _fmt(b["close"][i]),
                     _fmt(b["volume"][i]), o + tf_ms - 1, _fmt(b["quote_volume"][i]), int(b["trades"][i]),
                     _fmt(b["taker_buy_volume"][i]), _fmt(b["taker_buy_quote_volume"][i]), "0"])
    return rows


def exchange_info(symbols: list[str], cfg: SimulatorConfig, server_ms: int) -> dict:
    """``/api/v3/exchangeInfo`` body with the filters the simulator trades by (per symbol: :func:`symbol_spec`)."""
    def sym(s: str) -> dict:
        sp = symbol_spec(cfg, s)
        quote = next((q for q in ("USDT", "USDC", "FDUSD", "BUSD", "BTC", "ETH", "BNB") if s.endswith(q)), s[-4:])
        return {
            "symbol": s, "status": "TRADING", "baseAsset": s[: -len(quote)], "baseAssetPrecision": 8,
            "quoteAsset": quote, "quotePrecision": 8, "quoteAssetPrecision": 8,
            "orderTypes": ["LIMIT", "LIMIT_MAKER", "MARKET", "STOP_LOSS_LIMIT", "TAKE_PROFIT_LIMIT"],
            "icebergAllowed": True, "ocoAllowed": True, "isSpotTradingAllowed": True,
            "isMarginTradingAllowed": False,
            "filters": [
                {"filterType": "PRICE_FILTER", "minPrice": _fmt(sp.tick_size), "maxPrice": "1000000.00000000",
                 "tickSize": _fmt(sp.tick_size)},
                {"filterType": "LOT_SIZE", "minQty": _fmt(sp.lot_step), "maxQty": _fmt(sp.max_qty),
                 "stepSize": _fmt(sp.lot_step)},
                {"filterType": "NOTIONAL", "minNotional": _fmt(sp.min_notional), "applyMinToMarket": True,
                 "maxNotional": "9000000.00000000", "avgPriceMins": 5},
            ],
            "permissions": [], "defaultSelfTradePreventionMode": "EXPIRE_MAKER",
        }
    return {"timezone": "UTC", "serverTime": server_ms,
            "rateLimits": [{"rateLimitType": "REQUEST_WEIGHT", "interval": "MINUTE", "intervalNum": 1,
                            "limit": 6000}],
            "exchangeFilters": [], "symbols": [sym(s) for s in symbols]}
