"""Random weights for test models, made in code."""
from __future__ import annotations

import math

import torch


def randomise(module: torch.nn.Module, seed: int) -> None:
    """Random weights everywhere (also the zero-initialised output layers), so every tensor matters: norms
    near identity, matrices scaled by their fan-in."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.dim() == 1:
                p.copy_((1.0 if name.endswith("weight") else 0.0) + 0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(p[0].numel()))
