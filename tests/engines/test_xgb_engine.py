"""XGBoost inference engines against the booster on real BTCUSDT features (NaN rows included), for the
built-in and the custom dollar-profit objective, every walker; protocol behaviour and refusals.

``make_test_xgb_engines(xgb_dataset, tmp_path)`` is the factory for the shared engine contract suite."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from engines import xgb_engine
from engines.base import BackendUnavailable, InferenceEngine, ModelLoadError
from engines.xgb_engine import (
    MATCH_TOL, CompiledCPUEngine, NativeCPUEngine, compile_walker, flatten_booster, make_xgb_engine,
)
from engines.xgb_model import MODEL_FILE, XGBoostModel, select_device, time_split
WALKERS = ["pyext", "ctypes", "numpy"]


def _train_version(dataset, d: Path, *, custom: bool, rounds: int = 203,
                   n_last: int = 8000) -> tuple[Path, np.ndarray]:
    """A model with every round kept (203: not a multiple of the walker's 8 lanes) + real test rows with NaNs
    (``dataset``: the ``xgb_dataset`` fixture)."""
    X, y, fwd, names = dataset(n_last=n_last)
    tr, va = time_split(len(y), 0.25)
    m = XGBoostModel(device="cpu", num_boost_round=rounds, nthread=2, learning_rate=0.1)
    if custom:
        m.configure_for_dollar_profit(10_000)
    m.set_feature_schema(list(names), "schema-abc")
    m.train(X[tr], y[tr], X[va], y[va], early_stopping_rounds=None, fwd_return_train=fwd[tr],
            fwd_return_val=fwd[va])
    m.save(d)
    Xt = X[va].astype(np.float32)
    rng = np.random.default_rng(7)
    Xt[rng.random(Xt.shape) < 0.15] = np.nan      # scattered missing values
    Xt[:5] = np.nan                               # fully missing rows
    return d, Xt


def make_test_xgb_engines(dataset, tmp_path: Path) -> list[InferenceEngine]:
    """Loaded (not yet warmed) XGBoost engines on a small real-data model, one per CPU backend/walker.
    Each carries ``test_version_dir`` (the directory it loaded) for contract tests that reload."""
    d, _ = _train_version(dataset, Path(tmp_path) / "xgb-contract", custom=False, rounds=40, n_last=4000)
    engines: list[InferenceEngine] = []
    for eng in (NativeCPUEngine(), *(CompiledCPUEngine(walker=w, cache_dir=Path(tmp_path) / "cc")
                                     for w in WALKERS)):
        eng.load(d)
        eng.test_version_dir = d
        engines.append(eng)
    return engines


@pytest.fixture(scope="module", params=[False, True], ids=["logistic", "dollar-objective"])
def version(request, tmp_path_factory, xgb_dataset):
    return _train_version(xgb_dataset, tmp_path_factory.mktemp("xgbv"), custom=request.param)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("walker-cache")


@pytest.mark.parametrize("walker", WALKERS)
def test_compiled_matches_booster_on_real_features_with_nan(version, cache_dir, walker):
    d, Xt = version
    ref = XGBoostModel.load(d).predict(Xt)
    eng = CompiledCPUEngine(walker=walker, cache_dir=cache_dir)
    eng.load(d)
    assert eng.walker == walker and eng.backend == ("numpy-cpu" if walker == "numpy" else "compiled-cpu")
    got = eng.predict(Xt)
    err = np.max(np.abs(got - ref))
    print(f"\n{walker}: max |p - booster| = {err:.3g} over {len(Xt)} rows, {eng.info().extra}")
    assert got.shape == ref.shape and err <= MATCH_TOL
    # NaN rows really exercise the default branches: they predict differently from zero-filled rows
    assert not np.allclose(eng.predict(np.nan_to_num(Xt[:5])), got[:5])
    # margins too (base_score included)
    bm = XGBoostModel.load(d).predict_margin(Xt)
    assert np.max(np.abs(eng.margin(Xt) - bm)) <= 1e-6   # bit-exact today (float32 accumulation order)
    # one row at a time equals the batch
    np.testing.assert_array_equal(np.concatenate([eng.predict(Xt[i:i + 1]) for i in range(20)]), got[:20])


def test_tree_by_tree_path_matches(version, cache_dir, monkeypatch):
    d, Xt = version
    monkeypatch.setattr(xgb_engine, "LOCKSTEP_MAX_DEPTH", 0)     # force the depth==0 walk in C
    eng = CompiledCPUEngine(cache_dir=cache_dir)
    eng.load(d)
    assert eng._ff.lockstep_depth == 0
    assert np.max(np.abs(eng.predict(Xt) - XGBoostModel.load(d).predict(Xt))) <= MATCH_TOL


def test_flatten_structure(version):
    d, _ = version
    b = XGBoostModel.load(d).booster
    ff = flatten_booster(b)
    assert ff.n_trees == b.num_boosted_rounds() == 203 and 1 <= ff.max_depth <= 6
    leaf = (ff.nodes["feat"] & xgb_engine.LEAF_BIT) != 0
    own = np.arange(ff.nodes.size)
    assert (ff.nodes["left"][leaf] == own[leaf]).all() and (ff.nodes["left"][~leaf] > own[~leaf]).all()


def test_native_matches_model(version):
    d, Xt = version
    eng = make_xgb_engine("native-cpu")
    eng.load(d)
    np.testing.assert_allclose(eng.predict(Xt), XGBoostModel.load(d).predict(Xt), rtol=0, atol=1e-12)


def test_protocol_lifecycle_and_bad_input(version, cache_dir):
    d, Xt = version
    eng = make_xgb_engine("compiled-cpu", cache_dir=cache_dir)
    assert isinstance(eng, InferenceEngine) and eng.kind == "xgboost"
    with pytest.raises(RuntimeError):
        eng.predict(Xt[:1])
    with pytest.raises(RuntimeError):
        eng.warmup(3)
    eng.load(d)
    assert not eng.ready
    eng.warmup(10)
    assert eng.ready and eng.info().warm and eng.info().p50_latency_us > 0
    with pytest.raises(ValueError, match=r"\(n, 14\)|\(n, \d+\)"):
        eng.predict(Xt[:, :-1])
    bad = Xt[:3].copy()
    bad[1, 2] = np.inf
    with pytest.raises(ValueError, match="inf"):
        eng.predict(bad)
    assert eng.predict(Xt[:0]).shape == (0,)
    # float64 / non-contiguous input is converted, not misread
    x64 = np.asfortranarray(Xt[:7].astype(np.float64))
    np.testing.assert_array_equal(eng.predict(x64), eng.predict(Xt[:7]))


def test_load_refuses_corrupt_and_wrong_schema(version, cache_dir, tmp_path):
    d, _ = version
    eng = CompiledCPUEngine(cache_dir=cache_dir, expected_schema_hash="other-schema")
    with pytest.raises(ModelLoadError, match="schema"):
        eng.load(d)
    assert not eng.ready
    import shutil
    d2 = tmp_path / "v"
    shutil.copytree(d, d2)
    raw = (d2 / MODEL_FILE).read_bytes()
    (d2 / MODEL_FILE).write_bytes(raw[:-100])
    for e in (CompiledCPUEngine(cache_dir=cache_dir), NativeCPUEngine()):
        with pytest.raises(ModelLoadError, match="truncated"):
            e.load(d2)
        assert not e.ready
    with pytest.raises(ModelLoadError, match="missing"):
        NativeCPUEngine().load(tmp_path / "nope")


def test_auto_backend_and_cuda_availability():
    eng = make_xgb_engine("auto")
    if select_device() == "cuda":
        assert eng.backend == "native-cuda"
    else:
        assert eng.backend == "compiled-cpu"
    with pytest.raises(ValueError, match="unknown"):
        make_xgb_engine("gpu_hist")


def test_native_cuda_unavailable_without_gpu(version, tmp_path, monkeypatch):
    monkeypatch.setenv("TRADINGD_CACHE_DIR", str(tmp_path))
    if select_device() == "cuda":
        pytest.skip("a CUDA build with a GPU is present")
    d, _ = version
    ok, why = xgb_engine.backend_available("native-cuda")
    assert not ok and why
    assert xgb_engine.backend_available("compiled-cpu")[0] and xgb_engine.backend_available("native-cpu")[0]
    assert not xgb_engine.backend_available("gpu_hist")[0]
    with pytest.raises(BackendUnavailable):
        make_xgb_engine("native-cuda").load(d)


def test_walker_cache_and_no_compiler_fallback(version, tmp_path):
    d, Xt = version
    so = compile_walker(tmp_path, pyext=False)
    assert so is not None and so.is_file()
    mtime = so.stat().st_mtime_ns
    assert compile_walker(tmp_path, pyext=False) == so and so.stat().st_mtime_ns == mtime   # reused
    eng = CompiledCPUEngine(cache_dir=tmp_path / "x", cc="no-such-compiler-xyz")
    eng.load(d)
    assert eng.backend == "numpy-cpu" and eng.walker == "numpy"
    assert np.max(np.abs(eng.predict(Xt) - XGBoostModel.load(d).predict(Xt))) <= MATCH_TOL


def test_unwritable_cache_falls_through_to_next_location(tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    monkeypatch.setenv("TRADINGD_CACHE_DIR", str(blocker / "sub"))      # mkdir fails: NotADirectoryError
    for env in ("CACHE_DIRECTORY", "STATE_DIRECTORY", "XDG_CACHE_HOME"):
        monkeypatch.delenv(env, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    so = compile_walker(pyext=False)
    assert so is not None and (tmp_path / "home" / ".cache") in so.parents


def test_factory_for_contract_suite(tmp_path, xgb_dataset):
    engines = make_test_xgb_engines(xgb_dataset, tmp_path)
    assert [e.backend for e in engines] == ["native-cpu", "compiled-cpu", "compiled-cpu", "numpy-cpu"]
    x = engines[0].representative_rows(16)
    ref = engines[0].predict(x)
    for e in engines:
        e.warmup(3)
        assert e.ready
        assert np.max(np.abs(e.predict(x) - ref)) <= MATCH_TOL
