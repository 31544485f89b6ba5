"""Will a sampling request fit in memory? A cheap estimate, checked before any sampling starts.

  activation_bytes   peak activations of one SpaceTimeUNet forward pass over [B, C, F, H, W]
                     (skip connections kept for the up path + the working set of the widest block);
  available_bytes    free memory on the device: torch.cuda.mem_get_info on CUDA, MemAvailable from
                     /proc/meminfo on Linux CPUs, None where unknown (then nothing is refused);
  check_fits         raises MemoryError naming the request and both numbers when the estimate does not fit.

The estimate is deliberately a lower bound of the real peak (attention through scaled_dot_product_attention
never materialises the score matrix; allocator slack and the sampler's few latent-sized tensors are left
out), so a refused request certainly cannot run, while one that passes may still be tight.
"""
from __future__ import annotations

import os
from pathlib import Path

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


def available_bytes(device) -> int | None:
    """Free memory on `device` in bytes, or None when it cannot be read."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    if device.type == "cpu":
        try:
            for line in MEMINFO.read_text().splitlines():
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
        except (OSError, ValueError, IndexError):
            return None
    return None


def check_fits(what: str, config, batch: int, frames: int, height: int, width: int, device,
               dtype: torch.dtype = torch.float32, available: int | None = None) -> int:
    """Raise MemoryError when sampling `what` at this size cannot fit on `device`; returns the estimate.
    MAV_SKIP_MEMORY_CHECK=1 turns the check off (the estimate is still returned)."""
    element = torch.empty((), dtype=dtype).element_size()
    need = activation_bytes(config, batch, frames, height, width, element)
    if os.environ.get("MAV_SKIP_MEMORY_CHECK") == "1":
        return need
    free = available_bytes(device) if available is None else available
    if free is not None and need > free:
        raise MemoryError(
            f"{what}: {batch} x {frames} frames at {height}x{width} needs at least {need / 2**30:.2f} GiB of "
            f"activations on {torch.device(device)}, but only {free / 2**30:.2f} GiB is available; use fewer "
            "frames, a smaller size or a smaller batch (MAV_SKIP_MEMORY_CHECK=1 skips this check)")
    return need
