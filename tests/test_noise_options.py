"""Start-noise options of the sampler: independent, shared across frames, correlated (a mixing weight), and
FreeInit's low-frequency re-initialisation (diffusion.noise.freeinit_start, SamplingOptions.freeinit_*).

Mechanics on exact properties (the filter passes DC and stops the highest frequency, the mix of a tensor with
itself is itself, iterations 0 is the plain sampler bit for bit), the node's inputs mapped to the core, and
on the shipped MAV-Tiny decoder the measured effect on motion that docs/sampling.md reports."""
import numpy as np
import pytest
import torch

from mav_core.diffusion.noise import freeinit_start, frequency_mix, lowpass_filter, seeded_noise
from mav_core.diffusion.schedule import NoiseSchedule
from mav_core.errors import InputError
from mav_core.inference import SamplingOptions, VideoShape, generate_video
from mav_core.io.checkpoints import LoadedModel
from mav_core.models.unet import SpaceTimeUNet


pytestmark = pytest.mark.usefixtures("one_thread")   # bit-exact comparisons: one intra-op thread


def test_lowpass_passes_dc_and_stops_the_highest_frequency():
    lpf = lowpass_filter(8, 16, 16, cutoff=0.25)
    assert lpf.shape == (8, 16, 16) and lpf[0, 0, 0] == 1.0
    assert lpf[4, 8, 8] < 1e-10                          # Nyquist on every axis
    assert (lpf[1:4, 0, 0].diff() < 0).all()             # falls off with temporal frequency
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(2, 3, 8, 16, 16, generator=g), torch.randn(2, 3, 8, 16, 16, generator=g)
    assert torch.allclose(frequency_mix(a, a), a, atol=1e-5)
    flat = torch.full_like(a, 0.7)
    checker = (-1.0) ** (torch.arange(8)[:, None, None] + torch.arange(16)[:, None] + torch.arange(16)).float()
    checker = checker.expand_as(a)
    assert torch.allclose(frequency_mix(flat, b * 0), flat, atol=1e-5)         # DC comes from `low`
    assert frequency_mix(checker, b * 0).abs().max() < 1e-5                    # the highest frequency does not
    assert torch.allclose(frequency_mix(b * 0, checker), checker, atol=1e-5)   # ... it comes from `high`
    with pytest.raises(ValueError, match="cutoff"):
        lowpass_filter(4, 4, 4, cutoff=0.0)


def test_freeinit_start_keeps_the_low_frequencies_of_the_diffused_result():
    g = torch.Generator().manual_seed(1)
    clean = torch.randn(1, 3, 8, 16, 16, generator=g)
    noise = torch.randn(1, 3, 8, 16, 16, generator=g)
    start = freeinit_start(clean, noise, 10.0, seed=3, iteration=1)
    lpf = lowpass_filter(8, 16, 16)
    low = lambda v: torch.fft.fftn(v, dim=(-3, -2, -1)) * lpf   # noqa: E731
    # the low band is exactly that of the diffused result (the fresh noise only enters through 1 - lpf)
    fresh_part = low(start) - low(clean + 10.0 * noise)
    assert (fresh_part.abs() <= (torch.fft.fftn(start - (clean + 10.0 * noise), dim=(-3, -2, -1)).abs() * lpf
                                 + 1e-3)).all()
    assert torch.equal(start, freeinit_start(clean, noise, 10.0, seed=3, iteration=1))      # seeded
    assert not torch.equal(start, freeinit_start(clean, noise, 10.0, seed=3, iteration=2))  # new high band
    # unit-variance noise in, noise of about sigma's scale out (the sampler's start level)
    assert 7.0 < float((start - clean).std()) < 11.0


def _tiny_decoder(cfg):
    torch.manual_seed(0)
    return LoadedModel("tiny", "decoder", "mav", SpaceTimeUNet(cfg).eval(), NoiseSchedule("cosine"), "v")


def test_freeinit_iterations_resample_and_zero_is_the_plain_sampler(tiny_unet_config):
    dec = _tiny_decoder(tiny_unet_config)
    cond = {"context": torch.randn(1, 3, tiny_unet_config.context_dim, generator=torch.Generator().manual_seed(1)),
            "image_embed": torch.ones(1, tiny_unet_config.image_embed_dim)}
    shape = VideoShape(4, 16, 16)
    steps = []
    plain = generate_video(dec, cond, None, shape, SamplingOptions(seed=2, steps=3))
    zero = generate_video(dec, cond, None, shape, SamplingOptions(seed=2, steps=3, freeinit_iterations=0))
    two = generate_video(dec, cond, None, shape, SamplingOptions(seed=2, steps=3, freeinit_iterations=2),
                         callback=lambda info: steps.append(info["i"]))
    assert torch.equal(plain, zero)
    assert steps == [0, 1, 2] * 3                       # every pass's steps reach the callback (progress, Cancel)
    assert not torch.allclose(two, plain, atol=1e-4)
    assert torch.equal(two, generate_video(dec, cond, None, shape,
                                           SamplingOptions(seed=2, steps=3, freeinit_iterations=2)))
    for bad, param in (({"freeinit_iterations": -1}, "freeinit_iterations"),
                       ({"freeinit_iterations": 11}, "freeinit_iterations"),
                       ({"freeinit_cutoff": 0.0}, "freeinit_cutoff")):
        with pytest.raises(InputError, match=param):
            SamplingOptions(**bad).validate()


def test_frame_correlation_of_the_noise_options():
    """independent: frames uncorrelated; shared: identical; correlated: correlation = the mixing weight."""
    def corr(share):
        n = seeded_noise((1, 1, 6, 64, 64), 5, shared_frames=share)[0, 0].reshape(6, -1)
        c = torch.corrcoef(n)
        return float(c[~torch.eye(6, dtype=torch.bool)].mean())
    assert abs(corr(0.0)) < 0.05
    assert corr(1.0) > 0.999
    for share in (0.3, 0.7):
        assert abs(corr(share) - share) < 0.06


@pytest.fixture(scope="module")
def shipped(pack):
    return pack.loaders.BundleLoader().load("mav-tiny")


def test_sampler_node_noise_inputs(pack, shipped):
    """The node's noise choice maps to the core's share (shared = 1, independent = 0, correlated = the
    noise_share input); freeinit_iterations reaches the core and the progress bar counts every pass."""
    text, prior, decoder = shipped[0], shipped[1], shipped[2]
    prompt = "a small red circle on a dark blue background"
    pos = pack.NODE_CLASS_MAPPINGS["MakeAVideoTextEncode"]().encode(text, prompt)[0]
    pos = pack.NODE_CLASS_MAPPINGS["MakeAVideoPrior"]().run(prior, pos, 0, 2, 1.0)[0]
    neg = pack.NODE_CLASS_MAPPINGS["MakeAVideoTextEncode"]().encode(text, "")[0]
    sampler = pack.NODE_CLASS_MAPPINGS["MakeAVideoSampler"]()
    args = (decoder, pos, neg, 4, 2, 1.0, "ddim", 3, 8.0, 32, 32, 1.0)
    independent = sampler.sample(*args)[0]
    assert torch.equal(sampler.sample(*args, noise="independent", noise_share=0.9)[0], independent)
    shared = sampler.sample(*args, noise="shared")[0]
    assert torch.equal(sampler.sample(*args, noise="correlated", noise_share=1.0)[0], shared)
    correlated = sampler.sample(*args, noise="correlated", noise_share=0.5)[0]
    assert len({independent.sum().item(), shared.sum().item(), correlated.sum().item()}) == 3
    with pytest.raises(ValueError, match="noise"):
        sampler.sample(*args, noise="pink")
    with pytest.raises(ValueError, match="noise_share"):
        sampler.sample(*args, noise="correlated", noise_share=1.5)
    with pytest.raises(ValueError, match="freeinit_iterations"):
        sampler.sample(*args, freeinit_iterations=-1)
    bars = []
    real = pack.host.ProgressBar
    pack.host.ProgressBar = lambda total: bars.append(real(total)) or bars[-1]
    try:
        sampler.sample(*args, freeinit_iterations=2)
    finally:
        pack.host.ProgressBar = real
    assert bars[-1].total == 6 and bars[-1].value == 6


def motion(video: torch.Tensor) -> float:
    """Mean absolute difference of consecutive frames (0..1 pixel scale): how much the clip moves."""
    return float((video[:, :, 1:] - video[:, :, :-1]).abs().mean() / 2)


@torch.no_grad()
def test_shared_noise_moves_less_than_independent_on_mav_tiny():
    """On the shipped decoder, the same noise in every frame gives stiller clips than independent noise, and a
    correlated mix lies between (per seed the order can swap; the mean over seeds is what docs report)."""
    from mav_core.inference.pipeline import MakeAVideo
    mav = MakeAVideo.load()
    res = {0.0: [], 0.5: [], 1.0: []}
    for seed in range(3):
        cond, _ = mav.conditioning("a small red circle on a dark blue background", "", seed, 8, 1.0)
        for share in res:
            out = generate_video(mav.decoder, cond, None, VideoShape(8, 32, 32, 8.0),
                                 SamplingOptions(seed=seed, steps=6, noise_share=share))
            res[share].append(motion(out))
    m = {k: float(np.mean(v)) for k, v in res.items()}
    assert m[1.0] < m[0.5] < m[0.0], m
