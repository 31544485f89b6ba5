"""D^t's text conditioning at inference, measured: the shipped D^t sampled with the prompt's text tokens in its
cross-attention (as the image model D was trained) against the empty prompt's tokens (as D^t's temporal layers
were trained on unlabeled video), the same image embeddings from the prior, seeds and settings (16 frames,
32x32, 20 DDIM steps, cfg 4). Scores per video from the world's detector (eval.metrics.score_video): aligned
(majority colour and shape are the prompt's), consistency (share of frames showing the majority object), mean
centroid step and jerk (px).

    python bench/decoder_text_conditioning.py --split train --prompts 20    # where the choice is made
    python bench/decoder_text_conditioning.py --split heldout --prompts 20  # reported, never tuned on

Writes bench/results/decoder_text_conditioning.json (one entry per split, merged with what is there).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from common import ROOT, write_json   # also puts the repository on sys.path
from mav_core.data.world import heldout_prompts, train_prompts
from mav_core.eval.metrics import parse_prompt, score_video, to_uint8
from mav_core.inference import SamplingOptions, VideoShape, encode_prompt, generate_video, video_to_frames
from mav_core.inference.pipeline import MakeAVideo

METRICS = ("aligned", "colour_ok", "shape_ok", "consistency", "step", "jerk")


def choose_prompts(split: str, n: int) -> list[str]:
    if split == "heldout":
        return heldout_prompts()[:n]
    pool = train_prompts()
    return [pool[i] for i in np.random.default_rng(7).permutation(len(pool))[:n]]


@torch.no_grad()
def measure(mav: MakeAVideo, prompts: list[str]) -> dict:
    conds, unconds = zip(*(mav.conditioning(p, "", i, 20, 1.0) for i, p in enumerate(prompts)))
    cond = {k: torch.cat([c[k] for c in conds]) for k in conds[0]}
    uncond = {k: torch.cat([u[k] for u in unconds]) for k in unconds[0]}
    null, _ = encode_prompt(mav.text, [""] * len(prompts))
    out = {}
    for name, (c, u) in {"text_tokens": (cond, uncond),
                         "empty_prompt_tokens": ({**cond, "context": null}, {**uncond, "context": null})}.items():
        video = generate_video(mav.decoder, c, u, VideoShape(16, 32, 32, 4.0), SamplingOptions(seed=0, steps=20, cfg=4.0))
        scores = [score_video(to_uint8(video_to_frames(video[i:i + 1])), *parse_prompt(p)) for i, p in enumerate(prompts)]
        out[name] = {k: float(np.nanmean([s[k] for s in scores])) for k in METRICS}
        print(name, {k: round(v, 3) for k, v in out[name].items()}, flush=True)
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--split", choices=("train", "heldout"), default="train")
    p.add_argument("--prompts", type=int, default=20)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "decoder_text_conditioning.json"))
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    prompts = choose_prompts(args.split, args.prompts)
    result = measure(MakeAVideo.load(interpolator="diffusion"), prompts)
    path = Path(args.out)
    report = json.loads(path.read_text()) if path.exists() else {}
    report[args.split] = {"prompts": prompts, **result}
    write_json(report, "decoder_text_conditioning", args.out)


if __name__ == "__main__":
    main()
