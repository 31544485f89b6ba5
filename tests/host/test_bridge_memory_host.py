"""The host's model management owns the bridged MODEL, in a real ComfyUI server: while the host's KSampler
samples through the MakeAVideo Model Bridge, the host lists the bridged model among its loaded models
(comfy.model_management.current_loaded_models, read inside the server process by a test-only custom node's
route); after POST /free {"unload_models": true, "free_memory": true} it is no longer loaded, no bridged
model object is alive in the server, and the server's resident memory (VmRSS) is back within 10% of the
baseline: the RSS after a warm-up run of a non-bridge prompt (the same text encoder and prior with our own
Sampler on the shipped MAV-Tiny decoder) and the same /free. (The heap the freed weights leave behind is
handed back to the system by the bridge, nodes/model_bridge.py: without it glibc keeps most of it.)

The bridged decoder is a MAV-layout pixel decoder of the shipped decoder's structure, widened to
128/256/384 channels (66.4M parameters, 266 MB in float32), written at test time into this module's own
server folder, so the model is large against the server's baseline RSS: the test also checks that the
loaded server is more than 10% above the baseline, i.e. that a bridged model left in memory would fail it.
"""
from __future__ import annotations

import dataclasses
import platform
import time
from pathlib import Path

import pytest

from comfy_server import ComfyServer, history_status

FOLDER = "bridge-memory"
DECODER_FILE = f"{FOLDER}/decoder.safetensors"
SHIPPED_DECODER = Path(__file__).resolve().parents[2] / "mav_core" / "weights" / "mav-tiny" / "decoder.safetensors"
WIDE_CHANNELS = (128, 256, 384)
MEMORY_LIMIT = 0.10
BRIDGED_CLASS = "MakeAVideoModel"
KSAMPLER_NODE = "6"

PROBE = '''
"""Test-only: GET /mav_test/loaded_models lists comfy.model_management.current_loaded_models (the class of
each loaded ModelPatcher's model) and counts the live objects of the bridged model's class."""
import gc

from aiohttp import web

import comfy.model_management as mm
import server


@server.PromptServer.instance.routes.get("/mav_test/loaded_models")
async def loaded_models(request):
    loaded = []
    for entry in list(mm.current_loaded_models):
        patcher = entry.model
        loaded.append(None if patcher is None else type(patcher.model).__name__)
    alive = sum(type(o).__name__ == request.query.get("alive", "") for o in gc.get_objects())
    return web.json_response({"loaded": loaded, "alive": alive})


NODE_CLASS_MAPPINGS = {}
'''


def write_wide_decoder(path: Path) -> int:
    """The shipped decoder's config and schedule at WIDE_CHANNELS, default init, float32; returns its bytes."""
    import torch
    from mav_core.io.checkpoints import save_model
    from mav_core.io.loader import load_model
    from mav_core.models.unet import SpaceTimeUNet
    shipped = load_model(SHIPPED_DECODER, dtype=torch.float32)
    torch.manual_seed(0)
    wide = SpaceTimeUNet(dataclasses.replace(shipped.config, block_out_channels=WIDE_CHANNELS)).eval()
    path.parent.mkdir(parents=True, exist_ok=True)
    save_model(path, wide, "decoder", shipped.schedule, shipped.prediction)
    return sum(p.numel() * p.element_size() for p in wide.parameters())


@pytest.fixture(scope="module")
def memory_host(comfy_host_paths, tmp_path_factory):
    work = tmp_path_factory.mktemp("bridge_memory")
    host = ComfyServer(host=comfy_host_paths, work_dir=work)
    host.model_bytes = write_wide_decoder(host.models_dir / DECODER_FILE)
    host.custom_nodes_dir.mkdir(parents=True, exist_ok=True)
    (host.custom_nodes_dir / "mav_memory_probe.py").write_text(PROBE)
    with host.running(f"ComfyUI at {comfy_host_paths.root}"):
        yield host


def _conditioning() -> dict:
    return {
        "1": {"class_type": "MakeAVideoBundleLoader", "inputs": {"folder": "mav-tiny"}},
        "2": {"class_type": "MakeAVideoTextEncode", "inputs": {"text_encoder": ["1", 0], "text": "a red circle on a black background"}},
        "3": {"class_type": "MakeAVideoTextEncode", "inputs": {"text_encoder": ["1", 0], "text": ""}},
        "4": {"class_type": "MakeAVideoPrior", "inputs": {"prior": ["1", 1], "conditioning": ["2", 0], "seed": 0, "steps": 2, "cfg": 1.0}},
    }


def our_sampler_graph(seed: int) -> dict:
    """The warm-up, no bridge: Bundle (mav-tiny) -> Text Encode -> Prior -> our Sampler -> PreviewImage."""
    return {**_conditioning(),
            "5": {"class_type": "MakeAVideoSampler", "inputs": {
                "decoder": ["1", 2], "positive": ["4", 0], "negative": ["3", 0], "seed": seed, "steps": 2, "cfg": 4.0,
                "sampler_name": "ddim", "frames": 2, "fps": 4.0, "width": 16, "height": 16, "denoise": 1.0}},
            "6": {"class_type": "PreviewImage", "inputs": {"images": ["5", 0]}}}


def bridge_graph(seed: int, steps: int) -> dict:
    """The same conditioning, the wide decoder -> Model Bridge -> the host's KSampler -> SaveLatent."""
    return {**_conditioning(),
            "7": {"class_type": "MakeAVideoDecoderLoader", "inputs": {"ckpt_name": DECODER_FILE}},
            "5": {"class_type": "MakeAVideoModelBridge", "inputs": {"decoder": ["7", 0], "frames": 2, "width": 16,
                                                                    "height": 16, "batch_size": 1, "fps": 4.0}},
            KSAMPLER_NODE: {"class_type": "KSampler", "inputs": {
                "model": ["5", 0], "seed": seed, "steps": steps, "cfg": 4.0, "sampler_name": "euler",
                "scheduler": "karras", "positive": ["4", 0], "negative": ["3", 0], "latent_image": ["5", 1],
                "denoise": 1.0}},
            "8": {"class_type": "SaveLatent", "inputs": {"samples": [KSAMPLER_NODE, 0], "filename_prefix": "latents/bridge_memory"}}}


def probe(host) -> dict:
    status, body = host._request("GET", f"/mav_test/loaded_models?alive={BRIDGED_CLASS}")
    assert status == 200, (status, body)
    return body


def settled_rss(host, free: bool) -> int:
    """Server RSS with the queue empty (after POST /free has been handled, when `free`): the lowest of
    five readings 0.3 s apart, 3 s after the worker settled (the worker runs gc.collect right after /free)."""
    host.wait_idle()
    if free:
        assert host.free(unload_models=True, free_memory=True) == 200
    time.sleep(3.0)
    readings = []
    for _ in range(5):
        readings.append(host.rss_bytes())
        time.sleep(0.3)
    return min(readings)


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def test_host_owns_the_bridged_model_and_free_returns_its_memory(memory_host):
    host = memory_host
    assert host.pack_import_errors() == [], host.log_tail(80)
    warm = host.run_prompt(our_sampler_graph(1), timeout=300)
    assert history_status(warm) == "success", (warm.get("status"), host.log_tail(40))
    baseline = settled_rss(host, free=True)
    before = probe(host)
    assert BRIDGED_CLASS not in before["loaded"] and before["alive"] == 0, before

    with host.websocket() as events:
        prompt_id = host.queue_prompt(bridge_graph(5, steps=8), client_id=events.client_id)
        started = events.wait_event("progress", lambda d: d.get("node") == KSAMPLER_NODE and d.get("value", 0) >= 1,
                                    timeout=300)
        assert started is not None, host.log_tail(40)
        during = probe(host)
        running = host.queue()["queue_running"]
        history = host.wait_history(prompt_id, timeout=300)
    assert history_status(history) == "success", (history.get("status"), host.log_tail(40))
    assert running, "the prompt had finished before the loaded models were read: not read while sampling"
    assert BRIDGED_CLASS in during["loaded"], f"the host did not list the bridged model while sampling: {during}"

    loaded_rss = settled_rss(host, free=False)
    kept = probe(host)
    freed_rss = settled_rss(host, free=True)
    after = probe(host)
    mib = 2 ** 20
    print(f"\nCPU {cpu_model()} (shared machine), ComfyUI --cpu; bridged decoder {host.model_bytes / mib:.0f} MiB "
          f"float32; server RSS: baseline (warm-up with our Sampler + /free) {baseline / mib:.0f} MiB, "
          f"bridged model loaded {loaded_rss / mib:.0f} MiB ({loaded_rss / baseline:.2f}x baseline), after /free "
          f"{freed_rss / mib:.0f} MiB ({100 * (freed_rss / baseline - 1):+.1f} % of baseline); loaded while "
          f"sampling {during['loaded']}, after the run {kept['loaded']}, after /free {after['loaded']} "
          f"({after['alive']} {BRIDGED_CLASS} alive)")
    assert BRIDGED_CLASS in kept["loaded"], f"the host did not keep the bridged model loaded after the run: {kept}"
    assert loaded_rss > baseline * (1 + MEMORY_LIMIT), \
        "the loaded bridged model is not measurable against the baseline: the memory check would prove nothing"
    assert BRIDGED_CLASS not in after["loaded"], f"/free left the bridged model loaded: {after}"
    assert after["alive"] == 0, f"{after['alive']} {BRIDGED_CLASS} object(s) still alive in the server after /free"
    assert freed_rss <= baseline * (1 + MEMORY_LIMIT), \
        f"server RSS {freed_rss / mib:.0f} MiB after /free, baseline {baseline / mib:.0f} MiB"
