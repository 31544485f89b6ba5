"""The inference fast paths (in-place ops, fused temporal GroupNorm statistics, matmul temporal convs,
strided temporal attention, frames folded into cross-attention queries) compute the same function as the
differentiable paths used in training."""
import math

import pytest
import torch

from mav_core.models.layers import TemporalConvBlock, TemporalTransformer, temporal_conv, temporal_group_norm
from mav_core.models.unet import SpaceTimeUNet, UNetConfig


pytestmark = pytest.mark.usefixtures("one_thread")   # bit-exact comparisons: one intra-op thread


def _randomise(module, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(max(1, p[0].numel() if p.dim() > 1 else 4)))


def _rel(a, b):
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize("size", [8, 16])   # 16x16 = 256 pixels takes the matmul temporal conv
def test_temporal_layers_fast_path_equals_training_path(size):
    g = torch.Generator().manual_seed(1)
    x = 3 + 2 * torch.randn(2 * 5, 32, size, size, generator=g)   # offset mean: the statistics must hold up
    norm = torch.nn.GroupNorm(8, 32)
    _randomise(norm)
    w, b = torch.randn(32, 32, 3, generator=g) / 10, torch.randn(32, generator=g)
    block = TemporalConvBlock(32, 8).eval()
    attn = TemporalTransformer(32, 2, 16, 8).eval()
    _randomise(block, 2)
    _randomise(attn, 3)
    with torch.no_grad():
        fast = [temporal_group_norm(norm, x, 5, silu=True), temporal_conv(x, w, b, 5), block(x, 5), attn(x, 5)]
    with torch.enable_grad():
        slow = [temporal_group_norm(norm, x, 5, silu=True), temporal_conv(x, w, b, 5), block(x, 5), attn(x, 5)]
    # reference temporal GroupNorm: nn.GroupNorm on the [b, c, f, h, w] layout
    ref = torch.nn.functional.silu(norm(x.reshape(2, 5, 32, size, size).transpose(1, 2))).transpose(1, 2)
    assert _rel(fast[0], ref.reshape(x.shape)) < 1e-5
    for a, s in zip(fast, slow):
        assert _rel(a, s.detach()) < 1e-5


def test_unet3d_layout_fast_path_equals_training_path():
    cfg = UNetConfig(in_channels=4, out_channels=4, block_out_channels=(32, 64), layers_per_block=1,
                     attention_levels=(True, False), attention_head_dim=16, context_dim=24, norm_num_groups=8,
                     linear_projection=True, pseudo3d_convs=False, temporal_conv_blocks=True,
                     temporal_position_embedding=False, transformer_in=True, transformer_in_heads=2,
                     transformer_in_head_dim=16, fps_conditioning=False)
    model = SpaceTimeUNet(cfg).eval()
    _randomise(model, 4)
    g = torch.Generator().manual_seed(5)
    x = torch.randn(2, 4, 6, 16, 16, generator=g)
    ctx = torch.randn(2, 7, 24, generator=g)
    t = torch.tensor([10.0, 500.0])
    with torch.no_grad():
        fast = model(x, t, ctx)
    slow = model(x, t, ctx)
    assert _rel(fast, slow.detach()) < 1e-5
    # frames folded into the cross-attention queries == the context repeated for every frame
    frames = torch.stack([model(x[:, :, i], t, ctx).detach() for i in range(6)], dim=2)
    with torch.no_grad():
        image_mode = model(x, t, ctx, temporal=False)
    assert _rel(image_mode, frames) < 1e-5
    slow.float().mean().backward()                       # the training path still has gradients everywhere
    assert all(p.grad is not None for p in model.parameters())


def _unet3d_model(seed=4, image_embed_dim=0, extra=0):
    cfg = UNetConfig(in_channels=4, out_channels=4, block_out_channels=(32, 64), layers_per_block=1,
                     attention_levels=(True, False), attention_head_dim=16, context_dim=24, norm_num_groups=8,
                     linear_projection=True, pseudo3d_convs=False, temporal_conv_blocks=True,
                     temporal_position_embedding=False, transformer_in=True, transformer_in_heads=2,
                     transformer_in_head_dim=16, image_embed_dim=image_embed_dim, extra_in_channels=extra)
    model = SpaceTimeUNet(cfg).eval()
    _randomise(model, seed)
    return model


@pytest.mark.parametrize("image_embed_dim", [6, 0])   # 0: the embedding is per latent, the first ResBlock shared too
def test_shared_latent_equals_repeated_batch(image_embed_dim):
    """A CFG pair as one latent under two conditionings == the latent repeated in the batch."""
    model = _unet3d_model(image_embed_dim=image_embed_dim, extra=2)
    model.config.fps_conditioning = True
    from mav_core.models.layers import TimestepEmbedding
    model.fps_embedding = TimestepEmbedding(32, 128)
    _randomise(model.fps_embedding, 11)
    g = torch.Generator().manual_seed(8)
    x, extra = torch.randn(2, 4, 5, 16, 16, generator=g), torch.randn(2, 2, 5, 16, 16, generator=g)
    ctx, emb = torch.randn(4, 7, 24, generator=g), torch.randn(4, 6, generator=g)
    t, fps = torch.tensor([10.0, 500.0]), torch.tensor([4.0, 12.0])
    with torch.no_grad():
        shared = model(x, t, ctx, emb, fps=fps, extra=extra)
        repeated = model(x.repeat(2, 1, 1, 1, 1), t.repeat(2), ctx, emb, fps=fps.repeat(2), extra=extra.repeat(2, 1, 1, 1, 1))
    assert shared.shape == repeated.shape == (4, 4, 5, 16, 16)
    assert _rel(shared, repeated) < 1e-5
    with pytest.raises(ValueError, match="multiple of the latent batch"):
        model(x, t, ctx[:3], emb[:3])
    with pytest.raises(ValueError, match="different batch sizes"):
        model(x, t, ctx, emb[:2])


def test_cfg_denoiser_takes_the_shared_latent_path_with_the_same_result():
    from mav_core.diffusion import CFGDenoiser, Denoiser
    from mav_core.diffusion.schedule import NoiseSchedule
    model = _unet3d_model(seed=9)
    calls = []
    model.register_forward_pre_hook(lambda m, args: calls.append(args[0].shape[0]))
    den = Denoiser(model, NoiseSchedule("cosine"), "v")
    g = torch.Generator().manual_seed(10)
    cond, uncond = {"context": torch.randn(1, 7, 24, generator=g)}, {"context": torch.randn(1, 7, 24, generator=g)}
    x, sigma = torch.randn(1, 4, 5, 16, 16, generator=g), torch.tensor([3.0])
    with torch.no_grad():
        guided = CFGDenoiser(den, cond, uncond, 4.0)(x, sigma)
        c, u = den(x, sigma, **cond), den(x, sigma, **uncond)
    assert calls == [1, 1, 1]          # the pair ran as one call on the un-repeated latent
    assert _rel(guided, u + 4.0 * (c - u)) < 1e-5
    # per-latent inputs that differ between the halves fall back to the repeated batch
    calls.clear()
    model_x = _unet3d_model(seed=9, extra=2)
    model_x.register_forward_pre_hook(lambda m, args: calls.append(args[0].shape[0]))
    den_x = Denoiser(model_x, NoiseSchedule("cosine"), "v")
    e1, e2 = torch.randn(1, 2, 5, 16, 16, generator=g), torch.randn(1, 2, 5, 16, 16, generator=g)
    with torch.no_grad():
        CFGDenoiser(den_x, {**cond, "extra": e1}, {**uncond, "extra": e2}, 4.0)(x, sigma)
        CFGDenoiser(den_x, {**cond, "extra": e1}, {**uncond, "extra": e1}, 4.0)(x, sigma)
    assert calls == [2, 1]


def test_bf16_precision_option_tracks_fp32_and_validates():
    from mav_core.inference.precision import fast_bf16_supported, resolve_precision
    from mav_core.io.checkpoints import LoadedModel
    from mav_core.diffusion.schedule import NoiseSchedule
    from mav_core.inference import SamplingOptions, VideoShape, generate_video
    cfg = UNetConfig(block_out_channels=(16, 32), layers_per_block=1, attention_levels=(False, True), context_dim=8,
                     norm_num_groups=8, attention_head_dim=16, image_embed_dim=0)
    model = SpaceTimeUNet(cfg).eval()
    _randomise(model, 6)
    decoder = LoadedModel("tiny", "decoder", "mav", model, NoiseSchedule("cosine"), "v")
    cond = {"context": torch.randn(1, 3, 8, generator=torch.Generator().manual_seed(7))}
    with torch.no_grad():
        fp32 = generate_video(decoder, cond, None, VideoShape(6, 16, 16), SamplingOptions(steps=3, cfg=1.0))
        bf16 = generate_video(decoder, cond, None, VideoShape(6, 16, 16), SamplingOptions(steps=3, cfg=1.0, precision="bf16"))
    assert bf16.dtype == torch.float32 and 0 < _rel(bf16, fp32) < 5e-2     # really ran in bf16, and close
    assert resolve_precision("auto", "cpu") == ("bf16" if fast_bf16_supported("cpu") else "fp32")
    with pytest.raises(ValueError, match="precision"):
        resolve_precision("fp16", "cpu")


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
def test_fused_residual_projections_equal_the_plain_path(monkeypatch, dtype, tol):
    """Inference accumulates attention and feed-forward outputs into the residual in place, the
    feed-forward chunk by chunk: same function as the differentiable path, in fp32 and bf16."""
    from mav_core.models import fused, layers
    monkeypatch.setattr(fused, "FF_CHUNK_ELEMENTS", 300 * 128)   # 300 rows a chunk: 2 chunks and a remainder
    block = layers.TransformerBlock(32, 2, 16, 24).eval()
    _randomise(block, 6)
    block = block.to(dtype)
    g = torch.Generator().manual_seed(7)
    x = torch.randn(3, 250, 32, generator=g).to(dtype)             # 750 rows
    ctx = torch.randn(3, 5, 24, generator=g).to(dtype)
    fused_calls = []
    real_addmm = torch.Tensor.addmm_
    monkeypatch.setattr(torch.Tensor, "addmm_", lambda self, *a, **k: fused_calls.append(self.shape) or real_addmm(self, *a, **k))
    with torch.no_grad():
        own = x.clone()
        fast = block(own, ctx)
    assert fast.data_ptr() == own.data_ptr()                       # accumulated into the residual itself
    assert sorted(s[0] for s in fused_calls) == sorted([750, 750, 300, 300, 150])  # 2 attentions + 3 ff chunks
    fused_calls.clear()
    slow = block(x, ctx)
    assert not fused_calls                                         # training path: plain projections
    assert _rel(fast.float(), slow.detach().float()) < tol
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):   # autocast: no fusion (mixed dtypes)
        block.float()(x.float().clone(), ctx.float())
    assert not fused_calls


@pytest.mark.parametrize("clips", [1, 2])
def test_temporal_group_norm_bf16_tracks_float32(clips):
    """bf16 activations: statistics and scale-and-shift in float32, output rounded once to bf16."""
    g = torch.Generator().manual_seed(8)
    x = 4 + 3 * torch.randn(clips * 6, 32, 8, 8, generator=g)     # offset mean: no cancellation allowed
    norm = torch.nn.GroupNorm(8, 32)
    _randomise(norm, 9)
    with torch.no_grad():
        ref = temporal_group_norm(norm, x, 6, silu=True)
        out = temporal_group_norm(norm, x.bfloat16(), 6, silu=True)
    assert out.dtype == torch.bfloat16
    assert _rel(out.float(), ref) < 8e-3


@pytest.mark.parametrize("linear_projection", [True, False])
@pytest.mark.parametrize("size", [16, 8])   # 16x16 = 256 tokens: projections as batched GEMMs
def test_spatial_transformer_fast_projections(linear_projection, size):
    """Inference projects channels to tokens and back with batched GEMMs (output NCHW-contiguous, the
    input untouched); same function as the training path, also for a shared latent (fork)."""
    from mav_core.models.layers import SpatialTransformer
    st = SpatialTransformer(32, 2, 16, 24, groups=8, linear_projection=linear_projection).eval()
    _randomise(st, 10)
    g = torch.Generator().manual_seed(11)
    x = torch.randn(4, 32, size, size, generator=g)
    ctx = torch.randn(8, 5, 24, generator=g)
    before = x.clone()
    with torch.no_grad():
        fast = st(x, ctx, fork=2)
    assert torch.equal(x, before) and fast.is_contiguous() and fast.shape == (8, 32, size, size)
    slow = st(x, ctx, fork=2)
    assert _rel(fast, slow.detach()) < 1e-5
