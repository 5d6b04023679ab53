"""Exchange-filter arithmetic, deterministic client order ids, position sizing and ATR risk levels.

Pure functions (seed §7.3 sizing, §7.4 risk levels), shared by the optimizer and the risk manager, the same in
live trading and backtests. Exchange filters are duck-typed: any object with ``tick_size``, ``lot_step``,
``min_qty``, ``max_qty`` and ``min_notional`` works (``market.filters.SymbolFilters`` is the real one).

Rounding is always in the conservative direction: quantities DOWN to the lot step (never more than the limits
allow), stop and take-profit prices TOWARDS the entry (the loss at the stop never exceeds the sized risk; the
target is never further than computed).
"""
from __future__ import annotations

import decimal
import hashlib
import math
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

__all__ = [
    "FiltersLike", "floor_to_step", "ceil_to_step", "is_step_multiple", "is_dust", "sellable_qty", "client_order_id",
    "parse_tf_pairs",
    "SizeResult", "position_size", "RiskLevels", "risk_levels", "MAX_CLIENT_ID_LEN",
]

MAX_CLIENT_ID_LEN = 36  # Binance newClientOrderId limit: ^[.A-Z:/a-z0-9_-]{1,36}$


@runtime_checkable
class FiltersLike(Protocol):
    """The exchange filters sizing reads: the Protocol ``market.filters.SymbolFilters`` satisfies (the one real
    shape; a backtest's fixed rules duck-type it too). Sizing depends on these five fields only."""

    tick_size: float
    lot_step: float
    min_qty: float
    max_qty: float
    min_notional: float


# ------------------------------------------------------------------------------------------- rounding
def _decimals(step: float) -> int:
    exp = decimal.Decimal(repr(float(step))).normalize().as_tuple().exponent
    return max(0, -int(exp))


def floor_to_step(x: float, step: float) -> float:
    """Largest multiple of ``step`` that is <= ``x`` (``step`` <= 0 means no rounding)."""
    if step <= 0 or not math.isfinite(x):
        return x
    d = _decimals(step)
    r = x / step
    n = math.floor(r + abs(r) * 1e-12)  # 0.3/0.1 == 2.9999999999999996 must give 3
    v = round(n * step, d)
    while v > x:  # the epsilon above must never push us over x
        n -= 1
        v = round(n * step, d)
    return v


def is_dust(qty: float, filters: FiltersLike | None, price: float | None = None) -> bool:
    """A non-zero holding the venue cannot sell: less than one lot (or than LOT_SIZE minQty) once floored to the
    lot step, or, with a ``price``, worth less than the NOTIONAL minimum there. A buy whose commission the venue
    kept in the base asset leaves such a remainder after the exit (closing a 0.052 BTC spot "short" leaves
    -0.000052: five lots, but ~3 USDT < 5); it is valued in equity but is not a position anyone can manage or
    close. The one dust rule: brokers, pipeline and optimizer all ask this."""
    if qty == 0.0 or filters is None or not math.isfinite(qty):
        return False
    fl = sellable_qty(abs(qty), filters.lot_step)
    if fl <= 0.0 or fl < filters.min_qty:
        return True
    return price is not None and math.isfinite(price) and price > 0 and fl * price < filters.min_notional


def sellable_qty(x: float, step: float) -> float:
    """``x`` itself when it is on the lot grid (to float rounding: a position summed from fills may be 1 ulp
    under a whole number of lots, and must not lose a lot to flooring), else ``floor_to_step``."""
    return x if is_step_multiple(x, step) else floor_to_step(x, step)


def ceil_to_step(x: float, step: float) -> float:
    """Smallest multiple of ``step`` that is >= ``x``."""
    if step <= 0 or not math.isfinite(x):
        return x
    d = _decimals(step)
    r = x / step
    n = math.ceil(r - abs(r) * 1e-12)
    v = round(n * step, d)
    while v < x:
        n += 1
        v = round(n * step, d)
    return v


def is_step_multiple(x: float, step: float) -> bool:
    """True when ``x`` is (to float rounding, relative 1e-12) a whole number of ``step``s, i.e. the venue would
    accept it once formatted with the step's decimals."""
    if step <= 0:
        return True
    n = round(x / step)
    return abs(x - round(n * step, _decimals(step))) <= 1e-12 * max(1.0, abs(x))


# ------------------------------------------------------------------------------------------- client ids
def client_order_id(prefix: str, *parts: object) -> str:
    """Deterministic venue client order id (<= 36 chars, Binance's charset) for one decision.

    The same decision (same parts, e.g. symbol, timeframe, bar open time, reason) always gives the same id, so a
    replayed or retried decision is deduplicated by the venue/broker instead of creating a second order.
    Different decisions differ in 120+ bits of a BLAKE2b hash.
    """
    pre = "".join(c for c in prefix if c.isalnum())[:8] or "td"
    raw = "\x1f".join(str(p) for p in (pre, *parts)).encode()
    digest = hashlib.blake2b(raw, digest_size=20).hexdigest()
    return f"{pre}-{digest}"[:MAX_CLIENT_ID_LEN]


# ------------------------------------------------------------------------------------------- config pairs
def parse_tf_pairs(pairs: tuple[str, ...], what: str) -> dict[str, float]:
    """Parse ``("1m=0.5", "5m=0.75")`` (TOML has no per-key tables in our typed config) into a dict."""
    from market.events import TIMEFRAME_SECONDS

    out: dict[str, float] = {}
    for item in pairs:
        tf, sep, val = item.partition("=")
        tf = tf.strip()
        if not sep or tf not in TIMEFRAME_SECONDS:
            raise ValueError(f"{what}: {item!r} must look like '1m=0.5' with a known timeframe")
        try:
            v = float(val)
        except ValueError:
            raise ValueError(f"{what}: {item!r}: {val!r} is not a number") from None
        if not math.isfinite(v) or v < 0:
            raise ValueError(f"{what}: {item!r}: value must be finite and >= 0")
        if tf in out:
            raise ValueError(f"{what}: timeframe {tf} given twice")
        out[tf] = v
    return out


# ------------------------------------------------------------------------------------------- sizing
@dataclass(frozen=True)
class SizeResult:
    """Outcome of :func:`position_size`. ``qty == 0`` means no trade and ``reason`` says why.

    ``reason`` is "ok" for a trade, else one of: bad_input, no_strength, max_positions, no_room,
    rounds_to_zero, below_min_qty, below_min_notional. ``limited_by`` names the binding constraint.
    """

    qty: float
    reason: str
    base_qty: float = 0.0  # equity * risk_per_trade / stop_distance
    scaled_qty: float = 0.0  # base * strength * timeframe_factor
    cap_qty: float = 0.0  # the tightest cap (position notional/fraction room, venue max_qty)
    limited_by: str = ""  # risk | position_notional | position_fraction | max_qty
    notional: float = 0.0

    @property
    def ok(self) -> bool:
        return self.qty > 0


def position_size(*, equity: float, price: float, atr: float, strength: float, timeframe_factor: float,
                  risk_per_trade: float, stop_atr_mult: float, max_position_notional: float,
                  max_position_fraction: float, filters: FiltersLike, existing_qty: float = 0.0,
                  open_positions: int = 0, max_positions: int = 1_000_000) -> SizeResult:
    """Seed §7.3: ``base = equity * risk_per_trade / (stop_atr_mult * ATR)``, scaled by signal strength and
    the timeframe factor, capped by the per-symbol position limit (``min(max_position_notional,
    max_position_fraction * equity)`` minus the notional already held in this direction, and the venue's
    ``max_qty``), refused when ``max_positions`` other symbols are already open, rounded DOWN to the lot step and
    checked against ``min_qty`` and ``min_notional``.

    ``existing_qty`` is the absolute size already held in the same direction (0 for a fresh entry).
    """
    vals = (equity, price, atr, strength, timeframe_factor, existing_qty)
    if not all(math.isfinite(v) for v in vals) or equity <= 0 or price <= 0 or atr <= 0 or existing_qty < 0:
        return SizeResult(0.0, "bad_input")
    strength = min(max(strength, 0.0), 1.0)
    if strength <= 0 or timeframe_factor <= 0:
        return SizeResult(0.0, "no_strength")
    if existing_qty == 0 and open_positions >= max_positions:
        return SizeResult(0.0, "max_positions")
    stop_distance = stop_atr_mult * atr
    base = equity * risk_per_trade / stop_distance
    scaled = base * strength * timeframe_factor
    caps = {
        "position_notional": max_position_notional / price - existing_qty,
        "position_fraction": max_position_fraction * equity / price - existing_qty,
        "max_qty": (filters.max_qty - existing_qty) if filters.max_qty > 0 else math.inf,
    }
    limit_name, cap = min(caps.items(), key=lambda kv: kv[1])
    if cap <= 0:
        return SizeResult(0.0, "no_room", base, scaled, cap, limit_name)
    qty, limited_by = (scaled, "risk") if scaled <= cap else (cap, limit_name)
    q = floor_to_step(qty, filters.lot_step)
    common = dict(base_qty=base, scaled_qty=scaled, cap_qty=cap, limited_by=limited_by)
    if q <= 0:
        return SizeResult(0.0, "rounds_to_zero", **common)
    if q < filters.min_qty:
        return SizeResult(0.0, "below_min_qty", notional=q * price, **common)
    if q * price < filters.min_notional:
        return SizeResult(0.0, "below_min_notional", notional=q * price, **common)
    return SizeResult(q, "ok", notional=q * price, **common)


# ------------------------------------------------------------------------------------------- risk levels
@dataclass(frozen=True)
class RiskLevels:
    direction: int  # +1 long, -1 short
    entry: float
    atr: float
    stop_distance: float
    stop: float
    take_profit: float


def risk_levels(direction: int, entry: float, atr: float, *, stop_atr_mult: float = 2.0,
                take_profit_ratio: float = 1.5, tick_size: float = 0.0) -> RiskLevels | None:
    """Seed §7.4: stop at ``stop_atr_mult * ATR`` against the position, take profit at ``take_profit_ratio``
    times that distance in its favour. Both are rounded to the tick TOWARDS the entry. ``None`` when there is
    no direction, the inputs are not finite/positive, or a level would not be a positive price."""
    if direction not in (1, -1) or not (math.isfinite(entry) and math.isfinite(atr)) or entry <= 0 or atr <= 0:
        return None
    d = stop_atr_mult * atr
    if direction == 1:
        stop = ceil_to_step(entry - d, tick_size)
        tp = floor_to_step(entry + take_profit_ratio * d, tick_size)
    else:
        stop = floor_to_step(entry + d, tick_size)
        tp = ceil_to_step(entry - take_profit_ratio * d, tick_size)
    if stop <= 0 or tp <= 0:
        return None
    return RiskLevels(direction, entry, atr, d, stop, tp)
