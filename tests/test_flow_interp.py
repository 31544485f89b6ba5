"""The motion-compensated ↑F: flow-warped in-between frames, the fusion network's start, sizes, multipliers,
memory, Cancel, the recipe and the OpenCV baselines of the evaluation."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mav_core.errors import InputError
from mav_core.eval.interpolation import opencv_flow_frame
from mav_core.eval.metrics import flow_midpoint
from mav_core.inference import InterpolationOptions, interpolate_video
from mav_core.inference.flow import (FlowOptions, backward_warp, estimate_flow_set, estimate_flows, fusion_inputs,
                                     warp_pair, warp_set)
from mav_core.inference.interpolate import flow_options, motion_compensated_frames
from mav_core.io.checkpoints import LoadedModel, save_model
from mav_core.io.loader import load_model
from mav_core.models.flow_fusion import FLOW_INTERPOLATOR_FILE, FlowFusionConfig, FlowFusionNet
from mav_core.models import family

ROOT = Path(__file__).resolve().parents[1]
CLIPS = ROOT / "data" / "clips"
SHIPPED = family.WEIGHTS_DIR / FLOW_INTERPOLATOR_FILE


def moving_texture(frames: int, h: int, w: int, step: tuple[float, float] = (1.5, 1.0), seed: int = 0):
    """[1, 3, frames, h, w] in -1..1: a smooth random texture whose content moves by -`step` (x, y) px per
    frame (the sampling window moves by +step)."""
    g = torch.Generator().manual_seed(seed)
    big = F.interpolate(torch.rand(1, 3, (h + 64) // 8, (w + 64) // 8, generator=g), size=(h + 64, w + 64),
                        mode="bicubic", align_corners=False).clamp(0, 1) * 2 - 1
    out = []
    for i in range(frames):
        theta = torch.tensor([[[1.0, 0, 2 * i * step[0] / (w + 64)], [0, 1.0, 2 * i * step[1] / (h + 64)]]])
        grid = F.affine_grid(theta, (1, 3, h + 64, w + 64), align_corners=False)
        shifted = F.grid_sample(big, grid, mode="bicubic", padding_mode="reflection", align_corners=False)
        out.append(shifted[:, :, 32:32 + h, 32:32 + w])
    return torch.stack(out, 2).clamp(-1, 1)


def _model(net: torch.nn.Module) -> LoadedModel:
    return LoadedModel("flow_interpolator.safetensors", "interpolator", "mav", net)


def test_untrained_fusion_net_is_exactly_the_flow_warped_average():
    torch.manual_seed(0)
    video = moving_texture(4, 48, 64)
    net = FlowFusionNet(FlowFusionConfig())
    with_net = motion_compensated_frames(video, 3, net)
    without = motion_compensated_frames(video, 3, None)
    assert torch.equal(with_net, without)
    # and a net whose head is not zero changes the frames between, never the known ones
    torch.nn.init.normal_(net.head.weight, std=0.1)
    moved = motion_compensated_frames(video, 3, net)
    assert not torch.equal(moved[:, :, 1::3], without[:, :, 1::3])
    assert torch.equal(moved[:, :, ::3], video)


@pytest.mark.parametrize("h,w", [(32, 32), (37, 53), (45, 130), (97, 41)])
def test_any_size_from_32_non_square_and_odd(h, w):
    video = moving_texture(5, h, w, step=(1.0, 0.5))
    net = FlowFusionNet()
    torch.nn.init.normal_(net.head.weight, std=0.01)     # a non-trivial net: padding and cropping inside
    out = interpolate_video(_model(net), video[:, :, ::2], {}, None, 8.0, InterpolationOptions(2))
    assert out.shape == (1, 3, 5, h, w) and torch.isfinite(out).all()
    assert torch.equal(out[:, :, ::2], video[:, :, ::2])


def test_below_32_pixels_is_refused_naming_the_input():
    with pytest.raises(InputError, match="32x32") as e:
        interpolate_video(_model(FlowFusionNet()), torch.zeros(1, 3, 2, 31, 64), {}, None, 8.0, InterpolationOptions(2))
    assert e.value.param == "video"


def test_multiplier_3_keeps_known_frames_at_every_third_index_and_follows_motion():
    truth = moving_texture(7, 64, 80, step=(1.2, 0.8))
    known = truth[:, :, ::3]
    out = interpolate_video(_model(FlowFusionNet()), known, {}, None, 8.0, InterpolationOptions(3))
    assert out.shape[2] == 7
    for i in range(3):
        assert torch.equal(out[:, :, 3 * i], known[:, :, i])
    inner = [j for j in range(7) if j % 3]
    blend = torch.stack([known[:, :, j // 3] * (1 - (j % 3) / 3) + known[:, :, j // 3 + 1] * ((j % 3) / 3)
                         for j in inner], 2)
    err_flow = (out[:, :, inner] - truth[:, :, inner]).abs()[..., 8:-8, 8:-8].mean()
    err_blend = (blend - truth[:, :, inner]).abs()[..., 8:-8, 8:-8].mean()
    assert err_flow < 0.5 * err_blend, (float(err_flow), float(err_blend))
    # the frame a third of the way is nearer frame 0's content than the frame two thirds of the way
    d1 = (out[:, :, 1] - known[:, :, 0]).abs().mean()
    d2 = (out[:, :, 2] - known[:, :, 0]).abs().mean()
    assert d1 < d2


def test_time_reversal_gives_the_same_frames_reversed():
    video = moving_texture(2, 48, 48, step=(2.0, 1.0))
    fwd = motion_compensated_frames(video, 4)
    bwd = motion_compensated_frames(video.flip(2), 4)
    assert (fwd - bwd.flip(2)).abs().max() < 0.05


def test_visibility_weights_sum_to_one_and_follow_time():
    video = moving_texture(2, 40, 56)
    f0, f1 = video[:, :, 0], video[:, :, 1]
    flows = estimate_flows(f0, f1, FlowOptions())
    for t in (0.25, 0.5, 0.75):
        pair = warp_pair(f0, f1, flows, t)
        assert ((pair.weight0 >= 0) & (pair.weight0 <= 1)).all()
        torch.testing.assert_close(pair.average, pair.weight0 * pair.warped0 + (1 - pair.weight0) * pair.warped1)
        features, _, difference = fusion_inputs(pair, f0, f1, t)
        assert features.shape[1] == 19 and torch.equal(difference, pair.warped0 - pair.warped1)
    early, late = (warp_pair(f0, f1, flows, t).weight0.mean() for t in (0.25, 0.75))
    assert early > late


def test_linear_warp_reads_each_frame_along_the_other_frames_flow_with_time_weights():
    video = moving_texture(2, 40, 56, step=(2.0, 1.0))
    f0, f1 = video[:, :, 0], video[:, :, 1]
    flow01, flow10 = estimate_flows(f0, f1, FlowOptions())
    pair = warp_pair(f0, f1, (flow01, flow10), 0.25, warp="linear")
    assert torch.equal(pair.weight0, torch.full_like(pair.weight0, 0.75))
    torch.testing.assert_close(pair.warped0, backward_warp(f0, 0.25 * flow10))
    torch.testing.assert_close(pair.warped1, backward_warp(f1, 0.75 * flow01))


def test_flow_variants_are_separate_estimates_averaged_after_warping():
    video = moving_texture(2, 48, 64, step=(2.0, 1.0))
    f0, f1 = video[:, :, 0], video[:, :, 1]
    options = FlowOptions(variants=("patch4", "ultrafast_x2"))
    flow01, flow10 = estimate_flow_set(f0, f1, options)
    assert flow01.shape == flow10.shape == (3, 1, 2, 48, 64)
    torch.testing.assert_close(flow01[0], estimate_flows(f0, f1, options)[0])
    assert not torch.equal(flow01[1], flow01[0]) and not torch.equal(flow01[2], flow01[0])
    for v in range(3):   # every estimate follows the motion: content moves by (-2, -1) px a frame
        mean = flow01[v, 0, :, 12:-12, 12:-12].mean((-1, -2))
        assert abs(float(mean[0]) + 2) < 0.4 and abs(float(mean[1]) + 1) < 0.4, (v, mean)
    pair = warp_set(f0, f1, (flow01, flow10), 0.5, options)
    singles = [warp_pair(f0, f1, (flow01[v], flow10[v]), 0.5, warp="linear") for v in range(3)]
    torch.testing.assert_close(pair.average, torch.stack([p.average for p in singles]).mean(0))
    torch.testing.assert_close(pair.error1, torch.stack([p.error1 for p in singles]).mean(0))


def test_bad_flow_settings_are_refused_naming_the_setting():
    for kw, param in ((dict(variants=("patch5",)), "flow_variants"), (dict(variants="patch4"), "flow_variants"),
                      (dict(warp="cubic"), "flow_warp")):
        with pytest.raises(InputError) as e:
            FlowOptions(**kw).validate()
        assert e.value.param == param
    with pytest.raises(ValueError, match="flow_variants"):
        FlowFusionConfig(flow_variants=("patch5",))


def test_files_from_before_flow_warp_keep_the_warp_they_were_trained_on():
    old = FlowFusionConfig(flow_warp="superslomo", flow_variants=()).to_dict()
    del old["flow_warp"], old["flow_variants"]
    config = FlowFusionConfig.from_dict(old)
    assert config.flow_warp == "superslomo" and config.flow_variants == ()
    options = flow_options(FlowFusionNet(config))
    assert options.warp == "superslomo" and options.variants == ()
    assert FlowFusionConfig.from_dict(FlowFusionConfig().to_dict()).flow_variants == ("patch4", "ultrafast_x2")


def test_flow_estimated_on_shrunk_frames_is_scaled_back():
    video = moving_texture(2, 96, 160, step=(3.0, 1.0))
    full = estimate_flows(video[:, :, 0], video[:, :, 1], FlowOptions())[0][..., 16:-16, 16:-16].mean((-1, -2))
    small = estimate_flows(video[:, :, 0], video[:, :, 1], FlowOptions(max_side=80))[0][..., 16:-16, 16:-16].mean((-1, -2))
    for flow in (full, small):   # content moves by (-3, -1) px a frame
        assert abs(float(flow[0, 0]) + 3.0) < 0.3 and abs(float(flow[0, 1]) + 1.0) < 0.3, (full, small)


def test_cancel_stops_within_one_pair():
    video = moving_texture(6, 40, 40)
    calls = []

    class Cancelled(Exception):
        pass

    def callback(info):
        calls.append(info["step"])
        if len(calls) == 2:
            raise Cancelled

    with pytest.raises(Cancelled):
        interpolate_video(_model(FlowFusionNet()), video, {}, None, 8.0, InterpolationOptions(4), callback=callback)
    assert calls == [0, 1]


def test_extrapolation_is_refused_naming_mode():
    with pytest.raises(InputError) as e:
        interpolate_video(_model(FlowFusionNet()), torch.zeros(1, 3, 2, 32, 32), {}, None, 8.0,
                          InterpolationOptions(2, mode="extrapolate"))
    assert e.value.param == "mode"


def test_checkpoint_round_trip_through_the_loader(tmp_path):
    net = FlowFusionNet(FlowFusionConfig(widths=(8, 8, 8), flow_preset="fast", flow_variants=("finest0",)))
    torch.nn.init.normal_(net.head.weight, std=0.01)
    path = tmp_path / FLOW_INTERPOLATOR_FILE
    save_model(path, net, "interpolator")
    loaded = load_model(path, expect_stage="interpolator")
    assert loaded.config.flow_preset == "fast" and loaded.config.widths == (8, 8, 8)
    assert loaded.config.flow_variants == ("finest0",) and loaded.config.flow_warp == "linear"
    video = moving_texture(3, 33, 47)
    torch.testing.assert_close(motion_compensated_frames(video, 2, loaded.module),
                               motion_compensated_frames(video, 2, net))


def test_opencv_flow_baseline_at_half_time_is_the_midpoint_baseline():
    rng = np.random.default_rng(0)
    a = (rng.random((48, 64, 3)) * 255).astype(np.uint8)
    b = np.roll(a, 2, axis=1)
    assert np.array_equal(opencv_flow_frame(a, b, 0.5, "dis"), flow_midpoint(a, b))


MEMORY_SCRIPT = """
import sys, torch
from pathlib import Path
sys.path.insert(0, {root!r})
from mav_core.inference.interpolate import motion_compensated_frames
def kib(field):
    return int(next(l for l in Path("/proc/self/status").read_text().splitlines() if l.startswith(field)).split()[1])
torch.set_num_threads(1)
motion_compensated_frames(torch.zeros(1, 3, 2, 32, 32), 2)   # first-call costs (flow, kornia) out of the way
n = int(sys.argv[1])
video = torch.rand(1, 3, n, 256, 256) * 2 - 1
Path("/proc/self/clear_refs").write_text("5")   # peak RSS := current RSS
base = kib("VmRSS")
out = motion_compensated_frames(video, 4)
print((kib("VmHWM") - base) * 1024)
"""


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc peak-RSS reset")
def test_memory_is_linear_in_frames(capsys):
    """Peak resident memory over the input's own, for 3..24 input frames at 256x256 x4: a straight line
    whose slope is about one output frame set (4 frames of 0.75 MiB) per input frame."""
    script = MEMORY_SCRIPT.format(root=str(ROOT))
    ns = [3, 8, 16, 24]
    peaks = [int(subprocess.run([sys.executable, "-c", script, str(n)], capture_output=True, text=True,
                                check=True).stdout.split()[-1]) for n in ns]
    slope, intercept = np.polyfit(ns, peaks, 1)
    fit = np.polyval([slope, intercept], ns)
    frame = 3 * 256 * 256 * 4
    with capsys.disabled():
        print(f"\nmemory fit: peak = {intercept / 2**20:.1f} MiB + {slope / 2**20:.2f} MiB x frames "
              f"(one 256x256 output frame {frame / 2**20:.2f} MiB); measured {[round(p / 2**20, 1) for p in peaks]}")
    assert np.abs(fit - peaks).max() < 0.1 * max(peaks) + 8 * 2**20, (peaks, fit)
    assert 2 * frame < slope < 8 * frame, slope / frame


@pytest.mark.skipif(not (CLIPS / "manifest.json").exists(), reason="no real clips: run scripts/fetch_clips.py")
def test_recipe_trains_saves_and_resumes(tmp_path):
    from mav_core.cli.main import main
    args = ["train", "flow_interp", "--steps", "2", "--batch-size", "2", "--out", str(tmp_path), "--save-every", "1",
            "--widths", "4,4,4", "--clips", str(CLIPS)]
    assert main(args) == 0
    state = torch.load(tmp_path / "flow_interp.state.pt", weights_only=True)
    assert state["step"] == 2 and len(state["history"]) == 2
    first = list(state["history"])
    loaded = load_model(tmp_path / FLOW_INTERPOLATOR_FILE, expect_stage="interpolator")
    assert not torch.equal(loaded.module.head.weight, torch.zeros_like(loaded.module.head.weight))
    assert main(args[:3] + ["3"] + args[4:]) == 0          # resumed: one more step
    state = torch.load(tmp_path / "flow_interp.state.pt", weights_only=True)
    assert state["step"] == 3 and state["history"][:2] == first


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_half_follows_the_input():
    net = FlowFusionNet().cuda().half()
    video = moving_texture(3, 40, 72).cuda().half()
    out = motion_compensated_frames(video, 2, net)
    assert out.device.type == "cuda" and out.dtype == torch.float16


def test_chain_default_is_the_motion_compensated_interpolator(tmp_path):
    """MakeAVideo.load() and the CLI use the motion-compensated ↑F: the chain doubles the decoder's frames
    with it (progress once per pair, the decoder's frames kept); a folder without its file gets the
    diffusion ↑F."""
    import argparse
    from mav_core.cli.generate import add_generate_arguments
    from mav_core.inference.interpolate import is_flow_interpolator
    from mav_core.inference.pipeline import INTERPOLATORS, MakeAVideo
    assert add_generate_arguments(p := argparse.ArgumentParser()) is None and p.parse_args(["x"]).interpolator == "flow"
    mav = MakeAVideo.load()
    assert INTERPOLATORS[0] == "flow" and is_flow_interpolator(mav.interpolator)
    seen = []
    kw = dict(frames=3, steps=2, prior_steps=2, upscale=0, seed=1)
    out = mav("a red circle on a dark blue background", progress=lambda *a: seen.append(a), **kw)
    assert out.frames.shape == (5, 32, 32, 3) and out.fps == 8.0
    assert [a for a in seen if a[0] == "interpolator"] == [("interpolator", 1, 2), ("interpolator", 2, 2)]
    decoded = mav("a red circle on a dark blue background", multiplier=1, **kw).frames
    torch.testing.assert_close(out.frames[::2], decoded, atol=1e-6, rtol=0)
    for name in family.STAGE_FILES.values():
        (tmp_path / name).symlink_to(family.WEIGHTS_DIR / name)
    assert not is_flow_interpolator(MakeAVideo.load(tmp_path).interpolator)


@pytest.mark.skipif(not (CLIPS / "manifest.json").exists(), reason="no real clips: run scripts/fetch_clips.py")
def test_shipped_flow_interpolator_beats_opencv_dis_on_held_out_real_clips():
    """6 moving held-out windows at 64x64 x2 (the eval's table, smaller): the shipped fusion file above its
    own warped average and above OpenCV DIS, which is above blending."""
    from mav_core.eval.interpolation import FlowTableOptions, eval_flow_interpolation, flow_table_methods
    shipped = load_model(SHIPPED, expect_stage="interpolator")
    methods = flow_table_methods(None, shipped)
    row = eval_flow_interpolation(methods, CLIPS, FlowTableOptions(windows=6, sizes=(64,), multipliers=(2,)))["64x2"]
    psnr = {k: v["psnr"] for k, v in row.items()}
    assert psnr["mav_flow_interpolator"] > psnr["flow_warped_average"] > psnr["opencv_dis_flow"] + 0.05, psnr
    assert psnr["opencv_dis_flow"] > psnr["linear_blend"] + 1.0, psnr
