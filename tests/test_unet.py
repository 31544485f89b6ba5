"""The identity-init contract and the temporal layers' behaviour (issue: core, acceptance 1-2)."""
import torch

from mav_core.models.layers import PseudoConv3d, TemporalConvBlock, TemporalTransformer
from mav_core.models.unet import SpaceTimeUNet, UNetConfig, is_temporal_key


def _inputs(cfg, b=2, f=8, size=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, cfg.in_channels, f, size, size, generator=g)
    t = torch.tensor([3.0, 700.0])[:b]
    ctx = torch.randn(b, 5, cfg.context_dim, generator=g)
    emb = torch.randn(b, cfg.image_embed_dim, generator=g)
    return x, t, ctx, emb


def _perturb_image_weights(model, seed=1):
    """Random 'image model' weights: every non-temporal parameter gets noise (zero-init layers included)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if not is_temporal_key(name):
                p.add_(0.2 * torch.randn(p.shape, generator=g))


def test_video_mode_equals_image_mode_per_frame_at_init(tiny_unet_config):
    model = SpaceTimeUNet(tiny_unet_config).eval()
    _perturb_image_weights(model)
    x, t, ctx, emb = _inputs(tiny_unet_config)
    with torch.no_grad():
        video = model(x, t, ctx, emb, fps=torch.tensor([8.0, 24.0]))
        per_frame = torch.stack([model(x[:, :, i], t, ctx, emb) for i in range(x.shape[2])], dim=2)
    assert video.shape == x.shape
    assert (video - per_frame).abs().max().item() <= 1e-5


def test_identity_breaks_after_one_step_on_video():
    cfg = UNetConfig(block_out_channels=(16, 32), layers_per_block=1, attention_levels=(False, True), context_dim=24,
                     norm_num_groups=8, attention_head_dim=16, image_embed_dim=12)
    model = SpaceTimeUNet(cfg)
    _perturb_image_weights(model)
    x, t, ctx, emb = _inputs(cfg)
    params = model.temporal_parameters()
    assert params, "the model has no temporal parameters"
    opt = torch.optim.SGD(params, lr=0.05)
    loss = (model(x, t, ctx, emb, fps=torch.tensor([8.0, 8.0])) - x.flip(2)).pow(2).mean()
    loss.backward()
    grads = {n: p.grad.abs().sum().item() for n, p in model.named_parameters() if is_temporal_key(n) and p.grad is not None}
    assert any("temporal.weight" in n and g > 0 for n, g in grads.items())
    assert any("temp_attentions" in n and "proj_out" in n and g > 0 for n, g in grads.items())
    opt.step()
    model.eval()
    with torch.no_grad():
        video = model(x, t, ctx, emb, fps=torch.tensor([8.0, 8.0]))
        image = model(x, t, ctx, emb, temporal=False)
    assert (video - image).abs().max().item() > 1e-3


def test_temporal_layers_see_frame_order_spatial_layers_do_not():
    torch.manual_seed(0)
    x = torch.randn(2 * 6, 16, 5, 5)
    perm = torch.tensor([3, 0, 5, 1, 4, 2])

    def permute(t):
        return t.reshape(2, 6, *t.shape[1:])[:, perm].reshape_as(t)

    conv = PseudoConv3d(16, 16)
    with torch.no_grad():
        conv.temporal.weight.add_(0.3 * torch.randn_like(conv.temporal.weight))
        # spatial conv alone (image mode) commutes with frame permutation
        assert torch.allclose(conv(permute(x)), permute(conv(x)), atol=1e-6)
        # the perturbed temporal conv does not
        assert not torch.allclose(conv(permute(x), num_frames=6), permute(conv(x, num_frames=6)), atol=1e-3)

    attn = TemporalTransformer(16, heads=2, dim_head=8, groups=8)
    block = TemporalConvBlock(16, groups=8)
    with torch.no_grad():
        attn.proj_out.weight.normal_()
        block.conv4[-1].weight.normal_()
        for layer in (attn, block):
            assert not torch.allclose(layer(permute(x), 6), permute(layer(x, 6)), atol=1e-3)
            # at identity init / in image mode these layers are the identity
            assert torch.equal(layer(x, None), x)


def test_pseudo_conv_temporal_init_is_identity():
    conv = PseudoConv3d(8, 8)
    x = torch.randn(3 * 4, 8, 6, 6)
    with torch.no_grad():
        assert torch.allclose(conv(x, num_frames=4), conv(x), atol=1e-6)


def test_extra_channels_and_errors(tiny_unet_config):
    cfg = tiny_unet_config
    cfg.extra_in_channels = 4
    model = SpaceTimeUNet(cfg).eval()
    x, t, ctx, emb = _inputs(cfg, f=3)
    with torch.no_grad():
        out = model(x, t, ctx, emb, extra=torch.randn(2, 4, 3, 16, 16))
    assert out.shape == x.shape
    import pytest
    with pytest.raises(ValueError, match="channels"):
        model(x, t, ctx, emb)
    with pytest.raises(ValueError, match="context width"):
        model(x, t, torch.randn(2, 5, 7), emb, extra=torch.randn(2, 4, 3, 16, 16))
