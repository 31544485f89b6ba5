"""Training options of the recipe: weight EMA (saved in place of the raw weights, resumable) and
Min-SNR-gamma loss weighting."""
from __future__ import annotations

import torch

from mav_core.diffusion.loss import min_snr_weight
from mav_core.train.loop import TrainSettings, train_loop, update_ema


def test_update_ema_moves_floats_and_copies_integer_buffers():
    a, b = torch.nn.BatchNorm1d(3), torch.nn.BatchNorm1d(3)
    with torch.no_grad():
        a.weight.fill_(1.0)
        b.weight.fill_(3.0)
    b.num_batches_tracked.fill_(7)
    update_ema(a, b, 0.9)
    assert torch.allclose(a.weight, torch.full((3,), 1.2))
    assert int(a.num_batches_tracked) == 7


class Interrupted(Exception):
    pass


def _run(tmp_path, steps, saved, stop_at=None):
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    target = torch.tensor([[1.0, -2.0, 0.5, 3.0]])

    def loss_fn(step, gen, shard):   # one process: the shard is the whole batch
        if step == stop_at:
            raise Interrupted
        x = torch.randn(8, 4, generator=gen)
        return ((model(x) - x @ target.t()) ** 2).mean()

    settings = TrainSettings(out=str(tmp_path), steps=steps, lr=0.05, warmup=1, save_every=5, ema=0.9,
                             log_every=1000)
    train_loop("toy", model, list(model.parameters()), loss_fn, settings,
               lambda m: saved.append({k: v.clone() for k, v in m.state_dict().items()}))
    return model


def test_ema_weights_are_saved_and_resume_exactly(tmp_path):
    saved_full: list[dict] = []
    raw = _run(tmp_path / "full", 20, saved_full)
    final = saved_full[-1]
    assert not torch.allclose(final["weight"], raw.weight), "the saved file must hold the EMA, not the raw weights"
    # a run killed at step 12 (last state saved at 10), then resumed, ends with the same EMA
    saved_split: list[dict] = []
    try:
        _run(tmp_path / "split", 20, saved_split, stop_at=12)
    except Interrupted:
        pass
    _run(tmp_path / "split", 20, saved_split)
    assert torch.allclose(saved_split[-1]["weight"], final["weight"], atol=1e-6)


def test_min_snr_weight_gives_the_same_x0_weighting_for_every_prediction():
    """weight * (prediction error)^2 == min(SNR, gamma) * (x0 error)^2 whichever quantity is predicted."""
    a = torch.tensor([0.999, 0.9, 0.5, 0.1, 0.001])
    snr = a / (1 - a)
    gamma = 5.0
    delta = torch.tensor(0.3)       # an error in the predicted quantity
    x0_error = {"eps": delta * ((1 - a) / a).sqrt(),     # x0 = (x_t - sqrt(1-a) eps) / sqrt(a)
                "v": delta * (1 - a).sqrt(),             # x0 = sqrt(a) x_t - sqrt(1-a) v
                "x0": delta.expand_as(a)}
    for prediction, err in x0_error.items():
        lhs = min_snr_weight(a, prediction, gamma) * delta ** 2
        rhs = snr.clamp(max=gamma) * err ** 2
        assert torch.allclose(lhs, rhs, rtol=1e-5), prediction


def test_psnr_loss_is_the_mean_per_frame_psnr_and_scores_only_masked_frames():
    """-10/ln(10) * psnr_loss (eps 0) + 10 log10(4) is the mean PSNR of the frames in -1..1 (peak-to-peak 2);
    frames outside frame_mask do not change it."""
    import math
    from mav_core.diffusion.loss import psnr_loss
    gen = torch.Generator().manual_seed(0)
    target = torch.rand(2, 3, 4, 8, 8, generator=gen) * 2 - 1
    noise_level = torch.tensor([0.01, 0.1, 0.3, 0.03]).reshape(1, 1, 4, 1, 1)
    pred = target + noise_level * torch.randn(target.shape, generator=gen)
    mse = ((pred - target) ** 2).mean(dim=(1, 3, 4))
    mean_psnr = (10 * torch.log10(4 / mse)).mean().item()
    assert abs(-10 / math.log(10) * psnr_loss(pred, target, eps=0).item() + 10 * math.log10(4) - mean_psnr) < 1e-3
    mask = torch.tensor([[True, False, True, False]] * 2)
    other = pred.clone()
    other[:, :, 1] += 5.0
    assert psnr_loss(other, target, mask) == psnr_loss(pred, target, mask)
    assert psnr_loss(other, target) > psnr_loss(pred, target)


def test_random_interpolation_mask_always_keeps_both_ends_and_leaves_gaps():
    from mav_core.inference.frame_masks import random_interpolation_mask
    gen = torch.Generator().manual_seed(0)
    seen = set()
    for _ in range(200):
        m = random_interpolation_mask(9, gen)
        assert m[0] and m[-1] and not m.all()
        known = m.nonzero().flatten().tolist()
        gaps = {b - a for a, b in zip(known, known[1:])}
        assert len(gaps) <= 2 and max(gaps) >= 2      # evenly spaced known frames (the last may close early)
        seen.add(tuple(known))
    assert len(seen) >= 4                                # multipliers 2, 3, 4, 8 and both ends
