"""The pipeline's engine sets in a klines backtest: walk-forward predictions looked up by bar, and the no-model
momentum baseline. Both read the simulated clock (:class:`_Clock`)."""
from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence

import numpy as np

from market.events import timeframe_ns

__all__ = ["BatchPredictions", "MomentumBaseline"]


class _Clock:
    """The simulated clock: the close time of the 1m bar being processed."""

    now: int = 0


class BatchPredictions:
    """The pipeline's engine set for one timeframe in a backtest: predictions computed in batch per walk-forward
    window, looked up by the bar the pipeline is deciding on (``clock.now - timeframe``). The pipeline's
    incremental feature row is compared with the batch row the prediction came from (counted mismatches)."""

    def __init__(self, tf: str, clock: _Clock, open_ns: np.ndarray, X: np.ndarray) -> None:
        self.tf, self.tf_ns, self.clock = tf, timeframe_ns(tf), clock
        self.open_ns = np.asarray(open_ns, np.int64)
        self._index = {o: i for i, o in enumerate(self.open_ns.tolist())}
        self.X = X
        self.preds: dict[str, np.ndarray] = {}
        self.counters: Counter[str] = Counter()

    def set(self, kind: str, rows: np.ndarray, p: np.ndarray) -> None:
        arr = self.preds.setdefault(kind, np.full(len(self.open_ns), np.nan))
        arr[rows] = p

    def _row(self) -> int:
        return self._index.get(self.clock.now - self.tf_ns, -1)

    def predict(self, row: np.ndarray, symbol: str) -> dict[str, float]:
        i = self._row()
        if i < 0:
            self.counters["no_batch_row"] += 1
            return {}
        x = self.X[i]
        if not (row == x).all() and not np.allclose(row, x, rtol=1e-9, atol=1e-12, equal_nan=True):
            self.counters["feature_mismatch"] += 1
        out = {}
        for kind, arr in self.preds.items():
            v = arr[i]
            if math.isfinite(v):
                out[kind] = float(v)
        self.counters["served" if out else "no_prediction"] += 1
        return out


class MomentumBaseline:
    """No-model baseline: P(up) = 0.5 +/- conviction/2 by the sign of the last bar's log return (ret_1)."""

    def __init__(self, conviction: float, models: Sequence[str], active_from_ns: int, clock: _Clock) -> None:
        from engines.features import FEATURE_SCHEMA
        self.i = FEATURE_SCHEMA.names.index("ret_1")
        self.c, self.models, self.active_from, self.clock = conviction, tuple(models), active_from_ns, clock

    def predict(self, row: np.ndarray, symbol: str) -> dict[str, float]:
        if self.clock.now <= self.active_from:
            return {}
        r = row[self.i]
        if not math.isfinite(r) or r == 0:
            return {}
        p = 0.5 + (self.c / 2 if r > 0 else -self.c / 2)
        return {k: p for k in self.models}
