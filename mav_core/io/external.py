"""Third-party UNet checkpoints -> LoadedModel: ModelScope T2V / Zeroscope UNet3D and SD image UNets.

Accepted inputs
  - a diffusers model folder (`<root>/unet/diffusion_pytorch_model.safetensors` + `config.json`), the
    `unet/` folder itself, or the weights file with its sibling `config.json`;
  - the original ModelScope `text2video_pytorch_model.pth` and other `.pth/.pt/.bin/.ckpt` files, read with
    torch.load(weights_only=True) only (a pickle that needs code to load is refused), and the same
    weights re-saved as safetensors; without a config.json the config is read off the tensor shapes;
  - SD 1.x/2.x image UNets (diffusers or LDM layout): returned inflated to video (mav_core.io.inflate).
Reading files and the dtype policy: mav_core.io.weights.
"""
from __future__ import annotations

from pathlib import Path

import torch

from . import convert, unet_configs
from .checkpoints import CheckpointError, LoadedModel
from .inflate import inflate_image_checkpoint
from .weights import SUPPORTED, _sibling_config, build_loaded, read_weights, resolve_weights
from ..diffusion.schedule import NoiseSchedule

UNET3D_SCHEDULE = NoiseSchedule("scaled_linear", beta_start=0.00085, beta_end=0.012)
UNET3D_PREDICTION = "eps"
UNET3D_FAMILIES = ("unet3d-diffusers", "unet3d-modelscope")
SD_FAMILIES = ("sd-unet2d-diffusers", "sd-unet2d-ldm")


def _family_hint(keys: list[str]) -> str:
    if any(k.startswith(("encoder.down", "decoder.up", "quant_conv.", "first_stage_model.")) for k in keys):
        return " (it looks like a VAE)"
    if any(k.startswith(("text_model.", "cond_stage_model.", "transformer.resblocks.", "encoder.layer.")) for k in keys):
        return " (it looks like a text encoder)"
    return ""


def load_external(path, device="cpu", dtype: torch.dtype | None = None, state_dict: dict | None = None,
                  metadata: dict | None = None) -> LoadedModel:
    """LoadedModel of a third-party UNet checkpoint (see module docstring). state_dict/metadata: already
    read tensors of `path` (loader.load_model passes them for safetensors files)."""
    diffusers_config = None
    if state_dict is None:
        weights, diffusers_config = resolve_weights(path)
        state_dict, metadata = read_weights(weights)
    else:
        weights = Path(path)
        if weights.is_file():
            diffusers_config = _sibling_config(weights)
    metadata = dict(metadata or {})
    keys = list(state_dict)
    family = convert.detect_family(keys)
    if family in SD_FAMILIES:
        return inflate_image_checkpoint(state_dict, config=diffusers_config, device=device, dtype=dtype,
                                        path=str(weights), metadata=metadata)
    if family not in UNET3D_FAMILIES:
        what = "our own key layout but no mav_config metadata" if family == "mav" else "no supported layout"
        raise CheckpointError(f"{weights}: holds {what}{_family_hint(keys)}; supported families: "
                              + "; ".join(SUPPORTED))
    try:
        _, ours = convert.to_ours(state_dict)
        if diffusers_config is not None:
            config, config_source = unet_configs.config_from_diffusers(diffusers_config), "config.json"
        else:
            config, config_source = unet_configs.infer_unet3d_config(ours), "inferred from tensor shapes"
    except (ValueError, TypeError, ZeroDivisionError) as e:   # a config.json with wrong types or values
        raise CheckpointError(f"{weights}: {e}") from None
    del state_dict
    module, dtype_meta = build_loaded(weights, ours, config, device, dtype)
    metadata.update(dtype_meta, mav_source_family=family, mav_config_source=config_source)
    return LoadedModel(str(weights), "decoder", family, module, UNET3D_SCHEDULE, UNET3D_PREDICTION, metadata)
