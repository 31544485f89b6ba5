"""Glue shared by the nodes: host types <-> core arguments, per-step progress with previews."""
from __future__ import annotations

import math
import os
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..mav_core.diffusion import SAMPLERS as CORE_SAMPLERS
from ..mav_core.errors import InputError, check_finite
from ..mav_core.inference import video_to_frames
from ..mav_core.inference.options import MAX_SEED
from . import host

CATEGORY = "MakeAVideo"
SAMPLERS = list(CORE_SAMPLERS)
SEED = ("INT", {"default": 0, "min": 0, "max": MAX_SEED, "control_after_generate": True})

TEXT, PRIOR, DECODER, INTERPOLATOR, UPSCALER = "MAV_TEXT", "MAV_PRIOR", "MAV_DECODER", "MAV_INTERPOLATOR", "MAV_UPSCALER"
IMAGE_EMBED_KEY = "mav_image_embed"


def widget_problem(name: str, value, spec: dict) -> str | None:
    """The host's min/max check for an input a node's VALIDATE_INPUTS takes over (the host then skips
    its own), plus what the host does not check: a finite FLOAT and an INT that is a multiple of its
    `step`. None when the value is fine or not known yet (a linked input)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return f"{name}: {value!r} is not a number"   # the host validates what it failed to convert too
    if isinstance(value, float) and not math.isfinite(value):
        return f"{name}: {value} is not a finite number"
    if "min" in spec and value < spec["min"]:
        return f"{name}: {value} is smaller than the minimum {spec['min']}"
    if "max" in spec and value > spec["max"]:
        return f"{name}: {value} is bigger than the maximum {spec['max']}"
    if isinstance(value, int) and spec.get("step", 1) > 1 and value % spec["step"]:
        return f"{name}: {value} is not a multiple of {spec['step']}"
    return None


def require_model(model, input_name: str, stages: tuple[str, ...]):
    """The LoadedModel in `input_name`, or an error naming the input and the stage(s) it needs."""
    if model is None:
        raise ValueError(f"{input_name}: no model connected (the bundle folder has no {' / '.join(stages)} "
                         "checkpoint; load one with its own loader)")
    stage = getattr(model, "stage", None)
    if stage not in stages:
        raise ValueError(f"{input_name}: got a {stage!r} model ({getattr(model, 'path', '?')}), "
                         f"expected {' or '.join(map(repr, stages))}")
    return model


WHOLE_INPUTS = ("cond", "uncond", "init", "known")   # core parameters a node input stands for as a whole


@contextmanager
def inputs_named(**names: str):
    """Re-raise the core's InputError under the node's input name: inputs_named(sampler="sampler_name")
    turns "sampler must be one of ..." into "sampler_name: must be one of ..."; a core parameter that is
    part of a node input (height -> images) keeps its own name in the message; one that is the whole input
    (WHOLE_INPUTS: cond -> positive, uncond -> negative, init -> init_frames) does not."""
    try:
        yield
    except InputError as e:
        name = names.get(e.param, e.param)
        whole = name == e.param or e.param in WHOLE_INPUTS
        raise ValueError(f"{name}: {e.message}" if whole else f"{name}: {e}") from None


def require_frames(images, input_name: str) -> torch.Tensor:
    """An IMAGE batch [F, H, W, 3] (an RGBA image loses alpha)."""
    if images is None:
        raise ValueError(f"{input_name}: no frames (a latent-space decoder fills LATENT, not IMAGE; "
                         "decode it with VAE Decode first)")
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[-1] not in (3, 4):
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"{input_name}: expected an IMAGE batch [frames, height, width, 3], got {shape}")
    return require_finite(images[..., :3], input_name)


def require_finite(value, input_name: str):
    """`value` (a tensor or a dict of them) with only finite values, else an error naming the input."""
    try:
        check_finite(input_name, value)
    except InputError as e:
        raise ValueError(f"{input_name}: {e.message}") from None
    return value


def conditioning_dict(conditioning, input_name: str, model, negative_of: dict | None = None) -> dict:
    """The first entry of a CONDITIONING list -> the core's cond dict {context, image_embed}.

    Checks the token width against the model's context width and the image embedding against its
    embedding size; a CLIP-vision embedding from the host's unCLIPConditioning stands in for the
    prior's output. negative_of: the positive dict (a missing negative embedding becomes zeros)."""
    if not conditioning:
        raise ValueError(f"{input_name}: empty CONDITIONING")
    try:
        tokens, extras = conditioning[0][0], conditioning[0][1]
    except (TypeError, IndexError, KeyError):
        raise ValueError(f"{input_name}: not a CONDITIONING list of [tensor, dict] entries") from None
    cfg = model.config
    if tokens.dim() != 3 or tokens.shape[-1] != cfg.context_dim:
        raise ValueError(f"{input_name}: conditioning tokens have width {tokens.shape[-1]} "
                         f"(shape {tuple(tokens.shape)}), but {model.path} expects context width {cfg.context_dim}")
    cond = {"context": require_finite(tokens, input_name)}
    embed = extras.get(IMAGE_EMBED_KEY)
    if embed is None:
        for unclip in extras.get("unclip_conditioning") or []:
            out = unclip.get("clip_vision_output")
            embed = getattr(out, "image_embeds", None)
            if embed is not None:
                break
    width = getattr(cfg, "image_embed_dim", 0)
    if embed is not None and width:
        if embed.shape[-1] != width:
            raise ValueError(f"{input_name}: image embedding has width {embed.shape[-1]}, "
                             f"but {model.path} expects {width}")
        cond["image_embed"] = require_finite(embed.reshape(-1, width), input_name)
    elif negative_of is not None and "image_embed" in negative_of:
        cond["image_embed"] = torch.zeros_like(negative_of["image_embed"])
    return cond


def to_preview(x0: torch.Tensor) -> Image.Image:
    """The middle frame of a [B, C, F, H, W] (or [B, C, H, W]) estimate in -1..1 as a PIL image."""
    frame = x0[0, :3, x0.shape[2] // 2] if x0.dim() == 5 else x0[0, :3]
    if frame.shape[0] < 3:
        frame = frame[:1].expand(3, -1, -1)
    arr = ((frame.detach().float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(np.ascontiguousarray(arr))


PREVIEW_EVERY_STEPS = 4   # a preview copies one frame to the host: a device sync, so not every step


class StepProgress:
    """The sampler callback: Cancel check and progress every step; a JPEG preview of x0 every
    PREVIEW_EVERY_STEPS steps and at the last one, only when the host shows previews (its
    --preview-method is not 'none'), so with previews off no step waits for the device.

    Stages that sample several windows/chunks restart their step count; the total grows by `steps`
    each time the count passes it."""

    def __init__(self, steps: int, preview: bool = True):
        self.steps = steps
        self.count = 0
        self.preview = preview and host.previews_enabled()
        self.bar = host.ProgressBar(steps)

    def __call__(self, info: dict):
        host.check_interrupted()
        self.count += 1
        if self.count > self.bar.total:
            self.bar.total += self.steps
        denoised = info.get("denoised")
        image = None
        due = self.count % PREVIEW_EVERY_STEPS == 0 or self.count % self.steps == 0
        if self.preview and due and isinstance(denoised, torch.Tensor) and denoised.dim() >= 4:
            image = ("JPEG", to_preview(denoised), 512)
        self.bar.update_absolute(self.count, self.bar.total, image)


def frames_out(video: torch.Tensor) -> torch.Tensor:
    """Core video [B, 3, F, H, W] -> IMAGE [B*F, H, W, 3] on the host's intermediate device."""
    return video_to_frames(video).to(host.intermediate_device())


def selection_inputs(noun: str) -> dict:
    """The frame-selection widgets a loader of `noun`s ("frame", "image") shows, in the order its
    workflows store them: cap, skip, every n-th, forced width and height."""
    return {
        f"{noun}_load_cap": ("INT", {"default": 0, "min": 0, "max": 100000,
                                     "tooltip": f"at most this many {noun}s (0 = all; mind the memory)"}),
        f"skip_first_{noun}s": ("INT", {"default": 0, "min": 0, "max": 1000000}),
        "select_every_nth": ("INT", {"default": 1, "min": 1, "max": 1000}),
        "force_width": ("INT", {"default": 0, "min": 0, "max": 8192, "step": 1}),
        "force_height": ("INT", {"default": 0, "min": 0, "max": 8192, "step": 1}),
    }


EXAMPLES_DIR = Path(__file__).resolve().parents[1] / "examples"
"""The pack's example inputs (the shipped workflows' images and clip), listed by the loaders next to the
input folder's files as `examples/<name>`."""
EXAMPLES_PREFIX = "examples/"


def example_names(suffixes: tuple[str, ...], folders: bool = False) -> list[str]:
    """`examples/<name>` for each visible file of the examples folder ending in one of `suffixes` (folders:
    each visible subfolder holding such files instead), sorted."""
    if not EXAMPLES_DIR.is_dir():
        return []
    names = []
    for entry in sorted(EXAMPLES_DIR.iterdir()):
        if entry.name.startswith("."):
            continue
        if folders and entry.is_dir() and any(f.name.lower().endswith(suffixes) for f in entry.iterdir()):
            names.append(EXAMPLES_PREFIX + entry.name)
        elif not folders and entry.is_file() and entry.name.lower().endswith(suffixes):
            names.append(EXAMPLES_PREFIX + entry.name)
    return names


def example_path(name) -> Path | None:
    """The shipped example `examples/<name>` (a file or folder directly inside the examples folder), or None
    for any other name: nested, hidden, '..' or anything that would resolve outside the examples folder."""
    if not isinstance(name, str) or not name.startswith(EXAMPLES_PREFIX):
        return None
    rest = name[len(EXAMPLES_PREFIX):]
    if not rest or rest.startswith(".") or any(c in rest for c in "/\\\0:"):
        return None
    path = EXAMPLES_DIR / rest
    root = os.path.realpath(EXAMPLES_DIR)
    if os.path.dirname(os.path.realpath(path)) != root or not path.exists():
        return None
    return path


def with_examples(listed: list[str], examples: list[str]) -> list[str]:
    """A loader's list: the input folder's names, then the examples the input folder does not shadow."""
    own = set(listed)
    return listed + [name for name in examples if name not in own]
