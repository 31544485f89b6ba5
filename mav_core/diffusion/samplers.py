"""Samplers as plain functions with one signature: sampler(model, x, sigmas, callback, noise_sampler).

`model(x, sigma)` returns the denoised estimate x0 (see Denoiser / CFGDenoiser); x starts at
noise * sigmas[0]; sigmas decrease and end at 0. `callback(dict(i, x, sigma, denoised))` runs after
every step: progress, previews, and Cancel (raise from it to stop within one step).
"""
from __future__ import annotations

import math
from typing import Callable

import torch

from .schedule import NoiseSchedule


SIGMA_SCHEDULES = ("trailing", "karras")


def sampling_sigmas(schedule: NoiseSchedule, steps: int, denoise: float = 1.0, spacing: str = "trailing") -> torch.Tensor:
    """`steps` sigmas from the largest down, plus a final 0, on the CPU (samplers read them without
    waiting for a device).

    spacing "trailing": entries of the training table evenly spaced in timestep (the default);
    "karras": Karras et al. (2022) rho=7 spacing between the table's smallest and largest sigma.
    denoise < 1 keeps the last `steps` entries of a schedule of round(steps / denoise) steps, so
    sampling starts from a partly noised input (img2img / vid2vid strength)."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if not 0.0 < denoise <= 1.0:
        raise ValueError(f"denoise must be in (0, 1], got {denoise}")
    if spacing not in SIGMA_SCHEDULES:
        raise ValueError(f"spacing must be one of {SIGMA_SCHEDULES}, got {spacing!r}")
    total = max(steps, int(round(steps / denoise)))
    table = schedule.sigmas()
    if spacing == "karras":
        rho = 7.0
        lo, hi = float(table.min()) ** (1 / rho), float(table.max()) ** (1 / rho)
        ramp = torch.linspace(0, 1, total, dtype=torch.float64)
        picked = (hi + ramp * (lo - hi)) ** rho
    else:
        T = schedule.num_train_steps
        picked = table[torch.linspace(T - 1, 0, total, dtype=torch.float64).round().long()]
    sigmas = torch.cat([picked.to(table.dtype), table.new_zeros(1)])[-(steps + 1):]
    return sigmas.float()


def _ancestral_step(sigma_from: float, sigma_to: float, eta: float = 1.0):
    if sigma_to == 0 or eta == 0:
        return sigma_to, 0.0
    sigma_up = min(sigma_to, eta * (sigma_to**2 * (sigma_from**2 - sigma_to**2) / sigma_from**2) ** 0.5)
    return (sigma_to**2 - sigma_up**2) ** 0.5, sigma_up


def _step_sigma(x, s):
    return x.new_full((x.shape[0],), s)


def _notify(callback, i, x, sigma, denoised):
    if callback is not None:
        callback({"i": i, "x": x, "sigma": sigma, "denoised": denoised})


@torch.no_grad()
def sample_ddim(model, x, sigmas, callback=None, noise_sampler=None, eta: float = 0.0):
    """DDIM (Song et al. 2021) in its variance-preserving form; eta=0 is deterministic."""
    s = sigmas.tolist()
    for i in range(len(s) - 1):
        denoised = model(x, _step_sigma(x, s[i]))
        a, a_prev = 1 / (1 + s[i] ** 2), 1 / (1 + s[i + 1] ** 2)
        eps = (x - denoised) / s[i]
        std = eta * math.sqrt(max((1 - a_prev) / (1 - a) * (1 - a / a_prev), 0.0)) if s[i + 1] > 0 else 0.0
        x_prev = math.sqrt(a_prev) * denoised + math.sqrt(max(1 - a_prev - std**2, 0.0)) * eps
        if std > 0:
            x_prev = x_prev + std * noise_sampler(x)
        x = x_prev / math.sqrt(a_prev)  # back to x = x0 + sigma * eps
        _notify(callback, i, x, s[i], denoised)
    return x


@torch.no_grad()
def sample_ddpm(model, x, sigmas, callback=None, noise_sampler=None):
    """Ancestral DDPM (Ho et al. 2020): the posterior q(x_{t-1} | x_t, x0) at every step (DDIM eta=1)."""
    return sample_ddim(model, x, sigmas, callback, noise_sampler, eta=1.0)


@torch.no_grad()
def sample_euler_ancestral(model, x, sigmas, callback=None, noise_sampler=None, eta: float = 1.0):
    """Euler-ancestral (Karras et al. 2022 / k-diffusion)."""
    s = sigmas.tolist()
    for i in range(len(s) - 1):
        denoised = model(x, _step_sigma(x, s[i]))
        sigma_down, sigma_up = _ancestral_step(s[i], s[i + 1], eta)
        x = x + (x - denoised) / s[i] * (sigma_down - s[i])
        if sigma_up > 0:
            x = x + noise_sampler(x) * sigma_up
        _notify(callback, i, x, s[i], denoised)
    return x


@torch.no_grad()
def sample_dpmpp_2m(model, x, sigmas, callback=None, noise_sampler=None):
    """DPM-Solver++(2M) (Lu et al. 2022), deterministic multistep."""
    s = sigmas.tolist()
    old_denoised, h_last = None, None
    for i in range(len(s) - 1):
        denoised = model(x, _step_sigma(x, s[i]))
        if s[i + 1] == 0:
            x = denoised
        else:
            t, t_next = -math.log(s[i]), -math.log(s[i + 1])
            h = t_next - t
            if old_denoised is None:
                d = denoised
            else:
                r = h_last / h
                d = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old_denoised
            x = (s[i + 1] / s[i]) * x - math.expm1(-h) * d
            h_last = h
        old_denoised = denoised
        _notify(callback, i, x, s[i], denoised)
    return x


SAMPLERS: dict[str, Callable] = {
    "ddim": sample_ddim,
    "ddpm": sample_ddpm,
    "euler_ancestral": sample_euler_ancestral,
    "dpmpp_2m": sample_dpmpp_2m,
}


def sample(name: str, model, x, sigmas, callback=None, noise_sampler=None, **options):
    if name not in SAMPLERS:
        raise ValueError(f"sampler {name!r} is not one of {sorted(SAMPLERS)}")
    return SAMPLERS[name](model, x, sigmas, callback=callback, noise_sampler=noise_sampler, **options)
