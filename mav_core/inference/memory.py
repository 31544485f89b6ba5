"""Will a sampling request fit in memory? A cheap estimate, checked before any sampling starts.

  activation_bytes   peak activations of one SpaceTimeUNet forward pass over [B, C, F, H, W]
                     (skip connections kept for the up path + the working set of the widest block);
  attention_score_bytes  the largest attention score matrix, on devices whose attention kernel builds it
                     (MPS: scaled_dot_product_attention falls back to the math kernel there);
  available_bytes    free memory on the device: the host's answer when one is registered
                     (set_free_memory_provider: ComfyUI's model management inside ComfyUI), else on CUDA the
                     driver's free memory plus what PyTorch's caching allocator holds but does not use, on MPS
                     the recommended working set minus what is allocated, MemAvailable from /proc/meminfo on
                     Linux CPUs, None where unknown (then nothing is refused);
  tensor_bytes       bytes of a tensor of a shape (the output a stage accumulates, its copies);
  check_fits         raises MemoryError naming the request and both numbers when the estimate does not fit.

The estimate is deliberately a lower bound of the real peak (on CUDA and CPU, attention through
scaled_dot_product_attention never materialises the score matrix; allocator slack and the sampler's few
latent-sized tensors are left out), so a refused request certainly cannot run, while one that passes may
still be tight.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import torch

MEMINFO = Path("/proc/meminfo")
WORKING_TENSORS = 4          # a ResBlock holds input, normed, conv output and the temporal conv output
ATTENTION_TENSORS = 6        # a transformer block: input, normed, q, k, v, attention output


def activation_bytes(config, batch: int, frames: int, height: int, width: int, element_bytes: int = 4) -> int:
    """Peak activation bytes of SpaceTimeUNet(config) on a [batch, C, frames, height, width] input."""
    levels = len(config.block_out_channels)
    skips = 0
    working = 0
    for level, channels in enumerate(config.block_out_channels):
        pixels = batch * frames * (height >> level) * (width >> level)
        act = pixels * channels
        kept = config.layers_per_block + (1 if level < levels - 1 else 0)   # resnet outputs + downsample
        skips += kept * act
        block = ATTENTION_TENSORS if config.attention_levels[level] else WORKING_TENSORS
        working = max(working, (block + 1) * act)    # + 1: the up path concatenates a skip to its input
    skips += batch * frames * height * width * config.block_out_channels[0]   # conv_in output
    return (skips + working) * element_bytes


SCORE_MATRIX_DEVICES = ("mps",)   # where scaled_dot_product_attention materialises the L x L scores


def attention_score_bytes(config, batch: int, frames: int, height: int, width: int, element_bytes: int = 4) -> int:
    """Bytes of the largest attention score matrix of one forward pass (spatial self-attention over
    the pixels of a frame, or temporal attention over the frames of each pixel)."""
    largest = 0
    for level, channels in enumerate(config.block_out_channels):
        if not config.attention_levels[level]:
            continue
        heads, _ = config.heads(channels)
        pixels = (height >> level) * (width >> level)
        spatial = batch * frames * heads * pixels * pixels
        temporal = batch * pixels * heads * frames * frames
        largest = max(largest, spatial, temporal)
    return largest * element_bytes


_free_memory_provider: Callable | None = None


def set_free_memory_provider(provider: Callable | None) -> None:
    """Let the host answer available_bytes(device) (ComfyUI: model_management.get_free_memory, which also
    counts memory its cached models would give back); None restores the core's own reading."""
    global _free_memory_provider
    _free_memory_provider = provider


def available_bytes(device) -> int | None:
    """Free memory on `device` in bytes, or None when it cannot be read."""
    device = torch.device(device)
    if _free_memory_provider is not None:
        return int(_free_memory_provider(device))
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return int(free + cached)   # PyTorch's cache is free for our tensors, mem_get_info counts it as used
    if device.type == "mps":
        try:
            return int(torch.mps.recommended_max_memory() - torch.mps.current_allocated_memory())
        except (AttributeError, RuntimeError):
            return None
    if device.type == "cpu":
        try:
            for line in MEMINFO.read_text().splitlines():
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
        except (OSError, ValueError, IndexError):
            return None
    return None


def tensor_bytes(shape, dtype: torch.dtype = torch.float32) -> int:
    """Bytes of a tensor of `shape` and `dtype`."""
    count = 1
    for n in shape:
        count *= int(n)
    return count * torch.empty((), dtype=dtype).element_size()


def check_fits(what: str, config, size: tuple[int, int, int, int], device, dtype: torch.dtype = torch.float32,
               available: int | None = None, held: int = 0) -> int:
    """Raise MemoryError when sampling `what` at size (batch, frames, height, width) cannot fit on `device`
    next to `held` bytes the request keeps there at the same time (the output it accumulates, its copies);
    returns the estimate. MAV_SKIP_MEMORY_CHECK=1 turns the check off (the estimate is still returned)."""
    batch, frames, height, width = size
    element = torch.empty((), dtype=dtype).element_size()
    need = activation_bytes(config, batch, frames, height, width, element) + int(held)
    if torch.device(device).type in SCORE_MATRIX_DEVICES:
        need += attention_score_bytes(config, batch, frames, height, width, element)
    if os.environ.get("MAV_SKIP_MEMORY_CHECK") == "1":
        return need
    free = available_bytes(device) if available is None else available
    if free is not None and need > free:
        source = "as the host reports" if available is None and _free_memory_provider is not None else "free"
        raise MemoryError(
            f"{what}: {batch} x {frames} frames at {height}x{width} needs at least {need / 2**30:.2f} GiB of "
            f"activations{f' and output ({held / 2**30:.2f} GiB)' if held else ''} on {torch.device(device)}, "
            f"but only {free / 2**30:.2f} GiB is available ({source}); use fewer "
            "frames, a smaller size or a smaller batch (MAV_SKIP_MEMORY_CHECK=1 skips this check)")
    return need
