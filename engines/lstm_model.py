"""LSTM direction model (PyTorch): training with time-ordered splits, early stopping, resumable checkpoints,
evaluation in AUC / log-loss / accuracy / dollars, and export to files every backend can load.

Version-directory layout written by :meth:`LSTMModel.save` (no pickled objects anywhere):

* ``lstm.json``  — config, feature names/schema hash, n_features, standardisation stats, metrics, and the
  sha256 of each weight file (so a truncated or swapped file is refused at load time);
* ``lstm.pt``    — ``state_dict`` only (read with ``torch.load(weights_only=True)``);
* ``lstm.onnx``  — the same network with standardisation and the sigmoid inside the graph (ONNX ``LSTM`` op);
* ``lstm.int8.onnx`` — optional, its INT8 copy, added by training (:mod:`engines.quantize`), listed in ``files``.

Standardisation (mean/std from the training rows only) lives in the network as buffers, so every backend —
torch, ONNX Runtime, TensorRT — applies it identically: inputs are raw features.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np

from engines.base import ModelLoadError
from engines.metrics_common import (  # noqa: F401 - re-exported: callers import them from here
    atomic_write_bytes, binary_metrics, jsonable, load_meta_json, sha256_file, dollar_pnl,
    time_split,
)

__all__ = [
    "LSTMConfig", "LSTMModel", "TrainResult", "make_sequences", "time_split", "dollar_pnl", "binary_metrics",
    "read_meta", "sha256_file", "META_FILE", "WEIGHTS_FILE", "ONNX_FILE", "FORMAT_VERSION",
]

META_FILE = "lstm.json"
WEIGHTS_FILE = "lstm.pt"
ONNX_FILE = "lstm.onnx"
CHECKPOINT_FILE = "checkpoint.pt"
FORMAT_VERSION = 1
INPUT_NAME = "x"
OUTPUT_NAME = "p_up"
# Keys that define the network's shape: a checkpoint or weight file must agree on them to be loaded.
ARCH_KEYS = ("seq_len", "hidden", "layers")


@dataclass(frozen=True)
class LSTMConfig:
    seq_len: int = 32
    hidden: int = 64
    layers: int = 2
    dropout: float = 0.1
    lr: float = 1e-3
    weight_decay: float = 0.0
    batch_size: int = 256
    epochs: int = 20
    patience: int = 3
    grad_clip: float = 1.0
    mixed_precision: bool = True      # only acts on CUDA; CPU stays fp32
    amp_dtype: str = "auto"           # auto (bf16 where supported, else fp16), bfloat16, or float16 (+GradScaler)
    seed: int = 0

    def validate(self) -> None:
        checks = {
            "seq_len": self.seq_len >= 1, "hidden": self.hidden >= 1, "layers": self.layers >= 1,
            "dropout": 0.0 <= self.dropout < 1.0, "lr": self.lr > 0, "weight_decay": self.weight_decay >= 0,
            "batch_size": self.batch_size >= 1, "epochs": self.epochs >= 1, "patience": self.patience >= 1,
            "grad_clip": self.grad_clip >= 0, "amp_dtype": self.amp_dtype in ("auto", "bfloat16", "float16"),
        }
        bad = [k for k, ok in checks.items() if not ok]
        if bad:
            raise ValueError(f"invalid LSTM parameter(s) {bad}: {({k: getattr(self, k) for k in bad})}")


# ----------------------------------------------------------------------------------------------- pure helpers
def make_sequences(X: np.ndarray, seq_len: int, *, drop_nonfinite: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Windows ``X[t-seq_len+1 : t+1]`` for every t; the window ending at t predicts the label at t.

    Returns ``(seqs (m, seq_len, n_features) float32, end_idx (m,) int64)``; use ``y[end_idx]`` as targets.
    Windows containing a NaN/inf (feature warm-up rows) are dropped when ``drop_nonfinite``.
    """
    X = np.asarray(X)
    if X.ndim != 2:
        raise ValueError(f"X must be 2-D (rows, features), got shape {X.shape}")
    if seq_len < 1:
        raise ValueError("seq_len must be >= 1")
    n = X.shape[0]
    if n < seq_len:
        return np.empty((0, seq_len, X.shape[1]), np.float32), np.empty(0, np.int64)
    end_idx = np.arange(seq_len - 1, n, dtype=np.int64)
    if drop_nonfinite:
        bad_row = ~np.isfinite(X).all(axis=1)
        # a window is bad when any of its rows is bad: rolling sum of bad rows over seq_len
        c = np.concatenate([[0], np.cumsum(bad_row, dtype=np.int64)])
        bad_win = (c[end_idx + 1] - c[end_idx + 1 - seq_len]) > 0
        end_idx = end_idx[~bad_win]
    win = np.lib.stride_tricks.sliding_window_view(X, seq_len, axis=0)  # (n-seq_len+1, f, seq_len), a view
    seqs = np.ascontiguousarray(win[end_idx - (seq_len - 1)].transpose(0, 2, 1), dtype=np.float32)
    return seqs, end_idx


def read_meta(version_dir: Path) -> dict[str, Any]:
    """Read and check ``lstm.json``; every problem becomes a ModelLoadError naming the file."""
    path = Path(version_dir) / META_FILE
    meta = load_meta_json(path, "LSTM model")
    if not isinstance(meta, dict) or meta.get("format") != FORMAT_VERSION:
        raise ModelLoadError(f"{path}: not an LSTM model file of format {FORMAT_VERSION}")
    for key in ("config", "n_features", "files"):
        if key not in meta:
            raise ModelLoadError(f"{path}: missing key {key!r}")
    return meta


def verify_file(version_dir: Path, meta: dict[str, Any], name: str) -> Path:
    """Check a weight file against the sha256 recorded at save time (truncated/corrupt -> ModelLoadError)."""
    path = Path(version_dir) / name
    want = meta["files"].get(name)
    if want is None:
        raise ModelLoadError(f"{path}: not listed in {META_FILE} (model saved without it)")
    if not path.is_file():
        raise ModelLoadError(f"LSTM model file missing: {path}")
    got = sha256_file(path)
    if got != want:
        raise ModelLoadError(f"LSTM model file corrupt or truncated: {path} (sha256 {got[:12]}… != "
                             f"recorded {want[:12]}…, size {path.stat().st_size} bytes)")
    return path


# ---------------------------------------------------------------------------------------------------- network
def _torch():
    import torch
    return torch


def build_net(n_features: int, cfg: LSTMConfig):
    """The network: standardise (buffers) -> LSTM -> last hidden state -> linear logit."""
    torch = _torch()
    nn = torch.nn

    class LSTMNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("mean", torch.zeros(n_features))
            self.register_buffer("std", torch.ones(n_features))
            self.lstm = nn.LSTM(n_features, cfg.hidden, cfg.layers, batch_first=True,
                                dropout=cfg.dropout if cfg.layers > 1 else 0.0)
            self.head = nn.Linear(cfg.hidden, 1)

        def forward(self, x):  # x: (batch, seq_len, n_features) raw features -> logits (batch,)
            z = (x - self.mean) / self.std
            out, _ = self.lstm(z)
            return self.head(out[:, -1, :]).squeeze(-1)

    return LSTMNet()


def prob_module(net):
    """Wrap the logit network with a sigmoid: what inference backends run (P(up) per row)."""
    torch = _torch()

    class ProbNet(torch.nn.Module):
        def __init__(self, inner) -> None:
            super().__init__()
            self.net = inner

        def forward(self, x):
            return torch.sigmoid(self.net(x))

    return ProbNet(net)


def load_net(version_dir: Path, meta: dict[str, Any] | None = None, device: str = "cpu"):
    """Rebuild the network from ``lstm.pt`` (weights_only) + ``lstm.json``; errors -> ModelLoadError."""
    torch = _torch()
    version_dir = Path(version_dir)
    meta = meta or read_meta(version_dir)
    path = verify_file(version_dir, meta, WEIGHTS_FILE)
    cfg = _config_from_dict(meta["config"])
    try:
        state = torch.load(path, map_location=device, weights_only=True)
        net = build_net(int(meta["n_features"]), cfg)
        net.load_state_dict(state)
    except ModelLoadError:
        raise
    except Exception as e:  # torch raises RuntimeError/UnpicklingError/EOFError/zipfile errors
        raise ModelLoadError(f"LSTM weights unreadable: {path}: {type(e).__name__}: {e}") from None
    return net.to(device).eval()


def _config_from_dict(d: dict[str, Any]) -> LSTMConfig:
    known = {f.name for f in fields(LSTMConfig)}
    unknown = set(d) - known
    if unknown:
        raise ModelLoadError(f"unknown LSTM config keys {sorted(unknown)}")
    try:
        cfg = LSTMConfig(**d)
        cfg.validate()
    except (TypeError, ValueError) as e:
        raise ModelLoadError(f"bad LSTM config in model file: {e}") from None
    return cfg


# ----------------------------------------------------------------------------------------------------- model
@dataclass
class TrainResult:
    epochs_run: int
    best_epoch: int
    best_val_loss: float
    stopped_early: bool
    resumed_from_epoch: int
    seconds: float
    device: str
    precision: str
    history: list[dict[str, float]] = field(default_factory=list)


class LSTMModel:
    """Train/evaluate/save the LSTM (the seed's interface: configure → build → train → predict/evaluate)."""

    def __init__(self, device: str | None = None, **params: Any) -> None:
        self.config = LSTMConfig()
        self.n_features: int | None = None
        self.feature_names: list[str] = []
        self.schema_hash: str = ""
        self.metrics: dict[str, Any] = {}
        self.net = None
        self.optimizer = None
        self._device = device
        if params:
            self.configure(**params)

    # -- set-up
    @property
    def device(self) -> str:
        if self._device is None:
            torch = _torch()
            self._device = "cuda" if torch.cuda.is_available() else "cpu"
        return self._device

    def configure(self, **params: Any) -> "LSTMModel":
        """Set hyper-parameters (unknown names are an error). ``batch`` is accepted for ``batch_size``."""
        if "batch" in params:
            params["batch_size"] = params.pop("batch")
        known = {f.name for f in fields(LSTMConfig)}
        unknown = set(params) - known
        if unknown:
            raise ValueError(f"unknown LSTM parameter(s) {sorted(unknown)}; known: {sorted(known)}")
        cfg = replace(self.config, **params)
        cfg.validate()
        if self.net is not None and any(getattr(cfg, k) != getattr(self.config, k) for k in ARCH_KEYS):
            self.net = None  # architecture changed: must build again
        self.config = cfg
        return self

    def set_feature_schema(self, names: list[str], schema_hash: str = "") -> None:
        self.feature_names = list(names)
        self.schema_hash = schema_hash

    def build(self, n_features: int) -> "LSTMModel":
        torch = _torch()
        if n_features < 1:
            raise ValueError("n_features must be >= 1")
        torch.manual_seed(self.config.seed)
        self.n_features = int(n_features)
        self.net = build_net(self.n_features, self.config).to(self.device)
        self.optimizer = torch.optim.AdamW(self.net.parameters(), lr=self.config.lr,
                                           weight_decay=self.config.weight_decay)
        return self

    def _check_xy(self, X_train_seq, y_train, X_val_seq, y_val):
        """Validated float32 train/val windows and labels (same lengths, neither set empty)."""
        Xtr = self._check_seq(X_train_seq, "X_train_seq")
        Xva = self._check_seq(X_val_seq, "X_val_seq")
        ytr = np.asarray(y_train, dtype=np.float32).reshape(-1)
        yva = np.asarray(y_val, dtype=np.float32).reshape(-1)
        if len(ytr) != len(Xtr) or len(yva) != len(Xva):
            raise ValueError("X and y lengths differ")
        if len(Xtr) == 0 or len(Xva) == 0:
            raise ValueError("empty training or validation set")
        return Xtr, ytr, Xva, yva

    def _check_seq(self, X: np.ndarray, name: str) -> np.ndarray:
        X = np.asarray(X, dtype=np.float32)
        if X.ndim != 3 or X.shape[1] != self.config.seq_len:
            raise ValueError(f"{name} must be (n, seq_len={self.config.seq_len}, n_features), got {X.shape}")
        if self.n_features is not None and X.shape[2] != self.n_features:
            raise ValueError(f"{name} has {X.shape[2]} features, model expects {self.n_features}")
        if not np.isfinite(X).all():
            raise ValueError(f"{name} contains NaN/inf (drop warm-up windows with make_sequences)")
        return X

    # -- training
    def train(self, X_train_seq: np.ndarray, y_train: np.ndarray, X_val_seq: np.ndarray, y_val: np.ndarray, *,
              checkpoint_dir: Path | str | None = None, resume: bool = True,
              on_epoch_end: Callable[[int, dict[str, float]], None] | None = None) -> TrainResult:
        """Train on chronologically earlier windows, early-stop on the later validation windows.

        Mini-batches are shuffled within the training windows only. The best epoch's weights (lowest
        validation log-loss) are restored at the end. With ``checkpoint_dir`` the full state (weights,
        optimizer, epoch, best weights, history) is written atomically after every epoch and a later call
        resumes from it; per-epoch seeding makes a resumed run repeat the uninterrupted one.
        """
        torch = _torch()
        from engines.mixed_precision import MixedPrecisionAdapter

        cfg = self.config
        t0 = time.perf_counter()
        if self.net is None:
            self.build(np.asarray(X_train_seq).shape[-1])
        Xtr, ytr, Xva, yva = self._check_xy(X_train_seq, y_train, X_val_seq, y_val)

        # standardisation from training rows only: each window's last row is one distinct time step
        last = Xtr[:, -1, :].astype(np.float64)
        mean = last.mean(axis=0)
        std = last.std(axis=0)
        std = np.where(std > 1e-12, std, 1.0)
        with torch.no_grad():
            self.net.mean.copy_(torch.as_tensor(mean, dtype=torch.float32))
            self.net.std.copy_(torch.as_tensor(std, dtype=torch.float32))

        dev = self.device
        amp = MixedPrecisionAdapter(dev, prefer=cfg.amp_dtype)
        if cfg.mixed_precision:
            amp.enable()
        opt = amp.wrap_optimizer(self.optimizer)
        loss_fn = torch.nn.BCEWithLogitsLoss()

        Xtr_t = torch.from_numpy(Xtr).to(dev)
        ytr_t = torch.from_numpy(ytr).to(dev)
        Xva_t = torch.from_numpy(Xva).to(dev)
        yva_t = torch.from_numpy(yva).to(dev)

        start_epoch, best_val, best_epoch, bad_epochs = 1, math.inf, 0, 0
        best_state: dict | None = None
        history: list[dict[str, float]] = []
        ckpt_path = Path(checkpoint_dir) / CHECKPOINT_FILE if checkpoint_dir is not None else None
        resumed_from = 0
        if ckpt_path is not None and resume and ckpt_path.exists():
            ck = self._load_checkpoint(ckpt_path)
            self.net.load_state_dict(ck["model"])
            opt.load_state_dict(ck["optimizer"])
            start_epoch = int(ck["epoch"]) + 1
            best_val, best_epoch, bad_epochs = float(ck["best_val"]), int(ck["best_epoch"]), int(ck["bad_epochs"])
            best_state = ck["best_state"]
            history = list(ck["history"])
            resumed_from = int(ck["epoch"])

        stopped_early = bad_epochs >= cfg.patience
        epoch = start_epoch - 1
        n = len(Xtr)
        for epoch in range(start_epoch, cfg.epochs + 1):
            if stopped_early:
                break
            # per-epoch seeds: shuffling and dropout of epoch k do not depend on how we got to epoch k
            torch.manual_seed(cfg.seed * 100_003 + epoch)
            gen = torch.Generator().manual_seed(cfg.seed * 100_019 + epoch)
            perm = torch.randperm(n, generator=gen).to(dev)
            self.net.train()
            total, count = 0.0, 0
            for i in range(0, n, cfg.batch_size):
                idx = perm[i:i + cfg.batch_size]
                opt.zero_grad()
                with amp.autocast():
                    logits = self.net(Xtr_t[idx])
                loss = loss_fn(logits.float(), ytr_t[idx])
                opt.backward(loss)
                opt.step(clip=cfg.grad_clip, parameters=self.net.parameters())
                total += float(loss.detach()) * len(idx)
                count += len(idx)
            val_loss = self._loss_on(Xva_t, yva_t)
            rec = {"epoch": float(epoch), "train_loss": total / count, "val_loss": val_loss}
            history.append(rec)
            if val_loss < best_val - 1e-6:
                best_val, best_epoch, bad_epochs = val_loss, epoch, 0
                best_state = {k: v.detach().clone().cpu() for k, v in self.net.state_dict().items()}
            else:
                bad_epochs += 1
                stopped_early = bad_epochs >= cfg.patience
            if ckpt_path is not None:
                self._save_checkpoint(ckpt_path, epoch, opt, best_state, best_val, best_epoch, bad_epochs, history)
            if on_epoch_end is not None:
                on_epoch_end(epoch, rec)
        if best_state is not None:
            self.net.load_state_dict(best_state)
        self.net.eval()
        amp_status = amp.status()
        res = TrainResult(epochs_run=len(history), best_epoch=best_epoch, best_val_loss=best_val,
                          stopped_early=stopped_early, resumed_from_epoch=resumed_from,
                          seconds=time.perf_counter() - t0, device=dev, precision=amp_status["dtype"],
                          history=history)
        self.metrics["train"] = {k: v for k, v in asdict(res).items() if k != "history"}
        return res

    def fine_tune(self, X_train_seq: np.ndarray, y_train: np.ndarray, X_val_seq: np.ndarray, y_val: np.ndarray,
                  *, epochs: int = 1) -> TrainResult:
        """Warm start: continue training the current network (weights, optimizer state AND standardisation kept:
        the weights were learned on that scale) for ``epochs`` epochs on these windows; the epoch with the lowest
        validation loss is kept. Used by the walk-forward backtest to roll a model to the next window on the
        windows it has not fitted yet, instead of training from scratch."""
        torch = _torch()
        if self.net is None:
            raise RuntimeError("fine_tune needs a trained or loaded model")
        if self.optimizer is None:  # a loaded model: a fresh optimizer (its state is not saved)
            self.optimizer = torch.optim.AdamW(self.net.parameters(), lr=self.config.lr,
                                               weight_decay=self.config.weight_decay)
        if epochs < 1:
            raise ValueError("epochs must be >= 1")
        cfg = self.config
        t0 = time.perf_counter()
        Xtr, ytr, Xva, yva = self._check_xy(X_train_seq, y_train, X_val_seq, y_val)
        dev = self.device
        loss_fn = torch.nn.BCEWithLogitsLoss()
        Xtr_t, ytr_t = torch.from_numpy(Xtr).to(dev), torch.from_numpy(ytr).to(dev)
        Xva_t, yva_t = torch.from_numpy(Xva).to(dev), torch.from_numpy(yva).to(dev)
        best_val, best_epoch = self._loss_on(Xva_t, yva_t), 0   # epoch 0 = the weights as handed over
        best_state = {k: v.detach().clone() for k, v in self.net.state_dict().items()}
        history: list[dict[str, float]] = []
        n = len(Xtr)
        for epoch in range(1, epochs + 1):
            torch.manual_seed(cfg.seed * 100_003 + 7919 + epoch)
            gen = torch.Generator().manual_seed(cfg.seed * 100_019 + 7919 + epoch)
            perm = torch.randperm(n, generator=gen).to(dev)
            self.net.train()
            total = 0.0
            for i in range(0, n, cfg.batch_size):
                idx = perm[i:i + cfg.batch_size]
                self.optimizer.zero_grad()
                loss = loss_fn(self.net(Xtr_t[idx]).float(), ytr_t[idx])
                loss.backward()
                if cfg.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(self.net.parameters(), cfg.grad_clip)
                self.optimizer.step()
                total += float(loss.detach()) * len(idx)
            val_loss = self._loss_on(Xva_t, yva_t)
            history.append({"epoch": float(epoch), "train_loss": total / n, "val_loss": val_loss})
            if val_loss < best_val - 1e-6:
                best_val, best_epoch = val_loss, epoch
                best_state = {k: v.detach().clone() for k, v in self.net.state_dict().items()}
        self.net.load_state_dict(best_state)
        self.net.eval()
        res = TrainResult(epochs_run=len(history), best_epoch=best_epoch, best_val_loss=best_val,
                          stopped_early=False, resumed_from_epoch=0, seconds=time.perf_counter() - t0, device=dev,
                          precision="float32", history=history)
        self.metrics["fine_tune"] = {k: v for k, v in asdict(res).items() if k != "history"}
        return res

    def _loss_on(self, X_t, y_t) -> float:
        torch = _torch()
        self.net.eval()
        total = 0.0
        with torch.inference_mode():
            for i in range(0, len(X_t), 4096):
                logits = self.net(X_t[i:i + 4096]).float()
                total += float(torch.nn.functional.binary_cross_entropy_with_logits(
                    logits, y_t[i:i + 4096], reduction="sum"))
        return total / len(X_t)

    def _save_checkpoint(self, path: Path, epoch: int, opt, best_state, best_val, best_epoch, bad_epochs,
                         history) -> None:
        import io
        torch = _torch()
        path.parent.mkdir(parents=True, exist_ok=True)
        buf = io.BytesIO()
        torch.save({
            "format": FORMAT_VERSION, "epoch": epoch,
            "config": asdict(self.config), "n_features": self.n_features,
            "model": self.net.state_dict(), "optimizer": opt.state_dict(),
            "best_state": best_state, "best_val": best_val, "best_epoch": best_epoch,
            "bad_epochs": bad_epochs, "history": history,
        }, buf)
        atomic_write_bytes(path, buf.getvalue())

    def _load_checkpoint(self, path: Path) -> dict:
        torch = _torch()
        try:
            ck = torch.load(path, map_location=self.device, weights_only=True)
        except Exception as e:
            raise ModelLoadError(f"checkpoint unreadable: {path}: {type(e).__name__}: {e}") from None
        if ck.get("format") != FORMAT_VERSION or ck.get("n_features") != self.n_features:
            raise ModelLoadError(f"checkpoint {path} is for another model (n_features "
                                 f"{ck.get('n_features')} != {self.n_features})")
        saved = ck.get("config", {})
        diff = [k for k in ARCH_KEYS if saved.get(k) != getattr(self.config, k)]
        if diff:
            raise ModelLoadError(f"checkpoint {path} has a different architecture ({diff}); "
                                 f"delete it or use another checkpoint_dir")
        return ck

    # -- inference / evaluation
    def predict(self, X_seq: np.ndarray, batch_size: int = 4096) -> np.ndarray:
        """P(up) per window, float64 shape (n,)."""
        torch = _torch()
        if self.net is None:
            raise RuntimeError("model not built/trained/loaded")
        X = self._check_seq(X_seq, "X_seq")
        self.net.eval()
        out = []
        with torch.inference_mode():
            for i in range(0, len(X), batch_size):
                xb = torch.from_numpy(X[i:i + batch_size]).to(self.device)
                out.append(torch.sigmoid(self.net(xb).float()).cpu().numpy())
        return np.concatenate(out).astype(np.float64) if out else np.empty(0)

    def evaluate(self, X_seq: np.ndarray, y: np.ndarray, fwd_returns: np.ndarray | None = None, *,
                 notional: float = 10_000.0, cost: float = 0.002, threshold: float = 0.0) -> dict[str, Any]:
        """AUC, log-loss, accuracy (and dollar P&L of the signal when forward returns are given)."""
        p = self.predict(X_seq)
        m: dict[str, Any] = binary_metrics(y, p)
        if fwd_returns is not None:
            m["pnl"] = dollar_pnl(p, fwd_returns, position_size=notional, fee=cost / 2, margin=threshold)
        return m

    # -- persistence
    def save(self, version_dir: Path | str, *, onnx: bool = True) -> Path:
        """Write lstm.pt (+ lstm.onnx) and lstm.json (with sha256 of each) into version_dir."""
        import io
        torch = _torch()
        if self.net is None:
            raise RuntimeError("nothing to save: model not built")
        d = Path(version_dir)
        d.mkdir(parents=True, exist_ok=True)
        self.net.eval()
        cpu_state = {k: v.detach().cpu() for k, v in self.net.state_dict().items()}
        buf = io.BytesIO()
        torch.save(cpu_state, buf)
        atomic_write_bytes(d / WEIGHTS_FILE, buf.getvalue())
        files = {WEIGHTS_FILE: sha256_file(d / WEIGHTS_FILE)}
        if onnx:
            self.export_onnx(d / ONNX_FILE)
            files[ONNX_FILE] = sha256_file(d / ONNX_FILE)
        meta = {
            "format": FORMAT_VERSION, "kind": "lstm", "config": asdict(self.config),
            "n_features": self.n_features, "feature_names": self.feature_names, "schema_hash": self.schema_hash,
            "input": {"name": INPUT_NAME, "shape": ["batch", self.config.seq_len, self.n_features],
                      "dtype": "float32"},
            "output": {"name": OUTPUT_NAME, "shape": ["batch"], "meaning": "P(up)"},
            "norm": {"mean": self.net.mean.cpu().tolist(), "std": self.net.std.cpu().tolist()},
            "metrics": jsonable(self.metrics), "files": files,
            "versions": {"torch": torch.__version__},
        }
        atomic_write_bytes(d / META_FILE, json.dumps(meta, indent=1).encode())
        return d

    def export_onnx(self, path: Path | str, opset: int = 17) -> Path:
        """Export P(up) = sigmoid(net(x)) with a dynamic batch axis; nn.LSTM maps to the ONNX LSTM op
        through the TorchScript exporter (dynamo=False)."""
        import io
        import warnings
        torch = _torch()
        net = build_net(self.n_features, self.config)
        net.load_state_dict({k: v.detach().cpu() for k, v in self.net.state_dict().items()})
        model = prob_module(net).eval()
        dummy = torch.zeros(1, self.config.seq_len, self.n_features)
        buf = io.BytesIO()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the batch-size/LSTM warning: h0/c0 are built from Shape(x)
            torch.onnx.export(model, (dummy,), buf, dynamo=False, opset_version=opset,
                              input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                              dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}})
        path = Path(path)
        atomic_write_bytes(path, buf.getvalue())
        return path

    @classmethod
    def load(cls, version_dir: Path | str, device: str | None = None) -> "LSTMModel":
        """Load a saved model (weights_only); truncated/corrupt/mismatched files raise ModelLoadError."""
        m = cls(device=device)
        meta = read_meta(Path(version_dir))
        m.config = _config_from_dict(meta["config"])
        m.n_features = int(meta["n_features"])
        m.feature_names = list(meta.get("feature_names", []))
        m.schema_hash = str(meta.get("schema_hash", ""))
        m.metrics = dict(meta.get("metrics", {}))
        m.net = load_net(Path(version_dir), meta, device=m.device)
        return m

