"""Video-like test frames made in code (no file needed)."""
from __future__ import annotations

import torch


def moving_frames(count: int = 8, height: int = 24, width: int = 32) -> torch.Tensor:
    """IMAGE frames [count, height, width, 3] in 0..1: smooth colour ramps with a soft bright blob that moves
    left to right."""
    y = torch.linspace(0, 1, height)[:, None].expand(height, width)
    x = torch.linspace(0, 1, width)[None, :].expand(height, width)
    frames = torch.empty(count, height, width, 3)
    for i in range(count):
        blob = 0.2 * torch.exp(-((x - (0.2 + 0.6 * i / max(1, count - 1))) ** 2 + (y - 0.5) ** 2) / 0.02)
        frames[i, ..., 0] = 0.25 + 0.4 * x + blob
        frames[i, ..., 1] = 0.2 + 0.5 * y + blob
        frames[i, ..., 2] = 0.6 - 0.3 * x + blob
    return frames.clamp(0, 1)
