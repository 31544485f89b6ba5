"""Unlabeled real video clips decoded from animated WEBP files (see scripts/fetch_clips.py).

Decoding uses OpenCV's `cv2.imreadanimation` (OpenCV >= 4.11); frames are composited over black
when they carry alpha. The held-out split is a deterministic hash of the file's template name, so
numbered variants of one template ("x-1.webp", "x-2.webp") always land in the same split.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

from .world import _ShardedStream, stable_hash, to_tensor

MANIFEST_NAME = "manifest.json"
HELDOUT_PERCENT = 10


@dataclass(frozen=True)
class ClipInfo:
    path: Path
    frames: int
    width: int
    height: int
    fps: float


def decode_webp(path: str | Path) -> tuple[np.ndarray, float]:
    """Decode an (animated) WEBP to uint8 RGB [F, H, W, 3] and its mean frame rate."""
    path = Path(path)
    if not hasattr(cv2, "imreadanimation"):
        raise RuntimeError("this OpenCV build lacks cv2.imreadanimation (needs OpenCV >= 4.11) to decode animated WEBP")
    ok, anim = cv2.imreadanimation(str(path))
    if not ok or not anim.frames:
        # a still WEBP: fall back to a single frame
        img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if img is None:
            raise ValueError(f"could not decode {path} as WEBP")
        frames, durations = [img], [100]
    else:
        frames, durations = list(anim.frames), list(anim.durations)
    out = np.stack([_to_rgb(f) for f in frames])
    mean_ms = float(np.mean([d for d in durations if d > 0] or [100]))
    return out, 1000.0 / mean_ms


def _to_rgb(frame: np.ndarray) -> np.ndarray:
    if frame.ndim == 2:
        return cv2.cvtColor(frame, cv2.COLOR_GRAY2RGB)
    if frame.shape[2] == 4:
        alpha = frame[..., 3:4].astype(np.float32) / 255.0
        frame = (frame[..., :3].astype(np.float32) * alpha + 0.5).astype(np.uint8)
    return cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)


def scene_cuts(frames: np.ndarray, ratio: float = 6.0, floor: float = 25.0) -> list[int]:
    """Indices i where frame i starts a new shot (mean abs difference to frame i-1 jumps)."""
    if len(frames) < 2:
        return []
    small = np.stack([cv2.resize(f, (32, 32), interpolation=cv2.INTER_AREA) for f in frames]).astype(np.float32)
    diff = np.abs(np.diff(small, axis=0)).mean(axis=(1, 2, 3))
    limit = max(floor, ratio * float(np.median(diff)))
    return [int(i) + 1 for i in np.flatnonzero(diff > limit)]


def shots(frames: np.ndarray) -> list[tuple[int, int]]:
    """[start, end) frame ranges between scene cuts."""
    bounds = [0, *scene_cuts(frames), len(frames)]
    return [(a, b) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]


def template_name(path: str | Path) -> str:
    """'api_foo_bar-2.webp' -> 'api_foo_bar' (variants of one template share a split)."""
    return re.sub(r"-\d+$", "", Path(path).stem)


def split_of(path: str | Path) -> str:
    return "heldout" if stable_hash(template_name(path)) % 100 < HELDOUT_PERCENT else "train"


def list_clips(folder: str | Path, split: str = "train", min_frames: int = 2) -> list[ClipInfo]:
    """Animated WEBP clips in `folder` (via its manifest.json when present) belonging to `split`."""
    if split not in ("train", "heldout", "all"):
        raise ValueError(f"split must be 'train', 'heldout' or 'all', got {split!r}")
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"clip folder {folder} does not exist; run scripts/fetch_clips.py first")
    manifest = folder / MANIFEST_NAME
    infos = []
    if manifest.exists():
        for e in json.loads(manifest.read_text())["clips"]:
            infos.append(ClipInfo(folder / e["path"], e["frames"], e["width"], e["height"], e["fps"]))
    else:
        for p in sorted(folder.rglob("*.webp")):
            frames, fps = decode_webp(p)
            infos.append(ClipInfo(p, len(frames), frames.shape[2], frames.shape[1], fps))
    return [c for c in infos if c.frames >= min_frames and (split == "all" or split_of(c.path) == split)]


class RealClips(_ShardedStream):
    """Infinite stream of (clip float [F,3,H,W] in -1..1, fps float) from animated WEBP files.

    Each item: a random clip, a random frame stride in `strides` (fps divided accordingly), a random
    temporal window inside one shot (windows never span a scene cut), one random square crop (side `crop_scale` x the short side) shared by all frames,
    resized to `size`. Decoded clips are cached in memory, pre-shrunk so the crop still covers `size`.
    """

    def __init__(self, folder: str | Path, num_frames: int = 16, size: int = 32, seed: int = 0,
                 split: str = "train", strides: tuple[int, ...] = (1, 2, 3), crop_scale: tuple[float, float] = (0.6, 1.0),
                 cache: bool = True):
        super().__init__(seed)  # one stream; a training rank takes its part with worker_shard(rank, world_size)
        if num_frames < 1:
            raise ValueError(f"num_frames must be >= 1, got {num_frames}")
        if not strides or min(strides) < 1:
            raise ValueError(f"strides must be positive ints, got {strides}")
        if not (0 < crop_scale[0] <= crop_scale[1] <= 1):
            raise ValueError(f"crop_scale must satisfy 0 < lo <= hi <= 1, got {crop_scale}")
        self.num_frames, self.size, self.strides, self.crop_scale = int(num_frames), int(size), tuple(strides), crop_scale
        self.clips = list_clips(folder, split, min_frames=num_frames)
        if not self.clips:
            raise ValueError(f"no {split} clips with >= {num_frames} frames in {folder}")
        self.cache = cache
        self._cache: dict[Path, tuple[np.ndarray, float, list[tuple[int, int]]]] = {}

    def __len__(self) -> int:  # number of source files, not items (the stream is infinite)
        return len(self.clips)

    def preload(self) -> "RealClips":
        """Decode every clip now (otherwise each is decoded on first use, ~0.1-0.5 s apiece)."""
        for info in self.clips:
            self._frames(info)
        return self

    def _frames(self, info: ClipInfo) -> tuple[np.ndarray, float, list[tuple[int, int]]]:
        if info.path in self._cache:
            return self._cache[info.path]
        frames, fps = decode_webp(info.path)
        short = min(frames.shape[1:3])
        target = math.ceil(self.size / self.crop_scale[0])
        if short > target:  # shrink once, keeping enough pixels for the smallest crop
            f = target / short
            hw = (max(1, round(frames.shape[2] * f)), max(1, round(frames.shape[1] * f)))
            frames = np.stack([cv2.resize(x, hw, interpolation=cv2.INTER_AREA) for x in frames])
        entry = (frames, fps, shots(frames))
        if not self.cache:  # keep only the latest clip: an item's draw and make both need it
            self._cache.clear()
        self._cache[info.path] = entry
        return entry

    def draws(self):
        """(clip, start, stride, crop y0, x0, side) of each item; a clip is decoded (and cached) when first drawn,
        as its shots and frame size decide the draws."""
        rng = self._rng()
        while True:
            info = self.clips[rng.integers(len(self.clips))]
            frames, _, clip_shots = self._frames(info)
            need = lambda stride: (self.num_frames - 1) * stride + 1  # noqa: E731
            fits = [(a, b) for a, b in clip_shots if b - a >= need(1)]
            if not fits:  # every shot too short: fall back to the whole clip
                fits = [(0, len(frames))]
            a, b = fits[rng.integers(len(fits))]
            strides = [s for s in self.strides if need(s) <= b - a] or [1]
            stride = strides[rng.integers(len(strides))]
            start = a + rng.integers(b - a - need(stride) + 1)
            h, w = frames.shape[1:3]
            side = max(1, round(min(h, w) * rng.uniform(*self.crop_scale)))
            y0, x0 = rng.integers(h - side + 1), rng.integers(w - side + 1)
            yield info, int(start), stride, int(y0), int(x0), side

    def make(self, draw):
        info, start, stride, y0, x0, side = draw
        frames, fps, _ = self._frames(info)
        window = frames[start: start + (self.num_frames - 1) * stride + 1: stride]
        crop = window[:, y0:y0 + side, x0:x0 + side]
        interp = cv2.INTER_AREA if side >= self.size else cv2.INTER_LINEAR
        out = np.stack([cv2.resize(x, (self.size, self.size), interpolation=interp) for x in crop])
        return to_tensor(out), float(fps / stride)
