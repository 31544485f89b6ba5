"""ControlNet-style conditioning mechanics (the trained adapter's IoU numbers come from `eval`)."""
import torch

from mav_core.io.checkpoints import LoadedModel
from mav_core.models.control import Control, ControlAdapter, ControlConfig, canny_hint, mask_hint
from mav_core.diffusion import NoiseSchedule
from mav_core.inference import Guides, SamplingOptions, UpscaleOptions, VideoShape, generate_video
from mav_core.models.unet import SpaceTimeUNet


def _decoder(cfg):
    torch.manual_seed(0)
    model = SpaceTimeUNet(cfg).eval()
    return LoadedModel("tiny", "decoder", "mav", model, NoiseSchedule("cosine"), "v")


def _run(dec, controls=None, seed=0):
    cond = {"context": torch.randn(1, 3, dec.config.context_dim, generator=torch.Generator().manual_seed(1)),
            "image_embed": torch.ones(1, dec.config.image_embed_dim)}
    uncond = {"context": torch.zeros_like(cond["context"]), "image_embed": torch.zeros_like(cond["image_embed"])}
    return generate_video(dec, cond, uncond, VideoShape(3, 16, 16), SamplingOptions(seed=seed, steps=3, cfg=2.0),
                          Guides(controls=tuple(controls or ())))


def _trained_adapter(cfg):
    adapter = ControlAdapter(ControlConfig.for_unet(cfg))
    with torch.no_grad():
        for p in adapter.parameters():
            p.add_(0.1 * torch.randn_like(p))   # stands in for training: every projection non-zero
    return adapter


def test_strength_zero_and_fresh_adapter_reproduce_uncontrolled_output(tiny_unet_config):
    dec = _decoder(tiny_unet_config)
    hint = torch.rand(1, 1, 3, 16, 16)
    base = _run(dec)
    assert torch.equal(_run(dec, [Control(_trained_adapter(tiny_unet_config), hint, strength=0.0)]), base)
    fresh = ControlAdapter(ControlConfig.for_unet(tiny_unet_config))
    assert torch.allclose(_run(dec, [Control(fresh, hint)]), base, atol=1e-6)


def test_control_changes_output_and_controls_stack(tiny_unet_config):
    dec = _decoder(tiny_unet_config)
    a, b = _trained_adapter(tiny_unet_config), _trained_adapter(tiny_unet_config)
    hint = torch.rand(1, 1, 3, 16, 16)
    base = _run(dec)
    one = _run(dec, [Control(a, hint)])
    two = _run(dec, [Control(a, hint), Control(b, hint)])
    assert (one - base).abs().max() > 1e-3
    assert (two - one).abs().max() > 1e-3
    # a step range that excludes every step is the same as no control
    assert torch.equal(_run(dec, [Control(a, hint, start=2.0, end=3.0)]), base)


def test_hints():
    frames = -torch.ones(1, 3, 2, 16, 16)
    frames[:, 0, :, 4:12, 4:12] = 1.0        # a red square on black
    m = mask_hint(frames)
    assert m.shape == (1, 1, 2, 16, 16) and m[0, 0, 0, 8, 8] == 1 and m[0, 0, 0, 0, 0] == 0
    e = canny_hint(frames)
    assert e.shape == (1, 1, 2, 16, 16)
    assert e[0, 0, 0, 4:12, 4:12].sum() > 0 and e[0, 0, 0, 8, 8] == 0   # edges on the border, not inside


def test_upscale_small_frame_chunks_terminate_and_cover_all_frames():
    """Temporal SR in chunks of 1 or 2 frames must advance (overlap < chunk) and return every frame."""
    from mav_core.inference import upscale_video
    from mav_core.models import family
    torch.manual_seed(0)
    cfg = family.sr_config(True)
    cfg.block_out_channels, cfg.norm_num_groups = (8, 8), 8
    sr = LoadedModel("sr", "sr_video", "mav", SpaceTimeUNet(cfg).eval(), NoiseSchedule("cosine"), "v")
    video = torch.rand(1, 3, 5, 8, 8) * 2 - 1
    for chunk in (1, 2, 3):
        out = upscale_video(sr, video, SamplingOptions(steps=1), UpscaleOptions(frame_chunk=chunk))
        assert out.shape == (1, 3, 5, 16, 16)


def test_active_control_on_a_shared_latent_equals_the_repeated_batch(tiny_unet_config):
    """A CFG pair passed as one latent with two conditionings gets the same control residuals as the
    latent repeated: the controlled output matches the repeated batch."""
    from mav_core.models.control import ControlledUNet
    dec = _decoder(tiny_unet_config)
    net = ControlledUNet(dec.module)
    assert net.accepts_shared_latent
    g = torch.Generator().manual_seed(4)
    x = torch.randn(1, 3, 3, 16, 16, generator=g)
    ctx = torch.randn(2, 3, dec.config.context_dim, generator=g)
    emb = torch.randn(2, dec.config.image_embed_dim, generator=g)
    controls = [Control(_trained_adapter(tiny_unet_config), torch.rand(1, 1, 3, 16, 16, generator=g))]
    t = torch.tensor([300.0])
    with torch.no_grad():
        shared = net(x, t, controls=controls, context=ctx, image_embed=emb)
        repeated = net(x.repeat(2, 1, 1, 1, 1), t.repeat(2), controls=controls, context=ctx, image_embed=emb)
        plain = dec.module(x.repeat(2, 1, 1, 1, 1), t.repeat(2), ctx, emb)
    assert shared.shape == repeated.shape == (2, 3, 3, 16, 16)
    assert ((shared - repeated).norm() / repeated.norm()).item() < 1e-5
    assert not torch.allclose(shared, plain, atol=1e-4)          # the control did act


def test_control_over_part_of_sampling_is_gated_on_the_device(tiny_unet_config):
    """A control active for the first part of sampling only changes the output, but less than one active
    throughout; the gate is computed from t on the device (no host sync per step)."""
    dec = _decoder(tiny_unet_config)
    a = _trained_adapter(tiny_unet_config)
    hint = torch.rand(1, 1, 3, 16, 16)
    base, full = _run(dec), _run(dec, [Control(a, hint)])
    early = _run(dec, [Control(a, hint, start=0.0, end=0.5)])
    assert (early - base).abs().max() > 1e-4
    assert (early - full).abs().max() > 1e-4
