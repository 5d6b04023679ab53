"""``device = auto``: a GPU only where it pays. Published GBM benchmarks show GPU XGBoost losing to the CPU below
roughly a million rows (transfer and kernel-launch overhead dominate), and the small LSTM is the same story, so
auto picks CUDA only when the training rows reach ``gpu_min_rows`` AND a usable GPU build exists; the reason is
returned so the report can say why."""
from __future__ import annotations

import functools

__all__ = ["choose_device", "gpu_available"]


@functools.cache
def gpu_available(lib: str) -> tuple[bool, str]:
    if lib == "lstm":
        try:
            import torch
        except ImportError:
            return False, "torch not installed"
        return (True, "torch sees CUDA") if torch.cuda.is_available() else (False, "torch sees no CUDA device")
    try:
        import xgboost as xgb
        if not xgb.build_info().get("USE_CUDA", False):
            return False, "this XGBoost build has no CUDA (xgboost-cpu)"
    except Exception as e:  # noqa: BLE001 - any failure to inspect means: no GPU
        return False, f"cannot inspect XGBoost build ({e})"
    try:
        import torch
        if not torch.cuda.is_available():
            return False, "no CUDA device visible"
    except ImportError:
        pass
    return True, "CUDA XGBoost build and a CUDA device"


def choose_device(lib: str, rows: int, requested: str = "auto", gpu_min_rows: int = 1_000_000) -> tuple[str, str]:
    """("cpu" | "cuda", why) for training ``rows`` rows with ``lib`` ("xgboost" or "lstm")."""
    if requested in ("cpu", "cuda"):
        if requested == "cuda":
            ok, why = gpu_available(lib)
            if not ok:
                raise ValueError(f"device=cuda requested for {lib} but {why}")
        return requested, f"device={requested} requested"
    if requested != "auto":
        raise ValueError(f"device must be auto, cpu or cuda, got {requested!r}")
    if rows < gpu_min_rows:
        return "cpu", f"{rows:,} rows < {gpu_min_rows:,}: the GPU does not pay below that"
    ok, why = gpu_available(lib)
    return ("cuda", f"{rows:,} rows >= {gpu_min_rows:,} and {why}") if ok else ("cpu", f"{rows:,} rows but {why}")
