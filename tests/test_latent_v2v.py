"""Video-to-video for latent decoders (mav_core.inference.generate: LatentVideo, generate_latent; the Sampler's
`latent` input): a host LATENT in either layout ([frames, 4, h, w] as VAE Encode gives, [B, 4, F, h, w] as a
video latent) is the init video in the decoder's own space. denoise 0 returns the input latent's values
unchanged (no round trip through the SD VAE scaling), denoise 1 is the text-to-video sample of the same
seed, bit for bit; a 2x upscaled latent sets the size; bad latents are refused naming `latent`.

Runs on a tiny random UNet3D (ModelScope / Zeroscope structure, eps, scaled-linear schedule)."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from mav_core.errors import InputError
from mav_core.inference import Guides, SamplingOptions, VideoShape, generate_video
from mav_core.inference.generate import LatentVideo, generate_latent, latent_samples, latent_video
from mav_core.io import unet_configs as UC
from mav_core.io.checkpoints import LoadedModel
from mav_core.io.external import UNET3D_PREDICTION, UNET3D_SCHEDULE
from mav_core.diffusion.schedule import NoiseSchedule
from mav_core.models.unet import SpaceTimeUNet, UNetConfig
from synthetic_weights import randomise

SD_VAE_SCALING = 0.18215
CONTEXT = 16
TINY_3D = dict(block_out_channels=[32, 64], down_block_types=["CrossAttnDownBlock3D", "DownBlock3D"],
               up_block_types=["UpBlock3D", "CrossAttnUpBlock3D"], layers_per_block=1, attention_head_dim=8,
               cross_attention_dim=CONTEXT, norm_num_groups=32)

pytestmark = pytest.mark.usefixtures("one_thread")   # bit-exact comparisons: one intra-op thread


@pytest.fixture(scope="module")
def decoder():
    module = SpaceTimeUNet(UC.config_from_diffusers({"_class_name": "UNet3DConditionModel", **TINY_3D})).eval()
    randomise(module, seed=1)
    return LoadedModel("tiny-unet3d", "decoder", "unet3d-diffusers", module, UNET3D_SCHEDULE, UNET3D_PREDICTION)


@pytest.fixture(scope="module")
def pixel_decoder():
    cfg = UNetConfig(block_out_channels=(16, 32), layers_per_block=1, attention_levels=(False, True),
                     context_dim=CONTEXT, norm_num_groups=8, attention_head_dim=16, image_embed_dim=0)
    module = SpaceTimeUNet(cfg).eval()
    randomise(module, seed=2)
    return LoadedModel("tiny-pixel", "decoder", "mav", module, NoiseSchedule("cosine"), "v")


def _cond(seed=3, batch=1):
    g = torch.Generator().manual_seed(seed)
    return {"context": torch.randn(batch, 5, CONTEXT, generator=g)}


def _encoded(frames=3, h=8, w=12, seed=4):
    """A LATENT as the host's VAE Encode gives it: [frames, 4, h, w], unscaled (SD latents / 0.18215 have a
    std of about 5); values that do not survive x * 0.18215 / 0.18215 in float32 included on purpose."""
    return torch.randn(frames, 4, h, w, generator=torch.Generator().manual_seed(seed)) * 5.0


def _options(**kw):
    return SamplingOptions(**{"seed": 7, "steps": 3, "cfg": 1.0, **kw})


@torch.no_grad()
def test_denoise_zero_returns_the_input_latent_exactly(decoder):
    samples = _encoded()
    scaled_back = samples * SD_VAE_SCALING / SD_VAE_SCALING
    assert not torch.equal(scaled_back, samples), "pick values a scaling round trip would change"
    out = generate_latent(decoder, _cond(), None, LatentVideo(samples, SD_VAE_SCALING), _options(denoise=0.0))
    assert torch.equal(out, samples) and out.data_ptr() != samples.data_ptr()
    video = samples.reshape(1, 3, 4, 8, 12).permute(0, 2, 1, 3, 4).contiguous()   # the same clip as [1, 4, F, h, w]
    out5 = generate_latent(decoder, _cond(), None, LatentVideo(video, SD_VAE_SCALING), _options(denoise=0.0))
    assert torch.equal(out5, samples)   # returned in the VAE Decode layout, values untouched


@torch.no_grad()
def test_denoise_one_equals_text_to_video_of_the_same_seed(decoder):
    samples = _encoded()
    cond, uncond = _cond(), _cond(seed=9)
    opts = _options(cfg=3.0)
    v2v = generate_latent(decoder, cond, uncond, LatentVideo(samples, SD_VAE_SCALING, fps=6.0), opts)
    t2v = generate_video(decoder, cond, uncond, VideoShape(3, 8, 12, 6.0), opts)
    assert torch.equal(v2v, latent_samples(t2v, SD_VAE_SCALING))
    other = generate_latent(decoder, cond, uncond, LatentVideo(samples * 0.5, SD_VAE_SCALING, fps=6.0), opts)
    assert torch.equal(other, v2v), "at denoise 1 the latent sets the size only"


@torch.no_grad()
def test_partial_denoise_keeps_part_of_the_input(decoder):
    samples = _encoded()
    latent = LatentVideo(samples, SD_VAE_SCALING)
    dist = {d: float((generate_latent(decoder, _cond(), None, latent, _options(denoise=d)) - samples).abs().mean())
            for d in (0.2, 1.0)}
    assert dist[0.2] < 0.5 * dist[1.0], dist
    again = generate_latent(decoder, _cond(), None, latent, _options(denoise=0.2))
    assert torch.equal(again, generate_latent(decoder, _cond(), None, latent, _options(denoise=0.2)))   # seeded


@torch.no_grad()
def test_a_2x_upscaled_video_latent_sets_the_size(decoder):
    """[1, 4, F, h, w] scaled 2x frame by frame (what the host's Upscale Latent does to a 5-D latent) ->
    frames and the doubled sides come from it; the output is the VAE Decode batch [F, 4, 2h, 2w]."""
    frames = _encoded(frames=2, h=6, w=8)
    up = F.interpolate(frames, scale_factor=2, mode="nearest-exact")
    video = up.reshape(1, 2, 4, 12, 16).permute(0, 2, 1, 3, 4)
    out = generate_latent(decoder, _cond(), None, LatentVideo(video, SD_VAE_SCALING), _options(denoise=0.6, steps=2))
    assert out.shape == (2, 4, 12, 16) and torch.isfinite(out).all()


@torch.no_grad()
def test_two_clips_share_a_frame_batch_clip_after_clip(decoder):
    samples = _encoded(frames=4)   # 2 clips of 2 frames, as latent_samples writes a batch of 2
    init = latent_video(decoder, LatentVideo(samples, SD_VAE_SCALING), clips=2)
    assert init.shape == (2, 4, 2, 8, 12)
    assert torch.equal(init[1, :, 0], samples[2] * SD_VAE_SCALING)
    assert torch.equal(latent_samples(init, 1.0), samples * SD_VAE_SCALING)


BAD = [
    (lambda s: s[:, :3], "has 3 channels"),
    (lambda s: s[0], r"got shape \(4, 8, 12\)"),
    (lambda s: s[:, :, :, :11], "width 11 must be a multiple of 2"),
    (lambda s: torch.where(s > 4.0, math.nan, s), "finite"),
    (lambda s: s.long(), "floating-point"),
]


@pytest.mark.parametrize("bad, message", BAD, ids=["channels", "layout", "side", "nan", "dtype"])
def test_bad_latents_are_refused_naming_latent(decoder, bad, message):
    with pytest.raises(InputError, match=message) as info:
        generate_latent(decoder, _cond(), None, LatentVideo(bad(_encoded()), SD_VAE_SCALING), _options(denoise=0.5))
    assert info.value.param == "latent"


def test_latent_errors_name_latent_and_what_was_expected(decoder, pixel_decoder):
    samples = _encoded()
    with pytest.raises(InputError, match="samples pixels") as info:
        generate_latent(pixel_decoder, _cond(), None, LatentVideo(samples), _options(denoise=0.5))
    assert info.value.param == "latent"
    with pytest.raises(InputError, match="both given") as info:
        generate_latent(decoder, _cond(), None, LatentVideo(samples), _options(denoise=0.5),
                        Guides(init=torch.zeros(1, 4, 3, 8, 12)))
    assert info.value.param == "latent"
    with pytest.raises(InputError, match="2 videos, but the conditioning asks for 1") as info:
        generate_latent(decoder, _cond(), None, LatentVideo(torch.zeros(2, 4, 3, 8, 12)), _options(denoise=0.5))
    with pytest.raises(InputError, match="cannot share equally"):
        latent_video(decoder, LatentVideo(samples), clips=2)


# ------------------------------------------------------------------------------------------------
# the Sampler node
# ------------------------------------------------------------------------------------------------

def _conditioning(seed):
    return [[_cond(seed)["context"], {}]]


@torch.no_grad()
def test_sampler_node_latent_in_and_out(pack, decoder):
    sampler = pack.NODE_CLASS_MAPPINGS["MakeAVideoSampler"]()
    pos, neg = _conditioning(3), _conditioning(9)
    # widgets: seed, steps, cfg, sampler, frames, fps, width, height, denoise; frames/size come from the latent
    args = (decoder, pos, neg, 7, 2, 3.0, "ddim", 16, 6.0, 512, 512)
    t2v = sampler.sample(*args[:7], 3, 6.0, 96, 64, 1.0)[2]["samples"]
    assert t2v.shape == (3, 4, 8, 12)
    samples = _encoded()
    assert torch.equal(sampler.sample(*args, 0.0, latent={"samples": samples})[2]["samples"], samples)
    assert torch.equal(sampler.sample(*args, 1.0, latent={"samples": samples})[2]["samples"], t2v)
    # this node's own LATENT back in: a round trip at denoise 0 is exact too
    assert torch.equal(sampler.sample(*args, 0.0, latent={"samples": t2v})[2]["samples"], t2v)
    up = {"samples": F.interpolate(samples, scale_factor=2, mode="bilinear")}
    frames, fps, out = sampler.sample(*args, 0.65, latent=up)
    assert frames is None and fps == 6.0 and out["samples"].shape == (3, 4, 16, 24)


def test_sampler_node_latent_errors_name_the_input(pack, decoder, pixel_decoder):
    sampler = pack.NODE_CLASS_MAPPINGS["MakeAVideoSampler"]()
    pos, neg = _conditioning(3), _conditioning(9)
    args = (pos, neg, 7, 1, 1.0, "ddim", 3, 6.0, 96, 64)
    image = torch.rand(3, 64, 96, 3)
    cases = [
        (dict(decoder=decoder, denoise=0.5, latent={"samples": _encoded()[:, :3]}), r"^latent: has 3 channels"),
        (dict(decoder=pixel_decoder, denoise=0.5, latent={"samples": _encoded()}), r"^latent: is for latent decoders"),
        (dict(decoder=pixel_decoder, denoise=0.5, latent={"samples": _encoded()}, init_frames=image),
         r"^latent: init_frames are connected too"),
        (dict(decoder=decoder, denoise=0.5, init_frames=image), r"^init_frames: .*VAE Encode the frames into `latent`"),
        (dict(decoder=decoder, denoise=0.5), r"^denoise: 0.5 < 1 needs latent to start from"),
        (dict(decoder=decoder, denoise=0.0), r"^denoise: 0.0 < 1 needs latent to start from"),
        (dict(decoder=decoder, denoise=0.5, latent=torch.zeros(3, 4, 8, 8)), r"^latent: expected a LATENT"),
        (dict(decoder=decoder, denoise=0.5, latent={"samples": _encoded()[:, :, :, :11]}),
         r"^latent: width 11 must be a multiple of 2 latent pixels"),
    ]
    for kw, pattern in cases:
        dec = kw.pop("decoder")
        denoise = kw.pop("denoise")
        with pytest.raises(ValueError, match=pattern):
            sampler.sample(dec, *args, denoise, **kw)
