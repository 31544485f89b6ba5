"""SR^t_l and SR_h: ×2 super-resolution conditioned on the bilinearly upsampled video."""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from ..io.checkpoints import LoadedModel
from ..errors import check_finite
from .frames import check_video
from .memory import check_fits, tensor_bytes
from .options import SamplingOptions, UpscaleOptions
from .placement import model_device_dtype
from .sampling import image_mode, sample_unet


def upscale_video(sr: LoadedModel, video: torch.Tensor, options: SamplingOptions = SamplingOptions(steps=10),
                  upscale: UpscaleOptions = UpscaleOptions(), callback: Callable | None = None) -> torch.Tensor:
    """[B, 3, F, H, W] -> [B, 3, F, 2H, 2W]. SR^t_l: upscale.temporal (the spatiotemporal model, frames in
    chunks of `frame_chunk` overlapping by 2). SR_h: not temporal (each frame alone through the image model;
    options.noise_share=1 gives every frame the same noise, as in the paper). Guidance does not apply."""
    upscale.validate()
    options.validate()
    check_video("video", video)
    check_finite("video", video)
    b, c, f, h, w = video.shape
    if c != sr.config.extra_in_channels:
        raise ValueError(f"video has {c} channels; {sr.path} upscales {sr.config.extra_in_channels}-channel videos")
    device, dtype = model_device_dtype(sr.module)
    chunk = upscale.frame_chunk
    out_shape = (b, sr.config.out_channels, f, 2 * h, 2 * w)
    check_fits(f"{sr.path}", sr.config, (b, min(f, chunk), 2 * h, 2 * w), device, dtype,
               held=request_bytes(out_shape, min(f, chunk), torch.device(device).type == "cpu"))
    model = sr if upscale.temporal else image_mode(sr)
    options = options.replace(cfg=1.0)
    residual_scale = float(sr.metadata.get("mav_sr_residual_scale", 0) or 0)
    result = torch.empty(out_shape, device=device, dtype=torch.float32)
    overlap = min(2, chunk // 2) if upscale.temporal and f > chunk else 0   # chunks always advance
    start = 0
    while start < f:
        end = min(f, start + chunk)
        lo = video[:, :, start:end].to(device, torch.float32)
        k = end - start
        up = F.interpolate(lo.transpose(1, 2).flatten(0, 1), scale_factor=2.0, mode="bilinear",
                           align_corners=False).reshape(b, k, c, 2 * h, 2 * w).transpose(1, 2)
        out = sample_unet(model, (b, sr.config.out_channels, k, 2 * h, 2 * w), {"extra": up}, None, options,
                          callback=callback)
        if residual_scale:   # the model diffused (high-res - upsampled) * scale
            out = up + out / residual_scale
        keep = 0 if start == 0 else overlap
        result[:, :, start + keep:end] = out[:, :, keep:]
        if end == f:
            break
        start = end - overlap
    return result


def request_bytes(out_shape, chunk: int, image_copy: bool) -> int:
    """What an upscale request holds besides one chunk's activations: the whole output, the chunk's
    low-res, upsampled and sampled frames, and (when the output is converted to IMAGE in the same memory,
    on the CPU) the IMAGE copy of the output."""
    b, c, f, h, w = out_shape
    chunk_bytes = tensor_bytes((b, c, chunk, h, w))
    return tensor_bytes(out_shape) * (2 if image_copy else 1) + 3 * chunk_bytes
