"""Motion files: the temporal layers of a video model alone (models.motion.MotionModule).

  save_motion / read_motion / apply_motion  write / read / load those tensors (safetensors, mav_module
                            "MotionModule", mav_stage "motion", the base config in mav_config).
A motion file trained on one inflated image checkpoint (io.inflate) applies to any other with the same
temporal shapes.
"""
from __future__ import annotations

from pathlib import Path

import torch

from .checkpoints import CheckpointError, LoadedModel, check_state_dict, load_state_dict, read_header, save_model
from ..models.motion import MOTION_MODULE, MotionModule
from ..models.unet import SpaceTimeUNet

MOTION_STAGE = "motion"


def save_motion(model: SpaceTimeUNet | LoadedModel, path, extra: dict | None = None) -> Path:
    """Write only the temporal tensors of `model` (safetensors, metadata: mav_module "MotionModule",
    mav_stage "motion", mav_config = the base model's config)."""
    motion = MotionModule.of(model.module if isinstance(model, LoadedModel) else model)
    sd = motion.state_dict()
    if not sd:
        raise ValueError("model has no temporal layers: nothing to write to a motion file")
    save_model(path, motion, MOTION_STAGE, extra=extra, state_dict=sd)
    return Path(path)


def _motion_header(path) -> dict:
    """The validated header of a motion file (no tensor read); anything else raises a CheckpointError."""
    header, meta = read_header(path)
    if meta.get("mav_module") != MOTION_MODULE:
        raise CheckpointError(f"{path}: not a motion file (mav_module is {meta.get('mav_module')!r}, "
                              f"expected {MOTION_MODULE!r})")
    return header


def read_motion(path) -> tuple[dict, dict]:
    """(temporal state dict, metadata) of a motion file; anything else raises a CheckpointError before any
    tensor is read."""
    _motion_header(path)
    return load_state_dict(path)


def apply_motion(model: SpaceTimeUNet | LoadedModel, motion_path) -> SpaceTimeUNet | LoadedModel:
    """Load a motion file's temporal tensors into `model` (in place; returned). Every temporal tensor of the
    model must be in the file with the same shape, and nothing else: otherwise a CheckpointError names the
    first missing, unexpected or mis-shaped key (checked from the file's header, before any tensor is read)."""
    header = _motion_header(motion_path)
    module = model.module if isinstance(model, LoadedModel) else model
    view = MotionModule.of(module)
    check_state_dict(motion_path, view, {k: torch.empty(info["shape"], device="meta") for k, info in header.items()})
    sd, _ = load_state_dict(motion_path)
    view.load_state_dict(sd, strict=True)   # copies into the model's own parameters, in their dtype/device
    if isinstance(model, LoadedModel):
        model.metadata = {**model.metadata, "mav_motion": str(motion_path)}
    return model
