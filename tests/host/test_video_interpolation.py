"""workflows/video_interpolation_api.json (Load Video -> Frame Interpolator x4 with the motion-compensated ↑F
-> Video Save) inside a real ComfyUI, on a real held-out clip at 512x288, and Cancel during it."""
from __future__ import annotations

import json
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from comfy_server import REPO_ROOT, history_events, history_status
from test_pack_host import upload

CLIPS = REPO_ROOT / "data" / "clips"
WORKFLOW = REPO_ROOT / "workflows" / "video_interpolation_api.json"
W, H = 512, 288

pytestmark = pytest.mark.skipif(not (CLIPS / "manifest.json").exists(), reason="no real clips: run scripts/fetch_clips.py")


def _moving_heldout_frames(count: int) -> tuple[np.ndarray, float]:
    """`count` frames [count, 288, 512, 3] uint8 of the held-out landscape clip that moves most over its
    first `count` frames (inside one shot), and its fps."""
    from mav_core.data.clips import decode_webp, list_clips, shots
    best = None
    for info in list_clips(CLIPS, "heldout", min_frames=count):
        if info.width <= info.height:
            continue
        frames, fps = decode_webp(info.path)
        a, b = next(((a, b) for a, b in shots(frames) if b - a >= count), (None, None))
        if a is None:
            continue
        window = np.stack([cv2.resize(f, (W, H), interpolation=cv2.INTER_AREA) for f in frames[a:a + count]])
        motion = np.abs(window[4].astype(np.float32) - window[0]).mean()
        if best is None or motion > best[0]:
            best = (motion, window, fps)
    assert best is not None, "no held-out landscape clip with enough frames"
    return best[1], best[2]


@pytest.fixture(scope="module")
def real_clip(comfy_server, tmp_path_factory):
    """A real held-out clip as mp4 at 512x288 in the server's input folder: (name, its frames as decoded, fps)."""
    import torch
    from mav_core.io.video import read_video, write_video
    frames, fps = _moving_heldout_frames(17)
    path = write_video(torch.from_numpy(frames).float() / 255, tmp_path_factory.mktemp("clip") / "mav_real.mp4", fps)
    assert upload(comfy_server, Path(path)) == "mav_real.mp4"
    decoded, read_fps = read_video(path)
    return "mav_real.mp4", (decoded.numpy() * 255).round().astype(np.uint8), float(read_fps)


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)


def test_workflow_interpolates_a_real_clip_at_native_size(comfy_server, real_clip):
    """Every 4th frame of the clip loaded, x4 by the shipped motion-compensated ↑F: 17 frames at 512x288 at
    the source fps, the loaded frames kept, the restored frames nearer the true ones than a linear blend."""
    from mav_core.io.video import read_video
    name, truth, fps = real_clip
    api = json.loads(WORKFLOW.read_text())
    api["1"]["inputs"].update(video=name, select_every_nth=4, frame_load_cap=5)
    api["4"]["inputs"]["format"] = "webp"          # near-lossless comparison against the source frames
    api["4"]["inputs"]["quality"] = 100
    with comfy_server.websocket() as events:
        history = comfy_server.wait_history(comfy_server.queue_prompt(api, client_id=events.client_id), timeout=600)
        progress = [e for e in events.events_of("progress") if e.get("node") == "3"]
    assert history_status(history) == "success", (history.get("status"), comfy_server.log_tail(40))
    assert progress and max(e["value"] for e in progress) == 4 and progress[-1]["max"] == 4   # one step per pair
    files = comfy_server.output_files(history)
    out, out_fps = read_video(files[0])
    out = (out.numpy() * 255).round().astype(np.uint8)
    assert out.shape == (17, H, W, 3) and out_fps == pytest.approx(fps, rel=1e-3)
    inner = [j for j in range(17) if j % 4]
    known = out[::4].astype(np.float32)
    blend = np.stack([((1 - (j % 4) / 4) * known[j // 4] + (j % 4) / 4 * known[j // 4 + 1]).round() for j in inner])
    ours = np.mean([_psnr(out[j], truth[j]) for j in inner])
    blended = np.mean([_psnr(b, truth[j]) for b, j in zip(blend, inner)])
    assert _psnr(out[0], truth[0]) > 35, "the loaded frames are kept"
    print(f"\nreal clip 512x288 x4: motion-compensated ↑F {ours:.2f} dB, linear blend {blended:.2f} dB")
    assert ours > blended + 1.0, (ours, blended)


def test_cancel_stops_the_interpolator_within_one_pair(comfy_server, real_clip):
    name, _, _ = real_clip
    api = json.loads(WORKFLOW.read_text())
    api["1"]["inputs"]["video"] = name
    api["3"]["inputs"]["multiplier"] = 8            # 16 pairs of 512x288 frames, 7 new frames each
    pairs = 16
    with comfy_server.websocket() as events:
        prompt_id = comfy_server.queue_prompt(api, client_id=events.client_id)
        deadline = time.monotonic() + 300
        while not any(e.get("node") == "3" for e in events.events_of("progress")):
            assert time.monotonic() < deadline, "the interpolator reported no progress"
            assert comfy_server.history(prompt_id) is None, comfy_server.history(prompt_id).get("status")
            time.sleep(0.05)
        started = time.monotonic()
        assert comfy_server.interrupt() == 200
        history = comfy_server.wait_history(prompt_id, timeout=120)
        stopped_after = time.monotonic() - started
        done = max(e["value"] for e in events.events_of("progress") if e.get("node") == "3")
    print(f"\ninterrupted after pair {done}/{pairs}; the run ended {stopped_after:.2f} s after /interrupt")
    assert history_status(history) == "error" and "execution_interrupted" in history_events(history)
    assert done < pairs
