"""Render the README's frame strip from the shipped MAV-Tiny weights (real outputs, nothing edited).

    python scripts/make_strip.py [-o docs/mav-tiny-strip.png] [--seed 0]

Rows: prompts (held-out colour/shape pairs marked), columns: every 4th frame of the full chain's output.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mav_core.inference.pipeline import MakeAVideo  # noqa: E402

PROMPTS = ["a large red triangle on a gray background",      # held out: red triangle
           "a small green circle on a black background",      # held out: green circle
           "a large yellow square on a dark blue background"]  # seen pair


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("-o", "--output", default=str(ROOT / "docs" / "mav-tiny-strip.png"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--every", type=int, default=4)
    args = p.parse_args()
    mav = MakeAVideo.load()
    rows = []
    for i, prompt in enumerate(PROMPTS):
        res = mav(prompt, seed=args.seed + i)
        frames = (res.frames[:: args.every].clamp(0, 1) * 255).round().byte().numpy()
        rows.append(np.concatenate(list(frames), axis=1))
        print(f"{prompt}: {res.frames.shape[0]} frames at {res.fps:g} fps")
    width = max(r.shape[1] for r in rows)
    rows = [np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0))) for r in rows]
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(out), cv2.cvtColor(np.concatenate(rows, axis=0), cv2.COLOR_RGB2BGR))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
