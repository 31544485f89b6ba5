"""SR^t_l and SR_h: ×2 super-resolution conditioned on the bilinearly upsampled video."""
from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F

from ..io.checkpoints import LoadedModel
from ..errors import check_finite
from .frames import check_video
from .memory import check_fits, upscale_estimate
from .options import SamplingOptions, UpscaleOptions
from .placement import model_device_dtype
from .sampling import image_mode, sample_unet

CHUNK_OVERLAP = 2   # SR^t_l: frames consecutive chunks share at least (fewer only in chunks under 4 frames)


def chunk_spans(frames: int, chunk: int, overlap: int = CHUNK_OVERLAP) -> list[tuple[int, int]]:
    """[start, end) of SR^t_l's frame chunks: as few chunks as hold `frames` with at most `chunk` frames
    each and at least min(overlap, chunk // 2) frames shared by neighbours, all of one length (the ends
    included, so no chunk is a short remainder) and spread evenly over the clip."""
    if frames <= chunk:
        return [(0, frames)]
    overlap = min(overlap, chunk // 2)
    n = math.ceil((frames - overlap) / (chunk - overlap))
    length = math.ceil((frames + (n - 1) * overlap) / n)   # <= chunk, and n chunks of it cover the clip
    return [(s, s + length) for s in (round(i * (frames - length) / (n - 1)) for i in range(n))]


def chunk_weights(spans: list[tuple[int, int]], i: int) -> torch.Tensor:
    """Chunk i's blend weight per frame: 1 inside, a linear ramp over the frames it shares with each
    neighbour (j / (m + 1), j = 1..m for m shared frames), so across a pair of chunks the weights sum to 1
    and the shared frames cross-fade from one chunk's frames to the next one's."""
    a, b = spans[i]
    t = torch.arange(a, b, dtype=torch.float32)
    w = torch.ones(b - a)
    if i > 0:
        shared = spans[i - 1][1] - a
        w = torch.minimum(w, (t - a + 1) / (shared + 1))
    if i + 1 < len(spans):
        shared = b - spans[i + 1][0]
        w = torch.minimum(w, (b - t) / (shared + 1))
    return w


def chunk_edges(spans: list[tuple[int, int]], frames: int) -> list[int]:
    """Frame transitions t -> t+1 at a chunk's first or last frame (where a chunk seam could show), as
    FrameWindows.edge_transitions gives them for the sampler's windows."""
    edges = set()
    for a, b in spans:
        edges |= {a - 1, b - 1}
    return sorted(edges - {-1, frames - 1})


def upscale_video(sr: LoadedModel, video: torch.Tensor, options: SamplingOptions = SamplingOptions(steps=10),
                  upscale: UpscaleOptions = UpscaleOptions(), callback: Callable | None = None) -> torch.Tensor:
    """[B, 3, F, H, W] -> [B, 3, F, 2H, 2W]. SR^t_l: upscale.temporal (the spatiotemporal model, frames in
    chunks of at most `frame_chunk` sharing 2 frames with their neighbours, `chunk_spans`; the shared frames
    cross-fade linearly from one chunk to the next, `chunk_weights`). SR_h: not temporal (each frame alone
    through the image model; options.noise_share=1 gives every frame the same noise, as in the paper).
    Guidance does not apply."""
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
    request = upscale_estimate(sr.config, out_shape, chunk, torch.device(device).type == "cpu")
    check_fits(f"{sr.path}", sr.config, request.size, device, dtype, held=request.held)
    model = sr if upscale.temporal else image_mode(sr)
    options = options.replace(cfg=1.0)
    residual_scale = float(sr.metadata.get("mav_sr_residual_scale", 0) or 0)
    result = torch.zeros(out_shape, device=device, dtype=torch.float32)
    spans = chunk_spans(f, chunk, CHUNK_OVERLAP) if upscale.temporal else [(a, min(f, a + chunk)) for a in range(0, f, chunk)]
    total = torch.zeros(f)
    for i, (start, end) in enumerate(spans):
        lo = video[:, :, start:end].to(device, torch.float32)
        k = end - start
        up = F.interpolate(lo.transpose(1, 2).flatten(0, 1), scale_factor=2.0, mode="bilinear",
                           align_corners=False).reshape(b, k, c, 2 * h, 2 * w).transpose(1, 2)
        out = sample_unet(model, (b, sr.config.out_channels, k, 2 * h, 2 * w), {"extra": up}, None, options,
                          callback=callback)
        if residual_scale:   # the model diffused (high-res - upsampled) * scale
            out = up + out / residual_scale
        weight = chunk_weights(spans, i)
        total[start:end] += weight
        result[:, :, start:end].add_(out.mul_(weight.to(device)[:, None, None]))   # in place: no chunk-sized temporary
    if len(spans) > 1 and not torch.equal(total, torch.ones(f)):   # a frame in three chunks (chunks of < 6 frames)
        result /= total.to(device)[:, None, None]
    return result

