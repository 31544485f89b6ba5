"""Sound through the video files: a clip with a 440 Hz tone (made here with PyAV) is read, passes through the
shipped ↑F ×2 and is written again; the written file's sound holds the tone at 440 Hz ± 1 Hz and lasts the
video's duration ± one frame. The same chain through the nodes (Load Video → Frame Interpolator → Video Save,
stand-in folders), the fitting of a track to the video (trim / silence), the window Load Video cuts for its
selected frames, and the errors that name `audio`. tests/host/test_audio_host.py runs the chain in ComfyUI."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from mav_core.inference import InterpolationOptions, SamplingOptions, frames_to_video, interpolate_video
from mav_core.io.loader import load_model
from mav_core.io.video import (VideoSettings, probe_video, read_audio, read_metadata, read_video, write_video,
                               write_video_with_audio)
from mav_core.models import family

av = pytest.importorskip("av")

TONE_HZ = 440.0
FRAMES, FPS, SIZE = 16, 4.0, 32
REGRESSION = family.WEIGHTS_DIR / family.REGRESSION_INTERPOLATOR_FILE


def STEP_HZ(t):
    """300 Hz until 2 s, then 600 Hz (as `hz(t)` with phase 2π·hz(t)·t continuous at 2 s)."""
    return np.where(t < 2.0, 300.0, 600.0 - 600.0 / np.maximum(t, 2.0))


# ---------------------------------------------------------------------------------------------
# helpers (also used by tests/host/test_audio_host.py)


def tone(seconds: float, rate: int, hz=TONE_HZ, channels: int = 2) -> np.ndarray:
    """A sine of `hz` (a number, or a function of time for a sweep) as float32 [channels, samples]."""
    t = np.arange(round(seconds * rate)) / rate
    phase = 2 * np.pi * (hz(t) * t if callable(hz) else hz * t)
    return np.repeat((0.5 * np.sin(phase))[None], channels, axis=0).astype(np.float32)


def moving_frames(count: int = FRAMES, size: int = SIZE) -> np.ndarray:
    """uint8 [count, size, size, 3]: a bright square sliding left to right over a ramp."""
    ramp = np.linspace(40, 160, size, dtype=np.float32)[None, :, None]
    frames = np.repeat(np.repeat(ramp, size, axis=0)[None], count, axis=0).repeat(3, axis=3)
    for i in range(count):
        x = round(i * (size - 8) / max(1, count - 1))
        frames[i, 12:20, x:x + 8] = (230, 200, 40)
    return frames.astype(np.uint8)


def write_tone_clip(path: Path, seconds_hz=TONE_HZ, rate: int = 44100, channels: int = 2,
                    frames: int = FRAMES, fps: float = FPS, audio_delay: float = 0.0) -> Path:
    """An H.264 + AAC mp4 (or VP9 + Opus webm) written with PyAV alone: frames at fps and a tone as long,
    starting `audio_delay` seconds after the first frame."""
    fmt = path.suffix.lstrip(".")
    sound = tone(frames / fps, rate, seconds_hz, channels)
    layout = "mono" if channels == 1 else "stereo"
    with av.open(str(path), "w", format=fmt) as container:
        video = container.add_stream("libx264" if fmt == "mp4" else "libvpx-vp9", rate=round(fps))
        video.width = video.height = SIZE
        video.pix_fmt = "yuv420p"
        audio = container.add_stream("aac" if fmt == "mp4" else "libopus", rate=rate, layout=layout)
        for i, rgb in enumerate(moving_frames(frames)):
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            frame.pts = i
            for packet in video.encode(frame):
                container.mux(packet)
        for start in range(0, sound.shape[1], 1024):
            chunk = np.ascontiguousarray(sound[:, start:start + 1024])
            frame = av.AudioFrame.from_ndarray(chunk, format="fltp", layout=layout)
            frame.sample_rate, frame.pts = rate, start + round(audio_delay * rate)
            for packet in audio.encode(frame):
                container.mux(packet)
        for stream in (audio, video):
            for packet in stream.encode():
                container.mux(packet)
    return path


def peak_hz(samples: np.ndarray, rate: int) -> float:
    """The strongest frequency of [C, S] (channel mean): Hann window, FFT zero-padded to 2^20 points,
    refined by a parabola through the peak bin and its neighbours."""
    mono = samples.mean(axis=0).astype(np.float64)
    n = 1 << 20
    spectrum = np.abs(np.fft.rfft(mono * np.hanning(len(mono)), n=n))
    k = int(np.argmax(spectrum[1:-1])) + 1
    a, b, c = np.log(spectrum[k - 1:k + 2] + 1e-30)
    return (k + 0.5 * (a - c) / (a - 2 * b + c)) * rate / n


def audio_seconds(audio: dict) -> float:
    return audio["waveform"].shape[-1] / audio["sample_rate"]


def rms(samples: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(samples, dtype=np.float64)))) if samples.size else 0.0


# ---------------------------------------------------------------------------------------------
# the round trip (acceptance): read, ↑F ×2, write; tone and duration of the written file


@pytest.fixture(scope="module")
def tone_clip(tmp_path_factory) -> Path:
    return write_tone_clip(tmp_path_factory.mktemp("tone") / "tone.mp4")


def test_a_tone_clip_reads_back_with_its_sound(tone_clip):
    frames, fps = read_video(tone_clip)
    audio = read_audio(tone_clip)
    assert frames.shape[0] == FRAMES and fps == pytest.approx(FPS)
    assert audio["waveform"].dtype == torch.float32 and audio["waveform"].shape[:2] == (1, 2)
    assert abs(audio_seconds(audio) - FRAMES / FPS) <= 1 / FPS
    assert abs(peak_hz(audio["waveform"][0].numpy(), audio["sample_rate"]) - TONE_HZ) <= 1.0


@pytest.mark.parametrize("fmt", ["mp4", "webm"])
def test_tone_survives_interpolation_x2_and_save(tone_clip, tmp_path, fmt):
    frames, fps = read_video(tone_clip)
    audio = read_audio(tone_clip)
    interpolator = load_model(REGRESSION, expect_stage="interpolator")
    with torch.no_grad():
        video = interpolate_video(interpolator, frames_to_video(frames), {}, None, fps, InterpolationOptions(2),
                                  SamplingOptions(seed=0, steps=1))
    out_frames = video[0].permute(1, 2, 3, 0).clamp(0, 1)          # [T, H, W, 3]
    out_fps = fps * 2                                               # the rate ↑F ×2 hands on
    assert out_frames.shape[0] == 2 * FRAMES - 1
    path = write_video_with_audio(out_frames, tmp_path / f"x2.{fmt}", out_fps, audio, VideoSettings(quality=90))

    back, back_fps = read_video(path)
    sound = read_audio(path)
    duration = back.shape[0] / back_fps
    assert back.shape[0] == 2 * FRAMES - 1 and back_fps == pytest.approx(out_fps)
    assert abs(audio_seconds(sound) - duration) <= 1 / back_fps, (audio_seconds(sound), duration)
    assert abs(peak_hz(sound["waveform"][0].numpy(), sound["sample_rate"]) - TONE_HZ) <= 1.0
    with av.open(str(path)) as container:           # one audio stream of the format's codec, beside the video
        codecs = sorted(s.codec_context.name for s in container.streams)
    assert codecs == sorted(["aac" if fmt == "mp4" else "opus", "h264" if fmt == "mp4" else "vp9"])


def test_tone_survives_the_nodes(pack, tone_clip, tmp_path, monkeypatch):
    """Load Video -> Frame Interpolator (its fps output) -> Video Save, the nodes' own code."""
    video_io = pack.video_io
    folders = {kind: tmp_path / kind for kind in ("output", "temp", "input")}
    for folder in folders.values():
        folder.mkdir()
    monkeypatch.setattr(video_io, "standin_dirs", folders)
    (folders["input"] / "tone.mp4").write_bytes(tone_clip.read_bytes())
    frames, fps, count, audio = video_io.LoadVideo().load("tone.mp4", 0, 0, 1, 0, 0)
    assert count == FRAMES and audio["sample_rate"] == 44100
    (interpolator,) = pack.loaders.InterpolatorLoader().load(f"mav-tiny/{family.REGRESSION_INTERPOLATOR_FILE}")
    frames2, fps2 = pack.interpolator.FrameInterpolator().run(interpolator, frames, fps, 2, "interpolate", 0, 1)
    out = video_io.VideoSave().save(frames2, fps2, "MakeAVideo/tone", "mp4", 85, 0, False, audio=audio)
    path = Path(out["result"][0])
    assert out["ui"]["videos"][0]["audio"] is True
    back, back_fps = read_video(path)
    sound = read_audio(path)
    assert back.shape[0] == 2 * FRAMES - 1 and back_fps == pytest.approx(2 * FPS)
    assert abs(audio_seconds(sound) - back.shape[0] / back_fps) <= 1 / back_fps
    assert abs(peak_hz(sound["waveform"][0].numpy(), sound["sample_rate"]) - TONE_HZ) <= 1.0


# ---------------------------------------------------------------------------------------------
# fitting the track to the video, rates and channels


def _audio(samples: np.ndarray, rate: int) -> dict:
    return {"waveform": torch.from_numpy(samples)[None], "sample_rate": rate}


@pytest.mark.parametrize("fmt", ["mp4", "webm"])
def test_short_sound_is_padded_with_silence_and_long_sound_trimmed(tmp_path, fmt):
    frames = torch.from_numpy(moving_frames(24)).float() / 255   # 3 s at 8 fps
    short = write_video_with_audio(frames, tmp_path / f"short.{fmt}", 8.0, _audio(tone(1.0, 48000), 48000))
    sound = read_audio(short)
    samples, rate = sound["waveform"][0].numpy(), sound["sample_rate"]
    assert abs(audio_seconds(sound) - 3.0) <= 1 / 8
    assert rms(samples[:, int(0.1 * rate):int(0.9 * rate)]) > 0.2          # the tone (0.5 amplitude: rms 0.35)
    assert rms(samples[:, int(1.2 * rate):]) < 0.01                         # then silence to the end
    long = write_video_with_audio(frames, tmp_path / f"long.{fmt}", 8.0, _audio(tone(7.0, 48000), 48000))
    sound = read_audio(long)
    assert abs(audio_seconds(sound) - 3.0) <= 1 / 8
    assert rms(sound["waveform"][0].numpy()[:, int(2.5 * rate):int(2.9 * rate)]) > 0.2


def test_pingpong_fits_the_sound_to_the_longer_clip(tmp_path):
    frames = torch.from_numpy(moving_frames(8)).float() / 255          # pingpong: 8 + 6 = 14 frames
    path = write_video_with_audio(frames, tmp_path / "pp.mp4", 7.0, _audio(tone(10.0, 22050, channels=1), 22050),
                                  VideoSettings(pingpong=True))
    sound = read_audio(path)
    assert read_video(path)[0].shape[0] == 14
    assert abs(audio_seconds(sound) - 2.0) <= 1 / 7 and sound["waveform"].shape[1] == 1


@pytest.mark.parametrize("rate,channels,fmt", [(22050, 6, "webm"), (11025, 1, "mp4"), (37800, 2, "mp4")])
def test_other_rates_and_channel_counts(tmp_path, rate, channels, fmt):
    """Opus takes 8/12/16/24/48 kHz and AAC its own list: others are resampled to 48 kHz; more than two
    channels are mixed down to stereo. The tone and the length stay."""
    frames = torch.from_numpy(moving_frames(12)).float() / 255
    path = write_video_with_audio(frames, tmp_path / f"r.{fmt}", 6.0, _audio(tone(2.0, rate, channels=channels), rate))
    sound = read_audio(path)
    expected_rate = rate if (fmt == "mp4" and rate in (11025, 22050)) else 48000
    assert sound["sample_rate"] == expected_rate
    assert sound["waveform"].shape[1] == min(channels, 2)
    assert abs(audio_seconds(sound) - 2.0) <= 1 / 6
    assert abs(peak_hz(sound["waveform"][0].numpy(), expected_rate) - TONE_HZ) <= 1.0


def test_metadata_and_frames_unchanged_by_sound(tmp_path):
    frames = torch.from_numpy(moving_frames(8)).float() / 255
    meta = {"prompt": '{"1": {}}', "workflow": '{"nodes": []}'}
    silent = write_video(frames, tmp_path / "a.mp4", 8.0, quality=100, metadata=meta)
    loud = write_video_with_audio(frames, tmp_path / "b.mp4", 8.0, _audio(tone(1.0, 48000), 48000),
                                  VideoSettings(quality=100, metadata=meta))
    assert read_metadata(loud) == read_metadata(silent) == meta
    assert torch.equal(read_video(loud)[0], read_video(silent)[0])
    assert probe_video(loud)["frames"] == 8
    assert read_audio(silent) is None


# ---------------------------------------------------------------------------------------------
# Load Video's window: the sound under the selected frames


def test_read_audio_cuts_the_window_of_the_selected_frames(tmp_path):
    """A tone that steps from 300 Hz to 600 Hz at 2 s: the window from 2 s holds 600 Hz only."""
    path = write_tone_clip(tmp_path / "step.mp4", STEP_HZ)
    whole = read_audio(path)
    late = read_audio(path, start=2.25, duration=1.0)
    early = read_audio(path, start=0.25, duration=1.5)
    assert abs(audio_seconds(whole) - 4.0) <= 1 / FPS
    assert audio_seconds(late) == pytest.approx(1.0, abs=1e-3) and audio_seconds(early) == pytest.approx(1.5, abs=1e-3)
    assert abs(peak_hz(late["waveform"][0].numpy(), 44100) - 600) <= 1
    assert abs(peak_hz(early["waveform"][0].numpy(), 44100) - 300) <= 1


def test_a_late_sound_track_starts_with_silence(tmp_path):
    path = write_tone_clip(tmp_path / "late.mp4", audio_delay=0.5)
    sound = read_audio(path, 0.0, FRAMES / FPS)
    samples, rate = sound["waveform"][0].numpy(), sound["sample_rate"]
    assert audio_seconds(sound) == pytest.approx(FRAMES / FPS, abs=1e-3)
    assert rms(samples[:, :int(0.45 * rate)]) < 0.01 and rms(samples[:, int(0.6 * rate):int(1.0 * rate)]) > 0.2
    later = read_audio(path, 1.0, 1.0)          # from inside the sound: no silence
    assert rms(later["waveform"][0].numpy()[:, :int(0.1 * rate)]) > 0.2


def test_load_video_audio_follows_skip_cap_and_every_nth(pack, tmp_path, monkeypatch):
    video_io = pack.video_io
    monkeypatch.setattr(video_io, "standin_dirs", {"input": tmp_path})
    write_tone_clip(tmp_path / "step.mp4", STEP_HZ)
    frames, fps, count, audio = video_io.LoadVideo().load("step.mp4", 3, 9, 2, 0, 0)   # frames 9, 11, 13 of 16
    assert count == 3 and fps == pytest.approx(FPS / 2)
    assert audio_seconds(audio) == pytest.approx(count / fps, abs=1e-3)                  # 1.5 s from 2.25 s
    assert abs(peak_hz(audio["waveform"][0].numpy(), audio["sample_rate"]) - 600) <= 1
    write_video(torch.rand(4, 16, 16, 3), tmp_path / "silent.mp4", 8.0)
    assert video_io.LoadVideo().load("silent.mp4", 0, 0, 1, 0, 0)[3] is None


# ---------------------------------------------------------------------------------------------
# refusals name `audio`


@pytest.mark.parametrize("audio,expected", [
    ({"waveform": torch.zeros(2, 1, 100), "sample_rate": 8000}, "batch of 2"),
    ({"waveform": torch.full((1, 1, 100), math.nan), "sample_rate": 8000}, "NaN"),
    ({"waveform": torch.zeros(1, 1, 100), "sample_rate": 0}, "sample_rate"),
    ({"waveform": torch.zeros(1, 9, 100), "sample_rate": 8000}, "channels"),
    ({"waveform": torch.zeros(100), "sample_rate": 8000}, "[batch, channels, samples]"),
    ("loud", "AUDIO dict"),
])
def test_bad_audio_is_refused_naming_it(tmp_path, audio, expected):
    with pytest.raises(ValueError, match="audio") as error:
        write_video_with_audio(torch.rand(2, 8, 8, 3), tmp_path / "x.mp4", 8.0, audio)
    assert expected in str(error.value)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("fmt", ["gif", "webp", "png"])
def test_formats_without_sound_refuse_audio(pack, tmp_path, monkeypatch, fmt):
    audio = _audio(tone(1.0, 8000), 8000)
    with pytest.raises(ValueError, match=f"audio: {fmt} cannot hold sound"):
        write_video_with_audio(torch.rand(2, 8, 8, 3), tmp_path / f"x_{fmt}", 8.0, audio, VideoSettings(format=fmt))
    monkeypatch.setattr(pack.video_io, "standin_dirs", {"output": tmp_path})
    with pytest.raises(ValueError, match="audio: .*choose format mp4 or webm"):
        pack.video_io.VideoSave().save(torch.rand(2, 8, 8, 3), 8.0, "x", fmt, 85, 0, False, audio=audio)
    assert list(tmp_path.iterdir()) == []


def test_decoded_sound_is_bounded(tone_clip):
    """4 s of stereo at 44.1 kHz is ~1.4 MB as float32: a 100 kB bound stops decoding, naming the file."""
    with pytest.raises(MemoryError, match="tone.mp4.*sound needs more than"):
        read_audio(tone_clip, max_bytes=100_000)
    assert audio_seconds(read_audio(tone_clip, max_bytes=4_000_000)) == pytest.approx(FRAMES / FPS, abs=1 / FPS)


def test_damaged_files_give_sound_or_an_error_naming_them(tone_clip, tmp_path):
    """Truncated and byte-flipped copies of the tone clip: read_audio returns an AUDIO dict or None, or raises
    a ValueError naming the file; nothing else escapes."""
    data = tone_clip.read_bytes()
    rng = np.random.default_rng(0)
    cases = [data[:n] for n in (0, 12, 100, len(data) // 3, len(data) - 7)]
    for _ in range(12):
        damaged = bytearray(data)
        for pos in rng.integers(0, len(data), 40):
            damaged[pos] ^= 0xFF
        cases.append(bytes(damaged))
    for index, case in enumerate(cases):
        path = tmp_path / f"damaged_{index}.mp4"
        path.write_bytes(case)
        try:
            sound = read_audio(path, 0.0, 4.0)
        except ValueError as error:
            assert path.name in str(error)
            continue
        assert sound is None or (sound["waveform"].ndim == 3 and bool(torch.isfinite(sound["waveform"]).all()))
