"""Image checkpoints inflated to video: SD 1.x/2.x UNets (diffusers or LDM layout) and our own image
SpaceTimeUNets become video SpaceTimeUNets whose new temporal layers start as the identity, so every frame
equals the image model's output until temporal layers are trained or a motion file is applied."""
from __future__ import annotations

import dataclasses
from typing import Mapping

import torch

from . import convert, unet_configs
from .checkpoints import CheckpointError, LoadedModel, build_skeleton, check_state_dict, config_from_meta, parse_schedule
from .weights import build_loaded, read_weights, resolve_weights
from ..diffusion.schedule import NoiseSchedule
from ..models.unet import SpaceTimeUNet, UNetConfig, is_temporal_key


SD_SCHEDULE = NoiseSchedule("scaled_linear", beta_start=0.00085, beta_end=0.012)


SD_PREDICTION = "eps"


def inflated_config(cfg: UNetConfig) -> UNetConfig:
    """Our image config with Make-A-Video's temporal layers switched on (pseudo-3D convs, temporal attention,
    fps conditioning), as convert does for SD image configs."""
    return dataclasses.replace(cfg, pseudo3d_convs=True, temporal_attention=True, temporal_position_embedding=True,
                               fps_conditioning=True)


def _read_image_checkpoint(path) -> tuple[dict, dict, dict | None, str]:
    weights, diffusers_config = resolve_weights(path)
    sd, meta = read_weights(weights)
    return sd, meta, diffusers_config, str(weights)


def inflate_image_checkpoint(path_or_state_dict, config: UNetConfig | Mapping | None = None, device="cpu",
                             dtype: torch.dtype | None = None, path: str | None = None,
                             metadata: dict | None = None) -> LoadedModel:
    """A video LoadedModel (stage "decoder") from an image UNet: SD 1.x/2.x (diffusers folder/file or LDM
    checkpoint; family "sd-inflated", scaled_linear eps) or our own image SpaceTimeUNet file (family
    "mav-inflated", its own schedule). Temporal layers start as the identity, so each frame equals the
    image model's output until a motion file is applied. config: a UNetConfig or a diffusers UNet2D config."""
    if isinstance(path_or_state_dict, Mapping):
        sd, meta, diffusers_config = dict(path_or_state_dict), dict(metadata or {}), None
        path = path or "<state dict>"
    else:
        sd, meta, diffusers_config, path = _read_image_checkpoint(path_or_state_dict)
    if config is None:
        config = diffusers_config
    if "mav_module" in meta:
        return _inflate_ours(path, sd, meta, device, dtype)
    family = convert.detect_family(sd.keys())
    if family not in ("sd-unet2d-diffusers", "sd-unet2d-ldm"):
        raise CheckpointError(f"{path}: is a {family!r} checkpoint, not an image UNet to inflate (expected an "
                              "SD 1.x/2.x UNet in diffusers or LDM layout, or one of our image SpaceTimeUNets)")
    try:
        _, ours = convert.to_ours(sd)
        if isinstance(config, UNetConfig):
            cfg = config
        elif config is not None:
            cfg = unet_configs.config_from_diffusers(config, temporal=True)
        else:
            cfg = unet_configs.infer_sd_unet_config(ours)
    except ValueError as e:
        raise CheckpointError(f"{path}: {e}") from None
    del sd
    loaded_keys = len(ours)
    skeleton = build_skeleton(path, SpaceTimeUNet, cfg)
    target = skeleton.state_dict()
    check_state_dict(path, skeleton, ours, allow_missing=is_temporal_key)
    # the new temporal layers: identity-initialised tensors of a real (CPU) model of the same config
    fresh = _temporal_init(cfg)
    missing = sorted(k for k in target if k not in ours)
    ours.update({k: fresh[k] for k in missing})
    module, dtype_meta = build_loaded(path, ours, cfg, device, dtype)
    meta.update(dtype_meta, mav_source_family=family, mav_inflated_temporal_tensors=str(len(missing)),
                mav_image_tensors=str(loaded_keys))
    return LoadedModel(path, "decoder", "sd-inflated", module, SD_SCHEDULE, SD_PREDICTION, meta)


def _temporal_init(cfg: UNetConfig) -> dict:
    """The identity-initialised temporal tensors of SpaceTimeUNet(cfg) (seeded: the same every time).
    The model is built on CPU for this and dropped at once: its image layers are transient memory."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = SpaceTimeUNet(cfg)
    return {k: v for k, v in model.state_dict().items() if is_temporal_key(k)}


def _inflate_ours(path, sd, meta, device, dtype) -> LoadedModel:
    if meta.get("mav_module") != "SpaceTimeUNet":
        raise CheckpointError(f"{path}: is a {meta.get('mav_module')!r} checkpoint, not an image SpaceTimeUNet")
    cfg = inflated_config(config_from_meta(path, meta, UNetConfig))
    skeleton = build_skeleton(path, SpaceTimeUNet, cfg)
    check_state_dict(path, skeleton, sd, allow_missing=is_temporal_key)
    fresh = _temporal_init(cfg)
    missing = [k for k in skeleton.state_dict() if k not in sd]
    sd.update({k: fresh[k] for k in missing})
    module, dtype_meta = build_loaded(path, sd, cfg, device, dtype)
    schedule = parse_schedule(path, meta["mav_schedule"]) if "mav_schedule" in meta else SD_SCHEDULE
    prediction = meta.get("mav_prediction", SD_PREDICTION)
    meta = {**meta, **dtype_meta, "mav_inflated_temporal_tensors": str(len(missing))}
    return LoadedModel(path, "decoder", "mav-inflated", module, schedule, prediction, meta)
