"""Known-frame masks for masked frame interpolation and extrapolation (↑F).

A clip of T frames is conditioned on some known frames (their pixels + a 1-channel mask); the
network generates the rest. Interpolation by m keeps every m-th frame; extrapolation keeps the first
k frames (image animation: k = 1).

Residual ↑F checkpoints (metadata `mav_interp_residual_scale`) see, instead of zeros, a guess at every
unknown frame (`frame_guess`: the linear blend of the nearest known frames on either side, or the
nearest known frame where only one side has one) and diffuse only what the guess misses.

Regression ↑F checkpoints (metadata `mav_interp_estimate` = "regression") are residual ↑F networks trained
to give the unknown frames in one pass (x = 0 at the largest noise level, the network's estimate of the
frames given only the known ones) with a per-frame PSNR loss: deterministic interpolation, no sampling.
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


def start_frames(start: torch.Tensor, num_frames: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Start frames [B, C, S, H, W] as the known first S of a video of num_frames frames: (known frames
    [B, C, num_frames, H, W], zero after the start; mask [num_frames]), for Guides.known / known_mask."""
    known = start.new_zeros(*start.shape[:2], num_frames, *start.shape[-2:])
    known[:, :, :start.shape[2]] = start
    return known, extrapolation_mask(num_frames, start.shape[2])


TRAINING_MULTIPLIERS = (2, 3, 4, 8)


def _random_multiplier(gen: torch.Generator) -> int:
    return TRAINING_MULTIPLIERS[int(torch.randint(0, len(TRAINING_MULTIPLIERS), (), generator=gen))]


def random_training_mask(num_frames: int, gen: torch.Generator) -> torch.Tensor:
    """Interpolation with a random multiplier (2, 3, 4 or 8; the last frame known when it lands on
    the grid), extrapolation from 1-4 frames, or both ends known (two-image interpolation)."""
    r = float(torch.rand((), generator=gen))
    if r < 0.55:
        return interpolation_mask(num_frames, _random_multiplier(gen))
    if r < 0.85:
        return extrapolation_mask(num_frames, int(torch.randint(1, 5, (), generator=gen)))
    mask = torch.zeros(num_frames, dtype=torch.bool)
    mask[0] = mask[-1] = True
    return mask


def random_interpolation_mask(num_frames: int, gen: torch.Generator) -> torch.Tensor:
    """Interpolation only (what a regression ↑F is trained on): a random multiplier (2, 3, 4 or 8) or
    both ends known, the last frame always known."""
    if float(torch.rand((), generator=gen)) < 0.85:
        mask = interpolation_mask(num_frames, _random_multiplier(gen))
    else:
        mask = torch.zeros(num_frames, dtype=torch.bool)
        mask[0] = True
    mask[-1] = True
    return mask


def _mask_channel(frames: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """mask [T] or [B, T] as a [B, 1, T, H, W] channel beside frames [B, C, T, H, W]."""
    b, c, t, h, w = frames.shape
    return mask.to(frames.device, frames.dtype).reshape(-1, 1, t, 1, 1).expand(b, 1, t, h, w)


def masked_condition(frames: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """frames [B, C, T, H, W] and mask [T] or [B, T] -> extra channels [B, C + 1, T, H, W]."""
    m = _mask_channel(frames, mask)
    return torch.cat([frames * m, m], dim=1)


def frame_guess(frames: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """frames [B, C, T, H, W], mask [T] or [B, T] (at least one known frame per clip) -> the known
    frames kept, each unknown frame linearly blended from the nearest known frames before and after
    it (held from the nearest known frame where only one side has one)."""
    b, c, t, h, w = frames.shape
    mask = mask.to(torch.bool).reshape(-1, t).expand(b, t).cpu()
    if not mask.any(dim=1).all():
        raise ValueError("every clip needs at least one known frame")
    weights = torch.zeros(b, t, t)                     # guess[:, :, i] = sum_k weights[b, i, k] frames[:, :, k]
    for bi in range(b):
        known = mask[bi].nonzero().flatten().tolist()
        for i in range(t):
            before = [k for k in known if k <= i]
            after = [k for k in known if k >= i]
            if before and after:
                lo, hi = before[-1], after[0]
                a = 0.0 if hi == lo else (i - lo) / (hi - lo)
                weights[bi, i, lo] += 1 - a
                weights[bi, i, hi] += a
            else:
                weights[bi, i, (before or after)[-1 if before else 0]] = 1.0
    return torch.einsum("bik,bckhw->bcihw", weights.to(frames.device, frames.dtype), frames)


def guess_condition(frames: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Residual ↑F's extra channels: frame_guess (3) + mask (1), shaped like masked_condition."""
    return torch.cat([frame_guess(frames, mask), _mask_channel(frames, mask)], dim=1)
