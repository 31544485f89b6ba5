"""Prompt travel: keyframe weights, per-frame conditioning in the UNet, and the Prompt Schedule node."""
from __future__ import annotations

import pytest
import torch

from mav_core.io.checkpoints import LoadedModel
from mav_core.diffusion import NoiseSchedule
from mav_core.inference.prompt_travel import align_per_frame, frame_conditioning, keyframe_weights
from mav_core.inference import SamplingOptions, VideoShape, generate_video, sample_unet
from mav_core.inference.sampling import image_mode
from mav_core.models.unet import SpaceTimeUNet

FRAMES = 10


def _decoder(cfg):
    torch.manual_seed(0)
    return LoadedModel("tiny", "decoder", "mav", SpaceTimeUNet(cfg).eval(), NoiseSchedule("cosine"), "v")


def _prompt(cfg, seed):
    g = torch.Generator().manual_seed(seed)
    return {"context": torch.randn(1, 3, cfg.context_dim, generator=g),
            "image_embed": torch.randn(1, cfg.image_embed_dim, generator=g)}


def test_keyframe_weights_hold_then_blend_linearly():
    w = keyframe_weights([0, 8], FRAMES, blend=4)
    assert torch.allclose(w.sum(1), torch.ones(FRAMES, dtype=w.dtype))
    assert w[:5, 0].eq(1).all() and w[8:, 1].eq(1).all()
    assert torch.allclose(w[4:9, 1], torch.tensor([0, .25, .5, .75, 1], dtype=w.dtype))
    assert torch.equal(keyframe_weights([0, 3], 5, blend=0)[:, 1], torch.tensor([0, 0, 0, 1, 1], dtype=w.dtype))
    with pytest.raises(ValueError, match="start"):
        keyframe_weights([2, 8], FRAMES)


def test_one_keyframe_schedule_equals_no_schedule_exactly(tiny_unet_config):
    dec = _decoder(tiny_unet_config)
    a = _prompt(tiny_unet_config, 1)
    uncond = {k: torch.zeros_like(v) for k, v in a.items()}
    plain = generate_video(dec, a, uncond, VideoShape(4, 16, 16), SamplingOptions(seed=3, steps=2, cfg=2.0))
    cond, unc = align_per_frame(frame_conditioning([(0, a)], 4, blend=2), uncond, 4)
    assert torch.equal(generate_video(dec, cond, unc, VideoShape(4, 16, 16), SamplingOptions(seed=3, steps=2, cfg=2.0)),
                       plain)


def test_per_frame_context_of_one_prompt_matches_shared_context(tiny_unet_config):
    """The per-frame path (folded [(b f), L, D]) computes what the shared-context fast path does."""
    net = _decoder(tiny_unet_config).module
    a = _prompt(tiny_unet_config, 1)
    x = torch.randn(1, 3, 4, 16, 16)
    t = torch.tensor([500])
    rep = {"context": a["context"][:, None].expand(-1, 4, -1, -1), "image_embed": a["image_embed"][:, None].expand(-1, 4, -1)}
    with torch.no_grad():
        shared = net(x, t, **a, fps=torch.tensor([4.0]))
        per_frame = net(x, t, **rep, fps=torch.tensor([4.0]))
    assert torch.allclose(per_frame, shared, atol=1e-5)
    with pytest.raises(ValueError, match="per-frame context"):
        net(x, t, context=torch.randn(1, 3, 3, tiny_unet_config.context_dim))


def test_two_keyframes_first_frame_is_prompt_a_last_is_prompt_b(tiny_unet_config):
    """Image mode (temporal layers bypassed = identity): each frame depends only on its own conditioning."""
    dec = _decoder(tiny_unet_config)
    a, b = _prompt(tiny_unet_config, 1), _prompt(tiny_unet_config, 2)
    neg = {k: torch.zeros_like(v) for k, v in a.items()}
    shape = (1, 3, FRAMES, 16, 16)

    def run(cond, uncond):
        return sample_unet(image_mode(dec), shape, cond, uncond, SamplingOptions(seed=4, steps=3, cfg=2.0))

    video_a, video_b = run(a, neg), run(b, neg)
    travel = run(*align_per_frame(frame_conditioning([(0, a), (8, b)], FRAMES, blend=4), neg, FRAMES))
    assert torch.allclose(travel[:, :, 0], video_a[:, :, 0], atol=1e-4)
    assert torch.allclose(travel[:, :, -1], video_b[:, :, -1], atol=1e-4)
    mid = travel[:, :, 6]
    assert not torch.allclose(mid, video_a[:, :, 6], atol=1e-3) and not torch.allclose(mid, video_b[:, :, 6], atol=1e-3)


def test_prompt_schedule_node_drives_the_sampler(pack, tiny_unet_config, tmp_path):
    from mav_core.io.checkpoints import save_model
    dec = _decoder(tiny_unet_config)
    save_model(tmp_path / "tiny" / "decoder.safetensors", dec.module, "decoder", dec.schedule, "v")
    pack.host.extra_model_dirs.insert(0, tmp_path)
    try:
        model = pack.loaders.DecoderLoader().load("tiny/decoder.safetensors")[0]
        a, b = _prompt(tiny_unet_config, 1), _prompt(tiny_unet_config, 2)
        ca = [[a["context"], {"mav_image_embed": a["image_embed"]}]]
        cb = [[b["context"], {"mav_image_embed": b["image_embed"]}]]
        neg = [[torch.zeros_like(a["context"]), {}]]
        node = pack.NODE_CLASS_MAPPINGS["MakeAVideoPromptSchedule"]()
        sampler = pack.NODE_CLASS_MAPPINGS["MakeAVideoSampler"]()

        def sample(pos, frames=4):
            return sampler.sample(model, pos, neg, seed=1, steps=2, cfg=2.0, sampler_name="ddim", frames=frames,
                                  fps=4.0, width=16, height=16, denoise=1.0)[0]

        one = node.schedule(ca, 2)[0]
        assert "mav_schedule" not in ca[0][1] and one[0][0] is ca[0][0]
        assert torch.equal(sample(one), sample(ca))
        travel = node.schedule(ca, 1, conditioning_2=cb, start_2=2)[0]
        out = sample(travel)
        assert out.shape == sample(ca).shape and not torch.allclose(out, sample(ca), atol=1e-4)
        with pytest.raises(ValueError, match="conditioning_2 starts at frame 6"):
            sample(node.schedule(ca, 1, conditioning_2=cb, start_2=6)[0])
        no_prior = [[b["context"], {}]]
        with pytest.raises(ValueError, match=r"conditioning_2 \(frame 2\).*image_embed"):
            sample(node.schedule(ca, 1, conditioning_2=no_prior, start_2=2)[0])
    finally:
        pack.host.extra_model_dirs.remove(tmp_path)
