"""Render the pack's example inputs (the files the shipped workflows start from) with the toy world of
mav_core/data/world.py, so they are the pack's own work:

    .venv/bin/python examples/make_examples.py [OUT_DIR]     # default: this folder

mav_start.png   a large red circle on a black background (image_animation, control_canny)
mav_first.png   the same circle at the upper left, mav_last.png at the lower right (image_interpolation)
mav_source.mp4  the circle gliding across for 16 frames at 8 fps (video_variation, video_interpolation)
mav_sequence/   the clip's first 8 frames as numbered PNGs (Load Images)

Every file is 128x128 and written temp-then-rename; the same command writes the same pixels.
"""
from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from mav_core.data.world import Motion, Scene, motion_scenes, render, render_scenes  # noqa: E402
from mav_core.io.video import temp_file_for, write_video  # noqa: E402

SIZE, FRAMES, FPS, SEQUENCE_FRAMES = 128, 16, 8.0, 8
START = Scene("circle", "red", "large", "black", x=0.35, y=0.5)


def save_png(array, path: Path) -> None:
    with temp_file_for(path) as temp:
        Image.fromarray(array).save(temp, format="PNG", optimize=True)


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    save_png(render(START, SIZE), out / "mav_start.png")
    save_png(render(dataclasses.replace(START, x=0.3, y=0.32), SIZE), out / "mav_first.png")
    save_png(render(dataclasses.replace(START, x=0.7, y=0.68), SIZE), out / "mav_last.png")
    clip = render_scenes(motion_scenes(Motion("translate", dataclasses.replace(START, x=0.3, y=0.4),
                                              vx=0.3, vy=0.1), FRAMES, FPS), SIZE)
    write_video(torch.from_numpy(clip).float() / 255, out / "mav_source.mp4", FPS, quality=90,
                metadata={"description": "MakeAVideo example: a large red circle on a black background"})
    sequence = out / "mav_sequence"
    sequence.mkdir(exist_ok=True)
    for index, frame in enumerate(clip[:SEQUENCE_FRAMES], start=1):
        save_png(frame, sequence / f"frame_{index:02d}.png")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent)
