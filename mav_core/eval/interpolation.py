"""↑F on held-out real clips: frames dropped and restored (PSNR/SSIM against the true frames), next to
linear blending and OpenCV optical-flow interpolation, measured in the same run.

eval_interpolation: the stage at the MAV-Tiny size, every other frame dropped. eval_flow_interpolation:
the table of the motion-compensated ↑F at several sizes and multipliers (x2: every other frame dropped,
x4: three of four), on >= 20 moving windows of held-out clips, against the diffusion ↑F, OpenCV DIS and
Farneback flow and linear blending."""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from tqdm import tqdm

from ..data.clips import RealClips
from ..inference import InterpolationOptions, SamplingOptions, interpolate_video, video_to_frames
from ..inference.flow import DIS_PRESETS
from ..inference.interpolate import flow_options, is_flow_interpolator, motion_compensated_frames
from ..inference.pipeline import MakeAVideo
from ..io.checkpoints import LoadedModel
from ..models import family
from .metrics import flow_midpoint, psnr, ssim, to_uint8


@torch.no_grad()
def eval_interpolation(mav: MakeAVideo, clips_folder: str | Path, n_clips: int = 12, frames: int = 17,
                       steps: int = 15, seed: int = 0, size: int = family.BASE_SIZE,
                       regression: LoadedModel | None = None) -> dict | None:
    """Drop every other frame of held-out real clips, restore them: PSNR/SSIM on the dropped frames.
    regression: also score this regression ↑F checkpoint (one pass per window)."""
    if mav.interpolator is None or not (Path(clips_folder) / "manifest.json").exists():
        return None
    ds = iter(RealClips(clips_folder, num_frames=frames, size=size, seed=seed, split="heldout", strides=(1,)))
    learned = {"mav_interpolator": mav.interpolator, **({"mav_regression": regression} if regression else {})}
    res = {k: {"psnr": [], "ssim": [], "seconds": 0.0, "frames": 0}
           for k in (*learned, "opencv_dis_flow", "linear_blend")}
    cond_uncond = mav.conditioning("", "", seed, 1, 1.0)
    for _ in range(n_clips):
        clip, fps = next(ds)
        video = clip.permute(1, 0, 2, 3)[None]          # [1, 3, F, H, W]
        truth = to_uint8(video_to_frames(video))
        known = video[:, :, ::2]
        cond = {"context": cond_uncond[0]["context"], "image_embed": torch.zeros_like(cond_uncond[0]["image_embed"])}
        preds = {}
        for name, model in learned.items():
            t0 = time.perf_counter()
            out = interpolate_video(model, known, cond, None, float(fps) / 2, InterpolationOptions(2),
                                    SamplingOptions(seed=seed, steps=steps))
            res[name]["seconds"] += time.perf_counter() - t0
            preds[name] = to_uint8(video_to_frames(out))
        kn = truth[::2]
        t0 = time.perf_counter()
        flow = [flow_midpoint(kn[i], kn[i + 1]) for i in range(len(kn) - 1)]
        res["opencv_dis_flow"]["seconds"] += time.perf_counter() - t0
        t0 = time.perf_counter()
        blend = [((kn[i].astype(np.float32) + kn[i + 1]) / 2).round().astype(np.uint8) for i in range(len(kn) - 1)]
        res["linear_blend"]["seconds"] += time.perf_counter() - t0
        for j, i in enumerate(range(1, frames - 1, 2)):
            for name, pred in (*((k, v[i]) for k, v in preds.items()), ("opencv_dis_flow", flow[j]),
                               ("linear_blend", blend[j])):
                res[name]["psnr"].append(psnr(pred, truth[i]))
                res[name]["ssim"].append(ssim(pred, truth[i]))
                res[name]["frames"] += 1
    return {k: {"psnr": float(np.mean(v["psnr"])), "ssim": float(np.mean(v["ssim"])),
                "frames_per_second": v["frames"] / max(v["seconds"], 1e-9), "frames": v["frames"]}
            for k, v in res.items()}


@dataclass(frozen=True)
class FlowTableOptions:
    """The ↑F table: `windows` moving windows of `frames` frames from the held-out clips (a window moves
    when the mean DIS flow between its first two frames at 64x64 is at least `min_motion` px), each scored
    at every size in `sizes` for every multiplier; the diffusion ↑F only at
    `diffusion_sizes` x `diffusion_multipliers` and on the first `diffusion_windows` windows (None: all; it takes minutes a window
    on a CPU), so its rows hold fewer frames (the table's "frames" says how many). `split`: the clips'
    split the windows come from."""
    windows: int = 20
    frames: int = 17
    sizes: tuple = (64, 128, 256)
    multipliers: tuple = (2, 4)
    diffusion_sizes: tuple = (64, 128)
    diffusion_multipliers: tuple = (2, 4)
    diffusion_windows: int | None = None
    seed: int = 0
    min_motion: float = 0.5
    split: str = "heldout"       # "train" only to choose settings (the diffusion ↑F's start strength)


def opencv_flow_frame(f0: np.ndarray, f1: np.ndarray, t: float, method: str = "dis") -> np.ndarray:
    """The plain OpenCV flow baseline at time t (metrics.flow_midpoint at t = 0.5 for DIS): flow both ways
    (DIS medium or Farneback), frame 0 sampled at x + t·flow10, frame 1 at x + (1-t)·flow01, blended
    (1-t, t)."""
    g0, g1 = cv2.cvtColor(f0, cv2.COLOR_RGB2GRAY), cv2.cvtColor(f1, cv2.COLOR_RGB2GRAY)
    if method == "dis":
        dis = cv2.DISOpticalFlow_create(DIS_PRESETS["medium"])
        f01, f10 = dis.calc(g0, g1, None), dis.calc(g1, g0, None)
    else:
        f01 = cv2.calcOpticalFlowFarneback(g0, g1, None, 0.5, 4, 9, 3, 5, 1.1, 0)
        f10 = cv2.calcOpticalFlowFarneback(g1, g0, None, 0.5, 4, 9, 3, 5, 1.1, 0)
    h, w = g0.shape
    grid = np.stack(np.meshgrid(np.arange(w), np.arange(h)), -1).astype(np.float32)
    w0 = cv2.remap(f0, grid + t * f10, None, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    w1 = cv2.remap(f1, grid + (1 - t) * f01, None, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    return ((1 - t) * w0.astype(np.float32) + t * w1.astype(np.float32)).round().astype(np.uint8)


def moving_windows(clips_folder: str | Path, options: FlowTableOptions) -> list[tuple[str, np.ndarray]]:
    """(clip name, uint8 [F, S, S, 3] at the largest size) of the first `options.windows` moving windows
    drawn from the clips of `options.split` (distinct (clip, start) pairs)."""
    size = max(options.sizes)
    clips = RealClips(clips_folder, num_frames=options.frames, size=size, seed=options.seed, split=options.split,
                      strides=(1,))
    out, seen = [], set()
    dis = cv2.DISOpticalFlow_create(DIS_PRESETS["medium"])
    for tries, draw in enumerate(clips.draws()):
        if len(out) == options.windows or tries > 200 * options.windows:
            break
        key = (draw[0].path.name, draw[1])
        if key in seen:
            continue
        seen.add(key)
        frames = to_uint8((clips.make(draw)[0].permute(0, 2, 3, 1) + 1) / 2)
        small = [cv2.cvtColor(cv2.resize(f, (64, 64), interpolation=cv2.INTER_AREA), cv2.COLOR_RGB2GRAY)
                 for f in frames[:2]]
        if np.linalg.norm(dis.calc(small[0], small[1], None), axis=-1).mean() >= options.min_motion:
            out.append((draw[0].path.name, frames))
    if len(out) < options.windows:
        raise ValueError(f"only {len(out)} moving {options.split} windows of {options.frames} frames in {clips_folder}, "
                         f"need {options.windows}")
    return out


def _restore(name: str, methods: dict, known: np.ndarray, m: int):
    """The in-between frames [(K-1)*(m-1), S, S, 3] of known uint8 frames [K, S, S, 3] by one method."""
    if name in ("opencv_dis_flow", "opencv_farneback", "linear_blend"):
        out = []
        for i in range(len(known) - 1):
            for k in range(1, m):
                t = k / m
                if name == "linear_blend":
                    out.append(((1 - t) * known[i].astype(np.float32) + t * known[i + 1]).round().astype(np.uint8))
                else:
                    method = "dis" if name == "opencv_dis_flow" else "farneback"
                    out.append(opencv_flow_frame(known[i], known[i + 1], t, method))
        return np.stack(out)
    video = torch.from_numpy(known).float().div(127.5).sub(1).permute(3, 0, 1, 2)[None]
    frames = to_uint8(video_to_frames(methods[name](video, m)))
    keep = [j for j in range(len(frames)) if j % m]
    return frames[keep]


@torch.no_grad()
def eval_flow_interpolation(methods: dict, clips_folder: str | Path, options: FlowTableOptions = FlowTableOptions(),
                            diffusion: set | frozenset = frozenset()) -> dict:
    """methods: name -> fn(video [1, 3, K, S, S] -1..1, multiplier) -> [1, 3, (K-1)m+1, S, S] (the learned
    and non-learned torch methods); the OpenCV DIS / Farneback and blend baselines are added. Methods
    named in `diffusion` run only at options.diffusion_sizes. Returns {f"{size}x{m}": {method: {psnr,
    ssim, frames_per_second, frames}}} plus "windows" (the clip names)."""
    windows = moving_windows(clips_folder, options)
    names = [*methods, "opencv_dis_flow", "opencv_farneback", "linear_blend"]
    table = {"windows": [n for n, _ in windows]}
    rows = [(s, m) for s in options.sizes for m in options.multipliers]
    for size, m in tqdm(rows, desc="↑F table"):
        row = {}
        for name in names:
            if name in diffusion and (size not in options.diffusion_sizes or m not in options.diffusion_multipliers):
                continue
            scores = {"psnr": [], "ssim": [], "seconds": 0.0, "frames": 0}
            limit = options.diffusion_windows if name in diffusion else None
            for _, clip in windows[:limit]:
                frames = clip if clip.shape[1] == size else np.stack(
                    [cv2.resize(f, (size, size), interpolation=cv2.INTER_AREA) for f in clip])
                known, truth = frames[::m], np.stack([f for j, f in enumerate(frames) if j % m])
                t0 = time.perf_counter()
                pred = _restore(name, methods, known, m)
                scores["seconds"] += time.perf_counter() - t0
                scores["psnr"] += [psnr(p, q) for p, q in zip(pred, truth)]
                scores["ssim"] += [ssim(p, q) for p, q in zip(pred, truth)]
                scores["frames"] += len(pred)
            row[name] = {"psnr": float(np.mean(scores["psnr"])), "ssim": float(np.mean(scores["ssim"])),
                         "frames_per_second": scores["frames"] / max(scores["seconds"], 1e-9),
                         "frames": scores["frames"]}
        table[f"{size}x{m}"] = row
    return table


def flow_table_methods(mav: MakeAVideo | None, flow_model: LoadedModel | None, steps: int = 15,
                       seed: int = 0) -> dict:
    """The torch methods of the ↑F table: the motion-compensated ↑F (`flow_model`), the flow-warped average
    it starts from (no network), and the diffusion ↑F of `mav` (interpolate_video's defaults: from the
    motion-compensated estimate noised to InterpolationOptions().blend_init, 15 steps, the empty prompt)."""
    methods = {}
    if flow_model is not None:
        methods["mav_flow_interpolator"] = lambda v, m: motion_compensated_frames(v, m, flow_model.module)
    methods["flow_warped_average"] = lambda v, m: motion_compensated_frames(
        v, m, None, options=flow_options(flow_model.module if flow_model is not None else None))
    if mav is not None and mav.interpolator is not None and not is_flow_interpolator(mav.interpolator):
        cond_uncond = mav.conditioning("", "", seed, 1, 1.0)
        cond = {"context": cond_uncond[0]["context"], "image_embed": torch.zeros_like(cond_uncond[0]["image_embed"])}
        methods["mav_diffusion_interpolator"] = lambda v, m: interpolate_video(
            mav.interpolator, v, cond, None, 4.0, InterpolationOptions(m), SamplingOptions(seed=seed, steps=steps))
    return methods


def print_flow_table(table: dict) -> None:
    print(f"\n↑F on {len(table['windows'])} moving held-out windows ({len(set(table['windows']))} clips), "
          "frames dropped and restored:")
    print(f"{'size':>6}{'x':>3}  {'method':28}{'PSNR dB':>9}{'SSIM':>8}{'frames/s':>10}")
    for key, row in table.items():
        if key == "windows":
            continue
        size, m = key.split("x")
        for name, r in row.items():
            print(f"{size:>6}{m:>3}  {name:28}{r['psnr']:9.2f}{r['ssim']:8.3f}{r['frames_per_second']:10.1f}")
