"""Text to video on held-out prompts: the MAV-Tiny alignment, consistency and motion numbers.

Text alignment, temporal consistency and motion on prompts whose colour/shape pairs were never
captioned in training (mav_core.data.world.heldout_prompts), scored by the world's detector
(mav_core.data.detect, validated on rendered ground truth in tests/test_world.py):
  - alignment: share of videos whose majority colour AND shape (over frames) match the prompt;
  - consistency: share of frames agreeing with their video's majority (colour, shape);
  - motion: centroid path length (px per frame at 32x32) and jerk (mean |third difference| of the
    centroid), against the same numbers on rendered training motion clips; "moves" = mean step
    >= 0.25 px/frame;
  - the image model alone (the same decoder in image mode, one frame per prompt): alignment.
"""
from __future__ import annotations

import numpy as np
import torch

from ..data.detect import detect
from ..data.world import render_clip
from ..inference import SamplingOptions, VideoShape, generate_video, sample_unet, video_to_frames
from ..inference.pipeline import MakeAVideo
from ..inference.sampling import image_mode
from ..models import family
from .metrics import motion_stats, parse_prompt, score_video, to_uint8


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
        options = SamplingOptions(seed=seed + start, steps=steps, cfg=cfg)
        video = generate_video(mav.decoder, cond, uncond, VideoShape(frames, family.BASE_SIZE, family.BASE_SIZE, fps),
                               options)
        image = sample_unet(image_mode(mav.decoder), (len(chunk), 3, 1, family.BASE_SIZE, family.BASE_SIZE), cond,
                            uncond, options)
        for i, prompt in enumerate(chunk):
            colour, shape = parse_prompt(prompt)
            video_scores.append(score_video(to_uint8(video_to_frames(video[i:i + 1])), colour, shape))
            img = to_uint8(video_to_frames(image[i:i + 1]))
            image_scores.append(score_video(np.concatenate([img] * 4), colour, shape))
    return {"video": video_scores, "image": image_scores}


def reference_motion(n: int = 30, frames: int = family.FRAMES, fps: float = 4.0, seed: int = 123) -> list[dict]:
    """The same motion numbers on rendered training clips (what D^t learned from)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        clip = render_clip(rng, frames, family.BASE_SIZE, fps=fps)
        cents = np.array([detect(f).centroid or (np.nan, np.nan) for f in clip], dtype=float)
        out.append(motion_stats(cents))
    return out


