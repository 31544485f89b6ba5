"""Measured checks of the paper's applications and of control, on MAV-Tiny (`python -m mav_core eval --apps`).

  image animation   one rendered held-out image -> ↑F extrapolation, with and without the image's own
                    embedding (the Image Encode node); first frame PSNR vs the input, the object's colour
                    and shape kept in the new frames, centroid displacement (motion);
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
from ..inference import (Guides, InterpolationOptions, SamplingOptions, VideoShape, encode_prompt, frames_to_video,
                         generate_video, interpolate_video, video_to_frames)
from ..inference.pipeline import MakeAVideo
from ..inference.frame_masks import start_frames
from ..inference.interpolate import is_flow_interpolator
from ..inference.text import encode_images, nearest_captions
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


def _animation_scores(u8: np.ndarray, img: np.ndarray) -> dict:
    """One animation [F, H, W, 3] of the image img[0]: the first frame's PSNR against the input, the share of
    the new frames (all but the first) whose detected object has the input's detected colour and shape,
    and the largest centroid displacement from the first frame (px at 32x32)."""
    ref = detect(img[0])
    dets = [detect(f) for f in u8]
    kept = [d.colour == ref.colour for d in dets[1:]], [d.shape == ref.shape for d in dets[1:]]
    c0 = dets[0].centroid
    d = [np.hypot(x.centroid[0] - c0[0], x.centroid[1] - c0[1]) for x in dets[1:]
         if x.centroid is not None and c0 is not None]
    return {"psnr": psnr(u8[0], img[0]), "colour": float(np.mean(kept[0])), "shape": float(np.mean(kept[1])),
            "both": float(np.mean(np.logical_and(*kept))), "move": max(d) if d else float("nan")}


def animate_with_decoder(mav: MakeAVideo, image: torch.Tensor, frames: int, options: SamplingOptions,
                         image_encode: bool = True, fps: float = 8.0) -> torch.Tensor:
    """D^t image animation (the image_animation workflow): the image [1, 3, 1, H, W] is the first frame,
    put into every denoised estimate; with image_encode, conditioned as the Image Encode node with
    prompt_from_image conditions it (the image's embedding and the family caption nearest it), guided
    away from the empty prompt; without, the empty prompt alone."""
    empty, _ = encode_prompt(mav.text, [""])
    uncond = {"context": empty, "image_embed": torch.zeros(1, mav.text.module.config.embed_dim)}
    cond = uncond
    if image_encode:
        embed = encode_images(mav.text, image)
        tokens, _ = encode_prompt(mav.text, nearest_captions(mav.text, embed))
        cond = {"context": tokens, "image_embed": embed}
    known, mask = start_frames(image, frames)
    return generate_video(mav.decoder, cond, uncond, VideoShape(frames, *image.shape[-2:], fps), options,
                          Guides(known=known, known_mask=mask))


@torch.no_grad()
def eval_animation(mav: MakeAVideo, n: int = 10, seed: int = 0, frames: int = 16) -> dict:
    """One rendered held-out image -> an animation of `frames` frames, same images and seeds for every
    setting: D^t with the image as its first frame (the image_animation workflow), with and without the
    Image Encode conditioning (20 steps, cfg 4); and the paper's ↑F extrapolation with the image's own
    embedding and without any conditioning (15 steps). Per setting: the first frame's PSNR, the share of
    new frames keeping the object's colour, shape and both (detector vs the input), the mean largest
    centroid displacement and the share of clips moving >= 1 px."""
    rng = np.random.default_rng(seed + 500)
    scores = {"decoder_with_image_encode": [], "decoder_without_image_encode": [], "with_embed": [],
              "without_embed": []}
    for i in range(n):
        img = _render([random_scene(rng)])
        embed = encode_images(mav.text, _video(img))
        for image_encode in (True, False):
            out = animate_with_decoder(mav, _video(img), frames, SamplingOptions(seed=seed + i, steps=20, cfg=4.0),
                                       image_encode)
            name = "decoder_with_image_encode" if image_encode else "decoder_without_image_encode"
            scores[name].append(_animation_scores(to_uint8(video_to_frames(out)), img))
        if mav.interpolator is None or is_flow_interpolator(mav.interpolator):
            continue
        for name, cond in (("with_embed", {"image_embed": embed}), ("without_embed", {})):
            if cond:
                tokens, _ = encode_prompt(mav.text, [""])
                cond = {"context": tokens, **cond}
            out = interpolate_video(mav.interpolator, _video(img), cond, None, 8.0,
                                    InterpolationOptions(mode="extrapolate", extra_frames=frames - 1),
                                    SamplingOptions(seed=seed + i, steps=15))
            scores[name].append(_animation_scores(to_uint8(video_to_frames(out)), img))
    scores = {k: v for k, v in scores.items() if v}
    report = {"clips": n}
    for name, rows in scores.items():
        col = {k: np.array([r[k] for r in rows]) for k in rows[0]}
        report.update({f"{name}_{k}": v for k, v in {
            "first_frame_psnr_db": float(col["psnr"].mean()), "min_first_frame_psnr_db": float(col["psnr"].min()),
            "colour_kept_share": float(col["colour"].mean()), "shape_kept_share": float(col["shape"].mean()),
            "colour_and_shape_kept_share": float(col["both"].mean()),
            "max_centroid_displacement_px": float(np.nanmean(col["move"])),
            "moving_share": float(np.mean(col["move"] >= 1.0))}.items()})
    return report


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
