"""MakeAVideo Frame Interpolator (up-F): more frames between (interpolate) or after (extrapolate) the input."""
from __future__ import annotations

from ..mav_core.inference import (InterpolationOptions, SamplingOptions, frames_to_video, interpolate_video,
                                  is_regression)
from ..mav_core.inference.interpolate import is_flow_interpolator
from . import host
from .common import (CATEGORY, INTERPOLATOR, SAMPLERS, SEED, StepProgress, conditioning_dict, frames_out, inputs_named,
                     require_frames, require_model)

MODES = ["interpolate", "extrapolate"]
ERRORS = {"sampler": "sampler_name", "video": "images", "height": "images", "width": "images", "cond": "positive",
          "known": "images"}


class FrameInterpolator:
    CATEGORY = CATEGORY
    FUNCTION = "run"
    RETURN_TYPES = ("IMAGE", "FLOAT")
    RETURN_NAMES = ("frames", "fps")
    DESCRIPTION = ("interpolate: N frames -> (N-1)*multiplier+1, fps x multiplier (two images -> an in-between "
                   "clip). extrapolate: continue the clip by extra_frames new frames (0 = (N-1)*multiplier+1-N, "
                   "at least 1; one image -> an animation), fps unchanged. A regression ↑F checkpoint "
                   "(interpolator_regression) interpolates in one deterministic pass (seed, steps and sampler unused). "
                   "The motion-compensated ↑F (flow_interpolator: optical flow both ways, both frames warped to "
                   "each in-between time and fused by a small network) interpolates real footage at any size "
                   ">= 32 px, one pair of input frames at a time (progress and Cancel per pair).")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "interpolator": (INTERPOLATOR,), "images": ("IMAGE",),
                "fps": ("FLOAT", {"default": 4.0, "min": 0.1, "max": 240.0, "step": 0.1}),
                "multiplier": ("INT", {"default": 2, "min": 1, "max": 16}),
                "mode": (MODES, {"default": "interpolate"}),
                "seed": SEED,
                "steps": ("INT", {"default": 15, "min": 1, "max": 1000}),
            },
            "optional": {
                "positive": ("CONDITIONING",),
                "extra_frames": ("INT", {"default": 0, "min": 0, "max": 1024}),
                "sampler_name": (SAMPLERS, {"default": "ddim"}),
            },
        }

    def run(self, interpolator, images, fps, multiplier, mode, seed, steps, positive=None, extra_frames=0,
            sampler_name="ddim"):
        model = require_model(interpolator, "interpolator", ("interpolator",))
        frames = require_frames(images, "images")
        if mode == "interpolate" and frames.shape[0] < 2:
            raise ValueError(f"images: interpolation needs at least 2 frames, got {frames.shape[0]} "
                             "(use mode 'extrapolate' to animate a single image)")
        conditioned = positive is not None and not is_flow_interpolator(model)   # the motion-compensated ↑F takes none
        cond = conditioning_dict(positive, "positive", model) if conditioned else {}
        if is_flow_interpolator(model):   # one step per pair of input frames (preview: that pair's frames)
            progress = StepProgress(max(1, frames.shape[0] - 1))
        else:                             # regression ↑F: one pass per window
            progress = StepProgress(1 if is_regression(model) else steps)
        how = InterpolationOptions(multiplier, mode, extra_frames or None)
        options = SamplingOptions(seed=seed, steps=steps, sampler=sampler_name)
        with inputs_named(**ERRORS), host.models_on_device(model):
            video = interpolate_video(model, frames_to_video(frames), cond, None, fps, how, options, progress)
        out_fps = fps * multiplier if mode == "interpolate" else fps
        return (frames_out(video), float(out_fps))


NODE_CLASS_MAPPINGS = {"MakeAVideoFrameInterpolator": FrameInterpolator}
NODE_DISPLAY_NAME_MAPPINGS = {"MakeAVideoFrameInterpolator": "MakeAVideo Frame Interpolator"}
