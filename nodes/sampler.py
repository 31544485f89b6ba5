"""MakeAVideo Sampler: the spatiotemporal decoder D^t, text/image-embedding conditioned video."""
from __future__ import annotations

from ..mav_core.inference.frame_masks import start_frames
from ..mav_core.inference.generate import LatentVideo, conditioning_batch, generate_latent, latent_samples, latent_video
from ..mav_core.inference.memory import activation_bytes
from ..mav_core.inference.options import MAX_FREEINIT
from ..mav_core.errors import InputError
from ..mav_core.inference import Guides, SamplingOptions, VideoShape, WindowOptions, frames_to_video, generate_video
from . import host
from .control import control_models, core_controls
from .prompt_schedule import scheduled_conditioning
from .common import (CATEGORY, DECODER, SAMPLERS, SEED, StepProgress, conditioning_dict, frames_out, inputs_named,
                     require_frames, require_model, widget_problem)

NOISE_TYPES = ["independent", "shared", "correlated"]   # a combo: the host takes a list
NOISE_SHARE = {"independent": 0.0, "shared": 1.0}   # correlated: the noise_share input
LATENT_SCALE = 8   # latent families (UNet3D / ModelScope): pixel size / 8, as the host's Empty Latent Image
SD_VAE_SCALING = 0.18215   # the SD VAE's latent scaling (ModelScope, Zeroscope, SD 1.x/2.x): the host's
                           # LATENT is unscaled (its KSampler divides by it before VAE Decode)


class Sampler:
    CATEGORY = CATEGORY
    FUNCTION = "sample"
    RETURN_TYPES = ("IMAGE", "FLOAT", "LATENT")
    RETURN_NAMES = ("frames", "fps", "latent")
    DESCRIPTION = ("Spatiotemporal sampler (D^t). Pixel-space decoders fill `frames` (IMAGE [F, H, W, 3]); "
                   "latent-space decoders (UNet3D / ModelScope) fill `latent` as a batch of F frame latents "
                   "[F, 4, H/8, W/8] for the host's VAE Decode. With init_frames (pixel decoders) or latent "
                   "(latent decoders: VAE Encode of frames, this node's latent, or either through Upscale Latent), "
                   "frames/width/height come from it and denoise < 1 keeps part of it (video variation / "
                   "video-to-video; 0 returns it unchanged, 1 is text-to-video). context_window > 0 samples long "
                   "videos in overlapping sliding windows (memory of one window), with controls and prompt travel "
                   "sliced per window. start_images animates an image: the video starts with it and D^t continues it "
                   "(condition on it with Image Encode). loop makes a closed loop (the last frame flows into the first). noise: "
                   "independent, shared or correlated start noise between frames; freeinit_iterations re-samples "
                   "from the result's low frequencies (steadier motion, that many times the sampling time).")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "decoder": (DECODER,), "positive": ("CONDITIONING",), "negative": ("CONDITIONING",),
                "seed": SEED,
                "steps": ("INT", {"default": 25, "min": 1, "max": 1000}),
                "cfg": ("FLOAT", {"default": 4.0, "min": 0.0, "max": 30.0, "step": 0.1}),
                "sampler_name": (SAMPLERS, {"default": "ddim"}),
                "frames": ("INT", {"default": 16, "min": 1, "max": 1024}),
                "fps": ("FLOAT", {"default": 4.0, "min": 0.1, "max": 240.0, "step": 0.1}),
                "width": ("INT", {"default": 32, "min": 8, "max": 4096, "step": 4}),
                "height": ("INT", {"default": 32, "min": 8, "max": 4096, "step": 4}),
                "denoise": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01, "tooltip":
                            "with init_frames / latent: how much of it is re-sampled (0 = returned unchanged, "
                            "1 = ignored: text-to-video of the same seed)"}),
            },
            "optional": {
                "init_frames": ("IMAGE", {"tooltip": "frames to vary (video variation, pixel decoders); sets "
                                "frames, width, height"}),
                "start_images": ("IMAGE", {"tooltip": "image animation: the video starts with these frames (one "
                                 "image, or a few), kept exactly, and the decoder continues them; sets width and "
                                 "height. Condition it on the image with Image Encode (prompt_from_image)"}),
                "latent": ("LATENT", {"tooltip": "latent decoders: a video latent to re-sample (video-to-video), "
                           "[frames, 4, h, w] as VAE Encode gives or [1, 4, frames, h, w]; sets frames, width, "
                           "height (x8)"}),
                "context_window": ("INT", {"default": 0, "min": 0, "max": 1024, "tooltip":
                                   "sliding temporal windows for long videos: denoise this many frames at a time "
                                   "(0 = the whole clip at once); memory stays that of one window"}),
                "context_overlap": ("INT", {"default": 4, "min": 0, "max": 1023, "tooltip":
                                    "frames shared by neighbouring windows (blended); less than context_window"}),
                "loop": ("BOOLEAN", {"default": False, "tooltip":
                         "closed loop: the windows wrap around the clip's end, so the last frame flows into the "
                         "first (with context_window 0, the whole clip is one window rotated every step)"}),
                "noise": (NOISE_TYPES, {"default": "independent", "tooltip":
                          "start noise between frames: independent (most motion), shared (the same noise in "
                          "every frame: least motion), correlated (a mix weighted by noise_share)"}),
                "noise_share": ("FLOAT", {"default": 0.5, "min": 0.0, "max": 1.0, "step": 0.05, "tooltip":
                                "correlated noise only: the shared part's weight (0 = independent, 1 = shared)"}),
                "freeinit_iterations": ("INT", {"default": 0, "min": 0, "max": MAX_FREEINIT, "tooltip":
                                        "FreeInit: sample again this many times, each from the previous result's "
                                        "low frequencies plus fresh high-frequency noise (steadier motion; "
                                        "each iteration costs one more full sampling)"}),
            },
        }

    @classmethod
    def VALIDATE_INPUTS(cls, cfg, width, height):
        """Refused before the run (HTTP 400): NaN/inf cfg and sizes off the widget's step, which the
        host's own min/max checks let through."""
        spec = cls.INPUT_TYPES()["required"]
        for name, value in (("cfg", cfg), ("width", width), ("height", height)):
            problem = widget_problem(name, value, spec[name][1])
            if problem:
                return problem
        return True

    def sample(self, decoder, positive, negative, seed, steps, cfg, sampler_name, frames, fps, width, height,
               denoise, init_frames=None, context_window=0, context_overlap=4, loop=False, noise="independent",
               noise_share=0.5, freeinit_iterations=0, latent=None, start_images=None):
        model = require_model(decoder, "decoder", ("decoder",))
        latent_model = model.config.in_channels == 4
        cond = conditioning_dict(positive, "positive", model)
        uncond = conditioning_dict(negative, "negative", model, negative_of=cond)
        init = source = None
        if init_frames is not None:
            if latent is not None:
                raise ValueError("latent: init_frames are connected too; connect one video to start from")
            if latent_model:
                raise ValueError("init_frames: video variation from frames needs a pixel-space decoder; "
                                 f"{model.path} samples latents: VAE Encode the frames into `latent` instead")
            init = frames_to_video(require_frames(init_frames, "init_frames"))
            frames, height, width = init.shape[2:]
        if latent is not None:
            if not isinstance(latent, dict) or "samples" not in latent:
                raise ValueError(f"latent: expected a LATENT (a dict with 'samples'), got {type(latent).__name__}")
            source = LatentVideo(latent["samples"], SD_VAE_SCALING, float(fps))
            with inputs_named():
                frames, height, width = latent_video(model, source, conditioning_batch(cond)).shape[2:]
            height, width = height * LATENT_SCALE, width * LATENT_SCALE
        known = None
        if start_images is not None:
            if latent_model:
                raise ValueError("start_images: image animation needs a pixel-space decoder; "
                                 f"{model.path} samples latents")
            known = frames_to_video(require_frames(start_images, "start_images"))
            if init is not None and tuple(known.shape[-2:]) != tuple(init.shape[-2:]):
                raise ValueError(f"start_images: {known.shape[-1]}x{known.shape[-2]} frames, but init_frames are "
                                 f"{init.shape[-1]}x{init.shape[-2]}; both must have one size")
            if known.shape[2] >= frames:
                raise ValueError(f"start_images: {known.shape[2]} frames given and frames={frames}; ask for more "
                                 "frames than the start images to animate them")
            height, width = known.shape[-2:]
        if latent_model:
            for name, v in (("width", width), ("height", height)):
                if v % LATENT_SCALE:
                    raise ValueError(f"{name}: {v} must be a multiple of {LATENT_SCALE} for a latent decoder")
            height, width = height // LATENT_SCALE, width // LATENT_SCALE
        shape = VideoShape(frames, height, width, fps)
        if noise not in NOISE_TYPES:
            raise InputError("noise", f"must be one of {NOISE_TYPES}, got {noise!r}")
        options = SamplingOptions(seed=seed, steps=steps, cfg=cfg, sampler=sampler_name, denoise=denoise,
                                  noise_share=NOISE_SHARE.get(noise, noise_share),
                                  freeinit_iterations=freeinit_iterations)
        if loop and frames < 2:
            raise InputError("loop", f"needs a clip of at least 2 frames to close, got frames={frames}")
        windows = None
        if context_window or loop:   # loop without a window: the whole clip is one window, rotated every step
            windows = WindowOptions(context_window or frames, context_overlap if context_window else None,
                                    loop=bool(loop))
        given = "init_frames" if init is not None else "latent" if source is not None else None
        names = {"sampler": "sampler_name", "cond": "positive", "uncond": "negative", "known": "start_images",
                 "init": given or "init_frames", "controls": "positive",
                 **({"height": given, "width": given} if given else {})}
        with inputs_named(**names):
            shape.validate(model.config.size_multiple)
            options.validate()
            if windows is not None:
                windows.validate()
            if denoise < 1.0 and given is None:
                raise InputError("denoise", f"{denoise} < 1 needs {'latent' if latent_model else 'init_frames'} "
                                            "to start from")
        cond, uncond = scheduled_conditioning(positive, model, frames, cond, uncond)
        start, start_mask = start_frames(known, frames) if known is not None else (None, None)
        guides = Guides(init=init, controls=tuple(core_controls(positive, model, frames, height, width)),
                        known=start, known_mask=start_mask)
        progress = StepProgress(steps * (1 + freeinit_iterations))
        need = activation_bytes(model.config, 2 if cfg != 1.0 else 1, min(frames, context_window or frames), height,
                                width, next(model.module.parameters()).element_size())
        if source is not None and denoise == 0.0:   # nothing to sample: the latent as it is, the model not moved
            with inputs_named(**names):
                samples = generate_latent(model, cond, uncond, source, options, guides, windows, progress)
            return (None, float(fps), {"samples": samples.to(host.intermediate_device())})
        with inputs_named(**names), host.models_on_device(model, *control_models(positive), memory_required=need):
            if source is not None:
                samples = generate_latent(model, cond, uncond, source, options, guides, windows, progress)
                return (None, float(fps), {"samples": samples.to(host.intermediate_device()).float()})
            video = generate_video(model, cond, uncond, shape, options, guides, windows, progress)
        if latent_model:
            samples = latent_samples(video.to(host.intermediate_device()).float(), SD_VAE_SCALING)
            return (None, float(fps), {"samples": samples})
        return (frames_out(video), float(fps), None)


NODE_CLASS_MAPPINGS = {"MakeAVideoSampler": Sampler}
NODE_DISPLAY_NAME_MAPPINGS = {"MakeAVideoSampler": "MakeAVideo Spatiotemporal Sampler"}
