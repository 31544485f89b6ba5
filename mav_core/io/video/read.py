"""Streaming reads with frame selection: only the selected frames are kept (as uint8) while decoding and the
float output is allocated once, so peak memory stays near 1.25x the returned tensor.

PyAV decodes video files (OpenCV where PyAV is absent); OpenCV reads animated webp, which FFmpeg cannot
decode; frame folders are read image by image.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from . import backends
from .containers import _folder_fps, _numbered_frames, _webp_fps
from .formats import _READ_VIDEO_SUFFIXES, DEFAULT_FOLDER_FPS, _check_int, _check_size


def read_video(
    path: str | os.PathLike,
    max_frames: int | None = None,
    skip_first: int = 0,
    every_nth: int = 1,
    size: tuple[int, int] | None = None,
    max_bytes: int | None = None,
) -> tuple[torch.Tensor, float]:
    """Read frames as float32 [F, H, W, 3] in 0..1 and the frame rate.

    Selection: drop ``skip_first`` frames, keep every ``every_nth`` of the rest, stop after
    ``max_frames``; i.e. source indices ``skip_first + k * every_nth``. ``size=(height, width)``
    resizes every frame. Decoding streams: only the selected frames are kept (as uint8), and the
    float output is allocated once, so peak memory stays near 1.25x the returned tensor.
    ``path`` may be a video file (mp4/webm/mkv/mov/avi/gif/webp) or a folder of numbered PNG/JPG frames.
    ``max_bytes`` bounds the memory of the result (uint8 frames while decoding + the float32 output): decoding
    stops with a MemoryError naming the file as soon as the frames kept so far would exceed it, whatever
    the container's header declares.
    """
    path = Path(path)
    _check_int("max_frames", max_frames, 1, allow_none=True)
    _check_int("skip_first", skip_first, 0)
    _check_int("every_nth", every_nth, 1)
    size = _check_size(size)
    _check_int("max_bytes", max_bytes, 0, allow_none=True)
    if not path.exists():
        raise FileNotFoundError(f"video path {str(path)!r} does not exist")
    selector = _Selector(max_frames, skip_first, every_nth, _Budget(path, max_bytes))
    suffix = path.suffix.lower()
    if path.is_dir():
        kept, fps, total = _read_image_folder(path, selector, size)
    elif suffix in _READ_VIDEO_SUFFIXES | {".webp"}:
        reader = _read_webp if suffix == ".webp" else _read_with_av if backends.av is not None else _read_with_cv2
        with backends.naming_the_file(path, "not a readable video"):
            kept, fps, total = reader(path, selector, size)
    else:
        raise ValueError(
            f"path {str(path)!r}: unsupported suffix {suffix!r}; expected one of "
            f"{sorted(_READ_VIDEO_SUFFIXES | {'.webp'})} or a folder of numbered PNG/JPG frames"
        )
    if total == 0:
        raise ValueError(f"{str(path)!r} contains no frames that can be decoded (empty, truncated or not a video)")
    if not kept:
        raise ValueError(
            f"{str(path)!r} has {total} frames; skip_first={skip_first}, every_nth={every_nth} select none of them"
        )
    return _stack_to_float(kept, path), fps


BYTES_PER_KEPT_BYTE = 5  # a kept uint8 frame while decoding + its float32 copy in the output
DECODE_BYTES = 16 << 20  # measured: the decoder's own state and buffers next to the kept frames (PyAV, 1 thread)
DECODE_FRAMES = 8        # source frames (rgb24) the decoder and the conversion hold at once


def forced_size(src_h: int, src_w: int, force_width: int, force_height: int) -> tuple[int, int] | None:
    """(height, width) a loader resizes to: both given, or one given and the other kept in proportion to the
    source; None when neither is given (> 0)."""
    if force_width <= 0 and force_height <= 0:
        return None
    if force_width > 0 and force_height > 0:
        return int(force_height), int(force_width)
    if force_width > 0:
        return max(1, round(src_h * force_width / src_w)), int(force_width)
    return int(force_height), max(1, round(src_w * force_height / src_h))


def read_bytes(frames: int, height: int, width: int, source: tuple[int, int] | None = None) -> int:
    """Peak memory of read_video keeping `frames` frames of height x width from a source of (height, width)
    `source` (default: the same size): the kept uint8 frames + the float32 output (BYTES_PER_KEPT_BYTE per
    kept byte), the decoder's frames and its own buffers. tests/test_memory_estimate.py measures it."""
    src_h, src_w = source or (height, width)
    return frames * height * width * 3 * BYTES_PER_KEPT_BYTE + DECODE_FRAMES * src_h * src_w * 3 + DECODE_BYTES


class _Budget:
    """Memory of the frames kept so far against max_bytes (None = no bound)."""

    def __init__(self, path: Path, max_bytes: int | None):
        self.path, self.max_bytes, self.used, self.frame_bytes = path, max_bytes, 0, 0

    def frames_per_chunk(self, count: int) -> int:
        """How many frames a decoder may return at once: one until a frame's size is known, then no more
        than what is left of the budget (plus one, which the next add refuses)."""
        if self.max_bytes is None:
            return count
        if not self.frame_bytes:
            return 1
        return max(1, min(count, (self.max_bytes - self.used) // self.frame_bytes + 1))

    def check_frame(self, height: int, width: int, size) -> None:
        """Refuse before decoding when a single frame of the declared (or requested) size cannot fit."""
        height, width = size or (height, width)
        need = height * width * 3 * BYTES_PER_KEPT_BYTE
        if self.max_bytes is not None and need > self.max_bytes:
            raise MemoryError(f"{str(self.path)!r}: one frame of {width}x{height} needs about {need / 2**30:.2f} "
                              f"GiB, more than the {self.max_bytes / 2**30:.2f} GiB allowed")

    def add(self, frame: np.ndarray, kept: int) -> None:
        self.frame_bytes = frame.nbytes * BYTES_PER_KEPT_BYTE
        self.used += self.frame_bytes
        if self.max_bytes is not None and self.used > self.max_bytes:
            height, width = frame.shape[:2]
            raise MemoryError(f"{str(self.path)!r}: {kept} frames of {width}x{height} already need about "
                              f"{self.used / 2**30:.2f} GiB, more than the {self.max_bytes / 2**30:.2f} GiB "
                              "allowed; decoding stopped")


class _Selector:
    """Which source indices to keep, and when decoding can stop."""

    def __init__(self, max_frames: int | None, skip_first: int, every_nth: int, budget: _Budget):
        self.max_frames, self.skip_first, self.every_nth = max_frames, skip_first, every_nth
        self.budget = budget
        self.kept = 0

    def wants(self, index: int) -> bool:
        return index >= self.skip_first and (index - self.skip_first) % self.every_nth == 0

    def take(self, frame: np.ndarray) -> np.ndarray:
        """Count a kept frame against the budget; returns it."""
        self.kept += 1
        self.budget.add(frame, self.kept)
        return frame

    @property
    def done(self) -> bool:
        return self.max_frames is not None and self.kept >= self.max_frames

    @property
    def last_index(self) -> int | None:
        return None if self.max_frames is None else self.skip_first + (self.max_frames - 1) * self.every_nth


def _resize(rgb: np.ndarray, size: tuple[int, int] | None) -> np.ndarray:
    if size is None or rgb.shape[:2] == size:
        return rgb
    height, width = size
    cv2 = backends.cv2
    if cv2 is not None:
        shrinking = height * width < rgb.shape[0] * rgb.shape[1]
        return cv2.resize(rgb, (width, height), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)
    t = torch.from_numpy(rgb).permute(2, 0, 1)[None].float()
    t = torch.nn.functional.interpolate(t, size=size, mode="bilinear", antialias=True, align_corners=False)
    return t[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy()


def _stack_to_float(kept: list[np.ndarray], path: Path) -> torch.Tensor:
    shape = kept[0].shape
    out = torch.empty((len(kept), *shape), dtype=torch.float32)
    for i in range(len(kept)):
        if kept[i].shape != shape:
            raise ValueError(f"{str(path)!r}: frame {i} has size {kept[i].shape[:2]}, frame 0 has {shape[:2]}; pass size=")
        out[i].copy_(torch.from_numpy(kept[i]))
        kept[i] = None  # release the uint8 copy as soon as it is converted
    return out.div_(255.0)


def _read_with_av(path: Path, selector: _Selector, size) -> tuple[list, float, int]:
    with backends.naming_the_file(path, "not a readable video"):   # e.g. av.EOFError on a truncated file
        return _decode_with_av(path, selector, size)


def _decode_with_av(path: Path, selector: _Selector, size) -> tuple[list, float, int]:
    kept, index = [], 0
    with backends.av.open(str(path)) as container:
        if not container.streams.video:
            raise ValueError(f"{str(path)!r} has no video stream")
        stream = container.streams.video[0]
        if stream.codec_context is None:
            raise ValueError(f"{str(path)!r}: its video stream has no decoder (unknown or unsupported codec)")
        selector.budget.check_frame(stream.codec_context.height, stream.codec_context.width, size)
        stream.thread_type = "AUTO"
        fps = _stream_fps(stream, container)
        for frame in container.decode(stream):
            if selector.wants(index):
                kept.append(selector.take(_resize(frame.to_ndarray(format="rgb24"), size)))
            index += 1
            if selector.done:
                break
    return kept, fps, index


def _stream_fps(stream, container) -> float:
    if container.format.name == "gif":  # delays may alternate (12, 13, ... cs): average them all
        fps = _gif_mean_fps(container.name)
        if fps:
            return fps
    for rate in (stream.average_rate, stream.guessed_rate, stream.base_rate):
        if rate:
            return float(rate)
    if stream.frames and container.duration:
        return stream.frames / (container.duration / 1_000_000)
    return DEFAULT_FOLDER_FPS


def _gif_mean_fps(path: str) -> float | None:
    """Frames per second over the whole GIF from its packet durations (demuxed only, not decoded)."""
    with backends.av.open(path) as container:
        stream = container.streams.video[0]
        durations = [packet.duration for packet in container.demux(stream) if packet.size and packet.duration]
    total = sum(durations) * stream.time_base if durations and stream.time_base else 0
    return float(len(durations) / total) if total else None


def _read_with_cv2(path: Path, selector: _Selector, size) -> tuple[list, float, int]:
    cv2 = backends.cv2
    if cv2 is None:
        raise RuntimeError("reading video needs PyAV (pip install av) or OpenCV; neither is installed")
    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        raise ValueError(f"OpenCV could not open {str(path)!r}")
    kept, index = [], 0
    try:
        fps = float(capture.get(cv2.CAP_PROP_FPS)) or DEFAULT_FOLDER_FPS
        while not selector.done:
            if not selector.wants(index):
                if not capture.grab():
                    break
            else:
                ok, bgr = capture.read()
                if not ok:
                    break
                kept.append(selector.take(_resize(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), size)))
            index += 1
    finally:
        capture.release()
    return kept, fps, index


_WEBP_CHUNK_FRAMES = 64  # animated WebP frames decoded per OpenCV call


def _read_webp(path: Path, selector: _Selector, size) -> tuple[list, float, int]:
    """Animated WebP via OpenCV (FFmpeg cannot decode it), a chunk of frames per call."""
    cv2 = backends.cv2
    if cv2 is None or not hasattr(cv2, "imreadanimation"):
        if backends.av is None:
            raise RuntimeError("reading webp needs OpenCV >= 4.11 or PyAV")
        return _read_with_av(path, selector, size)  # still images only
    kept, index, durations = [], 0, []
    while not selector.done:
        chunk = _WEBP_CHUNK_FRAMES
        count = chunk if selector.last_index is None else min(chunk, selector.last_index - index + 1)
        count = selector.budget.frames_per_chunk(count)
        ok, animation = cv2.imreadanimation(str(path), index, count)
        if not ok or not animation.frames:
            break
        durations.extend(int(d) for d in animation.durations)
        for bgr in animation.frames:
            if selector.wants(index):
                kept.append(selector.take(_resize(cv2.cvtColor(bgr, cv2.COLOR_BGRA2RGB if bgr.shape[-1] == 4 else cv2.COLOR_BGR2RGB), size)))
            index += 1
        if len(animation.frames) < count:
            break
    return kept, _webp_fps(durations), index


def _read_image(file: Path) -> np.ndarray:
    cv2 = backends.cv2
    if cv2 is not None:
        bgr = cv2.imdecode(np.fromfile(file, dtype=np.uint8), cv2.IMREAD_COLOR)
        if bgr is None:
            raise ValueError(f"could not decode image {str(file)!r}")
        return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    with backends.av.open(str(file)) as container:
        return next(container.decode(video=0)).to_ndarray(format="rgb24")


def _read_image_folder(folder: Path, selector: _Selector, size) -> tuple[list, float, int]:
    files = _numbered_frames(folder)
    fps = _folder_fps(files)
    kept = []
    for index, file in enumerate(files):
        if selector.done:
            break
        if selector.wants(index):
            kept.append(selector.take(_resize(_read_image(file), size)))
    return kept, fps, len(files)
