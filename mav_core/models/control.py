"""ControlNet-style conditioning: a small adapter turns a hint video (edges, a mask, user frames)
into residuals added to the UNet's skip connections and mid block (`residuals=(down, mid)`), the
mechanism the UNet3D reference exposes as down_block_additional_residuals.

The adapter encodes each hint frame with 2D convs, one stage per UNet level, and projects onto every
skip through 1x1 convs that start at zero — so a fresh adapter, or strength 0, leaves the model's
output exactly unchanged. Several controls stack: their residuals add up.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from einops import rearrange
from torch import nn

from .unet import UNetConfig, conditioning_batch, per_condition
from .config import ConfigDict

HINT_KINDS = ("canny", "mask", "frames")


@dataclass
class ControlConfig(ConfigDict):
    hint_channels: int = 1
    block_out_channels: tuple = (32, 64, 96)   # the UNet's, one adapter stage per level
    layers_per_block: int = 1                  # the UNet's: fixes the number of skips per level
    hidden: int = 16
    kind: str = "canny"

    def __post_init__(self):
        self.block_out_channels = tuple(self.block_out_channels)
        if self.kind not in HINT_KINDS:
            raise ValueError(f"control kind {self.kind!r} is not one of {HINT_KINDS}")

    @classmethod
    def for_unet(cls, cfg: UNetConfig, **kw) -> "ControlConfig":
        return cls(block_out_channels=cfg.block_out_channels, layers_per_block=cfg.layers_per_block, **kw)



def _zero(conv: nn.Conv2d) -> nn.Conv2d:
    nn.init.zeros_(conv.weight)
    nn.init.zeros_(conv.bias)
    return conv


class ControlAdapter(nn.Module):
    def __init__(self, config: ControlConfig):
        super().__init__()
        self.config = cfg = config
        ch = cfg.block_out_channels
        self.stem = nn.Sequential(nn.Conv2d(cfg.hint_channels, cfg.hidden, 3, padding=1), nn.SiLU(),
                                  nn.Conv2d(cfg.hidden, ch[0], 3, padding=1), nn.SiLU())
        self.stages = nn.ModuleList()
        self.proj = nn.ModuleList()
        c_prev = ch[0]
        for i, c in enumerate(ch):
            stride = 1 if i == 0 else 2
            self.stages.append(nn.Sequential(nn.Conv2d(c_prev, c, 3, stride=stride, padding=1), nn.SiLU(),
                                             nn.Conv2d(c, c, 3, padding=1), nn.SiLU()))
            c_prev = c
        # skips of SpaceTimeUNet: conv_in, then per level `layers` resnet outputs (+ a downsample)
        self.skip_levels = [0]
        for i in range(len(ch)):
            self.skip_levels += [i] * cfg.layers_per_block
            if i < len(ch) - 1:
                self.skip_levels.append(i + 1)   # the downsampled map has the next level's size
        self.skip_channels = [ch[0]]
        for i, c in enumerate(ch):
            self.skip_channels += [c] * cfg.layers_per_block
            if i < len(ch) - 1:
                self.skip_channels.append(c)
        for lvl, c in zip(self.skip_levels, self.skip_channels):
            self.proj.append(_zero(nn.Conv2d(ch[lvl], c, 1)))
        self.mid = _zero(nn.Conv2d(ch[-1], ch[-1], 1))

    def forward(self, hint: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """hint [B, C, F, H, W] (or [B, C, H, W]) -> (down residuals, mid residual) in the folded layout."""
        if hint.dim() == 5:
            hint = rearrange(hint, "b c f h w -> (b f) c h w")
        h = self.stem(hint)
        feats = []
        for stage in self.stages:
            h = stage(h)
            feats.append(h)
        down = [proj(feats[lvl]) for proj, lvl in zip(self.proj, self.skip_levels)]
        return down, self.mid(feats[-1])


@dataclass
class Control:
    """One attached control: adapter + hint video, scaled by strength, active for sampling progress
    in [start, end] (0 = first step, 1 = last)."""
    adapter: ControlAdapter
    hint: torch.Tensor           # [B or 1, C, F, H, W]
    strength: float = 1.0
    start: float = 0.0
    end: float = 1.0


class ControlledUNet(nn.Module):
    """Wraps a SpaceTimeUNet: forward(x, t, controls=[Control, ...], **cond) adds the summed residuals."""

    def __init__(self, unet: nn.Module, num_train_steps: int = 1000):
        super().__init__()
        self.unet = unet
        self.num_train_steps = num_train_steps

    @property
    def accepts_shared_latent(self) -> bool:
        return getattr(self.unet, "accepts_shared_latent", False)

    def forward(self, x, t, controls=None, **cond):
        """A control limited to part of sampling ([start, end] narrower than [0, 1]) is gated on the device
        from t (0 or its strength), so the step loop never waits for the device to read t."""
        active = [c for c in controls or [] if c.strength != 0 and c.start <= c.end]
        if not active:   # exactly the uncontrolled call (shared latent included)
            return self.unet(x, t, **cond)
        progress = 1.0 - t.reshape(-1)[:1].float() / (self.num_train_steps - 1)
        b = x.shape[0]
        rows = conditioning_batch(b, cond.get("context"), cond.get("image_embed"))
        if rows != b:   # a shared latent: the residuals need one row per conditioning
            k = rows // b
            x = x.repeat(k, *([1] * (x.dim() - 1)))
            t = per_condition(t, b, rows, "t")
            cond = {key: (v.repeat(k, *([1] * (v.dim() - 1))) if key == "extra" and v is not None else v)
                    for key, v in cond.items()}
        down, mid = None, None
        for c in active:
            hint = c.hint.to(x.device, next(c.adapter.parameters()).dtype)   # on the device already: a cast at most
            if hint.shape[0] != x.shape[0]:
                hint = hint.expand(x.shape[0] // hint.shape[0] * hint.shape[0], *hint.shape[1:]) \
                    if hint.shape[0] == 1 else hint.repeat(x.shape[0] // hint.shape[0], *([1] * (hint.dim() - 1)))
            if hint.shape[2:] != x.shape[2:]:
                raise ValueError(f"control hint of shape {tuple(hint.shape)} does not match the video {tuple(x.shape)}")
            d, m = c.adapter(hint)
            scale = c.strength
            if c.start > 0 or c.end < 1:
                inside = (progress >= c.start) & (progress <= c.end)
                scale = (inside.to(m.dtype) * c.strength).reshape(1, *([1] * (m.dim() - 1)))
            d = [scale * r for r in d]
            m = scale * m
            down = d if down is None else [a + b for a, b in zip(down, d)]
            mid = m if mid is None else mid + m
        return self.unet(x, t, residuals=(down, mid), **cond)


def canny_hint(frames: torch.Tensor, low: float = 0.1, high: float = 0.2) -> torch.Tensor:
    """frames [B, 3, F, H, W] in -1..1 -> edge hint [B, 1, F, H, W] in 0..1 (kornia's Canny)."""
    import kornia
    b, c, f, h, w = frames.shape
    flat = rearrange((frames.float() + 1) / 2, "b c f h w -> (b f) c h w")
    _, edges = kornia.filters.canny(flat, low_threshold=low, high_threshold=high)
    return rearrange(edges, "(b f) c h w -> b c f h w", b=b)


def mask_hint(frames: torch.Tensor) -> torch.Tensor:
    """Object mask hint: pixels far from the border median colour (the world's backgrounds are plain)."""
    border = torch.cat([frames[..., 0, :], frames[..., -1, :], frames[..., :, 0], frames[..., :, -1]], dim=-1)
    bg = border.median(dim=-1).values[..., None, None]
    return ((frames - bg).abs().amax(dim=1, keepdim=True) > 0.3).float()


def make_hint(frames: torch.Tensor, kind: str) -> torch.Tensor:
    if kind == "canny":
        return canny_hint(frames)
    if kind == "mask":
        return mask_hint(frames)
    if kind == "frames":
        return frames
    raise ValueError(f"hint kind {kind!r} is not one of {HINT_KINDS}")
