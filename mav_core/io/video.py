"""Frames <-> video files, without any host (ComfyUI) dependency.

Frames are float32 tensors [F, H, W, 3] with values in 0..1 (ComfyUI's IMAGE convention).

Formats: mp4 (H.264), webm (VP9), gif, animated webp, and a folder of numbered PNG frames.
PyAV does the encoding and decoding; OpenCV stands in where PyAV is absent (mp4/webm) and reads
animated webp, which FFmpeg cannot decode. Every write goes to a temporary file (or folder) next
to the target and is moved into place with ``os.replace``; a failed write leaves nothing behind.

Metadata (``dict[str, str]``, e.g. ``{"prompt": ..., "workflow": ...}`` as JSON strings):
- mp4: container tags (``movflags=use_metadata_tags``), keys kept as given.
- webm: Matroska tags; Matroska stores tag names upper-case, so they read back lower-case.
- png folder: tEXt/iTXt chunks in the first frame (as ComfyUI's PNGs), plus the fps.
- webp: EXIF ASCII tags holding ``"key:value"`` (ComfyUI's animated-webp convention).
- gif: one comment extension holding the whole dict as JSON.
"""
from __future__ import annotations

import json
import math
import numbers
import os
import re
import shutil
import struct
import tempfile
import warnings
import zlib
from contextlib import contextmanager
from fractions import Fraction
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

try:  # PyAV is the preferred backend; everything degrades to OpenCV without it.
    import av
except ImportError:  # pragma: no cover - exercised by monkeypatching in tests
    av = None

try:
    import cv2
except ImportError:  # pragma: no cover
    cv2 = None

__all__ = ["write_video", "read_video", "read_metadata", "probe_video", "WRITE_FORMATS", "DEFAULT_FOLDER_FPS"]

WRITE_FORMATS = ("mp4", "webm", "gif", "webp", "png")
_WRITE_SUFFIXES = {".mp4": "mp4", ".m4v": "mp4", ".webm": "webm", ".gif": "gif", ".webp": "webp"}
_READ_VIDEO_SUFFIXES = {".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".gif"}
_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}
DEFAULT_FOLDER_FPS = 24.0  # fps reported for a frame folder that carries no fps tag
FPS_KEY = "mav:fps"  # PNG text key for the fps of a frame folder (not returned by read_metadata)
# Tags the muxers add on their own; read_metadata leaves them out.
_AUTOMATIC_TAGS = {"major_brand", "minor_version", "compatible_brands", "encoder", "creation_time"}


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


def _frames_to_uint8(frames: torch.Tensor, pingpong: bool) -> np.ndarray:
    """Check the IMAGE tensor and turn it into uint8 [F, H, W, 3] (pingpong appended)."""
    if not isinstance(frames, torch.Tensor):
        raise TypeError(f"frames must be a torch.Tensor [F, H, W, 3] float in 0..1, got {type(frames).__name__}")
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must have shape [F, H, W, 3] (RGB, channels last), got {tuple(frames.shape)}")
    if not frames.is_floating_point():
        raise TypeError(f"frames must be a floating tensor (float32, values 0..1), got dtype {frames.dtype}")
    if frames.shape[0] == 0:
        raise ValueError("frames has zero frames; a video needs at least one")
    if frames.shape[1] == 0 or frames.shape[2] == 0:
        raise ValueError(f"frames has an empty frame size {tuple(frames.shape[1:3])}")
    u8 = np.empty(tuple(frames.shape), dtype=np.uint8)
    for start in range(0, frames.shape[0], 16):  # in chunks: no full-size float temporaries
        chunk = frames[start:start + 16].detach().float()
        if not bool(torch.isfinite(chunk).all()):
            raise ValueError(f"frames contains NaN or infinite values (in frames {start}..{start + len(chunk) - 1})")
        chunk = chunk.clamp(0, 1).mul_(255).round_()
        u8[start:start + 16] = chunk.to(device="cpu", dtype=torch.uint8).numpy()
    if pingpong and u8.shape[0] > 2:
        u8 = np.concatenate([u8, u8[-2:0:-1]])
    return u8


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


def _fps_fraction(fps) -> Fraction:
    if isinstance(fps, bool) or not isinstance(fps, numbers.Real) or not math.isfinite(fps) or fps <= 0:
        raise ValueError(f"fps must be a positive finite number, got {fps!r}")
    exact = Fraction(fps) if isinstance(fps, numbers.Rational) else Fraction(float(fps))
    return exact.limit_denominator(1001)


# ---------------------------------------------------------------------------------------------
# atomic targets


def _current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextmanager
def _temp_file_for(path: Path) -> Iterator[Path]:
    """Yield a temp path in the target's folder; move it onto ``path`` on success, delete it on failure."""
    if not path.parent.is_dir():
        raise FileNotFoundError(f"output folder {str(path.parent)!r} does not exist")
    if path.is_dir():
        raise IsADirectoryError(f"output path {str(path)!r} is a folder; expected a file path")
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    os.chmod(tmp, 0o666 & ~_current_umask())  # mkstemp makes 0600; give the usual mode
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextmanager
def _temp_folder_for(path: Path) -> Iterator[Path]:
    """Like _temp_file_for, for a frame folder. An existing folder is replaced only if it holds frames only."""
    if not path.parent.is_dir():
        raise FileNotFoundError(f"output folder {str(path.parent)!r} does not exist")
    if path.exists():
        if not path.is_dir():
            raise FileExistsError(f"output path {str(path)!r} is a file; expected a folder for PNG frames")
        others = [p.name for p in path.iterdir() if p.suffix.lower() not in _IMAGE_SUFFIXES]
        if others:
            raise FileExistsError(f"output folder {str(path)!r} holds files other than frames ({others[:3]}); not replacing it")
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        os.chmod(tmp, 0o777 & ~_current_umask())
        yield tmp
        if path.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
            os.replace(path, old / "frames")
            try:
                os.replace(tmp, path)
            except BaseException:
                os.replace(old / "frames", path)
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


# ---------------------------------------------------------------------------------------------
# writing


def write_video(
    frames: torch.Tensor,
    path: str | os.PathLike,
    fps: float,
    format: str | None = None,
    quality: int = 85,
    loop: int = 0,
    pingpong: bool = False,
    metadata: dict[str, str] | None = None,
) -> Path:
    """Write IMAGE frames [F, H, W, 3] (float 0..1) to ``path`` and return the final path.

    format: mp4 | webm | gif | webp | png (a folder of numbered PNG frames); None picks it from the
      suffix (no suffix = PNG folder).
    quality: 0..100. mp4/webm map it to a CRF (100 -> crf 10); webp at 100 is lossless; PNG is always
      lossless; gif ignores it. mp4/webm pad odd sizes to even by repeating the last row/column.
    loop: loop count stored in gif/webp (0 = forever); other formats ignore it.
    pingpong: append the frames in reverse (without repeating the ends) so the clip plays back and forth.
    metadata: str -> str tags embedded in the file (see module docstring).
    """
    path = Path(path)
    fmt = _resolve_write_format(path, format)
    fps_q = _fps_fraction(fps)
    _check_int("quality", quality, 0)
    if quality > 100:
        raise ValueError(f"quality must be in 0..100, got {quality!r}")
    _check_int("loop", loop, 0)
    meta = _check_metadata(metadata)
    u8 = _frames_to_uint8(frames, pingpong)

    if fmt == "png":
        with _temp_folder_for(path) as tmp_dir:
            _write_png_folder(u8, tmp_dir, fps_q, meta)
        return path
    with _temp_file_for(path) as tmp:
        if fmt == "webp" and cv2 is not None:
            _write_webp(u8, tmp, fps_q, quality, loop)
        elif av is not None:
            try:
                _write_with_av(u8, tmp, fmt, fps_q, quality, loop, meta)
            except av.FFmpegError as error:
                raise RuntimeError(
                    f"{fmt} encoding failed for {u8.shape[0]} frames of {u8.shape[2]}x{u8.shape[1]} (WxH) "
                    f"at {float(fps_q):g} fps: {error}"
                ) from error
        else:
            _write_with_cv2(u8, tmp, fmt, fps_q, quality, loop, meta)
        if fmt == "gif" and meta:
            tmp.write_bytes(_gif_add_comment(tmp.read_bytes(), json.dumps(meta)))
        if fmt == "webp" and meta:
            tmp.write_bytes(_webp_add_exif(tmp.read_bytes(), _exif_from_metadata(meta), u8.shape[2], u8.shape[1]))
    return path


def _pad_to_even(u8: np.ndarray) -> np.ndarray:
    pad_h, pad_w = u8.shape[1] % 2, u8.shape[2] % 2
    if pad_h or pad_w:
        u8 = np.pad(u8, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")
    return u8


def _write_with_av(u8: np.ndarray, tmp: Path, fmt: str, fps: Fraction, quality: int, loop: int, meta: dict) -> None:
    if fmt in ("mp4", "webm"):
        u8 = _pad_to_even(u8)
    height, width = u8.shape[1:3]
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
    with av.open(str(tmp), mode="w", format=fmt, options=container_options) as container:
        if fmt in ("mp4", "webm"):
            container.metadata.update(meta)
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        stream.options = options
        if fmt == "gif":
            stream.codec_context.time_base = _GIF_TIME_BASE
            frames_out = _gif_palette_frames(u8, fps)
        elif fmt in ("mp4", "webm"):
            frames_out = (_to_bt709_yuv(frame) for frame in u8)
            context = stream.codec_context  # tag the stream so players pick the same matrix back
            context.colorspace = context.color_primaries = context.color_trc = _BT709
            context.color_range = _LIMITED_RANGE
        else:
            frames_out = (av.VideoFrame.from_ndarray(frame, format="rgb24") for frame in u8)
        for index, frame in enumerate(frames_out):
            if fmt == "gif":  # delays are whole centiseconds: round the timestamps, not each delay (12, 13, 12, ...)
                frame.pts, frame.time_base = _gif_pts(index, fps), _GIF_TIME_BASE
            else:
                frame.pts = index
            for packet in stream.encode(frame):
                _mux(container, packet, fmt, fps)
        for packet in stream.encode():
            _mux(container, packet, fmt, fps)


def _gif_pts(index: int, fps: Fraction) -> int:
    return round(index / (fps * _GIF_TIME_BASE))


def _mux(container, packet, fmt: str, fps: Fraction) -> None:
    if fmt == "gif" and packet.pts is not None:  # the muxer would give the last frame the rounded-up delay
        index = round(packet.pts * _GIF_TIME_BASE * fps)
        packet.duration = max(1, _gif_pts(index + 1, fps) - packet.pts)
    container.mux(packet)


_GIF_TIME_BASE = Fraction(1, 100)
_BT709 = 1  # AVCOL_SPC_BT709 == AVCOL_PRI_BT709 == AVCOL_TRC_BT709
_LIMITED_RANGE = 1  # AVCOL_RANGE_MPEG (16..235)


def _to_bt709_yuv(rgb: np.ndarray):
    """RGB -> limited-range BT.709 yuv420p, the matrix players assume for untagged HD video."""
    frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
    return frame.reformat(format="yuv420p", dst_colorspace="ITU709", dst_color_range="MPEG",
                          dst_color_primaries=_BT709, dst_color_trc=_BT709)


def _gif_palette_frames(u8: np.ndarray, fps: Fraction) -> Iterator:
    """Quantise to one 256-colour palette for the whole clip (FFmpeg palettegen + paletteuse)."""
    graph = av.filter.Graph()
    source = graph.add_buffer(width=u8.shape[2], height=u8.shape[1], format="rgb24", time_base=1 / fps)
    split = graph.add("split")
    palettegen = graph.add("palettegen", "stats_mode=full")
    paletteuse = graph.add("paletteuse", "dither=sierra2_4a")
    sink = graph.add("buffersink")
    source.link_to(split)
    split.link_to(paletteuse, 0, 0)
    split.link_to(palettegen, 1, 0)
    palettegen.link_to(paletteuse, 0, 1)
    paletteuse.link_to(sink)
    graph.configure()

    def drain():
        while True:
            try:
                yield graph.pull()
            except (av.BlockingIOError, av.EOFError):
                return

    for index, frame in enumerate(u8):
        video_frame = av.VideoFrame.from_ndarray(frame, format="rgb24")
        video_frame.pts, video_frame.time_base = index, 1 / fps
        graph.push(video_frame)
        yield from drain()
    graph.push(None)
    yield from drain()


def _write_with_cv2(u8: np.ndarray, tmp: Path, fmt: str, fps: Fraction, quality: int, loop: int, meta: dict) -> None:
    if cv2 is None:
        raise RuntimeError("writing video needs PyAV (pip install av) or OpenCV; neither is installed")
    if fmt in ("gif", "webp"):
        animation = cv2.Animation()
        animation.loop_count = loop
        animation.frames = [cv2.cvtColor(frame, cv2.COLOR_RGB2BGR) for frame in u8]
        animation.durations = [max(1, round(1000 / float(fps)))] * len(u8)
        params = [cv2.IMWRITE_WEBP_QUALITY, 101 if quality == 100 else max(1, quality)] if fmt == "webp" else []
        if not cv2.imwriteanimation(str(tmp), animation, params):
            raise RuntimeError(f"OpenCV could not write {fmt}; install PyAV (pip install av)")
        return
    if meta:
        warnings.warn(f"metadata is not stored in {fmt} without PyAV (pip install av)", stacklevel=3)
    u8 = _pad_to_even(u8)
    fourcc = cv2.VideoWriter_fourcc(*("mp4v" if fmt == "mp4" else "VP90"))
    writer = cv2.VideoWriter(str(tmp), fourcc, float(fps), (u8.shape[2], u8.shape[1]))
    if not writer.isOpened():
        raise RuntimeError(f"OpenCV could not open a {fmt} writer; install PyAV (pip install av)")
    try:
        for frame in u8:
            writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    finally:
        writer.release()


def _write_webp(u8: np.ndarray, tmp: Path, fps: Fraction, quality: int, loop: int) -> None:
    """Animated WebP with one ANMF chunk per input frame, each frame a still encoded by libwebp (OpenCV).

    libwebp's animation encoder (behind FFmpeg and PIL) merges identical consecutive frames into one
    longer frame, which changes the frame count; muxing the frames ourselves keeps every frame. Delays are
    whole milliseconds taken from rounded timestamps, so the average rate stays exact."""
    height, width = u8.shape[1:3]
    if width > 16383 or height > 16383:
        raise RuntimeError(f"webp encoding failed for {len(u8)} frames of {width}x{height} (WxH): "
                           "WebP frames are at most 16383x16383")
    params = [cv2.IMWRITE_WEBP_QUALITY, 101 if quality == 100 else max(1, quality)]
    ms = Fraction(1000) / fps
    header = struct.pack("<B3x", 0x02) + (width - 1).to_bytes(3, "little") + (height - 1).to_bytes(3, "little")
    with open(tmp, "wb") as f:
        f.write(b"RIFF\0\0\0\0WEBP")
        f.write(_riff_chunk(b"VP8X", header))
        f.write(_riff_chunk(b"ANIM", struct.pack("<IH", 0, min(loop, 0xFFFF))))
        for index, frame in enumerate(u8):
            ok, encoded = cv2.imencode(".webp", cv2.cvtColor(frame, cv2.COLOR_RGB2BGR), params)
            if not ok:
                raise RuntimeError(f"webp encoding failed for frame {index} ({width}x{height}) in OpenCV")
            image = b"".join(_riff_chunk(kind, data) for kind, data in _riff_chunks(encoded.tobytes())
                             if kind in (b"ALPH", b"VP8 ", b"VP8L"))
            duration = round((index + 1) * ms) - round(index * ms)
            if not 0 < duration < 1 << 24:
                raise ValueError(f"fps {float(fps):g} gives a webp frame delay of {duration} ms; expected 1..16777215")
            frame_header = bytes(6) + (width - 1).to_bytes(3, "little") + (height - 1).to_bytes(3, "little") \
                + duration.to_bytes(3, "little") + b"\x02"   # no blending, no disposal
            f.write(_riff_chunk(b"ANMF", frame_header + image))
        size = f.tell() - 8
        if size >= 1 << 32:
            raise ValueError("webp files are limited to 4 GiB; write fewer or smaller frames")
        f.seek(4)
        f.write(struct.pack("<I", size))


def _riff_chunk(kind: bytes, data: bytes) -> bytes:
    return kind + struct.pack("<I", len(data)) + data + (b"\0" if len(data) & 1 else b"")


def _write_png_folder(u8: np.ndarray, folder: Path, fps: Fraction, meta: dict) -> None:
    digits = max(5, len(str(len(u8) - 1)))
    first_frame_text = {FPS_KEY: str(float(fps)), **meta}
    for index, frame in enumerate(u8):
        data = _encode_png(frame, first_frame_text if index == 0 else {})
        (folder / f"frame_{index:0{digits}d}.png").write_bytes(data)


# ---------------------------------------------------------------------------------------------
# PNG bytes (text chunks spliced in after IHDR)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _png_text_chunk(key: str, value: str) -> bytes:
    try:
        return _png_chunk(b"tEXt", key.encode("latin-1") + b"\0" + value.encode("latin-1"))
    except UnicodeEncodeError:  # iTXt: uncompressed UTF-8, no language tag
        return _png_chunk(b"iTXt", key.encode("utf-8") + b"\0\0\0\0\0" + value.encode("utf-8"))


def _encode_png(rgb: np.ndarray, text: dict[str, str]) -> bytes:
    if cv2 is not None:
        ok, buffer = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_PNG_COMPRESSION, 4])
        if not ok:
            raise RuntimeError("OpenCV failed to encode a PNG frame")
        png = buffer.tobytes()
    else:  # plain zlib PNG: filter type 0 on every row
        height, width = rgb.shape[:2]
        raw = np.concatenate([np.zeros((height, 1), np.uint8), rgb.reshape(height, width * 3)], axis=1)
        ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
        png = (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr)
               + _png_chunk(b"IDAT", zlib.compress(raw.tobytes(), 6)) + _png_chunk(b"IEND", b""))
    end_of_ihdr = 8 + 8 + 13 + 4
    return png[:end_of_ihdr] + b"".join(_png_text_chunk(k, v) for k, v in text.items()) + png[end_of_ihdr:]


def _png_text(data: bytes) -> dict[str, str]:
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError("not a PNG file")
    text, pos = {}, 8
    while pos + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        pos += 12 + length
        if kind == b"tEXt":
            key, _, value = body.partition(b"\0")
            text[key.decode("latin-1")] = value.decode("latin-1")
        elif kind == b"zTXt":
            key, _, rest = body.partition(b"\0")
            text[key.decode("latin-1")] = zlib.decompress(rest[1:]).decode("latin-1")
        elif kind == b"iTXt":
            key, _, rest = body.partition(b"\0")
            compressed, rest = rest[0], rest[2:]
            _language, _, rest = rest.partition(b"\0")
            _translated, _, value = rest.partition(b"\0")
            text[key.decode("utf-8")] = (zlib.decompress(value) if compressed else value).decode("utf-8")
        elif kind in (b"IDAT", b"IEND"):
            break
    return text


# ---------------------------------------------------------------------------------------------
# GIF comment extension


def _gif_blocks_end(data: bytes, pos: int) -> int:
    """Position after a chain of GIF data sub-blocks starting at ``pos``."""
    while data[pos]:
        pos += data[pos] + 1
    return pos + 1


def _gif_add_comment(data: bytes, comment: str) -> bytes:
    if not data.endswith(b";"):
        raise ValueError("GIF has no trailer; cannot add a comment")
    payload = comment.encode("utf-8")
    blocks = b"".join(bytes([len(part)]) + part for part in (payload[i:i + 255] for i in range(0, len(payload), 255)))
    return data[:-1] + b"\x21\xfe" + blocks + b"\x00;"


def _gif_comments(data: bytes) -> list[str]:
    if data[:6] not in (b"GIF87a", b"GIF89a"):
        raise ValueError("not a GIF file")
    flags = data[10]
    pos = 13 + (3 * 2 ** ((flags & 7) + 1) if flags & 0x80 else 0)
    comments = []
    while pos < len(data) and data[pos] != 0x3B:
        if data[pos] == 0x21:  # extension: label, sub-blocks
            label, start = data[pos + 1], pos + 2
            pos = _gif_blocks_end(data, start)
            if label == 0xFE:
                chunks, p = [], start
                while data[p]:
                    chunks.append(data[p + 1:p + 1 + data[p]])
                    p += data[p] + 1
                comments.append(b"".join(chunks).decode("utf-8", errors="replace"))
        elif data[pos] == 0x2C:  # image: descriptor, optional local table, LZW size, sub-blocks
            local = data[pos + 9]
            pos += 10 + (3 * 2 ** ((local & 7) + 1) if local & 0x80 else 0)
            pos = _gif_blocks_end(data, pos + 1)
        else:
            break
    return comments


# ---------------------------------------------------------------------------------------------
# WebP EXIF chunk (TIFF IFD0 of ASCII tags "key:value")

_EXIF_PROMPT_TAG = 0x0110  # ComfyUI puts "prompt:<json>" here and other keys at 0x010F, 0x010E, ...


def _exif_from_metadata(meta: dict[str, str]) -> bytes:
    entries, next_tag = {}, 0x010F
    for key, value in meta.items():
        if key == "prompt":
            tag = _EXIF_PROMPT_TAG
        else:
            tag, next_tag = next_tag, next_tag - 1
        entries[tag] = f"{key}:{value}".encode("utf-8") + b"\0"
    ifd_size = 2 + 12 * len(entries) + 4
    offset = 8 + ifd_size
    table, heap = [], b""
    for tag in sorted(entries):
        value = entries[tag]
        if len(value) <= 4:
            table.append(struct.pack("<HHI4s", tag, 2, len(value), value.ljust(4, b"\0")))
        else:
            table.append(struct.pack("<HHII", tag, 2, len(value), offset + len(heap)))
            heap += value + (b"\0" if len(value) % 2 else b"")
    return b"II*\0" + struct.pack("<I", 8) + struct.pack("<H", len(entries)) + b"".join(table) + b"\0\0\0\0" + heap


def _metadata_from_exif(tiff: bytes) -> dict[str, str]:
    if tiff.startswith(b"Exif\0\0"):
        tiff = tiff[6:]
    order = {b"II": "<", b"MM": ">"}.get(tiff[:2])
    if order is None:
        return {}
    (ifd,) = struct.unpack(order + "I", tiff[4:8])
    (count,) = struct.unpack(order + "H", tiff[ifd:ifd + 2])
    meta = {}
    for i in range(count):
        tag, kind, n, raw = struct.unpack(order + "HHI4s", tiff[ifd + 2 + 12 * i: ifd + 14 + 12 * i])
        if kind != 2:
            continue
        value = raw[:n] if n <= 4 else tiff[struct.unpack(order + "I", raw)[0]:][:n]
        text = value.rstrip(b"\0").decode("utf-8", errors="replace")
        key, sep, rest = text.partition(":")
        if sep and key:
            meta[key] = rest
    return meta


def _riff_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    if data[:4] != b"RIFF" or data[8:12] != b"WEBP":
        raise ValueError("not a WebP file")
    chunks, pos = [], 12
    while pos + 8 <= len(data):
        kind, size = data[pos:pos + 4], struct.unpack("<I", data[pos + 4:pos + 8])[0]
        chunks.append((kind, data[pos + 8:pos + 8 + size]))
        pos += 8 + size + (size & 1)
    return chunks


def _webp_add_exif(data: bytes, exif: bytes, width: int, height: int) -> bytes:
    chunks = [c for c in _riff_chunks(data) if c[0] != b"EXIF"]
    if chunks[0][0] != b"VP8X":  # simple file: wrap in an extended header
        vp8x = struct.pack("<B3x", 0) + (width - 1).to_bytes(3, "little") + (height - 1).to_bytes(3, "little")
        chunks.insert(0, (b"VP8X", vp8x))
    header = bytearray(chunks[0][1])
    header[0] |= 0x08  # EXIF present
    chunks[0] = (b"VP8X", bytes(header))
    chunks.append((b"EXIF", exif))
    body = b"".join(kind + struct.pack("<I", len(c)) + c + (b"\0" if len(c) & 1 else b"") for kind, c in chunks)
    return b"RIFF" + struct.pack("<I", 4 + len(body)) + b"WEBP" + body


# ---------------------------------------------------------------------------------------------
# reading


def read_video(
    path: str | os.PathLike,
    max_frames: int | None = None,
    skip_first: int = 0,
    every_nth: int = 1,
    size: tuple[int, int] | None = None,
) -> tuple[torch.Tensor, float]:
    """Read frames as float32 [F, H, W, 3] in 0..1 and the frame rate.

    Selection: drop ``skip_first`` frames, keep every ``every_nth`` of the rest, stop after
    ``max_frames``; i.e. source indices ``skip_first + k * every_nth``. ``size=(height, width)``
    resizes every frame. Decoding streams: only the selected frames are kept (as uint8), and the
    float output is allocated once, so peak memory stays near 1.25x the returned tensor.
    ``path`` may be a video file (mp4/webm/mkv/mov/avi/gif/webp) or a folder of numbered PNG/JPG frames.
    """
    path = Path(path)
    _check_int("max_frames", max_frames, 1, allow_none=True)
    _check_int("skip_first", skip_first, 0)
    _check_int("every_nth", every_nth, 1)
    if size is not None:
        if len(size) != 2 or any(isinstance(s, bool) or not isinstance(s, (int, np.integer)) or s < 1 for s in size):
            raise ValueError(f"size must be (height, width) with positive integers or None, got {size!r}")
        size = (int(size[0]), int(size[1]))
    if not path.exists():
        raise FileNotFoundError(f"video path {str(path)!r} does not exist")
    selector = _Selector(max_frames, skip_first, every_nth)
    suffix = path.suffix.lower()
    if path.is_dir():
        kept, fps, total = _read_image_folder(path, selector, size)
    elif suffix == ".webp":
        kept, fps, total = _read_webp(path, selector, size)
    elif suffix in _READ_VIDEO_SUFFIXES:
        reader = _read_with_av if av is not None else _read_with_cv2
        kept, fps, total = reader(path, selector, size)
    else:
        raise ValueError(
            f"path {str(path)!r}: unsupported suffix {suffix!r}; expected one of "
            f"{sorted(_READ_VIDEO_SUFFIXES | {'.webp'})} or a folder of numbered PNG/JPG frames"
        )
    if total == 0:
        raise ValueError(f"{str(path)!r} contains no frames")
    if not kept:
        raise ValueError(
            f"{str(path)!r} has {total} frames; skip_first={skip_first}, every_nth={every_nth} select none of them"
        )
    return _stack_to_float(kept, path), fps


class _Selector:
    """Which source indices to keep, and when decoding can stop."""

    def __init__(self, max_frames: int | None, skip_first: int, every_nth: int):
        self.max_frames, self.skip_first, self.every_nth = max_frames, skip_first, every_nth
        self.kept = 0

    def wants(self, index: int) -> bool:
        return index >= self.skip_first and (index - self.skip_first) % self.every_nth == 0

    def take(self) -> None:
        self.kept += 1

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
    try:
        return _decode_with_av(path, selector, size)
    except av.FFmpegError as error:   # e.g. av.EOFError on a truncated file: not a ValueError/OSError
        raise ValueError(f"{str(path)!r}: cannot decode the video ({error})") from None


def _decode_with_av(path: Path, selector: _Selector, size) -> tuple[list, float, int]:
    kept, index = [], 0
    with av.open(str(path)) as container:
        if not container.streams.video:
            raise ValueError(f"{str(path)!r} has no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        fps = _stream_fps(stream, container)
        for frame in container.decode(stream):
            if selector.wants(index):
                kept.append(_resize(frame.to_ndarray(format="rgb24"), size))
                selector.take()
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
    with av.open(path) as container:
        stream = container.streams.video[0]
        durations = [packet.duration for packet in container.demux(stream) if packet.size and packet.duration]
    total = sum(durations) * stream.time_base if durations and stream.time_base else 0
    return float(len(durations) / total) if total else None


def _read_with_cv2(path: Path, selector: _Selector, size) -> tuple[list, float, int]:
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
                kept.append(_resize(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), size))
                selector.take()
            index += 1
    finally:
        capture.release()
    return kept, fps, index


_WEBP_CHUNK_FRAMES = 64  # animated WebP frames decoded per OpenCV call


def _read_webp(path: Path, selector: _Selector, size) -> tuple[list, float, int]:
    """Animated WebP via OpenCV (FFmpeg cannot decode it), a chunk of frames per call."""
    if cv2 is None or not hasattr(cv2, "imreadanimation"):
        if av is None:
            raise RuntimeError("reading webp needs OpenCV >= 4.11 or PyAV")
        return _read_with_av(path, selector, size)  # still images only
    kept, index, durations = [], 0, []
    while not selector.done:
        chunk = _WEBP_CHUNK_FRAMES
        count = chunk if selector.last_index is None else min(chunk, selector.last_index - index + 1)
        ok, animation = cv2.imreadanimation(str(path), index, count)
        if not ok or not animation.frames:
            break
        durations.extend(int(d) for d in animation.durations)
        for bgr in animation.frames:
            if selector.wants(index):
                kept.append(_resize(cv2.cvtColor(bgr, cv2.COLOR_BGRA2RGB if bgr.shape[-1] == 4 else cv2.COLOR_BGR2RGB), size))
                selector.take()
            index += 1
        if len(animation.frames) < count:
            break
    positive = [d for d in durations if d > 0]
    fps = 1000.0 * len(positive) / sum(positive) if positive else DEFAULT_FOLDER_FPS  # delays may alternate (167, 166, ...)
    return kept, fps, index


def _numbered_frames(folder: Path) -> list[Path]:
    files = [p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in _IMAGE_SUFFIXES]
    natural = lambda p: [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", p.name)]
    return sorted(files, key=natural)


def _read_image(file: Path) -> np.ndarray:
    if cv2 is not None:
        bgr = cv2.imdecode(np.fromfile(file, dtype=np.uint8), cv2.IMREAD_COLOR)
        if bgr is None:
            raise ValueError(f"could not decode image {str(file)!r}")
        return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    with av.open(str(file)) as container:
        return next(container.decode(video=0)).to_ndarray(format="rgb24")


def _read_image_folder(folder: Path, selector: _Selector, size) -> tuple[list, float, int]:
    files = _numbered_frames(folder)
    fps = DEFAULT_FOLDER_FPS
    if files and files[0].suffix.lower() == ".png":
        fps = float(_png_text(files[0].read_bytes()).get(FPS_KEY, fps))
    kept = []
    for index, file in enumerate(files):
        if selector.done:
            break
        if selector.wants(index):
            kept.append(_resize(_read_image(file), size))
            selector.take()
    return kept, fps, len(files)


# ---------------------------------------------------------------------------------------------
# probing (no frame decoding)


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
        fps = DEFAULT_FOLDER_FPS
        if files[0].suffix.lower() == ".png":
            fps = float(_png_text(files[0].read_bytes()).get(FPS_KEY, fps))
        return {"frames": len(files), "height": height, "width": width, "fps": fps}
    if path.suffix.lower() == ".webp":
        return _probe_webp(path)
    if av is None:
        return {"frames": None, "height": 0, "width": 0, "fps": DEFAULT_FOLDER_FPS}
    with av.open(str(path)) as container:
        if not container.streams.video:
            raise ValueError(f"{str(path)!r} has no video stream")
        stream = container.streams.video[0]
        height, width = stream.codec_context.height, stream.codec_context.width
        fps = _stream_fps(stream, container)
        frames = stream.frames or None
        if frames is None and container.format.name == "gif":
            frames = sum(1 for packet in container.demux(stream) if packet.size)
        elif frames is None and container.duration:
            frames = math.ceil(container.duration / 1_000_000 * fps)
    return {"frames": frames, "height": height, "width": width, "fps": fps}


def _probe_webp(path: Path) -> dict:
    """Frame count (ANMF chunks), canvas size and median frame rate from the RIFF chunk headers."""
    frames, width, height, durations = 0, 0, 0, []
    with open(path, "rb") as f:
        head = f.read(12)
        if head[:4] != b"RIFF" or head[8:12] != b"WEBP":
            raise ValueError(f"{str(path)!r} is not a WebP file")
        while True:
            header = f.read(8)
            if len(header) < 8:
                break
            kind, size = header[:4], struct.unpack("<I", header[4:])[0]
            if kind == b"VP8X":
                data = f.read(size)
                width = int.from_bytes(data[4:7], "little") + 1
                height = int.from_bytes(data[7:10], "little") + 1
                f.seek(size & 1, os.SEEK_CUR)
                continue
            if kind == b"ANMF":
                data = f.read(16)
                frames += 1
                durations.append(int.from_bytes(data[12:15], "little"))
                f.seek(size - 16 + (size & 1), os.SEEK_CUR)
                continue
            if kind in (b"VP8 ", b"VP8L") and frames == 0:
                frames = 1
            f.seek(size + (size & 1), os.SEEK_CUR)
    positive = [d for d in durations if d > 0]
    fps = 1000.0 * len(positive) / sum(positive) if positive else DEFAULT_FOLDER_FPS  # delays may alternate (167, 166, ...)
    if not width and cv2 is not None:
        still = cv2.imread(str(path))
        if still is not None:
            height, width = still.shape[:2]
    return {"frames": frames, "height": height, "width": width, "fps": fps}


# ---------------------------------------------------------------------------------------------
# metadata


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    """Return the str -> str tags that write_video embedded (muxer-added tags left out).
    A corrupt file raises ValueError naming it."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"path {str(path)!r} does not exist")
    corrupt = (IndexError, struct.error, zlib.error, UnicodeDecodeError) + ((av.FFmpegError,) if av is not None else ())
    try:
        return _read_metadata(path)
    except corrupt as error:   # the chunk walkers index past the end of truncated/corrupt files
        raise ValueError(f"{str(path)!r}: corrupt file, cannot read its metadata ({type(error).__name__}: "
                         f"{error})") from None


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
        if av is None:
            warnings.warn("reading container tags needs PyAV (pip install av)", stacklevel=2)
            return {}
        with av.open(str(path)) as container:
            tags = dict(container.metadata)
            lower_case = container.format.name.startswith("matroska")
        return {(k.lower() if lower_case else k): v for k, v in tags.items() if k.lower() not in _AUTOMATIC_TAGS}
    raise ValueError(f"path {str(path)!r}: unsupported suffix {suffix!r} for metadata")
