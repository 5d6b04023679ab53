"""Nested HPO's outer grid, shared by ``tradingd hpo --per-window`` and ``tradingd backtest --params`` with its
per-window best.json (one definition, so both walk the same windows)."""
from __future__ import annotations

from dataclasses import replace

import numpy as np

from research.dataset import PanelFeatures
from research.params import params_for
from research.walkforward import WFOptions, Window, windows

__all__ = ["first_valid", "outer_windows"]


def first_valid(pf: PanelFeatures) -> int:
    v = np.flatnonzero(pf.valid.any(axis=1))
    return int(v[0]) if len(v) else 0


def outer_windows(pf: PanelFeatures, opts: WFOptions) -> tuple[list[Window], int]:
    """The outer walk-forward windows a per-window search runs on, and their embargo E: at least the largest
    horizon the search may pick (2 x the default), so one window grid holds whatever horizon a window chooses;
    ``tradingd backtest --params`` with a per-window file uses the same E (hence the same windows)."""
    h0 = params_for(pf.timeframe, {}).horizon
    E = max(opts.embargo, 2 * h0)
    return windows(pf.X.shape[0], pf.timeframe, h0, replace(opts, embargo=E), first_valid(pf)), E
