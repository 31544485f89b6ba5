"""Seeded noise that is the same on every device, optionally shared by all frames.

Noise is always drawn on the CPU from a torch.Generator and then moved, so a seed gives the same
numbers on CPU and GPU (bit-identical before the move; the move itself is exact).
"""
from __future__ import annotations

import torch


SEED_RANGE = 2 ** 64   # seeds are unsigned 64-bit, as the host's seed widget


def derive_seed(seed: int, offset: int) -> int:
    """The seed `offset` places after `seed`, wrapping within the 64-bit seed range (a window's or a
    step's own noise stays a function of the user's seed, for every seed)."""
    return (int(seed) + int(offset)) % SEED_RANGE


def seeded_noise(shape, seed: int | torch.Generator, *, device=None, dtype=torch.float32,
                 shared_frames: bool | float = False, frame_dim: int = 2) -> torch.Tensor:
    """Standard normal noise of `shape`. With shared_frames (True = 1.0), one draw is repeated along
    frame_dim (Make-A-Video's SR_h uses the same noise for every frame). A share s in (0, 1) mixes
    sqrt(s) * one shared draw + sqrt(1 - s) * a draw per frame: still unit variance per frame, with
    correlation s between frames (mixed video noise, as in PYoCo)."""
    gen = seed if isinstance(seed, torch.Generator) else torch.Generator("cpu").manual_seed(int(seed))
    share = float(shared_frames)
    if not 0.0 <= share <= 1.0:
        raise ValueError(f"shared_frames must be a share in [0, 1], got {shared_frames!r}")
    shape = list(shape)
    if share == 0.0:
        return torch.randn(shape, generator=gen, dtype=torch.float32).to(device=device, dtype=dtype)
    one = shape.copy()
    one[frame_dim] = 1
    if share == 1.0:
        noise = torch.randn(one, generator=gen, dtype=torch.float32).expand(shape).contiguous()
    else:
        common = torch.randn(one, generator=gen, dtype=torch.float32)
        noise = share ** 0.5 * common + (1 - share) ** 0.5 * torch.randn(shape, generator=gen, dtype=torch.float32)
    return noise.to(device=device, dtype=dtype)


class NoiseSampler:
    """Draws the per-step noise of ancestral samplers from one CPU generator."""

    def __init__(self, seed: int, shared_frames: bool | float = False, frame_dim: int = 2):
        self.gen = torch.Generator("cpu").manual_seed(derive_seed(seed, 1))
        self.shared_frames = shared_frames
        self.frame_dim = frame_dim

    def __call__(self, like: torch.Tensor) -> torch.Tensor:
        return seeded_noise(like.shape, self.gen, device=like.device, dtype=like.dtype,
                            shared_frames=self.shared_frames if like.dim() == 5 else False, frame_dim=self.frame_dim)
