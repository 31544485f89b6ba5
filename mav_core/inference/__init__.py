"""Inference: one function per stage and the whole chain.

  text.encode_prompt / text.run_prior          prompt -> tokens + pooled; pooled -> image embedding (P)
  generate.generate_video                      D^t (and ↑F's known-frame sampling)
  interpolate.interpolate_video                ↑F: interpolation and extrapolation
  upscale.upscale_video                        SR^t_l and SR_h
  pipeline.MakeAVideo                          the chain, for the CLI and the evaluation
Around them: options (what a stage is asked to do), sampling (the shared sampling path), frames
(host <-> model layouts), frame_masks, prompt_travel, windows, placement, memory, precision.
"""
from .frames import frames_to_video, video_to_frames
from .generate import generate_video
from .interpolate import interpolate_video, linear_blend_frames
from .options import (Guides, InterpolationOptions, SamplingOptions, UpscaleOptions, VideoShape, WindowOptions)
from .sampling import estimate_unet, is_regression, sample_unet
from .text import encode_prompt, prompt_warnings, run_prior
from .upscale import upscale_video

__all__ = [
    "frames_to_video", "video_to_frames", "generate_video", "interpolate_video", "linear_blend_frames",
    "Guides", "InterpolationOptions", "SamplingOptions", "UpscaleOptions", "VideoShape", "WindowOptions",
    "estimate_unet", "is_regression", "sample_unet", "encode_prompt", "prompt_warnings", "run_prior", "upscale_video",
]
