"""Real third-party checkpoints through checkpoints.load_model: diffusers UNet3D folders, ModelScope .pth
(weights_only), fp16 files, the real-scale ModelScope T2V UNet (on the meta device: the real file is 5.6 GB
and is never written here), SD/our image checkpoints inflated to video, and motion files.

diffusers, when installed, writes the diffusers folder and is the numerical reference; without it the
folder is written from our converters and our own model is the reference."""
from __future__ import annotations

import argparse
import json
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from mav_core.io import convert as C, unet_configs as UC
from mav_core.io.checkpoints import CheckpointError, atomic_save_file, save_model
from mav_core.io.loader import load_model
from mav_core.diffusion.loss import diffusion_loss
from mav_core.io.external import load_external
from mav_core.io.motion import apply_motion, read_motion, save_motion
from mav_core.io.inflate import inflate_image_checkpoint
from mav_core.models.unet import SpaceTimeUNet, UNetConfig, is_temporal_key
from mav_core.io.video import write_video
from synthetic_weights import randomise

ROOT = Path(__file__).resolve().parents[1]
TINY_3D = dict(block_out_channels=[32, 64], down_block_types=["CrossAttnDownBlock3D", "DownBlock3D"],
               up_block_types=["UpBlock3D", "CrossAttnUpBlock3D"], layers_per_block=1, attention_head_dim=8,
               cross_attention_dim=16, norm_num_groups=32)
REAL_PARAMS = 1_411_233_860   # ModelScope T2V / Zeroscope UNet (diffusers UNet3DConditionModel())


pytestmark = pytest.mark.usefixtures("one_thread")


def _rel_l2(a, b) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


@pytest.fixture(scope="module")
def unet3d(tmp_path_factory):
    """A tiny UNet3D as a diffusers model folder (<root>/unet/...), its our-layout weights, inputs and the
    reference output."""
    root = tmp_path_factory.mktemp("unet3d-root")
    x = torch.randn(1, 4, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    context = torch.randn(1, 5, 16, generator=torch.Generator().manual_seed(3))
    t = torch.tensor([417])
    try:
        import diffusers
    except ImportError:
        diffusers = None
    if diffusers is not None:
        torch.manual_seed(0)
        ref = diffusers.UNet3DConditionModel(**TINY_3D).eval()
        randomise(ref, seed=1)
        ref.save_pretrained(root / "unet", safe_serialization=True)
        with torch.no_grad():
            expected = ref(x, t, encoder_hidden_states=context).sample
        ours = C.diffusers_to_ours(ref.state_dict())
        reference = "diffusers"
    else:
        cfg = UC.config_from_diffusers({"_class_name": "UNet3DConditionModel", **TINY_3D})
        model = SpaceTimeUNet(cfg).eval()
        randomise(model, seed=1)
        (root / "unet").mkdir()
        (root / "unet" / "config.json").write_text(json.dumps(UC.unet3d_config_to_diffusers(cfg)))
        save_file(C.ours_to_diffusers(model.state_dict()), str(root / "unet" / "diffusion_pytorch_model.safetensors"))
        with torch.no_grad():
            expected = model(x, t, context)
        ours = {k: v.clone() for k, v in model.state_dict().items()}
        reference = "ours (diffusers not installed)"
    return dict(root=root, ours=ours, x=x, t=t, context=context, expected=expected, reference=reference)


def _output(loaded, case):
    with torch.no_grad():
        return loaded.module(case["x"], case["t"], case["context"])


# ------------------------------------------------------------------------------------------------
# UNet3D files
# ------------------------------------------------------------------------------------------------

def test_diffusers_folder_loads_and_matches_reference(unet3d):
    for path in (unet3d["root"], unet3d["root"] / "unet", unet3d["root"] / "unet" / "diffusion_pytorch_model.safetensors"):
        loaded = load_model(path)
        assert loaded.family == "unet3d-diffusers" and loaded.stage == "decoder" and loaded.prediction == "eps"
        assert loaded.schedule.name == "scaled_linear" and loaded.schedule.beta_end == 0.012
        assert loaded.metadata["mav_config_source"] == "config.json"
        err = _rel_l2(_output(loaded, unet3d), unet3d["expected"])
        print(f"{path.name}: rel L2 vs {unet3d['reference']} = {err:.2e}")
        assert err <= 1e-4


def test_modelscope_pth_loads_through_weights_only(unet3d, tmp_path):
    ms = C.ours_to_modelscope(unet3d["ours"])
    torch.save(ms, tmp_path / "text2video_pytorch_model.pth")
    torch.save({"state_dict": ms, "epoch": 3}, tmp_path / "wrapped.ckpt")
    save_file(ms, str(tmp_path / "resaved.safetensors"))
    for name in ("text2video_pytorch_model.pth", "wrapped.ckpt", "resaved.safetensors"):
        loaded = load_model(tmp_path / name)
        assert loaded.family == "unet3d-modelscope"
        assert loaded.metadata["mav_config_source"] == "inferred from tensor shapes"
        assert _rel_l2(_output(loaded, unet3d), unet3d["expected"]) <= 1e-4, name


class _Payload:
    """Pickles as a call to open(target, 'w'): loading it with plain pickle creates the file."""

    def __init__(self, target: Path):
        self.target = str(target)

    def __reduce__(self):
        return (open, (self.target, "w"))


def test_pickle_with_code_is_refused_and_never_runs(unet3d, tmp_path):
    target = tmp_path / "pwned.txt"
    bad = tmp_path / "text2video_pytorch_model.pth"
    torch.save({"conv_in.weight": torch.zeros(2), "payload": _Payload(target)}, bad)
    with pytest.raises(CheckpointError, match="not plain tensors") as info:
        load_model(bad)
    assert str(bad) in str(info.value)
    assert not target.exists()
    # the payload is real: an unrestricted load runs it (which is what the loader refuses to do)
    torch.load(bad, weights_only=False)["payload"].close()
    assert target.exists()
    raw = tmp_path / "raw.pt"                          # a bare pickle (no torch zip container) likewise
    raw.write_bytes(pickle.dumps({"payload": _Payload(tmp_path / "raw.txt")}))
    with pytest.raises(CheckpointError, match="raw.pt"):
        load_model(raw)
    assert not (tmp_path / "raw.txt").exists()


def test_fp16_file_is_float32_on_cpu_and_kept_when_asked(unet3d, tmp_path):
    folder = tmp_path / "unet"
    folder.mkdir()
    (folder / "config.json").write_text((unet3d["root"] / "unet" / "config.json").read_text())
    save_file({k: v.half() for k, v in C.ours_to_diffusers(unet3d["ours"]).items()},
              str(folder / "diffusion_pytorch_model.safetensors"))
    loaded = load_model(folder)
    assert {p.dtype for p in loaded.module.parameters()} == {torch.float32}
    assert loaded.metadata["mav_file_dtype"] == "float16" and loaded.metadata["mav_dtype"] == "float32"
    assert "float32" in loaded.metadata["mav_dtype_note"]
    assert _rel_l2(_output(loaded, unet3d), unet3d["expected"]) <= 2e-2     # fp16-rounded weights
    half = load_external(folder, dtype=torch.float16)
    assert {p.dtype for p in half.module.parameters()} == {torch.float16}


def test_bad_files_name_the_file_and_the_problem(unet3d, tmp_path):
    ms = C.ours_to_modelscope(unet3d["ours"])
    key = "input_blocks.1.0.in_layers.2.weight"        # ours: down_blocks.0.resnets.0.conv1.weight
    save_file({**ms, key: torch.zeros(32, 32, 3, 1)}, str(tmp_path / "shape.safetensors"))
    with pytest.raises(CheckpointError, match=r"down_blocks\.0\.resnets\.0\.conv1\.weight.*shape"):
        load_model(tmp_path / "shape.safetensors")
    vae = {"encoder.down.0.block.0.conv1.weight": torch.zeros(8, 3, 3, 3), "decoder.up.0.block.0.conv1.weight":
           torch.zeros(8, 8, 3, 3), "quant_conv.weight": torch.zeros(8, 8, 1, 1)}
    save_file(vae, str(tmp_path / "vae.safetensors"))
    with pytest.raises(CheckpointError, match="vae.safetensors.*VAE.*supported families.*unet3d-modelscope"):
        load_model(tmp_path / "vae.safetensors")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="no diffusers UNet weights"):
        load_model(tmp_path / "empty")


# ------------------------------------------------------------------------------------------------
# real-scale ModelScope T2V on the meta device (the 5.6 GB file itself is never written)
# ------------------------------------------------------------------------------------------------

def _real_config() -> UNetConfig:
    return UNetConfig(in_channels=4, out_channels=4, block_out_channels=(320, 640, 1280, 1280), layers_per_block=2,
                      attention_levels=(True, True, True, False), num_attention_heads=None, attention_head_dim=64,
                      context_dim=1024, norm_num_groups=32, linear_projection=True, pseudo3d_convs=False,
                      temporal_conv_blocks=True, transformer_in=True, transformer_in_heads=8,
                      transformer_in_head_dim=64, temporal_position_embedding=False, fps_conditioning=False,
                      mid_attention=True)


def test_real_scale_modelscope_keys_load_on_meta():
    """The loader path `info` uses (load_external -> LoadedModel.num_parameters) on a meta-tensor state dict
    in the published ModelScope key layout, fp16 as published."""
    with torch.device("meta"):
        skeleton = SpaceTimeUNet(_real_config())
    ms = {k: v.half() for k, v in C.ours_to_modelscope(skeleton.state_dict()).items()}
    assert tuple(ms["input_blocks.1.0.temopral_conv.conv1.0.weight"].shape) == (320,)   # published names
    assert tuple(ms["input_blocks.0.1.proj_in.weight"].shape) == (512, 320, 1)
    loaded = load_external("text2video_pytorch_model.pth", device="meta", state_dict=ms)
    assert loaded.family == "unet3d-modelscope" and loaded.config == _real_config()
    assert loaded.num_parameters() == REAL_PARAMS      # info prints "1,411,233,860"
    assert loaded.metadata["mav_file_dtype"] == "float16"
    del ms["middle_block.3.temopral_conv.conv4.3.weight"]
    with pytest.raises(CheckpointError, match=r"mid_block\.temp_convs\.1\.conv4\.3\.weight"):
        load_external("text2video_pytorch_model.pth", device="meta", state_dict=ms)


# ------------------------------------------------------------------------------------------------
# inflation and motion files
# ------------------------------------------------------------------------------------------------

IMAGE_CFG = UNetConfig(in_channels=3, out_channels=3, block_out_channels=(16, 32), layers_per_block=1,
                       attention_levels=(False, True), context_dim=8, norm_num_groups=8, attention_head_dim=16,
                       pseudo3d_convs=False, temporal_attention=False, fps_conditioning=False, image_embed_dim=0)


def _image_checkpoint(path: Path, seed: int) -> Path:
    torch.manual_seed(seed)
    model = SpaceTimeUNet(IMAGE_CFG)
    randomise(model, seed)
    save_model(path, model, "decoder")
    return path


def _moving_square_videos(folder: Path) -> Path:
    folder.mkdir()
    for i, suffix in enumerate((".mp4", ".gif", ".webp")):
        frames = torch.zeros(10, 24, 24, 3)
        for f in range(10):
            x = (2 * f + 3 * i) % 16
            frames[f, 6:14, x:x + 8, i] = 1.0
            frames[f, :, :, (i + 1) % 3] += 0.2
        write_video(frames, folder / f"clip{i}{suffix}", fps=8)
    return folder


def test_sd_image_unet_inflates_to_identity_video_model(tmp_path):
    diffusers = pytest.importorskip("diffusers", reason="diffusers writes the SD image UNet")
    torch.manual_seed(0)
    ref = diffusers.UNet2DConditionModel(block_out_channels=(32, 64), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                         up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), layers_per_block=1,
                                         cross_attention_dim=16, attention_head_dim=4, norm_num_groups=32).eval()
    randomise(ref, 4)
    sd = C.ours_to_ldm(ref.state_dict(), prefix="model.diffusion_model.")
    loaded = inflate_image_checkpoint(sd, config=dict(ref.config))
    assert loaded.family == "sd-inflated" and loaded.stage == "decoder" and loaded.config.in_channels == 4
    assert loaded.schedule.name == "scaled_linear" and loaded.prediction == "eps"
    ref.save_pretrained(tmp_path / "sd" / "unet", safe_serialization=True)
    from_folder = load_model(tmp_path / "sd")            # what `info` and the nodes call
    assert from_folder.family == "sd-inflated" and from_folder.config == loaded.config
    x = torch.randn(1, 4, 3, 16, 16, generator=torch.Generator().manual_seed(5))
    ctx = torch.randn(1, 5, 16, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        video = loaded.module(x, torch.tensor([300]), ctx)
        frames = ref(x[0].permute(1, 0, 2, 3), torch.tensor([300]), encoder_hidden_states=ctx.expand(3, -1, -1)).sample
        again = from_folder.module(x, torch.tensor([300]), ctx)
    assert _rel_l2(video[0].permute(1, 0, 2, 3), frames) <= 1e-4
    assert _rel_l2(again, video) <= 1e-6


def test_temporal_training_writes_a_motion_file_that_transfers(tmp_path):
    from mav_core.train import temporal
    base_a = _image_checkpoint(tmp_path / "image_a.safetensors", seed=10)
    base_b = _image_checkpoint(tmp_path / "image_b.safetensors", seed=11)
    videos = _moving_square_videos(tmp_path / "videos")
    p = argparse.ArgumentParser()
    temporal.add_arguments(p)
    steps = 30
    args = p.parse_args(["--base", str(base_a), "--videos", str(videos), "--frames", "4", "--size", "16",
                         "--steps", str(steps), "--batch-size", "2", "--lr", "2e-3", "--save-every", "1000",
                         "--out", str(tmp_path / "run")])
    out = Path(temporal.run(args))
    history = torch.load(tmp_path / "run" / "temporal-motion.state.pt", weights_only=True)["history"]
    first, last = sum(history[:8]) / 8, sum(history[-8:]) / 8
    print(f"temporal loss: first 8 steps {first:.3f}, last 8 steps {last:.3f}")
    assert len(history) == steps and last < first

    # the file holds only temporal tensors, and `info` reads it
    sd, meta = read_motion(out)
    assert sd and all(is_temporal_key(k) for k in sd) and meta["mav_stage"] == "motion"
    info = load_model(out)
    assert info.stage == "motion" and info.num_parameters() == sum(v.numel() for v in sd.values())

    # a fixed batch: the trained motion lowers the loss of the inflated base it was trained on
    data = temporal.VideoCrops(videos, 4, 16, seed=123)
    clips, fps = zip(*(data.sample() for _ in range(8)))
    x, fps = torch.stack(clips), torch.tensor(fps)

    def fixed_loss(loaded):
        with torch.no_grad():
            return diffusion_loss(loaded.module, x, loaded.schedule, loaded.prediction,
                                  generator=torch.Generator().manual_seed(7), fps=fps).item()

    plain_a = inflate_image_checkpoint(base_a)
    before = fixed_loss(plain_a)
    after = fixed_loss(apply_motion(inflate_image_checkpoint(base_a), out))
    print(f"fixed-batch loss: plain inflation {before:.3f}, with motion {after:.3f}")
    assert after < before

    # onto a different image checkpoint with the same layout: spatial weights stay, output changes
    plain_b = inflate_image_checkpoint(base_b)
    moved_b = apply_motion(inflate_image_checkpoint(base_b), out)
    sb, mb = plain_b.module.state_dict(), moved_b.module.state_dict()
    assert all(torch.equal(sb[k], mb[k]) for k in sb if not is_temporal_key(k))
    assert all(torch.equal(mb[k], sd[k]) for k in sd)
    with torch.no_grad():
        t = torch.tensor([500])
        y_plain = plain_b.module(x[:1], t, fps=fps[:1])
        y_moved = moved_b.module(x[:1], t, fps=fps[:1])
    assert _rel_l2(y_moved, y_plain) > 1e-3

    # a mismatched or incomplete motion file is refused, naming the key
    key = next(k for k in sd if k.endswith("temporal.weight"))
    bad = dict(sd)
    bad[key] = torch.zeros(*sd[key].shape[:2], 5)
    atomic_save_file(bad, tmp_path / "bad_shape.safetensors", meta)
    with pytest.raises(CheckpointError, match=f"{key.replace('.', '[.]')}.*shape"):
        apply_motion(inflate_image_checkpoint(base_b), tmp_path / "bad_shape.safetensors")
    del bad[key]
    atomic_save_file(bad, tmp_path / "missing.safetensors", meta)
    with pytest.raises(CheckpointError, match=f"missing key '{key.replace('.', '[.]')}'"):
        apply_motion(inflate_image_checkpoint(base_b), tmp_path / "missing.safetensors")


def test_info_cli_reads_external_files(unet3d, tmp_path):
    torch.save(C.ours_to_modelscope(unet3d["ours"]), tmp_path / "text2video_pytorch_model.pth")
    n = sum(v.numel() for v in unet3d["ours"].values())
    for path in (unet3d["root"], tmp_path / "text2video_pytorch_model.pth"):
        res = subprocess.run([sys.executable, "-m", "mav_core", "info", str(path)], cwd=ROOT, capture_output=True,
                             text=True, timeout=120)
        assert res.returncode == 0, res.stderr
        assert "family:     unet3d-" in res.stdout and f"parameters: {n:,}" in res.stdout


def test_temporal_training_on_latent_clips(tmp_path):
    from mav_core.train import temporal
    torch.manual_seed(3)
    base = tmp_path / "latent_image.safetensors"
    save_model(base, SpaceTimeUNet(UNetConfig(**{**IMAGE_CFG.__dict__, "in_channels": 4, "out_channels": 4})), "decoder")
    (tmp_path / "latents").mkdir()
    for i in range(2):
        save_file({"latents": torch.randn(6, 4, 10, 10)}, str(tmp_path / "latents" / f"clip{i}.safetensors"))
    p = argparse.ArgumentParser()
    temporal.add_arguments(p)
    common = ["--base", str(base), "--frames", "3", "--size", "8", "--steps", "2", "--batch-size", "1",
              "--out", str(tmp_path / "run")]
    with pytest.raises(ValueError, match="latent model.*--latents"):
        temporal.run(p.parse_args(common + ["--videos", str(tmp_path)]))
    out = temporal.run(p.parse_args(common + ["--latents", str(tmp_path / "latents")]))
    moved = apply_motion(inflate_image_checkpoint(base), out)
    assert moved.metadata["mav_motion"] == out
