"""XGBoost direction model: P(next move up) from one feature row.

Training uses a time-ordered validation split (no shuffling across time) with early stopping; the saved booster
is cut to the best iteration, so every backend (native, compiled walker) evaluates exactly the same trees.

Files written by :meth:`XGBoostModel.save` into a version directory (never pickle):

* ``xgb_model.ubj`` — the booster in XGBoost's own UBJSON format (``.json`` also accepted by ``load``);
* ``xgb_meta.json`` — format version, feature names + schema hash, params, objective mode, best iteration,
  metrics, library versions and the sha256/size of the booster file (a truncated or swapped file is refused).

Prediction is always ``sigmoid(raw margin)``: a model trained with the custom dollar-profit objective
(:func:`dollar_logistic_objective`) is stored as an ordinary ``binary:logistic`` booster (the custom ``obj=``
only supplies gradients), and we never depend on the booster's own output transform.

Device: ``device="cuda"`` only on a CUDA build of xgboost (``xgboost.build_info()["USE_CUDA"]``) with a working
GPU, else ``"cpu"``. The deprecated ``tree_method="gpu_hist"`` is never used: it is spelled
``tree_method="hist", device="cuda"`` since XGBoost 2.0 (``configure`` translates it if a caller passes it).
"""
from __future__ import annotations

import functools
import hashlib
import json
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import structlog

from engines.base import ModelLoadError
from engines.metrics_common import (  # noqa: F401 - re-exported: callers import them from here
    atomic_write_bytes, binary_metrics, jsonable, load_meta_json, sha256_file, dollar_pnl,
    time_split,
)

__all__ = [
    "XGBoostModel", "TrainResult", "time_split", "binary_metrics", "dollar_pnl", "dollar_weights",
    "dollar_logistic_objective", "logloss_metric", "feature_stats", "select_device", "sigmoid", "read_meta",
    "sha256_file", "verified_model_path", "booster_device",
    "MODEL_FILE", "META_FILE", "FORMAT_VERSION", "SEED_PARAMS",
]

log = structlog.get_logger(__name__)

MODEL_FILE = "xgb_model.ubj"
META_FILE = "xgb_meta.json"
FORMAT_VERSION = 1

# The seed's parameters (issue #3). ``num_boost_round`` is ours to pass to xgb.train, not a booster param.
SEED_PARAMS: dict[str, Any] = {
    "max_depth": 6,
    "learning_rate": 0.01,
    "num_boost_round": 1000,
    "subsample": 0.8,
    "colsample_bytree": 0.8,
    "objective": "binary:logistic",
    "grow_policy": "lossguide",
    "max_leaves": 256,
    "eval_metric": "logloss",
    "tree_method": "hist",
}


# ----------------------------------------------------------------------------------------------- pure helpers
def sigmoid(m: np.ndarray) -> np.ndarray:
    m = np.asarray(m, dtype=np.float64)
    return 1.0 / (1.0 + np.exp(-m))


def dollar_weights(fwd_return: np.ndarray, position_size: float) -> np.ndarray:
    """Per-row weight = dollars a position of ``position_size`` would make or lose (|r| × size), normalised to
    mean 1 so the learning rate keeps its meaning. Non-finite returns weigh 0; all-zero moves fall back to 1."""
    r = np.asarray(fwd_return, dtype=np.float64)
    w = np.where(np.isfinite(r), np.abs(r) * float(position_size), 0.0)
    m = w.mean() if w.size else 0.0
    if not m > 0:
        return np.ones_like(w)
    return w / m


def dollar_logistic_objective(preds: np.ndarray, dtrain) -> tuple[np.ndarray, np.ndarray]:
    """Custom ``obj=`` for xgb.train: logistic-loss gradient/hessian weighted by the row's dollar move.

    ``preds`` are raw margins (XGBoost passes untransformed predictions to custom objectives); the dollar
    weights are the training DMatrix's weights (set by :meth:`XGBoostModel.train` from ``dollar_weights``).
    A row whose move is worth many dollars pulls the trees harder than a flat minute.
    """
    y = dtrain.get_label()
    w = dtrain.get_weight()
    p = sigmoid(preds)
    if w.size == 0:
        w = np.ones_like(p)
    grad = w * (p - y)
    hess = np.maximum(w * p * (1.0 - p), 1e-16)
    return grad, hess


def logloss_metric(preds: np.ndarray, dmat) -> tuple[str, float]:
    """``custom_metric`` for the custom objective: (weighted) logloss of sigmoid(raw margin)."""
    y = dmat.get_label()
    w = dmat.get_weight()
    p = np.clip(sigmoid(preds), 1e-7, 1 - 1e-7)
    ll = -(y * np.log(p) + (1 - y) * np.log(1 - p))
    if w.size:
        return "dollar_logloss", float(np.sum(w * ll) / max(np.sum(w), 1e-300))
    return "logloss", float(ll.mean())


@functools.lru_cache(maxsize=1)
def select_device() -> str:
    """``"cuda"`` on a CUDA build of xgboost with a GPU that actually trains a 1-round model, else ``"cpu"``."""
    import xgboost as xgb
    info = xgb.build_info()
    reason = "xgboost built without CUDA"
    if info.get("USE_CUDA"):
        try:
            d = xgb.DMatrix(np.array([[0.0], [1.0]], np.float32), label=np.array([0.0, 1.0]))
            xgb.train({"device": "cuda", "tree_method": "hist", "verbosity": 0}, d, 1)
            log.info("xgb_device_selected", device="cuda", reason="CUDA build and GPU probe succeeded")
            return "cuda"
        except Exception as e:  # noqa: BLE001 - any failure means no usable GPU
            reason = f"CUDA build but GPU probe failed: {e}"
    log.info("xgb_device_selected", device="cpu", reason=reason)
    return "cpu"


def booster_device(booster) -> str:
    """The device a booster really used, from its own configuration (``cpu`` or ``cuda``): XGBoost quietly
    trains on CPU when asked for ``cuda`` on a CPU-only wheel or a machine without a usable GPU."""
    cfg = json.loads(booster.save_config())
    dev = str(cfg.get("learner", {}).get("generic_param", {}).get("device", "cpu"))
    return "cuda" if dev.startswith("cuda") or dev.startswith("gpu") else "cpu"


def device_mismatch_reason(requested: str, actual: str) -> str:
    """Why XGBoost did not use ``requested`` ("" when it did)."""
    if requested.split(":")[0] == actual:
        return ""
    import xgboost as xgb
    if not xgb.build_info().get("USE_CUDA"):
        return (f"requested {requested} but xgboost {xgb.__version__} is built without CUDA (USE_CUDA=False; "
                f"the xgboost-cpu wheel?): trained on {actual}")
    return f"requested {requested} but XGBoost found no usable GPU: trained on {actual}"


def feature_stats(X: np.ndarray) -> dict[str, list[float]]:
    """Per-feature mean, std and NaN fraction of the training rows: engines warm up on inputs drawn from
    these (representative magnitudes and missing values) instead of zeros."""
    X = np.asarray(X, dtype=np.float64)
    nan = np.isnan(X)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)   # all-NaN columns -> 0
        mean = np.nan_to_num(np.nanmean(X, axis=0))
        std = np.nan_to_num(np.nanstd(X, axis=0))
    return {"mean": mean.tolist(), "std": std.tolist(), "nan_frac": nan.mean(axis=0).tolist()}


def library_versions() -> dict[str, str]:
    import xgboost as xgb
    return {"xgboost": xgb.__version__, "numpy": np.__version__}


def read_meta(version_dir: Path) -> dict[str, Any]:
    """Read and check ``xgb_meta.json``; every problem becomes a ModelLoadError naming the file."""
    path = Path(version_dir) / META_FILE
    meta = load_meta_json(path, "XGBoost model")
    if not isinstance(meta, dict) or meta.get("format") != FORMAT_VERSION:
        raise ModelLoadError(f"{path}: not an XGBoost model metadata file of format {FORMAT_VERSION} "
                             f"(found format {meta.get('format') if isinstance(meta, dict) else '?'})")
    for key in ("model_file", "sha256", "size", "n_features", "feature_names"):
        if key not in meta:
            raise ModelLoadError(f"{path}: missing key {key!r}")
    return meta


def verified_model_path(version_dir: Path, meta: dict[str, Any]) -> Path:
    """The booster file, after checking size and sha256 against the metadata (ModelLoadError otherwise)."""
    path = Path(version_dir) / meta["model_file"]
    if not path.is_file():
        raise ModelLoadError(f"XGBoost model file missing: {path}")
    size = path.stat().st_size
    if size != meta["size"]:
        raise ModelLoadError(f"XGBoost model file truncated or altered: {path} is {size} bytes, "
                             f"metadata says {meta['size']}")
    got = sha256_file(path)
    if got != meta["sha256"]:
        raise ModelLoadError(f"XGBoost model file corrupt: {path} sha256 {got[:12]}… != recorded "
                             f"{str(meta['sha256'])[:12]}…")
    return path


# ----------------------------------------------------------------------------------------------- the model
@dataclass(frozen=True)
class TrainResult:
    best_iteration: int          # 0-based index of the best round
    rounds_used: int             # trees kept = best_iteration + 1
    rounds_run: int              # rounds actually boosted before early stopping fired
    best_score: float
    seconds: float
    device: str                  # the device XGBoost actually trained on (read back from the booster)
    objective: str               # "binary:logistic" or "dollar_logistic"
    device_requested: str = ""
    device_reason: str = ""      # why ``device`` differs from ``device_requested`` ("" when it does not)


class XGBoostModel:
    """Seed-compatible XGBoost wrapper: configure → train → predict/evaluate → save/load."""

    def __init__(self, device: str | None = None, **params: Any) -> None:
        self._device = device
        self.params: dict[str, Any] = dict(SEED_PARAMS)
        self.num_boost_round: int = int(self.params.pop("num_boost_round"))
        self.custom_objective = False
        self.position_size: float | None = None
        self.booster = None
        self.feature_names: list[str] = []
        self.schema_hash: str = ""
        self.best_iteration: int | None = None
        self.metrics: dict[str, Any] = {}
        self.train_result: TrainResult | None = None
        self.feature_stats: dict[str, list[float]] = {}
        self.device_reason = ""
        if params:
            self.configure(**params)

    @property
    def device(self) -> str:
        if self._device is None:
            self._device = select_device()
        return self._device

    # -------------------------------------------------------------------------------------------- config
    def configure(self, **params: Any) -> "XGBoostModel":
        """Override booster params (seed defaults otherwise). ``n_estimators``/``num_boost_round`` set the
        round budget; ``gpu_hist`` is translated to ``tree_method=hist`` + ``device=cuda``."""
        params = dict(params)
        for k in ("n_estimators", "num_boost_round"):
            if k in params:
                n = int(params.pop(k))
                if n < 1:
                    raise ValueError(f"{k} must be >= 1, got {n}")
                self.num_boost_round = n
        if params.get("tree_method") == "gpu_hist":
            params["tree_method"] = "hist"
            params.setdefault("device", "cuda")
        if "device" in params:
            self._device = str(params.pop("device"))
        if "learning_rate" in params and not 0 < float(params["learning_rate"]) <= 1:
            raise ValueError(f"learning_rate must be in (0, 1], got {params['learning_rate']}")
        self.params.update(params)
        return self

    def configure_for_dollar_profit(self, position_size: float = 10_000.0) -> "XGBoostModel":
        """Train with :func:`dollar_logistic_objective`: rows weighted by |fwd_return| × position_size."""
        if not position_size > 0:
            raise ValueError("position_size must be > 0")
        self.custom_objective = True
        self.position_size = float(position_size)
        return self

    def set_feature_schema(self, names: list[str], schema_hash: str = "") -> None:
        self.feature_names = list(names)
        self.schema_hash = schema_hash

    def _booster_params(self) -> dict[str, Any]:
        p = dict(self.params)
        p["device"] = self.device
        if self.custom_objective:
            # the booster stays binary:logistic (so its base margin is logit(0.5) = 0 and its saved form is an
            # ordinary model); gradients come from obj=, the metric from custom_metric=
            p["objective"] = "binary:logistic"
            p.pop("eval_metric", None)
            p["disable_default_eval_metric"] = 1
        return p

    # -------------------------------------------------------------------------------------------- training
    @staticmethod
    def _check_xy(X: np.ndarray, y: np.ndarray, name: str) -> tuple[np.ndarray, np.ndarray]:
        X = np.asarray(X)
        y = np.asarray(y, dtype=np.float64)
        if X.ndim != 2:
            raise ValueError(f"{name}: X must be 2-D, got shape {X.shape}")
        if y.shape != (X.shape[0],):
            raise ValueError(f"{name}: y shape {y.shape} does not match {X.shape[0]} rows")
        if not np.isin(y, (0.0, 1.0)).all():
            raise ValueError(f"{name}: labels must be 0/1")
        if np.isinf(X).any():
            raise ValueError(f"{name}: X contains inf (use NaN for missing values)")
        return X, y

    def train(self, X_train: np.ndarray, y_train: np.ndarray, X_val: np.ndarray, y_val: np.ndarray,
              early_stopping_rounds: int | None = 50, *, fwd_return_train: np.ndarray | None = None,
              fwd_return_val: np.ndarray | None = None, verbose_eval: bool | int = False,
              _xgb_model: Any = None, _n_prev: int = 0) -> TrainResult:
        """Boost on the training rows, early-stop on the (later-in-time) validation rows.

        The caller splits by time (:func:`time_split`); nothing is shuffled here. With the dollar-profit
        objective, ``fwd_return_train``/``fwd_return_val`` are required (they weight the rows).
        The kept booster is cut to the best iteration (``early_stopping_rounds=None`` keeps every round).
        """
        import xgboost as xgb
        X_train, y_train = self._check_xy(X_train, y_train, "train")
        X_val, y_val = self._check_xy(X_val, y_val, "val")
        if X_train.shape[1] != X_val.shape[1]:
            raise ValueError(f"train has {X_train.shape[1]} features, val has {X_val.shape[1]}")
        if self.feature_names and len(self.feature_names) != X_train.shape[1]:
            raise ValueError(f"{len(self.feature_names)} feature names for {X_train.shape[1]} columns")
        if not self.feature_names:
            self.feature_names = [f"f{i}" for i in range(X_train.shape[1])]
        w_tr = w_va = None
        if self.custom_objective:
            if fwd_return_train is None or fwd_return_val is None:
                raise ValueError("dollar-profit objective needs fwd_return_train and fwd_return_val")
            w_tr = dollar_weights(fwd_return_train, self.position_size)
            w_va = dollar_weights(fwd_return_val, self.position_size)
        dtr = xgb.DMatrix(X_train, label=y_train, weight=w_tr, missing=np.nan)
        dva = xgb.DMatrix(X_val, label=y_val, weight=w_va, missing=np.nan)
        params = self._booster_params()
        t0 = time.perf_counter()
        kwargs: dict[str, Any] = {}
        if self.custom_objective:
            kwargs = {"obj": dollar_logistic_objective, "custom_metric": logloss_metric}
        if _xgb_model is not None:
            kwargs["xgb_model"] = _xgb_model  # continue_training: boost on top of the existing trees
        booster = xgb.train(params, dtr, num_boost_round=self.num_boost_round, evals=[(dva, "val")],
                            early_stopping_rounds=early_stopping_rounds, verbose_eval=verbose_eval, **kwargs)
        seconds = time.perf_counter() - t0
        rounds_run = booster.num_boosted_rounds()
        best = int(booster.best_iteration) if early_stopping_rounds else rounds_run - 1
        best = max(best, _n_prev)
        best_score = float(booster.best_score) if early_stopping_rounds else float("nan")
        self.booster = booster[: best + 1]            # keep only the trees that early stopping chose
        self.feature_stats = feature_stats(X_train)
        self.best_iteration = best
        requested = str(params["device"])
        actual = booster_device(booster)
        why = device_mismatch_reason(requested, actual)
        if why:
            log.warning("xgb_device_fallback", requested=requested, device=actual, reason=why)
            self._device = actual  # later boosters and predictions say what really runs
        self.device_reason = why
        self.train_result = TrainResult(best_iteration=best, rounds_used=best + 1, rounds_run=rounds_run,
                                        best_score=best_score, seconds=seconds, device=actual,
                                        objective="dollar_logistic" if self.custom_objective else "binary:logistic",
                                        device_requested=requested, device_reason=why)
        log.info("xgb_trained", device=actual, rounds_used=best + 1, rounds_run=rounds_run,
                 best_score=best_score, seconds=round(seconds, 3), custom_objective=self.custom_objective,
                 n_train=int(X_train.shape[0]), n_val=int(X_val.shape[0]))
        return self.train_result

    def continue_training(self, X_train: np.ndarray, y_train: np.ndarray, X_val: np.ndarray, y_val: np.ndarray,
                          rounds: int, early_stopping_rounds: int | None = 10, *,
                          fwd_return_train: np.ndarray | None = None,
                          fwd_return_val: np.ndarray | None = None) -> TrainResult:
        """Warm start: add up to ``rounds`` trees to the current booster (kept as is), fitted on these rows and
        early-stopped on the (later) validation rows; the kept booster is cut to the best iteration, which is
        never before the existing trees. Used by the walk-forward backtest to roll a model to the next window
        instead of retraining it from scratch; the caller guarantees the rows all precede what it will trade."""
        booster = self._need_booster()
        n_prev = booster.num_boosted_rounds()
        saved = self.num_boost_round
        self.num_boost_round = int(rounds)
        try:
            return self.train(X_train, y_train, X_val, y_val, early_stopping_rounds,
                              fwd_return_train=fwd_return_train, fwd_return_val=fwd_return_val,
                              _xgb_model=booster, _n_prev=n_prev)
        finally:
            self.num_boost_round = saved

    # -------------------------------------------------------------------------------------------- inference
    def _need_booster(self):
        if self.booster is None:
            raise RuntimeError("model is not trained or loaded")
        return self.booster

    def predict_margin(self, X: np.ndarray) -> np.ndarray:
        b = self._need_booster()
        X = np.asarray(X)
        if X.ndim != 2 or X.shape[1] != b.num_features():
            raise ValueError(f"expected (n, {b.num_features()}) features, got {X.shape}")
        return np.asarray(b.inplace_predict(X, predict_type="margin", missing=np.nan), dtype=np.float64)

    def predict(self, X: np.ndarray) -> np.ndarray:
        """P(up) per row = sigmoid(raw margin) (same for built-in and custom objective)."""
        return sigmoid(self.predict_margin(X))

    def evaluate(self, X: np.ndarray, y: np.ndarray, fwd_return: np.ndarray | None = None, *,
                 position_size: float = 10_000.0, fee: float = 0.001, margin: float = 0.0) -> dict[str, Any]:
        """AUC, logloss, accuracy and (given forward returns) the dollar P&L of trading the signals."""
        p = self.predict(X)
        out: dict[str, Any] = binary_metrics(y, p)
        if fwd_return is not None:
            out.update(dollar_pnl(p, fwd_return, position_size=position_size, fee=fee, margin=margin))
        return out

    def feature_importance(self, importance_type: str = "gain") -> dict[str, float]:
        """Importance per feature name (features never used in a split get 0.0)."""
        b = self._need_booster()
        raw = b.get_score(importance_type=importance_type)
        names = self.feature_names or [f"f{i}" for i in range(b.num_features())]
        out = {n: 0.0 for n in names}
        for k, v in raw.items():
            # boosters trained without feature names report "f<i>"
            if k in out:
                out[k] = float(v)
            elif k.startswith("f") and k[1:].isdigit() and int(k[1:]) < len(names):
                out[names[int(k[1:])]] += float(v)
        return out

    # -------------------------------------------------------------------------------------------- persistence
    def save(self, version_dir: Path | str, *, fmt: str = "ubj", data_window: dict | None = None) -> Path:
        """Write the booster (UBJSON or JSON) + ``xgb_meta.json`` (with the booster's sha256) and fsync."""
        b = self._need_booster()
        if fmt not in ("ubj", "json"):
            raise ValueError("fmt must be 'ubj' or 'json'")
        d = Path(version_dir)
        d.mkdir(parents=True, exist_ok=True)
        name = MODEL_FILE if fmt == "ubj" else "xgb_model.json"
        raw = bytes(b.save_raw(raw_format=fmt))
        atomic_write_bytes(d / name, raw)
        meta = {
            "format": FORMAT_VERSION,
            "kind": "xgboost",
            "model_file": name,
            "sha256": hashlib.sha256(raw).hexdigest(),
            "size": len(raw),
            "n_features": int(b.num_features()),
            "n_trees": int(b.num_boosted_rounds()),
            "feature_names": self.feature_names or [f"f{i}" for i in range(b.num_features())],
            "schema_hash": self.schema_hash,
            "output": "sigmoid(margin)",
            "objective": "dollar_logistic" if self.custom_objective else "binary:logistic",
            "position_size": self.position_size,
            "params": {k: v for k, v in self.params.items()},
            "num_boost_round": self.num_boost_round,
            "best_iteration": self.best_iteration,
            "device_trained": self.train_result.device if self.train_result else None,
            "device_reason": self.train_result.device_reason if self.train_result else "",
            "metrics": jsonable(self.metrics),
            "feature_stats": jsonable(self.feature_stats),
            "data_window": data_window,
            "library_versions": library_versions(),
        }
        atomic_write_bytes(d / META_FILE, json.dumps(meta, indent=2, sort_keys=True).encode())
        log.info("xgb_saved", dir=str(d), file=name, bytes=len(raw), trees=meta["n_trees"])
        return d

    @classmethod
    def load(cls, version_dir: Path | str, device: str | None = None) -> "XGBoostModel":
        """Load a saved model; a missing/corrupt/truncated file raises ModelLoadError (never a crash)."""
        import xgboost as xgb
        d = Path(version_dir)
        meta = read_meta(d)
        path = verified_model_path(d, meta)
        m = cls(device=device)
        try:
            booster = xgb.Booster()
            booster.load_model(bytearray(path.read_bytes()))
        except xgb.core.XGBoostError as e:
            raise ModelLoadError(f"XGBoost could not parse {path}: {str(e).splitlines()[0]}") from None
        if booster.num_features() != meta["n_features"]:
            raise ModelLoadError(f"{path}: booster has {booster.num_features()} features, metadata says "
                                 f"{meta['n_features']}")
        booster.set_param({"device": m.device})
        m.booster = booster
        m.feature_names = list(meta["feature_names"])
        m.schema_hash = meta.get("schema_hash", "")
        m.custom_objective = meta.get("objective") == "dollar_logistic"
        m.position_size = meta.get("position_size")
        m.best_iteration = meta.get("best_iteration")
        m.metrics = meta.get("metrics", {})
        m.feature_stats = meta.get("feature_stats") or {}
        m.params.update(meta.get("params", {}))
        m.num_boost_round = int(meta.get("num_boost_round", m.num_boost_round))
        return m

