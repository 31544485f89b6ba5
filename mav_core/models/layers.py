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


def _inference() -> bool:
    """Whether the eager inference fast paths apply: no autograd graph is being recorded, and the code is
    not being traced by torch.compile (the compiler fuses the plain path itself; the hand-fused in-place
    paths compiled to an all-NaN output on the small benchmark config in bf16)."""
    return not torch.is_grad_enabled() and not _compiling()


def _compiling() -> bool:
    compiler = getattr(torch, "compiler", None)
    if compiler is not None and hasattr(compiler, "is_compiling"):
        return compiler.is_compiling()
    return False


def _fusable(x: torch.Tensor, residual: torch.Tensor | None, weight: torch.Tensor) -> bool:
    """Whether `residual += x @ weight.T` can run as one in-place GEMM: inference, one dtype for all three
    (no autocast casting), and a contiguous residual to accumulate into."""
    return (residual is not None and _inference() and residual.is_contiguous()
            and x.dtype == residual.dtype == weight.dtype and x.device == residual.device
            and not _autocast_on(x.device.type))


def _autocast_on(device_type: str) -> bool:
    try:
        return torch.is_autocast_enabled(device_type)
    except TypeError:   # torch < 2.4: no device argument
        return torch.is_autocast_cpu_enabled() if device_type == "cpu" else torch.is_autocast_enabled()
    except RuntimeError:   # a device type autocast does not know (e.g. meta): it cannot be on there
        return False


def linear_into(residual: torch.Tensor, x: torch.Tensor, linear: nn.Linear) -> torch.Tensor:
    """residual + linear(x), accumulated into `residual` in place when _fusable: the bias is added to
    the residual and the GEMM accumulates on top (beta = 1), so the projection's output is never
    allocated, written and re-read. Otherwise the plain residual + linear(x)."""
    if not _fusable(x, residual, linear.weight) or x.shape[:-1] != residual.shape[:-1]:
        out = linear(x)
        return out.add_(residual) if _inference() else residual + out
    dst = residual.view(-1, residual.shape[-1])
    if linear.bias is not None:
        dst.add_(linear.bias)
    dst.addmm_(x.reshape(-1, x.shape[-1]), linear.weight.t())
    return residual


def temporal_group_norm(norm: nn.GroupNorm, x: torch.Tensor, num_frames: int, silu: bool = False) -> torch.Tensor:
    """GroupNorm whose statistics span all frames of a clip (a GroupNorm on [b, c, f, h, w]); with silu,
    SiLU applied to the result. Statistics are accumulated and the normalisation computed in float32;
    the output is written once in the input's dtype."""
    bf, c, h, w = x.shape
    g = norm.num_groups
    b = bf // num_frames
    if _inference():
        # per (frame, group) statistics from the fast GroupNorm kernel over contiguous memory, then combined
        # over the frames of each clip (equal counts): var = mean of variances + variance of means
        # (bf16/fp16 input: the kernel accumulates in float32; no float32 copy of the activation)
        _, mean_f, rstd_f = torch.native_group_norm(x.contiguous(), None, None, bf, c, h * w, g, norm.eps)
        mean_f, rstd_f = mean_f.float().reshape(b, num_frames, g), rstd_f.float().reshape(b, num_frames, g)
        var_f = rstd_f.pow(-2) - norm.eps
        mean = mean_f.mean(dim=1)
        var = (var_f + (mean_f - mean[:, None]).square()).mean(dim=1)          # [b, g]
        mean, var = mean.repeat_interleave(c // g, dim=1), var.repeat_interleave(c // g, dim=1)
        weight = None if not norm.affine else norm.weight.float()
        bias = None if not norm.affine else norm.bias.float()
        # the scale-and-shift is an inference batch norm of each clip's [f, c, h*w] with the clip's
        # statistics as running statistics: one vectorised pass, float32 math, output in x's dtype
        # (measured 5x faster in bf16 than a mixed-dtype addcmul)
        xv = x.reshape(b, num_frames, c, h * w)
        outs = [F.batch_norm(xv[i], mean[i], var[i], weight, bias, False, 0.0, norm.eps) for i in range(b)]
        out = (outs[0] if b == 1 else torch.stack(outs)).reshape(bf, c, h, w)
        return F.silu(out, inplace=True) if silu else out
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
    if _inference() and h * w >= 256 and k % 2 == 1:
        b, co, pad = bf // num_frames, weight.shape[0], k // 2
        taps = weight.permute(2, 0, 1).contiguous()          # [k, c_out, c_in]
        xs = x.reshape(b, num_frames, c, h * w)
        out = torch.matmul(taps[pad], xs)                   # centre tap: [b, f, c_out, hw]
        if bias is not None:
            out.add_(bias.to(x.dtype)[:, None])
        for j in range(k):
            shift = j - pad                                  # out[t] += W_j @ x[t + shift]
            n = num_frames - abs(shift)
            if shift == 0 or n <= 0:
                continue
            wj = taps[j].expand(n, co, c)
            for i in range(b):
                dst = out[i, max(0, -shift):max(0, -shift) + n]
                dst.baddbmm_(wj, xs[i, max(0, shift):max(0, shift) + n])
        return out.reshape(bf, co, h, w)
    xs = x.reshape(bf // num_frames, num_frames, c, h * w).transpose(1, 2)
    out = F.conv2d(xs, weight[..., None], None if bias is None else bias.to(x.dtype),
                   padding=(weight.shape[-1] // 2, 0))
    return out.transpose(1, 2).reshape(bf, -1, h, w)


# From this many pixels per frame, 2D convs run through a channels_last copy (CPU). Off (None) by default:
# the conv alone is 2x faster at 64 ch 32x32, but the small UNet step at 16 frames 32x32 measured
# 8.97 s with it vs 8.34 s without (1 thread, alternated, medians of 3): the copies cost more.
CHANNELS_LAST_MIN_PIXELS: int | None = None


def conv2d(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """conv(x); at high resolution on the CPU (inference), through a channels_last copy: oneDNN convolves
    NHWC without reordering to its blocked layout (measured 2x at 64 channels, 32x32, 1 thread). The
    result is contiguous NCHW like the input."""
    if (CHANNELS_LAST_MIN_PIXELS is not None and x.device.type == "cpu" and _inference()
            and x.shape[-1] * x.shape[-2] >= CHANNELS_LAST_MIN_PIXELS
            and x.dim() == 4):
        if conv.padding_mode != "zeros":
            return nn.Conv2d._conv_forward(conv, x, conv.weight, conv.bias)
        out = F.conv2d(x.contiguous(memory_format=torch.channels_last),
                       conv.weight.contiguous(memory_format=torch.channels_last), conv.bias, conv.stride,
                       conv.padding, conv.dilation, conv.groups)
        return out.contiguous()
    return nn.Conv2d._conv_forward(conv, x, conv.weight, conv.bias)


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
        x = conv2d(self, x)
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
        return h.add_(x) if _inference() else x + h


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
        inplace = _inference()
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
        return self.to_out[0](out) if residual is None else linear_into(residual, out, self.to_out[0])

    def _over_frames(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        b, f, n, _ = x.shape
        q, k, v = self.to_q(x), self.to_k(x), self.to_v(x)     # [b, f, n, inner]
        inner = q.shape[-1]
        outs = []
        for i in range(b):                                   # strided (n, heads, f, d) views per clip
            qi, ki, vi = (t[i].view(f, n, self.heads, inner // self.heads).permute(1, 2, 0, 3) for t in (q, k, v))
            outs.append(attention(qi, ki, vi).permute(2, 0, 1, 3))  # [f, n, heads, d]; batch n = pixels
        out = torch.stack(outs).reshape(b, f, n, inner)
        return self.to_out[0](out) if residual is None else linear_into(residual, out, self.to_out[0])


class GEGLU(nn.Module):
    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out * 2)

    def forward(self, x):
        if _inference():
            # two GEMMs on the weight's halves (contiguous row slices, no copy): contiguous h and gate make
            # GELU vectorise (2.5x in bf16 vs the strided half) and the next Linear read h without a copy
            w, b = self.proj.weight, self.proj.bias
            n = w.shape[0] // 2
            return F.linear(x, w[:n], b[:n]).mul_(F.gelu(F.linear(x, w[n:], b[n:])))
        h, gate = self.proj(x).chunk(2, dim=-1)
        return h * F.gelu(gate)


def channels_to_tokens(x: torch.Tensor, proj: nn.Module) -> torch.Tensor:
    """[N, C, H, W] -> [N, H*W, D]: a per-pixel projection (Linear [D, C] or 1x1 conv) of the channels,
    computed as one batched GEMM that reads the channel-major input in place and writes the token-major
    output contiguously (no layout copy; bias written with the GEMM). Inference fast path."""
    n, c, h, w = x.shape
    weight = proj.weight.reshape(proj.weight.shape[0], c)
    tokens = x.reshape(n, c, h * w).transpose(1, 2)
    if proj.bias is None:
        return torch.bmm(tokens, weight.t().expand(n, -1, -1))
    return torch.baddbmm(proj.bias, tokens, weight.t().expand(n, -1, -1))


def tokens_into_channels(x: torch.Tensor, tokens: torch.Tensor, proj: nn.Module) -> torch.Tensor:
    """x [N, C, H, W] + proj(tokens [N, H*W, D]) (Linear [C, D] or 1x1 conv): x plus the bias written once,
    then the projection accumulated on top as one batched GEMM (beta = 1) reading the token-major input in
    place; the result is contiguous NCHW (x is not modified). Inference fast path."""
    n, c, h, w = x.shape
    flat = x.reshape(n, c, h * w)
    out = flat + proj.bias[:, None] if proj.bias is not None else flat.clone()
    out.baddbmm_(proj.weight.reshape(c, -1).expand(n, -1, -1), tokens.reshape(n, h * w, -1).transpose(1, 2))
    return out.view(n, c, h, w)


def _token_fast_path(x: torch.Tensor, proj: nn.Module) -> bool:
    return _fusable(x, x, proj.weight) and x.dim() == 4


# Rows of a fused feed-forward chunk: about this many elements of its GEGLU hidden state, so the hidden
# state of one chunk stays in the CPU's L2 between the GEMMs (measured 1.7-2x for the whole feed-forward
# in bf16 at 64 and 512 channels, 1 thread); below 256 rows the per-call overhead dominates.
FF_CHUNK_ELEMENTS = 1 << 20


class FeedForward(nn.Module):
    def __init__(self, dim: int, mult: int = 4):
        super().__init__()
        self.net = nn.ModuleList([GEGLU(dim, dim * mult), nn.Identity(), nn.Linear(dim * mult, dim)])

    def forward(self, x, residual: torch.Tensor | None = None):
        """residual: returns residual + ff(x); at inference it is accumulated into residual chunk by chunk
        (GEGLU hidden state of one chunk at a time, second GEMM added in place: linear_into)."""
        shape = x.shape
        out_proj = self.net[2]
        if _fusable(x, residual, out_proj.weight) and residual.shape == shape:
            rows, dst = x.reshape(-1, shape[-1]), residual.view(-1, shape[-1])
            chunk = max(256, FF_CHUNK_ELEMENTS // out_proj.weight.shape[1])
            for s in range(0, rows.shape[0], chunk):
                linear_into(dst[s:s + chunk], self.net[0](rows[s:s + chunk]), out_proj)
            return residual
        h = self.net[0](x.reshape(-1, shape[-1])).reshape(*shape[:-1], -1)
        return out_proj(h) if residual is None else linear_into(residual, h, out_proj)


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
        fast = _token_fast_path(x, self.proj_in)
        if fast and h * w >= 256:     # below 256 tokens the conv / linear kernels are faster than the GEMMs
            hs = channels_to_tokens(hs, self.proj_in)
        elif self.linear_projection:
            hs = self.proj_in(rearrange(hs, "b c h w -> b (h w) c"))
        else:
            hs = rearrange(self.proj_in(hs), "b c h w -> b (h w) c")
            if _inference():
                hs = hs.contiguous()   # token-major: the blocks accumulate their residuals in place
        for i, block in enumerate(self.transformer_blocks):
            hs = block(hs, context, fork=fork if i == 0 else 1)
        if fast:
            if fork > 1:
                x = x.repeat(fork, 1, 1, 1)
            return tokens_into_channels(x, hs, self.proj_out)
        if self.linear_projection:
            hs = self.proj_out(hs)
        hs = rearrange(hs, "b (h w) c -> b c h w", h=h, w=w)
        if not self.linear_projection:
            hs = self.proj_out(hs)
        if fork > 1:
            x = x.repeat(fork, 1, 1, 1)
        return hs.add_(x) if _inference() else x + hs


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
        fast = _token_fast_path(x, self.proj_in)
        if fast:
            hs = channels_to_tokens(hs, self.proj_in).reshape(bf // num_frames, num_frames, h * w, -1)
        else:
            hs = self.proj_in(rearrange(hs, "(b f) c h w -> b f (h w) c", f=num_frames))  # tokens in frame order
        if self.position_embedding:
            pos = frame_position_embedding(num_frames, hs.shape[-1], hs.device, hs.dtype)[:, None]
            hs = hs.add_(pos) if _inference() else hs + pos
        for block in self.transformer_blocks:
            hs = block(hs, over_frames=True)
        if fast:
            return tokens_into_channels(x, hs.reshape(bf, h * w, -1), self.proj_out)
        hs = self.proj_out(hs)
        hs = rearrange(hs, "b f (h w) c -> (b f) c h w", h=h, w=w)
        return x + hs


class Downsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x):
        return conv2d(self.conv, x)


class Upsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x, size=None):
        x = F.interpolate(x, size=size, mode="nearest") if size else F.interpolate(x, scale_factor=2.0, mode="nearest")
        return conv2d(self.conv, x)
