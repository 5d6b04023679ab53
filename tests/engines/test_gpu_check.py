"""scripts/gpu-check degrades clearly where there is no GPU (exit 0, CPU rows measured, every GPU row skipped
with its reason) and records a failing section as a row instead of aborting (issue #13)."""
from __future__ import annotations

import importlib.machinery
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from engines.backends import gpu_present

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "gpu-check"


def _module():
    loader = importlib.machinery.SourceFileLoader("gpu_check_under_test", str(SCRIPT))
    spec = importlib.util.spec_from_loader(loader.name, loader)
    mod = importlib.util.module_from_spec(spec)
    loader.exec_module(mod)
    return mod


def test_a_failing_section_is_a_row_not_an_abort():
    mod = _module()

    @mod.guarded("broken")
    def boom():
        mod.row("broken", "before", "ok", "ran")
        raise RuntimeError("driver fell over")

    boom()  # does not raise
    rows = [r for r in mod.ROWS if r["section"] == "broken"]
    assert rows[0]["item"] == "before"
    assert rows[1]["status"] == "error" and rows[1]["result"] == "RuntimeError: driver fell over"
    assert "Traceback" in rows[1]["traceback"] and rows[2]["item"] == "(section seconds)"
    assert "broken" in mod.table(mod.ROWS)


@pytest.mark.slow
@pytest.mark.skipif(gpu_present(), reason="this machine has a GPU: the CPU-only degradation is not reachable")
def test_quick_run_on_a_cpu_box(tmp_path):
    out_json = tmp_path / "gc.json"
    p = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--json", str(out_json)], cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    assert p.stdout.startswith("gpu-check: no GPU:")
    doc = json.loads(out_json.read_text())
    assert doc["cuda"] is False and doc["quick"] is True
    rows = doc["rows"]
    assert {r["section"] for r in rows} == {"environment", "gpu tests", "lstm training", "lstm inference",
                                            "xgboost training"}
    assert not [r for r in rows if r["status"] == "error"], [r for r in rows if r["status"] == "error"]
    by = {(r["section"], r["item"]): r for r in rows}
    for key in [("gpu tests", "pytest"), ("lstm training", "cuda bf16"), ("lstm training", "cuda fp16+GradScaler"),
                ("lstm inference", "torch-cuda"), ("lstm inference", "tensorrt"), ("xgboost training", "cuda")]:
        assert by[key]["status"] == "skipped" and by[key]["result"], key
    assert by[("lstm training", "cpu fp32")]["status"] == "ok"
    assert by[("lstm training", "cpu fp32")]["final_val_loss"] > 0
    for b in (1, 64):
        r = by[("lstm inference", f"onnxruntime-cpu batch {b}")]
        assert r["status"] == "ok" and 0 < r["p50_us"] <= r["p99_us"]
    assert by[("xgboost training", "device=cpu")]["device_used"] == "cpu"
    assert "lstm inference" in p.stdout and f"wrote {out_json}" in p.stdout
