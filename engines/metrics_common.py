"""Helpers shared by the model trainers (engines/xgb_model.py, engines/lstm_model.py): one definition each.

Pure functions (no clock, no global state) plus two small file helpers. The model modules re-export the public
names (``time_split``, ``binary_metrics``, ``dollar_pnl``, ``sha256_file``), so existing imports keep working.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from engines.base import ModelLoadError

__all__ = [
    "time_split", "auc", "binary_metrics", "dollar_pnl", "sha256_file", "atomic_write_bytes", "jsonable",
    "load_meta_json",
]


def time_split(n: int, val_frac: float = 0.2, gap: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Chronological split of n rows: the first part trains, the last ``val_frac`` validates.

    ``gap`` rows between them are dropped so a label horizon (or overlapping windows) cannot leak the
    validation period into training. No shuffling across the boundary, ever.
    """
    if not 0.0 < val_frac < 1.0:
        raise ValueError("val_frac must be in (0, 1)")
    n_val = max(1, int(round(n * val_frac)))
    n_train = n - n_val - gap
    if n_train < 1:
        raise ValueError(f"not enough rows ({n}) for val_frac={val_frac} and gap={gap}")
    return np.arange(n_train), np.arange(n_train + gap, n)


def auc(y: np.ndarray, p: np.ndarray) -> float:
    """ROC AUC by the rank-sum formula (ties get average ranks); NaN when one class is absent."""
    y = np.asarray(y).astype(bool)
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    from scipy.stats import rankdata
    r = rankdata(p)
    return float((r[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def binary_metrics(y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    """AUC, log-loss (p clipped to [1e-7, 1-1e-7]), accuracy at 0.5, count and base rate; NaNs when empty."""
    y = np.asarray(y, dtype=np.float64)
    p = np.clip(np.asarray(p, dtype=np.float64), 1e-7, 1 - 1e-7)
    if y.size == 0:
        return {"auc": float("nan"), "logloss": float("nan"), "accuracy": float("nan"), "n": 0,
                "base_rate": float("nan")}
    logloss = float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))
    acc = float(np.mean((p > 0.5) == (y > 0.5)))
    return {"auc": auc(y, p), "logloss": logloss, "accuracy": acc, "n": int(y.size), "base_rate": float(y.mean())}


def dollar_pnl(p_up: np.ndarray, fwd_return: np.ndarray, *, position_size: float = 10_000.0,
               fee: float = 0.001, margin: float = 0.0) -> dict[str, float]:
    """Dollar P&L of trading the signal: long if p > 0.5+margin, short if p < 0.5-margin, else flat.

    Each position of ``position_size`` dollars is held over the label horizon:
    P&L = position_size × fwd_return × direction − fees, fees = 2 × fee × position_size (taker in and out).
    ``fwd_return`` is fractional (close[t+h]/close[t] − 1); rows with a non-finite return are skipped.
    One definition for both models (XGBoost and LSTM evaluation, training reports, retrain gates).
    """
    p = np.asarray(p_up, dtype=np.float64)
    r = np.asarray(fwd_return, dtype=np.float64)
    if p.shape != r.shape:
        raise ValueError(f"p_up {p.shape} and fwd_return {r.shape} differ")
    pos = np.where(p > 0.5 + margin, 1.0, np.where(p < 0.5 - margin, -1.0, 0.0))
    ok = np.isfinite(r)
    pos, r = pos[ok], r[ok]
    gross = pos * r * position_size
    fees = np.abs(pos) * (2.0 * fee) * position_size
    n_trades = int(np.count_nonzero(pos))
    pnl = float((gross - fees).sum())
    return {"pnl_usd": pnl, "gross_usd": float(gross.sum()), "fees_usd": float(fees.sum()), "n_trades": n_trades,
            "n_long": int((pos > 0).sum()), "n_short": int((pos < 0).sum()),
            "pnl_per_trade_usd": pnl / n_trades if n_trades else 0.0,
            "hit_rate": float(np.mean((pos * r)[pos != 0] > 0)) if n_trades else float("nan")}


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to ``<path>.tmp``, fsync, rename over ``path``: a reader sees the old file or the new, never half."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def jsonable(x: Any) -> Any:
    """Plain JSON values from numpy scalars/containers; non-finite floats become None (JSON has no NaN)."""
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if isinstance(x, (np.floating, float)):
        v = float(x)
        return v if math.isfinite(v) else None
    if isinstance(x, np.integer):
        return int(x)
    return x


def load_meta_json(path: Path, what: str) -> Any:
    """Parse a model's metadata JSON; a missing or unreadable file becomes a ModelLoadError naming it."""
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ModelLoadError(f"{what} metadata missing: {path}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelLoadError(f"{what} metadata unreadable or corrupt: {path}: {e}") from None
