"""Wraps an eps-, v- or x0-predicting network trained on a discrete schedule as a denoiser D(x, sigma) -> x0.

The samplers see only sigmas: x = x0 + sigma * eps. The network sees x / sqrt(1 + sigma^2) (its
training input) and the discrete timestep whose sigma is nearest in log space (interpolated).

Precision: the sampling state stays in float32 (the first sigma of a cosine schedule is ~2e4, beyond
float16's range once multiplied by noise); with `dtype` given, only the network's input is cast to it
(a half-precision model) and its output comes back as float32 before the preconditioning.
"""
from __future__ import annotations

import torch
from torch import nn

from .schedule import NoiseSchedule

PREDICTIONS = ("eps", "v", "x0")


class Denoiser(nn.Module):
    def __init__(self, network: nn.Module, schedule: NoiseSchedule, prediction: str = "eps",
                 dtype: torch.dtype | None = None):
        super().__init__()
        self.dtype = dtype
        if prediction not in PREDICTIONS:
            raise ValueError(f"prediction {prediction!r} is not one of {PREDICTIONS}")
        self.network = network
        self.schedule = schedule
        self.prediction = prediction
        log_sigmas = schedule.sigmas().log().float()
        self.register_buffer("log_sigmas", log_sigmas, persistent=False)
        # read on the CPU here, so asking for them later never waits for the device
        self.sigma_min, self.sigma_max = float(log_sigmas[0].exp()), float(log_sigmas[-1].exp())

    def sigma_to_t(self, sigma: torch.Tensor) -> torch.Tensor:
        log_sigma = sigma.float().clamp(min=1e-10).log().to(self.log_sigmas.device)
        dists = log_sigma[:, None] - self.log_sigmas[None]
        low = (dists >= 0).cumsum(dim=1).argmax(dim=1).clamp(max=self.log_sigmas.shape[0] - 2)
        lo, hi = self.log_sigmas[low], self.log_sigmas[low + 1]
        w = ((lo - log_sigma) / (lo - hi)).clamp(0, 1)
        return ((1 - w) * low + w * (low + 1)).to(sigma.device)

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, **cond) -> torch.Tensor:
        sigma = sigma.reshape(-1).expand(x.shape[0]) if sigma.numel() == 1 else sigma
        s = sigma.to(x.dtype).reshape(-1, *([1] * (x.dim() - 1)))
        c_in = 1 / (s**2 + 1).sqrt()
        x_in = x * c_in
        out = self.network(x_in if self.dtype is None else x_in.to(self.dtype), self.sigma_to_t(sigma), **cond)
        out = out.to(x.dtype)
        if out.shape[0] != x.shape[0]:  # a shared latent evaluated under k conditionings (see SpaceTimeUNet)
            k = out.shape[0] // x.shape[0]
            x, s, c_in = (v.repeat(k, *([1] * (v.dim() - 1))) for v in (x, s, c_in))
        if self.prediction == "eps":
            return x - s * out
        if self.prediction == "x0":
            return out
        return x / (s**2 + 1) - s * c_in * out

    def estimate_from_nothing(self, like: torch.Tensor, **cond) -> torch.Tensor:
        """The one-pass estimate of a regression-trained network: x0 at the largest noise level from x = 0
        (shaped like `like`), i.e. what the network predicts from its conditioning alone."""
        sigma = torch.full((1,), self.sigma_max, device=like.device)
        return self(torch.zeros_like(like), sigma, **cond)
