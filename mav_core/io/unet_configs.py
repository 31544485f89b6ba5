"""UNet configs of third-party layouts, and SD image UNets inflated to video.

  config_from_diffusers / unet3d_config_to_diffusers   diffusers config.json <-> UNetConfig
  infer_unet3d_config / infer_sd_unet_config           a config read off the tensor shapes (no config.json)
  inflate_sd_unet                                      an SD 1.x/2.x image UNet as a video SpaceTimeUNet whose
                                                       temporal layers start as the identity

Attention heads: diffusers' UNet3D `attention_head_dim` really is the size of a head (its blocks pass
it on swapped: Transformer2DModel(c // attention_head_dim, attention_head_dim)), as ModelScope's
`head_dim`: c/64 heads of 64 channels; transformer_in has 8 heads of that size. UNet2D's (SD)
`attention_head_dim` is a head COUNT per block (SD 1.x: 8; SD 2.x: [5, 10, 20, 20] = heads of 64).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

import torch

from .convert import (MODELSCOPE_HEAD_DIM, TRANSFORMER_IN_HEADS, our_layout, detect_family, diffusers_to_ours,
                      modelscope_to_ours, to_ours)
from ..models.unet import SpaceTimeUNet, UNetConfig, is_temporal_key


# ---------------------------------------------------------------------------------------------------
# configs
# ---------------------------------------------------------------------------------------------------

def _require(cfg: Mapping, key: str, allowed: tuple, default=None):
    value = cfg.get(key, default)
    if isinstance(value, list):
        value = tuple(value)
    if value not in allowed:
        raise ValueError(f"diffusers config {key}={value!r} is not supported (expected one of {list(allowed)})")


def _heads_to_ours(heads, channels: tuple) -> dict:
    """diffusers' per-block head counts -> UNetConfig's (num_attention_heads | attention_head_dim)."""
    if isinstance(heads, (list, tuple)):
        if len(heads) != len(channels):
            raise ValueError(f"diffusers config has {len(heads)} head counts for {len(channels)} blocks")
        if len(set(heads)) == 1:
            heads = heads[0]
        else:
            sizes = {c // n for c, n in zip(channels, heads)}
            if len(sizes) != 1 or any(c % n for c, n in zip(channels, heads)):
                raise ValueError(f"per-block head counts {list(heads)} for channels {list(channels)} are not "
                                 "expressible: UNetConfig holds one head count or one head size for all blocks")
            return {"num_attention_heads": None, "attention_head_dim": sizes.pop()}
    heads = int(heads)
    bad = [c for c in channels if c % heads]
    if bad:
        raise ValueError(f"block channels {bad} are not divisible by the head count {heads}")
    return {"num_attention_heads": heads, "attention_head_dim": channels[0] // heads}


def _block_attention(down: tuple, up: tuple, kind: str) -> tuple:
    attention = []
    for name in down:
        if name == f"CrossAttnDownBlock{kind}":
            attention.append(True)
        elif name == f"DownBlock{kind}":
            attention.append(False)
        else:
            raise ValueError(f"diffusers down block type {name!r} is not supported "
                             f"(expected CrossAttnDownBlock{kind} or DownBlock{kind})")
    expected = tuple(f"CrossAttnUpBlock{kind}" if a else f"UpBlock{kind}" for a in reversed(attention))
    if tuple(up) != expected:
        raise ValueError(f"diffusers up_block_types {list(up)} do not mirror the down blocks (expected {list(expected)})")
    return tuple(attention)


def _positive_int(value) -> bool:
    return type(value) is int and value > 0


def _check_sizes(cfg: Mapping) -> None:
    """diffusers config sizes must be positive integers (lists of them where diffusers allows a list)."""
    channels = cfg.get("block_out_channels", [1])
    if not isinstance(channels, (list, tuple)) or not channels or not all(map(_positive_int, channels)):
        raise ValueError(f"diffusers config block_out_channels={channels!r} must be a list of positive integers")
    for key in ("in_channels", "out_channels", "layers_per_block", "norm_num_groups", "cross_attention_dim",
                "attention_head_dim", "num_attention_heads"):
        value = cfg.get(key)
        values = value if isinstance(value, (list, tuple)) else [value]
        if value is not None and (not values or not all(map(_positive_int, values))):
            raise ValueError(f"diffusers config {key}={value!r} must be a positive integer"
                             + (" or a list of them" if key != "in_channels" else ""))


def config_from_diffusers(config_json: Mapping, temporal: bool = True) -> UNetConfig:
    """UNetConfig from a diffusers config.json (UNet3DConditionModel, or UNet2DConditionModel for SD 1.x/2.x).
    A UNet2D config gives our video family (pseudo-3D convs + temporal attention, identity-initialised)
    when `temporal`, else the plain image model."""
    cfg = dict(config_json)
    _check_sizes(cfg)
    name = cfg.get("_class_name") or ("UNet3DConditionModel" if any("3D" in t for t in cfg.get("down_block_types", ()))
                                      else "UNet2DConditionModel")
    if name not in ("UNet3DConditionModel", "UNet2DConditionModel"):
        raise ValueError(f"diffusers model class {name!r} is not supported (expected UNet3DConditionModel or "
                         "UNet2DConditionModel)")
    three_d = name == "UNet3DConditionModel"
    kind = "3D" if three_d else "2D"
    default_down = (("CrossAttnDownBlock" + kind,) * 3) + ("DownBlock" + kind,)
    default_up = ("UpBlock" + kind,) + (("CrossAttnUpBlock" + kind,) * 3)
    channels = tuple(cfg.get("block_out_channels", (320, 640, 1280, 1280)))
    attention = _block_attention(tuple(cfg.get("down_block_types", default_down)),
                                 tuple(cfg.get("up_block_types", default_up)), kind)
    if len(attention) != len(channels):
        raise ValueError(f"diffusers config has {len(attention)} down blocks for {len(channels)} block_out_channels")
    _require(cfg, "act_fn", ("silu",), "silu")
    _require(cfg, "norm_eps", (1e-5,), 1e-5)
    _require(cfg, "downsample_padding", (1,), 1)
    _require(cfg, "mid_block_scale_factor", (1, 1.0), 1)
    _require(cfg, "time_cond_proj_dim", (None,))
    if cfg.get("norm_num_groups", 32) is None:
        raise ValueError("diffusers config norm_num_groups=None is not supported")
    layers = cfg.get("layers_per_block", 2)
    if not isinstance(layers, int):
        raise ValueError(f"diffusers config layers_per_block={layers!r}: only one count for all blocks is supported")
    if three_d and cfg.get("num_attention_heads") is not None:
        raise ValueError("diffusers UNet3D config num_attention_heads must be null (diffusers rejects it too)")
    heads = cfg.get("num_attention_heads") or cfg.get("attention_head_dim", 64 if three_d else 8)
    common = dict(in_channels=cfg.get("in_channels", 4), out_channels=cfg.get("out_channels", 4),
                  block_out_channels=channels, layers_per_block=layers, attention_levels=attention,
                  mid_attention=True, context_dim=cfg.get("cross_attention_dim", 1024 if three_d else 1280),
                  norm_num_groups=cfg.get("norm_num_groups", 32), image_embed_dim=0)
    if not three_d:
        common.update(_heads_to_ours(heads, channels))
    if isinstance(common["context_dim"], (list, tuple)):
        raise ValueError("per-block cross_attention_dim is not supported")
    if three_d:
        if not isinstance(heads, int) or any(c % heads or c < heads for c in channels):
            raise ValueError(f"UNet3D attention_head_dim={heads!r} must be one head size dividing every block's "
                             f"channels {list(channels)}")
        common.update(num_attention_heads=None, attention_head_dim=heads)
        return UNetConfig(**common, linear_projection=True, pseudo3d_convs=False, temporal_conv_blocks=True,
                          temporal_attention=True, temporal_position_embedding=False, transformer_in=True,
                          transformer_in_heads=TRANSFORMER_IN_HEADS, transformer_in_head_dim=heads,
                          fps_conditioning=False)
    for key, allowed, default in (("flip_sin_to_cos", (True,), True), ("freq_shift", (0,), 0),
                                  ("center_input_sample", (False,), False), ("class_embed_type", (None,), None),
                                  ("addition_embed_type", (None,), None), ("num_class_embeds", (None,), None),
                                  ("encoder_hid_dim", (None,), None), ("only_cross_attention", (False,), False),
                                  ("dual_cross_attention", (False,), False),
                                  ("resnet_time_scale_shift", ("default",), "default"),
                                  ("time_embedding_type", ("positional",), "positional"),
                                  ("time_embedding_dim", (None,), None), ("timestep_post_act", (None,), None),
                                  ("time_embedding_act_fn", (None,), None), ("conv_in_kernel", (3,), 3),
                                  ("conv_out_kernel", (3,), 3), ("attention_type", ("default",), "default"),
                                  ("cross_attention_norm", (None,), None), ("resnet_skip_time_act", (False,), False),
                                  ("resnet_out_scale_factor", (1, 1.0), 1.0),
                                  ("class_embeddings_concat", (False,), False),
                                  ("mid_block_type", ("UNetMidBlock2DCrossAttn",), "UNetMidBlock2DCrossAttn"),
                                  ("mid_block_only_cross_attention", (None, False), None),
                                  ("reverse_transformer_layers_per_block", (None,), None)):
        _require(cfg, key, allowed, default)
    depth = cfg.get("transformer_layers_per_block", 1)
    if any(d != 1 for d in (depth if isinstance(depth, (list, tuple)) else (depth,))):
        raise ValueError(f"transformer_layers_per_block={depth!r}: only 1 transformer layer per block is supported")
    return UNetConfig(**common, linear_projection=bool(cfg.get("use_linear_projection", False)),
                      pseudo3d_convs=temporal, temporal_conv_blocks=False, temporal_attention=temporal,
                      temporal_position_embedding=temporal, transformer_in=False, fps_conditioning=temporal)


def unet3d_config_to_diffusers(cfg: UNetConfig) -> dict:
    """diffusers UNet3DConditionModel config for a UNetConfig in the UNet3D layout; raises for configs
    diffusers cannot express (our temporal layers, head counts that are not one head size, ...)."""
    n = len(cfg.block_out_channels)
    problems = []
    expected = dict(pseudo3d_convs=False, temporal_conv_blocks=True, temporal_attention=True,
                    temporal_position_embedding=False, transformer_in=True, fps_conditioning=False,
                    image_embed_dim=0, extra_in_channels=0, mid_attention=True, linear_projection=True,
                    transformer_in_heads=TRANSFORMER_IN_HEADS)
    for key, want in expected.items():
        if getattr(cfg, key) != want:
            problems.append(f"{key}={getattr(cfg, key)!r} (diffusers: {want!r})")
    if tuple(cfg.attention_levels) != (True,) * (n - 1) + (False,):
        problems.append(f"attention_levels={cfg.attention_levels} (diffusers: attention on all but the last block)")
    head = cfg.transformer_in_head_dim
    blocks = [(c, cfg.heads(c)) for c in cfg.block_out_channels]
    if any(h != (c // head, head) for c, h in blocks):
        problems.append(f"block heads {[h for _, h in blocks]} (diffusers: heads of transformer_in_head_dim={head} "
                        "channels in every block)")
    if problems:
        raise ValueError("config has no diffusers UNet3DConditionModel equivalent: " + "; ".join(problems))
    return {"_class_name": "UNet3DConditionModel", "sample_size": None,
            "in_channels": cfg.in_channels, "out_channels": cfg.out_channels,
            "down_block_types": ["CrossAttnDownBlock3D"] * (n - 1) + ["DownBlock3D"],
            "up_block_types": ["UpBlock3D"] + ["CrossAttnUpBlock3D"] * (n - 1),
            "block_out_channels": list(cfg.block_out_channels), "layers_per_block": cfg.layers_per_block,
            "downsample_padding": 1, "mid_block_scale_factor": 1, "act_fn": "silu",
            "norm_num_groups": cfg.norm_num_groups, "norm_eps": 1e-5, "cross_attention_dim": cfg.context_dim,
            "attention_head_dim": head, "num_attention_heads": None, "time_cond_proj_dim": None}


def _shape(sd: Mapping, key: str) -> tuple:
    if key not in sd:
        raise ValueError(f"state dict lacks {key!r}, needed to read the model's shape")
    return tuple(sd[key].shape)


def _structure_from_ours(sd: Mapping) -> dict:
    """UNetConfig fields readable from tensor shapes of an our-layout state dict."""
    keys = list(sd)
    lay = our_layout(keys)
    channels = tuple(_shape(sd, f"down_blocks.{b}.resnets.0.conv1.weight")[0] for b in range(lay.levels))
    to_k = [k for k in keys if k.endswith("attn2.to_k.weight") and ".attentions." in k]
    if not to_k:
        raise ValueError("state dict has no cross-attention (attn2.to_k) weights: cannot read context_dim")
    proj = next(k for k in keys if ".attentions." in k and k.endswith("proj_in.weight"))
    return dict(in_channels=_shape(sd, "conv_in.weight")[1], out_channels=_shape(sd, "conv_out.weight")[0],
                block_out_channels=channels, layers_per_block=lay.layers, attention_levels=lay.attention,
                mid_attention=lay.mid_attention, context_dim=_shape(sd, to_k[0])[1],
                linear_projection=len(_shape(sd, proj)) == 2,
                pseudo3d_convs=any(".temporal." in k for k in keys), temporal_conv_blocks=lay.temp_convs,
                temporal_attention=lay.temporal_attention, transformer_in=lay.transformer_in,
                fps_conditioning=lay.fps, image_embed_dim=0)


def infer_unet3d_config(sd: Mapping[str, torch.Tensor], norm_num_groups: int = 32) -> UNetConfig:
    """UNetConfig of a UNet3D checkpoint (ModelScope or diffusers layout) from tensor shapes alone, for
    files without a config.json. The head size is read off transformer_in (8 heads): 64 in ModelScope
    T2V / Zeroscope; norm_num_groups is not in the shapes (32 in all published models)."""
    family = detect_family(sd.keys())
    if family == "unet3d-modelscope":
        ours = modelscope_to_ours(sd)
    elif family == "unet3d-diffusers":
        ours = diffusers_to_ours(sd)
    else:
        raise ValueError(f"state dict is a {family!r} checkpoint, not a UNet3D (ModelScope / diffusers) one")
    fields = _structure_from_ours(ours)
    d = _shape(ours, "transformer_in.proj_in.weight")[0] // TRANSFORMER_IN_HEADS if fields["transformer_in"] \
        else MODELSCOPE_HEAD_DIM
    return UNetConfig(**fields, num_attention_heads=None, attention_head_dim=d, norm_num_groups=norm_num_groups,
                      temporal_position_embedding=False, transformer_in_heads=TRANSFORMER_IN_HEADS,
                      transformer_in_head_dim=d)


def infer_sd_unet_config(sd: Mapping[str, torch.Tensor], temporal: bool = True,
                         norm_num_groups: int = 32) -> UNetConfig:
    """Inflated (or, temporal=False, image) UNetConfig of an SD 1.x/2.x image UNet from tensor shapes.
    Heads are not in the shapes: SD 1.x (context 768) uses 8 heads per block, SD 2.x heads of 64 channels."""
    family, ours = to_ours(sd)
    if family not in ("sd-unet2d-diffusers", "sd-unet2d-ldm"):
        raise ValueError(f"state dict is a {family!r} checkpoint, not an SD image UNet")
    fields = _structure_from_ours(ours)
    heads = dict(num_attention_heads=8, attention_head_dim=fields["block_out_channels"][0] // 8) \
        if fields["context_dim"] == 768 else dict(num_attention_heads=None, attention_head_dim=64)
    fields.update(pseudo3d_convs=temporal, temporal_attention=temporal, fps_conditioning=temporal)
    return UNetConfig(**fields, **heads, norm_num_groups=norm_num_groups, temporal_position_embedding=temporal)


# ---------------------------------------------------------------------------------------------------
# inflation of an SD image UNet
# ---------------------------------------------------------------------------------------------------

@dataclass
class InflationReport:
    source_family: str
    loaded_keys: int
    missing_temporal_keys: list = field(default_factory=list)   # identity-initialised, the new layers
    unexpected_keys: list = field(default_factory=list)         # always empty (anything else raises)

    def summary(self) -> str:
        return (f"inflated {self.source_family}: {self.loaded_keys} image tensors loaded, "
                f"{len(self.missing_temporal_keys)} temporal tensors identity-initialised")


def inflate_sd_unet(sd2d: Mapping[str, torch.Tensor], config: UNetConfig | Mapping | None = None
                    ) -> tuple[SpaceTimeUNet, InflationReport]:
    """A SpaceTimeUNet whose spatial layers are an SD 1.x/2.x image UNet (diffusers or LDM layout) and whose
    temporal layers start as the identity, so on F frames it equals the image model on each frame.
    config: a UNetConfig, a diffusers UNet2DConditionModel config dict, or None (read off the shapes)."""
    family, ours = to_ours(sd2d)
    if family not in ("sd-unet2d-diffusers", "sd-unet2d-ldm"):
        raise ValueError(f"inflate_sd_unet expects an SD image UNet; got a {family!r} checkpoint")
    if config is None:
        cfg = infer_sd_unet_config(ours)
    elif isinstance(config, UNetConfig):
        cfg = config
    else:
        cfg = config_from_diffusers(config, temporal=True)
    model = SpaceTimeUNet(cfg)
    target = model.state_dict()
    unexpected = sorted(set(ours) - set(target))
    spatial_missing = sorted(k for k in set(target) - set(ours) if not is_temporal_key(k))
    if unexpected or spatial_missing:
        raise ValueError(f"SD UNet does not match the config: {len(unexpected)} unexpected keys {unexpected[:5]}, "
                         f"{len(spatial_missing)} missing image keys {spatial_missing[:5]}")
    wrong = [f"{k}: {tuple(v.shape)} vs {tuple(target[k].shape)}" for k, v in ours.items() if v.shape != target[k].shape]
    if wrong:
        raise ValueError(f"SD UNet tensor shapes do not fit the config ({len(wrong)} differ, e.g. {wrong[:3]})")
    missing = sorted(set(target) - set(ours))
    model.load_state_dict(ours, strict=False)
    report = InflationReport(source_family=family, loaded_keys=len(ours), missing_temporal_keys=sorted(missing))
    return model, report

