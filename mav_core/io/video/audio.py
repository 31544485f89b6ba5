"""Sound tracks: reading a video file's audio, and muxing audio into mp4 (AAC) and webm (Opus) files.

Audio travels as the host's AUDIO convention, a plain dict ``{"waveform": float32 tensor [B, C, S] in
-1..1, "sample_rate": int}`` (B = 1 here); a file without sound gives None, as the host's own video
components do. Writing fits the track to the video: trimmed, or padded with silence, to frames / fps
seconds, so a clip whose frame rate changed (↑F doubles frames and fps) keeps its sound in step.
"""
from __future__ import annotations

import math
import numbers
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch

from . import backends

AUDIO_CODECS = {"mp4": "aac", "webm": "libopus"}
AUDIO_BIT_RATES = {"mp4": 192_000, "webm": 128_000}
AUDIO_FORMATS = tuple(AUDIO_CODECS)
# rates each encoder takes; any other rate is resampled to 48 kHz
_ENCODER_RATES = {
    "mp4": (96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025, 8000),
    "webm": (48000, 24000, 16000, 12000, 8000),
}
_LAYOUTS = {1: "mono", 2: "stereo", 3: "2.1", 4: "quad", 5: "5.0", 6: "5.1", 7: "6.1", 8: "7.1"}
_CHUNK = 4096  # samples handed to the encoder at a time
MAX_SAMPLE_RATE = 768_000


def check_audio(audio, name: str = "audio") -> tuple[np.ndarray, int] | None:
    """The AUDIO dict as (samples float32 [C, S], sample rate), None for None; ValueError naming `name`
    for anything else (not a dict, a batch of several waveforms, 0 or more than 8 channels, NaN, a bad rate)."""
    if audio is None:
        return None
    if not isinstance(audio, dict) or "waveform" not in audio or "sample_rate" not in audio:
        raise ValueError(f"{name}: expected the AUDIO dict {{'waveform': [batch, channels, samples], "
                         f"'sample_rate': int}}, got {type(audio).__name__}")
    waveform, rate = audio["waveform"], audio["sample_rate"]
    if isinstance(rate, bool) or not isinstance(rate, numbers.Integral) or not 1 <= rate <= MAX_SAMPLE_RATE:
        raise ValueError(f"{name}: sample_rate must be an integer in 1..{MAX_SAMPLE_RATE}, got {rate!r}")
    if not isinstance(waveform, torch.Tensor) or waveform.ndim != 3:
        shape = tuple(waveform.shape) if isinstance(waveform, torch.Tensor) else type(waveform).__name__
        raise ValueError(f"{name}: waveform must be a tensor [batch, channels, samples], got {shape}")
    if waveform.shape[0] != 1:
        raise ValueError(f"{name}: a video takes one sound track; the waveform holds a batch of {waveform.shape[0]}")
    if not 1 <= waveform.shape[1] <= len(_LAYOUTS):
        raise ValueError(f"{name}: expected 1..{len(_LAYOUTS)} channels, got {waveform.shape[1]}")
    samples = waveform[0].detach().to(device="cpu", dtype=torch.float32)
    if not bool(torch.isfinite(samples).all()):
        raise ValueError(f"{name}: waveform contains NaN or infinite values")
    return samples.numpy(), int(rate)


def fit_to_duration(samples: np.ndarray, rate: int, seconds: float) -> np.ndarray:
    """[C, S] trimmed, or padded with silence, to round(seconds * rate) samples."""
    length = round(seconds * rate)
    if samples.shape[1] >= length:
        return samples[:, :length]
    return np.pad(samples, ((0, 0), (0, length - samples.shape[1])))


# ---------------------------------------------------------------------------------------------
# reading


def read_audio(path, start: float = 0.0, duration: float | None = None, max_bytes: int | None = None) -> dict | None:
    """The first audio stream of a video file as an AUDIO dict (None when it has none, or for frame
    folders, gif and webp). ``start`` / ``duration`` (seconds, on the video's clock) cut a window, as for
    frames selected by read_video: samples before the video starts are dropped, a late start is
    padded with silence. Decoding stops after the window. ``max_bytes`` bounds the decoded samples:
    a MemoryError naming the file as soon as they would exceed it."""
    path = Path(path)
    if not 0 <= start < math.inf or (duration is not None and not 0 <= duration < math.inf):
        raise ValueError(f"start and duration must be finite seconds >= 0, got {start!r}, {duration!r}")
    if path.is_dir() or path.suffix.lower() in (".gif", ".webp", ".png", ".jpg", ".jpeg") or backends.av is None:
        return None
    with backends.naming_the_file(path, "not a readable audio track"):
        return _decode(path, start, duration, max_bytes)


def _decode(path: Path, start: float, duration: float | None, max_bytes: int | None) -> dict | None:
    av = backends.av
    with av.open(str(path)) as container:
        if not container.streams.audio:
            return None
        stream = container.streams.audio[0]
        if stream.codec_context is None:
            return None
        video_start = _stream_start(container.streams.video[0]) if container.streams.video else 0.0
        chunks, rate, skip, end, decoded = [], None, 0, None, 0
        resampler = None
        for frame in container.decode(stream):
            if resampler is None:
                rate = frame.sample_rate
                channels = len(frame.layout.channels)
                resampler = av.AudioResampler(format="fltp", layout=_LAYOUTS.get(channels, "stereo"), rate=rate)
                first_time = (frame.time if frame.time is not None else 0.0) - video_start
                skip = round((start - first_time) * rate)   # negative: the sound starts after `start`
                if skip < 0:   # silence until the sound starts
                    chunks.append(np.zeros((channels if channels in _LAYOUTS else 2, -skip), np.float32))
                    decoded, skip = -skip, 0
                end = None if duration is None else round(duration * rate)
            for out in resampler.resample(frame):
                chunk = out.to_ndarray().astype(np.float32, copy=False)
                if skip:   # samples before the window are dropped as they come
                    cut = min(skip, chunk.shape[1])
                    chunk, skip = chunk[:, cut:], skip - cut
                chunks.append(chunk)
                decoded += chunk.shape[1]
            if max_bytes is not None and decoded * channels * 4 * 2 > max_bytes:   # the chunks + their join
                raise MemoryError(f"{str(path)!r}: its sound needs more than the {max_bytes / 2**30:.2f} GiB allowed "
                                  f"({decoded} samples x {channels} channels decoded so far)")
            if end is not None and decoded >= end:
                break
        if resampler is None:
            return None
    samples = np.concatenate(chunks, axis=1) if chunks else np.zeros((1, 0), np.float32)
    if end is not None:
        samples = samples[:, :end]
    return {"waveform": torch.from_numpy(np.ascontiguousarray(samples))[None], "sample_rate": int(rate)}


def _stream_start(stream) -> float:
    if stream.start_time is None or stream.time_base is None:
        return 0.0
    return float(stream.start_time * stream.time_base)


# ---------------------------------------------------------------------------------------------
# writing (called by write.py inside its PyAV container)


class AudioMuxer:
    """One audio stream of an open PyAV output container, fed in step with the video frames.

    The track is fitted to ``frames / fps`` seconds first (see fit_to_duration); more than two channels
    are mixed down to stereo (FFmpeg's matrix); rates the encoder lacks are resampled to 48 kHz."""

    def __init__(self, container, fmt: str, audio: tuple[np.ndarray, int], frames: int, fps: Fraction):
        av = backends.av
        samples, rate = audio
        self.samples = fit_to_duration(samples, rate, frames / fps)
        self.rate, self.fps, self.sent = rate, fps, 0
        out_rate = rate if rate in _ENCODER_RATES[fmt] else 48000
        layout = "mono" if samples.shape[0] == 1 else "stereo"
        self.in_layout = _LAYOUTS[samples.shape[0]]
        self.stream = container.add_stream(AUDIO_CODECS[fmt], rate=out_rate, layout=layout)
        self.stream.bit_rate = AUDIO_BIT_RATES[fmt] // (2 if layout == "mono" else 1)
        self.resampler = av.AudioResampler(format=self.stream.format.name, layout=layout, rate=out_rate)
        self.container, self.out_rate, self.out_pts = container, out_rate, 0

    def until_frame(self, frames_done: int) -> None:
        """Encode the sound up to the end of video frame ``frames_done - 1`` (keeps the file interleaved)."""
        self._send(min(self.samples.shape[1], round(frames_done / self.fps * self.rate)))

    def close(self) -> None:
        self._send(self.samples.shape[1])
        for out in self.resampler.resample(None):
            self._encode(out)
        self._encode(None)

    def _send(self, upto: int) -> None:
        while self.sent < upto:
            stop = min(upto, self.sent + _CHUNK)
            chunk = np.ascontiguousarray(self.samples[:, self.sent:stop])
            frame = backends.av.AudioFrame.from_ndarray(chunk, format="fltp", layout=self.in_layout)
            frame.sample_rate, frame.pts, frame.time_base = self.rate, self.sent, Fraction(1, self.rate)
            self.sent = stop
            for out in self.resampler.resample(frame):
                self._encode(out)

    def _encode(self, frame) -> None:
        if frame is not None:   # timestamps count output samples from 0: the sound starts with the video
            frame.pts, frame.time_base = self.out_pts, Fraction(1, self.out_rate)
            self.out_pts += frame.samples
        for packet in self.stream.encode(frame):
            self.container.mux(packet)
