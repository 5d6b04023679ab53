"""The daemon's universe mode equals research's batch numbers: real 1h bars of 6 symbols (one listed mid-period),
models trained by `tradingd train --data` into a real registry, loaded the daemon's way, and the REAL
TradingPipeline (priming symbol after symbol, then live bars interleaved) predicting each boundary incrementally.
Reference: research.models.predict_panel of the same model files over the batch panel, the ensemble of
cross-sectional z-scores with the manifest's weights, times the calibration's slope."""
from __future__ import annotations

import math

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
    """Research's batch path over the same model files."""
    from research.dataset import panel_features
    from research.models import FittedModel, ModelParams, predict_panel
    pf = panel_features(panel)
    b = es.bundle
    scores = {}
    for k, m in b.models.items():
        fm = FittedModel(k, ModelParams(lstm_seq_len=max(m.seq_len, 1), threads=1), 0, m.obj, m.mu, m.sd)
        if k == "xgboost":
            assert m.best_iteration == m.obj.best_iteration  # the manifest's and the file's agree
        scores[k] = predict_panel(fm, pf, 0, pf.X.shape[0])
    ens = sum(w * np.nan_to_num(cs_zscore(scores[k]), nan=0.0) for k, w in b.weights.items())
    ens = np.where(pf.valid, ens, np.nan)
    return scores, b.calibration.slope * cs_zscore(ens)


def test_pipeline_predictions_equal_research_batch(trained, real_universe_1h, tmp_path):
    from research.universe import load_universe
    panel = load_universe(real_universe_1h).panels["1h"]
    syms = panel.symbols
    sets = load_universe_sets(ModelRegistry(trained), ("1h",), syms)
    es = sets["1h"]
    assert set(es.bundle.models) == {"xgboost", "ridge", "lstm"} and es.bundle.calibration.rows > 30
    # the boundaries below are scored by the faster runners (engines.pooled_runtime), research by the libraries
    assert es.info()["universe"]["runners"] == {"xgboost": "compiled-cpu", "lstm": "onnxruntime-cpu"}
    scores, er = reference(trained, panel, es)

    cfg = replace(Config(), general={"timeframes": ("1h",), "data_dir": str(tmp_path), "symbols": syms})
    filters = {s: SymbolFilters(s, 1e-8, 1e-8, 1e-8, 1e12, 5.0) for s in syms}
    store = SQLiteStore(tmp_path / "s.sqlite")
    opt = DollarProfitOptimizer(cfg.optimizer, cfg.risk, filters=filters, fee_rate=cfg.broker.taker_fee,
                                timeframes=("1h",), starting_equity=cfg.broker.starting_cash)
    pipe = TradingPipeline(cfg, syms, sets, opt, RiskManager(cfg.risk, filters),
                           PaperBroker(cfg.broker, store, symbols=syms, filters=filters), store=store,
                           timeframes=("1h",), keep=None, bar_sink=lambda bars: None)
    bars = {s: minute_bars(panel, j) for j, s in enumerate(syms)}
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
    n_boundaries = len(panel.open_ns) - PRIME
    for k in es.bundle.models:  # ONE inference call per model per boundary, all symbols together
        assert es.calls[k] == n_boundaries
    assert es.steps == len(panel.open_ns) and es.counters.get("late_bar", 0) == 0


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


def test_fast_runners_equal_the_library_calls_on_real_windows(trained, real_universe_1h):
    """The daemon's ONNX Runtime LSTM (exported at load) and compiled xgboost walker score real universe rows and
    LSTM windows (NaN rows of a symbol not yet listed included) like torch and xgboost's inplace_predict."""
    from engines.pooled_runtime import build_runners
    from research.dataset import panel_features
    from research.universe import load_universe
    panel = load_universe(real_universe_1h).panels["1h"]
    es = load_universe_sets(ModelRegistry(trained), ("1h",), panel.symbols)["1h"]
    pf = panel_features(panel)
    runners, unused = build_runners(es.bundle)
    assert unused == {} and set(runners) == {"xgboost", "lstm"}
    lstm, xgb = es.bundle.models["lstm"], es.bundle.models["xgboost"]
    L = lstm.seq_len
    n_rows = with_nan = 0
    for t in range(L - 1, pf.X.shape[0]):
        ok = pf.valid[t]
        if not ok.any():
            continue
        W = pf.X[t - L + 1:t + 1][:, ok].transpose(1, 0, 2)  # (n, L, F), as UniverseBundle.predict builds them
        np.testing.assert_allclose(runners["lstm"](W), lstm.predict(W), rtol=1e-5, atol=1e-7)
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
