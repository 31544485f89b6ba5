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

    def loss_fn(step, gen):
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
