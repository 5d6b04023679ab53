"""Training labels: did the next ``horizon`` bars move up by more than the round-trip cost?

``fwd_return[t] = log(close[t+horizon]) - log(close[t])`` — the log return of entering at bar t's close (when
its features are known) and leaving ``horizon`` bars later; ``y[t] = 1`` ("up") when it exceeds ``cost``, else 0.
The label at t depends only on closes t..t+horizon and the feature row at t only on bars <= t, so there is no
look-ahead; the last ``horizon`` rows have no future: ``y = -1`` and ``fwd_return = NaN`` there (``valid`` masks
them). ``fwd_return`` is returned as well so a dollar-profit objective can weight rows by the size of the move.

The cost is in log-return units (fractions of price): ``2 * taker_fee + spread_estimate`` pays the fee on entry
and exit and one full spread over the round trip — the same cost the optimizer charges before trading.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from engines.data import Klines

__all__ = ["Labels", "make_labels", "round_trip_cost", "DEFAULT_COST", "class_balance"]


def round_trip_cost(taker_fee: float = 0.001, spread_estimate: float = 1e-4) -> float:
    """Fee on entry and exit plus one spread (fractions of price; 1e-4 = 1 bp)."""
    if not (0 <= taker_fee < 0.1 and 0 <= spread_estimate < 0.1):
        raise ValueError(f"round_trip_cost: taker_fee {taker_fee} / spread_estimate {spread_estimate} out of range")
    return 2.0 * taker_fee + spread_estimate


DEFAULT_COST = round_trip_cost()


class Labels(NamedTuple):
    y: np.ndarray  # int8: 1 up (fwd_return > cost), 0 not, -1 no label (last `horizon` rows)
    fwd_return: np.ndarray  # float64 forward log return, NaN where there is no label

    @property
    def valid(self) -> np.ndarray:
        return self.y >= 0


def make_labels(k: Klines, horizon: int = 1, cost: float = DEFAULT_COST) -> Labels:
    """Up/not-up labels over ``horizon`` bars net of ``cost``, with the forward log returns."""
    if isinstance(horizon, bool) or not isinstance(horizon, (int, np.integer)) or horizon < 1:
        raise ValueError(f"make_labels: horizon must be an integer >= 1, got {horizon!r}")
    try:
        cost = float(cost)
    except (TypeError, ValueError):
        raise ValueError(f"make_labels: cost must be a number, got {cost!r}") from None
    if not (math.isfinite(cost) and cost >= 0):
        raise ValueError(f"make_labels: cost must be a finite number >= 0, got {cost!r}")
    n = len(k)
    fwd = np.full(n, np.nan)
    y = np.full(n, -1, dtype=np.int8)
    if n > horizon:
        lc = np.log(k.close)
        fwd[:-horizon] = lc[horizon:] - lc[:-horizon]
        y[:-horizon] = fwd[:-horizon] > cost
    return Labels(y, fwd)


def class_balance(labels: Labels) -> dict[str, float]:
    """Counts and the up fraction of the labelled rows (for reports and training logs)."""
    v = labels.valid
    up = int((labels.y == 1).sum())
    n = int(v.sum())
    return {"labelled": n, "up": up, "not_up": n - up, "unlabelled": int((~v).sum()),
            "up_fraction": up / n if n else float("nan")}
