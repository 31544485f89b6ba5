"""MakeAVideo Image Encode inside a real ComfyUI: the shipped image_animation (Load Image -> Image Encode with
prompt_from_image -> Sampler positive, the image as start_images) and image_interpolation (Image Encode ->
Frame Interpolator positive) API workflows run from the API with a rendered start
image in the host's input folder (as input/examples/<name>, which takes precedence over the pack's example); the embedding changes the animation; a wrong model type is refused in
validation. Step counts are cut to 2 so each graph takes seconds on a CPU."""
from __future__ import annotations

import json
import time

import numpy as np
import pytest

from comfy_server import REPO_ROOT, PromptRejected, history_status

WORKFLOWS = REPO_ROOT / "workflows"


@pytest.fixture(scope="module")
def host(comfy_server):
    """The server with rendered world scenes as the workflows' input images."""
    from PIL import Image
    from mav_core.data.world import Scene, render_scenes
    scenes = {"mav_start.png": Scene(shape="square", colour="yellow", size="large", background="gray", x=0.4, y=0.45),
              "mav_first.png": Scene(shape="circle", colour="red", size="large", background="black", x=0.3, y=0.3),
              "mav_last.png": Scene(shape="circle", colour="red", size="large", background="black", x=0.7, y=0.7)}
    folder = comfy_server.input_dir / "examples"
    folder.mkdir(exist_ok=True)
    for name, scene in scenes.items():
        Image.fromarray(render_scenes([scene], 64)[0]).save(folder / name)
    return comfy_server


def _api(stem: str, prefix: str, extra_frames: int = 3) -> dict:
    api = json.loads((WORKFLOWS / f"{stem}_api.json").read_text())
    for node in api.values():
        inputs = node["inputs"]
        if "steps" in inputs:
            inputs["steps"] = 2
        if inputs.get("extra_frames"):
            inputs["extra_frames"] = extra_frames
        if "filename_prefix" in inputs:
            inputs["filename_prefix"] = prefix
    return api


def _node_id(api: dict, class_type: str) -> str:
    return next(k for k, n in api.items() if n["class_type"] == class_type)


def _run(host, api: dict):
    with host.websocket() as events:
        history = host.wait_history(host.queue_prompt(api, client_id=events.client_id), timeout=300)
        time.sleep(0.5)
        executed = {e.get("node") for e in events.events_of("executing")}
    assert history_status(history) == "success", history.get("status")
    return history, executed


def _webp_frames(path) -> np.ndarray:
    from PIL import Image, ImageSequence
    with Image.open(path) as im:
        return np.stack([np.asarray(f.convert("RGB")) for f in ImageSequence.Iterator(im)])


def test_image_animation_workflow_runs_with_the_image_embedding(host):
    api = _api("image_animation", "mav_encode/anim")
    encode = _node_id(api, "MakeAVideoImageEncode")
    history, executed = _run(host, api)
    assert encode in executed, "the Image Encode node did not run"
    files = host.output_files(history)
    assert [f.suffix for f in files] == [".webp"]
    frames = _webp_frames(files[0])
    assert frames.shape == (16, 32, 32, 3)   # the input image + 15 frames D^t continues it with, at 32x32
    # without Image Encode (the negative prompt as positive), the same seed gives another animation
    plain = _api("image_animation", "mav_encode/plain")
    sampler = plain[_node_id(plain, "MakeAVideoSampler")]["inputs"]
    sampler["positive"] = sampler["negative"]
    history, executed = _run(host, plain)
    other = _webp_frames(host.output_files(history)[0])
    assert np.abs(other[0].astype(int) - frames[0]).max() <= 2            # both start at the input image
    assert np.abs(other[1:].astype(int) - frames[1:]).max() > 2           # the embedding changed the motion


def test_image_interpolation_workflow_runs_with_the_pair_embedding(host):
    api = _api("image_interpolation", "mav_encode/interp")
    history, executed = _run(host, api)
    assert _node_id(api, "MakeAVideoImageEncode") in executed
    frames = _webp_frames(host.output_files(history)[0])
    assert frames.shape == (9, 64, 64, 3)   # 2 images, ×8 -> 9 frames, SR^t_l ×2


def test_wrong_model_into_image_encode_is_refused(host):
    api = _api("image_animation", "mav_encode/bad")
    encode = _node_id(api, "MakeAVideoImageEncode")
    api[encode]["inputs"]["text_encoder"] = [_node_id(api, "MakeAVideoDecoderLoader"), 0]
    with pytest.raises(PromptRejected) as rejected:
        host.queue_prompt(api)
    body = json.dumps(rejected.value.body)
    assert rejected.value.status == 400 and encode in rejected.value.body.get("node_errors", {})
    assert "MAV_DECODER" in body and "MAV_TEXT" in body
