"""Closed loops (WindowOptions(loop=True), the sampler node's `loop`): the windows wrap around the clip's end,
so the last frame flows into the first.

Mechanics (every frame covered by full windows, the wrap inside a window at every step, errors naming
`loop`), the node's input, and the seam criterion on the shipped MAV-Tiny decoder: the wrap transition's
frame difference is within the clip's own spread (<= the 95th percentile of its other transitions) in at
least 8 of 10 seeds."""
import numpy as np
import pytest
import torch

from mav_core.diffusion.schedule import NoiseSchedule
from mav_core.errors import InputError
from mav_core.inference import SamplingOptions, VideoShape, WindowOptions, generate_video
from mav_core.inference.windows import FrameWindows
from mav_core.io.checkpoints import LoadedModel
from mav_core.models.unet import SpaceTimeUNet


pytestmark = pytest.mark.usefixtures("one_thread")   # bit-exact comparisons: one intra-op thread


@pytest.mark.parametrize("frames,window,overlap", [(8, 16, 4), (16, 16, 4), (17, 8, 2), (40, 16, 4), (30, 10, 0)])
def test_loop_windows_wrap_cover_every_frame_and_hold_the_wrap_inside(frames, window, overlap):
    net = FrameWindows(torch.nn.Identity(), window, overlap, loop=True)
    step = net.loop_step(frames)
    starts, wrap_seen = set(), 0
    for call in range(2 * frames):
        spans = net.loop_spans(frames, call * step % frames)
        covered = np.zeros(frames, int)
        wrap_inside = False
        for start, n in spans:
            assert n == (window if frames > window else (frames + 1) // 2)   # full windows, none holds the loop
            idx = (start + np.arange(n)) % frames
            covered[idx] += 1
            wrap_inside |= any(a == frames - 1 and b == 0 for a, b in zip(idx[:-1], idx[1:]))
            starts.add(start)
        assert (covered >= 1).all()
        wrap_seen += wrap_inside
    if overlap or frames <= window:
        assert wrap_seen == 2 * frames                           # F-1 -> 0 is inside a window at every step
    else:                                                        # windows that only touch: all but at a boundary
        assert wrap_seen >= 2 * frames * (1 - 1 / (window - overlap)) - 1
    assert len(starts) >= min(frames, 8)                          # the windows move around the whole loop


class Mean(torch.nn.Module):
    """A temporal toy network: every frame becomes the mean of its window (shows which frames a window held)."""

    def forward(self, x, t, **cond):
        return x.mean(dim=2, keepdim=True).expand_as(x)


def test_loop_blends_across_the_wrap_and_off_is_the_plain_windows():
    x = torch.arange(12, dtype=torch.float32).reshape(1, 1, 12, 1, 1)
    t = torch.zeros(1)
    plain = FrameWindows(Mean(), 6, 2)
    looped = FrameWindows(Mean(), 6, 2, loop=True)
    out_plain, out_loop = plain(x, t), looped(x, t)
    # without loop the first frame only mixes with the clip's start; in a loop it also mixes with the end
    assert out_plain[0, 0, 0].item() < 3.0
    assert out_loop[0, 0, 0].item() > out_plain[0, 0, 0].item() + 1.0
    assert torch.equal(FrameWindows(Mean(), 6, 2, loop=False)(x, t), out_plain)
    # a loop that fits one window: windows of half the clip, so no window holds (and averages) the whole loop
    one = FrameWindows(Mean(), 16, 4, loop=True)
    assert one.loop_layout(12) == (6, 3)
    out = one(x, t)
    assert out[0, 0, 0].item() > 3.0 and out.std() > 1.0


@pytest.mark.parametrize("frames,window,overlap", [(12, 16, 4), (24, 8, 2)])
def test_a_loop_has_no_start_rolling_the_input_rolls_the_output(tiny_unet_config, frames, window, overlap):
    """Rotation equivariance on a temporal random-weight network: rolling the frames by a multiple of the
    windows' stride rolls every step's output the same way (the same windows, relabelled), so the wrap is
    denoised exactly like any other transition; without loop the clip has ends and the roll changes it."""
    net = _tiny(tiny_unet_config).module
    g = torch.Generator().manual_seed(8)
    x = torch.randn(1, 3, frames, 16, 16, generator=g)
    ctx = torch.randn(1, 3, tiny_unet_config.context_dim, generator=g)
    emb = torch.randn(1, tiny_unet_config.image_embed_dim, generator=g)
    t = torch.tensor([500.0])
    looped, shifted = FrameWindows(net, window, overlap, loop=True), FrameWindows(net, window, overlap, loop=True)
    lw, lo = looped.loop_layout(frames)
    k = lw - lo                                                   # one stride
    with torch.no_grad():
        for _ in range(3):                                        # three calls: three window placements
            out = looped(x, t, context=ctx, image_embed=emb)
            rolled = shifted(torch.roll(x, k, dims=2), t, context=ctx, image_embed=emb)
            assert (rolled - torch.roll(out, k, dims=2)).abs().max().item() < 1e-4
        plain = FrameWindows(net, window, overlap)
        out = plain(x, t, context=ctx, image_embed=emb)
        rolled = FrameWindows(net, window, overlap)(torch.roll(x, k, dims=2), t, context=ctx, image_embed=emb)
    assert (rolled - torch.roll(out, k, dims=2)).abs().max().item() > 1e-3


def _tiny(cfg):
    torch.manual_seed(0)
    model = SpaceTimeUNet(cfg).eval()
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    return LoadedModel("tiny", "decoder", "mav", model, NoiseSchedule("cosine"), "v")


def test_loop_errors_name_loop(tiny_unet_config):
    dec = _tiny(tiny_unet_config)
    cond = {"context": torch.randn(1, 3, tiny_unet_config.context_dim)}
    with pytest.raises(InputError, match="loop"):
        generate_video(dec, cond, None, VideoShape(1, 16, 16), SamplingOptions(steps=1),
                       windows=WindowOptions(4, loop=True))
    with pytest.raises(InputError, match="loop"):
        WindowOptions(4, loop="yes").validate()
    out = generate_video(dec, cond, None, VideoShape(6, 16, 16), SamplingOptions(steps=2),
                         windows=WindowOptions(6, loop=True))
    plain = generate_video(dec, cond, None, VideoShape(6, 16, 16), SamplingOptions(steps=2))
    assert out.shape == plain.shape and not torch.allclose(out, plain, atol=1e-4)


@pytest.fixture(scope="module")
def shipped(pack):
    return pack.loaders.BundleLoader().load("mav-tiny")


def test_sampler_node_loop_input(pack, shipped):
    """loop without a context window: the clip in wrapped windows of half its length; with one, in those."""
    text, prior, decoder = shipped[0], shipped[1], shipped[2]
    enc = pack.NODE_CLASS_MAPPINGS["MakeAVideoTextEncode"]()
    prompt = "a small red circle on a dark blue background"
    pos = pack.NODE_CLASS_MAPPINGS["MakeAVideoPrior"]().run(prior, enc.encode(text, prompt)[0], 0, 2, 1.0)[0]
    neg = enc.encode(text, "")[0]
    sampler = pack.NODE_CLASS_MAPPINGS["MakeAVideoSampler"]()
    args = (decoder, pos, neg, 3, 2, 1.0, "ddim", 6, 8.0, 32, 32, 1.0)
    looped = sampler.sample(*args, loop=True)[0]
    windowed_loop = sampler.sample(*args, loop=True, context_window=4, context_overlap=1)[0]
    plain = sampler.sample(*args)[0]
    assert looped.shape == windowed_loop.shape == plain.shape == (6, 32, 32, 3)
    assert not torch.equal(looped, plain) and not torch.equal(looped, windowed_loop)
    with pytest.raises(ValueError, match="loop"):
        sampler.sample(decoder, pos, neg, 3, 2, 1.0, "ddim", 1, 8.0, 32, 32, 1.0, loop=True)


def wrap_seam(video: torch.Tensor) -> tuple[float, float]:
    """(wrap transition, 95th percentile of the other transitions): mean absolute frame difference, 0..255."""
    v = ((video[0].clamp(-1, 1) + 1) * 127.5).double()
    d = (torch.roll(v, -1, dims=1) - v).abs().mean(dim=(0, 2, 3)).numpy()
    return float(d[-1]), float(np.percentile(d[:-1], 95))


@torch.no_grad()
def test_mav_tiny_loop_seam_is_within_the_clips_spread_for_8_of_10_seeds():
    from mav_core.inference.pipeline import MakeAVideo
    mav = MakeAVideo.load()
    prompts = ["a small red circle on a dark blue background", "a large yellow square on a gray background"]
    seams = []
    for seed in range(10):
        cond, _ = mav.conditioning(prompts[seed % 2], "", seed, 8, 1.0)
        video = generate_video(mav.decoder, cond, None, VideoShape(12, 32, 32, 8.0),
                               SamplingOptions(seed=seed, steps=5), windows=WindowOptions(12, loop=True))
        seams.append(wrap_seam(video))
    passed = sum(wrap <= p95 for wrap, p95 in seams)
    assert passed >= 8, seams
