"""What can be written and read: format and suffix tables, codec settings, and the argument checks
shared by the writers and readers."""
from __future__ import annotations

import math
import numbers
from fractions import Fraction
from pathlib import Path

import numpy as np

WRITE_FORMATS = ("mp4", "webm", "gif", "webp", "png")
_WRITE_SUFFIXES = {".mp4": "mp4", ".m4v": "mp4", ".webm": "webm", ".gif": "gif", ".webp": "webp"}
_READ_VIDEO_SUFFIXES = {".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".gif"}
_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}
DEFAULT_FOLDER_FPS = 24.0  # fps reported for a frame folder that carries no fps tag
FPS_KEY = "mav:fps"  # PNG text key for the fps of a frame folder (not returned by read_metadata)
# Tags the muxers add on their own; read_metadata leaves them out.
_AUTOMATIC_TAGS = {"major_brand", "minor_version", "compatible_brands", "encoder", "creation_time"}

_GIF_TIME_BASE = Fraction(1, 100)
_BT709 = 1  # AVCOL_SPC_BT709 == AVCOL_PRI_BT709 == AVCOL_TRC_BT709
_LIMITED_RANGE = 1  # AVCOL_RANGE_MPEG (16..235)


def _av_settings(fmt: str, quality: int, loop: int) -> tuple[str, str, dict, dict]:
    """PyAV (FFmpeg) settings of a write format: codec, pixel format, codec options, container options."""
    container_options = {}
    if fmt == "mp4":
        codec, pix_fmt = "libx264", "yuv420p"
        options = {"crf": str(round(40 - 0.3 * quality)), "preset": "medium"}
        container_options["movflags"] = "use_metadata_tags+faststart"
    elif fmt == "webm":
        codec, pix_fmt = "libvpx-vp9", "yuv420p"
        options = {"crf": str(round(50 - 0.4 * quality)), "b": "0", "deadline": "good", "cpu-used": "4", "row-mt": "1"}
    elif fmt == "webp":
        codec, pix_fmt = "libwebp_anim", "bgra"
        options = {"lossless": "1"} if quality == 100 else {"quality": str(quality)}
        options["compression_level"] = "4"
        container_options["loop"] = str(loop)
    else:  # gif
        codec, pix_fmt, options = "gif", "pal8", {}
        container_options["loop"] = str(loop)
    return codec, pix_fmt, options, container_options


# ---------------------------------------------------------------------------------------------
# argument checks


def _resolve_write_format(path: Path, format: str | None) -> str:
    if format is not None:
        fmt = format.lower().lstrip(".")
        if fmt in ("png_sequence", "png-sequence", "pngs"):
            fmt = "png"
        if fmt not in WRITE_FORMATS:
            raise ValueError(f"format must be one of {WRITE_FORMATS} (or None to use the suffix), got {format!r}")
        return fmt
    suffix = path.suffix.lower()
    if suffix in _WRITE_SUFFIXES:
        return _WRITE_SUFFIXES[suffix]
    if suffix == "" or path.is_dir():
        return "png"
    raise ValueError(
        f"path {str(path)!r}: unsupported suffix {suffix!r}; expected one of "
        f"{sorted(_WRITE_SUFFIXES)} or a folder path without suffix (PNG frames), or pass format="
    )


def _check_metadata(metadata: dict | None) -> dict[str, str]:
    if metadata is None:
        return {}
    if not isinstance(metadata, dict):
        raise TypeError(f"metadata must be a dict[str, str] or None, got {type(metadata).__name__}")
    for key, value in metadata.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise TypeError(f"metadata must map str to str (JSON-encode other values), got {key!r}: {type(value).__name__}")
        if not key or "\0" in key or ":" in key or len(key) > 79:  # ':' also keeps FPS_KEY reserved
            raise ValueError(f"metadata key {key!r} must be 1..79 characters without ':' or NUL")
    return dict(metadata)


def _check_int(name: str, value, minimum: int, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}{' or None' if allow_none else ''}, got {value!r}")


FPS_LIMITS = {   # format -> (lowest, highest) frames per second the format can store, and why
    "gif": (100 / 65535, 100.0, "gif stores each frame's delay as 1..65535 hundredths of a second"),
    "webp": (0.001, 1000.0, "webp stores each frame's delay as 1..16777215 milliseconds and the rate is kept "
                            "as a fraction with a denominator of at most 1001"),
    "mp4": (0.001, 10000.0, "mp4 stores the rate as a fraction with a denominator of at most 1001"),
    "webm": (0.001, 10000.0, "webm stores the rate as a fraction with a denominator of at most 1001"),
    "png": (0.001, 10000.0, "a PNG folder stores the rate in the first frame's text, 0.001..10000"),
}


def fps_limits(fmt: str) -> tuple[float, float, str]:
    """(lowest, highest, why) frames per second that write format `fmt` can store."""
    return FPS_LIMITS[fmt]


def check_fps_for_format(fps, fmt: str) -> Fraction:
    """fps as the Fraction written to a `fmt` file; ValueError saying the format's limits when outside them."""
    if isinstance(fps, bool) or not isinstance(fps, numbers.Real) or not math.isfinite(fps) or fps <= 0:
        raise ValueError(f"fps must be a positive finite number, got {fps!r}")
    low, high, why = fps_limits(fmt)
    if not low <= float(fps) <= high:
        raise ValueError(f"fps {float(fps):g} cannot be stored in {fmt}: {why}, so fps must be in "
                         f"{low:.4g}..{high:g}")
    return _fps_fraction(fps)


def _fps_fraction(fps) -> Fraction:
    if isinstance(fps, bool) or not isinstance(fps, numbers.Real) or not math.isfinite(fps) or fps <= 0:
        raise ValueError(f"fps must be a positive finite number, got {fps!r}")
    exact = Fraction(fps) if isinstance(fps, numbers.Rational) else Fraction(float(fps))
    return exact.limit_denominator(1001)


def _check_size(size) -> tuple[int, int] | None:
    """read_video's ``size``: (height, width) as ints, or None."""
    if size is None:
        return None
    if len(size) != 2 or any(isinstance(s, bool) or not isinstance(s, (int, np.integer)) or s < 1 for s in size):
        raise ValueError(f"size must be (height, width) with positive integers or None, got {size!r}")
    return (int(size[0]), int(size[1]))
