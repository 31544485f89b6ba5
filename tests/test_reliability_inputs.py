"""Errors that blame the right input: non-finite tensors are refused naming the input (not the checkpoint),
positive/negative batch mismatches name `negative`, and the Upscaler / Interpolator check the memory of
the whole request (accumulated output and its IMAGE copy) before building anything."""
import math
import re

import pytest
import torch

from mav_core.diffusion import NoiseSchedule
from mav_core.errors import InputError, check_finite
from mav_core.inference import (Guides, InterpolationOptions, SamplingOptions, UpscaleOptions, VideoShape, generate_video,
                                interpolate_video, memory, upscale_video)
from mav_core.inference import interpolate as interpolate_module
from mav_core.inference.frames import video_to_frames
from mav_core.io.checkpoints import LoadedModel
from mav_core.models.control import Control, ControlAdapter, ControlConfig
from mav_core.models.unet import SpaceTimeUNet, UNetConfig

from test_nodes import make_untrained_weights

BASE = dict(block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4, context_dim=8)


def _model(name, stage, **cfg):
    torch.manual_seed(0)
    return LoadedModel(name, stage, "mav", SpaceTimeUNet(UNetConfig(**{**BASE, **cfg})).eval(),
                       NoiseSchedule("cosine"), "v")


@pytest.fixture(scope="module")
def decoder():
    return _model("tiny-decoder.safetensors", "decoder", attention_levels=(False, True), attention_head_dim=8,
                  image_embed_dim=4, image_embed_tokens=1)


@pytest.fixture(scope="module")
def interpolator():
    return _model("tiny-interp.safetensors", "interpolator", attention_levels=(False, True), attention_head_dim=8,
                  image_embed_dim=4, image_embed_tokens=1, extra_in_channels=4)


@pytest.fixture(scope="module")
def sr():
    return _model("tiny-sr.safetensors", "sr_video", extra_in_channels=3, attention_levels=(False, False),
                  mid_attention=False, fps_conditioning=False)


def _cond(batch=1):
    return {"context": torch.randn(batch, 3, 8), "image_embed": torch.randn(batch, 4)}


def _poisoned(t: torch.Tensor, value: float, where: int = 0) -> torch.Tensor:
    t = t.clone()
    t.view(-1)[where % t.numel()] = value
    return t


BAD_VALUES = [math.nan, math.inf, -math.inf]


# --- the core check --------------------------------------------------------------------------------

@pytest.mark.parametrize("value", BAD_VALUES)
@pytest.mark.parametrize("shape", [(3,), (2, 5, 7), (1, 3, 4, 8, 8)])
def test_check_finite_names_the_param_and_counts(shape, value):
    t = _poisoned(torch.zeros(shape), value, where=sum(shape))
    with pytest.raises(InputError, match=r"^video must hold only finite values, but has 1 NaN/inf of"):
        check_finite("video", t)
    with pytest.raises(InputError, match=r"^cond must hold only finite values, but 'context' has 1"):
        check_finite("cond", {"context": t, "image_embed": torch.zeros(1, 4)})
    check_finite("video", torch.zeros(shape))
    check_finite("video", None)
    check_finite("video", torch.full(shape, 60000.0, dtype=torch.float16))   # a sum that overflows is not a NaN


# --- the core refuses non-finite inputs before sampling, naming them -------------------------------

@pytest.mark.parametrize("value", BAD_VALUES)
@pytest.mark.parametrize("param,key", [("cond", "context"), ("cond", "image_embed"), ("uncond", "context"),
                                       ("uncond", "image_embed")])
def test_generate_video_refuses_non_finite_conditioning(decoder, param, key, value):
    calls = []
    conds = {"cond": _cond(), "uncond": _cond()}
    conds[param][key] = _poisoned(conds[param][key], value)
    with pytest.raises(InputError, match=rf"^{param} must hold only finite values, but '{key}'") as info:
        generate_video(decoder, conds["cond"], conds["uncond"], VideoShape(2, 8, 8),
                       SamplingOptions(steps=1, cfg=3.0), callback=calls.append)
    assert info.value.param == param and calls == []


@pytest.mark.parametrize("frames,size", [(2, 8), (3, 16)])
def test_generate_video_refuses_non_finite_init_frames(decoder, frames, size):
    init = _poisoned(torch.zeros(1, 3, frames, size, size), math.nan, where=frames * size)
    with pytest.raises(InputError, match=r"^init must hold only finite values") as info:
        generate_video(decoder, _cond(), None, VideoShape(frames, size, size), SamplingOptions(steps=1, denoise=0.5),
                       Guides(init=init))
    assert info.value.param == "init"


@pytest.mark.parametrize("mode", ["interpolate", "extrapolate"])
@pytest.mark.parametrize("frames,size", [(2, 8), (4, 16)])
def test_interpolate_and_upscale_refuse_non_finite_video(interpolator, sr, mode, frames, size):
    video = _poisoned(torch.zeros(1, 3, frames, size, size), math.inf, where=size)
    with pytest.raises(InputError, match=r"^video must hold only finite values") as info:
        interpolate_video(interpolator, video, _cond(), None, 4.0, InterpolationOptions(mode=mode),
                          SamplingOptions(steps=1))
    assert info.value.param == "video"
    with pytest.raises(InputError, match=r"^video must hold only finite values"):
        upscale_video(sr, video, SamplingOptions(steps=1), UpscaleOptions(frame_chunk=3))
    with pytest.raises(InputError, match=r"^cond must hold only finite values"):
        interpolate_video(interpolator, torch.zeros(1, 3, frames, size, size),
                          {**_cond(), "image_embed": torch.full((1, 4), math.nan)}, None, 4.0,
                          InterpolationOptions(mode=mode), SamplingOptions(steps=1))


@pytest.mark.parametrize("cond_batch,uncond_batch", [(1, 2), (2, 1), (3, 2)])
def test_batch_mismatch_between_cond_and_uncond_names_uncond(decoder, cond_batch, uncond_batch):
    calls = []
    with pytest.raises(InputError, match=rf"^uncond has batch {uncond_batch}, but .* batch {cond_batch}") as info:
        generate_video(decoder, _cond(cond_batch), _cond(uncond_batch), VideoShape(2, 8, 8),
                       SamplingOptions(steps=1, cfg=3.0), callback=calls.append)
    assert info.value.param == "uncond" and calls == []


def test_the_nan_message_blames_the_model_only_for_finite_inputs(decoder):
    handle = decoder.module.register_forward_hook(lambda _m, _i, out: out * math.nan)
    try:
        with pytest.raises(FloatingPointError, match="the model output became NaN/inf at step 1"):
            generate_video(decoder, _cond(), None, VideoShape(2, 8, 8), SamplingOptions(steps=2))
        with pytest.raises(InputError, match="^cond must hold only finite values"):
            generate_video(decoder, {**_cond(), "context": torch.full((1, 3, 8), math.nan)}, None,
                           VideoShape(2, 8, 8), SamplingOptions(steps=2))
    finally:
        handle.remove()


# --- memory of the whole request --------------------------------------------------------------------

@pytest.fixture
def free_memory(monkeypatch):
    """Set what available_bytes reports (through the host hook, as ComfyUI does)."""
    monkeypatch.delenv("MAV_SKIP_MEMORY_CHECK", raising=False)
    box = {}
    memory.set_free_memory_provider(lambda device: box["free"])
    yield box
    memory.set_free_memory_provider(None)


@pytest.mark.parametrize("frames,size,chunk", [(300, 8, 16), (120, 16, 8), (64, 8, 4)])
def test_upscale_checks_the_whole_output_not_one_chunk(sr, free_memory, frames, size, chunk):
    """The request's memory: one chunk's activations + the whole output + its IMAGE copy (CPU). Room for
    the chunk alone is refused, before any sampling, naming the output."""
    video = torch.zeros(1, 3, 1, 1, 1).expand(1, 3, frames, size, size)
    one_chunk = memory.activation_bytes(sr.config, 1, chunk, 2 * size, 2 * size)
    output = memory.tensor_bytes((1, 3, frames, 2 * size, 2 * size))
    assert output > one_chunk // 4
    free_memory["free"] = one_chunk + output   # the chunk and one copy of the output: not enough
    calls = []
    with pytest.raises(MemoryError, match=r"tiny-sr.safetensors: .* activations and output \(.* GiB\)"):
        upscale_video(sr, video, SamplingOptions(steps=1), UpscaleOptions(frame_chunk=chunk), callback=calls.append)
    assert calls == []


@pytest.mark.parametrize("frames,size,multiplier", [(2, 256, 16), (3, 128, 8), (2, 64, 4)])
@pytest.mark.parametrize("mode", ["interpolate", "extrapolate"])
def test_interpolate_checks_the_request_before_building_windows(interpolator, free_memory, monkeypatch, frames,
                                                                 size, multiplier, mode):
    built = []
    for name in ("interpolation_mask", "extrapolation_mask", "linear_blend_frames"):
        real = getattr(interpolate_module, name)
        monkeypatch.setattr(interpolate_module, name, lambda *a, _real=real: built.append(1) or _real(*a))
    window = InterpolationOptions().window
    if mode == "interpolate":   # the frames of the first window
        window = (min(frames, max(2, (window - 1) // multiplier + 1)) - 1) * multiplier + 1
    free_memory["free"] = memory.activation_bytes(interpolator.config, 1, window, size, size)   # one window only
    with pytest.raises(MemoryError, match=r"tiny-interp.safetensors: .* and output"):
        interpolate_video(interpolator, torch.zeros(1, 3, frames, size, size), _cond(), None, 4.0,
                          InterpolationOptions(multiplier=multiplier, mode=mode, extra_frames=64),
                          SamplingOptions(steps=1))
    assert built == [], "window, mask or blend built before the memory check"


@pytest.mark.parametrize("frames,multiplier,window", [(3, 2, 16), (6, 4, 5), (9, 3, 7)])
def test_interpolation_into_a_preallocated_output_keeps_the_known_frames(interpolator, frames, multiplier, window):
    video = torch.rand(1, 3, frames, 8, 8) * 2 - 1
    out = interpolate_video(interpolator, video, _cond(), None, 4.0,
                            InterpolationOptions(multiplier=multiplier, window=window), SamplingOptions(steps=1))
    assert out.shape == (1, 3, (frames - 1) * multiplier + 1, 8, 8) and torch.isfinite(out).all()
    assert torch.equal(out[:, :, ::multiplier], video)
    ext = interpolate_video(interpolator, video, _cond(), None, 4.0,
                            InterpolationOptions(mode="extrapolate", extra_frames=5, window=window),
                            SamplingOptions(steps=1))
    assert ext.shape == (1, 3, frames + 5, 8, 8) and torch.equal(ext[:, :, :frames], video)
    assert torch.isfinite(ext).all()


@pytest.mark.parametrize("b,f", [(1, 5), (2, 3)])
def test_video_to_frames_matches_the_plain_conversion(b, f):
    video = torch.randn(b, 3, f, 6, 4) * 2
    plain = ((video.clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 4, 1).flatten(0, 1)
    assert torch.equal(video_to_frames(video), plain)


# --- the nodes name their inputs --------------------------------------------------------------------

@pytest.fixture(scope="module")
def bundle(pack, tmp_path_factory):
    root = tmp_path_factory.mktemp("reliability_models")
    make_untrained_weights(root / "set-r", seed=0)
    pack.host.extra_model_dirs.insert(0, root)
    yield pack.loaders.BundleLoader().load("set-r")
    pack.host.extra_model_dirs.remove(root)


def _node(pack, name):
    return pack.NODE_CLASS_MAPPINGS[name]()


def _encode(pack, bundle):
    return _node(pack, "MakeAVideoTextEncode").encode(bundle[0], "a red circle on a black background")[0]


def _with(conditioning, tokens=None, **extras):
    t, e = conditioning[0]
    return [[t if tokens is None else tokens, {**e, **extras}]]


@pytest.mark.parametrize("value", BAD_VALUES)
@pytest.mark.parametrize("which", ["positive", "negative"])
def test_sampler_node_names_non_finite_conditioning(pack, bundle, which, value):
    cond = _encode(pack, bundle)
    bad = _with(cond, tokens=_poisoned(cond[0][0], value))
    args = {"positive": cond, "negative": cond, which: bad}
    with pytest.raises(ValueError, match=rf"^{which}: must hold only finite values"):
        _node(pack, "MakeAVideoSampler").sample(bundle[2], args["positive"], args["negative"], 0, 1, 3.0, "ddim",
                                                2, 4.0, 8, 8, 1.0)
    embedded = _node(pack, "MakeAVideoPrior").run(bundle[1], cond, 0, 1, 1.0)[0]
    bad = _with(embedded, mav_image_embed=_poisoned(embedded[0][1]["mav_image_embed"], value))
    args = {"positive": embedded, "negative": embedded, which: bad}
    with pytest.raises(ValueError, match=rf"^{which}: must hold only finite values"):
        _node(pack, "MakeAVideoSampler").sample(bundle[2], args["positive"], args["negative"], 0, 1, 3.0, "ddim",
                                                2, 4.0, 8, 8, 1.0)


@pytest.mark.parametrize("value", BAD_VALUES)
def test_image_inputs_with_nan_name_the_input(pack, bundle, value):
    cond = _encode(pack, bundle)
    frames = _poisoned(torch.rand(3, 16, 16, 3), value, where=77)
    with pytest.raises(ValueError, match=r"^init_frames: must hold only finite values"):
        _node(pack, "MakeAVideoSampler").sample(bundle[2], cond, cond, 0, 1, 1.0, "ddim", 2, 4.0, 8, 8, 0.5,
                                                init_frames=frames)
    with pytest.raises(ValueError, match=r"^images: must hold only finite values"):
        _node(pack, "MakeAVideoFrameInterpolator").run(bundle[3], frames, 4.0, 2, "interpolate", 0, 1)
    with pytest.raises(ValueError, match=r"^images: must hold only finite values"):
        _node(pack, "MakeAVideoUpscaler").run(bundle[4], frames, 0, 1, 3)
    with pytest.raises(ValueError, match=r"^positive: must hold only finite values"):
        _node(pack, "MakeAVideoFrameInterpolator").run(bundle[3], torch.rand(2, 16, 16, 3), 4.0, 2, "interpolate",
                                                       0, 1, positive=_with(cond, tokens=cond[0][0] * value))


@pytest.mark.parametrize("value", BAD_VALUES)
def test_prior_node_refuses_non_finite_cfg_and_conditioning(pack, bundle, value):
    cond = _encode(pack, bundle)
    with pytest.raises(ValueError, match=r"^cfg"):
        _node(pack, "MakeAVideoPrior").run(bundle[1], cond, 0, 1, value)
    with pytest.raises(ValueError, match=r"^conditioning: must hold only finite values"):
        _node(pack, "MakeAVideoPrior").run(bundle[1], _with(cond, pooled_output=cond[0][1]["pooled_output"] * value),
                                           0, 1, 1.0)


@pytest.mark.parametrize("batches", [(1, 2), (2, 1)])
def test_sampler_node_batch_mismatch_names_negative(pack, bundle, batches):
    cond = _encode(pack, bundle)
    pos, neg = (_with(cond, tokens=cond[0][0].expand(n, -1, -1).contiguous(),
                      pooled_output=cond[0][1]["pooled_output"].expand(n, -1)) for n in batches)
    with pytest.raises(ValueError, match=rf"^negative: has batch {batches[1]}"):
        _node(pack, "MakeAVideoSampler").sample(bundle[2], pos, neg, 0, 1, 3.0, "ddim", 2, 4.0, 8, 8, 1.0)


@pytest.mark.parametrize("fps,multiplier", [(200.0, 2), (40.0, 7), (16.0, 16)])
def test_interpolator_fps_times_multiplier_over_the_limit_names_multiplier(pack, bundle, fps, multiplier):
    with pytest.raises(ValueError, match=r"^multiplier: "):
        _node(pack, "MakeAVideoFrameInterpolator").run(bundle[3], torch.rand(2, 8, 8, 3), fps, multiplier,
                                                       "interpolate", 0, 1)


@pytest.mark.parametrize("value", BAD_VALUES)
@pytest.mark.parametrize("frames", [2, 5])
def test_generate_video_refuses_a_non_finite_control_hint(decoder, value, frames):
    adapter = ControlAdapter(ControlConfig(block_out_channels=(8, 16), layers_per_block=1))
    hint = _poisoned(torch.rand(1, 1, frames, 8, 8), value, where=frames)
    calls = []
    with pytest.raises(InputError, match=r"^controls must hold only finite values") as info:
        generate_video(decoder, _cond(), None, VideoShape(frames, 8, 8), SamplingOptions(steps=1),
                       Guides(controls=(Control(adapter, hint),)), callback=calls.append)
    assert info.value.param == "controls" and calls == []
