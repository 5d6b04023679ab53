"""Per-timeframe model/portfolio parameters: built-in defaults (fixed a priori, not fitted on any test data),
overridden by a ``best.json`` from ``tradingd hpo`` (``{"timeframes": {tf: {param: value}}}``)."""
from __future__ import annotations

import json
from pathlib import Path

from research.models import ModelParams

__all__ = ["DEFAULT_HORIZON", "default_params", "load_params", "params_for", "load_window_params"]

# label horizon in bars: about 4-6 hours whatever the timeframe (a move that can pay ~0.25 % round-trip costs)
DEFAULT_HORIZON = {"1m": 240, "3m": 80, "5m": 48, "15m": 16, "30m": 8, "1h": 6, "2h": 3, "4h": 2, "6h": 1,
                   "8h": 1, "12h": 1, "1d": 1}


def default_params(tf: str, **over) -> ModelParams:
    h = DEFAULT_HORIZON.get(tf, 6)
    base = {"horizon": h, "rebalance": h, "momentum_lookback": 4 * h, "top_k": 5, "hold_buffer": 2.0}
    return ModelParams().with_(**(base | over))


def load_params(path: str | Path | None) -> dict[str, dict]:
    if not path:
        return {}
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: cannot read parameters ({e})") from None
    tfs = doc.get("timeframes") if isinstance(doc, dict) else None
    if not isinstance(tfs, dict):
        raise ValueError(f"{path}: expected {{\"timeframes\": {{TF: {{param: value}}}}}} (a tradingd hpo best.json)")
    for tf, p in tfs.items():
        ModelParams().with_(**p)  # unknown names -> ValueError naming them
    return tfs


def params_for(tf: str, loaded: dict[str, dict], **over) -> ModelParams:
    return default_params(tf, **(loaded.get(tf, {}) | {k: v for k, v in over.items() if v is not None}))


def load_window_params(path: str | Path | None) -> dict[str, dict]:
    """Per-window parameters of a ``tradingd hpo --per-window`` best.json: {tf: {"embargo": E, "windows": [{
    "test_start_ns", "params"}, ...]}}; {} for a plain best.json (one parameter set per timeframe)."""
    if not path:
        return {}
    load_params(path)
    doc = json.loads(Path(path).read_text())
    wins = doc.get("windows") or {}
    out = {}
    for tf, rows in wins.items():
        for r in rows:
            ModelParams().with_(**r["params"])
        out[tf] = {"embargo": int(doc["embargo"][tf]),
                   "windows": [{"test_start_ns": int(r["test_start_ns"]), "params": r["params"]} for r in rows]}
    return out
