"""Discrete DDPM noise schedules (linear, cosine, scaled-linear) seen as a table of sigmas.

A schedule of T steps has alphas_cumprod a_t; in the variance-exploding view used by the samplers a
noisy sample is x = x0 + sigma * eps with sigma_t = sqrt((1 - a_t) / a_t).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

SCHEDULES = ("linear", "cosine", "scaled_linear")


@dataclass(frozen=True)
class NoiseSchedule:
    name: str = "linear"
    num_train_steps: int = 1000
    beta_start: float = 1e-4
    beta_end: float = 2e-2

    def __post_init__(self):
        if self.name not in SCHEDULES:
            raise ValueError(f"schedule name {self.name!r} is not one of {SCHEDULES}")
        if self.num_train_steps < 2:
            raise ValueError(f"schedule num_train_steps must be >= 2, got {self.num_train_steps}")

    def betas(self) -> torch.Tensor:
        T = self.num_train_steps
        if self.name == "linear":
            return torch.linspace(self.beta_start, self.beta_end, T, dtype=torch.float64)
        if self.name == "scaled_linear":
            return torch.linspace(self.beta_start**0.5, self.beta_end**0.5, T, dtype=torch.float64) ** 2
        # cosine (Nichol & Dhariwal 2021), betas clipped at 0.999
        s = 0.008
        steps = torch.arange(T + 1, dtype=torch.float64) / T
        f = torch.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
        return (1 - f[1:] / f[:-1]).clamp(max=0.999)

    def alphas_cumprod(self) -> torch.Tensor:
        return torch.cumprod(1.0 - self.betas(), dim=0)

    def sigmas(self) -> torch.Tensor:
        """sigma_t for t = 0..T-1 (increasing), float64."""
        ac = self.alphas_cumprod()
        return ((1 - ac) / ac).sqrt()

    def to_dict(self) -> dict:
        return {"name": self.name, "num_train_steps": self.num_train_steps,
                "beta_start": self.beta_start, "beta_end": self.beta_end}

    @classmethod
    def from_dict(cls, d: dict) -> "NoiseSchedule":
        return cls(**{k: d[k] for k in ("name", "num_train_steps", "beta_start", "beta_end") if k in d})
