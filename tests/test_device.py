"""The pack on a GPU-like device, checked on this CPU-only machine (tests/device_sim.py): the shipped
workflows' node sequences and a ModelScope-layout sampler run with every model on a second device, and
any op mixing devices fails the test; host syncs are counted over a sampling run.

The node code and the core are the real ones; ComfyUI's own nodes in the workflows (LoadImage,
ImageScale, ImageBatch, LoadVideo, ...) are replaced by CPU tensors of the shapes they give, the way the
host hands frames over on its intermediate device (the CPU)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from device_sim import DEVICE, DeviceMixError, simulated_device

ROOT = Path(__file__).resolve().parents[1]


def _image(h=48, w=48, seed=0):
    return torch.rand(1, h, w, 3, generator=torch.Generator().manual_seed(seed))


def _host_node(class_type: str, inputs: dict):
    """What a ComfyUI node of the workflow hands our nodes: CPU tensors of the right shape."""
    if class_type == "LoadImage":
        return _image(), torch.zeros(1, 48, 48)
    if class_type == "ImageScale":
        img = inputs["image"].permute(0, 3, 1, 2)
        return (F.interpolate(img, size=(inputs["height"], inputs["width"]), mode="bilinear").permute(0, 2, 3, 1),)
    if class_type == "ImageBatch":
        return (torch.cat([inputs["image1"], inputs["image2"]]),)
    if class_type == "LoadVideo":
        return ("video",)
    if class_type == "GetVideoComponents":
        return torch.rand(9, 48, 48, 3, generator=torch.Generator().manual_seed(1)), None, 8.0
    return None   # an output node (SaveVideo, CreateVideo, SaveAnimatedWEBP): nothing downstream needs it


def run_api_workflow(pack, workflow: dict) -> dict:
    """Execute an API-format workflow's nodes in dependency order; returns {node_id: outputs}."""
    outputs: dict = {}

    def value(v):
        if isinstance(v, list) and len(v) == 2 and isinstance(v[0], str):
            return None if outputs[v[0]] is None else outputs[v[0]][v[1]]
        return v

    pending = dict(workflow)
    while pending:
        ready = [k for k, n in pending.items()
                 if all(not (isinstance(v, list) and len(v) == 2 and isinstance(v[0], str)) or v[0] in outputs
                        for v in n["inputs"].values())]
        assert ready, f"cycle or missing node among {sorted(pending)}"
        for key in sorted(ready, key=int):
            n = pending.pop(key)
            inputs = {k: value(v) for k, v in n["inputs"].items()}
            cls = pack.NODE_CLASS_MAPPINGS.get(n["class_type"])
            if cls is None:
                outputs[key] = _host_node(n["class_type"], inputs)
            else:
                outputs[key] = getattr(cls(), cls.FUNCTION)(**inputs)
    return outputs


@pytest.fixture
def on_device(pack, monkeypatch):
    """The host's compute device is the simulated one; previews off (the host's default)."""
    monkeypatch.setattr(pack.host, "torch_device", lambda: DEVICE)
    monkeypatch.setattr(pack.host, "previews_enabled", lambda: False)
    return pack


WORKFLOWS = ["text_to_video", "image_animation", "control_canny", "image_interpolation", "prompt_travel",
             "video_variation", "long_video"]


@pytest.mark.parametrize("name", WORKFLOWS)
def test_shipped_workflow_runs_with_every_model_on_the_device(on_device, name):
    workflow = json.loads((ROOT / "workflows" / f"{name}_api.json").read_text())
    for n in workflow.values():   # the same graph with fewer steps: where tensors go does not depend on them
        if "steps" in n["inputs"]:
            n["inputs"]["steps"] = min(n["inputs"]["steps"], 2)
    with simulated_device() as sim:
        outputs = run_api_workflow(on_device, workflow)
    ours = [k for k, n in workflow.items() if n["class_type"].startswith("MakeAVideo")]
    frames = [out[0] for k, out in outputs.items() if k in ours and isinstance(out, tuple) and out
              and isinstance(out[0], torch.Tensor) and out[0].dim() == 4]
    assert frames, "the workflow produced no IMAGE"
    for f in frames:   # results come back on the host's intermediate device
        assert f.device.type == "cpu"
    assert sim.to_device > 0, "nothing ran on the device"


def test_the_check_catches_a_tensor_left_on_the_cpu(on_device):
    """The simulated device fails like CUDA does: conditioning left on the CPU, fed straight to the UNet."""
    from mav_core.models import family
    from mav_core.io.loader import load_model
    decoder = load_model(family.WEIGHTS_DIR / "decoder.safetensors")
    cfg = decoder.config
    with simulated_device():
        decoder.module.to(DEVICE)
        x = torch.zeros(1, 3, 2, 32, 32, device=DEVICE)
        t = torch.zeros(1, device=DEVICE)
        with pytest.raises(DeviceMixError, match="cpu"):
            decoder.module(x, t, context=torch.zeros(1, 4, cfg.context_dim))


def _modelscope_layout_file(tmp_path: Path) -> Path:
    """A small UNet3D in ModelScope T2V's published key layout and dtype (fp16 .pth)."""
    from mav_core.io.convert import ours_to_modelscope
    from mav_core.models.unet import SpaceTimeUNet, UNetConfig
    cfg = UNetConfig(in_channels=4, out_channels=4, block_out_channels=(32, 64), layers_per_block=1,
                     attention_levels=(True, False), attention_head_dim=64, context_dim=1024, norm_num_groups=32,
                     linear_projection=True, pseudo3d_convs=False, temporal_conv_blocks=True, transformer_in=True,
                     temporal_position_embedding=False, fps_conditioning=False)
    torch.manual_seed(0)
    sd = {k: v.half() for k, v in ours_to_modelscope(SpaceTimeUNet(cfg).state_dict()).items()}
    folder = tmp_path / "modelscope"
    folder.mkdir()
    torch.save(sd, folder / "text2video_pytorch_model.pth")
    return folder


def test_modelscope_layout_sampler_on_the_device(on_device, tmp_path, monkeypatch):
    folder = _modelscope_layout_file(tmp_path)
    monkeypatch.setattr(on_device.host, "extra_model_dirs", [tmp_path, *on_device.host.extra_model_dirs])
    monkeypatch.setattr(on_device.host, "EXTENSIONS", {".safetensors", ".pth"})
    decoder = on_device.NODE_CLASS_MAPPINGS["MakeAVideoDecoderLoader"]().load(
        "modelscope/text2video_pytorch_model.pth")[0]
    clip_like = [[torch.randn(1, 77, 1024), {"pooled_output": torch.randn(1, 1024)}]]
    with simulated_device() as sim:
        frames, fps, latent = on_device.NODE_CLASS_MAPPINGS["MakeAVideoSampler"]().sample(
            decoder, clip_like, clip_like, 0, 8, 9.0, "ddim", 4, 8.0, 64, 64, 1.0)
    assert frames is None and latent["samples"].shape == (4, 4, 8, 8)
    assert latent["samples"].device.type == "cpu"
    assert sim.syncs == 1   # 8 steps: the NaN flags and the final sample read once


def _sampling_counts(pack, bundle, steps: int, sampler: str = "ddim") -> tuple[int, int, int]:
    """(syncs, copies to the host, copies to the device) of one Sampler node call."""
    nodes = pack.NODE_CLASS_MAPPINGS
    with simulated_device() as sim:
        pos = nodes["MakeAVideoPrior"]().run(bundle[1], nodes["MakeAVideoTextEncode"]().encode(bundle[0], "a red circle")[0],
                                             0, 2, 1.0)[0]
        neg = nodes["MakeAVideoTextEncode"]().encode(bundle[0], "")[0]
        before = (sim.syncs, sim.to_host, sim.to_device)
        nodes["MakeAVideoSampler"]().sample(bundle[2], pos, neg, 0, steps, 4.0, sampler, 8, 4.0, 32, 32, 1.0)
        return sim.syncs - before[0], sim.to_host - before[1], sim.to_device - before[2]


@pytest.mark.parametrize("sampler", ["ddim", "dpmpp_2m"])
def test_at_most_one_host_sync_per_8_steps_and_no_copies_per_step(on_device, sampler):
    """With previews off, a sampling run reads the device at most once per 8 steps (the NaN check), and
    the number of copies between host and device does not grow with the steps (placement happens once)."""
    bundle = on_device.NODE_CLASS_MAPPINGS["MakeAVideoBundleLoader"]().load("mav-tiny")
    short = _sampling_counts(on_device, bundle, 8, sampler)
    long = _sampling_counts(on_device, bundle, 24, sampler)
    assert short[0] <= 1 and long[0] <= 24 // 8
    assert long[1:] == short[1:], f"copies grew with steps: 8 steps {short}, 24 steps {long} (syncs, to host, to device)"


def test_previews_follow_the_host_setting(pack, monkeypatch):
    """Previews (a copy to the host each) only when the host shows them, every 4th step and at the last."""
    bars = []
    real = pack.host.ProgressBar
    monkeypatch.setattr(pack.host, "ProgressBar", lambda total: bars.append(real(total)) or bars[-1])
    x0 = {"denoised": torch.zeros(1, 3, 2, 8, 8)}
    for enabled, expected in ((True, 3), (False, 0)):
        monkeypatch.setattr(pack.host, "previews_enabled", lambda: enabled)
        progress = pack.common.StepProgress(10)
        for _ in range(10):
            progress(x0)
        assert bars[-1].previews == expected   # steps 4, 8 and 10
