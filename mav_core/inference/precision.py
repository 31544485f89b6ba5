"""Precision and compilation: the dtype a model runs in per device, bf16 autocast where the hardware makes
it fast, and torch.compile with a safe fallback.

bf16 is fast on CUDA GPUs of compute capability >= 8 and on CPUs with AMX (amx_bf16 / AMX tiles).
CPUs with AVX512-BF16 only run bf16 matmuls no faster than fp32 (measured: slower on a 2-core
AVX512-BF16 VM without AMX), so "auto" picks bf16 only where AMX or a recent GPU is present.
"""
from __future__ import annotations

import contextlib
import functools
import logging

import torch

log = logging.getLogger(__name__)
PRECISIONS = ("fp32", "bf16", "auto")


@functools.lru_cache(maxsize=None)
def _cpu_has_amx() -> bool:
    probe = getattr(torch.cpu, "_is_amx_tile_supported", None)
    if probe is not None:
        try:
            if probe():
                return True
        except RuntimeError:
            pass
    try:
        with open("/proc/cpuinfo") as fh:
            flags = next((ln for ln in fh if ln.startswith("flags")), "")
        return " amx_bf16" in flags
    except OSError:
        return False


def fast_bf16_supported(device) -> bool:
    """Whether bf16 matmuls are markedly faster than fp32 on `device`."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.get_device_capability(device)[0] >= 8
    if device.type == "cpu":
        return _cpu_has_amx() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    return False


def resolve_precision(precision: str, device) -> str:
    """'fp32' | 'bf16' | 'auto' -> 'fp32' or 'bf16' for `device`."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "auto":
        return "bf16" if fast_bf16_supported(device) else "fp32"
    return precision


DTYPE_NAMES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def default_dtype(device) -> torch.dtype:
    """The dtype diffusion UNets load in on `device` when the user does not choose: float32 on the CPU
    (half precision is slow there unless AMX; bf16 autocast is the `precision` option), bfloat16 on CUDA
    GPUs of compute capability >= 8, float16 on older CUDA GPUs and on MPS."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.bfloat16 if fast_bf16_supported(device) else torch.float16
    if device.type == "mps":
        return torch.float16
    return torch.float32


def resolve_dtype(name: str, device) -> torch.dtype:
    """'auto' | 'fp32' | 'fp16' | 'bf16' -> a torch dtype for `device`."""
    if name == "auto":
        return default_dtype(device)
    if name not in DTYPE_NAMES:
        raise ValueError(f"dtype must be 'auto' or one of {sorted(DTYPE_NAMES)}, got {name!r}")
    return DTYPE_NAMES[name]


def autocast(precision: str, device):
    """A context running matmuls/convs in bf16 (norms and softmax stay float32 inside the kernels)
    when `precision` resolves to bf16; a no-op for fp32."""
    device = torch.device(device)
    if resolve_precision(precision, device) == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def maybe_compile(module: torch.nn.Module, enabled: bool = True, **compile_kwargs) -> torch.nn.Module:
    """torch.compile(module) when enabled and available; the module itself otherwise (or when compile
    raises at wrap time). Compilation happens on the first call and can take minutes on a CPU."""
    if not enabled or not hasattr(torch, "compile"):
        return module
    try:
        return torch.compile(module, **compile_kwargs)
    except Exception as exc:  # noqa: BLE001 - compile support varies by platform; eager always works
        log.warning("torch.compile unavailable (%s); running eagerly", exc)
        return module
