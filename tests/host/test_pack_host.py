"""The node pack inside a real ComfyUI: registration, every shipped workflow, validation errors,
Cancel, checkpoint swapping and seed reproducibility, and graphs that mix our nodes with the host's.

Runs on untrained MAV-Tiny-layout checkpoints copied into the temp models folder the harness
announces as `makeavideo` (they shadow the shipped mav-tiny files), with every sampling step count
cut to 1 so each graph takes seconds on a CPU."""
from __future__ import annotations

import json
import os
import shutil
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

from comfy_server import PACK_DIR_NAME, REPO_ROOT, PromptRejected, history_events, history_status

sys.path.insert(0, str(REPO_ROOT / "tests"))
sys.path.insert(0, str(REPO_ROOT / "scripts"))
from pack_import import import_pack  # noqa: E402
from test_nodes import make_untrained_weights  # noqa: E402
from ui_to_api import check_ui_workflow, ui_to_api  # noqa: E402

WORKFLOWS = REPO_ROOT / "workflows"
HOST_MODEL_LOADERS = ("CLIPLoader", "VAELoader")


def needs_host_model_files(api_path: Path) -> bool:
    """Graphs with the host's CLIPLoader / VAELoader need text encoder and VAE files this server does not
    announce; tests/host/test_modelscope_host.py runs them on synthesised files."""
    return any(n["class_type"] in HOST_MODEL_LOADERS for n in json.loads(api_path.read_text()).values())


API_FILES = sorted(p for p in WORKFLOWS.glob("*_api.json") if not needs_host_model_files(p))
UI_FILES = sorted(p for p in WORKFLOWS.glob("*.json") if not p.name.endswith("_api.json"))
MODULE = f"custom_nodes.{PACK_DIR_NAME}"
SIZE = 32


def upload(server, path: Path) -> str:
    """POST /upload/image (multipart) and return the stored name."""
    import urllib.request
    boundary = uuid.uuid4().hex
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"{path.name}\"\r\n"
            "Content-Type: application/octet-stream\r\n\r\n").encode() + path.read_bytes() + \
        (f"\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"overwrite\"\r\n\r\ntrue\r\n"
         f"--{boundary}--\r\n").encode()
    req = urllib.request.Request(server.base_url + "/upload/image", data=body, method="POST",
                                 headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read())["name"]


@pytest.fixture(scope="session")
def host(comfy_server, tmp_path_factory):
    """The server with untrained weights as models/makeavideo/{mav-tiny,alt} and the workflows' input files."""
    import torch
    from mav_core.io.video import write_video
    made = tmp_path_factory.mktemp("untrained")
    shutil.copytree(make_untrained_weights(made / "a", seed=0), comfy_server.models_dir / "mav-tiny", dirs_exist_ok=True)
    shutil.copytree(make_untrained_weights(made / "b", seed=1), comfy_server.models_dir / "alt", dirs_exist_ok=True)
    gen = torch.Generator().manual_seed(0)
    for name in ("mav_start.png", "mav_first.png", "mav_last.png", "mav_source.mp4"):
        frames = torch.rand(6 if name.endswith(".mp4") else 1, 40, 48, 3, generator=gen)
        path = write_video(frames, made / name, 8.0) if name.endswith(".mp4") else made / name
        if name.endswith(".png"):
            from PIL import Image
            Image.fromarray((frames[0].numpy() * 255).astype("uint8")).save(path)
        assert upload(comfy_server, Path(path)) == name
    return comfy_server


def fast(api: dict, frames: int = 4) -> dict:
    """1 step everywhere, `frames` frames, at most 3 extrapolated frames, prompt keyframes at frames 1-3."""
    api = json.loads(json.dumps(api))
    for node in api.values():
        inputs = node["inputs"]
        if "steps" in inputs:
            inputs["steps"] = 1
        if node["class_type"] == "MakeAVideoSampler":
            inputs["frames"] = frames
        if inputs.get("extra_frames"):
            inputs["extra_frames"] = 3
        if node["class_type"] == "MakeAVideoPromptSchedule":   # keyframes inside the shortened clip
            for k in (2, 3, 4):
                inputs[f"start_{k}"] = min(inputs.get(f"start_{k}", k - 1), k - 1)
    return api


def test_object_info_lists_every_node(comfy_server):
    assert comfy_server.pack_import_errors() == [], comfy_server.log_tail(80)
    pack = import_pack()
    info = comfy_server.object_info()
    ours = {name for name, i in info.items() if i.get("python_module") == MODULE}
    assert set(pack.NODE_CLASS_MAPPINGS) <= ours, "a node registered without ComfyUI is missing in the host"
    stages = {"MakeAVideoBundleLoader", "MakeAVideoTextEncoderLoader", "MakeAVideoPriorLoader",
              "MakeAVideoDecoderLoader", "MakeAVideoInterpolatorLoader", "MakeAVideoUpscalerLoader",
              "MakeAVideoTextEncode", "MakeAVideoPrior", "MakeAVideoSampler", "MakeAVideoFrameInterpolator",
              "MakeAVideoUpscaler"}
    assert stages <= ours
    for name, display in pack.NODE_DISPLAY_NAME_MAPPINGS.items():
        assert info[name]["display_name"] == display
        assert info[name]["output"] == list(pack.NODE_CLASS_MAPPINGS[name].RETURN_TYPES)


def test_model_folder_lists_announced_and_shipped_paths(host):
    files = host.object_info("MakeAVideoDecoderLoader")["MakeAVideoDecoderLoader"]["input"]["required"]["ckpt_name"][0]
    assert {"mav-tiny/decoder.safetensors", "alt/decoder.safetensors"} <= set(files)
    folders = host.object_info("MakeAVideoBundleLoader")["MakeAVideoBundleLoader"]["input"]["required"]["folder"][0]
    assert {"mav-tiny", "alt"} <= set(folders)


@pytest.mark.parametrize("ui_path", UI_FILES, ids=lambda p: p.stem)
def test_ui_workflow_matches_object_info_and_its_api_file(host, ui_path):
    ui = json.loads(ui_path.read_text())
    info = host.object_info()
    assert check_ui_workflow(ui, info) == []
    api_path = ui_path.with_name(ui_path.stem + "_api.json")
    assert ui_to_api(ui, info) == json.loads(api_path.read_text()), f"{api_path.name} is out of date"


def test_ui_check_finds_a_mistyped_link(host):
    ui = json.loads((WORKFLOWS / "text_to_video.json").read_text())
    ui["links"][0][5] = "MAV_PRIOR"
    problems = check_ui_workflow(ui, host.object_info())
    assert problems and "MAV_PRIOR" in problems[0]


@pytest.mark.parametrize("api_path", API_FILES, ids=lambda p: p.stem)
def test_api_workflow_runs_to_a_video(host, api_path):
    api = fast(json.loads(api_path.read_text()))
    with host.websocket() as events:
        history = host.wait_history(host.queue_prompt(api, client_id=events.client_id), timeout=300)
        time.sleep(0.5)
        previews = events.previews()
    assert history_status(history) == "success", history.get("status")
    files = host.output_files(history)
    assert files and all(f.suffix in (".mp4", ".webp") for f in files), files
    assert previews, "no preview images during sampling"
    if api_path.stem == "text_to_video_api":
        from mav_core.io.video import read_video
        frames, fps = read_video(files[0])
        # 4 frames -> interpolated x2 -> 7; 32 -> SR^t_l 64 -> SR_h 128
        assert tuple(frames.shape) == (7, 4 * SIZE, 4 * SIZE, 3)
        assert fps == pytest.approx(8.0, rel=1e-3)


def _sampler_graph(decoder="mav-tiny/decoder.safetensors", seed=1, steps=1, frames=4, prefix="mav/frames"):
    return {
        "1": {"class_type": "MakeAVideoTextEncoderLoader", "inputs": {"ckpt_name": "mav-tiny/text.safetensors"}},
        "2": {"class_type": "MakeAVideoDecoderLoader", "inputs": {"ckpt_name": decoder}},
        "3": {"class_type": "MakeAVideoTextEncode", "inputs": {"text_encoder": ["1", 0], "text": "a red circle"}},
        "4": {"class_type": "MakeAVideoTextEncode", "inputs": {"text_encoder": ["1", 0], "text": ""}},
        "5": {"class_type": "MakeAVideoSampler", "inputs": {
            "decoder": ["2", 0], "positive": ["3", 0], "negative": ["4", 0], "seed": seed, "steps": steps, "cfg": 3.0,
            "sampler_name": "ddim", "frames": frames, "fps": 6.0, "width": SIZE, "height": SIZE, "denoise": 1.0}},
        "6": {"class_type": "SaveImage", "inputs": {"images": ["5", 0], "filename_prefix": prefix}},
    }


def test_bad_prompt_is_rejected_naming_our_input(host):
    graph = _sampler_graph()
    graph["5"]["inputs"]["frames"] = 0
    with pytest.raises(PromptRejected) as rejected:
        host.queue_prompt(graph)
    assert rejected.value.status == 400
    assert "frames" in json.dumps(rejected.value.body["node_errors"]["5"])
    graph = _sampler_graph()
    graph["5"]["inputs"]["decoder"] = ["1", 0]   # a text encoder into the decoder slot
    with pytest.raises(PromptRejected) as rejected:
        host.queue_prompt(graph)
    assert "MAV_TEXT" in json.dumps(rejected.value.body) and "MAV_DECODER" in json.dumps(rejected.value.body)


def test_wrong_checkpoint_in_loader_is_refused_naming_file_and_stage(host):
    """Judged from the file's header at validation: an HTTP 400 before anything runs."""
    graph = _sampler_graph(decoder="mav-tiny/sr_frame.safetensors")
    status, body = host.post_prompt(graph)
    assert status == 400, body
    loader = next(k for k, v in graph.items() if v["class_type"] == "MakeAVideoDecoderLoader")
    errors = body["node_errors"][loader]["errors"]
    assert any(e["extra_info"].get("input_name") == "ckpt_name" and "sr_frame.safetensors" in e["details"]
               and "expected 'decoder'" in e["details"] for e in errors), errors


def test_interrupt_stops_sampling(host):
    graph = _sampler_graph(steps=1000, frames=16, seed=11)
    with host.websocket() as events:
        prompt_id = host.queue_prompt(graph, client_id=events.client_id)
        deadline = time.monotonic() + 120
        while not any(e.get("node") == "5" for e in events.events_of("progress")):
            assert time.monotonic() < deadline, "the sampler reported no progress"
            time.sleep(0.1)
        started = time.monotonic()
        assert host.interrupt() == 200
        history = host.wait_history(prompt_id, timeout=60)
        stopped_after = time.monotonic() - started
        steps_done = max(e["value"] for e in events.events_of("progress") if e.get("node") == "5")
    print(f"interrupted after step {steps_done}/1000; the run ended {stopped_after:.2f} s after /interrupt")
    assert history_status(history) == "error"
    assert "execution_interrupted" in history_events(history)
    assert steps_done < 1000 and stopped_after < 30


def _frames_of(history, host):
    import numpy as np
    from PIL import Image
    files = sorted(host.output_files(history))
    return np.stack([np.asarray(Image.open(f)) for f in files])


def _cached_nodes(history) -> list:
    return history_events(history).get("execution_cached", {}).get("nodes", [])


def test_checkpoint_swap_changes_output_and_same_seed_reproduces(host):
    first = host.run_prompt(_sampler_graph(prefix="swap/a1"), timeout=120)
    swapped = host.run_prompt(_sampler_graph(decoder="alt/decoder.safetensors", prefix="swap/b"), timeout=120)
    again = host.run_prompt(_sampler_graph(prefix="swap/a2"), timeout=120)
    for h in (first, swapped, again):
        assert history_status(h) == "success", h.get("status")
    assert "5" not in _cached_nodes(again), "the sampler did not run again"
    a1, b, a2 = (_frames_of(h, host) for h in (first, swapped, again))
    assert a1.shape == (4, SIZE, SIZE, 3)
    assert (a1 == a2).all(), "same checkpoint and seed gave different frames"
    assert not (a1 == b).all(), "swapping the decoder checkpoint did not change the frames"


def test_graph_mixing_host_nodes(host):
    graph = _sampler_graph(prefix="mixed/unused")
    del graph["6"]
    graph["7"] = {"class_type": "ImageScale", "inputs": {"image": ["5", 0], "upscale_method": "bilinear",
                                                         "width": 48, "height": 40, "crop": "disabled"}}
    graph["8"] = {"class_type": "CreateVideo", "inputs": {"images": ["7", 0], "fps": ["5", 1]}}
    graph["9"] = {"class_type": "SaveVideo", "inputs": {"video": ["8", 0], "filename_prefix": "mixed/video",
                                                        "format": "auto", "codec": "auto"}}
    graph["10"] = {"class_type": "SaveAnimatedWEBP", "inputs": {"images": ["7", 0], "filename_prefix": "mixed/anim",
                                                                "fps": ["5", 1], "lossless": True, "quality": 80,
                                                                "method": "fastest"}}
    history = host.run_prompt(graph, timeout=120)
    assert history_status(history) == "success", history.get("status")
    files = {f.suffix: f for f in host.output_files(history)}
    assert set(files) == {".mp4", ".webp"}
    from mav_core.io.video import read_video
    frames, fps = read_video(files[".mp4"])
    assert tuple(frames.shape) == (4, 40, 48, 3) and fps == pytest.approx(6.0, rel=1e-3)


def test_client_queues_with_overrides_and_downloads(host, tmp_path):
    import subprocess
    api = fast(json.loads((WORKFLOWS / "text_to_video_api.json").read_text()))
    workflow = tmp_path / "wf.json"
    workflow.write_text(json.dumps(api))
    out = tmp_path / "out"
    client = str(REPO_ROOT / "scripts" / "comfy_client.py")
    env = {name: value for name, value in os.environ.items() if name != "PYTHONPATH"}   # stdlib only: no pack
    run = subprocess.run([sys.executable, client, str(workflow), "--server", f"127.0.0.1:{host.port}",
                          "--set", "prompt=a blue square on a gray background", "--seed", "3", "--frames", "3",
                          "--set", "Upscaler SR_h (frames).frame_chunk=4", "-o", str(out)],
                         capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    files = [Path(line) for line in run.stdout.split()]
    assert len(files) == 1 and files[0].parent == out and files[0].suffix == ".mp4"
    from mav_core.io.video import read_video
    frames, _ = read_video(files[0])
    assert frames.shape[0] == 5                      # 3 frames -> interpolated x2 -> 5
    assert "step 1/1" in run.stderr                  # progress followed over the websocket
    rejected = subprocess.run([sys.executable, client, str(workflow), "--server",
                               f"127.0.0.1:{host.port}", "--frames", "0", "-o", str(out)],
                              capture_output=True, text=True, timeout=60, env=env, cwd=tmp_path)
    assert rejected.returncode == 2 and "frames" in rejected.stderr and "400" in rejected.stderr


INPUT_FILE_LOADERS = ("MakeAVideoLoadImage", "MakeAVideoLoadVideo", "MakeAVideoLoadImages")


def with_optional_defaults(api: dict, info: dict) -> dict:
    """`api` with each optional widget input it leaves out set to its declared default (a combo without one:
    its first choice), as the front end fills a workflow saved before that input existed; the host runs
    both graphs the same way."""
    api = json.loads(json.dumps(api))
    for node in api.values():
        optional = info.get(node["class_type"], {}).get("input", {}).get("optional", {})
        for name, spec in optional.items():
            options = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
            if name in node["inputs"] or not (isinstance(spec[0], list) or spec[0] in ("INT", "FLOAT", "BOOLEAN",
                                                                                        "STRING", "COMBO")):
                continue
            if "default" in options:
                node["inputs"][name] = options["default"]
            elif isinstance(spec[0], list) and spec[0]:
                node["inputs"][name] = spec[0][0]
    return api


def test_front_end_exports_each_ui_workflow_as_its_api_file(host, tmp_path):
    """The real ComfyUI front end (headless Chromium) loads every UI workflow and its own API export equals
    the committed *_api.json (with the defaults of optional inputs the files leave out): the UI files are what
    the front end reads, not only what our converter reads. Every node of the file is created (none unknown to
    the front end) and every file the pack's loaders load is one the host lists (the examples/ inputs)."""
    try:
        from test_browser import Browser, chromium_path, open_front_end
    except ImportError as error:
        pytest.skip(f"browser helpers unavailable: {error}")
    if chromium_path() is None:
        pytest.skip("no chromium executable (apt-get install -y chromium, or set CHROMIUM=/path)")
    try:
        browser = Browser(chromium_path(), tmp_path)
    except RuntimeError as error:
        pytest.skip(f"chromium does not start headless here: {error}")
    info = host.object_info()
    checked = []
    try:
        open_front_end(host, browser.page)
        for ui_path in UI_FILES:
            ui = json.loads(ui_path.read_text())
            loaded = browser.page.evaluate(
                f"(async () => {{ await window.app.loadGraphData({json.dumps(ui)}); "
                "const nodes = window.app.graph.nodes; "
                "return { types: nodes.map(n => n.type), missing: nodes.filter(n => !n.constructor.comfyClass)"
                ".map(n => n.type), output: (await window.app.graphToPrompt()).output }; })()")
            assert loaded["missing"] == [], f"{ui_path.name}: node types the front end does not know"
            assert sorted(loaded["types"]) == sorted(n["type"] for n in ui["nodes"])
            exported = loaded["output"]
            api = json.loads(ui_path.with_name(ui_path.stem + "_api.json").read_text())
            assert exported == with_optional_defaults(api, info), \
                f"{ui_path.name}: the front end exports a different API graph"
            for key, node in exported.items():
                required = info[node["class_type"]]["input"].get("required", {})
                for name, value in node["inputs"].items():
                    choices = required.get(name, [None])[0]
                    if isinstance(choices, list) and node["class_type"] in INPUT_FILE_LOADERS:
                        assert value in choices, f"{ui_path.name} node {key}: {name}={value!r} is not listed"
                        checked.append(value)
        assert len(checked) >= 6, checked   # the image and video workflows' input files
    finally:
        browser.close()


def _regression_graph(seed: int, mode: str = "interpolate", prefix: str = "mav/regression"):
    return {
        "1": {"class_type": "LoadImage", "inputs": {"image": "mav_first.png"}},
        "2": {"class_type": "LoadImage", "inputs": {"image": "mav_last.png"}},
        "3": {"class_type": "ImageBatch", "inputs": {"image1": ["1", 0], "image2": ["2", 0]}},
        "4": {"class_type": "ImageScale", "inputs": {"image": ["3", 0], "upscale_method": "bilinear", "width": SIZE,
                                                     "height": SIZE, "crop": "center"}},
        "5": {"class_type": "MakeAVideoInterpolatorLoader",
              "inputs": {"ckpt_name": "mav-tiny/interpolator_regression.safetensors"}},
        "6": {"class_type": "MakeAVideoFrameInterpolator", "inputs": {
            "interpolator": ["5", 0], "images": ["4", 0], "fps": 2.0, "multiplier": 4, "mode": mode, "seed": seed,
            "steps": 1 + seed, "extra_frames": 2}},
        "7": {"class_type": "SaveImage", "inputs": {"images": ["6", 0], "filename_prefix": f"{prefix}{seed}"}},
    }


def test_shipped_regression_interpolator_through_the_api(host):
    """The shipped one-pass ↑F is listed beside the untrained models, runs from the HTTP API, gives the same
    frames whatever the seed and steps, and refuses extrapolation naming the input."""
    files = host.object_info("MakeAVideoInterpolatorLoader")["MakeAVideoInterpolatorLoader"]["input"]["required"]
    assert "mav-tiny/interpolator_regression.safetensors" in files["ckpt_name"][0]
    outputs = []
    for seed in (1, 2):
        history = host.wait_history(host.queue_prompt(_regression_graph(seed)), timeout=120)
        assert history_status(history) == "success", history.get("status")
        frames = sorted(host.output_files(history))
        assert len(frames) == 5                                   # (2 - 1) * 4 + 1
        from PIL import Image
        outputs.append(np.stack([np.asarray(Image.open(f)) for f in frames]))   # pixels (the PNGs embed the seed)
    assert np.array_equal(outputs[0], outputs[1]) and outputs[0].shape == (5, SIZE, SIZE, 3)
    history = host.wait_history(host.queue_prompt(_regression_graph(3, mode="extrapolate")), timeout=120)
    assert history_status(history) == "error"
    error = history_events(history)["execution_error"]
    assert error["node_id"] == "6" and "mode: 'extrapolate' needs the diffusion" in error["exception_message"], error


def test_sampler_sliding_windows_through_the_api(host):
    """context_window from the API: a clip longer than the window samples to the requested frames; an
    overlap not below the window is refused at run time naming the input."""
    graph = _sampler_graph(frames=6, seed=21, prefix="mav/windows")
    graph["5"]["inputs"].update(context_window=3, context_overlap=1)
    history = host.wait_history(host.queue_prompt(graph), timeout=120)
    assert history_status(history) == "success", history.get("status")
    assert len(host.output_files(history)) == 6
    graph["5"]["inputs"].update(context_overlap=3, seed=22)
    history = host.wait_history(host.queue_prompt(graph), timeout=120)
    assert history_status(history) == "error"
    assert "context_overlap" in history_events(history)["execution_error"]["exception_message"]


def _log_after(host, mark: int) -> str:
    return host.log_text()[mark:]


def test_host_model_management_owns_our_models(host):
    """Our models load through the host's model management (a ModelPatcher each): the host logs the load,
    keeps them loaded between prompts, and /free unloads them, after which the next run loads them again.
    The loaders follow the host's UNet dtype (float32 under --cpu) and the memory check asks the host."""
    assert host.free(unload_models=True, free_memory=False) == 200   # whatever earlier tests left loaded
    time.sleep(1.0)   # the host's prompt worker handles /free asynchronously
    mark = len(host.log_text())
    graph = _sampler_graph(seed=21, prefix="mm/a")
    graph["3"]["inputs"]["text"] = "a blue square"   # a prompt no earlier test encoded: Text Encode runs
    first = host.run_prompt(graph, timeout=120)
    assert history_status(first) == "success", first.get("status")
    log = _log_after(host, mark)
    assert "Requested to load MakeAVideoSpaceTimeUNet" in log, log[-3000:]
    assert "Requested to load MakeAVideoTextImageEncoder" in log
    assert "mav-tiny/decoder.safetensors (decoder) in float32, precision auto" in host.log_text()   # this or an earlier load

    mark = len(host.log_text())
    again = host.run_prompt(_sampler_graph(seed=22, prefix="mm/b"), timeout=120)
    assert history_status(again) == "success" and "5" not in _cached_nodes(again)
    assert "Requested to load MakeAVideoSpaceTimeUNet" not in _log_after(host, mark), "the loaded decoder was not kept"

    assert host.free(unload_models=True, free_memory=False) == 200
    time.sleep(1.0)   # the host's prompt worker handles /free asynchronously
    mark = len(host.log_text())
    after = host.run_prompt(_sampler_graph(seed=23, prefix="mm/c"), timeout=120)
    assert history_status(after) == "success"
    assert "2" in _cached_nodes(after), "the loader ran again: /free should unload models, not drop them"
    assert "Requested to load MakeAVideoSpaceTimeUNet" in _log_after(host, mark), "/free did not unload the decoder"


def test_memory_check_asks_the_host(host):
    api = _sampler_graph(seed=24, prefix="mm/huge")
    api["5"]["inputs"].update(frames=1024, width=4096, height=4096)
    history = host.run_prompt(api, timeout=120)
    assert history_status(history) == "error"
    message = json.dumps(history_events(history).get("execution_error", {}))
    assert "GiB is available (as the host reports)" in message, message[:2000]
