"""`tradingd doctor` runs on this box (exit 0), reports every section, and agrees with backend selection."""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from engines import doctor
from engines.backends import select_backend

ROOT = Path(__file__).resolve().parents[2]


def test_doctor_json_via_cli_exits_zero_and_reports_everything():
    out = subprocess.run([sys.executable, "-m", "daemon.cli", "doctor", "--json"], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    r = json.loads(out.stdout)
    for key in ("python", "cpu", "memory", "gpu", "cuda", "torch", "tensorrt", "xgboost", "onnxruntime",
                "backends"):
        assert key in r, key
    assert r["python"]["version"].startswith(f"{sys.version_info.major}.{sys.version_info.minor}")
    assert r["cpu"]["logical_cores"] >= 1 and r["memory"]["total_gib"] > 0
    assert r["onnxruntime"]["installed"] and "CPUExecutionProvider" in r["onnxruntime"]["providers"]
    assert "installed" in r["tensorrt"] and "cuda_support" in r["xgboost"]
    lstm = r["backends"]["lstm"]
    assert lstm["auto"] == select_backend("lstm") and lstm["reason"]
    assert set(lstm["candidates"]) >= {"tensorrt", "torch-cuda", "onnxruntime-cuda", "onnxruntime-cpu"}
    if not r["gpu"]["present"]:
        assert lstm["auto"] == "onnxruntime-cpu"
        assert r["torch"]["cuda_available"] is False
    assert "xgboost" in r["backends"]


def test_doctor_text_report(capsys):
    assert doctor.main(argparse.Namespace(json=False)) == 0
    text = capsys.readouterr().out
    for label in ("Python", "CPU", "Memory", "GPU", "CUDA/cuDNN", "TensorRT", "XGBoost", "ONNX Runtime",
                  "lstm     auto ->"):
        assert label in text, label


def test_importing_doctor_keeps_heavy_libraries_unloaded():
    code = ("import sys, engines.doctor, engines.backends, engines.base; "
            "print([m for m in ('torch','onnxruntime','xgboost','tensorrt') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_a_failing_probe_is_reported_not_raised(monkeypatch):
    def boom():
        raise RuntimeError("driver exploded")
    monkeypatch.setattr(doctor, "_onnxruntime", boom)
    r = doctor.collect()
    assert r["onnxruntime"] == {"error": "RuntimeError: driver exploded"}
    assert "onnxruntime probe failed: RuntimeError: driver exploded" in doctor.render(r)
