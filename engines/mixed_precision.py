"""Mixed-precision training on CUDA (the seed's MixedPrecisionAdapter); an honest fp32 no-op on CPU.

On CUDA: bf16 autocast when the GPU supports it (no loss scaling needed), else fp16 autocast with
``torch.amp.GradScaler``. ``op_dtypes`` records, with forward hooks on one batch, which modules actually
produced reduced-precision outputs, so the report says what ran in bf16/fp16 rather than what was hoped.
"""
from __future__ import annotations

import contextlib
from typing import Any, Iterable

__all__ = ["MixedPrecisionAdapter", "ScaledOptimizer"]


class ScaledOptimizer:
    """An optimizer plus (optionally) a GradScaler: ``zero_grad``, ``backward(loss)``, ``step(clip=...)``."""

    def __init__(self, optimizer, scaler=None) -> None:
        self.optimizer = optimizer
        self.scaler = scaler

    def zero_grad(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)

    def backward(self, loss) -> None:
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def step(self, clip: float = 0.0, parameters: Iterable | None = None) -> None:
        import torch
        if self.scaler is not None:
            if clip and parameters is not None:
                self.scaler.unscale_(self.optimizer)
                torch.nn.utils.clip_grad_norm_(list(parameters), clip)
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            if clip and parameters is not None:
                torch.nn.utils.clip_grad_norm_(list(parameters), clip)
            self.optimizer.step()

    def state_dict(self) -> dict[str, Any]:
        d = {"optimizer": self.optimizer.state_dict()}
        if self.scaler is not None:
            d["scaler"] = self.scaler.state_dict()
        return d

    def load_state_dict(self, d: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(d["optimizer"])
        if self.scaler is not None and "scaler" in d:
            self.scaler.load_state_dict(d["scaler"])


class MixedPrecisionAdapter:
    def __init__(self, device: str = "cpu", prefer: str = "auto") -> None:
        if prefer not in ("auto", "bfloat16", "float16"):
            raise ValueError(f"prefer must be auto, bfloat16 or float16, got {prefer!r}")
        self.device = str(device)
        self.prefer = prefer
        self.enabled = False
        self.dtype_name = "float32"
        self.reason = "not enabled"
        self._scaler = None

    @property
    def device_type(self) -> str:
        return "cuda" if self.device.startswith("cuda") else "cpu"

    def enable(self) -> "MixedPrecisionAdapter":
        """bf16 if supported, else fp16 + GradScaler (``prefer`` forces one: fp16 to compare, or bf16 where the
        GPU has it); on CPU stay fp32 (autocast there would slow the LSTM)."""
        import torch
        if self.device_type != "cuda" or not torch.cuda.is_available():
            self.enabled, self.dtype_name = False, "float32"
            self.reason = "CPU device: mixed precision is a no-op, training runs in fp32"
            return self
        self.enabled = True
        bf16 = torch.cuda.is_bf16_supported()
        if bf16 and self.prefer in ("auto", "bfloat16"):
            self.dtype_name, self._scaler = "bfloat16", None
            self.reason = "CUDA with bf16 support: bf16 autocast, no loss scaling"
        else:
            self.dtype_name = "float16"
            self._scaler = torch.amp.GradScaler("cuda")
            self.reason = ("fp16 requested: fp16 autocast with GradScaler" if self.prefer == "float16" else
                           "CUDA without bf16: fp16 autocast with GradScaler" + (
                               " (bf16 requested but unsupported)" if self.prefer == "bfloat16" else ""))
        return self

    def disable(self) -> "MixedPrecisionAdapter":
        self.enabled, self.dtype_name, self._scaler = False, "float32", None
        self.reason = "disabled"
        return self

    @property
    def torch_dtype(self):
        import torch
        return {"bfloat16": torch.bfloat16, "float16": torch.float16}.get(self.dtype_name, torch.float32)

    def autocast(self):
        """Context manager for the forward pass (a null context when disabled)."""
        if not self.enabled:
            return contextlib.nullcontext()
        import torch
        return torch.autocast(device_type=self.device_type, dtype=self.torch_dtype)

    def wrap_optimizer(self, optimizer) -> ScaledOptimizer:
        return ScaledOptimizer(optimizer, self._scaler if self.enabled else None)

    def status(self) -> dict[str, Any]:
        return {"enabled": self.enabled, "device": self.device, "dtype": self.dtype_name,
                "grad_scaler": self._scaler is not None, "reason": self.reason}

    def memory_usage(self) -> dict[str, Any]:
        """CUDA allocator figures (MiB) on GPU; process peak RSS on CPU."""
        import torch
        if self.device_type == "cuda" and torch.cuda.is_available():
            mib = 1024 * 1024
            return {"device": self.device, "allocated_mib": torch.cuda.memory_allocated() / mib,
                    "reserved_mib": torch.cuda.memory_reserved() / mib,
                    "peak_allocated_mib": torch.cuda.max_memory_allocated() / mib}
        import resource
        return {"device": "cpu", "process_peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}

    def op_dtypes(self, model, sample) -> dict[str, str]:
        """Output dtype of every leaf module for one forward pass under this adapter's autocast."""
        import torch
        seen: dict[str, str] = {}
        hooks = []

        def make_hook(name: str):
            def hook(_mod, _inp, out):
                t = out[0] if isinstance(out, (tuple, list)) else out
                if isinstance(t, torch.Tensor):
                    seen[name] = str(t.dtype).replace("torch.", "")
            return hook

        for name, mod in model.named_modules():
            if name and not any(True for _ in mod.children()):
                hooks.append(mod.register_forward_hook(make_hook(name)))
        try:
            was_training = model.training
            model.eval()
            with torch.no_grad(), self.autocast():
                model(sample)
            model.train(was_training)
        finally:
            for h in hooks:
                h.remove()
        return seen

    def reduced_precision_ops(self, model, sample) -> list[str]:
        return [n for n, d in self.op_dtypes(model, sample).items() if d in ("bfloat16", "float16")]
