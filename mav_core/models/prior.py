"""The diffusion prior (DALL-E 2 style): text tokens + pooled text embedding -> image embedding.

A small transformer reads [text tokens, pooled text embedding, timestep, noisy image embedding] and its
output at the image-embedding position predicts the clean (scaled) image embedding (x0 prediction).
Image embeddings are unit vectors; the prior works on them times `embed_scale` (default sqrt(E)) so
each component has about unit variance, and its samples are normalised back to unit length.

The unconditional conditioning (the empty prompt's encoding) is stored in the checkpoint as the
buffers `null_text_tokens` / `null_text_embed`, so classifier-free guidance needs no text encoder.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from ..diffusion.schedule import NoiseSchedule
from .text import Block, check_sizes
from .config import ConfigDict


MAX_TRAIN_STEPS = 100_000   # the longest noise schedule a config may declare (its tables are built in float64)


@dataclass
class PriorConfig(ConfigDict):
    embed_dim: int = 64
    text_width: int = 128
    width: int = 128
    layers: int = 4
    heads: int = 4
    max_tokens: int = 16
    embed_scale: float = 0.0              # image embeddings are multiplied by this; 0 = sqrt(embed_dim)
    schedule: dict = field(default_factory=lambda: {"name": "cosine", "num_train_steps": 1000})
    prediction: str = "x0"

    def __post_init__(self):
        check_sizes("PriorConfig", {"embed_dim": self.embed_dim, "text_width": self.text_width, "width": self.width,
                                    "layers": self.layers, "heads": self.heads, "max_tokens": self.max_tokens})
        if not isinstance(self.schedule, dict):
            raise ValueError(f"PriorConfig.schedule must be a JSON object, got {type(self.schedule).__name__}")
        check_sizes("PriorConfig", {"schedule.num_train_steps": self.schedule.get("num_train_steps", 1000)},
                    MAX_TRAIN_STEPS)
        if self.width % self.heads:
            raise ValueError(f"PriorConfig.width {self.width} is not divisible by heads {self.heads}")
        if self.prediction not in ("eps", "v", "x0"):
            raise ValueError(f"PriorConfig.prediction {self.prediction!r} is not one of ('eps', 'v', 'x0')")
        NoiseSchedule.from_dict(self.schedule)  # validates

    @property
    def scale(self) -> float:
        return self.embed_scale or math.sqrt(self.embed_dim)

    def noise_schedule(self) -> NoiseSchedule:
        return NoiseSchedule.from_dict(self.schedule)



def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class DiffusionPrior(nn.Module):
    def __init__(self, config: PriorConfig):
        super().__init__()
        self.config = config
        w, e = config.width, config.embed_dim
        self.text_tokens_in = nn.Linear(config.text_width, w)
        self.text_embed_in = nn.Linear(e, w)
        self.time_in = nn.Sequential(nn.Linear(w, w), nn.SiLU(), nn.Linear(w, w))
        self.x_in = nn.Linear(e, w)
        self.positions = nn.Parameter(torch.randn(config.max_tokens + 3, w) * 0.02)
        self.blocks = nn.ModuleList([Block(w, config.heads) for _ in range(config.layers)])
        self.out_norm = nn.LayerNorm(w)
        self.out = nn.Linear(w, e)
        self.register_buffer("null_text_tokens", torch.zeros(1, config.max_tokens, config.text_width))
        self.register_buffer("null_text_embed", torch.zeros(1, e))

    def set_null_conditioning(self, text_tokens: torch.Tensor, text_embed: torch.Tensor):
        """Store the empty prompt's encoding (used for conditioning dropout and guidance)."""
        self.null_text_tokens.copy_(text_tokens.reshape(self.null_text_tokens.shape))
        self.null_text_embed.copy_(text_embed.reshape(self.null_text_embed.shape))

    def null_conditioning(self, batch: int) -> dict:
        return {"text_tokens": self.null_text_tokens.expand(batch, -1, -1),
                "text_embed": self.null_text_embed.expand(batch, -1)}

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, text_tokens: torch.Tensor, text_embed: torch.Tensor) -> torch.Tensor:
        """x_t [B, E] (scaled, noisy), t [B] timesteps, text_tokens [B, L, text_width], text_embed [B, E] -> [B, E]."""
        cfg = self.config
        b = x_t.shape[0]
        if x_t.dim() != 2 or x_t.shape[1] != cfg.embed_dim:
            raise ValueError(f"x_t must be [B, {cfg.embed_dim}], got {tuple(x_t.shape)}")
        if text_tokens.shape[1:] != (cfg.max_tokens, cfg.text_width):
            raise ValueError(f"text_tokens must be [B, {cfg.max_tokens}, {cfg.text_width}], got {tuple(text_tokens.shape)}")
        if text_embed.shape[1:] != (cfg.embed_dim,):
            raise ValueError(f"text_embed must be [B, {cfg.embed_dim}], got {tuple(text_embed.shape)}")
        dtype = self.x_in.weight.dtype
        t = t.reshape(-1).expand(b) if t.numel() == 1 else t
        seq = torch.cat([
            self.text_tokens_in(text_tokens.to(dtype).expand(b, -1, -1)),
            self.text_embed_in(text_embed.to(dtype).expand(b, -1))[:, None],
            self.time_in(timestep_embedding(t, cfg.width).to(dtype))[:, None],
            self.x_in(x_t.to(dtype))[:, None],
        ], dim=1) + self.positions.to(dtype)
        for block in self.blocks:
            seq = block(seq)
        return self.out(self.out_norm(seq[:, -1]))


