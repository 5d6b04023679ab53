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


def test_install_conflicts_rules():
    ok = {"onnxruntime": "1.32.0", "xgboost-cpu": "3.2.0", "torch": "2.13.0+cpu"}
    assert doctor.install_conflicts(ok, torch_cuda=None, nvidia_gpu=False) == []
    both = doctor.install_conflicts({**ok, "onnxruntime-gpu": "1.31.1", "xgboost": "3.2.0"}, torch_cuda=None,
                                    nvidia_gpu=False)
    assert len(both) == 2 and "onnxruntime-gpu" in both[0] and "xgboost-cpu" in both[1]
    cpu_torch = doctor.install_conflicts(ok, torch_cuda=None, nvidia_gpu=True)
    assert len(cpu_torch) == 1 and "CPU-only build" in cpu_torch[0]
    assert doctor.install_conflicts(ok, torch_cuda="12.8", nvidia_gpu=True) == []
    no_provider = doctor.install_conflicts({"onnxruntime-gpu": "1.31.1"}, torch_cuda="12.8", nvidia_gpu=True,
                                           ort_providers=["CPUExecutionProvider"])
    assert len(no_provider) == 1 and "no CUDAExecutionProvider" in no_provider[0]
    assert doctor.install_conflicts({"tensorrt": "11.4.0.106"}, torch_cuda="12.8", nvidia_gpu=True) == []
    assert "outside the supported" in doctor.install_conflicts({"tensorrt": "8.6.1"}, torch_cuda="12.8",
                                                               nvidia_gpu=True)[0]


def test_doctor_reports_a_real_conflicting_install(monkeypatch, capsys):
    """The distributions doctor reads are this venv's real ones; one more (a second ORT package) is added
    to what importlib.metadata reports, and doctor names it and exits 1."""
    real = doctor._distributions()
    assert "onnxruntime" in real or "onnxruntime-gpu" in real
    monkeypatch.setattr(doctor, "_distributions", lambda: {**real, "onnxruntime": "1.32.0",
                                                           "onnxruntime-gpu": "1.31.1"})
    assert doctor.main(argparse.Namespace(json=False)) == 1
    assert "CONFLICT: onnxruntime 1.32.0 and onnxruntime-gpu 1.31.1 are both installed" in capsys.readouterr().out
