"""Measured checks of the paper's applications and of control, on MAV-Tiny (`python -m mav_core eval --apps`).

  image animation   one rendered held-out image -> ↑F extrapolation; first frame PSNR vs the input,
                    later frames' centroid displacement (motion);
  two-image interp. first/last frames = the two inputs (PSNR), middle centroids between theirs
                    (distance of each middle centroid from the segment joining the end centroids, and
                    monotone progress along it);
  variations        vid2vid from a rendered clip at strength 0.3 and 0.8: per-frame PSNR vs the input;
  control           held-out rendered motion clips -> Canny hint; generated object mask vs the clip's
                    object mask (IoU), with and without the adapter, same seeds and prompts; strength 0
                    reproduces the uncontrolled output exactly.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import torch

from ..data.detect import detect
from ..data.world import caption, motion_scenes, random_scene, render_scenes, sample_motion
from ..inference import (Guides, InterpolationOptions, SamplingOptions, VideoShape, frames_to_video, generate_video,
                         interpolate_video, video_to_frames)
from ..inference.pipeline import MakeAVideo
from ..io.loader import load_model
from ..models import family
from ..models.control import Control, make_hint
from .metrics import psnr, to_uint8


def _render(scenes):
    return render_scenes(scenes, family.BASE_SIZE)


def _video(frames_u8: np.ndarray) -> torch.Tensor:
    return frames_to_video(torch.from_numpy(frames_u8).float() / 255)


def _centroid(frame):
    return detect(frame).centroid


def _mask(frame):
    return detect(frame).mask


def _null_cond(mav, b=1):
    tokens, _ = mav.text.module.encode_text([""] * b)
    return {"context": tokens, "image_embed": torch.zeros(b, mav.text.module.config.embed_dim)}


@torch.no_grad()
def eval_animation(mav: MakeAVideo, n: int = 8, seed: int = 0, frames: int = 16) -> dict:
    rng = np.random.default_rng(seed + 500)
    firsts, moves = [], []
    for i in range(n):
        img = _render([random_scene(rng)])
        cond, _ = mav.conditioning("", "", seed + i, 1, 1.0)
        cond = {"context": cond["context"], "image_embed": mav.text.module.encode_image(_video(img)[:, :, 0])}
        out = interpolate_video(mav.interpolator, _video(img), cond, None, 8.0,
                                InterpolationOptions(mode="extrapolate", extra_frames=frames - 1),
                                SamplingOptions(seed=seed + i, steps=15))
        u8 = to_uint8(video_to_frames(out))
        firsts.append(psnr(u8[0], img[0]))
        c0 = _centroid(u8[0])
        later = [_centroid(f) for f in u8[1:]]
        d = [np.hypot(c[0] - c0[0], c[1] - c0[1]) for c in later if c is not None and c0 is not None]
        moves.append(max(d) if d else float("nan"))
    return {"first_frame_psnr_db": float(np.mean(firsts)), "min_first_frame_psnr_db": float(np.min(firsts)),
            "max_centroid_displacement_px": float(np.nanmean(moves)), "moving_share": float(np.nanmean(np.array(moves) >= 1.0))}


@torch.no_grad()
def eval_two_image(mav: MakeAVideo, n: int = 8, seed: int = 0, frames: int = 16) -> dict:
    rng = np.random.default_rng(seed + 900)
    end_psnr, off_path, monotone = [], [], []
    for i in range(n):
        s = random_scene(rng)
        a, b = s, dataclasses.replace(s, x=1 - s.x, y=1 - s.y)
        img = _render([a, b])
        out = interpolate_video(mav.interpolator, _video(img), _null_cond(mav), None, 8.0,
                                InterpolationOptions(multiplier=frames - 1), SamplingOptions(seed=seed + i, steps=15))
        u8 = to_uint8(video_to_frames(out))
        end_psnr += [psnr(u8[0], img[0]), psnr(u8[-1], img[1])]
        p0, p1 = np.array(_centroid(img[0])), np.array(_centroid(img[1]))
        seg = p1 - p0
        ts, offs = [], []
        for f in u8[1:-1]:
            c = _centroid(f)
            if c is None:
                continue
            v = np.array(c) - p0
            t = float(v @ seg / (seg @ seg))
            ts.append(t)
            offs.append(float(np.linalg.norm(v - t * seg)))
        off_path.append(np.mean(offs) if offs else np.nan)
        monotone.append(float(np.mean(np.diff(ts) >= -0.05)) if len(ts) > 1 else np.nan)
    return {"end_frames_psnr_db": float(np.mean(end_psnr)), "min_end_frame_psnr_db": float(np.min(end_psnr)),
            "middle_distance_from_path_px": float(np.nanmean(off_path)),
            "middle_progress_monotone_share": float(np.nanmean(monotone))}


@torch.no_grad()
def eval_variations(mav: MakeAVideo, n: int = 6, seed: int = 0, frames: int = 16) -> dict:
    rng = np.random.default_rng(seed + 1300)
    res = {0.3: [], 0.8: []}
    for i in range(n):
        m = sample_motion(rng)
        clip = _render(motion_scenes(m, frames, 8.0))
        cond, uncond = mav.conditioning(caption(m.start), "", seed + i, 20, 1.0)
        for strength in res:
            out = generate_video(mav.decoder, cond, uncond, VideoShape(frames, family.BASE_SIZE, family.BASE_SIZE, 8.0),
                                 SamplingOptions(seed=seed + i, steps=20, cfg=4.0, denoise=strength),
                                 Guides(init=_video(clip)))
            u8 = to_uint8(video_to_frames(out))
            res[strength].append(np.mean([psnr(a, b) for a, b in zip(u8, clip)]))
    return {f"psnr_db_strength_{k}": float(np.mean(v)) for k, v in res.items()}


@torch.no_grad()
def eval_control(mav: MakeAVideo, adapter_path, n: int = 10, seed: int = 0, frames: int = 8) -> dict | None:
    adapter = load_model(adapter_path, expect_stage="control").module
    rng = np.random.default_rng(seed + 1700)   # held out: the adapter trained on stills, never these clips
    ious = {"with_control": [], "without_control": []}
    zero_equal = True
    for i in range(n):
        m = sample_motion(rng)
        clip = _render(motion_scenes(m, frames, 8.0))
        truth = [_mask(f) for f in clip]
        hint = make_hint(_video(clip), adapter.config.kind)
        cond, uncond = mav.conditioning(caption(m.start), "", seed + i, 20, 1.0)
        shape = VideoShape(frames, family.BASE_SIZE, family.BASE_SIZE, 8.0)
        options = SamplingOptions(seed=seed + i, steps=20, cfg=4.0)
        plain = generate_video(mav.decoder, cond, uncond, shape, options)
        controlled = generate_video(mav.decoder, cond, uncond, shape, options, Guides(controls=(Control(adapter, hint),)))
        if i == 0:
            zero = generate_video(mav.decoder, cond, uncond, shape, options,
                                  Guides(controls=(Control(adapter, hint, strength=0.0),)))
            zero_equal = bool(torch.equal(zero, plain))
        for name, out in (("without_control", plain), ("with_control", controlled)):
            u8 = to_uint8(video_to_frames(out))
            vals = []
            for f, t in zip(u8, truth):
                g = _mask(f)
                union = np.logical_or(g, t).sum()
                vals.append(np.logical_and(g, t).sum() / union if union else 0.0)
            ious[name].append(float(np.mean(vals)))
    return {**{f"iou_{k}": float(np.mean(v)) for k, v in ious.items()}, "strength0_reproduces_uncontrolled": zero_equal,
            "clips": n, "kind": adapter.config.kind}
