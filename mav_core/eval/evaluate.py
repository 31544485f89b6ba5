"""`python -m mav_core eval`: the MAV-Tiny numbers, measured.

Text alignment, temporal consistency and motion on prompts whose colour/shape pairs were never
captioned in training (mav_core.data.world.heldout_prompts), scored by the world's detector
(mav_core.data.detect, validated on rendered ground truth in tests/test_world.py):
  - alignment: share of videos whose majority colour AND shape (over frames) match the prompt;
  - consistency: share of frames agreeing with their video's majority (colour, shape);
  - motion: centroid path length (px per frame at 32x32) and jerk (mean |third difference| of the
    centroid), against the same numbers on rendered training motion clips; "moves" = mean step
    >= 0.25 px/frame;
  - the image model alone (the same decoder in image mode, one frame per prompt): alignment.
And ↑F on held-out real clips: every other frame dropped and restored (PSNR/SSIM against the true
frames), next to linear blending and OpenCV DIS optical-flow interpolation, measured in the same run.
"""
from __future__ import annotations

import json
import math
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from ..models import family
from ..io.checkpoints import LoadedModel
from ..io.loader import load_model
from ..inference.pipeline import MakeAVideo
from ..inference.stages import generate_video, interpolate_video, video_to_frames

MOVE_THRESHOLD = 0.25


def _to_uint8(frames: torch.Tensor) -> np.ndarray:
    return (frames.clamp(0, 1) * 255).round().byte().numpy()


def score_video(frames: np.ndarray, colour: str, shape: str) -> dict:
    """frames uint8 [F, H, W, 3] -> per-video metrics."""
    from ..data.detect import detect
    dets = [detect(f) for f in frames]
    labels = [(d.colour, d.shape) for d in dets]
    major_colour = Counter(c for c, _ in labels).most_common(1)[0][0]
    major_shape = Counter(s for _, s in labels).most_common(1)[0][0]
    consistency = sum(1 for c, s in labels if c == major_colour and s == major_shape) / len(labels)
    cents = np.array([d.centroid if d.centroid is not None else (np.nan, np.nan) for d in dets], dtype=float)
    return {"colour": major_colour, "shape": major_shape, "aligned": major_colour == colour and major_shape == shape,
            "colour_ok": major_colour == colour, "shape_ok": major_shape == shape,
            "consistency": consistency, **motion_stats(cents)}


def motion_stats(cents: np.ndarray) -> dict:
    ok = ~np.isnan(cents).any(axis=1)
    c = cents[ok]
    if len(c) < 4:
        return {"step": float("nan"), "jerk": float("nan")}
    steps = np.linalg.norm(np.diff(c, axis=0), axis=1)
    jerk = np.linalg.norm(np.diff(c, n=3, axis=0), axis=1)
    return {"step": float(steps.mean()), "jerk": float(jerk.mean())}


def parse_prompt(prompt: str) -> tuple[str, str]:
    from ..data.world import parse_caption
    p = parse_caption(prompt)
    return p["colour"], p["shape"]


@torch.no_grad()
def eval_text_to_video(mav: MakeAVideo, prompts: list[str], steps: int, seed: int, batch: int = 10,
                       frames: int = family.FRAMES, fps: float = 4.0, cfg: float = 4.0) -> dict:
    video_scores, image_scores = [], []
    for start in range(0, len(prompts), batch):
        chunk = prompts[start:start + batch]
        conds, unconds = [], []
        for i, prompt in enumerate(chunk):
            c, u = mav.conditioning(prompt, "", seed + start + i, 20, 1.0)
            conds.append(c)
            unconds.append(u)
        cond = {k: torch.cat([c[k] for c in conds]) for k in conds[0]}
        uncond = {k: torch.cat([u[k] for u in unconds]) for k in unconds[0]}
        video = generate_video(mav.decoder, cond, uncond, frames=frames, height=family.BASE_SIZE,
                               width=family.BASE_SIZE, fps=fps, seed=seed + start, steps=steps, cfg=cfg)
        from ..inference.stages import sample_unet
        image = sample_unet(mav.decoder, (len(chunk), 3, 1, family.BASE_SIZE, family.BASE_SIZE), cond, uncond,
                            seed=seed + start, steps=steps, cfg=cfg, temporal=False)
        for i, prompt in enumerate(chunk):
            colour, shape = parse_prompt(prompt)
            video_scores.append(score_video(_to_uint8(video_to_frames(video[i:i + 1])), colour, shape))
            img = _to_uint8(video_to_frames(image[i:i + 1]))
            image_scores.append(score_video(np.concatenate([img] * 4), colour, shape))
    return {"video": video_scores, "image": image_scores}


def reference_motion(n: int = 30, frames: int = family.FRAMES, fps: float = 4.0, seed: int = 123) -> list[dict]:
    """The same motion numbers on rendered training clips (what D^t learned from)."""
    from ..data.detect import detect
    from ..data.world import render_clip
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        clip = render_clip(rng, frames, family.BASE_SIZE, fps=fps)
        cents = np.array([detect(f).centroid or (np.nan, np.nan) for f in clip], dtype=float)
        out.append(motion_stats(cents))
    return out


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * math.log10(255.0**2 / mse)


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    import cv2
    a = cv2.cvtColor(a, cv2.COLOR_RGB2GRAY).astype(np.float64)
    b = cv2.cvtColor(b, cv2.COLOR_RGB2GRAY).astype(np.float64)
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    mu_a, mu_b = cv2.GaussianBlur(a, (7, 7), 1.5), cv2.GaussianBlur(b, (7, 7), 1.5)
    va = cv2.GaussianBlur(a * a, (7, 7), 1.5) - mu_a**2
    vb = cv2.GaussianBlur(b * b, (7, 7), 1.5) - mu_b**2
    cov = cv2.GaussianBlur(a * b, (7, 7), 1.5) - mu_a * mu_b
    return float((((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (va + vb + c2))).mean())


def flow_midpoint(f0: np.ndarray, f1: np.ndarray) -> np.ndarray:
    """OpenCV DIS optical flow both ways, each frame warped half-way, averaged."""
    import cv2
    dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
    g0, g1 = cv2.cvtColor(f0, cv2.COLOR_RGB2GRAY), cv2.cvtColor(f1, cv2.COLOR_RGB2GRAY)
    h, w = g0.shape
    grid = np.stack(np.meshgrid(np.arange(w), np.arange(h)), -1).astype(np.float32)
    f01 = dis.calc(g0, g1, None)
    f10 = dis.calc(g1, g0, None)
    w0 = cv2.remap(f0, grid + 0.5 * f10, None, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    w1 = cv2.remap(f1, grid + 0.5 * f01, None, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    return ((w0.astype(np.float32) + w1.astype(np.float32)) / 2).round().astype(np.uint8)


@torch.no_grad()
def eval_interpolation(mav: MakeAVideo, clips_folder: str | Path, n_clips: int = 12, frames: int = 17,
                       steps: int = 15, seed: int = 0, size: int = family.BASE_SIZE,
                       regression: LoadedModel | None = None) -> dict | None:
    """Drop every other frame of held-out real clips, restore them: PSNR/SSIM on the dropped frames.
    regression: also score this regression ↑F checkpoint (one pass per window)."""
    if mav.interpolator is None or not (Path(clips_folder) / "manifest.json").exists():
        return None
    from ..data.clips import RealClips
    ds = iter(RealClips(clips_folder, num_frames=frames, size=size, seed=seed, split="heldout", strides=(1,)))
    learned = {"mav_interpolator": mav.interpolator, **({"mav_regression": regression} if regression else {})}
    res = {k: {"psnr": [], "ssim": [], "seconds": 0.0, "frames": 0}
           for k in (*learned, "opencv_dis_flow", "linear_blend")}
    cond_uncond = mav.conditioning("", "", seed, 1, 1.0)
    for _ in range(n_clips):
        clip, fps = next(ds)
        video = clip.permute(1, 0, 2, 3)[None]          # [1, 3, F, H, W]
        truth = _to_uint8(video_to_frames(video))
        known = video[:, :, ::2]
        cond = {"context": cond_uncond[0]["context"], "image_embed": torch.zeros_like(cond_uncond[0]["image_embed"])}
        preds = {}
        for name, model in learned.items():
            t0 = time.perf_counter()
            out = interpolate_video(model, known, cond, None, multiplier=2, fps=float(fps) / 2, seed=seed, steps=steps)
            res[name]["seconds"] += time.perf_counter() - t0
            preds[name] = _to_uint8(video_to_frames(out))
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


def summarize(scores: list[dict]) -> dict:
    steps = np.array([s["step"] for s in scores], dtype=float)
    jerk = np.array([s["jerk"] for s in scores], dtype=float)
    return {
        "n": len(scores),
        "alignment": float(np.mean([s["aligned"] for s in scores])) if "aligned" in scores[0] else float("nan"),
        "colour": float(np.mean([s["colour_ok"] for s in scores])) if "colour_ok" in scores[0] else float("nan"),
        "shape": float(np.mean([s["shape_ok"] for s in scores])) if "shape_ok" in scores[0] else float("nan"),
        "consistency": float(np.mean([s["consistency"] for s in scores])) if "consistency" in scores[0] else float("nan"),
        "moving": float(np.nanmean(steps >= MOVE_THRESHOLD)),
        "step_px": float(np.nanmean(steps)),
        "jerk_px": float(np.nanmean(jerk)),
    }


def main_eval(args) -> int:
    from ..data.world import heldout_prompts
    torch.manual_seed(args.seed)
    mav = MakeAVideo.load(args.weights)
    prompts = heldout_prompts()[: args.videos]
    t0 = time.perf_counter()
    report = {"prompts": len(prompts), "heldout_prompts": prompts}
    if prompts:
        scores = eval_text_to_video(mav, prompts, args.steps, args.seed, cfg=args.cfg)
        video, image, ref = summarize(scores["video"]), summarize(scores["image"]), summarize(reference_motion())
        report.update({"video_model": video, "image_model": image, "training_clips": ref})
        print(f"held-out prompts: {len(prompts)} (colour/shape pairs never captioned in training)")
        print(f"{'':24}{'align':>8}{'colour':>8}{'shape':>8}{'consist':>9}{'moving':>8}{'px/frame':>10}{'jerk':>8}")
        for name, r in (("video model (D^t)", video), ("image model (D)", image), ("rendered training clips", ref)):
            print(f"{name:24}{r['alignment']:8.2f}{r['colour']:8.2f}{r['shape']:8.2f}{r['consistency']:9.2f}"
                  f"{r['moving']:8.2f}{r['step_px']:10.2f}{r['jerk_px']:8.2f}")
    regression = None
    reg_path = Path(args.weights or family.WEIGHTS_DIR) / family.REGRESSION_INTERPOLATOR_FILE
    if reg_path.exists() and args.clips and not args.skip_interp:
        regression = load_model(reg_path, expect_stage="interpolator")
    interp = eval_interpolation(mav, args.clips, regression=regression) if args.clips and not args.skip_interp else None
    report["interpolation"] = interp
    if interp:
        print("\n↑F on held-out real clips (every other frame dropped and restored, 32x32):")
        print(f"{'method':20}{'PSNR dB':>9}{'SSIM':>8}{'frames/s':>10}")
        for name, r in interp.items():
            print(f"{name:20}{r['psnr']:9.2f}{r['ssim']:8.3f}{r['frames_per_second']:10.1f}")
    report["seconds"] = time.perf_counter() - t0
    if args.apps:
        from .apps import eval_animation, eval_control, eval_two_image, eval_variations
        apps = {"image_animation": eval_animation(mav, seed=args.seed),
                "two_image_interpolation": eval_two_image(mav, seed=args.seed),
                "video_variation": eval_variations(mav, seed=args.seed)}
        control_path = Path(args.weights or family.WEIGHTS_DIR) / family.CONTROL_FILES["canny"]
        if control_path.exists():
            apps["control_canny"] = eval_control(mav, control_path, seed=args.seed)
        report["applications"] = apps
        print("\napplications (rendered held-out scenes, 32x32):")
        for name, r in apps.items():
            print(f"  {name}: " + ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in r.items()))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return 0
