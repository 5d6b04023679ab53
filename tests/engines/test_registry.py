"""Model registry: atomic publish, current pointer, and refusal (with clear messages) of truncated files,
flipped bytes, schema mismatch, missing manifest and unknown manifest formats — on real XGBoost model files."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from engines.base import ModelLoadError
from engines.registry import MANIFEST, POINTER, ModelRegistry, read_manifest, verify_version_dir
from engines.xgb_model import MODEL_FILE, XGBoostModel, time_split

SCHEMA = "schema-v1-abc"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, xgb_dataset):
    X, y, fwd, names = xgb_dataset(n_last=3000)
    tr, va = time_split(len(y), 0.25)
    m = XGBoostModel(device="cpu", num_boost_round=15, nthread=2)
    m.set_feature_schema(list(names), SCHEMA)
    m.train(X[tr], y[tr], X[va], y[va], early_stopping_rounds=None)
    return m.save(tmp_path_factory.mktemp("staging") / "xgb"), list(names), X[va]


class Clock:
    def __init__(self, t: int = 1_750_000_000_000_000_000) -> None:
        self.t = t

    def __call__(self) -> int:
        self.t += 1_000_000_000
        return self.t


def _publish(reg: ModelRegistry, model_dir, **kw):
    d, names, _ = model_dir
    return reg.publish("xgboost", "1m", d, feature_names=names, schema_hash=SCHEMA,
                       data_window={"start_ns": 1, "end_ns": 2, "rows": 3000}, metrics={"auc": 0.53}, **kw)


def test_publish_manifest_and_current(tmp_path, model_dir):
    reg = ModelRegistry(tmp_path / "models", clock_ns=Clock())
    assert reg.list_versions("1m", "xgboost") == [] and reg.current("1m", "xgboost") is None
    a = _publish(reg, model_dir)
    b = _publish(reg, model_dir, make_current=True)
    assert reg.list_versions("1m", "xgboost") == [a.version, b.version]    # sorted by creation time
    assert reg.current("1m", "xgboost") == b.path and b.path == tmp_path / "models" / "1m" / "xgboost" / b.version
    m = read_manifest(b.path)
    assert m["kind"] == "xgboost" and m["timeframe"] == "1m" and m["format"] == 1
    assert m["feature_schema"] == {"hash": SCHEMA, "names": model_dir[1]}
    assert set(m["files"]) == {MODEL_FILE, "xgb_meta.json"}
    assert m["files"][MODEL_FILE]["size"] == (b.path / MODEL_FILE).stat().st_size
    assert any(k.startswith("xgboost") for k in m["library_versions"]) and "python" in m["library_versions"]
    assert m["data_window"]["rows"] == 3000 and m["metrics"]["auc"] == 0.53 and m["created_ns"] > 0
    reg.set_current("1m", "xgboost", a.version)
    assert reg.current_version("1m", "xgboost") == a.version
    ref = reg.load("1m", "xgboost", schema_hash=SCHEMA)
    assert ref.version == a.version
    # a version published into the registry is loadable by the engine
    from engines.xgb_engine import make_xgb_engine
    eng = make_xgb_engine("compiled-cpu", expected_schema_hash=SCHEMA, cache_dir=tmp_path / "cc")
    eng.load(ref.path)
    eng.warmup(2)
    np.testing.assert_allclose(eng.predict(model_dir[2][:50].astype(np.float32)),
                               XGBoostModel.load(model_dir[0]).predict(model_dir[2][:50].astype(np.float32)),
                               atol=1e-6, rtol=0)
    # no temp leftovers, pointer is a plain file naming the version
    kdir = tmp_path / "models" / "1m" / "xgboost"
    assert not [p for p in kdir.iterdir() if p.name.startswith(".")]
    assert (kdir / POINTER).read_text().strip() == a.version


def test_registry_imports_no_model_library():
    code = ("import sys, engines.registry; bad = [m for m in ('xgboost', 'torch', 'onnxruntime') if m in sys.modules];"
            "sys.exit(1 if bad else 0)")
    assert subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[2]).returncode == 0


def test_publish_is_atomic_when_writer_fails(tmp_path, model_dir):
    reg = ModelRegistry(tmp_path, clock_ns=Clock())

    def writer(d: Path) -> None:
        (d / "half.bin").write_bytes(b"x" * 10)
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        reg.publish("xgboost", "5m", writer, feature_names=["a"], schema_hash=SCHEMA)
    kdir = tmp_path / "5m" / "xgboost"
    assert reg.list_versions("5m", "xgboost") == [] and list(kdir.iterdir()) == []
    # a crashed publish (temp dir left behind) is invisible to readers and removed at start-up
    (kdir / ".tmp-999-dead").mkdir()
    (kdir / ".tmp-999-dead" / "x").write_bytes(b"1")
    assert reg.list_versions("5m", "xgboost") == []
    assert reg.remove_stale_temp() == 1 and list(kdir.iterdir()) == []


def test_publish_from_writer_and_name_validation(tmp_path, model_dir):
    reg = ModelRegistry(tmp_path, clock_ns=Clock())
    m = XGBoostModel.load(model_dir[0])
    ref = reg.publish("xgboost", "15m", m.save, feature_names=model_dir[1], schema_hash=SCHEMA)
    assert XGBoostModel.load(ref.path).booster.num_boosted_rounds() == 15
    with pytest.raises(ValueError):
        reg.publish("xgboost", "../evil", model_dir[0], feature_names=[], schema_hash="")
    with pytest.raises(ValueError):
        reg.set_current("1m", "xgboost", "../../etc")
    with pytest.raises(ValueError, match="no model files"):
        reg.publish("xgboost", "1h", lambda d: None, feature_names=[], schema_hash="")


@pytest.fixture
def published(tmp_path, model_dir):
    reg = ModelRegistry(tmp_path, clock_ns=Clock())
    ref = _publish(reg, model_dir, make_current=True)
    return reg, ref


def test_truncated_file_refused(published):
    reg, ref = published
    p = ref.path / MODEL_FILE
    p.write_bytes(p.read_bytes()[:-1])
    with pytest.raises(ModelLoadError, match=f"{MODEL_FILE} is truncated"):
        reg.load("1m", "xgboost", schema_hash=SCHEMA)


def test_flipped_byte_refused(published):
    reg, ref = published
    p = ref.path / MODEL_FILE
    raw = bytearray(p.read_bytes())
    raw[len(raw) // 3] ^= 0x40
    p.write_bytes(bytes(raw))
    with pytest.raises(ModelLoadError, match="checksum mismatch"):
        reg.load("1m", "xgboost", schema_hash=SCHEMA)


def test_schema_mismatch_refused(published):
    reg, ref = published
    with pytest.raises(ModelLoadError, match="feature schema 'schema-v1-abc' but the running feature set is 'v2'"):
        reg.load("1m", "xgboost", schema_hash="v2")


def test_missing_manifest_refused(published):
    reg, ref = published
    (ref.path / MANIFEST).unlink()
    with pytest.raises(ModelLoadError, match="manifest missing"):
        reg.load("1m", "xgboost", schema_hash=SCHEMA)
    assert reg.list_versions("1m", "xgboost") == []


def test_unknown_format_and_corrupt_manifest_refused(published):
    reg, ref = published
    mp = ref.path / MANIFEST
    m = json.loads(mp.read_text())
    mp.write_text(json.dumps({**m, "format": 2}))
    with pytest.raises(ModelLoadError, match="unknown format version 2"):
        reg.load("1m", "xgboost", schema_hash=SCHEMA)
    mp.write_text('{"format": 1, "kind": ')
    with pytest.raises(ModelLoadError, match="unreadable or corrupt"):
        verify_version_dir(ref.path)


def test_missing_file_wrong_location_and_no_current(tmp_path, published):
    reg, ref = published
    with pytest.raises(ModelLoadError, match="expected 'lstm'"):
        verify_version_dir(ref.path, kind="lstm")
    (ref.path / "xgb_meta.json").unlink()
    with pytest.raises(ModelLoadError, match="xgb_meta.json listed in the manifest is missing"):
        reg.load("1m", "xgboost", schema_hash=SCHEMA)
    with pytest.raises(ModelLoadError, match="no current lstm model"):
        reg.load("1m", "lstm", schema_hash=SCHEMA)
    with pytest.raises(ModelLoadError, match="not found"):
        reg.verify("1m", "xgboost", "20990101T000000000Z-deadbeef")


def test_set_current_refuses_broken_version_and_keeps_old_pointer(tmp_path, model_dir):
    reg = ModelRegistry(tmp_path, clock_ns=Clock())
    good = _publish(reg, model_dir, make_current=True)
    bad = _publish(reg, model_dir)
    (bad.path / MODEL_FILE).write_bytes(b"")
    with pytest.raises(ModelLoadError, match="truncated"):
        reg.set_current("1m", "xgboost", bad.version)
    assert reg.current_version("1m", "xgboost") == good.version
    assert os.listdir(tmp_path / "1m" / "xgboost").count(POINTER) == 1


@pytest.mark.parametrize("pointer", ["../../../../etc", "/etc", "..", ".tmp-1-abcd", "20990101T000000000Z-gone"])
def test_current_pointer_must_name_a_version_directory_and_the_error_names_the_file(tmp_path, model_dir, pointer):
    """Issue #14: a ``current`` of ``../../../../etc`` was refused by a bare ValueError traceback that did not
    say which file; a pointer to a missing or temp directory was only found out at load."""
    reg = ModelRegistry(tmp_path, clock_ns=Clock())
    _publish(reg, model_dir, make_current=True)
    (tmp_path / "1m" / "xgboost" / ".tmp-1-abcd").mkdir()
    pfile = tmp_path / "1m" / "xgboost" / POINTER
    pfile.write_text(pointer + "\n")
    for call in (lambda: reg.current_version("1m", "xgboost"), lambda: reg.current("1m", "xgboost"),
                 lambda: reg.load("1m", "xgboost", schema_hash=SCHEMA)):
        with pytest.raises(ModelLoadError) as ei:
            call()
        assert str(ei.value).startswith(f"{pfile}: pointer ") and "does not name a version directory" in str(ei.value)
