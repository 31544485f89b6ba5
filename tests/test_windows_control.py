"""Sliding windows (and closed loops) together with controls and prompt travel: every window gets its own
slice of the hint videos and of the per-frame prompts.

Mechanics on a small random-weight model (a frame-local network: windowed = whole clip exactly, so a
misplaced slice shows), then the shipped MAV-Tiny decoder with its Canny adapter: with windows the control
still measurably helps (object-mask IoU against the clip the hint came from, as in `eval --apps`)."""
import numpy as np
import pytest
import torch

from mav_core.data.detect import detect
from mav_core.data.world import caption, motion_scenes, render_scenes, sample_motion
from mav_core.diffusion.schedule import NoiseSchedule
from mav_core.inference import (Guides, SamplingOptions, VideoShape, WindowOptions, frames_to_video, generate_video,
                                video_to_frames)
from mav_core.inference.sampling import ImageMode
from mav_core.inference.windows import FrameWindows
from mav_core.io.checkpoints import LoadedModel
from mav_core.models import family
from mav_core.models.control import Control, ControlAdapter, ControlConfig, ControlledUNet, make_hint
from mav_core.models.unet import SpaceTimeUNet


pytestmark = pytest.mark.usefixtures("one_thread")   # bit-exact comparisons: one intra-op thread


def _random(module, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    return module.eval()


def test_windows_and_loops_slice_hints_and_per_frame_prompts_exactly(tiny_unet_config):
    """A frame-local network (image mode) under windows or a closed loop gives the whole-clip output, with
    a control whose hint changes every frame and a context per frame: each window saw its own frames."""
    torch.manual_seed(0)
    unet = _random(SpaceTimeUNet(tiny_unet_config), 1)
    adapter = _random(ControlAdapter(ControlConfig.for_unet(tiny_unet_config)), 2)
    net = ControlledUNet(ImageMode(unet))
    g = torch.Generator().manual_seed(3)
    frames = 13
    x = torch.randn(1, 3, frames, 16, 16, generator=g)
    hint = torch.rand(1, 1, frames, 16, 16, generator=g)
    ctx = torch.randn(1, frames, 3, tiny_unet_config.context_dim, generator=g)     # prompt travel
    emb = torch.randn(1, frames, tiny_unet_config.image_embed_dim, generator=g)
    t = torch.tensor([400.0])
    cond = {"context": ctx, "image_embed": emb, "controls": [Control(adapter, hint)]}
    with torch.no_grad():
        full = net(x, t, **cond)
        uncontrolled = net(x, t, context=ctx, image_embed=emb)
        results = {"windows": FrameWindows(net, 5, 2)(x, t, **cond)}
        for name, window in (("loop in windows", 5), ("loop in one window", 16)):
            looped = FrameWindows(net, window, 2, loop=True)
            results[name] = [looped(x, t, **cond) for _ in range(3)]       # three calls: three wrap positions
    assert (full - uncontrolled).abs().max().item() > 1e-3                 # the control acts
    assert (results["windows"] - full).abs().max().item() < 1e-5
    for name in ("loop in windows", "loop in one window"):
        for out in results[name]:
            assert (out - full).abs().max().item() < 1e-5, name


def test_generate_with_windows_controls_and_prompt_travel(tiny_unet_config):
    """The sampler takes windows + controls + prompt travel together; strength 0 under windows is
    exactly the windowed uncontrolled sample; an active control changes it."""
    torch.manual_seed(0)
    dec = LoadedModel("tiny", "decoder", "mav", _random(SpaceTimeUNet(tiny_unet_config), 4),
                      NoiseSchedule("cosine"), "v")
    adapter = _random(ControlAdapter(ControlConfig.for_unet(tiny_unet_config)), 5)
    g = torch.Generator().manual_seed(6)
    frames = 10
    cond = {"context": torch.randn(1, frames, 3, tiny_unet_config.context_dim, generator=g),
            "image_embed": torch.randn(1, frames, tiny_unet_config.image_embed_dim, generator=g)}
    uncond = {k: torch.zeros_like(v) for k, v in cond.items()}
    hint = torch.rand(1, 1, frames, 16, 16, generator=g)
    shape, options = VideoShape(frames, 16, 16), SamplingOptions(seed=2, steps=3, cfg=2.0)
    for windows in (WindowOptions(4, 1), WindowOptions(4, 1, loop=True)):
        plain = generate_video(dec, cond, uncond, shape, options, windows=windows)
        zero = generate_video(dec, cond, uncond, shape, options, Guides(controls=(Control(adapter, hint, 0.0),)),
                              windows)
        on = generate_video(dec, cond, uncond, shape, options, Guides(controls=(Control(adapter, hint),)), windows)
        assert torch.equal(zero, plain), windows
        assert on.shape == (1, 3, frames, 16, 16) and torch.isfinite(on).all()
        assert (on - plain).abs().max().item() > 1e-3, windows


def _iou(frames_u8, truth) -> float:
    vals = []
    for f, t in zip(frames_u8, truth):
        m = detect(f).mask
        union = np.logical_or(m, t).sum()
        vals.append(np.logical_and(m, t).sum() / union if union else 0.0)
    return float(np.mean(vals))


def control_iou_with_windows(mav, adapter, clips: int, frames: int, windows: WindowOptions, steps: int,
                             seed: int = 0) -> dict:
    """Object-mask IoU of MAV-Tiny samples against held-out rendered motion clips, with and without the
    Canny control of each clip, sampled in `windows` (the control eval's clips, prompts and metric)."""
    rng = np.random.default_rng(seed + 1700)
    ious = {"with_control": [], "without_control": []}
    for i in range(clips):
        m = sample_motion(rng)
        clip = render_scenes(motion_scenes(m, frames, 8.0), family.BASE_SIZE)
        truth = [detect(f).mask for f in clip]
        hint = make_hint(frames_to_video(torch.from_numpy(clip).float() / 255), adapter.config.kind)
        cond, uncond = mav.conditioning(caption(m.start), "", seed + i, 10, 1.0)
        shape = VideoShape(frames, family.BASE_SIZE, family.BASE_SIZE, 8.0)
        options = SamplingOptions(seed=seed + i, steps=steps, cfg=4.0)
        controlled = Guides(controls=(Control(adapter, hint),))
        for name, guides in (("without_control", Guides()), ("with_control", controlled)):
            out = generate_video(mav.decoder, cond, uncond, shape, options, guides, windows)
            u8 = (video_to_frames(out).clamp(0, 1) * 255).round().to(torch.uint8).numpy()
            ious[name].append(_iou(u8, truth))
    return {k: float(np.mean(v)) for k, v in ious.items()} | {"per_clip": ious}


@torch.no_grad()
def test_trained_control_still_helps_in_sliding_windows():
    """MAV-Tiny + its Canny adapter, 12 frames in windows of 6 (overlap 2): the generated object follows the
    hint clip better with the control than without, on average and in most clips."""
    from mav_core.inference.pipeline import MakeAVideo
    from mav_core.io.loader import load_model
    mav = MakeAVideo.load()
    adapter = load_model(family.WEIGHTS_DIR / "control_canny.safetensors", expect_stage="control").module
    res = control_iou_with_windows(mav, adapter, clips=3, frames=12, windows=WindowOptions(6, 2), steps=6)
    with_c, without = res["per_clip"]["with_control"], res["per_clip"]["without_control"]
    assert res["with_control"] > res["without_control"] + 0.05, res
    assert sum(a > b for a, b in zip(with_c, without)) >= 2, res
