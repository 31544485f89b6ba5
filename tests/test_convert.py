"""Checkpoint converters: diffusers UNet3D / ModelScope / SD image UNets <-> SpaceTimeUNet.

diffusers is the numerical reference; tests that need it skip without it."""
from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch
from safetensors.torch import load_file

from mav_core.io import convert as C, unet_configs as UC
from mav_core.models.unet import SpaceTimeUNet, UNetConfig, is_temporal_key


SMALL_3D = dict(block_out_channels=(32, 64, 64, 64), layers_per_block=2, attention_head_dim=8,
                cross_attention_dim=64, norm_num_groups=32)
SMALL_2D = dict(block_out_channels=(32, 64, 64, 64), layers_per_block=2, cross_attention_dim=64,
                norm_num_groups=32, sample_size=32)
REAL_PARAMS = 1_411_233_860          # diffusers UNet3DConditionModel() (ModelScope T2V 1.7B's UNet)


pytestmark = pytest.mark.usefixtures("one_thread")


def _diffusers():
    return pytest.importorskip("diffusers", reason="diffusers (the reference implementation) is not installed")


def _randomise(module: torch.nn.Module, seed: int) -> None:
    """Random weights everywhere (including the zero-initialised output layers), so every tensor matters."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.dim() == 1 and name.endswith("weight"):          # norm scales
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=g))
            elif p.dim() == 1:
                p.copy_(0.05 * torch.randn(p.shape, generator=g))
            else:
                fan_in = p[0].numel()
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(fan_in))


def _rel_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


# ------------------------------------------------------------------------------------------------
# a. diffusers UNet3D parity, ModelScope round trip
# ------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def unet3d_case(tmp_path_factory):
    diffusers = _diffusers()
    torch.manual_seed(0)
    ref = diffusers.UNet3DConditionModel(**SMALL_3D).eval()
    _randomise(ref, seed=1)
    folder = tmp_path_factory.mktemp("unet3d")
    ref.save_pretrained(folder, safe_serialization=True)
    x = torch.randn(1, 4, 8, 32, 32, generator=torch.Generator().manual_seed(2))
    context = torch.randn(1, 77, 64, generator=torch.Generator().manual_seed(3))
    t = torch.tensor([417])
    with torch.no_grad():
        expected = ref(x, t, encoder_hidden_states=context).sample
    config = json.loads((folder / "config.json").read_text())
    sd = load_file(str(folder / "diffusion_pytorch_model.safetensors"))
    return dict(config=config, sd=sd, x=x, t=t, context=context, expected=expected)


def _ours(cfg: UNetConfig, sd: dict) -> SpaceTimeUNet:
    model = SpaceTimeUNet(cfg).eval()
    model.load_state_dict(sd, strict=True)
    return model


def test_diffusers_unet3d_parity(unet3d_case):
    cfg = UC.config_from_diffusers(unet3d_case["config"])
    assert C.detect_family(unet3d_case["sd"]) == "unet3d-diffusers"
    model = _ours(cfg, C.diffusers_to_ours(unet3d_case["sd"]))
    with torch.no_grad():
        out = model(unet3d_case["x"], unet3d_case["t"], unet3d_case["context"])
    err = _rel_l2(out, unet3d_case["expected"])
    print(f"UNet3D parity rel L2 = {err:.2e}")
    assert err <= 1e-4
    # the check sees the head layout: reading UNet3D's attention_head_dim as a head COUNT (as UNet2D does)
    # gives another network from the same weights (compared on a small clip)
    as_count = _ours(dataclasses.replace(cfg, num_attention_heads=SMALL_3D["attention_head_dim"]), model.state_dict())
    x, context = unet3d_case["x"][:, :, :2, :16, :16], unet3d_case["context"][:, :5]
    with torch.no_grad():
        assert _rel_l2(as_count(x, unet3d_case["t"], context), model(x, unet3d_case["t"], context)) > 1e-3


def test_diffusers_config_round_trip(unet3d_case):
    cfg = UC.config_from_diffusers(unet3d_case["config"])
    back = UC.unet3d_config_to_diffusers(cfg)
    for key, value in back.items():
        if key in unet3d_case["config"]:
            want = unet3d_case["config"][key]
            assert (list(want) if isinstance(want, (list, tuple)) else want) == value, key
    assert UC.config_from_diffusers(back) == cfg
    assert C.ours_to_diffusers(C.diffusers_to_ours(unet3d_case["sd"])).keys() == unet3d_case["sd"].keys()


def test_modelscope_round_trip_and_parity(unet3d_case):
    cfg = UC.config_from_diffusers(unet3d_case["config"])
    ours = C.diffusers_to_ours(unet3d_case["sd"])
    ms = C.ours_to_modelscope(ours)
    assert C.detect_family(ms) == "unet3d-modelscope"
    assert len(ms) == len(ours)
    # names and shapes of the original layout (ModelScope unet_sd.py: ResBlock in_layers/out_layers with
    # `temopral_conv` inside, transformer_in at input_blocks.0.1, Conv1d temporal projections, bare
    # Downsample.op, Upsample after the transformers)
    assert ms["input_blocks.0.1.proj_in.weight"].shape == (64, 32, 1)
    assert ms["input_blocks.1.0.temopral_conv.conv4.3.weight"].shape == (32, 32, 3, 1, 1)
    assert ms["input_blocks.1.1.proj_in.weight"].shape == (32, 32)
    assert ms["input_blocks.2.2.proj_out.weight"].shape == (32, 32, 1)
    assert ms["input_blocks.3.op.weight"].shape == (32, 32, 3, 3)
    assert ms["input_blocks.4.0.skip_connection.weight"].shape == (64, 32, 1, 1)
    assert "input_blocks.10.1.norm.weight" not in ms and "input_blocks.10.0.in_layers.2.weight" in ms
    assert ms["middle_block.3.out_layers.3.weight"].shape == (64, 64, 3, 3)
    assert ms["output_blocks.2.1.conv.weight"].shape == (64, 64, 3, 3)
    assert ms["output_blocks.5.3.conv.weight"].shape == (64, 64, 3, 3)
    assert ms["output_blocks.11.0.skip_connection.weight"].shape == (32, 64, 1, 1)
    assert ms["out.2.weight"].shape == (4, 32, 3, 3) and ms["time_embed.2.weight"].shape == (128, 128)
    back = C.modelscope_to_ours(ms)
    assert back.keys() == ours.keys()
    assert all(torch.equal(back[k], ours[k]) and back[k].shape == ours[k].shape for k in ours)
    assert C.ours_to_modelscope(back).keys() == ms.keys()
    # with a prefix, as some repackaged files have
    assert C.modelscope_to_ours({"model.diffusion_model." + k: v for k, v in ms.items()}).keys() == ours.keys()
    model = _ours(cfg, back)
    with torch.no_grad():
        out = model(unet3d_case["x"], unet3d_case["t"], unet3d_case["context"])
    assert _rel_l2(out, unet3d_case["expected"]) <= 1e-4
    # shapes alone give back the same config, from either layout
    assert UC.infer_unet3d_config(ms) == cfg
    assert UC.infer_unet3d_config(unet3d_case["sd"]) == cfg


def test_modelscope_layout_rejects_foreign_keys(unet3d_case):
    ms = C.ours_to_modelscope(C.diffusers_to_ours(unet3d_case["sd"]))
    with pytest.raises(ValueError, match="input_blocks.1.7.weird"):
        C.modelscope_to_ours({**ms, "input_blocks.1.7.weird": torch.zeros(1)})
    pseudo = SpaceTimeUNet(UNetConfig(block_out_channels=(32, 64), attention_levels=(False, True),
                                      context_dim=16)).state_dict()
    with pytest.raises(ValueError, match="no place in the ModelScope layout"):
        C.ours_to_modelscope(pseudo)


# ------------------------------------------------------------------------------------------------
# b. real-scale ModelScope T2V / Zeroscope UNet, on the meta device (no memory)
# ------------------------------------------------------------------------------------------------

def _real_config() -> UNetConfig:
    return UNetConfig(in_channels=4, out_channels=4, block_out_channels=(320, 640, 1280, 1280), layers_per_block=2,
                      attention_levels=(True, True, True, False), num_attention_heads=None, attention_head_dim=64,
                      context_dim=1024, norm_num_groups=32, linear_projection=True, pseudo3d_convs=False,
                      temporal_conv_blocks=True, transformer_in=True, transformer_in_heads=8,
                      transformer_in_head_dim=64, temporal_position_embedding=False, fps_conditioning=False,
                      mid_attention=True)


def test_real_scale_keys_and_parameter_count():
    with torch.device("meta"):
        ours = SpaceTimeUNet(_real_config())
    sd = ours.state_dict()
    assert sum(p.numel() for p in ours.parameters()) == REAL_PARAMS
    ms = C.ours_to_modelscope(sd)
    assert len(ms) == len(sd) == 1480
    published = {"time_embed.0.weight": (1280, 320), "input_blocks.0.0.weight": (320, 4, 3, 3),
                 "input_blocks.0.1.proj_in.weight": (512, 320, 1),
                 "input_blocks.0.1.transformer_blocks.0.attn1.to_q.weight": (512, 512),
                 "input_blocks.1.0.temopral_conv.conv1.0.weight": (320,),
                 "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": (320, 1024),
                 "input_blocks.1.2.proj_in.weight": (320, 320, 1), "input_blocks.3.op.weight": (320, 320, 3, 3),
                 "input_blocks.9.op.weight": (1280, 1280, 3, 3), "input_blocks.11.0.in_layers.2.weight": (1280, 1280, 3, 3),
                 "middle_block.1.proj_in.weight": (1280, 1280), "middle_block.2.proj_out.weight": (1280, 1280, 1),
                 "middle_block.3.temopral_conv.conv4.3.weight": (1280, 1280, 3, 1, 1),
                 "output_blocks.0.0.in_layers.0.weight": (2560,), "output_blocks.2.1.conv.weight": (1280, 1280, 3, 3),
                 "output_blocks.5.3.conv.weight": (1280, 1280, 3, 3), "output_blocks.8.0.skip_connection.weight": (640, 960, 1, 1),
                 "output_blocks.11.2.proj_out.weight": (320, 320, 1), "out.2.weight": (4, 320, 3, 3)}
    for key, shape in published.items():
        assert tuple(ms[key].shape) == shape, key
    back = C.modelscope_to_ours(ms)
    assert {k: v.shape for k, v in back.items()} == {k: v.shape for k, v in sd.items()}
    cfg = UC.infer_unet3d_config(ms)
    assert cfg == _real_config()
    assert [cfg.heads(c) for c in (320, 640, 1280)] == [(5, 64), (10, 64), (20, 64)]   # ModelScope: head_dim 64


def test_real_scale_matches_diffusers_on_meta():
    diffusers = _diffusers()
    with torch.device("meta"):
        ref = diffusers.UNet3DConditionModel()
        cfg = UC.config_from_diffusers(dict(ref.config))
        ours = SpaceTimeUNet(cfg)
    assert cfg == _real_config()
    ref_shapes = {k: tuple(v.shape) for k, v in ref.state_dict().items()}
    our_shapes = {k: tuple(v.shape) for k, v in C.ours_to_diffusers(ours.state_dict()).items()}
    assert sorted(set(ref_shapes) ^ set(our_shapes)) == []
    assert ref_shapes == our_shapes
    assert sum(p.numel() for p in ref.parameters()) == REAL_PARAMS


# ------------------------------------------------------------------------------------------------
# c. SD image UNet inflation: F frames == the image model on each frame
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("variant", ["sd1", "sd2"])
def test_inflation_equals_image_model_per_frame(variant):
    diffusers = _diffusers()
    extra = dict(attention_head_dim=8) if variant == "sd1" else \
        dict(attention_head_dim=(2, 4, 4, 4), use_linear_projection=True)   # SD2: heads of a fixed size (16 here)
    torch.manual_seed(0)
    ref = diffusers.UNet2DConditionModel(**SMALL_2D, **extra).eval()
    _randomise(ref, seed=4)
    sd = ref.state_dict()
    assert C.detect_family(sd) == "sd-unet2d-diffusers"
    model, report = UC.inflate_sd_unet(sd, dict(ref.config))
    assert report.unexpected_keys == [] and report.loaded_keys == len(sd)
    assert report.missing_temporal_keys and all(is_temporal_key(k) for k in report.missing_temporal_keys)
    assert model.config.linear_projection == (variant == "sd2")
    b, f, size = 2, 3, 16
    x = torch.randn(b, 4, f, size, size, generator=torch.Generator().manual_seed(5))
    context = torch.randn(b, 7, 64, generator=torch.Generator().manual_seed(6))
    t = torch.tensor([10, 900])
    with torch.no_grad():
        video = model.eval()(x, t, context, fps=torch.tensor([8.0, 24.0]))
        frames = x.permute(0, 2, 1, 3, 4).reshape(b * f, 4, size, size)
        per_frame = ref(frames, t.repeat_interleave(f), encoder_hidden_states=context.repeat_interleave(f, 0)).sample
    per_frame = per_frame.reshape(b, f, 4, size, size).permute(0, 2, 1, 3, 4)
    diff = (video - per_frame).abs().max().item()
    print(f"inflation {variant}: max abs diff = {diff:.2e}")
    assert diff <= 1e-5
    # the LDM layout of the same weights gives the same model; shapes alone give the same structure
    ldm = C.ours_to_ldm(sd, prefix="model.diffusion_model.")
    ldm["first_stage_model.decoder.conv_in.weight"] = torch.zeros(1)           # a full LDM checkpoint
    assert C.detect_family(ldm) == "sd-unet2d-ldm"
    assert "model.diffusion_model.input_blocks.3.0.op.weight" in ldm
    assert "model.diffusion_model.output_blocks.2.1.conv.weight" in ldm
    assert "model.diffusion_model.output_blocks.5.2.conv.weight" in ldm
    from_ldm, ldm_report = UC.inflate_sd_unet(ldm, model.config)
    assert ldm_report.source_family == "sd-unet2d-ldm"
    from_ldm_sd = from_ldm.state_dict()
    image_keys = [k for k in model.state_dict() if not is_temporal_key(k)]
    assert len(image_keys) == len(sd)
    assert all(torch.equal(model.state_dict()[k], from_ldm_sd[k]) for k in image_keys)
    inferred = UC.infer_sd_unet_config(ldm)
    for name in ("block_out_channels", "layers_per_block", "attention_levels", "context_dim", "linear_projection",
                 "in_channels", "out_channels", "pseudo3d_convs", "temporal_attention"):
        assert getattr(inferred, name) == getattr(model.config, name), name


def test_inflation_rejects_what_does_not_fit():
    diffusers = _diffusers()
    with torch.device("meta"):
        ref = diffusers.UNet2DConditionModel(**SMALL_2D, attention_head_dim=8)
    sd = ref.state_dict()
    with pytest.raises(ValueError, match="down_blocks.0.resnets.0.extra"):
        UC.inflate_sd_unet({**sd, "down_blocks.0.resnets.0.extra.weight": torch.zeros(1)}, dict(ref.config))
    with pytest.raises(ValueError, match="class_embedding"):
        UC.inflate_sd_unet({**sd, "class_embedding.linear_1.weight": torch.zeros(1)}, dict(ref.config))
    with pytest.raises(ValueError, match="addition_embed_type"):
        UC.config_from_diffusers({**dict(ref.config), "addition_embed_type": "text_time"})
    with pytest.raises(ValueError, match="not expressible"):
        UC.config_from_diffusers({**dict(ref.config), "attention_head_dim": [2, 2, 4, 8]})


# ------------------------------------------------------------------------------------------------
# family detection and config mapping without diffusers
# ------------------------------------------------------------------------------------------------

def test_detect_family_on_our_models():
    with torch.device("meta"):
        mav = SpaceTimeUNet(UNetConfig(block_out_channels=(32, 64), attention_levels=(False, True), context_dim=16))
        image = SpaceTimeUNet(UNetConfig(block_out_channels=(32, 64), attention_levels=(False, True), context_dim=16,
                                         pseudo3d_convs=False, temporal_attention=False, fps_conditioning=False))
        unet3d = SpaceTimeUNet(_real_config())
    assert C.detect_family(mav.state_dict()) == "mav"
    assert C.detect_family(image.state_dict()) == "sd-unet2d-diffusers"
    assert C.detect_family(unet3d.state_dict()) == "unet3d-diffusers"
    assert C.detect_family(C.ours_to_modelscope(unet3d.state_dict())) == "unet3d-modelscope"
    assert C.detect_family(C.ours_to_ldm(image.state_dict(), "model.diffusion_model.")) == "sd-unet2d-ldm"
    assert C.detect_family(C.ours_to_ldm(image.state_dict())) == "sd-unet2d-ldm"
    assert C.detect_family(["encoder.conv_in.weight", "decoder.conv_out.weight"]) == "unknown"
    assert C.detect_family([]) == "unknown"


def test_config_mapping_rejects_inexpressible():
    with pytest.raises(ValueError, match="pseudo3d_convs"):
        UC.unet3d_config_to_diffusers(UNetConfig(block_out_channels=(32, 64, 64), attention_levels=(True, True, False)))
    with pytest.raises(ValueError, match="block heads"):
        UC.unet3d_config_to_diffusers(dataclasses.replace(_real_config(), num_attention_heads=64))
    assert UC.config_from_diffusers(UC.unet3d_config_to_diffusers(_real_config())) == _real_config()
    with pytest.raises(ValueError, match="DownBlock3D"):
        UC.config_from_diffusers({"_class_name": "UNet3DConditionModel",
                                 "down_block_types": ["CrossAttnDownBlock3D", "SomethingElse3D"],
                                 "up_block_types": ["UpBlock3D", "CrossAttnUpBlock3D"], "block_out_channels": [32, 64]})
    with pytest.raises(ValueError, match="UNet2DConditionModel"):
        UC.config_from_diffusers({"_class_name": "UNetSpatioTemporalConditionModel"})


def test_modelscope_round_trip_is_exact_without_diffusers():
    cfg = dataclasses.replace(_real_config(), block_out_channels=(32, 64, 64, 64), attention_head_dim=8,
                              transformer_in_head_dim=8, context_dim=24)
    torch.manual_seed(0)
    sd = SpaceTimeUNet(cfg).state_dict()
    ms = C.ours_to_modelscope(sd)
    back = C.modelscope_to_ours(ms)
    assert back.keys() == sd.keys()
    assert all(torch.equal(back[k], sd[k]) for k in sd)
    assert UC.infer_unet3d_config(ms) == cfg
    assert C.to_ours(ms)[0] == "unet3d-modelscope"
