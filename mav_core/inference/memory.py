"""Will a request fit in memory? An estimate of its peak, checked before any work starts.

  activation_bytes   peak activations of one SpaceTimeUNet forward pass over [B, C, F, H, W]: the skip
                     connections kept for the up path + the working set of the widest block, counted in
                     tensors, times FORWARD_FACTOR (measured: what the kernels allocate on top of the
                     tensors the model keeps: layout reorders, temporaries, allocator slack);
  attention_score_bytes  the largest attention score matrix, on devices whose attention kernel builds it
                     (MPS: scaled_dot_product_attention falls back to the math kernel there);
  runtime_bytes      what the runtime adds once per request on top of the tensors (CPU: kernel workspaces,
                     per-thread scratch, libraries' first-call allocations; a measured constant + per thread);
  sampler_bytes      the sampler's float32 state over the whole clip (noise, x, estimates, the result);
  generate_estimate, interpolate_estimate, upscale_estimate
                     one stage's request as an Estimate: the size of one network call and the bytes held
                     next to it; the stage checks it with check_fits, tests/test_memory_estimate.py measures it;
  available_bytes    free memory on the device: the host's answer when one is registered
                     (set_free_memory_provider: ComfyUI's model management inside ComfyUI), else on CUDA the
                     driver's free memory plus what PyTorch's caching allocator holds but does not use, on MPS
                     the recommended working set minus what is allocated, MemAvailable from /proc/meminfo on
                     Linux CPUs, None where unknown (then nothing is refused);
  tensor_bytes       bytes of a tensor of a shape (the output a stage accumulates, its copies);
  check_fits         raises MemoryError naming the request and both numbers when the estimate does not fit.

The estimate is an upper bound of the measured peak with a margin: tests/test_memory_estimate.py draws
requests for the Sampler, ↑F, SR and Load Video with hypothesis, runs each in a child process and asserts
peak RSS growth <= 1.2 x the estimate (and >= 0.3 x it for the larger requests, so it is not vacuous).
FORWARD_FACTOR and the CPU runtime constants are measured there on the CPU (float32, PyTorch's oneDNN
kernels); on accelerators the same activation count is used and the runtime constant is not added (not
measured: the driver's context and the caching allocator's reserve live outside the request).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, NamedTuple

import torch

MEMINFO = Path("/proc/meminfo")
WORKING_TENSORS = 4          # a ResBlock holds input, normed, conv output and the temporal conv output
ATTENTION_TENSORS = 6        # a transformer block: input, normed, q, k, v, attention output
FORWARD_FACTOR = 2.5         # peak RSS / counted tensors of a forward pass, measured (CPU, float32, MAV-Tiny)
RUNTIME_BYTES = {"cpu": 36 << 20}             # measured: the first request of a fresh process, 1 thread
RUNTIME_BYTES_PER_THREAD = {"cpu": 1 << 20}   # measured: + 0.25 to 0.9 MiB per intra-op thread (1..16)
SAMPLER_LATENTS = 8          # noise, x, denoised, the step's eps and x_prev, the previous estimate, the result


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
    return int(FORWARD_FACTOR * (skips + working)) * element_bytes


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


def runtime_bytes(device) -> int:
    """Bytes the runtime adds to one request's tensors on `device` (0 where not measured)."""
    kind = torch.device(device).type
    if kind not in RUNTIME_BYTES:
        return 0
    return RUNTIME_BYTES[kind] + RUNTIME_BYTES_PER_THREAD[kind] * torch.get_num_threads()


def sampler_bytes(shape, guided: bool = False) -> int:
    """The sampler's float32 state for a sample of `shape` [B, C, F, H, W] (the whole clip, also when the
    network runs on windows of it); guided: the network's output for the cfg pair, its halves combined."""
    latent = tensor_bytes(shape)
    return (SAMPLER_LATENTS + (4 if guided else 0)) * latent


class Estimate(NamedTuple):
    """A request: one network call's size (batch, frames, height, width) and the bytes held next to it."""
    size: tuple
    held: int


def generate_estimate(config, batch: int, shape: tuple, guided: bool, window: int | None = None) -> Estimate:
    """generate_video on `batch` clips of shape (frames, height, width), guided (cfg pair in one call) or
    not, the network on `window` frames at a time (None: all): one call, the sampler's state over the clip
    and the conditioning frames (↑F's known frames and mask, the init frames, shaped like the clip)."""
    frames, height, width = shape
    call = (batch * (2 if guided else 1), frames if window is None else min(frames, window), height, width)
    clip = (batch, config.out_channels, frames, height, width)
    held = sampler_bytes(clip, guided) + 2 * tensor_bytes((batch, config.extra_in_channels + 3, frames, height, width))
    return Estimate(call, held)


def interpolate_estimate(config, video_shape: tuple, window: int, total: int, guided: bool,
                         image_copy: bool) -> Estimate:
    """interpolate_video on video [B, C, N, H, W] producing `total` frames, `window` frames per
    generate_video call: one window's request next to the output of `total` frames, the window's known
    frames, mask, blend and conditioning frames, and (image_copy: on the CPU, where the IMAGE conversion
    shares the memory) the IMAGE copy of the output."""
    b, c, _, h, w = video_shape
    window_request = generate_estimate(config, b, (window, h, w), guided)
    out = tensor_bytes((b, c, total, h, w))
    held = out * (2 if image_copy else 1) + 4 * tensor_bytes((b, c + 1, window, h, w)) + window_request.held
    return Estimate(window_request.size, held)


def upscale_estimate(config, out_shape: tuple, chunk: int, image_copy: bool) -> Estimate:
    """upscale_video to out_shape [B, C, F, 2H, 2W] in chunks of `chunk` frames: one chunk's call next to
    the whole output, the chunk's low-res, upsampled, sampled and weighted frames, its sampler state and
    (image_copy) the IMAGE copy of the output."""
    b, c, f, h, w = out_shape
    k = min(f, chunk)
    chunk_bytes = tensor_bytes((b, c, k, h, w))
    held = (tensor_bytes(out_shape) * (2 if image_copy else 1) + 4 * chunk_bytes
            + sampler_bytes((b, c, k, h, w)))
    return Estimate((b, k, h, w), held)


def check_fits(what: str, config, size: tuple[int, int, int, int], device, dtype: torch.dtype = torch.float32,
               available: int | None = None, held: int = 0) -> int:
    """Raise MemoryError when sampling `what` at size (batch, frames, height, width) cannot fit on `device`
    next to `held` bytes the request keeps there at the same time (the output it accumulates, its copies);
    returns the estimate. MAV_SKIP_MEMORY_CHECK=1 turns the check off (the estimate is still returned)."""
    batch, frames, height, width = size
    element = torch.empty((), dtype=dtype).element_size()
    need = activation_bytes(config, batch, frames, height, width, element) + int(held) + runtime_bytes(device)
    if torch.device(device).type in SCORE_MATRIX_DEVICES:
        need += attention_score_bytes(config, batch, frames, height, width, element)
    if os.environ.get("MAV_SKIP_MEMORY_CHECK") == "1":
        return need
    free = available_bytes(device) if available is None else available
    if free is not None and need > free:
        source = "as the host reports" if available is None and _free_memory_provider is not None else "free"
        raise MemoryError(
            f"{what}: {batch} x {frames} frames at {height}x{width} needs about {need / 2**30:.2f} GiB for "
            f"activations{f' and output ({held / 2**30:.2f} GiB)' if held else ''} on {torch.device(device)}, "
            f"but only {free / 2**30:.2f} GiB is available ({source}); use fewer "
            "frames, a smaller size or a smaller batch (MAV_SKIP_MEMORY_CHECK=1 skips this check)")
    return need
