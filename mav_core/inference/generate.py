"""D^t: a video from text / image-embedding conditioning (and, for ↑F checkpoints, from known frames), and
video-to-video for latent decoders from a host LATENT (`LatentVideo`, `generate_latent`)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from einops import rearrange

from ..errors import InputError, check_finite
from ..io.checkpoints import LoadedModel
from .frame_masks import guess_condition, masked_condition
from .memory import check_fits, generate_estimate
from .options import Guides, SamplingOptions, VideoShape, WindowOptions
from .placement import model_device_dtype, to_model
from .sampling import estimate_unet, is_regression, sample_unet


def conditioning_batch(cond: dict) -> int:
    """Rows of a conditioning dict (the batch of clips it asks for)."""
    for v in cond.values():
        if isinstance(v, torch.Tensor):
            return v.shape[0]
    return 1


def check_inputs(cond: dict, uncond: dict | None, guides: Guides = Guides()) -> None:
    """Conditioning and guide frames hold finite values, and cond and uncond ask for the same batch; raises
    InputError naming `cond`, `uncond`, `init`, `known` or `controls` (their hint videos)."""
    check_finite("cond", cond)
    check_finite("uncond", uncond)
    check_finite("init", guides.init)
    check_finite("known", guides.known)
    check_finite("controls", [getattr(c, "hint", None) for c in guides.controls or ()])
    if uncond is not None and any(isinstance(v, torch.Tensor) for v in uncond.values()):
        b, ub = conditioning_batch(cond), conditioning_batch(uncond)
        if ub != b:
            raise InputError("uncond", f"has batch {ub}, but the positive conditioning has batch {b}; "
                                       "both must hold the same number of entries")


def generate_video(decoder: LoadedModel, cond: dict, uncond: dict | None, shape: VideoShape = VideoShape(),
                   options: SamplingOptions = SamplingOptions(), guides: Guides = Guides(),
                   windows: WindowOptions | None = None, callback: Callable | None = None) -> torch.Tensor:
    """D^t: text/image-embedding-conditioned video [B, 3, F, H, W] (float32, on the model's device).

    guides.init + options.denoise < 1: a variation of the init frames; guides.known + known_mask: frames
    to keep (↑F checkpoints take them as conditioning channels; D^t puts them into every denoised estimate,
    diffusion.KnownFrames: image animation); guides.controls: Control adapters and hints.
    windows: sliding temporal windows for long videos (their hint videos and per-frame prompts sliced per
    window), or a closed loop (windows.loop). Every input is checked before sampling starts."""
    cfgm = decoder.config
    shape.validate(cfgm.size_multiple)
    options.validate()
    if windows is not None:
        windows.validate()
        if windows.loop and shape.frames < 2:
            raise InputError("loop", f"needs a clip of at least 2 frames to close, got {shape.frames}")
    if options.denoise < 1.0 and guides.init is None:
        raise InputError("denoise", f"{options.denoise} < 1 needs init frames to start from")
    check_inputs(cond, uncond, guides)
    b = conditioning_batch(cond)
    device, dtype = model_device_dtype(decoder.module)
    request = generate_estimate(cfgm, b, (shape.frames, shape.height, shape.width),
                                uncond is not None and options.cfg != 1.0, None if windows is None else windows.size)
    check_fits(f"{decoder.path}", cfgm, request.size, device, dtype, held=request.held)
    # all inputs on the model's device once, before sampling: conditioning in the model's dtype, frames
    # (init / known) in float32 like the sampling state; control hints keep the adapter's dtype
    cond, uncond = to_model(cond, device, dtype), to_model(uncond, device, dtype)
    init, known, known_mask = (to_model(v, device, torch.float32) for v in (guides.init, guides.known, guides.known_mask))
    fps_t = torch.full((b,), float(shape.fps), device=device)
    per_latent = {"fps": fps_t}
    if guides.controls:
        per_latent["controls"] = list(to_model(tuple(guides.controls), device))
    residual_scale = float(decoder.metadata.get("mav_interp_residual_scale", 0) or 0)
    guess = pinned = pinned_mask = None
    if known is not None:
        if not cfgm.extra_in_channels:   # D^t: the known frames are put into every denoised estimate
            pinned, pinned_mask = _pinned_frames(known, guides.known_mask,
                                                 (b, cfgm.out_channels, shape.frames, shape.height, shape.width))
        elif residual_scale:   # residual ↑F: conditioned on the guess, diffusing (frames - guess) * scale
            per_latent["extra"] = guess_condition(known, known_mask)
            guess = per_latent["extra"][:, :-1]
            if init is not None:
                init = (init - guess) * residual_scale
        else:
            per_latent["extra"] = masked_condition(known, known_mask)
    cond = {**cond, **per_latent}
    uncond = None if uncond is None else {**uncond, **per_latent}
    out_shape = (b, cfgm.out_channels, shape.frames, shape.height, shape.width)
    if is_regression(decoder):
        if known is None or not residual_scale:
            raise ValueError(f"{decoder.path} is a regression ↑F checkpoint: it only fills in frames between "
                             "known frames (interpolation), it cannot generate a video")
        # trained without text or image conditioning: the known frames are all it goes by
        cond = {**cond, "image_embed": torch.zeros_like(cond["image_embed"])} if "image_embed" in cond else cond
        out = estimate_unet(decoder, out_shape, cond, windows=windows, precision=options.precision, callback=callback)
        return guess + out / residual_scale
    start = Guides(init=init, known=pinned, known_mask=pinned_mask)
    out = sample_unet(decoder, out_shape, cond, uncond, options, guides=start, windows=windows, callback=callback)
    if pinned is not None:
        return torch.where(pinned_mask.reshape(-1, 1, shape.frames, 1, 1), pinned, out)
    return out if guess is None else guess + out / residual_scale


def _pinned_frames(known: torch.Tensor, mask: torch.Tensor | None, out_shape: tuple) -> tuple:
    """(known frames, mask [F] or [B, F]) checked against the video asked for, for KnownFrames."""
    if known.dim() != 5 or tuple(known.shape[1:]) != tuple(out_shape[1:]) or known.shape[0] not in (1, out_shape[0]):
        raise InputError("known", f"frames of shape {tuple(known.shape)} do not match the video asked for "
                                  f"{tuple(out_shape)} ([B, C, frames, height, width])")
    if mask is None or mask.dim() not in (1, 2) or mask.shape[-1] != out_shape[2]:
        raise InputError("known", f"needs a known_mask of [frames] = [{out_shape[2]}] booleans")
    if bool(mask.bool().all().cpu()):
        raise InputError("known", f"all {out_shape[2]} frames are known: there is nothing to generate; ask for "
                                  "more frames than the known ones")
    return known.expand(out_shape[0], -1, -1, -1, -1), mask.bool().to(known.device)


PIXEL_CHANNELS = 3
LATENT_LAYOUTS = ("[frames, C, h, w] (a batch of frame latents, as VAE Encode gives) or "
                  "[batch, C, frames, h, w] (a video latent)")


@dataclass(frozen=True)
class LatentVideo:
    """A video in a latent decoder's space, as the host's LATENT holds it. samples: [N, C, h, w], a batch of
    frame latents (what the host's VAE Encode makes of N frames and its VAE Decode turns back into N frames;
    with a conditioning batch of B clips, N = B x frames, clip after clip, as `latent_samples` writes them),
    or [B, C, F, h, w], a video latent (the host's Upscale Latent keeps this layout, scaling every frame).
    The LATENT is unscaled: the model works on samples * scaling (the SD VAE's 0.18215 for UNet3D and
    inflated SD decoders). fps: the frame rate the decoder is conditioned on."""
    samples: torch.Tensor
    scaling: float = 1.0
    fps: float = 8.0


def latent_samples(video: torch.Tensor, scaling: float = 1.0) -> torch.Tensor:
    """A model-space latent video [B, C, F, h, w] as LATENT samples [B x F, C, h, w] (unscaled)."""
    return rearrange(video, "b c f h w -> (b f) c h w") / scaling


def _latent_layout(samples, clips: int) -> torch.Tensor:
    """samples as [B, C, F, h, w] (no arithmetic: the same values), checked against the conditioning's clips."""
    if not isinstance(samples, torch.Tensor) or not samples.is_floating_point():
        raise InputError("latent", f"must be a floating-point tensor {LATENT_LAYOUTS}, got {type(samples).__name__}")
    if samples.dim() == 4:
        if samples.shape[0] % clips:
            raise InputError("latent", f"holds {samples.shape[0]} frame latents, which the conditioning's {clips} "
                                       "clips cannot share equally (frames of each clip one after the other)")
        return rearrange(samples, "(b f) c h w -> b c f h w", b=clips)
    if samples.dim() == 5:
        if samples.shape[0] != clips:
            raise InputError("latent", f"holds {samples.shape[0]} videos, but the conditioning asks for {clips}")
        return samples
    raise InputError("latent", f"must be {LATENT_LAYOUTS}, got shape {tuple(samples.shape)}")


def latent_video(decoder: LoadedModel, latent: LatentVideo, clips: int = 1) -> torch.Tensor:
    """The LATENT as the decoder's init video [B, C, F, h, w] (float32, samples * scaling); InputError naming
    `latent` for a pixel decoder, the wrong channel count or layout, sides the decoder cannot take, NaN/inf."""
    cfg = decoder.config
    if cfg.out_channels == PIXEL_CHANNELS:
        raise InputError("latent", f"is for latent decoders; {decoder.path} samples pixels: give it frames to "
                                   "start from instead (init frames)")
    video = _latent_layout(latent.samples, clips)
    if video.shape[1] != cfg.out_channels:
        raise InputError("latent", f"has {video.shape[1]} channels, but {decoder.path} samples {cfg.out_channels}-"
                                   f"channel latents (shape {tuple(latent.samples.shape)}, expected {LATENT_LAYOUTS})")
    for name, side in (("height", video.shape[3]), ("width", video.shape[4])):
        if side % cfg.size_multiple:
            raise InputError("latent", f"{name} {side} must be a multiple of {cfg.size_multiple} latent pixels "
                                       f"for {decoder.path} (shape {tuple(latent.samples.shape)})")
    check_finite("latent", video)
    return video.float() * latent.scaling


def generate_latent(decoder: LoadedModel, cond: dict, uncond: dict | None, latent: LatentVideo,
                    options: SamplingOptions = SamplingOptions(), guides: Guides = Guides(),
                    windows: WindowOptions | None = None, callback: Callable | None = None) -> torch.Tensor:
    """Video-to-video for a latent decoder: `latent` noised to options.denoise and sampled as
    generate_video samples (frames, height and width are the latent's). Returns LATENT samples
    [B x F, C, h, w] (unscaled, on the model's device). denoise 0: the input latent's own values, unchanged;
    denoise 1: the text-to-video sample of the same seed (the latent only sets the size)."""
    if guides.init is not None:
        raise InputError("latent", "and init frames were both given: give one video to start from")
    init = latent_video(decoder, latent, conditioning_batch(cond))
    options.validate()
    if options.denoise == 0.0:   # nothing to sample: the input itself, not a round trip through the scaling
        check_inputs(cond, uncond, guides)
        samples = latent.samples
        return (rearrange(samples, "b c f h w -> (b f) c h w") if samples.dim() == 5 else samples).clone()
    shape = VideoShape(init.shape[2], init.shape[3], init.shape[4], latent.fps)
    video = generate_video(decoder, cond, uncond, shape, options, guides.replace(init=init), windows, callback)
    return latent_samples(video, latent.scaling)
