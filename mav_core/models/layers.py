"""Building blocks of the pseudo-3D (space + time) UNet.

Tensors inside the network are frames folded into the batch: [(b f), c, h, w], the layout of an
image UNet. Temporal layers see `num_frames` and mix along f; with num_frames=None (image mode) they
are skipped, so the network is exactly its image model. Every temporal layer starts as the identity:
  - PseudoConv3d: 2D conv, then a 1D temporal conv initialised to a Dirac (identity) kernel;
  - TemporalConvBlock (the ModelScope/UNet3D form): residual branch whose last conv starts at zero;
  - TemporalTransformer: residual attention over frames whose output projection starts at zero.
Module and parameter names follow the UNet3D checkpoint layout (resnets.N.conv1, attentions.N.
transformer_blocks.0.attn1.to_q, temp_attentions.N.proj_out, ...) so image checkpoints load into the
spatial part unchanged and UNet3D checkpoints load with a few renames.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from . import fused


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding [cos | sin] of (possibly fractional) timesteps t: [B] -> [B, dim]."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    return F.pad(emb, (0, 1)) if dim % 2 else emb


class TimestepEmbedding(nn.Module):
    """MLP on a sinusoidal embedding (names: linear_1, linear_2). zero_init makes its output start at 0."""

    def __init__(self, in_dim: int, dim: int, zero_init: bool = False):
        super().__init__()
        self.linear_1 = nn.Linear(in_dim, dim)
        self.linear_2 = nn.Linear(dim, dim)
        if zero_init:
            nn.init.zeros_(self.linear_2.weight)
            nn.init.zeros_(self.linear_2.bias)

    def forward(self, x):
        return self.linear_2(F.silu(self.linear_1(x)))


def temporal_group_norm(norm: nn.GroupNorm, x: torch.Tensor, num_frames: int, silu: bool = False) -> torch.Tensor:
    """GroupNorm whose statistics span all frames of a clip (a GroupNorm on [b, c, f, h, w]); with silu,
    SiLU applied to the result. Statistics are accumulated and the normalisation computed in float32;
    the output is written once in the input's dtype."""
    bf, c, h, w = x.shape
    g = norm.num_groups
    b = bf // num_frames
    if fused.inference():
        return fused.temporal_group_norm(norm, x, num_frames, silu)
    xs = x.reshape(b, num_frames, g, c // g, h * w)   # differentiable statistics
    var, mean = torch.var_mean(xs.float(), dim=(1, 3, 4), keepdim=True, correction=0)
    scale = torch.rsqrt(var + norm.eps)                      # [b, 1, g, 1, 1]
    if norm.affine:
        scale = scale * norm.weight.float().reshape(1, 1, g, c // g, 1)
        shift = norm.bias.float().reshape(1, 1, g, c // g, 1) - mean * scale
    else:
        shift = -mean * scale
    out = torch.addcmul(shift, xs, scale).to(x.dtype).reshape(bf, c, h, w)
    return F.silu(out) if silu else out


def temporal_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                  num_frames: int) -> torch.Tensor:
    """1D convolution over frames with 'same' zero padding, on the folded layout [(b f), c, h, w].

    weight: [c_out, c_in, k]. At large h*w (inference), k batched matmuls accumulate in place
    into one output (no layout change); otherwise a (k x 1) 2D convolution over a (b, c, f, h*w)
    view, which the conv kernels run far faster than broadcast matmuls (measured 8x on CPU)."""
    bf, c, h, w = x.shape
    k = weight.shape[-1]
    weight = weight.to(x.dtype)
    if fused.inference() and h * w >= 256 and k % 2 == 1:
        return fused.temporal_conv(x, weight, bias, num_frames)
    xs = x.reshape(bf // num_frames, num_frames, c, h * w).transpose(1, 2)
    out = F.conv2d(xs, weight[..., None], None if bias is None else bias.to(x.dtype),
                   padding=(weight.shape[-1] // 2, 0))
    return out.transpose(1, 2).reshape(bf, -1, h, w)


class PseudoConv3d(nn.Conv2d):
    """Make-A-Video's pseudo-3D convolution: a 2D conv (this module's own weight, so image checkpoints
    load as they are), then a 1D temporal conv over frames initialised to the identity."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, padding: int = 1,
                 stride: int = 1, temporal_kernel_size: int = 3, temporal: bool = True):
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=padding)
        self.temporal = None
        if temporal:
            self.temporal = nn.Conv1d(out_channels, out_channels, temporal_kernel_size,
                                      padding=temporal_kernel_size // 2)
            nn.init.dirac_(self.temporal.weight)  # identity over time
            nn.init.zeros_(self.temporal.bias)

    def forward(self, x: torch.Tensor, num_frames: int | None = None) -> torch.Tensor:
        x = super().forward(x)
        if self.temporal is None or num_frames is None:
            return x
        return temporal_conv(x, self.temporal.weight, self.temporal.bias, num_frames)


class TemporalConvBlock(nn.Module):
    """The UNet3D temporal conv stack: 4 x (GroupNorm, SiLU, conv k=3 over frames) as a residual;
    conv4 starts at zero, so the block starts as the identity. Parameter names follow the UNet3D
    layout (conv1.0 norm / conv1.2 conv; convN.0 norm / convN.3 conv for N > 1)."""

    def __init__(self, channels: int, groups: int = 32, dropout: float = 0.0):
        super().__init__()

        def stage(first: bool):
            conv = nn.Conv3d(channels, channels, (3, 1, 1), padding=(1, 0, 0))
            if first:
                return nn.Sequential(nn.GroupNorm(groups, channels), nn.SiLU(), conv)
            return nn.Sequential(nn.GroupNorm(groups, channels), nn.SiLU(), nn.Dropout(dropout), conv)

        self.conv1, self.conv2, self.conv3, self.conv4 = stage(True), stage(False), stage(False), stage(False)
        nn.init.zeros_(self.conv4[-1].weight)
        nn.init.zeros_(self.conv4[-1].bias)

    def forward(self, x: torch.Tensor, num_frames: int | None = None) -> torch.Tensor:
        if num_frames is None:
            return x
        h = x
        for stage in (self.conv1, self.conv2, self.conv3, self.conv4):
            norm, conv = stage[0], stage[-1]
            h = temporal_group_norm(norm, h, num_frames, silu=True)
            if len(stage) == 4:
                h = stage[2](h)
            h = temporal_conv(h, conv.weight[:, :, :, 0, 0], conv.bias, num_frames)
        return h.add_(x) if fused.inference() else x + h


class ResBlock(nn.Module):
    """ResNet block conditioned on an embedding (timestep + fps + image embedding, summed upstream).
    With pseudo3d, both convs are PseudoConv3d."""

    def __init__(self, in_channels: int, out_channels: int, emb_channels: int, groups: int = 32,
                 eps: float = 1e-5, dropout: float = 0.0, pseudo3d: bool = True):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, in_channels, eps=eps)
        self.conv1 = PseudoConv3d(in_channels, out_channels, temporal=pseudo3d)
        self.time_emb_proj = nn.Linear(emb_channels, out_channels)
        self.norm2 = nn.GroupNorm(groups, out_channels, eps=eps)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = PseudoConv3d(out_channels, out_channels, temporal=pseudo3d)
        self.conv_shortcut = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else None

    def forward(self, x, emb, num_frames=None):
        inplace = fused.inference()
        h = self.conv1(F.silu(self.norm1(x), inplace=inplace), num_frames)
        proj = self.time_emb_proj(F.silu(emb))[:, :, None, None]
        h = h.add_(proj) if inplace else h + proj
        h = self.conv2(self.dropout(F.silu(self.norm2(h), inplace=inplace)), num_frames)
        skip = x if self.conv_shortcut is None else self.conv_shortcut(x)
        return h.add_(skip) if inplace else skip + h


SDPA_MAX_BATCH = 32768   # CUDA's flash / memory-efficient kernels put the batch on a grid axis limited to
                         # 65535 blocks ("invalid configuration argument" beyond); temporal attention's batch
                         # is the pixel count (65536 at 256x256)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """scaled_dot_product_attention over [batch, heads, L, D], in chunks of at most SDPA_MAX_BATCH along
    the batch axis (one call when it fits, the usual case)."""
    n = q.shape[0]
    if n <= SDPA_MAX_BATCH:
        return F.scaled_dot_product_attention(q, k, v)
    return torch.cat([F.scaled_dot_product_attention(q[i:i + SDPA_MAX_BATCH], k[i:i + SDPA_MAX_BATCH],
                                                     v[i:i + SDPA_MAX_BATCH]) for i in range(0, n, SDPA_MAX_BATCH)])


class Attention(nn.Module):
    """Multi-head attention through scaled_dot_product_attention on 4-D (B, heads, L, D) tensors.

    x: [B, L, C] tokens attending over their L positions (to `context` [B, Lc, Cc] when given).
    Cross-attention with a context shared by groups of queries (the frames of a clip): x [(b n), L, C]
    with context [b, Lc, Cc] folds the n into the query length (keys computed once per clip).
    Temporal attention: x [b, f, L, C] with `over_frames` attends along f for each of the L positions,
    on strided views (no (b L) f C gather)."""

    def __init__(self, query_dim: int, heads: int, dim_head: int, context_dim: int | None = None):
        super().__init__()
        inner = heads * dim_head
        self.heads = heads
        self.to_q = nn.Linear(query_dim, inner, bias=False)
        self.to_k = nn.Linear(context_dim or query_dim, inner, bias=False)
        self.to_v = nn.Linear(context_dim or query_dim, inner, bias=False)
        self.to_out = nn.ModuleList([nn.Linear(inner, query_dim)])

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None, over_frames: bool = False,
                residual: torch.Tensor | None = None) -> torch.Tensor:
        """residual: returns residual + attention(x), accumulated into residual when possible (linear_into)."""
        if over_frames:
            return self._over_frames(x, residual)
        shape = x.shape
        if context is not None and context.shape[0] != x.shape[0]:
            if x.shape[0] % context.shape[0]:
                raise ValueError(f"context batch {context.shape[0]} does not divide the query batch {x.shape[0]}")
            x = x.reshape(context.shape[0], -1, x.shape[-1])        # [(b n), L, C] -> [b, n L, C]
        context = x if context is None else context
        q, k, v = self.to_q(x), self.to_k(context), self.to_v(context)
        q, k, v = (rearrange(t, "b l (h d) -> b h l d", h=self.heads) for t in (q, k, v))
        out = rearrange(attention(q, k, v), "b h l d -> b l (h d)").reshape(*shape[:-1], -1)
        return self.to_out[0](out) if residual is None else fused.linear_into(residual, out, self.to_out[0])

    def _over_frames(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        b, f, n, _ = x.shape
        q, k, v = self.to_q(x), self.to_k(x), self.to_v(x)     # [b, f, n, inner]
        inner = q.shape[-1]
        outs = []
        for i in range(b):                                   # strided (n, heads, f, d) views per clip
            qi, ki, vi = (t[i].view(f, n, self.heads, inner // self.heads).permute(1, 2, 0, 3) for t in (q, k, v))
            outs.append(attention(qi, ki, vi).permute(2, 0, 1, 3))  # [f, n, heads, d]; batch n = pixels
        out = torch.stack(outs).reshape(b, f, n, inner)
        return self.to_out[0](out) if residual is None else fused.linear_into(residual, out, self.to_out[0])


class GEGLU(nn.Module):
    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out * 2)

    def forward(self, x):
        if fused.inference():
            return fused.geglu(x, self.proj)
        h, gate = self.proj(x).chunk(2, dim=-1)
        return h * F.gelu(gate)


class FeedForward(nn.Module):
    def __init__(self, dim: int, mult: int = 4):
        super().__init__()
        self.net = nn.ModuleList([GEGLU(dim, dim * mult), nn.Identity(), nn.Linear(dim * mult, dim)])

    def forward(self, x, residual: torch.Tensor | None = None):
        """residual: returns residual + ff(x); at inference it is accumulated into residual chunk by chunk
        (GEGLU hidden state of one chunk at a time, second GEMM added in place: linear_into)."""
        shape = x.shape
        out_proj = self.net[2]
        if fused.fusable(x, residual, out_proj.weight) and residual.shape == shape:
            return fused.feed_forward_into(residual, x, self.net[0], out_proj)
        h = self.net[0](x.reshape(-1, shape[-1])).reshape(*shape[:-1], -1)
        return out_proj(h) if residual is None else fused.linear_into(residual, h, out_proj)


class TransformerBlock(nn.Module):
    """Self-attention, then cross-attention to `context` (or a second self-attention when
    context_dim is None), then a GEGLU feed-forward; pre-LayerNorm residuals."""

    def __init__(self, dim: int, heads: int, dim_head: int, context_dim: int | None):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn1 = Attention(dim, heads, dim_head)
        self.norm2 = nn.LayerNorm(dim)
        self.attn2 = Attention(dim, heads, dim_head, context_dim)
        self.norm3 = nn.LayerNorm(dim)
        self.ff = FeedForward(dim)
        self.cross = context_dim is not None

    def forward(self, x, context=None, over_frames: bool = False, fork: int = 1):
        """x: [B, L, C]; with over_frames, [b, f, L, C] and the self-attentions run along f.
        fork > 1: x holds shared latents; after the self-attention each is repeated for `fork` contexts.
        At inference a contiguous x is updated in place (the residuals accumulate into it): pass a tensor
        the caller owns."""
        x = self.attn1(self.norm1(x), over_frames=over_frames, residual=x)
        if fork > 1:
            x = x.repeat(fork, *([1] * (x.dim() - 1)))
        x = (self.attn2(self.norm2(x), context, residual=x) if self.cross else
             self.attn2(self.norm2(x), over_frames=over_frames, residual=x))
        return self.ff(self.norm3(x), residual=x)


class SpatialTransformer(nn.Module):
    """Spatial self-attention + cross-attention to the context, over the h*w tokens of each frame."""

    def __init__(self, channels: int, heads: int, dim_head: int, context_dim: int, groups: int = 32,
                 linear_projection: bool = False):
        super().__init__()
        inner = heads * dim_head
        self.norm = nn.GroupNorm(groups, channels, eps=1e-6)
        self.linear_projection = linear_projection
        if linear_projection:
            self.proj_in, self.proj_out = nn.Linear(channels, inner), nn.Linear(inner, channels)
        else:
            self.proj_in, self.proj_out = nn.Conv2d(channels, inner, 1), nn.Conv2d(inner, channels, 1)
        self.transformer_blocks = nn.ModuleList([TransformerBlock(inner, heads, dim_head, context_dim)])

    def forward(self, x, context, fork: int = 1):
        """fork > 1: x holds shared latents (a CFG pair's one latent); everything before the first
        cross-attention runs once on them, then they are repeated for `fork` contexts."""
        bf, c, h, w = x.shape
        hs = self.norm(x)
        fast = fused.token_fast_path(x, self.proj_in)
        if fast and h * w >= 256:     # below 256 tokens the conv / linear kernels are faster than the GEMMs
            hs = fused.channels_to_tokens(hs, self.proj_in)
        elif self.linear_projection:
            hs = self.proj_in(rearrange(hs, "b c h w -> b (h w) c"))
        else:
            hs = rearrange(self.proj_in(hs), "b c h w -> b (h w) c")
            if fused.inference():
                hs = hs.contiguous()   # token-major: the blocks accumulate their residuals in place
        for i, block in enumerate(self.transformer_blocks):
            hs = block(hs, context, fork=fork if i == 0 else 1)
        if fast:
            if fork > 1:
                x = x.repeat(fork, 1, 1, 1)
            return fused.tokens_into_channels(x, hs, self.proj_out)
        if self.linear_projection:
            hs = self.proj_out(hs)
        hs = rearrange(hs, "b (h w) c -> b c h w", h=h, w=w)
        if not self.linear_projection:
            hs = self.proj_out(hs)
        if fork > 1:
            x = x.repeat(fork, 1, 1, 1)
        return hs.add_(x) if fused.inference() else x + hs


def frame_position_embedding(num_frames: int, dim: int, device, dtype) -> torch.Tensor:
    return timestep_embedding(torch.arange(num_frames, device=device), dim).to(dtype)


class TemporalTransformer(nn.Module):
    """Make-A-Video's temporal attention: each pixel attends over the frames of its clip.
    Residual, output projection initialised to zero, so it starts as the identity. With
    position_embedding, a sinusoidal frame index is added so attention knows the order of frames."""

    def __init__(self, channels: int, heads: int, dim_head: int, groups: int = 32,
                 position_embedding: bool = True):
        super().__init__()
        inner = heads * dim_head
        self.norm = nn.GroupNorm(groups, channels, eps=1e-6)
        self.proj_in = nn.Linear(channels, inner)
        self.transformer_blocks = nn.ModuleList([TransformerBlock(inner, heads, dim_head, None)])
        self.proj_out = nn.Linear(inner, channels)
        nn.init.zeros_(self.proj_out.weight)
        nn.init.zeros_(self.proj_out.bias)
        self.position_embedding = position_embedding

    def forward(self, x: torch.Tensor, num_frames: int | None = None) -> torch.Tensor:
        if num_frames is None:
            return x
        bf, c, h, w = x.shape
        hs = temporal_group_norm(self.norm, x, num_frames)
        fast = fused.token_fast_path(x, self.proj_in)
        if fast:
            hs = fused.channels_to_tokens(hs, self.proj_in).reshape(bf // num_frames, num_frames, h * w, -1)
        else:
            hs = self.proj_in(rearrange(hs, "(b f) c h w -> b f (h w) c", f=num_frames))  # tokens in frame order
        if self.position_embedding:
            pos = frame_position_embedding(num_frames, hs.shape[-1], hs.device, hs.dtype)[:, None]
            hs = hs.add_(pos) if fused.inference() else hs + pos
        for block in self.transformer_blocks:
            hs = block(hs, over_frames=True)
        if fast:
            return fused.tokens_into_channels(x, hs.reshape(bf, h * w, -1), self.proj_out)
        hs = self.proj_out(hs)
        hs = rearrange(hs, "b f (h w) c -> (b f) c h w", h=h, w=w)
        return x + hs


class Downsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x):
        return self.conv(x)


class Upsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x, size=None):
        x = F.interpolate(x, size=size, mode="nearest") if size else F.interpolate(x, scale_factor=2.0, mode="nearest")
        return self.conv(x)
