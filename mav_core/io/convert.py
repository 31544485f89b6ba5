"""Checkpoint layouts <-> SpaceTimeUNet: key converters, family detection, config mapping, inflation.

Pure functions on state dicts (no diffusers at run time). Layouts handled:
  mav                  our own keys (SpaceTimeUNet.state_dict());
  unet3d-diffusers     diffusers UNet3DConditionModel (ModelScope T2V / Zeroscope in diffusers form);
                       our module names mirror it, so the key map is the identity;
  unet3d-modelscope    the original ModelScope `text2video_pytorch_model.pth` (input_blocks / middle_block /
                       output_blocks, `temopral_conv` (sic) inside each ResBlock, spatial transformer at .1,
                       temporal transformer at .2, temporal projections as Conv1d);
  sd-unet2d-diffusers  Stable Diffusion 1.x / 2.x UNet2DConditionModel (image model, to inflate);
  sd-unet2d-ldm        the same UNet in the original LDM layout (`model.diffusion_model.input_blocks...`).

Attention heads: diffusers' UNet3D `attention_head_dim` really is the size of a head (its blocks pass
it on swapped: Transformer2DModel(c // attention_head_dim, attention_head_dim)), as ModelScope's
`head_dim`: c/64 heads of 64 channels; transformer_in has 8 heads of that size. UNet2D's (SD)
`attention_head_dim` is a head COUNT per block (SD 1.x: 8; SD 2.x: [5, 10, 20, 20] = heads of 64).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Iterable, Mapping

import torch

from ..models.unet import SpaceTimeUNet, UNetConfig, is_temporal_key

FAMILIES = ("mav", "unet3d-diffusers", "unet3d-modelscope", "sd-unet2d-diffusers", "sd-unet2d-ldm", "unknown")
LDM_UNET_PREFIX = "model.diffusion_model."
MODELSCOPE_HEAD_DIM = 64          # ModelScope T2V: `unet_head_dim`
TRANSFORMER_IN_HEADS = 8          # both ModelScope (`unet_num_heads`) and diffusers use 8 heads in transformer_in
_UNET_PREFIXES = (LDM_UNET_PREFIX, "diffusion_model.", "unet.", "module.")
_UNET_ROOTS = ("input_blocks.", "middle_block.", "down_blocks.", "mid_block.", "conv_in.")
_OUR_ONLY_MARKERS = (".temporal.", "fps_embedding.", "image_embedding.", "image_tokens.")
_DIFFUSERS_TOP = {"conv_in", "time_embedding", "transformer_in", "down_blocks", "mid_block", "up_blocks",
                  "conv_norm_out", "conv_out"}


# ---------------------------------------------------------------------------------------------------
# prefixes and family detection
# ---------------------------------------------------------------------------------------------------

def _unet_prefix(keys: Iterable[str]) -> str:
    """The prefix in front of the UNet's own keys ('' when none), e.g. 'model.diffusion_model.'."""
    keys = list(keys)
    if any(k.startswith(_UNET_ROOTS) for k in keys):
        return ""
    for prefix in _UNET_PREFIXES:
        if any(k.startswith(prefix) and k[len(prefix):].startswith(_UNET_ROOTS) for k in keys):
            return prefix
    return ""


def unet_state_dict(sd: Mapping[str, torch.Tensor]) -> dict:
    """The UNet's own entries of a state dict, prefix removed (a full LDM checkpoint also holds the VAE,
    text encoder and EMA copies; only `model.diffusion_model.*` is kept)."""
    prefix = _unet_prefix(sd.keys())
    if not prefix:
        return dict(sd)
    return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}


def detect_family(sd_keys: Iterable[str]) -> str:
    """Which layout a state dict's keys are in: one of FAMILIES."""
    keys = list(sd_keys)
    prefix = _unet_prefix(keys)
    keys = [k[len(prefix):] for k in keys if k.startswith(prefix)]
    if any(k.startswith("input_blocks.") for k in keys) and any(k.startswith("middle_block.") for k in keys):
        if any(".temopral_conv." in k for k in keys) or any(k.startswith("input_blocks.0.1.") for k in keys):
            return "unet3d-modelscope"
        return "sd-unet2d-ldm"
    if any(k.startswith("down_blocks.") for k in keys) and any(k.startswith("conv_in.") for k in keys):
        if any(m in k or k.startswith(m) for k in keys for m in _OUR_ONLY_MARKERS):
            return "mav"
        if any(".temp_convs." in k for k in keys) or any(k.startswith("transformer_in.") for k in keys):
            return "unet3d-diffusers"
        if any(".temp_attentions." in k for k in keys):
            return "mav"
        return "sd-unet2d-diffusers"
    return "unknown"


# ---------------------------------------------------------------------------------------------------
# diffusers <-> ours (identity on names; checked)
# ---------------------------------------------------------------------------------------------------

def diffusers_to_ours(sd: Mapping[str, torch.Tensor]) -> dict:
    """diffusers UNet3DConditionModel / UNet2DConditionModel keys -> ours. Our module names mirror
    diffusers', so names are unchanged; keys of modules we do not have (class/addition embeddings,
    time_embedding.cond_proj, ...) raise."""
    sd = unet_state_dict(sd)
    foreign = sorted(k for k in sd if k.split(".")[0] not in _DIFFUSERS_TOP or ".cond_proj." in k)
    if foreign:
        raise ValueError(f"diffusers UNet state dict has {len(foreign)} keys of modules SpaceTimeUNet does not "
                         f"have (e.g. {foreign[:5]}); only plain text-conditioned UNet2D/UNet3D models convert")
    return dict(sd)


def ours_to_diffusers(sd: Mapping[str, torch.Tensor]) -> dict:
    """Our keys -> diffusers. Our-only layers (pseudo-3D temporal convs, fps/image embeddings) raise."""
    ours_only = sorted(k for k in sd if any(m in k or k.startswith(m) for m in _OUR_ONLY_MARKERS))
    if ours_only:
        raise ValueError(f"state dict has {len(ours_only)} keys diffusers UNets have no place for "
                         f"(e.g. {ours_only[:5]})")
    return dict(sd)


# ---------------------------------------------------------------------------------------------------
# LDM-style layouts (ModelScope original, SD original) <-> ours
# ---------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Layout:
    """What a UNet has, read off its keys: enough to enumerate its modules in either naming."""
    levels: int
    layers: int
    attention: tuple
    temporal_attention: bool
    temp_convs: bool
    transformer_in: bool
    mid_attention: bool
    fps: bool


_RESNET_RENAMES = (("in_layers.0.", "norm1."), ("in_layers.2.", "conv1."), ("emb_layers.1.", "time_emb_proj."),
                   ("out_layers.0.", "norm2."), ("out_layers.3.", "conv2."), ("skip_connection.", "conv_shortcut."))


def _module_pairs(lay: _Layout, style: str) -> list[tuple[str, str, str]]:
    """(LDM-style prefix, our prefix, kind) for every module. style: 'modelscope' or 'ldm'.
    kind: resnet | spatial | temporal | plain."""
    modelscope = style == "modelscope"
    pairs = [("time_embed.0.", "time_embedding.linear_1.", "plain"), ("time_embed.2.", "time_embedding.linear_2.", "plain"),
             ("input_blocks.0.0.", "conv_in.", "plain"),
             ("out.0.", "conv_norm_out.", "plain"), ("out.2.", "conv_out.", "plain")]
    if lay.fps:
        pairs += [("fps_embedding.0.", "fps_embedding.linear_1.", "plain"),
                  ("fps_embedding.2.", "fps_embedding.linear_2.", "plain")]
    if lay.transformer_in:
        pairs.append(("input_blocks.0.1.", "transformer_in.", "temporal"))

    def resnet(ldm: str, ours_block: str, j: int):
        pairs.append((ldm, f"{ours_block}.resnets.{j}.", "resnet"))
        if lay.temp_convs:
            pairs.append((f"{ldm}temopral_conv.", f"{ours_block}.temp_convs.{j}.", "plain"))

    def attentions(ldm_block: str, ours_block: str, j: int) -> int:
        """Adds the spatial (+ temporal) transformer after a ResBlock; returns the next free slot."""
        pairs.append((f"{ldm_block}.1.", f"{ours_block}.attentions.{j}.", "spatial"))
        if lay.temporal_attention:
            pairs.append((f"{ldm_block}.2.", f"{ours_block}.temp_attentions.{j}.", "temporal"))
            return 3
        return 2

    i = 1
    for b in range(lay.levels):
        for j in range(lay.layers):
            resnet(f"input_blocks.{i}.0.", f"down_blocks.{b}", j)
            if lay.attention[b]:
                attentions(f"input_blocks.{i}", f"down_blocks.{b}", j)
            i += 1
        if b < lay.levels - 1:
            op = f"input_blocks.{i}.op." if modelscope else f"input_blocks.{i}.0.op."
            pairs.append((op, f"down_blocks.{b}.downsamplers.0.conv.", "plain"))
            i += 1

    resnet("middle_block.0.", "mid_block", 0)
    m = attentions("middle_block", "mid_block", 0) if lay.mid_attention else 1
    resnet(f"middle_block.{m}.", "mid_block", 1)

    o = 0
    for u in range(lay.levels):
        level = lay.levels - 1 - u
        for j in range(lay.layers + 1):
            resnet(f"output_blocks.{o}.0.", f"up_blocks.{u}", j)
            slot = attentions(f"output_blocks.{o}", f"up_blocks.{u}", j) if lay.attention[level] else 1
            if j == lay.layers and u < lay.levels - 1:
                pairs.append((f"output_blocks.{o}.{slot}.conv.", f"up_blocks.{u}.upsamplers.0.conv.", "plain"))
            o += 1
    return pairs


def _indices(keys: Iterable[str], pattern: str) -> set[int]:
    rx = re.compile(pattern)
    return {int(m.group(1)) for k in keys if (m := rx.match(k))}


def _ldm_layout(keys: list[str], style: str) -> _Layout:
    op = r"input_blocks\.(\d+)\.op\.weight$" if style == "modelscope" else r"input_blocks\.(\d+)\.0\.op\.weight$"
    downs = sorted(_indices(keys, op))
    n_inputs = max(_indices(keys, r"input_blocks\.(\d+)\."), default=0)
    layers = (downs[0] - 1) if downs else n_inputs
    if layers < 1:
        raise ValueError(f"cannot read the block structure of this {style} UNet: no ResBlocks in input_blocks")
    levels = len(downs) + 1
    firsts = [1 + b * (layers + 1) for b in range(levels)]
    attention = tuple(f"input_blocks.{i}.1.norm.weight" in keys for i in firsts)
    temporal_attention = style == "modelscope" and any(f"input_blocks.{i}.2.norm.weight" in keys for i in firsts)
    return _Layout(levels=levels, layers=layers, attention=attention, temporal_attention=temporal_attention,
                   temp_convs=any(".temopral_conv." in k for k in keys),
                   transformer_in=style == "modelscope" and any(k.startswith("input_blocks.0.1.") for k in keys),
                   mid_attention="middle_block.1.norm.weight" in keys,
                   fps=any(k.startswith("fps_embedding.") for k in keys))


def _our_layout(keys: list[str]) -> _Layout:
    levels = max(_indices(keys, r"down_blocks\.(\d+)\."), default=-1) + 1
    layers = len(_indices(keys, r"down_blocks\.0\.resnets\.(\d+)\."))
    if levels < 1 or layers < 1:
        raise ValueError("state dict has no down_blocks.N.resnets.M keys: not a SpaceTimeUNet/diffusers UNet")
    return _Layout(levels=levels, layers=layers,
                   attention=tuple(any(k.startswith(f"down_blocks.{b}.attentions.") for k in keys) for b in range(levels)),
                   temporal_attention=any(".temp_attentions." in k for k in keys),
                   temp_convs=any(".temp_convs." in k for k in keys),
                   transformer_in=any(k.startswith("transformer_in.") for k in keys),
                   mid_attention=any(k.startswith("mid_block.attentions.") for k in keys),
                   fps=any(k.startswith("fps_embedding.") for k in keys))


def _lookup(key: str, table: dict) -> tuple[str, tuple] | None:
    """The longest dotted prefix of `key` found in `table`, with its entry."""
    parts = key.split(".")
    for n in range(len(parts) - 1, 0, -1):
        prefix = ".".join(parts[:n]) + "."
        if prefix in table:
            return prefix, table[prefix]
    return None


def _is_projection(rest: str) -> bool:
    return rest in ("proj_in.weight", "proj_out.weight")


def _ldm_to_ours(sd: Mapping[str, torch.Tensor], style: str) -> dict:
    table = {ldm: (ours, kind) for ldm, ours, kind in _module_pairs(_ldm_layout(list(sd), style), style)}
    return _rename(sd, table, to_ours=True,
                   failure=f"do not fit the {style} UNet layout read off this state dict")


def _ours_to_ldm(sd: Mapping[str, torch.Tensor], style: str, what: str) -> dict:
    lay = _our_layout(list(sd))
    if style == "ldm" and (lay.temporal_attention or lay.temp_convs or lay.transformer_in or lay.fps):
        raise ValueError("the SD (LDM) image layout has no temporal layers; this state dict has some")
    table = {ours: (ldm, kind) for ldm, ours, kind in _module_pairs(lay, style)}
    return _rename(sd, table, to_ours=False, failure=f"have no place in the {what} layout")


def _rename(sd: Mapping[str, torch.Tensor], table: dict, to_ours: bool, failure: str) -> dict:
    """Every key through `table` (module prefix -> (new prefix, kind)), both directions of the LDM
    mapping: ResBlock sub-keys are renamed and temporal projections change between Conv1d k=1 (LDM)
    and Linear (ours). Keys with no place are collected and reported together."""
    renames = _RESNET_RENAMES if to_ours else [(new, old) for old, new in _RESNET_RENAMES]
    out, unknown = {}, []
    for key, value in sd.items():
        hit = _lookup(key, table)
        if hit is None:
            unknown.append(key)
            continue
        prefix, (target, kind) = hit
        rest = key[len(prefix):]
        if kind == "resnet":
            for old, new in renames:
                if rest.startswith(old) and "." not in rest[len(old):]:
                    rest = new + rest[len(old):]
                    break
            else:
                unknown.append(key)
                continue
        if kind == "temporal" and _is_projection(rest):
            if to_ours and value.dim() == 3:
                value = value.squeeze(-1)        # Conv1d k=1 -> Linear
            elif not to_ours and value.dim() == 2:
                value = value.unsqueeze(-1)      # Linear -> Conv1d k=1
        out[target + rest] = value
    if unknown:
        raise ValueError(f"{len(unknown)} keys {failure} (e.g. {sorted(unknown)[:5]})")
    return out


def modelscope_to_ours(sd: Mapping[str, torch.Tensor]) -> dict:
    """Original ModelScope T2V UNet (`text2video_pytorch_model.pth`) keys -> ours (= diffusers UNet3D keys).
    Temporal-transformer projections (Conv1d, k=1) become Linear weights; everything else only renames."""
    return _ldm_to_ours(unet_state_dict(sd), "modelscope")


def ours_to_modelscope(sd: Mapping[str, torch.Tensor]) -> dict:
    """Our UNet3D-layout keys -> the original ModelScope layout (inverse of modelscope_to_ours)."""
    return _ours_to_ldm(sd, "modelscope", "ModelScope")


def ldm_to_ours(sd: Mapping[str, torch.Tensor]) -> dict:
    """SD 1.x/2.x UNet in the original LDM layout (`model.diffusion_model.*`, prefix optional) -> ours
    (= diffusers UNet2DConditionModel keys)."""
    return _ldm_to_ours(unet_state_dict(sd), "ldm")


def ours_to_ldm(sd: Mapping[str, torch.Tensor], prefix: str = "") -> dict:
    """Our image-model keys -> the LDM layout; `prefix` e.g. 'model.diffusion_model.'."""
    return {prefix + k: v for k, v in _ours_to_ldm(sd, "ldm", "SD (LDM)").items()}


def to_ours(sd: Mapping[str, torch.Tensor]) -> tuple[str, dict]:
    """(family, state dict in our key layout) for any supported family."""
    family = detect_family(sd.keys())
    if family == "unet3d-modelscope":
        return family, modelscope_to_ours(sd)
    if family == "sd-unet2d-ldm":
        return family, ldm_to_ours(sd)
    if family in ("unet3d-diffusers", "sd-unet2d-diffusers"):
        return family, diffusers_to_ours(sd)
    if family == "mav":
        return family, dict(sd)
    raise ValueError("state dict is in no known UNet layout (expected ours, diffusers UNet2D/UNet3D, "
                     "ModelScope T2V or an SD LDM checkpoint)")


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
    lay = _our_layout(keys)
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

