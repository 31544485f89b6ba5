"""Sliding temporal windows for long videos (generate_video(..., windows=WindowOptions(...))).

Mechanics on a tiny random-weight model (no trained weights needed): blending is exact for frame-local
networks, conditioning slices with the window, every boundary moves between steps, and the windowed
sampler leaves no jumps at window boundaries beyond the clip's other transitions.
With random weights the frames are noise-dominated, so the seam check guards the mechanics (a broken
blend or misplaced window shows); how invisible seams are with trained weights is not measured here."""
import math

import numpy as np
import pytest
import torch

from mav_core.inference.windows import FrameWindows
from mav_core.io.checkpoints import LoadedModel
from mav_core.diffusion.schedule import NoiseSchedule
from mav_core.inference import Guides, SamplingOptions, VideoShape, WindowOptions, generate_video
from mav_core.models.unet import SpaceTimeUNet, UNetConfig


pytestmark = pytest.mark.usefixtures("one_thread")   # bit-exact comparisons: one intra-op thread


def _tiny_decoder(seed=0, extra=0):
    cfg = UNetConfig(in_channels=3, out_channels=3, extra_in_channels=extra, block_out_channels=(16, 32),
                     layers_per_block=1, attention_levels=(False, True), context_dim=8, norm_num_groups=8,
                     attention_head_dim=16, image_embed_dim=0)
    model = SpaceTimeUNet(cfg).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():                       # random weights everywhere, temporal layers included
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    return LoadedModel("tiny-decoder", "decoder", "mav", model, NoiseSchedule("cosine"), "v")


def test_windows_cover_the_clip_and_every_boundary_moves():
    net = FrameWindows(torch.nn.Identity(), 16, 4)
    assert net.shifts() == [0, 3, 6, 9]                  # a quarter stride per step
    for frames in (17, 40, 128):
        edge_sets = []
        for shift in net.shifts():
            spans = net.spans(frames, shift)
            assert spans[0][0] == 0 and spans[-1][1] == frames
            assert all(5 <= b - a <= 16 for a, b in spans)                            # overlap + 1 .. window
            assert all(b0 - a1 == 4 for (_, b0), (a1, _) in zip(spans, spans[1:]))   # overlap exactly 4
            edge_sets.append({a - 1 for a, _ in spans[1:]} | {b - 1 for _, b in spans[:-1]})
        # no transition is a window edge at every step, the clip's first and last windows included
        assert not set.intersection(*edge_sets)
        assert sorted(set.union(*edge_sets)) == net.edge_transitions(frames)
    assert net.spans(12, 6) == [(0, 12)]
    with pytest.raises(ValueError, match="context_window"):
        FrameWindows(torch.nn.Identity(), 1)
    with pytest.raises(ValueError, match="context_overlap"):
        FrameWindows(torch.nn.Identity(), 8, 8)


def test_blending_is_exact_for_frame_local_networks_and_slices_conditioning():
    model = _tiny_decoder(extra=2).module
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, 23, 8, 8, generator=g)
    extra = torch.randn(2, 2, 23, 8, 8, generator=g)
    ctx = torch.randn(2, 3, 8, generator=g)
    t = torch.tensor([5.0, 600.0])

    class PerFrame(torch.nn.Module):                 # image mode: each frame alone
        def forward(self, x, t, **cond):
            return model(x, t, temporal=False, **cond)

    with torch.no_grad():
        full = PerFrame()(x, t, context=ctx, extra=extra)
        windowed = FrameWindows(PerFrame(), 8, 3)(x, t, context=ctx, extra=extra)
        short = FrameWindows(model, 32)(x, t, context=ctx, extra=extra)     # window >= frames: one call
        assert torch.equal(short, model(x, t, context=ctx, extra=extra))
        per_frame_ctx = torch.randn(2, 23, 3, 8, generator=g)            # prompt travel: a context per frame
        full_pf = PerFrame()(x, t, context=per_frame_ctx, extra=extra)
        windowed_pf = FrameWindows(PerFrame(), 8, 3)(x, t, context=per_frame_ctx, extra=extra)
    assert (windowed - full).abs().max().item() < 1e-5
    assert (windowed_pf - full_pf).abs().max().item() < 1e-5
    assert (full_pf - full).abs().max().item() > 1e-3           # the per-frame context is used


def _frame_diffs(video: torch.Tensor) -> np.ndarray:
    return (video[:, :, 1:] - video[:, :, :-1]).abs().mean(dim=(0, 1, 3, 4)).numpy()


def test_no_seams_at_window_boundaries():
    decoder = _tiny_decoder(seed=2)
    frames, window, overlap = 44, 16, 4
    # a smooth moving pattern as the starting video, partially noised: consecutive frames are close,
    # so a seam would show as a jump in the frame difference
    tt = torch.arange(frames, dtype=torch.float32)[:, None, None]
    yy, xx = torch.meshgrid(torch.linspace(0, 1, 16), torch.linspace(0, 1, 16), indexing="ij")
    init = torch.stack([torch.sin(2 * math.pi * (xx + 0.02 * tt)), torch.cos(2 * math.pi * (yy - 0.015 * tt)),
                        torch.sin(2 * math.pi * (xx + yy + 0.01 * tt))], dim=0)[None] * 0.8
    cond = {"context": torch.randn(1, 3, 8, generator=torch.Generator().manual_seed(3))}
    with torch.no_grad():
        video = generate_video(decoder, cond, None, VideoShape(frames, 16, 16), SamplingOptions(seed=5, steps=4, denoise=0.7),
                               Guides(init=init), WindowOptions(window, overlap))
    assert video.shape == (1, 3, frames, 16, 16) and torch.isfinite(video).all()
    d = _frame_diffs(video)
    seams = FrameWindows(torch.nn.Identity(), window, overlap).edge_transitions(frames)   # t -> t+1 at any edge
    inner = np.delete(d, seams)
    # the boundaries move a quarter stride a step, so most transitions are an edge at some step: a gross
    # failure of the windowed sampler shows as jumps far above the clip's other transitions (exactness of the
    # blend itself is checked above)
    assert d[seams].max() <= 1.2 * inner.max(), (d[seams], inner.max())
    assert d[seams].mean() <= 1.1 * inner.mean(), (d[seams].mean(), inner.mean())
