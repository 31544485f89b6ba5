"""Video Save / Video Preview / Load Video without ComfyUI: the node code is the real code; the host's
output/temp/input folders are stand-in temp folders (nodes/video_io.py `standin_dirs`), saved files are
read back with mav_core.io.video. The host's own folder_paths rules are checked in tests/host/test_browser.py."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from mav_core.io.video import probe_video, read_bytes, read_metadata, read_video, write_video
from synthetic_frames import moving_frames

ROOT = Path(__file__).resolve().parents[1]
FORMATS = ("mp4", "webm", "gif", "webp", "png")


def saved_path(folders, entry) -> Path:
    return folders[entry["type"]] / entry["subfolder"] / entry["filename"]


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = float(((a - b) ** 2).mean())
    return math.inf if mse == 0 else 10 * math.log10(1.0 / mse)


def save(video_io, frames, fmt, fps=8.0, prefix="MakeAVideo/test", quality=100, loop_count=0, pingpong=False,
         prompt=None, extra_pnginfo=None):
    return video_io.VideoSave().save(frames, fps, prefix, fmt, quality, loop_count, pingpong, prompt=prompt,
                                     extra_pnginfo=extra_pnginfo)


@pytest.mark.parametrize("fmt", FORMATS)
def test_each_format_reads_back_with_frame_count_size_and_fps(video_io, folders, fmt):
    frames = moving_frames(count=8, height=24, width=32)
    out = save(video_io, frames, fmt, fps=8.0)
    path = Path(out["result"][0])
    assert path.exists() and folders["output"] in path.parents
    if fmt == "png":
        shown = out["ui"]["images"]
        assert len(shown) == 8 and all((folders["output"] / s["subfolder"] / s["filename"]).is_file() for s in shown)
    else:
        (entry,) = out["ui"][video_io.UI_KEY]
        assert saved_path(folders, entry) == path
        assert (entry["container"], entry["frame_count"], entry["width"], entry["height"]) == (fmt, 8, 32, 24)
        assert entry["fps"] == 8.0
        assert not ("format" in entry and "frame_rate" in entry), "the host would ask for a /viewvideo URL"
    back, fps = read_video(path)
    assert tuple(back.shape) == (8, 24, 32, 3)
    assert fps == pytest.approx(8.0, rel=1e-3)
    # quality 100: lossless for png/webp; near-lossless for mp4/webm (crf 10); gif is palette-quantised
    source = (frames * 255).round() / 255   # what an 8-bit file can hold
    assert psnr(back, source) >= {"png": math.inf, "webp": math.inf, "mp4": 35, "webm": 35, "gif": 30}[fmt]


def test_odd_size_mp4_is_padded_and_reported(video_io, folders):
    out = save(video_io, moving_frames(count=3, height=23, width=31), "mp4")
    (entry,) = out["ui"]["videos"]
    back, _ = read_video(Path(out["result"][0]))
    assert (entry["width"], entry["height"]) == (32, 24) == (back.shape[2], back.shape[1])


def test_pingpong_and_counter(video_io, folders):
    first = save(video_io, moving_frames(count=5), "webp", pingpong=True)
    second = save(video_io, moving_frames(count=5), "webp")
    (entry,) = first["ui"]["videos"]
    assert entry["frame_count"] == 8
    back, _ = read_video(Path(first["result"][0]))
    assert back.shape[0] == 8 and torch.equal(back[5], back[3]) and torch.equal(back[7], back[1])
    names = [Path(o["result"][0]).name for o in (first, second)]
    assert names == ["test_00001_.webp", "test_00002_.webp"]


@pytest.mark.parametrize("fmt", FORMATS)
def test_prompt_and_workflow_round_trip(video_io, folders, fmt):
    prompt = {"1": {"class_type": "MakeAVideoSampler", "inputs": {"seed": 7, "text": "a ball — ünïcode"}}}
    workflow = {"last_node_id": 2, "nodes": [{"id": 1, "type": "MakeAVideoVideoSave", "widgets_values": ["x", 8.0]}],
                "links": [], "extra": {"ds": {"scale": 1.0}}}
    out = save(video_io, moving_frames(count=3), fmt, prompt=prompt, extra_pnginfo={"workflow": workflow})
    meta = read_metadata(Path(out["result"][0]))
    assert json.loads(meta["workflow"]) == workflow
    assert json.loads(meta["prompt"]) == prompt


def number_frames(count: int, bits: int = 5, block: int = 8) -> torch.Tensor:
    """Frame i shows i in binary as black/white blocks (survives lossy coding)."""
    frames = torch.zeros(count, block, block * bits, 3)
    for i in range(count):
        for b in range(bits):
            if (i >> b) & 1:
                frames[i, :, b * block:(b + 1) * block] = 1.0
    return frames


def read_numbers(frames: torch.Tensor, bits: int = 5) -> list[int]:
    width = frames.shape[2] // bits
    means = frames.mean(dim=(1, 3))
    return [sum(1 << b for b in range(bits) if float(row[b * width:(b + 1) * width].mean()) > 0.5) for row in means]


@pytest.mark.parametrize("fmt", ["mp4", "gif", "webp"])
def test_load_video_selects_exact_frames(video_io, folders, fmt):
    name = f"numbers.{fmt}"
    write_video(number_frames(30), folders["input"] / name, fps=12.0, quality=90)
    assert read_numbers(read_video(folders["input"] / name)[0]) == list(range(30))
    node = video_io.LoadVideo()
    assert name in node.INPUT_TYPES()["required"]["video"][0]
    assert node.VALIDATE_INPUTS(name) is True
    frames, fps, count, _ = node.load(name, frame_load_cap=5, skip_first_frames=3, select_every_nth=4,
                                   force_width=0, force_height=0)
    assert read_numbers(frames) == [3, 7, 11, 15, 19]
    assert count == 5 and fps == pytest.approx(12.0 / 4, rel=1e-2)
    frames, _, count, _ = node.load(name, frame_load_cap=0, skip_first_frames=25, select_every_nth=2,
                                 force_width=0, force_height=0)
    assert read_numbers(frames) == [25, 27, 29] and count == 3


def test_load_video_force_size_keeps_aspect(video_io, folders):
    write_video(moving_frames(count=4, height=24, width=32), folders["input"] / "clip.mp4", fps=8.0)
    node = video_io.LoadVideo()
    frames, _, _, _ = node.load("clip.mp4", 0, 0, 1, force_width=16, force_height=0)
    assert tuple(frames.shape) == (4, 12, 16, 3)
    frames, _, _, _ = node.load("clip.mp4", 2, 0, 1, force_width=20, force_height=10)
    assert tuple(frames.shape) == (2, 10, 20, 3)


def test_load_video_refuses_names_outside_the_input_folder(video_io, folders):
    outside = folders["input"].parent / "secret.mp4"
    write_video(moving_frames(count=2), outside, fps=8.0)
    node = video_io.LoadVideo()
    assert "outside the input folder" in node.VALIDATE_INPUTS("../secret.mp4")
    with pytest.raises(ValueError, match="video: .*outside the input folder"):
        node.load("../secret.mp4", 0, 0, 1, 0, 0)
    with pytest.raises(FileNotFoundError, match="video: no file"):
        node.load("missing.mp4", 0, 0, 1, 0, 0)


@pytest.mark.parametrize("prefix", ["../../etc/x", "../outside", "/tmp/makeavideo_abs/x", "a/../../b"])
def test_path_escape_prefix_is_refused(video_io, folders, prefix):
    before = {p for p in folders["output"].parent.rglob("*")}
    with pytest.raises(ValueError, match="filename_prefix: .*outside"):
        save(video_io, moving_frames(count=2), "webp", prefix=prefix)
    assert {p for p in folders["output"].parent.rglob("*")} == before
    assert not Path("/tmp/makeavideo_abs").exists()


def test_prefix_with_dotdot_inside_the_folder_is_contained(video_io, folders):
    out = save(video_io, moving_frames(count=2), "gif", prefix="a/../b/clip")
    path = Path(out["result"][0])
    assert path.parent == folders["output"] / "b" and path.is_file()


def test_unwritable_output_folder_gives_clear_error_and_no_partial_file(video_io, folders):
    blocker = folders["output"] / "blocker"
    blocker.write_bytes(b"a regular file where a folder is expected")
    for fmt in ("mp4", "png"):
        with pytest.raises(OSError, match="filename_prefix: .*blocker"):
            save(video_io, moving_frames(count=2), fmt, prefix="blocker/clip")
    assert sorted(p.name for p in folders["output"].rglob("*")) == ["blocker"]
    assert blocker.read_bytes().startswith(b"a regular file")


def test_failed_encode_leaves_no_file(video_io, folders):
    frames = moving_frames(count=3)
    frames[1, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        save(video_io, frames, "mp4")
    assert list(folders["output"].rglob("*.mp4")) == [] and list(folders["output"].rglob("*.tmp*")) == []


def test_bad_inputs_name_the_input(video_io, folders):
    frames = moving_frames(count=2)
    with pytest.raises(ValueError, match="format: 'avi'"):
        save(video_io, frames, "avi")
    with pytest.raises(ValueError, match="fps: "):
        save(video_io, frames, "gif", fps=0.0)
    with pytest.raises(ValueError, match="frames: expected an IMAGE batch"):
        save(video_io, frames[0], "gif")
    with pytest.raises(ValueError, match="filename_prefix: expected a non-empty"):
        save(video_io, frames, "gif", prefix=" ")


def test_preview_writes_to_temp_and_shows_it(video_io, folders):
    out = video_io.VideoPreview().save(moving_frames(count=4), 6.0, "webp")
    (entry,) = out["ui"]["videos"]
    assert entry["type"] == "temp" and entry["frame_count"] == 4
    back, fps = read_video(saved_path(folders, entry))
    assert back.shape[0] == 4 and fps == pytest.approx(6.0, rel=0.02)
    assert list(folders["output"].rglob("*")) == []


def test_video_type_nodes_need_the_host(video_io):
    if video_io.HAS_VIDEO_TYPE:
        pytest.skip("the host's VIDEO type is importable here; tested through the host")
    assert "MakeAVideoFramesToVideo" not in video_io.NODE_CLASS_MAPPINGS
    with pytest.raises(RuntimeError, match="no VIDEO type"):
        video_io.FramesToVideo().run(moving_frames(count=2), 8.0)


def test_nodes_are_registered(pack, video_io):
    nodes = pack
    for name in ("MakeAVideoVideoSave", "MakeAVideoVideoPreview", "MakeAVideoLoadVideo"):
        assert nodes.NODE_CLASS_MAPPINGS[name] is video_io.NODE_CLASS_MAPPINGS[name]
    assert (ROOT / "web" / "makeavideo_video.js").is_file()
    assert 'WEB_DIRECTORY = "./web"' in (ROOT / "__init__.py").read_text()


def test_load_video_refuses_a_load_that_cannot_fit(video_io, folders, monkeypatch):
    write_video(moving_frames(count=12, height=24, width=32), folders["input"] / "clip.webm", fps=8.0)
    node = video_io.LoadVideo()
    room_for_4 = read_bytes(4, 24, 32)
    monkeypatch.setattr(video_io, "available_bytes", lambda device: room_for_4)
    with pytest.raises(MemoryError, match="frame_load_cap: 12 frames of 32x24"):
        node.load("clip.webm", 0, 0, 1, 0, 0)
    with pytest.raises(MemoryError, match="frame_load_cap: 6 frames"):
        node.load("clip.webm", 0, 0, 2, 0, 0)
    frames, _, count, _ = node.load("clip.webm", 0, 0, 3, 0, 0)        # 12 frames, every 3rd: 4 fit
    assert count == 4 and frames.shape[0] == 4
    frames, _, _, _ = node.load("clip.webm", 0, 0, 1, force_width=16, force_height=0)   # a quarter of the pixels
    assert tuple(frames.shape) == (12, 12, 16, 3)


@pytest.mark.parametrize("name", ["p.mp4", "p.webm", "p.gif", "p.webp", "p_frames"])
def test_probe_agrees_with_decoding(tmp_path, name):
    path = write_video(moving_frames(count=13, height=24, width=32), tmp_path / name, fps=8.0)
    probe = probe_video(path)
    frames, fps = read_video(path)
    assert (probe["frames"], probe["height"], probe["width"]) == tuple(frames.shape[:3])
    assert probe["fps"] == pytest.approx(fps, rel=0.01)


@pytest.mark.parametrize("fmt", ["webp", "gif", "mp4"])
def test_static_clip_keeps_every_frame(video_io, folders, fmt):
    still = moving_frames(count=1).repeat(6, 1, 1, 1)   # identical frames (encoders like to merge these)
    out = save(video_io, still, fmt, fps=6.0)
    frames, fps = read_video(Path(out["result"][0]))
    assert frames.shape[0] == 6 and fps == pytest.approx(6.0, rel=0.01)
