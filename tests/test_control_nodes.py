"""Control nodes without ComfyUI: Control Loader, Apply Control (attach / stack / no mutation) and the
Sampler reading the attached controls. Tiny random decoder + adapter checkpoints written per session."""
from __future__ import annotations

import pytest
import torch



@pytest.fixture(scope="module")
def models(pack, tmp_path_factory):
    from mav_core.io.checkpoints import save_model
    from mav_core.models.control import ControlAdapter, ControlConfig
    from mav_core.diffusion import NoiseSchedule
    from mav_core.models.unet import SpaceTimeUNet, UNetConfig
    root = tmp_path_factory.mktemp("makeavideo_control_models")
    cfg = UNetConfig(block_out_channels=(16, 32), layers_per_block=1, attention_levels=(False, True),
                     context_dim=24, norm_num_groups=8, attention_head_dim=16, image_embed_dim=12,
                     image_embed_tokens=2)
    torch.manual_seed(0)
    save_model(root / "tiny" / "decoder.safetensors", SpaceTimeUNet(cfg), "decoder", NoiseSchedule("cosine"), "v")
    adapter = ControlAdapter(ControlConfig.for_unet(cfg))
    with torch.no_grad():
        for p in adapter.parameters():
            p.add_(0.1 * torch.randn_like(p))   # stands in for training: every projection non-zero
    save_model(root / "tiny" / "control_canny.safetensors", adapter, "control")
    save_model(root / "tiny" / "control_fresh.safetensors", ControlAdapter(ControlConfig.for_unet(cfg)), "control")
    pack.host.extra_model_dirs.insert(0, root)
    yield {
        "decoder": pack.loaders.DecoderLoader().load("tiny/decoder.safetensors")[0],
        "control": pack.control.ControlLoader().load("tiny/control_canny.safetensors")[0],
        "fresh": pack.control.ControlLoader().load("tiny/control_fresh.safetensors")[0],
    }
    pack.host.extra_model_dirs.remove(root)


def _conditioning(seed: int):
    g = torch.Generator().manual_seed(seed)
    return [[torch.randn(1, 3, 24, generator=g), {"pooled_output": torch.randn(1, 8, generator=g)}]]


def _hint_frames(frames=4, size=16):
    """A white square moving right on black: IMAGE [F, H, W, 3] with edges for canny."""
    video = torch.zeros(frames, size, size, 3)
    for i in range(frames):
        video[i, 4:12, 2 + i:10 + i] = 1.0
    return video


def _sample(pack, models, positive, frames=4, size=16, seed=5):
    sampler = pack.NODE_CLASS_MAPPINGS["MakeAVideoSampler"]()
    return sampler.sample(models["decoder"], positive, _conditioning(99), seed=seed, steps=3, cfg=2.0,
                          sampler_name="ddim", frames=frames, fps=4.0, width=size, height=size, denoise=1.0)[0]


def _apply(pack, cond, control, hint, hint_type="canny", strength=1.0, start=0.0, end=1.0):
    return pack.NODE_CLASS_MAPPINGS["MakeAVideoApplyControl"]().apply(cond, control, hint, hint_type, strength,
                                                                      start, end)[0]


def test_nodes_are_registered_and_loader_refuses_other_stages(pack, models):
    assert {"MakeAVideoControlLoader", "MakeAVideoApplyControl"} <= set(pack.NODE_CLASS_MAPPINGS)
    assert models["control"].stage == "control"
    with pytest.raises(ValueError, match="ckpt_name"):
        pack.control.ControlLoader().load("tiny/decoder.safetensors")
    with pytest.raises(ValueError, match="control"):
        _apply(pack, _conditioning(0), models["decoder"], _hint_frames())


def test_apply_control_attaches_and_stacks_without_mutating_input(pack, models):
    cond = _conditioning(0)
    extras_before = dict(cond[0][1])
    one = _apply(pack, cond, models["control"], _hint_frames(), "canny")
    two = _apply(pack, one, models["fresh"], _hint_frames(), "mask", strength=0.5, start=0.2, end=0.8)
    assert cond[0][1] == extras_before and "mav_controls" not in cond[0][1]
    assert len(one[0][1]["mav_controls"]) == 1            # stacking did not grow the first node's output
    controls = two[0][1]["mav_controls"]
    assert [c.hint_type for c in controls] == ["canny", "mask"]
    assert controls[1].strength == 0.5 and (controls[1].start, controls[1].end) == (0.2, 0.8)
    assert controls[0].hint.shape == (1, 1, 4, 16, 16) and controls[0].hint.max() > 0   # edges found
    assert two[0][0] is cond[0][0] and two[0][1]["pooled_output"] is cond[0][1]["pooled_output"]


def test_strength_zero_equals_no_control_and_strength_changes_output(pack, models):
    cond = _conditioning(0)
    base = _sample(pack, models, cond)
    zero = _sample(pack, models, _apply(pack, cond, models["control"], _hint_frames(), strength=0.0))
    assert torch.equal(zero, base)
    full = _sample(pack, models, _apply(pack, cond, models["control"], _hint_frames(), strength=1.0))
    assert full.shape == base.shape and not torch.allclose(full, base, atol=1e-4)
    # a hint at twice the size (same aspect) is resized; a single hint frame serves every frame
    big = _sample(pack, models, _apply(pack, cond, models["control"], _hint_frames(size=32)))
    assert big.shape == base.shape and not torch.allclose(big, base, atol=1e-4)
    single = _sample(pack, models, _apply(pack, cond, models["control"], _hint_frames(frames=1)))
    assert single.shape == base.shape


def test_bad_hint_frame_count_or_size_names_the_hint_input(pack, models):
    cond = _conditioning(0)
    with pytest.raises(ValueError, match=r"hint: .*3 frames.*4"):
        _sample(pack, models, _apply(pack, cond, models["control"], _hint_frames(frames=3)))
    wide = torch.zeros(4, 16, 32, 3)
    with pytest.raises(ValueError, match=r"hint: .*aspect"):
        _sample(pack, models, _apply(pack, cond, models["control"], wide))
    with pytest.raises(ValueError, match=r"hint: expected an IMAGE"):
        _apply(pack, cond, models["control"], torch.zeros(16, 16, 3))
    with pytest.raises(ValueError, match="hint_type"):
        _apply(pack, cond, models["control"], _hint_frames(), "frames")   # 3-channel hint, 1-channel adapter
