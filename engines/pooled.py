"""Inference of the pooled universe models (research/models.py trains them), in one place for research and daemon.

A universe bundle is a folder: ``manifest.json`` (written by ``tradingd train --data``; inside a registry version it
is ``universe.json`` next to the registry's own manifest) plus one file per model: XGBoost ``.ubj``, ridge ``.npz``
(w, ym, mu, sd), LSTM ``.pt`` (state dict, mu, sd as tensors, hidden, seq_len, features). :func:`load_bundle`
refuses with :class:`ModelLoadError` naming the file on a missing or corrupt file, or a feature list other than
``engines.xsection.FEATURE_NAMES`` (the columns the daemon computes).

The LSTM without torch: training (research/models.py ``save_model``) also writes the net's ONNX graph
(:func:`export_lstm_onnx`, standardised windows in, dynamic batch) and ``lstm.answers.npz`` (probe windows ``x``,
torch's answers ``y`` on them, ``mu``, ``sd``, ``seq_len``, ``hidden``, ``features``), named by the manifest entry's
``runtime_files`` ``{"onnx": ..., "answers": ...}`` (:func:`entry_files` lists every file of an entry: the registry
checksums them all). Where they are and onnxruntime imports, :func:`load_bundle` runs the LSTM on an ONNX Runtime
session (:class:`OnnxLSTM`) and never imports torch; it first scores the recorded probe windows and compares with
torch's recorded answers. The rule: a session that disagrees by more than ``TOL``, or a graph ONNX Runtime refuses,
is a ModelLoadError naming the file — never a fallback to the ``.pt`` (the files of one bundle disagree: it was
altered). A bundle trained before (no ``runtime_files``) loads the ``.pt`` with torch as before;
``load_bundle(..., lstm="torch")`` does so for any bundle (research's reference). ``lstm_emb`` keeps torch.

Scores: :func:`score` takes the rows of ONE batch — ``(N, F)`` features for xgboost/ridge, ``(N, L, F)`` raw feature
windows for the LSTM (standardised here with the model's mu/sd, NaN -> 0, exactly as in training) — and answers in
one call per model. The ensemble is ``sum(weight * cs_zscore(score))`` over the symbols present (a model without a
score for a symbol adds 0), and ``expected_return = calibration.slope * cs_zscore(ensemble)`` (research/calibration.py
fits the slope on the training holdout).

The extra kinds ``xgboost_ft`` (per-symbol fine-tuned boosters) and ``lstm_emb`` (symbol embedding) need each row's
symbol: ``score(..., symbols=)`` and ``UniverseBundle.predict(hist, threads, symbols)``; their files and scoring are
at the end of this module."""
from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from engines.base import ModelLoadError
from engines.features import FEATURE_SCHEMA
from engines.xsection import FEATURE_NAMES, cs_zscore

__all__ = ["MODEL_KINDS", "Calibration", "PooledModel", "UniverseBundle", "load_bundle", "score", "lstm_net",
           "standardise_windows", "ensemble_score", "UNIVERSE_KIND", "UNIVERSE_SCHEMA_HASH", "BUNDLE_MANIFEST",
           "EXTRA_KINDS", "lstm_emb_net", "sym_ids", "extra_calls", "score_extra", "load_extra", "refuse_file",
           "OnnxLSTM", "export_lstm_onnx", "probe_inputs", "entry_files", "ort_session", "TOL", "LSTM_LOADERS"]

EXTRA_KINDS = ("xgboost_ft", "lstm_emb")  # need each row's symbol (the section at the end)
MODEL_KINDS = ("xgboost", "ridge", "lstm") + EXTRA_KINDS
UNIVERSE_KIND = "universe"  # the registry's kind for a bundle (<root>/<tf>/universe/<version>/)
BUNDLE_MANIFEST = "universe.json"  # the bundle's manifest inside a registry version
# the pooled models' feature schema: the live per-symbol features' hash plus the universe columns, in order
UNIVERSE_SCHEMA_HASH = hashlib.sha256(f"{FEATURE_SCHEMA.hash}|{','.join(FEATURE_NAMES)}".encode()).hexdigest()
TOL = 1e-6  # max abs difference of an ONNX Runtime LSTM / compiled walker to the library's answers (scores ~1e-4..1e-1)
ONNX_OPSET = 17
LSTM_LOADERS = ("auto", "torch")  # load_bundle(lstm=): ONNX Runtime where the bundle has its graph, or the .pt


@dataclass(frozen=True)
class Calibration:
    slope: float        # forward log return (over ``horizon`` bars) per unit of cross-sectional z-score
    intercept: float    # mean forward return of the fitting rows (recorded, not used)
    horizon: int        # bars
    rows: int
    method: str = "OLS of the horizon's forward log return on the score's cross-sectional z-score"

    def expected_return(self, z: np.ndarray | float) -> np.ndarray | float:
        return self.slope * z

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Calibration:
        return cls(float(d["slope"]), float(d["intercept"]), int(d["horizon"]), int(d["rows"]),
                   str(d.get("method", cls.method)))


def lstm_net(n_feat: int, hidden: int):
    """The pooled LSTM: one layer, the last step's hidden state through a linear head."""
    import torch

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lstm = torch.nn.LSTM(n_feat, hidden, batch_first=True)
            self.head = torch.nn.Linear(hidden, 1)

        def forward(self, x):
            out, _ = self.lstm(x)
            return self.head(out[:, -1]).squeeze(-1)
    return Net()


def standardise_windows(S: np.ndarray, mu: np.ndarray, sd: np.ndarray) -> np.ndarray:
    """(rows, L, F) raw feature windows -> the LSTM's input: (S - mu) / sd in float32, NaN (no row) -> 0."""
    S = (np.asarray(S, dtype=np.float32) - np.asarray(mu).astype(np.float32)) / np.asarray(sd).astype(np.float32)
    return np.nan_to_num(S, nan=0.0).astype(np.float32)


def probe_inputs(kind: str, seq_len: int, mu: np.ndarray | None, sd: np.ndarray | None, n: int = 64,
                 seed: int = 0) -> np.ndarray:
    """Probe inputs around a model's training distribution (mu +- sd, at 0.3, 1 and 3 sd), a row of NaN (no row:
    0 after standardisation) included: (n, L, F) raw windows for the LSTM, (n, F) rows otherwise. The LSTM's are
    recorded with torch's answers at training time (``lstm.answers.npz``) and checked at load."""
    rng = np.random.default_rng(seed)
    f = len(FEATURE_NAMES)
    shape = (n, seq_len, f) if kind == "lstm" else (n, f)
    z = rng.standard_normal(shape) * rng.choice([0.3, 1.0, 3.0], size=shape)
    if mu is not None and sd is not None:
        x = np.asarray(mu, np.float64) + z * np.asarray(sd, np.float64)
    else:
        x = z * 0.01
    x = x.astype(np.float32)
    if kind == "lstm":
        x[0, : seq_len // 2] = np.nan  # a symbol listed mid-window
    else:
        x[0, ::3] = np.nan  # missing values take the trees' default branches
    return x


def export_lstm_onnx(net: Any, seq_len: int, n_feat: int) -> bytes:
    """The pooled LSTM (torch) as an ONNX graph: standardised (batch, seq_len, n_feat) float32 windows ``x`` in,
    (batch,) scores ``y`` out, dynamic batch; the TorchScript exporter maps ``nn.LSTM`` to the ONNX ``LSTM`` op."""
    import warnings

    import torch
    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the LSTM batch-size warning: h0/c0 are built from Shape(x)
        torch.onnx.export(net, (torch.zeros(1, int(seq_len), int(n_feat)),), buf, dynamo=False,
                          opset_version=ONNX_OPSET, input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}})
    return buf.getvalue()


def ort_session(graph: bytes, threads: int = 1):
    """An ONNX Runtime CPU session as the per-symbol LSTM's (engines.lstm_engine): ``threads`` intra-op threads,
    sequential, every graph optimisation."""
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = max(int(threads), 1)
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    return ort.InferenceSession(graph, so, providers=["CPUExecutionProvider"])


@dataclass(frozen=True, eq=False)
class OnnxLSTM:
    """The pooled LSTM's ONNX graph on ONNX Runtime (no torch): ``obj(x)`` with standardised windows, as the
    torch net's ``net(x)``; one session per thread count, made on first use."""

    graph: bytes = field(repr=False)
    file: str
    sessions: dict = field(default_factory=dict, repr=False)

    def session(self, threads: int = 1):
        s = self.sessions.get(threads)
        if s is None:
            s = self.sessions[threads] = ort_session(self.graph, threads)
        return s

    def __call__(self, x: np.ndarray, threads: int = 1) -> np.ndarray:
        return self.session(threads).run(["y"], {"x": np.ascontiguousarray(x, np.float32)})[0]


def entry_files(entry: Mapping[str, Any]) -> list[str]:
    """Every file a bundle manifest entry names (``file``, xgboost_ft's ``symbol_files``, the LSTM's
    ``runtime_files``): what a publish copies and the registry checksums."""
    return [str(entry["file"]), *(entry.get("symbol_files") or {}).values(),
            *(entry.get("runtime_files") or {}).values()]


class torch_threads:
    """torch.set_num_threads for a block, restored after."""

    def __init__(self, n: int):
        self.n = n

    def __enter__(self):
        import torch
        self.old = torch.get_num_threads()
        if self.n:
            torch.set_num_threads(self.n)

    def __exit__(self, *a):
        import torch
        torch.set_num_threads(self.old)


def score(kind: str, obj: Any, X: np.ndarray, *, mu: np.ndarray | None = None, sd: np.ndarray | None = None,
          threads: int = 1, best_iteration: int | None = None, symbols=None) -> np.ndarray:
    """Scores of one batch of rows in ONE call: ``X`` (N, F) for xgboost/ridge, (N, L, F) raw windows for lstm.
    ``symbols``: the rows' symbol names, needed by xgboost_ft (one call per fine-tuned symbol present + one) and
    lstm_emb (one call), see the extra kinds' section."""
    if len(X) == 0:
        return np.zeros(0)
    if kind in EXTRA_KINDS:
        return score_extra(kind, obj, X, symbols, mu=mu, sd=sd, threads=threads)
    if kind == "xgboost":
        it = obj.best_iteration if best_iteration is None else best_iteration
        # in place (no DMatrix: its construction cost ~80 ms per call on a busy 2-core box, the trees ~1 ms)
        return np.asarray(obj.inplace_predict(np.ascontiguousarray(X, dtype=np.float32),
                                              iteration_range=(0, int(it) + 1)), dtype=np.float64)
    if kind == "ridge":
        w, ym = obj
        # row-wise sums (not a BLAS GEMV): a row's score does not depend on the batch it is in
        return (((X - mu) / sd).astype(np.float64) * w).sum(axis=1) + ym
    if kind == "lstm":
        if isinstance(obj, OnnxLSTM):  # the daemon's load of a bundle with the ONNX graph: no torch
            return obj(standardise_windows(X, mu, sd), threads).astype(np.float64)
        import torch
        with torch.no_grad(), torch_threads(threads):
            return obj(torch.from_numpy(standardise_windows(X, mu, sd))).numpy().astype(np.float64)
    raise ValueError(f"unknown pooled model kind {kind!r}; known: {', '.join(MODEL_KINDS)}")


def ensemble_score(scores: Mapping[str, np.ndarray], weights: Mapping[str, float]) -> np.ndarray:
    """sum(weight * cross-sectional z-score) over the last axis (the symbols); a missing score adds 0; NaN where
    no model scored the symbol."""
    zs = {k: cs_zscore(np.asarray(s, dtype=np.float64)) for k, s in scores.items() if k in weights}
    if not zs:
        raise ValueError("no model of the ensemble has scores")
    out = sum(float(weights[k]) * np.nan_to_num(z, nan=0.0) for k, z in zs.items())
    any_ok = np.logical_or.reduce([np.isfinite(z) for z in zs.values()])
    return np.where(any_ok, out, np.nan)


@dataclass(frozen=True, eq=False)
class PooledModel:
    kind: str
    obj: Any
    file: str
    mu: np.ndarray | None = None
    sd: np.ndarray | None = None
    seq_len: int = 0
    best_iteration: int | None = None
    answers: tuple[np.ndarray, np.ndarray] | None = field(default=None, repr=False)  # LSTM: recorded torch (x, y)

    def predict(self, X: np.ndarray, threads: int = 1, symbols=None) -> np.ndarray:
        return score(self.kind, self.obj, X, mu=self.mu, sd=self.sd, threads=threads,
                     best_iteration=self.best_iteration, symbols=symbols)

    def calls(self, symbols) -> int:
        """Library calls :meth:`predict` makes for rows of these symbols (1, or for xgboost_ft :func:`extra_calls`)."""
        if self.kind in EXTRA_KINDS:
            return extra_calls(self.kind, self.obj, symbols)
        return int(len(symbols) > 0)


@dataclass(frozen=True, eq=False)
class UniverseBundle:
    """A timeframe's pooled models, their ensemble weights and calibration (see the module docstring)."""

    timeframe: str
    path: str
    models: dict[str, PooledModel]
    weights: dict[str, float]
    calibration: Calibration
    manifest: dict = field(repr=False, default_factory=dict)
    version: str = ""

    @property
    def seq_len(self) -> int:
        return max((m.seq_len for m in self.models.values()), default=0)

    def predict(self, hist: np.ndarray, threads: int = 1, symbols=None,
                runners: Mapping[str, Callable[[np.ndarray], np.ndarray]] | None = None) -> dict[str, np.ndarray]:
        """``hist`` (L, N, F): the universe's last L feature rows, the newest last (NaN = no row); ``symbols``: the
        N columns' symbol names (xgboost_ft / lstm_emb need them). Returns per model (N,) scores (NaN where the
        newest row is incomplete), ``ensemble``, ``z`` and ``expected_return``. ``runners``: per kind, a faster
        call with the model's input and output (engines.pooled_runtime; the default kinds only)."""
        X = hist[-1]
        valid = np.isfinite(X).all(axis=-1)
        idx = np.flatnonzero(valid)
        names = None if symbols is None else np.asarray(symbols, dtype=object)[idx]
        out: dict[str, np.ndarray] = {}
        for kind, m in self.models.items():
            s = np.full(X.shape[0], np.nan)
            if len(idx):
                if m.seq_len:  # lstm, lstm_emb
                    L = m.seq_len
                    W = hist[-L:, idx].transpose(1, 0, 2)
                    if W.shape[1] < L:  # fewer universe bars than the window: the first row repeats (training's rule)
                        W = np.concatenate([np.repeat(W[:, :1], L - W.shape[1], axis=1), W], axis=1)
                    s[idx] = run(W) if (run := (runners or {}).get(kind)) else m.predict(W, threads, names)
                else:
                    s[idx] = run(X[idx]) if (run := (runners or {}).get(kind)) else m.predict(X[idx], threads, names)
            out[kind] = s
        ens = ensemble_score({k: out[k] for k in self.models}, self.weights)
        ens = np.where(valid, ens, np.nan)
        z = cs_zscore(ens)
        out["ensemble"] = ens
        out["z"] = z
        out["expected_return"] = self.calibration.slope * z
        return out

    def calls(self, symbols) -> dict[str, int]:
        """Library calls per model of :meth:`predict` when these symbols have complete rows."""
        return {k: m.calls(symbols) for k, m in self.models.items()}

    def info(self) -> dict:
        i = {"version": self.version, "path": self.path, "models": sorted(self.models),
             "weights": dict(self.weights), "calibration": self.calibration.to_dict()}
        if "xgboost_ft" in self.models:  # one inference call per fine-tuned symbol present, plus one
            i["fine_tuned_symbols"] = sorted(self.models["xgboost_ft"].obj[1])
        if "lstm" in self.models:  # which file the LSTM was loaded from (the .onnx graph, or the .pt by torch)
            m = self.models["lstm"]
            lib = "onnxruntime" if isinstance(m.obj, OnnxLSTM) else "torch"
            i["lstm_loaded"] = {"file": m.file, "library": lib}
        return i


def refuse_file(path: Path, why: str) -> ModelLoadError:
    """The one refusal of a bundle file (the extra kinds' loaders raise it too): the file named, then why."""
    return ModelLoadError(f"universe bundle file {path}: {why}")


def _check_features(path: Path, names: Any) -> None:
    if list(names or ()) != list(FEATURE_NAMES):
        raise refuse_file(path, f"feature list {list(names or ())[:5]}... ({len(names or ())} columns) is not the "
                            f"daemon's {len(FEATURE_NAMES)} universe features (engines.xsection.FEATURE_NAMES); "
                            f"retrain with `tradingd train --data`")


def _onnxruntime_importable() -> bool:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def _load_lstm_onnx(d: Path, rt: Any) -> PooledModel:
    """The LSTM from its ONNX graph and recorded answers (module docstring): no torch. ModelLoadError naming the
    file that is missing, corrupt, of another shape, or whose session disagrees with torch's recorded answers."""
    if not isinstance(rt, Mapping):
        raise refuse_file(d / "manifest", f"runtime_files of the lstm entry is not a mapping: {type(rt).__name__}")
    fo, fa = _file(d, rt.get("onnx")), _file(d, rt.get("answers"))
    n_features = len(FEATURE_NAMES)
    try:
        with np.load(fa, allow_pickle=False) as z:
            x, y, mu, sd = (np.asarray(z[k]) for k in ("x", "y", "mu", "sd"))
            seq_len, features = int(z["seq_len"]), [str(v) for v in z["features"]]
    except Exception as e:  # a library's parse error is a corrupt file
        raise refuse_file(fa, f"unreadable or corrupt ({type(e).__name__}: {str(e)[:200]})") from None
    _check_features(fa, features)
    if not (mu.shape == sd.shape == (n_features,) and seq_len > 0 and x.shape[1:] == (seq_len, n_features)
            and y.shape == x.shape[:1] and len(y) > 0):
        raise refuse_file(fa, f"mu/sd {mu.shape}/{sd.shape}, probe windows {x.shape} and answers {y.shape} do not fit "
                              f"seq_len {seq_len} and {n_features} features")
    try:
        net = OnnxLSTM(fo.read_bytes(), fo.name)
        got = np.asarray(net(standardise_windows(x, mu, sd)), np.float64)
    except Exception as e:  # ONNX Runtime refuses the graph, or it takes other inputs
        raise refuse_file(fo, f"unreadable or corrupt for ONNX Runtime ({type(e).__name__}: {str(e)[:200]})") \
            from None
    err = float(np.max(np.abs(got - y))) if got.shape == y.shape else float("inf")
    if not err <= TOL:
        raise refuse_file(fo, f"its scores of the probe windows differ from torch's answers recorded at training in "
                              f"{fa.name} by {err:.3g} (> {TOL}): the bundle's files were altered")
    return PooledModel("lstm", net, fo.name, mu, sd, seq_len=seq_len, answers=(x, y))


def _load_model(d: Path, entry: Mapping[str, Any], manifest: Mapping[str, Any], lstm: str = "auto") -> PooledModel:
    kind = entry.get("kind")
    f = d / str(entry.get("file", ""))
    if kind not in MODEL_KINDS:
        raise refuse_file(d / "manifest", f"unknown model kind {kind!r}")
    if not f.is_file():
        raise refuse_file(f, "missing")
    if kind in EXTRA_KINDS:
        return PooledModel(kind, **load_extra(kind, d, entry))
    if kind == "lstm" and lstm == "auto" and entry.get("runtime_files") and _onnxruntime_importable():
        return _load_lstm_onnx(d, entry["runtime_files"])
    try:
        if kind == "xgboost":
            b = _booster(f)
            bi = (entry.get("info") or {}).get("best_iteration")
            return PooledModel(kind, b, f.name, best_iteration=int(bi) if bi is not None else None)
        if kind == "ridge":
            with np.load(f) as z:
                w, ym, mu, sd = (np.asarray(z[k]) for k in ("w", "ym", "mu", "sd"))
            if not (w.shape == mu.shape == sd.shape == (len(FEATURE_NAMES),)):
                raise refuse_file(f, f"weights of shape {w.shape}, expected ({len(FEATURE_NAMES)},)")
            return PooledModel(kind, (w, float(ym)), f.name, mu, sd)
        import torch
        ck = torch.load(io.BytesIO(f.read_bytes()), map_location="cpu", weights_only=True)
        _check_features(f, ck.get("features"))
        net = lstm_net(len(FEATURE_NAMES), int(ck["hidden"]))
        net.load_state_dict(ck["state"])
        net.eval()
        mu, sd = (np.asarray(ck[k].numpy() if hasattr(ck[k], "numpy") else ck[k]) for k in ("mu", "sd"))
        return PooledModel(kind, net, f.name, mu, sd, seq_len=int(ck["seq_len"]))
    except ModelLoadError:
        raise
    except Exception as e:  # a library's parse error is a corrupt file
        raise refuse_file(f, f"unreadable or corrupt ({type(e).__name__}: {str(e)[:200]})") from None


def load_bundle(path: Path | str, *, version: str = "", lstm: str = "auto") -> UniverseBundle:
    """Load a bundle folder (``universe.json`` or ``manifest.json``); ModelLoadError naming the file otherwise.
    ``lstm``: ``"auto"`` runs the LSTM on ONNX Runtime where the bundle has its graph (no torch), ``"torch"``
    loads the ``.pt`` (see the module docstring)."""
    if lstm not in LSTM_LOADERS:
        raise ValueError(f"lstm must be one of {LSTM_LOADERS}, got {lstm!r}")
    d = Path(path)
    mf = d / BUNDLE_MANIFEST if (d / BUNDLE_MANIFEST).is_file() else d / "manifest.json"
    try:
        m = json.loads(mf.read_text())
    except FileNotFoundError:
        raise refuse_file(mf, "missing") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise refuse_file(mf, f"unreadable or corrupt: {e}") from None
    if not isinstance(m, dict) or m.get("kind") != "pooled-universe":
        raise refuse_file(mf, "not a pooled-universe manifest")
    _check_features(mf, m.get("features"))
    if "calibration" not in m:
        raise refuse_file(mf, "no calibration (trained by an older `tradingd train`; retrain)")
    try:
        cal = Calibration.from_dict(m["calibration"])
        weights = {str(k): float(v) for k, v in m["ensemble"]["weights"].items()}
    except (KeyError, TypeError, ValueError) as e:
        raise refuse_file(mf, f"bad calibration or ensemble weights: {e}") from None
    models = {}
    for e in m.get("models", ()):
        pm = _load_model(d, e, m, lstm)
        models[pm.kind] = pm
    if not models or set(weights) - set(models):
        raise refuse_file(mf, f"ensemble weights for {sorted(weights)} but models {sorted(models)}")
    return UniverseBundle(str(m.get("timeframe", "")), str(d), models, weights, cal, m, version)


# ---------------------------------------------------------------------------------------------------- extra kinds
# The extra pooled kinds ``xgboost_ft`` and ``lstm_emb``: their files read and their rows scored, in one place for
# research (research/models.py trains and saves them) and the daemon (score / _load_model dispatch here).
#
# Both need the symbol of each row, matched by NAME (a model scores any universe):
#
# * ``xgboost_ft`` = ``(pooled booster, {symbol: fine-tuned booster})``. A fine-tuned booster is the pooled trees
#   followed by that symbol's extra rounds, saved whole; a row whose symbol has none (not fine-tuned, or never seen
#   in training) is scored by the pooled booster. Cost: ONE library call for the rows of every fine-tuned symbol
#   present plus one for all other rows (:func:`extra_calls`): XGBoost scores a batch with one model, and splitting a
#   fine-tuned booster into "pooled + extra trees" in one pooled call would change the float sums (not exact). At a
#   daemon boundary (one row per symbol) that is 1 + the number of fine-tuned symbols present.
# * ``lstm_emb`` = ``(net, {symbol: id})``: the pooled LSTM with a learned symbol embedding (ids 1..n by training
#   symbol) concatenated to every step's inputs; id 0 is the shared "unknown" symbol, used for any symbol not in the
#   vocabulary. One batch, ONE call.
#
# Files (a bundle manifest entry): ``xgboost_ft`` = ``file`` (the pooled booster) + ``symbol_files`` ``{symbol:
# file}`` in the same folder; ``lstm_emb`` = one ``.pt`` (state dict, mu, sd as tensors, hidden, seq_len, features,
# vocab, emb_dim), read with ``weights_only=True``. Every file is checked; a problem is a ModelLoadError naming it.


def lstm_emb_net(n_feat: int, hidden: int, n_sym: int, dim: int):
    """The pooled LSTM with an ``n_sym + 1``-row symbol embedding (row 0 = unknown) on every step's inputs."""
    import torch

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = torch.nn.Embedding(n_sym + 1, dim)
            self.lstm = torch.nn.LSTM(n_feat + dim, hidden, batch_first=True)
            self.head = torch.nn.Linear(hidden, 1)

        def forward(self, x, sid):
            e = self.emb(sid)[:, None, :].expand(-1, x.shape[1], -1)
            out, _ = self.lstm(torch.cat([x, e], dim=-1))
            return self.head(out[:, -1]).squeeze(-1)
    return Net()


def sym_ids(vocab: Mapping[str, int], symbols: Sequence[str] | np.ndarray) -> np.ndarray:
    """Each row's embedding id: the vocabulary's, 0 for a symbol the model never saw."""
    return np.fromiter((vocab.get(s, 0) for s in symbols), dtype=np.int64, count=len(symbols))


def _ft_groups(per: Mapping[str, Any], symbols: Sequence[str] | np.ndarray) -> list[tuple[str | None, np.ndarray]]:
    """(fine-tuned symbol or None = pooled, row indices) for every booster call a batch of rows needs."""
    names = np.asarray(symbols, dtype=object)
    out: list[tuple[str | None, np.ndarray]] = []
    rest = np.ones(len(names), dtype=bool)
    for s in dict.fromkeys(names.tolist()):
        if s in per:
            k = names == s
            out.append((s, np.flatnonzero(k)))
            rest &= ~k
    if rest.any():
        out.append((None, np.flatnonzero(rest)))
    return out


def extra_calls(kind: str, obj: Any, symbols: Sequence[str] | np.ndarray) -> int:
    """Library calls :func:`score_extra` makes for rows of these symbols (see the section comment)."""
    if len(symbols) == 0:
        return 0
    return len(_ft_groups(obj[1], symbols)) if kind == "xgboost_ft" else 1


def score_extra(kind: str, obj: Any, X: np.ndarray, symbols: Sequence[str] | np.ndarray | None, *,
                mu: np.ndarray | None = None, sd: np.ndarray | None = None, threads: int = 1) -> np.ndarray:
    """Scores of one batch: ``X`` (N, F) for xgboost_ft, (N, L, F) raw windows for lstm_emb (standardised with the
    model's mu/sd, NaN -> 0, as the pooled LSTM); ``symbols`` (N,) the rows' symbol names."""
    if symbols is None or len(symbols) != len(X):
        raise ValueError(f"{kind} scores need the symbol of each of the {len(X)} rows, got "
                         f"{'none' if symbols is None else len(symbols)}")
    if kind == "xgboost_ft":
        base, per = obj
        X = np.ascontiguousarray(X, dtype=np.float32)
        out = np.empty(len(X), dtype=np.float64)
        for s, rows in _ft_groups(per, symbols):
            b = base if s is None else per[s]
            # every tree of the (sliced) booster: the pooled one is cut at its best iteration, a fine-tuned one at
            # its own; in place, as engines.pooled.score does for "xgboost"
            out[rows] = b.inplace_predict(X[rows] if len(rows) < len(X) else X)
        return out
    if kind == "lstm_emb":
        import torch
        net, vocab = obj
        with torch.no_grad(), torch_threads(threads):
            sid = torch.from_numpy(sym_ids(vocab, symbols))
            return net(torch.from_numpy(standardise_windows(X, mu, sd)), sid).numpy().astype(np.float64)
    raise ValueError(f"not an extra pooled kind {kind!r}; known: {', '.join(EXTRA_KINDS)}")


def _file(d: Path, name: Any) -> Path:
    f = d / str(name)
    if not isinstance(name, str) or not name or Path(name).name != name:
        raise refuse_file(f, f"bad file name {name!r} in the manifest (a file of the bundle's folder)")
    if not f.is_file():
        raise refuse_file(f, "missing")
    return f


def load_extra(kind: str, d: Path, entry: Mapping[str, Any]) -> dict[str, Any]:
    """An extra kind's files back (``obj``, ``file``, and ``mu``, ``sd``, ``seq_len`` for lstm_emb); ModelLoadError
    naming the file that is missing, corrupt or of another shape."""
    f = _file(d, entry.get("file"))
    if kind == "xgboost_ft":
        sf = entry.get("symbol_files", {})
        if not isinstance(sf, Mapping):
            raise refuse_file(f, f"symbol_files of the manifest entry is not a mapping: {type(sf).__name__}")
        base = _booster(f)
        per = {str(s): _booster(_file(d, name)) for s, name in sf.items()}
        return {"obj": (base, per), "file": f.name}
    if kind != "lstm_emb":
        raise ValueError(f"not an extra pooled kind {kind!r}")
    import torch
    n_features = len(FEATURE_NAMES)
    try:
        ck = torch.load(io.BytesIO(f.read_bytes()), map_location="cpu", weights_only=True)
        if list(ck.get("features") or ()) != list(FEATURE_NAMES):
            raise refuse_file(f, f"trained on {len(ck.get('features') or ())} other features, not the daemon's "
                                 f"{len(FEATURE_NAMES)} universe features; retrain with `tradingd train --data`")
        vocab = {str(s): int(i) for s, i in dict(ck["vocab"]).items()}
        if sorted(vocab.values()) != list(range(1, len(vocab) + 1)):
            raise refuse_file(f, "symbol vocabulary ids are not 1..n (0 is the unknown symbol)")
        net = lstm_emb_net(n_features, int(ck["hidden"]), len(vocab), int(ck["emb_dim"]))
        net.load_state_dict(ck["state"])
        net.eval()
        mu, sd = (np.asarray(ck[k].numpy() if hasattr(ck[k], "numpy") else ck[k]) for k in ("mu", "sd"))
        if not (mu.shape == sd.shape == (n_features,)):
            raise refuse_file(f, f"mu/sd of shape {mu.shape}/{sd.shape}, expected ({n_features},)")
        return {"obj": (net, vocab), "file": f.name, "mu": mu, "sd": sd, "seq_len": int(ck["seq_len"])}
    except ModelLoadError:
        raise
    except Exception as e:  # a library's parse error is a corrupt file
        raise refuse_file(f, f"unreadable or corrupt ({type(e).__name__}: {str(e)[:200]})") from None


def _booster(f: Path):
    import xgboost as xgb
    n_features = len(FEATURE_NAMES)
    try:
        b = xgb.Booster()
        b.load_model(str(f))
        b.set_param({"nthread": 1})
        n = b.num_features()
    except Exception as e:  # a library's parse error is a corrupt file
        raise refuse_file(f, f"unreadable or corrupt ({type(e).__name__}: {str(e)[:200]})") from None
    if n != n_features:
        raise refuse_file(f, f"model has {n} features, the universe rows {n_features}")
    return b
