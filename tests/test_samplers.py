"""Samplers against a closed-form answer, determinism and seeded noise (issue: core, acceptance 3).

Toy problem: data x0 ~ N(mu, s0^2) per element; the exact denoiser is
E[x0 | x = x0 + sigma*eps] = (s0^2 x + sigma^2 mu) / (s0^2 + sigma^2). A correct sampler run with the
exact denoiser must return samples with mean mu and std s0 (cosine schedule, 200 steps: tolerance
0.02 on the mean, 0.03 on the std; 20,000 samples)."""
import pytest
import torch

from mav_core.diffusion import (SAMPLERS, CFGDenoiser, NoiseSampler, NoiseSchedule, sample, sampling_sigmas,
                                seeded_noise)

MU, S0 = 0.7, 0.3


def exact_denoiser(x, sigma):
    s = sigma.reshape(-1, *([1] * (x.dim() - 1)))
    return (S0**2 * x + s**2 * MU) / (S0**2 + s**2)


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_sampler_matches_gaussian_moments(name):
    sched = NoiseSchedule("cosine")
    sigmas = sampling_sigmas(sched, 200)
    x = seeded_noise((20000, 1), 0) * sigmas[0]
    out = sample(name, exact_denoiser, x, sigmas, noise_sampler=NoiseSampler(1))
    assert abs(out.mean().item() - MU) < 0.02
    assert abs(out.std().item() - S0) < 0.03


def test_wrong_denoiser_is_detected():
    """The moment check is sharp enough to catch a denoiser with the wrong variance."""
    sched = NoiseSchedule("cosine")
    sigmas = sampling_sigmas(sched, 200)
    x = seeded_noise((20000, 1), 0) * sigmas[0]
    wrong = lambda x, s: (0.5**2 * x + s.reshape(-1, 1) ** 2 * MU) / (0.5**2 + s.reshape(-1, 1) ** 2)
    out = sample("ddim", wrong, x, sigmas)
    assert abs(out.std().item() - S0) > 0.1


def test_ddim_eta0_deterministic_and_ancestral_seeded():
    sched = NoiseSchedule("linear")
    sigmas = sampling_sigmas(sched, 20)
    x = seeded_noise((64, 3), 5) * sigmas[0]
    a = sample("ddim", exact_denoiser, x.clone(), sigmas)
    b = sample("ddim", exact_denoiser, x.clone(), sigmas)
    assert torch.equal(a, b)
    c = sample("euler_ancestral", exact_denoiser, x.clone(), sigmas, noise_sampler=NoiseSampler(3))
    d = sample("euler_ancestral", exact_denoiser, x.clone(), sigmas, noise_sampler=NoiseSampler(3))
    e = sample("euler_ancestral", exact_denoiser, x.clone(), sigmas, noise_sampler=NoiseSampler(4))
    assert torch.equal(c, d) and not torch.equal(c, e)


def test_seeded_noise_bit_identical_and_shared_frames():
    a = seeded_noise((2, 3, 5, 4, 4), 42)
    b = seeded_noise((2, 3, 5, 4, 4), 42)
    assert torch.equal(a, b)
    assert not torch.equal(a, seeded_noise((2, 3, 5, 4, 4), 43))
    s = seeded_noise((2, 3, 5, 4, 4), 42, shared_frames=True)
    assert all(torch.equal(s[:, :, 0], s[:, :, i]) for i in range(5))
    assert not torch.equal(s[0], s[1])


def test_seeded_noise_frame_share_sets_the_correlation():
    n = seeded_noise((1, 1, 4, 64, 64), 3, shared_frames=0.6)
    assert abs(n.std().item() - 1) < 0.05                      # unit variance per frame
    f = n[0, 0].reshape(4, -1)
    corr = torch.corrcoef(f)
    off = corr[~torch.eye(4, dtype=torch.bool)]
    assert (off - 0.6).abs().max() < 0.08                       # frames correlated by the share
    assert torch.equal(seeded_noise((1, 1, 4, 8, 8), 3, shared_frames=0.0), seeded_noise((1, 1, 4, 8, 8), 3))
    with pytest.raises(ValueError, match="shared_frames"):
        seeded_noise((1, 1, 4, 8, 8), 3, shared_frames=1.5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_seeded_noise_same_on_gpu():
    a = seeded_noise((4, 3, 8, 8), 7)
    g = seeded_noise((4, 3, 8, 8), 7, device="cuda")
    assert torch.equal(a, g.cpu())


def test_schedules_and_sigmas():
    for name in ("linear", "cosine", "scaled_linear"):
        s = NoiseSchedule(name).sigmas()
        assert (s[1:] > s[:-1]).all() and s[0] > 0
    sig = sampling_sigmas(NoiseSchedule("cosine"), 10, denoise=0.5)
    full = sampling_sigmas(NoiseSchedule("cosine"), 20)
    assert len(sig) == 11 and sig[-1] == 0 and torch.allclose(sig, full[-11:])
    with pytest.raises(ValueError, match="denoise"):
        sampling_sigmas(NoiseSchedule("cosine"), 10, denoise=0)
    with pytest.raises(ValueError, match="schedule name"):
        NoiseSchedule("quadratic")


def test_cfg_combines_cond_and_uncond():
    calls = []

    def den(x, sigma, context=None):
        calls.append(x.shape[0])
        return context.expand_as(x)

    cond, uncond = {"context": torch.ones(2, 3)}, {"context": torch.zeros(2, 3)}
    g = CFGDenoiser(den, cond, uncond, 3.0)
    out = g(torch.zeros(2, 3), torch.ones(2))
    assert calls == [4]  # one batched call for both halves
    assert torch.allclose(out, torch.full((2, 3), 3.0))
    assert torch.allclose(CFGDenoiser(den, cond, uncond, 1.0)(torch.zeros(2, 3), torch.ones(2)), torch.ones(2, 3))


def test_callback_can_cancel_within_one_step():
    seen = []

    class Cancel(Exception):
        pass

    def cb(info):
        seen.append(info["i"])
        if info["i"] == 2:
            raise Cancel

    sigmas = sampling_sigmas(NoiseSchedule("cosine"), 10)
    for name in SAMPLERS:
        seen.clear()
        with pytest.raises(Cancel):
            sample(name, exact_denoiser, torch.zeros(4, 1), sigmas, callback=cb, noise_sampler=NoiseSampler(0))
        assert seen == [0, 1, 2]
