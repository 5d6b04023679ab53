"""Pooled models over universe rows: XGBoost (regression or pairwise ranking per bar), ridge, a small LSTM, and
the no-model factor scores. Every model is symbol-agnostic: one model per timeframe and kind, fitted on all
symbols' rows; ``predict_panel`` scores every valid (t, symbol) row of a bar range in one batch."""
from __future__ import annotations

import io
import json
from dataclasses import asdict, dataclass, field, replace

import numpy as np
import structlog

from engines.pooled import EXTRA_KINDS, load_extra, lstm_emb_net, lstm_net, score, standardise_windows, sym_ids
from engines.pooled import TOL, OnnxLSTM, export_lstm_onnx, probe_inputs
from engines.pooled import torch_threads as _threads
from research.dataset import FEATURE_NAMES, PanelFeatures, Pooled, pooled
from research.device import choose_device

log = structlog.get_logger(__name__)

__all__ = ["ModelParams", "fit_model", "predict_panel", "factor_scores", "MODEL_KINDS", "FACTORS", "EXTRA_KINDS",
           "ALL_KINDS", "load_extra_model"]

MODEL_KINDS = ("xgboost", "ridge", "lstm")
# EXTRA_KINDS (engines.pooled): selectable with --models, not in the default set (see README "Universe research")
ALL_KINDS = MODEL_KINDS + EXTRA_KINDS
FACTORS = ("reversal", "momentum")


@dataclass(frozen=True)
class ModelParams:
    """Everything a model and its target need; HPO searches a subset (hpo.py), best.json overrides fields."""

    horizon: int = 12                # label horizon (bars)
    target: str = "rank"             # raw | resid | rank (dataset.target)
    row_step: int = 3                # train on every k-th bar (rows overlap over the horizon anyway)
    xgb_objective: str = "reg"       # reg | rank (rank:pairwise grouped by bar)
    xgb_rounds: int = 300
    xgb_early_stopping: int = 30
    xgb_depth: int = 4
    xgb_eta: float = 0.05
    xgb_min_child_weight: float = 200.0
    xgb_subsample: float = 0.7
    xgb_colsample: float = 0.7
    xgb_lambda: float = 10.0
    ridge_alpha: float = 100.0
    lstm_hidden: int = 16
    lstm_seq_len: int = 16
    lstm_epochs: int = 2
    lstm_max_rows: int = 40_000      # LSTM trains on a random subsample of this many sequences (CPU budget)
    lstm_lr: float = 3e-3
    ft_rounds: int = 40              # xgboost_ft: most extra rounds per symbol on top of the pooled booster
    ft_early_stopping: int = 8       # xgboost_ft: on the symbol's own (embargoed) time-split validation
    ft_min_rows: int = 300           # xgboost_ft: a symbol with fewer training rows keeps the pooled booster
    emb_dim: int = 4                 # lstm_emb: symbol embedding width (id 0 = unknown symbol)
    emb_unknown_p: float = 0.1       # lstm_emb: share of training rows shown as "unknown" (trains id 0)
    top_k: int = 3                   # portfolio: names held
    rebalance: int = 12              # portfolio: bars between rebalances
    hold_buffer: float = 1.5         # portfolio: keep a held name while it ranks within top_k * hold_buffer
    momentum_lookback: int = 96      # factor baseline lookback (bars)
    threads: int = 1
    device: str = "auto"
    gpu_min_rows: int = 1_000_000

    def with_(self, **kw) -> ModelParams:
        known = {f for f in self.__dataclass_fields__}
        bad = set(kw) - known
        if bad:
            raise ValueError(f"unknown parameter(s) {sorted(bad)}; known: {sorted(known)}")
        return replace(self, **kw)

    def to_dict(self) -> dict:
        return asdict(self)


# -------------------------------------------------------------------------------------------------- helpers
def _standardise(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mu = np.nanmean(X, axis=0)
    sd = np.nanstd(X, axis=0)
    sd[~(sd > 1e-12)] = 1.0
    return mu, sd


@dataclass
class FittedModel:
    kind: str
    params: ModelParams
    seed: int
    obj: object = None
    mu: np.ndarray | None = None
    sd: np.ndarray | None = None
    info: dict = field(default_factory=dict)


def _split_val(p: Pooled, h: int, frac: float = 0.15) -> tuple[np.ndarray, np.ndarray]:
    """Time split of training rows for early stopping, with an embargo of h bars between the parts."""
    ts = np.unique(p.t)
    cut = ts[int(len(ts) * (1 - frac))]
    tr = p.t < cut - h
    va = p.t >= cut
    return tr, va


def _grades(y: np.ndarray, t: np.ndarray, levels: int = 5) -> np.ndarray:
    """0..levels-1 by the row's percentile of y among the rows of its bar t (rows sorted by t)."""
    order = np.lexsort((y, t))
    _, start, count = np.unique(t[order], return_index=True, return_counts=True)
    pos = np.arange(len(y)) - np.repeat(start, count)
    pct = (pos + 0.5) / np.repeat(count, count)
    g = np.empty(len(y))
    g[order] = np.minimum(np.floor(pct * levels), levels - 1)
    return g


def _fit_xgb(p: Pooled, prm: ModelParams, seed: int) -> FittedModel:
    import xgboost as xgb
    device, why = choose_device("xgboost", len(p.y), prm.device, prm.gpu_min_rows)
    tr, va = _split_val(p, prm.horizon)
    params = {"max_depth": prm.xgb_depth, "eta": prm.xgb_eta, "min_child_weight": prm.xgb_min_child_weight,
              "subsample": prm.xgb_subsample, "colsample_bytree": prm.xgb_colsample, "lambda": prm.xgb_lambda,
              "tree_method": "hist", "nthread": prm.threads, "seed": seed, "device": device, "verbosity": 0}
    if prm.xgb_objective == "rank":
        params |= {"objective": "rank:pairwise", "eval_metric": "ndcg"}
        # pairwise ranking: relevance grades 0..4 from each row's cross-sectional percentile within its bar
        # (grading by global quantiles would give most bars one grade, hence no pairs, hence no gradient)
        dtr = xgb.DMatrix(p.X[tr], label=_grades(p.y[tr], p.t[tr]), qid=p.t[tr])
        dva = xgb.DMatrix(p.X[va], label=_grades(p.y[va], p.t[va]), qid=p.t[va])
    elif prm.xgb_objective == "reg":
        params |= {"objective": "reg:squarederror", "eval_metric": "rmse"}
        # targets in units of their training std, so depth/min_child_weight/lambda mean the same for every target
        ys = float(np.std(p.y[tr])) or 1.0
        dtr = xgb.DMatrix(p.X[tr], label=p.y[tr] / ys)
        dva = xgb.DMatrix(p.X[va], label=p.y[va] / ys)
    else:
        raise ValueError(f"xgb_objective must be reg or rank, got {prm.xgb_objective!r}")
    b = xgb.train(params, dtr, prm.xgb_rounds, evals=[(dva, "val")], early_stopping_rounds=prm.xgb_early_stopping,
                  verbose_eval=False)
    return FittedModel("xgboost", prm, seed, b, info={"device": device, "device_reason": why,
                                                       "best_iteration": int(b.best_iteration),
                                                       "rows": int(tr.sum())})


def _fit_ridge(p: Pooled, prm: ModelParams, seed: int) -> FittedModel:
    mu, sd = _standardise(p.X)
    Z = ((p.X - mu) / sd).astype(np.float64)
    # einsum's own loops, not a threaded BLAS GEMM: the same bits whatever the thread count (a Ray worker runs
    # BLAS on 1 thread, this process on all cores), so both executors publish the same file
    A = np.einsum("ij,ik->jk", Z, Z) + prm.ridge_alpha * len(Z) / 1000 * np.eye(Z.shape[1])
    ym = p.y.mean()
    w = np.linalg.solve(A, np.einsum("ij,i->j", Z, p.y - ym))
    return FittedModel("ridge", prm, seed, (w, ym), mu, sd, info={"rows": len(p.y), "device": "cpu",
                                                                 "device_reason": "closed form"})


def _raw_sequences(pf: PanelFeatures, t: np.ndarray, j: np.ndarray, L: int) -> np.ndarray:
    """(rows, L, F) raw feature windows ending at each row's bar (indices before the panel's start clip to 0)."""
    idx = t[:, None] - np.arange(L - 1, -1, -1)[None, :]
    idx = np.maximum(idx, 0)
    return pf.X[idx, j[:, None]]


def _sequences(pf: PanelFeatures, t: np.ndarray, j: np.ndarray, L: int, mu, sd) -> np.ndarray:
    return standardise_windows(_raw_sequences(pf, t, j, L), mu, sd)


_lstm_net = lstm_net  # the one definition (engines.pooled): the daemon loads what research trains


def _lstm_rows(p: Pooled, prm: ModelParams, seed: int, pf: PanelFeatures):
    """What both pooled LSTMs train on: torch seeded, a random subsample of at most ``lstm_max_rows`` rows, the
    device decision, the standardisation and the (rows, L, F) windows and targets as tensors on that device.
    Returns (rng, take, device, why, mu, sd, S, y); ``rng`` goes on from the subsample (lstm_emb draws from it)."""
    import torch
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    n = len(p.y)
    take = np.sort(rng.choice(n, size=min(n, prm.lstm_max_rows), replace=False))
    device, why = choose_device("lstm", len(take), prm.device, prm.gpu_min_rows)
    mu, sd = _standardise(p.X)
    S = torch.from_numpy(_sequences(pf, p.t[take], p.j[take], prm.lstm_seq_len, mu, sd)).to(device)
    y = torch.from_numpy(p.y[take].astype(np.float32)).to(device)
    return rng, take, device, why, mu, sd, S, y


def _fit_lstm(p: Pooled, prm: ModelParams, seed: int, pf: PanelFeatures) -> FittedModel:
    _, take, device, why, mu, sd, S, y = _lstm_rows(p, prm, seed, pf)
    n = len(p.y)
    net = _lstm_net(S.shape[-1], prm.lstm_hidden).to(device)
    loss = _train_mse(net, (S,), y, prm, device)
    return FittedModel("lstm", prm, seed, net.cpu(), mu, sd,
                       info={"rows": int(len(take)), "rows_available": int(n), "device": device,
                             "device_reason": why, "final_loss": loss})


def _train_mse(net, xs: tuple, y, prm: ModelParams, device: str) -> float:
    """The pooled LSTMs' one training loop: Adam on the mean squared error of ``net(*xs)`` against the target in
    units of its std, mini-batches of 512 in a fresh random order per epoch. Returns the last batch's loss."""
    import torch
    ys = float(y.std()) or 1.0
    opt = torch.optim.Adam(net.parameters(), lr=prm.lstm_lr)
    with _threads(prm.threads):
        for _ in range(prm.lstm_epochs):
            perm = torch.randperm(len(y), device=device)
            for i in range(0, len(y), 512):
                b = perm[i:i + 512]
                opt.zero_grad()
                loss = torch.mean((net(*(x[b] for x in xs)) - y[b] / ys) ** 2)
                loss.backward()
                opt.step()
    net.eval()
    return float(loss.detach())


def fit_model(kind: str, pf: PanelFeatures, y: np.ndarray, t_lo: int, t_hi: int, prm: ModelParams,
              seed: int = 0) -> FittedModel:
    """Fit ``kind`` on rows t in [t_lo, t_hi) that have a label (the caller embargoes t_hi)."""
    p = pooled(pf, y, t_lo, t_hi, step=prm.row_step)
    if len(p.y) < 100:
        raise ValueError(f"{kind}: only {len(p.y)} training rows in bars [{t_lo}, {t_hi})")
    if kind == "xgboost":
        return _fit_xgb(p, prm, seed)
    if kind == "ridge":
        return _fit_ridge(p, prm, seed)
    if kind == "lstm":
        return _fit_lstm(p, prm, seed, pf)
    if kind in EXTRA_KINDS:
        return _fit_extra(kind, p, pf, y, t_lo, t_hi, prm, seed)
    raise ValueError(f"unknown model kind {kind!r}; known: {', '.join(ALL_KINDS)}")


def predict_rows(m: FittedModel, pf: PanelFeatures, t: np.ndarray, j: np.ndarray) -> np.ndarray:
    """Scores of rows (t, j) — one batched call per model, whatever the number of symbols."""
    if len(t) == 0:
        return np.zeros(0)
    names = np.asarray(pf.symbols, dtype=object)[j]  # xgboost_ft / lstm_emb match symbols by name
    if m.kind in ("lstm", "lstm_emb"):  # chunks of raw windows (memory); each chunk is one call of the shared scorer
        out = np.empty(len(t), dtype=np.float64)
        for i in range(0, len(t), 8192):
            out[i:i + 8192] = score(m.kind, m.obj, _raw_sequences(pf, t[i:i + 8192], j[i:i + 8192],
                                                                  m.params.lstm_seq_len), mu=m.mu, sd=m.sd,
                                    threads=m.params.threads, symbols=names[i:i + 8192])
        return out
    if m.kind not in ("xgboost", "ridge", "xgboost_ft"):
        raise ValueError(m.kind)
    return score(m.kind, m.obj, pf.X[t, j], mu=m.mu, sd=m.sd, threads=m.params.threads, symbols=names)


def predict_panel(m: FittedModel, pf: PanelFeatures, t_lo: int, t_hi: int) -> np.ndarray:
    """(t_hi - t_lo, N) scores, NaN where the row has no features."""
    v = pf.valid[t_lo:t_hi]
    ti, ji = np.nonzero(v)
    out = np.full(v.shape, np.nan)
    out[ti, ji] = predict_rows(m, pf, ti + t_lo, ji)
    return out


def factor_scores(pf: PanelFeatures, name: str, lookback: int) -> np.ndarray:
    """No-model scores (T, N): reversal = minus the last bar's return; momentum = return over ``lookback``."""
    lc = np.log(pf.close)
    out = np.full(lc.shape, np.nan)
    if name == "reversal":
        out[1:] = -(lc[1:] - lc[:-1])
    elif name == "momentum":
        out[lookback:] = lc[lookback:] - lc[:-lookback]
    else:
        raise ValueError(f"unknown factor {name!r}")
    out[~pf.valid] = np.nan
    return out


def save_model(m: FittedModel, path) -> dict:
    """Write the model file(s); returns its manifest entry. The LSTM also gets its ONNX graph and torch's recorded
    answers (``runtime_files``: the daemon runs it without torch, engines.pooled's module docstring)."""
    from pathlib import Path
    path = Path(path)
    if m.kind in EXTRA_KINDS:
        return _save_extra(m, path)
    if m.kind == "xgboost":
        f = path.with_suffix(".ubj")
        m.obj.save_model(str(f))
    elif m.kind == "ridge":
        f = path.with_suffix(".npz")
        np.savez(f, w=m.obj[0], ym=m.obj[1], mu=m.mu, sd=m.sd)
    else:
        import torch
        f = path.with_suffix(".pt")
        buf = io.BytesIO()
        torch.save({"state": m.obj.state_dict(), "mu": torch.from_numpy(np.asarray(m.mu)),
                    "sd": torch.from_numpy(np.asarray(m.sd)), "hidden": m.params.lstm_hidden,
                    "seq_len": m.params.lstm_seq_len, "features": list(FEATURE_NAMES)}, buf)
        f.write_bytes(buf.getvalue())
        rt = _save_lstm_runtime(m, path)
        if rt:
            return {"kind": m.kind, "file": f.name, "runtime_files": rt, "seed": m.seed,
                    "info": json.loads(json.dumps(m.info, default=str))}
    return {"kind": m.kind, "file": f.name, "seed": m.seed, "info": json.loads(json.dumps(m.info, default=str))}


PROBE_WINDOWS = 64  # probe windows recorded with torch's answers next to the LSTM's ONNX graph


def _save_lstm_runtime(m: FittedModel, path) -> dict[str, str]:
    """The pooled LSTM's ONNX graph (``<path>.onnx``) and ``<path>.answers.npz``: probe windows, torch's answers on
    them, mu, sd, seq_len, hidden, features. Checked here first: a graph that ONNX Runtime cannot run or that
    disagrees with torch beyond ``TOL`` is not written (logged; the daemon then loads the ``.pt`` with torch)."""
    L, F = m.params.lstm_seq_len, len(FEATURE_NAMES)
    fo, fa = path.with_suffix(".onnx"), path.with_name(f"{path.name}.answers.npz")
    try:
        graph = export_lstm_onnx(m.obj, L, F)
        x = probe_inputs("lstm", L, m.mu, m.sd, PROBE_WINDOWS, seed=m.seed)
        y = score("lstm", m.obj, x, mu=m.mu, sd=m.sd, threads=1)
        err = float(np.max(np.abs(score("lstm", OnnxLSTM(graph, fo.name), x, mu=m.mu, sd=m.sd) - y)))
        if not err <= TOL:
            raise ValueError(f"ONNX Runtime differs from torch by {err:.3g} (> {TOL}) on the probe windows")
    except Exception as e:  # noqa: BLE001 - no graph: the .pt alone, as bundles trained before
        log.warning("lstm_onnx_not_saved", file=str(fo), error=f"{type(e).__name__}: {e}")
        m.info["onnx"] = f"not saved: {type(e).__name__}: {str(e)[:200]}"
        return {}
    fo.write_bytes(graph)
    buf = io.BytesIO()
    np.savez(buf, x=x, y=y, mu=np.asarray(m.mu), sd=np.asarray(m.sd), seq_len=np.int64(L),
             hidden=np.int64(m.params.lstm_hidden), features=np.asarray(FEATURE_NAMES))
    fa.write_bytes(buf.getvalue())
    return {"onnx": fo.name, "answers": fa.name}


def load_extra_model(entry: dict, folder, params: ModelParams) -> FittedModel:
    """A saved ``xgboost_ft`` / ``lstm_emb`` model back from its manifest entry (``save_model``'s format)."""
    return _load_extra(entry, folder, params)



# ------------------------------------------------------------------ extra kinds: xgboost_ft and lstm_emb
# xgboost_ft: the pooled booster (as "xgboost", cut at its best iteration), then for each symbol with enough rows
# a few more rounds of boosting on that symbol's own training rows, early-stopped on its own time-split
# validation (embargo h between the parts, as _split_val). A symbol keeps its extra rounds only when they beat
# the pooled booster on that validation; otherwise (and for a symbol unseen in training) the pooled booster
# scores it. Symbols are matched by name, so a model scores any panel. rank objective: one row per symbol and
# bar has no pairs to rank, so no symbol is fine-tuned (recorded in info).
# lstm_emb: the pooled LSTM with a learned symbol embedding (id 1..n by training symbol name) concatenated to
# every step's inputs; id 0 is the shared "unknown" symbol, trained on a random ``emb_unknown_p`` share of rows
# shown without their id, and used for any symbol not seen in training.
def _xgb_params(prm: ModelParams, seed: int, device: str) -> dict:
    return {"max_depth": prm.xgb_depth, "eta": prm.xgb_eta, "min_child_weight": prm.xgb_min_child_weight,
            "subsample": prm.xgb_subsample, "colsample_bytree": prm.xgb_colsample, "lambda": prm.xgb_lambda,
            "tree_method": "hist", "nthread": prm.threads, "seed": seed, "device": device, "verbosity": 0,
            "objective": "reg:squarederror", "eval_metric": "rmse"}


def _fit_xgb_ft(p: Pooled, pf: PanelFeatures, y: np.ndarray, t_lo: int, t_hi: int, prm: ModelParams,
                seed: int) -> FittedModel:
    import xgboost as xgb
    base_fm = _fit_xgb(p, prm, seed)
    n_base = base_fm.info["best_iteration"] + 1
    base = base_fm.obj[:n_base]
    tr0, _ = _split_val(p, prm.horizon)
    ys = float(np.std(p.y[tr0])) or 1.0                      # the pooled model's label scale
    per: dict[str, object] = {}
    tuned: dict[str, int] = {}
    kept_pooled = 0
    if prm.xgb_objective == "reg":
        allrows = pooled(pf, y, t_lo, t_hi, step=1)           # every bar of the symbol: it has few rows
        params = _xgb_params(prm, seed, base_fm.info["device"])
        for j in np.unique(allrows.j):
            m = allrows.j == j
            if m.sum() < prm.ft_min_rows:
                continue
            ps = Pooled(allrows.X[m], allrows.y[m], allrows.t[m], allrows.j[m])
            tr, va = _split_val(ps, prm.horizon)
            if tr.sum() < prm.ft_min_rows // 2 or va.sum() < 20:
                continue
            dtr = xgb.DMatrix(ps.X[tr], label=ps.y[tr] / ys)
            dva = xgb.DMatrix(ps.X[va], label=ps.y[va] / ys)
            base_rmse = float(np.sqrt(np.mean((base.predict(dva) - ps.y[va] / ys) ** 2)))
            b = xgb.train(params, dtr, prm.ft_rounds, xgb_model=base, evals=[(dva, "val")],
                          early_stopping_rounds=prm.ft_early_stopping, verbose_eval=False)
            n = int(b.best_iteration) + 1                    # absolute: counts the pooled trees too
            if n > n_base and float(b.best_score) < base_rmse:
                per[pf.symbols[j]] = b[:n]
                tuned[pf.symbols[j]] = n - n_base
            else:
                kept_pooled += 1
    info = dict(base_fm.info) | {"pooled_trees": n_base, "fine_tuned": len(tuned), "kept_pooled": kept_pooled,
                                 "extra_rounds": tuned,
                                 "note": "" if prm.xgb_objective == "reg" else "rank objective: no fine-tuning"}
    return FittedModel("xgboost_ft", prm, seed, (base, per), info=info)


def _fit_lstm_emb(p: Pooled, prm: ModelParams, seed: int, pf: PanelFeatures) -> FittedModel:
    import torch
    rng, take, device, why, mu, sd, S, y = _lstm_rows(p, prm, seed, pf)
    n = len(p.y)
    vocab = {pf.symbols[j]: i + 1 for i, j in enumerate(np.unique(p.j))}
    sid = sym_ids(vocab, np.asarray(pf.symbols, dtype=object)[p.j[take]])
    sid[rng.random(len(sid)) < prm.emb_unknown_p] = 0        # trains the shared "unknown" id
    sid = torch.from_numpy(sid).to(device)
    net = lstm_emb_net(S.shape[-1], prm.lstm_hidden, len(vocab), prm.emb_dim).to(device)
    loss = _train_mse(net, (S, sid), y, prm, device)
    return FittedModel("lstm_emb", prm, seed, (net.cpu(), vocab), mu, sd,
                       info={"rows": int(len(take)), "rows_available": int(n), "device": device,
                             "device_reason": why, "final_loss": loss, "symbols": len(vocab)})


def _fit_extra(kind: str, p: Pooled, pf: PanelFeatures, y: np.ndarray, t_lo: int, t_hi: int, prm: ModelParams,
               seed: int) -> FittedModel:
    if kind == "xgboost_ft":
        return _fit_xgb_ft(p, pf, y, t_lo, t_hi, prm, seed)
    return _fit_lstm_emb(p, prm, seed, pf)


def _save_extra(m: FittedModel, path) -> dict:
    entry = {"kind": m.kind, "seed": m.seed, "info": json.loads(json.dumps(m.info, default=str))}
    if m.kind == "xgboost_ft":
        base, per = m.obj
        f = path.with_suffix(".ubj")
        base.save_model(str(f))
        files = {}
        for s, b in per.items():
            g = path.with_name(f"{path.name}.{s}.ubj")
            b.save_model(str(g))
            files[s] = g.name
        return entry | {"file": f.name, "symbol_files": files}
    import torch
    net, vocab = m.obj
    f = path.with_suffix(".pt")
    buf = io.BytesIO()
    # tensors, not numpy arrays: the daemon reads it with weights_only=True (engines.pooled.load_extra)
    torch.save({"state": net.state_dict(), "mu": torch.from_numpy(np.asarray(m.mu)),
                "sd": torch.from_numpy(np.asarray(m.sd)), "hidden": m.params.lstm_hidden,
                "seq_len": m.params.lstm_seq_len, "features": list(FEATURE_NAMES), "vocab": vocab,
                "emb_dim": m.params.emb_dim}, buf)
    f.write_bytes(buf.getvalue())
    return entry | {"file": f.name}


def _load_extra(entry: dict, folder, params: ModelParams) -> FittedModel:
    """The daemon's reader (engines.pooled.load_extra: ModelLoadError naming a bad file) into a FittedModel."""
    from pathlib import Path
    kind = entry["kind"]
    if kind not in EXTRA_KINDS:
        raise ValueError(f"load_extra_model: not an extra kind {kind!r} ({', '.join(EXTRA_KINDS)})")
    got = load_extra(kind, Path(folder), entry)
    if kind == "lstm_emb":
        net = got["obj"][0]
        params = params.with_(lstm_hidden=net.lstm.hidden_size, lstm_seq_len=got["seq_len"],
                              emb_dim=net.emb.embedding_dim)
    return FittedModel(kind, params, entry["seed"], got["obj"], got.get("mu"), got.get("sd"),
                       info=entry.get("info", {}))
