"""Stage functions' frame bookkeeping: ↑F keeps the known frames, blends fill the gaps."""
import torch

from mav_core import family
from mav_core.checkpoints import LoadedModel
from mav_core.diffusion import NoiseSchedule
from mav_core.stages import interpolate_video, linear_blend_frames
from mav_core.unet import SpaceTimeUNet


def test_linear_blend_frames():
    grid = torch.zeros(1, 1, 5, 1, 1)
    grid[:, :, 0], grid[:, :, 2], grid[:, :, 4] = 0.0, 1.0, 3.0
    out = linear_blend_frames(grid, 2)
    assert out.flatten().tolist() == [0.0, 0.5, 1.0, 2.0, 3.0]


def test_interpolate_keeps_known_frames_and_counts():
    torch.manual_seed(0)
    cfg = family.interpolator_config(text_width=16, embed_dim=8)
    cfg.block_out_channels, cfg.norm_num_groups, cfg.attention_head_dim = (8, 16, 16), 8, 8
    model = LoadedModel("interp", "interpolator", "mav", SpaceTimeUNet(cfg).eval(), NoiseSchedule("cosine"), "v")
    video = torch.rand(1, 3, 4, 8, 8) * 2 - 1
    for blend in (1.0, 0.3):
        out = interpolate_video(model, video, {}, multiplier=3, steps=2, window=7, blend_init=blend)
        assert out.shape == (1, 3, 10, 8, 8)               # (4 - 1) * 3 + 1
        assert torch.equal(out[:, :, ::3], video)
