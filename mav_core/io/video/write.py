"""Writing frames to mp4 (H.264), webm (VP9), gif, animated webp or a folder of numbered PNG frames.

PyAV does the encoding; OpenCV stands in where PyAV is absent (mp4/webm) and encodes animated webp frame by
frame. Every write goes through an atomic target (see atomic.py). Metadata: mp4 container tags
(``movflags=use_metadata_tags``, keys kept as given); webm Matroska tags; png/webp/gif as in containers.py.
"""
from __future__ import annotations

import json
import os
import struct
import warnings
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from . import backends
from .atomic import _temp_file_for, _temp_folder_for
from .audio import AUDIO_FORMATS, AudioMuxer, check_audio
from .containers import _encode_png, _exif_from_metadata, _gif_add_comment, _riff_chunk, _riff_chunks, _webp_add_exif
from .formats import (_BT709, _GIF_TIME_BASE, _LIMITED_RANGE, FPS_KEY, _av_settings, _check_int, _check_metadata,
                      check_fps_for_format, _resolve_write_format)


@dataclass(frozen=True)
class VideoSettings:
    """How write_video_with_audio encodes: the keyword arguments of write_video (see there)."""
    format: str | None = None
    quality: int = 85
    loop: int = 0
    pingpong: bool = False
    metadata: dict[str, str] | None = None


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
    metadata: str -> str tags embedded in the file (see the package docstring).
    """
    return write_video_with_audio(frames, path, fps, None, VideoSettings(format, quality, loop, pingpong, metadata))


def write_video_with_audio(frames: torch.Tensor, path: str | os.PathLike, fps: float, audio: dict | None,
                           settings: VideoSettings = VideoSettings()) -> Path:
    """write_video with a sound track: ``audio`` is an AUDIO dict ({"waveform": [1, C, S], "sample_rate"})
    or None. mp4 gets AAC, webm Opus, trimmed or padded with silence to the video's frames / fps seconds
    (see audio.py); gif, webp and PNG folders cannot hold sound and refuse it (ValueError naming audio)."""
    path = Path(path)
    fmt = _resolve_write_format(path, settings.format)
    fps_q = check_fps_for_format(fps, fmt)
    quality, loop = settings.quality, settings.loop
    _check_int("quality", quality, 0)
    if quality > 100:
        raise ValueError(f"quality must be in 0..100, got {quality!r}")
    _check_int("loop", loop, 0)
    meta = _check_metadata(settings.metadata)
    sound = check_audio(audio)
    if sound is not None and fmt not in AUDIO_FORMATS:
        raise ValueError(f"audio: {fmt} cannot hold sound; write {' or '.join(AUDIO_FORMATS)}, or pass no audio")
    if sound is not None and backends.av is None:
        raise RuntimeError("writing sound needs PyAV (pip install av)")
    u8 = _frames_to_uint8(frames, settings.pingpong)

    if fmt == "png":
        with _temp_folder_for(path) as tmp_dir:
            _write_png_folder(u8, tmp_dir, fps_q, meta)
        return path
    with _temp_file_for(path) as tmp:
        if fmt == "webp" and backends.cv2 is not None:
            _write_webp(u8, tmp, fps_q, quality, loop)
        elif backends.av is not None:
            try:
                _write_with_av(u8, tmp, fmt, fps_q, quality, loop, meta, sound)
            except backends.av.FFmpegError as error:
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


def _pad_to_even(u8: np.ndarray) -> np.ndarray:
    pad_h, pad_w = u8.shape[1] % 2, u8.shape[2] % 2
    if pad_h or pad_w:
        u8 = np.pad(u8, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")
    return u8


def _write_with_av(u8: np.ndarray, tmp: Path, fmt: str, fps: Fraction, quality: int, loop: int, meta: dict,
                   sound: tuple[np.ndarray, int] | None = None) -> None:
    if fmt in ("mp4", "webm"):
        u8 = _pad_to_even(u8)
    height, width = u8.shape[1:3]
    codec, pix_fmt, options, container_options = _av_settings(fmt, quality, loop)
    with backends.av.open(str(tmp), mode="w", format=fmt, options=container_options) as container:
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
            frames_out = (backends.av.VideoFrame.from_ndarray(frame, format="rgb24") for frame in u8)
        muxer = AudioMuxer(container, fmt, sound, len(u8), fps) if sound is not None else None
        for index, frame in enumerate(frames_out):
            if fmt == "gif":  # delays are whole centiseconds: round the timestamps, not each delay (12, 13, 12, ...)
                frame.pts, frame.time_base = _gif_pts(index, fps), _GIF_TIME_BASE
            else:
                frame.pts = index
            for packet in stream.encode(frame):
                _mux(container, packet, fmt, fps)
            if muxer is not None:
                muxer.until_frame(index + 1)
        for packet in stream.encode():
            _mux(container, packet, fmt, fps)
        if muxer is not None:
            muxer.close()


def _gif_pts(index: int, fps: Fraction) -> int:
    return round(index / (fps * _GIF_TIME_BASE))


def _mux(container, packet, fmt: str, fps: Fraction) -> None:
    if fmt == "gif" and packet.pts is not None:  # the muxer would give the last frame the rounded-up delay
        index = round(packet.pts * _GIF_TIME_BASE * fps)
        packet.duration = max(1, _gif_pts(index + 1, fps) - packet.pts)
    container.mux(packet)


def _to_bt709_yuv(rgb: np.ndarray):
    """RGB -> limited-range BT.709 yuv420p, the matrix players assume for untagged HD video."""
    frame = backends.av.VideoFrame.from_ndarray(rgb, format="rgb24")
    return frame.reformat(format="yuv420p", dst_colorspace="ITU709", dst_color_range="MPEG",
                          dst_color_primaries=_BT709, dst_color_trc=_BT709)


def _gif_palette_frames(u8: np.ndarray, fps: Fraction) -> Iterator:
    """Quantise to one 256-colour palette for the whole clip (FFmpeg palettegen + paletteuse)."""
    av = backends.av
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
    cv2 = backends.cv2
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
    cv2 = backends.cv2
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


def _write_png_folder(u8: np.ndarray, folder: Path, fps: Fraction, meta: dict) -> None:
    digits = max(5, len(str(len(u8) - 1)))
    first_frame_text = {FPS_KEY: str(float(fps)), **meta}
    for index, frame in enumerate(u8):
        data = _encode_png(frame, first_frame_text if index == 0 else {})
        (folder / f"frame_{index:0{digits}d}.png").write_bytes(data)
