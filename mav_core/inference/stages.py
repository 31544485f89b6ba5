"""Inference for each Make-A-Video stage as a plain function over loaded models.

Video tensors are [B, C, F, H, W] in -1..1 (model space); `frames_to_video` / `video_to_frames`
convert from/to the [F, H, W, 3] 0..1 frames that ComfyUI's IMAGE type and the video writer use.
Every sampling function takes `callback` (called once per step; raise from it to cancel) and draws
its noise from `seed` on the CPU (same numbers on every device).
"""
from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F

from ..io.checkpoints import LoadedModel
from ..diffusion import CFGDenoiser, Denoiser, NoiseSampler, sample, sampling_sigmas, seeded_noise
from .frame_masks import extrapolation_mask, frame_guess, guess_condition, interpolation_mask, masked_condition
from .accel import FrameWindows, autocast
from ..models.control import ControlledUNet
from .memory import check_fits
from .placement import model_device_dtype, to_model

MAX_FRAMES = 1024


def frames_to_video(frames: torch.Tensor) -> torch.Tensor:
    """[F, H, W, 3] 0..1 -> [1, 3, F, H, W] -1..1."""
    if frames.dim() != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be [F, H, W, 3], got {tuple(frames.shape)}")
    return frames.permute(3, 0, 1, 2)[None].float() * 2 - 1


def video_to_frames(video: torch.Tensor) -> torch.Tensor:
    """[B, 3, F, H, W] -1..1 -> [B*F, H, W, 3] 0..1 on the CPU (float32)."""
    return ((video.float().clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 4, 1).flatten(0, 1).cpu()


def check_positive_int(name: str, value, lo: int = 1, hi: int | None = None):
    if isinstance(value, bool) or not isinstance(value, int) or value < lo or (hi is not None and value > hi):
        raise ValueError(f"{name} must be an integer in [{lo}, {hi if hi is not None else 'inf'}], got {value!r}")


def check_number(name: str, value, lo: float, hi: float, lo_open: bool = False):
    """A finite real number in [lo, hi] ((lo, hi] when lo_open); bools and strings are refused."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < lo or value > hi or (lo_open and value == lo):
        raise ValueError(f"{name} must be a finite number in {'(' if lo_open else '['}{lo}, {hi}], got {value!r}")


MAX_SEED = 2 ** 64 - 1
MAX_CFG = 100.0
NAN_CHECK_EVERY_ACCELERATOR = 8   # steps between host syncs for the NaN check on GPUs (1 on the CPU: no sync cost)


def default_nan_check_every(device) -> int:
    return 1 if torch.device(device).type == "cpu" else NAN_CHECK_EVERY_ACCELERATOR


class _FiniteWatch:
    """Callback wrapper: records after every step whether the model output (`denoised`) is finite, as a
    device-side flag (no host sync), and reads the flags with one sync every `every` steps while at least
    `every` steps remain; the last flags are read together with the final sample's check (`finish`), so a
    run of n steps syncs at most ceil(n / every) times. A NaN/inf stops sampling with a FloatingPointError
    naming the first bad step; on a GPU it may be noticed up to every - 1 steps late (the trade-off against
    a sync per step). every=0: only the final sample is checked."""

    def __init__(self, what: str, total: int, every: int, callback=None):
        self.what, self.total, self.every, self.callback = what, total, every, callback
        self.flags: list = []

    def __call__(self, info):
        if self.every:
            self.flags.append(torch.isfinite(info["denoised"]).all())
            done = len(self.flags)
            if done % self.every == 0 and self.total - done >= self.every:
                self._raise_at_first_bad(torch.stack(self.flags).all())
        if self.callback is not None:
            self.callback(info)

    def _raise_at_first_bad(self, all_ok: torch.Tensor):
        if not bool(all_ok):   # the one host sync
            bad = (~torch.stack(self.flags)).nonzero() if self.flags else ()
            if len(bad):
                step = int(bad[0, 0]) + 1
                raise FloatingPointError(f"{self.what}: the model output became NaN/inf at step {step} of "
                                         f"{self.total} (try float32, fewer steps or another checkpoint)")
            raise FloatingPointError(f"{self.what}: sampling produced NaN/inf values in the final sample "
                                     "(try float32 or fewer steps)")

    def finish(self, out: torch.Tensor):
        """Check the remaining flags and the final sample with one host sync."""
        self._raise_at_first_bad(torch.stack(self.flags + [torch.isfinite(out).all()]).all())


def sample_unet(model: LoadedModel, shape, cond: dict, uncond: dict | None = None, *, seed: int = 0,
                steps: int = 25, cfg: float = 1.0, sampler: str = "ddim", init: torch.Tensor | None = None,
                denoise: float = 1.0, shared_noise: bool | float = False, temporal: bool = True,
                callback: Callable | None = None, nan_check_every: int | None = None,
                context_window: int | None = None, context_overlap: int | None = None,
                precision: str = "fp32") -> torch.Tensor:
    """Draw a sample of `shape` ([B, C, F, H, W]) from a SpaceTimeUNet with guidance.

    context_window: denoise overlapping windows of this many frames per step, blending the overlaps
    (context_overlap frames, default window // 4): long videos in one window's memory (accel.FrameWindows).
    precision: 'fp32', 'bf16' (autocast) or 'auto' (bf16 where it is fast: AMX CPUs, CUDA >= sm80).

    init + denoise < 1: start from `init` noised to the matching level (vid2vid / variations).
    nan_check_every: steps between checks of the model output for NaN/inf (default 1 on CPU,
    NAN_CHECK_EVERY_ACCELERATOR elsewhere; 0: only the final sample); see _FiniteWatch.
    Inputs may be on any device: they are moved to the model's once. Returns float32 on the model's device."""
    check_positive_int("steps", steps, 1, 1000)
    check_number("cfg", cfg, 0.0, MAX_CFG)
    check_number("denoise", denoise, 0.0, 1.0, lo_open=True)
    check_positive_int("seed", seed, 0, MAX_SEED)
    if model.schedule is None:
        raise ValueError(f"{model.path}: checkpoint has no noise schedule; it is not a diffusion model")
    device, dtype = model_device_dtype(model.module)
    # every input on the model's device once; conditioning in the model's dtype, the sampling state
    # (x, sigmas, noise, init) in float32: half precision only inside the network (see Denoiser)
    cond, uncond = to_model(cond, device, dtype), to_model(uncond, device, dtype)
    net = model.module
    if not temporal:
        net = _ImageMode(net)
    if cond.get("controls"):
        net = ControlledUNet(net, model.schedule.num_train_steps)
    if context_window is not None:
        if cond.get("controls"):
            raise ValueError("context_window cannot be combined with controls (their hint videos are not windowed)")
        net = FrameWindows(net, context_window, context_overlap)
    den = Denoiser(net, model.schedule, model.prediction or "eps", dtype=dtype).to(device)
    guided = CFGDenoiser(den, cond, uncond, cfg)
    sigmas = sampling_sigmas(model.schedule, steps, denoise if init is not None else 1.0)  # stays on the CPU
    noise = seeded_noise(shape, seed, device=device, dtype=torch.float32, shared_frames=shared_noise)
    x = noise * float(sigmas[0])
    if init is not None:
        if tuple(init.shape) != tuple(shape):
            raise ValueError(f"init frames of shape {tuple(init.shape)} do not match the requested {tuple(shape)}")
        x = init.to(device, torch.float32) + x
    if nan_check_every is None:
        nan_check_every = default_nan_check_every(device)
    check_positive_int("nan_check_every", nan_check_every, 0)
    watch = _FiniteWatch(model.path, len(sigmas) - 1, nan_check_every, callback)
    with autocast(precision, device):
        out = sample(sampler, guided, x, sigmas, callback=watch,
                     noise_sampler=NoiseSampler(seed, shared_frames=shared_noise))
    watch.finish(out)
    return out


def is_regression(model: LoadedModel) -> bool:
    """A regression ↑F checkpoint: gives the unknown frames in one pass instead of sampling them."""
    return model.metadata.get("mav_interp_estimate") == "regression"


def estimate_unet(model: LoadedModel, shape, cond: dict, *, callback: Callable | None = None,
                  context_window: int | None = None, context_overlap: int | None = None,
                  precision: str = "fp32") -> torch.Tensor:
    """One-pass estimate of `shape` from a network trained by regression (regression ↑F): the denoiser's x0
    at the largest noise level with x = 0, i.e. what the network predicts from its conditioning alone.
    Deterministic: no seed, no steps, no guidance. callback gets one call, as after one sampling step."""
    if model.schedule is None:
        raise ValueError(f"{model.path}: checkpoint has no noise schedule")
    device, dtype = model_device_dtype(model.module)
    cond = to_model(cond, device, dtype)
    net = model.module if context_window is None else FrameWindows(model.module, context_window, context_overlap)
    den = Denoiser(net, model.schedule, model.prediction or "eps", dtype=dtype).to(device)
    x = torch.zeros(shape, device=device, dtype=torch.float32)
    with autocast(precision, device):
        out = den.estimate_from_nothing(x, **cond)
    if not torch.isfinite(out).all():
        raise FloatingPointError(f"{model.path}: the one-pass estimate has NaN/inf values (try float32)")
    if callback is not None:
        callback({"i": 0, "x": x, "sigma": den.sigma_max, "denoised": out})
    return out


class _ImageMode(torch.nn.Module):
    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x, t, **cond):
        return self.net(x, t, temporal=False, **cond)


def encode_prompt(text_model: LoadedModel, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        return text_model.module.encode_text(list(prompts))


def run_prior(prior: LoadedModel, tokens: torch.Tensor, pooled: torch.Tensor, *, seed: int = 0, steps: int = 20,
              cfg: float = 1.0, uncond: dict | None = None, callback=None) -> torch.Tensor:
    from ..models.prior import sample_image_embed
    return sample_image_embed(prior.module, prior.schedule, tokens, pooled, steps=steps, cfg=cfg, seed=seed,
                              callback=callback, uncond=uncond)


def generate_video(decoder: LoadedModel, cond: dict, uncond: dict | None, *, frames: int = 16, height: int = 32,
                   width: int = 32, fps: float = 8.0, seed: int = 0, steps: int = 25, cfg: float = 5.0,
                   sampler: str = "ddim", init: torch.Tensor | None = None, denoise: float = 1.0,
                   known: torch.Tensor | None = None, known_mask: torch.Tensor | None = None,
                   controls: list | None = None, callback=None, context_window: int | None = None,
                   context_overlap: int | None = None, precision: str = "fp32",
                   noise_share: float = 0.0) -> torch.Tensor:
    """D^t: text/image-embedding-conditioned video [B, 3, F, H, W].

    noise_share: correlation of the starting noise between frames (0: independent; see seeded_noise).

    context_window / context_overlap / precision: see sample_unet (sliding windows for long videos).

    known + known_mask (interpolator checkpoints only): frames to keep, as in ↑F.
    controls: mav_core.models.control.Control list (hint videos + adapters), added to both guidance halves."""
    check_positive_int("frames", frames, 1, MAX_FRAMES)
    cfgm = decoder.config
    down = 2 ** (len(cfgm.block_out_channels) - 1)
    for name, v in (("height", height), ("width", width)):
        check_positive_int(name, v, down, 4096)
        if v % down:
            raise ValueError(f"{name} {v} must be a multiple of {down} for this model")
    check_number("fps", fps, 0.0, 240.0, lo_open=True)
    check_positive_int("steps", steps, 1, 1000)
    check_number("cfg", cfg, 0.0, MAX_CFG)
    check_number("noise_share", noise_share, 0.0, 1.0)
    b = _batch(cond)
    device, dtype = model_device_dtype(decoder.module)
    guided_batch = 2 * b if uncond is not None and cfg != 1.0 else b
    window_frames = frames if context_window is None else min(frames, context_window)
    check_fits(f"{decoder.path}", cfgm, guided_batch, window_frames, height, width, device, dtype)
    # all inputs on the model's device once, before sampling: conditioning in the model's dtype, frames
    # (init / known) in float32 like the sampling state
    cond, uncond = to_model(cond, device, dtype), to_model(uncond, device, dtype)
    controls = to_model(controls, device)   # hints keep their dtype: the control adapter's, not the UNet's
    init, known, known_mask = (to_model(v, device, torch.float32) for v in (init, known, known_mask))
    fps_t = torch.full((b,), float(fps), device=device)
    cond = {**cond, "fps": fps_t}
    uncond = None if uncond is None else {**uncond, "fps": fps_t}
    if controls:
        cond["controls"] = list(controls)
        if uncond is not None:
            uncond["controls"] = list(controls)
    residual_scale = float(decoder.metadata.get("mav_interp_residual_scale", 0) or 0)
    guess = None
    if known is not None:
        if residual_scale:   # residual ↑F: conditioned on the guess, diffusing (frames - guess) * scale
            extra = guess_condition(known, known_mask)
            guess = extra[:, :-1]
            if init is not None:
                init = (init - guess) * residual_scale
        else:
            extra = masked_condition(known, known_mask)
        cond["extra"] = extra
        if uncond is not None:
            uncond["extra"] = extra
    shape = (b, cfgm.out_channels, frames, height, width)
    if is_regression(decoder):
        if known is None or not residual_scale:
            raise ValueError(f"{decoder.path} is a regression ↑F checkpoint: it only fills in frames between "
                             "known frames (interpolation), it cannot generate a video")
        # trained without text or image conditioning: the known frames are all it goes by
        cond = {**cond, "image_embed": torch.zeros_like(cond["image_embed"])} if "image_embed" in cond else cond
        out = estimate_unet(decoder, shape, cond, callback=callback, context_window=context_window,
                            context_overlap=context_overlap, precision=precision)
        return guess + out / residual_scale
    out = sample_unet(decoder, shape, cond, uncond, seed=seed, steps=steps, cfg=cfg, sampler=sampler,
                      init=init, denoise=denoise, callback=callback, context_window=context_window,
                      context_overlap=context_overlap, precision=precision, shared_noise=noise_share)
    return out if guess is None else guess + out / residual_scale


def _check_video(name: str, video) -> None:
    if not isinstance(video, torch.Tensor) or video.dim() != 5 or 0 in video.shape:
        shape = tuple(video.shape) if isinstance(video, torch.Tensor) else type(video).__name__
        raise ValueError(f"{name} must be a non-empty [B, C, F, H, W] tensor, got {shape}")


def _batch(cond: dict) -> int:
    for v in cond.values():
        if isinstance(v, torch.Tensor):
            return v.shape[0]
    return 1


def linear_blend_frames(grid: torch.Tensor, multiplier: int) -> torch.Tensor:
    """Fill the frames between every m-th (known) frame of grid [B, C, T, H, W] by linear blending."""
    return frame_guess(grid, interpolation_mask(grid.shape[2], multiplier))


def interpolate_video(interpolator: LoadedModel, video: torch.Tensor, cond: dict, uncond: dict | None = None, *,
                      multiplier: int = 2, mode: str = "interpolate", extra_frames: int | None = None,
                      fps: float = 8.0, seed: int = 0, steps: int = 20, cfg: float = 1.0, sampler: str = "ddim",
                      window: int = 17, blend_init: float = 0.3, callback=None) -> torch.Tensor:
    """↑F. interpolate: N frames -> (N-1)*m+1, input frames kept at every m-th position, in windows of
    at most `window` frames that share their end frames. With blend_init in (0, 1), sampling starts
    from the linear blend of the known frames noised to that strength (SDEdit-style) instead of pure
    noise: the model refines the blend rather than inventing the in-between frames; 1 = pure noise. extrapolate: continue the clip by
    `extra_frames` (default (N-1)*m+1-N, at least 1) new frames, window by window, each window
    conditioned on the last frames generated so far. Returns [B, 3, T, H, W].

    A regression ↑F checkpoint (is_regression) interpolates in one deterministic pass per window (seed,
    steps, sampler, cfg and blend_init do not apply) and cannot extrapolate."""
    check_positive_int("multiplier", multiplier, 1, 16)
    check_positive_int("window", window, 2, MAX_FRAMES)
    check_number("fps", fps, 0.0, 240.0, lo_open=True)
    _check_video("video", video)
    b, c, n, h, w = video.shape
    if mode == "interpolate":
        if n < 2:
            raise ValueError(f"frame interpolation needs at least 2 input frames, got {n}")
        if multiplier == 1:
            return video
        per_window = max(2, (window - 1) // multiplier + 1)
        pieces = []
        start = 0
        step_cb = callback
        while start < n - 1:
            known_idx = list(range(start, min(start + per_window, n)))
            t = (len(known_idx) - 1) * multiplier + 1
            grid = video.new_zeros(b, c, t, h, w)
            grid[:, :, ::multiplier] = video[:, :, known_idx]
            mask = interpolation_mask(t, multiplier)
            init, denoise = None, 1.0
            if 0 < blend_init < 1 and not is_regression(interpolator):
                init, denoise = linear_blend_frames(grid, multiplier), blend_init
            out = generate_video(interpolator, cond, uncond, frames=t, height=h, width=w, fps=fps * multiplier,
                                 seed=seed + start, steps=steps, cfg=cfg, sampler=sampler, known=grid,
                                 known_mask=mask, init=init, denoise=denoise, callback=step_cb)
            out[:, :, ::multiplier] = video[:, :, known_idx].to(out)
            pieces.append(out if not pieces else out[:, :, 1:])
            start = known_idx[-1]
        return torch.cat(pieces, dim=2)
    if mode != "extrapolate":
        raise ValueError(f"mode must be 'interpolate' or 'extrapolate', got {mode!r}")
    if is_regression(interpolator):
        raise ValueError(f"{interpolator.path} is a regression ↑F checkpoint (one-pass interpolation): it cannot "
                         "extrapolate; use the diffusion ↑F (interpolator.safetensors) to animate an image")
    total_new = extra_frames if extra_frames is not None else max(1, (n - 1) * multiplier + 1 - n)
    check_positive_int("extra_frames", total_new, 1, MAX_FRAMES)
    result = video
    made = 0
    while made < total_new:
        ctx = min(result.shape[2], max(1, window // 2))
        new = min(window - ctx, total_new - made)
        t = ctx + new
        grid = video.new_zeros(b, c, t, h, w)
        grid[:, :, :ctx] = result[:, :, -ctx:]
        out = generate_video(interpolator, cond, uncond, frames=t, height=h, width=w, fps=fps, seed=seed + made,
                             steps=steps, cfg=cfg, sampler=sampler, known=grid,
                             known_mask=extrapolation_mask(t, ctx), callback=callback)
        result = torch.cat([result, out[:, :, ctx:].to(result)], dim=2)
        made += new
    return result


def upscale_video(sr: LoadedModel, video: torch.Tensor, *, seed: int = 0, steps: int = 10, sampler: str = "ddim",
                  temporal: bool = True, shared_noise: bool = False, frame_chunk: int = 32,
                  callback=None) -> torch.Tensor:
    """x2 super-resolution conditioned on the bilinearly upsampled input [B, 3, F, H, W] -> [B, 3, F, 2H, 2W].

    SR^t_l: temporal=True (spatiotemporal model; frames in chunks of `frame_chunk` overlapping by 2).
    SR_h: temporal=False, shared_noise=True: each frame alone, all with the same noise."""
    check_positive_int("frame_chunk", frame_chunk, 1, MAX_FRAMES)
    check_positive_int("steps", steps, 1, 1000)
    _check_video("video", video)
    b, c, f, h, w = video.shape
    if c != sr.config.extra_in_channels:
        raise ValueError(f"video has {c} channels; {sr.path} upscales {sr.config.extra_in_channels}-channel videos")
    device, dtype = model_device_dtype(sr.module)
    check_fits(f"{sr.path}", sr.config, b, min(f, frame_chunk), 2 * h, 2 * w, device, dtype)
    outs = []
    overlap = min(2, frame_chunk // 2) if temporal and f > frame_chunk else 0   # chunks always advance
    start = 0
    while start < f:
        end = min(f, start + frame_chunk)
        lo = video[:, :, start:end].to(device, torch.float32)
        k = end - start
        up = F.interpolate(lo.transpose(1, 2).flatten(0, 1), scale_factor=2.0, mode="bilinear",
                           align_corners=False).reshape(b, k, c, 2 * h, 2 * w).transpose(1, 2)
        shape = (b, sr.config.out_channels, k, 2 * h, 2 * w)
        out = sample_unet(sr, shape, {"extra": up}, None, seed=seed, steps=steps, cfg=1.0, sampler=sampler,
                          shared_noise=shared_noise, temporal=temporal, callback=callback)
        residual_scale = float(sr.metadata.get("mav_sr_residual_scale", 0) or 0)
        if residual_scale:   # the model diffused (high-res - upsampled) * scale
            out = up + out / residual_scale
        outs.append(out if start == 0 else out[:, :, overlap:])
        if end == f:
            break
        start = end - overlap
    return torch.cat(outs, dim=2)
