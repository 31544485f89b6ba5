"""Sampling a SpaceTimeUNet: the one path every diffusion stage goes through.

`sample_unet` wraps the network (image mode, controls, sliding windows, closed loops) in a Denoiser, then in
classifier-free guidance, and runs one of the samplers of `diffusion.samplers` from seeded noise (independent,
shared or correlated between frames; FreeInit passes sample again from the result's low frequencies).
`estimate_unet` is the one-pass estimate of a network trained by regression (the regression ↑F).
Inputs may be on any device: they are moved to the model's once (placement.to_model). The sampling
state (x, sigmas, noise, init) stays float32; only the network runs in the model's dtype.
"""
from __future__ import annotations

import contextlib
import dataclasses
from typing import Callable

import torch

from ..diffusion import CFGDenoiser, Denoiser, KnownFrames, NoiseSampler, sample, sampling_sigmas, seeded_noise
from ..diffusion.noise import freeinit_start
from ..io.checkpoints import LoadedModel
from ..models.control import ControlledUNet
from .options import Guides, SamplingOptions, WindowOptions
from .placement import model_device_dtype, to_model
from .precision import autocast
from .windows import FrameWindows

NAN_CHECK_EVERY_ACCELERATOR = 8   # steps between host syncs for the NaN check on GPUs (1 on the CPU: no sync cost)


def default_nan_check_every(device) -> int:
    return 1 if torch.device(device).type == "cpu" else NAN_CHECK_EVERY_ACCELERATOR


class FiniteWatch:
    """Callback wrapper: records after every step whether the model output (`denoised`) is finite, as a
    device-side flag (no host sync), and reads the flags with one sync every `every` steps while at least
    `every` steps remain; the last flags are read together with the final sample's check (`finish`), so a
    run of n steps syncs at most ceil(n / every) times. A NaN/inf stops sampling with a FloatingPointError
    naming the first bad step; on a GPU it may be noticed up to every - 1 steps late (the trade-off against
    a sync per step). every=0: only the final sample is checked."""

    def __init__(self, what: str, total: int, every: int, callback=None):
        self.what, self.total, self.every, self.callback = what, total, every, callback
        self.flags: list = []

    def __call__(self, info):
        if self.every:
            self.flags.append(torch.isfinite(info["denoised"]).all())
            done = len(self.flags)
            if done % self.every == 0 and self.total - done >= self.every:
                self._raise_at_first_bad(torch.stack(self.flags).all())
        if self.callback is not None:
            self.callback(info)

    def _raise_at_first_bad(self, all_ok: torch.Tensor):
        if not bool(all_ok):   # the one host sync
            bad = (~torch.stack(self.flags)).nonzero() if self.flags else ()
            if len(bad):
                step = int(bad[0, 0]) + 1
                raise FloatingPointError(f"{self.what}: the model output became NaN/inf at step {step} of "
                                         f"{self.total} (try float32, fewer steps or another checkpoint)")
            raise FloatingPointError(f"{self.what}: sampling produced NaN/inf values in the final sample "
                                     "(try float32 or fewer steps)")

    def finish(self, out: torch.Tensor):
        """Check the remaining flags and the final sample with one host sync."""
        self._raise_at_first_bad(torch.stack(self.flags + [torch.isfinite(out).all()]).all())


class ImageMode(torch.nn.Module):
    """A SpaceTimeUNet run as its image model: frames folded into the batch, temporal layers skipped (SR_h)."""

    def __init__(self, net: torch.nn.Module):
        super().__init__()
        self.net = net

    @property
    def config(self):
        return self.net.config

    def forward(self, x, t, **cond):
        return self.net(x, t, temporal=False, **cond)


def image_mode(model: LoadedModel) -> LoadedModel:
    """The same checkpoint, sampled frame by frame as the image model."""
    return dataclasses.replace(model, module=ImageMode(model.module))


def is_regression(model: LoadedModel) -> bool:
    """A regression ↑F checkpoint: gives the unknown frames in one pass instead of sampling them."""
    return model.metadata.get("mav_interp_estimate") == "regression"


def _network(model: LoadedModel, cond: dict, windows: WindowOptions | None) -> torch.nn.Module:
    """The network sampled: controls inside the windows, so every window gets its slice of the hint videos."""
    net = model.module
    if cond.get("controls"):
        net = ControlledUNet(net, model.schedule.num_train_steps)
    if windows is not None:
        net = FrameWindows(net, windows.size, windows.overlap, loop=windows.loop)
    return net


def sample_unet(model: LoadedModel, shape, cond: dict, uncond: dict | None = None,
                options: SamplingOptions = SamplingOptions(), *, guides: Guides = Guides(),
                windows: WindowOptions | None = None, callback: Callable | None = None) -> torch.Tensor:
    """Draw a sample of `shape` ([B, C, F, H, W]) from a SpaceTimeUNet with guidance (options.cfg; uncond
    None or cfg 1: no guidance). guides.known + known_mask ([B, C, F, H, W], [F] or [B, F]): frames put into
    every denoised estimate (diffusion.KnownFrames), for models without frame-conditioning channels.
    guides.init + options.denoise < 1: start from `init` noised to the matching level
    (vid2vid / variations); denoise 0 returns `init` itself (float32), denoise 1 starts from the noise alone,
    exactly as without an init. windows: sliding temporal windows, or a closed loop (windows.FrameWindows).
    options.freeinit_iterations: that many more passes, each started from the previous result's low
    frequencies (diffusion.noise.freeinit_start); the callback sees every pass's steps. Returns float32 on
    the model's device."""
    options.validate()
    if windows is not None:
        windows.validate()
    if model.schedule is None:
        raise ValueError(f"{model.path}: checkpoint has no noise schedule; it is not a diffusion model")
    device, dtype = model_device_dtype(model.module)
    init = None if options.denoise >= 1.0 else guides.init
    if init is not None and tuple(init.shape) != tuple(shape):
        raise ValueError(f"init frames of shape {tuple(init.shape)} do not match the requested {tuple(shape)}")
    if init is not None and options.denoise == 0.0:
        return init.to(device, torch.float32)
    # every input on the model's device once; conditioning in the model's dtype, the sampling state
    # (x, sigmas, noise, init) in float32: half precision only inside the network (see Denoiser)
    cond, uncond = to_model(cond, device, dtype), to_model(uncond, device, dtype)
    den = Denoiser(_network(model, cond, windows), model.schedule, model.prediction or "eps", dtype=dtype).to(device)
    guided = CFGDenoiser(den, cond, uncond, options.cfg)
    if guides.known is not None:
        guided = KnownFrames(guided, guides.known.to(device, torch.float32), guides.known_mask)
    denoise = options.denoise if init is not None else 1.0
    sigmas = sampling_sigmas(model.schedule, options.steps, denoise, options.schedule)   # stays on the CPU
    noise = seeded_noise(shape, options.seed, device=device, dtype=torch.float32, shared_frames=options.noise_share)
    x = noise * float(sigmas[0])
    if init is not None:
        x = init.to(device, torch.float32) + x
    every = default_nan_check_every(device) if options.nan_check_every is None else options.nan_check_every
    with weights_frozen(model.module):   # guidance takes gradients for x only, never for the weights
        return _sample_passes(model, guided, x, sigmas, noise, options, every, callback)


@contextlib.contextmanager
def weights_frozen(module: torch.nn.Module):
    """The module's parameters with requires_grad off inside, as they were after. A gradient with respect to
    the input (reconstruction guidance) then saves no activation for a weight's gradient: none is built,
    and inputs made under a host's torch.inference_mode are never saved for backward."""
    flags = [(p, p.requires_grad) for p in module.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield module
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def _sample_passes(model, guided, x, sigmas, noise, options, every, callback):
    for iteration in range(options.freeinit_iterations + 1):
        if iteration:
            x = freeinit_start(out, noise, float(sigmas[0]), options.seed, iteration, options.noise_share,
                               options.freeinit_cutoff)
        watch = FiniteWatch(model.path, len(sigmas) - 1, every, callback)
        with autocast(options.precision, x.device):
            out = sample(options.sampler, guided, x, sigmas, callback=watch,
                         noise_sampler=NoiseSampler(options.seed, shared_frames=options.noise_share))
        watch.finish(out)
    return out


def estimate_unet(model: LoadedModel, shape, cond: dict, *, windows: WindowOptions | None = None,
                  precision: str = "fp32", callback: Callable | None = None) -> torch.Tensor:
    """One-pass estimate of `shape` from a network trained by regression (regression ↑F): the denoiser's x0
    at the largest noise level with x = 0, i.e. what the network predicts from its conditioning alone.
    Deterministic: no seed, no steps, no guidance. callback gets one call, as after one sampling step."""
    if model.schedule is None:
        raise ValueError(f"{model.path}: checkpoint has no noise schedule")
    device, dtype = model_device_dtype(model.module)
    cond = to_model(cond, device, dtype)
    den = Denoiser(_network(model, cond, windows), model.schedule, model.prediction or "eps", dtype=dtype).to(device)
    x = torch.zeros(shape, device=device, dtype=torch.float32)
    with autocast(precision, device):
        out = den.estimate_from_nothing(x, **cond)
    if not torch.isfinite(out).all():
        raise FloatingPointError(f"{model.path}: the one-pass estimate has NaN/inf values (try float32)")
    if callback is not None:
        callback({"i": 0, "x": x, "sigma": den.sigma_max, "denoised": out})
    return out
