"""Training: klines -> features -> labels -> XGBoost + LSTM -> held-out evaluation -> registry.

One code path for `tradingd train`, the daemon's first-run bootstrap, the background retrainer and the
walk-forward backtest.

Labels (engines/labels.py) are "up enough to pay costs": a row whose forward move over the horizon is smaller
than the round-trip cost is neither a tradeable long nor a tradeable short, so it is left out of training;
the remaining rows are labelled 1 (up by more than the cost) or 0 (down by more than the cost). The models'
P(up) is thus P(up | moved enough to matter), symmetric around 0.5, which is what the optimizer's edge formula
(|p - 0.5| x 2 x expected move vs costs) needs. Horizons are per timeframe so that enough moves clear costs.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import structlog

from engines.data import Klines, resample
from engines.features import FEATURE_SCHEMA, batch_features
from engines.labels import make_labels, round_trip_cost
from engines.quantize import INT8_FILE, add_int8

log = structlog.get_logger(__name__)

DEFAULT_HORIZONS = {"1m": 15, "3m": 10, "5m": 6, "15m": 4, "30m": 2, "1h": 2, "2h": 1, "4h": 1, "1d": 1}


@dataclass(frozen=True)
class TrainSpec:
    timeframe: str
    horizon: int = 0                 # bars; 0 = DEFAULT_HORIZONS[timeframe]
    cost: float = round_trip_cost(0.001, 0.0001)
    val_frac: float = 0.15           # early-stopping window (after train)
    test_frac: float = 0.15          # held-out window (after val): the gate and the reported metrics
    position_size: float = 10_000.0  # quote notional used by the dollar objective and dollar P&L
    xgb_rounds: int = 1000
    xgb_early_stopping: int = 50
    lstm_epochs: int = 8
    lstm_hidden: int = 32
    lstm_seq_len: int = 32
    lstm_batch: int = 512
    threads: int = 0                 # 0 = library default
    seed: int = 0
    lstm_int8: str = "dynamic"       # INT8 copy of the LSTM (engines.quantize): dynamic, static or none

    @property
    def h(self) -> int:
        return self.horizon or DEFAULT_HORIZONS.get(self.timeframe, 1)


@dataclass
class Dataset:
    X: np.ndarray          # (n, f) features of every bar
    y: np.ndarray          # (n,) 1 up-by-more-than-cost / 0 down-by-more-than-cost / -1 not tradeable or unknown
    fwd: np.ndarray        # (n,) forward log return over the horizon (NaN at the end)
    open_ns: np.ndarray
    close: np.ndarray


def build_dataset(k1m: Klines, spec: TrainSpec) -> Dataset:
    k = k1m if spec.timeframe == k1m.timeframe else resample(k1m, spec.timeframe)
    X = batch_features(k, spec.timeframe)
    lab = make_labels(k, horizon=spec.h, cost=0.0)
    fwd = lab.fwd_return
    y = np.full(len(k), -1, np.int8)
    ok = np.isfinite(fwd) & np.isfinite(X).all(axis=1)
    y[ok & (fwd > spec.cost)] = 1
    y[ok & (fwd < -spec.cost)] = 0
    return Dataset(X, y, fwd, np.asarray(k.open_ns), np.asarray(k.close))


def _splits(k1m: Klines, spec: TrainSpec):
    """The dataset and its time-ordered train/val/test rows (labels never cross a split: ``h`` rows are left
    out before each boundary). Refuses too little data."""
    ds = build_dataset(k1m, spec)
    n = len(ds.y)
    a, b = split_bounds(n, spec)
    h = spec.h
    tr, va, te = _rows(ds.y, 0, a - h), _rows(ds.y, a, b - h), _rows(ds.y, b, n)
    if len(tr) < 100 or len(va) < 20 or len(te) < 20:
        raise ValueError(f"{spec.timeframe}: too little labelled data (train {len(tr)}, val {len(va)}, "
                         f"test {len(te)} rows); need more history")
    return ds, h, a, b, tr, va, te


def split_bounds(n: int, spec: TrainSpec) -> tuple[int, int]:
    """Row indices where validation and test start: train [0, a), val [a+h, b), test [b+h, n)."""
    b = int(n * (1 - spec.test_frac))
    a = int(n * (1 - spec.test_frac - spec.val_frac))
    return a, b


@dataclass
class TrainOutcome:
    timeframe: str
    metrics: dict = field(default_factory=dict)
    data_window: dict = field(default_factory=dict)
    seconds: dict = field(default_factory=dict)
    drift: dict = field(default_factory=dict)  # kind -> engines.drift reference (goes into the manifest)


def _rows(y: np.ndarray, lo: int, hi: int) -> np.ndarray:
    idx = np.arange(max(lo, 0), max(hi, 0))
    return idx[y[idx] >= 0]


def naive_baseline(ds: Dataset, test_idx: np.ndarray, spec: TrainSpec) -> dict:
    """Previous-move sign (momentum): the naive model every learned one must beat."""
    from engines.xgb_model import binary_metrics, dollar_pnl
    prev = ds.X[test_idx, FEATURE_SCHEMA.names.index("ret_1")]
    p = np.where(prev > 0, 0.55, 0.45)
    m = binary_metrics(ds.y[test_idx], p)
    m["dollar"] = dollar_pnl(p, ds.fwd[test_idx], position_size=spec.position_size, fee=spec.cost / 2)
    return m


def train_timeframe(k1m: Klines, spec: TrainSpec, out_dir: Path,
                    progress: Callable[[str], None] | None = None) -> TrainOutcome:
    """Train both models for one timeframe into ``out_dir/xgboost`` and ``out_dir/lstm`` (staging dirs)."""
    from engines.lstm_model import LSTMModel, make_sequences
    from engines.xgb_model import XGBoostModel, binary_metrics, dollar_pnl

    say = progress or (lambda msg: None)
    out_dir = Path(out_dir)
    ds, h, a, b, tr, va, te = _splits(k1m, spec)
    outcome = TrainOutcome(spec.timeframe)
    outcome.data_window = {"symbol": k1m.symbol, "timeframe": spec.timeframe, "horizon": h, "cost": spec.cost,
                           "start_ns": int(ds.open_ns[0]), "end_ns": int(ds.open_ns[-1]),
                           "train_end_ns": int(ds.open_ns[a - 1]), "test_start_ns": int(ds.open_ns[b]),
                           "rows": {"train": len(tr), "val": len(va), "test": len(te)}}
    fee = spec.cost / 2

    # ---- XGBoost (seed params, dollar-profit objective)
    t0 = time.perf_counter()
    say(f"{spec.timeframe}: XGBoost on {len(tr)} rows")
    xgb = XGBoostModel(n_estimators=spec.xgb_rounds, seed=spec.seed,
                       **({"nthread": spec.threads} if spec.threads else {}))
    xgb.configure_for_dollar_profit(spec.position_size)
    xgb.set_feature_schema(list(FEATURE_SCHEMA.names), FEATURE_SCHEMA.hash)
    xgb.train(ds.X[tr], ds.y[tr], ds.X[va], ds.y[va], spec.xgb_early_stopping,
              fwd_return_train=ds.fwd[tr], fwd_return_val=ds.fwd[va])
    p_x = xgb.predict(ds.X[te])
    m_x = binary_metrics(ds.y[te], p_x)
    m_x["dollar"] = dollar_pnl(p_x, ds.fwd[te], position_size=spec.position_size, fee=fee)
    m_x["best_iteration"] = xgb.best_iteration
    xgb.save(out_dir / "xgboost", data_window=outcome.data_window)
    outcome.seconds["xgboost"] = time.perf_counter() - t0

    # ---- LSTM (sequences of the same features; windows ending at labelled rows)
    t0 = time.perf_counter()
    seqs, end = make_sequences(ds.X, spec.lstm_seq_len)
    pos = {int(e): i for i, e in enumerate(end)}

    def sel(rows):
        keep = [pos[int(r)] for r in rows if int(r) in pos]
        return seqs[keep], ds.y[end[keep]], end[keep]

    Xs_tr, ys_tr, _ = sel(tr)
    Xs_va, ys_va, _ = sel(va)
    Xs_te, ys_te, e_te = sel(te)
    say(f"{spec.timeframe}: LSTM on {len(ys_tr)} windows")
    lstm = LSTMModel(seq_len=spec.lstm_seq_len, hidden=spec.lstm_hidden, epochs=spec.lstm_epochs,
                     batch_size=spec.lstm_batch, seed=spec.seed)
    lstm.set_feature_schema(list(FEATURE_SCHEMA.names), FEATURE_SCHEMA.hash)
    lstm.build(ds.X.shape[1])
    lstm.train(Xs_tr, ys_tr.astype(np.float32), Xs_va, ys_va.astype(np.float32),
               on_epoch_end=lambda ep, m: say(f"{spec.timeframe}: LSTM epoch {ep} val_loss {m.get('val_loss', float('nan')):.4f}"))
    p_l = lstm.predict(Xs_te)
    m_l = binary_metrics(ys_te, p_l)
    m_l["dollar"] = dollar_pnl(p_l, ds.fwd[e_te], position_size=spec.position_size, fee=fee)
    lstm.save(out_dir / "lstm")
    add_int8(out_dir / "lstm", spec.lstm_int8, Xs_tr)  # calibration: training windows only
    outcome.seconds["lstm"] = time.perf_counter() - t0

    outcome.drift = drift_references(ds, tr, spec.h, spec.cost, {"xgboost": (p_x, ds.y[te]), "lstm": (p_l, ys_te)})
    base = naive_baseline(ds, te, spec)
    outcome.metrics = {"xgboost": m_x, "lstm": m_l, "baseline_momentum": base,
                       "test_up_fraction": float(ds.y[te].mean())}
    say(f"{spec.timeframe}: held-out AUC xgb {m_x['auc']:.3f} lstm {m_l['auc']:.3f} baseline {base['auc']:.3f}; "
        f"dollar P&L xgb {m_x['dollar']['pnl_usd']:.0f} lstm {m_l['dollar']['pnl_usd']:.0f} "
        f"baseline {base['dollar']['pnl_usd']:.0f}")
    return outcome


def drift_references(ds: Dataset, train_rows: np.ndarray, horizon: int, cost: float,
                     held_out: dict[str, tuple[np.ndarray, np.ndarray]]) -> dict[str, dict]:
    """The drift reference of each model (engines.drift): feature bins of the training rows, the model's
    predictions and labels on the held-out rows. A reference that cannot be built is left out (logged): the
    daemon then reports that model's drift as unmonitored rather than the training failing."""
    from engines.drift import build_reference, with_predictions
    try:
        base = build_reference(ds.X[train_rows], FEATURE_SCHEMA.names, horizon=horizon, cost=cost)
        return {kind: with_predictions(base, p, y) for kind, (p, y) in held_out.items()}
    except ValueError as e:
        log.warning("drift_reference_skipped", error=str(e))
        return {}


def sequence_ends(X: np.ndarray, rows: np.ndarray, seq_len: int) -> np.ndarray:
    """The rows (sorted) that end a full window of ``seq_len`` finite rows of ``X``: exactly the ``end_idx``
    ``lstm_model.make_sequences`` keeps, restricted to ``rows``, without building every window."""
    rows = np.asarray(rows, np.int64)
    bad = np.concatenate([[0], np.cumsum(~np.isfinite(X).all(axis=1), dtype=np.int64)])
    rows = rows[rows >= seq_len - 1]
    return rows[(bad[rows + 1] - bad[rows + 1 - seq_len]) == 0]


def windows_at(X: np.ndarray, ends: np.ndarray, seq_len: int) -> np.ndarray:
    """(len(ends), seq_len, n_features) float32 windows ``X[e-seq_len+1 : e+1]`` (as make_sequences builds)."""
    win = np.lib.stride_tricks.sliding_window_view(X, seq_len, axis=0)
    return np.ascontiguousarray(win[np.asarray(ends, np.int64) - (seq_len - 1)].transpose(0, 2, 1),
                                dtype=np.float32)


def train_timeframe_warm(k1m: Klines, spec: TrainSpec, out_dir: Path, prev_dir: Path, *,
                         xgb_rounds: int = 20, xgb_early_stopping: int = 10, lstm_epochs: int = 1,
                         kinds: tuple[str, ...] = ("xgboost", "lstm"),
                         progress: Callable[[str], None] | None = None) -> TrainOutcome:
    """Warm start for rolling (walk-forward) retraining: continue the models saved in ``prev_dir`` (by
    :func:`train_timeframe` or this function, on data that ENDS no later than ``k1m`` ends) on ``k1m``, with the
    same dataset, labels and train/val/test split as :func:`train_timeframe`, into ``out_dir/<kind>``.

    * XGBoost: up to ``xgb_rounds`` more trees on this window's training rows, early-stopped on its validation
      rows (``XGBoostModel.continue_training``);
    * LSTM: ``lstm_epochs`` epochs of fine-tuning (``LSTMModel.fine_tune``, standardisation kept) on the
      training windows the previous model did not fit (those after its ``train_end_ns``; all of them when
      that leaves fewer than 100).

    The caller owns the walk-forward guarantee: everything here (and in ``prev_dir``) precedes what it trades.
    ``data_window`` gains ``warm_start_from`` (the previous model's data window) so the lineage is recorded."""
    from engines.lstm_model import LSTMModel
    from engines.xgb_model import XGBoostModel, binary_metrics, dollar_pnl, read_meta

    say = progress or (lambda msg: None)
    out_dir, prev_dir = Path(out_dir), Path(prev_dir)
    ds, h, a, b, tr, va, te = _splits(k1m, spec)
    prev_window = (read_meta(prev_dir / "xgboost").get("data_window") or {}) if (prev_dir / "xgboost").is_dir() \
        else {}
    outcome = TrainOutcome(spec.timeframe)
    outcome.data_window = {"symbol": k1m.symbol, "timeframe": spec.timeframe, "horizon": h, "cost": spec.cost,
                           "start_ns": int(ds.open_ns[0]), "end_ns": int(ds.open_ns[-1]),
                           "train_end_ns": int(ds.open_ns[a - 1]), "test_start_ns": int(ds.open_ns[b]),
                           "rows": {"train": len(tr), "val": len(va), "test": len(te)},
                           "warm_start_from": {k: prev_window.get(k) for k in ("start_ns", "end_ns",
                                                                                "train_end_ns")}}
    if prev_window.get("end_ns") is not None and prev_window["end_ns"] > outcome.data_window["end_ns"]:
        raise ValueError(f"{spec.timeframe}: warm start from a model that saw data up to {prev_window['end_ns']}, "
                         f"after this window ends ({outcome.data_window['end_ns']})")
    fee = spec.cost / 2
    base = naive_baseline(ds, te, spec)
    outcome.metrics = {"baseline_momentum": base, "test_up_fraction": float(ds.y[te].mean())}

    if "xgboost" in kinds:
        t0 = time.perf_counter()
        xgb = XGBoostModel.load(prev_dir / "xgboost")
        n_prev = xgb.booster.num_boosted_rounds()
        say(f"{spec.timeframe}: XGBoost +{xgb_rounds} rounds on {len(tr)} rows (from {n_prev} trees)")
        xgb.continue_training(ds.X[tr], ds.y[tr], ds.X[va], ds.y[va], xgb_rounds, xgb_early_stopping,
                              fwd_return_train=ds.fwd[tr], fwd_return_val=ds.fwd[va])
        p_x = xgb.predict(ds.X[te])
        m_x = binary_metrics(ds.y[te], p_x)
        m_x["dollar"] = dollar_pnl(p_x, ds.fwd[te], position_size=spec.position_size, fee=fee)
        m_x["best_iteration"] = xgb.best_iteration
        m_x["warm_start"] = {"trees_before": n_prev, "trees_after": int(xgb.booster.num_boosted_rounds())}
        xgb.save(out_dir / "xgboost", data_window=outcome.data_window)
        outcome.metrics["xgboost"] = m_x
        outcome.seconds["xgboost"] = time.perf_counter() - t0

    if "lstm" in kinds:
        t0 = time.perf_counter()
        lstm = LSTMModel.load(prev_dir / "lstm")
        L = lstm.config.seq_len

        def sel(rows):  # the windows make_sequences(ds.X, L) would give for these end rows, built only for them
            e = sequence_ends(ds.X, rows, L)
            return windows_at(ds.X, e, L), ds.y[e], e

        prev_fit_end = prev_window.get("train_end_ns")
        fit = tr if prev_fit_end is None else tr[ds.open_ns[tr] > prev_fit_end]
        if len(fit) < 100:
            fit = tr
        Xs_tr, ys_tr, _ = sel(fit)
        Xs_va, ys_va, _ = sel(va)
        Xs_te, ys_te, e_te = sel(te)
        say(f"{spec.timeframe}: LSTM fine-tune {lstm_epochs} epoch(s) on {len(ys_tr)} windows")
        lstm.fine_tune(Xs_tr, ys_tr.astype(np.float32), Xs_va, ys_va.astype(np.float32), epochs=lstm_epochs)
        p_l = lstm.predict(Xs_te)
        m_l = binary_metrics(ys_te, p_l)
        m_l["dollar"] = dollar_pnl(p_l, ds.fwd[e_te], position_size=spec.position_size, fee=fee)
        m_l["warm_start"] = {"fine_tune_windows": int(len(ys_tr))}
        lstm.save(out_dir / "lstm")
        add_int8(out_dir / "lstm", spec.lstm_int8, Xs_tr)  # calibration: this window's fitted training windows
        outcome.metrics["lstm"] = m_l
        outcome.seconds["lstm"] = time.perf_counter() - t0
    return outcome


KINDS = ("xgboost", "lstm")


def library_versions() -> dict[str, str]:
    import importlib.metadata as md
    out = {}
    for name in ("numpy", "xgboost", "xgboost-cpu", "torch", "onnx", "onnxruntime"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            pass
    return out


def train_and_publish(k1m: Klines, spec: TrainSpec, registry, *, make_current: bool = True,
                      progress: Callable[[str], None] | None = None,
                      extra: dict | None = None) -> tuple[TrainOutcome, dict]:
    """Train one timeframe and publish both models to the registry; returns the outcome and VersionRefs.
    The manifest's ``extra`` holds the drift reference and ``extra`` given here (e.g. the retrain trigger)."""
    import tempfile
    with tempfile.TemporaryDirectory(prefix=f"tradingd-train-{spec.timeframe}-") as tmp:
        outcome = train_timeframe(k1m, spec, Path(tmp), progress)
        refs = publish_trained(outcome, Path(tmp), spec, registry, make_current=make_current, extra=extra)
    return outcome, refs


def publish_trained(outcome: TrainOutcome, staging: Path, spec: TrainSpec, registry, *,
                    make_current: bool = True, extra: dict | None = None) -> dict:
    """Publish what :func:`train_timeframe` wrote under ``staging`` (both kinds; the registry's atomic publish
    with checksums; each manifest's ``extra`` holds the model's drift reference and ``extra``). The ONE
    publication path, whether the training ran here or on a cluster worker."""
    refs = {}
    for kind in KINDS:
        refs[kind] = registry.publish(
            kind, spec.timeframe, Path(staging) / kind, feature_names=list(FEATURE_SCHEMA.names),
            schema_hash=FEATURE_SCHEMA.hash, data_window=outcome.data_window,
            metrics={"test": outcome.metrics[kind], "baseline": outcome.metrics["baseline_momentum"],
                     "train_seconds": outcome.seconds[kind]},
            library_versions=library_versions(), make_current=make_current,
            optional=(INT8_FILE,) if kind == "lstm" else (),
            extra={**({"drift": outcome.drift[kind]} if kind in outcome.drift else {}), **(extra or {})})
    return refs


def missing_models(registry, timeframes) -> list[str]:
    """Timeframes lacking a current version of either model."""
    return [tf for tf in timeframes if any(registry.current_version(tf, kind) is None for kind in KINDS)]
