"""Optional speed-ups: torch.compile with a safe fallback, and bf16 where the hardware makes it fast.

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


def _window_slice(name: str, value, frames: int, a: int, b: int):
    """The window's frames [a, b) of a conditioning value that has a frame axis: video-shaped tensors
    [B, C, F, H, W] (e.g. ↑F's known frames) and prompt travel's per-frame context [B, F, L, D] and
    image_embed [B, F, E]; anything else (per-clip conditioning, fps) is passed through."""
    if not isinstance(value, torch.Tensor):
        return value
    if value.dim() == 5 and value.shape[2] == frames:
        return value[:, :, a:b]
    per_frame = (name == "context" and value.dim() == 4) or (name == "image_embed" and value.dim() == 3)
    if per_frame:
        if value.shape[1] != frames:
            raise ValueError(f"per-frame {name} has {value.shape[1]} frames, the video {frames}")
        return value[:, a:b]
    return value


class FrameWindows(torch.nn.Module):
    """Long videos in bounded memory (AnimateDiff-style context windows): the wrapped network runs on
    overlapping windows of `window` frames and the predictions are averaged where windows overlap, with
    pyramid weights (largest mid-window), so every step sees the whole clip and seams blend.

    Conditioning with a frame axis (video-shaped tensors such as ↑F's masked frames, prompt travel's
    per-frame context / image_embed) is sliced with the window; everything else is passed through. Peak
    memory is that of one window."""

    def __init__(self, net: torch.nn.Module, window: int, overlap: int | None = None):
        super().__init__()
        if not isinstance(window, int) or isinstance(window, bool) or window < 2:
            raise ValueError(f"context_window must be an integer >= 2 frames, got {window!r}")
        overlap = max(1, window // 4) if overlap is None else overlap
        if not isinstance(overlap, int) or isinstance(overlap, bool) or not 0 <= overlap < window:
            raise ValueError(f"context_overlap must be an integer in [0, {window - 1}], got {overlap!r}")
        self.net, self.window, self.overlap = net, window, overlap
        self.calls = 0

    def spans(self, frames: int, shift: int = 0) -> list[tuple[int, int]]:
        """[start, end) of the windows covering the clip, each overlapping the previous by `overlap` frames.
        The first window ends at shift + overlap (a full window at shift 0) and the last one ends at the last
        frame, so both can be shorter than `window`: with them every boundary moves with `shift`, the clip's
        ends included (full-length end windows would put the same boundary at every step)."""
        if frames <= self.window:
            return [(0, frames)]
        stride = self.window - self.overlap
        shift %= stride
        spans = [(0, shift + self.overlap if shift else self.window)]
        while spans[-1][1] < frames:
            start = spans[-1][1] - self.overlap
            spans.append((start, min(start + self.window, frames)))
        return spans

    def shifts(self) -> list[int]:
        """The boundary shifts the calls cycle through."""
        stride = self.window - self.overlap
        step = max(1, stride // 4)
        return sorted({(i * step) % stride for i in range(stride)})

    def edge_transitions(self, frames: int) -> list[int]:
        """Frame transitions t -> t+1 that lie at a window edge in any call (where a seam could show)."""
        edges = set()
        for shift in self.shifts():
            for a, b in self.spans(frames, shift):
                edges |= {a - 1, b - 1}
        return sorted(edges - {-1, frames - 1})

    def forward(self, x: torch.Tensor, t: torch.Tensor, **cond) -> torch.Tensor:
        frames = x.shape[2]
        if frames <= self.window:
            return self.net(x, t, **cond)
        # the window boundaries move every call (every sampling step) by a quarter stride, so no frame
        # transition sits at a window edge at every step: seams average out instead of adding up
        stride = self.window - self.overlap
        shift = (self.calls * max(1, stride // 4)) % stride
        self.calls += 1
        out = total = None
        for a, b in self.spans(frames, shift):
            n = b - a
            ramp = torch.arange(n, device=x.device, dtype=torch.float32)
            weight = torch.minimum(ramp + 1, n - ramp)                  # pyramid: 1, 2, ..., 2, 1
            part = {k: _window_slice(k, v, frames, a, b) for k, v in cond.items()}
            y = self.net(x[:, :, a:b], t, **part).float()
            if out is None:
                out = y.new_zeros(y.shape[0], y.shape[1], frames, *y.shape[3:])
                total = torch.zeros(frames, device=x.device)
            out[:, :, a:b] += y * weight[:, None, None]
            total[a:b] += weight
        return (out / total[:, None, None]).to(x.dtype)
