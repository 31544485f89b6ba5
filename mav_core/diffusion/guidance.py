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


PER_LATENT_KEYS = ("extra", "fps")  # per latent, not per conditioning (↑F's masked frames, the frame rate)


def _shared_latent_pair(denoiser: Denoiser, cond: dict, uncond: dict) -> dict | None:
    """The pair's conditioning for one network call on the un-repeated latent, when the network takes a
    shared latent (SpaceTimeUNet.forward) and both halves have the same per-latent inputs; else None."""
    if not getattr(getattr(denoiser, "network", None), "accepts_shared_latent", False):
        return None
    if any(cond.get(k) is not uncond.get(k) for k in PER_LATENT_KEYS):
        return None
    per_latent = {k: cond.get(k) for k in PER_LATENT_KEYS}
    pair = _cat_cond({k: v for k, v in cond.items() if k not in per_latent},
                     {k: v for k, v in uncond.items() if k not in per_latent})
    if not any(isinstance(pair.get(k), torch.Tensor) for k in ("context", "image_embed")):
        return None  # nothing tells the network there are two conditionings
    return {**pair, **{k: v for k, v in per_latent.items() if v is not None}}


class CFGDenoiser:
    """Calls `denoiser` on the positive and negative conditioning; scale 1 skips the negative pass.

    Both halves go through one network call. Where the network accepts a shared latent, the latent is
    passed once with both conditionings (its text-independent layers then run once, not twice)."""

    def __init__(self, denoiser: Denoiser, cond: dict, uncond: dict | None, scale: float):
        self.denoiser, self.cond, self.uncond, self.scale = denoiser, cond, uncond, float(scale)
        guided = uncond is not None and self.scale != 1.0
        self._pair = _cat_cond(cond, uncond) if guided else None
        self._shared = _shared_latent_pair(denoiser, cond, uncond) if guided else None

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        if self._pair is None:
            return self.denoiser(x, sigma, **self.cond)
        if self._shared is not None:
            both = self.denoiser(x, sigma, **self._shared)
        else:
            both = self.denoiser(torch.cat([x, x]), torch.cat([sigma.reshape(-1).expand(x.shape[0])] * 2),
                                 **self._pair)
        c, u = both.chunk(2)
        return u + self.scale * (c - u)
