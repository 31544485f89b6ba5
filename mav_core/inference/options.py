"""What a stage is asked to do, as small frozen dataclasses built once (by a node or the CLI) and passed
down: each validates itself and raises InputError naming the field at fault.

  SamplingOptions       seed, steps, cfg, sampler, sigma schedule, denoise, precision, noise share, FreeInit
  WindowOptions         sliding temporal windows for long videos (size, overlap), closed loops
  VideoShape            frames, height, width, fps of a video to generate
  Guides                frames to start from (init), frames to keep (known + mask), control hints
  InterpolationOptions  ↑F: multiplier, interpolate / extrapolate, window, blend start
  UpscaleOptions        SR: spatiotemporal or per frame, frames per chunk
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from ..diffusion import SAMPLERS, SIGMA_SCHEDULES
from ..errors import InputError, check_choice, check_int, check_number
from .precision import PRECISIONS

MAX_FRAMES = 1024
MAX_SIZE = 4096
MAX_STEPS = 1000
MAX_SEED = 2 ** 64 - 1       # the host's seed widget range; noise generators take any of these
MAX_CFG = 100.0
MAX_FPS = 240.0
MAX_MULTIPLIER = 16
MAX_FREEINIT = 10            # FreeInit re-initialisations (each one samples the clip once more)


class _Options:
    def replace(self, **changes):
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class SamplingOptions(_Options):
    seed: int = 0
    steps: int = 25
    cfg: float = 1.0
    sampler: str = "ddim"
    schedule: str = "trailing"      # sigma spacing: see diffusion.sampling_sigmas
    denoise: float = 1.0            # < 1: start from init frames noised to this strength (needs Guides.init);
                                    # 0: the init as it is, 1: noise alone (the init is not used)
    precision: str = "fp32"         # 'fp32', 'bf16' (autocast) or 'auto' (bf16 where it is fast)
    noise_share: float = 0.0        # correlation of the starting noise between frames (1: the same noise)
    nan_check_every: int | None = None   # steps between NaN checks (None: 1 on the CPU, 8 on GPUs; 0: end only)
    freeinit_iterations: int = 0    # FreeInit: sample again from the result's low frequencies this many times
    freeinit_cutoff: float = 0.25   # FreeInit's Gaussian low-pass: std as a share of the highest frequency

    def validate(self) -> "SamplingOptions":
        check_int("seed", self.seed, 0, MAX_SEED)
        check_int("steps", self.steps, 1, MAX_STEPS)
        check_number("cfg", self.cfg, 0.0, MAX_CFG)
        check_choice("sampler", self.sampler, SAMPLERS)
        check_choice("schedule", self.schedule, SIGMA_SCHEDULES)
        check_number("denoise", self.denoise, 0.0, 1.0)
        check_choice("precision", self.precision, PRECISIONS)
        check_number("noise_share", self.noise_share, 0.0, 1.0)
        if self.nan_check_every is not None:
            check_int("nan_check_every", self.nan_check_every, 0)
        check_int("freeinit_iterations", self.freeinit_iterations, 0, MAX_FREEINIT)
        check_number("freeinit_cutoff", self.freeinit_cutoff, 0.0, 1.0, lo_open=True)
        return self


@dataclass(frozen=True)
class WindowOptions(_Options):
    """Denoise `size` frames at a time, neighbouring windows sharing `overlap` frames (default size // 4),
    blended; the window boundaries move every step (see windows.FrameWindows). loop: a closed loop, the
    windows wrap around the clip's end (size >= the clip's frames: the whole clip, rotated every step)."""
    size: int
    overlap: int | None = None
    loop: bool = False

    def validate(self) -> "WindowOptions":
        check_int("context_window", self.size, 2, MAX_FRAMES)
        if self.overlap is not None:
            check_int("context_overlap", self.overlap, 0, self.size - 1)
        if not isinstance(self.loop, bool):
            raise InputError("loop", f"must be true or false, got {self.loop!r}")
        return self

    @property
    def resolved_overlap(self) -> int:
        return max(1, self.size // 4) if self.overlap is None else self.overlap


@dataclass(frozen=True)
class VideoShape(_Options):
    frames: int = 16
    height: int = 32
    width: int = 32
    fps: float = 8.0

    def validate(self, size_multiple: int = 1) -> "VideoShape":
        check_int("frames", self.frames, 1, MAX_FRAMES)
        for name in ("height", "width"):
            value = check_int(name, getattr(self, name), size_multiple, MAX_SIZE)
            if value % size_multiple:
                raise InputError(name, f"{value} must be a multiple of {size_multiple} for this model")
        check_number("fps", self.fps, 0.0, MAX_FPS, lo_open=True)
        return self


@dataclass(frozen=True)
class Guides(_Options):
    """Frames and hints a sample follows. init: [B, C, F, H, W] frames to start from (with
    SamplingOptions.denoise < 1); known + known_mask: frames to keep (↑F; see frame_masks); controls:
    models.control.Control list, added to both halves of guidance."""
    init: torch.Tensor | None = None
    known: torch.Tensor | None = None
    known_mask: torch.Tensor | None = None
    controls: tuple = ()


@dataclass(frozen=True)
class InterpolationOptions(_Options):
    """↑F. interpolate: N frames -> (N-1)·multiplier + 1, in windows of at most `window` frames sharing
    their end frames; blend_init in (0, 1) starts sampling from the motion-compensated estimate (the linear
    blend below 32 px) noised to that strength (the default: chosen on the train split of the real clips,
    bench/bench_flow_diffusion_strength.py).
    extrapolate: `extra_frames` new frames after the clip (default (N-1)·multiplier + 1 - N)."""
    multiplier: int = 2
    mode: str = "interpolate"
    extra_frames: int | None = None
    window: int = 17
    blend_init: float = 0.02

    def validate(self) -> "InterpolationOptions":
        check_int("multiplier", self.multiplier, 1, MAX_MULTIPLIER)
        check_choice("mode", self.mode, ("interpolate", "extrapolate"))
        check_int("window", self.window, 2, MAX_FRAMES)
        if self.extra_frames is not None:
            check_int("extra_frames", self.extra_frames, 1, MAX_FRAMES)
        check_number("blend_init", self.blend_init, 0.0, 1.0)
        return self


@dataclass(frozen=True)
class UpscaleOptions(_Options):
    """SR^t_l: temporal=True (frames in chunks of `frame_chunk` overlapping by 2). SR_h: temporal=False,
    each frame alone (use SamplingOptions.noise_share=1 for the same noise on every frame)."""
    temporal: bool = True
    frame_chunk: int = 32

    def validate(self) -> "UpscaleOptions":
        check_int("frame_chunk", self.frame_chunk, 1, MAX_FRAMES)
        return self
