"""``tradingd doctor``: what this machine offers the engines, and which backend ``auto`` picks for each.

Every probe is guarded: a missing library or GPU is reported, never raised, and the command exits 0 on a
CPU-only box. Installs that cannot work as meant (both ONNX Runtime packages, xgboost beside xgboost-cpu, a CPU
torch on a machine with an NVIDIA GPU, an unsupported TensorRT) are listed as conflicts and make it exit 1. Heavy imports happen inside functions (the CLI loads this module for ``--help`` too).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
from typing import Any, Callable

__all__ = ["add_arguments", "main", "collect", "install_conflicts"]

# TensorRT majors the engine builder supports (engines.lstm_engine.convert_to_tensorrt: strongly typed networks)
TENSORRT_MAJORS = (10, 11)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print the report as one JSON object")


def _guard(fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    try:
        return fn()
    except Exception as e:  # a probe must never take the report down
        return {"error": f"{type(e).__name__}: {e}"}


def _cpu() -> dict[str, Any]:
    model = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith(("model name", "cpu model")):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"model": model or platform.machine(), "arch": platform.machine(), "logical_cores": os.cpu_count(),
            "usable_cores": usable}


def _memory() -> dict[str, Any]:
    info: dict[str, int] = {}
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                k, v = line.split(":", 1)
                if k in ("MemTotal", "MemAvailable"):
                    info[k] = int(v.split()[0]) * 1024
    except OSError:
        pass
    gib = 1024 ** 3
    return {"total_gib": round(info.get("MemTotal", 0) / gib, 1),
            "available_gib": round(info.get("MemAvailable", 0) / gib, 1)}


def _nvidia_smi() -> list[dict[str, str]]:
    exe = shutil.which("nvidia-smi")
    if not exe:
        return []
    out = subprocess.run([exe, "--query-gpu=name,memory.total,compute_cap,driver_version",
                          "--format=csv,noheader"], capture_output=True, text=True, timeout=10)
    gpus = []
    for line in out.stdout.strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) >= 4:
            gpus.append({"name": parts[0], "memory": parts[1], "compute_capability": parts[2],
                         "driver": parts[3], "source": "nvidia-smi"})
    return gpus


def _torch() -> dict[str, Any]:
    try:
        import torch
    except ImportError:
        return {"installed": False}
    d: dict[str, Any] = {"installed": True, "version": torch.__version__, "cuda_build": torch.version.cuda,
                         "cuda_available": torch.cuda.is_available(), "threads": torch.get_num_threads()}
    if torch.cuda.is_available():
        d["cudnn"] = torch.backends.cudnn.version()
        d["bf16_supported"] = torch.cuda.is_bf16_supported()
        gpus = []
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            gpus.append({"name": p.name, "memory_gib": round(p.total_memory / 1024 ** 3, 1),
                         "compute_capability": f"{p.major}.{p.minor}", "source": "torch"})
        d["gpus"] = gpus
    return d


def _gpu(torch_info: dict[str, Any]) -> dict[str, Any]:
    from engines.backends import gpu_present
    gpus = torch_info.get("gpus") or _nvidia_smi()
    return {"present": bool(gpus) or gpu_present(), "devices": gpus}


def _tensorrt() -> dict[str, Any]:
    try:
        import tensorrt as trt
    except ImportError as e:
        return {"installed": False, "detail": f"not installed ({e.name or e})"}
    return {"installed": True, "version": trt.__version__}


def _xgboost() -> dict[str, Any]:
    try:
        import xgboost
    except ImportError:
        return {"installed": False}
    info = xgboost.build_info()
    return {"installed": True, "version": xgboost.__version__, "cuda_support": bool(info.get("USE_CUDA", False)),
            "nccl": bool(info.get("USE_NCCL", False))}


def _onnxruntime() -> dict[str, Any]:
    try:
        import onnxruntime as ort
    except ImportError:
        return {"installed": False}
    return {"installed": True, "version": ort.__version__, "providers": ort.get_available_providers(),
            "device": ort.get_device()}


def install_conflicts(dists: dict[str, str], *, torch_cuda: str | None, nvidia_gpu: bool,
                      ort_providers: list[str] | None = None) -> list[str]:
    """Installs that cannot work as meant, from the installed distributions (name -> version), torch's CUDA
    build (``torch.version.cuda``) and whether NVIDIA hardware is present. Pure: the rules, no probing."""
    out = []
    if "onnxruntime" in dists and "onnxruntime-gpu" in dists:
        out.append(f"onnxruntime {dists['onnxruntime']} and onnxruntime-gpu {dists['onnxruntime-gpu']} are both "
                   "installed: they share the `onnxruntime` module and the CPU one can hide the CUDA provider; "
                   "`pip uninstall -y onnxruntime onnxruntime-gpu && pip install onnxruntime-gpu` (or `make gpu`)")
    elif "onnxruntime-gpu" in dists and ort_providers is not None and nvidia_gpu \
            and "CUDAExecutionProvider" not in ort_providers:
        out.append(f"onnxruntime-gpu {dists['onnxruntime-gpu']} is installed but offers no CUDAExecutionProvider "
                   f"(providers {ort_providers}): CUDA/cuDNN libraries missing or a CPU build shadows it")
    if "xgboost" in dists and "xgboost-cpu" in dists:
        out.append(f"xgboost {dists['xgboost']} and xgboost-cpu {dists['xgboost-cpu']} are both installed (one "
                   "`xgboost` module, whichever was installed last wins): `pip uninstall -y xgboost-cpu xgboost && "
                   "pip install xgboost` on a GPU box")
    if "torch" in dists and nvidia_gpu and not torch_cuda:
        out.append(f"torch {dists['torch']} is a CPU-only build but an NVIDIA GPU is present: install a CUDA "
                   "build (`make gpu`)")
    if "tensorrt" in dists:
        try:
            major = int(dists["tensorrt"].split(".")[0])
        except ValueError:
            major = -1
        if major not in TENSORRT_MAJORS:
            out.append(f"tensorrt {dists['tensorrt']} is outside the supported majors {TENSORRT_MAJORS}")
    return out


def _distributions() -> dict[str, str]:
    from importlib import metadata
    names = ("onnxruntime", "onnxruntime-gpu", "xgboost", "xgboost-cpu", "torch", "tensorrt", "tensorrt-cu12",
             "tensorrt-cu13")
    out = {}
    for n in names:
        try:
            out[n] = metadata.version(n)
        except metadata.PackageNotFoundError:
            pass
    return out


def nvidia_hardware() -> bool:
    """NVIDIA hardware on this machine, whatever CUDA_VISIBLE_DEVICES says: the driver's /proc entries, a
    device node, or nvidia-smi."""
    try:
        if os.listdir("/proc/driver/nvidia/gpus"):
            return True
    except OSError:
        pass
    return os.path.exists("/dev/nvidia0") or shutil.which("nvidia-smi") is not None


def _conflicts(torch_info: dict[str, Any], ort_info: dict[str, Any]) -> list[str]:
    return install_conflicts(_distributions(), torch_cuda=torch_info.get("cuda_build"),
                             nvidia_gpu=nvidia_hardware(), ort_providers=ort_info.get("providers"))


def _backends() -> dict[str, Any]:
    from engines.backends import KINDS, EXTRA_BACKENDS, choose_backend, probe
    out: dict[str, Any] = {}
    for kind, order in KINDS.items():
        entry: dict[str, Any] = {"candidates": {}}
        for b in order + EXTRA_BACKENDS[kind]:
            ok, why = probe(kind, b)
            entry["candidates"][b] = {"available": ok, "reason": why}
        try:
            ch = choose_backend(kind, "auto")
            entry["auto"] = ch.backend
            entry["reason"] = ch.reason
        except Exception as e:
            entry["auto"] = None
            entry["reason"] = f"{type(e).__name__}: {e}"
        out[kind] = entry
    return out


def collect() -> dict[str, Any]:
    torch_info = _guard(_torch)
    gpu = _guard(lambda: _gpu(torch_info))
    ort_info = _guard(_onnxruntime)
    try:
        conflicts = _conflicts(torch_info, ort_info)
    except Exception as e:  # noqa: BLE001 - a probe must never take the report down
        conflicts = [f"conflict check failed: {type(e).__name__}: {e}"]
    return {
        "python": {"version": platform.python_version(), "implementation": platform.python_implementation(),
                   "executable": sys.executable},
        "os": {"system": platform.system(), "release": platform.release()},
        "cpu": _guard(_cpu),
        "memory": _guard(_memory),
        "gpu": gpu,
        "cuda": {"torch_cuda": torch_info.get("cuda_build"), "cudnn": torch_info.get("cudnn")},
        "torch": torch_info,
        "tensorrt": _guard(_tensorrt),
        "xgboost": _guard(_xgboost),
        "onnxruntime": ort_info,
        "backends": _guard(_backends),
        "conflicts": conflicts,
    }


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, (list, tuple)):
        return ", ".join(_fmt(x) for x in v) or "-"
    return str(v)


def render(r: dict[str, Any]) -> str:
    lines = ["tradingd doctor", ""]
    lines.append(f"Python       {r['python']['version']} ({r['python']['executable']})")
    c = r["cpu"]
    lines.append(f"CPU          {c.get('model', '?')} — {c.get('usable_cores')} usable / "
                 f"{c.get('logical_cores')} logical cores ({c.get('arch')})")
    m = r["memory"]
    lines.append(f"Memory       {m.get('total_gib')} GiB total, {m.get('available_gib')} GiB available")
    g = r["gpu"]
    if g.get("devices"):
        for d in g["devices"]:
            mem = d.get("memory_gib", d.get("memory"))
            lines.append(f"GPU          {d['name']} — {mem}{' GiB' if 'memory_gib' in d else ''}, "
                         f"compute capability {d['compute_capability']} (via {d['source']})")
    else:
        lines.append("GPU          none found" + (f" ({g['error']})" if "error" in g else ""))
    t = r["torch"]
    lines.append(f"torch        {_fmt(t.get('version')) if t.get('installed') else 'not installed'}"
                 f"; CUDA build {_fmt(t.get('cuda_build'))}, cuda available {_fmt(t.get('cuda_available'))}")
    lines.append(f"CUDA/cuDNN   {_fmt(r['cuda']['torch_cuda'])} / {_fmt(r['cuda']['cudnn'])}")
    trt = r["tensorrt"]
    lines.append(f"TensorRT     {trt['version'] if trt.get('installed') else trt.get('detail', 'not installed')}")
    x = r["xgboost"]
    lines.append(f"XGBoost      {x['version'] + ', CUDA support ' + _fmt(x['cuda_support']) if x.get('installed') else 'not installed'}")
    o = r["onnxruntime"]
    lines.append(f"ONNX Runtime {o['version'] + ' — providers ' + _fmt(o['providers']) if o.get('installed') else 'not installed'}")
    for name in ("cpu", "memory", "gpu", "torch", "tensorrt", "xgboost", "onnxruntime"):
        if isinstance(r.get(name), dict) and "error" in r[name]:
            lines.append(f"  ! {name} probe failed: {r[name]['error']}")
    for c in r.get("conflicts", []):
        lines.append(f"  ! CONFLICT: {c}")
    lines.append("")
    for kind, e in r["backends"].items():
        if not isinstance(e, dict) or "candidates" not in e:
            lines.append(f"{kind}: {e}")
            continue
        lines.append(f"{kind:<8} auto -> {e.get('auto')}   ({e.get('reason')})")
        for b, cand in e["candidates"].items():
            lines.append(f"    {'+' if cand['available'] else '-'} {b:<17} {cand['reason']}")
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    report = collect()
    if getattr(args, "json", False):
        print(json.dumps(report, indent=1, default=str))
    else:
        print(render(report))
    return 1 if report["conflicts"] else 0  # `make gpu` ends with doctor: a conflicting install fails it
