"""MakeAVideo LoRA inside a real ComfyUI: LoRA files listed from the host's `loras` folder, merged into the
shipped MAV-Tiny decoder between the Bundle Loader and the Sampler.

The LoRA file is written here in kohya's layout (`lora_unet_<module>.lora_down.weight` / `lora_up` /
`alpha`) on the decoder's attention projections, together with the reference: the same deltas merged by
hand into a copy of the decoder, saved as an ordinary decoder file. Frames leave the graph through the
host's SaveImage (8-bit PNG)."""
from __future__ import annotations

import json
import time

import numpy as np
import pytest

from comfy_server import REPO_ROOT, ComfyServer, history_status

LORA_FILE = "mav_style_kohya.safetensors"
BAD_LORA_FILE = "mav_unknown_keys.safetensors"
MERGED_FILE = "lora-merged/decoder.safetensors"
SHIPPED_DECODER = REPO_ROOT / "mav_core" / "weights" / "mav-tiny" / "decoder.safetensors"
RANK, ALPHA = 4, 8.0
STRANGER = "lora_unet_down_blocks_9_attentions_0_proj_in.lora_down.weight"


def write_files(work) -> None:
    """The kohya LoRA, a LoRA with a key naming no layer, and the hand-merged decoder."""
    import torch
    from mav_core.io.checkpoints import atomic_save_file, save_model
    from mav_core.io.loader import load_model
    loaded = load_model(SHIPPED_DECODER, dtype=torch.float32)
    params = dict(loaded.module.named_parameters())
    layers = [k[:-len(".weight")] for k, p in params.items()
              if p.dim() == 2 and (".attn1.to_" in k or ".attn2.to_q" in k)]
    assert layers, "the shipped decoder has no attention projections"
    g = torch.Generator().manual_seed(0)
    lora = {}
    with torch.no_grad():
        for name in layers:
            w = params[name + ".weight"]
            up, down = torch.randn(w.shape[0], RANK, generator=g) * 0.2, torch.randn(RANK, w.shape[1], generator=g) * 0.2
            kohya = "lora_unet_" + name.replace(".", "_")
            lora |= {f"{kohya}.lora_down.weight": down, f"{kohya}.lora_up.weight": up,
                     f"{kohya}.alpha": torch.tensor(ALPHA)}
            w.copy_((w.double() + ALPHA / RANK * (up.double() @ down.double())).float())
    loras = work / "models" / "loras"
    atomic_save_file(lora, loras / LORA_FILE)
    atomic_save_file({**lora, STRANGER: torch.zeros(RANK, 8)}, loras / BAD_LORA_FILE)
    save_model(work / "models" / "makeavideo" / MERGED_FILE, loaded.module, "decoder", loaded.schedule,
               loaded.prediction)


@pytest.fixture(scope="module")
def server(comfy_host_paths, tmp_path_factory):
    work = tmp_path_factory.mktemp("lora_host")
    write_files(work)
    config = work / "host_lora_folder.yaml"
    config.write_text(f"makeavideo_lora_test:\n  base_path: {json.dumps(str(work))}\n  loras: models/loras\n")
    host = ComfyServer(host=comfy_host_paths, work_dir=work, extra_args=["--extra-model-paths-config", str(config)])
    with host.running(f"ComfyUI at {comfy_host_paths.root}"):
        yield host


def graph(prefix: str, lora: str | None = None, strength: float = 1.0, decoder_file: str | None = None) -> dict:
    """Bundle Loader (mav-tiny) -> Text Encode -> Prior -> [LoRA] -> Sampler (4 frames 32x32, 2 steps) -> SaveImage."""
    api = {
        "1": {"class_type": "MakeAVideoBundleLoader", "inputs": {"folder": "mav-tiny"}},
        "2": {"class_type": "MakeAVideoTextEncode", "inputs": {"text_encoder": ["1", 0], "text": "a red circle on a black background"}},
        "3": {"class_type": "MakeAVideoTextEncode", "inputs": {"text_encoder": ["1", 0], "text": ""}},
        "4": {"class_type": "MakeAVideoPrior", "inputs": {"prior": ["1", 1], "conditioning": ["2", 0], "seed": 0, "steps": 2, "cfg": 1.0}},
        "5": {"class_type": "MakeAVideoSampler", "inputs": {
            "decoder": ["1", 2], "positive": ["4", 0], "negative": ["3", 0], "seed": 3, "steps": 2, "cfg": 4.0,
            "sampler_name": "ddim", "frames": 4, "fps": 4.0, "width": 32, "height": 32, "denoise": 1.0}},
        "6": {"class_type": "SaveImage", "inputs": {"images": ["5", 0], "filename_prefix": prefix}},
    }
    if decoder_file is not None:
        api["7"] = {"class_type": "MakeAVideoDecoderLoader", "inputs": {"ckpt_name": decoder_file}}
        api["5"]["inputs"]["decoder"] = ["7", 0]
    if lora is not None:
        api["8"] = {"class_type": "MakeAVideoLora", "inputs": {"decoder": api["5"]["inputs"]["decoder"],
                                                                "lora_name": lora, "strength": strength}}
        api["5"]["inputs"]["decoder"] = ["8", 0]
    return api


def frames_of(server, api) -> np.ndarray:
    from PIL import Image
    history = server.run_prompt(api, timeout=300)
    assert history_status(history) == "success", (history.get("status"), server.log_tail(40))
    files = sorted(server.output_files(history))
    assert len(files) == 4, files
    return np.stack([np.asarray(Image.open(f).convert("RGB"), dtype=np.int16) for f in files])


def test_lora_node_lists_the_hosts_loras_folder(server):
    assert server.pack_import_errors() == [], server.log_tail(80)
    info = server.object_info("MakeAVideoLora")["MakeAVideoLora"]
    assert info["display_name"] == "MakeAVideo LoRA"
    assert {LORA_FILE, BAD_LORA_FILE} <= set(info["input"]["required"]["lora_name"][0])
    # the host's own LoraLoader lists the same folder
    host_list = server.object_info("LoraLoaderModelOnly")["LoraLoaderModelOnly"]["input"]["required"]["lora_name"][0]
    assert LORA_FILE in host_list


def test_strength_zero_is_bit_exact_and_the_lora_equals_its_merged_weights(server):
    started = time.monotonic()
    plain = frames_of(server, graph("lora/plain"))
    zero = frames_of(server, graph("lora/zero", LORA_FILE, 0.0))
    full = frames_of(server, graph("lora/full", LORA_FILE, 1.0))
    merged = frames_of(server, graph("lora/merged", decoder_file=MERGED_FILE))
    print(f"4 graphs in {time.monotonic() - started:.1f} s; LoRA vs plain: max |diff| "
          f"{np.abs(full - plain).max()} / 255, LoRA vs merged file: {np.abs(full - merged).max()} / 255")
    assert np.array_equal(zero, plain)
    assert np.abs(full - plain).mean() > 1.0, "the LoRA did not change the frames"
    assert np.abs(full - merged).max() <= 1, "the LoRA's frames differ from the hand-merged decoder's"
    # the input decoder is left as it was: the plain graph again gives the same frames
    assert np.array_equal(frames_of(server, graph("lora/plain-again")), plain)


def test_unknown_keys_fail_naming_them(server):
    history = server.run_prompt(graph("lora/bad", BAD_LORA_FILE, 1.0), timeout=300)
    assert history_status(history) == "error"
    assert STRANGER in json.dumps(history.get("status")), history.get("status")
