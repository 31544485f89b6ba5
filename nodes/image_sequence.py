"""Images: Load Image (one file of the input folder or the pack's examples -> IMAGE + MASK), Load Images (a
folder of the input folder -> IMAGE + MASK) and Save Images (IMAGE -> numbered 8-bit PNG / JPEG files in the
output folder, the workflow in the first PNG).

The files go through mav_core.io.image_sequence; folders and `prefix_00001_` counters follow the host's
rules through nodes/video_io.py (folder_of, save_location, host_metadata), so the same stand-in folders
serve the tests without ComfyUI.
"""
from __future__ import annotations

import itertools
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from ..mav_core.errors import InputError
from ..mav_core.inference.memory import available_bytes
from ..mav_core.io.video import forced_size
from ..mav_core.io.image_sequence import (READ_SUFFIXES, SAVE_FORMATS, SequenceNames, SequenceSelection, image_size,
                                          list_images, read_images, select, write_images)
from . import host
from .common import (CATEGORY, EXAMPLES_PREFIX, example_names, example_path, require_frames, selection_inputs,
                     with_examples)
from .video_io import (MAX_LISTED_INPUTS, folder_of, has_input_folder, host_metadata, input_path, save_location,
                       walk_input)

LOAD_ERRORS = {"max_frames": "image_load_cap", "skip_first": "skip_first_images", "every_nth": "select_every_nth",
               "size": "folder", "folder": "folder"}


def input_folders() -> list[str]:
    """Subfolders of the input folder ('/'-separated, relative) that hold at least one image, then the pack's
    example folders (`examples/<name>`) that no input folder of the same name shadows."""
    names = (folder.as_posix() for folder, files in walk_input(READ_SUFFIXES) if files and folder != Path("."))
    return with_examples(sorted(itertools.islice(names, MAX_LISTED_INPUTS)),
                         example_names(READ_SUFFIXES, folders=True))


def input_folder(name: str) -> Path:
    """The subfolder `name` of the input folder, else the pack's example folder of that name; refuses names
    that leave the input folder."""
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"folder: expected a subfolder of the input folder, got {name!r}")
    example = example_path(name)
    if example is not None and example.is_dir() and not has_input_folder():
        return example   # no input folder at all (ComfyUI absent): the shipped example
    root = folder_of("input")
    path = root / name
    real_root = os.path.realpath(root)
    if os.path.commonpath((real_root, os.path.realpath(path))) != real_root:
        raise ValueError(f"folder: {name!r} is outside the input folder")
    if not path.is_dir():
        if example is not None and example.is_dir():
            return example
        raise FileNotFoundError(f"folder: no folder {name!r} in the input folder {root}")
    return path


def input_images() -> list[str]:
    """Image files ('/'-separated, relative) in the input folder and its subfolders (at most MAX_LISTED_INPUTS),
    then the pack's example images (`examples/<name>`) that no input file of the same name shadows."""
    names = (Path(folder, name).as_posix() for folder, files in walk_input(READ_SUFFIXES) for name in files)
    return with_examples(sorted(itertools.islice(names, MAX_LISTED_INPUTS)), example_names(READ_SUFFIXES))


def read_image(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """IMAGE [1, H, W, 3] and MASK [1, H, W] (1 - alpha) of the first frame of an image file, EXIF-rotated, as
    the host's Load Image reads it."""
    try:
        with Image.open(path) as opened:
            image = ImageOps.exif_transpose(opened)
            if image.mode == "I":
                image = image.point(lambda v: v * (1 / 255))
            rgb = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
            has_alpha = "A" in image.getbands() or (image.mode == "P" and "transparency" in image.info)
            alpha = np.asarray(image.convert("RGBA").getchannel("A"), dtype=np.float32) / 255.0 if has_alpha else None
    except (OSError, ValueError, Image.DecompressionBombError) as error:
        raise ValueError(f"image: {path.name} cannot be read as an image ({error})") from None
    mask = 1.0 - alpha if alpha is not None else np.zeros(rgb.shape[:2], np.float32)
    return torch.from_numpy(rgb.copy())[None], torch.from_numpy(mask.copy())[None]


def _named(error: InputError) -> ValueError:
    return ValueError(f"{LOAD_ERRORS.get(error.param, error.param)}: {error.message}")


def example_image(name: str):
    """The example image `examples/<name>` (names checked by common.example_path), or None."""
    path = example_path(name)
    return path if path is not None and path.is_file() and path.name.lower().endswith(READ_SUFFIXES) else None


# the front end's thumbnail of an `examples/<name>` value is /view?type=input&subfolder=examples&filename=<name>
host.register_input_fallback(EXAMPLES_PREFIX.rstrip("/"), example_image)


class LoadImage:
    CATEGORY = f"{CATEGORY}/video"
    FUNCTION = "load"
    RETURN_TYPES = ("IMAGE", "MASK")
    RETURN_NAMES = ("image", "mask")
    DESCRIPTION = ("Loads one image (png, jpg, webp, bmp, tif) from the input folder, or one of the pack's examples "
                   "(examples/...: the images the shipped workflows start from; a file of the same name in the "
                   "input folder takes precedence). mask: 1 - alpha, as the host's Load Image.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"image": (input_images(), {"image_upload": True,
                                                        "tooltip": "a file of the input folder or examples/..."})}}

    @classmethod
    def IS_CHANGED(cls, image, **_):
        try:
            stat = input_path(image, "image").stat()
            return [stat.st_mtime_ns, stat.st_size]
        except (OSError, ValueError):
            return float("nan")

    @classmethod
    def VALIDATE_INPUTS(cls, image, **_):
        try:
            path = input_path(image, "image")
        except (OSError, ValueError, RuntimeError) as e:
            return str(e) if str(e).startswith("image:") else f"image: {e}"
        if not path.name.lower().endswith(READ_SUFFIXES):
            return f"image: {image!r} is not one of {', '.join(READ_SUFFIXES)}"
        return True

    def load(self, image):
        path = input_path(image, "image")
        host.check_interrupted()
        frames, masks = read_image(path)
        device = host.intermediate_device()
        return (frames.to(device), masks.to(device))


class LoadImages:
    CATEGORY = f"{CATEGORY}/video"
    FUNCTION = "load"
    RETURN_TYPES = ("IMAGE", "MASK", "INT")
    RETURN_NAMES = ("images", "masks", "frame_count")
    DESCRIPTION = ("Loads a folder of images (png, jpg, webp, bmp, tif) from the input folder, or the pack's example "
                   "folder (examples/...), as one batch, in "
                   "natural order (2 before 10). Kept: skip_first_images, then every select_every_nth, at most "
                   "image_load_cap (0 = all). All images share one size unless force_width/height resize them "
                   "(one of them alone keeps the aspect ratio). masks: 1 - alpha, as the host's Load Image.")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "folder": (input_folders(), {"tooltip": "a subfolder of the input folder holding the images"}),
                **selection_inputs("image"),
            },
        }

    @classmethod
    def IS_CHANGED(cls, folder, **_):
        try:
            return [(p.name, p.stat().st_mtime_ns, p.stat().st_size) for p in list_images(input_folder(folder))]
        except (OSError, ValueError):
            return float("nan")

    @classmethod
    def VALIDATE_INPUTS(cls, folder, **_):
        try:
            path = input_folder(folder)
            if not list_images(path):
                return f"folder: {folder!r} holds no images ({', '.join(READ_SUFFIXES)})"
        except (OSError, ValueError) as e:
            return str(e) if str(e).startswith("folder:") else f"folder: {e}"
        return True

    def load(self, folder, image_load_cap, skip_first_images, select_every_nth, force_width, force_height):
        path = input_folder(folder)
        for name, value in (("force_width", force_width), ("force_height", force_height)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name}: expected an integer >= 0, got {value!r}")
        bar = None

        def progress(done: int, total: int) -> None:
            nonlocal bar
            host.check_interrupted()
            bar = bar or host.ProgressBar(total)
            bar.update_absolute(done, total)

        try:
            selection = SequenceSelection(image_load_cap or None, skip_first_images, select_every_nth).validate()
            size = None
            if force_width > 0 or force_height > 0:
                picked = select(list_images(path), selection)
                if not picked:
                    raise InputError("skip_first", f"{skip_first_images} with every_nth {select_every_nth} "
                                                   f"leaves no image of {folder!r}")
                size = forced_size(*image_size(picked[0]), force_width, force_height)
            selection = SequenceSelection(selection.max_frames, selection.skip_first, selection.every_nth, size)
            sequence = read_images(path, selection, available_bytes("cpu"), progress)
        except InputError as e:
            raise _named(e) from None
        device = host.intermediate_device()
        return (sequence.frames.to(device), sequence.masks.to(device), int(sequence.frames.shape[0]))


class SaveImages:
    CATEGORY = f"{CATEGORY}/video"
    FUNCTION = "save"
    OUTPUT_NODE = True
    RETURN_TYPES = ("STRING",)
    RETURN_NAMES = ("folder",)
    DESCRIPTION = ("Saves every frame as a numbered 8-bit PNG or JPEG (prefix_00001_.png, prefix_00002_.png, ... "
                   "continuing after files already there) in the output folder; the prompt and workflow are "
                   "embedded in the first PNG, as the host's Save Image does. Files appear only once all are written.")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "images": ("IMAGE",),
                "filename_prefix": ("STRING", {"default": "MakeAVideo/frames",
                                               "tooltip": "relative to the output folder; %width% / %height% / "
                                                          "%year% ... are replaced"}),
                "format": (list(SAVE_FORMATS), {"default": "png"}),
                "quality": ("INT", {"default": 95, "min": 1, "max": 100, "tooltip": "JPEG quality; PNG is lossless"}),
            },
            "hidden": {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"},
        }

    @classmethod
    def VALIDATE_INPUTS(cls, format=None, quality=None, **_):
        if format is not None and format not in SAVE_FORMATS:
            return f"format: {format!r} is not one of {list(SAVE_FORMATS)}"
        if quality is not None and (isinstance(quality, bool) or not isinstance(quality, int) or not 1 <= quality <= 100):
            return f"quality: expected an integer in 1..100, got {quality!r}"
        return True

    def save(self, images, filename_prefix, format, quality, prompt=None, extra_pnginfo=None):
        frames = require_frames(images, "images")
        height, width = int(frames.shape[1]), int(frames.shape[2])
        folder, stem, counter, subfolder = save_location(filename_prefix, "output", width, height)
        names = SequenceNames(folder, stem, counter, format, quality, host_metadata(prompt, extra_pnginfo) or None)
        bar = host.ProgressBar(int(frames.shape[0]))

        def progress(done: int, total: int) -> None:
            host.check_interrupted()
            bar.update_absolute(done, total)

        try:
            paths = write_images(frames, names, progress)
        except InputError as e:
            raise _named(e) from None
        except OSError as e:
            raise OSError(f"filename_prefix: could not write into {folder}: {e}") from None
        sub = subfolder.replace(os.sep, "/")
        ui = {"images": [{"filename": p.name, "subfolder": sub, "type": "output"} for p in paths]}
        return {"ui": ui, "result": (str(folder),)}


NODE_CLASS_MAPPINGS = {"MakeAVideoLoadImage": LoadImage, "MakeAVideoLoadImages": LoadImages,
                       "MakeAVideoSaveImages": SaveImages}
NODE_DISPLAY_NAME_MAPPINGS = {"MakeAVideoLoadImage": "MakeAVideo Load Image",
                              "MakeAVideoLoadImages": "MakeAVideo Load Images",
                              "MakeAVideoSaveImages": "MakeAVideo Save Images"}
