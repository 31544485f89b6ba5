"""Sound and image sequences in a real ComfyUI (API workflows over /prompt), and the sound track in Chromium.

- A clip with a 440 Hz tone (made with PyAV, tests/test_audio.py) in the input folder: MakeAVideo Load Video
  -> Frame Interpolator ×2 (its fps output) -> Video Save with Load Video's audio, mp4 and webm; the saved
  file's sound is 440 Hz ± 1 Hz and as long as its video ± one frame.
- The AUDIO type both ways with the host's own nodes: the host's Load Video + Get Video Components feed our
  Video Save; our Load Video's audio feeds the host's Create Video + Save Video.
- Load Images -> Save Images on a folder of the input folder: order, selection, workflow in the first PNG.
- With CHROMIUM set (or chromium on PATH): the browser decodes the saved file's sound track
  (decodeAudioData: 440 Hz, its length) and plays the <video> unmuted with audio bytes decoded: the file the
  host saved through Frame Interpolator ×2 (acceptance: it plays with sound in Chromium). Skipped
  otherwise, saying why (see tests/host/test_browser.py).
"""
from __future__ import annotations

import base64
import functools
import http.server
import json
import shutil
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from comfy_server import REPO_ROOT, history_status

sys.path.insert(0, str(REPO_ROOT / "tests"))
from test_audio import FPS, FRAMES, TONE_HZ, audio_seconds, peak_hz, write_tone_clip  # noqa: E402

from mav_core.io.video import png_text, read_audio, read_video  # noqa: E402

REGRESSION = "mav-tiny/interpolator_regression.safetensors"


@pytest.fixture(scope="module")
def host(comfy_server):
    write_tone_clip(comfy_server.input_dir / "mav_tone.mp4")
    frames = torch.arange(7, dtype=torch.float32)[:, None, None, None].expand(7, 10, 14, 3) * 30 / 255
    folder = comfy_server.input_dir / "mav_sequence"
    folder.mkdir(exist_ok=True)
    from mav_core.io.image_sequence import SequenceNames, write_images
    for path in folder.iterdir():
        path.unlink()
    write_images(frames, SequenceNames(folder, "frame", start=0))      # frame_00000_.png ... frame_00006_.png
    return comfy_server


def run(server, graph: dict, timeout: float = 300) -> dict:
    history = server.wait_history(server.queue_prompt(graph), timeout=timeout)
    assert history_status(history) == "success", json.dumps(history.get("status"))[:2000]
    return history


def tone_graph(fmt: str) -> dict:
    return {
        "1": {"class_type": "MakeAVideoLoadVideo", "inputs": {
            "video": "mav_tone.mp4", "frame_load_cap": 0, "skip_first_frames": 0, "select_every_nth": 1,
            "force_width": 0, "force_height": 0}},
        "2": {"class_type": "MakeAVideoInterpolatorLoader", "inputs": {"ckpt_name": REGRESSION}},
        "3": {"class_type": "MakeAVideoFrameInterpolator", "inputs": {
            "interpolator": ["2", 0], "images": ["1", 0], "fps": ["1", 1], "multiplier": 2, "mode": "interpolate",
            "seed": 0, "steps": 1}},
        "4": {"class_type": "MakeAVideoVideoSave", "inputs": {
            "frames": ["3", 0], "fps": ["3", 1], "filename_prefix": f"audio/tone_{fmt}", "format": fmt,
            "quality": 85, "loop_count": 0, "pingpong": False, "audio": ["1", 3]}},
    }


def check_tone_file(path: Path, frames: int, fps: float) -> None:
    back, back_fps = read_video(path)
    sound = read_audio(path)
    assert back.shape[0] == frames and back_fps == pytest.approx(fps, rel=1e-3)
    assert abs(audio_seconds(sound) - frames / fps) <= 1 / fps, (audio_seconds(sound), frames / fps)
    assert abs(peak_hz(sound["waveform"][0].numpy(), sound["sample_rate"]) - TONE_HZ) <= 1.0


def test_object_info_declares_audio(host):
    info = host.object_info()
    assert info["MakeAVideoLoadVideo"]["output"][3] == "AUDIO"
    assert info["MakeAVideoVideoSave"]["input"]["optional"]["audio"][0] == "AUDIO"
    assert {"MakeAVideoLoadImages", "MakeAVideoSaveImages"} <= set(info)


@pytest.mark.parametrize("fmt", ["mp4", "webm"])
def test_tone_through_interpolation_and_save(host, fmt):
    history = run(host, tone_graph(fmt))
    files = host.output_files(history)
    assert len(files) == 1 and files[0].suffix == f".{fmt}"
    check_tone_file(files[0], 2 * FRAMES - 1, 2 * FPS)
    assert history["outputs"]["4"]["videos"][0]["audio"] is True


def test_audio_type_with_the_hosts_video_nodes(host):
    info = host.object_info()
    if not {"LoadVideo", "GetVideoComponents", "CreateVideo", "SaveVideo"} <= set(info):
        pytest.skip("this ComfyUI has no VIDEO nodes")
    graph = {   # the host's AUDIO into our Video Save
        "1": {"class_type": "LoadVideo", "inputs": {"file": "mav_tone.mp4"}},
        "2": {"class_type": "GetVideoComponents", "inputs": {"video": ["1", 0]}},
        "3": {"class_type": "MakeAVideoVideoSave", "inputs": {
            "frames": ["2", 0], "fps": ["2", 2], "filename_prefix": "audio/from_host", "format": "webm",
            "quality": 85, "loop_count": 0, "pingpong": False, "audio": ["2", 1]}},
    }
    check_tone_file(host.output_files(run(host, graph))[0], FRAMES, FPS)
    graph = {   # our AUDIO into the host's Create Video + Save Video
        "1": {"class_type": "MakeAVideoLoadVideo", "inputs": {
            "video": "mav_tone.mp4", "frame_load_cap": 0, "skip_first_frames": 0, "select_every_nth": 1,
            "force_width": 0, "force_height": 0}},
        "2": {"class_type": "CreateVideo", "inputs": {"images": ["1", 0], "fps": ["1", 1], "audio": ["1", 3]}},
        "3": {"class_type": "SaveVideo", "inputs": {"video": ["2", 0], "filename_prefix": "audio/to_host",
                                                    "format": "mp4", "codec": "h264"}},
    }
    path = host.output_files(run(host, graph))[0]
    sound = read_audio(path)
    assert abs(peak_hz(sound["waveform"][0].numpy(), sound["sample_rate"]) - TONE_HZ) <= 1.0
    assert abs(audio_seconds(sound) - FRAMES / FPS) <= 1 / FPS


def test_load_images_to_save_images(host):
    graph = {
        "1": {"class_type": "MakeAVideoLoadImages", "inputs": {
            "folder": "mav_sequence", "image_load_cap": 3, "skip_first_images": 1, "select_every_nth": 2,
            "force_width": 0, "force_height": 0}},
        "2": {"class_type": "MakeAVideoSaveImages", "inputs": {
            "images": ["1", 0], "filename_prefix": "sequence/shot", "format": "png", "quality": 95}},
    }
    history = run(host, graph)
    files = sorted(host.output_files(history))
    assert [f.name for f in files] == [f"shot_{i:05}_.png" for i in (1, 2, 3)]
    saved = read_video(files[0].parent)[0]
    assert (saved[:, 0, 0, 0] * 255).round().tolist() == [30, 90, 150]   # images 1, 3, 5 (level 30 * index)
    text = png_text(files[0].read_bytes())
    assert json.loads(text["prompt"])["1"]["class_type"] == "MakeAVideoLoadImages"
    assert png_text(files[1].read_bytes()) == {}
    status, body = host.post_prompt({**graph, "1": {**graph["1"], "inputs": {**graph["1"]["inputs"],
                                                                           "folder": "../output"}}})
    assert status == 400 and "folder" in json.dumps(body["node_errors"])


# ---------------------------------------------------------------------------------------------
# Chromium: the sound track decodes and plays (runs when CHROMIUM is set or chromium is on PATH)


AUDIO_HELPERS = r"""
window.mavDecodeSound = async (url) => {
  const data = await (await fetch(url)).arrayBuffer();
  const context = new OfflineAudioContext(1, 1, 48000);
  const buffer = await context.decodeAudioData(data);
  const samples = buffer.getChannelData(0);
  const bytes = new Uint8Array(samples.buffer, samples.byteOffset, samples.byteLength);
  let text = '';
  for (let i = 0; i < bytes.length; i += 0x8000) text += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
  return { rate: buffer.sampleRate, duration: buffer.duration, channels: buffer.numberOfChannels, samples: btoa(text) };
};
window.mavPlaySound = async (url) => {
  const video = document.createElement('video');
  video.muted = false; video.volume = 1.0; video.preload = 'auto';
  document.body.appendChild(video);
  video.src = URL.createObjectURL(await (await fetch(url)).blob());
  await new Promise((resolve, reject) => { video.oncanplay = resolve; video.onerror = () => reject(new Error('video error')); });
  await video.play();
  await new Promise((resolve) => setTimeout(resolve, 1500));
  const result = { muted: video.muted, paused: video.paused, time: video.currentTime, duration: video.duration,
                   audioBytes: video.webkitAudioDecodedByteCount, videoBytes: video.webkitVideoDecodedByteCount };
  video.pause(); video.remove();
  return result;
};
true
"""


@pytest.fixture(scope="module")
def sound_page(tmp_path_factory):
    from test_browser import Browser, QuietHandler, chromium_path
    executable = chromium_path()
    if executable is None:
        pytest.skip("no chromium executable (apt-get install -y chromium, or set CHROMIUM=/path)")
    root = tmp_path_factory.mktemp("sound_served")
    (root / "index.html").write_text("<!doctype html><title>MakeAVideo sound checks</title><body></body>")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(QuietHandler, directory=str(root)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        browser = Browser(executable, tmp_path_factory.mktemp("chromium_sound_profile"))
    except RuntimeError as error:
        server.shutdown()
        pytest.skip(f"chromium does not start headless here: {error}")
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        browser.page.navigate(f"{base}/index.html")
        assert browser.page.evaluate(AUDIO_HELPERS) is True
        yield browser.page, root, base
    finally:
        browser.close()
        server.shutdown()


@pytest.mark.parametrize("fmt", ["mp4", "webm"])
def test_chromium_decodes_and_plays_the_sound(host, sound_page, fmt):
    """The file the host saved (Load Video -> Frame Interpolator x2 -> Video Save with the clip's audio) decodes
    in Chromium to the 440 Hz tone as long as its video, and its <video> plays unmuted, decoding sound."""
    page, root, base = sound_page
    (saved,) = host.output_files(run(host, tone_graph(fmt)))
    frames, fps = 2 * FRAMES - 1, 2 * FPS
    shutil.copy(saved, root / f"saved.{fmt}")
    shutil.copy(saved, root / f"copy.{fmt}")
    sound = page.evaluate(f"window.mavDecodeSound({json.dumps(f'{base}/saved.{fmt}')})")
    samples = np.frombuffer(base64.b64decode(sound["samples"]), dtype=np.float32)
    assert abs(sound["duration"] - frames / fps) <= 1 / fps, sound["duration"]
    assert abs(peak_hz(samples[None], sound["rate"]) - TONE_HZ) <= 1.0
    played = page.evaluate(f"window.mavPlaySound({json.dumps(f'{base}/copy.{fmt}')})")
    assert not played["muted"] and not played["paused"] and played["time"] > 0.5, played
    assert abs(played["duration"] - frames / fps) <= 1 / fps, played
    assert played["audioBytes"] > 0, f"no audio decoded while playing: {played}"
