"""Hand-fused inference kernels of the UNet's layers: in-place residual accumulation into one GEMM, GroupNorm
statistics over frames from the fast kernel, temporal convolution as batched matmuls, projections between
channel-major frames and token-major sequences as batched GEMMs, chunked feed-forward.

Each layer in `layers.py` holds the reference maths and one switch per call site:

    if fused.inference():          # no autograd graph, not traced by torch.compile
        return fused.temporal_conv(x, weight, bias, num_frames)
    ...reference...

Training, gradients and torch.compile take the reference path (the compiler fuses that one itself; the
hand-fused in-place paths compiled to an all-NaN output on the small benchmark config in bf16). Outputs of
both paths match to float tolerance (tests/test_perf_equivalence.py).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# Rows of a fused feed-forward chunk: about this many elements of its GEGLU hidden state, so the hidden
# state of one chunk stays in the CPU's L2 between the GEMMs (measured 1.7-2x for the whole feed-forward
# in bf16 at 64 and 512 channels, 1 thread); below 256 rows the per-call overhead dominates.
FF_CHUNK_ELEMENTS = 1 << 20


def inference() -> bool:
    """Whether the eager inference fast paths apply: no autograd graph is being recorded, and the code is
    not being traced by torch.compile (the compiler fuses the plain path itself; the hand-fused in-place
    paths compiled to an all-NaN output on the small benchmark config in bf16)."""
    return not torch.is_grad_enabled() and not compiling()


def compiling() -> bool:
    compiler = getattr(torch, "compiler", None)
    if compiler is not None and hasattr(compiler, "is_compiling"):
        return compiler.is_compiling()
    return False


def fusable(x: torch.Tensor, residual: torch.Tensor | None, weight: torch.Tensor) -> bool:
    """Whether `residual += x @ weight.T` can run as one in-place GEMM: inference, one dtype for all three
    (no autocast casting), and a contiguous residual to accumulate into."""
    return (residual is not None and inference() and residual.is_contiguous()
            and x.dtype == residual.dtype == weight.dtype and x.device == residual.device
            and not autocast_on(x.device.type))


def autocast_on(device_type: str) -> bool:
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
    if not fusable(x, residual, linear.weight) or x.shape[:-1] != residual.shape[:-1]:
        out = linear(x)
        return out.add_(residual) if inference() else residual + out
    dst = residual.view(-1, residual.shape[-1])
    if linear.bias is not None:
        dst.add_(linear.bias)
    dst.addmm_(x.reshape(-1, x.shape[-1]), linear.weight.t())
    return residual


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


def token_fast_path(x: torch.Tensor, proj: nn.Module) -> bool:
    return fusable(x, x, proj.weight) and x.dim() == 4


def temporal_group_norm(norm: nn.GroupNorm, x: torch.Tensor, num_frames: int, silu: bool = False) -> torch.Tensor:
    """layers.temporal_group_norm at inference: per (frame, group) statistics from the fast GroupNorm kernel
    over contiguous memory, combined over the frames of each clip (equal counts): var = mean of variances +
    variance of means (bf16/fp16 input: the kernel accumulates in float32; no float32 copy of the activation)."""
    bf, c, h, w = x.shape
    g = norm.num_groups
    b = bf // num_frames
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


def temporal_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, num_frames: int) -> torch.Tensor:
    """layers.temporal_conv at large h*w (inference, odd kernel): k batched matmuls accumulate in place into
    one output (no layout change)."""
    bf, c, h, w = x.shape
    k = weight.shape[-1]
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


def geglu(x: torch.Tensor, proj: nn.Linear) -> torch.Tensor:
    """layers.GEGLU at inference: two GEMMs on the weight's halves (contiguous row slices, no copy):
    contiguous h and gate make GELU vectorise (2.5x in bf16 vs the strided half) and the next Linear read h
    without a copy."""
    w, b = proj.weight, proj.bias
    n = w.shape[0] // 2
    return F.linear(x, w[:n], b[:n]).mul_(F.gelu(F.linear(x, w[n:], b[n:])))


def feed_forward_into(residual: torch.Tensor, x: torch.Tensor, geglu_layer: nn.Module, out_proj: nn.Linear) -> torch.Tensor:
    """layers.FeedForward at inference: residual + ff(x) accumulated into residual chunk by chunk (the GEGLU
    hidden state of one chunk at a time, the second GEMM added in place)."""
    rows, dst = x.reshape(-1, x.shape[-1]), residual.view(-1, x.shape[-1])
    chunk = max(256, FF_CHUNK_ELEMENTS // out_proj.weight.shape[1])
    for s in range(0, rows.shape[0], chunk):
        linear_into(dst[s:s + chunk], geglu_layer(rows[s:s + chunk]), out_proj)
    return residual
