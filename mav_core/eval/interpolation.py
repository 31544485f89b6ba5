"""↑F on held-out real clips: every other frame dropped and restored (PSNR/SSIM against the true frames),
next to linear blending and OpenCV DIS optical-flow interpolation, measured in the same run."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from ..data.clips import RealClips
from ..inference import InterpolationOptions, SamplingOptions, interpolate_video, video_to_frames
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
