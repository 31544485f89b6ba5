"""Loading any checkpoint: one registry of our module classes, and the dispatch between our own files
(config in the safetensors header) and third-party layouts (io.external)."""
from __future__ import annotations

import os
from pathlib import Path

import torch

from .checkpoints import (CheckpointError, LoadedModel, build_skeleton, check_state_dict, config_from_meta,
                          load_state_dict, parse_schedule, read_header)
from .external import load_external
from .weights import PICKLE_SUFFIXES, check_torch_file
from ..diffusion.denoiser import PREDICTIONS
from ..models.control import ControlAdapter, ControlConfig
from ..models.flow_fusion import FUSION_MODULE, FlowFusionConfig, FlowFusionNet
from ..models.motion import MOTION_MODULE, MotionModule
from ..models.prior import DiffusionPrior, PriorConfig
from ..models.text import TextImageConfig, TextImageEncoder
from ..models.unet import SpaceTimeUNet, UNetConfig

MODULES = {   # mav_module metadata -> (config class, module class)
    "SpaceTimeUNet": (UNetConfig, SpaceTimeUNet),
    "TextImageEncoder": (TextImageConfig, TextImageEncoder),
    "DiffusionPrior": (PriorConfig, DiffusionPrior),
    "ControlAdapter": (ControlConfig, ControlAdapter),
    MOTION_MODULE: (UNetConfig, MotionModule),   # motion files: temporal layers only, the base UNetConfig
    FUSION_MODULE: (FlowFusionConfig, FlowFusionNet),   # the motion-compensated ↑F
}


def load_model(path, device="cpu", dtype: torch.dtype | None = None, expect_stage: str | tuple | None = None) -> LoadedModel:
    """Load one of our checkpoints (or, through mav_core.io.convert, a UNet3D checkpoint).

    Our files are checked from the header alone (config sizes, schedule, tensor names and shapes on the
    meta device) before any tensor is read, so a hostile declaration allocates nothing. Weights are made
    outside torch.inference_mode (a host may load inside it), so sampling can take gradients through them
    (reconstruction guidance, diffusion.KnownFrames)."""
    path = str(path)
    with torch.inference_mode(False):
        if not path.endswith(".safetensors"):
            loaded = load_external(path, device=device, dtype=dtype)
        else:
            header, meta = read_header(path)
            if "mav_module" not in meta:
                sd, meta = load_state_dict(path)
                loaded = load_external(path, device=device, dtype=dtype, state_dict=sd, metadata=meta)
            else:
                loaded = _load_ours(path, header, meta, device, dtype)
    if expect_stage is not None:
        expected = (expect_stage,) if isinstance(expect_stage, str) else tuple(expect_stage)
        if loaded.stage not in expected:
            raise CheckpointError(f"{path}: is a {loaded.stage!r} checkpoint, expected {' or '.join(map(repr, expected))}")
    return loaded


def declared_config(path, meta: dict):
    """(config class, module class, config) of one of our files' metadata, every declared size bounded
    before anything is built (a CheckpointError names the file)."""
    name = meta["mav_module"]
    if name not in MODULES:
        raise CheckpointError(f"{path}: module {name!r} is not one of {sorted(MODULES)}")
    config_cls, module_cls = MODULES[name]
    config = config_from_meta(path, meta, config_cls)
    return config_cls, module_cls, config


def check_declared(path) -> str | None:
    """What a file declares, checked from its header alone (no tensor is read): one of our files' config,
    schedule and tensor shapes; a torch.save file's kind and archive sizes. Returns our file's stage (None
    for other formats); a CheckpointError names the file."""
    path = str(path)
    if path.endswith(".safetensors"):
        header, meta = read_header(path)
        if "mav_module" not in meta:
            return None
        _check_ours(path, header, meta)
        return meta.get("mav_stage", "unknown")
    if path.lower().endswith(PICKLE_SUFFIXES) and os.path.isfile(path):
        check_torch_file(Path(path))
    return None


def _check_ours(path, header, meta):
    """(module class, config, schedule) of one of our files, checked against its header's tensor shapes on
    the meta device: a hostile config (huge or invalid sizes) or a file that does not match it allocates
    nothing."""
    _, module_cls, config = declared_config(path, meta)
    schedule = parse_schedule(path, meta["mav_schedule"]) if "mav_schedule" in meta else None
    if meta.get("mav_prediction", "eps") not in PREDICTIONS:
        raise CheckpointError(f"{path}: invalid mav_prediction {meta['mav_prediction']!r} (expected one of "
                              f"{PREDICTIONS})")
    declared = {k: torch.empty(info["shape"], device="meta") for k, info in header.items()}
    check_state_dict(path, build_skeleton(path, module_cls, config), declared)
    return module_cls, config, schedule


def _load_ours(path, header, meta, device, dtype) -> LoadedModel:
    module_cls, config, schedule = _check_ours(path, header, meta)
    sd, _ = load_state_dict(path)
    module = module_cls(config)
    module.load_state_dict(sd, strict=True)
    module.to(device=device, dtype=dtype).eval()
    return LoadedModel(path, meta.get("mav_stage", "unknown"), "mav", module, schedule,
                       meta.get("mav_prediction"), meta)
