"""Scores used by the evaluation: the world detector's per-video alignment, consistency and motion, and image
quality (PSNR, SSIM) with the optical-flow and blending baselines of frame interpolation."""
from __future__ import annotations

import math
from collections import Counter

import cv2
import numpy as np
import torch

from ..data.detect import detect
from ..data.world import parse_caption


MOVE_THRESHOLD = 0.25   # px per frame at 32x32: a video "moves" above this mean step


def to_uint8(frames: torch.Tensor) -> np.ndarray:
    return (frames.clamp(0, 1) * 255).round().byte().numpy()


def score_video(frames: np.ndarray, colour: str, shape: str) -> dict:
    """frames uint8 [F, H, W, 3] -> per-video metrics."""
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
    p = parse_caption(prompt)
    return p["colour"], p["shape"]


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * math.log10(255.0**2 / mse)


def ssim(a: np.ndarray, b: np.ndarray) -> float:
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
    dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
    g0, g1 = cv2.cvtColor(f0, cv2.COLOR_RGB2GRAY), cv2.cvtColor(f1, cv2.COLOR_RGB2GRAY)
    h, w = g0.shape
    grid = np.stack(np.meshgrid(np.arange(w), np.arange(h)), -1).astype(np.float32)
    f01 = dis.calc(g0, g1, None)
    f10 = dis.calc(g1, g0, None)
    w0 = cv2.remap(f0, grid + 0.5 * f10, None, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    w1 = cv2.remap(f1, grid + 0.5 * f01, None, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    return ((w0.astype(np.float32) + w1.astype(np.float32)) / 2).round().astype(np.uint8)


def frame_differences(v: np.ndarray) -> np.ndarray:
    """Per transition t -> t+1 of v [F, C, H, W]: the mean absolute frame difference."""
    return np.abs(np.diff(v.astype(np.float64), axis=0)).mean(axis=(1, 2, 3))


def temporal_jerk(v: np.ndarray) -> np.ndarray:
    """Per transition t -> t+1 of v [F, C, H, W]: mean absolute difference between that transition's
    frame change and the mean of its neighbours' changes (second temporal difference). Motion at a steady
    or slowly changing speed scores low wherever it is; a seam (a jump at one transition that its
    neighbours do not share) scores high. The first and last transitions have one neighbour each."""
    d = np.diff(v.astype(np.float64), axis=0)                     # [F-1, C, H, W] frame changes
    prev = np.concatenate([d[:1], d[:-1]])
    nxt = np.concatenate([d[1:], d[-1:]])
    return np.abs(d - (prev + nxt) / 2).mean(axis=(1, 2, 3))


def seam_scores(score: np.ndarray, seams: list[int]) -> dict:
    """The window-seam score: the transitions at window / chunk edges (`seams`) against the clip's other
    transitions under one per-transition score (frame difference or jerk); `invisible` when no edge
    transition exceeds the others' 95th percentile (the clip's own spread)."""
    inner = np.delete(score, seams)
    p95 = float(np.percentile(inner, 95))
    above = int((score[seams] > p95).sum())
    return {"max_seam": float(score[seams].max()), "mean_seam": float(score[seams].mean()),
            "inner_p95": p95, "inner_mean": float(inner.mean()), "seams_above_p95": above,
            "invisible": bool(score[seams].max() <= p95)}


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
