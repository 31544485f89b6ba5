"""Input validation for API/CLI users: bad sizes, frames, fps, steps, cfg, multiplier, seeds are refused
with an error naming the input; requests that cannot fit in memory are refused before sampling; a NaN in
the model output stops sampling with an error naming the step."""
import math
import re

import pytest
import torch

from mav_core.inference import memory
from mav_core.io.checkpoints import LoadedModel
from mav_core.diffusion import NoiseSchedule
from mav_core.inference.pipeline import ChainSettings, MakeAVideo
from mav_core.inference import (InterpolationOptions, SamplingOptions, UpscaleOptions, VideoShape, generate_video,
                                interpolate_video, sample_unet, upscale_video)
from mav_core.inference.options import MAX_FRAMES
from mav_core.models.unet import SpaceTimeUNet, UNetConfig


@pytest.fixture(scope="module")
def decoder():
    cfg = UNetConfig(block_out_channels=(8, 16), layers_per_block=1, attention_levels=(False, True),
                     context_dim=8, norm_num_groups=4, attention_head_dim=8, image_embed_dim=4, image_embed_tokens=1)
    torch.manual_seed(0)
    return LoadedModel("tiny-decoder.safetensors", "decoder", "mav", SpaceTimeUNet(cfg).eval(),
                       NoiseSchedule("cosine"), "v")


@pytest.fixture(scope="module")
def interpolator():
    cfg = UNetConfig(block_out_channels=(8, 16), layers_per_block=1, attention_levels=(False, True),
                     context_dim=8, norm_num_groups=4, attention_head_dim=8, image_embed_dim=4, image_embed_tokens=1,
                     extra_in_channels=4)
    torch.manual_seed(0)
    return LoadedModel("tiny-interp.safetensors", "interpolator", "mav", SpaceTimeUNet(cfg).eval(),
                       NoiseSchedule("cosine"), "v")


@pytest.fixture(scope="module")
def sr():
    cfg = UNetConfig(extra_in_channels=3, block_out_channels=(8, 16), layers_per_block=1,
                     attention_levels=(False, False), mid_attention=False, context_dim=8, norm_num_groups=4,
                     fps_conditioning=False)
    torch.manual_seed(0)
    return LoadedModel("tiny-sr.safetensors", "sr_video", "mav", SpaceTimeUNet(cfg).eval(), NoiseSchedule("cosine"), "v")


def _cond():
    return {"context": torch.randn(1, 3, 8), "image_embed": torch.randn(1, 4)}


GOOD = dict(frames=2, height=8, width=8, fps=8.0, steps=1, cfg=1.0, seed=0)
SHAPE_FIELDS = ("frames", "height", "width", "fps")


def _generate(decoder, callback=None, **kw):
    """generate_video with the keyword settings split into its VideoShape and SamplingOptions."""
    shape = VideoShape(**{k: v for k, v in kw.items() if k in SHAPE_FIELDS})
    options = SamplingOptions(**{k: v for k, v in kw.items() if k not in SHAPE_FIELDS})
    return generate_video(decoder, _cond(), None, shape, options, callback=callback)
BAD_GENERATE = [
    ("frames", 0), ("frames", -3), ("frames", 2.5), ("frames", True), ("frames", "8"), ("frames", MAX_FRAMES + 1),
    ("height", 0), ("height", 9), ("height", 8.0), ("width", "8"), ("width", 10_000),
    ("fps", 0), ("fps", -1.0), ("fps", math.nan), ("fps", math.inf), ("fps", "8"), ("fps", 241), ("fps", True),
    ("steps", 0), ("steps", 1001), ("steps", 2.5), ("steps", None),
    ("cfg", math.nan), ("cfg", -1.0), ("cfg", math.inf), ("cfg", "5"), ("cfg", 1e6),
    ("seed", -1), ("seed", 1.5), ("seed", 2 ** 64),
    ("denoise", 0.0), ("denoise", 1.5), ("denoise", math.nan),
    ("sampler", "nope"),
]


@pytest.mark.parametrize("name,value", BAD_GENERATE, ids=[f"{n}={v!r}" for n, v in BAD_GENERATE])
def test_generate_video_names_the_bad_input(decoder, name, value):
    calls = []
    with pytest.raises(ValueError, match=re.escape(name)) as info:
        _generate(decoder, callback=calls.append, **{**GOOD, name: value})
    assert calls == [], "sampling started before the input was checked"
    if name != "sampler":
        assert repr(value) in str(info.value) or str(value) in str(info.value)


def test_good_inputs_still_generate(decoder):
    out = _generate(decoder, **GOOD)
    assert out.shape == (1, 3, 2, 8, 8) and torch.isfinite(out).all()


BAD_INTERPOLATE = [("multiplier", 0), ("multiplier", 17), ("multiplier", 2.5), ("multiplier", True), ("window", 1),
                   ("fps", 0.0), ("extra_frames", 0)]


@pytest.mark.parametrize("name,value", BAD_INTERPOLATE, ids=[f"{n}={v!r}" for n, v in BAD_INTERPOLATE])
def test_interpolate_video_names_the_bad_input(interpolator, name, value):
    video = torch.zeros(1, 3, 3, 8, 8)
    mode = "extrapolate" if name == "extra_frames" else "interpolate"
    with pytest.raises(ValueError, match=re.escape(name)):
        fps = value if name == "fps" else 8.0
        how = {name: value} if name not in ("fps",) else {}
        interpolate_video(interpolator, video, _cond(), None, fps, InterpolationOptions(mode=mode, **how),
                          SamplingOptions(steps=1))


def test_interpolate_and_upscale_refuse_malformed_videos(interpolator, sr):
    with pytest.raises(ValueError, match=r"video must be a non-empty \[B, C, F, H, W\] tensor, got \(3, 8, 8\)"):
        interpolate_video(interpolator, torch.zeros(3, 8, 8), _cond())
    with pytest.raises(ValueError, match=r"video must be a non-empty .* got \(1, 3, 0, 8, 8\)"):
        upscale_video(sr, torch.zeros(1, 3, 0, 8, 8))
    with pytest.raises(ValueError, match=r"video has 4 channels; tiny-sr.safetensors upscales 3-channel videos"):
        upscale_video(sr, torch.zeros(1, 4, 2, 8, 8))
    with pytest.raises(ValueError, match="frame_chunk"):
        upscale_video(sr, torch.zeros(1, 3, 2, 8, 8), upscale=UpscaleOptions(frame_chunk=0))


BAD_SETTINGS = [("frames", 0), ("fps", math.nan), ("seed", -2), ("steps", 0), ("prior_steps", 5000),
                ("interp_steps", 1.5), ("sr_steps", -1), ("cfg", -0.5), ("prior_cfg", math.inf),
                ("sampler", "warp"), ("multiplier", 0), ("upscale", 3), ("negative", 7)]


@pytest.mark.parametrize("name,value", BAD_SETTINGS, ids=[f"{n}={v!r}" for n, v in BAD_SETTINGS])
def test_chain_settings_are_checked_before_any_model_runs(name, value):
    chain = MakeAVideo(text=None, prior=None, decoder=None)     # any model use would raise AttributeError
    with pytest.raises(ValueError, match=re.escape(name)):
        chain("a red circle", **{name: value})


def test_chain_refuses_an_fps_the_interpolator_would_push_past_240():
    with pytest.raises(ValueError, match="fps 200.0 x multiplier 2"):
        ChainSettings(fps=200.0, multiplier=2).validate()
    assert ChainSettings().validate() == ChainSettings()


# ---------------------------------------------------------------------------------------------------
# memory
# ---------------------------------------------------------------------------------------------------

def test_activation_estimate_scales_with_the_request(decoder):
    cfg = decoder.config
    base = memory.activation_bytes(cfg, 1, 8, 32, 32)
    assert memory.activation_bytes(cfg, 1, 16, 32, 32) == 2 * base
    assert memory.activation_bytes(cfg, 2, 8, 32, 32) == 2 * base
    assert memory.activation_bytes(cfg, 1, 8, 64, 64) == 4 * base
    assert memory.activation_bytes(cfg, 1, 8, 32, 32, element_bytes=2) * 2 == base
    # at least the skips: conv_in output + every resnet output at full resolution, float32
    assert base >= 4 * 8 * 32 * 32 * cfg.block_out_channels[0] * (1 + cfg.layers_per_block)


def test_available_memory_is_read_on_this_machine():
    free = memory.available_bytes("cpu")
    if not memory.MEMINFO.exists():
        assert free is None
    else:
        assert free is not None and 0 < free < 2 ** 50
    assert memory.available_bytes("meta") is None


def test_check_fits_refuses_what_cannot_fit(decoder, monkeypatch):
    monkeypatch.delenv("MAV_SKIP_MEMORY_CHECK", raising=False)
    need = memory.activation_bytes(decoder.config, 1, 4, 16, 16) + memory.runtime_bytes("cpu")
    assert memory.check_fits("d", decoder.config, (1, 4, 16, 16), "cpu", available=need) == need
    with pytest.raises(MemoryError, match=r"d: 1 x 4 frames at 16x16 needs about .* GiB .* only .* GiB"):
        memory.check_fits("d", decoder.config, (1, 4, 16, 16), "cpu", available=need - 1)
    monkeypatch.setenv("MAV_SKIP_MEMORY_CHECK", "1")
    assert memory.check_fits("d", decoder.config, (1, 4, 16, 16), "cpu", available=0) == need


@pytest.mark.skipif(memory.available_bytes("cpu") is None, reason="no /proc/meminfo: free memory unknown")
def test_generate_video_refuses_an_impossible_request_before_sampling(decoder, sr, monkeypatch):
    monkeypatch.delenv("MAV_SKIP_MEMORY_CHECK", raising=False)
    calls = []
    with pytest.raises(MemoryError, match=r"tiny-decoder.safetensors: 2 x 1024 frames at 4096x4096"):
        generate_video(decoder, _cond(), {"context": torch.zeros(1, 3, 8), "image_embed": torch.zeros(1, 4)},
                       VideoShape(1024, 4096, 4096), SamplingOptions(steps=1, cfg=5.0), callback=calls.append)
    assert calls == []
    # upscale: the check sees one chunk of frames at the doubled size; the low-res input is a view (no memory)
    huge = torch.zeros(1, 3, 1, 1, 1).expand(1, 3, 64, 4096, 4096)
    with pytest.raises(MemoryError, match=r"tiny-sr.safetensors: 1 x 32 frames at 8192x8192"):
        upscale_video(sr, huge, SamplingOptions(steps=1))


# ---------------------------------------------------------------------------------------------------
# NaN / inf in the model output
# ---------------------------------------------------------------------------------------------------

def _poison_from(module, call: int):
    """A forward hook that turns the module's output into NaN from its `call`-th call on; returns a counter."""
    count = [0]

    def hook(_module, _inputs, output):
        count[0] += 1
        return output * math.nan if count[0] >= call else output

    return module.register_forward_hook(hook), count


@pytest.mark.parametrize("every,expected_calls,user_callbacks", [(1, 3, 2), (2, 4, 3), (0, 6, 6)])
def test_nan_in_the_model_output_stops_sampling_naming_the_step(decoder, every, expected_calls, user_callbacks):
    """every=1 (the CPU default) stops at the bad step itself; every=2 (as on CUDA, no host sync per step)
    notices it one step later but still names step 3; every=0 only checks the final sample."""
    handle, count = _poison_from(decoder.module, 3)
    steps = []
    try:
        with pytest.raises(FloatingPointError) as info:
            sample_unet(decoder, (1, 3, 2, 8, 8), {**_cond(), "fps": torch.tensor([8.0])}, None,
                        SamplingOptions(steps=6, nan_check_every=every), callback=lambda i: steps.append(i["i"]))
    finally:
        handle.remove()
    msg = str(info.value)
    assert "tiny-decoder.safetensors" in msg
    if every:
        assert "at step 3 of 6" in msg
    else:
        assert "final sample" in msg
    assert count[0] == expected_calls
    assert len(steps) == user_callbacks
