"""Classifier-free guidance as a denoiser: uncond + scale * (cond - uncond), both halves in one batch."""
from __future__ import annotations

import torch

from .denoiser import Denoiser


def _cat_cond(a: dict, b: dict) -> dict:
    out = {}
    for key in a.keys() | b.keys():
        va, vb = a.get(key), b.get(key)
        if isinstance(va, torch.Tensor) and isinstance(vb, torch.Tensor):
            out[key] = torch.cat([va, vb])
        elif va is None and vb is None:
            out[key] = None
        elif isinstance(va, torch.Tensor) or isinstance(vb, torch.Tensor):
            raise ValueError(f"conditioning {key!r} is set for only one of cond/uncond")
        else:
            out[key] = va
    return out


class CFGDenoiser:
    """Calls `denoiser` on the positive and negative conditioning; scale 1 skips the negative pass."""

    def __init__(self, denoiser: Denoiser, cond: dict, uncond: dict | None, scale: float):
        self.denoiser, self.cond, self.uncond, self.scale = denoiser, cond, uncond, float(scale)
        self._pair = _cat_cond(cond, uncond) if uncond is not None and self.scale != 1.0 else None

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        if self._pair is None:
            return self.denoiser(x, sigma, **self.cond)
        both = self.denoiser(torch.cat([x, x]), torch.cat([sigma.reshape(-1).expand(x.shape[0])] * 2),
                             **self._pair)
        c, u = both.chunk(2)
        return u + self.scale * (c - u)
