"""Half precision: float16 and bfloat16 weights sample D^t, ↑F and SR without NaN and close to float32.

The sampling state (x, sigmas, noise) stays float32 and only the network runs in half precision; the
shipped cosine schedule starts at sigma ~2e4, where noise * sigma held in float16 overflowed to inf.
Bounds (max / mean absolute difference of -1..1 frames after a few steps, measured on the shipped
MAV-Tiny files; see docs/gpu.md): float16 0.006 / 0.0007, bfloat16 0.06 / 0.006; the asserted bounds
are about twice those."""
from __future__ import annotations

import pytest
import torch

from mav_core.models import family
from mav_core.io.checkpoints import LoadedModel
from mav_core.io.loader import load_model
from mav_core.diffusion.schedule import NoiseSchedule
from mav_core.inference.pipeline import MakeAVideo
from mav_core.inference import (InterpolationOptions, SamplingOptions, VideoShape, generate_video, interpolate_video,
                                sample_unet, upscale_video)
from mav_core.models.unet import SpaceTimeUNet, UNetConfig

# (max, mean) |half - fp32|. CPU half-precision kernels differ by instruction set: D^t's largest fp16 difference
# is 0.025 on an AMD EPYC without AMX (mean 0.0011), below 0.02 on Intel with AMX.
BOUNDS = {torch.float16: (0.04, 0.002), torch.bfloat16: (0.15, 0.015)}


@pytest.fixture(scope="module")
def conditioning():
    mav = MakeAVideo.load()
    return mav.conditioning("a red circle on a black background", "", 0, 4, 1.0)


def _stages(dtype, cond, uncond):
    dec = load_model(family.WEIGHTS_DIR / "decoder.safetensors", dtype=dtype)
    itp = load_model(family.WEIGHTS_DIR / "interpolator.safetensors", dtype=dtype)
    sr = load_model(family.WEIGHTS_DIR / "sr_video.safetensors", dtype=dtype)
    assert next(dec.module.parameters()).dtype == dtype
    with torch.no_grad():
        video = generate_video(dec, cond, uncond, VideoShape(4, 32, 32, 4), SamplingOptions(steps=4, cfg=4.0))
        inter = interpolate_video(itp, video, cond, None, 4, InterpolationOptions(2), SamplingOptions(steps=3))
        up = upscale_video(sr, video[:, :, :2], SamplingOptions(steps=3))
    return {"D^t": video, "↑F": inter, "SR": up}


@pytest.fixture(scope="module")
def float32_outputs(conditioning):
    return _stages(torch.float32, *conditioning)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_half_precision_stages_are_finite_and_close_to_float32(conditioning, float32_outputs, dtype):
    half = _stages(dtype, *conditioning)
    max_bound, mean_bound = BOUNDS[dtype]
    for stage, ref in float32_outputs.items():
        out = half[stage]
        assert out.dtype == torch.float32, f"{stage}: results come back in float32"
        assert torch.isfinite(out).all(), f"{stage} in {dtype}: NaN/inf"
        diff = (out - ref).abs()
        assert diff.max() <= max_bound and diff.mean() <= mean_bound, \
            f"{stage} in {dtype}: max {diff.max():.4f} mean {diff.mean():.5f} vs float32"


def test_float32_sampling_state_keeps_the_first_sigma_finite(conditioning):
    """The shipped decoder's first sigma times unit noise is beyond float16's 65504: the state is float32."""
    decoder = load_model(family.WEIGHTS_DIR / "decoder.safetensors", dtype=torch.float16)
    assert float(decoder.schedule.sigmas().max()) * 4 > torch.finfo(torch.float16).max
    cond, _ = conditioning
    seen = []
    out = sample_unet(decoder, (1, 3, 2, 32, 32), {**cond, "fps": torch.tensor([4.0])}, None, SamplingOptions(steps=3),
                      callback=lambda info: seen.append((info["x"].dtype, bool(torch.isfinite(info["x"]).all()))))
    assert torch.isfinite(out).all() and out.dtype == torch.float32
    assert seen == [(torch.float32, True)] * 3


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_unet3d_layout_samples_in_half_precision(dtype):
    """A UNet3D (ModelScope / Zeroscope) layout with CFG, in half precision: finite, near float32."""
    cfg = UNetConfig(in_channels=4, out_channels=4, block_out_channels=(32, 64), layers_per_block=1,
                     attention_levels=(True, False), attention_head_dim=16, context_dim=32, norm_num_groups=32,
                     linear_projection=True, pseudo3d_convs=False, temporal_conv_blocks=True, transformer_in=True,
                     transformer_in_head_dim=16, temporal_position_embedding=False, fps_conditioning=False)
    torch.manual_seed(0)
    module = SpaceTimeUNet(cfg).eval()
    for p in module.parameters():   # trained-like: temporal outputs not exactly zero
        p.data.add_(torch.randn_like(p) * 0.02)
    cond, uncond = {"context": torch.randn(1, 5, 32)}, {"context": torch.zeros(1, 5, 32)}
    outs = {}
    for dt in (torch.float32, dtype):
        model = LoadedModel("unet3d", "decoder", "unet3d-modelscope",
                            SpaceTimeUNet(cfg).eval().to(dt), NoiseSchedule("linear"), "eps")
        model.module.load_state_dict(module.state_dict())
        outs[dt] = sample_unet(model, (1, 4, 3, 8, 8), cond, uncond, SamplingOptions(seed=1, steps=4, cfg=9.0))
    assert torch.isfinite(outs[dtype]).all()
    scale = outs[torch.float32].abs().max()
    assert ((outs[dtype] - outs[torch.float32]).abs().max() / scale) < (0.02 if dtype == torch.float16 else 0.1)
