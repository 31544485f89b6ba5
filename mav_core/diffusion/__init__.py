"""Diffusion pieces, each its own small module: schedules, noise, the denoiser wrapper, guidance,
training loss and samplers (plain functions of (model, x, sigmas, callback))."""

from .schedule import NoiseSchedule
from .noise import NoiseSampler, derive_seed, seeded_noise
from .denoiser import Denoiser
from .guidance import CFGDenoiser
from .known_frames import KnownFrames
from .loss import diffusion_loss
from .samplers import SAMPLERS, SIGMA_SCHEDULES, sample, sampling_sigmas

__all__ = [
    "NoiseSchedule", "seeded_noise", "NoiseSampler", "derive_seed", "Denoiser", "CFGDenoiser", "KnownFrames", "diffusion_loss",
    "SAMPLERS", "SIGMA_SCHEDULES", "sample", "sampling_sigmas",
]
