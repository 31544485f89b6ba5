"""The DDPM training loss for eps-, v- or x0-prediction on any number of leading dims, and the per-frame
PSNR loss of one-pass (regression) estimates."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .schedule import NoiseSchedule


def diffusion_loss(network, x0: torch.Tensor, schedule: NoiseSchedule, prediction: str = "eps",
                   generator: torch.Generator | None = None, shared_frames: bool = False,
                   loss_mask: torch.Tensor | None = None, min_snr_gamma: float = 0.0, **cond) -> torch.Tensor:
    """MSE between the network's output at a random timestep and its target (eps or v).

    x0: [B, C, H, W] or [B, C, F, H, W]. With shared_frames, one noise image is used for all frames.
    loss_mask (broadcastable to x0) weights the per-element loss (e.g. only the generated frames).
    min_snr_gamma > 0: Min-SNR-gamma weighting (Hang et al. 2023), each sample's loss scaled so that
    its x0-error weight is min(SNR, gamma); spends less of the budget on nearly clean inputs.
    """
    b = x0.shape[0]
    ac = schedule.alphas_cumprod().to(x0.device, torch.float32)
    t = torch.randint(0, schedule.num_train_steps, (b,), generator=generator).to(x0.device)
    if shared_frames and x0.dim() == 5:
        noise = torch.randn((*x0.shape[:2], 1, *x0.shape[3:]), generator=generator).to(x0).expand_as(x0)
    else:
        noise = torch.randn(x0.shape, generator=generator).to(x0)
    err = noised_error(network, x0, (ac, t, noise), prediction, min_snr_gamma, **cond)
    if loss_mask is not None:
        mask = loss_mask.expand_as(err).float()
        return (err * mask).sum() / mask.sum().clamp(min=1)
    return err.mean()


def noised_error(network, x0: torch.Tensor, draw: tuple, prediction: str, min_snr_gamma: float = 0.0,
                 **cond) -> torch.Tensor:
    """Per-element squared error of the network's output on x0 noised to timesteps t with `noise`
    (draw = (alphas_cumprod, t, noise)) against its target (eps, v or x0), Min-SNR weighted when gamma > 0."""
    ac, t, noise = draw
    a = ac[t].reshape(-1, *([1] * (x0.dim() - 1)))
    x_t = a.sqrt() * x0 + (1 - a).sqrt() * noise
    if prediction not in ("eps", "v", "x0"):
        raise ValueError(f"prediction {prediction!r} is not one of ('eps', 'v', 'x0')")
    target = {"eps": lambda: noise, "x0": lambda: x0,
              "v": lambda: a.sqrt() * noise - (1 - a).sqrt() * x0}[prediction]()
    out = network(x_t, t, **cond).float()
    err = (out - target.float()) ** 2
    if min_snr_gamma > 0:
        err = err * min_snr_weight(a.float(), prediction, min_snr_gamma)
    return err


def psnr_loss(pred: torch.Tensor, target: torch.Tensor, frame_mask: torch.Tensor | None = None,
              eps: float = 1.5e-5) -> torch.Tensor:
    """Mean over frames of log(MSE + eps): minimising it maximises the mean per-frame PSNR (what
    interpolation is scored on), so nearly static frames, where any error costs many dB, weigh as much as
    fast ones. pred/target [B, C, F, H, W] in -1..1; frame_mask [B, F] bool selects the scored frames;
    eps (~half a 0-255 level squared, in -1..1 units) bounds the reward for frames that are already exact."""
    per_frame = ((pred.float() - target.float()) ** 2).mean(dim=(1, 3, 4))          # [B, F]
    logs = (per_frame + eps).log()
    return logs[frame_mask].mean() if frame_mask is not None else logs.mean()


def min_snr_weight(alpha_cumprod: torch.Tensor, prediction: str, gamma: float) -> torch.Tensor:
    """Per-sample weight turning the prediction's MSE into a min(SNR, gamma)-weighted x0 error."""
    snr = alpha_cumprod / (1 - alpha_cumprod).clamp(min=1e-8)
    clipped = snr.clamp(max=gamma)
    return {"eps": clipped / snr.clamp(min=1e-8), "v": clipped / (snr + 1), "x0": clipped}[prediction]
