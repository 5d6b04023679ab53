"""The live shadow A/B in the daemon's pipeline (daemon.shadow over strategies.shadow): real BTCUSDT 1m bars
through the real TradingPipeline, real XGBoost model files in a real registry loaded by EngineSet. The
champion is an honest model (trained on earlier bars); the challengers are deliberately better (fitted on the
trial's own bars with the true next-bar direction) or deliberately worse (fitted to the inverted direction):
the better one is promoted (registry current + engines swapped), the worse one never is."""
from __future__ import annotations

import numpy as np
import pytest

from daemon.broker import PaperBroker
from daemon.config import Config, replace
from daemon.engineset import EngineSet
from daemon.pipeline import TradingPipeline
from daemon.shadow import ShadowRunner
from daemon.store import SQLiteStore
from engines.data import klines_to_bars, load_klines_csv, resample
from engines.features import FEATURE_SCHEMA, batch_features
from engines.registry import ModelRegistry
from engines.xgb_model import XGBoostModel
from market.filters import SymbolFilters
from strategies.optimizer import DollarProfitOptimizer
from strategies.risk import RiskManager
from strategies.shadow import ShadowConfig

SYM = "BTCUSDT"
TF = "15m"
FILTERS = {SYM: SymbolFilters(SYM, 0.01, 0.00001, 0.00001, 9000.0, 5.0)}
WARM_DAYS, TRIAL_DAYS = 6, 8


@pytest.fixture(scope="module")
def klines(btc_klines_path):
    return load_klines_csv(btc_klines_path, symbol=SYM)[-(30 + WARM_DAYS + TRIAL_DAYS) * 1440:]


def _fit(X, y, seed: int) -> XGBoostModel:
    names = list(FEATURE_SCHEMA.names)
    m = XGBoostModel(device="cpu", num_boost_round=300, nthread=1, max_depth=8, eta=0.3, seed=seed,
                     min_child_weight=0.0, subsample=1.0, colsample_bytree=1.0)
    m.set_feature_schema(names, FEATURE_SCHEMA.hash)
    m.train(X, y, X, y, early_stopping_rounds=None)
    return m


@pytest.fixture(scope="module")
def registry(tmp_path_factory, klines):
    """champion: fitted on the 30 days before the warm-up; better / worse: fitted on the trial's bars to the
    true / inverted next-bar direction (real XGBoost files through the registry's publish)."""
    k = resample(klines, TF)
    X = batch_features(k, TF)
    up = np.r_[(k.close[1:] > k.close[:-1]).astype(float), np.nan]
    ok = np.isfinite(X).all(axis=1) & np.isfinite(up)
    per_day = 1440 // 15
    n_train = 30 * per_day
    trial_lo = n_train + WARM_DAYS * per_day
    tr = np.arange(len(up)) < n_train
    te = np.arange(len(up)) >= trial_lo
    reg = ModelRegistry(tmp_path_factory.mktemp("shadow_registry"))
    names = list(FEATURE_SCHEMA.names)
    refs = {}
    for name, rows, y, current in (("champion", tr & ok, up, True), ("better", te & ok, up, False),
                                   ("worse", te & ok, 1.0 - up, False)):
        m = _fit(X[rows], y[rows], seed=1)
        refs[name] = reg.publish("xgboost", TF, m.save, feature_names=names, schema_hash=FEATURE_SCHEMA.hash,
                                 make_current=current).version
    return reg, refs


def _run_trial(tmp_path, klines, registry, challenger: str):
    reg, refs = registry
    cfg = replace(Config(), general={"timeframes": (TF,), "data_dir": str(tmp_path), "symbols": (SYM,)},
                  broker={"taker_fee": 0.0001, "maker_fee": 0.0001})
    champion = EngineSet.load(reg, TF, cfg.engines, kinds=("xgboost",))
    engine_sets = {TF: champion}
    store = SQLiteStore(tmp_path / "store.sqlite")
    broker = PaperBroker(cfg.broker, store, symbols=(SYM,), filters=FILTERS)
    opt = DollarProfitOptimizer(cfg.optimizer, cfg.risk, filters=FILTERS, fee_rate=cfg.broker.taker_fee,
                                timeframes=(TF,), starting_equity=cfg.broker.starting_cash)
    pipe = TradingPipeline(cfg, [SYM], engine_sets, opt, RiskManager(cfg.risk, FILTERS), broker, store=store)
    runner = ShadowRunner(ShadowConfig(min_bars=60, max_bars=700, alpha=0.05, tau=1e-3, cost_per_side=0.00015),
                          opt, reg, engine_sets)
    pipe.observers.append(runner.observe)
    bars = klines_to_bars(klines[30 * 1440:])
    warm = WARM_DAYS * 1440
    pipe.prime(SYM, bars[:warm])
    ch = EngineSet.load(reg, TF, cfg.engines, kinds=("xgboost",), versions={"xgboost": refs[challenger]})
    runner.start(TF, ch, {"xgboost": refs[challenger]}, bars[warm].open_ns)
    for b in bars[warm:]:
        pipe.on_bar(b)
        if not runner.trials:
            break
    store.close()
    return runner, champion, reg, refs


def test_a_better_challenger_is_promoted_in_shadow(tmp_path, klines, registry):
    runner, champion, reg, refs = _run_trial(tmp_path, klines, registry, "better")
    assert not runner.trials, runner.status()
    rec = runner.finished[-1]
    assert rec["outcome"] == "promote", rec
    assert rec["challenger_pnl"] > rec["champion_pnl"] and rec["bars"] >= 60
    assert reg.current_version(TF, "xgboost") == refs["better"]
    assert champion.info()["xgboost"]["version"] == refs["better"]  # swapped into the running engine set
    reg.set_current(TF, "xgboost", refs["champion"])  # leave the module's registry as found


def test_a_worse_challenger_is_never_promoted(tmp_path, klines, registry):
    runner, champion, reg, refs = _run_trial(tmp_path, klines, registry, "worse")
    rec = runner.finished[-1] if runner.finished else runner.status()["running"][TF]
    assert rec.get("outcome", "pending") in ("reject", "pending") and rec["verdict"] != "promote", rec
    assert rec["challenger_pnl"] < rec["champion_pnl"]
    assert reg.current_version(TF, "xgboost") == refs["champion"]
    assert champion.info()["xgboost"]["version"] == refs["champion"]


def test_an_operator_pin_ends_the_trial_at_once(tmp_path, registry):
    reg, refs = registry
    cfg = Config()
    champion = EngineSet.load(reg, TF, cfg.engines, kinds=("xgboost",))
    opt = DollarProfitOptimizer(cfg.optimizer, cfg.risk, filters=FILTERS, fee_rate=0.001, timeframes=(TF,),
                                starting_equity=10_000.0)
    runner = ShadowRunner(ShadowConfig(), opt, reg, {TF: champion})
    ch = EngineSet.load(reg, TF, cfg.engines, kinds=("xgboost",), versions={"xgboost": refs["worse"]})
    runner.start(TF, ch, {"xgboost": refs["worse"]}, 1)
    ended = runner.pin("champion", 2)
    assert ended[TF]["outcome"] == "reject" and "operator" in ended[TF]["outcome_reason"]
    assert reg.current_version(TF, "xgboost") == refs["champion"] and not runner.trials
    with pytest.raises(ValueError):
        runner.pin("nobody", 3)


def test_a_gate_passing_retrain_goes_to_shadow_not_to_current(store_with_bars, tmp_path):
    """The real retrain child with ``--shadow``: the second cycle's challengers pass the gate (any improvement
    accepted) but stay non-current; the retrain cycle then starts a shadow trial with exactly those versions."""
    import asyncio

    from daemon.hotswap import RetrainCycle
    from daemon.metrics import Metrics
    from daemon.retrain import RetrainManager
    reg_dir = tmp_path / "models"
    m = RetrainManager(registry=str(reg_dir), symbol=SYM, timeframes=["1h"], store=str(store_with_bars),
                       spec_overrides={"xgb_rounds": 40, "lstm_epochs": 1, "lstm_hidden": 8, "lstm_seq_len": 8},
                       min_bars=1000, timeout_s=240, min_improvement=-1e15, shadow=True)
    first = asyncio.run(m.run_once())
    assert first.ok, first.error
    assert all(d["promoted"] and not d["shadow"] for d in first.results["1h"]["decision"].values())  # nothing to beat
    second = asyncio.run(m.run_once())
    assert second.ok, second.error
    dec = second.results["1h"]["decision"]
    assert all(d["shadow"] and not d["promoted"] for d in dec.values()), dec
    reg = ModelRegistry(reg_dir)
    for kind, d in first.results["1h"]["decision"].items():
        assert reg.current_version("1h", kind) == d["version"]  # the champion is still current
    cfg = replace(Config(), general={"timeframes": ("1h",), "symbols": (SYM,)})
    metrics = Metrics()
    engine_sets = {"1h": EngineSet.load(reg, "1h", cfg.engines)}
    opt = DollarProfitOptimizer(cfg.optimizer, cfg.risk, filters=FILTERS, fee_rate=0.001, timeframes=("1h",),
                                starting_equity=10_000.0)
    runner = ShadowRunner(ShadowConfig(), opt, reg, engine_sets, metrics=metrics)
    cycle = RetrainCycle(cfg, metrics, m, reg, engine_sets, shadow=runner)
    started = asyncio.run(cycle.start_shadow_trials(second.results))
    assert set(started) == {"1h"}
    assert runner.trials["1h"][2] == {k: d["version"] for k, d in dec.items()}
    assert runner.trials["1h"][1].info()["xgboost"]["version"] == dec["xgboost"]["version"]
    assert metrics.shadow_running.labels("1h")._value.get() == 1
    assert cycle.status()["shadow"]["running"]["1h"]["verdict"] == "pending"
