"""ControlNet-style conditioning nodes: load a control adapter, attach it (with a hint video) to a
CONDITIONING; the Sampler reads the attached controls (key CONTROLS_KEY) from its positive input.

Apply Control never mutates its input: it returns new entries whose dicts carry a new list, so
several Apply Control nodes stack and branches of a graph do not see each other's controls."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange

from ..mav_core.models.control import HINT_KINDS, Control, make_hint
from ..mav_core.inference import frames_to_video
from .common import CATEGORY, require_frames, require_model
from .loaders import _StageLoader

CONTROL = "MAV_CONTROL"
CONTROLS_KEY = "mav_controls"
ASPECT_TOLERANCE = 0.02   # a hint whose aspect ratio differs more than this is refused, not stretched


class ControlLoader(_StageLoader):
    STAGES = ("control",)
    RETURN_TYPES = (CONTROL,)
    RETURN_NAMES = ("control",)
    DESCRIPTION = ("Loads a ControlNet-style adapter (e.g. mav-tiny/control_canny.safetensors) for "
                   "MakeAVideo Apply Control.")


@dataclass(frozen=True)
class AttachedControl:
    """What Apply Control stores in the conditioning: the adapter model, the hint video
    [1, C, F, H, W] (computed from the frames), its settings, and the input name for errors."""
    model: object          # LoadedModel of stage "control"
    hint: torch.Tensor
    hint_type: str
    strength: float
    start: float
    end: float
    input_name: str = "hint"


def _hint_channels(model) -> int:
    return int(getattr(model.config, "hint_channels", 1))


class ApplyControl:
    CATEGORY = CATEGORY
    FUNCTION = "apply"
    RETURN_TYPES = ("CONDITIONING",)
    RETURN_NAMES = ("conditioning",)
    DESCRIPTION = ("Attaches a control (adapter + hint video) to the conditioning for the Sampler. hint_type "
                   "canny / mask computes the hint from the hint frames (edges / object mask); frames uses "
                   "them as they are. The hint needs the sampled frame count (or 1 frame, used for every "
                   "frame) and the sampled aspect ratio; it is resized to the sampled size. Apply Control "
                   "nodes stack: their residuals add up. Connect the result to the Sampler's positive input.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "conditioning": ("CONDITIONING",),
            "control": (CONTROL,),
            "hint": ("IMAGE", {"tooltip": "frames the hint is computed from (a video or one image)"}),
            "hint_type": (list(HINT_KINDS), {"default": "canny"}),
            "strength": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 10.0, "step": 0.01}),
            "start_percent": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.001}),
            "end_percent": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.001}),
        }}

    def apply(self, conditioning, control, hint, hint_type, strength, start_percent, end_percent):
        model = require_model(control, "control", ("control",))
        if hint_type not in HINT_KINDS:
            raise ValueError(f"hint_type: {hint_type!r} is not one of {list(HINT_KINDS)}")
        if not 0.0 <= start_percent <= end_percent <= 1.0:
            raise ValueError(f"start_percent/end_percent: need 0 <= start ({start_percent}) <= end ({end_percent}) <= 1")
        if not strength >= 0.0:
            raise ValueError(f"strength: must be >= 0, got {strength}")
        if not isinstance(conditioning, list):
            raise ValueError("conditioning: not a CONDITIONING list of [tensor, dict] entries")
        frames = require_frames(hint, "hint").float().cpu()
        with torch.no_grad():
            hint_video = make_hint(frames_to_video(frames), hint_type)
        want = _hint_channels(model)
        if hint_video.shape[1] != want:
            raise ValueError(f"hint_type: {hint_type!r} gives {hint_video.shape[1]}-channel hints, but "
                             f"{model.path} expects {want} (its kind is {getattr(model.config, 'kind', '?')!r})")
        attached = AttachedControl(model, hint_video, hint_type, float(strength), float(start_percent),
                                   float(end_percent))
        out = []
        for entry in conditioning:
            try:
                tokens, extras = entry[0], entry[1]
            except (TypeError, IndexError, KeyError):
                raise ValueError("conditioning: not a CONDITIONING list of [tensor, dict] entries") from None
            extras = dict(extras)
            extras[CONTROLS_KEY] = list(extras.get(CONTROLS_KEY) or []) + [attached]
            out.append([tokens, extras])
        return (out,)


def attached_controls(conditioning) -> list[AttachedControl]:
    """The controls attached to the first entry of a CONDITIONING (empty when none)."""
    if not conditioning:
        return []
    try:
        extras = conditioning[0][1]
    except (TypeError, IndexError, KeyError):
        return []
    return list(extras.get(CONTROLS_KEY) or []) if isinstance(extras, dict) else []


def _fit_hint(c: AttachedControl, frames: int, height: int, width: int) -> torch.Tensor:
    """The hint at the sampled frame count and size: one frame repeats; other counts or aspect ratios are refused."""
    _, _, f, h, w = c.hint.shape
    if f not in (1, frames):
        raise ValueError(f"{c.input_name}: the control hint has {f} frames, but the Sampler makes {frames} "
                         f"(give {frames} hint frames, or 1 for all)")
    if abs((w / h) / (width / height) - 1) > ASPECT_TOLERANCE:
        raise ValueError(f"{c.input_name}: the control hint is {w}x{h}, the Sampler makes {width}x{height}; "
                         "the aspect ratios differ (crop or resize the hint frames first)")
    hint = c.hint
    if (h, w) != (height, width):
        flat = rearrange(hint, "b c f h w -> (b f) c h w")
        mode = "area" if h >= height and w >= width else "bilinear"
        flat = F.interpolate(flat, size=(height, width), mode=mode, **({} if mode == "area" else {"align_corners": False}))
        hint = rearrange(flat, "(b f) c h w -> b c f h w", b=hint.shape[0])
    if f == 1 and frames > 1:
        hint = hint.expand(-1, -1, frames, -1, -1)
    return hint


def core_controls(conditioning, decoder, frames: int, height: int, width: int) -> list[Control]:
    """The positive CONDITIONING's attached controls as mav_core Controls for generate_video.
    height/width: the size the decoder samples at (latent size for latent decoders)."""
    out = []
    ch = tuple(decoder.config.block_out_channels)
    for c in attached_controls(conditioning):
        adapter = c.model.module
        if tuple(adapter.config.block_out_channels) != ch or adapter.config.layers_per_block != decoder.config.layers_per_block:
            raise ValueError(f"control: {c.model.path} was made for a UNet with channels "
                             f"{tuple(adapter.config.block_out_channels)}, but {decoder.path} has {ch}")
        out.append(Control(adapter, _fit_hint(c, frames, height, width), c.strength, c.start, c.end))
    return out


def control_models(conditioning) -> list:
    """The adapters' LoadedModels (to move onto the compute device with the decoder)."""
    seen = {}
    for c in attached_controls(conditioning):
        seen[id(c.model)] = c.model
    return list(seen.values())


NODE_CLASS_MAPPINGS = {"MakeAVideoControlLoader": ControlLoader, "MakeAVideoApplyControl": ApplyControl}
NODE_DISPLAY_NAME_MAPPINGS = {"MakeAVideoControlLoader": "MakeAVideo Control Loader",
                              "MakeAVideoApplyControl": "MakeAVideo Apply Control"}
