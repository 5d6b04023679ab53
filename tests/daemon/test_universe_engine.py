"""The daemon's universe mode equals research's batch numbers: real 1h bars of 6 symbols (one listed mid-period),
models trained by `tradingd train --data` into a real registry, loaded the daemon's way, and the REAL
TradingPipeline (priming symbol after symbol, then live bars interleaved) predicting each boundary incrementally.
Reference: research.models.predict_panel of the same model files over the batch panel, the ensemble of
cross-sectional z-scores with the manifest's weights, times the calibration's slope. Two model sets: the default
(xgboost, ridge, lstm) and every kind (+ xgboost_ft, lstm_emb, which need each row's symbol; the daemon then runs a
universe where one fine-tuned symbol's bars come under a name the models never saw)."""
from __future__ import annotations

import math
from dataclasses import replace as dc_replace

import numpy as np
import pytest

from daemon.broker import PaperBroker
from daemon.config import Config, replace
from daemon.pipeline import TradingPipeline
from daemon.store import SQLiteStore
from daemon.universe_engine import UniverseEngineSet, load_universe_sets
from engines.base import ModelLoadError
from engines.registry import ModelRegistry
from engines.xsection import cs_zscore
from market.events import Bar
from market.filters import SymbolFilters
from strategies.optimizer import DollarProfitOptimizer
from strategies.risk import RiskManager

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")

_M = 60_000_000_000
PRIME = 400  # bars primed per symbol before the live part


@pytest.fixture(scope="module")
def trained(real_universe_1h, tmp_path_factory):
    from daemon.cli import main
    reg = tmp_path_factory.mktemp("ureg")
    rc = main(["train", "--data", str(real_universe_1h), "--registry", str(reg), "--lstm-max-rows", "1500",
               "--threads", "1", "--horizon", "6"])
    assert rc == 0
    return reg


@pytest.fixture(scope="module")
def trained_extra(real_universe_1h, tmp_path_factory):
    """Every kind, the extra ones included (`--models` as research's backtest names them)."""
    from daemon.cli import main
    reg = tmp_path_factory.mktemp("ureg_extra")
    rc = main(["train", "--data", str(real_universe_1h), "--registry", str(reg), "--lstm-max-rows", "1500",
               "--threads", "1", "--horizon", "6", "--models", "xgboost,ridge,lstm,xgboost_ft,lstm_emb"])
    assert rc == 0
    return reg


UNSEEN = "NEWUSDT"


def minute_bars(panel, j):
    """The symbol's 1h bars as the pipeline's 1m input: one 1m bar in the hour's last minute carrying the hour's
    OHLCV, which MinuteAggregator turns back into exactly that 1h bar."""
    out = []
    for t in np.flatnonzero(np.isfinite(panel.close[:, j])):
        out.append((t, Bar(panel.symbols[j], "1m", int(panel.open_ns[t]) + 59 * _M, float(panel.open[t, j]),
                           float(panel.high[t, j]), float(panel.low[t, j]), float(panel.close[t, j]),
                           float(panel.volume[t, j]))))
    return out


def book(c):
    return [(c * 0.99995, 5.0)], [(c * 1.00005, 5.0)]


def reference(reg, panel, es: UniverseEngineSet):
    """Research's batch path over the same model files (the extra kinds read by research's own loader)."""
    from research.dataset import panel_features
    from research.models import EXTRA_KINDS, FittedModel, ModelParams, load_extra_model, predict_panel
    from engines.pooled import load_bundle
    pf = panel_features(panel)
    b = es.bundle
    scores = {}
    for k, m in b.models.items():
        if k == "lstm":  # research's net: the .pt by torch (the daemon runs the ONNX graph written at training)
            m = load_bundle(b.path, lstm="torch").models["lstm"]
            assert m.file == "lstm.pt" and es.bundle.models["lstm"].file == "lstm.onnx"
        fm = FittedModel(k, ModelParams(lstm_seq_len=max(m.seq_len, 1), threads=1), 0, m.obj, m.mu, m.sd)
        if k in EXTRA_KINDS:
            entry = next(e for e in b.manifest["models"] if e["kind"] == k)
            fm = load_extra_model(entry, b.path, ModelParams(threads=1))
            assert fm.obj is not m.obj
        if k == "xgboost":
            assert m.best_iteration == m.obj.best_iteration  # the manifest's and the file's agree
        scores[k] = predict_panel(fm, pf, 0, pf.X.shape[0])
    ens = sum(w * np.nan_to_num(cs_zscore(scores[k]), nan=0.0) for k, w in b.weights.items())
    ens = np.where(pf.valid, ens, np.nan)
    return scores, b.calibration.slope * cs_zscore(ens)


@pytest.mark.parametrize("model_set", ["default", "extra"])
def test_pipeline_predictions_equal_research_batch(model_set, request, real_universe_1h, tmp_path):
    from research.universe import load_universe
    reg = request.getfixturevalue("trained" if model_set == "default" else "trained_extra")
    panel = load_universe(real_universe_1h).panels["1h"]
    renamed = ""
    if model_set == "extra":  # a fine-tuned symbol's bars under a name the models never saw
        ft = ModelRegistry(reg)
        from engines.pooled import load_bundle
        tuned = load_bundle(ft.current("1h", "universe")).info()["fine_tuned_symbols"]
        renamed = next(s for s in tuned if s != "LINKUSDT")
        panel = dc_replace(panel, symbols=tuple(UNSEEN if s == renamed else s for s in panel.symbols))
    syms = panel.symbols
    sets = load_universe_sets(ModelRegistry(reg), ("1h",), syms)
    es = sets["1h"]
    kinds = {"xgboost", "ridge", "lstm"} | ({"xgboost_ft", "lstm_emb"} if model_set == "extra" else set())
    assert set(es.bundle.models) == kinds and es.bundle.calibration.rows > 30
    # the boundaries below are scored by the faster runners (engines.pooled_runtime), research by the libraries
    assert es.info()["universe"]["runners"] == {"xgboost": "compiled-cpu", "lstm": "onnxruntime-cpu"}
    scores, er = reference(reg, panel, es)

    cfg = replace(Config(), general={"timeframes": ("1h",), "data_dir": str(tmp_path), "symbols": syms})
    filters = {s: SymbolFilters(s, 1e-8, 1e-8, 1e-8, 1e12, 5.0) for s in syms}
    store = SQLiteStore(tmp_path / "s.sqlite")
    opt = DollarProfitOptimizer(cfg.optimizer, cfg.risk, filters=filters, fee_rate=cfg.broker.taker_fee,
                                timeframes=("1h",), starting_equity=cfg.broker.starting_cash)
    pipe = TradingPipeline(cfg, syms, sets, opt, RiskManager(cfg.risk, filters),
                           PaperBroker(cfg.broker, store, symbols=syms, filters=filters), store=store,
                           timeframes=("1h",), keep=None, bar_sink=lambda bars: None)
    bars = {s: minute_bars(panel, j) for j, s in enumerate(syms)}
    shadow_got: dict = {}
    if model_set == "default":  # a shadow challenger (another bundle) scored on this engine set's universe rows
        from daemon.universe_engine import UniverseChallenger
        other = load_universe_sets(ModelRegistry(request.getfixturevalue("trained_extra")), ("1h",), syms)["1h"]
        challenger = UniverseChallenger(es, es.prepare(other.bundle))
        _, er_other = reference(request.getfixturevalue("trained_extra"), panel, other)

        def shadow_observer(tf, ts, rows):
            for r in rows:
                t = (es.last_close - int(panel.open_ns[0])) // (3600 * 10**9) - 1  # the bar closing there
                shadow_got[(r.symbol, t)] = challenger.predict(r.row, r.symbol)
        pipe.observers.append(shadow_observer)
    link = syms.index("LINKUSDT")
    assert np.isnan(panel.close[:PRIME + 40, link]).all()  # listed during the live part
    for s in syms:  # priming: one symbol's whole history after the other's (as kernel.prime does)
        pipe.prime(s, [b for t, b in bars[s] if t < PRIME])
    steps = es.steps
    pipe.finish_priming()  # as kernel.prime does after the last symbol: the history is stepped at start-up
    assert steps == 0 and es.steps == PRIME
    for t in range(PRIME, len(panel.open_ns)):
        for s in syms:
            for tt, b in bars[s]:
                if tt == t:
                    pipe.on_bar(b, book(b.close))
    pipe.flush()
    T0 = int(panel.open_ns[0])
    got = {(d.symbol, (d.bar_open_ns - T0) // (3600 * 10**9)): d.predictions for d in pipe.decisions if d.timeframe}
    checked = listed_checked = 0
    for t in range(PRIME, len(panel.open_ns)):
        for j, s in enumerate(syms):
            p = got.get((s, t))
            if not np.isfinite(panel.close[t, j]):
                assert p is None
                continue
            if math.isfinite(er[t, j]):
                assert p, (s, t)
                assert p["expected_return"] == pytest.approx(er[t, j], rel=1e-5, abs=1e-9), (s, t)
                for k in es.bundle.models:
                    assert p[f"u_{k}"] == pytest.approx(scores[k][t, j], rel=1e-5, abs=1e-6), (s, t, k)
                assert "xgboost" not in p and "lstm" not in p  # P(up) keys mean something else to the optimizer
                checked += 1
                listed_checked += s == "LINKUSDT"
            else:
                assert p == {}, (s, t, p)
    assert checked > 1500 and listed_checked > 100
    if model_set == "default":  # the challenger equals research's batch path of ITS bundle, boundary by boundary
        n = 0
        for (s, t), p in shadow_got.items():
            j = syms.index(s)
            if math.isfinite(er_other[t, j]):
                assert p["expected_return"] == pytest.approx(er_other[t, j], rel=1e-5, abs=1e-9), (s, t)
                n += 1
        assert n > 1500
    n_boundaries = len(panel.open_ns) - PRIME
    for k in es.bundle.models.keys() - {"xgboost_ft"}:  # ONE inference call per model per boundary, all symbols
        assert es.calls[k] == n_boundaries
    if model_set == "extra":
        # xgboost_ft: one call per fine-tuned symbol present, plus one for the others (the pooled booster)
        per = es.bundle.models["xgboost_ft"].obj[1]
        valid = np.isfinite(er[PRIME:])
        tuned_cols = np.array([s in per for s in syms])
        want = int((valid & tuned_cols).sum() + (valid & ~tuned_cols).any(axis=1).sum())
        assert es.calls["xgboost_ft"] == want > n_boundaries
        assert es.info()["universe"]["inference_calls"]["xgboost_ft"] == want
        check_unseen(es, panel, syms.index(UNSEEN), renamed, scores, got)
    assert es.steps == len(panel.open_ns) and es.counters.get("late_bar", 0) == 0


def check_unseen(es, panel, j, renamed, scores, got):
    """The unseen symbol's daemon scores (equal to research's, checked above) are the pooled booster's and the
    embedding's id 0, computed here without engines' dispatch; under its real name research scores it otherwise."""
    import torch
    import xgboost as xgb

    from engines.pooled import standardise_windows
    from research.dataset import panel_features
    from research.models import FittedModel, ModelParams, predict_panel
    pf = panel_features(panel)
    t = np.array([t for t in range(PRIME, pf.X.shape[0]) if got.get((UNSEEN, t))])
    assert len(t) > 100
    daemon = {k: np.array([got[(UNSEEN, tt)][f"u_{k}"] for tt in t]) for k in ("xgboost_ft", "lstm_emb")}
    base, per = es.bundle.models["xgboost_ft"].obj
    assert UNSEEN not in per and renamed in per
    np.testing.assert_allclose(daemon["xgboost_ft"], base.predict(xgb.DMatrix(pf.X[t, j])), rtol=1e-6, atol=1e-7)
    m = es.bundle.models["lstm_emb"]
    net, vocab = m.obj
    assert UNSEEN not in vocab and renamed in vocab
    W = pf.X[np.maximum(t[:, None] - np.arange(m.seq_len - 1, -1, -1)[None, :], 0), j]
    with torch.no_grad():
        id0 = net(torch.from_numpy(standardise_windows(W, m.mu, m.sd)), torch.zeros(len(t), dtype=torch.long))
    np.testing.assert_allclose(daemon["lstm_emb"], id0.numpy(), rtol=1e-5, atol=1e-6)
    # the same rows under the symbol's real name: its own booster and embedding, other numbers
    known = dc_replace(pf, symbols=tuple(renamed if s == UNSEEN else s for s in pf.symbols))
    for k in ("xgboost_ft", "lstm_emb"):
        mk = es.bundle.models[k]
        fm = FittedModel(k, ModelParams(lstm_seq_len=max(mk.seq_len, 1), threads=1), 0, mk.obj, mk.mu, mk.sd)
        own = predict_panel(fm, known, 0, pf.X.shape[0])[t, j]
        assert np.isfinite(own).all() and not np.allclose(own, daemon[k]), k


def test_corrupt_or_foreign_bundle_is_refused_naming_the_file(trained, tmp_path):
    import shutil
    root = tmp_path / "reg"
    shutil.copytree(trained, root)
    reg = ModelRegistry(root)
    syms = ("A", "B", "C")
    with pytest.raises(ModelLoadError, match="at least 3 symbols"):
        load_universe_sets(reg, ("1h",), ("A", "B"))
    with pytest.raises(ModelLoadError, match="no current universe model for timeframe 5m"):
        load_universe_sets(reg, ("5m",), syms)
    vdir = reg.current("1h", "universe")
    (vdir / "xgboost.ubj").write_bytes(b"garbage")
    with pytest.raises(ModelLoadError, match="xgboost.ubj"):
        load_universe_sets(reg, ("1h",), syms)
    # a bundle whose feature list differs (checksums recomputed: only the content check can refuse it)
    from engines.pooled import load_bundle
    d = tmp_path / "b"
    shutil.copytree(trained / "universe" / "1h", d)
    import json
    m = json.loads((d / "manifest.json").read_text())
    m["features"] = m["features"][:-1]
    (d / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ModelLoadError, match="manifest.json: feature list"):
        load_bundle(d)
    (d / "manifest.json").write_text(json.dumps({**m, "features": list(json.loads(
        (trained / "universe" / "1h" / "manifest.json").read_text())["features"])}))
    (d / "lstm.pt").unlink()
    with pytest.raises(ModelLoadError, match="lstm.pt: missing"):
        load_bundle(d)


def test_a_bar_for_a_boundary_already_stepped_is_refused_and_counted(trained):
    """The rolling state cannot go back in time: a late boundary (or a primed bar older than the last step) gets
    no predictions, and the refusal is counted with its reason in /metrics."""
    from daemon.metrics import Metrics
    metrics = Metrics()
    syms = ("AUSDT", "BUSDT", "CUSDT")
    es = load_universe_sets(ModelRegistry(trained), ("1h",), syms, metrics=metrics)["1h"]
    h = 3600 * 10**9
    t0 = 1_700_000_000 * 10**9 // h * h

    def rows(k):
        return [(s, Bar(s, "1h", t0 + k * h, 10.0 + j, 10.5 + j, 9.5 + j, 10.0 + j + 0.01 * k, 100.0), None)
                for j, s in enumerate(syms)]
    assert es.predict_boundary(rows(1), t0 + 2 * h) == [{}, {}, {}]  # not warm: no rows yet, nothing refused
    assert es.counters == {}
    assert es.predict_boundary(rows(0), t0 + h) == [{}, {}, {}]
    es.observe_bar("AUSDT", rows(0)[0][1], None)
    assert es.counters == {"late_bar": 4} and es.steps == 1
    text = metrics.render().decode()
    assert 'tradingd_universe_refusals_total{reason="late_bar",timeframe="1h"} 4.0' in text


def test_corrupt_or_missing_extra_model_files_are_refused_naming_the_file(trained_extra, tmp_path):
    """xgboost_ft's per-symbol boosters and lstm_emb's checkpoint: every file checked, the bad one named."""
    import json
    import shutil

    from engines.pooled import load_bundle
    src = trained_extra / "universe" / "1h"
    entries = {e["kind"]: e for e in json.loads((src / "manifest.json").read_text())["models"]}
    sym, name = next(iter(entries["xgboost_ft"]["symbol_files"].items()))
    assert name == f"xgboost_ft.{sym}.ubj"

    def fresh() -> object:
        d = tmp_path / "b"
        shutil.rmtree(d, ignore_errors=True)
        shutil.copytree(src, d)
        return d
    assert set(load_bundle(fresh()).models) == set(entries)
    d = fresh()
    (d / name).write_bytes(b"garbage")
    with pytest.raises(ModelLoadError, match=f"{name}: unreadable or corrupt"):
        load_bundle(d)
    (d / name).unlink()
    with pytest.raises(ModelLoadError, match=f"{name}: missing"):
        load_bundle(d)
    d = fresh()
    (d / "lstm_emb.pt").write_bytes((d / "lstm_emb.pt").read_bytes()[:200])  # truncated
    with pytest.raises(ModelLoadError, match="lstm_emb.pt: unreadable or corrupt"):
        load_bundle(d)
    (d / "lstm_emb.pt").write_bytes((d / "lstm.pt").read_bytes())  # the plain LSTM's file: no vocabulary
    with pytest.raises(ModelLoadError, match="lstm_emb.pt: unreadable or corrupt"):
        load_bundle(d)
    d = fresh()
    m = json.loads((d / "manifest.json").read_text())
    for e in m["models"]:
        if e["kind"] == "xgboost_ft":
            e["symbol_files"][sym] = "../" + name
    (d / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ModelLoadError, match="bad file name"):
        load_bundle(d)
    # in the registry (what the daemon loads): the published per-symbol file is checksummed too
    root = tmp_path / "reg"
    shutil.copytree(trained_extra, root)
    reg = ModelRegistry(root)
    vdir = reg.current("1h", "universe")
    assert (vdir / name).is_file()
    (vdir / name).write_bytes(b"garbage")
    with pytest.raises(ModelLoadError, match=name):
        load_universe_sets(reg, ("1h",), ("AUSDT", "BUSDT", "CUSDT"))


def test_fast_runners_equal_the_library_calls_on_real_windows(trained, real_universe_1h):
    """The daemon's ONNX Runtime LSTM (the graph written at training: the loaded model and its runner) and compiled
    xgboost walker score real universe rows and LSTM windows (NaN rows of a symbol not yet listed included) like
    torch (the bundle's .pt) and xgboost's inplace_predict."""
    from engines.pooled import OnnxLSTM, load_bundle
    from engines.pooled_runtime import build_runners
    from research.dataset import panel_features
    from research.universe import load_universe
    panel = load_universe(real_universe_1h).panels["1h"]
    es = load_universe_sets(ModelRegistry(trained), ("1h",), panel.symbols)["1h"]
    pf = panel_features(panel)
    runners, unused = build_runners(es.bundle)
    assert unused == {} and set(runners) == {"xgboost", "lstm"}
    lstm, xgb = es.bundle.models["lstm"], es.bundle.models["xgboost"]
    torch_lstm = load_bundle(es.bundle.path, lstm="torch").models["lstm"]
    assert isinstance(lstm.obj, OnnxLSTM) and not isinstance(torch_lstm.obj, OnnxLSTM)
    L = lstm.seq_len
    assert L == torch_lstm.seq_len
    np.testing.assert_array_equal(lstm.mu, torch_lstm.mu)
    np.testing.assert_array_equal(lstm.sd, torch_lstm.sd)
    n_rows = with_nan = 0
    for t in range(L - 1, pf.X.shape[0]):
        ok = pf.valid[t]
        if not ok.any():
            continue
        W = pf.X[t - L + 1:t + 1][:, ok].transpose(1, 0, 2)  # (n, L, F), as UniverseBundle.predict builds them
        want = torch_lstm.predict(W)
        np.testing.assert_allclose(runners["lstm"](W), want, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(lstm.predict(W), want, rtol=1e-5, atol=1e-7)
        X = np.ascontiguousarray(pf.X[t][ok])
        np.testing.assert_array_equal(runners["xgboost"](X), xgb.predict(X))  # float32 sums in XGBoost's order
        n_rows += int(ok.sum())
        with_nan += int(np.isnan(W).any(axis=(1, 2)).sum())
    assert n_rows > 1500 and with_nan > 0  # incl. windows reaching back before a symbol's first complete row

def test_a_model_without_a_runner_keeps_the_library_call_counted(trained, tmp_path):
    """A rank:pairwise XGBoost (the walker knows only margin objectives) is passed over at load: the library
    scores it, and the fallback is counted in the engine set and in tradingd_backend_fallbacks_total."""
    import dataclasses

    import xgboost as xgb

    from daemon.metrics import Metrics
    from engines.pooled import PooledModel, load_bundle
    from engines.pooled_runtime import build_runners
    from engines.xsection import FEATURE_NAMES
    b = load_bundle(trained / "universe" / "1h")
    rng = np.random.default_rng(0)
    X = rng.standard_normal((300, len(FEATURE_NAMES))).astype(np.float32)
    d = xgb.DMatrix(X, label=(X[:, 0] > 0).astype(float))
    d.set_group([30] * 10)
    booster = xgb.train({"objective": "rank:pairwise", "nthread": 1, "max_depth": 3}, d, num_boost_round=5)
    ranked = PooledModel("xgboost", booster, "xgboost.ubj", best_iteration=4)
    bundle = dataclasses.replace(b, models={**b.models, "xgboost": ranked})
    runners, unused = build_runners(bundle)
    assert set(runners) == {"lstm"} and "objective 'rank:pairwise'" in unused["xgboost"]
    metrics = Metrics()
    syms = ("AUSDT", "BUSDT", "CUSDT")
    es = UniverseEngineSet("1h", bundle, syms, metrics=metrics)
    assert es.counters == {"runner_unused.xgboost": 1}
    assert es.info()["universe"]["runners"] == {"lstm": "onnxruntime-cpu"}
    assert UniverseEngineSet("1h", bundle, syms, fast=False).info()["universe"]["runners"] == {}  # libraries only
    text = metrics.render().decode()
    assert ('tradingd_backend_fallbacks_total{kind="u_xgboost",reason="build_failed",requested="fast",'
            'timeframe="1h"} 1.0') in text
    hist = np.stack([X[:3]] * bundle.seq_len)
    with_lib = bundle.predict(hist)
    got = bundle.predict(hist, runners=runners)
    assert np.isfinite(got["xgboost"]).all()
    np.testing.assert_array_equal(got["xgboost"], with_lib["xgboost"])


# ------------------------------------------------------------------------- the pooled LSTM without torch (ONNX)
NO_TORCH_SCRIPT = r"""
import json, sys
import numpy as np
from daemon.universe_engine import load_universe_sets
from engines.features import FEATURE_SCHEMA
from engines.registry import ModelRegistry
from market.events import Bar
from research.dataset import panel_features
from research.universe import load_universe
panel = load_universe(sys.argv[2]).panels["1h"]
pf = panel_features(panel)
es = load_universe_sets(ModelRegistry(sys.argv[1]), ("1h",), panel.symbols)["1h"]
H, nb, T, LIVE = 3600 * 10**9, FEATURE_SCHEMA.n_features, len(panel.open_ns), 12


def rows(t):
    out = []
    for j, s in enumerate(panel.symbols):
        if np.isfinite(panel.close[t, j]):
            row = pf.X[t, j, :nb].astype(np.float64)
            out.append((s, Bar(s, "1h", int(panel.open_ns[t]), float(panel.open[t, j]), float(panel.high[t, j]),
                               float(panel.low[t, j]), float(panel.close[t, j]), float(panel.volume[t, j])),
                        row if np.isfinite(row).all() else None))
    return out


for t in range(T - LIVE):  # priming, as kernel.prime: symbol after symbol, then stepped in time order
    for s, bar, row in rows(t):
        es.observe_bar(s, bar, row)
es.finish_priming()
answered = 0
for t in range(T - LIVE, T):
    answered += sum(bool(p) for p in es.predict_boundary(rows(t), int(panel.open_ns[t]) + H))
info = es.info()["universe"]
print(json.dumps({"torch": sorted(m for m in sys.modules if m == "torch" or m.startswith("torch.")),
                  "answered": answered, "valid": int(pf.valid[T - LIVE:].sum()), "lstm_calls": es.calls["lstm"],
                  "runners": info["runners"],
                  "unused": info["runners_unused"], "lstm_loaded": info.get("lstm_loaded")}))
"""


def test_the_daemon_loads_and_runs_the_universe_without_importing_torch(trained, real_universe_1h):
    """A bundle fresh from `tradingd train --data`, loaded the daemon's way (load_universe_sets) in a new process
    and run for a dozen boundaries: the LSTM runs its ONNX graph on ONNX Runtime and torch is never imported."""
    import json
    import subprocess
    import sys

    from tests.paths import ROOT
    r = subprocess.run([sys.executable, "-c", NO_TORCH_SCRIPT, str(trained), str(real_universe_1h)], cwd=ROOT,
                       capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stderr[-3000:]
    got = json.loads(r.stdout.strip().splitlines()[-1])
    assert got["torch"] == []
    assert got["lstm_loaded"] == {"file": "lstm.onnx", "library": "onnxruntime"}
    assert got["runners"] == {"xgboost": "compiled-cpu", "lstm": "onnxruntime-cpu"} and got["unused"] == {}
    assert got["lstm_calls"] == 12  # one LSTM call per boundary, all symbols
    assert got["answered"] == got["valid"] >= 12 * 3  # every symbol with a complete row (BTC, ETH: data ended)


def test_the_onnx_graph_and_torch_answers_are_written_at_training_and_checksummed(trained):
    """`tradingd train` writes the LSTM's ONNX graph and torch's recorded answers beside its .pt, the manifest entry
    names them, the registry checksums them, and the loaded session reproduces the recorded answers within TOL."""
    import json

    from engines.pooled import TOL, load_bundle
    reg = ModelRegistry(trained)
    vdir = reg.current("1h", "universe")
    entry = next(e for e in json.loads((vdir / "universe.json").read_text())["models"] if e["kind"] == "lstm")
    assert entry["file"] == "lstm.pt"
    assert entry["runtime_files"] == {"onnx": "lstm.onnx", "answers": "lstm.answers.npz"}
    files = json.loads((vdir / "manifest.json").read_text())["files"]
    assert {"lstm.pt", "lstm.onnx", "lstm.answers.npz"} <= set(files)
    assert all(len(files[f]["sha256"]) == 64 for f in ("lstm.onnx", "lstm.answers.npz"))
    m = load_bundle(vdir).models["lstm"]
    x, y = m.answers
    assert x.shape == (64, m.seq_len, len(m.mu)) and np.isnan(x[0]).any()  # a symbol listed mid-window
    got = m.predict(x)
    assert np.max(np.abs(got - y)) <= TOL and np.std(y) > 0


def test_a_tampered_onnx_graph_or_recorded_answers_is_refused_naming_the_file(trained, tmp_path):
    """The rule (engines/pooled.py docstring): the ONNX session disagreeing with torch's recorded answers, or a graph
    ONNX Runtime cannot run, is a ModelLoadError naming the file, even with torch importable (no fallback)."""
    import io
    import shutil

    from engines.pooled import export_lstm_onnx, load_bundle, lstm_net
    src = trained / "universe" / "1h"

    def fresh():
        d = tmp_path / "b"
        shutil.rmtree(d, ignore_errors=True)
        shutil.copytree(src, d)
        return d
    d = fresh()
    (d / "lstm.onnx").write_bytes(b"garbage")
    with pytest.raises(ModelLoadError, match="lstm.onnx: unreadable or corrupt"):
        load_bundle(d)
    d = fresh()
    m = load_bundle(d).models["lstm"]
    other = lstm_net(len(m.mu), 16)  # a valid graph of another (untrained) net
    (d / "lstm.onnx").write_bytes(export_lstm_onnx(other.eval(), m.seq_len, len(m.mu)))
    with pytest.raises(ModelLoadError, match=r"lstm.onnx: its scores .* recorded at training in lstm.answers.npz"):
        load_bundle(d)
    d = fresh()
    with np.load(d / "lstm.answers.npz") as z:
        parts = dict(z)
    parts["y"] = parts["y"] + 1e-4  # answers altered
    buf = io.BytesIO()
    np.savez(buf, **parts)
    (d / "lstm.answers.npz").write_bytes(buf.getvalue())
    with pytest.raises(ModelLoadError, match=r"lstm.onnx: its scores .* lstm.answers.npz by 0.0001"):
        load_bundle(d)
    (d / "lstm.answers.npz").write_bytes(buf.getvalue()[:300])
    with pytest.raises(ModelLoadError, match="lstm.answers.npz: unreadable or corrupt"):
        load_bundle(d)
    (d / "lstm.answers.npz").unlink()
    with pytest.raises(ModelLoadError, match="lstm.answers.npz: missing"):
        load_bundle(d)
    assert load_bundle(d, lstm="torch").models["lstm"].file == "lstm.pt"  # research's reader ignores the graph
    # in the registry (what the daemon loads): the graph is checksummed
    root = tmp_path / "reg"
    shutil.copytree(trained, root)
    reg = ModelRegistry(root)
    g = reg.current("1h", "universe") / "lstm.onnx"
    g.write_bytes(g.read_bytes()[:-1] + bytes([g.read_bytes()[-1] ^ 1]))
    with pytest.raises(ModelLoadError, match="lstm.onnx"):
        load_universe_sets(reg, ("1h",), ("AUSDT", "BUSDT", "CUSDT"))


def test_a_bundle_trained_before_the_onnx_graph_still_loads_with_torch(trained, tmp_path):
    """A bundle without ``runtime_files`` (trained before): the .pt by torch, exported in memory for the ONNX
    Runtime runner, checked against torch on probe windows; same scores as the graph written at training."""
    import json
    import shutil

    import torch

    from engines.pooled import OnnxLSTM, load_bundle
    d = tmp_path / "old"
    shutil.copytree(trained / "universe" / "1h", d)
    m = json.loads((d / "manifest.json").read_text())
    for e in m["models"]:
        e.pop("runtime_files", None)
    (d / "manifest.json").write_text(json.dumps(m))
    (d / "lstm.onnx").unlink()
    (d / "lstm.answers.npz").unlink()
    old = load_bundle(d)
    lstm = old.models["lstm"]
    assert isinstance(lstm.obj, torch.nn.Module) and lstm.file == "lstm.pt" and lstm.answers is None
    assert old.info()["lstm_loaded"] == {"file": "lstm.pt", "library": "torch"}
    es = UniverseEngineSet("1h", old, ("AUSDT", "BUSDT", "CUSDT"))
    assert es.info()["universe"]["runners"] == {"xgboost": "compiled-cpu", "lstm": "onnxruntime-cpu"}
    assert es.info()["universe"]["runners_unused"] == {}
    new = load_bundle(trained / "universe" / "1h").models["lstm"]
    assert isinstance(new.obj, OnnxLSTM)
    x, y = new.answers
    np.testing.assert_allclose(lstm.predict(x), y, rtol=0, atol=1e-7)  # the same net: torch answers again



def test_training_writes_the_graph_only_when_onnx_runtime_agrees_with_torch(trained, tmp_path, monkeypatch):
    """save_model (the one writer of bundle files): the graph and answers are reproducible byte for byte from the
    same net; a graph that ONNX Runtime does not reproduce within TOL is not written (the entry keeps the .pt only,
    the reason in its info), so the daemon loads that LSTM with torch."""
    import research.models as rm
    from engines.pooled import load_bundle
    src = trained / "universe" / "1h"
    tm = load_bundle(src, lstm="torch").models["lstm"]
    fm = rm.FittedModel("lstm", rm.ModelParams(lstm_seq_len=tm.seq_len, threads=1), 0, tm.obj, tm.mu, tm.sd)
    entry = rm.save_model(fm, tmp_path / "lstm")
    assert entry["runtime_files"] == {"onnx": "lstm.onnx", "answers": "lstm.answers.npz"}
    for f in ("lstm.onnx", "lstm.answers.npz"):
        assert (tmp_path / f).read_bytes() == (src / f).read_bytes(), f
    monkeypatch.setattr(rm, "TOL", -1.0)  # no graph can agree
    d = tmp_path / "strict"
    d.mkdir()
    fm = rm.FittedModel("lstm", rm.ModelParams(lstm_seq_len=tm.seq_len, threads=1), 0, tm.obj, tm.mu, tm.sd)
    entry = rm.save_model(fm, d / "lstm")
    assert "runtime_files" not in entry and entry["info"]["onnx"].startswith("not saved: ValueError: ONNX Runtime")
    assert sorted(p.name for p in d.iterdir()) == ["lstm.pt"]
