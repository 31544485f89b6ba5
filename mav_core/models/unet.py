"""SpaceTimeUNet: one configurable pseudo-3D UNet for every Make-A-Video diffusion stage.

  D / D^t   the (spatiotemporal) decoder: x = frames, conditioned on text tokens, an image embedding
            and fps;
  ↑F        the frame interpolator: extra input channels = masked frames + mask;
  SR^t_l    spatiotemporal super-resolution: extra input channels = the upsampled low-res video;
  SR_h      per-frame super-resolution: the same network run in image mode.
The same class holds third-party UNet3D checkpoints (ModelScope T2V / Zeroscope): their layout is
switched on by `temporal_conv_blocks`, `transformer_in` and `num_attention_heads` in the config.

Image mode (temporal=False) folds frames into the batch and skips every temporal layer, so it is
exactly the image model. Video mode starts equal to it (identity-initialised temporal layers).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from .layers import (Downsample, PseudoConv3d, ResBlock, SpatialTransformer, TemporalConvBlock,
                     TemporalTransformer, TimestepEmbedding, Upsample, timestep_embedding)
from .config import ConfigDict


@dataclass
class UNetConfig(ConfigDict):
    in_channels: int = 3                 # channels of x: 3 for pixel families, 4 for latent ones
    out_channels: int = 3
    extra_in_channels: int = 0           # conditioning concatenated to x (↑F: 3 + 1, SR: 3)
    block_out_channels: tuple = (64, 128, 256)
    layers_per_block: int = 2
    attention_levels: tuple = (False, True, True)   # spatial + temporal attention at these levels
    mid_attention: bool = True
    attention_head_dim: int = 32         # size of a head, used when num_attention_heads is None
    num_attention_heads: int | None = None  # fixed head count per block (UNet3D layout)
    context_dim: int = 256               # width of the cross-attention context (text tokens)
    norm_num_groups: int = 32
    linear_projection: bool = False      # spatial transformer proj_in/out as Linear instead of 1x1 conv
    # temporal structure
    pseudo3d_convs: bool = True          # Make-A-Video: a temporal conv after every 2D conv in ResBlocks
    temporal_conv_blocks: bool = False   # UNet3D: a TemporalConvBlock after every ResBlock
    temporal_attention: bool = True      # a TemporalTransformer after every spatial transformer
    temporal_position_embedding: bool = True
    transformer_in: bool = False         # UNet3D: a TemporalTransformer right after conv_in
    transformer_in_heads: int = 8
    transformer_in_head_dim: int = 64
    # conditioning
    fps_conditioning: bool = True        # fps embedding added to the timestep embedding (starts at 0)
    image_embed_dim: int = 0             # image embedding (from the prior or an image encoder); 0 = none
    image_embed_tokens: int = 4          # the image embedding also becomes this many context tokens

    def __post_init__(self):
        self.block_out_channels = tuple(self.block_out_channels)
        self.attention_levels = tuple(self.attention_levels)
        if len(self.attention_levels) != len(self.block_out_channels):
            raise ValueError(f"attention_levels {self.attention_levels} must have one entry per "
                             f"block_out_channels {self.block_out_channels}")
        for c in self.block_out_channels:
            if c % self.norm_num_groups:
                raise ValueError(f"block_out_channels {c} is not divisible by norm_num_groups {self.norm_num_groups}")

    @property
    def size_multiple(self) -> int:
        """Frame height and width must be multiples of this (one halving per level below the first)."""
        return 2 ** (len(self.block_out_channels) - 1)

    def heads(self, channels: int) -> tuple[int, int]:
        if self.num_attention_heads:
            return self.num_attention_heads, channels // self.num_attention_heads
        return max(1, channels // self.attention_head_dim), min(channels, self.attention_head_dim)



class _Stage(nn.Module):
    """What follows each ResBlock of a UNet level: the UNet3D temporal conv stack, then spatial attention
    and temporal attention (each present or not by config). Shared by the down, mid and up blocks."""

    def _build_layers(self, cfg: UNetConfig, c: int, n: int, attention: bool, n_attention: int | None = None):
        g = cfg.norm_num_groups
        n_attention = n if n_attention is None else n_attention
        heads, dim_head = cfg.heads(c)
        self.temp_convs = nn.ModuleList([TemporalConvBlock(c, g) for _ in range(n)]) if cfg.temporal_conv_blocks else None
        self.attentions = nn.ModuleList([SpatialTransformer(c, heads, dim_head, cfg.context_dim, g, cfg.linear_projection)
                                         for _ in range(n_attention)]) if attention else None
        self.temp_attentions = nn.ModuleList([TemporalTransformer(c, heads, dim_head, g, cfg.temporal_position_embedding)
                                              for _ in range(n_attention)]) if attention and cfg.temporal_attention else None

    def _after_resnet(self, i: int, x, context, num_frames, fork: int = 1):
        """fork > 1: x holds shared latents, repeated for `fork` contexts at the first cross-attention."""
        if self.temp_convs is not None:
            x = self.temp_convs[i](x, num_frames)
        if self.attentions is not None and i < len(self.attentions):
            x = self.attentions[i](x, context, fork=fork)
        elif fork > 1:
            x = x.repeat(fork, 1, 1, 1)
        if self.temp_attentions is not None and i < len(self.temp_attentions):
            x = self.temp_attentions[i](x, num_frames)
        return x


class DownBlock(_Stage):
    def __init__(self, cfg: UNetConfig, c_in: int, c_out: int, emb: int, attention: bool, downsample: bool):
        super().__init__()
        n, g = cfg.layers_per_block, cfg.norm_num_groups
        self.resnets = nn.ModuleList([ResBlock(c_in if i == 0 else c_out, c_out, emb, g, pseudo3d=cfg.pseudo3d_convs)
                                      for i in range(n)])
        self._build_layers(cfg, c_out, n, attention)
        self.downsamplers = nn.ModuleList([Downsample(c_out)]) if downsample else None

    def forward(self, x, emb, context, num_frames, fork: int = 1, emb_latent=None):
        """fork > 1: x holds shared latents with their own embedding emb_latent; the first ResBlock and
        what precedes its cross-attention run on them once (see SpaceTimeUNet.forward)."""
        skips = []
        for i, resnet in enumerate(self.resnets):
            f_i = fork if i == 0 else 1
            x = self._after_resnet(i, resnet(x, emb_latent if f_i > 1 else emb, num_frames), context, num_frames, f_i)
            skips.append(x)
        if self.downsamplers is not None:
            x = self.downsamplers[0](x)
            skips.append(x)
        return x, skips


class MidBlock(_Stage):
    """ResBlock, attention, ResBlock (the second ResBlock is followed by its temporal convs only)."""

    def __init__(self, cfg: UNetConfig, c: int, emb: int, attention: bool):
        super().__init__()
        g = cfg.norm_num_groups
        self.resnets = nn.ModuleList([ResBlock(c, c, emb, g, pseudo3d=cfg.pseudo3d_convs) for _ in range(2)])
        self._build_layers(cfg, c, 2, attention, n_attention=1)

    def forward(self, x, emb, context, num_frames):
        for i, resnet in enumerate(self.resnets):
            x = self._after_resnet(i, resnet(x, emb, num_frames), context, num_frames)
        return x


class UpBlock(_Stage):
    def __init__(self, cfg: UNetConfig, c_prev: int, c_out: int, c_skip_last: int, emb: int, attention: bool, upsample: bool):
        super().__init__()
        n, g = cfg.layers_per_block + 1, cfg.norm_num_groups
        self.resnets = nn.ModuleList()
        for i in range(n):
            c_skip = c_skip_last if i == n - 1 else c_out
            c_res_in = c_prev if i == 0 else c_out
            self.resnets.append(ResBlock(c_res_in + c_skip, c_out, emb, g, pseudo3d=cfg.pseudo3d_convs))
        self._build_layers(cfg, c_out, n, attention)
        self.upsamplers = nn.ModuleList([Upsample(c_out)]) if upsample else None

    def forward(self, x, skips, emb, context, num_frames, size=None):
        for i, resnet in enumerate(self.resnets):
            x = self._after_resnet(i, resnet(torch.cat([x, skips.pop()], dim=1), emb, num_frames), context, num_frames)
        if self.upsamplers is not None:
            x = self.upsamplers[0](x, size)
        return x


class SpaceTimeUNet(nn.Module):
    accepts_shared_latent = True  # forward takes k·B conditionings for B latents (CFG pairs)

    def __init__(self, config: UNetConfig):
        super().__init__()
        cfg = self.config = config
        ch = cfg.block_out_channels
        emb = ch[0] * 4
        self.conv_in = PseudoConv3d(cfg.in_channels + cfg.extra_in_channels, ch[0], temporal=cfg.pseudo3d_convs)
        self.time_embedding = TimestepEmbedding(ch[0], emb)
        self.fps_embedding = TimestepEmbedding(ch[0], emb, zero_init=True) if cfg.fps_conditioning else None
        if cfg.image_embed_dim:
            self.image_embedding = nn.Linear(cfg.image_embed_dim, emb)
            self.image_tokens = nn.Linear(cfg.image_embed_dim, cfg.image_embed_tokens * cfg.context_dim)
        self.transformer_in = (TemporalTransformer(ch[0], cfg.transformer_in_heads, cfg.transformer_in_head_dim,
                                                   cfg.norm_num_groups, cfg.temporal_position_embedding)
                               if cfg.transformer_in else None)

        self.down_blocks = nn.ModuleList()
        c_out = ch[0]
        skip_channels = [ch[0]]
        for i, c in enumerate(ch):
            c_in, c_out = c_out, c
            last = i == len(ch) - 1
            self.down_blocks.append(DownBlock(cfg, c_in, c_out, emb, cfg.attention_levels[i], not last))
            skip_channels += [c_out] * cfg.layers_per_block + ([] if last else [c_out])
        self.mid_block = MidBlock(cfg, ch[-1], emb, cfg.mid_attention)

        self.up_blocks = nn.ModuleList()
        rev = list(reversed(ch))
        c_out = rev[0]
        for i, c in enumerate(rev):
            c_prev, c_out = c_out, c
            c_skip_last = rev[min(i + 1, len(ch) - 1)]
            last = i == len(ch) - 1
            self.up_blocks.append(UpBlock(cfg, c_prev, c_out, c_skip_last, emb,
                                          cfg.attention_levels[len(ch) - 1 - i], not last))
        self.conv_norm_out = nn.GroupNorm(cfg.norm_num_groups, ch[0])
        self.conv_out = nn.Conv2d(ch[0], cfg.out_channels, 3, padding=1)

    def temporal_parameters(self):
        """Parameters of the temporal layers only (what D^t training and motion files update)."""
        return [p for n, p in self.named_parameters() if is_temporal_key(n)]

    def forward(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor | None = None,
                image_embed: torch.Tensor | None = None, fps: torch.Tensor | None = None,
                extra: torch.Tensor | None = None, temporal: bool = True,
                residuals: tuple[list, torch.Tensor] | None = None) -> torch.Tensor:
        """x: [B, C, F, H, W] (video) or [B, C, H, W] (image). t: [B] timesteps. context: [B, L, D], or
        [B, F, L, D] per frame (prompt travel). image_embed: [B, E], or [B, F, E] per frame. fps: [B].
        extra: conditioning channels shaped like x.
        temporal=False runs the image model on every frame independently.
        residuals: (down residuals, mid residual) added to the skips and the mid block (ControlNet-style).

        Shared latent (a CFG pair): when context / image_embed hold k·B rows for B latents, each latent is
        evaluated under k conditionings and the output has k·B rows (latent i pairs with rows i, B+i, ...).
        The text-independent prefix (conv_in, transformer_in; with a per-latent embedding — t / fps with B
        rows, no image embedding — also the first ResBlock, its temporal convs and the first spatial
        self-attention) then runs once per latent instead of k times; t / fps may have B or k·B rows."""
        cfg = self.config
        video = x.dim() == 5
        b = x.shape[0]
        f = x.shape[2] if video else 1
        bc = conditioning_batch(b, context, image_embed)
        if extra is not None:
            if extra.shape[0] != b or extra.shape[2:] != x.shape[2:]:
                raise ValueError(f"extra conditioning of shape {tuple(extra.shape)} does not match x {tuple(x.shape)}")
            x = torch.cat([x, extra.to(x.dtype)], dim=1)
        if x.shape[1] != cfg.in_channels + cfg.extra_in_channels:
            raise ValueError(f"input has {x.shape[1]} channels; this model expects "
                             f"{cfg.in_channels} + {cfg.extra_in_channels} extra")
        rows = _Rows(b, bc, f, f if (video and temporal) else None, video)
        h = rearrange(x, "b c f h w -> (b f) c h w") if video else x
        cond = self._conditioning(h, t, context, image_embed, fps, rows)

        h = self.conv_in(h, rows.num_frames)
        if self.transformer_in is not None:
            h = self.transformer_in(h, rows.num_frames)
        # shared latents: the prefix above ran once per latent; from here on (or from the first
        # cross-attention of the first block, when the embedding is per latent too) per conditioning
        fork = bc // b if cond.emb_latent is not None else 1
        skips = [h.repeat(bc // b, 1, 1, 1) if bc != b else h]
        if bc != b and cond.emb_latent is None:
            h = skips[0]
        for i, block in enumerate(self.down_blocks):
            h, s = block(h, cond.emb, cond.context, rows.num_frames, fork, cond.emb_latent) if i == 0 and fork > 1 \
                else block(h, cond.emb, cond.context, rows.num_frames)
            skips += s
        down_residuals, mid_residual = residuals if residuals is not None else (None, None)
        if down_residuals is not None:
            if len(down_residuals) != len(skips):
                raise ValueError(f"got {len(down_residuals)} control residuals, the model has {len(skips)} skips")
            skips = [s + r.to(s.dtype) for s, r in zip(skips, down_residuals)]
        h = self.mid_block(h, cond.emb, cond.context, rows.num_frames)
        if mid_residual is not None:
            h = h + mid_residual.to(h.dtype)
        for block in self.up_blocks:
            n = len(block.resnets)
            block_skips = skips[-n:]
            skips = skips[:-n]
            up_size = skips[-1].shape[-2:] if skips else None
            h = block(h, block_skips, cond.emb, cond.context, rows.num_frames, up_size)
        h = self.conv_out(F.silu(self.conv_norm_out(h)))
        return rearrange(h, "(b f) c h w -> b c f h w", b=bc) if video else h

    def _conditioning(self, h: torch.Tensor, t: torch.Tensor, context, image_embed, fps, rows: "_Rows") -> "_Conditioning":
        """The ResBlocks' embedding (timestep + fps + image embedding) and the cross-attention context (text
        tokens + tokens made from the image embedding), one row per conditioning and frame; per latent
        (emb_latent) when the embedding does not depend on the conditioning (see forward's shared latent)."""
        cfg = self.config
        b, bc, f = rows.latents, rows.conditionings, rows.frames
        ch0 = cfg.block_out_channels[0]
        use_fps = self.fps_embedding is not None and fps is not None and rows.num_frames is not None
        if use_fps:
            fps = torch.as_tensor(fps, device=h.device, dtype=torch.float32).reshape(-1)
        # shared latents whose embedding is per latent too (t, fps per latent; no image embedding): the
        # first ResBlock of the UNet also runs once per latent
        emb_per_latent = (bc != b and (image_embed is None or not cfg.image_embed_dim) and t.numel() in (1, b)
                          and (not use_fps or fps.numel() in (1, b))
                          and not (context is not None and context.dim() == 4))
        n = b if emb_per_latent else bc
        emb = self.time_embedding(timestep_embedding(per_condition(t, b, n, "t"), ch0).to(h.dtype))
        if use_fps:
            emb = emb + self.fps_embedding(timestep_embedding(per_condition(fps, b, n, "fps"), ch0).to(h.dtype))
        if context is not None and context.shape[-1] != cfg.context_dim:
            raise ValueError(f"context width {context.shape[-1]} does not match the model's context_dim {cfg.context_dim}")
        per_frame = (context is not None and context.dim() == 4) or (image_embed is not None and image_embed.dim() == 3)
        if per_frame:
            # prompt travel: one context / embedding per frame, folded like the frames: [(b f), ...]
            if not rows.video:
                raise ValueError("per-frame context / image_embed need a video input [B, C, F, H, W]")
            context = _fold_frames(context, bc, f, 3, "context")
            image_embed = _fold_frames(image_embed, bc, f, 2, "image_embed")
            emb = emb.repeat_interleave(f, dim=0)
        if cfg.image_embed_dim and image_embed is not None:
            image_embed = image_embed.to(h.dtype)
            emb = emb + self.image_embedding(image_embed)
            tokens = self.image_tokens(image_embed).reshape(image_embed.shape[0], cfg.image_embed_tokens, cfg.context_dim)
            context = tokens if context is None else torch.cat([context.to(h.dtype), tokens], dim=1)
        if context is None:
            context = h.new_zeros(bc, 1, cfg.context_dim)
        context = context.to(h.dtype)
        if f > 1 and not per_frame:
            emb = emb.repeat_interleave(f, dim=0)
            # the context stays [b, L, D]: cross-attention folds the frames into the query length
        if emb_per_latent:
            return _Conditioning(emb.repeat(bc // b, 1), emb, context)
        return _Conditioning(emb, None, context)


@dataclass(frozen=True)
class _Rows:
    """How a forward pass's batch is laid out."""
    latents: int              # B: latents in x
    conditionings: int        # k·B rows of context / image_embed (k conditionings per latent)
    frames: int               # F (1 for an image input)
    num_frames: int | None    # frames the temporal layers see (None: image mode)
    video: bool


class _Conditioning(NamedTuple):
    emb: torch.Tensor                 # [(k·B·F), E]: the ResBlocks' embedding per conditioning and frame
    emb_latent: torch.Tensor | None   # [(B·F), E] when the embedding is per latent (shared-latent prefix)
    context: torch.Tensor             # cross-attention tokens


def conditioning_batch(b: int, context: torch.Tensor | None, image_embed: torch.Tensor | None) -> int:
    """Rows of conditioning: b, or k·b when k conditionings share each of the b latents."""
    rows = {v.shape[0] for v in (context, image_embed) if v is not None}
    if len(rows) > 1:
        raise ValueError(f"context and image_embed have different batch sizes {sorted(rows)}")
    bc = rows.pop() if rows else b
    if bc % b:
        raise ValueError(f"conditioning batch {bc} is not a multiple of the latent batch {b}")
    return bc


def per_condition(v: torch.Tensor, b: int, bc: int, name: str) -> torch.Tensor:
    """A per-sample vector (1, b or bc entries) as bc entries, latent-major like the conditioning rows."""
    v = v.reshape(-1)
    if v.numel() == 1:
        return v.expand(bc)
    if v.numel() == bc:
        return v
    if v.numel() == b:
        return v.repeat(bc // b)
    raise ValueError(f"{name} has {v.numel()} entries; expected 1, {b} or {bc}")


def _fold_frames(v: torch.Tensor | None, b: int, f: int, clip_rank: int, name: str) -> torch.Tensor | None:
    """A per-clip tensor (rank clip_rank) repeated over the frames, or a per-frame one [b, f, ...] folded."""
    if v is None:
        return None
    if v.dim() == clip_rank:
        return v.repeat_interleave(f, dim=0)
    if v.dim() != clip_rank + 1 or v.shape[0] != b or v.shape[1] != f:
        raise ValueError(f"per-frame {name} of shape {tuple(v.shape)} does not match {b} clip(s) of {f} frames")
    return v.flatten(0, 1)


TEMPORAL_KEY_PARTS = (".temporal.", "temp_convs.", "temp_attentions.", "transformer_in.", "fps_embedding.")


def is_temporal_key(name: str) -> bool:
    """Whether a parameter name belongs to a temporal layer (absent from the image model)."""
    return any(part in name or name.startswith(part) for part in TEMPORAL_KEY_PARTS)
