"""A closed-loop workflow through the real host's API: the Spatiotemporal Sampler's loop, noise and FreeInit
inputs, and sliding windows together with a control whose hint is a whole video (each window takes its
frames of it). Bad values are refused naming the input: a noise type the combo lacks at validation
(HTTP 400), a loop of one frame at run time."""
from __future__ import annotations

import json

import numpy as np
import pytest

from comfy_server import PromptRejected, history_events, history_status

FRAMES = 8
SIZE = 32


def _loop_graph(seed: int = 3, loop: bool = True, prefix: str = "mav/loop") -> dict:
    sampler = {"decoder": ["1", 2], "negative": ["3", 0], "seed": seed, "steps": 2, "cfg": 4.0, "sampler_name": "ddim",
               "frames": FRAMES, "fps": 8.0, "width": SIZE, "height": SIZE, "denoise": 1.0}
    return {
        "1": {"class_type": "MakeAVideoBundleLoader", "inputs": {"folder": "mav-tiny"}},
        "2": {"class_type": "MakeAVideoTextEncode", "inputs": {"text_encoder": ["1", 0],
                                                               "text": "a small red circle on a dark blue background"}},
        "3": {"class_type": "MakeAVideoTextEncode", "inputs": {"text_encoder": ["1", 0], "text": ""}},
        "4": {"class_type": "MakeAVideoPrior", "inputs": {"prior": ["1", 1], "conditioning": ["2", 0], "seed": 0,
                                                          "steps": 4, "cfg": 1.0}},
        "5": {"class_type": "MakeAVideoSampler", "inputs": {**sampler, "positive": ["4", 0], "loop": loop,
                                                            "noise": "correlated", "noise_share": 0.5,
                                                            "freeinit_iterations": 1}},
        "6": {"class_type": "SaveImage", "inputs": {"images": ["5", 0], "filename_prefix": prefix}},
        # windows + a control: the loop's own frames as the Canny hint video, 8 frames in windows of 4
        "7": {"class_type": "MakeAVideoControlLoader", "inputs": {"ckpt_name": "mav-tiny/control_canny.safetensors"}},
        "8": {"class_type": "MakeAVideoApplyControl", "inputs": {
            "conditioning": ["4", 0], "control": ["7", 0], "hint": ["5", 0], "hint_type": "canny", "strength": 1.0,
            "start_percent": 0.0, "end_percent": 1.0}},
        "9": {"class_type": "MakeAVideoSampler", "inputs": {**sampler, "positive": ["8", 0], "context_window": 4,
                                                            "context_overlap": 1, "loop": loop}},
        "10": {"class_type": "SaveImage", "inputs": {"images": ["9", 0], "filename_prefix": prefix + "_control"}},
    }


def _frames(host, history, node: str) -> np.ndarray:
    from PIL import Image
    names = [img["filename"] for img in history["outputs"][node]["images"]]
    files = sorted(f for f in host.output_files(history) if f.name in names)
    return np.stack([np.asarray(Image.open(f)) for f in files])


def test_loop_workflow_with_noise_options_and_windowed_control(comfy_server):
    host = comfy_server
    history = host.run_prompt(_loop_graph(), timeout=300)
    assert history_status(history) == "success", history.get("status")
    looped, controlled = _frames(host, history, "6"), _frames(host, history, "10")
    assert looped.shape == controlled.shape == (FRAMES, SIZE, SIZE, 3)
    history = host.run_prompt(_loop_graph(loop=False, prefix="mav/noloop"), timeout=300)
    assert history_status(history) == "success", history.get("status")
    assert not np.array_equal(_frames(host, history, "6"), looped)       # the loop input reached the sampler


def test_loop_and_noise_refusals_name_the_input(comfy_server):
    host = comfy_server
    graph = _loop_graph(seed=5)
    graph["5"]["inputs"]["noise"] = "pink"
    with pytest.raises(PromptRejected) as rejected:                   # a combo value the list lacks: HTTP 400
        host.queue_prompt(graph)
    assert rejected.value.status == 400 and "noise" in json.dumps(rejected.value.body["node_errors"]["5"])
    graph = _loop_graph(seed=4)
    graph["5"]["inputs"]["frames"] = 1
    history = host.run_prompt(graph, timeout=120)
    assert history_status(history) == "error"
    error = history_events(history)["execution_error"]
    assert error["node_id"] == "5" and "loop" in error["exception_message"], error
