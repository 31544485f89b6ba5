"""Every shipped workflow whose models ship with the pack runs out of the box: a fresh ComfyUI with an EMPTY
input folder and no models of its own (the loaders list the shipped MAV-Tiny files and the pack's examples/)
runs each API workflow to its output file. The graphs are the shipped ones with fewer steps and frames
(set on a copy here; the shipped defaults stay as they are). Also through the host: the loaders list the
examples next to the input folder's files, refuse names that leave the examples folder, and a file of the
same name in the input folder takes precedence over the shipped example. The same rules on the node code
without ComfyUI (these run without COMFYUI_ROOT): names and links out of the examples folder are refused,
the loaders read the examples with no input folder at all, and an input file shadows its example."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from comfy_server import REPO_ROOT, ComfyServer, history_status
from test_pack_host import fast

WORKFLOWS = REPO_ROOT / "workflows"
EXAMPLES = REPO_ROOT / "examples"
SHIPPED = REPO_ROOT / "mav_core" / "weights"
HOST_MODEL_LOADERS = ("CLIPLoader", "VAELoader")
MODEL_INPUTS = ("ckpt_name", "motion_name", "folder")
LOADERS = {"MakeAVideoLoadImage": "image", "MakeAVideoLoadVideo": "video", "MakeAVideoLoadImages": "folder"}


def shipped_models_only(api: dict) -> bool:
    """True when every model the graph loads ships with the pack: no host CLIP / VAE loader, and every
    makeavideo model input names a file or folder under mav_core/weights."""
    for node in api.values():
        if node["class_type"] in HOST_MODEL_LOADERS:
            return False
        for key in MODEL_INPUTS:
            value = node["inputs"].get(key)
            if node["class_type"].startswith("MakeAVideo") and node["class_type"] not in LOADERS \
                    and isinstance(value, str) and not (SHIPPED / value).exists():
                return False
    return True


API_FILES = sorted(p for p in WORKFLOWS.glob("*_api.json") if shipped_models_only(json.loads(p.read_text())))


def small(api: dict) -> dict:
    """The graph as test_pack_host.fast makes it (1 step everywhere, 4 sampled frames, 3 extrapolated frames,
    prompt keyframes inside the shortened clip), with windows of 3 and at most 4 loaded frames."""
    api = fast(api)
    for node in api.values():
        inputs = node["inputs"]
        if node["class_type"] == "MakeAVideoSampler" and inputs.get("context_window"):
            inputs["context_window"], inputs["context_overlap"] = 3, 1
        if node["class_type"] == "MakeAVideoLoadVideo":
            inputs["frame_load_cap"] = 4
    return api


@pytest.fixture(scope="module")
def bare_host(comfy_host_paths, tmp_path_factory):
    """A ComfyUI of its own: empty input folder, empty models/makeavideo (only the shipped files are listed)."""
    server = ComfyServer(host=comfy_host_paths, work_dir=tmp_path_factory.mktemp("bare_host"))
    with server.running("ComfyUI with an empty input folder"):
        assert server.pack_import_errors() == [], server.log_tail(80)
        assert files_in(server.input_dir) == [] and files_in(server.models_dir) == []
        yield server


def files_in(folder) -> list:
    """The files under `folder` (the host makes empty subfolders of its input folder itself, e.g. 3d/)."""
    return [p for p in folder.rglob("*") if not p.is_dir()]


def test_api_file_list_is_the_shipped_model_workflows():
    names = {p.name for p in API_FILES}
    assert {"text_to_video_api.json", "image_animation_api.json", "image_interpolation_api.json",
            "video_variation_api.json", "video_interpolation_api.json", "control_canny_api.json"} <= names
    assert not names & {"modelscope_text_to_video_api.json", "zeroscope_text_to_video_api.json"}


def test_workflow_input_files_are_shipped_examples():
    """Every file a shipped workflow (UI and API form) loads is one of the pack's examples."""
    named = []
    for path in sorted(WORKFLOWS.glob("*.json")):
        data = json.loads(path.read_text())
        if "nodes" in data:
            named += [(path.name, n["widgets_values"][0]) for n in data["nodes"] if n["type"] in LOADERS]
        else:
            named += [(path.name, n["inputs"][LOADERS[n["class_type"]]]) for n in data.values()
                      if n["class_type"] in LOADERS]
    assert len(named) >= 10
    for workflow, name in named:
        assert name.startswith("examples/") and (REPO_ROOT / name).exists(), (workflow, name)


def test_loaders_list_the_examples_in_an_empty_input_folder(bare_host):
    info = bare_host.object_info()
    expected = {
        "MakeAVideoLoadImage": sorted(f"examples/{p.name}" for p in EXAMPLES.glob("*.png")),
        "MakeAVideoLoadVideo": sorted(f"examples/{p.name}" for p in EXAMPLES.glob("*.mp4")),
        "MakeAVideoLoadImages": sorted(f"examples/{p.name}" for p in EXAMPLES.iterdir() if p.is_dir()
                                       and any(p.glob("*.png"))),
    }
    for node, names in expected.items():
        listed = info[node]["input"]["required"][LOADERS[node]][0]
        assert names and listed == names, node


@pytest.mark.parametrize("api_path", API_FILES, ids=lambda p: p.stem)
def test_shipped_workflow_runs_in_a_bare_host(bare_host, api_path):
    from mav_core.io.video import read_video
    api = small(json.loads(api_path.read_text()))
    history = bare_host.wait_history(bare_host.queue_prompt(api), timeout=600)
    assert history_status(history) == "success", (history.get("status"), bare_host.log_tail(40))
    files = bare_host.output_files(history)
    assert files, history.get("outputs")
    for path in files:
        frames, fps = read_video(path)
        assert frames.shape[0] >= 2 and fps > 0, path
        assert float(frames.std()) > 0.01, f"{path.name} is one flat colour"
    assert files_in(bare_host.input_dir) == [], "the run wrote into the input folder"


def test_video_interpolation_reads_the_example_clip(bare_host):
    """Load Video (4 frames of examples/mav_source.mp4, 128x128) -> motion-compensated ↑F x4 -> 13 frames
    of the same size, whose first frame is the clip's first frame."""
    from mav_core.io.video import read_video
    api = small(json.loads((WORKFLOWS / "video_interpolation_api.json").read_text()))
    history = bare_host.wait_history(bare_host.queue_prompt(api), timeout=600)
    assert history_status(history) == "success", history.get("status")
    (path,) = bare_host.output_files(history)
    frames, fps = read_video(path)
    source, source_fps = read_video(EXAMPLES / "mav_source.mp4", max_frames=4)
    assert tuple(frames.shape) == (13, *source.shape[1:])
    assert fps == pytest.approx(4 * source_fps, rel=1e-3)
    assert float((frames[0] - source[0]).abs().mean()) < 0.03


def _load_and_save(name: str, prefix: str) -> dict:
    return {"1": {"class_type": "MakeAVideoLoadImage", "inputs": {"image": name}},
            "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": prefix}}}


@pytest.mark.parametrize("name", ["examples/../README.md", "examples/../../etc/passwd", "examples/mav_sequence/../x",
                                  "../examples/mav_start.png", "examples/.hidden.png", "/etc/passwd"])
def test_names_outside_the_examples_are_refused_naming_the_input(bare_host, name):
    status, body = bare_host.post_prompt(_load_and_save(name, "mav/refused"))
    assert status == 400, body
    assert "image" in json.dumps(body.get("node_errors", body)), body


def test_an_input_file_of_the_same_name_takes_precedence(bare_host):
    """Load Image reads the shipped example, then the user's own input/examples/mav_start.png once it is there."""
    from PIL import Image
    shadow = bare_host.input_dir / "examples" / "mav_start.png"
    try:
        outputs = []
        for step in ("shipped", "shadowed"):
            if step == "shadowed":
                shadow.parent.mkdir()
                Image.fromarray(np.full((20, 24, 3), (10, 200, 30), np.uint8)).save(shadow)
            history = bare_host.wait_history(bare_host.queue_prompt(_load_and_save("examples/mav_start.png",
                                                                                   f"mav/{step}")), timeout=120)
            assert history_status(history) == "success", history.get("status")
            (path,) = bare_host.output_files(history)
            outputs.append(np.asarray(Image.open(path).convert("RGB")))
        shipped = np.asarray(Image.open(EXAMPLES / "mav_start.png").convert("RGB"))
        assert np.array_equal(outputs[0], shipped)
        assert outputs[1].shape == (20, 24, 3) and (outputs[1] == (10, 200, 30)).all()
    finally:
        shutil.rmtree(shadow.parent, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# without ComfyUI: the same resolution rules on the node code itself


@pytest.mark.parametrize("name", ["examples/../README.md", "examples/mav_sequence/frame_01.png", "examples/.hidden.png",
                                  "examples/", "examples/..", "other/mav_start.png", "mav_start.png",
                                  "examples/mav_start.png\0", "examples\\mav_start.png", None, 3])
def test_example_path_refuses_names_outside_the_examples(pack, name):
    assert pack.common.example_path(name) is None


def test_example_path_refuses_a_link_out_of_the_examples_folder(pack, tmp_path, monkeypatch):
    examples, outside = tmp_path / "examples", tmp_path / "secret.png"
    examples.mkdir()
    outside.write_bytes((EXAMPLES / "mav_start.png").read_bytes())
    (examples / "link.png").symlink_to(outside)
    (examples / "real.png").write_bytes(outside.read_bytes())
    monkeypatch.setattr(pack.common, "EXAMPLES_DIR", examples)
    assert pack.common.example_path("examples/link.png") is None
    assert pack.common.example_path("examples/real.png") == examples / "real.png"
    assert pack.common.example_names((".png",)) == ["examples/link.png", "examples/real.png"]


def test_loaders_read_the_examples_and_an_input_file_shadows_them(pack, monkeypatch, tmp_path):
    from PIL import Image
    load_image, load_video = pack.image_sequence.LoadImage(), pack.video_io.LoadVideo()
    monkeypatch.setattr(pack.video_io, "standin_dirs", {})          # no input folder at all
    image, mask = load_image.load("examples/mav_start.png")
    shipped = np.asarray(Image.open(EXAMPLES / "mav_start.png").convert("RGB"))
    assert np.array_equal((image[0].numpy() * 255).round().astype(np.uint8), shipped) and float(mask.abs().max()) == 0
    frames, fps, count, audio = load_video.load("examples/mav_source.mp4", 3, 0, 1, 0, 0)
    assert (count, tuple(frames.shape[1:])) == (3, shipped.shape) and fps > 0 and audio is None
    monkeypatch.setattr(pack.video_io, "standin_dirs", {"input": tmp_path})
    assert pack.image_sequence.LoadImage.INPUT_TYPES()["required"]["image"][0][-1] == "examples/mav_start.png"
    (tmp_path / "examples").mkdir()
    Image.fromarray(np.full((5, 7, 4), (1, 2, 3, 0), np.uint8)).save(tmp_path / "examples" / "mav_start.png")
    image, mask = load_image.load("examples/mav_start.png")
    assert tuple(image.shape) == (1, 5, 7, 3) and float(mask.min()) == 1.0     # the input file, alpha 0 -> mask 1
    assert pack.image_sequence.LoadImage.INPUT_TYPES()["required"]["image"][0].count("examples/mav_start.png") == 1
    assert "outside the input folder" in pack.image_sequence.LoadImage.VALIDATE_INPUTS("../secret.png")
