"""Looking at a video without decoding its frames: its size, frame count and rate (probe_video, used to
check memory before read_video) and the tags write_video embedded (read_metadata)."""
from __future__ import annotations

import json
import math
import os
import warnings
from pathlib import Path

from . import backends
from .containers import (_folder_fps, _gif_comments, _metadata_from_exif, _numbered_frames, _png_text, _probe_webp,
                         _riff_chunks)
from .formats import _AUTOMATIC_TAGS, _READ_VIDEO_SUFFIXES, DEFAULT_FOLDER_FPS, FPS_KEY
from .read import _read_image, _stream_fps


def probe_video(path: str | os.PathLike) -> dict:
    """Cheap facts about a video without decoding its frames: {"frames", "height", "width", "fps"}.

    "frames" is None where the container does not say (and cannot be counted from packets cheaply).
    Used to check memory before read_video."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"video path {str(path)!r} does not exist")
    if path.is_dir():
        files = _numbered_frames(path)
        if not files:
            return {"frames": 0, "height": 0, "width": 0, "fps": DEFAULT_FOLDER_FPS}
        height, width = _read_image(files[0]).shape[:2]
        return {"frames": len(files), "height": height, "width": width, "fps": _folder_fps(files)}
    if path.suffix.lower() == ".webp":
        with backends.naming_the_file(path, "not a readable WebP file"):
            return _probe_webp(path)
    if backends.av is None:
        return {"frames": None, "height": 0, "width": 0, "fps": DEFAULT_FOLDER_FPS}
    with backends.naming_the_file(path, "not a readable video"):   # av.InvalidDataError, av.EOFError, ...
        return _probe_with_av(path)


def _probe_with_av(path: Path) -> dict:
    with backends.av.open(str(path)) as container:
        if not container.streams.video:
            raise ValueError(f"{str(path)!r} has no video stream")
        stream = container.streams.video[0]
        if stream.codec_context is None:
            raise ValueError(f"{str(path)!r}: its video stream has no decoder (unknown or unsupported codec)")
        height, width = stream.codec_context.height, stream.codec_context.width
        fps = _stream_fps(stream, container)
        frames = stream.frames or None
        if frames is None and container.format.name == "gif":
            frames = sum(1 for packet in container.demux(stream) if packet.size)
        elif frames is None and container.duration:
            # the longest stream's end (a sound track may run a few ms past the last frame)
            frames = math.ceil(container.duration / 1_000_000 * fps - 0.01)
    return {"frames": frames, "height": height, "width": width, "fps": fps}


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    """Return the str -> str tags that write_video embedded (muxer-added tags left out).
    A corrupt file raises ValueError naming it."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"path {str(path)!r} does not exist")
    with backends.naming_the_file(path, "corrupt file, cannot read its metadata"):
        return _read_metadata(path)


def _read_metadata(path: Path) -> dict[str, str]:
    suffix = path.suffix.lower()
    if path.is_dir():
        files = _numbered_frames(path)
        if not files or files[0].suffix.lower() != ".png":
            return {}
        meta = _png_text(files[0].read_bytes())
        meta.pop(FPS_KEY, None)
        return meta
    if suffix == ".png":
        return _png_text(path.read_bytes())
    if suffix == ".gif":
        meta = {}
        for comment in _gif_comments(path.read_bytes()):
            try:
                parsed = json.loads(comment)
            except json.JSONDecodeError:
                parsed = None
            if isinstance(parsed, dict) and all(isinstance(v, str) for v in parsed.values()):
                meta.update(parsed)
            else:
                meta["comment"] = comment
        return meta
    if suffix == ".webp":
        return next((_metadata_from_exif(c) for kind, c in _riff_chunks(path.read_bytes()) if kind == b"EXIF"), {})
    if suffix in _READ_VIDEO_SUFFIXES:
        if backends.av is None:
            warnings.warn("reading container tags needs PyAV (pip install av)", stacklevel=2)
            return {}
        with backends.av.open(str(path)) as container:
            tags = dict(container.metadata)
            lower_case = container.format.name.startswith("matroska")
        return {(k.lower() if lower_case else k): v for k, v in tags.items() if k.lower() not in _AUTOMATIC_TAGS}
    raise ValueError(f"path {str(path)!r}: unsupported suffix {suffix!r} for metadata")
