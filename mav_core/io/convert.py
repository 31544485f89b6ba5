"""Checkpoint layouts <-> SpaceTimeUNet keys: family detection and key converters (configs and the
inflation of image UNets: io.unet_configs).

Pure functions on state dicts (no diffusers at run time). Layouts handled:
  mav                  our own keys (SpaceTimeUNet.state_dict());
  unet3d-diffusers     diffusers UNet3DConditionModel (ModelScope T2V / Zeroscope in diffusers form);
                       our module names mirror it, so the key map is the identity;
  unet3d-modelscope    the original ModelScope `text2video_pytorch_model.pth` (input_blocks / middle_block /
                       output_blocks, `temopral_conv` (sic) inside each ResBlock, spatial transformer at .1,
                       temporal transformer at .2, temporal projections as Conv1d);
  sd-unet2d-diffusers  Stable Diffusion 1.x / 2.x UNet2DConditionModel (image model, to inflate);
  sd-unet2d-ldm        the same UNet in the original LDM layout (`model.diffusion_model.input_blocks...`).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable, Mapping

import torch


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


def our_layout(keys: list[str]) -> _Layout:
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
    lay = our_layout(list(sd))
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
