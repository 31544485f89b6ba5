"""Seeded noise that is the same on every device, optionally shared by all frames, and FreeInit's
low-frequency re-initialisation.

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


FREEINIT_SEED_OFFSET = 0x46494E49   # FreeInit's fresh noise: seeds far from the start noise's and the steps'


def lowpass_filter(frames: int, height: int, width: int, cutoff: float = 0.25, device=None) -> torch.Tensor:
    """FreeInit's Gaussian spatio-temporal low-pass filter [F, H, W] on the unshifted FFT grid:
    exp(-d^2 / (2 cutoff^2)), d the distance of a frequency from zero with every axis's highest frequency
    at 1 (cutoff 0.25: a quarter of the band keeps ~60% of its amplitude, the highest frequencies almost none)."""
    if not 0.0 < cutoff <= 1.0:
        raise ValueError(f"cutoff must be in (0, 1], got {cutoff!r}")
    axes = [2 * torch.fft.fftfreq(n, dtype=torch.float64) for n in (frames, height, width)]
    ft, fh, fw = torch.meshgrid(*axes, indexing="ij")
    d2 = ft ** 2 + fh ** 2 + fw ** 2
    return torch.exp(-d2 / (2 * cutoff ** 2)).to(device=device, dtype=torch.float32)


def frequency_mix(low: torch.Tensor, high: torch.Tensor, cutoff: float = 0.25) -> torch.Tensor:
    """The low spatio-temporal frequencies of `low` plus the high ones of `high` (both [B, C, F, H, W]),
    mixed in float32 through a 3D FFT over (F, H, W) with lowpass_filter (FreeInit's noise re-initialisation)."""
    if low.shape != high.shape or low.dim() != 5:
        raise ValueError(f"frequency_mix needs two [B, C, F, H, W] tensors of one shape, got "
                         f"{tuple(low.shape)} and {tuple(high.shape)}")
    lpf = lowpass_filter(*low.shape[2:], cutoff=cutoff, device=low.device)
    dims = (-3, -2, -1)
    mixed = torch.fft.fftn(low.float(), dim=dims) * lpf + torch.fft.fftn(high.float(), dim=dims) * (1 - lpf)
    return torch.fft.ifftn(mixed, dim=dims).real.to(low.dtype)


def freeinit_start(clean: torch.Tensor, noise: torch.Tensor, sigma: float, seed: int, iteration: int,
                   shared_frames: bool | float = False, cutoff: float = 0.25) -> torch.Tensor:
    """FreeInit (Wu et al. 2023): the start of the next sampling pass. The previous result `clean` is
    diffused back to `sigma` with the first pass's `noise` (clean + sigma * noise); its low frequencies are
    kept and the high ones come from fresh noise (seeded from `seed` and `iteration`, frame sharing as the
    first pass's), so the new start carries the previous pass's layout and motion but new detail."""
    fresh = seeded_noise(noise.shape, derive_seed(seed, FREEINIT_SEED_OFFSET + iteration), device=noise.device,
                         dtype=torch.float32, shared_frames=shared_frames)
    return frequency_mix(clean.float() + sigma * noise.float(), sigma * fresh, cutoff)


class NoiseSampler:
    """Draws the per-step noise of ancestral samplers from one CPU generator."""

    def __init__(self, seed: int, shared_frames: bool | float = False, frame_dim: int = 2):
        self.gen = torch.Generator("cpu").manual_seed(derive_seed(seed, 1))
        self.shared_frames = shared_frames
        self.frame_dim = frame_dim

    def __call__(self, like: torch.Tensor) -> torch.Tensor:
        return seeded_noise(like.shape, self.gen, device=like.device, dtype=like.dtype,
                            shared_frames=self.shared_frames if like.dim() == 5 else False, frame_dim=self.frame_dim)
