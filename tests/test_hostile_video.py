"""Hostile video files and requests: decoding stops at the memory budget whatever the container declares,
files that are not videos are refused in validation with one message naming them, and every fps a save
cannot store is refused up front with the format's limit."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from mav_core.io import video
from mav_core.io.video import read_video, write_video

ROOT = Path(__file__).resolve().parents[1]
av_missing = pytest.mark.skipif(video.av is None, reason="needs PyAV")


def live_clip(path: Path, frames: int = 40, height: int = 24, width: int = 32) -> Path:
    """A clip as a live stream or MediaRecorder writes it: no duration and no frame count in the header."""
    fmt, codec = {".webm": ("webm", "libvpx-vp9"), ".mkv": ("matroska", "libx264")}[path.suffix]
    rng = np.random.default_rng(0)
    with video.av.open(str(path), "w", format=fmt, options={"live": "1"}) as container:
        stream = container.add_stream(codec, rate=8)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for _ in range(frames):
            rgb = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
            for packet in stream.encode(video.av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


# ----------------------------------------------------------------------------- the memory budget


@av_missing
@pytest.mark.parametrize("name", ["live.webm", "live.mkv"])
def test_load_video_stops_at_the_budget_when_the_header_declares_no_length(video_io, folders, monkeypatch, name):
    path = live_clip(folders["input"] / name)
    assert video.probe_video(path)["frames"] is None, "the clip must declare no frame count"
    one_frame = 24 * 32 * 3 * 5
    monkeypatch.setattr(video_io, "available_bytes", lambda device: 4 * one_frame)   # room for 4 frames
    decoded = []
    read_module = sys.modules[video_io.read_video.__module__]   # the pack's own copy of mav_core
    real_resize = read_module._resize
    monkeypatch.setattr(read_module, "_resize", lambda rgb, size: decoded.append(1) or real_resize(rgb, size))
    with pytest.raises(MemoryError, match=rf"frame_load_cap: .*{name}.*5 frames of 32x24"):
        video_io.LoadVideo().load(name, 0, 0, 1, 0, 0)
    assert len(decoded) == 5, "decoding must stop at the first frame past the budget"
    frames, _, count, _ = video_io.LoadVideo().load(name, 4, 0, 1, 0, 0)   # 4 frames fit
    assert count == 4 and frames.shape[0] == 4


@pytest.mark.parametrize("name", ["c.mp4", "c.gif", "c.webp", "c_frames"])
def test_read_video_budget_holds_for_every_container(tmp_path, name):
    if video.av is None and name != "c_frames":
        pytest.skip("needs PyAV")
    path = write_video(torch.rand(12, 16, 16, 3), tmp_path / name, fps=8.0)
    one_frame = 16 * 16 * 3 * 5
    with pytest.raises(MemoryError, match=rf"{path.name}.*4 frames of 16x16.*decoding stopped"):
        read_video(path, max_bytes=3 * one_frame)
    frames, _ = read_video(path, max_bytes=3 * one_frame, max_frames=3)
    assert frames.shape[0] == 3
    assert read_video(path, max_bytes=12 * one_frame)[0].shape[0] == 12


_BUDGET_PROBE = r"""
import json, re, sys
from pathlib import Path
sys.path.insert(0, {root!r})
import pack_import
nodes = pack_import.import_pack()
video_io = nodes.video_io
video_io.standin_dirs = {{"input": Path({folder!r}), "output": Path({folder!r}), "temp": Path({folder!r})}}
video_io.available_bytes = lambda device: {budget}

def kib(field):
    return int(re.search(field + r":\s+(\d+) kB", Path("/proc/self/status").read_text()).group(1))

video_io.LoadVideo().load({name!r}, 1, 0, 1, 0, 0)   # codecs and thread pools loaded before measuring
Path("/proc/self/clear_refs").write_text("5")
before = kib("VmRSS")
try:
    video_io.LoadVideo().load({name!r}, 0, 0, 1, 0, 0)
    kind, msg = "none", ""
except Exception as e:
    kind, msg = type(e).__name__, str(e)
print(json.dumps({{"kind": kind, "msg": msg, "growth": (kib("VmHWM") - before) * 1024}}))
"""


@av_missing
@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc peak-RSS reset")
def test_refused_live_load_stays_within_64_mib(tmp_path):
    """300 frames of 256x256 (about 290 MiB as IMAGE) in a live webm, 16 MiB free: refused, peak < 64 MiB."""
    live_clip(tmp_path / "big.webm", frames=300, height=256, width=256)
    code = _BUDGET_PROBE.format(root=str(ROOT / "tests"), folder=str(tmp_path), budget=16 << 20, name="big.webm")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MALLOC_MMAP_THRESHOLD_": "32768", "MALLOC_TRIM_THRESHOLD_": "0",
           "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)
    if proc.returncode != 0 and "clear_refs" in proc.stderr:
        pytest.skip("cannot reset peak RSS (/proc/self/clear_refs not writable)")
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["kind"] == "MemoryError" and "big.webm" in report["msg"], report
    assert report["growth"] < 64 * 2 ** 20, f"peak RSS grew by {report['growth'] / 2 ** 20:.0f} MiB"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.webm"]


# ----------------------------------------------------------------------------- files that are not videos


NOT_VIDEOS = {"text": b"just some notes, not a video\n" * 10, "empty": b"",
              "random": np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8).tobytes()}


@pytest.mark.parametrize("suffix", [".mp4", ".webm", ".mkv", ".gif", ".webp", ".mov"])
@pytest.mark.parametrize("kind", sorted(NOT_VIDEOS))
def test_not_a_video_is_refused_in_validation_naming_the_file(video_io, folders, kind, suffix):
    name = f"{kind}{suffix}"
    (folders["input"] / name).write_bytes(NOT_VIDEOS[kind])
    message = video_io.LoadVideo.VALIDATE_INPUTS(name)
    assert isinstance(message, str) and message.startswith("video: ") and name in message, message
    with pytest.raises(ValueError, match=rf"^video: .*{name}"):
        video_io.LoadVideo().load(name, 0, 0, 1, 0, 0)
    with pytest.raises(ValueError, match=name):
        read_video(folders["input"] / name)
    assert sorted(p.name for p in folders["input"].iterdir()) == [name]


@pytest.mark.parametrize("cut", ["header", "garbage"])
def test_a_webp_without_decodable_frames_is_refused_naming_the_file(video_io, folders, cut):
    good = write_video(torch.rand(4, 16, 16, 3), folders["temp"] / "good.webp", fps=8.0).read_bytes()
    data = good[:12] if cut == "header" else good[:40] + NOT_VIDEOS["random"]
    (folders["input"] / f"{cut}.webp").write_bytes(data)
    message = video_io.LoadVideo.VALIDATE_INPUTS(f"{cut}.webp")
    if message is not True:
        assert message.startswith("video: ") and f"{cut}.webp" in message, message
    with pytest.raises(ValueError, match=rf"^video: .*{cut}\.webp.*contains no frames"):
        video_io.LoadVideo().load(f"{cut}.webp", 0, 0, 1, 0, 0)


def test_a_real_video_passes_validation(video_io, folders):
    write_video(torch.rand(3, 16, 16, 3), folders["input"] / "ok.webm", fps=8.0)
    assert video_io.LoadVideo.VALIDATE_INPUTS("ok.webm") is True


# ----------------------------------------------------------------------------- fps per format


FPS_CASES = [("gif", 240.0, r"fps: .*gif.*0\.001526\.\.100"), ("gif", 100.5, r"fps: .*0\.001526\.\.100"),
             ("gif", 0.001, r"fps: .*gif"), ("webp", 1e-4, r"fps: .*webp.*0\.001\.\.1000"),
             ("webp", 1000.5, r"fps: .*webp"), ("mp4", 0.0004, r"fps: .*mp4.*0\.001\.\.10000"),
             ("webm", 0.0009, r"fps: .*webm"), ("png", 1e-5, r"fps: .*PNG folder")]


@pytest.mark.parametrize("fmt, fps, message", FPS_CASES)
def test_fps_a_format_cannot_store_is_refused_up_front(video_io, folders, fmt, fps, message):
    frames = torch.rand(2, 8, 8, 3)
    validation = video_io.VideoSave.VALIDATE_INPUTS(fps=fps, format=fmt, quality=85, loop_count=0)
    assert isinstance(validation, str), validation
    assert re.search(message, validation), validation
    with pytest.raises(ValueError, match=message):   # a linked fps is checked when the node runs
        video_io.VideoSave().save(frames, fps, "MakeAVideo/x", fmt, 85, 0, False)
    if fmt != "png":
        preview = video_io.VideoPreview.VALIDATE_INPUTS(fps=fps, format=fmt)
        assert isinstance(preview, str) and preview.startswith("fps: "), preview
    assert list(folders["output"].rglob("*")) == [] and list(folders["temp"].rglob("*")) == []
    with pytest.raises(ValueError, match=message.removeprefix("fps: ")):
        write_video(frames, folders["temp"] / f"x.{fmt}" if fmt != "png" else folders["temp"] / "x", fps, format=fmt)
    assert list(folders["temp"].iterdir()) == []


@pytest.mark.parametrize("fmt, fps", [("gif", 100.0), ("gif", 0.0016), ("webp", 0.001), ("webp", 1000.0),
                                      ("mp4", 0.001), ("png", 0.001)])
def test_fps_at_the_format_limits_is_written(video_io, folders, fmt, fps):
    assert video_io.VideoSave.VALIDATE_INPUTS(fps=fps, format=fmt, quality=85, loop_count=0) is True
    out = video_io.VideoSave().save(torch.rand(2, 8, 8, 3), fps, "MakeAVideo/x", fmt, 85, 0, False)
    assert read_video(out["result"][0])[1] == pytest.approx(fps, rel=0.05)


def test_linked_values_are_left_to_run_time(video_io):
    assert video_io.VideoSave.VALIDATE_INPUTS(fps=None, format="gif", quality=85, loop_count=0) is True
    assert video_io.VideoSave.VALIDATE_INPUTS(fps=240.0, format=None) is True


@pytest.mark.parametrize("loop_count", [-1, 1.5, "2"])
def test_loop_count_is_named_as_the_input(video_io, folders, loop_count):
    message = video_io.VideoSave.VALIDATE_INPUTS(fps=8.0, format="gif", quality=85, loop_count=loop_count)
    assert isinstance(message, str) and message.startswith("loop_count: "), message
    with pytest.raises(ValueError, match=r"^loop_count: expected an integer >= 0"):
        video_io.VideoSave().save(torch.rand(2, 8, 8, 3), 8.0, "MakeAVideo/x", "gif", 85, loop_count, False)
    assert list(folders["output"].rglob("*")) == []


@av_missing
def test_a_frame_larger_than_the_budget_is_refused_before_decoding(tmp_path, monkeypatch):
    path = write_video(torch.rand(2, 64, 64, 3), tmp_path / "c.mp4", fps=8.0)
    read_module = sys.modules[read_video.__module__]
    monkeypatch.setattr(read_module, "_resize", lambda rgb, size: pytest.fail("a frame was decoded"))
    with pytest.raises(MemoryError, match=r"c\.mp4.*one frame of 64x64"):
        read_video(path, max_bytes=64 * 64 * 3 * 5 - 1)
    with pytest.raises(MemoryError, match=r"one frame of 16x8"):
        read_video(path, size=(8, 16), max_bytes=100)
