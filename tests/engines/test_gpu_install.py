"""The GPU install as written can work (issue #13): the CPU and GPU twins that share one module are never
installed together, TensorRT is bounded to the majors the engine builder supports, and `make gpu` removes the
CPU twins and the CPU torch before installing the GPU ones."""
from __future__ import annotations

import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

from engines.doctor import TENSORRT_MAJORS

ROOT = Path(__file__).resolve().parents[2]
TWINS = (("onnxruntime", "onnxruntime-gpu"), ("xgboost-cpu", "xgboost"))


def _names(reqs):
    return {re.split(r"[<>=!~;\[ ]", r, 1)[0].strip().lower() for r in reqs}


def _project():
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def test_cpu_and_gpu_extras_hold_one_of_each_twin_and_core_holds_neither():
    p = _project()
    core, cpu, gpu = (_names(p["dependencies"]), _names(p["optional-dependencies"]["cpu"]),
                      _names(p["optional-dependencies"]["gpu"]))
    for c, g in TWINS:
        assert c in cpu and g in gpu, (c, g)
        assert c not in core and g not in core and c not in gpu and g not in cpu


def test_tensorrt_bound_is_the_supported_majors():
    req = next(r for r in _project()["optional-dependencies"]["gpu"] if r.startswith("tensorrt"))
    lo = int(re.search(r">=\s*(\d+)", req).group(1))
    hi = int(re.search(r"<\s*(\d+)", req).group(1))
    assert tuple(range(lo, hi)) == TENSORRT_MAJORS


@pytest.mark.skipif(shutil.which("make") is None, reason="make not installed")
def test_make_gpu_removes_the_cpu_twins_and_torch_first(tmp_path):
    out = subprocess.run(["make", "--no-print-directory", "-n", "-W", "pyproject.toml", "gpu"], cwd=ROOT,
                         capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    un = next(i for i, l in enumerate(lines) if "pip uninstall" in l and "onnxruntime" in l)
    torch = next(i for i, l in enumerate(lines) if "download.pytorch.org/whl/cu" in l and "torch==" in l)
    gpu = next(i for i, l in enumerate(lines) if ".[gpu,dev]" in l)
    assert un < torch < gpu
    assert all(n in lines[un].split() for n in ("onnxruntime", "xgboost-cpu", "torch"))
    assert "doctor" in lines[-1]
