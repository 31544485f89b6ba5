"""MakeAVideo Upscaler: x2 super-resolution; SR^t_l (sr_video) spatiotemporal, SR_h (sr_frame) per frame
with the same noise for every frame. The checkpoint's stage picks the mode."""
from __future__ import annotations

from ..mav_core.inference import SamplingOptions, UpscaleOptions, frames_to_video, upscale_video
from ..mav_core.inference.pipeline import SR_VIDEO_CHUNK
from . import host
from .common import CATEGORY, SAMPLERS, SEED, UPSCALER, StepProgress, frames_out, inputs_named, require_frames, require_model


MIN_CHUNK = 3   # sr_video chunks share frames with their neighbours (2 from frame_chunk 4), so they hold more than 2


class Upscaler:
    CATEGORY = CATEGORY
    FUNCTION = "run"
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("frames",)
    DESCRIPTION = "Doubles width and height of every frame with an sr_video (temporal) or sr_frame (per-frame) model."

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "upscaler": (UPSCALER,), "images": ("IMAGE",), "seed": SEED,
                "steps": ("INT", {"default": 10, "min": 1, "max": 1000}),
                "frame_chunk": ("INT", {"default": SR_VIDEO_CHUNK, "min": MIN_CHUNK, "max": 1024,
                                        "tooltip": "frames per model call (lower = less memory); sr_video "
                                                   "chunks share frames with their neighbours (2 or more from 4 "
                                                   "frames), cross-faded from one chunk to the next"}),
            },
            "optional": {"sampler_name": (SAMPLERS, {"default": "ddim"})},
        }

    def run(self, upscaler, images, seed, steps, frame_chunk, sampler_name="ddim"):
        model = require_model(upscaler, "upscaler", ("sr_video", "sr_frame"))
        frames = require_frames(images, "images")
        down = model.config.size_multiple
        h, w = frames.shape[1:3]
        if (2 * h) % down or (2 * w) % down:
            raise ValueError(f"images: size {w}x{h} does not fit {model.path} (2x size must be a multiple of {down})")
        if not isinstance(frame_chunk, int) or frame_chunk < MIN_CHUNK:
            raise ValueError(f"frame_chunk: must be an integer >= {MIN_CHUNK}, got {frame_chunk!r}")
        temporal = model.stage == "sr_video"
        progress = StepProgress(steps)
        options = SamplingOptions(seed=seed, steps=steps, sampler=sampler_name, noise_share=0.0 if temporal else 1.0)
        with inputs_named(sampler="sampler_name", video="images"), host.models_on_device(model):
            video = upscale_video(model, frames_to_video(frames), options, UpscaleOptions(temporal, frame_chunk),
                                  callback=progress)
        return (frames_out(video),)


NODE_CLASS_MAPPINGS = {"MakeAVideoUpscaler": Upscaler}
NODE_DISPLAY_NAME_MAPPINGS = {"MakeAVideoUpscaler": "MakeAVideo Upscaler"}
