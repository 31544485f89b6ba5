"""MakeAVideo Model Bridge: a decoder (MAV_DECODER) as the host's MODEL, so the host's KSampler,
SamplerCustomAdvanced and their samplers / schedulers sample it.

The MODEL is a ModelPatcher over `MakeAVideoModel`, a host BaseModel whose `diffusion_model` is our
SpaceTimeUNet (a copy sharing the decoder's tensors, so the host's weight patches never reach the decoder our
own nodes sample; the host's LoraLoaderModelOnly finds its weights by our / diffusers names) and
whose `model_sampling` declares the checkpoint's own noise schedule and prediction (eps / v / x0) the way
our sampler uses them: the same sigma table, the same sigma -> timestep map (log-sigma interpolation,
mav_core.diffusion.denoiser), the same input scaling and start noise (noise * sigmas[0]). Given the same
start noise and sigmas, the host's samplers then compute what ours do. Conditioning: the host's cross
attention carries the text tokens; the prior's image embedding travels in CONDITIONING under
`mav_image_embed` (as our Text Encode / Prior put it; missing in a negative: zeros, as in our sampler), the
frame rate under `fps` (else the node's `fps`). LATENT: frames in the batch, [N * F, C, H, W], as the host's
SD-VAE video models (SVD) take theirs, so EmptyLatentImage (batch = frames), VAE Encode of IMAGE frames and
VAE Decode work on it directly; C = 4 at 1/8 size in the SD VAE's space (UNet3D / inflated SD decoders: latent =
model space / 0.18215, the host's SD latent format) or the pixel channels at full size (pixel decoders, scale 1).
Frames per clip F: the conditioning's `num_video_frames` if it has one, else the bridge's `frames` when its
`batch_size` is above 1, else the whole batch is one clip (SVD's rule). The host batches cond and uncond (and
several conditionings) by concatenating their [N * F] rows; the model regroups whatever it gets into clips of F
frames ([k * N * F, C, H, W] -> [k * N, C, F, H, W]) and refuses a batch that does not divide.

Memory: the host's model management owns the MODEL (listed among its loaded models while it samples; its
`/free` unloads it). Once the bridged model and its decoder are gone, the C library is asked to hand its freed
heap back to the system (glibc's malloc_trim, a moment after the last of them is collected): the weights are
many tensors of 0.1-10 MB, which glibc keeps in its heap after they are freed (its mmap threshold rises to 32 MB
as large blocks are freed), so without it the server's resident memory stays up by most of the model's size.

This module touches ComfyUI's model classes directly (the host's BaseModel / model_sampling / conds are
what a MODEL is); without ComfyUI the node is registered but says it needs the host.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools
import threading
import weakref

import torch

from ..mav_core.diffusion.denoiser import Denoiser
from ..mav_core.models.lora import shared_copy
from . import host
from .common import CATEGORY, DECODER, IMAGE_EMBED_KEY, require_model

try:
    import comfy.conds as _conds
    import comfy.latent_formats as _latent_formats
    import comfy.model_base as _model_base
    import comfy.model_patcher as _patcher
    import comfy.model_sampling as _model_sampling
    import comfy.supported_models_base as _supported
    HAS_COMFY = True
except ImportError:
    HAS_COMFY = False

SD_LATENT_SCALE = 8
DEFAULT_FPS = 4.0
TRIM_DELAY_S = 1.0   # after a finalizer: the collection that runs it frees the tensors right after


@functools.lru_cache(maxsize=None)
def _malloc_trim():
    """glibc's malloc_trim, or None (another C library, another system)."""
    try:
        return getattr(ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6"), "malloc_trim", None)
    except OSError:
        return None


_trim_pending = threading.Lock()


def _trim_heap():
    if _malloc_trim() is not None:
        _malloc_trim()(0)


def _trim_heap_soon():
    """Return freed heap pages to the system TRIM_DELAY_S from now (once per burst of finalizers). A finalizer
    runs before the object's own tensors are freed, so the trim waits for them."""
    if _malloc_trim() is None or not _trim_pending.acquire(blocking=False):
        return

    def trim():
        _trim_pending.release()
        _trim_heap()
    timer = threading.Timer(TRIM_DELAY_S, trim)
    timer.daemon = True
    timer.start()

if HAS_COMFY:
    class PixelVideoFormat(_latent_formats.LatentFormat):
        """Pixel decoders: LATENT = the model's own -1..1 frames, [N * F, 3, H, W]."""
        latent_channels = 3
        scale_factor = 1.0

    class SDVideoFormat(_latent_formats.SD15):
        """Latent decoders (UNet3D, inflated SD): frames in the SD VAE's latent space, [N * F, 4, H/8, W/8]."""

    class _MakeAVideoSampling(_model_sampling.ModelSamplingDiscrete):
        """The checkpoint's discrete schedule, with our sampler's timestep map and start noise."""

        def __init__(self, schedule):
            torch.nn.Module.__init__(self)
            self.sigma_data = 1.0
            self.num_timesteps = schedule.num_train_steps
            self.linear_start, self.linear_end, self.zsnr = schedule.beta_start, schedule.beta_end, False
            self.set_sigmas(schedule.sigmas())

        def timestep(self, sigma):
            """Fractional timestep by log-sigma interpolation, as mav_core's Denoiser feeds the network."""
            return Denoiser.sigma_to_t(self, sigma.reshape(-1)).reshape(sigma.shape)

        def noise_scaling(self, sigma, noise, latent_image, max_denoise=False):
            """x = latent + sigma * noise at every start, as our samplers begin (no sqrt(1 + sigma^2) at
            the largest sigma)."""
            sigma = _model_sampling.reshape_sigma(sigma, noise.ndim)
            return latent_image + noise * sigma

    SAMPLING_CLASSES = {
        prediction: type(f"MakeAVideoSampling{name}", (_MakeAVideoSampling, kind), {})
        for prediction, name, kind in (("eps", "EPS", _model_sampling.EPS), ("v", "V", _model_sampling.V_PREDICTION),
                                       ("x0", "X0", _model_sampling.X0))}
    MODEL_TYPES = {"eps": _model_base.ModelType.EPS, "v": _model_base.ModelType.V_PREDICTION,
                   "x0": _model_base.ModelType.EPS}

    class _Config(_supported.BASE):
        unet_config = {"disable_unet_model_creation": True}

        def __init__(self, latent_format):
            self.latent_format = latent_format
            super().__init__(dict(self.unet_config))

    class MakeAVideoModel(_model_base.BaseModel):
        """The host's model wrapper around one of our decoders' SpaceTimeUNet."""

        def __init__(self, decoder, fps: float = DEFAULT_FPS):
            cfg = decoder.config
            latent = SDVideoFormat if cfg.in_channels == 4 else PixelVideoFormat
            prediction = decoder.prediction or "eps"
            super().__init__(_Config(latent), model_type=MODEL_TYPES[prediction])
            # its own module over the decoder's tensors: the host patches (LoraLoaderModelOnly) and moves this one,
            # never the decoder our own nodes sample
            self.diffusion_model = shared_copy(decoder.module)
            self.model_sampling = SAMPLING_CLASSES[prediction](decoder.schedule)
            self.mav_fps = float(fps)
            self.mav_path = decoder.path
            self.mav_clip_frames = None   # frames per clip when the batch holds several (ModelBridge batch_size > 1)

        def get_dtype(self):
            return next(self.diffusion_model.parameters()).dtype

        def extra_conds(self, **kwargs):
            out = super().extra_conds(**kwargs)
            width = getattr(self.diffusion_model.config, "image_embed_dim", 0)
            embed = kwargs.get(IMAGE_EMBED_KEY)
            if embed is not None and width:
                out["image_embed"] = _conds.CONDRegular(embed.reshape(-1, width))
            out["fps"] = _conds.CONDRegular(torch.tensor([float(kwargs.get("fps", self.mav_fps))]))
            noise = kwargs.get("noise")
            if noise is not None:
                frames = clip_frames(tuple(noise.shape), kwargs.get("num_video_frames") or self.mav_clip_frames)
                out["num_video_frames"] = _conds.CONDConstant(frames)
            return out

        def _apply_model(self, x, t, c_concat=None, c_crossattn=None, control=None, transformer_options={}, **kwargs):
            sigma = t
            dtype = self.get_dtype()
            # num_video_frames: set by extra_conds for every sampling run; a caller without it: one clip per chunk
            chunks = max(1, len(transformer_options.get("cond_or_uncond", ())))
            frames = clip_frames(tuple(x.shape), kwargs.get("num_video_frames") or self.mav_clip_frames
                                 or x.shape[0] // chunks)
            xc = self.model_sampling.calculate_input(sigma, x)
            if c_concat is not None:
                xc = torch.cat([xc, c_concat.to(xc.device, xc.dtype)], dim=1)
            xc = as_clips(xc, frames)   # [k * N * F, C, h, w] -> [k * N, C, F, h, w]
            cond = {"context": None if c_crossattn is None else per_clip(c_crossattn, frames).to(xc.device, dtype),
                    "fps": None if kwargs.get("fps") is None else per_clip(kwargs["fps"], frames)}
            width = getattr(self.diffusion_model.config, "image_embed_dim", 0)
            embed = kwargs.get("image_embed")
            if width:   # a conditioning without an image embedding (the negative) gets zeros, as in our sampler
                cond["image_embed"] = (per_clip(embed, frames).to(xc.device, dtype) if embed is not None
                                       else torch.zeros(xc.shape[0], width, device=xc.device, dtype=dtype))
            timestep = self.model_sampling.timestep(per_clip(sigma, frames)).float()
            out = as_frames(self.diffusion_model(xc.to(dtype), timestep, **cond))
            out = out.to(torch.promote_types(x.dtype, torch.float32))   # float32 (float64 for a float64 state)
            return self.model_sampling.calculate_denoised(sigma, out, x)


def clip_frames(shape: tuple, frames: int | None) -> int:
    """Frames per clip for a batch of frame latents of `shape`: `frames` (the conditioning's num_video_frames,
    or the bridge's), else the whole batch; refused when the LATENT is not [N * F, C, h, w] or F does not divide N * F."""
    if len(shape) != 4:
        raise ValueError(f"latent_image: the bridged MODEL takes frame latents [frames, channels, h, w] (frames in the "
                         f"batch, as the host's SVD; EmptyLatentImage with batch = frames, VAE Encode of IMAGE frames), "
                         f"got a {len(shape)}-D LATENT {list(shape)}")
    frames = int(frames or shape[0])
    if frames < 1 or shape[0] % frames:
        raise ValueError(f"latent_image: a batch of {shape[0]} frame latents does not divide into clips of {frames} "
                         f"frames (num_video_frames in the conditioning, or the Model Bridge's frames with batch_size > 1)")
    return frames


def as_clips(x: torch.Tensor, frames: int) -> torch.Tensor:
    """[n * F, C, h, w] (clip after clip, frame after frame) -> [n, C, F, h, w]."""
    return x.reshape(x.shape[0] // frames, frames, *x.shape[1:]).transpose(1, 2)


def as_frames(video: torch.Tensor) -> torch.Tensor:
    """[n, C, F, h, w] -> [n * F, C, h, w], the inverse of as_clips."""
    return video.transpose(1, 2).reshape(-1, video.shape[1], *video.shape[3:])


def per_clip(rows: torch.Tensor, frames: int) -> torch.Tensor:
    """A per-frame conditioning or sigma batch (the host repeats each conditioning over the latent batch) -> one row
    per clip: the row of the clip's first frame."""
    return rows[::frames]


def bridged_model(decoder, fps: float = DEFAULT_FPS):
    """The host's MODEL (a ModelPatcher its model management loads, offloads and frees) for a decoder."""
    if not HAS_COMFY:
        raise RuntimeError("decoder: the MODEL bridge needs ComfyUI (the host's model classes)")
    model = MakeAVideoModel(decoder, fps)
    for owner in (model, decoder.module):   # the weights are shared: the heap is free once both are gone
        weakref.finalize(owner, _trim_heap_soon)
    return _patcher.ModelPatcher(model, load_device=host.torch_device(), offload_device=host.offload_device())


def empty_latent(decoder, frames: int, width: int, height: int, batch_size: int = 1) -> dict:
    """A zero LATENT [batch_size * frames, C, H, W] (frames in the batch, clip after clip) of the decoder's latent
    space for `frames` frames of width x height."""
    cfg = decoder.config
    scale = SD_LATENT_SCALE if cfg.in_channels == 4 else 1
    multiple = scale * cfg.size_multiple   # one halving per UNet level below the first, in the latent
    for name, v in (("width", width), ("height", height)):
        if v % multiple:
            raise ValueError(f"{name}: {v} must be a multiple of {multiple} for this decoder "
                             f"({'latent 1/8 size, ' if scale > 1 else ''}{len(cfg.block_out_channels)} UNet levels)")
    return {"samples": torch.zeros(batch_size * frames, cfg.in_channels, height // scale, width // scale)}


class ModelBridge:
    CATEGORY = f"{CATEGORY}/loaders"
    FUNCTION = "bridge"
    RETURN_TYPES = ("MODEL", "LATENT")
    RETURN_NAMES = ("model", "latent")
    DESCRIPTION = ("The decoder as the host's MODEL, for KSampler / SamplerCustomAdvanced with any of the host's "
                   "samplers and schedulers (its noise schedule and eps/v prediction are declared to the host), "
                   "plus an empty LATENT of its latent space to start from, frames in the batch as the host's video "
                   "models (SVD) take them: [batch_size * frames, channels, h, w], for VAE Decode directly. "
                   "EmptyLatentImage (batch = frames) or VAE Encode of IMAGE frames work as well: the whole batch "
                   "is then one clip. The image embedding comes from the CONDITIONING (our Prior), the frame rate "
                   "from `fps`.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "decoder": (DECODER,),
            "frames": ("INT", {"default": 16, "min": 1, "max": 1024}),
            "width": ("INT", {"default": 256, "min": 8, "max": 4096, "step": 8}),
            "height": ("INT", {"default": 256, "min": 8, "max": 4096, "step": 8}),
            "batch_size": ("INT", {"default": 1, "min": 1, "max": 64,
                                   "tooltip": "clips in the LATENT; above 1 the MODEL samples clips of `frames` frames "
                                              "(at 1 the whole batch of any LATENT is one clip)"}),
            "fps": ("FLOAT", {"default": DEFAULT_FPS, "min": 0.1, "max": 240.0, "step": 0.1,
                              "tooltip": "frame rate the decoder is conditioned on (CONDITIONING's `fps` wins)"}),
        }}

    def bridge(self, decoder, frames, width, height, batch_size, fps):
        model = require_model(decoder, "decoder", ("decoder",))
        latent = empty_latent(model, frames, width, height, batch_size)
        bridged = bridged_model(model, fps)
        if batch_size > 1:
            bridged.model.mav_clip_frames = frames
        return bridged, latent


NODE_CLASS_MAPPINGS = {"MakeAVideoModelBridge": ModelBridge}
NODE_DISPLAY_NAME_MAPPINGS = {"MakeAVideoModelBridge": "MakeAVideo Model Bridge"}
