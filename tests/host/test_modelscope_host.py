"""Third-party checkpoints inside a real ComfyUI, decoded and text-encoded by the host's own nodes:
the committed ModelScope / Zeroscope / inflated-SD workflows (CLIPLoader -> CLIPTextEncode -> our loader
-> our Sampler -> the host's VAE Decode -> CreateVideo -> SaveVideo) run to a video file.

Every model file is synthesised at test time into this module's own server folders (never committed):
  - tiny UNet3Ds (block_out_channels 32/64/64/64, 1 layer per block, head size 8, random weights) in the
    ORIGINAL ModelScope key layout (`input_blocks.1.0.temopral_conv.*`) and in the diffusers folder layout
    (Zeroscope), with 768-wide cross-attention to take CLIP-L tokens, plus a 1024-wide one (ModelScope's
    real width) for the width-mismatch error;
  - a random CLIP-L text encoder (HF CLIPTextModel layout, fp16, 123.6M parameters, ~247 MB): the host
    builds its CLIP from fixed JSON configs (12 x 768 for CLIP-L, 24 x 1024 for OpenCLIP ViT-H) and leaves
    weights missing from the file uninitialised (torch.empty), so a complete CLIP-L is the smallest file
    its CLIPLoader turns into a usable encoder;
  - a random TAESD (the host's tiny SD VAE, 2.4M parameters, scale 0.18215 as the host's VAELoader sets it for
    "taesd"): the SD AutoencoderKL's widths are fixed in the host (ch 128, ch_mult 1/2/4/4), TAESD is the
    smallest complete VAE its VAELoader accepts;
  - a tiny SD 1.x image UNet in LDM layout (`model.diffusion_model.*`) and a motion file for its inflation.
The host's text_encoders / vae folders are announced by a second --extra-model-paths-config YAML, so this
module starts its own server (the shared one only announces `makeavideo`).
"""
from __future__ import annotations

import json
import math
import time

import pytest

from comfy_server import REPO_ROOT, ComfyServer, history_events, history_status

WORKFLOWS = REPO_ROOT / "workflows"
CLIP_FILE = "clip_l_random.safetensors"
VAE_FILE = "taesd_random.safetensors"
MODELSCOPE_FILE = "modelscope-tiny/text2video_pytorch_model.safetensors"
MODELSCOPE_1024_FILE = "modelscope-tiny-1024/text2video_pytorch_model.safetensors"
ZEROSCOPE_FILE = "zeroscope-tiny/unet/diffusion_pytorch_model.safetensors"
SD_FILE = "sd-tiny/sd_unet.safetensors"
MOTION_FILE = "sd-tiny/motion.safetensors"
CLIP_L_WIDTH = 768
TINY_UNET3D = dict(block_out_channels=[32, 64, 64, 64], layers_per_block=1, attention_head_dim=8, norm_num_groups=32)


# ------------------------------------------------------------------------------------------------
# synthesised files
# ------------------------------------------------------------------------------------------------

def _normal(shape, gen, std):
    import torch
    return torch.randn(shape, generator=gen) * std


def clip_l_state_dict(seed: int = 0) -> dict:
    """A random CLIP-L text encoder in the HF CLIPTextModel layout (what the host's CLIPLoader detects as
    CLIP-L: `text_model.encoder.layers.0.mlp.fc1.weight` present, no layer 22), fp16."""
    import torch
    g = torch.Generator().manual_seed(seed)
    width, hidden, layers, vocab, positions = CLIP_L_WIDTH, 3072, 12, 49408, 77
    sd = {"text_model.embeddings.token_embedding.weight": _normal((vocab, width), g, 0.02),
          "text_model.embeddings.position_embedding.weight": _normal((positions, width), g, 0.01),
          "text_model.final_layer_norm.weight": torch.ones(width),
          "text_model.final_layer_norm.bias": torch.zeros(width),
          "text_projection.weight": _normal((width, width), g, width ** -0.5)}
    for i in range(layers):
        p = f"text_model.encoder.layers.{i}."
        for norm in ("layer_norm1", "layer_norm2"):
            sd[f"{p}{norm}.weight"], sd[f"{p}{norm}.bias"] = torch.ones(width), torch.zeros(width)
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            sd[f"{p}self_attn.{proj}.weight"] = _normal((width, width), g, width ** -0.5)
            sd[f"{p}self_attn.{proj}.bias"] = torch.zeros(width)
        sd[f"{p}mlp.fc1.weight"], sd[f"{p}mlp.fc1.bias"] = _normal((hidden, width), g, width ** -0.5), torch.zeros(hidden)
        sd[f"{p}mlp.fc2.weight"], sd[f"{p}mlp.fc2.bias"] = _normal((width, hidden), g, hidden ** -0.5), torch.zeros(width)
    return {k: v.half() for k, v in sd.items()}


def taesd_state_dict(seed: int = 0) -> dict:
    """A random TAESD (encoder + decoder, 64 channels) with the SD latent scale, as one VAE file."""
    import torch
    g = torch.Generator().manual_seed(seed)
    sd = {"vae_scale": torch.tensor(0.18215), "vae_shift": torch.tensor(0.0)}

    def conv(name, c_in, c_out, bias=True, gain=1.0):
        sd[f"{name}.weight"] = _normal((c_out, c_in, 3, 3), g, gain * math.sqrt(2.0 / (c_in * 9)))
        if bias:
            sd[f"{name}.bias"] = torch.zeros(c_out)

    def block(name):   # Block(64, 64): conv, ReLU, conv, ReLU, conv (+ identity skip); small last conv keeps
        conv(f"{name}.conv.0", 64, 64)   # the residual stream from growing block after block
        conv(f"{name}.conv.2", 64, 64)
        conv(f"{name}.conv.4", 64, 64, gain=0.2)

    enc, dec = "taesd_encoder", "taesd_decoder"
    conv(f"{enc}.0", 3, 64)
    for i in (1, 3, 4, 5, 7, 8, 9, 11, 12, 13):
        block(f"{enc}.{i}")
    for i in (2, 6, 10):
        conv(f"{enc}.{i}", 64, 64, bias=False)
    conv(f"{enc}.14", 64, 4)
    conv(f"{dec}.1", 4, 64)
    for i in (3, 4, 5, 8, 9, 10, 13, 14, 15, 18):
        block(f"{dec}.{i}")
    for i in (7, 12, 17):
        conv(f"{dec}.{i}", 64, 64, bias=False)
    conv(f"{dec}.19", 64, 3, gain=0.5)
    return sd


def _randomise(module, seed: int, only=None) -> None:
    """Random weights everywhere (the zero-initialised output layers too), or only where only(name)."""
    import torch
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if only is not None and not only(name):
                continue
            if p.dim() == 1:
                p.copy_((1.0 if name.endswith("weight") else 0.0) + 0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(p[0].numel()))


def tiny_unet3d(context_dim: int, seed: int):
    """(UNetConfig, our-layout state dict) of a random tiny UNet3D (ModelScope / Zeroscope structure)."""
    import torch
    from mav_core.io import convert as C, unet_configs as UC
    from mav_core.models.unet import SpaceTimeUNet
    cfg = UC.config_from_diffusers({"_class_name": "UNet3DConditionModel", **TINY_UNET3D,
                                   "cross_attention_dim": context_dim})
    torch.manual_seed(seed)
    model = SpaceTimeUNet(cfg)
    _randomise(model, seed)
    return cfg, model.state_dict()


def write_models(root) -> None:
    """Every file the workflows here load, under root/models/{text_encoders,vae,makeavideo}."""
    import torch
    from mav_core.io import convert as C, unet_configs as UC
    from mav_core.io.checkpoints import atomic_save_file
    from mav_core.io.loader import load_model
    from mav_core.io.motion import save_motion
    from mav_core.models.unet import SpaceTimeUNet, UNetConfig, is_temporal_key
    models = root / "models"
    atomic_save_file(clip_l_state_dict(), models / "text_encoders" / CLIP_FILE)
    atomic_save_file(taesd_state_dict(), models / "vae" / VAE_FILE)
    ours = models / "makeavideo"
    for name, width, seed in ((MODELSCOPE_FILE, CLIP_L_WIDTH, 1), (MODELSCOPE_1024_FILE, 1024, 2)):
        _, sd = tiny_unet3d(width, seed)
        modelscope = C.ours_to_modelscope(sd)
        assert "input_blocks.1.0.temopral_conv.conv1.0.weight" in modelscope   # the published key names
        assert C.detect_family(modelscope) == "unet3d-modelscope"
        atomic_save_file(modelscope, ours / name)
    cfg, sd = tiny_unet3d(CLIP_L_WIDTH, 3)
    atomic_save_file(C.ours_to_diffusers(sd), ours / ZEROSCOPE_FILE)
    (ours / ZEROSCOPE_FILE).with_name("config.json").write_text(json.dumps(UC.unet3d_config_to_diffusers(cfg)))
    image_cfg = UNetConfig(in_channels=4, out_channels=4, block_out_channels=(32, 64), layers_per_block=1,
                           attention_levels=(True, False), context_dim=CLIP_L_WIDTH, norm_num_groups=32,
                           num_attention_heads=8, attention_head_dim=4, pseudo3d_convs=False,
                           temporal_attention=False, fps_conditioning=False, image_embed_dim=0)
    torch.manual_seed(4)
    image = SpaceTimeUNet(image_cfg)
    _randomise(image, 4)
    atomic_save_file(C.ours_to_ldm(image.state_dict(), prefix=C.LDM_UNET_PREFIX), ours / SD_FILE)
    inflated = load_model(ours / SD_FILE)                 # what the Decoder Loader makes of it
    assert inflated.family == "sd-inflated"
    _randomise(inflated.module, 5, only=is_temporal_key)  # stands in for `python -m mav_core train temporal`
    save_motion(inflated, ours / MOTION_FILE)


def serve_host_models(comfy_host_paths, work, write):
    """A running ComfyUI (a generator for a fixture) whose text_encoders / vae / makeavideo folders hold the
    files write(work) synthesises."""
    started = time.monotonic()
    write(work)
    print(f"synthesised the model files in {time.monotonic() - started:.1f} s")
    config = work / "host_model_folders.yaml"
    config.write_text("makeavideo_host_models:\n"
                      f"  base_path: {json.dumps(str(work))}\n"
                      "  text_encoders: models/text_encoders\n"
                      "  vae: models/vae\n")
    host = ComfyServer(host=comfy_host_paths, work_dir=work, extra_args=["--extra-model-paths-config", str(config)])
    with host.running(f"ComfyUI at {comfy_host_paths.root}"):
        yield host


@pytest.fixture(scope="module")
def server(comfy_host_paths, tmp_path_factory):
    """A ComfyUI whose text_encoders / vae / makeavideo folders hold the synthesised files."""
    yield from serve_host_models(comfy_host_paths, tmp_path_factory.mktemp("modelscope_host"), write_models)


# ------------------------------------------------------------------------------------------------
# graphs
# ------------------------------------------------------------------------------------------------

def workflow(name: str, ckpt: str, *, frames: int, width: int, height: int, prefix: str, steps: int = 2,
             motion: str | None = None, seed: int = 0) -> dict:
    """A committed API workflow with the synthesised files swapped in and a small, short run."""
    api = json.loads((WORKFLOWS / name).read_text())
    seen = set()
    for node in api.values():
        kind, inputs = node["class_type"], node["inputs"]
        seen.add(kind)
        if kind == "CLIPLoader":
            inputs["clip_name"] = CLIP_FILE
        elif kind == "VAELoader":
            inputs["vae_name"] = VAE_FILE
        elif kind == "MakeAVideoDecoderLoader":
            inputs["ckpt_name"] = ckpt
        elif kind == "MakeAVideoApplyMotion":
            inputs["motion_name"] = motion
        elif kind == "MakeAVideoSampler":
            inputs.update(steps=steps, frames=frames, width=width, height=height, seed=seed)
        elif kind == "SaveVideo":
            inputs["filename_prefix"] = prefix
    expected = {"CLIPLoader", "CLIPTextEncode", "MakeAVideoDecoderLoader", "MakeAVideoSampler", "VAELoader",
                "VAEDecode", "CreateVideo", "SaveVideo"}
    assert expected <= seen, f"{name} lacks {sorted(expected - seen)}"
    return api


def node_id(api: dict, class_type: str) -> str:
    (found,) = [k for k, v in api.items() if v["class_type"] == class_type]
    return found


def run_to_video(server, api: dict, timeout: float = 300.0):
    """(history, frames [F, H, W, 3] float 0..1, fps) of a graph ending in one SaveVideo."""
    from mav_core.io.video import read_video
    history = server.run_prompt(api, timeout=timeout)
    assert history_status(history) == "success", (history.get("status"), server.log_tail(40))
    files = server.output_files(history)
    assert len(files) == 1 and files[0].suffix == ".mp4", files
    frames, fps = read_video(files[0])
    return history, frames, fps


def _cached_nodes(history) -> list:
    return history_events(history).get("execution_cached", {}).get("nodes", [])


# ------------------------------------------------------------------------------------------------
# tests
# ------------------------------------------------------------------------------------------------

def test_host_lists_the_synthesised_files(server):
    assert server.pack_import_errors() == [], server.log_tail(80)
    info = server.object_info()
    assert CLIP_FILE in info["CLIPLoader"]["input"]["required"]["clip_name"][0]
    assert VAE_FILE in info["VAELoader"]["input"]["required"]["vae_name"][0]
    ours = info["MakeAVideoDecoderLoader"]["input"]["required"]["ckpt_name"][0]
    assert {MODELSCOPE_FILE, ZEROSCOPE_FILE, SD_FILE} <= set(ours)
    assert MOTION_FILE in info["MakeAVideoApplyMotion"]["input"]["required"]["motion_name"][0]


@pytest.mark.parametrize("name, ckpt", [("modelscope_text_to_video_api.json", MODELSCOPE_FILE),
                                        ("zeroscope_text_to_video_api.json", ZEROSCOPE_FILE)],
                         ids=["modelscope", "zeroscope"])
def test_unet3d_workflow_with_host_clip_and_vae_makes_a_video(server, name, ckpt):
    frames, width, height = 5, 128, 64      # the tiny UNet3D halves 3 times: latent sides multiple of 8
    api = workflow(name, ckpt, frames=frames, width=width, height=height, prefix=f"unet3d/{ckpt.split('/')[0]}")
    started = time.monotonic()
    history, video, fps = run_to_video(server, api)
    print(f"{name}: {frames} frames {width}x{height}, 2 steps, in {time.monotonic() - started:.1f} s")
    assert tuple(video.shape) == (frames, height, width, 3)
    assert fps == pytest.approx(api[node_id(api, "MakeAVideoSampler")]["inputs"]["fps"], rel=1e-3)
    print(f"decoded pixels: mean {video.mean():.3f}, std {video.std():.3f}")
    assert video.std() > 0.01, "the decoded frames are flat: the latent did not reach the VAE"
    log = server.log_text()
    assert "clip missing" not in log, "the synthesised CLIP-L file lacks tensors the host's CLIP-L has"
    assert "Missing VAE keys" not in log, "the synthesised TAESD file lacks tensors the host's TAESD has"


def test_text_encoder_width_mismatch_names_the_conditioning_and_widths(server):
    api = workflow("modelscope_text_to_video_api.json", MODELSCOPE_1024_FILE, frames=2, width=64, height=64,
                   prefix="unet3d/mismatch")
    history = server.run_prompt(api, timeout=300)
    assert history_status(history) == "error"
    error = history_events(history)["execution_error"]
    assert error["node_type"] == "MakeAVideoSampler"
    message = error["exception_message"]
    assert "positive" in message and str(CLIP_L_WIDTH) in message and "1024" in message, message


def test_inflated_sd_with_motion_file(server):
    """The motion file changes the video; the loader's cached decoder is not changed by applying it."""
    size = dict(frames=4, width=64, height=48, steps=2)
    with_motion = workflow("inflated_sd_motion_api.json", SD_FILE, motion=MOTION_FILE, prefix="sd/motion", **size)
    apply_id, sampler_id = node_id(with_motion, "MakeAVideoApplyMotion"), node_id(with_motion, "MakeAVideoSampler")
    loader_id = node_id(with_motion, "MakeAVideoDecoderLoader")
    plain = json.loads(json.dumps(with_motion))
    del plain[apply_id]
    plain[sampler_id]["inputs"]["decoder"] = [loader_id, 0]

    def named(api, prefix):
        api = json.loads(json.dumps(api))
        api[node_id(api, "SaveVideo")]["inputs"]["filename_prefix"] = prefix
        return api

    _, before, _ = run_to_video(server, named(plain, "sd/plain_a"))
    moved_history, moved, fps = run_to_video(server, with_motion)
    after_history, after, _ = run_to_video(server, named(plain, "sd/plain_b"))
    assert tuple(moved.shape) == (4, 48, 64, 3) and fps == pytest.approx(8.0, rel=1e-3)
    assert loader_id in _cached_nodes(moved_history) and loader_id in _cached_nodes(after_history)
    assert sampler_id not in _cached_nodes(after_history), "the sampler did not run again"
    assert (before == after).all(), "applying the motion file changed the loader's cached decoder"
    assert not (moved == before).all(), "the motion file did not change the video"


def test_apply_motion_refuses_a_file_that_is_not_a_motion_file(server):
    api = workflow("inflated_sd_motion_api.json", SD_FILE, motion=MODELSCOPE_FILE, prefix="sd/bad_motion",
                   frames=2, width=64, height=48)
    history = server.run_prompt(api, timeout=300)
    assert history_status(history) == "error"
    error = history_events(history)["execution_error"]
    assert error["node_type"] == "MakeAVideoApplyMotion"
    assert "motion_name" in error["exception_message"] and "not a motion file" in error["exception_message"]
