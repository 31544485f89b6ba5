"""Loaders: one per stage, and a bundle loader for a folder holding all MAV-Tiny stage files."""
from __future__ import annotations

import logging
import os
import posixpath

from ..mav_core.models import family
from ..mav_core.io.loader import check_declared, load_model
from ..mav_core.inference.pipeline import INTERPOLATOR_FILES, INTERPOLATORS
from . import host
from .common import CATEGORY, DECODER, INTERPOLATOR, PRIOR, TEXT, UPSCALER

TOP_LEVEL = "."
log = logging.getLogger(__name__)


def _stamp(names) -> str:
    stamps = []
    for name in names:
        try:
            st = os.stat(host.model_path(name))
            stamps.append(f"{name}:{st.st_mtime_ns}:{st.st_size}")
        except (OSError, ValueError):
            stamps.append(f"{name}:missing")
    return "|".join(stamps)


DIFFUSION_UNET_STAGES = ("decoder", "interpolator", "sr_video", "sr_frame")
PRECISION = (host.PRECISIONS, {"default": "auto", "tooltip":
             "dtype of the diffusion UNet(s): auto = the host's UNet dtype for its device (fp16/bf16 on GPUs, "
             "fp32 on the CPU; ComfyUI's --fp32-unet / --fp16-unet / --bf16-unet apply), or force one. "
             "Sampling state stays float32 either way."})


def _load(name: str, input_name: str, stages, precision: str = "auto"):
    path = host.model_path(name, input_name)
    dtype = host.diffusion_dtype(precision) if set(stages) <= set(DIFFUSION_UNET_STAGES) else None
    try:
        model = load_model(path, device=host.offload_device(), dtype=dtype, expect_stage=stages)
    except ValueError as e:
        raise ValueError(f"{input_name}: {e}") from None
    log.info("MakeAVideo: loaded %s (%s) in %s, precision %s", name, model.stage,
             str(next(model.module.parameters()).dtype).removeprefix("torch."), precision)
    return model


def checkpoint_problem(name, input_name: str, stages) -> str | None:
    """Why `name` cannot be loaded as one of `stages`, judged from the file's header alone (its declared
    config, schedule and tensor shapes; a torch.save file's kind and archive sizes) for the host's
    validation, so a wrong file is a 400 naming the input, not a failed run; None if fine."""
    if name is None:  # linked: known only at run time
        return None
    if name not in host.model_files():
        return f"{input_name}: no checkpoint {name!r} in the {host.MODEL_FOLDER} folders"
    try:
        stage = check_declared(host.model_path(name, input_name))
    except (OSError, ValueError) as e:
        return f"{input_name}: {e}"
    if stage is not None and stage not in stages:
        return f"{input_name}: {name} is a {stage!r} checkpoint, expected {' or '.join(map(repr, stages))}"
    return None


class _StageLoader:
    STAGES: tuple[str, ...] = ()
    CATEGORY = f"{CATEGORY}/loaders"
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"ckpt_name": (host.model_files(), {
            "tooltip": f"a {' / '.join(cls.STAGES)} checkpoint from models/{host.MODEL_FOLDER} or the shipped MAV-Tiny"})}}

    @classmethod
    def IS_CHANGED(cls, ckpt_name, **_other_inputs):
        """Reload when the file is replaced under the same name."""
        return _stamp([ckpt_name])

    @classmethod
    def VALIDATE_INPUTS(cls, ckpt_name):
        return checkpoint_problem(ckpt_name, "ckpt_name", cls.STAGES) or True

    def load(self, ckpt_name):
        return (_load(ckpt_name, "ckpt_name", self.STAGES),)


class _UNetLoader(_StageLoader):
    """A loader of diffusion UNets: the stage loader plus the dtype to load them in."""

    @classmethod
    def INPUT_TYPES(cls):
        return {**super().INPUT_TYPES(), "optional": {"precision": PRECISION}}

    def load(self, ckpt_name, precision="auto"):
        return (_load(ckpt_name, "ckpt_name", self.STAGES, precision),)


class TextEncoderLoader(_StageLoader):
    STAGES = ("text",)
    RETURN_TYPES = (TEXT,)
    RETURN_NAMES = ("text_encoder",)
    DESCRIPTION = "Loads the text encoder used by MakeAVideo Text Encode."


class PriorLoader(_StageLoader):
    STAGES = ("prior",)
    RETURN_TYPES = (PRIOR,)
    RETURN_NAMES = ("prior",)
    DESCRIPTION = "Loads the diffusion prior (text embedding -> image embedding)."


class DecoderLoader(_UNetLoader):
    STAGES = ("decoder",)
    RETURN_TYPES = (DECODER,)
    RETURN_NAMES = ("decoder",)
    DESCRIPTION = "Loads the spatiotemporal decoder D^t used by the Sampler."


class InterpolatorLoader(_UNetLoader):
    STAGES = ("interpolator",)
    RETURN_TYPES = (INTERPOLATOR,)
    RETURN_NAMES = ("interpolator",)
    DESCRIPTION = "Loads the masked frame interpolation/extrapolation network (up-F)."


class UpscalerLoader(_UNetLoader):
    STAGES = ("sr_video", "sr_frame")
    RETURN_TYPES = (UPSCALER,)
    RETURN_NAMES = ("upscaler",)
    DESCRIPTION = "Loads a x2 super-resolution model: sr_video (SR^t_l, spatiotemporal) or sr_frame (SR_h, per frame)."


def bundle_folders() -> list[str]:
    """Folders (relative to the makeavideo roots) that hold a decoder.safetensors."""
    decoder = family.STAGE_FILES["decoder"]
    folders = {posixpath.dirname(n) or TOP_LEVEL for n in host.model_files() if posixpath.basename(n) == decoder}
    return sorted(folders)


class BundleLoader:
    CATEGORY = f"{CATEGORY}/loaders"
    FUNCTION = "load"
    RETURN_TYPES = (TEXT, PRIOR, DECODER, INTERPOLATOR, UPSCALER, UPSCALER)
    RETURN_NAMES = ("text_encoder", "prior", "decoder", "interpolator", "sr_video", "sr_frame")
    DESCRIPTION = ("Loads every stage file (text, prior, decoder, interpolator, sr_video, sr_frame .safetensors) "
                   "of one folder; interpolator and upscalers are optional (None when missing). The interpolator "
                   "input picks the ↑F file: flow (flow_interpolator, the motion-compensated ↑F; the diffusion "
                   "file where the folder has none), diffusion (interpolator: also extrapolates) or regression "
                   "(interpolator_regression).")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"folder": (bundle_folders(), {
            "tooltip": "a folder of MAV-Tiny-layout stage files (mav-tiny = the shipped weights)"})},
                "optional": {"precision": PRECISION,
                             "interpolator": (list(INTERPOLATORS), {"default": INTERPOLATORS[0], "tooltip":
                                 "the ↑F file: flow = motion-compensated (best on real clips, interpolation "
                                 "only), diffusion = the paper's ↑F (also extrapolates: image animation), "
                                 "regression = one pass"})}}

    @classmethod
    def IS_CHANGED(cls, folder, **_other_inputs):
        prefix = "" if folder == TOP_LEVEL else f"{folder}/"
        return _stamp([prefix + name for name in (*family.STAGE_FILES.values(), *INTERPOLATOR_FILES.values())])

    def load(self, folder, precision="auto", interpolator=INTERPOLATORS[0]):
        if interpolator not in INTERPOLATORS:
            raise ValueError(f"interpolator: must be one of {', '.join(INTERPOLATORS)}, got {interpolator!r}")
        files = set(host.model_files())
        prefix = "" if folder == TOP_LEVEL else f"{folder}/"
        interp_file = INTERPOLATOR_FILES[interpolator]
        if interpolator == "flow" and prefix + interp_file not in files:
            interp_file = INTERPOLATOR_FILES["diffusion"]
        out = []
        for stage in ("text", "prior", "decoder", "interpolator", "sr_video", "sr_frame"):
            name = prefix + (interp_file if stage == "interpolator" else family.STAGE_FILES[stage])
            if name not in files:
                if stage == "interpolator" and interpolator == "regression":
                    raise FileNotFoundError(f"interpolator: {folder!r} has no {interp_file}")
                if stage in ("text", "prior", "decoder"):
                    raise FileNotFoundError(f"folder: {folder!r} has no {family.STAGE_FILES[stage]} "
                                            f"(the {stage!r} stage is required)")
                out.append(None)
                continue
            out.append(_load(name, "folder", (stage,), precision))
        return tuple(out)


NODE_CLASS_MAPPINGS = {
    "MakeAVideoBundleLoader": BundleLoader,
    "MakeAVideoTextEncoderLoader": TextEncoderLoader,
    "MakeAVideoPriorLoader": PriorLoader,
    "MakeAVideoDecoderLoader": DecoderLoader,
    "MakeAVideoInterpolatorLoader": InterpolatorLoader,
    "MakeAVideoUpscalerLoader": UpscalerLoader,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "MakeAVideoBundleLoader": "MakeAVideo Bundle Loader",
    "MakeAVideoTextEncoderLoader": "MakeAVideo Text Encoder Loader",
    "MakeAVideoPriorLoader": "MakeAVideo Prior Loader",
    "MakeAVideoDecoderLoader": "MakeAVideo Decoder Loader",
    "MakeAVideoInterpolatorLoader": "MakeAVideo Interpolator Loader",
    "MakeAVideoUpscalerLoader": "MakeAVideo Upscaler Loader",
}
