"""MakeAVideo Apply Motion: a motion file (temporal layers only) on top of an inflated image decoder."""
from __future__ import annotations

import dataclasses

import torch

from ..mav_core.io.checkpoints import CheckpointError
from ..mav_core.io.motion import apply_motion
from ..mav_core.models.unet import is_temporal_key
from . import host
from .common import CATEGORY, DECODER, require_model
from .loaders import _stamp


def with_motion(decoder, motion_path: str):
    """A new decoder: the input's spatial weights (shared, not copied) and the motion file's temporal ones.

    The input model is left as it was: the host caches the loader's output and other nodes may use it."""
    base = decoder.module
    with torch.device("meta"):
        module = type(base)(base.config)
    weights = {k: v.clone() if is_temporal_key(k) else v for k, v in base.state_dict().items()}
    module.load_state_dict(weights, strict=True, assign=True)
    module.eval()
    clone = dataclasses.replace(decoder, module=module, metadata=dict(decoder.metadata))
    return apply_motion(clone, motion_path)


class ApplyMotion:
    CATEGORY = f"{CATEGORY}/loaders"
    FUNCTION = "apply"
    RETURN_TYPES = (DECODER,)
    RETURN_NAMES = ("decoder",)
    DESCRIPTION = ("Loads a motion file (temporal layers only, from `python -m mav_core train temporal`) into a "
                   "copy of the decoder: an SD image UNet inflated by the Decoder Loader, or any decoder with "
                   "the same temporal shapes. The spatial weights are shared with the input decoder.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "decoder": (DECODER,),
            "motion_name": (host.model_files(), {
                "tooltip": f"a motion .safetensors file from models/{host.MODEL_FOLDER}"}),
        }}

    @classmethod
    def IS_CHANGED(cls, motion_name, **_):
        """Reload when the motion file is replaced under the same name."""
        return _stamp([motion_name])

    def apply(self, decoder, motion_name):
        model = require_model(decoder, "decoder", ("decoder",))
        path = host.model_path(motion_name, "motion_name")
        try:
            return (with_motion(model, path),)
        except CheckpointError as e:
            raise ValueError(f"motion_name: {e}") from None


NODE_CLASS_MAPPINGS = {"MakeAVideoApplyMotion": ApplyMotion}
NODE_DISPLAY_NAME_MAPPINGS = {"MakeAVideoApplyMotion": "MakeAVideo Apply Motion"}
