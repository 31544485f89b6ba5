"""↑F: masked frame interpolation (more frames between known ones) and extrapolation (frames after them:
image animation), window by window through generate_video with known frames."""
from __future__ import annotations

import os
from typing import Callable

import torch

from ..diffusion import derive_seed
from ..errors import InputError, check_finite
from ..io.checkpoints import LoadedModel
from ..models.flow_fusion import FlowFusionNet
from .flow import MIN_SIDE, FlowOptions, check_frame_size, in_between
from .frame_masks import extrapolation_mask, frame_guess, interpolation_mask
from .frames import check_video
from .generate import check_inputs, conditioning_batch, generate_video
from .memory import available_bytes, check_fits, interpolate_estimate, tensor_bytes
from .options import MAX_FPS, Guides, InterpolationOptions, SamplingOptions, VideoShape
from .placement import model_device_dtype
from .sampling import is_regression


def linear_blend_frames(grid: torch.Tensor, multiplier: int) -> torch.Tensor:
    """Fill the frames between every m-th (known) frame of grid [B, C, T, H, W] by linear blending."""
    return frame_guess(grid, interpolation_mask(grid.shape[2], multiplier))


def start_estimate(grid: torch.Tensor, multiplier: int) -> torch.Tensor:
    """The diffusion ↑F's start for grid [B, C, T, H, W] (every m-th frame known): the motion-compensated
    estimate of the frames between (optical flow both ways, both known frames warped to each in-between
    time, the warped average of the flow estimates; no network), the known frames kept; frames below
    MIN_SIDE px, where flow is not estimated, get the linear blend."""
    if grid.shape[-2] < MIN_SIDE or grid.shape[-1] < MIN_SIDE:
        return linear_blend_frames(grid, multiplier)
    return motion_compensated_frames(grid[:, :, ::multiplier], multiplier).to(grid)


PAIR_FLOATS_PER_PIXEL = 160   # flows, warps, features and the fusion net's activations of one pair


def is_flow_interpolator(interpolator: LoadedModel) -> bool:
    """The motion-compensated ↑F (optical flow + FlowFusionNet), not a SpaceTimeUNet. By class name too: the
    pack inside ComfyUI and a script beside it may import the core under two package names."""
    return isinstance(interpolator.module, FlowFusionNet) or type(interpolator.module).__name__ == FlowFusionNet.__name__


def flow_options(net: FlowFusionNet | None) -> FlowOptions:
    """The flow settings a fusion network was trained with (the defaults without one)."""
    if net is None:
        return FlowOptions()
    c = net.config
    return FlowOptions(method=c.flow_method, preset=c.flow_preset, max_side=c.flow_max_side, sigma=c.flow_sigma,
                       warp=c.flow_warp, variants=c.flow_variants)


def motion_compensated_frames(video: torch.Tensor, multiplier: int, net: FlowFusionNet | None = None,
                              callback: Callable | None = None, options: FlowOptions | None = None) -> torch.Tensor:
    """Motion-compensated interpolation of video [B, 3, N, H, W] (any H, W >= 32): N -> (N-1)·m+1 frames,
    the input frames kept at every m-th position, the m-1 frames between each pair at t = k/m from one
    bidirectional flow estimate of the pair, fused by `net` (None: the warped average of the flow estimates).
    One pair at a time into the preallocated output (memory: the output plus one pair's working set);
    callback({"step": i, "total": N-1, "denoised": the pair's output frames [B, 3, m+1, H, W]}) after each
    pair (a Cancel check raises there). Output on the input's device and in its dtype."""
    check_video("video", video)
    b, c, n, h, w = video.shape
    check_frame_size("video", h, w)
    if n < 2:
        raise InputError("video", f"frame interpolation needs at least 2 input frames, got {n}")
    options = (options or flow_options(net)).validate()
    m = multiplier
    result = video.new_empty(b, c, (n - 1) * m + 1, h, w)
    result[:, :, ::m] = video
    times = [k / m for k in range(1, m)]
    with torch.no_grad():
        for i in range(n - 1):
            frames = in_between(video[:, :, i], video[:, :, i + 1], times, net, options)
            for k, frame in enumerate(frames, start=1):
                result[:, :, i * m + k] = frame.clamp(-1, 1)
            if callback is not None:
                callback({"step": i, "total": n - 1, "denoised": result[:, :, i * m:(i + 1) * m + 1]})
    return result


def interpolate_video(interpolator: LoadedModel, video: torch.Tensor, cond: dict, uncond: dict | None = None,
                      fps: float = 8.0, frames: InterpolationOptions = InterpolationOptions(),
                      options: SamplingOptions = SamplingOptions(steps=20),
                      callback: Callable | None = None) -> torch.Tensor:
    """↑F on video [B, 3, N, H, W] at `fps`. interpolate: N -> (N-1)·m+1 frames, the input frames kept at
    every m-th position, in windows of at most `frames.window` frames that share their end frames; with
    blend_init in (0, 1) each window starts from the motion-compensated estimate of its in-between frames
    (start_estimate; the linear blend below 32 px) noised to that strength (SDEdit-style), so the model
    refines the estimate instead of inventing the in-between frames.
    extrapolate: `extra_frames` new frames, window by window, each conditioned on the last frames so far.
    A regression ↑F checkpoint (is_regression) interpolates in one deterministic pass per window (seed,
    steps, sampler, cfg and blend_init do not apply) and cannot extrapolate. Returns [B, 3, T, H, W]."""
    frames.validate()
    options.validate()
    VideoShape(fps=fps).validate()
    check_video("video", video)
    check_finite("video", video)
    check_inputs(cond, uncond)
    m = frames.multiplier
    if frames.mode == "interpolate" and fps * m > MAX_FPS:
        raise InputError("multiplier", f"{m} at {fps} fps gives {fps * m:g} frames per second, above {MAX_FPS:g}")
    if is_flow_interpolator(interpolator):
        if frames.mode != "interpolate":
            raise InputError("mode", f"'{frames.mode}' needs the diffusion ↑F: {interpolator.path} is the "
                                     "motion-compensated ↑F (interpolation only); use interpolator.safetensors")
        return _interpolate_flow(interpolator, video, m, callback)
    if frames.mode == "interpolate":
        return _interpolate(interpolator, video, cond, uncond, fps, frames, options, callback)
    return _extrapolate(interpolator, video, cond, uncond, fps, frames, options, callback)


def _interpolate_flow(interpolator, video, m, callback):
    """The motion-compensated ↑F on the model's device (the output follows it, float32). The request is
    checked first: the output next to one pair's working set (about PAIR_FLOATS_PER_PIXEL floats a pixel)."""
    device, _ = model_device_dtype(interpolator.module)
    b, c, n, h, w = video.shape
    check_frame_size("video", h, w)
    need = tensor_bytes((b, c, (n - 1) * m + 1, h, w)) + tensor_bytes((b, PAIR_FLOATS_PER_PIXEL, h, w))
    free = available_bytes(device)
    if free is not None and need > free and os.environ.get("MAV_SKIP_MEMORY_CHECK") != "1":
        raise MemoryError(f"{interpolator.path}: {n} frames at {w}x{h} x{m} need {need / 2**30:.2f} GiB on "
                          f"{torch.device(device)}, but only {free / 2**30:.2f} GiB is available; use fewer frames "
                          "or a smaller size (MAV_SKIP_MEMORY_CHECK=1 skips this check)")
    return motion_compensated_frames(video.to(device, torch.float32), m, interpolator.module, callback)


def _check_request(interpolator, video, cond, uncond, window: int, total: int, cfg: float):
    """The whole request fits before anything is built: one window's activations next to the output of
    `total` frames (on the model's device), the window's known frames, mask, blend and conditioning frames,
    and the IMAGE copy of the output when that is made in the same memory (the CPU)."""
    device, dtype = model_device_dtype(interpolator.module)
    guided = uncond is not None and cfg != 1.0 and not is_regression(interpolator)
    shape = (max(video.shape[0], conditioning_batch(cond)), *video.shape[1:])
    request = interpolate_estimate(interpolator.config, shape, window, total, guided, torch.device(device).type == "cpu")
    check_fits(f"{interpolator.path}", interpolator.config, request.size, device, dtype, held=request.held)
    return device


def _interpolate(interpolator, video, cond, uncond, fps, frames, options, callback):
    b, c, n, h, w = video.shape
    m = frames.multiplier
    if n < 2:
        raise ValueError(f"frame interpolation needs at least 2 input frames, got {n}")
    if m == 1:
        return video
    per_window = max(2, (frames.window - 1) // m + 1)
    total = (n - 1) * m + 1
    device = _check_request(interpolator, video, cond, uncond, (min(per_window, n) - 1) * m + 1, total, options.cfg)
    result = torch.empty(b, c, total, h, w, device=device, dtype=torch.float32)
    start = 0
    while start < n - 1:
        known_idx = list(range(start, min(start + per_window, n)))
        t = (len(known_idx) - 1) * m + 1
        grid = video.new_zeros(b, c, t, h, w)
        grid[:, :, ::m] = video[:, :, known_idx]
        window_options = options.replace(seed=derive_seed(options.seed, start), denoise=1.0)
        guides = Guides(known=grid, known_mask=interpolation_mask(t, m))
        if 0 < frames.blend_init < 1 and not is_regression(interpolator):
            guides = guides.replace(init=start_estimate(grid, m))
            window_options = window_options.replace(denoise=frames.blend_init)
        out = generate_video(interpolator, cond, uncond, VideoShape(t, h, w, fps * m), window_options, guides,
                             callback=callback)
        out[:, :, ::m] = video[:, :, known_idx].to(out)
        keep = 0 if start == 0 else 1
        result[:, :, start * m + keep:start * m + t] = out[:, :, keep:]
        start = known_idx[-1]
    return result


def _extrapolate(interpolator, video, cond, uncond, fps, frames, options, callback):
    b, c, n, h, w = video.shape
    if is_regression(interpolator):
        raise InputError("mode", f"'extrapolate' needs the diffusion ↑F: {interpolator.path} is a regression ↑F "
                                 "checkpoint (one-pass interpolation); use interpolator.safetensors to animate an image")
    total_new = frames.extra_frames if frames.extra_frames is not None else max(1, (n - 1) * frames.multiplier + 1 - n)
    device = _check_request(interpolator, video, cond, uncond, frames.window, n + total_new, options.cfg)
    result = torch.empty(b, c, n + total_new, h, w, device=device, dtype=torch.float32)
    result[:, :, :n] = video
    made = 0
    while made < total_new:
        have = n + made
        ctx = min(have, max(1, frames.window // 2))
        new = min(frames.window - ctx, total_new - made)
        t = ctx + new
        grid = video.new_zeros(b, c, t, h, w)
        grid[:, :, :ctx] = result[:, :, have - ctx:have]
        out = generate_video(interpolator, cond, uncond, VideoShape(t, h, w, fps),
                             options.replace(seed=derive_seed(options.seed, made), denoise=1.0),
                             Guides(known=grid, known_mask=extrapolation_mask(t, ctx)), callback=callback)
        result[:, :, have:have + new] = out[:, :, ctx:]
        made += new
    return result
