"""Image sequences without ComfyUI: mav_core.io.image_sequence and the Load Images / Save Images nodes (the
node code is the real code; the host's folders are stand-in temp folders, as in tests/test_video_nodes.py).

Frames that encode their own index in their colour show which files were picked and in what order; what
Save Images writes is read back by Load Images and by PNG / JPEG decoders."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from mav_core.errors import InputError
from mav_core.io.image_sequence import (SequenceNames, SequenceSelection, list_images, read_images, write_images)
from mav_core.io.video import png_text

cv2 = pytest.importorskip("cv2")


def index_frames(count: int, height: int = 12, width: int = 16) -> torch.Tensor:
    """Frame i is flat grey 10 * i / 255 with a white top-left pixel: its index survives 8-bit files."""
    frames = (torch.arange(count, dtype=torch.float32) * 10 / 255)[:, None, None, None].expand(count, height, width, 3)
    frames = frames.clone()
    frames[:, 0, 0] = 1.0
    return frames


def indices(frames: torch.Tensor) -> list[int]:
    return [round(float(v) * 255 / 10) for v in frames[:, -1, -1, 0]]


def write_pngs(folder: Path, names: list[str], size=(12, 16), alpha: bool = False) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names):
        image = np.full((*size, 4 if alpha else 3), 10 * i, np.uint8)
        if alpha:
            image[..., 3] = 255 - 20 * i
        cv2.imwrite(str(folder / name), image)


@pytest.fixture
def folders(pack, tmp_path, monkeypatch):
    dirs = {kind: tmp_path / kind for kind in ("output", "temp", "input")}
    for d in dirs.values():
        d.mkdir()
    monkeypatch.setattr(pack.video_io, "standin_dirs", dirs)
    return dirs


# ---------------------------------------------------------------------------------------------
# core


def test_natural_order_and_only_images(tmp_path):
    names = ["f10.png", "f2.png", "f1.png", "F3.jpg", "f20.webp"]
    write_pngs(tmp_path, names)
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / ".hidden.png").write_bytes((tmp_path / "f1.png").read_bytes())
    (tmp_path / "sub").mkdir()
    assert [p.name for p in list_images(tmp_path)] == ["f1.png", "f2.png", "F3.jpg", "f10.png", "f20.webp"]


@pytest.mark.parametrize("cap,skip,nth", [(None, 0, 1), (3, 2, 2), (None, 5, 3), (1, 0, 1), (100, 1, 4)])
def test_selection_matches_skip_every_nth_and_cap(tmp_path, cap, skip, nth):
    write_pngs(tmp_path, [f"img_{i}.png" for i in range(13)])
    sequence = read_images(tmp_path, SequenceSelection(cap, skip, nth))
    expected = list(range(skip, 13, nth))[:cap]
    assert indices(sequence.frames) == expected
    assert [p.name for p in sequence.files] == [f"img_{i}.png" for i in expected]
    assert sequence.frames.dtype == torch.float32 and sequence.frames.shape[1:] == (12, 16, 3)
    assert torch.equal(sequence.masks, torch.zeros(len(expected), 12, 16))


def test_alpha_becomes_the_mask_and_16_bit_keeps_its_precision(tmp_path):
    write_pngs(tmp_path / "a", ["0.png", "1.png"], alpha=True)
    masks = read_images(tmp_path / "a").masks
    assert masks[:, 3, 3].tolist() == pytest.approx([0.0, 20 / 255])            # 1 - alpha
    deep = np.full((4, 5, 3), 1000, np.uint16)                                    # 1000 / 65535: between 8-bit steps
    (tmp_path / "d").mkdir()
    cv2.imwrite(str(tmp_path / "d" / "0.png"), deep)
    assert float(read_images(tmp_path / "d").frames[0, 0, 0, 0]) == pytest.approx(1000 / 65535, abs=1e-7)


def test_sizes_must_agree_unless_resized(tmp_path):
    write_pngs(tmp_path, ["a.png", "b.png"])
    write_pngs(tmp_path / "x", ["c.png"], size=(20, 10))
    (tmp_path / "c.png").write_bytes((tmp_path / "x" / "c.png").read_bytes())
    with pytest.raises(InputError, match=r"c.png is 10x20 \(WxH\), but a.png is 16x12") as error:
        read_images(tmp_path)
    assert error.value.param == "size"
    resized = read_images(tmp_path, SequenceSelection(size=(6, 8)))
    assert resized.frames.shape == (3, 6, 8, 3) and resized.masks.shape == (3, 6, 8)


def test_memory_is_checked_before_decoding(tmp_path):
    write_pngs(tmp_path, [f"{i}.png" for i in range(10)])
    (tmp_path / "9.png").write_bytes(b"not a png")            # would fail if decoding had started
    per_image = 12 * 16 * 20
    with pytest.raises(InputError, match="10 images of 16x12 need") as error:
        read_images(tmp_path, max_bytes=5 * per_image)
    assert error.value.param == "max_frames"
    assert read_images(tmp_path, SequenceSelection(max_frames=5), max_bytes=5 * per_image).frames.shape[0] == 5


@pytest.mark.parametrize("damage", ["garbage_first", "garbage_later", "truncated_later"])
def test_unreadable_images_are_named(tmp_path, damage):
    write_pngs(tmp_path, ["0.png", "1.png", "2.png"])
    target = tmp_path / ("0.png" if damage == "garbage_first" else "2.png")
    data = target.read_bytes()
    target.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(40) if damage.startswith("garbage") else data[:len(data) // 2])
    with pytest.raises(InputError, match=target.name) as error:
        read_images(tmp_path)
    assert error.value.param == "folder"


def test_bad_selection_and_empty_folder_are_named(tmp_path):
    with pytest.raises(InputError, match="holds no images") as error:
        read_images(tmp_path)
    assert error.value.param == "folder"
    write_pngs(tmp_path, ["0.png"])
    for selection, param in ((SequenceSelection(0), "max_frames"), (SequenceSelection(every_nth=0), "every_nth"),
                             (SequenceSelection(skip_first=1), "skip_first"), (SequenceSelection(size=(0, 4)), "size")):
        with pytest.raises(InputError) as error:
            read_images(tmp_path, selection)
        assert error.value.param == param


def test_write_numbers_files_puts_metadata_in_the_first_png_and_reads_back(tmp_path):
    frames = index_frames(12)
    meta = {"prompt": json.dumps({"1": {"class_type": "X"}}), "workflow": json.dumps({"nodes": ["ü"]})}
    paths = write_images(frames, SequenceNames(tmp_path, "seq", start=7, metadata=meta))
    assert [p.name for p in paths] == [f"seq_{i:05}_.png" for i in range(7, 19)]
    assert png_text(paths[0].read_bytes()) == meta and png_text(paths[1].read_bytes()) == {}
    back = read_images(tmp_path)
    assert torch.equal(back.frames, (frames * 255).round() / 255)          # 8-bit PNG: exact after rounding
    assert cv2.imread(str(paths[3]), cv2.IMREAD_UNCHANGED).dtype == np.uint8


def test_jpeg_quality_changes_the_files(tmp_path):
    frames = torch.rand(2, 32, 32, 3, generator=torch.Generator().manual_seed(0))
    low = write_images(frames, SequenceNames(tmp_path, "low", format="jpg", quality=10))
    high = write_images(frames, SequenceNames(tmp_path, "high", format="jpg", quality=95))
    assert low[0].suffix == ".jpg" and low[0].stat().st_size < high[0].stat().st_size
    error_low = float((read_images(tmp_path, SequenceSelection(max_frames=1, skip_first=2)).frames - frames[0]).abs().mean())
    error_high = float((read_images(tmp_path, SequenceSelection(max_frames=1)).frames - frames[0]).abs().mean())
    assert error_high < error_low


def test_a_failed_write_leaves_no_file(tmp_path, monkeypatch):
    from mav_core.io import image_sequence
    original, calls = image_sequence.encode_png, []

    def failing(rgb, text=None):
        calls.append(1)
        if len(calls) == 3:
            raise OSError("disk full")
        return original(rgb, text)

    (tmp_path / "seq_00002_.png").write_bytes(b"old")
    monkeypatch.setattr(image_sequence, "encode_png", failing)
    with pytest.raises(OSError, match="disk full"):
        write_images(index_frames(5), SequenceNames(tmp_path, "seq"))
    assert sorted(os.listdir(tmp_path)) == ["seq_00002_.png"] and (tmp_path / "seq_00002_.png").read_bytes() == b"old"


@pytest.mark.parametrize("names,param", [
    (dict(format="exr"), "format"), (dict(quality=0), "quality"), (dict(stem="a/b"), "stem"), (dict(start=-1), "start"),
])
def test_bad_names_are_refused(tmp_path, names, param):
    with pytest.raises(InputError) as error:
        write_images(index_frames(1), SequenceNames(tmp_path, **{"stem": "s", **names}))
    assert error.value.param == param


# ---------------------------------------------------------------------------------------------
# nodes


def test_save_images_then_load_images(pack, folders):
    frames = index_frames(9)
    node = pack.image_sequence.SaveImages()
    out = node.save(frames, "seq/shot", "png", 95, prompt={"1": {"inputs": {}}}, extra_pnginfo={"workflow": {"n": 1}})
    out2 = node.save(frames[:2], "seq/shot", "png", 95)                       # numbering continues after the first
    names = [e["filename"] for e in out["ui"]["images"] + out2["ui"]["images"]]
    assert names == [f"shot_{i:05}_.png" for i in range(1, 12)]
    assert {e["subfolder"] for e in out["ui"]["images"]} == {"seq"} and out["result"][0] == str(folders["output"] / "seq")
    first = folders["output"] / "seq" / names[0]
    assert json.loads(png_text(first.read_bytes())["workflow"]) == {"n": 1}
    assert json.loads(png_text(first.read_bytes())["prompt"]) == {"1": {"inputs": {}}}

    os.replace(folders["output"] / "seq", folders["input"] / "shots")
    load = pack.image_sequence.LoadImages
    assert "shots" in load.INPUT_TYPES()["required"]["folder"][0]
    assert load.VALIDATE_INPUTS("shots") is True
    images, masks, count = load().load("shots", 4, 1, 2, 0, 0)
    assert count == 4 and indices(images) == [1, 3, 5, 7] and masks.shape == (4, 12, 16)
    images, _, _ = load().load("shots", 0, 0, 1, 8, 0)                         # width alone keeps the aspect
    assert images.shape == (11, 6, 8, 3)


def test_load_images_refusals_name_the_input(pack, folders):
    load = pack.image_sequence.LoadImages
    write_pngs(folders["input"] / "ok", ["0.png", "1.png"])
    (folders["input"] / "empty").mkdir()
    assert load.VALIDATE_INPUTS("empty").startswith("folder:")
    assert load.VALIDATE_INPUTS("../output").startswith("folder:")
    assert load.VALIDATE_INPUTS("missing").startswith("folder:")
    with pytest.raises(ValueError, match="^skip_first_images: 5 with every_nth 1 leaves none"):
        load().load("ok", 0, 5, 1, 0, 0)
    with pytest.raises(ValueError, match="^select_every_nth: must be an integer"):
        load().load("ok", 0, 0, 0, 0, 0)
    write_pngs(folders["input"] / "mixed", ["0.png"])
    write_pngs(folders["input"] / "mixed2", ["1.png"], size=(5, 5))
    os.replace(folders["input"] / "mixed2" / "1.png", folders["input"] / "mixed" / "1.png")
    with pytest.raises(ValueError, match=r"^folder: 1.png is 5x5 \(WxH\)"):
        load().load("mixed", 0, 0, 1, 0, 0)


def test_save_images_refusals(pack, folders):
    node = pack.image_sequence.SaveImages
    assert node.VALIDATE_INPUTS(format="exr").startswith("format:")
    assert node.VALIDATE_INPUTS(quality=0).startswith("quality:")
    with pytest.raises(ValueError, match="^filename_prefix: .*outside"):
        node().save(index_frames(1), "../escape", "png", 95)
    with pytest.raises(ValueError, match="^images:"):
        node().save(torch.zeros(2, 3), "x", "png", 95)
    assert not any(folders["output"].rglob("*.png"))
