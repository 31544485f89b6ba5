"""Frames between the host's layout and the model's: IMAGE batches [F, H, W, 3] in 0..1 (ComfyUI, the video
writer) and videos [B, C, F, H, W] in -1..1 (model space)."""
from __future__ import annotations

import torch


def frames_to_video(frames: torch.Tensor) -> torch.Tensor:
    """[F, H, W, 3] 0..1 -> [1, 3, F, H, W] -1..1."""
    if frames.dim() != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be [F, H, W, 3], got {tuple(frames.shape)}")
    return frames.permute(3, 0, 1, 2)[None].float() * 2 - 1


def video_to_frames(video: torch.Tensor) -> torch.Tensor:
    """[B, 3, F, H, W] -1..1 -> [B*F, H, W, 3] 0..1 on the CPU (float32), written frame by frame into one
    preallocated output: the conversion holds the output plus one frame, never a full-size temporary."""
    b, c, f, h, w = video.shape
    out = torch.empty(b * f, h, w, c, dtype=torch.float32)
    for i in range(b):
        for j in range(f):
            frame = out[i * f + j]
            frame.copy_(video[i, :, j].detach().permute(1, 2, 0))
            frame.clamp_(-1, 1).add_(1).div_(2)
    return out


def check_video(name: str, video) -> None:
    if not isinstance(video, torch.Tensor) or video.dim() != 5 or 0 in video.shape:
        shape = tuple(video.shape) if isinstance(video, torch.Tensor) else type(video).__name__
        raise ValueError(f"{name} must be a non-empty [B, C, F, H, W] tensor, got {shape}")
