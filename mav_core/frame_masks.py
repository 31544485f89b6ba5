"""Known-frame masks for masked frame interpolation and extrapolation (↑F).

A clip of T frames is conditioned on some known frames (their pixels + a 1-channel mask); the
network generates the rest. Interpolation by m keeps every m-th frame; extrapolation keeps the first
k frames (image animation: k = 1).
"""
from __future__ import annotations

import torch


def interpolation_mask(num_frames: int, multiplier: int) -> torch.Tensor:
    """[T] bool: frames 0, m, 2m, ... are known."""
    if multiplier < 1:
        raise ValueError(f"multiplier must be >= 1, got {multiplier}")
    mask = torch.zeros(num_frames, dtype=torch.bool)
    mask[::multiplier] = True
    return mask


def extrapolation_mask(num_frames: int, known: int) -> torch.Tensor:
    mask = torch.zeros(num_frames, dtype=torch.bool)
    mask[:known] = True
    return mask


def random_training_mask(num_frames: int, gen: torch.Generator) -> torch.Tensor:
    """Interpolation with a random multiplier (2, 3, 4 or 8; the last frame known when it lands on
    the grid), extrapolation from 1-4 frames, or both ends known (two-image interpolation)."""
    r = float(torch.rand((), generator=gen))
    if r < 0.55:
        m = [2, 3, 4, 8][int(torch.randint(0, 4, (), generator=gen))]
        return interpolation_mask(num_frames, m)
    if r < 0.85:
        return extrapolation_mask(num_frames, int(torch.randint(1, 5, (), generator=gen)))
    mask = torch.zeros(num_frames, dtype=torch.bool)
    mask[0] = mask[-1] = True
    return mask


def masked_condition(frames: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """frames [B, C, T, H, W] and mask [T] or [B, T] -> extra channels [B, C + 1, T, H, W]."""
    b, c, t, h, w = frames.shape
    m = mask.to(frames.device, frames.dtype).reshape(-1, 1, t, 1, 1).expand(b, 1, t, h, w)
    return torch.cat([frames * m, m], dim=1)
