"""The whole Make-A-Video chain as one object: text -> prior -> D^t -> ↑F -> SR^t_l -> SR_h.

    mav = MakeAVideo.load()                     # the shipped MAV-Tiny weights
    result = mav("a red circle on a dark blue background", seed=1)
    write_video(result.frames, "out.mp4", result.fps)
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..diffusion import SAMPLERS
from ..errors import InputError, check_choice, check_int, check_number
from ..io.checkpoints import LoadedModel
from ..io.loader import load_model
from ..models import family
from ..models.flow_fusion import FLOW_INTERPOLATOR_FILE
from .frames import video_to_frames
from .generate import generate_video
from .interpolate import interpolate_video, is_flow_interpolator
from .options import (MAX_CFG, MAX_FPS, MAX_FRAMES, MAX_MULTIPLIER, MAX_SEED, MAX_STEPS, InterpolationOptions,
                      SamplingOptions, UpscaleOptions, VideoShape, WindowOptions)
from .sampling import is_regression
from .text import encode_prompt, run_prior
from .upscale import upscale_video


INTERPOLATORS = ("flow", "diffusion", "regression")   # the first: best on held-out real clips (docs/interpolation.md)
INTERPOLATOR_FILES = {"flow": FLOW_INTERPOLATOR_FILE, "diffusion": family.STAGE_FILES["interpolator"],
                      "regression": family.REGRESSION_INTERPOLATOR_FILE}
SR_VIDEO_CHUNK = 16   # SR^t_l frames per model call: the Upscaler node's default, so both make the same video


def between_stages(video: torch.Tensor) -> torch.Tensor:
    """A stage's output as the next stage gets it in the node chain, where stages pass IMAGE frames
    (0..1): clamped to -1..1 with the same float arithmetic as video_to_frames -> frames_to_video, so
    MakeAVideo and the nodes make the same video from the same seed. In place (the stage's own output)."""
    return video.clamp_(-1, 1).add_(1).div_(2).mul_(2).sub_(1)


@dataclass
class ChainSettings:
    frames: int = 16
    fps: float = 4.0
    seed: int = 0
    negative: str = ""
    prior_steps: int = 20
    prior_cfg: float = 1.0
    steps: int = 25
    cfg: float = 4.0              # decoder guidance (held-out alignment 0.97 at 4 vs 0.90 at 2)
    sampler: str = "ddim"
    multiplier: int = 2          # ↑F: (frames - 1) * multiplier + 1 frames; 1 skips the stage
    interp_steps: int = 15
    sr_steps: int = 10
    upscale: int = 2             # 0: none, 1: SR^t_l only, 2: SR^t_l and SR_h
    loop: bool = False           # closed loop: the decoder's windows wrap around, the last frame flows into the first
    noise_share: float = 0.0     # decoder start noise shared between frames (0: independent, 1: the same noise)
    freeinit_iterations: int = 0  # FreeInit passes of the decoder (each samples the clip once more)

    def decoder_options(self) -> SamplingOptions:
        """How D^t samples: seed, steps, guidance, sampler, start noise and FreeInit."""
        return SamplingOptions(seed=self.seed, steps=self.steps, cfg=self.cfg, sampler=self.sampler,
                               noise_share=self.noise_share, freeinit_iterations=self.freeinit_iterations)

    def decoder_windows(self) -> WindowOptions | None:
        """A closed loop samples the clip as one window rotated every step; otherwise no windows."""
        return WindowOptions(self.frames, None, loop=True) if self.loop else None

    def validate(self) -> "ChainSettings":
        """Raise an InputError naming the first setting out of range (before any model runs)."""
        check_int("frames", self.frames, 1, MAX_FRAMES)
        check_number("fps", self.fps, 0.0, MAX_FPS, lo_open=True)
        check_int("seed", self.seed, 0, MAX_SEED)
        if not isinstance(self.negative, str):
            raise InputError("negative", f"must be a string, got {type(self.negative).__name__}")
        for name in ("prior_steps", "steps", "interp_steps", "sr_steps"):
            check_int(name, getattr(self, name), 1, MAX_STEPS)
        check_number("prior_cfg", self.prior_cfg, 0.0, MAX_CFG)
        check_number("cfg", self.cfg, 0.0, MAX_CFG)
        check_choice("sampler", self.sampler, SAMPLERS)
        check_int("multiplier", self.multiplier, 1, MAX_MULTIPLIER)
        check_int("upscale", self.upscale, 0, 2)
        if not isinstance(self.loop, bool):
            raise InputError("loop", f"must be true or false, got {self.loop!r}")
        if self.loop and self.frames < 2:
            raise InputError("loop", f"needs a clip of at least 2 frames to close, got frames={self.frames}")
        self.decoder_options().validate()
        if self.fps * self.multiplier > MAX_FPS:
            raise InputError("multiplier", f"{self.multiplier} at fps {self.fps} exceeds {MAX_FPS:g} frames per "
                                           f"second (fps {self.fps} x multiplier {self.multiplier})")
        return self


@dataclass
class ChainResult:
    frames: torch.Tensor         # [F, H, W, 3] 0..1
    fps: float
    timings: dict = field(default_factory=dict)


@dataclass
class MakeAVideo:
    text: LoadedModel
    prior: LoadedModel
    decoder: LoadedModel
    interpolator: LoadedModel | None = None
    sr_video: LoadedModel | None = None
    sr_frame: LoadedModel | None = None

    @classmethod
    def load(cls, folder: str | Path | None = None, device="cpu", dtype=None,
             interpolator: str = INTERPOLATORS[0]) -> "MakeAVideo":
        """interpolator: 'flow' (the motion-compensated ↑F, flow_interpolator.safetensors; the diffusion ↑F
        where the folder has no such file), 'diffusion' (the paper's ↑F, interpolator.safetensors, started
        from the motion-compensated estimate; optional: no ↑F stage without it; needed for extrapolation /
        image animation) or 'regression' (one-pass ↑F, interpolator_regression.safetensors, required once
        asked for).
        dtype: the diffusion UNets' dtype (D^t, ↑F, SR; None: float32, or a half-precision file's own dtype
        on CUDA); the text encoder and the prior stay float32 (small, and their outputs condition the rest)."""
        if interpolator not in INTERPOLATORS:
            raise ValueError(f"interpolator must be one of {INTERPOLATORS}, got {interpolator!r}")
        folder = Path(folder) if folder else family.WEIGHTS_DIR
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder}: no such weights folder")

        def get(stage, required=True, name=None):
            path = folder / (name or family.STAGE_FILES[stage])
            if not path.exists():
                if required:
                    raise FileNotFoundError(f"{path}: the {stage!r} checkpoint is missing from {folder}")
                return None
            unet = stage in ("decoder", "interpolator", "sr_video", "sr_frame")
            return load_model(path, device=device, dtype=dtype if unet else None, expect_stage=stage)

        interp = None
        if interpolator == "flow":
            interp = get("interpolator", False, INTERPOLATOR_FILES["flow"])
        if interp is None:
            interp = get("interpolator", interpolator == "regression", INTERPOLATOR_FILES[
                "regression" if interpolator == "regression" else "diffusion"])
        return cls(get("text"), get("prior"), get("decoder"), interp, get("sr_video", False), get("sr_frame", False))

    def untrained(self) -> list[str]:
        return [m.path for m in self.models() if m.metadata.get("mav_untrained") == "1"]

    def models(self) -> list[LoadedModel]:
        return [m for m in (self.text, self.prior, self.decoder, self.interpolator, self.sr_video, self.sr_frame) if m]

    def conditioning(self, prompt: str, negative: str, seed: int, steps: int, cfg: float, callback=None):
        tokens, pooled = encode_prompt(self.text, [prompt])
        embed = run_prior(self.prior, tokens, pooled, SamplingOptions(seed=seed, steps=steps, cfg=cfg), callback=callback)
        neg_tokens, _ = encode_prompt(self.text, [negative])
        cond = {"context": tokens, "image_embed": embed}
        uncond = {"context": neg_tokens, "image_embed": torch.zeros_like(embed)}
        return cond, uncond

    @torch.no_grad()
    def __call__(self, prompt: str, settings: ChainSettings | None = None, progress=None, **overrides) -> ChainResult:
        """progress(stage: str, step: int, total: int) is called after every sampling step."""
        s = settings or ChainSettings()
        for k, v in overrides.items():
            if not hasattr(s, k):
                raise ValueError(f"unknown setting {k!r}")
            setattr(s, k, v)
        s.validate()
        if not isinstance(prompt, str):
            raise ValueError(f"prompt must be a string, got {type(prompt).__name__}")
        timings = {}

        def cb(stage, total):   # sampling callbacks count "i", the motion-compensated ↑F's pairs "step"
            return (lambda info: progress(stage, info.get("i", info.get("step", 0)) + 1, total)) if progress else None

        t0 = time.perf_counter()
        cond, uncond = self.conditioning(prompt, s.negative, s.seed, s.prior_steps, s.prior_cfg, cb("prior", s.prior_steps))
        timings["text+prior"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        size = family.BASE_SIZE
        video = generate_video(self.decoder, cond, uncond, VideoShape(s.frames, size, size, s.fps),
                               s.decoder_options(), windows=s.decoder_windows(),
                               callback=cb("decoder", s.steps))
        video = between_stages(video)
        timings["decoder"] = time.perf_counter() - t0
        fps = s.fps
        if self.interpolator is not None and s.multiplier > 1:
            t0 = time.perf_counter()
            total = (s.frames - 1 if is_flow_interpolator(self.interpolator)
                     else 1 if is_regression(self.interpolator) else s.interp_steps)
            video = interpolate_video(self.interpolator, video, cond, None, s.fps, InterpolationOptions(s.multiplier),
                                      SamplingOptions(seed=s.seed, steps=s.interp_steps),
                                      callback=cb("interpolator", total))
            video = between_stages(video)
            fps = s.fps * s.multiplier
            timings["interpolator"] = time.perf_counter() - t0
        if self.sr_video is not None and s.upscale >= 1:
            t0 = time.perf_counter()
            video = upscale_video(self.sr_video, video, SamplingOptions(seed=s.seed, steps=s.sr_steps),
                                  UpscaleOptions(temporal=True, frame_chunk=SR_VIDEO_CHUNK),
                                  callback=cb("sr_video", s.sr_steps))
            video = between_stages(video)
            timings["sr_video"] = time.perf_counter() - t0
        if self.sr_frame is not None and s.upscale >= 2:
            t0 = time.perf_counter()
            video = upscale_video(self.sr_frame, video, SamplingOptions(seed=s.seed, steps=s.sr_steps, noise_share=1.0),
                                  UpscaleOptions(temporal=False, frame_chunk=16), callback=cb("sr_frame", s.sr_steps))
            timings["sr_frame"] = time.perf_counter() - t0
        return ChainResult(video_to_frames(video), fps, timings)
